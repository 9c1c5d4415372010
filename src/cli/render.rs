//! `render`: the objects that install etcd-backup on OpenShift, printed to stdout.

use super::EXIT_OK;
use crate::render;
use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum RenderCmd {
    /// A MachineConfig for the master pool: config, spray key, units, core's key, and the binary
    /// (installed from a pinned image by default)
    Machineconfig(Box<MachineconfigArgs>),
    /// The OpenShift 4.17+ node disruption policy: timer restarts instead of reboots
    NodeDisruptionPolicy,
    /// Man pages of etcd-backup and each of its commands into DIR (what the image ships in
    /// /usr/share/man/man1)
    Man {
        /// An existing directory
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// A shell completion script, on stdout
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, clap::Args)]
pub struct MachineconfigArgs {
    /// The config.toml every master gets (validated; must not set node.name)
    #[arg(long, value_name = "FILE")]
    node_config: PathBuf,
    /// The image the masters install the binary from, pinned by digest (a tag alone is refused)
    #[arg(long, value_name = "REF@sha256:DIGEST", value_parser = render::image::parse_pinned)]
    image: render::image::PinnedImage,
    /// The sha256 the installed binary must have [default: the sha256 of --binary]
    #[arg(long, value_name = "HEX", conflicts_with = "binary")]
    binary_sha256: Option<String>,
    /// The binary the image was built from [default: this one]
    #[arg(long, value_name = "FILE")]
    binary: Option<PathBuf>,
    /// The spray private key (ECDSA P-256 recommended) [default: generate a fresh one]
    #[arg(long, value_name = "FILE")]
    spray_key: Option<PathBuf>,
    /// The peers' host keys; without it the config pins them on first contact (accept-new)
    #[arg(long, value_name = "FILE")]
    known_hosts: Option<PathBuf>,
    /// An AWS shared-credentials file (0600) for the S3 targets whose credentials are
    /// /etc/etcd-backup/s3-credentials, a profile per target
    #[arg(long, value_name = "FILE")]
    s3_credentials: Option<PathBuf>,
    /// The cluster signing key (etcd-backup keygen --signing, 0600), for a config whose
    /// [seal] signing_key is /etc/etcd-backup/signing_key
    #[arg(long, value_name = "FILE")]
    signing_key: Option<PathBuf>,
    #[arg(long, default_value = "99-master-etcd-backup")]
    name: String,
}

pub fn cmd_render(what: &RenderCmd) -> Result<u8> {
    let args = match what {
        RenderCmd::Machineconfig(args) => &**args,
        RenderCmd::NodeDisruptionPolicy => {
            print!("{}", render::node_disruption_policy());
            return Ok(EXIT_OK);
        }
        RenderCmd::Man { dir } => {
            clap_mangen::generate_to(super::command(), dir)
                .with_context(|| format!("cannot write man pages into '{}'", dir.display()))?;
            return Ok(EXIT_OK);
        }
        RenderCmd::Completions { shell } => {
            let mut command = super::command();
            clap_complete::generate(*shell, &mut command, "etcd-backup", &mut std::io::stdout());
            return Ok(EXIT_OK);
        }
    };
    let rendered = render::machineconfig_from(&render::Request {
        node_config: args.node_config.clone(),
        image: args.image.clone(),
        binary_sha256: args.binary_sha256.clone(),
        binary: args.binary.clone(),
        spray_key: args.spray_key.clone(),
        known_hosts: args.known_hosts.clone(),
        s3_credentials: args.s3_credentials.clone(),
        signing_key: args.signing_key.clone(),
        name: args.name.clone(),
    })?;
    eprintln!("{}", rendered.summary);
    if let Some(warning) = &rendered.over_budget {
        tracing::warn!(bytes = rendered.yaml.len(), "{warning}");
    }
    print!("{}", rendered.yaml);
    Ok(EXIT_OK)
}
