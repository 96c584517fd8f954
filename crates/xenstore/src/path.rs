//! Xenstore path rules: allowed characters, lengths, `@` special paths, and resolving
//! paths relative to a domain's home (`/local/domain/N`).

use crate::wire::{XsError, ABS_PATH_MAX, REL_PATH_MAX};

/// Special watch paths.
pub const INTRODUCE_DOMAIN: &str = "@introduceDomain";
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

/// Home directory of domain `domid`.
pub fn domain_path(domid: u32) -> String {
    format!("/local/domain/{domid}")
}

fn valid_chars(p: &str) -> bool {
    p.bytes()
        .all(|c| c.is_ascii_alphanumeric() || b"-/_@".contains(&c))
}

/// Turns a client-supplied path into a canonical absolute path. Relative paths are
/// rooted at `/local/domain/<domid>`. Rejects bad characters, `//`, a trailing `/`
/// (except the root), and over-long paths with `EINVAL`.
pub fn canonicalize(raw: &[u8], domid: u32) -> Result<String, XsError> {
    let p = std::str::from_utf8(raw).map_err(|_| XsError::EINVAL)?;
    if p.is_empty() || !valid_chars(p) {
        return Err(XsError::EINVAL);
    }
    let abs = if p.starts_with('/') {
        if p.len() > ABS_PATH_MAX {
            return Err(XsError::EINVAL);
        }
        p.to_string()
    } else {
        if p.len() > REL_PATH_MAX || p.starts_with('@') {
            return Err(XsError::EINVAL);
        }
        format!("{}/{p}", domain_path(domid))
    };
    if abs.contains('@')
        || abs.contains("//")
        || (abs.len() > 1 && abs.ends_with('/'))
        || abs.len() > ABS_PATH_MAX
    {
        return Err(XsError::EINVAL);
    }
    Ok(abs)
}

/// Like [`canonicalize`], but also accepts the special `@` watch paths.
pub fn canonicalize_watch(raw: &[u8], domid: u32) -> Result<(String, bool), XsError> {
    let p = std::str::from_utf8(raw).map_err(|_| XsError::EINVAL)?;
    if p == INTRODUCE_DOMAIN || p == RELEASE_DOMAIN {
        return Ok((p.to_string(), false));
    }
    let relative = !p.starts_with('/');
    canonicalize(raw, domid).map(|a| (a, relative))
}

/// Parent of an absolute path (`None` for the root).
pub fn parent(p: &str) -> Option<&str> {
    if p == "/" {
        return None;
    }
    match p.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&p[..i]),
        None => None,
    }
}

/// Last component of an absolute path.
pub fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or("")
}

/// Is `child` equal to `ancestor` or below it?
pub fn is_within(child: &str, ancestor: &str) -> bool {
    ancestor == "/"
        || child == ancestor
        || (child.len() > ancestor.len()
            && child.starts_with(ancestor)
            && child.as_bytes()[ancestor.len()] == b'/')
}

/// Joins a parent and a child name.
pub fn join(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        assert_eq!(canonicalize(b"/a/b", 0).unwrap(), "/a/b");
        assert_eq!(canonicalize(b"/", 0).unwrap(), "/");
        assert_eq!(
            canonicalize(b"device/vif", 5).unwrap(),
            "/local/domain/5/device/vif"
        );
        for bad in [
            &b""[..],
            b"/a//b",
            b"/a/",
            b"/a b",
            b"/a\xff",
            b"/a/@b",
            b"@foo",
            b"/a.b",
        ] {
            assert_eq!(
                canonicalize(bad, 0),
                Err(XsError::EINVAL),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(canonicalize(format!("/{}", "a".repeat(3071)).as_bytes(), 0).is_ok());
        assert!(canonicalize(format!("/{}", "a".repeat(3072)).as_bytes(), 0).is_err());
        assert!(canonicalize("a".repeat(2049).as_bytes(), 0).is_err());
        assert_eq!(
            canonicalize_watch(b"@releaseDomain", 3).unwrap(),
            ("@releaseDomain".into(), false)
        );
        assert_eq!(
            canonicalize_watch(b"x", 3).unwrap(),
            ("/local/domain/3/x".into(), true)
        );
    }

    #[test]
    fn tree_relations() {
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/"), None);
        assert_eq!(basename("/a/b"), "b");
        assert!(is_within("/a/b", "/a"));
        assert!(!is_within("/ab", "/a"));
        assert!(is_within("/a", "/"));
        assert_eq!(join("/", "x"), "/x");
    }
}
