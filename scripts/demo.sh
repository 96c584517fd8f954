#!/usr/bin/env bash
# The main job: build everything and boot the embedded default guest in a domain.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --workspace
exec ./target/release/xen-vmm run --name demo --memory 32 --cmdline "demo=1"
