//! Where sets live in a bucket, and the pure decisions over a listing: `<prefix>/sets/<set-id>/`
//! holds the set's files under their own names and `manifest.json`, uploaded last. A key that
//! is not exactly of that shape is unknown and never touched.

use crate::config::Carried;
use crate::manifest::{FileEntry, Manifest, SIGNATURE_NAME, parse_backup_name, parse_set_id};
use crate::s3::Object;
use crate::seal::record::{AGE_SUFFIX, SEAL_NAME, Seal};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::time::Duration;

pub const MANIFEST: &str = "manifest.json";
/// A sealed copy's record and its signature.
pub use crate::seal::record::SEAL_SIGNATURE_NAME as SEAL_SIGNATURE;
/// S3's most parts per upload.
pub const MAX_PARTS: u64 = 10_000;

/// `<prefix>/sets/` (or `sets/` without a prefix).
pub fn sets_prefix(prefix: &str) -> String {
    if prefix.is_empty() {
        "sets/".to_string()
    } else {
        format!("{prefix}/sets/")
    }
}

pub fn key(prefix: &str, set_id: &str, name: &str) -> String {
    format!("{}{set_id}/{name}", sets_prefix(prefix))
}

/// The objects of one set directory, by file name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteSet {
    pub objects: BTreeMap<String, Object>,
}

impl RemoteSet {
    pub fn has_manifest(&self) -> bool {
        self.objects.contains_key(MANIFEST)
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub sets: BTreeMap<String, RemoteSet>,
    /// Keys under the sets prefix of no recognised shape.
    pub unknown: Vec<String>,
}

/// Groups the objects under `sets_prefix(prefix)` by set.
pub fn group(prefix: &str, objects: &[Object]) -> Listing {
    let base = sets_prefix(prefix);
    let mut listing = Listing::default();
    for object in objects {
        let recognised = object
            .key
            .strip_prefix(&base)
            .and_then(|rest| rest.split_once('/'))
            .filter(|(id, name)| parse_set_id(id).is_some() && is_set_object(name));
        match recognised {
            Some((id, name)) => {
                listing
                    .sets
                    .entry(id.to_string())
                    .or_default()
                    .objects
                    .insert(name.to_string(), object.clone());
            }
            None => listing.unknown.push(object.key.clone()),
        }
    }
    listing
}

/// A name a set directory of ours holds: the manifest and its signature, a sealed copy's
/// record and its signature, the backup files in the clear or sealed.
fn is_set_object(name: &str) -> bool {
    [MANIFEST, SIGNATURE_NAME, SEAL_NAME, SEAL_SIGNATURE].contains(&name)
        || parse_backup_name(name.strip_suffix(AGE_SUFFIX).unwrap_or(name)).is_some()
}

/// The objects a copy of `manifest` holds for the files this target carries: the files
/// themselves, or in a sealed copy their age files as its record describes them (size and
/// SHA-256 of the sealed bytes). An error when the record lacks one.
pub fn carried_objects(
    manifest: &Manifest,
    carried: Carried,
    seal: Option<&Seal>,
) -> Result<Vec<FileEntry>, String> {
    crate::seal::record::objects(manifest.files.iter().filter(|f| carried.carries(f)), seal)
}

/// The `objects` missing from `set` or of another size.
pub fn lacking(set: &RemoteSet, objects: &[FileEntry]) -> Vec<String> {
    objects
        .iter()
        .filter(|f| set.objects.get(&f.name).is_none_or(|o| o.size != f.size))
        .map(|f| f.name.clone())
        .collect()
}

/// One part of a multipart upload: its number (from 1), offset and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartRange {
    pub number: u16,
    pub offset: u64,
    pub len: u64,
}

/// The part size actually used for a file of `size`: `part_size`, or more (whole MiB) when the
/// file would need more than S3's 10,000 parts.
pub fn effective_part_size(size: u64, part_size: u64) -> u64 {
    let needed = size.div_ceil(MAX_PARTS);
    if needed <= part_size {
        part_size
    } else {
        needed.div_ceil(1 << 20) << 20
    }
}

/// How many parts of `part_size` are uploaded side by side, each on a connection of its own:
/// as many as fit in 32 MiB, at least one, at most four. One more part is being read and
/// hashed meanwhile, so a file upload holds at most `(n + 1) × part_size` in memory.
pub fn parallel_parts(part_size: u64) -> usize {
    ((32 << 20) / part_size.max(1)).clamp(1, 4) as usize
}

