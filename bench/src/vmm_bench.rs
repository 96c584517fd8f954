//! Benchmarks of domains: creation, hypercall cost, CPU and memory overhead, IPIs and
//! timers. Guests run in-process through the `rxen_vmm` library.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rxen_vmm::console::{CaptureSink, ConsoleSink};
use rxen_vmm::{Domain, DomainConfig, DomainExit};

use crate::Figure;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

fn image(name: &str) -> Result<Vec<u8>, String> {
    let p = rxen_guest_images::guest_path(name);
    std::fs::read(&p).map_err(|e| format!("reading guest {}: {e}", p.display()))
}

/// Runs a guest to completion and returns its console output.
fn run_guest(name: &str, memory_mib: u64, vcpus: u32, cmdline: &str) -> Result<String, String> {
    let sink = CaptureSink::default();
    let cfg = DomainConfig {
        name: name.into(),
        memory_mib,
        vcpus,
        cmdline: cmdline.into(),
        ..Default::default()
    };
    let d =
        Domain::create(cfg, &image(name)?, Box::new(sink.clone())).map_err(|e| e.to_string())?;
    let why = d.wait();
    let out = String::from_utf8_lossy(&sink.0.lock().map_err(|_| "poisoned")?).into_owned();
    if why != DomainExit::Poweroff {
        return Err(format!("guest {name} ended with {why}: {out}"));
    }
    Ok(out)
}

fn field(out: &str, key: &str) -> Result<f64, String> {
    out.split(&format!("{key}="))
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no {key}= in guest output: {out}"))
}

/// A sink that records when the guest first wrote to its console.
struct FirstWrite(Arc<Mutex<Option<Instant>>>);

impl ConsoleSink for FirstWrite {
    fn write(&mut self, _bytes: &[u8]) {
        if let Ok(mut f) = self.0.lock() {
            f.get_or_insert_with(Instant::now);
        }
    }
}

fn bare_vm_create_ms() -> Result<f64, String> {
    let kvm = rxen_vmm::domain::kvm().map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let ram = rxen_vmm::memory::GuestRam::new("bare", 32 << 20).map_err(|e| e.to_string())?;
    let vm = kvm.create_vm().map_err(|e| e.to_string())?;
    // SAFETY: `ram` is declared before `vm`, so it is dropped after it.
    unsafe { ram.register(&vm) }.map_err(|e| e.to_string())?;
    let _vcpu = vm.create_vcpu(0).map_err(|e| e.to_string())?;
    Ok(t0.elapsed().as_secs_f64() * 1e3)
}

fn create_to_main(quick: bool) -> Result<Figure, String> {
    let img = image("hello")?;
    let n = if quick { 5 } else { 30 };
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    for i in 0..n {
        bare.push(bare_vm_create_ms()?);
        let first = Arc::new(Mutex::new(None));
        let cfg = DomainConfig {
            name: format!("bench{i}"),
            memory_mib: 32,
            ..Default::default()
        };
        let t0 = Instant::now();
        let d = Domain::create(cfg, &img, Box::new(FirstWrite(first.clone())))
            .map_err(|e| e.to_string())?;
        d.wait();
        let at = first
            .lock()
            .map_err(|_| "poisoned")?
            .ok_or("guest printed nothing")?;
        ours.push((at - t0).as_secs_f64() * 1e3);
    }
    let (v, b) = (median(&mut ours), median(&mut bare));
    Ok(Figure {
        name: "create_to_main_ms".into(),
        value: v,
        unit: "ms".into(),
        baseline: b,
        ratio: v / b,
        note: "bare KVM VM+memslot+vCPU creation; goal value <= 5 ms (32 MiB)".into(),
    })
}

fn exit_costs(quick: bool) -> Result<Figure, String> {
    let out = run_guest("exitbench", 32, 1, if quick { "n=2000" } else { "n=50000" })?;
    let (h, r) = (field(&out, "hypercall_ns")?, field(&out, "raw_exit_ns")?);
    Ok(Figure {
        name: "hypercall_vs_raw_exit_ratio".into(),
        value: h / 1000.0,
        unit: "us".into(),
        baseline: r / 1000.0,
        ratio: h / r,
        note: "raw KVM port-I/O exit round trip, same guest; goal ratio <= 1.3".into(),
    })
}

/// Counts console bytes and keeps only the newest ones (the console benchmark writes
/// megabytes).
#[derive(Clone, Default)]
struct TailSink(Arc<Mutex<Vec<u8>>>);

impl ConsoleSink for TailSink {
    fn write(&mut self, bytes: &[u8]) {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(bytes);
            let excess = v.len().saturating_sub(4096);
            v.drain(..excess);
        }
    }
}

