//! What a set's resources archive says of its cluster, read in the same pass that checks it:
//! whether etcd encryption at rest is on and with which provider (the kube-apiserver operator
//! puts the EncryptionConfiguration, JSON, at
//! `kube-apiserver-pod-<N>/secrets/encryption-config/encryption-config`; with it the archive
//! holds the keys that open the snapshot's Secrets), and when the etcd certificates of
//! `etcd-pod-<N>` are valid (`secrets/etcd-all-certs/*.crt` are the members' serving, peer and
//! metrics certificates; `configmaps/*/*.crt` the CA bundles, the oldest of them as old as the
//! cluster). Key material is never kept, printed or logged.

use super::{Certificates, Encryption};
use chrono::{DateTime, Utc};
use std::io::Read;

/// The largest file read out of an archive for these facts, and the most certificates kept.
const MAX_FILE_BYTES: u64 = 1 << 20;
const MAX_CERTIFICATES: usize = 1024;
/// What a file of the archive is to these facts.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    EncryptionConfig,
    Leaf,
    Bundle,
}

/// `static-pod-resources/<pod>-<N>/…` → what the file is, if it is one we read.
fn kind_of(path: &str) -> Option<Kind> {
    let rest = path.strip_prefix("static-pod-resources/")?;
    let (dir, inside) = rest.split_once('/')?;
    if dir.starts_with("kube-apiserver-pod-")
        && inside == "secrets/encryption-config/encryption-config"
    {
        return Some(Kind::EncryptionConfig);
    }
    if !dir.starts_with("etcd-pod-") || !inside.ends_with(".crt") {
        return None;
    }
    if inside.starts_with("secrets/") {
        Some(Kind::Leaf)
    } else if inside.starts_with("configmaps/") {
        Some(Kind::Bundle)
    } else {
        None
    }
}

#[derive(serde::Deserialize)]
struct EncryptionConfiguration {
    #[serde(default)]
    resources: Vec<ResourceConfiguration>,
}

#[derive(serde::Deserialize)]
struct ResourceConfiguration {
    #[serde(default)]
    resources: Vec<String>,
    /// Each provider is an object of one key (`aescbc`, `aesgcm`, `secretbox`, `kms`,
    /// `identity`); what is inside (the keys) is skipped unread.
    #[serde(default)]
    providers: Vec<std::collections::BTreeMap<String, serde::de::IgnoredAny>>,
}

/// The provider that writes (the first of the list) and the resources it covers; a
/// configuration whose first providers are all `identity` is encryption off.
pub fn encryption(json: &[u8]) -> Result<Encryption, String> {
    let config: EncryptionConfiguration = serde_json::from_slice(json)
        .map_err(|e| format!("the encryption configuration is not readable JSON: {e}"))?;
    let mut provider = None;
    let mut resources = Vec::new();
    for rc in &config.resources {
        let Some(first) = rc.providers.first().and_then(|p| p.keys().next()) else {
            continue;
        };
        if first == "identity" {
            continue;
        }
        if !first.bytes().all(|b| b.is_ascii_alphanumeric()) || first.len() > 32 {
            return Err("the encryption configuration names an unknown provider".to_string());
        }
        provider.get_or_insert_with(|| first.clone());
        resources.extend(
            rc.resources
                .iter()
                .filter(|r| r.len() <= 253 && r.bytes().all(|b| b.is_ascii_graphic()))
                .take(64)
                .cloned(),
        );
    }
    Ok(match provider {
        Some(provider) => Encryption {
            provider,
            resources,
        },
        None => Encryption::off(),
    })
}

fn unix_time(t: &openssl::asn1::Asn1TimeRef) -> Option<DateTime<Utc>> {
    let epoch = openssl::asn1::Asn1Time::from_unix(0).ok()?;
    let diff = epoch.diff(t).ok()?;
    DateTime::from_timestamp(i64::from(diff.days) * 86_400 + i64::from(diff.secs), 0)
}

/// One certificate's validity.
#[derive(Debug, Clone, Copy)]
struct Validity {
    leaf: bool,
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
}

/// Collects the facts while the archive is read; [`Scan::finish`] sums them up.
#[derive(Default)]
pub struct Scan {
    encryption: Option<Result<Encryption, String>>,
    certificates: Vec<Validity>,
    problems: Vec<String>,
}

