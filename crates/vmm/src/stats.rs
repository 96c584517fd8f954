//! Where a domain's time goes: counters of hypercalls by op (and sub-op), KVM exits by
//! reason, instructions rxen emulates by kind, traps bounced to the guest by vector,
//! event upcalls and guest-mode switches.
//!
//! Each counter is a relaxed atomic add on the path it counts (one call from that
//! path, so the call sites stay one line); [`DomainStats::snapshot`] sums them up on
//! request (`rxen_vmm_api::Request::Stats`) and when the domain ends (logged under the
//! target `rxen_vmm::stats`). This module only counts: it must not change what a path
//! does.

use std::sync::atomic::{AtomicU64, Ordering};

use kvm_ioctls::VcpuExit;
use rxen_abi::hypercall as nr;
use rxen_vmm_api::{DomainStats as Snapshot, StatCount};

/// Slots of the hypercall and sub-op tables; the last one counts every higher number.
const SLOTS: usize = 64;

/// Hypercalls whose first argument is a command counted as a sub-op, with the
/// command's names (`None`: shown as a number).
const SUBOP_GROUPS: [(u32, &str); 9] = [
    (nr::SCHED_OP, "sched_op"),
    (nr::VCPU_OP, "vcpu_op"),
    (nr::MEMORY_OP, "memory_op"),
    (nr::EVENT_CHANNEL_OP, "event_channel_op"),
    (nr::GRANT_TABLE_OP, "grant_table_op"),
    (nr::PHYSDEV_OP, "physdev_op"),
    (nr::XEN_VERSION, "xen_version"),
    (nr::CONSOLE_IO, "console_io"),
    (nr::CALLBACK_OP, "callback_op"),
];

/// A KVM exit, by reason (I/O exits by the port rxen gives them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// `out` to the `syscall` stub's port: a hypercall by `syscall`, or a user-mode
    /// system call.
    SyscallStub,
    /// `out` to the trap stubs' port: an exception through rxen's IDT.
    TrapStub,
    /// `out` to the hypercall port (rxen's own guests' hypercall page).
    HypercallPort,
    /// Any other `out`.
    IoOut,
    IoIn,
    MmioRead,
    MmioWrite,
    /// A kick (`KVM_EXIT_INTR`, or `KVM_RUN` interrupted by the kick signal).
    Interrupted,
    Shutdown,
    /// Anything else, including a failed `KVM_RUN`.
    Other,
}

impl Exit {
    const ALL: [Exit; 10] = [
        Exit::SyscallStub,
        Exit::TrapStub,
        Exit::HypercallPort,
        Exit::IoOut,
        Exit::IoIn,
        Exit::MmioRead,
        Exit::MmioWrite,
        Exit::Interrupted,
        Exit::Shutdown,
        Exit::Other,
    ];

    fn name(self) -> &'static str {
        match self {
            Exit::SyscallStub => "io_out_syscall_stub",
            Exit::TrapStub => "io_out_trap_stub",
            Exit::HypercallPort => "io_out_hypercall_port",
            Exit::IoOut => "io_out_other",
            Exit::IoIn => "io_in",
            Exit::MmioRead => "mmio_read",
            Exit::MmioWrite => "mmio_write",
            Exit::Interrupted => "interrupted",
            Exit::Shutdown => "shutdown",
            Exit::Other => "other",
        }
    }

    /// The kind of what `KVM_RUN` returned.
    pub fn of(exit: &Result<VcpuExit<'_>, kvm_ioctls::Error>) -> Exit {
        use rxen_abi::layout::{HYPERCALL_PORT, SYSCALL_STUB_PORT, TRAP_STUB_PORT};
        match exit {
            Ok(VcpuExit::IoOut(SYSCALL_STUB_PORT, _)) => Exit::SyscallStub,
            Ok(VcpuExit::IoOut(TRAP_STUB_PORT, _)) => Exit::TrapStub,
            Ok(VcpuExit::IoOut(HYPERCALL_PORT, _)) => Exit::HypercallPort,
            Ok(VcpuExit::IoOut(..)) => Exit::IoOut,
            Ok(VcpuExit::IoIn(..)) => Exit::IoIn,
            Ok(VcpuExit::MmioRead(..)) => Exit::MmioRead,
            Ok(VcpuExit::MmioWrite(..)) => Exit::MmioWrite,
            Ok(VcpuExit::Intr) => Exit::Interrupted,
            Ok(VcpuExit::Shutdown) => Exit::Shutdown,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Exit::Interrupted,
            _ => Exit::Other,
        }
    }
}

