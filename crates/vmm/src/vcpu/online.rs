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
    use std::sync::{Arc, Barrier};
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
    fn two_vcpus_downing_each_other_leave_one_online() {
        for round in 0..3000 {
            let (online, vcpus) = online_pair();
            let start = Arc::new(Barrier::new(2));
            let racers: Vec<_> = [(0usize, 1usize), (1, 0)]
                .into_iter()
                .map(|(_me, target)| {
                    let (online, vcpus, start) = (online.clone(), vcpus.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        online.down(&vcpus[target], 10).is_ok()
                    })
                })
                .collect();
            let ok: usize = racers
                .into_iter()
                .map(|t| t.join().expect("racer") as usize)
                .sum();
            let up = vcpus
                .iter()
                .filter(|v| v.lock().state != VcpuState::Down)
                .count();
            assert_eq!(
                up, 1,
                "round {round}: {ok} downs succeeded, {up} vCPUs online"
            );
            assert_eq!(ok, 1, "round {round}");
            assert_eq!(online.count(), 1);
        }
    }
}
