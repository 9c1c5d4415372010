//! One integration-test crate (as ripgrep does it) driving the real binary.

mod backup;
mod bbolt;
mod chart;
mod concurrency;
mod config;
#[cfg(feature = "failpoints")]
mod crash;
mod disk_full;
mod docs;
mod drill;
mod hostile_sender;
mod hostile_source;
mod hostile_store;
mod journal;
mod masters;
mod metrics;
mod pods;
mod release;
mod render;
mod restore;
mod seal;
mod spray_dir;
mod spray_s3;
mod spray_ssh;
mod spray_tls;
mod units;
mod util;
mod verify_target;
