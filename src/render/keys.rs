//! The spray keypair: generated fresh (ECDSA P-256: FIPS-mode sshd refuses ed25519) or the
//! public half of one given, both by OpenSSH's ssh-keygen.

use anyhow::{Context, Result, bail};
use std::path::Path;

/// A fresh ECDSA P-256 keypair (FIPS-mode sshd refuses ed25519), by ssh-keygen.
pub fn generate_keypair() -> Result<(String, String)> {
    let dir = std::env::temp_dir().join(format!("etcd-backup-render-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    crate::files::ensure_private_dir(&dir)?;
    let key = dir.join("spray_key");
    let result = (|| {
        let out = std::process::Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ecdsa",
                "-b",
                "256",
                "-N",
                "",
                "-C",
                "etcd-backup-spray",
                "-f",
            ])
            .arg(&key)
            .output()
            .context("cannot run ssh-keygen (OpenSSH) to generate the spray key")?;
        if !out.status.success() {
            bail!(
                "ssh-keygen failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok((
            std::fs::read_to_string(&key)?,
            std::fs::read_to_string(key.with_extension("pub"))?,
        ))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The public half of an existing private key, by ssh-keygen.
pub fn public_key_of(private: &Path) -> Result<String> {
    let out = std::process::Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(private)
        .output()
        .context("cannot run ssh-keygen (OpenSSH)")?;
    if !out.status.success() {
        bail!(
            "cannot read the public key of '{}': {}",
            private.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
