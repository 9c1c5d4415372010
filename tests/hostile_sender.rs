//! A sender that holds the spray key (or a node's certificate), used as an attacker would: the
//! real `etcd-backup receive` on a pipe, sets forged from sound snapshot bytes, offers that lie,
//! transfers cut a byte short, a hello that never comes. It may deliver sets, and nothing else.

use crate::util::*;
use chrono::{DateTime, TimeDelta, Utc};
use etcd_backup::manifest::{MANIFEST_NAME, Manifest, make_set_id};
use etcd_backup::protocol::{Conn, Duplex, Message, Offer, PROTOCOL_VERSION};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, Instant};

type Wire = Conn<Duplex<ChildStdout, ChildStdin>>;

/// Master-1: its config (`extra` adds tables), its own first backup.
fn master_1(extra: &str) -> Node {
    let node = Node::new("");
    configure_master_1(&node, extra);
    node
}

fn configure_master_1(node: &Node, extra: &str) {
    let retention = if extra.contains("[retention]") {
        ""
    } else {
        "[retention]\nkeep_last = 2\nkeep_hourly = 24\n"
    };
    node.write_config_raw(&format!(
        "[node]\nname = \"master-1\"\n\n[store]\nroot = \"{}\"\nlock_wait = \"3s\"\n\n\
         [backup]\ncommand = \"{}\"\ntimeout = \"60s\"\n\n{retention}{extra}",
        node.store().display(),
        standin().display()
    ));
}

/// One running `etcd-backup receive` of `node`, spoken to over its stdin and stdout.
struct Receiver {
    child: Child,
    conn: Option<Wire>,
}

impl Receiver {
    fn start(node: &Node) -> Receiver {
        let mut child = node
            .cmd(&["receive"])
            .env("SSH_CONNECTION", "10.0.0.66 40000 10.0.0.2 22")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (stdout, stdin) = (child.stdout.take().unwrap(), child.stdin.take().unwrap());
        Receiver {
            child,
            conn: Some(Conn::new(Duplex::new(stdout, stdin), false)),
        }
    }

    fn conn(&mut self) -> &mut Wire {
        self.conn.as_mut().unwrap()
    }

    /// Hangs up; the receiver's exit code and what it logged.
    fn finish(mut self) -> (i32, String) {
        drop(self.conn.take());
        let mut log = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut log)
            .unwrap();
        let code = self.child.wait().unwrap().code().unwrap_or(-1);
        (code, log)
    }
}

/// The files of one real backup of master-0: sound snapshot and resources bytes to forge from.
struct Material {
    _node: Node,
    dir: PathBuf,
    manifest: Manifest,
}

fn material() -> Material {
    let node = Node::new("");
    let id = node.backup();
    let dir = node.set_dir(&id);
    let manifest = Manifest::parse(&std::fs::read(dir.join(MANIFEST_NAME)).unwrap()).unwrap();
    Material {
        _node: node,
        dir,
        manifest,
    }
}

/// An attacker's store of sets forged from `material`: each its bytes under a new origin and
/// creation time (file names stamped to match), with a manifest that parses.
struct Forger<'a> {
    material: &'a Material,
    dir: tempfile::TempDir,
}