impl Scan {
    /// One entry of the archive: read (up to a bound) when it is a file these facts need.
    pub fn entry(&mut self, path: &str, size: u64, reader: &mut dyn Read) -> std::io::Result<()> {
        let Some(kind) = kind_of(path) else {
            return Ok(());
        };
        if size > MAX_FILE_BYTES {
            self.problems
                .push(format!("'{path}' is over {MAX_FILE_BYTES} bytes: not read"));
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(size as usize);
        reader.take(MAX_FILE_BYTES).read_to_end(&mut bytes)?;
        match kind {
            Kind::EncryptionConfig => {
                let found = encryption(&bytes).map_err(|e| format!("'{path}': {e}"));
                // Newer revisions come later in a tar of `ls`-sorted dirs; either way one.
                self.encryption = Some(found);
                zeroize::Zeroize::zeroize(&mut bytes);
            }
            Kind::Leaf | Kind::Bundle => match openssl::x509::X509::stack_from_pem(&bytes) {
                Ok(certs) if !certs.is_empty() => {
                    for cert in certs {
                        if self.certificates.len() >= MAX_CERTIFICATES {
                            break;
                        }
                        match (unix_time(cert.not_before()), unix_time(cert.not_after())) {
                            (Some(not_before), Some(not_after)) => {
                                self.certificates.push(Validity {
                                    leaf: kind == Kind::Leaf,
                                    not_before,
                                    not_after,
                                })
                            }
                            _ => self
                                .problems
                                .push(format!("'{path}': a certificate's dates are unreadable")),
                        }
                    }
                }
                _ => self
                    .problems
                    .push(format!("'{path}' holds no PEM certificate")),
            },
        }
        Ok(())
    }

    /// The encryption at rest (no configuration in the archive: off) and the certificates'
    /// window; an `Err` says why a fact could not be learned.
    pub fn finish(self) -> Facts {
        let leaves: Vec<_> = self.certificates.iter().filter(|c| c.leaf).collect();
        let certificates = match (
            leaves.iter().map(|c| c.not_before).max(),
            leaves.iter().map(|c| c.not_after).min(),
            self.certificates.iter().map(|c| c.not_before).min(),
        ) {
            (Some(not_before), Some(not_after), Some(first_issued)) => Ok(Certificates {
                count: self.certificates.len() as u32,
                first_issued,
                not_before,
                not_after,
            }),
            _ => Err(match self.problems.first() {
                Some(p) => {
                    format!("no etcd certificate in the archive's etcd-pod-<N>/secrets ({p})")
                }
                None => "no etcd certificate in the archive's etcd-pod-<N>/secrets".to_string(),
            }),
        };
        Facts {
            encryption: self.encryption.unwrap_or_else(|| Ok(Encryption::off())),
            certificates,
        }
    }
}

/// What [`Scan`] learned.
#[derive(Debug)]
pub struct Facts {
    pub encryption: Result<Encryption, String>,
    pub certificates: Result<Certificates, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_read_are_those_of_the_operators_layout() {
        use Kind::*;
        for (path, kind) in [
            (
                "static-pod-resources/kube-apiserver-pod-7/secrets/encryption-config/encryption-config",
                Some(EncryptionConfig),
            ),
            (
                "static-pod-resources/etcd-pod-3/secrets/etcd-all-certs/etcd-peer-master-0.crt",
                Some(Leaf),
            ),
            (
                "static-pod-resources/etcd-pod-3/configmaps/etcd-all-bundles/server-ca-bundle.crt",
                Some(Bundle),
            ),
            (
                "static-pod-resources/etcd-pod-3/secrets/etcd-all-certs/etcd-peer-master-0.key",
                None,
            ),
            (
                "static-pod-resources/kube-apiserver-pod-7/secrets/serving-cert/tls.crt",
                None,
            ),
            ("etc/encryption-config", None),
        ] {
            assert_eq!(kind_of(path), kind, "{path}");
        }
    }

    #[test]
    fn the_writing_provider_is_the_first_that_is_not_identity() {
        // As library-go writes it: the writing key first, the identity provider to read old data.
        let aescbc = br#"{"kind":"EncryptionConfiguration","apiVersion":"apiserver.config.k8s.io/v1",
          "resources":[{"resources":["secrets","configmaps"],"providers":[
            {"aescbc":{"keys":[{"name":"1","secret":"c2VjcmV0IGtleSBtYXRlcmlhbCBvZiAzMiBieXRlcyE="}]}},
            {"identity":{}}]},
           {"resources":["routes.route.openshift.io"],"providers":[{"aescbc":{"keys":[]}},{"identity":{}}]}]}"#;
        let e = encryption(aescbc).unwrap();
        assert_eq!(e.provider, "aescbc");
        assert_eq!(
            e.resources,
            ["secrets", "configmaps", "routes.route.openshift.io"]
        );
        assert!(e.is_on());
        // Turned off again: identity writes, aescbc still reads.
        let off = br#"{"resources":[{"resources":["secrets"],"providers":[{"identity":{}},{"aescbc":{"keys":[]}}]}]}"#;
        assert!(!encryption(off).unwrap().is_on());
        assert!(encryption(b"provider: aescbc").is_err());
    }

    #[test]
    fn the_key_never_reaches_the_facts() {
        let json = br#"{"resources":[{"resources":["secrets"],"providers":[{"aesgcm":{"keys":[{"name":"k","secret":"VERYSECRETVALUE"}]}}]}]}"#;
        let e = encryption(json).unwrap();
        assert!(!format!("{e:?}").contains("VERYSECRETVALUE"));
    }
}
