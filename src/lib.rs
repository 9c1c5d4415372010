//! etcd-backup: verified, rotated etcd backup sets for OpenShift masters.
//!
//! `main.rs` only calls [`cli::main`]; everything else lives here so `tests/` can reach it.

pub mod backup;
pub mod bbolt;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod deadline;
pub mod failpoint;
pub mod failure;
pub mod fetch;
pub mod files;
pub mod hash;
pub mod logging;
pub mod manifest;
pub mod metrics;
pub mod paths;
pub mod peers;
pub mod priority;
pub mod protocol;
pub mod prune;
pub mod receive;
pub mod render;
pub mod restore;
pub mod retention;
pub mod s3;
pub mod seal;
pub mod spray;
pub mod stage;
pub mod status;
pub mod store;
pub mod takeover;
pub mod targets;
pub mod transport;
pub mod units;
pub mod verify;

/// The version `--version`, manifests and rendered objects report: `ETCD_BACKUP_VERSION` at build
/// time (a release pipeline stamps `0.1.0+git.<rev>` so that the image label and the binary
/// agree), else the crate's version.
pub const VERSION: &str = match option_env!("ETCD_BACKUP_VERSION") {
    Some(version) => version,
    None => env!("CARGO_PKG_VERSION"),
};
