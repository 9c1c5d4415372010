//! A peer master's `receive`: over SSH (libssh2), whose key for user core may only run
//! `sudo -n /usr/local/bin/etcd-backup receive`, or over mutual TLS to its `receive --listen`
//! (Pod Mode: no SSH key reaches the masters; the receiver's certificate must name the peer's
//! node name). Peers come from etcd.env (readable while the API server is down) and
//! `spray.peers`; never this node.

use super::Target;
use crate::config::{PeerAddr, Settings, SpraySettings, TlsSettings, Transport};
use crate::protocol::send::{OpenSet, PushStats, check, push};
use crate::protocol::{Conn, CopyOutcome, Stream};
use crate::verify::Checked;
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
    /// `spray.verify_every`.
    pub verify_every: std::time::Duration,
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
            verify_every: settings.spray.verify_every,
        }
    }

    /// Runs `exchange` over a connection to the peer's receiver, and closes it as the link
    /// wants (an SSH channel's exit status checked, a TLS stream half-closed).
    fn session<E: Exchange>(&self, exchange: E) -> Result<E::Out> {
        match &self.link {
            Link::Ssh(spray) => {
                let stream = crate::transport::ssh::connect(&self.addr, spray)?;
                let mut conn = Conn::new(stream, spray.compress);
                let result = exchange.over(&mut conn)?;
                let status = conn.into_inner().finish().context("closing the channel")?;
                if status != 0 {
                    bail!("the remote command exited with status {status}");
                }
                Ok(result)
            }
            Link::Tls(spray, tls) => {
                let stream = crate::transport::tls::connect(&self.name, &self.addr, spray, tls)?;
                let mut conn = Conn::new(stream, spray.compress);
                let result = exchange.over(&mut conn)?;
                // A clean close, so that the receiver's last read is an end and not a reset.
                let _ = conn.into_inner().close_write();
                Ok(result)
            }
        }
    }
}

/// One exchange with a peer's receiver, whichever the link.
trait Exchange {
    type Out;
    fn over<S: Stream>(self, conn: &mut Conn<S>) -> Result<Self::Out>;
}

/// Offer the sets, send what the peer lacks.
struct Pushing<'a> {
    sender: &'a str,
    sets: &'a [OpenSet],
}

impl Exchange for Pushing<'_> {
    type Out = PushStats;
    fn over<S: Stream>(self, conn: &mut Conn<S>) -> Result<PushStats> {
        push(conn, self.sender, self.sets)
    }
}

/// Ask the peer what its copies of our sets are worth.
struct Checking<'a> {
    sender: &'a str,
    ids: &'a [String],
    deep: bool,
}

impl Exchange for Checking<'_> {
    type Out = Vec<CopyOutcome>;
    fn over<S: Stream>(self, conn: &mut Conn<S>) -> Result<Vec<CopyOutcome>> {
        check(conn, self.sender, self.ids, self.deep)
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
    fn verify_every(&self) -> std::time::Duration {
        self.verify_every
    }

    fn push(&self, sets: &[OpenSet], _damaged: &BTreeSet<String>) -> Result<PushStats> {
        self.session(Pushing {
            sender: &self.sender,
            sets,
        })
    }

    /// The peer checks its own copies and answers; it also keeps the outcome, so that it asks
    /// for a damaged copy again when the set is next offered.
    /// A peer holds sets in the clear: no identity is needed there.
    fn verify_copies(
        &self,
        ids: &[String],
        deep: bool,
        _identities: &[age::x25519::Identity],
        checked: &mut dyn FnMut(&Checked),
    ) -> Result<Vec<Checked>> {
        let outcomes = self.session(Checking {
            sender: &self.sender,
            ids,
            deep,
        })?;
        let outcomes: Vec<Checked> = outcomes
            .into_iter()
            .map(|o| Checked {
                id: o.id,
                manifest_sha256: o.manifest_sha256,
                problem: o.problem,
            })
            .collect();
        outcomes.iter().for_each(&mut *checked);
        Ok(outcomes)
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
