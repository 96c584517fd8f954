//! Live migration's sending side: Xen's pre-copy. The image is the one [`super::save`]
//! writes, except that memory goes in rounds while the guest runs:
//!
//! 1. dirty tracking starts ([`crate::memory::GuestRam::start_dirty_tracking`]: KVM's
//!    dirty log for the guest's writes, a bitmap for the VMM's own);
//! 2. round 1 sends every page that is not all zero;
//! 3. each further round sends the pages written since the previous one (zero or not:
//!    a page may have become zero);
//! 4. when few pages are dirty ([`LiveOptions::stop_pages`]), the rounds run out
//!    ([`LiveOptions::max_rounds`], Xen's 30) or the pages sent reach
//!    [`LiveOptions::max_factor`] times the guest's (Xen's 3x), the domain is paused,
//!    its device backends quiesced as for a save ([`super::devices::QuiesceBackends`]:
//!    every block request taken answered and flushed, rings unmapped), its vCPUs
//!    captured, and the last dirty pages (the backends' last responses among them),
//!    the `shared_info` page (which the VMM writes through a pointer the bitmap does
//!    not see) and the state with the devices' follow.
//!
//! A later `PAGE_DATA` for a pfn replaces the earlier one at the reader, so the image
//! stays a valid stream v2 that Xen's checker accepts. This module only writes; the
//! transport and the target's answer are [`super::transport`]'s.

use std::io::Write;
use std::time::{Duration, Instant};

use rxen_migration::ImageWriter;

use super::devices::{DeviceStates, QuiesceBackends};
use super::save::{capture, write_head, write_pages, write_tail, Layout, SaveError};
use crate::domain::DomainShared;

/// When the pre-copy stops.
#[derive(Clone, Copy, Debug)]
pub struct LiveOptions {
    /// Rounds while the guest runs, the first included (0: none, a paused copy as
    /// `xm migrate` without `--live`).
    pub max_rounds: u32,
    /// Stop once the pages sent reach this many times the domain's pages.
    pub max_factor: f64,
    /// Stop once at most this many pages are dirty.
    pub stop_pages: u64,
}

impl Default for LiveOptions {
    /// Xen's rules (`xc_domain_save`): 30 rounds, 3x memory, 50 pages.
    fn default() -> Self {
        Self {
            max_rounds: 30,
            max_factor: 3.0,
            stop_pages: 50,
        }
    }
}

/// What a migration sent.
#[derive(Clone, Debug, Default)]
pub struct LiveReport {
    /// Pages sent in each round; the last entry is the stop-and-copy.
    pub pages_per_round: Vec<u64>,
    /// The domain's pages (RAM and rxen's own).
    pub guest_pages: u64,
    /// How long the domain has been paused when the image was written.
    pub paused: Duration,
    /// When the domain was paused (downtime runs from here until the target runs).
    pub paused_at: Option<Instant>,
    /// From the start to the end of the image.
    pub total: Duration,
    /// What the quiesced device backends returned (sent in the image): the caller
    /// resumes them with it if the domain runs on here after all.
    pub devices: DeviceStates,
}

impl LiveReport {
    /// All pages sent.
    pub fn pages_sent(&self) -> u64 {
        self.pages_per_round.iter().sum()
    }
}

/// Writes `dom` to `out` with pre-copy rounds, leaving it paused and its device
/// backends quiesced after the last byte (the caller destroys it once the target
/// runs, or resumes the backends with [`LiveReport::devices`] and unpauses it). On an
/// error dirty tracking is off again, the backends serve again and the domain is
/// paused or running as the error found it. `progress` is told each pre-copy round
/// as `(round, pages sent, pages dirty)`.
pub fn send(
    dom: &DomainShared,
    out: impl Write,
    config: &[u8],
    opts: LiveOptions,
    backends: &dyn QuiesceBackends,
    progress: &mut dyn FnMut(u32, u64, u64),
    ask_suspend: Option<&mut dyn FnMut()>,
) -> Result<LiveReport, SaveError> {
    if dom.exit_reason().is_some() {
        return Err(SaveError::Ended);
    }
    let tracking = opts.max_rounds > 0;
    if tracking {
        dom.ram.start_dirty_tracking()?;
    }
    let result = send_rounds(dom, out, config, opts, backends, progress, ask_suspend);
    if tracking {
        dom.ram.stop_dirty_tracking();
    }
    result
}

