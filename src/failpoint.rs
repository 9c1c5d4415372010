//! Crash points for the crash-matrix tests: with the `failpoints` feature, a process whose
//! `ETCD_BACKUP_FAILPOINT` names a point kills itself with SIGKILL there, exactly as `kill -9`
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

#[inline(always)]
pub fn hit(point: &'static str) {
    debug_assert!(POINTS.contains(&point), "unknown failpoint {point}");
    #[cfg(feature = "failpoints")]
    if std::env::var("ETCD_BACKUP_FAILPOINT").is_ok_and(|v| v == point) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
