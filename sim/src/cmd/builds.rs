//! `build`, `deploy`, `builds`, `builds info|logs|export|import`: packaging a directory into an
//! image with a content digest, the build log, the release that each build makes, and moving one
//! build between racks byte for byte.

use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use super::Command;
use crate::args::{ArgRule, FlagSpec, Parsed};
use crate::ctx::{Ctx, Out};
use crate::error::{Context, Result};
use crate::faults::{self, FaultKind};
use crate::image::{self, Dockerfile, ExportMeta};
use crate::manifest::Manifest;
use crate::state::{self, Build, Release};
use crate::table::{render_info, render_table};
use crate::timefmt;

const BUILD_FLAGS: &[FlagSpec] = &[
    FlagSpec::repeat("build-args", None, "build arguments (K=V)"),
    FlagSpec::value("description", Some('d'), "description"),
    FlagSpec::boolean("development", None, "create a development build"),
    FlagSpec::boolean("external", None, "use external build"),
    FlagSpec::boolean("id", None, "put logs on stderr, release id on stdout"),
    FlagSpec::value("manifest", Some('m'), "manifest file"),
    FlagSpec::boolean("no-cache", None, "build without layer cache"),
    FlagSpec::value("wildcard-domain", None, "wildcard domain"),
];

const DEPLOY_FLAGS: &[FlagSpec] = &[
    FlagSpec::repeat("build-args", None, "build arguments (K=V)"),
    FlagSpec::value("description", Some('d'), "description"),
    FlagSpec::boolean("development", None, "create a development build"),
    FlagSpec::boolean("external", None, "use external build"),
    FlagSpec::boolean("force", None, "force deploy even if the app is updating"),
    FlagSpec::boolean("id", None, "put logs on stderr, release id on stdout"),
    FlagSpec::value("manifest", Some('m'), "manifest file"),
    FlagSpec::boolean("no-cache", None, "build without layer cache"),
    FlagSpec::value("wildcard-domain", None, "wildcard domain"),
];

pub fn commands() -> Vec<Command> {
    vec![
        Command {
            words: &["build"],
            usage: "[dir]",
            description: "create a build",
            flags: BUILD_FLAGS,
            args: ArgRule::AtMost(1),
            rack: true,
            app: true,
            hidden: false,
            run: build,
        },
        Command {
            words: &["deploy"],
            usage: "[dir]",
            description: "create and promote a build",
            flags: DEPLOY_FLAGS,
            args: ArgRule::AtMost(1),
            rack: true,
            app: true,
            hidden: false,
            run: deploy,
        },
        Command {
            words: &["builds"],
            usage: "",
            description: "list builds",
            flags: const {
                &[FlagSpec::value(
                    "limit",
                    Some('l'),
                    "number of builds to list",
                )]
            },
            args: ArgRule::Exactly(0),
            rack: true,
            app: true,
            hidden: false,
            run: builds,
        },
        Command {
            words: &["builds", "info"],
            usage: "<build>",
            description: "get information about a build",
            flags: &[],
            args: ArgRule::Exactly(1),
            rack: true,
            app: true,
            hidden: false,
            run: builds_info,
        },
        Command {
            words: &["builds", "logs"],
            usage: "<build>",
            description: "get logs for a build",
            flags: &[],
            args: ArgRule::Exactly(1),
            rack: true,
            app: true,
            hidden: false,
            run: builds_logs,
        },
        Command {
            words: &["builds", "export"],
            usage: "<build>",
            description: "export a build",
            flags: const { &[FlagSpec::value("file", Some('f'), "import from file")] },
            args: ArgRule::Exactly(1),
            rack: true,
            app: true,
            hidden: false,
            run: builds_export,
        },
        Command {
            words: &["builds", "import"],
            usage: "",
            description: "import a build",
            flags: const {
                &[
                    FlagSpec::value("file", Some('f'), "import from file"),
                    FlagSpec::boolean("id", None, "put logs on stderr, release id on stdout"),
                ]
            },
            args: ArgRule::Exactly(0),
            rack: true,
            app: true,
            hidden: false,
            run: builds_import,
        },
    ]
}

