//! Spray over mutual TLS, Pod Mode's transport, on loopback with the system OpenSSL at both
//! ends: receivers are real `etcd-backup receive --listen` processes on 127.0.0.2 and
//! 127.0.0.3 (one port, as every master listens on the same), the sender finds them in an
//! etcd.env, and every certificate comes from `etcd-backup tls-issue` or the openssl CLI.

use crate::util::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `etcd-backup tls-issue` for node `name` into `dir/name/`.
fn issue(dir: &Path, ca: &(PathBuf, PathBuf), name: &str) -> PathBuf {
    issue_for_days(dir, ca, name, 365)
}

/// [`issue`], valid for `days`.
fn issue_for_days(dir: &Path, ca: &(PathBuf, PathBuf), name: &str, days: u32) -> PathBuf {
    let out_dir = dir.join(format!("tls-{name}"));
    let out = Command::new(BIN)
        .args([
            "--config",
            "/dev/null",
            "tls-issue",
            "--name",
            name,
            "--ca-cert",
        ])
        .arg(&ca.0)
        .arg("--ca-key")
        .arg(&ca.1)
        .arg("--out")
        .arg(&out_dir)
        .args(["--days", &days.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode(&out_dir.join("tls.key")), 0o600);
    out_dir
}

fn tls_table(tls: &Path) -> String {
    format!(
        "[tls]\ncert = \"{0}/tls.crt\"\nkey = \"{0}/tls.key\"\nca = \"{0}/ca.crt\"\n",
        tls.display()
    )
}

/// A receiver process; killed when dropped.
struct Receiver {
    store: StoreAt,
    child: Child,
    log: PathBuf,
}

impl Receiver {
    fn start(dir: &Path, name: &str, ip: &str, port: u16, tls: &Path) -> Receiver {
        let root = dir.join(format!("store-{name}"));
        let store = StoreAt::configured(
            dir.join(format!("{name}.toml")),
            &root,
            &format!(
                "[node]\nname = \"{name}\"\n[retention]\nkeep_last = 10\n[spray]\nio_timeout = \"5s\"\n{}",
                tls_table(tls)
            ),
        );
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&store.config)
            .args(["receive", "--listen", &format!("{ip}:{port}")])
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect((ip, port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{name} did not listen: {}",
                std::fs::read_to_string(&log).unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Receiver { store, child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// Nothing committed and nothing staged.
    fn holds_nothing(&self) {
        assert!(
            !self.store.root.join("sets").is_dir() || self.store.ids().is_empty(),
            "{}",
            self.log()
        );
        assert_eq!(self.store.staging(), Vec::<PathBuf>::new());
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// master-1's receiver on 127.0.0.2:`port`, its certificate issued from `ca`.
fn master_1(dir: &Path, ca: &(PathBuf, PathBuf), port: u16) -> Receiver {
    Receiver::start(
        dir,
        "master-1",
        "127.0.0.2",
        port,
        &issue(dir, ca, "master-1"),
    )
}

/// master-0 (the test's node) with one set, spraying over TLS to the masters of its etcd.env.
fn sender(dir: &Path, port: u16, tls: &Path) -> (Node, String) {
    let etcd_env = dir.join("etcd.env");
    std::fs::write(
        &etcd_env,
        "export NODE_master_0_ETCD_NAME=\"master-0\"\nexport NODE_master_0_IP=\"127.0.0.1\"\n\
         export NODE_master_1_ETCD_NAME=\"master-1\"\nexport NODE_master_1_IP=\"127.0.0.2\"\n\
         export NODE_master_2_ETCD_NAME=\"master-2\"\nexport NODE_master_2_IP=\"127.0.0.3\"\n",
    )
    .unwrap();
    let node = Node::new(&format!(
        "[spray]\netcd_env = \"{}\"\ntransport = \"tls\"\ntls_port = {port}\n\
         connect_timeout = \"3s\"\nio_timeout = \"5s\"\nattempts = 1\n{}",
        etcd_env.display(),
        tls_table(tls)
    ));
    let id = node.backup();
    (node, id)
}

#[test]
fn sets_reach_both_receivers_verified_and_a_rerun_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca(dir.path(), "ca");
    let port = free_port();
    let receivers = [("master-1", "127.0.0.2"), ("master-2", "127.0.0.3")].map(|(name, ip)| {
        Receiver::start(dir.path(), name, ip, port, &issue(dir.path(), &ca, name))
    });
    let (node, id) = sender(dir.path(), port, &issue(dir.path(), &ca, "master-0"));
    // Started at the default priorities (as Pod Mode's containers start it), a receiver lowers
    // its own: nice 10, best-effort I/O at level 7, as the systemd units would.
    for receiver in &receivers {
        let pid = receiver.child.id().to_string();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        assert_eq!(fields[16], "10", "nice of the receiver: {stat}");
        let ionice = Command::new("ionice").args(["-p", &pid]).output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&ionice.stdout).trim(),
            "best-effort: prio 7"
        );
    }

    let run = node.run(&["spray"]);
    run.expect_code(0)
        .expect_stdout(&format!(
            "ok      master-1 (127.0.0.2:{port}, tls)  (1 sent"
        ))
        .expect_stdout(&format!(
            "ok      master-2 (127.0.0.3:{port}, tls)  (1 sent"
        ));
    for receiver in &receivers {
        assert_eq!(receiver.store.ids(), std::slice::from_ref(&id));
        receiver.store.run(&["verify"]).expect_code(0);
        assert_private(&receiver.store.root);
        assert!(
            receiver
                .log()
                .contains(&format!(
                    "set received: {id} (origin master-0) from master-0 (certificate of master-0, 127.0.0.1:"
                )),
            "{}",
            receiver.log()
        );
    }
    node.run(&["spray"])
        .expect_code(0)
        .expect_stdout("tls)  (0 sent, 0 bytes");
    node.run(&["status"])
        .expect_code(0)
        .expect_stdout("target master-1");
}

#[test]
fn a_client_certificate_of_another_ca_is_refused_and_nothing_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca(dir.path(), "ca");
    let other = make_ca(dir.path(), "other-ca");
    let port = free_port();
    let receiver = Receiver::start(
        dir.path(),
        "master-1",
        "127.0.0.2",
        port,
        &issue(dir.path(), &ca, "master-1"),
    );
    // The sender trusts the right CA but presents a certificate of another one.
    let mine = issue(dir.path(), &other, "master-0");
    std::fs::copy(&ca.0, mine.join("ca.crt")).unwrap();
    let (node, _) = sender(dir.path(), port, &mine);
    node.run(&["spray"])
        .expect_code(1)
        .expect_stdout("FAILED  master-1");
    receiver.holds_nothing();
    assert!(
        receiver.log().contains("TLS handshake refused"),
        "{}",
        receiver.log()
    );
}

#[test]
fn the_sender_is_who_its_certificate_says_and_the_receiver_must_be_the_peer_meant() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca(dir.path(), "ca");
    let port = free_port();
    // master-2's receiver presents master-1's certificate: the sender refuses it.
    let master_1 = issue(dir.path(), &ca, "master-1");
    let one = Receiver::start(dir.path(), "master-1", "127.0.0.2", port, &master_1);
    let two = Receiver::start(dir.path(), "master-2", "127.0.0.3", port, &master_1);
    // A valid certificate for master-9, and a hello that says master-0.
    let (node, _) = sender(dir.path(), port, &issue(dir.path(), &ca, "master-9"));
    let run = node.run(&["spray"]);
    run.expect_code(1)
        .expect_stdout("FAILED  master-1")
        .expect_stdout("FAILED  master-2")
        .expect_stdout("certificate names 'master-9' but its hello claims 'master-0'")
        .expect_stdout("must be signed by");
    one.holds_nothing();
    two.holds_nothing();
}

#[test]
fn connections_that_never_finish_a_handshake_lock_no_sender_out() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca(dir.path(), "ca");
    let port = free_port();
    let receiver = master_1(dir.path(), &ca, port);
    // Anyone who can reach the port: plain TCP, a byte now and then, more of them than the
    // receiver takes sessions.
    let trickling: Vec<_> = (0..40)
        .map(|_| {
            let mut tcp = std::net::TcpStream::connect(("127.0.0.2", port)).unwrap();
            std::thread::spawn(move || {
                let started = Instant::now();
                // A TLS handshake record of 512 bytes is coming, a byte every half second,
                // for 30 s at most unless the receiver cuts it first.
                if tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).is_ok() {
                    for _ in 0..60 {
                        if tcp.write_all(&[0x01]).is_err() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
                started.elapsed()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let (node, id) = sender(dir.path(), port, &issue(dir.path(), &ca, "master-0"));
    // (master-2 of its etcd.env is not running: a partial run.)
    node.run(&["spray"])
        .expect_code(4)
        .expect_stdout("ok      master-1");
    assert_eq!(receiver.store.ids(), [id]);
    // Each was cut at the handshake's bound (10 s), though never idle for the 5 s I/O timeout.
    let lasted: Vec<Duration> = trickling.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        lasted
            .iter()
            .all(|d| *d > Duration::from_secs(8) && *d < Duration::from_secs(20)),
        "{lasted:?}"
    );
}

#[test]
fn a_node_certificate_cannot_deliver_sets_of_the_receiver_s_own_origin() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca(dir.path(), "ca");
    let port = free_port();
    let receiver = master_1(dir.path(), &ca, port);
    // master-0's certificate, and a store whose sets claim master-1 as their origin.
    let (node, _) = sender(dir.path(), port, &issue(dir.path(), &ca, "master-0"));
    node.write_config_raw(
        &std::fs::read_to_string(node.config_path())
            .unwrap()
            .replace("name = \"master-0\"", "name = \"master-1\""),
    );
    std::thread::sleep(Duration::from_millis(20));
    let forged = node.backup();
    assert!(forged.ends_with("-master-1"), "{forged}");
    node.write_config_raw(
        &std::fs::read_to_string(node.config_path())
            .unwrap()
            .replace("name = \"master-1\"", "name = \"master-0\""),
    );
    node.run(&["spray"])
        .expect_code(4)
        .expect_stdout("ok      master-1 (127.0.0.2:")
        .expect_stdout("tls)  (1 sent");
    let held = receiver.store.ids();
    assert!(!held.contains(&forged), "{held:?}");
    assert_eq!(held.len(), 1, "master-0's own set only: {held:?}");
}

#[test]
fn an_expired_node_certificate_is_named_by_the_node_that_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca(dir.path(), "ca");
    let port = free_port();
    let receiver = master_1(dir.path(), &ca, port);
    // Issued for 0 days: valid up to the second it was issued, as a node certificate the chart
    // issued is once nobody ran `helm upgrade` within `sync.tls.days`.
    let expired = issue_for_days(dir.path(), &ca, "master-0", 0);
    std::thread::sleep(Duration::from_millis(1100));
    let (node, _) = sender(dir.path(), port, &expired);
    node.run(&["spray"])
        .expect_code(1)
        .expect_stdout("FAILED  master-1")
        .expect_stdout(&format!(
            "this node's TLS certificate '{}' expired",
            expired.join("tls.crt").display()
        ))
        .expect_stdout("helm upgrade --reuse-values");
    receiver.holds_nothing();
}
