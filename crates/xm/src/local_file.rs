//! Reading the files a user names on xm's command line (xl.cfg files, token files)
//! with bounds: only regular files, at most [`MAX_CONFIG_BYTES`], read through a
//! `take` so a file that grows while it is read cannot make xm read more. `/dev/zero`,
//! a FIFO or a huge sparse file is refused with a clear error before anything is read.
//! Token files (`--token-file`) are read the same way, with a 4 KiB limit.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{XmError, XmResult};

/// The largest config file xm reads (1 MiB; real xl.cfg files are a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The text of the regular file at `path`, refused if it is not a regular file or is
/// larger than `limit` bytes. `what` names the file in errors ("config file").
pub fn read_bounded(path: &Path, what: &str, limit: u64) -> XmResult<String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| XmError::io(format!("reading {shown}"), e))?;
    check(&meta, path, what, limit)?;
    // O_NONBLOCK: if the path was swapped for a FIFO since the check, opening it must
    // not hang; the check below on the open file refuses it.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| XmError::io(format!("reading {shown}"), e))?;
    let meta = file
        .metadata()
        .map_err(|e| XmError::io(format!("reading {shown}"), e))?;
    check(&meta, path, what, limit)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| XmError::io(format!("reading {shown}"), e))?;
    if bytes.len() as u64 > limit {
        return Err(too_large(path, what, limit));
    }
    String::from_utf8(bytes)
        .map_err(|_| XmError::Usage(format!("{what} {shown} is not UTF-8 text")))
}

/// The largest token file xm reads.
pub const MAX_TOKEN_BYTES: u64 = 4096;

/// The API token in the file at `path`: its first line, trimmed; blank is an error.
pub fn read_token(path: &Path) -> XmResult<String> {
    let text = read_bounded(path, "token file", MAX_TOKEN_BYTES)?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(XmError::Usage(format!(
            "token file {} is blank",
            path.display()
        )));
    }
    Ok(token.to_string())
}

fn check(meta: &std::fs::Metadata, path: &Path, what: &str, limit: u64) -> XmResult<()> {
    if !meta.is_file() {
        return Err(XmError::Usage(format!(
            "{what} {} is not a regular file",
            path.display()
        )));
    }
    if meta.len() > limit {
        return Err(too_large(path, what, limit));
    }
    Ok(())
}

fn too_large(path: &Path, what: &str, limit: u64) -> XmError {
    XmError::Usage(format!(
        "{what} {} is larger than the limit of {limit} bytes",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("xm-local-file-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }

    #[test]
    fn device_files_and_directories_are_refused_before_reading() {
        let e = read_bounded(Path::new("/dev/zero"), "config file", MAX_CONFIG_BYTES)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = read_bounded(Path::new("/tmp"), "config file", MAX_CONFIG_BYTES)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn a_huge_sparse_file_is_refused_by_its_size() {
        let p = tmp("sparse.cfg");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(1 << 30).unwrap();
        let e = read_bounded(&p, "config file", MAX_CONFIG_BYTES)
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than the limit of 1048576 bytes"), "{e}");
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn token_files_give_their_first_line_and_blank_ones_are_refused() {
        let p = tmp("token");
        std::fs::write(&p, "  s3cret \nrest\n").unwrap();
        assert_eq!(read_token(&p).unwrap(), "s3cret");
        std::fs::write(&p, " \n").unwrap();
        assert!(read_token(&p).unwrap_err().to_string().contains("blank"));
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn small_files_are_read_whole() {
        let p = tmp("small.cfg");
        std::fs::write(&p, "name='a'\n").unwrap();
        assert_eq!(read_bounded(&p, "config file", 9).unwrap(), "name='a'\n");
        assert!(read_bounded(&p, "config file", 8).is_err());
        let _ = std::fs::remove_file(&p);
    }
}
