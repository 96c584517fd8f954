//! Event channels: Xen's 2-level ABI.
//!
//! [`EventChannels`] is the per-domain port table and its state machine (free,
//! unbound, interdomain, VIRQ, IPI). Pending and mask bits live in the guest's
//! `shared_info` and are changed through [`SharedInfoPage`]; vCPUs are woken through
//! a [`Kick`]. The domain-0 side of interdomain channels lives in this process too
//! ([`Dom0Port`]): backends inside the VMM bind to a guest's unbound port and are
//! notified through an `eventfd`.

use std::sync::Arc;

use rxen_abi::errno::*;
use rxen_abi::event_channel::*;
use rxen_abi::xen::NR_EVENT_CHANNELS;
use rxen_abi::{DomId, DOMID_FIRST_RESERVED, DOMID_SELF};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::shared_info::SharedInfoPage;

/// Wakes a vCPU that may be blocked waiting for events.
pub trait Kick: Send + Sync {
    /// Called after an event became pending for `vcpu` (or for a port it may poll).
    fn kick(&self, vcpu: u32);
    /// Called when `evtchn_upcall_pending` of `vcpu` went from 0 to 1: a running vCPU
    /// with an event callback must be interrupted to take the upcall.
    fn upcall(&self, _vcpu: u32) {}
}

/// Result type of event-channel operations: a Xen errno on failure.
pub type EvtResult<T> = Result<T, i32>;

/// What a guest port is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Binding {
    Free,
    /// Waiting for `remote_dom` to bind to it.
    Unbound {
        remote_dom: DomId,
    },
    /// Connected to another port of this same domain.
    Local {
        remote_port: u32,
    },
    /// Connected to the domain-0 endpoint `dom0_port` inside the VMM.
    Dom0 {
        dom0_port: u32,
    },
    Virq {
        virq: u32,
    },
    Ipi,
}

#[derive(Clone, Copy, Debug)]
struct Channel {
    binding: Binding,
    vcpu: u32,
}

const FREE: Channel = Channel {
    binding: Binding::Free,
    vcpu: 0,
};

/// Domain 0's end of an interdomain channel, held by a backend inside the VMM.
#[derive(Clone, Debug)]
pub struct Dom0Port {
    /// Port number in domain 0's (VMM-local) port space.
    pub port: u32,
    /// Becomes readable when the guest sends on the channel.
    pub notify: Arc<EventFd>,
}

#[derive(Debug)]
struct Dom0Channel {
    /// The guest port, once connected.
    guest_port: Option<u32>,
    notify: Arc<EventFd>,
}

/// Most domain-0 endpoints one VMM hosts.
pub const MAX_DOM0_PORTS: usize = 1024;

/// Is `virq` delivered per vCPU (as opposed to global, bound on one vCPU)?
pub fn virq_is_per_vcpu(virq: u32) -> bool {
    matches!(virq, VIRQ_TIMER | VIRQ_DEBUG | VIRQ_XENOPROF | VIRQ_XENPMU)
}

/// Decoded `EVTCHNOP_status` result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStatus {
    pub status: u32,
    pub vcpu: u32,
    pub u0: u32,
    pub u1: u32,
}

/// The event-channel table of one domain.
pub struct EventChannels {
    domid: DomId,
    nr_vcpus: u32,
    chans: Vec<Channel>,
    /// `virqs[vcpu][virq]` = bound port.
    virqs: Vec<[Option<u32>; NR_VIRQS as usize]>,
    dom0: Vec<Option<Dom0Channel>>,
    shared: SharedInfoPage,
    kick: Arc<dyn Kick>,
}

impl EventChannels {
    /// A table for domain `domid` with `nr_vcpus` vCPUs. Port 0 is never allocated.
    pub fn new(domid: DomId, nr_vcpus: u32, shared: SharedInfoPage, kick: Arc<dyn Kick>) -> Self {
        Self {
            domid,
            nr_vcpus,
            chans: vec![FREE; 1],
            virqs: vec![[None; NR_VIRQS as usize]; nr_vcpus as usize],
            dom0: Vec::new(),
            shared,
            kick,
        }
    }

