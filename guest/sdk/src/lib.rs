//! The rxen guest SDK: everything a paravirtualized guest (a unikernel) needs to run
//! on rxen, built on Xen's guest interfaces.
//!
//! It owns the guest side of the ABI: the entry point and boot from `start_info`
//! ([`start`]), hypercall wrappers ([`hypercall`]), the console ([`println!`]), event
//! channels ([`events`]), grant tables ([`grant`]), the block frontend ([`blkfront`]), the network frontend and its TCP/IP stack
//! ([`net`], smoltcp), time and timers ([`time`]), the heap ([`heap`]), a small
//! executor that blocks in `SCHEDOP_block` when idle ([`executor`]), secondary vCPUs
//! ([`smp`]) and the panic handler. It must not contain application logic; example
//! guests live in the `examples` crate.
//!
//! A guest is a `#![no_std]`, `#![no_main]` binary that names its main function with
//! [`entry!`], which makes it a Xen PV kernel (booted on Xen's PV layout, see [`pv`]).
//! Returning from main powers the domain off. [`entry_rxen_layout!`] instead boots it
//! on rxen's older private layout (no notes).
#![no_std]

extern crate alloc;

pub mod blkfront;
pub mod console;
mod console_ring;
pub mod events;
pub mod executor;
pub mod grant;
pub mod heap;
pub mod hypercall;
mod mem;
pub mod net;
pub mod percpu;
pub mod pv;
pub mod smp;
pub mod start;
pub mod suspend;
pub mod time;
pub mod traps;
pub mod xenstore;

pub use rxen_abi as abi;

/// Declares the guest's main function, `rxen_guest::entry!(main);` with `fn main()`,
/// and makes the binary a Xen PV kernel (Xen's ELF notes and PV entry, see [`pv`]):
/// rxen and Xen boot it on Xen's x86-64 PV layout.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        $crate::entry_rxen_layout!($main);
        $crate::xen_pv_kernel!();
    };
}

/// Declares the guest's main function without Xen's notes: the binary boots on rxen's
/// own auto-translated identity layout (docs/guest-abi.md "Memory layout"), which the
/// VMM still builds for kernels without notes. Kept for guests that test that layout.
#[macro_export]
macro_rules! entry_rxen_layout {
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
