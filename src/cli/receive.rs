//! The commands a peer runs: `receive` (hidden: the SSH forced command, or `--listen` for Pod
//! Mode) and `tls-issue` (hidden: what a Pod Mode pod runs at start).

use super::EXIT_OK;
use crate::config::Settings;
use anyhow::Result;
use std::path::Path;

pub fn cmd_receive(settings: &Settings, listen: Option<&str>) -> Result<u8> {
    match listen {
        Some(addr) => crate::receive::listen(settings, addr)?,
        None => {
            let stats = crate::receive::on_stdio(settings)?;
            tracing::debug!(
                sets = stats.committed.len(),
                bytes = stats.data_bytes,
                "receive done"
            );
        }
    }
    Ok(EXIT_OK)
}

pub fn cmd_tls_issue(
    settings: &Settings,
    ca_cert: &Path,
    ca_key: &Path,
    name: Option<&str>,
    out: &Path,
    days: u32,
) -> Result<u8> {
    let name = name.unwrap_or(&settings.node_name);
    let cert = crate::transport::tls::issue_into(ca_cert, ca_key, name, out, days)?;
    println!(
        "issued {}: CN and DNS name {name}, {days} days",
        cert.display()
    );
    Ok(EXIT_OK)
}
