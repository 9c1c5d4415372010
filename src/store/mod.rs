//! The set store: `ROOT/sets/<set-id>/` committed by atomic rename, `ROOT/.staging/` for work
//! in progress, `ROOT/.lock` serialising backup, spray and prune. Local history, a peer's
//! receiving side and a directory target are all this code.
//!
//! Invariants: a set is visible only after its verified, fsynced directory (manifest written
//! last) is renamed into `sets/`; a set is deleted by renaming it out of `sets/` first; files are
//! 0600 and directories 0700; names in `sets/` that are not set ids are never touched.

use crate::files::{DIR_MODE, FILE_MODE, ensure_private_dir, fsync_dir, write_atomic};
use crate::manifest::{MANIFEST_MAX_BYTES, MANIFEST_NAME, Manifest, SIGNATURE_NAME, parse_set_id};
use crate::retention::SetInfo;
use crate::seal::record::{Record, SEAL_MAX_BYTES, SEAL_NAME, SEAL_SIGNATURE_NAME, Seal};
use crate::seal::sign::SIGNATURE_MAX_BYTES;
use anyhow::{Context, Result, bail, ensure};
use std::fs::{self};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub const SETS_DIR: &str = "sets";
pub const STAGING_DIR: &str = ".staging";
pub const LOCK_FILE: &str = ".lock";
pub const RECEIVE_LOCK_FILE: &str = ".receive.lock";
/// One spray at a time per node (the store lock is held only while it lists and opens sets).
pub const SPRAY_LOCK_FILE: &str = ".spray.lock";
/// Staging dirs of incoming sets: `recv-<set-id>`, kept across cut transfers to resume them.
pub const RECEIVE_STAGING_PREFIX: &str = "recv-";
mod lock;
mod state;

pub use lock::{BusyError, StoreLock};
pub use state::{
    CopyCheck, CopyChecks, KINDS, OBJECT_CHECKSUMS_FILE, ObjectChecksums, RUNS_FILE, Run, Runs,
    SPRAY_STATE_FILE, TARGET_VERIFY_STATE_FILE, TargetState, VERIFY_STATE_FILE, Verification,
};

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// A committed set as found on disk.
#[derive(Debug, Clone)]
pub struct StoredSet {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// The `manifest.json` text as read, and its sha256: what spray offers and sends.
    pub manifest_json: String,
    pub manifest_sha256: String,
    /// Set when the files on disk do not match the manifest's names and sizes (cheap check; a
    /// full re-hash is `verify`), or when the set failed its last `verify`. Sets with a problem
    /// are never sent, never counted by retention, never deleted.
    pub problem: Option<String>,
    /// The names-and-sizes check alone (what `verify` re-checks before re-hashing).
    pub on_disk_problem: Option<String>,
    /// The last `verify` of this manifest, if any.
    pub last_verification: Option<Verification>,
    /// `manifest.json.sig` as held (an SSH signature of the manifest), if the set has one.
    pub signature: Option<Vec<u8>>,
    /// A sealed copy's record (a sealed directory target's sets): its files are age files,
    /// never offered, fetched with an identity.
    pub sealed: Option<Record>,
}

impl StoredSet {
    pub fn id(&self) -> &str {
        &self.manifest.id
    }

    fn apply_verification(&mut self, verification: Option<&Verification>) {
        self.last_verification = verification.cloned();
        if self.problem.is_none()
            && let Some(Verification {
                at,
                problem: Some(problem),
                ..
            }) = verification
        {
            self.problem = Some(format!(
                "failed verification at {}: {problem}",
                at.format("%Y-%m-%d %H:%M:%SZ")
            ));
        }
    }

    pub fn info(&self) -> SetInfo {
        self.manifest.info()
    }
}

#[derive(Debug, Default)]
pub struct Listing {
    /// Sets with a valid manifest, oldest first.
    pub sets: Vec<StoredSet>,
    /// Entries named like sets whose manifest cannot be read: `(dir, reason)`. Never deleted.
    pub unreadable: Vec<(PathBuf, String)>,
}

