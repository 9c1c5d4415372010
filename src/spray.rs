//! `spray`: the sending side. `push` speaks the protocol over any byte stream; targets (SSH
//! peers, directory targets) only provide the stream.

use crate::protocol::{Conn, Message, Offer, PROTOCOL_VERSION, Stream};
use crate::store::StoredSet;
use crate::verify::open_regular;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// A set opened for sending. Its files stay readable through these handles even if a prune
/// removes the set meanwhile, so a spray holds the store lock only while it lists and opens
/// (a receiver on this node needs that lock to commit what a peer sends it).
pub struct OpenSet {
    pub set: StoredSet,
    /// One handle per manifest file, in manifest order; read with `pread`, so that every
    /// target's thread shares them.
    files: Vec<File>,
}

/// Opens the files of every set without a problem. A set that cannot be opened (removed or
/// damaged since it was listed) is left out with a warning.
pub fn open_sets(sets: Vec<StoredSet>) -> Vec<OpenSet> {
    sets.into_iter()
        .filter(|set| set.problem.is_none())
        .filter_map(|set| {
            let files: Result<Vec<File>> = set
                .manifest
                .files
                .iter()
                .map(|f| open_regular(&set.dir.join(&f.name)))
                .collect();
            match files {
                Ok(files) => Some(OpenSet { set, files }),
                Err(e) => {
                    tracing::warn!(set_id = %set.id(), "not offering set {}: {e:#}", set.id());
                    None
                }
            }
        })
        .collect()
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PushStats {
    /// Sets the receiver committed in this run.
    pub sent: Vec<String>,
    /// Sets offered (every local set without a problem).
    pub offered: usize,
    /// Offered sets the receiver holds after this run (the rest it declined by its retention).
    pub held: usize,
    /// File bytes sent (before compression) and bytes on the wire.
    pub data_bytes: u64,
    pub wire_bytes: u64,
}

/// Offers `sets` to the receiver at the other end of `conn` and sends what it lacks, newest
/// first, resuming cut files from where they stopped. An error the receiver reports is returned
/// with its message.
pub fn push<S: Stream>(conn: &mut Conn<S>, sender: &str, sets: &[OpenSet]) -> Result<PushStats> {
    // Damaged sets were never opened. The manifest bytes offered are the ones the store read,
    // hashed and will send.
    let intact: BTreeMap<&str, &OpenSet> = sets.iter().map(|s| (s.set.id(), s)).collect();
    let offers: Vec<Offer> = intact
        .values()
        .map(|OpenSet { set, .. }| Offer {
            id: set.id().to_string(),
            manifest_sha256: set.manifest_sha256.clone(),
            size: set.manifest.total_size(),
            dirty: set.manifest.dirty,
        })
        .collect();
    let offered = offers.len();
    conn.send(&Message::Hello {
        version: PROTOCOL_VERSION,
        sender: sender.to_string(),
        offers,
    })?;
    let (wants, holds) = match reply(conn)? {
        Message::Welcome {
            version,
            wants,
            holds,
            ..
        } if version == PROTOCOL_VERSION => (wants, holds),
        Message::Welcome { version, .. } => {
            bail!("receiver speaks protocol version {version}, not {PROTOCOL_VERSION}")
        }
        other => bail!("unexpected answer to hello: {other:?}"),
    };
    let mut stats = PushStats {
        offered,
        ..PushStats::default()
    };
    let mut buf = vec![0u8; crate::protocol::CHUNK_BYTES];
    for want in &wants {
        let Some(OpenSet { set, files }) = intact.get(want.id.as_str()).copied() else {
            bail!(
                "receiver asked for set '{}', which was not offered",
                want.id
            );
        };
        let result = (|| -> Result<()> {
            conn.send(&Message::SetBegin {
                id: want.id.clone(),
                manifest: set.manifest_json.clone(),
            })?;
            for (file, source) in set.manifest.files.iter().zip(files) {
                let offset = want.held.get(&file.name).copied().unwrap_or(0);
                if offset > file.size {
                    bail!(
                        "receiver claims {offset} bytes of '{}', which has {}",
                        file.name,
                        file.size
                    );
                }
                conn.send(&Message::FileBegin {
                    name: file.name.clone(),
                    offset,
                })?;
                let mut pos = offset;
                while pos < file.size {
                    let n = buf.len().min((file.size - pos) as usize);
                    source.read_exact_at(&mut buf[..n], pos).with_context(|| {
                        format!("cannot read '{}'", set.dir.join(&file.name).display())
                    })?;
                    conn.send_data(&buf[..n])?;
                    crate::failpoint::hit("spray:sending");
                    pos += n as u64;
                }
                conn.send(&Message::FileEnd {
                    name: file.name.clone(),
                })?;
            }
            conn.send(&Message::SetEnd {
                id: want.id.clone(),
            })?;
            Ok(())
        })();
        // A write failed: our link is cut, or the receiver gave up and its Error frame says
        // why. Half-close first so a receiver still waiting for data sees EOF, not silence.
        if let Err(error) = result {
            let _ = conn.close_write();
            return Err(match reply(conn) {
                Err(receiver_error) => receiver_error.context(format!("{error:#}")),
                Ok(_) => error,
            });
        }
        let committed = reply(conn).with_context(|| {
            format!(
                "set '{}' was sent but its commit was not confirmed (the next run sees whether \
                 the receiver holds it)",
                want.id
            )
        })?;
        match committed {
            Message::Committed { id } if id == want.id => stats.sent.push(id),
            other => bail!("unexpected answer to set '{}': {other:?}", want.id),
        }
    }
    conn.send(&Message::Bye)?;
    stats.held = holds + stats.sent.len();
    stats.data_bytes = conn.data_bytes_sent;
    stats.wire_bytes = conn.wire_bytes_sent;
    Ok(stats)
}

/// A receiver waits at most its own `lock_wait` (10m by default); one that keeps saying it
/// waits for longer than this is not believed.
const MAX_RECEIVER_WAIT: std::time::Duration = std::time::Duration::from_secs(3600);

/// The receiver's next answer, past its keepalives; its Error frame becomes an error carrying
/// its words.
fn reply<S: Stream>(conn: &mut Conn<S>) -> Result<Message> {
    let started = std::time::Instant::now();
    loop {
        match conn.next_message() {
            Ok(Message::Waiting { reason }) if started.elapsed() > MAX_RECEIVER_WAIT => {
                bail!("the receiver has been waiting for over an hour: {reason}")
            }
            Ok(Message::Waiting { reason }) => tracing::debug!("the receiver waits: {reason}"),
            Ok(Message::Error { message }) => bail!("receiver refused: {message}"),
            Ok(message) => return Ok(message),
            Err(e) => return Err(anyhow::Error::from(e).context("no answer from the receiver")),
        }
    }
}

/// Where a run sprays to.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Peer {
        name: String,
        addr: crate::config::PeerAddr,
    },
    Dir(crate::config::DirTarget),
}

