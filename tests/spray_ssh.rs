//! Spray between three masters in network namespaces over real OpenSSH sshd peers.

use crate::util::lab::Lab;
use crate::util::*;

#[test]
fn a_set_reaches_both_peers_verified_and_a_rerun_sends_nothing() {
    let lab = Lab::new();
    let id = lab.backup(0);
    let run = lab.hosts[0].run(&["spray"]);
    run.expect_code(0)
        .expect_stdout("ok      lab-master-1")
        .expect_stdout("ok      lab-master-2");
    for peer in &lab.hosts[1..] {
        assert_eq!(peer.set_ids(), [id.clone()], "{}", peer.name);
        peer.run(&["verify"]).expect_code(0);
        assert_eq!(
            fingerprint(&peer.store().join("sets").join(&id)),
            fingerprint(&lab.hosts[0].store().join("sets").join(&id))
        );
    }
    // etcd.env names m0 too: it never sprays to itself.
    assert!(!run.stdout.contains("lab-master-0"), "{}", run.stdout);
    let again = lab.hosts[0].run(&["spray"]);
    again.expect_code(0);
    assert_eq!(
        again.stdout.matches("(0 sent, 0 bytes").count(),
        2,
        "{}",
        again.stdout
    );
}
