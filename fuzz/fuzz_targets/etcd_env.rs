//! OpenShift's etcd.env, whatever the node holds: problems are reported, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let env = etcd_backup::peers::parse_etcd_env(text);
        for peer in &env.peers {
            assert!(!peer.name.is_empty());
        }
    }
});
