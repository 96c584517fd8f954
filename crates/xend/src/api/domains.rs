//! Domain and managed-domain endpoints.

use std::path::Path as FsPath;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use rxen_xend_api::{
    CreateReply, CreateRequest, DiskAttachRequest, DiskDetachQuery, ManagedReply, MemoryRequest,
    MigrateRequest, NicAttachRequest, NicDetachQuery, RenameRequest, RestoreRequest, SaveRequest,
    ShutdownQuery, UptimeReply, VcpusRequest,
};
use rxen_xlcfg::DomainSpec;

use super::{parse_json, AppState};
use crate::error::{ApiError, ApiResult};
use crate::state::create::{unapplied_settings, CreateOptions};

/// Makes relative `kernel=` and `ramdisk=` paths absolute against the config file's
/// directory, as xl does. Without a directory (a JSON spec, or a client that sent
/// none) a relative path is refused: xend's own directory means nothing to the client.
fn resolve_kernel(spec: &mut DomainSpec, base_dir: Option<&str>) -> ApiResult<()> {
    for (key, path) in [("kernel", &mut spec.kernel), ("ramdisk", &mut spec.ramdisk)] {
        let Some(k) = path.as_ref() else { continue };
        if FsPath::new(k).is_absolute() {
            continue;
        }
        match base_dir {
            Some(dir) if FsPath::new(dir).is_absolute() => {
                *path = Some(FsPath::new(dir).join(k).to_string_lossy().into_owned());
            }
            Some(dir) => {
                return Err(ApiError::bad_request(format!(
                    "base_dir {dir:?} must be an absolute path"
                )))
            }
            None => {
                return Err(ApiError::invalid_config(format!(
                    "{key} {k:?} is a relative path: give an absolute path, or send base_dir (xm sends the config file's directory)"
                )))
            }
        }
    }
    Ok(())
}

/// The spec of a create or managed request, with the warnings to give back.
fn spec_of(body: &[u8]) -> ApiResult<(DomainSpec, Vec<String>, CreateRequest)> {
    let req: CreateRequest = parse_json(body)?;
    let (mut spec, mut warnings) = match (&req.config, &req.spec) {
        (Some(text), None) => DomainSpec::with_overrides(text, &req.overrides)
            .map_err(|e| ApiError::invalid_config(e.to_string()))?,
        (None, Some(spec)) => {
            if !req.overrides.is_empty() {
                return Err(ApiError::bad_request(
                    "overrides apply to \"config\" only; change the \"spec\" instead",
                ));
            }
            spec.validate()
                .map_err(|e| ApiError::invalid_config(e.to_string()))?;
            (spec.clone(), Vec::new())
        }
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of \"config\" (xl.cfg text) or \"spec\" (JSON)",
            ))
        }
    };
    resolve_kernel(&mut spec, req.base_dir.as_deref())?;
    warnings.extend(unapplied_settings(&spec));
    Ok((spec, warnings, req))
}

pub async fn list(State(st): State<AppState>) -> ApiResult<impl IntoResponse> {
    Ok(Json(st.xend.list()?))
}

pub async fn create(State(st): State<AppState>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let (spec, warnings, req) = spec_of(&body)?;
    for w in &warnings {
        tracing::warn!(name = spec.name, "config: {w}");
    }
    let opts = CreateOptions {
        paused: req.paused,
        ..Default::default()
    };
    let domain = st.xend.create(spec, false, opts).await?;
    Ok((StatusCode::CREATED, Json(CreateReply { domain, warnings })))
}

pub async fn info(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(st.xend.info(&id)?))
}

pub async fn destroy(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    st.xend.destroy(&id).await?;
    Ok(StatusCode::NO_CONTENT)
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

type ShutdownParams = Result<Query<ShutdownQuery>, axum::extract::rejection::QueryRejection>;

async fn shutdown_or_reboot(
    st: AppState,
    id: String,
    q: ShutdownParams,
    reboot: bool,
) -> ApiResult<impl IntoResponse> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let waited = q.wait.is_some();
    let info = st.xend.shutdown(&id, reboot, wait_of(&q)?, q.force).await?;
    let status = if waited && !reboot {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(info)))
}

pub async fn shutdown(
    State(st): State<AppState>,
    Path(id): Path<String>,
    q: ShutdownParams,
) -> ApiResult<impl IntoResponse> {
    shutdown_or_reboot(st, id, q, false).await
}

pub async fn reboot(
    State(st): State<AppState>,
    Path(id): Path<String>,
    q: ShutdownParams,
) -> ApiResult<impl IntoResponse> {
    shutdown_or_reboot(st, id, q, true).await
}

pub async fn pause(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(st.xend.pause(&id, true).await?))
}

pub async fn unpause(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(st.xend.pause(&id, false).await?))
}

/// `xm save [-c]`: the image is written by the domain's VMM.
pub async fn save(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let b: SaveRequest = parse_json(&body)?;
    Ok(Json(st.xend.save(&id, &b.path, b.keep_running).await?))
}

/// `xm migrate [--live]`: the domain's VMM sends it to the target's relocation
/// server; the domain is destroyed here once it runs there.
pub async fn migrate(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let b: MigrateRequest = parse_json(&body)?;
    Ok(Json(st.xend.migrate(&id, &b).await?))
}

/// `xm restore`: the whole image is checked before anything is created.
pub async fn restore(State(st): State<AppState>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let b: RestoreRequest = parse_json(&body)?;
    let domain = st.xend.restore(&b.path, b.paused).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreateReply {
            domain,
            warnings: Vec::new(),
        }),
    ))
}

pub async fn rename(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let b: RenameRequest = parse_json(&body)?;
    Ok(Json(st.xend.rename(&id, &b.name).await?))
}

