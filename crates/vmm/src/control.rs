//! The VMM's control socket: how the toolstack (xend) manages a running domain
//! without being its parent, so that it can be restarted and re-adopt the domain.
//!
//! Protocol: one JSON object per line each way. Requests `{"op": "status"}`,
//! `"pause"`, `"unpause"`, `"destroy"`, `"debug-key"`, and
//! `{"op": "console-input", "data": "text"}`; replies `{"ok": true, ...}` or
//! `{"ok": false, "error": "..."}`. Anything else (bad JSON, unknown op, over-long
//! lines) gets an error reply; the socket is mode 0600.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::domain::DomainShared;
use crate::exit::DomainExit;
use crate::vcpu::VcpuState;

/// Longest request line.
const MAX_LINE: usize = 4096;

#[derive(Deserialize)]
struct Request {
    op: String,
    /// Text for `console-input`.
    #[serde(default)]
    data: Option<String>,
}

/// Most bytes one `console-input` request may carry.
pub const MAX_CONSOLE_INPUT: usize = 2048;

/// State of one vCPU, as reported by `status`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct VcpuStatus {
    pub id: u32,
    pub state: String,
    pub paused: bool,
    pub guest_ns: u64,
    pub hypercalls: u64,
}

/// Reply to `status`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Status {
    pub name: String,
    pub domid: u16,
    pub memory_mib: u64,
    pub uptime_ns: u64,
    pub paused: bool,
    pub vcpus: Vec<VcpuStatus>,
    pub pid: u32,
}

/// Snapshot of a domain's state.
pub fn status(dom: &DomainShared) -> Status {
    let vcpus: Vec<VcpuStatus> = dom
        .vcpus
        .iter()
        .map(|v| {
            let s = v.lock();
            VcpuStatus {
                id: v.id,
                state: match s.state {
                    VcpuState::Down => "down",
                    VcpuState::Running => "running",
                    VcpuState::Blocked => "blocked",
                }
                .into(),
                paused: s.paused,
                guest_ns: v.guest_ns.load(std::sync::atomic::Ordering::Relaxed),
                hypercalls: v.hypercalls.load(std::sync::atomic::Ordering::Relaxed),
            }
        })
        .collect();
    Status {
        name: dom.config.name.clone(),
        domid: dom.config.domid,
        memory_mib: dom.config.memory_mib,
        uptime_ns: dom.clock.now_ns(),
        paused: vcpus.iter().all(|v| v.paused),
        vcpus,
        pid: std::process::id(),
    }
}

fn answer(dom: &DomainShared, line: &str) -> serde_json::Value {
    let req: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return serde_json::json!({"ok": false, "error": format!("bad request: {e}")}),
    };
    match req.op.as_str() {
        "status" => serde_json::json!({"ok": true, "status": status(dom)}),
        "pause" => {
            dom.pause();
            serde_json::json!({"ok": true})
        }
        "unpause" => {
            dom.unpause();
            serde_json::json!({"ok": true})
        }
        "destroy" => {
            dom.request_exit(DomainExit::Destroyed);
            serde_json::json!({"ok": true})
        }
        "console-input" => match req.data {
            Some(d) if d.len() <= MAX_CONSOLE_INPUT => {
                dom.console_input(d.as_bytes());
                serde_json::json!({"ok": true})
            }
            Some(_) => {
                serde_json::json!({"ok": false, "error": format!("console input over {MAX_CONSOLE_INPUT} bytes")})
            }
            None => serde_json::json!({"ok": false, "error": "console-input needs \"data\""}),
        },
        "debug-key" => {
            dom.raise_debug_virq();
            serde_json::json!({"ok": true})
        }
        other => serde_json::json!({"ok": false, "error": format!("unknown op {other:?}")}),
    }
}

fn serve_conn(dom: Arc<DomainShared>, s: UnixStream) {
    let Ok(mut w) = s.try_clone() else { return };
    let mut r = BufReader::new(s);
    let mut line = String::new();
    loop {
        line.clear();
        match (&mut r).take(MAX_LINE as u64 + 1).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(n) if n > MAX_LINE => {
                let _ = writeln!(
                    w,
                    "{}",
                    serde_json::json!({"ok": false, "error": "request line too long"})
                );
                return;
            }
            Ok(_) => {}
        }
        let reply = answer(&dom, line.trim());
        if writeln!(w, "{reply}").is_err() {
            return;
        }
    }
}

use std::io::Read;

/// Serves the control socket at `path` for the life of the domain.
pub fn start(dom: Arc<DomainShared>, path: &Path) -> Result<(), String> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)
        .map_err(|e| format!("binding control socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name(format!("{}-control", dom.config.name))
        .spawn(move || {
            for s in l.incoming().flatten() {
                let d = dom.clone();
                let _ = std::thread::Builder::new()
                    .name("control-conn".into())
                    .spawn(move || serve_conn(d, s));
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}
