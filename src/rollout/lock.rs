//! The deploy lock: at most one run changes the racks at a time.
//!
//! The local backend is a file created with `O_EXCL`; it records who holds it, for which run,
//! and until when. A lock whose holder is gone (expired, or a dead process on this host) can
//! be taken over; the run that holds it can always take it back (resume after a crash).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LockInfo {
    pub owner: String,
    pub run: String,
    pub host: String,
    pub pid: u32,
    pub acquired: String,
    /// Seconds since the Unix epoch after which the lock is stale.
    pub expires_unix: u64,
}

impl LockInfo {
    pub fn describe(&self) -> String {
        format!(
            "{} (run {}, pid {} on {}, since {})",
            self.owner, self.run, self.pid, self.host, self.acquired
        )
    }

    fn is_stale(&self) -> bool {
        let now = unix_now();
        if now >= self.expires_unix {
            return true;
        }
        self.host == hostname() && !Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("another rollout holds the lock: {0}", .holder.describe())]
pub struct LockHeld {
    pub holder: LockInfo,
}

/// A held lock; released on drop.
#[derive(Debug)]
pub struct Lock {
    path: PathBuf,
    info: LockInfo,
    released: bool,
}

impl Lock {
    /// Takes the lock for `run`, unless someone else holds a live one.
    pub fn acquire(
        state_dir: &Path,
        owner: &str,
        run: &str,
        ttl: Duration,
    ) -> Result<std::result::Result<Lock, LockHeld>> {
        std::fs::create_dir_all(state_dir).with_context(|| {
            format!("cannot create the state directory {}", state_dir.display())
        })?;
        let path = state_dir.join("lock.json");
        let info = LockInfo {
            owner: owner.to_string(),
            run: run.to_string(),
            host: hostname(),
            pid: std::process::id(),
            acquired: crate::rollout::journal::now_rfc3339(),
            expires_unix: unix_now() + ttl.as_secs(),
        };
        for _ in 0..3 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    f.write_all(serde_json::to_string_pretty(&info)?.as_bytes())
                        .and_then(|_| f.sync_all())
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    return Ok(Ok(Lock {
                        path,
                        info,
                        released: false,
                    }));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = match read(&path)? {
                        Some(h) => h,
                        None => continue, // released between our two calls
                    };
                    if holder.run == run || holder.is_stale() {
                        // Remove only what we read: a racing taker that wrote a new lock wins.
                        if read(&path)?.as_ref() == Some(&holder) {
                            let _ = std::fs::remove_file(&path);
                        }
                        continue;
                    }
                    return Ok(Err(LockHeld { holder }));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()))
                }
            }
        }
        match read(&path)? {
            Some(holder) => Ok(Err(LockHeld { holder })),
            None => anyhow::bail!(
                "the lock {} keeps changing hands; try again",
                path.display()
            ),
        }
    }

    pub fn release(mut self) -> Result<()> {
        self.released = true;
        remove_if_ours(&self.path, &self.info)
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if !self.released {
            let _ = remove_if_ours(&self.path, &self.info);
        }
    }
}

fn remove_if_ours(path: &Path, info: &LockInfo) -> Result<()> {
    if read(path)?.as_ref() == Some(info) {
        std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(())
}

/// The current holder, if any.
pub fn read(path: &Path) -> Result<Option<LockInfo>> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Ok(None),
        Ok(text) => serde_json::from_str(&text).map(Some).with_context(|| {
            format!(
                "{} is not a lock file; remove it if no rollout is running",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Holder of the lock in a state directory, whether live or stale.
pub fn status(state_dir: &Path) -> Result<Option<(LockInfo, bool)>> {
    Ok(read(&state_dir.join("lock.json"))?.map(|i| {
        let stale = i.is_stale();
        (i, stale)
    }))
}

/// Removes the lock whoever holds it (`lock release --force`).
pub fn force_release(state_dir: &Path) -> Result<Option<LockInfo>> {
    let path = state_dir.join("lock.json");
    let holder = read(&path)?;
    if holder.is_some() {
        std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(holder)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_taker_is_refused_and_the_same_run_may_retake() {
        let dir = tempfile::tempdir().unwrap();
        let ttl = Duration::from_secs(3600);
        let a = Lock::acquire(dir.path(), "alice", "run-a", ttl)
            .unwrap()
            .unwrap();
        let held = Lock::acquire(dir.path(), "bob", "run-b", ttl)
            .unwrap()
            .unwrap_err();
        assert_eq!(held.holder.owner, "alice");
        assert!(held.to_string().contains("run run-a"));
        std::mem::forget(a); // as if the process died holding it, but it is still alive (our pid)
        let again = Lock::acquire(dir.path(), "alice", "run-a", ttl)
            .unwrap()
            .unwrap();
        again.release().unwrap();
        assert!(status(dir.path()).unwrap().is_none());
    }

    #[test]
    fn an_expired_lock_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let a = Lock::acquire(dir.path(), "alice", "run-a", Duration::ZERO)
            .unwrap()
            .unwrap();
        std::mem::forget(a);
        let b = Lock::acquire(dir.path(), "bob", "run-b", Duration::from_secs(60))
            .unwrap()
            .unwrap();
        assert_eq!(b.info.owner, "bob");
    }
}
