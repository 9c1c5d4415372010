//! One set's transfer on the receiving end: cut transfers kept in staging and resumed, each
//! file written within its manifest's size and hashed (the snapshot's trailer checked) as it
//! arrives, and the set committed only when every file matches.

use super::{Sender, lock_telling_sender, name};
use crate::config::Settings;
use crate::files::{ensure_private_dir, write_atomic};
use crate::manifest::{FileEntry, MANIFEST_MAX_BYTES, Manifest};
use crate::protocol::{Conn, Frame, Message, Offer, Partial, ProtocolError, Stream, Want};
use crate::store::{RECEIVE_STAGING_PREFIX, Store};
use crate::verify::FileCheck;
use anyhow::{Context, Result, anyhow, bail};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The offered manifest, kept beside a partial transfer so a resume can be matched to it.
pub(super) const OFFER_FILE: &str = ".offer-manifest.json";
const READ_BUF_BYTES: usize = 1 << 20;

/// Cut transfers in staging: the manifest digest each was for and the bytes held per file. A
/// partial that is not one (no readable offer manifest of its set) or holds more than its
/// manifest promised is removed here.
pub(super) fn partials(store: &Store) -> Result<BTreeMap<String, Partial>> {
    let mut found = BTreeMap::new();
    let staging = store.staging_dir();
    for entry in
        fs::read_dir(&staging).with_context(|| format!("cannot list '{}'", staging.display()))?
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_prefix(RECEIVE_STAGING_PREFIX) else {
            continue;
        };
        if !entry.file_type()?.is_dir() {
            continue;
        }
        match partial(&entry.path(), id) {
            Ok(partial) => {
                found.insert(id.to_string(), partial);
            }
            Err(e) => {
                tracing::info!("removing a partial transfer: {e:#}");
                remove_partial(store, id);
            }
        }
    }
    Ok(found)
}

/// What the partial transfer in `dir` holds, checked against the manifest it was for.
fn partial(dir: &Path, id: &str) -> Result<Partial> {
    let text = crate::files::read_regular(&dir.join(OFFER_FILE), MANIFEST_MAX_BYTES)?;
    let manifest = Manifest::parse(&text).map_err(|e| anyhow!("'{}': {e}", dir.display()))?;
    if manifest.id != id {
        bail!("'{}' holds a manifest of '{}'", dir.display(), manifest.id);
    }
    let mut held = BTreeMap::new();
    for file in fs::read_dir(dir)? {
        let file = file?;
        let name = file.file_name().to_string_lossy().into_owned();
        if name == OFFER_FILE {
            continue;
        }
        let meta = file.metadata()?;
        let promised = manifest.files.iter().find(|f| f.name == name);
        match promised {
            Some(entry) if meta.is_file() && meta.len() <= entry.size => {
                held.insert(name, meta.len());
            }
            Some(entry) if meta.is_file() => bail!(
                "'{}' holds {} bytes, more than the {} its manifest promised",
                file.path().display(),
                meta.len(),
                entry.size
            ),
            _ => bail!("'{}' is not part of set '{id}'", file.path().display()),
        }
    }
    Ok(Partial {
        manifest_sha256: crate::manifest::digest(&text),
        held,
    })
}

/// Removes the partial transfer of set `id` (never following a link: `remove_dir_all` does not).
pub(super) fn remove_partial(store: &Store, id: &str) {
    let dir = store
        .staging_dir()
        .join(format!("{RECEIVE_STAGING_PREFIX}{id}"));
    if let Err(e) = fs::remove_dir_all(&dir) {
        tracing::warn!(
            "cannot remove the partial transfer '{}': {e}",
            dir.display()
        );
    }
}

pub(super) fn violation(message: String) -> anyhow::Error {
    ProtocolError::Violation(message).into()
}

