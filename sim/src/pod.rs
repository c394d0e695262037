//! The pod supervisor (`convox sim pod …`, hidden): one detached process per pod. It runs the
//! service's program (or the built-in light HTTP pod), turns its stdout/stderr into
//! `service/<svc>/<pod>` log lines, and acts out the pod-level faults: `error-logs` (periodic
//! `ERROR` lines) and `crash-after` (the pod exits after N unscaled seconds). Router-level faults
//! (`unhealthy`, `slow-health`) live in `router.rs`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Context, Result};
use crate::logs;

/// Everything a pod supervisor needs, passed on its command line.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSpec {
    pub log_path: PathBuf,
    pub service: String,
    pub pod: String,
    pub port: u16,
    pub release: String,
    pub error_logs: bool,
    pub crash_after_s: Option<u64>,
    /// Milliseconds between injected ERROR lines.
    pub error_interval_ms: u64,
    /// `None` runs the light pod.
    pub program: Option<Program>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    pub argv: Vec<String>,
    pub cwd: PathBuf,
}

impl PodSpec {
    /// The hidden subcommand's argv (after the binary name).
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "sim".into(),
            "pod".into(),
            "--log".into(),
            self.log_path.display().to_string(),
            "--service".into(),
            self.service.clone(),
            "--pod".into(),
            self.pod.clone(),
            "--port".into(),
            self.port.to_string(),
            "--release".into(),
            self.release.clone(),
            "--error-interval-ms".into(),
            self.error_interval_ms.to_string(),
        ];
        if self.error_logs {
            args.push("--error-logs".into());
        }
        if let Some(secs) = self.crash_after_s {
            args.push("--crash-after".into());
            args.push(secs.to_string());
        }
        if let Some(program) = &self.program {
            args.push("--cwd".into());
            args.push(program.cwd.display().to_string());
            args.push("--".into());
            args.extend(program.argv.iter().cloned());
        }
        args
    }
}

/// Runs the supervisor until the pod ends; returns the exit code the pod should have.
pub fn run_supervisor(spec: PodSpec) -> i32 {
    crate::procs::detach_from_caller();
    let stream = format!("service/{}/{}", spec.service, spec.pod);
    if spec.error_logs {
        let (path, stream, every) = (
            spec.log_path.clone(),
            stream.clone(),
            spec.error_interval_ms,
        );
        std::thread::spawn(move || {
            for request in 1u64.. {
                logs::append(
                    &path,
                    &stream,
                    &format!(
                        "ERROR inference failed: tensor shape mismatch (request id {request})"
                    ),
                );
                std::thread::sleep(Duration::from_millis(every.max(1)));
            }
        });
    }
    match &spec.program {
        None => {
            if let Some(secs) = spec.crash_after_s {
                let (path, stream) = (spec.log_path.clone(), stream.clone());
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(secs));
                    logs::append(
                        &path,
                        &stream,
                        "fatal: process exited unexpectedly (crash-after fault)",
                    );
                    std::process::exit(1);
                });
            }
            match serve_light_pod(&spec, &stream) {
                Ok(()) => 0,
                Err(e) => {
                    logs::append(&spec.log_path, &stream, &format!("light pod failed: {e}"));
                    1
                }
            }
        }
        Some(program) => run_program(&spec, program, &stream),
    }
}

fn run_program(spec: &PodSpec, program: &Program, stream: &str) -> i32 {
    let Some((exe, rest)) = program.argv.split_first() else {
        logs::append(&spec.log_path, stream, "no command to run");
        return 1;
    };
    let child = Command::new(exe)
        .args(rest)
        .current_dir(&program.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            logs::append(
                &spec.log_path,
                stream,
                &format!("failed to start {exe}: {e}"),
            );
            return 1;
        }
    };
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        pumps.push(pump(out, spec.log_path.clone(), stream.to_string()));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(pump(err, spec.log_path.clone(), stream.to_string()));
    }
    if let Some(secs) = spec.crash_after_s {
        let pid = child.id();
        let (path, stream) = (spec.log_path.clone(), stream.to_string());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(secs));
            logs::append(
                &path,
                &stream,
                "fatal: process exited unexpectedly (crash-after fault)",
            );
            crate::procs::stop_group(pid, Duration::from_millis(500));
            std::process::exit(1);
        });
    }
    let status = child.wait();
    for handle in pumps {
        let _ = handle.join();
    }
    match status {
        Ok(s) => s.code().unwrap_or(1),
        Err(_) => 1,
    }
}

fn pump(
    source: impl Read + Send + 'static,
    path: PathBuf,
    stream: String,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(source).lines() {
            match line {
                Ok(line) => logs::append(&path, &stream, &line),
                Err(_) => break,
            }
        }
    })
}

fn serve_light_pod(spec: &PodSpec, stream: &str) -> Result<()> {
    let (path, stream) = (spec.log_path.clone(), stream.to_string());
    serve_light(
        spec.port,
        &spec.release,
        Arc::new(move |line: &str| logs::append(&path, &stream, line)),
    )
}

/// Where the light pod's request lines go: the app log (under a supervisor) or stdout (alone).
pub type LineSink = Arc<dyn Fn(&str) + Send + Sync>;

/// The light pod: `GET /health` → 200 `{"status":"ok","release":…}`, any other path → 200 JSON.
pub fn serve_light(port: u16, release: &str, sink: LineSink) -> Result<()> {
    let listener =
        TcpListener::bind(("127.0.0.1", port)).context(|| format!("binding 127.0.0.1:{port}"))?;
    sink(&format!("listening on 127.0.0.1:{port}"));
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let (sink, release) = (Arc::clone(&sink), release.to_string());
        std::thread::spawn(move || {
            let _ = answer_light_request(conn, &sink, &release);
        });
    }
    Ok(())
}

/// Reads one request head; returns (method, path).
pub fn read_request_head(conn: &mut TcpStream) -> Option<(String, String, Vec<u8>)> {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 || head.len() > 64 * 1024 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut first = text.lines().next()?.split_whitespace();
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    Some((method, path, head))
}

pub fn write_response(conn: &mut TcpStream, status: &str, body: &str) {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(response.as_bytes());
    let _ = conn.flush();
}

fn answer_light_request(mut conn: TcpStream, sink: &LineSink, release: &str) -> Option<()> {
    let (method, path, _) = read_request_head(&mut conn)?;
    let body = if path == "/health" || path.starts_with("/health?") {
        format!("{{\"status\":\"ok\",\"release\":\"{release}\"}}")
    } else {
        format!(
            "{{\"ok\":true,\"path\":{},\"release\":\"{release}\"}}",
            serde_json::Value::String(path.clone())
        )
    };
    write_response(&mut conn, "200 OK", &body);
    sink(&format!("{method} {path} 200"));
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_to_a_command_line_with_program_after_double_dash() {
        let spec = PodSpec {
            log_path: "/h/app.log".into(),
            service: "web".into(),
            pod: "web-1".into(),
            port: 9000,
            release: "RA".into(),
            error_logs: true,
            crash_after_s: Some(3),
            error_interval_ms: 200,
            program: Some(Program {
                argv: vec!["/bin/server".into(), "--fast".into()],
                cwd: "/ctx".into(),
            }),
        };
        let args = spec.to_args();
        assert_eq!(&args[..2], &["sim".to_string(), "pod".to_string()]);
        assert!(args.windows(2).any(|w| w == ["--crash-after", "3"]));
        let tail: Vec<&str> = args
            .iter()
            .skip_while(|a| *a != "--")
            .map(String::as_str)
            .collect();
        assert_eq!(tail, vec!["--", "/bin/server", "--fast"]);
    }
}
