//! `backup`, `list`, `verify`, `prune`, `status` against a real etcd and the stand-in script.

use crate::util::*;
use std::path::PathBuf;
use std::process::Command;

#[test]
fn backup_commits_a_verified_private_set_that_etcd_can_restore() {
    let node = Node::new("");
    let id = node.backup();
    assert!(id.ends_with("-master-0"), "{id}");

    let sets = node.sets();
    assert_eq!(sets.len(), 1);
    let set = &sets[0];
    assert_eq!(set["id"], id.as_str());
    assert_eq!(set["origin"], "master-0");
    assert_eq!(set["dirty"], false);
    assert_eq!(set["verified"], true);

    // The set dir is exactly the script's two files plus the manifest, all private, and the
    // manifest's sizes and hashes are those of the files on disk.
    let dir = node.set_dir(&id);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&node.store()), 0o700);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names[0] == "manifest.json");
    assert!(
        names[1].starts_with("snapshot_") && names[1].ends_with(".db"),
        "{names:?}"
    );
    assert!(
        names[2].starts_with("static_kuberesources_") && names[2].ends_with(".tar.gz"),
        "{names:?}"
    );
    for name in &names {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
    }
    let files = set["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    for file in files {
        let path = dir.join(file["name"].as_str().unwrap());
        assert_eq!(
            file["size"].as_u64().unwrap(),
            std::fs::metadata(&path).unwrap().len()
        );
        assert_eq!(file["sha256"].as_str().unwrap(), sha256_hex(&path));
    }
    // The archive holds the newest kube-apiserver revision, not the older one.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let pods = manifest["checks"]["static_pod_dirs"].to_string();
    assert!(
        pods.contains("kube-apiserver-pod-4") && !pods.contains("kube-apiserver-pod-3"),
        "{pods}"
    );
    assert!(
        node.staging_entries()
            .iter()
            .all(|p| !p.is_dir() || std::fs::read_dir(p).unwrap().next().is_none())
    );

    // The proof that the set is usable: etcd restores it (this checks the sha256 trailer) and
    // the restored data holds the keys that were loaded.
    let etcd = etcd();
    let restored = tempfile::tempdir().unwrap();
    let data_dir = restored.path().join("member-data");
    let out = Command::new(etcd.bin_dir.join("etcdutl"))
        .args(["snapshot", "restore"])
        .arg(dir.join(&names[1]))
        .arg("--data-dir")
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(data_dir.join("member/snap/db").is_file());
    let status = Command::new(etcd.bin_dir.join("etcdutl"))
        .args(["snapshot", "status", "-w", "json"])
        .arg(dir.join(&names[1]))
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(status["totalKey"].as_u64().unwrap() >= 2_000, "{status}");

    assert_private(&node.store());
    node.run(&["verify"])
        .expect_code(0)
        .expect_stdout(&format!("ok   {id}"));
    node.run(&["verify", &id]).expect_code(0);
    node.run(&["list"])
        .expect_code(0)
        .expect_stdout(&id)
        .expect_stdout("master-0");
}

/// Every failure mode of the script: non-zero exit, a clear message, no new set, and the older
/// set untouched.
#[test]
fn failed_backups_leave_the_history_as_it_was() {
    let node = Node::new("[retention]\nkeep_last = 1\n");
    node.write_config_with("", "timeout = \"3s\"", "[retention]\nkeep_last = 1\n");
    let good = node.backup();
    let before = fingerprint(&node.set_dir(&good));

    let table = [
        ("exit1", "failed, also with --force"),
        ("orphan-tar", "failed, also with --force"),
        ("hang", "did not finish within 3s and was killed"),
        ("flip-byte", "sha256 trailer mismatch"),
        ("truncate", "not 32 bytes plus whole 4096-byte pages"),
        ("two-db", "expected exactly one snapshot_*.db"),
    ];
    for (mode, message) in table {
        let started = std::time::Instant::now();
        let run = node.run_failing(mode, &["backup"]);
        run.expect_code(1)
            .expect_stderr(message)
            .expect_stderr("error: ");
        assert_eq!(
            node.set_ids(),
            std::slice::from_ref(&good),
            "{mode}: no new set, the old one kept"
        );
        assert_eq!(
            fingerprint(&node.set_dir(&good)),
            before,
            "{mode}: old set untouched"
        );
        if mode == "hang" {
            // The script ignores SIGTERM: SIGKILL after the grace period ends it.
            assert!(
                started.elapsed() < std::time::Duration::from_secs(20),
                "{mode} took {:?}",
                started.elapsed()
            );
        }
    }
    // The corrupt files stay in staging (never in sets/) until collected, as private as
    // everything else.
    let leftovers = node.staging_entries();
    assert!(!leftovers.is_empty());
    assert_private(&node.store());
    node.run(&["verify"]).expect_code(0);
}

