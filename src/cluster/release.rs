//! The OpenShift release a node runs, from its own disk: the machine-config daemon writes the
//! rendered MachineConfig it applied to `/etc/machine-config-daemon/currentconfig` (before the
//! daemon's first run, the server's copy is `/etc/mcs-machine-config-content.json`), and the
//! controller annotates every rendered config with the release it rendered it for
//! (`machineconfiguration.openshift.io/release-image-version`, e.g. `4.18.7`).

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

pub const CURRENT_CONFIG: &str = "etc/machine-config-daemon/currentconfig";
pub const FIRST_BOOT_CONFIG: &str = "etc/mcs-machine-config-content.json";
pub const ANNOTATION: &str = "machineconfiguration.openshift.io/release-image-version";
/// A rendered MachineConfig carries every file of the node as a data URL: megabytes.
const MAX_CONFIG_BYTES: u64 = 64 << 20;

#[derive(serde::Deserialize)]
struct Rendered {
    metadata: Metadata,
}

#[derive(serde::Deserialize)]
struct Metadata {
    #[serde(default)]
    name: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// `4.18.7`, `4.19.0-ec.3`, `4.18.0-0.nightly-2025-01-01-000000`: digits first, then what a
/// release version holds; bounded.
pub fn is_release(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.as_bytes()[0].is_ascii_digit()
        && v.contains('.')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
}

/// `(major, minor)` of a release, `4.18.7` → `(4, 18)`.
pub fn minor(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.split(['.', '-', '+']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The release a rendered MachineConfig (JSON) was rendered for.
pub fn parse(reader: impl Read) -> Result<String> {
    let rendered: Rendered =
        serde_json::from_reader(reader).context("not a MachineConfig in JSON")?;
    match rendered.metadata.annotations.get(ANNOTATION) {
        Some(v) if is_release(v) => Ok(v.clone()),
        Some(v) => bail!(
            "its annotation {ANNOTATION} is not a release version: {:?}",
            v.chars().take(80).collect::<String>()
        ),
        None => bail!(
            "MachineConfig '{}' has no annotation {ANNOTATION}",
            rendered.metadata.name
        ),
    }
}

/// The release of the node whose `/` is `root`.
pub fn learn(root: &Path) -> Result<String> {
    let mut last = None;
    for name in [CURRENT_CONFIG, FIRST_BOOT_CONFIG] {
        let path = root.join(name);
        match crate::files::open_regular(&path) {
            Ok(file) => {
                return parse(std::io::BufReader::new(file.take(MAX_CONFIG_BYTES)))
                    .with_context(|| format!("'{}'", path.display()));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("two paths tried")).context("no rendered MachineConfig on this node")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_release_annotation_of_a_rendered_config() {
        let json = r#"{"kind":"MachineConfig","apiVersion":"machineconfiguration.openshift.io/v1",
            "metadata":{"name":"rendered-master-5de4","annotations":{
              "machineconfiguration.openshift.io/generated-by-controller-version":"5bdb5748",
              "machineconfiguration.openshift.io/release-image-version":"4.18.7"}},
            "spec":{"config":{"ignition":{"version":"3.4.0"},"storage":{"files":[]}}}}"#;
        assert_eq!(parse(json.as_bytes()).unwrap(), "4.18.7");
    }

    #[test]
    fn a_config_without_the_annotation_or_with_junk_says_so() {
        let none = r#"{"metadata":{"name":"rendered-master-1","annotations":{}}}"#;
        let err = format!("{:#}", parse(none.as_bytes()).unwrap_err());
        assert!(
            err.contains("rendered-master-1") && err.contains(ANNOTATION),
            "{err}"
        );
        let junk = r#"{"metadata":{"annotations":{"machineconfiguration.openshift.io/release-image-version":"4.18\u001b[31m"}}}"#;
        assert!(parse(junk.as_bytes()).is_err());
        assert!(parse(&b"not json"[..]).is_err());
    }

    #[test]
    fn release_versions_and_their_minor() {
        for v in [
            "4.18.7",
            "4.19.0-ec.3",
            "4.18.0-0.nightly-2025-01-01-000000",
        ] {
            assert!(is_release(v), "{v}");
        }
        for v in ["", "4", "v4.18.7", "4.18.7 ", "4.18/7"] {
            assert!(!is_release(v), "{v}");
        }
        assert_eq!(minor("4.18.7"), Some((4, 18)));
        assert_eq!(minor("4.9.0-ec.3"), Some((4, 9)));
        assert_eq!(minor("4"), None);
    }
}
