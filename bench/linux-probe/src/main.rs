//! `rxen-linux-probe`: what `rxen-bench` measures inside a Linux guest and, the same
//! way, on the host (`bench/src/linux_probe_bench.rs`). Built static
//! (`-C target-feature=+crt-static`) so that it runs from a busybox initramfs.
//!
//! * `rxen-linux-probe getpid N`: `N` raw `syscall(SYS_getpid)` (never libc's cached
//!   `getpid`), printing `RXEN-PROBE getpid_ns <ns per call>`.
//! * `rxen-linux-probe cpu N`: `N` passes of a table-driven CRC-32 over a 256 KiB
//!   buffer (integer work, a working set that stays in cache), printing
//!   `RXEN-PROBE cpu_s <seconds> <checksum>`.
//!
//! * `rxen-linux-probe getcpu | tls | ldt | badiret | peek ADDR`: segment probes for rxen's
//!   tests ([`segments`]).
//!
//! * `rxen-linux-probe vregs SECONDS PATTERN`: whether the vector registers survive
//!   context switches ([`vregs`]).
//!
//! It must stay dependency-free and measure only: no rxen logic.

mod segments;
mod vregs;

use std::process::ExitCode;
use std::time::Instant;

/// What every result line starts with (the bench looks for it on the console).
const PREFIX: &str = "RXEN-PROBE";

/// Linux x86-64's `__NR_getpid`.
const SYS_GETPID: u64 = 39;

/// One `getpid` system call, without libc.
fn raw_getpid() -> u64 {
    let ret: u64;
    // SAFETY: `getpid` takes no arguments, touches no memory and cannot fail; the
    // `syscall` instruction clobbers only rax (the result), rcx and r11, declared here.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_GETPID => ret,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack, preserves_flags)
        );
    }
    ret
}

fn getpid_ns(n: u64) -> f64 {
    let t = Instant::now();
    let mut sum = 0u64;
    for _ in 0..n {
        sum = sum.wrapping_add(raw_getpid());
    }
    std::hint::black_box(sum);
    t.elapsed().as_nanos() as f64 / n.max(1) as f64
}

/// CRC-32 (IEEE, reflected) lookup table.
fn crc_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    for (i, e) in t.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *e = c;
    }
    t
}

/// `passes` CRC-32 passes over a 256 KiB xorshift buffer; (seconds, checksum).
fn cpu_workload(passes: u64) -> (f64, u32) {
    let table = crc_table();
    let mut buf = vec![0u8; 256 * 1024];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in buf.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let t = Instant::now();
    let mut crc = !0u32;
    for pass in 0..passes {
        for &b in &buf {
            crc = table[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
        }
        crc ^= pass as u32;
    }
    let crc = std::hint::black_box(!crc);
    (t.elapsed().as_secs_f64(), crc)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count = |s: Option<&String>| s.and_then(|s| s.parse::<u64>().ok());
    match (args.first().map(String::as_str), count(args.get(1))) {
        (Some("getpid"), Some(n)) => println!("{PREFIX} getpid_ns {:.1}", getpid_ns(n)),
        (Some("cpu"), Some(n)) => {
            let (s, crc) = cpu_workload(n);
            println!("{PREFIX} cpu_s {s:.6} {crc:08x}");
        }
        (Some("vregs"), _) if args.len() == 3 => match vregs::run(&args[1], &args[2]) {
            Some(status) => return ExitCode::from(status),
            None => {
                eprintln!("usage: rxen-linux-probe vregs SECONDS HEX-PATTERN");
                return ExitCode::from(2);
            }
        },
        (Some(what), _) if segments::run(what, args.get(1).map(String::as_str)) => {}
        _ => {
            eprintln!("usage: rxen-linux-probe getpid N | cpu N | getcpu | tls | ldt | badiret | peek ADDR | vregs SECONDS PATTERN");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
