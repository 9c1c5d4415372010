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

pub(crate) fn sent_bytes(run: &Run) -> u64 {
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

/// A test-side client of ours, only to watch an upload's progress (assertions use boto3).
/// Waits until the first multipart upload `watch` sees holds two parts; after 60 s, kills the
/// spray `child` and fails with its stderr.
pub(crate) fn wait_for_two_parts(
    watch: &mut etcd_backup::s3::Client,
    child: &mut std::process::Child,
) {
    let started = std::time::Instant::now();
    loop {
        let parts = watch
            .list_uploads("cluster/")
            .and_then(|u| match u.first() {
                Some(u) => watch.list_parts(&u.key, &u.upload_id).map(|p| p.len()),
                None => Ok(0),
            });
        if parts.as_ref().is_ok_and(|n| *n >= 2) {
            return;
        }
        if started.elapsed().as_secs() > 60 {
            let _ = child.kill();
            let mut stderr = String::new();
            if let Some(mut err) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
            }
            panic!("the upload never got under way: {parts:?}\n{stderr}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

pub(crate) fn watcher(
    endpoint: &str,
    bucket: &str,
    credentials: &std::path::Path,
) -> etcd_backup::s3::Client {
    let target = etcd_backup::config::S3Target {
        endpoint: endpoint.into(),
        bucket: bucket.into(),
        prefix: "cluster".into(),
        region: "us-east-1".into(),
        path_style: true,
        credentials: credentials.into(),
        profile: "default".into(),
        ca_file: None,
        sse: None,
        files: etcd_backup::config::Carried::All,
        part_size: 5 << 20,
        object_lock: None,
        gc_grace: std::time::Duration::from_secs(86_400),
        insecure_http: true,
        verify_every: std::time::Duration::from_secs(86_400),
        verify_bandwidth: 0,
        seal: None,
    };
    let timeout = std::time::Duration::from_secs(5);
    etcd_backup::s3::Client::open(&target, timeout, timeout).unwrap()
}

#[test]
fn a_server_killed_in_a_multipart_upload_fails_the_run_and_the_next_sends_only_missing_parts() {
    let mut server = S3Server::start();
    let endpoint = server.endpoint();
    let bucket = new_bucket(&endpoint, false);
    let mut node = Node::new("");
    node.use_etcd(big_etcd());
    let credentials = credentials_file(node.dir.path(), SECRET_KEY);
    spray_config(&node, "", &s3_target(&endpoint, &bucket, &credentials, ""));
    let id = node.backup();
    let snapshot = set_file(&node.set_dir(&id), ".db");
    let size = std::fs::metadata(&snapshot).unwrap().len();
    assert!(size > 6 * (5 << 20), "a snapshot of several parts: {size}");

    let mut spray = node.cmd(&["spray"]);
    spray
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = spray.spawn().unwrap();
    let mut watch = watcher(&endpoint, &bucket, &credentials);
    wait_for_two_parts(&mut watch, &mut child);
    server.kill();
    let killed = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    let run = Run::from_output(out, &["spray"]);
    // The only target failed: the run failed.
    run.expect_code(1).expect_stderr(&bucket);
    assert!(
        killed.elapsed().as_secs() < 30,
        "bounded: {:?}",
        killed.elapsed()
    );

    server.restart();
    let (held, uploads) = first_upload_bytes(&endpoint, &bucket);
    assert!(held >= 2 * (5 << 20), "{uploads}");
    let again = node.run(&["spray"]);
    again.expect_code(0).expect_stdout("(1 sent");
    let resources = std::fs::metadata(set_file(&node.set_dir(&id), ".tar.gz"))
        .unwrap()
        .len();
    let sent = sent_bytes(&again);
    assert!(
        sent == size - held + resources || sent == size - held,
        "sent {sent}: snapshot {size} less {held} held (+ resources {resources})"
    );
    assert_sets_on_bucket(&node, &endpoint, &bucket, std::slice::from_ref(&id));
    assert_eq!(
        tool_json(&endpoint, &["uploads", &bucket]),
        serde_json::json!([])
    );
    node.run(&["spray"])
        .expect_code(0)
        .expect_stdout("(0 sent, 0 bytes");

    // Back from the bucket alone, byte-identical and deep-verified.
    let original = fingerprint(&node.set_dir(&id));
    std::fs::remove_dir_all(node.store()).unwrap();
    node.run(&["fetch", "--from", &bucket, &id])
        .expect_code(0)
        .expect_stdout(&format!("fetched set {id} into"));
    assert_eq!(fingerprint(&node.set_dir(&id)), original);
    node.run(&["verify", "--deep"]).expect_code(0);
}

#[test]
fn bad_keys_a_missing_bucket_and_a_wrong_endpoint_fail_that_target_only() {
    let endpoint = shared_endpoint();
    let bucket = new_bucket(&endpoint, false);
    let node = Node::new("");
    let good = credentials_file(node.dir.path(), SECRET_KEY);
    let bad_dir = node.dir.path().join("bad");
    std::fs::create_dir(&bad_dir).unwrap();
    let bad = credentials_file(&bad_dir, "not-the-secret");
    let nfs = node.dir.path().join("nfs");
    let closed = format!("http://127.0.0.1:{}", free_port());
    let targets = [
        s3_target(&endpoint, &bucket, &bad, ""),
        s3_target(&endpoint, "no-such-bucket", &good, ""),
        s3_target(&closed, &bucket, &good, ""),
        format!(
            "\n[[spray.target]]\nkind = \"dir\"\npath = \"{}\"\nrequire_mount = false\n",
            nfs.display()
        ),
    ]
    .concat();
    spray_config(&node, "", &targets);
    let id = node.backup();
    let run = node.run(&["spray"]);
    run.expect_code(4)
        .expect_stderr(&format!("bucket '{bucket}' at {endpoint}"))
        .expect_stderr("access denied to the bucket")
        .expect_stderr(&format!("bucket 'no-such-bucket' at {endpoint}"))
        .expect_stderr("no such bucket")
        .expect_stderr(&format!("bucket '{bucket}' at {closed}"));
    assert!(!run.stderr.contains("not-the-secret") && !run.stderr.contains(SECRET_KEY));
    // The dir target got its set all the same.
    assert!(nfs.join("sets").join(&id).join("manifest.json").exists());
    // A readable credentials file is refused, named.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o644)).unwrap();
    spray_config(&node, "", &s3_target(&endpoint, &bucket, &good, ""));
    node.run(&["spray"]).expect_code(1).expect_stderr(&format!(
        "the credentials file '{}' is readable",
        good.display()
    ));
}

#[test]
fn target_retention_deletes_what_its_plan_drops_and_nothing_else() {
    let endpoint = shared_endpoint();
    let bucket = new_bucket(&endpoint, false);
    let node = Node::new("");
    let credentials = credentials_file(node.dir.path(), SECRET_KEY);
    let target = s3_target(&endpoint, &bucket, &credentials, "");
    spray_config(&node, "[retention]\nkeep_last = 10", &target);
    let ids: Vec<String> = (0..3).map(|_| node.backup()).collect();
    node.run(&["spray"]).expect_code(0).expect_stdout("(3 sent");
    let stray = format!("cluster/sets/{}/notes.txt", ids[0]);
    tool_json(&endpoint, &["put", &bucket, &stray, "mine"]);
    tool_json(&endpoint, &["put", &bucket, "cluster/sets/README", "mine"]);

    // The local history shrinks to one: nothing goes on the bucket.
    spray_config(&node, "[retention]\nkeep_last = 1", &target);
    node.run(&["prune"]).expect_code(0);
    spray_config(&node, "[retention]\nkeep_last = 10", &target);
    node.run(&["spray"]).expect_code(0);
    let sets_on = |objects: &BTreeMap<String, serde_json::Value>| -> Vec<String> {
        ids.iter()
            .filter(|id| objects.contains_key(&format!("cluster/sets/{id}/manifest.json")))
            .cloned()
            .collect()
    };
    assert_eq!(sets_on(&objects(&endpoint, &bucket)), ids);

    // The bucket's own policy keeps two: the oldest goes, its stray object and README stay.
    spray_config(&node, "[retention]\nkeep_last = 2", &target);
    node.run(&["spray"]).expect_code(0);
    let after = objects(&endpoint, &bucket);
    assert_eq!(sets_on(&after), ids[1..]);
    let left: Vec<&String> = after
        .keys()
        .filter(|k| k.starts_with(&format!("cluster/sets/{}/", ids[0])))
        .collect();
    assert_eq!(left, [&stray]);
    assert!(after.contains_key("cluster/sets/README"));
}

#[test]
fn locked_sets_stay_and_split_files_come_back_whole_from_two_buckets() {
    let endpoint = shared_endpoint();
    let locked = new_bucket(&endpoint, true);
    let other = new_bucket(&endpoint, false);
    let node = Node::new("");
    let credentials = credentials_file(node.dir.path(), SECRET_KEY);
    let targets = [
        s3_target(
            &endpoint,
            &locked,
            &credentials,
            "files = \"snapshot\"\nobject_lock_mode = \"GOVERNANCE\"\nobject_lock_days = 1",
        ),
        s3_target(&endpoint, &other, &credentials, "files = \"resources\""),
    ]
    .concat();
    spray_config(&node, "[retention]\nkeep_last = 10", &targets);
    let ids: Vec<String> = (0..2).map(|_| node.backup()).collect();
    node.run(&["spray"]).expect_code(0);
    let snapshot_only = objects(&endpoint, &locked);
    for (key, object) in &snapshot_only {
        assert!(
            key.ends_with(".db") || key.ends_with("manifest.json"),
            "{key}"
        );
        assert_eq!(object["lock_mode"], "GOVERNANCE", "{key}");
    }
    assert!(
        objects(&endpoint, &other)
            .keys()
            .all(|k| !k.ends_with(".db"))
    );
    // status says that no one bucket gives a set back alone.
    node.run(&["status"])
        .expect_code(0)
        .expect_stdout("no target holds whole sets alone");
    let status: serde_json::Value =
        serde_json::from_str(&node.run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(
        status["coverage"],
        serde_json::json!({"whole_on_one": false, "snapshot": true, "resources": true})
    );

    // Retention would drop the older set: locked, it stays, and the log says why.
    spray_config(&node, "[retention]\nkeep_last = 1", &targets);
    let run = node.run(&["spray"]);
    run.expect_code(0).expect_stderr("locked until");
    assert!(
        objects(&endpoint, &locked).contains_key(&format!("cluster/sets/{}/manifest.json", ids[0]))
    );
    assert!(
        !objects(&endpoint, &other).contains_key(&format!("cluster/sets/{}/manifest.json", ids[0]))
    );

    // Neither bucket alone holds the newest set whole; together they do.
    let original = fingerprint(&node.set_dir(&ids[1]));
    std::fs::remove_dir_all(node.store()).unwrap();
    // The listing shows the resources archive is not there: nothing is downloaded to learn it.
    node.run(&["fetch", "--from", &locked, &ids[1]])
        .expect_code(1)
        .expect_stderr("no source holds 'static_kuberesources_")
        .expect_stderr(&format!(
            "is not carried by bucket '{locked}' (files = \"snapshot\")"
        ));
    let run = node.run(&["fetch", &ids[1]]);
    run.expect_code(0)
        .expect_stdout(&format!(".db from bucket '{locked}'"))
        .expect_stdout(&format!(".tar.gz from bucket '{other}'"));
    assert_eq!(fingerprint(&node.set_dir(&ids[1])), original);
}

#[test]
fn an_https_bucket_is_trusted_by_its_ca_file_and_refused_under_another_ca() {
    let server = S3Server::start_tls();
    let endpoint = server.endpoint();
    assert!(endpoint.starts_with("https://"), "{endpoint}");
    let bucket = "tls-bucket";
    server.tool_json(&["mkbucket", bucket]);
    let node = Node::new("");
    let credentials = credentials_file(node.dir.path(), SECRET_KEY);
    let (other_ca, _) = make_ca(node.dir.path(), "other-ca");
    let nfs = node.dir.path().join("nfs");
    let dir_target = format!(
        "\n[[spray.target]]\nkind = \"dir\"\npath = \"{}\"\nrequire_mount = false\n",
        nfs.display()
    );
    let id = node.backup();

    // Another CA, and the system's CAs: both refuse the server, naming endpoint and bucket;
    // the dir target beside it gets the set all the same.
    for ca in [Some(other_ca.as_path()), None] {
        let extra = ca.map_or(String::new(), |ca| {
            format!("ca_file = \"{}\"", ca.display())
        });
        let targets = s3_target(&endpoint, bucket, &credentials, &extra) + &dir_target;
        spray_config(&node, "", &targets);
        let run = node.run(&["spray"]);
        let trusted = ca.map_or("a CA the system trusts".to_string(), |ca| {
            format!("signed by the CA in '{}'", ca.display())
        });
        run.expect_code(4)
            .expect_stderr(&format!("bucket '{bucket}' at {endpoint}"))
            .expect_stderr("certificate verify failed")
            .expect_stderr(&trusted);
        assert!(nfs.join("sets").join(&id).join("manifest.json").exists());
        let objects = server.tool_json(&["objects", bucket, "cluster/"]);
        assert_eq!(objects, serde_json::json!([]), "nothing reached the bucket");
    }

    // Its own CA: trusted, the set arrives whole.
    let extra = format!("ca_file = \"{}\"", server.ca().unwrap().display());
    spray_config(
        &node,
        "",
        &s3_target(&endpoint, bucket, &credentials, &extra),
    );
    node.run(&["spray"]).expect_code(0).expect_stdout("(1 sent");
    let objects = server.tool_json(&["objects", bucket, &format!("cluster/sets/{id}/")]);
    let by_name: BTreeMap<String, String> = objects
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let key = o["key"].as_str().unwrap();
            (
                key.rsplit('/').next().unwrap().to_string(),
                o["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let local: BTreeMap<String, String> = fingerprint(&node.set_dir(&id)).into_iter().collect();
    assert_eq!(by_name, local);
}

#[test]
fn sse_aes256_is_asked_for_and_every_stored_object_has_it() {
    let endpoint = shared_endpoint();
    let bucket = new_bucket(&endpoint, false);
    let mut node = Node::new("");
    node.use_etcd(big_etcd());
    let credentials = credentials_file(node.dir.path(), SECRET_KEY);
    spray_config(
        &node,
        "",
        &s3_target(&endpoint, &bucket, &credentials, "sse = \"AES256\""),
    );
    let id = node.backup();
    let snapshot = set_file(&node.set_dir(&id), ".db");
    let size = std::fs::metadata(&snapshot).unwrap().len();
    assert!(size > 2 * (5 << 20), "a multipart upload as well: {size}");
    node.run(&["spray"]).expect_code(0).expect_stdout("(1 sent");
    // The snapshot in parts, the resources and the manifest in one PUT each: all encrypted
    // as the server reports it to an independent client.
    let objects = objects(&endpoint, &bucket);
    assert_eq!(objects.len(), 3, "{objects:#?}");
    for (key, object) in &objects {
        assert_eq!(object["sse"], "AES256", "{key}");
    }
    assert_sets_on_bucket(&node, &endpoint, &bucket, std::slice::from_ref(&id));
}

/// Between our client and a real S3 server, as S3 answers a client it throttles: the first
/// request of a connection is answered `503 SlowDown` and the connection closed, unless the
/// same request (its signed request line) was refused before; then the connection passes
/// through untouched. Counts what it refused.
struct Throttle {
    port: u16,
    refused: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

impl Throttle {
    fn start(upstream: &str) -> Throttle {
        use std::io::{BufRead, Read, Write};
        use std::net::{TcpListener, TcpStream};
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let refused = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
        let seen = refused.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let (upstream, seen) = (upstream.clone(), seen.clone());
                std::thread::spawn(move || {
                    let mut reader = std::io::BufReader::new(client.try_clone().unwrap());
                    let mut head = String::new();
                    let mut length = 0u64;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        head.push_str(&line);
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            length = value.trim().parse().unwrap();
                        }
                    }
                    let request = head.lines().next().unwrap().to_string();
                    if seen.lock().unwrap().insert(request) {
                        std::io::copy(&mut reader.take(length), &mut std::io::sink()).unwrap();
                        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error>\
                                    <Code>SlowDown</Code><Message>Please reduce your request \
                                    rate.</Message></Error>";
                        let mut out = client;
                        let _ = write!(
                            out,
                            "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        return;
                    }
                    let Ok(mut server) = TcpStream::connect(&upstream) else {
                        return;
                    };
                    // What was read of the connection goes first, then the rest as it comes.
                    server.write_all(head.as_bytes()).unwrap();
                    server.write_all(reader.buffer()).unwrap();
                    pass(client, server);
                });
            }
        });
        Throttle { port, refused }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn refused(&self) -> usize {
        self.refused.lock().unwrap().len()
    }
}

/// Bytes both ways until either side closes.
fn pass(client: std::net::TcpStream, server: std::net::TcpStream) {
    let (mut client_in, mut server_out) =
        (client.try_clone().unwrap(), server.try_clone().unwrap());
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_in, &mut server_out);
        let _ = server_out.shutdown(std::net::Shutdown::Write);
    });
    let (mut server_in, mut client_out) = (server, client);
    let _ = std::io::copy(&mut server_in, &mut client_out);
    let _ = client_out.shutdown(std::net::Shutdown::Both);
    let _ = up.join();
}

#[test]
fn a_bucket_that_says_slow_down_gets_each_request_again_and_the_set_whole() {
    let endpoint = shared_endpoint();
    let bucket = new_bucket(&endpoint, false);
    let throttle = Throttle::start(&endpoint);
    let mut node = Node::new("");
    node.use_etcd(big_etcd());
    let credentials = credentials_file(node.dir.path(), SECRET_KEY);
    let target = s3_target(&throttle.endpoint(), &bucket, &credentials, "");
    spray_config(&node, "", &target);
    let id = node.backup();

    // One attempt of the target: each refused request (multipart parts side by side, the
    // manifest) is sent again by itself, and the log says so.
    node.run(&["spray"])
        .expect_code(0)
        .expect_stdout("(1 sent")
        .expect_stderr("SlowDown")
        .expect_stderr("trying again in");
    assert!(throttle.refused() >= 2, "{}", throttle.refused());
    assert_sets_on_bucket(&node, &endpoint, &bucket, std::slice::from_ref(&id));

    // Downloads too: a fetch through the same bucket gets every file.
    let refused = throttle.refused();
    let fresh = Node::new("");
    let credentials = credentials_file(fresh.dir.path(), SECRET_KEY);
    spray_config(
        &fresh,
        "",
        &s3_target(&throttle.endpoint(), &bucket, &credentials, ""),
    );
    fresh
        .run(&["fetch", "--from", &bucket, &id])
        .expect_code(0)
        .expect_stderr("SlowDown");
    assert!(throttle.refused() > refused);
    assert_eq!(
        fingerprint(&fresh.set_dir(&id)),
        fingerprint(&node.set_dir(&id))
    );
}
