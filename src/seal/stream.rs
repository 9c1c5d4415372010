//! age files as streams: a [`Sealer`] reads a plaintext file and yields its age encryption,
//! hashing both sides as the bytes pass (one read of the plaintext); [`open`] yields the
//! plaintext of an age file. Neither holds more than a chunk or two in memory.

use anyhow::{Context, Result, bail};
use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::rc::Rc;

use super::payload::{CHUNK, MAX_HEADER_BYTES, NONCE, payload_size};

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
            size: header - NONCE as u64 + payload,
            plain: crate::hash::Sha256::new(),
            sealed: Some(crate::hash::Sha256::new()),
            buf: vec![0; CHUNK],
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
/// it was sealed to. `what` names the file in errors. The `age` crate reads the header (bounded
/// by [`MAX_HEADER_BYTES`]), finds the identity that opens it and checks its MAC; the payload is
/// then decrypted with OpenSSL ([`super::payload`]).
pub fn open<'a, R: Read + 'a>(
    sealed: R,
    identities: &'a [age::x25519::Identity],
    what: &str,
) -> Result<Box<dyn Read + 'a>> {
    use std::io::BufRead;
    let mut sealed = io::BufReader::with_capacity(1 << 20, sealed);
    // The header, through its MAC line (`--- `), then the payload's nonce.
    let mut header = Vec::new();
    loop {
        let line = header.len();
        let room = (MAX_HEADER_BYTES + 1).saturating_sub(line as u64);
        let n = (&mut sealed)
            .take(room)
            .read_until(b'\n', &mut header)
            .with_context(|| format!("cannot read {what}"))?;
        if n == 0 || !header.ends_with(b"\n") {
            bail!("{what} is not an age file of ours: its header ends early or runs over 64 KiB");
        }
        if header[line..].starts_with(b"--- ") {
            break;
        }
    }
    let mut nonce = [0u8; super::payload::NONCE];
    sealed
        .read_exact(&mut nonce)
        .map_err(|_| anyhow::anyhow!("{what} is not an age file: it ends after its header"))?;
    header.extend_from_slice(&nonce);
    let decryptor = age::Decryptor::new(&header[..])
        .map_err(|e| anyhow::anyhow!("{what} is not an age file: {e}"))?;
    if decryptor.is_scrypt() {
        bail!("{what} is sealed with a passphrase, not to recipients: not one of ours");
    }
    let capture = Capture {
        identities,
        file_key: std::cell::RefCell::new(None),
    };
    // age checks the header's MAC with the file key before it says yes.
    match decryptor.decrypt(std::iter::once(&capture as &dyn age::Identity)) {
        Ok(_) => {}
        Err(age::DecryptError::NoMatchingKeys) => bail!(
            "none of the {} identities given opens {what}",
            identities.len()
        ),
        Err(e) => bail!("cannot open {what}: {e}"),
    }
    let file_key = capture
        .file_key
        .take()
        .context("the identity that opened the header gave no file key")?;
    let key = super::payload::payload_key(&file_key[..], &nonce)?;
    Ok(Box::new(super::payload::Payload::new(sealed, key)))
}

/// The identities given, as one that keeps the file key it unwraps (for the payload).
struct Capture<'a> {
    identities: &'a [age::x25519::Identity],
    file_key: std::cell::RefCell<Option<zeroize::Zeroizing<[u8; 16]>>>,
}

impl age::Identity for Capture<'_> {
    fn unwrap_stanza(
        &self,
        stanza: &age_core::format::Stanza,
    ) -> Option<Result<age_core::format::FileKey, age::DecryptError>> {
        use age::secrecy::ExposeSecret;
        for identity in self.identities {
            match age::Identity::unwrap_stanza(identity, stanza) {
                Some(Ok(key)) => {
                    *self.file_key.borrow_mut() =
                        Some(zeroize::Zeroizing::new(*key.expose_secret()));
                    return Some(Ok(key));
                }
                Some(Err(e)) => return Some(Err(e)),
                None => {}
            }
        }
        None
    }
}

