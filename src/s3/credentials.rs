//! AWS shared-credentials files (`~/.aws/credentials`): INI sections named by profile, with
//! `aws_access_key_id`, `aws_secret_access_key` and optionally `aws_session_token`. The file
//! must be private (0600 or stricter); its secrets never reach a log or an error message.

use anyhow::{Context, Result, bail};
use std::path::Path;

#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// The keys of `profile` in the text of a credentials file. Errors name lines and keys, never
/// values.
pub fn parse(text: &str, profile: &str) -> Result<Keys, String> {
    let mut section: Option<&str> = None;
    let mut found = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest
                .strip_suffix(']')
                .ok_or_else(|| format!("line {}: a section header without ']'", number + 1))?
                .trim();
            // The config file's spelling `[profile x]` is accepted for the credentials file too.
            let name = name.strip_prefix("profile ").map_or(name, str::trim);
            section = Some(name);
            found |= name == profile;
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: not 'key = value'", number + 1))?;
        if section != Some(profile) {
            continue;
        }
        let value = value.trim().to_string();
        match key.trim().to_ascii_lowercase().as_str() {
            "aws_access_key_id" => id = Some(value),
            "aws_secret_access_key" => secret = Some(value),
            "aws_session_token" => token = Some(value),
            _ => {}
        }
    }
    if !found {
        return Err(format!("no [{profile}] profile"));
    }
    match (id, secret) {
        (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => Ok(Keys {
            access_key_id: id,
            secret_access_key: secret,
            session_token: token.filter(|t| !t.is_empty()),
        }),
        _ => Err(format!(
            "profile [{profile}] lacks a non-empty aws_access_key_id or aws_secret_access_key"
        )),
    }
}

/// Reads `profile` from the credentials file at `path`, refusing a file that group or others
/// can read.
pub fn load(path: &Path, profile: &str) -> Result<Keys> {
    parse(&read_private(path)?, profile)
        .map_err(|e| anyhow::anyhow!("the credentials file '{}': {e}", path.display()))
}

/// The text of the credentials file at `path` (at most 1 MiB), refusing a file that group or
/// others can read.
pub fn read_private(path: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open the credentials file '{}'", path.display()))?;
    let meta = file.metadata()?;
    if meta.mode() & 0o077 != 0 {
        bail!(
            "the credentials file '{}' is readable by group or others (mode {:o}): refusing it (chmod 600)",
            path.display(),
            meta.mode() & 0o777
        );
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, 1 << 20), &mut text)
        .with_context(|| format!("cannot read the credentials file '{}'", path.display()))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# comment\n[default]\naws_access_key_id = AKID\naws_secret_access_key=SECRET\n\n\
                        [backup]\n; other\nAWS_ACCESS_KEY_ID = B\naws_secret_access_key = S2\naws_session_token = T\n\
                        [profile third]\naws_access_key_id=C\naws_secret_access_key=S3\n";

    #[test]
    fn profiles_are_read() {
        let keys = parse(FILE, "default").unwrap();
        assert_eq!(
            (keys.access_key_id.as_str(), keys.secret_access_key.as_str()),
            ("AKID", "SECRET")
        );
        assert_eq!(keys.session_token, None);
        let keys = parse(FILE, "backup").unwrap();
        assert_eq!(keys.session_token.as_deref(), Some("T"));
        assert_eq!(parse(FILE, "third").unwrap().access_key_id, "C");
    }

    #[test]
    fn errors_never_show_secrets() {
        let cases = [
            (FILE, "missing", "no [missing] profile"),
            ("[default]\naws_access_key_id = X\n", "default", "lacks"),
            (
                "[default]\naws_secret_access_key = TOPSECRET\n",
                "default",
                "lacks",
            ),
            (
                "[default\n",
                "default",
                "line 1: a section header without ']'",
            ),
            (
                "[default]\nTOPSECRET\n",
                "default",
                "line 2: not 'key = value'",
            ),
        ];
        for (text, profile, want) in cases {
            let error = parse(text, profile).unwrap_err();
            assert!(error.contains(want), "{error}");
            assert!(!error.contains("TOPSECRET"), "{error}");
        }
        let keys = parse(FILE, "default").unwrap();
        assert!(!format!("{keys:?}").contains("SECRET"));
    }

    #[test]
    fn a_readable_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        std::fs::write(&path, FILE).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = format!("{:#}", load(&path, "default").unwrap_err());
        assert!(error.contains("readable by group or others"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load(&path, "default").unwrap().access_key_id, "AKID");
    }
}
