//! The manifest of a backup set (`manifest.json`, written last), set ids and backup file names.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

pub const MANIFEST_NAME: &str = "manifest.json";
/// The SSH signature of `manifest.json` beside it (`ssh-keygen -Y verify -n etcd-backup`).
pub const SIGNATURE_NAME: &str = "manifest.json.sig";
/// A manifest is small (two files); anything larger is not one of ours.
pub const MANIFEST_MAX_BYTES: u64 = 1 << 20;

/// What a manifest is known by: the SHA-256 (hex) of its bytes as stored and sent. Offers, held
/// sets, verification records and a bucket's copies all compare this.
pub fn digest(manifest_json: &[u8]) -> String {
    crate::hash::hex(&crate::hash::Sha256::digest(manifest_json))
}
pub const FORMAT_VERSION: u32 = 1;
/// The suffix `cluster-backup.sh --force` appends to both file names.
pub const DIRTY_SUFFIX: &str = "__POSSIBLY_DIRTY__";
const SET_ID_TIME_FORMAT: &str = "%Y%m%dT%H%M%S%.3fZ";
const SET_ID_TIME_LEN: usize = "20260101T000000.000Z".len();

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub origin: String,
    pub created: DateTime<Utc>,
    pub tool_version: String,
    /// Taken with `--force`: the "no operator progressing" check was skipped.
    pub dirty: bool,
    pub files: Vec<FileEntry>,
    pub checks: Checks,
    /// What the set knows of the cluster it was taken from. Absent in sets taken before it
    /// was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::ClusterFacts>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

impl FileEntry {
    /// The etcd snapshot (`snapshot_<stamp>.db`), as opposed to the resources archive.
    pub fn is_snapshot(&self) -> bool {
        parse_backup_name(&self.name).is_some_and(|n| n.kind == FileKind::Snapshot)
    }
}

/// What was checked before the set was committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checks {
    /// bbolt page size read from the snapshot's first meta page (magic, version, checksum valid).
    pub snapshot_page_size: u32,
    /// The snapshot's 32-byte trailer equals the sha256 of everything before it.
    pub snapshot_sha256_trailer: bool,
    /// The static-pod-resources directories listed in the tar.gz.
    pub static_pod_dirs: Vec<String>,
    /// The bbolt structural check was clean; etcd's figures from it (what `etcdutl snapshot
    /// status` prints). Absent in sets committed before the check existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<crate::bbolt::Figures>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Snapshot,
    Resources,
}

/// A file name as `cluster-backup.sh` writes it, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupName<'a> {
    pub kind: FileKind,
    pub stamp: &'a str,
    pub dirty: bool,
}

/// `snapshot_<stamp>[__POSSIBLY_DIRTY__].db` or
/// `static_kuberesources_<stamp>[__POSSIBLY_DIRTY__].tar.gz`, stamp `date +%F_%H%M%S`-like.
pub fn parse_backup_name(name: &str) -> Option<BackupName<'_>> {
    let (kind, body) = if let Some(rest) = name.strip_prefix("snapshot_") {
        (FileKind::Snapshot, rest.strip_suffix(".db")?)
    } else if let Some(rest) = name.strip_prefix("static_kuberesources_") {
        (FileKind::Resources, rest.strip_suffix(".tar.gz")?)
    } else {
        return None;
    };
    let (stamp, dirty) = match body.strip_suffix(DIRTY_SUFFIX) {
        Some(stamp) => (stamp, true),
        None => (body, false),
    };
    let valid = !stamp.is_empty()
        && stamp.len() <= 64
        && stamp
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'-' || b == b'_')
        && stamp.as_bytes()[0].is_ascii_digit();
    valid.then_some(BackupName { kind, stamp, dirty })
}

/// A Kubernetes node name: a DNS subdomain (RFC 1123), case-insensitive here.
pub fn is_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.'])
        && !name.contains("..")
}

/// `<UTC time with milliseconds>-<origin>`: sorts by creation time, unique across origins.
pub fn make_set_id(created: DateTime<Utc>, origin: &str) -> String {
    format!("{}-{origin}", created.format(SET_ID_TIME_FORMAT))
}

