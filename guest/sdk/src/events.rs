//! Event channels on the guest side: binding, sending, masking, and dispatching
//! pending events of the calling vCPU to handlers (Xen's 2-level scan).

use core::sync::atomic::{AtomicU64, AtomicU8, Ordering::SeqCst};

use rxen_abi::event_channel::*;
use rxen_abi::xen::{SharedInfo, NR_EVENT_CHANNELS};
use rxen_abi::DOMID_SELF;

use crate::hypercall::{event_channel_op, Errno};

/// An event-channel port.
pub type Port = u32;

fn shared_info() -> *mut SharedInfo {
    crate::start::shared_info()
}

fn pending_word(w: usize) -> &'static AtomicU64 {
    // SAFETY: shared_info is mapped for the life of the domain; w < 64.
    unsafe {
        AtomicU64::from_ptr(core::ptr::addr_of_mut!(
            (*shared_info()).evtchn_pending[w % 64]
        ))
    }
}

fn mask_word(w: usize) -> &'static AtomicU64 {
    // SAFETY: as above.
    unsafe {
        AtomicU64::from_ptr(core::ptr::addr_of_mut!(
            (*shared_info()).evtchn_mask[w % 64]
        ))
    }
}

fn vcpu_sel(v: u32) -> &'static AtomicU64 {
    // SAFETY: as above; v < 32.
    unsafe {
        AtomicU64::from_ptr(core::ptr::addr_of_mut!(
            (*shared_info()).vcpu_info[v as usize % 32].evtchn_pending_sel
        ))
    }
}

fn vcpu_upcall_pending(v: u32) -> &'static AtomicU8 {
    // SAFETY: as above.
    unsafe {
        AtomicU8::from_ptr(core::ptr::addr_of_mut!(
            (*shared_info()).vcpu_info[v as usize % 32].evtchn_upcall_pending
        ))
    }
}

type Handler = fn(Port);

static HANDLERS: spin::Mutex<[Option<Handler>; NR_EVENT_CHANNELS]> =
    spin::Mutex::new([None; NR_EVENT_CHANNELS]);
/// Ports that fired since their waiter last looked ([`take_fired`]).
static FIRED: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];

/// Binds a VIRQ to vCPU `vcpu`.
pub fn bind_virq(virq: u32, vcpu: u32) -> Result<Port, Errno> {
    let mut a = EvtchnBindVirq {
        virq,
        vcpu,
        port: 0,
    };
    event_channel_op(EVTCHNOP_BIND_VIRQ, &mut a)?;
    Ok(a.port)
}

/// Binds an IPI port whose events go to vCPU `vcpu`.
pub fn bind_ipi(vcpu: u32) -> Result<Port, Errno> {
    let mut a = EvtchnBindIpi { vcpu, port: 0 };
    event_channel_op(EVTCHNOP_BIND_IPI, &mut a)?;
    Ok(a.port)
}

/// Allocates a port that domain `remote` may bind to.
pub fn alloc_unbound(remote: u16) -> Result<Port, Errno> {
    let mut a = EvtchnAllocUnbound {
        dom: DOMID_SELF,
        remote_dom: remote,
        port: 0,
    };
    event_channel_op(EVTCHNOP_ALLOC_UNBOUND, &mut a)?;
    Ok(a.port)
}

/// Connects to port `remote_port` of domain `remote`.
pub fn bind_interdomain(remote: u16, remote_port: Port) -> Result<Port, Errno> {
    let mut a = EvtchnBindInterdomain {
        remote_dom: remote,
        pad: 0,
        remote_port,
        local_port: 0,
    };
    event_channel_op(EVTCHNOP_BIND_INTERDOMAIN, &mut a)?;
    Ok(a.local_port)
}

/// Notifies the other end of `port`.
pub fn send(port: Port) -> Result<(), Errno> {
    event_channel_op(EVTCHNOP_SEND, &mut EvtchnPortArg { port })
}

/// Closes `port`.
pub fn close(port: Port) -> Result<(), Errno> {
    HANDLERS.lock()[port as usize % NR_EVENT_CHANNELS] = None;
    event_channel_op(EVTCHNOP_CLOSE, &mut EvtchnPortArg { port })
}

/// Moves `port`'s notifications to vCPU `vcpu`.
pub fn bind_vcpu(port: Port, vcpu: u32) -> Result<(), Errno> {
    event_channel_op(EVTCHNOP_BIND_VCPU, &mut EvtchnBindVcpu { port, vcpu })
}

/// Masks `port` (no upcall-pending while masked; the pending bit still sets).
pub fn mask(port: Port) {
    mask_word(port as usize / 64).fetch_or(1 << (port % 64), SeqCst);
}

/// Unmasks `port` through the hypervisor, which re-delivers a pending event.
pub fn unmask(port: Port) -> Result<(), Errno> {
    event_channel_op(EVTCHNOP_UNMASK, &mut EvtchnPortArg { port })
}

/// Status of a port of this domain.
pub fn status(port: Port) -> Result<EvtchnStatus, Errno> {
    let mut s = EvtchnStatus {
        dom: DOMID_SELF,
        port,
        ..Default::default()
    };
    event_channel_op(EVTCHNOP_STATUS, &mut s)?;
    Ok(s)
}

/// Calls `handler` (on the vCPU that dispatches) whenever `port` fires.
pub fn set_handler(port: Port, handler: Handler) {
    HANDLERS.lock()[port as usize % NR_EVENT_CHANNELS] = Some(handler);
}

/// Is `port`'s pending bit set?
pub fn is_pending(port: Port) -> bool {
    pending_word(port as usize / 64).load(SeqCst) & (1 << (port % 64)) != 0
}

/// Has `port` fired since the last call? Clears the record.
pub fn take_fired(port: Port) -> bool {
    let bit = 1u64 << (port % 64);
    FIRED[(port as usize / 64) % 64].fetch_and(!bit, SeqCst) & bit != 0
}

/// Handles every pending, unmasked event of the calling vCPU: clears it, records it
/// for [`take_fired`] and calls its handler. Returns how many events were handled.
pub fn dispatch() -> usize {
    let v = crate::percpu::vcpu_id();
    let mut handled = 0;
    vcpu_upcall_pending(v).store(0, SeqCst);
    let mut sel = vcpu_sel(v).swap(0, SeqCst);
    while sel != 0 {
        let w = sel.trailing_zeros() as usize;
        sel &= sel - 1;
        let mut bits = pending_word(w).load(SeqCst) & !mask_word(w).load(SeqCst);
        while bits != 0 {
            let b = bits.trailing_zeros();
            bits &= bits - 1;
            let port = (w * 64) as u32 + b;
            pending_word(w).fetch_and(!(1 << b), SeqCst);
            FIRED[w].fetch_or(1 << b, SeqCst);
            let h = HANDLERS.lock()[port as usize];
            if let Some(h) = h {
                h(port);
            }
            crate::executor::wake_port(port);
            handled += 1;
        }
    }
    handled
}

/// Blocks the vCPU until an event arrives, then dispatches.
pub fn wait_and_dispatch() -> usize {
    crate::hypercall::block();
    dispatch()
}
