//! `vregs SECONDS PATTERN` (PATTERN in hex): whether the kernel keeps this process's
//! vector registers across context switches. Fills the registers user code may use
//! (zmm0-31 and the opmask registers k1-k7 when the CPU has AVX-512F, else ymm0-15)
//! with values derived from PATTERN, spins with them live for a few tens of
//! milliseconds (long enough for the scheduler to run another process in between),
//! reads them back and compares, for SECONDS. Two instances with different patterns
//! on one CPU see each other's values when the kernel saves only the legacy
//! FXSAVE state (x87 and the low 128 bits of xmm0-15).
//!
//! Prints `RXEN-PROBE vregs <pattern> <isa> xcr0=<XCR0> windows=<n> mismatches=<n>`, preceded by
//! one `RXEN-PROBE vregs-mismatch ...` line for the first few mismatching registers;
//! exits with status 1 on any mismatch.

use std::arch::asm;
use std::time::{Duration, Instant};

/// `dec; jnz` iterations each window spins for (about 20-40 ms natively).
const SPIN: u64 = 80_000_000;
/// Mismatch lines printed at most.
const REPORT_MAX: u32 = 8;

/// The vector and opmask registers' contents, as loaded and as read back.
#[repr(C, align(64))]
struct Regs {
    /// 32 registers of 64 bytes (only the first 16 of 32 bytes used without AVX-512).
    vec: [[u8; 64]; 32],
    /// k0-k7 (k0 unused: it cannot be named as an operand).
    k: [u64; 8],
}

impl Regs {
    fn zeroed() -> Self {
        Regs {
            vec: [[0; 64]; 32],
            k: [0; 8],
        }
    }

    fn pattern(p: u64) -> Self {
        let mut r = Self::zeroed();
        let mut x = p | 1;
        for reg in r.vec.iter_mut() {
            for chunk in reg.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes());
            }
        }
        for k in r.k.iter_mut().skip(1) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *k = x;
        }
        r
    }
}

/// Loads `want` into zmm0-31 and k1-k7, spins, stores them into `got`.
///
/// # Safety
/// The CPU must have AVX-512F and the OS must have enabled its state (XCR0).
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn window_avx512(want: &Regs, got: &mut Regs) {
    // SAFETY: both pointers are to live, 64-byte aligned `Regs` (2048 + 64 bytes), read
    // and written only in their bounds; every register written is declared clobbered.
    unsafe {
        asm!(
            ".irp i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
            "vmovdqu64 zmm\\i, [{w} + 64*\\i]",
            ".endr",
            ".irp i, 1,2,3,4,5,6,7",
            "kmovq k\\i, [{w} + 2048 + 8*\\i]",
            ".endr",
            "2:",
            "dec {n}",
            "jnz 2b",
            ".irp i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
            "vmovdqu64 [{g} + 64*\\i], zmm\\i",
            ".endr",
            ".irp i, 1,2,3,4,5,6,7",
            "kmovq [{g} + 2048 + 8*\\i], k\\i",
            ".endr",
            w = in(reg) want as *const Regs,
            g = in(reg) got as *mut Regs,
            n = inout(reg) SPIN => _,
            out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
            out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
            out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
            out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _,
            out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
            out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
            out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _,
            out("zmm28") _, out("zmm29") _, out("zmm30") _, out("zmm31") _,
            out("k1") _, out("k2") _, out("k3") _, out("k4") _,
            out("k5") _, out("k6") _, out("k7") _,
            options(nostack)
        );
    }
}

/// Loads `want` into ymm0-15, spins, stores them into `got`.
///
/// # Safety
/// The CPU must have AVX and the OS must have enabled its state (XCR0).
#[target_feature(enable = "avx")]
unsafe fn window_avx(want: &Regs, got: &mut Regs) {
    // SAFETY: as in `window_avx512`; only the first 32 bytes of 16 registers are used.
    unsafe {
        asm!(
            ".irp i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
            "vmovdqu ymm\\i, [{w} + 64*\\i]",
            ".endr",
            "2:",
            "dec {n}",
            "jnz 2b",
            ".irp i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
            "vmovdqu [{g} + 64*\\i], ymm\\i",
            ".endr",
            w = in(reg) want as *const Regs,
            g = in(reg) got as *mut Regs,
            n = inout(reg) SPIN => _,
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
            out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
            out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
            options(nostack)
        );
    }
}

/// Which register file this CPU and OS let user code use.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx,
}

/// The mismatching registers of one window, as printable lines.
fn compare(isa: Isa, want: &Regs, got: &Regs) -> Vec<String> {
    let (regs, width, name) = match isa {
        Isa::Avx512 => (32, 64, "zmm"),
        Isa::Avx => (16, 32, "ymm"),
    };
    let mut bad = Vec::new();
    for i in 0..regs {
        let (w, g) = (&want.vec[i][..width], &got.vec[i][..width]);
        if w != g {
            let first = w.iter().zip(g).position(|(a, b)| a != b).unwrap_or(0);
            bad.push(format!(
                "{name}{i} first differing byte {first}: want {:02x?} got {:02x?}",
                &w[first..(first + 8).min(width)],
                &g[first..(first + 8).min(width)]
            ));
        }
    }
    if isa == Isa::Avx512 {
        for i in 1..8 {
            if want.k[i] != got.k[i] {
                bad.push(format!(
                    "k{i}: want {:016x} got {:016x}",
                    want.k[i], got.k[i]
                ));
            }
        }
    }
    bad
}

/// Runs the probe; the process's exit status (0: every register kept).
pub fn run(seconds: &str, pattern: &str) -> Option<u8> {
    let seconds: u64 = seconds.parse().ok()?;
    let pattern = u64::from_str_radix(pattern.trim_start_matches("0x"), 16).ok()?;
    let isa = if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
    {
        Isa::Avx512
    } else if std::arch::is_x86_feature_detected!("avx") {
        Isa::Avx
    } else {
        println!("{}: no AVX", super::PREFIX);
        return Some(2);
    };
    let want = Regs::pattern(pattern);
    let mut got = Regs::zeroed();
    let (mut windows, mut mismatches, mut reported) = (0u64, 0u64, 0u32);
    let t = Instant::now();
    while windows == 0 || t.elapsed() < Duration::from_secs(seconds) {
        // SAFETY: the ISA was detected above (`is_x86_feature_detected!` checks XCR0
        // through OSXSAVE/xgetbv too).
        unsafe {
            match isa {
                Isa::Avx512 => window_avx512(&want, &mut got),
                Isa::Avx => window_avx(&want, &mut got),
            }
        }
        windows += 1;
        for line in compare(isa, &want, &got) {
            mismatches += 1;
            if reported < REPORT_MAX {
                reported += 1;
                println!(
                    "{} vregs-mismatch {pattern:x} window {windows}: {line}",
                    super::PREFIX
                );
            }
        }
    }
    let isa_name = match isa {
        Isa::Avx512 => "avx512",
        Isa::Avx => "avx",
    };
    // SAFETY: `xgetbv` of XCR0 only reads it; the ISA check above saw OSXSAVE.
    let xcr0 = unsafe { std::arch::x86_64::_xgetbv(0) };
    println!(
        "{} vregs {pattern:x} {isa_name} xcr0={xcr0:#x} windows={windows} mismatches={mismatches}",
        super::PREFIX
    );
    Some(u8::from(mismatches != 0))
}
