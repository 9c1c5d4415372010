//! What a set records of its cluster, and `restore-check`, on a node laid out as OpenShift lays
//! out a master (the machine-config daemon's currentconfig, etcd's data directory, etcd.env,
//! cluster-restore.sh, the etcd pod's certificates and the kube-apiserver's encryption config in
//! the static pod resources), against a real etcd and the stand-in script.

use crate::util::*;
use openssl::asn1::Asn1Time;
use openssl::pkey::{PKey, Private};
use openssl::x509::{X509, X509NameBuilder};
use serde_json::Value;
use std::path::Path;

const DAY: i64 = 86_400;
/// A secret of the encryption config: it must never reach a manifest.
const AESCBC_KEY: &str = "dGhpcyBpcyB0aGUgYWVzY2JjIGtleSBvZiB0aGUgdGVzdA==";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A certificate valid from `from` to `until` (unix seconds), signed by `issuer` or by itself.
fn cert(
    cn: &str,
    from: i64,
    until: i64,
    issuer: Option<&(X509, PKey<Private>)>,
) -> (X509, PKey<Private>) {
    let key = PKey::from_ec_key(
        openssl::ec::EcKey::generate(
            &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(issuer.map_or(&name, |(c, _)| c.subject_name()))
        .unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(from).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(until).unwrap())
        .unwrap();
    b.sign(
        issuer.map_or(&key, |(_, k)| k),
        openssl::hash::MessageDigest::sha256(),
    )
    .unwrap();
    (b.build(), key)
}

fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// The node's files as an OpenShift master has them: release `release`, a cluster born at
/// `born`, the members' certificates expiring at `expires`.
fn lay_out(node: &Node, release: &str, born: i64, expires: i64) {
    let root = node.root();
    write(
        &root.join("etc/machine-config-daemon/currentconfig"),
        format!(
            r#"{{"kind":"MachineConfig","apiVersion":"machineconfiguration.openshift.io/v1",
               "metadata":{{"name":"rendered-master-0c1d","annotations":{{
                 "machineconfiguration.openshift.io/release-image-version":"{release}"}}}},
               "spec":{{"config":{{"ignition":{{"version":"3.4.0"}}}}}}}}"#
        ),
    );
    let etcd_dir = root.join("var/lib/etcd");
    if std::fs::symlink_metadata(&etcd_dir).is_err() {
        std::fs::create_dir_all(root.join("var/lib")).unwrap();
        std::os::unix::fs::symlink(etcd().data_dir(), &etcd_dir).unwrap();
    }
    let script = root.join("usr/local/bin/cluster-restore.sh");
    write(
        &script,
        std::fs::read(repo().join("tests/lab/cluster-restore")).unwrap(),
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    write(
        &root.join("etc/kubernetes/static-pod-resources/etcd-certs/configmaps/etcd-scripts/etcd.env"),
        (0..3)
            .map(|n| {
                format!(
                    "export NODE_master_{n}_ETCD_NAME=\"master-{n}\"\nexport NODE_master_{n}_IP=\"10.0.0.{}\"\n",
                    n + 1
                )
            })
            .collect::<String>(),
    );
    let pods = node.dir.path().join("kubernetes/static-pod-resources");
    let signer = cert("etcd-signer", born, born + 3650 * DAY, None);
    write(
        &pods.join("etcd-pod-2/configmaps/etcd-all-bundles/server-ca-bundle.crt"),
        signer.0.to_pem().unwrap(),
    );
    for kind in ["peer", "serving", "serving-metrics"] {
        let (leaf, _) = cert(
            &format!("etcd-{kind}-master-0"),
            born + DAY / 24,
            expires,
            Some(&signer),
        );
        write(
            &pods.join(format!(
                "etcd-pod-2/secrets/etcd-all-certs/etcd-{kind}-master-0.crt"
            )),
            leaf.to_pem().unwrap(),
        );
    }
    write(
        &pods.join("kube-apiserver-pod-4/secrets/encryption-config/encryption-config"),
        format!(
            r#"{{"kind":"EncryptionConfiguration","apiVersion":"apiserver.config.k8s.io/v1","resources":[
                {{"resources":["secrets","configmaps"],"providers":[{{"aescbc":{{"keys":[{{"name":"1","secret":"{AESCBC_KEY}"}}]}}}},{{"identity":{{}}}}]}}]}}"#
        ),
    );
}

fn manifest(node: &Node, id: &str) -> Value {
    serde_json::from_slice(&std::fs::read(node.set_dir(id).join("manifest.json")).unwrap()).unwrap()
}

fn unix(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .timestamp()
}

