//! Decoding of hypercall arguments: from the raw registers and guest memory to a typed
//! [`Op`]. Every guest pointer is checked here (`-EFAULT`), every enumerated value
//! (`-EINVAL`/`-ENOSYS`). Decoding has no side effects, so it can be fuzzed alone.

use rxen_abi::console::*;
use rxen_abi::errno::*;
use rxen_abi::event_channel::*;
use rxen_abi::hypercall as nr;
use rxen_abi::memory::*;
use rxen_abi::sched::*;
use rxen_abi::vcpu::*;
use rxen_abi::version::*;
use rxen_abi::DomId;
use zerocopy::{FromBytes, IntoBytes};

use crate::guest_view::GuestView;
use crate::memory::Access;

/// Most bytes one `CONSOLEIO_write` may carry (longer writes fail with `-EINVAL`).
pub const MAX_CONSOLE_WRITE: u64 = 64 * 1024;

/// Registers of a hypercall: number and the five arguments (`rdi, rsi, rdx, r10, r8`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HypercallArgs {
    pub nr: u64,
    pub args: [u64; 5],
}

/// A decoded event-channel operation; `ptr` is where results are written back.
#[derive(Clone, Copy, Debug)]
pub enum EvtchnOp {
    AllocUnbound {
        ptr: u64,
        arg: EvtchnAllocUnbound,
    },
    BindInterdomain {
        ptr: u64,
        arg: EvtchnBindInterdomain,
    },
    BindVirq {
        ptr: u64,
        arg: EvtchnBindVirq,
    },
    BindIpi {
        ptr: u64,
        arg: EvtchnBindIpi,
    },
    Close {
        port: u32,
    },
    Send {
        port: u32,
    },
    Status {
        ptr: u64,
        dom: DomId,
        port: u32,
    },
    BindVcpu {
        port: u32,
        vcpu: u32,
    },
    Unmask {
        port: u32,
    },
    Reset {
        dom: DomId,
    },
}

/// A decoded `vcpu_op`.
#[derive(Clone, Debug)]
pub enum VcpuOp {
    Initialise(Box<VcpuGuestContext>),
    Up,
    Down,
    IsUp,
    GetRunstateInfo {
        ptr: u64,
    },
    /// `VCPUOP_register_runstate_memory_area`: the guest virtual address Xen keeps a
    /// `vcpu_runstate_info` at (0: none).
    RegisterRunstateArea {
        addr: u64,
    },
    /// `VCPUOP_register_vcpu_info`: move the vCPU's `vcpu_info` to `mfn`:`offset`.
    RegisterVcpuInfo {
        mfn: u64,
        offset: u32,
    },
    SetSingleshotTimer {
        timeout_abs_ns: u64,
        flags: u32,
    },
    StopSingleshotTimer,
    StopPeriodicTimer,
}

/// A decoded hypercall.
#[derive(Clone, Debug)]
pub enum Op {
    XenVersion {
        cmd: u64,
        ptr: u64,
    },
    ConsoleWrite {
        bytes: Vec<u8>,
    },
    ConsoleRead {
        ptr: u64,
        count: u64,
    },
    SchedYield,
    SchedBlock,
    SchedShutdown {
        reason: u32,
    },
    SchedShutdownCode {
        reason: u32,
    },
    SchedRemoteShutdown {
        dom: DomId,
        reason: u32,
    },
    SchedPoll {
        ports: Vec<u32>,
        timeout: u64,
    },
    SchedWatchdog {
        id: u32,
        timeout: u32,
    },
    SetTimer {
        deadline: u64,
    },
    Vcpu {
        vcpu: u64,
        op: VcpuOp,
    },
    Evtchn(EvtchnOp),
    MemoryReservation {
        maximum: bool,
        dom: DomId,
    },
    MaximumRamPage,
    MemoryMap {
        ptr: u64,
        nr_entries: u32,
        buffer: u64,
    },
    SetSegmentBase {
        which: u64,
        base: u64,
    },
    /// `grant_table_op` (decoded by [`crate::grant::hypercall::decode`]).
    GrantTable(crate::grant::hypercall::GrantOp),
    /// `XENMEM_add_to_physmap`.
    AddToPhysmap(rxen_abi::grant_table::XenAddToPhysmap),
}

fn read<T: FromBytes + IntoBytes>(mem: &GuestView<'_>, ptr: u64) -> Result<T, i32> {
    mem.read(ptr).map_err(|_| -EFAULT)
}

fn check_writable<T>(mem: &GuestView<'_>, ptr: u64) -> Result<(), i32> {
    mem.check(ptr, size_of::<T>() as u64, Access::Write)
        .map_err(|_| -EFAULT)
}

fn check_shutdown_reason(reason: u32) -> Result<u32, i32> {
    if reason <= SHUTDOWN_SOFT_RESET {
        Ok(reason)
    } else {
        Err(-EINVAL)
    }
}

