//! The spray protocol, version 1: frames on a byte stream (an SSH exec channel to `receive`, or
//! a pipe to an in-process receiver for directory targets), and the pure decision of what a
//! receiver lacks.
//!
//! A frame is `kind: u8`, `length: u32 BE`, `payload`. Kind `C` carries one JSON [`Message`]
//! (at most [`MAX_CONTROL_BYTES`]); kind `D` carries file data: `encoding: u8` (0 raw, 1 LZ4 block)
//! and at most [`CHUNK_BYTES`] of data once decoded. The conversation:
//!
//! ```text
//! sender                                  receiver
//! Hello {version, sender, offers}   →
//!                                   ←     Welcome {version, receiver, wants}   (or Error)
//! per wanted set, newest first:
//!   SetBegin {id, manifest}         →
//!   per file: FileBegin {name, offset} D… FileEnd {name}
//!   SetEnd {id}                     →
//!                                   ←     Committed {id}                       (or Error)
//! (while the receiver waits for a lock, before Welcome or before Committed, it sends
//! Waiting {reason} every KEEPALIVE; the sender reads past them)
//! Bye                               →
//! ```

use crate::manifest::parse_set_id;
use crate::retention::{DeleteReason, Policy, SetInfo, plan, takes_place_of};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};

pub const PROTOCOL_VERSION: u32 = 1;
/// Largest JSON frame: a Hello offering thousands of sets fits.
pub const MAX_CONTROL_BYTES: usize = 1 << 20;
/// Largest decoded data frame; also the sender's read size.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Largest encoded data frame: the encoding byte and a chunk (a chunk that does not shrink is
/// sent raw).
const MAX_DATA_FRAME_BYTES: usize = CHUNK_BYTES + 1;
const KIND_CONTROL: u8 = b'C';
const KIND_DATA: u8 = b'D';
const ENCODING_RAW: u8 = 0;
/// An LZ4 block: fast enough to keep up with the cipher on one core, and pure Rust (the
/// MachineConfig carries the binary, so every kilobyte counts).
const ENCODING_LZ4: u8 = 1;

/// A set the sender holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offer {
    pub id: String,
    /// sha256 of the exact `manifest.json` bytes the sender will send.
    pub manifest_sha256: String,
    pub size: u64,
    pub dirty: bool,
}

/// A set the receiver lacks, with the bytes of each file it already holds from a cut transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Want {
    pub id: String,
    pub held: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    Hello {
        version: u32,
        sender: String,
        offers: Vec<Offer>,
    },
    Welcome {
        version: u32,
        receiver: String,
        wants: Vec<Want>,
        /// How many of the offered sets the receiver already holds.
        holds: usize,
    },
    SetBegin {
        id: String,
        manifest: String,
    },
    FileBegin {
        name: String,
        offset: u64,
    },
    FileEnd {
        name: String,
    },
    SetEnd {
        id: String,
    },
    Committed {
        id: String,
    },
    Bye,
    Error {
        message: String,
    },
    /// Receiver to sender while it waits for one of its locks (another receiver, or a backup
    /// or prune on its node): sent every [`KEEPALIVE`], so that the sender's I/O timeout
    /// measures a dead link, not a busy peer. The wait stays bounded by the receiver's
    /// `lock_wait`.
    Waiting {
        reason: String,
    },
}

/// How often a waiting receiver says so.
pub const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Control(Message),
    /// Decoded file data, in the connection's buffer until the next read.
    Data(&'a [u8]),
}

/// Protocol violations: the peer sent something this side must refuse.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    #[error("protocol violation: {0}")]
    Violation(String),
}

impl ProtocolError {
    pub fn violation(message: impl Into<String>) -> ProtocolError {
        ProtocolError::Violation(message.into())
    }
}

/// A connection's byte stream, which can close its sending direction on its own: after a
/// failed write the sender half-closes, so the receiver sees EOF instead of waiting for data,
/// and then reads whatever the receiver had to say.
pub trait Stream: Read + Write {
    fn close_write(&mut self) -> io::Result<()>;
}

/// Both directions of a connection, framed.
pub struct Conn<S> {
    stream: S,
    compress: bool,
    encoded: Vec<u8>,
    /// The last data frame as read, and decoded: allocated once, reused for every frame (a
    /// fresh megabyte per frame cost the receiver page faults and a copy).
    payload: Vec<u8>,
    decoded: Vec<u8>,
    /// File data bytes before and after encoding, for the statistics.
    pub data_bytes_sent: u64,
    pub wire_bytes_sent: u64,
    pub data_bytes_received: u64,
}

impl<S: Stream> Conn<S> {
    pub fn new(stream: S, compress: bool) -> Conn<S> {
        Conn {
            stream,
            compress,
            encoded: Vec::new(),
            payload: Vec::new(),
            decoded: Vec::new(),
            data_bytes_sent: 0,
            wire_bytes_sent: 0,
            data_bytes_received: 0,
        }
    }

