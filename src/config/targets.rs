//! `[[spray.target]]`: one table per target; its `kind` says which keys it takes.

use super::ConfigError;
use super::fragments::{Source, TargetFragment};
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

// Read once per run and held by reference: the size of the S3 variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum TargetConfig {
    Dir(DirTarget),
    S3(S3Target),
}

#[derive(Debug, Clone, PartialEq)]
pub struct DirTarget {
    pub path: PathBuf,
    /// Refuse to write unless `path` is a mount point (an unmounted NFS share must not fill
    /// the root disk).
    pub require_mount: bool,
    /// How often `verify --targets` (the verify timer) checks the copies here; zero: never.
    pub verify_every: Duration,
    /// `seal` as configured; unset: sealed when `[seal] recipients` are.
    pub seal: Option<bool>,
}

impl DirTarget {
    /// How lists, plans and `--from` name it: `dir:PATH`.
    pub fn id(&self) -> String {
        format!("dir:{}", self.path.display())
    }
}

/// An S3-compatible bucket: sets under `<prefix>/sets/<set-id>/`.
#[derive(Debug, Clone, PartialEq)]
pub struct S3Target {
    /// `http(s)://host[:port]`, checked.
    pub endpoint: String,
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
    pub region: String,
    /// `https://host/bucket/key` rather than `https://bucket.host/key`.
    pub path_style: bool,
    /// An AWS shared-credentials file, 0600.
    pub credentials: PathBuf,
    pub profile: String,
    /// Trust only this CA for an `https` endpoint (default: the system's).
    pub ca_file: Option<PathBuf>,
    pub sse: Option<Sse>,
    /// Which of a set's two files this target carries (the manifest always).
    pub files: Carried,
    pub part_size: u64,
    pub object_lock: Option<ObjectLock>,
    /// Multipart uploads older than this that no run continues are aborted.
    pub gc_grace: Duration,
    /// A plain `http://` endpoint is allowed (a server on loopback or in a lab).
    pub insecure_http: bool,
    /// How often `verify --targets` (the verify timer) checks the copies here; zero: never.
    pub verify_every: Duration,
    /// The most a verification downloads per second (bytes); zero: unbounded.
    pub verify_bandwidth: u64,
    /// `seal` as configured; unset: sealed when `[seal] recipients` are.
    pub seal: Option<bool>,
}

/// Server-side encryption asked of the store (the answer is checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sse {
    Aes256,
    Kms { key_id: Option<String> },
}

impl Sse {
    /// The `x-amz-server-side-encryption` value.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Sse::Aes256 => "AES256",
            Sse::Kms { .. } => "aws:kms",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Carried {
    #[default]
    All,
    Snapshot,
    Resources,
}

impl Carried {
    pub fn as_str(self) -> &'static str {
        match self {
            Carried::All => "all",
            Carried::Snapshot => "snapshot",
            Carried::Resources => "resources",
        }
    }

