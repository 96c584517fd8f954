#!/usr/bin/env bash
# All tests: unit, property and KVM integration tests of the workspace (the guest
# workspace is built by crates/guest-images and exercised by the integration tests),
# then a quick run of the benchmark harness as a smoke test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if [ ! -r /dev/kvm ]; then
    echo "test: WARNING: /dev/kvm missing: every KVM test will report SKIPPED" >&2
fi
cargo build --workspace
cargo test --workspace
if [ -r /dev/kvm ]; then
    # The benchmark smoke run starts xenstored, xend, xm and xen-vmm from target/release.
    cargo build --release --workspace --bins
    ./target/release/rxen-bench --quick
fi
