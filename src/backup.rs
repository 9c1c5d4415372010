//! `backup`: runs `cluster-backup.sh` into a fresh staging directory, checks what it wrote,
//! and commits a verified set. A failed attempt changes nothing in `sets/`.

use crate::config::{BackupSettings, ForcePolicy, Settings};
use crate::files::open_regular;
use crate::logging::message_id;
use crate::manifest::{
    BackupName, Checks, FORMAT_VERSION, FileEntry, FileKind, Manifest, make_set_id,
    parse_backup_name,
};
use crate::store::{Store, StoredSet};
use crate::verify::{check_resources_with, check_snapshot_cached};
use anyhow::{Context, Result, bail, ensure};
use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// After SIGTERM at the timeout, how long the script's process group gets before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(50);
/// After the script exits, how long to wait for the rest of its output.
const OUTPUT_DRAIN: Duration = Duration::from_millis(500);

/// The most of one line of the script's output kept (the rest of a longer line is dropped).
const MAX_OUTPUT_LINE: usize = 16 * 1024;

/// Calls `each` with every line of `reader` (no newline) until it returns false, each line cut
/// at `max` bytes: a script that writes without newlines never grows our memory.
fn each_line(
    reader: impl std::io::Read,
    max: usize,
    mut each: impl FnMut(&[u8]) -> bool,
) -> std::io::Result<()> {
    let mut reader = std::io::BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            if !line.is_empty() {
                each(&line);
            }
            return Ok(());
        }
        let newline = buf.iter().position(|&b| b == b'\n');
        let part = &buf[..newline.unwrap_or(buf.len())];
        let room = max.saturating_sub(line.len()).min(part.len());
        line.extend_from_slice(&part[..room]);
        let used = newline.map_or(buf.len(), |at| at + 1);
        reader.consume(used);
        if newline.is_some() {
            if !each(&line) {
                return Ok(());
            }
            line.clear();
        }
    }
}

/// How one run of the script ended.
#[derive(Debug)]
enum ScriptEnd {
    Exited(ExitStatus),
    TimedOut,
}

/// What the script said that we keep: its last line (for errors) and etcd's version.
#[derive(Default)]
struct Said {
    last_line: Option<String>,
    etcd_version: Option<String>,
}

/// Runs `command [--force] <dir>` in its own process group, streams its output into the log
/// line by line, and kills the group at the timeout. Returns how it ended and what it said.
fn run_script(
    command: &Path,
    chroot: Option<&Path>,
    force: bool,
    dir: &Path,
    timeout: Duration,
) -> Result<(ScriptEnd, Said)> {
    let (reader, writer) =
        std::io::pipe().context("cannot create a pipe for the backup command")?;
    let mut cmd = Command::new(command);
    if let Some(root) = chroot {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::process::CommandExt;
        let root = std::ffi::CString::new(root.as_os_str().as_bytes())
            .context("backup.chroot holds a NUL byte")?;
        // SAFETY: between fork and exec only async-signal-safe calls (chroot, chdir) on memory
        // allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if nix::libc::chroot(root.as_ptr()) != 0 || nix::libc::chdir(c"/".as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    if force {
        cmd.arg("--force");
    }
    cmd.arg(dir)
        .stdin(Stdio::null())
        .stdout(writer.try_clone().context("cannot duplicate pipe")?)
        .stderr(writer)
        .process_group(0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run backup command '{}'", command.display()))?;
    // Close our copies of the write end, or the reader never sees EOF.
    drop(cmd);
    crate::failpoint::hit("backup:script-running");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);

    let (lines_tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let _ = each_line(reader, MAX_OUTPUT_LINE, |line| {
            lines_tx
                .send(String::from_utf8_lossy(line).trim_end().to_string())
                .is_ok()
        });
    });
    let mut said = Said::default();
    let mut log_line = |line: String| {
        tracing::info!(target: "script", forced = force, "{line}");
        if let Some(v) = crate::cluster::etcd_version_of_line(&line) {
            said.etcd_version = Some(v);
        }
        if !line.is_empty() {
            said.last_line = Some(line);
        }
    };

    let deadline = Instant::now() + timeout;
    let end = loop {
        if let Ok(line) = lines.recv_timeout(POLL) {
            log_line(line);
            continue;
        }
        if let Some(status) = child
            .try_wait()
            .context("cannot wait for the backup command")?
        {
            break ScriptEnd::Exited(status);
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                timeout_secs = timeout.as_secs(),
                "backup command timed out, killing its process group"
            );
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGTERM);
            let grace_end = Instant::now() + KILL_GRACE;
            while child.try_wait()?.is_none() && Instant::now() < grace_end {
                std::thread::sleep(POLL);
            }
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
            child.wait().context("cannot reap the backup command")?;
            break ScriptEnd::TimedOut;
        }
    };
    // The rest of the output; a grandchild that keeps the pipe open does not hold us up.
    let drain_end = Instant::now() + OUTPUT_DRAIN;
    while let Ok(line) = lines.recv_timeout(drain_end.saturating_duration_since(Instant::now())) {
        log_line(line);
    }
    Ok((end, said))
}

