//! CPUID through Xen's forced-emulation prefix (`ud2; .ascii "xen"; cpuid`,
//! `XEN_EMULATE_PREFIX` in xen/include/public/arch-x86/xen.h): a PV kernel asks the
//! hypervisor's CPUID policy instead of the CPU's. The `ud2` raises #UD at CPL 3; rxen
//! recognises the 7 bytes at the faulting `rip`, answers with [`pv_cpuid`] and moves
//! `rip` past them. Any other #UD goes to the guest's handler as before.
//!
//! The policy follows Xen's PV defaults where Linux looks: the hypervisor leaves at
//! 0x40000000 ("XenVMMXenVMM", version, one hypercall page), the hypervisor bit, and
//! host features a PV guest cannot use hidden (VMX/SVM, MONITOR, x2APIC, the local APIC
//! and MTRRs of a domU, PCID, SMEP/SMAP, FSGSBASE, PKU, LA57, the thermal/power and
//! perfmon leaves). It never reads guest memory and never fails: unknown leaves give
//! the host's answer or zeros.
//!
//! XSAVE is shown as Xen shows it to PV guests (XSAVE and OSXSAVE in leaf 1, leaf 0xD
//! for the user states of [`crate::vcpu::xstate`], without XSAVES/XRSTORS, which are
//! CPL-0 instructions): user code's own CPUID is the host's, so it uses AVX and
//! AVX-512 whatever the kernel is told, and a kernel told "no XSAVE" saves only the
//! FXSAVE state across context switches (docs/linux-guest.md, "XSAVE").

/// The prefix bytes: `ud2` (0f 0b), "xen", then `cpuid` (0f a2).
pub const FORCED_CPUID: [u8; 7] = [0x0f, 0x0b, b'x', b'e', b'n', 0x0f, 0xa2];

/// Vector of #UD.
pub const VECTOR_UD: u8 = 6;

/// Xen's hypervisor CPUID base.
pub const XEN_CPUID_BASE: u32 = 0x4000_0000;
/// Highest hypervisor leaf answered (`XEN_CPUID_MAX_PV_NUM_LEAVES` in Xen's terms).
const XEN_CPUID_MAX: u32 = XEN_CPUID_BASE + 5;
/// The Xen version rxen reports in leaf 0x40000001 (major << 16 | minor), the same
/// as `xen_version`.
pub const XEN_VERSION: u32 = (crate::hypercall::XEN_MAJOR << 16) | crate::hypercall::XEN_MINOR;

/// One CPUID answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cpuid {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// Bits cleared from leaf 1 ECX: DTES64, MONITOR, DS-CPL, VMX, SMX, EST, TM2, PDCM,
/// PCID, x2APIC, TSC-deadline, and XSAVE/OSXSAVE (set again by [`xsave_leaves`]).
const LEAF1_ECX_HIDDEN: u32 = (1 << 2)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 7)
    | (1 << 8)
    | (1 << 15)
    | (1 << 17)
    | (1 << 21)
    | (1 << 24)
    | (1 << 26)
    | (1 << 27);
/// Leaf 1 ECX's "running on a hypervisor" bit.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Bits cleared from leaf 1 EDX: PSE, MCE, APIC, MTRR, PGE, MCA, PSE36, DS, ACPI, TM,
/// PBE. A PV guest's page tables have no superpages (the MMU refuses PSE) and no global
/// pages; rxen has no virtual machine-check MSRs (Xen's vMCE).
const LEAF1_EDX_HIDDEN: u32 = (1 << 3)
    | (1 << 7)
    | (1 << 9)
    | (1 << 14)
    | (1 << 12)
    | (1 << 13)
    | (1 << 17)
    | (1 << 21)
    | (1 << 22)
    | (1 << 29)
    | (1 << 31);
/// Leaf 7 EBX hidden: FSGSBASE, TSC_ADJUST, SMEP, INVPCID, RDT-M, RDT-A, SMAP, PT.
const LEAF7_EBX_HIDDEN: u32 =
    1 | (1 << 1) | (1 << 7) | (1 << 10) | (1 << 12) | (1 << 15) | (1 << 20) | (1 << 25);
