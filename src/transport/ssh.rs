//! The SSH transport (libssh2 through `ssh2`): an exec channel to the peer's forced command.
//!
//! Measured pitfalls it answers (LAB.md): every wait is bounded (connect timeout, session
//! timeout, TCP_USER_TIMEOUT), because with libssh2's default of no timeout a cut link or a
//! receiver that stops reading hangs forever; on every exit the TCP socket is shut down before
//! the channel and session are dropped, or each drop waits the timeout again; `aes128-ctr` is
//! libssh2's fastest cipher here, but the list stays negotiable.

use crate::config::{HostKeyPolicy, PeerAddr, SpraySettings};
use crate::failure::final_error;
use crate::protocol::Stream;
use anyhow::{Context, Result, bail};
use ssh2::{CheckResult, KnownHostFileKind, MethodType, Session};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Mutex;

/// Fastest first for libssh2 on x86 with AES-NI; the rest keep FIPS-mode and odd peers working.
const CIPHERS: &str = "aes128-ctr,aes128-gcm@openssh.com,aes256-gcm@openssh.com,aes256-ctr,chacha20-poly1305@openssh.com";
/// ECDSA first: FIPS-mode sshd has no ed25519; RSA last.
const HOST_KEY_TYPES: &str = "ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,ssh-ed25519,rsa-sha2-512,rsa-sha2-256,ssh-rsa";
/// libssh2's timeout after a transport error: long enough to read what the peer already sent
/// (its Error frame), short enough that the half-close and the teardown of a dead link cost
/// nothing. libssh2 busy-polls a hung-up socket until its timeout (seen with strace: 5 s per
/// call, three calls) and shutdown(2) cannot stop it once the kernel has dropped the link.
const DEAD_LINK_TIMEOUT_MS: u32 = 100;
/// One writer of known_hosts at a time (peers are contacted concurrently).
static KNOWN_HOSTS_WRITE: Mutex<()> = Mutex::new(());

/// An exec channel to `receive` on a peer, as a byte stream.
pub struct SshStream {
    // Field order matters for drop: channel, then session, and the socket was shut down before.
    channel: ssh2::Channel,
    session: Session,
    socket: TcpStream,
}

impl SshStream {
    /// After a transport error every later libssh2 call (the half-close, reading the
    /// receiver's reason, the teardown) gets [`DEAD_LINK_TIMEOUT_MS`] instead of the full
    /// timeout each.
    fn dead_on_error<T>(&self, result: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &result
            && !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            )
        {
            self.session.set_timeout(DEAD_LINK_TIMEOUT_MS);
        }
        result
    }
}

impl Read for SshStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let result = self.channel.read(buf);
        self.dead_on_error(result)
    }
}

impl Write for SshStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let result = self.channel.write(buf);
        self.dead_on_error(result)
    }
    fn flush(&mut self) -> io::Result<()> {
        let result = self.channel.flush();
        self.dead_on_error(result)
    }
}

impl Stream for SshStream {
    fn close_write(&mut self) -> io::Result<()> {
        let result = self.channel.send_eof().map_err(io::Error::from);
        self.dead_on_error(result)
    }
}

impl SshStream {
    /// Ends the conversation cleanly and returns the remote command's exit status.
    pub fn finish(&mut self) -> Result<i32> {
        self.channel.send_eof()?;
        // libssh2 refuses wait_close before the remote's EOF has been seen.
        self.channel.wait_eof()?;
        self.channel.wait_close()?;
        Ok(self.channel.exit_status()?)
    }
}

