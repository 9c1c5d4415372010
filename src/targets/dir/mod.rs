//! `dir`: a directory store (an NFS mount, a PVC). What it lacks is written straight into the
//! store at that path (`direct`: each file read once, checked and written past the page cache,
//! no protocol; or sealed), judged and committed by the same store code as a peer's delivery;
//! and `fetch` reads a set back from it as from any store.

mod direct;
mod sealed;

use super::{HeldCopy, Listed, Target};
use crate::config::{DirTarget, Settings};
use crate::files::copy_exactly;
use crate::protocol::send::{OpenSet, PushStats};
use crate::store::Store;
use crate::verify::Checked;
use anyhow::{Context, Result, bail};
use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq)]
pub struct DirStore {
    pub target: DirTarget,
    /// This node's settings with the store at the target's path: what its in-process
    /// receiver judges and commits by.
    receiver: Settings,
    /// This node's name, which the sender says in its hello.
    sender: String,
    /// The target seals (`seal`, or `[seal] recipients` when unset).
    seals: bool,
    /// This node's store and the space to leave free there: where a deep check of a sealed
    /// copy opens its snapshot.
    scratch: (std::path::PathBuf, u64),
}

impl DirStore {
    pub fn new(target: DirTarget, settings: &Settings) -> DirStore {
        let mut receiver = settings.clone();
        receiver.store.root = target.path.clone();
        // The floor there is a share of the target's filesystem, not of the store's.
        if let Some(floor) = settings.floor_for(&target.path) {
            receiver.retention.min_free_space = floor;
        }
        receiver.node_name = target.id();
        DirStore {
            scratch: (
                settings.store.root.clone(),
                settings.retention.min_free_space.unwrap_or(0),
            ),
            seals: settings.seal.seals(target.seal),
            target,
            receiver,
            sender: settings.node_name.clone(),
        }
    }
}

impl Target for DirStore {
    fn id(&self) -> String {
        self.target.id()
    }

    fn describe(&self) -> String {
        self.id()
    }

    fn verify_every(&self) -> std::time::Duration {
        self.target.verify_every
    }

    fn describe_source(&self) -> String {
        format!("'{}'", self.target.path.display())
    }

    /// The store there knows its damaged copies when a verification could record them there;
    /// those this node found damaged while the export was read-only are recorded first. Its
    /// receiver then asks for them again.
    fn push(&self, sets: &[OpenSet], damaged: &BTreeSet<String>) -> Result<PushStats> {
        let dir = &self.target;
        if dir.require_mount && !is_mount_point(&dir.path)? {
            return Err(crate::failure::final_error(format!(
                "'{}' is not a mount point and require_mount is set: refusing to fill the local disk (is the NFS share mounted?)",
                dir.path.display()
            )));
        }
        let store = Store::open(&dir.path)?;
        if !damaged.is_empty() {
            self.record_damage(&store, damaged)?;
        }
        if self.seals {
            let sealing = self.receiver.seal.sealing()?;
            return self.push_sealed(&store, sets, damaged, &sealing);
        }
        self.push_direct(&store, sets, damaged, &direct::copy_set)
    }

    /// The sets of the store at the target's path, checked as `verify` checks a local store;
    /// the outcomes are recorded there too (where that store's receiver, and so the next
    /// spray, repairs a damaged copy), unless it cannot be written (a read-only export).
    fn verify_copies(
        &self,
        ids: &[String],
        deep: bool,
        identities: &[age::x25519::Identity],
        checked: &mut dyn FnMut(&Checked),
    ) -> Result<Vec<Checked>> {
        let path = &self.target.path;
        let Some(store) = Store::existing(path) else {
            bail!("no store at '{}'", path.display());
        };
        // A read-only export cannot hold our lock file, but nothing prunes it through us either.
        let _lock = match store.lock(self.receiver.store.lock_wait) {
            Err(error) if read_only(&error) => {
                tracing::warn!(
                    "'{}' is read-only: its copies are checked without its lock",
                    path.display()
                );
                None
            }
            lock => Some(lock?),
        };
        // The signatures are judged as this node judges them; only the bytes' outcome is
        // recorded there.
        let seal = &self.receiver.seal;
        let signers = crate::seal::signers(&seal.signers);
        let mut judged = Vec::new();
        // A sealed snapshot is opened into this node's store to be walked, never there.
        let scratch = crate::verify::Scratch {
            store: &self.scratch.0,
            floor: self.scratch.1,
            identities,
        };
        let outcomes =
            crate::verify::check_store(&store, ids, deep, Some(&scratch), &mut |outcome| {
                let outcome = crate::verify::with_signatures(
                    &store,
                    &signers,
                    seal.require_signature,
                    outcome,
                );
                checked(&outcome);
                judged.push(outcome);
            })?;
        if let Err(error) = crate::verify::record(&store, &outcomes, deep) {
            tracing::warn!(
                "the outcomes could not be recorded in '{}' (the next spray cannot repair what is damaged there): {error:#}",
                path.display()
            );
        }
        Ok(judged)
    }

