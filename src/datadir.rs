//! The data directory: created when missing, resolved to an absolute path for the logs, and
//! owned by one process at a time.
//!
//! Ownership is an exclusive `flock` on `tally.lock` inside the directory, taken before anything
//! is read or written there and held for the life of the process. The file holds the owner's
//! pid, so a second process can say who holds it. The kernel drops the lock when the owner's
//! last descriptor closes, however the process ends (`kill -9` included), so a stale lock file
//! never blocks a restart: only a running owner does. A `flock` is advisory and local to one
//! machine's kernel: it protects a directory on a local disk or a block volume, not one shared
//! over NFS by two machines.

use anyhow::Context;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "tally.lock";

/// The data directory, held by this process until dropped.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// Open for as long as the lock must hold: closing it releases the lock.
    _lock: File,
}

impl DataDir {
    /// Create `dir` when missing and take its lock; fails, naming the holder's pid, when another
    /// process owns it.
    pub fn acquire(dir: &Path) -> anyhow::Result<DataDir> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create storage.dir {}", dir.display()))?;
        let path = dir
            .canonicalize()
            .with_context(|| format!("cannot resolve storage.dir {}", dir.display()))?;
        let lock_path = path.join(LOCK_FILE);
        // Not truncated on open: until the lock is ours the file holds the owner's pid.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .with_context(|| format!("cannot open the lock file {}", lock_path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = match text.trim() {
                    "" => "pid unknown".to_owned(),
                    pid => format!("pid {pid}"),
                };
                anyhow::bail!(
                    "storage.dir {} is in use by another tally process ({holder}, lock file {}): \
                     a data directory has exactly one owner; stop that process or give this one \
                     another storage.dir",
                    path.display(),
                    lock_path.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", lock_path.display()));
            }
        }
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .and_then(|()| file.sync_data())
            .with_context(|| format!("cannot write the lock file {}", lock_path.display()))?;
        Ok(DataDir { path, _lock: file })
    }

    /// The absolute path of the directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_owner_in_the_same_process_is_refused_with_the_pid_and_free_once_dropped() {
        let dir = std::env::temp_dir().join(format!("tally-datadir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = DataDir::acquire(&dir.join("nested")).expect("created and locked");
        assert!(first.path().is_absolute());
        let pid = std::fs::read_to_string(first.path().join(LOCK_FILE)).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        let err = DataDir::acquire(&dir.join("nested"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        DataDir::acquire(&dir.join("nested")).expect("free again");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
