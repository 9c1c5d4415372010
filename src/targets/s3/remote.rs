//! What a bucket holds under the target's prefix, read from its listing and manifests.

use super::layout::{self, MANIFEST};
use crate::config::{Carried, S3Target};
use crate::manifest::{FileEntry, Manifest, SIGNATURE_NAME};
use crate::protocol::HeldSet;
use crate::s3::Client;
use crate::seal::record::{Record, SEAL_MAX_BYTES, SEAL_NAME, Seal};
use crate::seal::sign::SIGNATURE_MAX_BYTES;
use crate::targets::HeldCopy;
use anyhow::{Result, bail, ensure};
use std::collections::BTreeMap;

/// Manifests are small; anything larger under that name is not one of ours.
const MAX_MANIFEST_BYTES: usize = 1 << 20;

/// What the bucket holds under the prefix: the sets with a readable manifest.
pub struct Remote {
    pub listing: layout::Listing,
    /// Set id → (manifest, its raw bytes' SHA-256 hex).
    pub manifests: BTreeMap<String, (Manifest, String)>,
    /// Set id → its signatures and seal record, for the sets with a manifest.
    pub extras: BTreeMap<String, Extras>,
}

/// What a set directory holds beside its manifest.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// `manifest.json.sig`.
    pub signature: Option<Vec<u8>>,
    /// `seal.json` of a sealed copy and its signature, checked against the manifest (or why it
    /// is not one).
    pub seal: Option<Result<Record, String>>,
}

impl Extras {
    /// The objects of the files `carried`, as this copy holds them (sealed or not); an error
    /// names what makes the copy unusable.
    pub fn objects(&self, manifest: &Manifest, carried: Carried) -> Result<Vec<FileEntry>, String> {
        let seal = match &self.seal {
            None => None,
            Some(Ok(record)) => Some(&record.seal),
            Some(Err(e)) => return Err(format!("its seal record is unusable: {e}")),
        };
        layout::carried_objects(manifest, carried, seal)
    }

    /// The recipients each sealed file was sealed to, for listings.
    pub fn sealed_to(&self) -> BTreeMap<String, Vec<String>> {
        match &self.seal {
            Some(Ok(record)) => record.seal.recipients(),
            _ => BTreeMap::new(),
        }
    }
}

/// Reads the signatures and seal record set `id` has beside its manifest.
fn read_extras(
    client: &mut Client,
    t: &S3Target,
    id: &str,
    set: &layout::RemoteSet,
    manifest: &Manifest,
    digest: &str,
) -> Result<Extras> {
    let mut get = |name: &str, max: u64| -> Result<Option<Vec<u8>>> {
        if !set.objects.contains_key(name) {
            return Ok(None);
        }
        client
            .get_small(&layout::key(&t.prefix, id, name), max as usize)
            .map(Some)
    };
    let signature = get(SIGNATURE_NAME, SIGNATURE_MAX_BYTES)?;
    let seal_bytes = get(SEAL_NAME, SEAL_MAX_BYTES)?;
    let seal_signature = get(layout::SEAL_SIGNATURE, SIGNATURE_MAX_BYTES)?;
    Ok(Extras {
        signature,
        seal: seal_bytes.map(|bytes| {
            Seal::parse(&bytes, manifest, digest).map(|seal| Record {
                seal,
                bytes,
                signature: seal_signature,
            })
        }),
    })
}

