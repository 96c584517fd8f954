//! xenstored benchmarks: latency and throughput of reads, writes, directories and
//! read-modify-write transactions with 1 and 16 clients, and watch fan-out, against a
//! raw Unix-socket echo of the same message sizes measured in the same run; and the
//! cost of durability: writes to a xenstored with a state file, whose log is written
//! (`--sync none`) or also synced (`--sync fsync`, the default) before each reply.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use rxen_xenstore::client::Client;
use rxen_xenstore::persist::{SyncPolicy, DEFAULT_LOG_MAX_BYTES};
use rxen_xenstore::server::{Config, Daemon};

use crate::Figure;

const XS_FIGURES: &[&str] = &[
    "xs_read_p50_us",
    "xs_read_p99_us",
    "xs_read_ops_1client",
    "xs_write_p50_us",
    "xs_write_p99_us",
    "xs_write_logged_p50_us",
    "xs_write_fsync_p50_us",
    "xs_write_fsync_p99_us",
    "xs_directory_p50_us",
    "xs_txn_rmw_p50_us",
    "xs_txn_rmw_p99_us",
    "xs_read_ops_16clients",
    "xs_watch_fanout_1000_ms",
];

fn pct(v: &mut [f64], p: usize) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[((v.len() - 1) * p) / 100]
}

