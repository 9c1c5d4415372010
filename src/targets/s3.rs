//! `s3`: a bucket of an S3-compatible store. It does not speak the protocol: the sender lists
//! the bucket, asks [`crate::protocol::wants`] what it lacks (the same decision a receiving store
//! makes, with the same retention policy), uploads it with per-part SHA-256 checked by the
//! server and the whole file's digest checked against the manifest, puts `manifest.json` last,
//! then applies retention to the sets the bucket holds.

use super::Target;
use crate::config::{Carried, S3Target, Settings};
use crate::logging::message_id;
use crate::manifest::{FileEntry, Manifest};
use crate::protocol::send::{OpenSet, PushStats};
use crate::protocol::{HeldSet, Offer};
use crate::s3::layout::{self, MANIFEST, RemoteSet};
use crate::s3::{Client, base64};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Manifests are small; anything larger under that name is not one of ours.
const MAX_MANIFEST_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq)]
pub struct Bucket(pub S3Target);

impl Bucket {
    fn location(&self) -> String {
        let t = &self.0;
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
        self.0.files
    }

    fn id(&self) -> String {
        format!("s3:{}", self.location())
    }

    fn describe(&self) -> String {
        let t = &self.0;
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

    fn push(&self, settings: &Settings, sets: &[OpenSet]) -> Result<PushStats> {
        let t = &self.0;
        let mut client = Client::open(t, settings.spray.connect_timeout, settings.spray.io_timeout)
            .with_context(|| self.describe())?;
        push(&mut client, t, settings, sets)
            .with_context(|| format!("bucket '{}' at {}", t.bucket, t.endpoint))
    }
}

/// What the bucket holds under the prefix: the sets with a readable manifest.
pub struct Remote {
    pub listing: layout::Listing,
    /// Set id → (manifest, its raw bytes' SHA-256 hex).
    pub manifests: BTreeMap<String, (Manifest, String)>,
}

/// Lists the bucket and reads every manifest.
pub fn read_remote(client: &mut Client, t: &S3Target) -> Result<Remote> {
    client.head_bucket()?;
    let objects = client.list(&layout::sets_prefix(&t.prefix))?;
    let listing = layout::group(&t.prefix, &objects);
    let mut manifests = BTreeMap::new();
    for (id, set) in &listing.sets {
        if !set.has_manifest() {
            continue;
        }
        let bytes = client.get_small(&layout::key(&t.prefix, id, MANIFEST), MAX_MANIFEST_BYTES)?;
        match Manifest::parse(&bytes) {
            Ok(m) if &m.id == id => {
                let digest = crate::manifest::digest(&bytes);
                manifests.insert(id.clone(), (m, digest));
            }
            Ok(m) => {
                tracing::warn!(set_id = %id, "the manifest in '{id}' is of set '{}': left alone", m.id)
            }
            Err(e) => {
                tracing::warn!(set_id = %id, "unreadable manifest in '{id}', left alone: {e}")
            }
        }
    }
    Ok(Remote { listing, manifests })
}

impl Remote {
    /// The sets the bucket holds as [`crate::protocol::wants`] sees them: damaged when a file
    /// this target carries is missing or of another size.
    pub fn held(&self, carried: Carried) -> Vec<HeldSet> {
        self.manifests
            .iter()
            .map(|(id, (manifest, digest))| HeldSet {
                info: manifest.info(),
                manifest_sha256: digest.clone(),
                damaged: !layout::lacking(&self.listing.sets[id], manifest, carried).is_empty(),
            })
            .collect()
    }
}

fn push(
    client: &mut Client,
    t: &S3Target,
    settings: &Settings,
    sets: &[OpenSet],
) -> Result<PushStats> {
    let remote = read_remote(client, t)?;
    for key in &remote.listing.unknown {
        tracing::debug!("unknown object left alone: {key}");
    }
    let offers: Vec<Offer> = sets
        .iter()
        .map(|s| Offer {
            id: s.set.id().to_string(),
            manifest_sha256: s.set.manifest_sha256.clone(),
            size: s.set.manifest.total_size(),
            dirty: s.set.manifest.dirty,
        })
        .collect();
    // A bucket has no free space to keep: only the keep rules and max_total_size apply.
    let mut policy = settings.retention.clone();
    policy.min_free_space = None;
    let held = remote.held(t.files);
    let judge = crate::protocol::Judge {
        policy: &policy,
        free_bytes: u64::MAX,
        not_after: settings.not_after(),
        guard: None,
    };
    let plan = crate::protocol::wants(&offers, &held, &BTreeMap::new(), &judge);
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
        let remote_set = remote
            .listing
            .sets
            .get(&want.id)
            .cloned()
            .unwrap_or_default();
        let sent = upload_set(client, t, open, &remote_set, &mut buf)
            .with_context(|| format!("set '{}'", want.id))?;
        stats.data_bytes += sent;
        stats.wire_bytes += sent;
        stats.sent.push(want.id.clone());
    }
    stats.held = plan.holds + stats.sent.len();

