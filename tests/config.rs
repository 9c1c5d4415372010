//! Config errors through the real binary: message names file:line:column, exit code 3.

use crate::util::*;

#[test]
fn config_errors_name_the_place_and_exit_3() {
    let node = Node::new("");
    let path = node.config_path();
    let table = [
        (
            "[store]\nroot = \"/x\"\nroott = \"/y\"\n",
            "3:1: unknown field `roott`",
        ),
        (
            "[backup]\ntimeout = \"10 minutes\"\n",
            "2:11: backup.timeout: invalid duration '10 minutes'",
        ),
        (
            "[retention]\nkeep_last = 0\n",
            "1:1: the retention policy is empty",
        ),
        (
            "[retention]\nkeep_last = \"three\"\n",
            "2:13: invalid type: string \"three\", expected u32",
        ),
    ];
    for (text, expected) in table {
        node.write_config_raw(text);
        for command in [&["check-config"][..], &["backup"], &["list"]] {
            node.run(command)
                .expect_code(3)
                .expect_stderr(&format!("{}:{expected}", path.display()));
        }
    }
}

#[test]
fn dropins_are_read_in_order_and_named_in_errors() {
    let node = Node::new("");
    let dropins = node.config_path().parent().unwrap().join("config.d");
    std::fs::create_dir_all(&dropins).unwrap();
    std::fs::write(dropins.join("20-late.toml"), "[backup]\ntimeout = \"7m\"\n").unwrap();
    std::fs::write(
        dropins.join("10-early.toml"),
        "[backup]\ntimeout = \"5m\"\nforce = \"always\"\n",
    )
    .unwrap();
    let run = node.run(&["check-config"]);
    run.expect_code(0)
        .expect_stdout("timeout = \"7m\"")
        .expect_stdout("force = \"always\"");
    run.expect_stdout("10-early.toml")
        .expect_stdout("20-late.toml");

    std::fs::write(
        dropins.join("30-bad.toml"),
        "\n[status]\nmax_age = \"soon\"\n",
    )
    .unwrap();
    node.run(&["check-config"])
        .expect_code(3)
        .expect_stderr(&format!(
            "{}:3:11: status.max_age",
            dropins.join("30-bad.toml").display()
        ));
}

#[test]
fn unreadable_or_missing_config_is_a_config_error_naming_the_file() {
    let node = Node::new("");
    // A directory where the file should be: unreadable even for root.
    std::fs::remove_file(node.config_path()).unwrap();
    std::fs::create_dir(node.config_path()).unwrap();
    node.run(&["check-config"])
        .expect_code(3)
        .expect_stderr(&node.config_path().display().to_string());
    std::fs::remove_dir(node.config_path()).unwrap();
    node.run(&["check-config"])
        .expect_code(3)
        .expect_stderr(&format!(
            "cannot read config file '{}'",
            node.config_path().display()
        ));
}

#[test]
fn check_config_prints_an_effective_config_that_reads_back() {
    let node = Node::new(
        "[retention]\nkeep_daily = 3\nkeep_within = \"36h\"\nmax_total_size = \"20GiB\"\n",
    );
    let first = node.run(&["check-config"]);
    first
        .expect_code(0)
        .expect_stdout("keep_within = \"1d12h\"")
        .expect_stdout("max_total_size = \"20GiB\"");
    node.write_config_raw(&first.stdout);
    let second = node.run(&["check-config"]);
    second.expect_code(0);
    let body = |s: &str| s.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&first.stdout), body(&second.stdout));
}

#[test]
fn usage_errors_exit_2_and_help_documents_exit_codes() {
    let node = Node::new("");
    node.run(&["frobnicate"]).expect_code(2);
    node.run(&["--help"])
        .expect_code(0)
        .expect_stdout("Exit codes:")
        .expect_stdout("5  busy");
}

#[test]
fn the_packaged_example_config_is_the_defaults() {
    // packaging/config.toml documents every key with its default: it must load and change
    // nothing but the node name it leaves to the hostname.
    let node = Node::new("");
    let example = repo().join("packaging/config.toml");
    let check = |config: &std::path::Path| {
        std::process::Command::new(BIN)
            .arg("--config")
            .arg(config)
            .arg("check-config")
            .output()
            .unwrap()
    };
    let shipped = check(&example);
    assert!(
        shipped.status.success(),
        "{}",
        String::from_utf8_lossy(&shipped.stderr)
    );
    let empty = node.dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let defaults = check(&empty);
    assert!(String::from_utf8_lossy(&shipped.stdout).contains("packaging/config.toml"));
    let body = |out: &[u8]| {
        String::from_utf8_lossy(out)
            .lines()
            .skip(1)
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(body(&shipped.stdout), body(&defaults.stdout));
}
