//! The documentation, checked where a machine can: no dead link or anchor in any Markdown file
//! of the repository; every `etcd-backup …` command line shown in README.md and docs/ parses
//! with the binary's own arguments; docs/commands.md lists every command and flag the binary
//! has, and only those; docs/configuration.md and packaging/config.toml cover every key the
//! config loader knows, and only those (the loader's own "expected one of" lists are the schema).

use crate::util::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every Markdown file of the repository but build output and vendored trees.
fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if !matches!(name.as_str(), "target" | ".git" | "corpus" | "artifacts") {
                    walk(&path, out);
                }
            } else if name.ends_with(".md") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo(), &mut out);
    out.sort();
    out
}

/// The lines of `text` but the fences, each with whether it is inside a fenced code block.
fn fenced_or_not(text: &str) -> impl Iterator<Item = (bool, &str)> {
    let mut fenced = false;
    text.lines().filter_map(move |line| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            None
        } else {
            Some((fenced, line))
        }
    })
}

/// The text outside fenced code blocks (links inside them are examples, not links).
fn prose(text: &str) -> String {
    fenced_or_not(text)
        .filter(|(fenced, _)| !fenced)
        .map(|(_, line)| format!("{line}\n"))
        .collect()
}

/// GitHub's anchor for a heading: lower case, punctuation but '-' and '_' dropped, spaces as '-'.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    prose(text)
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect()
}

/// The targets of inline links `[text](target)` in `text`'s prose.
fn links(text: &str) -> Vec<String> {
    let prose = prose(text);
    let mut out = Vec::new();
    let mut rest = prose.as_str();
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find(')') {
            let target = &rest[..end];
            if !target.contains(char::is_whitespace) {
                out.push(target.to_string());
            }
        }
    }
    out
}

#[test]
fn no_markdown_file_links_to_nothing() {
    let mut dead = Vec::new();
    let files = markdown_files();
    assert!(files.len() > 20, "{files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, fragment) = target.split_once('#').unwrap_or((&target, ""));
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            let shown = file.strip_prefix(repo()).unwrap().display().to_string();
            if !resolved.exists() {
                dead.push(format!("{shown}: {target}: no such file"));
                continue;
            }
            if !fragment.is_empty()
                && resolved.extension().is_some_and(|e| e == "md")
                && !anchors(&std::fs::read_to_string(&resolved).unwrap()).contains(fragment)
            {
                dead.push(format!("{shown}: {target}: no such heading"));
            }
        }
    }
    assert!(dead.is_empty(), "dead links:\n{}", dead.join("\n"));
}

/// A newcomer's path: README → quickstart → install → restore runbook, each a link away.
#[test]
fn a_newcomer_reaches_install_and_restore_from_the_readme() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let links = links(&readme);
    for doc in [
        "docs/install-machineconfig.md",
        "docs/install-helm.md",
        "docs/restore.md",
        "docs/configuration.md",
        "docs/operations.md",
    ] {
        assert!(
            links.iter().any(|l| l == doc),
            "README.md does not link {doc}"
        );
    }
    assert!(readme.contains("tests/lab/quickstart") && readme.contains("tests/run-all"));
    assert!(
        readme.lines().count() <= 220,
        "README.md is the front door: {} lines",
        readme.lines().count()
    );
}

/// Shell words of one command line: quotes and backslash-newlines as a shell reads them,
/// `$(…)` kept as one word; stops at a comment, a pipe, a redirection or `&&`.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut chars = line.chars().peekable();
    let mut quote: Option<char> = None;
    let mut depth = 0;
    let mut started = false;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') if depth == 0 => {
                quote = Some(c);
                started = true;
            }
            (None, '$') if chars.peek() == Some(&'(') => {
                depth += 1;
                word.push(c);
                started = true;
            }
            (None, ')') if depth > 0 => {
                depth -= 1;
                word.push(c);
            }
            (None, c) if depth > 0 => word.push(c),
            (None, '#' | '|' | '>' | '<' | ';' | '&') if !started => break,
            (None, c) if c.is_whitespace() => {
                if started {
                    out.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            (None, c) => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push(word);
    }
    out
}

/// A command line with its placeholders made concrete: `<set-id>` and the like as a word, a
/// digest shown as `sha256:…` or computed (`$(cat etcd-backup.digest)`) as one of zeros.
fn placeholders(line: &str) -> String {
    let zeros = format!("sha256:{}", "0".repeat(64));
    let mut out = line
        .replace("sha256:…", &zeros)
        .replace("$(cat etcd-backup.digest)", &zeros);
    while let Some(start) = out.find('<') {
        let Some(len) = out[start..].find('>') else {
            break;
        };
        let inner = &out[start + 1..start + len];
        if inner.is_empty() || !inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            break;
        }
        out.replace_range(start..=start + len, "PLACEHOLDER");
    }
    out
}

