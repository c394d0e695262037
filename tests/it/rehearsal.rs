//! The README's main-job command, run exactly as written (`scripts/rehearse`): moto, three
//! stand-in racks each running the real acme-infer server with a model pushed through S3, a full
//! deploy, drain and restore. Then the same with a model of other weights, which the golden gate
//! must catch in the canary and roll back there, leaving the other regions untouched.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use sha2::{Digest, Sha256};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The four executables the rehearsal runs, gathered in one directory. The rollout workspace's
/// come from this test run; the inference workspace's are built beside them by `scripts/test`
/// (one shared target directory) or in `inference/target`. No build runs under the test: the
/// tests of this workspace run its binaries at the same time.
fn prebuilt() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let own = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let dir = repo().join(".rehearsal-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let candidates = [own.clone(), repo().join("inference/target/debug")];
    for name in ["acme-rollout", "convox", "acme-infer", "gen-model"] {
        let found = candidates
            .iter()
            .map(|d| d.join(name))
            .find(|p| p.exists())
            .unwrap_or_else(|| {
                panic!(
                    "{name} is not built (looked in {candidates:?}); run scripts/test, or \
                     `cd inference && cargo build -p server --bin acme-infer -p bitnet --bin gen-model` \
                     with CARGO_TARGET_DIR={}",
                    own.parent().unwrap().display()
                )
            });
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&found, &link).unwrap();
    }
    dir
}

fn rehearse(args: &[&str]) -> Output {
    let out = Command::new(repo().join("scripts/rehearse"))
        .args(args)
        .current_dir(repo())
        .env_remove("ACME_RACKS")
        .env("ACME_REHEARSAL_BIN", prebuilt())
        .output()
        .expect("scripts/rehearse runs");
    eprintln!(
        "--- scripts/rehearse {args:?} (exit {:?})\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `status --output json` as the rehearsal saved it: one object per rack.
fn final_status() -> Vec<Value> {
    let text = std::fs::read_to_string(repo().join(".rehearsal/status.json"))
        .expect("the rehearsal saves the final status as JSON");
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["rack"].is_string() && v.get("release").is_some())
        .collect()
}

/// Every record of the rehearsal's deploy run, from its journal.
fn deploy_journal() -> Vec<Value> {
    let runs = repo().join(".rehearsal/state/runs");
    let mut records = Vec::new();
    for entry in std::fs::read_dir(&runs).expect("the rehearsal journals its runs") {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let run: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if run
            .iter()
            .any(|r| event(r) == "run.started" && r["kind"] == "deploy")
        {
            records = run;
        }
    }
    assert!(!records.is_empty(), "no deploy run in {}", runs.display());
    records
}

fn event(record: &Value) -> &str {
    record["event"].as_str().unwrap_or_default()
}

fn sha256_of(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn the_rehearsal_ships_one_build_everywhere_and_the_golden_gate_catches_a_wrong_model() {
    // The happy path.
    let out = rehearse(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "the rehearsal failed");
    let racks = final_status();
    assert_eq!(racks.len(), 3, "{racks:?}");
    let pushed = sha256_of(&repo().join(".rehearsal/model.gguf"));
    let digest = racks[0]["digest"]
        .as_str()
        .expect("image digest")
        .to_string();
    for rack in &racks {
        assert_eq!(
            rack["digest"],
            digest.as_str(),
            "same image everywhere: {rack}"
        );
        assert_eq!(rack["drift"], false, "{rack}");
        assert_eq!(rack["health"], "healthy", "{rack}");
        assert_eq!(
            rack["model_sha256"],
            pushed.as_str(),
            "the pushed model: {rack}"
        );
    }
    let journal = deploy_journal();
    let builds = journal
        .iter()
        .filter(|r| event(r) == "build.finished")
        .count();
    assert_eq!(builds, 1, "built once");
    let baked: Vec<&str> = journal
        .iter()
        .filter(|r| event(r) == "bake.passed")
        .map(|r| r["rack"].as_str().unwrap())
        .collect();
    assert_eq!(baked.len(), 3, "{baked:?}");
    assert_eq!(baked[0], "us-prod", "the canary bakes first");
    let golden: Vec<&str> = journal
        .iter()
        .filter(|r| event(r) == "gate.passed" && r["gate"] == "golden")
        .map(|r| r["rack"].as_str().unwrap())
        .collect();
    assert_eq!(
        golden.len(),
        3,
        "every bake ran the golden requests: {golden:?}"
    );
    assert!(stderr.contains("golden gate passed"), "{stderr}");
    assert!(
        stderr.contains("drained") || stderr.contains("drain"),
        "{stderr}"
    );

    // Other weights behind the same code: the canary's golden requests disagree.
    let out = rehearse(&["--fault", "wrong-model"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "rolled back after a failed gate"
    );
    let journal = deploy_journal();
    let started = journal.iter().find(|r| event(r) == "run.started").unwrap();
    let before: std::collections::HashMap<&str, (&str, &str)> = started["racks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["rack"].as_str().unwrap(),
                (
                    r["previous_release"].as_str().unwrap(),
                    r["previous_build"].as_str().unwrap(),
                ),
            )
        })
        .collect();
    let failed = journal
        .iter()
        .find(|r| event(r) == "gate.failed")
        .expect("a gate failed");
    assert_eq!(failed["rack"], "us-prod");
    assert_eq!(failed["gate"], "golden", "{failed}");
    assert!(
        stderr.contains("- expected:") && stderr.contains("+ got:"),
        "the failure shows a diff: {stderr}"
    );
    let promoted: Vec<&str> = journal
        .iter()
        .filter(|r| event(r) == "rack.promoted")
        .map(|r| r["rack"].as_str().unwrap())
        .collect();
    assert_eq!(
        promoted,
        ["us-prod"],
        "the other regions are never promoted"
    );
    let good_model = sha256_of(&repo().join(".rehearsal/model.gguf"));
    for rack in final_status() {
        let name = rack["rack"].as_str().unwrap();
        let (release, build) = before[name];
        if name == "us-prod" {
            // `convox releases rollback` makes a new release of the previous one's build.
            assert_ne!(rack["release"], release, "{rack}");
            assert_eq!(rack["build"], build, "back on the build it ran: {rack}");
        } else {
            assert_eq!(rack["release"], release, "{name} is untouched: {rack}");
        }
        assert_eq!(rack["health"], "healthy", "{rack}");
        assert_eq!(
            rack["model_sha256"],
            good_model.as_str(),
            "{name} serves the known-good model again: {rack}"
        );
    }
}
