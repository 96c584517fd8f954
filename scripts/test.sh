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
# A Debian bookworm userland (systemd as PID 1) for the Debian test
# (linux_boots_debian_userland_with_systemd): as root only (debootstrap, chroot);
# ~2 min and ~830 MB under target/debian-rootfs the first time, seconds afterwards.
if [ "$(id -u)" -eq 0 ]; then
    ./scripts/make-debian-rootfs.sh >/dev/null 2>&1 \
        || echo "test: WARNING: the Debian userland image could not be made; its test will skip" >&2
else
    echo "test: not root: no Debian userland image (sudo scripts/make-debian-rootfs.sh); its test will skip" >&2
fi
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
