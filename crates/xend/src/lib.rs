//! xend, rxen's control daemon.
//!
//! It owns the control plane: the HTTP API ([`api`]), the registry of domains and
//! their lifecycle ([`state`]), the SQLite store of managed configs and running
//! domains ([`db`]), starting and re-adopting `xen-vmm` processes ([`vmm`]) and the
//! domains' xenstore entries ([`xs`], with the disks' xenbus nodes of [`vbd`]). It must not run guest code or touch guest
//! memory: that is the VMM's job, in its own process per domain.

pub mod api;
pub mod db;
pub mod error;
pub mod process;
pub mod relocation;
pub mod state;
pub mod vbd;
pub mod vif;
pub mod vmm;
pub mod xenstored;
pub mod xs;
