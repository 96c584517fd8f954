//! Xen's trap table and exception bounce for rxen guests (issue 8 item 4).
//!
//! rxen owns a read-only GDT, IDT and a page of exit stubs ([`pages`]): each exception
//! vector's gate points, through the guest's own CPL-3 code selector, at a stub that
//! exits to the VMM on [`TRAP_STUB_PORT`](rxen_abi::layout::TRAP_STUB_PORT), so the
//! stub's address tells the vector. [`bounce`] reads the CPU's frame and `cr2`, looks up
//! the guest's `set_trap_table` entry and redirects the vCPU to the guest's handler with
//! Xen's bounce frame; [`iret`] is the `iret` hypercall that returns from it;
//! [`hypercall`] stores the trap table and the callbacks (`set_trap_table`,
//! `set_callbacks`, `callback_op`).
//!
//! This module must not touch KVM state other than the interrupted vCPU's registers,
//! and never fails the VMM for what a guest does: a trap it cannot deliver ends the
//! domain as a crash.

pub mod bounce;
pub mod cpuid;
mod exit;
pub use exit::handle as handle_stub_exit;
mod guest_mem;
pub mod guest_mode;
pub mod hypercall;
pub mod iret;
pub mod m2p;
pub mod msr;
pub mod pages;
pub mod privop;
pub mod ptwr;
pub mod upcall;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// One entry of a vCPU's trap table (Xen's `trap_info` without the vector).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrapEntry {
    /// Bits 0-1: DPL needed by `int n`; bit 2: mask events on entry.
    pub flags: u8,
    pub cs: u16,
    /// Handler address; 0 = no handler.
    pub address: u64,
}

impl TrapEntry {
    /// The DPL the guest gave (`int n` needs at least the caller's privilege).
    pub fn dpl(&self) -> u8 {
        self.flags & rxen_abi::callback::TI_DPL_MASK
    }

    /// Whether entering the handler masks events.
    pub fn masks_events(&self) -> bool {
        self.flags & rxen_abi::callback::TI_MASK_EVENTS != 0
    }
}

/// A registered callback (`CALLBACKTYPE_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Callback {
    pub address: u64,
    pub mask_events: bool,
}

/// The callbacks of one vCPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Callbacks {
    pub event: Option<Callback>,
    pub failsafe: Option<Callback>,
    pub syscall: Option<Callback>,
    pub syscall32: Option<Callback>,
    pub sysenter: Option<Callback>,
    pub nmi: Option<Callback>,
}

/// Trap state of one vCPU (Xen keeps the trap table and callbacks per vCPU).
#[derive(Debug, Clone)]
pub struct VcpuTraps {
    pub table: [TrapEntry; 256],
    pub callbacks: Callbacks,
    /// The guest kernel's stack for entries from guest user mode (`stack_switch`:
    /// selector, stack pointer); Xen's `kernel_ss`/`kernel_sp`.
    pub kernel_stack: (u16, u64),
    /// Whether the vCPU runs guest user code ([`guest_mode`]).
    pub user_mode: bool,
    /// The inactive GS base as the VMM keeps it ([`msr::ShadowGs`]).
    pub shadow_gs: msr::ShadowGs,
}

impl Default for VcpuTraps {
    fn default() -> Self {
        Self {
            table: [TrapEntry::default(); 256],
            callbacks: Callbacks::default(),
            kernel_stack: (0, 0),
            user_mode: false,
            shadow_gs: msr::ShadowGs::default(),
        }
    }
}

/// Which vCPUs have an event callback (and so take asynchronous upcalls); shared
/// with the event-channel kicker, which interrupts only those.
#[derive(Debug, Clone)]
pub struct UpcallTargets(Arc<[AtomicBool]>);

impl UpcallTargets {
    /// Whether `vcpu` registered an event callback.
    pub fn wants_upcalls(&self, vcpu: u32) -> bool {
        self.0
            .get(vcpu as usize)
            .is_some_and(|f| f.load(Ordering::SeqCst))
    }

    fn set(&self, vcpu: u32, on: bool) {
        if let Some(f) = self.0.get(vcpu as usize) {
            f.store(on, Ordering::SeqCst);
        }
    }
}

/// The trap state of every vCPU of a domain.
#[derive(Debug)]
pub struct DomainTraps {
    vcpus: Vec<Mutex<VcpuTraps>>,
    upcalls: UpcallTargets,
}

impl DomainTraps {
    pub fn new(nr_vcpus: u32) -> Self {
        Self {
            vcpus: (0..nr_vcpus)
                .map(|_| Mutex::new(VcpuTraps::default()))
                .collect(),
            upcalls: UpcallTargets((0..nr_vcpus).map(|_| AtomicBool::new(false)).collect()),
        }
    }

    /// The flags the event kicker consults.
    pub fn upcall_targets(&self) -> UpcallTargets {
        self.upcalls.clone()
    }

    /// Whether `vcpu` takes asynchronous upcalls (one atomic load).
    pub fn wants_upcalls(&self, vcpu: u32) -> bool {
        self.upcalls.wants_upcalls(vcpu)
    }

    /// Records whether `vcpu` has an event callback (after `t` changed).
    pub(crate) fn note_callbacks(&self, vcpu: u32, t: &VcpuTraps) {
        self.upcalls
            .set(vcpu, t.callbacks.event.is_some_and(|c| c.address != 0));
    }

    /// The trap state of `vcpu`, or `None` for an id the domain does not have.
    pub fn vcpu(&self, vcpu: u32) -> Option<MutexGuard<'_, VcpuTraps>> {
        self.vcpus
            .get(vcpu as usize)
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The CS a bounce or upcall frame carries for code interrupted in the guest kernel.
/// Xen clears its RPL for a PV domain ("indicate kernel context to guest",
/// `create_bounce_frame`): the kernel runs in ring 3, and Linux tells kernel from user
/// frames by `CS & 3` (and Xen's `iret` returns to user mode exactly when it is 3).
/// rxen's own layout keeps the CPU's selector.
/// Frames of code interrupted in guest user mode keep RPL 3 (`from_user`).
pub fn frame_cs(dom: &crate::domain::DomainShared, cs: u16, from_user: bool) -> u16 {
    if dom.pv_mmu.is_some() && !from_user {
        cs & !3
    } else {
        cs
    }
}
