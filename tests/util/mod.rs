//! Test fixtures on real parts: one real etcd on loopback per test binary, loaded with data,
//! and per-test "nodes" (a fake /etc/kubernetes, a store, a config) that drive the real binary
//! with the `cluster-backup.sh` stand-in from `tests/lab/`.

#![allow(dead_code)]

pub mod lab;
pub mod s3;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_etcd-backup");
const ETCD_START_SECS: u64 = 30;
/// Keys loaded into the test etcd (1 KiB values): a snapshot of ~3 MB.
const LOADED_KEYS: usize = 2_000;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A binary the README test command builds (`how` says how, for the failure message).
fn built(relative: &str, how: &str) -> PathBuf {
    let binary = repo().join(relative);
    assert!(
        binary.is_file(),
        "{} is missing: {how} first (the README test command does)",
        binary.display()
    );
    binary
}

/// The release binary, the one the image carries.
pub fn release_binary() -> PathBuf {
    built("target/release/etcd-backup", "`cargo build --release`")
}

/// A release binary with another version (`…+lab.next`): the upgrade the lab rolls out.
pub fn next_release_binary() -> PathBuf {
    built(
        "target/lab/etcd-backup-next",
        "`ETCD_BACKUP_VERSION=…+lab.next cargo build --release`, copied there,",
    )
}

/// `render machineconfig` for the release binary with `node_config` as every master's
/// config.toml and `delivery` (`--image REF@sha256:…`; `--binary FILE` or `--binary-sha256 HEX`
/// to pin another binary than the release one); the YAML.
pub fn render_release_machineconfig(node_config: &str, delivery: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, node_config).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["render", "machineconfig", "--config", "/dev/null"])
        .arg("--node-config")
        .arg(&path);
    if !delivery.iter().any(|a| a.starts_with("--binary")) {
        cmd.arg("--binary").arg(release_binary());
    }
    let output = cmd.args(delivery).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    output.stdout
}

pub fn standin() -> PathBuf {
    repo().join("tests/lab/cluster-backup")
}

/// Where `tests/lab/install-deps` put etcd 3.5 (override with ETCD_BIN_DIR).
pub fn etcd_bin_dir() -> PathBuf {
    let dir = std::env::var_os("ETCD_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("ETCD_BACKUP_CACHE")
                .unwrap_or("/var/cache/etcd-backup-lab".into());
            PathBuf::from(cache).join("etcd-v3.5.1")
        });
    assert!(
        dir.join("etcdutl").is_file(),
        "etcd binaries not found in '{}': run tests/lab/install-deps first (the README test command does)",
        dir.display()
    );
    dir
}

pub struct Etcd {
    pub endpoint: String,
    pub bin_dir: PathBuf,
    _data: tempfile::TempDir,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The shared etcd of this test binary, started on first use and killed when the binary exits
/// (PR_SET_PDEATHSIG from a thread that lives as long as the process).
pub fn etcd() -> &'static Etcd {
    static ETCD: OnceLock<Etcd> = OnceLock::new();
    ETCD.get_or_init(|| {
        let etcd = Etcd::start();
        etcd.load(LOADED_KEYS);
        etcd
    })
}

/// A second etcd of this test binary holding ~40 MiB, for snapshots of several S3 parts.
pub fn big_etcd() -> &'static Etcd {
    static ETCD: OnceLock<Etcd> = OnceLock::new();
    ETCD.get_or_init(|| {
        let etcd = Etcd::start();
        for batch in 0..40 {
            let puts: Vec<String> = (0..10)
                .map(|i| {
                    let value = format!("{batch:04}{i:02}").repeat(17_000);
                    format!("/registry/big/key-{batch:04}-{i:02} {value}")
                })
                .collect();
            etcd.txn_put(&puts);
        }
        etcd
    })
}