    pub fn into_inner(self) -> S {
        self.stream
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    fn write_frame(&mut self, kind: u8, payload: &[u8]) -> io::Result<()> {
        self.stream.write_all(&frame_header(kind, payload.len()))?;
        self.stream.write_all(payload)?;
        self.wire_bytes_sent += (FRAME_HEADER_BYTES + payload.len()) as u64;
        Ok(())
    }

    /// Sends a message and flushes: the peer may be waiting for it.
    pub fn send(&mut self, message: &Message) -> io::Result<()> {
        let json = serde_json::to_vec(message).map_err(io::Error::other)?;
        self.write_frame(KIND_CONTROL, &json)?;
        self.stream.flush()
    }

    /// Sends one chunk of file data (at most [`CHUNK_BYTES`]), LZ4-compressed when enabled and
    /// smaller.
    pub fn send_data(&mut self, chunk: &[u8]) -> io::Result<()> {
        let mut frame = std::mem::take(&mut self.encoded);
        let (n, _) = encode_data(chunk, self.compress, &mut frame);
        let result = self.send_encoded(&frame[..n], chunk.len());
        self.encoded = frame;
        result
    }

    /// Sends a whole data frame made by [`encode_data`] from `data_len` bytes of file data, in
    /// one write (the SSH transport makes one packet of a header and its payload).
    pub fn send_encoded(&mut self, frame: &[u8], data_len: usize) -> io::Result<()> {
        self.stream.write_all(frame)?;
        self.data_bytes_sent += data_len as u64;
        self.wire_bytes_sent += frame.len() as u64;
        Ok(())
    }

    /// Whether data frames of this connection are to be compressed.
    pub fn compresses(&self) -> bool {
        self.compress
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }

    /// Ends the sending direction (the peer reads EOF); reading goes on.
    pub fn close_write(&mut self) -> io::Result<()> {
        self.stream.close_write()
    }

    /// Reads the next frame, refusing anything malformed or oversized before allocating for it.
    pub fn next_frame(&mut self) -> Result<Frame<'_>, ProtocolError> {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        self.stream.read_exact(&mut header)?;
        let len = u32::from_be_bytes(header[1..].try_into().expect("4 bytes")) as usize;
        match header[0] {
            KIND_CONTROL => {
                if len > MAX_CONTROL_BYTES {
                    return Err(ProtocolError::violation(format!(
                        "control frame of {len} bytes (limit {MAX_CONTROL_BYTES})"
                    )));
                }
                let mut json = vec![0u8; len];
                self.stream.read_exact(&mut json)?;
                let message = serde_json::from_slice(&json)
                    .map_err(|e| ProtocolError::violation(format!("invalid control frame: {e}")))?;
                Ok(Frame::Control(message))
            }
            KIND_DATA => {
                if len == 0 || len > MAX_DATA_FRAME_BYTES {
                    return Err(ProtocolError::violation(format!(
                        "data frame of {len} bytes"
                    )));
                }
                if self.payload.is_empty() {
                    self.payload = vec![0u8; MAX_DATA_FRAME_BYTES];
                }
                let payload = &mut self.payload[..len];
                self.stream.read_exact(payload)?;
                let data: &[u8] = match payload[0] {
                    ENCODING_RAW => &payload[1..],
                    ENCODING_LZ4 => {
                        if self.decoded.is_empty() {
                            self.decoded = vec![0u8; CHUNK_BYTES];
                        }
                        let n = lz4_flex::block::decompress_into(&payload[1..], &mut self.decoded)
                            .map_err(|e| {
                                ProtocolError::violation(format!("bad LZ4 data frame: {e}"))
                            })?;
                        &self.decoded[..n]
                    }
                    other => {
                        return Err(ProtocolError::violation(format!(
                            "data frame with unknown encoding {other}"
                        )));
                    }
                };
                self.data_bytes_received += data.len() as u64;
                Ok(Frame::Data(data))
            }
            other => Err(ProtocolError::violation(format!(
                "unknown frame kind {other:#04x}"
            ))),
        }
    }

    /// The next frame, which must be a control message.
    pub fn next_message(&mut self) -> Result<Message, ProtocolError> {
        match self.next_frame()? {
            Frame::Control(message) => Ok(message),
            Frame::Data(_) => Err(ProtocolError::violation(
                "data frame where a message was expected",
            )),
        }
    }
}

/// A frame's `kind` and payload length, as they precede the payload on the wire.
const FRAME_HEADER_BYTES: usize = 5;

fn frame_header(kind: u8, payload_len: usize) -> [u8; FRAME_HEADER_BYTES] {
    let mut header = [kind; FRAME_HEADER_BYTES];
    header[1..].copy_from_slice(&(payload_len as u32).to_be_bytes());
    header
}

/// Encodes the whole data frame of `chunk` (at most [`CHUNK_BYTES`]) into `frame` and returns
/// its length and whether it is LZ4: LZ4 when `compress` and it comes out smaller, raw
/// otherwise. `frame` only ever grows, so a buffer kept from one chunk to the next is neither
/// reallocated nor zeroed again. No I/O, so that a sender can encode off the thread that writes.
pub fn encode_data(chunk: &[u8], compress: bool, frame: &mut Vec<u8>) -> (usize, bool) {
    assert!(chunk.len() <= CHUNK_BYTES, "chunk larger than CHUNK_BYTES");
    // The header, then the encoding byte.
    const HEAD: usize = FRAME_HEADER_BYTES + 1;
    let room = HEAD + lz4_flex::block::get_maximum_output_size(chunk.len());
    if frame.len() < room {
        frame.resize(room, 0);
    }
    let lz4 = if compress {
        lz4_flex::block::compress_into(chunk, &mut frame[HEAD..])
            .ok()
            .filter(|&n| n < chunk.len())
    } else {
        None
    };
    let (encoding, len) = match lz4 {
        Some(n) => (ENCODING_LZ4, n),
        None => {
            frame[HEAD..HEAD + chunk.len()].copy_from_slice(chunk);
            (ENCODING_RAW, chunk.len())
        }
    };
    frame[..FRAME_HEADER_BYTES].copy_from_slice(&frame_header(KIND_DATA, 1 + len));
    frame[FRAME_HEADER_BYTES] = encoding;
    (HEAD + len, encoding == ENCODING_LZ4)
}