    fn list_sets(&self) -> Result<Vec<Listed>> {
        let path = &self.target.path;
        let Some(store) = Store::existing(path) else {
            bail!("no store at '{}'", path.display());
        };
        let listing = store.list()?;
        for (dir, reason) in &listing.unreadable {
            tracing::warn!("unreadable set '{}': {reason}", dir.display());
        }
        Ok(listing
            .sets
            .into_iter()
            .map(|set| Listed {
                sealed_to: set
                    .sealed
                    .as_ref()
                    .map(|r| r.seal.recipients())
                    .unwrap_or_default(),
                whole: set.on_disk_problem.is_none(),
                problem: set.problem,
                manifest_sha256: set.manifest_sha256,
                manifest: set.manifest,
            })
            .collect())
    }

    /// The set in the store at the target's path, which is only read.
    fn open_set(&self, id: &str) -> Result<HeldCopy> {
        let from = &self.target.path;
        let Some(store) = Store::existing(from) else {
            bail!("no store at '{}'", from.display());
        };
        let set = store.get(id)?;
        if let Some(problem) = &set.problem {
            bail!("set '{id}' there is not sound: {problem}");
        }
        let dir = set.dir.clone();
        let seal = set.sealed.map(|r| r.seal);
        Ok(HeldCopy {
            files: set.manifest.files.iter().map(|f| f.name.clone()).collect(),
            lacking: Vec::new(),
            manifest_sha256: set.manifest_sha256,
            manifest: set.manifest,
            signature: set.signature,
            copy: Box::new(move |entry, dest, identities| {
                let Some(sealed) = seal.as_ref().and_then(|s| s.file(&entry.name)) else {
                    let from = dir.join(&entry.name);
                    let mut source = crate::files::open_regular(&from)?;
                    return copy_exactly(&mut source, dest, entry.size)
                        .with_context(|| format!("cannot copy '{}'", from.display()));
                };
                let from = dir.join(crate::seal::record::sealed_name(&entry.name));
                let name = format!("'{}'", from.display());
                let source =
                    std::io::BufReader::with_capacity(1 << 20, crate::files::open_bulk(&from)?);
                let mut out = std::io::BufWriter::with_capacity(1 << 20, dest);
                let opened = (sealed, entry.size);
                crate::seal::stream::open_into(source, opened, identities, &name, &mut out)?;
                std::io::Write::flush(&mut out)?;
                Ok(())
            }),
        })
    }
}

impl DirStore {
    /// Records in the store there the copies this node's verification found damaged and that
    /// the store does not know as such.
    fn record_damage(&self, store: &Store, damaged: &BTreeSet<String>) -> Result<()> {
        let _lock = store.lock(self.receiver.store.lock_wait)?;
        let unknown: Vec<(String, crate::store::Verification)> = store
            .list()?
            .sets
            .into_iter()
            .filter(|s| damaged.contains(&s.manifest_sha256) && s.problem.is_none())
            .map(|s| {
                let verification = crate::store::Verification {
                    at: chrono::Utc::now(),
                    deep: false,
                    problem: Some(format!(
                        "found damaged by {}'s verification of this store",
                        self.sender
                    )),
                };
                (s.manifest_sha256, verification)
            })
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        store.record_verifications(&unknown)
    }
}

/// The error is a filesystem's refusal to be written (`EROFS`).
fn read_only(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            == Some(nix::libc::EROFS)
    })
}

/// `path` is the mount point of a filesystem (/proc/self/mountinfo field 5, octal escapes).
pub fn is_mount_point(path: &std::path::Path) -> Result<bool> {
    let path = std::fs::canonicalize(path)
        .with_context(|| format!("cannot resolve '{}'", path.display()))?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .context("cannot read /proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mount| unescape_mount(mount) == path.as_os_str().to_string_lossy()))
}

fn unescape_mount(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&code, 8) {
                Ok(b) => out.push(b as char),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&code);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mount("/mnt/nfs\\040share"), "/mnt/nfs share");
        assert_eq!(unescape_mount("/plain"), "/plain");
        assert!(is_mount_point(std::path::Path::new("/")).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("x");
        std::fs::create_dir(&inner).unwrap();
        assert!(!is_mount_point(&inner).unwrap());
    }
}
