//! The bbolt structural check and etcd's figures on real snapshots from a real etcd 3.5: the
//! figures equal what `etcdutl snapshot status` prints for snapshots of several shapes, and
//! damage that keeps the sha256 trailer valid (what etcd would stream from a damaged backend)
//! is caught or changes nothing etcd would restore.

use crate::util::*;
use etcd_backup::bbolt::{self, page};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// `etcdctl snapshot save` into `dir/name`.
fn snapshot(etcd: &Etcd, dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let out = etcd.etcdctl(&["snapshot", "save", path.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    path
}

/// What `etcdutl snapshot status -w json` prints.
fn etcdutl_status(path: &Path) -> serde_json::Value {
    let out = std::process::Command::new(etcd_bin_dir().join("etcdutl"))
        .args(["snapshot", "status", "-w", "json"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Our check of a snapshot file (the bbolt part before the 32-byte trailer).
fn ours(path: &Path) -> (bbolt::Report, bbolt::Figures) {
    let file = File::open(path).unwrap();
    let len = file.metadata().unwrap().len() - 32;
    let (report, figures, _) = bbolt::status(&file, len).unwrap();
    (report, figures)
}

fn assert_same_figures(path: &Path) -> bbolt::Report {
    let (report, figures) = ours(path);
    assert!(
        report.is_clean(),
        "{}: {:?}",
        path.display(),
        report.problems
    );
    let theirs = etcdutl_status(path);
    assert_eq!(
        (
            i64::from(figures.hash as i32) & 0xffff_ffff,
            figures.revision,
            figures.total_key,
            figures.total_size
        ),
        (
            theirs["hash"].as_i64().unwrap(),
            theirs["revision"].as_i64().unwrap(),
            theirs["totalKey"].as_u64().unwrap(),
            theirs["totalSize"].as_u64().unwrap()
        ),
        "{}: ours {figures:?}, etcdutl {theirs}",
        path.display()
    );
    report
}

#[test]
fn figures_equal_etcdutls_for_snapshots_of_several_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start();
    assert_same_figures(&snapshot(&etcd, dir.path(), "empty.db"));
    etcd.txn_put(&["/registry/one value-1".to_string()]);
    assert_same_figures(&snapshot(&etcd, dir.path(), "one-key.db"));
    // Many revisions of a few keys, then a compaction: freed pages, a deep history gone.
    for round in 0..40 {
        let puts: Vec<String> = (0..25)
            .map(|k| format!("/registry/churn/k{k} round-{round}-{}", "x".repeat(300)))
            .collect();
        etcd.txn_put(&puts);
    }
    let status = etcd.etcdctl(&["endpoint", "status", "-w", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let revision = status[0]["Status"]["header"]["revision"].as_i64().unwrap();
    assert!(
        etcd.etcdctl(&["compact", &(revision - 10).to_string()])
            .status
            .success()
    );
    assert_same_figures(&snapshot(&etcd, dir.path(), "compacted.db"));
    // Values larger than a page: overflow pages.
    let big: Vec<String> = (0..3)
        .map(|k| format!("/registry/big/k{k} {}", format!("{k}").repeat(40_000)))
        .collect();
    etcd.txn_put(&big);
    let report = assert_same_figures(&snapshot(&etcd, dir.path(), "large-values.db"));
    assert!(report.pages_reached > 30, "{report:?}");
    // The shared etcd of the other tests: 2000 Kubernetes-like keys.
    assert_same_figures(&snapshot(crate::util::etcd(), dir.path(), "loaded.db"));
}

/// A scratch copy of a snapshot's bbolt part to damage in place.
struct Scratch {
    file: File,
    len: u64,
    page_size: u64,
    hwm: u64,
}

impl Scratch {
    fn of(snapshot: &Path) -> Scratch {
        let bytes = std::fs::read(snapshot).unwrap();
        let db = &bytes[..bytes.len() - 32];
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(db, 0).unwrap();
        let (report, ..) = bbolt::status(&file, db.len() as u64).unwrap();
        assert!(report.is_clean(), "{:?}", report.problems);
        Scratch {
            file,
            len: db.len() as u64,
            page_size: u64::from(report.page_size),
            hwm: report.hwm,
        }
    }

    fn page(&self, id: u64) -> Vec<u8> {
        let mut buf = vec![0u8; self.page_size as usize];
        self.file
            .read_exact_at(&mut buf, id * self.page_size)
            .unwrap();
        buf
    }

    fn byte(&self, at: u64) -> u8 {
        let mut b = [0u8];
        self.file.read_exact_at(&mut b, at).unwrap();
        b[0]
    }

    fn put(&self, at: u64, bytes: &[u8]) {
        self.file.write_all_at(bytes, at).unwrap();
    }

    fn status(&self) -> (bbolt::Report, bbolt::Figures) {
        let (report, figures, _) = bbolt::status(&self.file, self.len).unwrap();
        (report, figures)
    }

    /// `etcdutl snapshot restore` of the scratch file with a valid trailer succeeds.
    fn restores(&self, dir: &Path) -> bool {
        use sha2::Digest;
        let mut db = vec![0u8; self.len as usize];
        self.file.read_exact_at(&mut db, 0).unwrap();
        let trailer = sha2::Sha256::digest(&db);
        db.extend_from_slice(&trailer);
        let (snapshot, data) = (dir.join("flipped.db"), dir.join("restored"));
        std::fs::write(&snapshot, &db).unwrap();
        let _ = std::fs::remove_dir_all(&data);
        std::process::Command::new(etcd_bin_dir().join("etcdutl"))
            .args(["snapshot", "restore"])
            .arg(&snapshot)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap()
            .status
            .success()
    }

    /// The first branch page (id) and its children.
    fn a_branch(&self) -> (u64, Vec<u64>) {
        (2..self.hwm)
            .find_map(|id| {
                let p = self.page(id);
                let h = page::header(&p).unwrap();
                (h.flags == page::BRANCH && h.id == id && h.count >= 2).then(|| {
                    let children = (0..h.count as usize)
                        .map(|i| page::branch(&p, i).unwrap().1)
                        .collect();
                    (id, children)
                })
            })
            .expect("a snapshot with a branch page")
    }
}

#[test]
fn every_byte_of_every_page_and_element_header_flipped_is_caught_or_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start();
    for round in 0..6 {
        let puts: Vec<String> = (0..20)
            .map(|k| {
                format!(
                    "/registry/pods/ns/pod-{k} round-{round}-{}",
                    "y".repeat(200)
                )
            })
            .collect();
        etcd.txn_put(&puts);
    }
    let scratch = Scratch::of(&snapshot(&etcd, dir.path(), "small.db"));
    let (_, clean) = scratch.status();
    let (mut flips, mut caught, mut harmless) = (0, 0, Vec::new());
    for id in 0..scratch.hwm {
        let base = id * scratch.page_size;
        let header = page::header(&scratch.page(id)).unwrap();
        // The page header, and for tree pages each element header.
        let mut offsets: Vec<u64> = (0..16).collect();
        if header.flags == page::BRANCH || header.flags == page::LEAF {
            offsets.extend(16..16 + 16 * u64::from(header.count));
        }
        for offset in offsets {
            let at = base + offset;
            let original = scratch.byte(at);
            scratch.put(at, &[original ^ 0x01]);
            let (report, figures) = scratch.status();
            scratch.put(at, &[original]);
            flips += 1;
            if !report.is_clean() {
                caught += 1;
            } else if figures == clean {
                // Every 50th is proven: restored by etcd itself, with a valid trailer.
                if harmless.len() % 50 == 0 {
                    scratch.put(at, &[original ^ 0x01]);
                    let restored = scratch.restores(dir.path());
                    scratch.put(at, &[original]);
                    assert!(
                        restored,
                        "page {id} byte {offset}: same figures, but etcdutl cannot restore it"
                    );
                }
                harmless.push(format!("page {id} byte {offset}"));
            } else {
                panic!(
                    "page {id} byte {offset} flipped: not caught, and the figures changed: {figures:?} vs {clean:?}"
                );
            }
        }
    }
    eprintln!(
        "{flips} flips over {} pages: {caught} caught, {} with the same figures ({})",
        scratch.hwm,
        harmless.len(),
        harmless.join(", ")
    );
    assert!(caught > flips / 2, "{caught} of {flips} caught");
    assert!(!harmless.is_empty() || caught == flips);
}

#[test]
fn out_of_range_cycles_shared_pages_and_truncation_are_named_by_page() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = Scratch::of(&snapshot(etcd(), dir.path(), "loaded.db"));
    let (branch, children) = scratch.a_branch();
    let child_at = |i: u64| branch * scratch.page_size + 16 + i * 16 + 8;
    let expect = |what: &str| {
        let (report, _) = scratch.status();
        assert!(
            report.problems.iter().any(|p| p.to_string().contains(what)),
            "{what}: {:?}",
            report.problems
        );
    };
    // A child beyond the high-water mark.
    scratch.put(child_at(0), &(scratch.hwm + 5).to_le_bytes());
    expect(&format!(
        "page {} (bucket key): tree page out of range",
        scratch.hwm + 5
    ));
    // A cycle: the branch names itself.
    scratch.put(child_at(0), &branch.to_le_bytes());
    expect(&format!(
        "page {branch} (bucket key): tree page reached twice"
    ));
    // Two elements to one page.
    scratch.put(child_at(0), &children[1].to_le_bytes());
    expect(&format!("page {}", children[1]));
    expect("reached twice");
    scratch.put(child_at(0), &children[0].to_le_bytes());
    assert!(scratch.status().0.is_clean(), "restored");
    // Truncated: the file no longer holds every page.
    let (report, ..) = bbolt::status(&scratch.file, scratch.len - scratch.page_size).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.what.contains("do not hold")),
        "{:?}",
        report.problems
    );
    // A damaged meta page: the other one still opens the file, and the damage is reported.
    scratch.put(16 + 40, &[0xff]);
    let (report, _) = scratch.status();
    assert!(
        report.problems[0]
            .to_string()
            .starts_with("page 0: meta page: checksum"),
        "{:?}",
        report.problems
    );
}
