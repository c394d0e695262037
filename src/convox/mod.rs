//! The one place that runs `convox`: argv building, running with stdin closed and a timeout,
//! and turning `ERROR: …` into a typed error that callers branch on.
//!
//! Every call names the rack (`-r`) and app (`-a`) explicitly, so nothing depends on the
//! operator's `convox switch` state or on a `.convox/` directory in the working tree.

pub mod tables;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use tables::ParseError;
use tables::{id_after_ok, parse_id, parse_info, parse_table, truncate};

/// A `convox` invocation that failed, classified by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConvoxError {
    #[error("cannot run `{bin}`: {reason}")]
    Missing { bin: String, reason: String },
    #[error("`{argv}` did not finish within {}", humantime::format_duration(*after))]
    Timeout { argv: String, after: Duration },
    #[error("rack {rack} reverted the release on its own (`{argv}` ended with ERROR: rollback)")]
    Rollback { rack: String, argv: String },
    #[error("rack {rack}: the app is in the middle of another update (`{argv}`)")]
    AppUpdating { rack: String, argv: String },
    #[error("rack {rack}: {message} (`{argv}`)")]
    NotFound {
        rack: String,
        argv: String,
        message: String,
    },
    #[error("rack {rack}: the build failed (`{argv}`){}", tail_block(output_tail))]
    BuildFailed {
        rack: String,
        argv: String,
        output_tail: String,
    },
    #[error("`{argv}` failed (exit {code}): {message}")]
    Failed {
        argv: String,
        code: i32,
        message: String,
    },
    #[error("`{argv}`: {source}")]
    Parse {
        argv: String,
        #[source]
        source: ParseError,
    },
}

fn tail_block(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!(":\n{tail}")
    }
}

impl ConvoxError {
    /// Advice for the operator, if there is any.
    pub fn hint(&self) -> Option<String> {
        match self {
            ConvoxError::Missing { .. } => Some(format!(
                "set `{}` to the convox executable, put `convox` on PATH, or set [convox] bin in racks.toml",
                crate::env::ACME_CONVOX
            )),
            ConvoxError::Timeout { .. } => Some(
                "the rack may still be working; check `convox apps info` and raise [convox] deploy_timeout or call_timeout if it is just slow".into(),
            ),
            ConvoxError::AppUpdating { .. } => Some(
                "wait for the running update to finish (`convox apps info`), or cancel it with `convox apps cancel`".into(),
            ),
            _ => None,
        }
    }

    /// Worth retrying: the rack did not say no, the call just did not get through.
    pub fn is_transient(&self) -> bool {
        match self {
            ConvoxError::Failed { message, .. } => {
                let m = message.to_ascii_lowercase();
                [
                    "connection reset",
                    "connection refused",
                    "i/o timeout",
                    "eof",
                    "tls handshake",
                    "503",
                    "502",
                    "temporarily",
                ]
                .iter()
                .any(|s| m.contains(s))
            }
            _ => false,
        }
    }
}

/// Captured output of one successful call.
#[derive(Debug, Clone)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

/// What `convox apps info` says about the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppInfo {
    pub status: String,
    pub release: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub id: String,
    pub active: bool,
    pub build: String,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub domain: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub id: String,
    pub service: String,
    pub status: String,
    pub release: String,
}

/// `convox scale` for one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scale {
    pub desired: u32,
    pub running: u32,
    pub max: Option<u32>,
}

/// The driver. Cheap to clone; every method blocks (run it on a blocking thread).
#[derive(Debug, Clone)]
pub struct Convox {
    bin: PathBuf,
    app: String,
    call_timeout: Duration,
    deploy_timeout: Duration,
}

impl Convox {
    pub fn new(bin: PathBuf, app: &str, call_timeout: Duration, deploy_timeout: Duration) -> Self {
        Convox {
            bin,
            app: app.to_string(),
            call_timeout,
            deploy_timeout,
        }
    }