/// Decodes one hypercall. `Err` is the (negative) value to return to the guest.
pub fn decode(call: HypercallArgs, mem: &GuestView<'_>) -> Result<Op, i32> {
    let [a0, a1, a2, _a3, _a4] = call.args;
    let number = u32::try_from(call.nr).map_err(|_| -ENOSYS)?;
    match number {
        nr::XEN_VERSION => match a0 {
            XENVER_VERSION | XENVER_PAGESIZE => Ok(Op::XenVersion { cmd: a0, ptr: 0 }),
            XENVER_EXTRAVERSION
            | XENVER_COMPILE_INFO
            | XENVER_CAPABILITIES
            | XENVER_CHANGESET
            | XENVER_PLATFORM_PARAMETERS
            | XENVER_GET_FEATURES
            | XENVER_GUEST_HANDLE
            | XENVER_COMMANDLINE
            | XENVER_BUILD_ID => Ok(Op::XenVersion { cmd: a0, ptr: a1 }),
            _ => Err(-ENOSYS),
        },
        nr::CONSOLE_IO => match a0 {
            CONSOLEIO_WRITE => {
                if a1 > MAX_CONSOLE_WRITE {
                    return Err(-EINVAL);
                }
                let mut bytes = vec![0u8; a1 as usize];
                mem.read_bytes(a2, &mut bytes).map_err(|_| -EFAULT)?;
                Ok(Op::ConsoleWrite { bytes })
            }
            CONSOLEIO_READ => {
                let count = a1.min(MAX_CONSOLE_WRITE);
                mem.check(a2, count, Access::Write).map_err(|_| -EFAULT)?;
                Ok(Op::ConsoleRead { ptr: a2, count })
            }
            _ => Err(-EINVAL),
        },
        nr::SCHED_OP => match a0 {
            SCHEDOP_YIELD => Ok(Op::SchedYield),
            SCHEDOP_BLOCK => Ok(Op::SchedBlock),
            SCHEDOP_SHUTDOWN => {
                let s: SchedShutdown = read(mem, a1)?;
                Ok(Op::SchedShutdown {
                    reason: check_shutdown_reason(s.reason)?,
                })
            }
            SCHEDOP_SHUTDOWN_CODE => {
                let s: SchedShutdown = read(mem, a1)?;
                Ok(Op::SchedShutdownCode {
                    reason: check_shutdown_reason(s.reason)?,
                })
            }
            SCHEDOP_REMOTE_SHUTDOWN => {
                let s: SchedRemoteShutdown = read(mem, a1)?;
                Ok(Op::SchedRemoteShutdown {
                    dom: s.domain_id,
                    reason: check_shutdown_reason(s.reason)?,
                })
            }
            SCHEDOP_POLL => {
                let p: SchedPoll = read(mem, a1)?;
                if p.nr_ports > POLL_MAX_PORTS {
                    return Err(-EINVAL);
                }
                let mut ports = vec![0u32; p.nr_ports as usize];
                mem.read_bytes(p.ports, ports.as_mut_bytes())
                    .map_err(|_| -EFAULT)?;
                Ok(Op::SchedPoll {
                    ports,
                    timeout: p.timeout,
                })
            }
            SCHEDOP_WATCHDOG => {
                let w: SchedWatchdog = read(mem, a1)?;
                Ok(Op::SchedWatchdog {
                    id: w.id,
                    timeout: w.timeout,
                })
            }
            _ => Err(-ENOSYS),
        },
        nr::SET_TIMER_OP => Ok(Op::SetTimer { deadline: a0 }),
        nr::VCPU_OP => {
            let op = match a0 {
                VCPUOP_INITIALISE => {
                    let mut ctx = <VcpuGuestContext as zerocopy::FromZeros>::new_box_zeroed()
                        .map_err(|_| -ENOMEM)?;
                    mem.read_bytes(a2, ctx.as_mut_bytes())
                        .map_err(|_| -EFAULT)?;
                    VcpuOp::Initialise(ctx)
                }
                VCPUOP_UP => VcpuOp::Up,
                VCPUOP_DOWN => VcpuOp::Down,
                VCPUOP_IS_UP => VcpuOp::IsUp,
                VCPUOP_GET_RUNSTATE_INFO => {
                    check_writable::<VcpuRunstateInfo>(mem, a2)?;
                    VcpuOp::GetRunstateInfo { ptr: a2 }
                }
                VCPUOP_REGISTER_VCPU_INFO => {
                    let words: [u64; 2] = read(mem, a2)?;
                    VcpuOp::RegisterVcpuInfo {
                        mfn: words[0],
                        offset: words[1] as u32,
                    }
                }
                VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA => {
                    let addr: u64 = read(mem, a2)?;
                    VcpuOp::RegisterRunstateArea { addr }
                }
                VCPUOP_SET_SINGLESHOT_TIMER => {
                    let t: VcpuSetSingleshotTimer = read(mem, a2)?;
                    VcpuOp::SetSingleshotTimer {
                        timeout_abs_ns: t.timeout_abs_ns,
                        flags: t.flags,
                    }
                }
                VCPUOP_STOP_SINGLESHOT_TIMER => VcpuOp::StopSingleshotTimer,
                VCPUOP_STOP_PERIODIC_TIMER => VcpuOp::StopPeriodicTimer,
                _ => return Err(-ENOSYS),
            };
            Ok(Op::Vcpu { vcpu: a1, op })
        }
        nr::EVENT_CHANNEL_OP => {
            let op = match a0 {
                EVTCHNOP_ALLOC_UNBOUND => {
                    check_writable::<EvtchnAllocUnbound>(mem, a1)?;
                    EvtchnOp::AllocUnbound {
                        ptr: a1,
                        arg: read(mem, a1)?,
                    }
                }
                EVTCHNOP_BIND_INTERDOMAIN => {
                    check_writable::<EvtchnBindInterdomain>(mem, a1)?;
                    EvtchnOp::BindInterdomain {
                        ptr: a1,
                        arg: read(mem, a1)?,
                    }
                }
                EVTCHNOP_BIND_VIRQ => {
                    check_writable::<EvtchnBindVirq>(mem, a1)?;
                    EvtchnOp::BindVirq {
                        ptr: a1,
                        arg: read(mem, a1)?,
                    }
                }
                EVTCHNOP_BIND_IPI => {
                    check_writable::<EvtchnBindIpi>(mem, a1)?;
                    EvtchnOp::BindIpi {
                        ptr: a1,
                        arg: read(mem, a1)?,
                    }
                }
                EVTCHNOP_CLOSE => EvtchnOp::Close {
                    port: read::<EvtchnPortArg>(mem, a1)?.port,
                },
                EVTCHNOP_SEND => EvtchnOp::Send {
                    port: read::<EvtchnPortArg>(mem, a1)?.port,
                },
                EVTCHNOP_UNMASK => EvtchnOp::Unmask {
                    port: read::<EvtchnPortArg>(mem, a1)?.port,
                },
                EVTCHNOP_STATUS => {
                    check_writable::<EvtchnStatus>(mem, a1)?;
                    let s: EvtchnStatus = read(mem, a1)?;
                    EvtchnOp::Status {
                        ptr: a1,
                        dom: s.dom,
                        port: s.port,
                    }
                }
                EVTCHNOP_BIND_VCPU => {
                    let b: EvtchnBindVcpu = read(mem, a1)?;
                    EvtchnOp::BindVcpu {
                        port: b.port,
                        vcpu: b.vcpu,
                    }
                }
                EVTCHNOP_RESET => EvtchnOp::Reset {
                    dom: read::<EvtchnReset>(mem, a1)?.dom,
                },
                _ => return Err(-ENOSYS),
            };
            Ok(Op::Evtchn(op))
        }
        nr::MEMORY_OP => match a0 & MEMOP_CMD_MASK {
            XENMEM_CURRENT_RESERVATION | XENMEM_MAXIMUM_RESERVATION => Ok(Op::MemoryReservation {
                maximum: a0 & MEMOP_CMD_MASK == XENMEM_MAXIMUM_RESERVATION,
                dom: read::<u16>(mem, a1)?,
            }),
            XENMEM_MAXIMUM_RAM_PAGE => Ok(Op::MaximumRamPage),
            XENMEM_ADD_TO_PHYSMAP => Ok(Op::AddToPhysmap(read(mem, a1)?)),
            XENMEM_MEMORY_MAP => {
                check_writable::<XenMemoryMap>(mem, a1)?;
                let m: XenMemoryMap = read(mem, a1)?;
                Ok(Op::MemoryMap {
                    ptr: a1,
                    nr_entries: m.nr_entries,
                    buffer: m.buffer,
                })
            }
            _ => Err(-ENOSYS),
        },
        nr::GRANT_TABLE_OP => crate::grant::hypercall::decode(a0, a1, a2, mem).map(Op::GrantTable),
        nr::SET_SEGMENT_BASE => Ok(Op::SetSegmentBase {
            which: a0,
            base: a1,
        }),
        _ => Err(-ENOSYS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestRam;

    fn ram() -> GuestRam {
        GuestRam::new("dec", 8 << 20).unwrap()
    }

    fn call(n: u32, args: [u64; 5]) -> HypercallArgs {
        HypercallArgs { nr: n as u64, args }
    }

    #[test]
    fn unknown_numbers_are_enosys() {
        let r = ram();
        for n in [0u32, 1, 2, 13, 40, 127, 5000] {
            assert_eq!(
                decode(call(n, [0; 5]), &GuestView::identity(&r)).unwrap_err(),
                -ENOSYS,
                "nr {n}"
            );
        }
        assert_eq!(
            decode(
                HypercallArgs {
                    nr: u64::MAX,
                    args: [0; 5]
                },
                &GuestView::identity(&r)
            )
            .unwrap_err(),
            -ENOSYS
        );
        assert_eq!(
            decode(
                call(nr::SCHED_OP, [99, 0, 0, 0, 0]),
                &GuestView::identity(&r)
            )
            .unwrap_err(),
            -ENOSYS
        );
        assert_eq!(
            decode(
                call(
                    nr::EVENT_CHANNEL_OP,
                    [EVTCHNOP_BIND_PIRQ, 0x500000, 0, 0, 0]
                ),
                &GuestView::identity(&r)
            )
            .unwrap_err(),
            -ENOSYS
        );
    }

    #[test]
    fn bad_pointers_are_efault() {
        let r = ram();
        for ptr in [
            0u64,
            0x9000,
            8 << 20,
            u64::MAX,
            0xffff_8000_0000_0000,
            rxen_abi::layout::BOOT_STACK_BOTTOM - 8,
        ] {
            assert_eq!(
                decode(
                    call(nr::SCHED_OP, [SCHEDOP_SHUTDOWN, ptr, 0, 0, 0]),
                    &GuestView::identity(&r)
                )
                .unwrap_err(),
                -EFAULT,
                "{ptr:#x}"
            );
            assert_eq!(
                decode(
                    call(nr::CONSOLE_IO, [CONSOLEIO_WRITE, 4, ptr, 0, 0]),
                    &GuestView::identity(&r)
                )
                .unwrap_err(),
                -EFAULT
            );
        }
        // Readable but not writable: page tables for an output struct.
        let pt = rxen_abi::layout::PAGE_TABLES;
        assert_eq!(
            decode(
                call(nr::EVENT_CHANNEL_OP, [EVTCHNOP_BIND_IPI, pt, 0, 0, 0]),
                &GuestView::identity(&r)
            )
            .unwrap_err(),
            -EFAULT
        );
        assert!(decode(
            call(nr::EVENT_CHANNEL_OP, [EVTCHNOP_SEND, pt, 0, 0, 0]),
            &GuestView::identity(&r)
        )
        .is_ok());
    }

    #[test]
    fn values_are_validated() {
        let r = ram();
        r.write_obj(0x500000, &SchedShutdown { reason: 77 })
            .unwrap();
        assert_eq!(
            decode(
                call(nr::SCHED_OP, [SCHEDOP_SHUTDOWN, 0x500000, 0, 0, 0]),
                &GuestView::identity(&r)
            )
            .unwrap_err(),
            -EINVAL
        );
        r.write_obj(
            0x500000,
            &SchedPoll {
                ports: 0x500100,
                nr_ports: 129,
                pad: 0,
                timeout: 0,
            },
        )
        .unwrap();
        assert_eq!(
            decode(
                call(nr::SCHED_OP, [SCHEDOP_POLL, 0x500000, 0, 0, 0]),
                &GuestView::identity(&r)
            )
            .unwrap_err(),
            -EINVAL
        );
        assert_eq!(
            decode(
                call(
                    nr::CONSOLE_IO,
                    [CONSOLEIO_WRITE, MAX_CONSOLE_WRITE + 1, 0x500000, 0, 0]
                ),
                &GuestView::identity(&r)
            )
            .unwrap_err(),
            -EINVAL
        );
        assert_eq!(
            decode(
                call(nr::CONSOLE_IO, [7, 0, 0, 0, 0]),
                &GuestView::identity(&r)
            )
            .unwrap_err(),
            -EINVAL
        );
        r.write(0x500000, b"hi").unwrap();
        match decode(
            call(nr::CONSOLE_IO, [CONSOLEIO_WRITE, 2, 0x500000, 0, 0]),
            &GuestView::identity(&r),
        )
        .unwrap()
        {
            Op::ConsoleWrite { bytes } => assert_eq!(bytes, b"hi"),
            other => panic!("{other:?}"),
        }
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(n in 0u64..64, a0 in 0u64..16, a1: u64, a2: u64, fill: u8) {
            let r = ram();
            r.write(0x500000, &[fill; 4096]).unwrap();
            let pick = |x: u64| match x % 4 { 0 => 0x500000 + (x >> 2) % 4096, 1 => x, 2 => x % (8 << 20), _ => rxen_abi::layout::START_INFO };
            let _ = decode(HypercallArgs { nr: n, args: [a0, pick(a1), pick(a2), 0, 0] }, &GuestView::identity(&r));
        }
    }
}
