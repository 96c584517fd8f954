//! Exception handlers through Xen's trap table (`set_trap_table`) and return by the
//! `iret` hypercall, as Xen's 64-bit PV guests do.
//!
//! The hypervisor delivers an exception to the registered handler with Xen's bounce
//! frame on the interrupted stack: `rcx, r11, [error code], rip, cs, rflags, rsp, ss`.
//! The SDK's assembly entries restore `rcx`/`r11`, save the caller-saved registers and
//! the FPU/SSE state, call the Rust handler with a [`TrapFrame`] it may change (for
//! example `rip`, to skip the faulting instruction), and return with the `iret`
//! hypercall (made by `syscall`, with Xen's `iret_context` on the stack).
//!
//! The trap table belongs to the vCPU that sets it: call [`set_handler`] on each vCPU
//! that needs it. A vector with no handler crashes the domain.

use core::sync::atomic::{AtomicUsize, Ordering};

use rxen_abi::hypercall as nr;
use rxen_abi::vcpu::TrapInfo;

use crate::hypercall::{check, hypercall3, Errno};

/// The exception vectors the SDK has entries for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Vector {
    DivideError = 0,
    Debug = 1,
    Breakpoint = 3,
    InvalidOpcode = 6,
    GeneralProtection = 13,
    PageFault = 14,
}

/// What a handler sees of the interrupted context (the part of Xen's bounce frame
/// above `rcx`/`r11`); changes to `rip`, `rflags` (arithmetic flags) and `rsp` take
/// effect on return.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    /// The CPU's error code (0 for vectors without one).
    pub error_code: u64,
    pub rip: u64,
    /// Code selector; bits 32-39 hold the saved `evtchn_upcall_mask`.
    pub cs: u64,
    /// `rflags`; IF is the virtual one (`!evtchn_upcall_mask`).
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// A trap handler.
pub type Handler = fn(vector: u8, frame: &mut TrapFrame);

static HANDLERS: [AtomicUsize; 32] = [const { AtomicUsize::new(0) }; 32];

macro_rules! trap_entry {
    ($name:literal, $vector:literal, error_code) => {
        core::arch::global_asm!(
            concat!(".globl ", $name),
            concat!($name, ":"),
            "pop rcx",
            "pop r11",
            concat!("push ", $vector),
            "jmp rxen_trap_common",
        );
    };
    ($name:literal, $vector:literal) => {
        core::arch::global_asm!(
            concat!(".globl ", $name),
            concat!($name, ":"),
            "pop rcx",
            "pop r11",
            "push 0",
            concat!("push ", $vector),
            "jmp rxen_trap_common",
        );
    };
}

trap_entry!("rxen_trap_de", 0);
trap_entry!("rxen_trap_db", 1);
trap_entry!("rxen_trap_bp", 3);
trap_entry!("rxen_trap_ud", 6);
trap_entry!("rxen_trap_gp", 13, error_code);
trap_entry!("rxen_trap_pf", 14, error_code);
// The event callback: Xen's frame has no error code; a pseudo-vector tells dispatch.
trap_entry!("rxen_event_entry", 255);

// Stack at `rxen_trap_common`: vector, error code, rip, cs, rflags, rsp, ss.
core::arch::global_asm!(
    "rxen_trap_common:",
    "push rax",
    "push rcx",
    "push rdx",
    "push rsi",
    "push rdi",
    "push r8",
    "push r9",
    "push r10",
    "push r11",
    "mov rdi, qword ptr [rsp + 72]",
    "lea rsi, [rsp + 80]",
    "push rbp",
    "mov rbp, rsp",
    "and rsp, -16",
    "sub rsp, 512",
    "fxsave64 [rsp]",
    "cld",
    "call {dispatch}",
    "fxrstor64 [rsp]",
    "mov rsp, rbp",
    "pop rbp",
    "pop r11",
    "pop r10",
    "pop r9",
    "pop r8",
    "pop rdi",
    "pop rsi",
    "pop rdx",
    "pop rcx",
    "pop rax",
    // Drop the vector and error code; build Xen's iret_context below rip:
    // rax, r11, rcx, flags (0: not from a syscall), rip, cs, rflags, rsp, ss.
    "add rsp, 16",
    "push 0",
    "push rcx",
    "push r11",
    "push rax",
    "mov eax, {iret}",
    "syscall",
    "ud2",
    dispatch = sym rxen_trap_dispatch,
    iret = const nr::IRET,
);

extern "C" {
    fn rxen_trap_de();
    fn rxen_trap_db();
    fn rxen_trap_bp();
    fn rxen_trap_ud();
    fn rxen_trap_gp();
    fn rxen_trap_pf();
    fn rxen_event_entry();
}

/// Pseudo-vector of the event callback in [`rxen_trap_dispatch`].
const EVENT_VECTOR: u64 = 255;

static EVENT_HANDLER: AtomicUsize = AtomicUsize::new(0);

