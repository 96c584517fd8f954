//! mmu_probe: how this host's KVM shadow MMU sees page-table changes (issue 8).
//!
//! Runs a small CPL-3 guest (a command loop, `guest.s`) on hand-built page tables and
//! asks, with measurements: when the VMM rewrites a page-table entry through its memfd
//! mapping, when does the guest see it, and what forces KVM to resync; what guest
//! writes to a writable alias of its own page table cost; what the resync costs.
//! Findings are recorded in `docs/architecture.md` ("Probe: how this host's KVM sees
//! page-table changes").
//!
//! Run (needs /dev/kvm):
//!   cargo run --release -p rxen-probes --bin mmu_probe [-- --reps N]
//! Every result is one line starting with `case`/`cost`; exit status 0 if the probe
//! ran, whatever the answers are.

// A probe, not a daemon: it runs against its own VM with fixed, valid inputs, and an
// unexpected failure should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cases;
mod resync;
mod vm;

fn main() {
    let reps = std::env::args()
        .skip_while(|a| a != "--reps")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(5usize);
    if let Err(e) = cases::run_all(reps) {
        eprintln!("mmu_probe failed: {e}");
        std::process::exit(1);
    }
}
