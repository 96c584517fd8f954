//! Keeping xenstored alive: xend notices when it stops answering, starts it again
//! and puts back what the store must hold for every domain (its entries, its
//! introduction with the ring its VMM reported, Domain-0's entries). The VMMs' relays
//! reconnect to the new domain sockets by themselves.

use std::sync::Arc;
use std::time::Duration;

use rxen_xend_api::DomainState;

use super::{lock, Xend};
use crate::vmm;
use crate::xenstored::XenstoredLaunch;
use crate::xs;

/// How often xend checks that xenstored answers.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// Failed checks in a row before xenstored counts as dead.
const MISSES_BEFORE_RESTART: u32 = 2;

impl Xend {
    /// Runs for xend's life. Without `launch`, a dead xenstored is only reported.
    pub async fn supervise_xenstored(self: Arc<Self>, launch: Option<XenstoredLaunch>) {
        let mut misses = 0;
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            let sock = self.cfg.xenstored_socket.clone();
            let alive = tokio::task::spawn_blocking(move || xs::alive(&sock))
                .await
                .unwrap_or(false);
            if alive {
                misses = 0;
                continue;
            }
            misses += 1;
            if misses < MISSES_BEFORE_RESTART {
                continue;
            }
            if misses == MISSES_BEFORE_RESTART {
                tracing::error!(
                    socket = %self.cfg.xenstored_socket.display(),
                    "xenstored is not answering"
                );
            }
            let Some(l) = launch.clone() else { continue };
            match tokio::task::spawn_blocking(move || l.start()).await {
                Ok(Ok(())) => {
                    tracing::warn!("restarted xenstored; restoring the domains' entries");
                    misses = 0;
                    self.restore_xenstore().await;
                    self.emit(
                        None,
                        "xenstored",
                        "xenstored_restarted",
                        serde_json::json!({}),
                    );
                }
                Ok(Err(e)) => tracing::error!("restarting xenstored: {e}"),
                Err(e) => tracing::error!("restarting xenstored: {e}"),
            }
        }
    }

    /// Writes back the entries of every domain xenstored lost and introduces the live
    /// ones again (INTRODUCE of a domain it kept is idempotent).
    pub async fn restore_xenstore(&self) {
        let sock = self.cfg.xenstored_socket.clone();
        let s = sock.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || xs::populate_dom0(&s)).await {
            tracing::error!("restoring Domain-0's entries: {e}");
        }
        let doms: Vec<_> = lock(&self.reg).iter().cloned().collect();
        for d in doms {
            let (s, uuid, spec, started, domid) = (
                sock.clone(),
                d.uuid.clone(),
                d.spec.clone(),
                d.started,
                d.domid,
            );
            // A durable xenstored kept the entries: then they are never overwritten
            // (a pending control/shutdown written meanwhile must survive).
            let populated = tokio::task::spawn_blocking(move || {
                if xs::has_domain(&s, domid)? {
                    return Ok(());
                }
                xs::populate(&s, domid, &uuid, &spec, started)
            })
            .await;
            if !matches!(populated, Ok(Ok(()))) {
                tracing::error!(domid, "restoring the domain's xenstore entries failed");
                continue;
            }
            if !matches!(
                d.state,
                DomainState::Running | DomainState::Paused | DomainState::ShuttingDown
            ) {
                continue;
            }
            match vmm::status(&self.files(domid).control()).await {
                Ok(status) => {
                    let s = sock.clone();
                    let boot = status.boot;
                    match tokio::task::spawn_blocking(move || xs::introduce(&s, domid, &boot)).await
                    {
                        Ok(Ok(())) => tracing::info!(domid, "domain introduced again"),
                        _ => tracing::error!(domid, "introducing the domain again failed"),
                    }
                }
                Err(e) => {
                    tracing::error!(domid, "no boot report to introduce the domain again: {e}")
                }
            }
        }
    }
}
