//! Host-level endpoints: health, `xm info`, xend's log, the event stream, metrics.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::Json;
use futures_util::stream::Stream;
use futures_util::StreamExt;

use super::AppState;
use crate::error::ApiResult;

pub async fn health() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

pub async fn info(State(st): State<AppState>) -> impl IntoResponse {
    Json(st.xend.host_info())
}

pub async fn dmesg(State(st): State<AppState>) -> ApiResult<impl IntoResponse> {
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

pub async fn events(
    State(st): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = st.xend.events.subscribe();
    let stream = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|m| async move {
        let ev = m.ok()?;
        let data = serde_json::to_string(&ev).ok()?;
        Some(Ok(Event::default().event("domain").data(data)))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

pub async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    let doms = st.xend.snapshot();
    let text = match st.metrics.lock() {
        Ok(m) => super::metrics::render(&doms, &m),
        Err(e) => super::metrics::render(&doms, &e.into_inner()),
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
