//! The control protocol between the toolstack (`xend`) and a domain's VMM (`xen-vmm`).
//!
//! This crate owns the *types* both sides exchange and their wire encoding: requests
//! ([`Request`]), replies ([`Reply`]), the domain status ([`Status`]) with the boot
//! report ([`BootReport`]: where the builder put the xenstore and console rings), and
//! the exit record ([`ExitRecord`]) a VMM leaves behind when its domain ends.
//!
//! The wire format is one JSON object per line each way on the VMM's control socket
//! (mode 0600). Requests are tagged by `op`, replies by `reply`. Lines longer than
//! [`MAX_LINE`] are refused.
//!
//! It also says which xenstore nodes a connected device's state stands for
//! ([`ConnectedVbd::frontend_nodes`], [`ConnectedVif::frontend_nodes`]): both sides
//! write them back (the VMM after a restore, xend after a xenstored restart).
//!
//! It must not contain behaviour of either side: no sockets, no domain state. Both
//! `xen-vmm` and `xend` (and tests) depend on it; it depends on neither.

use serde::{Deserialize, Serialize};

pub mod relocation;

/// Longest request or reply line the peer must accept, in bytes (without the newline).
pub const MAX_LINE: usize = 64 * 1024;
/// Longest request line a VMM accepts.
pub const MAX_REQUEST_LINE: usize = 4096;
/// Largest guest image (kernel file) a VMM loads, in bytes; the toolstack refuses
/// larger files before starting one.
pub const MAX_IMAGE_BYTES: u64 = 64 << 20;
/// Most bytes one [`Request::ConsoleInput`] may carry.
pub const MAX_CONSOLE_INPUT: usize = 2048;
/// Most bytes of console output one [`Reply::ConsoleTail`] carries. The VMM may return
/// fewer (the oldest are left out) so that the reply line stays within [`MAX_LINE`]
/// after JSON escaping.
pub const MAX_CONSOLE_TAIL: u64 = 32 * 1024;

