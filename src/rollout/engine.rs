//! The state machine of a run. Per rack: ship → promote → bake → done, or → rollback.
//! Every transition goes through [`Live::emit`], which journals it (fsynced) before the run
//! moves on, updates the in-memory [`RunState`] with the same replay code `--resume` uses,
//! and tells the reporter.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use tokio::sync::watch;

use super::event::{Event, RackStart, Reporter, RunKind};
use super::gates::{self, BakeVerdict};
use super::journal::{self, Journal, Phase, RunState};
use super::lock::Lock;
use super::summary::{RackSummary, Summary};
use crate::config::{Config, Rack};
use crate::convox::{Convox, ConvoxError};
use crate::outcome::{Failure, Outcome};

/// How long a deploy lock lives before another run may take it over.
const LOCK_TTL: Duration = Duration::from_secs(6 * 3600);

/// What every command that touches racks needs.
#[derive(Clone)]
pub struct Ctx {
    pub cfg: Arc<Config>,
    pub convox: Convox,
    pub reporter: Arc<dyn Reporter>,
    pub http: reqwest::Client,
    pub owner: String,
    /// The AWS session, made on first use (commands that never touch AWS never load it).
    pub aws: Arc<tokio::sync::OnceCell<acme_aws::Aws>>,
    /// Where the journal and the lock live.
    pub store: super::store::Store,
}

impl Ctx {
    pub async fn aws(&self) -> &acme_aws::Aws {
        self.aws.get_or_init(acme_aws::Aws::from_env).await
    }

    /// Runs a blocking `convox` call off the async threads.
    pub async fn convox<T, F>(&self, f: F) -> Result<T, ConvoxError>
    where
        T: Send + 'static,
        F: FnOnce(&Convox) -> Result<T, ConvoxError> + Send + 'static,
    {
        let convox = self.convox.clone();
        tokio::task::spawn_blocking(move || f(&convox))
            .await
            .expect("convox call thread panicked")
    }

    pub fn rack(&self, name: &str) -> &Rack {
        self.cfg
            .racks
            .iter()
            .find(|r| r.name == name)
            .expect("racks in a run come from the config")
    }
}

#[derive(Debug, Clone, Default)]
pub struct DeployOptions {
    /// Limit the run to these racks (names); empty = all.
    pub only: Vec<String>,
    /// Override every rack's bake duration.
    pub bake: Option<Duration>,
    pub reason: Option<String>,
    /// Roll back racks promoted earlier in the run when a later one fails.
    pub rollback_promoted: bool,
    /// Promote this existing release of the first rack (and its build) instead of building.
    pub release: Option<String>,
    /// Environment each rack's release must carry (the model pin), set after shipping.
    pub pins: crate::models::Pins,
}

/// A run in progress.
struct Live {
    ctx: Ctx,
    journal: Journal,
    state: Mutex<RunState>,
}

impl Live {
    fn emit(&self, event: Event) -> Result<()> {
        if event.is_journaled() {
            self.journal.append(&event)?;
            self.state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .apply(&event);
        }
        self.ctx.reporter.event(&event);
        if self.ctx.cfg.events_cloudwatch {
            self.publish(&event);
        }
        Ok(())
    }

    /// Rollout events as CloudWatch metrics (per rack, in its region) for dashboards to overlay.
    /// Best effort: a failed put is reported, never fails the run.
    fn publish(&self, event: &Event) {
        let state = self.snapshot();
        let points: Vec<(String, &'static str)> = match event {
            Event::RunStarted { .. } => state
                .rack_order()
                .into_iter()
                .map(|r| (r, "deploy_started"))
                .collect(),
            Event::Promoted { rack, .. } => vec![(rack.clone(), "promoted")],
            Event::PromoteFailed { rack, .. } | Event::GateFailed { rack, .. } => {
                vec![(rack.clone(), "gate_failed")]
            }
            Event::RolledBack { rack, .. } => vec![(rack.clone(), "rolled_back")],
            Event::RunFinished { .. } => state
                .rack_order()
                .into_iter()
                .map(|r| (r, "deploy_finished"))
                .collect(),
            _ => Vec::new(),
        };
        for (rack, name) in points {
            let ctx = self.ctx.clone();
            tokio::spawn(async move {
                let region = ctx.rack(&rack).region.clone();
                if let Err(e) = ctx
                    .aws()
                    .await
                    .put_rollout_event(&region, name, &rack, 1.0)
                    .await
                {
                    ctx.reporter.event(&Event::Note {
                        message: format!(
                            "could not publish the {name} event for {rack} to CloudWatch: {e}"
                        ),
                    });
                }
            });
        }
    }