#[test]
fn fallback_retries_with_force_and_marks_the_set_dirty() {
    let node = Node::new("");
    let run = node.run_failing("progressing", &["backup"]);
    run.expect_code(0)
        .expect_stderr("retrying the backup command with --force");
    let sets = node.sets();
    assert_eq!(sets.len(), 1);
    assert_eq!(sets[0]["dirty"], true);
    let names = sets[0]["files"].to_string();
    assert_eq!(names.matches("__POSSIBLY_DIRTY__").count(), 2, "{names}");

    // With force = "never" the same situation is a failure.
    node.write_config_with("", "force = \"never\"", "");
    node.run_failing("progressing", &["backup"])
        .expect_code(1)
        .expect_stderr("operator is progressing");
    assert_eq!(node.sets().len(), 1);
}

#[test]
fn retention_runs_after_each_backup_and_prune_explains_itself() {
    let node = Node::new("[retention]\nkeep_last = 2\n");
    let ids: Vec<String> = (0..3).map(|_| node.backup()).collect();
    assert_eq!(node.set_ids(), ids[1..].to_vec(), "the oldest went");

    // A bigger policy then a smaller one: dry run names rules and deletes nothing.
    node.write_config("[retention]\nkeep_last = 1\nkeep_daily = 1\n");
    let run = node.run(&["prune", "--dry-run"]);
    run.expect_code(0)
        .expect_stdout(&format!("keep    {}  (newest set of its origin, newest clean set of its origin, keep_last, keep_daily)", ids[2]))
        .expect_stdout(&format!("would delete  {}  (no keep rule matches)", ids[1]));
    assert_eq!(node.set_ids().len(), 2);
    node.run(&["prune"])
        .expect_code(0)
        .expect_stdout(&format!("deleted  {}", ids[1]));
    assert_eq!(node.set_ids(), [ids[2].clone()]);
}

#[test]
fn staging_leftovers_are_collected_after_the_grace_period() {
    let node = Node::new("");
    // A failed script's partial files go at once (they hold a set's worth of disk)...
    node.run_failing("orphan-tar", &["backup"]).expect_code(1);
    assert_eq!(node.staging_entries(), Vec::<std::path::PathBuf>::new());
    // ...output that claims success but fails the checks stays for inspection.
    node.run_failing("flip-byte", &["backup"]).expect_code(1);
    let leftovers = node.staging_entries();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    // Within the grace period (default 1h) a new backup leaves them alone...
    node.backup();
    assert!(leftovers.iter().all(|p| p.exists()));
    // ...after it, they are removed. A foreign file in sets/ is never touched.
    std::fs::write(node.store().join("sets/NOTES.txt"), "admin notes").unwrap();
    node.write_config_with("gc_grace = \"0s\"", "", "");
    node.run(&["backup"])
        .expect_code(0)
        .expect_stderr("removed staging leftover");
    assert!(leftovers.iter().all(|p| !p.exists()));
    assert!(node.store().join("sets/NOTES.txt").exists());
    assert_eq!(node.sets().len(), 2);
}

#[test]
fn a_held_lock_makes_backup_exit_busy() {
    let node = Node::new("");
    node.write_config_with("lock_wait = \"0s\"", "", "");
    let store = etcd_backup::store::Store::open(&node.store()).unwrap();
    let lock = store.lock(std::time::Duration::ZERO).unwrap();
    node.run(&["backup"])
        .expect_code(5)
        .expect_stderr("is busy")
        .expect_stderr(&format!("pid {}", std::process::id()));
    node.run(&["prune"]).expect_code(5);
    drop(lock);
    node.backup();
}

