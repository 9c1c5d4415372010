//! What a bucket holds under the target's prefix, read from its listing and manifests.

use super::layout::{self, MANIFEST};
use crate::config::{Carried, S3Target};
use crate::manifest::Manifest;
use crate::protocol::HeldSet;
use crate::s3::Client;
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
    /// The sets the bucket holds as [`crate::protocol::wants()`] sees them: damaged when a file
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

/// Set `id` as the bucket holds it, for `fetch`: its manifest and the files present at their
/// manifest size, each downloaded within that size.
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
    let (mut files, mut lacking) = (Vec::new(), Vec::new());
    for f in &manifest.files {
        let key = layout::key(&t.prefix, id, &f.name);
        match remote.objects.get(&f.name) {
            Some(o) if o.size == f.size => files.push(f.name.clone()),
            Some(o) => lacking.push(format!(
                "object '{key}' in bucket '{}' holds {} bytes, its manifest says {}",
                t.bucket, o.size, f.size
            )),
            None if t.files.carries(f) => lacking.push(format!(
                "object '{key}' is missing from bucket '{}'",
                t.bucket
            )),
            None => lacking.push(format!(
                "'{}' is not carried by bucket '{}' (files = \"{}\")",
                f.name,
                t.bucket,
                t.files.as_str()
            )),
        }
    }
    let (prefix, id) = (t.prefix.clone(), id.to_string());
    Ok(HeldCopy {
        manifest_sha256: crate::manifest::digest(&bytes),
        manifest,
        files,
        lacking,
        copy: Box::new(move |entry, dest| {
            let key = layout::key(&prefix, &id, &entry.name);
            let mut out = std::io::BufWriter::with_capacity(1 << 20, dest);
            client.get(&key, &mut out, entry.size)?;
            std::io::Write::flush(&mut out)?;
            Ok(())
        }),
    })
}
