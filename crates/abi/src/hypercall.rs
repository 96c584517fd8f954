//! Hypercall numbers (`__HYPERVISOR_*` in xen.h).

pub const SET_TRAP_TABLE: u32 = 0;
pub const MMU_UPDATE: u32 = 1;
pub const SET_GDT: u32 = 2;
pub const STACK_SWITCH: u32 = 3;
pub const SET_CALLBACKS: u32 = 4;
pub const FPU_TASKSWITCH: u32 = 5;
pub const SCHED_OP_COMPAT: u32 = 6;
pub const PLATFORM_OP: u32 = 7;
pub const UPDATE_DESCRIPTOR: u32 = 10;
pub const MEMORY_OP: u32 = 12;
pub const MULTICALL: u32 = 13;
pub const UPDATE_VA_MAPPING: u32 = 14;
pub const SET_TIMER_OP: u32 = 15;
pub const EVENT_CHANNEL_OP_COMPAT: u32 = 16;
pub const XEN_VERSION: u32 = 17;
pub const CONSOLE_IO: u32 = 18;
pub const GRANT_TABLE_OP: u32 = 20;
pub const VM_ASSIST: u32 = 21;
pub const IRET: u32 = 23;
pub const VCPU_OP: u32 = 24;
pub const SET_SEGMENT_BASE: u32 = 25;
pub const MMUEXT_OP: u32 = 26;
pub const NMI_OP: u32 = 28;
pub const SCHED_OP: u32 = 29;
pub const CALLBACK_OP: u32 = 30;
pub const EVENT_CHANNEL_OP: u32 = 32;
pub const PHYSDEV_OP: u32 = 33;
pub const HVM_OP: u32 = 34;
pub const SYSCTL: u32 = 35;
pub const DOMCTL: u32 = 36;

/// `SEGBASE_*` selectors of `set_segment_base`.
pub const SEGBASE_FS: u64 = 0;
pub const SEGBASE_GS_USER: u64 = 1;
pub const SEGBASE_GS_KERNEL: u64 = 2;
pub const SEGBASE_GS_USER_SEL: u64 = 3;

/// Name of a hypercall, for logs and metrics.
pub fn name(nr: u32) -> &'static str {
    match nr {
        SET_TRAP_TABLE => "set_trap_table",
        MMU_UPDATE => "mmu_update",
        SET_GDT => "set_gdt",
        UPDATE_DESCRIPTOR => "update_descriptor",
        STACK_SWITCH => "stack_switch",
        SET_CALLBACKS => "set_callbacks",
        MEMORY_OP => "memory_op",
        MULTICALL => "multicall",
        SET_TIMER_OP => "set_timer_op",
        XEN_VERSION => "xen_version",
        CONSOLE_IO => "console_io",
        GRANT_TABLE_OP => "grant_table_op",
        VCPU_OP => "vcpu_op",
        SET_SEGMENT_BASE => "set_segment_base",
        FPU_TASKSWITCH => "fpu_taskswitch",
        UPDATE_VA_MAPPING => "update_va_mapping",
        VM_ASSIST => "vm_assist",
        IRET => "iret",
        MMUEXT_OP => "mmuext_op",
        NMI_OP => "nmi_op",
        CALLBACK_OP => "callback_op",
        PHYSDEV_OP => "physdev_op",
        SCHED_OP => "sched_op",
        EVENT_CHANNEL_OP => "event_channel_op",
        _ => "unknown",
    }
}
