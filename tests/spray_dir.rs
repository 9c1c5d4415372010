//! `spray` to directory targets through the real binary: the same protocol and store code as
//! a peer, in-process.

use crate::util::*;

fn target_ids(node: &Node, dir: &std::path::Path) -> Vec<String> {
    let config = node.dir.path().join("target.toml");
    std::fs::write(&config, format!("[store]\nroot = \"{}\"\n", dir.display())).unwrap();
    let out = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["list", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sets: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    sets.iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

fn spray_config(node: &Node, retention: &str, targets: &[(&std::path::Path, bool)]) {
    let mut extra = format!("{retention}\n[spray]\netcd_env = \"\"\nattempts = 1\n");
    for (path, require_mount) in targets {
        extra.push_str(&format!(
            "\n[[spray.target]]\nkind = \"dir\"\npath = \"{}\"\nrequire_mount = {require_mount}\n",
            path.display()
        ));
    }
    node.write_config(&extra);
}

#[test]
fn sets_reach_a_dir_target_once_and_are_never_deleted_by_the_source() {
    let node = Node::new("");
    let nfs = node.dir.path().join("nfs");
    spray_config(&node, "[retention]\nkeep_last = 10", &[(&nfs, false)]);
    let ids: Vec<String> = (0..2).map(|_| node.backup()).collect();

    let run = node.run(&["spray"]);
    run.expect_code(0)
        .expect_stdout("ok      dir:")
        .expect_stdout("(2 sent");
    assert_eq!(target_ids(&node, &nfs), ids);
    // Both files unmodified, private, verified by `verify` in the target store too.
    for id in &ids {
        assert_eq!(
            fingerprint(&node.set_dir(id)),
            fingerprint(&nfs.join("sets").join(id))
        );
        assert_eq!(mode(&nfs.join("sets").join(id)), 0o700);
    }
    // Nothing new: nothing sent.
    node.run(&["spray"])
        .expect_code(0)
        .expect_stdout("(0 sent, 0 bytes");

    // The local history shrinks; the target keeps what it has.
    spray_config(&node, "[retention]\nkeep_last = 1", &[(&nfs, false)]);
    node.run(&["prune"]).expect_code(0);
    assert_eq!(node.set_ids().len(), 1);
    node.run(&["spray"]).expect_code(0);
    assert_eq!(target_ids(&node, &nfs), ids);
    node.run(&["status"])
        .expect_code(0)
        .expect_stdout("current");
}

#[test]
fn an_unmounted_target_is_refused_and_the_others_still_get_their_sets() {
    let node = Node::new("");
    let unmounted = node.dir.path().join("not-mounted");
    let good = node.dir.path().join("copy");
    spray_config(
        &node,
        "[retention]\nkeep_last = 10",
        &[(&unmounted, true), (&good, false)],
    );
    std::fs::create_dir(&unmounted).unwrap();
    let id = node.backup();
    let run = node.run(&["spray"]);
    run.expect_code(4)
        .expect_stdout("FAILED  dir:")
        .expect_stdout("is not a mount point");
    assert_eq!(target_ids(&node, &good), [id]);
    assert!(
        std::fs::read_dir(&unmounted).unwrap().next().is_none(),
        "nothing written to the unmounted path"
    );
    node.run(&["status"]).expect_code(4).expect_stdout("BEHIND");

    // Only failing targets: failed (1), not partial.
    spray_config(&node, "[retention]\nkeep_last = 10", &[(&unmounted, true)]);
    node.run(&["spray"]).expect_code(1);
}

#[test]
fn a_target_s_copy_that_failed_verification_is_replaced_by_the_next_spray() {
    let node = Node::new("");
    let nfs = node.dir.path().join("nfs");
    spray_config(&node, "[retention]\nkeep_last = 10", &[(&nfs, false)]);
    let id = node.backup();
    node.run(&["spray"]).expect_code(0).expect_stdout("(1 sent");
    let target = StoreAt::configured(node.dir.path().join("nfs.toml"), &nfs, "");
    let copy = nfs.join("sets").join(&id);
    let original = fingerprint(&copy);

    // Bit rot in the target's copy of the snapshot, found by a verify there.
    flip_byte(&set_file(&copy, ".db"), Some(4096 + 100), 0x20);
    // Unknown to the target until it verifies: the spray sees it held and sends nothing.
    node.run(&["spray"]).expect_code(0).expect_stdout("(0 sent");
    target
        .run(&["verify"])
        .expect_code(1)
        .expect_stdout(&format!("BAD  {id}"));

    // The next spray sends the same set again; the damaged copy is replaced whole.
    node.run(&["spray"]).expect_code(0).expect_stdout("(1 sent");
    assert_eq!(fingerprint(&copy), original);
    target.run(&["verify", "--deep"]).expect_code(0);
    let listed = target.run(&["list", "--json"]);
    let sets: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(sets.len(), 1);
    assert_eq!(sets[0]["verified"], true);
    assert!(
        target
            .staging()
            .iter()
            .all(|p| std::fs::read_dir(p).map_or(true, |mut d| d.next().is_none())),
        "the damaged copy is gone: {:?}",
        target.staging()
    );
    // Current again: nothing more to send.
    node.run(&["spray"]).expect_code(0).expect_stdout("(0 sent");
}

#[test]
fn fetch_brings_a_set_back_from_a_dir_target_checked_and_never_over_another() {
    let node = Node::new("");
    let nfs = node.dir.path().join("nfs");
    spray_config(&node, "[retention]\nkeep_last = 10", &[(&nfs, false)]);
    let id = node.backup();
    node.run(&["spray"]).expect_code(0);
    let original = fingerprint(&node.set_dir(&id));

    // The node lost its store; the target still has the set.
    std::fs::remove_dir_all(node.store()).unwrap();
    node.run(&["fetch", &id])
        .expect_code(0)
        .expect_stdout(&format!("fetched set {id} into"))
        .expect_stdout(&format!(".db from '{}'", nfs.display()));
    assert_eq!(fingerprint(&node.set_dir(&id)), original, "byte-identical");
    node.run(&["verify", "--deep"]).expect_code(0);
    node.run(&["fetch", "--from", nfs.to_str().unwrap(), &id])
        .expect_code(0)
        .expect_stdout("already held, sound");

    // Unknown set, a directory that is no store: refused, named.
    node.run(&["fetch", "20990101T000000.000Z-master-9"])
        .expect_code(1)
        .expect_stderr("20990101T000000.000Z-master-9");
    let empty = node.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    node.run(&["fetch", "--from", empty.to_str().unwrap(), &id])
        .expect_code(1)
        .expect_stderr(&format!("no store at '{}'", empty.display()));

    // A damaged copy on the target is refused; the local set stays as it is.
    flip_byte(
        &set_file(&nfs.join("sets").join(&id), ".db"),
        Some(100),
        0x01,
    );
    std::fs::remove_dir_all(node.store()).unwrap();
    let run = node.run(&["fetch", &id]);
    run.expect_code(1).expect_stderr("could not be fetched");
    assert!(node.set_ids().is_empty(), "nothing committed");
    let staging: Vec<_> = std::fs::read_dir(node.store().join(".staging"))
        .unwrap()
        .collect();
    assert!(staging.is_empty(), "nothing left in staging: {staging:?}");
}

/// A directory target's floor is a share of its own filesystem, not of the store's: a share
/// that the store's larger filesystem would make too large for the export still lets a set in,
/// and the export's own share refuses one that would cross it.
#[test]
fn a_dir_target_keeps_a_share_of_its_own_filesystem_free() {
    let node = Node::new("");
    let nfs = node.dir.path().join("nfs");
    let _store = SmallFs::mount(&node.store(), 512);
    let export = SmallFs::mount(&nfs, 128);
    spray_config(
        &node,
        "[retention]\nkeep_last = 10\nmin_free_space = \"0B\"\nmin_free_percent = 50",
        &[(&nfs, false)],
    );
    let first = node.backup();
    // Half of 128 MiB must stay free there (half of the store's 512 MiB would not fit).
    node.run(&["spray"]).expect_code(0).expect_stdout("(1 sent");
    assert_eq!(target_ids(&node, &nfs), vec![first.clone()]);

    // The export filled to just above its floor: the next set would cross it.
    let filler = vec![0u8; (export.free_bytes() - (64 << 20) - (1 << 20)) as usize];
    std::fs::write(nfs.join("filler"), filler).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let second = node.backup();
    let run = node.run(&["spray"]);
    run.expect_code(1)
        .expect_stdout(&second)
        .expect_stdout("67108864 must stay free (retention.min_free_space)");
    assert_eq!(target_ids(&node, &nfs), vec![first]);
}
