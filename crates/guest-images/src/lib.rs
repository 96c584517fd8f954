//! The guest images built from the `guest/` workspace.
//!
//! Owns only the build of the guest workspace (see `build.rs`) and access to its
//! results: the embedded default guest and the directory where every example guest is
//! installed (`target/guests/NAME`). It must not contain guest or VMM logic.

/// The default guest (`idle`: runs until shut down through xenstore), embedded for
/// the demo, for `xm create` of configs without `kernel`, and for `xen-vmm run`
/// without `--kernel`.
pub static DEFAULT_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/default-guest.elf"));

/// Where the build installed the example guests.
pub const GUESTS_DIR: &str = env!("RXEN_GUESTS_DIR");

// Names of the example guests (`GUESTS`), as the build script installed them.
include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// Path of example guest `name`.
pub fn guest_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(GUESTS_DIR).join(name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_guest_is_an_elf() {
        assert_eq!(&super::DEFAULT_GUEST[..4], b"\x7fELF");
        for g in super::GUESTS {
            assert!(super::guest_path(g).exists(), "{g} installed");
        }
    }
}
