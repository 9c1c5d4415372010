//! The bbolt structural check on hostile files (a peer's snapshot is one): problems, never a
//! panic; memory bounded by the file (one bit per page, one root-to-leaf path of pages).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::os::unix::fs::FileExt;

fuzz_target!(|data: &[u8]| {
    let file = tempfile::tempfile().expect("a scratch file");
    file.write_all_at(data, 0).expect("writing the input");
    let (report, ..) =
        etcd_backup::bbolt::status(&file, data.len() as u64).expect("reading a local file");
    assert!(report.problems.len() <= 102);
});
