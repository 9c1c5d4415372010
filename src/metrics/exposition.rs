//! The Prometheus text exposition format (version 0.0.4) of a status summary and the run
//! records: pure, no I/O.
//!
//! Times are exposed as `_timestamp_seconds` (alert on `time() - …`): a textfile is read long
//! after it was written, so an age computed at writing time would freeze. The one age given
//! (`etcd_backup_newest_set_age_seconds`) is as of `etcd_backup_metrics_generated_timestamp_seconds`.

use crate::status::Summary;
use crate::store::{KINDS, Runs};
use chrono::{DateTime, Utc};
use std::fmt::Write;

/// The media type a scrape gets.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

type Labels<'a> = Vec<(&'a str, String)>;

/// One metric family: HELP and TYPE once, then its samples. A family without samples is left
/// out.
struct Family<'a> {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    samples: Vec<(Labels<'a>, f64)>,
}

impl<'a> Family<'a> {
    fn new(name: &'static str, kind: Kind, help: &'static str) -> Self {
        Family {
            name,
            kind,
            help,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: Labels<'a>, value: f64) -> &mut Self {
        self.samples.push((labels, value));
        self
    }

    fn write(&self, out: &mut String) {
        if self.samples.is_empty() {
            return;
        }
        let kind = match self.kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(self.help));
        let _ = writeln!(out, "# TYPE {} {kind}", self.name);
        for (labels, value) in &self.samples {
            out.push_str(self.name);
            if !labels.is_empty() {
                out.push('{');
                for (i, (name, value)) in labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{name}=\"{}\"", escape_label(value));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", format_value(*value));
        }
    }
}

fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{value}")
    }
}

fn seconds(time: DateTime<Utc>) -> f64 {
    time.timestamp_millis() as f64 / 1000.0
}

fn bool_value(value: bool) -> f64 {
    if value { 1.0 } else { 0.0 }
}

