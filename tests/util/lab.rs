//! Three masters in network namespaces, each with a real OpenSSH sshd: a switch namespace with
//! a bridge, veth pairs created inside the namespaces, addresses that exist only there, and
//! every client run inside a namespace (`Host::cmd`). The peers' `core` user has an authorized
//! key `restrict,command="sudo -n <binary> --config <its config> receive"`, as the MachineConfig
//! will install. Torn down on drop.

use super::*;
use std::process::Child;

pub const SUBNET: &str = "10.251.0";

pub struct Host {
    pub name: String,
    pub netns: String,
    pub ip: String,
    pub dir: PathBuf,
    sshd: Option<Child>,
}

impl Host {
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    pub fn store(&self) -> PathBuf {
        self.dir.join("store")
    }

    /// A command run inside this host's network namespace.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).arg(program);
        cmd
    }

    /// The binary, inside the namespace, with this host's config.
    pub fn run(&self, args: &[&str]) -> Run {
        let out = self
            .cmd(BIN)
            .arg("--config")
            .arg(self.config())
            .args(args)
            .env_remove("JOURNAL_STREAM")
            .output()
            .unwrap();
        Run::from_output(out, args)
    }

    /// The sets in this host's store (none when nothing ever arrived).
    pub fn set_ids(&self) -> Vec<String> {
        if !self.store().join("sets").is_dir() {
            return Vec::new();
        }
        let run = self.run(&["list", "--json"]);
        run.expect_code(0);
        let sets: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
        sets.iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn start_sshd(&mut self) {
        let child = self
            .cmd("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(self.dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("sshd.log")).unwrap())
            .spawn()
            .unwrap();
        self.sshd = Some(child);
        // Listening within a second (measured ~0.1 s); bounded.
        let start = Instant::now();
        while !self
            .cmd("bash")
            .args(["-c", &format!("echo > /dev/tcp/{}/22", self.ip)])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "sshd on {} did not start",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) this host's listening sshd: connections are
    /// accepted by the kernel, but no SSH banner ever comes.
    pub fn freeze_sshd(&self, frozen: bool) {
        let pid = self.sshd.as_ref().expect("sshd running").id() as i32;
        let signal = if frozen {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).unwrap();
    }

    pub fn stop_sshd(&mut self) {
        if let Some(mut child) = self.sshd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Gives this host a new host key and restarts its sshd (a reinstalled node).
    pub fn new_host_key(&mut self) {
        self.stop_sshd();
        let key = self.dir.join("ssh_host_ecdsa_key");
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(key.with_extension("pub"));
        keygen(&key, "ecdsa");
        self.start_sshd();
    }

    /// Shapes (`add`) or unshapes (`del`) the traffic towards this host to 2 Mbit/s, at its
    /// switch port.
    pub fn shape(&self, lab: &Lab, op: &str) {
        sh(&format!(
            "tc -n {} qdisc {op} dev {}p root tbf rate 2mbit burst 32kbit latency 400ms",
            lab.switch, self.name
        ));
    }

    /// Takes this host's link down or up (inside the switch namespace).
    pub fn link(&self, lab: &Lab, up: bool) {
        sh(&format!(
            "ip -n {} link set {}p {}",
            lab.switch,
            self.name,
            if up { "up" } else { "down" }
        ));
    }
}

pub struct Lab {
    pub hosts: Vec<Host>,
    pub switch: String,
    pub dir: tempfile::TempDir,
    pub key: PathBuf,
    pub known_hosts: PathBuf,
    /// The fake /etc/kubernetes and stand-in settings the hosts' backups use.
    kube: Node,
}

fn sh(script: &str) {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn keygen(path: &Path, kind: &str) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", "", "-f"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    /// Three hosts m0 m1 m2 at 10.251.0.1-3, sshd on each; `m0` has the spray config written by
    /// `write_sender_config`. Every host's store is empty.
    pub fn new() -> Lab {
        let id = format!(
            "eb{}x{}",
            std::process::id(),
            LAB_SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let dir = tempfile::tempdir().unwrap();
        // sshd with StrictModes no still wants its files readable; the tempdir is 0700 root.
        let switch = format!("{id}sw");
        sh(&format!(
            "ip netns add {switch} && ip -n {switch} link add br0 type bridge && ip -n {switch} link set br0 up"
        ));
        let key = dir.path().join("spray_key");
        keygen(&key, "ecdsa");
        let public_key = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let mut hosts = Vec::new();
        for n in 0..3 {
            let name = format!("m{n}");
            let netns = format!("{id}{name}");
            let ip = format!("{SUBNET}.{}", n + 1);
            let host_dir = dir.path().join(&name);
            std::fs::create_dir(&host_dir).unwrap();
            sh(&format!(
                "ip netns add {netns} && ip -n {netns} link set lo up && \
                 ip -n {netns} link add eth0 type veth peer name {name}p netns {switch} && \
                 ip -n {switch} link set {name}p master br0 up && \
                 ip -n {netns} addr add {ip}/24 dev eth0 && ip -n {netns} link set eth0 up"
            ));
            keygen(&host_dir.join("ssh_host_ecdsa_key"), "ecdsa");
            std::fs::write(
                host_dir.join("sshd_config"),
                format!(
                    "ListenAddress {ip}\nPort 22\nHostKey {hk}\nPidFile {dir}/sshd.pid\nAuthorizedKeysFile {dir}/authorized_keys\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin no\nUsePAM no\nStrictModes no\n\
                     AllowUsers core\nLogLevel VERBOSE\nSubsystem sftp internal-sftp\n",
                    hk = host_dir.join("ssh_host_ecdsa_key").display(),
                    dir = host_dir.display()
                ),
            )
            .unwrap();
            std::fs::write(
                host_dir.join("authorized_keys"),
                format!(
                    "restrict,command=\"sudo -n {BIN} --config {} receive\" {public_key}",
                    host_dir.join("config.toml").display()
                ),
            )
            .unwrap();
            hosts.push(Host {
                name,
                netns,
                ip,
                dir: host_dir,
                sshd: None,
            });
        }
        // sshd drops privileges to read authorized_keys as core: the path must be reachable.
        sh(&format!("chmod 0755 {}", dir.path().display()));
        for host in &hosts {
            sh(&format!("chmod 0755 {}", host.dir.display()));
            sh(&format!(
                "chmod 0644 {}/authorized_keys",
                host.dir.display()
            ));
        }
        let known_hosts = dir.path().join("known_hosts");
        let mut lines = String::new();
        for host in &hosts {
            let public = std::fs::read_to_string(host.dir.join("ssh_host_ecdsa_key.pub")).unwrap();
            lines.push_str(&format!("{} {}", host.ip, public));
        }
        std::fs::write(&known_hosts, lines).unwrap();
        let mut lab = Lab {
            hosts,
            switch,
            dir,
            key,
            known_hosts,
            kube: Node::new(""),
        };
        for host in &mut lab.hosts {
            host.start_sshd();
        }
        // The three masters, as OpenShift's etcd.env names them.
        let mut env = String::from("export ETCDCTL_API=\"3\"\n");
        for host in &lab.hosts {
            let safe = format!("lab_master_{}", &host.name[1..]);
            env.push_str(&format!(
                "export NODE_{safe}_ETCD_NAME=\"lab-master-{}\"\nexport NODE_{safe}_ETCD_URL_HOST=\"{ip}\"\nexport NODE_{safe}_IP=\"{ip}\"\n",
                &host.name[1..],
                ip = host.ip
            ));
        }
        std::fs::write(lab.dir.path().join("etcd.env"), env).unwrap();
        for n in 0..3 {
            lab.write_config(n, "");
        }
        lab
    }

    /// Host `n`'s config: its store, the stand-in script, etcd.env discovery of the other two,
    /// the spray key, plus `spray_extra` keys for `[spray]` (a key given there replaces the
    /// lab's default for it). The floor is its 5 GiB alone (`min_free_percent = 0`): the lab's stores are on the
    /// host's disk, whatever it has free (the share is tested on a tmpfs, disk_full).
    pub fn write_config(&self, n: usize, spray_extra: &str) {
        let host = &self.hosts[n];
        let defaults = [
            (
                "etcd_env",
                format!("\"{}\"", self.dir.path().join("etcd.env").display()),
            ),
            ("identity", format!("\"{}\"", self.key.display())),
            ("known_hosts", format!("\"{}\"", self.known_hosts.display())),
            ("connect_timeout", "\"3s\"".to_string()),
            ("io_timeout", "\"5s\"".to_string()),
            ("attempts", "1".to_string()),
        ];
        let mut spray = String::new();
        for (key, value) in defaults {
            if !spray_extra
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{key} =")))
            {
                spray.push_str(&format!("{key} = {value}\n"));
            }
        }
        std::fs::write(
            host.config(),
            format!(
                "[node]\nname = \"lab-master-{n}\"\n[store]\nroot = \"{}\"\nlock_wait = \"20s\"\n\
                 [backup]\ncommand = \"{}\"\n[retention]\nkeep_last = 10\nmin_free_percent = 0\n\
                 [spray]\n{spray}{spray_extra}\n",
                host.store().display(),
                standin().display(),
            ),
        )
        .unwrap();
    }

    /// For benchmarks only: an unrestricted key for `core` on every host (the scp baseline),
    /// and a directory it may write to. Returns the key.
    pub fn allow_plain_key(&self) -> PathBuf {
        let key = self.dir.path().join("plain_key");
        keygen(&key, "ecdsa");
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        for host in &self.hosts {
            let mut keys = std::fs::read_to_string(host.dir.join("authorized_keys")).unwrap();
            keys.push_str(&public);
            std::fs::write(host.dir.join("authorized_keys"), keys).unwrap();
            sh(&format!("install -d -m 0777 {}/scp", host.dir.display()));
        }
        key
    }

    /// For benchmarks: `None` under `cargo test --benches` (nothing runs); otherwise a lab
    /// with BENCH_SIZE_MIB (default 1024) MiB loaded into etcd, and that size.
    pub fn for_bench() -> Option<(Lab, usize)> {
        if std::env::args().any(|a| a == "--list" || a == "--test") {
            return None;
        }
        let mib: usize = std::env::var("BENCH_SIZE_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1024);
        let lab = Lab::new();
        let started = std::time::Instant::now();
        lab.load_etcd(mib);
        eprintln!(
            "loaded {mib} MiB into etcd in {:.0}s",
            started.elapsed().as_secs_f64()
        );
        Some((lab, mib))
    }

    /// Loads `mib` MiB of values shaped like Kubernetes objects into the test etcd: structure
    /// that repeats, ids and payloads that do not (real etcd data compresses a few times).
    pub fn load_etcd(&self, mib: usize) {
        load_kubernetes_values(mib);
    }

    /// Loads `mib` MiB of values shaped like secrets under etcd encryption at rest
    /// (`k8s:enc:aescbc:v1:<key>:` and ciphertext): random base64 text, which LZ4 cannot shrink.
    pub fn load_etcd_encrypted(&self, mib: usize) {
        load_values(mib, |random, _| {
            format!("k8s:enc:aescbc:v1:key1:{}", random(3000, 64))
        });
    }

    /// Empties the test etcd and gives the space back (compaction and defragmentation), so the
    /// next backup holds only what is loaded next.
    pub fn clear_etcd(&self) {
        let etcd = etcd();
        let ctl = |args: &[&str]| {
            let out = etcd.etcdctl(args);
            assert!(
                out.status.success(),
                "etcdctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        ctl(&["del", "--prefix", "/"]);
        let status: serde_json::Value =
            serde_json::from_slice(&ctl(&["endpoint", "status", "-w", "json"])).unwrap();
        let revision = status[0]["Status"]["header"]["revision"]
            .as_u64()
            .expect("a revision in endpoint status");
        ctl(&["compaction", "--physical", &revision.to_string()]);
        ctl(&["defrag", "--command-timeout=120s"]);
    }

    /// For benchmarks: the peers' forced command runs under `/usr/bin/time`, which appends the
    /// receiver's user and system CPU seconds (sudo and its child) to the host's `receive-cpu`.
    pub fn time_receivers(&self) {
        for host in &self.hosts {
            let log = host.dir.join("receive-cpu");
            std::fs::write(&log, "").unwrap();
            sh(&format!("chmod 0666 {}", log.display()));
            let keys = std::fs::read_to_string(host.dir.join("authorized_keys")).unwrap();
            let timed = keys.replacen(
                "command=\"sudo -n",
                &format!(
                    "command=\"/usr/bin/time -a -o {} -f '%U %S' sudo -n",
                    log.display()
                ),
                1,
            );
            std::fs::write(host.dir.join("authorized_keys"), timed).unwrap();
        }
    }

    /// CPU seconds of the receivers timed since the last call (see `time_receivers`), summed
    /// over the hosts; the logs start empty again.
    pub fn take_receiver_cpu(&self) -> f64 {
        let mut total = 0.0;
        for host in &self.hosts {
            let log = host.dir.join("receive-cpu");
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            total += text
                .split_whitespace()
                .filter_map(|v| v.parse::<f64>().ok())
                .sum::<f64>();
            std::fs::write(&log, "").unwrap();
        }
        total
    }

    /// A backup on host `n` (run outside its namespace: the test etcd is on this loopback).
    pub fn backup(&self, n: usize) -> String {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(self.hosts[n].config())
            .arg("backup")
            .envs(&self.kube.env)
            .env_remove("JOURNAL_STREAM")
            .output()
            .unwrap();
        let run = Run::from_output(out, &["backup"]);
        run.expect_code(0);
        run.stdout.trim().to_string()
    }
}

static LAB_SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Drop for Lab {
    fn drop(&mut self) {
        for host in &mut self.hosts {
            host.stop_sshd();
            let _ = Command::new("ip")
                .args(["netns", "del", &host.netns])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.switch])
            .status();
    }
}

/// Puts `mib` MiB of values made by `value(random, template)` into the test etcd, 100 per
/// transaction; `random(n, radix)` gives `n` pseudo-random characters of a 16- or 64-letter
/// alphabet, `template` a repeating Kubernetes-like structure.
/// Loads `mib` MiB of values shaped like Kubernetes objects into the test etcd (see
/// [`Lab::load_etcd`]).
pub fn load_kubernetes_values(mib: usize) {
    load_values(mib, |random, template| {
        format!(
            "uid={};{template};payload={}",
            random(32, 16),
            random(3000, 16)
        )
    });
}

fn load_values(mib: usize, value: impl Fn(&mut dyn FnMut(usize, usize) -> String, &str) -> String) {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/";
    let etcd = etcd();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut random = |n: usize, radix: usize| -> String {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                char::from(ALPHABET[(seed % radix as u64) as usize])
            })
            .collect()
    };
    let template =
        "apiVersion=v1;kind=ConfigMap;metadata.namespace=openshift-bench;labels.app=bench;"
            .repeat(40);
    let mut key = 0usize;
    let mut loaded = 0usize;
    while loaded < mib << 20 {
        let puts: Vec<String> = (0..100)
            .map(|_| {
                let value = value(&mut random, &template);
                loaded += value.len();
                key += 1;
                format!("/kubernetes.io/configmaps/bench/{key:08} {value}")
            })
            .collect();
        etcd.txn_put(&puts);
    }
}
