//! The checks before a restore, as a pure function of the set and of what this node knows now:
//! each check has an outcome and says why; any refusal stops the restore. A fact that could not
//! be learned is `unknown` — said and warned about, never a pass and never a refusal by itself.

use crate::cluster::{ClusterFacts, FIRST_ROTATION};
use crate::manifest::Manifest;
use chrono::{DateTime, Utc};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Ok,
    Warning,
    Unknown,
    /// Refused, but the administrator said to go on (`--allow-other-release`).
    Allowed,
    Refused,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Warning => "WARNING",
            Outcome::Unknown => "UNKNOWN",
            Outcome::Allowed => "ALLOWED",
            Outcome::Refused => "REFUSED",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
    pub detail: String,
}

/// What this node knows now; an `Err` says why a fact is unknown.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub release: Result<String, String>,
    /// The live etcd's cluster ID (its WAL), 16 hex digits.
    pub cluster_id: Result<String, String>,
    /// Free bytes of the filesystem that holds /var/lib/etcd.
    pub etcd_free: Result<u64, String>,
    /// `cluster-restore.sh` is there, a regular file that can be run.
    pub restore_script: Result<(), String>,
}

/// The set as found: its manifest, what its check found, whether it carries a signature and
/// what is wrong with it under this node's policy. On a target (`on`), the copy's check judges
/// the signatures too (`signed` is then `None`), and the set is fetched before the restore.
pub struct Set<'a> {
    pub manifest: &'a Manifest,
    pub sound: Result<(), String>,
    pub signed: Option<bool>,
    pub signature: Option<String>,
    pub on: Option<&'a str>,
    /// Its files are in the plan's stage directory already: staging writes nothing more.
    pub staged: bool,
}

/// What a restore writes under /var/lib/etcd's filesystem: `cluster-restore.sh` copies the
/// snapshot to /var/lib/etcd-backup, then the restore writes a database as large and a WAL of
/// 64 MB; and some room left for etcd itself. (The set staged, and fetched when it is on a
/// target, come on top: see [`checks`].)
pub fn space_needed(snapshot: u64) -> u64 {
    snapshot
        .saturating_mul(2)
        .saturating_add(64_000_000)
        .saturating_add(1 << 30)
}

