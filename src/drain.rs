//! `drain REGION` / `restore REGION`: take a region out of the latency set during an incident,
//! and put it back. A drain inverts the rack's Route53 health check (the record stays, so a
//! restore is one flip) after safety checks: enough other regions must stay in rotation and be
//! healthy right now, and they must have the headroom to take the drained region's traffic.
//! Drains ignore the deploy lock but are recorded, and a drained region blocks deploys.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::Rack;
use crate::dns::{dns_config, rack_domain};
use crate::outcome::{Failure, Outcome};
use crate::rollout::engine::Ctx;
use crate::rollout::gates::service_url;
use crate::rollout::journal::now_rfc3339;
use crate::rollout::{Event, Summary};

/// A drained rack, as recorded in the state directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrainRecord {
    pub rack: String,
    pub owner: String,
    pub at: String,
    pub reason: Option<String>,
    pub forced: bool,
    /// Process count before `--scale-to-zero`, restored by `restore`.
    pub saved_count: Option<u32>,
}

fn drains_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("drains")
}

/// Racks drained now (by this tool), by name.
pub fn drained(state_dir: &Path) -> Result<Vec<DrainRecord>> {
    let dir = drains_dir(state_dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path)?;
            out.push(
                serde_json::from_str(&text)
                    .with_context(|| format!("{} is not a drain record", path.display()))?,
            );
        }
    }
    Ok(out)
}

fn record(state_dir: &Path, rec: Option<&DrainRecord>, rack: &str, line: &str) -> Result<()> {
    let dir = drains_dir(state_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("{rack}.json"));
    match rec {
        Some(r) => std::fs::write(&path, serde_json::to_string_pretty(r)?)?,
        None => {
            let _ = std::fs::remove_file(&path);
        }
    }
    use std::io::Write;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log.jsonl"))?;
    writeln!(log, "{line}")?;
    log.sync_data()?;
    Ok(())
}

/// One region as the drain checks see it right now.
#[derive(Debug, Clone)]
struct RegionState {
    rack: Rack,
    health_check: Option<String>,
    in_rotation: bool,
    healthy: bool,
    running: u32,
    max: Option<u32>,
}

async fn region_states(ctx: &Ctx) -> Result<Vec<RegionState>> {
    let dns = dns_config(ctx)?;
    let aws = ctx.aws().await;
    let zone = aws.find_zone(&dns.zone).await?;
    let records = aws.latency_records(&zone, &dns.name).await?;
    let mut out = Vec::new();
    for rack in &ctx.cfg.racks {
        let health_check = records
            .iter()
            .find(|r| r.set_identifier == rack.name)
            .and_then(|r| r.health_check_id.clone());
        let in_rotation = match &health_check {
            Some(id) => !aws.get_health_check(id).await?.inverted,
            None => false,
        };
        let healthy = match rack_domain(ctx, rack).await {
            Ok(domain) => {
                let path = dns.health_path.clone();
                let url = service_url(&domain, &path);
                ctx.http
                    .get(&url)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().as_u16() == 200)
            }
            Err(_) => false,
        };
        let (name, service) = (rack.name.clone(), ctx.cfg.app.service.clone());
        let scale = ctx.convox(move |c| c.scale(&name, &service)).await.ok();
        out.push(RegionState {
            rack: rack.clone(),
            health_check,
            in_rotation,
            healthy,
            running: scale.as_ref().map_or(0, |s| s.running),
            max: rack.max_scale.or(scale.and_then(|s| s.max)),
        });
    }
    Ok(out)
}

/// Each rack's place in the latency set: in rotation, drained, health check failing, or absent.
pub async fn dns_states(ctx: &Ctx) -> Result<std::collections::BTreeMap<String, String>> {
    let dns = dns_config(ctx)?;
    let aws = ctx.aws().await;
    let zone = aws.find_zone(&dns.zone).await?;
    let records = aws.latency_records(&zone, &dns.name).await?;
    let mut out = std::collections::BTreeMap::new();
    for rack in &ctx.cfg.racks {
        let check = records
            .iter()
            .find(|r| r.set_identifier == rack.name)
            .and_then(|r| r.health_check_id.clone());
        let state = match check {
            None => "not in DNS".to_string(),
            Some(id) => {
                if aws.get_health_check(&id).await?.inverted {
                    "drained".to_string()
                } else {
                    let status = aws.health_check_status(&id).await?;
                    if status.unhealthy > status.healthy {
                        "health check failing".to_string()
                    } else {
                        "in rotation".to_string()
                    }
                }
            }
        };
        out.insert(rack.name.clone(), state);
    }
    Ok(out)
}

