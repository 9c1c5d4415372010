//! `ssh`: a peer master over SSH (libssh2), whose key for user core may only run
//! `sudo -n /usr/local/bin/etcd-backup receive`. Peers come from etcd.env (readable while the
//! API server is down) and `spray.peers`; never this node.

use super::{Target, push_over};
use crate::config::{PeerAddr, Settings};
use crate::protocol::send::{OpenSet, PushStats};
use anyhow::{Context, Result, bail};

#[derive(Debug, Clone, PartialEq)]
pub struct SshPeer {
    /// The node name (from etcd.env) or the address as configured.
    pub name: String,
    pub addr: PeerAddr,
}

impl Target for SshPeer {
    fn id(&self) -> String {
        format!("ssh:{}", self.name)
    }

    fn describe(&self) -> String {
        if self.name == self.addr.to_string() {
            self.name.clone()
        } else {
            format!("{} ({})", self.name, self.addr)
        }
    }

    fn push(&self, settings: &Settings, sets: &[OpenSet]) -> Result<PushStats> {
        let stream = crate::transport::ssh::connect(&self.addr, &settings.spray)?;
        let (stats, mut stream) =
            push_over(stream, settings.spray.compress, &settings.node_name, sets)?;
        let status = stream.finish().context("closing the channel")?;
        if status != 0 {
            bail!("the remote command exited with status {status}");
        }
        Ok(stats)
    }
}

/// This node's own addresses, so that it never sprays to itself.
fn own_addresses() -> Vec<std::net::IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|a| {
            a.as_sockaddr_in()
                .map(|v4| std::net::IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip())))
        })
        .collect()
}

/// etcd.env's masters and the explicit peers, without this node and without duplicates.
pub fn peers(settings: &Settings) -> Result<(Vec<SshPeer>, Vec<String>)> {
    let spray = &settings.spray;
    let own = own_addresses();
    let mut warnings = Vec::new();
    let mut found: Vec<SshPeer> = Vec::new();
    if let Some(path) = &spray.etcd_env {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let env = crate::peers::parse_etcd_env(&text);
                warnings.extend(
                    env.problems
                        .iter()
                        .map(|p| format!("'{}': {p}", path.display())),
                );
                for peer in crate::peers::select_peers(&env.peers, &settings.node_name, &own) {
                    let ip = peer.ip.expect("selected peers have an address");
                    found.push(SshPeer {
                        name: peer.name.clone(),
                        addr: PeerAddr {
                            host: ip.to_string(),
                            port: crate::config::SSH_PORT,
                        },
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                warnings.push(format!(
                    "no etcd.env at '{}': no peers from it",
                    path.display()
                ));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read etcd.env '{}'", path.display()));
            }
        }
    }
    for addr in &spray.peers {
        let is_self = addr
            .host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| own.contains(&ip))
            || addr.host.eq_ignore_ascii_case(&settings.node_name);
        let duplicate = found.iter().any(|p| p.addr == *addr);
        if !is_self && !duplicate {
            found.push(SshPeer {
                name: addr.to_string(),
                addr: addr.clone(),
            });
        }
    }
    Ok((found, warnings))
}
