//! How a domain ended, and the exit statuses `xen-vmm` maps them to.

use std::fmt;

/// Why a domain stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainExit {
    /// `SHUTDOWN_poweroff`.
    Poweroff,
    /// `SHUTDOWN_reboot`.
    Reboot,
    /// `SHUTDOWN_suspend` (no toolstack to save it yet).
    Suspend,
    /// `SHUTDOWN_crash`, reported by the guest.
    Crash,
    /// The guest's watchdog expired (`SCHEDOP_watchdog`) or it asked `SHUTDOWN_watchdog`.
    Watchdog,
    /// `SHUTDOWN_soft_reset`.
    SoftReset,
    /// A vCPU faulted with no way to handle it (`KVM_EXIT_SHUTDOWN`).
    TripleFault { vcpu: u32, registers: String },
    /// The VMM itself failed.
    Internal(String),
    /// Destroyed from outside (signal or API).
    Destroyed,
}

impl DomainExit {
    /// Exit status of `xen-vmm run` (documented in `docs/guest-abi.md`).
    pub fn exit_code(&self) -> i32 {
        match self {
            DomainExit::Poweroff => 0,
            DomainExit::Internal(_) => 1,
            DomainExit::Reboot => 3,
            DomainExit::Crash => 4,
            DomainExit::TripleFault { .. } => 5,
            DomainExit::Watchdog => 6,
            DomainExit::Suspend => 7,
            DomainExit::SoftReset => 8,
            DomainExit::Destroyed => 9,
        }
    }

    /// Short machine-readable name: poweroff, reboot, suspend, crash, watchdog,
    /// soft_reset, triple_fault, internal, destroyed.
    pub fn kind(&self) -> &'static str {
        match self {
            DomainExit::Poweroff => "poweroff",
            DomainExit::Reboot => "reboot",
            DomainExit::Suspend => "suspend",
            DomainExit::Crash => "crash",
            DomainExit::Watchdog => "watchdog",
            DomainExit::SoftReset => "soft_reset",
            DomainExit::TripleFault { .. } => "triple_fault",
            DomainExit::Internal(_) => "internal",
            DomainExit::Destroyed => "destroyed",
        }
    }

    /// From a Xen `SHUTDOWN_*` reason (validated by the decoder).
    pub fn from_reason(reason: u32) -> Self {
        use rxen_abi::sched::*;
        match reason {
            SHUTDOWN_POWEROFF => DomainExit::Poweroff,
            SHUTDOWN_REBOOT => DomainExit::Reboot,
            SHUTDOWN_SUSPEND => DomainExit::Suspend,
            SHUTDOWN_CRASH => DomainExit::Crash,
            SHUTDOWN_WATCHDOG => DomainExit::Watchdog,
            _ => DomainExit::SoftReset,
        }
    }
}

impl fmt::Display for DomainExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainExit::Poweroff => write!(f, "guest powered off"),
            DomainExit::Reboot => write!(f, "guest asked to reboot"),
            DomainExit::Suspend => write!(f, "guest suspended itself"),
            DomainExit::Crash => write!(f, "guest crashed (SHUTDOWN_crash)"),
            DomainExit::Watchdog => write!(f, "guest watchdog expired"),
            DomainExit::SoftReset => write!(f, "guest asked for a soft reset"),
            DomainExit::TripleFault { vcpu, .. } => {
                write!(f, "vCPU {vcpu} triple-faulted (unhandled guest exception)")
            }
            DomainExit::Internal(m) => write!(f, "VMM error: {m}"),
            DomainExit::Destroyed => write!(f, "domain destroyed"),
        }
    }
}
