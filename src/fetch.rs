//! `etcd-backup fetch [--from DIR|TARGET] SET`: a set from another store (a directory target,
//! an NFS export, a peer's disk, a bucket) into the local one, each file from the first source
//! that holds a sound copy. Each copy is checked against the manifest (the snapshot
//! deep-checked) after it is written.

use crate::config::Settings;
use crate::manifest::FileEntry;
use crate::store::{Store, StoredSet};
use crate::targets::{HeldCopy, Target};
use anyhow::{Context, Result, bail, ensure};
use std::fs;
use std::path::Path;

/// The `fetch` command: resolves `--from` (a directory, a target id or a bucket name; every
/// configured target when `None`), then under the store lock [`fetch`]es set `id`. Returns the
/// set, what was done and where each file came from.
pub fn run(
    settings: &Settings,
    from: Option<&str>,
    identities: &[std::path::PathBuf],
    id: &str,
) -> Result<(StoredSet, Fetched, Vec<String>)> {
    let opening = Opening {
        identities: crate::seal::keys::load_identities(identities)?,
        signers: crate::seal::signers(&settings.seal.signers),
        require_signature: settings.seal.require_signature,
    };
    let sources =
        crate::targets::named(settings, from).map_err(|e| anyhow::anyhow!("--from {e:#}"))?;
    if sources.is_empty() {
        bail!(
            "no store to fetch set '{id}' from: give --from DIR (no [[spray.target]] is configured)"
        );
    }
    let store = Store::open(&settings.store.root)?;
    let _lock = store.lock(settings.store.lock_wait)?;
    let floor = settings.retention.min_free_space.unwrap_or(0);
    fetch(&store, &sources, id, floor, &opening)
        .with_context(|| format!("set '{id}' could not be fetched"))
}

/// What `fetch` opens sealed copies with, and judges their signatures by.
#[derive(Default)]
pub struct Opening {
    pub identities: Vec<age::x25519::Identity>,
    pub signers: Vec<ssh_key::PublicKey>,
    pub require_signature: bool,
}

/// What `fetch` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    Committed,
    /// The local copy was damaged and is replaced.
    Repaired,
    /// The local store already holds it, sound.
    AlreadyHeld,
}

/// Writes the file `entry` from `held` to `to` (created 0600, fsynced): no more than its
/// manifest's size, whatever the source sends.
fn copy_from(
    held: &mut HeldCopy,
    entry: &FileEntry,
    to: &Path,
    identities: &[age::x25519::Identity],
) -> Result<()> {
    let mut dest = crate::files::create_private(to)?;
    (held.copy)(entry, &mut dest, identities)?;
    dest.sync_all()
        .with_context(|| format!("cannot write '{}'", to.display()))
}

