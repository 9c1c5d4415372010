//! Configuration: `config.toml` then `config.d/*.toml` (lexical order, later wins) over
//! compiled-in defaults, validated into `Settings` with real types.
//!
//! Three steps, as zincati does it: serde fragments where every field is optional and keeps its
//! source span → each file applied in order onto the defaults → the merged result checked as a
//! whole. Unlike zincati, unknown keys are errors, and every error names `file:line:column`.

mod apply;
mod fragments;
mod print;
mod targets;

pub use targets::{
    Carried, DirTarget, LockMode, MAX_PART_SIZE, MIN_PART_SIZE, ObjectLock, S3Target, Sse,
    TargetConfig,
};

use crate::paths;
use crate::retention::Policy;
use fragments::{FileFragment, Source};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::paths::{CONFIG_FILE as DEFAULT_CONFIG_PATH, DROPIN_DIR_NAME};

/// A configuration problem; the CLI maps it to its own exit code.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForcePolicy {
    /// Run `cluster-backup.sh <dir>` only.
    Never,
    /// Always run `cluster-backup.sh --force <dir>` (every set is marked dirty).
    Always,
    /// Run without `--force`; only if that fails, run again with `--force` (set marked dirty).
    Fallback,
}

impl ForcePolicy {
    fn as_str(self) -> &'static str {
        match self {
            ForcePolicy::Never => "never",
            ForcePolicy::Always => "always",
            ForcePolicy::Fallback => "fallback",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Origin name recorded in every set this node takes.
    pub node_name: String,
    /// How far another master's clock may be ahead of this node's: a set dated later than now
    /// plus this is refused on receipt and never counts as the newest.
    pub max_clock_skew: Duration,
    pub store: StoreSettings,
    pub backup: BackupSettings,
    pub retention: Policy,
    pub status: StatusSettings,
    pub io: IoSettings,
    /// `retention.min_free_space` as configured, before it was folded for the store's
    /// filesystem (see [`Settings::floor_for`]).
    pub floor_as_configured: Option<u64>,
    pub spray: SpraySettings,
    pub tls: TlsSettings,
    pub metrics: MetricsSettings,
    pub seal: SealSettings,
    pub cluster: ClusterSettings,
    /// The files that were read, in order.
    pub sources: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoreSettings {
    pub root: PathBuf,
    /// Staging leftovers older than this are removed.
    pub gc_grace: Duration,
    /// How long a run waits for the store lock held by another run.
    pub lock_wait: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackupSettings {
    pub command: PathBuf,
    /// Run the command chrooted here (Pod Mode: the host's `/`, so that cluster-backup.sh
    /// runs in the host's context).
    pub chroot: Option<PathBuf>,
    pub force: ForcePolicy,
    pub timeout: Duration,
    /// Priority list of the nodes that take backups; empty: every node does.
    pub snapshot_nodes: Vec<String>,
    /// The next snapshot node takes over when the newest set from every node before it is
    /// older than this.
    pub takeover_after: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StatusSettings {
    pub max_age: Duration,
}

/// How the large files we write meet the disk.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IoSettings {
    /// Bytes per second the large files we write (a set received or copied to a directory
    /// target, a copy staged or fetched from a directory) go to the disk at most; 0: no bound.
    pub max_write_bandwidth: u64,
}

/// Where the node's own files are seen: the OpenShift release (the machine-config daemon's
/// `currentconfig`), etcd's data directory (its WAL names the cluster), etcd.env (the masters)
/// and `cluster-restore.sh`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClusterSettings {
    /// None: `backup.chroot` when set (Pod Mode's mount of the host's `/`), else `/`.
    pub root: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct MetricsSettings {
    /// A node_exporter textfile-collector directory: backup, spray and verify refresh
    /// `etcd-backup.prom` there at the end of each run. None: no textfile.
    pub textfile_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyPolicy {
    /// The peer's key must be in known_hosts.
    Strict,
    /// Pin an unknown peer's key on first contact; refuse any later change.
    AcceptNew,
}

impl HostKeyPolicy {
    fn as_str(self) -> &'static str {
        match self {
            HostKeyPolicy::Strict => "strict",
            HostKeyPolicy::AcceptNew => "accept-new",
        }
    }
}

/// How the peer masters are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// SSH to user core, whose key may only run `receive` (systemd mode).
    Ssh,
    /// Mutual TLS to `receive --listen` on the peer (Pod Mode).
    Tls,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::Ssh => "ssh",
            Transport::Tls => "tls",
        }
    }
}

/// This node's certificate and key (DNS SAN: its node name; server and client use) and the CA
/// that signs every node's: for `spray.transport = "tls"` and `receive --listen`.
/// `[seal]`: what copies leaving the masters are sealed to, and how sets are signed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SealSettings {
    /// age X25519 recipients (`age1…`) of the snapshot (and of the resources archive unless
    /// `resources_recipients` names others); empty: nothing is sealed.
    pub recipients: Vec<String>,
    pub resources_recipients: Option<Vec<String>>,
    /// The cluster signing key on this node; `None`: sets are not signed here.
    pub signing_key: Option<PathBuf>,
    /// Trusted signers, as OpenSSH public key lines.
    pub signers: Vec<String>,
    /// Sets without a signature of a trusted signer are refused by receive, fetch, stage and
    /// verify.
    pub require_signature: bool,
}