/// The two files the script left in `dir`, checked for shape: regular files, exactly one of
/// each kind, same stamp, dirty suffix iff `forced`, nothing else.
fn find_backup_files(dir: &Path, forced: bool) -> Result<(PathBuf, PathBuf)> {
    let mut snapshots = Vec::new();
    let mut resources = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list '{}'", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list '{}'", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = parse_backup_name(&name).map(|n| n.kind);
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        match kind {
            Some(FileKind::Snapshot) if is_file => snapshots.push(name),
            Some(FileKind::Resources) if is_file => resources.push(name),
            _ => bail!(
                "unexpected entry '{}' left by the backup command",
                entry.path().display()
            ),
        }
    }
    snapshots.sort();
    resources.sort();
    ensure!(
        snapshots.len() == 1,
        "expected exactly one snapshot_*.db in '{}', found {}: [{}]",
        dir.display(),
        snapshots.len(),
        snapshots.join(", ")
    );
    ensure!(
        resources.len() == 1,
        "expected exactly one static_kuberesources_*.tar.gz in '{}', found {}: [{}]",
        dir.display(),
        resources.len(),
        resources.join(", ")
    );
    let parsed: [BackupName; 2] = [
        parse_backup_name(&snapshots[0]).expect("matched above"),
        parse_backup_name(&resources[0]).expect("matched above"),
    ];
    ensure!(
        parsed[0].stamp == parsed[1].stamp,
        "'{}' and '{}' do not carry the same timestamp",
        snapshots[0],
        resources[0]
    );
    ensure!(
        parsed.iter().all(|n| n.dirty == forced),
        "file names {} the __POSSIBLY_DIRTY__ suffix although the command ran {} --force",
        if forced { "lack" } else { "carry" },
        if forced { "with" } else { "without" }
    );
    Ok((dir.join(&snapshots[0]), dir.join(&resources[0])))
}

/// The node a set is taken on, for the facts of its cluster: its `/` and what the backup
/// command said of etcd's version.
pub(crate) struct Node<'a> {
    pub root: &'a Path,
    pub etcd_version: Option<String>,
}

