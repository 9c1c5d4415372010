//! Content checks of the two backup files, each done in a single streaming pass that also
//! computes the file's sha256: the etcd snapshot (bbolt meta page + sha256 trailer) and the
//! static-pod-resources tar.gz (decompresses, CRC valid, lists the expected directories).

use crate::bbolt::page;
use crate::files::open_regular;
use crate::hash::{Sha256, hex};
use crate::store::{Store, StoredSet, Verification};
use anyhow::{Context, Result, bail, ensure};
use std::collections::BTreeSet;
use std::io::{self, Read};
use std::path::Path;

/// Read size for hashing: large enough that syscalls are noise next to SHA-256.
const READ_BUF_BYTES: usize = 1 << 16;
/// etcd appends the sha256 of the bbolt file after it.
pub const TRAILER_BYTES: u64 = 32;
/// The newest dir of each of these must be in the resources tar.gz (`cluster-backup.sh`).
pub const REQUIRED_STATIC_PODS: [&str; 3] = [
    "kube-apiserver-pod",
    "kube-controller-manager-pod",
    "kube-scheduler-pod",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileDigest {
    pub size: u64,
    pub sha256: [u8; 32],
}

impl FileDigest {
    pub fn hex(&self) -> String {
        hex(&self.sha256)
    }
}

/// Reads exactly `len` bytes of `reader` into `hasher` (fails on a short file).
fn hash_exact(
    reader: &mut impl Read,
    hasher: &mut Sha256,
    mut len: u64,
    buf: &mut [u8],
) -> io::Result<()> {
    while len > 0 {
        let want = buf.len().min(usize::try_from(len).unwrap_or(usize::MAX));
        let got = reader.read(&mut buf[..want])?;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file is shorter than its size",
            ));
        }
        hasher.update(&buf[..got]);
        len -= got as u64;
    }
    Ok(())
}

fn expect_eof(reader: &mut impl Read) -> io::Result<()> {
    let mut byte = [0u8; 1];
    match reader.read(&mut byte)? {
        0 => Ok(()),
        _ => Err(io::Error::other("file grew while it was read")),
    }
}

/// Hashes a stream of known length that must be an etcd snapshot, checking it on the way:
/// bbolt meta page, `(len - 32)` a multiple of the page size, and the trailer equal to the
/// sha256 of everything before it. The whole-stream sha256 reuses the prefix hash state
/// (SHA-256 is streaming), so every byte is hashed once. Used by `backup` (reading a file) and
/// by `receive` (writing one).
pub struct SnapshotHasher {
    size: u64,
    pos: u64,
    hasher: Sha256,
    head: Vec<u8>,
    prefix_hash: Option<[u8; 32]>,
    trailer: [u8; TRAILER_BYTES as usize],
}

/// The smallest plausible snapshot: two meta pages of the smallest page size and the trailer.
const MIN_SNAPSHOT_BYTES: u64 = TRAILER_BYTES + 2 * page::MIN_PAGE_SIZE as u64;
const HEAD_BYTES: usize = page::META_PAGE_BYTES;

impl SnapshotHasher {
    pub fn new(size: u64) -> Result<SnapshotHasher, String> {
        if size < MIN_SNAPSHOT_BYTES {
            return Err(format!("too small for an etcd snapshot ({size} bytes)"));
        }
        Ok(SnapshotHasher {
            size,
            pos: 0,
            hasher: Sha256::new(),
            head: Vec::with_capacity(HEAD_BYTES),
            prefix_hash: None,
            trailer: [0; TRAILER_BYTES as usize],
        })
    }

