//! Logging into a real journald: a private systemd-journald in a private mount namespace
//! (tmpfs over /run/systemd and /run/log, so the host is untouched), the binary's stderr
//! connected to the journal's stream socket by `systemd-cat` as systemd does for a unit, and the
//! entries read back with `journalctl -o json`.

use crate::util::*;
use etcd_backup::logging::message_id;
use std::process::Command;

const SCRIPT: &str = r#"
set -eu
out=$1; shift
mkdir -p /run/systemd /run/log
mount -t tmpfs -o mode=0755 tmpfs /run/systemd
mount -t tmpfs -o mode=0755 tmpfs /run/log
if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
mkdir -p /run/systemd/journal
/lib/systemd/systemd-journald &
journald=$!
trap 'kill $journald; wait $journald || true' EXIT
for _ in $(seq 100); do [ -S /run/systemd/journal/stdout ] && break; sleep 0.05; done
# As for a unit: stdout/stderr are the journal stream and JOURNAL_STREAM names it.
run() {
    systemd-cat -t etcd-backup sh -c 'JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec "$@"' sh "$@" || true
}
run "$@" backup
STANDIN_FAIL=exit1 run "$@" backup
journalctl --sync
journalctl -o json --no-pager SYSLOG_IDENTIFIER=etcd-backup >"$out"
"#;

#[test]
fn backup_events_reach_journald_with_fields_and_message_ids() {
    let node = Node::new("");
    let out = node.dir.path().join("journal.json");
    let status = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            SCRIPT,
            "sh",
        ])
        .arg(&out)
        .arg(BIN)
        .arg("--config")
        .arg(node.config_path())
        .envs(&node.env)
        .status()
        .expect("unshare (util-linux) is needed");
    assert!(status.success(), "journal harness failed");
    let entries: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let with_id = |id: &str| -> Vec<&serde_json::Value> {
        entries.iter().filter(|e| e["MESSAGE_ID"] == id).collect()
    };

    let ids = node.set_ids();
    assert_eq!(ids.len(), 1, "one good backup, one failed");
    let succeeded = with_id(message_id::BACKUP_SUCCEEDED);
    assert_eq!(succeeded.len(), 1, "{entries:#?}");
    let ok = succeeded[0];
    assert_eq!(ok["SET_ID"], ids[0].as_str());
    assert_eq!(ok["ORIGIN"], "master-0");
    let set_bytes: u64 = node.sets()[0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["size"].as_u64().unwrap())
        .sum();
    assert_eq!(
        ok["BYTES"].as_str().unwrap().parse::<u64>().unwrap(),
        set_bytes
    );
    assert!(ok["SECONDS"].as_str().unwrap().parse::<f64>().unwrap() > 0.0);
    assert_eq!(
        ok["_TRANSPORT"], "journal",
        "native protocol, not stderr lines"
    );

    // The failure is one entry, at error priority, saying why.
    let failed = with_id(message_id::BACKUP_FAILED);
    assert_eq!(failed.len(), 1, "{entries:#?}");
    assert_eq!(failed[0]["PRIORITY"], "3");
    let message = failed[0]["MESSAGE"].as_str().unwrap();
    assert!(
        message.contains("backup failed") && message.contains("also with --force"),
        "{message}"
    );

    // The script's own output is in the journal too, line by line.
    assert!(
        entries.iter().any(|e| e["MESSAGE"]
            .as_str()
            .is_some_and(|m| m.contains("snapshot db and kube resources are successfully saved"))),
        "{entries:#?}"
    );
    // No stray plain-text error lines: under the journal the error is reported once.
    assert!(!entries.iter().any(|e| {
        e["MESSAGE"]
            .as_str()
            .is_some_and(|m| m.starts_with("error: "))
    }));
}
