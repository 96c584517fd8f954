//! Save, restore and live migration (issue 11), in one process with the VMM library
//! (`rxen_vmm::snapshot`), on the `memcheck` guest with most of its RAM filled:
//!
//! * `save_ms_256m`, `save_ms_1g`: `xm save`'s work (pause, capture, write the image
//!   to a file, fsync), against writing the same number of bytes to a file on the
//!   same file system and fsyncing it;
//! * `restore_to_running_ms_256m`, `restore_to_running_ms_1g`: `xen-vmm run --restore
//!   FILE`'s way (page cache warm) until the domain runs: the image's pages mapped
//!   (copy-on-write) over guest RAM, read when the guest first touches them; against
//!   reading the image's bytes from the file (goal: 5 ms for 1 GiB);
//! * `restore_copy_to_running_ms_256m`, `..._1g`: the same image copied into guest RAM
//!   (how a stream, e.g. a migration, is restored), same baseline;
//! * `migrate_downtime_ms_idle`, `migrate_downtime_ms_dirty`: a live migration over
//!   loopback TCP to a target in the same process (pause to the target's `running`),
//!   an idle guest and one rewriting pages at about 100 MB/s (its measured rate is in
//!   the note), against a migration of the same guest without `--live` (everything
//!   sent paused); goals 5 ms and 50 ms;
//! * `migrate_total_s`: the dirtying guest's live migration from start to `running`,
//!   against sending its RAM's bytes over the same loopback TCP;
//! * `migrate_pages_sent_ratio`: pages sent / guest pages of that migration (baseline
//!   1: each page once).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use rxen_vmm::console::CaptureSink;
use rxen_vmm::snapshot::{migrate, restore, restore_file, save, RestoreOptions};
use rxen_vmm::{Domain, DomainConfig};
use rxen_vmm_api::relocation::{Answer, Hello};
use rxen_vmm_api::MigrationFigures;

use crate::Figure;

const NAMES: [&str; 10] = [
    "save_ms_256m",
    "save_ms_1g",
    "restore_to_running_ms_256m",
    "restore_to_running_ms_1g",
    "restore_copy_to_running_ms_256m",
    "restore_copy_to_running_ms_1g",
    "migrate_downtime_ms_idle",
    "migrate_downtime_ms_dirty",
    "migrate_total_s",
    "migrate_pages_sent_ratio",
];
const WAIT: Duration = Duration::from_secs(120);

