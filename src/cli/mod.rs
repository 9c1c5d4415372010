//! Command line: parse, set up logging, dispatch, print the error chain, map it to an exit code.
//! One file per group of commands; each parses and prints, and calls the flow that does the
//! work (`crate::backup::run`, `crate::spray::run` …).

mod backup;
mod receive;
mod render;
mod sets;
mod spray;
mod status;

use crate::config::{ConfigError, DEFAULT_CONFIG_PATH, Settings};
use crate::logging;
use crate::store::{BusyError, Store};
use anyhow::Result;
use backup::{cmd_backup, cmd_prune};
use clap::{Parser, Subcommand};
use receive::{cmd_receive, cmd_tls_issue};
use render::{RenderCmd, cmd_render};
use sets::{
    cmd_fetch, cmd_list, cmd_list_from, cmd_restore_check, cmd_stage, cmd_verify, cmd_verify_target,
};
use spray::cmd_spray;
use status::{cmd_metrics, cmd_status};
use std::path::PathBuf;
use std::process::ExitCode;

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_CONFIG: u8 = 3;
pub const EXIT_PARTIAL: u8 = 4;
pub const EXIT_BUSY: u8 = 5;
pub const EXIT_STALE: u8 = 6;

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  failed (backup failed, a set is bad, an I/O error)
  2  usage error
  3  configuration error (the message names file:line:column)
  4  partially failed: some spray targets failed (spray), or status found a target behind
  5  busy: another etcd-backup run holds the store lock
  6  stale: status found no set, or the newest is older than status.max_age";

