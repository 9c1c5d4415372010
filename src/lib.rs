//! etcd-backup: verified, rotated etcd backup sets for OpenShift masters.

pub mod retention;
pub mod units;
