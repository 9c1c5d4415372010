//! The store's locks: `flock` on a file in the root, waited for within a bound, naming the
//! holder to whoever waits.

use super::Store;
use anyhow::{Result, bail};
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const LOCK_POLL: Duration = Duration::from_millis(100);

/// Another run holds the store lock; the CLI maps this to its own exit code.
#[derive(Debug, thiserror::Error)]
#[error("store '{root}' is busy: {holder} holds its lock (waited {waited_secs}s)")]
pub struct BusyError {
    pub root: PathBuf,
    pub holder: String,
    pub waited_secs: u64,
}

/// Holds the store lock until dropped.
#[derive(Debug)]
pub struct StoreLock {
    _lock: Flock<File>,
}

impl Store {
    /// Takes the store lock, waiting up to `wait` for another run to release it.
    pub fn lock(&self, wait: Duration) -> Result<StoreLock> {
        self.lock_named(super::LOCK_FILE, wait)
    }

    /// Takes the lock file `name` in the store root (`.lock` for the store itself,
    /// `.receive.lock` for one receiver at a time).
    pub fn lock_named(&self, name: &str, wait: Duration) -> Result<StoreLock> {
        let path = self.root.join(name);
        let start = Instant::now();
        let mut file = crate::files::open_private(&path)?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(mut lock) => {
                    // Who holds it, for the message another run prints while it waits.
                    let me = format!(
                        "etcd-backup pid {} ({})",
                        std::process::id(),
                        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
                    );
                    let _ = lock
                        .set_len(0)
                        .and_then(|()| lock.rewind())
                        .and_then(|()| lock.write_all(me.as_bytes()));
                    return Ok(StoreLock { _lock: lock });
                }
                Err((returned, nix::errno::Errno::EWOULDBLOCK)) => {
                    file = returned;
                    if start.elapsed() >= wait {
                        let mut read_holder = || {
                            let mut holder = String::new();
                            let _ = file
                                .rewind()
                                .and_then(|()| file.read_to_string(&mut holder));
                            holder
                        };
                        let mut holder = read_holder();
                        if holder.trim().is_empty() {
                            // The holder writes its name right after it takes the lock: a run
                            // that gives up at once may look in between.
                            std::thread::sleep(LOCK_POLL);
                            holder = read_holder();
                        }
                        return Err(BusyError {
                            root: self.root.clone(),
                            holder: if holder.trim().is_empty() {
                                "another process".into()
                            } else {
                                holder.trim().to_string()
                            },
                            waited_secs: start.elapsed().as_secs(),
                        }
                        .into());
                    }
                    std::thread::sleep(LOCK_POLL);
                }
                Err((_, errno)) => {
                    bail!("cannot lock '{}': {errno}", path.display());
                }
            }
        }
    }
}
