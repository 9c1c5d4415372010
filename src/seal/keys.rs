//! The keys of sealed sets: age X25519 recipients (public, on the masters) and their identities
//! (private, kept away from the masters), and the cluster signing key (an OpenSSH Ed25519 key,
//! on the masters only) with its public half, a trusted signer.

use anyhow::{Context, Result, bail, ensure};
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

/// An identity or signing key file is a few hundred bytes; anything larger is not one.
const KEY_FILE_MAX_BYTES: u64 = 64 << 10;

/// What `keygen` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// An age X25519 identity: sets are sealed to its public recipient (`age1…`).
    Recipient,
    /// The cluster signing key (OpenSSH Ed25519): its public line is a trusted signer.
    Signing,
}

/// An age recipient as the config names it: `age1…` (X25519).
pub fn parse_recipient(text: &str) -> Result<age::x25519::Recipient, String> {
    age::x25519::Recipient::from_str(text.trim()).map_err(|e| {
        format!("'{text}' is not an age X25519 recipient (age1…, what `etcd-backup keygen` or `age-keygen` prints): {e}")
    })
}

/// A trusted signer as the config names it: an OpenSSH `ssh-ed25519 AAAA… [comment]` line.
pub fn parse_signer(text: &str) -> Result<ssh_key::PublicKey, String> {
    let key = ssh_key::PublicKey::from_openssh(text.trim()).map_err(|e| {
        format!("'{text}' is not an OpenSSH public key line (ssh-ed25519 AAAA…, what `etcd-backup keygen --signing` prints): {e}")
    })?;
    if key.algorithm() != ssh_key::Algorithm::Ed25519 {
        return Err(format!(
            "signer '{text}' is a {} key: signing keys are Ed25519",
            key.algorithm()
        ));
    }
    Ok(key)
}

/// How a signer is named in messages: its SHA-256 fingerprint, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &ssh_key::PublicKey) -> String {
    key.fingerprint(ssh_key::HashAlg::Sha256).to_string()
}

/// Whether one of `identities` is among `recipients` (what a record says a file was sealed
/// to): else opening it is no check of the file, only of the identities given.
pub fn any_recipient(identities: &[age::x25519::Identity], recipients: &[String]) -> bool {
    identities
        .iter()
        .any(|i| recipients.contains(&i.to_public().to_string()))
}

/// Makes a new key of `kind` into `out` (created, never overwritten, owner-only, no link
/// followed) and returns its public part as the config takes it.
pub fn generate(kind: KeyKind, out: &Path) -> Result<String> {
    let (secret, public) = match kind {
        KeyKind::Recipient => {
            use age::secrecy::ExposeSecret;
            let identity = age::x25519::Identity::generate();
            let public = identity.to_public().to_string();
            let text = format!(
                "# created: {}\n# public key: {public}\n{}\n",
                chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ"),
                identity.to_string().expose_secret()
            );
            (zeroize::Zeroizing::new(text), public)
        }
        KeyKind::Signing => {
            let mut key = ssh_key::PrivateKey::random(
                &mut ssh_key::rand_core::OsRng,
                ssh_key::Algorithm::Ed25519,
            )
            .context("cannot make an Ed25519 key")?;
            key.set_comment("etcd-backup signing key");
            let public = key
                .public_key()
                .to_openssh()
                .context("cannot write the public key")?;
            let text = key
                .to_openssh(ssh_key::LineEnding::LF)
                .context("cannot write the private key")?;
            (zeroize::Zeroizing::new(text.to_string()), public)
        }
    };
    let mut file = crate::files::create_private(out)?;
    file.write_all(secret.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write '{}'", out.display()))?;
    Ok(public)
}

/// Reads a private key file: regular, not a link, owner-only, bounded.
fn read_private(path: &Path, what: &str) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    use std::os::unix::fs::PermissionsExt;
    let file = crate::files::open_regular(path)
        .with_context(|| format!("cannot open the {what} '{}'", path.display()))?;
    let mode = file.metadata()?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(crate::failure::final_error(format!(
            "the {what} '{}' is accessible by group or others (mode {mode:04o}): refusing to use it (chmod 600)",
            path.display()
        )));
    }
    let bytes = crate::files::read_regular(path, KEY_FILE_MAX_BYTES)
        .with_context(|| format!("cannot read the {what} '{}'", path.display()))?;
    Ok(zeroize::Zeroizing::new(bytes))
}

