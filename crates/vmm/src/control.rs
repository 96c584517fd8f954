//! The VMM's control socket: how the toolstack (xend) manages a running domain
//! without being its parent, so that it can be restarted and re-adopt the domain.
//!
//! The protocol is `rxen_vmm_api`'s: one JSON [`Request`] per line in (tagged by
//! `op`: `status`, `pause`, `unpause`, `destroy`, `debug-key`, `console-input` with
//! `data`, `console-tail` with `max_bytes`), one [`Reply`] per line out (tagged by
//! `reply`: `done`, `status` with the [`Status`], `console-tail` with the newest
//! console output and its counters, or `error` with an [`ErrorKind`] and a message).
//! Status and console tail are answered after the domain ended too. A line over
//! [`MAX_REQUEST_LINE`] bytes or console input over [`MAX_CONSOLE_INPUT`] bytes gets
//! `too_large`; anything that is not a request (bad JSON or UTF-8, unknown op, missing
//! field) gets `bad_request`; pause, unpause, console input and the debug key after
//! the domain ended get `wrong_state`. `attach-disk` and `detach-disk` go to the block
//! backend ([`BlockBackend`]), `attach-vif` and `detach-vif` to the network backend
//! ([`NetBackend`]); what they refuse (a disk that cannot be opened, a TAP that cannot
//! be created, a device number in use or unknown, no xenstored socket) gets `device`.
//! `save` with `path`, `config` and `resume` pauses the domain, quiesces its device
//! backends and writes it as a saved image with their state ([`crate::snapshot`];
//! reply `saved` with the pages written and the pause time; with `resume` the
//! backends serve their rings again and the domain runs on); a domain that cannot be
//! saved, or an image that cannot be written, gets `save` and the domain runs on as
//! it was. `migrate` with `address`, `token`, `config` and `live` sends the domain to
//! a relocation server ([`crate::snapshot::transport`]; `migration-progress` lines
//! for each pre-copy round, then the reply `migrated` with the figures, the domain
//! left paused for the toolstack to destroy); its device backends are quiesced at
//! the stop-and-copy as for a save and their state travels in the stream, and any
//! failure gets `migrate`, the backends serve again and the domain runs on. The
//! socket is mode 0600.
//!
//! This module only translates requests into [`DomainShared`] operations; it owns no
//! domain state.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rxen_abi::vcpu::{RUNSTATE_BLOCKED, RUNSTATE_OFFLINE, RUNSTATE_RUNNABLE, RUNSTATE_RUNNING};
use rxen_vmm_api::{
    decode, encode, ConsoleTail, DecodeError, ErrorKind, Reply, Request, RunstateTimes, Status,
    VcpuRunState, VcpuStatus, MAX_CONSOLE_INPUT, MAX_CONSOLE_TAIL, MAX_LINE, MAX_REQUEST_LINE,
};

use crate::blkback::hotplug::BlockBackend;
use crate::domain::DomainShared;
use crate::exit::DomainExit;
use crate::netback::{NetBackend, VifConfig};
use crate::snapshot::devices::{NoBackends, QuiesceBackends};
use crate::snapshot::DeviceStates;
use crate::vcpu::{VcpuControl, VcpuState};

/// The device backends that hot-plug requests go to.
pub struct DeviceBackends {
    pub block: Arc<BlockBackend>,
    pub net: Arc<NetBackend>,
}

fn vcpu_status(v: &VcpuControl, now: u64) -> VcpuStatus {
    let (state, paused, runstate) = {
        let s = v.lock();
        let state = match s.state {
            VcpuState::Down => VcpuRunState::Down,
            VcpuState::Running => VcpuRunState::Running,
            VcpuState::Blocked => VcpuRunState::Blocked,
        };
        (state, s.paused, s.runstate.snapshot(now))
    };
    VcpuStatus {
        id: v.id,
        state,
        paused,
        cpu_ns: v.thread.cpu_ns(),
        runstate: RunstateTimes {
            running_ns: runstate.time[RUNSTATE_RUNNING as usize],
            runnable_ns: runstate.time[RUNSTATE_RUNNABLE as usize],
            blocked_ns: runstate.time[RUNSTATE_BLOCKED as usize],
            offline_ns: runstate.time[RUNSTATE_OFFLINE as usize],
        },
        hypercalls: v.hypercalls.load(Ordering::Relaxed),
        host_cpu: v.thread.host_cpu(),
    }
}

