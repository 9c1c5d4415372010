//! `render machineconfig` from the files an admin names: reads and checks each (the node config
//! with the loader the masters use), builds the MachineConfig, and holds it to the size policy.

use super::image::PinnedImage;
use crate::config::{ConfigError, Settings};
use crate::verify::hash_file;
use anyhow::{Context, Result};
use std::path::PathBuf;

/// What the admin asked for: paths as given on the command line.
#[derive(Debug)]
pub struct Request {
    pub node_config: PathBuf,
    pub image: PinnedImage,
    pub binary_sha256: Option<String>,
    pub binary: Option<PathBuf>,
    pub spray_key: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub s3_credentials: Option<PathBuf>,
    pub signing_key: Option<PathBuf>,
    pub name: String,
}

/// The MachineConfig, a one-line summary of it for stderr, and the size warning that follows.
#[derive(Debug)]
pub struct Rendered {
    pub yaml: String,
    pub summary: String,
    pub over_budget: Option<String>,
}

/// Reads the files of `request` and renders the MachineConfig; refuses a node config that pins
/// `node.name`.
pub fn machineconfig_from(request: &Request) -> Result<Rendered> {
    let Request {
        node_config,
        image,
        binary_sha256,
        binary,
        spray_key,
        known_hosts,
        s3_credentials,
        signing_key,
        name,
    } = request;
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).with_context(|| format!("cannot read '{}'", path.display()))
    };
    let config_toml = read(node_config)?;
    // The same loader the masters use; an empty hostname shows whether node.name is pinned.
    let settings =
        Settings::from_sources(String::new(), &[(node_config.clone(), config_toml.clone())])?;
    if !settings.node_name.is_empty() {
        return Err(ConfigError(format!(
            "{}: node.name is set, but every master gets this file: leave it out (each master uses its hostname)",
            node_config.display()
        ))
        .into());
    }
    let sha256 = match binary_sha256 {
        Some(hex) => hex.to_ascii_lowercase(),
        None => {
            let path = match binary {
                Some(path) => path.clone(),
                None => std::env::current_exe().context("cannot find this binary's path")?,
            };
            hash_file(&path)
                .with_context(|| format!("cannot hash '{}'", path.display()))?
                .hex()
        }
    };
    let delivery = super::Delivery {
        image,
        binary_sha256: &sha256,
    };
    let (private, public) = match spray_key {
        Some(path) => (read(path)?, super::public_key_of(path)?),
        None => super::generate_keypair()?,
    };
    let known_hosts = known_hosts.as_ref().map(read).transpose()?;
    if known_hosts.is_none() {
        tracing::warn!("{}", super::ACCEPT_NEW_WARNING);
    }
    let s3_credentials = s3_credentials
        .as_deref()
        .map(crate::s3::credentials::read_private)
        .transpose()?;
    for warning in super::check_s3_credentials(&settings.spray.targets, s3_credentials.as_deref())?
    {
        tracing::warn!("{warning}");
    }
    if let Some(warning) = super::check_signing_key(&settings.seal, signing_key.is_some())? {
        tracing::warn!("{warning}");
    }
    // Checked as the masters will read it: an unencrypted Ed25519 key, owner-only.
    if let Some(path) = signing_key {
        crate::seal::keys::load_signing_key(path)?;
    }
    let signing_key = signing_key.as_ref().map(read).transpose()?;
    let yaml = super::machineconfig(&super::Inputs {
        name,
        delivery,
        config_toml: &config_toml,
        known_hosts: known_hosts.as_deref(),
        spray_private_key: &private,
        spray_public_key: &public,
        s3_credentials: s3_credentials.as_deref(),
        signing_key: signing_key.as_deref(),
    })?;
    let kib = yaml.len() >> 10;
    let summary = format!(
        "MachineConfig {name}: {kib} KiB; the masters install the binary with sha256 {sha256} from {}",
        image.reference
    );
    let over_budget = (yaml.len() > super::IMAGE_MACHINECONFIG_BUDGET_BYTES).then(|| {
        format!(
            "the MachineConfig is {kib} KiB, over its {} KiB budget",
            super::IMAGE_MACHINECONFIG_BUDGET_BYTES >> 10
        )
    });
    Ok(Rendered {
        yaml,
        summary,
        over_budget,
    })
}
