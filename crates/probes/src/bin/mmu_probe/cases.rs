//! The probe cases: each prints one result line per question.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::resync::{sync_regs_cr3, Resync};
use crate::vm::*;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// A change the VMM makes to an entry, and how the guest's next access shows whether
/// KVM saw it.
#[derive(Debug, Clone, Copy)]
enum Change {
    /// 4 KiB entry switched to another frame.
    Remap4k,
    /// 4 KiB entry made read-only (the guest wrote through it before).
    MakeReadOnly,
    /// 4 KiB entry made writable (the guest read through it before).
    MakeWritable,
    /// 4 KiB entry cleared (unmapped).
    Unmap,
    /// 2 MiB entry switched to another frame (two 4 KiB pages inside it are checked).
    Remap2m,
    /// L2 entry switched to another L1 table (two entries under it are checked).
    SwitchL1,
}

impl Change {
    fn options(self) -> Options {
        Options {
            probe_read_only: matches!(self, Change::MakeWritable),
            ..Options::default()
        }
    }

    /// Warms the shadow, rewrites the entry through the memfd; returns the range the
    /// old entry mapped and the table page.
    fn prepare(self, p: &mut Probe) -> Res<((u64, u64), u64)> {
        let pte = probe_pte_addr();
        match self {
            Change::Remap4k => {
                assert_eq!(p.guest_read(PROBE_VA)?, MAGIC_A);
                p.ram.write(pte, FRAME_B | P | RW | US);
                Ok(((FRAME_A, 4096), PT0))
            }
            Change::MakeReadOnly => {
                assert_eq!(p.guest_write(PROBE_VA, MAGIC_A)?, Outcome::Done);
                p.ram.write(pte, FRAME_A | P | US);
                Ok(((FRAME_A, 4096), PT0))
            }
            Change::MakeWritable => {
                assert_eq!(p.guest_read(PROBE_VA)?, MAGIC_A);
                p.ram.write(pte, FRAME_A | P | RW | US);
                Ok(((FRAME_A, 4096), PT0))
            }
            Change::Unmap => {
                assert_eq!(p.guest_read(PROBE_VA)?, MAGIC_A);
                p.ram.write(pte, 0);
                Ok(((FRAME_A, 4096), PT0))
            }
            Change::Remap2m => {
                assert_eq!(p.guest_read(LARGE_VA)?, MAGIC_LARGE_A);
                assert_eq!(p.guest_read(LARGE_VA + LARGE_SECOND)?, MAGIC_LARGE_A + 0x10);
                p.ram.write(large_pde_addr(), LARGE_B | P | RW | US | PS);
                Ok(((LARGE_A, 2 << 20), PD))
            }
            Change::SwitchL1 => {
                // Entry 1 of the old table maps a frame the resync does not touch.
                p.ram
                    .write(L1_A + 8, (LARGE_A + LARGE_SECOND) | P | RW | US);
                p.ram.write(L1_B + 8, FRAME_B | P | RW | US);
                assert_eq!(p.guest_read(NONLEAF_VA)?, MAGIC_A);
                assert_eq!(p.guest_read(NONLEAF_VA + 0x1000)?, MAGIC_LARGE_A + 0x10);
                p.ram.write(nonleaf_pde_addr(), L1_B | P | RW | US);
                Ok(((FRAME_A, 4096), PD))
            }
        }
    }

    /// The guest's next access: `true` if it shows the new entry.
    fn seen(self, p: &mut Probe) -> Res<bool> {
        Ok(match self {
            Change::Remap4k => p.guest_read(PROBE_VA)? == MAGIC_B,
            Change::MakeReadOnly => p.guest_write(PROBE_VA, MAGIC_A)? == Outcome::Fault,
            Change::MakeWritable => p.guest_write(PROBE_VA, MAGIC_A)? == Outcome::Done,
            Change::Unmap => p.command(cmd::READ, PROBE_VA)? == Outcome::Fault,
            Change::Remap2m => {
                let first = p.guest_read(LARGE_VA)? == MAGIC_LARGE_B;
                first && p.guest_read(LARGE_VA + LARGE_SECOND)? == MAGIC_LARGE_B + 0x10
            }
            Change::SwitchL1 => {
                // The entry whose old frame no resync touches is read first.
                let second = p.guest_read(NONLEAF_VA + 0x1000)? == MAGIC_B;
                second && p.guest_read(NONLEAF_VA)? == MAGIC_B
            }
        })
    }
}