/// Receives one set into `staging` and commits it; returns its origin. `asked` is what was
/// asked for, what was offered, and why it is refused if it was asked for only to say so.
pub(super) fn receive_set<S: Stream>(
    settings: &Settings,
    store: &Store,
    conn: &mut Conn<S>,
    asked: (&Want, &Offer, Option<&str>),
    sent: (&str, Option<&str>),
    staging: &Path,
    sender: Sender,
) -> Result<String> {
    let (want, offer, refused) = asked;
    let (manifest_text, signature) = sent;
    let digest = crate::manifest::digest(manifest_text.as_bytes());
    if digest != offer.manifest_sha256 {
        return Err(violation(format!(
            "manifest digest {digest} is not the offered {}",
            offer.manifest_sha256
        )));
    }
    let manifest = Manifest::parse(manifest_text.as_bytes())
        .map_err(|e| violation(format!("manifest refused: {e}")))?;
    if manifest.id != want.id {
        return Err(violation(format!(
            "manifest is for set '{}', not '{}'",
            manifest.id, want.id
        )));
    }
    // What was judged is the offer: the manifest must be what it promised.
    if manifest.total_size() != offer.size || manifest.dirty != offer.dirty {
        return Err(violation(format!(
            "the manifest of '{}' says {} bytes (dirty: {}), its offer said {} (dirty: {})",
            manifest.id,
            manifest.total_size(),
            manifest.dirty,
            offer.size,
            offer.dirty
        )));
    }
    // A signature is judged before a byte of the set is taken: one that does not verify is
    // refused always; an unsigned set or a stranger's when signatures are required.
    let signers = crate::seal::signers(&settings.seal.signers);
    let verdict = crate::seal::sign::check(
        &signers,
        manifest_text.as_bytes(),
        signature.map(str::as_bytes),
    );
    if let Some(problem) = verdict.problem(
        settings.seal.require_signature,
        &format!("set '{}'", manifest.id),
    ) {
        bail!("{problem}: refused by {}", settings.node_name);
    }
    if let Some(why) = refused {
        bail!(
            "set '{}' does not fit in store '{}' on {}: {why}",
            manifest.id,
            store.root().display(),
            settings.node_name
        );
    }
    // A partial transfer for another manifest is stale: start over.
    if crate::files::read_regular(&staging.join(OFFER_FILE), MANIFEST_MAX_BYTES)
        .is_ok_and(|old| old != manifest_text.as_bytes())
    {
        fs::remove_dir_all(staging)
            .with_context(|| format!("cannot clear '{}'", staging.display()))?;
    }
    ensure_private_dir(staging)?;
    write_atomic(staging, OFFER_FILE, manifest_text.as_bytes())?;
    let held = manifest
        .files
        .iter()
        .map(|f| fs::symlink_metadata(staging.join(&f.name)).map_or(0, |m| m.len().min(f.size)))
        .fold(0u64, u64::saturating_add);
    store.ensure_room(
        &format!("set '{}'", manifest.id),
        manifest.total_size().saturating_sub(held),
        settings.retention.min_free_space.unwrap_or(0),
    )?;
    receive_files(conn, staging, &manifest)?;
    match signature {
        Some(signature) => Store::write_signature(staging, signature.as_bytes())?,
        // Nothing of an earlier attempt's is committed with this one.
        None => crate::files::remove_if_present(&staging.join(crate::manifest::SIGNATURE_NAME))?,
    }
    crate::failpoint::hit("receive:before-commit");
    let _lock = lock_telling_sender(
        conn,
        store,
        crate::store::LOCK_FILE,
        settings.store.lock_wait,
        "waiting for the store lock to commit",
    )?;
    if store.sets_dir().join(&manifest.id).exists() {
        // Only a damaged copy of this very manifest is replaced (checked again under the lock).
        store.replace_damaged(staging, &manifest, &digest)?;
    } else {
        store.commit(staging, &manifest)?;
    }
    // A peer's delivery never makes this store delete to make room: whether it fit was
    // decided before it was asked for. The local backup's prune applies the size limits.
    let policy = match sender {
        Sender::Own => settings.retention.clone(),
        Sender::Peer(_) => settings.retention.without_size_pressure(),
    };
    crate::prune::prune(store, &policy, false, settings.not_after())?;
    Ok(manifest.origin)
}