/// Lists the bucket and reads every manifest.
pub fn read_remote(client: &mut Client, t: &S3Target) -> Result<Remote> {
    client.head_bucket()?;
    let objects = client.list(&layout::sets_prefix(&t.prefix))?;
    let listing = layout::group(&t.prefix, &objects);
    let mut manifests = BTreeMap::new();
    let mut extras = BTreeMap::new();
    for (id, set) in &listing.sets {
        if !set.has_manifest() {
            continue;
        }
        let bytes = client.get_small(&layout::key(&t.prefix, id, MANIFEST), MAX_MANIFEST_BYTES)?;
        match Manifest::parse(&bytes) {
            Ok(m) if &m.id == id => {
                let digest = crate::manifest::digest(&bytes);
                extras.insert(id.clone(), read_extras(client, t, id, set, &m, &digest)?);
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
    Ok(Remote {
        listing,
        manifests,
        extras,
    })
}

impl Remote {
    /// The sets the bucket holds as [`crate::protocol::wants()`] sees them: damaged when a file
    /// this target carries is missing or of another size (for a sealed copy: its age file, as
    /// its record says), or its seal record is unusable.
    pub fn held(&self, carried: Carried) -> Vec<HeldSet> {
        self.manifests
            .iter()
            .map(|(id, (manifest, digest))| HeldSet {
                info: manifest.info(),
                manifest_sha256: digest.clone(),
                damaged: !self.whole(id, manifest, carried),
            })
            .collect()
    }

    /// Every object set `id` should hold is there, of its size.
    pub fn whole(&self, id: &str, manifest: &Manifest, carried: Carried) -> bool {
        self.extras
            .get(id)
            .cloned()
            .unwrap_or_default()
            .objects(manifest, carried)
            .is_ok_and(|objects| layout::lacking(&self.listing.sets[id], &objects).is_empty())
    }
}

/// Set `id` as the bucket holds it, for `fetch`: its manifest and the files present at their
/// size (sealed ones as their record says), each downloaded within that size; a sealed file is
/// opened with the identities `fetch` was given, its sealed bytes held to the record's SHA-256.
pub fn open_set(mut client: Client, t: &S3Target, id: &str) -> Result<HeldCopy> {
    let objects = client.list(&format!("{}{id}/", layout::sets_prefix(&t.prefix)))?;
    let listing = layout::group(&t.prefix, &objects);
    let Some(remote) = listing.sets.get(id).filter(|s| s.has_manifest()) else {
        bail!("no set '{id}' there");
    };
    let bytes = client.get_small(&layout::key(&t.prefix, id, MANIFEST), MAX_MANIFEST_BYTES)?;
    let manifest = Manifest::parse(&bytes)
        .map_err(|e| anyhow::anyhow!("the manifest of '{id}' there is unreadable: {e}"))?;
    ensure!(
        manifest.id == id,
        "the manifest there is of set '{}'",
        manifest.id
    );
    let digest = crate::manifest::digest(&bytes);
    let extras = read_extras(&mut client, t, id, remote, &manifest, &digest)?;
    let seal = match &extras.seal {
        Some(Err(e)) => bail!("the seal record of '{id}' there is unusable: {e}"),
        Some(Ok(record)) => Some(record.seal.clone()),
        None => None,
    };
    let (mut files, mut lacking) = (Vec::new(), Vec::new());
    for f in &manifest.files {
        let object = crate::seal::record::object(f, seal.as_ref());
        let name = object.as_ref().map_or(&f.name, |o| &o.name);
        let key = layout::key(&t.prefix, id, name);
        match (&object, remote.objects.get(name)) {
            (Some(o), Some(held)) if held.size == o.size => files.push(f.name.clone()),
            (Some(o), Some(held)) => lacking.push(format!(
                "object '{key}' in bucket '{}' holds {} bytes, {} says {}",
                t.bucket,
                held.size,
                if seal.is_some() {
                    "its seal record"
                } else {
                    "its manifest"
                },
                o.size
            )),
            (Some(_), None) if t.files.carries(f) => lacking.push(format!(
                "object '{key}' is missing from bucket '{}'",
                t.bucket
            )),
            _ => lacking.push(format!(
                "'{}' is not carried by bucket '{}' (files = \"{}\")",
                f.name,
                t.bucket,
                t.files.as_str()
            )),
        }
    }
    let (prefix, id) = (t.prefix.clone(), id.to_string());
    Ok(HeldCopy {
        manifest_sha256: digest,
        manifest,
        files,
        lacking,
        signature: extras.signature,
        copy: Box::new(move |entry, dest, identities| {
            let Some(sealed) = seal.as_ref().and_then(|s| s.file(&entry.name)) else {
                let key = layout::key(&prefix, &id, &entry.name);
                let mut out = std::io::BufWriter::with_capacity(1 << 20, dest);
                client.get(&key, &mut out, entry.size)?;
                std::io::Write::flush(&mut out)?;
                return Ok(());
            };
            let key = layout::key(&prefix, &id, &crate::seal::record::sealed_name(&entry.name));
            open_sealed(&mut client, &key, sealed, entry, dest, identities)
        }),
    })
}

/// Downloads the sealed object `key` and writes its plaintext into `dest`: the download runs
/// on a thread of its own into a pipe; this side decrypts, holding the sealed bytes to the
/// record and the plaintext to the manifest's size.
pub(super) fn open_sealed(
    client: &mut Client,
    key: &str,
    sealed: &crate::seal::record::SealedFile,
    entry: &FileEntry,
    dest: &mut std::fs::File,
    identities: &[age::x25519::Identity],
) -> Result<()> {
    let (reader, mut writer) = std::io::pipe()?;
    // A pipe of 1 MiB (Linux's default most) instead of 64 KiB: the two threads hand over
    // sixteen times fewer times.
    let _ = nix::fcntl::fcntl(&writer, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
    std::thread::scope(|scope| {
        let download = scope.spawn(move || client.get(key, &mut writer, sealed.size));
        let name = format!("'{key}'");
        let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut *dest);
        let opened = crate::seal::stream::open_into(
            reader,
            (sealed, entry.size),
            identities,
            &name,
            &mut out,
        )
        .and_then(|()| std::io::Write::flush(&mut out).map_err(Into::into));
        // The pipe's reading end is gone: a download still running ends on a broken pipe.
        let downloaded = download
            .join()
            .map_err(|_| anyhow::anyhow!("the download of '{key}' panicked"))?;
        match (opened, downloaded) {
            (Ok(()), Ok(())) => Ok(()),
            (Ok(()), Err(e)) => Err(e),
            // What the decryption found is the cause; a broken pipe is its consequence.
            (Err(e), _) => Err(e),
        }
    })
}