/// What the toolstack asks of a VMM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Report the domain's [`Status`].
    Status,
    /// Stop every vCPU (they keep their state).
    Pause,
    /// Let the vCPUs run again.
    Unpause,
    /// End the domain now ([`ExitKind::Destroyed`]).
    Destroy,
    /// Raise `VIRQ_DEBUG` on every vCPU (Xen's debug key).
    DebugKey,
    /// Queue text on the guest's console input and raise `VIRQ_CONSOLE`.
    ConsoleInput { data: String },
    /// Return the last `max_bytes` (at most [`MAX_CONSOLE_TAIL`]) bytes of console
    /// output the VMM kept in memory ([`Reply::ConsoleTail`]).
    ConsoleTail { max_bytes: u64 },
    /// Start serving a disk hot-plugged into the running domain: `devid` is Xen's
    /// device number, whose xenbus nodes the toolstack has already written; the VMM
    /// opens `path` itself (a regular file or block device; `mode` says whether the
    /// guest may write) and runs the backend half of xenbus for it.
    AttachDisk {
        devid: u32,
        mode: DiskMode,
        path: String,
        /// Serve with `O_DIRECT` (xl's `direct-io-safe`).
        #[serde(default)]
        direct: bool,
    },
    /// Begin removing disk `devid` as Xen does: the backend goes Closing and waits for
    /// the frontend to close, then disconnects and goes Closed (the toolstack waits
    /// for backend `state` 6, then removes the nodes). With `force`, the ring is
    /// disconnected at once and the backend goes Closed without waiting for the guest
    /// (`xl block-detach -f`, or a frontend that never answered).
    DetachDisk {
        devid: u32,
        #[serde(default)]
        force: bool,
    },
    /// Start serving a vif hot-plugged into the running domain: `devid` is its device
    /// number, whose xenbus nodes the toolstack has already written. The VMM creates
    /// TAP `tap` (refused if an interface of that name exists), brings it up, and
    /// either adds it to `bridge` or, when `ips` are given (routed mode, Xen's
    /// `vif-route`), routes those addresses through it with proxy ARP and forwarding
    /// on; then runs the backend half of xenbus for it.
    AttachVif {
        devid: u32,
        mac: String,
        tap: String,
        #[serde(default)]
        bridge: Option<String>,
        /// IPv4 addresses (`A.B.C.D`) routed to the guest through the TAP.
        #[serde(default)]
        ips: Vec<String>,
    },
    /// Begin removing vif `devid` as Xen does (see [`Request::DetachDisk`]); its TAP
    /// (and the routes and bridge port that go with it) is deleted when the backend
    /// reaches Closed.
    DetachVif {
        devid: u32,
        #[serde(default)]
        force: bool,
    },
    /// Pause the domain and write it to `path` (created with mode 0600, replaced if
    /// it exists) as an xl save image (Xen's migration stream v2, `docs/migration.md`)
    /// with `config` (the toolstack's domain configuration) in its header. With
    /// `resume` the domain runs on afterwards (`xm save -c`); without, it stays paused
    /// for the toolstack to destroy. A failed save leaves the domain as it was.
    Save {
        path: String,
        #[serde(default)]
        config: String,
        #[serde(default)]
        resume: bool,
    },
    /// Migrate the domain to the relocation server at `address` (`host:port`) with
    /// `token` ([`relocation`]): with `live`, pre-copy rounds while the guest runs,
    /// then a stop-and-copy; without, paused first. The domain stays paused once the
    /// target says it runs (the toolstack destroys it); any failure (refusal, broken
    /// connection, the target's domain failing to start) leaves it as it was.
    Migrate {
        address: String,
        token: String,
        #[serde(default)]
        config: String,
        #[serde(default)]
        live: bool,
        /// The guest takes part in Xen's suspend protocol: once the pre-copy is over
        /// the VMM sends [`Reply::MigrationSuspendGuest`], the toolstack asks the
        /// guest to suspend (`control/shutdown` = `suspend`), and the VMM waits (at
        /// most 60 s, libxl's limit) for its `SHUTDOWN_suspend` before the
        /// stop-and-copy, instead of pausing it. Absent: false.
        #[serde(default)]
        suspend_guest: bool,
    },
    /// Say what the frontend of every connected device negotiated (ring grant
    /// references, event channels, queues, features), for the toolstack to write
    /// the frontend nodes back after xenstored lost them ([`Reply::DeviceStates`]).
    DeviceStates,
    /// Say how often the domain did what costs time so far: hypercalls by op and
    /// sub-op, KVM exits by reason, emulated instructions by kind, bounced traps by
    /// vector, event upcalls and guest-mode switches ([`Reply::Stats`]).
    Stats,
}

/// What the frontends of a domain's connected devices negotiated, by device number:
/// the nodes a frontend wrote before it connected, which it never writes again. The
/// same fields (and JSON shape) as the `devices` part of a saved image's VMM state
/// document (`docs/migration.md`), which holds more per device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectedDevices {
    #[serde(default)]
    pub vbds: Vec<(u32, ConnectedVbd)>,
    #[serde(default)]
    pub vifs: Vec<(u32, ConnectedVif)>,
}

/// A connected vbd's rings, one per queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectedVbd {
    pub rings: Vec<ConnectedRing>,
}

/// One queue's ring of a vbd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectedRing {
    /// `ring-ref` (one page) or `ring-ref0`.. in order.
    pub ring_refs: Vec<u32>,
    /// The guest's port of the ring's `event-channel`.
    pub evtchn: u32,
    /// Both ends offered `feature-persistent`.
    pub persistent: bool,
}

/// A connected vif's rings, event channel(s) and what it takes on its RX ring.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectedVif {
    pub tx_ring_ref: u32,
    pub rx_ring_ref: u32,
    pub evtchn: VifEventChannels,
    pub rx_offload: VifRxOffload,
}

/// A vif's event channel: one (`event-channel`) or split
/// (`event-channel-tx` / `event-channel-rx`); the guest's ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VifEventChannels {
    Shared(u32),
    Split { tx: u32, rx: u32 },
}

/// The frontend's RX features (`feature-sg`, `feature-no-csum-offload` negated,
/// `feature-ipv6-csum-offload`, `feature-gso-tcpv4`, `feature-gso-tcpv6`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VifRxOffload {
    pub sg: bool,
    pub csum_v4: bool,
    pub csum_v6: bool,
    pub gso_v4: bool,
    pub gso_v6: bool,
}

fn node(k: impl Into<String>, v: impl ToString) -> (String, String) {
    (k.into(), v.to_string())
}

