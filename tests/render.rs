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
    let rendered = render(
        &config,
        &[
            "--spray-key".as_ref(),
            key.as_os_str(),
            "--image".as_ref(),
            format!("x@{DIGEST}").as_ref(),
        ],
    );
    let stderr = String::from_utf8_lossy(&rendered.stderr);
    assert!(rendered.status.success(), "{stderr}");
    let mc = parse_yaml(&String::from_utf8(rendered.stdout.clone()).unwrap());

    assert_eq!(mc["apiVersion"], "machineconfiguration.openshift.io/v1");
    assert_eq!(mc["kind"], "MachineConfig");
    assert_eq!(
        mc["metadata"]["labels"]["machineconfiguration.openshift.io/role"],
        "master"
    );
    assert_eq!(mc["spec"]["config"]["ignition"]["version"], "3.2.0");

    // The binary comes from the image, installed by its unit; never inside the MachineConfig.
    assert!(file(&mc, "/usr/local/bin/etcd-backup").is_none());

    let installed_config = file(&mc, "/etc/etcd-backup/config.toml").unwrap();
    assert_eq!(installed_config["mode"], 384);
    assert_eq!(
        decode(&installed_config["contents"]),
        std::fs::read(&config).unwrap()
    );
    let private = file(&mc, "/etc/etcd-backup/spray_key").unwrap();
    assert_eq!(private["mode"], 384);
    assert_eq!(decode(&private["contents"]), std::fs::read(&key).unwrap());
    // No known_hosts given: a drop-in pins host keys on first contact, and the admin is told
    // how to collect them instead.
    assert!(
        stderr.contains("no --known-hosts")
            && stderr.contains("ssh_host_ecdsa_key.pub")
            && stderr.contains("> known_hosts"),
        "{stderr}"
    );
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

    assert_eq!(
        units_of(&mc),
        [
            "etcd-backup-install.service",
            "etcd-backup-spray.service",
            "etcd-backup-spray.timer",
            "etcd-backup-verify.service",
            "etcd-backup-verify.timer",
            "etcd-backup.service",
            "etcd-backup.timer"
        ]
    );
}

/// The units of a MachineConfig, each checked against `systemd/`: same contents, and enabled
/// exactly when systemd starts it (timers, the install unit).
fn units_of(mc: &serde_json::Value) -> Vec<String> {
    let mut seen = Vec::new();
    for unit in mc["spec"]["config"]["systemd"]["units"].as_array().unwrap() {
        let name = unit["name"].as_str().unwrap();
        let shipped = std::fs::read_to_string(repo().join("systemd").join(name)).unwrap();
        assert_eq!(
            unit["contents"].as_str().unwrap(),
            shipped,
            "{name} differs from systemd/{name}"
        );
        assert_eq!(
            unit["enabled"],
            name.ends_with(".timer") || name == "etcd-backup-install.service",
            "{name}: timers and the install unit enabled, services not"
        );
        seen.push(name.to_string());
    }
    seen.sort();
    seen
}

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn by_default_the_machineconfig_pins_an_image_and_the_binary_sha256() {
    let node = Node::new("");
    let config = node.dir.path().join("c.toml");
    std::fs::write(&config, "").unwrap();
    let binary = node.dir.path().join("etcd-backup");
    std::fs::write(&binary, b"\x7fELF the binary the image was built from").unwrap();
    let image = format!("mirror.example.com:5000/ocp/etcd-backup@{DIGEST}");
    let mc = render_ok(
        &config,
        &[
            "--image".as_ref(),
            image.as_ref(),
            "--binary".as_ref(),
            binary.as_os_str(),
        ],
    );
    assert!(
        file(&mc, "/usr/local/bin/etcd-backup").is_none(),
        "no binary inside"
    );
    let env = file(&mc, "/etc/etcd-backup/image.env").unwrap();
    assert_eq!(env["mode"], 384);
    let env = String::from_utf8(decode(&env["contents"])).unwrap();
    let lines: Vec<&str> = env.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        lines,
        [
            format!("ETCD_BACKUP_IMAGE={image}"),
            format!("ETCD_BACKUP_SHA256={}", sha256_hex(&binary)),
        ]
    );
    let script = file(&mc, "/usr/local/bin/etcd-backup-install").unwrap();
    assert_eq!(script["mode"], 493);
    assert_eq!(
        decode(&script["contents"]),
        std::fs::read(repo().join("packaging/etcd-backup-install")).unwrap()
    );
    assert_eq!(
        units_of(&mc),
        [
            "etcd-backup-install.service",
            "etcd-backup-spray.service",
            "etcd-backup-spray.timer",
            "etcd-backup-verify.service",
            "etcd-backup-verify.timer",
            "etcd-backup.service",
            "etcd-backup.timer"
        ]
    );

    // An explicit sha256 is pinned as given (lowercased).
    let explicit = "AB".repeat(32);
    let mc = render_ok(
        &config,
        &[
            "--image".as_ref(),
            image.as_ref(),
            "--binary-sha256".as_ref(),
            explicit.as_ref(),
        ],
    );
    let env = decode(&file(&mc, "/etc/etcd-backup/image.env").unwrap()["contents"]);
    assert!(
        String::from_utf8(env)
            .unwrap()
            .contains(&format!("\nETCD_BACKUP_SHA256={}\n", "ab".repeat(32)))
    );
}

