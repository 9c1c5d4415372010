//! A small blocking HTTP/1.1 client for S3 over the system OpenSSL: one request at a time on a
//! kept-alive connection, every read and write bounded by a timeout, request bodies from
//! memory (a part is at most `part_size`), response bodies into memory up to a bound or streamed
//! into a writer. `ureq` with native TLS would cost 306 KB of binary (142 KB gzip) for more than
//! S3 needs of HTTP; this is what it needs and no more.

use anyhow::{Context, Result, bail};
use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVersion};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

/// The largest response head (status line and headers) accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;

enum Wire {
    Plain(TcpStream),
    Tls(Box<SslStream<TcpStream>>),
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Wire::Plain(s) => s.read(buf),
            Wire::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Wire::Plain(s) => s.write(buf),
            Wire::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Wire::Plain(s) => s.flush(),
            Wire::Tls(s) => s.flush(),
        }
    }
}

/// Where requests go: `http` or `https`, a host and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Origin {
    pub fn of(url: &url::Url) -> Result<Origin> {
        let tls = match url.scheme() {
            "https" => true,
            "http" => false,
            other => bail!("unsupported URL scheme '{other}' (http or https)"),
        };
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(host) => host.to_string(),
            None => bail!("the URL '{url}' has no host"),
        };
        let port = url
            .port_or_known_default()
            .unwrap_or(if tls { 443 } else { 80 });
        Ok(Origin { tls, host, port })
    }
}

/// A response whose body was read into memory (or streamed into a writer, then empty).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// How a response body is framed (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// The framing of a response to `method` with `status` and `headers` (names lowercased).
pub fn framing(method: &str, status: u16, headers: &[(String, String)]) -> Result<Framing> {
    if method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(Framing::None);
    }
    let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    if let Some(te) = get("transfer-encoding") {
        if te.rsplit(',').next().map(str::trim) == Some("chunked") {
            return Ok(Framing::Chunked);
        }
        return Ok(Framing::UntilClose);
    }
    match get("content-length") {
        Some(len) => len
            .trim()
            .parse()
            .map(Framing::Length)
            .map_err(|_| anyhow::anyhow!("bad Content-Length '{len}'")),
        None => Ok(Framing::UntilClose),
    }
}

/// A parsed response head: its length in bytes, the status, the headers (names lowercased).
pub type Head = (usize, u16, Vec<(String, String)>);

/// Parses a response head; `None` while `buf` does not hold a whole one yet.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buf).context("malformed HTTP response")? {
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(len) => {
            let status = response.code.context("HTTP response without a status")?;
            let headers = response
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).trim().to_string(),
                    )
                })
                .collect();
            Ok(Some((len, status, headers)))
        }
    }
}

/// One connection to one origin, opened again when the server closed it.
pub struct Client {
    origin: Origin,
    tls: Option<SslConnector>,
    connect_timeout: Duration,
    io_timeout: Duration,
    conn: Option<BufReader<Wire>>,
    /// Whom the server's certificate must come from, for messages: the CA file or the system.
    trust: String,
}

impl Client {
    /// Another client of the same origin, trust and timeouts, with a connection of its own.
    pub fn fork(&self) -> Client {
        Client {
            origin: self.origin.clone(),
            tls: self.tls.clone(),
            connect_timeout: self.connect_timeout,
            io_timeout: self.io_timeout,
            conn: None,
            trust: self.trust.clone(),
        }
    }

    /// `ca_file` replaces the system's trusted CAs for an `https` origin.
    pub fn new(
        origin: Origin,
        ca_file: Option<&Path>,
        connect_timeout: Duration,
        io_timeout: Duration,
    ) -> Result<Client> {
        let tls = if origin.tls {
            let mut builder = SslConnector::builder(SslMethod::tls())?;
            builder.set_min_proto_version(Some(SslVersion::TLS1_2))?;
            if let Some(ca) = ca_file {
                // Only this CA: a fresh store, not the system's with one more.
                let pem = std::fs::read(ca)
                    .with_context(|| format!("cannot read the CA file '{}'", ca.display()))?;
                let certs = openssl::x509::X509::stack_from_pem(&pem).with_context(|| {
                    format!("the CA file '{}' holds no PEM certificate", ca.display())
                })?;
                if certs.is_empty() {
                    bail!("the CA file '{}' holds no PEM certificate", ca.display());
                }
                let mut store = openssl::x509::store::X509StoreBuilder::new()?;
                for cert in certs {
                    store.add_cert(cert)?;
                }
                builder.set_verify_cert_store(store.build())?;
            }
            Some(builder.build())
        } else {
            None
        };
        let trust = match ca_file {
            Some(ca) => format!("the CA in '{}' (ca_file)", ca.display()),
            None => "a CA the system trusts (or set ca_file)".to_string(),
        };
        Ok(Client {
            origin,
            tls,
            connect_timeout,
            io_timeout,
            conn: None,
            trust,
        })
    }

