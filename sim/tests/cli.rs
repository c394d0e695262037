//! End-to-end checks of the `convox` stand-in: each test gets its own `CONVOX_SIM_HOME`, drives the
//! built binary exactly as acme-rollout does (stdin closed, pipes for stdout/stderr), and always
//! runs `convox sim down` on the way out.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Sim {
    home: tempfile::TempDir,
    work: tempfile::TempDir,
    scale: &'static str,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.run(&["sim", "down"]);
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "command failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    fn fails_with(self, message: &str) -> Run {
        assert_eq!(
            self.code, 1,
            "expected failure\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        assert_eq!(
            self.stderr.lines().last(),
            Some(format!("ERROR: {message}").as_str()),
            "stderr:\n{}",
            self.stderr
        );
        self
    }
}

impl Sim {
    fn new() -> Sim {
        Sim::with_scale("0.02")
    }

    fn with_scale(scale: &'static str) -> Sim {
        let sim = Sim {
            home: tempfile::tempdir().unwrap(),
            work: tempfile::tempdir().unwrap(),
            scale,
        };
        write_fixture(&sim.fixture(), "v1");
        sim
    }

    fn fixture(&self) -> PathBuf {
        self.work.path().join("app")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_convox"));
        cmd.args(args)
            .current_dir(self.work.path())
            .env("CONVOX_SIM_HOME", self.home.path())
            .env("CONVOX_SIM_TIME_SCALE", self.scale)
            .env_remove("CONVOX_RACK")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Run {
        finish(self.command(args).output().unwrap())
    }

    /// One rack with app `bitnet` and the fixture deployed; returns the release id.
    fn deployed(&self, rack: &str) -> String {
        self.run(&["sim", "rack", "create", rack, "--region", "us-east-1"])
            .ok();
        self.run(&["apps", "create", "bitnet", "-r", rack]).ok();
        self.run(&["deploy", "app", "-a", "bitnet", "-r", rack, "--id"])
            .ok()
            .stdout
    }

    fn router_port(&self, rack: &str) -> u16 {
        let out = self
            .run(&["services", "-a", "bitnet", "-r", rack])
            .ok()
            .stdout;
        let domain = out
            .lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string();
        domain.rsplit(':').next().unwrap().parse().unwrap()
    }
}

fn finish(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn write_fixture(dir: &Path, version: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("convox.yml"),
        "services:\n  inference:\n    build: .\n    port: 8080\n    health:\n      path: /health\n    scale:\n      count: 2-6\n      targets:\n        cpu: 70\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM debian:bookworm-slim\nCOPY . /app\nCMD [\"inference-server\"]\n",
    )
    .unwrap();
    std::fs::write(dir.join("VERSION"), version).unwrap();
    std::fs::write(dir.join(".dockerignore"), "scratch/\n").unwrap();
}

/// GET through a loopback port; returns (status, body) or None if the connection failed.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    conn.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

fn poll_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn is_release_id(text: &str) -> bool {
    text.len() == 11 && text.starts_with('R') && text[1..].chars().all(|c| c.is_ascii_uppercase())
}

#[test]
fn deploy_serves_through_the_router_and_reports_like_the_real_cli() {
    let sim = Sim::new();
    sim.run(&["sim", "rack", "create", "us-prod", "--region", "us-east-1"])
        .ok();
    let rack = sim.run(&["rack", "-r", "us"]).ok().stdout;
    assert_eq!(rack, "Name      us-prod\nProvider  local\nRegion    us-east-1\nRouter    127.0.0.1\nStatus    running\nVersion   3.24.6\n");
    assert_eq!(
        sim.run(&["apps", "create", "bitnet", "-r", "us-prod"])
            .ok()
            .stdout,
        "Creating bitnet... OK\n"
    );

    let deploy = sim
        .run(&["deploy", "app", "-a", "bitnet", "-r", "us-prod"])
        .ok();
    let lines: Vec<&str> = deploy.stdout.lines().collect();
    assert_eq!(
        &lines[..3],
        &[
            "Packaging source... OK",
            "Uploading source... OK",
            "Starting build... OK"
        ]
    );
    assert!(lines.contains(&"Building: ."));
    assert!(lines.contains(&"Step 3/3 : CMD [\"inference-server\"]"));
    let promoting = lines
        .iter()
        .find(|l| l.starts_with("Promoting "))
        .expect("a Promoting line");
    let release = promoting
        .trim_start_matches("Promoting ")
        .trim_end_matches("... ")
        .to_string();
    assert!(deploy
        .stdout
        .contains(&format!("Promoting {release}... \n")));
    assert!(is_release_id(&release));
    assert!(deploy
        .stdout
        .contains(" system/k8s/atom/app Status: Updating => Running\n"));
    assert_eq!(lines.last(), Some(&"OK"));

    let services = sim
        .run(&["services", "-a", "bitnet", "-r", "us-prod"])
        .ok()
        .stdout;
    let mut rows = services.lines();
    assert!(rows.next().unwrap().starts_with("SERVICE    DOMAIN"));
    assert!(services.contains("443:8080  2-6    cpu>70\n"), "{services}");

    let ps = sim
        .run(&["ps", "-a", "bitnet", "-r", "us-prod"])
        .ok()
        .stdout;
    assert!(ps.starts_with("ID  ") || ps.starts_with("ID "), "{ps}");
    let running: Vec<&str> = ps
        .lines()
        .skip(1)
        .filter(|l| l.contains(" running ") && l.contains(&release))
        .collect();
    assert_eq!(running.len(), 2, "{ps}");

    let releases = sim
        .run(&["releases", "-a", "bitnet", "-r", "us-prod"])
        .ok()
        .stdout;
    assert!(
        releases.starts_with("ID           STATUS  BUILD        CREATED"),
        "{releases}"
    );
    assert!(releases
        .lines()
        .nth(1)
        .unwrap()
        .starts_with(&format!("{release}  active  B")));

    let port = sim.router_port("us-prod");
    let (status, body) = http_get(port, "/health").expect("router answers");
    assert_eq!(status, 200);
    assert_eq!(
        body,
        format!("{{\"status\":\"ok\",\"release\":\"{release}\"}}")
    );

    let logs = poll_until("the request in the logs", Duration::from_secs(5), || {
        let out = sim
            .run(&[
                "logs",
                "-a",
                "bitnet",
                "-r",
                "us-prod",
                "--no-follow",
                "--filter",
                "GET /health",
            ])
            .ok()
            .stdout;
        out.contains(" service/inference/inference-").then_some(out)
    });
    assert!(
        logs.lines().all(|l| l.ends_with("GET /health 200")),
        "{logs}"
    );
}

#[test]
fn id_mode_prints_only_the_release_and_errors_match_the_real_cli() {
    let sim = Sim::new();
    sim.run(&["sim", "rack", "create", "eu-prod", "--region", "eu-west-1"])
        .ok();
    sim.run(&["apps", "create", "bitnet", "-r", "eu-prod"]).ok();
    let build = sim
        .run(&["build", "app", "--id", "-a", "bitnet", "-r", "eu-prod"])
        .ok();
    assert!(
        is_release_id(&build.stdout),
        "stdout must be the bare id: {:?}",
        build.stdout
    );
    assert!(build.stderr.contains("Packaging source... OK\n"));
    assert!(build
        .stderr
        .contains(&format!("Release: {}\n", build.stdout)));

    sim.run(&["releases", "--bogus", "-r", "eu-prod"])
        .fails_with("unknown flag: --bogus");
    sim.run(&["releases", "info", "-r", "eu-prod"])
        .fails_with("1 arg required");
    sim.run(&["releases", "-a", "nope", "-r", "eu-prod"])
        .fails_with("app not found: nope");
    sim.run(&["apps", "-r", "mars"])
        .fails_with("could not find rack: mars");
    sim.run(&[
        "releases",
        "info",
        "RNOPENOPENO",
        "-a",
        "bitnet",
        "-r",
        "eu",
    ])
    .fails_with("release not found: RNOPENOPENO");
    sim.run(&["apps"]).fails_with(
        "no current rack, use `convox racks` to list and `convox switch <name>` to select",
    );

    let help = sim.run(&["frobnicate", "now"]).ok().stdout;
    assert!(help.lines().any(|l| l.starts_with("deploy ")));
    let usage = sim.run(&["deploy", "--help"]).ok().stdout;
    assert!(usage.starts_with("USAGE\n  convox deploy [dir]\n"));

    let no_home = finish(
        Command::new(env!("CARGO_BIN_EXE_convox"))
            .arg("apps")
            .env_remove("CONVOX_SIM_HOME")
            .stdin(Stdio::null())
            .output()
            .unwrap(),
    );
    no_home.fails_with("CONVOX_SIM_HOME is not set: point it at a directory for the stand-in's racks (e.g. export CONVOX_SIM_HOME=$PWD/.sim)");
}

#[test]
fn build_fail_fault_fails_one_build_then_disarms() {
    let sim = Sim::new();
    sim.deployed("us-prod");
    sim.run(&["sim", "fault", "set", "us-prod", "build-fail"])
        .ok();
    let failed = sim
        .run(&["deploy", "app", "-a", "bitnet", "-r", "us-prod"])
        .fails_with("build failed");
    assert!(
        failed.stdout.lines().any(|l| l.starts_with("ERROR: ")),
        "{}",
        failed.stdout
    );
    assert!(!failed.stdout.contains("Promoting"));
    assert_eq!(
        sim.run(&["sim", "fault", "list"]).ok().stdout,
        "RACK  KIND  VALUE\n"
    );
    sim.run(&["build", "app", "-a", "bitnet", "-r", "us-prod"])
        .ok();
    let builds = sim
        .run(&["builds", "-a", "bitnet", "-r", "us-prod"])
        .ok()
        .stdout;
    assert_eq!(
        builds.lines().filter(|l| l.contains(" failed ")).count(),
        1,
        "{builds}"
    );
}

#[test]
fn never_ready_rolls_back_on_its_own_while_the_old_release_keeps_serving() {
    let sim = Sim::with_scale("0.01");
    let first = sim.deployed("eu-prod");
    let port = sim.router_port("eu-prod");
    sim.run(&["sim", "fault", "set", "eu-prod", "never-ready"])
        .ok();
    let mut deploy = sim
        .command(&["deploy", "app", "-a", "bitnet", "-r", "eu-prod"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    poll_until("the app to be updating", Duration::from_secs(10), || {
        let apps = sim.run(&["apps", "-r", "eu-prod"]).ok().stdout;
        apps.contains(" updating ").then_some(())
    });
    // While the new pods fail readiness, the old release answers, and the rack refuses a rollback.
    let (status, body) = http_get(port, "/health").unwrap();
    assert_eq!((status, body.contains(&first)), (200, true));
    sim.run(&[
        "releases", "rollback", &first, "-a", "bitnet", "-r", "eu-prod",
    ])
    .fails_with("app is currently updating");
    let mut stdout = String::new();
    deploy
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let mut stderr = String::new();
    deploy
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(deploy.wait().unwrap().code(), Some(1));
    assert_eq!(stderr, "ERROR: rollback\n");
    assert!(stdout.contains("Readiness probe failed"), "{stdout}");
    assert!(stdout.contains("system/k8s/atom/app Status: Updating => Deadline"));
    assert!(stdout.contains("system/k8s/atom/app Status: Deadline => Rollback"));
    let apps = sim.run(&["apps", "-r", "eu-prod"]).ok().stdout;
    assert_eq!(
        apps,
        format!("APP     STATUS   RELEASE\nbitnet  running  {first}\n")
    );
    let (status, body) = http_get(port, "/health").unwrap();
    assert_eq!((status, body.contains(&first)), (200, true));
}

#[test]
fn unhealthy_release_promotes_then_answers_503_with_pods_running() {
    let sim = Sim::new();
    sim.deployed("us-prod");
    sim.run(&["sim", "fault", "set", "us-prod", "unhealthy"])
        .ok();
    let second = sim
        .run(&["deploy", "app", "-a", "bitnet", "-r", "us-prod", "--id"])
        .ok()
        .stdout;
    let port = sim.router_port("us-prod");
    assert_eq!(http_get(port, "/health").unwrap().0, 503);
    assert_eq!(http_get(port, "/v1/models").unwrap().0, 503);
    let ps = sim
        .run(&["ps", "-a", "bitnet", "-r", "us-prod"])
        .ok()
        .stdout;
    assert_eq!(
        ps.lines()
            .filter(|l| l.contains(" running ") && l.contains(&second))
            .count(),
        2,
        "{ps}"
    );
}

#[test]
fn error_logs_slow_health_and_crash_after_are_observable() {
    let sim = Sim::new();
    sim.deployed("apac-prod");
    let port = sim.router_port("apac-prod");

    sim.run(&["sim", "fault", "set", "apac", "error-logs"]).ok();
    sim.run(&[
        "sim",
        "fault",
        "set",
        "apac",
        "slow-health",
        "--value",
        "300",
    ])
    .ok();
    let armed = sim.run(&["sim", "fault", "list"]).ok().stdout;
    assert_eq!(
        armed,
        "RACK       KIND         VALUE\napac-prod  error-logs   \napac-prod  slow-health  300\n"
    );
    sim.run(&["releases", "promote", "-a", "bitnet", "-r", "apac"])
        .ok();
    poll_until("ERROR lines", Duration::from_secs(5), || {
        let out = sim
            .run(&[
                "logs",
                "-a",
                "bitnet",
                "-r",
                "apac",
                "--no-follow",
                "--since",
                "1m",
                "--filter",
                "ERROR",
            ])
            .ok()
            .stdout;
        out.contains("ERROR inference failed: tensor shape mismatch (request id")
            .then_some(())
    });
    let start = Instant::now();
    assert_eq!(http_get(port, "/health").unwrap().0, 200);
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "slow-health delay not applied"
    );

    sim.run(&["sim", "fault", "set", "apac", "crash-after", "--value", "1"])
        .ok();
    sim.run(&["releases", "promote", "-a", "bitnet", "-r", "apac"])
        .ok();
    poll_until("crashed pods", Duration::from_secs(10), || {
        let ps = sim.run(&["ps", "-a", "bitnet", "-r", "apac"]).ok().stdout;
        (ps.lines().skip(1).count() > 0 && ps.lines().skip(1).all(|l| l.contains(" crashed ")))
            .then_some(())
    });
    assert_eq!(http_get(port, "/health").map(|r| r.0).unwrap_or(502), 502);
}

#[test]
fn transient_fault_fails_exactly_one_call() {
    let sim = Sim::new();
    sim.deployed("eu-prod");
    sim.run(&["sim", "fault", "set", "eu", "transient"]).ok();
    sim.run(&["releases", "-a", "bitnet", "-r", "eu"])
        .fails_with(
            "Get \"https://api.eu-prod.convox.local/apps\": read: connection reset by peer",
        );
    sim.run(&["releases", "-a", "bitnet", "-r", "eu"]).ok();
    assert_eq!(
        sim.run(&["sim", "fault", "list"]).ok().stdout,
        "RACK  KIND  VALUE\n"
    );
}

#[test]
fn rollback_promotes_a_copy_of_the_old_release() {
    let sim = Sim::new();
    let first = sim.deployed("us-prod");
    write_fixture(&sim.fixture(), "v2");
    let second = sim
        .run(&["deploy", "app", "-a", "bitnet", "-r", "us-prod", "--id"])
        .ok()
        .stdout;
    sim.run(&[
        "releases", "promote", &first, "-a", "bitnet", "-r", "us-prod",
    ])
    .fails_with("can not promote an older release, try rollback");
    let rollback = sim
        .run(&[
            "releases", "rollback", &first, "-a", "bitnet", "-r", "us-prod", "--id",
        ])
        .ok();
    let third = rollback.stdout.clone();
    assert!(is_release_id(&third) && third != first && third != second);
    assert!(rollback.stderr.starts_with(&format!(
        "Rolling back to {first}... OK, {third}\nPromoting {third}... \n"
    )));
    let info = |id: &str| {
        sim.run(&["releases", "info", id, "-a", "bitnet", "-r", "us-prod"])
            .ok()
            .stdout
    };
    let build_of = |text: String| {
        text.lines()
            .find(|l| l.starts_with("Build "))
            .unwrap()
            .to_string()
    };
    assert_eq!(build_of(info(&third)), build_of(info(&first)));
    let apps = sim
        .run(&["apps", "info", "bitnet", "-r", "us-prod"])
        .ok()
        .stdout;
    assert!(apps.contains(&format!("Release     {third}\n")), "{apps}");
    sim.run(&["releases", "rollback", "-a", "bitnet", "-r", "us-prod"])
        .fails_with("1 arg required");
}

#[test]
fn export_import_moves_the_same_image_between_racks() {
    let sim = Sim::new();
    sim.run(&["sim", "rack", "create", "us-prod", "--region", "us-east-1"])
        .ok();
    sim.run(&["sim", "rack", "create", "eu-prod", "--region", "eu-west-1"])
        .ok();
    for rack in ["us-prod", "eu-prod"] {
        sim.run(&["apps", "create", "bitnet", "-r", rack]).ok();
    }
    let r1 = sim
        .run(&["build", "app", "--id", "-a", "bitnet", "-r", "us-prod"])
        .ok()
        .stdout;
    let info = sim
        .run(&["releases", "info", &r1, "-a", "bitnet", "-r", "us-prod"])
        .ok()
        .stdout;
    let b1 = info
        .lines()
        .find(|l| l.starts_with("Build"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    let export = sim
        .run(&[
            "builds",
            "export",
            &b1,
            "-f",
            "build.tgz",
            "-a",
            "bitnet",
            "-r",
            "us-prod",
        ])
        .ok();
    assert_eq!(export.stdout, "Exporting build... OK\n");
    let import = sim
        .run(&[
            "builds",
            "import",
            "-f",
            "build.tgz",
            "--id",
            "-a",
            "bitnet",
            "-r",
            "eu-prod",
        ])
        .ok();
    let r2 = import.stdout.clone();
    assert!(is_release_id(&r2));
    assert_eq!(import.stderr, format!("Importing build... OK, {r2}\n"));
    let info2 = sim
        .run(&["releases", "info", &r2, "-a", "bitnet", "-r", "eu-prod"])
        .ok()
        .stdout;
    let b2 = info2
        .lines()
        .find(|l| l.starts_with("Build"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    assert_ne!(b1, b2, "an import gets a new build id");
    let digest_of = |rack: &str, build: &str| {
        let logs = sim
            .run(&["builds", "logs", build, "-a", "bitnet", "-r", rack])
            .ok()
            .stdout;
        logs.split_whitespace()
            .find(|w| w.starts_with("sha256:"))
            .unwrap()
            .to_string()
    };
    assert_eq!(digest_of("us-prod", &b1), digest_of("eu-prod", &b2));
    sim.run(&["releases", "promote", &r2, "-a", "bitnet", "-r", "eu-prod"])
        .ok();
    let (status, body) = http_get(sim.router_port("eu-prod"), "/health").unwrap();
    assert_eq!((status, body.contains(&r2)), (200, true));
}

#[test]
fn env_set_reads_stdin_and_scale_count_survives_promotes() {
    let sim = Sim::new();
    sim.deployed("us-prod");
    let mut child = sim
        .command(&["env", "set", "A=1", "-a", "bitnet", "-r", "us-prod"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"B=2\nnot-a-pair\n")
        .unwrap();
    let set = finish(child.wait_with_output().unwrap()).ok();
    assert!(
        set.stdout.starts_with("Setting A, B... OK\nRelease: R"),
        "{}",
        set.stdout
    );
    assert_eq!(
        sim.run(&["env", "-a", "bitnet", "-r", "us-prod"])
            .ok()
            .stdout,
        "A=1\nB=2\n"
    );
    assert_eq!(
        sim.run(&["env", "get", "B", "-a", "bitnet", "-r", "us-prod"])
            .ok()
            .stdout,
        "2\n"
    );
    sim.run(&["env", "get", "C", "-a", "bitnet", "-r", "us-prod"])
        .fails_with("env not found: C");
    let releases = sim
        .run(&["releases", "-a", "bitnet", "-r", "us-prod"])
        .ok()
        .stdout;
    assert!(
        releases.lines().nth(1).unwrap().ends_with("env add:A,B"),
        "{releases}"
    );

    let scaled = sim
        .run(&[
            "scale",
            "inference",
            "--count",
            "3",
            "-a",
            "bitnet",
            "-r",
            "us-prod",
        ])
        .ok();
    assert!(
        scaled.stdout.starts_with("Scaling inference... \n") && scaled.stdout.ends_with("OK\n")
    );
    let count_pods = || {
        sim.run(&["ps", "-a", "bitnet", "-r", "us-prod"])
            .ok()
            .stdout
            .lines()
            .skip(1)
            .count()
    };
    assert_eq!(count_pods(), 3);
    sim.run(&["releases", "promote", "-a", "bitnet", "-r", "us-prod"])
        .ok();
    assert_eq!(count_pods(), 3);
    let table = sim
        .run(&["scale", "-a", "bitnet", "-r", "us-prod"])
        .ok()
        .stdout;
    assert_eq!(
        table,
        "SERVICE    DESIRED  RUNNING  CPU  MEMORY  GPU  MIN  MAX  AUTOSCALE  STATUS\n\
         inference  3        3        250  512     -    2    6    cpu>70     \n"
    );
}

#[test]
fn dockerfile_cmd_runs_the_program_from_the_sim_bin_dir_with_pod_env() {
    let sim = Sim::new();
    let bin = sim.home.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("inference-server");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"inference server up: port=$PORT region=$AWS_REGION app=$APP version=$(cat VERSION)\"\nexec \"{}\" sim light-pod\n",
            env!("CARGO_BIN_EXE_convox")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let release = sim.deployed("us-prod");
    let ps = sim
        .run(&["ps", "-a", "bitnet", "-r", "us-prod"])
        .ok()
        .stdout;
    assert!(
        ps.lines()
            .nth(1)
            .unwrap()
            .ends_with(&script.display().to_string()),
        "{ps}"
    );
    let (status, body) = http_get(sim.router_port("us-prod"), "/health").unwrap();
    assert_eq!((status, body.contains(&release)), (200, true));
    poll_until(
        "the program's own output in the logs",
        Duration::from_secs(5),
        || {
            let out = sim
                .run(&[
                    "logs",
                    "-a",
                    "bitnet",
                    "-r",
                    "us-prod",
                    "--no-follow",
                    "--filter",
                    "\"inference server up\"",
                ])
                .ok()
                .stdout;
            out.contains("region=us-east-1 app=bitnet version=v1")
                .then_some(())
        },
    );
}

#[test]
fn two_racks_promote_in_parallel_and_logs_have_both_formats() {
    let sim = Sim::new();
    for rack in ["eu-prod", "apac-prod"] {
        sim.run(&["sim", "rack", "create", rack, "--region", "eu-west-1"])
            .ok();
        sim.run(&["apps", "create", "bitnet", "-r", rack]).ok();
    }
    let deploys: Vec<_> = ["eu-prod", "apac-prod"]
        .iter()
        .map(|rack| {
            sim.command(&["deploy", "app", "-a", "bitnet", "-r", rack, "--id"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in deploys {
        let run = finish(child.wait_with_output().unwrap()).ok();
        assert!(is_release_id(&run.stdout), "{}", run.stdout);
    }
    for rack in ["eu-prod", "apac-prod"] {
        assert_eq!(http_get(sim.router_port(rack), "/health").unwrap().0, 200);
    }
    let kubectl = poll_until("a request line", Duration::from_secs(5), || {
        let out = sim
            .run(&[
                "logs",
                "-a",
                "bitnet",
                "-r",
                "eu-prod",
                "--no-follow",
                "-s",
                "inference",
                "--tail",
                "1",
            ])
            .ok()
            .stdout;
        out.ends_with("GET /health 200\n").then_some(out)
    });
    assert_eq!(kubectl.lines().count(), 1);
    assert!(
        kubectl.starts_with("[pod/inference-") && kubectl.contains("/bitnet] 20"),
        "{kubectl}"
    );
    let system = sim
        .run(&[
            "logs",
            "-a",
            "bitnet",
            "-r",
            "eu-prod",
            "--no-follow",
            "--filter",
            "atom/app Running",
        ])
        .ok()
        .stdout;
    assert!(
        system
            .lines()
            .any(|l| l.ends_with(" system/k8s/atom/app Status: Updating => Running")),
        "{system}"
    );
    sim.run(&["logs", "-a", "bitnet", "-r", "eu-prod", "--since", "2min"])
        .fails_with("time: unknown unit \"min\" in duration \"2min\"");
}
