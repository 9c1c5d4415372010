//! Where sets go, and where `fetch` gets them back. One trait, one file per kind: `peer` (a
//! peer master's `receive`, over SSH or mutual TLS), `dir` (a directory store such as an NFS
//! mount, served in-process) and `s3` (a bucket). Peers and directories speak the protocol
//! through [`crate::protocol::send::push`], so each is idempotent, resumable and verified against
//! the manifest by the receiving store, which prunes itself by its own policy; a bucket is
//! judged by the same [`crate::protocol::wants()`]. Each target is built with what it needs from
//! the settings, once per run.

pub mod check;
pub mod dir;
pub mod peer;
pub mod s3;

use crate::config::{Carried, Settings, TargetConfig};
use crate::manifest::{FileEntry, Manifest};
use crate::protocol::send::{OpenSet, PushStats};
use crate::verify::Checked;
use anyhow::Result;
use std::collections::BTreeSet;
use std::fs::File;

/// One place a run sprays to.
pub trait Target: Send + Sync + std::fmt::Debug {
    /// Stable across runs (state and metrics are keyed by it): `ssh:master-1`, `dir:/mnt/nfs`.
    fn id(&self) -> String;
    /// What an operator reads: `master-1 (10.0.0.5:22)`, `dir:/mnt/nfs`.
    fn describe(&self) -> String;
    /// Offers `sets` and sends what the target lacks, and again what a verification of its
    /// copies found `damaged` (digests of their manifests). An error marked
    /// [`crate::failure::Final`] is not retried.
    fn push(&self, sets: &[OpenSet], damaged: &BTreeSet<String>) -> Result<PushStats>;
    /// Which of a set's files the target carries (a bucket can carry one of the two).
    fn carries(&self) -> Carried {
        Carried::All
    }
    /// How often the verify timer checks its copies; zero: only by hand.
    fn verify_every(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
    /// How `fetch` names it among its sources.
    fn describe_source(&self) -> String {
        self.describe()
    }
    /// What the target holds of set `id`, opened for `fetch` to copy from.
    fn open_set(&self, id: &str) -> Result<HeldCopy> {
        anyhow::bail!("set '{id}' cannot be fetched from {}", self.describe())
    }
    /// Every set the target holds, from its listing and manifests alone (nothing downloaded
    /// but the manifests): what `list --from` shows without a local store.
    fn list_sets(&self) -> Result<Vec<Listed>> {
        anyhow::bail!("the sets on {} cannot be listed from here", self.describe())
    }
    /// Checks the target's copies of the sets named by `ids` (every set it holds when empty)
    /// against their manifests, telling `checked` each outcome as it comes. `deep` walks each
    /// snapshot; a sealed one only when `identities` open it.
    fn verify_copies(
        &self,
        ids: &[String],
        deep: bool,
        identities: &[age::x25519::Identity],
        checked: &mut dyn FnMut(&Checked),
    ) -> Result<Vec<Checked>> {
        let _ = (ids, deep, identities, checked);
        anyhow::bail!(
            "the copies on {} cannot be verified from here",
            self.describe()
        )
    }
}

/// A set as a target's listing shows it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub manifest: Manifest,
    pub manifest_sha256: String,
    /// Every file the target carries is there, of its manifest's size.
    pub whole: bool,
    /// What the target itself knows to be wrong with it (a directory store's verification).
    pub problem: Option<String>,
    /// A sealed copy's recipients, by file (empty: in the clear).
    pub sealed_to: std::collections::BTreeMap<String, Vec<String>>,
}

/// A copy of one set on a target, opened for `fetch`.
pub struct HeldCopy {
    pub manifest: Manifest,
    /// [`crate::manifest::digest`] of the manifest as the target holds it.
    pub manifest_sha256: String,
    /// The files it can give (a bucket may carry one of the two, or have lost one).
    pub files: Vec<String>,
    /// Why it cannot give the others, one line each (naming the object or file).
    pub lacking: Vec<String>,
    /// The manifest's signature as held there, if any.
    pub signature: Option<Vec<u8>>,
    pub copy: CopyFile,
}