/// The parts of a file of `size` (at least one).
pub fn parts(size: u64, part_size: u64) -> Vec<PartRange> {
    let part_size = effective_part_size(size, part_size);
    let count = size.div_ceil(part_size).max(1);
    (0..count)
        .map(|i| PartRange {
            number: u16::try_from(i + 1).expect("at most 10,000 parts"),
            offset: i * part_size,
            len: part_size.min(size - i * part_size),
        })
        .collect()
}

/// The checksum S3 reports for a multipart object: the SHA-256 of the parts' SHA-256s,
/// base64, then `-` and the number of parts.
pub fn composite_checksum(part_digests: &[[u8; 32]]) -> String {
    let mut hasher = crate::hash::Sha256::new();
    for digest in part_digests {
        hasher.update(digest);
    }
    format!(
        "{}-{}",
        crate::hash::base64(&hasher.finalize()),
        part_digests.len()
    )
}

/// Whether `reported` (an `x-amz-checksum-sha256` answer) agrees with what was sent: the whole
/// object's digest or the composite of its parts; a server that reports none is judged by
/// size alone.
pub fn checksum_agrees(reported: Option<&str>, whole_b64: &str, composite: Option<&str>) -> bool {
    match reported {
        None => true,
        Some(r) => r == whole_b64 || Some(r) == composite,
    }
}

/// S3 timestamps (`2026-12-02T18:00:00.000Z`).
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| {
            // HTTP dates (`Last-Modified`, some servers' lock dates).
            DateTime::parse_from_rfc2822(text)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        })
}

/// Uploads started before `now - grace` on keys this run does not continue: to abort. Only
/// keys of a set's shape under the prefix are touched.
pub fn stale_uploads<'a>(
    prefix: &str,
    uploads: &'a [crate::s3::xml::Upload],
    continued: &[String],
    now: DateTime<Utc>,
    grace: Duration,
) -> Vec<&'a crate::s3::xml::Upload> {
    let cutoff = now - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    uploads
        .iter()
        .filter(|u| {
            let object = Object {
                key: u.key.clone(),
                size: 0,
                last_modified: None,
            };
            group(prefix, std::slice::from_ref(&object))
                .unknown
                .is_empty()
        })
        .filter(|u| !continued.contains(&u.key))
        .filter(|u| {
            u.initiated
                .as_deref()
                .and_then(parse_time)
                .is_some_and(|t| t < cutoff)
        })
        .collect()
}

