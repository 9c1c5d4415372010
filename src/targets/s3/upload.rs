//! Uploads of a set's files and then its manifest: one PUT up to a part, else a multipart
//! upload that continues what a cut run left, with per-part SHA-256 checked by the server, the
//! whole file's digest checked against the manifest, and the encryption asked for checked on
//! every answer.

use super::layout::{self, MANIFEST, RemoteSet};
use crate::config::S3Target;
use crate::hash::base64;
use crate::manifest::{FileEntry, SIGNATURE_NAME};
use crate::protocol::send::OpenSet;
use crate::s3::Client;
use crate::seal::record::{SEAL_NAME, SealedFile, sealed_name};
use crate::seal::stream::Sealer;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// The headers every object of a set is created with: its digest (when it is known before
/// the upload), encryption, lock.
fn object_headers(t: &S3Target, sha256_hex: Option<&str>) -> Vec<(&'static str, String)> {
    let mut headers: Vec<(&'static str, String)> = sha256_hex
        .map(|hex| ("x-amz-meta-sha256", hex.to_string()))
        .into_iter()
        .collect();
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

/// Uploads the files of `open` this target carries and lacks (sealed, every one of them, when
/// `sealing`), then the signatures and the manifest; returns the file bytes sent.
pub(super) fn upload_set(
    client: &mut Client,
    t: &S3Target,
    open: &OpenSet,
    remote: &RemoteSet,
    sealing: Option<(&crate::seal::Sealing, &str)>,
    buf: &mut Vec<u8>,
    stored: &mut Vec<(String, String)>,
) -> Result<u64> {
    let set = &open.set;
    let sent = match sealing {
        Some((sealing, sealed_by)) => {
            upload_sealed(client, t, open, sealing, sealed_by, buf, stored)?
        }
        None => upload_clear(client, t, open, remote, buf, stored)?,
    };
    if let Some(signature) = &set.signature {
        put_small(
            client,
            t,
            &layout::key(&t.prefix, set.id(), SIGNATURE_NAME),
            signature,
        )?;
    }
    // Last: with the manifest there, the set exists on the target.
    let key = layout::key(&t.prefix, set.id(), MANIFEST);
    put_small(client, t, &key, set.manifest_json.as_bytes())?;
    Ok(sent)
}

/// Uploads the files of `open` this target carries and lacks, as they are; returns the bytes
/// sent.
fn upload_clear(
    client: &mut Client,
    t: &S3Target,
    open: &OpenSet,
    remote: &RemoteSet,
    buf: &mut Vec<u8>,
    stored: &mut Vec<(String, String)>,
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
        let (bytes, checksum) = upload_file(
            client,
            t,
            &key,
            file,
            entry,
            &set.dir.join(&entry.name),
            buf,
        )?;
        sent += bytes;
        if let Some(checksum) = checksum {
            stored.push((key, checksum));
        }
    }
    Ok(sent)
}

/// Puts a small object of the set (a signature, a seal record) with its digest and the
/// encryption asked for.
fn put_small(client: &mut Client, t: &S3Target, key: &str, bytes: &[u8]) -> Result<()> {
    let digest = crate::hash::hex(&crate::hash::Sha256::digest(bytes));
    let response = client.put(key, bytes, &object_headers(t, Some(&digest)))?;
    refuse_unencrypted(client, t, key, &response)
}

/// Seals every file of `open` this target carries to its recipients and uploads the age files
/// (a new file key each time: nothing of a cut upload can be continued, so one left by a cut
/// run is aborted and its parts said), then the signed record of what was put. Returns the
/// sealed bytes sent.
fn upload_sealed(
    client: &mut Client,
    t: &S3Target,
    open: &OpenSet,
    sealing: &crate::seal::Sealing,
    sealed_by: &str,
    buf: &mut Vec<u8>,
    stored: &mut Vec<(String, String)>,
) -> Result<u64> {
    let set = &open.set;
    let mut sent = 0;
    let mut files = Vec::new();
    for (entry, file) in set.manifest.files.iter().zip(open.files()) {
        if !t.files.carries(entry) {
            continue;
        }
        let name = sealed_name(&entry.name);
        let key = layout::key(&t.prefix, set.id(), &name);
        let path = set.dir.join(&entry.name);
        for upload in client
            .list_uploads(&key)?
            .into_iter()
            .filter(|u| u.key == key)
        {
            let parts = client.list_parts(&key, &upload.upload_id)?;
            let bytes: u64 = parts.iter().map(|p| p.size).sum();
            tracing::warn!(
                key,
                bytes,
                "a cut upload of '{key}' is abandoned: a sealed file cannot be continued (its key is new each time); its {bytes} bytes are sent again"
            );
            client.abort(&key, &upload.upload_id)?;
        }
        let recipients = sealing.recipients_of(entry);
        let source = crate::files::ReadAt { file, offset: 0 };
        // Each part and the whole are hashed by the upload: the sealer hashes the plaintext only.
        let mut sealer = Sealer::new(recipients, source, entry.size)
            .with_context(|| format!("cannot seal '{}'", path.display()))?
            .plain_digest_only();
        let size = sealer.size();
        let parts = layout::parts(size, t.part_size);
        let mismatch = || changed_since_verified(&path);
        let object_of = |digest: &[u8; 32]| FileEntry {
            name: name.clone(),
            size,
            sha256: crate::hash::hex(digest),
        };
        // Once every sealed byte is read, the plaintext's digest is known: checked before
        // anything is put or completed.
        let (object, checksum) = if parts.len() == 1 {
            buf.resize(size as usize, 0);
            std::io::Read::read_exact(&mut sealer, buf)
                .with_context(|| format!("cannot seal '{}'", path.display()))?;
            if crate::hash::hex(&sealer.digests().0) != entry.sha256 {
                return Err(mismatch());
            }
            let digest = crate::hash::Sha256::digest(buf);
            let object = object_of(&digest);
            let headers = object_headers(t, Some(&object.sha256));
            let response = client.put(&key, buf, &headers)?;
            refuse_unencrypted(client, t, &key, &response)?;
            let checksum = verify_object(client, t, &key, &object, &base64(&digest), None)?;
            (object, checksum)
        } else {
            // The sealed digest is known at the end only: the object carries none in its
            // metadata (the record has it).
            let upload_id = start_multipart(client, t, &key, &object_headers(t, None))?;
            let read = |buf: &mut Vec<u8>, _offset: u64, len: u64| -> Result<()> {
                buf.resize(len as usize, 0);
                std::io::Read::read_exact(&mut sealer, buf)
                    .with_context(|| format!("cannot seal '{}'", path.display()))
            };
            let senders = layout::parallel_parts(t.part_size);
            let none = BTreeMap::new();
            let uploaded = upload_parts(client, &key, &upload_id, &parts, &none, senders, read)
                .and_then(|uploaded| match crate::hash::hex(&sealer.digests().0) {
                    plain if plain == entry.sha256 => Ok(uploaded),
                    _ => Err(mismatch()),
                });
            let uploaded = match uploaded {
                Ok(uploaded) => uploaded,
                Err(e) => {
                    let _ = client.abort(&key, &upload_id);
                    return Err(e);
                }
            };
            let object = object_of(&uploaded.whole);
            let checksum = complete_multipart(client, t, &key, &upload_id, &uploaded, &object)?;
            (object, checksum)
        };
        if let Some(checksum) = checksum {
            stored.push((key, checksum));
        }
        sent += size;
        files.push(SealedFile {
            name: entry.name.clone(),
            size,
            sha256: object.sha256,
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
        });
    }
    let (record, signature) = sealing.record((set.id(), &set.manifest_sha256), sealed_by, files)?;
    // The signature first: a record is never there unsigned when a key is configured.
    if let Some(signature) = signature {
        put_small(
            client,
            t,
            &layout::key(&t.prefix, set.id(), layout::SEAL_SIGNATURE),
            signature.as_bytes(),
        )?;
    }
    put_small(
        client,
        t,
        &layout::key(&t.prefix, set.id(), SEAL_NAME),
        &record,
    )?;
    Ok(sent)
}

/// Uploads one file (one PUT up to a part, else a multipart upload that continues one a cut
/// run left); checks the whole file's SHA-256 against the manifest and the server's checksum
/// against the parts sent. Returns the bytes sent in this run, and the checksum the server
/// stored, when it keeps one.
fn upload_file(
    client: &mut Client,
    t: &S3Target,
    key: &str,
    file: &File,
    entry: &FileEntry,
    path: &std::path::Path,
    buf: &mut Vec<u8>,
) -> Result<(u64, Option<String>)> {
    let headers = object_headers(t, Some(&entry.sha256));
    let parts = layout::parts(entry.size, t.part_size);
    let mismatch = || changed_since_verified(path);
    let read = |buf: &mut Vec<u8>, offset: u64, len: u64| -> Result<()> {
        buf.resize(len as usize, 0);
        file.read_exact_at(buf, offset)
            .with_context(|| format!("cannot read '{}'", path.display()))?;
        // Read once for this bucket: out of the cache behind us.
        crate::files::drop_cached(file, offset, len);
        Ok(())
    };
    if parts.len() == 1 {
        read(buf, 0, entry.size)?;
        let digest = crate::hash::Sha256::digest(buf);
        if crate::hash::hex(&digest) != entry.sha256 {
            return Err(mismatch());
        }
        let response = client.put(key, buf, &headers)?;
        refuse_unencrypted(client, t, key, &response)?;
        let checksum = verify_object(client, t, key, entry, &base64(&digest), None)?;
        return Ok((entry.size, checksum));
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
        None => (start_multipart(client, t, key, &headers)?, Vec::new()),
    };
    let held: BTreeMap<u32, &crate::s3::xml::Part> = held.iter().map(|p| (p.number, p)).collect();
    let senders = layout::parallel_parts(t.part_size);
    let uploaded = upload_parts(client, key, &upload_id, &parts, &held, senders, read)?;
    if crate::hash::hex(&uploaded.whole) != entry.sha256 {
        client.abort(key, &upload_id)?;
        return Err(mismatch());
    }
    let checksum = complete_multipart(client, t, key, &upload_id, &uploaded, entry)?;
    Ok((uploaded.sent, checksum))
}

/// A local file that no longer hashes to its manifest: nothing of it is put.
fn changed_since_verified(path: &std::path::Path) -> anyhow::Error {
    anyhow::anyhow!(
        "'{}' does not match its manifest (changed or damaged since it was verified): not uploaded",
        path.display()
    )
}

/// Starts a multipart upload of `key`; one whose answer shows another encryption than the one
/// asked for is aborted.
fn start_multipart(
    client: &mut Client,
    t: &S3Target,
    key: &str,
    headers: &[(&str, String)],
) -> Result<String> {
    let (id, response) = client.create_multipart(key, headers)?;
    if let Err(e) = check_encryption(t, key, &response, true) {
        client.abort(key, &id)?;
        return Err(e);
    }
    Ok(id)
}

/// Completes an upload whose parts are all there and holds the stored object to `object` (its
/// size, the whole digest, the parts' composite checksum); returns the checksum the server
/// stored, when it keeps one.
fn complete_multipart(
    client: &mut Client,
    t: &S3Target,
    key: &str,
    upload_id: &str,
    uploaded: &Uploaded,
    object: &FileEntry,
) -> Result<Option<String>> {
    let response = client.complete(key, upload_id, &uploaded.completed)?;
    check_encryption(t, key, &response, true)?;
    let composite = layout::composite_checksum(&uploaded.digests);
    verify_object(
        client,
        t,
        key,
        object,
        &base64(&uploaded.whole),
        Some(&composite),
    )
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
    mut read: impl FnMut(&mut Vec<u8>, u64, u64) -> Result<()>,
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
/// was sent, the encryption asked for. Returns the checksum it stored, when it keeps one.
fn verify_object(
    client: &mut Client,
    t: &S3Target,
    key: &str,
    entry: &FileEntry,
    whole_b64: &str,
    composite: Option<&str>,
) -> Result<Option<String>> {
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
    Ok(reported.map(str::to_string))
}
