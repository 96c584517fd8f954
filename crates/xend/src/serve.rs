//! Serving the API on a listener (TCP or Unix) with bounds a hostile client cannot
//! push past: a request's headers must arrive within [`Limits::header_read_timeout`]
//! (else the connection is closed), and at most [`Limits::max_connections`]
//! connections are served at once over all listeners (one more is closed at once, so
//! slow clients cannot hold the API's memory or file descriptors). HTTP/1.1 only,
//! which is all the API speaks.
//!
//! On shutdown, accepting stops, every connection is asked to finish its request in
//! progress and close, and after [`Limits::drain`] the rest (e.g. `/events` streams)
//! are dropped.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Semaphore};

/// How much a client may take.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    /// How long shutdown waits for open connections.
    pub drain: Duration,
}

/// A listener the API is served on.
pub trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl std::future::Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<Self::Io> {
        let (s, _) = tokio::net::TcpListener::accept(self).await?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<Self::Io> {
        tokio::net::UnixListener::accept(self).await.map(|(s, _)| s)
    }
}

/// Shared by every listener of one daemon: the connection cap and the shutdown
/// signal.
#[derive(Clone)]
pub struct Server {
    app: Router,
    limits: Limits,
    slots: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
}

impl Server {
    /// A server of `app`, stopping when `shutdown` turns true.
    pub fn new(app: Router, limits: Limits, shutdown: watch::Receiver<bool>) -> Server {
        Server {
            app,
            limits,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            shutdown,
        }
    }

    /// Serves `listener` until shutdown, then waits (up to the drain time) for its
    /// connections to end.
    pub async fn serve<L: Accept>(&self, listener: L) {
        let mut shutdown = self.shutdown.clone();
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let io = tokio::select! {
                r = listener.accept() => r,
                _ = shutdown.wait_for(|s| *s) => break,
                // Reap finished connections so the set does not grow.
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            };
            let io = match io {
                Ok(io) => io,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                tracing::warn!(
                    max = self.limits.max_connections,
                    "too many connections: closing a new one"
                );
                drop(io);
                continue;
            };
            conns.spawn(self.clone().connection(io, permit));
        }
        let drained = tokio::time::timeout(self.limits.drain, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::info!(
                open = conns.len(),
                "closing connections still open at shutdown"
            );
            conns.abort_all();
        }
    }

    async fn connection<Io>(self, io: Io, _permit: tokio::sync::OwnedSemaphorePermit)
    where
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout);
        let service = TowerToHyperService::new(self.app.clone());
        let conn = builder.serve_connection(TokioIo::new(io), service);
        let mut conn = std::pin::pin!(conn);
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("connection ended: {e}");
                }
                return;
            }
            _ = shutdown.wait_for(|s| *s) => {}
        }
        conn.as_mut().graceful_shutdown();
        if let Err(e) = conn.await {
            tracing::debug!("connection ended at shutdown: {e}");
        }
    }
}
