//! From settings to a validated domain specification.

use serde::{Deserialize, Serialize};

use crate::devices::{DiskSpec, VifSpec};
use crate::syntax::{parse, ParseError, Setting, Value};

/// What to do when a domain powers off, reboots or crashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Destroy,
    Restart,
    Preserve,
    RenameRestart,
}

impl Action {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "destroy" => Action::Destroy,
            "restart" => Action::Restart,
            "preserve" => Action::Preserve,
            "rename-restart" => Action::RenameRestart,
            _ => return None,
        })
    }
}

/// A validated domain configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainSpec {
    pub name: String,
    #[serde(default)]
    pub uuid: Option<String>,
    /// MiB (default 128, as for a config file without `memory`).
    #[serde(default = "default_memory")]
    pub memory: u64,
    /// MiB; at least `memory`.
    #[serde(default)]
    pub maxmem: Option<u64>,
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    #[serde(default)]
    pub maxvcpus: Option<u32>,
    /// Guest image; `None` means the embedded default guest.
    #[serde(default)]
    pub kernel: Option<String>,
    /// Initial ramdisk (`ramdisk=`), for a Xen PV kernel: loaded after the kernel and
    /// given to it in `start_info.mod_start`/`mod_len`.
    #[serde(default)]
    pub ramdisk: Option<String>,
    #[serde(default)]
    pub cmdline: String,
    #[serde(default = "destroy")]
    pub on_poweroff: Action,
    #[serde(default = "restart")]
    pub on_reboot: Action,
    #[serde(default = "destroy")]
    pub on_crash: Action,
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    #[serde(default)]
    pub vifs: Vec<VifSpec>,
}

/// Memory of a domain whose config does not say (MiB), for both config forms.
pub const DEFAULT_MEMORY_MIB: u64 = 128;

fn default_memory() -> u64 {
    DEFAULT_MEMORY_MIB
}
fn default_vcpus() -> u32 {
    1
}
fn destroy() -> Action {
    Action::Destroy
}
fn restart() -> Action {
    Action::Restart
}

/// Why a configuration is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{0}")]
    Syntax(#[from] ParseError),
    #[error("line {line}, column {col}: {key}: {msg}")]
    Invalid {
        line: usize,
        col: usize,
        key: String,
        msg: String,
    },
    #[error("{0}")]
    Missing(String),
}

/// Keys this parser knows.
pub const KNOWN_KEYS: &[&str] = &[
    "name",
    "uuid",
    "memory",
    "maxmem",
    "vcpus",
    "maxvcpus",
    "kernel",
    "ramdisk",
    "cmdline",
    "extra",
    "root",
    "on_poweroff",
    "on_reboot",
    "on_crash",
    "disk",
    "vif",
    "type",
    "builder",
];

fn invalid(s: &Setting, msg: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        line: s.line,
        col: s.col,
        key: s.key.clone(),
        msg: msg.into(),
    }
}

fn string(s: &Setting) -> Result<String, SpecError> {
    match &s.value {
        Value::String(v) => Ok(v.clone()),
        other => Err(invalid(s, format!("expected a string, found {other}"))),
    }
}

fn number(s: &Setting, min: i64, max: i64) -> Result<i64, SpecError> {
    let n = match &s.value {
        Value::Number(n) => *n,
        Value::String(v) => v
            .trim()
            .parse()
            .map_err(|_| invalid(s, format!("expected a number, found {v:?}")))?,
        other => return Err(invalid(s, format!("expected a number, found {other}"))),
    };
    if n < min || n > max {
        return Err(invalid(s, format!("{n} is out of range {min}..={max}")));
    }
    Ok(n)
}

fn strings(s: &Setting) -> Result<Vec<String>, SpecError> {
    match &s.value {
        Value::List(items) => items
            .iter()
            .map(|v| match v {
                Value::String(x) => Ok(x.clone()),
                other => Err(invalid(
                    s,
                    format!("list items must be strings, found {other}"),
                )),
            })
            .collect(),
        Value::String(x) => Ok(vec![x.clone()]),
        other => Err(invalid(
            s,
            format!("expected a list of strings, found {other}"),
        )),
    }
}

/// Is `name` a valid domain name (letters, digits, `-_.`, 1..=64 chars, not all digits)?
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
        && !name.bytes().all(|c| c.is_ascii_digit())
}