pub async fn vcpus(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let b: VcpusRequest = parse_json(&body)?;
    Ok(Json(st.xend.vcpu_set(&id, b.count).await?))
}

pub async fn memory(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let b: MemoryRequest = parse_json(&body)?;
    Ok(Json(st.xend.mem_set(&id, b.mib, false).await?))
}

pub async fn maxmem(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let b: MemoryRequest = parse_json(&body)?;
    Ok(Json(st.xend.mem_set(&id, b.mib, true).await?))
}

pub async fn uptime(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let i = st.xend.info(&id)?;
    Ok(Json(UptimeReply {
        name: i.name,
        domid: i.domid,
        uptime_s: i.uptime_s,
    }))
}

pub async fn console(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        st.xend.console(&id)?,
    ))
}

pub async fn console_input(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("console input must be UTF-8 text"))?;
    if text.len() > rxen_vmm_api::MAX_CONSOLE_INPUT {
        return Err(ApiError::bad_request(format!(
            "console input is limited to {} bytes per request",
            rxen_vmm_api::MAX_CONSOLE_INPUT
        )));
    }
    st.xend.console_input(&id, text).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn disks(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(st.xend.disks(&id).await?))
}

pub async fn attach_disk(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let b: DiskAttachRequest = parse_json(&body)?;
    let disk = st.xend.attach_disk(&id, &b.disk).await?;
    Ok((StatusCode::CREATED, Json(disk)))
}

/// The longest a detach may wait for the guest, seconds.
const MAX_DETACH_WAIT_S: f64 = 600.0;

fn detach_wait(q: &DiskDetachQuery) -> ApiResult<Duration> {
    match q.wait {
        None => Ok(crate::state::disks::DETACH_WAIT),
        Some(w) if w.is_finite() && (0.0..=MAX_DETACH_WAIT_S).contains(&w) => {
            Ok(Duration::from_secs_f64(w))
        }
        Some(_) => Err(ApiError::bad_request(format!(
            "wait must be between 0 and {MAX_DETACH_WAIT_S} seconds"
        ))),
    }
}

pub async fn detach_disk(
    State(st): State<AppState>,
    Path((id, dev)): Path<(String, String)>,
    q: Result<Query<DiskDetachQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let wait = detach_wait(&q)?;
    Ok(Json(st.xend.detach_disk(&id, &dev, q.force, wait).await?))
}

pub async fn nics(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(st.xend.nics(&id).await?))
}

pub async fn attach_nic(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let b: NicAttachRequest = parse_json(&body)?;
    let nic = st.xend.attach_nic(&id, &b.nic).await?;
    Ok((StatusCode::CREATED, Json(nic)))
}

pub async fn detach_nic(
    State(st): State<AppState>,
    Path((id, dev)): Path<(String, String)>,
    q: Result<Query<NicDetachQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let wait = detach_wait(&q)?;
    Ok(Json(st.xend.detach_nic(&id, &dev, q.force, wait).await?))
}

pub async fn new_managed(State(st): State<AppState>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let (spec, warnings, _) = spec_of(&body)?;
    st.xend.new_managed(&spec)?;
    Ok((
        StatusCode::CREATED,
        Json(ManagedReply {
            name: spec.name,
            warnings,
        }),
    ))
}

pub async fn start_managed(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(st.xend.start_managed(&name).await?),
    ))
}

pub async fn delete_managed(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    st.xend.delete_managed(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kernel: &str) -> DomainSpec {
        DomainSpec::from_xl(&format!("name='a'\nkernel='{kernel}'"))
            .unwrap()
            .0
    }

    #[test]
    fn relative_kernels_resolve_against_the_config_directory() {
        let mut s = spec("guests/hello");
        resolve_kernel(&mut s, Some("/etc/xen")).unwrap();
        assert_eq!(s.kernel.as_deref(), Some("/etc/xen/guests/hello"));
        let mut s = spec("/abs/k");
        resolve_kernel(&mut s, Some("/etc/xen")).unwrap();
        assert_eq!(s.kernel.as_deref(), Some("/abs/k"));
        assert!(resolve_kernel(&mut spec("k"), None).is_err());
        assert!(resolve_kernel(&mut spec("k"), Some("rel")).is_err());
        // ramdisk= follows the same rule.
        let mut s = DomainSpec::from_xl("name='a'\nkernel='/k'\nramdisk='initrd.img'")
            .unwrap()
            .0;
        resolve_kernel(&mut s, Some("/etc/xen")).unwrap();
        assert_eq!(s.ramdisk.as_deref(), Some("/etc/xen/initrd.img"));
        s.ramdisk = Some("initrd.img".into());
        let e = resolve_kernel(&mut s, None).unwrap_err();
        assert!(format!("{e:?}").contains("ramdisk"), "{e:?}");
    }

    #[test]
    fn spec_and_config_forms_agree_and_warn_about_devices() {
        let (a, _, _) = spec_of(br#"{"spec":{"name":"a"}}"#).unwrap();
        let (b, _, _) = spec_of(br#"{"config":"name='a'"}"#).unwrap();
        assert_eq!(a, b);
        let (_, w, _) = spec_of(br#"{"config":"name='a'\nvif=['bridge=xenbr0']"}"#).unwrap();
        assert!(w.is_empty(), "{w:?}");
        let (_, w, _) =
            spec_of(br#"{"config":"name='a'\nvif=['bridge=xenbr0,rate=10Mb/s']"}"#).unwrap();
        assert!(
            w.iter()
                .any(|w| w.contains("rate is accepted but not applied")),
            "{w:?}"
        );
        assert!(spec_of(br#"{"config":"name='a'","spec":{"name":"a"}}"#).is_err());
    }
}
