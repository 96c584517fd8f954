//! xend's relocation server (Xen's port 8002): accepts live migrations from other
//! hosts' xends (`rxen_vmm_api::relocation`). Off unless `--relocation-port` is
//! given, bound to `--relocation-address` (127.0.0.1 unless configured), and never
//! without a token (`--relocation-token-file`): a connection whose [`Hello`] does not
//! carry it is refused (`bad_token`) before anything is created. The stream itself is
//! neither encrypted nor authenticated beyond the token (as Xen's): use it on a
//! trusted network or through a tunnel (`docs/migration.md`).
//!
//! This module owns the listener and the connection's first exchange (limits,
//! timeouts, the token); what happens with a domain is [`crate::state::migrate`]'s.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use rxen_vmm_api::relocation::{Answer, Hello, MAX_RELOCATION_LINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::state::Xend;

/// How long a sender has to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Incoming migrations at once; more are refused (`busy`).
const MAX_INCOMING: usize = 8;

/// Serves `listener` until the process ends.
pub async fn serve(xend: Arc<Xend>, listener: TcpListener, token: String) {
    let token = Arc::new(token);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_INCOMING));
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("relocation server: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (xend, token, slots) = (xend.clone(), token.clone(), slots.clone());
        tokio::spawn(async move {
            let Ok(_slot) = slots.try_acquire_owned() else {
                let busy = Answer::Refused {
                    error: "busy".into(),
                    message: format!("{MAX_INCOMING} migrations are arriving already"),
                };
                let mut conn = conn;
                let _ = write_answer(&mut conn, &busy).await;
                return;
            };
            if let Err(e) = handle(xend, conn, &token).await {
                tracing::warn!(%peer, "relocation: {e}");
            }
        });
    }
}

async fn write_answer(conn: &mut TcpStream, answer: &Answer) -> std::io::Result<()> {
    let mut line = serde_json::to_string(answer).map_err(std::io::Error::other)?;
    line.push('\n');
    conn.write_all(line.as_bytes()).await
}

/// Reads the hello line byte by byte, so that nothing of the image after it is
/// taken from the connection the VMM reads.
async fn read_hello(conn: &mut TcpStream) -> Result<Hello, String> {
    let mut line = Vec::new();
    let read = async {
        let mut byte = [0u8; 1];
        loop {
            if conn.read(&mut byte).await.map_err(|e| e.to_string())? == 0 {
                return Err("the sender closed the connection".to_string());
            }
            if byte[0] == b'\n' {
                return Ok(());
            }
            if line.len() >= MAX_RELOCATION_LINE {
                return Err("a hello line over the limit".to_string());
            }
            line.push(byte[0]);
        }
    };
    tokio::time::timeout(HELLO_TIMEOUT, read)
        .await
        .map_err(|_| "no hello in time".to_string())??;
    serde_json::from_slice(&line).map_err(|e| format!("not a hello: {e}"))
}

async fn handle(xend: Arc<Xend>, mut conn: TcpStream, token: &str) -> Result<(), String> {
    let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let hello = match read_hello(&mut conn).await {
        Ok(h) => h,
        Err(e) => {
            let refused = Answer::Refused {
                error: "bad_request".into(),
                message: e.clone(),
            };
            let _ = write_answer(&mut conn, &refused).await;
            return Err(e);
        }
    };
    if !crate::api::token_matches(hello.token.as_bytes(), token.as_bytes()) {
        let refused = Answer::Refused {
            error: "bad_token".into(),
            message: "the relocation token is wrong".into(),
        };
        let _ = write_answer(&mut conn, &refused).await;
        return Err("refused a migration with a wrong token".into());
    }
    let config = match xend.accept_migration(&hello) {
        Ok(c) => c,
        Err(refused) => {
            let _ = write_answer(&mut conn, &refused).await;
            return Err(format!("refused a migration: {refused:?}"));
        }
    };
    write_answer(&mut conn, &Answer::Ready)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(%peer, live = hello.live, "relocation: receiving a domain");
    // The VMM reads the image from the connection (blocking), xend writes the last
    // answer on it: one socket, two descriptors, blocking mode for both.
    let std_conn = conn.into_std().map_err(|e| e.to_string())?;
    std_conn.set_nonblocking(false).map_err(|e| e.to_string())?;
    let fd: Arc<OwnedFd> = Arc::new(std_conn.into());
    let answer = xend.receive_migration(config, fd.clone(), hello.live).await;
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut line = serde_json::to_string(&answer).map_err(|e| e.to_string())?;
        line.push('\n');
        let mut s = std::net::TcpStream::from(fd.try_clone().map_err(|e| e.to_string())?);
        s.set_write_timeout(Some(HELLO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        s.write_all(line.as_bytes()).map_err(|e| e.to_string())?;
        tracing::debug!("relocation: answered {}", line.trim_end());
        let _ = s.shutdown(std::net::Shutdown::Both);
        Ok::<_, String>(())
    })
    .await
    .map_err(|e| e.to_string())?
}