/// Every `etcd-backup …` command line in the fenced blocks of README.md and docs/ (with its
/// continuation lines), as shell words from `etcd-backup` on.
fn command_lines() -> Vec<(String, Vec<String>)> {
    let mut files = vec![repo().join("README.md")];
    files.extend(
        markdown_files()
            .into_iter()
            .filter(|f| f.starts_with(repo().join("docs"))),
    );
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut pending = String::new();
        for (_, line) in fenced_or_not(&text).filter(|(fenced, _)| *fenced) {
            let joined = pending.clone() + line;
            if let Some(stripped) = joined.strip_suffix('\\') {
                pending = stripped.to_string();
                continue;
            }
            pending.clear();
            let all = words(&placeholders(&joined));
            // The binary in command position: first, or after sudo, `chroot /host`, `--`.
            let Some(at) = all.iter().enumerate().position(|(i, w)| {
                (w == "etcd-backup" || w.ends_with("/etcd-backup"))
                    && (i == 0 || matches!(all[i - 1].as_str(), "sudo" | "-E" | "/host" | "--"))
            }) else {
                continue;
            };
            let shown = file.strip_prefix(repo()).unwrap().display().to_string();
            out.push((format!("{shown}: {joined}"), all[at..].to_vec()));
        }
    }
    out
}