/// Leaf 7 ECX hidden: UMIP, PKU, OSPKE, WAITPKG, LA57, RDPID.
const LEAF7_ECX_HIDDEN: u32 = (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5) | (1 << 16) | (1 << 22);
/// Leaf 7 EDX hidden: hybrid, the ARCH_CAPABILITIES and CORE_CAPABILITIES MSRs.
const LEAF7_EDX_HIDDEN: u32 = (1 << 15) | (1 << 29) | (1 << 30);
/// Leaf 0x80000001 ECX hidden: SVM, the extended APIC space, MONITORX.
const EXT1_ECX_HIDDEN: u32 = (1 << 2) | (1 << 3) | (1 << 29);
/// Leaf 0x80000001 EDX hidden: PSE36, 1 GiB pages (no superpages for PV), RDTSCP.
const EXT1_EDX_HIDDEN: u32 = (1 << 17) | (1 << 26) | (1 << 27);

/// Leaf 1 ECX: XSAVE and OSXSAVE.
const LEAF1_ECX_XSAVE: u32 = 1 << 26;
const LEAF1_ECX_OSXSAVE: u32 = 1 << 27;
/// Leaf 0xD subleaf 1 EAX shown: XSAVEOPT, XSAVEC, XGETBV with ECX=1 (not XSAVES, not
/// XFD).
const XSAVE_LEAF1_EAX_SHOWN: u32 = 0b111;
/// Leaf 0xD subleaf `n` ECX bit 1: component `n` is 64-byte aligned in the compacted
/// format.
const XSTATE_ALIGN64: u32 = 1 << 1;
/// The legacy area and the XSAVE header: where extended components start.
const XSAVE_HEADER_END: u32 = 512 + 64;

/// The answer Xen's PV policy gives for `leaf`/`subleaf`, from the host's
/// answers (`host`); `xcr0` is the asking vCPU's XCR0 (leaf 0xD reports the size of
/// the area it needs).
pub fn pv_cpuid(leaf: u32, subleaf: u32, xcr0: u64, host: impl Fn(u32, u32) -> Cpuid) -> Cpuid {
    let mut r = match leaf {
        XEN_CPUID_BASE..=XEN_CPUID_MAX => return hypervisor_leaf(leaf),
        // Thermal and power, MONITOR, perfmon: nothing for a PV domain.
        0x5 | 0x6 | 0xa => return Cpuid::default(),
        0xd => return xsave_leaf(subleaf, xcr0, &host),
        _ => host(leaf, subleaf),
    };
    match leaf {
        0x1 => {
            let xsave = crate::vcpu::xstate::allowed_xcr0(&host) != 0;
            r.ecx = (r.ecx & !LEAF1_ECX_HIDDEN) | LEAF1_ECX_HYPERVISOR;
            if xsave {
                // Xen's PV guests run with CR4.OSXSAVE set from the start (rxen sets
                // the vCPU's; Linux's `xen_check_xsave` wants both bits).
                r.ecx |= LEAF1_ECX_XSAVE | LEAF1_ECX_OSXSAVE;
            }
            r.edx &= !LEAF1_EDX_HIDDEN;
        }
        0x7 if subleaf == 0 => {
            r.ebx &= !LEAF7_EBX_HIDDEN;
            r.ecx &= !LEAF7_ECX_HIDDEN;
            r.edx &= !LEAF7_EDX_HIDDEN;
        }
        0x8000_0001 => {
            r.ecx &= !EXT1_ECX_HIDDEN;
            r.edx &= !EXT1_EDX_HIDDEN;
        }
        _ => {}
    }
    r
}

