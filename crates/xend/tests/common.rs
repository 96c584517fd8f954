//! The shared test helpers (`rxen-testkit`), under the names these tests use.
#![allow(unused_imports)]

pub use rxen_testkit::{bin, guest, kvm_available, pid_alive, wait_until, Env};
