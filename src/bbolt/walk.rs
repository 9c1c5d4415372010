//! The structural check: both meta pages, the whole B+tree from the root bucket through every
//! nested bucket (each page read once, in key order, with `pread`), the freelist against what
//! the walk reached. Memory: two bitmaps of one bit per page and the pages of one root-to-leaf
//! path, whatever the size of the file.

use super::page::{self, BRANCH, BUCKET_HEADER_BYTES, BUCKET_LEAF, ELEMENT_BYTES, LEAF, Meta};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Deeper than any real bbolt tree (a few levels hold gigabytes): a hostile file is stopped.
const MAX_DEPTH: usize = 64;
/// A page with its overflow larger than this is a hostile header, not a value etcd stored.
const MAX_PAGE_RUN_BYTES: u64 = 256 << 20;
/// After this many problems the file is clearly damaged; the rest is not listed.
const MAX_PROBLEMS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub page: Option<u64>,
    /// The bucket path, names joined by `/` (empty: the root bucket).
    pub bucket: String,
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.page {
            Some(page) => write!(f, "page {page}")?,
            None => write!(f, "file")?,
        }
        if !self.bucket.is_empty() {
            write!(f, " (bucket {})", self.bucket)?;
        }
        write!(f, ": {}", self.what)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub page_size: u32,
    pub hwm: u64,
    pub txid: u64,
    pub pages_reached: u64,
    pub pages_free: u64,
    pub problems: Vec<Problem>,
    /// More problems than were listed.
    pub truncated: bool,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What the walk shows, in key order: every element of the bucket at `path` (the names of the
/// buckets above it), with its value, or `None` for a nested bucket.
pub trait Visitor {
    fn entry(&mut self, path: &[Vec<u8>], key: &[u8], value: Option<&[u8]>);
}

struct Bitmap(Vec<u64>);

impl Bitmap {
    fn new(bits: u64) -> Bitmap {
        Bitmap(vec![0; (bits as usize).div_ceil(64)])
    }
    fn get(&self, i: u64) -> bool {
        self.0[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
    fn set(&mut self, i: u64) {
        self.0[(i / 64) as usize] |= 1 << (i % 64);
    }
}

struct Walk<'a> {
    file: &'a File,
    meta: Meta,
    reached: Bitmap,
    free: Bitmap,
    path: Vec<Vec<u8>>,
    report: Report,
    visitor: &'a mut dyn Visitor,
}

impl Walk<'_> {
    fn problem(&mut self, page: Option<u64>, what: impl Into<String>) {
        if self.report.problems.len() >= MAX_PROBLEMS {
            self.report.truncated = true;
            return;
        }
        let bucket = self
            .path
            .iter()
            .map(|name| String::from_utf8_lossy(name).into_owned())
            .collect::<Vec<_>>()
            .join("/");
        self.report.problems.push(Problem {
            page,
            bucket,
            what: what.into(),
        });
    }

    /// Reads page `id` with its overflow, marking every page of it reached; `None` (with a
    /// problem) when it cannot be part of a sound tree.
    fn read(&mut self, id: u64, expect: &str) -> std::io::Result<Option<Vec<u8>>> {
        let (size, hwm) = (u64::from(self.meta.page_size), self.meta.hwm);
        if id < 2 || id >= hwm {
            self.problem(
                Some(id),
                format!("{expect} page out of range (high-water mark {hwm})"),
            );
            return Ok(None);
        }
        if self.reached.get(id) {
            self.problem(Some(id), format!("{expect} page reached twice"));
            return Ok(None);
        }
        let mut buf = vec![0u8; size as usize];
        self.file.read_exact_at(&mut buf, id * size)?;
        let header = page::header(&buf).expect("a page holds its header");
        let run = 1 + u64::from(header.overflow);
        if id + run > hwm || run * size > MAX_PAGE_RUN_BYTES {
            self.problem(
                Some(id),
                format!(
                    "overflow {} runs beyond the high-water mark {hwm}",
                    header.overflow
                ),
            );
            return Ok(None);
        }
        if run > 1 {
            // A zeroed allocation (libc's memset), not Vec::resize: under the size-tuned
            // release profile resize zeroes byte by byte, and was 30% of a deep check.
            let mut whole = vec![0u8; (run * size) as usize];
            whole[..size as usize].copy_from_slice(&buf);
            self.file
                .read_exact_at(&mut whole[size as usize..], (id + 1) * size)?;
            buf = whole;
        }
        for p in id..id + run {
            if self.reached.get(p) {
                self.problem(Some(p), format!("reached twice (overflow of page {id})"));
                return Ok(None);
            }
            self.reached.set(p);
        }
        if header.id != id {
            self.problem(Some(id), format!("header says page {}", header.id));
            return Ok(None);
        }
        Ok(Some(buf))
    }

    fn tree(
        &mut self,
        id: u64,
        lower: Option<&[u8]>,
        upper: Option<&[u8]>,
        depth: usize,
    ) -> std::io::Result<()> {
        if depth > MAX_DEPTH {
            self.problem(Some(id), format!("tree deeper than {MAX_DEPTH}"));
            return Ok(());
        }
        let Some(buf) = self.read(id, "tree")? else {
            return Ok(());
        };
        let header = page::header(&buf).expect("read checked it");
        match header.flags {
            BRANCH => self.branch(id, &buf, header.count, lower, upper, depth),
            LEAF => self.leaf(Some(id), &buf, header.count, lower, upper),
            flags => {
                self.problem(
                    Some(id),
                    format!("flags {flags:#x} where a branch or leaf page belongs"),
                );
                Ok(())
            }
        }
    }

    /// Keys in order and within the bounds the parent gave; elements' data laid out back to
    /// back after the element array, as bbolt writes it (a changed count, offset or size
    /// breaks that).
    fn layout(
        &mut self,
        id: Option<u64>,
        ranges: &[(std::ops::Range<usize>, usize)],
        buf: &[u8],
        lower: Option<&[u8]>,
        upper: Option<&[u8]>,
    ) -> bool {
        let mut expected = page::PAGE_HEADER_BYTES + ranges.len() * ELEMENT_BYTES;
        let mut previous: Option<&[u8]> = None;
        for (i, (key, end)) in ranges.iter().enumerate() {
            if key.start != expected {
                self.problem(
                    id,
                    format!(
                        "element {i}'s data starts at {}, not at {expected} where the previous ended",
                        key.start
                    ),
                );
                return false;
            }
            expected = *end;
            let key = &buf[key.clone()];
            if previous.is_some_and(|p| p >= key) {
                self.problem(
                    id,
                    format!("element {i}'s key is not after the previous one"),
                );
                return false;
            }
            if lower.is_some_and(|l| key < l) || upper.is_some_and(|u| key >= u) {
                self.problem(
                    id,
                    format!("element {i}'s key is outside the range its parent gives"),
                );
                return false;
            }
            previous = Some(key);
        }
        true
    }

    fn branch(
        &mut self,
        id: u64,
        buf: &[u8],
        count: u16,
        lower: Option<&[u8]>,
        upper: Option<&[u8]>,
        depth: usize,
    ) -> std::io::Result<()> {
        if count == 0 {
            self.problem(Some(id), "branch page without elements");
            return Ok(());
        }
        let mut elements = Vec::with_capacity(count as usize);
        for i in 0..count as usize {
            match page::branch(buf, i) {
                Ok(element) => elements.push(element),
                Err(e) => {
                    self.problem(Some(id), format!("element {i}: {e}"));
                    return Ok(());
                }
            }
        }
        let ranges: Vec<_> = elements.iter().map(|(k, _)| (k.clone(), k.end)).collect();
        if !self.layout(Some(id), &ranges, buf, lower, upper) {
            return Ok(());
        }
        for (i, (key, child)) in elements.iter().enumerate() {
            let next = elements.get(i + 1).map(|(k, _)| &buf[k.clone()]).or(upper);
            self.tree(*child, Some(&buf[key.clone()]), next, depth + 1)?;
        }
        Ok(())
    }

    fn leaf(
        &mut self,
        id: Option<u64>,
        buf: &[u8],
        count: u16,
        lower: Option<&[u8]>,
        upper: Option<&[u8]>,
    ) -> std::io::Result<()> {
        let mut elements = Vec::with_capacity(count as usize);
        for i in 0..count as usize {
            match page::leaf(buf, i) {
                Ok(element) => elements.push(element),
                Err(e) => {
                    self.problem(id, format!("element {i}: {e}"));
                    return Ok(());
                }
            }
        }
        let ranges: Vec<_> = elements
            .iter()
            .map(|(_, k, v)| (k.clone(), v.end))
            .collect();
        if !self.layout(id, &ranges, buf, lower, upper) {
            return Ok(());
        }
        for (flags, key, value) in elements {
            let (key, value) = (&buf[key], &buf[value]);
            if flags & !BUCKET_LEAF != 0 {
                self.problem(id, format!("element flags {flags:#x}"));
                continue;
            }
            if flags & BUCKET_LEAF == 0 {
                if self.path.is_empty() {
                    self.problem(id, "a key in the root bucket, where only buckets belong");
                }
                self.visitor.entry(&self.path, key, Some(value));
                continue;
            }
            self.visitor.entry(&self.path, key, None);
            self.path.push(key.to_vec());
            self.bucket(id, value)?;
            self.path.pop();
        }
        Ok(())
    }

    /// A nested bucket: its header, then its tree (or its inline page).
    fn bucket(&mut self, id: Option<u64>, value: &[u8]) -> std::io::Result<()> {
        let Some(root) = page::u64_at(value, 0).filter(|_| value.len() >= BUCKET_HEADER_BYTES)
        else {
            self.problem(id, "bucket header shorter than 16 bytes");
            return Ok(());
        };
        if root != 0 {
            if value.len() != BUCKET_HEADER_BYTES {
                self.problem(id, "bucket with a root page and an inline page");
                return Ok(());
            }
            return self.tree(root, None, None, self.path.len());
        }
        let inline = &value[BUCKET_HEADER_BYTES..];
        match page::header(inline) {
            Some(h) if h.flags == LEAF && h.overflow == 0 => {
                self.leaf(id, inline, h.count, None, None)
            }
            Some(h) => {
                self.problem(id, format!("inline bucket page with flags {:#x}", h.flags));
                Ok(())
            }
            None => {
                self.problem(id, "inline bucket shorter than a page header");
                Ok(())
            }
        }
    }
}

/// The meta bbolt would open the file with: the valid one with the higher txid.
fn choose_meta(file: &File, db_len: u64, report: &mut Report) -> std::io::Result<Option<Meta>> {
    let mut first = vec![0u8; 4096.min(db_len as usize)];
    file.read_exact_at(&mut first, 0)?;
    let meta0 = page::meta(&first);
    // The second meta sits one page further: the first's page size, or bbolt's usual 4096.
    let size = meta0.as_ref().map_or(4096, |m| u64::from(m.page_size));
    let meta1 = if db_len >= 2 * size {
        let mut second = vec![0u8; 4096.min(size as usize)];
        file.read_exact_at(&mut second, size)?;
        page::meta(&second)
    } else {
        Err("beyond the end of the file".into())
    };
    for (i, meta) in [&meta0, &meta1].into_iter().enumerate() {
        if let Err(e) = meta {
            report.problems.push(Problem {
                page: Some(i as u64),
                bucket: String::new(),
                what: format!("meta page: {e}"),
            });
        }
    }
    Ok(match (meta0, meta1) {
        (Ok(a), Ok(b)) => {
            if a.page_size != b.page_size {
                report.problems.push(Problem {
                    page: Some(1),
                    bucket: String::new(),
                    what: format!(
                        "meta page size {} differs from page 0's {}",
                        b.page_size, a.page_size
                    ),
                });
            }
            Some(if b.txid > a.txid { b } else { a })
        }
        (Ok(m), Err(_)) | (Err(_), Ok(m)) => Some(m),
        (Err(_), Err(_)) => None,
    })
}

/// Checks the bbolt database in the first `db_len` bytes of `file`, showing every element to
/// `visitor`. Only I/O errors are errors; whatever is wrong with the file is in the report.
pub fn check(file: &File, db_len: u64, visitor: &mut dyn Visitor) -> std::io::Result<Report> {
    let mut report = Report::default();
    if db_len < page::PAGE_HEADER_BYTES as u64 * 8 {
        report.problems.push(Problem {
            page: None,
            bucket: String::new(),
            what: format!("{db_len} bytes is too short for a bbolt file"),
        });
        return Ok(report);
    }
    let Some(meta) = choose_meta(file, db_len, &mut report)? else {
        return Ok(report);
    };
    report.page_size = meta.page_size;
    report.hwm = meta.hwm;
    report.txid = meta.txid;
    let size = u64::from(meta.page_size);
    if !db_len.is_multiple_of(size) || meta.hwm > db_len / size {
        report.problems.push(Problem {
            page: None,
            bucket: String::new(),
            what: format!(
                "{db_len} bytes do not hold {} pages of {size} bytes",
                meta.hwm
            ),
        });
        return Ok(report);
    }
    let mut walk = Walk {
        file,
        meta,
        reached: Bitmap::new(meta.hwm),
        free: Bitmap::new(meta.hwm),
        path: Vec::new(),
        report,
        visitor,
    };
    walk.reached.set(0);
    walk.reached.set(1);
    let has_freelist = meta.freelist != page::NO_FREELIST;
    if has_freelist && let Some(buf) = walk.read(meta.freelist, "freelist")? {
        let header = page::header(&buf).expect("read checked it");
        if header.flags != page::FREELIST {
            walk.problem(
                Some(meta.freelist),
                format!("flags {:#x}, not a freelist page", header.flags),
            );
        } else {
            match page::freelist_ids(&buf) {
                Err(e) => walk.problem(Some(meta.freelist), e),
                Ok(ids) => {
                    for id in ids {
                        if id < 2 || id >= meta.hwm {
                            walk.problem(
                                Some(meta.freelist),
                                format!("free page {id} out of range"),
                            );
                        } else if walk.free.get(id) {
                            walk.problem(
                                Some(meta.freelist),
                                format!("page {id} listed free twice"),
                            );
                        } else {
                            walk.free.set(id);
                        }
                    }
                }
            }
        }
    }
    walk.tree(meta.root, None, None, 0)?;
    let (mut reached, mut free) = (0, 0);
    for id in 0..meta.hwm {
        let (r, f) = (walk.reached.get(id), walk.free.get(id));
        reached += u64::from(r);
        free += u64::from(f);
        if r && f {
            walk.problem(Some(id), "both free and in use");
        } else if has_freelist && !r && !f {
            walk.problem(Some(id), "neither reached nor free");
        }
    }
    walk.report.pages_reached = reached;
    walk.report.pages_free = if has_freelist {
        free
    } else {
        meta.hwm - reached
    };
    Ok(walk.report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    struct Count(u64);
    impl Visitor for Count {
        fn entry(&mut self, _: &[Vec<u8>], _: &[u8], _: Option<&[u8]>) {
            self.0 += 1;
        }
    }

    fn check_bytes(bytes: &[u8]) -> Report {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        check(&file, bytes.len() as u64, &mut Count(0)).unwrap()
    }

    #[test]
    fn a_high_water_mark_past_the_file_is_a_problem_not_an_overflow() {
        let mut bytes = crate::verify::tests::fake_snapshot(6, 512);
        bytes.truncate(6 * 512);
        // Both metas claim 2^60 pages, with their checksums made to match.
        for meta in [0usize, 512] {
            let fields = meta + page::PAGE_HEADER_BYTES;
            bytes[fields + 40..fields + 48].copy_from_slice(&(1u64 << 60).to_le_bytes());
            let sum = page::fnv1a64(&bytes[fields..fields + 56]);
            bytes[fields + 56..fields + 64].copy_from_slice(&sum.to_le_bytes());
        }
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&bytes).unwrap();
        let (report, ..) = crate::bbolt::status(&file, bytes.len() as u64).unwrap();
        assert!(
            report.problems[0].what.contains("do not hold"),
            "{:?}",
            report.problems
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Any damage anywhere, up to 8 bytes of it: a report, never a panic, never unbounded.
        #[test]
        fn hostile_bytes_give_a_report_not_a_panic(
            damage in proptest::collection::vec((0usize..6 * 512, any::<u8>()), 1..8),
            cut in 0usize..6 * 512,
        ) {
            let mut bytes = crate::verify::tests::fake_snapshot(6, 512);
            bytes.truncate(6 * 512);
            assert!(check_bytes(&bytes).is_clean());
            for (at, value) in damage {
                bytes[at] = value;
            }
            let report = check_bytes(&bytes);
            prop_assert!(report.problems.len() <= MAX_PROBLEMS);
            let report = check_bytes(&bytes[..cut]);
            prop_assert!(report.problems.len() <= MAX_PROBLEMS);
        }
    }
}