fn console_ring_throughput(quick: bool) -> Result<Figure, String> {
    let kib = if quick { 2048 } else { 32 * 1024 };
    let sink = TailSink::default();
    let cfg = DomainConfig {
        name: "consolebench".into(),
        cmdline: format!("console_kib={kib}"),
        console: rxen_vmm::console::ConsoleLimits::unlimited(),
        ..Default::default()
    };
    let d = Domain::create(cfg, &image("exitbench")?, Box::new(sink.clone()))
        .map_err(|e| e.to_string())?;
    let why = d.wait();
    let out = String::from_utf8_lossy(&sink.0.lock().map_err(|_| "poisoned")?).into_owned();
    if why != DomainExit::Poweroff {
        return Err(format!("console benchmark ended with {why}: {out}"));
    }
    let bytes = field(&out, "bytes")?;
    let mb_s = |ns: f64| bytes / 1e6 / (ns / 1e9);
    let (ring, io) = (mb_s(field(&out, "ring_ns")?), mb_s(field(&out, "io_ns")?));
    Ok(Figure {
        name: "console_ring_mb_s".into(),
        value: ring,
        unit: "MB/s".into(),
        baseline: io,
        ratio: ring / io,
        note: "guest output through the console ring (2 KiB per notify, until the backend \
               took it) vs console_io (2 KiB per call), no rate limit; higher is better"
            .into(),
    })
}

/// Hypercall entry by raw `syscall` (Xen's 64-bit PV way), `xen_version(0)`, against
/// a bare port-I/O exit in the same guest and run.
fn pv_hypercall(quick: bool) -> Result<Figure, String> {
    let out = run_guest(
        "pvsyscall",
        32,
        1,
        if quick {
            "check n=2000"
        } else {
            "check n=50000"
        },
    )?;
    let (s, r) = (field(&out, "syscall_ns")?, field(&out, "raw_exit_ns")?);
    Ok(Figure {
        name: "pv_hypercall_us".into(),
        value: s / 1000.0,
        unit: "us".into(),
        baseline: r / 1000.0,
        ratio: s / r,
        note: "syscall entry, xen_version(0); baseline: raw KVM port-I/O exit, same guest".into(),
    })
}

/// A guest #PF bounced to the guest's handler and back by the `iret` hypercall
/// (guest `traps`), against a bare port-I/O exit in the same guest and run.
fn trap_bounce(quick: bool) -> Result<Figure, String> {
    let out = run_guest(
        "traps",
        32,
        1,
        if quick {
            "recover n=1000"
        } else {
            "recover n=20000"
        },
    )?;
    if !out.contains("traps: all checks passed") {
        return Err(format!("traps guest failed: {out}"));
    }
    let (t, r) = (field(&out, "trap_bounce_ns")?, field(&out, "raw_exit_ns")?);
    Ok(Figure {
        name: "trap_bounce_us".into(),
        value: t / 1000.0,
        unit: "us".into(),
        baseline: r / 1000.0,
        ratio: t / r,
        note: "guest #PF -> trap stub exit -> bounce to the guest handler -> iret hypercall; baseline: raw KVM port-I/O exit, same guest".into(),
    })
}

/// An event (the guest's timer VIRQ) to a guest spinning without exits: from the
/// timer's deadline to the guest's event callback (guest `traps upcall`); baseline: the
/// minimum of the same run.
fn upcall_latency(quick: bool) -> Result<Figure, String> {
    let out = run_guest(
        "traps",
        32,
        1,
        if quick { "upcall n=20" } else { "upcall n=200" },
    )?;
    if !out.contains("traps: upcalls delivered") {
        return Err(format!("traps guest failed: {out}"));
    }
    let median = field(&out, "upcall_latency_ns")?;
    let min = field(&out, "upcall_min_ns")?;
    Ok(Figure {
        name: "upcall_latency_us".into(),
        value: median / 1000.0,
        unit: "us".into(),
        baseline: min / 1000.0,
        ratio: median / min.max(1.0),
        note: "timer deadline -> event callback of a spinning guest (median; baseline: min), includes the host timer thread's lateness".into(),
    })
}

fn cpu_ratio(quick: bool) -> Result<Figure, String> {
    let iters: u64 = if quick { 10_000_000 } else { 100_000_000 };
    // Interleave guest and native runs and keep the best of each: the host is shared
    // and noisy, and the minimum is the least disturbed run of the same code.
    let (mut guest_ns, mut native_ns) = (f64::MAX, f64::MAX);
    for _ in 0..if quick { 1 } else { 3 } {
        let out = run_guest("cpubench", 32, 1, &format!("iters={iters}"))?;
        guest_ns = guest_ns.min(field(&out, "ns")?);
        rxen_workloads::cpu_work(iters / 100, 1);
        let t0 = Instant::now();
        let sum = rxen_workloads::cpu_work(iters, 7);
        native_ns = native_ns.min(t0.elapsed().as_nanos() as f64);
        if !out.contains(&format!("sum={sum}")) {
            return Err("guest and native CPU workloads disagree".into());
        }
    }
    Ok(Figure {
        name: "cpu_ratio".into(),
        value: guest_ns / 1e6,
        unit: "ms".into(),
        baseline: native_ns / 1e6,
        ratio: native_ns / guest_ns,
        note: "same code natively, best of runs; ratio = native/guest time, goal >= 0.98".into(),
    })
}

