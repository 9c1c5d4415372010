//! The disaster drill, end to end in the three-master lab (`tests/lab/masters`, real systemd,
//! real etcd, real sshd) with a real S3 server on the lab's network: master-0 takes a backup
//! that reaches master-1, master-2 and the bucket; master-0 is destroyed, disk and all; the
//! cluster is restored twice, as an administrator would do it with the README's runbook — once
//! from master-1's copy, once on a master whose store is gone, from the bucket alone — each
//! time by `stage` and then the very command it prints (the lab's `cluster-restore.sh`, which
//! works on /var/lib/etcd-backup as OpenShift's does); the restored cluster serves exactly the
//! keys written before the backup. The bucket holds sealed sets only (age, the snapshot and the
//! archive to recipients of their own, signed), and every master requires signatures: the
//! second restore opens the bucket's copy with identity files brought from "offline".

use crate::masters::{Masters, backed_up, messages};
use crate::util::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
use crate::util::{release_binary, render_release_machineconfig};
use std::os::unix::fs::PermissionsExt;

const S3_NS: &str = "ebl-drill-s3";
const S3_IP: &str = "10.252.0.11";
const BUCKET: &str = "drill";
const PREFIX: &str = "cluster-a";
/// Where the OpenShift docs stage a backup for `cluster-restore.sh`.
const ASSETS: &str = "/home/core/assets/backup";

/// Every key and value of the member on master-N, read from that member alone.
fn keys(lab: &Masters, n: usize) -> String {
    lab.exec(n, &["etcdctl", "get", "", "--from-key", "--consistency=s"])
        .expect_ok("etcdctl get")
}

/// `etcd-backup stage SET ASSETS` on master-N, as an administrator runs it (core, with sudo:
/// /home/core is core's), then the restore command it printed, run as printed.
fn stage_and_restore(lab: &Masters, n: usize, set: &str) {
    let staged = lab
        .exec(
            n,
            &[
                "runuser",
                "-u",
                "core",
                "--",
                "sudo",
                "-n",
                "etcd-backup",
                "stage",
                set,
                ASSETS,
            ],
        )
        .expect_ok("stage");
    let command = staged
        .lines()
        .map(str::trim)
        .find(|l| l.contains("cluster-restore.sh"))
        .unwrap_or_else(|| panic!("stage printed no restore command:\n{staged}"));
    assert_eq!(
        command,
        format!("sudo -E /usr/local/bin/cluster-restore.sh {ASSETS}")
    );
    let listed = lab
        .exec(n, &["ls", ASSETS])
        .expect_ok("ls the staged directory");
    let mut files: Vec<&str> = listed.lines().collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files[0].starts_with("snapshot_") && files[0].ends_with(".db"));
    assert!(files[1].starts_with("static_kuberesources_") && files[1].ends_with(".tar.gz"));
    lab.exec(n, &["bash", "-c", command])
        .expect_ok("the printed cluster-restore.sh command");
}

