//! The domain's timer thread: fires singleshot timers of running vCPUs (blocked vCPUs
//! fire their own, see `hypercall::exec`) and the guest's watchdogs.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// What a timer entry is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerKind {
    /// Singleshot timer of a vCPU, with the arming generation.
    Vcpu { vcpu: u32, generation: u64 },
    /// Watchdog `id` with its arming generation.
    Watchdog { id: u32, generation: u64 },
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

/// Most timer entries queued at once; stale entries beyond it are pruned.
const MAX_ENTRIES: usize = 4096;

impl TimerQueue {
    /// Adds a deadline.
    pub fn add(&self, at: Instant, kind: TimerKind) {
        let mut q = self.q.lock().unwrap_or_else(|e| e.into_inner());
        if q.heap.len() >= MAX_ENTRIES {
            // Entries are validated by generation when they fire, so dropping the latest
            // ones only risks a late fire for a guest that re-arms thousands of timers
            // without waiting; keep the earliest half.
            let mut v: Vec<_> = std::mem::take(&mut q.heap).into_sorted_vec();
            v.reverse();
            v.truncate(MAX_ENTRIES / 2);
            q.heap = v.into_iter().collect();
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