/// Leaf 0xD for the user states rxen lets the guest enable
/// ([`crate::vcpu::xstate::allowed_xcr0`]); all zeros without XSAVE.
fn xsave_leaf(subleaf: u32, xcr0: u64, host: &impl Fn(u32, u32) -> Cpuid) -> Cpuid {
    let allowed = crate::vcpu::xstate::allowed_xcr0(host);
    if allowed == 0 {
        return Cpuid::default();
    }
    // The extended components of `mask`: (size, offset, flags) each.
    let components = |mask: u64| {
        (2..64u32)
            .filter(move |&i| mask & (1 << i) != 0)
            .map(|i| host(0xd, i))
    };
    // The standard-format area for `mask`: the end of its last component.
    let standard_size = |mask: u64| {
        components(mask)
            .map(|c| c.ebx.saturating_add(c.eax))
            .fold(XSAVE_HEADER_END, u32::max)
    };
    match subleaf {
        0 => Cpuid {
            eax: allowed as u32,
            ebx: standard_size(xcr0 & allowed),
            ecx: standard_size(allowed),
            edx: (allowed >> 32) as u32,
        },
        1 => {
            // The compacted-format size for XCR0 (no supervisor states: XSS is 0).
            let compacted = components(xcr0 & allowed).fold(XSAVE_HEADER_END, |end, c| {
                let start = if c.ecx & XSTATE_ALIGN64 != 0 {
                    end.saturating_add(63) & !63
                } else {
                    end
                };
                start.saturating_add(c.eax)
            });
            Cpuid {
                eax: host(0xd, 1).eax & XSAVE_LEAF1_EAX_SHOWN,
                ebx: compacted,
                ecx: 0,
                edx: 0,
            }
        }
        n @ 2..=63 if allowed & (1 << n) != 0 => {
            let c = host(0xd, n);
            // A user state: not supervisor (ECX bit 0), no XFD (bit 2).
            Cpuid {
                ecx: c.ecx & XSTATE_ALIGN64,
                edx: 0,
                ..c
            }
        }
        _ => Cpuid::default(),
    }
}

fn hypervisor_leaf(leaf: u32) -> Cpuid {
    let word = |s: &[u8; 4]| u32::from_le_bytes(*s);
    match leaf - XEN_CPUID_BASE {
        0 => Cpuid {
            eax: XEN_CPUID_MAX,
            ebx: word(b"XenV"),
            ecx: word(b"MMXe"),
            edx: word(b"nVMM"),
        },
        1 => Cpuid {
            eax: XEN_VERSION,
            ..Cpuid::default()
        },
        // One hypercall page, its MSR at 0x40000000 (PV kernels use start_info's
        // layout instead; HVM guests would write the MSR).
        2 => Cpuid {
            eax: 1,
            ebx: XEN_CPUID_BASE,
            ..Cpuid::default()
        },
        _ => Cpuid::default(),
    }
}

