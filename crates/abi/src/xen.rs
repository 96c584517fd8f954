//! Core structures of xen/include/public/xen.h for x86-64: `start_info`,
//! `shared_info`, `vcpu_info`, `vcpu_time_info`.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `XEN_LEGACY_MAX_VCPUS`: `vcpu_info` slots in `shared_info`.
pub const LEGACY_MAX_VCPUS: usize = 32;
/// Bits per `xen_ulong_t`, and words in the 2-level event bitmaps.
pub const BITS_PER_EVTCHN_WORD: usize = 64;
/// Ports of the 2-level event-channel ABI on x86-64 (64 * 64).
pub const NR_EVENT_CHANNELS: usize = BITS_PER_EVTCHN_WORD * BITS_PER_EVTCHN_WORD;
/// `MAX_GUEST_CMDLINE`.
pub const MAX_GUEST_CMDLINE: usize = 1024;

/// `SIF_*` flags of `start_info.flags`.
pub const SIF_PRIVILEGED: u32 = 1 << 0;
pub const SIF_INITDOMAIN: u32 = 1 << 1;

/// `struct vcpu_time_info`: the pvclock of one vCPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuTimeInfo {
    pub version: u32,
    pub pad0: u32,
    pub tsc_timestamp: u64,
    pub system_time: u64,
    pub tsc_to_system_mul: u32,
    pub tsc_shift: i8,
    pub flags: u8,
    pub pad1: [u8; 2],
}

/// `XEN_PVCLOCK_TSC_STABLE_BIT`: all vCPUs' clocks agree.
pub const PVCLOCK_TSC_STABLE: u8 = 1 << 0;

/// `struct arch_vcpu_info` (x86).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ArchVcpuInfo {
    pub cr2: u64,
    pub pad: u64,
}

/// `struct vcpu_info`: one vCPU's event state and clock, 64 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuInfo {
    pub evtchn_upcall_pending: u8,
    pub evtchn_upcall_mask: u8,
    pub pad: [u8; 6],
    pub evtchn_pending_sel: u64,
    pub arch: ArchVcpuInfo,
    pub time: VcpuTimeInfo,
}

/// `struct arch_shared_info` (x86-64).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ArchSharedInfo {
    pub max_pfn: u64,
    pub pfn_to_mfn_frame_list_list: u64,
    pub nmi_reason: u64,
    pub p2m_cr3: u64,
    pub p2m_vaddr: u64,
    pub p2m_generation: u64,
}

/// `struct shared_info` (x86-64).
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SharedInfo {
    pub vcpu_info: [VcpuInfo; LEGACY_MAX_VCPUS],
    pub evtchn_pending: [u64; BITS_PER_EVTCHN_WORD],
    pub evtchn_mask: [u64; BITS_PER_EVTCHN_WORD],
    pub wc_version: u32,
    pub wc_sec: u32,
    pub wc_nsec: u32,
    pub wc_sec_hi: u32,
    pub arch: ArchSharedInfo,
}

/// `struct start_info` (x86-64), with the `domU` console variant.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct StartInfo {
    pub magic: [u8; 32],
    pub nr_pages: u64,
    pub shared_info: u64,
    pub flags: u32,
    pub pad0: u32,
    pub store_mfn: u64,
    pub store_evtchn: u32,
    pub pad1: u32,
    pub console_mfn: u64,
    pub console_evtchn: u32,
    pub pad2: u32,
    pub pt_base: u64,
    pub nr_pt_frames: u64,
    pub mfn_list: u64,
    pub mod_start: u64,
    pub mod_len: u64,
    pub cmd_line: [u8; MAX_GUEST_CMDLINE],
    pub first_p2m_pfn: u64,
    pub nr_p2m_frames: u64,
}

