//! Where xend's API token comes from: `--auth-token-file PATH` or the
//! `XEND_AUTH_TOKEN` environment variable, never the command line (which every user
//! sees in `ps`). A token file must be a regular file that others cannot read; blank
//! tokens are refused.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The environment variable that may hold the token.
pub const TOKEN_ENV: &str = "XEND_AUTH_TOKEN";
/// The largest token file read.
const MAX_TOKEN_FILE: u64 = 4096;

/// The token to require, if any: the file's (first line, trimmed) when `file` is set,
/// else `XEND_AUTH_TOKEN`'s.
pub fn resolve(file: Option<&Path>) -> Result<Option<String>, String> {
    let token = match file {
        Some(p) => read_file(p)?,
        None => match std::env::var(TOKEN_ENV) {
            Ok(t) => t,
            Err(std::env::VarError::NotPresent) => return Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(format!("{TOKEN_ENV} is not UTF-8"))
            }
        },
    };
    let source = file.map_or_else(|| TOKEN_ENV.to_string(), |p| p.display().to_string());
    check(token.trim(), &source).map(Some)
}

/// Refuses tokens a client could not send or could guess.
fn check(token: &str, source: &str) -> Result<String, String> {
    if token.is_empty() {
        return Err(format!("the auth token from {source} is blank"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "the auth token from {source} must be printable ASCII without spaces"
        ));
    }
    Ok(token.to_string())
}

fn read_file(p: &Path) -> Result<String, String> {
    let shown = p.display();
    let file = std::fs::File::open(p).map_err(|e| format!("reading token file {shown}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("reading token file {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("token file {shown} is not a regular file"));
    }
    if meta.permissions().mode() & 0o007 != 0 {
        return Err(format!(
            "token file {shown} is accessible to every user (mode {:o}): chmod o-rwx it",
            meta.permissions().mode() & 0o777
        ));
    }
    let mut text = String::new();
    file.take(MAX_TOKEN_FILE)
        .read_to_string(&mut text)
        .map_err(|e| format!("reading token file {shown}: {e}"))?;
    Ok(text.lines().next().unwrap_or("").to_string())
}
