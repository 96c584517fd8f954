//! Question 1: how the VMM learns of a CPL-3 exception, what the CPU left, and what a
//! trap bounced to a guest handler costs.

use std::time::Duration;

use crate::bounce::*;
use crate::vm::*;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// One faulting guest command.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    pub name: &'static str,
    pub cmd: u64,
    pub arg: u64,
    pub vector: u8,
}

pub const KINDS: [Kind; 6] = [
    Kind {
        name: "pf_read_unmapped",
        cmd: cmd::READ,
        arg: UNMAPPED,
        vector: 14,
    },
    Kind {
        name: "pf_write_readonly",
        cmd: cmd::WRITE,
        arg: RO_PAGE,
        vector: 14,
    },
    Kind {
        name: "gp_noncanonical",
        cmd: cmd::READ,
        arg: 0x8000_0000_0000_0000,
        vector: 13,
    },
    Kind {
        name: "ud_ud2",
        cmd: cmd::UD,
        arg: 0,
        vector: 6,
    },
    Kind {
        name: "bp_int3",
        cmd: cmd::INT3,
        arg: 0,
        vector: 3,
    },
    Kind {
        name: "de_div0",
        cmd: cmd::DIV0,
        arg: 0,
        vector: 0,
    },
];

/// Median round trip of a guest command that does nothing (exit + `KVM_RUN`).
pub fn nop_round_trip(vm: &mut Vm, reps: usize) -> Res<f64> {
    let mut s = Vec::new();
    for _ in 0..reps {
        let (r, d) = timed(|| vm.command(cmd::NOP, 0));
        assert_eq!(r?, Exit::Done);
        s.push(d);
    }
    Ok(median_us(&mut s))
}

fn describe(f: &Fault) -> String {
    let stack = if f.stub_rsp < USER_STACK_TOP && f.stub_rsp >= 0x70000 {
        "interrupted-stack"
    } else if f.stub_rsp < KERNEL_STACK_TOP && f.stub_rsp >= USER_STACK_TOP {
        "tss-rsp0"
    } else if f.stub_rsp < IST_TOP && f.stub_rsp >= KERNEL_STACK_TOP {
        "tss-ist1"
    } else {
        "other"
    };
    format!(
        "vector={} stub_cpl={} stub_cs={:#x} stack={} rsp={:#x} err={} frame=[rip={:#x} cs={:#x} rflags={:#x} rsp={:#x} ss={:#x}] cr2={:#x}",
        f.vector,
        f.cpl,
        f.stub_cs,
        stack,
        f.stub_rsp,
        f.error_code.map_or("none".into(), |e| format!("{e:#x}")),
        f.frame[0],
        f.frame[1],
        f.frame[2],
        f.frame[3],
        f.frame[4],
        f.cr2
    )
}

/// How the stub resumes the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Gates to the stubs with the guest's CPL-3 code segment; bounce by registers.
    Cpl3Regs,
    /// As `Cpl3Regs`, registers through `kvm_run->s.regs` (no register ioctls).
    Cpl3Sync,
    /// As `Cpl3Regs` with IST 1.
    Cpl3Ist,
    /// Gates to the stubs with a DPL-0 code segment; bounce through the stub's `iretq`.
    Cpl0Iret,
}

