//! Storage someone else administers, as an attacker (or a broken server) would answer `fetch`:
//! a bucket whose object bodies never end or claim a terabyte, whose listings never end, and an
//! NFS export whose manifest promises a terabyte. Every copy stops at what the manifest
//! promised, only if that fits above the free-space floor, and listings are bounded.

use crate::util::s3::{credentials_file, s3_target};
use crate::util::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How the fake bucket answers.
#[derive(Clone, Copy, PartialEq)]
enum Lie {
    /// The snapshot's body says 1 TiB (Content-Length) and then streams zeros.
    TerabyteBody,
    /// The snapshot's body is chunked and never ends.
    EndlessChunks,
    /// Listings that hand out the same two continuation tokens in turn.
    AlternatingTokens,
}

/// A bucket on loopback serving one real set (`files`: key under the set, bytes) as `lie` says;
/// it counts the bytes it sent of bodies.
struct FakeBucket {
    port: u16,
    sent: Arc<AtomicUsize>,
}

impl FakeBucket {
    fn start(id: &str, files: Vec<(String, Vec<u8>)>, lie: Lie) -> FakeBucket {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = Arc::new(AtomicUsize::new(0));
        let (id, counter) = (id.to_string(), sent.clone());
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { return };
                let (id, files, counter) = (id.clone(), files.clone(), counter.clone());
                std::thread::spawn(move || serve(tcp, &id, &files, lie, &counter));
            }
        });
        FakeBucket { port, sent }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn serve(tcp: TcpStream, id: &str, files: &[(String, Vec<u8>)], lie: Lie, sent: &AtomicUsize) {
    let mut reader = BufReader::new(tcp.try_clone().unwrap());
    let mut out = tcp;
    let mut pages = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        // The head, up to its empty line (no request here has a body).
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                break;
            }
        }
        let target = line.split(' ').nth(1).unwrap_or("/").to_string();
        let reply = |out: &mut TcpStream, head: &str, body: &[u8]| {
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\n{head}Content-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = out.write_all(body);
        };
        if target.contains("list-type=2") {
            pages += 1;
            let mut xml = String::from(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
                 <ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                 <Name>lying</Name><MaxKeys>1000</MaxKeys>",
            );
            for (name, bytes) in files {
                xml.push_str(&format!(
                    "<Contents><Key>cluster/sets/{id}/{name}</Key><Size>{}</Size></Contents>",
                    bytes.len()
                ));
            }
            if lie == Lie::AlternatingTokens {
                xml.push_str(&format!(
                    "<IsTruncated>true</IsTruncated><NextContinuationToken>{}</NextContinuationToken>",
                    ["a", "b"][pages % 2]
                ));
            }
            xml.push_str("</ListBucketResult>");
            reply(
                &mut out,
                "Content-Type: application/xml\r\n",
                xml.as_bytes(),
            );
            continue;
        }
        let Some((name, bytes)) = files.iter().find(|(n, _)| target.contains(n.as_str())) else {
            let _ = write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            continue;
        };
        if !name.starts_with("snapshot_") {
            reply(&mut out, "", bytes);
            continue;
        }
        let zeros = vec![0u8; 1 << 16];
        match lie {
            Lie::TerabyteBody => {
                let _ = write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    1u64 << 40
                );
                while out.write_all(&zeros).is_ok() {
                    sent.fetch_add(zeros.len(), Ordering::SeqCst);
                }
            }
            Lie::EndlessChunks => {
                let _ = write!(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
                while write!(out, "{:x}\r\n", zeros.len()).is_ok()
                    && out.write_all(&zeros).is_ok()
                    && out.write_all(b"\r\n").is_ok()
                {
                    sent.fetch_add(zeros.len(), Ordering::SeqCst);
                }
            }
            Lie::AlternatingTokens => reply(&mut out, "", bytes),
        }
        return;
    }
}

/// The files of one real set, as a bucket would hold them.
fn set_files(node: &Node, id: &str) -> Vec<(String, Vec<u8>)> {
    std::fs::read_dir(node.set_dir(id))
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect()
}

fn fetch_from_bucket(lie: Lie) -> (Run, usize, Duration, Node) {
    let source = Node::new("");
    let id = source.backup();
    let bucket = FakeBucket::start(&id, set_files(&source, &id), lie);
    let node = Node::new("");
    let credentials = credentials_file(node.dir.path(), "secret");
    node.write_config(&format!(
        "[spray]\netcd_env = \"\"\nio_timeout = \"5s\"\nconnect_timeout = \"2s\"\n{}",
        s3_target(&bucket.endpoint(), "lying", &credentials, "")
    ));
    let started = Instant::now();
    let run = node.run(&["fetch", "--from", "lying", &id]);
    let took = started.elapsed();
    assert!(node.set_ids().is_empty(), "nothing committed");
    assert!(node.staging_entries().is_empty(), "staging cleared");
    (run, bucket.sent.load(Ordering::SeqCst), took, node)
}

