//! Benchmark (not a test): spraying a ~1 GiB set of etcd data over real OpenSSH in the
//! namespace lab, against `scp -O -c aes128-gcm@openssh.com` of the same files, all measured in
//! this run: one peer vs scp, two peers vs one, a no-op spray, peak RSS.
//!
//! `cargo bench --bench spray` (as root; tests/lab/install-deps first). BENCH_SIZE_MIB sets the
//! etcd data size (default 1024).

#[path = "../tests/util/mod.rs"]
mod util;

use std::process::Command;
use std::time::Instant;
use util::lab::Lab;
use util::*;

fn timed(mut cmd: Command) -> (f64, std::process::Output) {
    let start = Instant::now();
    let out = cmd.output().unwrap();
    (start.elapsed().as_secs_f64(), out)
}

/// Wall seconds, stdout, peak RSS (KiB) and CPU seconds (user + system) of one spray run.
fn spray(lab: &Lab, peers: &[usize], compress: bool) -> (f64, String, u64, f64) {
    let list: Vec<String> = peers
        .iter()
        .map(|&n| format!("\"{}\"", lab.hosts[n].ip))
        .collect();
    lab.write_config(
        0,
        &format!(
            "etcd_env = \"\"\npeers = [{}]\ncompress = {compress}\nio_timeout = \"60s\"",
            list.join(", ")
        ),
    );
    let mut cmd = lab.hosts[0].cmd("/usr/bin/time");
    cmd.args(["-v", BIN, "--config"])
        .arg(lab.hosts[0].config())
        .arg("spray")
        .env_remove("JOURNAL_STREAM");
    let (secs, out) = timed(cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "spray failed:\n{stdout}\n{stderr}");
    let (rss_kib, cpu) = time_v_figures(&stderr);
    (secs, stdout, rss_kib, cpu)
}

fn clear_peers(lab: &Lab) {
    for host in &lab.hosts[1..] {
        let _ = std::fs::remove_dir_all(host.store());
    }
}

fn main() {
    let Some((lab, mib)) = Lab::for_bench() else {
        return; // `cargo test --benches` must not run this.
    };
    let id = lab.backup(0);
    let set_dir = lab.hosts[0].store().join("sets").join(&id);
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(&set_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.ends_with("manifest.json"))
        .collect();
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    let mib_of = |b: u64| b as f64 / (1u64 << 20) as f64;
    eprintln!("set {id}: {:.0} MiB", mib_of(bytes));

    // Baseline: OpenSSH scp (legacy protocol), AES-GCM, same files, same link, same CPU.
    let plain = lab.allow_plain_key();
    let mut scp = lab.hosts[0].cmd("scp");
    scp.args([
        "-O",
        "-q",
        "-c",
        "aes128-gcm@openssh.com",
        "-o",
        "BatchMode=yes",
        "-i",
    ])
    .arg(&plain)
    .arg("-o")
    .arg(format!("UserKnownHostsFile={}", lab.known_hosts.display()))
    .args(&files)
    .arg(format!(
        "core@{}:{}/scp/",
        lab.hosts[1].ip,
        lab.hosts[1].dir.display()
    ));
    let (scp_secs, out) = timed(scp);
    assert!(
        out.status.success(),
        "scp: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (raw_secs, _, _, raw_cpu) = spray(&lab, &[1], false);
    clear_peers(&lab);
    let (one_secs, one_out, one_rss, one_cpu) = spray(&lab, &[1], true);
    let wire: u64 = one_out
        .split("bytes, ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    clear_peers(&lab);
    let (two_secs, _, two_rss, two_cpu) = spray(&lab, &[1, 2], true);
    let (noop_secs, noop_out, _, _) = spray(&lab, &[1, 2], true);
    assert_eq!(
        noop_out.matches("(0 sent, 0 bytes").count(),
        2,
        "{noop_out}"
    );

    let rate = |secs: f64| mib_of(bytes) / secs;
    println!(
        "set: {:.0} MiB from {mib} MiB of etcd values; sender, sshds and receivers share one 2-core machine",
        mib_of(bytes)
    );
    println!(
        "scp -O -c aes128-gcm:             {scp_secs:6.2} s  {:6.0} MiB/s",
        rate(scp_secs)
    );
    println!(
        "spray, 1 peer, no compression:    {raw_secs:6.2} s  {:6.0} MiB/s  = {:.2}x scp; sender CPU {raw_cpu:.2} s",
        rate(raw_secs),
        scp_secs / raw_secs
    );
    println!(
        "spray, 1 peer, lz4:               {one_secs:6.2} s  {:6.0} MiB/s  = {:.2}x scp (target >= 1.0x); wire {:.0} MiB ({:.1}x smaller)",
        rate(one_secs),
        scp_secs / one_secs,
        mib_of(wire),
        bytes as f64 / wire.max(1) as f64
    );
    println!(
        "spray, 2 peers, lz4:              {two_secs:6.2} s  = {:.2}x one peer (target <= 1.2x); sender CPU {two_cpu:.2} s vs {one_cpu:.2} s for one",
        two_secs / one_secs
    );
    println!("spray, no-op (both current):      {noop_secs:6.3} s  (target <= 0.3 s)");
    println!(
        "peak RSS: 1 peer {:.1} MiB, 2 peers {:.1} MiB (target <= 20 MiB)",
        one_rss as f64 / 1024.0,
        two_rss as f64 / 1024.0
    );
}
