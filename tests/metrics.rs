//! `metrics`: read by real consumers — the Prometheus client library's parser, promtool's
//! linter, node_exporter's textfile collector, an HTTP scrape — after real backups, a spray
//! and a failed verification.

use crate::util::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses an exposition with prometheus_client's parser (PyPI), the one Python exporters and
/// tooling use; panics on anything it refuses. Also returns each family's type.
fn parse(text: &str) -> (Vec<Sample>, BTreeMap<String, String>) {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
samples, types = [], {}
for family in text_string_to_metric_families(sys.stdin.read()):
    types[family.name] = family.type
    for s in family.samples:
        samples.append([s.name, s.labels, s.value])
json.dump({"samples": samples, "types": types}, sys.stdout)
"#;
    let out = run_with_stdin(
        {
            let mut cmd = Command::new("python3");
            cmd.args(["-c", script]);
            cmd
        },
        text.as_bytes(),
    );
    assert!(
        out.status.success(),
        "prometheus_client refuses the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let samples = value["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let labels = s[1]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            (
                s[0].as_str().unwrap().to_string(),
                labels,
                s[2].as_f64().unwrap(),
            )
        })
        .collect();
    let types = value["types"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    (samples, types)
}

/// The one sample of `name` whose labels include `labels`.
#[track_caller]
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?} in {samples:?}");
    found[0].2
}

