//! What an S3 server (or whoever answers in its place) sends back, and the credentials file:
//! response heads, body framing, error and listing documents, the INI of a credentials file,
//! and a listing's pages (the input split at NUL bytes, each an object listing). Never a panic;
//! a parsed credentials profile always has both keys; a listing never accepts a continuation
//! token twice.
#![no_main]

use etcd_backup::s3::{Pages, credentials, http, xml};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((len, status, headers))) = http::parse_head(data) {
        assert!(len <= data.len());
        let _ = http::framing("GET", status, &headers);
    }
    let text = String::from_utf8_lossy(data);
    let _ = xml::error_body(&text);
    let _ = instant_xml::from_str::<xml::ListParts>(&text);
    let _ = instant_xml::from_str::<xml::ListUploads>(&text);
    if let Ok(keys) = credentials::parse(&text, "default") {
        assert!(!keys.access_key_id.is_empty() && !keys.secret_access_key.is_empty());
    }
    let mut pages = Pages::new("the fuzzed listing");
    let mut accepted = BTreeSet::new();
    for page in data.split(|b| *b == 0) {
        let text = String::from_utf8_lossy(page);
        let Ok(listing) = rusty_s3::actions::ListObjectsV2::parse_response(&text) else {
            break;
        };
        match pages.next(listing.contents.len(), listing.next_continuation_token) {
            Ok(Some(token)) => assert!(accepted.insert(token), "a token accepted twice"),
            Ok(None) | Err(_) => break,
        }
    }
});