    fn resolve_dom(&self, dom: DomId) -> DomId {
        if dom == DOMID_SELF {
            self.domid
        } else {
            dom
        }
    }

    fn check_self(&self, dom: DomId) -> EvtResult<()> {
        if self.resolve_dom(dom) == self.domid {
            Ok(())
        } else {
            Err(-EPERM)
        }
    }

    fn chan(&self, port: u32) -> EvtResult<&Channel> {
        self.chans
            .get(port as usize)
            .filter(|_| port != 0)
            .ok_or(-EINVAL)
    }

    fn alloc_port(&mut self) -> EvtResult<u32> {
        if let Some(p) = self
            .chans
            .iter()
            .skip(1)
            .position(|c| c.binding == Binding::Free)
        {
            return Ok(p as u32 + 1);
        }
        if self.chans.len() >= NR_EVENT_CHANNELS {
            return Err(-ENOSPC);
        }
        self.chans.push(FREE);
        Ok(self.chans.len() as u32 - 1)
    }

    fn bind(&mut self, binding: Binding, vcpu: u32) -> EvtResult<u32> {
        let port = self.alloc_port()?;
        // A fresh port starts with its pending bit clear (the mask is the guest's).
        self.shared.clear_pending(port);
        self.chans[port as usize] = Channel { binding, vcpu };
        Ok(port)
    }

    fn check_vcpu(&self, vcpu: u32) -> EvtResult<()> {
        if vcpu < self.nr_vcpus {
            Ok(())
        } else {
            Err(-ENOENT)
        }
    }

    /// `EVTCHNOP_alloc_unbound`.
    pub fn alloc_unbound(&mut self, dom: DomId, remote_dom: DomId) -> EvtResult<u32> {
        self.check_self(dom)?;
        let remote_dom = self.resolve_dom(remote_dom);
        if remote_dom >= DOMID_FIRST_RESERVED {
            return Err(-EINVAL);
        }
        self.bind(Binding::Unbound { remote_dom }, 0)
    }

    /// `EVTCHNOP_bind_interdomain`: connect to `remote_port` of `remote_dom`.
    pub fn bind_interdomain(&mut self, remote_dom: DomId, remote_port: u32) -> EvtResult<u32> {
        let remote_dom = self.resolve_dom(remote_dom);
        if remote_dom == self.domid {
            let rc = *self.chan(remote_port)?;
            if rc.binding
                != (Binding::Unbound {
                    remote_dom: self.domid,
                })
            {
                return Err(-EINVAL);
            }
            let port = self.bind(Binding::Local { remote_port }, 0)?;
            self.chans[remote_port as usize].binding = Binding::Local { remote_port: port };
            return Ok(port);
        }
        if remote_dom == 0 {
            let slot = self
                .dom0
                .get(remote_port as usize)
                .and_then(|c| c.as_ref())
                .ok_or(-EINVAL)?;
            if slot.guest_port.is_some() {
                return Err(-EINVAL);
            }
            let port = self.bind(
                Binding::Dom0 {
                    dom0_port: remote_port,
                },
                0,
            )?;
            if let Some(Some(c)) = self.dom0.get_mut(remote_port as usize) {
                c.guest_port = Some(port);
            }
            return Ok(port);
        }
        // Other domains run in other VMM processes; channels to them are brokered by
        // the toolstack, which this VMM does not have yet.
        Err(-ESRCH)
    }

