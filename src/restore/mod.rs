//! `etcd-backup restore-check SET`: on the recovery master, before anything is touched, whether
//! the set may be restored here ([`check`]) and how, step by step, for this cluster ([`plan`]).
//! Nothing is changed and nothing runs on other masters.

pub mod check;
pub mod plan;

use crate::cluster::{ETCD_DATA_DIR, release};
use crate::config::Settings;
use crate::store::Store;
use anyhow::{Result, bail};
use std::path::Path;

/// What `restore-check` found: every check, and the plan unless a check refused.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub set: String,
    pub checks: Vec<check::Check>,
    pub refused: bool,
    pub plan: Option<plan::Plan>,
}

/// What this node knows now, under its root (`[cluster] root`).
pub fn learn_node(settings: &Settings) -> (check::Node, Result<Vec<String>, String>) {
    let root = settings.node_root();
    let text = |e: anyhow::Error| format!("{e:#}");
    let data_dir = root.join(ETCD_DATA_DIR);
    let node = check::Node {
        name: settings.node_name.clone(),
        release: release::learn(root).map_err(text),
        cluster_id: crate::cluster::live_cluster_id(root).map_err(text),
        etcd_free: crate::files::free_bytes(&data_dir).map_err(text),
        restore_script: restore_script(root),
    };
    (node, masters(root))
}

fn restore_script(root: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let path = root.join(crate::paths::CLUSTER_RESTORE.trim_start_matches('/'));
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(_) => Err(format!("'{}' is not an executable file", path.display())),
        Err(e) => Err(format!(
            "'{}': {e}: is this an OpenShift master with a running etcd operator?",
            path.display()
        )),
    }
}

/// The set's files are in the plan's stage directory, each a regular file of its manifest's
/// size, as `stage` leaves them (a partial or other content counts as not staged).
fn staged(root: &Path, m: &crate::manifest::Manifest) -> bool {
    let dir = root.join(plan::STAGE_DIR.trim_start_matches('/'));
    m.files.iter().all(|f| {
        std::fs::symlink_metadata(dir.join(&f.name))
            .is_ok_and(|md| md.is_file() && md.len() == f.size)
    })
}

/// The masters etcd.env names.
fn masters(root: &Path) -> Result<Vec<String>, String> {
    let path = root.join(crate::paths::ETCD_ENV.trim_start_matches('/'));
    let bytes = crate::files::read_regular(&path, 1 << 20).map_err(|e| format!("{e:#}"))?;
    let env = crate::peers::parse_etcd_env(&String::from_utf8_lossy(&bytes));
    let names: Vec<String> = env.peers.into_iter().map(|p| p.name).collect();
    if names.is_empty() {
        return Err(format!("'{}' names no master", path.display()));
    }
    Ok(names)
}

/// `restore-check --target T`: the set as target `name` holds it, before anything is fetched —
/// its manifest from the target's listing, its copy checked there as `verify --target` checks
/// it (signatures too, as this node judges them), and the plan starts with the fetch.
pub fn run_on_target(
    settings: &Settings,
    name: &str,
    id: &str,
    allow_other_release: bool,
) -> Result<Report> {
    let targets = crate::targets::named(settings, Some(name))?;
    let [target] = targets.as_slice() else {
        bail!(
            "'{name}' names {} targets: name one by its id ({})",
            targets.len(),
            targets
                .iter()
                .map(|t| t.id())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let listed = target
        .list_sets()?
        .into_iter()
        .find(|l| l.manifest.id == id)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no set '{id}' on {} (`etcd-backup list --from {name}` shows what it holds)",
                target.describe()
            )
        })?;
    let mut outcome = None;
    let verified = crate::targets::check::run(
        settings,
        Some(&target.id()),
        &[id.to_string()],
        (false, &[]),
        &mut |_, checked| {
            if checked.id == id {
                outcome = Some(checked.problem.clone());
            }
        },
    )?;
    let sound = match (&listed.problem, outcome, verified.failed.first()) {
        (Some(problem), _, _) => Err(problem.clone()),
        (None, _, Some((_, error))) => Err(format!("its copy could not be checked: {error}")),
        (None, Some(Some(problem)), None) => Err(problem),
        (None, Some(None), None) if listed.whole => Ok(()),
        (None, Some(None), None) => Err(format!(
            "{} does not hold every file of it",
            target.describe()
        )),
        (None, None, None) => Err(format!("{} did not check it", target.describe())),
    };
    let on = target.id();
    let set = check::Set {
        manifest: &listed.manifest,
        sound,
        signed: None,
        signature: None,
        on: Some(&on),
        staged: staged(settings.node_root(), &listed.manifest),
    };
    Ok(report(
        settings,
        &set,
        allow_other_release,
        Some((&on, !listed.sealed_to.is_empty())),
    ))
}

