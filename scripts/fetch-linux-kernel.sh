#!/usr/bin/env bash
# Unpacks Debian's stock kernel image (the package linux-image-amd64 depends on) into
# DIR (default target/linux-kernel): DIR/boot/vmlinuz-<version>, the modules the
# tests load from their initramfs as DIR/modules/*.ko (xen-blkfront, xen-netfront,
# ext4 and what it depends on), and Debian's static busybox (busybox-static) as
# DIR/busybox for the test's initramfs. Used by the Linux
# guest test (crates/xm/tests/linux_guest.rs) and scripts/setup.sh. Needs apt.
set -euo pipefail
dir=${1:-target/linux-kernel}
mkdir -p "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ ! -x "$dir/busybox" ]; then
    (cd "$work" && apt-get download busybox-static >/dev/null) || true
    if ls "$work"/busybox-static_*.deb >/dev/null 2>&1; then
        dpkg-deb -x "$work"/busybox-static_*.deb "$work/bb"
        cp "$work/bb/bin/busybox" "$dir/busybox"
    fi
fi
# Modules the tests' initramfs loads (Debian builds them as modules), in load order.
modules="drivers/block/xen-blkfront.ko drivers/net/xen-netfront.ko lib/crc16.ko
crypto/crc32c_generic.ko fs/mbcache.ko fs/jbd2/jbd2.ko fs/ext4/ext4.ko"
if ls "$dir"/boot/vmlinuz-* >/dev/null 2>&1 && [ -f "$dir/modules/ext4.ko" ]; then
    exit 0
fi
# linux-image-amd64 is a metapackage: the image is the package it depends on.
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null \
    | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$pkg" ]; then
    apt-get update -qq >/dev/null 2>&1 || true
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null \
        | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
if [ -z "$pkg" ]; then
    echo "fetch-linux-kernel: apt knows no linux-image-amd64" >&2
    exit 1
fi
# Its own directory: busybox-static's .deb may be in $work already.
mkdir -p "$work/kernel"
(cd "$work/kernel" && apt-get download "$pkg" >/dev/null)
deb=$(ls "$work"/kernel/*.deb)
patterns=('./boot/vmlinuz-*')
for m in $modules; do
    patterns+=("./lib/modules/*/kernel/$m")
done
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work" --wildcards "${patterns[@]}"
mkdir -p "$dir/boot" "$dir/modules"
mv -f "$work"/boot/vmlinuz-* "$dir/boot/"
for m in $modules; do
    # Debian 12 ships them uncompressed; busybox's insmod takes them as they are.
    cp "$work"/lib/modules/*/kernel/"$m" "$dir/modules/"
done
ls "$dir"/boot/vmlinuz-*
