//! The domain's timer thread: fires singleshot timers of running vCPUs (blocked vCPUs
//! fire their own, see `hypercall::exec`) and the guest's watchdogs.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// What a timer entry is for. Each kind has a key (which timer) and a generation
/// (which arming of it); only the newest arming of a key can still fire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerKind {
    /// Singleshot timer of a vCPU, with the arming generation.
    Vcpu { vcpu: u32, generation: u64 },
    /// Watchdog `id` with its arming generation.
    Watchdog { id: u32, generation: u64 },
}

impl TimerKind {
    /// Which timer this entry arms, and with which generation.
    fn key_and_generation(self) -> (TimerKey, u64) {
        match self {
            TimerKind::Vcpu { vcpu, generation } => (TimerKey::Vcpu(vcpu), generation),
            TimerKind::Watchdog { id, generation } => (TimerKey::Watchdog(id), generation),
        }
    }
}

/// One timer of the domain (a vCPU's singleshot timer or a watchdog slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum TimerKey {
    Vcpu(u32),
    Watchdog(u32),
}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<(Instant, TimerKind)>>,
    stop: bool,
}

/// A queue of deadlines served by one thread.
#[derive(Default)]
pub struct TimerQueue {
    q: Mutex<Queue>,
    cond: Condvar,
}

/// Queue length at which stale entries are pruned.
const PRUNE_AT: usize = 4096;

impl Queue {
    /// Drops every entry that is not the newest arming of its timer. Generations only
    /// grow, so an older generation can never fire (the firing is checked against the
    /// timer's current generation); the newest one is always kept, whatever its
    /// deadline. What is left is at most one entry per timer, which the domain's
    /// vCPU count and watchdog slots bound.
    fn prune_stale(&mut self) {
        let mut newest: std::collections::HashMap<TimerKey, u64> = Default::default();
        for Reverse((_, kind)) in self.heap.iter() {
            let (key, generation) = kind.key_and_generation();
            let g = newest.entry(key).or_insert(generation);
            *g = (*g).max(generation);
        }
        self.heap.retain(|Reverse((_, kind))| {
            let (key, generation) = kind.key_and_generation();
            newest.get(&key) == Some(&generation)
        });
    }
}

impl TimerQueue {
    /// Adds a deadline.
    pub fn add(&self, at: Instant, kind: TimerKind) {
        let mut q = self.q.lock().unwrap_or_else(|e| e.into_inner());
        if q.heap.len() >= PRUNE_AT {
            q.prune_stale();
        }
        let earliest = q.heap.peek().map(|Reverse((t, _))| *t);
        q.heap.push(Reverse((at, kind)));
        if earliest.is_none_or(|e| at < e) {
            self.cond.notify_one();
        }
    }

    /// Stops the thread running [`TimerQueue::run`].
    pub fn stop(&self) {
        self.q.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        self.cond.notify_all();
    }

    /// Serves the queue until [`TimerQueue::stop`], calling `fire` for each due entry.
    pub fn run(self: Arc<Self>, fire: impl Fn(TimerKind)) {
        let mut q = self.q.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if q.stop {
                return;
            }
            let now = Instant::now();
            match q.heap.peek().copied() {
                Some(Reverse((at, kind))) if at <= now => {
                    q.heap.pop();
                    drop(q);
                    fire(kind);
                    q = self.q.lock().unwrap_or_else(|e| e.into_inner());
                }
                Some(Reverse((at, _))) => {
                    q = self
                        .cond
                        .wait_timeout(q, at - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                None => q = self.cond.wait(q).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }
}

/// Makes the calling thread's timed waits precise (1 ns timer slack instead of 50 µs).
pub fn precise_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument and affects only this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn a_new_arming_survives_pruning_and_fires() {
        let q = Arc::new(TimerQueue::default());
        let now = Instant::now();
        // A guest re-arming its timer far in the future many times, past the prune
        // threshold, with one other (live) timer queued early.
        q.add(
            now + Duration::from_secs(3600),
            TimerKind::Watchdog {
                id: 1,
                generation: 1,
            },
        );
        for generation in 1..=PRUNE_AT as u64 + 10 {
            q.add(
                now + Duration::from_secs(1000) + Duration::from_millis(generation),
                TimerKind::Vcpu {
                    vcpu: 0,
                    generation,
                },
            );
        }
        // The newest arming of another timer, later than every queued entry.
        let watchdog = TimerKind::Watchdog {
            id: 0,
            generation: 7,
        };
        q.add(now + Duration::from_secs(5000), watchdog);
        {
            let inner = q.q.lock().expect("queue");
            assert!(inner.heap.len() < PRUNE_AT, "stale entries were pruned");
            let live: Vec<_> = inner.heap.iter().map(|Reverse((_, k))| *k).collect();
            assert!(live.contains(&watchdog), "newest arming kept: {live:?}");
            assert!(live.contains(&TimerKind::Watchdog {
                id: 1,
                generation: 1
            }));
        }
        // And a fresh arming due now fires.
        let due = TimerKind::Vcpu {
            vcpu: 1,
            generation: 1,
        };
        q.add(Instant::now(), due);
        let fired = Arc::new(AtomicBool::new(false));
        let (q2, f2) = (q.clone(), fired.clone());
        let server = std::thread::spawn(move || {
            q2.run(|k| {
                if k == due {
                    f2.store(true, Ordering::SeqCst);
                }
            })
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !fired.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the new timer never fired");
            std::thread::sleep(Duration::from_millis(1));
        }
        q.stop();
        server.join().expect("timer thread");
    }

    #[test]
    fn a_late_arming_is_not_dropped_when_the_queue_is_full_of_early_ones() {
        let q = TimerQueue::default();
        let now = Instant::now();
        for generation in 1..=PRUNE_AT as u64 {
            q.add(
                now + Duration::from_millis(generation),
                TimerKind::Vcpu {
                    vcpu: 0,
                    generation,
                },
            );
        }
        let watchdog = TimerKind::Watchdog {
            id: 0,
            generation: 1,
        };
        q.add(now + Duration::from_secs(60), watchdog);
        // Enough further armings to prune again: the watchdog must stay.
        for generation in PRUNE_AT as u64 + 1..=3 * PRUNE_AT as u64 {
            q.add(
                now + Duration::from_millis(generation % 100),
                TimerKind::Vcpu {
                    vcpu: 0,
                    generation,
                },
            );
        }
        let inner = q.q.lock().expect("queue");
        assert!(inner.heap.iter().any(|Reverse((_, k))| *k == watchdog));
    }
}
