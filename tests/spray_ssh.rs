//! Spray between three masters in network namespaces over real OpenSSH sshd peers.

use crate::util::lab::Lab;
use crate::util::*;

#[test]
fn a_set_reaches_both_peers_and_a_dir_target_verified_and_a_rerun_sends_nothing() {
    let lab = Lab::new();
    let nfs = lab.dir.path().join("nfs");
    lab.write_config(
        0,
        &format!(
            "\n[[spray.target]]\nkind = \"dir\"\npath = \"{}\"\nrequire_mount = false",
            nfs.display()
        ),
    );
    let id = lab.backup(0);
    let run = lab.hosts[0].run(&["spray"]);
    run.expect_code(0)
        .expect_stdout("ok      lab-master-1")
        .expect_stdout("ok      lab-master-2")
        .expect_stdout("ok      dir:");
    assert!(nfs.join("sets").join(&id).join("manifest.json").is_file());
    for peer in &lab.hosts[1..] {
        assert_eq!(peer.set_ids(), std::slice::from_ref(&id), "{}", peer.name);
        peer.run(&["verify"]).expect_code(0);
        assert_eq!(
            fingerprint(&peer.store().join("sets").join(&id)),
            fingerprint(&lab.hosts[0].store().join("sets").join(&id))
        );
    }
    // etcd.env names m0 too: it never sprays to itself.
    assert!(!run.stdout.contains("lab-master-0"), "{}", run.stdout);
    let again = lab.hosts[0].run(&["spray"]);
    again.expect_code(0);
    assert_eq!(
        again.stdout.matches("(0 sent, 0 bytes").count(),
        3,
        "{}",
        again.stdout
    );
    for store in [
        lab.hosts[0].store(),
        lab.hosts[1].store(),
        lab.hosts[2].store(),
        nfs.clone(),
    ] {
        assert_private(&store);
    }
    let status = lab.hosts[0].run(&["status"]);
    status.expect_code(0);
    assert_eq!(
        status
            .stdout
            .matches("current, holds 1 of our sets")
            .count(),
        3,
        "{}",
        status.stdout
    );
}

#[test]
fn a_changed_host_key_is_refused_and_the_other_peer_still_gets_the_set() {
    let mut lab = Lab::new();
    let id = lab.backup(0);
    lab.hosts[2].new_host_key();
    let run = lab.hosts[0].run(&["spray"]);
    run.expect_code(4)
        .expect_stdout("ok      lab-master-1")
        .expect_stdout("FAILED  lab-master-2")
        .expect_stdout("does not match the one in");
    assert_eq!(lab.hosts[1].set_ids(), [id]);
    assert!(
        lab.hosts[2].set_ids().is_empty(),
        "nothing sent to the changed peer"
    );
    lab.hosts[0]
        .run(&["status"])
        .expect_code(4)
        .expect_stdout("BEHIND");
}

#[test]
fn accept_new_pins_a_key_on_first_contact_and_refuses_a_change() {
    let mut lab = Lab::new();
    lab.backup(0);
    std::fs::write(&lab.known_hosts, "").unwrap();
    lab.write_config(0, "host_key_policy = \"accept-new\"");
    lab.hosts[0].run(&["spray"]).expect_code(0);
    let pinned = std::fs::read_to_string(&lab.known_hosts).unwrap();
    assert_eq!(pinned.lines().count(), 2, "{pinned}");
    assert_eq!(mode(&lab.known_hosts), 0o600);
    lab.hosts[1].new_host_key();
    lab.backup(0);
    lab.hosts[0]
        .run(&["spray"])
        .expect_code(4)
        .expect_stdout("FAILED  lab-master-1")
        .expect_stdout("does not match");

    // strict with an empty known_hosts: nobody is trusted.
    std::fs::write(&lab.known_hosts, "").unwrap();
    lab.write_config(0, "");
    lab.hosts[0]
        .run(&["spray"])
        .expect_code(1)
        .expect_stdout("is not in");
}

#[test]
fn a_private_key_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::new();
    lab.backup(0);
    std::fs::set_permissions(&lab.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    lab.hosts[0]
        .run(&["spray"])
        .expect_code(1)
        .expect_stdout("accessible by group or others (mode 0644)");
    assert!(lab.hosts[1].set_ids().is_empty());
}

