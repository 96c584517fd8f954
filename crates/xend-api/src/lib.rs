//! The request and reply bodies of xend's HTTP API (`docs/openapi.json`).
//!
//! This crate owns the *shapes* that cross the API: xend serialises them, `xm`, the
//! benchmarks and the tests deserialise them, so a field renamed on one side is a
//! compile error on the other. It must not contain behaviour: no HTTP, no domain
//! state, no I/O.

use rxen_xlcfg::DomainSpec;
use serde::{Deserialize, Serialize};

/// Domain id of the host (Xen's domain 0), listed first by `GET /domains`.
pub const DOM0_ID: u32 = 0;
/// Name xl gives domain 0.
pub const DOM0_NAME: &str = "Domain-0";

/// Where a domain is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DomainState {
    Creating,
    Running,
    Paused,
    ShuttingDown,
    Destroying,
    /// Ended and kept for inspection (`on_* = preserve`) until destroyed.
    Crashed,
    /// Ended and kept (`on_* = preserve` after a clean shutdown).
    Shutdown,
    /// A managed domain that is not running.
    Halted,
}

impl DomainState {
    /// Every state, in a fixed order (for metrics).
    pub const ALL: [DomainState; 8] = [
        DomainState::Creating,
        DomainState::Running,
        DomainState::Paused,
        DomainState::ShuttingDown,
        DomainState::Destroying,
        DomainState::Crashed,
        DomainState::Shutdown,
        DomainState::Halted,
    ];

    /// The wire name (`running`, `shutting_down`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DomainState::Creating => "creating",
            DomainState::Running => "running",
            DomainState::Paused => "paused",
            DomainState::ShuttingDown => "shutting_down",
            DomainState::Destroying => "destroying",
            DomainState::Crashed => "crashed",
            DomainState::Shutdown => "shutdown",
            DomainState::Halted => "halted",
        }
    }

    /// Whether a VMM process exists for a domain in this state.
    pub fn has_vmm(self) -> bool {
        matches!(
            self,
            DomainState::Creating
                | DomainState::Running
                | DomainState::Paused
                | DomainState::ShuttingDown
                | DomainState::Destroying
        )
    }
}

impl std::fmt::Display for DomainState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One vCPU of a domain (`xm vcpu-list`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VcpuInfo {
    pub id: u32,
    /// Online (brought up by the guest) or not.
    pub online: bool,
    /// xl's state letters: `r` running, `b` blocked, `p` paused, `-` offline.
    pub state: String,
    /// CPU time of the vCPU's thread, seconds.
    pub cpu_time_s: f64,
    /// Host CPU it last ran on.
    pub host_cpu: Option<u32>,
    /// Host CPUs it may run on (`all`, or a list such as `0-1`).
    pub affinity: String,
}

/// What the API reports about a domain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DomainInfo {
    /// Absent for a halted managed domain.
    pub domid: Option<u32>,
    pub name: String,
    pub uuid: String,
    pub state: DomainState,
    /// xl's state letters: r b p s c d (`------` for halted managed domains).
    pub state_flags: String,
    pub memory_mib: u64,
    pub maxmem_mib: u64,
    pub vcpus: u32,
    pub maxvcpus: u32,
    pub uptime_s: Option<f64>,
    /// CPU time of all vCPUs, seconds.
    pub cpu_time_s: f64,
    /// Each vCPU.
    #[serde(default)]
    pub vcpu_list: Vec<VcpuInfo>,
    pub hypercalls: u64,
    pub managed: bool,
    /// The VMM process (absent when none runs).
    pub pid: Option<u32>,
    /// Unix time the domain was started.
    #[serde(default)]
    pub start_time: Option<f64>,
    /// How the domain ended, for `crashed` and `shutdown` domains.
    #[serde(default)]
    pub exit_reason: Option<String>,
    /// Its VMM process lives but did not answer the last status request (stopped,
    /// or overloaded). xend never starts a second copy of such a domain.
    #[serde(default)]
    pub unresponsive: bool,
    /// Console output the VMM dropped over its rate or size limit, bytes.
    #[serde(default)]
    pub console_dropped_bytes: u64,
    pub config: DomainSpec,
}

impl DomainInfo {
    /// Whether this is the host's entry (domain 0).
    pub fn is_dom0(&self) -> bool {
        self.domid == Some(DOM0_ID)
    }
}

/// Body of `POST /domains` and `POST /managed`: exactly one of `config` (xl.cfg text,
/// with optional `key=value` overrides) and `spec` (JSON).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<DomainSpec>,
    /// Directory relative `kernel=`/`ramdisk=` paths are resolved against (xm sends
    /// the config file's directory, as xl resolves them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_dir: Option<String>,
    /// Leave the domain paused after creation (`xm create -p`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
}

