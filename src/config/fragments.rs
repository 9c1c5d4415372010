//! What one config file may say, as serde reads it: every field optional and keeping its source
//! span, so that a later check can name `file:line:column`. The defaults are in
//! `Settings::defaults`; [`super::apply`] lays each file onto them.

use super::{ConfigError, ForcePolicy, HostKeyPolicy, Transport};
use crate::units::{parse_duration, parse_size};
use serde::Deserialize;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// One config file being applied: for locating spans.
pub(super) struct Source<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

impl Source<'_> {
    pub(super) fn name(&self) -> String {
        self.path.display().to_string()
    }

    /// `file:line:column` (1-based, columns in characters) of a byte span's start.
    pub(super) fn locate(&self, span: &Range<usize>) -> String {
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        format!("{}:{line}:{column}", self.path.display())
    }

    pub(super) fn error(
        &self,
        value: &Spanned<impl Sized>,
        message: impl std::fmt::Display,
    ) -> ConfigError {
        ConfigError(format!("{}: {message}", self.locate(&value.span())))
    }

    pub(super) fn duration(
        &self,
        value: &Spanned<String>,
        key: &str,
        allow_zero: bool,
    ) -> Result<Duration, ConfigError> {
        let duration = parse_duration(value.get_ref())
            .map_err(|e| self.error(value, format!("{key}: {e}")))?;
        if duration.is_zero() && !allow_zero {
            return Err(self.error(value, format!("{key} must be greater than zero")));
        }
        Ok(duration)
    }

    pub(super) fn size(&self, value: &Spanned<String>, key: &str) -> Result<u64, ConfigError> {
        parse_size(value.get_ref()).map_err(|e| self.error(value, format!("{key}: {e}")))
    }

    pub(super) fn absolute_path(
        &self,
        value: &Spanned<String>,
        key: &str,
    ) -> Result<PathBuf, ConfigError> {
        let path = PathBuf::from(value.get_ref());
        if !path.is_absolute() {
            return Err(self.error(
                value,
                format!("{key} must be an absolute path, not '{}'", value.get_ref()),
            ));
        }
        Ok(path)
    }
}

