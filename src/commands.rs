//! One function per subcommand: resolve what the user named, call the engine, render.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Result;
use serde_json::json;

use crate::cli::{DeployArgs, LockCommand, PlanArgs, RollbackArgs};
use crate::config::Config;
use crate::outcome::{Failure, Outcome};
use crate::report::Printer;
use crate::rollout::engine::{self, Ctx, DeployOptions};
use crate::rollout::gates::service_url;
use crate::rollout::journal::{self, RunState};
use crate::rollout::lock;
use crate::rollout::Summary;

/// Everything a command gets from the command line and environment, resolved.
pub struct Settings {
    pub printer: Printer,
    pub yes: bool,
    pub reason: Option<String>,
    pub owner: String,
}

impl Settings {
    pub fn owner_default() -> String {
        std::env::var(crate::env::ACME_OWNER).unwrap_or_else(|_| {
            let user = std::env::var("USER").unwrap_or_else(|_| "someone".into());
            format!("{user}@{}", lock::hostname())
        })
    }
}

pub fn make_ctx(cfg: Config, settings: &Settings) -> Result<Ctx> {
    let bin = std::env::var_os(crate::env::ACME_CONVOX)
        .map(std::path::PathBuf::from)
        .or_else(|| cfg.convox.bin.clone())
        .unwrap_or_else(|| "convox".into());
    let convox = crate::convox::Convox::new(
        bin,
        &cfg.app.name,
        cfg.convox.call_timeout,
        cfg.convox.deploy_timeout,
    );
    let aws = Arc::new(tokio::sync::OnceCell::new());
    let http = reqwest::Client::builder()
        .user_agent(concat!("acme-rollout/", env!("CARGO_PKG_VERSION")))
        .build()?;
    Ok(Ctx {
        cfg: Arc::new(cfg.clone()),
        convox,
        reporter: settings.printer.reporter(),
        http,
        owner: settings.owner.clone(),
        store: match &cfg.state.s3 {
            Some(s3) => crate::rollout::store::Store::S3 {
                aws: aws.clone(),
                bucket: acme_aws::s3::BucketRef::new(&s3.region, &s3.bucket),
                prefix: s3.prefix.clone(),
            },
            None => crate::rollout::store::Store::Local(cfg.state.dir.clone()),
        },
        aws,
    })
}

fn resolve_racks(cfg: &Config, queries: &[String]) -> Result<Vec<String>> {
    queries
        .iter()
        .map(|q| {
            cfg.find_rack(q).map(|r| r.name.clone()).map_err(|e| {
                Failure::new(Outcome::Refused, e.to_string())
                    .with_hint(
                        "name a rack by its name, AWS region, alias, or a unique part of its name",
                    )
                    .into()
            })
        })
        .collect()
}

fn confirm(settings: &Settings, question: &str) -> Result<()> {
    if settings.yes || !std::io::stdin().is_terminal() || settings.printer.is_json() {
        return Ok(());
    }
    #[allow(clippy::print_stderr)]
    {
        eprint!("{question} [y/N] ");
    }
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Failure::new(Outcome::Refused, "not confirmed; nothing was changed").into())
    }
}

pub async fn deploy(ctx: &Ctx, settings: &Settings, args: DeployArgs) -> Result<Summary> {
    if let Some(run) = &args.resume {
        return engine::resume(ctx, run).await;
    }
    let only = resolve_racks(&ctx.cfg, &args.only)?;
    if args.dry_run {
        return plan(ctx, settings, PlanArgs { only: args.only }).await;
    }
    let waves = engine::plan_waves(&ctx.cfg, &only);
    let listing = waves
        .iter()
        .map(|(_, r)| r.join(" + "))
        .collect::<Vec<_>>()
        .join(" → ");
    let scope: Vec<String> = waves.iter().flat_map(|(_, r)| r.clone()).collect();
    let drained: Vec<String> = crate::drain::drained(&ctx.cfg.state.dir)?
        .into_iter()
        .map(|d| d.rack)
        .filter(|r| scope.contains(r))
        .collect();
    if !drained.is_empty() && !args.allow_drained {
        return Err(Failure::new(
            Outcome::Refused,
            format!("{} drained; nothing was changed", drained.join(", ") + if drained.len() == 1 { " is" } else { " are" }),
        )
        .with_hint("restore it first (`acme-rollout restore REGION`), deploy elsewhere with --only, or pass --allow-drained")
        .into());
    }
    let pins = crate::models::replication_gate(ctx, &scope).await?;
    confirm(settings, &format!("Deploy to {listing}?"))?;
    engine::deploy(
        ctx,
        DeployOptions {
            only,
            bake: args.bake,
            reason: settings.reason.clone(),
            rollback_promoted: ctx.cfg.rollback_promoted && !args.no_rollback_promoted,
            release: args.release,
            pins,
        },
    )
    .await
}