    /// Runs `convox ARGS -r RACK -a APP` and returns its output, or the classified failure.
    pub fn run(&self, rack: &str, args: &[&str], timeout: Duration) -> Result<Output, ConvoxError> {
        let mut argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        argv.extend(["-r".into(), rack.into(), "-a".into(), self.app.clone()]);
        let shown = format!("convox {}", argv.join(" "));
        let cmd = duct::cmd(&self.bin, &argv)
            .stdin_null()
            .stdout_capture()
            .stderr_capture()
            .unchecked();
        let handle = cmd.start().map_err(|e| ConvoxError::Missing {
            bin: self.bin.display().to_string(),
            reason: e.to_string(),
        })?;
        let deadline = Instant::now() + timeout;
        let output = loop {
            match handle.try_wait() {
                Ok(Some(out)) => break out.clone(),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = handle.kill();
                    return Err(ConvoxError::Timeout {
                        argv: shown,
                        after: timeout,
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(15)),
                Err(e) => {
                    return Err(ConvoxError::Failed {
                        argv: shown,
                        code: -1,
                        message: e.to_string(),
                    })
                }
            }
        };
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if output.status.success() {
            return Ok(Output { stdout, stderr });
        }
        Err(classify(
            rack,
            shown,
            output.status.code().unwrap_or(-1),
            &stdout,
            &stderr,
        ))
    }

    /// Retries a read-only call that failed on the way to the rack (never one that said no).
    fn read(&self, rack: &str, args: &[&str]) -> Result<Output, ConvoxError> {
        let mut attempt = 0;
        loop {
            match self.run(rack, args, self.call_timeout) {
                Err(e) if e.is_transient() && attempt < 3 => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(200 * (1 << attempt)));
                }
                other => return other,
            }
        }
    }

    pub fn app_info(&self, rack: &str) -> Result<AppInfo, ConvoxError> {
        let out = self.read(rack, &["apps", "info"])?;
        let info = parse_info(&out.stdout);
        let field = |k: &str| {
            info.get(k).cloned().ok_or_else(|| ConvoxError::Parse {
                argv: "convox apps info".into(),
                source: ParseError(format!("no `{k}` row in `{}`", truncate(&out.stdout, 200))),
            })
        };
        Ok(AppInfo {
            status: field("Status")?,
            release: field("Release")?,
        })
    }

    pub fn releases(&self, rack: &str, limit: usize) -> Result<Vec<Release>, ConvoxError> {
        let limit = limit.to_string();
        let out = self.read(rack, &["releases", "-l", &limit])?;
        let rows = parse_table(&out.stdout, &["ID", "STATUS", "BUILD"]).map_err(|source| {
            ConvoxError::Parse {
                argv: "convox releases".into(),
                source,
            }
        })?;
        Ok(rows
            .into_iter()
            .map(|r| Release {
                id: r.get("ID").to_string(),
                active: r.get("STATUS") == "active",
                build: r.get("BUILD").to_string(),
                description: r.get("DESCRIPTION").to_string(),
            })
            .collect())
    }

    /// The build a release runs (`convox releases info`).
    pub fn release_build(&self, rack: &str, release: &str) -> Result<String, ConvoxError> {
        let out = self.read(rack, &["releases", "info", release])?;
        parse_info(&out.stdout)
            .remove("Build")
            .filter(|b| !b.is_empty())
            .ok_or_else(|| ConvoxError::Parse {
                argv: format!("convox releases info {release}"),
                source: ParseError("no Build row".into()),
            })
    }

    /// Builds `dir` with the manifest `manifest` (relative to `dir`) in `rack`; returns the new
    /// release id (not promoted).
    pub fn build(
        &self,
        rack: &str,
        dir: &Path,
        manifest: &str,
        description: &str,
    ) -> Result<String, ConvoxError> {
        let dir = dir.to_string_lossy();
        let out = self.run(
            rack,
            &["build", &dir, "-m", manifest, "--id", "-d", description],
            self.deploy_timeout,
        )?;
        parse_id(&out.stdout).map_err(|source| ConvoxError::Parse {
            argv: "convox build --id".into(),
            source,
        })
    }

    /// The image digest a build's log reports (`… digest: sha256:… size: N`, as `docker push`
    /// and `builds import` print it), if it reports one.
    pub fn build_digest(&self, rack: &str, build: &str) -> Result<Option<String>, ConvoxError> {
        let out = self.read(rack, &["builds", "logs", build])?;
        Ok(out.stdout.lines().find_map(|l| {
            let (_, rest) = l.split_once("digest: ")?;
            let digest = rest.split_whitespace().next()?;
            digest.starts_with("sha256:").then(|| digest.to_string())
        }))
    }

    pub fn export_build(&self, rack: &str, build: &str, file: &Path) -> Result<(), ConvoxError> {
        let file = file.to_string_lossy();
        self.run(
            rack,
            &["builds", "export", build, "-f", &file],
            self.deploy_timeout,
        )?;
        Ok(())
    }

    /// Imports an exported build; returns the release the rack made for it.
    pub fn import_build(&self, rack: &str, file: &Path) -> Result<String, ConvoxError> {
        let file = file.to_string_lossy();
        let out = self.run(
            rack,
            &["builds", "import", "-f", &file, "--id"],
            self.deploy_timeout,
        )?;
        parse_id(&out.stdout)
            .or_else(|e| {
                id_after_ok(&out.stdout)
                    .or_else(|| id_after_ok(&out.stderr))
                    .ok_or(e)
            })
            .map_err(|source| ConvoxError::Parse {
                argv: "convox builds import --id".into(),
                source,
            })
    }

    /// Promotes a release and waits, as the real CLI does, until the app runs it.
    pub fn promote(&self, rack: &str, release: &str) -> Result<Output, ConvoxError> {
        self.run(rack, &["releases", "promote", release], self.deploy_timeout)
    }

    /// Rolls back to `release` (the rack copies it into a new release and promotes that);
    /// returns the new release id.
    pub fn rollback(&self, rack: &str, release: &str) -> Result<String, ConvoxError> {
        let out = self.run(
            rack,
            &["releases", "rollback", release, "--id"],
            self.deploy_timeout,
        )?;
        parse_id(&out.stdout)
            .or_else(|e| id_after_ok(&out.stderr).ok_or(e))
            .map_err(|source| ConvoxError::Parse {
                argv: format!("convox releases rollback {release} --id"),
                source,
            })
    }

    pub fn services(&self, rack: &str) -> Result<Vec<Service>, ConvoxError> {
        let out = self.read(rack, &["services"])?;
        let rows = parse_table(&out.stdout, &["SERVICE", "DOMAIN"]).map_err(|source| {
            ConvoxError::Parse {
                argv: "convox services".into(),
                source,
            }
        })?;
        Ok(rows
            .into_iter()
            .map(|r| Service {
                name: r.get("SERVICE").to_string(),
                domain: r.get("DOMAIN").to_string(),
            })
            .collect())
    }

    pub fn processes(&self, rack: &str) -> Result<Vec<Process>, ConvoxError> {
        let out = self.read(rack, &["ps"])?;
        if out.stdout.trim().is_empty() {
            return Ok(Vec::new());
        }
        let rows = parse_table(&out.stdout, &["ID", "SERVICE", "STATUS"]).map_err(|source| {
            ConvoxError::Parse {
                argv: "convox ps".into(),
                source,
            }
        })?;
        Ok(rows
            .into_iter()
            .map(|r| Process {
                id: r.get("ID").to_string(),
                service: r.get("SERVICE").to_string(),
                status: r.get("STATUS").to_string(),
                release: r.get("RELEASE").to_string(),
            })
            .collect())
    }

    pub fn scale(&self, rack: &str, service: &str) -> Result<Scale, ConvoxError> {
        let out = self.read(rack, &["scale", service])?;
        let rows =
            parse_table(&out.stdout, &["SERVICE", "DESIRED", "RUNNING"]).map_err(|source| {
                ConvoxError::Parse {
                    argv: "convox scale".into(),
                    source,
                }
            })?;
        let row = rows
            .into_iter()
            .find(|r| r.get("SERVICE") == service)
            .ok_or_else(|| ConvoxError::Parse {
                argv: "convox scale".into(),
                source: ParseError(format!("no row for service {service}")),
            })?;
        let num = |c: &str| row.get(c).parse::<u32>().ok();
        Ok(Scale {
            desired: num("DESIRED").unwrap_or(0),
            running: num("RUNNING").unwrap_or(0),
            max: num("MAX"),
        })
    }

    pub fn set_count(&self, rack: &str, service: &str, count: u32) -> Result<(), ConvoxError> {
        let count = count.to_string();
        self.run(
            rack,
            &["scale", service, "--count", &count],
            self.deploy_timeout,
        )?;
        Ok(())
    }

    /// Sets env on top of `base` as a new release (not promoted); returns its id.
    pub fn env_set(
        &self,
        rack: &str,
        base: &str,
        pairs: &[(String, String)],
    ) -> Result<String, ConvoxError> {
        let pairs: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args: Vec<&str> = vec!["env", "set"];
        args.extend(pairs.iter().map(String::as_str));
        args.extend(["--release", base, "--id"]);
        let out = self.run(rack, &args, self.call_timeout)?;
        parse_id(&out.stdout).map_err(|source| ConvoxError::Parse {
            argv: "convox env set --id".into(),
            source,
        })
    }

    /// Service log lines (not rack events) since `since` that match `filter`.
    pub fn service_logs(
        &self,
        rack: &str,
        since: Duration,
        filter: &str,
    ) -> Result<Vec<String>, ConvoxError> {
        let since = go_duration(since);
        let out = self.read(
            rack,
            &["logs", "--no-follow", "--since", &since, "--filter", filter],
        )?;
        Ok(out
            .stdout
            .lines()
            .filter(|l| {
                l.split(' ')
                    .nth(1)
                    .is_some_and(|s| s.starts_with("service/"))
            })
            .map(str::to_string)
            .collect())
    }
}

