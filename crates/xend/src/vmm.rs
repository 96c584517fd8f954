//! Starting `xen-vmm` processes and talking to their control sockets with the typed
//! protocol of `rxen-vmm-api`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rxen_vmm_api::{decode, encode, ErrorKind, ExitRecord, Reply, Request, Status};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// How long one control request may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

/// Files of one domain under `STATE_DIR/domains/<domid>/`.
#[derive(Debug, Clone)]
pub struct DomainFiles {
    pub dir: PathBuf,
}

impl DomainFiles {
    pub fn new(state_dir: &Path, domid: u32) -> Self {
        DomainFiles {
            dir: state_dir.join("domains").join(domid.to_string()),
        }
    }
    pub fn control(&self) -> PathBuf {
        self.dir.join("control.sock")
    }
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    pub fn vmm_log(&self) -> PathBuf {
        self.dir.join("vmm.log")
    }
    pub fn exit_file(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
}

/// One disk a VMM serves from its start (`--disk DEVID:MODE[,direct]:PATH`).
#[derive(Debug, Clone, Copy)]
pub struct LaunchDisk<'a> {
    pub devid: u32,
    pub writable: bool,
    /// xl's `direct-io-safe`: `O_DIRECT`.
    pub direct: bool,
    pub path: &'a str,
}

/// One network interface a VMM serves
/// (`--vif devid=N,mac=MAC,tap=NAME[,bridge=B][,ip=A.B.C.D]...`).
#[derive(Debug, Clone)]
pub struct LaunchVif {
    pub devid: u32,
    pub mac: String,
    pub tap: String,
    /// Bridged: the bridge the TAP joins.
    pub bridge: Option<String>,
    /// Routed: the guest's addresses the host routes through the TAP.
    pub ips: Vec<std::net::Ipv4Addr>,
}

impl LaunchVif {
    /// The `--vif` argument.
    pub fn arg(&self) -> String {
        let mut a = format!(
            "--vif=devid={},mac={},tap={}",
            self.devid, self.mac, self.tap
        );
        if let Some(b) = &self.bridge {
            a.push_str(&format!(",bridge={b}"));
        }
        for ip in &self.ips {
            a.push_str(&format!(",ip={ip}"));
        }
        a
    }
}

/// What the VMM needs to start a domain.
pub struct Launch<'a> {
    pub vmm: &'a Path,
    pub domid: u32,
    pub name: &'a str,
    pub uuid: &'a str,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub kernel: Option<&'a str>,
    /// `ramdisk=` (Xen PV kernels).
    pub ramdisk: Option<&'a str>,
    pub cmdline: &'a str,
    pub xenstore_socket: &'a Path,
    /// xenstored's main socket (the VMM's block backend runs xenbus through it).
    pub xenstored_socket: &'a Path,
    /// Disks the VMM serves: `(device number, writable, path)`.
    pub disks: Vec<LaunchDisk<'a>>,
    /// Network interfaces the VMM serves.
    pub vifs: Vec<LaunchVif>,
    pub files: &'a DomainFiles,
    /// Start with every vCPU paused.
    pub paused: bool,
    /// Restore the domain from this saved image instead of booting `kernel`.
    pub restore: Option<&'a Path>,
    /// The VMM's standard input (a live migration's connection, `restore` = `-`);
    /// without it, /dev/null.
    pub stdin: Option<&'a std::os::fd::OwnedFd>,
}

