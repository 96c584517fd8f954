//! Traps and callbacks: `callback.h` (`callback_op`), the x86-64 `iret` hypercall's
//! frame (`struct iret_context`) and `trap_info` flags (`arch-x86/xen.h`).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `CALLBACKOP_register`.
pub const CALLBACKOP_REGISTER: u64 = 0;
/// `CALLBACKOP_unregister`.
pub const CALLBACKOP_UNREGISTER: u64 = 1;

/// `CALLBACKTYPE_event`: asynchronous event upcalls.
pub const CALLBACKTYPE_EVENT: u16 = 0;
/// `CALLBACKTYPE_failsafe`: a bad segment or frame while returning to the guest.
pub const CALLBACKTYPE_FAILSAFE: u16 = 1;
/// `CALLBACKTYPE_syscall`: `syscall` from guest user mode (x86-64).
pub const CALLBACKTYPE_SYSCALL: u16 = 2;
/// `CALLBACKTYPE_nmi`.
pub const CALLBACKTYPE_NMI: u16 = 4;
/// `CALLBACKTYPE_sysenter`.
pub const CALLBACKTYPE_SYSENTER: u16 = 5;
/// `CALLBACKTYPE_syscall32`.
pub const CALLBACKTYPE_SYSCALL32: u16 = 7;

/// `CALLBACKF_mask_events`: entering the callback masks events.
pub const CALLBACKF_MASK_EVENTS: u16 = 1 << 0;

/// `struct callback_register` (x86-64: `xen_callback_t` is an address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CallbackRegister {
    pub type_: u16,
    pub flags: u16,
    pub pad: u32,
    pub address: u64,
}

/// `struct callback_unregister`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CallbackUnregister {
    pub type_: u16,
    pub unused: u16,
}

/// `trap_info.flags` bits 0-1: the DPL `int n` needs to reach the handler.
pub const TI_DPL_MASK: u8 = 3;
/// `trap_info.flags` bit 2: entering the handler masks events (`TI_SET_IF`).
pub const TI_MASK_EVENTS: u8 = 4;

/// `VGCF_in_syscall` in `iret_context.flags`: returning from a `syscall` (then `rcx`
/// and `r11` are not restored).
pub const VGCF_IN_SYSCALL: u64 = 1 << 8;

/// `struct iret_context` (x86-64): what the `iret` hypercall pops from the guest stack
/// (`rsp` points at `rax` when the hypercall is made).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IretContext {
    pub rax: u64,
    pub r11: u64,
    pub rcx: u64,
    pub flags: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}