impl<'a> Forger<'a> {
    fn new(material: &'a Material) -> Forger<'a> {
        let forger = Forger {
            material,
            dir: tempfile::tempdir().unwrap(),
        };
        etcd_backup::store::Store::open(&forger.root()).unwrap();
        forger
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The manifest of forged set `id`, as its bytes and parsed.
    fn manifest_of(&self, id: &str) -> (String, Manifest) {
        let text =
            std::fs::read_to_string(self.root().join("sets").join(id).join(MANIFEST_NAME)).unwrap();
        let manifest = Manifest::parse(text.as_bytes()).unwrap();
        (text, manifest)
    }

    fn forge(&self, origin: &str, created: DateTime<Utc>) -> String {
        let mut manifest = self.material.manifest.clone();
        let created = DateTime::from_timestamp_millis(created.timestamp_millis()).unwrap();
        manifest.id = make_set_id(created, origin);
        manifest.origin = origin.to_string();
        manifest.created = created;
        let set = self.root().join("sets").join(&manifest.id);
        std::fs::create_dir(&set).unwrap();
        let stamp = created.format("%F_%H%M%S").to_string();
        for file in &mut manifest.files {
            let renamed = if file.name.starts_with("snapshot_") {
                format!("snapshot_{stamp}.db")
            } else {
                format!("static_kuberesources_{stamp}.tar.gz")
            };
            std::fs::hard_link(self.material.dir.join(&file.name), set.join(&renamed)).unwrap();
            file.name = renamed;
        }
        std::fs::write(set.join(MANIFEST_NAME), manifest.to_json()).unwrap();
        manifest.id
    }

    /// Pushes every forged set to `node`'s receiver with the sender's own code, claiming
    /// to be master-0; returns what the push said, and the receiver's exit code and log.
    fn push(&self, node: &Node) -> (Result<Vec<String>, String>, i32, String) {
        let store = etcd_backup::store::Store::open(&self.root()).unwrap();
        let sets = etcd_backup::protocol::send::open_sets(store.list().unwrap().sets);
        let mut receiver = Receiver::start(node);
        let pushed = etcd_backup::protocol::send::push(receiver.conn(), "master-0", &sets)
            .map(|stats| stats.sent)
            .map_err(|e| format!("{e:#}"));
        let (code, log) = receiver.finish();
        (pushed, code, log)
    }
}

fn ago(minutes: i64) -> DateTime<Utc> {
    Utc::now() - TimeDelta::minutes(minutes)
}

/// `minute` minutes into the hour that began `hours` hours before this one.
fn in_hour(hours: i64, minute: i64) -> DateTime<Utc> {
    use chrono::DurationRound;
    Utc::now().duration_trunc(TimeDelta::hours(1)).unwrap() - TimeDelta::hours(hours)
        + TimeDelta::minutes(minute)
}

#[test]
fn forged_sets_cannot_erase_a_peer_s_history_nor_date_themselves_ahead() {
    let material = material();
    let node = master_1("");
    let own = node.backup();
    // master-0's history on master-1: a set in each of the hours 1 to 5 hours back.
    let history = Forger::new(&material);
    let genuine: Vec<String> = (1..=5)
        .rev()
        .map(|h| history.forge("master-0", in_hour(h, 10)))
        .collect();
    let (pushed, code, log) = history.push(&node);
    assert_eq!(code, 0, "{log}");
    assert_eq!(pushed.unwrap().len(), 5);

    // The attacker's session, all at once.
    let attack = Forger::new(&material);
    // Sets of master-1's own origin, newer than its own: its retention would drop its real one.
    let as_itself: Vec<String> = (1..=3).map(|m| attack.forge("master-1", ago(m))).collect();
    // Dated far ahead, and just past the five minutes of skew allowed.
    let ahead = [
        attack.forge("master-0", Utc::now() + TimeDelta::days(365 * 70)),
        attack.forge("master-0", Utc::now() + TimeDelta::minutes(10)),
    ];
    // Later in the hour of each genuine set but the newest: each would become the newest of
    // that hour, and push the genuine one out. (A set newer than all is the next backup: a
    // sender may deliver that.)
    let displacing: Vec<String> = (2..=5)
        .map(|h| attack.forge("master-0", in_hour(h, 40)))
        .collect();
    let (pushed, code, log) = attack.push(&node);
    assert_eq!(code, 0, "the receiver refuses these without failing: {log}");
    assert_eq!(pushed.unwrap(), Vec::<String>::new(), "nothing committed");

    let held = node.set_ids();
    for id in genuine.iter().chain([&own]) {
        assert!(held.contains(id), "{id} still held: {held:?}");
    }
    for id in as_itself.iter().chain(&ahead).chain(&displacing) {
        assert!(!held.contains(id), "{id} refused: {held:?}");
    }
    // The journal says who offered what, and why it was refused.
    for id in ahead.iter().chain(&displacing) {
        assert!(
            log.contains(&format!("refused set {id} offered by master-0 (10.0.0.66)")),
            "{id}: {log}"
        );
    }
    assert!(log.contains("dated after this node's clock"), "{log}");
    assert!(log.contains("would take the place of"), "{log}");
    let status = node.run(&["status", "--json"]);
    status.expect_code(0);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["newest"]["id"], own.as_str());
    assert_eq!(status["future_dated"], serde_json::json!([]));
}

#[test]
fn one_session_adds_a_bounded_number_of_sets_per_origin() {
    let material = material();
    let node = master_1("[retention]\nkeep_last = 50\n");
    let forger = Forger::new(&material);
    let offered: Vec<String> = (1..=12).map(|m| forger.forge("master-0", ago(m))).collect();
    let (pushed, code, log) = forger.push(&node);
    assert_eq!(code, 0, "{log}");
    // The newest first, eight of them; the next spray brings the rest.
    assert_eq!(pushed.unwrap(), offered[..8]);
    let (pushed, code, log) = forger.push(&node);
    assert_eq!(code, 0, "{log}");
    assert_eq!(pushed.unwrap(), offered[8..]);
}

/// Says hello offering `offer`, reads the welcome, and begins the set with `manifest`.
fn begin(conn: &mut Wire, offer: Offer, manifest: &str) -> Message {
    conn.send(&Message::Hello {
        version: PROTOCOL_VERSION,
        sender: "master-0".into(),
        offers: vec![offer.clone()],
    })
    .unwrap();
    let welcome = conn.next_message().unwrap();
    assert!(
        matches!(&welcome, Message::Welcome { wants, .. } if wants.iter().any(|w| w.id == offer.id)),
        "{welcome:?}"
    );
    conn.send(&Message::SetBegin {
        id: offer.id.clone(),
        manifest: manifest.to_string(),
        signature: None,
    })
    .unwrap();
    welcome
}

/// Says hello as master-0 offering nothing, and reads the welcome.
fn offer_nothing(receiver: &mut Receiver) {
    receiver
        .conn()
        .send(&Message::Hello {
            version: PROTOCOL_VERSION,
            sender: "master-0".into(),
            offers: vec![],
        })
        .unwrap();
    let welcome = receiver.conn().next_message().unwrap();
    assert!(matches!(welcome, Message::Welcome { .. }), "{welcome:?}");
}

fn honest_offer(manifest: &Manifest, text: &str) -> Offer {
    Offer {
        id: manifest.id.clone(),
        manifest_sha256: sha256_of(text.as_bytes()),
        size: manifest.total_size(),
        dirty: manifest.dirty,
    }
}

fn sha256_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn partials(node: &Node) -> Vec<PathBuf> {
    node.staging_entries()
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("recv-")
        })
        .collect()
}

