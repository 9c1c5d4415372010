//! The restore plan for this cluster, as a pure function: OpenShift's procedure for the node's
//! release (4.18 and later: `disable-etcd.sh` on the other masters, `cluster-restore.sh` on the
//! recovery master, the quorum guard off while the cluster settles; 4.17 and older: the other
//! masters' static pods and etcd data moved aside by hand, kubelets restarted, every control
//! plane operator redeployed), with this set, this recovery master and every master named.
//! etcd-backup runs none of it on other masters: its keys can only deliver sets.

use crate::manifest::Manifest;
use serde::Serialize;

/// Where the administrator stages the set, as OpenShift's documentation does.
pub const STAGE_DIR: &str = "/home/core/assets/backup";
/// OpenShift's script that stops a master's etcd for a restore (4.18 and later).
pub const DISABLE_ETCD: &str = "/usr/local/bin/disable-etcd.sh";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Flow {
    /// OpenShift 4.18 and later.
    #[serde(rename = "4.18+")]
    Since418,
    /// OpenShift 4.17 and older.
    #[serde(rename = "4.17-")]
    Before418,
}

/// Where a step runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "hosts", rename_all = "kebab-case")]
pub enum On {
    /// On each of these masters (SSH as core).
    Masters(Vec<String>),
    /// Where `oc` reaches the cluster's API as cluster-admin.
    Cluster,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub on: On,
    pub commands: Vec<String>,
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub flow: Flow,
    /// Why this flow: the release it was chosen by, or that none is known.
    pub flow_reason: String,
    pub set: String,
    pub origin: String,
    pub created: chrono::DateTime<chrono::Utc>,
    pub revision: Option<i64>,
    pub recovery: String,
    pub others: Vec<String>,
    /// The masters could not be read from etcd.env (steps then say "each other master").
    pub masters_unknown: Option<String>,
    pub steps: Vec<Step>,
}

/// The flow for a release: by this node's, else by the set's; 4.18+ when neither is known.
pub fn flow(node_release: Option<&str>, set_release: Option<&str>) -> (Flow, String) {
    let known = node_release
        .map(|r| (r, "this node's release"))
        .or(set_release.map(|r| (r, "the set's release (this node's is unknown)")));
    match known.and_then(|(r, whose)| crate::cluster::release::minor(r).map(|m| (r, whose, m))) {
        Some((r, whose, minor)) if minor >= (4, 18) => (Flow::Since418, format!("{whose} {r}")),
        Some((r, whose, _)) => (Flow::Before418, format!("{whose} {r}")),
        None => (
            Flow::Since418,
            "no release is known: this is the procedure of OpenShift 4.18 and later".to_string(),
        ),
    }
}

