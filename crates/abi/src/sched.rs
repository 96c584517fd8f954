//! `sched_op` (xen/include/public/sched.h).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub const SCHEDOP_YIELD: u64 = 0;
pub const SCHEDOP_BLOCK: u64 = 1;
pub const SCHEDOP_SHUTDOWN: u64 = 2;
pub const SCHEDOP_POLL: u64 = 3;
pub const SCHEDOP_REMOTE_SHUTDOWN: u64 = 4;
pub const SCHEDOP_SHUTDOWN_CODE: u64 = 5;
pub const SCHEDOP_WATCHDOG: u64 = 6;
pub const SCHEDOP_PIN_OVERRIDE: u64 = 7;

/// `SHUTDOWN_*` reasons.
pub const SHUTDOWN_POWEROFF: u32 = 0;
pub const SHUTDOWN_REBOOT: u32 = 1;
pub const SHUTDOWN_SUSPEND: u32 = 2;
pub const SHUTDOWN_CRASH: u32 = 3;
pub const SHUTDOWN_WATCHDOG: u32 = 4;
pub const SHUTDOWN_SOFT_RESET: u32 = 5;

/// Most ports one `SCHEDOP_poll` may name (Xen's limit).
pub const POLL_MAX_PORTS: u32 = 128;

/// `struct sched_shutdown`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SchedShutdown {
    pub reason: u32,
}

/// `struct sched_poll`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SchedPoll {
    /// Guest pointer to an array of `evtchn_port_t`.
    pub ports: u64,
    pub nr_ports: u32,
    pub pad: u32,
    /// Absolute system time (ns) to give up at; 0 means never.
    pub timeout: u64,
}

/// `struct sched_remote_shutdown`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SchedRemoteShutdown {
    pub domain_id: u16,
    pub pad: u16,
    pub reason: u32,
}

/// `struct sched_watchdog`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SchedWatchdog {
    pub id: u32,
    pub timeout: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout_check::assert_layout;

    #[test]
    fn layouts() {
        assert_layout!(SchedShutdown, size = 4, reason = 0);
        assert_layout!(SchedPoll, size = 24, ports = 0, nr_ports = 8, timeout = 16);
        assert_layout!(SchedRemoteShutdown, size = 8, domain_id = 0, reason = 4);
        assert_layout!(SchedWatchdog, size = 8, id = 0, timeout = 4);
    }
}