impl Store {
    /// Opens the store at `root`, creating `root`, `sets/` and `.staging/` (0700) as needed.
    pub fn open(root: &Path) -> Result<Store> {
        if let Some(parent) = root.parent()
            && !parent.as_os_str().is_empty()
            && !parent.exists()
        {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(parent)
                .with_context(|| format!("cannot create '{}'", parent.display()))?;
        }
        // The root itself may be a symlink an administrator placed (another disk); nothing
        // inside it is followed.
        if !root.exists() {
            ensure_private_dir(root)?;
        } else {
            ensure!(
                root.is_dir(),
                "store root '{}' is not a directory",
                root.display()
            );
            fs::set_permissions(root, fs::Permissions::from_mode(DIR_MODE))
                .with_context(|| format!("cannot chmod 0700 store root '{}'", root.display()))?;
        }
        let store = Store {
            root: root.to_path_buf(),
        };
        ensure_private_dir(&store.sets_dir())?;
        ensure_private_dir(&store.staging_dir())?;
        Ok(store)
    }

    /// The store at `root` as it is, changing nothing (read-only commands, read-only mounts);
    /// `None` when no store is there yet.
    pub fn existing(root: &Path) -> Option<Store> {
        root.join(SETS_DIR).is_dir().then(|| Store {
            root: root.to_path_buf(),
        })
    }

