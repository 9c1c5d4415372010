//! `receive`: the server side of the spray protocol, run as the SSH forced command on a peer
//! (and in-process for directory targets). It trusts nothing: every name comes from a manifest
//! that parses and matches its offered digest and size, every byte is bounded by the manifest,
//! every file is hashed (and the snapshot trailer checked) while it is written, and only a
//! complete, verified set is committed — by the same store code as a local backup.
//!
//! A peer's sender holds the spray key or a node certificate, which more people than root on a
//! master may hold: it may deliver sets and nothing else. What it offers is judged by
//! [`crate::protocol::wants()`] (no set of this node's origin, none dated in the future, none
//! that would push a held set out but through the ordinary turn of retention, none that does
//! not fit above the free-space floor, a bound per origin); it must say hello within
//! [`HELLO_TIMEOUT`] before it gets the receive lock, and its session ends at
//! `spray.session_timeout`; the prune after a delivery never deletes to make room.

use crate::config::Settings;
use crate::deadline::Deadline;
use crate::logging::message_id;
use crate::protocol::{
    Conn, Guard, Judge, Message, Offer, PROTOCOL_VERSION, ProtocolError, Stream, Want, wants,
};
use crate::store::{RECEIVE_LOCK_FILE, RECEIVE_STAGING_PREFIX, Store};
use anyhow::{Result, bail};
use std::collections::BTreeMap;
use std::fs::{self};
use std::time::{Duration, Instant};

mod check;
mod set;

use set::{partials, receive_set, remove_partial, violation};

/// A sender says hello within this, or is cut before it gets the receive lock.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// Sets of one origin a peer's session may add: a master takes one an hour; a new or rebuilt
/// peer catches up over a few sprays.
pub const MAX_SETS_PER_ORIGIN: usize = 8;
/// Sets of all origins a peer's session may add (a hello naming thousands of origins costs no
/// more than this).
pub const MAX_SETS: usize = 32;
/// Offers in one hello: every set of a long history of several masters fits many times.
pub const MAX_OFFERS: usize = 4096;

/// Who is at the other end of a receiver's connection.
#[derive(Debug, Clone, Copy)]
pub enum Sender<'a> {
    /// This node itself, spraying to a store of its own (a directory target, in-process).
    Own,
    /// Another master: over SSH with the spray key, or over mutual TLS.
    Peer(&'a PeerSender),
}

/// A peer sender: what the transport proved of it, and the clock of its session.
#[derive(Debug, Clone, Default)]
pub struct PeerSender {
    /// The node name of its TLS client certificate; `None` over SSH, where the spray key only
    /// proves that it is one of the masters.
    pub authenticated: Option<String>,
    /// Where it connects from, for the journal.
    pub from: String,
    /// Obeyed by the connection's reads: moved to the hello's bound, then to the session's.
    pub deadline: Deadline,
}

#[derive(Debug, Default)]
pub struct ReceiveStats {
    pub committed: Vec<String>,
    /// File data bytes received (decoded).
    pub data_bytes: u64,
}

/// Serves one sender on `conn`. A protocol violation or a failed check is answered with an
/// Error frame before returning the error; a broken connection just returns it (and keeps the
/// partial files for the next run to resume).
pub fn serve<S: Stream>(
    settings: &Settings,
    store: &Store,
    conn: &mut Conn<S>,
    sender: Sender,
) -> Result<ReceiveStats> {
    let mut stats = ReceiveStats::default();
    let result = session(settings, store, conn, &mut stats, sender);
    if let Err(error) = &result
        && !connection_lost(error)
    {
        let _ = conn.send(&Message::Error {
            message: format!("{error:#}"),
        });
    }
    stats.data_bytes = conn.data_bytes_received;
    result.map(|()| stats)
}

/// What a sender opens its session with.
enum Opening {
    /// It offers sets.
    Hello { sender: String, offers: Vec<Offer> },
    /// It asks what its sets' copies here are worth.
    Check {
        sender: String,
        ids: Vec<String>,
        deep: bool,
    },
}

