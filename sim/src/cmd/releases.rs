//! `releases`, `releases info|manifest|promote|rollback` and `env`, `env get|set|unset`.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal};

use super::builds::print_id;
use super::Command;
use crate::args::{ArgRule, FlagSpec, Parsed};
use crate::ctx::{Ctx, Out};
use crate::error::Result;
use crate::state::{self, App, Release};
use crate::table::{render_info, render_table};
use crate::timefmt;

const ID_FLAG: FlagSpec = FlagSpec::boolean("id", None, "put logs on stderr, release id on stdout");
const FORCE_FLAG: FlagSpec =
    FlagSpec::boolean("force", None, "force promote while the app is updating");

pub fn commands() -> Vec<Command> {
    vec![
        Command {
            words: &["releases"],
            usage: "",
            description: "list releases for an app",
            flags: const {
                &[FlagSpec::value(
                    "limit",
                    Some('l'),
                    "number of releases to list",
                )]
            },
            args: ArgRule::Exactly(0),
            rack: true,
            app: true,
            hidden: false,
            run: releases,
        },
        Command {
            words: &["releases", "info"],
            usage: "<release>",
            description: "get information about a release",
            flags: const {
                &[FlagSpec::boolean(
                    "reveal",
                    None,
                    "reveal environment values",
                )]
            },
            args: ArgRule::Exactly(1),
            rack: true,
            app: true,
            hidden: false,
            run: releases_info,
        },
        Command {
            words: &["releases", "manifest"],
            usage: "<release>",
            description: "get manifest for a release",
            flags: &[],
            args: ArgRule::Exactly(1),
            rack: true,
            app: true,
            hidden: false,
            run: releases_manifest,
        },
        Command {
            words: &["releases", "promote"],
            usage: "[release]",
            description: "promote a release",
            flags: const { &[FORCE_FLAG] },
            args: ArgRule::AtMost(1),
            rack: true,
            app: true,
            hidden: false,
            run: releases_promote,
        },
        Command {
            words: &["releases", "rollback"],
            usage: "<release>",
            description: "copy an old release forward and promote it",
            flags: const { &[FORCE_FLAG, ID_FLAG] },
            args: ArgRule::Exactly(1),
            rack: true,
            app: true,
            hidden: false,
            run: releases_rollback,
        },
        Command {
            words: &["env"],
            usage: "",
            description: "list env vars",
            flags: const {
                &[
                    FlagSpec::value("release", None, "id of the release"),
                    FlagSpec::boolean("reveal", None, "reveal values"),
                ]
            },
            args: ArgRule::Exactly(0),
            rack: true,
            app: true,
            hidden: false,
            run: env,
        },
        Command {
            words: &["env", "get"],
            usage: "<var>",
            description: "get an env var",
            flags: const { &[FlagSpec::value("release", None, "id of the release")] },
            args: ArgRule::Exactly(1),
            rack: true,
            app: true,
            hidden: false,
            run: env_get,
        },
        Command {
            words: &["env", "set"],
            usage: "<key=value> [key=value]...",
            description: "set env var(s)",
            flags: const {
                &[
                    ID_FLAG,
                    FlagSpec::boolean("promote", Some('p'), "promote the release"),
                    FlagSpec::value("release", None, "id of the release"),
                    FlagSpec::boolean(
                        "replace",
                        None,
                        "replace all environment variables with given ones",
                    ),
                ]
            },
            args: ArgRule::Any,
            rack: true,
            app: true,
            hidden: false,
            run: env_set,
        },
        Command {
            words: &["env", "unset"],
            usage: "<key> [key]...",
            description: "unset env var(s)",
            flags: const {
                &[
                    ID_FLAG,
                    FlagSpec::boolean("promote", Some('p'), "promote the release"),
                    FlagSpec::value("release", None, "id of the release"),
                ]
            },
            args: ArgRule::AtLeast(1),
            rack: true,
            app: true,
            hidden: false,
            run: env_unset,
        },
    ]
}

