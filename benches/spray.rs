//! Benchmark (not a test): spraying real etcd backup sets over real OpenSSH in the namespace
//! lab against OpenSSH's own `scp -O -c aes128-gcm@openssh.com` and `rsync -e ssh` of the same
//! files, on two datasets: Kubernetes-shaped values (compressible) and values shaped like
//! secrets under etcd encryption at rest (incompressible). Per dataset the four runs (scp, rsync,
//! spray to one peer, spray to two peers) are alternated in rounds and the medians
//! compared (the fastest and slowest run beside each median); then a no-op spray and peak RSS.
//! CPU seconds per GiB show what limits: the whole machine's (busy share × cores × wall time:
//! sender, sshds, the receiving side, the kernel), the sender's (or the scp/rsync client's),
//! and for the spray the receivers' (`sudo` and `etcd-backup receive`, not sshd).
//!
//! `cargo bench --bench spray` (as root; tests/lab/install-deps first). BENCH_SIZE_MIB sets
//! the etcd data size of each dataset (default 1024), BENCH_ROUNDS the rounds (default 3).

#[path = "../tests/util/mod.rs"]
mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use util::lab::Lab;
use util::*;

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

fn rounds() -> usize {
    std::env::var("BENCH_ROUNDS").map_or(3, |v| v.parse().expect("BENCH_ROUNDS: a number"))
}

/// One run's figures.
#[derive(Clone, Copy, Default)]
struct Figures {
    secs: f64,
    /// Sender (or scp/rsync client) CPU seconds, user + system.
    sender_cpu: f64,
    /// Receivers' CPU seconds (spray only).
    receiver_cpu: f64,
    /// Share of the machine's CPU time that was busy during the run (everything: sender,
    /// sshds, the receiving side, the kernel's writeback).
    busy: f64,
    rss_kib: u64,
}

/// The machine's busy and total CPU time so far (/proc/stat, in ticks).
fn machine_ticks() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let ticks: Vec<f64> = stat.lines().next().unwrap()[3..]
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    // user nice system idle iowait irq softirq steal …: idle and iowait are not busy.
    let total: f64 = ticks[..8].iter().sum();
    (total - ticks[3] - ticks[4], total)
}

fn run_timed(mut cmd: Command, what: &str) -> (Figures, String) {
    let machine_before = machine_ticks();
    let start = Instant::now();
    let out = cmd.output().unwrap();
    let secs = start.elapsed().as_secs_f64();
    let machine_after = machine_ticks();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{stderr}");
    let (rss_kib, sender_cpu) = time_v_figures(&stderr);
    let figures = Figures {
        secs,
        sender_cpu,
        busy: (machine_after.0 - machine_before.0) / (machine_after.1 - machine_before.1),
        rss_kib,
        ..Figures::default()
    };
    (figures, stdout)
}

/// One spray run from master-0 to `peers`.
fn spray(lab: &Lab, peers: &[usize]) -> (Figures, String) {
    let list: Vec<String> = peers
        .iter()
        .map(|&n| format!("\"{}\"", lab.hosts[n].ip))
        .collect();
    lab.write_config(
        0,
        &format!(
            "etcd_env = \"\"\npeers = [{}]\nio_timeout = \"60s\"",
            list.join(", ")
        ),
    );
    let mut cmd = lab.hosts[0].cmd("/usr/bin/time");
    cmd.args(["-v", BIN, "--config"])
        .arg(lab.hosts[0].config())
        .arg("spray")
        .env_remove("JOURNAL_STREAM");
    lab.take_receiver_cpu();
    let (mut figures, out) = run_timed(cmd, "spray");
    figures.receiver_cpu = lab.take_receiver_cpu();
    (figures, out)
}

/// OpenSSH's client options for the baselines: the same cipher scp is given, batch mode, the
/// lab's pinned host keys.
fn ssh_options(lab: &Lab, key: &Path) -> Vec<String> {
    vec![
        "-c".into(),
        "aes128-gcm@openssh.com".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-i".into(),
        key.display().to_string(),
        "-o".into(),
        format!("UserKnownHostsFile={}", lab.known_hosts.display()),
    ]
}

/// A baseline copy of `files` into master-1's scp directory by an OpenSSH client: `client` is
/// its program and the arguments before the files.
fn baseline(lab: &Lab, client: &[String], files: &[PathBuf]) -> Figures {
    let mut cmd = lab.hosts[0].cmd("/usr/bin/time");
    cmd.arg("-v").args(client).args(files).arg(format!(
        "core@{}:{}/scp/",
        lab.hosts[1].ip,
        lab.hosts[1].dir.display()
    ));
    run_timed(cmd, &client[0]).0
}

