//! A fresh three-rack world per test: a stand-in state directory with `us-prod`, `eu-prod` and
//! `apac-prod`, the app deployed once in each (so there is a release to roll back to), a
//! racks.toml with short bakes, and helpers to run the CLI and read its JSON stream.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

pub const RACKS: [(&str, &str); 3] = [
    ("us-prod", "us-east-1"),
    ("eu-prod", "eu-west-1"),
    ("apac-prod", "ap-southeast-1"),
];

/// The `convox` stand-in, built by the same `cargo test --workspace` (or found via
/// `ACME_TEST_CONVOX`).
pub fn convox_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ACME_TEST_CONVOX") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/debug");
    let bin = dir.join("convox");
    assert!(
        bin.exists(),
        "the convox stand-in is not built at {}: run `cargo build -p convox-sim` (or `cargo test --workspace`)",
        bin.display()
    );
    bin
}

pub struct World {
    pub dir: tempfile::TempDir,
    pub sim_home: PathBuf,
    pub racks_toml: PathBuf,
    /// Extra environment for the CLI (e.g. the AWS emulator's endpoint and credentials).
    pub env: Vec<(String, String)>,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.convox(&["sim", "down"]);
    }
}

impl World {
    /// Three racks with the app deployed once in each.
    pub fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let sim_home = dir.path().join("sim");
        let world = World {
            racks_toml: dir.path().join("racks.toml"),
            sim_home,
            dir,
            env: Vec::new(),
        };
        let app = world.dir.path().join("app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(app.join("VERSION"), "1\n").unwrap();
        std::fs::create_dir_all(world.dir.path().join("templates")).unwrap();
        std::fs::write(world.dir.path().join("templates/convox.yml"), MANIFEST).unwrap();
        // The first release in each rack is deployed by hand, as an operator would.
        std::fs::write(app.join("convox.yml"), MANIFEST).unwrap();
        for (rack, region) in RACKS {
            world.ok(&["sim", "rack", "create", rack, "--region", region]);
            world.ok(&["apps", "create", "inference", "-r", rack]);
            world.ok(&[
                "deploy",
                app.to_str().unwrap(),
                "-a",
                "inference",
                "-r",
                rack,
                "-d",
                "first",
            ]);
        }
        std::fs::remove_file(app.join("convox.yml")).unwrap();
        // The change this test deploys.
        std::fs::write(app.join("VERSION"), "2\n").unwrap();
        world.write_racks(RACKS_TOML);
        world
    }

    pub fn write_racks(&self, text: &str) {
        std::fs::write(&self.racks_toml, text).unwrap();
    }

