//! What a set knows of the cluster it was taken from, learned at backup from what the node has
//! on disk (no API server needed), and what the node knows of its cluster now, for a restore's
//! checks and plan and for telling one etcd history from the next.
//!
//! Sources, each from the operators that put it there: the release from the machine-config
//! daemon's `currentconfig` ([`release`]); etcd's version from `cluster-backup.sh`'s own output
//! (it prints `etcdctl version: X` for the etcdctl it takes from the etcd image) and the cluster
//! version from the snapshot; the etcd cluster ID from the live member's WAL ([`wal`]); the
//! members from the snapshot's `members` bucket; encryption at rest and the etcd certificates
//! from the resources archive ([`archive`]); the masters from etcd.env.

pub mod archive;
pub mod release;
pub mod wal;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// etcd's data directory on a master, under the node's root.
pub const ETCD_DATA_DIR: &str = "var/lib/etcd";

/// The cluster a set was taken from. Every fact may be unknown (an older set, a node without
/// the file); `unknown` then says which and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFacts {
    /// The OpenShift release the node ran, e.g. `4.18.7`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// etcd's version, e.g. `3.5.18` (the etcdctl of the etcd image the script used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_version: Option<String>,
    /// The version the etcd cluster runs at, from the snapshot, e.g. `3.5.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_cluster_version: Option<String>,
    /// The etcd cluster ID (16 hex digits): a restore starts a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// The ID of the member that served the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Member>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificates: Option<Certificates>,
    /// Each fact that could not be learned: `<fact>: <why>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: String,
    pub name: String,
}

/// etcd encryption at rest as the kube-apiserver was configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Encryption {
    /// The provider that writes: `identity` (off), `aescbc`, `aesgcm`, `secretbox`, `kms`.
    pub provider: String,
    /// The resources it encrypts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
}

impl Encryption {
    pub fn off() -> Encryption {
        Encryption {
            provider: "identity".to_string(),
            resources: Vec::new(),
        }
    }

    pub fn is_on(&self) -> bool {
        self.provider != "identity"
    }
}

/// The etcd certificates in the resources archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificates {
    /// How many certificates were read (the members' and the CA bundles').
    pub count: u32,
    /// The earliest issue date of any of them: the etcd signer's, as old as the cluster.
    pub first_issued: DateTime<Utc>,
    /// From when to when every member certificate (serving, peer, metrics) is valid.
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

/// The first 24 hours of a cluster: its certificates rotate then, and OpenShift's docs warn
/// against a backup taken before the first rotation.
pub const FIRST_ROTATION: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// A version as `cluster-backup.sh` prints it: `etcdctl version: 3.5.18` (from `etcdctl
/// version`, which its `dl_etcdctl` runs for the etcdctl of the etcd image).
pub fn etcd_version_of_line(line: &str) -> Option<String> {
    let v = line.trim().strip_prefix("etcdctl version:")?.trim();
    is_version(v).then(|| v.to_string())
}

fn is_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.as_bytes()[0].is_ascii_digit()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
}

