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
    /// xl's `direct-io-safe` flag: serve with `O_DIRECT` (bypass the host page cache).
    #[serde(default)]
    pub direct_io: bool,
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
    /// xl's `devid`: the vif's device number (`device/vif/<devid>`); the toolstack
    /// gives one when absent.
    #[serde(default)]
    pub devid: Option<u32>,
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

/// The drive index and partition of `<prefix><letters><partition>` (libxl's
/// `device_virtdisk_matches`: letters count in bijective base 26, `a` = 0, `aa` = 26;
/// no leading zero in the partition).
fn drive_and_partition(v: &str, prefix: &str, max_disk: u32, max_part: u32) -> Option<(u32, u32)> {
    let rest = v.strip_prefix(prefix)?;
    let letters = rest.bytes().take_while(|c| c.is_ascii_lowercase()).count();
    if letters == 0 {
        return None;
    }
    let mut disk: i64 = -1;
    for c in rest[..letters].bytes() {
        disk = (disk + 1) * 26 + i64::from(c - b'a');
        if disk > i64::from(max_disk) {
            return None;
        }
    }
    let part = &rest[letters..];
    let partition = if part.is_empty() {
        0
    } else if part.starts_with('0') || !part.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    } else {
        part.parse::<u32>().ok().filter(|p| *p <= max_part)?
    };
    Some((u32::try_from(disk).ok()?, partition))
}

/// Xen's device number of a virtual device name (libxl's
/// `libxl__device_disk_dev_number`): `xvdX[N]` is `202 << 8 | disk << 4 | N` for the
/// first 16 disks and 16 partitions, else `1 << 28 | disk << 8 | N`; `hdX[N]` (a..d)
/// is major 3 (a, b) or 22 (c, d) `<< 8 | (disk & 1) << 6 | N`; `sdX[N]` is
/// `8 << 8 | disk << 4 | N`. So `hda` is 768 (the device Mini-OS opens) and `xvda`
/// 51712. `None` for a name libxl refuses.
pub fn vdev_devid(v: &str) -> Option<u32> {
    if let Some((disk, part)) = drive_and_partition(v, "xvd", (1 << 20) - 1, 255) {
        return Some(if disk <= 15 && part <= 15 {
            (202 << 8) | (disk << 4) | part
        } else {
            (1 << 28) | (disk << 8) | part
        });
    }
    if let Some((disk, part)) = drive_and_partition(v, "hd", 3, 63) {
        let major = if disk < 2 { 3 } else { 22 };
        return Some((major << 8) | ((disk & 1) << 6) | part);
    }
    if let Some((disk, part)) = drive_and_partition(v, "sd", 15, 15) {
        return Some((8 << 8) | (disk << 4) | part);
    }
    None
}

/// The disk keys of the key=value form.
const DISK_KEYS: [&str; 8] = [
    "target",
    "format",
    "vdev",
    "access",
    "backendtype",
    "devtype",
    "backend",
    "script",
];

/// Whether `rest` (what follows `target=`) holds `,KEY=` for a disk key.
fn followed_by_key(rest: &str) -> bool {
    rest.split(',').skip(1).any(|item| {
        item.split_once('=')
            .is_some_and(|(k, _)| DISK_KEYS.contains(&k.trim()))
    })
}

fn access(s: &str) -> Result<DiskAccess, String> {
    match s {
        "r" | "ro" => Ok(DiskAccess::ReadOnly),
        "w" | "rw" | "" => Ok(DiskAccess::ReadWrite),
        _ => Err(format!("access {s:?} must be r, ro, w or rw")),
    }
}