/// An instruction or access rxen emulated for the guest after a trap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emulated {
    /// `in`/`out` (`traps::privop`).
    PortIo,
    /// `mov` from a control register.
    CrRead,
    /// `mov` to a control register.
    CrWrite,
    /// `cli`/`sti`.
    CliSti,
    /// `wbinvd`/`invd`.
    CacheFlush,
    /// `rdmsr`/`wrmsr` (`traps::privop`, and the segment bases of `traps::msr`).
    Msr,
    /// Xen's forced-emulation CPUID (`traps::cpuid`).
    Cpuid,
    /// A write to a page-table entry (`traps::ptwr`).
    PtWrite,
    /// A read of the M2P in slot 256 (`traps::m2p`).
    M2pRead,
    /// A privileged instruction not told apart above.
    OtherPrivileged,
}

impl Emulated {
    const ALL: [Emulated; 10] = [
        Emulated::PortIo,
        Emulated::CrRead,
        Emulated::CrWrite,
        Emulated::CliSti,
        Emulated::CacheFlush,
        Emulated::Msr,
        Emulated::Cpuid,
        Emulated::PtWrite,
        Emulated::M2pRead,
        Emulated::OtherPrivileged,
    ];

    fn name(self) -> &'static str {
        match self {
            Emulated::PortIo => "port_io",
            Emulated::CrRead => "cr_read",
            Emulated::CrWrite => "cr_write",
            Emulated::CliSti => "cli_sti",
            Emulated::CacheFlush => "cache_flush",
            Emulated::Msr => "msr",
            Emulated::Cpuid => "cpuid",
            Emulated::PtWrite => "ptwr",
            Emulated::M2pRead => "m2p_read",
            Emulated::OtherPrivileged => "other_privileged",
        }
    }

    /// The kind of the privileged instruction whose first bytes are `code` (after any
    /// operand-size or REX prefix).
    pub fn of_privileged(code: &[u8]) -> Emulated {
        let mut rest = code;
        while let [0x66 | 0x40..=0x4f, tail @ ..] = rest {
            rest = tail;
        }
        match rest {
            [0xe4..=0xe7 | 0xec..=0xef, ..] => Emulated::PortIo,
            [0xfa | 0xfb, ..] => Emulated::CliSti,
            [0x0f, 0x20, ..] => Emulated::CrRead,
            [0x0f, 0x22, ..] => Emulated::CrWrite,
            [0x0f, 0x08 | 0x09, ..] => Emulated::CacheFlush,
            [0x0f, 0x30 | 0x32, ..] => Emulated::Msr,
            _ => Emulated::OtherPrivileged,
        }
    }
}

/// Other things that cost an exit or a mode switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// An event upcall delivered to the guest's callback.
    Upcall,
    /// A `syscall` in guest user mode bounced to the kernel's callback.
    UserSyscall,
    /// Guest user mode to kernel mode (system call, exception, upcall).
    ToKernel,
    /// Guest kernel mode to user mode (`iret` to RPL 3).
    ToUser,
}

impl Event {
    const ALL: [Event; 4] = [
        Event::Upcall,
        Event::UserSyscall,
        Event::ToKernel,
        Event::ToUser,
    ];

    fn name(self) -> &'static str {
        match self {
            Event::Upcall => "upcall",
            Event::UserSyscall => "user_syscall",
            Event::ToKernel => "to_kernel_mode",
            Event::ToUser => "to_user_mode",
        }
    }
}

/// `N` counters.
struct Counters<const N: usize>([AtomicU64; N]);

impl<const N: usize> Default for Counters<N> {
    fn default() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl<const N: usize> Counters<N> {
    /// Adds one to counter `i` (the last one for any higher `i`).
    fn add(&self, i: usize) {
        self.0[i.min(N - 1)].fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self, i: usize) -> u64 {
        self.0.get(i).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// One domain's counters (see the module doc).
#[derive(Default)]
pub struct DomainStats {
    hypercalls: Counters<SLOTS>,
    subops: [Counters<SLOTS>; SUBOP_GROUPS.len()],
    mmuext: Counters<SLOTS>,
    exits: Counters<{ Exit::ALL.len() }>,
    emulated: Counters<{ Emulated::ALL.len() }>,
    traps: Counters<256>,
    events: Counters<{ Event::ALL.len() }>,
}

impl std::fmt::Debug for DomainStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainStats").finish_non_exhaustive()
    }
}

impl DomainStats {
    /// Counts a hypercall `number` with its first argument `arg0` (the sub-op of the
    /// hypercalls in [`SUBOP_GROUPS`]).
    pub fn hypercall(&self, number: u64, arg0: u64) {
        let n = usize::try_from(number).unwrap_or(usize::MAX);
        self.hypercalls.add(n);
        if let Some(g) = SUBOP_GROUPS
            .iter()
            .position(|&(g, _)| u64::from(g) == number)
        {
            self.subops[g].add(usize::try_from(arg0).unwrap_or(usize::MAX));
        }
    }

