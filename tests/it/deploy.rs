//! Whole deploys: the happy path, and a failing gate in the canary or in the last wave.

use crate::harness::*;

#[test]
fn happy_path_ships_one_build_to_every_rack_wave_by_wave() {
    let w = World::new();
    let before = w.actives();
    let digests_before = w.digests();
    let run = w.run_json(&["deploy", "--reason", "ship v2"]);
    assert_eq!(run.code, 0, "{}", run.debug());
    assert!(run.events.iter().all(|e| e.v == 1));
    let after = w.actives();
    // The same image everywhere (imported builds get ids of their own), new in every rack.
    let digests = w.digests();
    assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
    assert!(digests_before.iter().all(|d| *d != digests[0]));
    for ((r0, b0), (r1, b1)) in before.iter().zip(&after) {
        assert_ne!(r0, r1);
        assert_ne!(b0, b1);
    }
    // The canary bakes before wave 2 starts.
    let us_passed = run.index("bake.passed", Some("us-prod")).expect("us bake");
    for rack in ["eu-prod", "apac-prod"] {
        let promoting = run.index("rack.promoting", Some(rack)).expect("promote");
        assert!(
            us_passed < promoting,
            "{rack} promoted before the canary's bake passed"
        );
        assert!(run.has("bake.passed", rack));
    }
    let summary = run.summary();
    assert_eq!(summary.rest["outcome"], "done");
    assert_eq!(summary.rest["exit_code"], 0);
    let racks = summary.rest["racks"].as_array().unwrap();
    assert_eq!(racks.len(), 3);
    for (r, (_, build)) in racks.iter().zip(&after) {
        assert_eq!(r["build"], build.as_str());
        assert_eq!(r["digest"], digests[0].as_str());
    }
}

/// Each fault kind in the canary: the canary goes back, the rest are never touched, exit 2.
fn canary_fault(kind: &str, value: Option<&str>, gate: &str, evidence: &str) {
    canary_fault_with_bake(kind, value, gate, evidence, "1s")
}

fn canary_fault_with_bake(kind: &str, value: Option<&str>, gate: &str, evidence: &str, bake: &str) {
    let w = World::new();
    w.write_racks(&RACKS_TOML.replace("duration = \"1s\"", &format!("duration = \"{bake}\"")));
    let before = w.actives();
    w.fault("us-prod", kind, value);
    let run = w.run_json(&["deploy"]);
    assert_eq!(run.code, 2, "{kind}: {}", run.debug());
    let after = w.actives();
    assert_eq!(
        after[0].1, before[0].1,
        "{kind}: us-prod must be back on its previous build"
    );
    assert_eq!(after[1], before[1], "{kind}: eu-prod must be untouched");
    assert_eq!(after[2], before[2], "{kind}: apac-prod must be untouched");
    assert!(!run.has("rack.promoting", "eu-prod"));
    let summary = run.summary();
    assert_eq!(summary.rest["outcome"], "rolled-back");
    let error = summary.rest["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(gate),
        "{kind}: summary must name the {gate} gate: {error}"
    );
    assert!(
        error.contains(evidence),
        "{kind}: summary must carry evidence `{evidence}`: {error}"
    );
}

#[test]
fn canary_unhealthy_after_promote_is_rolled_back() {
    canary_fault("unhealthy", None, "health gate", "503");
}

#[test]
fn canary_error_logs_are_rolled_back() {
    canary_fault("error-logs", None, "logs gate", "ERROR inference failed");
}

#[test]
fn canary_slow_health_is_rolled_back() {
    canary_fault(
        "slow-health",
        Some("2000"),
        "health gate",
        "no answer within 500 ms",
    );
}

#[test]
fn canary_crash_is_rolled_back() {
    // The pods pass readiness, then die two seconds in, during a bake long enough to see it.
    canary_fault_with_bake("crash-after", Some("2"), "health gate", "502", "6s");
}

#[test]
fn canary_that_reverts_by_itself_counts_as_a_failed_promote() {
    let w = World::new();
    let before = w.actives();
    w.fault("us-prod", "never-ready", None);
    let run = w.run_json(&["deploy"]);
    assert_eq!(run.code, 2, "{}", run.debug());
    let failed = &run.events[run
        .index("rack.promote_failed", Some("us-prod"))
        .expect("promote_failed")];
    assert_eq!(failed.rest["reverted"], true);
    assert_eq!(
        w.actives(),
        before,
        "the rack reverted itself; nothing else may move"
    );
    assert!(run.summary().rest["error"]
        .as_str()
        .unwrap()
        .contains("reverted"));
}

#[test]
fn failing_gate_in_the_last_wave_rolls_back_every_promoted_rack() {
    let w = World::new();
    let before = w.actives();
    w.fault("apac-prod", "unhealthy", None);
    let run = w.run_json(&["deploy"]);
    assert_eq!(run.code, 2, "{}", run.debug());
    let after = w.actives();
    for (i, (rack, _)) in RACKS.iter().enumerate() {
        assert_eq!(
            after[i].1, before[i].1,
            "{rack} must be back on its previous build"
        );
    }
    // Reverse order: apac (the failure) and its wave first, then the canary.
    let us = run
        .index("rack.rolled_back", Some("us-prod"))
        .expect("us rolled back");
    let apac = run
        .index("rack.rolled_back", Some("apac-prod"))
        .expect("apac rolled back");
    assert!(apac < us);
}

#[test]
fn no_rollback_promoted_keeps_the_canary() {
    let w = World::new();
    let before = w.actives();
    w.fault("apac-prod", "unhealthy", None);
    let run = w.run_json(&["deploy", "--no-rollback-promoted"]);
    assert_eq!(run.code, 2, "{}", run.debug());
    let after = w.actives();
    assert_ne!(after[0].1, before[0].1, "us-prod keeps the new build");
    assert_eq!(after[2].1, before[2].1, "apac-prod goes back");
}

