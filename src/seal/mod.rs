//! Sealed sets. What leaves the masters for a bucket is encrypted to age recipients whose
//! identities the masters never hold (`age -d -i identity.txt` opens each object), and sets are
//! signed with the cluster signing key as SSH signatures (`ssh-keygen -Y verify` checks them).
//! A sealed copy holds, beside the plaintext manifest, a signed record of its ciphertexts
//! (`seal.json`), so that it is verified and healed without any identity; the plaintext digests
//! stay in the manifest, so every check after decryption keeps its meaning.

pub mod keys;
pub mod payload;
pub mod record;
pub mod sign;
pub mod stream;

use anyhow::Result;
use std::path::Path;

/// The keys a run seals and signs with, read once from the settings.
pub struct Sealing {
    pub snapshot: Vec<age::x25519::Recipient>,
    pub resources: Vec<age::x25519::Recipient>,
    pub signing_key: Option<ssh_key::PrivateKey>,
}

impl std::fmt::Debug for Sealing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealing")
            .field("snapshot", &self.snapshot.len())
            .field("resources", &self.resources.len())
            .field("signing_key", &self.signing_key.is_some())
            .finish()
    }
}

impl Sealing {
    /// The recipients (`age1…`, checked when the config was read) of each half of a set, and
    /// the signing key, loaded from its file when one is configured.
    pub fn new(
        snapshot: &[String],
        resources: &[String],
        signing_key: Option<&Path>,
    ) -> Result<Sealing> {
        let parse = |list: &[String]| -> Vec<age::x25519::Recipient> {
            list.iter()
                .filter_map(|r| keys::parse_recipient(r).ok())
                .collect()
        };
        Ok(Sealing {
            snapshot: parse(snapshot),
            resources: parse(resources),
            signing_key: signing_key.map(keys::load_signing_key).transpose()?,
        })
    }

    /// The record of a copy of set `id` (manifest digest `manifest_sha256`) sealed by this
    /// node (`sealed_by`) into `files`, and its signature when a signing key is configured:
    /// what a sealed target writes beside the age files, the signature before the record.
    pub fn record(
        &self,
        (id, manifest_sha256): (&str, &str),
        sealed_by: &str,
        files: Vec<record::SealedFile>,
    ) -> Result<(Vec<u8>, Option<String>)> {
        let record = record::Seal {
            format: 1,
            id: id.to_string(),
            manifest_sha256: manifest_sha256.to_string(),
            sealed: chrono::Utc::now(),
            sealed_by: sealed_by.to_string(),
            files,
        }
        .to_json();
        let signature = self
            .signing_key
            .as_ref()
            .map(|key| sign::sign(key, &record))
            .transpose()?;
        Ok((record, signature))
    }

    /// The recipients of a file of the set.
    pub fn recipients_of(&self, entry: &crate::manifest::FileEntry) -> &[age::x25519::Recipient] {
        if entry.is_snapshot() {
            &self.snapshot
        } else {
            &self.resources
        }
    }
}

/// Trusted signers from their public lines (checked when the config was read).
pub fn signers(lines: &[String]) -> Vec<ssh_key::PublicKey> {
    lines
        .iter()
        .filter_map(|s| keys::parse_signer(s).ok())
        .collect()
}

/// What is wrong with a copy's signatures for a node with these `signers` that `requires` them
/// (see [`sign::Verdict::problem`]): the manifest's (`manifest` and its `signature`, the set
/// named `what`), then a sealed copy's record's (`record`, named `record_name`).
pub fn signature_problem(
    (signers, requires): (&[ssh_key::PublicKey], bool),
    (manifest, signature): (&[u8], Option<&[u8]>),
    record: Option<&record::Record>,
    (what, record_name): (&str, &str),
) -> Option<String> {
    let of_manifest = sign::check(signers, manifest, signature).problem(requires, what);
    of_manifest.or_else(|| {
        let record = record?;
        sign::check(signers, &record.bytes, record.signature.as_deref())
            .problem(requires, &format!("the seal record {record_name}"))
    })
}
