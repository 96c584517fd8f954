//! Errors of the direct-paging MMU, each mapped to the errno Xen returns for it.

use rxen_abi::errno;

/// Why an MMU operation was refused. [`MmuError::errno`] is what the hypercall returns
/// (negated), chosen to match `xen/arch/x86/mm.c` case by case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MmuError {
    /// A present entry sets flags its level does not allow (`Bad L1 flags`): EINVAL.
    #[error("entry {entry:#x} sets disallowed flags {bits:#x}")]
    BadFlags { entry: u64, bits: u64 },
    /// An L1 entry maps a frame that is not RAM of any domain (Xen's MMIO path, no I/O
    /// permission): EPERM.
    #[error("frame {0:#x} is not RAM this domain may map")]
    NotRam(u64),
    /// Xen's `-EINVAL` for an L1 entry naming `INVALID_MFN`.
    #[error("entry names the invalid frame")]
    InvalidMfn,
    /// An L1 entry maps a frame owned by someone else (another domain, rxen itself,
    /// or nobody), or asks RW of a frame that cannot be writable (it has a page-table
    /// or descriptor type): Xen's `could_not_pin`, EBUSY.
    #[error("frame {0:#x} cannot be mapped (foreign, rxen's own, or typed)")]
    CannotMap(u64),
    /// A frame the operation needs is not the domain's (`get_page_from_mfn` fails):
    /// EINVAL.
    #[error("frame {0:#x} is not this domain's")]
    NotOwned(u64),
    /// A frame has another type in use, e.g. a table entry points at a frame that is
    /// writable or of the wrong level (`Bad type`): EINVAL.
    #[error("frame {frame:#x} has a conflicting type")]
    TypeConflict { frame: u64 },
    /// A guest write to an L4 slot Xen reserves for itself: EINVAL.
    #[error("L4 slot {0} belongs to the hypervisor")]
    ReservedSlot(usize),
    /// `MMUEXT_PIN_*` on a frame already pinned: EINVAL.
    #[error("frame {0:#x} is already pinned")]
    AlreadyPinned(u64),
    /// `MMUEXT_UNPIN_TABLE` on a frame that is not pinned: EINVAL.
    #[error("frame {0:#x} is not pinned")]
    NotPinned(u64),
    /// A reference or type count would overflow: EBUSY.
    #[error("reference count of frame {0:#x} is exhausted")]
    CountOverflow(u64),
    /// An `mmu_update` command Xen does not know: ENOSYS.
    #[error("unknown mmu_update command {0}")]
    UnknownCommand(u64),
    /// An `mmuext_op` command Xen does not know: ENOSYS.
    #[error("unknown mmuext_op command {0}")]
    UnknownExtCommand(u32),
    /// A command Xen refuses to PV guests (superpages): EOPNOTSUPP.
    #[error("mmuext_op command {0} is not supported")]
    NotSupported(u32),
    /// `MMUEXT_FLUSH_CACHE` without cache-flush permission: EACCES.
    #[error("cache flush not permitted")]
    CacheFlushDenied,
    /// Other bad arguments (bad `SET_LDT`, a vCPU that does not exist, a frame with
    /// references handed to `set_owner`): EINVAL.
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
}

impl MmuError {
    /// Xen's error number for this refusal (positive; hypercalls return it negated).
    pub fn errno(&self) -> i32 {
        match self {
            MmuError::NotRam(_) => errno::EPERM,
            MmuError::CannotMap(_) | MmuError::CountOverflow(_) => errno::EBUSY,
            MmuError::UnknownCommand(_) | MmuError::UnknownExtCommand(_) => errno::ENOSYS,
            MmuError::NotSupported(_) => errno::EOPNOTSUPP,
            MmuError::CacheFlushDenied => errno::EACCES,
            MmuError::BadFlags { .. }
            | MmuError::InvalidMfn
            | MmuError::NotOwned(_)
            | MmuError::TypeConflict { .. }
            | MmuError::ReservedSlot(_)
            | MmuError::AlreadyPinned(_)
            | MmuError::NotPinned(_)
            | MmuError::Invalid(_) => errno::EINVAL,
        }
    }
}