#[test]
fn verify_and_list_catch_damage_on_disk() {
    let node = Node::new("");
    let first = node.backup();
    let second = node.backup();
    let dir = node.set_dir(&first);
    let tar = set_file(&dir, ".tar.gz");
    // Same size, one bit different: only a re-hash sees it.
    let mut bytes = std::fs::read(&tar).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&tar, &bytes).unwrap();
    let run = node.run(&["verify"]);
    run.expect_code(1)
        .expect_stdout(&format!("BAD  {first}"))
        .expect_stdout(&format!("ok   {second}"));
    assert!(
        run.stdout.contains("does not match the manifest"),
        "{}",
        run.stdout
    );
    node.run(&["verify", &second]).expect_code(0);
    node.run(&["verify", "20200101T000000.000Z-nope"])
        .expect_code(1)
        .expect_stdout("no set '20200101T000000.000Z-nope'");

    // A truncated file is visible to list without re-hashing.
    std::fs::write(&tar, &bytes[..10]).unwrap();
    let sets = node.sets();
    let damaged = sets.iter().find(|s| s["id"] == first.as_str()).unwrap();
    assert_eq!(damaged["verified"], false);
    assert!(
        damaged["problem"]
            .as_str()
            .unwrap()
            .contains("manifest says")
    );
    // prune never deletes a damaged set, even with a policy that keeps only one.
    node.write_config("[retention]\nkeep_last = 1\n");
    node.run(&["prune"]).expect_code(0);
    assert!(node.set_dir(&first).exists());
}

#[test]
fn status_reports_freshness_with_its_own_exit_code() {
    let node = Node::new("[status]\nmax_age = \"1h\"\n");
    node.run(&["status"]).expect_code(6).expect_stdout("STALE");
    let id = node.backup();
    node.run(&["status"])
        .expect_code(0)
        .expect_stdout(&id)
        .expect_stdout("fresh");
    let run = node.run(&["status", "--json"]);
    run.expect_code(0);
    let status: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(status["newest"]["id"], id.as_str());
    assert_eq!(status["fresh"], true);
    assert_eq!(status["max_age_seconds"], 3600);

    node.write_config("[status]\nmax_age = \"1s\"\n");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    node.run(&["status"]).expect_code(6).expect_stdout("STALE");
}

#[test]
fn the_next_snapshot_node_takes_over_when_the_first_falls_silent() {
    let m0 = Node::new("");
    let m1 = Node::new("");
    let order = "snapshot_nodes = [\"master-0\", \"master-1\"]\ntakeover_after = \"3s\"";
    // m0 sprays its sets into m1's store, as the spray timer does.
    m0.write_config_with(
        "",
        order,
        &format!(
            "[retention]\nkeep_last = 10\n[spray]\netcd_env = \"\"\n[[spray.target]]\nkind = \"dir\"\npath = \"{}\"\nrequire_mount = false\n",
            m1.store().display()
        ),
    );
    let m1_config = std::fs::read_to_string(m1.config_path())
        .unwrap()
        .replace("\"master-0\"\n\n[store]", "\"master-1\"\n\n[store]");
    m1.write_config_raw(&m1_config.replace("[backup]\n", &format!("[backup]\n{order}\n")));

    let first = m0.backup();
    m0.run(&["spray"]).expect_code(0);
    let run = m1.run(&["backup"]);
    run.expect_code(0)
        .expect_stderr("not taking a backup: master-0 comes first");
    assert!(run.stdout.trim().is_empty());
    assert_eq!(m1.set_ids(), [first]);

    // master-0 falls silent for longer than the bound: master-1 takes over.
    std::thread::sleep(std::time::Duration::from_millis(3200));
    let run = m1.run(&["backup"]);
    run.expect_code(0).expect_stderr("taking over");
    let taken = run.stdout.trim().to_string();
    assert!(taken.ends_with("-master-1"), "{taken}");

    // master-0 is back and its sets arrive again: master-1 steps back.
    m0.backup();
    m0.run(&["spray"]).expect_code(0);
    m1.run(&["backup"])
        .expect_code(0)
        .expect_stderr("not taking a backup");
}

