//! `etcd-backup metrics`: what `status --json` knows, and the record of the last runs, in the
//! Prometheus text format: on stdout, as a node_exporter textfile (`--textfile DIR`, refreshed
//! by every backup, spray and verify when `metrics.textfile_dir` is set), or over HTTP
//! (`--listen ADDR`, Pod Mode).

pub mod exposition;
pub mod http;

use crate::config::Settings;
use anyhow::{Context, Result};
use std::path::Path;

/// The file a textfile collector reads (it reads `*.prom`).
pub const TEXTFILE_NAME: &str = "etcd-backup.prom";

/// The exposition of this node's store as it is now. Changes nothing on disk: a missing store
/// is a node without sets.
pub fn gather(settings: &Settings) -> Result<String> {
    let view = crate::status::StoreView::read(&settings.store.root)?;
    let summary = view.summary(settings.status.max_age, settings.max_clock_skew);
    let live = crate::cluster::live_cluster_id(settings.node_root()).ok();
    let of_live =
        crate::status::of_live_cluster(summary.newest.map(|s| &s.manifest), live.as_deref());
    Ok(exposition::render(
        &summary,
        &view.runs,
        &settings.node_name,
        (view.listing.unreadable.len(), of_live),
    ))
}

/// Writes `dir/etcd-backup.prom` whole or not at all (a collector never reads half a file):
/// a temporary name the collector ignores, fsync, rename. 0644: the metrics hold no secret,
/// and node_exporter often runs as another user.
pub fn write_textfile(dir: &Path, text: &str) -> Result<()> {
    crate::files::write_atomic_mode(dir, TEXTFILE_NAME, text.as_bytes(), 0o644)
        .context("metrics textfile")
}

/// At the end of a run: the textfile, when one is configured. A failure here never fails the
/// run; it is logged.
pub fn refresh(settings: &Settings) {
    let Some(dir) = &settings.metrics.textfile_dir else {
        return;
    };
    if let Err(error) = gather(settings).and_then(|text| write_textfile(dir, &text)) {
        tracing::warn!("metrics textfile not refreshed: {error:#}");
    }
}
