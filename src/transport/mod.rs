//! Byte streams to and from peers, nothing above them: TCP within the spray's bounds, SSH
//! (libssh2) to a peer's forced command, mutual TLS, and the forced command's own stdin and
//! stdout.

pub mod slots;
pub mod ssh;
pub mod stdio;
pub mod tcp;
pub mod tls;
