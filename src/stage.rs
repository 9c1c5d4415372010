//! `etcd-backup stage SET DIR`: a set's two files, unmodified, in a directory of their own for
//! OpenShift's `cluster-restore.sh`, each copy checked against the manifest (the snapshot
//! deep-checked) after it is written.

use crate::files::copy_exactly;
use crate::store::{Store, StoredSet};
use anyhow::{Context, Result, bail, ensure};
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

/// The `stage` command: under the store lock (prune must not remove the set while it is
/// copied), [`stage`]. A set taken on another OpenShift release than this node runs (both
/// known) is refused unless `allow_other_release`.
pub fn run(
    settings: &crate::config::Settings,
    id: &str,
    dir: &Path,
    allow_other_release: bool,
) -> Result<StoredSet> {
    let store = Store::open_existing(&settings.store.root)?;
    let _lock = store.lock(settings.store.lock_wait)?;
    let set = store.get(id)?;
    if set.sealed.is_some() {
        bail!(
            "set '{id}' is held sealed in '{}': fetch it into a store with --identity first",
            store.root().display()
        );
    }
    let signers = crate::seal::signers(&settings.seal.signers);
    if let Some(problem) =
        crate::verify::signature_problem(&set, &signers, settings.seal.require_signature)
    {
        bail!("{problem}: not staged");
    }
    let of_set = set
        .manifest
        .cluster
        .as_ref()
        .and_then(|c| c.release.as_deref());
    if !allow_other_release
        && let (Some(of_set), Ok(here)) =
            (of_set, crate::cluster::release::learn(settings.node_root()))
        && of_set != here
    {
        bail!(
            "set '{id}' was taken on OpenShift {of_set}, this node runs {here}: OpenShift restores \
             only a backup of the same z-stream release, not staged (`etcd-backup restore-check \
             {id}` shows every check; --allow-other-release stages it anyway)"
        );
    }
    stage(&store, id, dir)
}

/// Stages set `id` of `store` into `dir` (created 0700, or an existing empty directory of
/// this user's that only it can write). `cluster-restore.sh` restores whatever it finds there:
/// nobody but root, this user and the user who ran sudo may be able to change `dir` or replace
/// it (the directories above it included), or a local user could swap the snapshot.
pub fn stage(store: &Store, id: &str, dir: &Path) -> Result<StoredSet> {
    let set = store.get(id)?;
    if let Some(problem) = &set.problem {
        bail!("set '{id}' is not sound, not staged: {problem}");
    }
    let created = make_stage_dir(dir)?;
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

/// The users whose directories may hold a staged set: root, this process's user, and the user
/// who ran sudo (`SUDO_UID`), who asked for it.
fn trusted_owners() -> Vec<u32> {
    let mut uids = vec![0, nix::unistd::geteuid().as_raw()];
    if let Some(uid) = std::env::var("SUDO_UID").ok().and_then(|u| u.parse().ok()) {
        uids.push(uid);
    }
    uids
}

/// Why nobody but the trusted owners can change the directory `path` (as `meta` says), or
/// what is wrong with it. A sticky directory (`/tmp`) may be writable by all: nobody can
/// rename what another user put in it.
fn untrusted(path: &Path, meta: &fs::Metadata, owners: &[u32]) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if !meta.is_dir() {
        return Some(format!("'{}' is not a directory", path.display()));
    }
    if !owners.contains(&meta.uid()) {
        return Some(format!(
            "'{}' is owned by uid {}, who could replace what is staged there",
            path.display(),
            meta.uid()
        ));
    }
    let sticky = meta.mode() & 0o1000 != 0;
    if meta.mode() & 0o022 != 0 && !sticky {
        return Some(format!(
            "'{}' is writable by its group or by others (mode {:o})",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    None
}

/// Makes the stage directory `dir` (and missing parents, 0700, as `cluster-backup.sh`'s
/// `mkdir -p`: /home/core/assets may not exist on a rebuilt master), after checking every
/// directory above it; `dir` itself is made here, or must be an empty directory of this user
/// that only it can write. Returns whether it was made.
fn make_stage_dir(dir: &Path) -> Result<bool> {
    let owners = trusted_owners();
    let Some(name) = dir.file_name() else {
        bail!("'{}' cannot be a stage directory", dir.display());
    };
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    let parent = parent.unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(crate::files::DIR_MODE)
        .create(parent)
        .with_context(|| format!("cannot create directory '{}'", parent.display()))?;
    let parent = fs::canonicalize(parent)
        .with_context(|| format!("cannot resolve '{}'", parent.display()))?;
    for ancestor in parent.ancestors() {
        let meta = fs::metadata(ancestor)
            .with_context(|| format!("cannot stat '{}'", ancestor.display()))?;
        if let Some(why) = untrusted(ancestor, &meta, &owners) {
            bail!(
                "not staging into '{}': {why}; stage into a directory that only root (or you) can change",
                dir.display()
            );
        }
    }
    let dir = parent.join(name);
    match fs::DirBuilder::new()
        .mode(crate::files::DIR_MODE)
        .create(&dir)
    {
        Ok(()) => return Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(e).with_context(|| format!("cannot create directory '{}'", dir.display()));
        }
    }
    // There already: a real directory (not a link), this user's alone, and empty.
    let meta =
        fs::symlink_metadata(&dir).with_context(|| format!("cannot stat '{}'", dir.display()))?;
    let only_mine = [nix::unistd::geteuid().as_raw()];
    if let Some(why) = untrusted(&dir, &meta, &only_mine) {
        bail!("not staging into '{}': {why}", dir.display());
    }
    ensure!(
        fs::read_dir(&dir)
            .with_context(|| format!("cannot read '{}'", dir.display()))?
            .next()
            .is_none(),
        "'{}' is not empty: stage into a new or empty directory",
        dir.display()
    );
    crate::files::ensure_private_dir(&dir)?;
    Ok(false)
}

pub(crate) fn copy_checked(set: &StoredSet, dir: &Path) -> Result<()> {
    let id = set.id();
    for file in &set.manifest.files {
        let from = set.dir.join(&file.name);
        let to = dir.join(&file.name);
        let mut source = crate::files::open_regular(&from)?;
        let mut dest = crate::files::create_private(&to)?;
        copy_exactly(&mut source, &mut dest, file.size)
            .and_then(|()| dest.sync_all())
            .with_context(|| format!("cannot copy '{}' to '{}'", from.display(), to.display()))?;
        // The check reads the copy from the cache and drops it.
        crate::verify::check_file_against(&to, file, set.manifest.checks.etcd.as_ref(), true)
            .with_context(|| format!("the copy of set '{id}' is not sound"))?;
    }
    crate::files::fsync_dir(dir)
}