#[test]
fn a_chrooted_command_must_see_the_store_at_its_own_path() {
    // Chrooted into / the store is where it is: a set, as without a chroot.
    let node = Node::new("");
    node.write_config_with("", "chroot = \"/\"\n", "");
    let id = node.backup();
    node.run(&["verify", &id]).expect_code(0);

    // A root that does not show the store: refused before the command runs, nothing left.
    let empty = node.dir.path().join("empty-root");
    std::fs::create_dir(&empty).unwrap();
    node.write_config_with("", &format!("chroot = \"{}\"\n", empty.display()), "");
    node.run(&["backup"])
        .expect_code(1)
        .expect_stderr("mount the host's store at the same path");
    assert_eq!(node.set_ids(), [id]);
    assert!(node.staging_entries().is_empty());
}

#[test]
fn a_damaged_page_with_a_valid_trailer_is_never_committed() {
    let mut node = Node::new("");
    let original = node.dir.path().join("original.db");
    node.env
        .insert("STANDIN_ORIGINAL".into(), original.display().to_string());
    let run = node.run_failing("damaged-page", &["backup"]);
    run.expect_code(1)
        .expect_stderr("fails the structural check (etcd could not restore it): page ")
        .expect_stderr("element 0's data starts at");
    assert!(node.set_ids().is_empty());
    // The trailer is valid: only the walk sees it.
    let staged: Vec<PathBuf> = node
        .staging_entries()
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()))
        .filter(|p| p.extension().is_some_and(|e| e == "db"))
        .collect();
    assert_eq!(staged.len(), 1, "kept for inspection: {staged:?}");
    // etcd 3.5's own check (bbolt's `tx.Check`, in `etcdutl snapshot status`) accepts it: it
    // checks which pages are reachable, not how a page lays out its elements. But the data
    // etcd reads from it is not the data it saved: the hash over every key and value differs
    // from the undamaged snapshot's.
    let status = |path: &std::path::Path| {
        let out = Command::new(etcd_bin_dir().join("etcdutl"))
            .args(["snapshot", "status", "-w", "json"])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let (damaged, undamaged) = (status(&staged[0]), status(&original));
    assert_ne!(
        damaged["hash"], undamaged["hash"],
        "etcd reads other data from the damaged snapshot"
    );
    assert_eq!(damaged["totalSize"], undamaged["totalSize"]);
    // The undamaged one passes our check.
    etcd_backup::verify::deep_check(&original).unwrap();
}

#[test]
fn the_manifest_records_etcds_figures_and_verify_deep_checks_them() {
    let node = Node::new("");
    let id = node.backup();
    node.run(&["verify", "--deep", &id])
        .expect_code(0)
        .expect_stdout(&format!("ok   {id}"));
    let sets = node.sets();
    let recorded = &sets[0]["etcd"];
    let db = std::fs::read_dir(node.set_dir(&id))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "db"))
        .unwrap();
    let out = Command::new(etcd_bin_dir().join("etcdutl"))
        .args(["snapshot", "status", "-w", "json"])
        .arg(&db)
        .output()
        .unwrap();
    let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(recorded["revision"], theirs["revision"]);
    assert_eq!(recorded["total_key"], theirs["totalKey"]);
    assert_eq!(recorded["hash"], theirs["hash"]);
    assert_eq!(recorded["total_size"], theirs["totalSize"]);
}