#[test]
fn every_command_line_in_the_docs_parses() {
    let lines = command_lines();
    assert!(lines.len() >= 30, "{} command lines found", lines.len());
    let mut wrong = Vec::new();
    for (where_, words) in &lines {
        if let Err(e) = etcd_backup::cli::command().try_get_matches_from(words)
            && !matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            )
        {
            wrong.push(format!(
                "{where_}\n  {}",
                e.to_string().lines().next().unwrap()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Each command of the binary (`render machineconfig` as two words) with its long flags,
/// hidden ones included.
fn binary_commands() -> Vec<(String, BTreeSet<String>)> {
    fn visit(cmd: &clap::Command, path: &str, out: &mut Vec<(String, BTreeSet<String>)>) {
        let flags: BTreeSet<String> = cmd
            .get_arguments()
            .filter(|a| !a.is_global_set())
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .filter(|f| f != "--help" && f != "--version")
            .collect();
        if cmd.has_subcommands() {
            for sub in cmd.get_subcommands() {
                let name = if path.is_empty() {
                    sub.get_name().to_string()
                } else {
                    format!("{path} {}", sub.get_name())
                };
                visit(sub, &name, out);
            }
        } else {
            out.push((path.to_string(), flags));
        }
    }
    let mut out = Vec::new();
    visit(&etcd_backup::cli::command(), "", &mut out);
    out.retain(|(name, _)| name != "help" && !name.ends_with(" help"));
    out
}

#[test]
fn the_command_reference_lists_every_command_and_flag_and_only_those() {
    let text = std::fs::read_to_string(repo().join("docs/commands.md")).unwrap();
    // Rows of the commands table: "| `etcd-backup <command> [flags…]` | what it does |".
    let rows: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("| `etcd-backup "))
        .map(|l| l.split("` |").next().unwrap())
        .collect();
    let documented = |row: &str| -> (String, BTreeSet<String>) {
        let name: Vec<&str> = row
            .split_whitespace()
            .take_while(|w| {
                !w.starts_with('-') && w.chars().all(|c| c.is_ascii_lowercase() || c == '-')
            })
            .collect();
        let flags = row
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(str::to_string)
            .collect();
        (name.join(" "), flags)
    };
    let mut docs: Vec<(String, BTreeSet<String>)> = Vec::new();
    for row in rows {
        let (name, flags) = documented(row);
        match docs.iter_mut().find(|(n, _)| *n == name) {
            Some((_, known)) => known.extend(flags),
            None => docs.push((name, flags)),
        }
    }
    let mut wrong = Vec::new();
    for (name, flags) in binary_commands() {
        match docs.iter().find(|(n, _)| *n == name) {
            None => wrong.push(format!("`{name}` is not in docs/commands.md")),
            Some((_, shown)) => {
                for flag in flags.difference(shown) {
                    wrong.push(format!("`{name}`: {flag} is not documented"));
                }
                for flag in shown.difference(&flags) {
                    wrong.push(format!("`{name}`: {flag} is documented but does not exist"));
                }
            }
        }
    }
    let binary: Vec<String> = binary_commands().into_iter().map(|(n, _)| n).collect();
    for (name, _) in &docs {
        if !binary.contains(name) {
            wrong.push(format!(
                "docs/commands.md lists `{name}`, which the binary lacks"
            ));
        }
    }
    // The global options, once.
    for global in ["--config", "--verbose"] {
        if !text.contains(global) {
            wrong.push(format!("the global option {global} is not documented"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The loader's schema: each table's keys as its "unknown field … expected one of" error
/// names them (the real binary, serde's own list), dotted; `[[spray.target]]`'s as
/// `spray.target.<key>`.
fn schema_keys() -> BTreeSet<String> {
    let dir = tempfile::tempdir().unwrap();
    let expected = |toml: &str| -> Vec<String> {
        let path = dir.path().join("probe.toml");
        std::fs::write(&path, toml).unwrap();
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .arg("check-config")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let list = stderr
            .split_once("expected ")
            .unwrap_or_else(|| panic!("{toml}: {stderr}"))
            .1;
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    let mut keys = BTreeSet::new();
    for section in expected("not_a_table = 1\n") {
        for key in expected(&format!("[{section}]\nnot_a_key = 1\n")) {
            if section == "spray" && key == "target" {
                for target_key in expected("[[spray.target]]\nkind = \"dir\"\nnot_a_key = 1\n") {
                    keys.insert(format!("spray.target.{target_key}"));
                }
            } else {
                keys.insert(format!("{section}.{key}"));
            }
        }
    }
    keys
}

/// The keys of docs/configuration.md's tables: every backticked name in a row's first cell;
/// a dotted one gives its section to the undotted ones after it in the cell, and
/// `[[spray.target]]` gives its own to undotted names that start a cell, from there on.
fn documented_keys() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo().join("docs/configuration.md")).unwrap();
    let mut keys = BTreeSet::new();
    let mut table_prefix: Option<String> = None;
    for line in prose(&text).lines() {
        let Some(first) = line.strip_prefix("| `") else {
            continue;
        };
        let cell = first.split(" |").next().unwrap();
        let mut prefix = table_prefix.clone();
        for (i, token) in format!("`{cell}").split('`').enumerate() {
            if i % 2 == 0 {
                continue;
            }
            if let Some(table) = token.strip_prefix("[[").and_then(|t| t.strip_suffix("]]")) {
                table_prefix = Some(table.to_string());
                prefix = table_prefix.clone();
                continue;
            }
            let name = token.split(" =").next().unwrap().trim();
            match name.rsplit_once('.') {
                Some((section, _)) => {
                    keys.insert(name.to_string());
                    prefix = Some(section.to_string());
                }
                None => {
                    let section = prefix
                        .clone()
                        .unwrap_or_else(|| panic!("'{name}' has no section: {line}"));
                    keys.insert(format!("{section}.{name}"));
                }
            }
        }
    }
    keys
}

/// The keys of packaging/config.toml, set or commented out (`# key = …`), by their tables.
fn packaged_keys() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo().join("packaging/config.toml")).unwrap();
    let mut keys = BTreeSet::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim_start_matches('#').trim();
        if let Some(table) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            section = table.to_string();
        } else if let Some(table) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = table.to_string();
        } else if let Some((key, _)) = line.split_once(" = ")
            && !section.is_empty()
            && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            keys.insert(format!("{section}.{key}"));
        }
    }
    keys
}

#[test]
fn the_configuration_reference_and_the_packaged_config_cover_every_key_and_only_those() {
    let schema = schema_keys();
    assert!(schema.len() > 60, "{schema:?}");
    assert!(schema.contains("spray.target.part_size") && schema.contains("node.name"));
    for (what, keys) in [
        ("docs/configuration.md", documented_keys()),
        ("packaging/config.toml", packaged_keys()),
    ] {
        let missing: Vec<&String> = schema.difference(&keys).collect();
        let unknown: Vec<&String> = keys.difference(&schema).collect();
        assert!(
            missing.is_empty() && unknown.is_empty(),
            "{what}: missing {missing:?}; not keys of the config {unknown:?}"
        );
    }
}

#[test]
fn the_word_splitter_reads_shell_lines_as_a_shell_would() {
    assert_eq!(
        words("sudo etcd-backup stage 'a b' \"c\" # note"),
        ["sudo", "etcd-backup", "stage", "a b", "c"]
    );
    assert_eq!(
        words("x --image r@$(cat d) > out.yaml"),
        ["x", "--image", "r@$(cat d)"]
    );
    assert_eq!(words("a | b && c"), ["a"]);
}

/// `render man` writes a page for the binary and each command, and `man` renders every one
/// without a warning; the bash completion script parses and knows the commands.
#[test]
fn man_pages_render_without_warnings_and_completions_parse() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["render", "man"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut pages: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pages.sort();
    let names: Vec<String> = pages
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for (name, _) in binary_commands() {
        if name == "receive" || name == "tls-issue" {
            continue; // hidden: what peers and pods run, not people
        }
        let page = format!("etcd-backup-{}.1", name.replace(' ', "-"));
        assert!(names.contains(&page), "no {page} in {names:?}");
    }
    assert!(names.contains(&"etcd-backup.1".to_string()));
    for page in &pages {
        let out = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(page)
            .env("MANWIDTH", "80")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "{}: {stderr}",
            page.display()
        );
        // man's overstrike bold ("N\x08N…") read as plain text.
        let text = String::from_utf8_lossy(&out.stdout).replace("\x08", "");
        assert!(text.contains("NNAAMMEE") || text.contains("NAME"), "{text}");
    }
    let out = Command::new(BIN)
        .args(["render", "completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    for command in ["restore-check", "verify", "--allow-other-release"] {
        assert!(script.contains(command), "{command} not completed");
    }
    let check = run_with_stdin(
        {
            let mut bash = Command::new("bash");
            bash.arg("-n");
            bash
        },
        script.as_bytes(),
    );
    assert!(check.status.success(), "{check:?}");
}
