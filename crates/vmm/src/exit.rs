//! How a domain ended. The exit statuses and the exit file's format belong to
//! [`rxen_vmm_api::ExitKind`] and [`rxen_vmm_api::ExitRecord`]; this module only maps
//! each ending to its kind.

use std::fmt;

use rxen_vmm_api::{ExitKind, ExitRecord};

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
    /// The kind of ending, as the control protocol and the exit file name it.
    pub fn kind(&self) -> ExitKind {
        match self {
            DomainExit::Poweroff => ExitKind::Poweroff,
            DomainExit::Reboot => ExitKind::Reboot,
            DomainExit::Suspend => ExitKind::Suspend,
            DomainExit::Crash => ExitKind::Crash,
            DomainExit::Watchdog => ExitKind::Watchdog,
            DomainExit::SoftReset => ExitKind::SoftReset,
            DomainExit::TripleFault { .. } => ExitKind::TripleFault,
            DomainExit::Internal(_) => ExitKind::Internal,
            DomainExit::Destroyed => ExitKind::Destroyed,
        }
    }

    /// Exit status of `xen-vmm run` ([`ExitKind::exit_code`], documented in the README).
    pub fn exit_code(&self) -> u8 {
        self.kind().exit_code()
    }

    /// What `xen-vmm` writes to its exit file.
    pub fn record(&self) -> ExitRecord {
        ExitRecord::new(self.kind(), self.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_exit_codes_come_from_the_protocol() {
        let cases = [
            (DomainExit::Poweroff, 0),
            (DomainExit::Internal("x".into()), 1),
            (DomainExit::Reboot, 3),
            (DomainExit::Crash, 4),
            (
                DomainExit::TripleFault {
                    vcpu: 0,
                    registers: String::new(),
                },
                5,
            ),
            (DomainExit::Watchdog, 6),
            (DomainExit::Suspend, 7),
            (DomainExit::SoftReset, 8),
            (DomainExit::Destroyed, 9),
        ];
        for (why, code) in cases {
            assert_eq!(why.exit_code(), code, "{why}");
            let rec = why.record();
            assert_eq!(rec.code, code);
            assert_eq!(rec.kind, why.kind());
            assert_eq!(rec.reason, why.to_string());
        }
    }
}