/// promtool's linter (Debian prometheus): names, units, suffixes, HELP.
#[track_caller]
fn lint(text: &str) {
    let out = run_with_stdin(
        {
            let mut cmd = Command::new("promtool");
            cmd.args(["check", "metrics"]);
            cmd
        },
        text.as_bytes(),
    );
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One byte in the middle of a set's resources archive flipped: names and sizes still match.
fn flip_a_byte_of_the_archive(node: &Node, id: &str) {
    flip_byte(&set_file(&node.set_dir(id), ".tar.gz"), None, 0x01);
}

fn created_seconds(node: &Node, id: &str) -> f64 {
    let set = node.sets().into_iter().find(|s| s["id"] == id).unwrap();
    let created = set["created"].as_str().unwrap();
    chrono::DateTime::parse_from_rfc3339(created)
        .unwrap()
        .timestamp_millis() as f64
        / 1000.0
}

#[test]
fn metrics_describe_the_store_the_targets_and_the_runs() {
    let node = Node::new("");
    let textfile = node.dir.path().join("textfile");
    std::fs::create_dir(&textfile).unwrap();
    let target = node.dir.path().join("nfs");
    std::fs::create_dir(&target).unwrap();
    node.write_config(&format!(
        "[status]\nmax_age = \"2h\"\n[metrics]\ntextfile_dir = \"{}\"\n\
         [spray]\netcd_env = \"\"\n[[spray.target]]\nkind = \"dir\"\npath = \"{}\"\nrequire_mount = false\n\
         [[spray.target]]\nkind = \"dir\"\npath = \"{}\"\nrequire_mount = true\n",
        textfile.display(),
        target.display(),
        node.dir.path().join("not-mounted").display()
    ));

    // No store yet: the metrics say who and when, and no set.
    let run = node.run(&["metrics"]);
    run.expect_code(0);
    lint(&run.stdout);
    let (samples, _) = parse(&run.stdout);
    assert_eq!(
        value(&samples, "etcd_backup_info", &[("node", "master-0")]),
        1.0
    );
    assert!(
        !samples
            .iter()
            .any(|s| s.0 == "etcd_backup_newest_set_timestamp_seconds")
    );
    assert!(!node.store().exists(), "metrics made a store");

    let first = node.backup();
    let second = node.backup();
    // One target is served, the other is not a mount point: spray exits 4.
    node.run(&["spray"]).expect_code(4);

    // The textfile, refreshed by the spray: whole, readable by a collector of another user.
    let prom = textfile.join("etcd-backup.prom");
    assert_eq!(mode(&prom), 0o644);
    let names: Vec<String> = std::fs::read_dir(&textfile)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["etcd-backup.prom"], "no temporary left behind");
    let text = std::fs::read_to_string(&prom).unwrap();
    lint(&text);
    let (samples, types) = parse(&text);

    let origin = [("origin", "master-0")];
    let verified = [("origin", "master-0"), ("verified", "true")];
    let failed = [("origin", "master-0"), ("verified", "false")];
    assert_eq!(value(&samples, "etcd_backup_store_sets", &verified), 2.0);
    assert_eq!(value(&samples, "etcd_backup_store_sets", &failed), 0.0);
    let sets = node.sets();
    let size = |id: &str| {
        sets.iter().find(|s| s["id"] == id).unwrap()["size"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(
        value(&samples, "etcd_backup_store_size_bytes", &origin),
        size(&first) + size(&second)
    );
    assert_eq!(
        value(
            &samples,
            "etcd_backup_newest_set_timestamp_seconds",
            &origin
        ),
        created_seconds(&node, &second)
    );
    assert_eq!(
        value(&samples, "etcd_backup_newest_set_size_bytes", &origin),
        size(&second)
    );
    let newest = sets.iter().find(|s| s["id"] == second.as_str()).unwrap();
    assert_eq!(
        value(&samples, "etcd_backup_newest_set_etcd_revision", &origin),
        newest["etcd"]["revision"].as_f64().unwrap()
    );
    assert_eq!(
        value(&samples, "etcd_backup_newest_set_failed", &origin),
        0.0
    );
    let age = value(&samples, "etcd_backup_newest_set_age_seconds", &origin);
    assert!((0.0..600.0).contains(&age), "{age}");
    assert_eq!(
        value(&samples, "etcd_backup_status_max_age_seconds", &[]),
        7200.0
    );

    // Targets, by their stable ids.
    let good = format!("dir:{}", target.display());
    let bad = format!("dir:{}", node.dir.path().join("not-mounted").display());
    assert_eq!(
        value(&samples, "etcd_backup_target_up", &[("target", &good)]),
        1.0
    );
    assert_eq!(
        value(&samples, "etcd_backup_target_up", &[("target", &bad)]),
        0.0
    );
    assert_eq!(
        value(&samples, "etcd_backup_target_sets", &[("target", &good)]),
        2.0
    );
    assert_eq!(
        value(
            &samples,
            "etcd_backup_target_last_sent_bytes",
            &[("target", &good)]
        ),
        size(&first) + size(&second)
    );
    assert!(
        !samples.iter().any(
            |s| s.0 == "etcd_backup_target_last_success_timestamp_seconds" && s.1["target"] == bad
        ),
        "a target that never succeeded has no last success"
    );

    // Runs: two backups succeeded, the spray partly failed (not a success).
    let backup = [("run", "backup")];
    let spray = [("run", "spray")];
    assert_eq!(
        value(
            &samples,
            "etcd_backup_runs_total",
            &[("run", "backup"), ("outcome", "success")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &samples,
            "etcd_backup_runs_total",
            &[("run", "spray"), ("outcome", "failure")]
        ),
        1.0
    );
    assert_eq!(
        value(&samples, "etcd_backup_run_last_success", &backup),
        1.0
    );
    assert_eq!(value(&samples, "etcd_backup_run_last_success", &spray), 0.0);
    let took = value(&samples, "etcd_backup_run_last_duration_seconds", &backup);
    assert!(took > 0.0 && took < 60.0, "{took}");
    assert_eq!(types["etcd_backup_runs"], "counter");
    assert_eq!(types["etcd_backup_newest_set_timestamp_seconds"], "gauge");

    // A flipped byte at rest: verify fails, and the metrics say so until it verifies again.
    flip_a_byte_of_the_archive(&node, &second);
    node.run(&["verify"]).expect_code(1);
    let (samples, _) = parse(&std::fs::read_to_string(&prom).unwrap());
    assert_eq!(value(&samples, "etcd_backup_store_sets", &failed), 1.0);
    assert_eq!(value(&samples, "etcd_backup_store_sets", &verified), 1.0);
    assert_eq!(
        value(&samples, "etcd_backup_newest_set_failed", &origin),
        1.0
    );
    // The newest verified set is the first one now.
    assert_eq!(
        value(
            &samples,
            "etcd_backup_newest_set_timestamp_seconds",
            &origin
        ),
        created_seconds(&node, &first)
    );
    assert_eq!(
        value(
            &samples,
            "etcd_backup_runs_total",
            &[("run", "verify"), ("outcome", "failure")]
        ),
        1.0
    );
}

/// A child process killed and reaped when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// node_exporter with only its textfile collector, on a loopback port.
struct NodeExporter {
    _child: Killed,
    port: u16,
}

fn node_exporter(textfile_dir: &Path) -> NodeExporter {
    let port = free_port();
    let child = Command::new("prometheus-node-exporter")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--collector.disable-defaults")
        .arg("--collector.textfile")
        .arg(format!(
            "--collector.textfile.directory={}",
            textfile_dir.display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus-node-exporter (Debian) is needed: run tests/lab/install-deps");
    NodeExporter {
        _child: Killed(child),
        port,
    }
}

/// GET `path` from 127.0.0.1:`port`, retried while the server starts: (status line, body).
fn http_get(port: u16, request: &str) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(mut stream) => {
                stream.write_all(request.as_bytes()).unwrap();
                let mut response = String::new();
                stream.read_to_string(&mut response).unwrap();
                let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
                let status = head.lines().next().unwrap_or_default().to_string();
                return (status, body.to_string());
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("cannot connect to 127.0.0.1:{port}: {e}"),
        }
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")
}

#[test]
fn node_exporter_s_textfile_collector_serves_the_textfile() {
    let node = Node::new("");
    let textfile = node.dir.path().join("textfile");
    std::fs::create_dir(&textfile).unwrap();
    let id = node.backup();
    // As the units run it: UMask=0077.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "umask 077 && exec \"$@\"", "sh", BIN, "--config"])
        .arg(node.config_path())
        .args(["metrics", "--textfile"])
        .arg(&textfile);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&textfile.join("etcd-backup.prom")), 0o644);
    let exporter = node_exporter(&textfile);
    let (status, body) = http_get(exporter.port, &get("/metrics"));
    assert!(status.contains("200"), "{status}");
    let (samples, _) = parse(&body);
    // The collector read it without error, and serves our samples as they are.
    assert_eq!(value(&samples, "node_textfile_scrape_error", &[]), 0.0);
    assert_eq!(
        value(
            &samples,
            "etcd_backup_newest_set_timestamp_seconds",
            &[("origin", "master-0")]
        ),
        created_seconds(&node, &id)
    );
    assert_eq!(
        value(
            &samples,
            "etcd_backup_store_sets",
            &[("origin", "master-0"), ("verified", "true")]
        ),
        1.0
    );
}

/// `metrics --listen` of `node` on a loopback port; killed when the test ends, passed or not.
fn listen(node: &Node) -> (Killed, u16) {
    let port = free_port();
    let server = Killed(
        node.cmd(&["metrics", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    (server, port)
}

#[test]
fn metrics_listen_serves_fresh_metrics_and_refuses_what_is_not_a_scrape() {
    let node = Node::new("");
    let (_server, port) = listen(&node);
    let (status, body) = http_get(port, &get("/metrics"));
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    lint(&body);
    let (samples, _) = parse(&body);
    assert!(
        !samples
            .iter()
            .any(|s| s.0 == "etcd_backup_newest_set_timestamp_seconds")
    );
    // Each scrape reads the store afresh.
    let id = node.backup();
    let (_, body) = http_get(port, &get("/metrics?x=1"));
    let (samples, _) = parse(&body);
    assert_eq!(
        value(
            &samples,
            "etcd_backup_newest_set_timestamp_seconds",
            &[("origin", "master-0")]
        ),
        created_seconds(&node, &id)
    );
    for (request, expected) in [
        (get("/other"), "404"),
        ("POST /metrics HTTP/1.1\r\n\r\n".to_string(), "405"),
        ("nonsense\r\n\r\n".to_string(), "400"),
        (format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(9000)), "400"),
    ] {
        let (status, _) = http_get(port, &request);
        assert!(status.contains(expected), "{request:.40}: {status}");
    }
    // A client that sends nothing does not hold the server: the next scrape is served.
    let _idle: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let (status, _) = http_get(port, &get("/metrics"));
    assert!(status.contains("200"), "{status}");
}

#[test]
fn clients_that_trickle_their_request_cannot_keep_a_scrape_out() {
    let node = Node::new("");
    let (_server, port) = listen(&node);
    http_get(port, &get("/"));
    // More slow clients than the server has slots, each sending a byte of its request line
    // every half second (each read is far from the 10 s I/O timeout), for up to 20 s.
    let slow: Vec<_> = (0..80)
        .map(|_| {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            std::thread::spawn(move || {
                let mut sent = 0;
                while sent < 40 && stream.write_all(b"G").is_ok() {
                    sent += 1;
                    std::thread::sleep(Duration::from_millis(500));
                }
                sent
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..3 {
        let started = Instant::now();
        let (status, _) = http_get(port, &get("/metrics"));
        assert!(status.contains("200"), "{status}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
    // Every slow client was cut: by the whole head's bound (5 s), or to make room.
    let sent: Vec<usize> = slow.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(sent.iter().all(|&n| n < 40), "{sent:?}");
}

/// A label set in promtool's series notation: `name{a="b",…}`.
fn series(name: &str, labels: &BTreeMap<String, String>) -> String {
    let labels: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("{name}{{{}}}", labels.join(","))
}

/// The chart's alerts, run by promtool (the Prometheus rule engine) on the series the tool
/// really writes: a node whose spray has a target behind and whose newest set failed
/// verification, scraped as the chart's ServiceMonitor labels them, over 3 hours after its
/// newest verified set was taken.
#[test]
fn the_chart_s_alerts_fire_on_the_metrics_the_tool_writes() {
    let node = Node::new("");
    let missing = node.dir.path().join("not-mounted");
    let nfs = node.dir.path().join("nfs");
    node.write_config(&format!(
        "[status]\nmax_age = \"2h\"\n[spray]\netcd_env = \"\"\n\
         [[spray.target]]\nkind = \"dir\"\npath = \"{}\"\nrequire_mount = true\n\
         [[spray.target]]\nkind = \"dir\"\npath = \"{}\"\nrequire_mount = false\n",
        missing.display(),
        nfs.display()
    ));
    // The node's etcd is the one its sets are taken from (its WAL names the cluster).
    std::fs::create_dir_all(node.root().join("var/lib")).unwrap();
    std::os::unix::fs::symlink(etcd().data_dir(), node.root().join("var/lib/etcd")).unwrap();
    let verified = node.backup();
    let newest = node.backup();
    node.run(&["spray"]).expect_code(4);
    // The working target's copy of the older set damaged at rest, found by its verification.
    flip_byte(
        &set_file(&nfs.join("sets").join(&verified), ".tar.gz"),
        None,
        0x01,
    );
    let nfs_target = format!("dir:{}", nfs.display());
    node.run(&["verify", "--target", &nfs_target])
        .expect_code(1);
    flip_a_byte_of_the_archive(&node, &newest);
    node.run(&["verify"]).expect_code(1);
    let run = node.run(&["metrics"]);
    run.expect_code(0);
    let (samples, _) = parse(&run.stdout);

    let values = crate::chart::chart().join("ci/monitoring-values.yaml");
    let (objects, _) = crate::chart::template(&["-f", values.to_str().unwrap()]).unwrap();
    let rule = objects
        .iter()
        .find(|o| o["kind"] == "PrometheusRule")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        serde_json::json!({ "groups": rule["spec"]["groups"] }).to_string(),
    )
    .unwrap();
    let check = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool (Debian prometheus) is needed: run tests/lab/install-deps");
    assert!(check.status.success(), "{check:?}");

    // Every etcd-backup metric an alert reads is one the tool writes.
    let written: std::collections::BTreeSet<&str> = samples.iter().map(|s| s.0.as_str()).collect();
    for r in rule["spec"]["groups"][0]["rules"].as_array().unwrap() {
        let expr = r["expr"].as_str().unwrap();
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("etcd_backup_") {
                assert!(
                    written.contains(word),
                    "{}: {word} is never written",
                    r["alert"]
                );
            }
        }
    }

    // The dashboard (the chart's Grafana JSON, also the console's): every query is PromQL that
    // promtool parses (as recording rules) and names only metrics the tool writes.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(crate::chart::chart().join("dashboards/etcd-backup.json"))
            .unwrap(),
    )
    .unwrap();
    let queries: Vec<String> = dashboard["rows"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row["panels"].as_array().unwrap().iter())
        .flat_map(|panel| panel["targets"].as_array().unwrap().iter())
        .map(|t| {
            t["expr"]
                .as_str()
                .unwrap()
                .replace("$job", "eb-etcd-backup-metrics")
        })
        .collect();
    assert!(queries.len() >= 10, "{queries:?}");
    let recorded: Vec<serde_json::Value> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| serde_json::json!({ "record": format!("dashboard:query_{i}"), "expr": q }))
        .collect();
    let dashboard_rules = dir.path().join("dashboard.yaml");
    std::fs::write(
        &dashboard_rules,
        serde_json::json!({ "groups": [{ "name": "dashboard", "rules": recorded }] }).to_string(),
    )
    .unwrap();
    let check = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&dashboard_rules)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    for query in &queries {
        for word in query.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("etcd_backup_") {
                assert!(
                    written.contains(word),
                    "the dashboard reads {word}, never written"
                );
            }
        }
    }
    // What the issue asks the dashboard to show.
    for needed in [
        "etcd_backup_newest_set_timestamp_seconds",
        "etcd_backup_store_sets",
        "etcd_backup_runs_total",
        "etcd_backup_target_last_success_timestamp_seconds",
        "etcd_backup_target_last_sent_bytes",
        "etcd_backup_run_last_duration_seconds",
    ] {
        assert!(queries.iter().any(|q| q.contains(needed)), "{needed}");
    }

    // The series as scraped: job and node from the ServiceMonitor; the newest verified set
    // taken at the test's time 0 (its timestamp is the one value moved onto that clock).
    let job = "eb-etcd-backup-metrics";
    let scraped = |labels: &BTreeMap<String, String>| {
        let mut labels = labels.clone();
        labels.insert("job".into(), job.into());
        labels.insert("node".into(), "master-0".into());
        labels
    };
    let mut input = vec![serde_json::json!({
        "series": series("up", &scraped(&BTreeMap::new())),
        "values": "1+0x200",
    })];
    for (name, labels, value) in &samples {
        let value = if name == "etcd_backup_newest_set_timestamp_seconds" {
            0.0
        } else {
            *value
        };
        // The node restored 30 minutes in: its newest set is then of an earlier cluster.
        let values = if name == "etcd_backup_newest_set_of_live_etcd_cluster" {
            assert_eq!(value, 1.0, "the sets are of this node's etcd");
            "1+0x30 0+0x170".to_string()
        } else {
            format!("{value}+0x200")
        };
        input.push(serde_json::json!({
            "series": series(name, &scraped(labels)),
            "values": values,
        }));
    }
    let bad_target = format!("dir:{}", missing.display());
    let labels = |extra: &[(&str, &str)]| {
        let mut labels: BTreeMap<String, String> = [
            ("job".to_string(), job.to_string()),
            ("node".to_string(), "master-0".to_string()),
        ]
        .into();
        for (k, v) in extra {
            labels.insert(k.to_string(), v.to_string());
        }
        serde_json::json!(labels)
    };
    let alert = |name: &str, at: &str, alerts: serde_json::Value| serde_json::json!({ "alertname": name, "eval_time": at, "exp_alerts": alerts });
    let tests = serde_json::json!({
        "rule_files": [rules],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": input,
            "alert_rule_test": [
                // Fresh for 2h, then older than max_age: fires 10 minutes later.
                alert("EtcdBackupNoRecentSet", "60m", serde_json::json!([])),
                alert("EtcdBackupNoRecentSet", "125m", serde_json::json!([])),
                alert("EtcdBackupNoRecentSet", "140m", serde_json::json!([{
                    "exp_labels": {"severity": "critical", "namespace": "etcd-backup"},
                    "exp_annotations": {
                        "runbook_url": format!("https://runbooks.example.com/etcd-backup/EtcdBackupNoRecentSet.md"),
                        "summary": "No master holds an etcd backup set newer than status.max_age.",
                        "description": "The newest verified etcd backup set on any master is 2h 20m 0s old, older than status.max_age allows. Check the backup jobs: oc get jobs -n etcd-backup.",
                    },
                }])),
                alert("EtcdBackupNoSet", "200m", serde_json::json!([])),
                alert("EtcdBackupNewestSetFailedVerification", "1m", serde_json::json!([{
                    "exp_labels": labels(&[("origin", "master-0"), ("severity", "critical"), ("namespace", "etcd-backup")]),
                    "exp_annotations": {
                        "runbook_url": format!("https://runbooks.example.com/etcd-backup/EtcdBackupNewestSetFailedVerification.md"),
                        "summary": "The newest etcd backup set of an origin failed verification.",
                        "description": "The newest set from master-0 in the store on master-0 is damaged or failed its last verification: etcd-backup list there names the problem.",
                    },
                }])),
                alert("EtcdBackupSetsFailedVerification", "15m", serde_json::json!([{
                    "exp_labels": labels(&[("origin", "master-0"), ("verified", "false"), ("severity", "warning"), ("namespace", "etcd-backup")]),
                    "exp_annotations": {
                        "runbook_url": format!("https://runbooks.example.com/etcd-backup/EtcdBackupSetsFailedVerification.md"),
                        "summary": "etcd backup sets failed verification.",
                        "description": "1 set(s) from master-0 in the store on master-0 are damaged or failed their last verification; they are kept, never sent, never counted by retention.",
                    },
                }])),
                // Behind for an hour before it is an alert.
                alert("EtcdBackupTargetBehind", "30m", serde_json::json!([])),
                alert("EtcdBackupTargetBehind", "70m", serde_json::json!([{
                    "exp_labels": labels(&[("target", &bad_target), ("severity", "warning"), ("namespace", "etcd-backup")]),
                    "exp_annotations": {
                        "runbook_url": format!("https://runbooks.example.com/etcd-backup/EtcdBackupTargetBehind.md"),
                        "summary": "An etcd backup spray target is behind.",
                        "description": format!("The spray from master-0 to {bad_target} has failed for 1h: etcd-backup status there says why."),
                    },
                }])),
                // The verify failed, the backups did not; the spray is the target's alert.
                alert("EtcdBackupRunFailing", "10m", serde_json::json!([{
                    "exp_labels": labels(&[("run", "verify"), ("severity", "warning"), ("namespace", "etcd-backup")]),
                    "exp_annotations": {
                        "runbook_url": format!("https://runbooks.example.com/etcd-backup/EtcdBackupRunFailing.md"),
                        "summary": "An etcd-backup run failed.",
                        "description": "The last verify run on master-0 failed: its pod logs (or journalctl -u etcd-backup) name the cause.",
                    },
                }])),
                // A damaged copy on a target, for 10 minutes.
                alert("EtcdBackupTargetCopyDamaged", "5m", serde_json::json!([])),
                alert("EtcdBackupTargetCopyDamaged", "15m", serde_json::json!([{
                    "exp_labels": labels(&[("target", &nfs_target), ("severity", "warning"), ("namespace", "etcd-backup")]),
                    "exp_annotations": {
                        "runbook_url": format!("https://runbooks.example.com/etcd-backup/EtcdBackupTargetCopyDamaged.md"),
                        "summary": "A copy of an etcd backup set on a target is damaged.",
                        "description": format!("The last verification of the copies on {nfs_target} from master-0 found 1 damaged: etcd-backup status there names them; the next spray sends them again."),
                    },
                }])),
                // Of an earlier etcd cluster for an hour before it is an alert.
                alert("EtcdBackupNewestSetOfEarlierCluster", "60m", serde_json::json!([])),
                alert("EtcdBackupNewestSetOfEarlierCluster", "95m", serde_json::json!([{
                    "exp_labels": labels(&[("severity", "warning"), ("namespace", "etcd-backup")]),
                    "exp_annotations": {
                        "runbook_url": format!("https://runbooks.example.com/etcd-backup/EtcdBackupNewestSetOfEarlierCluster.md"),
                        "summary": "The newest etcd backup set on a master is of an earlier etcd cluster.",
                        "description": "The newest verified set in the store on master-0 was taken from another etcd cluster than the one it runs now (restored since?): its sets are an earlier history and none backs up the cluster as it is. Take a backup: etcd-backup status there says which cluster is live.",
                    },
                }])),
                alert("EtcdBackupExporterDown", "60m", serde_json::json!([])),
            ],
        }],
    });
    let test_file = dir.path().join("tests.yaml");
    std::fs::write(&test_file, tests.to_string()).unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&test_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
