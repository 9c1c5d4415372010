//! A bucket's copies checked against their manifests (`verify --target`): what the listing
//! already shows first (an object missing, or of another size: named with its key, before any
//! download), then each object's content: by the SHA-256 checksum the server stored with it —
//! the manifest's for a whole object, or for a multipart one the very checksum it stored when
//! this node put the object or last downloaded and checked it — otherwise (and always with
//! `--deep`) by a streamed download hashed as it arrives, in bounded memory, the snapshot's
//! trailer checked on the way.
//! `--deep` also walks the snapshot's bbolt structure, which needs the whole file: it is
//! downloaded into this node's store's staging (room checked first, above the free-space
//! floor) and removed after the walk.

use super::Remote;
use super::layout::{self, RemoteSet};
use crate::config::S3Target;
use crate::hash::{Sha256, base64, hex};
use crate::manifest::{FileEntry, Manifest};
use crate::s3::Client;
use crate::verify::{Checked, Scratch, SnapshotHasher};
use anyhow::{Result, bail};

/// What this node knows that a copy must agree with: the checksums the bucket is known to have
/// stored (for objects this node put or verified), by key; the manifests of the sets it holds
/// sound, by set id; and the checksums learned in this verification.
pub struct Known<'a> {
    pub stored: &'a std::collections::BTreeMap<String, String>,
    pub held_here: &'a std::collections::BTreeMap<String, String>,
    pub learned: Vec<(String, String)>,
    /// The trusted signers, and whether a copy must be signed by one of them.
    pub signers: &'a [ssh_key::PublicKey],
    pub require_signature: bool,
}

/// Checks the copies of the sets named by `ids` (every set with a manifest when empty).
pub fn verify_copies(
    client: &mut Client,
    t: &S3Target,
    remote: &Remote,
    ids: &[String],
    deep: Option<&Scratch>,
    known: &mut Known,
    checked: &mut dyn FnMut(&Checked),
) -> Vec<Checked> {
    let with_manifest: Vec<&String> = remote
        .listing
        .sets
        .iter()
        .filter(|(_, set)| set.has_manifest())
        .map(|(id, _)| id)
        .collect();
    let ids: Vec<&String> = if ids.is_empty() {
        with_manifest
    } else {
        ids.iter().collect()
    };
    let mut outcomes = Vec::new();
    for id in ids {
        // A reference of its own: `known` is lent to the check below.
        let held_here = known.held_here;
        let here = held_here.get(id.as_str());
        let outcome = match (remote.manifests.get(id), remote.listing.sets.get(id)) {
            // This node holds the set, verified: a manifest there that is not its manifest is
            // damaged (a set id is one origin's at one instant: it has one manifest). Recorded
            // under the manifest here, which the next spray puts again with every object.
            (Some((_, digest)), Some(_)) if here.is_some_and(|h| h != digest) => Checked {
                id: id.clone(),
                manifest_sha256: here.cloned(),
                problem: Some(format!(
                    "the manifest '{}' is not the one of set '{id}' held here (sha256 {digest}, here {})",
                    layout::key(&t.prefix, id, layout::MANIFEST),
                    here.map_or("", |h| h.as_str())
                )),
            },
            (Some((manifest, digest)), Some(set)) => Checked {
                id: id.clone(),
                manifest_sha256: Some(digest.clone()),
                problem: check_copy(client, t, (id, manifest, set), remote, deep, known)
                    .err()
                    .map(|e| format!("{e:#}")),
            },
            (None, Some(set)) if set.has_manifest() => Checked {
                id: id.clone(),
                manifest_sha256: here.cloned(),
                problem: Some(format!(
                    "the manifest '{}' is unreadable or of another set",
                    layout::key(&t.prefix, id, layout::MANIFEST)
                )),
            },
            _ => Checked {
                id: id.clone(),
                manifest_sha256: None,
                problem: Some(format!(
                    "no set '{id}' in bucket '{}' (no '{}')",
                    t.bucket,
                    layout::key(&t.prefix, id, layout::MANIFEST)
                )),
            },
        };
        checked(&outcome);
        outcomes.push(outcome);
    }
    outcomes
}