pub async fn build(ctx: &Ctx, settings: &Settings, args: PlanArgs) -> Result<Summary> {
    let only = resolve_racks(&ctx.cfg, &args.only)?;
    engine::build(ctx, &only, settings.reason.clone()).await
}

/// A dry run: what each rack runs now and what a deploy would do to it.
pub async fn plan(ctx: &Ctx, settings: &Settings, args: PlanArgs) -> Result<Summary> {
    let only = resolve_racks(&ctx.cfg, &args.only)?;
    let waves = engine::plan_waves(&ctx.cfg, &only);
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    let mut problems = Vec::new();
    let first = waves.first().and_then(|(_, r)| r.first()).cloned();
    for (wave, racks) in &waves {
        for name in racks {
            let rack = ctx
                .cfg
                .racks
                .iter()
                .find(|r| r.name == *name)
                .expect("planned rack");
            let r = name.clone();
            let info = ctx.convox(move |c| c.app_info(&r)).await;
            let (current, status) = match &info {
                Ok(i) => (i.release.clone(), i.status.clone()),
                Err(e) => {
                    problems.push(format!("{name}: {e}"));
                    ("?".into(), "unreachable".into())
                }
            };
            let action = if Some(name) == first.as_ref() {
                "build here, promote, bake"
            } else {
                "import the same build, promote, bake"
            };
            let gates = [
                rack.bake
                    .health
                    .as_ref()
                    .map(|h| format!("health {}x200 on {}", h.consecutive, h.path)),
                rack.bake
                    .logs
                    .as_ref()
                    .map(|l| format!("logs ≤{} `{}`", l.max_matches, l.filter)),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", ");
            rows.push(vec![
                wave.clone(),
                name.clone(),
                rack.region.clone(),
                current.clone(),
                status.clone(),
                action.into(),
                humantime::format_duration(rack.bake.duration).to_string(),
                gates.clone(),
            ]);
            json_rows.push(json!({
                "wave": wave, "rack": name, "region": rack.region, "release": current,
                "status": status, "action": action, "bake_secs": rack.bake.duration.as_secs(), "gates": gates,
            }));
        }
    }
    settings.printer.table(
        "plan.rack",
        &[
            "WAVE", "RACK", "REGION", "RELEASE", "STATUS", "ACTION", "BAKE", "GATES",
        ],
        &rows,
        &json_rows,
    );
    if problems.is_empty() {
        Ok(Summary::done())
    } else {
        Ok(Summary::failed(
            Outcome::Refused,
            format!("a deploy would be refused:\n{}", problems.join("\n")),
            None,
        ))
    }
}

/// What each rack runs, whether it answers, and what the journal says about it.
pub async fn status(ctx: &Ctx, settings: &Settings) -> Result<Summary> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, rack) in ctx.cfg.racks.iter().enumerate() {
        let ctx = ctx.clone();
        let name = rack.name.clone();
        let health_path = rack
            .bake
            .health
            .as_ref()
            .map_or("/health".to_string(), |h| h.path.clone());
        tasks.spawn(async move { (i, rack_status(&ctx, &name, &health_path).await) });
    }
    let mut found: Vec<Option<serde_json::Value>> = vec![None; ctx.cfg.racks.len()];
    while let Some(j) = tasks.join_next().await {
        let (i, v) = j.expect("status task");
        found[i] = Some(v);
    }
    let mut values: Vec<serde_json::Value> = found.into_iter().flatten().collect();
    let dns = match &ctx.cfg.dns {
        Some(_) => Some(
            crate::drain::dns_states(ctx)
                .await
                .map_err(|e| format!("unknown ({e:#})")),
        ),
        None => None,
    };
    if let Some(dns) = &dns {
        for v in &mut values {
            let rack = v["rack"].as_str().unwrap_or_default().to_string();
            v["dns"] = match dns {
                Ok(states) => json!(states.get(&rack)),
                Err(e) => json!(e),
            };
        }
    }
    // Imported builds get new ids in each rack; the image digest says whether they are the same.
    let identity = |v: &serde_json::Value| {
        v["digest"]
            .as_str()
            .or_else(|| v["build"].as_str())
            .map(str::to_string)
    };
    let identities: Vec<String> = values.iter().filter_map(identity).collect();
    let majority = identities
        .iter()
        .max_by_key(|b| identities.iter().filter(|x| x == b).count())
        .cloned();
    for v in &mut values {
        let drift = majority.is_some() && identity(v) != majority;
        v["drift"] = json!(drift);
    }
    let rows: Vec<Vec<String>> = values
        .iter()
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap_or("-").to_string();
            let mut build = s("build");
            if let Some(d) = v["digest"].as_str() {
                // Enough of the digest to tell images apart at a glance.
                build.push_str(&format!(" {}", &d[..d.len().min(19)]));
            }
            if v["drift"] == true {
                build.push_str(" (drift)");
            }
            let mut row = vec![
                s("rack"),
                s("region"),
                s("release"),
                build,
                s("health"),
                v["processes"]
                    .as_u64()
                    .map_or("-".into(), |n| n.to_string()),
            ];
            if dns.is_some() {
                row.push(s("dns"));
            }
            row.push(v["journal"]["summary"].as_str().unwrap_or("-").to_string());
            row
        })
        .collect();
    let mut headers = vec!["RACK", "REGION", "RELEASE", "BUILD", "HEALTH", "PROCESSES"];
    if dns.is_some() {
        headers.push("DNS");
    }
    headers.push("JOURNAL");
    settings
        .printer
        .table("status.rack", &headers, &rows, &values);
    let lock = lock::status(&ctx.store)?;
    if let Some((holder, stale)) = lock {
        ctx.reporter.event(&crate::rollout::Event::Note {
            message: format!(
                "deploy lock held by {}{}",
                holder.describe(),
                if stale {
                    " (stale: can be taken over)"
                } else {
                    ""
                }
            ),
        });
    }
    Ok(Summary::done())
}

