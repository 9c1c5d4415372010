//! What a sealed copy holds, as a bucket or an export gives it back: a seal record (checked
//! against its manifest), a signature, an age file. The first byte picks which. Errors, never
//! panics; a record that parses round-trips; an age file's plaintext is read within a bound.
#![no_main]

use etcd_backup::manifest::{Manifest, digest};
use etcd_backup::seal::{keys, record::Seal, sign, stream};
use libfuzzer_sys::fuzz_target;
use std::io::Read;
use std::str::FromStr;

/// The manifest every record is judged against (the manifest seed).
const MANIFEST: &[u8] = include_bytes!("../corpus/manifest/set");
/// A key pair made for this target only (it opens and signs the seeds, nothing else).
const IDENTITY: &str = "AGE-SECRET-KEY-1KJUDFUM79EAMKE9L04FRN8GF5SMKFZR778YQCX246KQ44YPDG2YS40N4C0";
const SIGNER: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIY6pdNCEBCbaBqDgMFWO8M4Ayj0PYDbVY+5fguxUYEg etcd-backup signing key";

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            let manifest = Manifest::parse(MANIFEST).expect("the seed manifest");
            let sha256 = digest(MANIFEST);
            if let Ok(seal) = Seal::parse(rest, &manifest, &sha256) {
                let again = Seal::parse(&seal.to_json(), &manifest, &sha256)
                    .expect("a written record parses");
                assert_eq!(again, seal);
            }
        }
        1 => {
            let signer = keys::parse_signer(SIGNER).expect("the signer");
            let _ = sign::check(&[signer], MANIFEST, Some(rest));
        }
        _ => {
            let identity = age::x25519::Identity::from_str(IDENTITY).expect("the identity");
            if let Ok(plain) = stream::open(rest, std::slice::from_ref(&identity), "fuzz") {
                let _ = std::io::copy(&mut plain.take(16 << 20), &mut std::io::sink());
            }
        }
    }
});
