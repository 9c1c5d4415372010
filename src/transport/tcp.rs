//! TCP to a peer within the spray's bounds, for every transport: a connect bounded by
//! `connect_timeout` trying each address the peer resolves to, and a kernel that drops a link
//! holding unacknowledged data longer than `io_timeout` (`TCP_USER_TIMEOUT`).

use crate::config::{PeerAddr, SpraySettings};
use anyhow::{Context, Result, bail};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Connects to `peer`, bounded as above.
pub fn connect(peer: &PeerAddr, settings: &SpraySettings) -> Result<TcpStream> {
    let addrs: Vec<_> = (peer.host.as_str(), peer.port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve '{}'", peer.host))?
        .collect();
    let mut last_error = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, settings.connect_timeout) {
            Ok(socket) => {
                user_timeout(&socket, settings.io_timeout)?;
                socket.set_nodelay(true)?;
                return Ok(socket);
            }
            Err(e) => last_error = Some(e),
        }
    }
    let e = last_error.map_or_else(|| "no address".to_string(), |e| e.to_string());
    bail!(
        "cannot connect to {peer} within {}s: {e}",
        settings.connect_timeout.as_secs()
    );
}

/// Every read and write on `tcp` bounded by `io_timeout` too: for a protocol that runs on the
/// socket itself (TLS, either side).
pub fn bound(tcp: &TcpStream, io_timeout: Duration) -> Result<()> {
    tcp.set_read_timeout(Some(io_timeout))?;
    tcp.set_write_timeout(Some(io_timeout))?;
    tcp.set_nodelay(true)?;
    user_timeout(tcp, io_timeout)
}

/// Unacknowledged data for longer than `io_timeout` kills the connection in the kernel.
pub fn user_timeout(tcp: &TcpStream, io_timeout: Duration) -> Result<()> {
    let millis = io_timeout.as_millis().min(u128::from(u32::MAX)) as u32;
    nix::sys::socket::setsockopt(tcp, nix::sys::socket::sockopt::TcpUserTimeout, &millis)
        .context("cannot set TCP_USER_TIMEOUT")
}
