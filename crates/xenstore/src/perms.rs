//! Node permissions with Xen's semantics: the first entry names the owner and the
//! access of every domain not listed; later entries give listed domains their access.
//! The owner and privileged connections (domain 0) always have full access.

use serde::{Deserialize, Serialize};

use crate::wire::XsError;

/// Access letter of a permission entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Access {
    None,
    Read,
    Write,
    Both,
}

impl Access {
    fn letter(self) -> char {
        match self {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        }
    }
    pub fn can_read(self) -> bool {
        matches!(self, Access::Read | Access::Both)
    }
    pub fn can_write(self) -> bool {
        matches!(self, Access::Write | Access::Both)
    }
}

/// One entry: a domain and its access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Perm {
    pub domid: u32,
    pub access: Access,
}

impl Perm {
    /// Parses `n0`, `r5`, `w3`, `b1`.
    pub fn parse(s: &[u8]) -> Result<Self, XsError> {
        let (first, rest) = s.split_first().ok_or(XsError::EINVAL)?;
        let access = match first {
            b'n' => Access::None,
            b'r' => Access::Read,
            b'w' => Access::Write,
            b'b' => Access::Both,
            _ => return Err(XsError::EINVAL),
        };
        let id = std::str::from_utf8(rest).map_err(|_| XsError::EINVAL)?;
        if id.is_empty() || !id.bytes().all(|c| c.is_ascii_digit()) {
            return Err(XsError::EINVAL);
        }
        let domid: u32 = id.parse().map_err(|_| XsError::EINVAL)?;
        if domid > u16::MAX as u32 {
            return Err(XsError::EINVAL);
        }
        Ok(Perm { domid, access })
    }

    pub fn render(&self) -> String {
        format!("{}{}", self.access.letter(), self.domid)
    }
}

/// The permissions of a node (never empty).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Perms(pub Vec<Perm>);

impl Perms {
    /// Owned by `domid`, no access for others.
    pub fn owned_by(domid: u32) -> Self {
        Perms(vec![Perm {
            domid,
            access: Access::None,
        }])
    }

    pub fn owner(&self) -> u32 {
        self.0.first().map(|p| p.domid).unwrap_or(0)
    }

    /// Access of domain `domid` (`privileged` connections always get both).
    pub fn access_for(&self, domid: u32, privileged: bool) -> Access {
        if privileged || domid == self.owner() {
            return Access::Both;
        }
        self.0
            .iter()
            .skip(1)
            .find(|p| p.domid == domid)
            .or(self.0.first())
            .map(|p| p.access)
            .unwrap_or(Access::None)
    }

    /// Wire form: entries as NUL-terminated strings.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for p in &self.0 {
            v.extend_from_slice(p.render().as_bytes());
            v.push(0);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_check() {
        let p = Perms(vec![
            Perm::parse(b"r5").unwrap(),
            Perm::parse(b"w7").unwrap(),
            Perm::parse(b"n9").unwrap(),
        ]);
        assert_eq!(p.owner(), 5);
        assert_eq!(p.access_for(5, false), Access::Both);
        assert_eq!(p.access_for(7, false), Access::Write);
        assert_eq!(p.access_for(9, false), Access::None);
        assert_eq!(
            p.access_for(3, false),
            Access::Read,
            "default from the first entry"
        );
        assert_eq!(p.access_for(9, true), Access::Both);
        assert_eq!(p.to_wire(), b"r5\0w7\0n9\0");
        for bad in [&b""[..], b"x1", b"r", b"r-1", b"r99999", b"r1a"] {
            assert!(Perm::parse(bad).is_err());
        }
    }
}