    fn snapshot(&self) -> RunState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Why a rack's part of the run stopped.
#[derive(Debug, Clone, thiserror::Error)]
enum RackFailure {
    #[error("{0}")]
    /// A gate (or the rack's own readiness check) said no: roll back, exit 2.
    Gate(String),
    #[error("{0}")]
    TimedOut(String),
    #[error("{0}")]
    Error(String),
}

pub fn new_run_id() -> String {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(['-', ':'], "");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let salt = (nanos ^ std::process::id().wrapping_mul(2_654_435_761)) & 0xffff;
    format!("{stamp}-{salt:04x}")
}

/// Racks in scope, in wave order, as names grouped by wave.
fn scoped_waves(cfg: &Config, only: &[String]) -> Vec<(String, Vec<String>)> {
    cfg.waves
        .iter()
        .map(|w| {
            (
                w.name.clone(),
                w.racks
                    .iter()
                    .map(|&i| cfg.racks[i].name.clone())
                    .filter(|n| only.is_empty() || only.contains(n))
                    .collect::<Vec<_>>(),
            )
        })
        .filter(|(_, racks)| !racks.is_empty())
        .collect()
}

/// Reads each rack's current release and build; refuses (exit 3) if a rack is not ready.
async fn preflight(ctx: &Ctx, racks: &[String]) -> Result<Vec<RackStart>, Failure> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, name) in racks.iter().enumerate() {
        let ctx = ctx.clone();
        let name = name.clone();
        tasks.spawn(async move {
            let rack = name.clone();
            let info = ctx.convox(move |c| c.app_info(&rack)).await;
            let result = match info {
                Ok(info) if info.status != "running" => Err(format!(
                    "rack {name}: app `{}` is `{}`, not running; wait for the current update to finish",
                    ctx.cfg.app.name, info.status
                )),
                Ok(info) if info.release.is_empty() => Err(format!(
                    "rack {name}: app `{}` has no active release yet; deploy it once by hand first (`convox deploy -r {name}`), so a rollback has somewhere to go",
                    ctx.cfg.app.name
                )),
                Ok(info) => {
                    let (rack, release) = (name.clone(), info.release.clone());
                    match ctx.convox(move |c| c.release_build(&rack, &release)).await {
                        Ok(build) => Ok(RackStart {
                            rack: name.clone(),
                            region: ctx.rack(&name).region.clone(),
                            previous_release: info.release,
                            previous_build: build,
                        }),
                        Err(e) => Err(format!("rack {name}: {e}")),
                    }
                }
                Err(e) => Err(format!("rack {name}: {e}{}", e.hint().map(|h| format!(" ({h})")).unwrap_or_default())),
            };
            (i, result)
        });
    }
    let mut starts: Vec<Option<RackStart>> = vec![None; racks.len()];
    let mut problems = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (i, result) = joined.expect("preflight task");
        match result {
            Ok(s) => starts[i] = Some(s),
            Err(p) => problems.push(p),
        }
    }
    if !problems.is_empty() {
        problems.sort();
        return Err(Failure::new(
            Outcome::Refused,
            format!(
                "preflight failed, nothing was changed:\n  {}",
                problems.join("\n  ")
            ),
        ));
    }
    Ok(starts
        .into_iter()
        .map(|s| s.expect("all preflights answered"))
        .collect())
}

/// How a new run starts.
struct RunSpec {
    kind: RunKind,
    waves: Vec<Vec<String>>,
    reason: Option<String>,
    bake: Option<Duration>,
    rollback_promoted: bool,
}

/// Preflight, lock, and the journal's first record: the common start of every run.
async fn begin(ctx: &Ctx, spec: RunSpec) -> Result<(Arc<Live>, Lock)> {
    let racks: Vec<String> = spec.waves.iter().flatten().cloned().collect();
    if racks.is_empty() {
        return Err(Failure::new(Outcome::Refused, "no racks to work on").into());
    }
    let starts = preflight(ctx, &racks).await?;
    let run = new_run_id();
    let lock = match Lock::acquire(&ctx.store, &ctx.owner, &run, LOCK_TTL)? {
        Ok(lock) => lock,
        Err(held) => {
            return Err(Failure::new(Outcome::LockHeld, held.to_string())
                .with_hint("wait for it to finish, or if it is dead: `acme-rollout lock release --force --reason …`")
                .into())
        }
    };
    let journal = Journal::create(&ctx.store, &run)?;
    let start = Event::RunStarted {
        run: run.clone(),
        owner: ctx.owner.clone(),
        reason: spec.reason,
        waves: spec.waves,
        racks: starts,
        bake_secs: spec.bake.map(|d| d.as_secs()),
        rollback_promoted: spec.rollback_promoted,
        kind: spec.kind,
    };
    let state = RunState::replay(&[journal::Record {
        ts: journal::now_rfc3339(),
        event: start.clone(),
    }])?;
    let live = Arc::new(Live {
        ctx: ctx.clone(),
        journal,
        state: Mutex::new(state),
    });
    live.journal.append(&start)?;
    ctx.reporter.event(&start);
    Ok((live, lock))
}

