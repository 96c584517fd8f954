//! `event_channel_op` (xen/include/public/event_channel.h) and the VIRQ numbers.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub const EVTCHNOP_BIND_INTERDOMAIN: u64 = 0;
pub const EVTCHNOP_BIND_VIRQ: u64 = 1;
pub const EVTCHNOP_BIND_PIRQ: u64 = 2;
pub const EVTCHNOP_CLOSE: u64 = 3;
pub const EVTCHNOP_SEND: u64 = 4;
pub const EVTCHNOP_STATUS: u64 = 5;
pub const EVTCHNOP_ALLOC_UNBOUND: u64 = 6;
pub const EVTCHNOP_BIND_IPI: u64 = 7;
pub const EVTCHNOP_BIND_VCPU: u64 = 8;
pub const EVTCHNOP_UNMASK: u64 = 9;
pub const EVTCHNOP_RESET: u64 = 10;
pub const EVTCHNOP_INIT_CONTROL: u64 = 11;
pub const EVTCHNOP_EXPAND_ARRAY: u64 = 12;
pub const EVTCHNOP_SET_PRIORITY: u64 = 13;

/// `EVTCHNSTAT_*` values of `evtchn_status.status`.
pub const EVTCHNSTAT_CLOSED: u32 = 0;
pub const EVTCHNSTAT_UNBOUND: u32 = 1;
pub const EVTCHNSTAT_INTERDOMAIN: u32 = 2;
pub const EVTCHNSTAT_PIRQ: u32 = 3;
pub const EVTCHNSTAT_VIRQ: u32 = 4;
pub const EVTCHNSTAT_IPI: u32 = 5;

/// Virtual IRQs (`VIRQ_*` in xen.h).
pub const VIRQ_TIMER: u32 = 0;
pub const VIRQ_DEBUG: u32 = 1;
pub const VIRQ_CONSOLE: u32 = 2;
pub const VIRQ_DOM_EXC: u32 = 3;
pub const VIRQ_TBUF: u32 = 4;
pub const VIRQ_DEBUGGER: u32 = 6;
pub const VIRQ_XENOPROF: u32 = 7;
pub const VIRQ_CON_RING: u32 = 8;
pub const VIRQ_PCPU_STATE: u32 = 9;
pub const VIRQ_MEM_EVENT: u32 = 10;
pub const VIRQ_ARGO: u32 = 11;
pub const VIRQ_ENOMEM: u32 = 12;
pub const VIRQ_XENPMU: u32 = 13;
/// `NR_VIRQS`.
pub const NR_VIRQS: u32 = 24;

/// `struct evtchn_alloc_unbound`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnAllocUnbound {
    pub dom: u16,
    pub remote_dom: u16,
    pub port: u32,
}

/// `struct evtchn_bind_interdomain`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnBindInterdomain {
    pub remote_dom: u16,
    pub pad: u16,
    pub remote_port: u32,
    pub local_port: u32,
}

/// `struct evtchn_bind_virq`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnBindVirq {
    pub virq: u32,
    pub vcpu: u32,
    pub port: u32,
}

/// `struct evtchn_bind_ipi`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnBindIpi {
    pub vcpu: u32,
    pub port: u32,
}

/// `struct evtchn_close`, `evtchn_send` and `evtchn_unmask`: a single port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnPortArg {
    pub port: u32,
}

/// `struct evtchn_status`; the union is flattened to its two words.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnStatus {
    pub dom: u16,
    pub pad: u16,
    pub port: u32,
    pub status: u32,
    pub vcpu: u32,
    /// `u.unbound.dom` / `u.interdomain.dom` (low 16 bits), `u.pirq`, `u.virq`.
    pub u0: u32,
    /// `u.interdomain.port`.
    pub u1: u32,
}

/// `struct evtchn_bind_vcpu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnBindVcpu {
    pub port: u32,
    pub vcpu: u32,
}

/// `struct evtchn_reset`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnReset {
    pub dom: u16,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout_check::assert_layout;

    #[test]
    fn layouts() {
        assert_layout!(
            EvtchnAllocUnbound,
            size = 8,
            dom = 0,
            remote_dom = 2,
            port = 4
        );
        assert_layout!(
            EvtchnBindInterdomain,
            size = 12,
            remote_dom = 0,
            remote_port = 4,
            local_port = 8
        );
        assert_layout!(EvtchnBindVirq, size = 12, virq = 0, vcpu = 4, port = 8);
        assert_layout!(EvtchnBindIpi, size = 8, vcpu = 0, port = 4);
        assert_layout!(EvtchnPortArg, size = 4, port = 0);
        assert_layout!(
            EvtchnStatus,
            size = 24,
            dom = 0,
            port = 4,
            status = 8,
            vcpu = 12,
            u0 = 16,
            u1 = 20
        );
        assert_layout!(EvtchnBindVcpu, size = 8, port = 0, vcpu = 4);
        assert_layout!(EvtchnReset, size = 2, dom = 0);
    }
}
