//! The effective configuration as TOML, as `check-config` prints it: every key, defaults
//! included, in the order of the reference; reading it back gives the same settings.

use super::{Settings, Sse, TargetConfig};
use crate::units::{format_duration, format_size};
use std::fmt::Write as _;

impl Settings {
    /// The effective configuration as TOML, as `check-config` prints it.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        let sources: Vec<String> = self
            .sources
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let _ = writeln!(
            out,
            "# effective configuration; read from: {}",
            if sources.is_empty() {
                "compiled-in defaults only".to_string()
            } else {
                sources.join(", ")
            }
        );
        let _ = writeln!(
            out,
            "\n[node]\nname = {}\nmax_clock_skew = {}",
            quote(&self.node_name),
            quote(&format_duration(self.max_clock_skew))
        );
        let _ = writeln!(
            out,
            "\n[store]\nroot = {}\ngc_grace = {}\nlock_wait = {}",
            quote(&self.store.root.to_string_lossy()),
            quote(&format_duration(self.store.gc_grace)),
            quote(&format_duration(self.store.lock_wait)),
        );
        let _ = writeln!(
            out,
            "\n[backup]\ncommand = {}\nchroot = {}\nforce = {}\ntimeout = {}\nsnapshot_nodes = [{}]\ntakeover_after = {}",
            quote(&self.backup.command.to_string_lossy()),
            quote(
                &self
                    .backup
                    .chroot
                    .as_ref()
                    .map_or(String::new(), |p| p.to_string_lossy().into_owned())
            ),
            quote(self.backup.force.as_str()),
            quote(&format_duration(self.backup.timeout)),
            self.backup
                .snapshot_nodes
                .iter()
                .map(|n| quote(n))
                .collect::<Vec<_>>()
                .join(", "),
            quote(&format_duration(self.backup.takeover_after)),
        );
        let r = &self.retention;
        let _ = writeln!(
            out,
            "\n[retention]\nkeep_last = {}\nkeep_hourly = {}\nkeep_daily = {}\nkeep_weekly = {}\n\
             keep_monthly = {}\nkeep_yearly = {}",
            r.keep_last, r.keep_hourly, r.keep_daily, r.keep_weekly, r.keep_monthly, r.keep_yearly
        );
        if let Some(within) = r.keep_within {
            let _ = writeln!(out, "keep_within = {}", quote(&format_duration(within)));
        }
        if let Some(max) = r.max_total_size {
            let _ = writeln!(out, "max_total_size = {}", quote(&format_size(max)));
        }
        if let Some(min) = r.min_free_space {
            let _ = writeln!(out, "min_free_space = {}", quote(&format_size(min)));
        }
        let _ = writeln!(out, "min_free_percent = {}", r.min_free_percent);
        let _ = writeln!(
            out,
            "\n[cluster]\nroot = {}",
            quote(
                &self
                    .cluster
                    .root
                    .as_ref()
                    .map_or(String::new(), |p| p.to_string_lossy().into_owned())
            )
        );
        let _ = writeln!(
            out,
            "\n[status]\nmax_age = {}",
            quote(&format_duration(self.status.max_age))
        );
        let _ = writeln!(
            out,
            "\n[io]\nmax_write_bandwidth = {}",
            quote(&format_size(self.io.max_write_bandwidth))
        );
        let sp = &self.spray;
        let peers: Vec<String> = sp.peers.iter().map(|p| quote(&p.to_string())).collect();
        let _ = writeln!(
            out,
            "\n[spray]\netcd_env = {}\npeers = [{}]\nuser = {}\nidentity = {}\nknown_hosts = {}\n\
             host_key_policy = {}\nremote_command = {}\nconnect_timeout = {}\nio_timeout = {}\n\
             session_timeout = {}\nattempts = {}\ncompress = {}\ntransport = {}\ntls_port = {}\n\
             verify_every = {}",
            quote(
                &sp.etcd_env
                    .as_ref()
                    .map_or(String::new(), |p| p.to_string_lossy().into_owned())
            ),
            peers.join(", "),
            quote(&sp.user),
            quote(&sp.identity.to_string_lossy()),
            quote(&sp.known_hosts.to_string_lossy()),
            quote(sp.host_key_policy.as_str()),
            quote(&sp.remote_command),
            quote(&format_duration(sp.connect_timeout)),
            quote(&format_duration(sp.io_timeout)),
            quote(&format_duration(sp.session_timeout)),
            sp.attempts,
            sp.compress,
            quote(sp.transport.as_str()),
            sp.tls_port,
            quote(&format_duration(sp.verify_every)),
        );
        targets_to_toml(&sp.targets, &self.seal, &mut out);
        let _ = writeln!(
            out,
            "\n[tls]\ncert = {}\nkey = {}\nca = {}",
            quote(&self.tls.cert.to_string_lossy()),
            quote(&self.tls.key.to_string_lossy()),
            quote(&self.tls.ca.to_string_lossy()),
        );
        let _ = writeln!(
            out,
            "\n[metrics]\ntextfile_dir = {}",
            quote(
                &self
                    .metrics
                    .textfile_dir
                    .as_ref()
                    .map_or(String::new(), |p| p.to_string_lossy().into_owned())
            ),
        );
        let seal = &self.seal;
        let list = |items: &[String]| {
            let quoted: Vec<String> = items.iter().map(|i| quote(i)).collect();
            format!("[{}]", quoted.join(", "))
        };
        let _ = writeln!(
            out,
            "\n[seal]\nrecipients = {}\n{}\nsigning_key = {}\nsigners = {}\nrequire_signature = {}",
            list(&seal.recipients),
            match &seal.resources_recipients {
                Some(r) => format!("resources_recipients = {}", list(r)),
                None => "# resources_recipients: the recipients above".to_string(),
            },
            quote(
                &seal
                    .signing_key
                    .as_ref()
                    .map_or(String::new(), |p| p.to_string_lossy().into_owned())
            ),
            list(&seal.signers),
            seal.require_signature,
        );
        out
    }
}