/// Checks the staged files and builds the manifest, with the cluster's facts when `node` is
/// given; each byte is read exactly once.
pub(crate) fn check_staged(
    dir: &Path,
    forced: bool,
    id: String,
    origin: &str,
    created: chrono::DateTime<chrono::Utc>,
    node: Option<Node>,
) -> Result<Manifest> {
    let (db, tar) = find_backup_files(dir, forced)?;
    // From the cache the script left it in; the deep check reads it there too, then drops it.
    let (db_digest, page_size) = check_snapshot_cached(&db)?;
    // Sound bytes are not enough: a damaged page of etcd's backend streams out with a valid
    // trailer, and etcd cannot restore it.
    let (figures, membership) = if cfg!(feature = "bench-without-deep-check") {
        (None, None)
    } else {
        let (figures, membership) = crate::verify::deep_check_membership(&db)?;
        (Some(figures), Some(membership))
    };
    let mut scan = crate::cluster::archive::Scan::default();
    let (tar_digest, static_pod_dirs) = check_resources_with(&tar, &mut scan)?;
    let cluster = node.map(|node| {
        crate::cluster::learn(
            node.root,
            crate::cluster::Learned {
                etcd_version: node.etcd_version,
                membership,
                archive: Some(scan.finish()),
            },
        )
    });
    for path in [&db, &tar] {
        open_regular(path)?
            .sync_all()
            .with_context(|| format!("cannot fsync '{}'", path.display()))?;
    }
    let entry = |path: &Path, digest: crate::verify::FileDigest| FileEntry {
        name: path
            .file_name()
            .expect("a file")
            .to_string_lossy()
            .into_owned(),
        size: digest.size,
        sha256: digest.hex(),
    };
    Ok(Manifest {
        format: FORMAT_VERSION,
        id,
        origin: origin.to_string(),
        created,
        tool_version: crate::VERSION.to_string(),
        dirty: forced,
        files: vec![entry(&db, db_digest), entry(&tar, tar_digest)],
        checks: Checks {
            snapshot_page_size: page_size,
            snapshot_sha256_trailer: true,
            static_pod_dirs,
            etcd: figures,
        },
        cluster,
    })
}

/// Removes a failed attempt's staging directory (never following symlinks in it); a failure
/// to do so is logged and left to the staging GC.
fn discard(staging: &Path) {
    if let Err(e) = std::fs::remove_dir_all(staging) {
        tracing::warn!(staging = %staging.display(), "cannot remove a failed attempt's staging: {e}");
    }
}

/// One attempt: script into a fresh staging dir, checks, commit. `Ok(None)` means the script
/// itself failed (exit status non-zero), the case `force = "fallback"` retries.
fn attempt(
    store: &Store,
    settings: &BackupSettings,
    forced: bool,
    (origin, signing_key, root): (&str, Option<&ssh_key::PrivateKey>, &Path),
) -> Result<Option<StoredSet>> {
    let created = chrono::Utc::now();
    let id = make_set_id(created, origin);
    let staging = store.new_staging("backup")?;
    tracing::info!(set_id = %id, staging = %staging.display(), forced, "running backup command");
    let (end, said) = run_script(
        &settings.command,
        settings.chroot.as_deref(),
        forced,
        &staging,
        settings.timeout,
    )?;
    crate::failpoint::hit("backup:script-exited");
    let last = said.last_line.as_deref().unwrap_or("no output");
    // What a failed script left (a partial snapshot as large as a set) is no evidence worth
    // its space: it goes now, so that a retry or the next run has the room. The output of a
    // script that claimed success but fails the checks stays for inspection until `gc_grace`.
    match end {
        ScriptEnd::TimedOut => {
            discard(&staging);
            bail!(
                "backup command '{}' did not finish within {}s and was killed (last output: {last})",
                settings.command.display(),
                settings.timeout.as_secs(),
            )
        }
        ScriptEnd::Exited(status) if !status.success() => {
            tracing::warn!(forced, status = %status, "backup command failed: {last}");
            discard(&staging);
            return Ok(None);
        }
        ScriptEnd::Exited(_) => {}
    }
    let read_before = self_read_bytes();
    let node = Node {
        root,
        etcd_version: said.etcd_version,
    };
    let manifest =
        check_staged(&staging, forced, id, origin, created, Some(node)).with_context(|| {
            format!(
                "backup command '{}' succeeded but its output is not a valid backup",
                settings.command.display()
            )
        })?;
    // A fact that could not be learned is said once per set; the set is no worse for it.
    for note in manifest.cluster.iter().flat_map(|c| &c.unknown) {
        tracing::warn!(set_id = %manifest.id, "not recorded in the set: {note}");
    }
    // Each byte of the set is read once: the benchmark checks this figure.
    tracing::debug!(
        read_bytes = self_read_bytes().saturating_sub(read_before),
        set_bytes = manifest.total_size(),
        peak_rss_kib = self_status_kib("VmHWM:"),
        "set checked"
    );
    if let Some(key) = signing_key {
        let signature = crate::seal::sign::sign(key, &manifest.to_json())?;
        Store::write_signature(&staging, signature.as_bytes())?;
    }
    store.commit(&staging, &manifest).map(Some)
}