#[test]
fn an_unpinned_image_no_image_or_a_removed_option_is_a_usage_error() {
    let node = Node::new("");
    let config = node.dir.path().join("c.toml");
    std::fs::write(&config, "").unwrap();
    for (args, why) in [
        (
            vec!["--image", "quay.io/acme/etcd-backup:0.2.0"],
            "has no digest",
        ),
        (
            vec!["--image", "quay.io/acme/etcd-backup@sha256:1234"],
            "64 lowercase hex",
        ),
        (vec![], "--image"),
        (
            vec![
                "--image",
                &format!("x@{DIGEST}"),
                "--binary",
                "b",
                "--binary-sha256",
                "ab",
            ],
            "cannot be used with",
        ),
        // The binary no longer travels inside the MachineConfig: it could not (over a MiB,
        // more than etcd takes in one request with the pool's other configs).
        (
            vec!["--image", &format!("x@{DIGEST}"), "--embed-binary"],
            "unexpected argument '--embed-binary'",
        ),
        (
            vec!["--image", &format!("x@{DIGEST}"), "--force"],
            "unexpected argument '--force'",
        ),
    ] {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        let out = render(&config, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn known_hosts_replace_accept_new_and_a_pinned_node_name_is_refused() {
    let node = Node::new("");
    let config = node.dir.path().join("c.toml");
    std::fs::write(&config, "").unwrap();
    let known = node.dir.path().join("known_hosts");
    std::fs::write(&known, "10.0.0.4 ecdsa-sha2-nistp256 AAAA\n").unwrap();
    let image = format!("x@{DIGEST}");
    let rendered = render(
        &config,
        &[
            "--known-hosts".as_ref(),
            known.as_os_str(),
            "--image".as_ref(),
            image.as_ref(),
        ],
    );
    let stderr = String::from_utf8_lossy(&rendered.stderr);
    assert!(rendered.status.success(), "{stderr}");
    assert!(!stderr.contains("no --known-hosts"), "{stderr}");
    let mc = parse_yaml(&String::from_utf8(rendered.stdout.clone()).unwrap());
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
    let out = render(&config, &["--image".as_ref(), image.as_ref()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("node.name is set"));
    std::fs::write(&config, "[retention]\nkeep_last = 0\n").unwrap();
    let out = render(&config, &["--image".as_ref(), image.as_ref()]);
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
    let restart =
        |unit: &str| serde_json::json!({"type": "Restart", "restart": {"serviceName": unit}});
    let reinstall = serde_json::json!([
        restart("etcd-backup-install.service"),
        restart("etcd-backup.timer"),
        restart("etcd-backup-spray.timer"),
        restart("etcd-backup-verify.timer")
    ]);
    let files = spec["files"].as_array().unwrap();
    for file in files {
        let path = file["path"].as_str().unwrap();
        if path == "/etc/etcd-backup/image.env" || path == "/usr/local/bin/etcd-backup-install" {
            assert_eq!(file["actions"], reinstall, "a new pin reinstalls: {file}");
        } else {
            assert_eq!(
                file["actions"],
                serde_json::json!([{"type": "None"}]),
                "{file}"
            );
        }
    }
    // Every file either MachineConfig can carry is covered: nothing of ours reboots a master.
    let node = Node::new("");
    let config = node.dir.path().join("c.toml");
    std::fs::write(&config, "").unwrap();
    let known = node.dir.path().join("known_hosts");
    std::fs::write(&known, "").unwrap();
    let image = format!("x@{DIGEST}");
    for args in [
        vec!["--image".as_ref(), image.as_ref()],
        vec![
            "--image".as_ref(),
            image.as_ref(),
            "--known-hosts".as_ref(),
            known.as_os_str(),
        ],
    ] {
        let mc = render_ok(&config, &args);
        for f in mc["spec"]["config"]["storage"]["files"].as_array().unwrap() {
            assert!(
                files.iter().any(|p| p["path"] == f["path"]),
                "{} is not in the policy",
                f["path"]
            );
        }
        for u in mc["spec"]["config"]["systemd"]["units"].as_array().unwrap() {
            assert!(
                spec["units"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == u["name"]),
                "{} is not in the policy",
                u["name"]
            );
        }
    }
    let install = spec["units"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "etcd-backup-install.service")
        .unwrap();
    assert_eq!(
        install["actions"],
        serde_json::json!([{"type": "DaemonReload"}, restart("etcd-backup-install.service")])
    );
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

#[test]
fn s3_credentials_ride_along_0600_and_are_checked_against_the_targets() {
    use std::os::unix::fs::PermissionsExt;
    let node = Node::new("");
    let config = node.dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[[spray.target]]\nkind = \"s3\"\nendpoint = \"https://s3.example.com\"\n\
         bucket = \"etcd-backups\"\ncredentials = \"/etc/etcd-backup/s3-credentials\"\n\
         profile = \"backup\"\n",
    )
    .unwrap();
    let credentials = node.dir.path().join("credentials");
    let text = "[backup]\naws_access_key_id = AKIDLAB\naws_secret_access_key = SECRETLAB\n";
    std::fs::write(&credentials, text).unwrap();
    let image = format!("mirror.example.com:5000/ocp/etcd-backup@{DIGEST}");
    let with_image = |extra: &[&std::ffi::OsStr]| -> Vec<std::ffi::OsString> {
        let mut args = vec!["--image".into(), image.clone().into()];
        args.extend(extra.iter().map(|a| a.to_os_string()));
        args
    };
    let run = |extra: &[&std::ffi::OsStr]| {
        let args = with_image(extra);
        render(
            &config,
            &args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>(),
        )
    };
    let flag = std::ffi::OsStr::new("--s3-credentials");

    // Group-readable: refused, naming the file.
    std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o640)).unwrap();
    let refused = run(&[flag, credentials.as_os_str()]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains(&*credentials.to_string_lossy()) && stderr.contains("chmod 600"),
        "{stderr}"
    );

    // 0600: carried, byte for byte, 0600, at the path the target reads.
    std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o600)).unwrap();
    let with = with_image(&[flag, credentials.as_os_str()]);
    let mc = render_ok(
        &config,
        &with.iter().map(|a| a.as_os_str()).collect::<Vec<_>>(),
    );
    let carried = file(&mc, "/etc/etcd-backup/s3-credentials").expect("the credentials file");
    assert_eq!(carried["mode"], 384);
    assert_eq!(decode(&carried["contents"]), text.as_bytes());

    // A file without the target's profile: refused, naming target and profile, no value.
    std::fs::write(&credentials, text.replace("[backup]", "[default]")).unwrap();
    let out = run(&[flag, credentials.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("etcd-backups") && stderr.contains("'backup'"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("SECRETLAB") && !stderr.contains("AKIDLAB"),
        "{stderr}"
    );

    // No file given: rendered, with a warning that the masters need it some other way.
    let out = run(&[]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/etc/etcd-backup/s3-credentials"),
        "{stderr}"
    );
}

#[test]
fn the_signing_key_rides_along_0600_where_the_config_reads_it_and_recipients_stay_public() {
    use std::os::unix::fs::PermissionsExt;
    let node = Node::new("");
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("signing_key");
    let keygen = |out: &std::path::Path, signing: bool| {
        let mut cmd = Command::new(BIN);
        cmd.arg("keygen").arg("--out").arg(out);
        if signing {
            cmd.arg("--signing");
        }
        let done = cmd.output().unwrap();
        assert!(done.status.success(), "{done:?}");
        String::from_utf8(done.stdout).unwrap().trim().to_string()
    };
    let signer = keygen(&key, true);
    let recipient = keygen(&keys.path().join("identity.txt"), false);
    let config = node.dir.path().join("c.toml");
    let seal = |path: &str| {
        format!(
            "[seal]\nrecipients = [\"{recipient}\"]\nsigning_key = \"{path}\"\nsigners = [\"{signer}\"]\n"
        )
    };
    std::fs::write(&config, seal("/etc/etcd-backup/signing_key")).unwrap();
    let image = format!("mirror.example.com:5000/ocp/etcd-backup@{DIGEST}");
    let args = |extra: &[&std::ffi::OsStr]| -> Vec<std::ffi::OsString> {
        let mut args = vec!["--image".into(), image.clone().into()];
        args.extend(extra.iter().map(|a| a.to_os_string()));
        args
    };
    let flag = std::ffi::OsStr::new("--signing-key");
    let with = args(&[flag, key.as_os_str()]);
    let mc = render_ok(
        &config,
        &with.iter().map(|a| a.as_os_str()).collect::<Vec<_>>(),
    );
    let carried = file(&mc, "/etc/etcd-backup/signing_key").expect("the signing key");
    assert_eq!(carried["mode"], 384);
    assert_eq!(decode(&carried["contents"]), std::fs::read(&key).unwrap());
    // The config carries the public recipients and signer only; no identity travels.
    let config_file = file(&mc, "/etc/etcd-backup/config.toml").unwrap();
    let text = String::from_utf8(decode(&config_file["contents"])).unwrap();
    assert!(
        text.contains(&recipient) && !text.contains("AGE-SECRET-KEY"),
        "{text}"
    );

    // A key others can read is refused; a config that reads another path is refused.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = render(
        &config,
        &with.iter().map(|a| a.as_os_str()).collect::<Vec<_>>(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&config, seal("/root/other_key")).unwrap();
    let out = render(
        &config,
        &with.iter().map(|a| a.as_os_str()).collect::<Vec<_>>(),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not \"/etc/etcd-backup/signing_key\"")
    );
    // Without the key: rendered, with a warning that backups fail until the masters have it.
    std::fs::write(&config, seal("/etc/etcd-backup/signing_key")).unwrap();
    let bare = args(&[]);
    let out = render(
        &config,
        &bare.iter().map(|a| a.as_os_str()).collect::<Vec<_>>(),
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("or their backups fail"));
    // The node disruption policy knows the path: a new key restarts nothing.
    let policy = Command::new(BIN)
        .args(["render", "node-disruption-policy"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&policy.stdout).contains("/etc/etcd-backup/signing_key"));
}