/// One copy: its signatures, the listing, then every object this target carries (a sealed
/// copy's age files against its record, no identity needed).
fn check_copy(
    client: &mut Client,
    t: &S3Target,
    (id, manifest, set): (&str, &Manifest, &RemoteSet),
    remote: &Remote,
    deep: Option<&Scratch>,
    known: &mut Known,
) -> Result<()> {
    let extras = remote.extras.get(id).cloned().unwrap_or_default();
    signature_problems(t, id, manifest, &extras, known)?;
    let carried = extras
        .objects(manifest, t.files)
        .map_err(|e| anyhow::anyhow!("set '{id}' in bucket '{}': {e}", t.bucket))?;
    for entry in &carried {
        let key = layout::key(&t.prefix, id, &entry.name);
        match set.objects.get(&entry.name) {
            None => bail!("object '{key}' is missing from bucket '{}'", t.bucket),
            Some(object) if object.size != entry.size => bail!(
                "object '{key}' holds {} bytes, its manifest says {}",
                object.size,
                entry.size
            ),
            Some(_) => {}
        }
    }
    // A sealed snapshot is walked only when an identity opens it, after its age file checked.
    let sealed_walk = match (&extras.seal, deep) {
        (Some(Ok(record)), Some(scratch)) if !scratch.identities.is_empty() => {
            Some((&record.seal, scratch))
        }
        _ => None,
    };
    for entry in &carried {
        let key = layout::key(&t.prefix, id, &entry.name);
        let stored = stored_checksum(client, &key)?;
        match (&stored, deep) {
            (_, Some(scratch)) if entry.is_snapshot() => {
                walk_a_copy(client, &key, entry, manifest, t.verify_bandwidth, scratch)?;
            }
            // The very object this node put, or downloaded and checked, before.
            (Some(s), None) if known.stored.get(&key) == Some(s) => continue,
            (Some(s), None) if !s.contains('-') => {
                let expected = manifest_checksum(entry)?;
                if *s != expected {
                    bail!(
                        "object '{key}' was stored with SHA-256 {s} (base64), its manifest says {expected}"
                    );
                }
            }
            _ => download_and_check(client, &key, entry, t.verify_bandwidth, None)?,
        }
        // Checked: a later verification that finds the same stored checksum needs no download.
        if let Some(s) = stored {
            known.learned.push((key, s));
        }
    }
    if let Some((seal, scratch)) = sealed_walk
        && let Some(entry) = manifest
            .files
            .iter()
            .find(|f| f.is_snapshot() && t.files.carries(f))
        && let Some(sealed) = seal.file(&entry.name)
    {
        let key = layout::key(
            &t.prefix,
            id,
            &crate::seal::record::sealed_name(&entry.name),
        );
        let name = format!("object '{key}'");
        let figures = manifest.checks.etcd.as_ref();
        scratch.walk_sealed((id, &name), (entry, sealed), figures, |file| {
            super::remote::open_sealed(client, &key, sealed, entry, file, scratch.identities)
        })?;
    }
    Ok(())
}

/// The manifest's signature and a sealed copy's record's, judged as this node judges them.
fn signature_problems(
    t: &S3Target,
    id: &str,
    manifest: &Manifest,
    extras: &super::remote::Extras,
    known: &Known,
) -> Result<()> {
    let record_name = format!(
        "'{}'",
        layout::key(&t.prefix, id, crate::seal::record::SEAL_NAME)
    );
    let problem = crate::seal::signature_problem(
        (known.signers, known.require_signature),
        (&manifest.to_json(), extras.signature.as_deref()),
        extras.seal.as_ref().and_then(|r| r.as_ref().ok()),
        (
            &format!("set '{id}' in bucket '{}'", t.bucket),
            &record_name,
        ),
    );
    match problem {
        Some(problem) => bail!("{problem}"),
        None => Ok(()),
    }
}

/// The SHA-256 checksum the server keeps for the object, when it keeps one: of the whole
/// object, or (`…-N`) of a multipart object's parts' checksums, which the manifest cannot be
/// held against (only a checksum this node saw stored before can).
fn stored_checksum(client: &mut Client, key: &str) -> Result<Option<String>> {
    let Some(head) = client.head(key)? else {
        bail!("object '{key}' is gone");
    };
    Ok(head.header("x-amz-checksum-sha256").map(str::to_string))
}