fn flag(b: bool) -> u8 {
    u8::from(b)
}

impl ConnectedVbd {
    /// What blkfront wrote when it connected: `state` 4, `protocol`,
    /// `feature-persistent`, the queue count (more than one), `ring-page-order`
    /// (more than one page) and each queue's `ring-ref`/`ring-refN` and
    /// `event-channel` (under `queue-N/` with queues).
    pub fn frontend_nodes(&self) -> Vec<(String, String)> {
        let mut n = vec![node("state", 4), node("protocol", "x86_64-abi")];
        let persistent = self.rings.iter().any(|r| r.persistent);
        n.push(node("feature-persistent", flag(persistent)));
        let queues = self.rings.len();
        if queues > 1 {
            n.push(node("multi-queue-num-queues", queues));
        }
        let pages = self.rings.first().map_or(1, |r| r.ring_refs.len());
        if pages > 1 {
            n.push(node("ring-page-order", pages.trailing_zeros()));
        }
        for (q, r) in self.rings.iter().enumerate() {
            let dir = if queues > 1 {
                format!("queue-{q}/")
            } else {
                String::new()
            };
            if let [only] = r.ring_refs[..] {
                n.push(node(format!("{dir}ring-ref"), only));
            } else {
                for (i, g) in r.ring_refs.iter().enumerate() {
                    n.push(node(format!("{dir}ring-ref{i}"), g));
                }
            }
            n.push(node(format!("{dir}event-channel"), r.evtchn));
        }
        n
    }
}

impl ConnectedVif {
    /// What netfront wrote when it connected: `state` 4, both ring references,
    /// `request-rx-copy`, `feature-rx-notify`, the event channel(s) and the RX
    /// features it takes.
    pub fn frontend_nodes(&self) -> Vec<(String, String)> {
        let mut n = vec![
            node("state", 4),
            node("tx-ring-ref", self.tx_ring_ref),
            node("rx-ring-ref", self.rx_ring_ref),
            node("request-rx-copy", 1),
            // Every frontend a netback serves wrote it (Linux's netback refuses one
            // that did not); the backend does not keep it, so it is not in the state.
            node("feature-rx-notify", 1),
        ];
        match self.evtchn {
            VifEventChannels::Shared(p) => n.push(node("event-channel", p)),
            VifEventChannels::Split { tx, rx } => {
                n.push(node("event-channel-tx", tx));
                n.push(node("event-channel-rx", rx));
            }
        }
        let o = &self.rx_offload;
        n.extend([
            node("feature-sg", flag(o.sg)),
            node("feature-no-csum-offload", flag(!o.csum_v4)),
            node("feature-ipv6-csum-offload", flag(o.csum_v6)),
            node("feature-gso-tcpv4", flag(o.gso_v4)),
            node("feature-gso-tcpv6", flag(o.gso_v6)),
        ]);
        n
    }
}

/// Whether the guest may write a disk (xl's `r` / `w`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskMode {
    /// `r`: read-only.
    #[serde(rename = "r")]
    ReadOnly,
    /// `w`: read-write.
    #[serde(rename = "w")]
    ReadWrite,
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Not a request this protocol knows (bad JSON, unknown op, missing field).
    BadRequest,
    /// The request line or its payload is over a limit.
    TooLarge,
    /// The request is valid but the domain cannot do it now.
    WrongState,
    /// A device request the VMM cannot carry out: the disk cannot be opened or the
    /// TAP created, its device number is in use (attach) or unknown (detach), or no
    /// backend can run (the VMM was started without xenstored's socket).
    Device,
    /// A save that could not be carried out: the domain cannot be saved (a device
    /// backend that could not be quiesced) or the image could not be written.
    Save,
    /// A migration that did not complete: the target refused or failed, or the
    /// connection broke; the domain runs on here.
    Migrate,
}

