//! `render machineconfig` / `render node-disruption-policy` read back by a real YAML parser
//! (PyYAML), every data URL decoded back to the bytes that went in.

use crate::util::*;
use std::process::Command;

/// Parses YAML with PyYAML and returns it as JSON.
fn parse_yaml(yaml: &str) -> serde_json::Value {
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        "import sys, json, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
    ]);
    let out = run_with_stdin(cmd, yaml.as_bytes());
    assert!(
        out.status.success(),
        "not YAML: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The bytes of an Ignition `contents` (data URL, gzip when declared), decoded by Python.
fn decode(contents: &serde_json::Value) -> Vec<u8> {
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        "import sys, json, base64, gzip; c = json.load(sys.stdin); \
         d = base64.b64decode(c['source'].split(',', 1)[1]); \
         sys.stdout.buffer.write(gzip.decompress(d) if c.get('compression') == 'gzip' else d)",
    ]);
    let out = run_with_stdin(cmd, contents.to_string().as_bytes());
    assert!(out.status.success(), "cannot decode {contents}");
    out.stdout
}

/// `render machineconfig --node-config <config> <args…>`.
fn render(config: &std::path::Path, args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(BIN)
        .args(["render", "machineconfig", "--node-config"])
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

/// A successful render, parsed.
fn render_ok(config: &std::path::Path, args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let out = render(config, args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_yaml(&String::from_utf8(out.stdout).unwrap())
}

fn file<'a>(mc: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    mc["spec"]["config"]["storage"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == path)
}

#[test]
fn the_machineconfig_carries_everything_and_decodes_back() {
    let node = Node::new("");
    let config = node.dir.path().join("cluster-config.toml");
    std::fs::write(
        &config,
        "[retention]\nkeep_daily = 7\n[spray]\nuser = \"core\"\n",
    )
    .unwrap();
    let key = node.dir.path().join("spray_key");
    let keygen = Command::new("ssh-keygen")
        .args(["-q", "-t", "ecdsa", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(keygen.success());
    // A stand-in for the release binary (the debug one is tens of MB): any bytes must come back.
    let binary = node.dir.path().join("etcd-backup");
    let bytes: Vec<u8> = (0..512u32 << 10)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&binary, &bytes).unwrap();
    let mc = render_ok(
        &config,
        &[
            "--spray-key".as_ref(),
            key.as_os_str(),
            "--binary".as_ref(),
            binary.as_os_str(),
        ],
    );

    assert_eq!(mc["apiVersion"], "machineconfiguration.openshift.io/v1");
    assert_eq!(mc["kind"], "MachineConfig");
    assert_eq!(
        mc["metadata"]["labels"]["machineconfiguration.openshift.io/role"],
        "master"
    );
    assert_eq!(mc["spec"]["config"]["ignition"]["version"], "3.2.0");

    let installed = file(&mc, "/usr/local/bin/etcd-backup").unwrap();
    assert_eq!(installed["mode"], 493);
    assert_eq!(installed["contents"]["compression"], "gzip");
    assert!(
        decode(&installed["contents"]) == bytes,
        "the installed binary is the one given"
    );

    let installed_config = file(&mc, "/etc/etcd-backup/config.toml").unwrap();
    assert_eq!(installed_config["mode"], 384);
    assert_eq!(
        decode(&installed_config["contents"]),
        std::fs::read(&config).unwrap()
    );
    let private = file(&mc, "/etc/etcd-backup/spray_key").unwrap();
    assert_eq!(private["mode"], 384);
    assert_eq!(decode(&private["contents"]), std::fs::read(&key).unwrap());
    // No known_hosts given: a drop-in pins host keys on first contact.
    let dropin = file(&mc, "/etc/etcd-backup/config.d/50-host-key-policy.toml").unwrap();
    assert!(
        String::from_utf8(decode(&dropin["contents"]))
            .unwrap()
            .contains("host_key_policy = \"accept-new\"")
    );
    assert!(file(&mc, "/etc/etcd-backup/known_hosts").is_none());
    for dir in mc["spec"]["config"]["storage"]["directories"]
        .as_array()
        .unwrap()
    {
        assert_eq!(dir["mode"], 448, "{dir}");
    }

    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let users = mc["spec"]["config"]["passwd"]["users"].as_array().unwrap();
    assert_eq!(users[0]["name"], "core");
    assert_eq!(
        users[0]["sshAuthorizedKeys"][0],
        format!(
            "restrict,command=\"sudo -n /usr/local/bin/etcd-backup receive\" {}",
            public.trim()
        )
        .as_str()
    );

    let units = mc["spec"]["config"]["systemd"]["units"].as_array().unwrap();
    let mut seen = Vec::new();
    for unit in units {
        let name = unit["name"].as_str().unwrap();
        let shipped = std::fs::read_to_string(repo().join("systemd").join(name)).unwrap();
        assert_eq!(
            unit["contents"].as_str().unwrap(),
            shipped,
            "{name} differs from systemd/{name}"
        );
        assert_eq!(
            unit["enabled"],
            name.ends_with(".timer"),
            "{name}: timers enabled, services not"
        );
        seen.push(name.to_string());
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "etcd-backup-spray.service",
            "etcd-backup-spray.timer",
            "etcd-backup.service",
            "etcd-backup.timer"
        ]
    );
}

#[test]
fn known_hosts_replace_accept_new_and_a_pinned_node_name_is_refused() {
    let node = Node::new("");
    let config = node.dir.path().join("c.toml");
    std::fs::write(&config, "").unwrap();
    let known = node.dir.path().join("known_hosts");
    std::fs::write(&known, "10.0.0.4 ecdsa-sha2-nistp256 AAAA\n").unwrap();
    let binary = node.dir.path().join("etcd-backup");
    std::fs::write(&binary, b"\x7fELF stand-in").unwrap();
    let mc = render_ok(
        &config,
        &[
            "--known-hosts".as_ref(),
            known.as_os_str(),
            "--binary".as_ref(),
            binary.as_os_str(),
        ],
    );
    assert_eq!(
        decode(&file(&mc, "/etc/etcd-backup/known_hosts").unwrap()["contents"]),
        b"10.0.0.4 ecdsa-sha2-nistp256 AAAA\n"
    );
    assert!(file(&mc, "/etc/etcd-backup/config.d/50-host-key-policy.toml").is_none());
    // A generated key is ECDSA P-256 (FIPS-mode sshd refuses ed25519).
    assert!(
        mc["spec"]["config"]["passwd"]["users"][0]["sshAuthorizedKeys"][0]
            .as_str()
            .unwrap()
            .contains("ecdsa-sha2-nistp256")
    );

    std::fs::write(&config, "[node]\nname = \"master-0\"\n").unwrap();
    let out = render(&config, &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("node.name is set"));
    std::fs::write(&config, "[retention]\nkeep_last = 0\n").unwrap();
    let out = render(&config, &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!(
        "{}:1:1: the retention policy is empty",
        config.display()
    )));
}

#[test]
fn the_node_disruption_policy_restarts_timers_and_reboots_nothing() {
    let out = Command::new(BIN)
        .args(["render", "node-disruption-policy"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let policy = parse_yaml(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(policy["apiVersion"], "operator.openshift.io/v1");
    assert_eq!(policy["metadata"]["name"], "cluster");
    let spec = &policy["spec"]["nodeDisruptionPolicy"];
    for file in spec["files"].as_array().unwrap() {
        assert_eq!(
            file["actions"],
            serde_json::json!([{"type": "None"}]),
            "{file}"
        );
    }
    let timer = spec["units"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "etcd-backup.timer")
        .unwrap();
    assert_eq!(
        timer["actions"],
        serde_json::json!([{"type": "DaemonReload"}, {"type": "Restart", "restart": {"serviceName": "etcd-backup.timer"}}])
    );
    assert_eq!(
        spec["sshkey"]["actions"],
        serde_json::json!([{"type": "None"}])
    );
}