    /// Feeds the next bytes; more than `size` in all is an error.
    pub fn update(&mut self, mut data: &[u8]) -> Result<(), String> {
        if data.len() as u64 > self.size - self.pos {
            return Err(format!("more than the expected {} bytes", self.size));
        }
        let prefix_len = self.size - TRAILER_BYTES;
        while !data.is_empty() {
            if self.pos < prefix_len {
                let n = data
                    .len()
                    .min(usize::try_from(prefix_len - self.pos).unwrap_or(usize::MAX));
                let (now, rest) = data.split_at(n);
                if self.head.len() < HEAD_BYTES {
                    let take = now.len().min(HEAD_BYTES - self.head.len());
                    self.head.extend_from_slice(&now[..take]);
                }
                self.hasher.update(now);
                self.pos += n as u64;
                if self.pos == prefix_len {
                    self.prefix_hash = Some(self.hasher.clone().finalize());
                }
                data = rest;
            } else {
                let at = (self.pos - prefix_len) as usize;
                self.trailer[at..at + data.len()].copy_from_slice(data);
                self.hasher.update(data);
                self.pos += data.len() as u64;
                data = &[];
            }
        }
        Ok(())
    }

    /// Checks everything; returns the digest of the whole stream and the bbolt page size.
    pub fn finish(self) -> Result<(FileDigest, u32), String> {
        if self.pos != self.size {
            return Err(format!("{} bytes, expected {}", self.pos, self.size));
        }
        let page_size = page::meta(&self.head)
            .map_err(|e| format!("bbolt meta page 0: {e}"))?
            .page_size;
        if !(self.size - TRAILER_BYTES).is_multiple_of(u64::from(page_size)) {
            return Err(format!(
                "size {} is not {TRAILER_BYTES} bytes plus whole {page_size}-byte pages (truncated or not an etcd snapshot)",
                self.size
            ));
        }
        let prefix_hash = self.prefix_hash.expect("set when pos passed the prefix");
        if prefix_hash != self.trailer {
            return Err(format!(
                "sha256 trailer mismatch (file is corrupt: content hashes to {}, trailer says {})",
                hex(&prefix_hash),
                hex(&self.trailer)
            ));
        }
        Ok((
            FileDigest {
                size: self.size,
                sha256: self.hasher.finalize(),
            },
            page_size,
        ))
    }
}

/// Checks an etcd snapshot file and hashes it in one streaming pass (see [`SnapshotHasher`]).
pub fn check_snapshot(path: &Path) -> Result<(FileDigest, u32)> {
    let file = crate::files::open_bulk(path)?;
    let size = file.get_ref().metadata()?.len();
    hash_snapshot(path, file, size)
}

/// [`check_snapshot`], leaving the file in the page cache for the deep check that reads it
/// next (and drops it): what `backup` runs on the snapshot the script just wrote.
pub fn check_snapshot_cached(path: &Path) -> Result<(FileDigest, u32)> {
    let file = open_regular(path)?;
    let size = file.metadata()?.len();
    hash_snapshot(path, file, size)
}

fn hash_snapshot(path: &Path, mut file: impl Read, size: u64) -> Result<(FileDigest, u32)> {
    let context = || format!("snapshot '{}'", path.display());
    let mut checker =
        SnapshotHasher::new(size).map_err(|e| anyhow::anyhow!("{}: {e}", context()))?;
    let mut buf = vec![0u8; READ_BUF_BYTES];
    loop {
        let n = file.read(&mut buf).with_context(context)?;
        if n == 0 {
            break;
        }
        checker
            .update(&buf[..n])
            .map_err(|e| anyhow::anyhow!("{}: file grew while it was read: {e}", context()))?;
    }
    checker
        .finish()
        .map_err(|e| anyhow::anyhow!("{}: {e}", context()))
}

/// What a file of a set is checked with while it is written (received, copied): a snapshot
/// by [`SnapshotHasher`] (its trailer too), any other file by its SHA-256.
pub enum FileCheck {
    Snapshot(SnapshotHasher),
    Plain(Sha256),
}

impl FileCheck {
    /// The check of the file `entry` names.
    pub fn of(entry: &crate::manifest::FileEntry) -> Result<FileCheck, String> {
        Ok(if entry.is_snapshot() {
            FileCheck::Snapshot(SnapshotHasher::new(entry.size)?)
        } else {
            FileCheck::Plain(Sha256::new())
        })
    }