/// `acme-rollout deploy`.
pub async fn deploy(ctx: &Ctx, opts: DeployOptions) -> Result<Summary> {
    let waves = scoped_waves(&ctx.cfg, &opts.only);
    if opts.release.is_none() {
        check_manifest(ctx)?;
    }
    let (live, lock) = begin(
        ctx,
        RunSpec {
            kind: RunKind::Deploy,
            waves: waves.iter().map(|(_, r)| r.clone()).collect(),
            reason: opts.reason.clone(),
            bake: opts.bake,
            rollback_promoted: opts.rollback_promoted,
        },
    )
    .await?;
    if let Some(release) = &opts.release {
        if let Err(f) = adopt_release(&live, release).await {
            live.emit(Event::Note {
                message: format!("cannot use release {release}: {f}"),
            })?;
            return finish(&live, Outcome::Refused, lock).await;
        }
    }
    let wave_names: Vec<String> = waves.iter().map(|(n, _)| n.clone()).collect();
    let outcome = match ship(&live).await.and(pin(&live, &opts.pins).await) {
        Ok(()) => drive(&live, &wave_names, opts.bake).await,
        Err(f) => shipping_failed(&live, f),
    };
    finish(&live, outcome, lock).await
}

/// A manifest that cannot be rendered refuses the run before anything changes.
fn check_manifest(ctx: &Ctx) -> Result<()> {
    crate::manifest::render(&ctx.cfg).map_err(|e| {
        anyhow::Error::from(
            Failure::new(Outcome::Refused, format!("{e:#}")).with_hint("nothing was changed"),
        )
    })?;
    Ok(())
}

fn shipping_failed(live: &Live, f: RackFailure) -> Outcome {
    let _ = live.emit(Event::Note {
        message: format!("shipping failed: {f}"),
    });
    match f {
        RackFailure::TimedOut(_) => Outcome::TimedOut,
        _ => Outcome::Error,
    }
}

/// Sets each rack's pinned environment (model path and checksum) on its shipped release; the
/// result is the release the rack will promote.
async fn pin(live: &Arc<Live>, pins: &crate::models::Pins) -> Result<(), RackFailure> {
    for (rack, env) in pins {
        let state = live.snapshot();
        let Some(run) = state.racks.get(rack) else {
            continue;
        };
        let (Some(release), Some(build)) = (run.target_release.clone(), run.target_build.clone())
        else {
            continue;
        };
        // Keys only: values of the app environment never reach the screen or the journal.
        let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        let _ = live.emit(Event::Note {
            message: format!(
                "[{rack}] pinning its regional model ({}) on top of {release}",
                keys.join(", ")
            ),
        });
        let (r, rel, e) = (rack.clone(), release.clone(), env.clone());
        let pinned = live
            .ctx
            .convox(move |c| c.env_set(&r, &rel, &e))
            .await
            .map_err(convox_failure)?;
        emit_or_fail(
            live,
            Event::Shipped {
                rack: rack.clone(),
                build,
                release: pinned,
                digest: run.digest.clone(),
            },
        )?;
    }
    Ok(())
}

/// `acme-rollout build`: build once and ship the build into every rack, without promoting.
pub async fn build(ctx: &Ctx, only: &[String], reason: Option<String>) -> Result<Summary> {
    let waves = scoped_waves(&ctx.cfg, only);
    check_manifest(ctx)?;
    let (live, lock) = begin(
        ctx,
        RunSpec {
            kind: RunKind::Build,
            waves: waves.iter().map(|(_, r)| r.clone()).collect(),
            reason,
            bake: None,
            rollback_promoted: false,
        },
    )
    .await?;
    let outcome = match ship(&live).await {
        Ok(()) => Outcome::Done,
        Err(f) => shipping_failed(&live, f),
    };
    finish(&live, outcome, lock).await
}

