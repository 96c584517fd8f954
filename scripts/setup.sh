#!/usr/bin/env bash
# Installs what building rxen needs on a fresh Debian machine: a C toolchain (for
# -sys crates and linking) and cargo if the machine has none. Idempotent.
set -euo pipefail
need=()
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v cargo >/dev/null 2>&1 || need+=(cargo rustc)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
if [ ! -e /dev/kvm ]; then
    echo "setup: WARNING: /dev/kvm is missing; domains cannot run here (KVM tests will be skipped)" >&2
fi
