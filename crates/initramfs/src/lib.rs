//! rxen-initramfs: the initramfs rxen's Linux-guest tests and benchmarks boot, as a
//! newc (`070701`) cpio archive the kernel unpacks: Debian's static busybox as
//! `/bin/busybox` with `/bin/sh`, `/dev/console`, `/sbin/poweroff`, an `/init` script
//! and extra files.
//!
//! Its callers are rxen's Linux tests (`crates/xm/tests`), benchmarks (`bench`) and
//! the `rxen-mkinitramfs` tool (a general `/init`: [`boot_init`]), which users boot
//! Debian's kernel with. The library only writes archives from bytes it is given;
//! finding the kernel, busybox and modules belongs to its callers.

mod boot_init;
pub use boot_init::{boot_init, ROOT_MARKER, SHELL_MARKER};

/// The modules a root file system on an rxen disk needs with Debian's kernel, in load
/// order (Debian builds xen-blkfront and ext4, which also mounts ext2, as modules).
pub const EXT4_ROOT_MODULES: &[&str] = &[
    "xen-blkfront.ko",
    "crc16.ko",
    "crc32c_generic.ko",
    "mbcache.ko",
    "jbd2.ko",
    "ext4.ko",
];

/// Directories every archive has; extra files must go in one of them.
pub const DIRS: [&str; 9] = [
    "bin",
    "sbin",
    "dev",
    "proc",
    "sys",
    "mnt",
    "lib",
    "lib/modules-rxen",
    "www",
];

const DIR: u32 = 0o040755;
const FILE: u32 = 0o100755;
const LINK: u32 = 0o120777;
const CHR: u32 = 0o020600;

/// Appends one entry of a newc cpio archive to `out` (sizes above 4 GiB saturate:
/// nothing here is that large).
pub fn cpio_entry(
    out: &mut Vec<u8>,
    ino: u32,
    name: &str,
    mode: u32,
    rdev: (u32, u32),
    data: &[u8],
) {
    let size = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let name_len = u32::try_from(name.len() + 1).unwrap_or(u32::MAX);
    let fields = [
        ino, mode, 0, 0, 1, 0, size, 0, 0, rdev.0, rdev.1, name_len, 0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// An initramfs: `busybox` (the static binary's bytes) as `/bin/busybox` with `/bin/sh`,
/// the directories of [`DIRS`], `/dev/console`, `/sbin/poweroff` (what Linux runs when
/// the toolstack asks for a poweroff through `control/shutdown`: busybox's
/// `poweroff -f`, as a test's `/init` is no init daemon to signal), `/init` with
/// `init` as its script, and `files` (path in the archive, contents; executable).
pub fn busybox_initramfs(busybox: &[u8], init: &str, files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ino = 0;
    let mut next = || {
        ino += 1;
        ino
    };
    for d in DIRS {
        cpio_entry(&mut out, next(), d, DIR, (0, 0), &[]);
    }
    cpio_entry(&mut out, next(), "dev/console", CHR, (5, 1), &[]);
    cpio_entry(&mut out, next(), "bin/busybox", FILE, (0, 0), busybox);
    cpio_entry(&mut out, next(), "bin/sh", LINK, (0, 0), b"busybox");
    cpio_entry(
        &mut out,
        next(),
        "sbin/poweroff",
        FILE,
        (0, 0),
        b"#!/bin/sh\nexec /bin/busybox poweroff -f\n",
    );
    cpio_entry(&mut out, next(), "init", FILE, (0, 0), init.as_bytes());
    for (path, data) in files {
        cpio_entry(&mut out, next(), path, FILE, (0, 0), data);
    }
    cpio_entry(&mut out, next(), "TRAILER!!!", 0, (0, 0), &[]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entries of a newc archive: (name, mode, data).
    fn entries(mut a: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let field = |h: &[u8], i: usize| {
            u32::from_str_radix(std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                .unwrap()
        };
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            assert_eq!(&a[..6], b"070701", "at {offset}");
            let (mode, size, name_len) = (field(a, 1), field(a, 6), field(a, 11));
            let name_end = 110 + name_len as usize;
            let name = String::from_utf8(a[110..name_end - 1].to_vec()).unwrap();
            let data_at = name_end.next_multiple_of(4);
            let data = a[data_at..data_at + size as usize].to_vec();
            let next = (data_at + size as usize).next_multiple_of(4);
            offset += next;
            a = &a[next..];
            if name == "TRAILER!!!" {
                assert!(a.is_empty());
                return out;
            }
            out.push((name, mode, data));
        }
    }

    #[test]
    fn the_archive_holds_busybox_init_and_the_extra_files() {
        let a = busybox_initramfs(b"BB", "#!/bin/sh\necho hi\n", &[("bin/probe", vec![7; 5])]);
        let e = entries(&a);
        let get = |n: &str| e.iter().find(|(name, ..)| name == n).cloned().unwrap();
        assert_eq!(get("bin/busybox").2, b"BB");
        assert_eq!(get("bin/sh"), ("bin/sh".into(), LINK, b"busybox".to_vec()));
        assert_eq!(get("init").2, b"#!/bin/sh\necho hi\n");
        assert_eq!(get("bin/probe"), ("bin/probe".into(), FILE, vec![7; 5]));
        assert_eq!(get("dev/console").1, CHR);
        assert_eq!(get("mnt").1, DIR);
    }
}
