//! Boots every example guest on KVM through `xen-vmm` and checks output and exit status.
// A test fails by panicking: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

#[test]
fn hello_reports_start_info_and_powers_off() {
    if !kvm_available("hello_reports_start_info_and_powers_off") {
        return;
    }
    let (code, out, err) = run_guest(
        "hello",
        &["--memory", "64", "--cmdline", "greeting=hi there"],
    );
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("start_info.magic: xen-3.0-x86_64"), "{out}");
    assert!(out.contains("start_info.nr_pages: 16384"), "{out}");
    // A PV kernel: shared_info is a machine address, the frame after its 64 MiB.
    assert!(out.contains("start_info.shared_info: 0x4000000"), "{out}");
    assert!(
        out.contains("start_info.cmd_line: greeting=hi there"),
        "{out}"
    );
    assert!(
        out.contains("xen_version: 4.19.0-rxen caps xen-3.0-x86_64"),
        "{out}"
    );
    // A PV domain is not auto-translated; it has what Xen gives every PV domain:
    // MMU_PT_UPDATE_PRESERVE_AD, HIGHMEM_ASSIST and GNTTAB_MAP_AVAIL_BITS.
    assert!(out.contains("features[0]: 0xe0"), "{out}");
    assert!(out.trim_end().ends_with("goodbye"), "{out}");
}