/// Sends `len` bytes of `path` as the data of its set's file, then drops the link.
fn send_prefix_and_cut(mut receiver: Receiver, name: &str, path: &Path, len: usize) -> String {
    let bytes = std::fs::read(path).unwrap();
    let conn = receiver.conn();
    conn.send(&Message::FileBegin {
        name: name.to_string(),
        offset: 0,
    })
    .unwrap();
    for chunk in bytes[..len].chunks(1 << 20) {
        conn.send_data(chunk).unwrap();
    }
    conn.flush().unwrap();
    receiver.finish().1
}

#[test]
fn a_sender_cannot_fill_the_receiver_s_disk() {
    let material = material();
    let set_bytes = material.manifest.total_size();
    let node = Node::new("");
    let forger = Forger::new(&material);
    let small = forger.forge("master-0", ago(30));
    let (text, manifest) = forger.manifest_of(&small);

    // An offer that claims one size and a manifest that says another.
    configure_master_1(&node, "");
    let mut receiver = Receiver::start(&node);
    let mut lying = honest_offer(&manifest, &text);
    lying.size = 1;
    begin(receiver.conn(), lying, &text);
    let answer = receiver.conn().next_message().unwrap();
    assert!(
        matches!(&answer, Message::Error { message } if message.contains("its offer said 1")),
        "{answer:?}"
    );
    receiver.finish();
    assert!(partials(&node).is_empty());

    // A store on a small filesystem whose free-space floor leaves room for one set only.
    let fs = SmallFs::mount(&node.store(), (set_bytes * 5 / 2).div_ceil(1 << 20) + 1);
    let floor = fs.free_bytes() - set_bytes * 3 / 2;
    configure_master_1(
        &node,
        &format!(
            "[retention]\nkeep_last = 10\nmin_free_space = \"{floor}B\"\nmin_free_percent = 0\n"
        ),
    );
    std::thread::sleep(Duration::from_millis(20));
    let first = forger.forge("master-0", ago(20));
    let (pushed, _, log) = forger.push(&node);
    let error = pushed.unwrap_err();
    // The newest fits; the next does not, and the sender's run says why and where.
    assert!(node.set_ids().contains(&first), "{log}");
    assert!(
        error.contains("does not fit in store") && error.contains("min_free_space"),
        "{error}"
    );
    assert!(fs.free_bytes() >= floor, "the floor holds");

    // Cut one byte short, with no end: the partial waits for the next session...
    let held = node.set_ids();
    // No floor now: what is tried next is the partial's own bound.
    configure_master_1(
        &node,
        "[retention]\nkeep_last = 10\nmin_free_space = \"0B\"\n",
    );
    let snapshot = manifest
        .files
        .iter()
        .find(|f| f.name.ends_with(".db"))
        .unwrap();
    let mut receiver = Receiver::start(&node);
    let resumed = begin(receiver.conn(), honest_offer(&manifest, &text), &text);
    assert!(matches!(resumed, Message::Welcome { .. }));
    send_prefix_and_cut(
        receiver,
        &snapshot.name,
        &forger.root().join("sets").join(&small).join(&snapshot.name),
        snapshot.size as usize - 1,
    );
    assert_eq!(partials(&node).len(), 1, "kept for a resume");
    // ...and goes with the next session that does not resume it.
    let mut receiver = Receiver::start(&node);
    offer_nothing(&mut receiver);
    receiver.conn().send(&Message::Bye).unwrap();
    let (code, log) = receiver.finish();
    assert_eq!(code, 0, "{log}");
    assert!(partials(&node).is_empty(), "{:?}", partials(&node));
    assert_eq!(node.set_ids(), held, "nothing lost");
}

