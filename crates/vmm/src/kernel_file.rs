//! Reading a guest kernel file from the host with bounded effort: the path must name a
//! regular file no larger than [`MAX_IMAGE_BYTES`], checked before reading, and at most
//! that many bytes (plus one, to notice growth) are ever read. `/dev/zero`, a FIFO, a
//! directory or a 1 GB sparse file are refused without reading them.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::elf::MAX_IMAGE_BYTES;

/// Why a kernel file was not read.
#[derive(Debug, thiserror::Error)]
pub enum KernelFileError {
    #[error("reading kernel {path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("kernel {path} is not a regular file ({kind})")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("kernel {path} is {size} bytes, more than the {MAX_IMAGE_BYTES} allowed")]
    TooLarge { path: PathBuf, size: u64 },
}

fn kind_of(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Reads the kernel image at `path`, refusing anything that is not a regular file of
/// at most [`MAX_IMAGE_BYTES`] bytes.
pub fn read_kernel(path: &Path) -> Result<Vec<u8>, KernelFileError> {
    let io = |err| KernelFileError::Io {
        path: path.to_path_buf(),
        err,
    };
    // O_NONBLOCK: opening a FIFO must not wait for a writer; the type check below
    // refuses it anyway.
    let file: File = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(KernelFileError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_of(meta.file_type()),
        });
    }
    if meta.len() > MAX_IMAGE_BYTES as u64 {
        return Err(KernelFileError::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
        });
    }
    // Files whose size stat does not tell (procfs, a file growing meanwhile) are read
    // up to one byte over the limit, never further.
    let mut data = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_IMAGE_BYTES as u64 + 1)
        .read_to_end(&mut data)
        .map_err(io)?;
    if data.len() > MAX_IMAGE_BYTES {
        return Err(KernelFileError::TooLarge {
            path: path.to_path_buf(),
            size: data.len() as u64,
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_devices_and_directories_without_reading() {
        assert!(matches!(
            read_kernel(Path::new("/dev/zero")),
            Err(KernelFileError::NotRegular {
                kind: "a character device",
                ..
            })
        ));
        assert!(matches!(
            read_kernel(Path::new("/")),
            Err(KernelFileError::NotRegular { .. })
        ));
    }

    #[test]
    fn refuses_a_large_sparse_file_by_its_size() {
        let p = std::env::temp_dir().join(format!("rxen-sparse-{}", std::process::id()));
        let f = File::create(&p).expect("create");
        f.set_len(1 << 30).expect("set_len");
        let r = read_kernel(&p);
        let _ = std::fs::remove_file(&p);
        assert!(
            matches!(r, Err(KernelFileError::TooLarge { size, .. }) if size == 1 << 30),
            "{r:?}"
        );
    }

    #[test]
    fn reads_a_small_file() {
        let p = std::env::temp_dir().join(format!("rxen-small-{}", std::process::id()));
        std::fs::write(&p, b"\x7fELF").expect("write");
        let r = read_kernel(&p);
        let _ = std::fs::remove_file(&p);
        assert_eq!(r.expect("read"), b"\x7fELF");
    }
}
