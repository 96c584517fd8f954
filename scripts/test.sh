#!/usr/bin/env bash
# All tests: the gates (format, lints of both workspaces, the fuzz targets build),
# unit, property and KVM integration tests of the workspace (the guest workspace is
# built by crates/guest-images and exercised by the integration tests), then a quick
# run of the benchmark harness as a smoke test.
#
# RXEN_REQUIRE_KVM=1 turns every "SKIPPED: /dev/kvm is not usable" into a failure;
# .ci/run sets it wherever /dev/kvm is usable.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if [ ! -r /dev/kvm ]; then
    echo "test: WARNING: /dev/kvm missing: every KVM test will report SKIPPED" >&2
fi
echo "== gates: format"
cargo fmt --all -- --check
(cd guest && cargo fmt --all -- --check)
echo "== gates: lints (host workspace, guest workspace)"
cargo clippy --workspace --all-targets -- -D warnings
(cd guest && CARGO_TARGET_DIR=../target/guest-clippy cargo clippy --workspace -- -D warnings)
echo "== gates: the fuzz targets build (run them by hand with cargo fuzz)"
CARGO_TARGET_DIR=target/fuzz-build cargo build --manifest-path fuzz/Cargo.toml --bins
echo "== tests"
cargo build --workspace
cargo test --workspace
if [ -r /dev/kvm ]; then
    # The benchmark smoke run starts xenstored, xend, xm and xen-vmm from target/release.
    cargo build --release --workspace --bins
    ./target/release/rxen-bench --quick
fi