impl SealSettings {
    pub fn resources_recipients(&self) -> &[String] {
        self.resources_recipients
            .as_deref()
            .unwrap_or(&self.recipients)
    }

    /// The keys a target that seals seals and signs with (the signing key read from its file).
    pub fn sealing(&self) -> anyhow::Result<crate::seal::Sealing> {
        crate::seal::Sealing::new(
            &self.recipients,
            self.resources_recipients(),
            self.signing_key.as_deref(),
        )
    }

    /// Whether a target with `seal` as configured seals: as configured, else when recipients
    /// are.
    pub fn seals(&self, configured: Option<bool>) -> bool {
        configured.unwrap_or(!self.recipients.is_empty())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// `host` or `host:port` or `[v6]:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

pub const SSH_PORT: u16 = 22;
/// The receivers' port in Pod Mode (`receive --listen`).
pub const DEFAULT_TLS_PORT: u16 = 9443;

/// Parses `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address.
pub fn parse_peer_addr(text: &str) -> Result<PeerAddr, String> {
    let bad = || format!("invalid peer '{text}': expected host, host:port or [IPv6]:port");
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(bad()),
        }
    } else if text.matches(':').count() > 1 {
        (text, None)
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?,
        None => SSH_PORT,
    };
    let valid_host = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:_".contains(&b))
        && !host.starts_with('-');
    if !valid_host {
        return Err(bad());
    }
    Ok(PeerAddr {
        host: host.to_string(),
        port,
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpraySettings {
    /// OpenShift's etcd.env, for the peers; `None` when disabled with `etcd_env = ""`.
    pub etcd_env: Option<PathBuf>,
    /// Peers named explicitly, in addition to those of etcd.env.
    pub peers: Vec<PeerAddr>,
    pub user: String,
    pub identity: PathBuf,
    pub known_hosts: PathBuf,
    pub host_key_policy: HostKeyPolicy,
    pub remote_command: String,
    pub connect_timeout: Duration,
    /// Any single read or write on a peer connection.
    pub io_timeout: Duration,
    /// The most one session of a peer's receiver may last (its receive lock held); a set cut
    /// off by it resumes in the next session.
    pub session_timeout: Duration,
    /// Attempts per target within one run.
    pub attempts: u32,
    /// LZ4 on the wire to peers.
    pub compress: bool,
    pub transport: Transport,
    /// The peers' `receive --listen` port, with `transport = "tls"`.
    pub tls_port: u16,
    /// How often the verify timer has each peer check its copies of this node's sets; zero:
    /// only by hand.
    pub verify_every: Duration,
    pub targets: Vec<TargetConfig>,
}

impl Settings {
    /// The node's `/` as this process sees it: `cluster.root`, else `backup.chroot`, else `/`.
    pub fn node_root(&self) -> &std::path::Path {
        self.cluster
            .root
            .as_deref()
            .or(self.backup.chroot.as_deref())
            .unwrap_or(std::path::Path::new("/"))
    }

    /// Sets created after this are dated in the future: now plus `max_clock_skew`.
    pub fn not_after(&self) -> chrono::DateTime<chrono::Utc> {
        crate::units::after(chrono::Utc::now(), self.max_clock_skew)
    }

    /// The compiled-in defaults, for a node named `node_name`.
    pub fn defaults(node_name: String) -> Settings {
        // The fixed part of the free-space floor: the policy's, and as configured.
        const DEFAULT_FLOOR_BYTES: u64 = 5 << 30;
        Settings {
            node_name,
            max_clock_skew: Duration::from_secs(5 * 60),
            store: StoreSettings {
                root: PathBuf::from(paths::STORE_ROOT),
                gc_grace: Duration::from_secs(3600),
                lock_wait: Duration::from_secs(10 * 60),
            },
            backup: BackupSettings {
                command: PathBuf::from(paths::CLUSTER_BACKUP),
                chroot: None,
                force: ForcePolicy::Fallback,
                timeout: Duration::from_secs(15 * 60),
                snapshot_nodes: Vec::new(),
                takeover_after: Duration::from_secs(2 * 3600),
            },
            retention: Policy {
                keep_last: 3,
                keep_hourly: 24,
                keep_daily: 7,
                keep_weekly: 4,
                // A 6 GiB cluster (large; etcd's quota is 8 GiB) keeps five sets, and cannot
                // outgrow a 120 GiB master disk with the OS, the images, etcd and the floor.
                max_total_size: Some(30 << 30),
                // The larger of 5 GiB and 15 % of the store's filesystem stays free (etcd's
                // own files share it on a master).
                min_free_space: Some(DEFAULT_FLOOR_BYTES),
                min_free_percent: 15,
                ..Policy::default()
            },
            status: StatusSettings {
                max_age: Duration::from_secs(3 * 3600),
            },
            io: IoSettings::default(),
            floor_as_configured: Some(DEFAULT_FLOOR_BYTES),
            spray: SpraySettings {
                etcd_env: Some(PathBuf::from(paths::ETCD_ENV)),
                peers: Vec::new(),
                user: "core".to_string(),
                identity: PathBuf::from(paths::SPRAY_KEY),
                known_hosts: PathBuf::from(paths::KNOWN_HOSTS),
                host_key_policy: HostKeyPolicy::Strict,
                remote_command: paths::RECEIVE_COMMAND.to_string(),
                connect_timeout: Duration::from_secs(10),
                io_timeout: Duration::from_secs(60),
                session_timeout: Duration::from_secs(3600),
                attempts: 3,
                compress: true,
                transport: Transport::Ssh,
                tls_port: DEFAULT_TLS_PORT,
                verify_every: targets::DEFAULT_VERIFY_EVERY,
                targets: Vec::new(),
            },
            metrics: MetricsSettings::default(),
            cluster: ClusterSettings::default(),
            tls: TlsSettings {
                cert: PathBuf::from(paths::TLS_CERT),
                key: PathBuf::from(paths::TLS_KEY),
                ca: PathBuf::from(paths::TLS_CA),
            },
            seal: SealSettings::default(),
            sources: Vec::new(),
        }
    }

    /// Loads `main` (when `required`, it must exist) and the drop-ins beside it.
    /// Without `node.name`, this node is `NODE_NAME` (a pod's node, from the downward API:
    /// its hostname is the pod's name) or else the hostname.
    pub fn load(main: &Path, required: bool) -> Result<Settings, ConfigError> {
        let hostname = default_node_name(std::env::var("NODE_NAME").ok())?;
        let mut files = Vec::new();
        match std::fs::symlink_metadata(main) {
            Ok(_) => files.push(main.to_path_buf()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {}
            Err(e) => {
                return Err(ConfigError(format!(
                    "cannot read config file '{}': {e}",
                    main.display()
                )));
            }
        }
        let dropins = main
            .parent()
            .unwrap_or(Path::new("."))
            .join(DROPIN_DIR_NAME)
            .join("*.toml");
        let pattern = dropins.to_string_lossy();
        let mut found: Vec<PathBuf> = glob::glob(&pattern)
            .map_err(|e| ConfigError(format!("bad drop-in pattern '{pattern}': {e}")))?
            .collect::<Result<_, _>>()
            .map_err(|e| ConfigError(format!("cannot list drop-ins '{pattern}': {e}")))?;
        found.sort();
        files.extend(found);

        let mut sources = Vec::new();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError(format!("cannot read config file '{}': {e}", path.display()))
            })?;
            sources.push((path, text));
        }
        let mut settings = Settings::from_sources(hostname, &sources)?;
        if let Some(refusal) = fips_refusal(&settings.seal, fips_mode()) {
            return Err(ConfigError(refusal));
        }
        settings.fold_free_floor();
        Ok(settings)
    }

    /// Applies each `(path, text)` in order onto the defaults and validates the result.
    pub fn from_sources(
        hostname: String,
        sources: &[(PathBuf, String)],
    ) -> Result<Settings, ConfigError> {
        let mut settings = Settings::defaults(hostname);
        let mut retention_from: Option<String> = None;
        for (path, text) in sources {
            let file = Source { path, text };
            let fragment: FileFragment = toml::from_str(text).map_err(|e| {
                let at = e
                    .span()
                    .map_or_else(|| file.name(), |span| file.locate(&span));
                ConfigError(format!("{at}: {}", e.message().trim_end()))
            })?;
            fragment.apply(&file, &mut settings, &mut retention_from)?;
            settings.sources.push(path.clone());
        }
        if settings.retention.is_empty() {
            let at = retention_from.unwrap_or_else(|| "compiled-in defaults".to_string());
            return Err(ConfigError(format!(
                "{at}: the retention policy is empty: set at least one of keep_last, keep_hourly, \
                 keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within"
            )));
        }
        settings.check_sealing()?;
        Ok(settings)
    }
}

impl Settings {
    /// Folds `retention.min_free_percent` into `retention.min_free_space` for the filesystem
    /// that holds (or will hold) the store: from here on the floor is one figure in bytes.
    fn fold_free_floor(&mut self) {
        self.floor_as_configured = self.retention.min_free_space;
        if let Some(floor) = self.floor_for(&self.store.root.clone()) {
            self.retention.min_free_space = floor;
        }
    }