/// The creation time and origin inside a set id, or `None` if it is not one.
pub fn parse_set_id(id: &str) -> Option<(DateTime<Utc>, &str)> {
    if !id.is_char_boundary(SET_ID_TIME_LEN) || id.len() <= SET_ID_TIME_LEN + 1 {
        return None;
    }
    let (time, rest) = id.split_at(SET_ID_TIME_LEN);
    let origin = rest.strip_prefix('-')?;
    let time = NaiveDateTime::parse_from_str(time, SET_ID_TIME_FORMAT).ok()?;
    is_node_name(origin).then(|| (time.and_utc(), origin))
}

impl Manifest {
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        out.push(b'\n');
        out
    }

    /// Parses and checks a manifest: every name it holds is safe to join to a set directory.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid manifest JSON: {e}"))?;
        manifest.check()?;
        Ok(manifest)
    }

    fn check(&self) -> Result<(), String> {
        if self.format != FORMAT_VERSION {
            return Err(format!(
                "manifest format {} is not supported (this tool reads format {FORMAT_VERSION})",
                self.format
            ));
        }
        let (created, origin) =
            parse_set_id(&self.id).ok_or_else(|| format!("invalid set id '{}'", self.id))?;
        if origin != self.origin {
            return Err(format!(
                "set id '{}' does not match origin '{}'",
                self.id, self.origin
            ));
        }
        if created != self.created.with_nanosecond_millis() {
            return Err(format!(
                "set id '{}' does not match created time {}",
                self.id, self.created
            ));
        }
        let names: Vec<BackupName> = self
            .files
            .iter()
            .map(|f| {
                parse_backup_name(&f.name)
                    .ok_or_else(|| format!("unexpected file name '{}'", f.name))
            })
            .collect::<Result<_, _>>()?;
        match names.as_slice() {
            [a, b]
                if a.kind != b.kind
                    && a.stamp == b.stamp
                    && a.dirty == b.dirty
                    && a.dirty == self.dirty => {}
            _ => {
                return Err(
                    "a set holds exactly one snapshot_<stamp>.db and one static_kuberesources_<stamp>.tar.gz \
                     with the same stamp and dirty flag"
                        .to_string(),
                );
            }
        }
        if self
            .files
            .iter()
            .try_fold(0u64, |total, f| total.checked_add(f.size))
            .is_none()
        {
            return Err("the files' sizes add up past 2^64 bytes".to_string());
        }
        if let Some(cluster) = &self.cluster {
            cluster.check()?;
        }
        for file in &self.files {
            if file.sha256.len() != 64
                || !file
                    .sha256
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            {
                return Err(format!("invalid sha256 for '{}'", file.name));
            }
        }
        Ok(())
    }

    /// What the retention planner knows of this set.
    pub fn info(&self) -> crate::retention::SetInfo {
        crate::retention::SetInfo {
            id: self.id.clone(),
            origin: self.origin.clone(),
            created: self.created,
            size: self.total_size(),
            dirty: self.dirty,
            cluster: self.cluster.as_ref().and_then(|c| c.cluster_id.clone()),
        }
    }

    /// The bytes of the set's files; `u64::MAX` when they add up past it (a manifest that
    /// [`Manifest::parse`] refuses; never "fits" anywhere).
    pub fn total_size(&self) -> u64 {
        self.files
            .iter()
            .try_fold(0u64, |total, f| total.checked_add(f.size))
            .unwrap_or(u64::MAX)
    }

    pub fn file(&self, kind: FileKind) -> &FileEntry {
        self.files
            .iter()
            .find(|f| parse_backup_name(&f.name).is_some_and(|n| n.kind == kind))
            .expect("a checked manifest has one file of each kind")
    }
}

trait MillisOnly {
    fn with_nanosecond_millis(self) -> Self;
}

