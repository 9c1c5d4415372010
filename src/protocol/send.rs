//! The sending end of the protocol: offers a store's sets over any [`Stream`] and sends what
//! the receiver asks for, resuming cut files. Every target that speaks the protocol (a peer over
//! SSH or TLS, a directory store in-process) sends through [`push`].

use super::{Conn, Message, Offer, PROTOCOL_VERSION, Stream};
use crate::files::open_regular;
use crate::store::StoredSet;
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

impl OpenSet {
    /// The handles, in manifest order.
    pub fn files(&self) -> &[File] {
        &self.files
    }
}

/// Opens the files of every set without a problem. A set that cannot be opened (removed or
/// damaged since it was listed) is left out with a warning.
pub fn open_sets(sets: Vec<StoredSet>) -> Vec<OpenSet> {
    sets.into_iter()
        .filter(|set| set.problem.is_none())
        .filter(|set| {
            if set.sealed.is_some() {
                tracing::warn!(set_id = %set.id(), "not offering set {}: it is held sealed here (fetch it with --identity)", set.id());
            }
            set.sealed.is_none()
        })
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

/// What a sender offers of its open sets: id, manifest digest, size, dirty.
pub fn offers<'a>(sets: impl IntoIterator<Item = &'a OpenSet>) -> Vec<Offer> {
    sets.into_iter()
        .map(|OpenSet { set, .. }| Offer {
            id: set.id().to_string(),
            manifest_sha256: set.manifest_sha256.clone(),
            size: set.manifest.total_size(),
            dirty: set.manifest.dirty,
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
    let offers = offers(intact.values().copied());
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
            return Err(crate::failure::final_error(format!(
                "receiver speaks protocol version {version}, not {PROTOCOL_VERSION}"
            )));
        }
        other => bail!("unexpected answer to hello: {other:?}"),
    };
    let mut stats = PushStats {
        offered,
        ..PushStats::default()
    };
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
                signature: set
                    .signature
                    .as_ref()
                    .and_then(|s| String::from_utf8(s.clone()).ok()),
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
                send_file(conn, source, &set.dir.join(&file.name), offset..file.size)?;
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
            let error = match reply(conn) {
                Err(receiver_error) => receiver_error.context(format!("{error:#}")),
                Ok(_) => error,
            };
            return Err(error.context(format!("sending set '{}'", want.id)));
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

/// Asks the receiver at the other end of `conn` to check its copies of `ids` (every set of
/// `sender`'s it holds when empty) and returns what it found, one outcome per copy.
pub fn check<S: Stream>(
    conn: &mut Conn<S>,
    sender: &str,
    ids: &[String],
    deep: bool,
) -> Result<Vec<super::CopyOutcome>> {
    conn.send(&Message::Check {
        version: PROTOCOL_VERSION,
        sender: sender.to_string(),
        ids: ids.to_vec(),
        deep,
    })?;
    let outcomes = match reply(conn)? {
        Message::Checked { outcomes } => outcomes,
        other => bail!("unexpected answer to check: {other:?}"),
    };
    conn.send(&Message::Bye)?;
    Ok(outcomes)
}

/// Bytes the sender reads and encodes at a time: small enough that a chunk stays in the CPU's
/// cache from the read through LZ4 to the cipher, large enough that framing costs nothing.
const SEND_CHUNK_BYTES: usize = 256 << 10;
/// Encoded chunks in flight between the thread that reads and compresses and the one that
/// writes to the connection.
const PIPELINE_DEPTH: usize = 4;

/// Sends `range` of `source` as data frames. One thread reads and encodes (LZ4) chunks ahead
/// while this one writes them, so that the cipher's thread (libssh2 encrypts on the thread
/// that writes) never waits for the disk or the compressor; buffers go back and forth, so
/// memory stays at [`PIPELINE_DEPTH`] frames.
fn send_file<S: Stream>(
    conn: &mut Conn<S>,
    source: &File,
    path: &std::path::Path,
    range: std::ops::Range<u64>,
) -> Result<()> {
    use std::sync::mpsc::{channel, sync_channel};
    let compress = conn.compresses();
    std::thread::scope(|scope| {
        let (full_tx, full) = sync_channel::<Result<(Vec<u8>, usize, usize)>>(PIPELINE_DEPTH);
        let (empty, empty_rx) = channel::<Vec<u8>>();
        for _ in 0..PIPELINE_DEPTH {
            empty.send(Vec::new()).expect("receiver alive");
        }
        scope.spawn(move || {
            let mut chunk = vec![0u8; SEND_CHUNK_BYTES];
            let mut lz4 = Lz4Backoff::default();
            let mut pos = range.start;
            let mut behind = crate::files::Behind::new(source, range.start);
            while pos < range.end {
                // The writer stopped (its link failed): so does the reader.
                let Ok(mut frame) = empty_rx.recv() else {
                    return;
                };
                let n = chunk.len().min((range.end - pos) as usize);
                let encoded = source
                    .read_exact_at(&mut chunk[..n], pos)
                    .with_context(|| format!("cannot read '{}'", path.display()))
                    .map(|()| {
                        // Read once for this target: out of the cache behind us.
                        behind.read_to(pos + n as u64);
                        let attempt = compress && lz4.attempt();
                        let (len, shrank) =
                            crate::protocol::encode_data(&chunk[..n], attempt, &mut frame);
                        if attempt {
                            lz4.record(shrank);
                        }
                        (frame, len, n)
                    });
                let failed = encoded.is_err();
                if full_tx.send(encoded).is_err() || failed {
                    return;
                }
                pos += n as u64;
            }
        });
        for encoded in full {
            let (frame, len, data_len) = encoded?;
            conn.send_encoded(&frame[..len], data_len)?;
            crate::failpoint::hit("spray:sending");
            // The reader may have finished and gone: a buffer it no longer needs is dropped.
            let _ = empty.send(frame);
        }
        Ok(())
    })
}

/// Chunks passed over at most after LZ4 failed to shrink several in a row (4 MiB at 256 KiB).
const LZ4_MAX_SKIP: u32 = 16;

/// Whether to try LZ4 on the next chunk: after each chunk that did not shrink, twice as many
/// chunks are sent raw without trying (1, 2, 4 … [`LZ4_MAX_SKIP`]); one that shrinks resets it.
/// Values under etcd encryption at rest are ciphertext, which LZ4 never shrinks: trying every
/// chunk only burnt CPU. The bytes sent are the same either way; only the wire size can differ.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Lz4Backoff {
    misses: u32,
    skip: u32,
}

