//! A store on a small filesystem (a tmpfs of a few MiB mounted over the node's store): a backup
//! that does not fit fails cleanly and loses nothing; the free-space floor of retention holds.

use crate::util::{Node, SmallFs, fingerprint};

/// The size of one set of `node`, sized on an ordinary disk first; the store is left empty.
fn one_set_size(node: &Node) -> u64 {
    let id = node.backup();
    let size = node.sets()[0]["size"].as_u64().unwrap();
    std::fs::remove_dir_all(node.set_dir(&id)).unwrap();
    size
}

#[test]
fn a_backup_that_does_not_fit_fails_and_the_history_is_intact() {
    let node = Node::new("");
    let set_bytes = one_set_size(&node);
    // Room for one set and a half.
    let mib = (set_bytes * 3 / 2).div_ceil(1 << 20);
    let fs = SmallFs::mount(&node.store(), mib);
    let first = node.backup();
    let history = fingerprint(&node.set_dir(&first));

    let run = node.run(&["backup"]);
    run.expect_code(1)
        .expect_stderr("not enough space in the store")
        .expect_stderr(&first);
    assert_eq!(node.set_ids(), vec![first.clone()], "no new set, none lost");
    assert_eq!(
        fingerprint(&node.set_dir(&first)),
        history,
        "byte-identical"
    );
    node.run(&["verify"]).expect_code(0);
    assert!(
        node.staging_entries().is_empty(),
        "the failed run removed its staging: {:?}",
        node.staging_entries()
    );
    assert!(
        fs.free_bytes() > set_bytes / 3,
        "the space the failed run used is free again"
    );
}

#[test]
fn retention_keeps_the_free_space_floor() {
    let node = Node::new("");
    let set_bytes = one_set_size(&node);
    // Room for about four sets; the floor asks for two sets' worth to stay free.
    let mib = (set_bytes * 4).div_ceil(1 << 20) + 1;
    let floor_mib = (set_bytes * 2).div_ceil(1 << 20);
    node.write_config(&format!(
        "[retention]\nkeep_last = 10\nmin_free_space = \"{floor_mib}MiB\"\nmin_free_percent = 0\n"
    ));
    let fs = SmallFs::mount(&node.store(), mib);
    let mut taken = Vec::new();
    for _ in 0..5 {
        std::thread::sleep(std::time::Duration::from_millis(20));
        taken.push(node.backup());
        let ids = node.set_ids();
        assert_eq!(ids.last(), taken.last(), "the newest set always stays");
        assert!(
            fs.free_bytes() >= floor_mib << 20 || ids.len() == 1,
            "free {} < floor {floor_mib} MiB with {} sets",
            fs.free_bytes(),
            ids.len()
        );
    }
    let ids = node.set_ids();
    assert!(ids.len() < taken.len(), "the floor pruned sets: {ids:?}");
    assert_eq!(
        ids[..],
        taken[taken.len() - ids.len()..],
        "the oldest went first"
    );
}

#[test]
fn a_disk_that_fills_during_the_snapshot_leaves_no_set_and_no_staging() {
    let node = Node::new("");
    // Smaller than one set and no history to size it by: the script itself hits ENOSPC.
    let _fs = SmallFs::mount(&node.store(), 1);
    let run = node.run(&["backup"]);
    run.expect_code(1)
        .expect_stderr("no space left on device")
        .expect_stderr("failed, also with --force");
    assert!(node.set_ids().is_empty());
    assert!(
        node.staging_entries().is_empty(),
        "both attempts removed their staging: {:?}",
        node.staging_entries()
    );
}

