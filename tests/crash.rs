//! The crash matrix: `backup`, `prune` (inside backup), `spray` and the receiving side of a
//! directory target are killed with SIGKILL at every crash point of `src/failpoint.rs` (built
//! with `--features failpoints`). After each kill, and after the normal run that follows: no
//! partial set is listed in any store, no complete set is lost, staging is clean, and every set
//! verifies.

use crate::util::*;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use etcd_backup::failpoint::POINTS;

/// A node whose sets go to a directory target; `keep_last` on both sides.
fn node_with_target(keep_last: u32) -> (Node, StoreAt) {
    let node = Node::new("");
    let nfs = node.dir.path().join("nfs");
    node.write_config_with(
        "gc_grace = \"0s\"",
        "",
        &format!(
            "[retention]\nkeep_last = {keep_last}\n[spray]\netcd_env = \"\"\nattempts = 1\n\
             [[spray.target]]\nkind = \"dir\"\npath = \"{}\"\nrequire_mount = false\n",
            nfs.display()
        ),
    );
    let target = StoreAt::configured(
        node.dir.path().join("target.toml"),
        &nfs,
        &format!("gc_grace = \"0s\"\n[retention]\nkeep_last = {keep_last}\n"),
    );
    (node, target)
}

/// What systemd does to the rest of a killed unit's cgroup: the backup command (in a process
/// group of its own) and its children go too.
fn kill_orphans(dir: &Path) {
    let _ = Command::new("pkill")
        .args(["-KILL", "-f"])
        .arg(dir.as_os_str())
        .status();
    // pkill returns before the kernel has reaped them; wait until none is left.
    for _ in 0..100 {
        let left = Command::new("pgrep")
            .arg("-f")
            .arg(dir.as_os_str())
            .output()
            .unwrap();
        if left.stdout.is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("orphans of {} did not die", dir.display());
}

fn killed_at(node: &Node, point: &str, args: &[&str]) {
    let output = node
        .cmd(args)
        .env("ETCD_BACKUP_FAILPOINT", point)
        .output()
        .unwrap();
    assert_eq!(
        output.status.signal(),
        Some(9),
        "{point}: `{}` was not killed there: {output:?}",
        args.join(" ")
    );
    kill_orphans(node.dir.path());
}

#[test]
fn kill_9_at_every_crash_point_loses_nothing_and_leaves_nothing() {
    assert_eq!(
        POINTS,
        etcd_backup::failpoint::POINTS,
        "every point is tried"
    );
    let mut runs = 0;
    for point in POINTS {
        // store:deleting is met by the prune after a backup; keep_last = 1 makes it delete.
        let keep_last = if point == "store:deleting" { 1 } else { 5 };
        let (node, target) = node_with_target(keep_last);
        let local = StoreAt {
            config: node.config_path(),
            root: node.store(),
        };
        let first = node.backup();
        let spray = point.starts_with("spray:") || point.starts_with("receive:");
        if spray {
            node.run(&["spray"]).expect_code(0);
            std::thread::sleep(std::time::Duration::from_millis(5));
            node.backup();
        }
        let before_local = local.ids();
        let before_target = target.ids();
        let args: &[&str] = if spray { &["spray"] } else { &["backup"] };
        killed_at(&node, point, args);
        runs += 1;

        // Right after the kill: only complete sets are listed, and none is lost.
        let after_local = local.ids();
        let after_target = target.ids();
        if point == "store:deleting" {
            assert!(
                after_local
                    .iter()
                    .all(|id| before_local.contains(id) || *id > first),
                "{point}: {after_local:?}"
            );
            assert!(!after_local.is_empty(), "{point}: the newest set stays");
        } else {
            for id in &before_local {
                assert!(after_local.contains(id), "{point}: lost {id}");
            }
        }
        for id in &before_target {
            assert!(after_target.contains(id), "{point}: target lost {id}");
        }

        // The next normal run completes; staging is clean; everything verifies.
        node.run(args).expect_code(0);
        runs += 1;
        if spray {
            assert_eq!(
                target.ids(),
                local.ids(),
                "{point}: the next spray delivered everything"
            );
        }
        // A backup collects any leftover of the killed run (gc_grace = 0s here).
        node.backup();
        runs += 1;
        assert_eq!(
            local.staging(),
            Vec::<PathBuf>::new(),
            "{point}: local staging"
        );
        if spray {
            node.run(&["spray"]).expect_code(0);
            assert_eq!(
                target.staging(),
                Vec::<PathBuf>::new(),
                "{point}: target staging"
            );
        }
        local.run(&["verify"]).expect_code(0);
        if spray {
            target.run(&["verify"]).expect_code(0);
        }
        assert_private(&node.store());
    }
    eprintln!("crash matrix: {} points, {runs} runs", POINTS.len());
}

/// The receiving side on a real SSH peer: `receive` under sshd and sudo is killed at each of
/// its crash points (the point reaches it through the forced command, as `sudo VAR=value`).
#[test]
fn kill_9_in_an_ssh_peers_receive_loses_nothing_and_the_next_run_delivers() {
    let lab = crate::util::lab::Lab::new();
    let peer = &lab.hosts[2];
    let keys = peer.dir.join("authorized_keys");
    let normal = std::fs::read_to_string(&keys).unwrap();
    let peer_store = StoreAt {
        config: peer.config(),
        root: peer.store(),
    };
    for point in [
        "receive:writing",
        "receive:before-commit",
        "store:manifest-written",
        "store:renamed",
        "receive:before-ack",
    ] {
        let id = lab.backup(0);
        let before = if peer.store().exists() {
            peer_store.ids()
        } else {
            Vec::new()
        };
        std::fs::write(
            &keys,
            normal.replace(
                "sudo -n ",
                &format!("sudo -n ETCD_BACKUP_FAILPOINT={point} "),
            ),
        )
        .unwrap();
        lab.hosts[0]
            .run(&["spray"])
            .expect_code(4)
            .expect_stdout("FAILED  lab-master-2");
        assert!(
            lab.hosts[1].set_ids().contains(&id),
            "{point}: the other peer"
        );
        // Where the receiver died shows in its store: before the rename the set is only in
        // staging; after it, complete (which also proves sudo passed the point on).
        let after = peer_store.ids();
        if matches!(point, "store:renamed" | "receive:before-ack") {
            assert!(after.contains(&id), "{point}: committed before the kill");
        } else {
            assert!(!after.contains(&id), "{point}: not committed");
            assert!(!peer_store.staging().is_empty(), "{point}: partial kept");
        }
        for old in &before {
            assert!(after.contains(old), "{point}: the peer lost {old}");
        }
        std::fs::write(&keys, &normal).unwrap();
        lab.hosts[0].run(&["spray"]).expect_code(0);
        assert!(
            peer_store.ids().contains(&id),
            "{point}: delivered next run"
        );
        assert_eq!(
            peer_store.staging(),
            Vec::<PathBuf>::new(),
            "{point}: the peer's staging"
        );
        peer_store.run(&["verify"]).expect_code(0);
        assert_private(&peer.store());
    }
}
