//! `xen-vmm`: runs one rxen domain in the foreground.
//!
//! Exit status: 0 poweroff, 1 VMM error, 2 usage error, 3 reboot, 4 guest crash
//! (SHUTDOWN_crash), 5 triple fault, 6 watchdog, 7 suspend, 8 soft reset,
//! 9 destroyed (SIGINT/SIGTERM or the control socket's `destroy`). The statuses other
//! than 2 come from `rxen_vmm_api::ExitKind::exit_code`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rxen_vmm::console::{ConsoleLimits, ConsoleSink, RotatingLog, StdoutSink};
use rxen_vmm::{BootKind, Domain, DomainConfig, DomainExit};
use rxen_vmm_api::ExitKind;

/// Exit status of a usage error (bad arguments; clap uses it too).
const USAGE_ERROR: u8 = 2;

#[derive(Parser)]
#[command(
    name = "xen-vmm",
    version,
    about = "Run one rxen domain (a Xen PV guest on KVM) in the foreground"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a domain from a guest ELF and run it; the guest console goes to stdout, or
    /// to --console-log.
    ///
    /// Console output is rate limited (--console-rate, --console-burst): what exceeds
    /// the limit is dropped and counted (control status: console_dropped_bytes), the
    /// guest is never slowed down by it.
    ///
    /// Exit status: 0 poweroff, 1 VMM error, 2 usage error, 3 reboot, 4 guest crash,
    /// 5 triple fault, 6 watchdog, 7 suspend, 8 soft reset, 9 destroyed by a signal.
    Run {
        /// Guest kernel: a static x86-64 ELF linked at or above 0x400000.
        /// Without it, the embedded default guest runs.
        #[arg(long, conflicts_with = "restore")]
        kernel: Option<PathBuf>,
        /// Restore the domain saved in this image (`xm save`; Xen's migration stream
        /// v2) instead of building one from a kernel: memory, vCPUs, vCPU count,
        /// command line and UUID come from the image; --name, --domid, --paused and
        /// the console options are this run's. The guest resumes where it was saved.
        /// `-` reads the image from standard input (a relocation server hands a
        /// live migration's connection over as stdin).
        #[arg(long, value_name = "IMAGE", conflicts_with_all = ["pv", "ramdisk"])]
        restore: Option<PathBuf>,
        /// The kernel is an unmodified Xen PV kernel (e.g. Mini-OS or PV-GRUB): build it
        /// on Xen's PV start-of-day layout instead of rxen's. Kernels with Xen ELF
        /// notes (or a `__xen_guest` section) are detected without this flag.
        /// Hypercalls are logged with RXEN_LOG=rxen_vmm=trace.
        #[arg(long, requires = "kernel")]
        pv: bool,
        /// Initial ramdisk for a Xen PV kernel (xl's `ramdisk=`): loaded after the kernel,
        /// given in start_info.mod_start/mod_len. At most 64 MiB.
        #[arg(long, value_name = "PATH")]
        ramdisk: Option<PathBuf>,
        /// Guest memory in MiB (a multiple of 2, 8..=16384).
        #[arg(long, default_value_t = 32)]
        memory: u64,
        /// Number of vCPUs (1..=32).
        #[arg(long, default_value_t = 1)]
        vcpus: u32,
        /// Guest command line (start_info.cmd_line, at most 1023 bytes).
        #[arg(long, default_value = "")]
        cmdline: String,
        /// Domain name.
        #[arg(long, default_value = "domain")]
        name: String,
        /// Domain id (1..=32751).
        #[arg(long, default_value_t = 1)]
        domid: u16,
        /// Forward stdin to the guest console (console_io read, VIRQ_CONSOLE).
        #[arg(long)]
        stdin: bool,
        /// Serve the control socket here (JSON lines of rxen-vmm-api: status, pause,
        /// unpause, destroy, debug-key, console-input, console-tail, attach-disk,
        /// detach-disk, save).
        #[arg(long)]
        control: Option<PathBuf>,
        /// Relay the guest's xenstore ring to this xenstored domain socket.
        #[arg(long)]
        xenstore_socket: Option<PathBuf>,
        /// xenstored's main (domain 0) socket: the block backend runs the backend half
        /// of xenbus for the --disk devices, and for disks hot-plugged through the
        /// control socket (attach-disk), through it.
        #[arg(long, value_name = "PATH")]
        xenstored_socket: Option<PathBuf>,
        /// A virtual block device served by the in-VMM blkback: DEVID:MODE:PATH, with
        /// Xen's device number (768 = hda, 51712 = xvda), MODE r or w (`r,direct` or
        /// `w,direct`: bypass the host page cache with O_DIRECT), and a regular
        /// file or block device. Its xenbus nodes must already exist (xend writes them);
        /// repeatable; needs --xenstored-socket.
        #[arg(long, value_name = "DEVID:MODE:PATH", requires = "xenstored_socket")]
        disk: Vec<rxen_vmm::blkback::VbdConfig>,
        /// A virtual network interface served by the in-VMM netback:
        /// devid=N,mac=MAC,tap=NAME[,bridge=BRIDGE][,ip=A.B.C.D]... The VMM creates
        /// TAP device NAME (gone when the VMM exits), brings it up and adds it to
        /// BRIDGE if that bridge exists; with ip= (routed mode, Xen's vif-route) it
        /// adds a host route to each address through the TAP and turns on proxy ARP
        /// and forwarding on it. Its xenbus nodes must already exist (xend writes
        /// them); repeatable; needs --xenstored-socket.
        #[arg(
            long,
            value_name = "devid=N,mac=MAC,tap=NAME[,bridge=BRIDGE][,ip=A.B.C.D]",
            requires = "xenstored_socket"
        )]
        vif: Vec<rxen_vmm::netback::VifConfig>,
        /// Write how the domain ended here before exiting: one JSON line
        /// {"kind", "code", "reason"} (rxen-vmm-api's ExitRecord).
        #[arg(long)]
        exit_file: Option<PathBuf>,
        /// Domain UUID (xen_version guest_handle), 8-4-4-4-12 hex.
        #[arg(long)]
        uuid: Option<String>,
        /// Start with every vCPU paused: no guest instruction runs until an unpause
        /// arrives on the control socket (`xm create -p`).
        #[arg(long)]
        paused: bool,
        /// Write the guest console to this file (mode 0600, appended) instead of
        /// stdout. It is rotated to PATH.1 when it would grow past --console-log-max,
        /// so the console takes at most twice that on disk.
        #[arg(long, value_name = "PATH")]
        console_log: Option<PathBuf>,
        /// Largest console log file before it is rotated, in bytes (at least 1).
        #[arg(long, value_name = "BYTES", default_value_t = 1024 * 1024,
              value_parser = clap::value_parser!(u64).range(1..))]
        console_log_max: u64,
        /// Sustained console output rate, bytes per second; more is dropped.
        #[arg(long, value_name = "BYTES_PER_S", default_value_t = ConsoleLimits::default().rate)]
        console_rate: u64,
        /// Console output allowed at once above the rate, bytes.
        #[arg(long, value_name = "BYTES", default_value_t = ConsoleLimits::default().burst)]
        console_burst: u64,
        /// Newest console output kept in memory for the control socket's console-tail,
        /// bytes (at most 16 MiB).
        #[arg(long, value_name = "BYTES", default_value_t = ConsoleLimits::default().ring as u64,
              value_parser = clap::value_parser!(u64).range(0..=16 * 1024 * 1024))]
        console_ring: u64,
    },
}

