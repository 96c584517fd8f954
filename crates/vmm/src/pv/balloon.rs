//! A PV domain's balloon hypercalls: `memory_op` `XENMEM_decrease_reservation`,
//! `XENMEM_populate_physmap`, `XENMEM_increase_reservation` (one-page extents) and
//! `XENMEM_current_reservation`, as Xen's `common/memory.c` answers a PV guest.
//!
//! Decrease gives up machine frames the guest names: each must be its ordinary RAM,
//! unreferenced in the MMU (`Mmu::balloon_out`) and in no active grant; its host
//! memory is released (`GuestRam::release_frames`). Populate and increase hand frames
//! the domain gave up back, zeroed, and write their MFNs into the guest's array
//! (populate also sets their M2P entries to the pseudo-physical frames the guest
//! asked for, as Xen does for a PV guest); the domain never grows beyond the RAM it
//! was built with. Every result is the number of extents done; what rxen cannot do
//! (`extent_order` > 0, another domain) stops the call there as in Xen.

use rxen_abi::errno::{EFAULT, EPERM, ESRCH};
use rxen_abi::memory::*;
use rxen_abi::{DOMID_SELF, PAGE_SIZE};

use super::mmu::{GuestFrames, Mmu};
use super::ram_frames::RamFrames;
use crate::guest_view::GuestView;
use crate::memory::GuestRam;

/// Which reservation operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reservation {
    /// `XENMEM_decrease_reservation`: give frames up.
    Decrease,
    /// `XENMEM_populate_physmap`: take frames for given pseudo-physical frames.
    Populate,
    /// `XENMEM_increase_reservation`: take frames.
    Increase,
}

impl Reservation {
    /// The operation of a `memory_op` command, if it is one of these.
    pub fn of_command(cmd: u64) -> Option<Self> {
        match cmd & MEMOP_CMD_MASK {
            XENMEM_DECREASE_RESERVATION => Some(Reservation::Decrease),
            XENMEM_POPULATE_PHYSMAP => Some(Reservation::Populate),
            XENMEM_INCREASE_RESERVATION => Some(Reservation::Increase),
            _ => None,
        }
    }
}

/// What the operations need of the domain besides its MMU and the caller's view.
pub struct BalloonDomain<'a> {
    pub ram: &'a GuestRam,
    /// Guest-physical address and entry count of the M2P.
    pub m2p: (u64, u64),
    pub domid: u16,
    /// Whether an active grant names this frame (it must stay).
    pub granted: &'a dyn Fn(u64) -> bool,
}

fn is_self(dom: &BalloonDomain<'_>, domid: u16) -> bool {
    domid == DOMID_SELF || domid == dom.domid
}

/// `memory_op(cmd, arg)` for one of the [`Reservation`] operations: returns `rax`.
pub fn reservation(
    dom: &BalloonDomain<'_>,
    mmu: &mut Mmu,
    mem: &GuestView<'_>,
    op: Reservation,
    cmd: u64,
    arg: u64,
) -> i64 {
    let start = cmd >> MEMOP_EXTENT_SHIFT;
    let Ok(r) = mem.read::<XenMemoryReservation>(arg) else {
        return i64::from(-EFAULT);
    };
    if r.nr_extents > u64::MAX >> MEMOP_EXTENT_SHIFT || start >= r.nr_extents {
        return start as i64;
    }
    if !is_self(dom, r.domid) {
        return i64::from(-EPERM);
    }
    if r.extent_order != 0 {
        tracing::debug!(?op, order = r.extent_order, "memory_op: only single pages");
        return start as i64;
    }
    let done = match op {
        Reservation::Decrease => decrease(dom, mmu, mem, &r, start),
        Reservation::Populate | Reservation::Increase => {
            populate(dom, mmu, mem, &r, start, op == Reservation::Populate)
        }
    };
    tracing::debug!(?op, asked = r.nr_extents, done, "memory_op reservation");
    done as i64
}

