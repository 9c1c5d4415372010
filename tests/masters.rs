//! End to end on three masters with real systemd as PID 1 (`tests/lab/masters`): the rendered
//! MachineConfig is rolled out with the node disruption policy, the masters install the binary
//! from the lab registry, then everything goes through systemctl and journalctl, as an
//! administrator would do it.

use crate::util::{
    BIN, next_release_binary, release_binary, render_release_machineconfig, repo, sha256_hex,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const BACKUP_SUCCEEDED: &str = "5b1a0c7e3a6d4a2f9a1d2c3e4f5a6b70";
const BACKUP_FAILED: &str = "5b1a0c7e3a6d4a2f9a1d2c3e4f5a6b71";
const SET_RECEIVED: &str = "5b1a0c7e3a6d4a2f9a1d2c3e4f5a6b75";
const COPY_DAMAGED: &str = "5b1a0c7e3a6d4a2f9a1d2c3e4f5a6b76";
const COPY_HEALED: &str = "5b1a0c7e3a6d4a2f9a1d2c3e4f5a6b77";
/// The lab's staleness bound: short, so that failover shows within the test.
const TAKEOVER_SECS: u64 = 15;
const INSTALL_UNIT: &str = "etcd-backup-install.service";
const UNITS: [&str; 7] = [
    INSTALL_UNIT,
    "etcd-backup.service",
    "etcd-backup.timer",
    "etcd-backup-spray.service",
    "etcd-backup-spray.timer",
    "etcd-backup-verify.service",
    "etcd-backup-verify.timer",
];

/// The lab, torn down when dropped (also when a step fails).
pub(crate) struct Masters {
    pub(crate) name: &'static str,
    /// The node disruption policy every rollout applies with.
    policy: PathBuf,
    _dir: tempfile::TempDir,
}

impl Masters {
    pub(crate) fn up(name: &'static str) -> Masters {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.yaml");
        let out = Command::new(BIN)
            .args(["render", "node-disruption-policy"])
            .output()
            .unwrap();
        assert!(out.status.success());
        std::fs::write(&policy, out.stdout).unwrap();
        let masters = Masters {
            name,
            policy,
            _dir: dir,
        };
        masters.script(&["up"]).expect_ok("masters up");
        masters
    }

    pub(crate) fn script(&self, args: &[&str]) -> Out {
        let output = Command::new(repo().join("tests/lab/masters"))
            .args(args)
            .env("ETCD_BACKUP_LAB", self.name)
            .output()
            .expect("running tests/lab/masters");
        Out(output, args.join(" "))
    }

    pub(crate) fn exec(&self, n: usize, args: &[&str]) -> Out {
        let mut all = vec!["exec".to_string(), n.to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut out = self.script(&all);
        out.1 = format!("master-{n}: {}", args.join(" "));
        out
    }

    /// Builds the image around `binary` and pushes it to the lab registry; its pinned reference.
    pub(crate) fn image(&self, binary: &Path, tag: &str) -> String {
        self.script(&["image", binary.to_str().unwrap(), tag])
            .expect_ok("masters image")
            .trim()
            .to_string()
    }

    /// Rolls a MachineConfig out to every running master, with the node disruption policy.
    pub(crate) fn apply(&self, mc: &Path) -> Out {
        self.script(&["apply", mc.to_str().unwrap(), self.policy.to_str().unwrap()])
    }

    /// `systemctl start UNIT` (waits for a oneshot to finish); its result and the journal of
    /// exactly that run.
    pub(crate) fn start(&self, n: usize, unit: &str) -> (Out, Vec<Value>) {
        let started = self.exec(n, &["systemctl", "start", unit]);
        (started, self.last_run(n, unit))
    }

    /// The journal of the most recent run of `unit` on master-N.
    pub(crate) fn last_run(&self, n: usize, unit: &str) -> Vec<Value> {
        let invocation = self
            .exec(
                n,
                &["systemctl", "show", "-p", "InvocationID", "--value", unit],
            )
            .expect_ok("InvocationID");
        let invocation = invocation.trim();
        assert!(!invocation.is_empty(), "{unit} on master-{n} never ran");
        // journald attributes an entry to its unit by the sender's cgroup, looked up when the
        // entry arrives: a run that exits within milliseconds (a backup that is not this
        // node's turn) can leave entries without `_SYSTEMD_INVOCATION_ID`. The kernel-given
        // `_PID` is always there: the run's main process, logging at or after its start (PIDs
        // start over when a lab master reboots).
        let show = |property: &str| {
            self.exec(n, &["systemctl", "show", "-p", property, "--value", unit])
                .expect_ok(property)
                .trim()
                .to_string()
        };
        let (pid, started) = (show("ExecMainPID"), show("ExecMainStartTimestampMonotonic"));
        let started: u64 = started.parse().unwrap_or(0);
        self.journal(
            n,
            &[
                &format!("_SYSTEMD_INVOCATION_ID={invocation}"),
                "+",
                &format!("_PID={pid}"),
            ],
        )
        .into_iter()
        .filter(|e| {
            e["_SYSTEMD_INVOCATION_ID"] == invocation
                || e["__MONOTONIC_TIMESTAMP"]
                    .as_str()
                    .and_then(|t| t.parse::<u64>().ok())
                    .is_some_and(|t| t >= started)
        })
        .collect()
    }

    pub(crate) fn journal(&self, n: usize, matches: &[&str]) -> Vec<Value> {
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

    pub(crate) fn sets(&self, n: usize) -> Vec<(String, String)> {
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

    /// The sha256 of the installed binary on master-N.
    pub(crate) fn installed(&self, n: usize) -> String {
        let out = self
            .exec(n, &["sha256sum", "/usr/local/bin/etcd-backup"])
            .expect_ok("sha256sum");
        out.split_whitespace().next().unwrap().to_string()
    }

    pub(crate) fn is_active(&self, n: usize, unit: &str) -> String {
        let out = self.exec(n, &["systemctl", "is-active", unit]);
        String::from_utf8_lossy(&out.0.stdout).trim().to_string()
    }

    /// A file of the lab registry's storage: the blob with `digest`.
    fn registry_blob(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        PathBuf::from(format!(
            "/var/lib/etcd-backup-lab/{}/registry/storage/docker/registry/v2/blobs/sha256/{}/{hex}/data",
            self.name,
            &hex[..2]
        ))
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

pub(crate) struct Out(pub Output, pub String);

impl Out {
    pub(crate) fn expect_ok(&self, what: &str) -> String {
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

pub(crate) fn messages(journal: &[Value]) -> String {
    journal
        .iter()
        .filter_map(|e| e["MESSAGE"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The set that one `etcd-backup.service` run logged as committed, if any.
pub(crate) fn backed_up(journal: &[Value]) -> Option<String> {
    let ok = with_id(journal, BACKUP_SUCCEEDED);
    assert!(ok.len() <= 1, "one run, one set: {ok:?}");
    ok.first()
        .map(|e| e["SET_ID"].as_str().unwrap().to_string())
}

/// The lab's MachineConfig with `delivery` (`--image REF` [`--binary-sha256 HEX`]) as `dir/name`.
pub(crate) fn render(dir: &Path, name: &str, delivery: &[&str]) -> PathBuf {
    let yaml = dir.join(name);
    std::fs::write(
        &yaml,
        render_release_machineconfig(
            &format!(
                "[backup]\nsnapshot_nodes = [\"master-0\", \"master-1\", \"master-2\"]\n\
                 takeover_after = \"{TAKEOVER_SECS}s\"\n\
                 [spray]\nconnect_timeout = \"3s\"\nio_timeout = \"10s\"\nattempts = 1\n"
            ),
            delivery,
        ),
    )
    .unwrap();
    yaml
}

#[test]
fn rollout_from_an_image_backup_spray_failover_upgrade_and_faults_on_real_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let lab = Masters::up("e2e");
    let current = release_binary();
    let next = next_release_binary();
    let (current_sha, next_sha) = (sha256_hex(&current), sha256_hex(&next));
    assert_ne!(current_sha, next_sha);
    let image_current = lab.image(&current, "current");
    let image_next = lab.image(&next, "next");
    let mc = render(dir.path(), "current.yaml", &["--image", &image_current]);
    let size = std::fs::metadata(&mc).unwrap().len();
    assert!(size <= 48 << 10, "the MachineConfig is {size} bytes");
    lab.apply(&mc).expect_ok("apply the MachineConfig");

    rollout_installs_the_pinned_binary(&lab, &current_sha, &image_current);
    units_verify_and_timers_are_scheduled(&lab);
    backup_spray_failover_and_failure(&lab);
    reboot_without_the_registry_needs_no_network(&lab, &current_sha);
    tampered_images_are_refused_and_the_binary_stays(
        &lab,
        dir.path(),
        (&image_current, &current, &current_sha),
        &next_sha,
    );
    upgrade_replaces_the_binary(&lab, dir.path(), (&image_next, &next), &next_sha);
    kill_9_of_the_install_leaves_old_or_new(
        &lab,
        [(&image_current, &current_sha), (&image_next, &next_sha)],
    );
}

fn rollout_installs_the_pinned_binary(lab: &Masters, sha: &str, image: &str) {
    for n in 0..3 {
        assert_eq!(
            lab.installed(n),
            sha,
            "master-{n} runs the binary of the build"
        );
        assert_eq!(lab.is_active(n, INSTALL_UNIT), "active", "master-{n}");
        let journal = messages(&lab.last_run(n, INSTALL_UNIT));
        assert!(
            journal.contains(&format!(
                "installed /usr/local/bin/etcd-backup from {image}"
            )),
            "master-{n}: {journal}"
        );
        let enabled = lab
            .exec(n, &["systemctl", "is-enabled", INSTALL_UNIT])
            .expect_ok("is-enabled");
        assert_eq!(enabled.trim(), "enabled", "runs at every boot");
        let mode = lab
            .exec(n, &["stat", "-c", "%a %U", "/usr/local/bin/etcd-backup"])
            .expect_ok("stat");
        assert_eq!(mode.trim(), "755 root");
    }
}

fn units_verify_and_timers_are_scheduled(lab: &Masters) {
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
        timers_scheduled(lab, n);
        assert_eq!(
            lab.exec(n, &["systemctl", "is-enabled", "etcd-backup.service"])
                .0
                .stdout,
            b"static\n",
            "the services are started by their timers, not enabled"
        );
    }
}

fn timers_scheduled(lab: &Masters, n: usize) {
    let timers = lab
        .exec(n, &["systemctl", "list-timers", "--all", "--no-pager"])
        .expect_ok("list-timers");
    for timer in [
        "etcd-backup.timer",
        "etcd-backup-spray.timer",
        "etcd-backup-verify.timer",
    ] {
        let line = timers.lines().find(|l| l.contains(timer));
        let line = line.unwrap_or_else(|| panic!("{timer} not listed on master-{n}:\n{timers}"));
        assert!(!line.starts_with('-'), "{timer} has no next elapse: {line}");
        let state = lab
            .exec(n, &["systemctl", "is-enabled", timer])
            .expect_ok("is-enabled");
        assert_eq!(state.trim(), "enabled", "{timer} on master-{n}");
    }
}

/// Takes a backup on master-0 (the first snapshot node) through systemd; the new set's id.
fn backup_on_master_0(lab: &Masters, what: &str) -> String {
    let (started, journal) = lab.start(0, "etcd-backup.service");
    started.expect_ok(what);
    backed_up(&journal).unwrap_or_else(|| panic!("{what}: no set: {}", messages(&journal)))
}

/// What the set taken on master-0 records of its cluster, each fact against what the master
/// and its etcd say themselves: the release of its machine-config daemon's record, the etcd
/// cluster of the live member, the three members, encryption at rest on (aescbc), the etcd
/// pod's certificates (the signer and three for each master), and nothing unknown.
fn the_set_knows_its_cluster(lab: &Masters, id: &str) {
    let listing: Vec<Value> = serde_json::from_str(
        &lab.exec(0, &["etcd-backup", "list", "--json"])
            .expect_ok("list --json"),
    )
    .unwrap();
    let cluster = &listing.iter().find(|s| s["id"] == id).unwrap()["cluster"];
    let status: Value = serde_json::from_str(
        &lab.exec(0, &["etcdctl", "endpoint", "status", "-w", "json"])
            .expect_ok("etcdctl endpoint status"),
    )
    .unwrap();
    let header = &status[0]["Status"]["header"];
    assert_eq!(
        cluster["cluster_id"].as_str().unwrap(),
        format!("{:016x}", header["cluster_id"].as_u64().unwrap()),
        "{cluster}"
    );
    assert_eq!(cluster["release"], "4.18.7");
    let names: Vec<&str> = cluster["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["master-0", "master-1", "master-2"]);
    assert_eq!(cluster["encryption"]["provider"], "aescbc");
    assert_eq!(cluster["certificates"]["count"], 10);
    assert!(cluster.get("unknown").is_none(), "{cluster}");
    let version = lab
        .exec(0, &["etcdctl", "version"])
        .expect_ok("etcdctl version");
    assert_eq!(
        format!(
            "etcdctl version: {}",
            cluster["etcd_version"].as_str().unwrap()
        ),
        version.lines().next().unwrap()
    );
}

fn backup_spray_failover_and_failure(lab: &Masters) {
    // A backup through systemd on master-0, audited in the journal.
    let first = backup_on_master_0(lab, "systemctl start etcd-backup.service");
    assert!(first.ends_with("-master-0"), "{first}");
    assert_eq!(lab.sets(0), [(first.clone(), "master-0".to_string())]);
    the_set_knows_its_cluster(lab, &first);
    // The floor is a share of the master's own 120 GiB disk (etcd's and the store's), which the
    // lab's config leaves at its default: the larger of 5 GiB and 15 % (of what the filesystem
    // holds, a little under 120 GiB: about 18 GiB, in whole MiB).
    let config = lab
        .exec(0, &["etcd-backup", "check-config"])
        .expect_ok("check-config");
    let floor: u64 = config
        .lines()
        .find_map(|l| l.strip_prefix("min_free_space = \""))
        .and_then(|v| v.strip_suffix("MiB\""))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no floor in MiB: {config}"));
    assert!((17 << 10..=18 << 10).contains(&floor), "{floor} MiB");
    assert!(config.contains("min_free_percent = 15\n"), "{config}");
    // etcd's data is on that disk, not on the host's.
    let disk: u64 = lab
        .exec(
            0,
            &["findmnt", "-nb", "-o", "SIZE", "--target", "/var/lib/etcd"],
        )
        .expect_ok("findmnt")
        .trim()
        .parse()
        .unwrap();
    assert!(disk > 119 << 30 && disk <= 120 << 30, "{disk}");

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

    // The daily deep verification, by hand: the sprayed set verifies on master-1.
    let (started, journal) = lab.start(1, "etcd-backup-verify.service");
    started.expect_ok("systemctl start etcd-backup-verify.service");
    assert!(
        messages(&journal).contains(&format!("ok   {first}")),
        "{}",
        messages(&journal)
    );

    // master-2's copy damaged at rest (one byte, same size): master-0's verify timer run has
    // each peer check its copies, fails naming the set, and the next spray heals it.
    lab.exec(
        2,
        &[
            "sh",
            "-c",
            &format!(
                "f=$(ls /var/lib/etcd-backup/sets/{first}/*.db) && \
                 printf '\\125' | dd of=\"$f\" bs=1 seek=5000 conv=notrunc status=none"
            ),
        ],
    )
    .expect_ok("damage master-2's copy");
    assert!(
        !lab.exec(2, &["etcd-backup", "verify", &first])
            .0
            .status
            .success(),
        "the copy on master-2 is damaged"
    );
    let (started, journal) = lab.start(0, "etcd-backup-verify.service");
    assert!(
        !started.0.status.success(),
        "the verify unit fails: {}",
        messages(&journal)
    );
    let found = with_id(&journal, COPY_DAMAGED);
    assert_eq!(found.len(), 1, "{}", messages(&journal));
    assert_eq!(found[0]["SET_ID"], first.as_str());
    let (started, journal) = lab.start(0, "etcd-backup-spray.service");
    started.expect_ok(&format!("spray heals: {}", messages(&journal)));
    assert_eq!(
        with_id(&journal, COPY_HEALED).len(),
        1,
        "{}",
        messages(&journal)
    );
    lab.exec(2, &["etcd-backup", "verify", &first])
        .expect_ok("the copy on master-2 is whole again");
    lab.start(0, "etcd-backup-verify.service")
        .0
        .expect_ok("verify on master-0 once healed");

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
    let second = backup_on_master_0(lab, "backup on master-0 after boot");
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
    lab.exec(0, &["sh", "-c", ": >/etc/kubernetes/lab-standin-fail-mode"])
        .expect_ok("the stand-in works again");
}

fn reboot_without_the_registry_needs_no_network(lab: &Masters, sha: &str) {
    lab.script(&["registry", "stop"])
        .expect_ok("stop the registry");
    lab.script(&["poweroff", "0"])
        .expect_ok("power off master-0");
    lab.script(&["boot", "0"]).expect_ok("boot master-0");
    assert_eq!(
        lab.is_active(0, INSTALL_UNIT),
        "active",
        "the install unit ran at boot"
    );
    let journal = messages(&lab.last_run(0, INSTALL_UNIT));
    assert!(journal.contains("is current"), "{journal}");
    assert!(
        !journal.contains("pulling"),
        "no pull with a current binary: {journal}"
    );
    assert_eq!(lab.installed(0), sha);
    backup_on_master_0(lab, "a backup after a reboot without the registry");
    lab.script(&["registry", "start"])
        .expect_ok("start the registry");
}

/// Every master: the install unit failed, its journal names `image` (with its digest) and says
/// `why`, and the binary is still `sha`.
fn install_failed_everywhere(lab: &Masters, image: &str, why: &str, sha: &str) {
    for n in 0..3 {
        let state = lab.exec(n, &["systemctl", "is-failed", INSTALL_UNIT]);
        assert_eq!(
            String::from_utf8_lossy(&state.0.stdout).trim(),
            "failed",
            "master-{n}"
        );
        let journal = messages(&lab.last_run(n, INSTALL_UNIT));
        assert!(
            journal.contains(image),
            "master-{n} names the image: {journal}"
        );
        assert!(
            journal.contains(why),
            "master-{n} says why ({why}): {journal}"
        );
        assert_eq!(lab.installed(n), sha, "master-{n} keeps its binary");
    }
}

fn tampered_images_are_refused_and_the_binary_stays(
    lab: &Masters,
    dir: &Path,
    (image_current, current, current_sha): (&str, &Path, &str),
    next_sha: &str,
) {
    // An image whose binary is not the pinned one: pulled, checked, refused.
    let mc = render(
        dir,
        "wrong-binary.yaml",
        &["--image", image_current, "--binary-sha256", next_sha],
    );
    let out = lab.apply(&mc);
    assert!(
        !out.0.status.success(),
        "a refused install degrades the node"
    );
    install_failed_everywhere(
        lab,
        image_current,
        &format!("but the MachineConfig pins {next_sha}: refused"),
        current_sha,
    );
    backup_on_master_0(lab, "a backup after a refused install");

    // A registry that serves other bytes under the pinned digest: one byte of the top layer
    // (the binary's) flipped in the registry's storage. A binary of its own (the current one
    // with bytes appended), so that no other image shares the layer.
    let other = dir.join("etcd-backup-other");
    let mut bytes = std::fs::read(current).unwrap();
    bytes.extend_from_slice(b"\0a copy with trailing bytes\n");
    std::fs::write(&other, &bytes).unwrap();
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let image_other = lab.image(&other, "other");
    let digest = image_other.rsplit_once('@').unwrap().1;
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(lab.registry_blob(digest)).unwrap()).unwrap();
    let layer = manifest["layers"].as_array().unwrap().last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = lab.registry_blob(&layer);
    let mut tampered = std::fs::read(&blob).unwrap();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    std::fs::write(&blob, &tampered).unwrap();
    let mc = render(
        dir,
        "other.yaml",
        &["--image", &image_other, "--binary", other.to_str().unwrap()],
    );
    let out = lab.apply(&mc);
    assert!(!out.0.status.success(), "a refused pull degrades the node");
    install_failed_everywhere(lab, &image_other, "cannot pull", current_sha);
    backup_on_master_0(lab, "a backup after a tampered registry");
}

fn upgrade_replaces_the_binary(
    lab: &Masters,
    dir: &Path,
    (image_next, next): (&str, &Path),
    next_sha: &str,
) {
    let mc = render(
        dir,
        "next.yaml",
        &["--image", image_next, "--binary", next.to_str().unwrap()],
    );
    lab.apply(&mc).expect_ok("roll out the new image");
    for n in 0..3 {
        assert_eq!(lab.installed(n), next_sha, "master-{n}");
        let version = lab
            .exec(n, &["etcd-backup", "--version"])
            .expect_ok("--version");
        assert_eq!(
            version.trim(),
            format!("etcd-backup {}+lab.next", env!("CARGO_PKG_VERSION")),
            "master-{n}"
        );
        assert_eq!(lab.is_active(n, INSTALL_UNIT), "active");
        timers_scheduled(lab, n);
    }
    // The new binary takes the backups: its version is in the new set's manifest.
    let set = backup_on_master_0(lab, "a backup with the new binary");
    let manifest = lab
        .exec(
            0,
            &[
                "cat",
                &format!("/var/lib/etcd-backup/sets/{set}/manifest.json"),
            ],
        )
        .expect_ok("read the manifest");
    let manifest: Value = serde_json::from_str(&manifest).unwrap();
    assert_eq!(
        manifest["tool_version"],
        format!("{}+lab.next", env!("CARGO_PKG_VERSION"))
    );
}

/// SIGKILL of the install unit at each step of an install, alternating between two pinned
/// binaries on master-1: each time the binary in place is one of the two, whole and runnable.
fn kill_9_of_the_install_leaves_old_or_new(lab: &Masters, pins: [(&str, &str); 2]) {
    const N: usize = 1;
    // Each waits (bounded) for a moment of the install; the unit's process group is then
    // stopped at once (so that the moment is not missed), looked at, and killed.
    let moments = [
        ("at once", "true"),
        (
            "while skopeo pulls",
            "until pgrep -x skopeo >/dev/null; do sleep 0.002; done",
        ),
        (
            "while tar extracts",
            "until pgrep -x tar >/dev/null; do sleep 0.002; done",
        ),
        (
            "while the new binary is written beside the old",
            "until compgen -G '/usr/local/bin/.etcd-backup.new.*' >/dev/null; do :; done",
        ),
        (
            "right after the rename",
            "until sha256sum /usr/local/bin/etcd-backup | grep -q ^{sha}; do sleep 0.005; done",
        ),
        ("after 0.2 s", "sleep 0.2"),
        ("after 0.6 s", "sleep 0.6"),
    ];
    let shas: Vec<&str> = pins.iter().map(|(_, sha)| *sha).collect();
    let mut outcomes = Vec::new();
    for (moment, wait) in moments {
        let installed = lab.installed(N);
        let (image, sha) = *pins.iter().find(|(_, sha)| *sha != installed).unwrap();
        let wait = wait.replace("{sha}", sha);
        let script = format!(
            "printf 'ETCD_BACKUP_IMAGE=%s\\nETCD_BACKUP_SHA256=%s\\n' '{image}' '{sha}' >/etc/etcd-backup/image.env
             systemctl restart --no-block {INSTALL_UNIT}
             timeout 20 bash -c \"{wait}\" || echo 'moment not seen'
             pid=$(systemctl show -p MainPID --value {INSTALL_UNIT})
             [ \"$pid\" != 0 ] && kill -STOP -- -\"$pid\" 2>/dev/null
             ls -a /usr/local/bin
             systemctl kill --signal=KILL {INSTALL_UNIT}
             for _ in $(seq 1 100); do
                 systemctl is-active -q {INSTALL_UNIT} || systemctl is-failed -q {INSTALL_UNIT} && break
                 sleep 0.05
             done"
        );
        let seen = lab.exec(N, &["bash", "-c", &script]).expect_ok(moment);
        let after = lab.installed(N);
        assert!(
            shas.contains(&after.as_str()),
            "killed {moment}: the binary is neither the old nor the new one ({after})\n{seen}"
        );
        lab.exec(N, &["etcd-backup", "--version"])
            .expect_ok(&format!("the binary runs after a kill {moment}"));
        outcomes.push(format!(
            "{moment}: {}{}",
            if after == installed { "old" } else { "new" },
            if seen.contains(".etcd-backup.new.") {
                " (the new one was beside it)"
            } else {
                ""
            }
        ));
    }
    eprintln!("kill -9 of {INSTALL_UNIT}: {}", outcomes.join("; "));
    // The next run completes and leaves nothing of the killed ones behind.
    lab.exec(N, &["systemctl", "restart", INSTALL_UNIT])
        .expect_ok("an install after the kills");
    let pinned = lab
        .exec(
            N,
            &[
                "sed",
                "-n",
                "s/^ETCD_BACKUP_SHA256=//p",
                "/etc/etcd-backup/image.env",
            ],
        )
        .expect_ok("the pin");
    assert_eq!(lab.installed(N), pinned.trim());
    let leftovers = lab
        .exec(
            N,
            &[
                "bash",
                "-c",
                "ls -d /usr/local/bin/.etcd-backup.new.* /var/tmp/etcd-backup-install.* 2>/dev/null || true",
            ],
        )
        .expect_ok("leftovers");
    assert_eq!(leftovers, "", "nothing left of the killed runs");
}