fn load_kernel(path: &Option<PathBuf>) -> Result<Vec<u8>, String> {
    match path {
        Some(p) => {
            let file = rxen_vmm::kernel_file::read_kernel(p).map_err(|e| e.to_string())?;
            // A Linux bzImage (`kernel = "/boot/vmlinuz-..."`) carries its ELF kernel
            // compressed inside, as xl's builder expects.
            rxen_vmm::bzimage::unwrap_kernel(file)
                .map_err(|e| format!("kernel {}: {e}", p.display()))
        }
        None => default_guest(),
    }
}

#[cfg(feature = "embedded-guest")]
fn default_guest() -> Result<Vec<u8>, String> {
    Ok(rxen_guest_images::DEFAULT_GUEST.to_vec())
}

#[cfg(not(feature = "embedded-guest"))]
fn default_guest() -> Result<Vec<u8>, String> {
    Err("no --kernel given and this xen-vmm was built without the embedded default guest".into())
}

fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || s.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Restores a domain from the image at `path` with `config`'s name, domid, pause
/// and console choices.
fn restore_domain(
    path: &std::path::Path,
    config: DomainConfig,
    sink: Box<dyn ConsoleSink>,
) -> Result<rxen_vmm::snapshot::Restored, String> {
    let opts = rxen_vmm::snapshot::RestoreOptions {
        name: config.name,
        domid: config.domid,
        console: config.console,
        start_paused: config.start_paused,
    };
    let restored = if path.as_os_str() == "-" {
        // The sender writes nothing after the image's END (it waits for the
        // relocation server's answer), so reading ahead cannot take anything else.
        rxen_vmm::snapshot::restore(
            std::io::BufReader::with_capacity(1 << 20, std::io::stdin()),
            opts,
            sink,
        )
    } else {
        // A regular file: its pages are mapped where the image allows it.
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let regular = file.metadata().map(|m| m.is_file()).unwrap_or(false);
        if regular {
            rxen_vmm::snapshot::restore_file(&file, opts, sink)
        } else {
            rxen_vmm::snapshot::restore(
                std::io::BufReader::with_capacity(1 << 20, file),
                opts,
                sink,
            )
        }
    };
    restored.map_err(|e| format!("cannot restore {}: {e}", path.display()))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            // Warnings, the hypervisor console (a PV domain's `console_io`, Xen's
            // `xl dmesg`): the domain's early output belongs in its log by default; and
            // the domain's counters when it ends.
            tracing_subscriber::EnvFilter::try_from_env("RXEN_LOG").unwrap_or_else(|_| {
                "warn,rxen_vmm::hypervisor_console=info,rxen_vmm::stats=info".into()
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // Block SIGINT/SIGTERM in every thread (inherited by the domain's threads) so that
    // the waiting thread below receives them.
    // SAFETY: plain libc signal-mask manipulation for the calling thread.
    unsafe {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::zeroed();
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
        libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
        libc::sigaddset(set.as_mut_ptr(), libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut());
    }
    let Cmd::Run {
        kernel,
        restore,
        pv,
        ramdisk,
        memory,
        vcpus,
        cmdline,
        name,
        domid,
        stdin,
        control,
        xenstore_socket,
        xenstored_socket,
        disk,
        vif,
        exit_file,
        uuid,
        paused,
        console_log,
        console_log_max,
        console_rate,
        console_burst,
        console_ring,
    } = cli.cmd;
    let uuid = match uuid.as_deref().map(parse_uuid) {
        None => [0u8; 16],
        Some(Some(u)) => u,
        Some(None) => {
            eprintln!("xen-vmm: --uuid must look like 01234567-89ab-cdef-0123-456789abcdef");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    let ramdisk = match ramdisk.as_deref().map(rxen_vmm::kernel_file::read_kernel) {
        None => None,
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            eprintln!("xen-vmm: ramdisk: {e}");
            return ExitCode::from(ExitKind::Internal.exit_code());
        }
    };
    let config = DomainConfig {
        name,
        domid,
        memory_mib: memory,
        vcpus,
        cmdline,
        uuid,
        start_paused: paused,
        ramdisk,
        console: ConsoleLimits {
            rate: console_rate,
            burst: console_burst,
            ring: console_ring as usize,
        },
    };
    // Usage errors (exit status 2) are found before anything is created.
    if let Err(e) = config.validate() {
        eprintln!("xen-vmm: {e}");
        eprintln!("Try 'xen-vmm run --help' for the allowed values.");
        return ExitCode::from(USAGE_ERROR);
    }
    let image = match restore {
        Some(_) => Vec::new(),
        None => match load_kernel(&kernel) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("xen-vmm: {e}");
                return ExitCode::from(ExitKind::Internal.exit_code());
            }
        },
    };
    let disks = match rxen_vmm::blkback::open_disks(&disk) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("xen-vmm: {e}");
            return ExitCode::from(ExitKind::Internal.exit_code());
        }
    };
    let vifs = match rxen_vmm::netback::open_vifs(&vif) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("xen-vmm: {e}");
            return ExitCode::from(ExitKind::Internal.exit_code());
        }
    };
    let sink: Box<dyn ConsoleSink> = match &console_log {
        None => Box::new(StdoutSink),
        Some(p) => match RotatingLog::open(p, console_log_max) {
            Ok(log) => Box::new(log),
            Err(e) => {
                eprintln!("xen-vmm: opening console log {}: {e}", p.display());
                return ExitCode::from(ExitKind::Internal.exit_code());
            }
        },
    };
    let kind = if pv || rxen_vmm::pv::is_xen_pv_kernel(&image) {
        BootKind::XenPv
    } else {
        BootKind::Rxen
    };
    let created = match &restore {
        Some(path) => restore_domain(path, config, sink),
        None => Domain::create_as(config, &image, sink, kind)
            .map(|domain| rxen_vmm::snapshot::Restored {
                domain,
                toolstack_config: Vec::new(),
                devices: Default::default(),
            })
            .map_err(|e| format!("cannot create domain: {e}")),
    };
    let (domain, saved_devices) = match created {
        Ok(r) => (r.domain, r.devices),
        Err(e) => {
            eprintln!("xen-vmm: {e}");
            return ExitCode::from(ExitKind::Internal.exit_code());
        }
    };
    let shared = domain.shared().clone();
    let vbd_ids: Vec<u32> = disks.iter().map(|d| d.0).collect();
    let vif_ids: Vec<u32> = vifs.iter().map(|v| v.0).collect();
    if let Err(e) = saved_devices.check_devids(&vbd_ids, &vif_ids) {
        eprintln!("xen-vmm: the image's devices: {e}");
        domain.destroy();
        domain.wait();
        return ExitCode::from(ExitKind::Internal.exit_code());
    }
    // Started before the control socket, which hands it hot-plugged disks.
    let net_backend = match rxen_vmm::netback::NetBackend::start_restored(
        shared.clone(),
        xenstored_socket.clone(),
        vifs,
        &saved_devices.vifs,
    ) {
        Ok(b) => std::sync::Arc::new(b),
        Err(e) => {
            eprintln!("xen-vmm: {e}");
            domain.destroy();
            domain.wait();
            return ExitCode::from(ExitKind::Internal.exit_code());
        }
    };
    let block_backend = match rxen_vmm::blkback::hotplug::BlockBackend::start_restored(
        shared.clone(),
        xenstored_socket,
        disks,
        &saved_devices.vbds,
    ) {
        Ok(b) => std::sync::Arc::new(b),
        Err(e) => {
            eprintln!("xen-vmm: {e}");
            net_backend.stop();
            domain.destroy();
            domain.wait();
            return ExitCode::from(ExitKind::Internal.exit_code());
        }
    };
    if let Some(p) = &control {
        if let Err(e) = rxen_vmm::control::start(
            shared.clone(),
            p,
            Some(std::sync::Arc::new(rxen_vmm::control::DeviceBackends {
                block: block_backend.clone(),
                net: net_backend.clone(),
            })),
        ) {
            eprintln!("xen-vmm: {e}");
            block_backend.stop();
            domain.destroy();
            domain.wait();
            return ExitCode::from(ExitKind::Internal.exit_code());
        }
    }
    if let Some(p) = &xenstore_socket {
        if let Err(e) = rxen_vmm::xsrelay::start(shared.clone(), p) {
            eprintln!("xen-vmm: {e}");
            block_backend.stop();
            domain.destroy();
            domain.wait();
            return ExitCode::from(ExitKind::Internal.exit_code());
        }
    }
    // SIGINT/SIGTERM destroy the domain cleanly; SIGUSR1 raises VIRQ_DEBUG on every
    // vCPU (Xen's debug key).
    let signals = shared.clone();
    std::thread::spawn(move || loop {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::zeroed();
        let mut sig = 0;
        // SAFETY: plain libc signal-set manipulation on a local set.
        unsafe {
            libc::sigemptyset(set.as_mut_ptr());
            libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
            libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
            libc::sigaddset(set.as_mut_ptr(), libc::SIGUSR1);
            libc::sigwait(set.as_ptr(), &mut sig);
        }
        if sig == libc::SIGUSR1 {
            signals.raise_debug_virq();
            continue;
        }
        signals.request_exit(DomainExit::Destroyed);
        break;
    });
    if stdin {
        let input = shared.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            let mut si = std::io::stdin();
            while let Ok(n) = si.read(&mut buf) {
                if n == 0 {
                    break;
                }
                input.console_input(&buf[..n]);
            }
        });
    }
    let why = domain.wait();
    // Where the domain's time went (`rxen_vmm::stats`), for its log.
    tracing::info!(
        target: "rxen_vmm::stats",
        "{}",
        shared.stats.snapshot().table(usize::MAX)
    );
    block_backend.stop();
    net_backend.stop();
    if let Some(p) = &exit_file {
        if let Err(e) = std::fs::write(p, rxen_vmm_api::encode(&why.record())) {
            eprintln!("xen-vmm: writing {}: {e}", p.display());
        }
    }
    if let Some(p) = &control {
        let _ = std::fs::remove_file(p);
    }
    match &why {
        DomainExit::Poweroff => {}
        DomainExit::TripleFault { registers, .. } => {
            eprintln!("xen-vmm: {why}\nxen-vmm: registers: {registers}")
        }
        _ => eprintln!("xen-vmm: {why}"),
    }
    ExitCode::from(why.exit_code())
}