    /// Counts the commands of one `mmuext_op` batch.
    pub fn mmuext_ops(&self, ops: &[rxen_abi::mmu::MmuextOp]) {
        for op in ops {
            self.mmuext.add(op.cmd as usize);
        }
    }

    pub fn exit(&self, kind: Exit) {
        self.exits.add(kind as usize);
    }

    pub fn emulated(&self, kind: Emulated) {
        self.emulated.add(kind as usize);
    }

    /// Counts a trap bounced to the guest's handler for `vector`.
    pub fn trap(&self, vector: u8) {
        self.traps.add(usize::from(vector));
    }

    pub fn event(&self, kind: Event) {
        self.events.add(kind as usize);
    }

    /// Every counter that is not zero, highest first.
    pub fn snapshot(&self) -> Snapshot {
        let mut counts = Vec::new();
        let mut push = |group: &str, name: String, count: u64| {
            if count != 0 {
                counts.push(StatCount {
                    group: group.into(),
                    name,
                    count,
                });
            }
        };
        for i in 0..SLOTS {
            push("hypercall", hypercall_name(i), self.hypercalls.get(i));
            push("mmuext_op", mmuext_name(i), self.mmuext.get(i));
            for (g, &(number, group)) in SUBOP_GROUPS.iter().enumerate() {
                push(group, subop_name(number, i), self.subops[g].get(i));
            }
        }
        for (i, kind) in Exit::ALL.iter().enumerate() {
            push("exit", kind.name().into(), self.exits.get(i));
        }
        for (i, kind) in Emulated::ALL.iter().enumerate() {
            push("emulated", kind.name().into(), self.emulated.get(i));
        }
        for v in 0..256 {
            push("trap", trap_name(v), self.traps.get(v));
        }
        for (i, kind) in Event::ALL.iter().enumerate() {
            push("event", kind.name().into(), self.events.get(i));
        }
        counts.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.group.cmp(&b.group)));
        Snapshot { counts }
    }
}

/// The name of slot `i` of a numbered table: the last slot holds every higher number.
fn numbered(i: usize, name: &str) -> String {
    if i == SLOTS - 1 {
        format!("{}+", SLOTS - 1)
    } else if name == "unknown" {
        i.to_string()
    } else {
        name.into()
    }
}

fn hypercall_name(i: usize) -> String {
    numbered(i, nr::name(i as u32))
}

fn mmuext_name(i: usize) -> String {
    use rxen_abi::mmu::*;
    let name = match i as u32 {
        MMUEXT_PIN_L1_TABLE => "pin_l1_table",
        MMUEXT_PIN_L2_TABLE => "pin_l2_table",
        MMUEXT_PIN_L3_TABLE => "pin_l3_table",
        MMUEXT_PIN_L4_TABLE => "pin_l4_table",
        MMUEXT_UNPIN_TABLE => "unpin_table",
        MMUEXT_NEW_BASEPTR => "new_baseptr",
        MMUEXT_TLB_FLUSH_LOCAL => "tlb_flush_local",
        MMUEXT_INVLPG_LOCAL => "invlpg_local",
        MMUEXT_TLB_FLUSH_MULTI => "tlb_flush_multi",
        MMUEXT_INVLPG_MULTI => "invlpg_multi",
        MMUEXT_TLB_FLUSH_ALL => "tlb_flush_all",
        MMUEXT_INVLPG_ALL => "invlpg_all",
        MMUEXT_FLUSH_CACHE => "flush_cache",
        MMUEXT_SET_LDT => "set_ldt",
        MMUEXT_NEW_USER_BASEPTR => "new_user_baseptr",
        MMUEXT_CLEAR_PAGE => "clear_page",
        MMUEXT_COPY_PAGE => "copy_page",
        MMUEXT_FLUSH_CACHE_GLOBAL => "flush_cache_global",
        MMUEXT_MARK_SUPER => "mark_super",
        MMUEXT_UNMARK_SUPER => "unmark_super",
        _ => "unknown",
    };
    numbered(i, name)
}

