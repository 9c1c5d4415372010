//! Peer discovery from OpenShift's etcd.env (works while the API server is down) and the pure
//! choice of which peers a node sprays to.
//!
//! etcd.env holds sorted `export KEY="value"` lines; per master `NODE_<safe>_IP`,
//! `NODE_<safe>_ETCD_NAME` (the real node name) and `NODE_<safe>_ETCD_URL_HOST`, where `<safe>`
//! is the node name with `-` and `.` turned into `_` (lossy, so keys are parsed by suffix).
//! IPv6 values are bracketed. Other keys vary by version and are ignored.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// One master named in etcd.env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvPeer {
    /// `NODE_<safe>_ETCD_NAME`, or `<safe>` itself when that key is missing.
    pub name: String,
    /// `NODE_<safe>_IP` without brackets.
    pub ip: Option<IpAddr>,
    /// `NODE_<safe>_ETCD_URL_HOST` as written (may be a bracketed IPv6 address or a name).
    pub url_host: Option<String>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct EtcdEnv {
    /// Masters in the order of their `<safe>` names.
    pub peers: Vec<EnvPeer>,
    /// Lines that could not be read, as `line N: why`; they are skipped, not fatal.
    pub problems: Vec<String>,
}

const SUFFIXES: [&str; 3] = ["_ETCD_URL_HOST", "_ETCD_NAME", "_IP"];

/// Parses etcd.env content.
pub fn parse_etcd_env(text: &str) -> EtcdEnv {
    #[derive(Default)]
    struct Fields {
        name: Option<String>,
        ip: Option<String>,
        url_host: Option<String>,
    }
    let mut by_safe: BTreeMap<String, Fields> = BTreeMap::new();
    let mut problems = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = split_assignment(line) else {
            problems.push(format!("line {number}: not an `export KEY=\"value\"` line"));
            continue;
        };
        let Some(rest) = key.strip_prefix("NODE_") else {
            continue;
        };
        let Some((safe, suffix)) = SUFFIXES
            .iter()
            .find_map(|suffix| rest.strip_suffix(suffix).map(|safe| (safe, *suffix)))
        else {
            continue;
        };
        if safe.is_empty() {
            problems.push(format!("line {number}: {key} names no node"));
            continue;
        }
        if value.is_empty() {
            problems.push(format!("line {number}: {key} is empty"));
            continue;
        }
        let fields = by_safe.entry(safe.to_string()).or_default();
        let slot = match suffix {
            "_ETCD_NAME" => &mut fields.name,
            "_IP" => &mut fields.ip,
            _ => &mut fields.url_host,
        };
        *slot = Some(value);
    }
    let mut peers = Vec::new();
    for (safe, fields) in by_safe {
        let ip = match fields.ip.as_deref().map(parse_ip) {
            Some(Ok(ip)) => Some(ip),
            Some(Err(e)) => {
                problems.push(format!("NODE_{safe}_IP: {e}"));
                None
            }
            None => None,
        };
        peers.push(EnvPeer {
            name: fields.name.unwrap_or(safe),
            ip,
            url_host: fields.url_host,
        });
    }
    EtcdEnv { peers, problems }
}

/// `export KEY="value"`, `export KEY=value` or `KEY="value"`; `None` if malformed.
fn split_assignment(line: &str) -> Option<(&str, String)> {
    let body = line
        .strip_prefix("export ")
        .map(str::trim_start)
        .unwrap_or(line);
    let (key, value) = body.split_once('=')?;
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    let value = value.trim();
    let value = if let Some(inner) = value.strip_prefix('"') {
        inner.strip_suffix('"')?
    } else if let Some(inner) = value.strip_prefix('\'') {
        inner.strip_suffix('\'')?
    } else {
        value
    };
    Some((key, value.to_string()))
}

/// An address as etcd.env writes it: `10.0.0.3` or `[fd00::5]`.
pub fn parse_ip(text: &str) -> Result<IpAddr, String> {
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse()
        .map_err(|_| format!("'{text}' is not an IP address"))
}

