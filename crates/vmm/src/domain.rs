//! A domain: its KVM VM, RAM, event channels, vCPUs, clock and console, and the
//! lifecycle operations on it (create, pause, unpause, destroy, wait).

use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use rxen_abi::event_channel::VIRQ_TIMER;
use rxen_abi::layout;
use rxen_abi::xen::{shared_info_offsets, VcpuTimeInfo};
use rxen_abi::DomId;

use crate::builder::{self, BootChannels, BootInfo, BuildError};
use crate::clock::DomainClock;
use crate::console::ring_backend::ConsoleRingBackend;
use crate::console::{Console, ConsoleLimits, ConsoleSink};
use crate::evtchn::{EventChannels, Kick};
use crate::exit::DomainExit;
use crate::memory::{GuestRam, MemoryError};
use crate::shared_info::SharedInfoPage;
use crate::timers::{TimerKind, TimerQueue};
use crate::vcpu::{self, regs, OnlineVcpus, VcpuControl};

/// What a domain is built from.
#[derive(Clone, Debug)]
pub struct DomainConfig {
    pub name: String,
    pub domid: DomId,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub cmdline: String,
    pub uuid: [u8; 16],
    /// Console output rate limit and in-memory tail size.
    pub console: ConsoleLimits,
    /// Start with every vCPU paused (`xm create -p`): no guest instruction runs until
    /// the toolstack unpauses the domain.
    pub start_paused: bool,
    /// Initial ramdisk for a Xen PV kernel (`start_info.mod_start`/`mod_len`).
    pub ramdisk: Option<Vec<u8>>,
}

impl Default for DomainConfig {
    fn default() -> Self {
        Self {
            name: "domain".into(),
            domid: 1,
            memory_mib: 32,
            vcpus: 1,
            cmdline: String::new(),
            uuid: [0; 16],
            console: ConsoleLimits::default(),
            start_paused: false,
            ramdisk: None,
        }
    }
}

impl DomainConfig {
    /// Checks the values a user chooses (memory, vCPUs, domain id, command line)
    /// before anything is created; the message says what is allowed.
    pub fn validate(&self) -> Result<(), DomainError> {
        let bad = |m: String| Err(DomainError::Config(m));
        if self.vcpus == 0 || self.vcpus > layout::MAX_VCPUS {
            return bad(format!(
                "vcpus must be 1..={}, not {}",
                layout::MAX_VCPUS,
                self.vcpus
            ));
        }
        let (min, max) = (
            layout::MIN_MEMORY_BYTES >> 20,
            layout::MAX_MEMORY_BYTES >> 20,
        );
        if !(min..=max).contains(&self.memory_mib) || !self.memory_mib.is_multiple_of(2) {
            return bad(format!(
                "memory must be a multiple of 2 MiB between {min} and {max} MiB, not {}",
                self.memory_mib
            ));
        }
        if self.domid == 0 || self.domid >= rxen_abi::DOMID_FIRST_RESERVED {
            return bad(format!(
                "domid must be between 1 and {}, not {}",
                rxen_abi::DOMID_FIRST_RESERVED - 1,
                self.domid
            ));
        }
        let max_cmdline = rxen_abi::xen::MAX_GUEST_CMDLINE - 1;
        if self.cmdline.len() > max_cmdline {
            return bad(format!(
                "command line is {} bytes; at most {max_cmdline} allowed",
                self.cmdline.len()
            ));
        }
        Ok(())
    }
}