/// Fetches set `id` into `store` (the caller holds its lock) from `sources`, each file from the
/// first source that holds it and gives a sound copy: a set split over two targets (snapshot
/// here, resources there) comes back whole. Sources are only read; every copy is checked
/// against the manifest (the snapshot deep-checked) before the set is committed; a local set
/// under the same id with another manifest is never replaced. Returns where each file came
/// from.
/// The set must fit with `floor` bytes (`min_free_space`) left free.
pub fn fetch(
    store: &Store,
    sources: &[Box<dyn Target>],
    id: &str,
    floor: u64,
    opening: &Opening,
) -> Result<(StoredSet, Fetched, Vec<String>)> {
    let mut failures = Vec::new();
    let mut held = Vec::new();
    for source in sources {
        match source.open_set(id) {
            Ok(h) => held.push((source, h)),
            Err(e) => failures.push(format!("{}: {e:#}", source.describe_source())),
        }
    }
    let Some((_, first)) = held.first() else {
        bail!(
            "set '{id}' is on none of the sources: {}",
            failures.join("; ")
        );
    };
    let (manifest, manifest_sha256) = (first.manifest.clone(), first.manifest_sha256.clone());
    held.retain(|(source, h)| {
        let same = h.manifest_sha256 == manifest_sha256;
        if !same {
            failures.push(format!(
                "{}: holds another manifest of '{id}'",
                source.describe_source()
            ));
        }
        same
    });
    let signature = judge_signatures(&held, &manifest, opening, id)?;
    let local = store.get(id).ok();
    if let Some(local) = &local {
        ensure!(
            local.manifest_sha256 == manifest_sha256,
            "set '{id}' is held here with another manifest: not replaced"
        );
        if local.problem.is_none() {
            return Ok((local.clone(), Fetched::AlreadyHeld, Vec::new()));
        }
    }
    // A file no source holds is found from the listings, before a byte is downloaded.
    let nowhere: Vec<&str> = manifest
        .files
        .iter()
        .filter(|f| !held.iter().any(|(_, h)| h.files.contains(&f.name)))
        .map(|f| f.name.as_str())
        .collect();
    if !nowhere.is_empty() {
        let why: Vec<String> = held
            .iter()
            .flat_map(|(source, h)| {
                h.lacking
                    .iter()
                    .map(move |l| format!("{}: {l}", source.describe_source()))
            })
            .chain(failures.iter().cloned())
            .collect();
        bail!(
            "no source holds '{}' of set '{id}': {}",
            nowhere.join("', '"),
            why.join("; ")
        );
    }
    // What the manifest promises must fit above the floor before a byte is copied.
    store.ensure_room(&format!("set '{id}'"), manifest.total_size(), floor)?;
    let staging = store.new_staging("fetch")?;
    let result = (|| {
        let mut origins = Vec::new();
        for file in &manifest.files {
            let to = staging.join(&file.name);
            let mut done = false;
            for (source, h) in held
                .iter_mut()
                .filter(|(_, h)| h.files.contains(&file.name))
            {
                let copied = copy_from(h, file, &to, &opening.identities).and_then(|()| {
                    crate::verify::check_file_against(
                        &to,
                        file,
                        manifest.checks.etcd.as_ref(),
                        true,
                    )
                });
                match copied {
                    Ok(()) => {
                        origins.push(format!("{} from {}", file.name, source.describe_source()));
                        done = true;
                        break;
                    }
                    Err(e) => {
                        failures.push(format!("{}: {e:#}", source.describe_source()));
                        let _ = fs::remove_file(&to);
                    }
                }
            }
            if !done {
                bail!(
                    "no source gave a sound copy of '{}' of set '{id}'{}",
                    file.name,
                    if failures.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", failures.join("; "))
                    }
                );
            }
        }
        if let Some(signature) = &signature {
            Store::write_signature(&staging, signature)?;
        }
        let (set, how) = match &local {
            Some(_) => (
                store.replace_damaged(&staging, &manifest, &manifest_sha256)?,
                Fetched::Repaired,
            ),
            None => (store.commit(&staging, &manifest)?, Fetched::Committed),
        };
        Ok((set, how, origins))
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

/// The signature to keep with the set: the first held copy's that a trusted signer made.
/// Without one, the set is refused when signatures are required (naming the set and the key);
/// a signature that does not verify is refused always.
fn judge_signatures<T: std::ops::Deref<Target = dyn Target>>(
    held: &[(&T, HeldCopy)],
    manifest: &crate::manifest::Manifest,
    opening: &Opening,
    id: &str,
) -> Result<Option<Vec<u8>>> {
    use crate::seal::sign::{Verdict, check};
    let text = manifest.to_json();
    let mut refusals = Vec::new();
    let mut unverified = None;
    for (source, h) in held {
        let verdict = check(&opening.signers, &text, h.signature.as_deref());
        if let Verdict::Signed(_) = verdict {
            return Ok(h.signature.clone());
        }
        match verdict.problem(opening.require_signature, &format!("set '{id}'")) {
            Some(problem) => refusals.push(format!("{}: {problem}", source.describe_source())),
            None => unverified = unverified.or(h.signature.clone()),
        }
    }
    if !refusals.is_empty() {
        bail!("{}", refusals.join("; "));
    }
    Ok(unverified)
}