/// The exposition of everything `status --json` knows, the runs, and this binary.
/// `of_live`: whether the newest set is of the etcd cluster this node runs now (unknown: no
/// sample).
pub fn render(
    summary: &Summary,
    runs: &Runs,
    node: &str,
    (unreadable, of_live): (usize, Option<bool>),
) -> String {
    use Kind::{Counter, Gauge};
    let mut families = Vec::new();

    let mut info = Family::new(
        "etcd_backup_info",
        Gauge,
        "The etcd-backup that wrote these metrics (version) and the node whose store they describe.",
    );
    info.add(
        vec![
            ("version", crate::VERSION.to_string()),
            ("node", node.to_string()),
        ],
        1.0,
    );
    families.push(info);
    let mut generated = Family::new(
        "etcd_backup_metrics_generated_timestamp_seconds",
        Gauge,
        "When these metrics were computed from the store.",
    );
    generated.add(vec![], seconds(summary.now));
    families.push(generated);
    let mut max_age = Family::new(
        "etcd_backup_status_max_age_seconds",
        Gauge,
        "status.max_age: the newest verified set must be younger than this.",
    );
    max_age.add(vec![], summary.max_age.as_secs_f64());
    families.push(max_age);

    // The store, per origin.
    let mut held = Family::new(
        "etcd_backup_store_sets",
        Gauge,
        "Sets in this node's store, per origin node; verified=\"false\": damaged or failed its last verification.",
    );
    let mut bytes = Family::new(
        "etcd_backup_store_size_bytes",
        Gauge,
        "Bytes of the sets in this node's store, per origin node.",
    );
    let mut created = Family::new(
        "etcd_backup_newest_set_timestamp_seconds",
        Gauge,
        "Creation time of the newest verified set of each origin node in this store.",
    );
    let mut age = Family::new(
        "etcd_backup_newest_set_age_seconds",
        Gauge,
        "Age of the newest verified set of each origin node, as of etcd_backup_metrics_generated_timestamp_seconds.",
    );
    let mut size = Family::new(
        "etcd_backup_newest_set_size_bytes",
        Gauge,
        "Size of the newest verified set of each origin node (snapshot and resources).",
    );
    let mut revision = Family::new(
        "etcd_backup_newest_set_etcd_revision",
        Gauge,
        "etcd revision of the newest verified set's snapshot, per origin node.",
    );
    let mut newest_failed = Family::new(
        "etcd_backup_newest_set_failed",
        Gauge,
        "1 when the newest set of an origin node is damaged or failed its last verification.",
    );
    for (origin, o) in &summary.origins {
        let origin_label = || vec![("origin", origin.to_string())];
        for (verified, count) in [("true", o.verified), ("false", o.failed)] {
            let mut labels = origin_label();
            labels.push(("verified", verified.to_string()));
            held.add(labels, count as f64);
        }
        bytes.add(origin_label(), o.bytes as f64);
        newest_failed.add(
            origin_label(),
            bool_value(o.newest.is_some_and(|s| s.problem.is_some())),
        );
        if let Some(set) = o.newest_verified {
            let m = &set.manifest;
            created.add(origin_label(), seconds(m.created));
            let secs = (summary.now - m.created).num_milliseconds().max(0) as f64 / 1000.0;
            age.add(origin_label(), secs);
            size.add(origin_label(), m.total_size() as f64);
            if let Some(etcd) = &m.checks.etcd {
                revision.add(origin_label(), etcd.revision as f64);
            }
        }
    }
    let mut live_family = Family::new(
        "etcd_backup_newest_set_of_live_etcd_cluster",
        Gauge,
        "1 when the newest verified set in this store was taken from the etcd cluster this node runs now, 0 when from another (restored since: the sets are an earlier history); no sample when either is unknown.",
    );
    if let Some(of_live) = of_live {
        live_family.add(vec![], bool_value(of_live));
    }
    let mut unreadable_family = Family::new(
        "etcd_backup_store_unreadable_sets",
        Gauge,
        "Entries in the store named like sets whose manifest cannot be read (never deleted).",
    );
    unreadable_family.add(vec![], unreadable as f64);
    let mut future = Family::new(
        "etcd_backup_store_future_dated_sets",
        Gauge,
        "Sets dated after this node's clock plus max_clock_skew: a clock set wrong or a forged date; counted for nothing.",
    );
    future.add(vec![], summary.future.len() as f64);
    families.extend([
        held,
        bytes,
        unreadable_family,
        future,
        created,
        age,
        size,
        revision,
        newest_failed,
        live_family,
    ]);

    // The spray targets, by their stable id.
    let mut up = Family::new(
        "etcd_backup_target_up",
        Gauge,
        "1 when the last spray run to this target succeeded, 0 when it failed (the target is behind).",
    );
    let mut target_info = Family::new(
        "etcd_backup_target_info",
        Gauge,
        "How each spray target was described at its last run.",
    );
    let mut attempt = Family::new(
        "etcd_backup_target_last_attempt_timestamp_seconds",
        Gauge,
        "When the spray last tried this target.",
    );
    let mut success = Family::new(
        "etcd_backup_target_last_success_timestamp_seconds",
        Gauge,
        "When a spray run to this target last succeeded.",
    );
    let mut target_sets = Family::new(
        "etcd_backup_target_sets",
        Gauge,
        "Of this node's sets, how many the target held after its last successful run.",
    );
    let mut sent_sets = Family::new(
        "etcd_backup_target_last_sent_sets",
        Gauge,
        "Sets the last successful spray run sent to this target.",
    );
    let mut sent_bytes = Family::new(
        "etcd_backup_target_last_sent_bytes",
        Gauge,
        "File bytes the last successful spray run sent to this target.",
    );
    for (id, t) in summary.targets {
        let target = || vec![("target", id.clone())];
        up.add(target(), bool_value(t.last_error.is_none()));
        let mut labels = target();
        labels.push(("name", t.name.clone()));
        target_info.add(labels, 1.0);
        if let Some(at) = t.last_attempt {
            attempt.add(target(), seconds(at));
        }
        if let Some(at) = t.last_success {
            success.add(target(), seconds(at));
        }
        target_sets.add(target(), t.sets_held as f64);
        sent_sets.add(target(), t.sets_sent as f64);
        sent_bytes.add(target(), t.bytes_sent as f64);
    }
    let mut healed = Family::new(
        "etcd_backup_target_healed_copies_total",
        Counter,
        "Damaged copies on this target that sprays sent again.",
    );
    for (id, t) in summary.targets {
        healed.add(vec![("target", id.clone())], t.copies_healed as f64);
    }
    let mut damaged = Family::new(
        "etcd_backup_target_damaged_copies",
        Gauge,
        "Copies on this target that its last verification found damaged (the next spray sends them again).",
    );
    let verified_or_sprayed: std::collections::BTreeSet<&str> = summary
        .targets
        .keys()
        .map(String::as_str)
        .chain(summary.damaged.iter().map(|(t, _)| *t))
        .collect();
    for id in verified_or_sprayed {
        let count = summary.damaged.iter().filter(|(t, _)| *t == id).count();
        damaged.add(vec![("target", id.to_string())], count as f64);
    }
    families.extend([
        up,
        target_info,
        attempt,
        success,
        target_sets,
        sent_sets,
        sent_bytes,
        damaged,
        healed,
    ]);

    // The runs of this node.
    let mut start = Family::new(
        "etcd_backup_run_last_start_timestamp_seconds",
        Gauge,
        "When the last run of each kind (backup, spray, verify) started.",
    );
    let mut duration = Family::new(
        "etcd_backup_run_last_duration_seconds",
        Gauge,
        "How long the last run of each kind took.",
    );
    let mut ok = Family::new(
        "etcd_backup_run_last_success",
        Gauge,
        "1 when the last run of each kind succeeded.",
    );
    let mut run_success = Family::new(
        "etcd_backup_run_last_success_timestamp_seconds",
        Gauge,
        "When the last successful run of each kind started.",
    );
    let mut total = Family::new(
        "etcd_backup_runs_total",
        Counter,
        "Runs of each kind on this node, by outcome (a verify that finds a bad set is a failure).",
    );
    for kind in KINDS {
        let Some(run) = runs.get(kind) else { continue };
        let run_label = || vec![("run", kind.to_string())];
        if let Some(at) = run.last_start {
            start.add(run_label(), seconds(at));
        }
        duration.add(run_label(), run.last_duration_seconds);
        ok.add(run_label(), bool_value(run.last_ok));
        if let Some(at) = run.last_success {
            run_success.add(run_label(), seconds(at));
        }
        for (outcome, count) in [("success", run.successes), ("failure", run.failures)] {
            let mut labels = run_label();
            labels.push(("outcome", outcome.to_string()));
            total.add(labels, count as f64);
        }
    }
    families.extend([start, duration, ok, run_success, total]);

    let mut out = String::new();
    for family in &families {
        family.write(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(escape_help("a\\b\nc\""), "a\\\\b\\nc\"");
    }

    #[test]
    fn values_use_the_format_s_spelling() {
        assert_eq!(format_value(1.0), "1");
        assert_eq!(format_value(1.5), "1.5");
        assert_eq!(format_value(1_700_000_000.25), "1700000000.25");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
    }

    #[test]
    fn an_empty_store_says_who_and_when_and_nothing_else() {
        let targets = Default::default();
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let summary = crate::status::summarize(
            &[],
            &targets,
            now,
            std::time::Duration::from_secs(3600),
            std::time::Duration::from_secs(300),
        );
        let text = render(&summary, &Runs::new(), "master-0", (0, None));
        assert!(text.contains("etcd_backup_info{version=\""));
        assert!(text.contains(",node=\"master-0\"} 1\n"));
        assert!(text.contains("etcd_backup_metrics_generated_timestamp_seconds 1700000000\n"));
        assert!(text.contains("etcd_backup_status_max_age_seconds 3600\n"));
        assert!(!text.contains("etcd_backup_newest_set_timestamp_seconds"));
        assert!(!text.contains("etcd_backup_target_up"));
    }
}