    /// Opens the store at `root` for a read-only command, which does not create a store that
    /// is not there.
    pub fn open_existing(root: &Path) -> Result<Store> {
        if !root.join(SETS_DIR).is_dir() {
            bail!(
                "no store at '{}' (no backup has been taken there yet)",
                root.display()
            );
        }
        Store::open(root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn sets_dir(&self) -> PathBuf {
        self.root.join(SETS_DIR)
    }

    pub fn staging_dir(&self) -> PathBuf {
        self.root.join(STAGING_DIR)
    }

    /// All sets, oldest first; entries that are not set ids are ignored and left alone.
    /// All sets, oldest first; entries that are not set ids are ignored and left alone.
    pub fn list(&self) -> Result<Listing> {
        let sets_dir = self.sets_dir();
        let mut listing = Listing::default();
        let verifications = self.verifications();
        let entries = fs::read_dir(&sets_dir)
            .with_context(|| format!("cannot list '{}'", sets_dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list '{}'", sets_dir.display()))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if parse_set_id(&name).is_none() {
                tracing::debug!(path = %entry.path().display(), "not a set id, left alone");
                continue;
            }
            match self.read_set(&name) {
                Ok(mut set) => {
                    set.apply_verification(verifications.get(&set.manifest_sha256));
                    listing.sets.push(set)
                }
                Err(e) => listing.unreadable.push((entry.path(), format!("{e:#}"))),
            }
        }
        listing
            .sets
            .sort_by(|a, b| a.manifest.id.cmp(&b.manifest.id));
        Ok(listing)
    }

    /// Reads one committed set by id.
    pub fn get(&self, id: &str) -> Result<StoredSet> {
        ensure!(parse_set_id(id).is_some(), "'{id}' is not a set id");
        let dir = self.sets_dir().join(id);
        ensure!(
            fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()),
            "no set '{id}' in store '{}'",
            self.root.display()
        );
        let mut set = self.read_set(id)?;
        set.apply_verification(self.verifications().get(&set.manifest_sha256));
        Ok(set)
    }

    fn read_set(&self, id: &str) -> Result<StoredSet> {
        let dir = self.sets_dir().join(id);
        ensure!(
            fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()),
            "'{}' is not a directory",
            dir.display()
        );
        let manifest_path = dir.join(MANIFEST_NAME);
        let bytes = crate::files::read_regular(&manifest_path, MANIFEST_MAX_BYTES)
            .with_context(|| format!("cannot read manifest '{}'", manifest_path.display()))?;
        let manifest = Manifest::parse(&bytes)
            .map_err(|e| anyhow::anyhow!("manifest '{}': {e}", manifest_path.display()))?;
        ensure!(
            manifest.id == id,
            "manifest '{}' names set '{}', not '{id}'",
            manifest_path.display(),
            manifest.id
        );
        let manifest_sha256 = crate::manifest::digest(&bytes);
        let mut problems = Vec::new();
        let mut optional = |name: &str, max: u64| match fs::symlink_metadata(dir.join(name)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            _ => match crate::files::read_regular(&dir.join(name), max) {
                Ok(bytes) => Some(bytes),
                Err(e) => {
                    problems.push(format!("{e:#}"));
                    None
                }
            },
        };
        let signature = optional(SIGNATURE_NAME, SIGNATURE_MAX_BYTES);
        let seal_bytes = optional(SEAL_NAME, SEAL_MAX_BYTES);
        let seal_signature = optional(SEAL_SIGNATURE_NAME, SIGNATURE_MAX_BYTES);
        let sealed = match seal_bytes {
            None => None,
            Some(bytes) => match Seal::parse(&bytes, &manifest, &manifest_sha256) {
                Ok(seal) => Some(Record {
                    seal,
                    bytes,
                    signature: seal_signature,
                }),
                Err(e) => {
                    problems.push(format!("'{}': {e}", dir.join(SEAL_NAME).display()));
                    None
                }
            },
        };
        let problem = problems
            .into_iter()
            .next()
            .or_else(|| Self::structural_problem(&dir, &manifest, sealed.as_ref()));
        // Valid JSON that serde_json parsed is UTF-8 (non-ASCII can only sit in strings).
        let manifest_json = String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("manifest '{}' is not UTF-8", manifest_path.display()))?;
        Ok(StoredSet {
            dir,
            manifest,
            manifest_json,
            manifest_sha256,
            on_disk_problem: problem.clone(),
            problem,
            last_verification: None,
            signature,
            sealed,
        })
    }

    /// Names and sizes on disk against the manifest: exactly its files (a sealed copy's age
    /// files, as its record says), regular, right sizes.
    fn structural_problem(
        dir: &Path,
        manifest: &Manifest,
        sealed: Option<&Record>,
    ) -> Option<String> {
        let files =
            match crate::seal::record::objects(manifest.files.iter(), sealed.map(|r| &r.seal)) {
                Ok(files) => files,
                Err(e) => return Some(format!("'{}': {e}", dir.join(SEAL_NAME).display())),
            };
        for file in &files {
            let path = dir.join(&file.name);
            match fs::symlink_metadata(&path) {
                Ok(meta) if !meta.is_file() => {
                    return Some(format!("'{}' is not a regular file", path.display()));
                }
                Ok(meta) if meta.len() != file.size => {
                    return Some(format!(
                        "'{}' is {} bytes, manifest says {}",
                        path.display(),
                        meta.len(),
                        file.size
                    ));
                }
                Ok(_) => {}
                Err(e) => return Some(format!("'{}': {e}", path.display())),
            }
        }
        let extra = fs::read_dir(dir).ok()?.filter_map(|e| e.ok()).find(|e| {
            let name = e.file_name();
            ![
                MANIFEST_NAME,
                SIGNATURE_NAME,
                SEAL_NAME,
                SEAL_SIGNATURE_NAME,
            ]
            .iter()
            .any(|n| *name == **n)
                && !files.iter().any(|f| *f.name == *name)
        });
        extra.map(|e| format!("unexpected entry '{}'", e.path().display()))
    }

    /// Puts the signature of a staged set's manifest beside it (committed with it).
    pub fn write_signature(staging: &Path, signature: &[u8]) -> Result<()> {
        ensure!(
            signature.len() as u64 <= SIGNATURE_MAX_BYTES,
            "a signature of {} bytes is not one",
            signature.len()
        );
        write_atomic(staging, SIGNATURE_NAME, signature)
    }

    /// Makes a fresh private directory under `.staging/` for one piece of work.
    pub fn new_staging(&self, label: &str) -> Result<PathBuf> {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ");
        let path = self
            .staging_dir()
            .join(format!("{label}-{stamp}-{}", std::process::id()));
        fs::DirBuilder::new()
            .mode(DIR_MODE)
            .create(&path)
            .with_context(|| format!("cannot create staging directory '{}'", path.display()))?;
        Ok(path)
    }

    /// Commits a staging directory that holds exactly the manifest's files, already verified
    /// and fsynced: writes the manifest last, fsyncs, renames it into `sets/<id>` (never over an
    /// existing entry) and fsyncs `sets/`.
    pub fn commit(&self, staging: &Path, manifest: &Manifest) -> Result<StoredSet> {
        self.place(
            staging,
            manifest,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
            |staging, target| format!("cannot commit '{staging}' as '{target}'"),
        )?;
        self.read_set(&manifest.id)
    }

    /// Finishes `staging` as a set and renames it to `sets/<id>` with `flags` (never over an
    /// entry: NOREPLACE; swapping with a damaged copy: EXCHANGE), then fsyncs both directories.
    fn place(
        &self,
        staging: &Path,
        manifest: &Manifest,
        flags: nix::fcntl::RenameFlags,
        failed: impl FnOnce(std::path::Display, std::path::Display) -> String,
    ) -> Result<()> {
        Self::finish_staging(staging, manifest)?;
        let target = self.sets_dir().join(&manifest.id);
        nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            staging,
            nix::fcntl::AT_FDCWD,
            &target,
            flags,
        )
        .with_context(|| failed(staging.display(), target.display()))?;
        crate::failpoint::hit("store:renamed");
        fsync_dir(&self.sets_dir())?;
        fsync_dir(&self.staging_dir())
    }

    /// The staging directory as a set: private modes, the manifest written last.
    fn finish_staging(staging: &Path, manifest: &Manifest) -> Result<()> {
        let sealed = staging.join(SEAL_NAME).exists();
        let names = manifest.files.iter().map(|f| {
            if sealed {
                crate::seal::record::sealed_name(&f.name)
            } else {
                f.name.clone()
            }
        });
        for name in names {
            let path = staging.join(name);
            fs::set_permissions(&path, fs::Permissions::from_mode(FILE_MODE))
                .with_context(|| format!("cannot chmod 0600 '{}'", path.display()))?;
        }
        fs::set_permissions(staging, fs::Permissions::from_mode(DIR_MODE))
            .with_context(|| format!("cannot chmod 0700 '{}'", staging.display()))?;
        // A signature is written by whoever staged the set (`write_signature`), or not at all.
        if let Ok(meta) = fs::symlink_metadata(staging.join(SIGNATURE_NAME)) {
            ensure!(
                meta.is_file(),
                "'{}' is not a regular file",
                staging.join(SIGNATURE_NAME).display()
            );
        }
        write_atomic(staging, MANIFEST_NAME, &manifest.to_json())?;
        crate::failpoint::hit("store:manifest-written");
        Ok(())
    }

    /// Replaces a damaged copy of a set (or one that failed its last verification) with a
    /// verified staging copy of the same manifest: the two directories are exchanged in one
    /// rename, so `sets/<id>` is always one whole copy; then the damaged one is removed and the
    /// set's verification recorded as passed (the deep check and every hash just ran). A copy
    /// that verifies, or another manifest, is never replaced. The caller holds the store lock.
    pub fn replace_damaged(
        &self,
        staging: &Path,
        manifest: &Manifest,
        manifest_sha256: &str,
    ) -> Result<StoredSet> {
        let id = &manifest.id;
        let current = self.get(id)?;
        ensure!(
            current.manifest_sha256 == manifest_sha256,
            "set '{id}' is held with another manifest: not replaced"
        );
        ensure!(
            current.problem.is_some(),
            "set '{id}' is held and verifies: not replaced"
        );
        self.place(
            staging,
            manifest,
            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
            |staging, target| format!("cannot exchange '{staging}' with the damaged '{target}'"),
        )?;
        // `staging` holds the damaged copy now; a leftover is collected by gc_staging.
        let _ = fs::remove_dir_all(staging);
        self.record_verifications(&[(
            manifest_sha256.to_string(),
            Verification {
                at: chrono::Utc::now(),
                deep: true,
                problem: None,
            },
        )])?;
        self.read_set(id)
    }

    /// Deletes a set: renamed out of `sets/` first (so it is never seen half-deleted), then
    /// removed; a leftover is collected by `gc_staging` later.
    pub fn delete(&self, id: &str) -> Result<()> {
        ensure!(parse_set_id(id).is_some(), "'{id}' is not a set id");
        let from = self.sets_dir().join(id);
        let to = self
            .staging_dir()
            .join(format!("delete-{id}-{}", std::process::id()));
        fs::rename(&from, &to)
            .with_context(|| format!("cannot move '{}' out of the store", from.display()))?;
        fsync_dir(&self.sets_dir())?;
        crate::failpoint::hit("store:deleting");
        fs::remove_dir_all(&to).with_context(|| format!("cannot remove '{}'", to.display()))
    }

    /// Removes staging entries older than `grace` (leftovers of failed or killed runs). Call it
    /// while holding the lock.
    pub fn gc_staging(&self, grace: Duration, now: SystemTime) -> Result<Vec<PathBuf>> {
        let dir = self.staging_dir();
        let mut removed = Vec::new();
        // A running receiver writes into recv-* without the store lock: leave those alone.
        let receiving = self.lock_named(RECEIVE_LOCK_FILE, Duration::ZERO).is_err();
        for entry in
            fs::read_dir(&dir).with_context(|| format!("cannot list '{}'", dir.display()))?
        {
            let entry = entry.with_context(|| format!("cannot list '{}'", dir.display()))?;
            let path = entry.path();
            let meta = entry
                .metadata()
                .with_context(|| format!("cannot stat '{}'", path.display()))?;
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            let in_use = receiving
                && entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(RECEIVE_STAGING_PREFIX);
            if age < grace || in_use {
                continue;
            }
            // remove_dir_all does not follow symlinks; a symlink itself is just unlinked.
            let result = if meta.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            result
                .with_context(|| format!("cannot remove staging leftover '{}'", path.display()))?;
            removed.push(path);
        }
        Ok(removed)
    }

    /// Refuses `needed` more bytes for `what` (a set) unless they fit with `floor` bytes
    /// (`retention.min_free_space`) still free: the error names the store and the figures.
    pub fn ensure_room(&self, what: &str, needed: u64, floor: u64) -> Result<()> {
        let free = self.free_bytes()?;
        ensure!(
            needed.saturating_add(floor) <= free,
            "{what} needs {needed} bytes, {free} are free in '{}'{}",
            self.root.display(),
            if floor > 0 {
                format!(" and {floor} must stay free (retention.min_free_space)")
            } else {
                String::new()
            }
        );
        Ok(())
    }

    /// Free bytes for an unprivileged writer on the store's filesystem.
    pub fn free_bytes(&self) -> Result<u64> {
        crate::files::free_bytes(&self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Checks, FileEntry, make_set_id};
    use crate::verify::hash_file;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Stages a set with two small files (content checks are `verify`'s business).
    fn staged(store: &Store, origin: &str, offset_secs: i64) -> (PathBuf, Manifest) {
        let staging = store.new_staging("test").unwrap();
        let created = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .to_utc()
            + chrono::TimeDelta::seconds(offset_secs);
        let mut files = Vec::new();
        for name in [
            "snapshot_2026-01-01_000000.db",
            "static_kuberesources_2026-01-01_000000.tar.gz",
        ] {
            let path = staging.join(name);
            fs::write(&path, format!("{name} {offset_secs}")).unwrap();
            let digest = hash_file(&path).unwrap();
            files.push(FileEntry {
                name: name.into(),
                size: digest.size,
                sha256: digest.hex(),
            });
        }
        let manifest = Manifest {
            format: 1,
            id: make_set_id(created, origin),
            origin: origin.into(),
            created,
            tool_version: "test".into(),
            dirty: false,
            files,
            checks: Checks {
                etcd: None,
                snapshot_page_size: 4096,
                snapshot_sha256_trailer: true,
                static_pod_dirs: vec![],
            },
            cluster: None,
        };
        (staging, manifest)
    }

    #[test]
    fn commit_makes_a_private_set_visible_and_delete_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("root")).unwrap();
        assert_eq!(mode(store.root()), 0o700);
        let (staging, manifest) = staged(&store, "m0", 0);
        assert!(
            store.list().unwrap().sets.is_empty(),
            "staging is never listed"
        );
        let set = store.commit(&staging, &manifest).unwrap();
        assert!(!staging.exists());
        assert!(set.problem.is_none());
        for entry in fs::read_dir(&set.dir).unwrap() {
            assert_eq!(mode(&entry.unwrap().path()), 0o600);
        }
        assert_eq!(mode(&set.dir), 0o700);
        let listing = store.list().unwrap();
        assert_eq!(listing.sets.len(), 1);
        assert_eq!(listing.sets[0].manifest, manifest);

        // Committing the same id again never replaces the existing set.
        let (staging2, _) = staged(&store, "m0", 1);
        assert!(store.commit(&staging2, &manifest).is_err());
        assert_eq!(store.list().unwrap().sets[0].manifest, manifest);

        store.delete(&manifest.id).unwrap();
        assert!(store.list().unwrap().sets.is_empty());
    }

    #[test]
    fn foreign_entries_are_left_alone_and_broken_sets_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        fs::write(store.sets_dir().join("README"), "admin notes").unwrap();
        fs::create_dir(store.sets_dir().join("20260101T000000.000Z-m9")).unwrap();
        let (staging, manifest) = staged(&store, "m0", 0);
        let set = store.commit(&staging, &manifest).unwrap();
        fs::write(set.dir.join(&manifest.files[0].name), "shorter").unwrap();

        let listing = store.list().unwrap();
        assert_eq!(listing.unreadable.len(), 1);
        assert!(
            listing.unreadable[0].1.contains("manifest.json"),
            "{:?}",
            listing.unreadable
        );
        assert!(
            listing.sets[0]
                .problem
                .as_deref()
                .unwrap()
                .contains("manifest says")
        );
        assert!(store.sets_dir().join("README").exists());
    }

    #[test]
    fn gc_removes_only_old_staging_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let old = store.new_staging("backup").unwrap();
        fs::write(old.join("static_kuberesources_x.tar.gz"), "orphan").unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, store.staging_dir().join("planted-link")).unwrap();

        let now = SystemTime::now();
        assert!(
            store
                .gc_staging(Duration::from_secs(3600), now)
                .unwrap()
                .is_empty()
        );
        let removed = store
            .gc_staging(Duration::from_secs(3600), now + Duration::from_secs(7200))
            .unwrap();
        assert_eq!(removed.len(), 2);
        assert!(!old.exists());
        assert!(
            outside.join("keep").exists(),
            "a symlink in staging is never followed"
        );
    }

    #[test]
    fn runs_opening_a_new_store_at_once_all_succeed() {
        // Two first runs at once (a timer and a hand start) used to race between stat and
        // mkdir: one failed with "File exists".
        for _ in 0..50 {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("a/store");
            std::thread::scope(|scope| {
                let opens: Vec<_> = (0..4).map(|_| scope.spawn(|| Store::open(&root))).collect();
                for open in opens {
                    open.join().unwrap().unwrap();
                }
            });
            assert_eq!(mode(&root.join(SETS_DIR)), DIR_MODE);
        }
    }

    #[test]
    fn lock_is_exclusive_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let held = store.lock(Duration::ZERO).unwrap();
        let err = store.lock(Duration::from_millis(250)).unwrap_err();
        let busy = err.downcast_ref::<BusyError>().expect("a BusyError");
        assert!(
            busy.holder.contains(&format!("pid {}", std::process::id())),
            "{busy}"
        );
        drop(held);
        store.lock(Duration::ZERO).unwrap();
    }
}
