//! A PV vCPU's XSAVE state, as Xen gives it to PV guests: the user states the guest may
//! enable in XCR0 ([`allowed_xcr0`]: x87, SSE, AVX and the three AVX-512 states the
//! host has; no PKRU, no AMX, no supervisor state), the KVM CPUID that lets KVM accept
//! CR4.OSXSAVE and those XCR0 values ([`kvm_cpuid`]), the vCPU's start
//! ([`enable`]: CR4.OSXSAVE set, XCR0 = x87|SSE, as Xen starts a PV vCPU) and the
//! checks of an `xsetbv` ([`valid_xcr0`], Xen's `set_xcr0` and the hardware's rules).
//!
//! With CR4.OSXSAVE in the vCPU's CR4, KVM loads the guest's XCR0 on entry, so user
//! code can use exactly the states the guest kernel enabled and saves. Without it (as
//! before), the guest ran with the host's XCR0: user code used AVX-512 while Linux,
//! told there was no XSAVE, saved only the FXSAVE state across context switches.
//! Nothing here reads guest memory.

use kvm_bindings::{kvm_cpuid_entry2, kvm_sregs, kvm_xcrs, CpuId};
use kvm_ioctls::VcpuFd;

use crate::traps::cpuid::{pv_cpuid, Cpuid};

/// XCR0's x87 and SSE bits: what a PV vCPU starts with.
pub const XCR0_INIT: u64 = 0b11;
const XCR0_X87: u64 = 1;
const XCR0_SSE: u64 = 1 << 1;
const XCR0_AVX: u64 = 1 << 2;
/// Opmask, ZMM_Hi256, Hi16_ZMM: AVX-512, all or none.
const XCR0_AVX512: u64 = 0b111 << 5;
/// The user states a PV guest may enable.
const PV_XCR0_MASK: u64 = XCR0_X87 | XCR0_SSE | XCR0_AVX | XCR0_AVX512;
/// CR4.OSXSAVE.
pub const CR4_OSXSAVE: u64 = 1 << 18;
/// `KVM_CPUID_FLAG_SIGNIFCANT_INDEX`: the entry is for one subleaf.
const KVM_CPUID_FLAG_SIGNIFICANT_INDEX: u32 = 1;

/// The XCR0 bits a PV guest may set on this host (`host` answers CPUID): 0 when the
/// host has no XSAVE or lacks x87/SSE in XCR0's supported bits.
pub fn allowed_xcr0(host: &impl Fn(u32, u32) -> Cpuid) -> u64 {
    if host(1, 0).ecx & (1 << 26) == 0 {
        return 0;
    }
    let leaf = host(0xd, 0);
    let host_mask = (u64::from(leaf.edx) << 32) | u64::from(leaf.eax);
    let mut allowed = host_mask & PV_XCR0_MASK;
    if allowed & XCR0_AVX512 != XCR0_AVX512 {
        allowed &= !XCR0_AVX512;
    }
    if allowed & XCR0_AVX == 0 {
        allowed &= !XCR0_AVX512;
    }
    if allowed & XCR0_INIT != XCR0_INIT {
        return 0;
    }
    allowed
}

/// Whether `xsetbv` may load `value` into XCR0 with `allowed` bits: x87 set, AVX only
/// with SSE, the AVX-512 states all or none and only with AVX, nothing outside
/// `allowed` (anything else is #GP, as on hardware and in Xen's `set_xcr0`).
pub fn valid_xcr0(value: u64, allowed: u64) -> bool {
    value & !allowed == 0
        && value & XCR0_X87 != 0
        && (value & XCR0_AVX == 0 || value & XCR0_SSE != 0)
        && (value & XCR0_AVX512 == 0
            || (value & XCR0_AVX512 == XCR0_AVX512 && value & XCR0_AVX != 0))
}

/// The vCPU CPUID KVM needs to accept CR4.OSXSAVE and XCR0 values: rxen's PV leaf 1
/// and leaf 0xD (its subleaves 0, 1 and each allowed state's).
pub fn kvm_cpuid(host: impl Fn(u32, u32) -> Cpuid) -> Result<CpuId, String> {
    let allowed = allowed_xcr0(&host);
    let entry = |function: u32, index: u32, flags: u32| {
        let r = pv_cpuid(function, index, XCR0_INIT, &host);
        kvm_cpuid_entry2 {
            function,
            index,
            flags,
            eax: r.eax,
            ebx: r.ebx,
            ecx: r.ecx,
            edx: r.edx,
            ..Default::default()
        }
    };
    let mut entries = vec![entry(1, 0, 0)];
    if allowed != 0 {
        for sub in (0..64u32).filter(|&s| s < 2 || allowed & (1 << s) != 0) {
            entries.push(entry(0xd, sub, KVM_CPUID_FLAG_SIGNIFICANT_INDEX));
        }
    }
    CpuId::from_entries(&entries).map_err(|e| format!("vCPU CPUID: {e:?}"))
}