impl Target {
    pub fn name(&self) -> String {
        match self {
            Target::Peer { name, addr } if *name == addr.to_string() => name.clone(),
            Target::Peer { name, addr } => format!("{name} ({addr})"),
            Target::Dir(dir) => format!("dir:{}", dir.path.display()),
        }
    }
}

/// This node's own addresses, so that it never sprays to itself.
fn own_addresses() -> Vec<std::net::IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|a| {
            a.as_sockaddr_in()
                .map(|v4| std::net::IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip())))
        })
        .collect()
}

/// The targets of a run: etcd.env's masters and explicit peers (never this node), then the
/// directory targets. Problems that do not stop the run come back as warnings.
pub fn targets(settings: &crate::config::Settings) -> Result<(Vec<Target>, Vec<String>)> {
    let spray = &settings.spray;
    let own = own_addresses();
    let mut warnings = Vec::new();
    let mut found: Vec<Target> = Vec::new();
    if let Some(path) = &spray.etcd_env {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let env = crate::peers::parse_etcd_env(&text);
                warnings.extend(
                    env.problems
                        .iter()
                        .map(|p| format!("'{}': {p}", path.display())),
                );
                for peer in crate::peers::select_peers(&env.peers, &settings.node_name, &own) {
                    let ip = peer.ip.expect("selected peers have an address");
                    found.push(Target::Peer {
                        name: peer.name.clone(),
                        addr: crate::config::PeerAddr {
                            host: ip.to_string(),
                            port: crate::config::SSH_PORT,
                        },
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                warnings.push(format!(
                    "no etcd.env at '{}': no peers from it",
                    path.display()
                ));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read etcd.env '{}'", path.display()));
            }
        }
    }
    for addr in &spray.peers {
        let is_self = addr
            .host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| own.contains(&ip))
            || addr.host.eq_ignore_ascii_case(&settings.node_name);
        let duplicate = found
            .iter()
            .any(|t| matches!(t, Target::Peer { addr: a, .. } if a == addr));
        if !is_self && !duplicate {
            found.push(Target::Peer {
                name: addr.to_string(),
                addr: addr.clone(),
            });
        }
    }
    found.extend(spray.targets.iter().cloned().map(Target::Dir));
    Ok((found, warnings))
}