extern "C" fn rxen_trap_dispatch(vector: u64, frame: *mut TrapFrame) {
    // SAFETY: `frame` points at the bounce frame on this stack, which lives until the
    // iret below the call.
    let frame = unsafe { &mut *frame };
    if vector == EVENT_VECTOR {
        let h = EVENT_HANDLER.load(Ordering::Acquire);
        if h != 0 {
            // SAFETY: only `set_event_callback` stores here, always an `fn()`.
            let h: fn() = unsafe { core::mem::transmute::<usize, fn()>(h) };
            h();
        }
        return;
    }
    let h = HANDLERS
        .get(vector as usize)
        .map_or(0, |h| h.load(Ordering::Acquire));
    if h == 0 {
        crate::console::emergency_print(format_args!(
            "unhandled trap {vector} at {:#x}\n",
            frame.rip
        ));
        crate::hypercall::shutdown(rxen_abi::sched::SHUTDOWN_CRASH);
    }
    // SAFETY: only `set_handler` stores into HANDLERS, always a `Handler`.
    let h: Handler = unsafe { core::mem::transmute::<usize, Handler>(h) };
    h(vector as u8, frame);
}

fn entry_of(v: Vector) -> u64 {
    let f: unsafe extern "C" fn() = match v {
        Vector::DivideError => rxen_trap_de,
        Vector::Debug => rxen_trap_db,
        Vector::Breakpoint => rxen_trap_bp,
        Vector::InvalidOpcode => rxen_trap_ud,
        Vector::GeneralProtection => rxen_trap_gp,
        Vector::PageFault => rxen_trap_pf,
    };
    f as usize as u64
}

const ALL: [Vector; 6] = [
    Vector::DivideError,
    Vector::Debug,
    Vector::Breakpoint,
    Vector::InvalidOpcode,
    Vector::GeneralProtection,
    Vector::PageFault,
];

/// Installs `handler` for `vector` and gives this vCPU's trap table to the hypervisor
/// (every vector with a handler). `int3` gets DPL 3, as Xen guests give it.
pub fn set_handler(vector: Vector, handler: Handler) -> Result<(), Errno> {
    HANDLERS[vector as usize].store(handler as usize, Ordering::Release);
    let mut table = [TrapInfo::default(); ALL.len() + 1];
    let mut n = 0;
    for v in ALL {
        if HANDLERS[v as usize].load(Ordering::Acquire) != 0 {
            table[n] = TrapInfo {
                vector: v as u8,
                flags: if v == Vector::Breakpoint { 3 } else { 0 },
                cs: crate::start::kernel_selectors().0,
                pad: 0,
                address: entry_of(v),
            };
            n += 1;
        }
    }
    // SAFETY: `table` is a terminated array of trap_info the hypervisor only reads.
    check(unsafe { hypercall3(nr::SET_TRAP_TABLE, table.as_ptr() as u64, 0, 0) }).map(|_| ())
}

/// Clears this vCPU's trap table (`set_trap_table(NULL)`): every exception then
/// crashes the domain.
pub fn clear() -> Result<(), Errno> {
    // SAFETY: a null table only clears.
    check(unsafe { hypercall3(nr::SET_TRAP_TABLE, 0, 0, 0) }).map(|_| ())
}

/// The address of the last page fault on this vCPU (`vcpu_info.arch.cr2`).
pub fn page_fault_address() -> u64 {
    let si = crate::start::shared_info();
    let v = crate::percpu::vcpu_id() as usize % 32;
    // SAFETY: shared_info is mapped for the life of the domain; a volatile read of a
    // word the hypervisor writes before delivering the fault.
    unsafe { core::ptr::addr_of!((*si).vcpu_info[v].arch.cr2).read_volatile() }
}

/// Registers `handler` as this vCPU's event callback (`CALLBACKTYPE_event`, events
/// masked on entry): the hypervisor then interrupts the running vCPU when events become
/// pending while `evtchn_upcall_mask` is clear. The handler runs asynchronously, on
/// the interrupted stack: it must clear `evtchn_upcall_pending` (for example with
/// [`crate::events::dispatch`], if the interrupted code cannot hold the events lock)
/// and must not take locks the interrupted code may hold. Returning unmasks events.
pub fn set_event_callback(handler: fn()) -> Result<(), Errno> {
    use rxen_abi::callback::{
        CallbackRegister, CALLBACKF_MASK_EVENTS, CALLBACKOP_REGISTER, CALLBACKTYPE_EVENT,
    };
    EVENT_HANDLER.store(handler as usize, Ordering::Release);
    let reg = CallbackRegister {
        type_: CALLBACKTYPE_EVENT,
        flags: CALLBACKF_MASK_EVENTS,
        pad: 0,
        address: rxen_event_entry as *const () as u64,
    };
    // SAFETY: `reg` is a valid `callback_register` the hypervisor only reads.
    check(unsafe {
        hypercall3(
            nr::CALLBACK_OP,
            CALLBACKOP_REGISTER,
            &reg as *const CallbackRegister as u64,
            0,
        )
    })
    .map(|_| ())
}
