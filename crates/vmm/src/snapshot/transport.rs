//! Live migration's connection: the VMM sends its domain to a relocation server
//! (`rxen_vmm_api::relocation`): connect, [`Hello`], wait for `ready`, the image
//! ([`super::live::send`], which quiesces the device backends at the stop-and-copy),
//! then wait for `running`. Only then is the migration done and the domain stays
//! paused, its backends quiesced, for the toolstack to destroy; on any failure the
//! backends serve their rings again and the domain is unpaused (unless it was paused
//! before) and runs on here.
//!
//! A target that started the domain but whose `running` never arrives (the
//! connection broke at that moment) leaves two running copies: the one here resumes.
//! As with Xen, the toolstack cannot tell; disks on shared storage would then be
//! written by both, so the operator must destroy one (`docs/migration.md`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use rxen_vmm_api::relocation::{Answer, Hello, MAX_RELOCATION_LINE};
use rxen_vmm_api::MigrationFigures;

use super::devices::{NoBackends, QuiesceBackends};
use super::live::{send, LiveOptions};
use super::save::SaveError;
use crate::domain::DomainShared;

/// How long the connection and the target's first answer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the target may take from the end of the image to its domain running.
const RUNNING_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a single write to the target may block (a stalled peer).
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a migration failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("connecting to {address}: {detail}")]
    Connect { address: String, detail: String },
    #[error("the target refused ({error}): {message}")]
    Refused { error: String, message: String },
    #[error("the target's answer: {0}")]
    Protocol(String),
    #[error("sending the domain: {0}")]
    Send(#[from] SaveError),
}

/// Migrates `dom`, which has no device backends, to the relocation server at
/// `address`; see the module doc.
pub fn migrate(
    dom: &DomainShared,
    address: &str,
    token: &str,
    config: &str,
    live: bool,
) -> Result<MigrationFigures, MigrateError> {
    migrate_with_progress(
        dom,
        address,
        token,
        config,
        live,
        &NoBackends,
        &mut |_, _, _| {},
    )
}

/// [`migrate_with_progress`] of a guest that takes part in Xen's suspend protocol:
/// once the pre-copy is over `ask_suspend` is called (the toolstack asks the guest to
/// suspend) and the guest's `SHUTDOWN_suspend` is awaited (60 s) before the
/// stop-and-copy. The target resumes it as a new domain; if the migration fails the
/// unpause cancels the suspend.
#[allow(clippy::too_many_arguments)]
pub fn migrate_suspending(
    dom: &DomainShared,
    address: &str,
    token: &str,
    config: &str,
    live: bool,
    backends: &dyn QuiesceBackends,
    progress: &mut dyn FnMut(u32, u64, u64),
    ask_suspend: &mut dyn FnMut(),
) -> Result<MigrationFigures, MigrateError> {
    migrate_inner(
        dom,
        address,
        token,
        config,
        live,
        backends,
        progress,
        Some(ask_suspend),
    )
}

/// [`migrate`] of a domain with the device `backends`, telling `progress` each
/// pre-copy round as `(round, pages sent, pages dirty)`.
pub fn migrate_with_progress(
    dom: &DomainShared,
    address: &str,
    token: &str,
    config: &str,
    live: bool,
    backends: &dyn QuiesceBackends,
    progress: &mut dyn FnMut(u32, u64, u64),
) -> Result<MigrationFigures, MigrateError> {
    migrate_inner(dom, address, token, config, live, backends, progress, None)
}