fn subop_name(number: u32, i: usize) -> String {
    use rxen_abi::event_channel::*;
    use rxen_abi::sched::*;
    use rxen_abi::vcpu::*;
    let cmd = i as u64;
    let name = match number {
        nr::SCHED_OP => match cmd {
            SCHEDOP_YIELD => "yield",
            SCHEDOP_BLOCK => "block",
            SCHEDOP_SHUTDOWN => "shutdown",
            SCHEDOP_POLL => "poll",
            SCHEDOP_REMOTE_SHUTDOWN => "remote_shutdown",
            SCHEDOP_SHUTDOWN_CODE => "shutdown_code",
            SCHEDOP_WATCHDOG => "watchdog",
            SCHEDOP_PIN_OVERRIDE => "pin_override",
            _ => "unknown",
        },
        nr::VCPU_OP => match cmd {
            VCPUOP_INITIALISE => "initialise",
            VCPUOP_UP => "up",
            VCPUOP_DOWN => "down",
            VCPUOP_IS_UP => "is_up",
            VCPUOP_GET_RUNSTATE_INFO => "get_runstate_info",
            VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA => "register_runstate_memory_area",
            VCPUOP_SET_PERIODIC_TIMER => "set_periodic_timer",
            VCPUOP_STOP_PERIODIC_TIMER => "stop_periodic_timer",
            VCPUOP_SET_SINGLESHOT_TIMER => "set_singleshot_timer",
            VCPUOP_STOP_SINGLESHOT_TIMER => "stop_singleshot_timer",
            VCPUOP_REGISTER_VCPU_INFO => "register_vcpu_info",
            VCPUOP_SEND_NMI => "send_nmi",
            VCPUOP_GET_PHYSID => "get_physid",
            _ => "unknown",
        },
        nr::EVENT_CHANNEL_OP => match cmd {
            EVTCHNOP_BIND_INTERDOMAIN => "bind_interdomain",
            EVTCHNOP_BIND_VIRQ => "bind_virq",
            EVTCHNOP_BIND_PIRQ => "bind_pirq",
            EVTCHNOP_CLOSE => "close",
            EVTCHNOP_SEND => "send",
            EVTCHNOP_STATUS => "status",
            EVTCHNOP_ALLOC_UNBOUND => "alloc_unbound",
            EVTCHNOP_BIND_IPI => "bind_ipi",
            EVTCHNOP_BIND_VCPU => "bind_vcpu",
            EVTCHNOP_UNMASK => "unmask",
            EVTCHNOP_RESET => "reset",
            EVTCHNOP_INIT_CONTROL => "init_control",
            EVTCHNOP_EXPAND_ARRAY => "expand_array",
            EVTCHNOP_SET_PRIORITY => "set_priority",
            _ => "unknown",
        },
        _ => "unknown",
    };
    numbered(i, name)
}

