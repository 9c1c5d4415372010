//! Where things are on a master, written once: the config's defaults and what `render` installs
//! both read them, so that the MachineConfig puts files where the binary looks for them.

/// The literal of [`CONFIG_DIR`], for paths under it built with `concat!`.
macro_rules! config_dir {
    () => {
        "/etc/etcd-backup"
    };
}

/// The literal of [`BINARY`].
macro_rules! binary {
    () => {
        "/usr/local/bin/etcd-backup"
    };
}

pub const CONFIG_DIR: &str = config_dir!();
pub const CONFIG_FILE: &str = concat!(config_dir!(), "/config.toml");
/// Drop-ins beside the config file: `config.d/*.toml`.
pub const DROPIN_DIR_NAME: &str = "config.d";
pub const SPRAY_KEY: &str = concat!(config_dir!(), "/spray_key");
pub const KNOWN_HOSTS: &str = concat!(config_dir!(), "/known_hosts");
pub const TLS_CERT: &str = concat!(config_dir!(), "/tls/tls.crt");
pub const TLS_KEY: &str = concat!(config_dir!(), "/tls/tls.key");
pub const TLS_CA: &str = concat!(config_dir!(), "/tls/ca.crt");
/// An AWS shared-credentials file for the S3 targets (a profile per target).
pub const S3_CREDENTIALS: &str = concat!(config_dir!(), "/s3-credentials");
/// Where a rendered MachineConfig puts the cluster signing key (`[seal] signing_key`).
pub const SIGNING_KEY: &str = concat!(config_dir!(), "/signing_key");
/// The pinned image and the binary's sha256 the install unit reads.
pub const IMAGE_ENV: &str = concat!(config_dir!(), "/image.env");

pub const BINARY: &str = binary!();
/// No `.sh` and no operator marker: the etcd pod deletes such files in /usr/local/bin.
pub const INSTALL_SCRIPT: &str = "/usr/local/bin/etcd-backup-install";
/// What the spray key may run on a peer (its `authorized_keys` restriction), and what a sender
/// runs there.
pub const RECEIVE_COMMAND: &str = concat!("sudo -n ", binary!(), " receive");

pub const STORE_ROOT: &str = "/var/lib/etcd-backup";
/// `1` when the node's kernel runs in FIPS mode (RHCOS with `fips: true` in install-config).
pub const FIPS_ENABLED: &str = "/proc/sys/crypto/fips_enabled";
/// OpenShift's backup and restore scripts on every master.
pub const CLUSTER_BACKUP: &str = "/usr/local/bin/cluster-backup.sh";
pub const CLUSTER_RESTORE: &str = "/usr/local/bin/cluster-restore.sh";
/// OpenShift's etcd.env, which names every master (readable while the API server is down).
pub const ETCD_ENV: &str =
    "/etc/kubernetes/static-pod-resources/etcd-certs/configmaps/etcd-scripts/etcd.env";