fn build(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    ctx.out = Out {
        to_stderr: p.flag("id"),
    };
    let rack = ctx.rack(p)?;
    let app = ctx.app_name(p);
    let (build, release) = create_build(ctx, &rack, &app, p)?;
    ctx.out.line(&format!("Build:   {build}"));
    ctx.out.line(&format!("Release: {release}"));
    if p.flag("id") {
        print_id(&release);
    }
    Ok(())
}

fn deploy(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    ctx.out = Out {
        to_stderr: p.flag("id"),
    };
    let rack = ctx.rack(p)?;
    let app = ctx.app_name(p);
    let (_, release) = create_build(ctx, &rack, &app, p)?;
    crate::promote::promote(ctx, &rack, &app, &release, p.flag("force"), true)?;
    if p.flag("id") {
        print_id(&release);
    }
    Ok(())
}

pub fn print_id(id: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(id.as_bytes());
    let _ = out.flush();
}

/// Packages, "builds" and records a build plus its release; returns (build id, release id).
fn create_build(ctx: &Ctx, rack: &str, app: &str, p: &Parsed) -> Result<(String, String)> {
    ctx.home.load(rack)?.app(app)?;
    let dir_arg = p.positionals.first().map(String::as_str).unwrap_or(".");
    let dir = ctx.cwd.join(dir_arg);
    if !dir.is_dir() {
        crate::bail!("stat {dir_arg}: no such file or directory");
    }
    ctx.out.start("Packaging source");
    let image_bytes = image::package_context(&dir)?;
    ctx.out.ok();
    ctx.out.start("Uploading source");
    ctx.out.ok();
    ctx.out.start("Starting build");
    let build_id = state::new_build_id();
    let description = p.value("description").unwrap_or("").to_string();
    let fail_armed = ctx.home.update(rack, |s| {
        let fired = faults::take(s, FaultKind::BuildFail).is_some();
        s.app_mut(app)?.builds.push(Build {
            id: build_id.clone(),
            status: "running".into(),
            release: String::new(),
            description: description.clone(),
            started_ms: timefmt::now_ms(),
            ended_ms: 0,
            digest: String::new(),
            manifest: String::new(),
            logs: String::new(),
            reason: String::new(),
        });
        Ok(fired)
    })?;
    ctx.out.ok();

    let digest = image::digest(&image_bytes);
    let manifest_name = p.value("manifest").unwrap_or("convox.yml");
    let mut log = BuildLog::new(ctx.out);
    log.line("Authenticating 127.0.0.1:5000: Login Succeeded");
    log.line("Building: .");
    let manifest_text = match image::read_file(&image_bytes, manifest_name) {
        Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        None => {
            log.line(&format!(
                "ERROR: open {manifest_name}: no such file or directory"
            ));
            return finish_failed(ctx, rack, app, &build_id, log, "manifest not found");
        }
    };
    let manifest = match Manifest::parse(&manifest_text) {
        Ok(m) => m,
        Err(e) => {
            log.line(&format!("ERROR: {e}"));
            return finish_failed(ctx, rack, app, &build_id, log, &e.0);
        }
    };
    let dockerfile = image::read_file(&image_bytes, "Dockerfile")
        .map(|b| Dockerfile::parse(&String::from_utf8_lossy(&b)));
    let build_args: String = p
        .values("build-args")
        .iter()
        .map(|a| format!(" --build-arg {a}"))
        .collect();
    for service in &manifest.services {
        let tag = format!("{app}:{}.{build_id}", service.name);
        log.line(&format!(
            "Running: docker build -t {tag} -f Dockerfile{build_args} ."
        ));
        if let Some(dockerfile) = &dockerfile {
            let total = dockerfile.steps.len();
            for (i, step) in dockerfile.steps.iter().enumerate() {
                log.line(&format!("Step {}/{total} : {step}", i + 1));
            }
        }
        if fail_armed {
            log.line("ERROR: failed to solve: process \"/bin/sh -c cargo build --release\" did not complete successfully: exit code: 101");
            return finish_failed(ctx, rack, app, &build_id, log, "build-fail fault");
        }
        log.line(&format!(
            "Running: docker tag {tag} 127.0.0.1:5000/{app}:{}.{build_id}",
            service.name
        ));
        log.line(&format!(
            "Running: docker push 127.0.0.1:5000/{app}:{}.{build_id}",
            service.name
        ));
        log.line(&format!(
            "{}.{build_id}: digest: {digest} size: {}",
            service.name,
            image_bytes.len()
        ));
    }
    if manifest.services.is_empty() && fail_armed {
        log.line("ERROR: failed to solve: build-fail fault injected");
        return finish_failed(ctx, rack, app, &build_id, log, "build-fail fault");
    }
    // The real CLI notices completion on its 1 s build poll.
    std::thread::sleep(ctx.scaled(1.0));

    crate::state::write_atomically(&ctx.home.image_path(rack, &build_id), &image_bytes)?;
    let release_id = state::new_release_id();
    ctx.home.update(rack, |s| {
        let app_state = s.app_mut(app)?;
        let env = app_state
            .latest_release()
            .map(|r| r.env.clone())
            .unwrap_or_default();
        app_state.releases.push(Release {
            id: release_id.clone(),
            build: build_id.clone(),
            env,
            manifest: manifest_text.clone(),
            description: description.clone(),
            created_ms: timefmt::now_ms(),
        });
        if let Some(b) = app_state.builds.iter_mut().find(|b| b.id == build_id) {
            b.status = "complete".into();
            b.release = release_id.clone();
            b.ended_ms = timefmt::now_ms();
            b.digest = digest.clone();
            b.manifest = manifest_text.clone();
            b.logs = log.text.clone();
        }
        Ok(())
    })?;
    Ok((build_id, release_id))
}

