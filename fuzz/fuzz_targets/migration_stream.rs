//! Any bytes given to the saved-image reader are read or refused with a typed error,
//! never a panic, and reading stops (no unbounded allocation or loop).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = rxen_migration::ImageReader::open(data) else {
        return;
    };
    while let Ok(Some(_)) = reader.next_item() {}
});