/// `deploy --release R`: promote an existing build instead of building. R is a release of the
/// first rack; if an earlier `acme-rollout build` shipped it, its per-rack releases are reused,
/// otherwise its build is exported from the first rack and imported into the others.
async fn adopt_release(live: &Arc<Live>, release: &str) -> Result<(), RackFailure> {
    let state = live.snapshot();
    let order = state.rack_order();
    let first = order[0].clone();
    let dir = &live.ctx.store;
    let runs = journal::list_runs(dir).map_err(|e| RackFailure::Error(e.to_string()))?;
    for run in runs.into_iter().rev() {
        let Ok(records) = journal::read_run(dir, &run) else {
            continue;
        };
        let Ok(built) = RunState::replay(&records) else {
            continue;
        };
        if built.kind != RunKind::Build
            || built
                .build
                .as_ref()
                .is_none_or(|(rack, _, r)| r != release || *rack != first)
        {
            continue;
        }
        let (rack, build, rel) = built.build.clone().expect("checked above");
        emit_or_fail(
            live,
            Event::BuildFinished {
                rack,
                build,
                release: rel,
            },
        )?;
        for name in &order {
            if let Some(r) = built.racks.get(name) {
                if let (Some(build), Some(release)) = (&r.target_build, &r.target_release) {
                    emit_or_fail(
                        live,
                        Event::Shipped {
                            rack: name.clone(),
                            build: build.clone(),
                            release: release.clone(),
                            digest: r.digest.clone(),
                        },
                    )?;
                }
            }
        }
        return Ok(());
    }
    let (r, rel) = (first.clone(), release.to_string());
    let build = live
        .ctx
        .convox(move |c| c.release_build(&r, &rel))
        .await
        .map_err(convox_failure)?;
    emit_or_fail(
        live,
        Event::BuildFinished {
            rack: first,
            build,
            release: release.to_string(),
        },
    )
}

/// `acme-rollout deploy --resume RUN`: continue an interrupted run from where its journal says.
pub async fn resume(ctx: &Ctx, run: &str) -> Result<Summary> {
    let (live, lock) = reopen(ctx, run).await?;
    let state = live.snapshot();
    if state.racks.values().any(|r| {
        matches!(
            r.phase,
            Phase::RollingBack | Phase::RolledBack | Phase::RollbackFailed | Phase::Reverted
        )
    }) {
        // The run was already failing: finish putting every rack back.
        let include_baked = state.rollback_promoted;
        let outcome = match roll_back_racks(&live, include_baked).await {
            true => Outcome::RolledBack,
            false => Outcome::RollbackFailed,
        };
        return finish(&live, outcome, lock).await;
    }
    let wave_names: Vec<String> = (1..=state.waves.len())
        .map(|i| format!("wave {i}"))
        .collect();
    let bake = state.bake_secs.map(Duration::from_secs);
    let outcome = match ship(&live).await {
        Ok(()) => drive(&live, &wave_names, bake).await,
        Err(f) => shipping_failed(&live, f),
    };
    finish(&live, outcome, lock).await
}

/// `acme-rollout rollback --run RUN`: put every rack the run touched back on its previous release.
pub async fn rollback_run(ctx: &Ctx, run: &str) -> Result<Summary> {
    let (live, lock) = reopen(ctx, run).await?;
    let outcome = match roll_back_racks(&live, true).await {
        true => Outcome::Done,
        false => Outcome::RollbackFailed,
    };
    finish(&live, outcome, lock).await
}

/// Opens an existing run for more steps: takes the lock for it and settles racks whose last
/// promote has no recorded end by asking the rack what it runs.
async fn reopen(ctx: &Ctx, run: &str) -> Result<(Arc<Live>, Lock)> {
    let records = journal::read_run(&ctx.store, run)?;
    let state = RunState::replay(&records).with_context(|| format!("journal of run {run}"))?;
    if let Some(outcome) = state.finished {
        return Err(Failure::new(
            Outcome::Refused,
            format!(
                "run {run} already finished ({}); there is nothing to resume",
                outcome.name()
            ),
        )
        .into());
    }
    let lock = match Lock::acquire(&ctx.store, &ctx.owner, run, LOCK_TTL)? {
        Ok(lock) => lock,
        Err(held) => return Err(Failure::new(Outcome::LockHeld, held.to_string()).into()),
    };
    let live = Arc::new(Live {
        ctx: ctx.clone(),
        journal: Journal::create(&ctx.store, run)?,
        state: Mutex::new(state),
    });
    live.emit(Event::RunResumed {
        run: run.to_string(),
        owner: ctx.owner.clone(),
    })?;
    let uncertain: Vec<(String, String)> = live
        .snapshot()
        .racks
        .iter()
        .filter(|(_, r)| r.phase == Phase::Promoting)
        .filter_map(|(n, r)| r.target_release.clone().map(|t| (n.clone(), t)))
        .collect();
    for (rack, target) in uncertain {
        let name = rack.clone();
        let info = ctx.convox(move |c| c.app_info(&name)).await?;
        if info.release == target {
            live.emit(Event::Promoted {
                rack,
                release: target,
            })?;
        } else {
            // The promote never took (or the rack reverted it): promoting again is safe.
            live.emit(Event::Note {
                message: format!("{rack}: the interrupted promote did not take; promoting again"),
            })?;
            live.state
                .lock()
                .unwrap()
                .racks
                .get_mut(&rack)
                .unwrap()
                .phase = Phase::Shipped;
        }
    }
    Ok((live, lock))
}