/// Every peer starts empty: no set, no staging, no scp copy.
fn clear_peers(lab: &Lab) {
    for host in &lab.hosts[1..] {
        let _ = std::fs::remove_dir_all(host.store());
        for entry in std::fs::read_dir(host.dir.join("scp")).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

const METHODS: [&str; 4] = ["scp", "rsync", "spray 1 peer", "spray 2 peers"];

struct Dataset {
    name: &'static str,
    /// The target for one peer, as a multiple of scp's speed.
    target: f64,
    id: String,
    bytes: u64,
    /// Per method, the figures of each round.
    runs: Vec<Vec<Figures>>,
}

fn set_files(lab: &Lab, id: &str) -> (Vec<PathBuf>, u64) {
    let set_dir = lab.hosts[0].store().join("sets").join(id);
    let files: Vec<PathBuf> = std::fs::read_dir(&set_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.ends_with("manifest.json"))
        .collect();
    let bytes = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    (files, bytes)
}

/// The three rounds of one dataset, whose set is the only one in master-0's store.
fn measure(lab: &Lab, key: &Path, name: &'static str, target: f64, id: String) -> Dataset {
    let (files, bytes) = set_files(lab, &id);
    eprintln!("{name}: set {id}, {:.0} MiB", bytes as f64 / MIB);
    let options = ssh_options(lab, key);
    let scp: Vec<String> = ["scp", "-O", "-q"]
        .iter()
        .map(|a| a.to_string())
        .chain(options.iter().cloned())
        .collect();
    let rsync = vec![
        "rsync".to_string(),
        "-e".to_string(),
        format!("ssh {}", options.join(" ")),
    ];
    let mut runs = vec![Vec::new(); METHODS.len()];
    for round in 0..rounds() {
        // Alternated: each round starts with another method.
        for step in 0..METHODS.len() {
            let method = (round + step) % METHODS.len();
            clear_peers(lab);
            let figures = match method {
                0 => baseline(lab, &scp, &files),
                1 => baseline(lab, &rsync, &files),
                2 => spray(lab, &[1]).0,
                _ => spray(lab, &[1, 2]).0,
            };
            eprintln!(
                "  round {round}: {:<14} {:6.2} s",
                METHODS[method], figures.secs
            );
            runs[method].push(figures);
        }
    }
    Dataset {
        name,
        target,
        id,
        bytes,
        runs,
    }
}

const MIB: f64 = (1u64 << 20) as f64;

fn report(data: &Dataset) {
    let m = |method: usize, field: fn(&Figures) -> f64| {
        median(data.runs[method].iter().map(field).collect())
    };
    let secs = |method| m(method, |f| f.secs);
    let gib = data.bytes as f64 / (1u64 << 30) as f64;
    println!(
        "{}: {:.0} MiB set; medians of {} alternated runs",
        data.name,
        data.bytes as f64 / MIB,
        data.runs[0].len()
    );
    let (scp_secs, two_secs, one_secs) = (secs(0), secs(3), secs(2));
    for (method, name) in METHODS.iter().enumerate() {
        let s = secs(method);
        let (fastest, slowest) = data.runs[method]
            .iter()
            .map(|f| f.secs)
            .fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let busy = m(method, |f| f.busy);
        let mut line = format!(
            "  {name:<14} {s:6.2} s ({fastest:.2}-{slowest:.2}) {:4.0} MiB/s = {:.2}x scp; machine {:3.0}% busy = {:.2} CPU s/GiB, sender {:.2}",
            data.bytes as f64 / MIB / s,
            scp_secs / s,
            busy * 100.0,
            m(method, |f| f.busy * f.secs) * cores() / gib,
            m(method, |f| f.sender_cpu) / gib
        );
        if method >= 2 {
            let peers = (method - 1) as f64;
            line.push_str(&format!(
                ", receiver {:.2} per peer",
                m(method, |f| f.receiver_cpu) / gib / peers
            ));
        }
        println!("{line}");
    }
    println!(
        "  targets: spray 1 peer {:.2}x scp (>= {:.1}x), 2 peers {:.2}x one peer (<= 1.3x)",
        scp_secs / one_secs,
        data.target,
        two_secs / one_secs
    );
}

/// Moves a set out of master-0's store into `stash` (or back), so that each dataset's runs
/// offer only its own set.
fn move_set(lab: &Lab, id: &str, stash: &Path, into_store: bool) {
    let in_store = lab.hosts[0].store().join("sets").join(id);
    let stashed = stash.join(id);
    let (from, to) = if into_store {
        (stashed, in_store)
    } else {
        (in_store, stashed)
    };
    std::fs::rename(&from, &to).unwrap();
}

fn main() {
    let Some((lab, mib)) = Lab::for_bench() else {
        return; // `cargo test --benches` must not run this.
    };
    let key = lab.allow_plain_key();
    lab.time_receivers();
    let stash = lab.hosts[0].dir.join("stash");
    std::fs::create_dir(&stash).unwrap();

    let kube = lab.backup(0);
    move_set(&lab, &kube, &stash, false);
    lab.clear_etcd();
    let started = Instant::now();
    lab.load_etcd_encrypted(mib);
    eprintln!(
        "loaded {mib} MiB of encrypted-shaped values in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    let encrypted = lab.backup(0);
    move_set(&lab, &encrypted, &stash, false);

    let mut datasets = Vec::new();
    for (name, target, id) in [
        ("kubernetes-shaped", 1.5, kube),
        ("encrypted at rest", 1.1, encrypted),
    ] {
        move_set(&lab, &id, &stash, true);
        datasets.push(measure(&lab, &key, name, target, id.clone()));
        move_set(&lab, &id, &stash, false);
    }

    // No-op and memory: both sets offered, both peers current.
    for data in &datasets {
        move_set(&lab, &data.id, &stash, true);
    }
    clear_peers(&lab);
    let (full, _) = spray(&lab, &[1, 2]);
    let (noop, noop_out) = spray(&lab, &[1, 2]);
    assert_eq!(
        noop_out.matches("(0 sent, 0 bytes").count(),
        2,
        "{noop_out}"
    );

    println!(
        "{mib} MiB of etcd values per dataset; sender, sshds and receivers share one {}-core machine",
        cores()
    );
    for data in &datasets {
        report(data);
    }
    println!(
        "spray, no-op (2 peers current): {:.3} s (target <= 0.3 s)",
        noop.secs
    );
    let peak = datasets
        .iter()
        .flat_map(|d| d.runs[2..].iter().flatten())
        .map(|f| f.rss_kib)
        .chain([full.rss_kib])
        .max()
        .unwrap_or(0);
    println!(
        "peak RSS of the sender over all spray runs: {:.1} MiB (target <= 20 MiB)",
        peak as f64 / 1024.0
    );
}
