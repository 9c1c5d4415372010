//! `s3`: a bucket of an S3-compatible store. It does not speak the protocol: the sender lists
//! the bucket, asks [`crate::protocol::wants()`] what it lacks (the same decision a receiving store
//! makes, with the same retention policy), uploads it with per-part SHA-256 checked by the
//! server and the whole file's digest checked against the manifest, puts `manifest.json` last,
//! then applies retention to the sets the bucket holds.

pub mod layout;
mod prune;
mod remote;
mod upload;
mod verify;

use super::{HeldCopy, Listed, Target};
use crate::config::{Carried, S3Target, Settings};
use crate::protocol::Judge;
use crate::protocol::send::{OpenSet, PushStats};
use crate::retention::Policy;
use crate::s3::Client;
use crate::verify::Checked;
use anyhow::{Context, Result};
use layout::RemoteSet;
use prune::{collect_garbage, prune};
pub use remote::{Remote, read_remote};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use upload::upload_set;

#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    pub target: S3Target,
    connect_timeout: Duration,
    io_timeout: Duration,
    /// The node's retention without `min_free_space`: a bucket has no free space to keep, only
    /// the keep rules and `max_total_size` apply.
    policy: Policy,
    /// Sets dated after now plus this are not believed (`node.max_clock_skew`).
    max_clock_skew: Duration,
    /// This node's store, where `verify --deep` walks a downloaded snapshot, and the space it
    /// must leave free there (`retention.min_free_space`).
    store_root: std::path::PathBuf,
    policy_floor: u64,
    /// `[seal]`: what copies are sealed to and signed with when this target `seals`, and the
    /// signers every copy, sealed or not, is judged by; this node's name, which a seal record
    /// says.
    seal: crate::config::SealSettings,
    seals: bool,
    node_name: String,
}

impl Bucket {
    pub fn new(target: S3Target, settings: &Settings) -> Bucket {
        let mut policy = settings.retention.clone();
        policy.min_free_space = None;
        Bucket {
            connect_timeout: settings.spray.connect_timeout,
            io_timeout: settings.spray.io_timeout,
            policy,
            max_clock_skew: settings.max_clock_skew,
            store_root: settings.store.root.clone(),
            policy_floor: settings.retention.min_free_space.unwrap_or(0),
            seal: settings.seal.clone(),
            seals: settings.seal.seals(target.seal),
            node_name: settings.node_name.clone(),
            target,
        }
    }

    /// Keeps the checksums the bucket stored for objects this node put there or verified, in
    /// this node's store (when it has one): a later verification that finds the same needs no
    /// download.
    fn remember(&self, stored: &[(String, String)]) {
        if let Some(store) = crate::store::Store::existing(&self.store_root)
            && let Err(error) = store.remember_object_checksums(&self.id(), stored)
        {
            tracing::warn!(
                "the checksums stored by {} were not kept: {error:#}",
                self.describe()
            );
        }
    }

    fn client(&self) -> Result<Client> {
        Client::open(&self.target, self.connect_timeout, self.io_timeout)
    }

    fn location(&self) -> String {
        let t = &self.target;
        let host = t
            .endpoint
            .split_once("://")
            .map_or(t.endpoint.as_str(), |(_, h)| h)
            .trim_end_matches('/');
        if t.prefix.is_empty() {
            format!("{host}/{}", t.bucket)
        } else {
            format!("{host}/{}/{}", t.bucket, t.prefix)
        }
    }
}

impl Target for Bucket {
    fn carries(&self) -> Carried {
        self.target.files
    }

    fn id(&self) -> String {
        format!("s3:{}", self.location())
    }

    fn describe(&self) -> String {
        let t = &self.target;
        let files = match t.files {
            Carried::All => String::new(),
            other => format!(", {} only", other.as_str()),
        };
        format!(
            "bucket '{}' at {} ({}{files})",
            t.bucket,
            t.endpoint,
            self.id()
        )
    }

    fn verify_every(&self) -> Duration {
        self.target.verify_every
    }

    fn describe_source(&self) -> String {
        let t = &self.target;
        format!(
            "bucket '{}' at {}{}",
            t.bucket,
            t.endpoint,
            if t.prefix.is_empty() {
                String::new()
            } else {
                format!(" (prefix '{}')", t.prefix)
            }
        )
    }

    fn push(&self, sets: &[OpenSet], damaged: &BTreeSet<String>) -> Result<PushStats> {
        let t = &self.target;
        let judge = Judge {
            policy: &self.policy,
            free_bytes: u64::MAX,
            not_after: crate::units::after(chrono::Utc::now(), self.max_clock_skew),
            guard: None,
        };
        let mut stored = Vec::new();
        let sealing = self.seals.then(|| self.seal.sealing()).transpose()?;
        let sealing = sealing.as_ref().map(|s| (s, self.node_name.as_str()));
        let pushed = self
            .client()
            .with_context(|| self.describe())
            .and_then(|mut client| {
                push(&mut client, t, &judge, sets, damaged, sealing, &mut stored)
                    .with_context(|| format!("bucket '{}' at {}", t.bucket, t.endpoint))
            })
            .map_err(refused_is_final);
        // What was put is worth remembering even when a later object failed.
        self.remember(&stored);
        pushed
    }

    fn open_set(&self, id: &str) -> Result<HeldCopy> {
        remote::open_set(self.client()?, &self.target, id)
    }

