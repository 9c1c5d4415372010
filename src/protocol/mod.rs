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
//!   SetBegin {id, manifest[, signature]} →
//!   per file: FileBegin {name, offset} D… FileEnd {name}
//!   SetEnd {id}                     →
//!                                   ←     Committed {id}                       (or Error)
//! (while the receiver waits for a lock, before Welcome or before Committed, it sends
//! Waiting {reason} every KEEPALIVE; the sender reads past them)
//! Bye                               →
//! ```

pub mod send;
pub mod serve;
pub mod wants;

pub use wants::{Declined, Guard, HeldSet, Judge, MAX_PLANNED, Partial, WantPlan, wants};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
        /// `manifest.json.sig` of the set, when it has one (absent on the wire otherwise, so an
        /// unsigned set goes as it always did).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
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
    /// Sender to receiver instead of Hello: check your copies of these sets of mine (every set
    /// of mine you hold when `ids` is empty) against their manifests and say what you find.
    Check {
        version: u32,
        sender: String,
        ids: Vec<String>,
        deep: bool,
    },
    /// Receiver to sender: one outcome per copy it checked (while it checks, Waiting).
    Checked {
        outcomes: Vec<CopyOutcome>,
    },
}

/// What a receiver found of one copy it checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyOutcome {
    pub id: String,
    /// The digest of the manifest the copy was checked against; `None` when it has none.
    pub manifest_sha256: Option<String>,
    /// What is wrong; `None`: the copy matches its manifest.
    pub problem: Option<String>,
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
#[cfg(test)]
mod tests {
    use super::*;

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
}
