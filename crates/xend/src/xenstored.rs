//! Starting xenstored, the store daemon xend depends on: at `xend start` when none
//! answers, and again whenever it dies while xend runs (see
//! `Xend::supervise_xenstored`).

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How xend starts xenstored.
#[derive(Clone, Debug)]
pub struct XenstoredLaunch {
    /// The xenstored binary.
    pub binary: PathBuf,
    /// Its socket.
    pub socket: PathBuf,
    /// Where it keeps its state (`xenstored.json`) and pid file.
    pub state_dir: PathBuf,
}

impl XenstoredLaunch {
    /// Starts xenstored in the background and waits until it answers.
    pub fn start(&self) -> Result<(), String> {
        std::fs::create_dir_all(&self.state_dir).map_err(|e| e.to_string())?;
        let status = std::process::Command::new(&self.binary)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-file")
            .arg(self.state_dir.join("xenstored.json"))
            .arg("--pid-file")
            .arg(self.state_dir.join("xenstored.pid"))
            .arg("--daemon")
            .status()
            .map_err(|e| format!("starting {}: {e}", self.binary.display()))?;
        if !status.success() {
            return Err(format!("xenstored failed to start ({status})"));
        }
        wait_alive(&self.socket, Duration::from_secs(5))
    }
}

/// Waits until xenstored answers on `socket`.
pub fn wait_alive(socket: &Path, timeout: Duration) -> Result<(), String> {
    let deadline = std::time::Instant::now() + timeout;
    while !crate::xs::alive(socket) {
        if std::time::Instant::now() > deadline {
            return Err(format!("xenstored did not answer on {}", socket.display()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}
