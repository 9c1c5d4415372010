//! age files as streams: a [`Sealer`] reads a plaintext file and yields its age encryption,
//! hashing both sides as the bytes pass (one read of the plaintext); [`open`] yields the
//! plaintext of an age file. Neither holds more than a chunk or two in memory.

use anyhow::{Context, Result, bail};
use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::rc::Rc;

/// age's payload chunk: 64 KiB of plaintext, each sealed with a 16-byte tag.
const CHUNK: u64 = 64 << 10;
const TAG: u64 = 16;
/// The payload nonce after the header.
const NONCE: u64 = 16;
/// The most an age header of ours may take: a stanza per recipient (about 100 bytes each), a
/// random "grease" stanza (at most ~200), the MAC line.
pub const MAX_HEADER_BYTES: u64 = 64 << 10;

/// The payload of `plain` bytes once sealed: the nonce, the plaintext and a tag per chunk (an
/// empty file is one empty chunk). `None` past 2^64.
pub fn payload_size(plain: u64) -> Option<u64> {
    (TAG * plain.div_ceil(CHUNK).max(1))
        .checked_add(NONCE)?
        .checked_add(plain)
}

/// Whether `sealed` bytes can be the age file of `plain` bytes: the payload and a header of at
/// most [`MAX_HEADER_BYTES`] (the header's length varies with the recipients and the grease).
pub fn plausible_size(plain: u64, sealed: u64) -> bool {
    payload_size(plain)
        .and_then(|payload| sealed.checked_sub(payload))
        .is_some_and(|header| header > 0 && header <= MAX_HEADER_BYTES)
}

/// Where the age writer puts its output, for the reader side to drain.
#[derive(Clone, Default)]
struct Sink(Rc<RefCell<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The age encryption of exactly `plain_size` bytes of `source`, read as a stream. Its total
/// size is known before the first byte ([`Sealer::size`]); a source that ends early or holds
/// more is an error.
pub struct Sealer<R> {
    source: R,
    writer: Option<age::stream::StreamWriter<Sink>>,
    out: Sink,
    /// How much of `out` was already read.
    taken: usize,
    remaining: u64,
    size: u64,
    plain: crate::hash::Sha256,
    /// `None` when the caller hashes the sealed bytes itself (an upload hashes each part).
    sealed: Option<crate::hash::Sha256>,
    buf: Vec<u8>,
}

impl<R: Read> Sealer<R> {
    pub fn new(
        recipients: &[age::x25519::Recipient],
        source: R,
        plain_size: u64,
    ) -> Result<Sealer<R>> {
        let encryptor =
            age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
                .context("cannot seal: no usable recipients")?;
        let out = Sink::default();
        let writer = encryptor
            .wrap_output(out.clone())
            .context("cannot start the age stream")?;
        let header = out.0.borrow().len() as u64;
        let payload = payload_size(plain_size).context("a file past 2^64 bytes")?;
        Ok(Sealer {
            source,
            writer: Some(writer),
            out,
            taken: 0,
            remaining: plain_size,
            size: header - NONCE + payload,
            plain: crate::hash::Sha256::new(),
            sealed: Some(crate::hash::Sha256::new()),
            buf: vec![0; CHUNK as usize],
        })
    }

    /// The whole sealed file's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Leaves the sealed bytes unhashed: the caller hashes them itself.
    pub fn plain_digest_only(mut self) -> Self {
        self.sealed = None;
        self
    }

    /// The SHA-256 of the plaintext and of the sealed bytes (unless the caller hashes them),
    /// once everything was read.
    pub fn digests(self) -> ([u8; 32], Option<[u8; 32]>) {
        assert!(
            self.writer.is_none(),
            "the sealed stream was not read to its end"
        );
        (self.plain.finalize(), self.sealed.map(|h| h.finalize()))
    }

    /// Feeds the age writer until it has output to give, or finishes it at the source's end.
    fn fill(&mut self) -> io::Result<()> {
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        if self.remaining == 0 {
            let mut extra = [0u8; 1];
            if self.source.read(&mut extra)? != 0 {
                return Err(io::Error::other(
                    "the file holds more bytes than its manifest says",
                ));
            }
            self.writer
                .take()
                .expect("checked above")
                .finish()
                .map(drop)?;
            return Ok(());
        }
        let want = self.remaining.min(self.buf.len() as u64) as usize;
        let n = self.source.read(&mut self.buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file ends before its manifest size",
            ));
        }
        self.remaining -= n as u64;
        self.plain.update(&self.buf[..n]);
        writer.write_all(&self.buf[..n])
    }
}