/// Bytes this process (and its reaped children) read so far: `rchar` of /proc/self/io.
fn self_read_bytes() -> u64 {
    proc_self_field("/proc/self/io", "rchar:")
}

/// A `kB` figure of /proc/self/status, e.g. `VmHWM:` (this process's own peak RSS).
fn self_status_kib(key: &str) -> u64 {
    proc_self_field("/proc/self/status", key)
}

fn proc_self_field(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Starts a backup only when the free space of the store's filesystem — on a master, etcd's —
/// stays above the floor (`retention.min_free_space`) once the next set is written, taken to
/// be as large as the newest of `sets` (the store's). Pruning by policy comes first, as if that
/// set were there already, when that makes the room; otherwise the backup is refused, naming
/// the figures: the script would fill the disk (twice, under `force = "fallback"`), and a full
/// disk under /var takes etcd down with it.
fn ensure_room(settings: &Settings, store: &Store, sets: &[StoredSet]) -> Result<()> {
    let Some(newest) = sets.iter().max_by_key(|s| s.info().created) else {
        return Ok(());
    };
    let next = newest.manifest.total_size();
    let floor = settings.retention.min_free_space.unwrap_or(0);
    let fits = |free: u64| free >= next.saturating_add(floor);
    if fits(store.free_bytes()?) {
        return Ok(());
    }
    let plan = crate::prune::prune_reserving(
        store,
        &settings.retention,
        false,
        settings.not_after(),
        next,
    )
    .context("pruning to make room for the next set failed")?;
    let pruned = plan.to_delete().count();
    let free = store.free_bytes()?;
    if !fits(free) {
        let human = crate::units::human_size;
        bail!(
            "not enough space in the store '{}': {} free{}, the next set needs about {} (as the \
             newest, {}, took) and {} must stay free (retention.min_free_space): free up space \
             there or lower the retention (keep_*, max_total_size)",
            store.root().display(),
            human(free),
            if pruned > 0 {
                format!(" after pruning {pruned} set(s) by policy")
            } else {
                String::new()
            },
            human(next),
            newest.id(),
            human(floor)
        );
    }
    tracing::info!(
        "pruned {pruned} set(s) by policy first, to keep {} free with the next set written",
        crate::units::human_size(floor)
    );
    Ok(())
}

/// The command runs inside `root` and writes into the staging directory by its path there:
/// `root` must show the store at the same path (Pod Mode mounts the host's `/` and the host's
/// store at the store's own path).
fn check_chroot(root: &Path, store: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let inside = root.join(store.strip_prefix("/").unwrap_or(store));
    let (a, b) = (
        std::fs::metadata(store)
            .with_context(|| format!("cannot read the store '{}'", store.display()))?,
        std::fs::metadata(&inside).with_context(|| {
            format!(
                "backup.chroot '{}' has no '{}': mount the host's store at the same path",
                root.display(),
                store.display()
            )
        })?,
    );
    if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
        bail!(
            "'{}' is not the store '{}': the backup command in backup.chroot '{}' would write elsewhere; mount the host's store at the same path",
            inside.display(),
            store.display(),
            root.display()
        );
    }
    Ok(())
}

