//! `seal.json`: a sealed copy's record of what it holds — the manifest it seals (by digest) and,
//! per file, the sealed object's size, SHA-256 and the recipients it was sealed to. Signed
//! (`seal.json.sig`), it lets anyone without an identity verify and heal the copy.

use crate::manifest::{FileEntry, Manifest, parse_backup_name};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const SEAL_NAME: &str = "seal.json";
/// Its signature beside it.
pub const SEAL_SIGNATURE_NAME: &str = "seal.json.sig";
/// The suffix of a sealed file: `snapshot_<stamp>.db.age`.
pub const AGE_SUFFIX: &str = ".age";
/// A record names two files and their recipients: anything larger is not one of ours.
pub const SEAL_MAX_BYTES: u64 = 64 << 10;
const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seal {
    pub format: u32,
    pub id: String,
    /// [`crate::manifest::digest`] of the manifest whose files are sealed here.
    pub manifest_sha256: String,
    pub sealed: DateTime<Utc>,
    /// The node that sealed the copy.
    pub sealed_by: String,
    pub files: Vec<SealedFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedFile {
    /// The plaintext file's name in the manifest; the object is this plus [`AGE_SUFFIX`].
    pub name: String,
    /// The sealed object's size and SHA-256 (hex).
    pub size: u64,
    pub sha256: String,
    /// The age recipients (`age1…`) it was sealed to.
    pub recipients: Vec<String>,
}

/// A sealed copy's record as held: parsed, its bytes (what its signature signs) and its
/// signature, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seal: Seal,
    pub bytes: Vec<u8>,
    pub signature: Option<Vec<u8>>,
}

/// The objects a copy holds for `files` of its manifest: the files themselves, or in a sealed
/// copy their age files as its record describes them (size and SHA-256 of the sealed bytes).
/// An error when the record lacks one.
pub fn objects<'a>(
    files: impl Iterator<Item = &'a FileEntry>,
    seal: Option<&Seal>,
) -> Result<Vec<FileEntry>, String> {
    files
        .map(|f| {
            object(f, seal).ok_or_else(|| format!("the seal record does not name '{}'", f.name))
        })
        .collect()
}

/// The object a copy holds for the file `f` of its manifest: the file itself, or in a sealed
/// copy its age file as the record describes it; `None` when the record lacks it.
pub fn object(f: &FileEntry, seal: Option<&Seal>) -> Option<FileEntry> {
    match seal {
        None => Some(f.clone()),
        Some(seal) => seal.file(&f.name).map(|s| FileEntry {
            name: sealed_name(&f.name),
            size: s.size,
            sha256: s.sha256.clone(),
        }),
    }
}

/// The sealed object of a plaintext file name.
pub fn sealed_name(name: &str) -> String {
    format!("{name}{AGE_SUFFIX}")
}

impl Seal {
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a seal record always serializes");
        out.push(b'\n');
        out
    }

    /// Parses a record read from a target and checks it against the manifest it claims to
    /// seal: its set, its digest, files of that manifest only, sizes an age file of each could
    /// have.
    pub fn parse(bytes: &[u8], manifest: &Manifest, manifest_sha256: &str) -> Result<Seal, String> {
        if bytes.len() as u64 > SEAL_MAX_BYTES {
            return Err(format!(
                "{} bytes, more than a seal record takes",
                bytes.len()
            ));
        }
        let seal: Seal =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid seal record: {e}"))?;
        if seal.format != FORMAT {
            return Err(format!(
                "seal record format {} is not supported",
                seal.format
            ));
        }
        if seal.id != manifest.id || seal.manifest_sha256 != manifest_sha256 {
            return Err(format!(
                "the seal record is of set '{}' with manifest {}, not of this manifest",
                seal.id, seal.manifest_sha256
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for file in &seal.files {
            let Some(entry) = manifest.files.iter().find(|f| f.name == file.name) else {
                return Err(format!(
                    "the seal record names '{}', not in the manifest",
                    file.name
                ));
            };
            if !names.insert(&file.name) || parse_backup_name(&file.name).is_none() {
                return Err(format!("the seal record names '{}' twice", file.name));
            }
            if !super::payload::plausible_size(entry.size, file.size) {
                return Err(format!(
                    "the seal record gives '{}' {} bytes sealed, which {} bytes of plaintext cannot take",
                    sealed_name(&file.name),
                    file.size,
                    entry.size
                ));
            }
            if file.sha256.len() != 64 || !file.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "the seal record's digest of '{}' is not SHA-256 hex",
                    file.name
                ));
            }
            if file.recipients.is_empty() || file.recipients.len() > 64 {
                return Err(format!(
                    "the seal record gives '{}' {} recipients",
                    file.name,
                    file.recipients.len()
                ));
            }
        }
        Ok(seal)
    }

    pub fn file(&self, name: &str) -> Option<&SealedFile> {
        self.files.iter().find(|f| f.name == name)
    }

    /// The recipients each file was sealed to, by file name.
    pub fn recipients(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        self.files
            .iter()
            .map(|f| (f.name.clone(), f.recipients.clone()))
            .collect()
    }
}
