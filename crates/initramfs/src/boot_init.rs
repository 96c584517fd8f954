//! The `/init` of a general-purpose initramfs (`rxen-mkinitramfs`): what a user boots
//! Debian's kernel with when there is no distribution initrd. It loads the modules
//! given when the archive was made (in that order), reads `root=`, `ro`, `rxen.ip=`
//! and `rxen.gw=` from the kernel command line, configures eth0, mounts the root
//! device and `switch_root`s to its `/sbin/init`, or gives a shell on the console.

/// Printed before the shell starts (tests and users look for it).
pub const SHELL_MARKER: &str = "rxen-initramfs: no root= (or no /sbin/init on it): shell";
/// Printed when the root device is mounted, just before `switch_root`.
pub const ROOT_MARKER: &str = "rxen-initramfs: switching to the root file system";

/// The `/init` script loading `modules` (file names under `/lib/modules-rxen/`).
pub fn boot_init(modules: &[String]) -> String {
    let mut s = String::from(
        "#!/bin/sh\n\
         # rxen-mkinitramfs's /init (busybox)\n\
         /bin/busybox --install -s /bin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev 2>/dev/null\n",
    );
    for m in modules {
        s.push_str(&format!(
            "insmod /lib/modules-rxen/{m} || echo \"rxen-initramfs: insmod {m} failed\"\n"
        ));
    }
    s.push_str(
        r#"ROOT=; MODE=rw; IP=; GW=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=*) ROOT="${arg#root=}" ;;
        ro) MODE=ro ;;
        rw) MODE=rw ;;
        rxen.ip=*) IP="${arg#rxen.ip=}" ;;
        rxen.gw=*) GW="${arg#rxen.gw=}" ;;
    esac
done
# Waits up to 10 s for a path (front-ends probe asynchronously).
wait_for() {
    i=0
    while [ ! -e "$1" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
    [ -e "$1" ]
}
ip link set lo up
if [ -n "$IP" ]; then
    if wait_for /sys/class/net/eth0; then
        ip link set eth0 up && ip addr add "$IP" dev eth0 && echo "rxen-initramfs: eth0 $IP"
        [ -n "$GW" ] && ip route add default via "$GW"
    else
        echo "rxen-initramfs: no eth0 (is xen-netfront.ko in the archive?)"
    fi
fi
case "$ROOT" in
    "") ;;
    UUID=*|LABEL=*) echo "rxen-initramfs: $ROOT: give the device (root=/dev/xvda1)"; ROOT= ;;
esac
if [ -n "$ROOT" ]; then
    if wait_for "$ROOT" && mount -o "$MODE" "$ROOT" /mnt; then
        if [ -x /mnt/sbin/init ] || [ -L /mnt/sbin/init ]; then
            echo "ROOT_MARKER $ROOT ($MODE)"
            umount /sys /proc
            [ -d /mnt/dev ] && mount --move /dev /mnt/dev
            exec switch_root /mnt /sbin/init
        fi
        echo "rxen-initramfs: $ROOT has no /sbin/init"
    else
        echo "rxen-initramfs: cannot mount $ROOT (are xen-blkfront.ko and the file system's modules in the archive?)"
    fi
fi
echo "SHELL_MARKER"
exec setsid cttyhack /bin/sh
"#,
    );
    s.replace("ROOT_MARKER", ROOT_MARKER)
        .replace("SHELL_MARKER", SHELL_MARKER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_load_in_the_order_given_before_the_command_line_is_read() {
        let s = boot_init(&["crc16.ko".into(), "ext4.ko".into()]);
        let crc = s.find("insmod /lib/modules-rxen/crc16.ko").unwrap();
        let ext4 = s.find("insmod /lib/modules-rxen/ext4.ko").unwrap();
        let cmdline = s.find("/proc/cmdline").unwrap();
        assert!(crc < ext4 && ext4 < cmdline);
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.contains(ROOT_MARKER) && s.contains(SHELL_MARKER));
        assert!(s.trim_end().ends_with("exec setsid cttyhack /bin/sh"));
    }
}