fn finish_failed(
    ctx: &Ctx,
    rack: &str,
    app: &str,
    build_id: &str,
    log: BuildLog,
    reason: &str,
) -> Result<(String, String)> {
    ctx.home.update(rack, |s| {
        if let Some(b) = s.app_mut(app)?.builds.iter_mut().find(|b| b.id == build_id) {
            b.status = "failed".into();
            b.ended_ms = timefmt::now_ms();
            b.logs = log.text.clone();
            b.reason = reason.to_string();
        }
        Ok(())
    })?;
    crate::bail!("build failed")
}

/// The build log: printed as it is produced and kept on the build.
struct BuildLog {
    out: Out,
    text: String,
}

impl BuildLog {
    fn new(out: Out) -> BuildLog {
        BuildLog {
            out,
            text: String::new(),
        }
    }

    fn line(&mut self, text: &str) {
        self.out.line(text);
        self.text.push_str(text);
        self.text.push('\n');
    }
}

fn builds(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    let rack = ctx.rack(p)?;
    let app_name = ctx.app_name(p);
    let limit = p.int("limit")?.unwrap_or(20).max(0) as usize;
    let state = ctx.home.load(&rack)?;
    let app = state.app(&app_name)?;
    let now = timefmt::now_ms();
    let rows: Vec<Vec<String>> = app
        .builds
        .iter()
        .rev()
        .take(limit)
        .map(|b| {
            vec![
                b.id.clone(),
                b.status.clone(),
                b.release.clone(),
                timefmt::humanize_ago(b.started_ms, now),
                build_elapsed(b),
                b.description.clone(),
            ]
        })
        .collect();
    ctx.out.write(&render_table(
        &[
            "ID",
            "STATUS",
            "RELEASE",
            "STARTED",
            "ELAPSED",
            "DESCRIPTION",
        ],
        &rows,
    ));
    Ok(())
}

fn build_elapsed(build: &Build) -> String {
    if build.ended_ms == 0 {
        return String::new();
    }
    timefmt::elapsed(Duration::from_millis(
        (build.ended_ms - build.started_ms).max(0) as u64,
    ))
}

fn builds_info(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    let rack = ctx.rack(p)?;
    let app_name = ctx.app_name(p);
    let state = ctx.home.load(&rack)?;
    let build = state.app(&app_name)?.build(&p.positionals[0])?;
    ctx.out.write(&render_info(&[
        ("Id", build.id.clone()),
        ("Status", build.status.clone()),
        ("Release", build.release.clone()),
        ("Description", build.description.clone()),
        (
            "Started",
            timefmt::humanize_ago(build.started_ms, timefmt::now_ms()),
        ),
        ("Elapsed", build_elapsed(build)),
    ]));
    Ok(())
}