/// A VMM's answer to one [`Request`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    /// The request was carried out.
    Done,
    /// The answer to [`Request::Status`].
    Status(Status),
    /// The request was refused.
    Error { kind: ErrorKind, message: String },
    /// The answer to [`Request::ConsoleTail`].
    ConsoleTail(ConsoleTail),
    /// The answer to [`Request::Save`]: pages written (all-zero pages are left out)
    /// and how long the domain was paused for it.
    Saved { pages: u64, paused_ms: u64 },
    /// The answer to [`Request::DeviceStates`].
    DeviceStates(ConnectedDevices),
    /// The answer to [`Request::Stats`].
    Stats(DomainStats),
    /// The answer to [`Request::Migrate`]: the domain runs at the target.
    Migrated(MigrationFigures),
    /// Sent before the answer to [`Request::Migrate`], once per pre-copy round:
    /// `pages` sent in round `round`, `dirty` pages written meanwhile (the next
    /// round's). Not an answer: the final reply follows on the same connection.
    MigrationProgress { round: u32, pages: u64, dirty: u64 },
    /// Sent during a [`Request::Migrate`] with `suspend_guest`, once the pre-copy is
    /// over: the toolstack now asks the guest to suspend itself. Not an answer.
    MigrationSuspendGuest,
}

/// A domain's counters since it started ([`Request::Stats`]): the ones that are not
/// zero, highest count first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainStats {
    pub counts: Vec<StatCount>,
}

/// One counter: `group` says what is counted (`hypercall`, `mmuext_op`, `exit`,
/// `emulated`, `trap`, `event`, ...), `name` which one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatCount {
    pub group: String,
    pub name: String,
    pub count: u64,
}

impl DomainStats {
    /// The header line of [`DomainStats::table`], for finding the table in a log.
    pub const TABLE_HEADER: &'static str = "domain statistics (group, name, count):";

    /// The counters as a text table: [`DomainStats::TABLE_HEADER`], then one line per
    /// counter (`  group  name  count`), at most `top` of them.
    pub fn table(&self, top: usize) -> String {
        let mut out = String::from(Self::TABLE_HEADER);
        for c in self.counts.iter().take(top) {
            out.push_str(&format!(
                "\n  {:<18} {:<32} {:>12}",
                c.group, c.name, c.count
            ));
        }
        out
    }

    /// Parses the lines of a [`DomainStats::table`] that follow its header (stops at
    /// the first line that is not one); unparsable lines end the table.
    pub fn parse_table<'a>(lines: impl Iterator<Item = &'a str>) -> Self {
        let mut counts = Vec::new();
        for line in lines {
            let mut words = line.split_whitespace();
            let (Some(group), Some(name), Some(count), None) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                break;
            };
            let Ok(count) = count.parse() else { break };
            counts.push(StatCount {
                group: group.into(),
                name: name.into(),
                count,
            });
        }
        Self { counts }
    }
}

/// What a migration took.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationFigures {
    /// The target's domain id.
    pub target_domid: u32,
    /// Pages sent in each round; the last is the stop-and-copy.
    pub pages_per_round: Vec<u64>,
    /// All pages sent.
    pub pages_sent: u64,
    /// The domain's pages.
    pub guest_pages: u64,
    /// From the pause to the target's `running`, in milliseconds.
    pub downtime_ms: f64,
    /// From the pause to the image's last byte (the rest of the downtime is the
    /// target's), in milliseconds.
    #[serde(default)]
    pub stop_and_copy_ms: f64,
    /// From the start to the target's `running`, in milliseconds.
    pub total_ms: f64,
}

/// The newest console output a VMM kept in memory, with its console counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleTail {
    /// The newest output, oldest first, as lossy UTF-8 (invalid sequences become
    /// U+FFFD; the first character may be cut).
    pub data: String,
    /// Bytes the guest wrote since boot (kept or dropped).
    pub total_bytes: u64,
    /// Bytes dropped by the console rate limit since boot.
    pub dropped_bytes: u64,
}

impl Reply {
    /// An error reply.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Reply::Error {
            kind,
            message: message.into(),
        }
    }
}

/// Where a vCPU is in its life (Xen's runstates, as the VMM schedules them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VcpuRunState {
    /// Not running guest code: never brought up, or taken down.
    Down,
    /// Running (or ready to run) guest code.
    Running,
    /// Waiting in `SCHEDOP_block` / `SCHEDOP_poll`.
    Blocked,
}

/// Time a vCPU spent in each of Xen's runstates (`VCPUOP_get_runstate_info`), ns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunstateTimes {
    pub running_ns: u64,
    pub runnable_ns: u64,
    pub blocked_ns: u64,
    pub offline_ns: u64,
}