    pub fn update(&mut self, data: &[u8]) -> Result<(), String> {
        match self {
            FileCheck::Snapshot(h) => h.update(data),
            FileCheck::Plain(h) => {
                h.update(data);
                Ok(())
            }
        }
    }

    /// The hex SHA-256 of what went through, or why the bytes are not a sound file.
    pub fn finish(self) -> Result<String, String> {
        match self {
            FileCheck::Snapshot(h) => h.finish().map(|(digest, _)| digest.hex()),
            FileCheck::Plain(h) => Ok(hex(&h.finalize())),
        }
    }
}

/// A reader that hashes and counts everything read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Checks the static-pod-resources tar.gz and hashes it in one pass: the gzip stream decodes
/// with a valid CRC, the tar lists the newest dir of every required static pod. Returns the
/// `static-pod-resources/<pod>-<N>` dirs found.
pub fn check_resources(path: &Path) -> Result<(FileDigest, Vec<String>)> {
    check_resources_with(path, &mut crate::cluster::archive::Scan::default())
}

/// [`check_resources`], and the files of the archive that tell of its cluster go through
/// `scan` in the same pass.
pub fn check_resources_with(
    path: &Path,
    scan: &mut crate::cluster::archive::Scan,
) -> Result<(FileDigest, Vec<String>)> {
    let file = crate::files::open_bulk(path)?;
    let size = file.get_ref().metadata()?.len();
    let context = || format!("resources archive '{}'", path.display());
    let reader = HashingReader {
        inner: io::BufReader::with_capacity(READ_BUF_BYTES, file),
        hasher: Sha256::new(),
        bytes: 0,
    };
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(reader));
    let mut dirs = BTreeSet::new();
    for entry in archive.entries().with_context(context)? {
        let mut entry = entry.with_context(context)?;
        let entry_path = entry.path().with_context(context)?.into_owned();
        if let Some(name) = entry_path.to_str()
            && entry.header().entry_type().is_file()
        {
            let size = entry.size();
            scan.entry(name, size, &mut entry).with_context(context)?;
        }
        let mut parts = entry_path.components().filter_map(|c| match c {
            std::path::Component::Normal(part) => part.to_str(),
            _ => None,
        });
        if let (Some("static-pod-resources"), Some(dir)) = (parts.next(), parts.next()) {
            dirs.insert(format!("static-pod-resources/{dir}"));
        }
    }
    // Read the rest of the gzip stream (tar padding, CRC and length trailer) and the file.
    let mut decoder = archive.into_inner();
    io::copy(&mut decoder, &mut io::sink()).with_context(context)?;
    let mut reader = decoder.into_inner();
    io::copy(&mut reader, &mut io::sink()).with_context(context)?;
    ensure!(
        reader.bytes == size,
        "{}: read {} bytes, expected {size}",
        context(),
        reader.bytes
    );
    let dirs: Vec<String> = dirs.into_iter().collect();
    for pod in REQUIRED_STATIC_PODS {
        let prefix = format!("static-pod-resources/{pod}-");
        let found = dirs.iter().any(|d| {
            d.strip_prefix(&prefix)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        });
        ensure!(
            found,
            "{}: no static-pod-resources/{pod}-<N> directory in the archive",
            context()
        );
    }
    Ok((
        FileDigest {
            size,
            sha256: reader.hasher.finalize(),
        },
        dirs,
    ))
}

/// Hashes a whole file in one streaming pass.
pub fn hash_file(path: &Path) -> Result<FileDigest> {
    let mut file = crate::files::open_bulk(path)?;
    let size = file.get_ref().metadata()?.len();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_BUF_BYTES];
    hash_exact(&mut file, &mut hasher, size, &mut buf)
        .and_then(|()| expect_eof(&mut file))
        .with_context(|| format!("cannot read '{}'", path.display()))?;
    Ok(FileDigest {
        size,
        sha256: hasher.finalize(),
    })
}

