//! `xm`: the command line of rxen, a client of xend's HTTP API. It finds xend through
//! `--url` or `XEND_URL` (default `http://127.0.0.1:8000`).

use std::io::{BufRead, BufReader, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(name = "xm", version, about = "Manage rxen domains through xend")]
struct Cli {
    /// xend's URL.
    #[arg(
        long,
        env = "XEND_URL",
        default_value = "http://127.0.0.1:8000",
        global = true
    )]
    url: String,
    /// Bearer token for a xend that requires one.
    #[arg(long, env = "XEND_AUTH_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create and start a domain from an xl.cfg file; `key=value` override settings.
    Create {
        config: String,
        overrides: Vec<String>,
        /// Attach to the console afterwards.
        #[arg(short = 'c', long)]
        console: bool,
    },
    /// List domains (Name, ID, Mem, VCPUs, State, Time(s)).
    List {
        /// Long format: every detail as JSON.
        #[arg(short, long)]
        long: bool,
        domains: Vec<String>,
    },
    /// Host and xend information.
    Info,
    /// Stop a domain at once.
    Destroy { domain: String },
    /// Ask a domain to power off (through xenstore control/shutdown).
    Shutdown {
        domain: String,
        /// Wait until it is gone.
        #[arg(short, long)]
        wait: bool,
        /// Seconds to wait with --wait.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
        /// Destroy it if it does not shut down in time.
        #[arg(long)]
        force: bool,
    },
    /// Ask a domain to reboot.
    Reboot { domain: String },
    /// Pause a domain.
    Pause { domain: String },
    /// Unpause a domain.
    Unpause { domain: String },
    /// Rename a domain.
    Rename { domain: String, new_name: String },
    /// Print a domain's console output and follow it until the domain ends or Ctrl-C;
    /// lines typed on stdin go to the guest's console input.
    Console {
        domain: String,
        /// Print what there is and return.
        #[arg(long)]
        no_follow: bool,
    },
    /// Set the number of online vCPUs (up to maxvcpus).
    VcpuSet { domain: String, count: u32 },
    /// List the vCPUs of domains.
    VcpuList { domains: Vec<String> },
    /// Set a domain's memory target (MiB).
    MemSet { domain: String, mib: u64 },
    /// Set a domain's maximum memory (MiB).
    MemMax { domain: String, mib: u64 },
    /// Uptime of domains.
    Uptime { domains: Vec<String> },
    /// xend's log.
    Dmesg,
    /// Add a managed domain (config kept by xend; not started).
    New {
        config: String,
        overrides: Vec<String>,
    },
    /// Start a managed domain.
    Start { name: String },
    /// Remove a managed domain's config.
    Delete { name: String },
    /// Follow domain state changes.
    Events,
    /// A live table of domains, refreshed every second.
    Top {
        /// Stop after this many refreshes.
        #[arg(long)]
        iterations: Option<u64>,
    },
}

