//! Starting `xen-vmm` processes and talking to their control sockets.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

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

/// What the VMM needs to start a domain.
pub struct Launch<'a> {
    pub vmm: &'a Path,
    pub domid: u32,
    pub name: &'a str,
    pub uuid: &'a str,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub kernel: Option<&'a str>,
    pub cmdline: &'a str,
    pub xenstore_socket: &'a Path,
    pub files: &'a DomainFiles,
}

/// Starts the VMM in its own process group (so that signals to xend do not reach it
/// and it outlives xend). Returns its pid and a handle to reap it while xend lives.
pub fn spawn(l: &Launch) -> std::io::Result<tokio::process::Child> {
    std::fs::create_dir_all(&l.files.dir)?;
    let _ = std::fs::remove_file(l.files.exit_file());
    let console = std::fs::File::create(l.files.console())?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(l.files.vmm_log())?;
    let mut cmd = tokio::process::Command::new(l.vmm);
    cmd.arg("run")
        .args([
            "--name",
            l.name,
            "--domid",
            &l.domid.to_string(),
            "--uuid",
            l.uuid,
        ])
        .args([
            "--memory",
            &l.memory_mib.to_string(),
            "--vcpus",
            &l.vcpus.to_string(),
        ])
        .args(["--cmdline", l.cmdline])
        .arg("--control")
        .arg(l.files.control())
        .arg("--xenstore-socket")
        .arg(l.xenstore_socket)
        .arg("--exit-file")
        .arg(l.files.exit_file());
    if let Some(k) = l.kernel {
        cmd.args(["--kernel", k]);
    }
    cmd.stdin(Stdio::null())
        .stdout(console)
        .stderr(log)
        .process_group(0)
        .kill_on_drop(false);
    cmd.spawn()
}

/// Sends one control request and returns the reply.
pub async fn control(socket: &Path, op: &str) -> Result<Value, String> {
    control_request(socket, serde_json::json!({"op": op})).await
}

/// Sends a control request object and returns the reply.
pub async fn control_request(socket: &Path, request: Value) -> Result<Value, String> {
    let fut = async {
        let s = UnixStream::connect(socket)
            .await
            .map_err(|e| format!("control socket: {e}"))?;
        let (r, mut w) = s.into_split();
        w.write_all(format!("{request}\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(r)
            .read_line(&mut line)
            .await
            .map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&line).map_err(|e| format!("control reply: {e}"))?;
        if v.get("ok") == Some(&Value::Bool(true)) {
            Ok(v)
        } else {
            Err(v
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("control request failed")
                .to_string())
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), fut)
        .await
        .map_err(|_| "control socket timed out".to_string())?
}

/// Is process `pid` alive?
pub fn pid_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    pid != 0 && unsafe { libc::kill(pid as i32, 0) } == 0
}

/// How a VMM recorded its domain's end (`kind` as in `DomainExit::kind`).
pub fn read_exit(files: &DomainFiles) -> Option<String> {
    let text = std::fs::read_to_string(files.exit_file()).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v.get("kind").and_then(Value::as_str).map(String::from)
}
