//! bbolt's on-disk layout (`go.etcd.io/bbolt/internal/common`): page headers, meta pages,
//! branch and leaf elements, bucket headers, freelist pages. Pure functions over byte slices
//! that never index out of bounds: a hostile file yields an error naming what is wrong.

pub const PAGE_HEADER_BYTES: usize = 16;
pub const ELEMENT_BYTES: usize = 16;
pub const BUCKET_HEADER_BYTES: usize = 16;
pub const BRANCH: u16 = 0x01;
pub const LEAF: u16 = 0x02;
pub const META: u16 = 0x04;
pub const FREELIST: u16 = 0x10;
/// A leaf element whose value is a bucket header (a nested bucket).
pub const BUCKET_LEAF: u32 = 0x01;
pub const MAGIC: u32 = 0xED0C_DAED;
pub const VERSION: u32 = 2;
/// The meta's freelist when the freelist is not written (`NoFreelistSync`).
pub const NO_FREELIST: u64 = u64::MAX;
/// bbolt takes the OS page size (etcd sets no other): 4 KiB, or 64 KiB on ppc64le and arm64
/// kernels with 64 KiB pages. Anything outside these bounds is not a file etcd wrote.
pub const MIN_PAGE_SIZE: u32 = 512;
pub const MAX_PAGE_SIZE: u32 = 64 << 10;
/// The meta fields the checksum covers: magic … txid.
const META_SUMMED_BYTES: usize = 56;
/// The bytes of page 0 that [`meta`] reads: the page header, the summed fields, the checksum.
pub const META_PAGE_BYTES: usize = PAGE_HEADER_BYTES + META_SUMMED_BYTES + 8;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

pub fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub id: u64,
    pub flags: u16,
    pub count: u16,
    pub overflow: u32,
}

pub fn header(page: &[u8]) -> Option<Header> {
    Some(Header {
        id: u64_at(page, 0)?,
        flags: u16_at(page, 8)?,
        count: u16_at(page, 10)?,
        overflow: u32_at(page, 12)?,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub page_size: u32,
    pub flags: u32,
    /// The root bucket's root page.
    pub root: u64,
    pub freelist: u64,
    /// The high-water mark: every page id is below it.
    pub hwm: u64,
    pub txid: u64,
}

/// FNV-1a, 64 bits: the meta page's checksum.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The meta of a meta page, checked as bbolt checks it (magic, version, checksum) and for
/// values no valid file has.
pub fn meta(page: &[u8]) -> Result<Meta, String> {
    let h = header(page).ok_or("shorter than a page header")?;
    if h.flags != META {
        return Err(format!("flags {:#x}, not a meta page", h.flags));
    }
    let m = page
        .get(PAGE_HEADER_BYTES..META_PAGE_BYTES)
        .ok_or("shorter than a meta page")?;
    let magic = u32_at(m, 0).unwrap_or(0);
    if magic != MAGIC {
        return Err(format!(
            "not a bbolt file (magic {magic:#010x}, bbolt's is {MAGIC:#010x})"
        ));
    }
    let version = u32_at(m, 4).unwrap_or(0);
    if version != VERSION {
        return Err(format!("format version {version}, not {VERSION}"));
    }
    let stored = u64_at(m, META_SUMMED_BYTES).unwrap_or(0);
    let computed = fnv1a64(&m[..META_SUMMED_BYTES]);
    if stored != computed {
        return Err(format!(
            "checksum mismatch: {stored:#018x} stored, the fields sum to {computed:#018x}"
        ));
    }
    let meta = Meta {
        page_size: u32_at(m, 8).unwrap_or(0),
        flags: u32_at(m, 12).unwrap_or(0),
        root: u64_at(m, 16).unwrap_or(0),
        freelist: u64_at(m, 32).unwrap_or(0),
        hwm: u64_at(m, 40).unwrap_or(0),
        txid: u64_at(m, 48).unwrap_or(0),
    };
    if !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&meta.page_size)
        || !meta.page_size.is_power_of_two()
    {
        return Err(format!("implausible page size {}", meta.page_size));
    }
    if meta.hwm < 2 || meta.root < 2 || meta.root >= meta.hwm {
        return Err(format!(
            "root page {} and high-water mark {} do not fit",
            meta.root, meta.hwm
        ));
    }
    if meta.freelist != NO_FREELIST && (meta.freelist < 2 || meta.freelist >= meta.hwm) {
        return Err(format!("freelist page {} out of range", meta.freelist));
    }
    Ok(meta)
}

/// A branch element: the key (a range of the page) and the child page.
pub fn branch(page: &[u8], index: usize) -> Result<(std::ops::Range<usize>, u64), String> {
    let at = PAGE_HEADER_BYTES + index * ELEMENT_BYTES;
    let (pos, ksize, child) = (
        u32_at(page, at).ok_or("element beyond the page")?,
        u32_at(page, at + 4).ok_or("element beyond the page")?,
        u64_at(page, at + 8).ok_or("element beyond the page")?,
    );
    let start = at.checked_add(pos as usize).ok_or("key offset overflows")?;
    let end = start
        .checked_add(ksize as usize)
        .ok_or("key size overflows")?;
    if end > page.len() {
        return Err(format!(
            "key {start}..{end} beyond the page ({} bytes)",
            page.len()
        ));
    }
    Ok((start..end, child))
}

/// A leaf element: flags, key and value (ranges of the page).
pub fn leaf(
    page: &[u8],
    index: usize,
) -> Result<(u32, std::ops::Range<usize>, std::ops::Range<usize>), String> {
    let at = PAGE_HEADER_BYTES + index * ELEMENT_BYTES;
    let field = |i: usize| u32_at(page, at + 4 * i).ok_or("element beyond the page");
    let (flags, pos, ksize, vsize) = (field(0)?, field(1)?, field(2)?, field(3)?);
    let start = at.checked_add(pos as usize).ok_or("key offset overflows")?;
    let key_end = start
        .checked_add(ksize as usize)
        .ok_or("key size overflows")?;
    let end = key_end
        .checked_add(vsize as usize)
        .ok_or("value size overflows")?;
    if end > page.len() {
        return Err(format!(
            "key and value {start}..{end} beyond the page ({} bytes)",
            page.len()
        ));
    }
    Ok((flags, start..key_end, key_end..end))
}

/// The page ids a freelist page lists.
pub fn freelist_ids(page: &[u8]) -> Result<Vec<u64>, String> {
    let h = header(page).ok_or("shorter than a page header")?;
    let (first, count) = if h.count == 0xFFFF {
        let count = u64_at(page, PAGE_HEADER_BYTES).ok_or("no count")?;
        (1usize, count)
    } else {
        (0, u64::from(h.count))
    };
    let room = ((page.len() - PAGE_HEADER_BYTES) / 8).saturating_sub(first) as u64;
    if count > room {
        return Err(format!("{count} free ids, room for {room}"));
    }
    Ok((0..count as usize)
        .map(|i| u64_at(page, PAGE_HEADER_BYTES + (first + i) * 8).unwrap_or(0))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn hostile_elements_are_errors_not_panics() {
        let mut page = vec![0u8; 64];
        page[8] = LEAF as u8;
        page[10] = 1;
        // pos pointing far beyond the page.
        page[16 + 4..16 + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(leaf(&page, 0).is_err());
        assert!(branch(&page, 3).is_err());
        assert!(leaf(&page, 1000).is_err());
        let mut free = vec![0u8; 32];
        free[10..12].copy_from_slice(&0xFFFFu16.to_le_bytes());
        free[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(freelist_ids(&free).is_err());
    }
}