impl Etcd {
    /// An etcd of its own on loopback (empty), killed when the test binary exits.
    pub fn start() -> Etcd {
        let bin_dir = etcd_bin_dir();
        let data = tempfile::tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(data.path().join("etcd.log")).unwrap();
        let mut cmd = Command::new(bin_dir.join("etcd"));
        cmd.args(["--name", "test", "--data-dir"])
            .arg(data.path().join("data"))
            .args([
                "--listen-client-urls",
                &endpoint,
                "--advertise-client-urls",
                &endpoint,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("test={peer_url}")])
            // etcd's largest quota, as large clusters set it (benchmarks load up to 8 GiB).
            .args(["--quota-backend-bytes", "8589934592"])
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
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let child = cmd.spawn();
            let ok = child.is_ok();
            tx.send(child.map(|_| ()).map_err(|e| e.to_string()))
                .unwrap();
            if ok {
                // The death signal fires when this thread ends: keep it for the whole run.
                loop {
                    std::thread::park();
                }
            }
        });
        rx.recv().unwrap().expect("cannot start etcd");
        let etcd = Etcd {
            endpoint,
            bin_dir,
            _data: data,
        };
        let start = Instant::now();
        while !etcd.etcdctl(&["endpoint", "health"]).status.success() {
            assert!(
                start.elapsed() < Duration::from_secs(ETCD_START_SECS),
                "etcd did not become healthy"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        etcd
    }

    /// etcd's data directory (its WAL names the cluster).
    pub fn data_dir(&self) -> PathBuf {
        self._data.path().join("data")
    }

    pub fn etcdctl(&self, args: &[&str]) -> Output {
        Command::new(self.bin_dir.join("etcdctl"))
            .arg(format!("--endpoints={}", self.endpoint))
            .args(args)
            .output()
            .unwrap()
    }

    /// Puts `keys` keys of 1 KiB through `etcdctl txn`, 100 puts per transaction.
    fn load(&self, keys: usize) {
        let value = "v".repeat(1024);
        for batch in (0..keys).collect::<Vec<_>>().chunks(100) {
            let puts: Vec<String> = batch
                .iter()
                .map(|key| format!("/registry/test/key-{key:06} {value}"))
                .collect();
            self.txn_put(&puts);
        }
    }

    /// One transaction of `put <key> <value>` lines (values without spaces or quotes).
    pub fn txn_put(&self, puts: &[String]) {
        // An empty first line: no compares; an empty line ends the puts, another the (empty)
        // failure ops.
        let mut txn = String::from("\n");
        for put in puts {
            txn.push_str(&format!("put {put}\n"));
        }
        txn.push_str("\n\n");
        let mut cmd = Command::new(self.bin_dir.join("etcdctl"));
        cmd.arg(format!("--endpoints={}", self.endpoint))
            .args(["txn", "--command-timeout=60s"]);
        let out = run_with_stdin(cmd, txn.as_bytes());
        assert!(
            out.status.success(),
            "etcdctl txn failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// One simulated master: a fake /etc/kubernetes, a store and a config file in a temp dir.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub env: BTreeMap<String, String>,
}

impl Node {
    /// A node whose config is `[node]`, `[store]`, `[backup]` defaults for tests plus `extra`.
    pub fn new(extra: &str) -> Node {
        let etcd = etcd();
        let dir = tempfile::tempdir().unwrap();
        let kube = dir.path().join("kubernetes/static-pod-resources");
        // Two revisions of kube-apiserver: the newer (by mtime) must be the one archived.
        for (pod, age_secs) in [
            ("kube-apiserver-pod-3", 7200),
            ("kube-apiserver-pod-4", 60),
            ("kube-controller-manager-pod-2", 60),
            ("kube-scheduler-pod-5", 60),
            ("etcd-pod-2", 60),
        ] {
            let pod_dir = kube.join(pod);
            std::fs::create_dir_all(pod_dir.join("configmaps/config")).unwrap();
            std::fs::write(
                pod_dir.join("configmaps/config/config.yaml"),
                format!("pod: {pod}\n"),
            )
            .unwrap();
            std::fs::create_dir_all(pod_dir.join("secrets/serving-cert")).unwrap();
            std::fs::write(
                pod_dir.join("secrets/serving-cert/tls.key"),
                "-----BEGIN PRIVATE KEY-----\n",
            )
            .unwrap();
            let when = std::time::SystemTime::now() - Duration::from_secs(age_secs);
            std::fs::File::open(&pod_dir)
                .unwrap()
                .set_modified(when)
                .unwrap();
        }
        let mut env = BTreeMap::new();
        env.insert(
            "STANDIN_ETCDCTL".into(),
            etcd.bin_dir.join("etcdctl").display().to_string(),
        );
        env.insert("STANDIN_ENDPOINTS".into(), etcd.endpoint.clone());
        env.insert(
            "STANDIN_CONFIG_DIR".into(),
            dir.path().join("kubernetes").display().to_string(),
        );
        let node = Node { dir, env };
        node.write_config(extra);
        node
    }

    /// Backups of this node snapshot `etcd` instead of the shared one.
    pub fn use_etcd(&mut self, etcd: &Etcd) {
        self.env
            .insert("STANDIN_ENDPOINTS".into(), etcd.endpoint.clone());
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("etc/config.toml")
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The node's `/` for the facts of its cluster (`[cluster] root`): empty unless a test
    /// lays files there.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Writes the config: test defaults, then `extra` tables (other than `[node]`, `[store]`,
    /// `[backup]`; without a `[retention]` table, `keep_last = 10`).
    pub fn write_config(&self, extra: &str) {
        self.write_config_with("", "", extra);
    }

    /// Like `write_config`, with extra keys for the `[store]` and `[backup]` tables.
    pub fn write_config_with(&self, store_keys: &str, backup_keys: &str, extra: &str) {
        let timeout = if backup_keys.contains("timeout") {
            ""
        } else {
            "timeout = \"60s\"\n"
        };
        let retention = if extra.contains("[retention]") {
            ""
        } else {
            "[retention]\nkeep_last = 10\n"
        };
        // The node's own files (release, etcd's WAL, etcd.env) are this node's, not the host's.
        let cluster = if extra.contains("[cluster]") {
            String::new()
        } else {
            format!("\n[cluster]\nroot = \"{}\"\n", self.root().display())
        };
        self.write_config_raw(&format!(
            "[node]\nname = \"master-0\"\n\n[store]\nroot = \"{}\"\n{store_keys}\n\n\
             [backup]\ncommand = \"{}\"\n{timeout}{backup_keys}\n\n{retention}{extra}{cluster}",
            self.store().display(),
            standin().display()
        ));
    }

    /// The config as written, except that the free-space floor is its 5 GiB alone unless the
    /// test says otherwise: the tests' stores are on the host's disk, whatever it has free, and
    /// a share of it would be the host's (the share is tested on a tmpfs, disk_full).
    pub fn write_config_raw(&self, text: &str) {
        // At the end of the retention table (or in one of its own at the end): the lines a
        // test's config error names stay where they were.
        const KEY: &str = "min_free_percent = 0\n";
        let text = match text.find("[retention]\n") {
            _ if text.contains("min_free_percent") => text.to_string(),
            Some(at) => match text[at..].find("\n[") {
                Some(next) => format!("{}\n{KEY}{}", &text[..at + next], &text[at + next + 1..]),
                None if text.ends_with('\n') => format!("{text}{KEY}"),
                None => format!("{text}\n{KEY}"),
            },
            None => format!("{text}\n[retention]\n{KEY}"),
        };
        std::fs::create_dir_all(self.config_path().parent().unwrap()).unwrap();
        std::fs::write(self.config_path(), text).unwrap();
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(self.config_path())
            .args(args)
            .envs(&self.env)
            .env_remove("JOURNAL_STREAM");
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from_output(self.cmd(args).output().unwrap(), args)
    }

    pub fn run_failing(&self, mode: &str, args: &[&str]) -> Run {
        Run::from_output(
            self.cmd(args).env("STANDIN_FAIL", mode).output().unwrap(),
            args,
        )
    }

    /// `list --json`, parsed.
    pub fn sets(&self) -> Vec<serde_json::Value> {
        let run = self.run(&["list", "--json"]);
        run.expect_code(0);
        serde_json::from_str(&run.stdout).unwrap()
    }

    pub fn set_ids(&self) -> Vec<String> {
        self.sets()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// A successful backup; returns the new set id.
    pub fn backup(&self) -> String {
        let run = self.run(&["backup"]);
        run.expect_code(0);
        run.stdout.trim().to_string()
    }

    pub fn set_dir(&self, id: &str) -> PathBuf {
        self.store().join("sets").join(id)
    }

    pub fn staging_entries(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.store().join(".staging")) {
            Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// One finished run of the binary, with readable failure output.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub args: String,
}

impl Run {
    pub fn from_output(output: Output, args: &[&str]) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            args: args.join(" "),
        }
    }

    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "etcd-backup {} exited {} (want {code})\n--- stdout\n{}\n--- stderr\n{}",
            self.args, self.code, self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn expect_stderr(&self, needle: &str) -> &Run {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}\n--- stderr\n{}",
            self.stderr
        );
        self
    }

    #[track_caller]
    pub fn expect_stdout(&self, needle: &str) -> &Run {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}\n--- stdout\n{}",
            self.stdout
        );
        self
    }
}

