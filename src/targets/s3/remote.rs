//! What a bucket holds under the target's prefix, read from its listing and manifests.

use super::layout::{self, MANIFEST};
use crate::config::{Carried, S3Target};
use crate::manifest::Manifest;
use crate::protocol::HeldSet;
use crate::s3::Client;
use anyhow::Result;
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
