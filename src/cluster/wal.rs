//! The etcd cluster ID and this member's ID, from the live member's write-ahead log: not in the
//! snapshot, and read without asking etcd (no endpoint, no certificate, a stopped member too).
//!
//! Every WAL file (`member/wal/<seq>-<index>.wal`, 16 hex digits each) starts with two records:
//! the CRC that chains it to the file before, then the metadata etcd wrote when the member was
//! created — `etcdserverpb.Metadata { NodeID = 1, ClusterID = 2 }`. A record is an 8-byte
//! little-endian frame (length in the low 56 bits; the top byte, when its high bit is set, says
//! how many padding bytes follow the data) and a `walpb.Record { type = 1, crc = 2, data = 3 }`,
//! its CRC the CRC-32C of its data chained on from the one before.

use crate::bbolt::varint;
use anyhow::{Context, Result, bail, ensure};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The head of a WAL file read: the two records are a few dozen bytes.
pub const HEAD_BYTES: usize = 4096;
/// `walpb.Record.type` of the metadata and of the CRC records.
const METADATA_TYPE: u64 = 1;
const CRC_TYPE: u64 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    pub member_id: u64,
    pub cluster_id: u64,
}

/// `type`, `crc` and `data` of one `walpb.Record`.
fn record(bytes: &[u8]) -> Option<(u64, u32, &[u8])> {
    let (mut kind, mut crc, mut data) = (None, 0u32, &[][..]);
    let mut at = 0;
    while at < bytes.len() {
        let tag = varint(bytes, &mut at)?;
        match (tag >> 3, tag & 7) {
            (1, 0) => kind = Some(varint(bytes, &mut at)?),
            (2, 0) => crc = u32::try_from(varint(bytes, &mut at)?).ok()?,
            (3, 2) => {
                let len = usize::try_from(varint(bytes, &mut at)?).ok()?;
                let end = at.checked_add(len).filter(|end| *end <= bytes.len())?;
                data = &bytes[at..end];
                at = end;
            }
            _ => return None,
        }
    }
    Some((kind?, crc, data))
}

/// The next framed record at `head[*at..]`, advancing `at` past its padding.
fn frame<'a>(head: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let field = u64::from_le_bytes(head.get(*at..*at + 8)?.try_into().ok()?);
    let len = usize::try_from(field & 0x00ff_ffff_ffff_ffff).ok()?;
    let top = (field >> 56) as u8;
    let pad = if top & 0x80 != 0 {
        usize::from(top & 0x7)
    } else {
        0
    };
    let start = *at + 8;
    let end = start.checked_add(len)?;
    let data = head.get(start..end)?;
    *at = end.checked_add(pad)?;
    Some(data)
}

/// The metadata at the head of a WAL file: a CRC record, then a metadata record whose CRC
/// chains on from it. Anything else is refused, saying what was found.
pub fn parse(head: &[u8]) -> Result<Metadata> {
    let mut at = 0;
    let (kind, prev_crc, _) = frame(head, &mut at)
        .and_then(record)
        .context("the first record is cut short or not a WAL record")?;
    ensure!(
        kind == CRC_TYPE,
        "the first record is of type {kind}, not a CRC record"
    );
    let (kind, crc, data) = frame(head, &mut at)
        .and_then(record)
        .context("the second record is cut short or not a WAL record")?;
    ensure!(
        kind == METADATA_TYPE,
        "the second record is of type {kind}, not the metadata"
    );
    let expected = crc32c::crc32c_append(prev_crc, data);
    ensure!(
        crc == expected,
        "the metadata record's CRC is {crc:08x}, its data gives {expected:08x}"
    );
    let (mut member_id, mut cluster_id) = (None, None);
    let mut i = 0;
    while i < data.len() {
        let tag = varint(data, &mut i).context("the metadata is cut short")?;
        let value = match tag & 7 {
            0 => varint(data, &mut i).context("the metadata is cut short")?,
            wire => bail!("the metadata holds field {} of wire type {wire}", tag >> 3),
        };
        match tag >> 3 {
            1 => member_id = Some(value),
            2 => cluster_id = Some(value),
            _ => {}
        }
    }
    match (member_id, cluster_id) {
        (Some(member_id), Some(cluster_id)) if cluster_id != 0 => Ok(Metadata {
            member_id,
            cluster_id,
        }),
        _ => bail!("the metadata names no cluster ID"),
    }
}