/// Reply of `POST /domains`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CreateReply {
    pub domain: DomainInfo,
    /// Settings that were accepted but are ignored or not applied yet.
    pub warnings: Vec<String>,
}

/// Body of `POST /domains/{id}/save` (`xm save`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaveRequest {
    /// Absolute path of the image to write (on xend's host; replaced if it exists).
    pub path: String,
    /// Keep the domain running after the save (`xm save -c`); otherwise it is
    /// destroyed once the image is complete.
    #[serde(default)]
    pub keep_running: bool,
}

/// Reply of `POST /domains/{id}/save`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaveReply {
    pub path: String,
    /// Pages written (all-zero pages are left out of the image).
    pub pages: u64,
    /// Image size in bytes.
    pub bytes: u64,
    /// How long the domain was paused for the save.
    pub paused_ms: u64,
    /// Whether the domain still runs (`keep_running`).
    pub kept_running: bool,
}

/// Body of `POST /domains/{id}/migrate` (`xm migrate`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateRequest {
    /// The target host's relocation server: a host name or address.
    pub host: String,
    /// Its port (Xen's 8002 when absent).
    #[serde(default)]
    pub port: Option<u16>,
    /// Pre-copy while the domain runs (`--live`); otherwise it is paused first.
    #[serde(default)]
    pub live: bool,
}

/// Xen's relocation port.
pub const RELOCATION_PORT: u16 = 8002;

/// Reply of `POST /domains/{id}/migrate`: the domain runs at the target and is gone
/// here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MigrateReply {
    /// `host:port` migrated to.
    pub target: String,
    /// The domain's id at the target.
    pub target_domid: u32,
    pub live: bool,
    /// Rounds, the stop-and-copy included.
    pub rounds: u32,
    /// Pages sent in each round; the last is the stop-and-copy.
    pub pages_per_round: Vec<u64>,
    pub pages_sent: u64,
    /// The domain's pages (pages sent / guest pages is the pre-copy's cost).
    pub guest_pages: u64,
    /// From the pause here to the target's domain running, in milliseconds.
    pub downtime_ms: f64,
    /// From the pause to the image's last byte sent (the rest of the downtime is the
    /// target's restore and start), in milliseconds.
    pub stop_and_copy_ms: f64,
    /// The whole migration, in milliseconds.
    pub total_ms: f64,
}

/// Body of `POST /restore` (`xm restore`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRequest {
    /// Absolute path of an image written by `xm save`.
    pub path: String,
    /// Leave the restored domain paused (`xm restore -p`).
    #[serde(default)]
    pub paused: bool,
}

/// Reply of `POST /managed`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManagedReply {
    pub name: String,
    pub warnings: Vec<String>,
}

/// Body of `POST /domains/{id}/rename`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameRequest {
    pub name: String,
}

/// Body of `POST /domains/{id}/vcpus`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpusRequest {
    pub count: u32,
}

/// Body of `POST /domains/{id}/memory` and `/maxmem`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryRequest {
    pub mib: u64,
}

/// Query of `POST /domains/{id}/shutdown` and `/reboot`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShutdownQuery {
    /// Seconds to wait for the guest (absent: return at once).
    pub wait: Option<f64>,
    /// Destroy the domain if it does not shut down in time.
    #[serde(default)]
    pub force: bool,
}

/// Body of `POST /domains/{id}/disks`: a disk to hot-plug into a running domain, in
/// xl's disk syntax (`file:/img,xvdb,w`, `phy:/dev/vg/lv,xvdc,r`, or the `key=value`
/// form with `target=` last).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskAttachRequest {
    pub disk: String,
}

/// Query of `DELETE /domains/{id}/disks/{dev}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskDetachQuery {
    /// Remove the disk without waiting for the guest to close it (`xl block-detach -f`).
    #[serde(default)]
    pub force: bool,
    /// Seconds to wait for the guest to close the device before forcing (default 10,
    /// as libxl; at most 600).
    #[serde(default)]
    pub wait: Option<f64>,
}

/// Reply of `DELETE /domains/{id}/disks/{dev}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiskDetachReply {
    pub vdev: String,
    pub devid: u32,
    /// The guest did not close the device in time (or `force` was asked): its ring
    /// was cut.
    pub forced: bool,
}