/// Byte offsets inside `shared_info`, for atomic access to single words.
pub mod shared_info_offsets {
    use super::*;
    /// Offset of `vcpu_info[vcpu]`.
    pub const fn vcpu_info(vcpu: usize) -> usize {
        core::mem::offset_of!(SharedInfo, vcpu_info) + vcpu * core::mem::size_of::<VcpuInfo>()
    }
    /// Offset of `evtchn_pending[word]`.
    pub const fn evtchn_pending(word: usize) -> usize {
        core::mem::offset_of!(SharedInfo, evtchn_pending) + word * 8
    }
    /// Offset of `evtchn_mask[word]`.
    pub const fn evtchn_mask(word: usize) -> usize {
        core::mem::offset_of!(SharedInfo, evtchn_mask) + word * 8
    }
    pub const UPCALL_PENDING: usize = core::mem::offset_of!(VcpuInfo, evtchn_upcall_pending);
    pub const UPCALL_MASK: usize = core::mem::offset_of!(VcpuInfo, evtchn_upcall_mask);
    pub const PENDING_SEL: usize = core::mem::offset_of!(VcpuInfo, evtchn_pending_sel);
    pub const TIME: usize = core::mem::offset_of!(VcpuInfo, time);
    /// Offset of `vcpu_info.arch.cr2`.
    pub const ARCH_CR2: usize =
        core::mem::offset_of!(VcpuInfo, arch) + core::mem::offset_of!(ArchVcpuInfo, cr2);
    pub const WC_VERSION: usize = core::mem::offset_of!(SharedInfo, wc_version);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout_check::assert_layout;

    #[test]
    fn layouts() {
        assert_layout!(
            VcpuTimeInfo,
            size = 32,
            version = 0,
            pad0 = 4,
            tsc_timestamp = 8,
            system_time = 16,
            tsc_to_system_mul = 24,
            tsc_shift = 28,
            flags = 29,
            pad1 = 30
        );
        assert_layout!(ArchVcpuInfo, size = 16, cr2 = 0, pad = 8);
        assert_layout!(
            VcpuInfo,
            size = 64,
            evtchn_upcall_pending = 0,
            evtchn_upcall_mask = 1,
            evtchn_pending_sel = 8,
            arch = 16,
            time = 32
        );
        assert_layout!(
            ArchSharedInfo,
            size = 48,
            max_pfn = 0,
            pfn_to_mfn_frame_list_list = 8,
            nmi_reason = 16,
            p2m_cr3 = 24,
            p2m_vaddr = 32,
            p2m_generation = 40
        );
        assert_layout!(
            SharedInfo,
            size = 3136,
            vcpu_info = 0,
            evtchn_pending = 2048,
            evtchn_mask = 2560,
            wc_version = 3072,
            wc_sec = 3076,
            wc_nsec = 3080,
            wc_sec_hi = 3084,
            arch = 3088
        );
        assert_layout!(
            StartInfo,
            size = 1168,
            magic = 0,
            nr_pages = 32,
            shared_info = 40,
            flags = 48,
            store_mfn = 56,
            store_evtchn = 64,
            console_mfn = 72,
            console_evtchn = 80,
            pt_base = 88,
            nr_pt_frames = 96,
            mfn_list = 104,
            mod_start = 112,
            mod_len = 120,
            cmd_line = 128,
            first_p2m_pfn = 1152,
            nr_p2m_frames = 1160
        );
        assert!(core::mem::size_of::<SharedInfo>() <= 4096);
        assert!(core::mem::size_of::<StartInfo>() <= 4096);
    }

    #[test]
    fn shared_info_offsets_agree() {
        assert_eq!(shared_info_offsets::vcpu_info(1), 64);
        assert_eq!(shared_info_offsets::evtchn_pending(1), 2056);
        assert_eq!(shared_info_offsets::evtchn_mask(0), 2560);
        assert_eq!(shared_info_offsets::PENDING_SEL, 8);
        assert_eq!(shared_info_offsets::TIME, 32);
    }
}
