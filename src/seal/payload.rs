//! The payload of an age file (age-encryption.org/v1, "STREAM"), decrypted with the system
//! OpenSSL: its ChaCha20-Poly1305 ran at 3.8 GB/s on the lab's CPU against ~1.1 GB/s for the
//! pure-Rust one the `age` crate uses, and a sealed fetch is bound by it. The header — which
//! identity opens it, the file key, the header's MAC — stays the `age` crate's; this module
//! only takes the file key it yields.
//!
//! From the age specification: the payload key is HKDF-SHA-256 of the file key, with the 16-byte
//! nonce after the header as salt and `payload` as info; the plaintext is cut into 64 KiB
//! chunks, each sealed with ChaCha20-Poly1305 under the nonce `counter (11 bytes, big-endian)
//! || last (1 byte: 1 for the final chunk)`, no associated data; only the final chunk may be
//! shorter, and it is empty only when the whole plaintext is.

use openssl::symm::{Cipher, Crypter, Mode};
use std::io::{self, BufRead, Read};
use zeroize::Zeroizing;

/// A chunk's plaintext (the last may be shorter), its tag, the payload nonce after the header.
pub const CHUNK: usize = 64 << 10;
pub const TAG: usize = 16;
pub const NONCE: usize = 16;
/// The most an age header of ours may take: a stanza per recipient (about 100 bytes each), a
/// random "grease" stanza (at most ~200), the MAC line.
pub const MAX_HEADER_BYTES: u64 = 64 << 10;

/// The payload of `plain` bytes once sealed: the nonce, the plaintext and a tag per chunk (an
/// empty file is one empty chunk). `None` past 2^64.
pub fn payload_size(plain: u64) -> Option<u64> {
    (TAG as u64 * plain.div_ceil(CHUNK as u64).max(1))
        .checked_add(NONCE as u64)?
        .checked_add(plain)
}

/// Whether `sealed` bytes can be the age file of `plain` bytes: the payload and a header of at
/// most [`MAX_HEADER_BYTES`] (the header's length varies with the recipients and the grease).
pub fn plausible_size(plain: u64, sealed: u64) -> bool {
    payload_size(plain)
        .and_then(|payload| sealed.checked_sub(payload))
        .is_some_and(|header| header > 0 && header <= MAX_HEADER_BYTES)
}

/// The payload key of `file_key` and the payload `nonce`.
pub fn payload_key(file_key: &[u8], nonce: &[u8; NONCE]) -> io::Result<Zeroizing<[u8; 32]>> {
    use openssl::pkey::Id;
    use openssl::pkey_ctx::PkeyCtx;
    let mut key = Zeroizing::new([0u8; 32]);
    let derived = (|| -> Result<(), openssl::error::ErrorStack> {
        let mut ctx = PkeyCtx::new_id(Id::HKDF)?;
        ctx.derive_init()?;
        ctx.set_hkdf_md(openssl::md::Md::sha256())?;
        ctx.set_hkdf_key(file_key)?;
        ctx.set_hkdf_salt(nonce)?;
        ctx.add_hkdf_info(b"payload")?;
        ctx.derive(Some(&mut key[..]))?;
        Ok(())
    })();
    derived.map_err(io::Error::other)?;
    Ok(key)
}

/// Reads the plaintext of a payload from `sealed` (positioned just after the nonce).
pub struct Payload<R> {
    sealed: R,
    key: Zeroizing<[u8; 32]>,
    counter: u128,
    /// The sealed chunk being read, then its plaintext (`plain[..len]`, `taken` of it read).
    chunk: Vec<u8>,
    plain: Zeroizing<Vec<u8>>,
    len: usize,
    taken: usize,
    done: bool,
}

impl<R: BufRead> Payload<R> {
    pub fn new(sealed: R, key: Zeroizing<[u8; 32]>) -> Payload<R> {
        Payload {
            sealed,
            key,
            counter: 0,
            chunk: vec![0; CHUNK + TAG],
            plain: Zeroizing::new(vec![0; CHUNK + TAG]),
            len: 0,
            taken: 0,
            done: false,
        }
    }

    /// Reads and opens the next chunk into `plain`.
    fn next_chunk(&mut self) -> io::Result<()> {
        let mut filled = 0;
        while filled < self.chunk.len() {
            match self.sealed.read(&mut self.chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // The final chunk is the one nothing follows.
        let last = self.sealed.fill_buf()?.is_empty();
        let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
        if filled < TAG || (filled == TAG && self.counter > 0) {
            return Err(bad("the age payload is truncated"));
        }
        if !last && filled < self.chunk.len() {
            return Err(bad("a short chunk before the end of the age payload"));
        }
        if self.counter >= 1 << 88 {
            return Err(bad("the age payload has too many chunks"));
        }
        let mut nonce = [0u8; 12];
        nonce[..11].copy_from_slice(&self.counter.to_be_bytes()[5..]);
        nonce[11] = u8::from(last);
        let (sealed, tag) = self.chunk[..filled].split_at(filled - TAG);
        let opened = (|| -> Result<usize, openssl::error::ErrorStack> {
            let cipher = Cipher::chacha20_poly1305();
            let mut crypter = Crypter::new(cipher, Mode::Decrypt, &self.key[..], Some(&nonce))?;
            crypter.set_tag(tag)?;
            let n = crypter.update(sealed, &mut self.plain)?;
            Ok(n + crypter.finalize(&mut self.plain[n..])?)
        })();
        let len = opened.map_err(|_| {
            bad(if last {
                "an age payload chunk does not open (damaged, or the file was cut at a chunk)"
            } else {
                "an age payload chunk does not open (damaged)"
            })
        })?;
        // An empty final chunk stands only for an empty file.
        if last && len == 0 && self.counter > 0 {
            return Err(bad("an empty final chunk after others in the age payload"));
        }
        self.counter += 1;
        self.len = len;
        self.taken = 0;
        self.done = last;
        Ok(())
    }
}

impl<R: BufRead> Read for Payload<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.taken == self.len {
            if self.done {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = buf.len().min(self.len - self.taken);
        buf[..n].copy_from_slice(&self.plain[self.taken..self.taken + n]);
        self.taken += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implausible_sizes_are_told() {
        let payload = payload_size(10).unwrap();
        assert!(!plausible_size(10, payload));
        assert!(plausible_size(10, payload + 200));
        assert!(!plausible_size(10, payload + MAX_HEADER_BYTES + 1));
        assert!(!plausible_size(u64::MAX, 5));
    }
}
