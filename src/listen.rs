//! `receive --listen ADDR`: the Pod Mode receiver. Accepts mutual-TLS connections from the
//! other masters' senders and serves each like the SSH forced command does, taking the sender's
//! identity from its verified client certificate. The certificates are read again for every
//! connection, so a renewed certificate is used without a restart.

use crate::config::Settings;
use crate::protocol::Conn;
use crate::store::Store;
use crate::tcp::bound;
use crate::tls::{TlsStream, acceptor, peer_name};
use anyhow::{Context, Result};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};

/// More senders than masters at once is a fault or an attack: the rest are turned away.
const MAX_SESSIONS: usize = 16;

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
    let sessions = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for tcp in listener.incoming() {
            let tcp = match tcp {
                Ok(tcp) => tcp,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    continue;
                }
            };
            if sessions.fetch_add(1, Ordering::SeqCst) >= MAX_SESSIONS {
                sessions.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!("{MAX_SESSIONS} sessions already: a connection turned away");
                continue;
            }
            let (sessions, store) = (&sessions, &store);
            scope.spawn(move || {
                let from = tcp
                    .peer_addr()
                    .map_or_else(|_| "?".to_string(), |a| a.to_string());
                if let Err(error) = session(settings, store, tcp) {
                    tracing::warn!(from = %from, "session from {from} failed: {error:#}");
                }
                sessions.fetch_sub(1, Ordering::SeqCst);
            });
        }
        Ok(())
    })
}

fn session(settings: &Settings, store: &Store, tcp: TcpStream) -> Result<()> {
    bound(&tcp, settings.spray.io_timeout)?;
    let stream = acceptor(&settings.tls)?
        .accept(tcp)
        .map_err(|e| anyhow::anyhow!("TLS handshake refused: {e}"))?;
    let sender = peer_name(&stream)?;
    let mut conn = Conn::new(TlsStream(stream), false);
    let stats = crate::receive::serve_as(settings, store, &mut conn, Some(&sender))
        .with_context(|| format!("serving {sender}"))?;
    tracing::debug!(
        sender = %sender,
        sets = stats.committed.len(),
        bytes = stats.data_bytes,
        "session done"
    );
    Ok(())
}
