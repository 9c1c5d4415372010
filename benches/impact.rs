//! Benchmark (not a test): what our work costs etcd. A real etcd whose data sits on the same
//! filesystem as the store takes a steady load of small puts (one client, `BENCH_PUTS_PER_SEC`,
//! default 100, over etcd's HTTP gateway on a kept-alive connection) the whole time, while the
//! phases run in turn, in rounds, in alternating order: idle, `backup`, `spray` to a directory
//! target, `spray` to a peer whose receiver (`receive --listen` on 127.0.0.2, mutual TLS, its store
//! on the same filesystem) writes what it receives, `verify --deep`, and the naive way (`etcdctl snapshot save`, `cp` of the snapshot and
//! the resources to a directory, `sync`). Per phase: the put latency p99 as the client saw it,
//! and etcd's own WAL fsync and backend commit p99 (its histograms, the bucket where the 99th
//! percentile falls, from the counts gained during the phase) — the medians over the rounds,
//! each beside idle's and the naive copy's in the same run.
//!
//! `cargo bench --bench impact` (as root; tests/lab/install-deps first). BENCH_SIZE_MIB sets the
//! etcd data size (default 1024), BENCH_ROUNDS the rounds (default 3), BENCH_IDLE_SECS the idle
//! phase (default 10).

#[path = "../tests/util/mod.rs"]
mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use util::*;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| v.parse().expect("a number"))
}

/// One HTTP/1.1 exchange on a kept-alive connection to etcd's client port: the response body.
fn exchange(conn: &mut BufReader<TcpStream>, request: &str) -> Vec<u8> {
    conn.get_mut().write_all(request.as_bytes()).unwrap();
    let mut length = 0usize;
    let mut chunked = false;
    let mut line = String::new();
    conn.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "etcd answered {line:?}");
    loop {
        line.clear();
        conn.read_line(&mut line).unwrap();
        let header = line.trim_end().to_ascii_lowercase();
        if header.is_empty() {
            break;
        }
        if let Some(v) = header.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        if header == "transfer-encoding: chunked" {
            chunked = true;
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            conn.read_line(&mut line).unwrap();
            let size = usize::from_str_radix(line.trim(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            conn.read_exact(&mut chunk).unwrap();
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        body.resize(length, 0);
        conn.read_exact(&mut body).unwrap();
    }
    body
}

fn connect(endpoint: &str) -> (BufReader<TcpStream>, String) {
    let host = endpoint.trim_start_matches("http://").to_string();
    let stream = TcpStream::connect(&host).unwrap();
    stream.set_nodelay(true).unwrap();
    (BufReader::new(stream), host)
}

/// The put load: every put's (start, latency) until `stop`.
fn load(
    endpoint: String,
    per_sec: u64,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Vec<(Instant, f64)>>>,
) {
    let (mut conn, host) = connect(&endpoint);
    let period = Duration::from_secs_f64(1.0 / per_sec as f64);
    let mut next = Instant::now();
    let mut n = 0u64;
    // base64 of "/bench/load" and of a 384-byte value.
    let key = "L2JlbmNoL2xvYWQ=";
    let value = "dmFsdWVz".repeat(64);
    while !stop.load(Ordering::Relaxed) {
        let body = format!("{{\"key\":\"{key}\",\"value\":\"{value}\"}}");
        let request = format!(
            "POST /v3/kv/put HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let start = Instant::now();
        exchange(&mut conn, &request);
        out.lock()
            .unwrap()
            .push((start, start.elapsed().as_secs_f64()));
        n += 1;
        next += period;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > Duration::from_secs(1) {
            next = now; // fell behind by a second: the load does not catch up in a burst
        }
    }
    assert!(n > 0);
}

/// etcd's histogram `name` now: (upper bound, cumulative count) per bucket.
fn histogram(endpoint: &str, name: &str) -> Vec<(f64, f64)> {
    let (mut conn, host) = connect(endpoint);
    let text = exchange(
        &mut conn,
        &format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    );
    let prefix = format!("{name}_bucket{{le=\"");
    String::from_utf8(text)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|rest| {
            let (le, count) = rest.split_once("\"} ").unwrap();
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            (le, count.trim().parse().unwrap())
        })
        .collect()
}

/// The bucket bound under which 99 % of the observations between `before` and `after` fall.
fn p99_of(before: &[(f64, f64)], after: &[(f64, f64)]) -> f64 {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .zip(before)
        .map(|((le, a), (_, b))| (*le, a - b))
        .collect();
    let total = delta.last().map_or(0.0, |d| d.1);
    if total == 0.0 {
        return 0.0;
    }
    delta
        .iter()
        .find(|(_, count)| *count >= 0.99 * total)
        .map_or(f64::INFINITY, |d| d.0)
}

fn p99(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() as f64) * 0.99).ceil() as usize - 1]
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