#[test]
fn a_set_records_the_cluster_it_was_taken_from() {
    let node = Node::new("");
    let born = now() - 40 * DAY;
    let expires = now() + 700 * DAY;
    lay_out(&node, "4.18.7", born, expires);
    let id = node.backup();
    let bytes = std::fs::read(node.set_dir(&id).join("manifest.json")).unwrap();
    assert!(
        !String::from_utf8_lossy(&bytes).contains(AESCBC_KEY),
        "the encryption key reached the manifest"
    );
    let cluster = &manifest(&node, &id)["cluster"];

    // Each fact against what etcd, etcdctl and the files say themselves.
    let etcd = etcd();
    let version = String::from_utf8(etcd.etcdctl(&["version"]).stdout).unwrap();
    assert_eq!(
        format!(
            "etcdctl version: {}",
            cluster["etcd_version"].as_str().unwrap()
        ),
        version.lines().next().unwrap()
    );
    let status: Value =
        serde_json::from_slice(&etcd.etcdctl(&["endpoint", "status", "-w", "json"]).stdout)
            .unwrap();
    let header = &status[0]["Status"]["header"];
    assert_eq!(
        cluster["cluster_id"].as_str().unwrap(),
        format!("{:016x}", header["cluster_id"].as_u64().unwrap())
    );
    assert_eq!(
        cluster["member_id"].as_str().unwrap(),
        format!("{:016x}", header["member_id"].as_u64().unwrap())
    );
    let members: Value =
        serde_json::from_slice(&etcd.etcdctl(&["member", "list", "-w", "json"]).stdout).unwrap();
    let names: Vec<&str> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        cluster["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        names
    );
    assert_eq!(cluster["release"], "4.18.7");
    assert_eq!(cluster["etcd_cluster_version"], "3.5.0");
    assert_eq!(cluster["encryption"]["provider"], "aescbc");
    assert_eq!(
        cluster["encryption"]["resources"],
        serde_json::json!(["secrets", "configmaps"])
    );
    let certs = &cluster["certificates"];
    assert_eq!(certs["count"], 4);
    assert_eq!(unix(&certs["first_issued"]), born);
    assert_eq!(unix(&certs["not_before"]), born + DAY / 24);
    assert_eq!(unix(&certs["not_after"]), expires);
    assert!(cluster.get("unknown").is_none(), "{cluster}");

    // `list` shows the release and the history; --json everything.
    node.run(&["list"])
        .expect_code(0)
        .expect_stdout(&format!(
            "etcd cluster {} (this node's etcd now):",
            cluster["cluster_id"].as_str().unwrap()
        ))
        .expect_stdout("4.18.7");
    assert_eq!(&node.sets()[0]["cluster"], cluster);
}

#[test]
fn a_node_without_the_files_records_what_it_could_not_learn() {
    let node = Node::new("");
    let id = node.backup();
    let cluster = &manifest(&node, &id)["cluster"];
    let unknown: Vec<&str> = cluster["unknown"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    for fact in ["release:", "cluster_id:", "certificates:"] {
        assert!(
            unknown.iter().any(|u| u.starts_with(fact)),
            "{fact} {unknown:?}"
        );
    }
    // What the snapshot and the script say is still there; encryption off (no config).
    assert_eq!(cluster["encryption"]["provider"], "identity");
    assert!(
        cluster["etcd_version"].is_string() && !cluster["members"].as_array().unwrap().is_empty()
    );
    // restore-check shows each as unknown, refuses nothing for it.
    lay_out_script_only(&node);
    node.run(&["restore-check", &id])
        .expect_code(0)
        .expect_stdout("UNKNOWN  release")
        .expect_stdout("UNKNOWN  certificates")
        .expect_stderr("warning: not known, so not checked: release, first 24 hours, certificates");
}

fn lay_out_script_only(node: &Node) {
    let script = node.root().join("usr/local/bin/cluster-restore.sh");
    write(&script, "#!/bin/sh\n");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

fn line_of<'a>(text: &'a str, check: &str) -> &'a str {
    text.lines()
        .find(|l| {
            l.split_whitespace()
                .skip(1)
                .collect::<Vec<_>>()
                .join(" ")
                .starts_with(check)
        })
        .unwrap_or_else(|| panic!("no check '{check}' in:\n{text}"))
}

/// Flips one byte in the middle of the snapshot in `dir`.
fn damage_snapshot(dir: &Path) {
    let snapshot = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "db"))
        .unwrap();
    let mut bytes = std::fs::read(&snapshot).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&snapshot, bytes).unwrap();
}