#[test]
fn embedded_default_guest_runs_without_kernel() {
    if !kvm_available("embedded_default_guest_runs_without_kernel") {
        return;
    }
    // The default guest runs until shut down; without xenstore it waits forever.
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_xen-vmm"))
        .arg("run")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("read");
    assert!(first.starts_with("rxen idle guest: 32 MiB"), "{first}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().expect("wait").code(), Some(9));
}

#[test]
fn guest_endings_map_to_distinct_exit_statuses() {
    if !kvm_available("guest_endings_map_to_distinct_exit_statuses") {
        return;
    }
    let (code, out, _) = run_guest("hello", &["--cmdline", "panic"]);
    assert_eq!(code, 4);
    assert!(out.contains("guest panic: panicked at"), "{out}");
    assert!(out.contains("requested by the command line"), "{out}");
    let (code, _, err) = run_guest("hello", &["--cmdline", "reboot"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("reboot"), "{err}");
    let (code, _, err) = run_guest("hello", &["--cmdline", "crash"]);
    assert_eq!(code, 4, "{err}");
    let (code, _, err) = run_guest("hello", &["--cmdline", "fault"]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("triple-faulted"), "{err}");
    assert!(err.contains("rip=0x"), "registers on stderr: {err}");
}

#[test]
fn timers_are_accurate() {
    if !kvm_available("timers_are_accurate") {
        return;
    }
    // With a deadline: a guest clock that jumped ahead (pvclock's tsc_timestamp a few
    // cycles ahead of the guest's TSC, read unsigned) once left it blocked for centuries.
    let (code, out, err) = run_guest_within(
        "timers",
        &["--cmdline", "rounds=100"],
        std::time::Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("timers: ok"), "{out}");
    let p50: u64 = out
        .split("p50=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("p50 printed");
    // Functional bound only (figures belong to the benchmark): a wake-up that is a
    // whole millisecond late would mean the timer path is broken.
    assert!(p50 < 1000, "median lateness {p50} us");
}

#[test]
fn smp_ipi_ping_pong() {
    if !kvm_available("smp_ipi_ping_pong") {
        return;
    }
    // vCPU 1 of a PV kernel runs on the L4 its context names (VCPUOP_initialise's
    // ctrlreg[3] through the MMU); without that it hangs, so the run has a deadline.
    let (code, out, err) = run_guest_within(
        "smp",
        &["--vcpus", "2", "--cmdline", "rounds=300"],
        std::time::Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("vcpu 1: up"), "{out}");
    assert!(out.contains("ipi_pingpong_us="), "{out}");
    assert!(out.contains("smp: ok"), "{out}");
}

#[test]
fn smp_guest_with_one_vcpu_fails_cleanly() {
    if !kvm_available("smp_guest_with_one_vcpu_fails_cleanly") {
        return;
    }
    // vCPU 1 does not exist: VCPUOP_* return -ENOENT, the guest panics -> crash status.
    let (code, out, _) = run_guest("smp", &["--vcpus", "1"]);
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains("ENOENT") || out.contains("guest panic"),
        "{out}"
    );
}

#[test]
fn benchmarks_guests_run() {
    if !kvm_available("benchmarks_guests_run") {
        return;
    }
    let (code, out, _) = run_guest("cpubench", &["--cmdline", "iters=1000000"]);
    assert_eq!(code, 0);
    let sum = rxen_workloads_sum(1_000_000);
    assert!(
        out.contains(&format!("sum={sum}")),
        "guest and host compute the same checksum: {out}"
    );
    let (code, out, _) = run_guest(
        "membench",
        &["--memory", "64", "--cmdline", "mib=4 passes=2"],
    );
    assert_eq!(code, 0);
    assert!(out.contains("bytes=16777216"), "{out}");
    let (code, out, _) = run_guest("exitbench", &["--cmdline", "n=500"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("hypercall_ns=") && out.contains("raw_exit_ns="),
        "{out}"
    );
}

fn rxen_workloads_sum(iters: u64) -> u64 {
    // The guest runs the same crates/workloads code, natively here.
    rxen_workloads::cpu_work(iters, 7)
}

#[test]
fn hypercall_fuzzer_cannot_hurt_the_vmm() {
    if !kvm_available("hypercall_fuzzer_cannot_hurt_the_vmm") {
        return;
    }
    for seed in ["1", "2"] {
        let (code, out, err) = run_guest(
            "hcall-fuzz",
            &["--cmdline", &format!("calls=150000 seed={seed}")],
        );
        assert_eq!(
            code,
            0,
            "seed {seed}: {}\n{err}",
            &out[out.len().saturating_sub(500)..]
        );
        assert!(out.contains("hcall-fuzz: ok"), "{out}");
    }
}

#[test]
fn console_input_and_debug_virq_reach_the_guest() {
    if !kvm_available("console_input_and_debug_virq_reach_the_guest") {
        return;
    }
    use std::io::{BufRead, BufReader, Write};
    let g = guest("hello");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_xen-vmm"))
        .args([
            "run",
            "--stdin",
            "--kernel",
            g.to_str().expect("utf-8"),
            "--cmdline",
            "forever",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    let mut wait_for = |needle: &str| loop {
        line.clear();
        assert!(
            out.read_line(&mut line).expect("read") > 0,
            "output ended before {needle:?}"
        );
        if line.contains(needle) {
            return;
        }
    };
    wait_for("waiting for events");
    child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"ping\n")
        .expect("write");
    wait_for("console input: ping");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) };
    wait_for("VIRQ_DEBUG received");
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().expect("wait").code(), Some(9));
}

/// Hypercalls by raw `syscall` (Xen's 64-bit PV entry): results, preserved registers
/// and flags, garbage numbers, a tight loop, and `sched_op(shutdown)` by `syscall`.
#[test]
fn pvsyscall_hypercalls_by_syscall() {
    if !kvm_available("pvsyscall_hypercalls_by_syscall") {
        return;
    }
    // The guest is a PV kernel: its `console_io` goes to rxen's hypervisor log.
    let g = guest("pvsyscall");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_xen-vmm"))
        .args(["run", "--kernel", g.to_str().expect("utf-8")])
        .args(["--cmdline", "check n=2000"])
        .env("NO_COLOR", "1")
        .env("RXEN_LOG", "warn,rxen_vmm::hypervisor_console=info")
        .output()
        .expect("running xen-vmm");
    let code = run.status.code().unwrap_or(-1);
    let out = String::from_utf8_lossy(&run.stdout);
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(err.contains("pvsyscall: console_io by syscall"), "{err}");
    assert!(out.contains("pvsyscall: all checks passed"), "{out}");
    assert!(!out.contains("shutdown returned"), "{out}");
}

/// A guest cannot abuse the syscall stub: writing it faults, jumping into it with a
/// bad return address or writing its port from elsewhere ends the domain.
#[test]
fn pvsyscall_stub_abuse_crashes_the_domain() {
    if !kvm_available("pvsyscall_stub_abuse_crashes_the_domain") {
        return;
    }
    for attack in ["write-stub", "jump-stub", "out-stub-port"] {
        let (code, out, err) = run_guest("pvsyscall", &["--cmdline", attack]);
        assert_eq!(code, 5, "{attack}: stdout: {out}\nstderr: {err}");
        assert!(out.contains(&format!("pvsyscall: {attack}")), "{out}");
        assert!(!out.contains("escaped"), "{attack}: {out}");
    }
}

/// Xen's trap table and bounce: #PF (read of an unmapped address, write to a read-only
/// page) with `cr2` and the error code, #UD and `int3` reach the guest's handlers and
/// return by the `iret` hypercall with the interrupted registers intact.
#[test]
fn traps_bounce_to_guest_handlers_and_return() {
    if !kvm_available("traps_bounce_to_guest_handlers_and_return") {
        return;
    }
    let (code, out, err) = run_guest("traps", &["--cmdline", "recover n=200"]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains("traps: pf cr2=0x100000123458 err=0x4"),
        "{out}"
    );
    // A write to the kernel's (read-only) boot L4; the guest checks cr2 itself.
    assert!(out.contains(" err=0x7\n"), "{out}");
    assert!(out.contains("traps: ud=1 int3=1"), "{out}");
    assert!(out.contains("traps: all checks passed"), "{out}");
}

/// A fault with no handler in the trap table crashes the domain (registers logged).
#[test]
fn trap_without_handler_crashes_the_domain() {
    if !kvm_available("trap_without_handler_crashes_the_domain") {
        return;
    }
    let (code, out, err) = run_guest("traps", &["--cmdline", "nohandler"]);
    assert_eq!(code, 5, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("traps: nohandler"), "{out}");
    assert!(!out.contains("escaped"), "{out}");
    assert!(
        err.contains("vector 14") && err.contains("no handler"),
        "{err}"
    );
    assert!(err.contains("rip="), "registers logged: {err}");
}

/// Asynchronous event upcalls: a guest spinning without hypercalls, events unmasked,
/// gets its event callback when its timer fires (the VMM kicks it out of `KVM_RUN`).
#[test]
fn event_upcalls_interrupt_a_spinning_guest() {
    if !kvm_available("event_upcalls_interrupt_a_spinning_guest") {
        return;
    }
    let (code, out, err) = run_guest("traps", &["--cmdline", "upcall n=10"]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("traps: upcalls delivered"), "{out}");
    eprintln!(
        "{}",
        out.lines()
            .find(|l| l.contains("upcall_latency_ns"))
            .unwrap_or("")
    );
}

/// rxen's old auto-translated layout still boots an SDK guest without Xen notes (the
/// SDK's `_start`), until the lead retires that builder.
#[test]
fn guest_without_notes_boots_on_rxens_layout() {
    if !kvm_available("guest_without_notes_boots_on_rxens_layout") {
        return;
    }
    let hello = without_xen_notes("hello", "guest_without_notes");
    let out = xen_vmm(&["--kernel", hello.to_str().expect("utf-8")]);
    let _ = std::fs::remove_file(&hello);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("start_info.shared_info: 0x2000"), "{text}");
    assert!(text.trim_end().ends_with("goodbye"), "{text}");
}