/// The restore on master-N as `restore-check` plans it, step by step: each step on a master is
/// run there as printed (as core, with sudo; a master in `lost` is gone), each step with `oc`
/// is the operator's work, for which the lab's stand-in is every other master joining the
/// restored member again (`masters rejoin`). Before the plan's last step (the first backup of
/// the restored cluster, made dirty here as an operator would still be progressing) `status`
/// says the newest set is of the earlier etcd cluster. Returns the restored cluster's ID.
fn follow_the_plan(lab: &Masters, n: usize, set: &str, lost: &[usize]) -> String {
    let checked = lab
        .exec(n, &["etcd-backup", "restore-check", set])
        .expect_ok("restore-check");
    assert!(
        checked.contains("ok       release            the set and this node run 4.18.7"),
        "{checked}"
    );
    let report: serde_json::Value = serde_json::from_str(
        &lab.exec(n, &["etcd-backup", "restore-check", "--json", set])
            .expect_ok("restore-check --json"),
    )
    .unwrap();
    assert_eq!(report["refused"], false, "{report}");
    let plan = &report["plan"];
    assert_eq!(plan["recovery"], format!("master-{n}"));
    let steps = plan["steps"].as_array().unwrap();
    let mut rejoined = false;
    for (index, step) in steps.iter().enumerate() {
        let commands: Vec<&str> = step["commands"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        if index + 1 == steps.len() {
            // The restored cluster's first set: taken here, dirty, under a policy of one set.
            lab.exec(n, &["sh", "-c", "mkdir -p /etc/etcd-backup/config.d && printf '[backup]\\nsnapshot_nodes = []\\n[retention]\\nkeep_last = 1\\n' > /etc/etcd-backup/config.d/90-drill.toml && echo progressing > /etc/kubernetes/lab-standin-fail-mode"])
                .expect_ok("the drill's drop-in");
            let status = lab.exec(n, &["etcd-backup", "status"]);
            let said = String::from_utf8_lossy(&status.0.stdout);
            assert!(said.contains("this node's etcd is cluster"), "{said}");
        }
        match step["on"]["kind"].as_str().unwrap() {
            "masters" => {
                for host in step["on"]["hosts"].as_array().unwrap() {
                    let m: usize = host
                        .as_str()
                        .unwrap()
                        .trim_start_matches("master-")
                        .parse()
                        .unwrap();
                    if lost.contains(&m) {
                        continue;
                    }
                    for command in &commands {
                        lab.exec(m, &["runuser", "-u", "core", "--", "bash", "-c", command])
                            .expect_ok(&format!("step {}: {command}", index + 1));
                    }
                }
            }
            _ if !rejoined => {
                for other in (0..3).filter(|m| *m != n && !lost.contains(m)) {
                    lab.script(&["rejoin", &other.to_string(), &n.to_string()])
                        .expect_ok("another master rejoins");
                }
                rejoined = true;
            }
            _ => {}
        }
    }
    lab.exec(n, &["sh", "-c", "rm /etc/etcd-backup/config.d/90-drill.toml && : > /etc/kubernetes/lab-standin-fail-mode"])
        .expect_ok("the drill's drop-in goes");
    let status: serde_json::Value =
        serde_json::from_slice(&lab.exec(n, &["etcd-backup", "status", "--json"]).0.stdout)
            .unwrap();
    let live = status["etcd_cluster"]["live"].as_str().unwrap().to_string();
    assert_eq!(
        status["etcd_cluster"]["newest_set"],
        live.as_str(),
        "{status}"
    );
    live
}

/// After a restore on master-N: `list` shows the two histories, and a prune under a policy of
/// one set keeps the old history's newest sound set (the restored cluster's only set is dirty).
fn two_histories(lab: &Masters, n: usize, set: &str, live: &str) {
    let listed = lab.exec(n, &["etcd-backup", "list"]).expect_ok("list");
    assert!(
        listed.contains(&format!("etcd cluster {live} (this node's etcd now):")),
        "{listed}"
    );
    assert!(
        listed.contains("(an earlier history: not this node's etcd now):"),
        "{listed}"
    );
    let dry = lab
        .exec(n, &["sh", "-c", "printf '[retention]\\nkeep_last = 1\\n' > /etc/etcd-backup/config.d/90-drill.toml && etcd-backup prune --dry-run; rm /etc/etcd-backup/config.d/90-drill.toml"])
        .expect_ok("prune --dry-run");
    let line = dry
        .lines()
        .find(|l| l.contains(set))
        .unwrap_or_else(|| panic!("{dry}"));
    assert!(line.contains("earlier etcd cluster"), "{dry}");
}

/// master-N's store after cluster-restore.sh moved etcd's old data dir and a copy of the
/// snapshot into the same directory: the restore's files are there, untouched by a prune, and
/// the set still verifies.
fn store_survives_the_restore(lab: &Masters, n: usize, set: &str) {
    lab.exec(n, &["etcd-backup", "prune"]).expect_ok("prune");
    lab.exec(
        n,
        &[
            "test",
            "-d",
            "/var/lib/etcd-backup/member",
            "-a",
            "-f",
            "/var/lib/etcd-backup/snapshot.db",
        ],
    )
    .expect_ok("cluster-restore.sh's files are left alone");
    lab.exec(n, &["etcd-backup", "verify", "--deep", set])
        .expect_ok("the set verifies after the restore");
}

#[test]
fn master_0_lost_the_cluster_comes_back_from_a_peer_and_from_the_bucket_alone() {
    let dir = tempfile::tempdir().unwrap();
    let lab = Masters::up("drill");
    let s3 = S3Server::start_in(S3_NS, S3_IP);
    s3.tool_json(&["mkbucket", BUCKET]);

    // The MachineConfig carries the bucket's keys, checked against the target that reads them.
    let credentials = dir.path().join("s3-credentials");
    std::fs::write(
        &credentials,
        format!(
            "[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o600)).unwrap();
    let image = lab.image(&release_binary(), "drill");
    let endpoint = s3.endpoint();
    // The keys, made "offline": the masters get the public recipients and the signing key.
    let offline = dir.path().join("offline");
    std::fs::create_dir(&offline).unwrap();
    let keygen = |name: &str, signing: bool| {
        let mut cmd = std::process::Command::new(crate::util::BIN);
        cmd.arg("keygen").arg("--out").arg(offline.join(name));
        if signing {
            cmd.arg("--signing");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let (snapshot_recipient, resources_recipient, signer) = (
        keygen("snapshot-identity.txt", false),
        keygen("resources-identity.txt", false),
        keygen("signing_key", true),
    );
    let config = format!(
        "[backup]\nsnapshot_nodes = [\"master-0\", \"master-1\", \"master-2\"]\n\
         [spray]\nconnect_timeout = \"3s\"\nio_timeout = \"10s\"\nattempts = 1\n\
         [[spray.target]]\nkind = \"s3\"\nendpoint = \"{endpoint}\"\nbucket = \"{BUCKET}\"\n\
         prefix = \"{PREFIX}\"\ncredentials = \"/etc/etcd-backup/s3-credentials\"\n\
         insecure_http = true\n\
         [seal]\nrecipients = [\"{snapshot_recipient}\"]\n\
         resources_recipients = [\"{resources_recipient}\"]\n\
         signing_key = \"/etc/etcd-backup/signing_key\"\nsigners = [\"{signer}\"]\n\
         require_signature = true\n"
    );
    let mc = dir.path().join("drill.yaml");
    std::fs::write(
        &mc,
        render_release_machineconfig(
            &config,
            &[
                "--image",
                &image,
                "--s3-credentials",
                credentials.to_str().unwrap(),
                "--signing-key",
                offline.join("signing_key").to_str().unwrap(),
            ],
        ),
    )
    .unwrap();
    lab.apply(&mc).expect_ok("apply the MachineConfig");

    // master-0 takes a backup and sprays it to both peers and the bucket.
    let before = keys(&lab, 0);
    assert_eq!(
        before.lines().count(),
        200,
        "the lab's 100 keys, and their values"
    );
    let (started, journal) = lab.start(0, "etcd-backup.service");
    started.expect_ok("backup on master-0");
    let set = backed_up(&journal).unwrap_or_else(|| panic!("no set: {}", messages(&journal)));
    lab.exec(0, &["etcdctl", "put", "/drill/after-the-backup", "lost"])
        .expect_ok("a write after the backup");
    let (started, journal) = lab.start(0, "etcd-backup-spray.service");
    started.expect_ok(&format!("spray: {}", messages(&journal)));
    for n in [1, 2] {
        assert!(
            lab.sets(n).contains(&(set.clone(), "master-0".to_string())),
            "master-{n} holds {set}"
        );
    }
    let objects = s3.tool_json(&["objects", BUCKET, &format!("{PREFIX}/sets/{set}/")]);
    let names: Vec<&str> = objects
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap().rsplit('/').next().unwrap())
        .collect();
    let mut names: Vec<String> = names
        .iter()
        .map(|n| {
            n.split_once('_')
                .map_or(n.to_string(), |(kind, _)| format!("{kind}_*"))
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "manifest.json",
            "manifest.json.sig",
            "seal.json",
            "seal.json.sig",
            "snapshot_*",
            "static_*"
        ],
        "sealed files and signed records only"
    );
    assert!(
        objects.as_array().unwrap().iter().all(|o| {
            let key = o["key"].as_str().unwrap();
            key.ends_with(".age") || key.ends_with(".json") || key.ends_with(".sig")
        }),
        "{objects}"
    );

    // master-0 is lost, disk and all.
    lab.script(&["destroy", "0"]).expect_ok("destroy master-0");

    // Round 1, from master-1's copy: restore there as restore-check plans it (master-2's etcd
    // disabled, then joining the restored member again).
    let live = follow_the_plan(&lab, 1, &set, &[0]);
    for n in [1, 2] {
        assert_eq!(keys(&lab, n), before, "master-{n} serves the backup's keys");
    }
    two_histories(&lab, 1, &set, &live);
    store_survives_the_restore(&lab, 1, &set);

    // Round 2, all local copies gone but the bucket's: master-2's store is wiped, the set
    // comes back from the bucket alone, and master-2 is the recovery master.
    lab.exec(1, &["etcdctl", "put", "/drill/after-round-1", "lost"])
        .expect_ok("a write after the first restore");
    lab.exec(2, &["rm", "-rf", "/var/lib/etcd-backup"])
        .expect_ok("wipe master-2's store");
    let from = format!(
        "s3:{}/{BUCKET}/{PREFIX}",
        endpoint.trim_start_matches("http://")
    );
    // The identities come from offline for the recovery, and only to the recovery master.
    for name in ["snapshot-identity.txt", "resources-identity.txt"] {
        let text = std::fs::read_to_string(offline.join(name)).unwrap();
        let secret = text
            .lines()
            .find(|l| l.starts_with("AGE-SECRET-KEY-"))
            .unwrap();
        lab.exec(
            2,
            &[
                "sh",
                "-c",
                &format!(
                    "umask 077 && mkdir -p /root/offline && echo {secret} > /root/offline/{name}"
                ),
            ],
        )
        .expect_ok("bring an identity from offline");
    }
    let fetched = lab.exec(
        2,
        &[
            "etcd-backup",
            "fetch",
            "--from",
            &from,
            "--identity",
            "/root/offline/snapshot-identity.txt",
            "--identity",
            "/root/offline/resources-identity.txt",
            &set,
        ],
    );
    fetched.expect_ok("fetch from the bucket");
    lab.exec(2, &["etcd-backup", "verify", "--deep", &set])
        .expect_ok("the fetched set verifies");
    stage_and_restore(&lab, 2, &set);
    lab.script(&["rejoin", "1", "2"])
        .expect_ok("master-1 rejoins");
    for n in [1, 2] {
        assert_eq!(
            keys(&lab, n),
            before,
            "master-{n} serves the backup's keys, from the bucket's copy"
        );
    }
    store_survives_the_restore(&lab, 2, &set);
}
