//! `render`: the MachineConfig that installs etcd-backup on the master pool (Ignition 3.2.0,
//! accepted by every supported OpenShift), and the OpenShift 4.17+ node disruption policy that
//! lets changes to it restart timers instead of rebooting masters.
//!
//! The YAML is written by hand: strings as double-quoted scalars with JSON escapes (valid YAML),
//! unit files as literal blocks so that the object stays readable in `oc get -o yaml`.

use anyhow::{Context, Result, bail};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

/// etcd refuses requests over 1.5 MiB and the rendered master config holds every
/// MachineConfig together: this one must stay small.
pub const MACHINECONFIG_BUDGET_BYTES: usize = 768 << 10;
pub const BINARY_PATH: &str = "/usr/local/bin/etcd-backup";
pub const CONFIG_DIR: &str = "/etc/etcd-backup";
pub const RECEIVE_COMMAND: &str = "sudo -n /usr/local/bin/etcd-backup receive";
/// Units shipped, and whether each is enabled (timers are; services are started by them).
pub const UNITS: [(&str, &str, bool); 4] = [
    (
        "etcd-backup.service",
        include_str!("../systemd/etcd-backup.service"),
        false,
    ),
    (
        "etcd-backup.timer",
        include_str!("../systemd/etcd-backup.timer"),
        true,
    ),
    (
        "etcd-backup-spray.service",
        include_str!("../systemd/etcd-backup-spray.service"),
        false,
    ),
    (
        "etcd-backup-spray.timer",
        include_str!("../systemd/etcd-backup-spray.timer"),
        true,
    ),
];

/// What goes into the MachineConfig.
pub struct Inputs<'a> {
    pub name: &'a str,
    pub binary: &'a [u8],
    pub config_toml: &'a str,
    /// When absent, a drop-in sets `host_key_policy = "accept-new"`: the peers' host keys are
    /// not known before the rollout.
    pub known_hosts: Option<&'a str>,
    pub spray_private_key: &'a str,
    pub spray_public_key: &'a str,
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// An Ignition data URL of `bytes`, gzip-compressed (declared with `compression: gzip`).
fn gzip_data_url(bytes: &[u8]) -> String {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).expect("writing to memory");
    let gz = encoder.finish().expect("writing to memory");
    format!("data:;base64,{}", base64(&gz))
}