/// The waves in order; on failure, the rollback policy.
async fn drive(live: &Arc<Live>, wave_names: &[String], bake: Option<Duration>) -> Outcome {
    let waves = live.snapshot().waves;
    for (w, racks) in waves.iter().enumerate() {
        let todo: Vec<String> = racks
            .iter()
            .filter(|r| live.snapshot().racks[*r].phase != Phase::Baked)
            .cloned()
            .collect();
        if todo.is_empty() {
            continue;
        }
        let _ = live.emit(Event::WaveStarted {
            wave: wave_names
                .get(w)
                .cloned()
                .unwrap_or_else(|| format!("wave {}", w + 1)),
            racks: todo.clone(),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop_tx = Arc::new(stop_tx);
        let mut tasks = tokio::task::JoinSet::new();
        for rack in todo {
            let live = live.clone();
            let stop_rx = stop_rx.clone();
            let stop_tx = stop_tx.clone();
            tasks.spawn(async move {
                let r = promote_and_bake(&live, &rack, bake, stop_rx).await;
                if r.is_err() {
                    let _ = stop_tx.send(true);
                }
                r
            });
        }
        let mut first_failure = None;
        while let Some(joined) = tasks.join_next().await {
            if let Err(f) = joined.unwrap_or_else(|e| Err(RackFailure::Error(e.to_string()))) {
                first_failure.get_or_insert(f);
            }
        }
        if let Some(failure) = first_failure {
            let include_baked = live.snapshot().rollback_promoted;
            if !roll_back_racks(live, include_baked).await {
                return Outcome::RollbackFailed;
            }
            return match failure {
                RackFailure::Gate(_) => Outcome::RolledBack,
                RackFailure::TimedOut(_) => Outcome::TimedOut,
                RackFailure::Error(_) => Outcome::Error,
            };
        }
    }
    Outcome::Done
}

/// Builds once in the first rack and imports that build into every other rack of the run.
async fn ship(live: &Arc<Live>) -> Result<(), RackFailure> {
    let state = live.snapshot();
    let order = state.rack_order();
    let missing: Vec<String> = order
        .iter()
        .filter(|r| state.racks[*r].target_release.is_none())
        .cloned()
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let ctx = &live.ctx;
    let (first_rack, build, release) = match state.build.clone() {
        Some(b) => b,
        None => {
            let rack = order[0].clone();
            emit_or_fail(live, Event::BuildStarted { rack: rack.clone() })?;
            let staged =
                stage_build_context(&ctx.cfg).map_err(|e| RackFailure::Error(format!("{e:#}")))?;
            let description = format!("acme-rollout {}", live.journal.run());
            let (r, dir) = (rack.clone(), staged.dir.clone());
            let release = ctx
                .convox(move |c| c.build(&r, &dir, STAGED_MANIFEST, &description))
                .await
                .map_err(convox_failure)?;
            let (r, rel) = (rack.clone(), release.clone());
            let build = ctx
                .convox(move |c| c.release_build(&r, &rel))
                .await
                .map_err(convox_failure)?;
            emit_or_fail(
                live,
                Event::BuildFinished {
                    rack: rack.clone(),
                    build: build.clone(),
                    release: release.clone(),
                },
            )?;
            (rack, build, release)
        }
    };
    let (r, b) = (first_rack.clone(), build.clone());
    let digest = ctx
        .convox(move |c| c.build_digest(&r, &b))
        .await
        .map_err(convox_failure)?;
    if missing.contains(&first_rack) {
        emit_or_fail(
            live,
            Event::Shipped {
                rack: first_rack.clone(),
                build: build.clone(),
                release: release.clone(),
                digest: digest.clone(),
            },
        )?;
    }
    let others: Vec<String> = missing.into_iter().filter(|r| *r != first_rack).collect();
    if others.is_empty() {
        return Ok(());
    }
    let export_dir = tempfile::tempdir().map_err(|e| RackFailure::Error(e.to_string()))?;
    let file = export_dir.path().join(format!("{build}.tgz"));
    let (r, b, f) = (first_rack.clone(), build.clone(), file.clone());
    ctx.convox(move |c| c.export_build(&r, &b, &f))
        .await
        .map_err(convox_failure)?;
    let mut tasks = tokio::task::JoinSet::new();
    for rack in others {
        let live = live.clone();
        let file = file.clone();
        let digest = digest.clone();
        tasks.spawn(async move {
            let r = rack.clone();
            let release = live
                .ctx
                .convox(move |c| c.import_build(&r, &file))
                .await
                .map_err(convox_failure)?;
            let (r, rel) = (rack.clone(), release.clone());
            let imported = live
                .ctx
                .convox(move |c| c.release_build(&r, &rel))
                .await
                .map_err(convox_failure)?;
            let (r, b) = (rack.clone(), imported.clone());
            let imported_digest = live
                .ctx
                .convox(move |c| c.build_digest(&r, &b))
                .await
                .map_err(convox_failure)?;
            if let (Some(want), Some(got)) = (&digest, &imported_digest) {
                if want != got {
                    return Err(RackFailure::Error(format!(
                        "{rack}: the imported build {imported} has image {got}, not the exported {want}"
                    )));
                }
            }
            emit_or_fail(
                &live,
                Event::Shipped {
                    rack,
                    build: imported,
                    release,
                    digest: imported_digest.or(digest),
                },
            )?;
            Ok::<(), RackFailure>(())
        });
    }
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined.unwrap_or_else(|e| Err(RackFailure::Error(e.to_string()))) {
            result = Err(e);
        }
    }
    result
}

/// Name of the rendered manifest inside the build context (passed as `convox build -m`); a name
/// of its own so that an operator's `convox.yml` there is never overwritten.
pub const STAGED_MANIFEST: &str = ".acme-rollout.convox.yml";

/// The build context handed to `convox build`: the app's source with the manifest rendered
/// into it. The source tree is used in place (convox honours its `.dockerignore`); only the
/// rendered manifest is written, under a name of its own, and removed afterwards.
pub struct StagedContext {
    pub dir: PathBuf,
    manifest: PathBuf,
}

impl Drop for StagedContext {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.manifest);
    }
}

