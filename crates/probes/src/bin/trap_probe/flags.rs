//! Questions 3 and 4: which RFLAGS the VMM can give a CPL-3 guest here (IF, IOPL), what
//! the guest sees, and what `cli`/`sti` do at CPL 3.

use crate::bounce::{read_fault, RegAccess};
use crate::vm::*;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn guest_flags(vm: &mut Vm, c: u64) -> Res<String> {
    Ok(match vm.command(c, 0)? {
        Exit::Done => format!("guest_pushfq={:#x}", vm.ram.read(MAILBOX + mb::RESULT)),
        Exit::Stub(v) => {
            let f = read_fault(vm, v, RegAccess::Ioctl)?;
            format!(
                "fault vector={v} err={:?} at rip={:#x}",
                f.error_code, f.frame[0]
            )
        }
        other => format!("{other:?}"),
    })
}

pub fn rflags_cases() -> Res<()> {
    for set in [0x2u64, 0x202, 0x3202, 0x3002] {
        let mut vm = Vm::new()?;
        vm.gates_to_stubs(USER_CS, 3, 0);
        let mut regs = vm.vcpu.get_regs()?;
        regs.rflags = set;
        vm.vcpu.set_regs(&regs)?;
        let back = vm.vcpu.get_regs()?.rflags;
        let seen = guest_flags(&mut vm, cmd::FLAGS)?;
        let after = vm.vcpu.get_regs()?.rflags;
        let mut vm2 = Vm::new()?;
        vm2.gates_to_stubs(USER_CS, 3, 0);
        let mut regs = vm2.vcpu.get_regs()?;
        regs.rflags = set;
        vm2.vcpu.set_regs(&regs)?;
        let cli = guest_flags(&mut vm2, cmd::CLI)?;
        let mut vm3 = Vm::new()?;
        vm3.gates_to_stubs(USER_CS, 3, 0);
        let mut regs = vm3.vcpu.get_regs()?;
        regs.rflags = set;
        vm3.vcpu.set_regs(&regs)?;
        let sti = guest_flags(&mut vm3, cmd::STI)?;
        println!(
            "case rflags set={set:#x}: get_regs_back={back:#x} pushfq: {seen} (vmm sees {after:#x} at the next exit); cli: {cli}; sti: {sti}"
        );
    }
    // Segment registers as the guest sees them (Xen's flat selectors via KVM_SET_SREGS).
    let mut vm = Vm::new()?;
    assert_eq!(vm.command(cmd::SEGS, 0)?, Exit::Done);
    println!(
        "case segments: guest reads cs={:#x} ss={:#x} (set by KVM_SET_SREGS before the first run)",
        vm.ram.read(MAILBOX + mb::RESULT),
        vm.ram.read(MAILBOX + mb::VALUE)
    );
    Ok(())
}
