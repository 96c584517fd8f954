//! `xm migrate [--live]` (the sending side) and what the relocation server does with
//! a connection it accepted (the receiving side), `docs/migration.md`.
//!
//! Sending: xend hands the target's address, its relocation token and the domain's
//! configuration to the domain's VMM (`Request::Migrate`), which connects, streams
//! the image (pre-copy rounds with `--live`) and waits for the target's `running`.
//! Only then is the domain destroyed here; any failure leaves it running.
//!
//! Receiving: after the token was checked ([`crate::relocation`]), the name and UUID
//! must be free, and so must a fixed TAP name (`vifname=`) of its vifs; the
//! connection is answered `ready` and handed to a new VMM as its
//! standard input (`xen-vmm run --restore -`), created as `xm restore` would (a new
//! domid, the same name, UUID and config). Its boot report (the domain runs) is what
//! the sender waits for. The VMM brings the stream's connected disks and vifs back
//! connected itself (it writes their frontend nodes from the image's device state):
//! xend never sees that state. Disks are the same paths (shared storage); vifs get
//! TAPs of their own here (`vif<newdomid>.<devid>` by default).

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use rxen_vmm_api::relocation::{Answer, Hello};
use rxen_xend_api::{DomainState, MigrateReply, MigrateRequest, RELOCATION_PORT};

use super::create::CreateOptions;
use super::save::{SavedConfig, TOOLSTACK};
use super::{lock, DomainError, DomainResult, Xend};
use crate::vmm;

/// How long a VMM may take to send its domain (all rounds and the target's start).
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(900);

