//! Decodes and executes `grant_table_op` with arbitrary arguments over guest memory
//! filled with the input (the grant frame included), then lets domain 0 map and copy
//! arbitrary refs: nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rxen_vmm::grant::{hypercall, GrantTable, DOM0};
use rxen_vmm::memory::GuestRam;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    if data.len() < 40 {
        return;
    }
    let word = |i: usize| u64::from_le_bytes(data[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    let Ok(ram) = GuestRam::new("fuzz", 8 << 20) else {
        return;
    };
    let ram = Arc::new(ram);
    let table = GrantTable::new(ram.clone(), 1);
    let _ = table.place_frame(0, 0x600);
    let body = &data[40..data.len().min(40 + 8192)];
    let _ = ram.write(0x500000, body);
    let _ = ram.write(0x600000, body);
    let steer = |v: u64| {
        if v & 1 == 0 {
            0x500000 + (v >> 1) % 8192
        } else {
            v
        }
    };
    let view = rxen_vmm::guest_view::GuestView::identity(&ram);
    if let Ok(op) = hypercall::decode(word(0) % 16, steer(word(1)), word(2) % 8, &view) {
        let _ = hypercall::execute(&table, &view, op);
    }
    let gref = (word(3) % 600) as u32;
    if let Ok(m) = table.map(DOM0, gref, word(4) & 1 == 0) {
        let mut b = [0u8; 64];
        let _ = m.read(word(4) % 4200, &mut b);
        let _ = m.write(word(4) % 4200, &b);
    }
    let mut b = vec![0u8; (word(3) >> 32) as usize % 5000];
    let _ = table.copy_from_grant(DOM0, gref, word(4) >> 40, &mut b);
});
