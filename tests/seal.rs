//! Sealed sets on real parts: keys made by `keygen`, sets signed at backup and sealed on their
//! way to a SeaweedFS bucket; the real `age` CLI opens what the bucket holds with the identity
//! files alone, `ssh-keygen -Y verify` checks the signatures, `etcdutl` restores the snapshot;
//! a set planted in the bucket without the signing key is refused.

use crate::util::s3::*;
use crate::util::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `etcd-backup keygen` into `out` (no config needed); the public part it prints.
fn keygen(out: &Path, signing: bool) -> String {
    let mut args = vec!["keygen", "--out", out.to_str().unwrap()];
    if signing {
        args.push("--signing");
    }
    let run = Run::from_output(Command::new(BIN).args(&args).output().unwrap(), &args);
    run.expect_code(0);
    run.stdout.trim().to_string()
}

/// Three keys in `dir`: the snapshot's and the resources archive's identities (kept apart),
/// and the signing key. Returns (snapshot recipient, resources recipient, signer line).
fn keys(dir: &Path) -> (String, String, String) {
    (
        keygen(&dir.join("snapshot-identity.txt"), false),
        keygen(&dir.join("resources-identity.txt"), false),
        keygen(&dir.join("signing_key"), true),
    )
}

fn seal_config(keys: &(String, String, String), signing_key: Option<&Path>) -> String {
    format!(
        "[seal]\nrecipients = [\"{}\"]\nresources_recipients = [\"{}\"]\nsigners = [\"{}\"]\n\
         require_signature = true\n{}\n",
        keys.0,
        keys.1,
        keys.2,
        signing_key.map_or(String::new(), |k| format!(
            "signing_key = \"{}\"",
            k.display()
        ))
    )
}

fn spray_config(endpoint: &str, bucket: &str, credentials: &Path) -> String {
    format!(
        "[spray]\netcd_env = \"\"\nattempts = 1\nio_timeout = \"5s\"\nconnect_timeout = \"2s\"\n{}",
        s3_target(endpoint, bucket, credentials, "")
    )
}

/// A node spraying to `bucket` with the `[seal]` of `keys` (`signing_key` when it signs).
fn sealed_node(
    endpoint: &str,
    bucket: &str,
    keys: &(String, String, String),
    signing_key: Option<&Path>,
) -> Node {
    let node = Node::new("");
    let credentials = credentials_file(node.dir.path(), SECRET_KEY);
    node.write_config(&format!(
        "{}{}",
        spray_config(endpoint, bucket, &credentials),
        seal_config(keys, signing_key)
    ));
    node
}

/// `fetch --from FROM ID` on `node` with both identities that `keys` made in `dir`.
fn fetch_with_identities(node: &Node, from: &str, dir: &Path, id: &str) -> Run {
    let (snapshot, resources) = (
        dir.join("snapshot-identity.txt"),
        dir.join("resources-identity.txt"),
    );
    node.run(&[
        "fetch",
        "--from",
        from,
        "--identity",
        snapshot.to_str().unwrap(),
        "--identity",
        resources.to_str().unwrap(),
        id,
    ])
}

/// `ssh-keygen -Y verify` of `signature` over `message`, trusting `signer`.
fn ssh_keygen_verifies(signer: &str, message: &Path, signature: &Path) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("allowed_signers");
    std::fs::write(
        &allowed,
        format!("etcd-backup namespaces=\"etcd-backup\" {signer}\n"),
    )
    .unwrap();
    let out = Command::new("ssh-keygen")
        .args([
            "-Y",
            "verify",
            "-I",
            "etcd-backup",
            "-n",
            "etcd-backup",
            "-f",
        ])
        .arg(&allowed)
        .arg("-s")
        .arg(signature)
        .stdin(std::fs::File::open(message).unwrap())
        .output()
        .unwrap();
    out.status.success()
}

fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `age -d -i identity` of `sealed` into `out`; whether it opened.
fn age_decrypts(identity: &Path, sealed: &Path, out: &Path) -> bool {
    Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(identity)
        .arg("-o")
        .arg(out)
        .arg(sealed)
        .output()
        .unwrap()
        .status
        .success()
}

fn manifest_of(node: &Node, id: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(node.set_dir(id).join("manifest.json")).unwrap()).unwrap()
}

/// What a sealed copy of the set whose files are `snapshot` and `resources` holds: each file
/// sealed, and the signed records; sorted.
fn sealed_copy_names(snapshot: &Path, resources: &Path) -> Vec<String> {
    let file_name = |p: &Path| p.file_name().unwrap().to_str().unwrap().to_string();
    let mut names = vec![
        format!("{}.age", file_name(snapshot)),
        format!("{}.age", file_name(resources)),
        "manifest.json".to_string(),
        "manifest.json.sig".to_string(),
        "seal.json".to_string(),
        "seal.json.sig".to_string(),
    ];
    names.sort();
    names
}

/// `verify --target TARGET --deep --identity IDENTITY` on `node`.
fn verify_deep(node: &Node, target: &str, identity: &str) -> Run {
    node.run(&[
        "verify",
        "--target",
        target,
        "--deep",
        "--identity",
        identity,
    ])
}

