//! `set_trap_table`, `set_callbacks` and `callback_op`: they only store what the guest
//! registers (for the calling vCPU, as Xen does).

use rxen_abi::callback::*;
use rxen_abi::errno::{EFAULT, EINVAL, ENOSYS};
use rxen_abi::hypercall as nr;
use rxen_abi::vcpu::TrapInfo;

use super::{Callback, DomainTraps, TrapEntry};
use crate::guest_view::GuestView;
use crate::hypercall::HypercallArgs;

/// Most `trap_info` entries one `set_trap_table` reads before its terminator (Xen has
/// no limit but preempts; 256 vectors never need more than this).
pub const MAX_TRAP_ENTRIES: u64 = 1024;

/// Handles the trap and callback hypercalls; `None` for every other number.
pub fn handle(
    traps: &DomainTraps,
    mem: &GuestView<'_>,
    vcpu: u32,
    call: &HypercallArgs,
) -> Option<i64> {
    let [a0, a1, a2, ..] = call.args;
    let nr = u32::try_from(call.nr).ok()?;
    let rc = match nr {
        nr::SET_TRAP_TABLE => set_trap_table(traps, mem, vcpu, a0),
        nr::SET_CALLBACKS => set_callbacks(traps, vcpu, [a0, a1, a2]),
        nr::CALLBACK_OP => callback_op(traps, mem, vcpu, a0, a1),
        nr::STACK_SWITCH => stack_switch(traps, vcpu, a0, a1),
        _ => return None,
    };
    Some(rc.map_or_else(i64::from, |()| 0))
}

/// `stack_switch(ss, sp)`: the stack the guest kernel is entered on from guest user
/// mode. Xen fixes up the selector's RPL rather than refusing it; rxen keeps what the
/// guest gave (with RPL 3, as every guest selector here has) and refuses a
/// non-canonical stack pointer.
fn stack_switch(traps: &DomainTraps, vcpu: u32, ss: u64, sp: u64) -> Result<(), i32> {
    if !crate::guest_view::is_canonical(sp) {
        return Err(-EINVAL);
    }
    let mut t = traps.vcpu(vcpu).ok_or(-EINVAL)?;
    t.kernel_stack = ((ss as u16) | 3, sp);
    Ok(())
}

/// `set_trap_table(table)`: a null pointer clears the table; otherwise entries are read
/// until one with `address == 0`.
fn set_trap_table(
    traps: &DomainTraps,
    mem: &GuestView<'_>,
    vcpu: u32,
    ptr: u64,
) -> Result<(), i32> {
    let mut t = traps.vcpu(vcpu).ok_or(-EINVAL)?;
    if ptr == 0 {
        t.table = [TrapEntry::default(); 256];
        return Ok(());
    }
    for i in 0..MAX_TRAP_ENTRIES {
        let at = ptr
            .checked_add(i * core::mem::size_of::<TrapInfo>() as u64)
            .ok_or(-EFAULT)?;
        let e: TrapInfo = mem.read(at).map_err(|_| -EFAULT)?;
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
    mem: &GuestView<'_>,
    vcpu: u32,
    cmd: u64,
    arg: u64,
) -> Result<(), i32> {
    let mut t = traps.vcpu(vcpu).ok_or(-EINVAL)?;
    match cmd {
        CALLBACKOP_REGISTER => {
            let r: CallbackRegister = mem.read(arg).map_err(|_| -EFAULT)?;
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
            let r: CallbackUnregister = mem.read(arg).map_err(|_| -EFAULT)?;
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
    fn stack_switch_records_the_kernel_stack() {
        let (traps, ram) = setup();
        let view = GuestView::identity(&ram);
        let rc = handle(
            &traps,
            &view,
            0,
            &call(nr::STACK_SWITCH, [0xe02b, 0x7000, 0, 0, 0]),
        );
        assert_eq!(rc, Some(0));
        assert_eq!(traps.vcpu(0).unwrap().kernel_stack, (0xe02b, 0x7000));
        // RPL forced to 3; a non-canonical stack and an unknown vCPU are refused.
        handle(
            &traps,
            &view,
            0,
            &call(nr::STACK_SWITCH, [0xe028, 0x8000, 0, 0, 0]),
        );
        assert_eq!(traps.vcpu(0).unwrap().kernel_stack, (0xe02b, 0x8000));
        let bad = call(nr::STACK_SWITCH, [0xe02b, 0x8000_0000_0000, 0, 0, 0]);
        assert_eq!(handle(&traps, &view, 0, &bad), Some(i64::from(-EINVAL)));
        let other = call(nr::STACK_SWITCH, [0xe02b, 0x7000, 0, 0, 0]);
        assert_eq!(handle(&traps, &view, 99, &other), Some(i64::from(-EINVAL)));
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
            &GuestView::identity(&ram),
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
                &GuestView::identity(&ram),
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
            &GuestView::identity(&ram),
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
            &GuestView::identity(&ram),
            0,
            &call(nr::SET_TRAP_TABLE, [BUF, 0, 0, 0, 0]),
        );
        assert_eq!(rc, Some(i64::from(-EINVAL)));
        assert_eq!(
            handle(
                &traps,
                &GuestView::identity(&ram),
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
            &GuestView::identity(&ram),
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
            &GuestView::identity(&ram),
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
            &GuestView::identity(&ram),
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
            &GuestView::identity(&ram),
            0,
            &call(nr::CALLBACK_OP, [CALLBACKOP_UNREGISTER, BUF, 0, 0, 0]),
        );
        assert_eq!(rc, Some(i64::from(-EINVAL)));
        let rc = handle(
            &traps,
            &GuestView::identity(&ram),
            0,
            &call(nr::CALLBACK_OP, [9, BUF, 0, 0, 0]),
        );
        assert_eq!(rc, Some(i64::from(-ENOSYS)));
    }
}
