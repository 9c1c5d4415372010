//! A directory target that seals: the sets it lacks are sealed straight into a staging
//! directory of the store there (one read and one hash of each plaintext file, no protocol;
//! the session is `direct`'s). What it holds is the bucket's shape: `manifest.json` and its
//! signature, the age files, `seal.json` and its signature.

use super::DirStore;
use crate::files::{ReadAt, create_private, write_atomic};
use crate::protocol::send::{OpenSet, PushStats};
use crate::seal::Sealing;
use crate::seal::record::{SEAL_NAME, SEAL_SIGNATURE_NAME, SealedFile, sealed_name};
use crate::seal::stream::Sealer;
use crate::store::Store;
use anyhow::{Context, Result, bail};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

impl DirStore {
    /// Seals what the store there lacks of `sets` straight into it (see `push_direct`).
    pub(super) fn push_sealed(
        &self,
        store: &Store,
        sets: &[OpenSet],
        damaged: &BTreeSet<String>,
        sealing: &Sealing,
    ) -> Result<PushStats> {
        self.push_direct(store, sets, damaged, &|open, staging| {
            seal_set(open, sealing, staging, &self.sender)
        })
    }
}

/// Seals every file of `open` into `staging` (fsynced), checking each plaintext against the
/// manifest as it is read, then writes the record, its signature and the manifest's. Returns
/// the sealed bytes written.
fn seal_set(open: &OpenSet, sealing: &Sealing, staging: &Path, sealed_by: &str) -> Result<u64> {
    let set = &open.set;
    let mut files = Vec::new();
    let mut written = 0;
    for (entry, file) in set.manifest.files.iter().zip(open.files()) {
        let recipients = sealing.recipients_of(entry);
        let source = set.dir.join(&entry.name);
        let path = staging.join(sealed_name(&entry.name));
        let mut sealer = Sealer::new(recipients, ReadAt { file, offset: 0 }, entry.size)
            .with_context(|| format!("cannot seal '{}'", source.display()))?;
        let size = sealer.size();
        let mut out = std::io::BufWriter::with_capacity(1 << 20, create_private(&path)?);
        std::io::copy(&mut sealer, &mut out)
            .and_then(|_| out.flush())
            .with_context(|| {
                format!(
                    "cannot seal '{}' into '{}'",
                    source.display(),
                    path.display()
                )
            })?;
        out.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot write '{}'", path.display()))?;
        let (plain, sealed) = sealer.digests();
        let sealed = sealed.expect("the sealer hashes what it writes here");
        if crate::hash::hex(&plain) != entry.sha256 {
            bail!(
                "'{}' does not match its manifest (changed or damaged since it was verified): not sent",
                source.display()
            );
        }
        written += size;
        files.push(SealedFile {
            name: entry.name.clone(),
            size,
            sha256: crate::hash::hex(&sealed),
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
        });
    }
    let (record, signature) = sealing.record((set.id(), &set.manifest_sha256), sealed_by, files)?;
    if let Some(signature) = signature {
        write_atomic(staging, SEAL_SIGNATURE_NAME, signature.as_bytes())?;
    }
    write_atomic(staging, SEAL_NAME, &record)?;
    if let Some(signature) = &set.signature {
        Store::write_signature(staging, signature)?;
    }
    Ok(written)
}