/// Records the drain state in the zone as a TXT record next to the public name, so the change
/// has an id to wait on and other machines can see which regions are drained.
async fn mark_in_zone(ctx: &Ctx, drained: &[String]) -> Result<Duration> {
    use aws_sdk_route53::types::{
        Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
    };
    let dns = dns_config(ctx)?;
    let aws = ctx.aws().await;
    let zone = aws.find_zone(&dns.zone).await?;
    let mut names = drained.to_vec();
    names.sort();
    let value = format!("\"drained={}\"", names.join(","));
    let set = ResourceRecordSet::builder()
        .name(format!("_acme-rollout.{}.", dns.name))
        .r#type(RrType::Txt)
        .ttl(i64::from(dns.ttl))
        .resource_records(ResourceRecord::builder().value(value).build()?)
        .build()?;
    let out = aws
        .route53_client()
        .change_resource_record_sets()
        .hosted_zone_id(&zone.id)
        .change_batch(
            ChangeBatch::builder()
                .changes(
                    Change::builder()
                        .action(ChangeAction::Upsert)
                        .resource_record_set(set)
                        .build()?,
                )
                .comment("acme-rollout drain state")
                .build()?,
        )
        .send()
        .await
        .with_context(|| format!("cannot record the drain state in zone {}", dns.zone))?;
    let change = out
        .change_info()
        .map(|c| c.id().to_string())
        .unwrap_or_default();
    Ok(aws.wait_for_change(&change).await?)
}

pub struct DrainArgs {
    pub region: String,
    pub scale_to_zero: bool,
    pub force: bool,
}

