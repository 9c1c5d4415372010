//! The payload: every file and unit etcd-backup puts on a master, and what a change to each
//! needs. The MachineConfig writes it out; the node disruption policy is derived from it, so
//! that the two cannot disagree.

use super::image::PinnedImage;
use crate::paths::{
    BINARY as BINARY_PATH, CONFIG_DIR, IMAGE_ENV as IMAGE_ENV_PATH,
    INSTALL_SCRIPT as INSTALL_SCRIPT_PATH, RECEIVE_COMMAND, S3_CREDENTIALS as S3_CREDENTIALS_PATH,
    SIGNING_KEY as SIGNING_KEY_PATH,
};
use anyhow::{Result, anyhow, bail};
use std::path::Path;

/// How the binary reaches the masters: `etcd-backup-install.service` pulls `image` and installs
/// its binary when the binary's sha256 is `binary_sha256`, so the MachineConfig stays small
/// (the binary itself would be over a MiB of it, more than etcd takes in one request with the
/// rest of the pool's configs).
pub struct Delivery<'a> {
    pub image: &'a PinnedImage,
    pub binary_sha256: &'a str,
}

/// What goes into the MachineConfig.
pub struct Inputs<'a> {
    pub name: &'a str,
    pub delivery: Delivery<'a>,
    pub config_toml: &'a str,
    /// When absent, a drop-in sets `host_key_policy = "accept-new"`: the peers' host keys are
    /// not known before the rollout.
    pub known_hosts: Option<&'a str>,
    pub spray_private_key: &'a str,
    pub spray_public_key: &'a str,
    /// An AWS shared-credentials file for the config's S3 targets (a profile per target), put
    /// at [`S3_CREDENTIALS_PATH`].
    pub s3_credentials: Option<&'a str>,
    /// The cluster signing key, put at [`SIGNING_KEY_PATH`].
    pub signing_key: Option<&'a str>,
}

/// What the node disruption policy does when a file changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnChange {
    /// The next timer run reads it.
    Nothing,
    /// Restart the install unit (it installs the newly pinned binary), then the timers.
    Reinstall,
}

#[derive(Debug)]
pub struct File {
    pub path: String,
    pub mode: u32,
    pub contents: Vec<u8>,
    pub on_change: OnChange,
}

#[derive(Debug)]
pub struct Unit {
    pub name: &'static str,
    pub contents: &'static str,
    /// Enabled units are started by systemd (timers, the install unit); the services are
    /// started by their timers.
    pub enabled: bool,
}

#[derive(Debug)]
pub struct Payload {
    pub directories: Vec<String>,
    pub files: Vec<File>,
    pub units: Vec<Unit>,
    /// The line for user core's authorized keys.
    pub authorized_key: String,
}

pub const INSTALL_UNIT: &str = "etcd-backup-install.service";

/// Checks a signing key given to `render machineconfig --signing-key` against the config:
/// `[seal] signing_key` must name [`SIGNING_KEY_PATH`], where it goes. Returns the warning
/// when the config names that path and no key is given (the masters must get it some other
/// way: until then their backups fail).
pub fn check_signing_key(
    seal: &crate::config::SealSettings,
    given: bool,
) -> Result<Option<String>> {
    let reads = seal.signing_key.as_deref() == Some(Path::new(SIGNING_KEY_PATH));
    match (given, reads) {
        (true, false) => bail!(
            "--signing-key is given, but the config's [seal] signing_key is not \"{SIGNING_KEY_PATH}\", where it goes"
        ),
        (false, true) => Ok(Some(format!(
            "[seal] signing_key is {SIGNING_KEY_PATH}, which this MachineConfig does not carry (no --signing-key): the masters must get it some other way, or their backups fail"
        ))),
        _ => Ok(None),
    }
}

/// Checks a credentials file given to `render machineconfig --s3-credentials` against the
/// config's S3 targets: at least one target must read it from [`S3_CREDENTIALS_PATH`], and
/// every such target's profile must be in it with both keys. Errors name targets and
/// profiles, never values. Returns the warnings: targets that read that path when no file is
/// given (the masters must get it some other way).
pub fn check_s3_credentials(
    targets: &[crate::config::TargetConfig],
    credentials: Option<&str>,
) -> Result<Vec<String>> {
    let readers: Vec<&crate::config::S3Target> = targets
        .iter()
        .filter_map(|t| match t {
            crate::config::TargetConfig::S3(s)
                if s.credentials == Path::new(S3_CREDENTIALS_PATH) =>
            {
                Some(s)
            }
            _ => None,
        })
        .collect();
    let Some(text) = credentials else {
        return Ok(readers
            .iter()
            .map(|t| {
                format!(
                    "the s3 target {}/{} reads {S3_CREDENTIALS_PATH}, which this MachineConfig does not carry (no --s3-credentials): the masters must get it some other way",
                    t.endpoint, t.bucket
                )
            })
            .collect());
    };
    if readers.is_empty() {
        bail!(
            "--s3-credentials is given, but no [[spray.target]] kind = \"s3\" reads it: set credentials = \"{S3_CREDENTIALS_PATH}\" in the targets that should use it"
        );
    }
    for t in readers {
        crate::s3::credentials::parse(text, &t.profile).map_err(|e| {
            anyhow!(
                "--s3-credentials: the s3 target {}/{} (profile '{}'): {e}",
                t.endpoint,
                t.bucket,
                t.profile
            )
        })?;
    }
    Ok(Vec::new())
}