struct Env {
    dir: PathBuf,
    socket: PathBuf,
    echo: PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn setup() -> Result<Env, String> {
    let dir = std::env::temp_dir().join(format!("rxen-bench-xs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let socket = dir.join("socket");
    let config = Config {
        socket: socket.clone(),
        domain_socket_dir: dir.join("domains"),
        state_file: None,
        access_log: None,
        sync: SyncPolicy::Fsync,
        log_max_bytes: DEFAULT_LOG_MAX_BYTES,
    };
    let daemon = Daemon::new(config)?;
    std::thread::spawn(move || {
        let _ = daemon.serve();
    });
    // The raw echo server: answers each 16-byte header + payload with a reply of the
    // same shape, one blocking thread per connection (what xenstored does too).
    let echo = dir.join("echo");
    let l = UnixListener::bind(&echo).map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || echo_conn(s));
        }
    });
    let t = Instant::now();
    while UnixStream::connect(&socket).is_err() {
        if t.elapsed() > Duration::from_secs(5) {
            return Err("xenstored did not start".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(Env { dir, socket, echo })
}

/// Latencies of `n` writes to a xenstored of its own that keeps a state file with
/// `sync` (in a directory under `base`).
fn durable_write_samples(
    base: &std::path::Path,
    sync: SyncPolicy,
    n: usize,
) -> Result<Vec<f64>, String> {
    let dir = base.join(format!("durable-{sync:?}"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let socket = dir.join("socket");
    let daemon = Daemon::new(Config {
        socket: socket.clone(),
        domain_socket_dir: dir.join("domains"),
        state_file: Some(dir.join("xenstored.json")),
        access_log: None,
        sync,
        log_max_bytes: DEFAULT_LOG_MAX_BYTES,
    })?;
    std::thread::spawn(move || {
        let _ = daemon.serve();
    });
    let t = Instant::now();
    while UnixStream::connect(&socket).is_err() {
        if t.elapsed() > Duration::from_secs(5) {
            return Err("xenstored did not start".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut c = e(Client::connect(&socket))?;
    samples(n / 10, || e(c.write(0, "/bench/key", b"value")))?;
    samples(n, || e(c.write(0, "/bench/key", b"value")))
}

fn echo_conn(mut s: UnixStream) {
    let mut hdr = [0u8; 16];
    let mut body = vec![0u8; 4096];
    loop {
        if s.read_exact(&mut hdr).is_err() {
            return;
        }
        let len = (u32::from_le_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]) as usize).min(4096);
        if s.read_exact(&mut body[..len]).is_err() {
            return;
        }
        let mut reply = hdr.to_vec();
        reply.extend_from_slice(&body[..len]);
        if s.write_all(&reply).is_err() {
            return;
        }
    }
}

/// Round trip of a request of `len` payload bytes on the raw echo server (µs each).
fn echo_samples(env: &Env, n: usize, len: usize) -> Result<Vec<f64>, String> {
    let mut s = UnixStream::connect(&env.echo).map_err(|e| e.to_string())?;
    let mut msg = vec![0u8; 16 + len];
    msg[12..16].copy_from_slice(&(len as u32).to_le_bytes());
    let mut back = vec![0u8; 16 + len];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&msg).map_err(|e| e.to_string())?;
        s.read_exact(&mut back).map_err(|e| e.to_string())?;
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(out)
}

fn samples(n: usize, mut f: impl FnMut() -> Result<(), String>) -> Result<Vec<f64>, String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f()?;
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(out)
}

fn e<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

pub fn run(wants: &dyn Fn(&str) -> bool, quick: bool) -> Result<Vec<Figure>, String> {
    if !wants("xs_") && !XS_FIGURES.iter().any(|f| wants(f)) {
        return Ok(Vec::new());
    }
    let env = setup()?;
    let n = if quick { 2000 } else { 20000 };
    let mut c = e(Client::connect(&env.socket))?;
    e(c.write(0, "/bench/key", b"value"))?;
    for i in 0..10 {
        e(c.write(0, &format!("/bench/dir/child{i}"), b"x"))?;
    }
    // Warm up both paths.
    echo_samples(&env, 500, 16)?;
    samples(500, || e(c.read(0, "/bench/key")).map(|_| ()))?;

    let mut echo = echo_samples(&env, n, "/bench/key\0".len())?;
    let mut read = samples(n, || e(c.read(0, "/bench/key")).map(|_| ()))?;
    let mut write = samples(n, || e(c.write(0, "/bench/key", b"value")))?;
    let mut dir = samples(n, || e(c.directory(0, "/bench/dir")).map(|_| ()))?;
    let mut rmw = samples(n / 4, || loop {
        let tx = e(c.transaction_start())?;
        let v = e(c.read(tx, "/bench/counter")).unwrap_or_default();
        let next = String::from_utf8_lossy(&v).parse::<u64>().unwrap_or(0) + 1;
        e(c.write(tx, "/bench/counter", next.to_string().as_bytes()))?;
        match c.transaction_end(tx, true) {
            Ok(()) => return Ok(()),
            Err(rxen_xenstore::client::ClientError::Xs(x)) if x == "EAGAIN" => continue,
            Err(x) => return Err(x.to_string()),
        }
    })?;
    let echo_p50 = pct(&mut echo, 50);
    let echo_rate = 1e6 / (echo.iter().sum::<f64>() / echo.len() as f64);
    let read_rate = 1e6 / (read.iter().sum::<f64>() / read.len() as f64);
    let mut figs = vec![
        Figure {
            name: "xs_read_p50_us".into(),
            value: pct(&mut read, 50),
            unit: "us".into(),
            baseline: echo_p50,
            ratio: pct(&mut read, 50) / echo_p50,
            note: "raw Unix-socket echo p50; goal ratio <= 1.25".into(),
        },
        Figure {
            name: "xs_read_p99_us".into(),
            value: pct(&mut read, 99),
            unit: "us".into(),
            baseline: pct(&mut echo, 99),
            ratio: pct(&mut read, 99) / pct(&mut echo, 99),
            note: "raw echo p99".into(),
        },
        Figure {
            name: "xs_read_ops_1client".into(),
            value: read_rate,
            unit: "op/s".into(),
            baseline: echo_rate,
            ratio: read_rate / echo_rate,
            note: "raw echo rate, one client".into(),
        },
        Figure {
            name: "xs_write_p50_us".into(),
            value: pct(&mut write, 50),
            unit: "us".into(),
            baseline: echo_p50,
            ratio: pct(&mut write, 50) / echo_p50,
            note: "raw echo p50".into(),
        },
        Figure {
            name: "xs_write_p99_us".into(),
            value: pct(&mut write, 99),
            unit: "us".into(),
            baseline: pct(&mut echo, 99),
            ratio: pct(&mut write, 99) / pct(&mut echo, 99),
            note: "raw echo p99".into(),
        },
        Figure {
            name: "xs_directory_p50_us".into(),
            value: pct(&mut dir, 50),
            unit: "us".into(),
            baseline: echo_p50,
            ratio: pct(&mut dir, 50) / echo_p50,
            note: "raw echo p50 (10 children)".into(),
        },
        Figure {
            name: "xs_txn_rmw_p50_us".into(),
            value: pct(&mut rmw, 50),
            unit: "us".into(),
            baseline: echo_p50 * 4.0,
            ratio: pct(&mut rmw, 50) / (echo_p50 * 4.0),
            note: "4 raw echo round trips (start, read, write, commit)".into(),
        },
        Figure {
            name: "xs_txn_rmw_p99_us".into(),
            value: pct(&mut rmw, 99),
            unit: "us".into(),
            baseline: pct(&mut echo, 99) * 4.0,
            ratio: pct(&mut rmw, 99) / (pct(&mut echo, 99) * 4.0),
            note: "4 raw echo round trips, p99".into(),
        },
    ];

    // What durability costs per write.
    let write_p50 = pct(&mut write, 50);
    let mut logged = durable_write_samples(&env.dir, SyncPolicy::None, n / 4)?;
    let mut synced = durable_write_samples(&env.dir, SyncPolicy::Fsync, n / 20)?;
    figs.push(Figure {
        name: "xs_write_logged_p50_us".into(),
        value: pct(&mut logged, 50),
        unit: "us".into(),
        baseline: write_p50,
        ratio: pct(&mut logged, 50) / write_p50,
        note: "write without a state file; --sync none (survives SIGKILL)".into(),
    });
    figs.push(Figure {
        name: "xs_write_fsync_p50_us".into(),
        value: pct(&mut synced, 50),
        unit: "us".into(),
        baseline: write_p50,
        ratio: pct(&mut synced, 50) / write_p50,
        note: "write without a state file; --sync fsync, the default (survives a host crash)"
            .into(),
    });
    figs.push(Figure {
        name: "xs_write_fsync_p99_us".into(),
        value: pct(&mut synced, 99),
        unit: "us".into(),
        baseline: write_p50,
        ratio: pct(&mut synced, 99) / write_p50,
        note: "p50 write without a state file".into(),
    });

    // 16 clients reading together.
    let clients = 16;
    let per = n / 4;
    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut handles = Vec::new();
    for _ in 0..clients {
        let b = barrier.clone();
        let sock = env.socket.clone();
        handles.push(std::thread::spawn(move || -> Result<(), String> {
            let mut c = e(Client::connect(&sock))?;
            b.wait();
            for _ in 0..per {
                e(c.read(0, "/bench/key"))?;
            }
            Ok(())
        }));
    }
    barrier.wait();
    let t0 = Instant::now();
    for h in handles {
        h.join().map_err(|_| "client thread panicked")??;
    }
    let rate16 = (clients * per) as f64 / t0.elapsed().as_secs_f64();
    figs.push(Figure {
        name: "xs_read_ops_16clients".into(),
        value: rate16,
        unit: "op/s".into(),
        baseline: echo_rate,
        ratio: rate16 / echo_rate,
        note: "raw echo rate of ONE client; goal ratio >= 1".into(),
    });

    // Watch fan-out: 1000 watches on 100 connections, one write.
    let conns = 100;
    let per_conn = 10;
    let ready = Arc::new(Barrier::new(conns + 1));
    let mut readers = Vec::new();
    for i in 0..conns {
        let sock = env.socket.clone();
        let ready = ready.clone();
        readers.push(std::thread::spawn(move || -> Result<Instant, String> {
            let mut c = e(Client::connect(&sock))?;
            for j in 0..per_conn {
                e(c.watch("/fanout", &format!("t{i}-{j}")))?;
            }
            for _ in 0..per_conn {
                e(c.next_event())?; // initial events
            }
            ready.wait();
            for _ in 0..per_conn {
                e(c.next_event())?;
            }
            Ok(Instant::now())
        }));
    }
    ready.wait();
    let t0 = Instant::now();
    e(c.write(0, "/fanout/x", b"go"))?;
    let mut last = t0;
    for r in readers {
        last = last.max(r.join().map_err(|_| "reader panicked")??);
    }
    let fan_ms = (last - t0).as_secs_f64() * 1e3;
    let raw_1000_ms = echo_p50 * 1000.0 / 1e3;
    figs.push(Figure {
        name: "xs_watch_fanout_1000_ms".into(),
        value: fan_ms,
        unit: "ms".into(),
        baseline: raw_1000_ms,
        ratio: fan_ms / raw_1000_ms,
        note: "1000 sequential raw echo round trips; goal value <= 50 ms".into(),
    });
    Ok(figs.into_iter().filter(|f| wants(&f.name)).collect())
}