    fn list_sets(&self) -> Result<Vec<Listed>> {
        let mut client = self.client().with_context(|| self.describe())?;
        let remote = read_remote(&mut client, &self.target).with_context(|| self.describe())?;
        Ok(remote
            .manifests
            .iter()
            .map(|(id, (manifest, digest))| Listed {
                whole: remote.whole(id, manifest, self.target.files),
                problem: None,
                sealed_to: remote
                    .extras
                    .get(id)
                    .map(|e| e.sealed_to())
                    .unwrap_or_default(),
                manifest_sha256: digest.clone(),
                manifest: manifest.clone(),
            })
            .collect())
    }

    fn verify_copies(
        &self,
        ids: &[String],
        deep: bool,
        identities: &[age::x25519::Identity],
        checked: &mut dyn FnMut(&Checked),
    ) -> Result<Vec<Checked>> {
        let mut client = self.client().with_context(|| self.describe())?;
        let remote = read_remote(&mut client, &self.target).with_context(|| self.describe())?;
        let scratch = crate::verify::Scratch {
            store: &self.store_root,
            floor: self.policy_floor,
            identities,
        };
        let store = crate::store::Store::existing(&self.store_root);
        let stored = store
            .as_ref()
            .map(|s| s.object_checksums().remove(&self.id()).unwrap_or_default())
            .unwrap_or_default();
        // The sets this node holds sound, by id: their manifests are the ones a copy must have.
        let held_here: BTreeMap<String, String> = match &store {
            Some(store) => store
                .list()?
                .sets
                .into_iter()
                .filter(|s| s.problem.is_none())
                .map(|s| (s.id().to_string(), s.manifest_sha256))
                .collect(),
            None => BTreeMap::new(),
        };
        let signers = crate::seal::signers(&self.seal.signers);
        let mut known = verify::Known {
            stored: &stored,
            held_here: &held_here,
            learned: Vec::new(),
            signers: &signers,
            require_signature: self.seal.require_signature,
        };
        let outcomes = verify::verify_copies(
            &mut client,
            &self.target,
            &remote,
            ids,
            deep.then_some(&scratch),
            &mut known,
            checked,
        );
        self.remember(&known.learned);
        Ok(outcomes)
    }
}

/// An answer of 4xx (but a timeout or throttling) would come again: the bucket is missing, the
/// keys are refused, a request is not allowed. Retrying in this run would not help.
fn refused_is_final(error: anyhow::Error) -> anyhow::Error {
    let refused = error.chain().any(|e| {
        e.downcast_ref::<crate::s3::S3Error>()
            .is_some_and(|e| (400..500).contains(&e.status) && ![408, 429].contains(&e.status))
    });
    if refused {
        crate::failure::mark_final(error)
    } else {
        error
    }
}

fn push(
    client: &mut Client,
    t: &S3Target,
    judge: &Judge,
    sets: &[OpenSet],
    damaged: &BTreeSet<String>,
    sealing: Option<(&crate::seal::Sealing, &str)>,
    stored: &mut Vec<(String, String)>,
) -> Result<PushStats> {
    let remote = read_remote(client, t)?;
    for key in &remote.listing.unknown {
        tracing::debug!("unknown object left alone: {key}");
    }
    let offers = crate::protocol::send::offers(sets);
    // A copy a verification found damaged is sent again, every object of it; one found with
    // a manifest that is not this node's manifest of the set too (recorded under ours).
    let ours: BTreeMap<&str, &str> = offers
        .iter()
        .map(|o| (o.id.as_str(), o.manifest_sha256.as_str()))
        .collect();
    let mut held = remote.held(t.files);
    for copy in &mut held {
        if let Some(&mine) = ours.get(copy.info.id.as_str())
            && mine != copy.manifest_sha256
            && damaged.contains(mine)
        {
            copy.manifest_sha256 = mine.to_string();
        }
        copy.damaged |= damaged.contains(&copy.manifest_sha256);
    }
    let plan = crate::protocol::wants(&offers, &held, &BTreeMap::new(), judge);
    for id in &plan.conflicts {
        tracing::warn!(set_id = %id, "the bucket holds another set '{id}' (another manifest): left alone, not sent");
    }
    let by_id: BTreeMap<&str, &OpenSet> = sets.iter().map(|s| (s.set.id(), s)).collect();
    let mut stats = PushStats {
        offered: offers.len(),
        ..PushStats::default()
    };
    let mut buf = Vec::new();
    let uploading: Vec<String> = plan.wants.iter().map(|w| w.id.clone()).collect();
    for want in &plan.wants {
        let open = by_id[want.id.as_str()];
        // A copy found damaged by a verification may hold objects of the right size and
        // metadata: none of them is trusted, all are put again.
        let remote_set = if damaged.contains(&open.set.manifest_sha256) {
            RemoteSet::default()
        } else {
            remote
                .listing
                .sets
                .get(&want.id)
                .cloned()
                .unwrap_or_default()
        };
        let sent = upload_set(client, t, open, &remote_set, sealing, &mut buf, stored)
            .with_context(|| format!("set '{}'", want.id))?;
        stats.data_bytes += sent;
        stats.wire_bytes += sent;
        stats.sent.push(want.id.clone());
    }
    stats.held = plan.holds + stats.sent.len();

    prune(client, t, judge, &remote, &stats.sent, sets)?;
    collect_garbage(client, t, &remote, &uploading)?;
    Ok(stats)
}