    pub fn convox(&self, args: &[&str]) -> Output {
        Command::new(convox_bin())
            .args(args)
            .env("CONVOX_SIM_HOME", &self.sim_home)
            .env("CONVOX_SIM_TIME_SCALE", "0.01")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs `convox`, failing the test with its output if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.convox(args);
        assert!(
            out.status.success(),
            "convox {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn fault(&self, rack: &str, kind: &str, value: Option<&str>) {
        let mut args = vec!["sim", "fault", "set", rack, kind];
        if let Some(v) = value {
            args.extend(["--value", v]);
        }
        self.ok(&args);
    }

    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_acme-rollout"));
        cmd.env("CONVOX_SIM_HOME", &self.sim_home)
            .env("CONVOX_SIM_TIME_SCALE", "0.01")
            .env("ACME_CONVOX", convox_bin())
            .env("ACME_OWNER", "test@ci")
            .env_remove("ACME_RACKS")
            .arg("--racks")
            .arg(&self.racks_toml)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs the CLI with `--output json` and parses the stream.
    pub fn run_json(&self, args: &[&str]) -> Run {
        let out = self
            .cli()
            .args(args)
            .args(["--output", "json"])
            .output()
            .unwrap();
        Run::from(out)
    }

    /// The active release of each rack and the build it runs.
    pub fn active(&self, rack: &str) -> (String, String) {
        let info = self.ok(&["apps", "info", "-a", "inference", "-r", rack]);
        let release = info
            .lines()
            .find_map(|l| l.strip_prefix("Release"))
            .map(|v| v.trim().to_string())
            .expect("Release row");
        let rinfo = self.ok(&["releases", "info", &release, "-a", "inference", "-r", rack]);
        let build = rinfo
            .lines()
            .find_map(|l| l.strip_prefix("Build"))
            .map(|v| v.trim().to_string())
            .expect("Build row");
        (release, build)
    }

    /// The image digest of the build a rack runs (from its build log).
    pub fn digest(&self, rack: &str) -> String {
        let (_, build) = self.active(rack);
        let logs = self.ok(&["builds", "logs", &build, "-a", "inference", "-r", rack]);
        logs.lines()
            .find_map(|l| {
                l.split_once("digest: ")
                    .map(|(_, d)| d.split_whitespace().next().unwrap().to_string())
            })
            .expect("a digest line in the build log")
    }

    pub fn digests(&self) -> Vec<String> {
        RACKS.iter().map(|(r, _)| self.digest(r)).collect()
    }

    pub fn actives(&self) -> Vec<(String, String)> {
        RACKS.iter().map(|(r, _)| self.active(r)).collect()
    }
}

/// A CLI run: exit code, parsed JSON lines, and stderr.
pub struct Run {
    pub code: i32,
    pub events: Vec<Line>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Run {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let events = stdout
            .lines()
            .map(|l| {
                serde_json::from_str::<Line>(l)
                    .unwrap_or_else(|e| panic!("stdout line is not a JSON event ({e}): {l}"))
            })
            .collect();
        Run {
            code: out.status.code().unwrap_or(-1),
            events,
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// One line of the JSON stream, as a consumer reads it.
#[derive(Debug, Clone, Deserialize)]
pub struct Line {
    pub v: u32,
    pub event: String,
    pub rack: Option<String>,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

impl Run {
    pub fn summary(&self) -> &Line {
        let last = self
            .events
            .last()
            .unwrap_or_else(|| panic!("no JSON output; stderr:\n{}", self.stderr));
        assert_eq!(last.event, "summary", "the stream must end with a summary");
        last
    }

    /// Index of the first event of `kind` (for `rack`, if given).
    pub fn index(&self, kind: &str, rack: Option<&str>) -> Option<usize> {
        self.events
            .iter()
            .position(|e| e.event == kind && (rack.is_none() || e.rack.as_deref() == rack))
    }

    pub fn has(&self, kind: &str, rack: &str) -> bool {
        self.index(kind, Some(rack)).is_some()
    }

    pub fn debug(&self) -> String {
        format!(
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Polls `f` until it returns `Some`, or fails the test after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub const MANIFEST: &str = "services:
  inference:
    build: .
    port: 8080
    health:
      path: /health
    scale:
      count: 1-3
";

pub const RACKS_TOML: &str = r#"
[app]
name = "inference"
service = "inference"
source = "app"
manifest = "templates/convox.yml"

[convox]
call_timeout = "30s"
deploy_timeout = "60s"

[state]
dir = "state"

[bake]
duration = "1s"
[bake.health]
path = "/health"
consecutive = 3
max_failures = 3
interval = "100ms"
timeout = "500ms"
[bake.logs]
filter = "ERROR"
max_matches = 0
interval = "300ms"

[[rack]]
name = "us-prod"
region = "us-east-1"

[[rack]]
name = "eu-prod"
region = "eu-west-1"

[[rack]]
name = "apac-prod"
region = "ap-southeast-1"
aliases = ["apac"]

[[wave]]
name = "canary"
racks = ["us-prod"]

[[wave]]
name = "rest"
racks = ["eu-prod", "apac-prod"]
"#;
