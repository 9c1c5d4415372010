//! An S3 client for one bucket: rusty-s3 signs every request (SigV4, presigned with the
//! headers that matter signed: checksums, encryption, object lock), [`http`] carries it over
//! the system OpenSSL. Blocking, one request at a time, every wait bounded.

pub mod credentials;
pub mod http;

pub mod xml;

use crate::config::S3Target;
use anyhow::{Context, Result, bail};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use std::io::Write;
use std::time::Duration;

/// How long a signature stays valid: each request is signed just before it is sent.
const SIGNATURE_TTL: Duration = Duration::from_secs(15 * 60);
/// Bodies read into memory: listings and error documents.
const MAX_DOCUMENT_BYTES: usize = 16 << 20;
/// Pages of one listing: 1000 keys a page would be ten million.
pub const MAX_LIST_PAGES: usize = 10_000;
/// Entries of one listing (objects, parts, uploads): far more than any set history holds.
pub const MAX_LIST_ENTRIES: usize = 100_000;

/// The pages of one listing. The server decides where a listing ends, so every token it hands
/// out is remembered (one seen before would start a loop: refused), and pages and entries are
/// bounded: a hostile or broken server cannot make a listing endless or huge.
#[derive(Debug)]
pub struct Pages<T> {
    what: String,
    seen: std::collections::BTreeSet<T>,
    pages: usize,
    entries: usize,
}

impl<T: Ord + Clone> Pages<T> {
    /// `what` names the listing in errors ("the objects under 'sets/'").
    pub fn new(what: impl Into<String>) -> Pages<T> {
        Pages {
            what: what.into(),
            seen: Default::default(),
            pages: 0,
            entries: 0,
        }
    }

    /// A page of `entries` arrived, saying where the next begins (`None`: it was the last).
    /// Returns where to ask next, or `None` when the listing is whole.
    pub fn next(&mut self, entries: usize, next: Option<T>) -> Result<Option<T>> {
        self.pages += 1;
        self.entries = self.entries.saturating_add(entries);
        if self.entries > MAX_LIST_ENTRIES {
            bail!("{}: more than {MAX_LIST_ENTRIES} entries", self.what);
        }
        let Some(next) = next else {
            return Ok(None);
        };
        if self.pages >= MAX_LIST_PAGES {
            bail!("{}: more than {MAX_LIST_PAGES} pages", self.what);
        }
        if !self.seen.insert(next.clone()) {
            bail!(
                "{}: the server gave a continuation it gave before (page {}): the listing would never end",
                self.what,
                self.pages + 1
            );
        }
        Ok(Some(next))
    }
}

/// An answer of the server that was not a success.
#[derive(Debug)]
pub struct S3Error {
    pub status: u16,
    pub code: Option<String>,
    pub message: Option<String>,
}

impl std::fmt::Display for S3Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        if let Some(code) = &self.code {
            write!(f, " {code}")?;
        }
        if let Some(message) = &self.message {
            write!(f, ": {message}")?;
        }
        Ok(())
    }
}

impl std::error::Error for S3Error {}

impl S3Error {
    /// Whether `error` (anywhere in its chain) is an S3 answer with this status.
    pub fn is_status(error: &anyhow::Error, status: u16) -> bool {
        error.chain().any(|e| {
            e.downcast_ref::<S3Error>()
                .is_some_and(|e| e.status == status)
        })
    }
}

/// An object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub key: String,
    pub size: u64,
    pub last_modified: Option<String>,
}