/// The units every delivery ships.
const UNITS: [Unit; 6] = [
    Unit {
        name: "etcd-backup.service",
        contents: include_str!("../../systemd/etcd-backup.service"),
        enabled: false,
    },
    Unit {
        name: "etcd-backup.timer",
        contents: include_str!("../../systemd/etcd-backup.timer"),
        enabled: true,
    },
    Unit {
        name: "etcd-backup-spray.service",
        contents: include_str!("../../systemd/etcd-backup-spray.service"),
        enabled: false,
    },
    Unit {
        name: "etcd-backup-spray.timer",
        contents: include_str!("../../systemd/etcd-backup-spray.timer"),
        enabled: true,
    },
    Unit {
        name: "etcd-backup-verify.service",
        contents: include_str!("../../systemd/etcd-backup-verify.service"),
        enabled: false,
    },
    Unit {
        name: "etcd-backup-verify.timer",
        contents: include_str!("../../systemd/etcd-backup-verify.timer"),
        enabled: true,
    },
];

const INSTALL: Unit = Unit {
    name: INSTALL_UNIT,
    contents: include_str!("../../systemd/etcd-backup-install.service"),
    enabled: true,
};
const INSTALL_SCRIPT: &str = include_str!("../../packaging/etcd-backup-install");

/// The timers, which a policy restarts after a reinstall.
pub fn timers() -> impl Iterator<Item = &'static str> {
    UNITS.iter().filter(|u| u.enabled).map(|u| u.name)
}

/// The string the cluster-etcd-operator marks its own files with; the etcd pod deletes files in
/// /usr/local/bin that carry it. Kept reversed so that this binary does not contain it (split
/// literals do not help: the compiler lays them out side by side).
pub(super) fn etcd_operator_marker() -> Vec<u8> {
    "rotarepo-dcte-retsulc yb detaerC ###"
        .bytes()
        .rev()
        .collect()
}

fn carries_marker(bytes: &[u8]) -> bool {
    let marker = etcd_operator_marker();
    bytes.windows(marker.len()).any(|w| w == marker.as_slice())
}

pub fn payload(inputs: &Inputs<'_>) -> Result<Payload> {
    let file = |path: &str, mode, contents: &[u8], on_change| File {
        path: path.to_string(),
        mode,
        contents: contents.to_vec(),
        on_change,
    };
    let mut files = Vec::new();
    let mut units: Vec<Unit> = Vec::new();
    let Delivery {
        image,
        binary_sha256,
    } = &inputs.delivery;
    if binary_sha256.len() != 64 || !binary_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("the binary's sha256 must be 64 hex digits, not '{binary_sha256}'");
    }
    let env = format!(
        "# Rendered by etcd-backup {} (render machineconfig --image): the image that\n\
         # {INSTALL_UNIT} installs {BINARY_PATH} from, and the sha256 the binary must have.\n\
         ETCD_BACKUP_IMAGE={image}\nETCD_BACKUP_SHA256={}\n",
        crate::VERSION,
        binary_sha256.to_ascii_lowercase()
    );
    files.push(file(
        IMAGE_ENV_PATH,
        0o600,
        env.as_bytes(),
        OnChange::Reinstall,
    ));
    debug_assert!(!carries_marker(INSTALL_SCRIPT.as_bytes()));
    files.push(file(
        INSTALL_SCRIPT_PATH,
        0o755,
        INSTALL_SCRIPT.as_bytes(),
        OnChange::Reinstall,
    ));
    units.push(INSTALL);
    files.push(file(
        &format!("{CONFIG_DIR}/config.toml"),
        0o600,
        inputs.config_toml.as_bytes(),
        OnChange::Nothing,
    ));
    files.push(file(
        &format!("{CONFIG_DIR}/spray_key"),
        0o600,
        inputs.spray_private_key.as_bytes(),
        OnChange::Nothing,
    ));
    match inputs.known_hosts {
        Some(known_hosts) => files.push(file(
            &format!("{CONFIG_DIR}/known_hosts"),
            0o600,
            known_hosts.as_bytes(),
            OnChange::Nothing,
        )),
        None => files.push(file(
            &format!("{CONFIG_DIR}/config.d/50-host-key-policy.toml"),
            0o600,
            b"# Rendered by etcd-backup: the peers' host keys are not known before the rollout.\n\
              # Pin each on first contact, refuse any later change.\n[spray]\nhost_key_policy = \"accept-new\"\n",
            OnChange::Nothing,
        )),
    }
    if let Some(credentials) = inputs.s3_credentials {
        files.push(file(
            S3_CREDENTIALS_PATH,
            0o600,
            credentials.as_bytes(),
            OnChange::Nothing,
        ));
    }
    if let Some(key) = inputs.signing_key {
        files.push(file(
            SIGNING_KEY_PATH,
            0o600,
            key.as_bytes(),
            OnChange::Nothing,
        ));
    }
    units.extend(UNITS);
    Ok(Payload {
        directories: vec![CONFIG_DIR.to_string(), format!("{CONFIG_DIR}/config.d")],
        files,
        units,
        authorized_key: format!(
            "restrict,command=\"{RECEIVE_COMMAND}\" {}",
            inputs.spray_public_key.trim()
        ),
    })
}

