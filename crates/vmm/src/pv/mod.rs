//! Xen x86-64 PV guests: what the domain builder needs to know before it touches guest
//! memory.
//!
//! This module is pure library code (no KVM, no guest memory): it reads the Xen ELF
//! notes of an unmodified PV kernel ([`elfnotes`], [`features`], [`xen_guest`]), checks
//! them and derives the kernel's virtual placement like Xen's libelf ([`image`]), and
//! computes Xen's start-of-day layout for a 64-bit PV domain ([`layout`]) as plain data.
//! [`mmu`] validates page-table changes like Xen's direct-paging MMU, over an abstract
//! frame store (not yet wired into running domains).
//! [`builder`] writes that layout into guest memory ([`ram_frames`] adapts the VMM's
//! `GuestRam`), builds and pins the bootstrap page tables and writes the hypercall page
//! ([`hypercall_page`]); nothing here may perform file I/O, touch KVM or panic on input.

pub mod balloon;
pub mod boot;
pub mod builder;
pub mod elfnotes;
pub mod features;
pub mod hypercall;
pub mod hypercall_page;
pub mod image;
pub mod layout;
pub mod mmu;
pub mod notes;
pub mod ram_frames;
pub mod rxen_area;
pub mod vcpu_context;
pub mod xen_guest;

pub use elfnotes::{ElfNotesError, NoteSource, XenNotes};
pub use features::{FeatureError, Features};
pub use image::{KernelSegment, PvImageError, PvKernel};
pub use layout::{LayoutError, LayoutRequest, PvLayout};

/// Whether `image` declares itself a Xen PV kernel (Xen ELF notes or a `__xen_guest`
/// section). rxen's own guests carry neither, so this picks the boot protocol.
pub fn is_xen_pv_kernel(image: &[u8]) -> bool {
    XenNotes::parse_elf(image).is_ok_and(|n| n.source.is_some())
}

#[cfg(test)]
pub(crate) mod testelf;
