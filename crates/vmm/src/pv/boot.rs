//! Starting a Xen PV kernel in a VMM domain: rxen's pages after the guest's RAM
//! ([`rxen_area`](super::rxen_area)), the domain built by [`builder`](super::builder),
//! rxen's L4 slot installed in the MMU, and the [`BootInfo`] the vCPUs start from.
//!
//! What is not wired yet (issue 8): the MMU hypercalls, traps and callbacks. A PV
//! kernel therefore runs until its first hypercall that needs them.

use rxen_vmm_api::BootReport;

use super::builder::{self, PvBuildConfig, PvBuildError};
use super::layout::PAGE_SIZE;
use super::mmu::Mmu;
use super::ram_frames::RamFrames;
use super::rxen_area::{RxenArea, RXEN_L4_SLOT};
use crate::builder::{BootChannels, BootInfo};
use crate::memory::GuestRam;

/// Builds PV kernel `image` into the first `nr_pages` frames of `ram`, with rxen's
/// pages `area` (already written after them).
pub fn build(
    ram: &GuestRam,
    nr_pages: u64,
    image: &[u8],
    cmdline: &str,
    vcpus: u32,
    channels: BootChannels,
    area: &RxenArea,
) -> Result<(BootInfo, Mmu), PvBuildError> {
    let mut mem = RamFrames::new(ram);
    let config = PvBuildConfig {
        nr_pages,
        ramdisk: None,
        cmdline,
        vcpus,
        shared_info_maddr: area.shared_info_maddr,
        store_evtchn: channels.store_evtchn,
        console_evtchn: channels.console_evtchn,
    };
    let built = builder::build(&mut mem, image, &config)?;
    let mut mmu = built.mmu;
    mmu.set_xen_l4_entry(&mut mem, RXEN_L4_SLOT, area.l4_entry)?;
    let l = &built.layout;
    let r = &built.regs;
    tracing::info!(
        entry = format_args!("{:#x}", r.rip),
        start_info = format_args!("{:#x}", r.rsi),
        pt_base = format_args!("{:#x}", l.start_info.pt_base),
        hypercall_page = ?l.hypercall_page_pfn,
        "PV kernel built"
    );
    let boot = BootInfo {
        entry: r.rip,
        stack_top: r.rsp,
        start_info: r.rsi,
        cr3: r.cr3_pfn * PAGE_SIZE,
        nr_pt_frames: l.start_info.nr_pt_frames,
        image_end: l.kernel.vend(),
        report: BootReport {
            store_mfn: l.start_info.store_mfn,
            store_evtchn: channels.store_evtchn,
            console_mfn: l.start_info.console_mfn,
            console_evtchn: channels.console_evtchn,
        },
        syscall_stub: area.stub_va,
        tss_base: area.tss_va,
        selectors: (r.cs, r.ds),
    };
    Ok((boot, mmu))
}
