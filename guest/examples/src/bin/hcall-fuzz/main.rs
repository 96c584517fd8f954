//! Makes many hypercalls with random numbers, arguments and pointers (good and bad),
//! then powers off: the VMM must survive all of them. Only calls that would end or
//! stall this guest on purpose are filtered (shutdown, block, poll, vCPU down/up,
//! segment base changes). `grant_table_op` and `XENMEM_add_to_physmap` get random
//! arguments built by [`grant`] so that what the hypervisor writes for them cannot
//! wreck the fuzzer. Prints `hcall-fuzz: N calls ...`, `hcall-fuzz: N grant calls
//! ...` and `hcall-fuzz: ok`.
#![no_std]
#![no_main]

use rxen_guest::abi::{hypercall as nr, layout, sched, vcpu};
use rxen_guest::hypercall::hypercall5;
use rxen_guest::{println, start, time};
use rxen_workloads::XorShift;

mod grant;

rxen_guest::entry!(main);

/// Target of the "valid" pointers: offsets stay below 16000 and no hypercall writes more
/// than 5168 bytes, so everything lands inside.
static mut SCRATCH: [u8; 32768] = [0; 32768];

fn pointer(r: &mut XorShift, scratch: u64) -> u64 {
    let x = r.next_u64();
    match x % 12 {
        0 => 0,
        1 => x,                                    // anything, mostly non-canonical
        2 => 0xffff_8000_0000_0000 | (x & 0xffff), // kernel half
        3 => layout::PAGE_TABLES + (x % 0x1000),   // read-only
        4 => layout::HYPERCALL_PAGE + (x % 0x1000),
        5 => 0x9000 + (x % 0x1000), // unmapped hole
        6 => (start::start_info().nr_pages << 12) - (x % 64), // end of RAM
        7 => 1 << 40,
        _ => scratch + (x % 16000), // valid scratch memory
    }
}

fn value(r: &mut XorShift) -> u64 {
    let x = r.next_u64();
    match x % 6 {
        0 => x % 16,
        1 => x % 4096,
        2 => u64::MAX - (x % 4),
        3 => x as u32 as u64,
        _ => x,
    }
}

fn main() {
    let calls: u64 = start::cmdline_value("calls")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let seed: u64 = start::cmdline_value("seed")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    let mut r = XorShift(seed | 1);
    let scratch = core::ptr::addr_of_mut!(SCRATCH) as u64;
    let (mut ok, mut err, mut skipped) = (0u64, 0u64, 0u64);
    let (mut grant_ok, mut grant_err) = (0u64, 0u64);
    grant::init();
    let t0 = time::now_ns();
    for _ in 0..calls {
        let number = match r.next_u64() % 8 {
            0 => (r.next_u64() % 200) as u32,
            _ => [
                nr::XEN_VERSION,
                nr::CONSOLE_IO,
                nr::SCHED_OP,
                nr::SET_TIMER_OP,
                nr::VCPU_OP,
                nr::EVENT_CHANNEL_OP,
                nr::MEMORY_OP,
                nr::GRANT_TABLE_OP,
            ][(r.next_u64() % 8) as usize],
        };
        let cmd = value(&mut r) % 20;
        let a = [
            cmd,
            pointer(&mut r, scratch),
            pointer(&mut r, scratch),
            value(&mut r),
            value(&mut r),
        ];
        if number == nr::GRANT_TABLE_OP
            || (number == nr::MEMORY_OP && cmd == rxen_guest::abi::memory::XENMEM_ADD_TO_PHYSMAP)
        {
            let rc = if number == nr::GRANT_TABLE_OP {
                grant::grant_table_op(&mut r)
            } else {
                grant::add_to_physmap(&mut r)
            };
            if rc < 0 {
                grant_err += 1
            } else {
                grant_ok += 1
            }
            continue;
        }
        let dangerous = match number {
            nr::SCHED_OP => !matches!(
                cmd,
                sched::SCHEDOP_YIELD | sched::SCHEDOP_SHUTDOWN_CODE | sched::SCHEDOP_WATCHDOG
            ),
            nr::VCPU_OP => matches!(
                cmd,
                vcpu::VCPUOP_DOWN | vcpu::VCPUOP_INITIALISE | vcpu::VCPUOP_UP
            ),
            nr::SET_SEGMENT_BASE => true,
            // `iret` returns to the frame at `rsp` (a garbage one crashes the domain,
            // as on Xen).
            nr::IRET => true,
            // A garbage event callback is entered at the next event (and crashes the
            // domain, as on Xen); unregistering and bad commands are still fuzzed.
            nr::SET_CALLBACKS => true,
            nr::CALLBACK_OP => cmd == rxen_guest::abi::callback::CALLBACKOP_REGISTER,
            // Console writes from readable memory would only print noise.
            nr::CONSOLE_IO => cmd == 0 && a[2] != 0,
            n if n >= 128 => true, // beyond the hypercall page
            _ => false,
        };
        // A watchdog with a random timeout could fire later; only let the fuzzer
        // create or change watchdogs whose arguments point at bytes it controls.
        if dangerous || (number == nr::SCHED_OP && cmd == sched::SCHEDOP_WATCHDOG) {
            skipped += 1;
            continue;
        }
        // SAFETY: the arguments are deliberately garbage; the hypervisor must cope.
        let rc = unsafe { hypercall5(number, a[0], a[1], a[2], a[3], a[4]) };
        if rc < 0 {
            err += 1
        } else {
            ok += 1
        }
    }
    let ms = (time::now_ns() - t0) / 1_000_000;
    println!(
        "hcall-fuzz: {} calls ({} ok, {} errors, {} skipped) in {} ms",
        ok + err,
        ok,
        err,
        skipped,
        ms
    );
    println!(
        "hcall-fuzz: {} grant calls ({} ok, {} errors)",
        grant_ok + grant_err,
        grant_ok,
        grant_err
    );
    println!("hcall-fuzz: ok");
}