#[test]
fn a_peer_down_fails_alone_within_the_timeout() {
    let mut lab = Lab::new();
    let id = lab.backup(0);
    lab.hosts[2].stop_sshd();
    lab.hosts[1].link(&lab, true);
    let started = std::time::Instant::now();
    lab.hosts[0]
        .run(&["spray"])
        .expect_code(4)
        .expect_stdout("FAILED  lab-master-2")
        .expect_stdout("cannot connect");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(lab.hosts[1].set_ids(), std::slice::from_ref(&id));
    // A link that is down: bounded by connect_timeout (3s).
    lab.hosts[2].start_sshd();
    lab.hosts[2].link(&lab, false);
    let started = std::time::Instant::now();
    lab.hosts[0]
        .run(&["spray"])
        .expect_code(4)
        .expect_stdout("FAILED  lab-master-2");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    lab.hosts[2].link(&lab, true);
    lab.hosts[0].run(&["spray"]).expect_code(0);
    assert_eq!(lab.hosts[2].set_ids(), [id]);
}

#[test]
fn the_restricted_key_can_only_deliver_sets() {
    let lab = Lab::new();
    let marker = lab.dir.path().join("pwned");
    let ssh = |extra: &[&str], remote: &[&str]| {
        let out = lab.hosts[0]
            .cmd("ssh")
            .args(["-i"])
            .arg(&lab.key)
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "ConnectTimeout=5",
            ])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", lab.known_hosts.display()))
            .args(extra)
            .arg(format!("core@{}", lab.hosts[1].ip))
            .args(remote)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Another command: the forced `receive` runs instead, and fails on a silent stdin.
    let (ok, _) = ssh(&[], &["touch", marker.to_str().unwrap()]);
    assert!(!ok);
    let (ok, _) = ssh(
        &["-tt"],
        &["/bin/sh", "-c", &format!("touch {}", marker.display())],
    );
    assert!(!ok);
    // Remote port forwarding is refused.
    let (ok, stderr) = ssh(
        &[
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            "12345:127.0.0.1:22",
        ],
        &[],
    );
    assert!(!ok, "{stderr}");
    // Local forwarding (stdio to a port on the peer) is refused.
    let (ok, stderr) = ssh(&["-W", "127.0.0.1:22"], &[]);
    assert!(!ok, "{stderr}");
    // `receive` with arguments of the client's choosing (another config whose store is the
    // marker path; run as asked, it would create it): the forced command ignores them.
    let evil = lab.dir.path().join("evil.toml");
    std::fs::write(&evil, format!("[store]\nroot = \"{}\"\n", marker.display())).unwrap();
    let (ok, _) = ssh(
        &[],
        &[
            "sudo",
            "-n",
            crate::util::BIN,
            "--config",
            evil.to_str().unwrap(),
            "receive",
        ],
    );
    assert!(!ok);
    assert!(!marker.exists(), "the key ran a command of its own");
    // sftp cannot write anywhere.
    let out = lab.hosts[0]
        .cmd("sftp")
        .args(["-i"])
        .arg(&lab.key)
        .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=5"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", lab.known_hosts.display()))
        .args(["-b", "-"])
        .arg(format!("core@{}", lab.hosts[1].ip))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(format!("put /etc/hostname {}\n", marker.display()).as_bytes())?;
            child.wait()
        })
        .unwrap();
    assert!(!out.success());
    assert!(!marker.exists());
    assert!(lab.hosts[1].set_ids().is_empty());
}

