//! `dns plan|apply`: make Route53 match racks.toml — one latency record per rack for the public
//! name (CNAME to the rack's service domain, set identifier = rack name, region = the rack's AWS
//! region) with an HTTPS health check on `/health` attached to each.

use anyhow::{Context, Result};
use serde_json::json;

use acme_aws::route53::{DesiredLatencyRecord, DnsPlan, HealthCheckSpec, RecordAction};

use crate::config::{Dns, Rack};
use crate::outcome::{Failure, Outcome};
use crate::report::Printer;
use crate::rollout::engine::Ctx;
use crate::rollout::{Event, Summary};

pub fn dns_config(ctx: &Ctx) -> Result<&Dns> {
    ctx.cfg.dns.as_ref().ok_or_else(|| {
        Failure::new(Outcome::Refused, "racks.toml has no [dns] table")
            .with_hint("add [dns] with zone = \"acme.io\" and name = \"inference.acme.io\"")
            .into()
    })
}

/// The host a rack's record points at: racks.toml `domain`, else what `convox services` reports.
pub async fn rack_domain(ctx: &Ctx, rack: &Rack) -> Result<String> {
    if let Some(d) = &rack.domain {
        return Ok(d.clone());
    }
    let name = rack.name.clone();
    let services = ctx.convox(move |c| c.services(&name)).await?;
    services
        .into_iter()
        .find(|s| s.name == ctx.cfg.app.service)
        .map(|s| s.domain)
        .filter(|d| !d.is_empty())
        .with_context(|| {
            format!(
                "rack {}: `convox services` lists no domain for `{}`; set `domain` on the rack in racks.toml",
                rack.name, ctx.cfg.app.service
            )
        })
}

/// The records racks.toml asks for.
pub async fn desired_records(ctx: &Ctx) -> Result<Vec<DesiredLatencyRecord>> {
    let dns = dns_config(ctx)?;
    let mut records = Vec::new();
    for rack in &ctx.cfg.racks {
        let domain = rack_domain(ctx, rack).await?;
        // A local rack's domain carries a port; a health check probes host and port apart.
        let (host, port) = match domain.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_string(), p.parse().ok()),
            _ => (domain.clone(), None),
        };
        records.push(DesiredLatencyRecord {
            name: dns.name.clone(),
            set_identifier: rack.name.clone(),
            region: rack.region.clone(),
            target: host.clone(),
            ttl: dns.ttl,
            health_check: HealthCheckSpec {
                fqdn: host,
                port: port.unwrap_or(dns.health_port),
                path: dns.health_path.clone(),
                https: port.is_none() && dns.health_https,
                failure_threshold: dns.failure_threshold,
                request_interval: dns.request_interval,
            },
        });
    }
    Ok(records)
}

pub async fn plan(ctx: &Ctx) -> Result<DnsPlan> {
    let dns = dns_config(ctx)?;
    let desired = desired_records(ctx).await?;
    Ok(ctx.aws().await.plan(&dns.zone, &desired).await?)
}

fn show(printer: &Printer, plan: &DnsPlan) {
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    for change in &plan.changes {
        let (action, detail) = match &change.action {
            RecordAction::Create => ("create", String::new()),
            RecordAction::Delete => ("delete", String::new()),
            RecordAction::Unchanged => ("unchanged", String::new()),
            RecordAction::Update(diffs) => (
                "update",
                diffs
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        };
        let target = change
            .desired
            .as_ref()
            .map(|d| format!("{} ({})", d.target, d.region))
            .unwrap_or_default();
        rows.push(vec![
            change.name.clone(),
            change.set_identifier.clone(),
            action.to_string(),
            target.clone(),
            detail.clone(),
        ]);
        json_rows.push(
            json!({"name": change.name, "set_identifier": change.set_identifier,
            "action": action, "target": target, "detail": detail}),
        );
    }
    printer.table(
        "dns.change",
        &["NAME", "SET", "ACTION", "TARGET", "DETAIL"],
        &rows,
        &json_rows,
    );
}

pub async fn plan_command(ctx: &Ctx, printer: &Printer) -> Result<Summary> {
    let plan = plan(ctx).await?;
    show(printer, &plan);
    if plan.is_noop() {
        ctx.reporter.event(&Event::Note {
            message: "Route53 already matches racks.toml".into(),
        });
    }
    Ok(Summary::done())
}

pub async fn apply_command(ctx: &Ctx, printer: &Printer) -> Result<Summary> {
    let plan = plan(ctx).await?;
    show(printer, &plan);
    if plan.is_noop() {
        ctx.reporter.event(&Event::Note {
            message: "no change: Route53 already matches racks.toml".into(),
        });
        return Ok(Summary::done());
    }
    let report = ctx.aws().await.apply(&plan).await?;
    ctx.reporter.event(&Event::Note {
        message: format!(
            "applied: {} record(s) upserted, {} deleted, {} health check(s) created, {} deleted; in sync after {:.1}s{}",
            report.records_upserted,
            report.records_deleted,
            report.created_health_checks.len(),
            report.deleted_health_checks.len(),
            report.waited.as_secs_f64(),
            report.change_id.map(|c| format!(" (change {c})")).unwrap_or_default()
        ),
    });
    Ok(Summary::done())
}