impl Lz4Backoff {
    fn attempt(&mut self) -> bool {
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        true
    }

    fn record(&mut self, shrank: bool) {
        if shrank {
            *self = Lz4Backoff::default();
        } else {
            self.misses = (self.misses + 1).min(31);
            self.skip = (1u32 << (self.misses - 1)).min(LZ4_MAX_SKIP);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Which of `shrinks.len()` chunks are tried, when chunk i would shrink iff `shrinks[i]`.
    fn tried(shrinks: &[bool]) -> Vec<bool> {
        let mut lz4 = Lz4Backoff::default();
        shrinks
            .iter()
            .map(|&shrank| {
                let attempt = lz4.attempt();
                if attempt {
                    lz4.record(shrank);
                }
                attempt
            })
            .collect()
    }

    #[test]
    fn lz4_is_tried_less_often_while_it_fails_and_again_at_once_when_it_works() {
        let (t, f) = (true, false);
        // Compressible: every chunk tried.
        assert_eq!(tried(&[t; 5]), [t; 5]);
        // Incompressible: tried at 0, 2, 5, 10, 19, 36, 53 (skips 1, 2, 4, 8, 16, 16).
        let pattern = tried(&[f; 60]);
        let at: Vec<usize> = (0..60).filter(|&i| pattern[i]).collect();
        assert_eq!(at, [0, 2, 5, 10, 19, 36, 53]);
        // A hit resets: after it, the next chunk is tried again.
        assert_eq!(tried(&[f, f, t, t, f, f]), [t, f, t, t, t, f]);
    }

    proptest! {
        #[test]
        fn lz4_backoff_never_skips_more_than_its_bound(shrinks in proptest::collection::vec(any::<bool>(), 0..300)) {
            let pattern = tried(&shrinks);
            let mut run = 0;
            for (i, &attempt) in pattern.iter().enumerate() {
                if attempt {
                    run = 0;
                } else {
                    run += 1;
                    prop_assert!(run <= LZ4_MAX_SKIP, "{} skipped in a row at {}", run, i);
                    // Skipping only ever follows a miss.
                    let last_try = (0..i).rev().find(|&j| pattern[j]).unwrap();
                    prop_assert!(!shrinks[last_try]);
                }
            }
        }
    }
}
