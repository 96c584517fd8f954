//! Question 1, the other candidates: `KVM_SET_GUEST_DEBUG`, `KVM_CAP_EXCEPTION_PAYLOAD`
//! and friends, and the triple fault with no IDT.

use kvm_bindings::{kvm_enable_cap, kvm_guest_debug, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_USE_SW_BP};

use crate::exceptions::{nop_round_trip, KINDS};
use crate::vm::*;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const KVM_CAP_SET_GUEST_DEBUG: u64 = 23;
const KVM_CAP_EXCEPTION_PAYLOAD: u32 = 164;
const KVM_CAP_X86_TRIPLE_FAULT_EVENT: u64 = 218;
const KVM_CAP_SYNC_REGS: u64 = 74;

/// Which capabilities this KVM reports, and whether EXCEPTION_PAYLOAD can be enabled.
pub fn capabilities() -> Res<()> {
    let vm = Vm::new()?;
    let has = |c: u64| vm.vm.check_extension_raw(c);
    let payload = vm
        .vm
        .check_extension_raw(u64::from(KVM_CAP_EXCEPTION_PAYLOAD));
    let enable = vm.vm.enable_cap(&kvm_enable_cap {
        cap: KVM_CAP_EXCEPTION_PAYLOAD,
        args: [1, 0, 0, 0],
        ..Default::default()
    });
    println!(
        "case caps: set_guest_debug={} exception_payload={payload} (enable: {}) x86_triple_fault_event={} sync_regs={:#x}",
        has(KVM_CAP_SET_GUEST_DEBUG),
        enable.map_or_else(|e| format!("refused {e}"), |()| "ok".into()),
        has(KVM_CAP_X86_TRIPLE_FAULT_EVENT),
        has(KVM_CAP_SYNC_REGS),
    );
    Ok(())
}

/// `KVM_SET_GUEST_DEBUG` with software breakpoints: does a guest `int3` exit to the VMM?
pub fn guest_debug_int3(reps: usize) -> Res<()> {
    let mut vm = Vm::new()?;
    vm.gates_to_stubs(USER_CS, 3, 0);
    let nop = nop_round_trip(&mut vm, reps)?;
    let dbg = kvm_guest_debug {
        control: KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP,
        ..Default::default()
    };
    if let Err(e) = vm.vcpu.set_guest_debug(&dbg) {
        println!("case guest_debug_sw_bp: KVM_SET_GUEST_DEBUG refused: {e}");
        return Ok(());
    }
    let mut s = Vec::new();
    let mut what = String::new();
    for _ in 0..reps {
        let (exit, d) = timed(|| vm.command(cmd::INT3, 0));
        let exit = exit?;
        let rip = vm.vcpu.get_regs()?.rip;
        what = format!("exit={exit:?} rip={rip:#x}");
        if exit != Exit::Debug {
            break;
        }
        s.push(d);
        // Resume after the int3 (KVM leaves rip at it) and back to the loop.
        let mut regs = vm.vcpu.get_regs()?;
        regs.rip = CODE;
        vm.vcpu.set_regs(&regs)?;
        assert_eq!(vm.run()?, Exit::Done);
    }
    println!(
        "case guest_debug_sw_bp: {what}; to_exit_us={:.1} nop_rt_us={nop:.1} (only #BP/#DB can be intercepted this way)",
        median_us(&mut s)
    );
    Ok(())
}

/// No IDT (limit 0): a fault ends in a triple fault. What state is left, and can the VMM
/// resume the vCPU afterwards?
pub fn triple_fault(reps: usize) -> Res<()> {
    for k in KINDS {
        let (name, c, arg) = (k.name, k.cmd, k.arg);
        let mut vm = Vm::new()?;
        let mut sregs = vm.vcpu.get_sregs()?;
        sregs.idt.limit = 0;
        vm.vcpu.set_sregs(&sregs)?;
        let mut s = Vec::new();
        let mut what = String::new();
        for _ in 0..reps {
            let (exit, d) = timed(|| vm.command(c, arg));
            let exit = exit?;
            let regs = vm.vcpu.get_regs()?;
            let sregs = vm.vcpu.get_sregs()?;
            let events = vm.vcpu.get_vcpu_events()?;
            what = format!(
                "exit={exit:?} rip={:#x} rsp={:#x} cr2={:#x} cs={:#x} exception(injected={} nr={} has_err={} err={:#x})",
                regs.rip,
                regs.rsp,
                sregs.cr2,
                sregs.cs.selector,
                events.exception.injected,
                events.exception.nr,
                events.exception.has_error_code,
                events.exception.error_code
            );
            if exit != Exit::Shutdown {
                break;
            }
            s.push(d);
            let mut regs = regs;
            regs.rip = CODE;
            regs.rsp = USER_STACK_TOP;
            vm.vcpu.set_regs(&regs)?;
            match vm.run() {
                Ok(Exit::Done) => what.push_str("; resumed after set_regs: ok"),
                other => {
                    what.push_str(&format!("; resume after set_regs: {other:?}"));
                    break;
                }
            }
        }
        println!(
            "case triple_fault_no_idt {name}: {what}; to_exit_us={:.1}",
            median_us(&mut s)
        );
    }
    Ok(())
}
