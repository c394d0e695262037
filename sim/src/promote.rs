//! One promote, as `deploy`, `releases promote`, `releases rollback` and `env set --promote` do it:
//! the CLI prints `Promoting R... `, the rack validates and moves to `updating` (server-side
//! errors: `release not found`, `app is currently updating`, `can not promote an older release,
//! try rollback`, `required env: …`), the engine rolls the pods on a thread while the main thread
//! waits and prints like the real CLI, and the result is `OK` or `ERROR: rollback`.

use crate::ctx::Ctx;
use crate::engine::Engine;
use crate::error::Result;
use crate::faults;
use crate::logs::LogTail;
use crate::manifest::Manifest;
use crate::state::Release;
use crate::wait;

/// `wait_first`: deploy and `releases promote` first wait for a busy app (unless `--force`);
/// rollback does not.
pub fn promote(
    ctx: &Ctx,
    rack: &str,
    app: &str,
    release_id: &str,
    force: bool,
    wait_first: bool,
) -> Result<()> {
    let status = ctx.home.load(rack)?.app(app)?.status.clone();
    if wait_first && status != "running" && !force {
        ctx.out.start("Waiting for app to be ready");
        wait::wait_for_running(ctx, rack, app)?;
        ctx.out.ok();
    }
    ctx.out.write(&format!("Promoting {release_id}... \n"));
    let mut tail = LogTail::from_end(&ctx.home.app_log(rack, app));
    let (release, pod_faults, previous) = ctx.home.update(rack, |state| {
        let app_state = state.app(app)?;
        let release: Release = app_state.release(release_id)?.clone();
        if app_state.status != "running" && !force {
            crate::bail!("app is currently updating");
        }
        if let (Some(active), Some(wanted)) = (
            app_state.release_index(&app_state.release),
            app_state.release_index(release_id),
        ) {
            if wanted < active {
                crate::bail!("can not promote an older release, try rollback");
            }
        }
        let manifest = Manifest::parse(&release.manifest)?;
        let missing: Vec<String> = manifest
            .services
            .iter()
            .flat_map(|s| manifest.env_decls(s))
            .filter(|d| d.default.is_none() && !release.env.contains_key(&d.key))
            .map(|d| d.key.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if !missing.is_empty() {
            crate::bail!("required env: {}", missing.join(", "));
        }
        let previous = app_state.status.clone();
        let pod_faults = faults::take_promote_faults(state);
        state.app_mut(app)?.status = "updating".into();
        Ok((release, pod_faults, previous))
    })?;
    let engine = Engine {
        ctx,
        rack: rack.to_string(),
        app: app.to_string(),
    };
    let (engine_result, wait_result) = std::thread::scope(|scope| {
        let rollout = scope.spawn(|| {
            let result = engine.run_promote(&release, &pod_faults, &previous);
            if result.is_err() {
                // Leave the app usable so the waiting side ends: the rack gives up on this release.
                let _ = ctx.home.update(rack, |s| {
                    s.app_mut(app)?.status = "running".into();
                    Ok(())
                });
                engine.event("atom/app", "Status: Updating => Error");
            }
            result
        });
        let waited = wait::wait_with_logs(ctx, rack, app, &mut tail);
        let finished = rollout
            .join()
            .unwrap_or_else(|_| Err(crate::fail!("the rollout thread failed unexpectedly")));
        (finished, waited)
    });
    engine_result?;
    wait_result?;
    if ctx.home.load(rack)?.app(app)?.release != release_id {
        crate::bail!("rollback");
    }
    ctx.out.ok();
    Ok(())
}