fn is_hex_id(v: &str) -> bool {
    v.len() == 16
        && v.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// A word of the facts: printable ASCII, no spaces, bounded (they are shown in terminals).
fn is_word(v: &str, max: usize) -> bool {
    v.len() <= max && v.bytes().all(|b| b.is_ascii_graphic())
}

impl ClusterFacts {
    /// Refuses what no backup writes (facts arrive from peers and buckets): each string
    /// printable and bounded, IDs hex, versions versions, at most 64 members.
    pub fn check(&self) -> Result<(), String> {
        let bad = |what: &str| Err(format!("cluster facts: {what}"));
        if let Some(v) = &self.release
            && !release::is_release(v)
        {
            return bad("release is not a release version");
        }
        for v in [&self.etcd_version, &self.etcd_cluster_version]
            .into_iter()
            .flatten()
        {
            if !is_version(v) {
                return bad("an etcd version is not a version");
            }
        }
        for v in [&self.cluster_id, &self.member_id].into_iter().flatten() {
            if !is_hex_id(v) {
                return bad("an ID is not 16 hex digits");
            }
        }
        if self.members.len() > 64
            || self
                .members
                .iter()
                .any(|m| !is_hex_id(&m.id) || !is_word(&m.name, 253))
        {
            return bad("members are not etcd members");
        }
        if let Some(e) = &self.encryption
            && (!is_word(&e.provider, 32)
                || e.resources.len() > 64
                || e.resources.iter().any(|r| !is_word(r, 253)))
        {
            return bad("encryption is not an encryption provider");
        }
        if self.unknown.len() > 16
            || self
                .unknown
                .iter()
                .any(|u| u.len() > 1024 || u.chars().any(char::is_control))
        {
            return bad("unknown holds more than notes");
        }
        Ok(())
    }

    /// The member names, for a line.
    pub fn member_names(&self) -> Vec<&str> {
        self.members.iter().map(|m| m.name.as_str()).collect()
    }
}

/// The live etcd's cluster ID (16 hex digits), from its WAL under the node's `root`.
pub fn live_cluster_id(root: &Path) -> anyhow::Result<String> {
    wal::read(&root.join(ETCD_DATA_DIR)).map(|m| wal::hex_id(m.cluster_id))
}

/// Everything learned at backup besides the node's own files.
pub struct Learned {
    /// `etcdctl version: X` from the script's output.
    pub etcd_version: Option<String>,
    pub membership: Option<crate::bbolt::Membership>,
    pub archive: Option<archive::Facts>,
}

/// The facts of a set taken now on the node whose `/` is `root`.
pub fn learn(root: &Path, learned: Learned) -> ClusterFacts {
    let mut facts = ClusterFacts::default();
    let mut notes = Vec::new();
    match release::learn(root) {
        Ok(v) => facts.release = Some(v),
        Err(e) => notes.push(format!("release: {e:#}")),
    }
    match learned.etcd_version {
        Some(v) => facts.etcd_version = Some(v),
        None => notes.push(
            "etcd_version: the backup command printed no `etcdctl version: X` line".to_string(),
        ),
    }
    match wal::read(&root.join(ETCD_DATA_DIR)) {
        Ok(meta) => {
            facts.cluster_id = Some(wal::hex_id(meta.cluster_id));
            facts.member_id = Some(wal::hex_id(meta.member_id));
        }
        Err(e) => notes.push(format!("cluster_id: {e:#}")),
    }
    if let Some(m) = learned.membership {
        facts.etcd_cluster_version = m.cluster_version;
        facts.members = m
            .members
            .into_iter()
            .map(|(id, name)| Member {
                id: wal::hex_id(id),
                name,
            })
            .collect();
        facts.members.sort_by(|a, b| a.name.cmp(&b.name));
        if facts.members.is_empty() {
            notes.push("members: the snapshot's members bucket names none".to_string());
        }
    }
    if let Some(a) = learned.archive {
        match a.encryption {
            Ok(e) => facts.encryption = Some(e),
            Err(e) => notes.push(format!("encryption: {e}")),
        }
        match a.certificates {
            Ok(c) => facts.certificates = Some(c),
            Err(e) => notes.push(format!("certificates: {e}")),
        }
    }
    for note in &mut notes {
        // Bounded and printable, as `check` wants them.
        *note = note
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(1000)
            .collect();
    }
    notes.truncate(16);
    facts.unknown = notes;
    facts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_etcd_version_line_of_cluster_backup_sh() {
        assert_eq!(
            etcd_version_of_line("etcdctl version: 3.5.18").as_deref(),
            Some("3.5.18")
        );
        assert_eq!(etcd_version_of_line("API version: 3.5"), None);
        assert_eq!(
            etcd_version_of_line("etcdctl version: 3.5.18; rm -rf"),
            None
        );
        // A whole run of OpenShift's script as a master prints it (its `found latest` lines,
        // podman's container id from dl_etcdctl, `etcdctl version`, etcdctl's JSON log lines
        // and `snapshot status` figures, the success line): one version, the etcdctl's.
        let run = r#"found latest kube-apiserver: /etc/kubernetes/static-pod-resources/kube-apiserver-pod-9
found latest kube-controller-manager: /etc/kubernetes/static-pod-resources/kube-controller-manager-pod-7
found latest kube-scheduler: /etc/kubernetes/static-pod-resources/kube-scheduler-pod-7
found latest etcd: /etc/kubernetes/static-pod-resources/etcd-pod-4
Certificate /etc/kubernetes/static-pod-certs/configmaps/etcd-all-bundles/server-ca-bundle.crt is missing. Checking in different directory
Certificate /etc/kubernetes/static-pod-resources/etcd-certs/configmaps/etcd-all-bundles/server-ca-bundle.crt found!
3f1b8c1f5e6a0b6dbf7c58e0c1a2bd4a1f0c8cfb8f4b47d1b1c0f2de84a6ab21
etcdctl version: 3.5.18
API version: 3.5
{"level":"info","ts":"2026-12-04T10:00:01.118Z","caller":"snapshot/v3_snapshot.go:65","msg":"created temporary db file","path":"/var/lib/etcd-backup/.staging/snapshot_2026-12-04_100000.db.part"}
{"level":"info","ts":"2026-12-04T10:00:01.126Z","logger":"client","caller":"v3@v3.5.18/maintenance.go:212","msg":"opened snapshot stream; downloading"}
{"level":"info","ts":"2026-12-04T10:00:01.126Z","caller":"snapshot/v3_snapshot.go:73","msg":"fetching snapshot","endpoint":"https://10.0.0.5:2379"}
{"level":"info","ts":"2026-12-04T10:00:02.873Z","caller":"snapshot/v3_snapshot.go:88","msg":"fetched snapshot","endpoint":"https://10.0.0.5:2379","size":"152 MB","took":"1 second ago"}
Snapshot saved at /var/lib/etcd-backup/.staging/snapshot_2026-12-04_100000.db
Deprecated: Use `etcdutl snapshot status` instead.

{"hash":3866667823,"revision":431407,"totalKey":12828,"totalSize":152446976}
snapshot db and kube resources are successfully saved to /var/lib/etcd-backup/.staging"#;
        let found: Vec<String> = run.lines().filter_map(etcd_version_of_line).collect();
        assert_eq!(found, ["3.5.18"]);
    }

    #[test]
    fn facts_from_a_hostile_manifest_are_refused() {
        let good = ClusterFacts {
            release: Some("4.18.7".into()),
            cluster_id: Some("048276a8f75b6a87".into()),
            members: vec![Member {
                id: "2e12d4c1aeb28d60".into(),
                name: "master-0".into(),
            }],
            ..ClusterFacts::default()
        };
        assert!(good.check().is_ok());
        let mut bad = good.clone();
        bad.release = Some("4.18.7\u{1b}[2J".into());
        assert!(bad.check().is_err());
        let mut bad = good.clone();
        bad.cluster_id = Some("not-hex".into());
        assert!(bad.check().is_err());
        let mut bad = good.clone();
        bad.members[0].name = "master 0".into();
        assert!(bad.check().is_err());
        let mut bad = good;
        bad.unknown = vec!["x\ny".into()];
        assert!(bad.check().is_err());
    }
}