fn trap_name(vector: usize) -> String {
    const NAMES: [&str; 20] = [
        "de", "db", "nmi", "bp", "of", "br", "ud", "nm", "df", "cso", "ts", "np", "ss", "gp", "pf",
        "15", "mf", "ac", "mc", "xm",
    ];
    NAMES
        .get(vector)
        .map_or_else(|| vector.to_string(), |n| (*n).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(s: &Snapshot, group: &str, name: &str) -> u64 {
        s.counts
            .iter()
            .find(|c| c.group == group && c.name == name)
            .map_or(0, |c| c.count)
    }

    #[test]
    fn counters_start_at_zero_and_only_nonzero_ones_are_reported() {
        assert!(DomainStats::default().snapshot().counts.is_empty());
    }

    #[test]
    fn hypercalls_are_counted_by_op_and_sub_op() {
        use rxen_abi::sched::SCHEDOP_BLOCK;
        use rxen_abi::vcpu::VCPUOP_SET_SINGLESHOT_TIMER;
        let s = DomainStats::default();
        s.hypercall(u64::from(nr::SCHED_OP), SCHEDOP_BLOCK);
        s.hypercall(u64::from(nr::SCHED_OP), SCHEDOP_BLOCK);
        s.hypercall(u64::from(nr::VCPU_OP), VCPUOP_SET_SINGLESHOT_TIMER);
        s.hypercall(u64::from(nr::MEMORY_OP), 7);
        s.hypercall(u64::from(nr::MMU_UPDATE), 0xffff_8000_0000_0000);
        let snap = s.snapshot();
        assert_eq!(count(&snap, "hypercall", "sched_op"), 2);
        assert_eq!(count(&snap, "sched_op", "block"), 2);
        assert_eq!(count(&snap, "vcpu_op", "set_singleshot_timer"), 1);
        assert_eq!(
            count(&snap, "memory_op", "7"),
            1,
            "unnamed sub-ops are numbers"
        );
        assert_eq!(count(&snap, "hypercall", "mmu_update"), 1);
        // mmu_update's first argument is a pointer, not a sub-op.
        assert_eq!(snap.counts.len(), 7);
        assert_eq!(snap.counts[0].count, 2, "highest first");
    }

    #[test]
    fn numbers_past_the_table_land_in_its_last_slot() {
        let s = DomainStats::default();
        s.hypercall(u64::MAX, 0);
        s.hypercall(1000, 0);
        s.hypercall(u64::from(nr::SCHED_OP), u64::MAX);
        let snap = s.snapshot();
        assert_eq!(count(&snap, "hypercall", "63+"), 2);
        assert_eq!(count(&snap, "sched_op", "63+"), 1);
    }

    #[test]
    fn mmuext_commands_exits_emulation_traps_and_events() {
        use rxen_abi::mmu::{MmuextOp, MMUEXT_NEW_BASEPTR, MMUEXT_TLB_FLUSH_LOCAL};
        let s = DomainStats::default();
        let op = |cmd| MmuextOp {
            cmd,
            pad: 0,
            arg1: 0,
            arg2: 0,
        };
        s.mmuext_ops(&[
            op(MMUEXT_TLB_FLUSH_LOCAL),
            op(MMUEXT_NEW_BASEPTR),
            op(MMUEXT_TLB_FLUSH_LOCAL),
        ]);
        s.exit(Exit::TrapStub);
        s.emulated(Emulated::of_privileged(&[0xec]));
        s.emulated(Emulated::of_privileged(&[0x66, 0xe5, 0x42]));
        s.emulated(Emulated::of_privileged(&[0x41, 0x0f, 0x22, 0xe0]));
        s.emulated(Emulated::of_privileged(&[0x0f, 0x32]));
        s.trap(14);
        s.trap(255);
        s.event(Event::Upcall);
        let snap = s.snapshot();
        assert_eq!(count(&snap, "mmuext_op", "tlb_flush_local"), 2);
        assert_eq!(count(&snap, "mmuext_op", "new_baseptr"), 1);
        assert_eq!(count(&snap, "exit", "io_out_trap_stub"), 1);
        assert_eq!(count(&snap, "emulated", "port_io"), 2);
        assert_eq!(count(&snap, "emulated", "cr_write"), 1);
        assert_eq!(count(&snap, "emulated", "msr"), 1);
        assert_eq!(count(&snap, "trap", "pf"), 1);
        assert_eq!(count(&snap, "trap", "255"), 1);
        assert_eq!(count(&snap, "event", "upcall"), 1);
    }

    #[test]
    fn exits_are_told_apart_by_port_and_reason() {
        use rxen_abi::layout::{SYSCALL_STUB_PORT, TRAP_STUB_PORT};
        assert_eq!(
            Exit::of(&Ok(VcpuExit::IoOut(SYSCALL_STUB_PORT, &[0]))),
            Exit::SyscallStub
        );
        assert_eq!(
            Exit::of(&Ok(VcpuExit::IoOut(TRAP_STUB_PORT, &[0]))),
            Exit::TrapStub
        );
        assert_eq!(Exit::of(&Ok(VcpuExit::IoOut(0x80, &[0]))), Exit::IoOut);
        assert_eq!(Exit::of(&Ok(VcpuExit::Shutdown)), Exit::Shutdown);
        assert_eq!(
            Exit::of(&Err(kvm_ioctls::Error::new(libc::EINTR))),
            Exit::Interrupted
        );
        assert_eq!(
            Exit::of(&Err(kvm_ioctls::Error::new(libc::EIO))),
            Exit::Other
        );
    }

    #[test]
    fn counting_from_several_threads_loses_nothing() {
        let s = DomainStats::default();
        std::thread::scope(|t| {
            for _ in 0..4 {
                t.spawn(|| {
                    for _ in 0..10_000 {
                        s.event(Event::ToKernel);
                    }
                });
            }
        });
        assert_eq!(count(&s.snapshot(), "event", "to_kernel_mode"), 40_000);
    }

    #[test]
    fn every_name_is_one_word_so_the_logged_table_parses_back() {
        let s = DomainStats::default();
        for i in 0..=SLOTS as u64 {
            s.hypercall(i, i);
            for &(g, _) in &SUBOP_GROUPS {
                s.hypercall(u64::from(g), i);
            }
        }
        for v in 0..=255 {
            s.trap(v);
        }
        let snap = s.snapshot();
        let table = snap.table(usize::MAX);
        let parsed = Snapshot::parse_table(table.lines().skip(1));
        assert_eq!(parsed, snap);
    }
}
