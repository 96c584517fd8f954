//! Writes a paused domain to an image.

use std::io::Write;
use std::time::{Duration, Instant};

use rxen_migration::libxc::TscInfo;
use rxen_migration::rxen_state::RxenState;
use rxen_migration::{ImageWriter, PageType, PfnEntry, Record, StreamError, MAX_BATCH_PAGES};

use super::cpu::CpuState;
use super::devices::DeviceStates;
use super::document::{VcpuSnapshot, VmmState};
use crate::domain::DomainShared;
use crate::pv::mmu::Level;

/// How long the vCPU threads get to hand over their state.
const CAPTURE_DEADLINE: Duration = Duration::from_secs(5);

/// Why a save failed (the domain stays paused; the toolstack decides what next).
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("saving this domain is not supported: {0}")]
    Unsupported(String),
    #[error("the domain has ended")]
    Ended,
    #[error("vCPU {vcpu}: {detail}")]
    Vcpu { vcpu: u32, detail: String },
    #[error("guest memory: {0}")]
    Memory(#[from] crate::memory::MemoryError),
    #[error("writing the image: {0}")]
    Stream(#[from] StreamError),
    #[error("encoding the VMM state: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("{0}")]
    Devices(String),
    #[error("the guest was asked to suspend and did not within {0:?}")]
    GuestDidNotSuspend(std::time::Duration),
}

/// What a save wrote.
#[derive(Clone, Copy, Debug)]
pub struct SaveReport {
    /// Pages written (all-zero pages are left out).
    pub pages: u64,
    /// How long the domain was paused for the save (to the end of the write).
    pub elapsed: Duration,
}

/// Pauses `dom` and writes it to `out` with `config` (the toolstack's domain
/// configuration) in the xl header. The domain is left paused: the caller unpauses
/// it (`xm save -c`) or destroys it. A domain with connected devices is refused
/// (see [`save_with_devices`]).
pub fn save(dom: &DomainShared, out: impl Write, config: &[u8]) -> Result<SaveReport, SaveError> {
    save_with_devices(dom, out, config, &DeviceStates::default())
}

/// [`save`] of a domain whose device backends the caller quiesced after pausing
/// it: `devices` is what they returned, written in the state document. A backend
/// still connected to the guest (a port bound to domain 0 that is neither a boot
/// channel nor a saved ring's) makes the save fail.
pub fn save_with_devices(
    dom: &DomainShared,
    out: impl Write,
    config: &[u8],
    devices: &DeviceStates,
) -> Result<SaveReport, SaveError> {
    let started = Instant::now();
    if dom.exit_reason().is_some() {
        return Err(SaveError::Ended);
    }
    dom.pause();
    let captured = capture(dom, devices)?;
    let config = page_aligned_config(dom, config)?;
    let mut w = ImageWriter::new(out, &config)?;
    write_head(dom, &mut w)?;
    let pages = write_pages(dom, &mut w, 0..dom.ram.nr_pages(), true, Layout::Aligned)?;
    write_tail(dom, &mut w, &captured)?;
    w.finish()?;
    tracing::info!(domain = %dom.config.name, pages, ms = started.elapsed().as_millis() as u64, "saved");
    Ok(SaveReport {
        pages,
        elapsed: started.elapsed(),
    })
}

/// Writes the libxc records that come before the pages: `X86_PV_INFO`,
/// `STATIC_DATA_END` and the P2M frame range (the memory size).
pub(super) fn write_head<W: Write>(
    dom: &DomainShared,
    w: &mut ImageWriter<W>,
) -> Result<(), SaveError> {
    w.record(&Record::X86PvInfo {
        guest_width: 8,
        pt_levels: 4,
    })?;
    w.record(&Record::StaticDataEnd)?;
    // rxen domains have no P2M list of their own: the frame list is empty and the
    // range says how many frames the domain has.
    w.record(&Record::X86PvP2mFrames {
        start_pfn: 0,
        end_pfn: u32::try_from(dom.ram.nr_pages().saturating_sub(1))
            .map_err(|_| SaveError::Unsupported("more than 2^32 pages".into()))?,
        frames: Vec::new(),
    })?;
    Ok(())
}

/// The processor and VMM state of a paused domain, and the guest time it was taken at.
pub(super) struct Captured {
    state: VmmState,
    system_time_ns: u64,
}

/// Captures the vCPUs and the VMM state of the paused domain (before its last pages
/// are read: taking a vCPU out of a block may write guest memory).
/// `devices` is what the quiesced device backends returned (empty when there are none).
pub(super) fn capture(dom: &DomainShared, devices: &DeviceStates) -> Result<Captured, SaveError> {
    let system_time_ns = dom.clock.now_ns();
    let cpus = capture_all(dom)?;
    let state = document(dom, system_time_ns, cpus, devices)?;
    Ok(Captured {
        state,
        system_time_ns,
    })
}

/// Writes everything after the pages: TSC info, `shared_info`, the vCPU records,
/// libxc `END` and rxen's state record (the caller ends the image).
pub(super) fn write_tail<W: Write>(
    dom: &DomainShared,
    w: &mut ImageWriter<W>,
    captured: &Captured,
) -> Result<(), SaveError> {
    let Captured {
        state,
        system_time_ns,
    } = captured;
    let system_time_ns = *system_time_ns;
    w.record(&Record::X86TscInfo(TscInfo {
        mode: 0,
        khz: state.tsc_khz,
        nsec: system_time_ns,
        incarnation: 0,
    }))?;
    let mut shared_info = vec![0u8; rxen_migration::PAGE_SIZE];
    dom.ram.read(dom.shared_info_base, &mut shared_info)?;
    w.record(&Record::SharedInfo(shared_info))?;
    for (id, v) in state.vcpu_states.iter().enumerate() {
        for r in
            super::vcpu_records::records(id as u32, &v.cpu, v.state != crate::vcpu::VcpuState::Down)
        {
            w.record(&r)?;
        }
    }
    w.record(&Record::End)?;
    w.rxen_state(&RxenState::new(serde_json::to_vec(state)?))?;
    Ok(())
}

/// Whether a port is bound to a backend in domain 0 other than the boot-time
/// xenstore and console ones (a device backend that was not quiesced).
fn backend_connected(dom: &DomainShared, evtchn: &crate::evtchn::EvtchnSnapshot) -> bool {
    let boot_ports = [
        dom.boot_channels.store_evtchn,
        dom.boot_channels.console_evtchn,
    ];
    evtchn.ports.iter().enumerate().any(|(p, (b, _))| {
        matches!(b, crate::evtchn::Binding::Dom0 { .. }) && !boot_ports.contains(&(p as u32))
    })
}

/// Asks every vCPU thread for its processor state and waits for all of them.
fn capture_all(dom: &DomainShared) -> Result<Vec<Box<CpuState>>, SaveError> {
    for v in &dom.vcpus {
        let mut s = v.lock();
        s.captured = None;
        s.capture_wanted = true;
        v.notify_locked();
        drop(s);
        v.interrupt();
    }
    let deadline = Instant::now() + CAPTURE_DEADLINE;
    let mut out = Vec::with_capacity(dom.vcpus.len());
    for v in &dom.vcpus {
        let mut s = v.lock();
        loop {
            if let Some(c) = s.captured.take() {
                out.push(c.map_err(|detail| SaveError::Vcpu { vcpu: v.id, detail })?);
                break;
            }
            if s.stop {
                return Err(SaveError::Ended);
            }
            if Instant::now() >= deadline {
                s.capture_wanted = false;
                return Err(SaveError::Vcpu {
                    vcpu: v.id,
                    detail: "its thread did not hand over its state in time".into(),
                });
            }
            s = v.wait(s, Some(deadline));
        }
    }
    Ok(out)
}

fn document(
    dom: &DomainShared,
    system_time_ns: u64,
    cpus: Vec<Box<CpuState>>,
    devices: &DeviceStates,
) -> Result<VmmState, SaveError> {
    let evtchn = dom
        .evtchn
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .snapshot();
    if backend_connected(dom, &evtchn) {
        return Err(SaveError::Unsupported(
            "a device backend is still connected to the guest (not quiesced)".into(),
        ));
    }
    let suspended_vcpu = dom.suspended();
    let mut vcpu_states = Vec::with_capacity(cpus.len());
    for (v, cpu) in dom.vcpus.iter().zip(cpus) {
        let s = v.lock();
        let traps = dom.traps.vcpu(v.id).map(|t| t.clone()).unwrap_or_default();
        vcpu_states.push(VcpuSnapshot {
            state: s.state,
            initialised: s.initialised,
            timer: s.timer,
            timer_generation: s.timer_generation,
            runstate: s.runstate,
            pending_context: s
                .pending_context
                .as_ref()
                .map(|c| zerocopy::IntoBytes::as_bytes(c.as_ref()).to_vec()),
            trap_table: traps
                .table
                .iter()
                .enumerate()
                .filter(|(_, e)| **e != crate::traps::TrapEntry::default())
                .map(|(i, e)| (i as u8, *e))
                .collect(),
            callbacks: traps.callbacks,
            kernel_stack: traps.kernel_stack,
            cpu: *cpu,
            pv: super::document::PvVcpuState {
                runstate_area: s.runstate_area,
                guest_cr4: (s.guest_cr4 != crate::traps::privop::PV_CR4).then_some(s.guest_cr4),
                virtual_iopl: s.virtual_iopl,
                user_mode: traps.user_mode,
                vcpu_info: dom.shared_info.relocated_vcpu_info(v.id),
            },
        });
    }
    Ok(VmmState {
        memory_mib: dom.config.memory_mib,
        vcpus: dom.config.vcpus,
        cmdline: dom.config.cmdline.clone(),
        uuid: dom.config.uuid,
        mem_bytes: dom.ram.size(),
        boot: dom.boot,
        boot_channels: dom.boot_channels,
        shared_info_base: dom.shared_info_base,
        tsc_khz: (dom.clock.tsc_hz() / 1000) as u32,
        system_time_ns,
        online: dom.online.count(),
        evtchn,
        grants: dom.grants.snapshot(),
        vcpu_states,
        pv_mmu: dom
            .pv_mmu
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).clone()),
        // A guest that suspended itself reconnects its devices in the new domain.
        devices: if suspended_vcpu.is_some() {
            DeviceStates::default()
        } else {
            devices.clone()
        },
        suspended_vcpu,
    })
}