pub struct Client {
    bucket: Bucket,
    credentials: Credentials,
    http: http::Client,
    /// `https://host/bucket` for messages.
    describe: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("bucket", &self.describe)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Another client of the same bucket and keys, with a connection of its own (parts
    /// uploaded side by side).
    pub fn fork(&self) -> Client {
        Client {
            bucket: self.bucket.clone(),
            credentials: self.credentials.clone(),
            http: self.http.fork(),
            describe: self.describe.clone(),
        }
    }

    /// A client for the target's bucket with the keys of its credentials file.
    pub fn open(
        target: &S3Target,
        connect_timeout: Duration,
        io_timeout: Duration,
    ) -> Result<Client> {
        let keys = credentials::load(&target.credentials, &target.profile)?;
        let endpoint: url::Url = target
            .endpoint
            .parse()
            .with_context(|| format!("bad endpoint '{}'", target.endpoint))?;
        let style = if target.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(
            endpoint,
            style,
            target.bucket.clone(),
            target.region.clone(),
        )
        .with_context(|| format!("bad bucket '{}' at '{}'", target.bucket, target.endpoint))?;
        let origin = http::Origin::of(bucket.base_url())?;
        let http = http::Client::new(
            origin,
            target.ca_file.as_deref(),
            connect_timeout,
            io_timeout,
        )?;
        let credentials = match keys.session_token {
            Some(token) => {
                Credentials::new_with_token(keys.access_key_id, keys.secret_access_key, token)
            }
            None => Credentials::new(keys.access_key_id, keys.secret_access_key),
        };
        Ok(Client {
            describe: format!(
                "{}/{}",
                target.endpoint.trim_end_matches('/'),
                target.bucket
            ),
            bucket,
            credentials,
            http,
        })
    }

    /// `https://host/bucket`, for messages.
    pub fn describe(&self) -> &str {
        &self.describe
    }
}

/// How often one request is sent at most. S3 answers 500 and 503 ("please try again",
/// "SlowDown") as a matter of course and a connection can drop or stall; AWS's own clients
/// send such a request three times, waiting longer each time, before they give up.
const REQUEST_TRIES: u32 = 3;
/// The wait before the second try; each later wait is four times the one before.
const FIRST_WAIT: Duration = Duration::from_millis(500);

/// Sends a signed request; a non-2xx answer becomes an [`S3Error`]. A failure that a later try
/// may not meet (see [`transient`]) is tried again after a wait, up to [`REQUEST_TRIES`] times,
/// unless a byte of the body already went to `sink` (it cannot be taken back). Every body here
/// is in memory and every S3 request is idempotent, so a request sent twice does no harm.
fn send(
    http: &mut http::Client,
    bucket: &str,
    method: &str,
    url: url::Url,
    headers: &rusty_s3::Map<'_>,
    body: &[u8],
    sink: Option<(&mut dyn Write, u64)>,
) -> Result<http::Response> {
    let target = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let headers: Vec<(&str, &str)> = headers.iter().collect();
    let mut sink = sink.map(|(inner, limit)| (Counted { inner, written: 0 }, limit));
    let mut wait = FIRST_WAIT;
    let mut tried = 0;
    loop {
        tried += 1;
        let result = send_once(
            http,
            method,
            &target,
            &headers,
            body,
            sink.as_mut()
                .map(|(s, limit)| (s as &mut dyn Write, *limit)),
        );
        let untouched = sink.as_ref().is_none_or(|(s, _)| s.written == 0);
        match result {
            Err(error) if tried < REQUEST_TRIES && untouched && transient(&error) => {
                // The path names the object; the query holds the signature: never logged.
                tracing::warn!(
                    "{bucket}: {method} {} failed ({error:#}); trying again in {} ms",
                    url.path(),
                    wait.as_millis()
                );
                std::thread::sleep(wait + jitter(wait));
                wait *= 4;
            }
            other => return other,
        }
    }
}

/// [`send`] of a PUT with `body` and `headers`.
fn put(
    http: &mut http::Client,
    bucket: &str,
    url: url::Url,
    headers: &rusty_s3::Map<'_>,
    body: &[u8],
) -> Result<http::Response> {
    send(http, bucket, "PUT", url, headers, body, None)
}

fn send_once(
    http: &mut http::Client,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    sink: Option<(&mut dyn Write, u64)>,
) -> Result<http::Response> {
    let response = http.request(method, target, headers, body, sink, MAX_DOCUMENT_BYTES)?;
    if response.is_success() {
        return Ok(response);
    }
    let document = xml::error_body(&String::from_utf8_lossy(&response.body));
    Err(S3Error {
        status: response.status,
        code: document.as_ref().and_then(|d| d.code.clone()),
        message: document.and_then(|d| d.message),
    }
    .into())
}

/// Whether a later try of the same request may succeed: the server said so (500, 502, 503, 504,
/// 429, or S3's own `RequestTimeout`, `SlowDown`, `InternalError`) or the connection failed
/// (refused, reset, cut, or silent past the timeout). Refusals (403, 404, a bad checksum), TLS
/// trust failures and bodies over their bound are final.
pub fn transient(error: &anyhow::Error) -> bool {
    use std::io::ErrorKind::*;
    error.chain().any(|e| {
        if let Some(answer) = e.downcast_ref::<S3Error>() {
            return matches!(answer.status, 429 | 500 | 502 | 503 | 504)
                || matches!(
                    answer.code.as_deref(),
                    Some("RequestTimeout" | "SlowDown" | "InternalError")
                );
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ConnectionRefused
                    | ConnectionReset
                    | ConnectionAborted
                    | NotConnected
                    | BrokenPipe
                    | TimedOut
                    | WouldBlock
                    | UnexpectedEof
            );
        }
        http::is_lost_connection(e)
    })
}