    prune(client, t, &judge, &remote, &stats.sent, sets)?;
    collect_garbage(client, t, &remote, &uploading)?;
    Ok(stats)
}

/// The headers every object of a set is created with: its digest, encryption, lock.
fn object_headers(t: &S3Target, sha256_hex: &str) -> Vec<(&'static str, String)> {
    let mut headers = vec![("x-amz-meta-sha256", sha256_hex.to_string())];
    if let Some(sse) = &t.sse {
        headers.push(("x-amz-server-side-encryption", sse.algorithm().to_string()));
        if let crate::config::Sse::Kms { key_id: Some(key) } = sse {
            headers.push(("x-amz-server-side-encryption-aws-kms-key-id", key.clone()));
        }
    }
    if let Some(lock) = &t.object_lock {
        let until = chrono::Utc::now() + chrono::Duration::days(i64::from(lock.days));
        headers.push(("x-amz-object-lock-mode", lock.mode.as_str().to_string()));
        headers.push((
            "x-amz-object-lock-retain-until-date",
            until.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        ));
    }
    headers
}

/// Whether an answer shows the encryption asked for. With `absent_ok`, an answer that names
/// none passes (some stores, SeaweedFS among them, do not echo it when a multipart upload
/// starts; the stored object's HEAD is checked at the end).
fn check_encryption(
    t: &S3Target,
    key: &str,
    response: &crate::s3::http::Response,
    absent_ok: bool,
) -> Result<()> {
    if let Some(sse) = &t.sse {
        let answered = response.header("x-amz-server-side-encryption");
        if answered != Some(sse.algorithm()) && !(absent_ok && answered.is_none()) {
            bail!(
                "'{key}' was stored without the requested encryption {} (the store answered {}): not trusting this bucket with secrets",
                sse.algorithm(),
                answered.unwrap_or("none")
            );
        }
    }
    Ok(())
}

/// `check_encryption` of a stored object; one stored without it is deleted again (it holds
/// secrets in the clear) before the error.
fn refuse_unencrypted(
    client: &mut Client,
    t: &S3Target,
    key: &str,
    response: &crate::s3::http::Response,
) -> Result<()> {
    check_encryption(t, key, response, false).map_err(|e| match client.delete(key) {
        Ok(()) => anyhow::anyhow!("{e:#}; the object is deleted again"),
        Err(d) => anyhow::anyhow!("{e:#}; and it could not be deleted again: {d:#}"),
    })
}

/// Uploads the files of `open` this target carries and lacks, then the manifest; returns the
/// file bytes sent.
fn upload_set(
    client: &mut Client,
    t: &S3Target,
    open: &OpenSet,
    remote: &RemoteSet,
    buf: &mut Vec<u8>,
) -> Result<u64> {
    let set = &open.set;
    let mut sent = 0;
    for (entry, file) in set.manifest.files.iter().zip(open.files()) {
        if !t.files.carries(entry) {
            continue;
        }
        let key = layout::key(&t.prefix, set.id(), &entry.name);
        if let Some(object) = remote.objects.get(&entry.name)
            && object.size == entry.size
            && client
                .head(&key)?
                .is_some_and(|h| h.header("x-amz-meta-sha256") == Some(entry.sha256.as_str()))
        {
            continue;
        }
        sent += upload_file(
            client,
            t,
            &key,
            file,
            entry,
            &set.dir.join(&entry.name),
            buf,
        )?;
    }
    // Last: with the manifest there, the set exists on the target.
    let key = layout::key(&t.prefix, set.id(), MANIFEST);
    let digest = crate::manifest::digest(set.manifest_json.as_bytes());
    let response = client.put(
        &key,
        set.manifest_json.as_bytes(),
        &object_headers(t, &digest),
    )?;
    refuse_unencrypted(client, t, &key, &response)?;
    Ok(sent)
}

