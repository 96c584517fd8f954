//! `set_trap_table`, `set_callbacks` and `callback_op`: they only store what the guest
//! registers (for the calling vCPU, as Xen does).

use rxen_abi::callback::*;
use rxen_abi::errno::{EFAULT, EINVAL, ENOSYS};
use rxen_abi::hypercall as nr;
use rxen_abi::vcpu::TrapInfo;

use super::{Callback, DomainTraps, TrapEntry};
use crate::hypercall::HypercallArgs;
use crate::memory::MemoryError;

/// Reads guest bytes at a guest address for the calling domain.
pub type GuestRead<'a> = &'a dyn Fn(u64, &mut [u8]) -> Result<(), MemoryError>;

fn read_obj<T: zerocopy::FromBytes + zerocopy::IntoBytes>(
    read: GuestRead<'_>,
    at: u64,
) -> Result<T, i32> {
    let mut v = T::new_zeroed();
    read(at, v.as_mut_bytes()).map_err(|_| -EFAULT)?;
    Ok(v)
}

/// Most `trap_info` entries one `set_trap_table` reads before its terminator (Xen has
/// no limit but preempts; 256 vectors never need more than this).
pub const MAX_TRAP_ENTRIES: u64 = 1024;

/// Handles the trap and callback hypercalls; `None` for every other number.
pub fn handle(
    traps: &DomainTraps,
    ram: GuestRead<'_>,
    vcpu: u32,
    call: &HypercallArgs,
) -> Option<i64> {
    let [a0, a1, a2, ..] = call.args;
    let nr = u32::try_from(call.nr).ok()?;
    let rc = match nr {
        nr::SET_TRAP_TABLE => set_trap_table(traps, ram, vcpu, a0),
        nr::SET_CALLBACKS => set_callbacks(traps, vcpu, [a0, a1, a2]),
        nr::CALLBACK_OP => callback_op(traps, ram, vcpu, a0, a1),
        _ => return None,
    };
    Some(rc.map_or_else(i64::from, |()| 0))
}

/// `set_trap_table(table)`: a null pointer clears the table; otherwise entries are read
/// until one with `address == 0`.
fn set_trap_table(traps: &DomainTraps, ram: GuestRead<'_>, vcpu: u32, ptr: u64) -> Result<(), i32> {
    let mut t = traps.vcpu(vcpu).ok_or(-EINVAL)?;
    if ptr == 0 {
        t.table = [TrapEntry::default(); 256];
        return Ok(());
    }
    for i in 0..MAX_TRAP_ENTRIES {
        let at = ptr
            .checked_add(i * core::mem::size_of::<TrapInfo>() as u64)
            .ok_or(-EFAULT)?;
        let e: TrapInfo = read_obj(ram, at)?;
        if e.address == 0 {
            return Ok(());
        }
        t.table[usize::from(e.vector)] = TrapEntry {
            flags: e.flags,
            cs: e.cs,
            address: e.address,
        };
    }
    Err(-EINVAL)
}

/// `set_callbacks(event, failsafe, syscall)` (x86-64): failsafe and syscall mask events.
fn set_callbacks(
    traps: &DomainTraps,
    vcpu: u32,
    [event, failsafe, syscall]: [u64; 3],
) -> Result<(), i32> {
    let mut t = traps.vcpu(vcpu).ok_or(-EINVAL)?;
    let cb = |address, mask_events| {
        Some(Callback {
            address,
            mask_events,
        })
    };
    t.callbacks.event = cb(event, false);
    t.callbacks.failsafe = cb(failsafe, true);
    t.callbacks.syscall = cb(syscall, true);
    traps.note_callbacks(vcpu, &t);
    Ok(())
}