/// The line of check `name` in `restore-check`'s output holds `needle`.
fn assert_check(stdout: &str, name: &str, needle: &str) {
    assert!(
        line_of(stdout, name).contains(needle),
        "{name}: {needle}\n{stdout}"
    );
}

#[test]
fn restore_check_refuses_what_openshift_would_not_restore() {
    let node = Node::new("");
    // The set is taken while the cluster is an hour old: within its first 24 hours.
    lay_out(&node, "4.18.7", now() - 3600, now() + 700 * DAY);
    let young = node.backup();
    let run = node.run(&["restore-check", &young]);
    run.expect_code(0);
    let out = &run.stdout;
    assert!(line_of(out, "release").starts_with("  ok"), "{out}");
    assert!(line_of(out, "first 24 hours").contains("WARNING"), "{out}");
    assert!(
        run.stderr
            .contains("warning: first 24 hours: see WARNING above"),
        "{}",
        run.stderr
    );
    assert!(line_of(out, "encryption").contains("aescbc"), "{out}");
    // The plan: this node's release's flow, every master named, the set filled in.
    for needle in [
        "OpenShift 4.18 and later flow, by this node's release 4.18.7",
        &format!("sudo etcd-backup stage {young} /home/core/assets/backup"),
        "on master-1, master-2: stop etcd",
        "sudo -E /usr/local/bin/disable-etcd.sh",
        "sudo -E /usr/local/bin/cluster-restore.sh /home/core/assets/backup",
        "oc adm wait-for-stable-cluster",
    ] {
        assert!(out.contains(needle), "{needle}\n{out}");
    }
    let json: Value =
        serde_json::from_str(&node.run(&["restore-check", &young, "--json"]).stdout).unwrap();
    assert_eq!(json["refused"], false);
    assert_eq!(
        json["plan"]["others"],
        serde_json::json!(["master-1", "master-2"])
    );
    assert_eq!(json["plan"]["flow"], "4.18+");
    // Staged before: `stage` takes only an empty directory, so the plan empties it first.
    let stage_dir = node.root().join("home/core/assets/backup");
    node.run(&["stage", &young, stage_dir.to_str().unwrap()])
        .expect_code(0);
    node.run(&["restore-check", &young])
        .expect_code(0)
        .expect_stdout("holds this set's files from an earlier stage")
        .expect_stdout("     sudo rm -r /home/core/assets/backup\n     sudo etcd-backup stage");
    std::fs::remove_dir_all(&stage_dir).unwrap();

    // This node was updated since: another z-stream is refused, naming both; allowed on request.
    lay_out(&node, "4.18.9", now() - 3600, now() + 700 * DAY);
    let run = node.run(&["restore-check", &young]);
    run.expect_code(1)
        .expect_stderr("must not be restored here");
    let release = line_of(&run.stdout, "release");
    assert!(
        release.contains("REFUSED") && release.contains("4.18.7") && release.contains("4.18.9"),
        "{release}"
    );
    assert!(!run.stdout.contains("Restore plan"));
    node.run(&["restore-check", &young, "--allow-other-release"])
        .expect_code(0)
        .expect_stdout("ALLOWED  release")
        .expect_stdout(&format!(
            "sudo etcd-backup stage --allow-other-release {young} "
        ));
    // stage holds the same line: refused, then staged when asked.
    let staged = node.dir.path().join("staged");
    let staged_arg = staged.to_str().unwrap();
    node.run(&["stage", &young, staged_arg])
        .expect_code(1)
        .expect_stderr("was taken on OpenShift 4.18.7, this node runs 4.18.9");
    assert!(!staged.exists(), "nothing staged");
    node.run(&["stage", "--allow-other-release", &young, staged_arg])
        .expect_code(0);

    // A set of an older cluster whose member certificates have expired since: refused.
    lay_out(&node, "4.18.9", now() - 900 * DAY, now() + 2);
    let expiring = node.backup();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let run = node.run(&["restore-check", &expiring]);
    run.expect_code(1);
    assert_check(&run.stdout, "certificates", "REFUSED");
    assert!(
        line_of(&run.stdout, "first 24 hours").starts_with("  ok"),
        "{}",
        run.stdout
    );

    // Damaged in the store: refused.
    lay_out(&node, "4.18.9", now() - 40 * DAY, now() + 700 * DAY);
    let sound = node.backup();
    let damaged = node.backup();
    damage_snapshot(&node.set_dir(&damaged));
    let run = node.run(&["restore-check", &damaged]);
    run.expect_code(1);
    assert_check(&run.stdout, "set", "REFUSED");

    // Unsigned where signatures are required: refused.
    let key = node.dir.path().join("signing_key");
    let signer = node
        .run(&["keygen", "--signing", "--out", key.to_str().unwrap()])
        .stdout;
    node.write_config(&format!(
        "[seal]\nsigners = [\"{}\"]\nrequire_signature = true\n",
        signer.trim()
    ));
    let run = node.run(&["restore-check", &sound]);
    run.expect_code(1);
    assert_check(&run.stdout, "signature", "REFUSED");
    node.write_config("");

    // Too little room under /var/lib/etcd: refused (a small filesystem there).
    let etcd_dir = node.root().join("var/lib/etcd");
    std::fs::remove_file(&etcd_dir).unwrap();
    let small = SmallFs::mount(&etcd_dir, 2);
    let run = node.run(&["restore-check", &sound]);
    run.expect_code(1);
    assert_check(&run.stdout, "space", "REFUSED");
    assert_check(&run.stdout, "etcd cluster", "UNKNOWN");
    drop(small);
    std::fs::remove_dir(&etcd_dir).unwrap();
    std::os::unix::fs::symlink(etcd().data_dir(), &etcd_dir).unwrap();

    // No cluster-restore.sh: refused.
    std::fs::remove_file(node.root().join("usr/local/bin/cluster-restore.sh")).unwrap();
    let run = node.run(&["restore-check", &sound]);
    run.expect_code(1);
    assert_check(&run.stdout, "cluster-restore.sh", "REFUSED");
}