fn output(s: &CaptureSink) -> String {
    String::from_utf8_lossy(&s.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

fn wait_for(s: &CaptureSink, marker: &str) -> Result<(), String> {
    let t0 = Instant::now();
    loop {
        let out = output(s);
        if out.contains("FAILED") {
            return Err(format!("memcheck failed: {out}"));
        }
        if out.contains(marker) {
            return Ok(());
        }
        if t0.elapsed() > WAIT {
            return Err(format!("no {marker:?} within {WAIT:?}: {out}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn last_tick(s: &CaptureSink) -> u64 {
    output(s)
        .lines()
        .filter_map(|l| l.strip_prefix("memcheck: tick="))
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .next_back()
        .unwrap_or(0)
}

/// A memcheck domain of `memory_mib` with `cmdline`, once it filled its memory.
fn memcheck(memory_mib: u64, cmdline: &str) -> Result<(Domain, CaptureSink), String> {
    let image = std::fs::read(rxen_guest_images::guest_path("memcheck"))
        .map_err(|e| format!("memcheck guest: {e}"))?;
    let sink = CaptureSink::default();
    let cfg = DomainConfig {
        name: "mcbench".into(),
        memory_mib,
        cmdline: cmdline.into(),
        ..Default::default()
    };
    let d = Domain::create(cfg, &image, Box::new(sink.clone())).map_err(|e| e.to_string())?;
    wait_for(&sink, "MiB filled")?;
    Ok((d, sink))
}

fn end(d: Domain) {
    d.destroy();
    d.wait();
}

fn restore_opts(domid: u16) -> RestoreOptions {
    RestoreOptions {
        name: "mcbench".into(),
        domid,
        console: Default::default(),
        start_paused: false,
    }
}

/// Writes `bytes` to a new file in `dir` and fsyncs it: (ms to write, ms to read back).
fn host_file(dir: &Path, bytes: u64) -> Result<(f64, f64), String> {
    let p = dir.join("baseline");
    let chunk = vec![0x5au8; 1 << 20];
    let t0 = Instant::now();
    let mut f = std::fs::File::create(&p).map_err(|e| e.to_string())?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).map_err(|e| e.to_string())?;
        left -= n as u64;
    }
    f.sync_all().map_err(|e| e.to_string())?;
    let write_ms = t0.elapsed().as_secs_f64() * 1e3;
    drop(f);
    let mut buf = vec![0u8; 1 << 20];
    let t0 = Instant::now();
    let mut f = std::fs::File::open(&p).map_err(|e| e.to_string())?;
    while f.read(&mut buf).map_err(|e| e.to_string())? > 0 {}
    let read_ms = t0.elapsed().as_secs_f64() * 1e3;
    let _ = std::fs::remove_file(&p);
    Ok((write_ms, read_ms))
}

/// What [`save_restore`] measured, in milliseconds.
struct SaveRestore {
    save: f64,
    restore_mapped: f64,
    restore_copied: f64,
    host_write: f64,
    host_read: f64,
}

/// Restores the image at `path` (mapping its pages, or copying them) and ends the
/// domain: milliseconds until it runs.
fn restore_ms(path: &Path, mapped: bool) -> Result<f64, String> {
    let t0 = Instant::now();
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let sink = Box::new(CaptureSink::default());
    let r = if mapped {
        restore_file(&f, restore_opts(2), sink)
    } else {
        restore(BufReader::with_capacity(1 << 20, &f), restore_opts(2), sink)
    }
    .map_err(|e| e.to_string())?
    .domain;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    end(r);
    Ok(ms)
}

/// save and restore (both ways) of a guest of `mib` MiB and the host baselines.
fn save_restore(dir: &Path, mib: u64) -> Result<SaveRestore, String> {
    let fill = mib - mib / 8;
    let (d, _) = memcheck(mib, &format!("mib={fill} tick_ms=60000"))?;
    let path = dir.join(format!("mc-{mib}.save"));
    let t0 = Instant::now();
    let f = std::fs::File::create(&path).map_err(|e| e.to_string())?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, f);
    save(d.shared(), &mut out, b"{}").map_err(|e| e.to_string())?;
    let f = out.into_inner().map_err(|e| e.to_string())?;
    f.sync_all().map_err(|e| e.to_string())?;
    let save_ms = t0.elapsed().as_secs_f64() * 1e3;
    end(d);
    let bytes = std::fs::metadata(&path).map_err(|e| e.to_string())?.len();
    // Warm the page cache as the baseline's read finds it.
    std::io::copy(
        &mut std::fs::File::open(&path).map_err(|e| e.to_string())?,
        &mut std::io::sink(),
    )
    .map_err(|e| e.to_string())?;
    let restore_copied = restore_ms(&path, false)?;
    let restore_mapped = restore_ms(&path, true)?;
    let _ = std::fs::remove_file(&path);
    let (host_write, host_read) = host_file(dir, bytes)?;
    Ok(SaveRestore {
        save: save_ms,
        restore_mapped,
        restore_copied,
        host_write,
        host_read,
    })
}

fn answer(s: &mut TcpStream, a: &Answer) -> Result<(), String> {
    let mut line = serde_json::to_string(a).map_err(|e| e.to_string())?;
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(|e| e.to_string())
}

/// A one-shot relocation target in a thread: restores from the connection.
fn target(l: TcpListener) -> std::thread::JoinHandle<Result<Domain, String>> {
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().map_err(|e| e.to_string())?;
        let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        let _: Hello = serde_json::from_str(&line).map_err(|e| e.to_string())?;
        answer(&mut s, &Answer::Ready)?;
        let d = restore(&mut r, restore_opts(3), Box::new(CaptureSink::default()))
            .map_err(|e| e.to_string())?
            .domain;
        answer(&mut s, &Answer::Running { domid: 3 })?;
        Ok(d)
    })
}

fn migrate_once(d: &Domain, live: bool) -> Result<MigrationFigures, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = l.local_addr().map_err(|e| e.to_string())?.to_string();
    let t = target(l);
    let figures = migrate(d.shared(), &addr, "bench", "{}", live).map_err(|e| e.to_string())?;
    let dst = t
        .join()
        .map_err(|_| "the target thread panicked".to_string())??;
    end(dst);
    Ok(figures)
}

/// Sends `bytes` over loopback TCP: seconds.
fn host_tcp(bytes: u64) -> Result<f64, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let rx = std::thread::spawn(move || -> Result<(), String> {
        let (mut s, _) = l.accept().map_err(|e| e.to_string())?;
        std::io::copy(&mut s, &mut std::io::sink()).map_err(|e| e.to_string())?;
        Ok(())
    });
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let chunk = vec![0x33u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n]).map_err(|e| e.to_string())?;
        left -= n as u64;
    }
    drop(s);
    rx.join().map_err(|_| "receiver panicked".to_string())??;
    Ok(t0.elapsed().as_secs_f64())
}

