//! A real Debian userland under rxen: `linux_debian_boot_to_login_s`, from the xend
//! create request to systemd's autologin prompt (`root@rxen-debian:~#`) on hvc0,
//! against rxen's default guest from create to its first console output, both in
//! this run.
//!
//! The domain is the one `linux_boots_debian_userland_with_systemd`
//! (`crates/xm/tests/linux_guest.rs`) boots: Debian's kernel (as `linux_bench` finds
//! it), an initramfs of `rxen_initramfs::boot_init` with the disk modules (what
//! `rxen-mkinitramfs` writes), bookworm's ext4 image (`RXEN_DEBIAN_ROOTFS`, else
//! `target/debian-rootfs/bookworm.img`, made as root by
//! `scripts/make-debian-rootfs.sh`) as xvda through a sparse copy, `root = "/dev/xvda
//! ro"`, 2 vCPUs, 512 MiB. Without the image (or kernel, busybox, modules) the figure
//! is skipped with a message. One boot: after the prompt the guest is shut down
//! through systemd and its VMM's counters are printed on stderr.

use std::path::{Path, PathBuf};

use crate::linux_bench::{
    default_guest_first_output_s, inputs, print_stats, run_linux, AfterMarker,
};
use crate::xend_bench::{start, Daemons};
use crate::Figure;

const NAME: &str = "linux_debian_boot_to_login_s";

/// What systemd's autologin on hvc0 leaves: root's bash prompt.
const PROMPT: &str = "root@rxen-debian:~#";

/// The modules the root disk needs, in load order.
const DISK_MODULES: &[&str] = rxen_initramfs::EXT4_ROOT_MODULES;

/// Where `scripts/make-debian-rootfs.sh` leaves its image.
const IMAGE: &str = "target/debian-rootfs/bookworm.img";

fn image() -> Result<PathBuf, String> {
    let image = std::env::var_os("RXEN_DEBIAN_ROOTFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(IMAGE));
    if image.is_file() {
        Ok(image)
    } else {
        Err(format!(
            "no Debian root file system at {} (make it, as root, with scripts/make-debian-rootfs.sh, or set RXEN_DEBIAN_ROOTFS)",
            image.display()
        ))
    }
}

/// The disk modules (file name, bytes) from `RXEN_LINUX_MODULES`, else the kernel
/// package's cache (`modules/` next to `boot/`).
fn disk_modules(kernel: &Path) -> Result<Vec<(String, Vec<u8>)>, String> {
    let dir = std::env::var_os("RXEN_LINUX_MODULES")
        .map(PathBuf::from)
        .or_else(|| {
            kernel
                .parent()
                .and_then(|b| b.parent())
                .map(|d| d.join("modules"))
        })
        .ok_or("no directory of kernel modules (set RXEN_LINUX_MODULES)")?;
    DISK_MODULES
        .iter()
        .map(|m| {
            let path = dir.join(m);
            std::fs::read(&path)
                .map(|data| (m.to_string(), data))
                .map_err(|e| {
                    format!(
                        "no {} ({e}; scripts/fetch-linux-kernel.sh, or set RXEN_LINUX_MODULES)",
                        path.display()
                    )
                })
        })
        .collect()
}

/// What `rxen-mkinitramfs --busybox BUSYBOX --module ...` writes.
fn initramfs(busybox: &Path, modules: &[(String, Vec<u8>)]) -> Result<Vec<u8>, String> {
    let bb = std::fs::read(busybox).map_err(|e| format!("{}: {e}", busybox.display()))?;
    let names: Vec<String> = modules.iter().map(|(n, _)| n.clone()).collect();
    let paths: Vec<String> = names
        .iter()
        .map(|n| format!("lib/modules-rxen/{n}"))
        .collect();
    let files: Vec<(&str, Vec<u8>)> = paths
        .iter()
        .zip(modules)
        .map(|(p, (_, data))| (p.as_str(), data.clone()))
        .collect();
    Ok(rxen_initramfs::busybox_initramfs(
        &bb,
        &rxen_initramfs::boot_init(&names),
        &files,
    ))
}

/// The xl.cfg text of the Debian domain (as the systemd test writes it).
fn config(name: &str, kernel: &Path, ramdisk: &Path, disk: &Path) -> String {
    format!(
        "name = \"{name}\"\nkernel = \"{}\"\nramdisk = \"{}\"\nmemory = 512\nvcpus = 2\n\
         extra = \"console=hvc0 earlyprintk=xen\"\nroot = \"/dev/xvda ro\"\n\
         disk = [ 'file:{},xvda,w' ]\non_crash = \"preserve\"\non_poweroff = \"preserve\"\n",
        kernel.display(),
        ramdisk.display(),
        disk.display()
    )
}

/// Boots Debian once under `d` from a sparse copy of `image` in `dir`: seconds to the
/// prompt.
fn boot(
    d: &Daemons,
    dir: &Path,
    image: &Path,
    kernel: &Path,
    busybox: &Path,
) -> Result<f64, String> {
    let modules = disk_modules(kernel)?;
    let ramdisk = dir.join("initramfs.cpio");
    std::fs::write(&ramdisk, initramfs(busybox, &modules)?)
        .map_err(|e| format!("{}: {e}", ramdisk.display()))?;
    // The domain writes its disk (journal, machine-id, ...): boot a sparse copy.
    let disk = dir.join("bookworm.img");
    let copied = std::process::Command::new("cp")
        .args(["--sparse=always", "--reflink=auto"])
        .arg(image)
        .arg(&disk)
        .status()
        .map_err(|e| format!("cp: {e}"))?;
    if !copied.success() {
        return Err(format!("cp {} failed: {copied}", image.display()));
    }
    let name = "debian";
    let run = run_linux(
        d,
        name,
        &config(name, kernel, &ramdisk, &disk),
        PROMPT,
        AfterMarker::ShutDown,
    )?;
    if let Some(stats) = &run.stats {
        print_stats("Debian boot to login, shutdown", stats);
    }
    Ok(run.secs)
}

pub fn run(wants: &dyn Fn(&str) -> bool, quick: bool) -> Result<Vec<Figure>, String> {
    if !wants(NAME) {
        return Ok(Vec::new());
    }
    let found = image().and_then(|image| inputs().map(|(k, b)| (image, k, b)));
    let (image, kernel, busybox) = match found {
        Ok(found) => found,
        Err(why) => {
            eprintln!("rxen-bench: {NAME} skipped: {why}");
            return Ok(Vec::new());
        }
    };
    let dir = std::env::temp_dir().join(format!("rxen-bench-debian-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let measured = (|| -> Result<(f64, f64), String> {
        let d = start()?;
        let value = boot(&d, &dir, &image, &kernel, &busybox)?;
        Ok((
            value,
            default_guest_first_output_s(&d, if quick { 1 } else { 3 })?,
        ))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let (value, baseline) = measured?;
    Ok(vec![Figure {
        name: NAME.into(),
        value,
        unit: "s".into(),
        baseline,
        ratio: value / baseline,
        note: "xend create to systemd's autologin prompt on hvc0 (bookworm on xvda, 2 vCPUs, 512 MiB; one boot) vs rxen's default guest to its first output".into(),
    }])
}