/// Checks the file at `path` against its manifest entry: re-hashed (a snapshot's trailer too)
/// and, with `deep`, a snapshot's bbolt structure against etcd's `figures` in the manifest.
/// What `verify` runs for each file of a set, and `stage`/`fetch` for each copy they write.
pub fn check_file_against(
    path: &Path,
    file: &crate::manifest::FileEntry,
    figures: Option<&crate::bbolt::Figures>,
    deep: bool,
) -> Result<()> {
    let digest = if file.is_snapshot() {
        check_snapshot(path)?.0
    } else {
        hash_file(path)?
    };
    if file.is_snapshot() && deep {
        deep_check_against(path, figures)?;
    }
    if digest.size != file.size || digest.hex() != file.sha256 {
        bail!(
            "'{}' does not match the manifest (sha256 {} size {}, manifest {} size {})",
            path.display(),
            digest.hex(),
            digest.size,
            file.sha256,
            file.size
        );
    }
    Ok(())
}

/// The structural check of a snapshot's bbolt part (everything before the trailer) and
/// etcd's figures from it; an error names the file and the first problems by page and bucket.
pub fn deep_check(path: &Path) -> Result<crate::bbolt::Figures> {
    deep_check_membership(path).map(|(figures, _)| figures)
}

/// [`deep_check`], and what the snapshot says of its cluster (members, cluster version).
pub fn deep_check_membership(
    path: &Path,
) -> Result<(crate::bbolt::Figures, crate::bbolt::Membership)> {
    let file = open_regular(path)?;
    let len = file.metadata()?.len();
    let db_len = len.saturating_sub(TRAILER_BYTES);
    let walked = crate::bbolt::status(&file, db_len);
    // The walk read the pages it needed once: they leave the cache (etcd's database stays).
    crate::files::drop_cached(&file, 0, 0);
    let (report, figures, membership) =
        walked.with_context(|| format!("cannot read '{}'", path.display()))?;
    if !report.is_clean() {
        let shown: Vec<String> = report
            .problems
            .iter()
            .take(5)
            .map(|p| p.to_string())
            .collect();
        let rest = match (report.problems.len() - shown.len(), report.truncated) {
            (0, false) => String::new(),
            (0, true) => "; and more".to_string(),
            (more, _) => format!("; and {more} more"),
        };
        bail!(
            "'{}' fails the structural check (etcd could not restore it): {}{rest}",
            path.display(),
            shown.join("; "),
        );
    }
    Ok((figures, membership))
}

/// [`deep_check`], and the figures must be the ones the manifest recorded (when it has them).
pub fn deep_check_against(
    path: &Path,
    recorded: Option<&crate::bbolt::Figures>,
) -> Result<crate::bbolt::Figures> {
    let figures = deep_check(path)?;
    if let Some(recorded) = recorded
        && *recorded != figures
    {
        bail!(
            "'{}': etcd's figures are {figures:?}, the manifest recorded {recorded:?}",
            path.display()
        );
    }
    Ok(figures)
}

/// Re-hashes one set from disk (and with `deep` walks its snapshot); `Err` says what is wrong.
/// Where a deep check writes a copy's snapshot to walk it: this node's store (never the
/// target's), above its free-space floor; and the identities that open a sealed one.
pub struct Scratch<'a> {
    pub store: &'a Path,
    pub floor: u64,
    pub identities: &'a [age::x25519::Identity],
}

impl Scratch<'_> {
    /// Writes the snapshot `entry` of a copy (`what`) into this store's staging with `write`,
    /// checks it (`hashed`: `write` checked its digest already, only the walk remains; else the
    /// trailer, the digest and the walk) against `figures`, and removes it.
    pub fn walk(
        &self,
        what: &str,
        entry: &crate::manifest::FileEntry,
        figures: Option<&crate::bbolt::Figures>,
        hashed: bool,
        write: impl FnOnce(&mut std::fs::File) -> Result<()>,
    ) -> Result<()> {
        let store = Store::open(self.store)?;
        store.ensure_room(&format!("the deep check of {what}"), entry.size, self.floor)?;
        let staging = store.new_staging("verify")?;
        let path = staging.join(&entry.name);
        let result = crate::files::create_private(&path)
            .and_then(|mut file| {
                write(&mut file)?;
                file.sync_all()
                    .with_context(|| format!("cannot write '{}'", path.display()))
            })
            .and_then(|()| match hashed {
                true => deep_check_against(&path, figures).map(drop),
                false => check_file_against(&path, entry, figures, true),
            })
            .map_err(|e| anyhow::anyhow!("{what}: {e:#}"));
        let _ = std::fs::remove_dir_all(&staging);
        result
    }
}