#[test]
fn restore_check_of_a_targets_copy_before_it_is_fetched() {
    let node = Node::new("");
    lay_out(&node, "4.18.7", now() - 40 * DAY, now() + 700 * DAY);
    let nfs = node.dir.path().join("nfs");
    let target = format!(
        "[spray]\netcd_env = \"\"\n[[spray.target]]\nkind = \"dir\"\npath = \"{}\"\nrequire_mount = false\n",
        nfs.display()
    );
    node.write_config(&target);
    let id = node.backup();
    node.run(&["spray"]).expect_code(0);
    std::fs::remove_dir_all(node.set_dir(&id)).unwrap();

    // Nothing of it in the store: the check reads the target's copy, and the plan fetches it.
    let nfs_arg = nfs.to_str().unwrap();
    let run = node.run(&["restore-check", "--target", nfs_arg, &id]);
    run.expect_code(0);
    assert!(
        line_of(&run.stdout, "set").starts_with("  ok"),
        "{}",
        run.stdout
    );
    assert!(
        line_of(&run.stdout, "release").starts_with("  ok"),
        "{}",
        run.stdout
    );
    let fetch = format!("sudo etcd-backup fetch --from dir:{nfs_arg} {id}");
    let stage = format!("sudo etcd-backup stage {id} ");
    let (at_fetch, at_stage) = (run.stdout.find(&fetch), run.stdout.find(&stage));
    assert!(
        at_fetch.is_some() && at_fetch < at_stage,
        "fetch, then stage:\n{}",
        run.stdout
    );
    // The fetch step, run as printed (the test runs as root: no sudo), brings it.
    let args: Vec<&str> = fetch.split_whitespace().skip(2).collect();
    node.run(&args).expect_code(0);
    assert!(node.set_dir(&id).is_dir());
    std::fs::remove_dir_all(node.set_dir(&id)).unwrap();
    // A directory this node has not configured (a dead master's disk, an export mounted by
    // hand): checked the same, and the plan's fetch and `list --from` take its name as printed.
    node.write_config("");
    let run = node.run(&["restore-check", "--target", nfs_arg, &id]);
    run.expect_code(0);
    assert!(run.stdout.contains(&fetch), "{}", run.stdout);
    node.run(&["list", "--from", &format!("dir:{nfs_arg}")])
        .expect_code(0)
        .expect_stdout(&id);
    node.run(&args).expect_code(0);
    assert!(node.set_dir(&id).is_dir());
    std::fs::remove_dir_all(node.set_dir(&id)).unwrap();
    node.write_config(&target);
    // The copy there damaged: refused before a byte is fetched.
    damage_snapshot(&nfs.join("sets").join(&id));
    let run = node.run(&["restore-check", "--target", nfs_arg, &id]);
    run.expect_code(1);
    assert_check(&run.stdout, "set", "REFUSED");
    assert!(!node.set_dir(&id).exists(), "nothing fetched");
    // A set the target does not hold is named.
    let missing = id.replace("-master-0", "-master-9");
    node.run(&["restore-check", "--target", nfs_arg, &missing])
        .expect_code(1)
        .expect_stderr("no set");
}