    /// `EVTCHNOP_bind_virq`.
    pub fn bind_virq(&mut self, virq: u32, vcpu: u32) -> EvtResult<u32> {
        if virq >= NR_VIRQS {
            return Err(-EINVAL);
        }
        self.check_vcpu(vcpu)?;
        if !virq_is_per_vcpu(virq) && vcpu != 0 {
            return Err(-EINVAL);
        }
        if self.virqs[vcpu as usize][virq as usize].is_some() {
            return Err(-EEXIST);
        }
        let port = self.bind(Binding::Virq { virq }, vcpu)?;
        self.virqs[vcpu as usize][virq as usize] = Some(port);
        Ok(port)
    }

    /// `EVTCHNOP_bind_ipi`.
    pub fn bind_ipi(&mut self, vcpu: u32) -> EvtResult<u32> {
        self.check_vcpu(vcpu)?;
        self.bind(Binding::Ipi, vcpu)
    }

    /// `EVTCHNOP_close`.
    pub fn close(&mut self, port: u32) -> EvtResult<()> {
        let c = *self.chan(port)?;
        match c.binding {
            Binding::Free => return Err(-EINVAL),
            Binding::Unbound { .. } | Binding::Ipi => {}
            Binding::Local { remote_port } => {
                if remote_port != port {
                    self.chans[remote_port as usize] = Channel {
                        binding: Binding::Unbound {
                            remote_dom: self.domid,
                        },
                        vcpu: self.chans[remote_port as usize].vcpu,
                    };
                }
            }
            Binding::Dom0 { dom0_port } => {
                if let Some(Some(d)) = self.dom0.get_mut(dom0_port as usize) {
                    d.guest_port = None;
                }
            }
            Binding::Virq { virq } => {
                let row = if virq_is_per_vcpu(virq) { c.vcpu } else { 0 };
                if let Some(slot) = self.virqs.get_mut(row as usize) {
                    slot[virq as usize] = None;
                }
            }
        }
        self.chans[port as usize] = FREE;
        self.shared.clear_pending(port);
        Ok(())
    }

    /// `EVTCHNOP_reset`: close every port of the domain.
    pub fn reset(&mut self, dom: DomId) -> EvtResult<()> {
        self.check_self(dom)?;
        for port in 1..self.chans.len() as u32 {
            if self.chans[port as usize].binding != Binding::Free {
                self.close(port)?;
            }
        }
        Ok(())
    }

    /// `EVTCHNOP_send`.
    pub fn send(&mut self, port: u32) -> EvtResult<()> {
        let c = *self.chan(port)?;
        match c.binding {
            Binding::Local { remote_port } => {
                self.raise(remote_port);
                Ok(())
            }
            Binding::Dom0 { dom0_port } => {
                if let Some(Some(d)) = self.dom0.get(dom0_port as usize) {
                    // An eventfd counter only fails to grow at u64::MAX - 1, where the
                    // backend is already notified; nothing is lost by ignoring it.
                    let _ = d.notify.write(1);
                }
                Ok(())
            }
            Binding::Ipi => {
                self.raise(port);
                Ok(())
            }
            // Xen silently drops sends on unbound ports.
            Binding::Unbound { .. } => Ok(()),
            Binding::Virq { .. } | Binding::Free => Err(-EINVAL),
        }
    }

    /// `EVTCHNOP_status` (for this domain only).
    pub fn status(&self, dom: DomId, port: u32) -> EvtResult<PortStatus> {
        self.check_self(dom)?;
        if port as usize >= NR_EVENT_CHANNELS {
            return Err(-EINVAL);
        }
        let c = self.chans.get(port as usize).copied().unwrap_or(FREE);
        let (status, u0, u1) = match c.binding {
            Binding::Free => (EVTCHNSTAT_CLOSED, 0, 0),
            Binding::Unbound { remote_dom } => (EVTCHNSTAT_UNBOUND, remote_dom as u32, 0),
            Binding::Local { remote_port } => {
                (EVTCHNSTAT_INTERDOMAIN, self.domid as u32, remote_port)
            }
            Binding::Dom0 { dom0_port } => (EVTCHNSTAT_INTERDOMAIN, 0, dom0_port),
            Binding::Virq { virq } => (EVTCHNSTAT_VIRQ, virq, 0),
            Binding::Ipi => (EVTCHNSTAT_IPI, 0, 0),
        };
        Ok(PortStatus {
            status,
            vcpu: c.vcpu,
            u0,
            u1,
        })
    }