// Fragments: what one file may say. Every field optional; the default is in `Settings::defaults`.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileFragment {
    pub(super) node: Option<NodeFragment>,
    pub(super) store: Option<StoreFragment>,
    pub(super) backup: Option<BackupFragment>,
    /// A `[retention]` table replaces the compiled-in policy as a whole; later files then
    /// override it key by key.
    pub(super) retention: Option<Spanned<RetentionFragment>>,
    pub(super) status: Option<StatusFragment>,
    pub(super) spray: Option<SprayFragment>,
    pub(super) tls: Option<TlsFragment>,
    pub(super) metrics: Option<MetricsFragment>,
    pub(super) seal: Option<SealFragment>,
    pub(super) cluster: Option<ClusterFragment>,
    pub(super) io: Option<IoFragment>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClusterFragment {
    /// Default: `backup.chroot` when set, else `/`; "" also means that.
    pub(super) root: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SealFragment {
    /// age X25519 recipients (`age1…`) of sealed copies; default none (nothing sealed).
    pub(super) recipients: Option<Vec<Spanned<String>>>,
    /// Recipients of the resources archive; default: `recipients`.
    pub(super) resources_recipients: Option<Vec<Spanned<String>>>,
    /// The cluster signing key (OpenSSH Ed25519, 0600); default none ("" too): sets unsigned.
    pub(super) signing_key: Option<Spanned<String>>,
    /// Trusted signers (`ssh-ed25519 AAAA…` lines); default none.
    pub(super) signers: Option<Vec<Spanned<String>>>,
    /// Default false.
    pub(super) require_signature: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MetricsFragment {
    /// Default "": no textfile.
    pub(super) textfile_dir: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TlsFragment {
    /// Default `/etc/etcd-backup/tls/tls.crt`.
    pub(super) cert: Option<Spanned<String>>,
    /// Default `/etc/etcd-backup/tls/tls.key`; must not be readable by group or others.
    pub(super) key: Option<Spanned<String>>,
    /// Default `/etc/etcd-backup/tls/ca.crt`.
    pub(super) ca: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SprayFragment {
    /// Default: OpenShift's path; "" disables etcd.env discovery.
    pub(super) etcd_env: Option<Spanned<String>>,
    /// Default: none.
    pub(super) peers: Option<Vec<Spanned<String>>>,
    /// Default `core`.
    pub(super) user: Option<Spanned<String>>,
    /// Default `/etc/etcd-backup/spray_key`.
    pub(super) identity: Option<Spanned<String>>,
    /// Default `/etc/etcd-backup/known_hosts`.
    pub(super) known_hosts: Option<Spanned<String>>,
    /// Default `strict`.
    pub(super) host_key_policy: Option<HostKeyPolicy>,
    /// Default `sudo -n /usr/local/bin/etcd-backup receive`.
    pub(super) remote_command: Option<Spanned<String>>,
    /// Default `10s`.
    pub(super) connect_timeout: Option<Spanned<String>>,
    /// Default `60s`.
    pub(super) io_timeout: Option<Spanned<String>>,
    /// Default `1h`.
    pub(super) session_timeout: Option<Spanned<String>>,
    /// Default 3.
    pub(super) attempts: Option<Spanned<u32>>,
    /// Default true.
    pub(super) compress: Option<bool>,
    /// Default `ssh`.
    pub(super) transport: Option<Transport>,
    /// Default 9443.
    pub(super) tls_port: Option<Spanned<u16>>,
    /// Default 1d.
    pub(super) verify_every: Option<Spanned<String>>,
    /// `[[spray.target]]` tables; a file that has them replaces the list.
    pub(super) target: Option<Vec<TargetFragment>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NodeFragment {
    /// Origin name of this node's sets (default: the hostname).
    pub(super) name: Option<Spanned<String>>,
    /// Default `5m`.
    pub(super) max_clock_skew: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StoreFragment {
    /// Default `/var/lib/etcd-backup`.
    pub(super) root: Option<Spanned<String>>,
    /// Default `1h`.
    pub(super) gc_grace: Option<Spanned<String>>,
    /// Default `10m`.
    pub(super) lock_wait: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BackupFragment {
    /// Default `/usr/local/bin/cluster-backup.sh`.
    pub(super) command: Option<Spanned<String>>,
    /// Default: none; "" also means none.
    pub(super) chroot: Option<Spanned<String>>,
    /// Default `fallback`.
    pub(super) force: Option<ForcePolicy>,
    /// Default `15m`.
    pub(super) timeout: Option<Spanned<String>>,
    /// Default: none (every node takes backups).
    pub(super) snapshot_nodes: Option<Vec<Spanned<String>>>,
    /// Default `2h`.
    pub(super) takeover_after: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RetentionFragment {
    pub(super) keep_last: Option<u32>,
    pub(super) keep_hourly: Option<u32>,
    pub(super) keep_daily: Option<u32>,
    pub(super) keep_weekly: Option<u32>,
    pub(super) keep_monthly: Option<u32>,
    pub(super) keep_yearly: Option<u32>,
    pub(super) keep_within: Option<Spanned<String>>,
    pub(super) max_total_size: Option<Spanned<String>>,
    pub(super) min_free_space: Option<Spanned<String>>,
    pub(super) min_free_percent: Option<Spanned<u8>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StatusFragment {
    /// Default `3h`.
    pub(super) max_age: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IoFragment {
    /// A size per second; default `0` (unbounded).
    pub(super) max_write_bandwidth: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TargetFragment {
    /// `dir` or `s3`.
    pub(super) kind: Spanned<String>,
    // dir
    pub(super) path: Option<Spanned<String>>,
    /// Default true.
    pub(super) require_mount: Option<bool>,
    // s3
    pub(super) endpoint: Option<Spanned<String>>,
    pub(super) bucket: Option<Spanned<String>>,
    /// Default "".
    pub(super) prefix: Option<Spanned<String>>,
    /// Default `us-east-1`.
    pub(super) region: Option<Spanned<String>>,
    /// Default true (what ODF, Ceph RGW and MinIO endpoints need; AWS takes it too).
    pub(super) path_style: Option<bool>,
    pub(super) credentials: Option<Spanned<String>>,
    /// Default `default`.
    pub(super) profile: Option<Spanned<String>>,
    pub(super) ca_file: Option<Spanned<String>>,
    /// `AES256` or `aws:kms`; default none.
    pub(super) sse: Option<Spanned<String>>,
    pub(super) sse_kms_key_id: Option<Spanned<String>>,
    /// `all` (default), `snapshot` or `resources`.
    pub(super) files: Option<Spanned<String>>,
    /// Default 8MiB.
    pub(super) part_size: Option<Spanned<String>>,
    /// `GOVERNANCE` or `COMPLIANCE`, with object_lock_days.
    pub(super) object_lock_mode: Option<Spanned<String>>,
    pub(super) object_lock_days: Option<Spanned<u32>>,
    /// Default 24h.
    pub(super) gc_grace: Option<Spanned<String>>,
    /// Default false: an `http://` endpoint is refused.
    pub(super) insecure_http: Option<bool>,
    /// Default 1d; zero: never by the verify timer.
    pub(super) verify_every: Option<Spanned<String>>,
    /// Default 64MiB (per second); s3 only.
    pub(super) verify_bandwidth: Option<Spanned<String>>,
    /// Default: sealed when `[seal] recipients` are configured.
    pub(super) seal: Option<Spanned<bool>>,
}
