//! `/metrics` in Prometheus' text exposition format (version 0.0.4): domain figures
//! and API request counts and latencies. Every family is written whole (HELP, TYPE,
//! then all its samples) and labels are bounded: routes are templates
//! (`/domains/{id}`), never raw paths, and unknown methods are `other`.

use std::collections::BTreeMap;
use std::fmt::Write;

use rxen_xend_api::{DomainInfo, DomainState};

/// Upper bounds of the latency histogram's buckets, seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A cumulative histogram with [`LATENCY_BUCKETS`].
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    /// Observations at or below each bound (not cumulative; summed when written).
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, secs: f64) {
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum += secs;
    }
}

/// Request counts and latencies, by bounded labels.
#[derive(Default)]
pub struct ApiMetrics {
    /// (method, route, status) -> requests.
    requests: BTreeMap<(&'static str, String, u16), u64>,
    /// (method, route) -> latency.
    latency: BTreeMap<(&'static str, String), Histogram>,
}

/// A method label from a bounded set.
pub fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

impl ApiMetrics {
    /// Records one answered request. `route` is a route template or `unmatched`.
    pub fn record(&mut self, method: &'static str, route: &str, status: u16, secs: f64) {
        *self
            .requests
            .entry((method, route.to_string(), status))
            .or_default() += 1;
        self.latency
            .entry((method, route.to_string()))
            .or_default()
            .observe(secs);
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A number as Prometheus writes it.
fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else if v.is_nan() {
        "NaN".into()
    } else if v > 0.0 {
        "+Inf".into()
    } else {
        "-Inf".into()
    }
}

/// The whole exposition.
pub fn render(doms: &[DomainInfo], api: &ApiMetrics) -> String {
    let mut out = String::new();
    family(&mut out, "xend_domains", "gauge", "Domains by state.");
    for s in DomainState::ALL {
        let n = doms.iter().filter(|d| d.state == s).count();
        let _ = writeln!(out, "xend_domains{{state=\"{s}\"}} {n}");
    }
    let label = |d: &DomainInfo| {
        format!(
            "domain=\"{}\",domid=\"{}\"",
            escape(&d.name),
            d.domid.unwrap_or(0)
        )
    };
    family(
        &mut out,
        "xend_domain_cpu_seconds_total",
        "counter",
        "CPU time of all vCPUs of the domain.",
    );
    for d in doms {
        let _ = writeln!(
            out,
            "xend_domain_cpu_seconds_total{{{}}} {}",
            label(d),
            num(d.cpu_time_s)
        );
    }
    family(
        &mut out,
        "xend_domain_vcpu_cpu_seconds_total",
        "counter",
        "CPU time of each vCPU.",
    );
    for d in doms {
        for v in &d.vcpu_list {
            let _ = writeln!(
                out,
                "xend_domain_vcpu_cpu_seconds_total{{{},vcpu=\"{}\"}} {}",
                label(d),
                v.id,
                num(v.cpu_time_s)
            );
        }
    }
    family(
        &mut out,
        "xend_domain_memory_bytes",
        "gauge",
        "Memory target of the domain.",
    );
    for d in doms {
        let _ = writeln!(
            out,
            "xend_domain_memory_bytes{{{}}} {}",
            label(d),
            d.memory_mib * 1024 * 1024
        );
    }
    family(
        &mut out,
        "xend_domain_console_dropped_bytes_total",
        "counter",
        "Console output dropped over the domain's rate or size limit.",
    );
    for d in doms {
        let _ = writeln!(
            out,
            "xend_domain_console_dropped_bytes_total{{{}}} {}",
            label(d),
            d.console_dropped_bytes
        );
    }
    family(&mut out, "xend_domain_vcpus", "gauge", "Online vCPUs.");
    for d in doms {
        let _ = writeln!(out, "xend_domain_vcpus{{{}}} {}", label(d), d.vcpus);
    }
    family(
        &mut out,
        "xend_domain_hypercalls_total",
        "counter",
        "Hypercalls made by the domain.",
    );
    for d in doms {
        let _ = writeln!(
            out,
            "xend_domain_hypercalls_total{{{}}} {}",
            label(d),
            d.hypercalls
        );
    }
    family(
        &mut out,
        "xend_api_requests_total",
        "counter",
        "API requests by method, route template and status.",
    );
    for ((method, route, status), n) in &api.requests {
        let _ = writeln!(
            out,
            "xend_api_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {n}",
            escape(route)
        );
    }
    family(
        &mut out,
        "xend_api_request_duration_seconds",
        "histogram",
        "Time to answer API requests, by method and route template.",
    );
    for ((method, route), h) in &api.latency {
        let l = format!("method=\"{method}\",route=\"{}\"", escape(route));
        let mut cumulative = 0;
        for (b, n) in LATENCY_BUCKETS.iter().zip(h.buckets.iter()) {
            cumulative += n;
            let _ = writeln!(
                out,
                "xend_api_request_duration_seconds_bucket{{{l},le=\"{b}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "xend_api_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(
            out,
            "xend_api_request_duration_seconds_sum{{{l}}} {}",
            num(h.sum)
        );
        let _ = writeln!(
            out,
            "xend_api_request_duration_seconds_count{{{l}}} {}",
            h.count
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules `promtool check metrics` enforces that bit us before: one HELP/TYPE
    /// per family, every sample under its own family's header, no family split in two,
    /// counters end in `_total`, histogram buckets cumulative up to `+Inf` = count.
    fn check(text: &str) {
        let mut seen = std::collections::HashSet::new();
        let mut current: Option<(String, String)> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    seen.insert(name.to_string()),
                    "family {name} declared twice"
                );
                if kind == "counter" {
                    assert!(
                        name.ends_with("_total"),
                        "counter {name} must end in _total"
                    );
                }
                current = Some((name.to_string(), kind.to_string()));
            } else if line.starts_with('#') {
                continue;
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                let (fam, kind) = current.as_ref().expect("sample before any TYPE");
                let ok = if kind == "histogram" {
                    ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name == format!("{fam}{s}"))
                } else {
                    name == fam
                };
                assert!(ok, "sample {name} outside its family (under {fam})");
            }
        }
    }

    #[test]
    fn exposition_keeps_families_whole_and_histograms_cumulative() {
        let mut m = ApiMetrics::default();
        m.record("GET", "/domains", 200, 0.0007);
        m.record("GET", "/domains", 200, 3.0);
        m.record("POST", "/domains/{id}/pause", 409, 0.02);
        m.record("GET", "unmatched", 404, 20.0);
        let text = render(&[], &m);
        check(&text);
        assert!(text.contains(
            "xend_api_request_duration_seconds_bucket{method=\"GET\",route=\"/domains\",le=\"0.001\"} 1"
        ));
        assert!(text.contains(
            "xend_api_request_duration_seconds_bucket{method=\"GET\",route=\"/domains\",le=\"5\"} 2"
        ));
        assert!(text.contains(
            "xend_api_request_duration_seconds_bucket{method=\"GET\",route=\"unmatched\",le=\"+Inf\"} 1"
        ));
        assert!(text.contains(
            "xend_api_request_duration_seconds_count{method=\"GET\",route=\"unmatched\"} 1"
        ));
        assert!(!text.contains("_seconds_sum{method=\"GET\",route=\"/domains\",status"));
    }
}