/// Uploads one file (one PUT up to a part, else a multipart upload that continues one a cut
/// run left); checks the whole file's SHA-256 against the manifest and the server's checksum
/// against the parts sent. Returns the bytes sent in this run.
fn upload_file(
    client: &mut Client,
    t: &S3Target,
    key: &str,
    file: &File,
    entry: &FileEntry,
    path: &std::path::Path,
    buf: &mut Vec<u8>,
) -> Result<u64> {
    let headers = object_headers(t, &entry.sha256);
    let parts = layout::parts(entry.size, t.part_size);
    let mismatch = || {
        anyhow::anyhow!(
            "'{}' does not match its manifest (changed or damaged since it was verified): not uploaded",
            path.display()
        )
    };
    let read = |buf: &mut Vec<u8>, offset: u64, len: u64| -> Result<()> {
        buf.resize(len as usize, 0);
        file.read_exact_at(buf, offset)
            .with_context(|| format!("cannot read '{}'", path.display()))
    };
    if parts.len() == 1 {
        read(buf, 0, entry.size)?;
        let digest = crate::hash::Sha256::digest(buf);
        if crate::hash::hex(&digest) != entry.sha256 {
            return Err(mismatch());
        }
        let response = client.put(key, buf, &headers)?;
        refuse_unencrypted(client, t, key, &response)?;
        verify_object(client, t, key, entry, &base64(&digest), None)?;
        return Ok(entry.size);
    }
    // Continue the newest upload of this key, if a cut run left one.
    let existing = client
        .list_uploads(key)?
        .into_iter()
        .filter(|u| u.key == key)
        .max_by(|a, b| a.initiated.cmp(&b.initiated));
    let (upload_id, held) = match existing {
        Some(upload) => {
            let held = client.list_parts(key, &upload.upload_id)?;
            tracing::info!(
                key,
                parts = held.len(),
                "continuing a multipart upload of '{key}'"
            );
            (upload.upload_id, held)
        }
        None => {
            let (id, response) = client.create_multipart(key, &headers)?;
            if let Err(e) = check_encryption(t, key, &response, true) {
                client.abort(key, &id)?;
                return Err(e);
            }
            (id, Vec::new())
        }
    };
    let held: BTreeMap<u32, &crate::s3::xml::Part> = held.iter().map(|p| (p.number, p)).collect();
    let senders = layout::parallel_parts(t.part_size);
    let Uploaded {
        completed,
        digests,
        whole,
        sent,
    } = upload_parts(client, key, &upload_id, &parts, &held, senders, read)?;
    if crate::hash::hex(&whole) != entry.sha256 {
        client.abort(key, &upload_id)?;
        return Err(mismatch());
    }
    let response = client.complete(key, &upload_id, &completed)?;
    check_encryption(t, key, &response, true)?;
    let composite = layout::composite_checksum(&digests);
    verify_object(client, t, key, entry, &base64(&whole), Some(&composite))?;
    Ok(sent)
}

/// What `upload_parts` did: the parts to complete the upload with, each part's SHA-256 and
/// the whole file's, and the bytes sent (parts the server already held are not).
struct Uploaded {
    completed: Vec<crate::s3::xml::CompletedPart>,
    digests: Vec<[u8; 32]>,
    whole: [u8; 32],
    sent: u64,
}

