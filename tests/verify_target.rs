//! `verify --target`: a target's copies checked against their manifests on real parts (a
//! SeaweedFS bucket on loopback, a directory store), the damage shown by `status` and
//! `metrics`, and healed by the next spray.

use crate::util::s3::*;
use crate::util::*;
use std::collections::BTreeMap;

/// key → boto3's sha256 of the object, under the target's prefix.
fn digests(endpoint: &str, bucket: &str) -> BTreeMap<String, String> {
    tool_json(endpoint, &["objects", bucket, "cluster/"])
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["key"].as_str().unwrap().to_string(),
                o["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn bucket_node() -> (Node, String, String) {
    let endpoint = shared_endpoint();
    let bucket = new_bucket(&endpoint, false);
    let node = Node::new("");
    let credentials = credentials_file(node.dir.path(), SECRET_KEY);
    node.write_config(&format!(
        "[spray]\netcd_env = \"\"\nattempts = 1\nio_timeout = \"5s\"\nconnect_timeout = \"2s\"\n{}",
        s3_target(&endpoint, &bucket, &credentials, "")
    ));
    (node, endpoint, bucket)
}

fn metric(node: &Node, name: &str) -> f64 {
    let text = node.run(&["metrics"]).expect_code(0).stdout.clone();
    text.lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_bucket_copy_damaged_at_the_same_size_is_found_shown_and_healed_byte_for_byte() {
    let (node, endpoint, bucket) = bucket_node();
    let ids: Vec<String> = (0..2).map(|_| node.backup()).collect();
    node.run(&["spray"]).expect_code(0);
    let good = digests(&endpoint, &bucket);
    // The checksum the server stored with each object put is kept: a later verification that
    // finds it unchanged needs no download.
    let kept: serde_json::Value =
        serde_json::from_slice(&std::fs::read(node.store().join("object-checksums.json")).unwrap())
            .unwrap();
    let kept = kept.as_object().unwrap().values().next().unwrap();
    let snapshot_key = |id: &str| {
        let name = set_file(&node.set_dir(id), ".db");
        format!(
            "cluster/sets/{id}/{}",
            name.file_name().unwrap().to_str().unwrap()
        )
    };
    assert!(kept[snapshot_key(&ids[1])].is_string(), "{kept:#}");
    node.run(&["verify", "--target", &bucket])
        .expect_code(0)
        .expect_stdout(&format!("ok   {}", ids[0]))
        .expect_stdout(&format!("ok   {}", ids[1]));
    // --deep downloads each snapshot to walk it, and leaves nothing behind.
    node.run(&["verify", "--target", &bucket, "--deep"])
        .expect_code(0)
        .expect_stdout(&format!("ok   {}", ids[1]));
    let staging: Vec<_> = std::fs::read_dir(node.store().join(".staging"))
        .unwrap()
        .collect();
    assert!(staging.is_empty(), "{staging:?}");

    // One byte of the newest snapshot flipped, its size and metadata kept: the listing and
    // the spray see nothing.
    let snapshot = set_file(&node.set_dir(&ids[1]), ".db");
    let name = snapshot.file_name().unwrap().to_str().unwrap();
    let key = format!("cluster/sets/{}/{name}", ids[1]);
    tool_json(&endpoint, &["flip", &bucket, &key, "5000"]);
    assert_ne!(digests(&endpoint, &bucket)[&key], good[&key]);
    node.run(&["spray"]).expect_code(0).expect_stdout("(0 sent");

    let verify = node.run(&["verify", "--target", &bucket]);
    verify
        .expect_code(1)
        .expect_stdout(&format!("ok   {}", ids[0]))
        .expect_stdout(&format!("BAD  {}", ids[1]))
        .expect_stdout(&format!("object '{key}': sha256 trailer mismatch"));
    node.run(&["status"])
        .expect_code(4)
        .expect_stdout(&format!("copy of {} DAMAGED", ids[1]));
    let status: serde_json::Value =
        serde_json::from_str(&node.run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(status["damaged_copies"][0]["id"], ids[1].as_str());
    assert_eq!(metric(&node, "etcd_backup_target_damaged_copies{"), 1.0);

    // The next spray puts the set again from the sound local copy, and says so.
    node.run(&["spray"])
        .expect_code(0)
        .expect_stdout("(1 sent")
        .expect_stderr(&format!("damaged copy of {} on", ids[1]));
    assert_eq!(digests(&endpoint, &bucket), good, "byte-identical again");
    node.run(&["status"]).expect_code(0);
    assert_eq!(metric(&node, "etcd_backup_target_damaged_copies{"), 0.0);
    assert_eq!(
        metric(&node, "etcd_backup_target_healed_copies_total{"),
        1.0
    );
    node.run(&["verify", "--target", &bucket]).expect_code(0);
}

#[test]
fn a_deleted_object_is_named_from_the_listing_and_a_missing_set_is_reported() {
    let (node, endpoint, bucket) = bucket_node();
    let id = node.backup();
    node.run(&["spray"]).expect_code(0);
    let resources = set_file(&node.set_dir(&id), ".tar.gz");
    let name = resources.file_name().unwrap().to_str().unwrap();
    let key = format!("cluster/sets/{id}/{name}");
    tool_json(&endpoint, &["delete", &bucket, &key]);
    node.run(&["verify", "--target", &bucket, &id])
        .expect_code(1)
        .expect_stdout(&format!("object '{key}' is missing from bucket '{bucket}'"));
    node.run(&["verify", "--target", &bucket, "20200101T000000.000Z-gone"])
        .expect_code(1)
        .expect_stdout("no set '20200101T000000.000Z-gone' in bucket");
    node.run(&["spray"]).expect_code(0).expect_stdout("(1 sent");
    node.run(&["verify", "--target", &bucket]).expect_code(0);
    // A truncated object: its size in the listing says so.
    let snapshot = set_file(&node.set_dir(&id), ".db");
    let snapshot = format!(
        "cluster/sets/{id}/{}",
        snapshot.file_name().unwrap().to_str().unwrap()
    );
    tool_json(&endpoint, &["put", &bucket, &snapshot, "truncated"]);
    node.run(&["verify", "--target", &bucket])
        .expect_code(1)
        .expect_stdout(&format!(
            "object '{snapshot}' holds 9 bytes, its manifest says"
        ));
    node.run(&["spray"]).expect_code(0).expect_stdout("(1 sent");
    node.run(&["verify", "--target", &bucket]).expect_code(0);
}

#[test]
fn a_directory_copy_damaged_at_rest_is_found_and_healed() {
    let node = Node::new("");
    let nfs = node.dir.path().join("nfs");
    node.write_config(&format!(
        "[spray]\netcd_env = \"\"\nattempts = 1\n[[spray.target]]\nkind = \"dir\"\npath = \"{}\"\nrequire_mount = false\n",
        nfs.display()
    ));
    let id = node.backup();
    node.run(&["spray"]).expect_code(0);
    let copy = nfs.join("sets").join(&id);
    let snapshot = set_file(&copy, ".db");
    let sound = std::fs::read(&snapshot).unwrap();
    let mut bytes = sound.clone();
    bytes[5000] ^= 0xFF;
    std::fs::write(&snapshot, &bytes).unwrap();
    let target = format!("dir:{}", nfs.display());
    node.run(&["verify", "--target", &target])
        .expect_code(1)
        .expect_stdout(&format!("BAD  {id}"));
    node.run(&["status"])
        .expect_code(4)
        .expect_stdout("DAMAGED");
    node.run(&["spray"]).expect_code(0).expect_stdout("(1 sent");
    assert_eq!(std::fs::read(&snapshot).unwrap(), sound);
    node.run(&["verify", "--target", &target]).expect_code(0);
    node.run(&["status"]).expect_code(0);
}

#[test]
fn list_from_a_bucket_on_a_node_without_a_store_shows_every_set_and_what_is_whole() {
    let (node, endpoint, bucket) = bucket_node();
    let ids: Vec<String> = (0..2).map(|_| node.backup()).collect();
    node.run(&["spray"]).expect_code(0);
    node.run(&["verify", "--target", &bucket]).expect_code(0);
    // What the sender knows: the copies verified.
    node.run(&["list", "--from", &bucket])
        .expect_code(0)
        .expect_stdout(&ids[0])
        .expect_stdout("yes (");

    // A new node with only the bucket configured and no store at all.
    let fresh = Node::new("");
    let credentials = credentials_file(fresh.dir.path(), SECRET_KEY);
    fresh.write_config(&format!(
        "[spray]\netcd_env = \"\"\n{}",
        s3_target(&endpoint, &bucket, &credentials, "")
    ));
    assert!(!fresh.store().exists());
    fresh
        .run(&["list"])
        .expect_code(1)
        .expect_stderr("no store at")
        .expect_stderr("etcd-backup list --from TARGET");
    let resources = set_file(&node.set_dir(&ids[0]), ".tar.gz");
    let name = resources.file_name().unwrap().to_str().unwrap();
    tool_json(
        &endpoint,
        &[
            "delete",
            &bucket,
            &format!("cluster/sets/{}/{name}", ids[0]),
        ],
    );
    let text = fresh.run(&["list", "--from", &bucket]);
    text.expect_code(0)
        .expect_stdout("2 set(s)")
        .expect_stdout("not yet");
    let line = |id: &str| {
        text.stdout
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap()
            .to_string()
    };
    assert!(line(&ids[0]).contains(" NO "), "{}", text.stdout);
    assert!(line(&ids[1]).contains(" yes "), "{}", text.stdout);
    let json: serde_json::Value =
        serde_json::from_str(&fresh.run(&["list", "--from", &bucket, "--json"]).stdout).unwrap();
    let sets = json.as_array().unwrap();
    assert_eq!(sets.len(), 2);
    assert_eq!(sets[0]["id"], ids[0].as_str());
    assert_eq!(sets[0]["whole"], false);
    assert_eq!(sets[1]["whole"], true);
    assert_eq!(sets[1]["origin"], "master-0");
    assert!(sets[1]["etcd"]["revision"].as_u64().is_some(), "{json:#}");
    assert!(!fresh.store().exists(), "listing made no store");
    fresh
        .run(&["list", "--from", "nosuch"])
        .expect_code(1)
        .expect_stderr("'nosuch' is neither a directory");
}

#[test]
fn fetch_names_an_object_missing_from_the_bucket_before_downloading_anything() {
    let (node, endpoint, bucket) = bucket_node();
    let id = node.backup();
    node.run(&["spray"]).expect_code(0);
    let resources = set_file(&node.set_dir(&id), ".tar.gz");
    let name = resources.file_name().unwrap().to_str().unwrap().to_string();
    let key = format!("cluster/sets/{id}/{name}");
    tool_json(&endpoint, &["delete", &bucket, &key]);
    std::fs::remove_dir_all(node.store()).unwrap();
    let run = node.run(&["fetch", &id]);
    run.expect_code(1)
        .expect_stderr(&format!("no source holds '{name}' of set '{id}'"))
        .expect_stderr(&format!("object '{key}' is missing from bucket '{bucket}'"));
}

#[test]
fn the_verify_timer_checks_each_target_when_it_is_due_and_then_waits() {
    let endpoint = shared_endpoint();
    let (due, never) = (new_bucket(&endpoint, false), new_bucket(&endpoint, false));
    let node = Node::new("");
    let credentials = credentials_file(node.dir.path(), SECRET_KEY);
    node.write_config(&format!(
        "[spray]\netcd_env = \"\"\nattempts = 1\n{}{}",
        s3_target(&endpoint, &due, &credentials, "verify_every = \"1h\"\n"),
        s3_target(&endpoint, &never, &credentials, "verify_every = \"0s\"\n"),
    ));
    let id = node.backup();
    node.run(&["spray"]).expect_code(0);
    let first = node.run(&["verify", "--targets"]);
    first
        .expect_code(0)
        .expect_stdout(&format!("ok   {id}"))
        .expect_stdout(&format!("ok   {id}  on bucket '{due}'"))
        .expect_stdout(&format!("not yet due: bucket '{never}'"));
    assert!(!first.stdout.contains(&format!("on bucket '{never}'")));
    // Checked a moment ago: not due for another hour.
    let second = node.run(&["verify", "--targets"]);
    second
        .expect_code(0)
        .expect_stdout(&format!("not yet due: bucket '{due}'"));
    // By hand, a target is checked whatever its schedule, and damage fails the run.
    let snapshot = set_file(&node.set_dir(&id), ".db");
    let name = snapshot.file_name().unwrap().to_str().unwrap();
    tool_json(
        &endpoint,
        &["flip", &due, &format!("cluster/sets/{id}/{name}"), "100"],
    );
    node.run(&["verify", "--target", &due])
        .expect_code(1)
        .expect_stdout("BAD");
}

#[test]
fn a_peer_checks_its_copy_of_our_set_itself_and_the_next_spray_heals_it() {
    let lab = crate::util::lab::Lab::new();
    let id = lab.backup(0);
    let sender = &lab.hosts[0];
    sender.run(&["spray"]).expect_code(0);
    let peer = &lab.hosts[1];
    // As etcd.env names it, and as spray reports it.
    let target = "ssh:lab-master-1";
    sender
        .run(&["verify", "--target", target])
        .expect_code(0)
        .expect_stdout(&format!("ok   {id}  on lab-master-1"));

    // The peer's copy damaged at rest (one byte, same size).
    let copy = set_file(&peer.store().join("sets").join(&id), ".db");
    let sound = std::fs::read(&copy).unwrap();
    flip_byte(&copy, None, 0x01);
    sender
        .run(&["verify", "--target", target])
        .expect_code(1)
        .expect_stdout(&format!("BAD  {id}  on lab-master-1"))
        .expect_stdout("sha256 trailer mismatch");
    // The peer keeps its own finding, and says so in its list.
    peer.run(&["list"]).expect_stdout("NO: failed verification");
    sender
        .run(&["status"])
        .expect_code(4)
        .expect_stdout(&format!("copy of {id} DAMAGED"));

    // A set of another origin is not the sender's to have checked.
    sender
        .run(&[
            "verify",
            "--target",
            target,
            "20200101T000000.000Z-someone-else",
        ])
        .expect_code(1)
        .expect_stdout("not a set of");

    sender.run(&["spray"]).expect_code(0);
    assert_eq!(std::fs::read(&copy).unwrap(), sound, "healed byte for byte");
    sender.run(&["verify", "--target", target]).expect_code(0);
    sender.run(&["status"]).expect_code(0);
}

#[test]
fn damaged_resources_and_manifests_on_a_bucket_are_found_and_put_again() {
    let (node, endpoint, bucket) = bucket_node();
    let ids: Vec<String> = (0..2).map(|_| node.backup()).collect();
    node.run(&["spray"]).expect_code(0);
    let good = digests(&endpoint, &bucket);
    let key = |id: &str, name: &str| format!("cluster/sets/{id}/{name}");
    // The first set: a byte of its resources archive flipped; the second: its manifest put
    // again with one character changed (still a manifest of that set, but not its manifest).
    let resources = set_file(&node.set_dir(&ids[0]), ".tar.gz");
    let resources = key(&ids[0], resources.file_name().unwrap().to_str().unwrap());
    tool_json(&endpoint, &["flip", &bucket, &resources, "100"]);
    let manifest = std::fs::read_to_string(node.set_dir(&ids[1]).join("manifest.json")).unwrap();
    let at = manifest.find("\"tool_version\"").unwrap() + "\"tool_version\": \"".len();
    let mut forged = manifest.clone().into_bytes();
    forged[at] = if forged[at] == b'9' { b'8' } else { b'9' };
    let forged = String::from_utf8(forged).unwrap();
    assert_ne!(forged, manifest);
    tool_json(
        &endpoint,
        &["put", &bucket, &key(&ids[1], "manifest.json"), &forged],
    );

    let verify = node.run(&["verify", "--target", &bucket]);
    verify
        .expect_code(1)
        .expect_stdout(&format!("BAD  {}", ids[0]))
        .expect_stdout(&format!("object '{resources}' does not match the manifest"))
        .expect_stdout(&format!("BAD  {}", ids[1]))
        .expect_stdout("is not the one of set");
    node.run(&["status"]).expect_code(4);
    node.run(&["spray"]).expect_code(0).expect_stdout("(2 sent");
    assert_eq!(digests(&endpoint, &bucket), good, "byte-identical again");
    node.run(&["verify", "--target", &bucket]).expect_code(0);
    node.run(&["status"]).expect_code(0);
}

#[test]
fn a_damaged_copy_on_a_read_only_export_is_reported_and_kept() {
    let node = Node::new("");
    let nfs = node.dir.path().join("nfs");
    let _export = SmallFs::mount(&nfs, 256);
    // A small export: a floor there of its own size.
    node.write_config(&format!(
        "[retention]\nkeep_last = 10\nmin_free_space = \"16MiB\"\n\
         [spray]\netcd_env = \"\"\nattempts = 1\n[[spray.target]]\nkind = \"dir\"\npath = \"{}\"\n",
        nfs.display()
    ));
    let id = node.backup();
    node.run(&["spray"]).expect_code(0);
    let snapshot = set_file(&nfs.join("sets").join(&id), ".db");
    flip_byte(&snapshot, None, 0x01);
    let damaged = std::fs::read(&snapshot).unwrap();
    let remount = |mode: &str| {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&nfs)
            .status()
            .unwrap();
        assert!(status.success(), "remount {mode}");
    };
    remount("ro");
    let target = format!("dir:{}", nfs.display());
    node.run(&["verify", "--target", &target])
        .expect_code(1)
        .expect_stdout(&format!("BAD  {id}"))
        .expect_stderr("could not be recorded");
    node.run(&["status"])
        .expect_code(4)
        .expect_stdout(&format!("copy of {id} DAMAGED"));
    // The spray cannot write there: it fails, and the damaged copy is neither replaced nor lost.
    node.run(&["spray"]).expect_code(1);
    assert_eq!(std::fs::read(&snapshot).unwrap(), damaged);
    node.run(&["status"])
        .expect_code(4)
        .expect_stdout("DAMAGED");
    remount("rw");
    node.run(&["spray"]).expect_code(0).expect_stdout("(1 sent");
    node.run(&["verify", "--target", &target]).expect_code(0);
}
