//! Exception bounce: a trap stub exited; deliver the exception to the guest's handler
//! the way Xen's `pv_inject_event` / `create_bounce_frame` do for a 64-bit PV guest in
//! kernel mode.
//!
//! The CPU left its frame `[err], rip, cs, rflags, rsp, ss` on the interrupted stack
//! (same-privilege delivery); the stub's `rsp` points at it. The guest's handler gets
//! Xen's frame below the interrupted `rsp` (rounded down to 16 bytes):
//! `rcx, r11, [err], rip, cs, rflags, rsp, ss`, where `cs` carries the saved
//! `evtchn_upcall_mask` in bits 32-39 and `rflags.IF` is the *virtual* IF
//! (`!evtchn_upcall_mask`). For #PF the fault address goes to `vcpu_info.arch.cr2`.
//!
//! `int n` (Xen: gates of DPL 0 except `int3`): the IDT covers only the exceptions, so
//! `int n` for `n >= 32` raises #GP with error code `(n << 3) | 2`; rxen then delivers
//! vector `n` if the guest's entry has DPL >= 1 (Xen's `permit_softint` for a guest in
//! kernel mode), else the #GP. `int n` for an exception vector with an error code is
//! recognised by its shorter frame and treated the same way. `int3` is always delivered
//! (Xen's gate for it has DPL 3). Not distinguishable here: `int n` for an exception
//! vector without an error code (other than 3) is delivered as that exception.
//!
//! A vector without a handler, a handler address that is not a canonical user address,
//! a frame the CPU cannot have written, or a guest stack the VMM may not read or write
//! ends the domain as a crash (never a VMM error).

use kvm_bindings::kvm_regs;

use super::pages::has_error_code;
use super::TrapEntry;
use crate::vcpu::regs::AddressRange;

const RFLAGS_IF: u64 = 1 << 9;
/// #GP.
const VECTOR_GP: u8 = 13;
/// #PF.
pub const VECTOR_PF: u8 = 14;
/// Error code bit 1 of #GP: the selector refers to the IDT (an `int n`).
const ERR_IDT: u64 = 2;

/// The CPU's exception frame as found at the stub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuFrame {
    pub error_code: Option<u64>,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// Why a trap cannot be delivered (the domain crashes with this reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Undeliverable {
    #[error("trap stub port written at rip {0:#x}, not from a stub")]
    NotFromStub(u64),
    #[error("exception frame at {0:#x} unreadable")]
    FrameUnreadable(u64),
    #[error("vector {vector}: the stack at {rsp:#x} does not hold a CPU exception frame")]
    BadFrame { vector: u8, rsp: u64 },
    #[error(
        "vector {vector} (error code {error_code:?}) at rip {rip:#x}: no handler in the trap table"
    )]
    NoHandler {
        vector: u8,
        error_code: Option<u64>,
        rip: u64,
    },
    #[error("vector {vector}: handler address {address:#x} is outside the domain's address range")]
    BadHandler { vector: u8, address: u64 },
    #[error(
        "page fault at {cr2:#x} (rxen's L4 slot 256) from rip {rip:#x}: not an emulated M2P read ({why}), and no page-fault handler"
    )]
    Slot256 {
        cr2: u64,
        rip: u64,
        why: super::m2p::NotEmulated,
    },
    #[error("vector {vector}: guest stack at {rsp:#x} is not writable for the bounce frame")]
    BadStack { vector: u8, rsp: u64 },
}

/// Parses the CPU frame of `vector` from the words at the stub's `rsp` (`words[5]` is
/// `None` if that word is unreadable). Returns the frame and whether it came from a
/// software `int n` (no error code on a vector that has one).
pub fn parse_frame(
    vector: u8,
    words: [Option<u64>; 6],
    cs: u16,
    ss: u16,
    at: u64,
) -> Result<(CpuFrame, bool), Undeliverable> {
    let sel = |w: Option<u64>, s: u16| w.is_some_and(|w| w & 0xffff == u64::from(s));
    let w = |i: usize| words[i].unwrap_or(0);
    let bad = Undeliverable::BadFrame { vector, rsp: at };
    if has_error_code(vector) && sel(words[2], cs) && sel(words[5], ss) {
        let frame = CpuFrame {
            error_code: Some(w(0)),
            rip: w(1),
            cs: w(2),
            rflags: w(3),
            rsp: w(4),
            ss: w(5),
        };
        return Ok((frame, false));
    }
    if sel(words[1], cs) && sel(words[4], ss) {
        let frame = CpuFrame {
            error_code: None,
            rip: w(0),
            cs: w(1),
            rflags: w(2),
            rsp: w(3),
            ss: w(4),
        };
        return Ok((frame, has_error_code(vector)));
    }
    Err(bad)
}