    fn connect(&self) -> Result<BufReader<Wire>> {
        let Origin { host, port, .. } = &self.origin;
        let addrs: Vec<_> = (host.as_str(), *port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve '{host}'"))?
            .collect();
        let mut last = None;
        for addr in &addrs {
            match TcpStream::connect_timeout(addr, self.connect_timeout) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(self.io_timeout))?;
                    stream.set_write_timeout(Some(self.io_timeout))?;
                    stream.set_nodelay(true)?;
                    let wire = match &self.tls {
                        None => Wire::Plain(stream),
                        Some(tls) => Wire::Tls(Box::new(
                            tls.connect(host, stream)
                                .map_err(|e| {
                                    anyhow::anyhow!(
                                        "TLS handshake failed (the server's certificate must be signed by {} and name '{host}'): {e}",
                                        self.trust
                                    )
                                })?,
                        )),
                    };
                    return Ok(BufReader::with_capacity(64 * 1024, wire));
                }
                Err(e) => last = Some(e),
            }
        }
        match last {
            Some(e) => Err(e).with_context(|| format!("cannot connect to {host}:{port}")),
            None => bail!("'{host}' resolves to no address"),
        }
    }

    /// Sends one request (`target` is the path and query, `headers` without Host and
    /// Content-Length) and reads the response. A successful response's body goes to `sink` when
    /// one is given, up to its bound (a body that says or turns out larger is an error); any
    /// other body is read into memory up to `max_body` bytes.
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        sink: Option<(&mut dyn Write, u64)>,
        max_body: usize,
    ) -> Result<Response> {
        // A kept-alive connection the server closed meanwhile fails on first use: once more on
        // a new one (every S3 request here is idempotent).
        let reused = self.conn.is_some();
        let mut sink = sink;
        let first = self.exchange(
            method,
            target,
            headers,
            body,
            sink.as_mut()
                .map(|(s, limit)| (&mut **s as &mut dyn Write, *limit)),
            max_body,
        );
        match first {
            Err(e) if reused && e.downcast_ref::<Stale>().is_some() => {
                self.conn = None;
                self.exchange(method, target, headers, body, sink, max_body)
            }
            other => other,
        }
    }

    fn exchange(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        sink: Option<(&mut dyn Write, u64)>,
        max_body: usize,
    ) -> Result<Response> {
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.connect()?,
        };
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\n",
            self.host_header()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || matches!(method, "PUT" | "POST") {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let wire = conn.get_mut();
        wire.write_all(head.as_bytes())
            .and_then(|()| wire.write_all(body))
            .and_then(|()| wire.flush())
            .map_err(|e| Stale(e.to_string()))?;
        let (status, headers) = read_head(&mut conn)?;
        let framing = framing(method, status, &headers)?;
        let close = headers
            .iter()
            .any(|(n, v)| n == "connection" && v.eq_ignore_ascii_case("close"))
            || framing == Framing::UntilClose;
        let success = (200..300).contains(&status);
        let mut body = Vec::new();
        match sink {
            Some((sink, limit)) if success => copy_body(&mut conn, framing, sink, limit)?,
            _ => copy_body(&mut conn, framing, &mut body, max_body as u64)?,
        };
        if !close {
            self.conn = Some(conn);
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// The Host header as the signature has it: the port only when it is not the scheme's.
    fn host_header(&self) -> String {
        let Origin { tls, host, port } = &self.origin;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        match (tls, port) {
            (true, 443) | (false, 80) => host,
            _ => format!("{host}:{port}"),
        }
    }
}

/// A kept-alive connection that turned out to be closed: safe to retry on a new one.
#[derive(Debug)]
struct Stale(String);

/// Whether `error` is a connection that was lost before the server answered.
pub fn is_lost_connection(error: &(dyn std::error::Error + 'static)) -> bool {
    error.downcast_ref::<Stale>().is_some()
}

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "connection lost: {}", self.0)
    }
}

impl std::error::Error for Stale {}

fn read_head(conn: &mut BufReader<Wire>) -> Result<(u16, Vec<(String, String)>)> {
    let mut buf = Vec::new();
    loop {
        let available = match conn.fill_buf() {
            Ok(b) => b,
            Err(e) if buf.is_empty() => return Err(Stale(e.to_string()).into()),
            Err(e) => return Err(e).context("reading the HTTP response"),
        };
        if available.is_empty() {
            if buf.is_empty() {
                return Err(Stale("closed before answering".into()).into());
            }
            bail!("the server closed the connection in the middle of a response head");
        }
        let before = buf.len();
        buf.extend_from_slice(available);
        match parse_head(&buf)? {
            Some((len, status, headers)) => {
                conn.consume(len - before);
                if (100..200).contains(&status) {
                    // An interim answer (100 Continue): the real one follows.
                    buf.clear();
                    continue;
                }
                return Ok((status, headers));
            }
            None => {
                let n = available.len();
                conn.consume(n);
                if buf.len() > MAX_HEAD_BYTES {
                    bail!("HTTP response head over {MAX_HEAD_BYTES} bytes");
                }
            }
        }
    }
}