#[test]
fn sealed_sets_are_opaque_in_the_bucket_and_open_with_the_standard_tools_alone() {
    let endpoint = shared_endpoint();
    let bucket = new_bucket(&endpoint, false);
    let offline = tempfile::tempdir().unwrap();
    let keys = keys(offline.path());
    assert!(
        keys.0.starts_with("age1") && keys.2.starts_with("ssh-ed25519 "),
        "{keys:?}"
    );
    let signing_key = offline.path().join("signing_key");
    let node = sealed_node(&endpoint, &bucket, &keys, Some(&signing_key));
    node.run(&["check-config"])
        .expect_code(0)
        .expect_stdout("require_signature = true");

    // The origin signs at backup: the standard CLI verifies the signature of the manifest.
    let id = node.backup();
    let set = node.set_dir(&id);
    assert!(ssh_keygen_verifies(
        &keys.2,
        &set.join("manifest.json"),
        &set.join("manifest.json.sig")
    ));
    node.run(&["verify"]).expect_code(0);

    node.run(&["spray"]).expect_code(0).expect_stdout("(1 sent");
    let objects = tool_json(&endpoint, &["objects", &bucket, "cluster/"]);
    let names: Vec<String> = objects
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            o["key"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    let snapshot = set_file(&set, ".db");
    let resources = set_file(&set, ".tar.gz");
    let file_name = |p: &Path| p.file_name().unwrap().to_str().unwrap().to_string();
    let expected = sealed_copy_names(&snapshot, &resources);
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, expected, "only sealed files and signed records");

    // No byte of the bucket shows a key of the snapshot or the archive's secrets.
    let here = tempfile::tempdir().unwrap();
    let get = |name: &str| -> PathBuf {
        let out = here.path().join(name);
        tool_json(
            &endpoint,
            &[
                "get",
                &bucket,
                &format!("cluster/sets/{id}/{name}"),
                out.to_str().unwrap(),
            ],
        );
        out
    };
    let plain_snapshot = std::fs::read(&snapshot).unwrap();
    let needle = b"/registry/";
    assert!(plain_snapshot.windows(needle.len()).any(|w| w == needle));
    for name in &names {
        let bytes = std::fs::read(get(name)).unwrap();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "'{name}' holds a key of the snapshot in the clear"
        );
    }

    // The real age CLI opens each half with its own identity alone, and not with the other.
    let sealed_snapshot = get(&format!("{}.age", file_name(&snapshot)));
    let sealed_resources = get(&format!("{}.age", file_name(&resources)));
    let (snap_id, res_id) = (
        offline.path().join("snapshot-identity.txt"),
        offline.path().join("resources-identity.txt"),
    );
    let opened = here.path().join("snapshot.db");
    assert!(!age_decrypts(
        &res_id,
        &sealed_snapshot,
        &here.path().join("no")
    ));
    assert!(age_decrypts(&snap_id, &sealed_snapshot, &opened));
    let manifest = manifest_of(&node, &id);
    let digest_of = |name: &str| {
        manifest["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap()["sha256"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(sha256_file(&opened), digest_of(&file_name(&snapshot)));
    let opened_resources = here.path().join("resources.tar.gz");
    assert!(!age_decrypts(
        &snap_id,
        &sealed_resources,
        &here.path().join("no")
    ));
    assert!(age_decrypts(&res_id, &sealed_resources, &opened_resources));
    assert_eq!(
        sha256_file(&opened_resources),
        digest_of(&file_name(&resources))
    );
    // etcd restores what came out.
    let restored = here.path().join("restored");
    let out = Command::new(etcd_bin_dir().join("etcdutl"))
        .args(["snapshot", "restore"])
        .arg(&opened)
        .arg("--data-dir")
        .arg(&restored)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Both signatures verify with ssh-keygen.
    assert!(ssh_keygen_verifies(
        &keys.2,
        &get("manifest.json"),
        &get("manifest.json.sig")
    ));
    assert!(ssh_keygen_verifies(
        &keys.2,
        &get("seal.json"),
        &get("seal.json.sig")
    ));
    let seal: serde_json::Value =
        serde_json::from_slice(&std::fs::read(get("seal.json")).unwrap()).unwrap();
    assert_eq!(
        seal["files"][0]["recipients"][0].as_str().unwrap().len(),
        keys.0.len()
    );

    // Verified without any identity, from the record's digests; the spray sends nothing again.
    node.run(&["verify", "--target", &bucket])
        .expect_code(0)
        .expect_stdout(&format!("ok   {id}"));
    // --deep with the snapshot's identity opens it into this node's store, walks it and
    // removes it; an identity that is none of its recipients walks nothing, and says so (it
    // tells nothing of the copy: nothing is recorded as damaged).
    let (snap_text, res_text) = (snap_id.to_str().unwrap(), res_id.to_str().unwrap());
    verify_deep(&node, &bucket, snap_text)
        .expect_code(0)
        .expect_stdout(&format!("ok   {id}"));
    assert!(
        node.staging_entries().is_empty(),
        "{:?}",
        node.staging_entries()
    );
    verify_deep(&node, &bucket, res_text)
        .expect_code(0)
        .expect_stdout(&format!("ok   {id}"))
        .expect_stderr("is not walked: none of the identities given is among its recipients");
    node.run(&["spray"]).expect_code(0).expect_stdout("(0 sent");
    node.run(&["list", "--from", &bucket])
        .expect_code(0)
        .expect_stdout(&id);

    // A sealed object damaged at rest, its size kept: found without an identity, and the next
    // spray seals the set again from the sound local copy.
    let sealed_key = format!("cluster/sets/{id}/{}.age", file_name(&snapshot));
    tool_json(&endpoint, &["flip", &bucket, &sealed_key, "5000"]);
    node.run(&["verify", "--target", &bucket])
        .expect_code(1)
        .expect_stdout(&format!("BAD  {id}"));
    node.run(&["spray"]).expect_code(0).expect_stdout("(1 sent");
    node.run(&["verify", "--target", &bucket])
        .expect_code(0)
        .expect_stdout(&format!("ok   {id}"));

    // A node that lost everything: keys apart, the snapshot identity alone does not bring the
    // set back, and says which recipient is missing; both do.
    let fresh = sealed_node(&endpoint, &bucket, &keys, None);
    fresh
        .run(&["fetch", "--from", &bucket, "--identity", snap_text, &id])
        .expect_code(1)
        .expect_stderr(&format!("sealed to {}", keys.1));
    assert!(!fresh.set_dir(&id).exists());
    fetch_with_identities(&fresh, &bucket, offline.path(), &id)
        .expect_code(0)
        .expect_stdout(&format!("fetched set {id}"));
    assert_eq!(
        sha256_file(&set_file(&fresh.set_dir(&id), ".db")),
        digest_of(&file_name(&snapshot))
    );
    assert!(fresh.set_dir(&id).join("manifest.json.sig").is_file());
    fresh.run(&["verify", &id]).expect_code(0);
    let staged = tempfile::tempdir().unwrap();
    fresh
        .run(&["stage", &id, staged.path().join("s").to_str().unwrap()])
        .expect_code(0);
}

#[test]
fn a_set_planted_in_the_bucket_without_the_signing_key_is_refused_and_reported() {
    let endpoint = shared_endpoint();
    let bucket = new_bucket(&endpoint, false);
    let offline = tempfile::tempdir().unwrap();
    let keys = keys(offline.path());
    let owner = sealed_node(
        &endpoint,
        &bucket,
        &keys,
        Some(&offline.path().join("signing_key")),
    );
    let good = owner.backup();
    owner.run(&["spray"]).expect_code(0);

    // Someone who can write the bucket seals a sound set of their own to the right recipients,
    // claiming the same origin, without the signing key (a key of their own, untrusted).
    let theirs = tempfile::tempdir().unwrap();
    let their_key = theirs.path().join("signing_key");
    let their_signer = keygen(&their_key, true);
    let their_keys = (keys.0.clone(), keys.1.clone(), their_signer);
    let intruder = sealed_node(&endpoint, &bucket, &their_keys, Some(&their_key));
    let planted = intruder.backup();
    intruder.run(&["spray"]).expect_code(0);

    let verify = owner.run(&["verify", "--target", &bucket]);
    verify
        .expect_code(1)
        .expect_stdout(&format!("ok   {good}"))
        .expect_stdout(&format!("BAD  {planted}"))
        .expect_stdout("which is not among [seal] signers");
    let fresh = sealed_node(&endpoint, &bucket, &keys, None);
    fetch_with_identities(&fresh, &bucket, offline.path(), &planted)
        .expect_code(1)
        .expect_stderr(&format!("set '{planted}' is signed by SHA256:"))
        .expect_stderr("not among [seal] signers");
    assert!(!fresh.set_dir(&planted).exists());
    // The same set unsigned is refused as such.
    tool_json(
        &endpoint,
        &[
            "delete",
            &bucket,
            &format!("cluster/sets/{planted}/manifest.json.sig"),
        ],
    );
    fresh
        .run(&[
            "fetch",
            "--from",
            &bucket,
            "--identity",
            offline
                .path()
                .join("snapshot-identity.txt")
                .to_str()
                .unwrap(),
            &planted,
        ])
        .expect_code(1)
        .expect_stderr(&format!("set '{planted}' is not signed"));
}

#[test]
fn a_sealed_directory_target_holds_only_age_files_is_verified_healed_and_fetched() {
    let offline = tempfile::tempdir().unwrap();
    let keys = keys(offline.path());
    let export = tempfile::tempdir().unwrap();
    let target = export.path().join("etcd-backups");
    let dir_config = |keys: &(String, String, String), signing_key: Option<&Path>| {
        format!(
            "[spray]\netcd_env = \"\"\nattempts = 1\n\n[[spray.target]]\nkind = \"dir\"\npath = \"{}\"\n\
             require_mount = false\n\n{}",
            target.display(),
            seal_config(keys, signing_key)
        )
    };
    let node = Node::new("");
    node.write_config(&dir_config(
        &keys,
        Some(&offline.path().join("signing_key")),
    ));
    let id = node.backup();
    node.run(&["spray"]).expect_code(0).expect_stdout("(1 sent");

    let copy = target.join("sets").join(&id);
    let mut names: Vec<String> = std::fs::read_dir(&copy)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let snapshot = set_file(&node.set_dir(&id), ".db");
    let resources = set_file(&node.set_dir(&id), ".tar.gz");
    let file_name = |p: &Path| p.file_name().unwrap().to_str().unwrap().to_string();
    let sealed_snapshot = copy.join(format!("{}.age", file_name(&snapshot)));
    let expected = sealed_copy_names(&snapshot, &resources);
    assert_eq!(names, expected);
    let needle = b"/registry/";
    for name in &names {
        let bytes = std::fs::read(copy.join(name)).unwrap();
        assert!(!bytes.windows(needle.len()).any(|w| w == needle), "{name}");
    }
    let here = tempfile::tempdir().unwrap();
    let opened = here.path().join("snapshot.db");
    assert!(age_decrypts(
        &offline.path().join("snapshot-identity.txt"),
        &sealed_snapshot,
        &opened
    ));
    assert_eq!(sha256_file(&opened), sha256_file(&snapshot));
    assert!(ssh_keygen_verifies(
        &keys.2,
        &copy.join("seal.json"),
        &copy.join("seal.json.sig")
    ));
    let target_arg = target.to_str().unwrap();
    node.run(&["verify", "--target", target_arg])
        .expect_code(0)
        .expect_stdout(&format!("ok   {id}"));
    let snapshot_identity = offline.path().join("snapshot-identity.txt");
    verify_deep(&node, target_arg, snapshot_identity.to_str().unwrap())
        .expect_code(0)
        .expect_stdout(&format!("ok   {id}"));
    // The snapshot was opened in this node's store, never on the export, and is gone.
    assert!(node.staging_entries().is_empty());
    assert!(
        std::fs::read_dir(target.join(".staging"))
            .unwrap()
            .next()
            .is_none()
    );
    node.run(&["list", "--from", target_arg])
        .expect_code(0)
        .expect_stdout(&id)
        .expect_stdout(&format!("sealed: {} to {}", file_name(&snapshot), keys.0))
        .expect_stdout(&format!("sealed: {} to {}", file_name(&resources), keys.1));
    node.run(&["spray"]).expect_code(0).expect_stdout("(0 sent");

    // The record's signature gone: its copy is refused as the manifest's would be.
    let record_signature = std::fs::read(copy.join("seal.json.sig")).unwrap();
    std::fs::remove_file(copy.join("seal.json.sig")).unwrap();
    node.run(&["verify", "--target", target_arg])
        .expect_code(1)
        .expect_stdout(&format!("BAD  {id}"))
        .expect_stdout("the seal record '")
        .expect_stdout("seal.json' is not signed");
    std::fs::write(copy.join("seal.json.sig"), &record_signature).unwrap();

    // One byte of the sealed snapshot flipped at rest: found without an identity, and the next
    // spray seals the set again from the sound local copy.
    let mut bytes = std::fs::read(&sealed_snapshot).unwrap();
    bytes[5000] ^= 0xff;
    std::fs::write(&sealed_snapshot, &bytes).unwrap();
    node.run(&["verify", "--target", target_arg])
        .expect_code(1)
        .expect_stdout(&format!("BAD  {id}"));
    node.run(&["spray"]).expect_code(0).expect_stdout("(1 sent");
    node.run(&["verify", "--target", target_arg])
        .expect_code(0)
        .expect_stdout(&format!("ok   {id}"));

    // A node that lost its store gets the set back with both identities.
    let fresh = Node::new("");
    fresh.write_config(&dir_config(&keys, None));
    fresh
        .run(&["fetch", "--from", target_arg, &id])
        .expect_code(1)
        .expect_stderr("give --identity FILE");
    fetch_with_identities(&fresh, target_arg, offline.path(), &id).expect_code(0);
    assert_eq!(
        sha256_file(&set_file(&fresh.set_dir(&id), ".db")),
        sha256_file(&snapshot)
    );
    fresh.run(&["verify", &id]).expect_code(0);

    // Rotation: new recipients apply to new sets; the old set stays sealed to the old ones, and
    // each comes back with its own identities.
    let rotated = tempfile::tempdir().unwrap();
    let new_keys = (
        keygen(&rotated.path().join("snapshot-identity.txt"), false),
        keygen(&rotated.path().join("resources-identity.txt"), false),
        keys.2.clone(),
    );
    node.write_config(&dir_config(
        &new_keys,
        Some(&offline.path().join("signing_key")),
    ));
    let newer = node.backup();
    node.run(&["spray"]).expect_code(0).expect_stdout("(1 sent");
    let listed = node.run(&["list", "--from", target_arg]);
    listed
        .expect_code(0)
        .expect_stdout(&format!("sealed: {} to {}", file_name(&snapshot), keys.0))
        .expect_stdout(&format!(" to {}", new_keys.0));
    let newer_fresh = Node::new("");
    newer_fresh.write_config(&dir_config(&new_keys, None));
    let fetch_with =
        |dir: &Path, id: &str| fetch_with_identities(&newer_fresh, target_arg, dir, id);
    fetch_with(offline.path(), &newer).expect_code(1);
    fetch_with(rotated.path(), &newer).expect_code(0);
    fetch_with(offline.path(), &id).expect_code(0);
    newer_fresh.run(&["verify"]).expect_code(0);
}

/// `etcd-backup --config CONFIG check-config` on a node in FIPS mode: in a mount namespace of
/// its own whose `/proc/sys` (a tmpfs) says `crypto/fips_enabled = 1`.
fn check_config_in_fips_mode(node: &Node) -> Run {
    let script = format!(
        "mount --make-rprivate / && mount -t tmpfs none /proc/sys && mkdir /proc/sys/crypto \
         && echo 1 > /proc/sys/crypto/fips_enabled && exec {BIN} --config {} check-config",
        node.config_path().display()
    );
    let args = ["-m", "sh", "-c", &script];
    Run::from_output(Command::new("unshare").args(args).output().unwrap(), &args)
}

#[test]
fn a_fips_node_refuses_to_seal_or_sign_and_check_config_says_what_to_use() {
    let offline = tempfile::tempdir().unwrap();
    let keys = keys(offline.path());
    let node = Node::new("");
    node.write_config(&seal_config(&keys, None));
    check_config_in_fips_mode(&node)
        .expect_code(3)
        .expect_stderr("this node runs in FIPS mode (/proc/sys/crypto/fips_enabled = 1)")
        .expect_stderr("[seal] recipients, signers, require_signature needs")
        .expect_stderr("sse = \"aws:kms\"");
    // The same config outside FIPS mode is fine; without [seal], a FIPS node says what it uses.
    node.run(&["check-config"]).expect_code(0);
    node.write_config("");
    check_config_in_fips_mode(&node)
        .expect_code(0)
        .expect_stdout("# FIPS mode (/proc/sys/crypto/fips_enabled = 1)");
}

#[test]
fn only_a_deep_check_with_an_identity_finds_a_file_resealed_under_a_rewritten_record() {
    // Without signatures, someone who can write the export can seal other bytes to the same
    // recipients and rewrite the record: the identity-less check cannot tell, the deep check
    // with an identity opens the file and compares it with the manifest.
    let offline = tempfile::tempdir().unwrap();
    let keys = keys(offline.path());
    let export = tempfile::tempdir().unwrap();
    let target = export.path().join("store");
    let node = Node::new("");
    node.write_config(&format!(
        "[spray]\netcd_env = \"\"\nattempts = 1\n\n[[spray.target]]\nkind = \"dir\"\npath = \"{}\"\n\
         require_mount = false\n\n[seal]\nrecipients = [\"{}\"]\nresources_recipients = [\"{}\"]\n",
        target.display(),
        keys.0,
        keys.1
    ));
    let id = node.backup();
    node.run(&["spray"]).expect_code(0).expect_stdout("(1 sent");
    let copy = target.join("sets").join(&id);
    let snapshot = set_file(&node.set_dir(&id), ".db");
    let name = snapshot.file_name().unwrap().to_str().unwrap().to_string();

    let here = tempfile::tempdir().unwrap();
    let other = here.path().join("other.db");
    let mut bytes = std::fs::read(&snapshot).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&other, &bytes).unwrap();
    let sealed = copy.join(format!("{name}.age"));
    let out = Command::new("age")
        .args(["-r", &keys.0, "-o"])
        .arg(&sealed)
        .arg(&other)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut seal: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copy.join("seal.json")).unwrap()).unwrap();
    for file in seal["files"].as_array_mut().unwrap() {
        if file["name"] == name.as_str() {
            file["size"] = std::fs::metadata(&sealed).unwrap().len().into();
            file["sha256"] = sha256_file(&sealed).into();
        }
    }
    std::fs::write(
        copy.join("seal.json"),
        serde_json::to_vec_pretty(&seal).unwrap(),
    )
    .unwrap();

    let target_arg = target.to_str().unwrap();
    node.run(&["verify", "--target", target_arg])
        .expect_code(0)
        .expect_stdout(&format!("ok   {id}"));
    let identity = offline.path().join("snapshot-identity.txt");
    verify_deep(&node, target_arg, identity.to_str().unwrap())
        .expect_code(1)
        .expect_stdout(&format!("BAD  {id}"))
        .expect_stdout(&format!("{name}.age"))
        // The age CLI's file opened (with OpenSSL's ChaCha20-Poly1305): its bytes are what fails.
        .expect_stdout("trailer mismatch");
    assert!(node.staging_entries().is_empty());
}