/// The checks of `set` on this node, and the plan unless one refuses.
fn report(
    settings: &Settings,
    set: &check::Set,
    allow_other_release: bool,
    from: Option<(&str, bool)>,
) -> Report {
    let (node, masters) = learn_node(settings);
    let checks = check::checks(set, &node, chrono::Utc::now(), allow_other_release);
    let refused = check::refused(&checks);
    let plan = (!refused).then(|| {
        plan::plan(
            set.manifest,
            &node.name,
            masters.as_deref().map_err(Clone::clone),
            node.release.as_deref().ok(),
            allow_other_release,
            from,
            set.staged,
        )
    });
    Report {
        set: set.manifest.id.clone(),
        checks,
        refused,
        plan,
    }
}

/// The `restore-check` command: under the store lock (a prune must not remove the set while
/// it is checked), the set deep-checked and its signature judged, the checks, the plan.
pub fn run(settings: &Settings, id: &str, allow_other_release: bool) -> Result<Report> {
    let store = Store::open_existing(&settings.store.root)?;
    let _lock = store.lock(settings.store.lock_wait)?;
    let set = store.get(id).map_err(|e| {
        e.context(format!(
            "restore-check checks a set of this node's store: bring it here first with \
             `etcd-backup fetch [--from TARGET] {id}` (`etcd-backup list --from TARGET` shows \
             what a target holds)"
        ))
    })?;
    if set.sealed.is_some() {
        bail!(
            "set '{id}' is held sealed in '{}': fetch it into a store with --identity first",
            store.root().display()
        );
    }
    let sound = match &set.problem {
        Some(problem) => Err(problem.clone()),
        None => crate::verify::verify_set(&set, true, None).map_err(|e| format!("{e:#}")),
    };
    let signers = crate::seal::signers(&settings.seal.signers);
    let signature =
        crate::verify::signature_problem(&set, &signers, settings.seal.require_signature);
    let checked = check::Set {
        manifest: &set.manifest,
        sound,
        signed: Some(set.signature.is_some()),
        signature,
        on: None,
        staged: staged(settings.node_root(), &set.manifest),
    };
    Ok(report(settings, &checked, allow_other_release, None))
}

#[cfg(test)]
mod tests {
    #[test]
    fn staged_means_every_file_regular_and_whole_in_the_stage_directory() {
        let m = crate::manifest::tests::sample();
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("home/core/assets/backup");
        std::fs::create_dir_all(&dir).unwrap();
        let staged = || super::staged(root.path(), &m);
        assert!(!staged(), "empty");
        for f in &m.files {
            std::fs::write(dir.join(&f.name), vec![0u8; f.size as usize]).unwrap();
        }
        assert!(staged());
        let snapshot = dir.join(&m.files.iter().find(|f| f.is_snapshot()).unwrap().name);
        let size = std::fs::metadata(&snapshot).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&snapshot)
            .unwrap()
            .set_len(size - 1)
            .unwrap();
        assert!(!staged(), "a partial copy");
        std::fs::remove_file(&snapshot).unwrap();
        let elsewhere = root.path().join("elsewhere");
        std::fs::write(&elsewhere, vec![0u8; size as usize]).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &snapshot).unwrap();
        assert!(!staged(), "a link");
    }
}
