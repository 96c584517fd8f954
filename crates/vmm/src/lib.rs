//! rxen's per-domain virtual machine monitor.
//!
//! This crate owns one domain's execution on KVM: guest RAM ([`memory`]), the domain
//! builder ([`kernel_file`], [`bzimage`], [`elf`], [`builder`]), vCPUs and their threads ([`vcpu`]), Xen's hypercall
//! ABI ([`hypercall`]), event channels ([`evtchn`], [`shared_info`]), grant tables
//! ([`grant`]), the block backend ([`blkback`]), time
//! ([`clock`], [`timers`]), the emergency console ([`console`]) and the control socket
//! ([`control`], speaking `rxen_vmm_api`'s protocol) and counters of where the time goes
//! ([`stats`]). [`pv`] computes Xen's start of day
//! for unmodified PV kernels (notes, checks, layout); the builder does not use it yet.
//!
//! It must not know about other domains or the toolstack's policies: those belong to
//! `xend` and `xenstored`; its only xenstore use is the backend half of xenbus for the
//! domain's own devices ([`blkback`]). Everything a guest hands it is hostile input and
//! is rejected with a Xen error code, never a panic.

pub mod blkback;
pub mod builder;
pub mod bzimage;
pub mod clock;
pub mod console;
pub mod control;
pub mod dirty;
pub mod domain;
pub mod elf;
pub mod evtchn;
pub mod exit;
pub mod grant;
pub mod guest_view;
pub mod hypercall;
pub mod kernel_file;
pub mod memory;
pub mod netback;
pub mod pit;
pub mod pv;
pub mod rawimage;
pub mod shared_info;
pub mod snapshot;
pub mod sring;
pub mod stats;
pub mod timers;
pub mod traps;
pub mod tss;
pub mod vcpu;
pub mod xenbus_backend;
pub mod xsrelay;

pub use domain::{BootKind, Domain, DomainConfig, DomainError, DomainShared};
pub use exit::DomainExit;
