//! The Pod Mode Helm chart (`charts/etcd-backup`) with real helm: lint, template with the
//! default values and every `ci/` values file, strict schema validation of every object for
//! Kubernetes 1.27 (OpenShift 4.14), and checks of what matters in what it renders.

use crate::util::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

pub(crate) fn chart() -> PathBuf {
    repo().join("charts/etcd-backup")
}

/// helm, as `tests/lab/install-deps` installs it.
fn helm() -> Command {
    let cache = std::env::var("ETCD_BACKUP_CACHE")
        .unwrap_or_else(|_| "/var/cache/etcd-backup-lab".to_string());
    let helm = PathBuf::from(cache).join("helm-kubectl-v35-2.2.2/helm");
    assert!(
        helm.is_file(),
        "{} is missing: run tests/lab/install-deps",
        helm.display()
    );
    Command::new(helm)
}

/// `helm template` with `args`; the objects (PyYAML's reading) and the YAML text.
pub(crate) fn template(args: &[&str]) -> Result<(Vec<Value>, String), String> {
    let out = helm()
        .args(["template", "eb", "--namespace", "etcd-backup"])
        .arg(chart())
        .args(args)
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let mut parse = Command::new("python3");
    parse.args([
        "-c",
        "import sys, json, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
    ]);
    let parsed = run_with_stdin(parse, &out.stdout);
    assert!(parsed.status.success(), "not YAML");
    Ok((
        serde_json::from_slice(&parsed.stdout).unwrap(),
        String::from_utf8(out.stdout).unwrap(),
    ))
}

fn values_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 2, "ci/ holds a values file per mode");
    files
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// Every pod template with its owner's name and component label.
fn pods(objects: &[Value]) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    for o in objects {
        let name = format!(
            "{} ({})",
            o["metadata"]["name"].as_str().unwrap(),
            o["metadata"]["labels"]["app.kubernetes.io/component"]
                .as_str()
                .unwrap_or("")
        );
        match o["kind"].as_str().unwrap() {
            "CronJob" => out.push((name, &o["spec"]["jobTemplate"]["spec"]["template"]["spec"])),
            "DaemonSet" => out.push((name, &o["spec"]["template"]["spec"])),
            _ => {}
        }
    }
    out
}

fn containers(pod: &Value) -> Vec<&Value> {
    let mut all: Vec<&Value> = pod["containers"].as_array().unwrap().iter().collect();
    if let Some(init) = pod["initContainers"].as_array() {
        all.extend(init);
    }
    all
}

fn host_paths(pod: &Value) -> Vec<String> {
    pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str().map(str::to_string))
        .collect()
}

