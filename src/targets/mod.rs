//! Where sets go. One trait, one file per kind: `ssh` (a peer master's restricted `receive`),
//! `tls` (a peer's `receive --listen`, Pod Mode) and `dir` (a directory store such as an NFS
//! mount, served in-process). Every kind speaks the
//! same protocol through [`crate::spray::push`], so each is idempotent, resumable and verified
//! against the manifest by the receiving store, which prunes itself by its own policy.

pub mod dir;
pub mod s3;
pub mod ssh;
pub mod tls;

use crate::config::{Settings, TargetConfig};
use crate::protocol::send::{OpenSet, PushStats};
use crate::protocol::{Conn, Stream};
use anyhow::Result;

/// One place a run sprays to.
pub trait Target: Send + Sync + std::fmt::Debug {
    /// Stable across runs (state and metrics are keyed by it): `ssh:master-1`, `dir:/mnt/nfs`.
    fn id(&self) -> String;
    /// What an operator reads: `master-1 (10.0.0.5:22)`, `dir:/mnt/nfs`.
    fn describe(&self) -> String;
    /// Offers `sets` and sends what the target lacks.
    fn push(&self, settings: &Settings, sets: &[OpenSet]) -> Result<PushStats>;
    /// Which of a set's files the target carries (a bucket can carry one of the two).
    fn carries(&self) -> crate::config::Carried {
        crate::config::Carried::All
    }
}

/// The targets of one run.
pub type Targets = Vec<Box<dyn Target>>;

/// Runs the protocol's sending side over `stream`.
fn push_over<S: Stream>(
    stream: S,
    compress: bool,
    sender: &str,
    sets: &[OpenSet],
) -> Result<(PushStats, S)> {
    let mut conn = Conn::new(stream, compress);
    let stats = crate::protocol::send::push(&mut conn, sender, sets)?;
    Ok((stats, conn.into_inner()))
}

/// The targets of a run: etcd.env's masters and explicit peers (never this node), then the
/// directory targets. Problems that do not stop the run come back as warnings.
pub fn from_settings(settings: &Settings) -> Result<(Targets, Vec<String>)> {
    let (peers, warnings) = ssh::peers(settings)?;
    let mut targets: Targets = Vec::new();
    for peer in peers {
        targets.push(match settings.spray.transport {
            crate::config::Transport::Ssh => Box::new(peer),
            crate::config::Transport::Tls => {
                // An etcd.env peer or a peer given without a port: the receivers' port.
                let mut addr = peer.addr;
                if addr.port == crate::config::SSH_PORT {
                    addr.port = settings.spray.tls_port;
                }
                Box::new(tls::TlsPeer {
                    name: peer.name,
                    addr,
                })
            }
        });
    }
    for target in &settings.spray.targets {
        targets.push(match target {
            TargetConfig::Dir(d) => Box::new(dir::DirStore(d.clone())),
            TargetConfig::S3(s) => Box::new(s3::Bucket(s.clone())),
        });
    }
    Ok((targets, warnings))
}
