//! The HTTP JSON API (documented in `docs/openapi.json`, served at `/openapi.json`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::Stream;
use futures_util::StreamExt;
use rxen_xlcfg::DomainSpec;
use serde::Deserialize;

use crate::error::{ApiError, ApiResult};
use crate::state::Xend;

/// The OpenAPI 3 document of this API.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// Request counters and latency sums per route, for `/metrics`.
#[derive(Default)]
pub struct ApiMetrics {
    /// (method, route, status) -> (count, seconds)
    pub by_route: BTreeMap<(String, String, u16), (u64, f64)>,
}

#[derive(Clone)]
pub struct AppState {
    pub xend: Arc<Xend>,
    pub metrics: Arc<Mutex<ApiMetrics>>,
    pub auth_token: Option<String>,
    pub log_dir: std::path::PathBuf,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/metrics", get(metrics))
        .route("/events", get(events))
        .route("/dmesg", get(dmesg))
        .route("/info", get(host_info))
        .route("/domains", get(list).post(create))
        .route("/domains/{id}", get(info).delete(destroy))
        .route("/domains/{id}/shutdown", post(shutdown))
        .route("/domains/{id}/reboot", post(reboot))
        .route("/domains/{id}/pause", post(pause))
        .route("/domains/{id}/unpause", post(unpause))
        .route("/domains/{id}/rename", post(rename))
        .route("/domains/{id}/vcpus", post(vcpus))
        .route("/domains/{id}/memory", post(memory))
        .route("/domains/{id}/maxmem", post(maxmem))
        .route("/domains/{id}/uptime", get(uptime))
        .route("/domains/{id}/console", get(console).post(console_input))
        .route("/managed", post(new_managed))
        .route("/managed/{name}/start", post(start_managed))
        .route("/managed/{name}", axum::routing::delete(delete_managed))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed here",
            )
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Authenticates (when a token is set), logs every request with its outcome and
/// records its latency.
async fn observe(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let route = route_label(&path);
    if let Some(token) = &st.auth_token {
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| t == token);
        if !ok && route != "/health" {
            tracing::info!(target: "xend::api", %method, %path, status = 401, "unauthenticated request refused");
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token",
            )
            .into_response();
        }
    }
    let t0 = Instant::now();
    let resp = next.run(req).await;
    let secs = t0.elapsed().as_secs_f64();
    let status = resp.status().as_u16();
    if status >= 500 {
        tracing::error!(target: "xend::api", %method, %path, status, ms = secs * 1e3, "request failed");
    } else if status >= 400 {
        tracing::warn!(target: "xend::api", %method, %path, status, ms = secs * 1e3, "request refused");
    } else {
        tracing::info!(target: "xend::api", %method, %path, status, ms = secs * 1e3, "request");
    }
    if let Ok(mut m) = st.metrics.lock() {
        let e = m.by_route.entry((method, route, status)).or_default();
        e.0 += 1;
        e.1 += secs;
    }
    resp
}

/// The route template of a path, for metric labels (`/domains/web/pause` ->
/// `/domains/{id}/pause`).
fn route_label(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').collect();
    let mut out = Vec::with_capacity(parts.len());
    for (i, p) in parts.iter().enumerate() {
        if i == 2 && matches!(parts.get(1), Some(&"domains") | Some(&"managed")) {
            out.push("{id}");
        } else {
            out.push(p);
        }
    }
    let r = out.join("/");
    if r.len() > 64 {
        "other".into()
    } else {
        r
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// Body of `POST /domains` and `POST /managed`: an xl.cfg text (with optional
/// `key=value` overrides) or a JSON spec.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    config: Option<String>,
    #[serde(default)]
    overrides: Vec<String>,
    spec: Option<DomainSpec>,
}

fn spec_of(body: &Bytes) -> ApiResult<(DomainSpec, Vec<String>)> {
    let b: CreateBody = parse_json(body)?;
    match (b.config, b.spec) {
        (Some(text), None) => DomainSpec::with_overrides(&text, &b.overrides)
            .map_err(|e| ApiError::invalid_config(e.to_string())),
        (None, Some(spec)) => {
            spec.validate()
                .map_err(|e| ApiError::invalid_config(e.to_string()))?;
            Ok((spec, Vec::new()))
        }
        _ => Err(ApiError::bad_request(
            "give exactly one of \"config\" (xl.cfg text) or \"spec\" (JSON)",
        )),
    }
}

async fn list(State(st): State<AppState>) -> ApiResult<impl IntoResponse> {
    Ok(Json(st.xend.list()?))
}

async fn create(State(st): State<AppState>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let (spec, warnings) = spec_of(&body)?;
    for w in &warnings {
        tracing::warn!("config: {w}");
    }
    let info = st.xend.create(spec, false).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"domain": info, "warnings": warnings})),
    ))
}