fn builds_logs(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    let rack = ctx.rack(p)?;
    let app_name = ctx.app_name(p);
    let state = ctx.home.load(&rack)?;
    let build = state.app(&app_name)?.build(&p.positionals[0])?;
    ctx.out.write(&build.logs);
    Ok(())
}

fn builds_export(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    let rack = ctx.rack(p)?;
    let app_name = ctx.app_name(p);
    let file = p.value("file");
    if file.is_none() && std::io::stdout().is_terminal() {
        crate::bail!("pipe this command into a file or specify --file");
    }
    ctx.out = Out {
        to_stderr: file.is_none(),
    };
    let state = ctx.home.load(&rack)?;
    let build = state.app(&app_name)?.build(&p.positionals[0])?.clone();
    if build.status != "complete" {
        crate::bail!(
            "build {} is {}, only complete builds can be exported",
            build.id,
            build.status
        );
    }
    ctx.out.start("Exporting build");
    let image_path = ctx.home.image_path(&rack, &build.id);
    let image_bytes =
        std::fs::read(&image_path).context(|| format!("reading image {}", image_path.display()))?;
    let archive = image::write_export(
        &ExportMeta {
            app: app_name.clone(),
            build: build.id.clone(),
            description: build.description.clone(),
            digest: build.digest.clone(),
            manifest: build.manifest.clone(),
        },
        &image_bytes,
    )?;
    match file {
        Some(path) => {
            let path = ctx.cwd.join(path);
            std::fs::write(&path, &archive).context(|| format!("writing {}", path.display()))?;
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&archive)
                .and_then(|_| out.flush())
                .context(|| "writing the export to stdout".to_string())?;
        }
    }
    ctx.out.ok();
    Ok(())
}

fn builds_import(ctx: &mut Ctx, p: &Parsed) -> Result<()> {
    ctx.out = Out {
        to_stderr: p.flag("id"),
    };
    let rack = ctx.rack(p)?;
    let app_name = ctx.app_name(p);
    let bytes = match p.value("file") {
        Some(path) => {
            let path = ctx.cwd.join(path);
            std::fs::read(&path).context(|| format!("reading {}", path.display()))?
        }
        None => {
            if std::io::stdin().is_terminal() {
                crate::bail!("pipe a file into this command or specify --file");
            }
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context(|| "reading the export from stdin".to_string())?;
            bytes
        }
    };
    ctx.home.load(&rack)?.app(&app_name)?;
    ctx.out.start("Importing build");
    let (meta, image_bytes) = image::read_export(&bytes)?;
    let release_id = import_build(ctx, &rack, &app_name, &meta, &image_bytes)?;
    ctx.out.ok_with(&release_id);
    if p.flag("id") {
        print_id(&release_id);
    }
    Ok(())
}

/// Records an imported image as a new build (new id, same digest) plus its release.
fn import_build(
    ctx: &Ctx,
    rack: &str,
    app: &str,
    meta: &ExportMeta,
    image_bytes: &[u8],
) -> Result<String> {
    let build_id = state::new_build_id();
    let release_id = state::new_release_id();
    crate::state::write_atomically(&ctx.home.image_path(rack, &build_id), image_bytes)?;
    let now = timefmt::now_ms();
    ctx.home.update(rack, |s| {
        let app_state = s.app_mut(app)?;
        let env = app_state
            .latest_release()
            .map(|r| r.env.clone())
            .unwrap_or_default();
        app_state.builds.push(Build {
            id: build_id.clone(),
            status: "complete".into(),
            release: release_id.clone(),
            description: meta.description.clone(),
            started_ms: now,
            ended_ms: now,
            digest: meta.digest.clone(),
            manifest: meta.manifest.clone(),
            logs: format!(
                "Importing build {} of app {}\nImported image: digest: {} size: {}\n",
                meta.build,
                meta.app,
                meta.digest,
                image_bytes.len()
            ),
            reason: String::new(),
        });
        app_state.releases.push(Release {
            id: release_id.clone(),
            build: build_id.clone(),
            env,
            manifest: meta.manifest.clone(),
            description: meta.description.clone(),
            created_ms: now,
        });
        Ok(())
    })?;
    Ok(release_id)
}
