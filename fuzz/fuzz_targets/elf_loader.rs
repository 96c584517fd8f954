//! Feeds arbitrary bytes to the domain builder's ELF validation (and loads what passes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rxen_vmm::elf::ElfImage;
use rxen_vmm::memory::GuestRam;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = ElfImage::parse(data, 16 << 20) {
        let ram = GuestRam::new("fuzz", 16 << 20).expect("ram");
        img.load(&ram).expect("a validated image always loads");
    }
});
