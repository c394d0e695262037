//! The run journal: an append-only list of [`Event`]s per run, written before and after every
//! step, and the replay that turns it back into where each rack stands.
//!
//! The local backend keeps `runs/<run>.jsonl` under the state directory, every record fsynced
//! before the step it describes goes on, so a `kill -9` loses nothing that happened; the S3
//! backend writes one object per record under `runs/<run>/`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::event::{Event, RackStart, RunKind};
use super::store::Store;
use crate::outcome::Outcome;

/// One journal line: the event plus when it happened (the file names the run).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub ts: String,
    #[serde(flatten)]
    pub event: Event,
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// An open journal for one run.
pub struct Journal {
    run: String,
    store: Store,
    backend: Mutex<Backend>,
}

enum Backend {
    /// `runs/<run>.jsonl`, appended and fsynced.
    File { path: PathBuf, file: File },
    /// `runs/<run>/<seq>.json`, one object per record (S3 has no append).
    Objects { next: u64 },
}

impl Journal {
    pub fn create(store: &Store, run: &str) -> Result<Journal> {
        let backend = match store {
            Store::Local(dir) => {
                let dir = dir.join("runs");
                std::fs::create_dir_all(&dir).with_context(|| {
                    format!("cannot create the journal directory {}", dir.display())
                })?;
                let path = dir.join(format!("{run}.jsonl"));
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("cannot open the journal {}", path.display()))?;
                Backend::File { path, file }
            }
            Store::S3 { .. } => Backend::Objects {
                next: store.list(&format!("runs/{run}/"))?.len() as u64,
            },
        };
        Ok(Journal {
            run: run.to_string(),
            store: store.clone(),
            backend: Mutex::new(backend),
        })
    }

    pub fn run(&self) -> &str {
        &self.run
    }

    /// Appends an event; it is durable (fsynced, or stored in S3) when this returns.
    pub fn append(&self, event: &Event) -> Result<()> {
        let record = Record {
            ts: now_rfc3339(),
            event: event.clone(),
        };
        let mut line = serde_json::to_string(&record)?;
        let mut backend = self.backend.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *backend {
            Backend::File { path, file } => {
                line.push('\n');
                file.write_all(line.as_bytes())
                    .and_then(|_| file.sync_data())
                    .with_context(|| format!("cannot write the journal {}", path.display()))
            }
            Backend::Objects { next } => loop {
                let key = format!("runs/{}/{:08}.json", self.run, next);
                *next += 1;
                if self.store.create(&key, line.as_bytes())?.is_some() {
                    return Ok(());
                }
            },
        }
    }
}

/// Reads a run's records. A torn last line (the process died mid-write) is ignored.
pub fn read_run(store: &Store, run: &str) -> Result<Vec<Record>> {
    let lines: Vec<String> = match store {
        Store::Local(dir) => {
            let path = dir.join("runs").join(format!("{run}.jsonl"));
            let file = File::open(&path).with_context(|| {
                format!(
                    "no journal for run `{run}` at {} (list runs with `acme-rollout status`)",
                    path.display()
                )
            })?;
            BufReader::new(file)
                .lines()
                .collect::<std::io::Result<_>>()?
        }
        Store::S3 { .. } => {
            let keys = store.list(&format!("runs/{run}/"))?;
            if keys.is_empty() {
                bail!("no journal for run `{run}` in {}", store.describe());
            }
            let mut lines = Vec::new();
            for key in keys {
                if let Some((bytes, _)) = store.read(&key)? {
                    lines.push(String::from_utf8_lossy(&bytes).into_owned());
                }
            }
            lines
        }
    };
    let mut records = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(line) {
            Ok(r) => records.push(r),
            Err(_) if i + 1 == lines.len() => break,
            Err(e) => bail!("journal of run {run}, record {}: unreadable: {e}", i + 1),
        }
    }
    Ok(records)
}

/// Run ids in the store, oldest first (ids sort by start time).
pub fn list_runs(store: &Store) -> Result<Vec<String>> {
    let mut runs: Vec<String> = store
        .list("runs/")?
        .into_iter()
        .filter_map(|k| {
            let rest = k.strip_prefix("runs/")?;
            Some(match rest.split_once('/') {
                Some((run, _)) => run.to_string(),
                None => rest.strip_suffix(".jsonl")?.to_string(),
            })
        })
        .collect();
    runs.sort();
    runs.dedup();
    Ok(runs)
}

/// Where a rack stands in a run, as the journal tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Nothing done to it yet (a shipped but unpromoted release changes nothing it serves).
    Pending,
    Shipped,
    /// A promote began and its end was not recorded: ask the rack.
    Promoting,
    Promoted,
    Baked,
    /// The promote failed and the rack reverted by itself.
    Reverted,
    RollingBack,
    RolledBack,
    RollbackFailed,
}

