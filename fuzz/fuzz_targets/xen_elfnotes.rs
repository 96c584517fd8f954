//! Feeds arbitrary bytes to the PV kernel's Xen ELF-note parser, libelf's checks and
//! the start-of-day layout: none of them may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rxen_vmm::pv::{LayoutRequest, PvKernel, PvLayout, XenNotes};

fuzz_target!(|data: &[u8]| {
    let _ = XenNotes::parse_elf(data);
    let _ = rxen_vmm::pv::xen_guest::parse(data);
    if let Ok(kernel) = PvKernel::parse(data) {
        let pages = data.first().map_or(0, |b| u64::from(*b)) << 10;
        let request = LayoutRequest {
            nr_pages: pages,
            ramdisk_bytes: data.get(1).map(|b| u64::from(*b) << 14),
            vcpus: 1,
        };
        let _ = PvLayout::compute(&kernel, &request);
    }
});
