//! Each file's fragment laid onto the settings so far, key by key, every value checked where it
//! is read (an error names `file:line:column`).

use super::fragments::{FileFragment, SealFragment, Source, SprayFragment};
use super::{ConfigError, SealSettings, Settings, SpraySettings, parse_peer_addr};
use crate::manifest::is_node_name;
use crate::retention::Policy;

/// The largest `retention.min_free_percent`: past half the disk kept free, no set would fit.
const MAX_FREE_PERCENT: u8 = 50;

impl FileFragment {
    pub(super) fn apply(
        self,
        file: &Source<'_>,
        settings: &mut Settings,
        retention_from: &mut Option<String>,
    ) -> Result<(), ConfigError> {
        if let Some(skew) = self.node.as_ref().and_then(|n| n.max_clock_skew.as_ref()) {
            settings.max_clock_skew = file.duration(skew, "node.max_clock_skew", true)?;
        }
        if let Some(node) = self.node
            && let Some(name) = node.name
        {
            if !is_node_name(name.get_ref()) {
                return Err(file.error(
                    &name,
                    format!(
                        "node.name '{}' is not a valid node name (letters, digits, '-', '.'; \
                             at most 253 characters)",
                        name.get_ref()
                    ),
                ));
            }
            settings.node_name = name.into_inner();
        }
        if let Some(seal) = self.seal {
            seal.apply(file, &mut settings.seal)?;
        }
        if let Some(store) = self.store {
            if let Some(root) = &store.root {
                settings.store.root = file.absolute_path(root, "store.root")?;
            }
            if let Some(grace) = &store.gc_grace {
                settings.store.gc_grace = file.duration(grace, "store.gc_grace", true)?;
            }
            if let Some(wait) = &store.lock_wait {
                settings.store.lock_wait = file.duration(wait, "store.lock_wait", true)?;
            }
        }
        if let Some(backup) = self.backup {
            if let Some(command) = &backup.command {
                settings.backup.command = file.absolute_path(command, "backup.command")?;
            }
            if let Some(root) = &backup.chroot {
                settings.backup.chroot = if root.get_ref().is_empty() {
                    None
                } else {
                    Some(file.absolute_path(root, "backup.chroot")?)
                };
            }
            if let Some(force) = backup.force {
                settings.backup.force = force;
            }
            if let Some(timeout) = &backup.timeout {
                settings.backup.timeout = file.duration(timeout, "backup.timeout", false)?;
            }
            if let Some(nodes) = &backup.snapshot_nodes {
                let mut names = Vec::new();
                for node in nodes {
                    if !is_node_name(node.get_ref()) {
                        return Err(file.error(
                            node,
                            format!(
                                "backup.snapshot_nodes: '{}' is not a node name",
                                node.get_ref()
                            ),
                        ));
                    }
                    if names
                        .iter()
                        .any(|n: &String| n.eq_ignore_ascii_case(node.get_ref()))
                    {
                        return Err(file.error(
                            node,
                            format!(
                                "backup.snapshot_nodes: '{}' is listed twice",
                                node.get_ref()
                            ),
                        ));
                    }
                    names.push(node.get_ref().clone());
                }
                settings.backup.snapshot_nodes = names;
            }
            if let Some(after) = &backup.takeover_after {
                settings.backup.takeover_after =
                    file.duration(after, "backup.takeover_after", false)?;
            }
        }
        if let Some(retention) = self.retention {
            let at = file.locate(&retention.span());
            // The first file with keep rules replaces the default rules whole (restic's way:
            // `keep_last = 5` alone means five sets, not five and 24 hourly). The bounds that
            // keep the disk safe under etcd stay unless set.
            if retention_from.is_none() {
                let defaults = &settings.retention;
                settings.retention = Policy {
                    max_total_size: defaults.max_total_size,
                    min_free_space: defaults.min_free_space,
                    min_free_percent: defaults.min_free_percent,
                    ..Policy::default()
                };
            }
            *retention_from = Some(at);
            let r = retention.into_inner();
            let p = &mut settings.retention;
            let counts = [
                (r.keep_last, &mut p.keep_last),
                (r.keep_hourly, &mut p.keep_hourly),
                (r.keep_daily, &mut p.keep_daily),
                (r.keep_weekly, &mut p.keep_weekly),
                (r.keep_monthly, &mut p.keep_monthly),
                (r.keep_yearly, &mut p.keep_yearly),
            ];
            for (value, slot) in counts {
                if let Some(value) = value {
                    *slot = value;
                }
            }
            if let Some(within) = &r.keep_within {
                p.keep_within = Some(file.duration(within, "retention.keep_within", true)?);
            }
            if let Some(max) = &r.max_total_size {
                let bytes = file.size(max, "retention.max_total_size")?;
                if bytes == 0 {
                    return Err(
                        file.error(max, "retention.max_total_size must be greater than zero")
                    );
                }
                p.max_total_size = Some(bytes);
            }
            if let Some(min) = &r.min_free_space {
                p.min_free_space = Some(file.size(min, "retention.min_free_space")?);
            }
            if let Some(percent) = &r.min_free_percent {
                if *percent.get_ref() > MAX_FREE_PERCENT {
                    return Err(file.error(
                        percent,
                        format!(
                            "retention.min_free_percent must be at most {MAX_FREE_PERCENT} (percent of the store's filesystem)"
                        ),
                    ));
                }
                p.min_free_percent = *percent.get_ref();
            }
        }
        if let Some(spray) = self.spray {
            spray.apply(file, &mut settings.spray)?;
        }
        if let Some(tls) = self.tls {
            if let Some(cert) = &tls.cert {
                settings.tls.cert = file.absolute_path(cert, "tls.cert")?;
            }
            if let Some(key) = &tls.key {
                settings.tls.key = file.absolute_path(key, "tls.key")?;
            }
            if let Some(ca) = &tls.ca {
                settings.tls.ca = file.absolute_path(ca, "tls.ca")?;
            }
        }
        if let Some(metrics) = self.metrics
            && let Some(dir) = &metrics.textfile_dir
        {
            settings.metrics.textfile_dir = if dir.get_ref().is_empty() {
                None
            } else {
                Some(file.absolute_path(dir, "metrics.textfile_dir")?)
            };
        }
        if let Some(cluster) = self.cluster
            && let Some(root) = &cluster.root
        {
            settings.cluster.root = if root.get_ref().is_empty() {
                None
            } else {
                Some(file.absolute_path(root, "cluster.root")?)
            };
        }
        if let Some(status) = self.status
            && let Some(max_age) = &status.max_age
        {
            settings.status.max_age = file.duration(max_age, "status.max_age", false)?;
        }
        if let Some(io) = self.io
            && let Some(bandwidth) = &io.max_write_bandwidth
        {
            settings.io.max_write_bandwidth = file.size(bandwidth, "io.max_write_bandwidth")?;
        }
        Ok(())
    }
}