#[test]
fn a_partial_larger_than_promised_or_with_a_planted_manifest_is_removed() {
    let material = material();
    let node = master_1("");
    let forger = Forger::new(&material);
    let id = forger.forge("master-0", ago(30));
    let staging = node.store().join(".staging");
    // A partial holding more than its manifest promises.
    let grown = staging.join(format!("recv-{id}"));
    std::fs::create_dir_all(&grown).unwrap();
    let set = forger.root().join("sets").join(&id);
    std::fs::copy(set.join(MANIFEST_NAME), grown.join(".offer-manifest.json")).unwrap();
    let manifest = Manifest::parse(&std::fs::read(set.join(MANIFEST_NAME)).unwrap()).unwrap();
    let db = &manifest.files[0];
    std::fs::File::create(grown.join(&db.name))
        .unwrap()
        .set_len(db.size + 1)
        .unwrap();
    // Partials whose offer manifest is a FIFO, or a link to /dev/zero.
    let fifo = staging.join("recv-20260101T000000.000Z-master-0");
    std::fs::create_dir(&fifo).unwrap();
    nix::unistd::mkfifo(
        &fifo.join(".offer-manifest.json"),
        nix::sys::stat::Mode::S_IRWXU,
    )
    .unwrap();
    let zero = staging.join("recv-20260101T000001.000Z-master-0");
    std::fs::create_dir(&zero).unwrap();
    std::os::unix::fs::symlink("/dev/zero", zero.join(".offer-manifest.json")).unwrap();

    let started = Instant::now();
    let (pushed, code, log) = forger.push(&node);
    assert_eq!(code, 0, "{log}");
    assert_eq!(
        pushed.unwrap(),
        std::slice::from_ref(&id),
        "received whole, from the start"
    );
    assert!(started.elapsed() < Duration::from_secs(30), "nothing hung");
    assert!(partials(&node).is_empty(), "{:?}", partials(&node));
    node.run(&["verify", &id]).expect_code(0);
}

