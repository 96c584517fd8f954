//! What each `xm` command does: API calls through [`Api`], output through
//! [`crate::format`] and [`crate::libxl_json`] (or the API's JSON with `--json`).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use rxen_xend_api::{CreateRequest, DomainEvent, DomainInfo, ShutdownQuery};
use serde_json::Value;

use crate::client::{Api, Decoded};
use crate::error::{XmError, XmResult};
use crate::{console, format, libxl_json, local_file, size};

/// How to print.
#[derive(Clone, Copy)]
pub struct Output {
    /// `--json`: the API's JSON.
    pub json: bool,
}

impl Output {
    fn show(&self, json: &Value, human: impl FnOnce() -> String) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(json).unwrap_or_default());
        } else {
            print!("{}", human());
        }
    }
}

/// The request for `create`/`new`: the file's text, overrides, and the file's
/// absolute directory so xend resolves relative `kernel=` paths as xl does.
pub fn config_request(path: &str, overrides: &[String], paused: bool) -> XmResult<CreateRequest> {
    let text =
        local_file::read_bounded(Path::new(path), "config file", local_file::MAX_CONFIG_BYTES)?;
    let abs =
        std::fs::canonicalize(path).map_err(|e| XmError::io(format!("resolving {path}"), e))?;
    let base_dir = abs
        .parent()
        .unwrap_or(Path::new("/"))
        .to_string_lossy()
        .into_owned();
    Ok(CreateRequest {
        config: Some(text),
        overrides: overrides.to_vec(),
        spec: None,
        base_dir: Some(base_dir),
        paused,
    })
}

fn started(d: &DomainInfo) -> String {
    match d.domid {
        Some(id) => format!("Started domain {} (id={id})\n", d.name),
        None => format!("Started domain {}\n", d.name),
    }
}

pub fn create(
    api: &Api,
    out: Output,
    config: &str,
    overrides: &[String],
    paused: bool,
    attach: bool,
) -> XmResult<()> {
    let reply = api.create(&config_request(config, overrides, paused)?)?;
    for w in &reply.value.warnings {
        eprintln!("warning: {w}");
    }
    out.show(&reply.json, || started(&reply.value.domain));
    if attach {
        console::follow(api, &reply.value.domain.name, true, false)?;
    }
    Ok(())
}

/// `file` as an absolute path (xend resolves nothing against its own directory).
fn absolute_file(file: &str) -> XmResult<String> {
    std::path::absolute(file)
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| XmError::Usage(format!("{file}: {e}")))
}

pub fn save(api: &Api, out: Output, domain: &str, file: &str, keep_running: bool) -> XmResult<()> {
    let req = rxen_xend_api::SaveRequest {
        path: absolute_file(file)?,
        keep_running,
    };
    if !out.json {
        eprintln!("Saving domain {domain} to {} ...", req.path);
    }
    let reply = api.save(domain, &req)?;
    let r = &reply.value;
    out.show(&reply.json, || {
        format!(
            "Saved domain {domain} to {}: {} pages, {} MiB, paused {} ms{}\n",
            r.path,
            r.pages,
            r.bytes >> 20,
            r.paused_ms,
            if r.kept_running {
                "; it keeps running"
            } else {
                ""
            }
        )
    });
    Ok(())
}

/// `HOST`, `HOST:PORT` or `[V6]:PORT` as the API's host and port.
fn migration_target(target: &str) -> XmResult<(String, Option<u16>)> {
    let bad = || XmError::Usage(format!("{target:?} is not HOST or HOST:PORT"));
    if let Some(rest) = target.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        return match after.strip_prefix(':') {
            Some(p) => Ok((host.to_string(), Some(p.parse().map_err(|_| bad())?))),
            None if after.is_empty() => Ok((host.to_string(), None)),
            None => Err(bad()),
        };
    }
    match target.rsplit_once(':') {
        // More than one colon: a bare IPv6 address.
        Some((host, _)) if host.contains(':') => Ok((target.to_string(), None)),
        Some((host, port)) if !host.is_empty() => {
            Ok((host.to_string(), Some(port.parse().map_err(|_| bad())?)))
        }
        Some(_) => Err(bad()),
        None if target.is_empty() => Err(bad()),
        None => Ok((target.to_string(), None)),
    }
}