/// The parts of one multipart upload: this thread reads and hashes each part once, in order
/// (`read`); `senders` connections upload them side by side. A part `held` with the same
/// bytes is not sent again. Part bodies circulate: read here, uploaded by a sender, handed
/// back for the next read; at most `senders + 1` exist, so memory stays
/// `(senders + 1) × part_size`.
fn upload_parts(
    client: &Client,
    key: &str,
    upload_id: &str,
    parts: &[layout::PartRange],
    held: &BTreeMap<u32, &crate::s3::xml::Part>,
    senders: usize,
    read: impl Fn(&mut Vec<u8>, u64, u64) -> Result<()>,
) -> Result<Uploaded> {
    let mut whole = crate::hash::Sha256::new();
    let mut digests = Vec::with_capacity(parts.len());
    let mut completed: Vec<crate::s3::xml::CompletedPart> = parts
        .iter()
        .map(|p| crate::s3::xml::CompletedPart {
            etag: String::new(),
            number: u32::from(p.number),
            checksum_sha256: String::new(),
        })
        .collect();
    let mut sent = 0;
    type Done = Result<(usize, String, Vec<u8>)>;
    let (jobs, queue) = std::sync::mpsc::sync_channel::<(usize, Vec<u8>, String)>(0);
    let (done_tx, done) = std::sync::mpsc::channel::<Done>();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(queue));
    fn record(
        result: Done,
        completed: &mut [crate::s3::xml::CompletedPart],
        free: &mut Vec<Vec<u8>>,
    ) -> Result<()> {
        let (i, etag, body) = result?;
        completed[i].etag = etag;
        free.push(body);
        Ok(())
    }
    let mut free: Vec<Vec<u8>> = Vec::new();
    let fed = std::thread::scope(|scope| -> Result<()> {
        for _ in 0..senders {
            let (queue, done_tx, mut client) = (queue.clone(), done_tx.clone(), client.fork());
            scope.spawn(move || {
                loop {
                    let job = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok((i, body, checksum)) = job else { return };
                    let number = parts[i].number;
                    let result = client.upload_part(key, upload_id, number, &body, &checksum);
                    let failed = result.is_err();
                    let _ = done_tx.send(result.map(|etag| (i, etag, body)));
                    if failed {
                        return;
                    }
                }
            });
        }
        drop((queue, done_tx));
        let mut made = 0;
        for (i, part) in parts.iter().enumerate() {
            while let Ok(result) = done.try_recv() {
                record(result, &mut completed, &mut free)?;
            }
            let mut body = match free.pop() {
                Some(body) => body,
                None if made <= senders => {
                    made += 1;
                    Vec::new()
                }
                // Every body is out: wait for a sender to hand one back (or to fail).
                None => match done.recv() {
                    Ok(result) => {
                        record(result, &mut completed, &mut free)?;
                        free.pop().expect("a body handed back")
                    }
                    Err(_) => break,
                },
            };
            read(&mut body, part.offset, part.len)?;
            whole.update(&body);
            let digest = crate::hash::Sha256::digest(&body);
            let checksum = base64(&digest);
            digests.push(digest);
            completed[i].checksum_sha256 = checksum.clone();
            match held.get(&u32::from(part.number)) {
                Some(p) if p.size == part.len && part_matches(p, &checksum, &body) => {
                    completed[i].etag = p.etag.clone();
                    free.push(body);
                }
                _ => {
                    sent += part.len;
                    // A send fails only when every sender has stopped on an error.
                    if jobs.send((i, body, checksum)).is_err() {
                        break;
                    }
                }
            }
        }
        drop(jobs);
        Ok(())
    });
    // Every sender has ended: what they uploaded, or the first error.
    for result in done.try_iter() {
        record(result, &mut completed, &mut free)?;
    }
    fed?;
    if let Some(part) = completed.iter().find(|p| p.etag.is_empty()) {
        bail!("part {} of '{key}' was not uploaded", part.number);
    }
    Ok(Uploaded {
        completed,
        digests,
        whole: whole.finalize(),
        sent,
    })
}

/// Whether a part a cut run left holds these bytes: by its SHA-256 where the server lists it,
/// else by its ETag, the MD5 of the part on S3 without KMS (not in FIPS mode: then sent again).
fn part_matches(held: &crate::s3::xml::Part, sha256_b64: &str, bytes: &[u8]) -> bool {
    match held.checksum_sha256.as_deref() {
        Some(listed) => listed == sha256_b64,
        None => openssl::hash::hash(openssl::hash::MessageDigest::md5(), bytes)
            .is_ok_and(|md5| held.etag.trim_matches('"') == crate::hash::hex(&md5)),
    }
}

