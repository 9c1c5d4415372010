//! Files we read that someone else may have placed: a store on an NFS export, a state file, a
//! partial transfer. Each is opened as a regular file without following a symlink and without
//! blocking on a FIFO (`O_NOFOLLOW | O_NONBLOCK`, then `fstat`), and read up to a bound: a
//! symlink to `/dev/zero` or a FIFO left in a store must neither exhaust memory nor hang a run
//! that holds a lock.

use anyhow::{Context, Result, ensure};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The most a state file of a store may hold (`spray-state.json`, `verify-state.json`,
/// `runs.json`): thousands of entries fit.
pub const STATE_MAX_BYTES: u64 = 4 << 20;

/// Opens `path` for reading, refusing a symlink and anything that is not a regular file.
pub fn open_regular(path: &Path) -> Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot open '{}'", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot stat '{}'", path.display()))?;
    ensure!(meta.is_file(), "'{}' is not a regular file", path.display());
    Ok(file)
}

/// The whole of the regular file `path`, refused when it is over `max_bytes` (by its size, and
/// again while reading, should it grow).
pub fn read_regular(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    let file = open_regular(path)?;
    let size = file
        .metadata()
        .with_context(|| format!("cannot stat '{}'", path.display()))?
        .len();
    let too_big = || format!("'{}' is over {max_bytes} bytes", path.display());
    ensure!(size <= max_bytes, "{}", too_big());
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read '{}'", path.display()))?;
    ensure!(bytes.len() as u64 <= max_bytes, "{}", too_big());
    Ok(bytes)
}

/// A JSON state file of a store: `None` when there is none yet; anything unreadable (not a
/// regular file, too large, not the expected JSON) is reported and read as `None`, so that a
/// run goes on and writes a fresh one in its place (the rename replaces a planted link itself).
pub fn read_state<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        _ => {}
    }
    let parsed = read_regular(path, STATE_MAX_BYTES).and_then(|bytes| {
        serde_json::from_slice(&bytes)
            .with_context(|| format!("'{}' is not a state file of this tool", path.display()))
    });
    match parsed {
        Ok(state) => Some(state),
        Err(e) => {
            tracing::warn!("state file ignored: {e:#}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn links_fifos_devices_and_large_files_are_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 100]).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&big, &link).unwrap();

        let started = Instant::now();
        for (path, why) in [
            (&fifo, "not a regular file"),
            (&zero, "cannot open"),
            (&link, "cannot open"),
            (&big, "over 99 bytes"),
        ] {
            let error = format!("{:#}", read_regular(path, 99).unwrap_err());
            assert!(error.contains(why), "{}: {error}", path.display());
            assert!(error.contains(&path.display().to_string()), "{error}");
        }
        assert!(started.elapsed() < Duration::from_secs(5), "nothing blocks");
        assert_eq!(read_regular(&big, 100).unwrap().len(), 100);
        assert_eq!(
            read_regular(Path::new("/dev/null"), 10)
                .unwrap_err()
                .to_string(),
            "'/dev/null' is not a regular file"
        );
    }

    #[test]
    fn a_state_file_that_is_missing_planted_or_garbage_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(read_state::<Vec<u32>>(&path), None);
        std::fs::write(&path, "[1,2]").unwrap();
        assert_eq!(read_state::<Vec<u32>>(&path), Some(vec![1, 2]));
        std::fs::write(&path, "not json").unwrap();
        assert_eq!(read_state::<Vec<u32>>(&path), None);
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert_eq!(read_state::<Vec<u32>>(&path), None);
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        assert_eq!(read_state::<Vec<u32>>(&path), None);
    }
}
