//! `services`, `ps`, `scale` and `logs`: what is running now, changing how many, and reading what
//! it said.

use std::time::Duration;

use super::Command;
use crate::args::{ArgRule, FlagSpec, Parsed};
use crate::ctx::Ctx;
use crate::engine::Engine;
use crate::error::Result;
use crate::filter::LogFilter;
use crate::logs::{LogTail, Selection};
use crate::manifest::{Manifest, ServiceDef};
use crate::state::{App, RackState};
use crate::table::render_table;
use crate::timefmt;
use crate::wait;

const SCALE_FLAGS: &[FlagSpec] = &[
    FlagSpec::value("count", None, "process count"),
    FlagSpec::value("cpu", None, "cpu allocation (millicores)"),
    FlagSpec::value("memory", None, "memory allocation (MB)"),
    FlagSpec::value("gpu", None, "gpu count"),
    FlagSpec::value("gpu-vendor", None, "gpu vendor"),
    FlagSpec::value("min", None, "autoscale minimum"),
    FlagSpec::value("max", None, "autoscale maximum"),
];

const LOGS_FLAGS: &[FlagSpec] = &[
    FlagSpec::value("filter", None, "filter logs"),
    FlagSpec::value(
        "since",
        None,
        "show logs since a duration (e.g. 10m or 1h2m10s)",
    ),
    FlagSpec::boolean("no-follow", None, "do not follow logs"),
    FlagSpec::value("service", Some('s'), "only show logs of this service"),
    FlagSpec::value("tail", None, "number of lines to show"),
    FlagSpec::boolean("allow-previous", None, "include previous containers"),
    FlagSpec::value("max-log-requests", None, "maximum concurrent log streams"),
];

pub fn commands() -> Vec<Command> {
    vec![
        Command {
            words: &["services"],
            usage: "",
            description: "list services for an app",
            flags: &[],
            args: ArgRule::Exactly(0),
            rack: true,
            app: true,
            hidden: false,
            run: services,
        },
        Command {
            words: &["ps"],
            usage: "",
            description: "list app processes",
            flags: const {
                &[
                    FlagSpec::value("service", Some('s'), "service name"),
                    FlagSpec::value("release", None, "release id"),
                ]
            },
            args: ArgRule::Exactly(0),
            rack: true,
            app: true,
            hidden: false,
            run: ps,
        },
        Command {
            words: &["scale"],
            usage: "<service>",
            description: "scale a service",
            flags: SCALE_FLAGS,
            args: ArgRule::AtMost(1),
            rack: true,
            app: true,
            hidden: false,
            run: scale,
        },
        Command {
            words: &["logs"],
            usage: "",
            description: "get logs for an app",
            flags: LOGS_FLAGS,
            args: ArgRule::Exactly(0),
            rack: true,
            app: true,
            hidden: false,
            run: logs,
        },
    ]
}

/// The manifest of the active release (services exist only once something was promoted).
fn active_manifest(app: &App) -> Result<Manifest> {
    match app.release(&app.release) {
        Ok(release) => Manifest::parse(&release.manifest),
        Err(_) => Ok(Manifest::default()),
    }
}

fn autoscale_summary(service: &ServiceDef) -> Option<String> {
    if service.count_min == service.count_max {
        return None;
    }
    let mut tokens = Vec::new();
    if let Some(cpu) = service.target_cpu {
        tokens.push(format!("cpu>{cpu}"));
    }
    if let Some(mem) = service.target_memory {
        tokens.push(format!("mem>{mem}"));
    }
    Some(if tokens.is_empty() {
        "-".into()
    } else {
        tokens.join(" ")
    })
}

fn scale_cell(service: &ServiceDef) -> String {
    if service.count_min == service.count_max {
        service.count_min.to_string()
    } else {
        format!("{}-{}", service.count_min, service.count_max)
    }
}

pub fn services_table(app: &App, manifest: &Manifest) -> String {
    let with_autoscale = manifest
        .services
        .iter()
        .any(|s| autoscale_summary(s).is_some());
    let mut headers = vec!["SERVICE", "DOMAIN", "PORTS", "SCALE"];
    if with_autoscale {
        headers.push("AUTOSCALE");
    }
    let rows: Vec<Vec<String>> = manifest
        .services
        .iter()
        .map(|s| {
            let domain = app
                .routers
                .get(&s.name)
                .map(|r| format!("127.0.0.1:{}", r.port))
                .unwrap_or_default();
            let ports = match s.port {
                Some(port) if s.internal => port.to_string(),
                Some(port) => format!("443:{port}"),
                None => String::new(),
            };
            let mut row = vec![s.name.clone(), domain, ports, scale_cell(s)];
            if with_autoscale {
                row.push(autoscale_summary(s).unwrap_or_else(|| "-".into()));
            }
            row
        })
        .collect();
    render_table(&headers, &rows)
}

