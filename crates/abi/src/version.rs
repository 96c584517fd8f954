//! `xen_version` sub-operations (xen/include/public/version.h).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub const XENVER_VERSION: u64 = 0;
pub const XENVER_EXTRAVERSION: u64 = 1;
pub const XENVER_COMPILE_INFO: u64 = 2;
pub const XENVER_CAPABILITIES: u64 = 3;
pub const XENVER_CHANGESET: u64 = 4;
pub const XENVER_PLATFORM_PARAMETERS: u64 = 5;
pub const XENVER_GET_FEATURES: u64 = 6;
pub const XENVER_PAGESIZE: u64 = 7;
pub const XENVER_GUEST_HANDLE: u64 = 8;
pub const XENVER_COMMANDLINE: u64 = 9;
pub const XENVER_BUILD_ID: u64 = 10;

/// `xen_extraversion_t`: 16 bytes.
pub const EXTRAVERSION_LEN: usize = 16;
/// `xen_capabilities_info_t`: 1024 bytes.
pub const CAPABILITIES_LEN: usize = 1024;
/// `xen_changeset_info_t`: 64 bytes.
pub const CHANGESET_LEN: usize = 64;
/// `xen_commandline_t`: 1024 bytes.
pub const COMMANDLINE_LEN: usize = 1024;
/// `xen_domain_handle_t`: 16 bytes.
pub const DOMAIN_HANDLE_LEN: usize = 16;

/// `xen_compile_info_t`.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CompileInfo {
    pub compiler: [u8; 64],
    pub compile_by: [u8; 16],
    pub compile_domain: [u8; 32],
    pub compile_date: [u8; 32],
}

/// `xen_platform_parameters_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct PlatformParameters {
    pub virt_start: u64,
}

/// `xen_feature_info_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct FeatureInfo {
    pub submap_idx: u32,
    pub submap: u32,
}

/// `xen_build_id_t` header (`len` then that many bytes of id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BuildIdHeader {
    pub len: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout_check::assert_layout;

    #[test]
    fn layouts() {
        assert_layout!(
            CompileInfo,
            size = 144,
            compiler = 0,
            compile_by = 64,
            compile_domain = 80,
            compile_date = 112
        );
        assert_layout!(PlatformParameters, size = 8, virt_start = 0);
        assert_layout!(FeatureInfo, size = 8, submap_idx = 0, submap = 4);
        assert_layout!(BuildIdHeader, size = 4, len = 0);
    }
}