pub async fn drain(ctx: &Ctx, reason: Option<String>, args: DrainArgs) -> Result<Summary> {
    let dns = dns_config(ctx)?.clone();
    let target = ctx
        .cfg
        .find_rack(&args.region)
        .map_err(|e| Failure::new(Outcome::Refused, e.to_string()))?
        .clone();
    let states = region_states(ctx).await?;
    let me = states
        .iter()
        .find(|s| s.rack.name == target.name)
        .expect("every rack has a state");
    if me.health_check.is_none() {
        return Err(Failure::new(
            Outcome::Refused,
            format!(
                "{} has no latency record with a health check under {}",
                target.name, dns.name
            ),
        )
        .with_hint("run `acme-rollout dns apply` first")
        .into());
    }
    let others: Vec<&RegionState> = states
        .iter()
        .filter(|s| s.rack.name != target.name && s.in_rotation && s.healthy)
        .collect();
    let mut refusals = Vec::new();
    if me.in_rotation && others.len() < dns.min_in_rotation {
        refusals.push(format!(
            "only {} other region(s) would stay in rotation and healthy ({}), and at least {} must",
            others.len(),
            others
                .iter()
                .map(|s| s.rack.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            dns.min_in_rotation
        ));
    }
    let spare: u32 = others
        .iter()
        .map(|s| s.max.unwrap_or(s.running).saturating_sub(s.running))
        .sum();
    if me.in_rotation && spare < me.running {
        refusals.push(format!(
            "{} runs {} process(es), but the regions left in rotation can add only {} (max scale minus running: {})",
            target.name,
            me.running,
            spare,
            others
                .iter()
                .map(|s| format!("{} {}/{}", s.rack.name, s.running, s.max.map_or("?".into(), |m| m.to_string())))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !refusals.is_empty() {
        if !args.force {
            return Err(Failure::new(
                Outcome::DrainRefused,
                format!(
                    "drain of {} refused, nothing was changed: {}",
                    target.name,
                    refusals.join("; ")
                ),
            )
            .with_hint("if you must, repeat with --force --reason TEXT (recorded)")
            .into());
        }
        if reason.is_none() {
            return Err(Failure::new(Outcome::Refused, "--force needs --reason TEXT").into());
        }
        ctx.reporter.event(&Event::Note {
            message: format!("forcing the drain despite: {}", refusals.join("; ")),
        });
    }

    let aws = ctx.aws().await;
    let check = me.health_check.clone().expect("checked above");
    if me.in_rotation {
        aws.set_inverted(&check, true).await?;
    }
    let mut drained_now: Vec<String> = states
        .iter()
        .filter(|s| !s.in_rotation && s.health_check.is_some())
        .map(|s| s.rack.name.clone())
        .collect();
    if !drained_now.contains(&target.name) {
        drained_now.push(target.name.clone());
    }
    let waited = mark_in_zone(ctx, &drained_now).await?;
    ctx.reporter.event(&Event::Note {
        message: format!(
            "{}: health check {check} inverted; change in sync after {:.1}s; waiting {}s (record TTL) for resolvers",
            target.name,
            waited.as_secs_f64(),
            dns.ttl
        ),
    });
    tokio::time::sleep(Duration::from_secs(u64::from(dns.ttl))).await;

    let mut saved_count = drained(&ctx.cfg.state.dir)?
        .into_iter()
        .find(|d| d.rack == target.name)
        .and_then(|d| d.saved_count);
    if args.scale_to_zero && me.running > 0 {
        saved_count = Some(me.running);
        let (r, s) = (target.name.clone(), ctx.cfg.app.service.clone());
        ctx.convox(move |c| c.set_count(&r, &s, 0)).await?;
        ctx.reporter.event(&Event::Note {
            message: format!("{}: scaled to 0 (was {})", target.name, me.running),
        });
    }
    let rec = DrainRecord {
        rack: target.name.clone(),
        owner: ctx.owner.clone(),
        at: now_rfc3339(),
        reason,
        forced: !refusals.is_empty(),
        saved_count,
    };
    let line =
        serde_json::json!({"event": "drained", "record": rec, "refusals_overridden": refusals})
            .to_string();
    record(&ctx.cfg.state.dir, Some(&rec), &target.name, &line)?;
    ctx.reporter.event(&Event::Note {
        message: format!(
            "{} is drained: out of the latency set, record kept",
            target.name
        ),
    });
    Ok(Summary::done())
}

pub async fn restore(ctx: &Ctx, reason: Option<String>, region: &str) -> Result<Summary> {
    let dns = dns_config(ctx)?.clone();
    let target = ctx
        .cfg
        .find_rack(region)
        .map_err(|e| Failure::new(Outcome::Refused, e.to_string()))?
        .clone();
    let saved = drained(&ctx.cfg.state.dir)?
        .into_iter()
        .find(|d| d.rack == target.name);
    if let Some(count) = saved.as_ref().and_then(|d| d.saved_count) {
        let (r, s) = (target.name.clone(), ctx.cfg.app.service.clone());
        ctx.convox(move |c| c.set_count(&r, &s, count)).await?;
        ctx.reporter.event(&Event::Note {
            message: format!("{}: scaled back to {count}", target.name),
        });
    }
    // Back in rotation only once it answers: N healthy answers in a row, within a deadline.
    let domain = rack_domain(ctx, &target).await?;
    let url = service_url(&domain, &dns.health_path);
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut streak = 0;
    while streak < 3 {
        if Instant::now() > deadline {
            return Err(Failure::new(
                Outcome::TimedOut,
                format!(
                    "{} did not answer {url} with 200 within 5 minutes; it stays drained",
                    target.name
                ),
            )
            .into());
        }
        let ok = ctx
            .http
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == 200);
        streak = if ok { streak + 1 } else { 0 };
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let states = region_states(ctx).await?;
    let me = states
        .iter()
        .find(|s| s.rack.name == target.name)
        .expect("every rack has a state");
    let check = me.health_check.clone().ok_or_else(|| {
        Failure::new(
            Outcome::Refused,
            format!(
                "{} has no latency record; run `acme-rollout dns apply`",
                target.name
            ),
        )
    })?;
    ctx.aws().await.set_inverted(&check, false).await?;
    let still: Vec<String> = states
        .iter()
        .filter(|s| !s.in_rotation && s.health_check.is_some() && s.rack.name != target.name)
        .map(|s| s.rack.name.clone())
        .collect();
    let waited = mark_in_zone(ctx, &still).await?;
    let line = serde_json::json!({"event": "restored", "rack": target.name, "owner": ctx.owner, "at": now_rfc3339(), "reason": reason}).to_string();
    record(&ctx.cfg.state.dir, None, &target.name, &line)?;
    ctx.reporter.event(&Event::Note {
        message: format!(
            "{} is back in rotation (health check {check} restored, in sync after {:.1}s)",
            target.name,
            waited.as_secs_f64()
        ),
    });
    Ok(Summary::done())
}