#[test]
fn a_sealed_upload_cut_by_a_dead_server_is_sent_again_whole_and_says_what_it_wastes() {
    let mut server = S3Server::start();
    let endpoint = server.endpoint();
    let bucket = new_bucket(&endpoint, false);
    let offline = tempfile::tempdir().unwrap();
    let keys = keys(offline.path());
    let mut node = sealed_node(
        &endpoint,
        &bucket,
        &keys,
        Some(&offline.path().join("signing_key")),
    );
    node.use_etcd(big_etcd());
    let id = node.backup();
    let size = std::fs::metadata(set_file(&node.set_dir(&id), ".db"))
        .unwrap()
        .len();
    assert!(size > 6 * (5 << 20), "a snapshot of several parts: {size}");

    let mut spray = node.cmd(&["spray"]);
    spray
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = spray.spawn().unwrap();
    let credentials = node.dir.path().join("s3-credentials");
    let mut watch = crate::spray_s3::watcher(&endpoint, &bucket, &credentials);
    crate::spray_s3::wait_for_two_parts(&mut watch, &mut child);
    server.kill();
    let run = Run::from_output(child.wait_with_output().unwrap(), &["spray"]);
    run.expect_code(1).expect_stderr(&bucket);
    server.restart();
    let (held, uploads) = first_upload_bytes(&endpoint, &bucket);
    assert!(held >= 2 * (5 << 20), "{uploads}");

    // A sealed file cannot be continued: the cut upload is aborted, its bytes said, and the
    // whole set sealed and sent again — no more than what the manifest and the records hold.
    let again = node.run(&["spray"]);
    again
        .expect_code(0)
        .expect_stdout("(1 sent")
        .expect_stderr("is abandoned: a sealed file cannot be continued")
        .expect_stderr(&format!("its {held} bytes are sent again"));
    let objects = tool_json(&endpoint, &["objects", &bucket, "cluster/"]);
    let sealed: u64 = objects
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["key"].as_str().unwrap().ends_with(".age"))
        .map(|o| o["size"].as_u64().unwrap())
        .sum();
    assert_eq!(crate::spray_s3::sent_bytes(&again), sealed);
    assert_eq!(
        tool_json(&endpoint, &["uploads", &bucket]),
        serde_json::json!([])
    );
    node.run(&["verify", "--target", &bucket])
        .expect_code(0)
        .expect_stdout(&format!("ok   {id}"));
    let fresh = sealed_node(&endpoint, &bucket, &keys, None);
    fetch_with_identities(&fresh, &bucket, offline.path(), &id).expect_code(0);
    // Byte for byte the set that was taken (the signature with it).
    assert_eq!(
        fingerprint(&fresh.set_dir(&id)),
        fingerprint(&node.set_dir(&id))
    );
}