/// The peers a node sprays to: every master but itself, recognised by name or by one of its own
/// addresses. Peers without an address are left out (reported by the caller).
pub fn select_peers<'a>(
    env: &'a [EnvPeer],
    self_name: &str,
    own_ips: &[IpAddr],
) -> Vec<&'a EnvPeer> {
    env.iter()
        .filter(|p| p.ip.is_some())
        .filter(|p| !p.name.eq_ignore_ascii_case(self_name))
        .filter(|p| p.ip.is_none_or(|ip| !own_ips.contains(&ip)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like the file of an OpenShift 4.14 cluster (values shortened).
    const REAL: &str = r#"export ALL_ETCD_ENDPOINTS="https://10.0.0.3:2379,https://10.0.0.4:2379,https://10.0.0.5:2379"
export ETCDCTL_API="3"
export ETCDCTL_CACERT="/etc/kubernetes/static-pod-certs/configmaps/etcd-serving-ca/ca-bundle.crt"
export ETCDCTL_CERT="/etc/kubernetes/static-pod-certs/secrets/etcd-all-certs/etcd-peer-NODE_NAME.crt"
export ETCD_CIPHER_SUITES="TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
export ETCD_DATA_DIR="/var/lib/etcd"
export ETCD_HEARTBEAT_INTERVAL="100"
export ETCD_IMAGE="quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:0123"
export ETCD_QUOTA_BACKEND_BYTES="8589934592"
export NODE_ci_ln_x7_master_0_ETCD_NAME="ci-ln-x7-master-0"
export NODE_ci_ln_x7_master_0_ETCD_URL_HOST="10.0.0.3"
export NODE_ci_ln_x7_master_0_IP="10.0.0.3"
export NODE_ci_ln_x7_master_1_ETCD_NAME="ci-ln-x7-master-1"
export NODE_ci_ln_x7_master_1_ETCD_URL_HOST="10.0.0.4"
export NODE_ci_ln_x7_master_1_IP="10.0.0.4"
export NODE_ci_ln_x7_master_2_example_com_ETCD_NAME="ci-ln-x7-master-2.example.com"
export NODE_ci_ln_x7_master_2_example_com_ETCD_URL_HOST="[fd00::5]"
export NODE_ci_ln_x7_master_2_example_com_IP="[fd00::5]"
"#;

    #[test]
    fn realistic_file_yields_three_masters() {
        let env = parse_etcd_env(REAL);
        assert!(env.problems.is_empty(), "{:?}", env.problems);
        let names: Vec<_> = env.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "ci-ln-x7-master-0",
                "ci-ln-x7-master-1",
                "ci-ln-x7-master-2.example.com"
            ]
        );
        assert_eq!(env.peers[1].ip, Some("10.0.0.4".parse().unwrap()));
        assert_eq!(env.peers[2].ip, Some("fd00::5".parse().unwrap()));
        assert_eq!(env.peers[2].url_host.as_deref(), Some("[fd00::5]"));
    }

    #[test]
    fn malformed_lines_are_reported_with_numbers_and_skipped() {
        let text = "export NODE_a_IP=\"10.0.0.1\"\nthis is not shell\nexport NODE_a_ETCD_NAME=\"a\n\
                    # a comment\n\nexport NODE_b_IP=\"not-an-ip\"\nexport NODE__IP=\"10.0.0.9\"\nNODE_c_IP=10.0.0.3\n\
                    export NODE_c_ETCD_NAME=\"\"\n";
        let env = parse_etcd_env(text);
        assert_eq!(
            env.problems,
            [
                "line 2: not an `export KEY=\"value\"` line",
                "line 3: not an `export KEY=\"value\"` line",
                "line 7: NODE__IP names no node",
                "line 9: NODE_c_ETCD_NAME is empty",
                "NODE_b_IP: 'not-an-ip' is not an IP address",
            ]
        );
        let ips: Vec<_> = env.peers.iter().map(|p| (p.name.as_str(), p.ip)).collect();
        assert_eq!(
            ips,
            [
                ("a", Some("10.0.0.1".parse().unwrap())),
                ("b", None),
                ("c", Some("10.0.0.3".parse().unwrap()))
            ]
        );
    }

    #[test]
    fn suffixes_are_matched_longest_first() {
        // A node whose safe name itself ends in "_ETCD": the URL_HOST key must not be read as _IP.
        let env = parse_etcd_env(
            "export NODE_my_etcd_ETCD_URL_HOST=\"h\"\nexport NODE_my_etcd_IP=\"10.1.1.1\"\n",
        );
        assert_eq!(env.peers.len(), 1);
        assert_eq!(env.peers[0].name, "my_etcd");
        assert_eq!(env.peers[0].url_host.as_deref(), Some("h"));
    }

    #[test]
    fn self_is_never_a_peer() {
        let env = parse_etcd_env(REAL).peers;
        let by_name: Vec<_> = select_peers(&env, "ci-ln-x7-master-1", &[])
            .iter()
            .map(|p| p.name.clone())
            .collect();
        assert_eq!(
            by_name,
            ["ci-ln-x7-master-0", "ci-ln-x7-master-2.example.com"]
        );
        // The hostname may differ from the node name: an own address also excludes.
        let own: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "fd00::5".parse().unwrap()];
        let by_ip: Vec<_> = select_peers(&env, "localhost", &own)
            .iter()
            .map(|p| p.name.clone())
            .collect();
        assert_eq!(by_ip, ["ci-ln-x7-master-0", "ci-ln-x7-master-1"]);
    }
}
