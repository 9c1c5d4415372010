//! A hostile sender: arbitrary bytes on the receiver's stdin, into a real (temporary) store.
//! The receiver must answer with an error or commit only a set that verifies, never panic,
//! never write outside its store.
#![no_main]

use etcd_backup::config::Settings;
use etcd_backup::protocol::{Conn, Duplex};
use etcd_backup::store::Store;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let settings = Settings::from_sources("fuzz-receiver".into(), &[]).unwrap();
    let mut conn = Conn::new(Duplex::new(data, std::io::sink()), true);
    let peer = etcd_backup::protocol::serve::PeerSender::default();
    let sender = etcd_backup::protocol::serve::Sender::Peer(&peer);
    if etcd_backup::protocol::serve::serve(&settings, &store, &mut conn, sender).is_ok() {
        for set in store.list().unwrap().sets {
            assert!(
                set.problem.is_none(),
                "committed a set that does not verify"
            );
        }
    }
    // Nothing but the store appeared in the directory.
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1);
});
