//! `drain REGION` / `restore REGION`: take a region out of the latency set during an incident,
//! and put it back. A drain inverts the rack's Route53 health check (the record stays, so a
//! restore is one flip) after safety checks: enough other regions must stay in rotation and be
//! healthy right now, and they must have the headroom to take the drained region's traffic.
//! Drains ignore the deploy lock but are recorded, and a drained region blocks deploys.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::{DrainCpu, Rack};
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
    /// Mean per-process CPU percent over `[dns.cpu] window`, when configured and reported.
    cpu: Option<f64>,
    /// Why `cpu` is missing although `[dns.cpu]` is configured.
    cpu_missing: Option<String>,
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
        let (cpu, cpu_missing) = match &dns.cpu {
            None => (None, None),
            Some(q) => match cpu_load(ctx, aws, q, rack).await {
                Ok(Some(v)) => (Some(v), None),
                Ok(None) => (None, Some("no CPU data".to_string())),
                Err(e) => (None, Some(format!("CloudWatch: {e}"))),
            },
        };
        out.push(RegionState {
            rack: rack.clone(),
            health_check,
            in_rotation,
            healthy,
            running: scale.as_ref().map_or(0, |s| s.running),
            max: rack.max_scale.or(scale.and_then(|s| s.max)),
            cpu,
            cpu_missing,
        });
    }
    Ok(out)
}

/// The mean of `[dns.cpu]`'s points over its window in the rack's region; `None` without data.
async fn cpu_load(
    ctx: &Ctx,
    aws: &acme_aws::Aws,
    q: &DrainCpu,
    rack: &Rack,
) -> Result<Option<f64>> {
    let fill = |v: &str| {
        v.replace("{rack}", &rack.name)
            .replace("{region}", &rack.region)
            .replace("{service}", &ctx.cfg.app.service)
    };
    let query = acme_aws::cloudwatch::MetricQuery {
        namespace: q.namespace.clone(),
        metric: q.metric.clone(),
        dimensions: q
            .dimensions
            .iter()
            .map(|(k, v)| (k.clone(), fill(v)))
            .collect(),
        stat: q.stat,
        period_secs: u32::try_from(q.period.as_secs().max(1)).unwrap_or(u32::MAX),
    };
    let end = SystemTime::now() + Duration::from_secs(1);
    let series = aws
        .get_metric_data(&rack.region, &[query], end - q.window, end)
        .await?;
    let values: Vec<f64> = series.into_iter().flat_map(|s| s.values).collect();
    Ok((!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64))
}