/// Set directories without a manifest, whose newest object is older than `now - grace`, that
/// this run does not upload: leftovers of a cut upload or a cut deletion, to delete.
pub fn orphans<'a>(
    listing: &'a Listing,
    uploading: &[String],
    now: DateTime<Utc>,
    grace: Duration,
) -> Vec<(&'a str, Vec<&'a str>)> {
    let cutoff = now - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    listing
        .sets
        .iter()
        .filter(|(id, set)| !set.has_manifest() && !uploading.contains(id))
        .filter(|(_, set)| {
            set.objects.values().all(|o| {
                o.last_modified
                    .as_deref()
                    .and_then(parse_time)
                    .is_some_and(|t| t < cutoff)
            })
        })
        .map(|(id, set)| {
            (
                id.as_str(),
                set.objects.keys().map(String::as_str).collect(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parts_in_flight_fit_the_memory_bound() {
        const MIB: u64 = 1 << 20;
        for (part_size, senders) in [
            (5 * MIB, 4),
            (8 * MIB, 4),
            (10 * MIB, 3),
            (16 * MIB, 2),
            (32 * MIB, 1),
            (5 << 30, 1),
        ] {
            assert_eq!(parallel_parts(part_size), senders, "{part_size}");
            let held = (senders as u64 + 1) * part_size;
            assert!(held <= 48 * MIB || senders == 1, "{part_size}: {held}");
        }
    }

    const ID: &str = "20261202T180000.000Z-master-0";

    fn obj(key: &str, size: u64, modified: &str) -> Object {
        Object {
            key: key.into(),
            size,
            last_modified: Some(modified.into()),
        }
    }

    #[test]
    fn listings_group_by_set_and_keep_unknown_keys_apart() {
        let t = "2026-12-02T18:00:00.000Z";
        let objects = [
            obj(&format!("c/sets/{ID}/manifest.json"), 900, t),
            obj(
                &format!("c/sets/{ID}/snapshot_2026-12-02_180000.db"),
                1 << 20,
                t,
            ),
            obj(&format!("c/sets/{ID}/notes.txt"), 1, t),
            obj("c/sets/not-a-set/manifest.json", 1, t),
            obj(&format!("c/sets/{ID}/sub/manifest.json"), 1, t),
            obj("c/sets/README", 1, t),
        ];
        let listing = group("c", &objects);
        assert_eq!(listing.sets.len(), 1);
        let set = &listing.sets[ID];
        assert!(set.has_manifest());
        assert_eq!(set.objects.len(), 2);
        assert_eq!(
            listing.unknown,
            [
                format!("c/sets/{ID}/notes.txt"),
                "c/sets/not-a-set/manifest.json".to_string(),
                format!("c/sets/{ID}/sub/manifest.json"),
                "c/sets/README".to_string(),
            ]
        );
        assert_eq!(sets_prefix(""), "sets/");
        assert_eq!(key("", ID, MANIFEST), format!("sets/{ID}/manifest.json"));
    }

    #[test]
    fn lacking_files_follow_what_the_target_carries() {
        let manifest = crate::manifest::tests::sample();
        let snapshot = manifest.files.iter().find(|f| f.is_snapshot()).unwrap();
        let resources = manifest.files.iter().find(|f| !f.is_snapshot()).unwrap();
        let mut set = RemoteSet::default();
        let put = |set: &mut RemoteSet, name: &str, size| {
            set.objects
                .insert(name.to_string(), obj(name, size, "2026-12-02T18:00:00Z"));
        };
        let lacking_of = |set: &RemoteSet, carried| {
            lacking(set, &carried_objects(&manifest, carried, None).unwrap())
        };
        assert_eq!(lacking_of(&set, Carried::All).len(), 2);
        put(&mut set, &snapshot.name, snapshot.size);
        assert_eq!(
            lacking_of(&set, Carried::All),
            std::slice::from_ref(&resources.name)
        );
        assert!(lacking_of(&set, Carried::Snapshot).is_empty());
        assert_eq!(
            lacking_of(&set, Carried::Resources),
            std::slice::from_ref(&resources.name)
        );
        put(&mut set, &resources.name, resources.size + 1);
        assert_eq!(
            lacking_of(&set, Carried::Resources),
            std::slice::from_ref(&resources.name)
        );
    }

    #[test]
    fn a_sealed_copy_is_judged_by_its_record() {
        let manifest = crate::manifest::tests::sample();
        let snapshot = manifest.files.iter().find(|f| f.is_snapshot()).unwrap();
        let sealed = |f: &FileEntry| crate::seal::record::SealedFile {
            name: f.name.clone(),
            size: f.size + 300,
            sha256: "ab".repeat(32),
            recipients: vec!["age1x".into()],
        };
        let mut seal = Seal {
            format: 1,
            id: manifest.id.clone(),
            manifest_sha256: "00".repeat(32),
            sealed: chrono::Utc::now(),
            sealed_by: "master-0".into(),
            files: vec![sealed(snapshot)],
        };
        // The record must name every carried file.
        assert!(carried_objects(&manifest, Carried::All, Some(&seal)).is_err());
        let only = carried_objects(&manifest, Carried::Snapshot, Some(&seal)).unwrap();
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].name, format!("{}.age", snapshot.name));
        assert_eq!(only[0].size, snapshot.size + 300);
        seal.files = manifest.files.iter().map(sealed).collect();
        let all = carried_objects(&manifest, Carried::All, Some(&seal)).unwrap();
        let mut set = RemoteSet::default();
        // The files in the clear do not stand for their sealed objects.
        for f in &manifest.files {
            set.objects
                .insert(f.name.clone(), obj(&f.name, f.size, "2026-12-02T18:00:00Z"));
        }
        assert_eq!(lacking(&set, &all).len(), 2);
        for f in &all {
            set.objects
                .insert(f.name.clone(), obj(&f.name, f.size, "2026-12-02T18:00:00Z"));
        }
        assert!(lacking(&set, &all).is_empty());
        assert!(is_set_object("seal.json") && is_set_object("seal.json.sig"));
        assert!(is_set_object("manifest.json.sig"));
        assert!(is_set_object(&format!("{}.age", snapshot.name)));
        assert!(!is_set_object("notes.txt.age") && !is_set_object("x.sig"));
    }

    #[test]
    fn parts_table() {
        let mib = 1u64 << 20;
        type Case<'a> = (u64, u64, &'a [(u16, u64, u64)]);
        let cases: &[Case] = &[
            (0, 5 * mib, &[(1, 0, 0)]),
            (1, 5 * mib, &[(1, 0, 1)]),
            (5 * mib, 5 * mib, &[(1, 0, 5 * mib)]),
            (5 * mib + 1, 5 * mib, &[(1, 0, 5 * mib), (2, 5 * mib, 1)]),
        ];
        for (size, part, want) in cases {
            let got: Vec<(u16, u64, u64)> = parts(*size, *part)
                .iter()
                .map(|p| (p.number, p.offset, p.len))
                .collect();
            assert_eq!(got, *want, "size {size} part {part}");
        }
        // 100 GiB at 5 MiB would be 20,480 parts: the size grows to whole MiB.
        let big = 100 << 30;
        assert_eq!(effective_part_size(big, 5 * mib), 11 * mib);
        assert!(parts(big, 5 * mib).len() as u64 <= MAX_PARTS);
    }

    proptest! {
        #[test]
        fn parts_cover_the_file_exactly(size in 0u64..(1 << 40), part in (5u64 << 20)..(64 << 20)) {
            let parts = parts(size, part);
            prop_assert!(parts.len() as u64 <= MAX_PARTS);
            let mut next = 0;
            for (i, p) in parts.iter().enumerate() {
                prop_assert_eq!(p.number as usize, i + 1);
                prop_assert_eq!(p.offset, next);
                // Every part but the last is at least S3's minimum.
                if i + 1 < parts.len() {
                    prop_assert!(p.len >= 5 << 20);
                }
                next += p.len;
            }
            prop_assert_eq!(next, size);
        }
    }

    #[test]
    fn composite_checksums_are_s3s() {
        // sha256(sha256("a") || sha256("b")), as S3 reports a two-part object.
        let a = crate::hash::Sha256::digest(b"a");
        let b = crate::hash::Sha256::digest(b"b");
        let mut both = a.to_vec();
        both.extend_from_slice(&b);
        let want = format!(
            "{}-2",
            crate::hash::base64(&crate::hash::Sha256::digest(&both))
        );
        assert_eq!(composite_checksum(&[a, b]), want);
        assert!(checksum_agrees(Some(&want), "x", Some(&want)));
        assert!(checksum_agrees(Some("x"), "x", None));
        assert!(checksum_agrees(None, "x", None));
        assert!(!checksum_agrees(Some("y"), "x", Some(&want)));
    }

    #[test]
    fn stale_uploads_and_orphans_wait_for_their_grace() {
        use crate::s3::xml::Upload;
        let now = parse_time("2026-12-02T18:00:00Z").unwrap();
        let day = Duration::from_secs(86_400);
        let k = |name: &str| key("p", ID, name);
        let up = |key: String, at: &str| Upload {
            key,
            upload_id: "u".into(),
            initiated: Some(at.into()),
        };
        let uploads = [
            up(
                k("snapshot_2026-12-02_180000.db"),
                "2026-11-30T00:00:00.000Z",
            ),
            up(
                k("static_kuberesources_2026-12-02_180000.tar.gz"),
                "2026-12-02T17:00:00.000Z",
            ),
            up("p/other/thing".into(), "2026-01-01T00:00:00.000Z"),
            up(
                k("snapshot_2026-12-01_180000.db"),
                "2026-11-01T00:00:00.000Z",
            ),
        ];
        let continued = [k("snapshot_2026-12-01_180000.db")];
        let stale = stale_uploads("p", &uploads, &continued, now, day);
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].key, k("snapshot_2026-12-02_180000.db"));

        let old = "2026-11-30T00:00:00.000Z";
        let objects = [
            obj(&k("snapshot_2026-12-02_180000.db"), 1, old),
            obj(
                &key(
                    "p",
                    "20261201T000000.000Z-master-0",
                    "snapshot_2026-12-01_000000.db",
                ),
                1,
                "2026-12-02T17:59:00.000Z",
            ),
            obj(
                &key(
                    "p",
                    "20261130T000000.000Z-master-0",
                    "snapshot_2026-11-30_000000.db",
                ),
                1,
                old,
            ),
            obj(&key("p", "20261130T000000.000Z-master-0", MANIFEST), 1, old),
        ];
        let listing = group("p", &objects);
        assert_eq!(
            orphans(&listing, &[], now, day),
            [(ID, vec!["snapshot_2026-12-02_180000.db"])]
        );
        assert!(orphans(&listing, &[ID.to_string()], now, day).is_empty());
    }
}
