//! The data-directory lock: `<dir>/LOCK`, held with an OS file lock for as long as the database is
//! open. The kernel drops it when the process ends, however it ends, so a crashed server never
//! leaves a stale lock behind. A second open from the same process also fails: each open takes the
//! lock through its own file handle.

use super::EmbeddedError;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

const LOCK_FILE: &str = "LOCK";

/// Proof that this handle owns the directory; dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock without waiting; [`EmbeddedError::Locked`] when someone holds it.
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock, EmbeddedError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| EmbeddedError::Io { dir: dir.to_path_buf(), source };
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(EmbeddedError::Locked { dir: dir.to_path_buf() }),
            Err(TryLockError::Error(source)) => return Err(io(source)),
        }
        // The holder's pid, for an operator wondering who has the directory.
        file.set_len(0).map_err(io)?;
        (&file).write_all(format!("{}\n", std::process::id()).as_bytes()).map_err(io)?;
        tracing::debug!(path = %path.display(), "data directory locked");
        Ok(DirLock { _file: file, path })
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Closing the file releases the lock; the file itself stays (removing it would race with
        // a process that just opened it).
        tracing::debug!(path = %self.path.display(), "data directory unlocked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_in_same_process_is_refused_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        let err = DirLock::acquire(dir.path()).unwrap_err();
        assert!(matches!(err, EmbeddedError::Locked { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("in use by a running Herald server"), "{message}");
        assert!(message.contains("HTTP API"), "{message}");
        drop(first);
        DirLock::acquire(dir.path()).unwrap();
    }
}
