//! End to end on three masters with real systemd as PID 1 (`tests/lab/masters`): the rendered
//! MachineConfig is rolled out, then everything goes through systemctl and journalctl, as an
//! administrator would do it.

use crate::util::{render_release_machineconfig, repo};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

const BACKUP_SUCCEEDED: &str = "5b1a0c7e3a6d4a2f9a1d2c3e4f5a6b70";
const BACKUP_FAILED: &str = "5b1a0c7e3a6d4a2f9a1d2c3e4f5a6b71";
const SET_RECEIVED: &str = "5b1a0c7e3a6d4a2f9a1d2c3e4f5a6b75";
/// The lab's staleness bound: short, so that failover shows within the test.
const TAKEOVER_SECS: u64 = 15;
const UNITS: [&str; 4] = [
    "etcd-backup.service",
    "etcd-backup.timer",
    "etcd-backup-spray.service",
    "etcd-backup-spray.timer",
];

/// The lab, torn down when dropped (also when a step fails).
struct Masters {
    name: &'static str,
}

impl Masters {
    fn up(name: &'static str) -> Masters {
        let masters = Masters { name };
        masters.script(&["up"]).expect_ok("masters up");
        masters
    }

    fn script(&self, args: &[&str]) -> Out {
        let output = Command::new(repo().join("tests/lab/masters"))
            .args(args)
            .env("ETCD_BACKUP_LAB", self.name)
            .output()
            .expect("running tests/lab/masters");
        Out(output, args.join(" "))
    }