/// The floor holds while a set is written, not only after: when the next set (as large as the
/// newest) would take the free space under `min_free_space`, the oldest sets the policy lets go
/// are pruned before the script runs; when that is not enough, nothing runs and nothing goes.
#[test]
fn a_backup_prunes_first_so_that_the_floor_holds_with_the_next_set_written() {
    let node = Node::new("");
    let set_bytes = one_set_size(&node);
    // Room for four and a half sets; 1.2 sets' worth must stay free.
    let mib = (set_bytes * 9 / 2).div_ceil(1 << 20);
    let fs = SmallFs::mount(&node.store(), mib);
    let floor = set_bytes * 6 / 5;
    node.write_config(&format!(
        "[retention]\nkeep_last = 3\nmin_free_space = \"{floor}B\"\nmin_free_percent = 0\n"
    ));
    let taken: Vec<String> = (0..3)
        .map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            node.backup()
        })
        .collect();
    assert_eq!(node.set_ids(), taken, "three fit with the floor");
    // The fourth would leave less than the floor: the oldest goes first, then the script runs.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let run = node.run(&["backup"]);
    run.expect_code(0);
    let pruned_at = run
        .stderr
        .find("by policy first")
        .unwrap_or_else(|| panic!("{}", run.stderr));
    let script_at = run.stderr.find("running backup command").unwrap();
    assert!(pruned_at < script_at, "{}", run.stderr);
    let ids = node.set_ids();
    assert_eq!(ids[..2], taken[1..], "the oldest went: {ids:?}");
    assert_eq!(ids.len(), 3);
    assert!(fs.free_bytes() >= floor, "the floor holds");

    // A floor no pruning can meet (the newest set always stays): refused before the script,
    // nothing lost, and the message has the figures.
    let held = node.set_ids();
    node.write_config(&format!(
        "[retention]\nkeep_last = 3\nmin_free_space = \"{}B\"\nmin_free_percent = 0\n",
        set_bytes * 4
    ));
    let run = node.run(&["backup"]);
    run.expect_code(1)
        .expect_stderr("not enough space in the store")
        .expect_stderr("must stay free (retention.min_free_space)");
    assert!(
        !run.stderr.contains("running backup command"),
        "{}",
        run.stderr
    );
    let left = node.set_ids();
    assert!(
        left.last() == held.last() && !left.is_empty(),
        "the newest stays: {left:?}"
    );
    // status says so before the next backup does.
    let status = node.run(&["status"]);
    assert!(
        status.stdout.contains("WARNING: the next set")
            && status.stdout.contains("under the floor"),
        "{}",
        status.stdout
    );
    let json: serde_json::Value =
        serde_json::from_str(&node.run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(json["space"]["next_set_fits"], false, "{json}");
    assert_eq!(json["space"]["floor_bytes"], set_bytes * 4);
    node.write_config(&format!(
        "[retention]\nkeep_last = 3\nmin_free_space = \"{floor}B\"\nmin_free_percent = 0\n"
    ));
    let json: serde_json::Value =
        serde_json::from_str(&node.run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(json["space"]["next_set_fits"], true, "{json}");
}

/// With the floor left at its defaults, it scales with the store's filesystem: the larger of
/// 5 GiB and 15 % of it (tmpfs sizes are bounds: nothing is taken until written).
#[test]
fn the_default_floor_is_the_larger_of_5_gib_and_15_percent_of_the_filesystem() {
    for (gib, floor) in [(100u64, "15GiB"), (20, "5GiB")] {
        let node = Node::new("");
        let _fs = SmallFs::mount(&node.store(), gib << 10);
        // The config as an administrator leaves it: no floor keys (the tests' helper sets the
        // share to 0 for stores on the host's disk).
        let text = std::fs::read_to_string(node.config_path())
            .unwrap()
            .replace("min_free_percent = 0\n", "");
        std::fs::write(node.config_path(), text).unwrap();
        node.run(&["check-config"])
            .expect_code(0)
            .expect_stdout(&format!(
                "min_free_space = \"{floor}\"\nmin_free_percent = 15\n"
            ));
        node.backup();
        let status = node.run(&["status", "--json"]);
        let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
        let want: u64 = floor.trim_end_matches("GiB").parse::<u64>().unwrap() << 30;
        assert_eq!(json["space"]["floor_bytes"], want, "{}", status.stdout);
    }
}
