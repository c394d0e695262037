//! The CLI side of a rollout, timed like the real CLI (scaled by `CONVOX_SIM_TIME_SCALE`): sleep
//! 5 s, poll the app every 5 s until two consecutive `running` (a sticky `rollback` ends it after
//! two polls), poll processes every 3 s printing each pod state change as `  %-32s  %-12s  %s`,
//! and copy `system/…` log lines as they arrive.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::ctx::Ctx;
use crate::error::Result;
use crate::logs::LogTail;
use crate::state::Pod;

/// The status `ps` shows: the recorded one, or `crashed` once the pod's process is gone.
pub fn pod_status(pod: &Pod) -> String {
    if pod.pid != 0 && !crate::procs::is_alive(pod.pid) {
        "crashed".to_string()
    } else {
        pod.status.clone()
    }
}

pub fn pod_state_line(pod: &str, service: &str, status: &str) -> String {
    format!("  {pod:<32}  {service:<12}  {status}")
}

/// Waits with logs until the app is `running` twice in a row; `Err("rollback")` on rollback.
pub fn wait_with_logs(ctx: &Ctx, rack: &str, app: &str, tail: &mut LogTail) -> Result<()> {
    let start = Instant::now();
    let app_period = ctx.scaled(5.0);
    let process_period = ctx.scaled(3.0);
    let timeout = ctx.scaled(35.0 * 60.0).max(Duration::from_secs(1));
    let tick = (app_period / 10).clamp(Duration::from_millis(5), Duration::from_millis(100));
    let mut next_app_poll = start + app_period;
    let mut next_process_poll = start;
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut running_in_a_row = 0;
    let mut rollback_polls = 0;
    let result = loop {
        print_system_lines(ctx, tail);
        let now = Instant::now();
        if now >= next_process_poll {
            next_process_poll = now + process_period;
            print_pod_changes(ctx, rack, app, &mut seen);
        }
        if now >= next_app_poll {
            next_app_poll = now + app_period;
            let status = ctx.home.load(rack)?.app(app)?.status.clone();
            if rollback_polls > 0 || status == "rollback" {
                rollback_polls += 1;
                if rollback_polls >= 2 {
                    break Err(crate::fail!("rollback"));
                }
            } else if status == "running" {
                running_in_a_row += 1;
                if running_in_a_row >= 2 {
                    break Ok(());
                }
            } else {
                running_in_a_row = 0;
            }
        }
        if now.duration_since(start) > timeout {
            break Err(crate::fail!("timeout"));
        }
        std::thread::sleep(tick);
    };
    print_system_lines(ctx, tail);
    result
}

/// `Waiting for app to be ready... OK`: the wait the CLI does before promoting a busy app.
pub fn wait_for_running(ctx: &Ctx, rack: &str, app: &str) -> Result<()> {
    let start = Instant::now();
    let timeout = ctx.scaled(35.0 * 60.0).max(Duration::from_secs(1));
    std::thread::sleep(ctx.scaled(5.0));
    let mut running_in_a_row = 0;
    loop {
        if ctx.home.load(rack)?.app(app)?.status == "running" {
            running_in_a_row += 1;
            if running_in_a_row >= 2 {
                return Ok(());
            }
        } else {
            running_in_a_row = 0;
        }
        if start.elapsed() > timeout {
            crate::bail!("timeout");
        }
        std::thread::sleep(ctx.scaled(5.0));
    }
}

fn print_system_lines(ctx: &Ctx, tail: &mut LogTail) {
    for line in tail.read_new() {
        if line.is_system() {
            ctx.out.line(&line.render());
        }
    }
}

fn print_pod_changes(ctx: &Ctx, rack: &str, app: &str, seen: &mut BTreeMap<String, String>) {
    let Ok(state) = ctx.home.load(rack) else {
        return;
    };
    let Some(app) = state.apps.get(app) else {
        return;
    };
    for pod in &app.pods {
        let status = pod_status(pod);
        match seen.get(&pod.id) {
            Some(previous) if *previous == status => continue,
            None if status == "running" => {}
            _ => ctx
                .out
                .line(&pod_state_line(&pod.id, &pod.service, &status)),
        }
        seen.insert(pod.id.clone(), status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_state_lines_use_the_real_widths() {
        assert_eq!(
            pod_state_line("infer-6d9c7f8b5-x2x9k", "infer", "pending"),
            "  infer-6d9c7f8b5-x2x9k             infer         pending"
        );
    }
}