/// `host:port` of a migration target (`[v6]:port` for IPv6 literals).
fn target_address(host: &str, port: Option<u16>) -> DomainResult<String> {
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(DomainError::BadRequest(format!("{host:?} is not a host")));
    }
    let port = port.unwrap_or(RELOCATION_PORT);
    Ok(if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// The `error` code of the target's refusal for `e` (the API's codes).
fn refusal(e: DomainError) -> Answer {
    let api = crate::error::ApiError::from(e);
    Answer::Refused {
        error: api.code.to_string(),
        message: api.message,
    }
}

impl Xend {
    /// Migrates domain `id` to `req`'s relocation server; see the module doc.
    pub async fn migrate(
        self: &Arc<Self>,
        id: &str,
        req: &MigrateRequest,
    ) -> DomainResult<MigrateReply> {
        let target = target_address(&req.host, req.port)?;
        let token = self.cfg.relocation_token.clone().ok_or_else(|| {
            DomainError::Refused(
                "this xend has no relocation token (--relocation-token-file)".into(),
            )
        })?;
        let domid = self.resolve(id)?;
        let d = self.get(domid)?;
        if !matches!(d.state, DomainState::Running | DomainState::Paused) {
            return Err(DomainError::WrongState(d.state));
        }
        tracing::info!(domid, name = d.name, target, live = req.live, "migrating");
        self.emit(
            Some(domid),
            &d.name,
            "migrating",
            serde_json::json!({"target": target, "live": req.live}),
        );
        // A guest that takes part in Xen's suspend protocol is asked to suspend once
        // the pre-copy is over, as Xen does (the VMM says when): in the target's new
        // domain it binds its event channels, watches and devices again (a
        // transparent migration would leave it without its xenstore watches there).
        // If the migration fails, the source VMM's unpause cancels the suspend.
        let guest_suspended = self.guest_advertises_suspend(domid).await?;
        let config = serde_json::to_string(&SavedConfig {
            toolstack: TOOLSTACK.into(),
            uuid: d.uuid.clone(),
            spec: d.spec.clone(),
            guest_suspends: guest_suspended,
        })
        .map_err(|e| DomainError::Internal(format!("encoding the config: {e}")))?;
        let sock = self.cfg.xenstored_socket.clone();
        // A short write on xenstored's local socket, from the task that reads the
        // VMM's lines (the VMM waits for the suspend meanwhile).
        let mut ask = || {
            tracing::info!(domid, "asking the guest to suspend for the stop-and-copy");
            if let Err(e) = crate::xs::write(&sock, domid, "control/shutdown", "suspend") {
                tracing::warn!(domid, "control/shutdown: {e}");
            }
        };
        let result = vmm::migrate(
            &self.files(domid).control(),
            target.clone(),
            token,
            config,
            req.live,
            MIGRATE_TIMEOUT,
            |round, pages, dirty| {
                tracing::info!(domid, name = d.name, round, pages, dirty, "migration round");
                self.emit(
                    Some(domid),
                    &d.name,
                    "migration_progress",
                    serde_json::json!({"round": round, "pages": pages, "dirty": dirty}),
                );
            },
            if guest_suspended {
                Some(&mut ask)
            } else {
                None
            },
        )
        .await;
        if result.is_err() && guest_suspended {
            // Withdrawn, as after a save's timeout; a guest that suspended was
            // resumed (cancelled) by the VMM's unpause.
            let _ = self.write_control_shutdown(domid, "").await;
        }
        let figures = result.map_err(|e| {
            let message = match e {
                vmm::ControlError::Refused { message, .. } => message,
                other => other.to_string(),
            };
            tracing::warn!(domid, name = d.name, target, "migration failed: {message}");
            self.emit(
                Some(domid),
                &d.name,
                "migration_failed",
                serde_json::json!({"target": target, "message": message}),
            );
            DomainError::MigrateFailed(message)
        })?;
        let reply = MigrateReply {
            target: target.clone(),
            target_domid: figures.target_domid,
            live: req.live,
            rounds: figures.pages_per_round.len() as u32,
            pages_per_round: figures.pages_per_round,
            pages_sent: figures.pages_sent,
            guest_pages: figures.guest_pages,
            downtime_ms: figures.downtime_ms,
            stop_and_copy_ms: figures.stop_and_copy_ms,
            total_ms: figures.total_ms,
        };
        tracing::info!(
            domid,
            name = d.name,
            target,
            rounds = reply.rounds,
            pages_sent = reply.pages_sent,
            guest_pages = reply.guest_pages,
            downtime_ms = reply.downtime_ms,
            stop_and_copy_ms = reply.stop_and_copy_ms,
            total_ms = reply.total_ms,
            "migrated"
        );
        self.emit(
            Some(domid),
            &d.name,
            "migrated",
            serde_json::to_value(&reply).unwrap_or_default(),
        );
        // The target runs the domain: the paused one here goes.
        self.destroy(&domid.to_string()).await?;
        Ok(reply)
    }

    /// Checks an incoming migration's `hello` (its token was checked): the
    /// configuration and a free name and UUID. Returns the configuration to create.
    pub fn accept_migration(&self, hello: &Hello) -> Result<SavedConfigRef, Answer> {
        let config: SavedConfig = serde_json::from_str(&hello.config).map_err(|e| {
            refusal(DomainError::BadImage(format!(
                "the domain configuration: {e}"
            )))
        })?;
        if config.toolstack != TOOLSTACK {
            return Err(refusal(DomainError::BadImage(format!(
                "sent by {:?}, not by rxen's xend",
                config.toolstack
            ))));
        }
        taps_free(&config.spec).map_err(refusal)?;
        let reg = lock(&self.reg);
        if reg.by_name(&config.spec.name).is_some() {
            return Err(refusal(DomainError::NameInUse(config.spec.name)));
        }
        if reg.by_uuid(&config.uuid).is_some() {
            return Err(refusal(DomainError::UuidInUse(config.uuid)));
        }
        Ok(SavedConfigRef(config))
    }

    /// Creates the migrating domain from the connection `conn` (answered `ready`);
    /// returns the answer for the sender.
    pub async fn receive_migration(
        self: &Arc<Self>,
        config: SavedConfigRef,
        conn: Arc<OwnedFd>,
        live: bool,
    ) -> Answer {
        let SavedConfigRef(config) = config;
        let mut spec = config.spec;
        spec.uuid = Some(config.uuid);
        let name = spec.name.clone();
        let guest_suspends = config.guest_suspends;
        tracing::info!(name, live, guest_suspends, "receiving a migrating domain");
        let opts = CreateOptions {
            paused: false,
            restore: Some("-".into()),
            incoming: Some(conn),
        };
        match self.create(spec, false, opts).await {
            Ok(d) => {
                let Some(domid) = d.domid else {
                    return refusal(DomainError::Internal(
                        "the migrated domain ended at once".into(),
                    ));
                };
                if guest_suspends {
                    if let Err(e) = self.advertise_suspend_again(domid).await {
                        tracing::warn!(domid, name, "control/feature-suspend: {e}");
                    }
                }
                tracing::info!(domid, name, "migrated domain runs");
                self.emit(
                    Some(domid),
                    &name,
                    "migrated_in",
                    serde_json::json!({"live": live}),
                );
                Answer::Running { domid }
            }
            Err(e) => {
                tracing::warn!(name, "incoming migration failed: {e}");
                refusal(e)
            }
        }
    }
}

/// Refuses an incoming domain whose fixed TAP name (`vifname=`) is an interface of
/// this host already: between two xends on one host, the source's VMM holds it until
/// the migration is over. Default names (`vif<domid>.<devid>`) take the new domid.
fn taps_free(spec: &rxen_xlcfg::DomainSpec) -> DomainResult<()> {
    for (v, devid) in spec.vifs.iter().zip(crate::vif::devids(&spec.vifs)) {
        if let Some(name) = v.vifname.as_deref() {
            if rxen_hostnet::link::exists(name) {
                return Err(DomainError::DeviceRefused(format!(
                    "vif {devid}: vifname={name} is an interface of this host already (a \
                     migration between xends on one host: the source holds it until the \
                     end); leave vifname= out to get vif<domid>.{devid}"
                )));
            }
        }
    }
    Ok(())
}

/// An incoming migration's checked configuration.
pub struct SavedConfigRef(SavedConfig);
