//! Save and restore of a running domain in Xen's migration stream v2
//! (`rxen_migration`; `docs/migration.md`): [`save`] pauses the domain, has every
//! vCPU thread capture its processor state ([`cpu`]) and writes memory, vCPUs and
//! the VMM's own state ([`document::VmmState`]) to any `Write`; [`restore`] builds a
//! new domain from an image instead of a kernel, which resumes where it was saved.
//!
//! A save is transparent (the guest does not take part): the domain is paused, the
//! caller quiesces the device backends ([`devices::DeviceStates`]: every block
//! request taken is answered first, rings unmapped, channel ends closed) and the
//! domain resumes as is after a restore, its backends serving the same rings from
//! the saved indices. A domain whose device backends were not quiesced is refused
//! with a typed error.
//!
//! Live migration ([`live`], [`transport`]) writes the same image over a TCP
//! connection to a relocation server, memory in pre-copy rounds driven by the dirty
//! log ([`crate::dirty`]) while the guest runs; the device backends are quiesced
//! at its stop-and-copy as for a save ([`devices::QuiesceBackends`]). The restored
//! domain's backends write each device's frontend directory from its saved state
//! before they follow it (`xenbus_backend::SavedDevice`), so that a migrated-in
//! domain comes back connected though its toolstack never saw the image.

pub mod cpu;
pub mod devices;
pub mod document;
pub mod live;
pub mod restore;
pub mod save;
pub mod transport;
mod vcpu_records;

pub use devices::DeviceStates;
pub use live::{LiveOptions, LiveReport};
pub use restore::{restore, restore_file, RestoreError, RestoreOptions, Restored};
pub use save::{save, save_with_devices, SaveError, SaveReport};
pub use transport::{migrate, migrate_suspending, migrate_with_progress, MigrateError};