async fn rack_status(ctx: &Ctx, name: &str, health_path: &str) -> serde_json::Value {
    let region = ctx
        .cfg
        .racks
        .iter()
        .find(|r| r.name == name)
        .map(|r| r.region.clone())
        .unwrap_or_default();
    let r = name.to_string();
    let info = ctx.convox(move |c| c.app_info(&r)).await;
    let journal_state = engine::latest_run_for(&ctx.store, name)
        .ok()
        .flatten()
        .map(|s| {
            json!({"summary": journal_line(&s, name), "run": s.run, "owner": s.owner,
                "reason": s.reason, "started": s.started, "phase": s.racks[name].phase})
        });
    let Ok(info) = info else {
        return json!({"rack": name, "region": region, "release": null, "build": null,
            "health": format!("unreachable: {}", info.unwrap_err()), "processes": null, "journal": journal_state});
    };
    let (r, rel) = (name.to_string(), info.release.clone());
    let build = ctx.convox(move |c| c.release_build(&r, &rel)).await.ok();
    let digest = match &build {
        Some(b) => {
            let (r, b) = (name.to_string(), b.clone());
            ctx.convox(move |c| c.build_digest(&r, &b))
                .await
                .ok()
                .flatten()
        }
        None => None,
    };
    let r = name.to_string();
    let processes = ctx.convox(move |c| c.processes(&r)).await.ok();
    let service = ctx.cfg.app.service.clone();
    let running = processes.map(|ps| {
        ps.iter()
            .filter(|p| p.service == service && p.status == "running")
            .count()
    });
    let r = name.to_string();
    let domain = ctx
        .convox(move |c| c.services(&r))
        .await
        .ok()
        .and_then(|s| s.into_iter().find(|s| s.name == service).map(|s| s.domain));
    // The inference server's /health names the model it loaded; other services may not.
    let mut model_sha256 = None;
    let health = match domain {
        Some(d) => {
            let url = service_url(&d, health_path);
            match ctx
                .http
                .get(&url)
                .timeout(std::time::Duration::from_secs(5))
                .send()
                .await
            {
                Ok(r) if r.status().as_u16() == 200 => {
                    if let Ok(body) = r.json::<serde_json::Value>().await {
                        model_sha256 = body["sha256"].as_str().map(str::to_string);
                    }
                    "healthy".to_string()
                }
                Ok(r) => format!("unhealthy ({})", r.status().as_u16()),
                Err(_) => "unreachable".to_string(),
            }
        }
        None => "no domain".to_string(),
    };
    json!({"rack": name, "region": region, "release": info.release, "status": info.status,
        "build": build, "digest": digest, "health": health, "model_sha256": model_sha256,
        "processes": running, "journal": journal_state})
}

fn journal_line(state: &RunState, rack: &str) -> String {
    let r = &state.racks[rack];
    let end = match state.finished {
        Some(o) => o.name().to_string(),
        None if state.interrupted => "interrupted".into(),
        None => "running, or killed".into(),
    };
    format!("{} (run {}: {end})", r.phase.label(), state.run)
}