/// Writes the plaintext of a sealed file read from `sealed` into `dest`: exactly `plain_size`
/// bytes, opened with one of `identities`; the sealed file must be its record's size. Its
/// digest is not taken again here: the plaintext is held to the manifest's digest afterwards
/// (an age file of other bytes cannot pass that), and an identity-less check holds the sealed
/// bytes to the record. `name` names the file in errors.
pub fn open_into(
    sealed: impl Read,
    (record, plain_size): (&super::record::SealedFile, u64),
    identities: &[age::x25519::Identity],
    name: &str,
    dest: &mut impl Write,
) -> Result<()> {
    let what = format!("{name} (sealed to {})", record.recipients.join(", "));
    if identities.is_empty() {
        bail!("{what} is sealed: give --identity FILE");
    }
    let (what, sealed_size) = (what.as_str(), record.size);
    let mut counting = CountingReader {
        inner: sealed.take(sealed_size.saturating_add(1)),
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
    if counting.bytes != sealed_size {
        bail!(
            "{what} holds {} bytes, its seal record says {sealed_size}",
            counting.bytes
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
    use super::super::payload::plausible_size;
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

    /// The payload decrypted with OpenSSL against the `age` crate's own reader: the same bytes,
    /// and what one refuses the other refuses.
    #[test]
    fn openssl_opens_exactly_what_the_age_crate_opens() {
        let identity = age::x25519::Identity::generate();
        let ids = std::slice::from_ref(&identity);
        let by_age = |sealed: &[u8]| -> Result<Vec<u8>, ()> {
            let decryptor = age::Decryptor::new(sealed).map_err(drop)?;
            let mut reader = decryptor
                .decrypt(std::iter::once(&identity as &dyn age::Identity))
                .map_err(drop)?;
            let mut out = Vec::new();
            reader.read_to_end(&mut out).map_err(drop)?;
            Ok(out)
        };
        let by_us = |sealed: &[u8]| -> Result<Vec<u8>, ()> {
            let mut out = Vec::new();
            open(sealed, ids, "x")
                .map_err(drop)?
                .read_to_end(&mut out)
                .map_err(drop)?;
            Ok(out)
        };
        for len in [0usize, 1, 65535, 65536, 65537, 131072, 200_001] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
            let (sealed, _) = seal(&[identity.to_public()], &plain);
            assert_eq!(by_us(&sealed), Ok(plain.clone()), "length {len}");
            assert_eq!(by_age(&sealed), Ok(plain), "length {len}");
            let header = sealed.len() - payload_size(len as u64).unwrap() as usize;
            let mut damaged: Vec<Vec<u8>> = Vec::new();
            // Cut at every chunk boundary and mid-chunk; a byte added; a byte flipped
            // in the payload and in the header.
            for cut in [
                header + 16 + 65536 + 16,
                header + 16 + 100,
                sealed.len() - 1,
            ] {
                if cut < sealed.len() {
                    damaged.push(sealed[..cut].to_vec());
                }
            }
            let mut longer = sealed.clone();
            longer.push(7);
            damaged.push(longer);
            for at in [sealed.len() - 1, header + 20, header / 2] {
                let mut flipped = sealed.clone();
                flipped[at] ^= 1;
                damaged.push(flipped);
            }
            for bad in damaged {
                assert!(
                    by_us(&bad).is_err(),
                    "length {len}: opened {} bytes",
                    bad.len()
                );
                assert!(by_age(&bad).is_err(), "length {len}");
            }
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
    fn open_into_holds_the_sealed_file_and_the_plaintext_to_their_sizes() {
        let identity = age::x25519::Identity::generate();
        let plain = vec![9u8; 70_000];
        let (sealed, size) = seal(&[identity.to_public()], &plain);
        let ids = std::slice::from_ref(&identity);
        let mut out = Vec::new();
        let record = crate::seal::record::SealedFile {
            name: "snapshot_x.db".into(),
            size,
            sha256: String::new(),
            recipients: vec![identity.to_public().to_string()],
        };
        open_into(&sealed[..], (&record, 70_000), ids, "x", &mut out).unwrap();
        assert_eq!(out, plain);
        // A trailing byte, a plaintext of another size: refused.
        let mut longer = sealed.clone();
        longer.push(0);
        let opened = |bytes: &[u8], plain: u64| {
            open_into(bytes, (&record, plain), ids, "x", &mut Vec::new())
        };
        assert!(opened(&longer, 70_000).is_err());
        assert!(opened(&sealed, 69_999).is_err());
        // Without an identity, said as such.
        let error = open_into(&sealed[..], (&record, 70_000), &[], "'x'", &mut Vec::new());
        assert!(format!("{:#}", error.unwrap_err()).contains("give --identity FILE"));
    }
}
