//! The MachineConfig for the master pool, written from the payload.

use super::payload::{Delivery, Inputs, payload};
use super::{gzip_data_url, literal_block, quoted};
use crate::paths::{BINARY as BINARY_PATH, CONFIG_DIR, RECEIVE_COMMAND};
use anyhow::Result;
use std::fmt::Write as _;

pub fn machineconfig(inputs: &Inputs<'_>) -> Result<String> {
    let payload = payload(inputs)?;
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# Rendered by etcd-backup {} (render machineconfig).",
        crate::VERSION
    );
    let Delivery {
        image,
        binary_sha256,
    } = &inputs.delivery;
    let _ = writeln!(
        y,
        "# Installs on every master: etcd-backup-install.service, which installs {BINARY_PATH}\n\
         # from {image}\n\
         # when the binary there is missing or not sha256 {binary_sha256};"
    );
    let _ = writeln!(
        y,
        "# {CONFIG_DIR}/ (config, spray key{}); the units etcd-backup(.service|.timer) and\n\
         # etcd-backup-spray(.service|.timer) with both timers enabled; and a key for user core that\n\
         # can only run `{RECEIVE_COMMAND}`.",
        if inputs.known_hosts.is_some() {
            ", known_hosts"
        } else {
            ""
        }
    );
    y.push_str(
        "apiVersion: machineconfiguration.openshift.io/v1\nkind: MachineConfig\nmetadata:\n",
    );
    let _ = writeln!(y, "  name: {}", quoted(inputs.name));
    y.push_str("  labels:\n    machineconfiguration.openshift.io/role: master\nspec:\n  config:\n    ignition:\n      version: 3.2.0\n");
    y.push_str("    passwd:\n      users:\n      - name: core\n        sshAuthorizedKeys:\n");
    let _ = writeln!(y, "        - {}", quoted(&payload.authorized_key));
    y.push_str("    storage:\n      directories:\n");
    for dir in &payload.directories {
        let _ = writeln!(
            y,
            "      - path: {}\n        mode: {}\n        overwrite: true\n        user:\n          name: root\n        group:\n          name: root",
            quoted(dir),
            0o700
        );
    }
    y.push_str("      files:\n");
    for file in &payload.files {
        let _ = writeln!(
            y,
            "      - path: {}\n        mode: {}\n        overwrite: true",
            quoted(&file.path),
            file.mode
        );
        y.push_str("        user:\n          name: root\n        group:\n          name: root\n        contents:\n");
        y.push_str("          compression: gzip\n");
        let _ = writeln!(
            y,
            "          source: {}",
            quoted(&gzip_data_url(&file.contents))
        );
    }
    y.push_str("    systemd:\n      units:\n");
    for unit in &payload.units {
        let _ = writeln!(
            y,
            "      - name: {}\n        enabled: {}",
            unit.name, unit.enabled
        );
        let _ = write!(y, "        contents: {}", literal_block(unit.contents, 10));
    }
    Ok(y)
}