pub fn migrate(api: &Api, out: Output, domain: &str, target: &str, live: bool) -> XmResult<()> {
    let (host, port) = migration_target(target)?;
    let req = rxen_xend_api::MigrateRequest { host, port, live };
    if !out.json {
        eprintln!(
            "Migrating domain {domain} to {target}{} ...",
            if live { " (live)" } else { "" }
        );
        // Progress: xend's `migration_progress` events of this domain, followed from
        // before the request (the thread ends with the process).
        if let Ok(events) = api.events() {
            let domain = domain.to_string();
            std::thread::spawn(move || print_migration_progress(events.body, &domain));
        }
    }
    let reply = api.migrate(domain, &req)?;
    let r = &reply.value;
    out.show(&reply.json, || {
        let rounds: Vec<String> = r.pages_per_round.iter().map(u64::to_string).collect();
        format!(
            "Migrated domain {domain} to {} (domain {} there): {} round(s), pages per round {}, {} pages sent for {} ({:.2}x), downtime {:.1} ms (stop-and-copy {:.1} ms), total {:.2} s\n",
            r.target,
            r.target_domid,
            r.rounds,
            rounds.join("/"),
            r.pages_sent,
            r.guest_pages,
            r.pages_sent as f64 / r.guest_pages.max(1) as f64,
            r.downtime_ms,
            r.stop_and_copy_ms,
            r.total_ms / 1e3,
        )
    });
    Ok(())
}

/// Prints each pre-copy round of `domain`'s migration from xend's event stream.
fn print_migration_progress(body: impl std::io::Read, domain: &str) {
    for line in BufReader::new(body).lines() {
        let Ok(line) = line else { return };
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let Ok(ev) = serde_json::from_str::<DomainEvent>(data.trim()) else {
            continue;
        };
        let ours = ev.name == domain || ev.domid.is_some_and(|d| d.to_string() == domain);
        if ours && ev.event == "migration_progress" {
            eprintln!(
                "  round {}: {} pages sent, {} dirty",
                ev.detail["round"], ev.detail["pages"], ev.detail["dirty"]
            );
        }
    }
}

pub fn restore(api: &Api, out: Output, file: &str, paused: bool) -> XmResult<()> {
    let req = rxen_xend_api::RestoreRequest {
        path: absolute_file(file)?,
        paused,
    };
    if !out.json {
        eprintln!("Restoring from {} ...", req.path);
    }
    let reply = api.restore(&req)?;
    out.show(&reply.json, || started(&reply.value.domain));
    Ok(())
}

pub fn new_managed(api: &Api, out: Output, config: &str, overrides: &[String]) -> XmResult<()> {
    let reply = api.new_managed(&config_request(config, overrides, false)?)?;
    for w in &reply.value.warnings {
        eprintln!("warning: {w}");
    }
    out.show(&reply.json, || {
        format!("Added managed domain {}\n", reply.value.name)
    });
    Ok(())
}

/// The named domains (in the order given), or all of them with Domain-0 first.
fn domains(api: &Api, names: &[String]) -> XmResult<Vec<Decoded<DomainInfo>>> {
    if names.is_empty() {
        let all = api.list()?;
        let jsons = match all.json {
            Value::Array(a) => a,
            _ => Vec::new(),
        };
        let mut pairs: Vec<Decoded<DomainInfo>> = all
            .value
            .into_iter()
            .zip(jsons)
            .map(|(value, json)| Decoded { value, json })
            .collect();
        pairs.sort_by_key(|d| format::domain_order(&d.value));
        Ok(pairs)
    } else {
        names.iter().map(|n| api.domain(n)).collect()
    }
}

fn split(d: Vec<Decoded<DomainInfo>>) -> (Vec<DomainInfo>, Value) {
    let (v, j): (Vec<_>, Vec<_>) = d.into_iter().map(|d| (d.value, d.json)).unzip();
    (v, Value::Array(j))
}

pub fn list(api: &Api, out: Output, long: bool, names: &[String]) -> XmResult<()> {
    let (doms, json) = split(domains(api, names)?);
    if long && !out.json {
        let v = libxl_json::domains_config(&doms);
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        out.show(&json, || format::list_table(&doms));
    }
    Ok(())
}

pub fn domid(api: &Api, name: &str) -> XmResult<()> {
    let d = api.domain(name)?.value;
    match d.domid {
        Some(id) => {
            println!("{id}");
            Ok(())
        }
        None => Err(XmError::Usage(format!(
            "domain {name} is not running, so it has no id"
        ))),
    }
}

pub fn domname(api: &Api, id: &str) -> XmResult<()> {
    if id.parse::<u32>().is_err() {
        return Err(XmError::Usage(format!("invalid domain id {id:?}")));
    }
    println!("{}", api.domain(id)?.value.name);
    Ok(())
}