/// The sender's first message: who it says it is and what it offers or asks, checked.
fn opening<S: Stream>(conn: &mut Conn<S>) -> Result<Opening> {
    let (version, opening) = match conn.next_message()? {
        Message::Hello {
            version,
            sender,
            offers,
        } => (version, Opening::Hello { sender, offers }),
        Message::Check {
            version,
            sender,
            ids,
            deep,
        } => (version, Opening::Check { sender, ids, deep }),
        other => {
            return Err(
                ProtocolError::violation(format!("expected hello, got {}", name(&other))).into(),
            );
        }
    };
    if version != PROTOCOL_VERSION {
        bail!("sender speaks protocol version {version}; this receiver speaks {PROTOCOL_VERSION}")
    }
    let (sender, offers) = match opening {
        Opening::Hello { sender, offers } => (sender, offers),
        Opening::Check { ref ids, .. } if ids.len() > check::MAX_CHECKED => {
            return Err(violation(format!(
                "{} sets to check (at most {})",
                ids.len(),
                check::MAX_CHECKED
            )));
        }
        check => return Ok(check),
    };
    if offers.len() > MAX_OFFERS {
        return Err(violation(format!(
            "{} sets offered (at most {MAX_OFFERS})",
            offers.len()
        )));
    }
    let mut ids = std::collections::BTreeSet::new();
    if let Some(twice) = offers.iter().find(|o| !ids.insert(o.id.as_str())) {
        return Err(violation(format!("set '{}' offered twice", twice.id)));
    }
    Ok(Opening::Hello { sender, offers })
}

