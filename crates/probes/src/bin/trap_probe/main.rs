//! trap_probe: how a CPL-3 guest's exceptions and asynchronous events can be delivered
//! on this host's KVM (issue 8 item 4).
//!
//! Runs a small CPL-3 guest (a command loop, `guest.s`) with a GDT, an IDT and a TSS,
//! and asks, with measurements: how the VMM learns of a guest exception (IDT gates to
//! exit stubs at CPL 3 or CPL 0, `KVM_SET_GUEST_DEBUG`, triple fault), what the CPU
//! left (frame, error code, `cr2`), what a trap bounced to a guest handler in Xen's
//! frame costs; how fast a spinning vCPU gets an event callback after a kick; whether
//! the `iret` hypercall and RFLAGS.IF/IOPL work from the VMM. Findings are recorded in
//! `docs/architecture.md` ("Probe: exceptions and event delivery on this host").
//!
//! Run (needs /dev/kvm):
//!   cargo run --release -p rxen-probes --bin trap_probe [-- --reps N]
//! Every result is one line starting with `case`; exit status 0 if the probe ran,
//! whatever the answers are.

// A probe, not a daemon: it runs against its own VM with fixed, valid inputs, and an
// unexpected failure should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bounce;
mod events;
mod exceptions;
mod flags;
mod guest_code;
mod other_signals;
mod vm;

fn run_all(reps: usize) -> Result<(), Box<dyn std::error::Error>> {
    use exceptions::{Via, KINDS};
    other_signals::capabilities()?;
    exceptions::bounce_cases(reps, Via::Cpl3Regs, &KINDS)?;
    exceptions::bounce_cases(reps, Via::Cpl3Sync, &KINDS)?;
    exceptions::bounce_cases(reps, Via::Cpl3Ist, &KINDS[3..4])?;
    exceptions::bounce_cases(reps, Via::Cpl0Iret, &KINDS[..4])?;
    exceptions::int3_dpl0_gate()?;
    exceptions::direct_loops(reps)?;
    other_signals::guest_debug_int3(reps)?;
    other_signals::triple_fault(reps.min(3))?;
    flags::rflags_cases()?;
    events::upcall_latency(reps.max(20), bounce::RegAccess::Ioctl)?;
    events::upcall_latency(reps.max(20), bounce::RegAccess::Sync)?;
    Ok(())
}

fn main() {
    let reps = std::env::args()
        .skip_while(|a| a != "--reps")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(9usize);
    if let Err(e) = run_all(reps) {
        eprintln!("trap_probe failed: {e}");
        std::process::exit(1);
    }
}
