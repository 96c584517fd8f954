//! Builds a domain from a saved image instead of a kernel.

use std::io::Read;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use kvm_ioctls::Cap;
use rxen_migration::{ImageItem, ImageReader, Record, StreamError};

use super::document::VmmState;
use crate::console::{Console, ConsoleLimits, ConsoleSink};
use crate::domain::{kvm, kvm_err, Domain, DomainConfig, DomainError, DomainShared, VcpuKicker};
use crate::evtchn::EventChannels;
use crate::memory::GuestRam;
use crate::shared_info::SharedInfoPage;
use crate::timers::{TimerKind, TimerQueue};
use crate::vcpu::{self, OnlineVcpus, VcpuControl};

/// Largest guest memory an image may ask for (as `DomainConfig::validate` allows,
/// plus rxen's pages).
const MAX_MEM_BYTES: u64 = rxen_abi::layout::MAX_MEMORY_BYTES + (64 << 20);

/// What the restorer chooses (the rest comes from the image).
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    pub name: String,
    pub domid: rxen_abi::DomId,
    pub console: ConsoleLimits,
    /// Keep every vCPU paused after the restore.
    pub start_paused: bool,
}

/// Why a restore failed; nothing of the domain is left behind.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("not a usable image: {0}")]
    Image(#[from] StreamError),
    #[error("the image is inconsistent: {0}")]
    Inconsistent(String),
    #[error("the image's VMM state: {0}")]
    State(#[from] serde_json::Error),
    #[error("guest memory: {0}")]
    Memory(#[from] crate::memory::MemoryError),
    #[error("{0}")]
    Domain(#[from] DomainError),
    #[error("vCPU {vcpu}: {detail}")]
    Vcpu { vcpu: u32, detail: String },
}

fn bad(detail: impl Into<String>) -> RestoreError {
    RestoreError::Inconsistent(detail.into())
}

/// Memory and VMM state read from an image.
struct Loaded {
    ram: Arc<GuestRam>,
    state: VmmState,
}

/// Reads the whole image: pages go straight into a new guest memory.
fn load(image: impl Read, name: &str) -> Result<(Loaded, Vec<u8>), RestoreError> {
    let mut r = ImageReader::open(image)?;
    let config = toolstack_config(r.config());
    let mut ram: Option<Arc<GuestRam>> = None;
    let mut state = None;
    while let Some(item) = r.next_item()? {
        match item {
            ImageItem::Libxc(Record::X86PvP2mFrames { end_pfn, .. }) => {
                if ram.is_some() {
                    return Err(bad("two P2M frame records"));
                }
                ram = Some(new_ram(end_pfn, name)?);
            }
            ImageItem::Libxc(Record::PageData(batch)) => {
                let ram = ram
                    .as_ref()
                    .ok_or_else(|| bad("page data before the P2M frame record"))?;
                for (e, data) in batch.pages() {
                    let addr = e
                        .pfn
                        .checked_mul(rxen_abi::PAGE_SIZE)
                        .ok_or_else(|| bad("pfn out of range"))?;
                    ram.write(addr, data)?;
                }
            }
            ImageItem::RxenState(s) => {
                state = Some(serde_json::from_slice::<VmmState>(&s.document)?)
            }
            ImageItem::Libxc(_) | ImageItem::End => {}
        }
    }
    let ram = ram.ok_or_else(|| bad("no P2M frame record (memory size)"))?;
    let state = state.ok_or_else(|| bad("no rxen state record"))?;
    if state.mem_bytes != ram.size() {
        return Err(bad("memory size differs between the records"));
    }
    Ok((Loaded { ram, state }, config))
}

/// The xl header's configuration without the spaces a save pads it with (to put the
/// page data on page boundaries, `save::Layout::Aligned`).
fn toolstack_config(raw: &[u8]) -> Vec<u8> {
    let end = raw.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
    raw[..end].to_vec()
}

/// Memory size from a P2M frame record, checked.
fn new_ram(end_pfn: u32, name: &str) -> Result<Arc<GuestRam>, RestoreError> {
    let bytes = (u64::from(end_pfn) + 1) * rxen_abi::PAGE_SIZE;
    if bytes > MAX_MEM_BYTES {
        return Err(bad(format!("{bytes} bytes of memory")));
    }
    Ok(Arc::new(GuestRam::new(name, bytes)?))
}

/// Reads a seekable image file: pages whose data is page-aligned in the file are
/// mapped (a private, copy-on-write mapping of the file over that part of guest RAM:
/// the file is read when the guest first touches a page), the others copied. Xen PV
/// domains are always copied (their MMU discards frames with `MADV_DONTNEED`, which
/// would bring a mapped page back to the file's content).
fn load_mapped(file: &std::fs::File, name: &str) -> Result<(Loaded, Vec<u8>), RestoreError> {
    use rxen_migration::{IndexedItem, PageIndex};
    use std::os::unix::fs::FileExt;
    let mut r = ImageReader::open(std::io::BufReader::with_capacity(16 << 10, file))?;
    let config = toolstack_config(r.config());
    let mut ram: Option<Arc<GuestRam>> = None;
    let mut state = None;
    let mut batches: Vec<PageIndex> = Vec::new();
    while let Some(item) = r.next_indexed()? {
        match item {
            IndexedItem::Item(ImageItem::Libxc(Record::X86PvP2mFrames { end_pfn, .. })) => {
                if ram.is_some() {
                    return Err(bad("two P2M frame records"));
                }
                ram = Some(new_ram(end_pfn, name)?);
            }
            IndexedItem::Pages(p) => {
                if ram.is_none() {
                    return Err(bad("page data before the P2M frame record"));
                }
                batches.push(p);
            }
            IndexedItem::Item(ImageItem::RxenState(s)) => {
                state = Some(serde_json::from_slice::<VmmState>(&s.document)?)
            }
            IndexedItem::Item(_) => {}
        }
    }
    let ram = ram.ok_or_else(|| bad("no P2M frame record (memory size)"))?;
    let state: VmmState = state.ok_or_else(|| bad("no rxen state record"))?;
    if state.mem_bytes != ram.size() {
        return Err(bad("memory size differs between the records"));
    }
    let page = rxen_abi::PAGE_SIZE;
    let may_map = state.pv_mmu.is_none();
    let mut buf = vec![0u8; page as usize];
    // Later batches replace earlier ones, as in a stream.
    for b in &batches {
        let pfns = b.entries.iter().filter(|e| e.ty.has_data()).map(|e| e.pfn);
        let mut offset = b.data_offset;
        let mut run: Option<(u64, u64, u64)> = None; // (first pfn, count, file offset)
        let flush = |run: Option<(u64, u64, u64)>, buf: &mut Vec<u8>| {
            let Some((first, count, at)) = run else {
                return Ok::<_, RestoreError>(());
            };
            let addr = first
                .checked_mul(page)
                .ok_or_else(|| bad("pfn out of range"))?;
            if may_map && at.is_multiple_of(page) {
                ram.map_file_private(file, at, addr, count * page)?;
            } else {
                for i in 0..count {
                    file.read_exact_at(buf, at + i * page)
                        .map_err(|e| RestoreError::Image(StreamError::Io(e)))?;
                    ram.write(addr + i * page, buf)?;
                }
            }
            Ok(())
        };
        for pfn in pfns {
            run = match run {
                Some((first, count, at)) if first + count == pfn => Some((first, count + 1, at)),
                other => {
                    flush(other, &mut buf)?;
                    Some((pfn, 1, offset))
                }
            };
            offset += page;
        }
        flush(run, &mut buf)?;
    }
    Ok((Loaded { ram, state }, config))
}

/// Restores a domain from the image file `file`, mapping its pages where the image
/// allows it instead of copying them (see `load_mapped`); otherwise as [`restore`].
/// The file must stay as it is while the domain runs (`xm save` replaces an image by
/// renaming a new file over it, which leaves a mapped one intact).
pub fn restore_file(
    file: &std::fs::File,
    opts: RestoreOptions,
    sink: Box<dyn ConsoleSink>,
) -> Result<Restored, RestoreError> {
    let created_at = Instant::now();
    let (loaded, config) = load_mapped(file, &opts.name)?;
    build(loaded, config, opts, sink, created_at)
}

/// A restored domain and what its image said beyond the domain itself.
pub struct Restored {
    pub domain: Domain,
    /// The toolstack configuration of the image's xl header.
    pub toolstack_config: Vec<u8>,
    /// The saved device backends' state: the caller starts the backends with it
    /// (`BlockBackend::start_restored`, `NetBackend::start_restored`), which check
    /// it further (grants, ports, devids against the configuration).
    pub devices: super::DeviceStates,
}

/// Restores a domain from `image`; returns it running (or paused), the toolstack
/// configuration of the image's xl header and the saved device state.
pub fn restore(
    image: impl Read,
    opts: RestoreOptions,
    sink: Box<dyn ConsoleSink>,
) -> Result<Restored, RestoreError> {
    let created_at = Instant::now();
    let (loaded, config) = load(image, &opts.name)?;
    build(loaded, config, opts, sink, created_at)
}

/// Builds and starts the domain of a loaded image.
fn build(
    loaded: Loaded,
    toolstack_config: Vec<u8>,
    opts: RestoreOptions,
    sink: Box<dyn ConsoleSink>,
    created_at: Instant,
) -> Result<Restored, RestoreError> {
    let Loaded { ram, mut state } = loaded;
    tracing::debug!(ms = created_at.elapsed().as_secs_f64() * 1e3, "image read");
    if let Some(v) = state.suspended_vcpu {
        as_new_domain(&mut state, v)?;
    }
    let config = DomainConfig {
        name: opts.name,
        domid: opts.domid,
        memory_mib: state.memory_mib,
        vcpus: state.vcpus,
        cmdline: state.cmdline.clone(),
        uuid: state.uuid,
        console: opts.console,
        start_paused: opts.start_paused,
        ramdisk: None,
    };
    config.validate()?;
    if state.vcpu_states.len() != config.vcpus as usize || state.online > config.vcpus {
        return Err(bad("vCPU count"));
    }
    let pv = pv_parts(&state, &ram)?;
    if let (Some(_), Some((_, mmu))) = (state.suspended_vcpu, &pv) {
        let mut mmu = mmu.lock().unwrap_or_else(|e| e.into_inner());
        let mut frames = crate::pv::ram_frames::RamFrames::new(&ram);
        for i in 0..state.vcpu_states.len() {
            mmu.release_vcpu_info(&mut frames, i);
        }
    }
    let kvm = kvm()?;
    let vm = kvm.create_vm().map_err(kvm_err("create VM"))?;
    // SAFETY: `ram` goes into the `DomainShared` the Domain holds, and the Domain
    // declares its VM first, so the VM is closed before the RAM can go away.
    unsafe { ram.register(&vm) }.map_err(kvm_err("set memory region"))?;

    let vcpus: Vec<Arc<VcpuControl>> = state
        .vcpu_states
        .iter()
        .enumerate()
        .map(|(i, v)| restore_vcpu(i as u32, v, opts.start_paused))
        .collect::<Result<_, _>>()?;
    let shared_info = SharedInfoPage::new(ram.clone(), state.shared_info_base)?;
    if state.suspended_vcpu.is_some() {
        shared_info.reset_events_for_new_domain(&[
            state.boot_channels.store_evtchn,
            state.boot_channels.console_evtchn,
        ]);
    }
    restore_vcpu_infos(&state, pv.as_ref(), &shared_info)?;
    let traps = crate::traps::DomainTraps::new(config.vcpus);
    for (i, v) in state.vcpu_states.iter().enumerate() {
        if let Some(mut t) = traps.vcpu(i as u32) {
            for &(vector, e) in &v.trap_table {
                t.table[vector as usize] = e;
            }
            t.callbacks = v.callbacks;
            t.kernel_stack = v.kernel_stack;
            t.user_mode = v.pv.user_mode;
            traps.note_callbacks(i as u32, &t);
        }
    }
    let mut evtchn = EventChannels::new(
        config.domid,
        config.vcpus,
        shared_info.clone(),
        Arc::new(VcpuKicker(vcpus.clone(), traps.upcall_targets())),
    );
    evtchn.restore(&state.evtchn).map_err(bad)?;
    let boot_ports = [
        state.boot_channels.store_evtchn,
        state.boot_channels.console_evtchn,
    ];
    let mut ring_ports = std::collections::BTreeSet::new();
    for port in state.devices.guest_ports() {
        if boot_ports.contains(&port) || !ring_ports.insert(port) {
            return Err(bad(format!(
                "a saved device ring names port {port}, the xenstore or console port or another ring's"
            )));
        }
        if evtchn.binding(port) != Some(crate::evtchn::Binding::Unbound { remote_dom: 0 }) {
            return Err(bad(format!(
                "a saved device ring names port {port}, which is not unbound for domain 0"
            )));
        }
    }
    let grants = match &pv {
        None => crate::grant::GrantTable::new(ram.clone(), config.domid),
        Some((area, mmu)) => {
            let mmu = mmu.clone();
            crate::grant::GrantTable::new_pv(
                ram.clone(),
                config.domid,
                crate::grant::PvFrames {
                    guest_pages: config.memory_mib << 8,
                    grant_base: area.grant_frames().0,
                    is_typed: Box::new(move |frame| {
                        let mmu = mmu.lock().unwrap_or_else(|e| e.into_inner());
                        mmu.frame(frame).is_some_and(|f| {
                            f.is_table() || f.ty == crate::pv::mmu::FrameType::SegDesc
                        })
                    }),
                },
            )
        }
    };
    grants.restore(&state.grants).map_err(bad)?;

    let sync_regs =
        kvm.check_extension(Cap::SyncRegs) && std::env::var_os("RXEN_NO_SYNC_REGS").is_none();
    let mut fds = Vec::new();
    for (i, v) in state.vcpu_states.iter().enumerate() {
        let fd = vm.create_vcpu(i as u64).map_err(kvm_err("create vCPU"))?;
        vcpu::syscall::program_msrs(&fd, state.boot.syscall_stub).map_err(DomainError::from)?;
        let vcpu_err = |detail| RestoreError::Vcpu {
            vcpu: i as u32,
            detail,
        };
        let fresh = fd.get_sregs().map_err(kvm_err("get sregs"))?;
        let expected = vcpu::regs::long_mode_sregs(fresh, 0, &state.boot.traps);
        super::cpu::check_control_state(&v.cpu, &expected, state.boot.tss_base_of(i as u32))
            .map_err(vcpu_err)?;
        if let Some((_, mmu)) = &pv {
            // A PV vCPU runs on an L4 the MMU validated (its kernel or user base),
            // or still on the builder's.
            let frame = v.cpu.sregs.cr3 >> 12;
            let mmu = mmu.lock().unwrap_or_else(|e| e.into_inner());
            let bases = mmu.vcpu(i).copied().unwrap_or_default();
            if bases.kernel != Some(frame)
                && bases.user != Some(frame)
                && frame != state.boot.cr3 >> 12
            {
                return Err(vcpu_err(format!(
                    "cr3 frame {frame:#x} is not one of its page-table bases"
                )));
            }
            if v.pv.user_mode && bases.user != Some(frame) {
                return Err(vcpu_err(format!(
                    "in guest user mode on cr3 frame {frame:#x}, not its user L4"
                )));
            }
        }
        // The CPUID before the saved CR4 (OSXSAVE) and XCR0 (`cpu::load`).
        if pv.is_some() {
            vcpu::xstate::set_cpuid(&fd, None).map_err(vcpu_err)?;
        }
        super::cpu::load(&fd, &v.cpu).map_err(vcpu_err)?;
        fds.push(fd);
    }
    let tsc_khz = fds[0]
        .get_tsc_khz()
        .ok()
        .filter(|&k| k > 0)
        .unwrap_or(state.tsc_khz);
    let tsc_offset = crate::domain::measure_tsc_offset(&fds[0]);
    let clock = crate::clock::DomainClock::resumed(tsc_khz, state.system_time_ns)
        .ok_or_else(|| bad("the guest's system time is older than this host's clock"))?;
    let console = Console::with_limits(sink, config.console);
    let timers = Arc::new(TimerQueue::default());
    for (i, v) in state.vcpu_states.iter().enumerate() {
        if let Some(deadline) = v.timer {
            timers.add(
                clock.instant_of(deadline),
                TimerKind::Vcpu {
                    vcpu: i as u32,
                    generation: v.timer_generation,
                },
            );
        }
    }
    let shared = Arc::new(DomainShared {
        config,
        ram,
        shared_info,
        evtchn: Mutex::new(evtchn),
        grants,
        vcpus,
        online: OnlineVcpus::restored(state.online),
        clock,
        tsc_offset,
        console,
        timers,
        boot: state.boot,
        shared_info_base: state.shared_info_base,
        pv_m2p: pv.as_ref().map_or((0, 0), |(area, _)| area.m2p()),
        pv_mmu: pv.map(|(_, mmu)| mmu),
        boot_channels: state.boot_channels,
        exit: Mutex::new(None),
        exit_cond: Condvar::new(),
        shutdown_code: Mutex::new(None),
        suspended_by: Mutex::new(None),
        saver: std::sync::atomic::AtomicBool::new(false),
        watchdogs: Mutex::new([(0, false); crate::domain::NR_WATCHDOGS]),
        pit: Mutex::new(crate::pit::Pit::new()),
        traps,
        stats: Default::default(),
    });
    shared.write_wallclock();
    for i in 0..shared.config.vcpus {
        shared.update_time_info(i);
    }
    let devices = state.devices;
    let domain = Domain::launch(vm, shared, fds, sync_regs, created_at)?;
    tracing::info!(domain = %domain.shared().config.name, ms = created_at.elapsed().as_millis() as u64, "restored");
    Ok(Restored {
        domain,
        toolstack_config,
        devices,
    })
}

/// A domain saved after its guest suspended itself resumes as Xen's new domain:
/// vCPU `vcpu`'s `SCHEDOP_shutdown(SHUTDOWN_suspend)` returns 0 (it was saved with
/// the 1 of a cancelled suspend), and every event channel is closed but the boot
/// ones (xenstore, console), which the toolstack connects again.
fn as_new_domain(state: &mut VmmState, vcpu: u32) -> Result<(), RestoreError> {
    let v = state
        .vcpu_states
        .get_mut(vcpu as usize)
        .ok_or_else(|| bad(format!("suspended by vCPU {vcpu}, which does not exist")))?;
    v.cpu.regs.rax = 0;
    // Xen's new domain has no runstate area and no moved vcpu_info: the guest
    // registers them again (Linux's `xen_vcpu_restore`, which fails on a vcpu_info
    // still registered). The MMU's holds on the vcpu_info frames go in `build`.
    for v in &mut state.vcpu_states {
        v.pv.runstate_area = None;
        v.pv.vcpu_info = None;
    }
    let boot = [
        state.boot_channels.store_evtchn,
        state.boot_channels.console_evtchn,
    ];
    for (p, entry) in state.evtchn.ports.iter_mut().enumerate() {
        if !boot.contains(&(p as u32)) {
            *entry = (crate::evtchn::Binding::Free, 0);
        }
    }
    for row in &mut state.evtchn.virqs {
        row.iter_mut().for_each(|p| *p = None);
    }
    if !state.devices.is_empty() {
        return Err(bad("a suspended domain's image has device rings"));
    }
    Ok(())
}

/// Puts every moved `vcpu_info` back where the image says, checked against the
/// frame the MMU holds for it.
fn restore_vcpu_infos(
    state: &VmmState,
    pv: Option<&PvParts>,
    shared_info: &SharedInfoPage,
) -> Result<(), RestoreError> {
    for (i, v) in state.vcpu_states.iter().enumerate() {
        let held = pv.and_then(|(_, mmu)| {
            let mmu = mmu.lock().unwrap_or_else(|e| e.into_inner());
            mmu.vcpu(i).and_then(|b| b.vcpu_info)
        });
        let Some(gpa) = v.pv.vcpu_info else {
            continue;
        };
        if held != Some(gpa / rxen_abi::PAGE_SIZE) {
            return Err(bad(format!(
                "vCPU {i}'s vcpu_info at {gpa:#x} is not in the frame the MMU holds for it"
            )));
        }
        shared_info
            .restore_vcpu_info(i as u32, gpa)
            .map_err(|e| bad(format!("vCPU {i}'s vcpu_info at {gpa:#x}: {e}")))?;
    }
    Ok(())
}

type PvParts = (
    crate::pv::rxen_area::AreaLayout,
    Arc<Mutex<crate::pv::mmu::Mmu>>,
);

/// A Xen PV domain's rxen area and MMU, checked against the restored memory: the
/// layout is the one the builder computes for the RAM size, and a full recount of
/// the MMU's references over the restored page tables must match what the image
/// says.
fn pv_parts(state: &VmmState, ram: &GuestRam) -> Result<Option<PvParts>, RestoreError> {
    let (Some(_), Some(mmu)) = (state.boot.m2p, &state.pv_mmu) else {
        if state.boot.m2p.is_some() || state.pv_mmu.is_some() {
            return Err(bad("half of a Xen PV domain's state"));
        }
        return Ok(None);
    };
    let guest_pages = state.memory_mib << 8;
    let area = crate::pv::rxen_area::AreaLayout::for_guest(guest_pages);
    if (guest_pages << 12) + area.bytes() != ram.size() {
        return Err(bad("memory size does not match a PV domain of this RAM"));
    }
    if mmu.nr_frames() != ram.nr_pages() || mmu.nr_vcpus() != state.vcpus as usize {
        return Err(bad("the MMU state does not match the domain"));
    }
    mmu.audit(&crate::pv::ram_frames::RamFrames::new(ram))
        .map_err(|e| bad(format!("the MMU state does not match the page tables: {e}")))?;
    Ok(Some((area, Arc::new(Mutex::new(mmu.clone())))))
}

fn restore_vcpu(
    id: u32,
    v: &super::document::VcpuSnapshot,
    paused: bool,
) -> Result<Arc<VcpuControl>, RestoreError> {
    let ctl = VcpuControl::new(id);
    {
        let mut s = ctl.lock();
        s.state = v.state;
        s.initialised = v.initialised;
        s.timer = v.timer;
        s.timer_generation = v.timer_generation;
        s.runstate = v.runstate;
        s.paused = paused;
        s.runstate_area = v.pv.runstate_area;
        s.guest_cr4 = v.pv.guest_cr4.unwrap_or(crate::traps::privop::PV_CR4);
        s.virtual_iopl = v.pv.virtual_iopl;
        if let Some(bytes) = &v.pending_context {
            let ctx =
                <rxen_abi::vcpu::VcpuGuestContext as zerocopy::FromBytes>::read_from_bytes(bytes)
                    .map_err(|_| {
                    bad(format!(
                        "vCPU {id}: pending context of {} bytes",
                        bytes.len()
                    ))
                })?;
            s.pending_context = Some(Box::new(ctx));
        }
    }
    Ok(Arc::new(ctl))
}