impl Drop for SshStream {
    fn drop(&mut self) {
        self.session.set_timeout(DEAD_LINK_TIMEOUT_MS);
        // After a clean finish this is harmless; after an error it keeps libssh2's own
        // teardown from waiting on a dead link.
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

/// The private key must be readable by its owner only (OpenSSH's rule too).
pub fn check_key_permissions(identity: &Path) -> Result<()> {
    let meta = std::fs::metadata(identity)
        .with_context(|| format!("cannot read private key '{}'", identity.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(final_error(format!(
            "private key '{}' is accessible by group or others (mode {mode:04o}); refusing to use it (chmod 600)",
            identity.display()
        )));
    }
    Ok(())
}

fn session_error(session: &Session, what: &str, error: ssh2::Error) -> anyhow::Error {
    let detail = ssh2::Error::last_session_error(session)
        .map_or_else(|| error.to_string(), |e| e.to_string());
    anyhow::anyhow!("{what}: {detail}")
}

/// Connects to `peer`, checks its host key, authenticates and starts the remote command.
pub fn connect(peer: &PeerAddr, settings: &SpraySettings) -> Result<SshStream> {
    check_key_permissions(&settings.identity)?;
    let socket = crate::transport::tcp::connect(peer, settings)?;
    let io_ms = settings.io_timeout.as_millis().min(u128::from(u32::MAX)) as u32;
    let result = open_channel(peer, settings, &socket, io_ms);
    if result.is_err() {
        let _ = socket.shutdown(Shutdown::Both);
    }
    let (session, channel) = result?;
    Ok(SshStream {
        channel,
        session,
        socket,
    })
}

fn open_channel(
    peer: &PeerAddr,
    settings: &SpraySettings,
    socket: &TcpStream,
    io_ms: u32,
) -> Result<(Session, ssh2::Channel)> {
    let mut session = Session::new().context("cannot create an SSH session")?;
    session.set_tcp_stream(socket.try_clone()?);
    session.set_timeout(io_ms);
    for method in [MethodType::CryptCs, MethodType::CryptSc] {
        session.method_pref(method, CIPHERS)?;
    }
    session.method_pref(MethodType::HostKey, HOST_KEY_TYPES)?;
    session
        .handshake()
        .map_err(|e| session_error(&session, &format!("SSH handshake with {peer} failed"), e))?;
    check_host_key(&session, peer, settings)?;
    session
        .userauth_pubkey_file(&settings.user, None, &settings.identity, None)
        .map_err(|e| {
            session_error(
                &session,
                &format!(
                    "authentication as {}@{peer} with '{}' failed",
                    settings.user,
                    settings.identity.display()
                ),
                e,
            )
        })?;
    let mut channel = session
        .channel_session()
        .map_err(|e| session_error(&session, "cannot open a channel", e))?;
    // The receiver logs to its own journal; anything on its stderr is dropped, never buffered
    // until the window fills.
    channel.handle_extended_data(ssh2::ExtendedData::Ignore)?;
    channel.exec(&settings.remote_command).map_err(|e| {
        session_error(
            &session,
            &format!("cannot run the remote command on {peer}"),
            e,
        )
    })?;
    Ok((session, channel))
}

/// `[host]:port` for a non-standard port, as OpenSSH writes known_hosts.
fn known_hosts_name(peer: &PeerAddr) -> String {
    if peer.port == crate::config::SSH_PORT {
        peer.host.clone()
    } else {
        format!("[{}]:{}", peer.host, peer.port)
    }
}

fn check_host_key(session: &Session, peer: &PeerAddr, settings: &SpraySettings) -> Result<()> {
    let (key, key_type) = session.host_key().context("the peer sent no host key")?;
    let path = &settings.known_hosts;
    let _guard = KNOWN_HOSTS_WRITE.lock().unwrap_or_else(|e| e.into_inner());
    let mut known = session.known_hosts()?;
    if path.exists() {
        known
            .read_file(path, KnownHostFileKind::OpenSSH)
            .with_context(|| format!("cannot read known_hosts '{}'", path.display()))?;
    }
    match known.check_port(&peer.host, peer.port, key) {
        CheckResult::Match => Ok(()),
        CheckResult::Mismatch => Err(final_error(format!(
            "host key of {peer} does not match the one in '{}': the peer was reinstalled or someone is in between; refusing (remove its line to accept the new key)",
            path.display()
        ))),
        CheckResult::NotFound if settings.host_key_policy == HostKeyPolicy::AcceptNew => {
            known.add(
                &known_hosts_name(peer),
                key,
                "added by etcd-backup (accept-new)",
                key_type.into(),
            )?;
            let temp = path.with_extension(format!("tmp-{}", std::process::id()));
            known
                .write_file(&temp, KnownHostFileKind::OpenSSH)
                .with_context(|| format!("cannot write '{}'", temp.display()))?;
            std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&temp, path)
                .with_context(|| format!("cannot write '{}'", path.display()))?;
            tracing::warn!(peer = %peer, known_hosts = %path.display(), "pinned the host key of new peer {peer} in {} (accept-new)", path.display());
            Ok(())
        }
        CheckResult::NotFound => Err(final_error(format!(
            "host key of {peer} is not in '{}' and spray.host_key_policy is strict; refusing",
            path.display()
        ))),
        CheckResult::Failure => bail!(
            "cannot check the host key of {peer} against '{}'",
            path.display()
        ),
    }
}