/// Two one-way streams as one connection (pipes to an in-process receiver).
pub struct Duplex<R, W> {
    pub reader: R,
    /// `None` once the sending direction is closed.
    pub writer: Option<W>,
}

impl<R, W> Duplex<R, W> {
    pub fn new(reader: R, writer: W) -> Duplex<R, W> {
        Duplex {
            reader,
            writer: Some(writer),
        }
    }

    fn writer(&mut self) -> io::Result<&mut W> {
        self.writer
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "sending side closed"))
    }
}

impl<R: Read, W> Read for Duplex<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl<R, W: Write> Write for Duplex<R, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer()?.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.writer()?.flush()
    }
}

impl<R: Read, W: Write> Stream for Duplex<R, W> {
    fn close_write(&mut self) -> io::Result<()> {
        self.writer = None;
        Ok(())
    }
}

/// Both ends of an in-process connection over OS pipes: `(sender side, receiver side)`.
pub fn pipe_pair() -> io::Result<(
    Duplex<io::PipeReader, io::PipeWriter>,
    Duplex<io::PipeReader, io::PipeWriter>,
)> {
    let (to_receiver_r, to_receiver_w) = io::pipe()?;
    let (to_sender_r, to_sender_w) = io::pipe()?;
    Ok((
        Duplex::new(to_sender_r, to_receiver_w),
        Duplex::new(to_receiver_r, to_sender_w),
    ))
}

/// A set the receiver holds: what `wants` compares offers with.
#[derive(Debug, Clone)]
pub struct HeldSet {
    pub info: SetInfo,
    pub manifest_sha256: String,
    /// Damaged or failed its last verification (or its manifest is unreadable, with an empty
    /// digest): the same set offered again replaces it; another manifest never does.
    pub damaged: bool,
}

/// A cut transfer in the receiver's staging: the manifest digest it was for and bytes per file.
#[derive(Debug, Clone, Default)]
pub struct Partial {
    pub manifest_sha256: String,
    pub held: BTreeMap<String, u64>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct WantPlan {
    /// Newest first; a set that does not fit comes last (see [`WantPlan::refused`]).
    pub wants: Vec<Want>,
    /// Offered sets already held, same manifest.
    pub holds: usize,
    /// Offers with the id of a held set but another manifest: never overwritten.
    pub conflicts: Vec<String>,
    /// Wanted sets that replace a damaged copy of the same manifest.
    pub repairs: Vec<String>,
    /// Offers not wanted, and why.
    pub declined: Vec<(String, Declined)>,
    /// A set asked for last only to be refused when it begins, so that the sender's run fails
    /// and says why (the protocol has no other way to tell it): it does not fit.
    pub refused: Option<(String, String)>,
}

/// Why an offer is not wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Declined {
    /// Not a set id.
    NotASet,
    /// Of the receiver's own origin: only its own backups (and `fetch`) make those.
    OwnOrigin,
    /// Created after the receiver's clock plus the allowed skew.
    FutureDated,
    /// The receiver's retention would delete it at once.
    NotKept,
    /// Older than the newest set held of its origin, it would take this held set's place as
    /// the newest of an hour, day, week, month or year that retention keeps.
    TakesPlaceOf(String),
    /// It does not fit without deleting sets to make room, or above the free-space floor.
    NoRoom(String),
    /// The session already took its bound of sets of this origin: a later one takes it.
    Deferred,
}

impl std::fmt::Display for Declined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Declined::NotASet => f.write_str("not a set id"),
            Declined::OwnOrigin => f.write_str("a set of this node's own origin"),
            Declined::FutureDated => {
                f.write_str("dated after this node's clock plus max_clock_skew")
            }
            Declined::NotKept => f.write_str("retention here would delete it at once"),
            Declined::TakesPlaceOf(id) => write!(
                f,
                "older than the newest set held of its origin, it would take the place of {id} as the newest of its period"
            ),
            Declined::NoRoom(why) => f.write_str(why),
            Declined::Deferred => {
                f.write_str("enough sets of its origin this session: the next spray brings it")
            }
        }
    }
}

/// What a receiver judges offers by.
#[derive(Debug, Clone)]
pub struct Judge<'a> {
    pub policy: &'a Policy,
    /// Free bytes of the receiving store's filesystem (`u64::MAX` for a bucket).
    pub free_bytes: u64,
    /// Sets created after this are refused: the receiver's now plus `max_clock_skew`.
    pub not_after: DateTime<Utc>,
    /// The limits on a sender the receiver does not trust (a peer); `None` when this node
    /// sends to a store of its own (a directory, a bucket).
    pub guard: Option<Guard<'a>>,
}

/// What a sender holding the spray key (or a node certificate) may not do.
#[derive(Debug, Clone)]
pub struct Guard<'a> {
    /// The receiver's node name: sets of this origin are never received.
    pub own_origin: &'a str,
    /// At most this many sets of one origin in one session.
    pub max_sets_per_origin: usize,
    /// At most this many sets in one session, of all origins.
    pub max_sets: usize,
}

/// Offers planned one at a time in one call (each costs a retention plan): the rest wait for
/// the next session. A store's own sprays offer far fewer that its rules keep.
pub const MAX_PLANNED: usize = 256;