/// The rendered ConfigMap's config.toml as `etcd-backup check-config` on master-1 reads it
/// (it must accept it): the effective config.
fn effective_config(objects: &[Value]) -> String {
    let config = of_kind(objects, "ConfigMap")[0]["data"]["config.toml"]
        .as_str()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .env("NODE_NAME", "master-1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn helm_lint_is_clean_for_the_defaults_and_every_ci_values_file() {
    let mut runs = vec![vec![]];
    for file in values_files() {
        runs.push(vec!["-f".to_string(), file.display().to_string()]);
    }
    for args in runs {
        let out = helm()
            .arg("lint")
            .arg(chart())
            .args(&args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "helm lint {args:?}: {text}");
        assert!(text.contains("0 chart(s) failed"), "{text}");
        assert!(
            !text.contains("[WARNING]") && !text.contains("[ERROR]"),
            "{text}"
        );
    }
}

#[test]
fn every_rendered_object_passes_strict_schema_validation() {
    let mut runs = vec![vec![]];
    for file in values_files() {
        runs.push(vec!["-f".to_string(), file.display().to_string()]);
    }
    let dir = tempfile::tempdir().unwrap();
    for (i, args) in runs.iter().enumerate() {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (objects, _) = template(&args).unwrap();
        assert!(objects.len() >= 5, "{args:?}: {objects:?}");
        // The Prometheus Operator's kinds have no schema in Kubernetes itself: they are checked
        // by promtool (tests/metrics.rs) and below; every other object is validated.
        let core: Vec<&Value> = objects
            .iter()
            .filter(|o| {
                !o["apiVersion"]
                    .as_str()
                    .unwrap()
                    .starts_with("monitoring.coreos.com/")
            })
            .collect();
        let file = dir.path().join(format!("{i}.yaml"));
        let docs: Vec<String> = core.iter().map(|o| o.to_string()).collect();
        // JSON is YAML: one document per object.
        std::fs::write(&file, docs.join("\n---\n")).unwrap();
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--kubernetes-version", "1.27.0", "--quiet"])
            .arg(&file)
            .output()
            .expect("kubernetes-validate (PyPI) is needed: run tests/lab/install-deps");
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn privileged_only_where_needed_on_the_masters_and_one_job_at_a_time() {
    for args in [
        vec![],
        vec!["-f", "ci/sync-values.yaml"],
        vec!["-f", "ci/pv-values.yaml"],
        vec!["-f", "ci/monitoring-values.yaml"],
    ] {
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                if a.starts_with("ci/") {
                    chart().join(a).display().to_string()
                } else {
                    a.to_string()
                }
            })
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (objects, _) = template(&args).unwrap();
        for cron in of_kind(&objects, "CronJob") {
            let name = cron["metadata"]["name"].as_str().unwrap();
            assert_eq!(cron["apiVersion"], "batch/v1", "{name}");
            assert_eq!(cron["spec"]["concurrencyPolicy"], "Forbid", "{name}");
            assert!(cron["spec"]["startingDeadlineSeconds"].as_u64().unwrap() > 0);
            assert!(cron["spec"]["successfulJobsHistoryLimit"].is_u64());
            assert!(cron["spec"]["failedJobsHistoryLimit"].is_u64());
            let job = &cron["spec"]["jobTemplate"]["spec"];
            assert_eq!(
                job["backoffLimit"], 0,
                "{name}: retried by the next schedule"
            );
            assert!(job["activeDeadlineSeconds"].as_u64().unwrap() > 0, "{name}");
            assert_eq!(job["template"]["spec"]["restartPolicy"], "Never");
        }
        for (name, pod) in pods(&objects) {
            assert_eq!(
                pod["nodeSelector"]["node-role.kubernetes.io/master"], "",
                "{name}"
            );
            let tolerations = pod["tolerations"].as_array().unwrap();
            for key in [
                "node-role.kubernetes.io/master",
                "node-role.kubernetes.io/control-plane",
            ] {
                assert!(
                    tolerations
                        .iter()
                        .any(|t| t["key"] == key && t["effect"] == "NoSchedule"),
                    "{name} tolerates {key}"
                );
            }
            assert!(pod["serviceAccountName"].is_string(), "{name}");
            let is_backup = name.ends_with("(backup)");
            for c in containers(pod) {
                let privileged = c["securityContext"]["privileged"] == true;
                assert_eq!(
                    privileged,
                    is_backup && c["name"] == "backup",
                    "{name}/{}",
                    c["name"]
                );
                if !privileged {
                    assert_eq!(
                        c["securityContext"]["capabilities"]["drop"],
                        serde_json::json!(["ALL"])
                    );
                    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
                    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
                }
                let env = c["env"].as_array().unwrap();
                assert!(
                    env.iter().any(|e| e["name"] == "NODE_NAME"
                        && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"),
                    "{name}/{}: the node name from the downward API",
                    c["name"]
                );
            }
            // The host's / only where cluster-backup.sh runs; the store everywhere, same path.
            let paths = host_paths(pod);
            assert_eq!(
                paths.contains(&"/".to_string()),
                is_backup,
                "{name}: {paths:?}"
            );
            assert!(
                paths.contains(&"/var/lib/etcd-backup".to_string()),
                "{name}: {paths:?}"
            );
        }
        let sa = of_kind(&objects, "ServiceAccount");
        assert_eq!(
            sa[0]["automountServiceAccountToken"], false,
            "no API access needed"
        );
        let binding = of_kind(&objects, "RoleBinding");
        assert_eq!(
            binding[0]["roleRef"]["name"],
            "system:openshift:scc:privileged"
        );
    }
}

#[test]
fn sync_mode_runs_receivers_pinned_snapshot_nodes_and_a_config_that_loads() {
    let values = chart().join("ci/sync-values.yaml");
    let (objects, _) = template(&["-f", values.to_str().unwrap()]).unwrap();
    // One backup and one spray CronJob per snapshot node, pinned to it.
    for (i, node) in ["master-0", "master-1", "master-2"].iter().enumerate() {
        for job in ["backup", "spray"] {
            let cron = objects
                .iter()
                .find(|o| o["metadata"]["name"] == format!("eb-etcd-backup-{job}-{i}"))
                .unwrap_or_else(|| panic!("no {job} CronJob for {node}"));
            let pod = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"];
            assert_eq!(pod["nodeSelector"]["kubernetes.io/hostname"], *node);
            assert_eq!(
                pod["containers"][0]["image"],
                "image-registry.example.com/ops/etcd-backup@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
            );
        }
    }
    let receivers = of_kind(&objects, "DaemonSet");
    assert_eq!(receivers.len(), 1);
    let pod = &receivers[0]["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(
        pod["containers"][0]["command"].as_array().unwrap()[3..],
        [
            serde_json::json!("receive"),
            serde_json::json!("--listen"),
            serde_json::json!("0.0.0.0:9443")
        ]
    );
    assert_eq!(pod["initContainers"][0]["command"][3], "tls-issue");
    assert!(of_kind(&objects, "PersistentVolume").is_empty());
    assert_eq!(of_kind(&objects, "Secret").len(), 1, "the CA");

    // The rendered config.toml is one etcd-backup itself accepts.
    let effective = effective_config(&objects);
    for line in [
        "name = \"master-1\"",
        "chroot = \"/host\"",
        "snapshot_nodes = [\"master-0\", \"master-1\", \"master-2\"]",
        "takeover_after = \"1h30m\"",
        "transport = \"tls\"",
        "etcd_env = \"/host/etc/kubernetes/static-pod-resources/etcd-certs/configmaps/etcd-scripts/etcd.env\"",
    ] {
        assert!(effective.contains(line), "{line} in:\n{effective}");
    }
}

/// The masters' certificates issued at install: each receiver and spray pod is pinned to its
/// master and mounts that master's certificate only; no pod mounts the CA key (with which one
/// compromised master could mint any node's certificate).
#[test]
fn certificates_issued_at_install_keep_the_ca_key_out_of_every_pod() {
    let values = chart().join("ci/sync-tls-nodes-values.yaml");
    let (objects, _) = template(&["-f", values.to_str().unwrap()]).unwrap();
    let masters = ["master-0", "master-1", "master-2"];
    for (name, pod) in pods(&objects) {
        let secrets: Vec<&str> = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["secret"]["secretName"].as_str())
            .collect();
        assert!(
            !secrets.contains(&"eb-etcd-backup-ca"),
            "{name} mounts the CA"
        );
        for c in containers(pod) {
            assert_ne!(c["command"][3], "tls-issue", "{name}");
        }
        if name.contains("(receiver)") || name.contains("(spray)") {
            let node = pod["nodeSelector"]["kubernetes.io/hostname"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} is not pinned"));
            assert_eq!(secrets, [format!("eb-etcd-backup-tls-{node}")], "{name}");
        }
    }
    let receivers = of_kind(&objects, "DaemonSet");
    assert_eq!(receivers.len(), 3, "one receiver per master");
    let sprays: Vec<&Value> = of_kind(&objects, "CronJob")
        .into_iter()
        .filter(|c| c["metadata"]["labels"]["app.kubernetes.io/component"] == "spray")
        .collect();
    assert_eq!(
        sprays.len(),
        3,
        "a spray on each master, with its own certificate"
    );
    // Each master's certificate: issued by the CA, named for that master, server and client.
    let secret = |name: &str| {
        of_kind(&objects, "Secret")
            .into_iter()
            .find(|s| s["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no Secret {name}"))
            .clone()
    };
    let decode = |value: &Value| {
        let mut cmd = Command::new("base64");
        cmd.arg("-d");
        run_with_stdin(cmd, value.as_str().unwrap().as_bytes()).stdout
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, decode(&secret("eb-etcd-backup-ca")["data"]["ca.crt"])).unwrap();
    for master in masters {
        let data = secret(&format!("eb-etcd-backup-tls-{master}"))["data"].clone();
        let cert = dir.path().join(format!("{master}.crt"));
        std::fs::write(&cert, decode(&data["tls.crt"])).unwrap();
        assert_eq!(decode(&data["ca.crt"]), std::fs::read(&ca).unwrap());
        for purpose in ["sslserver", "sslclient"] {
            let verify = Command::new("openssl")
                .args(["verify", "-purpose", purpose, "-CAfile"])
                .arg(&ca)
                .arg(&cert)
                .output()
                .unwrap();
            assert!(verify.status.success(), "{master} {purpose}: {verify:?}");
        }
        let san = Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(&cert)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&san.stdout).contains(&format!("DNS:{master}")),
            "{san:?}"
        );
    }
}

