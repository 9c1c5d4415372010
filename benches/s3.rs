//! Benchmark (not a test): uploading a ~1 GiB set of real etcd data to a real S3 server
//! (SeaweedFS `weed mini` on loopback) against `aws s3 cp --recursive` (PyPI awscli) of the same
//! set directory with the same part size, all measured in this run, alternated, medians of 3:
//! first upload vs aws, a no-op run, peak RSS.
//!
//! `cargo bench --bench s3` (as root; tests/lab/install-deps first). BENCH_SIZE_MIB sets the
//! etcd data size (default 1024).

#[path = "../tests/util/mod.rs"]
mod util;

use std::process::Command;
use std::time::Instant;
use util::lab::Lab;
use util::s3::{ACCESS_KEY, S3Server, SECRET_KEY, credentials_file, new_bucket, s3_target};

const PART: &str = "16MiB";
const ROUNDS: usize = 3;

/// Wall seconds, stdout+stderr, peak RSS (KiB) and CPU seconds of `cmd` under `time -v`.
fn timed(program: &str, args: &[&str], env: &[(&str, String)]) -> (f64, String, u64, f64) {
    let mut cmd = Command::new("/usr/bin/time");
    cmd.arg("-v")
        .arg(program)
        .args(args)
        .env_remove("JOURNAL_STREAM");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let out = cmd.output().unwrap();
    let secs = start.elapsed().as_secs_f64();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    let (rss, cpu) = util::time_v_figures(&text);
    (secs, text, rss, cpu)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let Some((lab, mib)) = Lab::for_bench() else {
        return; // `cargo test --benches` must not run this.
    };
    lab.write_config(0, "etcd_env = \"\"");
    let id = lab.backup(0);
    let set_dir = lab.hosts[0].store().join("sets").join(&id);
    let bytes: u64 = std::fs::read_dir(&set_dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let mib_of = |b: u64| b as f64 / (1u64 << 20) as f64;
    eprintln!("set {id}: {:.0} MiB", mib_of(bytes));

    let server = S3Server::start();
    let endpoint = server.endpoint();
    let credentials = credentials_file(lab.dir.path(), SECRET_KEY);
    // awscli with the same part size (and its default 10 concurrent requests).
    let aws_config = lab.dir.path().join("aws-config");
    std::fs::write(
        &aws_config,
        "[default]\nregion = us-east-1\ns3 =\n  multipart_chunksize = 16MB\n  multipart_threshold = 16MB\n",
    )
    .unwrap();
    let aws_env = [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
        ("AWS_CONFIG_FILE", aws_config.display().to_string()),
    ];
    let config = lab.hosts[0].config();
    let config = config.to_str().unwrap();
    // master-0 sprays to `bucket` only, with our part size and `extra` keys of the target.
    let configure = |bucket: &str, extra: &str| {
        lab.write_config(
            0,
            &format!(
                "etcd_env = \"\"\nio_timeout = \"60s\"\n{}",
                s3_target(
                    &endpoint,
                    bucket,
                    &credentials,
                    &format!("part_size = \"{PART}\"\n{extra}")
                )
                .replace("part_size = \"5MiB\"\n", "")
            ),
        );
    };

    let (mut ours, mut theirs, mut noop) = (Vec::new(), Vec::new(), Vec::new());
    let (mut rss, mut cpu) = (0u64, Vec::new());
    let mut last_bucket = String::new();
    for round in 0..ROUNDS {
        // aws first in odd rounds, ours first in even ones.
        let bucket = new_bucket(&endpoint, false);
        last_bucket = bucket.clone();
        let aws = || {
            let (secs, _, _, _) = timed(
                "aws",
                &[
                    "s3",
                    "cp",
                    "--recursive",
                    "--only-show-errors",
                    "--endpoint-url",
                    &endpoint,
                    set_dir.to_str().unwrap(),
                    &format!("s3://{bucket}/awscli/{id}/"),
                ],
                &aws_env,
            );
            secs
        };
        let ebk = || {
            configure(&bucket, "");
            timed(util::BIN, &["--config", config, "spray"], &[])
        };
        let (a, (secs, text, kib, cpu_s)) = if round % 2 == 1 {
            let a = aws();
            (a, ebk())
        } else {
            let e = ebk();
            (aws(), e)
        };
        assert!(text.contains("(1 sent"), "{text}");
        theirs.push(a);
        ours.push(secs);
        rss = rss.max(kib);
        cpu.push(cpu_s);
        let (n, text, _, _) = timed(util::BIN, &["--config", config, "spray"], &[]);
        assert!(text.contains("(0 sent, 0 bytes"), "{text}");
        noop.push(n);
    }

    // Verification of the last round's copy (no bandwidth bound): by the checksum the server
    // stored where it keeps one for the whole object, else downloaded and hashed; against aws
    // downloading the same objects to /dev/null.
    let bucket = last_bucket;
    configure(&bucket, "verify_bandwidth = \"0B\"\n");
    let keys: Vec<String> = std::fs::read_dir(&set_dir)
        .unwrap()
        .map(|e| {
            format!(
                "s3://{bucket}/cluster/sets/{id}/{}",
                e.unwrap().file_name().to_string_lossy()
            )
        })
        .collect();
    let script = keys
        .iter()
        .map(|k| format!("aws s3 cp --only-show-errors --endpoint-url {endpoint} {k} - >/dev/null"))
        .collect::<Vec<_>>()
        .join(" && ");
    let kept = lab.hosts[0].store().join("object-checksums.json");
    let (mut by_checksum, mut verify, mut download, mut verify_rss) =
        (Vec::new(), Vec::new(), Vec::new(), 0u64);
    for round in 0..ROUNDS {
        // By the checksums the bucket stored when the spray put the objects: no download.
        let (secs, text, kib, _) = timed(
            util::BIN,
            &["--config", config, "verify", "--target", &bucket],
            &[],
        );
        assert!(text.contains(&format!("ok   {id}")), "{text}");
        by_checksum.push(secs);
        verify_rss = verify_rss.max(kib);
        // Without them (objects put by another version, or found replaced): downloaded.
        let ebk = || {
            let _ = std::fs::remove_file(&kept);
            timed(
                util::BIN,
                &["--config", config, "verify", "--target", &bucket],
                &[],
            )
        };
        let aws = || timed("sh", &["-c", &script], &aws_env).0;
        let ((secs, text, kib, _), a) = if round % 2 == 1 {
            let a = aws();
            (ebk(), a)
        } else {
            let e = ebk();
            (e, aws())
        };
        assert!(text.contains(&format!("ok   {id}")), "{text}");
        verify.push(secs);
        download.push(a);
        verify_rss = verify_rss.max(kib);
    }
    let (by_checksum, verify, download) = (median(by_checksum), median(verify), median(download));

    let (ours, theirs) = (median(ours), median(theirs));
    let rate = |secs: f64| mib_of(bytes) / secs;
    println!(
        "set: {:.0} MiB from {mib} MiB of etcd values; part size {PART}; S3 server and clients share one 2-core machine; medians of {ROUNDS}, alternated",
        mib_of(bytes)
    );
    println!(
        "aws s3 cp --recursive:   {theirs:6.2} s  {:6.0} MiB/s",
        rate(theirs)
    );
    println!(
        "etcd-backup spray (s3):  {ours:6.2} s  {:6.0} MiB/s  = {:.2}x aws (target >= 1.0x); CPU {:.2} s",
        rate(ours),
        theirs / ours,
        median(cpu)
    );
    println!(
        "no-op spray:             {:6.3} s  (target <= 0.5 s)",
        median(noop)
    );
    println!(
        "peak RSS of the spray:   {:.1} MiB (target <= 64 MiB)",
        rss as f64 / 1024.0
    );
    println!(
        "aws s3 cp of the set's objects to /dev/null: {download:6.2} s  {:6.0} MiB/s",
        rate(download)
    );
    println!(
        "verify --target (s3), by the stored checksums:  {by_checksum:6.2} s  (target <= 1 s, no download)"
    );
    println!(
        "verify --target (s3), downloaded:  {verify:6.2} s  {:6.0} MiB/s  = {:.2}x aws's download (target >= 0.9x); peak RSS {:.1} MiB (target <= 64 MiB)",
        rate(verify),
        download / verify,
        verify_rss as f64 / 1024.0
    );
}