/// Runs `cmd` with `input` on its stdin; stdout and stderr are collected.
pub fn run_with_stdin(mut cmd: Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

pub fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap();
    sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every file under a store is 0600 and every directory 0700 (symlinks are never created).
#[track_caller]
pub fn assert_private(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        assert_eq!(mode(&dir), 0o700, "directory {}", dir.display());
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            assert!(!meta.file_type().is_symlink(), "symlink {}", path.display());
            if meta.is_dir() {
                stack.push(path);
            } else {
                assert_eq!(mode(&path), 0o600, "file {}", path.display());
                seen += 1;
            }
        }
    }
    assert!(seen > 0, "nothing to audit in {}", root.display());
}

pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

/// Every file and dir under a set dir, with their sha256 (files) — to prove "untouched".
pub fn fingerprint(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        out.insert(
            path.file_name().unwrap().to_string_lossy().into_owned(),
            sha256_hex(&path),
        );
    }
    out
}

/// A store by its config file (a directory target's, a peer's), driven through the binary.
pub struct StoreAt {
    pub config: PathBuf,
    pub root: PathBuf,
}

impl StoreAt {
    /// Writes `config` for the store at `root` (`[store] root`, then `extra`).
    pub fn configured(config: PathBuf, root: &Path, extra: &str) -> StoreAt {
        std::fs::write(
            &config,
            format!("[store]\nroot = \"{}\"\n{extra}", root.display()),
        )
        .unwrap();
        StoreAt {
            config,
            root: root.to_path_buf(),
        }
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let output = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("JOURNAL_STREAM")
            .output()
            .unwrap();
        Run::from_output(output, args)
    }

