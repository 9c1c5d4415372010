//! The release binary as it ships in the image: what it links, which glibc it needs, and how big
//! the rendered MachineConfig is.

use crate::util::{release_binary, render_release_machineconfig};
use std::process::Command;

/// Libraries every RHCOS 9 master has in its base image. OpenSSL stays dynamic (FIPS mode and
/// the distribution's security fixes); libssh2 is built in, because RHCOS does not ship it.
const RHCOS_LIBRARIES: [&str; 8] = [
    "libssl.so.3",
    "libcrypto.so.3",
    "libz.so.1",
    "libgcc_s.so.1",
    "libc.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
];
/// RHCOS 9 (OpenShift 4.13+) has glibc 2.34.
const MAX_GLIBC: (u32, u32) = (2, 34);
/// The default MachineConfig (binary from a pinned image): `render::IMAGE_MACHINECONFIG_BUDGET_BYTES`.
const IMAGE_BUDGET_KIB: usize = 48;
const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn tool(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .arg(release_binary())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(output.status.success(), "{program}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn release_binary_links_only_what_rhcos_has() {
    let dynamic = tool("readelf", &["-dW"]);
    let needed: Vec<&str> = dynamic
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1)?.strip_suffix(']'))
        .collect();
    assert!(
        needed.contains(&"libssl.so.3"),
        "OpenSSL 3 is dynamic: {needed:?}"
    );
    for library in &needed {
        assert!(
            RHCOS_LIBRARIES.contains(library),
            "{library} is not in RHCOS's base image (libssh2 must be built in): {needed:?}"
        );
    }
    let symbols = tool("objdump", &["-T"]);
    let mut versions: Vec<(u32, u32)> = symbols
        .split_whitespace()
        .filter_map(|w| {
            w.trim_matches(|c| c == '(' || c == ')')
                .strip_prefix("GLIBC_")
        })
        .filter_map(|v| {
            let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
        })
        .collect();
    versions.sort();
    let newest = *versions.last().expect("glibc symbol versions");
    assert!(
        newest <= MAX_GLIBC,
        "needs GLIBC_{}.{}, RHCOS 9 has {}.{}",
        newest.0,
        newest.1,
        MAX_GLIBC.0,
        MAX_GLIBC.1
    );
}

#[test]
fn rendered_machineconfig_sizes() {
    let image = format!("quay.io/acme/etcd-backup@{DIGEST}");
    let pinned = render_release_machineconfig("", &["--image", &image]).len() >> 10;
    eprintln!("rendered MachineConfig: {pinned} KiB from an image");
    assert!(
        pinned <= IMAGE_BUDGET_KIB,
        "the default MachineConfig grew to {pinned} KiB (budget {IMAGE_BUDGET_KIB} KiB)"
    );
}
