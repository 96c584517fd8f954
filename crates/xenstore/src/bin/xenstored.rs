//! `xenstored`: the xenstore daemon. Speaks Xen's wire protocol on a Unix socket;
//! connections there act for domain 0. See `docs/xenstore.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rxen_xenstore::persist::{SyncPolicy, DEFAULT_LOG_MAX_BYTES};
use rxen_xenstore::pidfile::{PidFile, PidFileError};
use rxen_xenstore::server::{Config, Daemon};

#[derive(Parser)]
#[command(name = "xenstored", version, about = "Xen-compatible xenstore daemon")]
struct Cli {
    /// Unix socket of privileged (domain 0) connections.
    #[arg(long, default_value = "/run/xenstored/socket")]
    socket: PathBuf,
    /// Directory of the per-domain sockets (`DIR/<domid>`, created at INTRODUCE);
    /// connections there act for that unprivileged domain. Default: `domains/` next
    /// to the main socket.
    #[arg(long)]
    domain_socket_dir: Option<PathBuf>,
    /// Keep the store here: a snapshot, with every change logged to `FILE.wal`
    /// before it is acknowledged; loaded (and the log replayed) at start.
    #[arg(long)]
    state_file: Option<PathBuf>,
    /// When a logged change must be on disk before its reply: `fsync` (fdatasync,
    /// shared by the replies waiting at that moment; survives a host crash) or `none`
    /// (written to the kernel only; survives a crash of xenstored, not of the host).
    #[arg(long, default_value = "fsync", value_parser = parse_sync)]
    sync: SyncPolicy,
    /// Size of the log that triggers a new snapshot (bytes).
    #[arg(long, default_value_t = DEFAULT_LOG_MAX_BYTES)]
    log_max_bytes: u64,
    /// Log every request (connection, type, ids, first argument) to this file.
    #[arg(long)]
    access_log: Option<PathBuf>,
    /// Detach from the terminal and run in the background.
    #[arg(long)]
    daemon: bool,
    /// Write the daemon's process id here and hold an exclusive lock on the file for
    /// the daemon's life; a second xenstored with the same pid file refuses to start.
    #[arg(long)]
    pid_file: Option<PathBuf>,
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: plain signal-set manipulation; the mask is set before any thread exists,
    // so every thread inherits it and only the waiting thread receives the signals.
    unsafe {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::zeroed();
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
        libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        set.assume_init()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Checked before detaching so that the refusal reaches the terminal; the lock
    // taken after detaching is what decides.
    if let Some(pid) = cli.pid_file.as_deref().and_then(PidFile::holder) {
        eprintln!("{}", refusal(cli.pid_file.as_deref(), pid));
        return ExitCode::FAILURE;
    }
    if cli.daemon {
        // SAFETY: daemon(3) before any thread is started; keeps the working directory.
        if unsafe { libc::daemon(1, 0) } != 0 {
            eprintln!("xenstored: daemon: {}", std::io::Error::last_os_error());
            return ExitCode::FAILURE;
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RXEN_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let _pid_file = match cli.pid_file.as_deref().map(PidFile::acquire).transpose() {
        Ok(p) => p,
        Err(PidFileError::Held { pid, .. }) => {
            eprintln!("{}", refusal(cli.pid_file.as_deref(), pid));
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("xenstored: {e}");
            return ExitCode::FAILURE;
        }
    };
    let set = block_signals();
    let domain_dir = cli.domain_socket_dir.clone().unwrap_or_else(|| {
        cli.socket
            .parent()
            .map(|p| p.join("domains"))
            .unwrap_or_else(|| PathBuf::from("domains"))
    });
    let config = Config {
        socket: cli.socket.clone(),
        domain_socket_dir: domain_dir,
        state_file: cli.state_file.clone(),
        access_log: cli.access_log.clone(),
        sync: cli.sync,
        log_max_bytes: cli.log_max_bytes,
    };
    let daemon = match Daemon::new(config) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("xenstored: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = daemon.clone();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        if let Err(e) = server.serve() {
            let _ = tx2.send(e);
        }
    });
    std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: waits for one of the blocked signals in `set`.
        unsafe { libc::sigwait(&set, &mut sig) };
        let _ = tx.send(String::new());
    });
    let err = rx.recv().unwrap_or_default();
    let mut code = ExitCode::SUCCESS;
    if !err.is_empty() {
        eprintln!("xenstored: {err}");
        code = ExitCode::FAILURE;
    } else {
        tracing::info!("shutting down");
        if let Err(e) = daemon.save_state() {
            eprintln!("xenstored: saving state: {e}");
            code = ExitCode::FAILURE;
        }
        daemon.remove_sockets();
    }
    // `_pid_file` is dropped here: the file is removed and its lock released.
    code
}

fn parse_sync(s: &str) -> Result<SyncPolicy, String> {
    s.parse()
}

fn refusal(path: Option<&std::path::Path>, pid: u32) -> String {
    let path = path.map(|p| p.display().to_string()).unwrap_or_default();
    if pid == 0 {
        format!("xenstored: another xenstored is starting with pid file {path}; not starting")
    } else {
        format!("xenstored: already running as pid {pid} (pid file {path} is locked); not starting")
    }
}
