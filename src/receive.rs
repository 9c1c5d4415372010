//! `receive`: a peer's receiving service, over the protocol's serving end
//! ([`crate::protocol::serve`]). On stdin and stdout it serves one sender: the SSH forced
//! command. With `--listen ADDR` it is the Pod Mode receiver: it accepts mutual-TLS connections
//! from the other masters' senders and serves each, taking the sender's identity from its
//! verified client certificate. The certificates are read again for every connection, so a
//! renewed certificate is used without a restart.
//!
//! The port faces anyone who can reach the masters: a handshake must finish within
//! [`HANDSHAKE_TIMEOUT`] (however slowly its bytes trickle), handshakes in progress have a cap
//! of their own, and only senders whose certificate verified count against [`MAX_SESSIONS`].

use crate::config::Settings;
use crate::deadline::{BoundedTcp, Deadline};
use crate::protocol::Conn;
use crate::protocol::serve::{HELLO_TIMEOUT, PeerSender, ReceiveStats, Sender, serve};
use crate::store::Store;
use crate::transport::slots::{Slot, Slots};
use crate::transport::tls::{TlsStream, acceptor, peer_name};
use anyhow::{Context, Result};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// More senders than masters at once is a fault or an attack: the rest are turned away.
pub const MAX_SESSIONS: usize = 16;
/// Connections still in their handshake: anyone can open these, so they have their own cap.
pub const MAX_HANDSHAKES: usize = 256;
/// The whole handshake, however slowly its bytes arrive.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the one sender on stdin and stdout (the SSH forced command on a peer).
pub fn on_stdio(settings: &Settings) -> Result<ReceiveStats> {
    let store = Store::open(&settings.store.root)?;
    let peer = PeerSender {
        authenticated: None,
        from: crate::transport::stdio::ssh_client(),
        deadline: Deadline::after(HELLO_TIMEOUT),
    };
    let stream = crate::transport::stdio::stdio(settings.spray.io_timeout, peer.deadline.clone())?;
    let mut conn = Conn::new(stream, false);
    serve(settings, &store, &mut conn, Sender::Peer(&peer))
}

/// Serves every sender that connects to `addr` over mutual TLS, until the process is stopped.
pub fn listen(settings: &Settings, addr: &str) -> Result<()> {
    // Fail at start, not at the first connection, when the certificates are unusable.
    acceptor(&settings.tls)?;
    let store = Store::open(&settings.store.root)?;
    let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on '{addr}'"))?;
    tracing::info!(
        listen = %addr,
        store = %settings.store.root.display(),
        "receiving sets over mutual TLS on {addr}"
    );
    let (handshakes, sessions) = (Slots::new(MAX_HANDSHAKES), Slots::new(MAX_SESSIONS));
    std::thread::scope(|scope| {
        for tcp in listener.incoming() {
            let tcp = match tcp {
                Ok(tcp) => tcp,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    continue;
                }
            };
            let Some(handshake) = handshakes.take() else {
                tracing::warn!("{MAX_HANDSHAKES} handshakes in progress: a connection turned away");
                continue;
            };
            let (sessions, store) = (&sessions, &store);
            scope.spawn(move || {
                let from = tcp
                    .peer_addr()
                    .map_or_else(|_| "?".to_string(), |a| a.to_string());
                if let Err(error) = session(settings, store, tcp, &from, handshake, sessions) {
                    tracing::warn!(from = %from, "session from {from} failed: {error:#}");
                }
            });
        }
        Ok(())
    })
}

fn session(
    settings: &Settings,
    store: &Store,
    tcp: TcpStream,
    from: &str,
    handshake: Slot,
    sessions: &Slots,
) -> Result<()> {
    tcp.set_nodelay(true)?;
    crate::transport::tcp::user_timeout(&tcp, settings.spray.io_timeout)?;
    let peer = PeerSender {
        authenticated: None,
        from: from.to_string(),
        deadline: Deadline::after(HANDSHAKE_TIMEOUT),
    };
    let bounded = BoundedTcp::new(tcp, settings.spray.io_timeout, peer.deadline.clone());
    let stream = acceptor(&settings.tls)?
        .accept(bounded)
        .map_err(|e| anyhow::anyhow!("TLS handshake refused: {e}"))?;
    drop(handshake);
    let sender = peer_name(&stream)?;
    let Some(_session) = sessions.take() else {
        anyhow::bail!("{MAX_SESSIONS} sessions already: {sender} turned away");
    };
    let peer = PeerSender {
        authenticated: Some(sender.clone()),
        ..peer
    };
    let mut conn = Conn::new(TlsStream(stream), false);
    let stats = serve(settings, store, &mut conn, Sender::Peer(&peer))
        .with_context(|| format!("serving {sender}"))?;
    tracing::debug!(
        sender = %sender,
        sets = stats.committed.len(),
        bytes = stats.data_bytes,
        "session done"
    );
    Ok(())
}
