//! Pod Mode on the lab masters: the chart's pod templates, as `helm template` renders them, run
//! under a real container runtime (podman, runc) as each master's kubelet would run them: their
//! hostPath volumes on that master's disk, host network that master's network namespace
//! (`tests/lab/run-pod`). The image is the one `packaging/Containerfile` builds.

use crate::masters::{Masters, backed_up, messages, render};
use crate::util::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
use crate::util::{BIN, release_binary, repo};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `helm template` of the chart with `args` into `dir/name`.
fn template(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let cache = std::env::var("ETCD_BACKUP_CACHE")
        .unwrap_or_else(|_| "/var/cache/etcd-backup-lab".to_string());
    let out = Command::new(PathBuf::from(cache).join("helm-kubectl-v35-2.2.2/helm"))
        .args(["template", "eb", "--namespace", "etcd-backup"])
        .arg(repo().join("charts/etcd-backup"))
        .args([
            "--set",
            "image.repository=localhost/etcd-backup,image.tag=pod",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let path = dir.join(name);
    std::fs::write(&path, out.stdout).unwrap();
    path
}

/// Receiver containers, removed when dropped.
struct Running(Vec<String>);

impl Drop for Running {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = podman().args(["rm", "-f", name]).output();
        }
    }
}

fn podman() -> Command {
    let cache = std::env::var("ETCD_BACKUP_CACHE")
        .unwrap_or_else(|_| "/var/cache/etcd-backup-lab".to_string());
    let mut cmd = Command::new("podman");
    cmd.env("CONTAINERS_CONF", format!("{cache}/containers-v2.conf"));
    cmd
}