/// One virtual block device of a domain (`GET /domains/{id}/disks`, `xm block-list`),
/// with what xenstore says of its connection. Numbers the frontend has not published
/// are absent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// The guest's name of the device (`xvda`, `hda`).
    pub vdev: String,
    /// Xen's device number (`xl block-list`'s Vdev column).
    pub devid: u32,
    /// The backing file or block device.
    pub target: String,
    /// `file` or `phy`.
    pub backend_type: String,
    /// `r` or `w`.
    pub mode: String,
    /// The backend's domain (always Domain-0).
    pub backend_id: u32,
    /// The frontend's domain (`xl block-list`'s handle column).
    pub frontend_id: u32,
    /// The frontend's xenbus state (1 Initialising .. 6 Closed).
    pub frontend_state: Option<u32>,
    /// The backend's xenbus state.
    pub backend_state: Option<u32>,
    /// The event channel the frontend published.
    pub evtchn: Option<u32>,
    /// The ring's grant reference the frontend published.
    pub ring_ref: Option<u32>,
    pub backend_path: String,
}

/// Body of `POST /domains/{id}/nics`: a vif in xl's syntax
/// (`mac=..,bridge=..,ip=..,script=..,vifname=..,model=..[,devid=N]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NicAttachRequest {
    pub nic: String,
}

/// Query of `DELETE /domains/{id}/nics/{dev}` (as for disks).
pub type NicDetachQuery = DiskDetachQuery;

/// Reply of `DELETE /domains/{id}/nics/{dev}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NicDetachReply {
    pub devid: u32,
    pub mac: String,
    /// The guest did not close the vif in time (or `force` was asked): its rings were
    /// cut.
    pub forced: bool,
}

/// One virtual network interface of a domain (`GET /domains/{id}/nics`,
/// `xm network-list`), with what xenstore says of its connection. Numbers the
/// frontend has not published are absent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NicInfo {
    /// The vif's device number (`xl network-list`'s Idx).
    pub devid: u32,
    pub mac: String,
    /// `bridge` or `route` (`script=vif-route`).
    pub mode: String,
    /// The bridge the TAP is a port of (bridge mode).
    pub bridge: Option<String>,
    /// The guest's addresses (`ip=`; routed to it in route mode).
    pub ip: Option<String>,
    /// The host-side TAP device.
    pub vifname: String,
    /// The backend's domain (always Domain-0).
    pub backend_id: u32,
    /// The frontend's domain (`xl network-list`'s handle column is the devid).
    pub frontend_id: u32,
    /// The frontend's xenbus state (1 Initialising .. 6 Closed).
    pub frontend_state: Option<u32>,
    /// The backend's xenbus state.
    pub backend_state: Option<u32>,
    /// The event channel the frontend published (the TX one when split).
    pub evtchn: Option<u32>,
    pub tx_ring_ref: Option<u32>,
    pub rx_ring_ref: Option<u32>,
    pub backend_path: String,
}

/// Reply of `GET /domains/{id}/uptime`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UptimeReply {
    pub name: String,
    pub domid: Option<u32>,
    pub uptime_s: Option<f64>,
}

/// Body of every error reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: ErrorBody,
}

/// A stable machine code and a message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

/// Reply of `GET /info`: the host, with xl info's keys where they make sense here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    pub host: String,
    pub release: String,
    pub version: String,
    pub machine: String,
    pub nr_cpus: u32,
    pub max_cpu_id: u32,
    pub nr_nodes: u32,
    pub cores_per_socket: u32,
    pub threads_per_core: u32,
    pub cpu_mhz: u64,
    pub virt_caps: String,
    /// MiB.
    pub total_memory: u64,
    /// MiB not used by the host or domains (MemAvailable).
    pub free_memory: u64,
    pub xen_major: u32,
    pub xen_minor: u32,
    pub xen_extra: String,
    pub xen_version: String,
    pub xen_caps: String,
    pub xen_scheduler: String,
    pub xen_pagesize: u32,
    pub xend_version: String,
    /// Domains xend knows (domain 0 not counted).
    pub domains: u32,
    /// MiB given to domains.
    pub domain_memory_mib: u64,
}

/// One message of `GET /events` (server-sent events of type `domain`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DomainEvent {
    /// Unix time.
    pub time: f64,
    pub domid: Option<u32>,
    pub name: String,
    /// `created`, `destroyed`, `crashed`, `paused`, ...
    pub event: String,
    #[serde(default)]
    pub detail: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_have_their_wire_names() {
        for s in DomainState::ALL {
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::Value::String(s.as_str().into())
            );
        }
    }

    #[test]
    fn create_request_refuses_unknown_fields_and_skips_empty_ones() {
        assert!(serde_json::from_str::<CreateRequest>(r#"{"cfg":"x"}"#).is_err());
        let r = CreateRequest {
            config: Some("name='a'".into()),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"config":"name='a'"}"#
        );
    }
}