fn session<S: Stream>(
    settings: &Settings,
    store: &Store,
    conn: &mut Conn<S>,
    stats: &mut ReceiveStats,
    sender: Sender,
) -> Result<()> {
    let peer = match sender {
        Sender::Own => None,
        Sender::Peer(peer) => Some(peer),
    };
    // Nothing is locked for a connection that has not said hello.
    if let Some(peer) = peer {
        peer.deadline.set(HELLO_TIMEOUT);
    }
    let opening = opening(conn)?;
    let claimed = match &opening {
        Opening::Hello { sender, .. } | Opening::Check { sender, .. } => sender.clone(),
    };
    let authenticated = peer.and_then(|p| p.authenticated.as_deref());
    if let Some(proven) = authenticated
        && !claimed.eq_ignore_ascii_case(proven)
    {
        bail!(
            "the sender's certificate names '{proven}' but its hello claims '{claimed}': refused"
        );
    }
    if let Some(peer) = peer {
        peer.deadline.set(settings.spray.session_timeout);
    }
    let offers = match opening {
        Opening::Hello { offers, .. } => offers,
        Opening::Check { ids, deep, .. } => {
            let who = Who {
                name: &claimed,
                authenticated,
                from: peer.map_or("this node", |p| p.from.as_str()),
            };
            return check::copies(settings, store, conn, &who, &ids, deep);
        }
    };
    let _receiving = lock_telling_sender(
        conn,
        store,
        RECEIVE_LOCK_FILE,
        settings.store.lock_wait,
        "another sender is being received",
    )?;
    let listing = store.list()?;
    let held = super::wants::held_sets(&listing, |_| false);
    let partials = partials(store)?;
    let judge = Judge {
        policy: &settings.retention,
        free_bytes: store.free_bytes()?,
        not_after: settings.not_after(),
        guard: peer.map(|_| Guard {
            own_origin: &settings.node_name,
            max_sets_per_origin: MAX_SETS_PER_ORIGIN,
            max_sets: MAX_SETS,
        }),
    };
    let plan = wants(&offers, &held, &partials, &judge);
    // A partial transfer this session does not resume goes now: only the set a cut link
    // leaves half-received waits (for the next session) in staging.
    for id in partials.keys() {
        if !plan.wants.iter().any(|w| &w.id == id) {
            remove_partial(store, id);
        }
    }
    let who = Who {
        name: &claimed,
        authenticated,
        from: peer.map_or("this node", |p| p.from.as_str()),
    };
    for id in &plan.conflicts {
        tracing::warn!(set_id = %id, sender = %claimed, "offered set has the id of a held set but another manifest (or ours is unreadable); keeping ours");
    }
    for id in &plan.repairs {
        tracing::warn!(set_id = %id, sender = %claimed, "our copy of set {id} is damaged; receiving it again from {claimed}");
    }
    for (id, why) in &plan.declined {
        use crate::protocol::Declined;
        match why {
            Declined::FutureDated | Declined::TakesPlaceOf(_) => {
                tracing::warn!(set_id = %id, sender = %claimed, authenticated = who.authenticated.unwrap_or(""), from = %who.from, "refused set {id} offered by {}: {why}", who.describe())
            }
            Declined::Deferred | Declined::NoRoom(_) => {
                tracing::info!(set_id = %id, sender = %claimed, "not now: set {id} from {claimed}: {why}")
            }
            Declined::NotASet | Declined::OwnOrigin | Declined::NotKept => {
                tracing::debug!(set_id = %id, "declined: {why}")
            }
        }
    }
    let offered: BTreeMap<&str, &Offer> = offers.iter().map(|o| (o.id.as_str(), o)).collect();
    let mut pending: BTreeMap<String, Want> = plan
        .wants
        .iter()
        .map(|w| (w.id.clone(), w.clone()))
        .collect();
    conn.send(&Message::Welcome {
        version: PROTOCOL_VERSION,
        receiver: settings.node_name.clone(),
        wants: plan.wants,
        holds: plan.holds,
    })?;
    loop {
        match conn.next_message()? {
            Message::SetBegin {
                id,
                manifest,
                signature,
            } => {
                let want = pending.remove(&id).ok_or_else(|| {
                    ProtocolError::violation(format!("set '{id}' was not asked for"))
                })?;
                let refused = plan
                    .refused
                    .as_ref()
                    .filter(|(r, _)| *r == id)
                    .map(|(_, why)| why.as_str());
                let offer = offered[id.as_str()];
                let staging = store
                    .staging_dir()
                    .join(format!("{RECEIVE_STAGING_PREFIX}{id}"));
                let started = Instant::now();
                let before = conn.data_bytes_received;
                let received = receive_set(
                    settings,
                    store,
                    conn,
                    (&want, offer, refused),
                    (&manifest, signature.as_deref()),
                    &staging,
                    sender,
                );
                let origin = match received {
                    Ok(origin) => origin,
                    Err(error) => {
                        // A cut link keeps the partial files for the next run to resume.
                        if !connection_lost(&error) {
                            let _ = fs::remove_dir_all(&staging);
                        }
                        return Err(
                            error.context(format!("receiving set '{id}' from {}", who.describe()))
                        );
                    }
                };
                tracing::info!(
                    message_id = message_id::SET_RECEIVED,
                    set_id = %id,
                    origin = %origin,
                    sender = %claimed,
                    authenticated = who.authenticated.unwrap_or(""),
                    from = %who.from,
                    bytes = conn.data_bytes_received - before,
                    seconds = started.elapsed().as_secs_f64(),
                    "set received: {id} (origin {origin}) from {}",
                    who.describe()
                );
                stats.committed.push(id.clone());
                crate::failpoint::hit("receive:before-ack");
                conn.send(&Message::Committed { id })?;
            }
            Message::Bye => return Ok(()),
            other => {
                return Err(ProtocolError::violation(format!(
                    "expected set_begin or bye, got {}",
                    name(&other)
                ))
                .into());
            }
        }
    }
}

/// How the journal names a sender: what it claims, and what the transport proved.
struct Who<'a> {
    name: &'a str,
    authenticated: Option<&'a str>,
    from: &'a str,
}

impl Who<'_> {
    fn describe(&self) -> String {
        match self.authenticated {
            Some(proven) => format!("{} (certificate of {proven}, {})", self.name, self.from),
            None => format!("{} ({})", self.name, self.from),
        }
    }
}

