//! Benchmark (not a test): uploading a ~1 GiB set of real etcd data to a real S3 server
//! (SeaweedFS `weed mini` on loopback) against `aws s3 cp --recursive` (PyPI awscli) of the same
//! set directory, each at its defaults (8 MiB parts; aws with its 10 concurrent requests), all
//! measured in this run, alternated, medians of 3:
//! first upload vs aws, a no-op run, peak RSS; then sealed sets (age to two recipients, signed)
//! against the same set in the clear: the spray to a fresh bucket and the fetch back on
//! another master, alternated.
//!
//! `cargo bench --bench s3` (as root; tests/lab/install-deps first). BENCH_SIZE_MIB sets the
//! etcd data size (default 1024); BENCH_UPLOAD_ONLY=1 measures the uploads alone and empties
//! each round's bucket after it (large sizes: the S3 server shares the disk).

#[path = "../tests/util/mod.rs"]
mod util;

use std::process::Command;
use std::time::Instant;
use util::lab::Lab;
use util::s3::{ACCESS_KEY, S3Server, SECRET_KEY, credentials_file, new_bucket, s3_target};

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
    // awscli at its defaults (8 MiB parts, 10 concurrent requests).
    let aws_config = lab.dir.path().join("aws-config");
    std::fs::write(&aws_config, "[default]\nregion = us-east-1\n").unwrap();
    let aws_env = [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
        ("AWS_CONFIG_FILE", aws_config.display().to_string()),
    ];
    let config = lab.hosts[0].config();
    let config = config.to_str().unwrap();
    // Master `n` sprays to `bucket` only, with our default part size and `extra` keys of the
    // target, then the `after` tables.
    let configure_host = |n: usize, bucket: &str, extra: &str, after: &str| {
        lab.write_config(
            n,
            &format!(
                "etcd_env = \"\"\nio_timeout = \"60s\"\n{}{after}",
                s3_target(&endpoint, bucket, &credentials, extra)
                    .replace("part_size = \"5MiB\"\n", "")
            ),
        );
    };
    let configure = |bucket: &str, extra: &str| configure_host(0, bucket, extra, "");

    let (mut ours, mut theirs, mut noop) = (Vec::new(), Vec::new(), Vec::new());
    let (mut rss, mut cpu) = (0u64, Vec::new());
    let mut last_bucket = String::new();
    let upload_only = std::env::var("BENCH_UPLOAD_ONLY").is_ok_and(|v| v == "1");
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
        if upload_only {
            util::s3::tool_json(&endpoint, &["rmbucket", &bucket]);
        }
    }
    let (ours, theirs) = (median(ours), median(theirs));
    let rate = |secs: f64| mib_of(bytes) / secs;
    println!(
        "set: {:.0} MiB from {mib} MiB of etcd values; both at their default part size; S3 server and clients share one 2-core machine; medians of {ROUNDS}, alternated",
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
    if upload_only {
        return;
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

    // Sealed against in the clear: each round sprays the set to two fresh buckets, one sealed
    // (snapshot and archive to their own recipients, records signed) and one not, in
    // alternating order; then master-1 fetches it back from each (the sealed with both
    // identities), its copy removed in between.
    let keys = lab.dir.path().join("seal-keys");
    std::fs::create_dir(&keys).unwrap();
    let keygen = |name: &str, signing: bool| {
        let out = keys.join(name);
        let mut args = vec!["keygen", "--out", out.to_str().unwrap()];
        if signing {
            args.push("--signing");
        }
        let (_, text, _, _) = timed(util::BIN, &args, &[]);
        text.lines().next().unwrap().trim().to_string()
    };
    let seal = format!(
        "\n[seal]\nrecipients = [\"{}\"]\nresources_recipients = [\"{}\"]\nsigning_key = \"{}\"\nsigners = [\"{}\"]\n",
        keygen("snapshot.txt", false),
        keygen("resources.txt", false),
        keys.join("signing_key").display(),
        keygen("signing_key", true),
    );
    let identities = [keys.join("snapshot.txt"), keys.join("resources.txt")];
    let fetcher = lab.hosts[1].config();
    let fetcher = fetcher.to_str().unwrap();
    let fetched = lab.hosts[1].store().join("sets").join(&id);
    let (mut clear, mut sealed, mut sealed_rss) = (Vec::new(), Vec::new(), 0u64);
    let (mut fetch_clear, mut fetch_sealed, mut fetch_rss) = (Vec::new(), Vec::new(), 0u64);
    for round in 0..ROUNDS {
        let (plain_bucket, sealed_bucket) =
            (new_bucket(&endpoint, false), new_bucket(&endpoint, false));
        let spray = |bucket: &str, after: &str| {
            configure_host(0, bucket, "", after);
            let run = timed(util::BIN, &["--config", config, "spray"], &[]);
            assert!(run.1.contains("(1 sent"), "{}", run.1);
            run
        };
        let fetch = |bucket: &str, sealed: bool| {
            configure_host(1, bucket, "", "");
            let _ = std::fs::remove_dir_all(&fetched);
            let mut args = vec!["--config", fetcher, "fetch", "--from", bucket];
            if sealed {
                for identity in &identities {
                    args.extend(["--identity", identity.to_str().unwrap()]);
                }
            }
            args.push(&id);
            timed(util::BIN, &args, &[])
        };
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with_seal in order {
            if with_seal {
                let (secs, _, kib, _) = spray(&sealed_bucket, &seal);
                sealed.push(secs);
                sealed_rss = sealed_rss.max(kib);
            } else {
                clear.push(spray(&plain_bucket, "").0);
            }
        }
        for with_seal in order {
            if with_seal {
                let (secs, _, kib, _) = fetch(&sealed_bucket, true);
                fetch_sealed.push(secs);
                fetch_rss = fetch_rss.max(kib);
            } else {
                fetch_clear.push(fetch(&plain_bucket, false).0);
            }
        }
    }
    let (clear, sealed) = (median(clear), median(sealed));
    let (fetch_clear, fetch_sealed) = (median(fetch_clear), median(fetch_sealed));

    println!(
        "aws s3 cp of the set's objects to /dev/null: {download:6.2} s  {:6.0} MiB/s",
        rate(download)
    );
    println!(
        "verify --target (s3), by the stored checksums:  {by_checksum:6.2} s  (target <= 1 s, no download)"
    );
    println!(
        "spray (s3) sealed: {sealed:6.2} s, in the clear {clear:6.2} s  = {:.2}x (target >= 0.85x); peak RSS {:.1} MiB (target <= 64 MiB)",
        clear / sealed,
        sealed_rss as f64 / 1024.0
    );
    println!(
        "fetch (s3) sealed: {fetch_sealed:6.2} s, in the clear {fetch_clear:6.2} s  = {:.2}x (target >= 0.85x); peak RSS {:.1} MiB (target <= 64 MiB)",
        fetch_clear / fetch_sealed,
        fetch_rss as f64 / 1024.0
    );
    println!(
        "verify --target (s3), downloaded:  {verify:6.2} s  {:6.0} MiB/s  = {:.2}x aws's download (target >= 0.9x); peak RSS {:.1} MiB (target <= 64 MiB)",
        rate(verify),
        download / verify,
        verify_rss as f64 / 1024.0
    );
}
