//! Sets written straight into the store of a directory target, without the protocol: the
//! session a receiver would hold there (its receive lock, its judgement of what it lacks, room
//! above its floor), each set staged whole by a writer of the target's kind — copied as it is
//! ([`copy_set`]) or sealed (`sealed`) — then committed through the same store code as any set,
//! and the store there pruned by its own policy.

use super::DirStore;
use crate::files::{Behind, DirectWriter, create_private};
use crate::protocol::Judge;
use crate::protocol::send::{OpenSet, PushStats};
use crate::store::Store;
use crate::verify::FileCheck;
use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes read and written at a time by [`copy_set`].
const COPY_BUF_BYTES: usize = 1 << 20;

impl DirStore {
    /// Offers `sets` to the store there as a receiver would judge them, and has `stage` write
    /// what it lacks (and what a verification found `damaged` there) into a staging directory
    /// of that store, newest first; `stage` returns the bytes it wrote. One sender at a time
    /// (the receive lock); the store lock only to commit and prune.
    pub(super) fn push_direct(
        &self,
        store: &Store,
        sets: &[OpenSet],
        damaged: &BTreeSet<String>,
        stage: &dyn Fn(&OpenSet, &Path) -> Result<u64>,
    ) -> Result<PushStats> {
        let settings = &self.receiver;
        let wait = settings.store.lock_wait;
        let _session = store.lock_named(crate::store::RECEIVE_LOCK_FILE, wait)?;
        // What a killed session staged there goes (a receiver's resumable partials stay).
        {
            let _lock = store.lock(wait)?;
            let now = std::time::SystemTime::now();
            for removed in store.gc_staging(settings.store.gc_grace, now)? {
                tracing::info!(path = %removed.display(), "removed staging leftover");
            }
        }
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
            let staging = store.new_staging("direct")?;
            let staged = stage(open, &staging).and_then(|bytes| {
                crate::failpoint::hit("receive:before-commit");
                let _lock = store.lock(wait)?;
                if store.sets_dir().join(set.id()).exists() {
                    store.replace_damaged(&staging, &set.manifest, &set.manifest_sha256)?;
                } else {
                    store.commit(&staging, &set.manifest)?;
                }
                crate::failpoint::hit("receive:before-ack");
                Ok(bytes)
            });
            let bytes = match staged {
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
        // As a receiver does: the store there is pruned after a delivery, never for nothing.
        if !stats.sent.is_empty() {
            let _lock = store.lock(wait)?;
            crate::prune::prune(store, &settings.retention, false, settings.not_after())?;
        }
        Ok(stats)
    }
}

/// Copies every file of `open` into `staging`: each read once (from the file the set was
/// opened with, so that a prune meanwhile takes nothing from under it), checked as it is read
/// (its SHA-256, a snapshot's trailer too) and written past the page cache
/// ([`DirectWriter`]), neither side left in it; a file that no longer matches its manifest is
/// not sent. No deep check of the copy: its bytes are, by their hash, those that were
/// deep-checked when the set entered this store (backup, receive, fetch), and the target's own
/// `verify --deep` reads them back on its schedule; reading 6 GiB back now, or keeping them
/// cached for it, is what etcd would pay.
/// The set's signature goes with it. Returns the bytes written.
pub(super) fn copy_set(open: &OpenSet, staging: &Path) -> Result<u64> {
    let set = &open.set;
    let mut buf = vec![0u8; COPY_BUF_BYTES];
    let mut written = 0;
    for (entry, file) in set.manifest.files.iter().zip(open.files()) {
        let source = set.dir.join(&entry.name);
        let path = staging.join(&entry.name);
        let out = create_private(&path)?;
        let mut out = DirectWriter::new(out, 0)
            .with_context(|| format!("cannot write '{}'", path.display()))?;
        let mut check =
            FileCheck::of(entry).map_err(|e| anyhow::anyhow!("'{}': {e}", source.display()))?;
        let mut behind = Behind::new(file, 0);
        let mut pos = 0;
        while pos < entry.size {
            let n = buf.len().min((entry.size - pos) as usize);
            file.read_exact_at(&mut buf[..n], pos)
                .with_context(|| format!("cannot read '{}'", source.display()))?;
            behind.read_to(pos + n as u64);
            crate::failpoint::hit("spray:sending");
            check
                .update(&buf[..n])
                .map_err(|e| anyhow::anyhow!("'{}': {e}", source.display()))?;
            out.write_all(&buf[..n])
                .with_context(|| format!("cannot write '{}'", path.display()))?;
            crate::failpoint::hit("receive:writing");
            pos += n as u64;
        }
        let digest = check
            .finish()
            .map_err(|e| anyhow::anyhow!("'{}': {e}", source.display()))?;
        if digest != entry.sha256 {
            bail!(
                "'{}' does not match its manifest (changed or damaged since it was verified): not sent",
                source.display()
            );
        }
        let out = out
            .finish()
            .and_then(|out| out.sync_all().map(|()| out))
            .with_context(|| format!("cannot write '{}'", path.display()))?;
        crate::files::drop_cached(&out, 0, 0);
        written += entry.size;
    }
    if let Some(signature) = &set.signature {
        Store::write_signature(staging, signature)?;
    }
    Ok(written)
}
