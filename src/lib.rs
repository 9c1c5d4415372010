//! etcd-backup: verified, rotated etcd backup sets for OpenShift masters.

pub mod config;
pub mod manifest;
pub mod retention;
pub mod store;
pub mod units;
pub mod verify;