#[test]
fn a_link_cut_mid_transfer_is_bounded_and_the_next_run_resumes() {
    let lab = Lab::new();
    let id = lab.backup(0);
    let size: u64 = std::fs::read_dir(lab.hosts[0].store().join("sets").join(&id))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    // No compression and a slow link to m1, so that the cut lands mid-transfer.
    lab.write_config(0, "compress = false");
    lab.hosts[1].shape(&lab, "add");
    let started = std::time::Instant::now();
    let spray = lab.hosts[0]
        .cmd(BIN)
        .arg("--config")
        .arg(lab.hosts[0].config())
        .arg("spray")
        .env_remove("JOURNAL_STREAM")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    lab.hosts[1].link(&lab, false);
    let out = spray.wait_with_output().unwrap();
    let run = Run::from_output(out, &["spray"]);
    run.expect_code(4)
        .expect_stdout("ok      lab-master-2")
        .expect_stdout("FAILED  lab-master-1");
    assert!(
        // Cut at 2.5 s, io_timeout 5 s; libssh2's teardown of the dead link must not add more.
        started.elapsed() < std::time::Duration::from_secs(15),
        "bounded: {:?}\n{}",
        started.elapsed(),
        run.stderr
    );
    assert!(
        lab.hosts[1].set_ids().is_empty(),
        "nothing committed on the cut peer"
    );

    lab.hosts[1].link(&lab, true);
    lab.hosts[1].shape(&lab, "del");
    let run = lab.hosts[0].run(&["spray"]);
    run.expect_code(0);
    let line = run
        .stdout
        .lines()
        .find(|l| l.contains("lab-master-1"))
        .unwrap()
        .to_string();
    let sent: u64 = line
        .split("sent, ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        sent > 0 && sent < size,
        "resumed: sent {sent} of {size} bytes ({line})"
    );
    assert_eq!(lab.hosts[1].set_ids(), [id]);
    lab.hosts[1].run(&["verify"]).expect_code(0);
}

#[test]
fn a_frozen_sshd_or_an_unreachable_host_is_bounded_and_the_other_peer_gets_its_set() {
    let lab = Lab::new();
    let id = lab.backup(0);
    // master-1's sshd accepts TCP but never speaks: bounded by io_timeout (5s in the lab).
    lab.hosts[1].freeze_sshd(true);
    let started = std::time::Instant::now();
    lab.hosts[0]
        .run(&["spray"])
        .expect_code(4)
        .expect_stdout("FAILED  lab-master-1");
    let frozen = started.elapsed();
    assert!(frozen < std::time::Duration::from_secs(15), "{frozen:?}");
    assert_eq!(lab.hosts[2].set_ids(), std::slice::from_ref(&id));
    lab.hosts[1].freeze_sshd(false);
    lab.hosts[0].run(&["spray"]).expect_code(0);
    assert_eq!(lab.hosts[1].set_ids(), std::slice::from_ref(&id));

    // An address on the lab's network that no host has: bounded by connect_timeout (3s), named.
    lab.write_config(0, "peers = [\"10.251.0.9\"]\n");
    let started = std::time::Instant::now();
    lab.hosts[0]
        .run(&["spray"])
        .expect_code(4)
        .expect_stdout("FAILED  10.251.0.9")
        .expect_stdout("cannot connect");
    let unreachable = started.elapsed();
    assert!(
        unreachable < std::time::Duration::from_secs(10),
        "{unreachable:?}"
    );
    eprintln!("frozen sshd: {frozen:?}, unreachable host: {unreachable:?}");
}

