//! Crash points for the crash-matrix tests: with the `failpoints` feature, a process whose
//! `ETCD_BACKUP_FAILPOINT` names a point kills itself with SIGKILL there (or stops, see `hit`), exactly as `kill -9`
//! would (no destructors, no flush, locks released by the kernel). Without the feature,
//! `hit` is an empty inline function and release builds carry nothing of it.

/// Every point, in the order a run meets them; the tests iterate over this list.
pub const POINTS: [&str; 9] = [
    "backup:script-running",
    "backup:script-exited",
    "store:manifest-written",
    "store:renamed",
    "store:deleting",
    "spray:sending",
    "receive:writing",
    "receive:before-commit",
    "receive:before-ack",
];

/// `ETCD_BACKUP_FAILPOINT=<point>` kills the process there; `<point>:stop` stops it there
/// (SIGSTOP, once) so that a test can run something else while it is held at that point.
#[inline(always)]
pub fn hit(point: &'static str) {
    debug_assert!(POINTS.contains(&point), "unknown failpoint {point}");
    #[cfg(feature = "failpoints")]
    if let Ok(wanted) = std::env::var("ETCD_BACKUP_FAILPOINT") {
        use nix::sys::signal::{Signal, raise};
        use std::sync::atomic::{AtomicBool, Ordering};
        static STOPPED: AtomicBool = AtomicBool::new(false);
        if wanted == point {
            let _ = raise(Signal::SIGKILL);
        } else if wanted.strip_suffix(":stop") == Some(point)
            && !STOPPED.swap(true, Ordering::SeqCst)
        {
            let _ = raise(Signal::SIGSTOP);
        }
    }
}