/// `path` is the mount point of a filesystem (/proc/self/mountinfo field 5, octal escapes).
pub fn is_mount_point(path: &std::path::Path) -> Result<bool> {
    let path = std::fs::canonicalize(path)
        .with_context(|| format!("cannot resolve '{}'", path.display()))?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .context("cannot read /proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mount| unescape_mount(mount) == path.as_os_str().to_string_lossy()))
}

fn unescape_mount(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&code, 8) {
                Ok(b) => out.push(b as char),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&code);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One push to one target, over SSH or to a directory store in-process.
fn push_to(
    target: &Target,
    settings: &crate::config::Settings,
    sets: &[OpenSet],
) -> Result<PushStats> {
    match target {
        Target::Peer { addr, .. } => {
            let stream = crate::ssh::connect(addr, &settings.spray)?;
            let mut conn = Conn::new(stream, settings.spray.compress);
            let stats = push(&mut conn, &settings.node_name, sets)?;
            let status = conn.get_mut().finish().context("closing the channel")?;
            if status != 0 {
                bail!("the remote command exited with status {status}");
            }
            Ok(stats)
        }
        Target::Dir(dir) => {
            if dir.require_mount && !is_mount_point(&dir.path)? {
                bail!(
                    "'{}' is not a mount point and require_mount is set: refusing to fill the local disk (is the NFS share mounted?)",
                    dir.path.display()
                );
            }
            let mut target_settings = settings.clone();
            target_settings.store.root = dir.path.clone();
            target_settings.node_name = target.name();
            let store = crate::store::Store::open(&dir.path)?;
            let (sending, receiving) = crate::protocol::pipe_pair()?;
            let mut conn = Conn::new(sending, false);
            std::thread::scope(|scope| {
                let mut receiving = Conn::new(receiving, false);
                let (settings, store) = (&target_settings, &store);
                let server =
                    scope.spawn(move || crate::receive::serve(settings, store, &mut receiving));
                let pushed = push(&mut conn, &settings.node_name, sets);
                drop(conn);
                let served = server
                    .join()
                    .map_err(|_| anyhow::anyhow!("the directory receiver panicked"))?;
                match (pushed, served) {
                    (Ok(stats), Ok(_)) => Ok(stats),
                    (Err(e), _) | (Ok(_), Err(e)) => Err(e),
                }
            })
        }
    }
}

/// What one target's part of a run came to.
#[derive(Debug, Clone)]
pub struct TargetResult {
    pub name: String,
    pub result: std::result::Result<PushStats, String>,
    pub attempts: u32,
}

const BACKOFF_FIRST: std::time::Duration = std::time::Duration::from_secs(1);
const BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Pushes `sets` to every target at once, one thread each, retrying with backoff; one target's
/// failure never stops another.
pub fn spray_all(
    settings: &crate::config::Settings,
    targets: &[Target],
    sets: &[OpenSet],
) -> Vec<TargetResult> {
    use crate::logging::message_id;
    std::thread::scope(|scope| {
        let handles: Vec<_> = targets
            .iter()
            .map(|target| {
                scope.spawn(move || {
                    let name = target.name();
                    let started = std::time::Instant::now();
                    let mut backoff = BACKOFF_FIRST;
                    let mut attempt = 0;
                    loop {
                        attempt += 1;
                        match push_to(target, settings, sets) {
                            Ok(stats) => {
                                for id in &stats.sent {
                                    tracing::info!(message_id = message_id::SET_SENT, set_id = %id, target = %name, "set sent: {id} to {name}");
                                }
                                tracing::info!(
                                    target = %name,
                                    sets_sent = stats.sent.len(),
                                    bytes = stats.data_bytes,
                                    wire_bytes = stats.wire_bytes,
                                    seconds = started.elapsed().as_secs_f64(),
                                    "target current: {name}"
                                );
                                return TargetResult { name, result: Ok(stats), attempts: attempt };
                            }
                            Err(error) if attempt < settings.spray.attempts => {
                                tracing::warn!(target = %name, attempt, "spray attempt failed, retrying in {}s: {error:#}", backoff.as_secs());
                                std::thread::sleep(backoff);
                                backoff = (backoff * 2).min(BACKOFF_MAX);
                            }
                            Err(error) => {
                                tracing::error!(message_id = message_id::TARGET_FAILED, target = %name, attempts = attempt, "target failed: {name}: {error:#}");
                                return TargetResult { name, result: Err(format!("{error:#}")), attempts: attempt };
                            }
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(targets)
            .map(|(h, t)| {
                h.join().unwrap_or_else(|_| TargetResult {
                    name: t.name(),
                    result: Err("panicked".into()),
                    attempts: 0,
                })
            })
            .collect()
    })
}

/// Last results per target, kept in the store for `status`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct TargetState {
    pub last_attempt: Option<chrono::DateTime<chrono::Utc>>,
    pub last_success: Option<chrono::DateTime<chrono::Utc>>,
    pub last_error: Option<String>,
    pub sets_sent: usize,
    pub bytes_sent: u64,
    /// Of this node's sets, how many the target holds after its last successful run.
    pub sets_held: usize,
}

pub const STATE_FILE: &str = "spray-state.json";

pub fn read_state(store: &crate::store::Store) -> BTreeMap<String, TargetState> {
    std::fs::read(store.root().join(STATE_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Records a run's results (targets no longer configured are dropped).
pub fn write_state(store: &crate::store::Store, results: &[TargetResult]) -> Result<()> {
    let old = read_state(store);
    let now = chrono::Utc::now();
    let mut state = BTreeMap::new();
    for result in results {
        let mut entry = old.get(&result.name).cloned().unwrap_or_default();
        entry.last_attempt = Some(now);
        match &result.result {
            Ok(stats) => {
                entry.last_success = Some(now);
                entry.last_error = None;
                entry.sets_sent = stats.sent.len();
                entry.sets_held = stats.held;
                entry.bytes_sent = stats.data_bytes;
            }
            Err(error) => entry.last_error = Some(error.clone()),
        }
        state.insert(result.name.clone(), entry);
    }
    let json = serde_json::to_vec_pretty(&state)?;
    crate::store::write_atomic(store.root(), STATE_FILE, &json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mount("/mnt/nfs\\040share"), "/mnt/nfs share");
        assert_eq!(unescape_mount("/plain"), "/plain");
        assert!(is_mount_point(std::path::Path::new("/")).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("x");
        std::fs::create_dir(&inner).unwrap();
        assert!(!is_mount_point(&inner).unwrap());
    }
}
