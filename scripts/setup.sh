#!/usr/bin/env bash
# Installs what building and testing rxen needs on a fresh Debian machine: a C
# toolchain, cargo if the machine has none, and Xen's xenstore clients. Idempotent.
set -euo pipefail
need=()
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v cargo >/dev/null 2>&1 || need+=(cargo rustc)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
# Xen's own xenstore clients and test program, run against our xenstored by the tests.
command -v xenstore-read >/dev/null 2>&1 || need+=(xenstore-utils)
[ -x /usr/lib/xen-4.17/bin/test-xenstore ] || need+=(xen-utils-4.17)
# Debian's PV-GRUB: an unmodified Xen PV guest the tests parse (and will boot).
[ -f /usr/lib/grub-xen/grub-x86_64-xen.bin ] || need+=(grub-xen-host)
# The block device tests: LVM volumes on loop devices (lvm2, util-linux's losetup)
# and an ext2 image made from a directory (e2fsprogs' mke2fs -d).
command -v lvcreate >/dev/null 2>&1 || need+=(lvm2)
command -v losetup >/dev/null 2>&1 || need+=(util-linux)
command -v mke2fs >/dev/null 2>&1 || need+=(e2fsprogs)
# The network tests: a namespace, a bridge and veth pairs (iproute2's ip), and curl
# from the namespace to the httpd guest.
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v curl >/dev/null 2>&1 || need+=(curl)
# debootstrap builds the Debian userland image the systemd test boots.
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
# promtool checks the exposition of xend's /metrics in the tests.
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# The gates of scripts/test.sh need rustfmt and clippy.
if command -v rustup >/dev/null 2>&1; then
    for c in rustfmt clippy; do
        rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
    done
fi
# Debian's stock kernel for the Linux guest test (crates/xm/tests/linux_guest.rs).
"$(dirname "$0")/fetch-linux-kernel.sh" "$(dirname "$0")/../target/linux-kernel" >/dev/null \
    || echo "setup: WARNING: Debian's kernel could not be fetched; the Linux guest test will skip" >&2
if [ ! -e /dev/kvm ]; then
    echo "setup: WARNING: /dev/kvm is missing; domains cannot run here (KVM tests will be skipped)" >&2
fi