/// One vCPU in a [`Status`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VcpuStatus {
    pub id: u32,
    pub state: VcpuRunState,
    pub paused: bool,
    /// Host CPU time consumed by the vCPU's thread (guest code and the hypercalls it
    /// made), ns: what Xen reports as a vCPU's CPU time.
    pub cpu_ns: u64,
    /// Time in each runstate since the domain was built.
    pub runstate: RunstateTimes,
    /// Hypercalls made by this vCPU.
    pub hypercalls: u64,
    /// Host CPU the vCPU thread last ran on, if known.
    pub host_cpu: Option<u32>,
}

/// Where the domain builder put the rings the toolstack connects (Xen's
/// `start_info.store_*` and `console.domU.*`). The toolstack introduces the domain to
/// xenstored with `store_mfn` and `store_evtchn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootReport {
    pub store_mfn: u64,
    pub store_evtchn: u32,
    pub console_mfn: u64,
    pub console_evtchn: u32,
}

/// The answer to [`Request::Status`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    pub domid: u16,
    pub memory_mib: u64,
    /// Guest system time (ns since the domain was built).
    pub uptime_ns: u64,
    /// Every vCPU is paused by the toolstack.
    pub paused: bool,
    pub vcpus: Vec<VcpuStatus>,
    /// The VMM's process id.
    pub pid: u32,
    pub boot: BootReport,
    /// Bytes of console output the guest wrote since boot (kept or dropped).
    #[serde(default)]
    pub console_bytes: u64,
    /// Bytes of console output dropped by the VMM's rate limit since boot.
    #[serde(default)]
    pub console_dropped_bytes: u64,
    /// The guest suspended itself (Xen's suspend protocol) and waits to be saved;
    /// `unpause` cancels the suspend.
    #[serde(default)]
    pub suspended: bool,
}

impl Status {
    /// CPU time of all vCPUs, ns.
    pub fn cpu_ns(&self) -> u64 {
        self.vcpus.iter().map(|v| v.cpu_ns).sum()
    }
    /// Hypercalls of all vCPUs.
    pub fn hypercalls(&self) -> u64 {
        self.vcpus.iter().map(|v| v.hypercalls).sum()
    }
    /// Whether any vCPU is running guest code (xl's `r` flag; else `b`).
    pub fn any_running(&self) -> bool {
        self.vcpus
            .iter()
            .any(|v| v.state == VcpuRunState::Running && !v.paused)
    }
}

/// How a domain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitKind {
    /// `SHUTDOWN_poweroff`.
    Poweroff,
    /// `SHUTDOWN_reboot`.
    Reboot,
    /// `SHUTDOWN_suspend`.
    Suspend,
    /// `SHUTDOWN_crash` from the guest, or the VMM died unexpectedly.
    Crash,
    /// The guest's watchdog expired.
    Watchdog,
    /// `SHUTDOWN_soft_reset`.
    SoftReset,
    /// A vCPU faulted with no handler.
    TripleFault,
    /// The VMM itself failed.
    Internal,
    /// Destroyed from outside (signal or [`Request::Destroy`]).
    Destroyed,
}

impl ExitKind {
    /// Exit status of `xen-vmm run` for this ending (documented in the README).
    pub fn exit_code(self) -> u8 {
        match self {
            ExitKind::Poweroff => 0,
            ExitKind::Internal => 1,
            ExitKind::Reboot => 3,
            ExitKind::Crash => 4,
            ExitKind::TripleFault => 5,
            ExitKind::Watchdog => 6,
            ExitKind::Suspend => 7,
            ExitKind::SoftReset => 8,
            ExitKind::Destroyed => 9,
        }
    }

    /// The ending an exit status stands for (2, usage error, and unknown codes have none).
    pub fn from_exit_code(code: i32) -> Option<Self> {
        Some(match code {
            0 => ExitKind::Poweroff,
            1 => ExitKind::Internal,
            3 => ExitKind::Reboot,
            4 => ExitKind::Crash,
            5 => ExitKind::TripleFault,
            6 => ExitKind::Watchdog,
            7 => ExitKind::Suspend,
            8 => ExitKind::SoftReset,
            9 => ExitKind::Destroyed,
            _ => return None,
        })
    }

