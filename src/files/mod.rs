//! Files we read that someone else may have placed: a store on an NFS export, a state file, a
//! partial transfer. Each is opened as a regular file without following a symlink and without
//! blocking on a FIFO (`O_NOFOLLOW | O_NONBLOCK`, then `fstat`), and read up to a bound: a
//! symlink to `/dev/zero` or a FIFO left in a store must neither exhaust memory nor hang a run
//! that holds a lock.
//!
//! And files we write: private (0600 in 0700 directories, whatever the umask), never through a
//! symlink, replaced atomically (temporary file, fsync, rename, fsync of the directory).

mod direct;

pub use direct::DirectWriter;

use anyhow::{Context, Result, bail, ensure};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
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

/// Directories we create: owner only.
pub const DIR_MODE: u32 = 0o700;
/// Files we write: owner read-write only.
pub const FILE_MODE: u32 = 0o600;

/// Creates `path` as a 0700 directory, or checks an existing one is a real directory and makes
/// it 0700.
pub fn ensure_private_dir(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            if meta.permissions().mode() & 0o777 != DIR_MODE {
                fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE))
                    .with_context(|| format!("cannot chmod 0700 '{}'", path.display()))?;
            }
            Ok(())
        }
        Ok(_) => bail!("'{}' exists and is not a directory", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match fs::DirBuilder::new().mode(DIR_MODE).create(path) {
                Ok(()) => Ok(()),
                // Another run (two first runs at once) made it since: check what it made.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => ensure_private_dir(path),
                Err(e) => {
                    Err(e).with_context(|| format!("cannot create directory '{}'", path.display()))
                }
            }
        }
        Err(e) => Err(e).with_context(|| format!("cannot stat '{}'", path.display())),
    }
}

pub fn fsync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("cannot fsync directory '{}'", path.display()))
}

/// Writes `bytes` to `dir/name` (0600) through a temporary file, fsync and rename.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    write_atomic_mode(dir, name, bytes, FILE_MODE)
}

/// `write_atomic` with another mode, set as given whatever the umask (the units run with
/// `UMask=0077`).
pub fn write_atomic_mode(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<()> {
    let target = dir.join(name);
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&temp)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, &target)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&temp);
        return Err(e).with_context(|| format!("cannot write '{}'", target.display()));
    }
    fsync_dir(dir)
}

/// Reads a file shared between threads from `offset` on with `pread`, leaving the file's own
/// offset alone.
pub struct ReadAt<'a> {
    pub file: &'a File,
    pub offset: u64,
}

impl std::io::Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// Removes the file `path` (not following a link) if it is there.
pub fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove '{}'", path.display()))
        }
        _ => Ok(()),
    }
}

/// Creates `path`, which must not exist, for writing: owner-only whatever the umask, never
/// through a symlink.
pub fn create_private(path: &Path) -> Result<File> {
    private()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create '{}'", path.display()))
}

/// Opens `path` to read and write, creating it owner-only when it is not there (a lock file, a
/// partial transfer to resume), never through a symlink; what is in it is kept.
pub fn open_private(path: &Path) -> Result<File> {
    private()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("cannot open '{}'", path.display()))
}

/// Owner-only when created, whatever the umask; never through a symlink.
fn private() -> fs::OpenOptions {
    let mut options = fs::OpenOptions::new();
    options.mode(FILE_MODE).custom_flags(nix::libc::O_NOFOLLOW);
    options
}

/// Dropping what was read of `file` from the page cache, a [`PACE_STEP`] behind the reader: the
/// pages just read may still be under the kernel's read-ahead, which dropping them at once
/// leaves cached (`posix_fadvise(DONTNEED)`: only clean pages go, nothing is lost). What is
/// left goes when it is dropped. `F` is the file or a reference to it.
pub struct Behind<F: AsFd> {
    file: F,
    dropped: u64,
}

impl<F: AsFd> Behind<F> {
    /// Reads of `file` start at `offset`.
    pub fn new(file: F, offset: u64) -> Behind<F> {
        Behind {
            file,
            dropped: offset,
        }
    }

    /// The file has been read up to `end`.
    pub fn read_to(&mut self, end: u64) {
        while end.saturating_sub(self.dropped) >= 2 * PACE_STEP {
            drop_cached(&self.file, self.dropped, PACE_STEP);
            self.dropped += PACE_STEP;
        }
    }
}

impl<F: AsFd> Drop for Behind<F> {
    fn drop(&mut self) {
        drop_cached(&self.file, self.dropped, 0);
    }
}

/// Reading a large file once, from its start, without leaving it in the page cache, where it
/// would push out etcd's memory-mapped database: the kernel is told the reads are sequential
/// and what was read is dropped [`Behind`] the reader.
pub struct DropBehind {
    behind: Behind<File>,
    read: u64,
}