/// Errors of creating a domain.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Build(#[from] BuildError),
    #[error("guest memory: {0}")]
    Memory(#[from] MemoryError),
    #[error("KVM {op}: {err}")]
    Kvm {
        op: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error("setting up syscall entry: {0}")]
    Syscall(#[from] vcpu::syscall::SyscallSetupError),
    #[error("starting a thread: {0}")]
    Thread(std::io::Error),
    #[error("building the PV domain: {0}")]
    PvBuild(#[from] crate::pv::builder::PvBuildError),
    #[error("vCPU XSAVE state: {0}")]
    Xstate(String),
}

/// What kind of kernel a domain boots, which decides its start-of-day layout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BootKind {
    /// An rxen SDK guest on rxen's own layout (docs/guest-abi.md).
    #[default]
    Rxen,
    /// An unmodified Xen PV kernel on Xen's PV layout (`crate::pv`; the MMU
    /// hypercalls are not wired yet).
    XenPv,
}

pub(crate) fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> DomainError {
    move |err| DomainError::Kvm { op, err }
}

/// The process-wide handle of `/dev/kvm`.
pub fn kvm() -> Result<&'static Kvm, DomainError> {
    static KVM: OnceLock<Result<Kvm, kvm_ioctls::Error>> = OnceLock::new();
    KVM.get_or_init(Kvm::new)
        .as_ref()
        .map_err(|e| DomainError::Kvm {
            op: "open /dev/kvm",
            err: *e,
        })
}

/// Wakes vCPUs on events.
pub(crate) struct VcpuKicker(
    pub(crate) Vec<Arc<VcpuControl>>,
    pub(crate) crate::traps::UpcallTargets,
);

impl Kick for VcpuKicker {
    fn kick(&self, vcpu: u32) {
        if let Some(v) = self.0.get(vcpu as usize) {
            v.wake();
        }
        // A vCPU in SCHEDOP_poll may wait for a port bound to another vCPU.
        for (i, v) in self.0.iter().enumerate() {
            if i as u32 != vcpu && v.polling.load(std::sync::atomic::Ordering::SeqCst) {
                v.wake();
            }
        }
    }

    fn upcall(&self, vcpu: u32) {
        if self.1.wants_upcalls(vcpu) {
            if let Some(v) = self.0.get(vcpu as usize) {
                v.thread.kick();
            }
        }
    }
}

/// Watchdog slots of `SCHEDOP_watchdog` (Xen allows two).
pub const NR_WATCHDOGS: usize = 2;

/// State shared by every thread of a domain.
pub struct DomainShared {
    pub config: DomainConfig,
    pub ram: Arc<GuestRam>,
    pub shared_info: SharedInfoPage,
    pub evtchn: Mutex<EventChannels>,
    /// The guest's grant table; domain 0's backends map and copy grants through it.
    pub grants: crate::grant::GrantTable,
    pub vcpus: Vec<Arc<VcpuControl>>,
    /// How many vCPUs are online (`VCPUOP_up`/`VCPUOP_down` go through it).
    pub online: OnlineVcpus,
    pub clock: DomainClock,
    /// Guest TSC minus host TSC.
    pub tsc_offset: i64,
    pub console: Console,
    pub timers: Arc<TimerQueue>,
    pub boot: BootInfo,
    /// Guest-physical address of the `shared_info` page.
    pub shared_info_base: u64,
    /// The direct-paging MMU state of a Xen PV domain (`crate::pv::hypercall`).
    pub pv_mmu: Option<Arc<Mutex<crate::pv::mmu::Mmu>>>,
    /// Guest-physical address and entry count of a PV domain's M2P (`(0, 0)` else).
    pub pv_m2p: (u64, u64),
    /// Event channels the builder allocated for domain 0 (xenstore, console).
    pub boot_channels: BootChannels,
    pub(crate) exit: Mutex<Option<DomainExit>>,
    pub(crate) exit_cond: Condvar,
    pub shutdown_code: Mutex<Option<u32>>,
    /// The vCPU that suspended the domain (`SCHEDOP_shutdown(SHUTDOWN_suspend)`,
    /// Xen's suspend protocol): the domain is paused and waits for the toolstack to
    /// save it; unpausing it cancels the suspend (the hypercall returns 1).
    pub suspended_by: Mutex<Option<u32>>,
    /// A toolstack can save the domain (its control socket is up): only then does a
    /// guest's suspend wait for it; without one the domain ends (`DomainExit::Suspend`).
    pub saver: std::sync::atomic::AtomicBool,
    /// `(generation, armed)` of each watchdog slot.
    pub watchdogs: Mutex<[(u64, bool); NR_WATCHDOGS]>,
    /// Each vCPU's trap table and callbacks (`set_trap_table`, `callback_op`).
    pub traps: crate::traps::DomainTraps,
    /// Counters of hypercalls, exits, emulated instructions, traps, upcalls.
    pub stats: crate::stats::DomainStats,
    /// PIT channel 2 and port 0x61 as a PV guest's port I/O reaches them.
    pub pit: Mutex<crate::pit::Pit>,
}

