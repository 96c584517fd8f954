//! Network benchmarks (issue 10): the `netbench` and `httpd` guests on a vif in a
//! Linux bridge made for the run (the host's end has 10.213.0.1/24), created through
//! xend, against the same host tool over host loopback in the same run.
//!
//! * `net_tcp_guest_to_host_gbps`: the host reads what the guest's source (port 5202)
//!   sends for the budget; baseline: the same reader against a host source thread;
//! * `net_tcp_host_to_guest_gbps`: the host writes to the guest's sink (port 5201) for
//!   the budget, half-closes, and the sink answers with the bytes it received (so the
//!   figure counts what arrived, not what sits in socket buffers); same baseline;
//! * `net_rr_latency_us`: 1-byte request/response on the guest's echo port (5203),
//!   mean round trip; baseline: a host echo thread;
//! * `net_http_rps`: `GET /` with a new connection per request against `httpd`;
//!   baseline: the same client against a minimal host HTTP server thread.
//!
//! The ratios read as the goals do: guest over host for throughput, host over guest
//! (so higher is better everywhere except latency, which is guest over host).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::xend_bench::{console, create_config, start, Daemons};
use crate::Figure;

const NAMES: [&str; 4] = [
    "net_tcp_guest_to_host_gbps",
    "net_tcp_host_to_guest_gbps",
    "net_rr_latency_us",
    "net_http_rps",
];
const HOST_IP: &str = "10.213.0.1";
const GUEST_IP: &str = "10.213.0.2";
const HTTPD_IP: &str = "10.213.0.3";
const SINK: u16 = 5201;
const SOURCE: u16 = 5202;
const ECHO: u16 = 5203;
const BOOT_LIMIT: Duration = Duration::from_secs(60);

/// A bridge with the host's address, removed on drop.
struct Bridge(String);

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

impl Bridge {
    fn new() -> Result<Self, String> {
        let name = format!("rxnb{}", std::process::id() % 100_000);
        let _ = ip(&["link", "del", &name]);
        ip(&["link", "add", &name, "type", "bridge"])?;
        let b = Bridge(name);
        ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", &b.0])?;
        ip(&["link", "set", &b.0, "up"])?;
        Ok(b)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.0]);
    }
}