#[test]
fn a_transient_cli_failure_is_retried() {
    let w = World::new();
    w.fault("eu-prod", "transient", None);
    let run = w.run_json(&["deploy"]);
    assert_eq!(run.code, 0, "{}", run.debug());
}

#[test]
fn a_failed_build_changes_nothing() {
    let w = World::new();
    let before = w.actives();
    w.fault("us-prod", "build-fail", None);
    let run = w.run_json(&["deploy"]);
    assert_eq!(run.code, 1, "{}", run.debug());
    assert_eq!(w.actives(), before);
    assert!(run.stdout.contains("build failed"), "{}", run.debug());
}

#[test]
fn human_output_without_a_tty_is_plain_and_ends_with_a_table() {
    let w = World::new();
    let out = w.cli().args(["deploy", "--only", "apac"]).output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.stdout.is_empty(), "human mode writes nothing to stdout");
    assert!(
        !stderr.contains('\r') && !stderr.contains("\u{1b}["),
        "no animation without a TTY"
    );
    assert!(stderr.contains("[apac-prod] bake passed"), "{stderr}");
    assert!(
        stderr.contains("RACK") && stderr.contains("apac-prod"),
        "{stderr}"
    );
    // --only touched nothing else.
    let status = w
        .cli()
        .args(["status", "--output", "json"])
        .output()
        .unwrap();
    let run = Run::from(status);
    let rows: Vec<&Line> = run
        .events
        .iter()
        .filter(|e| e.event == "status.rack")
        .collect();
    assert_eq!(rows.len(), 3);
    let builds: Vec<&str> = rows
        .iter()
        .map(|r| r.rest["build"].as_str().unwrap())
        .collect();
    assert_ne!(builds[2], builds[0]);
    assert_eq!(
        rows[2].rest["drift"], true,
        "apac runs another image than the others"
    );
    assert_eq!(rows[0].rest["drift"], false);
    assert!(rows.iter().all(|r| r.rest["health"] == "healthy"));
}

#[test]
fn build_then_deploy_release_promotes_what_was_built() {
    let w = World::new();
    let before = w.actives();
    let built = w.run_json(&["build"]);
    assert_eq!(built.code, 0, "{}", built.debug());
    assert_eq!(w.actives(), before, "build alone promotes nothing");
    let shipped: Vec<(String, String)> = built
        .events
        .iter()
        .filter(|e| e.event == "rack.shipped")
        .map(|e| {
            (
                e.rack.clone().unwrap(),
                e.rest["release"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(shipped.len(), 3);
    let first = &shipped.iter().find(|(r, _)| r == "us-prod").unwrap().1;

    let run = w.run_json(&["deploy", "--release", first]);
    assert_eq!(run.code, 0, "{}", run.debug());
    assert!(
        run.index("build.started", None).is_none(),
        "nothing is rebuilt"
    );
    for (rack, release) in &shipped {
        assert_eq!(
            w.active(rack).0,
            *release,
            "{rack} runs the release the build shipped"
        );
    }
}

#[test]
fn plan_shows_every_rack_and_changes_nothing() {
    let w = World::new();
    let before = w.actives();
    let run = w.run_json(&["plan"]);
    assert_eq!(run.code, 0, "{}", run.debug());
    let rows: Vec<&Line> = run
        .events
        .iter()
        .filter(|e| e.event == "plan.rack")
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].rest["wave"], "canary");
    assert_eq!(rows[0].rest["release"], before[0].0.as_str());
    assert!(rows[1].rest["action"].as_str().unwrap().contains("import"));
    assert_eq!(w.actives(), before);
    let dry = w.run_json(&["deploy", "--dry-run"]);
    assert_eq!(dry.code, 0);
    assert_eq!(w.actives(), before);
}

#[test]
fn a_rack_moved_to_another_release_by_hand_shows_as_drift() {
    let w = World::new();
    let before = w.actives();
    assert_eq!(w.run_json(&["deploy"]).code, 0);
    let status_rows = |w: &World| {
        let run = w.run_json(&["status"]);
        run.events
            .into_iter()
            .filter(|e| e.event == "status.rack")
            .map(|e| (e.rack.clone().unwrap(), e.rest))
            .collect::<Vec<_>>()
    };
    assert!(status_rows(&w).iter().all(|(_, r)| r["drift"] == false));

    // Someone puts eu-prod back on its old release with the convox CLI, outside any run.
    let (old_release, old_build) = &before[1];
    w.ok(&[
        "releases",
        "rollback",
        old_release,
        "-a",
        "inference",
        "-r",
        "eu-prod",
    ]);
    let rows = status_rows(&w);
    let eu = &rows.iter().find(|(r, _)| r == "eu-prod").unwrap().1;
    assert_eq!(eu["drift"], true, "{eu:?}");
    assert_eq!(eu["build"], old_build.as_str(), "{eu:?}");
    for (rack, row) in rows.iter().filter(|(r, _)| r != "eu-prod") {
        assert_eq!(row["drift"], false, "{rack}: {row:?}");
    }
    let human = w.cli().args(["status"]).output().unwrap();
    let table = format!(
        "{}{}",
        String::from_utf8_lossy(&human.stdout),
        String::from_utf8_lossy(&human.stderr)
    );
    let eu_line = table
        .lines()
        .find(|l| l.contains("eu-prod"))
        .unwrap_or_else(|| panic!("no eu-prod row: {table}"));
    assert!(eu_line.contains("(drift)"), "{table}");
}