impl DomainShared {
    /// The memory guest pointers of vCPU `vcpu` reach right now: rxen's identity view,
    /// or for a PV domain a walk of the vCPU's current kernel page tables.
    /// Where this domain's code and stacks may be (Xen PV kernels live in the upper
    /// half; rxen's own guests in the lower).
    pub fn address_range(&self) -> crate::vcpu::regs::AddressRange {
        if self.pv_mmu.is_some() {
            crate::vcpu::regs::AddressRange::Canonical
        } else {
            crate::vcpu::regs::AddressRange::UserHalf
        }
    }

    pub fn guest_view(&self, vcpu: u32) -> crate::guest_view::GuestView<'_> {
        match &self.pv_mmu {
            None => crate::guest_view::GuestView::identity(&self.ram),
            Some(mmu) => {
                let l4 = mmu
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .vcpu(vcpu as usize)
                    .and_then(|b| b.kernel);
                crate::guest_view::GuestView::paged(&self.ram, l4)
            }
        }
    }

    /// Pages of RAM the guest was given (`start_info.nr_pages`; rxen's own pages after
    /// a PV domain's RAM are not counted).
    pub fn guest_pages(&self) -> u64 {
        self.config.memory_mib << (20 - 12)
    }

    /// Ends the domain with `why` (the first reason wins) and stops every vCPU.
    pub fn request_exit(&self, why: DomainExit) {
        {
            let mut e = self.exit.lock().unwrap_or_else(|e| e.into_inner());
            if e.is_none() {
                tracing::info!(domain = %self.config.name, "{why}");
                *e = Some(why);
            }
            self.exit_cond.notify_all();
        }
        for v in &self.vcpus {
            v.lock().stop = true;
            v.interrupt();
        }
        self.timers.stop();
    }

    /// The exit reason, if the domain has ended.
    pub fn exit_reason(&self) -> Option<DomainExit> {
        self.exit.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Blocks until the domain ends.
    pub fn wait_exit(&self) -> DomainExit {
        let mut e = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(x) = e.as_ref() {
                return x.clone();
            }
            e = self.exit_cond.wait(e).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Publishes a fresh pvclock in `vcpu_info[vcpu].time` (Xen's version protocol).
    pub fn update_time_info(&self, vcpu: u32) {
        let addr = self.shared_info.vcpu_info_gpa(vcpu) + shared_info_offsets::TIME as u64;
        let version = self.ram.read_obj::<u32>(addr).unwrap_or(0);
        let odd = version | 1;
        let _ = self.ram.write_obj(addr, &odd);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let ti: VcpuTimeInfo = self.clock.time_info(self.tsc_offset, odd);
        let _ = self.ram.write_obj(addr + 8, &ti.tsc_timestamp);
        let _ = self.ram.write_obj(addr + 16, &ti.system_time);
        let _ = self.ram.write_obj(addr + 24, &ti.tsc_to_system_mul);
        let _ = self
            .ram
            .write_obj(addr + 28, &[ti.tsc_shift as u8, ti.flags]);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let _ = self.ram.write_obj(addr, &odd.wrapping_add(1));
    }

    pub(crate) fn write_wallclock(&self) {
        let (sec, nsec) = self.clock.boot_wallclock();
        let base = self.shared_info_base + shared_info_offsets::WC_VERSION as u64;
        let _ = self.ram.write_obj(base, &1u32);
        let _ = self.ram.write_obj(base + 4, &(sec as u32));
        let _ = self.ram.write_obj(base + 8, &nsec);
        let _ = self.ram.write_obj(base + 12, &((sec >> 32) as u32));
        let _ = self.ram.write_obj(base, &2u32);
    }

    /// Fires vCPU `vcpu`'s singleshot timer if it is still armed with `generation`.
    pub fn fire_vcpu_timer(&self, vcpu: u32, generation: Option<u64>) {
        let Some(v) = self.vcpus.get(vcpu as usize) else {
            return;
        };
        let fired = v.lock().take_due_timer(generation, u64::MAX);
        if fired {
            self.evtchn
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .raise_virq(VIRQ_TIMER, vcpu);
        }
    }

    fn on_timer(&self, kind: TimerKind) {
        match kind {
            TimerKind::Vcpu { vcpu, generation } => self.fire_vcpu_timer(vcpu, Some(generation)),
            TimerKind::Watchdog { id, generation } => {
                let wd = self.watchdogs.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(&(g, true)) = wd.get(id as usize) {
                    if g == generation {
                        drop(wd);
                        tracing::warn!(domain = %self.config.name, watchdog = id + 1, "watchdog expired");
                        self.request_exit(DomainExit::Watchdog);
                    }
                }
            }
        }
    }

    /// Pauses every vCPU (they leave guest mode and wait).
    pub fn pause(&self) {
        let now = self.clock.now_ns();
        for v in &self.vcpus {
            v.lock().set_paused(true, now);
            v.interrupt();
        }
    }

    /// Suspends the domain for the toolstack (Xen's suspend protocol): vCPU `vcpu`
    /// asked with `SCHEDOP_shutdown(SHUTDOWN_suspend)`. The domain is paused until it
    /// is saved (the restored domain sees the hypercall return 0) or unpaused (the
    /// suspend is cancelled: it returns 1).
    /// Without a toolstack that can save it, the domain ends instead
    /// ([`DomainExit::Suspend`]).
    pub fn suspend_by(&self, vcpu: u32) {
        if !self.saver.load(std::sync::atomic::Ordering::SeqCst) {
            self.request_exit(DomainExit::Suspend);
            return;
        }
        *self.suspended_by.lock().unwrap_or_else(|e| e.into_inner()) = Some(vcpu);
        tracing::info!(domain = %self.config.name, vcpu, "the guest suspended itself");
        self.pause();
    }

    /// The vCPU that suspended the domain, while it is suspended.
    pub fn suspended(&self) -> Option<u32> {
        *self.suspended_by.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resumes every vCPU (a suspended domain's suspend is cancelled).
    pub fn unpause(&self) {
        *self.suspended_by.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let now = self.clock.now_ns();
        for v in &self.vcpus {
            v.lock().set_paused(false, now);
            v.wake();
        }
    }

    /// Raises `VIRQ_DEBUG` on every vCPU that bound it (`xen-vmm` does this on SIGUSR1).
    pub fn raise_debug_virq(&self) {
        let table = self.evtchn.lock().unwrap_or_else(|e| e.into_inner());
        for v in 0..self.config.vcpus {
            table.raise_virq(rxen_abi::event_channel::VIRQ_DEBUG, v);
        }
    }

    /// Delivers console input to the guest: to `console_io` read with `VIRQ_CONSOLE`
    /// if the guest bound that VIRQ (it reads the emergency console), else to its
    /// console ring, as Xen's console daemon does for a domU.
    pub fn console_input(&self, bytes: &[u8]) {
        let evtchn = self.evtchn.lock().unwrap_or_else(|e| e.into_inner());
        let virq = rxen_abi::event_channel::VIRQ_CONSOLE;
        if evtchn.virq_port(virq, 0).is_some() {
            self.console.push_input(bytes);
            evtchn.raise_virq(virq, 0);
        } else {
            drop(evtchn);
            self.console.push_ring_input(bytes);
        }
    }
}

/// A running domain.
pub struct Domain {
    /// Declared (and so dropped) before `shared`, which owns the guest RAM.
    _vm: VmFd,
    shared: Arc<DomainShared>,
    threads: Vec<JoinHandle<()>>,
    timer_thread: Option<JoinHandle<()>>,
    /// Serves the console ring; stopped (after a last drain) once the vCPUs are gone.
    console_ring: Option<ConsoleRingBackend>,
    /// When `create` was called, for start-up measurements.
    pub created_at: Instant,
}

pub(crate) fn measure_tsc_offset(fd: &VcpuFd) -> i64 {
    use kvm_bindings::{kvm_msr_entry, Msrs};
    const MSR_IA32_TSC: u32 = 0x10;
    let Ok(mut msrs) = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_IA32_TSC,
        ..Default::default()
    }]) else {
        return 0;
    };
    let ok = fd.get_msrs(&mut msrs).unwrap_or(0) == 1;
    let after = crate::clock::rdtsc();
    if !ok {
        return 0;
    }
    let guest = msrs.as_slice()[0].data;
    // The guest's TSC was read somewhere between `before` and `after`: taking `after`
    // can only make the offset too small, so a published `tsc_timestamp` is never ahead
    // of what the guest reads next (with the midpoint it could be, by up to half the
    // ioctl; guests compute `rdtsc - tsc_timestamp` unsigned, and the wrap made their
    // clock jump centuries ahead: a timer then never fired).
    guest.wrapping_sub(after) as i64
}

pub(crate) fn measure_tsc_khz() -> u32 {
    let t0 = crate::clock::rdtsc();
    let i0 = Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let t1 = crate::clock::rdtsc();
    ((t1 - t0) as f64 / i0.elapsed().as_secs_f64() / 1000.0) as u32
}

impl Domain {
    /// Builds and starts a domain from a guest ELF image.
    pub fn create(
        config: DomainConfig,
        image: &[u8],
        sink: Box<dyn ConsoleSink>,
    ) -> Result<Domain, DomainError> {
        Self::create_as(config, image, sink, BootKind::Rxen)
    }

    /// Builds and starts a domain from a guest ELF image of kind `kind`.
    pub fn create_as(
        config: DomainConfig,
        image: &[u8],
        sink: Box<dyn ConsoleSink>,
        kind: BootKind,
    ) -> Result<Domain, DomainError> {
        let created_at = Instant::now();
        config.validate()?;
        let guest_bytes = config.memory_mib << 20;
        let guest_pages = guest_bytes / rxen_abi::PAGE_SIZE;
        // A PV domain's RAM is followed by rxen's pages (stub, TSS, M2P...).
        let pv_layout = (kind == BootKind::XenPv)
            .then(|| crate::pv::rxen_area::AreaLayout::for_guest(guest_pages));
        let mem_bytes = guest_bytes + pv_layout.map_or(0, |l| l.bytes());
        let kvm = kvm()?;
        let ram = Arc::new(GuestRam::new(&config.name, mem_bytes)?);
        let vm = kvm.create_vm().map_err(kvm_err("create VM"))?;
        // SAFETY: `ram` is kept in `DomainShared`, which the Domain holds; the Domain
        // declares its VM first so that the VM is closed before the RAM can go away.
        unsafe { ram.register(&vm) }.map_err(kvm_err("set memory region"))?;

        let vcpus: Vec<Arc<VcpuControl>> = (0..config.vcpus)
            .map(|i| {
                let v = VcpuControl::new(i);
                // Before any vCPU thread exists, so not one instruction runs.
                v.lock().set_paused(config.start_paused, 0);
                Arc::new(v)
            })
            .collect();
        let pv_area = pv_layout
            .map(|l| crate::pv::rxen_area::write(&ram, l, config.vcpus))
            .transpose()?;
        let shared_info_base = pv_area.map_or(layout::SHARED_INFO, |a| a.shared_info_maddr);
        let shared_info = SharedInfoPage::new(ram.clone(), shared_info_base)?;
        let traps = crate::traps::DomainTraps::new(config.vcpus);
        let mut evtchn = EventChannels::new(
            config.domid,
            config.vcpus,
            shared_info.clone(),
            Arc::new(VcpuKicker(vcpus.clone(), traps.upcall_targets())),
        );
        // The store and console pages are connected to domain 0, as Xen's toolstack does.
        let channels = BootChannels {
            store_evtchn: evtchn
                .alloc_unbound(rxen_abi::DOMID_SELF, 0)
                .map_err(|e| DomainError::Config(format!("evtchn {e}")))?,
            console_evtchn: evtchn
                .alloc_unbound(rxen_abi::DOMID_SELF, 0)
                .map_err(|e| DomainError::Config(format!("evtchn {e}")))?,
        };
        if config.ramdisk.is_some() && pv_area.is_none() {
            return Err(DomainError::Config(
                "a ramdisk needs a Xen PV kernel (rxen's own layout has no initrd)".into(),
            ));
        }
        let (boot, pv_mmu) = match &pv_area {
            None => (
                builder::build(&ram, image, &config.cmdline, channels)?,
                None,
            ),
            Some(area) => {
                let (boot, mmu) = crate::pv::boot::build(
                    &ram,
                    guest_pages,
                    crate::pv::boot::PvBootFiles {
                        image,
                        ramdisk: config.ramdisk.as_deref(),
                        cmdline: &config.cmdline,
                    },
                    config.vcpus,
                    channels,
                    area,
                )?;
                // Xen starts every vCPU with events masked.
                for v in 0..config.vcpus {
                    shared_info.set_upcall_mask(v, true);
                }
                let mut mmu = mmu;
                let (grants, nr_grants) = area.layout.grant_frames();
                for g in grants..grants + nr_grants {
                    mmu.set_owner(g, crate::pv::mmu::Owner::GrantFrame)
                        .map_err(|e| DomainError::Config(format!("grant frame {g:#x}: {e}")))?;
                }
                (boot, Some(Arc::new(Mutex::new(mmu))))
            }
        };

        let sync_regs =
            kvm.check_extension(Cap::SyncRegs) && std::env::var_os("RXEN_NO_SYNC_REGS").is_none();
        let mut fds = Vec::new();
        for i in 0..config.vcpus {
            let fd = vm.create_vcpu(i as u64).map_err(kvm_err("create vCPU"))?;
            vcpu::syscall::program_msrs(&fd, boot.syscall_stub)?;
            let sregs = fd.get_sregs().map_err(kvm_err("get sregs"))?;
            let mut sregs = regs::long_mode_sregs(sregs, boot.cr3, &boot.traps);
            sregs.tr.base = boot.tss_base_of(i);
            sregs.cs.selector = boot.selectors.0;
            for seg in [
                &mut sregs.ss,
                &mut sregs.ds,
                &mut sregs.es,
                &mut sregs.fs,
                &mut sregs.gs,
            ] {
                seg.selector = boot.selectors.1;
            }
            // PV vCPUs get Xen's XSAVE: CPUID first (KVM refuses CR4.OSXSAVE
            // without it), then CR4, then XCR0.
            let xsave = if pv_area.is_some() {
                vcpu::xstate::set_cpuid(&fd, Some(&mut sregs)).map_err(DomainError::Xstate)?
            } else {
                false
            };
            fd.set_sregs(&sregs).map_err(kvm_err("set sregs"))?;
            if xsave {
                vcpu::xstate::set_xcr0(&fd, vcpu::xstate::XCR0_INIT)
                    .map_err(DomainError::Xstate)?;
            }
            let fpu = kvm_bindings::kvm_fpu {
                fcw: 0x37f,
                mxcsr: 0x1f80,
                ..Default::default()
            };
            fd.set_fpu(&fpu).map_err(kvm_err("set fpu"))?;
            if i == 0 {
                fd.set_regs(&regs::boot_regs(
                    boot.entry,
                    boot.stack_top,
                    boot.start_info,
                ))
                .map_err(kvm_err("set regs"))?;
            }
            fds.push(fd);
        }
        let tsc_khz = fds[0]
            .get_tsc_khz()
            .ok()
            .filter(|&k| k > 0)
            .unwrap_or_else(measure_tsc_khz);
        let tsc_offset = measure_tsc_offset(&fds[0]);

        let console = Console::with_limits(sink, config.console);
        let grants = match (&pv_area, &pv_mmu) {
            (Some(area), Some(mmu)) => {
                let mmu = mmu.clone();
                crate::grant::GrantTable::new_pv(
                    ram.clone(),
                    config.domid,
                    crate::grant::PvFrames {
                        guest_pages,
                        grant_base: area.layout.grant_frames().0,
                        is_typed: Box::new(move |frame| {
                            let mmu = mmu.lock().unwrap_or_else(|e| e.into_inner());
                            mmu.frame(frame).is_some_and(|f| {
                                f.is_table() || f.ty == crate::pv::mmu::FrameType::SegDesc
                            })
                        }),
                    },
                )
            }
            _ => crate::grant::GrantTable::new(ram.clone(), config.domid),
        };
        let shared = Arc::new(DomainShared {
            config,
            ram,
            shared_info,
            evtchn: Mutex::new(evtchn),
            grants,
            vcpus,
            online: OnlineVcpus::at_boot(),
            clock: DomainClock::new(tsc_khz),
            tsc_offset,
            console,
            timers: Arc::new(TimerQueue::default()),
            boot,
            shared_info_base,
            pv_mmu,
            pv_m2p: pv_area.map_or((0, 0), |a| a.layout.m2p()),
            boot_channels: channels,
            exit: Mutex::new(None),
            exit_cond: Condvar::new(),
            shutdown_code: Mutex::new(None),
            suspended_by: Mutex::new(None),
            saver: std::sync::atomic::AtomicBool::new(false),
            watchdogs: Mutex::new([(0, false); NR_WATCHDOGS]),
            pit: Mutex::new(crate::pit::Pit::new()),
            traps,
            stats: Default::default(),
        });
        shared.write_wallclock();
        for i in 0..shared.config.vcpus {
            shared.update_time_info(i);
        }

        Self::launch(vm, shared, fds, sync_regs, created_at)
    }

    /// Starts the console ring backend, the timer thread and one thread per vCPU of a
    /// built (or restored) domain whose vCPUs `fds` hold their first state.
    pub(crate) fn launch(
        vm: VmFd,
        shared: Arc<DomainShared>,
        fds: Vec<VcpuFd>,
        sync_regs: bool,
        created_at: Instant,
    ) -> Result<Domain, DomainError> {
        // Before any vCPU runs, so that the guest's first notify finds the backend.
        let console_ring =
            ConsoleRingBackend::start(shared.clone()).map_err(DomainError::Config)?;
        vcpu::install_kick_handler()
            .map_err(|e| DomainError::Thread(std::io::Error::from_raw_os_error(e.errno())))?;
        let timer_shared = Arc::downgrade(&shared);
        let timers = shared.timers.clone();
        let timer_thread = std::thread::Builder::new()
            .name(format!("{}-timers", shared.config.name))
            .spawn(move || {
                crate::timers::precise_timer_slack();
                timers.run(|kind| {
                    if let Some(s) = timer_shared.upgrade() {
                        s.on_timer(kind)
                    }
                })
            })
            .map_err(DomainError::Thread)?;
        let mut threads = Vec::new();
        for (i, fd) in fds.into_iter().enumerate() {
            let s = shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("{}-vcpu{i}", s.config.name))
                .spawn(move || vcpu::thread::run(fd, s, i as u32, sync_regs));
            match t {
                Ok(t) => threads.push(t),
                Err(e) => {
                    shared.request_exit(DomainExit::Internal(format!("spawning vCPU thread: {e}")));
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(DomainError::Thread(e));
                }
            }
        }
        Ok(Domain {
            shared,
            _vm: vm,
            threads,
            timer_thread: Some(timer_thread),
            console_ring: Some(console_ring),
            created_at,
        })
    }

    /// State shared with the domain's threads (console input, pause, event channels).
    pub fn shared(&self) -> &Arc<DomainShared> {
        &self.shared
    }

    /// Ends the domain from outside.
    pub fn destroy(&self) {
        self.shared.request_exit(DomainExit::Destroyed);
    }

    /// Waits until the domain ends, stops its threads and returns why it ended.
    pub fn wait(mut self) -> DomainExit {
        let why = self.shared.wait_exit();
        self.join();
        why
    }

    fn join(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.shared.timers.stop();
        if let Some(t) = self.timer_thread.take() {
            let _ = t.join();
        }
        if let Some(mut c) = self.console_ring.take() {
            c.stop();
        }
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shared.request_exit(DomainExit::Destroyed);
            self.join();
        }
    }
}