async fn info(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<impl IntoResponse> {
    Ok(Json(st.xend.info(&id)?))
}

async fn destroy(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    st.xend.destroy(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct ShutdownQuery {
    /// Seconds to wait for the guest (absent: return at once).
    wait: Option<f64>,
    /// Destroy the domain if it does not shut down in time.
    #[serde(default)]
    force: bool,
}

fn wait_of(q: &ShutdownQuery) -> ApiResult<Option<Duration>> {
    match q.wait {
        None => Ok(None),
        Some(w) if w.is_finite() && (0.0..=3600.0).contains(&w) => {
            Ok(Some(Duration::from_secs_f64(w)))
        }
        Some(_) => Err(ApiError::bad_request(
            "wait must be between 0 and 3600 seconds",
        )),
    }
}

async fn shutdown(
    State(st): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<ShutdownQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let waited = q.wait.is_some();
    let info = st.xend.shutdown(&id, false, wait_of(&q)?, q.force).await?;
    Ok((
        if waited {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        },
        Json(info),
    ))
}

async fn reboot(
    State(st): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<ShutdownQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let info = st.xend.shutdown(&id, true, wait_of(&q)?, q.force).await?;
    Ok((StatusCode::ACCEPTED, Json(info)))
}

async fn pause(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<impl IntoResponse> {
    Ok(Json(st.xend.pause(&id, true).await?))
}

async fn unpause(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(st.xend.pause(&id, false).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenameBody {
    name: String,
}

async fn rename(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let b: RenameBody = parse_json(&body)?;
    Ok(Json(st.xend.rename(&id, &b.name).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VcpusBody {
    count: u32,
}

async fn vcpus(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let b: VcpusBody = parse_json(&body)?;
    Ok(Json(st.xend.vcpu_set(&id, b.count).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemoryBody {
    mib: u64,
}

async fn memory(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let b: MemoryBody = parse_json(&body)?;
    Ok(Json(st.xend.mem_set(&id, b.mib, false).await?))
}

async fn maxmem(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let b: MemoryBody = parse_json(&body)?;
    Ok(Json(st.xend.mem_set(&id, b.mib, true).await?))
}

async fn uptime(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let i = st.xend.info(&id)?;
    Ok(Json(
        serde_json::json!({"name": i.name, "domid": i.domid, "uptime_s": i.uptime_s}),
    ))
}

async fn console(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        st.xend.console(&id)?,
    ))
}

async fn console_input(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("console input must be UTF-8 text"))?;
    if text.len() > 2048 {
        return Err(ApiError::bad_request(
            "console input is limited to 2048 bytes per request",
        ));
    }
    st.xend.console_input(&id, text).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn dmesg(State(st): State<AppState>) -> ApiResult<impl IntoResponse> {
    let mut newest: Option<(std::time::SystemTime, std::path::PathBuf)> = None;
    if let Ok(rd) = std::fs::read_dir(&st.log_dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("xend.log") {
                let m = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                if newest.as_ref().is_none_or(|(t, _)| m > *t) {
                    newest = Some((m, e.path()));
                }
            }
        }
    }
    let text = newest
        .and_then(|(_, p)| std::fs::read(p).ok())
        .unwrap_or_default();
    let tail = text.len().saturating_sub(64 * 1024);
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        String::from_utf8_lossy(&text[tail..]).into_owned(),
    ))
}

async fn host_info(State(st): State<AppState>) -> ApiResult<impl IntoResponse> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |k: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kib| kib / 1024)
    };
    let doms = st.xend.snapshot();
    Ok(Json(serde_json::json!({
        "xend_version": env!("CARGO_PKG_VERSION"),
        "xen_version": "4.19 (rxen)",
        "host": {
            "nr_cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "total_memory_mib": field("MemTotal:"),
            "free_memory_mib": field("MemAvailable:"),
        },
        "domains": doms.len(),
        "domain_memory_mib": doms.iter().map(|d| d.memory_mib).sum::<u64>(),
    })))
}

async fn new_managed(State(st): State<AppState>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let (spec, warnings) = spec_of(&body)?;
    st.xend.new_managed(&spec)?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"name": spec.name, "warnings": warnings})),
    ))
}