impl MillisOnly for DateTime<Utc> {
    /// Set ids carry milliseconds: compare created times at that precision.
    fn with_nanosecond_millis(self) -> Self {
        use chrono::Timelike;
        let millis = self.nanosecond() / 1_000_000 * 1_000_000;
        self.with_nanosecond(millis).unwrap_or(self)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample() -> Manifest {
        let created = DateTime::parse_from_rfc3339("2026-11-24T14:43:50.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        Manifest {
            format: FORMAT_VERSION,
            id: make_set_id(created, "master-0"),
            origin: "master-0".into(),
            created,
            tool_version: "0.1.0".into(),
            dirty: false,
            files: vec![
                FileEntry {
                    name: "snapshot_2026-11-24_144350.db".into(),
                    size: 8224,
                    sha256: "a".repeat(64),
                },
                FileEntry {
                    name: "static_kuberesources_2026-11-24_144350.tar.gz".into(),
                    size: 100,
                    sha256: "b".repeat(64),
                },
            ],
            checks: Checks {
                etcd: None,
                snapshot_page_size: 4096,
                snapshot_sha256_trailer: true,
                static_pod_dirs: vec!["static-pod-resources/kube-apiserver-pod-3".into()],
            },
            cluster: None,
        }
    }

    #[test]
    fn set_ids_round_trip_and_sort_by_time() {
        let m = sample();
        assert_eq!(m.id, "20261124T144350.123Z-master-0");
        let (time, origin) = parse_set_id(&m.id).unwrap();
        assert_eq!(origin, "master-0");
        assert_eq!(time, m.created.with_nanosecond_millis());
        let later = make_set_id(m.created + chrono::TimeDelta::milliseconds(1), "a");
        assert!(later > m.id);
        for bad in [
            "",
            "x",
            "20261124T144350.123Z-",
            "20261124T144350.123Z-../x",
            "20261124T144350Z-m0",
            "20261124T144350.123Z-a/b",
            "20261324T144350.123Z-m0",
        ] {
            assert!(parse_set_id(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn backup_names_are_parsed_strictly() {
        assert_eq!(
            parse_backup_name("snapshot_2026-11-24_144350__POSSIBLY_DIRTY__.db"),
            Some(BackupName {
                kind: FileKind::Snapshot,
                stamp: "2026-11-24_144350",
                dirty: true
            })
        );
        assert_eq!(
            parse_backup_name("static_kuberesources_2026-11-24_144350.tar.gz").map(|n| n.kind),
            Some(FileKind::Resources)
        );
        for bad in [
            "snapshot_.db",
            "snapshot_x.db",
            "snapshot_2026/../x.db",
            "snapshot_2026.db.part",
            "manifest.json",
            "snapshot_2026.tar.gz",
        ] {
            assert!(parse_backup_name(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn manifest_round_trips_and_rejects_bad_content() {
        let m = sample();
        assert_eq!(Manifest::parse(&m.to_json()), Ok(m.clone()));

        let mut cases: Vec<(Manifest, &str)> = Vec::new();
        let mut bad = m.clone();
        bad.format = 2;
        cases.push((bad, "format 2"));
        let mut bad = m.clone();
        bad.files[0].name = "../snapshot_2026-11-24_144350.db".into();
        cases.push((bad, "unexpected file name"));
        let mut bad = m.clone();
        bad.files.pop();
        cases.push((bad, "exactly one"));
        let mut bad = m.clone();
        bad.files[1].name = "static_kuberesources_2026-11-24_144351.tar.gz".into();
        cases.push((bad, "same stamp"));
        let mut bad = m.clone();
        bad.dirty = true;
        cases.push((bad, "dirty flag"));
        let mut bad = m.clone();
        bad.files[0].sha256 = "A".repeat(64);
        cases.push((bad, "invalid sha256"));
        let mut bad = m.clone();
        bad.origin = "master-1".into();
        cases.push((bad, "does not match origin"));
        // Two files of 2^63 bytes: their sum would wrap to 0 and pass any space check.
        let mut bad = m.clone();
        bad.files[0].size = 1 << 63;
        bad.files[1].size = 1 << 63;
        assert_eq!(bad.total_size(), u64::MAX, "saturates, never wraps");
        cases.push((bad, "add up past 2^64"));
        for (manifest, expected) in cases {
            let err = Manifest::parse(&manifest.to_json()).unwrap_err();
            assert!(err.contains(expected), "{err} / {expected}");
        }
        let err = Manifest::parse(br#"{"format":1,"extra":true}"#).unwrap_err();
        assert!(err.contains("invalid manifest JSON"), "{err}");
    }
}