#[test]
fn a_failed_verification_lasts_and_the_set_is_neither_sent_nor_counted_until_it_verifies() {
    let node = Node::new("");
    let target = node.dir.path().join("target");
    node.write_config(&format!(
        "[spray]\netcd_env = \"\"\n[[spray.target]]\nkind = \"dir\"\npath = \"{}\"\nrequire_mount = false\n",
        target.display()
    ));
    let first = node.backup();
    let second = node.backup();
    // One byte of the newest set's archive flipped at rest: names and sizes still match.
    let tar = set_file(&node.set_dir(&second), ".tar.gz");
    let original = std::fs::read(&tar).unwrap();
    flip_byte(&tar, None, 0x01);
    node.run(&["verify"])
        .expect_code(1)
        .expect_stdout(&format!("ok   {first}"))
        .expect_stdout(&format!("BAD  {second}"));

    // It lasts: list, status, spray and retention see it.
    let sets = node.sets();
    let bad = sets.iter().find(|s| s["id"] == second.as_str()).unwrap();
    assert_eq!(bad["verified"], false);
    assert!(
        bad["problem"]
            .as_str()
            .unwrap()
            .contains("failed verification at"),
        "{bad}"
    );
    assert_eq!(bad["last_verification"]["deep"], false);
    node.run(&["status"])
        .expect_code(1)
        .expect_stdout(&format!("newest set {second} from master-0 is BAD"));
    node.run(&["spray"]).expect_code(0).expect_stdout("(1 sent");
    let sent = StoreAt::configured(node.dir.path().join("t.toml"), &target, "");
    assert_eq!(
        sent.ids(),
        std::slice::from_ref(&first),
        "the failed set is not sprayed"
    );
    node.run(&["prune", "--dry-run"])
        .expect_code(0)
        .expect_stdout(&format!("keep    {first}  (newest set of its origin"));

    // Repaired, verified again: all is as before.
    std::fs::write(&tar, &original).unwrap();
    node.run(&["verify", "--deep", &second])
        .expect_code(0)
        .expect_stdout(&format!("ok   {second}"));
    assert!(node.sets().iter().all(|s| s["verified"] == true));
    node.run(&["status"]).expect_code(0);
    node.run(&["spray"]).expect_code(0).expect_stdout("(1 sent");
}

#[test]
fn stage_copies_a_sound_set_unmodified_for_cluster_restore_and_refuses_anything_else() {
    let node = Node::new("");
    let id = node.backup();
    // Missing parents are made, as /home/core/assets on a rebuilt master.
    let staged = node.dir.path().join("assets/restore");
    let run = node.run(&["stage", &id, staged.to_str().unwrap()]);
    run.expect_code(0)
        .expect_stdout(&format!("staged set {id} (from master-0"))
        .expect_stdout(&format!(
            "sudo -E /usr/local/bin/cluster-restore.sh {}",
            staged.display()
        ));
    // Exactly the two files, byte-identical, private; the store untouched.
    let mut set_files = fingerprint(&node.set_dir(&id));
    set_files.retain(|name, _| name != "manifest.json");
    assert_eq!(fingerprint(&staged), set_files);
    assert_eq!(mode(&staged), 0o700);
    assert_eq!(mode(staged.parent().unwrap()), 0o700);
    for name in set_files.keys() {
        assert_eq!(mode(&staged.join(name)), 0o600, "{name}");
    }
    // What cluster-restore.sh would do with it: etcd restores the staged snapshot.
    let snapshot = set_files.keys().find(|n| n.ends_with(".db")).unwrap();
    let out = Command::new(etcd().bin_dir.join("etcdutl"))
        .args(["snapshot", "restore"])
        .arg(staged.join(snapshot))
        .arg("--data-dir")
        .arg(node.dir.path().join("restored"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // A non-empty directory, an unknown set, a set that failed verification: refused, named.
    node.run(&["stage", &id, staged.to_str().unwrap()])
        .expect_code(1)
        .expect_stderr("is not empty");
    let elsewhere = node.dir.path().join("elsewhere");
    node.run(&[
        "stage",
        "20990101T000000.000Z-master-9",
        elsewhere.to_str().unwrap(),
    ])
    .expect_code(1)
    .expect_stderr("20990101T000000.000Z-master-9");
    flip_byte(&set_file(&node.set_dir(&id), ".tar.gz"), None, 0x01);
    node.run(&["verify"]).expect_code(1);
    node.run(&["stage", &id, elsewhere.to_str().unwrap()])
        .expect_code(1)
        .expect_stderr("is not sound, not staged");
    assert!(!elsewhere.exists(), "nothing half-staged");
}