impl DiskSpec {
    /// Xen's device number of the disk's `vdev` (see [`vdev_devid`]); parsed disks
    /// always have one.
    pub fn devid(&self) -> Option<u32> {
        vdev_devid(&self.vdev)
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        // In the key=value form `target=` comes last and takes the rest of the text,
        // commas included (xl-disk-configuration). A target followed by more known
        // keys is read as one item, as before.
        let (s, rest_target) = match s.find("target=") {
            Some(i)
                if (i == 0 || s[..i].trim_end().ends_with(','))
                    && !followed_by_key(&s[i + "target=".len()..]) =>
            {
                (
                    s[..i].trim_end().trim_end_matches(','),
                    Some(s[i + "target=".len()..].trim()),
                )
            }
            _ => (s, None),
        };
        let mut items: Vec<&str> = if s.trim().is_empty() {
            Vec::new()
        } else {
            s.split(',').map(str::trim).collect()
        };
        // Bare flags may appear anywhere (xl-disk-configuration).
        let direct_io = items.contains(&"direct-io-safe");
        items.retain(|i| *i != "direct-io-safe");
        let mut d = DiskSpec {
            target: String::new(),
            format: "raw".into(),
            vdev: String::new(),
            access: DiskAccess::ReadWrite,
            backend_type: "file".into(),
            direct_io,
        };
        if rest_target.is_some() || items.iter().any(|i| i.contains('=')) {
            if let Some(t) = rest_target {
                d.target = t.into();
            }
            for it in items {
                let (k, v) = it
                    .split_once('=')
                    .ok_or_else(|| format!("{it:?} is not key=value"))?;
                match k.trim() {
                    "target" => d.target = v.trim().into(),
                    "backendtype" => {
                        d.backend_type = match v.trim() {
                            "phy" => "phy".into(),
                            "tap" | "file" => "file".into(),
                            other => {
                                return Err(format!(
                                    "backendtype {other:?} is not supported (phy or tap)"
                                ))
                            }
                        }
                    }
                    "format" => d.format = v.trim().into(),
                    "vdev" => d.vdev = v.trim().into(),
                    "access" => d.access = access(v.trim())?,
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
        if !valid_vdev(&d.vdev) || vdev_devid(&d.vdev).is_none() {
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
                "devid" => {
                    let n = val.as_deref().unwrap_or_default();
                    v.devid = Some(
                        n.parse::<u32>()
                            .map_err(|_| format!("devid {n:?} is not a number"))?,
                    )
                }
                "type" | "backend" | "gatewaydev" => {}
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
    fn device_numbers_follow_libxl() {
        for (v, n) in [
            ("xvda", 51712),
            ("xvdb", 51728),
            ("xvda1", 51713),
            ("xvdp15", 51712 + 15 * 16 + 15),
            ("xvdq", (1 << 28) | (16 << 8)),
            ("xvda16", (1 << 28) | 16),
            ("xvdaa", (1 << 28) | (26 << 8)),
            ("hda", 768),
            ("hdb", 832),
            ("hdc", 5632),
            ("hdd", 5696),
            ("hda1", 769),
            ("sda", 2048),
            ("sdb2", 2066),
        ] {
            assert_eq!(vdev_devid(v), Some(n), "{v}");
        }
        for bad in [
            "hde", "sdq", "xvd", "xvda0", "xvda01", "hda64", "sda16", "vda", "xvdzzzzz",
        ] {
            assert_eq!(vdev_devid(bad), None, "{bad}");
        }
        assert!(DiskSpec::parse("/i,hde,w").is_err());
        assert_eq!(DiskSpec::parse("/i,hda,w").unwrap().devid(), Some(768));
    }

    #[test]
    fn direct_io_safe_is_a_flag_anywhere() {
        for s in [
            "file:/i.img,xvda,w,direct-io-safe",
            "direct-io-safe,file:/i.img,xvda,w",
            "vdev=xvda,access=w,direct-io-safe,target=/i.img",
        ] {
            let d = DiskSpec::parse(s).unwrap();
            assert!(d.direct_io, "{s}");
            assert_eq!(
                (d.target.as_str(), d.vdev.as_str()),
                ("/i.img", "xvda"),
                "{s}"
            );
        }
        assert!(!DiskSpec::parse("file:/i.img,xvda,w").unwrap().direct_io);
    }

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
        // target= is last and keeps its commas; its prefix sets the backend type.
        let d = DiskSpec::parse("vdev=xvdb,access=r,target=phy:/dev/vg/a,b").unwrap();
        assert_eq!(
            (d.target.as_str(), d.backend_type.as_str(), d.access),
            ("/dev/vg/a,b", "phy", DiskAccess::ReadOnly)
        );
        let d = DiskSpec::parse("vdev=xvdb, backendtype=phy, target=/dev/loop0").unwrap();
        assert_eq!(d.backend_type, "phy");
        assert!(DiskSpec::parse("vdev=xvdb,backendtype=qdisk,target=/x").is_err());
        assert!(DiskSpec::parse("vdev=xvdb,target=").is_err());
        assert!(DiskSpec::parse("target=/x").is_err(), "no vdev");
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
        assert_eq!(VifSpec::parse("devid=3").unwrap().devid, Some(3));
        assert!(VifSpec::parse("devid=-1").is_err());
    }
}