    /// `EVTCHNOP_bind_vcpu`: change which vCPU is notified.
    pub fn bind_vcpu(&mut self, port: u32, vcpu: u32) -> EvtResult<()> {
        self.check_vcpu(vcpu)?;
        let c = *self.chan(port)?;
        match c.binding {
            Binding::Unbound { .. } | Binding::Local { .. } | Binding::Dom0 { .. } => {}
            // Global VIRQs stay in vCPU 0's table; only their notified vCPU moves.
            Binding::Virq { virq } if !virq_is_per_vcpu(virq) => {}
            _ => return Err(-EINVAL),
        }
        self.chans[port as usize].vcpu = vcpu;
        Ok(())
    }

    /// `EVTCHNOP_unmask`: clear the mask and deliver an event that was pending.
    pub fn unmask(&mut self, port: u32) -> EvtResult<()> {
        let c = *self.chan(port)?;
        self.shared.set_masked(port, false);
        if self.shared.is_pending(port) {
            if self.shared.mark_vcpu_pending(c.vcpu, port) {
                self.kick.upcall(c.vcpu);
            }
            self.kick.kick(c.vcpu);
        }
        Ok(())
    }

    /// Makes `port` pending and wakes its vCPU (Xen's `evtchn_set_pending`).
    fn raise(&self, port: u32) {
        let Some(c) = self.chans.get(port as usize) else {
            return;
        };
        if !self.shared.set_pending(port) {
            return;
        }
        if !self.shared.is_masked(port) && self.shared.mark_vcpu_pending(c.vcpu, port) {
            self.kick.upcall(c.vcpu);
        }
        self.kick.kick(c.vcpu);
    }

    /// Raises `virq` on `vcpu` if the guest bound it; false if it is not bound.
    pub fn raise_virq(&self, virq: u32, vcpu: u32) -> bool {
        let vcpu = if virq_is_per_vcpu(virq) { vcpu } else { 0 };
        match self
            .virqs
            .get(vcpu as usize)
            .and_then(|v| v.get(virq as usize))
            .copied()
            .flatten()
        {
            Some(port) => {
                self.raise(port);
                true
            }
            None => false,
        }
    }

    /// The port bound to a global `virq`, if any.
    pub fn virq_port(&self, virq: u32, vcpu: u32) -> Option<u32> {
        self.virqs
            .get(vcpu as usize)?
            .get(virq as usize)
            .copied()
            .flatten()
    }

    /// Is `port` a valid, allocated port (for `SCHEDOP_poll`)?
    pub fn is_bound(&self, port: u32) -> bool {
        self.chan(port)
            .map(|c| c.binding != Binding::Free)
            .unwrap_or(false)
    }

    /// The binding of `port` (for tests and diagnostics).
    pub fn binding(&self, port: u32) -> Option<Binding> {
        self.chans.get(port as usize).map(|c| c.binding)
    }

    // ----- domain 0's side, for backends inside the VMM -----