/// Snapshot of a domain's state.
pub fn status(dom: &DomainShared) -> Status {
    let now = dom.clock.now_ns();
    let vcpus: Vec<VcpuStatus> = dom.vcpus.iter().map(|v| vcpu_status(v, now)).collect();
    let counters = dom.console.counters();
    Status {
        name: dom.config.name.clone(),
        domid: dom.config.domid,
        memory_mib: dom.config.memory_mib,
        uptime_ns: now,
        paused: vcpus.iter().all(|v| v.paused),
        vcpus,
        pid: std::process::id(),
        boot: dom.boot.report,
        console_bytes: counters.total,
        console_dropped_bytes: counters.dropped,
        suspended: dom.suspended().is_some(),
    }
}

/// The newest console output, at most `max_bytes` (and [`MAX_CONSOLE_TAIL`]), cut
/// further from the front until the reply line fits [`MAX_LINE`].
pub fn console_tail(dom: &DomainShared, max_bytes: u64) -> ConsoleTail {
    let max = max_bytes.min(MAX_CONSOLE_TAIL) as usize;
    let (bytes, counters) = dom.console.tail(max);
    fit_line(ConsoleTail {
        data: String::from_utf8_lossy(&bytes).into_owned(),
        total_bytes: counters.total,
        dropped_bytes: counters.dropped,
    })
}

/// Cuts the oldest output of `tail` until its reply line fits [`MAX_LINE`].
fn fit_line(mut tail: ConsoleTail) -> ConsoleTail {
    loop {
        let len = encode(&Reply::ConsoleTail(tail.clone())).len();
        if len <= MAX_LINE {
            return tail;
        }
        // Each character escapes to at most 6 bytes: cutting excess / 6 + 1 bytes
        // (rounded to a character boundary) makes progress on every round.
        let mut cut = ((len - MAX_LINE) / 6 + 1).min(tail.data.len());
        while !tail.data.is_char_boundary(cut) {
            cut += 1;
        }
        tail.data.drain(..cut);
    }
}

/// Carries out one request line.
pub fn answer(dom: &DomainShared, line: &str) -> Reply {
    let (reply, then) = answer_then(dom, None, line, &mut |_| {});
    then.run(dom);
    reply
}

/// What is left to do after a reply was sent.
enum Then {
    Nothing,
    /// End the domain: done after the reply is written, because the VMM process may
    /// exit as soon as the domain ends, and the reply would be lost with it.
    Destroy,
}

impl Then {
    fn run(self, dom: &DomainShared) {
        if let Then::Destroy = self {
            dom.request_exit(DomainExit::Destroyed);
        }
    }
}

/// The reply to one request line, and what to do once it has been sent.
fn answer_then(
    dom: &DomainShared,
    devices: Option<&DeviceBackends>,
    line: &str,
    progress: &mut dyn FnMut(Reply),
) -> (Reply, Then) {
    let req: Request = match decode(line, MAX_REQUEST_LINE) {
        Ok(Request::Destroy) => return (Reply::Done, Then::Destroy),
        Ok(r) => r,
        Err(e @ DecodeError::TooLong { .. }) => {
            return (
                Reply::error(ErrorKind::TooLarge, e.to_string()),
                Then::Nothing,
            )
        }
        Err(e) => {
            return (
                Reply::error(ErrorKind::BadRequest, e.to_string()),
                Then::Nothing,
            )
        }
    };
    (answer_request(dom, devices, req, progress), Then::Nothing)
}

