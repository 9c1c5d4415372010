//! The S3 XML documents rusty-s3 does not model with what we need (per-part SHA-256
//! checksums, multipart upload listings, error bodies). Parsed with instant-xml, as rusty-s3
//! parses its own; the server is not trusted to send anything well-formed.

use instant_xml::{FromXml, ToXml};

pub const S3_NS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// An error body: `<Error><Code>…</Code><Message>…</Message></Error>` (no namespace on AWS).
#[derive(Debug, FromXml)]
#[xml(rename = "Error")]
pub struct ErrorBody {
    #[xml(rename = "Code")]
    pub code: Option<String>,
    #[xml(rename = "Message")]
    pub message: Option<String>,
}

#[derive(Debug, FromXml)]
#[xml(rename = "Error", ns(S3_NS))]
struct ErrorBodyNs {
    #[xml(rename = "Code")]
    code: Option<String>,
    #[xml(rename = "Message")]
    message: Option<String>,
}

/// The code and message of an error body, with or without the S3 namespace.
pub fn error_body(text: &str) -> Option<ErrorBody> {
    instant_xml::from_str::<ErrorBody>(text).ok().or_else(|| {
        instant_xml::from_str::<ErrorBodyNs>(text)
            .ok()
            .map(|e| ErrorBody {
                code: e.code,
                message: e.message,
            })
    })
}

#[derive(Debug, FromXml)]
#[xml(rename = "ListPartsResult", ns(S3_NS))]
pub struct ListParts {
    pub parts: Vec<Part>,
    #[xml(rename = "IsTruncated")]
    pub is_truncated: Option<bool>,
    #[xml(rename = "NextPartNumberMarker")]
    pub next_part_number_marker: Option<u32>,
}

#[derive(Debug, Clone, FromXml)]
#[xml(rename = "Part", ns(S3_NS))]
pub struct Part {
    #[xml(rename = "PartNumber")]
    pub number: u32,
    #[xml(rename = "ETag")]
    pub etag: String,
    #[xml(rename = "Size")]
    pub size: u64,
    #[xml(rename = "ChecksumSHA256")]
    pub checksum_sha256: Option<String>,
}

#[derive(Debug, FromXml)]
#[xml(rename = "ListMultipartUploadsResult", ns(S3_NS))]
pub struct ListUploads {
    pub uploads: Vec<Upload>,
    #[xml(rename = "IsTruncated")]
    pub is_truncated: Option<bool>,
    #[xml(rename = "NextKeyMarker")]
    pub next_key_marker: Option<String>,
    #[xml(rename = "NextUploadIdMarker")]
    pub next_upload_id_marker: Option<String>,
}

#[derive(Debug, Clone, FromXml)]
#[xml(rename = "Upload", ns(S3_NS))]
pub struct Upload {
    #[xml(rename = "Key")]
    pub key: String,
    #[xml(rename = "UploadId")]
    pub upload_id: String,
    #[xml(rename = "Initiated")]
    pub initiated: Option<String>,
}

#[derive(Debug, FromXml)]
#[xml(rename = "CompleteMultipartUploadResult", ns(S3_NS))]
pub struct Completed {
    #[xml(rename = "ETag")]
    pub etag: Option<String>,
}

/// One part of a CompleteMultipartUpload body.
#[derive(Debug, Clone, ToXml)]
#[xml(rename = "Part")]
pub struct CompletedPart {
    #[xml(rename = "ETag")]
    pub etag: String,
    #[xml(rename = "PartNumber")]
    pub number: u32,
    #[xml(rename = "ChecksumSHA256")]
    pub checksum_sha256: String,
}

#[derive(Debug, ToXml)]
#[xml(rename = "CompleteMultipartUpload")]
struct CompleteBody<'a> {
    parts: &'a [CompletedPart],
}

/// The CompleteMultipartUpload body: every part with its ETag and SHA-256, in order.
pub fn complete_body(parts: &[CompletedPart]) -> String {
    instant_xml::to_string(&CompleteBody { parts }).expect("serializing to a String")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_parse_with_or_without_namespace() {
        let e = error_body(
            "<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>gone</Message><Resource>/b</Resource></Error>",
        )
        .unwrap();
        assert_eq!(
            (e.code.as_deref(), e.message.as_deref()),
            (Some("NoSuchBucket"), Some("gone"))
        );
        let e = error_body(&format!(
            "<Error xmlns=\"{S3_NS}\"><Code>AccessDenied</Code></Error>"
        ))
        .unwrap();
        assert_eq!(e.code.as_deref(), Some("AccessDenied"));
        assert!(error_body("<html>bad gateway</html>").is_none());
    }

    #[test]
    fn parts_and_uploads_parse() {
        let parts: ListParts = instant_xml::from_str(&format!(
            "<ListPartsResult xmlns=\"{S3_NS}\"><Bucket>b</Bucket><Key>k</Key><UploadId>u</UploadId>\
             <IsTruncated>false</IsTruncated>\
             <Part><PartNumber>1</PartNumber><LastModified>x</LastModified><ETag>\"e1\"</ETag><Size>5242880</Size><ChecksumSHA256>AAA=</ChecksumSHA256></Part>\
             <Part><PartNumber>2</PartNumber><ETag>&quot;e2&quot;</ETag><Size>7</Size></Part></ListPartsResult>"
        ))
        .unwrap();
        assert_eq!(parts.parts.len(), 2);
        assert_eq!(parts.parts[0].checksum_sha256.as_deref(), Some("AAA="));
        assert_eq!(parts.parts[1].etag, "\"e2\"");
        let uploads: ListUploads = instant_xml::from_str(&format!(
            "<ListMultipartUploadsResult xmlns=\"{S3_NS}\"><Bucket>b</Bucket><IsTruncated>true</IsTruncated>\
             <NextKeyMarker>k</NextKeyMarker><NextUploadIdMarker>u</NextUploadIdMarker>\
             <Upload><Key>p/sets/x/f</Key><UploadId>abc</UploadId><Initiated>2026-12-01T00:00:00.000Z</Initiated></Upload>\
             </ListMultipartUploadsResult>"
        ))
        .unwrap();
        assert_eq!(uploads.uploads[0].upload_id, "abc");
        assert_eq!(uploads.is_truncated, Some(true));
    }

    #[test]
    fn the_complete_body_escapes_etags() {
        let body = complete_body(&[CompletedPart {
            etag: "\"a<b\"".into(),
            number: 1,
            checksum_sha256: "Zm9v".into(),
        }]);
        assert!(
            body.starts_with("<CompleteMultipartUpload><Part>"),
            "{body}"
        );
        assert!(body.contains("<Part><ETag>&quot;a&lt;b&quot;</ETag><PartNumber>1</PartNumber><ChecksumSHA256>Zm9v</ChecksumSHA256></Part>"), "{body}");
    }
}
