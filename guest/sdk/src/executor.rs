//! A small single-vCPU executor for `async` guest code. When no task can make
//! progress it arms the singleshot timer for the earliest sleeper and blocks the vCPU
//! in `SCHEDOP_block`, so an idle guest costs the host nothing.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::task::Wake;
use alloc::vec::Vec;
use core::future::Future;
use core::pin::Pin;
use core::sync::atomic::{AtomicBool, Ordering};
use core::task::{Context, Poll, Waker};

struct TaskWaker {
    ready: AtomicBool,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.ready.store(true, Ordering::SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.store(true, Ordering::SeqCst);
    }
}

struct Task {
    future: Pin<Box<dyn Future<Output = ()>>>,
    waker: Arc<TaskWaker>,
}

/// Sleepers by deadline, and waiters by port.
static TIMERS: spin::Mutex<BTreeMap<(u64, u64), Waker>> = spin::Mutex::new(BTreeMap::new());
static PORT_WAITERS: spin::Mutex<Vec<(u32, Waker)>> = spin::Mutex::new(Vec::new());
static NEXT_TIMER_ID: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Wakes the tasks waiting for `port` (called by `events::dispatch`).
pub(crate) fn wake_port(port: u32) {
    let mut w = PORT_WAITERS.lock();
    w.retain(|(p, waker)| {
        if *p == port {
            waker.wake_by_ref();
            false
        } else {
            true
        }
    });
}

/// The executor: spawn tasks, then [`Executor::run`] until all have finished.
#[derive(Default)]
pub struct Executor {
    tasks: Vec<Task>,
}

impl Executor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a task.
    pub fn spawn(&mut self, f: impl Future<Output = ()> + 'static) {
        self.tasks.push(Task {
            future: Box::pin(f),
            waker: Arc::new(TaskWaker {
                ready: AtomicBool::new(true),
            }),
        });
    }

    /// Runs until every task has completed.
    pub fn run(&mut self) {
        loop {
            let mut progressed = false;
            let mut i = 0;
            while i < self.tasks.len() {
                if self.tasks[i].waker.ready.swap(false, Ordering::SeqCst) {
                    progressed = true;
                    let waker = Waker::from(self.tasks[i].waker.clone());
                    let mut cx = Context::from_waker(&waker);
                    if self.tasks[i].future.as_mut().poll(&mut cx).is_ready() {
                        self.tasks.swap_remove(i);
                        continue;
                    }
                }
                i += 1;
            }
            if self.tasks.is_empty() {
                return;
            }
            let now = crate::time::now_ns();
            let next = fire_timers(now);
            if progressed
                || self
                    .tasks
                    .iter()
                    .any(|t| t.waker.ready.load(Ordering::SeqCst))
            {
                crate::events::dispatch();
                continue;
            }
            if let Some(deadline) = next {
                crate::time::set_timer(deadline);
            }
            crate::events::wait_and_dispatch();
        }
    }
}

/// Wakes due sleepers; returns the earliest remaining deadline.
fn fire_timers(now: u64) -> Option<u64> {
    let mut t = TIMERS.lock();
    while let Some((&(d, id), _)) = t.iter().next() {
        if d > now {
            return Some(d);
        }
        if let Some(w) = t.remove(&(d, id)) {
            w.wake();
        }
    }
    None
}

/// Runs one future to completion on the calling vCPU.
pub fn block_on(f: impl Future<Output = ()> + 'static) {
    let mut e = Executor::new();
    e.spawn(f);
    e.run();
}

/// A future that completes at system time `deadline`.
pub struct Sleep {
    deadline: u64,
    registered: Option<(u64, u64)>,
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if crate::time::now_ns() >= self.deadline {
            if let Some(k) = self.registered.take() {
                TIMERS.lock().remove(&k);
            }
            return Poll::Ready(());
        }
        let key = match self.registered {
            Some(k) => k,
            None => (self.deadline, NEXT_TIMER_ID.fetch_add(1, Ordering::Relaxed)),
        };
        self.registered = Some(key);
        TIMERS.lock().insert(key, cx.waker().clone());
        Poll::Pending
    }
}

/// Sleeps for `ns` nanoseconds without blocking other tasks.
pub fn sleep_ns(ns: u64) -> Sleep {
    Sleep {
        deadline: crate::time::now_ns().saturating_add(ns),
        registered: None,
    }
}

/// A future that completes when `port` fires.
pub struct PortEvent {
    port: u32,
}

impl Future for PortEvent {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if crate::events::take_fired(self.port) {
            return Poll::Ready(());
        }
        PORT_WAITERS.lock().push((self.port, cx.waker().clone()));
        Poll::Pending
    }
}

/// Waits for an event on `port`.
pub fn wait_port(port: u32) -> PortEvent {
    PortEvent { port }
}

/// A future that completes when any of `ports` fires.
pub struct AnyPortEvent {
    ports: Vec<u32>,
}

impl Future for AnyPortEvent {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut fired = false;
        for p in &self.ports {
            fired |= crate::events::take_fired(*p);
        }
        if fired {
            return Poll::Ready(());
        }
        let mut w = PORT_WAITERS.lock();
        for p in &self.ports {
            w.push((*p, cx.waker().clone()));
        }
        Poll::Pending
    }
}

/// Waits for an event on any of `ports` (e.g. the rings of a multi-queue device).
pub fn wait_any_port(ports: Vec<u32>) -> AnyPortEvent {
    AnyPortEvent { ports }
}