/// `callback_op(CALLBACKOP_register | CALLBACKOP_unregister, arg)`.
fn callback_op(
    traps: &DomainTraps,
    ram: GuestRead<'_>,
    vcpu: u32,
    cmd: u64,
    arg: u64,
) -> Result<(), i32> {
    let mut t = traps.vcpu(vcpu).ok_or(-EINVAL)?;
    match cmd {
        CALLBACKOP_REGISTER => {
            let r: CallbackRegister = read_obj(ram, arg)?;
            let cb = Some(Callback {
                address: r.address,
                mask_events: r.flags & CALLBACKF_MASK_EVENTS != 0,
            });
            let c = &mut t.callbacks;
            match r.type_ {
                CALLBACKTYPE_EVENT => c.event = cb,
                CALLBACKTYPE_FAILSAFE => c.failsafe = cb,
                CALLBACKTYPE_SYSCALL => c.syscall = cb,
                CALLBACKTYPE_SYSCALL32 => c.syscall32 = cb,
                CALLBACKTYPE_SYSENTER => c.sysenter = cb,
                CALLBACKTYPE_NMI => c.nmi = cb,
                _ => return Err(-EINVAL),
            }
            traps.note_callbacks(vcpu, &t);
            Ok(())
        }
        CALLBACKOP_UNREGISTER => {
            let r: CallbackUnregister = read_obj(ram, arg)?;
            // Xen lets only the NMI callback be unregistered.
            match r.type_ {
                CALLBACKTYPE_NMI => {
                    t.callbacks.nmi = None;
                    Ok(())
                }
                _ => Err(-EINVAL),
            }
        }
        _ => Err(-ENOSYS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestRam;
    use zerocopy::IntoBytes;

    const BUF: u64 = 0x50_0000;

    fn setup() -> (DomainTraps, GuestRam) {
        (
            DomainTraps::new(2),
            GuestRam::new("traps", 8 << 20).unwrap(),
        )
    }

    fn call(nr: u32, args: [u64; 5]) -> HypercallArgs {
        HypercallArgs {
            nr: u64::from(nr),
            args,
        }
    }

    #[test]
    fn trap_table_is_read_until_the_terminator_and_cleared_by_null() {
        let (traps, ram) = setup();
        let entries = [
            TrapInfo {
                vector: 14,
                flags: 4,
                cs: 0xe033,
                pad: 0,
                address: 0x40_1000,
            },
            TrapInfo {
                vector: 0x80,
                flags: 3,
                cs: 0xe033,
                pad: 0,
                address: 0x40_2000,
            },
            TrapInfo::default(),
            TrapInfo {
                vector: 6,
                flags: 0,
                cs: 0,
                pad: 0,
                address: 0x40_3000,
            },
        ];
        ram.write(BUF, entries.as_bytes()).unwrap();
        let rc = handle(
            &traps,
            &|a, b| ram.read_guest_bytes(a, b),
            1,
            &call(nr::SET_TRAP_TABLE, [BUF, 0, 0, 0, 0]),
        );
        assert_eq!(rc, Some(0));
        let t = traps.vcpu(1).unwrap();
        assert_eq!(
            t.table[14],
            TrapEntry {
                flags: 4,
                cs: 0xe033,
                address: 0x40_1000
            }
        );
        assert!(t.table[14].masks_events());
        assert_eq!(t.table[0x80].dpl(), 3);
        assert_eq!(t.table[6].address, 0, "after the terminator");
        drop(t);
        assert_eq!(traps.vcpu(0).unwrap().table[14].address, 0, "per vCPU");
        assert_eq!(
            handle(
                &traps,
                &|a, b| ram.read_guest_bytes(a, b),
                1,
                &call(nr::SET_TRAP_TABLE, [0; 5])
            ),
            Some(0)
        );
        assert_eq!(traps.vcpu(1).unwrap().table[14].address, 0);
    }

    #[test]
    fn bad_pointers_and_endless_tables_are_refused() {
        let (traps, ram) = setup();
        let rc = handle(
            &traps,
            &|a, b| ram.read_guest_bytes(a, b),
            0,
            &call(nr::SET_TRAP_TABLE, [u64::MAX - 3, 0, 0, 0, 0]),
        );
        assert_eq!(rc, Some(i64::from(-EFAULT)));
        let e = TrapInfo {
            vector: 1,
            flags: 0,
            cs: 0,
            pad: 0,
            address: 0x40_0000,
        };
        for i in 0..MAX_TRAP_ENTRIES {
            ram.write_obj(BUF + i * 16, &e).unwrap();
        }
        let rc = handle(
            &traps,
            &|a, b| ram.read_guest_bytes(a, b),
            0,
            &call(nr::SET_TRAP_TABLE, [BUF, 0, 0, 0, 0]),
        );
        assert_eq!(rc, Some(i64::from(-EINVAL)));
        assert_eq!(
            handle(
                &traps,
                &|a, b| ram.read_guest_bytes(a, b),
                7,
                &call(nr::SET_TRAP_TABLE, [0; 5])
            ),
            Some(i64::from(-EINVAL))
        );
    }

    #[test]
    fn callbacks_are_stored() {
        let (traps, ram) = setup();
        let rc = handle(
            &traps,
            &|a, b| ram.read_guest_bytes(a, b),
            0,
            &call(nr::SET_CALLBACKS, [0x40_1000, 0x40_2000, 0x40_3000, 0, 0]),
        );
        assert_eq!(rc, Some(0));
        let c = traps.vcpu(0).unwrap().callbacks;
        assert_eq!(
            c.event,
            Some(Callback {
                address: 0x40_1000,
                mask_events: false
            })
        );
        assert_eq!(
            c.failsafe,
            Some(Callback {
                address: 0x40_2000,
                mask_events: true
            })
        );
        let reg = CallbackRegister {
            type_: CALLBACKTYPE_EVENT,
            flags: CALLBACKF_MASK_EVENTS,
            pad: 0,
            address: 0x40_5000,
        };
        ram.write_obj(BUF, &reg).unwrap();
        let rc = handle(
            &traps,
            &|a, b| ram.read_guest_bytes(a, b),
            0,
            &call(nr::CALLBACK_OP, [CALLBACKOP_REGISTER, BUF, 0, 0, 0]),
        );
        assert_eq!(rc, Some(0));
        assert_eq!(
            traps.vcpu(0).unwrap().callbacks.event,
            Some(Callback {
                address: 0x40_5000,
                mask_events: true
            })
        );
        let bad = CallbackRegister { type_: 99, ..reg };
        ram.write_obj(BUF, &bad).unwrap();
        let rc = handle(
            &traps,
            &|a, b| ram.read_guest_bytes(a, b),
            0,
            &call(nr::CALLBACK_OP, [CALLBACKOP_REGISTER, BUF, 0, 0, 0]),
        );
        assert_eq!(rc, Some(i64::from(-EINVAL)));
        ram.write_obj(
            BUF,
            &CallbackUnregister {
                type_: CALLBACKTYPE_EVENT,
                unused: 0,
            },
        )
        .unwrap();
        let rc = handle(
            &traps,
            &|a, b| ram.read_guest_bytes(a, b),
            0,
            &call(nr::CALLBACK_OP, [CALLBACKOP_UNREGISTER, BUF, 0, 0, 0]),
        );
        assert_eq!(rc, Some(i64::from(-EINVAL)));
        let rc = handle(
            &traps,
            &|a, b| ram.read_guest_bytes(a, b),
            0,
            &call(nr::CALLBACK_OP, [9, BUF, 0, 0, 0]),
        );
        assert_eq!(rc, Some(i64::from(-ENOSYS)));
    }
}