/// Every path and unit any delivery can put on a master, with what a change to it needs: the
/// node disruption policy lists exactly these.
pub fn everything() -> (Vec<(String, OnChange)>, Vec<Unit>) {
    let image = super::image::parse_pinned(&format!("x@sha256:{}", "0".repeat(64)))
        .expect("a valid reference");
    let zeros = "0".repeat(64);
    let mut paths: Vec<(String, OnChange)> = Vec::new();
    let mut units: Vec<Unit> = Vec::new();
    // With and without known_hosts (without: the accept-new drop-in).
    for (known_hosts, s3_credentials, signing_key) in
        [(None, Some(""), Some("")), (Some(""), None, None)]
    {
        let payload = payload(&Inputs {
            name: "",
            delivery: Delivery {
                image: &image,
                binary_sha256: &zeros,
            },
            config_toml: "",
            known_hosts,
            spray_private_key: "",
            spray_public_key: "",
            s3_credentials,
            signing_key,
        })
        .expect("the payload of empty inputs");
        for file in payload.files {
            if !paths.iter().any(|(p, _)| *p == file.path) {
                paths.push((file.path, file.on_change));
            }
        }
        for unit in payload.units {
            if !units.iter().any(|u| u.name == unit.name) {
                units.push(unit);
            }
        }
    }
    (paths, units)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(toml: &str) -> Vec<crate::config::TargetConfig> {
        let source = (std::path::PathBuf::from("/c.toml"), toml.to_string());
        crate::config::Settings::from_sources("n".into(), &[source])
            .unwrap()
            .spray
            .targets
    }

    #[test]
    fn s3_credentials_are_checked_against_the_targets_that_read_them() {
        let s3 = |bucket: &str, credentials: &str, profile: &str| {
            format!(
                "[[spray.target]]\nkind = \"s3\"\nendpoint = \"http://s3.lab:8333\"\n\
                 bucket = \"{bucket}\"\ncredentials = \"{credentials}\"\nprofile = \"{profile}\"\n\
                 insecure_http = true\n"
            )
        };
        let both = format!(
            "{}{}",
            s3("a-bucket", S3_CREDENTIALS_PATH, "default"),
            s3("b-bucket", S3_CREDENTIALS_PATH, "offsite")
        );
        let elsewhere = s3("c-bucket", "/etc/other-credentials", "default");
        let good = "[default]\naws_access_key_id = AK1\naws_secret_access_key = SECRET1\n\
                    [offsite]\naws_access_key_id = AK2\naws_secret_access_key = SECRET2\n";
        let no_offsite = "[default]\naws_access_key_id = AK1\naws_secret_access_key = SECRET1\n";
        let no_secret = "[default]\naws_access_key_id = AK1\n[offsite]\naws_access_key_id = AK2\naws_secret_access_key = SECRET2\n";
        // (config, file, Ok(number of warnings) or Err(what the error must say))
        let cases: [(&str, Option<&str>, Result<usize, &str>); 6] = [
            (&both, Some(good), Ok(0)),
            (&both, None, Ok(2)),
            (&elsewhere, None, Ok(0)),
            (&both, Some(no_offsite), Err("b-bucket (profile 'offsite')")),
            (&both, Some(no_secret), Err("a-bucket (profile 'default')")),
            (
                &elsewhere,
                Some(good),
                Err("no [[spray.target]] kind = \"s3\" reads it"),
            ),
        ];
        for (config, file, want) in cases {
            let got = check_s3_credentials(&targets(config), file);
            match (got, want) {
                (Ok(warnings), Ok(n)) => {
                    assert_eq!(warnings.len(), n, "{warnings:?}");
                    assert!(warnings.iter().all(|w| w.contains(S3_CREDENTIALS_PATH)));
                }
                (Err(e), Err(needle)) => {
                    let e = format!("{e:#}");
                    assert!(e.contains(needle), "{e}");
                    assert!(
                        !e.contains("SECRET") && !e.contains("AK"),
                        "a value leaked: {e}"
                    );
                }
                (got, want) => panic!("{config}\n{file:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn s3_credentials_go_to_their_path_0600_and_the_policy_names_it() {
        let image = crate::render::image::parse_pinned(&format!(
            "registry.example/etcd-backup@sha256:{}",
            "a".repeat(64)
        ))
        .unwrap();
        let zeros = "0".repeat(64);
        let made = payload(&Inputs {
            name: "n",
            delivery: Delivery {
                image: &image,
                binary_sha256: &zeros,
            },
            config_toml: "",
            known_hosts: None,
            spray_private_key: "",
            spray_public_key: "ecdsa-sha2-nistp256 AAAA k\n",
            s3_credentials: Some("[default]\n"),
            signing_key: None,
        })
        .unwrap();
        let file = made
            .files
            .iter()
            .find(|f| f.path == S3_CREDENTIALS_PATH)
            .expect("the credentials file");
        assert_eq!(file.mode, 0o600);
        assert!(everything().0.iter().any(|(p, _)| p == S3_CREDENTIALS_PATH));
    }

    #[test]
    fn the_install_script_and_units_do_not_carry_the_operator_marker() {
        assert!(!carries_marker(INSTALL_SCRIPT.as_bytes()));
        for unit in UNITS.iter().chain([&INSTALL]) {
            assert!(!carries_marker(unit.contents.as_bytes()), "{}", unit.name);
        }
    }

    #[test]
    fn image_delivery_pins_and_installs() {
        let image =
            super::super::image::parse_pinned(&format!("r/x@sha256:{}", "a".repeat(64))).unwrap();
        let sha = "b".repeat(64);
        let inputs = |delivery| Inputs {
            name: "n",
            delivery,
            config_toml: "",
            known_hosts: None,
            spray_private_key: "",
            spray_public_key: "ecdsa-sha2-nistp256 AAAA k\n",
            s3_credentials: None,
            signing_key: None,
        };
        let pinned = payload(&inputs(Delivery {
            image: &image,
            binary_sha256: &sha,
        }))
        .unwrap();
        assert!(!pinned.files.iter().any(|f| f.path == BINARY_PATH));
        let env = pinned
            .files
            .iter()
            .find(|f| f.path == IMAGE_ENV_PATH)
            .unwrap();
        let env = String::from_utf8(env.contents.clone()).unwrap();
        assert!(
            env.contains(&format!("\nETCD_BACKUP_IMAGE={image}\n")),
            "{env}"
        );
        assert!(
            env.contains(&format!("\nETCD_BACKUP_SHA256={sha}\n")),
            "{env}"
        );
        assert!(
            pinned
                .units
                .iter()
                .any(|u| u.name == INSTALL_UNIT && u.enabled)
        );
        assert_eq!(
            pinned.authorized_key,
            format!("restrict,command=\"{RECEIVE_COMMAND}\" ecdsa-sha2-nistp256 AAAA k")
        );

        let bad = payload(&inputs(Delivery {
            image: &image,
            binary_sha256: "abc",
        }));
        assert!(bad.unwrap_err().to_string().contains("64 hex digits"));
    }

    #[test]
    fn everything_lists_each_path_once_and_not_the_binary() {
        let (paths, units) = everything();
        // The install unit writes the binary, not the machine-config daemon.
        assert!(!paths.iter().any(|(p, _)| p == BINARY_PATH));
        for path in [IMAGE_ENV_PATH, INSTALL_SCRIPT_PATH] {
            assert_eq!(paths.iter().filter(|(p, _)| p == path).count(), 1, "{path}");
        }
        assert!(paths.iter().any(|(p, _)| p.ends_with("/known_hosts")));
        assert!(
            paths
                .iter()
                .any(|(p, _)| p.ends_with("/50-host-key-policy.toml"))
        );
        assert_eq!(units.len(), 7);
    }
}
