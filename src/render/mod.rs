//! `render`: the objects that install etcd-backup on OpenShift. The MachineConfig for the master
//! pool (Ignition 3.2.0, accepted by every supported OpenShift) and the OpenShift 4.17+ node
//! disruption policy both come from one [`payload`]: the files and units a master gets.
//!
//! The YAML is written by hand: strings as double-quoted scalars with JSON escapes (valid YAML),
//! unit files as literal blocks so that the object stays readable in `oc get -o yaml`.

pub mod image;
mod keys;
mod machineconfig;
pub mod payload;
mod policy;
mod request;

pub use keys::{generate_keypair, public_key_of};
pub use machineconfig::machineconfig;
pub use payload::{Delivery, Inputs, check_s3_credentials, check_signing_key};
pub use policy::node_disruption_policy;
pub use request::{Rendered, Request, machineconfig_from};

use std::fmt::Write as _;
use std::io::Write as _;

/// What `render machineconfig` says when no `--known-hosts` is given: the masters would pin
/// each other's host keys on first contact, so whoever answers first on a master's address is
/// trusted. The keys can be read through the API (authenticated), not off the network.
pub const ACCEPT_NEW_WARNING: &str = "no --known-hosts: the masters will pin each other's SSH host keys on first contact (host_key_policy = \"accept-new\"), trusting whoever answers first on each address. Collect the keys through the API and pass --known-hosts known_hosts:
  for node in $(oc get nodes -l node-role.kubernetes.io/master -o name); do
    ip=$(oc get \"$node\" -o jsonpath='{.status.addresses[?(@.type==\"InternalIP\")].address}')
    echo \"$ip $(oc debug -q \"$node\" -- chroot /host cat /etc/ssh/ssh_host_ecdsa_key.pub | cut -d' ' -f1,2)\"
  done > known_hosts";

/// The default MachineConfig (binary from a pinned image): config, units, keys, the install
/// unit. A test holds it to this.
pub const IMAGE_MACHINECONFIG_BUDGET_BYTES: usize = 48 << 10;

/// An Ignition data URL of `bytes`, gzip-compressed (declared with `compression: gzip`).
fn gzip_data_url(bytes: &[u8]) -> String {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).expect("writing to memory");
    let gz = encoder.finish().expect("writing to memory");
    format!("data:;base64,{}", crate::hash::base64(&gz))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_binary_does_not_carry_the_operator_marker() {
        let marker = payload::etcd_operator_marker();
        let exe = std::fs::read("/proc/self/exe").unwrap();
        assert!(!exe.windows(marker.len()).any(|w| w == marker.as_slice()));
    }

    #[test]
    fn quoting_survives_hostile_text() {
        assert_eq!(quoted("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
        assert_eq!(literal_block("a\n\n  b\n", 4), "|\n    a\n\n      b\n");
    }
}