    /// Whether a target of this kind carries `file` of a manifest.
    pub fn carries(self, file: &crate::manifest::FileEntry) -> bool {
        match self {
            Carried::All => true,
            Carried::Snapshot => file.is_snapshot(),
            Carried::Resources => !file.is_snapshot(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    pub mode: LockMode,
    pub days: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Governance,
    Compliance,
}

impl LockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

/// S3's smallest part (but the last) and largest part.
pub const MIN_PART_SIZE: u64 = 5 << 20;
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// As `aws s3 cp`'s default chunk: four parts in flight in 40 MiB (`layout::parallel_parts`).
pub const DEFAULT_PART_SIZE: u64 = 8 << 20;
pub const DEFAULT_GC_GRACE: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_VERIFY_EVERY: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_VERIFY_BANDWIDTH: u64 = 64 << 20;

impl TargetFragment {
    pub(super) fn check(self, file: &Source<'_>) -> Result<TargetConfig, ConfigError> {
        match self.kind.get_ref().as_str() {
            "dir" => self.dir(file),
            "s3" => self.s3(file),
            other => Err(file.error(
                &self.kind,
                format!("unknown spray.target kind '{other}' (known: dir, s3)"),
            )),
        }
    }

    /// A key of the other kind is an error, not silently ignored.
    fn refuse(
        &self,
        file: &Source<'_>,
        keys: &[(&str, Option<std::ops::Range<usize>>)],
    ) -> Result<(), ConfigError> {
        for (key, span) in keys {
            if let Some(span) = span {
                return Err(ConfigError(format!(
                    "{}: spray.target.{key} is not a key of kind '{}'",
                    file.locate(span),
                    self.kind.get_ref()
                )));
            }
        }
        Ok(())
    }

    fn dir(self, file: &Source<'_>) -> Result<TargetConfig, ConfigError> {
        let span = |v: &Option<Spanned<String>>| v.as_ref().map(|v| v.span());
        self.refuse(
            file,
            &[
                ("endpoint", span(&self.endpoint)),
                ("bucket", span(&self.bucket)),
                ("prefix", span(&self.prefix)),
                ("region", span(&self.region)),
                ("credentials", span(&self.credentials)),
                ("profile", span(&self.profile)),
                ("ca_file", span(&self.ca_file)),
                ("sse", span(&self.sse)),
                ("sse_kms_key_id", span(&self.sse_kms_key_id)),
                ("files", span(&self.files)),
                ("part_size", span(&self.part_size)),
                ("object_lock_mode", span(&self.object_lock_mode)),
                ("gc_grace", span(&self.gc_grace)),
                (
                    "object_lock_days",
                    self.object_lock_days.as_ref().map(|v| v.span()),
                ),
            ],
        )?;
        if let Some(bandwidth) = &self.verify_bandwidth {
            return Err(file.error(
                bandwidth,
                "spray.target.verify_bandwidth is not a key of kind 'dir' (a directory is read at the disk's pace, with idle I/O)",
            ));
        }
        for (key, set) in [
            ("path_style", self.path_style.is_some()),
            ("insecure_http", self.insecure_http.is_some()),
        ] {
            if set {
                return Err(file.error(
                    &self.kind,
                    format!("spray.target.{key} is not a key of kind 'dir'"),
                ));
            }
        }
        let path = self
            .path
            .as_ref()
            .ok_or_else(|| file.error(&self.kind, "a dir target needs a path"))?;
        Ok(TargetConfig::Dir(DirTarget {
            path: file.absolute_path(path, "spray.target.path")?,
            require_mount: self.require_mount.unwrap_or(true),
            verify_every: verify_every(file, &self.verify_every)?,
            seal: self.seal.map(Spanned::into_inner),
        }))
    }

    fn s3(self, file: &Source<'_>) -> Result<TargetConfig, ConfigError> {
        self.refuse(file, &[("path", self.path.as_ref().map(|v| v.span()))])?;
        if self.require_mount.is_some() {
            return Err(file.error(
                &self.kind,
                "spray.target.require_mount is not a key of kind 's3'",
            ));
        }
        let required = |value: &Option<Spanned<String>>, key: &str| {
            value
                .clone()
                .ok_or_else(|| file.error(&self.kind, format!("an s3 target needs {key}")))
        };
        let endpoint = required(&self.endpoint, "an endpoint")?;
        let insecure_http = self.insecure_http.unwrap_or(false);
        check_endpoint(endpoint.get_ref(), insecure_http).map_err(|e| file.error(&endpoint, e))?;
        let bucket = required(&self.bucket, "a bucket")?;
        check_bucket(bucket.get_ref()).map_err(|e| file.error(&bucket, e))?;
        let prefix = match &self.prefix {
            Some(p) => {
                check_prefix(p.get_ref()).map_err(|e| file.error(p, e))?;
                p.get_ref().clone()
            }
            None => String::new(),
        };
        let region = match &self.region {
            Some(r) if is_region(r.get_ref()) => r.get_ref().clone(),
            Some(r) => {
                return Err(file.error(
                    r,
                    format!("spray.target.region '{}' is not a region name", r.get_ref()),
                ));
            }
            None => "us-east-1".to_string(),
        };
        let credentials = required(&self.credentials, "credentials (a shared-credentials file)")?;
        let credentials = file.absolute_path(&credentials, "spray.target.credentials")?;
        let profile = match &self.profile {
            Some(p) if !p.get_ref().trim().is_empty() && !p.get_ref().contains([']', '\n']) => {
                p.get_ref().trim().to_string()
            }
            Some(p) => return Err(file.error(p, "spray.target.profile is not a profile name")),
            None => "default".to_string(),
        };
        let ca_file = self
            .ca_file
            .as_ref()
            .map(|c| file.absolute_path(c, "spray.target.ca_file"))
            .transpose()?;
        let sse = match (&self.sse, &self.sse_kms_key_id) {
            (None, None) => None,
            (None, Some(k)) => {
                return Err(file.error(k, "spray.target.sse_kms_key_id needs sse = \"aws:kms\""));
            }
            (Some(s), key) => match s.get_ref().as_str() {
                "AES256" if key.is_none() => Some(Sse::Aes256),
                "AES256" => {
                    return Err(file.error(
                        key.as_ref().expect("a key"),
                        "spray.target.sse_kms_key_id needs sse = \"aws:kms\"",
                    ));
                }
                "aws:kms" => Some(Sse::Kms {
                    key_id: key.as_ref().map(|k| k.get_ref().clone()),
                }),
                other => {
                    return Err(file.error(
                        s,
                        format!("spray.target.sse '{other}' is not AES256 or aws:kms"),
                    ));
                }
            },
        };
        let files = match &self.files {
            None => Carried::All,
            Some(f) => match f.get_ref().as_str() {
                "all" => Carried::All,
                "snapshot" => Carried::Snapshot,
                "resources" => Carried::Resources,
                other => {
                    return Err(file.error(
                        f,
                        format!("spray.target.files '{other}' is not all, snapshot or resources"),
                    ));
                }
            },
        };
        let part_size = match &self.part_size {
            None => DEFAULT_PART_SIZE,
            Some(p) => {
                let size = file.size(p, "spray.target.part_size")?;
                if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&size) {
                    return Err(file.error(
                        p,
                        "spray.target.part_size must be between 5MiB and 5GiB (S3's limits)",
                    ));
                }
                size
            }
        };
        let object_lock = match (&self.object_lock_mode, &self.object_lock_days) {
            (None, None) => None,
            (Some(mode), Some(days)) => {
                let mode = match mode.get_ref().as_str() {
                    "GOVERNANCE" => LockMode::Governance,
                    "COMPLIANCE" => LockMode::Compliance,
                    other => {
                        return Err(file.error(
                            mode,
                            format!(
                                "spray.target.object_lock_mode '{other}' is not GOVERNANCE or COMPLIANCE"
                            ),
                        ));
                    }
                };
                if *days.get_ref() == 0 {
                    return Err(
                        file.error(days, "spray.target.object_lock_days must be at least 1")
                    );
                }
                Some(ObjectLock {
                    mode,
                    days: *days.get_ref(),
                })
            }
            (Some(mode), None) => {
                return Err(
                    file.error(mode, "spray.target.object_lock_mode needs object_lock_days")
                );
            }
            (None, Some(days)) => {
                return Err(
                    file.error(days, "spray.target.object_lock_days needs object_lock_mode")
                );
            }
        };
        let gc_grace = match &self.gc_grace {
            None => DEFAULT_GC_GRACE,
            Some(g) => file.duration(g, "spray.target.gc_grace", false)?,
        };
        let verify_bandwidth = match &self.verify_bandwidth {
            None => DEFAULT_VERIFY_BANDWIDTH,
            Some(b) => file.size(b, "spray.target.verify_bandwidth")?,
        };
        Ok(TargetConfig::S3(S3Target {
            endpoint: endpoint.into_inner(),
            bucket: bucket.into_inner(),
            prefix,
            region,
            path_style: self.path_style.unwrap_or(true),
            credentials,
            profile,
            ca_file,
            sse,
            files,
            part_size,
            object_lock,
            gc_grace,
            insecure_http,
            verify_every: verify_every(file, &self.verify_every)?,
            verify_bandwidth,
            seal: self.seal.map(Spanned::into_inner),
        }))
    }
}

fn verify_every(
    file: &Source<'_>,
    value: &Option<Spanned<String>>,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(DEFAULT_VERIFY_EVERY),
        Some(v) => file.duration(v, "spray.target.verify_every", true),
    }
}

fn check_endpoint(text: &str, insecure_http: bool) -> Result<(), String> {
    let url: url::Url = text
        .parse()
        .map_err(|e| format!("spray.target.endpoint '{text}' is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!(
            "spray.target.endpoint '{text}' is not an http:// or https:// URL with a host"
        ));
    }
    if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
        return Err(format!(
            "spray.target.endpoint '{text}' must be scheme://host[:port] only (the bucket is its own key)"
        ));
    }
    if url.scheme() == "http" && !insecure_http {
        return Err(format!(
            "spray.target.endpoint '{text}' is plain HTTP: every Secret of the cluster would cross the network in clear text, and the bucket's answers could be changed on the way; use https://, or set insecure_http = true for a server on loopback or in a lab"
        ));
    }
    Ok(())
}

/// S3's bucket naming rules (3–63 of lowercase letters, digits, `.` and `-`, starting and
/// ending with a letter or digit).
fn check_bucket(name: &str) -> Result<(), String> {
    let ok = (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && !name.contains("..");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "spray.target.bucket '{name}' is not a bucket name (3-63 lowercase letters, digits, '.' and '-')"
        ))
    }
}

/// Path segments of letters, digits, `.`, `_` and `-`, joined by `/`; no `.` or `..` segment.
fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Ok(());
    }
    let ok = prefix.len() <= 512
        && prefix.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "spray.target.prefix '{prefix}' is not a key prefix (segments of letters, digits, '.', '_' and '-' joined by '/', none at either end)"
        ))
    }
}

fn is_region(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 64
        && region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