fn answer_request(
    dom: &DomainShared,
    devices: Option<&DeviceBackends>,
    req: Request,
    progress: &mut dyn FnMut(Reply),
) -> Reply {
    let ended = dom.exit_reason();
    match req {
        Request::Status => Reply::Status(status(dom)),
        Request::ConsoleTail { max_bytes } => Reply::ConsoleTail(console_tail(dom, max_bytes)),
        Request::Destroy => {
            dom.request_exit(DomainExit::Destroyed);
            Reply::Done
        }
        _ if ended.is_some() => Reply::error(
            ErrorKind::WrongState,
            format!(
                "the domain has ended ({})",
                ended.map(|e| e.to_string()).unwrap_or_default()
            ),
        ),
        Request::Pause => {
            dom.pause();
            Reply::Done
        }
        Request::Unpause => {
            dom.unpause();
            Reply::Done
        }
        Request::DebugKey => {
            dom.raise_debug_virq();
            Reply::Done
        }
        Request::ConsoleInput { data } if data.len() > MAX_CONSOLE_INPUT => Reply::error(
            ErrorKind::TooLarge,
            format!(
                "console input of {} bytes is over the {MAX_CONSOLE_INPUT}-byte limit",
                data.len()
            ),
        ),
        Request::ConsoleInput { data } => {
            dom.console_input(data.as_bytes());
            Reply::Done
        }
        Request::AttachDisk {
            devid,
            mode,
            path,
            direct,
        } => {
            let writable = mode == rxen_vmm_api::DiskMode::ReadWrite;
            let path = std::path::Path::new(&path);
            device_reply(devices.map(|d| d.block.attach(devid, writable, direct, path)))
        }
        Request::DetachDisk { devid, force } => {
            device_reply(devices.map(|d| d.block.detach(devid, force)))
        }
        Request::AttachVif {
            devid,
            mac,
            tap,
            bridge,
            ips,
        } => match vif_config(devid, mac, tap, bridge, &ips) {
            Ok(v) => device_reply(devices.map(|d| d.net.attach(&v))),
            Err(e) => Reply::error(ErrorKind::Device, e),
        },
        Request::DetachVif { devid, force } => {
            device_reply(devices.map(|d| d.net.detach(devid, force)))
        }
        Request::Save {
            path,
            config,
            resume,
        } => save_reply(dom, devices, &path, config.as_bytes(), resume),
        Request::Migrate {
            address,
            token,
            config,
            live,
            suspend_guest,
        } => {
            // Both callbacks write on the same connection, one after the other.
            let progress = std::cell::RefCell::new(progress);
            let mut rounds = |round, pages, dirty| {
                (progress.borrow_mut())(Reply::MigrationProgress {
                    round,
                    pages,
                    dirty,
                })
            };
            let mut ask_suspend = || (progress.borrow_mut())(Reply::MigrationSuspendGuest);
            let result = if suspend_guest {
                crate::snapshot::migrate_suspending(
                    dom,
                    &address,
                    &token,
                    &config,
                    live,
                    backends(devices),
                    &mut rounds,
                    &mut ask_suspend,
                )
            } else {
                crate::snapshot::migrate_with_progress(
                    dom,
                    &address,
                    &token,
                    &config,
                    live,
                    backends(devices),
                    &mut rounds,
                )
            };
            match result {
                Ok(figures) => Reply::Migrated(figures),
                Err(e) => Reply::error(ErrorKind::Migrate, e.to_string()),
            }
        }
        Request::DeviceStates => device_states(devices),
        Request::Stats => Reply::Stats(dom.stats.snapshot()),
    }
}