#[test]
fn pv_mode_mounts_a_retained_nfs_volume_as_a_dir_target() {
    let values = chart().join("ci/pv-values.yaml");
    let (objects, _) = template(&["-f", values.to_str().unwrap()]).unwrap();
    assert!(
        of_kind(&objects, "DaemonSet").is_empty(),
        "no receivers in pv mode"
    );
    assert!(of_kind(&objects, "Secret").is_empty(), "no CA in pv mode");
    let pv = of_kind(&objects, "PersistentVolume");
    assert_eq!(pv[0]["spec"]["nfs"]["server"], "nfs.example.com");
    assert_eq!(pv[0]["spec"]["nfs"]["path"], "/exports/etcd-backup");
    assert_eq!(pv[0]["spec"]["persistentVolumeReclaimPolicy"], "Retain");
    let claim = of_kind(&objects, "PersistentVolumeClaim");
    assert_eq!(claim[0]["spec"]["volumeName"], pv[0]["metadata"]["name"]);
    let spray = objects
        .iter()
        .find(|o| o["metadata"]["name"] == "eb-etcd-backup-spray")
        .unwrap();
    let pod = &spray["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert!(
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["persistentVolumeClaim"]["claimName"] == claim[0]["metadata"]["name"])
    );
    let config = of_kind(&objects, "ConfigMap")[0]["data"]["config.toml"]
        .as_str()
        .unwrap();
    assert!(
        config.contains("kind = \"dir\"\npath = \"/mnt/etcd-backup-pv\"\nrequire_mount = true"),
        "{config}"
    );
    assert!(config.contains("keep_last = 5"), "{config}");
    assert!(
        config.contains("etcd_env = \"\""),
        "no peers in pv mode: {config}"
    );
}

