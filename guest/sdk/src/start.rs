//! Boot: the ELF entry point, reading `start_info`, setting up the heap, per-vCPU
//! data and the timer VIRQ, then calling the guest's main.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rxen_abi::event_channel::VIRQ_TIMER;
use rxen_abi::hypercall::SEGBASE_FS;
use rxen_abi::xen::StartInfo;

core::arch::global_asm!(
    ".globl _start",
    "_start:",
    "mov rdi, rsi",
    "and rsp, -16",
    "call {start}",
    "ud2",
    start = sym rxen_guest_start,
);

static START_INFO: AtomicU64 = AtomicU64::new(0);
/// Where `shared_info` is mapped (0: at `start_info.shared_info`, rxen's layout).
static SHARED_INFO_VA: AtomicU64 = AtomicU64::new(0);
/// Where the xenstore ring page is mapped (0: at `store_mfn << 12`, rxen's layout).
static STORE_VA: AtomicU64 = AtomicU64::new(0);
static PV_LAYOUT: AtomicBool = AtomicBool::new(false);

extern "C" {
    /// End of the image, defined by the linker.
    static _end: u8;
}

extern "Rust" {
    fn __rxen_guest_main();
}

/// Records where `start_info` is (boot, before anything reads it).
pub(crate) fn set_start_info(si: *const StartInfo) {
    START_INFO.store(si as u64, Ordering::Relaxed);
}

/// Records that the domain runs on Xen's PV layout, with `shared_info` at `va`.
pub(crate) fn set_pv_layout(shared_info_va: u64) {
    SHARED_INFO_VA.store(shared_info_va, Ordering::Relaxed);
    PV_LAYOUT.store(true, Ordering::Relaxed);
}

/// Records where the xenstore ring page is mapped (PV layout).
pub(crate) fn set_store_page(va: u64) {
    STORE_VA.store(va, Ordering::Relaxed);
}

/// Is this a Xen PV kernel (booted on Xen's PV layout, [`crate::pv`])?
pub fn is_pv() -> bool {
    PV_LAYOUT.load(Ordering::Relaxed)
}

/// The domain's `shared_info` as this guest maps it.
pub fn shared_info() -> *mut rxen_abi::xen::SharedInfo {
    match SHARED_INFO_VA.load(Ordering::Relaxed) {
        0 => start_info().shared_info as *mut rxen_abi::xen::SharedInfo,
        va => va as *mut rxen_abi::xen::SharedInfo,
    }
}

/// Virtual address of the xenstore ring page.
pub fn store_page() -> u64 {
    match STORE_VA.load(Ordering::Relaxed) {
        0 => start_info().store_mfn << 12,
        va => va,
    }
}

/// The code and stack selectors of this domain's kernel (Xen's `FLAT_KERNEL_CS`/`SS`
/// for PV kernels, rxen's 0x33/0x2b otherwise).
pub fn kernel_selectors() -> (u16, u16) {
    if is_pv() {
        (0xe033, 0xe02b)
    } else {
        (rxen_abi::layout::FLAT_CS, rxen_abi::layout::FLAT_SS)
    }
}

/// The domain's `start_info`.
pub fn start_info() -> &'static StartInfo {
    // SAFETY: set once at boot to the page the domain builder filled, which stays
    // mapped for the life of the domain.
    unsafe { &*(START_INFO.load(Ordering::Relaxed) as *const StartInfo) }
}

/// The command line from `start_info`.
pub fn cmdline() -> &'static str {
    let raw = &start_info().cmd_line;
    let n = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    core::str::from_utf8(&raw[..n]).unwrap_or("")
}

/// The value of `key=value` in the command line.
pub fn cmdline_value(key: &str) -> Option<&'static str> {
    cmdline()
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// Per-vCPU start-up: per-vCPU record and timer VIRQ (vCPU 0 and every secondary).
pub(crate) fn init_vcpu(id: u32) {
    crate::percpu::prepare(id);
    if is_pv() {
        // Xen starts vCPUs with events masked; rxen's layout starts them unmasked.
        // SAFETY: vcpu_info of this vCPU in the mapped shared_info; a byte store.
        unsafe {
            core::ptr::addr_of_mut!((*shared_info()).vcpu_info[id as usize % 32].evtchn_upcall_mask)
                .write_volatile(0)
        };
    }
    if id == 0 {
        let _ = crate::hypercall::set_segment_base(SEGBASE_FS, crate::percpu::record_address(0));
    }
    if let Ok(p) = crate::events::bind_virq(VIRQ_TIMER, id) {
        crate::percpu::current()
            .timer_port
            .store(p, Ordering::Relaxed);
    }
}

extern "C" fn rxen_guest_start(si: *const StartInfo) -> ! {
    set_start_info(si);
    crate::console::init_ring(start_info());
    init_vcpu(0);
    let heap_start = (core::ptr::addr_of!(_end) as u64 + 4095) & !4095;
    let heap_end = start_info().nr_pages * rxen_abi::PAGE_SIZE;
    crate::heap::init(heap_start, heap_end);
    // SAFETY: provided by the guest through `entry!`.
    unsafe { __rxen_guest_main() };
    crate::hypercall::shutdown(rxen_abi::sched::SHUTDOWN_POWEROFF)
}
