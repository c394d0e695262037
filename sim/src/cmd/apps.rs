//! `apps`, `apps create`, `apps info`, `apps delete`, `rack` and `racks`.

use std::time::Duration;

use super::Command;
use crate::args::{ArgRule, Parsed};
use crate::ctx::Ctx;
use crate::error::Result;
use crate::procs;
use crate::state::App;
use crate::table::{render_info, render_table};
use crate::timefmt;

/// The rack version the stand-in reports (new enough for every flag the tool uses).
pub const RACK_VERSION: &str = "3.24.6";

pub fn commands() -> Vec<Command> {
    vec![
        Command {
            words: &["apps"],
            usage: "",
            description: "list apps",
            flags: &[],
            args: ArgRule::Exactly(0),
            rack: true,
            app: false,
            hidden: false,
            run: apps,
        },
        Command {
            words: &["apps", "create"],
            usage: "[name]",
            description: "create an app",
            flags: &[],
            args: ArgRule::AtMost(1),
            rack: true,
            app: true,
            hidden: false,
            run: apps_create,
        },
        Command {
            words: &["apps", "info"],
            usage: "[app]",
            description: "get information about an app",
            flags: &[],
            args: ArgRule::AtMost(1),
            rack: true,
            app: true,
            hidden: false,
            run: apps_info,
        },
        Command {
            words: &["apps", "delete"],
            usage: "<app>",
            description: "delete an app",
            flags: &[],
            args: ArgRule::Exactly(1),
            rack: true,
            app: false,
            hidden: false,
            run: apps_delete,
        },
        Command {
            words: &["rack"],
            usage: "",
            description: "get information about the rack",
            flags: &[],
            args: ArgRule::Exactly(0),
            rack: true,
            app: false,
            hidden: false,
            run: rack,
        },
        Command {
            words: &["racks"],
            usage: "",
            description: "list available racks",
            flags: &[],
            args: ArgRule::Exactly(0),
            rack: false,
            app: false,
            hidden: false,
            run: racks,
        },
    ]
}

fn apps(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    let rack = ctx.rack(p)?;
    let state = ctx.home.load(&rack)?;
    let rows: Vec<Vec<String>> = state
        .apps
        .values()
        .map(|a| vec![a.name.clone(), a.status.clone(), a.release.clone()])
        .collect();
    ctx.out
        .write(&render_table(&["APP", "STATUS", "RELEASE"], &rows));
    Ok(())
}

fn apps_create(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    let rack = ctx.rack(p)?;
    let name = p
        .positionals
        .first()
        .cloned()
        .unwrap_or_else(|| ctx.app_name(p));
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        crate::bail!("invalid app name: {name:?} (use letters, digits and dashes)");
    }
    ctx.out.start(&format!("Creating {name}"));
    ctx.home.update(&rack, |s| {
        if s.apps.contains_key(&name) {
            crate::bail!("app already exists: {name}");
        }
        s.apps
            .insert(name.clone(), App::new(&name, timefmt::now_ms()));
        Ok(())
    })?;
    ctx.out.ok();
    Ok(())
}

fn apps_info(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    let rack = ctx.rack(p)?;
    let name = p
        .positionals
        .first()
        .cloned()
        .unwrap_or_else(|| ctx.app_name(p));
    let state = ctx.home.load(&rack)?;
    let app = state.app(&name)?;
    ctx.out.write(&render_info(&[
        ("Name", app.name.clone()),
        ("Status", app.status.clone()),
        ("Generation", "3".into()),
        ("Locked", "false".into()),
        ("Release", app.release.clone()),
    ]));
    Ok(())
}

fn apps_delete(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    let rack = ctx.rack(p)?;
    let name = p.positionals[0].clone();
    ctx.out.start(&format!("Deleting {name}"));
    let app = ctx.home.update(&rack, |s| {
        s.app(&name)?;
        Ok(s.apps.remove(&name))
    })?;
    if let Some(app) = app {
        for pod in &app.pods {
            if procs::is_ours(pod.pid, &pod.id) {
                procs::stop_group(pod.pid, Duration::from_secs(2));
            }
        }
        for router in app.routers.values() {
            if procs::is_ours(router.pid, &router.port.to_string()) {
                procs::stop_group(router.pid, Duration::from_secs(2));
            }
        }
    }
    ctx.out.ok();
    Ok(())
}

fn rack(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    let rack = ctx.rack(p)?;
    let state = ctx.home.load(&rack)?;
    ctx.out.write(&render_info(&[
        ("Name", state.name.clone()),
        ("Provider", "local".into()),
        ("Region", state.region.clone()),
        ("Router", "127.0.0.1".into()),
        ("Status", "running".into()),
        ("Version", RACK_VERSION.into()),
    ]));
    Ok(())
}

fn racks(ctx: &mut Ctx, _p: &Parsed) -> Result<()> {
    let rows: Vec<Vec<String>> = ctx
        .home
        .rack_names()?
        .into_iter()
        .map(|name| vec![name, "local".into(), "running".into()])
        .collect();
    ctx.out
        .write(&render_table(&["NAME", "PROVIDER", "STATUS"], &rows));
    Ok(())
}
