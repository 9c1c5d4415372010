//! Getting sets back. `etcd-backup stage SET DIR`: a set's two files, unmodified, in a
//! directory of their own for OpenShift's `cluster-restore.sh`. `etcd-backup fetch --from DIR
//! SET`: a set from another store (a directory target, an NFS export, a peer's disk) into the
//! local one. Each copy is checked against the manifest (the snapshot deep-checked) after it
//! is written.

use crate::manifest::FileEntry;
use crate::store::{FILE_MODE, Store, StoredSet};
use anyhow::{Context, Result, bail, ensure};
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

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
        .mode(crate::store::DIR_MODE)
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
        .mode(crate::store::DIR_MODE)
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
    crate::store::ensure_private_dir(&dir)?;
    Ok(false)
}

pub(crate) fn copy_checked(set: &StoredSet, dir: &Path) -> Result<()> {
    let id = set.id();
    for file in &set.manifest.files {
        let from = set.dir.join(&file.name);
        let to = dir.join(&file.name);
        let mut source = crate::files::open_regular(&from)?;
        let mut dest = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&to)
            .with_context(|| format!("cannot create '{}'", to.display()))?;
        copy_exactly(&mut source, &mut dest, file.size)
            .and_then(|()| dest.sync_all())
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

/// Where `fetch` can get a set from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A directory store (a dir target, an NFS export, a dead master's disk).
    Dir(std::path::PathBuf),
    /// An S3 target (which may carry only one of the two files).
    Bucket(Box<crate::config::S3Target>),
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::Dir(path) => format!("'{}'", path.display()),
            Source::Bucket(t) => format!(
                "bucket '{}' at {}{}",
                t.bucket,
                t.endpoint,
                if t.prefix.is_empty() {
                    String::new()
                } else {
                    format!(" (prefix '{}')", t.prefix)
                }
            ),
        }
    }
}

/// What one source holds of a set: its manifest and the files it can give.
struct Held {
    manifest: crate::manifest::Manifest,
    manifest_sha256: String,
    files: Vec<String>,
    from: Opened,
}

enum Opened {
    Dir(StoredSet),
    Bucket(Box<crate::s3::Client>, crate::config::S3Target),
}

fn look(source: &Source, id: &str, timeouts: (Duration, Duration)) -> Result<Held> {
    match source {
        Source::Dir(from) => {
            let Some(store) = Store::existing(from) else {
                bail!("no store at '{}'", from.display());
            };
            let set = store.get(id)?;
            if let Some(problem) = &set.problem {
                bail!("set '{id}' there is not sound: {problem}");
            }
            Ok(Held {
                manifest: set.manifest.clone(),
                manifest_sha256: set.manifest_sha256.clone(),
                files: set.manifest.files.iter().map(|f| f.name.clone()).collect(),
                from: Opened::Dir(set),
            })
        }
        Source::Bucket(t) => {
            use crate::s3::layout;
            let mut client = crate::s3::Client::open(t, timeouts.0, timeouts.1)?;
            let objects = client.list(&format!("{}{id}/", layout::sets_prefix(&t.prefix)))?;
            let listing = layout::group(&t.prefix, &objects);
            let Some(remote) = listing.sets.get(id).filter(|s| s.has_manifest()) else {
                bail!("no set '{id}' there");
            };
            let bytes = client.get_small(&layout::key(&t.prefix, id, layout::MANIFEST), 1 << 20)?;
            let manifest = crate::manifest::Manifest::parse(&bytes)
                .map_err(|e| anyhow::anyhow!("the manifest of '{id}' there is unreadable: {e}"))?;
            ensure!(
                manifest.id == id,
                "the manifest there is of set '{}'",
                manifest.id
            );
            let files = manifest
                .files
                .iter()
                .filter(|f| {
                    remote
                        .objects
                        .get(&f.name)
                        .is_some_and(|o| o.size == f.size)
                })
                .map(|f| f.name.clone())
                .collect();
            Ok(Held {
                manifest_sha256: crate::verify::hex(&crate::hash::Sha256::digest(&bytes)),
                manifest,
                files,
                from: Opened::Bucket(Box::new(client), (**t).clone()),
            })
        }
    }
}

/// Copies at most `size` bytes of `source` into `dest`; a source that holds more (it grew, or
/// lies about its size) is an error.
fn copy_exactly(source: &mut File, dest: &mut File, size: u64) -> std::io::Result<()> {
    // In the kernel (copy_file_range); the copy is read back once to check it.
    let copied = std::io::copy(&mut Read::by_ref(source).take(size), dest)?;
    if copied < size {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{copied} bytes, the manifest says {size}"),
        ));
    }
    if source.read(&mut [0u8; 1])? != 0 {
        return Err(std::io::Error::other(format!(
            "more than the manifest's {size} bytes"
        )));
    }
    Ok(())
}