struct Api {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

type Res<T> = Result<T, String>;

impl Api {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Res<(u16, String)> {
        let url = format!("{}{}", self.base.trim_end_matches('/'), path);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let result = match (method, body) {
            ("GET", _) => {
                let mut r = self.agent.get(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            ("DELETE", _) => {
                let mut r = self.agent.delete(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            (_, body) => {
                let mut r = self
                    .agent
                    .post(&url)
                    .header("Content-Type", "application/json");
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.send(body.unwrap_or(json!({})).to_string())
            }
        };
        let mut resp = result.map_err(|e| format!("cannot reach xend at {}: {e}", self.base))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("reading xend's reply: {e}"))?;
        Ok((status, text))
    }

    /// Calls and decodes JSON; xend's errors become `Err("message (code)")`.
    fn json(&self, method: &str, path: &str, body: Option<Value>) -> Res<Value> {
        let (status, text) = self.call(method, path, body)?;
        if status >= 400 {
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let msg = v["error"]["message"].as_str().unwrap_or(&text);
            let code = v["error"]["code"].as_str().unwrap_or("error");
            return Err(format!("{msg} ({code})"));
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| format!("xend sent bad JSON: {e}"))
    }

    fn text(&self, path: &str) -> Res<String> {
        let (status, text) = self.call("GET", path, None)?;
        if status >= 400 {
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            return Err(v["error"]["message"].as_str().unwrap_or(&text).to_string());
        }
        Ok(text)
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn table(domains: &[Value]) -> String {
    let mut out = format!(
        "{:<32} {:>5} {:>7} {:>5} {:>6} {:>10}\n",
        "Name", "ID", "Mem", "VCPUs", "State", "Time(s)"
    );
    for d in domains {
        let id = d["domid"]
            .as_u64()
            .map(|i| i.to_string())
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<32} {:>5} {:>7} {:>5} {:>6} {:>10.1}\n",
            d["name"].as_str().unwrap_or("?"),
            id,
            d["memory_mib"].as_u64().unwrap_or(0),
            d["vcpus"].as_u64().unwrap_or(0),
            d["state_flags"].as_str().unwrap_or("------"),
            d["cpu_time_s"].as_f64().unwrap_or(0.0)
        ));
    }
    out
}

fn config_body(path: &str, overrides: &[String]) -> Res<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
    Ok(json!({"config": text, "overrides": overrides}))
}

fn send_input(api: &Api, domain: &str, text: &str) -> Res<()> {
    let url = format!(
        "{}/domains/{}/console",
        api.base.trim_end_matches('/'),
        enc(domain)
    );
    let mut r = api.agent.post(&url).header("Content-Type", "text/plain");
    if let Some(t) = &api.token {
        r = r.header("Authorization", format!("Bearer {t}"));
    }
    let resp = r
        .send(text.to_string())
        .map_err(|e| format!("cannot reach xend: {e}"))?;
    if resp.status().as_u16() >= 400 {
        return Err(format!("console input refused ({})", resp.status()));
    }
    Ok(())
}

fn follow_console(api: &Api, domain: &str, follow: bool) -> Res<()> {
    if follow {
        // Lines typed on stdin go to the guest's console input.
        let api2 = Api {
            agent: api.agent.clone(),
            base: api.base.clone(),
            token: api.token.clone(),
        };
        let dom = domain.to_string();
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            for line in stdin.lock().lines() {
                let Ok(line) = line else { break };
                if let Err(e) = send_input(&api2, &dom, &format!("{line}\n")) {
                    eprintln!("xm: {e}");
                }
            }
        });
    }
    let mut shown = 0usize;
    loop {
        let text = match api.text(&format!("/domains/{}/console", enc(domain))) {
            Ok(t) => t,
            Err(_) if shown > 0 => return Ok(()),
            Err(e) => return Err(e),
        };
        if text.len() > shown {
            print!("{}", &text[shown..]);
            let _ = std::io::stdout().flush();
            shown = text.len();
        }
        if !follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn run(cli: Cli) -> Res<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(None)
        .build()
        .into();
    let api = Api {
        agent,
        base: cli.url.clone(),
        token: cli.token.clone(),
    };
    let print = |v: &Value, human: &dyn Fn(&Value) -> String| {
        if cli.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            print!("{}", human(v));
        }
    };
    let one = |path: String| -> Res<Value> { api.json("POST", &path, None) };
    match cli.cmd {
        Cmd::Create {
            config,
            overrides,
            console,
        } => {
            let v = api.json("POST", "/domains", Some(config_body(&config, &overrides)?))?;
            for w in v["warnings"].as_array().into_iter().flatten() {
                eprintln!("warning: {}", w.as_str().unwrap_or(""));
            }
            print(&v["domain"], &|d| {
                format!(
                    "Started domain {} (id={})\n",
                    d["name"].as_str().unwrap_or("?"),
                    d["domid"]
                )
            });
            if console {
                follow_console(&api, v["domain"]["name"].as_str().unwrap_or(""), true)?;
            }
        }
        Cmd::List { long, domains } => {
            let mut v = api.json("GET", "/domains", None)?;
            if !domains.is_empty() {
                let all = v.as_array().cloned().unwrap_or_default();
                let picked: Vec<Value> = all
                    .into_iter()
                    .filter(|d| {
                        domains.iter().any(|n| {
                            d["name"].as_str() == Some(n)
                                || d["domid"].as_u64().map(|i| i.to_string()).as_deref() == Some(n)
                        })
                    })
                    .collect();
                if picked.is_empty() {
                    return Err(format!("no domain {}", domains.join(", ")));
                }
                v = Value::Array(picked);
            }
            if long && !cli.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print(&v, &|v| {
                    table(v.as_array().map(Vec::as_slice).unwrap_or(&[]))
                });
            }
        }
        Cmd::Info => {
            let v = api.json("GET", "/info", None)?;
            print(&v, &|v| {
                format!(
                    "xen_version       : {}\nxend_version      : {}\nnr_cpus           : {}\ntotal_memory      : {}\nfree_memory       : {}\ndomains           : {}\n",
                    v["xen_version"].as_str().unwrap_or(""),
                    v["xend_version"].as_str().unwrap_or(""),
                    v["host"]["nr_cpus"],
                    v["host"]["total_memory_mib"],
                    v["host"]["free_memory_mib"],
                    v["domains"]
                )
            });
        }
        Cmd::Destroy { domain } => {
            api.json("DELETE", &format!("/domains/{}", enc(&domain)), None)?;
        }
        Cmd::Shutdown {
            domain,
            wait,
            timeout,
            force,
        } => {
            let q = if wait {
                format!("?wait={timeout}&force={force}")
            } else {
                String::new()
            };
            one(format!("/domains/{}/shutdown{q}", enc(&domain)))?;
        }
        Cmd::Reboot { domain } => {
            one(format!("/domains/{}/reboot", enc(&domain)))?;
        }
        Cmd::Pause { domain } => {
            one(format!("/domains/{}/pause", enc(&domain)))?;
        }
        Cmd::Unpause { domain } => {
            one(format!("/domains/{}/unpause", enc(&domain)))?;
        }
        Cmd::Rename { domain, new_name } => {
            api.json(
                "POST",
                &format!("/domains/{}/rename", enc(&domain)),
                Some(json!({"name": new_name})),
            )?;
        }
        Cmd::Console { domain, no_follow } => follow_console(&api, &domain, !no_follow)?,
        Cmd::VcpuSet { domain, count } => {
            api.json(
                "POST",
                &format!("/domains/{}/vcpus", enc(&domain)),
                Some(json!({"count": count})),
            )?;
        }
        Cmd::VcpuList { domains } => {
            let all = api.json("GET", "/domains", None)?;
            let mut rows = Vec::new();
            for d in all.as_array().into_iter().flatten() {
                if !domains.is_empty() && !domains.iter().any(|n| d["name"].as_str() == Some(n)) {
                    continue;
                }
                let online = d["vcpus"].as_u64().unwrap_or(0);
                for i in 0..d["maxvcpus"].as_u64().unwrap_or(0) {
                    rows.push(json!({"name": d["name"], "domid": d["domid"], "vcpu": i, "state": if i < online { "online" } else { "offline" }}));
                }
            }
            let v = Value::Array(rows);
            print(&v, &|v| {
                let mut s = format!("{:<32} {:>5} {:>5} {:>8}\n", "Name", "ID", "VCPU", "State");
                for r in v.as_array().into_iter().flatten() {
                    s.push_str(&format!(
                        "{:<32} {:>5} {:>5} {:>8}\n",
                        r["name"].as_str().unwrap_or(""),
                        r["domid"].to_string(),
                        r["vcpu"].to_string(),
                        r["state"].as_str().unwrap_or("")
                    ));
                }
                s
            });
        }
        Cmd::MemSet { domain, mib } => {
            api.json(
                "POST",
                &format!("/domains/{}/memory", enc(&domain)),
                Some(json!({"mib": mib})),
            )?;
        }
        Cmd::MemMax { domain, mib } => {
            api.json(
                "POST",
                &format!("/domains/{}/maxmem", enc(&domain)),
                Some(json!({"mib": mib})),
            )?;
        }
        Cmd::Uptime { domains } => {
            let all = api.json("GET", "/domains", None)?;
            let rows: Vec<Value> = all
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| {
                    d["uptime_s"].is_number()
                        && (domains.is_empty()
                            || domains.iter().any(|n| d["name"].as_str() == Some(n)))
                })
                .map(|d| json!({"name": d["name"], "domid": d["domid"], "uptime_s": d["uptime_s"]}))
                .collect();
            let v = Value::Array(rows);
            print(&v, &|v| {
                let mut s = format!("{:<32} {:>5} {:>12}\n", "Name", "ID", "Uptime");
                for r in v.as_array().into_iter().flatten() {
                    let t = r["uptime_s"].as_f64().unwrap_or(0.0) as u64;
                    s.push_str(&format!(
                        "{:<32} {:>5} {:>6}:{:02}:{:02}\n",
                        r["name"].as_str().unwrap_or(""),
                        r["domid"].to_string(),
                        t / 3600,
                        t / 60 % 60,
                        t % 60
                    ));
                }
                s
            });
        }
        Cmd::Dmesg => print!("{}", api.text("/dmesg")?),
        Cmd::New { config, overrides } => {
            api.json("POST", "/managed", Some(config_body(&config, &overrides)?))?;
        }
        Cmd::Start { name } => {
            let v = one(format!("/managed/{}/start", enc(&name)))?;
            print(&v, &|d| {
                format!(
                    "Started domain {} (id={})\n",
                    d["name"].as_str().unwrap_or("?"),
                    d["domid"]
                )
            });
        }
        Cmd::Delete { name } => {
            api.json("DELETE", &format!("/managed/{}", enc(&name)), None)?;
        }
        Cmd::Events => {
            let url = format!("{}/events", cli.url.trim_end_matches('/'));
            let mut req = api.agent.get(&url);
            if let Some(t) = &cli.token {
                req = req.header("Authorization", format!("Bearer {t}"));
            }
            let mut resp = req.call().map_err(|e| format!("cannot reach xend: {e}"))?;
            if resp.status().as_u16() != 200 {
                return Err(format!("xend refused the event stream ({})", resp.status()));
            }
            let reader = BufReader::new(resp.body_mut().as_reader());
            for line in reader.lines() {
                let line = line.map_err(|e| e.to_string())?;
                if let Some(data) = line.strip_prefix("data:") {
                    let v: Value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
                    if cli.json {
                        println!("{v}");
                    } else {
                        println!(
                            "{:<20} {:>5} {:<24} {}",
                            v["event"].as_str().unwrap_or(""),
                            v["domid"].to_string(),
                            v["name"].as_str().unwrap_or(""),
                            v["detail"]
                        );
                    }
                    let _ = std::io::stdout().flush();
                }
            }
        }
        Cmd::Top { iterations } => {
            let mut n = 0u64;
            loop {
                let v = api.json("GET", "/domains", None)?;
                print!(
                    "\x1b[2J\x1b[H{}",
                    table(v.as_array().map(Vec::as_slice).unwrap_or(&[]))
                );
                let _ = std::io::stdout().flush();
                n += 1;
                if iterations.is_some_and(|i| n >= i) {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xm: {e}");
            ExitCode::FAILURE
        }
    }
}