/// What the guest's handler gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub vector: u8,
    pub error_code: Option<u64>,
    /// `rip` in the bounce frame (where the handler returns to).
    pub rip: u64,
    pub entry: TrapEntry,
}

/// Decides what to deliver for an exit of `vector`'s stub, following Xen's rules for
/// `int n` (see the module documentation).
pub fn decide(
    vector: u8,
    frame: &CpuFrame,
    software: bool,
    table: &[TrapEntry; 256],
    range: AddressRange,
) -> Result<Delivery, Undeliverable> {
    let softint_allowed = |n: u8| {
        let e = table[usize::from(n)];
        e.address != 0 && e.dpl() >= 1
    };
    let (vector, error_code, rip) = match (vector, frame.error_code) {
        (v, None) if software => {
            // `int v` on a vector with an error code; `rip` is after the instruction.
            if softint_allowed(v) {
                (v, None, frame.rip)
            } else {
                let err = (u64::from(v) << 3) | ERR_IDT;
                (VECTOR_GP, Some(err), frame.rip.wrapping_sub(2))
            }
        }
        (VECTOR_GP, Some(err)) if err & 3 == ERR_IDT => {
            // `int n` through an absent gate: `rip` is the instruction (2 bytes).
            let n = (err >> 3) as u8;
            if softint_allowed(n) && n != VECTOR_GP {
                (n, None, frame.rip.wrapping_add(2))
            } else {
                (VECTOR_GP, Some(err), frame.rip)
            }
        }
        (v, err) => (v, err, frame.rip),
    };
    let entry = table[usize::from(vector)];
    if entry.address == 0 {
        return Err(Undeliverable::NoHandler {
            vector,
            error_code,
            rip,
        });
    }
    if !range.contains(entry.address) {
        return Err(Undeliverable::BadHandler {
            vector,
            address: entry.address,
        });
    }
    Ok(Delivery {
        vector,
        error_code,
        rip,
        entry,
    })
}

/// Xen's bounce frame: where it goes and its words (lowest address first).
pub fn bounce_frame(
    interrupted: &kvm_regs,
    frame: &CpuFrame,
    d: &Delivery,
    saved_mask: bool,
) -> (u64, Vec<u64>) {
    let virtual_if = if saved_mask { 0 } else { RFLAGS_IF };
    let mut words = vec![interrupted.rcx, interrupted.r11];
    words.extend(d.error_code);
    words.extend([
        d.rip,
        (frame.cs & 0xffff) | (u64::from(saved_mask) << 32),
        (frame.rflags & !RFLAGS_IF) | virtual_if,
        frame.rsp,
        frame.ss & 0xffff,
    ]);
    let top = frame.rsp & !0xf;
    let at = top.wrapping_sub(8 * words.len() as u64);
    (at, words)
}

