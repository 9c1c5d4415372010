//! Symlinks planted in a store (as a set's file, as a whole set, in staging) are never
//! followed: not read as set data, not sent, not deleted through, not listed as good.

use crate::util::*;

#[test]
fn planted_symlinks_are_never_followed() {
    let node = Node::new("");
    let a = node.backup();
    let b = node.backup();
    let outside = node.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();

    // a's snapshot becomes a symlink to a same-size file outside the store.
    let snapshot = std::fs::read_dir(node.set_dir(&a))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "db"))
        .unwrap();
    let decoy = outside.join("decoy.db");
    std::fs::copy(&snapshot, &decoy).unwrap();
    std::fs::remove_file(&snapshot).unwrap();
    std::os::unix::fs::symlink(&decoy, &snapshot).unwrap();
    // A whole "set" that is a symlink to a copy of b elsewhere, under a later id.
    let fake_id = b.replace("Z-master-0", "Z-master-9");
    let copy = outside.join("copy-of-b");
    std::fs::create_dir(&copy).unwrap();
    for entry in std::fs::read_dir(node.set_dir(&b)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, copy.join(path.file_name().unwrap())).unwrap();
    }
    std::os::unix::fs::symlink(&copy, node.store().join("sets").join(&fake_id)).unwrap();
    // And a symlink in staging to a directory with something in it.
    let keep = outside.join("keep");
    std::fs::create_dir(&keep).unwrap();
    std::fs::write(keep.join("file"), "not ours").unwrap();
    std::os::unix::fs::symlink(&keep, node.store().join(".staging/planted")).unwrap();

    let run = node.run(&["verify"]);
    assert_ne!(run.code, 0, "verify must fail: {}", run.stdout);
    assert!(
        run.stdout.contains(&a),
        "names the damaged set: {}",
        run.stdout
    );
    let good: Vec<String> = node
        .sets()
        .iter()
        .filter(|s| s["verified"] == true)
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        good,
        std::slice::from_ref(&b),
        "only the real, whole set is good"
    );

    // A spray to a directory target sends only b; prune and staging GC delete nothing outside.
    let nfs = node.dir.path().join("nfs");
    node.write_config_with(
        "gc_grace = \"0s\"",
        "",
        &format!(
            "[retention]\nkeep_last = 1\n[spray]\netcd_env = \"\"\nattempts = 1\n\
             [[spray.target]]\nkind = \"dir\"\npath = \"{}\"\nrequire_mount = false\n",
            nfs.display()
        ),
    );
    node.run(&["spray"]);
    let sent: Vec<String> = std::fs::read_dir(nfs.join("sets"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(sent, std::slice::from_ref(&b));
    assert_private(&nfs);
    node.run(&["backup"]).expect_code(0);
    node.run(&["prune"]);
    assert!(decoy.exists(), "the decoy outside the store is intact");
    assert!(copy.join("manifest.json").exists(), "the copy is intact");
    assert!(
        keep.join("file").exists(),
        "staging GC did not follow the link"
    );
}

/// `cluster-restore.sh` restores whatever the stage directory holds when it runs: a local user
/// who can change that directory, or one above it, could swap the snapshot.
#[test]
fn stage_refuses_a_directory_a_local_user_could_change() {
    use std::os::unix::fs::{PermissionsExt, chown};
    let node = Node::new("");
    let id = node.backup();
    let base = node.dir.path().join("stage");
    std::fs::create_dir(&base).unwrap();
    let nobody = Some(65534);
    let stage = |dir: &std::path::Path| node.run(&["stage", &id, dir.to_str().unwrap()]);

    // An empty directory a local user owns (stage used to chmod it 0700 and keep the owner).
    let theirs = base.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    chown(&theirs, nobody, nobody).unwrap();
    stage(&theirs)
        .expect_code(1)
        .expect_stderr("is owned by uid 65534");
    assert!(std::fs::read_dir(&theirs).unwrap().next().is_none());
    // A directory of theirs above it: they could rename ours away and put theirs in its place.
    let above = base.join("above");
    std::fs::create_dir(&above).unwrap();
    chown(&above, nobody, nobody).unwrap();
    stage(&above.join("restore"))
        .expect_code(1)
        .expect_stderr("is owned by uid 65534");
    assert!(!above.join("restore").exists());
    // Root's, but writable by its group.
    let shared = base.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o770)).unwrap();
    stage(&shared.join("restore"))
        .expect_code(1)
        .expect_stderr("writable by its group or by others (mode 770)");
    // A link where the directory goes.
    let link = base.join("link");
    std::os::unix::fs::symlink(&theirs, &link).unwrap();
    stage(&link)
        .expect_code(1)
        .expect_stderr("is not a directory");
    // A sticky directory open to all (/tmp) is fine: nobody can rename what root put there.
    let sticky = base.join("tmp");
    std::fs::create_dir(&sticky).unwrap();
    std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
    stage(&sticky.join("restore")).expect_code(0);
    assert_eq!(mode(&sticky.join("restore")), 0o700);
    // A directory of the user who ran sudo is theirs to use.
    let output = node
        .cmd(&["stage", &id, above.join("restore").to_str().unwrap()])
        .env("SUDO_UID", "65534")
        .output()
        .unwrap();
    Run::from_output(output, &["stage", "(SUDO_UID=65534)"]).expect_code(0);
}