    fn dom0_alloc(&mut self, guest_port: Option<u32>) -> EvtResult<Dom0Port> {
        let slot = match self.dom0.iter().position(|c| c.is_none()) {
            Some(i) => i,
            None if self.dom0.len() < MAX_DOM0_PORTS => {
                self.dom0.push(None);
                self.dom0.len() - 1
            }
            None => return Err(-ENOSPC),
        };
        let notify = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(|_| -ENOMEM)?);
        self.dom0[slot] = Some(Dom0Channel {
            guest_port,
            notify: notify.clone(),
        });
        Ok(Dom0Port {
            port: slot as u32,
            notify,
        })
    }

    /// Domain 0 allocates an unbound port that the guest may bind with
    /// `EVTCHNOP_bind_interdomain(remote_dom = 0, remote_port = port)`.
    pub fn dom0_alloc_unbound(&mut self) -> EvtResult<Dom0Port> {
        self.dom0_alloc(None)
    }

    /// Domain 0 binds to the guest's unbound `guest_port` (allocated for remote dom 0).
    pub fn dom0_bind_interdomain(&mut self, guest_port: u32) -> EvtResult<Dom0Port> {
        let c = *self.chan(guest_port)?;
        if c.binding != (Binding::Unbound { remote_dom: 0 }) {
            return Err(-EINVAL);
        }
        let d = self.dom0_alloc(Some(guest_port))?;
        self.chans[guest_port as usize].binding = Binding::Dom0 { dom0_port: d.port };
        Ok(d)
    }

    /// Domain 0 notifies the guest end of `dom0_port`. Unconnected ports drop the
    /// notification, as in Xen.
    pub fn dom0_notify(&self, dom0_port: u32) -> EvtResult<()> {
        let d = self
            .dom0
            .get(dom0_port as usize)
            .and_then(|c| c.as_ref())
            .ok_or(-EINVAL)?;
        if let Some(p) = d.guest_port {
            self.raise(p);
        }
        Ok(())
    }

    /// Domain 0 closes its end; the guest's port reverts to unbound (remote dom 0).
    pub fn dom0_close(&mut self, dom0_port: u32) -> EvtResult<()> {
        let d = self
            .dom0
            .get_mut(dom0_port as usize)
            .and_then(|c| c.take())
            .ok_or(-EINVAL)?;
        if let Some(p) = d.guest_port {
            self.chans[p as usize].binding = Binding::Unbound { remote_dom: 0 };
        }
        Ok(())
    }

    /// The guest port connected to `dom0_port`, if any.
    pub fn dom0_peer(&self, dom0_port: u32) -> Option<u32> {
        self.dom0.get(dom0_port as usize)?.as_ref()?.guest_port
    }
}

/// What a save keeps of an event-channel table (`crate::snapshot`): each port's
/// binding and vCPU, and each vCPU's VIRQ ports. Pending and mask bits live in
/// `shared_info`, which is guest memory.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EvtchnSnapshot {
    pub ports: Vec<(Binding, u32)>,
    pub virqs: Vec<Vec<Option<u32>>>,
}

impl EventChannels {
    /// The table as a save keeps it.
    pub fn snapshot(&self) -> EvtchnSnapshot {
        EvtchnSnapshot {
            ports: self.chans.iter().map(|c| (c.binding, c.vcpu)).collect(),
            virqs: self.virqs.iter().map(|v| v.to_vec()).collect(),
        }
    }