/// A target's `seal` as configured, or what it comes to when unset (a comment: reading the
/// effective config back must give the same settings).
fn seal_line(configured: Option<bool>, seal: &super::SealSettings) -> String {
    match configured {
        Some(value) => format!("seal = {value}"),
        None => format!(
            "# seal = {} (unset: sealed when [seal] recipients are)",
            seal.seals(None)
        ),
    }
}

/// A string as a TOML value.
pub(super) fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The `[[spray.target]]` tables of the effective configuration.
fn targets_to_toml(targets: &[TargetConfig], seal: &super::SealSettings, out: &mut String) {
    use std::fmt::Write as _;
    for target in targets {
        match target {
            TargetConfig::Dir(d) => {
                let _ = writeln!(
                    out,
                    "\n[[spray.target]]\nkind = \"dir\"\npath = {}\nrequire_mount = {}\nverify_every = {}\n{}",
                    quote(&d.path.to_string_lossy()),
                    d.require_mount,
                    quote(&format_duration(d.verify_every)),
                    seal_line(d.seal, seal),
                );
            }
            TargetConfig::S3(s) => {
                let _ = writeln!(
                    out,
                    "\n[[spray.target]]\nkind = \"s3\"\nendpoint = {}\nbucket = {}\nprefix = {}\n\
                     region = {}\npath_style = {}\ncredentials = {}\nprofile = {}\nfiles = {}\n\
                     part_size = {}\ngc_grace = {}\nverify_every = {}\nverify_bandwidth = {}\n{}",
                    quote(&s.endpoint),
                    quote(&s.bucket),
                    quote(&s.prefix),
                    quote(&s.region),
                    s.path_style,
                    quote(&s.credentials.to_string_lossy()),
                    quote(&s.profile),
                    quote(s.files.as_str()),
                    quote(&format_size(s.part_size)),
                    quote(&format_duration(s.gc_grace)),
                    quote(&format_duration(s.verify_every)),
                    quote(&format_size(s.verify_bandwidth)),
                    seal_line(s.seal, seal),
                );
                if let Some(ca) = &s.ca_file {
                    let _ = writeln!(out, "ca_file = {}", quote(&ca.to_string_lossy()));
                }
                if s.insecure_http {
                    let _ = writeln!(out, "insecure_http = true");
                }
                match &s.sse {
                    None => {}
                    Some(sse) => {
                        let _ = writeln!(out, "sse = {}", quote(sse.algorithm()));
                        if let Sse::Kms { key_id: Some(k) } = sse {
                            let _ = writeln!(out, "sse_kms_key_id = {}", quote(k));
                        }
                    }
                }
                if let Some(lock) = &s.object_lock {
                    let _ = writeln!(
                        out,
                        "object_lock_mode = {}\nobject_lock_days = {}",
                        quote(lock.mode.as_str()),
                        lock.days
                    );
                }
            }
        }
    }
}
