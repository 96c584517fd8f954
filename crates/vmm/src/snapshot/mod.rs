//! Save and restore of a running domain in Xen's migration stream v2
//! (`rxen_migration`; `docs/migration.md`): [`save`] pauses the domain, has every
//! vCPU thread capture its processor state ([`cpu`]) and writes memory, vCPUs and
//! the VMM's own state ([`document::VmmState`]) to any `Write`; [`restore`] builds a
//! new domain from an image instead of a kernel, which resumes where it was saved.
//!
//! For this milestone a save is transparent (the guest does not take part): an SDK
//! guest on rxen's own layout (`BootKind::Rxen`) is saved paused and resumes as is.
//! Xen PV kernels (direct-paging MMU state) and domains with disks or vifs are
//! refused with a typed error.
//!
//! Live migration ([`live`], [`transport`]) writes the same image over a TCP
//! connection to a relocation server, memory in pre-copy rounds driven by the dirty
//! log ([`crate::dirty`]) while the guest runs.

pub mod cpu;
pub mod document;
pub mod live;
pub mod restore;
pub mod save;
pub mod transport;
mod vcpu_records;

pub use live::{LiveOptions, LiveReport};
pub use restore::{restore, restore_file, RestoreError, RestoreOptions};
pub use save::{save, SaveError, SaveReport};
pub use transport::{migrate, migrate_with_progress, MigrateError};
