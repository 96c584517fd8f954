//! `rxen-mkinitramfs`: writes an initramfs (newc cpio) to boot Debian's kernel on rxen
//! without a distribution initrd: Debian's static busybox, the kernel modules given
//! (xen-blkfront, xen-netfront, a file system's), and an `/init` that loads them,
//! reads `root=` / `rxen.ip=` / `rxen.gw=` from the kernel command line, and either
//! `switch_root`s to the root device or gives a shell on the console (hvc0).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

/// Writes an initramfs for booting a Linux kernel as an rxen (Xen PV) guest.
///
/// The archive's /init loads the --module files in the order given, then reads the
/// kernel command line: root=DEV (with `ro` or `rw`) mounts DEV and switch_roots to
/// its /sbin/init; rxen.ip=ADDR/PREFIX and rxen.gw=ADDR configure eth0 (xen-netfront);
/// without root= (or when it cannot be mounted) it starts a shell on the console.
/// xl's `root = "/dev/xvda ro"` puts root= on the command line.
#[derive(Parser, Debug)]
#[command(name = "rxen-mkinitramfs", version)]
struct Args {
    /// A statically linked busybox (Debian's busybox-static: /bin/busybox;
    /// scripts/fetch-linux-kernel.sh puts one in target/linux-kernel/busybox).
    #[arg(long, value_name = "PATH")]
    busybox: PathBuf,
    /// A kernel module (.ko, uncompressed) to load at boot, in dependency order; may
    /// be repeated. For a root disk on ext4: crc16 crc32c_generic mbcache jbd2 ext4
    /// xen-blkfront; for a vif: xen-netfront.
    #[arg(long = "module", value_name = "KO")]
    modules: Vec<PathBuf>,
    /// Where to write the archive (the domain's `ramdisk =`).
    #[arg(short, long, value_name = "PATH")]
    output: PathBuf,
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

fn run(args: &Args) -> Result<(), String> {
    let busybox = read("busybox", &args.busybox)?;
    if !busybox.starts_with(b"\x7fELF") {
        return Err(format!(
            "busybox {}: not an ELF file",
            args.busybox.display()
        ));
    }
    let mut names = Vec::new();
    let mut files = Vec::new();
    for m in &args.modules {
        let name = m
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| n.ends_with(".ko"))
            .ok_or_else(|| format!("module {}: not a .ko file name", m.display()))?;
        if names.iter().any(|n| n == name) {
            return Err(format!("module {name} given twice"));
        }
        let data = read("module", m)?;
        if !data.starts_with(b"\x7fELF") {
            return Err(format!(
                "module {}: not an ELF object (compressed? Debian's .ko.xz: unxz it first)",
                m.display()
            ));
        }
        names.push(name.to_string());
        files.push((format!("lib/modules-rxen/{name}"), data));
    }
    let init = rxen_initramfs::boot_init(&names);
    let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(p, d)| (p.as_str(), d.clone())).collect();
    let archive = rxen_initramfs::busybox_initramfs(&busybox, &init, &files);
    std::fs::write(&args.output, &archive)
        .map_err(|e| format!("writing {}: {e}", args.output.display()))?;
    println!(
        "{}: {} bytes, busybox and {} module(s)",
        args.output.display(),
        archive.len(),
        names.len()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rxen-mkinitramfs: {e}");
            ExitCode::FAILURE
        }
    }
}
