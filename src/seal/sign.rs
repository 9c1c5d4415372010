//! Signatures of sets: SSH signatures (OpenSSH's `SSHSIG`, Ed25519, SHA-512) in the namespace
//! `etcd-backup`, so that anyone can check one with `ssh-keygen -Y verify` and an
//! `allowed_signers` line, without our binary. OpenSSH is on every RHEL and CoreOS node and on
//! an administrator's workstation; minisign is not.

use ssh_key::{PrivateKey, PublicKey, SshSig};

/// The namespace every signature of ours is made in (`ssh-keygen -Y verify -n etcd-backup`):
/// a signature made for something else (a git commit, a file) never passes as ours.
pub const NAMESPACE: &str = "etcd-backup";
/// A signature file beside what it signs: `manifest.json.sig`, `seal.json.sig`.
pub const SUFFIX: &str = ".sig";
/// An armored Ed25519 SSH signature is about 300 bytes; anything larger is not one.
pub const SIGNATURE_MAX_BYTES: u64 = 4 << 10;

/// Signs `message`: the armored signature (`-----BEGIN SSH SIGNATURE-----`).
pub fn sign(key: &PrivateKey, message: &[u8]) -> anyhow::Result<String> {
    let signature = key
        .sign(NAMESPACE, ssh_key::HashAlg::Sha512, message)
        .map_err(|e| anyhow::anyhow!("cannot sign: {e}"))?;
    signature
        .to_pem(ssh_key::LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("cannot write the signature: {e}"))
}

/// What a signature says of a message, against the trusted signers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Made by this trusted signer (its fingerprint).
    Signed(String),
    Unsigned,
    /// A valid signature by a key that is not trusted (its fingerprint).
    Untrusted(String),
    /// Not a signature of this message: malformed, another namespace, or forged.
    Invalid(String),
}

impl Verdict {
    /// The verdict as a refusal, naming `what` (a set) and the key, or `None` when it is signed
    /// by a trusted signer.
    pub fn refusal(&self, what: &str) -> Option<String> {
        match self {
            Verdict::Signed(_) => None,
            Verdict::Unsigned => Some(format!("{what} is not signed (require_signature)")),
            Verdict::Untrusted(key) => Some(format!(
                "{what} is signed by {key}, which is not among [seal] signers"
            )),
            Verdict::Invalid(why) => Some(format!("{what} has a bad signature: {why}")),
        }
    }
}

impl Verdict {
    /// What is wrong with `what` for a node that requires signatures or not: a signature that
    /// does not verify always; no signature, or a stranger's, when they are `required`.
    pub fn problem(&self, required: bool, what: &str) -> Option<String> {
        match self {
            Verdict::Signed(_) => None,
            Verdict::Invalid(_) => self.refusal(what),
            _ if required => self.refusal(what),
            _ => None,
        }
    }
}

/// Judges `signature` (the bytes of a signature file, if there is one) of `message`.
pub fn check(signers: &[PublicKey], message: &[u8], signature: Option<&[u8]>) -> Verdict {
    let Some(signature) = signature else {
        return Verdict::Unsigned;
    };
    if signature.len() as u64 > SIGNATURE_MAX_BYTES {
        return Verdict::Invalid(format!(
            "{} bytes, more than a signature takes",
            signature.len()
        ));
    }
    let parsed = match SshSig::from_pem(signature) {
        Ok(s) => s,
        Err(e) => return Verdict::Invalid(format!("not an SSH signature: {e}")),
    };
    if parsed.namespace() != NAMESPACE {
        return Verdict::Invalid(format!(
            "made for namespace '{}', not '{NAMESPACE}'",
            parsed.namespace()
        ));
    }
    let key = PublicKey::from(parsed.public_key().clone());
    let print = super::keys::fingerprint(&key);
    if let Err(e) = key.verify(NAMESPACE, message, &parsed) {
        return Verdict::Invalid(format!("it does not verify with {print}: {e}"));
    }
    // Trust is by key material, whatever comment a line carries.
    if signers.iter().any(|s| s.key_data() == key.key_data()) {
        Verdict::Signed(print)
    } else {
        Verdict::Untrusted(print)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PrivateKey {
        PrivateKey::random(&mut ssh_key::rand_core::OsRng, ssh_key::Algorithm::Ed25519).unwrap()
    }

    #[test]
    fn verdicts() {
        let (ours, theirs) = (key(), key());
        let signers = [ours.public_key().clone()];
        let message = b"{\"id\": \"x\"}\n";
        let signed = sign(&ours, message).unwrap();
        assert!(signed.starts_with("-----BEGIN SSH SIGNATURE-----"));
        assert!(matches!(
            check(&signers, message, Some(signed.as_bytes())),
            Verdict::Signed(_)
        ));
        assert_eq!(check(&signers, message, None), Verdict::Unsigned);
        let stranger = sign(&theirs, message).unwrap();
        assert_eq!(
            check(&signers, message, Some(stranger.as_bytes())),
            Verdict::Untrusted(super::super::keys::fingerprint(theirs.public_key()))
        );
        assert!(matches!(
            check(&signers, b"another message", Some(signed.as_bytes())),
            Verdict::Invalid(_)
        ));
        let other_namespace = ours
            .sign("file", ssh_key::HashAlg::Sha512, message)
            .unwrap()
            .to_pem(ssh_key::LineEnding::LF)
            .unwrap();
        let verdict = check(&signers, message, Some(other_namespace.as_bytes()));
        assert!(
            matches!(&verdict, Verdict::Invalid(why) if why.contains("namespace 'file'")),
            "{verdict:?}"
        );
        assert!(matches!(
            check(&signers, message, Some(&[b'x'; 5000])),
            Verdict::Invalid(_)
        ));
        assert!(matches!(
            check(&signers, message, Some(b"garbage")),
            Verdict::Invalid(_)
        ));
        assert!(
            Verdict::Unsigned
                .refusal("set 'x'")
                .unwrap()
                .contains("set 'x' is not signed")
        );
    }
}
