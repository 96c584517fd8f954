//! The HTTP JSON API (documented in `docs/openapi.json`, served at `/openapi.json`):
//! routing, authentication, request logging and metrics. Handlers live in
//! [`domains`] and [`host`]; request and reply bodies are the types of
//! `rxen-xend-api`.

mod domains;
mod host;
pub mod metrics;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::error::{ApiError, ApiResult};
use crate::state::Xend;

pub use metrics::ApiMetrics;

/// The OpenAPI 3 document of this API.
pub const OPENAPI: &str = include_str!("../../../../docs/openapi.json");

#[derive(Clone)]
pub struct AppState {
    pub xend: Arc<Xend>,
    pub metrics: Arc<Mutex<ApiMetrics>>,
    pub auth_token: Option<String>,
    pub log_dir: std::path::PathBuf,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(host::health))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/metrics", get(host::metrics))
        .route("/events", get(host::events))
        .route("/dmesg", get(host::dmesg))
        .route("/info", get(host::info))
        .route("/domains", get(domains::list).post(domains::create))
        .route("/domains/{id}", get(domains::info).delete(domains::destroy))
        .route("/domains/{id}/shutdown", post(domains::shutdown))
        .route("/domains/{id}/reboot", post(domains::reboot))
        .route("/domains/{id}/pause", post(domains::pause))
        .route("/domains/{id}/unpause", post(domains::unpause))
        .route("/domains/{id}/rename", post(domains::rename))
        .route("/domains/{id}/vcpus", post(domains::vcpus))
        .route("/domains/{id}/memory", post(domains::memory))
        .route("/domains/{id}/maxmem", post(domains::maxmem))
        .route("/domains/{id}/uptime", get(domains::uptime))
        .route("/domains/{id}/save", post(domains::save))
        .route("/domains/{id}/migrate", post(domains::migrate))
        .route("/restore", post(domains::restore))
        .route(
            "/domains/{id}/console",
            get(domains::console).post(domains::console_input),
        )
        .route(
            "/domains/{id}/disks",
            get(domains::disks).post(domains::attach_disk),
        )
        .route(
            "/domains/{id}/disks/{dev}",
            axum::routing::delete(domains::detach_disk),
        )
        .route(
            "/domains/{id}/nics",
            get(domains::nics).post(domains::attach_nic),
        )
        .route(
            "/domains/{id}/nics/{dev}",
            axum::routing::delete(domains::detach_nic),
        )
        .route("/managed", post(domains::new_managed))
        .route("/managed/{name}/start", post(domains::start_managed))
        .route(
            "/managed/{name}",
            axum::routing::delete(domains::delete_managed),
        )
        .route_layer(axum::middleware::from_fn(tag_route))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed here",
            )
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(state)
}

/// The most of a non-JSON error body kept as the message of its JSON form.
const MAX_ERROR_TEXT: usize = 4096;

/// Makes every error reply the API's `ErrorReply` JSON, including what axum answers
/// by itself (413 body too large, 415, 400/422 extractor rejections, ...): an error
/// whose body is not JSON is rewritten with a code for its status and its text as
/// the message.
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, MAX_ERROR_TEXT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_string()
    } else {
        text
    };
    let mut out = ApiError::new(status, error_code(status), message).into_response();
    // Keep what the original reply said beyond its body (e.g. `Allow`, `WWW-Authenticate`).
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// The machine code of an error status that no handler chose a code for.
fn error_code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::NOT_FOUND => "no_route",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
        s if s.is_server_error() => "internal",
        _ => "http_error",
    }
}

/// The route template a request matched, carried on its response to [`observe`].
#[derive(Clone)]
struct RouteLabel(String);

/// Runs after routing (a route layer), where the matched template is known.
async fn tag_route(matched: Option<MatchedPath>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    if let Some(m) = matched {
        resp.extensions_mut()
            .insert(RouteLabel(m.as_str().to_string()));
    }
    resp
}

/// Authenticates (when a token is set), logs every request with its outcome and
/// records its latency under its route template.
async fn observe(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let method = metrics::method_label(req.method());
    let path = req.uri().path().to_string();
    if let Some(token) = &st.auth_token {
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| token_matches(t.as_bytes(), token.as_bytes()));
        if !ok && path != "/health" {
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
    let route = resp
        .extensions()
        .get::<RouteLabel>()
        .map_or("unmatched", |r| r.0.as_str());
    if status >= 500 {
        tracing::error!(target: "xend::api", %method, %path, status, ms = secs * 1e3, "request failed");
    } else if status >= 400 {
        tracing::warn!(target: "xend::api", %method, %path, status, ms = secs * 1e3, "request refused");
    } else {
        tracing::info!(target: "xend::api", %method, %path, status, ms = secs * 1e3, "request");
    }
    if let Ok(mut m) = st.metrics.lock() {
        m.record(method, route, status, secs);
    }
    resp
}

/// Compares a presented token with the expected one in time that depends only on
/// their lengths, not on where they first differ.
pub fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    let diff = given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | std::hint::black_box(a ^ b));
    std::hint::black_box(diff) == 0
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}
