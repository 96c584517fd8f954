//! Starting a Xen PV kernel in a VMM domain: rxen's pages after the guest's RAM
//! ([`rxen_area`](super::rxen_area)), the domain built by [`builder`](super::builder),
//! rxen's L4 slot installed in the MMU, and the [`BootInfo`] the vCPUs start from.
//!
//! What is not wired yet (issue 8): the MMU hypercalls. A PV kernel therefore runs
//! until its first hypercall that needs them.

use rxen_vmm_api::BootReport;

use super::builder::{self, PvBuildConfig, PvBuildError};
use super::layout::PAGE_SIZE;
use super::mmu::Mmu;
use super::ram_frames::RamFrames;
use super::rxen_area::{RxenArea, M2P_L4_SLOT, RXEN_L4_SLOT};
use crate::builder::{BootChannels, BootInfo};
use crate::memory::GuestRam;

/// What a PV kernel boots with: its image, initrd and command line.
#[derive(Debug, Clone, Copy)]
pub struct PvBootFiles<'a> {
    pub image: &'a [u8],
    pub ramdisk: Option<&'a [u8]>,
    pub cmdline: &'a str,
}

/// Builds the PV kernel of `files` into the first `nr_pages` frames of `ram`, with
/// rxen's pages `area` (already written after them).
pub fn build(
    ram: &GuestRam,
    nr_pages: u64,
    files: PvBootFiles<'_>,
    vcpus: u32,
    channels: BootChannels,
    area: &RxenArea,
) -> Result<(BootInfo, Mmu), PvBuildError> {
    let PvBootFiles {
        image,
        ramdisk,
        cmdline,
    } = files;
    let (m2p_base, m2p_entries) = area.layout.m2p();
    // The RAM was just created: every frame below rxen's area is zero.
    let mut mem = RamFrames::with_m2p(ram, m2p_base, m2p_entries).fresh();
    let config = PvBuildConfig {
        nr_pages,
        ramdisk,
        cmdline,
        vcpus,
        shared_info_maddr: area.shared_info_maddr,
        store_evtchn: channels.store_evtchn,
        console_evtchn: channels.console_evtchn,
    };
    let built = builder::build(&mut mem, image, &config)?;
    let mut mmu = built.mmu;
    mmu.set_xen_l4_entry(&mut mem, RXEN_L4_SLOT, area.l4_entry)?;
    mmu.set_xen_l4_entry(&mut mem, M2P_L4_SLOT, area.m2p_l4_entry)?;
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
        traps: area.traps,
        m2p: Some(area.m2p),
    };
    Ok((boot, mmu))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pv::rxen_area::{self, AreaLayout};
    use rxen_abi::mmu::RO_MPT_VIRT_START;

    const ADDR: u64 = 0x000f_ffff_ffff_f000;

    fn read(ram: &GuestRam, cr3: u64, va: u64) -> Option<u64> {
        let mut table = cr3;
        for shift in [39u32, 30, 21, 12] {
            let e: u64 = ram.read_obj(table + ((va >> shift) & 511) * 8).ok()?;
            if e & 1 == 0 || e & 4 == 0 {
                return None;
            }
            table = e & ADDR;
        }
        ram.read_obj(table + (va & 0xfff)).ok()
    }

    /// Mini-OS's first reads of rxen's pages go through its own L4: the M2P at
    /// `RO_MPT_VIRT_START` and the stub, both user-readable.
    #[test]
    fn mini_os_sees_m2p_and_stub_through_its_l4() {
        let Some(image) = crate::pv::testelf::shared_guest("mini-os-blk") else {
            eprintln!("SKIPPED mini_os_sees_m2p_and_stub_through_its_l4: ../shared/guests/mini-os-blk not found (set RXEN_GUESTS_DIR)");
            return;
        };
        let layout = AreaLayout::for_guest(8192);
        let ram = GuestRam::new("pv-boot", (32 << 20) + layout.bytes()).unwrap();
        let area = rxen_area::write(&ram, layout, 1).unwrap();
        let channels = BootChannels {
            store_evtchn: 1,
            console_evtchn: 2,
        };
        let (boot, mmu) = build(
            &ram,
            8192,
            PvBootFiles {
                image: &image,
                ramdisk: None,
                cmdline: "",
            },
            1,
            channels,
            &area,
        )
        .unwrap();
        assert_eq!(
            read(&ram, boot.cr3, RO_MPT_VIRT_START + 0x78 * 8),
            Some(0x78)
        );
        let stub = read(&ram, boot.cr3, boot.syscall_stub).unwrap();
        let port = rxen_abi::layout::SYSCALL_STUB_PORT as u8;
        assert_eq!(stub & 0xffff, u64::from(u16::from_le_bytes([0xE6, port])));
        // rxen's frames are not the guest's to map.
        let info = mmu.frame(area.shared_info_maddr / PAGE_SIZE + 1).unwrap();
        assert_eq!(info.owner, crate::pv::mmu::Owner::Rxen);
        assert_eq!(
            mmu.frame(area.shared_info_maddr / PAGE_SIZE).unwrap().owner,
            crate::pv::mmu::Owner::SharedInfo
        );
    }
}
