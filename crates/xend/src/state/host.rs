//! The host as Xen's toolstack shows it: Domain-0's entry in the domain list and the
//! figures of `xm info` (xl info's keys where they make sense on a KVM host).

use rxen_xend_api::{DomainInfo, DomainState, HostInfo, VcpuInfo, DOM0_ID, DOM0_NAME};
use rxen_xlcfg::{Action, DomainSpec};

/// Version of the Xen interface rxen implements (what guests see in `xen_version`).
const XEN_MAJOR: u32 = 4;
const XEN_MINOR: u32 = 19;

/// A field of /proc/meminfo, in MiB.
pub(super) fn meminfo_mib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

fn nr_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// CPU time the host has spent outside idle (user, nice, system, irq, softirq), in
/// seconds: what xl shows as Domain-0's time.
fn host_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let busy: u64 = [0usize, 1, 2, 5, 6].iter().filter_map(|i| f.get(*i)).sum();
    busy as f64 / hz
}

/// Domain-0's vCPUs: the host's CPUs, with their busy time from /proc/stat.
fn host_vcpus() -> Vec<VcpuInfo> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    stat.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let id: u32 = f.next()?.strip_prefix("cpu")?.parse().ok()?;
            let v: Vec<u64> = f.filter_map(|x| x.parse().ok()).collect();
            let busy: u64 = [0usize, 1, 2, 5, 6].iter().filter_map(|i| v.get(*i)).sum();
            Some(VcpuInfo {
                id,
                online: true,
                state: "r".into(),
                cpu_time_s: busy as f64 / hz,
                host_cpu: Some(id),
                affinity: "all".into(),
            })
        })
        .collect()
}

fn uptime_s() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Domain-0: the host itself, listed first as xl does.
pub fn dom0_info() -> DomainInfo {
    let memory = meminfo_mib("MemTotal:");
    let cpus = nr_cpus();
    let spec = DomainSpec {
        name: DOM0_NAME.into(),
        uuid: Some("00000000-0000-0000-0000-000000000000".into()),
        memory,
        maxmem: Some(memory),
        vcpus: cpus,
        maxvcpus: Some(cpus),
        kernel: None,
        ramdisk: None,
        cmdline: String::new(),
        on_poweroff: Action::Destroy,
        on_reboot: Action::Restart,
        on_crash: Action::Restart,
        disks: Vec::new(),
        vifs: Vec::new(),
    };
    let uptime = uptime_s();
    DomainInfo {
        domid: Some(DOM0_ID),
        name: DOM0_NAME.into(),
        uuid: "00000000-0000-0000-0000-000000000000".into(),
        state: DomainState::Running,
        state_flags: "r-----".into(),
        memory_mib: memory,
        maxmem_mib: memory,
        vcpus: cpus,
        maxvcpus: cpus,
        uptime_s: uptime,
        cpu_time_s: host_cpu_seconds(),
        vcpu_list: host_vcpus(),
        hypercalls: 0,
        managed: false,
        pid: None,
        start_time: uptime.map(|u| super::registry::now() - u),
        exit_reason: None,
        unresponsive: false,
        console_dropped_bytes: 0,
        config: spec,
    }
}

fn uname() -> (String, String, String, String) {
    let mut u = std::mem::MaybeUninit::<libc::utsname>::zeroed();
    // SAFETY: uname fills the struct it is given; it is zeroed, so every field stays a
    // NUL-terminated string even if the call failed.
    let u = unsafe {
        libc::uname(u.as_mut_ptr());
        u.assume_init()
    };
    let s = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (s(&u.nodename), s(&u.release), s(&u.version), s(&u.machine))
}

fn cpu_mhz() -> u64 {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("cpu MHz"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .map_or(0, |m| m as u64)
}

/// `xm info`'s figures.
pub fn host_info(domains: &[DomainInfo]) -> HostInfo {
    let (host, release, version, machine) = uname();
    let cpus = nr_cpus();
    HostInfo {
        host,
        release,
        version,
        machine,
        nr_cpus: cpus,
        max_cpu_id: cpus.saturating_sub(1),
        nr_nodes: 1,
        cores_per_socket: cpus,
        threads_per_core: 1,
        cpu_mhz: cpu_mhz(),
        virt_caps: "pv".into(),
        total_memory: meminfo_mib("MemTotal:"),
        free_memory: meminfo_mib("MemAvailable:"),
        xen_major: XEN_MAJOR,
        xen_minor: XEN_MINOR,
        xen_extra: "-rxen".into(),
        xen_version: format!("{XEN_MAJOR}.{XEN_MINOR}-rxen"),
        xen_caps: "xen-3.0-x86_64".into(),
        xen_scheduler: "rxen (host threads)".into(),
        xen_pagesize: 4096,
        xend_version: env!("CARGO_PKG_VERSION").into(),
        domains: domains.len() as u32,
        domain_memory_mib: domains
            .iter()
            .filter(|d| d.state.has_vmm())
            .map(|d| d.memory_mib)
            .sum(),
    }
}
