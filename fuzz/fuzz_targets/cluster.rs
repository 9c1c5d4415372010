//! What a node's files and a set's archive say of the cluster (`cluster`): the head of a WAL
//! file, a rendered MachineConfig, an EncryptionConfiguration and certificate files as the
//! archive scan reads them — never a panic; a WAL's cluster ID is never zero, a release is
//! always a release version, the facts stay bounded, and the oldest certificate is never
//! younger than the member certificates' window.
#![no_main]

use etcd_backup::cluster::{archive, release, wal};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((kind, body)) = data.split_first() else {
        return;
    };
    match kind % 4 {
        0 => {
            if let Ok(meta) = wal::parse(body) {
                assert_ne!(meta.cluster_id, 0);
            }
        }
        1 => {
            if let Ok(v) = release::parse(body) {
                assert!(release::is_release(&v));
            }
        }
        2 => {
            if let Ok(e) = archive::encryption(body) {
                assert!(e.provider.len() <= 32);
                assert!(e.resources.len() <= 64 * 64);
            }
        }
        _ => {
            let mut scan = archive::Scan::default();
            for (n, chunk) in body.split(|b| *b == 0).enumerate().take(8) {
                let path = match n % 3 {
                    0 => "static-pod-resources/etcd-pod-3/secrets/etcd-all-certs/etcd-peer-m.crt",
                    1 => {
                        "static-pod-resources/etcd-pod-3/configmaps/etcd-all-bundles/server-ca-bundle.crt"
                    }
                    _ => {
                        "static-pod-resources/kube-apiserver-pod-7/secrets/encryption-config/encryption-config"
                    }
                };
                let mut reader = chunk;
                scan.entry(path, chunk.len() as u64, &mut reader)
                    .expect("reading from memory");
            }
            let facts = scan.finish();
            if let Ok(c) = facts.certificates {
                assert!(c.count > 0 && c.count <= 1024 && c.first_issued <= c.not_before);
            }
        }
    }
});
