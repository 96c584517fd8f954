//! Decodes hypercalls with arbitrary registers over guest memory filled with the input,
//! once through rxen's identity view and once through a PV view whose page tables are
//! the input too (the L4 is the filled area's first frame): the page walker meets
//! arbitrary entries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rxen_vmm::hypercall::decode::{decode, HypercallArgs};
use rxen_vmm::guest_view::GuestView;
use rxen_vmm::memory::GuestRam;

fuzz_target!(|data: &[u8]| {
    if data.len() < 48 {
        return;
    }
    let word = |i: usize| u64::from_le_bytes(data[i * 8..i * 8 + 8].try_into().unwrap());
    let ram = GuestRam::new("fuzz", 8 << 20).expect("ram");
    let _ = ram.write(0x500000, &data[48..data.len().min(48 + 8192)]);
    // Pointers: half of the time steer them into the filled area.
    let steer = |v: u64| if v & 1 == 0 { 0x500000 + (v >> 1) % 8192 } else { v };
    let call = HypercallArgs { nr: word(0) % 64, args: [word(1) % 32, steer(word(2)), steer(word(3)), word(4), word(5)] };
    let _ = decode(call, &GuestView::identity(&ram));
    let _ = decode(call, &GuestView::paged(&ram, Some(0x500)));
});