pub fn info(api: &Api, out: Output) -> XmResult<()> {
    let h = api.info()?;
    out.show(&h.json, || format::info_lines(&h.value));
    Ok(())
}

pub fn vcpu_list(api: &Api, out: Output, names: &[String]) -> XmResult<()> {
    let (doms, json) = split(domains(api, names)?);
    out.show(&json, || format::vcpu_table(&doms));
    Ok(())
}

pub fn uptime(api: &Api, out: Output, names: &[String]) -> XmResult<()> {
    let mut rows = Vec::new();
    let mut jsons = Vec::new();
    if names.is_empty() {
        for d in domains(api, &[])? {
            if let Some(u) = d.value.uptime_s {
                jsons.push(serde_json::json!({"name": d.value.name, "domid": d.value.domid, "uptime_s": u}));
                rows.push(rxen_xend_api::UptimeReply {
                    name: d.value.name,
                    domid: d.value.domid,
                    uptime_s: Some(u),
                });
            }
        }
    } else {
        for n in names {
            let r = api.uptime(n)?;
            rows.push(r.value);
            jsons.push(r.json);
        }
    }
    out.show(&Value::Array(jsons), || format::uptime_table(&rows));
    Ok(())
}

pub fn mem(api: &Api, domain: &str, size_text: &str, maxmem: bool) -> XmResult<()> {
    let mib = size::parse_mib(size_text).map_err(|e| XmError::Usage(e.to_string()))?;
    api.memory(domain, mib, maxmem)
}