/// The object as the server now has it: the manifest's size, a checksum that agrees with what
/// was sent, the encryption asked for.
fn verify_object(
    client: &mut Client,
    t: &S3Target,
    key: &str,
    entry: &FileEntry,
    whole_b64: &str,
    composite: Option<&str>,
) -> Result<()> {
    let head = client
        .head(key)?
        .with_context(|| format!("'{key}' is missing right after its upload"))?;
    refuse_unencrypted(client, t, key, &head)?;
    let size = head
        .header("content-length")
        .and_then(|l| l.parse::<u64>().ok());
    if size != Some(entry.size) {
        bail!(
            "'{key}' holds {} bytes after its upload, its manifest says {}",
            size.map_or("an unknown number of".into(), |s| s.to_string()),
            entry.size
        );
    }
    let reported = head.header("x-amz-checksum-sha256");
    if !layout::checksum_agrees(reported, whole_b64, composite) {
        bail!(
            "'{key}': the store reports checksum {}, not the {} that was sent",
            reported.unwrap_or(""),
            composite.unwrap_or(whole_b64)
        );
    }
    Ok(())
}

/// The target's own retention over the sets it holds (and those just sent): deletes what the
/// plan drops, manifest first, and never a set whose objects are locked.
fn prune(
    client: &mut Client,
    t: &S3Target,
    judge: &crate::protocol::Judge,
    remote: &Remote,
    sent: &[String],
    sets: &[OpenSet],
) -> Result<()> {
    let mut infos: Vec<_> = remote
        .held(t.files)
        .into_iter()
        .filter(|h| !h.damaged)
        .map(|h| h.info)
        .collect();
    for id in sent {
        if let Some(open) = sets.iter().find(|s| s.set.id() == id)
            && !infos.iter().any(|i| &i.id == id)
        {
            infos.push(open.set.info());
        }
    }
    let plan = crate::retention::plan(&infos, judge.policy, u64::MAX, judge.not_after);
    let mut deleted = Vec::new();
    for decision in plan.to_delete() {
        let id = &decision.set.id;
        let manifest_key = layout::key(&t.prefix, id, MANIFEST);
        if let Some(until) = locked_until(client, &manifest_key)? {
            tracing::info!(set_id = %id, "set {id} kept on the bucket: its objects are locked until {until}");
            continue;
        }
        let Some((manifest, _)) = remote.manifests.get(id) else {
            continue;
        };
        client.delete(&manifest_key)?;
        for entry in &manifest.files {
            if remote.listing.sets[id].objects.contains_key(&entry.name) {
                client.delete(&layout::key(&t.prefix, id, &entry.name))?;
            }
        }
        deleted.push(id.clone());
    }
    if !deleted.is_empty() {
        tracing::info!(
            message_id = message_id::SETS_PRUNED,
            count = deleted.len(),
            set_ids = %deleted.join(","),
            store = %client.describe(),
            "pruned {} set(s) on {}: {}",
            deleted.len(),
            client.describe(),
            deleted.join(", ")
        );
    }
    Ok(())
}

/// The retain-until date of a locked object, when it lies ahead.
fn locked_until(client: &mut Client, key: &str) -> Result<Option<String>> {
    let Some(head) = client.head(key)? else {
        return Ok(None);
    };
    Ok(head
        .header("x-amz-object-lock-retain-until-date")
        .filter(|until| layout::parse_time(until).is_some_and(|t| t > chrono::Utc::now()))
        .map(str::to_string))
}

/// Aborts multipart uploads no run continued within `gc_grace`, and deletes the files of set
/// directories left without a manifest for as long.
fn collect_garbage(
    client: &mut Client,
    t: &S3Target,
    remote: &Remote,
    uploading: &[String],
) -> Result<()> {
    let now = chrono::Utc::now();
    let uploads = client.list_uploads(&layout::sets_prefix(&t.prefix))?;
    let continued: Vec<String> = Vec::new();
    for upload in layout::stale_uploads(&t.prefix, &uploads, &continued, now, t.gc_grace) {
        tracing::info!(key = %upload.key, "aborting a stale multipart upload of '{}'", upload.key);
        client.abort(&upload.key, &upload.upload_id)?;
    }
    for (id, names) in layout::orphans(&remote.listing, uploading, now, t.gc_grace) {
        tracing::info!(set_id = %id, "deleting the files of '{id}', left without a manifest");
        for name in names {
            client.delete(&layout::key(&t.prefix, id, name))?;
        }
    }
    Ok(())
}
