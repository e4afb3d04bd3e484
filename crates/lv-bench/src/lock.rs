//! One writer per run folder: `lv train` (new or `--resume`) holds an exclusive advisory lock
//! on `RUN/.lock` (`flock(2)` through `std::fs::File::try_lock`) for as long as it runs. The
//! kernel releases the lock when the process exits, however it exits (a crash or SIGKILL
//! included), so a stale lock file never blocks a later run. `lv eval` and `lv sample` only
//! read the checkpoint (replaced by atomic renames), so they run beside a trainer; `lv eval`
//! then leaves the folder's results to the trainer (see [`crate::run::eval`]).

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

/// The lock file of a run folder.
pub fn lock_path(dir: &Path) -> PathBuf {
    dir.join(".lock")
}

/// A held run-folder lock; released on drop or process exit.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// Takes the folder's exclusive lock without waiting; refuses with a clear error when another
/// process holds it.
pub fn lock_run(dir: &Path) -> Result<RunLock> {
    let path = lock_path(dir);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening the run-folder lock {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(RunLock { _file: file }),
        Err(TryLockError::WouldBlock) => bail!(
            "run folder {} is in use by another `lv train` (it holds {}); wait for it to finish, or train into another --out",
            dir.display(),
            path.display()
        ),
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking the run folder {}", path.display()))
        }
    }
}

/// Whether another process holds the folder's lock now (a trainer is running).
pub fn is_locked(dir: &Path) -> bool {
    let Ok(file) = File::open(lock_path(dir)) else {
        return false;
    };
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(TryLockError::WouldBlock) => true,
        Err(TryLockError::Error(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_until_the_first_is_dropped() {
        let dir = std::env::temp_dir().join(format!("lv-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = lock_run(&dir).unwrap();
        assert!(is_locked(&dir));
        let e = lock_run(&dir).unwrap_err().to_string();
        assert!(e.contains("in use by another `lv train`"), "{e}");
        drop(first);
        assert!(!is_locked(&dir));
        let _again = lock_run(&dir).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