async fn start_managed(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(st.xend.start_managed(&name).await?),
    ))
}

async fn delete_managed(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    st.xend.delete_managed(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn events(State(st): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = st.xend.events.subscribe();
    let stream = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|m| async move {
        m.ok()
            .map(|v| Ok(Event::default().event("domain").data(v.to_string())))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    use std::fmt::Write;
    let doms = st.xend.snapshot();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP xend_domains Domains by state.\n# TYPE xend_domains gauge"
    );
    let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
    for s in [
        "creating",
        "running",
        "paused",
        "shutting_down",
        "destroying",
        "crashed",
        "shutdown",
    ] {
        by_state.insert(s.into(), 0);
    }
    for d in &doms {
        *by_state.entry(d.state.clone()).or_default() += 1;
    }
    for (s, n) in &by_state {
        let _ = writeln!(out, "xend_domains{{state=\"{s}\"}} {n}");
    }
    let _ = writeln!(out, "# HELP xend_domain_cpu_seconds_total Guest CPU time of all vCPUs.\n# TYPE xend_domain_cpu_seconds_total counter");
    for d in &doms {
        let _ = writeln!(
            out,
            "xend_domain_cpu_seconds_total{{domain=\"{}\",domid=\"{}\"}} {}",
            escape(&d.name),
            d.domid.unwrap_or(0),
            d.cpu_time_s
        );
    }
    let _ = writeln!(out, "# HELP xend_domain_vcpu_seconds_total Guest CPU time of each vCPU.\n# TYPE xend_domain_vcpu_seconds_total counter");
    for d in &doms {
        for (i, t) in d.vcpu_time_s.iter().enumerate() {
            let _ = writeln!(
                out,
                "xend_domain_vcpu_seconds_total{{domain=\"{}\",domid=\"{}\",vcpu=\"{i}\"}} {t}",
                escape(&d.name),
                d.domid.unwrap_or(0)
            );
        }
    }
    let _ = writeln!(out, "# HELP xend_domain_memory_bytes Memory target of the domain.\n# TYPE xend_domain_memory_bytes gauge");
    for d in &doms {
        let _ = writeln!(
            out,
            "xend_domain_memory_bytes{{domain=\"{}\",domid=\"{}\"}} {}",
            escape(&d.name),
            d.domid.unwrap_or(0),
            d.memory_mib * 1024 * 1024
        );
    }
    let _ = writeln!(
        out,
        "# HELP xend_domain_vcpus Online vCPUs.\n# TYPE xend_domain_vcpus gauge"
    );
    for d in &doms {
        let _ = writeln!(
            out,
            "xend_domain_vcpus{{domain=\"{}\",domid=\"{}\"}} {}",
            escape(&d.name),
            d.domid.unwrap_or(0),
            d.vcpus
        );
    }
    let _ = writeln!(out, "# HELP xend_domain_hypercalls_total Hypercalls made by the domain.\n# TYPE xend_domain_hypercalls_total counter");
    for d in &doms {
        let _ = writeln!(
            out,
            "xend_domain_hypercalls_total{{domain=\"{}\",domid=\"{}\"}} {}",
            escape(&d.name),
            d.domid.unwrap_or(0),
            d.hypercalls
        );
    }
    let _ = writeln!(out, "# HELP xend_api_requests_total API requests by route and status.\n# TYPE xend_api_requests_total counter");
    let _ = writeln!(out, "# HELP xend_api_request_seconds_sum Total time spent answering, by route and status.\n# TYPE xend_api_request_seconds_sum counter");
    if let Ok(m) = st.metrics.lock() {
        for ((method, route, status), (n, secs)) in &m.by_route {
            let labels = format!(
                "method=\"{method}\",route=\"{}\",status=\"{status}\"",
                escape(route)
            );
            let _ = writeln!(out, "xend_api_requests_total{{{labels}}} {n}");
            let _ = writeln!(out, "xend_api_request_seconds_sum{{{labels}}} {secs}");
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
