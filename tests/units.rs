//! The systemd units in `systemd/`: `systemd-analyze verify` must print nothing (it exits 0 on
//! many mistakes and only warns), and the timers must have the schedule we document.

use crate::util::repo;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// A fake root with the units where the MachineConfig puts them and stubs at the ExecStart paths.
fn fake_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let units = root.path().join("etc/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    for entry in std::fs::read_dir(repo().join("systemd")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, units.join(path.file_name().unwrap())).unwrap();
    }
    // systemd-analyze resolves dependencies (sysinit.target, timers.target…) inside the root.
    let lib = root.path().join("usr/lib/systemd");
    std::fs::create_dir_all(&lib).unwrap();
    let copied = Command::new("cp")
        .arg("-a")
        .arg("/usr/lib/systemd/system")
        .arg(&lib)
        .status()
        .unwrap();
    assert!(
        copied.success(),
        "cannot copy /usr/lib/systemd/system (Debian package systemd)"
    );
    let bin = root.path().join("usr/local/bin");
    std::fs::create_dir_all(&bin).unwrap();
    for stub in ["etcd-backup", "etcd-backup-install", "cluster-backup.sh"] {
        std::fs::write(bin.join(stub), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(bin.join(stub), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    root
}

fn unit_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo().join("systemd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn systemd_analyze_verify_prints_nothing() {
    let root = fake_root();
    let names = unit_names();
    assert!(
        names.contains(&"etcd-backup.service".to_string())
            && names.contains(&"etcd-backup.timer".to_string())
    );
    let units: Vec<_> = names
        .iter()
        .map(|n| root.path().join("etc/systemd/system").join(n))
        .collect();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.path().display()))
        .args(&units)
        .output()
        .expect("systemd-analyze (Debian package systemd) is needed: run tests/lab/install-deps");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify said:\n{text}"
    );
}

#[test]
fn the_check_catches_a_typo() {
    // The check above is only worth something if it fails on a mistake systemd merely warns on.
    let root = fake_root();
    let unit = root.path().join("etc/systemd/system/etcd-backup.service");
    let text = std::fs::read_to_string(&unit)
        .unwrap()
        .replace("Type=oneshot", "Type=oneshoot");
    std::fs::write(&unit, text).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.path().display()))
        .arg(&unit)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("oneshoot"), "{text}");
}

/// `systemd-analyze calendar`'s next `iterations` elapses of `calendar` after 2026-01-01 10:20 UTC.
fn next_elapses(calendar: &str, iterations: u32) -> String {
    let out = Command::new("systemd-analyze")
        .args(["calendar", "--base-time=2026-01-01 10:20:00 UTC"])
        .arg(format!("--iterations={iterations}"))
        .arg(calendar)
        .env("TZ", "UTC")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn directive(unit: &Path, key: &str) -> Option<String> {
    std::fs::read_to_string(unit)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
}

#[test]
fn timers_are_persistent_randomized_and_hourly() {
    let timer = repo().join("systemd/etcd-backup.timer");
    assert_eq!(directive(&timer, "Persistent").as_deref(), Some("true"));
    assert!(directive(&timer, "RandomizedDelaySec").is_some());
    let calendar = directive(&timer, "OnCalendar").unwrap();
    let text = next_elapses(&calendar, 2);
    assert!(
        text.contains("2026-01-01 11:00:00") && text.contains("2026-01-01 12:00:00"),
        "{text}"
    );
    let service = repo().join("systemd/etcd-backup.service");
    assert_eq!(directive(&service, "Type").as_deref(), Some("oneshot"));
    assert_eq!(
        directive(&service, "ExecStart").as_deref(),
        Some("/usr/local/bin/etcd-backup backup")
    );
}

#[test]
fn all_four_units_ship() {
    let names = unit_names();
    for unit in [
        "etcd-backup.service",
        "etcd-backup.timer",
        "etcd-backup-spray.service",
        "etcd-backup-spray.timer",
    ] {
        assert!(
            names.contains(&unit.to_string()),
            "{unit} missing from systemd/"
        );
    }
}

#[test]
fn spray_timer_runs_every_15_minutes() {
    let timer = repo().join("systemd/etcd-backup-spray.timer");
    assert_eq!(directive(&timer, "Persistent").as_deref(), Some("true"));
    assert!(directive(&timer, "RandomizedDelaySec").is_some());
    let calendar = directive(&timer, "OnCalendar").unwrap();
    let text = next_elapses(&calendar, 3);
    for next in ["10:30:00", "10:45:00", "11:00:00"] {
        assert!(text.contains(&format!("2026-01-01 {next}")), "{text}");
    }
    let service = repo().join("systemd/etcd-backup-spray.service");
    assert_eq!(
        directive(&service, "ExecStart").as_deref(),
        Some("/usr/local/bin/etcd-backup spray")
    );
}