/// The whole `backup` run: under the store lock, clears staging leftovers, asks
/// [`crate::takeover`] whether this node takes a backup now, takes it, then prunes. Returns the
/// committed set, or `None` when it was not this node's turn.
pub fn run(settings: &Settings) -> Result<Option<StoredSet>> {
    let store = Store::open(&settings.store.root)?;
    let _lock = store.lock(settings.store.lock_wait)?;
    for removed in store.gc_staging(settings.store.gc_grace, std::time::SystemTime::now())? {
        tracing::info!(path = %removed.display(), "removed staging leftover");
    }
    let sets = store.list()?.sets;
    let held: Vec<_> = sets
        .iter()
        .filter(|s| s.problem.is_none())
        .map(|s| s.info())
        .collect();
    let turn = crate::takeover::whose_turn(
        &settings.node_name,
        &settings.backup.snapshot_nodes,
        &held,
        chrono::Utc::now(),
        settings.not_after(),
        settings.backup.takeover_after,
    );
    let set = match turn {
        crate::takeover::Turn::Skip(why) => {
            tracing::info!("not taking a backup: {why}");
            None
        }
        crate::takeover::Turn::Take(why) => {
            tracing::info!("taking a backup: {why}");
            Some(take_backup(settings, &store, &sets)?)
        }
    };
    crate::prune::prune(&store, &settings.retention, false, settings.not_after()).with_context(
        || match &set {
            Some(set) => format!("set {} was committed, but pruning failed", set.id()),
            None => "pruning failed".to_string(),
        },
    )?;
    Ok(set)
}

/// Takes one backup set per the force policy and commits it. The caller holds the lock and
/// passes the store's sets as it listed them.
pub fn take_backup(settings: &Settings, store: &Store, sets: &[StoredSet]) -> Result<StoredSet> {
    let started = Instant::now();
    let backup = &settings.backup;
    if let Some(root) = &backup.chroot {
        check_chroot(root, store.root())?;
    }
    ensure_room(settings, store, sets)?;
    // A key that cannot sign stops the backup before etcd is asked for a snapshot.
    let signing_key = settings
        .seal
        .signing_key
        .as_deref()
        .map(crate::seal::keys::load_signing_key)
        .transpose()?;
    let origin = (
        settings.node_name.as_str(),
        signing_key.as_ref(),
        settings.node_root(),
    );
    let first_forced = backup.force == ForcePolicy::Always;
    let mut set = attempt(store, backup, first_forced, origin)?;
    if set.is_none() && backup.force == ForcePolicy::Fallback {
        tracing::warn!("retrying the backup command with --force; the set will be marked dirty");
        set = attempt(store, backup, true, origin)?;
    }
    let Some(set) = set else {
        bail!(
            "backup command '{}' failed{} (see its output above)",
            backup.command.display(),
            if backup.force == ForcePolicy::Fallback {
                ", also with --force"
            } else {
                ""
            }
        );
    };
    let manifest = &set.manifest;
    tracing::info!(
        message_id = message_id::BACKUP_SUCCEEDED,
        set_id = %manifest.id,
        origin = %manifest.origin,
        dirty = manifest.dirty,
        bytes = manifest.total_size(),
        seconds = started.elapsed().as_secs_f64(),
        "backup succeeded: set {} committed",
        manifest.id
    );
    Ok(set)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_scripts_lines_are_bounded() {
        let mut output = vec![b'x'; 1 << 20];
        output.extend_from_slice(b"\netcdctl version: 3.5.18\r\n\nlast, without newline");
        let mut lines = Vec::new();
        super::each_line(&output[..], 100, |l| {
            lines.push(l.to_vec());
            true
        })
        .unwrap();
        assert_eq!(
            lines,
            [
                vec![b'x'; 100],
                b"etcdctl version: 3.5.18\r".to_vec(),
                Vec::new(),
                b"last, without newline".to_vec()
            ]
        );
        // Stops when told.
        let mut seen = 0;
        super::each_line(&b"a\nb\nc\n"[..], 100, |_| {
            seen += 1;
            seen < 2
        })
        .unwrap();
        assert_eq!(seen, 2);
    }
}
