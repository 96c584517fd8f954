//! A daemon's pid file, held with an exclusive `flock` for the daemon's whole life.
//!
//! The lock, not the number in the file, says whether a daemon runs: the kernel drops
//! it when the holder exits (even by SIGKILL), so a file left by a dead process — or
//! by a zombie, which `kill(pid, 0)` still reports as alive — never blocks a start,
//! and two daemons can never hold the same file. [`PidFile::acquire`] opens the file,
//! locks it without blocking, truncates it and writes the pid; [`PidFile::holder`]
//! tells whether a live process holds it by trying the lock.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why a pid file could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    /// A live process holds the lock. `pid` is 0 if it has not written its pid yet.
    #[error("pid file {path} is held by running process {pid}")]
    Held { path: PathBuf, pid: u32 },
    #[error("pid file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A pid file this process holds; the lock is released (and the file removed) on drop.
#[derive(Debug)]
pub struct PidFile {
    /// Open for as long as the lock is held (the lock goes when it closes).
    _locked: File,
    path: PathBuf,
}

/// How long [`PidFile::holder`] waits for a holder that has just taken the lock to
/// write its pid.
const PID_WRITE_GRACE: Duration = Duration::from_millis(200);

enum Lock {
    Taken,
    HeldElsewhere,
}

fn try_lock(file: &File, op: libc::c_int) -> std::io::Result<Lock> {
    loop {
        // SAFETY: flock(2) on a file descriptor we own; no memory is passed.
        let r = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
        if r == 0 {
            return Ok(Lock::Taken);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(Lock::HeldElsewhere),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

/// The pid written in `file`, if it holds one.
fn read_pid(mut file: &File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok().filter(|p| *p != 0)
}

/// The pid in a file whose lock a live process holds, giving a holder that has just
/// locked it a moment to write its pid (0 if it does not).
fn holder_pid(file: &File) -> u32 {
    let deadline = Instant::now() + PID_WRITE_GRACE;
    loop {
        if let Some(p) = read_pid(file) {
            return p;
        }
        if Instant::now() >= deadline {
            return 0;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

impl PidFile {
    /// Takes the pid file at `path` for this process: creates it if needed, locks it
    /// (never waiting), truncates it and writes this process's pid. Fails with
    /// [`PidFileError::Held`] if another live process holds it.
    pub fn acquire(path: &Path) -> Result<PidFile, PidFileError> {
        let io = |source| PidFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)
                .map_err(io)?;
            match try_lock(&file, libc::LOCK_EX).map_err(io)? {
                Lock::HeldElsewhere => {
                    return Err(PidFileError::Held {
                        path: path.to_path_buf(),
                        pid: holder_pid(&file),
                    })
                }
                Lock::Taken => {}
            }
            // A holder that was exiting may have removed the file between our open
            // and our lock: then we locked an unlinked inode and must start again.
            let ours = file.metadata().map_err(io)?;
            match std::fs::metadata(path) {
                Ok(now) if now.dev() == ours.dev() && now.ino() == ours.ino() => {}
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(e)),
            }
            file.set_len(0).map_err(io)?;
            let mut f = &file;
            f.seek(SeekFrom::Start(0)).map_err(io)?;
            f.write_all(format!("{}\n", std::process::id()).as_bytes())
                .map_err(io)?;
            f.flush().map_err(io)?;
            tracing::debug!(path = %path.display(), "pid file locked");
            return Ok(PidFile {
                _locked: file,
                path: path.to_path_buf(),
            });
        }
    }

    /// The pid of the live process holding the pid file at `path`, or `None` if no
    /// process holds it (missing file, or one left by a dead process or a zombie).
    /// The pid is 0 if the holder has locked the file but not written its pid yet.
    pub fn holder(path: &Path) -> Option<u32> {
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .ok()?;
        // A shared lock conflicts with the holder's exclusive one but not with other
        // probes; it is released when `file` closes.
        match try_lock(&file, libc::LOCK_SH) {
            Ok(Lock::HeldElsewhere) => Some(holder_pid(&file)),
            Ok(Lock::Taken) | Err(_) => None,
        }
    }

    /// Where the pid file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Removed while still locked, so no one takes over a file that is going away
        // (a process that opened it just before sees the inode change and retries).
        // The lock goes when `_locked` closes, right after this.
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rxen-pidfile-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d.join("pid")
    }

    #[test]
    fn held_file_refuses_a_second_holder_and_names_the_pid() {
        let path = temp("held");
        let me = std::process::id();
        let held = PidFile::acquire(&path).expect("first acquire");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{me}\n"));
        assert_eq!(PidFile::holder(&path), Some(me));
        match PidFile::acquire(&path) {
            Err(PidFileError::Held { pid, .. }) => assert_eq!(pid, me),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(held);
        assert!(!path.exists(), "removed on drop");
        assert_eq!(PidFile::holder(&path), None);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn stale_file_does_not_block() {
        let path = temp("stale");
        // A pid that cannot be a live process of ours, and garbage after it.
        std::fs::write(&path, "4194303\nrest of an old, longer file\n").unwrap();
        assert_eq!(PidFile::holder(&path), None, "nobody holds the lock");
        let held = PidFile::acquire(&path).expect("stale file is taken over");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id()),
            "truncated and rewritten"
        );
        drop(held);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