/// Starts the VMM in a session of its own, so that signals to xend's terminal or
/// process group do not reach it and it outlives xend. (A process group of its own is
/// not enough: when xend dies, a group with a stopped member that becomes orphaned is
/// sent SIGHUP by the kernel, which would kill a VMM someone had stopped.) Values are
/// passed as `--flag=value`, so that a name or a command line can never be taken for
/// a flag.
pub fn spawn(l: &Launch) -> std::io::Result<tokio::process::Child> {
    std::fs::create_dir_all(&l.files.dir)?;
    let _ = std::fs::remove_file(l.files.exit_file());
    // The VMM writes the console log itself (rate-limited, size-capped, rotated).
    let _ = std::fs::remove_file(l.files.console());
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(l.files.vmm_log())?;
    let mut cmd = tokio::process::Command::new(l.vmm);
    let path_arg = |flag: &str, p: &Path| {
        let mut a = std::ffi::OsString::from(format!("--{flag}="));
        a.push(p.as_os_str());
        a
    };
    cmd.arg("run")
        .arg(format!("--name={}", l.name))
        .arg(format!("--domid={}", l.domid))
        .arg(format!("--uuid={}", l.uuid))
        .arg(format!("--memory={}", l.memory_mib))
        .arg(format!("--vcpus={}", l.vcpus))
        .arg(format!("--cmdline={}", l.cmdline))
        .arg(path_arg("control", &l.files.control()))
        .arg(path_arg("xenstore-socket", l.xenstore_socket))
        .arg(path_arg("exit-file", &l.files.exit_file()))
        .arg(path_arg("console-log", &l.files.console()));
    if let Some(image) = l.restore {
        cmd.arg(path_arg("restore", image));
    } else {
        if let Some(k) = l.kernel {
            cmd.arg(format!("--kernel={k}"));
        }
        if let Some(r) = l.ramdisk {
            cmd.arg(format!("--ramdisk={r}"));
        }
    }
    if l.paused {
        cmd.arg("--paused");
    }
    // Always given, so that disks can be hot-plugged later (`attach-disk`); the VMM
    // connects to it only once it has a disk.
    cmd.arg(path_arg("xenstored-socket", l.xenstored_socket));
    for d in &l.disks {
        let mode = if d.writable { "w" } else { "r" };
        let direct = if d.direct { ",direct" } else { "" };
        cmd.arg(format!("--disk={}:{mode}{direct}:{}", d.devid, d.path));
    }
    for v in &l.vifs {
        cmd.arg(v.arg());
    }
    match l.stdin {
        Some(fd) => cmd.stdin(Stdio::from(fd.try_clone()?)),
        None => cmd.stdin(Stdio::null()),
    };
    cmd.stdout(Stdio::null()).stderr(log).kill_on_drop(false);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent; it runs
    // in the child between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("control socket timed out")]
    Timeout,
    #[error("malformed control reply: {0}")]
    Malformed(#[from] rxen_vmm_api::DecodeError),
    #[error("the VMM refused ({kind:?}): {message}")]
    Refused { kind: ErrorKind, message: String },
    #[error("unexpected control reply to {0:?}")]
    Unexpected(&'static str),
}

/// Sends one control request and returns the reply (errors from the VMM included).
pub async fn control(socket: &Path, request: &Request) -> Result<Reply, ControlError> {
    control_within(socket, request, CONTROL_TIMEOUT).await
}

/// Asks a VMM to save its domain to `path` (`Request::Save`); returns the pages
/// written and how long the domain was paused. A save writes all of guest memory, so
/// it gets `timeout` rather than the usual control deadline.
pub async fn save(
    socket: &Path,
    path: &Path,
    config: String,
    resume: bool,
    timeout: Duration,
) -> Result<(u64, u64), ControlError> {
    let req = Request::Save {
        path: path.to_string_lossy().into_owned(),
        config,
        resume,
    };
    match control_within(socket, &req, timeout).await? {
        Reply::Saved { pages, paused_ms } => Ok((pages, paused_ms)),
        _ => Err(ControlError::Unexpected("save")),
    }
}

/// Asks a VMM to migrate its domain to the relocation server at `address`
/// (`Request::Migrate`); `progress` hears each pre-copy round as `(round, pages sent,
/// pages dirty)`; with `ask_suspend` the guest takes part in the suspend protocol and
/// `ask_suspend` is called when the VMM wants it suspended (after the pre-copy);
/// returns the figures once the target runs the domain.
#[allow(clippy::too_many_arguments)]
pub async fn migrate(
    socket: &Path,
    address: String,
    token: String,
    config: String,
    live: bool,
    timeout: Duration,
    mut progress: impl FnMut(u32, u64, u64),
    ask_suspend: Option<&mut (dyn FnMut() + Send)>,
) -> Result<rxen_vmm_api::MigrationFigures, ControlError> {
    let suspend_guest = ask_suspend.is_some();
    let mut ask_suspend = ask_suspend;
    let req = Request::Migrate {
        address,
        token,
        config,
        live,
        suspend_guest,
    };
    let fut = async {
        let s = UnixStream::connect(socket).await?;
        let (r, mut w) = s.into_split();
        w.write_all(encode(&req).as_bytes()).await?;
        let mut r = BufReader::new(r);
        loop {
            let mut line = String::new();
            (&mut r)
                .take(rxen_vmm_api::MAX_LINE as u64 + 2)
                .read_line(&mut line)
                .await?;
            match decode::<Reply>(&line, rxen_vmm_api::MAX_LINE)? {
                Reply::MigrationProgress {
                    round,
                    pages,
                    dirty,
                } => progress(round, pages, dirty),
                Reply::MigrationSuspendGuest => {
                    if let Some(ask) = ask_suspend.as_mut() {
                        ask();
                    }
                }
                other => return Ok::<_, ControlError>(other),
            }
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(ControlError::Timeout),
        Ok(Err(e)) => Err(e),
        Ok(Ok(Reply::Error { kind, message })) => Err(ControlError::Refused { kind, message }),
        Ok(Ok(Reply::Migrated(figures))) => Ok(figures),
        Ok(Ok(_)) => Err(ControlError::Unexpected("migrate")),
    }
}

async fn control_within(
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Reply, ControlError> {
    let fut = async {
        let s = UnixStream::connect(socket).await?;
        let (r, mut w) = s.into_split();
        w.write_all(encode(request).as_bytes()).await?;
        let mut line = String::new();
        BufReader::new(r)
            .take(rxen_vmm_api::MAX_LINE as u64 + 2)
            .read_line(&mut line)
            .await?;
        Ok::<_, ControlError>(decode::<Reply>(&line, rxen_vmm_api::MAX_LINE)?)
    };
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(ControlError::Timeout),
        Ok(Err(e)) => Err(e),
        Ok(Ok(Reply::Error { kind, message })) => Err(ControlError::Refused { kind, message }),
        Ok(Ok(reply)) => Ok(reply),
    }
}

/// Sends a request that is answered with [`Reply::Done`].
pub async fn command(socket: &Path, request: Request) -> Result<(), ControlError> {
    match control(socket, &request).await? {
        Reply::Done => Ok(()),
        _ => Err(ControlError::Unexpected("command")),
    }
}

/// Asks a VMM for its domain's status.
pub async fn status(socket: &Path) -> Result<Status, ControlError> {
    match control(socket, &Request::Status).await? {
        Reply::Status(s) => Ok(s),
        _ => Err(ControlError::Unexpected("status")),
    }
}

/// Asks a VMM what the frontends of its connected devices negotiated.
pub async fn device_states(socket: &Path) -> Result<rxen_vmm_api::ConnectedDevices, ControlError> {
    match control(socket, &Request::DeviceStates).await? {
        Reply::DeviceStates(d) => Ok(d),
        _ => Err(ControlError::Unexpected("device-states")),
    }
}

/// How a VMM recorded its domain's end, if it did.
pub fn read_exit(files: &DomainFiles) -> Option<ExitRecord> {
    let text = std::fs::read_to_string(files.exit_file()).ok()?;
    decode(&text, rxen_vmm_api::MAX_LINE).ok()
}

/// Records an ending for a VMM that could not write its own (it died).
pub fn write_exit(files: &DomainFiles, record: &ExitRecord) -> std::io::Result<()> {
    std::fs::write(files.exit_file(), encode(record))
}

/// The last `max` bytes of a domain's console (the current log and, if that is
/// shorter, the end of the rotated one), read with seeks: memory stays bounded by
/// `max` however large the files are.
pub fn console_tail(files: &DomainFiles, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let tail_of = |path: &Path, n: u64| -> std::io::Result<Vec<u8>> {
        let mut f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(n)))?;
        let mut out = Vec::new();
        f.take(n).read_to_end(&mut out)?;
        Ok(out)
    };
    let current = tail_of(&files.console(), max)?;
    let missing = max.saturating_sub(current.len() as u64);
    if missing == 0 {
        return Ok(current);
    }
    let rotated = files.console().with_extension("log.1");
    let mut out = tail_of(&rotated, missing)?;
    out.extend_from_slice(&current);
    Ok(out)
}
