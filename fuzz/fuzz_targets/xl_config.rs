//! Arbitrary text through the xl.cfg parser and spec validation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = rxen_xlcfg::DomainSpec::from_xl(s);
    }
});