/// The plan to restore set `m` on master `recovery`, the cluster's masters being `masters`.
pub fn plan(
    m: &Manifest,
    recovery: &str,
    masters: Result<&[String], String>,
    node_release: Option<&str>,
    allow_other_release: bool,
    from: Option<(&str, bool)>,
    staged: bool,
) -> Plan {
    let set_release = m.cluster.as_ref().and_then(|c| c.release.as_deref());
    let (flow, flow_reason) = flow(node_release, set_release);
    let (others, masters_unknown) = match masters {
        Ok(all) => (
            all.iter()
                .filter(|n| !n.eq_ignore_ascii_case(recovery))
                .cloned()
                .collect::<Vec<_>>(),
            None,
        ),
        Err(e) => (Vec::new(), Some(e)),
    };
    let every_other = if others.is_empty() {
        vec!["each other master".to_string()]
    } else {
        others.clone()
    };
    let here = || On::Masters(vec![recovery.to_string()]);
    let mut everyone = vec![recovery.to_string()];
    everyone.extend(every_other.iter().cloned());
    let stage_command = format!(
        "sudo etcd-backup stage {}{} {STAGE_DIR}",
        if allow_other_release {
            "--allow-other-release "
        } else {
            ""
        },
        m.id
    );
    // Staged before: `stage` takes only an empty directory, and what lies there since is not
    // what cluster-restore.sh may be given unchecked.
    let stage = if staged {
        Step {
            on: here(),
            commands: vec![format!("sudo rm -r {STAGE_DIR}"), stage_command],
            why: format!(
                "{STAGE_DIR} holds this set's files from an earlier stage: stage them again, \
                 checked, into the emptied directory"
            ),
        }
    } else {
        Step {
            on: here(),
            commands: vec![stage_command],
            why: "copy the set's two files, checked again, where cluster-restore.sh takes them"
                .to_string(),
        }
    };
    let restore = Step {
        on: here(),
        commands: vec![format!(
            "sudo -E {} {STAGE_DIR}",
            crate::paths::CLUSTER_RESTORE
        )],
        why: format!(
            "restore etcd from the snapshot of {} as a one-member cluster (a new etcd cluster \
             ID) and put back the set's static pod resources",
            m.id
        ),
    };
    let backup_after = Step {
        on: here(),
        commands: vec!["sudo systemctl start etcd-backup.service".to_string()],
        why: "the first set of the restored cluster; until one is clean, retention keeps the \
              newest clean set of the old history"
            .to_string(),
    };
    // From a target: fetched first, checked again on the way (with the identities that open
    // a sealed copy).
    let fetch = from.map(|(target, sealed)| Step {
        on: here(),
        commands: vec![format!(
            "sudo etcd-backup fetch --from {target}{} {}",
            if sealed {
                " --identity SNAPSHOT-IDENTITY --identity RESOURCES-IDENTITY"
            } else {
                ""
            },
            m.id
        )],
        why: format!(
            "bring the set from {target} into this master's store, checked before it is committed{}",
            if sealed {
                " (the age identities, brought from where they are kept, open it)"
            } else {
                ""
            }
        ),
    });
    let mut steps = match flow {
        Flow::Since418 => vec![
            stage,
            Step {
                on: On::Masters(every_other.clone()),
                commands: vec![format!("sudo -E {DISABLE_ETCD}")],
                why: "stop etcd on every other master and wait for its containers to exit"
                    .to_string(),
            },
            restore,
            Step {
                on: On::Cluster,
                commands: vec![
                    r#"oc patch etcd/cluster --type=merge -p '{"spec": {"unsupportedConfigOverrides": {"useUnsupportedUnsafeNonHANonProductionUnstableEtcd": true}}}'"#
                        .to_string(),
                ],
                why: "once the API answers: turn the etcd quorum guard off while the other \
                      members are redeployed"
                    .to_string(),
            },
            Step {
                on: On::Cluster,
                commands: vec!["oc adm wait-for-stable-cluster".to_string()],
                why: "wait until every cluster operator is available and no longer progressing"
                    .to_string(),
            },
            Step {
                on: On::Cluster,
                commands: vec![
                    r#"oc patch etcd/cluster --type=merge -p '{"spec": {"unsupportedConfigOverrides": null}}'"#
                        .to_string(),
                ],
                why: "turn the quorum guard on again".to_string(),
            },
            backup_after,
        ],
        Flow::Before418 => vec![
            stage,
            Step {
                on: On::Masters(every_other.clone()),
                commands: vec![
                    "sudo mv -v /etc/kubernetes/manifests/etcd-pod.yaml /tmp".to_string(),
                    "sudo crictl ps | grep etcd | grep -E -v 'operator|etcd-guard'   # until it prints nothing".to_string(),
                    "sudo mv -v /etc/kubernetes/manifests/kube-apiserver-pod.yaml /tmp".to_string(),
                    "sudo crictl ps | grep kube-apiserver | grep -E -v 'operator|guard'   # until it prints nothing".to_string(),
                    "sudo mv -v /etc/kubernetes/manifests/kube-controller-manager-pod.yaml /tmp".to_string(),
                    "sudo mv -v /etc/kubernetes/manifests/kube-scheduler-pod.yaml /tmp".to_string(),
                    "sudo mv -v /var/lib/etcd/ /tmp".to_string(),
                    "[ ! -f /etc/kubernetes/manifests/keepalived.yaml ] || sudo mv -v /etc/kubernetes/manifests/keepalived.yaml /tmp".to_string(),
                ],
                why: "stop the control plane's static pods on every other master and move its \
                      etcd data aside"
                    .to_string(),
            },
            restore,
            Step {
                on: On::Masters(everyone),
                commands: vec!["sudo systemctl restart kubelet.service".to_string()],
                why: "restart the kubelet on every master, the recovery master first".to_string(),
            },
            Step {
                on: On::Cluster,
                commands: vec![
                    "oc get csr   # approve each Pending one: oc adm certificate approve <name>"
                        .to_string(),
                ],
                why: "the kubelets ask for new certificates".to_string(),
            },
            Step {
                on: On::Cluster,
                commands: ["etcd", "kubeapiserver", "kubecontrollermanager", "kubescheduler"]
                    .iter()
                    .map(|what| {
                        format!(
                            r#"oc patch {what} cluster -p='{{"spec": {{"forceRedeploymentReason": "recovery-'"$( date --rfc-3339=ns )"'"}}}}' --type=merge"#
                        )
                    })
                    .collect(),
                why: "redeploy etcd and the control plane on every master".to_string(),
            },
            Step {
                on: On::Cluster,
                commands: vec![
                    r#"oc get etcd -o=jsonpath='{range .items[0].status.conditions[?(@.type=="NodeInstallerProgressing")]}{.reason}{"\n"}{.message}{"\n"}'   # until AllNodesAtLatestRevision"#
                        .to_string(),
                ],
                why: "wait until every master runs the latest revision".to_string(),
            },
            backup_after,
        ],
    };
    if let Some(fetch) = fetch {
        steps.insert(0, fetch);
    }
    Plan {
        flow,
        flow_reason,
        set: m.id.clone(),
        origin: m.origin.clone(),
        created: m.created,
        revision: m.checks.etcd.as_ref().map(|e| e.revision),
        recovery: recovery.to_string(),
        others,
        masters_unknown,
        steps,
    }
}