#[allow(clippy::too_many_arguments)]
fn migrate_inner(
    dom: &DomainShared,
    address: &str,
    token: &str,
    config: &str,
    live: bool,
    backends: &dyn QuiesceBackends,
    progress: &mut dyn FnMut(u32, u64, u64),
    ask_suspend: Option<&mut dyn FnMut()>,
) -> Result<MigrationFigures, MigrateError> {
    // A guest that suspended itself for the migration is paused by its suspend: if
    // the migration fails, the unpause cancels the suspend (its hypercall returns 1).
    let was_paused = dom.vcpus.iter().all(|v| v.lock().paused) && dom.suspended().is_none();
    let result = migrate_paused_on_success(
        dom,
        address,
        token,
        config,
        live,
        backends,
        progress,
        ask_suspend,
    );
    if let Err(e) = &result {
        tracing::warn!(domain = %dom.config.name, address, "migration failed: {e}");
        if !was_paused {
            dom.unpause();
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn migrate_paused_on_success(
    dom: &DomainShared,
    address: &str,
    token: &str,
    config: &str,
    live: bool,
    backends: &dyn QuiesceBackends,
    progress: &mut dyn FnMut(u32, u64, u64),
    ask_suspend: Option<&mut dyn FnMut()>,
) -> Result<MigrationFigures, MigrateError> {
    let started = Instant::now();
    let stream = connect(address)?;
    let mut reader = BufReader::new(
        stream
            .try_clone()
            .map_err(|e| MigrateError::Protocol(e.to_string()))?,
    );
    let hello = Hello {
        token: token.to_string(),
        config: config.to_string(),
        live,
    };
    let mut line =
        serde_json::to_string(&hello).map_err(|e| MigrateError::Protocol(e.to_string()))?;
    line.push('\n');
    (&stream)
        .write_all(line.as_bytes())
        .map_err(|e| MigrateError::Protocol(format!("writing the hello: {e}")))?;
    stream
        .set_read_timeout(Some(CONNECT_TIMEOUT))
        .map_err(|e| MigrateError::Protocol(e.to_string()))?;
    match read_answer(&mut reader)? {
        Answer::Ready => {}
        Answer::Refused { error, message } => return Err(MigrateError::Refused { error, message }),
        other => {
            return Err(MigrateError::Protocol(format!(
                "{other:?} before the image"
            )))
        }
    }
    let opts = if live {
        LiveOptions::default()
    } else {
        LiveOptions {
            max_rounds: 0,
            ..LiveOptions::default()
        }
    };
    let out = std::io::BufWriter::with_capacity(1 << 20, &stream);
    let mut report = send(
        dom,
        out,
        config.as_bytes(),
        opts,
        backends,
        progress,
        ask_suspend,
    )?;
    let domid = match wait_running(&stream, &mut reader) {
        Ok(domid) => domid,
        Err(e) => {
            // The domain runs on here: its backends serve their rings again first.
            backends.resume(std::mem::take(&mut report.devices));
            return Err(e);
        }
    };
    let downtime = report.paused_at.map_or(report.paused, |at| at.elapsed());
    Ok(MigrationFigures {
        target_domid: domid,
        pages_sent: report.pages_sent(),
        pages_per_round: report.pages_per_round,
        guest_pages: report.guest_pages,
        downtime_ms: downtime.as_secs_f64() * 1e3,
        stop_and_copy_ms: report.paused.as_secs_f64() * 1e3,
        total_ms: started.elapsed().as_secs_f64() * 1e3,
    })
}

/// The target's answer after the image: the new domain's id once it runs.
fn wait_running(stream: &TcpStream, reader: &mut impl BufRead) -> Result<u32, MigrateError> {
    stream
        .set_read_timeout(Some(RUNNING_TIMEOUT))
        .map_err(|e| MigrateError::Protocol(e.to_string()))?;
    match read_answer(reader)? {
        Answer::Running { domid } => Ok(domid),
        Answer::Refused { error, message } => Err(MigrateError::Refused { error, message }),
        Answer::Ready => Err(MigrateError::Protocol("a second ready".into())),
    }
}

fn connect(address: &str) -> Result<TcpStream, MigrateError> {
    let err = |detail: String| MigrateError::Connect {
        address: address.to_string(),
        detail,
    };
    let addrs: Vec<_> = address
        .to_socket_addrs()
        .map_err(|e| err(e.to_string()))?
        .collect();
    let mut last = String::from("no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                s.set_write_timeout(Some(WRITE_TIMEOUT))
                    .map_err(|e| err(e.to_string()))?;
                return Ok(s);
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(err(last))
}

/// One answer line (at most [`MAX_RELOCATION_LINE`] bytes).
fn read_answer(r: &mut impl BufRead) -> Result<Answer, MigrateError> {
    let mut line = String::new();
    let n = Read::take(&mut *r, MAX_RELOCATION_LINE as u64 + 1)
        .read_line(&mut line)
        .map_err(|e| MigrateError::Protocol(format!("reading: {e}")))?;
    if n == 0 {
        return Err(MigrateError::Protocol(
            "the target closed the connection".into(),
        ));
    }
    if !line.ends_with('\n') {
        return Err(MigrateError::Protocol("an answer line too long".into()));
    }
    serde_json::from_str(line.trim_end()).map_err(|e| MigrateError::Protocol(e.to_string()))
}
