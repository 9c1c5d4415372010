//! A peer master's `receive`: over SSH (libssh2), whose key for user core may only run
//! `sudo -n /usr/local/bin/etcd-backup receive`, or over mutual TLS to its `receive --listen`
//! (Pod Mode: no SSH key reaches the masters; the receiver's certificate must name the peer's
//! node name). Peers come from etcd.env (readable while the API server is down) and
//! `spray.peers`; never this node.

use super::Target;
use crate::config::{PeerAddr, Settings, SpraySettings, TlsSettings, Transport};
use crate::protocol::send::{OpenSet, PushStats, push};
use crate::protocol::{Conn, Stream};
use anyhow::{Context, Result, bail};
use std::collections::BTreeSet;

/// How a peer is reached.
#[derive(Debug, Clone, PartialEq)]
pub enum Link {
    Ssh(SpraySettings),
    Tls(SpraySettings, TlsSettings),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    /// The node name (from etcd.env; a TLS receiver's certificate must carry it) or the
    /// address as configured.
    pub name: String,
    pub addr: PeerAddr,
    pub link: Link,
    /// This node's name, which the sender says in its hello.
    pub sender: String,
}

impl Peer {
    /// A peer at `addr`, reached over the configured transport; over TLS, an etcd.env peer or
    /// a peer given without a port is reached on the receivers' port.
    pub fn new(name: String, mut addr: PeerAddr, settings: &Settings) -> Peer {
        let link = match settings.spray.transport {
            Transport::Ssh => Link::Ssh(settings.spray.clone()),
            Transport::Tls => {
                if addr.port == crate::config::SSH_PORT {
                    addr.port = settings.spray.tls_port;
                }
                Link::Tls(settings.spray.clone(), settings.tls.clone())
            }
        };
        Peer {
            name,
            addr,
            link,
            sender: settings.node_name.clone(),
        }
    }

    fn over<S: Stream>(
        &self,
        stream: S,
        compress: bool,
        sets: &[OpenSet],
    ) -> Result<(PushStats, S)> {
        let mut conn = Conn::new(stream, compress);
        let stats = push(&mut conn, &self.sender, sets)?;
        Ok((stats, conn.into_inner()))
    }
}

impl Target for Peer {
    fn id(&self) -> String {
        match self.link {
            Link::Ssh(_) => format!("ssh:{}", self.name),
            Link::Tls(..) => format!("tls:{}", self.name),
        }
    }

    fn describe(&self) -> String {
        match (&self.link, self.name == self.addr.to_string()) {
            (_, true) => self.name.clone(),
            (Link::Ssh(_), false) => format!("{} ({})", self.name, self.addr),
            (Link::Tls(..), false) => format!("{} ({}, tls)", self.name, self.addr),
        }
    }

    /// A peer verifies what it receives and repairs its own damaged copies when a sender offers
    /// them again: `damaged` is not needed.
    fn push(&self, sets: &[OpenSet], _damaged: &BTreeSet<String>) -> Result<PushStats> {
        match &self.link {
            Link::Ssh(spray) => {
                let stream = crate::transport::ssh::connect(&self.addr, spray)?;
                let (stats, mut stream) = self.over(stream, spray.compress, sets)?;
                let status = stream.finish().context("closing the channel")?;
                if status != 0 {
                    bail!("the remote command exited with status {status}");
                }
                Ok(stats)
            }
            Link::Tls(spray, tls) => {
                let stream = crate::transport::tls::connect(&self.name, &self.addr, spray, tls)?;
                let (stats, mut stream) = self.over(stream, spray.compress, sets)?;
                // A clean close, so that the receiver's last read is an end and not a reset.
                let _ = stream.close_write();
                Ok(stats)
            }
        }
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
pub fn peers(settings: &Settings) -> Result<(Vec<Peer>, Vec<String>)> {
    let spray = &settings.spray;
    let own = own_addresses();
    let mut warnings = Vec::new();
    let mut found: Vec<(String, PeerAddr)> = Vec::new();
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
                    found.push((
                        peer.name.clone(),
                        PeerAddr {
                            host: ip.to_string(),
                            port: crate::config::SSH_PORT,
                        },
                    ));
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
        let duplicate = found.iter().any(|(_, a)| a == addr);
        if !is_self && !duplicate {
            found.push((addr.to_string(), addr.clone()));
        }
    }
    let peers = found
        .into_iter()
        .map(|(name, addr)| Peer::new(name, addr, settings))
        .collect();
    Ok((peers, warnings))
}
