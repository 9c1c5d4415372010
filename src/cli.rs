//! Command line: parse, set up logging, dispatch, print the error chain, map it to an exit code.

use crate::config::{ConfigError, DEFAULT_CONFIG_PATH, Settings};
use crate::logging::{self, message_id};
use crate::store::{BusyError, Store, StoredSet};
use crate::units::human_size;
use crate::verify::hash_file;
use crate::{backup, prune};
use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

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
    /// List the sets in the store
    List {
        /// A JSON array of sets
        #[arg(long)]
        json: bool,
    },
    /// Re-hash sets from disk against their manifests (all sets when none is named)
    Verify {
        /// Also walk each snapshot's bbolt structure and compare etcd's figures with the manifest
        #[arg(long)]
        deep: bool,
        #[arg(value_name = "SET-ID")]
        ids: Vec<String>,
    },
    /// Copy a set from another store (a directory target, an NFS export) into this one, checked
    Fetch {
        /// Where from: a store directory, or a configured target (its id, or a bucket name)
        /// [default: every configured target, each file from the first that holds it]
        #[arg(long, value_name = "DIR|TARGET")]
        from: Option<String>,
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

#[derive(Debug, Subcommand)]
enum RenderCmd {
    /// A MachineConfig for the master pool: config, spray key, units, core's key, and the binary
    /// (installed from a pinned image by default)
    Machineconfig(Box<MachineconfigArgs>),
    /// The OpenShift 4.17+ node disruption policy: timer restarts instead of reboots
    NodeDisruptionPolicy,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("delivery").required(true).args(["image", "embed_binary"])))]
