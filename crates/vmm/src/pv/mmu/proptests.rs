//! Arbitrary operation sequences never panic and keep every reference consistent
//! ([`Mmu::audit`]): in particular no frame is ever a page table and writably mapped.

use super::entry::*;
use super::*;
use proptest::prelude::*;
use rxen_abi::mmu::*;

const NR: u64 = 24;

#[derive(Clone, Debug)]
enum Op {
    Update {
        table: u64,
        index: usize,
        target: u64,
        flags: u64,
        cmd: u64,
    },
    Ext {
        cmd: u32,
        frame: u64,
        vcpu: usize,
    },
    Va {
        va: u64,
        target: u64,
        flags: u64,
    },
    Raw {
        frame: u64,
        index: usize,
        value: u64,
    },
}

fn flags() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(PAGE_PRESENT),
        Just(PAGE_PRESENT | PAGE_RW),
        Just(PAGE_PRESENT | PAGE_RW | PAGE_USER | PAGE_ACCESSED),
        Just(PAGE_PRESENT | PAGE_NX),
        Just(PAGE_PRESENT | PAGE_PSE_OR_PAT),
        Just(PAGE_PRESENT | PAGE_GLOBAL),
        any::<u64>().prop_map(|v| v & FLAGS_MASK),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let frame = 0..NR + 2;
    prop_oneof![
        4 => (frame.clone(), prop_oneof![0..4usize, 250..275usize, 0..512usize], frame.clone(), flags(), 0..5u64)
            .prop_map(|(table, index, target, flags, cmd)| Op::Update { table, index, target, flags, cmd }),
        2 => (0..21u32, frame.clone(), 0..3usize).prop_map(|(cmd, frame, vcpu)| Op::Ext { cmd, frame, vcpu }),
        1 => (0..0x80_0000u64, frame.clone(), flags()).prop_map(|(va, target, flags)| Op::Va { va, target, flags }),
        1 => (frame, 0..4usize, any::<u64>()).prop_map(|(frame, index, value)| Op::Raw { frame, index, value }),
    ]
}

fn run(mmu: &mut Mmu, mem: &mut VecFrames, op: &Op) {
    let out = match *op {
        Op::Update {
            table,
            index,
            target,
            flags,
            cmd,
        } => {
            let req = MmuUpdate {
                ptr: (table << 12) | ((index as u64) << 3) | cmd,
                val: (target << 12) | flags,
            };
            mmu.mmu_update(mem, &[req])
        }
        Op::Ext { cmd, frame, vcpu } => mmu.mmuext_op(
            mem,
            vcpu,
            &[MmuextOp {
                cmd,
                arg1: frame,
                ..Default::default()
            }],
        ),
        Op::Va { va, target, flags } => mmu.update_va_mapping(mem, 0, va, (target << 12) | flags),
        Op::Raw {
            frame,
            index,
            value,
        } => {
            // The guest writing memory it may write: only frames no table holds.
            if mmu
                .frame(frame)
                .is_some_and(|f| f.type_count == 0 || f.ty == FrameType::Writable)
            {
                mem.write_entry(frame, index, value);
            }
            return;
        }
    };
    if let Err(e) = out.result {
        assert!(e.errno() > 0);
        assert_eq!(out.done, 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_sequences_keep_the_invariants(ops in prop::collection::vec(op(), 1..60)) {
        let mut mem = VecFrames::new(NR + 2);
        let mut mmu = Mmu::new(NR + 2, 2);
        mmu.set_owner(NR, Owner::Rxen).unwrap();
        mmu.set_owner(NR + 1, Owner::SharedInfo).unwrap();
        // Start from a small valid tree so deep paths are reachable.
        mem.write_entry(1, 0, (2 << 12) | PAGE_PRESENT | PAGE_RW);
        mem.write_entry(2, 0, (3 << 12) | PAGE_PRESENT | PAGE_RW);
        mem.write_entry(3, 0, (4 << 12) | PAGE_PRESENT | PAGE_RW);
        for f in 5..NR {
            mem.write_entry(4, f as usize, (f << 12) | PAGE_PRESENT | PAGE_RW);
        }
        prop_assert_eq!(mmu.mmuext_op(&mut mem, 0, &[
            MmuextOp { cmd: MMUEXT_PIN_L4_TABLE, arg1: 1, ..Default::default() },
            MmuextOp { cmd: MMUEXT_NEW_BASEPTR, arg1: 1, ..Default::default() },
        ]).result, Ok(()));
        for op in &ops {
            run(&mut mmu, &mut mem, op);
            if let Err(msg) = mmu.audit(&mem) {
                return Err(TestCaseError::fail(format!("after {op:?}: {msg}")));
            }
        }
    }
}