/// Up to half of `wait`, so that parts that failed together do not all come back together.
fn jitter(wait: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    wait.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

/// A sink that counts what went into it.
struct Counted<'a> {
    inner: &'a mut dyn Write,
    written: u64,
}

impl Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Client {
    /// A signed GET without headers: its body into `sink` when given, else into memory.
    fn get_url(
        &mut self,
        url: url::Url,
        sink: Option<(&mut dyn Write, u64)>,
    ) -> Result<http::Response> {
        let headers = rusty_s3::Map::new();
        send(
            &mut self.http,
            &self.describe,
            "GET",
            url,
            &headers,
            &[],
            sink,
        )
    }

    /// Checks that the bucket exists and the keys may use it.
    pub fn head_bucket(&mut self) -> Result<()> {
        let action = self.bucket.head_bucket(Some(&self.credentials));
        let url = action.sign(SIGNATURE_TTL);
        send(
            &mut self.http,
            &self.describe,
            "HEAD",
            url,
            &rusty_s3::Map::new(),
            &[],
            None,
        )
        .map(drop)
        .map_err(|e| match e.downcast_ref::<S3Error>().map(|e| e.status) {
            Some(404) => e.context("no such bucket"),
            Some(403) => e.context("access denied to the bucket (keys, or the bucket policy)"),
            _ => e,
        })
    }

    /// Every object under `prefix`, in key order.
    pub fn list(&mut self, prefix: &str) -> Result<Vec<Object>> {
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = Pages::new(format!("the objects under '{prefix}'"));
        loop {
            let mut action = self.bucket.list_objects_v2(Some(&self.credentials));
            action.with_prefix(prefix);
            if let Some(token) = &token {
                action.with_continuation_token(token.clone());
            }
            let url = action.sign(SIGNATURE_TTL);
            let response = self.get_url(url, None)?;
            let text = String::from_utf8_lossy(&response.body);
            let page = rusty_s3::actions::ListObjectsV2::parse_response(&text)
                .map_err(|e| anyhow::anyhow!("unreadable object listing: {e}"))?;
            let count = page.contents.len();
            for content in page.contents {
                objects.push(Object {
                    key: content.key,
                    size: content.size.unwrap_or(0),
                    last_modified: content.last_modified,
                });
            }
            token = pages.next(count, page.next_continuation_token)?;
            if token.is_none() {
                return Ok(objects);
            }
        }
    }

    /// An object into memory, refusing one over `max` bytes.
    pub fn get_small(&mut self, key: &str, max: usize) -> Result<Vec<u8>> {
        let action = self.bucket.get_object(Some(&self.credentials), key);
        let url = action.sign(SIGNATURE_TTL);
        let mut body = Vec::new();
        self.get_url(url, Some((&mut body, max as u64)))
            .with_context(|| format!("cannot get '{key}'"))?;
        Ok(body)
    }

    /// An object streamed into `sink`: at most `max_bytes` of it (what its manifest says it
    /// holds), or an error.
    pub fn get(&mut self, key: &str, sink: &mut dyn Write, max_bytes: u64) -> Result<()> {
        let action = self.bucket.get_object(Some(&self.credentials), key);
        let url = action.sign(SIGNATURE_TTL);
        self.get_url(url, Some((sink, max_bytes)))
            .with_context(|| format!("cannot get '{key}'"))
            .map(drop)
    }