/// Writes the file `entry` of set `id` from `held` to `to` (created 0600, fsynced): no more
/// than its manifest's size, whatever the source sends.
fn copy_from(held: &mut Held, id: &str, entry: &FileEntry, to: &Path) -> Result<()> {
    let name = &entry.name;
    let mut dest = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(to)
        .with_context(|| format!("cannot create '{}'", to.display()))?;
    match &mut held.from {
        Opened::Dir(set) => {
            let from = set.dir.join(name);
            let mut source = crate::files::open_regular(&from)?;
            copy_exactly(&mut source, &mut dest, entry.size)
                .with_context(|| format!("cannot copy '{}'", from.display()))?;
        }
        Opened::Bucket(client, t) => {
            let key = crate::s3::layout::key(&t.prefix, id, name);
            let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut dest);
            client.get(&key, &mut out, entry.size)?;
            std::io::Write::flush(&mut out)?;
        }
    }
    dest.sync_all()
        .with_context(|| format!("cannot write '{}'", to.display()))
}

/// Fetches set `id` into `store` (the caller holds its lock) from `sources`, each file from the
/// first source that holds it and gives a sound copy: a set split over two targets (snapshot
/// here, resources there) comes back whole. Sources are only read; every copy is checked
/// against the manifest (the snapshot deep-checked) before the set is committed; a local set
/// under the same id with another manifest is never replaced. Returns where each file came
/// from.
/// The set must fit with `floor` bytes (`min_free_space`) left free.
pub fn fetch(
    store: &Store,
    sources: &[Source],
    id: &str,
    timeouts: (Duration, Duration),
    floor: u64,
) -> Result<(StoredSet, Fetched, Vec<String>)> {
    let mut failures = Vec::new();
    let mut held = Vec::new();
    for source in sources {
        match look(source, id, timeouts) {
            Ok(h) => held.push((source, h)),
            Err(e) => failures.push(format!("{}: {e:#}", source.describe())),
        }
    }
    let Some((_, first)) = held.first() else {
        bail!(
            "set '{id}' is on none of the sources: {}",
            failures.join("; ")
        );
    };
    let (manifest, manifest_sha256) = (first.manifest.clone(), first.manifest_sha256.clone());
    held.retain(|(source, h)| {
        let same = h.manifest_sha256 == manifest_sha256;
        if !same {
            failures.push(format!(
                "{}: holds another manifest of '{id}'",
                source.describe()
            ));
        }
        same
    });
    let local = store.get(id).ok();
    if let Some(local) = &local {
        ensure!(
            local.manifest_sha256 == manifest_sha256,
            "set '{id}' is held here with another manifest: not replaced"
        );
        if local.problem.is_none() {
            return Ok((local.clone(), Fetched::AlreadyHeld, Vec::new()));
        }
    }
    // What the manifest promises must fit above the floor before a byte is copied.
    store.ensure_room(&format!("set '{id}'"), manifest.total_size(), floor)?;
    let staging = store.new_staging("fetch")?;
    let result = (|| {
        let mut origins = Vec::new();
        for file in &manifest.files {
            let to = staging.join(&file.name);
            let mut done = false;
            for (source, h) in held
                .iter_mut()
                .filter(|(_, h)| h.files.contains(&file.name))
            {
                let copied = copy_from(h, id, file, &to).and_then(|()| {
                    crate::verify::check_file_against(
                        &to,
                        file,
                        manifest.checks.etcd.as_ref(),
                        true,
                    )
                });
                match copied {
                    Ok(()) => {
                        origins.push(format!("{} from {}", file.name, source.describe()));
                        done = true;
                        break;
                    }
                    Err(e) => {
                        failures.push(format!("{}: {e:#}", source.describe()));
                        let _ = fs::remove_file(&to);
                    }
                }
            }
            if !done {
                bail!(
                    "no source gave a sound copy of '{}' of set '{id}'{}",
                    file.name,
                    if failures.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", failures.join("; "))
                    }
                );
            }
        }
        let (set, how) = match &local {
            Some(_) => (
                store.replace_damaged(&staging, &manifest, &manifest_sha256)?,
                Fetched::Repaired,
            ),
            None => (store.commit(&staging, &manifest)?, Fetched::Committed),
        };
        Ok((set, how, origins))
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}