#[test]
fn a_receiver_that_stops_reading_or_a_reset_handshake_is_bounded() {
    let lab = Lab::new();
    let id = lab.backup(0);
    // master-2's receiver is stopped (SIGSTOP) as soon as it starts: it reads nothing more.
    // (sudo above it stops itself when its command stops, so the thaws below are for both.)
    let pattern = format!("{} receive", lab.hosts[2].config().display());
    let stopper = std::thread::spawn(move || {
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(20) {
            let out = std::process::Command::new("pkill")
                .args(["-STOP", "-f", &pattern])
                .status()
                .unwrap();
            if out.success() {
                return Some(pattern);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        None
    });
    let started = std::time::Instant::now();
    lab.hosts[0]
        .run(&["spray"])
        .expect_code(4)
        .expect_stdout("FAILED  lab-master-2");
    let stalled = started.elapsed();
    let pattern = stopper.join().unwrap().expect("the receiver was stopped");
    assert!(stalled < std::time::Duration::from_secs(15), "{stalled:?}");
    assert_eq!(lab.hosts[1].set_ids(), std::slice::from_ref(&id));
    std::process::Command::new("pkill")
        .args(["-CONT", "-f", &pattern])
        .status()
        .unwrap();
    // The thawed receiver finds the connection gone and lets go of its lock; the next run
    // delivers.
    let start = std::time::Instant::now();
    loop {
        let run = lab.hosts[0].run(&["spray"]);
        if run.code == 0 {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "{}",
            run.stdout
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert_eq!(lab.hosts[2].set_ids(), std::slice::from_ref(&id));
    // sudo may have stopped itself after the thaw (it follows its command's stops): thawed
    // again, or it would stay stopped with its exited receiver a zombie after the test.
    std::process::Command::new("pkill")
        .args(["-CONT", "-f", &pattern])
        .status()
        .unwrap();

    // A peer that sends half a banner, then resets the connection.
    let mut reset = lab.hosts[2]
        .cmd("python3")
        .arg("-c")
        .arg(format!(
            "import socket, struct\n\
             s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('{}', 2222)); s.listen()\n\
             while True:\n\
             \x20   c, _ = s.accept(); c.sendall(b'SSH-2.0-Open')\n\
             \x20   c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0)); c.close()\n",
            lab.hosts[2].ip
        ))
        .spawn()
        .unwrap();
    let listening = std::time::Instant::now();
    while !lab.hosts[0]
        .cmd("bash")
        .args(["-c", &format!("echo > /dev/tcp/{}/2222", lab.hosts[2].ip)])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
    {
        assert!(listening.elapsed() < std::time::Duration::from_secs(10));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    lab.write_config(0, &format!("peers = [\"{}:2222\"]\n", lab.hosts[2].ip));
    let started = std::time::Instant::now();
    let run = lab.hosts[0].run(&["spray"]);
    let _ = reset.kill();
    let _ = reset.wait();
    run.expect_code(4)
        .expect_stdout(&format!("FAILED  {}:2222", lab.hosts[2].ip));
    let refused = started.elapsed();
    assert!(refused < std::time::Duration::from_secs(10), "{refused:?}");
    eprintln!(
        "receiver stopped: {stalled:?}, reset handshake: {refused:?}\n{}",
        run.stdout
    );
}

/// `ip netns exec` bind-mounts /etc/netns/<ns>/resolv.conf over /etc/resolv.conf: the
/// resolver of master-0 then asks master-2's address, where no DNS server listens.
struct LabResolver(std::path::PathBuf);

impl Drop for LabResolver {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        // /etc/netns itself, if this test made it (fails harmlessly when not empty).
        let _ = std::fs::remove_dir(self.0.parent().unwrap());
    }
}

#[test]
fn a_peer_name_that_does_not_resolve_fails_alone_and_is_named() {
    let lab = Lab::new();
    let id = lab.backup(0);
    let dir = std::path::Path::new("/etc/netns").join(&lab.hosts[0].netns);
    std::fs::create_dir_all(&dir).unwrap();
    let _resolver = LabResolver(dir.clone());
    std::fs::write(
        dir.join("resolv.conf"),
        format!(
            "nameserver {}\noptions timeout:1 attempts:1\n",
            lab.hosts[2].ip
        ),
    )
    .unwrap();
    lab.write_config(0, "peers = [\"master-9.lab.invalid\"]\n");
    let started = std::time::Instant::now();
    lab.hosts[0]
        .run(&["spray"])
        .expect_code(4)
        .expect_stdout("FAILED  master-9.lab.invalid")
        .expect_stdout("resolve");
    let elapsed = started.elapsed();
    assert!(elapsed < std::time::Duration::from_secs(10), "{elapsed:?}");
    assert_eq!(lab.hosts[1].set_ids(), std::slice::from_ref(&id));
    assert_eq!(lab.hosts[2].set_ids(), std::slice::from_ref(&id));
    eprintln!("unresolvable name: {elapsed:?}");
}

#[test]
fn a_receiver_waiting_for_its_store_lock_keeps_the_sender_and_commits() {
    let lab = Lab::new();
    let id = lab.backup(0);
    // A backup (or prune) on master-2 holds its store lock longer than the sender's io_timeout
    // (5s): the receiver says it waits, the sender keeps waiting, the set is committed after.
    let store = etcd_backup::store::Store::open(&lab.hosts[2].store()).unwrap();
    let held = store.lock(std::time::Duration::ZERO).unwrap();
    let holder = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(8));
        drop(held);
    });
    let started = std::time::Instant::now();
    lab.hosts[0].run(&["spray"]).expect_code(0);
    let waited = started.elapsed();
    holder.join().unwrap();
    assert!(
        waited >= std::time::Duration::from_secs(7),
        "the commit waited for the lock: {waited:?}"
    );
    assert_eq!(lab.hosts[2].set_ids(), std::slice::from_ref(&id));
    lab.hosts[2].run(&["verify"]).expect_code(0);
}