    /// The headers of an object (with its checksum), or `None` when there is none.
    pub fn head(&mut self, key: &str) -> Result<Option<http::Response>> {
        let mut action = self.bucket.head_object(Some(&self.credentials), key);
        action
            .headers_mut()
            .insert("x-amz-checksum-mode", "ENABLED");
        let url = action.sign(SIGNATURE_TTL);
        let headers = action.headers_mut().clone();
        match send(
            &mut self.http,
            &self.describe,
            "HEAD",
            url,
            &headers,
            &[],
            None,
        ) {
            Ok(response) => Ok(Some(response)),
            Err(e) if S3Error::is_status(&e, 404) => Ok(None),
            Err(e) => Err(e.context(format!("cannot head '{key}'"))),
        }
    }

    /// Puts a whole object with its SHA-256 checked by the server and `headers` signed.
    pub fn put(
        &mut self,
        key: &str,
        body: &[u8],
        headers: &[(&str, String)],
    ) -> Result<http::Response> {
        let mut action = self.bucket.put_object(Some(&self.credentials), key);
        let checksum = crate::hash::base64(&crate::hash::Sha256::digest(body));
        action
            .headers_mut()
            .insert("x-amz-checksum-sha256", checksum);
        for (name, value) in headers {
            action.headers_mut().insert(*name, value.clone());
        }
        let url = action.sign(SIGNATURE_TTL);
        let headers = action.headers_mut().clone();
        put(&mut self.http, &self.describe, url, &headers, body)
            .with_context(|| format!("cannot put '{key}'"))
    }

    pub fn delete(&mut self, key: &str) -> Result<()> {
        let action = self.bucket.delete_object(Some(&self.credentials), key);
        let url = action.sign(SIGNATURE_TTL);
        send(
            &mut self.http,
            &self.describe,
            "DELETE",
            url,
            &rusty_s3::Map::new(),
            &[],
            None,
        )
        .with_context(|| format!("cannot delete '{key}'"))
        .map(drop)
    }

    /// Starts a multipart upload of SHA-256-checked parts; returns its id.
    pub fn create_multipart(
        &mut self,
        key: &str,
        headers: &[(&str, String)],
    ) -> Result<(String, http::Response)> {
        let mut action = self
            .bucket
            .create_multipart_upload(Some(&self.credentials), key);
        action
            .headers_mut()
            .insert("x-amz-checksum-algorithm", "SHA256");
        for (name, value) in headers {
            action.headers_mut().insert(*name, value.clone());
        }
        let url = action.sign(SIGNATURE_TTL);
        let headers = action.headers_mut().clone();
        let response = send(
            &mut self.http,
            &self.describe,
            "POST",
            url,
            &headers,
            &[],
            None,
        )
        .with_context(|| format!("cannot start a multipart upload of '{key}'"))?;
        let text = String::from_utf8_lossy(&response.body);
        let parsed =
            rusty_s3::actions::CreateMultipartUpload::parse_response(&text).map_err(|e| {
                anyhow::anyhow!("unreadable answer to a multipart upload of '{key}': {e}")
            })?;
        Ok((parsed.upload_id().to_string(), response))
    }

    /// Uploads part `number` (from 1) with its SHA-256 (base64) checked by the server; returns
    /// its ETag.
    pub fn upload_part(
        &mut self,
        key: &str,
        upload_id: &str,
        number: u16,
        body: &[u8],
        sha256_b64: &str,
    ) -> Result<String> {
        let mut action = self
            .bucket
            .upload_part(Some(&self.credentials), key, number, upload_id);
        action
            .headers_mut()
            .insert("x-amz-checksum-sha256", sha256_b64.to_string());
        let url = action.sign(SIGNATURE_TTL);
        let headers = action.headers_mut().clone();
        let response = put(&mut self.http, &self.describe, url, &headers, body)
            .with_context(|| format!("cannot upload part {number} of '{key}'"))?;
        response
            .header("etag")
            .map(str::to_string)
            .with_context(|| format!("no ETag for part {number} of '{key}'"))
    }