pub fn run(wants: &dyn Fn(&str) -> bool, quick: bool) -> Result<Vec<Figure>, String> {
    if !NAMES.iter().any(|n| wants(n)) {
        return Ok(Vec::new());
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return Err(format!(
            "/dev/kvm is not usable ({e}); the migration benchmarks need KVM"
        ));
    }
    let dir = std::env::temp_dir().join(format!("rxen-migrate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let result = measure(&dir, wants, quick);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(result?.into_iter().filter(|f| wants(&f.name)).collect())
}

fn fig(name: &str, value: f64, unit: &str, baseline: f64, note: String) -> Figure {
    Figure {
        name: name.into(),
        value,
        unit: unit.into(),
        baseline,
        ratio: value / baseline,
        note,
    }
}

fn measure(dir: &Path, wants: &dyn Fn(&str) -> bool, quick: bool) -> Result<Vec<Figure>, String> {
    let mut out = Vec::new();
    let sizes: &[(u64, &str)] = if quick {
        &[(256, "256m")]
    } else {
        &[(256, "256m"), (1024, "1g")]
    };
    for &(mib, tag) in sizes {
        if ![
            "save_ms",
            "restore_to_running_ms",
            "restore_copy_to_running_ms",
        ]
        .iter()
        .any(|n| wants(&format!("{n}_{tag}")))
        {
            continue;
        }
        let m = save_restore(dir, mib)?;
        out.push(fig(
            &format!("save_ms_{tag}"),
            m.save,
            "ms",
            m.host_write,
            format!("{mib} MiB guest, 7/8 filled, to a file + fsync vs writing the image's bytes"),
        ));
        out.push(fig(
            &format!("restore_to_running_ms_{tag}"),
            m.restore_mapped,
            "ms",
            m.host_read,
            "pages mapped from the image, page cache warm, vs reading the image's bytes (goal 5 ms)"
                .into(),
        ));
        out.push(fig(
            &format!("restore_copy_to_running_ms_{tag}"),
            m.restore_copied,
            "ms",
            m.host_read,
            "pages copied out of the image, vs reading the image's bytes".into(),
        ));
    }
    if ["migrate_downtime", "migrate_total", "migrate_pages"]
        .iter()
        .any(|n| NAMES.iter().any(|m| m.starts_with(n) && wants(m)))
    {
        // 256 MiB guests; the dirtying one rewrites 256 KiB at every tick (1 ms plus
        // the check of its 8 MiB region), round robin over that region: the dirty
        // set never shrinks below what it writes in a round.
        let (idle, _) = memcheck(256, "mib=64 tick_ms=1000")?;
        let paused_idle = migrate_once(&idle, false)?;
        idle.shared().unpause();
        let live_idle = migrate_once(&idle, true)?;
        end(idle);
        let (busy, sink) = memcheck(256, "mib=8 tick_ms=1 dirty_kib=256")?;
        let (t0, k0) = (Instant::now(), last_tick(&sink));
        std::thread::sleep(Duration::from_millis(if quick { 300 } else { 1000 }));
        let rate = (last_tick(&sink) - k0) as f64 * 0.25 * 1.048_576 / t0.elapsed().as_secs_f64();
        let paused_busy = migrate_once(&busy, false)?;
        busy.shared().unpause();
        let live_busy = migrate_once(&busy, true)?;
        end(busy);
        let rounds = |f: &MigrationFigures| {
            f.pages_per_round
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join("/")
        };
        out.push(fig(
            "migrate_downtime_ms_idle",
            live_idle.downtime_ms,
            "ms",
            paused_idle.downtime_ms,
            format!(
                "idle 256 MiB guest, live vs not live; pages per round {}, stop-and-copy {:.1} ms (goal 5 ms)",
                rounds(&live_idle),
                live_idle.stop_and_copy_ms
            ),
        ));
        out.push(fig(
            "migrate_downtime_ms_dirty",
            live_busy.downtime_ms,
            "ms",
            paused_busy.downtime_ms,
            format!(
                "guest dirtying {rate:.0} MB/s, live vs not live; pages per round {}, stop-and-copy {:.1} ms (goal 50 ms)",
                rounds(&live_busy),
                live_busy.stop_and_copy_ms
            ),
        ));
        let tcp = host_tcp(live_busy.guest_pages * 4096)?;
        out.push(fig(
            "migrate_total_s",
            live_busy.total_ms / 1e3,
            "s",
            tcp,
            "the dirtying guest's live migration vs its RAM's bytes over loopback TCP".into(),
        ));
        out.push(fig(
            "migrate_pages_sent_ratio",
            live_busy.pages_sent as f64 / live_busy.guest_pages as f64,
            "x",
            1.0,
            format!(
                "pages sent / guest pages ({} / {}), dirtying guest",
                live_busy.pages_sent, live_busy.guest_pages
            ),
        ));
    }
    Ok(out)
}