/// Is `u` a UUID in its canonical 8-4-4-4-12 hex form?
pub fn valid_uuid(u: &str) -> bool {
    let groups: Vec<&str> = u.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// Largest memory, MiB.
pub const MAX_MEMORY_MIB: i64 = 16 * 1024;
/// Most vCPUs.
pub const MAX_VCPUS: i64 = 32;

impl DomainSpec {
    /// Parses and validates an xl.cfg file; returns the spec and warnings (unknown keys).
    pub fn from_xl(src: &str) -> Result<(DomainSpec, Vec<String>), SpecError> {
        let settings = parse(src)?;
        Self::from_settings(&settings)
    }

    /// Validates parsed settings; `overrides` (`key=value` from the command line) are
    /// parsed with the same syntax and applied last.
    pub fn from_settings(settings: &[Setting]) -> Result<(DomainSpec, Vec<String>), SpecError> {
        let mut warnings = Vec::new();
        let mut root: Option<(String, &Setting)> = None;
        let mut spec = DomainSpec {
            name: String::new(),
            uuid: None,
            memory: default_memory(),
            maxmem: None,
            vcpus: default_vcpus(),
            maxvcpus: None,
            kernel: None,
            ramdisk: None,
            cmdline: String::new(),
            on_poweroff: Action::Destroy,
            on_reboot: Action::Restart,
            on_crash: Action::Destroy,
            disks: Vec::new(),
            vifs: Vec::new(),
        };
        for s in settings {
            match s.key.as_str() {
                "name" => {
                    let n = string(s)?;
                    if !valid_name(&n) {
                        return Err(invalid(s, format!("{n:?} is not a valid name (letters, digits, '-', '_', '.'; at most 64; not only digits)")));
                    }
                    spec.name = n;
                }
                "uuid" => {
                    let u = string(s)?.to_ascii_lowercase();
                    if !valid_uuid(&u) {
                        return Err(invalid(s, format!("{u:?} is not a UUID")));
                    }
                    spec.uuid = Some(u);
                }
                "memory" => spec.memory = number(s, 8, MAX_MEMORY_MIB)? as u64,
                "maxmem" => spec.maxmem = Some(number(s, 8, MAX_MEMORY_MIB)? as u64),
                "vcpus" => spec.vcpus = number(s, 1, MAX_VCPUS)? as u32,
                "maxvcpus" => spec.maxvcpus = Some(number(s, 1, MAX_VCPUS)? as u32),
                "kernel" => spec.kernel = Some(string(s)?),
                "ramdisk" => spec.ramdisk = Some(string(s)?),
                "cmdline" | "extra" => {
                    let v = string(s)?;
                    if s.append && !spec.cmdline.is_empty() {
                        spec.cmdline.push(' ');
                        spec.cmdline.push_str(&v);
                    } else {
                        spec.cmdline = v;
                    }
                    if spec.cmdline.len() > 1023 {
                        return Err(invalid(s, "command line longer than 1023 bytes"));
                    }
                }
                // xl: `root=STRING` goes first on the kernel command line.
                "root" => root = Some((string(s)?, s)),
                "on_poweroff" | "on_reboot" | "on_crash" => {
                    let v = string(s)?;
                    let a = Action::parse(&v).ok_or_else(|| {
                        invalid(
                            s,
                            format!("{v:?} must be destroy, restart, preserve or rename-restart"),
                        )
                    })?;
                    match s.key.as_str() {
                        "on_poweroff" => spec.on_poweroff = a,
                        "on_reboot" => spec.on_reboot = a,
                        _ => spec.on_crash = a,
                    }
                }
                "disk" => {
                    let list = strings(s)?;
                    if !s.append {
                        spec.disks.clear();
                    }
                    for d in list {
                        spec.disks
                            .push(DiskSpec::parse(&d).map_err(|m| invalid(s, m))?);
                    }
                }
                "vif" => {
                    let list = strings(s)?;
                    if !s.append {
                        spec.vifs.clear();
                    }
                    for v in list {
                        spec.vifs
                            .push(VifSpec::parse(&v).map_err(|m| invalid(s, m))?);
                    }
                }
                "type" | "builder" => {
                    let v = string(s)?;
                    if v != "pv" && v != "linux" {
                        return Err(invalid(s, format!("only PV domains exist here, not {v:?}")));
                    }
                }
                other => warnings.push(format!(
                    "line {}, column {}: unknown setting {other:?} ignored",
                    s.line, s.col
                )),
            }
        }
        if let Some((r, s)) = root {
            spec.cmdline = if spec.cmdline.is_empty() {
                format!("root={r}")
            } else {
                format!("root={r} {}", spec.cmdline)
            };
            if spec.cmdline.len() > 1023 {
                return Err(invalid(s, "command line longer than 1023 bytes"));
            }
        }
        spec.validate()?;
        Ok((spec, warnings))
    }

    /// Cross-field checks (also for specs that arrive as JSON).
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.name.is_empty() {
            return Err(SpecError::Missing("name is required".into()));
        }
        if !valid_name(&self.name) {
            return Err(SpecError::Missing(format!(
                "{:?} is not a valid name",
                self.name
            )));
        }
        if let Some(u) = &self.uuid {
            if !valid_uuid(u) {
                return Err(SpecError::Missing(format!("{u:?} is not a UUID")));
            }
        }
        if !(8..=MAX_MEMORY_MIB as u64).contains(&self.memory) || !self.memory.is_multiple_of(2) {
            return Err(SpecError::Missing(format!(
                "memory {} MiB must be even and within 8..={MAX_MEMORY_MIB}",
                self.memory
            )));
        }
        if let Some(m) = self.maxmem {
            if m < self.memory {
                return Err(SpecError::Missing(format!(
                    "maxmem {m} is below memory {}",
                    self.memory
                )));
            }
        }
        if !(1..=MAX_VCPUS as u32).contains(&self.vcpus) {
            return Err(SpecError::Missing(format!(
                "vcpus {} must be within 1..={MAX_VCPUS}",
                self.vcpus
            )));
        }
        if let Some(m) = self.maxvcpus {
            if m < self.vcpus || m > MAX_VCPUS as u32 {
                return Err(SpecError::Missing(format!(
                    "maxvcpus {m} must be within vcpus..={MAX_VCPUS}"
                )));
            }
        }
        if self.cmdline.len() > 1023 {
            return Err(SpecError::Missing(
                "command line longer than 1023 bytes".into(),
            ));
        }
        let mut devids = Vec::new();
        for d in &self.disks {
            let Some(n) = d.devid() else {
                return Err(SpecError::Missing(format!(
                    "disk {:?}: {:?} is not a virtual device name",
                    d.target, d.vdev
                )));
            };
            if devids.contains(&n) {
                return Err(SpecError::Missing(format!(
                    "two disks use virtual device {:?} (device number {n})",
                    d.vdev
                )));
            }
            devids.push(n);
        }
        Ok(())
    }

    /// Applies `key=value` overrides (as `xm create cfg key=value` does).
    pub fn with_overrides(
        src: &str,
        overrides: &[String],
    ) -> Result<(DomainSpec, Vec<String>), SpecError> {
        let mut settings = parse(src)?;
        for (i, o) in overrides.iter().enumerate() {
            // `key=word` on a command line means a string, as with xl.
            let quoted;
            let o = match o.split_once('=') {
                Some((k, v))
                    if parse(o).is_err()
                        && !v.is_empty()
                        && !v.starts_with(['"', '\'', '['])
                        && !v.contains(['"', '\'', '\n']) =>
                {
                    quoted = format!("{k}=\"{v}\"");
                    &quoted
                }
                _ => o,
            };
            let mut extra = parse(o).map_err(|e| ParseError {
                line: e.line,
                col: e.col,
                msg: format!("override {}: {}", i + 1, e.msg),
            })?;
            settings.append(&mut extra);
        }
        Self::from_settings(&settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_spec_gets_the_same_defaults_as_a_config_file() {
        // Regression: the JSON form had no defaults ("missing field vcpus").
        let from_json: DomainSpec = serde_json::from_str(r#"{"name":"a"}"#).unwrap();
        let (from_cfg, _) = DomainSpec::from_xl("name='a'").unwrap();
        assert_eq!(from_json, from_cfg);
        from_json.validate().unwrap();
    }

    #[test]
    fn full_config() {
        let src = r#"
name = "web"
uuid = "6F8C3C3A-1234-4F5E-9ABC-0123456789AB"
memory = 256
maxmem = 512
vcpus = 2
maxvcpus = 4
kernel = "/guests/http"
ramdisk = "/guests/initrd.img"
extra = "port=80"
on_crash = "preserve"
disk = [ "phy:/dev/vg/web,xvda,w" ]
vif = [ "mac=00:16:3e:00:00:01,bridge=xenbr0" ]
colour = "blue"
"#;
        let (s, w) = DomainSpec::from_xl(src).unwrap();
        assert_eq!(s.name, "web");
        assert_eq!(
            s.uuid.as_deref(),
            Some("6f8c3c3a-1234-4f5e-9abc-0123456789ab")
        );
        assert_eq!(
            (s.memory, s.maxmem, s.vcpus, s.maxvcpus),
            (256, Some(512), 2, Some(4))
        );
        assert_eq!(s.cmdline, "port=80");
        assert_eq!(s.ramdisk.as_deref(), Some("/guests/initrd.img"));
        assert_eq!(
            (s.on_poweroff, s.on_reboot, s.on_crash),
            (Action::Destroy, Action::Restart, Action::Preserve)
        );
        assert_eq!(s.disks.len(), 1);
        assert_eq!(s.vifs[0].bridge.as_deref(), Some("xenbr0"));
        assert_eq!(
            w,
            vec!["line 14, column 1: unknown setting \"colour\" ignored"]
        );
    }

    #[test]
    fn two_disks_on_one_device_number_are_refused() {
        let (s, _) = DomainSpec::from_xl("name='a'\ndisk=['/a,xvda,w', '/b,xvdb,r']").unwrap();
        assert!(s.validate().is_ok());
        let e = DomainSpec::from_xl("name='a'\ndisk=['/a,xvda,w', 'target=/b,vdev=xvda']")
            .unwrap_err()
            .to_string();
        assert!(e.contains("two disks"), "{e}");
    }

    #[test]
    fn invalid_values_name_the_place() {
        let cases = [
            ("name = 'x y'", "line 1, column 1: name"),
            (
                "name='a'\nmemory = 3",
                "line 2, column 1: memory: 3 is out of range",
            ),
            (
                "name='a'\nvcpus = 'two'",
                "line 2, column 1: vcpus: expected a number",
            ),
            (
                "name='a'\non_crash = 'explode'",
                "line 2, column 1: on_crash",
            ),
            ("name='a'\ndisk = ['/x,floppy,w']", "line 2, column 1: disk"),
            (
                "name='a'\nvif = [1]",
                "line 2, column 1: vif: list items must be strings",
            ),
            ("name='a'\nuuid='nope'", "line 2, column 1: uuid"),
            ("name='a'\ntype='hvm'", "only PV"),
            ("memory = 64", "name is required"),
            (
                "name='a'\nmemory=64\nmaxmem=32",
                "maxmem 32 is below memory 64",
            ),
            ("name='a'\nmemory=33", "must be even"),
            ("name='a'\nvcpus=4\nmaxvcpus=2", "maxvcpus 2"),
            ("name = ", "line 1, column 8: expected a value"),
        ];
        for (src, want) in cases {
            let e = DomainSpec::from_xl(src).unwrap_err().to_string();
            assert!(e.contains(want), "{src:?}: {e}");
        }
    }

    #[test]
    fn overrides_apply_last() {
        let (s, _) = DomainSpec::with_overrides(
            "name='a'\nmemory=64",
            &["memory=128".into(), "name='b'".into()],
        )
        .unwrap();
        assert_eq!((s.name.as_str(), s.memory), ("b", 128));
        assert!(DomainSpec::with_overrides("name='a'", &["memory=".into()])
            .unwrap_err()
            .to_string()
            .contains("override 1"));
    }

    #[test]
    fn root_goes_first_on_the_command_line_as_xl_puts_it() {
        let cmd = |src: &str| DomainSpec::from_xl(src).map(|(s, _)| s.cmdline);
        let base = "name = \"l\"\nkernel = \"/k\"\n";
        assert_eq!(
            cmd(&format!(
                "{base}root = \"/dev/xvda1 ro\"\nextra = \"console=hvc0\"\n"
            ))
            .unwrap(),
            "root=/dev/xvda1 ro console=hvc0"
        );
        assert_eq!(
            cmd(&format!("{base}extra = \"quiet\"\nroot = \"/dev/xvda\"\n")).unwrap(),
            "root=/dev/xvda quiet"
        );
        assert_eq!(
            cmd(&format!("{base}root = \"/dev/xvda\"\n")).unwrap(),
            "root=/dev/xvda"
        );
        let long = "x".repeat(1020);
        assert!(matches!(
            cmd(&format!("{base}extra = \"{long}\"\nroot = \"/dev/xvda\"\n")),
            Err(SpecError::Invalid { .. })
        ));
        assert!(cmd(&format!("{base}root = 3\n")).is_err());
    }

    #[test]
    fn json_specs_validate() {
        let s: DomainSpec = serde_json::from_str(r#"{"name":"j","memory":64,"vcpus":1}"#).unwrap();
        assert!(s.validate().is_ok());
        assert_eq!(s.on_reboot, Action::Restart);
        let bad: DomainSpec =
            serde_json::from_str(r#"{"name":"j","memory":64,"vcpus":99}"#).unwrap();
        assert!(bad.validate().is_err());
    }
}