    /// Xen's name of the shutdown reason (`xl` prints these).
    pub fn name(self) -> &'static str {
        match self {
            ExitKind::Poweroff => "poweroff",
            ExitKind::Reboot => "reboot",
            ExitKind::Suspend => "suspend",
            ExitKind::Crash => "crash",
            ExitKind::Watchdog => "watchdog",
            ExitKind::SoftReset => "soft_reset",
            ExitKind::TripleFault => "triple_fault",
            ExitKind::Internal => "internal",
            ExitKind::Destroyed => "destroyed",
        }
    }
}

/// What a VMM writes to its exit file when its domain ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub kind: ExitKind,
    /// `xen-vmm`'s exit status.
    pub code: u8,
    /// Human-readable reason.
    pub reason: String,
}

impl ExitRecord {
    pub fn new(kind: ExitKind, reason: impl Into<String>) -> Self {
        ExitRecord {
            kind,
            code: kind.exit_code(),
            reason: reason.into(),
        }
    }
}

/// A line that is not a message of this protocol.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("line of {len} bytes is over the {limit}-byte limit")]
    TooLong { len: usize, limit: usize },
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Encodes a message as one line (with its newline).
pub fn encode<T: Serialize>(msg: &T) -> String {
    // Serialising these plain data types cannot fail (no maps with non-string keys,
    // no custom serialisers); fall back to an error reply shape if it ever did.
    let mut s = serde_json::to_string(msg).unwrap_or_else(|e| {
        format!("{{\"reply\":\"error\",\"kind\":\"bad_request\",\"message\":\"encoding: {e}\"}}")
    });
    s.push('\n');
    s
}