/// `<16 hex>-<16 hex>.wal`, etcd's WAL file names (`0.tmp` and the like are not).
fn is_wal_name(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".wal") else {
        return false;
    };
    let b = stem.as_bytes();
    b.len() == 33
        && b[16] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 16 || c.is_ascii_hexdigit())
}

/// The newest WAL file of `data_dir` (`member/wal/`, by name: sequence numbers sort).
pub fn newest_file(data_dir: &Path) -> Result<PathBuf> {
    let dir = data_dir.join("member/wal");
    let mut newest: Option<String> = None;
    for entry in
        std::fs::read_dir(&dir).with_context(|| format!("cannot list '{}'", dir.display()))?
    {
        let entry = entry.with_context(|| format!("cannot list '{}'", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_wal_name(&name) && newest.as_ref().is_none_or(|n| name > *n) {
            newest = Some(name);
        }
    }
    match newest {
        Some(name) => Ok(dir.join(name)),
        None => bail!("'{}' holds no WAL file", dir.display()),
    }
}

/// The metadata of the live member whose data directory is `data_dir`.
pub fn read(data_dir: &Path) -> Result<Metadata> {
    let path = newest_file(data_dir)?;
    let mut head = Vec::with_capacity(HEAD_BYTES);
    crate::files::open_regular(&path)?
        .take(HEAD_BYTES as u64)
        .read_to_end(&mut head)
        .with_context(|| format!("cannot read '{}'", path.display()))?;
    parse(&head).with_context(|| format!("'{}' is not an etcd WAL file", path.display()))
}

/// An ID as etcd prints it in logs and `member list`: 16 lowercase hex digits.
pub fn hex_id(id: u64) -> String {
    format!("{id:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head of a WAL file etcd 3.5.1 wrote (`xxd` of a fresh member's first file).
    const REAL_HEAD: &[u8] = &[
        0x04, 0, 0, 0, 0, 0, 0, 0x84, 0x08, 0x04, 0x10, 0, 0, 0, 0, 0, //
        0x1d, 0, 0, 0, 0, 0, 0, 0x83, 0x08, 0x01, 0x10, 0x8d, 0x9c, 0xf9, 0x16, 0x1a, //
        0x14, 0x08, 0xc0, 0xc0, 0xca, 0xaf, 0xc1, 0xba, 0x96, 0x89, 0x2e, 0x10, 0x87, 0xd5, 0xed,
        0xba, //
        0x8f, 0xd5, 0x9d, 0xc1, 0x04, 0, 0, 0,
    ];

    #[test]
    fn reads_the_ids_etcd_reported_for_that_member() {
        // `etcdctl endpoint status -w json` of that member said cluster_id 324952591200643719,
        // member_id 3319814642761637952.
        let meta = parse(REAL_HEAD).unwrap();
        assert_eq!(meta.cluster_id, 324952591200643719);
        assert_eq!(meta.member_id, 3319814642761637952);
        assert_eq!(hex_id(meta.cluster_id), "048276a8f75b6a87");
    }

    #[test]
    fn a_changed_byte_of_the_metadata_fails_its_crc() {
        let mut head = REAL_HEAD.to_vec();
        head[40] ^= 1;
        let err = parse(&head).unwrap_err().to_string();
        assert!(err.contains("CRC"), "{err}");
    }

    #[test]
    fn cut_and_foreign_heads_are_refused_not_panics() {
        for cut in 0..REAL_HEAD.len() - 5 {
            assert!(parse(&REAL_HEAD[..cut]).is_err(), "cut at {cut}");
        }
        assert!(parse(&[0u8; 64]).is_err());
        assert!(parse(b"SQLite format 3\0 and more bytes than that").is_err());
    }

    #[test]
    fn only_wal_names_count() {
        assert!(is_wal_name("0000000000000000-0000000000000000.wal"));
        assert!(is_wal_name("000000000000000a-00000000000f4240.wal"));
        assert!(!is_wal_name("0.tmp"));
        assert!(!is_wal_name("0000000000000000-000000000000000.wal"));
        assert!(!is_wal_name("000000000000000g-0000000000000000.wal"));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_give_an_answer_not_a_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = parse(&bytes);
        }
    }
}