/// The host CPU's answer (the VMM runs on the CPU the guest runs on).
pub fn host_cpuid(leaf: u32, subleaf: u32) -> Cpuid {
    let r = std::arch::x86_64::__cpuid_count(leaf, subleaf);
    Cpuid {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}

/// A #UD from the forced-emulation CPUID, emulated: `Some(keep running)` when it was
/// one, `None` to deliver the exception as usual.
pub(super) fn emulate(
    fd: &mut kvm_ioctls::VcpuFd,
    dom: &crate::domain::DomainShared,
    id: u32,
    sync_regs: bool,
    regs: &kvm_bindings::kvm_regs,
    sregs: &kvm_bindings::kvm_sregs,
) -> Option<bool> {
    let frame = super::exit::hardware_frame(dom, id, regs, sregs, VECTOR_UD)?;
    let mut code = [0u8; FORCED_CPUID.len()];
    super::guest_mem::read(dom, id, frame.rip, &mut code).ok()?;
    if !is_forced_cpuid(&code) {
        return None;
    }
    let (leaf, subleaf) = (regs.rax as u32, regs.rcx as u32);
    dom.stats.emulated(crate::stats::Emulated::Cpuid);
    // Leaf 0xD reports sizes for the vCPU's XCR0; no other leaf needs the ioctl.
    let xcr0 = if leaf == 0xd {
        crate::vcpu::xstate::current_xcr0(fd)
    } else {
        crate::vcpu::xstate::XCR0_INIT
    };
    let r = pv_cpuid(leaf, subleaf, xcr0, host_cpuid);
    let mut next = *regs;
    next.rip = frame.rip.wrapping_add(FORCED_CPUID.len() as u64);
    next.rsp = frame.rsp;
    next.rflags = crate::vcpu::syscall::user_rflags(frame.rflags);
    next.rax = u64::from(r.eax);
    next.rbx = u64::from(r.ebx);
    next.rcx = u64::from(r.ecx);
    next.rdx = u64::from(r.edx);
    tracing::trace!(vcpu = id, leaf, subleaf, "forced-emulation CPUID");
    Some(match super::exit::write_regs(fd, sync_regs, &next) {
        Ok(()) => true,
        Err(e) => {
            dom.request_exit(crate::exit::DomainExit::Internal(format!("vCPU {id}: {e}")));
            false
        }
    })
}

/// Whether `code` (the bytes at the faulting `rip`) is the forced-emulation CPUID.
pub fn is_forced_cpuid(code: &[u8]) -> bool {
    code.starts_with(&FORCED_CPUID)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_host(_leaf: u32, _sub: u32) -> Cpuid {
        Cpuid {
            eax: 0x1234,
            ebx: u32::MAX,
            ecx: u32::MAX,
            edx: u32::MAX,
        }
    }

    #[test]
    fn hypervisor_leaves_say_xen() {
        let r = pv_cpuid(XEN_CPUID_BASE, 0, 3, fake_host);
        let mut sig = Vec::new();
        for w in [r.ebx, r.ecx, r.edx] {
            sig.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(&sig, b"XenVMMXenVMM");
        assert!(r.eax >= XEN_CPUID_BASE + 2);
        assert_eq!(
            pv_cpuid(XEN_CPUID_BASE + 1, 0, 3, fake_host).eax,
            XEN_VERSION
        );
        assert_eq!(pv_cpuid(XEN_CPUID_BASE + 2, 0, 3, fake_host).eax, 1);
    }

    #[test]
    fn features_a_pv_guest_cannot_use_are_hidden() {
        let r = pv_cpuid(1, 0, 3, fake_host);
        assert_ne!(r.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(r.ecx & (1 << 5), 0, "VMX");
        assert_eq!(r.ecx & (1 << 21), 0, "x2APIC");
        assert_eq!(r.edx & (1 << 9), 0, "APIC");
        // Debian's kernel mapped its direct map with 1 GiB pages and every such
        // mmu_update failed (-EINVAL) while PSE/PAGE1GB were visible.
        assert_eq!(r.edx & (1 << 3), 0, "PSE");
        // Linux's MCE init read MCG_CAP (0x179) and panicked on the #GP.
        assert_eq!(r.edx & (1 << 7), 0, "MCE");
        assert_eq!(r.edx & (1 << 14), 0, "MCA");
        assert_eq!(
            pv_cpuid(0x8000_0001, 0, 3, fake_host).edx & (1 << 26),
            0,
            "1 GiB pages"
        );
        assert_ne!(r.edx & 1, 0, "FPU stays");
        let r = pv_cpuid(7, 0, 3, fake_host);
        assert_eq!(r.ebx & (1 << 7), 0, "SMEP");
        assert_eq!(r.ebx & (1 << 20), 0, "SMAP");
        assert_eq!(pv_cpuid(0x8000_0001, 0, 3, fake_host).ecx & (1 << 2), 0);
        assert_eq!(pv_cpuid(0, 0, 3, fake_host).eax, 0x1234);
    }

    /// A host like this one (AMD Zen 4): x87, SSE, AVX, the three AVX-512 states and
    /// PKRU, with XSAVEOPT, XSAVEC, XGETBV1 and XSAVES.
    fn avx512_host(leaf: u32, sub: u32) -> Cpuid {
        let c = |eax, ebx, ecx| Cpuid {
            eax,
            ebx,
            ecx,
            edx: 0,
        };
        match (leaf, sub) {
            (1, _) => c(0, 0, LEAF1_ECX_XSAVE | LEAF1_ECX_OSXSAVE | 1),
            (0xd, 0) => c(0x2e7, 0x988, 0x988),
            (0xd, 1) => Cpuid {
                eax: 0xf,
                ebx: 0x990,
                ecx: 0x1800,
                edx: 0,
            },
            (0xd, 2) => c(256, 576, 0),
            (0xd, 5) => c(64, 832, 0),
            (0xd, 6) => c(512, 896, 0),
            (0xd, 7) => c(1024, 1408, 0),
            (0xd, 9) => c(8, 2432, 0),
            (0xd, 11) => c(16, 0, 1),
            _ => Cpuid::default(),
        }
    }

    /// Before, XSAVE was hidden and leaf 0xD empty: Linux saved user state with
    /// FXSAVE while user code (host CPUID) used AVX-512, and processes saw each
    /// other's vector registers.
    #[test]
    fn xsave_is_shown_for_the_user_states_only() {
        let r = pv_cpuid(1, 0, 3, avx512_host);
        assert_ne!(r.ecx & LEAF1_ECX_XSAVE, 0, "XSAVE");
        assert_ne!(r.ecx & LEAF1_ECX_OSXSAVE, 0, "OSXSAVE");
        // Without PKRU (PKU is hidden) and no supervisor state.
        let r = pv_cpuid(0xd, 0, 3, avx512_host);
        assert_eq!((r.eax, r.edx), (0xe7, 0));
        assert_eq!(r.ebx, 576, "the area XCR0 = x87|SSE needs");
        assert_eq!(r.ecx, 1408 + 1024, "everything allowed, PKRU excluded");
        assert_eq!(pv_cpuid(0xd, 0, 0xe7, avx512_host).ebx, 2432);
        assert_eq!(pv_cpuid(0xd, 0, 7, avx512_host).ebx, 832);
        let r = pv_cpuid(0xd, 1, 0xe7, avx512_host);
        assert_eq!(r.eax, 0x7, "XSAVES/XRSTORS hidden");
        assert_eq!((r.ebx, r.ecx, r.edx), (576 + 256 + 64 + 512 + 1024, 0, 0));
        assert_eq!(pv_cpuid(0xd, 2, 3, avx512_host).eax, 256);
        assert_eq!(pv_cpuid(0xd, 9, 3, avx512_host), Cpuid::default(), "PKRU");
        assert_eq!(pv_cpuid(0xd, 11, 3, avx512_host), Cpuid::default(), "CET");
        // A host without XSAVE: nothing.
        let old = |leaf, sub| match leaf {
            1 => Cpuid::default(),
            _ => avx512_host(leaf, sub),
        };
        assert_eq!(pv_cpuid(1, 0, 3, old).ecx & LEAF1_ECX_XSAVE, 0);
        assert_eq!(pv_cpuid(0xd, 0, 3, old), Cpuid::default());
    }

    #[test]
    fn only_the_exact_prefix_is_emulated() {
        assert!(is_forced_cpuid(&[
            0x0f, 0x0b, b'x', b'e', b'n', 0x0f, 0xa2, 0x90
        ]));
        assert!(!is_forced_cpuid(&[0x0f, 0x0b, b'x', b'e', b'n', 0x0f]));
        assert!(!is_forced_cpuid(&[
            0x0f, 0x0b, b'x', b'e', b'm', 0x0f, 0xa2
        ]));
        assert!(!is_forced_cpuid(&[0x0f, 0xa2]));
    }

    #[test]
    fn host_cpuid_answers() {
        // Leaf 0's vendor string is never all zeros on x86-64.
        let r = host_cpuid(0, 0);
        assert_ne!((r.ebx, r.ecx, r.edx), (0, 0, 0));
    }
}
