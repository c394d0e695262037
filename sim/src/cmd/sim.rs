//! Stand-in-only commands under `convox sim …`: creating racks, arming and clearing faults,
//! stopping everything (`sim down`), and the hidden daemons (`sim pod`, `sim router`).

use std::collections::BTreeMap;
use std::time::Duration;

use super::Command;
use crate::args::{ArgRule, FlagSpec, Parsed};
use crate::ctx::Ctx;
use crate::error::Result;
use crate::faults::{self, FaultKind};
use crate::pod::{PodSpec, Program};
use crate::procs;
use crate::router::RouterSpec;
use crate::state::RackState;
use crate::table::render_table;
use crate::timefmt;

const POD_FLAGS: &[FlagSpec] = &[
    FlagSpec::value("log", None, "app log file"),
    FlagSpec::value("service", None, "service"),
    FlagSpec::value("pod", None, "pod id"),
    FlagSpec::value("port", None, "port"),
    FlagSpec::value("release", None, "release"),
    FlagSpec::value("error-interval-ms", None, "error line interval"),
    FlagSpec::boolean("error-logs", None, "write ERROR lines"),
    FlagSpec::value("crash-after", None, "exit after seconds"),
    FlagSpec::value("cwd", None, "program working directory"),
];

const ROUTER_FLAGS: &[FlagSpec] = &[
    FlagSpec::value("rack", None, "rack"),
    FlagSpec::value("app", None, "app"),
    FlagSpec::value("service", None, "service"),
    FlagSpec::value("port", None, "port"),
];

pub fn commands() -> Vec<Command> {
    vec![
        Command { words: &["sim", "rack", "create"], usage: "<name> --region <region>", description: "stand-in: create a local rack", flags: const { &[FlagSpec::value("region", None, "the rack's AWS region (default us-east-1)")] }, args: ArgRule::Exactly(1), rack: false, app: false, hidden: false, run: rack_create },
        Command { words: &["sim", "fault", "set"], usage: "<rack> <kind>", description: "stand-in: arm a fault (build-fail never-ready unhealthy error-logs slow-health crash-after transient)", flags: const { &[FlagSpec::value("value", None, "slow-health: delay in ms (2000); crash-after: seconds (2)")] }, args: ArgRule::Exactly(2), rack: false, app: false, hidden: false, run: fault_set },
        Command { words: &["sim", "fault", "clear"], usage: "<rack> [kind]", description: "stand-in: disarm one fault kind or all", flags: &[], args: ArgRule::AtLeast(1), rack: false, app: false, hidden: false, run: fault_clear },
        Command { words: &["sim", "fault", "list"], usage: "", description: "stand-in: list armed faults", flags: &[], args: ArgRule::Exactly(0), rack: false, app: false, hidden: false, run: fault_list },
        Command { words: &["sim", "down"], usage: "", description: "stand-in: stop every pod and router of this CONVOX_SIM_HOME", flags: &[], args: ArgRule::Exactly(0), rack: false, app: false, hidden: false, run: down },
        Command { words: &["sim", "pod"], usage: "", description: "stand-in: pod supervisor", flags: POD_FLAGS, args: ArgRule::Any, rack: false, app: false, hidden: true, run: pod },
        Command { words: &["sim", "light-pod"], usage: "", description: "stand-in: the built-in HTTP pod on $PORT", flags: &[], args: ArgRule::Exactly(0), rack: false, app: false, hidden: true, run: light_pod },
        Command { words: &["sim", "router"], usage: "", description: "stand-in: service router", flags: ROUTER_FLAGS, args: ArgRule::Exactly(0), rack: false, app: false, hidden: true, run: router },
    ]
}

fn rack_create(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    let name = p.positionals[0].clone();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        crate::bail!("invalid rack name: {name:?} (use letters, digits, dashes and underscores)");
    }
    let region = p.value("region").unwrap_or("us-east-1").to_string();
    ctx.out.start(&format!("Creating rack {name}"));
    ctx.home.create_rack(&RackState {
        name,
        region,
        created_ms: timefmt::now_ms(),
        faults: Vec::new(),
        apps: BTreeMap::new(),
    })?;
    ctx.out.ok();
    Ok(())
}

fn rack_arg(ctx: &Ctx, wanted: &str) -> Result<String> {
    ctx.home.match_rack(wanted)
}

fn fault_set(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    let rack = rack_arg(ctx, &p.positionals[0])?;
    let kind = FaultKind::parse(&p.positionals[1])?;
    let value = match p.int("value")? {
        Some(v) if v < 0 => crate::bail!("--value must be >= 0"),
        Some(_) if kind.default_value().is_none() => {
            crate::bail!(
                "fault {} takes no --value (only slow-health and crash-after do)",
                kind.name()
            )
        }
        other => other.map(|v| v as u64),
    };
    ctx.out.start(&format!("Arming {} on {rack}", kind.name()));
    ctx.home.update(&rack, |s| {
        faults::arm(s, kind, value);
        Ok(())
    })?;
    ctx.out.ok();
    Ok(())
}