    /// The listed set ids; every listed set must be complete and verified.
    pub fn ids(&self) -> Vec<String> {
        if !self.root.exists() {
            return Vec::new();
        }
        let run = self.run(&["list", "--json"]);
        run.expect_code(0);
        let sets: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
        for set in &sets {
            assert_eq!(set["verified"], true, "a listed set is complete: {set}");
        }
        sets.iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn staging(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.root.join(".staging")) {
            Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// The file of a set directory whose name ends with `suffix` (".db", ".tar.gz").
pub fn set_file(set_dir: &Path, suffix: &str) -> PathBuf {
    std::fs::read_dir(set_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(suffix))
        .unwrap_or_else(|| panic!("no *{suffix} in '{}'", set_dir.display()))
}

/// Flips the bits `mask` of the byte at `offset` (the middle with `None`): names and sizes
/// still match, only a hash sees it.
pub fn flip_byte(path: &Path, offset: Option<usize>, mask: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = offset.unwrap_or(bytes.len() / 2);
    bytes[at] ^= mask;
    std::fs::write(path, &bytes).unwrap();
}

/// A tmpfs of `mib` MiB mounted at `path` until dropped.
pub struct SmallFs(PathBuf);

impl SmallFs {
    pub fn mount(path: &Path, mib: u64) -> SmallFs {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs on {}", path.display());
        SmallFs(path.to_path_buf())
    }

    pub fn free_bytes(&self) -> u64 {
        let stat = nix::sys::statvfs::statvfs(&self.0).unwrap();
        stat.blocks_available() * stat.fragment_size()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A CA made with the openssl CLI: (cert, key).
pub fn make_ca(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
        ])
        .arg(format!("/CN={name}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    (cert, key)
}

/// From what `/usr/bin/time -v` printed: the peak RSS (KiB) and the CPU seconds (user +
/// system) of the command (benchmarks).
pub fn time_v_figures(text: &str) -> (u64, f64) {
    let field = |name: &str| -> Vec<f64> {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix(name))
            .filter_map(|v| v.trim().parse().ok())
            .collect()
    };
    let rss = field("Maximum resident set size (kbytes):")
        .first()
        .copied()
        .unwrap_or(0.0) as u64;
    let cpu = field("User time (seconds):").iter().sum::<f64>()
        + field("System time (seconds):").iter().sum::<f64>();
    (rss, cpu)
}