/// Decodes one line (a trailing newline is allowed) into a message.
pub fn decode<T: serde::de::DeserializeOwned>(line: &str, limit: usize) -> Result<T, DecodeError> {
    let line = line.trim_end_matches(['\n', '\r']);
    if line.len() > limit {
        return Err(DecodeError::TooLong {
            len: line.len(),
            limit,
        });
    }
    Ok(serde_json::from_str(line)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_stats_table_parses_back_up_to_its_end() {
        let stats = DomainStats {
            counts: vec![
                StatCount {
                    group: "hypercall".into(),
                    name: "mmu_update".into(),
                    count: 26866,
                },
                StatCount {
                    group: "exit".into(),
                    name: "io_out_trap_stub".into(),
                    count: 7,
                },
            ],
        };
        let text = format!("{}\nnot a table line\n", stats.table(10));
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(DomainStats::TABLE_HEADER));
        assert_eq!(DomainStats::parse_table(lines), stats);
        assert_eq!(stats.table(1).lines().count(), 2);
        let reply = Reply::Stats(stats.clone());
        let line = encode(&reply);
        assert_eq!(decode::<Reply>(line.trim_end(), MAX_LINE).unwrap(), reply);
    }

    fn sample_status() -> Status {
        Status {
            name: "web".into(),
            domid: 3,
            memory_mib: 64,
            uptime_ns: 12,
            paused: false,
            vcpus: vec![VcpuStatus {
                id: 0,
                state: VcpuRunState::Blocked,
                paused: false,
                cpu_ns: 5_000_000_000,
                runstate: RunstateTimes {
                    running_ns: 1,
                    runnable_ns: 2,
                    blocked_ns: 3,
                    offline_ns: 4,
                },
                hypercalls: 9,
                host_cpu: Some(1),
            }],
            pid: 42,
            boot: BootReport {
                store_mfn: 4,
                store_evtchn: 1,
                console_mfn: 5,
                console_evtchn: 2,
            },
            console_bytes: 100,
            console_dropped_bytes: 7,
            suspended: false,
        }
    }

    #[test]
    fn requests_round_trip_and_have_stable_wire_names() {
        for (r, wire) in [
            (Request::Status, r#"{"op":"status"}"#),
            (Request::Pause, r#"{"op":"pause"}"#),
            (Request::DebugKey, r#"{"op":"debug-key"}"#),
            (
                Request::ConsoleInput {
                    data: "ls\n".into(),
                },
                r#"{"op":"console-input","data":"ls\n"}"#,
            ),
            (
                Request::ConsoleTail { max_bytes: 4096 },
                r#"{"op":"console-tail","max_bytes":4096}"#,
            ),
            (
                Request::AttachDisk {
                    devid: 51728,
                    mode: DiskMode::ReadWrite,
                    path: "/img/b.img".into(),
                    direct: false,
                },
                r#"{"op":"attach-disk","devid":51728,"mode":"w","path":"/img/b.img","direct":false}"#,
            ),
            (
                Request::DetachDisk {
                    devid: 51728,
                    force: true,
                },
                r#"{"op":"detach-disk","devid":51728,"force":true}"#,
            ),
            (
                Request::AttachVif {
                    devid: 1,
                    mac: "00:16:3e:00:00:01".into(),
                    tap: "vif3.1".into(),
                    bridge: None,
                    ips: vec!["192.0.2.5".into()],
                },
                r#"{"op":"attach-vif","devid":1,"mac":"00:16:3e:00:00:01","tap":"vif3.1","bridge":null,"ips":["192.0.2.5"]}"#,
            ),
            (
                Request::DetachVif {
                    devid: 1,
                    force: false,
                },
                r#"{"op":"detach-vif","devid":1,"force":false}"#,
            ),
        ] {
            assert_eq!(encode(&r), format!("{wire}\n"));
            assert_eq!(decode::<Request>(wire, MAX_REQUEST_LINE).unwrap(), r);
        }
    }

    #[test]
    fn replies_round_trip() {
        for r in [
            Reply::Done,
            Reply::Status(sample_status()),
            Reply::error(ErrorKind::TooLarge, "too big"),
            Reply::ConsoleTail(ConsoleTail {
                data: "boot\n".into(),
                total_bytes: 9,
                dropped_bytes: 4,
            }),
        ] {
            let line = encode(&r);
            assert_eq!(decode::<Reply>(&line, MAX_LINE).unwrap(), r);
        }
        assert_eq!(sample_status().cpu_ns(), 5_000_000_000);
        assert!(!sample_status().any_running());
        // A status from a VMM without console counters still decodes.
        let mut old = serde_json::to_value(sample_status()).unwrap();
        let obj = old.as_object_mut().unwrap();
        obj.remove("console_bytes");
        obj.remove("console_dropped_bytes");
        let s: Status = serde_json::from_value(old).unwrap();
        assert_eq!((s.console_bytes, s.console_dropped_bytes), (0, 0));
    }

    #[test]
    fn bad_requests_are_errors() {
        for bad in [
            "",
            "{",
            r#"{"op":"launch-missiles"}"#,
            r#"{"op":"console-input"}"#,
            r#"{"op":"attach-disk","devid":768,"mode":"rw","path":"/a"}"#,
            r#"{"op":"attach-disk","devid":-1,"mode":"r","path":"/a"}"#,
            r#"{"op":"detach-disk"}"#,
        ] {
            assert!(decode::<Request>(bad, MAX_REQUEST_LINE).is_err(), "{bad}");
        }
        let long = format!(r#"{{"op":"console-input","data":"{}"}}"#, "a".repeat(5000));
        assert!(matches!(
            decode::<Request>(&long, MAX_REQUEST_LINE),
            Err(DecodeError::TooLong {
                limit: MAX_REQUEST_LINE,
                ..
            })
        ));
    }

    #[test]
    fn exit_codes_are_distinct_and_invertible() {
        let all = [
            ExitKind::Poweroff,
            ExitKind::Reboot,
            ExitKind::Suspend,
            ExitKind::Crash,
            ExitKind::Watchdog,
            ExitKind::SoftReset,
            ExitKind::TripleFault,
            ExitKind::Internal,
            ExitKind::Destroyed,
        ];
        for k in all {
            assert_ne!(k.exit_code(), 2, "2 is the usage-error status");
            assert_eq!(ExitKind::from_exit_code(k.exit_code() as i32), Some(k));
        }
        let rec = ExitRecord::new(ExitKind::Crash, "x");
        assert_eq!(decode::<ExitRecord>(&encode(&rec), MAX_LINE).unwrap(), rec);
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_lines_never_panics(s in ".{0,300}") {
            let _ = decode::<Request>(&s, MAX_REQUEST_LINE);
            let _ = decode::<Reply>(&s, MAX_LINE);
            let _ = decode::<ExitRecord>(&s, MAX_LINE);
        }
    }
}