    /// Replaces a fresh table's ports with `snap`'s, checking every number. Domain 0's
    /// ends are not restored: a port that was connected to one becomes unbound for
    /// domain 0 again, so the backend started after the restore binds it anew.
    pub fn restore(&mut self, snap: &EvtchnSnapshot) -> Result<(), String> {
        let n = snap.ports.len();
        if n == 0 || n > NR_EVENT_CHANNELS || snap.ports[0].0 != Binding::Free {
            return Err(format!("{n} ports, or port 0 in use"));
        }
        if snap.virqs.len() != self.nr_vcpus as usize {
            return Err(format!("VIRQs of {} vCPUs", snap.virqs.len()));
        }
        let port_ok = |p: u32| (p as usize) < n && p != 0;
        let mut chans = Vec::with_capacity(n);
        for &(binding, vcpu) in &snap.ports {
            self.check_vcpu(vcpu)
                .map_err(|_| format!("port on vCPU {vcpu}"))?;
            let binding = match binding {
                Binding::Local { remote_port } if !port_ok(remote_port) => {
                    return Err(format!("local port to {remote_port}"))
                }
                Binding::Virq { virq } if virq >= NR_VIRQS => return Err(format!("VIRQ {virq}")),
                Binding::Dom0 { .. } => Binding::Unbound { remote_dom: 0 },
                b => b,
            };
            chans.push(Channel { binding, vcpu });
        }
        let mut virqs = Vec::with_capacity(snap.virqs.len());
        for v in &snap.virqs {
            let mut row = [None; NR_VIRQS as usize];
            if v.len() != row.len() || v.iter().flatten().any(|&p| !port_ok(p)) {
                return Err("a VIRQ row of the wrong size or port".into());
            }
            row.copy_from_slice(v);
            virqs.push(row);
        }
        self.chans = chans;
        self.virqs = virqs;
        self.dom0.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestRam;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Kicks(Mutex<Vec<u32>>, Mutex<Vec<u32>>);
    impl Kick for Kicks {
        fn kick(&self, vcpu: u32) {
            self.0.lock().unwrap().push(vcpu);
        }
        fn upcall(&self, vcpu: u32) {
            self.1.lock().unwrap().push(vcpu);
        }
    }

    /// An upcall kick only when `evtchn_upcall_pending` goes from 0 to 1: a burst of
    /// events costs one kick; once the guest clears the flag, the next event kicks.
    #[test]
    fn upcall_kick_only_on_the_rising_edge() {
        let (mut t, sh, kicks) = table(2);
        let a = t.bind_ipi(1).unwrap();
        let b = t.bind_ipi(1).unwrap();
        t.send(a).unwrap();
        t.send(b).unwrap();
        t.send(a).unwrap();
        assert_eq!(*kicks.1.lock().unwrap(), vec![1]);
        assert!(sh.upcall_pending(1));
        // The guest handles its events: clears the flag and the pending bits.
        sh.clear_pending(a);
        sh.clear_pending(b);
        sh.clear_upcall_pending(1);
        t.send(b).unwrap();
        assert_eq!(*kicks.1.lock().unwrap(), vec![1, 1]);
    }

    fn table(vcpus: u32) -> (EventChannels, SharedInfoPage, Arc<Kicks>) {
        let ram = Arc::new(GuestRam::new("evt", 8 << 20).unwrap());
        let shared = SharedInfoPage::new(ram, 0x2000).unwrap();
        let kicks = Arc::new(Kicks::default());
        (
            EventChannels::new(5, vcpus, shared.clone(), kicks.clone()),
            shared,
            kicks,
        )
    }

    #[test]
    fn ipi_delivery_sets_bits_and_kicks() {
        let (mut t, sh, kicks) = table(2);
        let p = t.bind_ipi(1).unwrap();
        assert_eq!(p, 1, "port 0 is never allocated");
        t.send(p).unwrap();
        assert!(sh.is_pending(p));
        assert!(sh.upcall_pending(1));
        assert!(!sh.upcall_pending(0));
        assert_eq!(*kicks.0.lock().unwrap(), vec![1]);
        // A second send while pending changes nothing.
        t.send(p).unwrap();
        assert_eq!(kicks.0.lock().unwrap().len(), 1);
    }

    /// A restore as a new domain (the guest suspended itself) masks every port but
    /// the kept ones and clears every pending bit, as Xen's restore does: a port the
    /// guest binds again for an event it keeps masked (Linux's spinlock kick) gets no
    /// upcall from the old port's clear mask bit.
    #[test]
    fn new_domain_reset_masks_every_port_but_the_kept_ones() {
        let (mut t, sh, _) = table(1);
        let kick = t.bind_ipi(0).unwrap();
        let store = t.bind_ipi(0).unwrap();
        sh.set_masked(kick, false);
        sh.set_masked(store, false);
        sh.set_pending(store);
        sh.reset_events_for_new_domain(&[store]);
        assert!(sh.is_masked(kick) && !sh.is_masked(store));
        assert!(!sh.is_pending(store));
        sh.clear_upcall_pending(0);
        t.send(kick).unwrap();
        assert!(sh.is_pending(kick));
        assert!(!sh.upcall_pending(0), "a masked port raised an upcall");
    }

    #[test]
    fn masked_port_stays_quiet_until_unmask() {
        let (mut t, sh, _) = table(1);
        let p = t.bind_ipi(0).unwrap();
        sh.set_masked(p, true);
        t.send(p).unwrap();
        assert!(sh.is_pending(p));
        assert!(!sh.upcall_pending(0));
        t.unmask(p).unwrap();
        assert!(sh.upcall_pending(0));
        assert!(!sh.is_masked(p));
    }

    #[test]
    fn virq_binding_rules() {
        let (mut t, sh, _) = table(2);
        assert_eq!(t.bind_virq(NR_VIRQS, 0), Err(-EINVAL));
        assert_eq!(t.bind_virq(VIRQ_TIMER, 7), Err(-ENOENT));
        assert_eq!(
            t.bind_virq(VIRQ_CONSOLE, 1),
            Err(-EINVAL),
            "global virq on vcpu 1"
        );
        let p = t.bind_virq(VIRQ_TIMER, 1).unwrap();
        assert_eq!(t.bind_virq(VIRQ_TIMER, 1), Err(-EEXIST));
        assert_eq!(t.send(p), Err(-EINVAL));
        assert!(t.raise_virq(VIRQ_TIMER, 1));
        assert!(!t.raise_virq(VIRQ_TIMER, 0));
        assert!(sh.is_pending(p));
        assert_eq!(t.bind_vcpu(p, 0), Err(-EINVAL), "per-vcpu virq cannot move");
        let c = t.bind_virq(VIRQ_CONSOLE, 0).unwrap();
        t.bind_vcpu(c, 1).unwrap();
        assert!(t.raise_virq(VIRQ_CONSOLE, 0));
        assert!(sh.upcall_pending(1));
        t.close(p).unwrap();
        assert!(!sh.is_pending(p));
        assert!(t.bind_virq(VIRQ_TIMER, 1).is_ok(), "rebinding after close");
    }

    #[test]
    fn status_and_close() {
        let (mut t, _, _) = table(1);
        let p = t.alloc_unbound(DOMID_SELF, 0).unwrap();
        assert_eq!(
            t.status(DOMID_SELF, p).unwrap(),
            PortStatus {
                status: EVTCHNSTAT_UNBOUND,
                vcpu: 0,
                u0: 0,
                u1: 0
            }
        );
        assert_eq!(t.status(3, p), Err(-EPERM));
        assert_eq!(
            t.status(DOMID_SELF, 4095).unwrap().status,
            EVTCHNSTAT_CLOSED
        );
        assert_eq!(t.status(DOMID_SELF, 4096), Err(-EINVAL));
        t.close(p).unwrap();
        assert_eq!(t.close(p), Err(-EINVAL));
        assert_eq!(t.close(0), Err(-EINVAL));
        assert_eq!(t.close(u32::MAX), Err(-EINVAL));
        assert_eq!(t.alloc_unbound(9, 0), Err(-EPERM));
        assert_eq!(t.alloc_unbound(DOMID_SELF, 0x7FF1), Err(-EINVAL));
    }

    #[test]
    fn loopback_within_domain() {
        let (mut t, sh, _) = table(1);
        let a = t.alloc_unbound(DOMID_SELF, DOMID_SELF).unwrap();
        let b = t.bind_interdomain(DOMID_SELF, a).unwrap();
        t.send(b).unwrap();
        assert!(sh.is_pending(a));
        t.send(a).unwrap();
        assert!(sh.is_pending(b));
        t.close(b).unwrap();
        assert_eq!(t.binding(a), Some(Binding::Unbound { remote_dom: 5 }));
        assert_eq!(t.bind_interdomain(DOMID_SELF, 999), Err(-EINVAL));
        assert_eq!(t.bind_interdomain(7, 1), Err(-ESRCH));
    }

    #[test]
    fn dom0_endpoint_loopback() {
        let (mut t, sh, _) = table(1);
        // Guest allocates a port for dom0; the backend binds it.
        let g = t.alloc_unbound(DOMID_SELF, 0).unwrap();
        let d = t.dom0_bind_interdomain(g).unwrap();
        assert_eq!(
            t.dom0_bind_interdomain(g).unwrap_err(),
            -EINVAL,
            "already bound"
        );
        t.send(g).unwrap();
        t.send(g).unwrap();
        assert_eq!(
            d.notify.read().unwrap(),
            2,
            "backend sees the guest's notifications"
        );
        t.dom0_notify(d.port).unwrap();
        assert!(sh.is_pending(g));
        assert_eq!(
            t.status(DOMID_SELF, g).unwrap().status,
            EVTCHNSTAT_INTERDOMAIN
        );
        // Backend-allocated port the guest binds to.
        let d2 = t.dom0_alloc_unbound().unwrap();
        let g2 = t.bind_interdomain(0, d2.port).unwrap();
        assert_eq!(t.dom0_peer(d2.port), Some(g2));
        t.send(g2).unwrap();
        assert_eq!(d2.notify.read().unwrap(), 1);
        // Guest closes: dom0 side loses its peer; notifications are dropped.
        t.close(g2).unwrap();
        assert_eq!(t.dom0_peer(d2.port), None);
        t.dom0_notify(d2.port).unwrap();
        // Dom0 closes: guest port reverts to unbound.
        t.dom0_close(d.port).unwrap();
        assert_eq!(t.binding(g), Some(Binding::Unbound { remote_dom: 0 }));
        assert_eq!(t.dom0_notify(d.port), Err(-EINVAL));
        assert_eq!(t.bind_interdomain(0, 77), Err(-EINVAL));
    }

    #[test]
    fn reset_closes_everything_and_ports_run_out() {
        let (mut t, _, _) = table(1);
        for _ in 1..NR_EVENT_CHANNELS {
            t.bind_ipi(0).unwrap();
        }
        assert_eq!(t.bind_ipi(0), Err(-ENOSPC));
        t.reset(DOMID_SELF).unwrap();
        assert_eq!(t.bind_ipi(0), Ok(1));
    }

    proptest::proptest! {
        #[test]
        fn random_operation_sequences_never_panic(ops in proptest::collection::vec((0u8..12, 0u32..70, 0u32..6), 1..200)) {
            let (mut t, _, _) = table(2);
            for (op, a, b) in ops {
                let _ = match op {
                    0 => t.alloc_unbound(DOMID_SELF, a as u16).map(|_| ()),
                    1 => t.bind_interdomain(if b % 2 == 0 { DOMID_SELF } else { 0 }, a).map(|_| ()),
                    2 => t.bind_virq(a % 30, b).map(|_| ()),
                    3 => t.bind_ipi(b).map(|_| ()),
                    4 => t.close(a),
                    5 => t.send(a),
                    6 => t.status(DOMID_SELF, a).map(|_| ()),
                    7 => t.bind_vcpu(a, b),
                    8 => t.unmask(a),
                    9 => t.dom0_bind_interdomain(a).map(|_| ()),
                    10 => t.dom0_notify(a),
                    _ => t.dom0_close(a),
                };
                // Invariant: every VIRQ mapping points at a port bound to that VIRQ.
                for (v, row) in t.virqs.iter().enumerate() {
                    for (virq, port) in row.iter().enumerate() {
                        if let Some(p) = port {
                            let c = t.chans[*p as usize];
                            proptest::prop_assert_eq!(c.binding, Binding::Virq { virq: virq as u32 });
                            if virq_is_per_vcpu(virq as u32) {
                                proptest::prop_assert_eq!(c.vcpu as usize, v);
                            } else {
                                proptest::prop_assert_eq!(v, 0);
                            }
                        }
                    }
                }
            }
        }
    }
}
