//! The rxen guest SDK: everything a paravirtualized guest (a unikernel) needs to run
//! on rxen, built on Xen's guest interfaces.
//!
//! It owns the guest side of the ABI: the entry point and boot from `start_info`
//! ([`start`]), hypercall wrappers ([`hypercall`]), the console ([`println!`]), event
//! channels ([`events`]), grant tables ([`grant`]), time and timers ([`time`]), the heap ([`heap`]), a small
//! executor that blocks in `SCHEDOP_block` when idle ([`executor`]), secondary vCPUs
//! ([`smp`]) and the panic handler. It must not contain application logic; example
//! guests live in the `examples` crate.
//!
//! A guest is a `#![no_std]`, `#![no_main]` binary that names its main function with
//! [`entry!`]. Returning from main powers the domain off. A guest that also invokes
//! [`xen_pv_kernel!`] is a Xen PV kernel instead (booted on Xen's PV layout, see
//! [`pv`]).
#![no_std]

extern crate alloc;

pub mod console;
mod console_ring;
pub mod events;
pub mod executor;
pub mod grant;
pub mod heap;
pub mod hypercall;
mod mem;
pub mod percpu;
pub mod pv;
pub mod smp;
pub mod start;
pub mod time;
pub mod traps;
pub mod xenstore;

pub use rxen_abi as abi;

/// Declares the guest's main function: `rxen_guest::entry!(main);` with `fn main()`.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[no_mangle]
        pub extern "Rust" fn __rxen_guest_main() {
            let f: fn() = $main;
            f()
        }
    };
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    console::emergency_print(format_args!("guest panic: {}\n", info));
    hypercall::shutdown(abi::sched::SHUTDOWN_CRASH)
}

/// The precompiled `alloc` crate references the unwinding personality routine even
/// though guests are built with `panic = "abort"` and never unwind; it is never called.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

/// Referenced by landing pads in the precompiled `alloc`; with `panic = "abort"` no
/// unwinding ever starts, so reaching it is a bug: crash the domain.
#[no_mangle]
pub extern "C" fn _Unwind_Resume() -> ! {
    hypercall::shutdown(abi::sched::SHUTDOWN_CRASH)
}
