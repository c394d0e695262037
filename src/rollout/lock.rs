//! The deploy lock: at most one run changes the racks at a time.
//!
//! The lock is one object in the state store (a file created with `O_EXCL`, or an S3 object
//! written with `If-None-Match`); it records who holds it, for which run, and until when. A lock whose holder is gone (expired, or a dead process on this host) can
//! be taken over; the run that holds it can always take it back (resume after a crash).

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::store::{Store, Token};

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
pub struct Lock {
    store: Store,
    pub(crate) info: LockInfo,
    token: Token,
    released: bool,
}

impl std::fmt::Debug for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lock")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

const KEY: &str = "lock.json";

impl Lock {
    /// Takes the lock for `run`, unless someone else holds a live one. The write is conditional
    /// (create-if-absent, replace-if-unchanged), so two takers never both win.
    pub fn acquire(
        store: &Store,
        owner: &str,
        run: &str,
        ttl: Duration,
    ) -> Result<std::result::Result<Lock, LockHeld>> {
        let info = LockInfo {
            owner: owner.to_string(),
            run: run.to_string(),
            host: hostname(),
            pid: std::process::id(),
            acquired: crate::rollout::journal::now_rfc3339(),
            expires_unix: unix_now() + ttl.as_secs(),
        };
        let bytes = serde_json::to_vec_pretty(&info)?;
        for _ in 0..5 {
            if let Some(token) = store.create(KEY, &bytes)? {
                return Ok(Ok(Lock {
                    store: store.clone(),
                    info,
                    token,
                    released: false,
                }));
            }
            let Some((holder, token)) = read(store)? else {
                continue; // released between our two calls
            };
            if holder.run == run || holder.is_stale() {
                // Take it over only if nobody changed it since we read it.
                if let Some(token) = store.replace(KEY, &bytes, &token)? {
                    return Ok(Ok(Lock {
                        store: store.clone(),
                        info,
                        token,
                        released: false,
                    }));
                }
                continue;
            }
            return Ok(Err(LockHeld { holder }));
        }
        match read(store)? {
            Some((holder, _)) => Ok(Err(LockHeld { holder })),
            None => anyhow::bail!(
                "the lock in {} keeps changing hands; try again",
                store.describe()
            ),
        }
    }

    pub fn release(mut self) -> Result<()> {
        self.released = true;
        self.store.delete(KEY, Some(&self.token))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if !self.released {
            let _ = self.store.delete(KEY, Some(&self.token));
        }
    }
}

/// The current holder and its version token, if any.
fn read(store: &Store) -> Result<Option<(LockInfo, Token)>> {
    match store.read(KEY)? {
        None => Ok(None),
        Some((bytes, _)) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(None),
        Some((bytes, token)) => serde_json::from_slice(&bytes)
            .map(|info| Some((info, token)))
            .with_context(|| {
                format!(
                    "{KEY} in {} is not a lock; remove it if no rollout is running",
                    store.describe()
                )
            }),
    }
}

/// Holder of the lock, whether live or stale.
pub fn status(store: &Store) -> Result<Option<(LockInfo, bool)>> {
    Ok(read(store)?.map(|(i, _)| {
        let stale = i.is_stale();
        (i, stale)
    }))
}

/// Removes the lock whoever holds it (`lock release --force`).
pub fn force_release(store: &Store) -> Result<Option<LockInfo>> {
    let holder = read(store)?;
    if let Some((_, token)) = &holder {
        store.delete(KEY, Some(token))?;
    }
    Ok(holder.map(|(h, _)| h))
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
        let store = Store::Local(dir.path().to_path_buf());
        let ttl = Duration::from_secs(3600);
        let a = Lock::acquire(&store, "alice", "run-a", ttl)
            .unwrap()
            .unwrap();
        let held = Lock::acquire(&store, "bob", "run-b", ttl)
            .unwrap()
            .unwrap_err();
        assert_eq!(held.holder.owner, "alice");
        assert!(held.to_string().contains("run run-a"));
        std::mem::forget(a); // as if the process died holding it, but it is still alive (our pid)
        let again = Lock::acquire(&store, "alice", "run-a", ttl)
            .unwrap()
            .unwrap();
        again.release().unwrap();
        assert!(status(&store).unwrap().is_none());
    }

    #[test]
    fn an_expired_lock_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Local(dir.path().to_path_buf());
        let a = Lock::acquire(&store, "alice", "run-a", Duration::ZERO)
            .unwrap()
            .unwrap();
        std::mem::forget(a);
        let b = Lock::acquire(&store, "bob", "run-b", Duration::from_secs(60))
            .unwrap()
            .unwrap();
        assert_eq!(b.info.owner, "bob");
    }
}
