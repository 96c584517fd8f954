//! `vcpu_op` (xen/include/public/vcpu.h) and the x86-64 vCPU context
//! (`vcpu_guest_context`, `cpu_user_regs`, arch-x86/xen*.h).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub const VCPUOP_INITIALISE: u64 = 0;
pub const VCPUOP_UP: u64 = 1;
pub const VCPUOP_DOWN: u64 = 2;
pub const VCPUOP_IS_UP: u64 = 3;
pub const VCPUOP_GET_RUNSTATE_INFO: u64 = 4;
pub const VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA: u64 = 5;
pub const VCPUOP_SET_PERIODIC_TIMER: u64 = 6;
pub const VCPUOP_STOP_PERIODIC_TIMER: u64 = 7;
pub const VCPUOP_SET_SINGLESHOT_TIMER: u64 = 8;
pub const VCPUOP_STOP_SINGLESHOT_TIMER: u64 = 9;
pub const VCPUOP_REGISTER_VCPU_INFO: u64 = 10;
pub const VCPUOP_SEND_NMI: u64 = 11;
pub const VCPUOP_GET_PHYSID: u64 = 12;

/// `RUNSTATE_*`.
pub const RUNSTATE_RUNNING: u32 = 0;
pub const RUNSTATE_RUNNABLE: u32 = 1;
pub const RUNSTATE_BLOCKED: u32 = 2;
pub const RUNSTATE_OFFLINE: u32 = 3;

/// `VCPU_SSHOTTMR_future`: fail with `-ETIME` if the deadline has passed.
pub const VCPU_SSHOTTMR_FUTURE: u32 = 1 << 0;

/// `struct vcpu_runstate_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuRunstateInfo {
    pub state: u32,
    pub pad: u32,
    pub state_entry_time: u64,
    pub time: [u64; 4],
}

/// `struct vcpu_set_singleshot_timer`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuSetSingleshotTimer {
    pub timeout_abs_ns: u64,
    pub flags: u32,
    pub pad: u32,
}

/// `struct cpu_user_regs` (x86-64).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CpuUserRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub error_code: u32,
    pub entry_vector: u32,
    pub rip: u64,
    pub cs: u16,
    pub pad0: u16,
    pub saved_upcall_mask: u8,
    pub pad1: [u8; 3],
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u16,
    pub pad2: [u16; 3],
    pub es: u16,
    pub pad3: [u16; 3],
    pub ds: u16,
    pub pad4: [u16; 3],
    pub fs: u16,
    pub pad5: [u16; 3],
    pub gs: u16,
    pub pad6: [u16; 3],
}

/// `struct trap_info` (x86-64).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TrapInfo {
    pub vector: u8,
    pub flags: u8,
    pub cs: u16,
    pub pad: u32,
    pub address: u64,
}

/// `struct vcpu_guest_context` (x86-64), the argument of `VCPUOP_initialise`.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuGuestContext {
    pub fpu_ctxt: [u8; 512],
    pub flags: u64,
    pub user_regs: CpuUserRegs,
    pub trap_ctxt: [TrapInfo; 256],
    pub ldt_base: u64,
    pub ldt_ents: u64,
    pub gdt_frames: [u64; 16],
    pub gdt_ents: u64,
    pub kernel_ss: u64,
    pub kernel_sp: u64,
    pub ctrlreg: [u64; 8],
    pub debugreg: [u64; 8],
    pub event_callback_eip: u64,
    pub failsafe_callback_eip: u64,
    pub syscall_callback_eip: u64,
    pub vm_assist: u64,
    pub fs_base: u64,
    pub gs_base_kernel: u64,
    pub gs_base_user: u64,
}

impl core::fmt::Debug for VcpuGuestContext {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VcpuGuestContext")
            .field("flags", &self.flags)
            .field("rip", &self.user_regs.rip)
            .field("rsp", &self.user_regs.rsp)
            .field("fs_base", &self.fs_base)
            .finish_non_exhaustive()
    }
}

/// `VGCF_*` flags of `vcpu_guest_context.flags`.
pub const VGCF_I387_VALID: u64 = 1 << 0;
pub const VGCF_IN_KERNEL: u64 = 1 << 2;
pub const VGCF_ONLINE: u64 = 1 << 5;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout_check::assert_layout;

    #[test]
    fn layouts() {
        assert_layout!(
            VcpuRunstateInfo,
            size = 48,
            state = 0,
            state_entry_time = 8,
            time = 16
        );
        assert_layout!(
            VcpuSetSingleshotTimer,
            size = 16,
            timeout_abs_ns = 0,
            flags = 8
        );
        assert_layout!(
            CpuUserRegs,
            size = 200,
            r15 = 0,
            rbp = 32,
            rbx = 40,
            r11 = 48,
            r10 = 56,
            r8 = 72,
            rax = 80,
            rcx = 88,
            rdx = 96,
            rsi = 104,
            rdi = 112,
            error_code = 120,
            entry_vector = 124,
            rip = 128,
            cs = 136,
            saved_upcall_mask = 140,
            rflags = 144,
            rsp = 152,
            ss = 160,
            es = 168,
            ds = 176,
            fs = 184,
            gs = 192
        );
        assert_layout!(
            TrapInfo,
            size = 16,
            vector = 0,
            flags = 1,
            cs = 2,
            address = 8
        );
        assert_layout!(
            VcpuGuestContext,
            size = 5168,
            fpu_ctxt = 0,
            flags = 512,
            user_regs = 520,
            trap_ctxt = 720,
            ldt_base = 4816,
            ldt_ents = 4824,
            gdt_frames = 4832,
            gdt_ents = 4960,
            kernel_ss = 4968,
            kernel_sp = 4976,
            ctrlreg = 4984,
            debugreg = 5048,
            event_callback_eip = 5112,
            failsafe_callback_eip = 5120,
            syscall_callback_eip = 5128,
            vm_assist = 5136,
            fs_base = 5144,
            gs_base_kernel = 5152,
            gs_base_user = 5160
        );
    }
}