fn releases(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    let rack = ctx.rack(p)?;
    let app_name = ctx.app_name(p);
    let limit = p.int("limit")?.unwrap_or(10).max(0) as usize;
    let state = ctx.home.load(&rack)?;
    let app = state.app(&app_name)?;
    let now = timefmt::now_ms();
    let rows: Vec<Vec<String>> = app
        .releases
        .iter()
        .rev()
        .take(limit)
        .map(|r| {
            vec![
                r.id.clone(),
                if r.id == app.release {
                    "active".into()
                } else {
                    String::new()
                },
                r.build.clone(),
                timefmt::humanize_ago(r.created_ms, now),
                r.description.clone(),
            ]
        })
        .collect();
    ctx.out.write(&render_table(
        &["ID", "STATUS", "BUILD", "CREATED", "DESCRIPTION"],
        &rows,
    ));
    Ok(())
}

fn env_text(env: &BTreeMap<String, String>) -> String {
    env.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn releases_info(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    let rack = ctx.rack(p)?;
    let app_name = ctx.app_name(p);
    let state = ctx.home.load(&rack)?;
    let release = state.app(&app_name)?.release(&p.positionals[0])?;
    ctx.out.write(&render_info(&[
        ("Id", release.id.clone()),
        ("Build", release.build.clone()),
        ("Created", timefmt::rfc3339_seconds_ms(release.created_ms)),
        ("Description", release.description.clone()),
        ("Env", env_text(&release.env)),
    ]));
    Ok(())
}

fn releases_manifest(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    let rack = ctx.rack(p)?;
    let app_name = ctx.app_name(p);
    let state = ctx.home.load(&rack)?;
    let release = state.app(&app_name)?.release(&p.positionals[0])?;
    ctx.out.write(&release.manifest);
    Ok(())
}

fn releases_promote(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    let rack = ctx.rack(p)?;
    let app_name = ctx.app_name(p);
    let id = match p.positionals.first() {
        Some(id) => id.clone(),
        None => {
            let state = ctx.home.load(&rack)?;
            match state.app(&app_name)?.latest_release() {
                Some(r) => r.id.clone(),
                None => crate::bail!("no releases to promote"),
            }
        }
    };
    crate::promote::promote(ctx, &rack, &app_name, &id, p.flag("force"), true)
}

fn releases_rollback(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    ctx.out = Out {
        to_stderr: p.flag("id"),
    };
    let rack = ctx.rack(p)?;
    let app_name = ctx.app_name(p);
    let target = p.positionals[0].clone();
    ctx.out.start(&format!("Rolling back to {target}"));
    let new_id = ctx.home.update(&rack, |s| {
        let app = s.app_mut(&app_name)?;
        let old = app.release(&target)?.clone();
        let id = state::new_release_id();
        app.releases.push(Release {
            id: id.clone(),
            build: old.build,
            env: old.env,
            manifest: old.manifest,
            description: format!("rollback to {target}"),
            created_ms: timefmt::now_ms(),
        });
        Ok(id)
    })?;
    ctx.out.ok_with(&new_id);
    crate::promote::promote(ctx, &rack, &app_name, &new_id, p.flag("force"), false)?;
    if p.flag("id") {
        print_id(&new_id);
    }
    Ok(())
}

/// The release `env` reads: `--release R`, else the newest (not necessarily active) one.
fn base_release<'a>(app: &'a App, p: &Parsed) -> Result<Option<&'a Release>> {
    match p.value("release") {
        Some(id) => app.release(id).map(Some),
        None => Ok(app.latest_release()),
    }
}

fn env(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    let rack = ctx.rack(p)?;
    let app_name = ctx.app_name(p);
    let state = ctx.home.load(&rack)?;
    let env = base_release(state.app(&app_name)?, p)?
        .map(|r| r.env.clone())
        .unwrap_or_default();
    ctx.out.line(&env_text(&env));
    Ok(())
}

fn env_get(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    let rack = ctx.rack(p)?;
    let app_name = ctx.app_name(p);
    let state = ctx.home.load(&rack)?;
    let key = &p.positionals[0];
    let env = base_release(state.app(&app_name)?, p)?
        .map(|r| r.env.clone())
        .unwrap_or_default();
    match env.get(key) {
        Some(value) => ctx.out.line(value),
        None => crate::bail!("env not found: {key}"),
    }
    Ok(())
}

