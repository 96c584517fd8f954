//! The shared test helpers (`rxen-testkit`), under the names these tests use.
// A test fails by panicking: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(unused_imports)]

pub use rxen_testkit::{bin, guest, kvm_available, pid_alive, wait_until, Env};