/// Copies a body framed by `framing` into `out`, failing past `limit` bytes.
fn copy_body(
    conn: &mut BufReader<Wire>,
    framing: Framing,
    out: &mut dyn Write,
    limit: u64,
) -> Result<u64> {
    let too_big = || anyhow::anyhow!("HTTP response body over {limit} bytes");
    match framing {
        Framing::None => Ok(0),
        Framing::Length(len) => {
            if len > limit {
                return Err(too_big());
            }
            let copied = std::io::copy(&mut conn.take(len), out).context("reading the body")?;
            if copied < len {
                bail!("the server closed the connection after {copied} of {len} body bytes");
            }
            Ok(copied)
        }
        Framing::UntilClose => {
            let copied =
                std::io::copy(&mut conn.take(limit + 1), out).context("reading the body")?;
            if copied > limit {
                return Err(too_big());
            }
            Ok(copied)
        }
        Framing::Chunked => {
            let mut total = 0u64;
            loop {
                let mut line = String::new();
                (&mut *conn)
                    .take(1024)
                    .read_line(&mut line)
                    .context("reading a chunk size")?;
                let size = line.trim_end().split(';').next().unwrap_or("").trim();
                let size = u64::from_str_radix(size, 16)
                    .map_err(|_| anyhow::anyhow!("bad chunk size line {:?}", line.trim_end()))?;
                if size == 0 {
                    // Trailers, up to the empty line: as many as a response head may hold.
                    let mut trailers = 0usize;
                    loop {
                        let mut trailer = String::new();
                        let n = (&mut *conn).take(8192).read_line(&mut trailer)?;
                        if n == 0 || trailer.trim_end().is_empty() {
                            return Ok(total);
                        }
                        trailers += n;
                        if trailers > MAX_HEAD_BYTES {
                            bail!("HTTP trailers over {MAX_HEAD_BYTES} bytes");
                        }
                    }
                }
                total = total
                    .checked_add(size)
                    .filter(|t| *t <= limit)
                    .ok_or_else(too_big)?;
                let copied = std::io::copy(&mut (&mut *conn).take(size), out)?;
                if copied < size {
                    bail!("the server closed the connection in the middle of a chunk");
                }
                let mut crlf = [0u8; 2];
                conn.read_exact(&mut crlf)?;
                if &crlf != b"\r\n" {
                    bail!("a chunk not ended by CRLF");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn framing_follows_rfc_9112() {
        type Case<'a> = (&'a str, u16, &'a [(&'a str, &'a str)], Framing);
        let cases: &[Case] = &[
            ("HEAD", 200, &[("content-length", "10")], Framing::None),
            ("GET", 204, &[], Framing::None),
            ("GET", 304, &[("content-length", "5")], Framing::None),
            (
                "GET",
                200,
                &[("content-length", " 42 ")],
                Framing::Length(42),
            ),
            (
                "GET",
                200,
                &[("transfer-encoding", "chunked")],
                Framing::Chunked,
            ),
            (
                "GET",
                200,
                &[
                    ("transfer-encoding", "gzip, chunked"),
                    ("content-length", "3"),
                ],
                Framing::Chunked,
            ),
            (
                "GET",
                200,
                &[("transfer-encoding", "gzip")],
                Framing::UntilClose,
            ),
            ("GET", 200, &[], Framing::UntilClose),
        ];
        for (method, status, headers, want) in cases {
            assert_eq!(
                framing(method, *status, &h(headers)).unwrap(),
                *want,
                "{method} {status} {headers:?}"
            );
        }
        assert!(framing("GET", 200, &h(&[("content-length", "-1")])).is_err());
    }

    #[test]
    fn heads_parse_whole_or_not_yet() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nETag: \"x\"\r\n\r\nabc";
        let (len, status, headers) = parse_head(head).unwrap().unwrap();
        assert_eq!((len, status), (head.len() - 3, 200));
        assert_eq!(headers, h(&[("content-length", "3"), ("etag", "\"x\"")]));
        assert!(parse_head(&head[..20]).unwrap().is_none());
        assert!(parse_head(b"NOT HTTP\r\n\r\n").is_err());
    }

    #[test]
    fn origins_take_the_schemes_port() {
        let o = |s: &str| Origin::of(&s.parse().unwrap()).unwrap();
        assert_eq!(
            o("https://s3.example.com"),
            Origin {
                tls: true,
                host: "s3.example.com".into(),
                port: 443
            }
        );
        assert_eq!(o("http://127.0.0.1:8333/").port, 8333);
        assert_eq!(o("http://[::1]:9000").host, "::1");
        assert!(Origin::of(&"ftp://x".parse().unwrap()).is_err());
    }
}