pub fn stage_build_context(cfg: &Config) -> Result<StagedContext> {
    let dir = cfg.app.source.clone();
    if !dir.is_dir() {
        return Err(anyhow!(
            "the build context {} (racks.toml [app] source) is not a directory",
            dir.display()
        ));
    }
    let template = crate::manifest::render(cfg)?;
    let manifest = dir.join(STAGED_MANIFEST);
    std::fs::write(&manifest, template)
        .with_context(|| format!("cannot write {}", manifest.display()))?;
    Ok(StagedContext { dir, manifest })
}

fn emit_or_fail(live: &Live, event: Event) -> Result<(), RackFailure> {
    live.emit(event)
        .map_err(|e| RackFailure::Error(format!("journal: {e:#}")))
}

fn convox_failure(e: ConvoxError) -> RackFailure {
    match e {
        ConvoxError::Timeout { .. } => RackFailure::TimedOut(e.to_string()),
        other => RackFailure::Error(match other.hint() {
            Some(h) => format!("{other} ({h})"),
            None => other.to_string(),
        }),
    }
}

async fn promote_and_bake(
    live: &Arc<Live>,
    rack: &str,
    bake_override: Option<Duration>,
    stop: watch::Receiver<bool>,
) -> Result<(), RackFailure> {
    let ctx = &live.ctx;
    let state = live.snapshot();
    let run = &state.racks[rack];
    let target = run
        .target_release
        .clone()
        .ok_or_else(|| RackFailure::Error(format!("{rack}: nothing was shipped to it")))?;
    let promote_started = Instant::now();
    let promoted_at = std::time::SystemTime::now();
    if matches!(run.phase, Phase::Shipped | Phase::Pending) {
        emit_or_fail(
            live,
            Event::Promoting {
                rack: rack.to_string(),
                release: target.clone(),
            },
        )?;
        let mut attempt = 0;
        loop {
            let (r, t) = (rack.to_string(), target.clone());
            match ctx.convox(move |c| c.promote(&r, &t)).await {
                Ok(_) => break,
                Err(ConvoxError::Rollback { .. }) => {
                    let message = format!(
                        "{rack} did not become ready on {target} and the rack reverted it (ERROR: rollback)"
                    );
                    emit_or_fail(
                        live,
                        Event::PromoteFailed {
                            rack: rack.to_string(),
                            release: target.clone(),
                            reverted: true,
                            message: message.clone(),
                        },
                    )?;
                    return Err(RackFailure::Gate(message));
                }
                Err(e) => {
                    // The call may have failed on the way back; trust what the rack runs.
                    let r = rack.to_string();
                    let now = ctx.convox(move |c| c.app_info(&r)).await;
                    if now
                        .as_ref()
                        .is_ok_and(|i| i.release == target && i.status == "running")
                    {
                        break;
                    }
                    if e.is_transient() && attempt == 0 {
                        attempt += 1;
                        continue;
                    }
                    emit_or_fail(
                        live,
                        Event::PromoteFailed {
                            rack: rack.to_string(),
                            release: target.clone(),
                            reverted: false,
                            message: e.to_string(),
                        },
                    )?;
                    return Err(convox_failure(e));
                }
            }
        }
        emit_or_fail(
            live,
            Event::Promoted {
                rack: rack.to_string(),
                release: target.clone(),
            },
        )?;
    }

    let mut bake = ctx.rack(rack).bake.clone();
    if let Some(d) = bake_override {
        bake.duration = d;
    }
    emit_or_fail(
        live,
        Event::BakeStarted {
            rack: rack.to_string(),
            secs: bake.duration.as_secs(),
        },
    )?;
    let domain = if bake.health.is_some() {
        let r = rack.to_string();
        let services = ctx
            .convox(move |c| c.services(&r))
            .await
            .map_err(convox_failure)?;
        let service = &ctx.cfg.app.service;
        services
            .into_iter()
            .find(|s| s.name == *service)
            .map(|s| s.domain)
            .filter(|d| !d.is_empty())
            .ok_or_else(|| {
                RackFailure::Error(format!(
                    "{rack}: `convox services` lists no domain for service `{service}` (racks.toml [app] service)"
                ))
            })?
    } else {
        String::new()
    };
    // Progress goes to the screen only; what a gate measured is journaled too (best effort: a
    // journal that cannot be written fails the run at the next step that must be recorded).
    let journaled = live.clone();
    let emit = move |e: Event| {
        let _ = journaled.emit(e);
    };
    let aws = if bake.metrics.is_empty() {
        None
    } else {
        Some(ctx.aws().await)
    };
    let target = gates::BakeTarget {
        rack,
        region: &ctx.rack(rack).region,
        domain: &domain,
        convox: &ctx.convox,
        http: &ctx.http,
        aws,
        since_promote: promote_started,
        promoted_at,
    };
    let verdict = gates::bake(&target, &bake, &emit, stop).await;
    match verdict {
        BakeVerdict::Passed { samples } => {
            emit_or_fail(
                live,
                Event::BakePassed {
                    rack: rack.to_string(),
                    samples,
                },
            )?;
            Ok(())
        }
        BakeVerdict::Failed { gate, evidence } => {
            emit_or_fail(
                live,
                Event::GateFailed {
                    rack: rack.to_string(),
                    gate: gate.clone(),
                    evidence: evidence.clone(),
                },
            )?;
            Err(RackFailure::Gate(format!(
                "{rack}: {gate} gate failed: {}",
                evidence.join("; ")
            )))
        }
        BakeVerdict::Stopped => Err(RackFailure::Error(format!(
            "{rack}: bake stopped because another rack failed"
        ))),
    }
}

