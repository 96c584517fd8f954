//! rxen-probes: measurement programs for this host's KVM (the `mmu_probe` and
//! `trap_probe` binaries), whose findings are recorded in `docs/architecture.md`.
//!
//! This library only holds what the probes share: a one-vCPU VM with a CPL-3 guest on
//! hand-built page tables ([`vm`]). It is not product code: nothing in rxen may depend
//! on it, and it must not grow VMM logic.

pub mod vm;
