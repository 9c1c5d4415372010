//! Logging: tracing to journald when stderr is connected to the journal (running under
//! systemd), plain stderr otherwise (colour only on a terminal). Fixed MESSAGE_IDs mark the
//! events an operator audits, so `journalctl MESSAGE_ID=…` finds them.

use std::io::IsTerminal;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// `journalctl MESSAGE_ID=<id>` selects one kind of event. Never change a published id.
pub mod message_id {
    pub const BACKUP_SUCCEEDED: &str = "5b1a0c7e3a6d4a2f9a1d2c3e4f5a6b70";
    pub const BACKUP_FAILED: &str = "5b1a0c7e3a6d4a2f9a1d2c3e4f5a6b71";
    pub const SETS_PRUNED: &str = "5b1a0c7e3a6d4a2f9a1d2c3e4f5a6b72";
    pub const SET_SENT: &str = "5b1a0c7e3a6d4a2f9a1d2c3e4f5a6b73";
    pub const TARGET_FAILED: &str = "5b1a0c7e3a6d4a2f9a1d2c3e4f5a6b74";
    pub const SET_RECEIVED: &str = "5b1a0c7e3a6d4a2f9a1d2c3e4f5a6b75";
    /// A target's copy of a set does not match its manifest (`verify --target`).
    pub const COPY_DAMAGED: &str = "5b1a0c7e3a6d4a2f9a1d2c3e4f5a6b76";
    /// A damaged copy on a target was sent again from a sound local set.
    pub const COPY_HEALED: &str = "5b1a0c7e3a6d4a2f9a1d2c3e4f5a6b77";
}

/// Sets up logging for this process; `verbosity` counts `-v` flags (INFO, DEBUG, TRACE).
/// `prefer_journal`: log to journald whenever it is there, even when stderr is elsewhere.
pub fn init(verbosity: u8, prefer_journal: bool) -> bool {
    let level = match verbosity {
        0 => LevelFilter::INFO,
        1 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    if prefer_journal || libsystemd::logging::connected_to_journal() {
        // Without a prefix, a field `message_id` arrives as MESSAGE_ID, `set_id` as SET_ID.
        if let Ok(layer) = tracing_journald::layer() {
            let layer = layer.with_field_prefix(None);
            tracing_subscriber::registry()
                .with(layer)
                .with(level)
                .init();
            return true;
        }
    }
    if json() {
        // One JSON object per line (time, level, fields with message, message_id, set_id…):
        // what a cluster's log stack parses from pod logs.
        let json = tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_current_span(false)
            .with_span_list(false);
        tracing_subscriber::registry().with(json).with(level).init();
        return false;
    }
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time();
    tracing_subscriber::registry()
        .with(stderr)
        .with(level)
        .init();
    false
}

/// `ETCD_BACKUP_LOG_FORMAT=json`: log lines on stderr as JSON objects (Pod Mode sets it).
pub const LOG_FORMAT_ENV: &str = "ETCD_BACKUP_LOG_FORMAT";

/// Whether log lines are JSON (then errors are logged as events too, not printed as text).
pub fn json() -> bool {
    std::env::var_os(LOG_FORMAT_ENV).is_some_and(|v| v == "json")
}