/// The cluster signing key from `path` (an unencrypted OpenSSH Ed25519 private key).
pub fn load_signing_key(path: &Path) -> Result<ssh_key::PrivateKey> {
    let bytes = read_private(path, "signing key")?;
    let key = ssh_key::PrivateKey::from_openssh(&*bytes)
        .map_err(|e| anyhow::anyhow!("'{}' is not an OpenSSH private key: {e}", path.display()))?;
    ensure!(
        key.algorithm() == ssh_key::Algorithm::Ed25519,
        "the signing key '{}' is a {} key: signing keys are Ed25519 (etcd-backup keygen --signing)",
        path.display(),
        key.algorithm()
    );
    ensure!(
        !key.is_encrypted(),
        "the signing key '{}' is protected by a passphrase: a timer cannot type it",
        path.display()
    );
    Ok(key)
}

/// The age X25519 identities in the files at `paths` (what `age-keygen` or `keygen` wrote:
/// `AGE-SECRET-KEY-1…` lines, `#` comments).
pub fn load_identities(paths: &[std::path::PathBuf]) -> Result<Vec<age::x25519::Identity>> {
    let mut identities = Vec::new();
    for path in paths {
        let bytes = read_private(path, "identity file")?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| anyhow::anyhow!("identity file '{}' is not text", path.display()))?;
        let before = identities.len();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let identity = age::x25519::Identity::from_str(line).map_err(|_| {
                anyhow::anyhow!(
                    "identity file '{}', line {}: not an age X25519 identity (AGE-SECRET-KEY-1…)",
                    path.display(),
                    n + 1
                )
            })?;
            identities.push(identity);
        }
        if identities.len() == before {
            bail!("identity file '{}' holds no identity", path.display());
        }
    }
    Ok(identities)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_back_and_match_their_public_part() {
        let dir = tempfile::tempdir().unwrap();
        let identity = dir.path().join("identity.txt");
        let recipient = generate(KeyKind::Recipient, &identity).unwrap();
        let loaded = load_identities(std::slice::from_ref(&identity)).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].to_public().to_string(), recipient);
        assert!(parse_recipient(&recipient).is_ok());

        let signing = dir.path().join("signing_key");
        let signer = generate(KeyKind::Signing, &signing).unwrap();
        let key = load_signing_key(&signing).unwrap();
        assert_eq!(key.public_key().to_openssh().unwrap(), signer);
        assert!(parse_signer(&signer).is_ok());

        use std::os::unix::fs::PermissionsExt;
        for path in [&identity, &signing] {
            let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        // Never over an existing file.
        assert!(generate(KeyKind::Signing, &signing).is_err());
    }

    #[test]
    fn keys_others_can_read_or_of_the_wrong_kind_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let signing = dir.path().join("signing_key");
        generate(KeyKind::Signing, &signing).unwrap();
        std::fs::set_permissions(&signing, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = load_signing_key(&signing).unwrap_err().to_string();
        assert!(error.contains("group or others"), "{error}");
        std::fs::set_permissions(&signing, std::fs::Permissions::from_mode(0o600)).unwrap();
        // A signing key is no identity file.
        let error = load_identities(&[signing]).err().unwrap().to_string();
        assert!(
            error.contains("line 1: not an age X25519 identity"),
            "{error}"
        );
        assert!(parse_recipient("age1notarecipient").is_err());
        assert!(parse_signer("ssh-rsa AAAA").is_err());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("signing_key"), &link).unwrap();
        assert!(load_signing_key(&link).is_err());
    }
}
