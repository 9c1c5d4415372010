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
                .contains(&format!("set received: {id} from master-0")),
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