    fn exec(&self, n: usize, args: &[&str]) -> Out {
        let mut all = vec!["exec".to_string(), n.to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut out = self.script(&all);
        out.1 = format!("master-{n}: {}", args.join(" "));
        out
    }

    /// `systemctl start UNIT` (waits for a oneshot to finish); its result and the journal of
    /// exactly that run.
    fn start(&self, n: usize, unit: &str) -> (Out, Vec<Value>) {
        let started = self.exec(n, &["systemctl", "start", unit]);
        let invocation = self
            .exec(
                n,
                &["systemctl", "show", "-p", "InvocationID", "--value", unit],
            )
            .expect_ok("InvocationID");
        let invocation = invocation.trim();
        assert!(!invocation.is_empty(), "{unit} on master-{n} never ran");
        let journal = self.journal(n, &[&format!("_SYSTEMD_INVOCATION_ID={invocation}")]);
        (started, journal)
    }

    fn journal(&self, n: usize, matches: &[&str]) -> Vec<Value> {
        // journald takes in what a unit logged on its own time: wait until it has all of it.
        self.exec(n, &["journalctl", "--sync"])
            .expect_ok("journalctl --sync");
        let mut args = vec!["journalctl", "--no-pager", "-o", "json"];
        args.extend(matches);
        self.exec(n, &args)
            .expect_ok("journalctl")
            .lines()
            .map(|l| serde_json::from_str(l).expect("journalctl -o json line"))
            .collect()
    }

    fn sets(&self, n: usize) -> Vec<(String, String)> {
        let listing = self
            .exec(n, &["etcd-backup", "list", "--json"])
            .expect_ok("list");
        let sets: Vec<Value> = serde_json::from_str(&listing).expect("list --json");
        sets.iter()
            .map(|s| {
                (
                    s["id"].as_str().unwrap().to_string(),
                    s["origin"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

impl Drop for Masters {
    fn drop(&mut self) {
        let down = self.script(&["down"]);
        if !down.0.status.success() && !std::thread::panicking() {
            panic!(
                "masters down failed: {}",
                String::from_utf8_lossy(&down.0.stderr)
            );
        }
    }
}

struct Out(Output, String);

impl Out {
    fn expect_ok(&self, what: &str) -> String {
        assert!(
            self.0.status.success(),
            "{what} ({}) failed: {}\nstdout: {}\nstderr: {}",
            self.1,
            self.0.status,
            String::from_utf8_lossy(&self.0.stdout),
            String::from_utf8_lossy(&self.0.stderr)
        );
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
}

fn with_id<'a>(journal: &'a [Value], message_id: &str) -> Vec<&'a Value> {
    journal
        .iter()
        .filter(|e| e["MESSAGE_ID"] == message_id)
        .collect()
}

fn messages(journal: &[Value]) -> String {
    journal
        .iter()
        .filter_map(|e| e["MESSAGE"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The set that one `etcd-backup.service` run logged as committed, if any.
fn backed_up(journal: &[Value]) -> Option<String> {
    let ok = with_id(journal, BACKUP_SUCCEEDED);
    assert!(ok.len() <= 1, "one run, one set: {ok:?}");
    ok.first()
        .map(|e| e["SET_ID"].as_str().unwrap().to_string())
}

fn render(dir: &std::path::Path) -> PathBuf {
    let yaml = dir.join("machineconfig.yaml");
    std::fs::write(
        &yaml,
        render_release_machineconfig(
            &format!(
                "[backup]\nsnapshot_nodes = [\"master-0\", \"master-1\", \"master-2\"]\n\
             takeover_after = \"{TAKEOVER_SECS}s\"\n\
             [spray]\nconnect_timeout = \"3s\"\nio_timeout = \"10s\"\nattempts = 1\n"
            ),
            &["--embed-binary"],
        ),
    )
    .unwrap();
    yaml
}

#[test]
fn machineconfig_rollout_backup_spray_failover_and_failure_on_real_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = render(dir.path());
    let lab = Masters::up("e2e");
    lab.script(&["apply", yaml.to_str().unwrap()])
        .expect_ok("apply the MachineConfig");

    // The units as installed: systemd's own verifier says nothing about them, and both timers
    // are enabled, active and have a next elapse.
    for n in 0..3 {
        let mut verify = vec!["systemd-analyze", "verify", "--man=no"];
        let paths: Vec<String> = UNITS
            .iter()
            .map(|u| format!("/etc/systemd/system/{u}"))
            .collect();
        verify.extend(paths.iter().map(String::as_str));
        let out = lab.exec(n, &verify);
        out.expect_ok("systemd-analyze verify");
        assert_eq!(
            String::from_utf8_lossy(&out.0.stdout).to_string()
                + &String::from_utf8_lossy(&out.0.stderr),
            "",
            "systemd-analyze verify on master-{n} must print nothing"
        );
        let timers = lab
            .exec(n, &["systemctl", "list-timers", "--all", "--no-pager"])
            .expect_ok("list-timers");
        for timer in ["etcd-backup.timer", "etcd-backup-spray.timer"] {
            let line = timers.lines().find(|l| l.contains(timer));
            let line =
                line.unwrap_or_else(|| panic!("{timer} not listed on master-{n}:\n{timers}"));
            assert!(!line.starts_with('-'), "{timer} has no next elapse: {line}");
            let state = lab
                .exec(n, &["systemctl", "is-enabled", timer])
                .expect_ok("is-enabled");
            assert_eq!(state.trim(), "enabled", "{timer} on master-{n}");
        }
        assert_eq!(
            lab.exec(n, &["systemctl", "is-enabled", "etcd-backup.service"])
                .0
                .stdout,
            b"static\n",
            "the services are started by their timers, not enabled"
        );
    }

    // A backup through systemd on master-0, audited in the journal.
    let (started, journal) = lab.start(0, "etcd-backup.service");
    started.expect_ok("systemctl start etcd-backup.service");
    let first = backed_up(&journal).unwrap_or_else(|| panic!("no set: {}", messages(&journal)));
    assert!(first.ends_with("-master-0"), "{first}");
    assert_eq!(lab.sets(0), [(first.clone(), "master-0".to_string())]);

    // Sprayed to both peers: there, verified and logged on arrival.
    let (started, journal) = lab.start(0, "etcd-backup-spray.service");
    started.expect_ok(&format!("spray: {}", messages(&journal)));
    for n in [1, 2] {
        lab.exec(n, &["etcd-backup", "verify", &first])
            .expect_ok("verify the sprayed set");
        let arrived = lab.journal(
            n,
            &[
                &format!("MESSAGE_ID={SET_RECEIVED}"),
                &format!("SET_ID={first}"),
            ],
        );
        assert_eq!(arrived.len(), 1, "master-{n}: {arrived:?}");
    }

    // Failover: master-1 stays idle while master-0's sets are fresh…
    let (started, journal) = lab.start(1, "etcd-backup.service");
    started.expect_ok("backup on master-1");
    assert_eq!(backed_up(&journal), None, "{}", messages(&journal));
    assert!(
        messages(&journal).contains("not taking a backup"),
        "{}",
        messages(&journal)
    );
    // …takes over once master-0 is off and its newest set older than the bound…
    lab.script(&["poweroff", "0"])
        .expect_ok("power off master-0");
    std::thread::sleep(Duration::from_secs(TAKEOVER_SECS + 1));
    let (started, journal) = lab.start(1, "etcd-backup.service");
    started.expect_ok("backup on master-1 with master-0 off");
    let taken_over = backed_up(&journal)
        .unwrap_or_else(|| panic!("master-1 did not take over: {}", messages(&journal)));
    assert!(taken_over.ends_with("-master-1"), "{taken_over}");
    // …and stops again once master-0 is back and its sets arrive.
    lab.script(&["boot", "0"]).expect_ok("boot master-0");
    assert!(
        lab.sets(0)
            .contains(&(first.clone(), "master-0".to_string())),
        "master-0's disk kept its sets over the power cycle"
    );
    let (started, journal) = lab.start(0, "etcd-backup.service");
    started.expect_ok("backup on master-0 after boot");
    let second = backed_up(&journal).expect("master-0 backs up again");
    lab.start(0, "etcd-backup-spray.service")
        .0
        .expect_ok("spray from master-0 after boot");
    let before = lab.sets(1);
    assert!(before.iter().any(|(id, _)| *id == second), "{before:?}");
    let (started, journal) = lab.start(1, "etcd-backup.service");
    started.expect_ok("backup on master-1 after master-0 is back");
    assert_eq!(backed_up(&journal), None, "{}", messages(&journal));
    assert_eq!(lab.sets(1), before, "master-1 took nothing");

    // A failing backup: the unit fails, the journal says why, the history is untouched.
    let history = lab.sets(0);
    lab.exec(
        0,
        &[
            "sh",
            "-c",
            "echo exit1 >/etc/kubernetes/lab-standin-fail-mode",
        ],
    )
    .expect_ok("set the stand-in's failure mode");
    let (started, journal) = lab.start(0, "etcd-backup.service");
    assert!(!started.0.status.success(), "systemctl start must fail");
    let state = lab.exec(0, &["systemctl", "is-failed", "etcd-backup.service"]);
    assert_eq!(String::from_utf8_lossy(&state.0.stdout).trim(), "failed");
    let failed = with_id(&journal, BACKUP_FAILED);
    assert_eq!(failed.len(), 1, "{}", messages(&journal));
    let why = failed[0]["MESSAGE"].as_str().unwrap();
    assert!(
        why.contains("cluster-backup.sh"),
        "names the command: {why}"
    );
    assert!(
        messages(&journal).contains("Could not find the etcd container"),
        "the script's own reason is in the same run's journal: {}",
        messages(&journal)
    );
    assert_eq!(lab.sets(0), history, "history intact");
    assert!(
        lab.exec(0, &["etcd-backup", "verify"]).0.status.success(),
        "every set still verifies"
    );
}
