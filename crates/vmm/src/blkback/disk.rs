//! The backing store of a virtual disk: a regular file or a block device, opened
//! once, read and written at offsets (`pread`/`pwrite`), flushed with `fdatasync`.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use rxen_abi::blkif::BLKIF_SECTOR_SIZE;

/// Why a disk could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("disk {0}: not a regular file or block device")]
    NotADisk(PathBuf),
    #[error("disk {0}: smaller than one 512-byte sector")]
    Empty(PathBuf),
}

/// An open virtual disk.
#[derive(Debug)]
pub struct Disk {
    file: File,
    path: PathBuf,
    sectors: u64,
    writable: bool,
    /// Serve reads and writes with `O_DIRECT` (see `io::Store`).
    direct_io: bool,
}

impl Disk {
    /// Opens `path` (read-write when `writable`): it must be a regular file or a block
    /// device of at least one sector. A size that is not a multiple of 512 bytes is
    /// rounded down (the tail is not reachable by the guest).
    pub fn open(path: &Path, writable: bool) -> Result<Self, DiskError> {
        let open_err = |source| DiskError::Open {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(open_err)?;
        let ft = meta.file_type();
        if !ft.is_file() && !ft.is_block_device() {
            return Err(DiskError::NotADisk(path.to_path_buf()));
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(open_err)?;
        // The opened object is checked again (the path may have changed meanwhile).
        let ft = file.metadata().map_err(open_err)?.file_type();
        if !ft.is_file() && !ft.is_block_device() {
            return Err(DiskError::NotADisk(path.to_path_buf()));
        }
        // Works for block devices too, whose metadata length is 0.
        let bytes = file.seek(SeekFrom::End(0)).map_err(open_err)?;
        let sectors = bytes / BLKIF_SECTOR_SIZE;
        if sectors == 0 {
            return Err(DiskError::Empty(path.to_path_buf()));
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            sectors,
            writable,
            direct_io: false,
        })
    }

    /// The same disk, served with `O_DIRECT` when `on` (bypassing the host page cache).
    pub fn with_direct_io(mut self, on: bool) -> Self {
        self.direct_io = on;
        self
    }

    /// Whether reads and writes should bypass the host page cache.
    pub fn direct_io(&self) -> bool {
        self.direct_io
    }

    /// Size in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether the guest may write.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// The backing path (for logs).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads `buf.len()` bytes at byte `offset` (the caller checked the range).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Writes `data` at byte `offset` (the caller checked the range and the mode).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if !self.writable {
            return Err(std::io::Error::from_raw_os_error(libc::EROFS));
        }
        self.file.write_all_at(data, offset)
    }

    /// Makes written data durable (`fdatasync`).
    pub fn flush(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

impl std::os::fd::AsRawFd for Disk {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn refuses_what_is_not_a_disk() {
        let dir = std::env::temp_dir().join(format!("rxen-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(
            Disk::open(&dir, false),
            Err(DiskError::NotADisk(_))
        ));
        assert!(matches!(
            Disk::open(Path::new("/dev/null"), false),
            Err(DiskError::NotADisk(_))
        ));
        let small = dir.join("small.img");
        std::fs::write(&small, [0u8; 100]).unwrap();
        assert!(matches!(Disk::open(&small, true), Err(DiskError::Empty(_))));
        assert!(matches!(
            Disk::open(&dir.join("missing"), true),
            Err(DiskError::Open { .. })
        ));
        let img = dir.join("ok.img");
        std::fs::write(&img, vec![0u8; 4096 + 100]).unwrap();
        let d = Disk::open(&img, false).unwrap();
        assert_eq!(d.sectors(), 8);
        assert!(d.write_at(0, b"x").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
