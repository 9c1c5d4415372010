//! `spray` to an S3 bucket on a real S3 server (SeaweedFS on loopback), checked through boto3.

use crate::util::s3::*;
use crate::util::*;
use std::collections::BTreeMap;

/// key → object as boto3 sees it, under the target's prefix.
fn objects(endpoint: &str, bucket: &str) -> BTreeMap<String, serde_json::Value> {
    tool_json(endpoint, &["objects", bucket, "cluster/"])
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["key"].as_str().unwrap().to_string(), o.clone()))
        .collect()
}

fn spray_config(node: &Node, retention: &str, targets: &str) {
    node.write_config(&format!(
        "{retention}\n[spray]\netcd_env = \"\"\nattempts = 1\nio_timeout = \"5s\"\nconnect_timeout = \"2s\"\n{targets}"
    ));
}

/// Every set's files and manifest are on the bucket, byte for byte.
fn assert_sets_on_bucket(node: &Node, endpoint: &str, bucket: &str, ids: &[String]) {
    let objects = objects(endpoint, bucket);
    for id in ids {
        let dir = node.set_dir(id);
        for (name, digest) in fingerprint(&dir) {
            let key = format!("cluster/sets/{id}/{name}");
            let object = objects
                .get(&key)
                .unwrap_or_else(|| panic!("{key} missing from {objects:#?}"));
            assert_eq!(object["sha256"], digest.as_str(), "{key}");
            if name != "manifest.json" {
                assert_eq!(object["meta_sha256"], digest.as_str(), "{key}");
            }
        }
    }
}

fn sent_bytes(run: &Run) -> u64 {
    let line = run
        .stdout
        .lines()
        .find(|l| l.contains(" sent, "))
        .unwrap_or_else(|| panic!("no summary line in {}", run.stdout));
    line.split(" sent, ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn sets_reach_a_bucket_whole_and_a_second_run_uploads_nothing() {
    let endpoint = shared_endpoint();
    let bucket = new_bucket(&endpoint, false);
    let node = Node::new("");
    let credentials = credentials_file(node.dir.path(), SECRET_KEY);
    spray_config(&node, "", &s3_target(&endpoint, &bucket, &credentials, ""));
    let ids: Vec<String> = (0..2).map(|_| node.backup()).collect();

    let run = node.run(&["spray"]);
    run.expect_code(0).expect_stdout("(2 sent");
    assert_sets_on_bucket(&node, &endpoint, &bucket, &ids);
    // Unknown objects are left as they are.
    tool_json(&endpoint, &["put", &bucket, "cluster/sets/README", "mine"]);

    let again = node.run(&["spray"]);
    again.expect_code(0).expect_stdout("(0 sent, 0 bytes");
    assert!(objects(&endpoint, &bucket).contains_key("cluster/sets/README"));
    node.run(&["status"]).expect_code(0);
}