/// Carries out [`Request::DeviceStates`]: what the frontend of each connected device
/// negotiated, from its backend.
fn device_states(devices: Option<&DeviceBackends>) -> Reply {
    let Some(d) = devices else {
        return Reply::DeviceStates(Default::default());
    };
    let vbds = match d.block.frontends() {
        Ok(v) => v,
        Err(e) => return Reply::error(ErrorKind::Device, format!("block backend: {e}")),
    };
    let vifs = match d.net.frontends() {
        Ok(v) => v,
        Err(e) => return Reply::error(ErrorKind::Device, format!("network backend: {e}")),
    };
    Reply::DeviceStates(rxen_vmm_api::ConnectedDevices { vbds, vifs })
}

/// The backends the snapshot code quiesces and resumes (none without backends).
fn backends(devices: Option<&DeviceBackends>) -> &dyn QuiesceBackends {
    match devices {
        Some(d) => d,
        None => &NoBackends,
    }
}

/// A save and a migration's stop-and-copy quiesce the block and the network
/// backend at once (each xenbus thread takes the command at its next poll: in
/// parallel, the domain's pause waits for one poll, not two); the domain is paused.
impl QuiesceBackends for DeviceBackends {
    fn quiesce(&self) -> Result<DeviceStates, String> {
        let (vbds, vifs) = std::thread::scope(|s| {
            let net = s.spawn(|| self.net.quiesce().map_err(|e| e.to_string()));
            let vbds = self.block.quiesce().map_err(|e| e.to_string());
            let vifs = net
                .join()
                .unwrap_or_else(|_| Err("its quiescing thread panicked".to_string()));
            (vbds, vifs)
        });
        match (vbds, vifs) {
            (Ok(vbds), Ok(vifs)) => Ok(DeviceStates { vbds, vifs }),
            (Ok(vbds), Err(e)) => {
                self.resume(DeviceStates {
                    vbds,
                    vifs: Vec::new(),
                });
                Err(format!("quiescing the network backend: {e}"))
            }
            (Err(e), vifs) => {
                if let Ok(vifs) = vifs {
                    self.resume(DeviceStates {
                        vbds: Vec::new(),
                        vifs,
                    });
                }
                Err(format!("quiescing the block backend: {e}"))
            }
        }
    }

    fn resume(&self, saved: DeviceStates) {
        if let Err(e) = self.block.resume(saved.vbds) {
            tracing::warn!("resuming the block backend: {e}");
        }
        if let Err(e) = self.net.resume(saved.vifs) {
            tracing::warn!("resuming the network backend: {e}");
        }
    }
}

/// Carries out [`Request::Save`]: the image is written to a new file next to `path`
/// and renamed over it once complete, so a failed save never leaves half an image.
///
/// The domain is paused first, then its device backends are quiesced (every block
/// request taken answered, rings unmapped) and their state goes into the image. When
/// the domain runs on (`resume`, or a failed save) the backends serve the same rings
/// again from that state.
fn save_reply(
    dom: &DomainShared,
    devices: Option<&DeviceBackends>,
    path: &str,
    config: &[u8],
    resume: bool,
) -> Reply {
    use std::os::unix::fs::OpenOptionsExt;
    // A guest that suspended itself is paused for this save: when the domain runs on
    // (`-c`, or a failed save) its suspend is cancelled by the unpause.
    let was_paused = dom.vcpus.iter().all(|v| v.lock().paused) && dom.suspended().is_none();
    let path = Path::new(path);
    let partial = path.with_extension("partial");
    dom.pause();
    let saved_devices = match backends(devices).quiesce() {
        Ok(s) => s,
        Err(message) => {
            if !was_paused {
                dom.unpause();
            }
            tracing::warn!(domain = %dom.config.name, "save failed: {message}");
            return Reply::error(ErrorKind::Save, message);
        }
    };
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|e| format!("creating {}: {e}", partial.display()))
        .and_then(|f| {
            let mut out = std::io::BufWriter::with_capacity(1 << 20, f);
            let report = crate::snapshot::save_with_devices(dom, &mut out, config, &saved_devices)
                .map_err(|e| e.to_string())?;
            let f = out.into_inner().map_err(|e| e.to_string())?;
            f.sync_all().map_err(|e| e.to_string())?;
            std::fs::rename(&partial, path).map_err(|e| format!("renaming into place: {e}"))?;
            Ok(report)
        });
    match result {
        Ok(report) => {
            if resume {
                backends(devices).resume(saved_devices);
                if !was_paused {
                    dom.unpause();
                }
            }
            Reply::Saved {
                pages: report.pages,
                paused_ms: report.elapsed.as_millis() as u64,
            }
        }
        Err(message) => {
            let _ = std::fs::remove_file(&partial);
            backends(devices).resume(saved_devices);
            if !was_paused {
                dom.unpause();
            }
            tracing::warn!(domain = %dom.config.name, "save failed: {message}");
            Reply::error(ErrorKind::Save, message)
        }
    }
}