impl<R: Read> Read for Sealer<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let mut out = self.out.0.borrow_mut();
                if self.taken < out.len() {
                    let n = buf.len().min(out.len() - self.taken);
                    buf[..n].copy_from_slice(&out[self.taken..self.taken + n]);
                    self.taken += n;
                    if let Some(sealed) = &mut self.sealed {
                        sealed.update(&buf[..n]);
                    }
                    if self.taken == out.len() {
                        out.clear();
                        self.taken = 0;
                    }
                    return Ok(n);
                }
            }
            if self.writer.is_none() {
                return Ok(0);
            }
            self.fill()?;
        }
    }
}

/// The plaintext of the age file read from `sealed`, opened with whichever of `identities`
/// it was sealed to. `what` names the file in errors.
pub fn open<'a, R: Read + 'a>(
    sealed: R,
    identities: &'a [age::x25519::Identity],
    what: &str,
) -> Result<Box<dyn Read + 'a>> {
    let decryptor = age::Decryptor::new(sealed)
        .map_err(|e| anyhow::anyhow!("{what} is not an age file: {e}"))?;
    if decryptor.is_scrypt() {
        bail!("{what} is sealed with a passphrase, not to recipients: not one of ours");
    }
    match decryptor.decrypt(identities.iter().map(|i| i as &dyn age::Identity)) {
        Ok(reader) => Ok(Box::new(reader)),
        Err(age::DecryptError::NoMatchingKeys) => bail!(
            "none of the {} identities given opens {what}",
            identities.len()
        ),
        Err(e) => bail!("cannot open {what}: {e}"),
    }
}

/// Writes the plaintext of a sealed file read from `sealed` into `dest`: exactly `plain_size`
/// bytes, opened with one of `identities`; the sealed file must be the record's size. Its
/// digest is not taken again here: the plaintext is held to the manifest's digest afterwards
/// (an age file of other bytes cannot pass that), and an identity-less check holds the sealed
/// bytes to the record. `what` names the file in errors.
pub fn open_into(
    sealed: impl Read,
    record: &super::record::SealedFile,
    plain_size: u64,
    identities: &[age::x25519::Identity],
    what: &str,
    dest: &mut impl Write,
) -> Result<()> {
    let mut counting = CountingReader {
        inner: sealed.take(record.size.saturating_add(1)),
        bytes: 0,
    };
    {
        let mut plain = open(&mut counting, identities, what)?;
        let copied = io::copy(&mut (&mut plain).take(plain_size), dest)
            .with_context(|| format!("cannot open {what}"))?;
        if copied != plain_size || plain.read(&mut [0u8; 1])? != 0 {
            bail!("{what} does not hold the {plain_size} bytes its manifest says");
        }
    }
    // Whatever follows the age file's last chunk counts too.
    io::copy(&mut counting, &mut io::sink())?;
    if counting.bytes != record.size {
        bail!(
            "{what} holds {} bytes, its seal record says {}",
            counting.bytes,
            record.size
        );
    }
    Ok(())
}