    /// The parts an upload holds, in order.
    pub fn list_parts(&mut self, key: &str, upload_id: &str) -> Result<Vec<xml::Part>> {
        let mut parts = Vec::new();
        let mut marker: Option<u32> = None;
        let mut pages = Pages::new(format!("the parts of '{key}'"));
        loop {
            let mut action = self
                .bucket
                .list_parts(Some(&self.credentials), key, upload_id);
            if let Some(marker) = marker {
                action.set_part_number_marker(u16::try_from(marker).unwrap_or(u16::MAX));
            }
            let url = action.sign(SIGNATURE_TTL);
            let response = self
                .get_url(url, None)
                .with_context(|| format!("cannot list the parts of '{key}'"))?;
            let page: xml::ListParts =
                instant_xml::from_str(&String::from_utf8_lossy(&response.body))
                    .map_err(|e| anyhow::anyhow!("unreadable part listing of '{key}': {e}"))?;
            let count = page.parts.len();
            parts.extend(page.parts);
            let next = match (page.is_truncated, page.next_part_number_marker) {
                (Some(true), Some(next)) => Some(next),
                _ => None,
            };
            marker = pages.next(count, next)?;
            if marker.is_none() {
                break;
            }
        }
        parts.sort_by_key(|p| p.number);
        Ok(parts)
    }

    /// Completes an upload; a 200 answer that carries an error document is an error too.
    pub fn complete(
        &mut self,
        key: &str,
        upload_id: &str,
        parts: &[xml::CompletedPart],
    ) -> Result<http::Response> {
        let action = self.bucket.complete_multipart_upload(
            Some(&self.credentials),
            key,
            upload_id,
            std::iter::empty::<&str>(),
        );
        let url = action.sign(SIGNATURE_TTL);
        let body = xml::complete_body(parts);
        let response = send(
            &mut self.http,
            &self.describe,
            "POST",
            url,
            &rusty_s3::Map::new(),
            body.as_bytes(),
            None,
        )
        .with_context(|| format!("cannot complete the upload of '{key}'"))?;
        let text = String::from_utf8_lossy(&response.body);
        if instant_xml::from_str::<xml::Completed>(&text).is_err() {
            let document = xml::error_body(&text);
            bail!(
                "the upload of '{key}' was not completed: {}",
                S3Error {
                    status: response.status,
                    code: document.as_ref().and_then(|d| d.code.clone()),
                    message: document.and_then(|d| d.message),
                }
            );
        }
        Ok(response)
    }

    pub fn abort(&mut self, key: &str, upload_id: &str) -> Result<()> {
        let action = self
            .bucket
            .abort_multipart_upload(Some(&self.credentials), key, upload_id);
        let url = action.sign(SIGNATURE_TTL);
        match send(
            &mut self.http,
            &self.describe,
            "DELETE",
            url,
            &rusty_s3::Map::new(),
            &[],
            None,
        ) {
            Ok(_) => Ok(()),
            Err(e) if S3Error::is_status(&e, 404) => Ok(()),
            Err(e) => Err(e.context(format!("cannot abort an upload of '{key}'"))),
        }
    }

