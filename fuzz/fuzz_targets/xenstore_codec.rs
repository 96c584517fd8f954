//! Arbitrary bytes through the frame decoder and, for each frame, the store.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rxen_xenstore::store::Store;
use rxen_xenstore::wire::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut d = Decoder::default();
    let mut s = Store::new();
    s.connect(1, 0, true);
    s.connect(2, 5, false);
    d.push(data);
    while let Ok(Some(m)) = d.next_message() {
        s.handle(1, &m);
        s.handle(2, &m);
    }
    assert_eq!(s.check_consistency(), "OK\n");
});