/// Xen's type of frame `pfn`: a validated page table (pinned or not) or ordinary.
fn page_type(mmu: Option<&crate::pv::mmu::Mmu>, pfn: u64) -> PageType {
    let Some(info) = mmu.and_then(|m| m.frame(pfn)) else {
        return PageType::Normal;
    };
    match info.table_level() {
        Some(level) => PageType::Table {
            level: match level {
                Level::L1 => 1,
                Level::L2 => 2,
                Level::L3 => 3,
                Level::L4 => 4,
            },
            pinned: info.pinned,
        },
        None => PageType::Normal,
    }
}

/// How the pages of an image are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Layout {
    /// Batches of [`MAX_BATCH_PAGES`] (a stream: nobody maps it).
    Stream,
    /// Batches of exactly [`ALIGNED_BATCH_PAGES`], so that in a file whose first
    /// `PAGE_DATA` starts on a page boundary every page's data is page-aligned and a
    /// restore can map the image's pages instead of copying them. A last, shorter
    /// batch is filled up with pages that were left out as zero (or sent already):
    /// sending a page twice or a zero page is harmless.
    Aligned,
}

/// Entries of an aligned batch: its header (16 bytes) and pfn list (8 per entry)
/// then take exactly one page, and the batch ends on a page boundary again.
pub const ALIGNED_BATCH_PAGES: usize = 510;