fn fault_clear(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    if p.positionals.len() > 2 {
        crate::bail!("no more than 2 args expected");
    }
    let rack = rack_arg(ctx, &p.positionals[0])?;
    let kind = p
        .positionals
        .get(1)
        .map(|k| FaultKind::parse(k))
        .transpose()?;
    ctx.out.start(&format!("Clearing faults on {rack}"));
    ctx.home.update(&rack, |s| {
        faults::clear(s, kind);
        Ok(())
    })?;
    ctx.out.ok();
    Ok(())
}

fn fault_list(ctx: &mut Ctx, _p: &Parsed) -> Result<()> {
    let mut rows = Vec::new();
    for rack in ctx.home.rack_names()? {
        for fault in ctx.home.load(&rack)?.faults {
            rows.push(vec![
                rack.clone(),
                fault.kind.name().to_string(),
                fault.value.map(|v| v.to_string()).unwrap_or_default(),
            ]);
        }
    }
    ctx.out
        .write(&render_table(&["RACK", "KIND", "VALUE"], &rows));
    Ok(())
}

fn down(ctx: &mut Ctx, _p: &Parsed) -> Result<()> {
    let mut victims = Vec::new();
    for rack in ctx.home.rack_names()? {
        let state = ctx.home.update(&rack, |s| {
            let before = s.clone();
            for app in s.apps.values_mut() {
                app.pods.clear();
                for router in app.routers.values_mut() {
                    router.pid = 0;
                }
                if app.status != "running" {
                    app.status = "running".into();
                }
            }
            Ok(before)
        })?;
        for app in state.apps.values() {
            for pod in &app.pods {
                if procs::is_ours(pod.pid, &pod.id) {
                    victims.push(pod.pid);
                }
            }
            for router in app.routers.values() {
                if procs::is_ours(router.pid, &router.port.to_string()) {
                    victims.push(router.pid);
                }
            }
        }
    }
    ctx.out
        .start(&format!("Stopping {} processes", victims.len()));
    for pid in victims {
        procs::stop_group(pid, Duration::from_secs(2));
    }
    ctx.out.ok();
    Ok(())
}

fn required<'a>(p: &'a Parsed, flag: &str) -> Result<&'a str> {
    p.value(flag)
        .ok_or_else(|| crate::fail!("--{flag} is required"))
}

fn port_flag(p: &Parsed) -> Result<u16> {
    let text = required(p, "port")?;
    text.parse()
        .map_err(|_| crate::fail!("--port {text} is not a port number"))
}

fn pod(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    let program = p.value("cwd").map(|cwd| Program {
        argv: p.positionals.clone(),
        cwd: cwd.into(),
    });
    let spec = PodSpec {
        log_path: required(p, "log")?.into(),
        service: required(p, "service")?.to_string(),
        pod: required(p, "pod")?.to_string(),
        port: port_flag(p)?,
        release: required(p, "release")?.to_string(),
        error_logs: p.flag("error-logs"),
        crash_after_s: p.int("crash-after")?.map(|v| v.max(0) as u64),
        error_interval_ms: p.int("error-interval-ms")?.unwrap_or(200).max(1) as u64,
        program,
    };
    let _ = ctx;
    std::process::exit(crate::pod::run_supervisor(spec));
}

fn router(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    crate::router::run_router(RouterSpec {
        home: ctx.home.clone(),
        rack: required(p, "rack")?.to_string(),
        app: required(p, "app")?.to_string(),
        service: required(p, "service")?.to_string(),
        port: port_flag(p)?,
    })
}

/// The light pod run as a program of its own (e.g. from a script in `$CONVOX_SIM_HOME/bin`):
/// request lines go to stdout, where a pod supervisor picks them up.
fn light_pod(_ctx: &mut Ctx, _p: &Parsed) -> Result<()> {
    let port_text = std::env::var("PORT").unwrap_or_default();
    let port: u16 = port_text.parse().map_err(|_| {
        crate::fail!(
            "PORT={port_text:?} is not a port number: run this inside a pod, which sets PORT"
        )
    })?;
    let release = std::env::var("RELEASE").unwrap_or_default();
    crate::pod::serve_light(
        port,
        &release,
        std::sync::Arc::new(|line: &str| {
            let mut out = std::io::stdout().lock();
            let _ = std::io::Write::write_all(&mut out, format!("{line}\n").as_bytes());
            let _ = std::io::Write::flush(&mut out);
        }),
    )
}
