//! Block device benchmarks (issue 9): the `blkbench` guest on a file-backed vbd,
//! created through xend (`disk = [ 'file:IMG,xvda,w' ]`), against the host doing the
//! same I/O on the same file in the same run with the same engine as blkback (threads
//! with `pread`/`pwrite`, as many as blkback's workers).
//!
//! * `blk_seq_read_ratio`, `blk_seq_write_ratio`: MB/s of 1 MiB requests, one at a
//!   time, guest over host (goal: close to 1);
//! * `blk_rand4k_read_ratio`, `blk_rand4k_write_ratio`: IOPS of 4 KiB random requests
//!   at queue depth 32, guest over host;
//! * `blk_latency_4k_us`: a 4 KiB random read at queue depth 1, guest, with the host's
//!   `pread` as the baseline (ratio guest/host).
//!
//! Before measuring, the guest runs its verify mode on the disk: a benchmark of a
//! wrong block device is worthless.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::xend_bench::{console, create_config, start, Daemons};
use crate::Figure;

const NAMES: [&str; 5] = [
    "blk_seq_read_ratio",
    "blk_seq_write_ratio",
    "blk_rand4k_read_ratio",
    "blk_rand4k_write_ratio",
    "blk_latency_4k_us",
];
/// blkback's I/O workers per ring (crates/vmm/src/blkback/pool.rs).
const HOST_THREADS: usize = 4;
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// Runs blkbench with `args` on `img` until `marker`; returns the console.
fn run_guest(
    d: &Daemons,
    name: &str,
    img: &Path,
    args: &str,
    marker: &str,
) -> Result<String, String> {
    let kernel = rxen_guest_images::guest_path("blkbench");
    let config = format!(
        "name='{name}'\nmemory=64\nkernel='{}'\nextra='{args}'\ndisk=[ 'file:{},xvda,w' ]\non_poweroff='preserve'\n",
        kernel.display(),
        img.display()
    );
    create_config(d, name, &config)?;
    let t0 = Instant::now();
    let result = loop {
        let text = console(d, name);
        if text.contains(marker) || text.contains("FAILED") || text.contains("guest panic") {
            break Ok(text);
        }
        if t0.elapsed() > RUN_LIMIT {
            let state = d
                .agent
                .get(format!("{}/domains/{name}", d.url))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .unwrap_or_default();
            break Err(format!(
                "{name}: no {marker:?} within {RUN_LIMIT:?}: {text}; domain: {state}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = d.agent.delete(format!("{}/domains/{name}", d.url)).call();
    result
}

fn value_of(out: &str, key: &str) -> Result<f64, String> {
    out.split(&format!("blkbench: {key}="))
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no {key}= in blkbench output: {out}"))
}

/// The host's figures on the same file: (seq write MB/s, seq read MB/s, rand read
/// IOPS, rand write IOPS, QD1 read latency µs).
struct Host {
    seq_write: f64,
    seq_read: f64,
    rand_read: f64,
    rand_write: f64,
    lat_read_us: f64,
}

fn host_seq(f: &File, size: u64, write: bool, budget: Duration) -> Result<f64, String> {
    let mut buf = vec![0x5au8; 1 << 20];
    let chunks = (size >> 20).max(1);
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < budget {
        let off = (n % chunks) << 20;
        if write {
            f.write_all_at(&buf, off).map_err(|e| e.to_string())?;
        } else {
            f.read_exact_at(&mut buf, off).map_err(|e| e.to_string())?;
        }
        n += 1;
    }
    Ok(n as f64 * (1 << 20) as f64 / t0.elapsed().as_secs_f64() / 1e6)
}

/// 4 KiB random requests from `threads` threads for `budget`: (IOPS, mean µs).
fn host_rand(
    f: &Arc<File>,
    size: u64,
    write: bool,
    threads: usize,
    budget: Duration,
) -> Result<(f64, f64), String> {
    let blocks = (size / 4096).max(1);
    let total = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (f, total) = (f.clone(), total.clone());
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (t as u64 + 1);
                let mut buf = [0u8; 4096];
                while t0.elapsed() < budget {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let off = (x % blocks) * 4096;
                    if write {
                        f.write_all_at(&buf, off)?;
                    } else {
                        f.read_exact_at(&mut buf, off)?;
                    }
                    total.fetch_add(1, Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| "host thread panicked".to_string())?
            .map_err(|e| e.to_string())?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let n = total.load(Relaxed).max(1) as f64;
    Ok((n / secs, secs * 1e6 * threads as f64 / n))
}

fn host(img: &Path, size: u64, budget: Duration) -> Result<Host, String> {
    let f = Arc::new(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(img)
            .map_err(|e| e.to_string())?,
    );
    Ok(Host {
        seq_write: host_seq(&f, size, true, budget)?,
        seq_read: host_seq(&f, size, false, budget)?,
        rand_read: host_rand(&f, size, false, HOST_THREADS, budget)?.0,
        rand_write: host_rand(&f, size, true, HOST_THREADS, budget)?.0,
        lat_read_us: host_rand(&f, size, false, 1, budget)?.1,
    })
}

pub fn run(wants: &dyn Fn(&str) -> bool, quick: bool) -> Result<Vec<Figure>, String> {
    if !NAMES.iter().any(|n| wants(n)) {
        return Ok(Vec::new());
    }
    let d = start()?;
    let dir = std::env::temp_dir().join(format!("rxen-bench-blk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let img = dir.join("disk.img");
    let size: u64 = if quick { 64 << 20 } else { 256 << 20 };
    // Written, not sparse: reads must find data.
    std::fs::write(&img, vec![0x42u8; size as usize]).map_err(|e| e.to_string())?;
    let ms = if quick { 400 } else { 3000 };
    let result = (|| {
        let v = run_guest(&d, "blkverify", &img, "mode=verify", "verify ok")?;
        if !v.contains("verify ok") {
            return Err(format!("blkbench verify failed: {v}"));
        }
        let out = run_guest(
            &d,
            "blkbench",
            &img,
            &format!("mode=bench ms={ms}"),
            "blkbench: done",
        )?;
        if out
            .lines()
            .any(|l| l.contains("errors=") && !l.contains("errors=0"))
        {
            return Err(format!("blkbench saw failed requests: {out}"));
        }
        let h = host(&img, size, Duration::from_millis(ms))?;
        let g = |k| value_of(&out, k);
        let feats = out
            .lines()
            .find(|l| l.contains("blkbench: devid="))
            .unwrap_or("")
            .trim()
            .to_string();
        let ratio = |name: &str, guest: f64, host: f64, unit: &str, note: String| Figure {
            name: name.into(),
            value: guest,
            unit: unit.into(),
            baseline: host,
            ratio: guest / host,
            note,
        };
        let (glat, lat_note) = (
            g("lat4k_read_us_qd1")?,
            format!("QD1 4 KiB random read, guest vs host pread ({feats})"),
        );
        Ok(vec![
            ratio(
                NAMES[0],
                g("seq_read_mbps")?,
                h.seq_read,
                "MB/s",
                "1 MiB reads at QD1, guest vs host".into(),
            ),
            ratio(
                NAMES[1],
                g("seq_write_mbps")?,
                h.seq_write,
                "MB/s",
                "1 MiB writes at QD1, guest vs host".into(),
            ),
            ratio(
                NAMES[2],
                g("rand4k_read_iops_qd32")?,
                h.rand_read,
                "IOPS",
                format!("4 KiB random reads at QD32 vs host with {HOST_THREADS} threads"),
            ),
            ratio(
                NAMES[3],
                g("rand4k_write_iops_qd32")?,
                h.rand_write,
                "IOPS",
                format!("4 KiB random writes at QD32 vs host with {HOST_THREADS} threads"),
            ),
            ratio(NAMES[4], glat, h.lat_read_us, "us", lat_note),
        ])
    })();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(result?.into_iter().filter(|f| wants(&f.name)).collect())
}
