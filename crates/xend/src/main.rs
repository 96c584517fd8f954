//! `xend`: the rxen control daemon. `xend start` runs it in the background (starting
//! xenstored first if it is not running), `xend foreground` runs it in the terminal
//! (systemd, tests), `xend stop|status|restart` manage the background daemon.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
mod auth_token;
mod serve;

use rxen_xend::api::{self, AppState};
use rxen_xend::process::{StateDirLock, StateDirLockError};
use rxen_xend::state::{Xend, XendConfig};
use rxen_xenstore::pidfile::{PidFile, PidFileError};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{filter::LevelFilter, Layer};

#[derive(Parser)]
#[command(
    name = "xend",
    version,
    about = "rxen control daemon: HTTP API for domains (default 127.0.0.1:8000)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start xend in the background (and xenstored if it is not running).
    Start(Opts),
    /// Run xend in the foreground (for systemd and tests).
    Foreground(Opts),
    /// Stop the background xend (its domains keep running).
    Stop(Opts),
    /// Say whether xend is running.
    Status(Opts),
    /// Stop, then start.
    Restart(Opts),
}

#[derive(Args, Clone)]
struct Opts {
    /// Address to listen on. A non-loopback address needs a token (--auth-token-file
    /// or XEND_AUTH_TOKEN).
    #[arg(long, default_value = "127.0.0.1")]
    listen: String,
    /// TCP port.
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Also serve the API on this Unix socket.
    #[arg(long)]
    unix_socket: Option<PathBuf>,
    /// File holding the bearer token clients must send (`Authorization: Bearer
    /// TOKEN`); its first line, trimmed. It must not be readable by other users.
    /// Without it, the token is taken from XEND_AUTH_TOKEN if that is set.
    #[arg(long, value_name = "PATH")]
    auth_token_file: Option<PathBuf>,
    /// Removed: a token on the command line is visible to every user in `ps`.
    #[arg(long, hide = true)]
    auth_token: Option<String>,
    /// Seconds a client has to send a request's headers before its connection is
    /// closed.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    header_read_timeout: f64,
    /// Connections served at once (TCP and Unix socket together); more are closed
    /// at once.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// State directory: database, domain files, pid file.
    #[arg(long, default_value = "/var/lib/rxen")]
    state_dir: PathBuf,
    /// Log directory: xend.log (INFO and up) and xend-debug.log (DEBUG), rotated daily.
    #[arg(long, default_value = "/var/log/rxen")]
    log_dir: PathBuf,
    /// xenstored's socket.
    #[arg(long, default_value = "/run/xenstored/socket")]
    xenstored_socket: PathBuf,
    /// The xen-vmm binary (default: next to xend).
    #[arg(long)]
    xen_vmm: Option<PathBuf>,
    /// Do not restart xenstored when it dies (only report it).
    #[arg(long)]
    no_xenstored_restart: bool,
    /// Create this domain (xl.cfg file) once xend is up, unless a domain of that name exists.
    #[arg(long)]
    create: Option<PathBuf>,
    /// Host memory (MiB) kept for domain 0 (the host itself); domains get the rest.
    #[arg(long, default_value_t = 1024)]
    dom0_memory: u64,
    /// How much of the memory left for domains their maximum memory may add up to
    /// (1.0: no overcommit; creates beyond it are refused).
    #[arg(long, default_value_t = 1.0)]
    memory_overcommit: f64,
    /// Do not create missing bridges. By default, a vif's bridge (`bridge=`, xl's
    /// default `xenbr0`) is created and brought up when it does not exist, and left in
    /// place when domains end (as Xen's); with this flag a missing bridge is an error
    /// at create and attach. See docs/networking.md.
    #[arg(long)]
    no_bridge_create: bool,
    /// Accept live migrations from other hosts on this TCP port (Xen's relocation
    /// server uses 8002). Off by default; needs --relocation-token-file.
    #[arg(long, value_name = "PORT")]
    relocation_port: Option<u16>,
    /// Address the relocation server listens on. Loopback by default: a migration
    /// stream is not encrypted (see docs/migration.md), so only give a routable
    /// address on a trusted network.
    #[arg(long, default_value = "127.0.0.1", value_name = "ADDR")]
    relocation_address: String,
    /// File holding the relocation token (first line, trimmed; not readable by other
    /// users). Incoming migrations must carry it and `xm migrate` sends it, so both
    /// hosts are configured with the same token.
    #[arg(long, value_name = "PATH")]
    relocation_token_file: Option<PathBuf>,
}

fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn pid_file(o: &Opts) -> PathBuf {
    o.state_dir.join("xend.pid")
}

/// The pid of the running xend of this state directory: the process holding its pid
/// file's lock (a file left by a dead or zombie daemon names nobody).
fn running_pid(o: &Opts) -> Option<i32> {
    PidFile::holder(&pid_file(o))
        .filter(|p| *p != 0)
        .map(|p| p as i32)
}

fn ensure_xenstored(o: &Opts) -> Result<(), String> {
    if rxen_xend::xs::alive(&o.xenstored_socket) {
        return Ok(());
    }
    xenstored_launch(o).start()?;
    eprintln!(
        "xend: started xenstored on {}",
        o.xenstored_socket.display()
    );
    Ok(())
}

/// How this xend starts xenstored (at `start`, and again if it dies).
fn xenstored_launch(o: &Opts) -> rxen_xend::xenstored::XenstoredLaunch {
    rxen_xend::xenstored::XenstoredLaunch {
        binary: sibling("xenstored"),
        socket: o.xenstored_socket.clone(),
        state_dir: o.state_dir.clone(),
    }
}

/// Checks what `foreground` would refuse, so that `start` can say why at once instead
/// of "did not come up".
fn check_options(o: &Opts) -> Result<Option<String>, String> {
    if o.auth_token.is_some() {
        return Err("--auth-token is gone (it showed the token in ps): use \
             --auth-token-file PATH or the XEND_AUTH_TOKEN environment variable"
            .into());
    }
    limits(o)?;
    let token = auth_token::resolve(o.auth_token_file.as_deref())?;
    if !is_loopback(&o.listen) && token.is_none() {
        return Err(format!(
            "listening on {} (not loopback) needs a token (--auth-token-file or {})",
            o.listen,
            auth_token::TOKEN_ENV
        ));
    }
    if let Some(cfg) = &o.create {
        read_create_config(cfg)?;
    }
    relocation_token(o)?;
    Ok(token)
}

/// The relocation token, if a file names one; a relocation port without one is an
/// error (the server never runs without a token).
fn relocation_token(o: &Opts) -> Result<Option<String>, String> {
    let token = match &o.relocation_token_file {
        Some(p) => auth_token::resolve(Some(p))?,
        None => None,
    };
    if o.relocation_port.is_some() && token.is_none() {
        return Err("--relocation-port needs --relocation-token-file".into());
    }
    Ok(token)
}

/// The domain `--create` names: its xl.cfg parsed, with a relative `kernel=` resolved
/// against the config file's directory (as xl does).
fn read_create_config(cfg: &Path) -> Result<(rxen_xlcfg::DomainSpec, Vec<String>), String> {
    let text =
        std::fs::read_to_string(cfg).map_err(|e| format!("reading {}: {e}", cfg.display()))?;
    let (mut spec, warnings) =
        rxen_xlcfg::DomainSpec::from_xl(&text).map_err(|e| format!("{}: {e}", cfg.display()))?;
    if let Some(k) = &spec.kernel {
        if Path::new(k).is_relative() {
            let dir = std::path::absolute(cfg)
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .unwrap_or_default();
            spec.kernel = Some(dir.join(k).to_string_lossy().into_owned());
        }
    }
    Ok((spec, warnings))
}