/// A YAML double-quoted scalar (JSON string escapes are YAML escapes).
fn quoted(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

/// A YAML literal block at `indent` spaces.
fn literal_block(text: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::from("|\n");
    for line in text.lines() {
        if line.is_empty() {
            out.push('\n');
        } else {
            let _ = writeln!(out, "{pad}{line}");
        }
    }
    out
}

/// The string the cluster-etcd-operator marks its own files with; the etcd pod deletes files in
/// /usr/local/bin that carry it. Kept reversed so that this binary does not contain it (split
/// literals do not help: the compiler lays them out side by side).
fn etcd_operator_marker() -> Vec<u8> {
    "rotarepo-dcte-retsulc yb detaerC ###"
        .bytes()
        .rev()
        .collect()
}

pub fn machineconfig(inputs: &Inputs<'_>) -> Result<String> {
    let marker = etcd_operator_marker();
    if inputs
        .binary
        .windows(marker.len())
        .any(|w| w == marker.as_slice())
    {
        bail!(
            "the binary contains the cluster-etcd-operator marker string: the etcd pod would delete it from /usr/local/bin"
        );
    }
    let mut files: Vec<(String, u32, String, bool)> = vec![
        (
            BINARY_PATH.into(),
            0o755,
            gzip_data_url(inputs.binary),
            true,
        ),
        (
            format!("{CONFIG_DIR}/config.toml"),
            0o600,
            gzip_data_url(inputs.config_toml.as_bytes()),
            true,
        ),
        (
            format!("{CONFIG_DIR}/spray_key"),
            0o600,
            gzip_data_url(inputs.spray_private_key.as_bytes()),
            true,
        ),
    ];
    match inputs.known_hosts {
        Some(known_hosts) => files.push((format!("{CONFIG_DIR}/known_hosts"), 0o600, gzip_data_url(known_hosts.as_bytes()), true)),
        None => files.push((
            format!("{CONFIG_DIR}/config.d/50-host-key-policy.toml"),
            0o600,
            gzip_data_url(
                b"# Rendered by etcd-backup: the peers' host keys are not known before the rollout.\n\
                  # Pin each on first contact, refuse any later change.\n[spray]\nhost_key_policy = \"accept-new\"\n",
            ),
            true,
        )),
    }
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# Rendered by etcd-backup {} (render machineconfig).",
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(
        y,
        "# Installs on every master: {BINARY_PATH}, {CONFIG_DIR}/ (config, spray key{}),",
        if inputs.known_hosts.is_some() {
            ", known_hosts"
        } else {
            ""
        }
    );
    let _ = writeln!(
        y,
        "# the units etcd-backup(.service|.timer) and etcd-backup-spray(.service|.timer) with both"
    );
    let _ = writeln!(
        y,
        "# timers enabled, and a key for user core that can only run `{RECEIVE_COMMAND}`."
    );
    y.push_str(
        "apiVersion: machineconfiguration.openshift.io/v1\nkind: MachineConfig\nmetadata:\n",
    );
    let _ = writeln!(y, "  name: {}", quoted(inputs.name));
    y.push_str("  labels:\n    machineconfiguration.openshift.io/role: master\nspec:\n  config:\n    ignition:\n      version: 3.2.0\n");
    y.push_str("    passwd:\n      users:\n      - name: core\n        sshAuthorizedKeys:\n");
    let _ = writeln!(
        y,
        "        - {}",
        quoted(&format!(
            "restrict,command=\"{RECEIVE_COMMAND}\" {}",
            inputs.spray_public_key.trim()
        ))
    );
    y.push_str("    storage:\n      directories:\n");
    for dir in [CONFIG_DIR.to_string(), format!("{CONFIG_DIR}/config.d")] {
        let _ = writeln!(
            y,
            "      - path: {}\n        mode: {}\n        overwrite: true\n        user:\n          name: root\n        group:\n          name: root",
            quoted(&dir),
            0o700
        );
    }
    y.push_str("      files:\n");
    for (path, mode, source, gzip) in &files {
        let _ = writeln!(
            y,
            "      - path: {}\n        mode: {mode}\n        overwrite: true",
            quoted(path)
        );
        y.push_str("        user:\n          name: root\n        group:\n          name: root\n        contents:\n");
        if *gzip {
            y.push_str("          compression: gzip\n");
        }
        let _ = writeln!(y, "          source: {}", quoted(source));
    }
    y.push_str("    systemd:\n      units:\n");
    for (name, contents, enabled) in UNITS {
        let _ = writeln!(y, "      - name: {name}\n        enabled: {enabled}");
        let _ = write!(y, "        contents: {}", literal_block(contents, 10));
    }
    Ok(y)
}

/// The OpenShift 4.17+ `MachineConfiguration` snippet: changes to our files need nothing (the
/// next timer run uses them), changes to our units reload systemd and restart the timers.
pub fn node_disruption_policy() -> String {
    let mut y = String::from(
        "# Rendered by etcd-backup (render node-disruption-policy), for OpenShift 4.17 and later.\n\
         # Merge into the existing policy: `oc edit machineconfiguration cluster` (a merge patch\n\
         # replaces whole lists, including policies of your own).\n\
         apiVersion: operator.openshift.io/v1\nkind: MachineConfiguration\nmetadata:\n  name: cluster\n\
         spec:\n  nodeDisruptionPolicy:\n    files:\n",
    );
    for path in [
        BINARY_PATH.to_string(),
        format!("{CONFIG_DIR}/config.toml"),
        format!("{CONFIG_DIR}/config.d"),
        format!("{CONFIG_DIR}/spray_key"),
        format!("{CONFIG_DIR}/known_hosts"),
    ] {
        let _ = writeln!(
            y,
            "    - path: {}\n      actions:\n      - type: None",
            quoted(&path)
        );
    }
    y.push_str("    units:\n");
    for (name, _, enabled) in UNITS {
        let _ = writeln!(
            y,
            "    - name: {name}\n      actions:\n      - type: DaemonReload"
        );
        if enabled {
            let _ = writeln!(
                y,
                "      - type: Restart\n        restart:\n          serviceName: {name}"
            );
        }
    }
    y.push_str("    sshkey:\n      actions:\n      - type: None\n");
    y
}

/// A fresh ECDSA P-256 keypair (FIPS-mode sshd refuses ed25519), by ssh-keygen.
pub fn generate_keypair() -> Result<(String, String)> {
    let dir = std::env::temp_dir().join(format!("etcd-backup-render-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    crate::store::ensure_private_dir(&dir)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain}");
        }
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn this_binary_does_not_carry_the_operator_marker() {
        let marker = etcd_operator_marker();
        let exe = std::fs::read("/proc/self/exe").unwrap();
        assert!(!exe.windows(marker.len()).any(|w| w == marker.as_slice()));
        let mut poisoned = b"ELF...".to_vec();
        poisoned.extend_from_slice(&marker);
        let inputs = Inputs {
            name: "x",
            binary: &poisoned,
            config_toml: "",
            known_hosts: None,
            spray_private_key: "",
            spray_public_key: "",
        };
        assert!(
            machineconfig(&inputs)
                .unwrap_err()
                .to_string()
                .contains("marker")
        );
    }

    #[test]
    fn quoting_survives_hostile_text() {
        assert_eq!(quoted("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
        assert_eq!(literal_block("a\n\n  b\n", 4), "|\n    a\n\n      b\n");
    }
}
