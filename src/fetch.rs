//! `etcd-backup fetch [--from DIR|TARGET] SET`: a set from another store (a directory target,
//! an NFS export, a peer's disk, a bucket) into the local one, each file from the first source
//! that holds a sound copy. Each copy is checked against the manifest (the snapshot
//! deep-checked) after it is written.

use crate::files::{FILE_MODE, copy_exactly};
use crate::manifest::FileEntry;
use crate::store::{Store, StoredSet};
use anyhow::{Context, Result, bail, ensure};
use std::fs::{self};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

/// The `fetch` command: resolves `--from` (a directory, a target id or a bucket name; every
/// configured target when `None`), then under the store lock [`fetch`]es set `id`. Returns the
/// set, what was done and where each file came from.
pub fn run(
    settings: &crate::config::Settings,
    from: Option<&str>,
    id: &str,
) -> Result<(StoredSet, Fetched, Vec<String>)> {
    use crate::config::TargetConfig;
    use crate::targets::Target;
    let configured: Vec<(String, Source)> = settings
        .spray
        .targets
        .iter()
        .map(|t| match t {
            TargetConfig::Dir(d) => (
                crate::targets::dir::DirStore(d.clone()).id(),
                Source::Dir(d.path.clone()),
            ),
            TargetConfig::S3(s) => (
                crate::targets::s3::Bucket(s.clone()).id(),
                Source::Bucket(Box::new(s.clone())),
            ),
        })
        .collect();
    let sources: Vec<Source> = match from {
        Some(path) if path.starts_with('/') => vec![Source::Dir(std::path::PathBuf::from(path))],
        Some(name) => {
            let matching: Vec<Source> = configured
                .iter()
                .filter(|(target_id, source)| {
                    target_id == name || matches!(source, Source::Bucket(t) if t.bucket == name)
                })
                .map(|(_, source)| source.clone())
                .collect();
            if matching.is_empty() {
                let ids: Vec<&str> = configured.iter().map(|(i, _)| i.as_str()).collect();
                bail!(
                    "--from '{name}' is neither a directory (an absolute path) nor a configured target (ids: {}; or a bucket name)",
                    if ids.is_empty() {
                        "none".to_string()
                    } else {
                        ids.join(", ")
                    }
                );
            }
            matching
        }
        None => configured.into_iter().map(|(_, s)| s).collect(),
    };
    if sources.is_empty() {
        bail!(
            "no store to fetch set '{id}' from: give --from DIR (no [[spray.target]] is configured)"
        );
    }
    let store = Store::open(&settings.store.root)?;
    let _lock = store.lock(settings.store.lock_wait)?;
    let timeouts = (settings.spray.connect_timeout, settings.spray.io_timeout);
    let floor = settings.retention.min_free_space.unwrap_or(0);
    fetch(&store, &sources, id, timeouts, floor)
        .with_context(|| format!("set '{id}' could not be fetched"))
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

/// Where `fetch` can get a set from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A directory store (a dir target, an NFS export, a dead master's disk).
    Dir(std::path::PathBuf),
    /// An S3 target (which may carry only one of the two files).
    Bucket(Box<crate::config::S3Target>),
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::Dir(path) => format!("'{}'", path.display()),
            Source::Bucket(t) => format!(
                "bucket '{}' at {}{}",
                t.bucket,
                t.endpoint,
                if t.prefix.is_empty() {
                    String::new()
                } else {
                    format!(" (prefix '{}')", t.prefix)
                }
            ),
        }
    }
}

/// What one source holds of a set: its manifest and the files it can give.
struct Held {
    manifest: crate::manifest::Manifest,
    manifest_sha256: String,
    files: Vec<String>,
    from: Opened,
}

enum Opened {
    Dir(StoredSet),
    Bucket(Box<crate::s3::Client>, crate::config::S3Target),
}

fn look(source: &Source, id: &str, timeouts: (Duration, Duration)) -> Result<Held> {
    match source {
        Source::Dir(from) => {
            let Some(store) = Store::existing(from) else {
                bail!("no store at '{}'", from.display());
            };
            let set = store.get(id)?;
            if let Some(problem) = &set.problem {
                bail!("set '{id}' there is not sound: {problem}");
            }
            Ok(Held {
                manifest: set.manifest.clone(),
                manifest_sha256: set.manifest_sha256.clone(),
                files: set.manifest.files.iter().map(|f| f.name.clone()).collect(),
                from: Opened::Dir(set),
            })
        }
        Source::Bucket(t) => {
            use crate::targets::s3::layout;
            let mut client = crate::s3::Client::open(t, timeouts.0, timeouts.1)?;
            let objects = client.list(&format!("{}{id}/", layout::sets_prefix(&t.prefix)))?;
            let listing = layout::group(&t.prefix, &objects);
            let Some(remote) = listing.sets.get(id).filter(|s| s.has_manifest()) else {
                bail!("no set '{id}' there");
            };
            let bytes = client.get_small(&layout::key(&t.prefix, id, layout::MANIFEST), 1 << 20)?;
            let manifest = crate::manifest::Manifest::parse(&bytes)
                .map_err(|e| anyhow::anyhow!("the manifest of '{id}' there is unreadable: {e}"))?;
            ensure!(
                manifest.id == id,
                "the manifest there is of set '{}'",
                manifest.id
            );
            let files = manifest
                .files
                .iter()
                .filter(|f| {
                    remote
                        .objects
                        .get(&f.name)
                        .is_some_and(|o| o.size == f.size)
                })
                .map(|f| f.name.clone())
                .collect();
            Ok(Held {
                manifest_sha256: crate::manifest::digest(&bytes),
                manifest,
                files,
                from: Opened::Bucket(Box::new(client), (**t).clone()),
            })
        }
    }
}

/// Writes the file `entry` of set `id` from `held` to `to` (created 0600, fsynced): no more
/// than its manifest's size, whatever the source sends.
fn copy_from(held: &mut Held, id: &str, entry: &FileEntry, to: &Path) -> Result<()> {
    let name = &entry.name;
    let mut dest = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(to)
        .with_context(|| format!("cannot create '{}'", to.display()))?;
    match &mut held.from {
        Opened::Dir(set) => {
            let from = set.dir.join(name);
            let mut source = crate::files::open_regular(&from)?;
            copy_exactly(&mut source, &mut dest, entry.size)
                .with_context(|| format!("cannot copy '{}'", from.display()))?;
        }
        Opened::Bucket(client, t) => {
            let key = crate::targets::s3::layout::key(&t.prefix, id, name);
            let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut dest);
            client.get(&key, &mut out, entry.size)?;
            std::io::Write::flush(&mut out)?;
        }
    }
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
    sources: &[Source],
    id: &str,
    timeouts: (Duration, Duration),
    floor: u64,
) -> Result<(StoredSet, Fetched, Vec<String>)> {
    let mut failures = Vec::new();
    let mut held = Vec::new();
    for source in sources {
        match look(source, id, timeouts) {
            Ok(h) => held.push((source, h)),
            Err(e) => failures.push(format!("{}: {e:#}", source.describe())),
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
                source.describe()
            ));
        }
        same
    });
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
                let copied = copy_from(h, id, file, &to).and_then(|()| {
                    crate::verify::check_file_against(
                        &to,
                        file,
                        manifest.checks.etcd.as_ref(),
                        true,
                    )
                });
                match copied {
                    Ok(()) => {
                        origins.push(format!("{} from {}", file.name, source.describe()));
                        done = true;
                        break;
                    }
                    Err(e) => {
                        failures.push(format!("{}: {e:#}", source.describe()));
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
