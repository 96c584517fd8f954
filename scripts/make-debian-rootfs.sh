#!/usr/bin/env bash
# Makes IMG (default target/debian-rootfs/bookworm.img): an ext4 image of a minimal
# Debian bookworm userland (debootstrap --variant=minbase plus systemd-sysv, udev,
# iproute2, ifupdown, kmod, e2fsprogs) for booting Debian's stock kernel as an rxen PV
# guest with systemd as PID 1 (docs/linux-guest.md "A Debian userland";
# crates/xm/tests/linux_guest.rs linux_boots_debian_userland_with_systemd).
#
# The root file system: root without a password, logged in automatically on hvc0
# (serial-getty@hvc0), hostname rxen-debian, fstab `/dev/xvda / ext4`, eth0 by DHCP
# (ifupdown, allow-hotplug), and the kernel's modules (fs, crypto, lib, net, the Xen
# drivers) unpacked from the package of the kernel in target/linux-kernel
# (scripts/fetch-linux-kernel.sh), so udev and systemd find what they load.
#
# Needs root (debootstrap, chroot) and network to a Debian mirror on the first run.
# Idempotent: the debootstrapped packages are cached as a tarball
# (target/debian-rootfs/bookworm-minbase.tar.gz) and the finished tree as
# target/debian-rootfs/tree; a second run only remakes the image from the tree.
# REBUILD=1 remakes the tree from the tarball. MIRROR overrides the mirror.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache="$root/target/debian-rootfs"
img=${1:-$cache/bookworm.img}
size=${SIZE:-1G}
mirror=${MIRROR:-http://deb.debian.org/debian}
suite=bookworm
tarball="$cache/$suite-minbase.tar.gz"
tree="$cache/tree"
kernel_dir="$root/target/linux-kernel"
include=systemd-sysv,udev,iproute2,ifupdown,isc-dhcp-client,kmod,e2fsprogs,procps
mkdir -p "$cache"

if [ "$(id -u)" -ne 0 ]; then
    echo "make-debian-rootfs: needs root (debootstrap and chroot)" >&2
    exit 1
fi
command -v debootstrap >/dev/null || {
    echo "make-debian-rootfs: apt-get install debootstrap" >&2
    exit 1
}
command -v mke2fs >/dev/null || {
    echo "make-debian-rootfs: apt-get install e2fsprogs" >&2
    exit 1
}

kernel=$(ls "$kernel_dir"/boot/vmlinuz-* 2>/dev/null | head -n1 || true)
if [ -z "$kernel" ]; then
    "$root/scripts/fetch-linux-kernel.sh" "$kernel_dir" >/dev/null
    kernel=$(ls "$kernel_dir"/boot/vmlinuz-* | head -n1)
fi
kver=${kernel##*/vmlinuz-}

if [ "${REBUILD:-0}" = 1 ] || [ ! -f "$cache/tree.done" ]; then
    if [ ! -f "$tarball" ]; then
        echo "make-debian-rootfs: downloading $suite (minbase + $include)" >&2
        scratch=$(mktemp -d "$cache/dl.XXXXXX")
        debootstrap --variant=minbase --include="$include" \
            --make-tarball="$tarball.part" "$suite" "$scratch" "$mirror" >&2
        rm -rf "$scratch"
        mv "$tarball.part" "$tarball"
    fi
    rm -rf "$tree" "$cache/tree.done"
    mkdir -p "$tree"
    echo "make-debian-rootfs: installing $suite into $tree" >&2
    debootstrap --variant=minbase --include="$include" \
        --unpack-tarball="$tarball" "$suite" "$tree" "$mirror" >&2

    # The kernel's modules, from the package of the kernel the tests boot.
    if [ ! -d "$tree/lib/modules/$kver" ]; then
        work=$(mktemp -d)
        (cd "$work" && apt-get download "linux-image-$kver" >/dev/null)
        dpkg-deb --fsys-tarfile "$work"/linux-image-*.deb | tar -x -C "$work" \
            --wildcards "./lib/modules/$kver/modules.*" \
            "./lib/modules/$kver/kernel/fs" "./lib/modules/$kver/kernel/lib" \
            "./lib/modules/$kver/kernel/crypto" "./lib/modules/$kver/kernel/net" \
            "./lib/modules/$kver/kernel/arch" "./lib/modules/$kver/kernel/drivers/block" \
            "./lib/modules/$kver/kernel/drivers/xen" \
            "./lib/modules/$kver/kernel/drivers/net/xen-netfront.ko" \
            "./lib/modules/$kver/kernel/drivers/char"
        mkdir -p "$tree/lib/modules"
        mv "$work/lib/modules/$kver" "$tree/lib/modules/"
        rm -rf "$work"
        chroot "$tree" depmod -a "$kver"
    fi

    # Root logs in without a password; hvc0 logs root in by itself.
    chroot "$tree" passwd -d root >/dev/null
    echo rxen-debian >"$tree/etc/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\trxen-debian\n' >"$tree/etc/hosts"
    printf '/dev/xvda / ext4 defaults 0 1\n' >"$tree/etc/fstab"
    mkdir -p "$tree/etc/systemd/system/serial-getty@hvc0.service.d"
    cat >"$tree/etc/systemd/system/serial-getty@hvc0.service.d/autologin.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200,38400,9600 %I $TERM
EOF
    mkdir -p "$tree/etc/network/interfaces.d"
    cat >"$tree/etc/network/interfaces" <<'EOF'
auto lo
iface lo inet loopback

allow-hotplug eth0
iface eth0 inet dhcp
EOF
    touch "$cache/tree.done"
fi

# The image: an ext4 file system holding the tree (mke2fs -d: no loop mount).
rm -f "$img.part"
mke2fs -q -F -t ext4 -L rxen-debian -d "$tree" "$img.part" "$size"
mv "$img.part" "$img"
echo "$img"