pub async fn rollback(ctx: &Ctx, settings: &Settings, args: RollbackArgs) -> Result<Summary> {
    if let Some(run) = &args.run {
        confirm(settings, &format!("Put every rack run {run} touched back?"))?;
        return engine::rollback_run(ctx, run).await;
    }
    let racks: Vec<String> = if args.all {
        let mut all: Vec<String> = ctx
            .cfg
            .waves
            .iter()
            .flat_map(|w| w.racks.iter().map(|&i| ctx.cfg.racks[i].name.clone()))
            .collect();
        all.reverse();
        all
    } else {
        resolve_racks(&ctx.cfg, &[args.rack.clone().expect("clap requires RACK")])?
    };
    let mut targets = Vec::new();
    for rack in racks {
        let to = match &args.to {
            Some(to) => to.clone(),
            None => previous_release(ctx, &rack).await?,
        };
        targets.push((rack, to));
    }
    let listing = targets
        .iter()
        .map(|(r, t)| format!("{r} → {t}"))
        .collect::<Vec<_>>()
        .join(", ");
    confirm(settings, &format!("Roll back {listing}?"))?;
    engine::rollback_racks(ctx, targets, settings.reason.clone()).await
}

/// The release a rack ran before: from the journal of the last deploy that touched it, else the
/// newest older release with a different build.
async fn previous_release(ctx: &Ctx, rack: &str) -> Result<String> {
    let r = rack.to_string();
    let info = ctx.convox(move |c| c.app_info(&r)).await?;
    if let Some(state) = engine::latest_run_for(&ctx.store, rack)? {
        let prev = state.racks[rack].start.previous_release.clone();
        if prev != info.release {
            return Ok(prev);
        }
    }
    let r = rack.to_string();
    let releases = ctx.convox(move |c| c.releases(&r, 50)).await?;
    let active = releases.iter().position(|x| x.id == info.release);
    let active_build = active.map(|i| releases[i].build.clone());
    active
        .and_then(|i| {
            releases[i + 1..]
                .iter()
                .find(|x| Some(&x.build) != active_build.as_ref())
        })
        .map(|x| x.id.clone())
        .ok_or_else(|| {
            Failure::new(
                Outcome::Refused,
                format!("{rack}: no earlier release with a different build to go back to"),
            )
            .with_hint("name one with --to RELEASE (see `convox releases -r RACK`)")
            .into()
        })
}

pub async fn lock_command(ctx: &Ctx, settings: &Settings, cmd: LockCommand) -> Result<Summary> {
    let dir = &ctx.store;
    match cmd {
        LockCommand::Status => {
            let rows: Vec<Vec<String>>;
            let json_rows: Vec<serde_json::Value>;
            match lock::status(dir)? {
                Some((h, stale)) => {
                    rows = vec![vec![
                        h.owner.clone(),
                        h.run.clone(),
                        h.host.clone(),
                        h.pid.to_string(),
                        h.acquired.clone(),
                        if stale { "stale".into() } else { "held".into() },
                    ]];
                    json_rows = vec![
                        json!({"owner": h.owner, "run": h.run, "host": h.host, "pid": h.pid, "acquired": h.acquired, "stale": stale}),
                    ];
                }
                None => {
                    rows = vec![];
                    json_rows = vec![json!({"held": false})];
                }
            }
            settings.printer.table(
                "lock",
                &["OWNER", "RUN", "HOST", "PID", "SINCE", "STATE"],
                &rows,
                &json_rows,
            );
            Ok(Summary::done())
        }
        LockCommand::Release { force } => {
            if !force || settings.reason.is_none() {
                return Err(Failure::new(
                    Outcome::Refused,
                    "breaking the lock needs --force and --reason TEXT",
                )
                .with_hint(
                    "check `acme-rollout lock status` first: a live run would lose its guard",
                )
                .into());
            }
            let holder = lock::force_release(dir)?;
            let message = match &holder {
                Some(h) => format!(
                    "lock of {} broken by {}: {}",
                    h.describe(),
                    settings.owner,
                    settings.reason.as_deref().unwrap_or("")
                ),
                None => "no lock was held".to_string(),
            };
            if let Some(h) = holder {
                // The broken run's journal records who broke its lock and why.
                if let Ok(j) = journal::Journal::create(dir, &h.run) {
                    let _ = j.append(&crate::rollout::Event::Note {
                        message: message.clone(),
                    });
                }
            }
            ctx.reporter.event(&crate::rollout::Event::Note { message });
            Ok(Summary::done())
        }
    }
}
