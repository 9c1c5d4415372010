//! A bucket's own retention, and its garbage: sets the plan drops (never locked ones), uploads
//! and manifest-less files no run continued within `gc_grace`.

use super::Remote;
use super::layout::{self, MANIFEST};
use crate::config::S3Target;
use crate::logging::message_id;
use crate::protocol::send::OpenSet;
use crate::s3::Client;
use anyhow::Result;

/// The target's own retention over the sets it holds (and those just sent): deletes what the
/// plan drops, manifest first, and never a set whose objects are locked.
pub(super) fn prune(
    client: &mut Client,
    t: &S3Target,
    judge: &crate::protocol::Judge,
    remote: &Remote,
    sent: &[String],
    sets: &[OpenSet],
) -> Result<()> {
    let mut infos: Vec<_> = remote
        .held(t.files)
        .into_iter()
        .filter(|h| !h.damaged)
        .map(|h| h.info)
        .collect();
    for id in sent {
        if let Some(open) = sets.iter().find(|s| s.set.id() == id)
            && !infos.iter().any(|i| &i.id == id)
        {
            infos.push(open.set.info());
        }
    }
    let plan = crate::retention::plan(&infos, judge.policy, u64::MAX, judge.not_after);
    let mut deleted = Vec::new();
    for decision in plan.to_delete() {
        let id = &decision.set.id;
        let manifest_key = layout::key(&t.prefix, id, MANIFEST);
        if let Some(until) = locked_until(client, &manifest_key)? {
            tracing::info!(set_id = %id, "set {id} kept on the bucket: its objects are locked until {until}");
            continue;
        }
        let Some((manifest, _)) = remote.manifests.get(id) else {
            continue;
        };
        client.delete(&manifest_key)?;
        for entry in &manifest.files {
            if remote.listing.sets[id].objects.contains_key(&entry.name) {
                client.delete(&layout::key(&t.prefix, id, &entry.name))?;
            }
        }
        deleted.push(id.clone());
    }
    if !deleted.is_empty() {
        tracing::info!(
            message_id = message_id::SETS_PRUNED,
            count = deleted.len(),
            set_ids = %deleted.join(","),
            store = %client.describe(),
            "pruned {} set(s) on {}: {}",
            deleted.len(),
            client.describe(),
            deleted.join(", ")
        );
    }
    Ok(())
}

/// The retain-until date of a locked object, when it lies ahead.
fn locked_until(client: &mut Client, key: &str) -> Result<Option<String>> {
    let Some(head) = client.head(key)? else {
        return Ok(None);
    };
    Ok(head
        .header("x-amz-object-lock-retain-until-date")
        .filter(|until| layout::parse_time(until).is_some_and(|t| t > chrono::Utc::now()))
        .map(str::to_string))
}

/// Aborts multipart uploads no run continued within `gc_grace`, and deletes the files of set
/// directories left without a manifest for as long.
pub(super) fn collect_garbage(
    client: &mut Client,
    t: &S3Target,
    remote: &Remote,
    uploading: &[String],
) -> Result<()> {
    let now = chrono::Utc::now();
    let uploads = client.list_uploads(&layout::sets_prefix(&t.prefix))?;
    let continued: Vec<String> = Vec::new();
    for upload in layout::stale_uploads(&t.prefix, &uploads, &continued, now, t.gc_grace) {
        tracing::info!(key = %upload.key, "aborting a stale multipart upload of '{}'", upload.key);
        client.abort(&upload.key, &upload.upload_id)?;
    }
    for (id, names) in layout::orphans(&remote.listing, uploading, now, t.gc_grace) {
        tracing::info!(set_id = %id, "deleting the files of '{id}', left without a manifest");
        for name in names {
            client.delete(&layout::key(&t.prefix, id, name))?;
        }
    }
    Ok(())
}
