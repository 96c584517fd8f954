//! Xen's public guest ABI for x86-64, as `#[repr(C)]` Rust types and constants.
//!
//! This crate owns the *numbers and layouts* a paravirtualized guest and the rxen
//! hypervisor agree on: hypercall numbers, sub-operation numbers, error numbers and
//! the structures of `xen/include/public` (xen.h, event_channel.h, sched.h, vcpu.h,
//! memory.h, grant_table.h, the MMU parts of xen.h and arch-x86/xen-x86_64.h, version.h, io/ring.h, io/console.h, io/xs_wire.h, io/blkif.h, io/netif.h, io/xenbus.h), plus rxen's own documented guest
//! memory layout ([`layout`]). Every structure has a layout test against the sizes and
//! offsets of Xen's x86-64 headers.
//!
//! It must not contain behaviour: no hypercall handling, no guest memory access, no
//! allocation. It is `no_std` so that both the VMM and the guest SDK use the same
//! definitions.
#![no_std]
#![forbid(unsafe_code)]

pub mod blkif;
pub mod callback;
pub mod console;
pub mod errno;
pub mod event_channel;
pub mod features;
pub mod grant_table;
pub mod hypercall;
pub mod layout;
pub mod memory;
pub mod mmu;
pub mod netif;
pub mod ring;
pub mod sched;
pub mod vcpu;
pub mod version;
pub mod xen;
pub mod xenbus;
pub mod xs_wire;

/// Size of a guest page (x86-64, 4 KiB).
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// Domain id type (`domid_t`).
pub type DomId = u16;
/// Event-channel port type (`evtchn_port_t`).
pub type EvtchnPort = u32;

/// `DOMID_SELF`: refers to the calling domain.
pub const DOMID_SELF: DomId = 0x7FF0;
/// The first reserved domain id; ids at or above it are never real domains.
pub const DOMID_FIRST_RESERVED: DomId = 0x7FF0;

#[cfg(test)]
pub(crate) mod layout_check {
    /// Asserts the size of a type and the offsets of named fields.
    macro_rules! assert_layout {
        ($ty:ty, size = $size:expr $(, $field:ident = $off:expr)* $(,)?) => {{
            assert_eq!(core::mem::size_of::<$ty>(), $size, "size of {}", stringify!($ty));
            $(assert_eq!(
                core::mem::offset_of!($ty, $field), $off,
                "offset of {}.{}", stringify!($ty), stringify!($field)
            );)*
        }};
    }
    pub(crate) use assert_layout;
}
