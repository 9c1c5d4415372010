//! The OpenShift 4.17+ node disruption policy (`MachineConfiguration` snippet), derived from the
//! payload: changes to our config need nothing (the next timer run reads them), a new pinned
//! image restarts the install unit and then the timers, changes to our units reload systemd and
//! restart the enabled ones. Nothing of ours reboots a master.

use super::payload::{INSTALL_UNIT, OnChange, everything, timers};
use super::quoted;
use std::fmt::Write as _;

fn restart(y: &mut String, indent: &str, service: &str) {
    let _ = writeln!(
        y,
        "{indent}- type: Restart\n{indent}  restart:\n{indent}    serviceName: {service}"
    );
}

pub fn node_disruption_policy() -> String {
    let (paths, units) = everything();
    let mut y = String::from(
        "# Rendered by etcd-backup (render node-disruption-policy), for OpenShift 4.17 and later.\n\
         # Merge into the existing policy: `oc edit machineconfiguration cluster` (a merge patch\n\
         # replaces whole lists, including policies of your own).\n\
         apiVersion: operator.openshift.io/v1\nkind: MachineConfiguration\nmetadata:\n  name: cluster\n\
         spec:\n  nodeDisruptionPolicy:\n    files:\n",
    );
    // Drop-ins an admin adds beside ours need nothing either.
    let config_d = (
        format!("{}/config.d", crate::paths::CONFIG_DIR),
        OnChange::Nothing,
    );
    for (path, on_change) in paths.iter().chain([&config_d]) {
        let _ = writeln!(y, "    - path: {}\n      actions:", quoted(path));
        match on_change {
            OnChange::Nothing => y.push_str("      - type: None\n"),
            OnChange::Reinstall => {
                restart(&mut y, "      ", INSTALL_UNIT);
                for timer in timers() {
                    restart(&mut y, "      ", timer);
                }
            }
        }
    }
    y.push_str("    units:\n");
    for unit in &units {
        let _ = writeln!(
            y,
            "    - name: {}\n      actions:\n      - type: DaemonReload",
            unit.name
        );
        if unit.enabled {
            restart(&mut y, "      ", unit.name);
        }
    }
    y.push_str("    sshkey:\n      actions:\n      - type: None\n");
    y
}