/// The manifest's hex SHA-256 as S3 writes checksums (base64).
fn manifest_checksum(entry: &FileEntry) -> Result<String> {
    let bytes: Option<Vec<u8>> = (0..entry.sha256.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(entry.sha256.get(i..i + 2)?, 16).ok())
        .collect();
    match bytes {
        Some(bytes) if bytes.len() == 32 => Ok(base64(&bytes)),
        _ => bail!("the manifest's sha256 of '{}' is not hex", entry.name),
    }
}

/// Downloads the object through a hasher (and, for the snapshot, the snapshot check), never
/// holding more than a buffer of it, and at most its manifest's size; no faster than
/// `bandwidth` bytes a second on average (zero: unbounded).
fn download_and_check(
    client: &mut Client,
    key: &str,
    entry: &FileEntry,
    bandwidth: u64,
    copy: Option<std::fs::File>,
) -> Result<()> {
    let mut sink = Hashing {
        copy: copy.map(|f| std::io::BufWriter::with_capacity(1 << 20, f)),
        pace: (bandwidth > 0).then(|| (bandwidth, std::time::Instant::now())),
        hasher: Sha256::new(),
        snapshot: if entry.is_snapshot() {
            Some(SnapshotHasher::new(entry.size).map_err(anyhow::Error::msg)?)
        } else {
            None
        },
        bytes: 0,
        problem: None,
    };
    client.get(key, &mut sink, entry.size)?;
    if let Some(copy) = sink.copy.take() {
        copy.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .map_err(|e| anyhow::anyhow!("cannot write the copy of '{key}': {e}"))?;
    }
    if let Some(problem) = sink.problem {
        bail!("object '{key}': {problem}");
    }
    if let Some(snapshot) = sink.snapshot {
        snapshot
            .finish()
            .map_err(|e| anyhow::anyhow!("object '{key}': {e}"))?;
    }
    let digest = hex(&sink.hasher.finalize());
    if sink.bytes != entry.size || digest != entry.sha256 {
        bail!(
            "object '{key}' does not match the manifest (sha256 {digest} size {}, manifest {} size {})",
            sink.bytes,
            entry.sha256,
            entry.size
        );
    }
    Ok(())
}

/// Downloads the snapshot into the store's staging, checks it as [`download_and_check`] does,
/// walks its bbolt structure against the manifest's figures, and removes it.
fn walk_a_copy(
    client: &mut Client,
    key: &str,
    entry: &FileEntry,
    manifest: &Manifest,
    bandwidth: u64,
    scratch: &Scratch,
) -> Result<()> {
    let what = format!("object '{key}'");
    let figures = manifest.checks.etcd.as_ref();
    scratch.walk(&what, entry, figures, true, |file| {
        let file = file.try_clone()?;
        download_and_check(client, key, entry, bandwidth, Some(file))
    })
}

struct Hashing {
    /// Where the bytes are written too (`--deep` of the snapshot).
    copy: Option<std::io::BufWriter<std::fs::File>>,
    /// (bytes a second, when the download started).
    pace: Option<(u64, std::time::Instant)>,
    hasher: Sha256,
    snapshot: Option<SnapshotHasher>,
    bytes: u64,
    /// The snapshot check's first complaint; the download goes on to its end.
    problem: Option<String>,
}

impl std::io::Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(copy) = &mut self.copy {
            copy.write_all(buf)?;
        }
        self.hasher.update(buf);
        self.bytes += buf.len() as u64;
        if let (Some(snapshot), None) = (&mut self.snapshot, &self.problem)
            && let Err(problem) = snapshot.update(buf)
        {
            self.problem = Some(problem);
        }
        if let Some((rate, started)) = self.pace {
            let due = std::time::Duration::from_secs_f64(self.bytes as f64 / rate as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_digest_is_written_as_s3_writes_checksums() {
        let entry = |sha256: &str| FileEntry {
            name: "x".into(),
            size: 0,
            sha256: sha256.into(),
        };
        // SHA-256 of the empty string.
        let empty = entry("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(
            manifest_checksum(&empty).unwrap(),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
        assert!(manifest_checksum(&entry("zz")).is_err());
        assert!(manifest_checksum(&entry("e3b0")).is_err());
        assert!(manifest_checksum(&entry("é3b0")).is_err());
    }
}
