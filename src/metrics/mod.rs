//! `etcd-backup metrics`: what `status --json` knows, and the record of the last runs, in the
//! Prometheus text format: on stdout, as a node_exporter textfile (`--textfile DIR`, refreshed
//! by every backup, spray and verify when `metrics.textfile_dir` is set), or over HTTP
//! (`--listen ADDR`, Pod Mode).

pub mod exposition;
pub mod http;

use crate::config::Settings;
use crate::store::Store;
use anyhow::{Context, Result};
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The file a textfile collector reads (it reads `*.prom`).
pub const TEXTFILE_NAME: &str = "etcd-backup.prom";

/// The exposition of this node's store as it is now. Changes nothing on disk: a missing store
/// is a node without sets.
pub fn gather(settings: &Settings) -> Result<String> {
    let store = Store::existing(&settings.store.root);
    let (listing, targets, runs) = match &store {
        Some(store) => (
            store.list()?,
            crate::spray::read_state(store),
            crate::runs::read(store),
        ),
        None => Default::default(),
    };
    let summary = crate::status::summarize(
        &listing.sets,
        &targets,
        chrono::Utc::now(),
        settings.status.max_age,
    );
    Ok(exposition::render(
        &summary,
        &runs,
        &settings.node_name,
        listing.unreadable.len(),
    ))
}

/// Writes `dir/etcd-backup.prom` whole or not at all (a collector never reads half a file):
/// a temporary name the collector ignores, fsync, rename. 0644: the metrics hold no secret,
/// and node_exporter often runs as another user.
pub fn write_textfile(dir: &Path, text: &str) -> Result<()> {
    let target = dir.join(TEXTFILE_NAME);
    let temp = dir.join(format!(".{TEXTFILE_NAME}.tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&temp)?;
        // The units run with UMask=0077: the mode is set, not left to the umask.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temp, &target)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&temp);
        return Err(e).with_context(|| format!("cannot write metrics to '{}'", target.display()));
    }
    Ok(())
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