impl Scratch<'_> {
    /// [`Scratch::walk`] of a sealed snapshot (`entry`, sealed as `sealed`) of set `id`, named
    /// `name`, that `write` opens: unless none of the identities is among its recipients, in
    /// which case nothing is walked, and that is said (it tells nothing of the copy).
    pub fn walk_sealed(
        &self,
        (id, name): (&str, &str),
        (entry, sealed): (
            &crate::manifest::FileEntry,
            &crate::seal::record::SealedFile,
        ),
        figures: Option<&crate::bbolt::Figures>,
        write: impl FnOnce(&mut std::fs::File) -> Result<()>,
    ) -> Result<()> {
        let what = format!("{name} (sealed to {})", sealed.recipients.join(", "));
        if !crate::seal::keys::any_recipient(self.identities, &sealed.recipients) {
            tracing::warn!(set_id = %id, "{what} is not walked: none of the identities given is among its recipients");
            return Ok(());
        }
        self.walk(&what, entry, figures, false, write)
    }
}

pub(crate) fn verify_set(set: &StoredSet, deep: bool, scratch: Option<&Scratch>) -> Result<()> {
    // A failure recorded by an earlier verify is checked again, not repeated.
    if let Some(problem) = &set.on_disk_problem {
        bail!("{problem}");
    }
    // A sealed copy: each age file against its record; with identities, `--deep` opens the
    // snapshot into this node's store and walks it.
    if let Some(record) = &set.sealed {
        let objects = crate::seal::record::objects(set.manifest.files.iter(), Some(&record.seal))
            .map_err(anyhow::Error::msg)?;
        for object in &objects {
            check_file_against(&set.dir.join(&object.name), object, None, false)?;
        }
        let scratch = scratch.filter(|s| deep && !s.identities.is_empty());
        let snapshot = set.manifest.files.iter().find(|f| f.is_snapshot());
        if let (Some(scratch), Some(entry)) = (scratch, snapshot) {
            let sealed = record.seal.file(&entry.name).expect("checked by objects()");
            let from = set.dir.join(crate::seal::record::sealed_name(&entry.name));
            let name = format!("'{}'", from.display());
            let figures = set.manifest.checks.etcd.as_ref();
            scratch.walk_sealed((set.id(), &name), (entry, sealed), figures, |file| {
                let source =
                    std::io::BufReader::with_capacity(1 << 20, crate::files::open_bulk(&from)?);
                let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
                let (opened, ids) = ((sealed, entry.size), scratch.identities);
                crate::seal::stream::open_into(source, opened, ids, &name, &mut out)?;
                std::io::Write::flush(&mut out).map_err(Into::into)
            })?;
        }
        return Ok(());
    }
    for file in &set.manifest.files {
        check_file_against(
            &set.dir.join(&file.name),
            file,
            set.manifest.checks.etcd.as_ref(),
            deep,
        )?;
    }
    Ok(())
}

/// One set's outcome in a verification: its id (or the directory of an unreadable entry), the
/// digest of the manifest it was checked against, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub id: String,
    pub manifest_sha256: Option<String>,
    pub problem: Option<String>,
}