/// Starts `guest` with a vif on `bridge` and `extra`, waits for `marker`.
fn boot(
    d: &Daemons,
    name: &str,
    guest: &str,
    bridge: &str,
    extra: &str,
    marker: &str,
) -> Result<(), String> {
    let kernel = rxen_guest_images::guest_path(guest);
    // TAP names are host-wide and every xend numbers its domains from 1: a name of this
    // run's own never collides with another xend's vif<domid>.0.
    let tap = format!(
        "rxt{}{}",
        std::process::id() % 100_000,
        name.get(..2).unwrap_or(name)
    );
    let config = format!(
        "name='{name}'\nmemory=64\nkernel='{}'\nextra='{extra}'\nvif=[ 'bridge={bridge},vifname={tap}' ]\n",
        kernel.display(),
    );
    create_config(d, name, &config)?;
    let t0 = Instant::now();
    loop {
        let text = console(d, name);
        if text.contains(marker) {
            return Ok(());
        }
        if text.contains("guest panic") || t0.elapsed() > BOOT_LIMIT {
            return Err(format!("{name}: no {marker:?}: {text}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let t0 = Instant::now();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
                return Ok(s);
            }
            Err(e) if t0.elapsed() > Duration::from_secs(10) => {
                return Err(format!("connect {addr}: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Reads from `addr` for `budget`: Gbit/s.
fn read_for(addr: SocketAddr, budget: Duration) -> Result<f64, String> {
    let mut s = connect(addr)?;
    let mut buf = vec![0u8; 256 << 10];
    let mut n = 0u64;
    let t0 = Instant::now();
    while t0.elapsed() < budget {
        let k = s.read(&mut buf).map_err(|e| format!("read {addr}: {e}"))?;
        if k == 0 {
            return Err(format!("{addr} closed the stream"));
        }
        n += k as u64;
    }
    Ok(n as f64 * 8.0 / t0.elapsed().as_secs_f64() / 1e9)
}

/// Writes to `addr` for `budget`, half-closes, reads the 8-byte count the sink
/// received: Gbit/s of what arrived.
fn write_for(addr: SocketAddr, budget: Duration) -> Result<f64, String> {
    let mut s = connect(addr)?;
    let buf = vec![0x5au8; 256 << 10];
    let t0 = Instant::now();
    while t0.elapsed() < budget {
        s.write_all(&buf)
            .map_err(|e| format!("write {addr}: {e}"))?;
    }
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count)
        .map_err(|e| format!("{addr}: no byte count after the stream: {e}"))?;
    let secs = t0.elapsed().as_secs_f64();
    Ok(u64::from_le_bytes(count) as f64 * 8.0 / secs / 1e9)
}

/// 1-byte round trips on `addr` for `budget`: mean µs.
fn rr_for(addr: SocketAddr, budget: Duration) -> Result<f64, String> {
    let mut s = connect(addr)?;
    let mut b = [0u8; 1];
    let mut n = 0u64;
    let t0 = Instant::now();
    while t0.elapsed() < budget || n < 10 {
        s.write_all(&[n as u8]).map_err(|e| e.to_string())?;
        s.read_exact(&mut b)
            .map_err(|e| format!("echo {addr}: {e}"))?;
        if b[0] != n as u8 {
            return Err(format!("echo {addr}: sent {} got {}", n as u8, b[0]));
        }
        n += 1;
    }
    Ok(t0.elapsed().as_secs_f64() * 1e6 / n as f64)
}

/// `GET /` with a new connection each for `budget`: requests/s.
fn http_for(addr: SocketAddr, budget: Duration) -> Result<f64, String> {
    let mut n = 0u64;
    let t0 = Instant::now();
    let mut body = Vec::new();
    while t0.elapsed() < budget || n < 5 {
        let mut s = connect(addr)?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .map_err(|e| e.to_string())?;
        body.clear();
        s.read_to_end(&mut body)
            .map_err(|e| format!("GET {addr}: {e}"))?;
        if !body.starts_with(b"HTTP/1.1 200") && !body.starts_with(b"HTTP/1.0 200") {
            return Err(format!(
                "GET {addr}: {}",
                String::from_utf8_lossy(&body[..body.len().min(80)])
            ));
        }
        n += 1;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// The host baseline: sink, source, echo and HTTP servers on loopback, same protocol
/// as the guests'. Threads run until the process ends.
fn host_servers() -> Result<[SocketAddr; 4], String> {
    let listen = || -> Result<TcpListener, String> {
        TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())
    };
    let (sink, source, echo, http) = (listen()?, listen()?, listen()?, listen()?);
    let addrs = [
        sink.local_addr().map_err(|e| e.to_string())?,
        source.local_addr().map_err(|e| e.to_string())?,
        echo.local_addr().map_err(|e| e.to_string())?,
        http.local_addr().map_err(|e| e.to_string())?,
    ];
    fn serve(l: TcpListener, f: fn(TcpStream) -> std::io::Result<()>) {
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let _ = s.set_nodelay(true);
                std::thread::spawn(move || f(s));
            }
        });
    }
    serve(sink, |mut s| {
        let mut buf = vec![0u8; 256 << 10];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf)? {
                0 => break,
                k => total += k as u64,
            }
        }
        s.write_all(&total.to_le_bytes())
    });
    serve(source, |mut s| {
        let buf = vec![0xa5u8; 256 << 10];
        loop {
            s.write_all(&buf)?;
        }
    });
    serve(echo, |mut s| {
        let mut b = [0u8; 1];
        loop {
            s.read_exact(&mut b)?;
            s.write_all(&b)?;
        }
    });
    serve(http, |mut s| {
        let mut req = Vec::new();
        let mut b = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut b)? {
                0 => return Ok(()),
                k => req.extend_from_slice(&b[..k]),
            }
        }
        let page = b"<html><body>rxen</body></html>\n";
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            page.len()
        );
        s.write_all(head.as_bytes())?;
        s.write_all(page)
    });
    Ok(addrs)
}

