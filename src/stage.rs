//! Getting sets back. `etcd-backup stage SET DIR`: a set's two files, unmodified, in a
//! directory of their own for OpenShift's `cluster-restore.sh`. `etcd-backup fetch --from DIR
//! SET`: a set from another store (a directory target, an NFS export, a peer's disk) into the
//! local one. Each copy is checked against the manifest (the snapshot deep-checked) after it
//! is written.

use crate::store::{FILE_MODE, Store, StoredSet};
use anyhow::{Context, Result, bail, ensure};
use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Stages set `id` of `store` into `dir` (created 0700, or an existing empty directory).
pub fn stage(store: &Store, id: &str, dir: &Path) -> Result<StoredSet> {
    let set = store.get(id)?;
    if let Some(problem) = &set.problem {
        bail!("set '{id}' is not sound, not staged: {problem}");
    }
    match fs::read_dir(dir) {
        Ok(mut entries) => ensure!(
            entries.next().is_none(),
            "'{}' is not empty: stage into a new or empty directory",
            dir.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read '{}'", dir.display())),
    }
    let created = !dir.exists();
    crate::store::ensure_private_dir(dir)?;
    let result = copy_checked(&set, dir);
    if result.is_err() {
        // Nothing half-staged stays behind for a restore to pick up.
        for file in &set.manifest.files {
            let _ = fs::remove_file(dir.join(&file.name));
        }
        if created {
            let _ = fs::remove_dir(dir);
        }
    }
    result.map(|()| set)
}

pub(crate) fn copy_checked(set: &StoredSet, dir: &Path) -> Result<()> {
    let id = set.id();
    for file in &set.manifest.files {
        let from = set.dir.join(&file.name);
        let to = dir.join(&file.name);
        let mut source = crate::verify::open_regular(&from)?;
        let mut dest = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&to)
            .with_context(|| format!("cannot create '{}'", to.display()))?;
        // In the kernel (copy_file_range); the copy is read back once to check it.
        std::io::copy(&mut source, &mut dest)
            .and_then(|_| dest.sync_all())
            .with_context(|| format!("cannot copy '{}' to '{}'", from.display(), to.display()))?;
        crate::verify::check_file_against(&to, file, set.manifest.checks.etcd.as_ref(), true)
            .with_context(|| format!("the copy of set '{id}' is not sound"))?;
    }
    crate::store::fsync_dir(dir)
}

/// What `fetch` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    Committed,
    /// The local copy was damaged and is replaced.
    Repaired,
    /// The local store already holds it, sound.
    AlreadyHeld,
}

/// Fetches set `id` from the store at `from` into `store` (the caller holds its lock). The
/// source is only read; a source copy that is not sound is refused, and a local set under the
/// same id with another manifest is never replaced.
pub fn fetch(store: &Store, from: &Path, id: &str) -> Result<(StoredSet, Fetched)> {
    let Some(source) = Store::existing(from) else {
        bail!("no store at '{}' to fetch set '{id}' from", from.display());
    };
    let set = source
        .get(id)
        .with_context(|| format!("fetching from '{}'", from.display()))?;
    if let Some(problem) = &set.problem {
        bail!(
            "set '{id}' in '{}' is not sound, not fetched: {problem}",
            from.display()
        );
    }
    let local = store.get(id).ok();
    if let Some(local) = &local {
        ensure!(
            local.manifest_sha256 == set.manifest_sha256,
            "set '{id}' is held here with another manifest: not replaced"
        );
        if local.problem.is_none() {
            return Ok((local.clone(), Fetched::AlreadyHeld));
        }
    }
    let staging = store.new_staging("fetch")?;
    let result = copy_checked(&set, &staging).and_then(|()| match &local {
        Some(_) => store
            .replace_damaged(&staging, &set.manifest, &set.manifest_sha256)
            .map(|s| (s, Fetched::Repaired)),
        None => store
            .commit(&staging, &set.manifest)
            .map(|s| (s, Fetched::Committed)),
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}
