//! `console_io` commands and the console ring (xen/include/public/xen.h, io/console.h).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub const CONSOLEIO_WRITE: u64 = 0;
pub const CONSOLEIO_READ: u64 = 1;

/// `struct xencons_interface`: the console ring page.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenconsInterface {
    pub input: [u8; 1024],
    pub output: [u8; 2048],
    pub in_cons: u32,
    pub in_prod: u32,
    pub out_cons: u32,
    pub out_prod: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout_check::assert_layout;

    #[test]
    fn layouts() {
        assert_layout!(
            XenconsInterface,
            size = 3088,
            input = 0,
            output = 1024,
            in_cons = 3072,
            in_prod = 3076,
            out_cons = 3080,
            out_prod = 3084
        );
    }
}