struct CountingReader<R> {
    inner: R,
    bytes: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    fn seal(recipients: &[age::x25519::Recipient], plain: &[u8]) -> (Vec<u8>, u64) {
        let mut sealer = Sealer::new(recipients, plain, plain.len() as u64).unwrap();
        let size = sealer.size();
        let mut out = Vec::new();
        sealer.read_to_end(&mut out).unwrap();
        let (p, s) = sealer.digests();
        assert_eq!(p, crate::hash::Sha256::digest(plain));
        assert_eq!(s, Some(crate::hash::Sha256::digest(&out)));
        (out, size)
    }

    #[test]
    fn the_announced_size_is_the_sealed_size_and_it_opens_again() {
        let identity = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let recipients = [identity.to_public(), other.to_public()];
        for len in [0usize, 1, 65535, 65536, 65537, 3 * 65536, 200_001] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let (sealed, size) = seal(&recipients, &plain);
            assert_eq!(sealed.len() as u64, size, "length {len}");
            assert!(plausible_size(len as u64, size), "length {len}");
            let mut back = Vec::new();
            open(&sealed[..], std::slice::from_ref(&other), "test")
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, plain, "length {len}");
        }
    }

    #[test]
    fn a_source_of_another_size_is_refused() {
        let recipients = [age::x25519::Identity::generate().to_public()];
        let mut longer = Sealer::new(&recipients, &b"abcd"[..], 3).unwrap();
        assert!(std::io::copy(&mut longer, &mut std::io::sink()).is_err());
        let mut shorter = Sealer::new(&recipients, &b"ab"[..], 3).unwrap();
        assert!(std::io::copy(&mut shorter, &mut std::io::sink()).is_err());
    }

    #[test]
    fn a_stranger_identity_or_a_flipped_byte_does_not_open() {
        let identity = age::x25519::Identity::generate();
        let (mut sealed, _) = seal(&[identity.to_public()], &[5u8; 100_000]);
        let stranger = [age::x25519::Identity::generate()];
        let error = open(&sealed[..], &stranger, "'x.age'").err().unwrap();
        assert!(
            error.to_string().contains("none of the 1 identities"),
            "{error}"
        );
        let last = sealed.len() - 10;
        sealed[last] ^= 1;
        let mut reader = open(&sealed[..], std::slice::from_ref(&identity), "'x.age'").unwrap();
        assert!(reader.read_to_end(&mut Vec::new()).is_err());
        // The key itself is what `age-keygen` writes.
        assert!(
            identity
                .to_string()
                .expose_secret()
                .starts_with("AGE-SECRET-KEY-1")
        );
    }

    #[test]
    fn open_into_holds_the_sealed_file_to_its_record_size_and_the_plaintext_to_its_own() {
        let identity = age::x25519::Identity::generate();
        let plain = vec![9u8; 70_000];
        let (sealed, size) = seal(&[identity.to_public()], &plain);
        let record = |sha256: String| crate::seal::record::SealedFile {
            name: "snapshot_x.db".into(),
            size,
            sha256,
            recipients: vec![identity.to_public().to_string()],
        };
        let good = record(crate::hash::hex(&crate::hash::Sha256::digest(&sealed)));
        let ids = std::slice::from_ref(&identity);
        let mut out = Vec::new();
        open_into(&sealed[..], &good, plain.len() as u64, ids, "x", &mut out).unwrap();
        assert_eq!(out, plain);
        // A trailing byte, a plaintext of another size: refused.
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(open_into(&longer[..], &good, 70_000, ids, "x", &mut Vec::new()).is_err());
        assert!(open_into(&sealed[..], &good, 69_999, ids, "x", &mut Vec::new()).is_err());
    }

    #[test]
    fn implausible_sizes_are_told() {
        let payload = payload_size(10).unwrap();
        assert!(!plausible_size(10, payload));
        assert!(plausible_size(10, payload + 200));
        assert!(!plausible_size(10, payload + MAX_HEADER_BYTES + 1));
        assert!(!plausible_size(u64::MAX, 5));
    }
}