/// Writes the pages `pfns` in batches (see [`Layout`]); with `skip_zero`, all-zero
/// pages are left out (a first copy: absent pages are zero at the target). Returns
/// how many pages were written.
pub(super) fn write_pages<W: Write>(
    dom: &DomainShared,
    w: &mut ImageWriter<W>,
    pfns: impl IntoIterator<Item = u64>,
    skip_zero: bool,
    layout: Layout,
) -> Result<u64, SaveError> {
    const PAGE: usize = rxen_migration::PAGE_SIZE;
    let batch = match layout {
        Layout::Stream => MAX_BATCH_PAGES,
        Layout::Aligned => ALIGNED_BATCH_PAGES,
    };
    let mut entries = Vec::with_capacity(batch);
    let mut data = vec![0u8; batch * PAGE];
    let mut written = 0;
    let mut flush = |entries: &mut Vec<PfnEntry>, data: &[u8]| -> Result<(), SaveError> {
        if entries.is_empty() {
            return Ok(());
        }
        // Page types as the MMU has them now (only Xen PV domains have any).
        if let Some(mmu) = &dom.pv_mmu {
            let mmu = mmu.lock().unwrap_or_else(|e| e.into_inner());
            for e in entries.iter_mut() {
                e.ty = page_type(Some(&mmu), e.pfn);
            }
        }
        w.page_batch(entries, &data[..entries.len() * PAGE])?;
        written += entries.len() as u64;
        entries.clear();
        Ok(())
    };
    // Pages left out as zero, to fill an aligned last batch with.
    let mut zero_pfns = Vec::new();
    for pfn in pfns {
        let at = entries.len() * PAGE;
        let page = &mut data[at..at + PAGE];
        dom.ram.read(pfn * PAGE as u64, page)?;
        if skip_zero && page.iter().all(|&b| b == 0) {
            if layout == Layout::Aligned && zero_pfns.len() < batch {
                zero_pfns.push(pfn);
            }
            continue;
        }
        entries.push(PfnEntry {
            pfn,
            ty: PageType::Normal,
        });
        if entries.len() == batch {
            flush(&mut entries, &data)?;
        }
    }
    if layout == Layout::Aligned && !entries.is_empty() {
        let fill = zero_pfns.into_iter().chain(0..dom.ram.nr_pages());
        for pfn in fill.take(batch - entries.len()) {
            let at = entries.len() * PAGE;
            dom.ram.read(pfn * PAGE as u64, &mut data[at..at + PAGE])?;
            entries.push(PfnEntry {
                pfn,
                ty: PageType::Normal,
            });
        }
    }
    flush(&mut entries, &data)?;
    Ok(written)
}

/// `config` followed by spaces (JSON allows them) so that the first `PAGE_DATA`
/// record after [`write_head`] starts on a page boundary of the image.
fn page_aligned_config(dom: &DomainShared, config: &[u8]) -> Result<Vec<u8>, SaveError> {
    struct Count(u64);
    impl Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut w = ImageWriter::new(Count(0), b"")?;
    write_head(dom, &mut w)?;
    let head = w.into_inner().0 + config.len() as u64;
    let page = rxen_migration::PAGE_SIZE as u64;
    let pad = ((page - head % page) % page) as usize;
    let mut out = Vec::with_capacity(config.len() + pad);
    out.extend_from_slice(config);
    out.resize(config.len() + pad, b' ');
    Ok(out)
}