impl DropBehind {
    pub fn new(file: File) -> DropBehind {
        let _ = nix::fcntl::posix_fadvise(
            &file,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
        );
        DropBehind {
            behind: Behind::new(file, 0),
            read: 0,
        }
    }

    pub fn get_ref(&self) -> &File {
        &self.behind.file
    }
}

impl std::io::Read for DropBehind {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.behind.file.read(buf)?;
        self.read += n as u64;
        self.behind.read_to(self.read);
        Ok(n)
    }
}

/// Opens a regular file for one bulk read (see [`DropBehind`]).
pub fn open_bulk(path: &Path) -> Result<DropBehind> {
    open_regular(path).map(DropBehind::new)
}

/// Drops `len` bytes of `file` from `offset` (to its end with 0) from the page cache: advice, so
/// a failure is of no consequence.
pub fn drop_cached(file: impl AsFd, offset: u64, len: u64) {
    let _ = nix::fcntl::posix_fadvise(
        file,
        offset as i64,
        len as i64,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}

fn statvfs(path: &Path) -> Result<nix::sys::statvfs::Statvfs> {
    nix::sys::statvfs::statvfs(path).with_context(|| format!("cannot statvfs '{}'", path.display()))
}

/// The size of the filesystem that holds `path`.
pub fn filesystem_bytes(path: &Path) -> Result<u64> {
    let stat = statvfs(path)?;
    Ok(stat.blocks() as u64 * stat.fragment_size() as u64)
}

/// `path` or its nearest ancestor that exists (a store not yet created lives on its filesystem).
pub fn nearest_existing(path: &Path) -> Option<std::path::PathBuf> {
    path.ancestors()
        .find(|p| std::fs::symlink_metadata(p).is_ok())
        .map(Path::to_path_buf)
}

/// The bytes available to unprivileged writers on the filesystem that holds `path`.
pub fn free_bytes(path: &Path) -> Result<u64> {
    let stat = statvfs(path)?;
    Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

/// How much a [`Paced`] writer lets be written before it waits for the disk.
pub const PACE_STEP: u64 = 8 << 20;

/// Writing a large file so that its dirty pages never pile up in the page cache (etcd shares
/// the disk: its WAL fsyncs would queue behind a gigabyte of writeback) and so that it does not
/// evict etcd's database from the cache: at each [`PACE_STEP`], the step just written is handed
/// to the disk, the one before is waited for (`sync_file_range`) and dropped from the cache
/// (`posix_fadvise(DONTNEED)`). The file's final fsync still makes it durable.
pub struct Paced {
    /// Where the bytes written so far end, and up to where they are on disk and dropped.
    written: u64,
    settled: u64,
    /// Bytes per second at most (0: unbounded), counted from `started` over `paced` bytes.
    bandwidth: u64,
    /// Settled steps stay in the page cache (clean) for a check that reads them back; the
    /// caller drops them after.
    keep_cached: bool,
    started: std::time::Instant,
    paced: u64,
}

/// `[io] max_write_bandwidth`, set once when the settings are loaded: what every [`Paced`]
/// writer of this process starts with.
static WRITE_BANDWIDTH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Bounds every [`Paced`] and [`DirectWriter`] made from now on to `bytes_per_second` (0:
/// unbounded).
pub fn set_write_bandwidth(bytes_per_second: u64) {
    WRITE_BANDWIDTH.store(bytes_per_second, std::sync::atomic::Ordering::Relaxed);
}

impl Paced {
    /// Pacing a file whose bytes up to `offset` are already written (a resumed transfer), at
    /// most at `[io] max_write_bandwidth`.
    pub fn from(offset: u64) -> Paced {
        let settled = offset - offset % PACE_STEP;
        Paced {
            written: offset,
            settled,
            bandwidth: WRITE_BANDWIDTH.load(std::sync::atomic::Ordering::Relaxed),
            keep_cached: false,
            started: std::time::Instant::now(),
            paced: 0,
        }
    }

    /// Settled steps stay in the page cache, clean, until the caller drops them
    /// ([`drop_cached`]): for a check that reads the file back right after it is written.
    pub fn keeping_cached(self) -> Paced {
        Paced {
            keep_cached: true,
            ..self
        }
    }

    /// At most `bytes_per_second` (0: unbounded), whatever the process's setting.
    pub fn with_bandwidth(self, bytes_per_second: u64) -> Paced {
        Paced {
            bandwidth: bytes_per_second,
            ..self
        }
    }

    /// `n` more bytes were written to `file`.
    pub fn wrote(&mut self, file: &File, n: u64) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        self.written += n;
        while self.written - self.settled >= 2 * PACE_STEP {
            let fd = file.as_raw_fd();
            let (older, newer) = (self.settled, self.settled + PACE_STEP);
            // SAFETY: plain syscalls on a file descriptor this process owns; no memory passed.
            let rc = unsafe {
                nix::libc::sync_file_range(
                    fd,
                    newer as i64,
                    PACE_STEP as i64,
                    nix::libc::SYNC_FILE_RANGE_WRITE,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: as above.
            let rc = unsafe {
                nix::libc::sync_file_range(
                    fd,
                    older as i64,
                    PACE_STEP as i64,
                    nix::libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | nix::libc::SYNC_FILE_RANGE_WRITE
                        | nix::libc::SYNC_FILE_RANGE_WAIT_AFTER,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if !self.keep_cached {
                nix::fcntl::posix_fadvise(
                    file,
                    older as i64,
                    PACE_STEP as i64,
                    nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
                )?;
            }
            self.settled = newer;
            self.paced += PACE_STEP;
            keep_to_bandwidth(self.bandwidth, self.started, self.paced);
        }
        Ok(())
    }
}

/// Waits until `bytes` written since `started` are within `bytes_per_second` (0: no bound).
fn keep_to_bandwidth(bytes_per_second: u64, started: std::time::Instant, bytes: u64) {
    if bytes_per_second == 0 {
        return;
    }
    let due = std::time::Duration::from_secs_f64(bytes as f64 / bytes_per_second as f64);
    if let Some(early) = due.checked_sub(started.elapsed()) {
        std::thread::sleep(early);
    }
}

/// Copies at most `size` bytes of `source` into `dest`, written [`Paced`] (its clean pages kept
/// for the check that reads the copy next and drops it); a source that holds more (it grew, or
/// lies about its size) is an error.
pub fn copy_exactly(source: &mut File, dest: &mut File, size: u64) -> std::io::Result<()> {
    use std::io::Seek;
    // In the kernel (copy_file_range), a pace step at a time, the source dropped from the cache
    // behind; the copy is read back once to check it.
    let mut source: &File = source;
    let start = source.stream_position()?;
    let mut behind = Behind::new(source, start);
    let mut paced = Paced::from(dest.stream_position()?).keeping_cached();
    let mut copied = 0;
    while copied < size {
        let step = PACE_STEP.min(size - copied);
        let n = std::io::copy(&mut source.take(step), dest)?;
        if n == 0 {
            break;
        }
        paced.wrote(dest, n)?;
        copied += n;
        behind.read_to(start + copied);
    }
    if copied < size {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{copied} bytes, the manifest says {size}"),
        ));
    }
    if source.read(&mut [0u8; 1])? != 0 {
        return Err(std::io::Error::other(format!(
            "more than the manifest's {size} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_paced_write_keeps_its_bytes_and_at_most_two_steps_unsettled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("paced");
        let mut file = create_private(&path).unwrap();
        // Resumed about 3 MB in, then odd-sized writes past five steps.
        let chunk: Vec<u8> = (0..1_000_003u32).map(|i| (i % 251) as u8).collect();
        let mut expected = Vec::new();
        for _ in 0..3 {
            file.write_all(&chunk).unwrap();
            expected.extend_from_slice(&chunk);
        }
        let mut paced = Paced::from(file.metadata().unwrap().len());
        while expected.len() < (5 * PACE_STEP) as usize + 12_345 {
            file.write_all(&chunk).unwrap();
            paced.wrote(&file, chunk.len() as u64).unwrap();
            expected.extend_from_slice(&chunk);
            assert!(paced.written - paced.settled < 2 * PACE_STEP);
            assert_eq!(paced.settled % PACE_STEP, 0);
        }
        assert!(paced.settled >= 3 * PACE_STEP, "{}", paced.settled);
        file.sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }

    #[test]
    fn a_bandwidth_bound_holds_the_writer_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bounded");
        let file = create_private(&path).unwrap();
        let bytes = vec![7u8; (4 * PACE_STEP) as usize];
        let started = Instant::now();
        let mut paced = Paced::from(0).with_bandwidth(64 << 20);
        (&file).write_all(&bytes).unwrap();
        paced.wrote(&file, bytes.len() as u64).unwrap();
        // Three steps settled (24 MiB) at 64 MiB/s: not before 375 ms, however fast the disk.
        assert_eq!(paced.settled, 3 * PACE_STEP);
        assert!(
            started.elapsed() >= Duration::from_millis(375),
            "{:?}",
            started.elapsed()
        );
        // Unbounded, the same writes do not wait for a clock.
        let mut free = Paced::from(0).with_bandwidth(0);
        free.wrote(&file, bytes.len() as u64).unwrap();
        assert_eq!(free.paced, 3 * PACE_STEP);
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

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
