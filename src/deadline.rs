//! Time bounds on what arrives from someone we do not trust: every read waits at most an idle
//! timeout, and a [`Deadline`] bounds the whole exchange (a hello, a handshake, a session, an
//! HTTP request), so that a client trickling a byte now and then cannot hold a lock or a slot.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A point in time after which reads and writes fail, shared between the code that moves it
/// (the hello's bound, then the session's) and the stream that obeys it. `None`: no deadline.
#[derive(Debug, Clone, Default)]
pub struct Deadline(Option<Arc<Mutex<Option<Instant>>>>);

impl Deadline {
    /// No deadline, ever (a connection of this node's own).
    pub const NONE: Deadline = Deadline(None);

    /// A deadline `after` from now (none if that does not fit in an `Instant`), which
    /// [`Deadline::set`] can move.
    pub fn after(after: Duration) -> Deadline {
        Deadline(Some(Arc::new(Mutex::new(
            Instant::now().checked_add(after),
        ))))
    }

    /// Moves the deadline to `after` from now; a deadline made as [`Deadline::NONE`] (or by
    /// `default`) stays none.
    pub fn set(&self, after: Duration) {
        if let Some(at) = &self.0 {
            *at.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now().checked_add(after);
        }
    }

    /// How long an operation may wait: `idle`, or less when the deadline is nearer; an error
    /// once it has passed.
    pub fn wait(&self, idle: Duration) -> io::Result<Duration> {
        let at = self
            .0
            .as_ref()
            .and_then(|at| *at.lock().unwrap_or_else(|e| e.into_inner()));
        let Some(at) = at else {
            return Ok(idle);
        };
        let left = at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(passed());
        }
        Ok(left.min(idle))
    }
}

fn passed() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the time allowed for this exchange has passed",
    )
}

/// A reader that gives up when no byte arrives for `idle`, or when its deadline passes: a
/// receiver whose sender's link was cut must not wait (holding a lock) until TCP gives up hours
/// later, nor serve a sender that sends a byte now and then forever.
pub struct TimeoutReader<R> {
    inner: R,
    idle: Duration,
    deadline: Deadline,
}

impl<R: AsFd> TimeoutReader<R> {
    pub fn new(inner: R, idle: Duration, deadline: Deadline) -> TimeoutReader<R> {
        TimeoutReader {
            inner,
            idle,
            deadline,
        }
    }
}

impl<R: Read + AsFd> Read for TimeoutReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let wait = self.deadline.wait(self.idle)?;
        let millis = wait.as_millis().clamp(1, i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(self.inner.as_fd(), PollFlags::POLLIN)];
        let ready = poll(
            &mut fds,
            PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX),
        )
        .map_err(io::Error::from)?;
        if ready == 0 {
            if wait < self.idle {
                return Err(passed());
            }
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no data from the sender for {}s", self.idle.as_secs()),
            ));
        }
        self.inner.read(buf)
    }
}

/// A TCP connection whose every read and write waits at most `idle` and ends at its deadline
/// (the socket's timeouts are set before each operation).
#[derive(Debug)]
pub struct BoundedTcp {
    tcp: TcpStream,
    idle: Duration,
    deadline: Deadline,
}

impl BoundedTcp {
    pub fn new(tcp: TcpStream, idle: Duration, deadline: Deadline) -> BoundedTcp {
        BoundedTcp {
            tcp,
            idle,
            deadline,
        }
    }

    pub fn get_ref(&self) -> &TcpStream {
        &self.tcp
    }

    /// Sets the socket's timeout for the next read or write; what it was set to.
    fn bound(&self, read: bool) -> io::Result<Duration> {
        let wait = self.deadline.wait(self.idle)?.max(Duration::from_millis(1));
        if read {
            self.tcp.set_read_timeout(Some(wait))?;
        } else {
            self.tcp.set_write_timeout(Some(wait))?;
        }
        Ok(wait)
    }

    /// A socket timeout reads as `WouldBlock`: said as what ran out.
    fn timed_out(&self, wait: Duration, error: io::Error) -> io::Error {
        match error.kind() {
            io::ErrorKind::WouldBlock if wait < self.idle => passed(),
            io::ErrorKind::WouldBlock => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer went silent for {}s", self.idle.as_secs()),
            ),
            _ => error,
        }
    }
}

impl Read for BoundedTcp {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let wait = self.bound(true)?;
        self.tcp.read(buf).map_err(|e| self.timed_out(wait, e))
    }
}

impl Write for BoundedTcp {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let wait = self.bound(false)?;
        self.tcp.write(buf).map_err(|e| self.timed_out(wait, e))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trickle_is_cut_at_the_deadline_not_at_the_idle_timeout() {
        let (reader, mut writer) = std::io::pipe().unwrap();
        let deadline = Deadline::after(Duration::from_millis(600));
        let trickle = std::thread::spawn(move || {
            // A byte every 100 ms: never idle for long.
            for _ in 0..30 {
                if writer.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let started = Instant::now();
        let mut bounded = TimeoutReader::new(
            reader.try_clone().unwrap(),
            Duration::from_secs(5),
            deadline.clone(),
        );
        let mut got = 0;
        let error = loop {
            match bounded.read(&mut [0u8; 16]) {
                Ok(n) => got += n,
                Err(e) => break e,
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(error.to_string().contains("time allowed"), "{error}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(550) && took < Duration::from_secs(3),
            "{took:?}"
        );
        assert!(got > 0);
        // Moved later, it reads again.
        deadline.set(Duration::from_secs(5));
        assert!(bounded.read(&mut [0u8; 1]).is_ok());
        drop(bounded);
        drop(reader);
        trickle.join().unwrap();
    }

    #[test]
    fn silence_is_cut_at_the_idle_timeout() {
        let (reader, _writer) = std::io::pipe().unwrap();
        let mut bounded =
            TimeoutReader::new(reader, Duration::from_millis(200), Deadline::default());
        let error = bounded.read(&mut [0u8; 1]).unwrap_err();
        assert!(error.to_string().contains("no data"), "{error}");
    }

    #[test]
    fn a_tcp_peer_that_trickles_is_cut_at_the_deadline() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let mut tcp = TcpStream::connect(addr).unwrap();
            for _ in 0..30 {
                if tcp.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let (tcp, _) = listener.accept().unwrap();
        let mut bounded = BoundedTcp::new(
            tcp,
            Duration::from_secs(5),
            Deadline::after(Duration::from_millis(500)),
        );
        let started = Instant::now();
        let error = loop {
            if let Err(e) = bounded.read(&mut [0u8; 16]) {
                break e;
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert!(started.elapsed() < Duration::from_secs(3));
        drop(bounded);
        client.join().unwrap();
    }
}