/// `shutdown DOMAIN` (xend waits with `-w`) or `shutdown -a` (all but Domain-0;
/// with `-w` xm waits for all of them).
pub fn shutdown(
    api: &Api,
    domain: Option<&str>,
    all: bool,
    wait: bool,
    timeout: f64,
    force: bool,
) -> XmResult<()> {
    let query = ShutdownQuery {
        wait: wait.then_some(timeout),
        force,
    };
    if !all {
        let domain = domain.ok_or_else(|| XmError::Usage("name a domain or use -a".into()))?;
        return api.shutdown(domain, &query);
    }
    let targets: Vec<u32> = api
        .list()?
        .value
        .into_iter()
        .filter(|d| !d.is_dom0() && d.state.has_vmm())
        .filter_map(|d| d.domid)
        .collect();
    let mut failed = Vec::new();
    for id in &targets {
        if let Err(e) = api.shutdown(&id.to_string(), &ShutdownQuery::default()) {
            eprintln!("xm: domain {id}: {e}");
            failed.push(*id);
        }
    }
    if wait {
        let deadline = Instant::now() + Duration::from_secs_f64(timeout.max(0.0));
        loop {
            let left: Vec<u32> = api
                .list()?
                .value
                .into_iter()
                .filter(|d| d.state.has_vmm() && d.domid.is_some_and(|i| targets.contains(&i)))
                .filter_map(|d| d.domid)
                .collect();
            if left.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                if force {
                    for id in &left {
                        api.destroy(&id.to_string())?;
                    }
                    break;
                }
                return Err(XmError::Usage(format!(
                    "domains {left:?} did not shut down within {timeout} s"
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    if !failed.is_empty() {
        return Err(XmError::Usage(format!(
            "could not shut down domains {failed:?}"
        )));
    }
    Ok(())
}

pub fn start(api: &Api, out: Output, name: &str) -> XmResult<()> {
    let d = api.start_managed(name)?;
    out.show(&d.json, || started(&d.value));
    Ok(())
}

pub fn dmesg(api: &Api) -> XmResult<()> {
    let text = api.dmesg()?;
    std::io::stdout()
        .write_all(&text)
        .map_err(|e| XmError::io("writing", e))
}

pub fn events(api: &Api, out: Output) -> XmResult<()> {
    let reply = api.events()?;
    let mut stdout = std::io::stdout();
    for line in BufReader::new(reply.body).lines() {
        let line = line.map_err(|e| XmError::BadReply(format!("event stream: {e}")))?;
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let data = data.trim();
        if out.json {
            println!("{data}");
        } else {
            match serde_json::from_str::<DomainEvent>(data) {
                Ok(ev) => println!(
                    "{:<20} {:>5} {:<24} {}",
                    ev.event,
                    ev.domid.map_or_else(|| "-".into(), |i| i.to_string()),
                    ev.name,
                    ev.detail
                ),
                Err(e) => eprintln!("xm: unreadable event ({e}): {data}"),
            }
        }
        let _ = stdout.flush();
    }
    Ok(())
}

pub fn top(api: &Api, iterations: Option<u64>) -> XmResult<()> {
    let mut n = 0u64;
    loop {
        let (doms, _) = split(domains(api, &[])?);
        print!("\x1b[2J\x1b[H{}", format::list_table(&doms));
        let _ = std::io::stdout().flush();
        n += 1;
        if iterations.is_some_and(|i| n >= i) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `block-attach DOMAIN SPEC...`: the arguments are the parts of one xl disk
/// specification (joined with commas, as xl does).
pub fn block_attach(api: &Api, out: Output, domain: &str, spec: &[String]) -> XmResult<()> {
    let d = api.attach_disk(domain, &spec.join(","))?;
    out.show(&d.json, String::new);
    Ok(())
}

/// `block-detach DOMAIN DEV`: waits for the guest to let go (`timeout` seconds), then
/// forces; `force` does not wait.
pub fn block_detach(
    api: &Api,
    out: Output,
    domain: &str,
    dev: &str,
    force: bool,
    timeout: Option<f64>,
) -> XmResult<()> {
    let q = rxen_xend_api::DiskDetachQuery {
        force,
        wait: timeout,
    };
    let r = api.detach_disk(domain, dev, &q)?;
    let forced = r.value.forced.then(|| r.value.vdev.clone());
    report_detach(out, force, forced, &r.json)
}

/// Shows a detach's reply; warns when the backend removed the device (`forced`,
/// its name) by force although the user asked to wait for the guest (`!force`).
fn report_detach(out: Output, force: bool, forced: Option<String>, json: &Value) -> XmResult<()> {
    if let Some(device) = forced.filter(|_| !force) {
        eprintln!("warning: the guest did not release {device} in time; it was removed by force");
    }
    out.show(json, String::new);
    Ok(())
}

/// `block-list DOMAIN...`: xl's table for each domain.
pub fn block_list(api: &Api, out: Output, domains: &[String]) -> XmResult<()> {
    device_list(out, domains, |d| api.disks(d), format::block_table)
}

/// The devices of each of `domains` (`fetch`), shown as one table (`table`) or, as
/// JSON, the single reply or an array of the replies.
fn device_list<T>(
    out: Output,
    domains: &[String],
    fetch: impl Fn(&str) -> XmResult<crate::client::Decoded<Vec<T>>>,
    table: impl Fn(&[T]) -> String,
) -> XmResult<()> {
    let mut all = Vec::new();
    let mut jsons = Vec::new();
    for d in domains {
        let r = fetch(d)?;
        all.extend(r.value);
        jsons.push(r.json);
    }
    let json = if jsons.len() == 1 {
        jsons.remove(0)
    } else {
        Value::Array(jsons)
    };
    out.show(&json, || table(&all));
    Ok(())
}

/// `network-attach DOMAIN [KEY=VALUE]...`: the arguments are the items of one xl vif
/// specification (joined with commas, as xl does).
pub fn network_attach(api: &Api, out: Output, domain: &str, spec: &[String]) -> XmResult<()> {
    let n = api.attach_nic(domain, &spec.join(","))?;
    out.show(&n.json, String::new);
    Ok(())
}

/// `network-detach DOMAIN DEVID|MAC`: waits for the guest to let go (`timeout`
/// seconds), then forces; `force` does not wait.
pub fn network_detach(
    api: &Api,
    out: Output,
    domain: &str,
    dev: &str,
    force: bool,
    timeout: Option<f64>,
) -> XmResult<()> {
    let q = rxen_xend_api::NicDetachQuery {
        force,
        wait: timeout,
    };
    let r = api.detach_nic(domain, dev, &q)?;
    let forced = r.value.forced.then(|| format!("vif {}", r.value.devid));
    report_detach(out, force, forced, &r.json)
}

/// `network-list DOMAIN...`: xl's table for each domain.
pub fn network_list(api: &Api, out: Output, domains: &[String]) -> XmResult<()> {
    device_list(out, domains, |d| api.nics(d), format::network_table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_targets() {
        let t = |s: &str| migration_target(s).ok();
        assert_eq!(t("h"), Some(("h".into(), None)));
        assert_eq!(t("h:8003"), Some(("h".into(), Some(8003))));
        assert_eq!(t("[::1]:9"), Some(("::1".into(), Some(9))));
        assert_eq!(t("::1"), Some(("::1".into(), None)));
        assert_eq!(t("[::1]"), Some(("::1".into(), None)));
        for bad in ["", ":1", "h:x", "h:70000", "[::1", "[::1]x"] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }
}