fn mem_ratio(quick: bool) -> Result<Figure, String> {
    let (mib, passes) = if quick { (8usize, 2u32) } else { (64, 8) };
    let (mut guest_ns, mut native_ns, mut bytes) = (f64::MAX, f64::MAX, 0.0);
    let mut buf = vec![0u64; mib * 1024 * 1024 / 8];
    rxen_workloads::mem_work(&mut buf, 1);
    for _ in 0..if quick { 1 } else { 3 } {
        let out = run_guest(
            "membench",
            (mib as u64) * 2 + 32,
            1,
            &format!("mib={mib} passes={passes}"),
        )?;
        guest_ns = guest_ns.min(field(&out, "ns")?);
        bytes = field(&out, "bytes")?;
        let t0 = Instant::now();
        rxen_workloads::mem_work(&mut buf, passes);
        native_ns = native_ns.min(t0.elapsed().as_nanos() as f64);
    }
    Ok(Figure {
        name: "mem_ratio".into(),
        value: bytes / guest_ns,
        unit: "GB/s".into(),
        baseline: bytes / native_ns,
        ratio: native_ns / guest_ns,
        note: "same code natively, best of runs; ratio = guest/native bandwidth, goal >= 0.98"
            .into(),
    })
}

fn host_pingpong_us(rounds: u32) -> f64 {
    let pair = Arc::new((Mutex::new(0u32), Condvar::new()));
    let p2 = pair.clone();
    let t = std::thread::spawn(move || {
        let (m, c) = &*p2;
        for i in 0..rounds {
            let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
            while *g != 2 * i + 1 {
                g = c.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            *g += 1;
            c.notify_all();
        }
    });
    let (m, c) = &*pair;
    let t0 = Instant::now();
    for i in 0..rounds {
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        *g += 1;
        c.notify_all();
        while *g != 2 * i + 2 {
            g = c.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
    let us = t0.elapsed().as_secs_f64() * 1e6 / rounds as f64;
    let _ = t.join();
    us
}

fn ipi_pingpong(quick: bool) -> Result<Figure, String> {
    let rounds = if quick { 200 } else { 5000 };
    let out = run_guest("smp", 32, 2, &format!("rounds={rounds}"))?;
    let v = field(&out, "ipi_pingpong_us")?;
    let b = host_pingpong_us(rounds);
    Ok(Figure {
        name: "ipi_pingpong_us".into(),
        value: v,
        unit: "us".into(),
        baseline: b,
        ratio: v / b,
        note: "host threads ping-ponging through a condvar".into(),
    })
}

fn host_sleep_error_us(rounds: usize) -> f64 {
    // SAFETY: PR_SET_TIMERSLACK only affects this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let mut errs: Vec<f64> = (0..rounds)
        .map(|i| {
            let d = Duration::from_micros([50, 200, 1000, 3000][i % 4]);
            let t0 = Instant::now();
            std::thread::sleep(d);
            (t0.elapsed() - d).as_secs_f64() * 1e6
        })
        .collect();
    median(&mut errs)
}

fn timer_error(quick: bool) -> Result<Figure, String> {
    let rounds = if quick { 40 } else { 400 };
    let out = run_guest("timers", 32, 1, &format!("rounds={rounds}"))?;
    let v = field(&out, "p50")?;
    let b = host_sleep_error_us(rounds);
    Ok(Figure {
        name: "timer_error_us".into(),
        value: v,
        unit: "us".into(),
        baseline: b,
        ratio: v / b.max(1.0),
        note: "host thread sleep lateness (p50)".into(),
    })
}

type Bench = fn(bool) -> Result<Figure, String>;

pub fn run(wants: &dyn Fn(&str) -> bool, quick: bool) -> Result<Vec<Figure>, String> {
    let names = [
        "create_to_main_ms",
        "hypercall_vs_raw_exit_ratio",
        "pv_hypercall_us",
        "trap_bounce_us",
        "upcall_latency_us",
        "cpu_ratio",
        "mem_ratio",
        "ipi_pingpong_us",
        "timer_error_us",
        "console_ring_mb_s",
    ];
    if !names.iter().any(|n| wants(n)) {
        return Ok(Vec::new());
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return Err(format!(
            "/dev/kvm is not usable ({e}); the domain benchmarks need KVM"
        ));
    }
    let benches: [(&str, Bench); 10] = [
        ("create_to_main_ms", create_to_main),
        ("hypercall_vs_raw_exit_ratio", exit_costs),
        ("pv_hypercall_us", pv_hypercall),
        ("trap_bounce_us", trap_bounce),
        ("upcall_latency_us", upcall_latency),
        ("cpu_ratio", cpu_ratio),
        ("mem_ratio", mem_ratio),
        ("ipi_pingpong_us", ipi_pingpong),
        ("timer_error_us", timer_error),
        ("console_ring_mb_s", console_ring_throughput),
    ];
    let mut out = Vec::new();
    for (name, f) in benches {
        if wants(name) {
            out.push(f(quick)?);
        }
    }
    Ok(out)
}