/// Puts racks back: the racks of the failing wave, then (if `include_baked`) the racks that
/// finished earlier waves, latest first. Racks never promoted are left alone. Returns whether
/// every rack that needed it is back on its previous release.
async fn roll_back_racks(live: &Arc<Live>, include_baked: bool) -> bool {
    let state = live.snapshot();
    let ctx = &live.ctx;
    let mut order = state.rack_order();
    order.reverse();
    let mut any_failed = false;
    for rack in order {
        let run = &state.racks[&rack];
        let needs = match run.phase {
            Phase::Promoted | Phase::Promoting | Phase::RollingBack | Phase::RollbackFailed => true,
            Phase::Baked => include_baked,
            Phase::Reverted => false,
            Phase::Pending | Phase::Shipped | Phase::RolledBack => false,
        };
        // Whatever the journal says, ask the rack: it may have moved since.
        let r = rack.clone();
        let actual = ctx.convox(move |c| c.app_info(&r)).await;
        let on_previous = match &actual {
            Ok(info) => {
                if info.release == run.start.previous_release {
                    true
                } else {
                    let (r, rel) = (rack.clone(), info.release.clone());
                    ctx.convox(move |c| c.release_build(&r, &rel))
                        .await
                        .is_ok_and(|b| b == run.start.previous_build)
                }
            }
            Err(_) => false,
        };
        if on_previous || !needs {
            continue;
        }
        let to = run.start.previous_release.clone();
        if live
            .emit(Event::RollingBack {
                rack: rack.clone(),
                to: to.clone(),
            })
            .is_err()
        {
            any_failed = true;
            continue;
        }
        let (r, t) = (rack.clone(), to.clone());
        match ctx.convox(move |c| c.rollback(&r, &t)).await {
            Ok(release) => {
                let _ = live.emit(Event::RolledBack {
                    rack: rack.clone(),
                    to,
                    release,
                });
            }
            Err(e) => {
                any_failed = true;
                let _ = live.emit(Event::RollbackFailed {
                    rack: rack.clone(),
                    message: e.to_string(),
                });
            }
        }
    }
    !any_failed
}

/// Records the end, releases the lock, and reads where every rack stands now.
async fn finish(live: &Arc<Live>, outcome: Outcome, lock: Lock) -> Result<Summary> {
    live.emit(Event::RunFinished {
        run: live.journal.run().to_string(),
        outcome,
    })?;
    lock.release()?;
    Ok(summarize(&live.ctx, &live.snapshot(), outcome).await)
}