struct MachineconfigArgs {
    /// The config.toml every master gets (validated; must not set node.name)
    #[arg(long, value_name = "FILE")]
    node_config: PathBuf,
    /// The image the masters install the binary from, pinned by digest (a tag alone is refused)
    #[arg(long, value_name = "REF@sha256:DIGEST", value_parser = crate::render::image::parse_pinned)]
    image: Option<crate::render::image::PinnedImage>,
    /// The sha256 the installed binary must have [default: the sha256 of --binary]
    #[arg(long, value_name = "HEX", conflicts_with_all = ["binary", "embed_binary"])]
    binary_sha256: Option<String>,
    /// The binary the image was built from (--image), or to embed [default: this one]
    #[arg(long, value_name = "FILE")]
    binary: Option<PathBuf>,
    /// Carry the binary inside the MachineConfig instead of an image (over 1 MiB: see README)
    #[arg(long)]
    embed_binary: bool,
    /// With --embed-binary: render even when the MachineConfig is over 1.2 MiB
    #[arg(long, conflicts_with = "image")]
    force: bool,
    /// The spray private key (ECDSA P-256 recommended) [default: generate a fresh one]
    #[arg(long, value_name = "FILE")]
    spray_key: Option<PathBuf>,
    /// The peers' host keys; without it the config pins them on first contact (accept-new)
    #[arg(long, value_name = "FILE")]
    known_hosts: Option<PathBuf>,
    /// An AWS shared-credentials file (0600) for the S3 targets whose credentials are
    /// /etc/etcd-backup/s3-credentials, a profile per target
    #[arg(long, value_name = "FILE")]
    s3_credentials: Option<PathBuf>,
    #[arg(long, default_value = "99-master-etcd-backup")]
    name: String,
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
fn report(error: &anyhow::Error, journal: bool, message_id: Option<&str>) -> u8 {
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
    Ok(Settings::load(&path, required)?)
}

fn run(cli: Cli, journal: bool) -> Result<u8> {
    // Rendering happens on an admin's machine: etcd-backup's own config is not needed there.
    if let Cmd::Render { what } = &cli.command {
        return cmd_render(what);
    }
    let settings = load_settings(&cli)?;
    match cli.command {
        Cmd::CheckConfig => {
            print!("{}", settings.to_toml());
            Ok(EXIT_OK)
        }
        Cmd::Backup => Ok(recorded(&settings, "backup", || {
            Ok(cmd_backup(&settings, journal))
        })?),
        Cmd::Prune { dry_run } => cmd_prune(&settings, dry_run),
        Cmd::List { json } => cmd_list(&settings, json),
        Cmd::Verify { deep, ids } => {
            recorded(&settings, "verify", || cmd_verify(&settings, &ids, deep))
        }
        Cmd::Status { json } => cmd_status(&settings, json),
        Cmd::Stage { id, dir } => cmd_stage(&settings, &id, &dir),
        Cmd::Fetch { from, id } => cmd_fetch(&settings, from.as_deref(), &id),
        Cmd::Spray => recorded(&settings, "spray", || cmd_spray(&settings)),
        Cmd::Metrics {
            textfile: Some(dir),
            ..
        } => {
            crate::metrics::write_textfile(&dir, &crate::metrics::gather(&settings)?)?;
            Ok(EXIT_OK)
        }
        Cmd::Metrics {
            listen: Some(addr), ..
        } => crate::metrics::http::serve(&settings, &addr).map(|()| EXIT_OK),
        Cmd::Metrics { .. } => {
            print!("{}", crate::metrics::gather(&settings)?);
            Ok(EXIT_OK)
        }
        Cmd::Receive { listen: None } => cmd_receive(&settings),
        Cmd::Receive { listen: Some(addr) } => {
            crate::listen::listen(&settings, &addr).map(|()| EXIT_OK)
        }
        Cmd::TlsIssue {
            ca_cert,
            ca_key,
            name,
            out,
            days,
        } => cmd_tls_issue(&settings, &ca_cert, &ca_key, name.as_deref(), &out, days),
        Cmd::Render { .. } => unreachable!("handled above"),
    }
}

/// Runs a backup, spray or verify, records its outcome and duration in the store (for
/// `metrics`), then refreshes the metrics textfile. Recording never changes the outcome.
fn recorded(settings: &Settings, kind: &str, run: impl FnOnce() -> Result<u8>) -> Result<u8> {
    let start = chrono::Utc::now();
    let clock = std::time::Instant::now();
    let result = run();
    let ok = matches!(result, Ok(EXIT_OK));
    if let Some(store) = Store::existing(&settings.store.root)
        && let Err(error) = crate::runs::record(&store, kind, start, clock.elapsed(), ok)
    {
        tracing::warn!("the {kind} run was not recorded: {error:#}");
    }
    crate::metrics::refresh(settings);
    result
}

/// A failed backup, whatever the cause (busy store included), is one BACKUP_FAILED entry.
fn cmd_backup(settings: &Settings, journal: bool) -> u8 {
    let result = (|| {
        let store = Store::open(&settings.store.root)?;
        let _lock = store.lock(settings.store.lock_wait)?;
        for removed in store.gc_staging(settings.store.gc_grace, SystemTime::now())? {
            tracing::info!(path = %removed.display(), "removed staging leftover");
        }
        let sets = store.list()?.sets;
        let held: Vec<_> = sets
            .iter()
            .filter(|s| s.problem.is_none())
            .map(|s| s.info())
            .collect();
        let turn = crate::takeover::whose_turn(
            &settings.node_name,
            &settings.backup.snapshot_nodes,
            &held,
            chrono::Utc::now(),
            settings.not_after(),
            settings.backup.takeover_after,
        );
        let set = match turn {
            crate::takeover::Turn::Skip(why) => {
                tracing::info!("not taking a backup: {why}");
                None
            }
            crate::takeover::Turn::Take(why) => {
                tracing::info!("taking a backup: {why}");
                Some(backup::take_backup(settings, &store, &sets)?)
            }
        };
        prune::prune(&store, &settings.retention, false, settings.not_after()).with_context(
            || match &set {
                Some(set) => format!("set {} was committed, but pruning failed", set.id()),
                None => "pruning failed".to_string(),
            },
        )?;
        Ok::<Option<StoredSet>, anyhow::Error>(set)
    })();
    match result {
        Ok(set) => {
            if let Some(set) = set {
                println!("{}", set.id());
            }
            EXIT_OK
        }
        Err(error) => report(
            &error.context("backup failed"),
            journal,
            Some(message_id::BACKUP_FAILED),
        ),
    }
}

fn cmd_render(what: &RenderCmd) -> Result<u8> {
    use crate::render;
    let RenderCmd::Machineconfig(args) = what else {
        print!("{}", render::node_disruption_policy());
        return Ok(EXIT_OK);
    };
    let MachineconfigArgs {
        node_config,
        image,
        binary_sha256,
        binary,
        embed_binary,
        force,
        spray_key,
        known_hosts,
        s3_credentials,
        name,
    } = &**args;
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).with_context(|| format!("cannot read '{}'", path.display()))
    };
    let config_toml = read(node_config)?;
    // The same loader the masters use; an empty hostname shows whether node.name is pinned.
    let settings =
        Settings::from_sources(String::new(), &[(node_config.clone(), config_toml.clone())])?;
    if !settings.node_name.is_empty() {
        return Err(ConfigError(format!(
            "{}: node.name is set, but every master gets this file: leave it out (each master uses its hostname)",
            node_config.display()
        ))
        .into());
    }
    let pinned = image.as_ref();
    let binary_path = match binary {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("cannot find this binary's path")?,
    };
    let embedded = if *embed_binary {
        std::fs::read(&binary_path)
            .with_context(|| format!("cannot read '{}'", binary_path.display()))?
    } else {
        Vec::new()
    };
    let sha256 = match (pinned, binary_sha256) {
        (None, _) => String::new(),
        (Some(_), Some(hex)) => hex.to_ascii_lowercase(),
        (Some(_), None) => hash_file(&binary_path)
            .with_context(|| format!("cannot hash '{}'", binary_path.display()))?
            .hex(),
    };
    let delivery = match pinned {
        Some(image) => render::Delivery::Image {
            image,
            binary_sha256: &sha256,
        },
        None => render::Delivery::Embedded { binary: &embedded },
    };
    let (private, public) = match spray_key {
        Some(path) => (read(path)?, render::public_key_of(path)?),
        None => render::generate_keypair()?,
    };
    let known_hosts = known_hosts.as_ref().map(read).transpose()?;
    if known_hosts.is_none() {
        tracing::warn!("{}", render::ACCEPT_NEW_WARNING);
    }
    let s3_credentials = s3_credentials
        .as_deref()
        .map(crate::s3::credentials::read_private)
        .transpose()?;
    for warning in render::check_s3_credentials(&settings.spray.targets, s3_credentials.as_deref())?
    {
        tracing::warn!("{warning}");
    }
    let yaml = render::machineconfig(&render::Inputs {
        name,
        delivery,
        config_toml: &config_toml,
        known_hosts: known_hosts.as_deref(),
        spray_private_key: &private,
        spray_public_key: &public,
        s3_credentials: s3_credentials.as_deref(),
    })?;
    let kib = yaml.len() >> 10;
    if *embed_binary {
        let budget = render::MACHINECONFIG_BUDGET_BYTES;
        let refuse = render::EMBEDDED_REFUSE_BYTES;
        let why = "etcd refuses requests over 1.5 MiB, the rendered master config holds every MachineConfig of the pool, and the operator keeps every old rendered config";
        if yaml.len() >= render::ETCD_REQUEST_LIMIT_BYTES {
            bail!(
                "the MachineConfig with the binary embedded is {kib} KiB: etcd refuses any request over {} KiB, so no cluster could take it, forced or not: install from an image (--image REF@sha256:DIGEST)",
                render::ETCD_REQUEST_LIMIT_BYTES >> 10
            );
        }
        if yaml.len() > refuse && !force {
            bail!(
                "the MachineConfig with the binary embedded is {kib} KiB, over {} KiB ({why}): install from an image (--image REF@sha256:DIGEST), or pass --force",
                refuse >> 10
            );
        }
        eprintln!(
            "MachineConfig {name}: {kib} KiB, the binary embedded ({} KiB)",
            embedded.len() >> 10
        );
        if yaml.len() > budget {
            tracing::warn!(
                bytes = yaml.len(),
                "the MachineConfig is {kib} KiB, over the {} KiB budget ({why}); --image keeps it under {} KiB",
                budget >> 10,
                render::IMAGE_MACHINECONFIG_BUDGET_BYTES >> 10
            );
        }
    } else {
        eprintln!(
            "MachineConfig {name}: {kib} KiB; the masters install the binary with sha256 {sha256} from {}",
            pinned.map_or("", |p| p.reference.as_str())
        );
        if yaml.len() > render::IMAGE_MACHINECONFIG_BUDGET_BYTES {
            tracing::warn!(
                bytes = yaml.len(),
                "the MachineConfig is {kib} KiB, over its {} KiB budget",
                render::IMAGE_MACHINECONFIG_BUDGET_BYTES >> 10
            );
        }
    }
    print!("{yaml}");
    Ok(EXIT_OK)
}

