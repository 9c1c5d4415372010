//! A container image reference pinned by digest (`[registry/]repository[:tag]@sha256:<hex>`):
//! what the install unit pulls. A tag alone is refused: a tag can be moved to other bytes, and
//! every master must install the same ones.

use std::fmt;

/// A reference with a sha256 manifest digest. Its text holds only characters that are safe in
/// an env file and a shell word (the install script reads it from `image.env`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedImage {
    /// The whole reference as given, digest included.
    pub reference: String,
    /// `sha256:<64 lowercase hex>`.
    pub digest: String,
}

impl fmt::Display for PinnedImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reference)
    }
}

const HOW_TO_PIN: &str = "pin the image by digest, REF@sha256:<64 hex> (`podman push --digestfile FILE` \
     or `skopeo inspect --format '{{.Digest}}' docker://REF` prints it), so that every master \
     installs the same bytes";

/// Parses `text` as a digest-pinned image reference; the error says what is wrong and how to
/// pin it.
pub fn parse_pinned(text: &str) -> Result<PinnedImage, String> {
    let Some((name, digest)) = text.rsplit_once('@') else {
        return Err(format!("image '{text}' has no digest: {HOW_TO_PIN}"));
    };
    let Some(hex) = digest.strip_prefix("sha256:") else {
        return Err(format!(
            "image '{text}': the digest must be sha256:<64 hex>, not '{digest}'"
        ));
    };
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!(
            "image '{text}': the digest must be sha256: and 64 lowercase hex digits"
        ));
    }
    check_name(name).map_err(|why| format!("image '{text}': {why}"))?;
    Ok(PinnedImage {
        reference: text.to_string(),
        digest: digest.to_string(),
    })
}

/// `[host[:port]/]path[:tag]`: path components of lowercase letters, digits and separators
/// (`.`, `_`, `-`), as the distribution spec has them; the host may carry capitals and a port.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("no repository before the digest".into());
    }
    // A tag before the digest is allowed (the digest decides); it is not part of the path.
    let (path, tag) = match name.rsplit_once(':') {
        Some((path, tag)) if !tag.contains('/') => (path, Some(tag)),
        _ => (name, None),
    };
    if let Some(tag) = tag {
        let valid = !tag.is_empty()
            && tag.len() <= 128
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !valid {
            return Err(format!("'{tag}' is not a valid tag"));
        }
    }
    let mut components: Vec<&str> = path.split('/').collect();
    // The first component is a registry host when it looks like one (a dot, a port, localhost).
    let first = components[0];
    if components.len() > 1 && (first.contains('.') || first.contains(':') || first == "localhost")
    {
        let host = components.remove(0);
        let (host_name, port) = host.split_once(':').unwrap_or((host, ""));
        let host_ok = !host_name.is_empty()
            && host_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
        let port_ok = port.bytes().all(|b| b.is_ascii_digit()) && port.len() <= 5;
        if !host_ok || !port_ok || (host.contains(':') && port.is_empty()) {
            return Err(format!("'{host}' is not a registry host"));
        }
    }
    for component in components {
        let valid = !component.is_empty()
            && component.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && component.as_bytes()[0].is_ascii_alphanumeric();
        if !valid {
            return Err(format!(
                "'{component}' is not a repository path component (lowercase letters, digits, '.', '_', '-')"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn pinned_references_parse() {
        for name in [
            "etcd-backup",
            "quay.io/acme/etcd-backup",
            "quay.io/acme/etcd-backup:0.2.0",
            "10.252.0.10:5000/etcd-backup",
            "registry.lab.invalid/etcd-backup/etcd-backup",
            "localhost/etcd-backup:lab",
            "Mirror.Example.com:8443/ocp4/etcd_backup-x",
        ] {
            let text = format!("{name}@{D}");
            let image = parse_pinned(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(image.reference, text);
            assert_eq!(image.digest, D);
        }
    }

    #[test]
    fn unpinned_or_malformed_references_are_refused_with_the_reason() {
        for (text, why) in [
            ("quay.io/acme/etcd-backup:0.2.0", "has no digest"),
            ("quay.io/acme/etcd-backup", "has no digest"),
            ("quay.io/acme/etcd-backup@sha512:abcd", "must be sha256"),
            ("quay.io/acme/etcd-backup@sha256:abcd", "64 lowercase hex"),
            (
                "quay.io/acme/etcd-backup@sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
                "64 lowercase hex",
            ),
            (&format!("@{D}"), "no repository"),
            (&format!("quay.io/Acme/etcd-backup@{D}"), "'Acme'"),
            (&format!("quay.io/acme//etcd-backup@{D}"), "''"),
            (&format!("quay.io/acme/etcd backup@{D}"), "'etcd backup'"),
            (&format!("quay.io/acme/x:@{D}"), "not a valid tag"),
            (&format!("quay.io/acme/x:a$b@{D}"), "not a valid tag"),
            (&format!("quay.io:50x0/x@{D}"), "not a registry host"),
            (
                &format!("x;rm -rf /@{D}"),
                "not a repository path component",
            ),
        ] {
            let error = parse_pinned(text).unwrap_err();
            assert!(error.contains(why), "{text}: {error}");
        }
    }

    proptest! {
        /// Whatever is accepted is safe to write into an env file and a shell word.
        #[test]
        fn accepted_references_hold_only_safe_characters(name in "[a-zA-Z0-9./:_ $;@'-]{1,40}") {
            if let Ok(image) = parse_pinned(&format!("{name}@{D}")) {
                prop_assert!(image.reference.bytes().all(|b| b.is_ascii_alphanumeric()
                    || b"./:_-@".contains(&b)), "{}", image.reference);
            }
        }
    }
}
