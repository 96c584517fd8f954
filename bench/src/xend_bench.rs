//! xend benchmarks: create-to-running through the API, 100 concurrent creates (time
//! and host memory per domain), `xm list` latency with 100 domains, and 1000
//! sequential `xm list` runs. Baselines: spawning `/bin/true` (the floor of a
//! process-per-domain or process-per-command design), and the guest's own RAM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Figure;

const NAMES: &[&str] = &[
    "xend_create_to_running_p50_ms",
    "xend_create_to_running_p99_ms",
    "xend_100_concurrent_creates_s",
    "xend_host_memory_per_domain_mib",
    "xm_list_100_domains_ms",
    "xm_list_1000_runs_s",
];

/// A binary next to this one (the workspace's target directory).
pub(crate) fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

pub(crate) struct Daemons {
    dir: PathBuf,
    xs: Child,
    xend: Child,
    pub(crate) url: String,
    pub(crate) agent: ureq::Agent,
}

impl Daemons {
    /// Domain `domid`'s directory under xend's state directory (`vmm.log`,
    /// `console.log`).
    pub(crate) fn domain_dir(&self, domid: u32) -> PathBuf {
        self.dir.join("state/domains").join(domid.to_string())
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        let _ = self.xend.kill();
        let _ = self.xend.wait();
        let _ = self.xs.kill();
        let _ = self.xs.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private xenstored and xend (foreground) in a temporary directory.
pub(crate) fn start() -> Result<Daemons, String> {
    let dir = std::env::temp_dir().join(format!("rxen-bench-xend-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let sock = dir.join("xs/socket");
    let xs = Command::new(sibling("xenstored"))
        .arg("--socket")
        .arg(&sock)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("xenstored: {e}"))?;
    let t = Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        if t.elapsed() > Duration::from_secs(10) {
            return Err("xenstored did not start".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let xend = Command::new(sibling("xend"))
        .args(["foreground", "--port", &port.to_string()])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--log-dir")
        .arg(dir.join("log"))
        .arg("--xenstored-socket")
        .arg(&sock)
        .stderr(Stdio::null())
        // Inherited by the VMMs: warnings, and each domain's counters when it ends
        // (`rxen_vmm::stats`, read back by the Linux benchmark).
        .env("RXEN_LOG", "warn,rxen_vmm::stats=info")
        .spawn()
        .map_err(|e| format!("xend: {e}"))?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("http://127.0.0.1:{port}");
    let d = Daemons {
        dir,
        xs,
        xend,
        url,
        agent,
    };
    let t = Instant::now();
    while d
        .agent
        .get(format!("{}/health", d.url))
        .call()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        if t.elapsed() > Duration::from_secs(10) {
            return Err("xend did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(d)
}

/// Domain `name`'s console output so far (empty when there is none yet).
pub(crate) fn console(d: &Daemons, name: &str) -> String {
    d.agent
        .get(format!("{}/domains/{name}/console", d.url))
        .call()
        .ok()
        .filter(|r| r.status().as_u16() == 200)
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default()
}

/// `POST /domains` with xl.cfg text `config`; the new domain's VMM pid.
pub(crate) fn create_config(d: &Daemons, name: &str, config: &str) -> Result<u64, String> {
    create_reply(d, name, config)?
        .domain
        .pid
        .map(u64::from)
        .ok_or_else(|| "no pid".into())
}

/// `POST /domains` with xl.cfg text `config`; xend's answer.
pub(crate) fn create_reply(
    d: &Daemons,
    name: &str,
    config: &str,
) -> Result<rxen_xend_api::CreateReply, String> {
    let body = serde_json::to_string(&rxen_xend_api::CreateRequest {
        config: Some(config.to_string()),
        ..Default::default()
    })
    .map_err(|e| e.to_string())?;
    let mut r = d
        .agent
        .post(format!("{}/domains", d.url))
        .header("Content-Type", "application/json")
        .send(body)
        .map_err(|e| e.to_string())?;
    let text = r.body_mut().read_to_string().map_err(|e| e.to_string())?;
    if r.status().as_u16() != 201 {
        return Err(format!("create {name}: {text}"));
    }
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

fn create(d: &Daemons, name: &str) -> Result<u64, String> {
    create_config(d, name, &format!("name='{name}'\nmemory=16"))
}

fn destroy(d: &Daemons, name: &str) {
    let _ = d.agent.delete(format!("{}/domains/{name}", d.url)).call();
}

fn pct(v: &mut [f64], p: usize) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[((v.len() - 1) * p) / 100]
}

fn spawn_ms(cmd: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<f64, String> {
    let t = Instant::now();
    let out = Command::new(cmd)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    if !out.success() {
        return Err(format!("{} failed", cmd.display()));
    }
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

fn rss_mib(pid: u64) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

pub fn run(wants: &dyn Fn(&str) -> bool, quick: bool) -> Result<Vec<Figure>, String> {
    if !NAMES.iter().any(|n| wants(n)) {
        return Ok(Vec::new());
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Err("/dev/kvm is not usable; the xend benchmarks need KVM".into());
    }
    let d = start()?;
    let truebin = Path::new("/bin/true");
    let mut spawn: Vec<f64> = (0..50)
        .map(|_| spawn_ms(truebin, &[], &[]))
        .collect::<Result<_, _>>()?;
    let spawn_p50 = pct(&mut spawn, 50);
    let mut figs = Vec::new();

    // Create-to-running, sequential.
    let n = if quick { 5 } else { 30 };
    let mut lat = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        create(&d, &format!("seq{i}"))?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    for i in 0..n {
        destroy(&d, &format!("seq{i}"));
    }
    let (p50, p99) = (pct(&mut lat, 50), pct(&mut lat, 99));
    figs.push(Figure {
        name: NAMES[0].into(),
        value: p50,
        unit: "ms".into(),
        baseline: spawn_p50,
        ratio: p50 / spawn_p50,
        note: "spawning /bin/true (process floor)".into(),
    });
    figs.push(Figure {
        name: NAMES[1].into(),
        value: p99,
        unit: "ms".into(),
        baseline: pct(&mut spawn, 99),
        ratio: p99 / pct(&mut spawn, 99),
        note: "spawning /bin/true, p99".into(),
    });

    // Many domains at once.
    let many = if quick { 10 } else { 100 };
    let t = Instant::now();
    let results: Vec<Result<u64, String>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..many)
            .map(|i| {
                let d = &d;
                s.spawn(move || create(d, &format!("many{i}")))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect()
    });
    let total_s = t.elapsed().as_secs_f64();
    let pids: Vec<u64> = results.into_iter().collect::<Result<_, _>>()?;
    std::thread::sleep(Duration::from_millis(300));
    let rss: f64 = pids.iter().map(|p| rss_mib(*p)).sum::<f64>() / many as f64;
    figs.push(Figure {
        name: NAMES[2].into(),
        value: total_s,
        unit: "s".into(),
        baseline: spawn_p50 * many as f64 / 1e3,
        ratio: total_s / (spawn_p50 * many as f64 / 1e3),
        note: format!("{many} sequential /bin/true spawns"),
    });
    figs.push(Figure {
        name: NAMES[3].into(),
        value: rss,
        unit: "MiB".into(),
        baseline: 16.0,
        ratio: rss / 16.0,
        note: "the 16 MiB of guest RAM each domain was given (RSS of its xen-vmm)".into(),
    });

    // xm list with many domains.
    let xm = sibling("xm");
    let env = [("XEND_URL", d.url.as_str())];
    let mut l: Vec<f64> = (0..20)
        .map(|_| spawn_ms(&xm, &["list"], &env))
        .collect::<Result<_, _>>()?;
    let list_p50 = pct(&mut l, 50);
    figs.push(Figure {
        name: NAMES[4].into(),
        value: list_p50,
        unit: "ms".into(),
        baseline: spawn_p50,
        ratio: list_p50 / spawn_p50,
        note: format!("spawning /bin/true; {many} domains listed"),
    });
    let runs = if quick { 100 } else { 1000 };
    let t = Instant::now();
    for _ in 0..runs {
        spawn_ms(&xm, &["list"], &env)?;
    }
    let total = t.elapsed().as_secs_f64();
    let floor = spawn_p50 * runs as f64 / 1e3;
    figs.push(Figure {
        name: NAMES[5].into(),
        value: total,
        unit: "s".into(),
        baseline: floor,
        ratio: total / floor,
        note: format!("{runs} /bin/true spawns; goal value < 5 s for 1000 (Xen's xend: 105 s)"),
    });
    for i in 0..many {
        destroy(&d, &format!("many{i}"));
    }
    Ok(figs.into_iter().filter(|f| wants(&f.name)).collect())
}