/// The sender's link broke (as opposed to a refusal or a failed check): nothing to answer, and
/// partial files are worth keeping.
fn connection_lost(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<ProtocolError>()
        .is_some_and(|e| matches!(e, ProtocolError::Io(_)))
}

fn name(message: &Message) -> &'static str {
    match message {
        Message::Hello { .. } => "hello",
        Message::Welcome { .. } => "welcome",
        Message::SetBegin { .. } => "set_begin",
        Message::FileBegin { .. } => "file_begin",
        Message::FileEnd { .. } => "file_end",
        Message::SetEnd { .. } => "set_end",
        Message::Committed { .. } => "committed",
        Message::Bye => "bye",
        Message::Error { .. } => "error",
        Message::Waiting { .. } => "waiting",
        Message::Check { .. } => "check",
        Message::Checked { .. } => "checked",
    }
}

/// Takes the lock file `lock` of the store, telling the sender every
/// [`crate::protocol::KEEPALIVE`] that it waits and why, for at most `wait` (then the busy
/// error, with the whole wait, goes back to the sender).
fn lock_telling_sender<S: Stream>(
    conn: &mut Conn<S>,
    store: &Store,
    lock: &str,
    wait: Duration,
    why: &str,
) -> Result<crate::store::StoreLock> {
    let started = Instant::now();
    loop {
        let left = wait.saturating_sub(started.elapsed());
        match store.lock_named(lock, left.min(crate::protocol::KEEPALIVE)) {
            Err(e) if e.is::<crate::store::BusyError>() && !left.is_zero() => {
                conn.send(&Message::Waiting {
                    reason: format!("{why}: {e:#}"),
                })?;
            }
            Err(e) => {
                return Err(match e.downcast::<crate::store::BusyError>() {
                    Ok(mut busy) => {
                        busy.waited_secs = started.elapsed().as_secs();
                        busy.into()
                    }
                    Err(e) => e,
                });
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::set::OFFER_FILE;
    use super::*;
    use crate::manifest::{Manifest, make_set_id};
    use crate::protocol::send::{PushStats, open_sets, push};
    use crate::protocol::{Duplex, Offer, pipe_pair};
    use crate::store::StoredSet;
    use crate::verify::tests::{fake_resources, fake_snapshot};
    use std::io::Write;
    use std::io::{PipeReader, PipeWriter};
    use std::path::PathBuf;

    type End = Conn<Duplex<PipeReader, PipeWriter>>;

    /// Another master's sender, over a transport that proves nothing of it (SSH).
    const PEER: Sender = Sender::Peer(&PeerSender {
        authenticated: None,
        from: String::new(),
        deadline: Deadline::NONE,
    });

    struct Side {
        _dir: tempfile::TempDir,
        store: Store,
        settings: Settings,
    }

    fn side(name: &str) -> Side {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::defaults(name.to_string());
        settings.store.root = dir.path().join("store");
        settings.retention = crate::retention::Policy {
            keep_last: 10,
            ..Default::default()
        };
        settings.store.lock_wait = std::time::Duration::from_secs(5);
        let store = Store::open(&settings.store.root).unwrap();
        Side {
            _dir: dir,
            store,
            settings,
        }
    }

    /// A set made through the real backup checks: a snapshot of `pages` pages + resources.
    fn make_set(side: &Side, minutes: i64, pages: usize) -> StoredSet {
        let created = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .to_utc()
            + chrono::TimeDelta::minutes(minutes);
        let staging = side.store.new_staging("test").unwrap();
        let stamp = created.format("%F_%H%M%S");
        fs::write(
            staging.join(format!("snapshot_{stamp}.db")),
            fake_snapshot(pages, 4096),
        )
        .unwrap();
        fs::write(
            staging.join(format!("static_kuberesources_{stamp}.tar.gz")),
            fake_resources(&[
                "kube-apiserver-pod-2",
                "kube-controller-manager-pod-2",
                "kube-scheduler-pod-2",
            ]),
        )
        .unwrap();
        let origin = side.settings.node_name.clone();
        let manifest = crate::backup::check_staged(
            &staging,
            false,
            make_set_id(created, &origin),
            &origin,
            created,
            None,
        )
        .unwrap();
        side.store.commit(&staging, &manifest).unwrap()
    }

    /// Runs `sender(conn)` against `serve` on `receiver`; returns both results.
    fn exchange<T: Send>(
        receiver: &Side,
        compress: bool,
        sender: impl FnOnce(&mut End) -> T + Send,
    ) -> (T, Result<ReceiveStats>) {
        let (a, b) = pipe_pair().unwrap();
        let mut sending = Conn::new(a, compress);
        let mut receiving = Conn::new(b, false);
        std::thread::scope(|scope| {
            let server = scope
                .spawn(move || serve(&receiver.settings, &receiver.store, &mut receiving, PEER));
            let sent = sender(&mut sending);
            drop(sending);
            (sent, server.join().unwrap())
        })
    }

    fn spray(from: &Side, to: &Side, compress: bool) -> (Result<PushStats>, Result<ReceiveStats>) {
        let sets = open_sets(from.store.list().unwrap().sets);
        exchange(to, compress, |conn| {
            push(conn, &from.settings.node_name, &sets)
        })
    }

    fn ids(side: &Side) -> Vec<String> {
        side.store
            .list()
            .unwrap()
            .sets
            .iter()
            .map(|s| s.id().to_string())
            .collect()
    }

    #[test]
    fn sets_arrive_verified_and_a_second_run_sends_nothing() {
        let (m0, m1) = (side("m0"), side("m1"));
        let a = make_set(&m0, 0, 40);
        let b = make_set(&m0, 60, 50);
        for compress in [true, false] {
            let (sent, received) = spray(&m0, &m1, compress);
            let sent = sent.unwrap();
            received.unwrap();
            if compress {
                assert_eq!(
                    sent.sent,
                    [b.id().to_string(), a.id().to_string()],
                    "newest first"
                );
                assert_eq!(
                    sent.data_bytes,
                    a.manifest.total_size() + b.manifest.total_size()
                );
                assert!(
                    sent.wire_bytes < sent.data_bytes,
                    "compressed on the wire: {sent:?}"
                );
            } else {
                assert!(sent.sent.is_empty() && sent.data_bytes == 0, "{sent:?}");
                assert_eq!(sent.offered, 2);
                assert_eq!(sent.held, 2, "the receiver holds both");
            }
        }
        let listing = m1.store.list().unwrap();
        assert_eq!(ids(&m1), ids(&m0));
        for (theirs, ours) in listing.sets.iter().zip(m0.store.list().unwrap().sets) {
            assert_eq!(theirs.manifest_sha256, ours.manifest_sha256);
            assert!(theirs.problem.is_none());
            for file in &theirs.manifest.files {
                assert_eq!(
                    fs::read(theirs.dir.join(&file.name)).unwrap(),
                    fs::read(ours.dir.join(&file.name)).unwrap()
                );
            }
        }
        assert!(
            fs::read_dir(m1.store.staging_dir())
                .unwrap()
                .next()
                .is_none(),
            "staging clean"
        );
    }

    /// A writer that fails after `budget` bytes: a link cut mid-transfer.
    struct Cut<W> {
        inner: W,
        budget: usize,
    }

    impl<W: Write> Write for Cut<W> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.budget == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "link cut",
                ));
            }
            let n = buf.len().min(self.budget);
            self.budget -= n;
            self.inner.write(&buf[..n])
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }

    #[test]
    fn a_cut_transfer_commits_nothing_and_resumes() {
        let (m0, m1) = (side("m0"), side("m1"));
        let set = make_set(&m0, 0, 600); // ~2.4 MiB snapshot
        let sets = open_sets(m0.store.list().unwrap().sets);
        let (a, b) = pipe_pair().unwrap();
        let mut receiving = Conn::new(b, false);
        let (sent, received) = std::thread::scope(|scope| {
            let (settings, store) = (&m1.settings, &m1.store);
            let server = scope.spawn(move || serve(settings, store, &mut receiving, PEER));
            let cut = Duplex::new(
                a.reader,
                Cut {
                    inner: a.writer.unwrap(),
                    budget: 1_500_000,
                },
            );
            let mut sending = Conn::new(cut, false);
            let sent = push(&mut sending, "m0", &sets);
            drop(sending);
            (sent, server.join().unwrap())
        });
        assert!(sent.is_err() && received.is_err());
        assert!(ids(&m1).is_empty(), "nothing committed");
        let partial = m1.store.staging_dir().join(format!("recv-{}", set.id()));
        assert!(partial.join(OFFER_FILE).exists(), "partial kept for resume");

        let (sent, received) = spray(&m0, &m1, false);
        let sent = sent.unwrap();
        received.unwrap();
        assert_eq!(sent.sent, [set.id().to_string()]);
        assert!(
            sent.data_bytes < set.manifest.total_size() - 1_000_000,
            "resumed: {sent:?}"
        );
        assert_eq!(
            m1.store.list().unwrap().sets[0].manifest_sha256,
            set.manifest_sha256
        );
        assert!(!partial.exists());
    }

    #[test]
    fn a_source_file_that_shrinks_mid_spray_fails_naming_it_and_commits_nothing() {
        let (m0, m1) = (side("m0"), side("m1"));
        let set = make_set(&m0, 0, 600);
        let sets = open_sets(m0.store.list().unwrap().sets);
        // Damaged on disk after it was opened: the reading thread hits EOF several chunks in.
        let snapshot = set.dir.join(&set.manifest.files[0].name);
        fs::OpenOptions::new()
            .write(true)
            .open(&snapshot)
            .unwrap()
            .set_len(1_000_000)
            .unwrap();
        let (sent, received) = exchange(&m1, true, |conn| push(conn, "m0", &sets));
        let error = format!("{:#}", sent.unwrap_err());
        assert!(
            error.contains(&format!("cannot read '{}'", snapshot.display())),
            "{error}"
        );
        assert!(received.is_err());
        assert!(ids(&m1).is_empty(), "nothing committed");
    }

    /// Sends a Hello offering `manifest` (a crafted one), then `frames` after set_begin.
    fn hostile(
        receiver: &Side,
        manifest: &Manifest,
        after_begin: impl FnOnce(&mut End) + Send,
    ) -> String {
        let text = String::from_utf8(manifest.to_json()).unwrap();
        let digest = crate::manifest::digest(text.as_bytes());
        let (_, received) = exchange(receiver, false, |conn| {
            let offer = Offer {
                id: manifest.id.clone(),
                manifest_sha256: digest,
                size: manifest.total_size(),
                dirty: manifest.dirty,
            };
            conn.send(&Message::Hello {
                version: 1,
                sender: "evil".into(),
                offers: vec![offer],
            })
            .unwrap();
            let _ = conn.next_message().unwrap();
            let _ = conn.send(&Message::SetBegin {
                id: manifest.id.clone(),
                manifest: text.clone(),
                signature: None,
            });
            after_begin(conn);
        });
        assert!(ids(receiver).is_empty(), "nothing committed");
        format!("{:#}", received.unwrap_err())
    }

    fn staging_is_clean(side: &Side) -> bool {
        fs::read_dir(side.store.staging_dir())
            .unwrap()
            .next()
            .is_none()
    }

    #[test]
    fn hostile_senders_are_refused_and_leave_nothing() {
        let (m0, m1) = (side("m0"), side("m1"));
        let good = make_set(&m0, 0, 10).manifest;
        let db = good.files[0].clone();
        let send_file = |conn: &mut End, data: &[u8]| {
            let _ = conn.send(&Message::FileBegin {
                name: db.name.clone(),
                offset: 0,
            });
            let _ = conn.send_data(data);
            let _ = conn.send(&Message::FileEnd {
                name: db.name.clone(),
            });
        };
        let real = fs::read(m0.store.list().unwrap().sets[0].dir.join(&db.name)).unwrap();

        // Path traversal in a file name: the manifest itself is refused.
        let mut evil = good.clone();
        evil.files[0].name = "../../../etc/cron.d/snapshot_1.db".into();
        let err = hostile(&m1, &evil, |_| {});
        assert!(err.contains("manifest refused"), "{err}");

        // More data than the manifest says.
        let mut small = good.clone();
        small.files[0].size = 100;
        let err = hostile(&m1, &small, |c| send_file(c, &real));
        assert!(
            err.contains("more data than its 100 bytes") || err.contains("too small"),
            "{err}"
        );
        assert!(staging_is_clean(&m1));

        // Right size, wrong bytes.
        let mut flipped = real.clone();
        flipped[5000] ^= 1;
        let err = hostile(&m1, &good, |c| send_file(c, &flipped));
        assert!(err.contains("sha256 trailer mismatch"), "{err}");
        assert!(staging_is_clean(&m1));

        // A set larger than the free space is refused before anything is written.
        let mut huge = good.clone();
        huge.files[0].size = 1 << 60;
        let err = hostile(&m1, &huge, |_| {});
        assert!(
            err.contains("does not fit in store") && err.contains("are free"),
            "{err}"
        );
        assert!(staging_is_clean(&m1));

        // Sizes that add up past 2^64 (two of 2^63): the manifest itself is refused, whatever
        // the offer says.
        let mut wrapping = good.clone();
        wrapping.files[0].size = 1 << 63;
        wrapping.files[1].size = 1 << 63;
        let err = hostile(&m1, &wrapping, |_| {});
        assert!(err.contains("manifest refused"), "{err}");
        assert!(staging_is_clean(&m1));

        // A frame out of order.
        let err = hostile(&m1, &good, |c| {
            let _ = c.send(&Message::SetEnd {
                id: good.id.clone(),
            });
        });
        assert!(err.contains("expected file_begin"), "{err}");
        assert!(staging_is_clean(&m1));

        // Garbage instead of a frame.
        let err = hostile(&m1, &good, |c| {
            let _ = c.get_mut().write_all(b"GET / HTTP/1.1\r\n\r\n");
        });
        assert!(err.contains("protocol violation"), "{err}");
        assert!(staging_is_clean(&m1));

        // A set that was not asked for.
        let (_, received) = exchange(&m1, false, |conn| {
            conn.send(&Message::Hello {
                version: 1,
                sender: "evil".into(),
                offers: vec![],
            })
            .unwrap();
            let _ = conn.next_message();
            let _ = conn.send(&Message::SetBegin {
                id: good.id.clone(),
                manifest: "{}".into(),
                signature: None,
            });
        });
        assert!(format!("{:#}", received.unwrap_err()).contains("was not asked for"));

        // Another protocol version.
        let (reply, received) = exchange(&m1, false, |conn| {
            conn.send(&Message::Hello {
                version: 2,
                sender: "future".into(),
                offers: vec![],
            })
            .unwrap();
            conn.next_message().unwrap()
        });
        assert!(matches!(reply, Message::Error { message } if message.contains("version 2")));
        assert!(received.is_err());
    }

    #[test]
    fn a_truncated_stream_commits_nothing() {
        let (m0, m1) = (side("m0"), side("m1"));
        let good = make_set(&m0, 0, 10).manifest;
        let real = fs::read(
            m0.store.list().unwrap().sets[0]
                .dir
                .join(&good.files[0].name),
        )
        .unwrap();
        let err = hostile(&m1, &good, |c| {
            let _ = c.send(&Message::FileBegin {
                name: good.files[0].name.clone(),
                offset: 0,
            });
            let _ = c.send_data(&real[..1000]);
        });
        assert!(err.contains("connection"), "{err}");
        let _: PathBuf = m1.store.staging_dir();
    }
}