/// Runs each kind `reps` times through stub -> VMM -> guest handler -> iret hypercall,
/// checking the handler saw Xen's frame; prints one line per kind.
pub fn bounce_cases(reps: usize, via: Via, kinds: &[Kind]) -> Res<()> {
    let mut vm = Vm::new()?;
    match via {
        Via::Cpl3Regs | Via::Cpl3Sync => vm.gates_to_stubs(USER_CS, 3, 0),
        Via::Cpl3Ist => vm.gates_to_stubs(USER_CS, 3, 1),
        Via::Cpl0Iret => vm.gates_to_stubs(KERNEL_CS, 3, 0),
    }
    let acc = if via == Via::Cpl3Sync {
        enable_sync(&mut vm.vcpu, true);
        RegAccess::Sync
    } else {
        RegAccess::Ioctl
    };
    let nop = nop_round_trip(&mut vm, reps)?;
    for k in kinds {
        let (mut to_stub, mut read, mut to_handler, mut iret, mut total) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut first: Option<Fault> = None;
        let mut verdict = String::from("ok");
        for _ in 0..reps {
            vm.ram.write(MAILBOX + mb::VALUE, 0x1234);
            let (exit, d0) = timed(|| vm.command(k.cmd, k.arg));
            let exit = exit?;
            let Exit::Stub(v) = exit else {
                verdict = format!("no stub exit: {exit:?}");
                break;
            };
            let (f, d1) = timed(|| read_fault(&vm, v, acc));
            let f = f?;
            if v != k.vector {
                verdict = format!("vector {v}, expected {}", k.vector);
            }
            first.get_or_insert(f);
            let ((), d2a) = match via {
                Via::Cpl0Iret => {
                    let (r, d) = timed(|| bounce_by_stub_iret(&vm, &f));
                    (r?, d)
                }
                _ => {
                    let (r, d) = timed(|| bounce_by_regs(&mut vm, &f, acc));
                    (r?, d)
                }
            };
            let (exit, d2b) = timed(|| vm.run());
            let exit = exit?;
            if exit != Exit::Iret {
                verdict = format!("handler not reached: {exit:?}");
                break;
            }
            // The handler copied the frame it got: check it is Xen's.
            let copy = vm.words(MAILBOX + mb::FRAME_COPY, 8);
            let mut expect = vec![f.rcx, f.r11];
            expect.extend(f.error_code);
            expect.extend(f.frame);
            expect.truncate(8);
            if copy[..expect.len()] != expect[..] {
                verdict = format!("handler frame {copy:x?} != {expect:x?}");
            }
            let m = &mut *vm;
            let (r, d3a) = timed(|| iret_hypercall(&mut m.vcpu, &m.ram, acc, 0));
            r?;
            let (exit, d3b) = timed(|| vm.run());
            if exit? != Exit::Done {
                verdict = "iret did not return to the loop".into();
                break;
            }
            to_stub.push(d0);
            read.push(d1);
            to_handler.push(d2a + d2b);
            iret.push(d3a + d3b);
            total.push(d0 + d1 + d2a + d2b + d3a + d3b);
        }
        let state = first.as_ref().map_or("no fault".into(), describe);
        println!(
            "case trap {} via={via:?}: {state}; bounce={verdict}; nop_rt_us={nop:.1} to_stub_exit_us={:.1} read_state_us={:.1} bounce+to_handler_exit_us={:.1} iret_hcall+back_us={:.1} total_us={:.1} over_nop_us={:.1}",
            k.name,
            median_us(&mut to_stub),
            median_us(&mut read),
            median_us(&mut to_handler),
            median_us(&mut iret),
            median_us(&mut total),
            median_us(&mut total) - nop,
        );
    }
    Ok(())
}

/// `int3` through a gate of DPL 0 (Xen: a trap_table entry without the DPL-3 flag).
pub fn int3_dpl0_gate() -> Res<()> {
    let mut vm = Vm::new()?;
    vm.gates_to_stubs(USER_CS, 3, 0);
    vm.set_gate(
        3,
        Gate {
            target: STUBS + 3 * 16,
            selector: USER_CS,
            dpl: 0,
            ist: 0,
        },
    );
    let exit = vm.command(cmd::INT3, 0)?;
    let state = match exit {
        Exit::Stub(v) => describe(&read_fault(&vm, v, RegAccess::Ioctl)?),
        other => format!("{other:?}"),
    };
    println!("case int3_gate_dpl0: {state}");
    Ok(())
}

/// Exceptions handled inside the guest with no VMM exit: gates point straight at CPL-3
/// handlers that `iretq` (the cost of the CPU/KVM delivering one exception here).
pub fn direct_loops(reps: usize) -> Res<()> {
    const N: u64 = 2000;
    let mut vm = Vm::new()?;
    vm.gates_to_stubs(USER_CS, 3, 0);
    let user = |target| Gate {
        target,
        selector: USER_CS,
        dpl: 3,
        ist: 0,
    };
    vm.set_gate(3, user(FAST_IRET));
    vm.set_gate(6, user(FAST_UD));
    vm.set_gate(14, user(FAST_PF));
    let nop = nop_round_trip(&mut vm, reps)?;
    vm.ram.write(MAILBOX + mb::VALUE, UNMAPPED);
    for (name, c) in [
        ("int3", cmd::LOOP_INT3),
        ("ud2", cmd::LOOP_UD),
        ("pf_unmapped", cmd::LOOP_PF),
    ] {
        let mut per = Vec::new();
        let mut verdict = "ok".to_string();
        for _ in 0..reps {
            let (exit, d) = timed(|| vm.command(c, N));
            match exit? {
                Exit::Done => {
                    per.push(d.saturating_sub(Duration::from_secs_f64(nop / 1e6)) / N as u32)
                }
                other => {
                    verdict = format!("{other:?}");
                    break;
                }
            }
        }
        println!(
            "case direct_cpl3_handler {name}: {verdict}; per_exception_us={:.2} ({N} per run, handler iretq at CPL 3, no VMM exit)",
            median_us(&mut per)
        );
    }
    Ok(())
}