fn cmd_spray(settings: &Settings) -> Result<u8> {
    let store = Store::open(&settings.store.root)?;
    let _spraying = store.lock_named(crate::store::SPRAY_LOCK_FILE, settings.store.lock_wait)?;
    let (targets, warnings) = crate::targets::from_settings(settings)?;
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    if targets.is_empty() {
        tracing::warn!(
            "no spray targets: no peers in etcd.env or spray.peers, no [[spray.target]]"
        );
        return Ok(EXIT_OK);
    }
    // An empty local history still runs: it sends nothing and deletes nothing remotely.
    // The lock is held only to list and open the sets: open files survive a prune, and a
    // receiver on this node (a peer spraying at the same time) needs the lock to commit.
    let sets = {
        let _lock = store.lock(settings.store.lock_wait)?;
        crate::spray::open_sets(store.list()?.sets)
    };
    let results = crate::spray::spray_all(settings, &targets, &sets);
    crate::spray::write_state(&store, &results)?;
    let failed = results.iter().filter(|r| r.result.is_err()).count();
    for result in &results {
        match &result.result {
            Ok(stats) => println!(
                "ok      {}  ({} sent, {} bytes, {} on the wire)",
                result.name,
                stats.sent.len(),
                stats.data_bytes,
                stats.wire_bytes
            ),
            Err(error) => println!(
                "FAILED  {}  after {} attempt(s): {error}",
                result.name, result.attempts
            ),
        }
    }
    Ok(match failed {
        0 => EXIT_OK,
        n if n == results.len() => EXIT_FAILED,
        _ => EXIT_PARTIAL,
    })
}

