//! Disk and network interface specifications of xl.cfg (`disk = [...]`, `vif = [...]`),
//! parsed and validated; used when the devices land.

use serde::{Deserialize, Serialize};

/// Access mode of a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskAccess {
    ReadOnly,
    ReadWrite,
}

/// A disk (`xl-disk-configuration`): positional `target,format,vdev,access` or
/// `target,vdev,access` (legacy, with `phy:`/`file:` prefixes), or `key=value` items.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    pub target: String,
    pub format: String,
    pub vdev: String,
    pub access: DiskAccess,
    /// `phy` (block device) or `file` (image file).
    pub backend_type: String,
}

/// A network interface: `key=value` items.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct VifSpec {
    pub mac: Option<String>,
    pub bridge: Option<String>,
    pub ip: Option<String>,
    pub vifname: Option<String>,
    pub model: Option<String>,
    pub rate: Option<String>,
    pub script: Option<String>,
}

fn valid_vdev(v: &str) -> bool {
    let rest = v
        .strip_prefix("xvd")
        .or_else(|| v.strip_prefix("hd"))
        .or_else(|| v.strip_prefix("sd"));
    match rest {
        Some(r) => {
            let letters = r.bytes().take_while(|c| c.is_ascii_lowercase()).count();
            (1..=3).contains(&letters) && r[letters..].bytes().all(|c| c.is_ascii_digit())
        }
        None => false,
    }
}

fn access(s: &str) -> Result<DiskAccess, String> {
    match s {
        "r" | "ro" => Ok(DiskAccess::ReadOnly),
        "w" | "rw" | "" => Ok(DiskAccess::ReadWrite),
        _ => Err(format!("access {s:?} must be r, ro, w or rw")),
    }
}

impl DiskSpec {
    pub fn parse(s: &str) -> Result<Self, String> {
        let items: Vec<&str> = s.split(',').map(str::trim).collect();
        let mut d = DiskSpec {
            target: String::new(),
            format: "raw".into(),
            vdev: String::new(),
            access: DiskAccess::ReadWrite,
            backend_type: "file".into(),
        };
        if items.iter().any(|i| i.contains('=')) {
            for it in items {
                let (k, v) = it
                    .split_once('=')
                    .ok_or_else(|| format!("{it:?} is not key=value"))?;
                match k.trim() {
                    "target" => d.target = v.trim().into(),
                    "format" => d.format = v.trim().into(),
                    "vdev" => d.vdev = v.trim().into(),
                    "access" => d.access = access(v.trim())?,
                    "backendtype" => d.backend_type = v.trim().into(),
                    "devtype" | "backend" | "script" => {}
                    other => return Err(format!("unknown disk key {other:?}")),
                }
            }
        } else {
            let (target, format, vdev, acc) = match items.as_slice() {
                [t, v, a] => (*t, None, *v, *a),
                [t, f, v, a] => (*t, Some(*f), *v, *a),
                _ => {
                    return Err(format!(
                        "{s:?}: expected target,vdev,access or target,format,vdev,access"
                    ))
                }
            };
            d.target = target.into();
            if let Some(f) = format {
                d.format = f.into();
            }
            d.vdev = vdev.into();
            d.access = access(acc)?;
        }
        for (prefix, kind) in [
            ("phy:", "phy"),
            ("file:", "file"),
            ("tap:aio:", "file"),
            ("aio:", "file"),
        ] {
            if let Some(t) = d.target.strip_prefix(prefix) {
                d.backend_type = kind.into();
                d.target = t.into();
            }
        }
        if d.target.is_empty() {
            return Err(format!("{s:?}: no target"));
        }
        if !valid_vdev(&d.vdev) {
            return Err(format!(
                "{s:?}: virtual device {:?} must look like xvda, hdb or sdc1",
                d.vdev
            ));
        }
        if !["raw", "qcow2", "vhd", "qcow"].contains(&d.format.as_str()) {
            return Err(format!(
                "{s:?}: format {:?} must be raw, qcow, qcow2 or vhd",
                d.format
            ));
        }
        Ok(d)
    }
}

fn valid_mac(m: &str) -> bool {
    let parts: Vec<&str> = m.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|c| c.is_ascii_hexdigit()))
}

impl VifSpec {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut v = VifSpec::default();
        for it in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (k, val) = it
                .split_once('=')
                .ok_or_else(|| format!("{it:?} is not key=value"))?;
            let val = Some(val.trim().to_string());
            match k.trim() {
                "mac" => v.mac = val,
                "bridge" => v.bridge = val,
                "ip" => v.ip = val,
                "vifname" => v.vifname = val,
                "model" => v.model = val,
                "rate" => v.rate = val,
                "script" => v.script = val,
                "type" | "backend" | "gatewaydev" | "devid" => {}
                other => return Err(format!("unknown vif key {other:?}")),
            }
        }
        if let Some(m) = &v.mac {
            if !valid_mac(m) {
                return Err(format!(
                    "mac {m:?} must be six hex pairs like 00:16:3e:12:34:56"
                ));
            }
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks() {
        let d = DiskSpec::parse("phy:/dev/vg/web,xvda,w").unwrap();
        assert_eq!(
            (
                d.target.as_str(),
                d.vdev.as_str(),
                d.access,
                d.backend_type.as_str()
            ),
            ("/dev/vg/web", "xvda", DiskAccess::ReadWrite, "phy")
        );
        let d = DiskSpec::parse("/img.qcow2,qcow2,xvdb,ro").unwrap();
        assert_eq!(
            (d.format.as_str(), d.access),
            ("qcow2", DiskAccess::ReadOnly)
        );
        let d = DiskSpec::parse("format=raw, vdev=xvdc, access=rw, target=/x").unwrap();
        assert_eq!(d.target, "/x");
        for bad in [
            "/img",
            "/img,xvda,q",
            "/img,floppy,w",
            ",xvda,w",
            "/i,xvda,w,extra,more",
            "/i,vmdk,xvda,w",
            "color=red",
        ] {
            assert!(DiskSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn vifs() {
        let v = VifSpec::parse("mac=00:16:3e:01:02:03,bridge=xenbr0").unwrap();
        assert_eq!(v.bridge.as_deref(), Some("xenbr0"));
        assert!(VifSpec::parse("").is_ok());
        assert!(VifSpec::parse("mac=zz:16:3e:01:02:03").is_err());
        assert!(VifSpec::parse("bridge").is_err());
        assert!(VifSpec::parse("flavour=x").is_err());
    }
}
