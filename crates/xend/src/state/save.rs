//! `xm save` and `xm restore`: the VMM writes the image (Xen's migration stream v2,
//! `docs/migration.md`); xend puts the domain's configuration in the image's xl
//! header and, at restore, checks the whole image before anything is created, then
//! creates the domain from it (a new domid, the same name, UUID and config; xenstore
//! entries written anew and the rings reintroduced as at any create).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rxen_xend_api::{DomainInfo, DomainState, SaveReply};
use rxen_xlcfg::DomainSpec;
use serde::{Deserialize, Serialize};

use super::create::CreateOptions;
use super::{DomainError, DomainResult, Xend};
use crate::vmm;

/// How long a VMM may take to write a save image.
const SAVE_TIMEOUT: Duration = Duration::from_secs(300);

/// What xend keeps in the image's xl header (JSON).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SavedConfig {
    /// `"rxen-xend"`, so that an xl image's config is not taken for ours.
    pub(super) toolstack: String,
    pub(super) uuid: String,
    pub(super) spec: DomainSpec,
    /// The guest took part in Xen's suspend protocol (it advertised
    /// `control/feature-suspend`, which Linux writes once at boot, never again after
    /// a resume): the domain made from the image advertises it again, so that its
    /// next save or migration asks the guest to suspend once more. Absent in images
    /// of older xends (false).
    #[serde(default)]
    pub(super) guest_suspends: bool,
}

pub(super) const TOOLSTACK: &str = "rxen-xend";

fn absolute(path: &str) -> DomainResult<PathBuf> {
    let p = PathBuf::from(path);
    if !p.is_absolute() {
        return Err(DomainError::BadRequest(format!(
            "{path:?} is a relative path: xend needs an absolute one (xm sends one)"
        )));
    }
    Ok(p)
}

/// Reads the whole image, checking every record, and returns its configuration (the
/// VMM's state document, with the connected devices the restored VMM reconnects and
/// writes the frontend nodes of, must be there).
fn check_image(path: &Path) -> DomainResult<SavedConfig> {
    let file = std::fs::File::open(path)
        .map_err(|e| DomainError::BadImage(format!("{}: {e}", path.display())))?;
    if !file.metadata().map(|m| m.is_file()).unwrap_or(false) {
        return Err(DomainError::BadImage(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let bad = |e: rxen_migration::StreamError| DomainError::BadImage(e.to_string());
    let mut r = rxen_migration::ImageReader::open(std::io::BufReader::with_capacity(1 << 20, file))
        .map_err(bad)?;
    let config: SavedConfig = serde_json::from_slice(r.config())
        .map_err(|e| DomainError::BadImage(format!("its domain configuration: {e}")))?;
    if config.toolstack != TOOLSTACK {
        return Err(DomainError::BadImage(format!(
            "saved by {:?}, not by rxen's xend",
            config.toolstack
        )));
    }
    let mut state = false;
    while let Some(item) = r.next_item().map_err(bad)? {
        state |= matches!(item, rxen_migration::ImageItem::RxenState(_));
    }
    if !state {
        return Err(DomainError::BadImage("it has no rxen VMM state".into()));
    }
    Ok(config)
}

impl Xend {
    /// Saves domain `id` to `path`; without `keep_running` the domain is destroyed
    /// once the image is complete.
    pub async fn save(
        self: &Arc<Self>,
        id: &str,
        path: &str,
        keep_running: bool,
    ) -> DomainResult<SaveReply> {
        let path = absolute(path)?;
        let domid = self.resolve(id)?;
        let d = self.get(domid)?;
        if !matches!(d.state, DomainState::Running | DomainState::Paused) {
            return Err(DomainError::WrongState(d.state));
        }
        self.emit(
            Some(domid),
            &d.name,
            "saving",
            serde_json::json!({"path": path}),
        );
        // Xen's suspend protocol for a guest that advertises it; others are saved
        // transparently.
        let guest_suspended = self.suspend_guest(domid).await?;
        let config = serde_json::to_string(&SavedConfig {
            toolstack: TOOLSTACK.into(),
            uuid: d.uuid.clone(),
            spec: d.spec.clone(),
            guest_suspends: guest_suspended,
        })
        .map_err(|e| DomainError::Internal(format!("encoding the config: {e}")))?;
        let (pages, paused_ms) = vmm::save(
            &self.files(domid).control(),
            &path,
            config,
            keep_running,
            SAVE_TIMEOUT,
        )
        .await
        .map_err(|e| match e {
            vmm::ControlError::Refused { message, .. } => DomainError::SaveFailed(message),
            other => DomainError::Internal(other.to_string()),
        })?;
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        tracing::info!(domid, name = d.name, pages, paused_ms, guest_suspended, path = %path.display(), "saved");
        self.emit(
            Some(domid),
            &d.name,
            "saved",
            serde_json::json!({"path": path, "pages": pages, "paused_ms": paused_ms, "keep_running": keep_running, "guest_suspended": guest_suspended}),
        );
        if !keep_running {
            self.destroy(&domid.to_string()).await?;
        }
        Ok(SaveReply {
            path: path.to_string_lossy().into_owned(),
            pages,
            bytes,
            paused_ms,
            kept_running: keep_running,
        })
    }

    /// Restores the domain saved at `path` under a new domid.
    pub async fn restore(self: &Arc<Self>, path: &str, paused: bool) -> DomainResult<DomainInfo> {
        let path = absolute(path)?;
        let p = path.clone();
        let config = tokio::task::spawn_blocking(move || check_image(&p))
            .await
            .map_err(|e| DomainError::Internal(format!("image check task: {e}")))??;
        let mut spec = config.spec;
        spec.uuid = Some(config.uuid);
        let opts = CreateOptions {
            paused,
            restore: Some(path),
            incoming: None,
        };
        let info = self.create(spec, false, opts).await?;
        if let (true, Some(domid)) = (config.guest_suspends, info.domid) {
            self.advertise_suspend_again(domid).await?;
        }
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DomainSpec {
        DomainSpec::from_xl("name = \"g\"\nkernel = \"/k\"\nmemory = 16\n")
            .expect("a valid config")
            .0
    }

    /// An image of an older xend has no `guest_suspends`: read as a guest that does
    /// not take part in the suspend protocol.
    #[test]
    fn a_header_without_guest_suspends_reads_as_false() {
        let old = serde_json::json!({"toolstack": TOOLSTACK, "uuid": "u", "spec": spec()});
        let c: SavedConfig = serde_json::from_value(old).expect("an old header");
        assert!(!c.guest_suspends);
    }

    #[test]
    fn guest_suspends_round_trips() {
        let c = SavedConfig {
            toolstack: TOOLSTACK.into(),
            uuid: "u".into(),
            spec: spec(),
            guest_suspends: true,
        };
        let back: SavedConfig =
            serde_json::from_str(&serde_json::to_string(&c).expect("encodes")).expect("decodes");
        assert!(back.guest_suspends);
    }
}