/// The registers the handler starts with.
pub fn handler_regs(interrupted: &kvm_regs, frame: &CpuFrame, d: &Delivery, at: u64) -> kvm_regs {
    let mut r = *interrupted;
    r.rip = d.entry.address;
    r.rsp = at;
    // Xen clears TF, NT, RF (and VM); rxen keeps only the arithmetic flags and DF.
    r.rflags = crate::vcpu::syscall::user_rflags(frame.rflags);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const CS: u16 = 0x33;
    const SS: u16 = 0x2b;

    fn table_with(v: u8, flags: u8) -> Box<[TrapEntry; 256]> {
        let mut t = Box::new([TrapEntry::default(); 256]);
        t[usize::from(v)] = TrapEntry {
            flags,
            cs: 0xe033,
            address: 0x40_1000 + u64::from(v),
        };
        t
    }

    #[test]
    fn page_fault_frame_has_error_code() {
        let w = [
            Some(4),
            Some(0x40_2000),
            Some(0x33),
            Some(0x246),
            Some(0x3f_fff8),
            Some(0x2b),
        ];
        let (f, soft) = parse_frame(14, w, CS, SS, 0x3f_ffd0).unwrap();
        assert!(!soft);
        assert_eq!(f.error_code, Some(4));
        assert_eq!(f.rip, 0x40_2000);
        assert_eq!(f.rsp, 0x3f_fff8);
        let t = table_with(14, 4);
        let d = decide(14, &f, soft, &t, AddressRange::UserHalf).unwrap();
        assert_eq!((d.vector, d.error_code, d.rip), (14, Some(4), 0x40_2000));
        let r = kvm_regs {
            rcx: 11,
            r11: 22,
            ..Default::default()
        };
        let (at, words) = bounce_frame(&r, &f, &d, false);
        assert_eq!(at, 0x3f_fff0 - 64);
        assert_eq!(
            words,
            vec![11, 22, 4, 0x40_2000, 0x33, 0x246, 0x3f_fff8, 0x2b]
        );
        let (_, masked) = bounce_frame(&r, &f, &d, true);
        assert_eq!(masked[4], 0x33 | (1 << 32));
        assert_eq!(masked[5], 0x046, "virtual IF = !mask");
        let h = handler_regs(&r, &f, &d, at);
        assert_eq!((h.rip, h.rsp), (0x40_100e, at));
        assert_eq!(h.rflags & 0x100, 0);
    }

    #[test]
    fn no_handler_and_bad_frames_are_refused() {
        let w = [
            Some(0x40_2000),
            Some(0x33),
            Some(0x246),
            Some(0x3f_fff8),
            Some(0x2b),
            None,
        ];
        let (f, soft) = parse_frame(6, w, CS, SS, 0).unwrap();
        assert!(!soft);
        let empty = Box::new([TrapEntry::default(); 256]);
        assert!(matches!(
            decide(6, &f, soft, &empty, AddressRange::UserHalf),
            Err(Undeliverable::NoHandler { vector: 6, .. })
        ));
        let garbage = [Some(1), Some(2), Some(3), Some(4), Some(5), Some(6)];
        assert!(parse_frame(6, garbage, CS, SS, 0).is_err());
        let mut t = table_with(6, 0);
        t[6].address = 0xffff_8000_0000_0000;
        assert!(matches!(
            decide(6, &f, false, &t, AddressRange::UserHalf),
            Err(Undeliverable::BadHandler { .. })
        ));
    }

    #[test]
    fn int_n_honours_the_dpl_like_xen() {
        // int 0x80 -> #GP((0x80 << 3) | 2) at the instruction.
        let f = CpuFrame {
            error_code: Some((0x80 << 3) | 2),
            rip: 0x40_0000,
            cs: 0x33,
            rflags: 0x246,
            rsp: 0x3f_0000,
            ss: 0x2b,
        };
        let mut t = table_with(0x80, 1);
        t[13] = TrapEntry {
            flags: 0,
            cs: 0,
            address: 0x40_5000,
        };
        let d = decide(13, &f, false, &t, AddressRange::UserHalf).unwrap();
        assert_eq!((d.vector, d.error_code, d.rip), (0x80, None, 0x40_0002));
        t[0x80].flags = 0;
        let d = decide(13, &f, false, &t, AddressRange::UserHalf).unwrap();
        assert_eq!(
            (d.vector, d.error_code, d.rip),
            (13, Some((0x80 << 3) | 2), 0x40_0000)
        );
        // int 14 (no error code pushed): a software interrupt.
        let w = [
            Some(0x40_0002),
            Some(0x33),
            Some(0x246),
            Some(0x3f_fff8),
            Some(0x2b),
            Some(0),
        ];
        let (f, soft) = parse_frame(14, w, CS, SS, 0).unwrap();
        assert!(soft);
        let d = decide(14, &f, soft, &t, AddressRange::UserHalf).unwrap();
        assert_eq!(
            (d.vector, d.error_code, d.rip),
            (13, Some((14 << 3) | 2), 0x40_0000)
        );
    }
}