/// The vif an `attach-vif` request describes, each field checked as `--vif` checks
/// it.
fn vif_config(
    devid: u32,
    mac: String,
    tap: String,
    bridge: Option<String>,
    ips: &[String],
) -> Result<VifConfig, String> {
    VifConfig::checked(devid, &mac, &tap, bridge.as_deref(), ips)
}

fn device_reply<E: std::fmt::Display>(r: Option<Result<(), E>>) -> Reply {
    match r {
        Some(Ok(())) => Reply::Done,
        Some(Err(e)) => Reply::error(ErrorKind::Device, e.to_string()),
        None => Reply::error(ErrorKind::Device, "this VMM has no device backends"),
    }
}

/// One line read from a peer.
enum Line {
    End,
    Text(String),
    NotUtf8,
    /// Over the limit; the rest of it was discarded.
    TooLong,
}

fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<Line> {
    use std::io::Read;
    buf.clear();
    let n = r
        .by_ref()
        .take(MAX_REQUEST_LINE as u64 + 2)
        .read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(Line::End);
    }
    let complete = buf.last() == Some(&b'\n');
    let body = buf.strip_suffix(b"\n").unwrap_or(buf);
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    if body.len() > MAX_REQUEST_LINE {
        // Skip to the end of the over-long line so the next request is read whole.
        if !complete {
            loop {
                let chunk = r.fill_buf()?;
                if chunk.is_empty() {
                    break;
                }
                match chunk.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        r.consume(i + 1);
                        break;
                    }
                    None => {
                        let len = chunk.len();
                        r.consume(len);
                    }
                }
            }
        }
        return Ok(Line::TooLong);
    }
    match std::str::from_utf8(body) {
        Ok(s) => Ok(Line::Text(s.to_owned())),
        Err(_) => Ok(Line::NotUtf8),
    }
}

fn serve_conn(dom: Arc<DomainShared>, devices: Option<Arc<DeviceBackends>>, s: UnixStream) {
    let Ok(mut w) = s.try_clone() else { return };
    let mut r = BufReader::new(s);
    let mut buf = Vec::new();
    loop {
        let (reply, then) = match read_line(&mut r, &mut buf) {
            Ok(Line::End) | Err(_) => return,
            Ok(Line::Text(line)) => {
                // Progress lines go out as they come (a migration's rounds); a
                // writer that fails loses them, not the request.
                let mut progress = |r: Reply| {
                    let _ = w.write_all(encode(&r).as_bytes());
                };
                answer_then(&dom, devices.as_deref(), &line, &mut progress)
            }
            Ok(Line::NotUtf8) => (
                Reply::error(ErrorKind::BadRequest, "request is not UTF-8"),
                Then::Nothing,
            ),
            Ok(Line::TooLong) => (
                Reply::error(
                    ErrorKind::TooLarge,
                    format!("request line over {MAX_REQUEST_LINE} bytes"),
                ),
                Then::Nothing,
            ),
        };
        let sent = w.write_all(encode(&reply).as_bytes()).is_ok();
        // A destroy is carried out even if its reply could not be sent.
        then.run(&dom);
        if !sent {
            return;
        }
    }
}