#[test]
fn bad_values_are_refused_with_the_reason() {
    for (set, why) in [
        ("mode=mirror", "mode must be \"sync\" or \"pv\""),
        (
            "image.digest=sha256:abc",
            "image.digest must be sha256:<64 hex>",
        ),
        ("mode=pv", "pv mode needs pv.nfs.server and pv.nfs.path"),
    ] {
        let error = template(&["--set", set]).unwrap_err();
        assert!(error.contains(why), "{set}: {error}");
    }
}

#[test]
fn monitoring_adds_a_read_only_exporter_its_service_monitor_and_alerts_only_when_asked() {
    let (objects, _) = template(&[]).unwrap();
    for kind in ["ServiceMonitor", "PrometheusRule", "Service"] {
        assert!(of_kind(&objects, kind).is_empty(), "no {kind} by default");
    }
    let values = chart().join("ci/monitoring-values.yaml");
    let (objects, _) = template(&["-f", values.to_str().unwrap()]).unwrap();
    let exporter = of_kind(&objects, "DaemonSet")
        .into_iter()
        .find(|d| d["metadata"]["name"] == "eb-etcd-backup-exporter")
        .expect("the exporter DaemonSet");
    let pod = &exporter["spec"]["template"]["spec"];
    assert!(pod["hostNetwork"].is_null(), "the pod network");
    let container = &pod["containers"][0];
    let command: Vec<&str> = container["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(
        &command[3..],
        ["metrics", "--listen", "0.0.0.0:9477"],
        "{command:?}"
    );
    let store = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "store")
        .unwrap();
    assert_eq!(store["mountPath"], "/var/lib/etcd-backup");
    assert_eq!(store["readOnly"], true, "the exporter only reads the store");
    assert_eq!(container["securityContext"]["privileged"], false);
    let env = container["env"].as_array().unwrap();
    assert!(
        env.iter()
            .any(|e| e["name"] == "ETCD_BACKUP_LOG_FORMAT" && e["value"] == "json")
    );

    let service = of_kind(&objects, "Service")[0];
    assert_eq!(service["metadata"]["name"], "eb-etcd-backup-metrics");
    assert_eq!(service["spec"]["clusterIP"], "None");
    assert_eq!(
        service["spec"]["selector"]["app.kubernetes.io/component"],
        "exporter"
    );
    let monitor = of_kind(&objects, "ServiceMonitor")[0];
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        service["metadata"]["labels"]
            .as_object()
            .map(|labels| {
                let keep = [
                    "app.kubernetes.io/name",
                    "app.kubernetes.io/instance",
                    "app.kubernetes.io/component",
                ];
                Value::Object(
                    labels
                        .iter()
                        .filter(|(k, _)| keep.contains(&k.as_str()))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                )
            })
            .unwrap(),
        "the ServiceMonitor selects the Service"
    );
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], service["spec"]["ports"][0]["name"]);
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(
        endpoint["relabelings"][0]["sourceLabels"][0],
        "__meta_kubernetes_pod_node_name"
    );
    let rule = of_kind(&objects, "PrometheusRule")[0];
    let rules = rule["spec"]["groups"][0]["rules"].as_array().unwrap();
    assert!(rules.len() >= 5, "{rules:?}");
    for r in rules {
        let expr = r["expr"].as_str().unwrap();
        assert!(
            expr.contains("job=\"eb-etcd-backup-metrics\""),
            "{}: only the exporter's series: {expr}",
            r["alert"]
        );
        // OpenShift's alerting conventions: a severity, the namespace, a summary, a
        // description, and a runbook for each alert, which docs/runbooks has.
        let alert = r["alert"].as_str().unwrap();
        assert!(
            ["critical", "warning", "info"].contains(&r["labels"]["severity"].as_str().unwrap()),
            "{alert}"
        );
        assert_eq!(r["labels"]["namespace"], "etcd-backup", "{alert}");
        for key in ["summary", "description"] {
            assert!(
                r["annotations"][key].as_str().is_some_and(|t| t.len() > 20),
                "{alert}: {key}"
            );
        }
        assert_eq!(
            r["annotations"]["runbook_url"],
            format!("https://runbooks.example.com/etcd-backup/{alert}.md"),
        );
        let runbook = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("docs/runbooks")
            .join(format!("{alert}.md"));
        let text = std::fs::read_to_string(&runbook)
            .unwrap_or_else(|e| panic!("{alert}: {}: {e}", runbook.display()));
        for section in [
            "# ",
            "## Meaning",
            "## Impact",
            "## Diagnosis",
            "## Mitigation",
        ] {
            assert!(
                text.contains(section),
                "{}: no '{section}'",
                runbook.display()
            );
        }
    }
    // And every runbook is an alert's.
    let alerts: Vec<&str> = rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    for entry in
        std::fs::read_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/runbooks"))
            .unwrap()
    {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let alert = name.strip_suffix(".md").unwrap_or(&name);
        assert!(
            alerts.contains(&alert),
            "docs/runbooks/{name} is no alert's runbook"
        );
    }

    // The console's dashboard: in openshift-config-managed with the console's label, the
    // chart's Grafana JSON as it is.
    let dashboard = of_kind(&objects, "ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["name"] == "eb-etcd-backup-dashboard")
        .expect("the dashboard ConfigMap");
    assert_eq!(
        dashboard["metadata"]["namespace"],
        "openshift-config-managed"
    );
    assert_eq!(
        dashboard["metadata"]["labels"]["console.openshift.io/dashboard"],
        "true"
    );
    let shipped: Value = serde_json::from_str(
        &std::fs::read_to_string(chart().join("dashboards/etcd-backup.json")).unwrap(),
    )
    .unwrap();
    let rendered: Value =
        serde_json::from_str(dashboard["data"]["etcd-backup.json"].as_str().unwrap()).unwrap();
    assert_eq!(rendered, shipped);
    let (defaults, _) = template(&[]).unwrap();
    assert!(
        !of_kind(&defaults, "ConfigMap")
            .iter()
            .any(|c| c["metadata"]["name"] == "eb-etcd-backup-dashboard"),
        "no dashboard unless asked"
    );

    // Alerts without the exporter are refused, with the reason.
    let err = template(&["--set", "monitoring.prometheusRule.enabled=true"]).unwrap_err();
    assert!(err.contains("needs monitoring.enabled"), "{err}");
    // Alerts without a place for their runbooks too.
    let err = template(&[
        "--set",
        "monitoring.enabled=true",
        "--set",
        "monitoring.prometheusRule.enabled=true",
    ])
    .unwrap_err();
    assert!(
        err.contains("monitoring.prometheusRule.runbookBaseURL"),
        "{err}"
    );
}