impl SprayFragment {
    pub(super) fn apply(
        self,
        file: &Source<'_>,
        spray: &mut SpraySettings,
    ) -> Result<(), ConfigError> {
        if let Some(path) = &self.etcd_env {
            spray.etcd_env = if path.get_ref().is_empty() {
                None
            } else {
                Some(file.absolute_path(path, "spray.etcd_env")?)
            };
        }
        if let Some(peers) = &self.peers {
            spray.peers = peers
                .iter()
                .map(|p| {
                    parse_peer_addr(p.get_ref())
                        .map_err(|e| file.error(p, format!("spray.peers: {e}")))
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(user) = &self.user {
            let valid = !user.get_ref().is_empty()
                && user
                    .get_ref()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !valid {
                return Err(file.error(
                    user,
                    format!("spray.user '{}' is not a user name", user.get_ref()),
                ));
            }
            spray.user = user.get_ref().clone();
        }
        if let Some(identity) = &self.identity {
            spray.identity = file.absolute_path(identity, "spray.identity")?;
        }
        if let Some(known_hosts) = &self.known_hosts {
            spray.known_hosts = file.absolute_path(known_hosts, "spray.known_hosts")?;
        }
        if let Some(policy) = self.host_key_policy {
            spray.host_key_policy = policy;
        }
        if let Some(command) = &self.remote_command {
            if command.get_ref().trim().is_empty() {
                return Err(file.error(command, "spray.remote_command is empty"));
            }
            spray.remote_command = command.get_ref().clone();
        }
        if let Some(timeout) = &self.connect_timeout {
            spray.connect_timeout = file.duration(timeout, "spray.connect_timeout", false)?;
        }
        if let Some(timeout) = &self.io_timeout {
            spray.io_timeout = file.duration(timeout, "spray.io_timeout", false)?;
        }
        if let Some(timeout) = &self.session_timeout {
            spray.session_timeout = file.duration(timeout, "spray.session_timeout", false)?;
        }
        if let Some(attempts) = &self.attempts {
            if *attempts.get_ref() == 0 {
                return Err(file.error(attempts, "spray.attempts must be at least 1"));
            }
            spray.attempts = *attempts.get_ref();
        }
        if let Some(compress) = self.compress {
            spray.compress = compress;
        }
        if let Some(transport) = self.transport {
            spray.transport = transport;
        }
        if let Some(port) = &self.tls_port {
            if *port.get_ref() == 0 {
                return Err(file.error(port, "spray.tls_port must not be 0"));
            }
            spray.tls_port = *port.get_ref();
        }
        if let Some(every) = &self.verify_every {
            spray.verify_every = file.duration(every, "spray.verify_every", true)?;
        }
        if let Some(targets) = self.target {
            spray.targets = targets
                .into_iter()
                .map(|t| t.check(file))
                .collect::<Result<_, _>>()?;
        }
        Ok(())
    }
}

impl SealFragment {
    fn apply(self, file: &Source<'_>, seal: &mut SealSettings) -> Result<(), ConfigError> {
        let recipients = |list: Vec<toml::Spanned<String>>, key: &str| {
            list.into_iter()
                .map(|r| {
                    crate::seal::keys::parse_recipient(r.get_ref())
                        .map(|parsed| parsed.to_string())
                        .map_err(|e| file.error(&r, format!("seal.{key}: {e}")))
                })
                .collect::<Result<Vec<String>, ConfigError>>()
        };
        if let Some(list) = self.recipients {
            seal.recipients = recipients(list, "recipients")?;
        }
        if let Some(list) = self.resources_recipients {
            seal.resources_recipients = Some(recipients(list, "resources_recipients")?);
        }
        if let Some(key) = &self.signing_key {
            seal.signing_key = if key.get_ref().is_empty() {
                None
            } else {
                Some(file.absolute_path(key, "seal.signing_key")?)
            };
        }
        if let Some(signers) = self.signers {
            seal.signers = signers
                .into_iter()
                .map(|s| {
                    crate::seal::keys::parse_signer(s.get_ref())
                        .map(|_| s.get_ref().trim().to_string())
                        .map_err(|e| file.error(&s, format!("seal.signers: {e}")))
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(require) = self.require_signature {
            seal.require_signature = require.into_inner();
        }
        Ok(())
    }
}