/// The last lines of a log file, for error messages.
fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn start(o: &Opts) -> Result<(), String> {
    if let Some(pid) = running_pid(o) {
        return Err(format!("xend is already running (pid {pid})"));
    }
    private_umask();
    // The daemon reads the token itself (from the same file or environment): it is
    // never put on its command line.
    check_options(o)?;
    ensure_xenstored(o)?;
    std::fs::create_dir_all(&o.log_dir).map_err(|e| e.to_string())?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(o.log_dir.join("xend-stderr.log"))
        .map_err(|e| e.to_string())?;
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(2).collect();
    args.insert(0, "foreground".into());
    let stderr_log = o.log_dir.join("xend-stderr.log");
    let log_start = std::fs::metadata(&stderr_log).map_or(0, |m| m.len());
    let mut child = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting xend: {e}"))?
    };
    let url = format!("http://{}:{}/health", o.listen, o.port);
    for _ in 0..500 {
        if running_pid(o).is_some() && health(&url) {
            println!(
                "xend started (pid {}), API on {}:{}",
                child.id(),
                o.listen,
                o.port
            );
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            // Only what this start wrote to the log.
            let text = std::fs::read(&stderr_log).unwrap_or_default();
            let ours = String::from_utf8_lossy(&text[(log_start as usize).min(text.len())..])
                .trim()
                .to_string();
            return Err(format!(
                "xend exited at start ({status}): {}",
                if ours.is_empty() {
                    log_tail(&stderr_log, 5)
                } else {
                    ours
                }
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!(
        "xend did not answer on {}:{} in 5 s; see {}",
        o.listen,
        o.port,
        stderr_log.display()
    ))
}

fn health(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let Some((hostport, _)) = rest.split_once('/') else {
        return false;
    };
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(hostport) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(format!("GET /health HTTP/1.0\r\nHost: {hostport}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
}

fn stop(o: &Opts) -> Result<(), String> {
    let Some(pid) = running_pid(o) else {
        return Err("xend is not running".into());
    };
    // SAFETY: asking the process that holds xend's pid-file lock to stop.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    for _ in 0..500 {
        if running_pid(o).is_none() {
            println!("xend stopped (domains keep running)");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!("xend (pid {pid}) did not stop"))
}

fn init_logs(log_dir: &Path) -> Result<Vec<tracing_appender::non_blocking::WorkerGuard>, String> {
    std::fs::create_dir_all(log_dir)
        .map_err(|e| format!("creating log dir {}: {e}", log_dir.display()))?;
    let (info, g1) =
        tracing_appender::non_blocking(tracing_appender::rolling::daily(log_dir, "xend.log"));
    let (debug, g2) =
        tracing_appender::non_blocking(tracing_appender::rolling::daily(log_dir, "xend-debug.log"));
    let console_level = std::env::var("RXEN_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::INFO);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(info)
                .with_filter(LevelFilter::INFO),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(debug)
                .with_filter(LevelFilter::DEBUG),
        )
        .with(
            // Colours only for a person at a terminal: `xend start` sends stderr to
            // xend-stderr.log, and systemd's journal does not want them either.
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr)
                .with_filter(console_level),
        )
        .try_init()
        .map_err(|e| e.to_string())?;
    Ok(vec![g1, g2])
}

fn is_loopback(addr: &str) -> bool {
    addr.parse::<std::net::IpAddr>()
        .map(|a| a.is_loopback())
        .unwrap_or(addr == "localhost")
}

/// The serving limits the options ask for.
fn limits(o: &Opts) -> Result<serve::Limits, String> {
    let header_read_timeout = Duration::try_from_secs_f64(o.header_read_timeout)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            format!(
                "--header-read-timeout must be a positive number of seconds, not {}",
                o.header_read_timeout
            )
        })?;
    Ok(serve::Limits {
        header_read_timeout,
        max_connections: o.max_connections as usize,
        drain: Duration::from_secs(5),
    })
}

/// Makes every file and directory this process (and its children) creates private
/// to its user: state (xend.db, console logs, sockets) and logs are 0600/0700.
fn private_umask() {
    // SAFETY: umask only changes this process's file-creation mask; it cannot fail.
    unsafe { libc::umask(0o077) };
}

async fn foreground(o: Opts) -> Result<(), String> {
    private_umask();
    let auth_token = check_options(&o)?;
    let _guards = init_logs(&o.log_dir)?;
    std::fs::create_dir_all(&o.state_dir).map_err(|e| format!("creating state dir: {e}"))?;
    // One xend per state directory, for its whole life: the directory's lock, then
    // the pid file (`xend stop`/`status` find the daemon through it).
    let _state_lock = StateDirLock::acquire(&o.state_dir).map_err(|e| match e {
        StateDirLockError::Held => format!(
            "another xend is running on state directory {}{}",
            o.state_dir.display(),
            running_pid(&o).map_or(String::new(), |p| format!(" (pid {p})"))
        ),
        e => e.to_string(),
    })?;
    let _pid_file = PidFile::acquire(&pid_file(&o)).map_err(|e| match e {
        PidFileError::Held { pid, .. } => format!("another xend is running (pid {pid})"),
        e => e.to_string(),
    })?;
    if !rxen_xend::xs::alive(&o.xenstored_socket) {
        return Err(format!(
            "xenstored is not answering on {} (xend start starts it)",
            o.xenstored_socket.display()
        ));
    }
    let cfg = XendConfig {
        state_dir: o.state_dir.clone(),
        xenstored_socket: o.xenstored_socket.clone(),
        xen_vmm: o.xen_vmm.clone().unwrap_or_else(|| sibling("xen-vmm")),
        start_timeout: Duration::from_secs(10),
        memory_capacity_mib: rxen_xend::state::memory_capacity_mib(
            o.dom0_memory,
            o.memory_overcommit,
        ),
        create_bridges: !o.no_bridge_create,
        relocation_token: relocation_token(&o)?,
    };
    let relocation = match (o.relocation_port, &cfg.relocation_token) {
        (Some(port), Some(token)) => {
            let addr = format!("{}:{port}", o.relocation_address);
            let l = tokio::net::TcpListener::bind(&addr)
                .await
                .map_err(|e| format!("relocation server on {addr}: {e}"))?;
            tracing::info!(%addr, "relocation server listening");
            Some((l, token.clone()))
        }
        _ => None,
    };
    let xend = Xend::new(cfg)?;
    if let Some((l, token)) = relocation {
        tokio::spawn(rxen_xend::relocation::serve(xend.clone(), l, token));
    }
    let sock = o.xenstored_socket.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || rxen_xend::xs::populate_dom0(&sock))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
    {
        tracing::warn!("writing Domain-0's xenstore entries: {e}");
    }
    xend.adopt().await;
    xend.reconcile().await;
    let launch = (!o.no_xenstored_restart).then(|| xenstored_launch(&o));
    tokio::spawn(xend.clone().supervise_xenstored(launch));
    let refresher = xend.clone();
    tokio::spawn(async move {
        loop {
            refresher.refresh().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let state = AppState {
        xend: xend.clone(),
        metrics: Arc::new(Mutex::new(Default::default())),
        auth_token,
        log_dir: o.log_dir.clone(),
    };
    let app = api::router(state);
    let addr: SocketAddr = format!(
        "{}:{}",
        if o.listen == "localhost" {
            "127.0.0.1"
        } else {
            &o.listen
        },
        o.port
    )
    .parse()
    .map_err(|e| format!("bad listen address: {e}"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("binding {addr}: {e}"))?;
    tracing::info!(%addr, "xend listening");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = serve::Server::new(app, limits(&o)?, stop_rx);
    let unix_server = match &o.unix_socket {
        Some(p) => {
            let _ = std::fs::remove_file(p);
            let ul = tokio::net::UnixListener::bind(p)
                .map_err(|e| format!("binding {}: {e}", p.display()))?;
            let server = server.clone();
            Some(tokio::spawn(async move { server.serve(ul).await }))
        }
        None => None,
    };
    if let Some(cfg) = &o.create {
        let (spec, warnings) = read_create_config(cfg)?;
        for w in warnings {
            tracing::warn!("{}: {w}", cfg.display());
        }
        if xend.info(&spec.name).is_err() {
            match xend
                .create(
                    spec,
                    false,
                    rxen_xend::state::create::CreateOptions::default(),
                )
                .await
            {
                Ok(i) => tracing::info!(
                    name = i.name,
                    domid = i.domid,
                    "created domain from {}",
                    cfg.display()
                ),
                Err(e) => tracing::error!("creating domain from {}: {e}", cfg.display()),
            }
        }
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("installing the SIGTERM handler: {e}"))?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        let _ = stop_tx.send(true);
    });
    server.serve(listener).await;
    if let Some(u) = unix_server {
        let _ = u.await;
    }
    if let Some(p) = &o.unix_socket {
        let _ = std::fs::remove_file(p);
    }
    tracing::info!("xend stopped; domains keep running");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Foreground(o) => match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(foreground(o)),
            Err(e) => Err(e.to_string()),
        },
        Cmd::Start(o) => start(&o),
        Cmd::Stop(o) => stop(&o),
        Cmd::Restart(o) => {
            let _ = stop(&o);
            start(&o)
        }
        Cmd::Status(o) => match running_pid(&o) {
            Some(pid) => {
                println!("xend is running (pid {pid})");
                Ok(())
            }
            None => {
                println!("xend is not running");
                return ExitCode::from(3);
            }
        },
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xend: {e}");
            ExitCode::FAILURE
        }
    }
}
