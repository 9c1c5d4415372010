//! `dir`: a directory store (an NFS mount, a PVC). The same receive code as a peer runs
//! in-process against a store at that path, so there is one commit path for every kind.

use super::{Target, push_over};
use crate::config::{DirTarget, Settings};
use crate::protocol::send::{OpenSet, PushStats};
use anyhow::{Context, Result, bail};

#[derive(Debug, Clone, PartialEq)]
pub struct DirStore(pub DirTarget);

impl Target for DirStore {
    fn id(&self) -> String {
        format!("dir:{}", self.0.path.display())
    }

    fn describe(&self) -> String {
        self.id()
    }

    fn push(&self, settings: &Settings, sets: &[OpenSet]) -> Result<PushStats> {
        let dir = &self.0;
        if dir.require_mount && !is_mount_point(&dir.path)? {
            bail!(
                "'{}' is not a mount point and require_mount is set: refusing to fill the local disk (is the NFS share mounted?)",
                dir.path.display()
            );
        }
        let mut target_settings = settings.clone();
        target_settings.store.root = dir.path.clone();
        target_settings.node_name = self.describe();
        let store = crate::store::Store::open(&dir.path)?;
        let (sending, receiving) = crate::protocol::pipe_pair()?;
        std::thread::scope(|scope| {
            let mut receiving = crate::protocol::Conn::new(receiving, false);
            let (target_settings, store) = (&target_settings, &store);
            let server = scope.spawn(move || {
                crate::protocol::serve::serve(
                    target_settings,
                    store,
                    &mut receiving,
                    crate::protocol::serve::Sender::Own,
                )
            });
            // The sending end is dropped when push_over returns: the receiver sees EOF.
            let pushed = push_over(sending, false, &settings.node_name, sets).map(|(s, _)| s);
            let served = server
                .join()
                .map_err(|_| anyhow::anyhow!("the directory receiver panicked"))?;
            match (pushed, served) {
                (Ok(stats), Ok(_)) => Ok(stats),
                (Err(e), _) | (Ok(_), Err(e)) => Err(e),
            }
        })
    }
}

/// `path` is the mount point of a filesystem (/proc/self/mountinfo field 5, octal escapes).
pub fn is_mount_point(path: &std::path::Path) -> Result<bool> {
    let path = std::fs::canonicalize(path)
        .with_context(|| format!("cannot resolve '{}'", path.display()))?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .context("cannot read /proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mount| unescape_mount(mount) == path.as_os_str().to_string_lossy()))
}

fn unescape_mount(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&code, 8) {
                Ok(b) => out.push(b as char),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&code);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mount("/mnt/nfs\\040share"), "/mnt/nfs share");
        assert_eq!(unescape_mount("/plain"), "/plain");
        assert!(is_mount_point(std::path::Path::new("/")).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("x");
        std::fs::create_dir(&inner).unwrap();
        assert!(!is_mount_point(&inner).unwrap());
    }
}