/// The files of `manifest` and its end, each checked as it arrives; then the deep check of
/// the snapshot. Each file is fsynced on a thread of its own from its last byte on, while the
/// next file arrives and the snapshot is deep-checked: the wait for the disk overlaps that
/// work. The scope joins every fsync before this returns, so nothing is committed unsynced.
fn receive_files<S: Stream>(conn: &mut Conn<S>, staging: &Path, manifest: &Manifest) -> Result<()> {
    std::thread::scope(|scope| {
        let mut syncs = Vec::with_capacity(manifest.files.len());
        for file in &manifest.files {
            match conn.next_message()? {
                Message::FileBegin { name, offset } if name == file.name => {
                    let (written, path) = receive_file(conn, staging, file, offset)?;
                    syncs.push(scope.spawn(move || {
                        written
                            .sync_all()
                            .with_context(|| format!("cannot fsync '{}'", path.display()))?;
                        crate::files::drop_cached(&written, 0, 0);
                        anyhow::Ok(())
                    }));
                }
                other => {
                    return Err(violation(format!(
                        "expected file_begin for '{}', got {other:?}",
                        file.name
                    )));
                }
            }
        }
        match conn.next_message()? {
            Message::SetEnd { id } if id == manifest.id => {}
            other => {
                return Err(violation(format!(
                    "expected set_end for '{}', got {}",
                    manifest.id,
                    name(&other)
                )));
            }
        }
        fs::remove_file(staging.join(OFFER_FILE))
            .with_context(|| format!("cannot clean '{}'", staging.display()))?;
        // What arrived is sound as etcd would restore it, and is what the sender's manifest says.
        for file in manifest.files.iter().filter(|f| f.is_snapshot()) {
            crate::verify::deep_check_against(
                &staging.join(&file.name),
                manifest.checks.etcd.as_ref(),
            )?;
        }
        for sync in syncs {
            sync.join().expect("an fsync thread panicked")?;
        }
        Ok(())
    })
}

/// Receives one file into `staging` and checks it against its manifest entry; returns the
/// written (not yet fsynced) file and its path.
fn receive_file<S: Stream>(
    conn: &mut Conn<S>,
    staging: &Path,
    entry: &FileEntry,
    offset: u64,
) -> Result<(File, std::path::PathBuf)> {
    let path = staging.join(&entry.name);
    let mut file = crate::files::open_private(&path)?;
    let on_disk = file.metadata()?.len();
    if offset > on_disk || offset > entry.size {
        return Err(violation(format!(
            "'{}': resume offset {offset} beyond the {on_disk} bytes held",
            entry.name
        )));
    }
    file.set_len(offset)?;
    let mut check =
        FileCheck::of(entry).map_err(|e| violation(format!("'{}': {e}", entry.name)))?;
    // The bytes held from a cut transfer are hashed once more; everything new as it is written.
    hash_prefix(&mut file, offset, &mut check)
        .with_context(|| format!("cannot read '{}'", path.display()))?;
    let mut pos = offset;
    let mut out = crate::files::DirectWriter::new(file, offset)
        .with_context(|| format!("cannot write '{}'", path.display()))?;
    loop {
        match conn.next_frame()? {
            Frame::Data(data) => {
                if pos
                    .checked_add(data.len() as u64)
                    .is_none_or(|end| end > entry.size)
                {
                    return Err(violation(format!(
                        "'{}': more data than its {} bytes",
                        entry.name, entry.size
                    )));
                }
                out.write_all(data)
                    .with_context(|| format!("cannot write '{}'", path.display()))?;
                crate::failpoint::hit("receive:writing");
                check
                    .update(data)
                    .map_err(|e| violation(format!("'{}': {e}", entry.name)))?;
                pos += data.len() as u64;
            }
            Frame::Control(Message::FileEnd { name }) if name == entry.name => break,
            Frame::Control(other) => {
                return Err(violation(format!(
                    "expected data or file_end for '{}', got {}",
                    entry.name,
                    name(&other)
                )));
            }
        }
    }
    if pos != entry.size {
        return Err(violation(format!(
            "'{}': {pos} bytes received, manifest says {}",
            entry.name, entry.size
        )));
    }
    let digest = check
        .finish()
        .map_err(|e| violation(format!("'{}': {e}", entry.name)))?;
    if digest != entry.sha256 {
        return Err(violation(format!(
            "'{}': sha256 {digest} does not match the manifest's {}",
            entry.name, entry.sha256
        )));
    }
    let file = out
        .finish()
        .with_context(|| format!("cannot write '{}'", path.display()))?;
    Ok((file, path))
}

fn hash_prefix(file: &mut File, len: u64, check: &mut FileCheck) -> Result<()> {
    file.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; READ_BUF_BYTES.min(len as usize).max(1)];
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(left as usize);
        file.read_exact(&mut buf[..want])?;
        check.update(&buf[..want]).map_err(|e| anyhow!("{e}"))?;
        left -= want as u64;
    }
    Ok(())
}