/// Go's duration syntax, which `convox logs --since` parses (`1h2m3s`).
fn go_duration(d: Duration) -> String {
    let secs = d.as_secs().max(1);
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// Turns a failed call into the error callers can act on, from the last `ERROR:` line.
fn classify(rack: &str, argv: String, code: i32, stdout: &str, stderr: &str) -> ConvoxError {
    let last_error = |text: &str| {
        text.lines()
            .rev()
            .find_map(|l| l.strip_prefix("ERROR: "))
            .map(|m| m.trim().to_string())
    };
    let message = last_error(stderr)
        .or_else(|| last_error(stdout))
        .unwrap_or_else(|| {
            let tail = stderr.trim();
            if tail.is_empty() {
                format!("exited with code {code} and printed no error")
            } else {
                truncate(tail.lines().last().unwrap_or(tail), 300)
            }
        });
    let rack = rack.to_string();
    match message.as_str() {
        "rollback" => ConvoxError::Rollback { rack, argv },
        "timeout" => ConvoxError::Timeout {
            argv,
            after: Duration::ZERO,
        },
        "app is currently updating" => ConvoxError::AppUpdating { rack, argv },
        "build failed" => {
            let tail: Vec<&str> = stdout.lines().chain(stderr.lines()).collect();
            let start = tail.len().saturating_sub(8);
            ConvoxError::BuildFailed {
                rack,
                argv,
                output_tail: tail[start..].join("\n"),
            }
        }
        m if m.contains("not found") || m.starts_with("could not find rack") => {
            ConvoxError::NotFound {
                rack,
                argv,
                message,
            }
        }
        _ => ConvoxError::Failed {
            argv,
            code,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_messages_callers_branch_on() {
        let c = |stderr: &str| classify("us-prod", "convox x".into(), 1, "", stderr);
        assert!(matches!(
            c("ERROR: rollback\n"),
            ConvoxError::Rollback { .. }
        ));
        assert!(matches!(
            c("ERROR: app is currently updating\n"),
            ConvoxError::AppUpdating { .. }
        ));
        assert!(matches!(
            c("ERROR: app not found: inference\n"),
            ConvoxError::NotFound { .. }
        ));
        assert!(matches!(
            c("ERROR: could not find rack: mars\n"),
            ConvoxError::NotFound { .. }
        ));
        let e = c("Promoting R... \nERROR: Get \"https://x\": read: connection reset by peer\n");
        assert!(e.is_transient(), "{e}");
        match c("") {
            ConvoxError::Failed { message, .. } => assert!(message.contains("code 1")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn build_failure_keeps_the_tail_of_the_log() {
        let e = classify(
            "us-prod",
            "convox build".into(),
            1,
            "Packaging source... OK\nStep 3/5 : RUN cargo build\nERROR: compile error\n",
            "ERROR: build failed\n",
        );
        match e {
            ConvoxError::BuildFailed { output_tail, .. } => {
                assert!(output_tail.contains("compile error"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_secs(0)), "1s");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(go_duration(Duration::from_millis(2500)), "2s");
    }

    #[test]
    fn a_missing_binary_says_how_to_fix_it() {
        let c = Convox::new(
            PathBuf::from("/nonexistent/convox"),
            "inference",
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        let e = c.app_info("us-prod").unwrap_err();
        assert!(matches!(e, ConvoxError::Missing { .. }), "{e}");
        assert!(e.hint().unwrap().contains("ACME_CONVOX"));
    }
}