/// The guest address of extent `i` of the array, if it does not wrap.
fn extent_addr(r: &XenMemoryReservation, i: u64) -> Option<u64> {
    i.checked_mul(8).and_then(|o| r.extent_start.checked_add(o))
}

fn decrease(
    dom: &BalloonDomain<'_>,
    mmu: &mut Mmu,
    mem: &GuestView<'_>,
    r: &XenMemoryReservation,
    start: u64,
) -> u64 {
    let mut given = Vec::new();
    let mut i = start;
    while i < r.nr_extents {
        let Some(Ok(frame)) = extent_addr(r, i).map(|a| mem.read::<u64>(a)) else {
            break;
        };
        if (dom.granted)(frame) {
            tracing::debug!(frame, "decrease_reservation: frame is granted");
            break;
        }
        if let Err(e) = mmu.balloon_out(frame) {
            tracing::debug!(frame, "decrease_reservation refused: {e}");
            break;
        }
        given.push(frame);
        i += 1;
    }
    // Released under the MMU lock: a frame populated again afterwards keeps its data.
    given.sort_unstable();
    for (first, count) in runs(&given) {
        if let Err(e) = dom.ram.release_frames(first, count) {
            // The frames are out of the guest's reach either way; populate zeroes them.
            tracing::warn!(first, count, "releasing ballooned frames: {e}");
        }
    }
    i
}

/// Sorted frames as `(first, count)` runs.
fn runs(frames: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &f in frames {
        match out.last_mut() {
            Some((first, count)) if *first + *count == f => *count += 1,
            _ => out.push((f, 1)),
        }
    }
    out
}

fn populate(
    dom: &BalloonDomain<'_>,
    mmu: &mut Mmu,
    mem: &GuestView<'_>,
    r: &XenMemoryReservation,
    start: u64,
    with_gpfn: bool,
) -> u64 {
    const ZEROS: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];
    let mut frames = RamFrames::with_m2p(dom.ram, dom.m2p.0, dom.m2p.1);
    let mut cursor = 0;
    let mut i = start;
    while i < r.nr_extents {
        let Some(at) = extent_addr(r, i) else {
            break;
        };
        let gpfn = if with_gpfn {
            match mem.read::<u64>(at) {
                Ok(g) => Some(g),
                Err(_) => break,
            }
        } else {
            None
        };
        let Some(mfn) = mmu.balloon_in(gpfn.unwrap_or(u64::MAX), &mut cursor) else {
            break;
        };
        if let Err(e) = dom.ram.write(mfn * PAGE_SIZE, &ZEROS) {
            tracing::warn!(mfn, "zeroing a populated frame: {e}");
            let _ = mmu.balloon_out(mfn);
            break;
        }
        if let Some(g) = gpfn {
            frames.set_m2p(mfn, g);
        }
        // As Xen: a frame whose number cannot be written back stays the domain's but
        // does not count as done.
        if mem.write(at, &mfn).is_err() {
            break;
        }
        i += 1;
    }
    i
}

