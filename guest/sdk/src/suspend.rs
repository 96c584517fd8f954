//! Xen's guest suspend protocol (the guest's side of `xm save` for a guest that
//! advertises `control/feature-suspend`): the toolstack writes `suspend` to
//! `control/shutdown`; the guest acknowledges by clearing the node and calls
//! `SCHEDOP_shutdown(SHUTDOWN_suspend)` ([`suspend`]). The hypercall returns when the
//! domain runs again: 1 when the suspend was cancelled (`xm save -c`, or a save that
//! failed: same domain, everything as it was), 0 in the new domain of a restore,
//! whose event channels are all closed except the xenstore and console ones (as the
//! toolstack sets them up in start_info); the guest then binds again what it had bound
//! ([`resume_in_new_domain`] does it for what the SDK binds: every vCPU's
//! `VIRQ_TIMER`), registers its xenstore watches again and reconnects its frontends
//! (`docs/migration.md`, "The suspend protocol").
//!
//! Only vCPU 0 may call [`suspend`]; other vCPUs keep their state (the VMM pauses
//! them with the domain).

use core::sync::atomic::Ordering;

use rxen_abi::event_channel::VIRQ_TIMER;
use rxen_abi::sched::{SchedShutdown, SCHEDOP_SHUTDOWN, SHUTDOWN_SUSPEND};

/// How a suspend ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resumed {
    /// In the same domain: the save was cancelled (`xm save -c`) or failed.
    Cancelled,
    /// In a new domain (a restore): event channels must be bound again.
    NewDomain,
    /// The hypervisor refused the suspend (the errno).
    Refused(i64),
}

/// `SCHEDOP_shutdown(SHUTDOWN_suspend)`: returns when the domain runs again.
pub fn suspend() -> Resumed {
    let mut s = SchedShutdown {
        reason: SHUTDOWN_SUSPEND,
    };
    match crate::hypercall::sched_op(SCHEDOP_SHUTDOWN, &mut s) {
        0 => Resumed::NewDomain,
        1 => Resumed::Cancelled,
        e => Resumed::Refused(e),
    }
}

/// Binds again what the SDK bound at start (every started vCPU's `VIRQ_TIMER`), in
/// a new domain after [`suspend`] returned [`Resumed::NewDomain`].
pub fn resume_in_new_domain(vcpus: u32) {
    for id in 0..vcpus {
        let rec = crate::percpu::record_address(id) as *const crate::percpu::PerCpu;
        // SAFETY: `rec` points into the SDK's static per-vCPU table; only the atomic
        // field is touched.
        let timer_port = unsafe { &(*rec).timer_port };
        if id != 0 && timer_port.load(Ordering::Relaxed) == 0 {
            continue; // never started
        }
        match crate::events::bind_virq(VIRQ_TIMER, id) {
            Ok(p) => timer_port.store(p, Ordering::Relaxed),
            Err(e) => crate::println!("suspend: VIRQ_TIMER of vCPU {id}: {e:?}"),
        }
    }
}