/// What a receiver lacks: offers it does not hold, that its own retention policy would keep
/// (otherwise every spray would send them again), resuming cut transfers of the same manifest.
///
/// From a sender it does not trust ([`Judge::guard`]), it also refuses what would make it
/// delete what it holds: no set of its own origin or dated in the future; no set that does not
/// fit above the free-space floor and within `max_total_size` without deleting a held set;
/// no set older than the newest held of its origin that would take a held set's place as the
/// newest of a period retention keeps (a set newer than all of its origin is a new backup);
/// and at most `max_sets_per_origin` sets of one origin (`max_sets` in all). So a sender can
/// push no held set out but through the ordinary turn of retention at the newest end.
pub fn wants(
    offers: &[Offer],
    held: &[HeldSet],
    partials: &BTreeMap<String, Partial>,
    judge: &Judge,
) -> WantPlan {
    let mut result = WantPlan::default();
    let held_by_id: BTreeMap<&str, &HeldSet> =
        held.iter().map(|h| (h.info.id.as_str(), h)).collect();
    // (offer, what retention knows of it, whether it repairs a damaged copy)
    let mut candidates: Vec<(&Offer, SetInfo, bool)> = Vec::new();
    let mut offered = BTreeSet::new();
    // An id offered twice is judged once (a receiver refuses such a hello anyway).
    for offer in offers.iter().filter(|o| offered.insert(o.id.as_str())) {
        let same = |h: &HeldSet| h.manifest_sha256 == offer.manifest_sha256;
        let repair = match held_by_id.get(offer.id.as_str()) {
            Some(h) if same(h) && !h.damaged => {
                result.holds += 1;
                continue;
            }
            Some(h) if !same(h) || h.manifest_sha256.is_empty() => {
                result.conflicts.push(offer.id.clone());
                continue;
            }
            repair => repair.is_some(),
        };
        let Some((created, origin)) = parse_set_id(&offer.id) else {
            result.declined.push((offer.id.clone(), Declined::NotASet));
            continue;
        };
        // A repair brings back the very manifest held: it adds nothing retention counts.
        if !repair {
            if judge
                .guard
                .as_ref()
                .is_some_and(|g| origin.eq_ignore_ascii_case(g.own_origin))
            {
                result
                    .declined
                    .push((offer.id.clone(), Declined::OwnOrigin));
                continue;
            }
            if created > judge.not_after {
                result
                    .declined
                    .push((offer.id.clone(), Declined::FutureDated));
                continue;
            }
        }
        let info = SetInfo {
            id: offer.id.clone(),
            origin: origin.to_string(),
            created,
            size: offer.size,
            dirty: offer.dirty,
        };
        candidates.push((offer, info, repair));
    }
    candidates.sort_by(|(_, a, _), (_, b, _)| (&b.created, &b.id).cmp(&(&a.created, &a.id)));
    // Damaged sets count for nothing in retention (as in prune).
    let present: Vec<SetInfo> = held
        .iter()
        .filter(|h| !h.damaged)
        .map(|h| h.info.clone())
        .collect();
    // What no rule would keep even with every offer arrived is declined at once; the rest are
    // planned one at a time, newest first, as they would arrive.
    let rules_only = judge.policy.without_size_pressure();
    let mut all = present.clone();
    all.extend(candidates.iter().map(|(_, info, _)| info.clone()));
    let kept_by_rules: BTreeSet<String> = plan(&all, &rules_only, u64::MAX, judge.not_after)
        .decisions
        .into_iter()
        .filter(|d| d.keep())
        .map(|d| d.set.id)
        .collect();
    let mut accepted: Vec<SetInfo> = Vec::new();
    let mut incoming: u64 = 0;
    let mut taken: BTreeMap<String, usize> = BTreeMap::new();
    let mut planned_count = 0usize;
    for (offer, info, repair) in candidates {
        let id = info.id.clone();
        if !kept_by_rules.contains(&id) {
            result.declined.push((id, Declined::NotKept));
            continue;
        }
        let full = judge
            .guard
            .as_ref()
            .is_some_and(|g| accepted.len() >= g.max_sets);
        if planned_count >= MAX_PLANNED || full {
            result.declined.push((id, Declined::Deferred));
            continue;
        }
        if let (Some(guard), false) = (&judge.guard, repair) {
            if taken.get(&info.origin).copied().unwrap_or(0) >= guard.max_sets_per_origin {
                result.declined.push((id, Declined::Deferred));
                continue;
            }
            let of_origin: Vec<SetInfo> = present
                .iter()
                .chain(&accepted)
                .filter(|s| s.origin == info.origin)
                .cloned()
                .collect();
            let newest = of_origin.iter().map(|s| (&s.created, &s.id)).max();
            if newest.is_some_and(|newest| (&info.created, &info.id) < newest)
                && let Some(place) = takes_place_of(&info, &of_origin, judge.policy)
            {
                result
                    .declined
                    .push((id, Declined::TakesPlaceOf(place.id.clone())));
                continue;
            }
        }
        planned_count += 1;
        let arriving = incoming.saturating_add(info.size);
        let free_after = judge.free_bytes.saturating_sub(arriving);
        let mut planned = present.clone();
        planned.extend(accepted.iter().cloned());
        planned.push(info.clone());
        let plan = plan(&planned, judge.policy, free_after, judge.not_after);
        if judge.guard.is_some() {
            let floor = judge.policy.min_free_space.unwrap_or(0);
            let pressed = plan.decisions.iter().find(|d| {
                matches!(
                    d.delete,
                    Some(DeleteReason::MaxTotalSize | DeleteReason::MinFreeSpace)
                )
            });
            let no_room = if judge.free_bytes < arriving.saturating_add(floor) {
                Some(format!(
                    "it needs {} bytes, {} are free with {} arriving before it, and {floor} must stay free (min_free_space)",
                    info.size, judge.free_bytes, incoming
                ))
            } else {
                pressed.map(|d| {
                    format!(
                        "it fits only if {} went ({}): a delivery never makes room",
                        d.set.id,
                        d.delete.expect("a deletion")
                    )
                })
            };
            if let Some(why) = no_room {
                if result.refused.is_none() {
                    result.refused = Some((id.clone(), why.clone()));
                }
                result.declined.push((id, Declined::NoRoom(why)));
                continue;
            }
        }
        if !plan.decisions.iter().any(|d| d.set.id == id && d.keep()) {
            result.declined.push((id, Declined::NotKept));
            continue;
        }
        let held = partials
            .get(&id)
            .filter(|p| p.manifest_sha256 == offer.manifest_sha256)
            .map(|p| p.held.clone())
            .unwrap_or_default();
        if repair {
            result.repairs.push(id.clone());
        } else {
            *taken.entry(info.origin.clone()).or_default() += 1;
        }
        incoming = arriving;
        accepted.push(info);
        result.wants.push(Want { id, held });
    }
    if let Some((id, _)) = &result.refused {
        result.wants.push(Want {
            id: id.clone(),
            held: BTreeMap::new(),
        });
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    /// A stream whose reads come from `input` and whose writes are collected.
    struct Loop {
        input: io::Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Loop {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Loop {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Stream for Loop {
        fn close_write(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn encode(compress: bool, f: impl FnOnce(&mut Conn<Loop>)) -> Vec<u8> {
        let mut conn = Conn::new(
            Loop {
                input: io::Cursor::new(Vec::new()),
                output: Vec::new(),
            },
            compress,
        );
        f(&mut conn);
        conn.into_inner().output
    }

    fn decode(bytes: Vec<u8>) -> Conn<Loop> {
        Conn::new(
            Loop {
                input: io::Cursor::new(bytes),
                output: Vec::new(),
            },
            false,
        )
    }

    #[test]
    fn frames_round_trip_raw_and_compressed() {
        let compressible = b"apiVersion: v1\nkind: ConfigMap\n".repeat(4000);
        let random: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for compress in [false, true] {
            let hello = Message::Hello {
                version: 1,
                sender: "m0".into(),
                offers: vec![],
            };
            let mut wire_bytes = 0;
            let bytes = encode(compress, |c| {
                c.send(&hello).unwrap();
                c.send_data(&compressible).unwrap();
                c.send_data(&random).unwrap();
                c.send(&Message::Bye).unwrap();
                wire_bytes = c.wire_bytes_sent;
            });
            assert_eq!(wire_bytes, bytes.len() as u64);
            if compress {
                assert!(
                    bytes.len() < compressible.len() / 10 + random.len() + 200,
                    "compressed: {}",
                    bytes.len()
                );
            }
            let mut conn = decode(bytes);
            assert_eq!(conn.next_frame().unwrap(), Frame::Control(hello));
            assert_eq!(conn.next_frame().unwrap(), Frame::Data(&compressible[..]));
            assert_eq!(conn.next_frame().unwrap(), Frame::Data(&random[..]));
            assert_eq!(conn.next_message().unwrap(), Message::Bye);
            assert!(
                matches!(conn.next_frame(), Err(ProtocolError::Io(_))),
                "EOF"
            );
        }
    }

    #[test]
    fn one_reused_frame_buffer_encodes_each_chunk_on_its_own() {
        // Large then small, compressible then not: nothing of an earlier frame leaks into a
        // later one, and each frame says its own length and encoding.
        let text = b"{\"kind\":\"Secret\",\"data\":{}}".repeat(20_000);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..CHUNK_BYTES)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 56) as u8
            })
            .collect();
        let chunks: [&[u8]; 5] = [&text, &noise[..1000], &noise, &text[..77], &[]];
        for compress in [false, true] {
            let mut frame = Vec::new();
            for chunk in chunks {
                let (n, lz4) = encode_data(chunk, compress, &mut frame);
                assert_eq!(frame[FRAME_HEADER_BYTES], u8::from(lz4));
                if chunk.len() > 1000 {
                    assert_eq!(lz4, compress && chunk == &text[..], "LZ4 for text only");
                }
                if chunk.is_empty() {
                    // An empty chunk is never sent (a file's range is never empty there).
                    continue;
                }
                let mut conn = decode(frame[..n].to_vec());
                assert_eq!(conn.next_frame().unwrap(), Frame::Data(chunk));
                assert!(matches!(conn.next_frame(), Err(ProtocolError::Io(_))));
            }
        }
    }

    #[test]
    fn hostile_frames_are_refused_before_allocation() {
        let frame = |kind: u8, len: u32, payload: &[u8]| {
            let mut v = vec![kind];
            v.extend_from_slice(&len.to_be_bytes());
            v.extend_from_slice(payload);
            v
        };
        let table: Vec<(Vec<u8>, &str)> = vec![
            (
                frame(b'C', u32::MAX, b""),
                "control frame of 4294967295 bytes",
            ),
            (frame(b'D', u32::MAX, b""), "data frame of 4294967295 bytes"),
            (frame(b'D', 0, b""), "data frame of 0 bytes"),
            (frame(b'X', 1, b"x"), "unknown frame kind"),
            (frame(b'C', 9, b"{\"type\":1"), "invalid control frame"),
            (
                frame(b'C', 15, b"{\"type\":\"nope\"}"),
                "invalid control frame",
            ),
            (
                frame(b'C', 26, b"{\"type\":\"bye\",\"extra\":true}"),
                "invalid control frame",
            ),
            (frame(b'D', 4, &[7, 1, 2, 3]), "unknown encoding 7"),
            (frame(b'D', 4, &[1, 1, 2, 3]), "bad LZ4 data frame"),
        ];
        for (bytes, expected) in table {
            let err = decode(bytes).next_frame().unwrap_err().to_string();
            assert!(err.contains(expected), "{err} / {expected}");
        }
        // An LZ4 block that inflates past the chunk limit is refused.
        let bomb = lz4_flex::block::compress(&vec![0u8; CHUNK_BYTES + 1]);
        let mut payload = vec![1u8];
        payload.extend_from_slice(&bomb);
        let err = decode(frame(b'D', payload.len() as u32, &payload))
            .next_frame()
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad LZ4 data frame"), "{err}");
    }

    /// How a store of this node's own judges offers (a directory, a bucket).
    fn own(policy: &Policy, free_bytes: u64) -> Judge<'_> {
        Judge {
            policy,
            free_bytes,
            not_after: DateTime::<Utc>::MAX_UTC,
            guard: None,
        }
    }

    fn declined_ids(plan: &WantPlan) -> Vec<&str> {
        plan.declined.iter().map(|(id, _)| id.as_str()).collect()
    }

    fn info(id: &str, size: u64) -> SetInfo {
        let (created, origin) = parse_set_id(id).unwrap();
        SetInfo {
            id: id.into(),
            origin: origin.into(),
            created,
            size,
            dirty: false,
        }
    }

    fn offer(id: &str, digest: &str) -> Offer {
        Offer {
            id: id.into(),
            manifest_sha256: digest.into(),
            size: 100,
            dirty: false,
        }
    }

    const A: &str = "20260101T000000.000Z-m0";
    const B: &str = "20260101T010000.000Z-m0";
    const C: &str = "20260101T020000.000Z-m0";

    #[test]
    fn wants_what_is_missing_newest_first_and_resumes_partials() {
        let policy = Policy {
            keep_last: 10,
            ..Policy::default()
        };
        let held = vec![HeldSet {
            info: info(A, 100),
            manifest_sha256: "a".into(),
            damaged: false,
        }];
        let partials = BTreeMap::from([
            (
                C.to_string(),
                Partial {
                    manifest_sha256: "c".into(),
                    held: BTreeMap::from([("f".into(), 42)]),
                },
            ),
            (
                B.to_string(),
                Partial {
                    manifest_sha256: "stale".into(),
                    held: BTreeMap::from([("f".into(), 7)]),
                },
            ),
        ]);
        let offers = vec![offer(A, "a"), offer(B, "b"), offer(C, "c")];
        let plan = wants(&offers, &held, &partials, &own(&policy, 0));
        assert_eq!(
            plan.wants,
            [
                Want {
                    id: C.into(),
                    held: BTreeMap::from([("f".into(), 42)])
                },
                Want {
                    id: B.into(),
                    held: BTreeMap::new()
                },
            ]
        );
        assert!(plan.conflicts.is_empty() && plan.declined.is_empty());
    }

    #[test]
    fn nothing_is_wanted_twice_or_overwritten() {
        let policy = Policy {
            keep_last: 10,
            ..Policy::default()
        };
        let held = vec![
            HeldSet {
                info: info(A, 100),
                manifest_sha256: "a".into(),
                damaged: false,
            },
            HeldSet {
                info: info(B, 100),
                manifest_sha256: "b".into(),
                damaged: false,
            },
        ];
        let plan = wants(
            &[offer(A, "a"), offer(B, "other")],
            &held,
            &BTreeMap::new(),
            &own(&policy, 0),
        );
        assert!(plan.wants.is_empty());
        assert_eq!(plan.conflicts, [B]);
        let plan = wants(
            &[offer("../../etc", "x")],
            &held,
            &BTreeMap::new(),
            &own(&policy, 0),
        );
        assert_eq!(declined_ids(&plan), ["../../etc"]);
    }

    #[test]
    fn a_damaged_copy_is_replaced_by_the_same_set_only() {
        let policy = Policy {
            keep_last: 10,
            ..Policy::default()
        };
        let damaged = |id: &str, sha: &str| HeldSet {
            info: info(id, 100),
            manifest_sha256: sha.into(),
            damaged: true,
        };
        // A: same manifest, damaged here: wanted again as a repair. B: another manifest under
        // a damaged set's id: kept, never overwritten. C: unreadable manifest here: left alone.
        let held = vec![damaged(A, "a"), damaged(B, "b"), damaged(C, "")];
        let plan = wants(
            &[offer(A, "a"), offer(B, "other"), offer(C, "c")],
            &held,
            &BTreeMap::new(),
            &own(&policy, 0),
        );
        let wanted: Vec<&str> = plan.wants.iter().map(|w| w.id.as_str()).collect();
        assert_eq!(wanted, [A]);
        assert_eq!(plan.repairs, [A]);
        assert_eq!(plan.conflicts, [B, C]);
        assert_eq!(plan.holds, 0);
    }

    #[test]
    fn sets_the_receiver_would_prune_at_once_are_declined() {
        // The receiver keeps the 2 newest per origin: offering three older sets of m0 while it
        // holds two newer ones means none is wanted — or each spray would resend them.
        let policy = Policy {
            keep_last: 2,
            ..Policy::default()
        };
        let held = vec![
            HeldSet {
                info: info("20260201T000000.000Z-m0", 100),
                manifest_sha256: "x".into(),
                damaged: false,
            },
            HeldSet {
                info: info("20260202T000000.000Z-m0", 100),
                manifest_sha256: "y".into(),
                damaged: false,
            },
        ];
        let plan = wants(
            &[offer(A, "a"), offer(B, "b"), offer(C, "c")],
            &held,
            &BTreeMap::new(),
            &own(&policy, 0),
        );
        assert!(plan.wants.is_empty(), "{plan:?}");
        assert_eq!(plan.declined.len(), 3);
        // Sets of another origin are planned on their own.
        let plan = wants(
            &[offer("20260101T000000.000Z-m1", "z")],
            &held,
            &BTreeMap::new(),
            &own(&policy, 0),
        );
        assert_eq!(plan.wants.len(), 1);
        // A free-space floor the receiver cannot meet declines what would not fit.
        let tight = Policy {
            keep_within: Some(Duration::from_secs(86_400 * 365)),
            min_free_space: Some(1000),
            ..Policy::default()
        };
        let plan = wants(&[offer(C, "c")], &held, &BTreeMap::new(), &own(&tight, 950));
        assert!(plan.wants.is_empty(), "{plan:?}");
    }

    /// How a peer's receiver, `m1`, judges what another master offers.
    fn peer(policy: &Policy, free_bytes: u64, not_after: DateTime<Utc>) -> Judge<'_> {
        Judge {
            policy,
            free_bytes,
            not_after,
            guard: Some(Guard {
                own_origin: "m1",
                max_sets_per_origin: 3,
                max_sets: 7,
            }),
        }
    }

    fn held_sets(ids: &[&str]) -> Vec<HeldSet> {
        ids.iter()
            .map(|id| HeldSet {
                info: info(id, 100),
                manifest_sha256: format!("sha of {id}"),
                damaged: false,
            })
            .collect()
    }

    fn why<'a>(plan: &'a WantPlan, id: &str) -> Option<&'a Declined> {
        plan.declined.iter().find(|(d, _)| d == id).map(|(_, w)| w)
    }

    #[test]
    fn a_peer_cannot_plant_own_future_or_displacing_sets() {
        let policy = Policy {
            keep_last: 2,
            keep_hourly: 24,
            ..Policy::default()
        };
        let now = parse_set_id("20260301T120000.000Z-x").unwrap().0;
        // m1 holds its own set, and m0's sets of 08:10, 09:10 and 10:10.
        let held = held_sets(&[
            "20260301T110000.000Z-m1",
            "20260301T081000.000Z-m0",
            "20260301T091000.000Z-m0",
            "20260301T101000.000Z-m0",
        ]);
        let table: &[(&str, Option<Declined>)] = &[
            // Its own origin, newer than anything: only its backups make those.
            ("20260301T115900.000Z-m1", Some(Declined::OwnOrigin)),
            // Dated after now (+ no skew here).
            ("20990101T000000.000Z-m0", Some(Declined::FutureDated)),
            ("20260301T120000.001Z-m0", Some(Declined::FutureDated)),
            // Later in the hour of 09:10: would take its place.
            (
                "20260301T095900.000Z-m0",
                Some(Declined::TakesPlaceOf("20260301T091000.000Z-m0".into())),
            ),
            // Earlier in that hour: no place to take, and no rule keeps it.
            ("20260301T090500.000Z-m0", Some(Declined::NotKept)),
            // An hour m1 holds nothing of: a gap filled.
            ("20260301T073000.000Z-m0", None),
            // Newer than every m0 set held: the next backup.
            ("20260301T111000.000Z-m0", None),
            // A new origin.
            ("20260301T100000.000Z-m2", None),
        ];
        for (id, expected) in table {
            let plan = wants(
                &[offer(id, "x")],
                &held,
                &BTreeMap::new(),
                &peer(&policy, u64::MAX, now),
            );
            assert_eq!(why(&plan, id), expected.as_ref(), "{id}: {plan:?}");
            assert_eq!(plan.wants.len(), usize::from(expected.is_none()), "{id}");
        }
        // Trusted (its own directory store): only the date is judged.
        let plan = wants(
            &[offer("20260301T095900.000Z-m0", "x")],
            &held,
            &BTreeMap::new(),
            &own(&policy, u64::MAX),
        );
        assert_eq!(plan.wants.len(), 1);
    }

    #[test]
    fn a_peer_adds_at_most_its_bound_per_origin_and_in_all_newest_first() {
        let policy = Policy {
            keep_last: 20,
            ..Policy::default()
        };
        let now = parse_set_id("20260302T000000.000Z-x").unwrap().0;
        let offers: Vec<Offer> = (0..6)
            .flat_map(|h| {
                ["m0", "m2", "m3"].map(|o| offer(&format!("20260301T0{h}0000.000Z-{o}"), "x"))
            })
            .collect();
        let plan = wants(
            &offers,
            &[],
            &BTreeMap::new(),
            &peer(&policy, u64::MAX, now),
        );
        let wanted: Vec<&str> = plan.wants.iter().map(|w| w.id.as_str()).collect();
        assert_eq!(
            wanted,
            [
                "20260301T050000.000Z-m3",
                "20260301T050000.000Z-m2",
                "20260301T050000.000Z-m0",
                "20260301T040000.000Z-m3",
                "20260301T040000.000Z-m2",
                "20260301T040000.000Z-m0",
                "20260301T030000.000Z-m3",
            ]
        );
        assert_eq!(
            plan.declined
                .iter()
                .filter(|(_, w)| *w == Declined::Deferred)
                .count(),
            11
        );
    }

    #[test]
    fn a_peer_is_never_given_room_by_deleting_and_is_told_why() {
        let now = parse_set_id("20260302T000000.000Z-x").unwrap().0;
        let held = held_sets(&["20260301T000000.000Z-m0", "20260301T010000.000Z-m0"]);
        let new = offer("20260301T020000.000Z-m0", "x");
        // max_total_size: the new set fits only if an old one went.
        let capped = Policy {
            keep_last: 10,
            max_total_size: Some(250),
            ..Policy::default()
        };
        let plan = wants(
            std::slice::from_ref(&new),
            &held,
            &BTreeMap::new(),
            &peer(&capped, u64::MAX, now),
        );
        let Some(Declined::NoRoom(why)) = self::why(&plan, &new.id) else {
            panic!("{plan:?}");
        };
        assert!(why.contains("20260301T000000.000Z-m0"), "{why}");
        // Asked for last, only to be refused with the reason: the sender's run fails.
        assert_eq!(plan.refused.as_ref().map(|r| r.0.as_str()), Some(&*new.id));
        assert_eq!(plan.wants.last().map(|w| w.id.as_str()), Some(&*new.id));
        // The free-space floor: 100 bytes arriving must leave 1000 free.
        let floored = Policy {
            keep_last: 10,
            min_free_space: Some(1000),
            ..Policy::default()
        };
        for (free, fits) in [(1099, false), (1100, true)] {
            let plan = wants(
                std::slice::from_ref(&new),
                &held,
                &BTreeMap::new(),
                &peer(&floored, free, now),
            );
            assert_eq!(plan.refused.is_none(), fits, "{free}: {plan:?}");
        }
        // Its own store (a directory target) rotates under max_total_size as before.
        let plan = wants(&[new], &held, &BTreeMap::new(), &own(&capped, u64::MAX));
        assert!(plan.refused.is_none() && plan.wants.len() == 1, "{plan:?}");
    }

    #[test]
    fn a_damaged_set_of_its_own_origin_is_repaired_from_a_peer() {
        let policy = Policy {
            keep_last: 10,
            ..Policy::default()
        };
        let mut held = held_sets(&["20260301T000000.000Z-m1"]);
        held[0].damaged = true;
        let now = parse_set_id("20260302T000000.000Z-x").unwrap().0;
        let plan = wants(
            &[offer(
                "20260301T000000.000Z-m1",
                "sha of 20260301T000000.000Z-m1",
            )],
            &held,
            &BTreeMap::new(),
            &peer(&policy, u64::MAX, now),
        );
        assert_eq!(plan.repairs, ["20260301T000000.000Z-m1"]);
    }

    fn arb_ids(origins: &'static [&'static str]) -> impl Strategy<Value = Vec<String>> {
        proptest::collection::btree_set((0usize..origins.len(), 0u32..72 * 60), 0..40).prop_map(
            move |picks| {
                picks
                    .into_iter()
                    .map(|(o, minute)| {
                        let at = parse_set_id("20260301T000000.000Z-x").unwrap().0
                            + chrono::TimeDelta::minutes(i64::from(minute));
                        crate::manifest::make_set_id(at, origins[o])
                    })
                    .collect()
            },
        )
    }

    proptest! {
        #[test]
        fn what_a_peer_is_given_pushes_out_no_held_set_but_at_the_newest_end(
            held in arb_ids(&["m0", "m1", "m2"]),
            offered in arb_ids(&["m0", "m1", "m2", "m3"]),
            keep_last in 0u32..5,
            keep_hourly in 1u32..30,
            cut in 0i64..72,
        ) {
            let policy = Policy { keep_last, keep_hourly, ..Policy::default() };
            let not_after = parse_set_id("20260301T000000.000Z-x").unwrap().0 + chrono::TimeDelta::hours(cut);
            // What m1 holds is what its retention kept.
            let infos: Vec<SetInfo> = held.iter().map(|id| info(id, 100)).collect();
            let kept: Vec<&str> = plan(&infos, &policy, u64::MAX, DateTime::<Utc>::MAX_UTC)
                .decisions
                .iter()
                .filter(|d| d.keep())
                .map(|d| d.set.id.as_str())
                .map(|id| held.iter().find(|h| *h == id).unwrap().as_str())
                .collect();
            let held_sets = held_sets(&kept);
            let offers: Vec<Offer> = offered.iter().map(|id| offer(id, "x")).collect();
            let plan = wants(&offers, &held_sets, &BTreeMap::new(), &peer(&policy, u64::MAX, not_after));
            let hour = |s: &SetInfo| s.created.format("%Y%m%d%H").to_string();
            let mut per_origin: BTreeMap<String, usize> = BTreeMap::new();
            for want in &plan.wants {
                let w = info(&want.id, 100);
                prop_assert!(w.origin != "m1", "own origin {}", w.id);
                prop_assert!(w.created <= not_after, "future {}", w.id);
                *per_origin.entry(w.origin.clone()).or_default() += 1;
                let of_origin: Vec<SetInfo> = held_sets.iter().map(|h| h.info.clone()).filter(|h| h.origin == w.origin).collect();
                let newest = of_origin.iter().map(|h| h.created).max();
                // Older than the newest held of its origin: it takes no hour from a held set.
                if newest.is_some_and(|n| w.created < n) {
                    let newest_of_hour = of_origin.iter().filter(|h| hour(h) == hour(&w)).map(|h| h.created).max();
                    prop_assert!(newest_of_hour.is_none_or(|n| n > w.created), "{} takes an hour", w.id);
                }
            }
            prop_assert!(per_origin.values().all(|n| *n <= 3), "{per_origin:?}");
            prop_assert!(per_origin.values().sum::<usize>() <= 7, "{per_origin:?}");
        }
    }
}