/// `env add:A,B change:C remove:D`, as the rack describes env-only releases.
pub fn env_diff(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> String {
    let added: Vec<&str> = new
        .keys()
        .filter(|k| !old.contains_key(*k))
        .map(String::as_str)
        .collect();
    let changed: Vec<&str> = new
        .iter()
        .filter(|(k, v)| old.get(*k).is_some_and(|o| o != *v))
        .map(|(k, _)| k.as_str())
        .collect();
    let removed: Vec<&str> = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .map(String::as_str)
        .collect();
    let mut parts = vec!["env".to_string()];
    for (label, keys) in [("add", added), ("change", changed), ("remove", removed)] {
        if !keys.is_empty() {
            parts.push(format!("{label}:{}", keys.join(",")));
        }
    }
    parts.join(" ")
}

/// Parses `K=V` words; words without `=` are ignored, as the real CLI does.
pub fn parse_pairs<'a>(words: impl Iterator<Item = &'a str>) -> BTreeMap<String, String> {
    words
        .filter_map(|w| w.split_once('='))
        .filter(|(k, _)| !k.trim().is_empty())
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .collect()
}

fn env_set(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    ctx.out = Out {
        to_stderr: p.flag("id"),
    };
    let rack = ctx.rack(p)?;
    let app_name = ctx.app_name(p);
    let mut pairs = parse_pairs(p.positionals.iter().map(String::as_str));
    if !std::io::stdin().is_terminal() {
        let lines: Vec<String> = std::io::stdin()
            .lock()
            .lines()
            .map_while(|l| l.ok())
            .collect();
        pairs.extend(parse_pairs(lines.iter().map(String::as_str)));
    }
    let keys: Vec<&str> = pairs.keys().map(String::as_str).collect();
    ctx.out.start(&format!("Setting {}", keys.join(", ")));
    let replace = p.flag("replace");
    let id = new_env_release(ctx, &rack, &app_name, p, |env| {
        if replace {
            env.clear();
        }
        env.extend(pairs.clone());
    })?;
    ctx.out.ok();
    finish_env_release(ctx, &rack, &app_name, &id, p)
}

fn env_unset(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    ctx.out = Out {
        to_stderr: p.flag("id"),
    };
    let rack = ctx.rack(p)?;
    let app_name = ctx.app_name(p);
    ctx.out
        .start(&format!("Unsetting {}", p.positionals.join(", ")));
    let keys = p.positionals.clone();
    let id = new_env_release(ctx, &rack, &app_name, p, |env| {
        for key in &keys {
            env.remove(key);
        }
    })?;
    ctx.out.ok();
    finish_env_release(ctx, &rack, &app_name, &id, p)
}

fn new_env_release(
    ctx: &Ctx,
    rack: &str,
    app_name: &str,
    p: &Parsed,
    change: impl FnOnce(&mut BTreeMap<String, String>),
) -> Result<String> {
    ctx.home.update(rack, |s| {
        let app = s.app_mut(app_name)?;
        let base = base_release(app, p)?.cloned();
        let old_env = base.as_ref().map(|r| r.env.clone()).unwrap_or_default();
        let mut env = old_env.clone();
        change(&mut env);
        let id = state::new_release_id();
        app.releases.push(Release {
            id: id.clone(),
            build: base.as_ref().map(|r| r.build.clone()).unwrap_or_default(),
            description: env_diff(&old_env, &env),
            env,
            manifest: base.map(|r| r.manifest).unwrap_or_default(),
            created_ms: timefmt::now_ms(),
        });
        Ok(id)
    })
}

fn finish_env_release(ctx: &Ctx, rack: &str, app_name: &str, id: &str, p: &Parsed) -> Result<()> {
    ctx.out.line(&format!("Release: {id}"));
    if p.flag("promote") {
        crate::promote::promote(ctx, rack, app_name, id, false, true)?;
    }
    if p.flag("id") {
        print_id(id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_diff_describes_adds_changes_and_removals() {
        let old = env(&[("A", "1"), ("B", "2"), ("C", "3")]);
        let new = env(&[("A", "1"), ("B", "9"), ("D", "4"), ("E", "5")]);
        assert_eq!(env_diff(&old, &new), "env add:D,E change:B remove:C");
        assert_eq!(env_diff(&old, &old), "env");
    }

    #[test]
    fn pairs_without_equals_are_ignored_and_values_may_contain_equals() {
        let pairs = parse_pairs(["A=1", "junk", "URL=a=b", "=x"].into_iter());
        assert_eq!(pairs, env(&[("A", "1"), ("URL", "a=b")]));
    }
}