fn cmd_tls_issue(
    settings: &Settings,
    ca_cert: &std::path::Path,
    ca_key: &std::path::Path,
    name: Option<&str>,
    out: &std::path::Path,
    days: u32,
) -> Result<u8> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("cannot read '{}'", path.display()))
    };
    let (ca_pem, key_pem) = (read(ca_cert)?, read(ca_key)?);
    let name = name.unwrap_or(&settings.node_name);
    let (cert, key) = crate::tls::issue(&ca_pem, &key_pem, name, days)?;
    crate::store::ensure_private_dir(out)?;
    crate::store::write_atomic(out, "tls.key", &key)?;
    crate::store::write_atomic(out, "tls.crt", &cert)?;
    crate::store::write_atomic(out, "ca.crt", &ca_pem)?;
    println!(
        "issued {}: CN and DNS name {name}, {days} days",
        out.join("tls.crt").display()
    );
    Ok(EXIT_OK)
}

fn cmd_receive(settings: &Settings) -> Result<u8> {
    use std::os::fd::AsFd;
    let store = Store::open(&settings.store.root)?;
    // Raw descriptors: stdout carries frames only, in large writes.
    let input = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let output = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    crate::receive::widen_pipe(&input);
    let peer = crate::receive::PeerSender {
        authenticated: None,
        // sshd says where the sender connects from: "client-ip client-port server-ip port".
        from: std::env::var("SSH_CONNECTION")
            .ok()
            .and_then(|c| c.split(' ').next().map(str::to_string))
            .unwrap_or_else(|| "stdin".to_string()),
        deadline: crate::deadline::Deadline::after(crate::receive::HELLO_TIMEOUT),
    };
    let input = crate::deadline::TimeoutReader::new(
        input,
        settings.spray.io_timeout,
        peer.deadline.clone(),
    );
    let stream = crate::protocol::Duplex::new(
        std::io::BufReader::with_capacity(crate::protocol::CHUNK_BYTES, input),
        std::io::BufWriter::with_capacity(1 << 16, output),
    );
    let mut conn = crate::protocol::Conn::new(stream, false);
    let stats = crate::receive::serve(
        settings,
        &store,
        &mut conn,
        crate::receive::Sender::Peer(&peer),
    )?;
    tracing::debug!(
        sets = stats.committed.len(),
        bytes = stats.data_bytes,
        "receive done"
    );
    Ok(EXIT_OK)
}