/// Writes one file of a held copy into `dest`: no more than the entry's size, whatever the
/// target sends; a sealed file opened with one of the identities.
pub type CopyFile = Box<dyn FnMut(&FileEntry, &mut File, &[age::x25519::Identity]) -> Result<()>>;

/// The targets of one run.
pub type Targets = Vec<Box<dyn Target>>;

/// The configured `[[spray.target]]`s.
pub fn configured(settings: &Settings) -> Targets {
    settings
        .spray
        .targets
        .iter()
        .map(|target| -> Box<dyn Target> {
            match target {
                TargetConfig::Dir(d) => Box::new(dir::DirStore::new(d.clone(), settings)),
                TargetConfig::S3(s) => Box::new(s3::Bucket::new(s.clone(), settings)),
            }
        })
        .collect()
}

/// The configured targets `name` picks: its id, or a bucket's name. `None`: every configured
/// target. An absolute path is a directory store, configured or not; so is `dir:PATH` that no
/// configured target is.
pub fn named(settings: &Settings, name: Option<&str>) -> Result<Targets> {
    let Some(name) = name else {
        return Ok(configured(settings));
    };
    // A peer, by its id (`ssh:master-1`) or its name; found as spray finds it.
    if let Some((_, peer_name)) = name
        .split_once(':')
        .filter(|(kind, _)| ["ssh", "tls"].contains(kind))
    {
        let (peers, _) = peer::peers(settings)?;
        if let Some(peer) = peers
            .into_iter()
            .find(|p| p.id() == name || p.name == peer_name)
        {
            return Ok(vec![Box::new(peer)]);
        }
        anyhow::bail!("'{name}' is not a peer of this node (etcd.env's masters and spray.peers)");
    }
    // A directory by its path, or by the id a directory store is listed and planned under
    // (`dir:/path`) when no configured target has that id: told from the configuration, as
    // making a directory target measures its filesystem (a dead NFS mount hangs there).
    let path = match name.strip_prefix("dir:") {
        Some(path) => Some(path).filter(|path| {
            path.starts_with('/')
                && !settings
                    .spray
                    .targets
                    .iter()
                    .any(|t| matches!(t, TargetConfig::Dir(d) if d.id() == name))
        }),
        None => Some(name).filter(|path| path.starts_with('/')),
    };
    if let Some(path) = path {
        let dir = crate::config::DirTarget {
            path: std::path::PathBuf::from(path),
            require_mount: false,
            verify_every: std::time::Duration::ZERO,
            seal: Some(false),
        };
        return Ok(vec![Box::new(dir::DirStore::new(dir, settings))]);
    }
    let configured = configured(settings);
    let ids: Vec<String> = configured.iter().map(|t| t.id()).collect();
    let matching: Targets = configured
        .into_iter()
        .zip(&settings.spray.targets)
        .filter(|(target, config)| {
            target.id() == name || matches!(config, TargetConfig::S3(s) if s.bucket == name)
        })
        .map(|(target, _)| target)
        .collect();
    if matching.is_empty() {
        anyhow::bail!(
            "'{name}' is neither a directory (an absolute path, or dir:PATH) nor a configured target (ids: {}; or a bucket name)",
            if ids.is_empty() {
                "none".to_string()
            } else {
                ids.join(", ")
            }
        );
    }
    Ok(matching)
}

/// The targets of a run: etcd.env's masters and explicit peers (never this node), then the
/// directory targets and buckets. Problems that do not stop the run come back as warnings.
pub fn from_settings(settings: &Settings) -> Result<(Targets, Vec<String>)> {
    let (peers, warnings) = peer::peers(settings)?;
    let mut targets: Targets = Vec::new();
    for peer in peers {
        targets.push(Box::new(peer));
    }
    targets.extend(configured(settings));
    Ok((targets, warnings))
}