fn day(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// Every check, in the order printed.
pub fn checks(set: &Set, node: &Node, now: DateTime<Utc>, allow_other_release: bool) -> Vec<Check> {
    let m = set.manifest;
    let facts = m.cluster.clone().unwrap_or_default();
    let older = m.cluster.is_none();
    let unknown_why = |fact: &str| -> String {
        if older {
            return "the set was taken before etcd-backup recorded its cluster".to_string();
        }
        facts
            .unknown
            .iter()
            .find(|u| u.starts_with(&format!("{fact}:")))
            .cloned()
            .unwrap_or_else(|| format!("{fact}: not recorded in the set"))
    };
    let mut out = Vec::new();
    let mut push = |name, outcome, detail: String| {
        out.push(Check {
            name,
            outcome,
            detail,
        })
    };

    let (outcome, detail) = required(&set.sound, || {
        format!(
            "{} files match the manifest and the snapshot's structure is sound (revision {})",
            m.files.len(),
            m.checks
                .etcd
                .as_ref()
                .map_or("unknown".to_string(), |e| e.revision.to_string())
        )
    });
    push("set", outcome, detail);
    push(
        "signature",
        if set.signature.is_some() {
            Outcome::Refused
        } else {
            Outcome::Ok
        },
        match (&set.signature, set.signed) {
            (Some(problem), _) => problem.clone(),
            (None, Some(true)) => "signed; this node's [seal] finds nothing against it".to_string(),
            (None, Some(false)) => "unsigned; this node does not require signatures".to_string(),
            (None, None) => "judged with the copy (the set line)".to_string(),
        },
    );
    push(
        "clean",
        if m.dirty {
            Outcome::Warning
        } else {
            Outcome::Ok
        },
        if m.dirty {
            "taken with --force while an operator was progressing (__POSSIBLY_DIRTY__)".to_string()
        } else {
            "taken while no operator was progressing".to_string()
        },
    );
    let (outcome, detail) = match (&facts.release, &node.release) {
        (Some(of_set), Ok(here)) if of_set == here => {
            (Outcome::Ok, format!("the set and this node run {here}"))
        }
        (Some(of_set), Ok(here)) => (
            if allow_other_release {
                Outcome::Allowed
            } else {
                Outcome::Refused
            },
            format!(
                "the set was taken on {of_set}, this node runs {here}: OpenShift restores only a \
                 backup of the same z-stream release{}",
                if allow_other_release {
                    " (--allow-other-release)"
                } else {
                    "; --allow-other-release to go on anyway"
                }
            ),
        ),
        (None, _) => (Outcome::Unknown, unknown_why("release")),
        (Some(of_set), Err(e)) => (
            Outcome::Unknown,
            format!("the set was taken on {of_set}; this node's release: {e}"),
        ),
    };
    push("release", outcome, detail);
    let (outcome, detail) = match &facts.certificates {
        None => (Outcome::Unknown, unknown_why("certificates")),
        Some(c) if m.created < c.first_issued + FIRST_ROTATION => (
            Outcome::Warning,
            format!(
                "taken {} in the cluster's first 24 hours (its oldest certificate was issued {}); \
                 certificates rotate then and a restore may bring back ones that are gone",
                day(m.created),
                day(c.first_issued)
            ),
        ),
        Some(c) => (
            Outcome::Ok,
            format!(
                "taken {}, after the cluster's first 24 hours (certificates since {})",
                day(m.created),
                day(c.first_issued)
            ),
        ),
    };
    push("first 24 hours", outcome, detail);
    let (outcome, detail) = match &facts.certificates {
        None => (Outcome::Unknown, unknown_why("certificates")),
        Some(c) if now > c.not_after => (
            Outcome::Refused,
            format!(
                "the etcd certificates in the set expired {}: the restored members could not talk",
                day(c.not_after)
            ),
        ),
        Some(c) if now < c.not_before => (
            Outcome::Warning,
            format!(
                "the etcd certificates in the set are valid only from {}",
                day(c.not_before)
            ),
        ),
        Some(c) => (
            Outcome::Ok,
            format!(
                "the etcd certificates in the set are valid until {}",
                day(c.not_after)
            ),
        ),
    };
    push("certificates", outcome, detail);
    let (outcome, detail) = match &facts.encryption {
        None => (Outcome::Unknown, unknown_why("encryption")),
        Some(e) if e.is_on() => (
            Outcome::Ok,
            format!(
                "etcd encryption at rest was on ({}): the set's resources archive holds the keys \
                 that open its snapshot",
                e.provider
            ),
        ),
        Some(_) => (Outcome::Ok, "etcd encryption at rest was off".to_string()),
    };
    push("encryption", outcome, detail);
    push_history(&mut push, &facts, node, &unknown_why);
    let snapshot = m
        .files
        .iter()
        .find(|f| f.is_snapshot())
        .map_or(0, |f| f.size);
    // The plan stages the set, and first fetches a set still on a target into the store: on a
    // master, /home (/var/home), the store and /var/lib/etcd are one filesystem.
    let staged = if set.staged { 0 } else { m.total_size() };
    let fetched = if set.on.is_some() { m.total_size() } else { 0 };
    let needed = space_needed(snapshot)
        .saturating_add(staged)
        .saturating_add(fetched);
    let human = crate::units::human_size;
    let (outcome, detail) = match &node.etcd_free {
        Ok(free) if *free >= needed => (
            Outcome::Ok,
            format!(
                "{} free under /var/lib/etcd, {} needed",
                human(*free),
                human(needed)
            ),
        ),
        Ok(free) => (
            Outcome::Refused,
            format!(
                "{} free under /var/lib/etcd, the restore needs {} ({}the snapshot copied by \
                 cluster-restore.sh and restored, its WAL and 1 GiB for etcd{})",
                human(*free),
                human(needed),
                if staged > 0 {
                    format!("the set staged in {}, ", super::plan::STAGE_DIR)
                } else {
                    String::new()
                },
                if fetched > 0 {
                    ", and the set fetched"
                } else {
                    ""
                }
            ),
        ),
        Err(e) => (Outcome::Unknown, e.clone()),
    };
    push("space", outcome, detail);
    let (outcome, detail) = required(&node.restore_script, || {
        format!("{} is there", crate::paths::CLUSTER_RESTORE)
    });
    push("cluster-restore.sh", outcome, detail);
    out
}

/// A check that must pass: Ok with what `ok` says, or Refused with why not.
fn required(result: &Result<(), String>, ok: impl FnOnce() -> String) -> (Outcome, String) {
    match result {
        Ok(()) => (Outcome::Ok, ok()),
        Err(e) => (Outcome::Refused, e.clone()),
    }
}

fn push_history(
    push: &mut impl FnMut(&'static str, Outcome, String),
    facts: &ClusterFacts,
    node: &Node,
    unknown_why: &dyn Fn(&str) -> String,
) {
    let (outcome, detail) = match (&facts.cluster_id, &node.cluster_id) {
        (Some(of_set), Ok(live)) if of_set == live => (
            Outcome::Ok,
            format!("the set is of this etcd cluster ({live})"),
        ),
        (Some(of_set), Ok(live)) => (
            Outcome::Ok,
            format!(
                "the set is of etcd cluster {of_set}, this node's etcd is cluster {live}: the set \
                 belongs to an earlier history (before a restore) or another cluster"
            ),
        ),
        (None, _) => (Outcome::Unknown, unknown_why("cluster_id")),
        (Some(of_set), Err(e)) => (
            Outcome::Unknown,
            format!("the set is of etcd cluster {of_set}; this node's etcd: {e}"),
        ),
    };
    push("etcd cluster", outcome, detail);
}

/// Whether the restore may go on: no check refused.
pub fn refused(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.outcome == Outcome::Refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Certificates, Encryption};

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn manifest(release: Option<&str>) -> Manifest {
        let mut m = crate::manifest::tests::sample();
        m.created = at("2026-06-01T12:00:00Z");
        m.id = crate::manifest::make_set_id(m.created, &m.origin);
        m.cluster = Some(ClusterFacts {
            release: release.map(str::to_string),
            cluster_id: Some("00000000000000aa".into()),
            encryption: Some(Encryption::off()),
            certificates: Some(Certificates {
                count: 4,
                first_issued: at("2026-01-01T00:00:00Z"),
                not_before: at("2026-01-01T00:00:00Z"),
                not_after: at("2029-01-01T00:00:00Z"),
            }),
            ..ClusterFacts::default()
        });
        m
    }

    fn node(release: &str) -> Node {
        Node {
            name: "master-0".into(),
            release: Ok(release.into()),
            cluster_id: Ok("00000000000000aa".into()),
            etcd_free: Ok(100 << 30),
            restore_script: Ok(()),
        }
    }

    fn outcome(checks: &[Check], name: &str) -> Outcome {
        checks.iter().find(|c| c.name == name).unwrap().outcome
    }

    fn run(m: &Manifest, node: &Node, allow: bool) -> Vec<Check> {
        let set = Set {
            manifest: m,
            sound: Ok(()),
            signed: Some(false),
            signature: None,
            on: None,
            staged: false,
        };
        checks(&set, node, at("2026-06-02T00:00:00Z"), allow)
    }

    #[test]
    fn the_same_release_passes_another_is_refused_unless_allowed() {
        let m = manifest(Some("4.18.7"));
        let same = run(&m, &node("4.18.7"), false);
        assert!(same.iter().all(|c| c.outcome == Outcome::Ok), "{same:#?}");
        assert!(!refused(&same));
        let other = run(&m, &node("4.18.9"), false);
        assert_eq!(outcome(&other, "release"), Outcome::Refused);
        let detail = &other.iter().find(|c| c.name == "release").unwrap().detail;
        assert!(
            detail.contains("4.18.7") && detail.contains("4.18.9"),
            "{detail}"
        );
        assert!(refused(&other));
        let allowed = run(&m, &node("4.18.9"), true);
        assert_eq!(outcome(&allowed, "release"), Outcome::Allowed);
        assert!(!refused(&allowed));
    }

    #[test]
    fn what_is_not_known_is_unknown_never_a_pass_or_a_refusal() {
        let mut old = manifest(None);
        old.cluster = None;
        let mut here = node("4.18.7");
        here.release = Err("no rendered MachineConfig".into());
        here.etcd_free = Err("cannot statvfs".into());
        here.cluster_id = Err("no WAL".into());
        let checks = run(&old, &here, false);
        for name in [
            "release",
            "first 24 hours",
            "certificates",
            "encryption",
            "etcd cluster",
            "space",
        ] {
            assert_eq!(outcome(&checks, name), Outcome::Unknown, "{name}");
        }
        assert!(!refused(&checks));
        let release = checks.iter().find(|c| c.name == "release").unwrap();
        assert!(
            release.detail.contains("before etcd-backup recorded"),
            "{release:?}"
        );
    }

    #[test]
    fn the_space_check_counts_what_the_plan_writes() {
        let m = manifest(Some("4.18.7"));
        let snapshot = m.files.iter().find(|f| f.is_snapshot()).unwrap().size;
        let restore = space_needed(snapshot);
        let set = m.total_size();
        // (free, already staged, on a target) → outcome
        let cases = [
            (restore + set, false, false, Outcome::Ok),
            (restore + set - 1, false, false, Outcome::Refused),
            (restore, true, false, Outcome::Ok),
            (restore - 1, true, false, Outcome::Refused),
            (restore + 2 * set, false, true, Outcome::Ok),
            (restore + 2 * set - 1, false, true, Outcome::Refused),
            (restore + set, true, true, Outcome::Ok),
        ];
        for (free, staged, on, expected) in cases {
            let mut n = node("4.18.7");
            n.etcd_free = Ok(free);
            let set = Set {
                manifest: &m,
                sound: Ok(()),
                signed: None,
                signature: None,
                on: on.then_some("dir:/mnt/nfs"),
                staged,
            };
            let checks = checks(&set, &n, at("2026-06-02T00:00:00Z"), false);
            assert_eq!(
                outcome(&checks, "space"),
                expected,
                "{free} {staged} {on}: {checks:#?}"
            );
        }
    }

    #[test]
    fn refusals_and_warnings_by_table() {
        // (change, check, outcome)
        type Change = fn(&mut Manifest, &mut Node);
        let cases: [(Change, &str, Outcome); 7] = [
            (
                |m, _| m.created = at("2026-01-01T20:00:00Z"),
                "first 24 hours",
                Outcome::Warning,
            ),
            (
                |m, _| {
                    m.cluster
                        .as_mut()
                        .unwrap()
                        .certificates
                        .as_mut()
                        .unwrap()
                        .not_after = at("2026-06-01T23:00:00Z")
                },
                "certificates",
                Outcome::Refused,
            ),
            (|_, n| n.etcd_free = Ok(1 << 20), "space", Outcome::Refused),
            (
                |_, n| n.restore_script = Err("no /usr/local/bin/cluster-restore.sh".into()),
                "cluster-restore.sh",
                Outcome::Refused,
            ),
            (|m, _| m.dirty = true, "clean", Outcome::Warning),
            (
                |_, n| n.cluster_id = Ok("00000000000000bb".into()),
                "etcd cluster",
                Outcome::Ok,
            ),
            (
                |m, _| {
                    m.cluster.as_mut().unwrap().encryption = Some(Encryption {
                        provider: "aescbc".into(),
                        resources: vec!["secrets".into()],
                    })
                },
                "encryption",
                Outcome::Ok,
            ),
        ];
        for (change, name, expected) in cases {
            let mut m = manifest(Some("4.18.7"));
            let mut n = node("4.18.7");
            change(&mut m, &mut n);
            let checks = run(&m, &n, false);
            assert_eq!(outcome(&checks, name), expected, "{name}: {checks:#?}");
            assert_eq!(refused(&checks), expected == Outcome::Refused, "{name}");
        }
        let set = Set {
            manifest: &manifest(None),
            sound: Err("bad sha256".into()),
            signed: Some(false),
            signature: Some("unsigned".into()),
            on: None,
            staged: false,
        };
        let checks = checks(&set, &node("4.18.7"), at("2026-06-02T00:00:00Z"), false);
        assert_eq!(outcome(&checks, "set"), Outcome::Refused);
        assert_eq!(outcome(&checks, "signature"), Outcome::Refused);
    }
}
