//! Host processes: liveness of a VMM by pid, and signals to it.

/// Is process `pid` alive? A zombie (exited, not yet reaped) is not.
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission.
    if unsafe { libc::kill(pid as i32, 0) } != 0 {
        return false;
    }
    // Field 3 of /proc/PID/stat is the state; the command name before it may contain
    // spaces and parentheses, so look after the last ')'.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// An exclusive `flock` on a state directory, held for a daemon's life: two xends can
/// never share one state directory, even if its pid file was removed (the lock is on
/// the directory itself, which cannot be removed while in use). The kernel drops it
/// when the holder dies, so a killed daemon never blocks the next one.
pub struct StateDirLock {
    _dir: std::fs::File,
}

impl StateDirLock {
    /// Locks `dir` without waiting; `Err` says whether another process holds it.
    pub fn acquire(dir: &std::path::Path) -> Result<StateDirLock, StateDirLockError> {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(dir).map_err(|e| StateDirLockError::Io(e.to_string()))?;
        loop {
            // SAFETY: flock(2) on a descriptor we own; no memory is passed.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(StateDirLock { _dir: f });
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => return Err(StateDirLockError::Held),
                _ => return Err(StateDirLockError::Io(e.to_string())),
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateDirLockError {
    #[error("another process holds the state directory's lock")]
    Held,
    #[error("locking the state directory: {0}")]
    Io(String),
}

/// Whether `pid` is the VMM serving `control` (its command line names that control
/// socket), so that a recorded pid reused by an unrelated process is never signalled.
pub fn is_vmm_of(pid: u32, control: &std::path::Path) -> bool {
    if !pid_alive(pid) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let want = format!("--control={}", control.display());
    cmdline.split(|b| *b == 0).any(|arg| arg == want.as_bytes())
}

/// Waits until process `pid` (not a child of xend: an adopted VMM) has exited, through
/// a pidfd: the kernel says when, no polling, and a reused pid can never be confused
/// with the process opened here. Returns at once if it is already gone.
pub async fn wait_exit(pid: u32) -> std::io::Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    if pid == 0 || pid > i32::MAX as u32 {
        return Ok(());
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; no
    // memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ESRCH) => Ok(()),
            _ => Err(e),
        };
    }
    // SAFETY: the descriptor was just returned by pidfd_open and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: `fd` is an open pidfd owned by the AsyncFd for its whole life (moved in,
    // never closed or replaced while registered), as register_with_interest requires.
    let afd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    }?;
    // A pidfd becomes readable when the process exits (zombies included).
    let _guard = afd.readable().await?;
    Ok(())
}

/// Live processes whose command line has a `--control=PATH` argument with PATH under
/// `dir`: the VMMs serving domains of one state directory, found whatever xend
/// recorded about them. Returns (pid, control socket path).
pub fn vmms_under(dir: &std::path::Path) -> Vec<(u32, std::path::PathBuf)> {
    use std::os::unix::ffi::OsStrExt;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let control = cmdline
            .split(|b| *b == 0)
            .find_map(|a| a.strip_prefix(b"--control="))
            .map(|p| std::path::PathBuf::from(std::ffi::OsStr::from_bytes(p)));
        if let Some(c) = control {
            if c.starts_with(dir) && pid_alive(pid) {
                out.push((pid, c));
            }
        }
    }
    out
}

/// Sends SIGKILL to `pid` if it is alive.
pub fn kill(pid: u32) {
    if pid_alive(pid) {
        // SAFETY: signalling a process we started (a domain's VMM); pid is non-zero.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// How long [`stop_all`] waits for killed processes to end.
const STOP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3);

/// Sends SIGKILL to every live process of `pids` and waits (all together, at most
/// [`STOP_DEADLINE`]) until they have ended, so that whoever looks next (a client, the
/// next reconciliation) never sees a process that is being stopped as running. One
/// still there after the deadline (stuck in the kernel) is logged, not waited for.
pub async fn stop_all(pids: &[u32]) {
    let live: Vec<u32> = pids.iter().copied().filter(|&p| pid_alive(p)).collect();
    for &pid in &live {
        kill(pid);
    }
    // One deadline for all: the waits after the first take no extra time.
    let deadline = tokio::time::Instant::now() + STOP_DEADLINE;
    for pid in live {
        match tokio::time::timeout_at(deadline, wait_exit(pid)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(pid, "waiting for a killed VMM to end: {e}"),
            Err(_) => tracing::warn!(pid, "a killed VMM is still there after {STOP_DEADLINE:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `stop_all` returns only once the process has ended (CI once saw a VMM xend had
    /// just killed still running when a client listed processes).
    #[tokio::test]
    async fn stop_all_returns_once_the_process_has_ended() {
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let pid = child.id();
        stop_all(&[pid]).await;
        // Ended: at most a zombie waiting for its parent (this test) to reap it.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        assert!(matches!(state, None | Some("Z") | Some("X")), "{stat}");
        let _ = child.wait();
    }

    #[tokio::test]
    async fn wait_exit_returns_when_the_process_ends() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let pid = child.id();
        tokio::time::timeout(std::time::Duration::from_secs(10), wait_exit(pid))
            .await
            .expect("in time")
            .unwrap();
        child.wait().unwrap();
        wait_exit(pid).await.unwrap(); // already gone
    }

    #[test]
    fn a_state_dir_is_locked_once() {
        let dir = std::env::temp_dir().join(format!("rxen-statelock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let held = StateDirLock::acquire(&dir).unwrap();
        assert!(matches!(
            StateDirLock::acquire(&dir),
            Err(StateDirLockError::Held)
        ));
        drop(held);
        StateDirLock::acquire(&dir).unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn zombies_are_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Wait for it to exit without reaping it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while pid_alive(pid) {
            assert!(std::time::Instant::now() < deadline, "child never exited");
            std::thread::yield_now();
        }
        // SAFETY: probing a pid we own; it is a zombie until waited for.
        assert_eq!(unsafe { libc::kill(pid as i32, 0) }, 0, "still a zombie");
        child.wait().unwrap();
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(0));
    }
}