    /// The multipart uploads in progress under `prefix`.
    pub fn list_uploads(&mut self, prefix: &str) -> Result<Vec<xml::Upload>> {
        let mut uploads = Vec::new();
        let (mut key_marker, mut id_marker) = (String::new(), String::new());
        let mut pages = Pages::new(format!("the multipart uploads under '{prefix}'"));
        loop {
            // Sorted by name, as signing requires.
            let mut query = vec![];
            if !key_marker.is_empty() {
                query.push(("key-marker", key_marker.as_str()));
            }
            query.push(("prefix", prefix));
            if !id_marker.is_empty() {
                query.push(("upload-id-marker", id_marker.as_str()));
            }
            query.push(("uploads", ""));
            let url = rusty_s3::signing::sign(
                &jiff::Timestamp::now(),
                rusty_s3::Method::Get,
                self.bucket.base_url().clone(),
                self.credentials.key(),
                self.credentials.secret(),
                self.credentials.token(),
                self.bucket.region(),
                SIGNATURE_TTL.as_secs(),
                query.iter().copied(),
                std::iter::empty(),
            );
            let response = self
                .get_url(url, None)
                .context("cannot list the multipart uploads")?;
            let page: xml::ListUploads =
                instant_xml::from_str(&String::from_utf8_lossy(&response.body))
                    .map_err(|e| anyhow::anyhow!("unreadable multipart upload listing: {e}"))?;
            let count = page.uploads.len();
            uploads.extend(page.uploads);
            let next = match (
                page.is_truncated,
                page.next_key_marker,
                page.next_upload_id_marker,
            ) {
                (Some(true), Some(k), Some(u)) => Some((k, u)),
                _ => None,
            };
            match pages.next(count, next)? {
                Some((k, u)) => (key_marker, id_marker) = (k, u),
                None => return Ok(uploads),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_tried_again_and_what_is_final() {
        let answer = |status, code: Option<&str>| -> anyhow::Error {
            anyhow::Error::new(S3Error {
                status,
                code: code.map(str::to_string),
                message: None,
            })
            .context("cannot put 'cluster/sets/x/snapshot.db'")
        };
        let io = |kind| -> anyhow::Error {
            anyhow::Error::new(std::io::Error::from(kind)).context("cannot connect to s3:443")
        };
        use std::io::ErrorKind;
        let table: Vec<(anyhow::Error, bool)> = vec![
            (answer(500, Some("InternalError")), true),
            (answer(503, Some("SlowDown")), true),
            (answer(502, None), true),
            (answer(504, None), true),
            (answer(429, None), true),
            (answer(400, Some("RequestTimeout")), true),
            (answer(400, Some("BadDigest")), false),
            (answer(403, Some("AccessDenied")), false),
            (answer(404, Some("NoSuchUpload")), false),
            (answer(501, Some("NotImplemented")), false),
            (io(ErrorKind::ConnectionRefused), true),
            (io(ErrorKind::ConnectionReset), true),
            (io(ErrorKind::WouldBlock), true),
            (io(ErrorKind::TimedOut), true),
            (io(ErrorKind::UnexpectedEof), true),
            (io(ErrorKind::PermissionDenied), false),
            (io(ErrorKind::InvalidData), false),
            (anyhow::anyhow!("HTTP response body over 100 bytes"), false),
            (anyhow::anyhow!("TLS handshake failed"), false),
        ];
        for (error, want) in table {
            assert_eq!(transient(&error), want, "{error:#}");
        }
    }

    #[test]
    fn the_waits_grow_and_stay_within_half_again() {
        let mut wait = FIRST_WAIT;
        let mut total = Duration::ZERO;
        for _ in 1..REQUEST_TRIES {
            let jittered = wait + jitter(wait);
            assert!(
                jittered >= wait && jittered <= wait.mul_f64(1.5),
                "{jittered:?}"
            );
            total += jittered;
            wait *= 4;
        }
        // Two waits: 0.5 s and 2 s, with jitter at most 3.75 s in all.
        assert!(total <= Duration::from_millis(3750), "{total:?}");
    }

    #[test]
    fn a_listing_ends_refuses_a_token_seen_before_and_is_bounded() {
        // Ends when the server says so.
        let mut pages = Pages::new("the objects under 'sets/'");
        assert_eq!(pages.next(1000, Some("a")).unwrap(), Some("a"));
        assert_eq!(pages.next(1000, Some("b")).unwrap(), Some("b"));
        assert_eq!(pages.next(10, None).unwrap(), None);
        // A token that comes back, even after others: the listing would loop.
        let mut pages = Pages::new("the objects under 'sets/'");
        pages.next(1, Some("a")).unwrap();
        pages.next(1, Some("b")).unwrap();
        let error = pages.next(1, Some("a")).unwrap_err().to_string();
        assert!(
            error.contains("a continuation it gave before (page 4)"),
            "{error}"
        );
        assert!(error.contains("'sets/'"), "{error}");
        // Ever new tokens: bounded in pages, and in entries.
        let mut pages = Pages::new("x");
        let error = (0u64..)
            .find_map(|n| pages.next(0, Some(n)).err())
            .unwrap()
            .to_string();
        assert!(
            error.contains(&format!("more than {MAX_LIST_PAGES} pages")),
            "{error}"
        );
        let mut pages = Pages::new("x");
        let error = (0u64..)
            .find_map(|n| pages.next(1000, Some(n)).err())
            .unwrap()
            .to_string();
        assert!(
            error.contains(&format!("more than {MAX_LIST_ENTRIES} entries")),
            "{error}"
        );
    }
}
