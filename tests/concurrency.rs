//! Runs that meet: two backups at once, spray while a prune runs, two senders to one receiver.
//! Each run either waits for the other or exits busy (5) naming the holder; nothing is
//! corrupted and nothing is lost.

use crate::util::*;
use std::process::Child;

fn spawn(node: &Node, args: &[&str]) -> Child {
    node.cmd(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child, args: &[&str]) -> Run {
    Run::from_output(child.wait_with_output().unwrap(), args)
}

#[test]
fn two_backups_at_once_one_waits_or_one_is_busy() {
    // Without waiting: exactly one runs, the other exits busy and says who holds the store.
    let node = Node::new("");
    node.write_config_with("lock_wait = \"0s\"", "", "");
    let (a, b) = (spawn(&node, &["backup"]), spawn(&node, &["backup"]));
    let runs = [finish(a, &["backup"]), finish(b, &["backup"])];
    let mut codes: Vec<i32> = runs.iter().map(|r| r.code).collect();
    codes.sort();
    assert_eq!(codes, [0, 5], "one ran, one was busy");
    let busy = runs.iter().find(|r| r.code == 5).unwrap();
    busy.expect_stderr("is busy").expect_stderr("pid ");
    assert_eq!(node.set_ids().len(), 1);

    // With the default wait: both run, one after the other, and both sets are whole.
    node.write_config("");
    let (a, b) = (spawn(&node, &["backup"]), spawn(&node, &["backup"]));
    finish(a, &["backup"]).expect_code(0);
    finish(b, &["backup"]).expect_code(0);
    assert_eq!(node.set_ids().len(), 3);
    node.run(&["verify"]).expect_code(0);
    assert_private(&node.store());
}

#[test]
fn two_senders_to_one_receiver_both_deliver() {
    let (a, b) = (Node::new(""), Node::new(""));
    let shared = a.dir.path().join("nfs");
    for (node, name) in [(&a, "master-0"), (&b, "master-1")] {
        node.write_config_raw(&format!(
            "[node]\nname = \"{name}\"\n[store]\nroot = \"{}\"\n[backup]\ncommand = \"{}\"\n\
             [retention]\nkeep_last = 10\n[spray]\netcd_env = \"\"\nattempts = 3\n\
             [[spray.target]]\nkind = \"dir\"\npath = \"{}\"\nrequire_mount = false\n",
            node.store().display(),
            standin().display(),
            shared.display()
        ));
        node.backup();
        node.backup();
    }
    let (sa, sb) = (spawn(&a, &["spray"]), spawn(&b, &["spray"]));
    finish(sa, &["spray"]).expect_code(0);
    finish(sb, &["spray"]).expect_code(0);
    let target = StoreAt::configured(
        a.dir.path().join("target.toml"),
        &shared,
        "[retention]\nkeep_last = 10\n",
    );
    // Every listed set verified (asserted by ids()).
    let mut ids = target.ids();
    ids.sort();
    let mut expected: Vec<String> = a.set_ids().into_iter().chain(b.set_ids()).collect();
    expected.sort();
    assert_eq!(ids, expected, "every set of both senders, each once");
    assert_private(&shared);
}

/// Whether `pid` is stopped (state `T` in /proc).
#[cfg(feature = "failpoints")]
fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.rsplit(") ").next().unwrap_or("").starts_with('T'))
        .unwrap_or(false)
}

#[cfg(feature = "failpoints")]
#[test]
fn prune_during_a_spray_runs_and_the_spray_still_sends_whole_sets() {
    let node = Node::new("");
    let nfs = node.dir.path().join("nfs");
    let config = |keep_last: u32, lock_wait: &str| {
        node.write_config_with(
            &format!("lock_wait = \"{lock_wait}\""),
            "",
            &format!(
                "[retention]\nkeep_last = {keep_last}\n[spray]\netcd_env = \"\"\nattempts = 1\n\
                 [[spray.target]]\nkind = \"dir\"\npath = \"{}\"\nrequire_mount = false\n",
                nfs.display()
            ),
        )
    };
    config(10, "10m");
    let ids: Vec<String> = (0..3).map(|_| node.backup()).collect();
    // The spray is held (SIGSTOP) in the middle of sending its first set.
    let spray = node
        .cmd(&["spray"])
        .env("ETCD_BACKUP_FAILPOINT", "spray:sending:stop")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !stopped(spray.id()) {
        assert!(start.elapsed() < std::time::Duration::from_secs(20));
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // A second spray meanwhile is busy and names the first.
    config(1, "0s");
    node.run(&["spray"])
        .expect_code(5)
        .expect_stderr("is busy")
        .expect_stderr(&format!("pid {}", spray.id()));
    // A prune does not wait for the spray: it deletes the two older sets now.
    node.run(&["prune"]).expect_code(0);
    assert_eq!(node.set_ids(), [ids[2].clone()]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(spray.id() as i32),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    // The spray sends from the files it opened: all three sets arrive whole.
    finish(spray, &["spray"]).expect_code(0);
    node.run(&["verify"]).expect_code(0);
    let target = StoreAt::configured(
        node.dir.path().join("target.toml"),
        &nfs,
        "[retention]\nkeep_last = 10\n",
    );
    let run = target.run(&["verify"]);
    run.expect_code(0);
    let verified = &run.stdout;
    for id in &ids {
        assert!(verified.contains(&format!("ok   {id}")), "{verified}");
    }
    assert_private(&node.store());
}

#[test]
fn two_masters_spraying_at_once_over_ssh_all_end_with_every_set() {
    let lab = crate::util::lab::Lab::new();
    let ids = [lab.backup(0), lab.backup(1)];
    // master-0 and master-1 push at the same moment: each is the other's receiver too, and
    // master-2 receives from both. (Before sprays released the store lock early, each
    // receiver waited for the other's spray to end and its sender timed out.)
    let runs = std::thread::scope(|scope| {
        let handles: Vec<_> = [0, 1]
            .map(|n| {
                let host = &lab.hosts[n];
                scope.spawn(move || host.run(&["spray"]))
            })
            .into_iter()
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<Run>>()
    });
    // Neither waits on the other's store lock any more (a spray holds it only to list and
    // open): both deliver everything in one run.
    for run in &runs {
        run.expect_code(0);
    }
    let mut expected = ids.to_vec();
    expected.sort();
    for host in &lab.hosts {
        assert_eq!(host.set_ids(), expected, "{}", host.name);
        host.run(&["verify"]).expect_code(0);
    }
    eprintln!(
        "two senders: exit codes {:?}",
        runs.iter().map(|r| r.code).collect::<Vec<_>>()
    );
}
