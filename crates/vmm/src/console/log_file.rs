//! Console output to a file with a size cap and one rotated file: when `PATH` would
//! grow past the cap it becomes `PATH.1` (replacing the older one) and a new `PATH`
//! starts, so the console never takes more than twice the cap on disk.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::ConsoleSink;

/// A size-capped, rotated console log file (mode 0600).
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    rotated: PathBuf,
    max_bytes: u64,
    file: Option<File>,
    /// Bytes in the current file.
    written: u64,
    /// Whether a write error was logged already (logged once, not per write).
    reported: bool,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl RotatingLog {
    /// Opens (appending) the log at `path`; `max_bytes` (at least 1) caps each file.
    pub fn open(path: &Path, max_bytes: u64) -> std::io::Result<Self> {
        let file = open_append(path)?;
        let written = file.metadata()?.len();
        let mut rotated = path.as_os_str().to_owned();
        rotated.push(".1");
        Ok(RotatingLog {
            path: path.to_path_buf(),
            rotated: PathBuf::from(rotated),
            max_bytes: max_bytes.max(1),
            file: Some(file),
            written,
            reported: false,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        std::fs::rename(&self.path, &self.rotated)?;
        self.file = Some(open_append(&self.path)?);
        self.written = 0;
        Ok(())
    }

    fn try_write(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        if bytes.len() as u64 > self.max_bytes {
            // Only the newest `max_bytes` of one oversized write can be kept.
            bytes = &bytes[bytes.len() - self.max_bytes as usize..];
        }
        if self.file.is_none() || self.written + bytes.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(bytes)?;
            self.written += bytes.len() as u64;
        }
        Ok(())
    }
}

impl ConsoleSink for RotatingLog {
    fn write(&mut self, bytes: &[u8]) {
        if let Err(e) = self.try_write(bytes) {
            if !self.reported {
                tracing::warn!(path = %self.path.display(), "console log: {e}; output is lost until it works again");
                self.reported = true;
            }
        } else {
            self.reported = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_at_the_cap_and_keeps_one_old_file() {
        let dir = std::env::temp_dir().join(format!("rxen-rotlog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("console.log");
        let mut log = RotatingLog::open(&path, 10).unwrap();
        log.write(b"0123456");
        log.write(b"789");
        assert_eq!(std::fs::read(&path).unwrap(), b"0123456789");
        log.write(b"abc");
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
        assert_eq!(
            std::fs::read(dir.join("console.log.1")).unwrap(),
            b"0123456789"
        );
        for _ in 0..100 {
            log.write(b"xyzw");
        }
        log.write(b"this write is longer than the cap");
        assert_eq!(std::fs::read(&path).unwrap(), b"an the cap");
        let total: u64 = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(total <= 20, "{total}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
