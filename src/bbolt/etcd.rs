//! etcd's own figures of a backend file, as `etcdutl snapshot status` (3.5) prints them, from
//! the same walk: the hash (CRC-32C over each top-level bucket's name, then its keys and values
//! in order), the number of keys (every pair of every top-level bucket), the revision (the main
//! revision of the last key of bucket `key`) and the size (high-water mark x page size). And
//! what the snapshot says of its cluster: the members (bucket `members`, each a JSON object with
//! its ID and name) and the cluster's version (bucket `cluster`, key `clusterVersion`).

use super::walk::{Problem, Report, Visitor, check};
use std::fs::File;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Figures {
    pub revision: i64,
    pub total_key: u64,
    pub hash: u32,
    pub total_size: u64,
}

/// Buckets every etcd 3.4+ backend has.
pub const REQUIRED_BUCKETS: [&str; 2] = ["key", "meta"];

/// The most members read from a snapshot (etcd allows far fewer) and the largest value kept.
const MAX_MEMBERS: usize = 64;
const MAX_MEMBER_BYTES: usize = 4096;

/// What a snapshot says of the cluster it came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// `(ID, name)` of each member, as the `members` bucket holds them (a member that never
    /// started has no name yet: empty).
    pub members: Vec<(u64, String)>,
    /// `clusterVersion` of bucket `cluster`, e.g. `3.5.0`.
    pub cluster_version: Option<String>,
}

#[derive(serde::Deserialize)]
struct MemberValue {
    id: u64,
    #[serde(default)]
    name: String,
}

#[derive(Default)]
struct Etcd {
    membership: Membership,
    crc: u32,
    figures: Figures,
    buckets: Vec<Vec<u8>>,
    bad_revision_keys: u64,
    bad_values: u64,
}

/// A protobuf varint at `b[*at..]`, advancing `at`.
pub(crate) fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// `value` is an `mvccpb.KeyValue` (key 1, create_revision 2, mod_revision 3, version 4,
/// value 5, lease 6) that ends where the value ends and, unless it marks a deletion, was
/// modified at `main`, the revision its key names.
fn is_key_value(value: &[u8], main: i64, tombstone: bool) -> bool {
    let mut at = 0;
    let mut mod_revision = None;
    while at < value.len() {
        let Some(tag) = varint(value, &mut at) else {
            return false;
        };
        match (tag >> 3, tag & 7) {
            (1 | 5, 2) => {
                let Some(len) = varint(value, &mut at) else {
                    return false;
                };
                match at
                    .checked_add(len as usize)
                    .filter(|end| *end <= value.len())
                {
                    Some(end) => at = end,
                    None => return false,
                }
            }
            (field @ 2..=4 | field @ 6, 0) => {
                let Some(n) = varint(value, &mut at) else {
                    return false;
                };
                if field == 3 {
                    mod_revision = Some(n as i64);
                }
            }
            _ => return false,
        }
    }
    tombstone || mod_revision == Some(main)
}

fn is_revision_key(key: &[u8]) -> bool {
    match key.len() {
        17 => key[8] == b'_',
        18 => key[8] == b'_' && key[17] == b't',
        _ => false,
    }
}

impl Etcd {
    /// Keeps what buckets `members` and `cluster` say, bounded; a value that is not what etcd
    /// writes is left out (the walk reports damage, this is no check).
    fn note_cluster(&mut self, bucket: &[u8], key: &[u8], value: Option<&[u8]>) {
        let Some(value) = value.filter(|v| v.len() <= MAX_MEMBER_BYTES) else {
            return;
        };
        match bucket {
            b"members" if self.membership.members.len() < MAX_MEMBERS => {
                if let Ok(m) = serde_json::from_slice::<MemberValue>(value)
                    && m.name.len() <= 253
                {
                    self.membership.members.push((m.id, m.name));
                }
            }
            b"cluster" if key == b"clusterVersion" => {
                if let Ok(v) = std::str::from_utf8(value)
                    && v.len() <= 32
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
                {
                    self.membership.cluster_version = Some(v.to_string());
                }
            }
            _ => {}
        }
    }
}

impl Visitor for Etcd {
    fn entry(&mut self, path: &[Vec<u8>], key: &[u8], value: Option<&[u8]>) {
        match path.len() {
            0 => {
                self.crc = crc32c::crc32c_append(self.crc, key);
                self.buckets.push(key.to_vec());
            }
            1 => {
                self.crc = crc32c::crc32c_append(self.crc, key);
                if let Some(value) = value {
                    self.crc = crc32c::crc32c_append(self.crc, value);
                }
                self.figures.total_key += 1;
                self.note_cluster(&path[0], key, value);
                if path[0] == b"key" {
                    // A revision key: main (8 bytes, big-endian), '_', sub (8 bytes), and 't'
                    // when it marks a deletion. Anything else is damage (a shifted element).
                    if is_revision_key(key) {
                        let main = i64::from_be_bytes(key[..8].try_into().expect("8 bytes"));
                        self.figures.revision = main;
                        if !value.is_some_and(|v| is_key_value(v, main, key.len() == 18)) {
                            self.bad_values += 1;
                        }
                    } else {
                        self.bad_revision_keys += 1;
                    }
                }
            }
            // etcd has no nested buckets; `snapshot status` does not descend into them.
            _ => {}
        }
    }
}

/// Checks the etcd backend in the first `db_len` bytes of `file`; its figures (meaningful when
/// the report is clean).
pub fn status(file: &File, db_len: u64) -> std::io::Result<(Report, Figures, Membership)> {
    let mut etcd = Etcd::default();
    let mut report = check(file, db_len, &mut etcd)?;
    if report.problems.is_empty() {
        let mut found = Vec::new();
        for name in REQUIRED_BUCKETS {
            if !etcd.buckets.iter().any(|b| b == name.as_bytes()) {
                found.push(format!("etcd's bucket '{name}' is missing"));
            }
        }
        if etcd.bad_values > 0 {
            found.push(format!(
                "{} value(s) of bucket 'key' are not the KeyValue of their revision",
                etcd.bad_values
            ));
        }
        if etcd.bad_revision_keys > 0 {
            found.push(format!(
                "{} key(s) of bucket 'key' are not revisions (main_sub[t])",
                etcd.bad_revision_keys
            ));
        }
        report
            .problems
            .extend(found.into_iter().map(|what| Problem {
                page: None,
                bucket: String::new(),
                what,
            }));
    }
    let mut figures = etcd.figures;
    figures.hash = etcd.crc;
    // What the meta claims, which a damaged meta may put past any file (the report says so).
    figures.total_size = report.hwm.saturating_mul(u64::from(report.page_size));
    Ok((report, figures, etcd.membership))
}