const WAL: &str = "etcd_disk_wal_fsync_duration_seconds";
const COMMIT: &str = "etcd_disk_backend_commit_duration_seconds";

/// One phase's figures: put p99 (ms), WAL fsync p99 (ms), backend commit p99 (ms), seconds.
type Phase = [f64; 4];

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` must not run this.
    }
    let (mib, rounds) = (env_or("BENCH_SIZE_MIB", 1024), env_or("BENCH_ROUNDS", 3));
    let (per_sec, idle) = (
        env_or("BENCH_PUTS_PER_SEC", 100),
        env_or("BENCH_IDLE_SECS", 10),
    );
    let started = Instant::now();
    util::lab::load_kubernetes_values(mib as usize);
    eprintln!(
        "loaded {mib} MiB into etcd in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    let etcd = etcd();
    let node = Node::new("");
    let target = node.dir.path().join("target");
    let naive = node.dir.path().join("naive");
    node.write_config(&format!(
        "[retention]\nkeep_last = 1\n[spray]\netcd_env = \"\"\n[[spray.target]]\nkind = \"dir\"\npath = \"{}\"\nrequire_mount = false\n",
        target.display()
    ));
    let id = node.backup();
    let set = node.set_dir(&id);
    eprintln!("set {id}: {:.0} MiB", dir_bytes(&set) as f64 / 1048576.0);
    let (peer, to_peer) = Peer::start(&node);

    let stop = Arc::new(AtomicBool::new(false));
    let puts = Arc::new(Mutex::new(Vec::new()));
    let loader = {
        let (endpoint, stop, puts) = (etcd.endpoint.clone(), stop.clone(), puts.clone());
        std::thread::spawn(move || load(endpoint, per_sec, stop, puts))
    };
    std::thread::sleep(Duration::from_secs(2));

    let names = [
        "idle",
        "backup",
        "spray (dir)",
        "spray (peer)",
        "verify --deep",
        "naive copy",
    ];
    const NAIVE: usize = 5;
    let mut figures: Vec<Vec<Phase>> = vec![Vec::new(); names.len()];
    let bin = |args: &[&str]| node.cmd(args);
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..names.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for phase in order {
            // Each phase starts from the same state: one set, an empty target, no naive copy.
            let _ = std::fs::remove_dir_all(&target);
            let _ = std::fs::remove_dir_all(&naive);
            for set in std::fs::read_dir(peer.store.join("sets"))
                .into_iter()
                .flatten()
            {
                let _ = std::fs::remove_dir_all(set.unwrap().path());
            }
            run(Command::new("sync").arg("-f").arg(node.store()), "sync");
            std::thread::sleep(Duration::from_secs(1));
            let (wal, commit) = (
                histogram(&etcd.endpoint, WAL),
                histogram(&etcd.endpoint, COMMIT),
            );
            let start = Instant::now();
            match phase {
                0 => std::thread::sleep(Duration::from_secs(idle)),
                1 => run(&mut bin(&["backup"]), "backup"),
                2 => run(&mut bin(&["spray"]), "spray"),
                3 => run(
                    Command::new(BIN)
                        .arg("--config")
                        .arg(&to_peer)
                        .arg("spray")
                        .env_remove("JOURNAL_STREAM"),
                    "spray to the peer",
                ),
                4 => run(&mut bin(&["verify", "--deep"]), "verify"),
                _ => {
                    std::fs::create_dir_all(&naive).unwrap();
                    let snapshot = naive.join("snapshot.db");
                    run(
                        Command::new(etcd.bin_dir.join("etcdctl"))
                            .arg(format!("--endpoints={}", etcd.endpoint))
                            .args(["snapshot", "save"])
                            .arg(&snapshot),
                        "etcdctl snapshot save",
                    );
                    let copy = naive.join("copy");
                    std::fs::create_dir_all(&copy).unwrap();
                    let current = node.set_ids().pop().unwrap();
                    run(
                        Command::new("cp")
                            .arg(&snapshot)
                            .args(
                                std::fs::read_dir(node.set_dir(&current))
                                    .unwrap()
                                    .map(|e| e.unwrap().path()),
                            )
                            .arg(&copy),
                        "cp",
                    );
                    run(&mut Command::new("sync"), "sync");
                }
            }
            let secs = start.elapsed().as_secs_f64();
            let end = Instant::now();
            let latencies: Vec<f64> = puts
                .lock()
                .unwrap()
                .iter()
                .filter(|(at, _)| *at >= start && *at <= end)
                .map(|(_, l)| l * 1000.0)
                .collect();
            let wal = p99_of(&wal, &histogram(&etcd.endpoint, WAL)) * 1000.0;
            let commit = p99_of(&commit, &histogram(&etcd.endpoint, COMMIT)) * 1000.0;
            eprintln!(
                "round {round} {:<14} {secs:6.1}s  put p99 {:7.1} ms ({} puts)  wal fsync p99 {wal:6.1} ms  commit p99 {commit:6.1} ms",
                names[phase],
                p99(latencies.clone()),
                latencies.len()
            );
            figures[phase].push([p99(latencies), wal, commit, secs]);
        }
    }
    stop.store(true, Ordering::Relaxed);
    loader.join().unwrap();

    let med = |phase: usize, i: usize| median(figures[phase].iter().map(|f| f[i]).collect());
    println!(
        "\netcd impact, {mib} MiB etcd, {per_sec} puts/s, medians of {rounds} rounds (WAL fsync and commit: etcd's bucket bound)"
    );
    println!(
        "{:<14} {:>8} {:>12} {:>8} {:>14} {:>8} {:>14} {:>8}",
        "phase",
        "secs",
        "put p99 ms",
        "x idle",
        "wal fsync ms",
        "x idle",
        "x naive (put)",
        "commit"
    );
    for (phase, name) in names.iter().enumerate() {
        println!(
            "{:<14} {:>8.1} {:>12.1} {:>8.2} {:>14.1} {:>8.2} {:>14.2} {:>8.1}",
            name,
            med(phase, 3),
            med(phase, 0),
            med(phase, 0) / med(0, 0),
            med(phase, 1),
            med(phase, 1) / med(0, 1).max(0.001),
            med(phase, 0) / med(NAIVE, 0),
            med(phase, 2),
        );
    }
}

/// The peer: a `receive --listen` process on 127.0.0.2 (mutual TLS, certificates from
/// `tls-issue`), its store beside the node's; killed when dropped. Also returns a config of the
/// node (same store) that sprays to it and to nothing else.
struct Peer {
    store: std::path::PathBuf,
    child: std::process::Child,
}

impl Peer {
    fn start(node: &Node) -> (Peer, std::path::PathBuf) {
        let dir = node.dir.path();
        let ca = make_ca(dir, "ca");
        let issue = |name: &str| {
            let out = dir.join(format!("tls-{name}"));
            run(
                Command::new(BIN)
                    .args(["--config", "/dev/null", "tls-issue", "--name", name])
                    .arg("--ca-cert")
                    .arg(&ca.0)
                    .arg("--ca-key")
                    .arg(&ca.1)
                    .arg("--out")
                    .arg(&out),
                "tls-issue",
            );
            format!(
                "[tls]\ncert = \"{0}/tls.crt\"\nkey = \"{0}/tls.key\"\nca = \"{0}/ca.crt\"\n",
                out.display()
            )
        };
        let port = free_port();
        let store = dir.join("peer-store");
        let config = dir.join("peer.toml");
        std::fs::write(
            &config,
            format!(
                "[node]\nname = \"master-1\"\n[store]\nroot = \"{}\"\n[retention]\nkeep_last = 1\nmin_free_percent = 0\n{}",
                store.display(),
                issue("master-1")
            ),
        )
        .unwrap();
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .args(["receive", "--listen", &format!("127.0.0.2:{port}")])
            .env_remove("JOURNAL_STREAM")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.2", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the peer did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let etcd_env = dir.join("etcd.env");
        std::fs::write(
            &etcd_env,
            "export NODE_master_0_ETCD_NAME=\"master-0\"\nexport NODE_master_0_IP=\"127.0.0.1\"\n\
             export NODE_master_1_ETCD_NAME=\"master-1\"\nexport NODE_master_1_IP=\"127.0.0.2\"\n",
        )
        .unwrap();
        let to_peer = dir.join("to-peer.toml");
        std::fs::write(
            &to_peer,
            format!(
                "[node]\nname = \"master-0\"\n[store]\nroot = \"{}\"\n[retention]\nkeep_last = 1\nmin_free_percent = 0\n\
                 [spray]\netcd_env = \"{}\"\ntransport = \"tls\"\ntls_port = {port}\n{}",
                node.store().display(),
                etcd_env.display(),
                issue("master-0")
            ),
        )
        .unwrap();
        (Peer { store, child }, to_peer)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}
