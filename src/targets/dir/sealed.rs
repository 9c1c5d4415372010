//! A directory target that seals: the sets it lacks are sealed straight into a staging
//! directory of the store there (one read and one hash of each plaintext file, no protocol),
//! then committed through the same store code as any set, and the store there pruned by its own
//! policy. What it holds is the bucket's shape: `manifest.json` and its signature, the age
//! files, `seal.json` and its signature.

use super::DirStore;
use crate::files::{ReadAt, create_private, write_atomic};
use crate::protocol::Judge;
use crate::protocol::send::{OpenSet, PushStats};
use crate::seal::Sealing;
use crate::seal::record::{SEAL_NAME, SEAL_SIGNATURE_NAME, SealedFile, sealed_name};
use crate::seal::stream::Sealer;
use crate::store::Store;
use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

impl DirStore {
    /// Offers `sets` to the store there as a receiver would judge them, and seals in what it
    /// lacks (and what a verification found `damaged` there), newest first. One sender at a
    /// time (the receive lock); the store lock only to commit and prune.
    pub(super) fn push_sealed(
        &self,
        store: &Store,
        sets: &[OpenSet],
        damaged: &BTreeSet<String>,
        sealing: &Sealing,
    ) -> Result<PushStats> {
        let settings = &self.receiver;
        let wait = settings.store.lock_wait;
        let _session = store.lock_named(crate::store::RECEIVE_LOCK_FILE, wait)?;
        let listing = store.list()?;
        let held =
            crate::protocol::wants::held_sets(&listing, |s| damaged.contains(&s.manifest_sha256));
        let offers = crate::protocol::send::offers(sets);
        let judge = Judge {
            policy: &settings.retention,
            free_bytes: store.free_bytes()?,
            not_after: settings.not_after(),
            guard: None,
        };
        let plan = crate::protocol::wants(&offers, &held, &BTreeMap::new(), &judge);
        for id in &plan.conflicts {
            tracing::warn!(set_id = %id, "'{}' holds another set '{id}' (another manifest): left alone, not sent", self.target.path.display());
        }
        let by_id: BTreeMap<&str, &OpenSet> = sets.iter().map(|s| (s.set.id(), s)).collect();
        let mut stats = PushStats {
            offered: offers.len(),
            ..PushStats::default()
        };
        let floor = settings.retention.min_free_space.unwrap_or(0);
        for want in &plan.wants {
            let open = by_id[want.id.as_str()];
            let set = &open.set;
            store.ensure_room(
                &format!("set '{}'", want.id),
                set.manifest.total_size(),
                floor,
            )?;
            let staging = store.new_staging("seal")?;
            let sealed = seal_set(open, sealing, &staging, &self.sender).and_then(|bytes| {
                let _lock = store.lock(wait)?;
                if store.sets_dir().join(set.id()).exists() {
                    store.replace_damaged(&staging, &set.manifest, &set.manifest_sha256)?;
                } else {
                    store.commit(&staging, &set.manifest)?;
                }
                Ok(bytes)
            });
            let bytes = match sealed {
                Ok(bytes) => bytes,
                Err(error) => {
                    let _ = std::fs::remove_dir_all(&staging);
                    return Err(error.context(format!("set '{}'", want.id)));
                }
            };
            stats.data_bytes += bytes;
            stats.wire_bytes += bytes;
            stats.sent.push(want.id.clone());
        }
        stats.held = plan.holds + stats.sent.len();
        let _lock = store.lock(wait)?;
        crate::prune::prune(store, &settings.retention, false, settings.not_after())?;
        Ok(stats)
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
