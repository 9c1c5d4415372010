//! `backup` and `prune`: the set committed, the retention decisions.

use super::{EXIT_OK, report};
use crate::config::Settings;
use crate::logging::message_id;
use anyhow::Result;

/// A failed backup, whatever the cause (busy store included), is one BACKUP_FAILED entry.
pub fn cmd_backup(settings: &Settings, journal: bool) -> u8 {
    match crate::backup::run(settings) {
        Ok(set) => {
            if let Some(set) = set {
                println!("{}", set.id());
            }
            EXIT_OK
        }
        Err(error) => report(
            &error.context("backup failed"),
            journal,
            Some(message_id::BACKUP_FAILED),
        ),
    }
}

pub fn cmd_prune(settings: &Settings, dry_run: bool) -> Result<u8> {
    let plan = crate::prune::run(settings, dry_run)?;
    for decision in &plan.decisions {
        let reasons: Vec<String> = decision
            .keep_reasons
            .iter()
            .map(|r| r.to_string())
            .collect();
        match decision.delete {
            None => println!("keep    {}  ({})", decision.set.id, reasons.join(", ")),
            Some(reason) => println!(
                "{}  {}  ({reason})",
                if dry_run { "would delete" } else { "deleted" },
                decision.set.id
            ),
        }
    }
    if let Some(reason) = plan.pressure_unmet {
        println!("warning: {reason} even after pruning every set that may go");
    }
    Ok(EXIT_OK)
}