/// A summary of a run: the journal's view of each rack, checked against what the rack runs.
pub async fn summarize(ctx: &Ctx, state: &RunState, outcome: Outcome) -> Summary {
    let mut racks = Vec::new();
    let mut errors = Vec::new();
    for name in state.rack_order() {
        let run = &state.racks[&name];
        let r = name.clone();
        let actual = ctx.convox(move |c| c.app_info(&r)).await;
        let (release, build) = match actual {
            Ok(info) => {
                let (r, rel) = (name.clone(), info.release.clone());
                let build = ctx.convox(move |c| c.release_build(&r, &rel)).await.ok();
                (Some(info.release), build)
            }
            Err(_) => (None, None),
        };
        let state_label = match run.phase {
            Phase::Pending | Phase::Shipped => {
                "untouched (still on its previous release)".to_string()
            }
            p => p.label().to_string(),
        };
        if let Some(f) = &run.failure {
            errors.push(format!("{name}: {f}"));
        }
        racks.push(RackSummary {
            rack: name.clone(),
            region: run.start.region.clone(),
            release,
            build,
            digest: run.digest.clone(),
            state: state_label,
            detail: run.failure.clone(),
        });
    }
    let error = match outcome {
        Outcome::Done => None,
        _ if !errors.is_empty() => Some(errors.join("\n")),
        o => Some(format!("the run ended: {}", o.name())),
    };
    Summary {
        run: Some(state.run.clone()),
        outcome,
        racks,
        error,
        hint: match outcome {
            Outcome::Error | Outcome::TimedOut => Some(format!(
                "resume with `acme-rollout deploy --resume {run}`, or put every rack back with `acme-rollout rollback --run {run}`",
                run = state.run
            )),
            Outcome::RollbackFailed => Some(format!(
                "a human must look: see each rack above, then `acme-rollout rollback --run {}` to retry",
                state.run
            )),
            _ => None,
        },
    }
}

/// The most recent run that touched `rack`, and its state.
pub fn latest_run_for(store: &super::store::Store, rack: &str) -> Result<Option<RunState>> {
    for run in journal::list_runs(store)?.into_iter().rev() {
        let Ok(records) = journal::read_run(store, &run) else {
            continue;
        };
        if let Ok(state) = RunState::replay(&records) {
            if state.kind == RunKind::Deploy && state.racks.contains_key(rack) {
                return Ok(Some(state));
            }
        }
    }
    Ok(None)
}

/// Racks in scope (for `plan`), by wave.
pub fn plan_waves(cfg: &Config, only: &[String]) -> Vec<(String, Vec<String>)> {
    scoped_waves(cfg, only)
}

/// `acme-rollout rollback RACK|--all [--to R]`: each rack back to the given release, in the
/// order given (reverse wave order for `--all`), journaled as a run of its own.
pub async fn rollback_racks(
    ctx: &Ctx,
    targets: Vec<(String, String)>,
    reason: Option<String>,
) -> Result<Summary> {
    let names: Vec<String> = targets.iter().map(|(r, _)| r.clone()).collect();
    let (live, lock) = begin(
        ctx,
        RunSpec {
            kind: RunKind::Rollback,
            waves: vec![names],
            reason,
            bake: None,
            rollback_promoted: false,
        },
    )
    .await?;
    let mut ok = true;
    for (rack, to) in targets {
        live.emit(Event::RollingBack {
            rack: rack.clone(),
            to: to.clone(),
        })?;
        let (r, t) = (rack.clone(), to.clone());
        match ctx.convox(move |c| c.rollback(&r, &t)).await {
            Ok(release) => live.emit(Event::RolledBack { rack, to, release })?,
            Err(e) => {
                ok = false;
                live.emit(Event::RollbackFailed {
                    rack,
                    message: e.to_string(),
                })?;
            }
        }
    }
    let outcome = if ok {
        Outcome::Done
    } else {
        Outcome::RollbackFailed
    };
    finish(&live, outcome, lock).await
}

/// Marks the newest unfinished run as interrupted (Ctrl-C, SIGTERM) and summarises it.
pub async fn interrupted(ctx: &Ctx) -> Result<Summary> {
    let dir = &ctx.store;
    for run in journal::list_runs(dir)?.into_iter().rev() {
        let Ok(state) = journal::read_run(dir, &run).and_then(|r| RunState::replay(&r)) else {
            continue;
        };
        if state.finished.is_none() {
            let j = Journal::create(dir, &run)?;
            let event = Event::Interrupted { run: run.clone() };
            j.append(&event)?;
            ctx.reporter.event(&event);
            let mut summary = summarize(ctx, &state, Outcome::Error).await;
            summary.error = Some(format!(
                "run {run} was interrupted; every rack is on the release shown above"
            ));
            return Ok(summary);
        }
    }
    Ok(Summary::failed(
        Outcome::Error,
        "interrupted before a run started; nothing was changed",
        None,
    ))
}
