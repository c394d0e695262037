//! Interrupted runs: kill -9 in the middle of a bake, then resume or roll back from the journal.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

/// Starts a deploy with a long canary bake and kills it (-9) once the canary is baking.
fn killed_during_bake(w: &World) -> String {
    w.write_racks(&RACKS_TOML.replace("duration = \"1s\"", "duration = \"30s\""));
    let mut child = w
        .cli()
        .args(["deploy", "--output", "json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let state = w.dir.path().join("state/runs");
    let run = wait_for(
        "the canary to start baking",
        Duration::from_secs(60),
        || {
            let entry = std::fs::read_dir(&state).ok()?.flatten().next()?;
            let text = std::fs::read_to_string(entry.path()).ok()?;
            text.contains("\"bake.started\"").then(|| {
                entry
                    .file_name()
                    .to_string_lossy()
                    .trim_end_matches(".jsonl")
                    .to_string()
            })
        },
    );
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    // Short bakes from here on.
    w.write_racks(RACKS_TOML);
    run
}

#[test]
fn resume_after_kill_9_finishes_the_run() {
    let w = World::new();
    let run = killed_during_bake(&w);
    let status = w.run_json(&["status"]);
    let us = status
        .events
        .iter()
        .find(|e| e.rack.as_deref() == Some("us-prod"))
        .unwrap();
    assert!(
        us.rest["journal"]["phase"] == "promoted",
        "{}",
        status.debug()
    );

    let resumed = w.run_json(&["deploy", "--resume", &run]);
    assert_eq!(resumed.code, 0, "{}", resumed.debug());
    let digests = w.digests();
    assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
    assert!(resumed.has("bake.passed", "apac-prod"));
    // A finished run cannot be resumed again.
    assert_eq!(w.run_json(&["deploy", "--resume", &run]).code, 3);
}

#[test]
fn rollback_run_after_kill_9_restores_every_rack() {
    let w = World::new();
    let before = w.actives();
    let run = killed_during_bake(&w);
    assert_ne!(
        w.active("us-prod").1,
        before[0].1,
        "the canary was promoted"
    );
    let rb = w.run_json(&["rollback", "--run", &run]);
    assert_eq!(rb.code, 0, "{}", rb.debug());
    let after = w.actives();
    for i in 0..3 {
        assert_eq!(after[i].1, before[i].1);
    }
}

#[test]
fn manual_rollback_of_one_rack_goes_to_the_release_before_the_last_deploy() {
    let w = World::new();
    let before = w.actives();
    assert_eq!(w.run_json(&["deploy"]).code, 0);
    let rb = w.run_json(&["rollback", "apac"]);
    assert_eq!(rb.code, 0, "{}", rb.debug());
    assert_eq!(w.active("apac-prod").1, before[2].1);
    assert_ne!(w.active("us-prod").1, before[0].1);
}

#[test]
fn sigterm_mid_bake_stops_and_says_where_every_rack_is() {
    let w = World::new();
    w.write_racks(&RACKS_TOML.replace("duration = \"1s\"", "duration = \"30s\""));
    let child = w
        .cli()
        .args(["deploy", "--output", "json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let state = w.dir.path().join("state/runs");
    let run = wait_for(
        "the canary to start baking",
        Duration::from_secs(60),
        || {
            let entry = std::fs::read_dir(&state).ok()?.flatten().next()?;
            let text = std::fs::read_to_string(entry.path()).ok()?;
            text.contains("\"bake.started\"").then(|| {
                entry
                    .file_name()
                    .to_string_lossy()
                    .trim_end_matches(".jsonl")
                    .to_string()
            })
        },
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = Run::from(child.wait_with_output().unwrap());
    assert_eq!(out.code, 1, "{}", out.debug());
    let summary = out.summary();
    assert!(summary.rest["error"]
        .as_str()
        .unwrap()
        .contains("interrupted"));
    let racks = summary.rest["racks"].as_array().unwrap();
    assert_eq!(racks.len(), 3, "every rack's release is reported");
    assert!(racks.iter().all(|r| r["release"].is_string()));
    assert!(summary.rest["hint"].as_str().unwrap().contains(&run));
    // The lock went with the process, and the run can be finished.
    w.write_racks(RACKS_TOML);
    let resumed = w.run_json(&["deploy", "--resume", &run]);
    assert_eq!(resumed.code, 0, "{}", resumed.debug());
}
