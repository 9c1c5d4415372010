//! `metrics --listen ADDR`: `GET /metrics` over plain HTTP/1.1, one connection per request,
//! computed afresh at each scrape (Pod Mode's exporter; a ServiceMonitor scrapes it). Requests
//! are hostile input: the head is bounded in size and must arrive whole within
//! [`HEAD_TIMEOUT`] however slowly it trickles, the answer within [`IO_TIMEOUT`], and
//! connections are capped; when the cap is reached, the connection that has waited longest
//! for its head is closed to make room, so that clients that never finish a request cannot
//! keep a scrape out.

use crate::config::Settings;
use crate::deadline::{BoundedTcp, Deadline};
use crate::transport::slots::Slots;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

/// A request head larger than this is refused.
pub const MAX_HEAD_BYTES: usize = 8 << 10;
pub const MAX_CONNECTIONS: usize = 64;
/// The whole request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// The answer, and any single read or write.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Metrics,
    /// `/`: a line pointing at /metrics.
    Index,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Routes a request by its head (pure): the request line `METHOD TARGET HTTP/1.x`; the query
/// string is ignored (Prometheus may add one).
pub fn route(head: &[u8]) -> Route {
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Route::BadRequest;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") || !target.starts_with('/') {
        return Route::BadRequest;
    }
    if method != "GET" {
        return Route::MethodNotAllowed;
    }
    match target.split('?').next() {
        Some("/metrics") => Route::Metrics,
        Some("/") => Route::Index,
        _ => Route::NotFound,
    }
}

/// Serves until the process is stopped.
pub fn serve(settings: &Settings, addr: &str) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on '{addr}' for metrics"))?;
    tracing::info!(
        "serving metrics on http://{}/metrics",
        listener.local_addr()?
    );
    let active = Slots::new(MAX_CONNECTIONS);
    // Connections still reading their head, by arrival: the oldest is closed to make room.
    let reading: Mutex<BTreeMap<u64, TcpStream>> = Mutex::new(BTreeMap::new());
    std::thread::scope(|scope| {
        for (arrival, conn) in (0u64..).zip(listener.incoming()) {
            let Ok(stream) = conn else { continue };
            let slot = match active.take() {
                Some(slot) => slot,
                None => {
                    let oldest = reading
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .pop_first();
                    match oldest {
                        // Its thread's read fails at once and gives its slot back.
                        Some((_, slow)) => {
                            let _ = slow.shutdown(std::net::Shutdown::Both);
                            active.take_anyway()
                        }
                        None => continue, // every slot is answering: this one is dropped
                    }
                }
            };
            if let Ok(clone) = stream.try_clone() {
                reading
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(arrival, clone);
            }
            let reading = &reading;
            scope.spawn(move || {
                let head_read = || {
                    reading
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&arrival);
                };
                if let Err(error) = handle(settings, stream, head_read) {
                    tracing::debug!("metrics request: {error:#}");
                }
                head_read();
                drop(slot);
            });
        }
    });
    Ok(())
}

fn read_head(stream: &mut impl Read) -> Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD_BYTES {
            return Ok(None);
        }
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(Some(head));
        }
    }
}

/// Answers one request; `head_read` is called once its head is in.
fn handle(settings: &Settings, stream: TcpStream, head_read: impl Fn()) -> Result<()> {
    let deadline = Deadline::after(HEAD_TIMEOUT);
    let mut stream = BoundedTcp::new(stream, IO_TIMEOUT, deadline.clone());
    let route = match read_head(&mut stream)? {
        Some(head) => route(&head),
        None => Route::BadRequest,
    };
    head_read();
    deadline.set(IO_TIMEOUT);
    let (status, content_type, body) = match route {
        Route::Metrics => match super::gather(settings) {
            Ok(text) => ("200 OK", super::exposition::CONTENT_TYPE, text),
            Err(error) => (
                "500 Internal Server Error",
                "text/plain; charset=utf-8",
                format!("{error:#}\n"),
            ),
        },
        Route::Index => (
            "200 OK",
            "text/plain; charset=utf-8",
            "etcd-backup: metrics at /metrics\n".to_string(),
        ),
        Route::NotFound => ("404 Not Found", "text/plain; charset=utf-8", String::new()),
        Route::MethodNotAllowed => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            String::new(),
        ),
        Route::BadRequest => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            String::new(),
        ),
    };
    let allow = if route == Route::MethodNotAllowed {
        "Allow: GET\r\n"
    } else {
        ""
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()?;
    // A lingering close: what the client still sends is read and dropped, so that closing with
    // unread bytes does not reset the connection before the client reads the answer.
    stream.get_ref().shutdown(std::net::Shutdown::Write)?;
    let _ = std::io::copy(&mut (&mut stream).take(1 << 16), &mut std::io::sink());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests_are_routed_by_their_request_line() {
        let cases: &[(&[u8], Route)] = &[
            (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", Route::Metrics),
            (b"GET /metrics?name[]=up HTTP/1.1\r\n\r\n", Route::Metrics),
            (b"GET /metrics HTTP/1.0\r\n\r\n", Route::Metrics),
            (b"GET / HTTP/1.1\r\n\r\n", Route::Index),
            (b"GET /metricsx HTTP/1.1\r\n\r\n", Route::NotFound),
            (b"GET /../etc/passwd HTTP/1.1\r\n\r\n", Route::NotFound),
            (b"POST /metrics HTTP/1.1\r\n\r\n", Route::MethodNotAllowed),
            (b"HEAD /metrics HTTP/1.1\r\n\r\n", Route::MethodNotAllowed),
            (b"GET /metrics HTTP/2\r\n\r\n", Route::BadRequest),
            (b"GET  /metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
            (b"GET metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
            (b"GET /metrics\r\n\r\n", Route::BadRequest),
            (b"\xff\xfe /metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
            (b"", Route::BadRequest),
        ];
        for (head, expected) in cases {
            assert_eq!(route(head), *expected, "{}", String::from_utf8_lossy(head));
        }
    }

    proptest! {
        #[test]
        fn any_head_routes_without_panic(head in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = route(&head);
        }

        #[test]
        fn only_get_of_metrics_serves_them(method in "[A-Z]{1,7}", path in "/[a-z?=]{0,12}") {
            let head = format!("{method} {path} HTTP/1.1\r\n\r\n");
            let served = route(head.as_bytes()) == Route::Metrics;
            prop_assert_eq!(served, method == "GET" && path.split('?').next() == Some("/metrics"));
        }
    }
}