/// Verifies the sets of `store` named by `ids` (every set and unreadable entry when empty),
/// telling `checked` each outcome as it comes. The caller holds the store's lock.
pub fn check_store(
    store: &Store,
    ids: &[String],
    deep: bool,
    scratch: Option<&Scratch>,
    checked: &mut dyn FnMut(&Checked),
) -> Result<Vec<Checked>> {
    let mut outcomes = Vec::new();
    let mut report = |id: &str, set: Option<&StoredSet>, result: Result<()>| {
        let outcome = Checked {
            id: id.to_string(),
            manifest_sha256: set.map(|s| s.manifest_sha256.clone()),
            problem: result.err().map(|error| format!("{error:#}")),
        };
        checked(&outcome);
        outcomes.push(outcome);
    };
    if ids.is_empty() {
        let listing = store.list()?;
        for (dir, reason) in &listing.unreadable {
            report(
                &dir.display().to_string(),
                None,
                Err(anyhow::anyhow!("{reason}")),
            );
        }
        for set in &listing.sets {
            report(set.id(), Some(set), verify_set(set, deep, scratch));
        }
    } else {
        for id in ids {
            match store.get(id) {
                Ok(set) => report(id, Some(&set), verify_set(&set, deep, scratch)),
                Err(e) => report(id, None, Err(e)),
            }
        }
    }
    Ok(outcomes)
}

/// Records `outcomes` in `store`, where they last: list, status, retention and spray see them
/// until the next verify. The caller holds the store's lock.
pub fn record(store: &Store, outcomes: &[Checked], deep: bool) -> Result<()> {
    let at = chrono::Utc::now();
    let recorded: Vec<(String, Verification)> = outcomes
        .iter()
        .filter_map(|o| {
            let verification = Verification {
                at,
                deep,
                problem: o.problem.clone(),
            };
            o.manifest_sha256.clone().map(|sha| (sha, verification))
        })
        .collect();
    store.record_verifications(&recorded)
}

/// The `verify` command: under the store lock (prune must not remove a set under our feet),
/// [`check_store`] and [`record`]. Returns how many were bad.
pub fn run(
    settings: &crate::config::Settings,
    ids: &[String],
    deep: bool,
    checked: &mut dyn FnMut(&Checked),
) -> Result<usize> {
    let store = Store::open_existing(&settings.store.root)?;
    let _lock = store.lock(settings.store.lock_wait)?;
    let signers = crate::seal::signers(&settings.seal.signers);
    let require = settings.seal.require_signature;
    let mut judged = Vec::new();
    let outcomes = check_store(&store, ids, deep, None, &mut |outcome| {
        let outcome = with_signatures(&store, &signers, require, outcome);
        checked(&outcome);
        judged.push(outcome);
    })?;
    record(&store, &outcomes, deep)?;
    Ok(judged.iter().filter(|o| o.problem.is_some()).count())
}

/// `outcome` with what is wrong with the set's signatures, when its bytes are sound. Told, never
/// recorded as damage: the bytes are what was taken, and retention must still be able to
/// remove the set.
pub fn with_signatures(
    store: &Store,
    signers: &[ssh_key::PublicKey],
    requires: bool,
    outcome: &Checked,
) -> Checked {
    let problem = match (&outcome.problem, store.get(&outcome.id)) {
        (None, Ok(set)) => signature_problem(&set, signers, requires),
        _ => None,
    };
    Checked {
        problem: outcome.problem.clone().or(problem),
        ..outcome.clone()
    }
}

