//! rxen's VMM state as it travels in the image's rxen state record (JSON, version
//! `rxen_migration::rxen_state::RXEN_STATE_VERSION`). Every field is checked again at
//! restore; nothing in it is trusted.

use serde::{Deserialize, Serialize};

use super::cpu::CpuState;
use crate::builder::{BootChannels, BootInfo};
use crate::evtchn::EvtchnSnapshot;
use crate::grant::GrantSnapshot;
use crate::traps::{Callbacks, TrapEntry};
use crate::vcpu::state::Runstate;
use crate::vcpu::VcpuState;

/// The whole VMM-side state of a saved domain.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmmState {
    /// The domain as it was configured (the name and domid are the restorer's).
    pub memory_mib: u64,
    pub vcpus: u32,
    pub cmdline: String,
    pub uuid: [u8; 16],
    /// Bytes of guest-physical memory the VMM gave the domain (RAM and rxen's pages).
    pub mem_bytes: u64,
    /// Where the builder put things (entry, rings, TSS, syscall stub, trap pages).
    pub boot: BootInfo,
    pub boot_channels: BootChannels,
    pub shared_info_base: u64,
    /// Guest TSC frequency.
    pub tsc_khz: u32,
    /// Guest system time (ns) when the domain was paused for the save.
    pub system_time_ns: u64,
    /// vCPUs online.
    pub online: u32,
    pub evtchn: EvtchnSnapshot,
    pub grants: GrantSnapshot,
    pub vcpu_states: Vec<VcpuSnapshot>,
    /// A Xen PV domain's direct-paging MMU: every frame's owner, type, counts and
    /// pin, each vCPU's page-table bases, rxen's reserved L4 slots. Checked at
    /// restore by a full recount against the restored page tables.
    pub pv_mmu: Option<crate::pv::mmu::Mmu>,
    /// The connected devices' backend state (version 2; absent in version 1, whose
    /// domains had no devices).
    #[serde(default)]
    pub devices: super::devices::DeviceStates,
    /// The vCPU that suspended the domain (Xen's suspend protocol) when it was
    /// saved suspended: the restored domain is a new domain to the guest — that vCPU's
    /// `SCHEDOP_shutdown` returns 0, every event channel but the xenstore and console
    /// ones is closed, and its devices start afresh (`devices` is empty).
    #[serde(default)]
    pub suspended_vcpu: Option<u32>,
}

/// One vCPU: scheduling record, trap state and processor state.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuSnapshot {
    pub state: VcpuState,
    pub initialised: bool,
    /// Singleshot timer deadline (guest system time, ns) and its generation.
    pub timer: Option<u64>,
    pub timer_generation: u64,
    pub runstate: Runstate,
    /// A `VCPUOP_initialise` context not loaded yet (Xen's `vcpu_guest_context`).
    pub pending_context: Option<Vec<u8>>,
    /// Trap table entries with a handler: `(vector, entry)`.
    pub trap_table: Vec<(u8, TrapEntry)>,
    pub callbacks: Callbacks,
    pub kernel_stack: (u16, u64),
    pub cpu: CpuState,
}