#[test]
fn s3_targets_come_from_values_with_their_keys_from_a_secret_in_the_spray_pods_only() {
    let values = chart().join("ci/s3-values.yaml");
    let (objects, _) = template(&["-f", values.to_str().unwrap()]).unwrap();
    let pod_of = |name: &str| {
        let cron = objects
            .iter()
            .find(|o| o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {name}"));
        cron["spec"]["jobTemplate"]["spec"]["template"]["spec"].clone()
    };
    let spray = pod_of("eb-etcd-backup-spray");
    let volume = |pod: &Value, name: &str| {
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .cloned()
    };
    let secret = volume(&spray, "s3-credentials").expect("the credentials volume");
    assert_eq!(secret["secret"]["secretName"], "etcd-backup-s3");
    assert_eq!(secret["secret"]["defaultMode"], 0o400);
    assert_eq!(secret["secret"]["items"][0]["key"], "credentials");
    assert_eq!(
        volume(&spray, "s3-ca").unwrap()["configMap"]["name"],
        "etcd-backup-s3-ca"
    );
    let mounts = &spray["containers"][0]["volumeMounts"];
    assert!(
        mounts
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "s3-credentials"
                && m["mountPath"] == "/run/etcd-backup/s3"
                && m["readOnly"] == true),
        "{mounts}"
    );
    // The privileged backup pod and the receivers never see the bucket keys.
    let backup = pod_of("eb-etcd-backup-backup");
    assert!(volume(&backup, "s3-credentials").is_none());
    for daemonset in of_kind(&objects, "DaemonSet") {
        assert!(volume(&daemonset["spec"]["template"]["spec"], "s3-credentials").is_none());
    }

    // The config: both buckets, as etcd-backup itself reads them.
    let effective = effective_config(&objects);
    for line in [
        "bucket = \"etcd-snapshots\"",
        "prefix = \"cluster-a\"",
        "files = \"snapshot\"",
        "sse = \"AES256\"",
        "object_lock_days = 7",
        "bucket = \"etcd-resources\"",
        "profile = \"offsite\"",
        "path_style = false",
        "files = \"resources\"",
        "part_size = \"32MiB\"",
        "credentials = \"/run/etcd-backup/s3/credentials\"",
        "ca_file = \"/run/etcd-backup/s3-ca/ca.crt\"",
        "transport = \"tls\"",
    ] {
        assert!(effective.contains(line), "{line} in:\n{effective}");
    }

    // Targets without their Secret, or without a bucket: refused, saying what is missing.
    for (set, why) in [
        (
            vec![
                "s3.targets[0].endpoint=https://s3.example.com",
                "s3.targets[0].bucket=b",
            ],
            "s3.targets need s3.credentialsSecret",
        ),
        (
            vec![
                "s3.credentialsSecret=k",
                "s3.targets[0].endpoint=https://s3.example.com",
            ],
            "s3.targets[0] needs endpoint and bucket",
        ),
    ] {
        let mut args = Vec::new();
        for s in &set {
            args.extend(["--set", s]);
        }
        let error = template(&args).unwrap_err();
        assert!(error.contains(why), "{set:?}: {error}");
    }
}