/// What is wrong with a held set's signature for a node with these `signers` (and that
/// `requires` one): see [`crate::seal::sign::Verdict::problem`].
pub fn signature_problem(
    set: &StoredSet,
    signers: &[ssh_key::PublicKey],
    requires: bool,
) -> Option<String> {
    let record_name = format!(
        "'{}'",
        set.dir.join(crate::seal::record::SEAL_NAME).display()
    );
    crate::seal::signature_problem(
        (signers, requires),
        (set.manifest_json.as_bytes(), set.signature.as_deref()),
        set.sealed.as_ref(),
        (&format!("set '{}'", set.id()), &record_name),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;

    /// A minimal file with etcd's snapshot shape: a valid bbolt meta page 0, filler pages, trailer.
    /// A small but valid etcd backend (both meta pages, a root leaf with etcd's `key` and
    /// `meta` buckets inline, no freelist; the other pages free and filled with a pattern)
    /// with its sha256 trailer.
    pub fn fake_snapshot(pages: usize, page_size: u32) -> Vec<u8> {
        assert!(pages >= 3);
        let size = page_size as usize;
        let mut data = vec![0u8; pages * size];
        for (i, b) in data.iter_mut().enumerate().skip(3 * size) {
            *b = (i % 251) as u8;
        }
        for (id, txid) in [(0u64, 2u64), (1, 1)] {
            let m = &mut data[id as usize * size..];
            m[0..8].copy_from_slice(&id.to_le_bytes());
            m[8..10].copy_from_slice(&page::META.to_le_bytes());
            m[16..20].copy_from_slice(&page::MAGIC.to_le_bytes());
            m[20..24].copy_from_slice(&page::VERSION.to_le_bytes());
            m[24..28].copy_from_slice(&page_size.to_le_bytes());
            m[32..40].copy_from_slice(&2u64.to_le_bytes()); // root bucket: page 2
            m[48..56].copy_from_slice(&u64::MAX.to_le_bytes()); // no freelist
            m[56..64].copy_from_slice(&(pages as u64).to_le_bytes()); // high-water mark
            m[64..72].copy_from_slice(&txid.to_le_bytes());
            let summed_end = page::META_PAGE_BYTES - 8;
            let checksum = page::fnv1a64(&m[16..summed_end]);
            m[summed_end..page::META_PAGE_BYTES].copy_from_slice(&checksum.to_le_bytes());
        }
        // The root leaf: two bucket elements, each value a bucket header with root 0 and an
        // empty inline leaf page.
        let root = &mut data[2 * size..3 * size];
        root[0..8].copy_from_slice(&2u64.to_le_bytes());
        root[8..10].copy_from_slice(&0x02u16.to_le_bytes());
        root[10..12].copy_from_slice(&2u16.to_le_bytes());
        let mut off = 16 + 2 * 16;
        for (i, name) in [&b"key"[..], b"meta"].into_iter().enumerate() {
            let element = 16 + i * 16;
            let value_len = 16 + 16;
            root[element..element + 4].copy_from_slice(&1u32.to_le_bytes());
            root[element + 4..element + 8].copy_from_slice(&((off - element) as u32).to_le_bytes());
            root[element + 8..element + 12].copy_from_slice(&(name.len() as u32).to_le_bytes());
            root[element + 12..element + 16].copy_from_slice(&(value_len as u32).to_le_bytes());
            root[off..off + name.len()].copy_from_slice(name);
            let inline = off + name.len() + 16;
            root[inline + 8..inline + 10].copy_from_slice(&0x02u16.to_le_bytes());
            off += name.len() + value_len;
        }
        let trailer = Sha256::digest(&data);
        data.extend_from_slice(&trailer);
        data
    }

    #[test]
    fn the_fake_snapshot_is_a_sound_etcd_backend() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "s.db", &fake_snapshot(8, 4096));
        let figures = deep_check(&path).unwrap();
        assert_eq!((figures.total_key, figures.total_size), (0, 8 * 4096));
        let mut bad = fake_snapshot(8, 4096);
        bad[2 * 4096 + 20] ^= 0x01; // element 0's data offset
        let path = write(dir.path(), "bad.db", &bad);
        let error = deep_check(&path).unwrap_err().to_string();
        assert!(
            error.contains("page 2: element 0's data starts at"),
            "{error}"
        );
    }

    fn write(dir: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        File::create(&path).unwrap().write_all(data).unwrap();
        path
    }

    #[test]
    fn a_valid_snapshot_passes_and_its_hash_is_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = fake_snapshot(300, 4096);
        let path = write(dir.path(), "s.db", &data);
        let (digest, page_size) = check_snapshot(&path).unwrap();
        assert_eq!(page_size, 4096);
        assert_eq!(digest.size, data.len() as u64);
        assert_eq!(digest.sha256, Sha256::digest(&data));
        assert_eq!(hash_file(&path).unwrap(), digest);
    }

    #[test]
    fn damaged_snapshots_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let good = fake_snapshot(4, 4096);
        let mut flipped = good.clone();
        flipped[5000] ^= 0x01;
        let mut truncated = good.clone();
        truncated.truncate(good.len() - 100);
        let mut bad_magic = good.clone();
        bad_magic[16] ^= 0xff;
        let mut bad_meta = good.clone();
        bad_meta[40] ^= 0xff;
        let table: [(&str, Vec<u8>, &str); 5] = [
            ("flipped", flipped, "sha256 trailer mismatch"),
            (
                "truncated",
                truncated,
                "not 32 bytes plus whole 4096-byte pages",
            ),
            ("magic", bad_magic, "not a bbolt file"),
            ("meta", bad_meta, "checksum mismatch"),
            ("tiny", vec![0u8; 100], "too small"),
        ];
        for (name, data, expected) in table {
            let path = write(dir.path(), name, &data);
            let err = format!("{:#}", check_snapshot(&path).unwrap_err());
            assert!(err.contains(expected), "{name}: {err}");
            assert!(err.contains(&path.display().to_string()), "{name}: {err}");
        }
    }

    #[test]
    fn streaming_check_does_not_depend_on_chunking() {
        let data = fake_snapshot(5, 4096);
        let whole = {
            let mut h = SnapshotHasher::new(data.len() as u64).unwrap();
            h.update(&data).unwrap();
            h.finish().unwrap()
        };
        for chunk in [1usize, 7, 31, 32, 33, 4096, 5000] {
            let mut h = SnapshotHasher::new(data.len() as u64).unwrap();
            for piece in data.chunks(chunk) {
                h.update(piece).unwrap();
            }
            assert_eq!(h.finish().unwrap(), whole, "chunk {chunk}");
        }
        let mut h = SnapshotHasher::new(data.len() as u64).unwrap();
        h.update(&data).unwrap();
        assert!(h.update(b"x").is_err(), "more than the size is refused");
        let mut h = SnapshotHasher::new(data.len() as u64).unwrap();
        h.update(&data[..100]).unwrap();
        assert!(h.finish().unwrap_err().contains("expected"));
    }

    #[test]
    fn symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = write(dir.path(), "real.db", &fake_snapshot(4, 4096));
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(check_snapshot(&link).is_err());
        assert!(hash_file(&link).is_err());
    }

    pub fn fake_resources(pods: &[&str]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for pod in pods {
            let mut header = tar::Header::new_gnu();
            let body = b"apiVersion: v1\nkind: Pod\n";
            header.set_size(body.len() as u64);
            header.set_mode(0o600);
            header.set_cksum();
            builder
                .append_data(
                    &mut header,
                    format!("static-pod-resources/{pod}/pod.yaml"),
                    &body[..],
                )
                .unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn resources_archive_is_listed_and_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let data = fake_resources(&[
            "kube-apiserver-pod-7",
            "kube-controller-manager-pod-3",
            "kube-scheduler-pod-4",
            "etcd-pod-2",
        ]);
        let path = write(dir.path(), "r.tar.gz", &data);
        let (digest, dirs) = check_resources(&path).unwrap();
        assert_eq!(digest.sha256, Sha256::digest(&data));
        assert_eq!(dirs.len(), 4);
        assert!(dirs.contains(&"static-pod-resources/etcd-pod-2".to_string()));
    }

    #[test]
    fn incomplete_or_corrupt_archives_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = fake_resources(&["kube-apiserver-pod-7", "kube-scheduler-pod-4"]);
        let path = write(dir.path(), "missing.tar.gz", &missing);
        let err = format!("{:#}", check_resources(&path).unwrap_err());
        assert!(err.contains("kube-controller-manager-pod"), "{err}");

        let mut corrupt = fake_resources(&[
            "kube-apiserver-pod-7",
            "kube-controller-manager-pod-3",
            "kube-scheduler-pod-4",
        ]);
        let at = corrupt.len() - 6; // inside the gzip CRC trailer
        corrupt[at] ^= 0xff;
        let path = write(dir.path(), "corrupt.tar.gz", &corrupt);
        assert!(check_resources(&path).is_err());

        let path = write(dir.path(), "plain.tar.gz", b"not gzip at all");
        assert!(check_resources(&path).is_err());
    }
}