impl Phase {
    pub fn label(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Shipped => "shipped",
            Phase::Promoting => "promoting",
            Phase::Promoted => "promoted (baking)",
            Phase::Baked => "done",
            Phase::Reverted => "reverted by rack",
            Phase::RollingBack => "rolling back",
            Phase::RolledBack => "rolled back",
            Phase::RollbackFailed => "rollback failed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RackRun {
    pub start: RackStart,
    pub target_release: Option<String>,
    pub target_build: Option<String>,
    pub digest: Option<String>,
    pub phase: Phase,
    /// The release the rack runs after a rollback (a copy of the previous one).
    pub rolled_back_release: Option<String>,
    pub failure: Option<String>,
}

/// A run rebuilt from its journal.
#[derive(Debug, Clone)]
pub struct RunState {
    pub run: String,
    pub owner: String,
    pub reason: Option<String>,
    pub started: String,
    pub waves: Vec<Vec<String>>,
    pub racks: BTreeMap<String, RackRun>,
    pub build: Option<(String, String, String)>,
    pub bake_secs: Option<u64>,
    pub rollback_promoted: bool,
    pub kind: RunKind,
    pub finished: Option<Outcome>,
    pub interrupted: bool,
}

impl RunState {
    pub fn replay(records: &[Record]) -> Result<RunState> {
        let Some(first) = records.first() else {
            bail!("the journal is empty");
        };
        let Event::RunStarted {
            run,
            owner,
            reason,
            waves,
            racks,
            bake_secs,
            rollback_promoted,
            kind,
        } = &first.event
        else {
            bail!("the journal does not start with run.started");
        };
        let mut state = RunState {
            run: run.clone(),
            owner: owner.clone(),
            reason: reason.clone(),
            started: first.ts.clone(),
            waves: waves.clone(),
            racks: racks
                .iter()
                .map(|r| {
                    (
                        r.rack.clone(),
                        RackRun {
                            start: r.clone(),
                            target_release: None,
                            target_build: None,
                            digest: None,
                            phase: Phase::Pending,
                            rolled_back_release: None,
                            failure: None,
                        },
                    )
                })
                .collect(),
            build: None,
            bake_secs: *bake_secs,
            rollback_promoted: *rollback_promoted,
            kind: *kind,
            finished: None,
            interrupted: false,
        };
        for record in &records[1..] {
            state.apply(&record.event);
        }
        Ok(state)
    }

    /// Applies one event; the same code serves the live run and the replay of a journal.
    pub(crate) fn apply(&mut self, event: &Event) {
        if let Event::BuildFinished {
            rack,
            build,
            release,
        } = event
        {
            self.build = Some((rack.clone(), build.clone(), release.clone()));
        }
        match event {
            Event::RunResumed { .. } => self.interrupted = false,
            Event::Interrupted { .. } => self.interrupted = true,
            Event::RunFinished { outcome, .. } => self.finished = Some(*outcome),
            _ => {}
        }
        let Some(rack) = event.rack().and_then(|r| self.racks.get_mut(r)) else {
            return;
        };
        match event {
            Event::Shipped {
                build,
                release,
                digest,
                ..
            } => {
                rack.target_build = Some(build.clone());
                rack.digest = digest.clone();
                rack.target_release = Some(release.clone());
                rack.phase = Phase::Shipped;
            }
            Event::Promoting { .. } => rack.phase = Phase::Promoting,
            Event::Promoted { .. } => rack.phase = Phase::Promoted,
            Event::PromoteFailed {
                reverted, message, ..
            } => {
                rack.failure = Some(message.clone());
                if *reverted {
                    rack.phase = Phase::Reverted;
                }
            }
            Event::GateFailed { gate, evidence, .. } => {
                rack.failure = Some(format!("{gate} gate: {}", evidence.join("; ")));
            }
            Event::BakePassed { .. } => rack.phase = Phase::Baked,
            Event::RollingBack { .. } => rack.phase = Phase::RollingBack,
            Event::RolledBack { release, .. } => {
                rack.phase = Phase::RolledBack;
                rack.rolled_back_release = Some(release.clone());
            }
            Event::RollbackFailed { message, .. } => {
                rack.phase = Phase::RollbackFailed;
                rack.failure = Some(message.clone());
            }
            _ => {}
        }
    }

    /// Rack names in wave order.
    pub fn rack_order(&self) -> Vec<String> {
        self.waves.iter().flatten().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> Event {
        Event::RunStarted {
            run: "r1".into(),
            owner: "ci".into(),
            reason: None,
            waves: vec![vec!["us".into()], vec!["eu".into()]],
            racks: ["us", "eu"]
                .iter()
                .map(|r| RackStart {
                    rack: r.to_string(),
                    region: "x".into(),
                    previous_release: format!("R{r}0"),
                    previous_build: "B0".into(),
                })
                .collect(),
            bake_secs: None,
            rollback_promoted: true,
            kind: RunKind::Deploy,
        }
    }

    #[test]
    fn replay_tracks_each_rack_and_survives_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Local(dir.path().to_path_buf());
        let j = Journal::create(&store, "r1").unwrap();
        j.append(&start()).unwrap();
        for rack in ["us", "eu"] {
            j.append(&Event::Shipped {
                rack: rack.into(),
                build: "B1".into(),
                release: format!("R{rack}1"),
                digest: None,
            })
            .unwrap();
        }
        j.append(&Event::Promoting {
            rack: "us".into(),
            release: "Rus1".into(),
        })
        .unwrap();
        // A crash in the middle of the next write.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("runs/r1.jsonl"))
            .unwrap()
            .write_all(b"{\"ts\":\"2026")
            .unwrap();
        let state = RunState::replay(&read_run(&store, "r1").unwrap()).unwrap();
        assert_eq!(state.racks["us"].phase, Phase::Promoting);
        assert_eq!(state.racks["eu"].phase, Phase::Shipped);
        assert_eq!(state.racks["eu"].target_release.as_deref(), Some("Reu1"));
        assert_eq!(state.rack_order(), vec!["us", "eu"]);
        assert_eq!(list_runs(&store).unwrap(), vec!["r1"]);
    }

    #[test]
    fn a_missing_run_names_where_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_run(&Store::Local(dir.path().to_path_buf()), "nope")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no journal for run `nope`"), "{e}");
    }
}