/// Serves the control socket at `path` for the life of the domain; device requests go
/// to `devices`.
pub fn start(
    dom: Arc<DomainShared>,
    path: &Path,
    devices: Option<Arc<DeviceBackends>>,
) -> Result<(), String> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)
        .map_err(|e| format!("binding control socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    dom.saver.store(true, Ordering::SeqCst);
    std::thread::Builder::new()
        .name(format!("{}-control", dom.config.name))
        .spawn(move || {
            for s in l.incoming().flatten() {
                let d = dom.clone();
                let b = devices.clone();
                let _ = std::thread::Builder::new()
                    .name("control-conn".into())
                    .spawn(move || serve_conn(d, b, s));
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_vif_requests_are_checked_as_vif_arguments() {
        let ok = vif_config(
            2,
            "00:16:3e:00:00:02".into(),
            "vif3.2".into(),
            None,
            &["192.0.2.9".into()],
        );
        assert_eq!(
            ok.map(|v| (v.devid, v.tap, v.ips.len())),
            Ok((2, "vif3.2".to_string(), 1))
        );
        for (mac, tap, bridge, ip) in [
            ("00:16:3e:00:00", "vif3.2", None, "192.0.2.9"),
            ("00:16:3e:00:00:02", "a/b", None, "192.0.2.9"),
            ("00:16:3e:00:00:02", "vif3.2", Some("br,x=1"), "192.0.2.9"),
            ("00:16:3e:00:00:02", "vif3.2", None, "192.0.2"),
            ("00:16:3e:00:00:02", "vif3.2,bridge=x", None, "192.0.2.9"),
        ] {
            let r = vif_config(
                2,
                mac.into(),
                tap.into(),
                bridge.map(String::from),
                &[ip.into()],
            );
            assert!(r.is_err(), "{mac} {tap} {bridge:?} {ip}: {r:?}");
        }
    }

    fn lines(input: &[u8]) -> Vec<String> {
        let mut r = std::io::BufReader::with_capacity(64, input);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            match read_line(&mut r, &mut buf).expect("read") {
                Line::End => return out,
                Line::Text(t) => out.push(t),
                Line::NotUtf8 => out.push("<not utf-8>".into()),
                Line::TooLong => out.push("<too long>".into()),
            }
        }
    }

    #[test]
    fn over_long_lines_are_skipped_whole() {
        let mut input = b"{\"op\":\"status\"}\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'a', MAX_REQUEST_LINE + 1000));
        input.extend(b"\n\xff\xfe\n{\"op\":\"pause\"}");
        assert_eq!(
            lines(&input),
            [
                "{\"op\":\"status\"}",
                "<too long>",
                "<not utf-8>",
                "{\"op\":\"pause\"}"
            ]
        );
        let exact = vec![b'b'; MAX_REQUEST_LINE];
        assert_eq!(lines(&exact), [String::from_utf8(exact).expect("ascii")]);
    }

    #[test]
    fn console_tails_fit_a_reply_line() {
        // Control characters escape to six bytes each; U+FFFD stays three.
        for data in [
            "\u{1}".repeat(MAX_CONSOLE_TAIL as usize),
            "\u{fffd}".repeat(MAX_CONSOLE_TAIL as usize / 3),
            "a".repeat(MAX_CONSOLE_TAIL as usize),
            "\u{1}\u{fffd}".repeat(20_000),
        ] {
            let t = fit_line(ConsoleTail {
                data: data.clone(),
                total_bytes: u64::MAX,
                dropped_bytes: u64::MAX,
            });
            let line = encode(&Reply::ConsoleTail(t.clone()));
            assert!(line.len() <= MAX_LINE, "{}", line.len());
            assert!(data.ends_with(&t.data), "keeps the newest output");
            assert!(
                t.data.len() * 8 > data.len().min(MAX_LINE),
                "cuts not much more than needed"
            );
        }
        let small = ConsoleTail {
            data: "hello\n".into(),
            ..Default::default()
        };
        assert_eq!(fit_line(small.clone()), small);
    }
}