fn send_rounds(
    dom: &DomainShared,
    out: impl Write,
    config: &[u8],
    opts: LiveOptions,
    backends: &dyn QuiesceBackends,
    progress: &mut dyn FnMut(u32, u64, u64),
    ask_suspend: Option<&mut dyn FnMut()>,
) -> Result<LiveReport, SaveError> {
    let started = Instant::now();
    let nr_pages = dom.ram.nr_pages();
    let mut report = LiveReport {
        guest_pages: nr_pages,
        ..Default::default()
    };
    let mut w = ImageWriter::new(out, config)?;
    write_head(dom, &mut w)?;
    let budget = (nr_pages as f64 * opts.max_factor) as u64;
    let mut dirty: Option<Vec<u64>> = None;
    for round in 1..=opts.max_rounds {
        let sent = match &dirty {
            None => write_pages(dom, &mut w, 0..nr_pages, true, Layout::Stream)?,
            Some(bitmap) => write_pages(
                dom,
                &mut w,
                crate::dirty::pages(bitmap),
                false,
                Layout::Stream,
            )?,
        };
        report.pages_per_round.push(sent);
        let next = dom.ram.take_dirty(false)?;
        let count: u64 = next.iter().map(|w| u64::from(w.count_ones())).sum();
        tracing::debug!(domain = %dom.config.name, round, sent, dirty = count, "pre-copy round");
        progress(round, sent, count);
        dirty = Some(next);
        if count <= opts.stop_pages || report.pages_sent() >= budget {
            break;
        }
    }
    // Stop and copy: a guest that takes part in the suspend protocol suspends itself
    // first (Xen asks at this point too), which pauses the domain.
    let asked_at = Instant::now();
    if let Some(ask) = ask_suspend {
        ask();
        wait_for_suspend(dom, SUSPEND_WAIT)?;
    }
    dom.pause();
    let paused_at = if dom.suspended().is_some() {
        asked_at
    } else {
        Instant::now()
    };
    report.paused_at = Some(paused_at);
    let devices = backends.quiesce().map_err(SaveError::Devices)?;
    match stop_and_copy(dom, w, dirty, &devices) {
        Ok(last) => report.pages_per_round.push(last),
        Err(e) => {
            backends.resume(devices);
            return Err(e);
        }
    }
    report.devices = devices;
    report.paused = paused_at.elapsed();
    report.total = started.elapsed();
    tracing::info!(
        domain = %dom.config.name,
        rounds = report.pages_per_round.len(),
        pages = report.pages_sent(),
        devices = report.devices.vbds.len() + report.devices.vifs.len(),
        paused_ms = report.paused.as_secs_f64() * 1e3,
        "sent"
    );
    Ok(report)
}

/// How long a guest asked to suspend for a migration has (libxl's 60 s).
const SUSPEND_WAIT: Duration = Duration::from_secs(60);

/// Waits until the guest has called `SHUTDOWN_suspend` (the domain is paused then),
/// at most `limit`.
fn wait_for_suspend(dom: &DomainShared, limit: Duration) -> Result<(), SaveError> {
    let deadline = Instant::now() + limit;
    while dom.suspended().is_none() {
        if dom.exit_reason().is_some() {
            return Err(SaveError::Ended);
        }
        if Instant::now() >= deadline {
            return Err(SaveError::GuestDidNotSuspend(limit));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// The paused domain's last pages (those of `dirty`, or all without pre-copy), its
/// state with `devices`, and the end of the image. Returns the pages sent.
fn stop_and_copy<W: Write>(
    dom: &DomainShared,
    mut w: ImageWriter<W>,
    dirty: Option<Vec<u64>>,
    devices: &DeviceStates,
) -> Result<u64, SaveError> {
    let nr_pages = dom.ram.nr_pages();
    let captured = capture(dom, devices)?;
    let last = match dirty {
        None => write_pages(dom, &mut w, 0..nr_pages, true, Layout::Stream)?,
        Some(mut bitmap) => {
            let tail = dom.ram.take_dirty(true)?;
            for (a, b) in bitmap.iter_mut().zip(tail) {
                *a |= b;
            }
            let si = dom.shared_info_base / rxen_abi::PAGE_SIZE;
            if let Some(word) = bitmap.get_mut((si / 64) as usize) {
                *word |= 1 << (si % 64);
            }
            write_pages(
                dom,
                &mut w,
                crate::dirty::pages(&bitmap),
                false,
                Layout::Stream,
            )?
        }
    };
    write_tail(dom, &mut w, &captured)?;
    w.finish()?;
    Ok(last)
}