fn cmd_prune(settings: &Settings, dry_run: bool) -> Result<u8> {
    let store = Store::open(&settings.store.root)?;
    let _lock = store.lock(settings.store.lock_wait)?;
    let plan = prune::prune(&store, &settings.retention, dry_run, settings.not_after())?;
    for decision in &plan.decisions {
        let reasons: Vec<String> = decision
            .keep_reasons
            .iter()
            .map(|r| r.to_string())
            .collect();
        match decision.delete {
            None => println!("keep    {}  ({})", decision.set.id, reasons.join(", ")),
            Some(reason) => println!(
                "{}  {}  ({reason})",
                if dry_run { "would delete" } else { "deleted" },
                decision.set.id
            ),
        }
    }
    if let Some(reason) = plan.pressure_unmet {
        println!("warning: {reason} even after pruning every set that may go");
    }
    Ok(EXIT_OK)
}

fn cmd_list(settings: &Settings, json: bool) -> Result<u8> {
    let store = open_existing(settings)?;
    let listing = store.list()?;
    for (dir, reason) in &listing.unreadable {
        eprintln!("warning: unreadable set '{}': {reason}", dir.display());
    }
    if json {
        let sets: Vec<serde_json::Value> = listing
            .sets
            .iter()
            .map(|set| {
                let m = &set.manifest;
                serde_json::json!({
                    "id": m.id,
                    "origin": m.origin,
                    "created": m.created,
                    "size": m.total_size(),
                    "dirty": m.dirty,
                    "etcd": m.checks.etcd,
                    "verified": set.problem.is_none(),
                    "problem": set.problem,
                    "last_verification": set.last_verification,
                    "path": set.dir,
                    "files": m.files,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&sets)?);
        return Ok(EXIT_OK);
    }
    println!(
        "{:<40} {:<20} {:<20} {:>9} {:<5} VERIFIED",
        "ID", "ORIGIN", "CREATED", "SIZE", "DIRTY"
    );
    for set in &listing.sets {
        let m = &set.manifest;
        println!(
            "{:<40} {:<20} {:<20} {:>9} {:<5} {}",
            m.id,
            m.origin,
            m.created.format("%Y-%m-%d %H:%M:%SZ"),
            human_size(m.total_size()),
            if m.dirty { "yes" } else { "no" },
            match &set.problem {
                None => "yes".to_string(),
                Some(problem) => format!("NO: {problem}"),
            }
        );
    }
    Ok(EXIT_OK)
}

/// Read-only commands do not create a store that is not there.
fn open_existing(settings: &Settings) -> Result<Store> {
    let root = &settings.store.root;
    if !root.join(crate::store::SETS_DIR).is_dir() {
        bail!(
            "no store at '{}' (no backup has been taken there yet)",
            root.display()
        );
    }
    Store::open(root)
}

/// Re-hashes one set from disk (and with `deep` walks its snapshot); `Err` says what is wrong.
fn verify_set(set: &StoredSet, deep: bool) -> Result<()> {
    // A failure recorded by an earlier verify is checked again, not repeated.
    if let Some(problem) = &set.on_disk_problem {
        bail!("{problem}");
    }
    for file in &set.manifest.files {
        crate::verify::check_file_against(
            &set.dir.join(&file.name),
            file,
            set.manifest.checks.etcd.as_ref(),
            deep,
        )?;
    }
    Ok(())
}

fn cmd_verify(settings: &Settings, ids: &[String], deep: bool) -> Result<u8> {
    let store = open_existing(settings)?;
    // Prune must not remove a set under our feet.
    let _lock = store.lock(settings.store.lock_wait)?;
    let mut bad = 0usize;
    let mut recorded = Vec::new();
    let mut report = |id: &str, set: Option<&StoredSet>, result: Result<()>| {
        let problem = match result {
            Ok(()) => {
                println!("ok   {id}");
                None
            }
            Err(error) => {
                bad += 1;
                println!("BAD  {id}: {error:#}");
                Some(format!("{error:#}"))
            }
        };
        if let Some(set) = set {
            recorded.push((
                set.manifest_sha256.clone(),
                crate::store::Verification {
                    at: chrono::Utc::now(),
                    deep,
                    problem,
                },
            ));
        }
    };
    if ids.is_empty() {
        let listing = store.list()?;
        for (dir, reason) in &listing.unreadable {
            report(
                &dir.display().to_string(),
                None,
                Err(anyhow::anyhow!("{reason}")),
            );
        }
        for set in &listing.sets {
            report(set.id(), Some(set), verify_set(set, deep));
        }
    } else {
        for id in ids {
            match store.get(id) {
                Ok(set) => report(id, Some(&set), verify_set(&set, deep)),
                Err(e) => report(id, None, Err(e)),
            }
        }
    }
    // The outcome lasts: list, status, retention and spray see it until the next verify.
    store.record_verifications(&recorded)?;
    if bad > 0 {
        eprintln!("error: {bad} bad set(s) in '{}'", store.root().display());
        return Ok(EXIT_FAILED);
    }
    Ok(EXIT_OK)
}

fn cmd_fetch(settings: &Settings, from: Option<&str>, id: &str) -> Result<u8> {
    use crate::config::TargetConfig;
    use crate::stage::Source;
    use crate::targets::Target;
    let configured: Vec<(String, Source)> = settings
        .spray
        .targets
        .iter()
        .map(|t| match t {
            TargetConfig::Dir(d) => (
                crate::targets::dir::DirStore(d.clone()).id(),
                Source::Dir(d.path.clone()),
            ),
            TargetConfig::S3(s) => (
                crate::targets::s3::Bucket(s.clone()).id(),
                Source::Bucket(Box::new(s.clone())),
            ),
        })
        .collect();
    let sources: Vec<Source> = match from {
        Some(path) if path.starts_with('/') => vec![Source::Dir(PathBuf::from(path))],
        Some(name) => {
            let matching: Vec<Source> = configured
                .iter()
                .filter(|(target_id, source)| {
                    target_id == name || matches!(source, Source::Bucket(t) if t.bucket == name)
                })
                .map(|(_, source)| source.clone())
                .collect();
            if matching.is_empty() {
                let ids: Vec<&str> = configured.iter().map(|(i, _)| i.as_str()).collect();
                bail!(
                    "--from '{name}' is neither a directory (an absolute path) nor a configured target (ids: {}; or a bucket name)",
                    if ids.is_empty() {
                        "none".to_string()
                    } else {
                        ids.join(", ")
                    }
                );
            }
            matching
        }
        None => configured.into_iter().map(|(_, s)| s).collect(),
    };
    if sources.is_empty() {
        bail!(
            "no store to fetch set '{id}' from: give --from DIR (no [[spray.target]] is configured)"
        );
    }
    let store = Store::open(&settings.store.root)?;
    let _lock = store.lock(settings.store.lock_wait)?;
    let timeouts = (settings.spray.connect_timeout, settings.spray.io_timeout);
    let floor = settings.retention.min_free_space.unwrap_or(0);
    let (set, how, origins) = crate::stage::fetch(&store, &sources, id, timeouts, floor)
        .with_context(|| format!("set '{id}' could not be fetched"))?;
    let what = match how {
        crate::stage::Fetched::Committed => "fetched",
        crate::stage::Fetched::Repaired => "fetched, replacing a damaged copy,",
        crate::stage::Fetched::AlreadyHeld => "already held, sound:",
    };
    println!("{what} set {id} into '{}'", set.dir.display());
    for origin in origins {
        println!("  {origin}");
    }
    Ok(EXIT_OK)
}

fn cmd_stage(settings: &Settings, id: &str, dir: &std::path::Path) -> Result<u8> {
    let store = open_existing(settings)?;
    // Prune must not remove the set while it is copied.
    let _lock = store.lock(settings.store.lock_wait)?;
    let set = crate::stage::stage(&store, id, dir)?;
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let dir = dir.as_path();
    let m = &set.manifest;
    let revision = m
        .checks
        .etcd
        .as_ref()
        .map_or(String::new(), |e| format!(", etcd revision {}", e.revision));
    println!(
        "staged set {} (from {}, created {}{revision}) in {}:",
        m.id,
        m.origin,
        m.created.format("%Y-%m-%d %H:%M:%SZ"),
        dir.display()
    );
    for file in &m.files {
        println!("  {}", dir.join(&file.name).display());
    }
    println!(
        "next, on the recovery master (OpenShift's restore procedure):\n  sudo -E /usr/local/bin/cluster-restore.sh {}",
        dir.display()
    );
    Ok(EXIT_OK)
}

fn cmd_status(settings: &Settings, json: bool) -> Result<u8> {
    let root = &settings.store.root;
    // No store yet is a status too (stale), not an error.
    let view = crate::status::StoreView::read(root)?;
    let (listing, targets) = (&view.listing, &view.targets);
    let summary = view.summary(settings.status.max_age, settings.max_clock_skew);
    let (newest, age, fresh, max_age) =
        (summary.newest, summary.age, summary.fresh, summary.max_age);
    if json {
        let value = serde_json::json!({
            "store": root,
            "sets": listing.sets.len(),
            "newest": newest.map(|s| serde_json::json!({
                "id": s.manifest.id,
                "origin": s.manifest.origin,
                "created": s.manifest.created,
                "dirty": s.manifest.dirty,
            })),
            "age_seconds": age.map(|a| a.as_secs()),
            "max_age_seconds": max_age.as_secs(),
            "fresh": fresh,
            "failed": summary.failed.iter().map(|s| serde_json::json!({
                "id": s.manifest.id,
                "origin": s.manifest.origin,
                "problem": s.problem,
            })).collect::<Vec<_>>(),
            "future_dated": summary.future.iter().map(|s| &s.manifest.id).collect::<Vec<_>>(),
            "targets": targets,
            "coverage": summary.coverage,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        match (newest, age) {
            (Some(set), Some(age)) => println!(
                "newest set {} from {} created {} ({} ago, bound {}): {}",
                set.manifest.id,
                set.manifest.origin,
                set.manifest.created.format("%Y-%m-%d %H:%M:%SZ"),
                crate::units::format_duration(age),
                crate::units::format_duration(max_age),
                if fresh { "fresh" } else { "STALE" }
            ),
            _ => println!("no backup set in '{}': STALE", root.display()),
        }
        for set in &summary.future {
            println!(
                "WARNING: set {} is dated {}, after this node's clock plus node.max_clock_skew ({}): not counted (a clock set wrong, or a forged set)",
                set.manifest.id,
                set.manifest.created.format("%Y-%m-%d %H:%M:%SZ"),
                crate::units::format_duration(settings.max_clock_skew)
            );
        }
        for set in &summary.failed {
            println!(
                "newest set {} from {} is BAD: {}",
                set.manifest.id,
                set.manifest.origin,
                set.problem.as_deref().unwrap_or_default()
            );
        }
        for (id, target) in targets {
            let name = if target.name.is_empty() {
                id
            } else {
                &target.name
            };
            match &target.last_error {
                None => println!(
                    "target {name}: current, holds {} of our sets (last success {})",
                    target.sets_held,
                    fmt_time(target.last_success)
                ),
                Some(error) => println!(
                    "target {name}: BEHIND since the last success {}: {error}",
                    fmt_time(target.last_success)
                ),
            }
        }
        if let Some(note) = summary.coverage.and_then(|c| c.note()) {
            println!("{note}");
        }
    }
    Ok(summary.exit_code())
}

fn fmt_time(time: Option<chrono::DateTime<chrono::Utc>>) -> String {
    time.map_or_else(
        || "never".to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string(),
    )
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