/// Whether the regions left in rotation can take `me`'s traffic: `Err` says why not, with the
/// numbers; `Ok` says what was counted. Without `[dns.cpu]` the unit is a process: the others'
/// spare processes (scale maximum minus running) must cover `me`'s running ones. With it, the
/// unit is a process at full CPU: `me` carries running × its CPU, and each other region can add
/// up to max × target minus running × its CPU. A region without CPU data counts as running at
/// the target, which is what its autoscaler aims for.
fn headroom(
    cpu: Option<&DrainCpu>,
    me: &RegionState,
    others: &[&RegionState],
) -> Result<String, String> {
    let Some(q) = cpu else {
        let spare: u32 = others
            .iter()
            .map(|s| s.max.unwrap_or(s.running).saturating_sub(s.running))
            .sum();
        let detail = others
            .iter()
            .map(|s| {
                format!(
                    "{} {}/{}",
                    s.rack.name,
                    s.running,
                    s.max.map_or("?".into(), |m| m.to_string())
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        return if spare < me.running {
            Err(format!(
                "{} runs {} process(es), but the regions left in rotation can add only {} (max scale minus running: {})",
                me.rack.name, me.running, spare, detail
            ))
        } else {
            Ok(format!(
                "headroom: {} spare process(es) for {}'s {} ({detail})",
                spare, me.rack.name, me.running
            ))
        };
    };
    let pct = |s: &RegionState| s.cpu.unwrap_or(q.target);
    let describe = |s: &RegionState| match &s.cpu_missing {
        None => format!("{:.0}% CPU", pct(s)),
        Some(why) => format!("{why}, taken as {:.0}%", q.target),
    };
    let load = f64::from(me.running) * pct(me) / 100.0;
    let mut spare = 0.0;
    let mut detail = Vec::new();
    for s in others {
        let max = s.max.unwrap_or(s.running);
        let room =
            (f64::from(max) * q.target / 100.0 - f64::from(s.running) * pct(s) / 100.0).max(0.0);
        spare += room;
        detail.push(format!(
            "{} {}/{} processes at {} can add {room:.2}",
            s.rack.name,
            s.running,
            max,
            describe(s)
        ));
    }
    let what = format!(
        "{} carries {load:.2} CPU-process(es) ({} at {}); at {:.0}% CPU the regions left can add {spare:.2} ({})",
        me.rack.name,
        me.running,
        describe(me),
        q.target,
        detail.join("; ")
    );
    if spare + 1e-9 < load {
        Err(what)
    } else {
        Ok(format!("headroom: {what}"))
    }
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
    if me.in_rotation {
        match headroom(dns.cpu.as_ref(), me, &others) {
            Ok(counted) => ctx.reporter.event(&Event::Note { message: counted }),
            Err(short) => refusals.push(short),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn region(name: &str, running: u32, max: u32, cpu: Option<f64>) -> RegionState {
        RegionState {
            rack: Rack {
                name: name.into(),
                region: "r".into(),
                aliases: Vec::new(),
                bake: crate::config::Bake::default(),
                bucket: None,
                domain: None,
                max_scale: Some(max),
            },
            health_check: Some("hc".into()),
            in_rotation: true,
            healthy: true,
            running,
            max: Some(max),
            cpu,
            cpu_missing: cpu.is_none().then(|| "no CPU data".to_string()),
        }
    }

    fn cpu(target: f64) -> DrainCpu {
        DrainCpu {
            namespace: "ContainerInsights".into(),
            metric: "pod_cpu_utilization".into(),
            dimensions: Vec::new(),
            stat: acme_aws::cloudwatch::Stat::Average,
            period: Duration::from_secs(60),
            window: Duration::from_secs(600),
            target,
        }
    }

    #[test]
    fn process_headroom_counts_spare_processes() {
        let me = region("apac-prod", 2, 6, None);
        let (us, eu) = (region("us-prod", 2, 3, None), region("eu-prod", 2, 3, None));
        assert!(headroom(None, &me, &[&us, &eu]).is_ok());
        let full = region("eu-prod", 3, 3, None);
        let short = headroom(None, &me, &[&us, &full]).unwrap_err();
        assert!(short.contains("can add only 1"), "{short}");
    }

    #[test]
    fn cpu_headroom_refuses_when_busy_regions_cannot_absorb_the_load() {
        // Spare processes exist (2 of 2+2), but both regions already run hot.
        let me = region("apac-prod", 1, 3, Some(100.0));
        let (us, eu) = (
            region("us-prod", 1, 2, Some(95.0)),
            region("eu-prod", 1, 2, Some(95.0)),
        );
        assert!(headroom(None, &me, &[&us, &eu]).is_ok());
        let short = headroom(Some(&cpu(70.0)), &me, &[&us, &eu]).unwrap_err();
        assert!(short.contains("carries 1.00"), "{short}");
        assert!(short.contains("can add 0.90"), "{short}");
        assert!(
            short.contains("us-prod 1/2 processes at 95% CPU can add 0.45"),
            "{short}"
        );
        // A higher target leaves room: 2 × 0.9 − 0.95 = 0.85 each.
        let ok = headroom(Some(&cpu(90.0)), &me, &[&us, &eu]).unwrap();
        assert!(ok.contains("can add 1.70"), "{ok}");
    }

    #[test]
    fn a_region_without_cpu_data_counts_at_the_target() {
        let me = region("apac-prod", 2, 3, None);
        let us = region("us-prod", 2, 4, None);
        // apac: 2 × 0.7 = 1.4; us: 4 × 0.7 − 2 × 0.7 = 1.4.
        let ok = headroom(Some(&cpu(70.0)), &me, &[&us]).unwrap();
        assert!(ok.contains("no CPU data, taken as 70%"), "{ok}");
        assert!(
            ok.contains("carries 1.40") && ok.contains("can add 1.40"),
            "{ok}"
        );
    }
}
