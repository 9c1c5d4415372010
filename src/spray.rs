//! `spray`: the sending side. `push` speaks the protocol over any byte stream; targets (SSH
//! peers, directory targets) only provide the stream.

use crate::protocol::{Conn, Message, Offer, PROTOCOL_VERSION, Stream};
use crate::store::StoredSet;
use crate::verify::open_regular;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PushStats {
    /// Sets the receiver committed in this run.
    pub sent: Vec<String>,
    /// Sets the receiver holds or declined (retention there): nothing to send.
    pub offered: usize,
    /// File bytes sent (before compression) and bytes on the wire.
    pub data_bytes: u64,
    pub wire_bytes: u64,
}

/// Offers `sets` to the receiver at the other end of `conn` and sends what it lacks, newest
/// first, resuming cut files from where they stopped. An error the receiver reports is returned
/// with its message.
pub fn push<S: Stream>(conn: &mut Conn<S>, sender: &str, sets: &[StoredSet]) -> Result<PushStats> {
    let mut manifests: BTreeMap<&str, (&StoredSet, String)> = BTreeMap::new();
    let mut offers = Vec::new();
    for set in sets.iter().filter(|s| s.problem.is_none()) {
        let path = set.dir.join(crate::manifest::MANIFEST_NAME);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read '{}'", path.display()))?;
        // Offer exactly the bytes that will be sent.
        let digest = crate::verify::hex(&<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()));
        if digest != set.manifest_sha256 {
            bail!("manifest '{}' changed while spraying", path.display());
        }
        offers.push(Offer {
            id: set.id().to_string(),
            manifest_sha256: digest,
            size: set.manifest.total_size(),
            dirty: set.manifest.dirty,
        });
        manifests.insert(set.id(), (set, text));
    }
    let offered = offers.len();
    conn.send(&Message::Hello {
        version: PROTOCOL_VERSION,
        sender: sender.to_string(),
        offers,
    })?;
    let wants = match reply(conn)? {
        Message::Welcome { version, wants, .. } if version == PROTOCOL_VERSION => wants,
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
        let Some((set, text)) = manifests.get(want.id.as_str()) else {
            bail!(
                "receiver asked for set '{}', which was not offered",
                want.id
            );
        };
        let result = (|| -> Result<()> {
            conn.send(&Message::SetBegin {
                id: want.id.clone(),
                manifest: text.clone(),
            })?;
            for file in &set.manifest.files {
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
                let path = set.dir.join(&file.name);
                let mut source = open_regular(&path)?;
                source.seek(SeekFrom::Start(offset))?;
                let mut left = file.size - offset;
                while left > 0 {
                    let n = buf.len().min(left as usize);
                    source
                        .read_exact(&mut buf[..n])
                        .with_context(|| format!("cannot read '{}'", path.display()))?;
                    conn.send_data(&buf[..n])?;
                    left -= n as u64;
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
        match reply(conn)? {
            Message::Committed { id } if id == want.id => stats.sent.push(id),
            other => bail!("unexpected answer to set '{}': {other:?}", want.id),
        }
    }
    conn.send(&Message::Bye)?;
    stats.data_bytes = conn.data_bytes_sent;
    stats.wire_bytes = conn.wire_bytes_sent;
    Ok(stats)
}

/// The receiver's next message; its Error frame becomes an error carrying its words.
fn reply<S: Stream>(conn: &mut Conn<S>) -> Result<Message> {
    match conn.next_message() {
        Ok(Message::Error { message }) => bail!("receiver refused: {message}"),
        Ok(message) => Ok(message),
        Err(e) => Err(anyhow::Error::from(e).context("no answer from the receiver")),
    }
}
