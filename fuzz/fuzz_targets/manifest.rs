//! manifest.json as read from a store or a sender: parse errors, never panics; what parses
//! round-trips.
#![no_main]

use etcd_backup::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = Manifest::parse(data) {
        let again = Manifest::parse(&manifest.to_json()).expect("a written manifest parses");
        assert_eq!(again.to_json(), manifest.to_json());
    }
});
