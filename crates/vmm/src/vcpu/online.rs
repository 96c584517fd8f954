//! The domain-wide number of online vCPUs, so that "not the last online vCPU" is one
//! atomic decision.
//!
//! `VCPUOP_down` must refuse to take down the last online vCPU (a domain with no
//! running vCPU could never act again). Counting the online vCPUs under their separate
//! locks and then taking one down is racy: two vCPUs taking each other down at the same
//! time both count two and both succeed. Here the count is one atomic, changed only
//! while the vCPU whose state changes is locked, and a down decrements it with a
//! compare-and-swap that refuses to go below one.

use std::sync::atomic::{AtomicU32, Ordering};

use rxen_abi::errno::EBUSY;

use super::{VcpuControl, VcpuState};

/// How many vCPUs of a domain are not [`VcpuState::Down`].
#[derive(Debug)]
pub struct OnlineVcpus(AtomicU32);

impl OnlineVcpus {
    /// The count for vCPUs as created: only the boot vCPU is online.
    pub fn at_boot() -> Self {
        OnlineVcpus(AtomicU32::new(1))
    }

    /// The count of a restored domain.
    pub fn restored(count: u32) -> Self {
        OnlineVcpus(AtomicU32::new(count))
    }

    /// Current number of online vCPUs.
    pub fn count(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }

    /// `VCPUOP_up` of `vcpu`.
    pub fn up(&self, vcpu: &VcpuControl, now: u64) -> Result<(), i32> {
        let mut s = vcpu.lock();
        let was_down = s.state == VcpuState::Down;
        s.up(now)?;
        if was_down {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    /// `VCPUOP_down` of `vcpu`: `-EBUSY` if it is the last online vCPU. Taking down a
    /// vCPU that is already down succeeds.
    pub fn down(&self, vcpu: &VcpuControl, now: u64) -> Result<(), i32> {
        let mut s = vcpu.lock();
        if s.state == VcpuState::Down {
            return Ok(());
        }
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n > 1).then(|| n - 1)
            })
            .map_err(|_| -EBUSY)?;
        s.down(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use zerocopy::FromZeros;

    fn online_pair() -> (Arc<OnlineVcpus>, Arc<Vec<VcpuControl>>) {
        let online = Arc::new(OnlineVcpus::at_boot());
        let vcpus = Arc::new(vec![VcpuControl::new(0), VcpuControl::new(1)]);
        vcpus[1]
            .lock()
            .initialise(rxen_abi::vcpu::VcpuGuestContext::new_box_zeroed().expect("ctx"))
            .expect("initialise");
        online.up(&vcpus[1], 0).expect("up");
        (online, vcpus)
    }

    #[test]
    fn the_last_vcpu_stays_up() {
        let (online, vcpus) = online_pair();
        assert_eq!(online.count(), 2);
        online.up(&vcpus[1], 1).expect("up again is a no-op");
        assert_eq!(online.count(), 2);
        online.down(&vcpus[0], 2).expect("down");
        online.down(&vcpus[0], 3).expect("down again is a no-op");
        assert_eq!(online.down(&vcpus[1], 4), Err(-EBUSY));
        assert_eq!(online.count(), 1);
        assert_eq!(vcpus[1].lock().state, VcpuState::Running);
    }

    #[test]
    fn two_vcpus_downing_each_other_never_leave_none_online() {
        const ITERATIONS: usize = 200_000;
        let online = Arc::new(OnlineVcpus::at_boot());
        let vcpus = Arc::new(vec![VcpuControl::new(0), VcpuControl::new(1)]);
        vcpus[1]
            .lock()
            .initialise(rxen_abi::vcpu::VcpuGuestContext::new_box_zeroed().expect("ctx"))
            .expect("initialise");
        online.up(&vcpus[1], 0).expect("up");
        let violations = Arc::new(AtomicUsize::new(0));
        // vCPU 0's thread keeps taking vCPU 1 down and bringing it back, and vCPU 1's
        // thread does the same to vCPU 0, both at full speed on their own host CPUs.
        let racers: Vec<_> = [1usize, 0]
            .into_iter()
            .map(|target| {
                let (online, vcpus, violations) =
                    (online.clone(), vcpus.clone(), violations.clone());
                std::thread::spawn(move || {
                    let mut downs = 0;
                    for _ in 0..ITERATIONS {
                        if online.down(&vcpus[target], 10).is_ok() {
                            downs += 1;
                            // Both records locked at once: an exact snapshot (down and
                            // up lock one vCPU only, so this cannot deadlock).
                            let s0 = vcpus[0].lock();
                            let s1 = vcpus[1].lock();
                            if s0.state == VcpuState::Down && s1.state == VcpuState::Down {
                                violations.fetch_add(1, Ordering::SeqCst);
                            }
                            drop((s0, s1));
                            online.up(&vcpus[target], 20).expect("up");
                        }
                    }
                    downs
                })
            })
            .collect();
        let downs: usize = racers.into_iter().map(|t| t.join().expect("racer")).sum();
        assert_eq!(
            violations.load(Ordering::SeqCst),
            0,
            "no vCPU was online after a successful VCPUOP_down ({downs} downs)"
        );
        assert!(downs > 0);
        assert_eq!(online.count(), 2);
    }
}