pub fn run(wants: &dyn Fn(&str) -> bool, quick: bool) -> Result<Vec<Figure>, String> {
    if !NAMES.iter().any(|n| wants(n)) {
        return Ok(Vec::new());
    }
    let budget = Duration::from_millis(if quick { 500 } else { 3000 });
    let d = start()?;
    let bridge = Bridge::new()?;
    boot(
        &d,
        "netbench",
        "netbench",
        &bridge.0,
        &format!(
            "ip={GUEST_IP}/24{}",
            std::env::var("RXEN_BENCH_NET_EXTRA")
                .map(|e| format!(" {e}"))
                .unwrap_or_default()
        ),
        "netbench: ready",
    )?;
    boot(
        &d,
        "httpd",
        "httpd",
        &bridge.0,
        &format!("ip={HTTPD_IP}/24"),
        "httpd: listening",
    )?;
    let at = |ip: &str, port: u16| -> Result<SocketAddr, String> {
        format!("{ip}:{port}").parse().map_err(|e| format!("{e}"))
    };
    let [h_sink, h_source, h_echo, h_http] = host_servers()?;
    let g2h = read_for(at(GUEST_IP, SOURCE)?, budget)?;
    let h_read = read_for(h_source, budget)?;
    let h2g = write_for(at(GUEST_IP, SINK)?, budget)?;
    // The sink's own account of the stream (frames and their size) reaches the console
    // a moment after the count reached us.
    let t0 = Instant::now();
    let sink_line = loop {
        let line = console(&d, "netbench")
            .lines()
            .rev()
            .find(|l| l.contains("netbench: sink"))
            .map(|l| l.trim().trim_start_matches("netbench: ").to_string());
        match line {
            Some(l) => break l,
            None if t0.elapsed() > Duration::from_secs(3) => break String::new(),
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let h_write = write_for(h_sink, budget)?;
    let rr = rr_for(at(GUEST_IP, ECHO)?, budget)?;
    let h_rr = rr_for(h_echo, budget)?;
    let rps = http_for(at(HTTPD_IP, 80)?, budget)?;
    let h_rps = http_for(h_http, budget)?;
    for name in ["netbench", "httpd"] {
        let _ = d.agent.delete(format!("{}/domains/{name}", d.url)).call();
    }
    drop(bridge);
    let fig = |name: &str, value: f64, baseline: f64, ratio: f64, unit: &str, note: &str| Figure {
        name: name.into(),
        value,
        unit: unit.into(),
        baseline,
        ratio,
        note: note.into(),
    };
    Ok(vec![
        fig(
            NAMES[0],
            g2h,
            h_read,
            g2h / h_read,
            "Gbit/s",
            "guest source → host, vs host loopback; goal >= 0.5",
        ),
        fig(
            NAMES[1],
            h2g,
            h_write,
            h2g / h_write,
            "Gbit/s",
            &format!("host → guest sink (bytes received), vs loopback; goal >= 0.5 ({sink_line})"),
        ),
        fig(
            NAMES[2],
            rr,
            h_rr,
            rr / h_rr,
            "us",
            "1-byte TCP round trip, guest vs host loopback",
        ),
        fig(
            NAMES[3],
            rps,
            h_rps,
            rps / h_rps,
            "req/s",
            "GET / with a connection each, httpd vs host server on loopback",
        ),
    ]
    .into_iter()
    .filter(|f| wants(&f.name))
    .collect())
}
