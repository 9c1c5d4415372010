//! A sender asks what its sets' copies here are worth (`verify --target` of a peer): this
//! receiver checks them itself, as `verify` checks a store, keeps the outcome (a damaged copy
//! is then asked for again when it is next offered) and answers. Only sets of the sender's own
//! origin are checked, at most [`MAX_CHECKED`] a session, under the store lock (a prune must
//! not remove a set under the check); the sender hears every [`crate::protocol::KEEPALIVE`]
//! that the check goes on.

use super::{Who, lock_telling_sender};
use crate::config::Settings;
use crate::protocol::{Conn, CopyOutcome, KEEPALIVE, Message, ProtocolError, Stream};
use crate::store::{LOCK_FILE, Store};
use crate::verify::Checked;
use anyhow::{Result, anyhow};
use std::time::{Duration, Instant};

/// Sets one session may have checked: every set of one origin a master keeps, several times.
pub const MAX_CHECKED: usize = 64;

pub(super) fn copies<S: Stream>(
    settings: &Settings,
    store: &Store,
    conn: &mut Conn<S>,
    who: &Who,
    ids: &[String],
    deep: bool,
) -> Result<()> {
    let _lock = lock_telling_sender(
        conn,
        store,
        LOCK_FILE,
        settings.store.lock_wait,
        "a backup or prune runs here",
    )?;
    let asked: Vec<String> = if ids.is_empty() {
        store
            .list()?
            .sets
            .iter()
            .filter(|s| s.manifest.origin.eq_ignore_ascii_case(who.name))
            .map(|s| s.id().to_string())
            .take(MAX_CHECKED)
            .collect()
    } else {
        ids.to_vec()
    };
    let (theirs, others): (Vec<String>, Vec<String>) = asked.into_iter().partition(|id| {
        crate::manifest::parse_set_id(id).is_some_and(|(_, o)| o.eq_ignore_ascii_case(who.name))
    });
    let checked = checking(conn, || {
        crate::verify::check_store(store, &theirs, deep, None, &mut |_| {})
    })?;
    if let Err(error) = crate::verify::record(store, &checked, deep) {
        tracing::warn!(
            "the check for {} was not recorded: {error:#}",
            who.describe()
        );
    }
    for outcome in checked.iter().filter(|o| o.problem.is_some()) {
        tracing::warn!(
            set_id = %outcome.id,
            sender = %who.name,
            "our copy of set {} is damaged (checked for {}): {}",
            outcome.id,
            who.describe(),
            outcome.problem.as_deref().unwrap_or_default()
        );
    }
    let outcomes = checked
        .into_iter()
        .map(|c: Checked| CopyOutcome {
            id: c.id,
            manifest_sha256: c.manifest_sha256,
            problem: c.problem,
        })
        .chain(others.into_iter().map(|id| CopyOutcome {
            problem: Some(format!("not a set of {}: not checked", who.name)),
            id,
            manifest_sha256: None,
        }))
        .collect();
    conn.send(&Message::Checked { outcomes })?;
    match conn.next_message()? {
        Message::Bye => Ok(()),
        other => Err(ProtocolError::violation(format!(
            "expected bye, got {}",
            super::name(&other)
        ))
        .into()),
    }
}

/// Runs `check` on a thread of its own while this one tells the sender, every keepalive,
/// that it goes on.
fn checking<S: Stream, T: Send>(
    conn: &mut Conn<S>,
    check: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    std::thread::scope(|scope| {
        let worker = scope.spawn(check);
        let mut told = Instant::now();
        while !worker.is_finished() {
            if told.elapsed() >= KEEPALIVE {
                conn.send(&Message::Waiting {
                    reason: "checking the copies".into(),
                })?;
                told = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        worker
            .join()
            .map_err(|_| anyhow!("the check of the copies panicked"))?
    })
}