fn services(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    let rack = ctx.rack(p)?;
    let app_name = ctx.app_name(p);
    let state = ctx.home.load(&rack)?;
    let app = state.app(&app_name)?;
    ctx.out.write(&services_table(app, &active_manifest(app)?));
    Ok(())
}

fn ps(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    let rack = ctx.rack(p)?;
    let app_name = ctx.app_name(p);
    let state = ctx.home.load(&rack)?;
    let app = state.app(&app_name)?;
    let now = timefmt::now_ms();
    let mut pods: Vec<_> = app
        .pods
        .iter()
        .filter(|pod| p.value("service").is_none_or(|s| s == pod.service))
        .filter(|pod| p.value("release").is_none_or(|r| r == pod.release))
        .collect();
    pods.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
    let rows: Vec<Vec<String>> = pods
        .iter()
        .map(|pod| {
            vec![
                pod.id.clone(),
                pod.service.clone(),
                wait::pod_status(pod),
                pod.release.clone(),
                timefmt::humanize_ago(pod.started_ms, now),
                pod.command.clone(),
            ]
        })
        .collect();
    ctx.out.write(&render_table(
        &["ID", "SERVICE", "STATUS", "RELEASE", "STARTED", "COMMAND"],
        &rows,
    ));
    Ok(())
}

fn desired(app: &App, service: &ServiceDef) -> u32 {
    app.scale
        .get(&service.name)
        .copied()
        .unwrap_or(service.count_min)
}

fn scale(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    let imperative = ["count", "cpu", "memory", "gpu", "gpu-vendor", "min", "max"]
        .iter()
        .any(|f| p.given(f));
    let rack = ctx.rack(p)?;
    let app_name = ctx.app_name(p);
    if !imperative {
        return scale_table(
            ctx,
            &rack,
            &app_name,
            p.positionals.first().map(String::as_str),
        );
    }
    let [service_name] = p.positionals.as_slice() else {
        crate::bail!("service name required");
    };
    if p.given("count") && (p.given("min") || p.given("max")) {
        crate::bail!("--min/--max and --count are mutually exclusive");
    }
    if p.int("min")?.is_some_and(|m| m < 0) {
        crate::bail!("--min must be >= 0");
    }
    if p.int("max")?.is_some_and(|m| m < 1) {
        crate::bail!("--max must be >= 1");
    }
    if let (Some(min), Some(max)) = (p.int("min")?, p.int("max")?) {
        if max < min {
            crate::bail!("--max must be >= --min");
        }
    }
    let count = match p.int("count")? {
        Some(c) if c < 0 => crate::bail!("--count must be >= 0"),
        other => other.map(|c| c as u32),
    };
    let state = ctx.home.load(&rack)?;
    let app = state.app(&app_name)?;
    let manifest = active_manifest(app)?;
    let Some(service) = manifest.service(service_name).cloned() else {
        crate::bail!("service not found: {service_name}");
    };
    ctx.out.write(&format!("Scaling {service_name}... \n"));
    let mut tail = LogTail::from_end(&ctx.home.app_log(&rack, &app_name));
    let Some(count) = count else {
        wait::wait_with_logs(ctx, &rack, &app_name, &mut tail)?;
        ctx.out.ok();
        return Ok(());
    };
    let (release, current) = ctx.home.update(&rack, |s| {
        let app = s.app_mut(&app_name)?;
        app.scale.insert(service.name.clone(), count);
        let release = app.release(&app.release)?.clone();
        let current: Vec<String> = app
            .pods
            .iter()
            .filter(|pod| pod.service == service.name && pod.release == app.release)
            .map(|pod| pod.id.clone())
            .collect();
        Ok((release, current))
    })?;
    let engine = Engine {
        ctx,
        rack: rack.clone(),
        app: app_name.clone(),
    };
    let result = std::thread::scope(|scope| {
        let change = scope.spawn(|| -> Result<()> {
            let wanted = count as usize;
            if current.len() > wanted {
                engine.stop_pods(&current[wanted..])?;
            } else if current.len() < wanted {
                let faults = state_faults(&engine.ctx.home.load(&rack)?, &app_name, &current);
                let started = engine.start_pods(
                    &release,
                    &manifest,
                    &service,
                    (wanted - current.len()) as u32,
                    &faults,
                )?;
                engine.await_ready(&started, &manifest)?;
            }
            Ok(())
        });
        let waited = wait::wait_with_logs(ctx, &rack, &app_name, &mut tail);
        let changed = change
            .join()
            .unwrap_or_else(|_| Err(crate::fail!("scaling failed unexpectedly")));
        changed.and(waited)
    });
    result?;
    ctx.out.ok();
    Ok(())
}

