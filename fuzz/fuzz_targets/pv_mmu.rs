//! Drives the PV direct-paging MMU with arbitrary `mmu_update`, `mmuext_op` and
//! `update_va_mapping` requests over a small frame space that starts with a valid
//! boot tree and arbitrary bytes elsewhere: nothing may panic, and the reference audit
//! (no page-table frame writably mapped, counts consistent) must hold after each batch.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rxen_abi::mmu::{MmuUpdate, MmuextOp};
use rxen_vmm::pv::mmu::{GuestFrames, Mmu, Owner, VecFrames};

const NR: u64 = 32;

fuzz_target!(|data: &[u8]| {
    let mut words = data
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
    let mut mem = VecFrames::new(NR + 2);
    let mut mmu = Mmu::new(NR + 2, 2);
    let _ = mmu.set_owner(NR, Owner::Rxen);
    let _ = mmu.set_owner(NR + 1, Owner::GrantFrame);
    // A boot tree L4 1 -> L3 2 -> L2 3 -> L1 4 mapping frames 5.. read-write.
    mem.write_entry(1, 0, (2 << 12) | 3);
    mem.write_entry(2, 0, (3 << 12) | 3);
    mem.write_entry(3, 0, (4 << 12) | 3);
    for f in 5..NR {
        mem.write_entry(4, f as usize, (f << 12) | 3);
    }
    // Some frames start with fuzzer-chosen contents.
    for (i, w) in words.by_ref().take(64).enumerate() {
        mem.write_entry(20 + (i as u64 % 8), i % 512, w);
    }
    let boot = [
        MmuextOp {
            cmd: 3,
            arg1: 1,
            ..Default::default()
        },
        MmuextOp {
            cmd: 5,
            arg1: 1,
            ..Default::default()
        },
    ];
    let _ = mmu.mmuext_op(&mut mem, 0, &boot);
    let steer = |w: u64| (w % (NR + 4)) << 12;
    while let (Some(kind), Some(a), Some(b)) = (words.next(), words.next(), words.next()) {
        let out = match kind % 4 {
            0 => {
                let ptr = steer(a) | ((a >> 8) & 0xfff);
                let val = if kind & 0x100 == 0 {
                    steer(b) | (b & 0x8000_0000_0000_0fff)
                } else {
                    b
                };
                mmu.mmu_update(&mut mem, &[MmuUpdate { ptr, val }])
            }
            1 => {
                let op = MmuextOp {
                    cmd: (a % 24) as u32,
                    arg1: if kind & 0x100 == 0 { b % (NR + 4) } else { b },
                    ..Default::default()
                };
                mmu.mmuext_op(&mut mem, (kind >> 16) as usize % 3, &[op])
            }
            2 => mmu.update_va_mapping(&mut mem, 0, a, steer(b) | (b & 0xfff)),
            _ => {
                let _ = mmu.set_owner(a % (NR + 4), Owner::Guest);
                continue;
            }
        };
        let _ = out.invalidate.ranges();
        if let Err(msg) = mmu.audit(&mem) {
            panic!("audit failed: {msg}");
        }
    }
});
