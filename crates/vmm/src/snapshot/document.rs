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
    /// What a Linux PV kernel sets up besides (version 3; absent before, as for a
    /// vCPU that never set any of it).
    #[serde(default)]
    pub pv: PvVcpuState,
}

/// Per-vCPU state of a Xen PV kernel beyond traps and registers (version 3). Its
/// page-table bases, guest GDT frames and the frame of a moved `vcpu_info` are in the
/// MMU's state ([`VmmState::pv_mmu`]); the GS bases in [`CpuState`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PvVcpuState {
    /// `VCPUOP_register_runstate_memory_area`'s guest address.
    #[serde(default)]
    pub runstate_area: Option<u64>,
    /// The CR4 the guest last wrote (`None`: never written, the vCPU's initial CR4).
    #[serde(default)]
    pub guest_cr4: Option<u64>,
    /// `PHYSDEVOP_set_iopl`'s virtual IOPL.
    #[serde(default)]
    pub virtual_iopl: u32,
    /// The vCPU ran guest user code (its `cr3` is the user L4).
    #[serde(default)]
    pub user_mode: bool,
    /// Guest-physical address of the `vcpu_info` moved with
    /// `VCPUOP_register_vcpu_info` (`None`: still in `shared_info`).
    #[serde(default)]
    pub vcpu_info: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct PvOnly {
        #[serde(default)]
        pv: PvVcpuState,
    }

    /// A version 2 vCPU (no `pv`) reads as one that never set any PV state; a
    /// version 3 one round-trips.
    #[test]
    fn pv_vcpu_state_is_optional_and_round_trips() {
        let old: PvOnly = serde_json::from_str(r#"{"state":"Running"}"#).unwrap();
        assert_eq!(old.pv, PvVcpuState::default());
        let pv = PvVcpuState {
            runstate_area: Some(0xffff_8880_0001_2340),
            guest_cr4: Some(0x6f0),
            virtual_iopl: 1,
            user_mode: true,
            vcpu_info: Some(0x1234_5040),
        };
        let json = serde_json::json!({ "pv": pv }).to_string();
        let back: PvOnly = serde_json::from_str(&json).unwrap();
        assert_eq!(back.pv, pv);
    }
}
