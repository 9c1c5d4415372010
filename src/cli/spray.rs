//! `spray`: one line per target, and the exit code for the run.

use super::{EXIT_FAILED, EXIT_OK, EXIT_PARTIAL};
use crate::config::Settings;
use anyhow::Result;

pub fn cmd_spray(settings: &Settings) -> Result<u8> {
    let results = crate::spray::run(settings)?;
    let failed = results.iter().filter(|r| r.result.is_err()).count();
    for result in &results {
        match &result.result {
            Ok(stats) => println!(
                "ok      {}  ({} sent, {} bytes, {} on the wire)",
                result.name,
                stats.sent.len(),
                stats.data_bytes,
                stats.wire_bytes
            ),
            Err(error) => println!(
                "FAILED  {}  after {} attempt(s): {error}",
                result.name, result.attempts
            ),
        }
    }
    Ok(match failed {
        0 => EXIT_OK,
        n if n == results.len() => EXIT_FAILED,
        _ => EXIT_PARTIAL,
    })
}