/// New pods of a scaled release carry the same faults as its existing pods.
fn state_faults(state: &RackState, app: &str, existing: &[String]) -> crate::state::PodFaults {
    state
        .apps
        .get(app)
        .and_then(|a| a.pods.iter().find(|p| existing.contains(&p.id)))
        .map(|p| p.faults.clone())
        .unwrap_or_default()
}

fn scale_table(ctx: &Ctx, rack: &str, app_name: &str, only: Option<&str>) -> Result<()> {
    let state = ctx.home.load(rack)?;
    let app = state.app(app_name)?;
    let manifest = active_manifest(app)?;
    if let Some(name) = only {
        if manifest.service(name).is_none() {
            crate::bail!("service \"{name}\" not found in app {app_name}");
        }
    }
    let with_autoscale = manifest
        .services
        .iter()
        .any(|s| autoscale_summary(s).is_some());
    let mut headers = vec![
        "SERVICE", "DESIRED", "RUNNING", "CPU", "MEMORY", "GPU", "MIN", "MAX",
    ];
    if with_autoscale {
        headers.push("AUTOSCALE");
    }
    headers.push("STATUS");
    let rows: Vec<Vec<String>> = manifest
        .services
        .iter()
        .filter(|s| only.is_none_or(|o| o == s.name))
        .map(|s| {
            let running = app.pods.iter().filter(|pod| pod.service == s.name).count();
            let mut row = vec![
                s.name.clone(),
                desired(app, s).to_string(),
                running.to_string(),
                s.cpu.to_string(),
                s.memory.to_string(),
                "-".into(),
                s.count_min.to_string(),
                s.count_max.to_string(),
            ];
            if with_autoscale {
                row.push(autoscale_summary(s).unwrap_or_else(|| "-".into()));
            }
            row.push(String::new());
            row
        })
        .collect();
    ctx.out.write(&render_table(&headers, &rows));
    Ok(())
}

fn logs(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    let rack = ctx.rack(p)?;
    let app_name = ctx.app_name(p);
    ctx.home.load(&rack)?.app(&app_name)?;
    let since = crate::timefmt::parse_go_duration(p.value("since").unwrap_or("2m"))?;
    let tail_count = p.int("tail")?.filter(|n| *n >= 0).map(|n| n as usize);
    let service = p.value("service").map(str::to_string);
    let kubectl = service.is_some();
    let selection = Selection {
        since_ns: Some(timefmt::now_ns() - since.as_nanos() as i128),
        // kubectl's log path has no filter, like the real `logs -s`.
        filter: if kubectl {
            LogFilter::default()
        } else {
            LogFilter::parse(p.value("filter").unwrap_or(""))
        },
        service,
    };
    let render = |line: &crate::logs::LogLine| -> Option<String> {
        if kubectl {
            line.render_kubectl(&app_name)
        } else {
            Some(line.render())
        }
    };
    let mut tail = LogTail::from_start(&ctx.home.app_log(&rack, &app_name));
    let mut lines: Vec<String> = tail
        .read_new()
        .iter()
        .filter(|l| selection.keeps(l))
        .filter_map(render)
        .collect();
    if let Some(n) = tail_count {
        lines = lines.split_off(lines.len().saturating_sub(n));
    }
    for line in &lines {
        ctx.out.line(line);
    }
    if p.flag("no-follow") {
        return Ok(());
    }
    loop {
        for line in tail
            .read_new()
            .iter()
            .filter(|l| selection.keeps(l))
            .filter_map(render)
        {
            if ctx.out.try_write(&format!("{line}\n")).is_err() {
                // The reader went away: following any further would never end.
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Router;

    #[test]
    fn services_table_shows_router_domain_ports_scale_and_autoscale() {
        let manifest = Manifest::parse(
            "services:\n  inference:\n    port: 8080\n    scale:\n      count: 2-6\n      targets:\n        cpu: 70\n  worker:\n    scale: 1\n",
        )
        .unwrap();
        let mut app = App::new("bitnet", 0);
        app.routers.insert(
            "inference".into(),
            Router {
                port: 41234,
                pid: 0,
            },
        );
        assert_eq!(
            services_table(&app, &manifest),
            "SERVICE    DOMAIN           PORTS     SCALE  AUTOSCALE\n\
             inference  127.0.0.1:41234  443:8080  2-6    cpu>70\n\
             worker                                1      -\n"
        );
    }

    #[test]
    fn services_table_without_ranges_has_no_autoscale_column() {
        let manifest =
            Manifest::parse("services:\n  web:\n    port: 3000\n    internal: true\n").unwrap();
        assert_eq!(
            services_table(&App::new("a", 0), &manifest),
            "SERVICE  DOMAIN  PORTS  SCALE\nweb              3000   1\n"
        );
    }
}