/// `XENMEM_current_reservation` of a PV domain of `guest_pages` pages: what it was
/// built with less what it gave up. `None` when `domid` is not the caller.
pub fn current_reservation(
    mmu: &Mmu,
    own_domid: u16,
    domid: u16,
    guest_pages: u64,
) -> Result<u64, i32> {
    if domid != DOMID_SELF && domid != own_domid {
        return Err(-ESRCH);
    }
    Ok(guest_pages.saturating_sub(mmu.ballooned_frames()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pv::mmu::Owner;
    use rxen_abi::errno::EPERM;
    use zerocopy::IntoBytes;

    const MIB: u64 = 1 << 20;
    /// Where the tests put the reservation and its extent array (identity view).
    const ARG: u64 = 0x20_0000;
    const LIST: u64 = ARG + 0x1000;
    /// Frames the tests give up and take back.
    const F: u64 = 0x300;
    const G: u64 = 0x301;
    /// The M2P: at 3 MiB, one entry per frame.
    const M2P: u64 = 0x30_0000;

    struct Setup {
        ram: GuestRam,
        mmu: Mmu,
    }

    fn setup() -> Setup {
        let ram = GuestRam::new("balloon", 8 * MIB).unwrap();
        let mmu = Mmu::new(ram.nr_pages(), 1);
        Setup { ram, mmu }
    }

    impl Setup {
        fn call(&mut self, op: Reservation, cmd: u64, r: XenMemoryReservation) -> i64 {
            self.call_granted(op, cmd, r, &|_| false)
        }

        fn call_granted(
            &mut self,
            op: Reservation,
            cmd: u64,
            r: XenMemoryReservation,
            granted: &dyn Fn(u64) -> bool,
        ) -> i64 {
            self.ram.write(ARG, r.as_bytes()).unwrap();
            let dom = BalloonDomain {
                ram: &self.ram,
                m2p: (M2P, self.ram.nr_pages()),
                domid: 3,
                granted,
            };
            let view = GuestView::identity(&self.ram);
            reservation(&dom, &mut self.mmu, &view, op, cmd, ARG)
        }

        fn list(&self, frames: &[u64]) {
            self.ram.write(LIST, frames.as_bytes()).unwrap();
        }

        fn listed(&self, i: u64) -> u64 {
            self.ram.read_obj::<u64>(LIST + 8 * i).unwrap()
        }

        fn page(&self, frame: u64) -> Vec<u8> {
            let mut buf = vec![0u8; PAGE_SIZE as usize];
            self.ram.read(frame * PAGE_SIZE, &mut buf).unwrap();
            buf
        }

        fn owner(&self, frame: u64) -> Owner {
            self.mmu.frame(frame).unwrap().owner
        }
    }

    fn res(nr_extents: u64) -> XenMemoryReservation {
        XenMemoryReservation {
            extent_start: LIST,
            nr_extents,
            domid: DOMID_SELF,
            ..Default::default()
        }
    }

    #[test]
    fn decrease_gives_frames_up_and_populate_returns_them_zeroed() {
        let mut s = setup();
        s.ram.write(F * PAGE_SIZE, &[0xaa; 4096]).unwrap();
        s.list(&[F, G]);
        let dec = XENMEM_DECREASE_RESERVATION;
        assert_eq!(s.call(Reservation::Decrease, dec, res(2)), 2);
        assert_eq!(s.owner(F), Owner::Ballooned);
        assert_eq!(s.owner(G), Owner::Ballooned);
        assert!(s.page(F).iter().all(|b| *b == 0), "host memory released");
        assert_eq!(current_reservation(&s.mmu, 3, DOMID_SELF, 2048), Ok(2046));
        assert_eq!(current_reservation(&s.mmu, 3, 3, 2048), Ok(2046));
        assert_eq!(current_reservation(&s.mmu, 3, 4, 2048), Err(-ESRCH));

        // Populate asks for pseudo-physical frame G and then some frame 7 that was
        // never given up: G comes back as itself, F for the other.
        s.list(&[G, 7]);
        let pop = XENMEM_POPULATE_PHYSMAP;
        assert_eq!(s.call(Reservation::Populate, pop, res(2)), 2);
        assert_eq!((s.listed(0), s.listed(1)), (G, F));
        assert_eq!(s.owner(F), Owner::Guest);
        assert_eq!(s.owner(G), Owner::Guest);
        assert!(s.page(F).iter().all(|b| *b == 0), "populated zeroed");
        let m2p = |f: u64| s.ram.read_obj::<u64>(M2P + 8 * f).unwrap();
        assert_eq!((m2p(G), m2p(F)), (G, 7), "M2P names the frames asked for");
        assert_eq!(current_reservation(&s.mmu, 3, DOMID_SELF, 2048), Ok(2048));

        // Nothing left to give: the domain never grows beyond its RAM.
        assert_eq!(s.call(Reservation::Populate, pop, res(1)), 0);
        assert_eq!(s.call(Reservation::Increase, 0, res(1)), 0);
    }

    #[test]
    fn increase_writes_the_frames_it_gives() {
        let mut s = setup();
        s.list(&[F]);
        assert_eq!(s.call(Reservation::Decrease, 1, res(1)), 1);
        s.list(&[u64::MAX]);
        assert_eq!(s.call(Reservation::Increase, 0, res(4)), 1, "one was there");
        assert_eq!(s.listed(0), F);
        assert_eq!(s.owner(F), Owner::Guest);
    }

    #[test]
    fn referenced_or_granted_frames_are_refused_with_the_count_done() {
        let mut s = setup();
        s.mmu.set_owner(G, Owner::SharedInfo).unwrap();
        s.list(&[F, G, F + 2]);
        assert_eq!(s.call(Reservation::Decrease, 1, res(3)), 1);
        assert_eq!(s.owner(G), Owner::SharedInfo);
        assert_eq!(s.owner(F + 2), Owner::Guest, "stops at the first refusal");
        s.list(&[F + 2]);
        let granted = |f: u64| f == F + 2;
        assert_eq!(
            s.call_granted(Reservation::Decrease, 1, res(1), &granted),
            0
        );
        assert_eq!(s.owner(F + 2), Owner::Guest);
        // Out of RAM, rxen's own and already given up.
        s.mmu.set_owner(F + 3, Owner::Rxen).unwrap();
        for bad in [s.ram.nr_pages(), u64::MAX, F + 3, F] {
            s.list(&[bad]);
            assert_eq!(s.call(Reservation::Decrease, 1, res(1)), 0, "{bad:#x}");
        }
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let mut s = setup();
        s.list(&[F]);
        // Another domain, larger extents, a continuation past the end.
        let other = XenMemoryReservation { domid: 7, ..res(1) };
        assert_eq!(s.call(Reservation::Decrease, 1, other), i64::from(-EPERM));
        let big = XenMemoryReservation {
            extent_order: 9,
            ..res(1)
        };
        assert_eq!(s.call(Reservation::Decrease, 1, big), 0);
        assert_eq!(s.call(Reservation::Decrease, 1 | (5 << 6), res(1)), 5);
        assert_eq!(
            s.call(Reservation::Decrease, 1 | (u64::MAX << 6), res(1)),
            (u64::MAX >> 6) as i64
        );
        // Counts far beyond RAM stop at what the frames allow (here at the repeat).
        s.list(&[F, F]);
        assert_eq!(s.call(Reservation::Decrease, 1, res(u64::MAX)), 0);
        assert_eq!(s.call(Reservation::Decrease, 1, res(u64::MAX >> 6)), 1);
        assert_eq!(s.call(Reservation::Populate, 6, res(u64::MAX >> 6)), 1);
        // Unreadable or wrapping extent arrays.
        for start in [0, u64::MAX - 7, 1 << 62, 64 * MIB] {
            let r = XenMemoryReservation {
                extent_start: start,
                ..res(3)
            };
            for op in [
                Reservation::Decrease,
                Reservation::Populate,
                Reservation::Increase,
            ] {
                assert_eq!(s.call(op, 0, r), 0, "{op:?} at {start:#x}");
            }
        }
        // An unreadable argument.
        let dom = BalloonDomain {
            ram: &s.ram,
            m2p: (0, 0),
            domid: 3,
            granted: &|_| false,
        };
        let view = GuestView::identity(&s.ram);
        for arg in [0, u64::MAX, 1 << 40] {
            assert_eq!(
                reservation(&dom, &mut s.mmu, &view, Reservation::Decrease, 1, arg),
                i64::from(-EFAULT)
            );
        }
    }
}
