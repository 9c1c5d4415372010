//! What an S3 server (or whoever answers in its place) sends back, and the credentials file:
//! response heads, body framing, error and listing documents, the INI of a credentials file.
//! Never a panic; a parsed credentials profile always has both keys.
#![no_main]

use etcd_backup::s3::{credentials, http, xml};
use libfuzzer_sys::fuzz_target;

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
});