    /// The floor as configured, folded for the filesystem that holds (or will hold) `path`: a
    /// directory target's own, whose share is of its filesystem, not of the store's. `None` when
    /// that filesystem cannot be measured.
    pub fn floor_for(&self, path: &Path) -> Option<Option<u64>> {
        let size = crate::files::nearest_existing(path)
            .and_then(|dir| crate::files::filesystem_bytes(&dir).ok())?;
        let configured = Policy {
            min_free_space: self.floor_as_configured,
            ..self.retention.clone()
        };
        Some(configured.floor_on(size))
    }

    /// What the files said together: a sealed target has recipients to seal to, and the two
    /// halves of a set either both have recipients or neither has.
    fn check_sealing(&self) -> Result<(), ConfigError> {
        let seal = &self.seal;
        if seal.recipients.is_empty() != seal.resources_recipients().is_empty() {
            return Err(ConfigError(
                "[seal] recipients and resources_recipients: both or neither (a set is sealed whole)"
                    .to_string(),
            ));
        }
        if seal.require_signature && seal.signers.is_empty() {
            return Err(ConfigError(
                "[seal] require_signature needs signers (the public lines of the signing keys to trust)"
                    .to_string(),
            ));
        }
        for target in &self.spray.targets {
            let (configured, id) = match target {
                TargetConfig::Dir(d) => (d.seal, d.id()),
                TargetConfig::S3(s) => (s.seal, format!("s3 bucket '{}'", s.bucket)),
            };
            if configured == Some(true) && seal.recipients.is_empty() {
                return Err(ConfigError(format!(
                    "spray.target {id}: seal = true needs [seal] recipients"
                )));
            }
        }
        Ok(())
    }
}

/// Whether this node runs in FIPS mode: `/proc/sys/crypto/fips_enabled` holds `1` (absent on
/// kernels without FIPS support: not).
pub fn fips_mode() -> bool {
    std::fs::read_to_string(paths::FIPS_ENABLED).is_ok_and(|t| t.trim() == "1")
}

/// What FIPS mode forbids of `[seal]`: age (X25519, ChaCha20-Poly1305) and Ed25519 signatures
/// come from no FIPS-validated module here, so a FIPS node neither seals nor signs nor trusts
/// a signature; its buckets are protected by the store's own encryption.
pub fn fips_refusal(seal: &SealSettings, fips: bool) -> Option<String> {
    let used: Vec<&str> = [
        ("recipients", !seal.recipients.is_empty()),
        ("signing_key", seal.signing_key.is_some()),
        ("signers", !seal.signers.is_empty()),
        ("require_signature", seal.require_signature),
    ]
    .into_iter()
    .filter(|(_, set)| *set)
    .map(|(key, _)| key)
    .collect();
    (fips && !used.is_empty()).then(|| {
        format!(
            "this node runs in FIPS mode ({} = 1), and [seal] {} needs algorithms no FIPS-validated module provides here (age: X25519, ChaCha20-Poly1305; signatures: Ed25519): leave [seal] empty and protect bucket copies with sse = \"aws:kms\"",
            paths::FIPS_ENABLED,
            used.join(", ")
        )
    })
}

/// `NODE_NAME` when set and not empty, else the hostname.
fn default_node_name(node_name_env: Option<String>) -> Result<String, ConfigError> {
    match node_name_env.map(|n| n.trim().to_string()) {
        Some(name) if !name.is_empty() => Ok(name),
        _ => Ok(nix::unistd::gethostname()
            .map_err(|e| ConfigError(format!("cannot read the hostname for node.name: {e}")))?
            .to_string_lossy()
            .into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_name_env_wins_over_the_hostname_unless_empty() {
        let hostname = nix::unistd::gethostname()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert_eq!(
            default_node_name(Some("master-1".into())).unwrap(),
            "master-1"
        );
        assert_eq!(default_node_name(Some(" ".into())).unwrap(), hostname);
        assert_eq!(default_node_name(None).unwrap(), hostname);
    }

    fn load(files: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let sources: Vec<(PathBuf, String)> = files
            .iter()
            .map(|(p, t)| (PathBuf::from(p), t.to_string()))
            .collect();
        Settings::from_sources("master-0".into(), &sources)
    }

    fn error(files: &[(&str, &str)]) -> String {
        load(files).expect_err("config should be refused").0
    }

    #[test]
    fn the_free_floor_takes_a_share_of_the_filesystem_up_to_half() {
        let s = load(&[(
            "/c/config.toml",
            "[retention]\nkeep_last = 2\nmin_free_space = \"1GiB\"\nmin_free_percent = 20\n",
        )])
        .unwrap();
        assert_eq!(s.retention.min_free_space, Some(1 << 30));
        assert_eq!(s.retention.min_free_percent, 20);
        assert!(
            s.to_toml().contains("min_free_percent = 20\n"),
            "{}",
            s.to_toml()
        );
        assert_eq!(
            Settings::defaults("m".into()).retention.min_free_percent,
            15
        );
        let e = error(&[(
            "/c/config.toml",
            "[retention]\nkeep_last = 2\nmin_free_percent = 51\n",
        )]);
        assert!(e.contains("/c/config.toml:3"), "{e}");
        assert!(e.contains("min_free_percent must be at most 50"), "{e}");
    }

    #[test]
    fn a_write_bandwidth_is_a_size_per_second() {
        let s = load(&[("/c/config.toml", "[io]\nmax_write_bandwidth = \"50MiB\"\n")]).unwrap();
        assert_eq!(s.io.max_write_bandwidth, 50 << 20);
        assert!(
            s.to_toml()
                .contains("[io]\nmax_write_bandwidth = \"50MiB\"\n")
        );
        assert_eq!(load(&[]).unwrap().io.max_write_bandwidth, 0);
        let e = error(&[("/c/config.toml", "[io]\nmax_write_bandwidth = \"fast\"\n")]);
        assert!(
            e.contains("/c/config.toml:2") && e.contains("io.max_write_bandwidth"),
            "{e}"
        );
    }

    #[test]
    fn defaults_stand_without_files() {
        let s = load(&[]).unwrap();
        assert_eq!(s, Settings::defaults("master-0".into()));
        assert!(!s.retention.is_empty());
    }

    #[test]
    fn a_full_file_is_applied() {
        let s = load(&[(
            "/etc/etcd-backup/config.toml",
            r#"
[node]
name = "master-1.example.com"
[store]
root = "/srv/backups"
gc_grace = "2h"
[backup]
command = "/opt/bin/backup"
force = "never"
timeout = "90m"
[retention]
keep_daily = 14
keep_within = "2d"
max_total_size = "50GiB"
[status]
max_age = "1h30m"
"#,
        )])
        .unwrap();
        assert_eq!(s.node_name, "master-1.example.com");
        assert_eq!(s.store.root, Path::new("/srv/backups"));
        assert_eq!(s.store.gc_grace, Duration::from_secs(7200));
        assert_eq!(s.backup.command, Path::new("/opt/bin/backup"));
        assert_eq!(s.backup.force, ForcePolicy::Never);
        assert_eq!(s.backup.timeout, Duration::from_secs(5400));
        // A [retention] table replaces the default keep rules as a whole; the disk's bounds
        // stay unless it sets them.
        assert_eq!(
            s.retention,
            Policy {
                keep_daily: 14,
                keep_within: Some(Duration::from_secs(2 * 86_400)),
                max_total_size: Some(50 << 30),
                min_free_space: Some(5 << 30),
                min_free_percent: 15,
                ..Policy::default()
            }
        );
        assert_eq!(s.status.max_age, Duration::from_secs(5400));
    }

    #[test]
    fn later_files_win_key_by_key() {
        let s = load(&[
            (
                "/c/config.toml",
                "[retention]\nkeep_last = 2\nkeep_daily = 3\n[backup]\ntimeout = \"5m\"\n",
            ),
            ("/c/config.d/10-a.toml", "[retention]\nkeep_daily = 9\n"),
            ("/c/config.d/20-b.toml", "[backup]\nforce = \"always\"\n"),
        ])
        .unwrap();
        assert_eq!(s.retention.keep_last, 2);
        assert_eq!(s.retention.keep_daily, 9);
        assert_eq!(s.retention.keep_hourly, 0);
        assert_eq!(s.backup.timeout, Duration::from_secs(300));
        assert_eq!(s.backup.force, ForcePolicy::Always);
        assert_eq!(s.sources.len(), 3);
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let table: &[(&str, &str)] = &[
            (
                "[store]\nroot = \"/x\"\nrooot = \"/y\"\n",
                "/c.toml:3:1: unknown field `rooot`",
            ),
            (
                "[backup]\n  timeout = \"ten minutes\"\n",
                "/c.toml:2:13: backup.timeout: invalid duration 'ten minutes'",
            ),
            (
                "[backup]\ntimeout = \"0s\"\n",
                "/c.toml:2:11: backup.timeout must be greater than zero",
            ),
            (
                // Added to an Instant once the script ran, this panicked.
                "[backup]\ntimeout = \"30000000000000w\"\n",
                "/c.toml:2:11: backup.timeout: duration '30000000000000w' is too large (at most 100 years)",
            ),
            (
                "[backup]\ntimeout = 600\n",
                "/c.toml:2:11: invalid type: integer `600`, expected a string",
            ),
            (
                "[backup]\nforce = \"sometimes\"\n",
                "/c.toml:2:9: unknown variant `sometimes`",
            ),
            (
                "[backup]\ncommand = \"cluster-backup.sh\"\n",
                "/c.toml:2:11: backup.command must be an absolute path",
            ),
            (
                "[retention]\nkeep_last = -1\n",
                "/c.toml:2:13: invalid value: integer `-1`",
            ),
            (
                "[retention]\nmax_total_size = \"10 parsecs\"\n",
                "/c.toml:2:18: retention.max_total_size: invalid size",
            ),
            (
                "[retention]\nmax_total_size = \"0GiB\"\n",
                "/c.toml:2:18: retention.max_total_size must be greater than zero",
            ),
            (
                "\n\n[retention]\nkeep_last = 0\nmax_total_size = \"1GiB\"\n",
                "/c.toml:3:1: the retention policy is empty",
            ),
            (
                "[retention]\n",
                "/c.toml:1:1: the retention policy is empty",
            ),
            (
                "[nodes]\nname = \"x\"\n",
                "/c.toml:1:2: unknown field `nodes`",
            ),
            (
                "[node]\nname = \"Bad_Name\"\n",
                "/c.toml:2:8: node.name 'Bad_Name' is not a valid node name",
            ),
            ("[store\n", "/c.toml:1:7:"),
        ];
        for (text, expected) in table {
            let message = error(&[("/c.toml", text)]);
            assert!(
                message.starts_with(expected),
                "for {text:?}\n got: {message}\nwant: {expected}"
            );
        }
    }

    #[test]
    fn empty_policy_from_dropin_names_the_dropin() {
        let message = error(&[
            ("/c/config.toml", "[retention]\nkeep_last = 1\n"),
            ("/c/config.d/zz.toml", "# off\n[retention]\nkeep_last = 0\n"),
        ]);
        assert!(
            message.starts_with("/c/config.d/zz.toml:2:1: the retention policy is empty"),
            "{message}"
        );
    }

    #[test]
    fn effective_config_reads_back_to_the_same_settings() {
        let s = load(&[(
            "/c.toml",
            "[retention]\nkeep_last = 4\nkeep_within = \"36h\"\nmin_free_space = \"2GiB\"\n[node]\nname = \"m\\\"x\"\n",
        )]);
        // The quote in the node name is refused; use a valid one instead.
        assert!(s.is_err());
        let s = load(&[(
            "/c.toml",
            "[retention]\nkeep_last = 4\nkeep_within = \"36h\"\nmin_free_space = \"2GiB\"\nmax_total_size = \"1000000B\"\n",
        )])
        .unwrap();
        let printed = s.to_toml();
        let again = load(&[("/c.toml", printed.as_str())]).unwrap();
        assert_eq!(
            Settings {
                sources: vec![],
                ..again
            },
            Settings {
                sources: vec![],
                ..s
            }
        );
    }

    #[test]
    fn snapshot_nodes_are_checked() {
        let s = load(&[(
            "/c.toml",
            "[backup]\nsnapshot_nodes = [\"m0\", \"m1\"]\ntakeover_after = \"90m\"\n",
        )])
        .unwrap();
        assert_eq!(s.backup.snapshot_nodes, ["m0", "m1"]);
        assert_eq!(s.backup.takeover_after, Duration::from_secs(5400));
        let again = load(&[("/c.toml", s.to_toml().as_str())]).unwrap();
        assert_eq!(again.backup, s.backup);
        let message = error(&[("/c.toml", "[backup]\nsnapshot_nodes = [\"m0\", \"M0\"]\n")]);
        assert!(
            message.starts_with("/c.toml:2:25: backup.snapshot_nodes: 'M0' is listed twice"),
            "{message}"
        );
        let message = error(&[("/c.toml", "[backup]\nsnapshot_nodes = [\"m_0\"]\n")]);
        assert!(
            message.starts_with("/c.toml:2:19: backup.snapshot_nodes: 'm_0' is not a node name"),
            "{message}"
        );
    }

    #[test]
    fn spray_section_is_applied_and_checked() {
        let s = load(&[(
            "/c.toml",
            "[spray]\netcd_env = \"\"\npeers = [\"10.0.0.4\", \"m2.example.com:2222\", \"[fd00::5]:22\", \"fd00::6\"]\n\
             host_key_policy = \"accept-new\"\nio_timeout = \"30s\"\n\
             [[spray.target]]\nkind = \"dir\"\npath = \"/mnt/nfs\"\n\
             [[spray.target]]\nkind = \"dir\"\npath = \"/srv/copy\"\nrequire_mount = false\n",
        )])
        .unwrap();
        let sp = &s.spray;
        assert_eq!(sp.etcd_env, None);
        let peers: Vec<String> = sp.peers.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            peers,
            [
                "10.0.0.4:22",
                "m2.example.com:2222",
                "[fd00::5]:22",
                "[fd00::6]:22"
            ]
        );
        assert_eq!(sp.host_key_policy, HostKeyPolicy::AcceptNew);
        assert_eq!(sp.io_timeout, Duration::from_secs(30));
        assert_eq!(sp.targets.len(), 2);
        let mounts: Vec<bool> = sp
            .targets
            .iter()
            .map(|t| match t {
                TargetConfig::Dir(d) => d.require_mount,
                TargetConfig::S3(_) => unreachable!(),
            })
            .collect();
        assert_eq!(mounts, [true, false]);
        let again = load(&[("/c.toml", s.to_toml().as_str())]).unwrap();
        assert_eq!(again.spray, s.spray);

        let table: &[(&str, &str)] = &[
            (
                "[spray]\npeers = [\"ok\", \"bad host\"]\n",
                "/c.toml:2:16: spray.peers: invalid peer 'bad host'",
            ),
            (
                "[spray]\npeers = [\"h:0\"]\n",
                "/c.toml:2:10: spray.peers: invalid peer 'h:0'",
            ),
            (
                "[spray]\nhost_key_policy = \"trust-me\"\n",
                "/c.toml:2:19: unknown variant `trust-me`",
            ),
            (
                "[spray]\nattempts = 0\n",
                "/c.toml:2:12: spray.attempts must be at least 1",
            ),
            (
                "[[spray.target]]\nkind = \"nfs\"\npath = \"/x\"\n",
                "/c.toml:2:8: unknown spray.target kind 'nfs' (known: dir, s3)",
            ),
            (
                "[[spray.target]]\nkind = \"dir\"\npath = \"rel\"\n",
                "/c.toml:3:8: spray.target.path must be an absolute path",
            ),
            (
                "[spray]\nidentity = \"key\"\n",
                "/c.toml:2:12: spray.identity must be an absolute path",
            ),
        ];
        for (text, expected) in table {
            let message = error(&[("/c.toml", text)]);
            assert!(
                message.starts_with(expected),
                "for {text:?}\n got: {message}\nwant: {expected}"
            );
        }
    }

    #[test]
    fn the_seal_section_is_checked_and_decides_which_targets_seal() {
        let recipient = age::x25519::Identity::generate().to_public().to_string();
        let signer = ssh_key::PrivateKey::random(
            &mut ssh_key::rand_core::OsRng,
            ssh_key::Algorithm::Ed25519,
        )
        .unwrap()
        .public_key()
        .to_openssh()
        .unwrap();
        const S3: &str = "[[spray.target]]\nkind = \"s3\"\nendpoint = \"https://s3.example.com\"\n\
                          bucket = \"bkt\"\ncredentials = \"/etc/etcd-backup/s3\"\n";
        let seal = format!(
            "[seal]\nrecipients = [\"{recipient}\"]\nsigners = [\"{signer}\"]\nrequire_signature = true\n"
        );
        let s = load(&[("/c.toml", &format!("{seal}{S3}"))]).unwrap();
        assert_eq!(s.seal.recipients, std::slice::from_ref(&recipient));
        assert_eq!(
            s.seal.resources_recipients(),
            std::slice::from_ref(&recipient)
        );
        assert!(s.seal.require_signature);
        let TargetConfig::S3(t) = &s.spray.targets[0] else {
            panic!("not s3")
        };
        assert!(
            s.seal.seals(t.seal),
            "a bucket seals when recipients are configured"
        );
        let unsealed = load(&[("/c.toml", &format!("{seal}{S3}seal = false\n"))]).unwrap();
        let TargetConfig::S3(t) = &unsealed.spray.targets[0] else {
            panic!("not s3")
        };
        assert!(!unsealed.seal.seals(t.seal));
        assert!(!load(&[("/c.toml", S3)]).unwrap().seal.seals(None));

        for (text, expected) in [
            (
                "[seal]\nrecipients = [\"age1bad\"]\n".to_string(),
                "/c.toml:2:15: seal.recipients: 'age1bad' is not an age X25519 recipient",
            ),
            (
                "[seal]\nsigners = [\"ssh-rsa AAAA\"]\n".to_string(),
                "/c.toml:2:12: seal.signers: 'ssh-rsa AAAA' is not an OpenSSH public key line",
            ),
            (
                "[seal]\nrequire_signature = true\n".to_string(),
                "require_signature needs signers",
            ),
            (
                format!("[seal]\nrecipients = [\"{recipient}\"]\nresources_recipients = []\n"),
                "both or neither",
            ),
            (
                format!("{S3}seal = true\n"),
                "s3 bucket 'bkt': seal = true needs [seal] recipients",
            ),
            (
                "[[spray.target]]\nkind = \"dir\"\npath = \"/mnt/x\"\nseal = true\n".to_string(),
                "dir:/mnt/x: seal = true needs [seal] recipients",
            ),
            (
                "[seal]\nsigning_key = \"relative\"\n".to_string(),
                "seal.signing_key must be an absolute path",
            ),
        ] {
            let error = error(&[("/c.toml", &text)]);
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn fips_mode_forbids_every_part_of_seal() {
        let none = SealSettings::default();
        assert_eq!(fips_refusal(&none, true), None);
        let sealing = SealSettings {
            recipients: vec!["age1x".into()],
            signing_key: Some("/k".into()),
            ..SealSettings::default()
        };
        assert_eq!(fips_refusal(&sealing, false), None);
        let refusal = fips_refusal(&sealing, true).unwrap();
        assert!(
            refusal.contains("[seal] recipients, signing_key needs"),
            "{refusal}"
        );
        assert!(refusal.contains("sse = \"aws:kms\""), "{refusal}");
        let trusting = SealSettings {
            signers: vec!["ssh-ed25519 AAAA".into()],
            require_signature: true,
            ..SealSettings::default()
        };
        assert!(
            fips_refusal(&trusting, true)
                .unwrap()
                .contains("signers, require_signature")
        );
    }

    #[test]
    fn s3_targets_are_applied_and_checked() {
        const S3: &str = "[[spray.target]]\nkind = \"s3\"\nendpoint = \"https://s3.example.com:9000\"\n\
                          bucket = \"etcd-backups\"\ncredentials = \"/etc/etcd-backup/s3\"\n";
        let s = load(&[("/c.toml", S3)]).unwrap();
        let TargetConfig::S3(t) = &s.spray.targets[0] else {
            panic!("not s3")
        };
        assert_eq!(
            (
                t.prefix.as_str(),
                t.region.as_str(),
                t.path_style,
                t.profile.as_str()
            ),
            ("", "us-east-1", true, "default")
        );
        assert_eq!(
            (t.files, t.part_size, t.sse.clone(), t.object_lock),
            (Carried::All, 8 << 20, None, None)
        );
        let full = format!(
            "{S3}prefix = \"prod/cluster-a\"\nregion = \"eu-west-1\"\npath_style = false\n\
             profile = \"backup\"\nca_file = \"/etc/pki/ca.pem\"\nsse = \"aws:kms\"\n\
             sse_kms_key_id = \"arn:aws:kms:k\"\nfiles = \"snapshot\"\npart_size = \"8MiB\"\n\
             object_lock_mode = \"COMPLIANCE\"\nobject_lock_days = 7\ngc_grace = \"2h\"\n"
        );
        let s = load(&[("/c.toml", &full)]).unwrap();
        let TargetConfig::S3(t) = &s.spray.targets[0] else {
            panic!("not s3")
        };
        assert_eq!(t.prefix, "prod/cluster-a");
        assert_eq!(
            t.sse,
            Some(Sse::Kms {
                key_id: Some("arn:aws:kms:k".into())
            })
        );
        assert_eq!(
            t.object_lock,
            Some(ObjectLock {
                mode: LockMode::Compliance,
                days: 7
            })
        );
        assert_eq!((t.files, t.part_size), (Carried::Snapshot, 8 << 20));
        assert_eq!(t.gc_grace, Duration::from_secs(7200));
        let again = load(&[("/c.toml", s.to_toml().as_str())]).unwrap();
        assert_eq!(again.spray, s.spray);
        // Plain HTTP, said on purpose (a lab's loopback server).
        let lab = S3.replace("https://", "http://") + "insecure_http = true\n";
        let s = load(&[("/c.toml", &lab)]).unwrap();
        let again = load(&[("/c.toml", s.to_toml().as_str())]).unwrap();
        assert_eq!(again.spray, s.spray);

        let table: &[(&str, &str)] = &[
            ("bucket = \"Bad_Bucket\"\n", "is not a bucket name"),
            ("prefix = \"/lead\"\n", "is not a key prefix"),
            ("prefix = \"a/../b\"\n", "is not a key prefix"),
            (
                "endpoint = \"ftp://x\"\n",
                "is not an http:// or https:// URL",
            ),
            (
                "endpoint = \"https://h/bucket\"\n",
                "must be scheme://host[:port] only",
            ),
            (
                "endpoint = \"http://s3.example.com\"\n",
                "is plain HTTP: every Secret of the cluster would cross the network in clear text",
            ),
            ("credentials = \"rel\"\n", "must be an absolute path"),
            ("sse = \"rot13\"\n", "is not AES256 or aws:kms"),
            (
                "sse = \"AES256\"\nsse_kms_key_id = \"k\"\n",
                "needs sse = \"aws:kms\"",
            ),
            ("files = \"both\"\n", "is not all, snapshot or resources"),
            ("part_size = \"1MiB\"\n", "between 5MiB and 5GiB"),
            (
                "object_lock_mode = \"GOVERNANCE\"\n",
                "needs object_lock_days",
            ),
            ("object_lock_days = 3\n", "needs object_lock_mode"),
            (
                "object_lock_mode = \"LEGAL\"\nobject_lock_days = 3\n",
                "is not GOVERNANCE or COMPLIANCE",
            ),
            (
                "path = \"/x\"\n",
                "spray.target.path is not a key of kind 's3'",
            ),
            ("colour = \"red\"\n", "unknown field `colour`"),
        ];
        for (extra, expected) in table {
            // A later key of the same name replaces the one of S3 (TOML refuses duplicates).
            let mut text = S3.to_string();
            for line in extra.lines() {
                let key = line.split(' ').next().unwrap();
                text = text
                    .lines()
                    .filter(|l| !l.starts_with(&format!("{key} ")))
                    .map(|l| format!("{l}\n"))
                    .collect();
            }
            text.push_str(extra);
            let message = error(&[("/c.toml", &text)]);
            assert!(message.starts_with("/c.toml:"), "{message}");
            assert!(
                message.contains(expected),
                "for {extra:?}\n got: {message}\nwant: {expected}"
            );
        }
        let message = error(&[(
            "/c.toml",
            "[[spray.target]]\nkind = \"s3\"\nbucket = \"b-1\"\n",
        )]);
        assert!(
            message.contains("an s3 target needs an endpoint"),
            "{message}"
        );
        let message = error(&[(
            "/c.toml",
            "[[spray.target]]\nkind = \"dir\"\npath = \"/x\"\nbucket = \"b-1\"\n",
        )]);
        assert!(
            message.contains("spray.target.bucket is not a key of kind 'dir'"),
            "{message}"
        );
    }

    #[test]
    fn missing_required_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.toml");
        let message = Settings::load(&path, true).unwrap_err().0;
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(Settings::load(&path, false).is_ok());
    }
}