#[test]
fn seal_values_reach_the_config_and_the_signing_key_only_the_backup_and_spray_pods() {
    let values = chart().join("ci/seal-values.yaml");
    let (objects, _) = template(&["-f", values.to_str().unwrap()]).unwrap();
    let effective = effective_config(&objects);
    for line in [
        "[seal]",
        "recipients = [\"age1",
        "resources_recipients = [\"age1",
        "signers = [\"ssh-ed25519 AAAA",
        "require_signature = true",
        "signing_key = \"/run/etcd-backup/seal/signing_key\"",
        // The PersistentVolume and the bucket seal, as recipients are configured.
        "# seal = true",
    ] {
        assert!(effective.contains(line), "{line} in:\n{effective}");
    }
    let mut mounting = Vec::new();
    for (name, pod) in pods(&objects) {
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "signing-key");
        let mounted = containers(pod).iter().any(|c| {
            c["volumeMounts"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["name"] == "signing-key"))
        });
        assert_eq!(volume.is_some(), mounted, "{name}");
        if let Some(volume) = volume {
            assert_eq!(volume["secret"]["secretName"], "etcd-backup-signing-key");
            assert_eq!(volume["secret"]["defaultMode"], 0o400);
            mounting.push(name);
        }
    }
    mounting.sort();
    assert_eq!(
        mounting,
        [
            "eb-etcd-backup-backup (backup)",
            "eb-etcd-backup-spray (spray)"
        ]
    );
    // Without seal values, no [seal] at all (and nothing mounted).
    let (plain, _) = template(&[]).unwrap();
    assert!(
        !of_kind(&plain, "ConfigMap")[0]["data"]["config.toml"]
            .as_str()
            .unwrap()
            .contains("[seal]")
    );
}
