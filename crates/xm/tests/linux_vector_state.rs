//! The vector registers of a Linux guest's user processes across context switches
//! (docs/linux-guest.md, "XSAVE"): two processes on one vCPU, each with its own
//! values in every vector register user code can use (zmm0-31 and k1-k7 on an
//! AVX-512 host, else ymm0-15), must never see the other's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::linux::{self, assert_powered_off, boot, boot_text};

/// What `/init` prints once both probes ended.
const VREGS_MARKER: &str = "RXEN-VREGS-DONE";

/// Before the fix, rxen's CPUID hid XSAVE from the guest kernel, so Linux saved user
/// FPU state with FXSAVE (x87 and the low halves of xmm0-15) while user code, whose
/// CPUID is the host's, used AVX/AVX-512: the upper halves of ymm/zmm, zmm16-31 and the
/// opmask registers leaked from one process to the next (Debian's glibc uses them in
/// memcpy/strlen: the corruption of "A Debian userland").
#[test]
fn linux_keeps_each_processs_vector_registers_across_context_switches() {
    let test = "linux_keeps_each_processs_vector_registers_across_context_switches";
    let Some(probe) = linux::probe(test) else {
        return;
    };
    let init = format!(
        "#!/bin/sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t devtmpfs devtmpfs /dev\n\
         echo RXEN-XSAVE-FLAGS=$(/bin/busybox grep -o -w -e xsave -e avx -e avx512f /proc/cpuinfo | /bin/busybox sort -u | /bin/busybox tr '\\n' ,)\n\
         /bin/probe vregs 4 1111 & a=$!\n\
         /bin/probe vregs 4 2222 & b=$!\n\
         wait $a; echo RXEN-VREGS-A=$?\n\
         wait $b; echo RXEN-VREGS-B=$?\n\
         echo {VREGS_MARKER}\n\
         /bin/busybox poweroff -f\n"
    );
    let files = [("bin/probe", std::fs::read(&probe).unwrap())];
    let Some(env) = boot(test, "linuxvregs", &init, &files, "vcpus = 1\n") else {
        return;
    };
    let state = env.dir.join("state");
    linux::wait_for_text(&state, "the vregs marker", |t| {
        t.contains(VREGS_MARKER) && t.contains("reboot: ")
    });
    let text = boot_text(&state);
    let report: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("RXEN-") || l.contains("x86/fpu"))
        .collect();
    eprintln!("{test}:\n{}", report.join("\n"));
    let tail = linux::tail(&text, 40);
    assert!(
        text.contains("RXEN-PROBE vregs 1111") && text.contains("RXEN-PROBE vregs 2222"),
        "a probe did not finish:\n{tail}"
    );
    assert!(
        text.contains("RXEN-VREGS-A=0")
            && text.contains("RXEN-VREGS-B=0")
            && !text.contains("vregs-mismatch"),
        "one process saw another's vector registers:\n{}",
        report.join("\n")
    );
    common::wait_until("linuxvregs to end", || {
        env.get("/domains/linuxvregs").1["state"] == "shutdown"
    });
    assert_powered_off(&env, "linuxvregs");
}
