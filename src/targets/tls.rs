//! `tls`: a peer master's `receive --listen` over mutual TLS (Pod Mode: no SSH key reaches the
//! masters). Peers come from etcd.env and `spray.peers` as for `ssh`; the receiver's
//! certificate must name the peer's node name.

use super::{Target, push_over};
use crate::config::{PeerAddr, Settings};
use crate::protocol::send::{OpenSet, PushStats};
use anyhow::Result;

#[derive(Debug, Clone, PartialEq)]
pub struct TlsPeer {
    /// The node name its certificate must carry.
    pub name: String,
    pub addr: PeerAddr,
}

impl Target for TlsPeer {
    fn id(&self) -> String {
        format!("tls:{}", self.name)
    }

    fn describe(&self) -> String {
        if self.name == self.addr.to_string() {
            self.name.clone()
        } else {
            format!("{} ({}, tls)", self.name, self.addr)
        }
    }

    fn push(&self, settings: &Settings, sets: &[OpenSet]) -> Result<PushStats> {
        let stream =
            crate::transport::tls::connect(&self.name, &self.addr, &settings.spray, &settings.tls)?;
        let (stats, mut stream) =
            push_over(stream, settings.spray.compress, &settings.node_name, sets)?;
        // A clean close, so that the receiver's last read is an end and not a reset.
        let _ = crate::protocol::Stream::close_write(&mut stream);
        Ok(stats)
    }
}