fn logs(name: &str) -> String {
    let out = podman().args(["logs", name]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The store on master-N's disk, read by this machine's binary (files only, no network).
struct HostStore(PathBuf, tempfile::TempDir);

impl HostStore {
    fn of(lab: &Masters, n: usize) -> HostStore {
        HostStore::at(&PathBuf::from(format!(
            "/var/lib/etcd-backup-lab/{}/master-{n}/var/lib/etcd-backup",
            lab.name
        )))
    }

    fn at(root: &Path) -> HostStore {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("c.toml"),
            format!("[store]\nroot = \"{}\"\n", root.display()),
        )
        .unwrap();
        HostStore(root.to_path_buf(), dir)
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .arg("--config")
            .arg(self.1.path().join("c.toml"))
            .args(args)
            .env_remove("JOURNAL_STREAM")
            .output()
            .unwrap()
    }

    /// The set ids, all verified against their manifests and trailers.
    fn verified_ids(&self) -> Vec<String> {
        let verify = self.run(&["verify"]);
        assert!(verify.status.success(), "{}: {verify:?}", self.0.display());
        let list = self.run(&["list", "--json"]);
        let sets: Vec<serde_json::Value> = serde_json::from_slice(&list.stdout).unwrap();
        sets.iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    }

    fn staging_is_empty(&self) -> bool {
        std::fs::read_dir(self.0.join(".staging")).map_or(true, |mut d| d.next().is_none())
    }
}

#[test]
fn pod_mode_on_the_lab_masters_keeps_systemd_history_and_sprays_over_tls_to_a_volume_and_a_bucket()
{
    let dir = tempfile::tempdir().unwrap();
    let lab = Masters::up("pods");

    // systemd mode first: a set taken by etcd-backup.service on master-0.
    let image = lab.image(&release_binary(), "current");
    lab.apply(&render(dir.path(), "mc.yaml", &["--image", &image]))
        .expect_ok("apply the MachineConfig");
    let (started, journal) = lab.start(0, "etcd-backup.service");
    started.expect_ok("a backup in systemd mode");
    let from_systemd = backed_up(&journal).unwrap_or_else(|| panic!("{}", messages(&journal)));
    // The switch: the timers go (deleting the MachineConfig does that); the store stays.
    for n in 0..3 {
        lab.exec(
            n,
            &[
                "systemctl",
                "disable",
                "--now",
                "etcd-backup.timer",
                "etcd-backup-spray.timer",
                "etcd-backup-verify.timer",
            ],
        )
        .expect_ok("stop systemd mode");
    }

    // Pod Mode, sync: receivers on master-1 and master-2, backup and spray jobs on master-0,
    // each with the certificate the chart issued its master (no pod holds the CA key).
    lab.script(&[
        "image",
        release_binary().to_str().unwrap(),
        "pod",
        "--local",
    ])
    .expect_ok("build the image here");
    // The image ships the man pages and the bash completion the binary generated at build.
    let shipped = podman()
        .args(["run", "--rm", "--pull=never", "--network", "none"])
        .args(["--entrypoint", "/bin/sh"])
        .args(["localhost/etcd-backup:pod", "-c"])
        .arg("ls /usr/share/man/man1 && test -s /usr/share/bash-completion/completions/etcd-backup")
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&shipped.stdout);
    assert!(
        shipped.status.success() && listing.contains("etcd-backup-restore-check.1"),
        "{shipped:?}"
    );
    let snapshot_nodes = [
        "--set",
        "snapshotNodes={master-0,master-1,master-2},sync.tls.nodes={master-0,master-1,master-2}",
    ];
    let sync = template(dir.path(), "sync.yaml", &snapshot_nodes);
    let sync_path = sync.to_str().unwrap();
    let mut receivers = Running(Vec::new());
    for n in ["1", "2"] {
        let name = lab
            .script(&[
                "run-pod",
                sync_path,
                &format!("eb-etcd-backup-receiver-master-{n}"),
                n,
                "--detach",
            ])
            .expect_ok("start a receiver pod");
        receivers.0.push(name.trim().to_string());
    }
    for ip in ["10.252.0.2", "10.252.0.3"] {
        // From inside master-0, as its spray will connect; bounded.
        lab.exec(
            0,
            &[
                "bash",
                "-c",
                &format!("for _ in $(seq 1 100); do echo >/dev/tcp/{ip}/9443 && exit 0; sleep 0.1; done; exit 1"),
            ],
        )
        .expect_ok("a receiver listens");
    }
    let backup = lab.script(&["run-pod", sync_path, "eb-etcd-backup-backup-0", "0"]);
    backup.expect_ok("the backup job on master-0 (chroot /host cluster-backup.sh)");
    let master_0 = HostStore::of(&lab, 0);
    let held = master_0.verified_ids();
    // The pod log is JSON lines; the success names the set, as the journal does.
    let committed: Vec<String> = String::from_utf8_lossy(&backup.0.stderr)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| {
            event["fields"]["message_id"] == etcd_backup::logging::message_id::BACKUP_SUCCEEDED
        })
        .map(|event| event["fields"]["set_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        committed.len(),
        1,
        "{}",
        String::from_utf8_lossy(&backup.0.stderr)
    );
    assert!(held.contains(&committed[0]), "{committed:?} {held:?}");
    // Pod Mode reads the node's facts through the host's / at /host (backup.chroot): the set
    // knows its cluster as systemd mode's does.
    let sets: Vec<serde_json::Value> =
        serde_json::from_slice(&master_0.run(&["list", "--json"]).stdout).unwrap();
    let facts = |id: &str| sets.iter().find(|s| s["id"] == id).unwrap()["cluster"].clone();
    let (in_pod, in_systemd) = (facts(&committed[0]), facts(&from_systemd));
    assert_eq!(in_pod["release"], "4.18.7", "{in_pod}");
    assert!(in_pod.get("unknown").is_none(), "{in_pod}");
    for fact in [
        "release",
        "cluster_id",
        "members",
        "encryption",
        "etcd_version",
    ] {
        assert_eq!(in_pod[fact], in_systemd[fact], "{fact}");
    }
    assert_eq!(held.len(), 2, "{held:?}");
    assert!(
        held.contains(&from_systemd),
        "systemd mode's set is still there: {held:?}"
    );
    assert!(held.iter().all(|id| id.ends_with("-master-0")));
    // A pod pinned to master-0 does not run elsewhere.
    let elsewhere = lab.script(&["run-pod", sync_path, "eb-etcd-backup-backup-0", "1"]);
    assert!(!elsewhere.0.status.success());

    let sprayed = lab
        .script(&["run-pod", sync_path, "eb-etcd-backup-spray-0", "0"])
        .expect_ok("the spray job on master-0");
    let _ = sprayed;
    for n in [1, 2] {
        assert_eq!(HostStore::of(&lab, n).verified_ids(), held, "master-{n}");
    }
    for name in &receivers.0 {
        assert!(logs(name).contains("from master-0"), "{}", logs(name));
    }
    // The verify job beside it: the store's sets, then each peer checks its copies of
    // master-0's sets itself, over the same mutual TLS.
    let verify = lab.script(&["run-pod", sync_path, "eb-etcd-backup-verify-0", "0"]);
    verify.expect_ok("the verify job on master-0");
    // What the pod prints reaches the runner's stderr.
    let verified = String::from_utf8_lossy(&verify.0.stderr).into_owned();
    for id in &held {
        assert!(
            verified.matches(&format!("ok   {id}  on")).count() >= 2,
            "both peers checked {id}: {verified}"
        );
    }

    // The recovery master in Pod Mode has no binary of its own: taken out of the image the
    // jobs ran, as docs/restore.md says, it checks a set the pods took and plans the restore
    // for this cluster with nothing but its defaults.
    let from_image = format!(
        "/var/lib/etcd-backup-lab/{}/master-1/var/lib/eb-image",
        lab.name
    );
    std::fs::create_dir_all(&from_image).unwrap();
    std::fs::write(format!("{from_image}/none.toml"), "").unwrap();
    let created = podman()
        .args(["create", "--pull=never", "localhost/etcd-backup:pod"])
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let container = String::from_utf8_lossy(&created.stdout).trim().to_string();
    let copied = podman()
        .args(["cp", &format!("{container}:/usr/local/bin/etcd-backup")])
        .arg(format!("{from_image}/etcd-backup"))
        .output()
        .unwrap();
    let _ = podman().args(["rm", &container]).output();
    assert!(copied.status.success(), "{copied:?}");
    let report = lab
        .exec(
            1,
            &[
                "/var/lib/eb-image/etcd-backup",
                "--config",
                "/var/lib/eb-image/none.toml",
                "restore-check",
                &committed[0],
            ],
        )
        .expect_ok("restore-check with the image's binary");
    for needle in [
        "ok       release            the set and this node run 4.18.7",
        "recovery master: master-1 (this node); other masters: master-0, master-2",
        &format!(
            "sudo etcd-backup stage {} /home/core/assets/backup",
            committed[0]
        ),
    ] {
        assert!(report.contains(needle), "{needle}\n{report}");
    }

    // A spray whose certificate another CA issued (another install of the chart): refused by
    // both receivers, nothing committed or staged.
    lab.script(&["run-pod", sync_path, "eb-etcd-backup-backup-0", "0"])
        .expect_ok("another backup");
    let other_ca = template(dir.path(), "other-ca.yaml", &snapshot_nodes);
    let refused = lab.script(&[
        "run-pod",
        other_ca.to_str().unwrap(),
        "eb-etcd-backup-spray-0",
        "0",
    ]);
    assert!(!refused.0.status.success(), "the spray job fails");
    for n in [1, 2] {
        let store = HostStore::of(&lab, n);
        assert_eq!(store.verified_ids(), held, "master-{n} got nothing new");
        assert!(store.staging_is_empty(), "master-{n} staged nothing");
    }
    for name in &receivers.0 {
        assert!(
            logs(name).contains("TLS handshake refused"),
            "{}",
            logs(name)
        );
    }

    // pv mode: the spray job delivers master-0's history to the volume (a directory standing
    // in for the NFS export, mounted into the pod as the claim would be).
    let volume = dir.path().join("nfs-export");
    std::fs::create_dir(&volume).unwrap();
    let pv_values = repo().join("charts/etcd-backup/ci/pv-values.yaml");
    let pv_values = pv_values.to_str().unwrap();
    // The pv-mode spray job of `rendered` on master-0, the volume mounted as its claim.
    let pv_spray = |rendered: &Path| {
        lab.script(&[
            "run-pod",
            rendered.to_str().unwrap(),
            "eb-etcd-backup-spray",
            "0",
            "--claim",
            &format!("eb-etcd-backup-pv={}", volume.display()),
        ])
    };
    let pv = template(dir.path(), "pv.yaml", &["-f", pv_values]);
    pv_spray(&pv).expect_ok("the pv spray job");
    let on_volume = HostStore::at(&volume).verified_ids();
    assert_eq!(
        on_volume,
        master_0.verified_ids(),
        "the whole history on the volume"
    );
    assert_eq!(on_volume.len(), 3);

    // S3: the spray job also fills a bucket (a real S3 server on the lab's network), its keys
    // from a Secret the administrator made, mounted 0400 by the runtime.
    let s3 = S3Server::start_in("ebl-pods-s3", "10.252.0.11");
    s3.tool_json(&["mkbucket", "pods"]);
    let endpoint = s3.endpoint();
    // pv mode here: a render of sync mode would make another CA than the running receivers'.
    let with_s3 = template(
        dir.path(),
        "s3.yaml",
        &[
            "-f",
            pv_values,
            "--set",
            &format!(
                "s3.credentialsSecret=eb-s3,s3.targets[0].endpoint={endpoint},s3.targets[0].bucket=pods,s3.targets[0].prefix=cluster-a,s3.targets[0].insecureHttp=true"
            ),
        ],
    );
    let credentials = format!(
        "[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
    );
    let secret = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: eb-s3\ndata:\n  credentials: {}\n",
        base64(credentials.as_bytes())
    );
    let mut rendered = std::fs::read_to_string(&with_s3).unwrap();
    rendered.push_str(&secret);
    std::fs::write(&with_s3, rendered).unwrap();
    pv_spray(&with_s3).expect_ok("the spray job with an s3 target");
    let objects = s3.tool_json(&["objects", "pods", "cluster-a/sets/"]);
    let mut in_bucket: Vec<String> = objects
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| {
            o["key"]
                .as_str()?
                .strip_suffix("/manifest.json")
                .map(String::from)
        })
        .map(|k| k.rsplit('/').next().unwrap().to_string())
        .collect();
    in_bucket.sort();
    assert_eq!(
        in_bucket,
        master_0.verified_ids(),
        "master-0's history in the bucket"
    );
}

/// Standard base64 (what a Secret's `data` holds).
fn base64(bytes: &[u8]) -> String {
    let mut cmd = Command::new("base64");
    cmd.arg("-w0");
    String::from_utf8(crate::util::run_with_stdin(cmd, bytes).stdout).unwrap()
}