impl Plan {
    /// The plan as an administrator reads it.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Restore plan ({} flow, by {}):\n  set {} from {}, taken {}{}\n  recovery master: {} (this node); other masters: {}",
            match self.flow {
                Flow::Since418 => "OpenShift 4.18 and later",
                Flow::Before418 => "OpenShift 4.17 and older",
            },
            self.flow_reason,
            self.set,
            self.origin,
            self.created.format("%Y-%m-%d %H:%M:%SZ"),
            self.revision
                .map_or(String::new(), |r| format!(", etcd revision {r}")),
            self.recovery,
            if self.others.is_empty() {
                "unknown".to_string()
            } else {
                self.others.join(", ")
            },
        );
        if let Some(why) = &self.masters_unknown {
            let _ = writeln!(out, "  (the masters are not known: {why})");
        }
        for (n, step) in self.steps.iter().enumerate() {
            let on = match &step.on {
                On::Masters(hosts) => format!("on {}", hosts.join(", ")),
                On::Cluster => "with oc, as cluster-admin".to_string(),
            };
            let _ = writeln!(out, "\n{}. {on}: {}", n + 1, step.why);
            for command in &step.commands {
                let _ = writeln!(out, "     {command}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(release: Option<&str>) -> Manifest {
        let mut m = crate::manifest::tests::sample();
        m.cluster = Some(crate::cluster::ClusterFacts {
            release: release.map(str::to_string),
            ..Default::default()
        });
        m
    }

    #[test]
    fn the_flow_follows_this_nodes_release_then_the_sets() {
        for (node, set, flow) in [
            (Some("4.18.0"), None, Flow::Since418),
            (Some("4.19.3"), Some("4.16.1"), Flow::Since418),
            (Some("4.17.40"), None, Flow::Before418),
            (None, Some("4.14.2"), Flow::Before418),
            (None, None, Flow::Since418),
        ] {
            assert_eq!(super::flow(node, set).0, flow, "{node:?} {set:?}");
        }
    }

    #[test]
    fn every_master_is_named_and_the_set_filled_in() {
        let m = set(Some("4.18.7"));
        let masters = vec!["master-0".to_string(), "master-1".into(), "master-2".into()];
        let p = plan(
            &m,
            "master-1",
            Ok(&masters),
            Some("4.18.7"),
            false,
            None,
            false,
        );
        assert_eq!(p.others, ["master-0", "master-2"]);
        let text = p.to_text();
        for needle in [
            &format!("sudo etcd-backup stage {} {STAGE_DIR}", m.id),
            "on master-0, master-2: stop etcd",
            "sudo -E /usr/local/bin/disable-etcd.sh",
            "sudo -E /usr/local/bin/cluster-restore.sh /home/core/assets/backup",
            "oc adm wait-for-stable-cluster",
            "useUnsupportedUnsafeNonHANonProductionUnstableEtcd",
        ] {
            assert!(text.contains(needle), "{needle}\n{text}");
        }
        // The disable step comes before the restore.
        assert!(
            text.find("disable-etcd.sh").unwrap()
                < text
                    .find("sudo -E /usr/local/bin/cluster-restore.sh")
                    .unwrap()
        );
        let old = plan(
            &m,
            "master-1",
            Ok(&masters),
            Some("4.16.3"),
            false,
            None,
            false,
        );
        let text = old.to_text();
        assert!(
            text.contains("kube-apiserver-pod.yaml /tmp") && !text.contains("disable-etcd"),
            "{text}"
        );
        assert!(
            text.contains("on master-1, master-0, master-2: restart the kubelet"),
            "{text}"
        );
    }

    #[test]
    fn a_set_staged_before_is_staged_again_into_the_emptied_directory() {
        let m = set(Some("4.18.7"));
        let masters = vec!["master-0".to_string(), "master-1".into()];
        let plan_for = |staged| {
            plan(
                &m,
                "master-0",
                Ok(&masters),
                Some("4.18.7"),
                false,
                None,
                staged,
            )
        };
        let p = plan_for(true);
        assert_eq!(
            p.steps[0].commands,
            [
                format!("sudo rm -r {STAGE_DIR}"),
                format!("sudo etcd-backup stage {} {STAGE_DIR}", m.id)
            ]
        );
        let fresh = plan_for(false);
        assert_eq!(fresh.steps[0].commands.len(), 1);
        assert_eq!(p.steps[1..], fresh.steps[1..]);
    }

    #[test]
    fn unknown_masters_are_said_not_guessed() {
        let p = plan(
            &set(None),
            "master-0",
            Err("no etcd.env".into()),
            None,
            false,
            Some(("s3:10.0.0.9:8333/backups/c1", true)),
            false,
        );
        assert!(p.others.is_empty());
        let text = p.to_text();
        // From a target, sealed: the fetch comes first, with the identities that open it.
        assert!(
            text.contains("1. on master-0: bring the set from s3:10.0.0.9:8333/backups/c1")
                && text.contains(
                    "sudo etcd-backup fetch --from s3:10.0.0.9:8333/backups/c1 --identity SNAPSHOT-IDENTITY"
                ),
            "{text}"
        );
        assert!(
            text.contains("on each other master") && text.contains("no etcd.env"),
            "{text}"
        );
    }
}