pub fn run_all(reps: usize) -> Res<()> {
    if !std::path::Path::new("/dev/kvm").exists() {
        println!("SKIPPED mmu_probe: /dev/kvm is not usable");
        return Ok(());
    }
    println!("# mmu_probe: {reps} repetitions per case; times are medians");
    immediate(reps)?;
    for change in [
        Change::Remap4k,
        Change::MakeReadOnly,
        Change::MakeWritable,
        Change::Unmap,
        Change::Remap2m,
        Change::SwitchL1,
    ] {
        for r in Resync::ALL {
            host_write_case(change, r, reps)?;
        }
    }
    guest_writes(reps)?;
    guest_writes_l2(reps)?;
    host_write_after_guest_writes(reps)?;
    costs(reps)?;
    Ok(())
}

/// Q1 "immediately": the guest spins reading the probed address, the VMM rewrites the
/// entry meanwhile; does the spinning guest ever see it without a userspace exit?
fn immediate(reps: usize) -> Res<()> {
    let window = Duration::from_millis(500);
    let mut seen = 0;
    for _ in 0..reps {
        let mut p = Probe::new(Options::default())?;
        assert_eq!(p.guest_read(PROBE_VA)?, MAGIC_A);
        p.ram.write(MAILBOX + mb::SPIN_STOP, 0);
        p.ram.write(MAILBOX + mb::SPIN_COUNT, 0);
        p.ram.write(MAILBOX + mb::CMD, cmd::SPIN_READ);
        p.ram.write(MAILBOX + mb::ADDR, PROBE_VA);
        let Machine { vcpu, ram, .. } = &mut *p;
        let done = AtomicBool::new(false);
        let saw_new = std::thread::scope(|s| -> Res<bool> {
            let runner = s.spawn(|| {
                let r = run_vcpu(vcpu);
                done.store(true, Ordering::SeqCst);
                r
            });
            let deadline = Instant::now() + Duration::from_secs(5);
            while ram.read(MAILBOX + mb::SPIN_COUNT) < 1000 && Instant::now() < deadline {
                std::hint::spin_loop();
            }
            ram.write(probe_pte_addr(), FRAME_B | P | RW | US);
            let start = Instant::now();
            let mut saw = false;
            while start.elapsed() < window {
                if ram.read(MAILBOX + mb::RESULT) == MAGIC_B {
                    saw = true;
                    break;
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            ram.write(MAILBOX + mb::SPIN_STOP, 1);
            let outcome = runner.join().map_err(|_| "vcpu thread panicked")??;
            assert_eq!(outcome, Outcome::Done);
            assert!(done.load(Ordering::SeqCst));
            Ok(saw)
        })?;
        seen += usize::from(saw_new);
    }
    println!(
        "case immediate remap-4k: spinning guest saw the new frame within {} ms in {seen}/{reps} runs (no userspace exit)",
        window.as_millis()
    );
    Ok(())
}

/// Q1, Q2, Q5: the VMM rewrites an entry through the memfd, applies `resync`, and the
/// guest's next access tells whether KVM saw the change.
fn host_write_case(change: Change, resync: Resync, reps: usize) -> Res<()> {
    let mut seen = 0;
    let mut costs = Vec::new();
    for _ in 0..reps {
        let mut p = Probe::new(change.options())?;
        let (old, table) = change.prepare(&mut p)?;
        costs.push(resync.apply(&mut p, old, table)?);
        seen += usize::from(change.seen(&mut p)?);
    }
    let verdict = match seen {
        0 => "STALE",
        n if n == reps => "SEEN",
        _ => "MIXED",
    };
    println!(
        "case host-write {change:?} + {resync:?}: {verdict} ({seen}/{reps}); VMM-side cost {:.1} us",
        median_us(&mut costs)
    );
    Ok(())
}

fn alias_pte() -> u64 {
    PT0_ALIAS_VA + (PROBE_VA >> 12) * 8
}

/// Q3: the guest writes its own L1 entry through a writable alias of the table.
fn guest_writes(reps: usize) -> Res<()> {
    let mut same_run = 0;
    let mut after_exit = 0;
    for _ in 0..reps {
        let mut p = Probe::new(Options {
            writable_pt_alias: true,
            ..Options::default()
        })?;
        assert_eq!(p.guest_read(PROBE_VA)?, MAGIC_A);
        p.ram.write(MAILBOX + mb::VALUE, FRAME_B | P | RW | US);
        p.ram.write(MAILBOX + mb::READ_ADDR, PROBE_VA);
        assert_eq!(p.command(cmd::WRITE_THEN_READ, alias_pte())?, Outcome::Done);
        same_run += usize::from(p.ram.read(MAILBOX + mb::RESULT) == MAGIC_B);
        after_exit += usize::from(p.guest_read(PROBE_VA)? == MAGIC_B);
        assert_eq!(p.ram.read(probe_pte_addr()) & !0xfff, FRAME_B);
    }
    println!(
        "case guest-write remap-4k: the writing guest's next read saw the new frame in {same_run}/{reps} runs (same run), {after_exit}/{reps} after an exit"
    );
    Ok(())
}

/// Q3 for an upper level: the guest writes an L2 entry through a writable alias of
/// its L2 table (KVM keeps upper-level tables write-protected).
fn guest_writes_l2(reps: usize) -> Res<()> {
    let pde_alias = PD_ALIAS_VA + (NONLEAF_VA >> 21) * 8;
    let mut same_run = 0;
    let mut loops = Vec::new();
    let mut nops = Vec::new();
    let n = 200u64;
    for _ in 0..reps {
        let mut p = Probe::new(Options {
            writable_pd_alias: true,
            ..Options::default()
        })?;
        assert_eq!(p.guest_read(NONLEAF_VA)?, MAGIC_A);
        p.ram.write(MAILBOX + mb::VALUE, L1_B | P | RW | US);
        p.ram.write(MAILBOX + mb::READ_ADDR, NONLEAF_VA);
        assert_eq!(p.command(cmd::WRITE_THEN_READ, pde_alias)?, Outcome::Done);
        same_run += usize::from(p.ram.read(MAILBOX + mb::RESULT) == MAGIC_B);
        p.ram.write(MAILBOX + mb::LOOP_N, n);
        p.ram.write(MAILBOX + mb::VALUE, L1_A | P | RW | US);
        p.ram.write(MAILBOX + mb::VALUE2, L1_B | P | RW | US);
        loops.push(time_command(&mut p, cmd::WRITE_LOOP, pde_alias)?);
        nops.push(time_command(&mut p, cmd::NOP, 0)?);
    }
    let per = (median_us(&mut loops) - median_us(&mut nops)) / n as f64;
    println!(
        "case guest-write switch-L1 (L2 entry via writable alias): the writing guest's next read saw the new table in {same_run}/{reps} runs (same run); {per:.1} us per guest store to the L2 table"
    );
    Ok(())
}

/// Q3 variant: once the guest has written a table itself, does KVM treat it
/// differently (unsync) so that host writes become visible after a resync?
fn host_write_after_guest_writes(reps: usize) -> Res<()> {
    for resync in [
        Resync::ExitOnly,
        Resync::SregsSameCr3,
        Resync::SregsOtherCr3AndBack,
    ] {
        let mut seen = 0;
        for _ in 0..reps {
            let mut p = Probe::new(Options {
                writable_pt_alias: true,
                ..Options::default()
            })?;
            // The guest rewrites its entry (A -> B) a few times, then reads through it.
            for v in [FRAME_B, FRAME_A, FRAME_B] {
                assert_eq!(p.guest_write(alias_pte(), v | P | RW | US)?, Outcome::Done);
            }
            assert_eq!(p.guest_read(PROBE_VA)?, MAGIC_B);
            p.ram.write(probe_pte_addr(), FRAME_A | P | RW | US);
            resync.apply(&mut p, (FRAME_B, 4096), PT0)?;
            seen += usize::from(p.guest_read(PROBE_VA)? == MAGIC_A);
        }
        println!("case host-write-after-guest-writes Remap4k + {resync:?}: seen in {seen}/{reps}");
    }
    Ok(())
}

fn time_command(p: &mut Probe, c: u64, addr: u64) -> Res<Duration> {
    let t = Instant::now();
    assert_eq!(p.command(c, addr)?, Outcome::Done);
    Ok(t.elapsed())
}

/// Q3/Q4: what things cost.
fn costs(reps: usize) -> Res<()> {
    let samples = 200.max(reps);
    let mut p = Probe::new(Options {
        writable_pt_alias: true,
        ..Options::default()
    })?;
    let mut nop = Vec::new();
    for _ in 0..samples {
        nop.push(time_command(&mut p, cmd::NOP, 0)?);
    }
    let nop_us = median_us(&mut nop);
    println!("cost exit round trip (guest out -> VMM -> KVM_RUN): {nop_us:.1} us");

    let mut get = Vec::new();
    let mut set_same = Vec::new();
    let mut set_switch = Vec::new();
    let mut run_after_switch = Vec::new();
    for _ in 0..samples {
        let (s, d) = timed(|| p.vcpu.get_sregs());
        let mut s = s?;
        get.push(d);
        let (r, d) = timed(|| p.vcpu.set_sregs(&s));
        r?;
        set_same.push(d);
        let t = Instant::now();
        s.cr3 = ALT_PML4;
        p.vcpu.set_sregs(&s)?;
        s.cr3 = PML4;
        p.vcpu.set_sregs(&s)?;
        set_switch.push(t.elapsed());
        run_after_switch.push(time_command(&mut p, cmd::NOP, 0)?);
    }
    println!(
        "cost KVM_GET_SREGS {:.1} us; KVM_SET_SREGS same CR3 {:.1} us; SET_SREGS other CR3 + back {:.1} us; next exit round trip after that {:.1} us (plain {nop_us:.1})",
        median_us(&mut get),
        median_us(&mut set_same),
        median_us(&mut set_switch),
        median_us(&mut run_after_switch)
    );

    let mut sync_rt = Vec::new();
    for i in 0..samples {
        sync_regs_cr3(&mut p, if i % 2 == 0 { ALT_PML4 } else { PML4 })?;
        sync_rt.push(time_command(&mut p, cmd::NOP, 0)?);
    }
    // Leave the guest on its own L4 and stop asking for the sync area.
    sync_regs_cr3(&mut p, PML4)?;
    time_command(&mut p, cmd::NOP, 0)?;
    println!(
        "cost exit round trip with a CR3 change carried in kvm_run->s.regs (KVM_CAP_SYNC_REGS: {}): {:.1} us",
        p.vm.check_extension(kvm_ioctls::Cap::SyncRegs),
        median_us(&mut sync_rt)
    );

    // Guest writes: a loop of n stores to its own L1 entry via the writable alias,
    // against the same loop on an ordinary data page.
    // Odd: the last store leaves the entry pointing at FRAME_B.
    let n = 2001u64;
    let mut pt_loop = Vec::new();
    let mut data_loop = Vec::new();
    // Warm the shadow entry of the probed page so that staleness shows.
    assert_eq!(p.guest_read(PROBE_VA)?, MAGIC_A);
    for _ in 0..reps.max(5) {
        p.ram.write(MAILBOX + mb::LOOP_N, n);
        p.ram.write(MAILBOX + mb::VALUE, FRAME_B | P | RW | US);
        p.ram.write(MAILBOX + mb::VALUE2, FRAME_A | P | RW | US);
        pt_loop.push(time_command(&mut p, cmd::WRITE_LOOP, alias_pte())?);
        data_loop.push(time_command(&mut p, cmd::WRITE_LOOP, DATA_VA)?);
    }
    let pt_us = (median_us(&mut pt_loop) - nop_us) / n as f64;
    let data_us = (median_us(&mut data_loop) - nop_us) / n as f64;
    let last_seen = p.guest_read(PROBE_VA)? == MAGIC_B;
    println!(
        "cost guest store to its own L1 entry (writable alias): {pt_us:.2} us each ({n} per run); store to a data page {data_us:.4} us; final value seen by the guest after the exit: {last_seen}"
    );

    let mut slot = Vec::new();
    let mut run_after_slot = Vec::new();
    let mut madv = Vec::new();
    let mut run_after_madv = Vec::new();
    for _ in 0..reps.max(20) {
        let (r, d) = timed(|| p.readd_slot());
        r?;
        slot.push(d);
        run_after_slot.push(time_command(&mut p, cmd::READ, PROBE_VA)?);
        let (r, d) = timed(|| p.ram.madvise_dontneed(FRAME_A, 4096));
        r?;
        madv.push(d);
        run_after_madv.push(time_command(&mut p, cmd::READ, PROBE_VA)?);
    }
    println!(
        "cost slot delete+re-add {:.1} us, next guest read round trip {:.1} us; madvise(DONTNEED) one frame {:.1} us, next guest read round trip {:.1} us",
        median_us(&mut slot),
        median_us(&mut run_after_slot),
        median_us(&mut madv),
        median_us(&mut run_after_madv)
    );
    Ok(())
}