#[test]
fn a_bucket_body_that_claims_a_terabyte_is_refused_before_a_byte_is_kept() {
    let (run, _, took, _) = fetch_from_bucket(Lie::TerabyteBody);
    run.expect_code(1)
        .expect_stderr("HTTP response body over")
        .expect_stderr("bucket 'lying'");
    assert!(took < Duration::from_secs(20), "{took:?}");
}

#[test]
fn a_bucket_body_that_never_ends_stops_at_the_manifest_s_size() {
    let (run, sent, took, _) = fetch_from_bucket(Lie::EndlessChunks);
    run.expect_code(1).expect_stderr("HTTP response body over");
    // What was read is about the snapshot's size, not what the server would send.
    assert!(sent < 64 << 20, "{sent} bytes sent");
    assert!(took < Duration::from_secs(20), "{took:?}");
}

#[test]
fn a_listing_whose_tokens_come_back_ends_with_an_error() {
    let (run, _, took, _) = fetch_from_bucket(Lie::AlternatingTokens);
    run.expect_code(1)
        .expect_stderr("a continuation it gave before");
    assert!(took < Duration::from_secs(20), "{took:?}");
}

/// An NFS export someone else administers: its manifest of a set says the snapshot holds a
/// terabyte, and the file is a sparse terabyte to match.
#[test]
fn a_dir_source_that_promises_a_terabyte_is_refused_before_copying() {
    let source = Node::new("");
    let id = source.backup();
    let dir = source.set_dir(&id);
    let manifest_path = dir.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let snapshot = manifest["files"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|f| f["name"].as_str().unwrap().ends_with(".db"))
        .unwrap();
    snapshot["size"] = serde_json::json!(1u64 << 40);
    let name = snapshot["name"].as_str().unwrap().to_string();
    std::fs::write(
        &manifest_path,
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(&name))
        .unwrap()
        .set_len(1 << 40)
        .unwrap();

    let node = Node::new("");
    node.backup();
    let before = free_bytes(&node.store());
    let started = Instant::now();
    let run = node.run(&["fetch", "--from", source.store().to_str().unwrap(), &id]);
    run.expect_code(1)
        .expect_stderr(&format!(
            "set '{id}' needs {} bytes",
            (1u64 << 40) + manifest_bytes(&manifest)
        ))
        .expect_stderr(&node.store().display().to_string());
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        free_bytes(&node.store()) + (64 << 20) > before,
        "nothing was copied"
    );
    assert!(node.staging_entries().is_empty());
}

/// The bytes of the files other than the snapshot, as the manifest lists them.
fn manifest_bytes(manifest: &serde_json::Value) -> u64 {
    manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| !f["name"].as_str().unwrap().ends_with(".db"))
        .map(|f| f["size"].as_u64().unwrap())
        .sum()
}

fn free_bytes(path: &Path) -> u64 {
    let stat = nix::sys::statvfs::statvfs(path).unwrap();
    stat.blocks_available() * stat.fragment_size()
}

#[test]
fn state_files_that_are_fifos_or_links_to_dev_zero_neither_hang_nor_exhaust_a_run() {
    let node = Node::new("");
    node.backup();
    let store = node.store();
    // A FIFO and links to /dev/zero where the state files go (an NFS symlink resolves on the
    // master; a FIFO blocks a reader that opens it without O_NONBLOCK).
    for name in ["verify-state.json", "spray-state.json", "runs.json"] {
        let _ = std::fs::remove_file(store.join(name));
    }
    nix::unistd::mkfifo(
        &store.join("verify-state.json"),
        nix::sys::stat::Mode::S_IRWXU,
    )
    .unwrap();
    std::os::unix::fs::symlink("/dev/zero", store.join("spray-state.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", store.join("runs.json")).unwrap();
    let started = Instant::now();
    // (A run that writes a state file replaces the planted one: backup writes runs.json,
    // verify verify-state.json; each reads one that is still planted.)
    for args in [
        &["status", "--json"][..],
        &["list"],
        &["metrics"],
        &["backup"],
        &["verify"],
    ] {
        let mut child = node
            .cmd(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("etcd-backup {args:?} hangs on a planted state file");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut log = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut log)
            .unwrap();
        assert!(status.success(), "{args:?}: {log}");
        assert!(log.contains("state file ignored"), "{args:?}: {log}");
    }
    assert!(started.elapsed() < Duration::from_secs(60));
}