#[test]
fn a_sender_that_never_says_hello_holds_no_lock_and_one_that_trickles_is_cut() {
    let material = material();
    let node = master_1("[spray]\nsession_timeout = \"4s\"\n");
    let forger = Forger::new(&material);
    let id = forger.forge("master-0", ago(30));

    // A connection that says nothing: an honest sender is served meanwhile.
    let mut silent = Receiver::start(&node);
    let (pushed, code, log) = forger.push(&node);
    assert_eq!(code, 0, "{log}");
    assert_eq!(pushed.unwrap(), [id]);

    // One that says hello (holding the receive lock) and then a byte now and then.
    let mut trickler = Receiver::start(&node);
    offer_nothing(&mut trickler);
    let started = Instant::now();
    let trickling = std::thread::spawn(move || {
        use std::io::Write;
        // The first byte of a frame header, then one more every second (never idle for the
        // 60 s I/O timeout, never a whole header); then holding on, past the 4 s session
        // bound, until the receiver hangs up.
        for sent in 0..10 {
            if sent < 4 && trickler.conn().get_mut().write_all(b"C").is_err() {
                break;
            }
            let _ = trickler.conn().get_mut().flush();
            std::thread::sleep(Duration::from_secs(1));
            if trickler.child.try_wait().unwrap().is_some() {
                break;
            }
        }
        trickler.finish()
    });
    // A second honest sender waits for the lock, and is told how long it waited.
    std::thread::sleep(Duration::from_millis(300));
    let other = forger.forge("master-0", ago(20));
    let (pushed, _, _) = forger.push(&node);
    let error = pushed.unwrap_err();
    assert!(
        error.contains("busy") && error.contains("waited 3s"),
        "{error}"
    );
    let (code, log) = trickling.join().unwrap();
    assert_ne!(code, 0);
    assert!(log.contains("time allowed"), "{log}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // After the cut, the next spray goes through.
    let (pushed, code, log) = forger.push(&node);
    assert_eq!(code, 0, "{log}");
    assert_eq!(pushed.unwrap(), [other]);
    // The silent one would be cut at its hello's bound (30 s); not waited for here.
    silent.child.kill().unwrap();
    silent.finish();
}

/// What a set says of its cluster is shown in terminals and steers retention: a manifest whose
/// facts no backup writes (an escape sequence in the release, a member list of thousands, IDs
/// that are not IDs) is refused before a byte of the set is taken.
#[test]
fn forged_cluster_facts_are_refused_before_the_set_is_taken() {
    let material = material();
    let node = master_1("");
    let forger = Forger::new(&material);
    let id = forger.forge("master-0", ago(30));
    let (text, manifest) = forger.manifest_of(&id);
    let members: Vec<serde_json::Value> = (0..5000)
        .map(|n| serde_json::json!({"id": format!("{n:016x}"), "name": format!("m{n}")}))
        .collect();
    for (what, cluster) in [
        (
            "an escape sequence",
            serde_json::json!({"release": "4.18.7\u{1b}[2J\u{1b}[H"}),
        ),
        (
            "thousands of members",
            serde_json::json!({"members": members}),
        ),
        (
            "a cluster ID that is none",
            serde_json::json!({"cluster_id": "../../etc"}),
        ),
    ] {
        let mut forged: serde_json::Value = serde_json::from_str(&text).unwrap();
        forged["cluster"] = cluster;
        let forged = serde_json::to_string_pretty(&forged).unwrap();
        let mut receiver = Receiver::start(&node);
        begin(receiver.conn(), honest_offer(&manifest, &forged), &forged);
        let answer = receiver.conn().next_message().unwrap();
        assert!(
            matches!(&answer, Message::Error { message } if message.contains("cluster facts")),
            "{what}: {answer:?}"
        );
        receiver.finish();
        assert!(partials(&node).is_empty(), "{what}");
        assert!(!node.set_ids().contains(&id), "{what}");
    }
}