/// Sets a new PV vCPU's CPUID ([`kvm_cpuid`]); with XSAVE on this host, also sets
/// CR4.OSXSAVE in `sregs` (to be loaded by the caller after this) and returns `true`:
/// the caller then loads [`XCR0_INIT`] with [`set_xcr0`] after the sregs.
pub fn set_cpuid(fd: &VcpuFd, sregs: Option<&mut kvm_sregs>) -> Result<bool, String> {
    let host = crate::traps::cpuid::host_cpuid;
    fd.set_cpuid2(&kvm_cpuid(host)?)
        .map_err(|e| format!("set cpuid: {e}"))?;
    let xsave = allowed_xcr0(&host) != 0;
    if let (true, Some(s)) = (xsave, sregs) {
        s.cr4 |= CR4_OSXSAVE;
    }
    Ok(xsave)
}

/// Loads `value` into the vCPU's XCR0 (`KVM_SET_XCRS`).
pub fn set_xcr0(fd: &VcpuFd, value: u64) -> Result<(), String> {
    let mut xcrs = kvm_xcrs {
        nr_xcrs: 1,
        ..Default::default()
    };
    xcrs.xcrs[0].xcr = 0;
    xcrs.xcrs[0].value = value;
    fd.set_xcrs(&xcrs).map_err(|e| format!("set xcrs: {e}"))
}

/// The vCPU's XCR0 (`KVM_GET_XCRS`); [`XCR0_INIT`] if KVM does not say.
pub fn current_xcr0(fd: &VcpuFd) -> u64 {
    fd.get_xcrs()
        .ok()
        .and_then(|x| {
            x.xcrs
                .iter()
                .take(x.nr_xcrs as usize)
                .find(|e| e.xcr == 0)
                .map(|e| e.value)
        })
        .unwrap_or(XCR0_INIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_with(xcr0: u32, xsave: bool) -> impl Fn(u32, u32) -> Cpuid {
        move |leaf, _| match leaf {
            1 => Cpuid {
                ecx: if xsave { 1 << 26 } else { 0 },
                ..Cpuid::default()
            },
            0xd => Cpuid {
                eax: xcr0,
                ..Cpuid::default()
            },
            _ => Cpuid::default(),
        }
    }

    #[test]
    fn allowed_states_are_the_user_ones_the_host_has() {
        assert_eq!(allowed_xcr0(&host_with(0x2e7, true)), 0xe7, "no PKRU");
        assert_eq!(allowed_xcr0(&host_with(0x7, true)), 0x7);
        assert_eq!(allowed_xcr0(&host_with(0x2e7, false)), 0, "no XSAVE");
        assert_eq!(allowed_xcr0(&host_with(0x1, true)), 0, "no SSE state");
        assert_eq!(allowed_xcr0(&host_with(0x63, true)), 0x3, "partial AVX-512");
    }

    #[test]
    fn xsetbv_values_follow_the_hardware_rules() {
        let allowed = 0xe7;
        for ok in [0x1, 0x3, 0x7, 0xe7] {
            assert!(valid_xcr0(ok, allowed), "{ok:#x}");
        }
        for bad in [0x0, 0x2, 0x5, 0x67, 0xe3, 0x2e7, 0x1e7, 1 << 62 | 3] {
            assert!(!valid_xcr0(bad, allowed), "{bad:#x}");
        }
        assert!(!valid_xcr0(0xe7, 0x7), "AVX-512 not allowed here");
    }

    #[test]
    fn kvm_cpuid_has_xsave_and_its_leaf() {
        let cpuid = kvm_cpuid(host_with(0xe7, true)).unwrap();
        let entries = cpuid.as_slice();
        let leaf1 = entries.iter().find(|e| e.function == 1).unwrap();
        assert_ne!(leaf1.ecx & (1 << 26), 0);
        let subs: Vec<u32> = entries
            .iter()
            .filter(|e| e.function == 0xd)
            .map(|e| e.index)
            .collect();
        assert_eq!(subs, [0, 1, 2, 5, 6, 7]);
        let d0 = entries.iter().find(|e| e.function == 0xd).unwrap();
        assert_eq!(d0.eax, 0xe7);
    }
}