#[derive(Debug, Parser)]
#[command(name = "etcd-backup", version = crate::VERSION, about = "Scheduled, verified, rotated etcd backups for OpenShift masters", after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// Config file; drop-ins are read from config.d/*.toml beside it [default: /etc/etcd-backup/config.toml]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// More log detail (-v debug, -vv trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the backup command, verify its files, commit a set, then prune
    Backup,
    /// Apply the retention policy to the store
    Prune {
        /// Print every set with the rule that keeps it or why it goes; delete nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// List the sets in the store, or on a target (no local store needed)
    List {
        /// A JSON array of sets
        #[arg(long)]
        json: bool,
        /// List what a target holds instead: its id, a bucket name, or a directory
        #[arg(long, value_name = "TARGET")]
        from: Option<String>,
    },
    /// Re-hash sets from disk against their manifests (all sets when none is named)
    Verify {
        /// Also walk each snapshot's bbolt structure and compare etcd's figures with the manifest
        #[arg(long)]
        deep: bool,
        /// Verify the copies a target holds instead: its id, a bucket name, or a directory
        #[arg(long, value_name = "TARGET", conflicts_with = "targets")]
        target: Option<String>,
        /// Then verify every configured target whose copies are due by its verify_every (what
        /// the verify timer runs)
        #[arg(long)]
        targets: bool,
        /// With --target --deep: an age identity file that opens sealed snapshots to walk them
        /// (repeatable); without one, a sealed copy is checked against its record only
        #[arg(long, value_name = "FILE", requires = "target")]
        identity: Vec<PathBuf>,
        #[arg(value_name = "SET-ID")]
        ids: Vec<String>,
    },
    /// Copy a set from another store (a directory target, an NFS export) into this one, checked
    Fetch {
        /// Where from: a store directory, or a configured target (its id, or a bucket name)
        /// [default: every configured target, each file from the first that holds it]
        #[arg(long, value_name = "DIR|TARGET")]
        from: Option<String>,
        /// An age identity file that opens sealed copies (repeat for the snapshot's and the
        /// resources archive's, when they are kept apart)
        #[arg(long, value_name = "FILE")]
        identity: Vec<PathBuf>,
        #[arg(value_name = "SET-ID")]
        id: String,
    },
    /// Copy a set's two files, checked, into DIR for cluster-restore.sh; print the command to run
    Stage {
        #[arg(value_name = "SET-ID")]
        id: String,
        /// A new or empty directory (created 0700)
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Stage a set taken on another OpenShift release than this node runs
        #[arg(long)]
        allow_other_release: bool,
    },
    /// Before a restore, on the recovery master: check that a set of this store may be restored
    /// here (sound, signed as required, the same OpenShift release, certificates, space,
    /// cluster-restore.sh) and print OpenShift's restore steps for this cluster; exit 1 when a
    /// check refuses. Changes nothing.
    RestoreCheck {
        #[arg(value_name = "SET-ID")]
        id: String,
        /// Go on when the set was taken on another OpenShift release than this node runs
        #[arg(long)]
        allow_other_release: bool,
        /// The checks and the plan as JSON
        #[arg(long)]
        json: bool,
        /// Check the copy a target holds instead, before fetching it (its id, a bucket name,
        /// or a directory): the plan then starts with the fetch
        #[arg(long, value_name = "TARGET")]
        target: Option<String>,
    },
    /// The newest set and its age; non-zero when none or older than status.max_age
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Push sets to every peer and directory target; exit 4 when some targets failed
    Spray,
    /// What status knows, and the last runs, in the Prometheus text format (stdout by default)
    Metrics {
        /// Write DIR/etcd-backup.prom atomically, for node_exporter's textfile collector
        #[arg(long, value_name = "DIR", conflicts_with = "listen")]
        textfile: Option<PathBuf>,
        /// Serve GET /metrics over HTTP on ADDR (e.g. 0.0.0.0:9477), computed at each scrape
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Check the configuration and print the effective result
    CheckConfig,
    /// Make a key for sealed sets: an age identity (the default: sets are sealed to its public
    /// recipient, printed on stdout) or, with --signing, the cluster signing key (its public
    /// line, a trusted signer, printed on stdout). FILE is created 0600 and never overwritten.
    Keygen {
        /// Where the private key goes (a new file)
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Make the cluster signing key (OpenSSH Ed25519) instead of an age identity
        #[arg(long)]
        signing: bool,
    },
    /// Print the objects that install etcd-backup on OpenShift
    Render {
        #[command(subcommand)]
        what: RenderCmd,
    },
    /// Serve one sender on stdin/stdout (the SSH forced command on peers), or with --listen
    /// every sender over mutual TLS (Pod Mode's receivers)
    #[command(hide = true)]
    Receive {
        /// Accept mutual-TLS connections on ADDR (e.g. [::]:9443) with the [tls] certificates
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Issue this node's TLS certificate from the CA (what a Pod Mode pod runs at start)
    #[command(hide = true)]
    TlsIssue {
        /// The CA certificate (PEM)
        #[arg(long, value_name = "FILE")]
        ca_cert: PathBuf,
        /// The CA key (PEM)
        #[arg(long, value_name = "FILE")]
        ca_key: PathBuf,
        /// The node name the certificate carries [default: NODE_NAME, else the hostname]
        #[arg(long)]
        name: Option<String>,
        /// Where tls.crt, tls.key (0600) and ca.crt go
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

/// The command line as clap knows it: for the docs' tests, man pages and completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// What `main` calls.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The receiver's stderr goes back over SSH and is dropped: its journal is the audit trail.
    let journal = logging::init(
        cli.verbose,
        matches!(cli.command, Cmd::Receive { listen: None }),
    );
    match run(cli, journal) {
        Ok(code) => ExitCode::from(code),
        Err(error) => ExitCode::from(report(&error, journal, None)),
    }
}

/// Reports an error once: as one journal entry (with `message_id` when given) under systemd or
/// one JSON line with ETCD_BACKUP_LOG_FORMAT=json, as `error: …` then ` -> cause` lines on
/// stderr otherwise. Returns the exit code for it.
pub(crate) fn report(error: &anyhow::Error, journal: bool, message_id: Option<&str>) -> u8 {
    let chain: Vec<String> = error.chain().map(|c| c.to_string()).collect();
    if journal || logging::json() {
        match message_id {
            Some(id) => tracing::error!(message_id = id, "{}", chain.join(": ")),
            None => tracing::error!("{}", chain.join(": ")),
        }
    } else {
        eprintln!("error: {}", chain[0]);
        for cause in &chain[1..] {
            eprintln!(" -> {cause}");
        }
    }
    exit_code_for(error)
}

fn exit_code_for(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<ConfigError>().is_some() {
        EXIT_CONFIG
    } else if error.downcast_ref::<BusyError>().is_some() {
        EXIT_BUSY
    } else {
        EXIT_FAILED
    }
}

fn load_settings(cli: &Cli) -> Result<Settings> {
    let (path, required) = match &cli.config {
        Some(path) => (path.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let settings = Settings::load(&path, required)?;
    crate::files::set_write_bandwidth(settings.io.max_write_bandwidth);
    Ok(settings)
}

fn run(cli: Cli, journal: bool) -> Result<u8> {
    // Rendering happens on an admin's machine: etcd-backup's own config is not needed there.
    if let Cmd::Render { what } = &cli.command {
        return cmd_render(what);
    }
    // Keys are made where they are kept (an administrator's machine, a vault), not on a node.
    if let Cmd::Keygen { out, signing } = &cli.command {
        let kind = if *signing {
            crate::seal::keys::KeyKind::Signing
        } else {
            crate::seal::keys::KeyKind::Recipient
        };
        let public = crate::seal::keys::generate(kind, out)?;
        println!("{public}");
        return Ok(EXIT_OK);
    }
    let settings = load_settings(&cli)?;
    if lowers_priority(&cli.command) {
        crate::priority::lower();
    }
    match cli.command {
        Cmd::CheckConfig => {
            if crate::config::fips_mode() {
                println!(
                    "# FIPS mode ({} = 1): SHA-256 and TLS go through the system OpenSSL; \
                     [seal] is refused (age and Ed25519 are not FIPS-validated here): protect \
                     bucket copies with sse = \"aws:kms\"",
                    crate::paths::FIPS_ENABLED
                );
            }
            print!("{}", settings.to_toml());
            Ok(EXIT_OK)
        }
        Cmd::Backup => Ok(recorded(&settings, "backup", || {
            Ok(cmd_backup(&settings, journal))
        })?),
        Cmd::Prune { dry_run } => cmd_prune(&settings, dry_run),
        Cmd::List { json, from: None } => cmd_list(&settings, json),
        Cmd::List {
            json,
            from: Some(from),
        } => cmd_list_from(&settings, &from, json),
        Cmd::Verify {
            deep,
            target: None,
            targets,
            ids,
            ..
        } => recorded(&settings, "verify", || {
            cmd_verify(&settings, &ids, deep, targets)
        }),
        Cmd::Verify {
            deep,
            target: Some(target),
            identity,
            ids,
            ..
        } => recorded(&settings, "verify", || {
            cmd_verify_target(&settings, &target, &ids, deep, &identity)
        }),
        Cmd::Status { json } => cmd_status(&settings, json),
        Cmd::Stage {
            id,
            dir,
            allow_other_release,
        } => cmd_stage(&settings, &id, &dir, allow_other_release),
        Cmd::RestoreCheck {
            id,
            allow_other_release,
            json,
            target,
        } => cmd_restore_check(&settings, &id, target.as_deref(), allow_other_release, json),
        Cmd::Fetch { from, identity, id } => cmd_fetch(&settings, from.as_deref(), &identity, &id),
        Cmd::Spray => recorded(&settings, "spray", || cmd_spray(&settings)),
        Cmd::Metrics { textfile, listen } => {
            cmd_metrics(&settings, textfile.as_deref(), listen.as_deref())
        }
        Cmd::Receive { listen } => cmd_receive(&settings, listen.as_deref()),
        Cmd::TlsIssue {
            ca_cert,
            ca_key,
            name,
            out,
            days,
        } => cmd_tls_issue(&settings, &ca_cert, &ca_key, name.as_deref(), &out, days),
        Cmd::Render { .. } | Cmd::Keygen { .. } => unreachable!("handled above"),
    }
}

/// Whether a command lowers its own priority: the scheduled bulk work (the units set as much or
/// more; a peer's `receive` under sshd and Pod Mode's containers have only this). Not the quick
/// commands, nor `fetch` and `stage`: an administrator runs those when a restore is urgent.
fn lowers_priority(command: &Cmd) -> bool {
    matches!(
        command,
        Cmd::Backup | Cmd::Spray | Cmd::Receive { .. } | Cmd::Verify { .. }
    )
}

/// Runs a backup, spray or verify, records its outcome and duration in the store (for
/// `metrics`), then refreshes the metrics textfile. Recording never changes the outcome.
fn recorded(settings: &Settings, kind: &str, run: impl FnOnce() -> Result<u8>) -> Result<u8> {
    let start = chrono::Utc::now();
    let clock = std::time::Instant::now();
    let result = run();
    let ok = matches!(result, Ok(EXIT_OK));
    if let Some(store) = Store::existing(&settings.store.root)
        && let Err(error) = store.record_run(kind, start, clock.elapsed(), ok)
    {
        tracing::warn!("the {kind} run was not recorded: {error:#}");
    }
    crate::metrics::refresh(settings);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exit_codes_are_distinct_and_documented() {
        let codes = [
            EXIT_OK,
            EXIT_FAILED,
            EXIT_USAGE,
            EXIT_CONFIG,
            EXIT_PARTIAL,
            EXIT_BUSY,
            EXIT_STALE,
        ];
        let unique: std::collections::BTreeSet<_> = codes.iter().collect();
        assert_eq!(unique.len(), codes.len());
        for code in codes {
            assert!(EXIT_CODES_HELP.contains(&format!("  {code}  ")), "{code}");
        }
    }
}
