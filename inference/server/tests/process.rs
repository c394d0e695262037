//! The real `acme-infer` binary: refuses bad settings with a non-zero exit, binds the port
//! while the model loads, and on SIGTERM finishes a running stream and exits 0.
#![cfg(unix)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_acme-infer");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child if a test fails before it exits.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn request(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(stream)
}

/// Status and de-chunked body of a whole response.
fn read_response(stream: TcpStream) -> (u16, String) {
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut chunked = false;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if line
            .to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
        {
            chunked = true;
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).unwrap();
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        reader.read_to_end(&mut body).unwrap();
    }
    (status, String::from_utf8(body).unwrap())
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    request(port, "GET", path, "").ok().map(read_response)
}

fn wait_for(deadline: Duration, mut check: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !check() {
        assert!(
            Instant::now() < end,
            "condition not met within {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn bad_settings_exit_non_zero_with_a_message_naming_the_variable() {
    for (vars, variable) in [
        (
            vec![("MODEL_PATH", "s3://bucket-without-key")],
            "MODEL_PATH",
        ),
        (
            vec![("MODEL_PATH", "/nonexistent/model.gguf")],
            "MODEL_PATH",
        ),
        (vec![("MODEL_PATH", "x.gguf"), ("PORT", "eighty")], "PORT"),
        (
            vec![("MODEL_PATH", "x.gguf"), ("MODEL_MAX_TOKENS", "0")],
            "MODEL_MAX_TOKENS",
        ),
        (
            vec![("MODEL_PATH", "x.gguf"), ("MODEL_SHA256", "deadbeef")],
            "MODEL_SHA256",
        ),
        (
            vec![
                ("MODEL_PATH", "s3://models/m.gguf"),
                ("MODEL_CACHE_DIR", "/proc/acme-infer-cache"),
            ],
            "MODEL_CACHE_DIR",
        ),
    ] {
        let output = Command::new(BINARY)
            .env_clear()
            .envs(vars.iter().copied())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{vars:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(variable), "{vars:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn sigterm_mid_stream_finishes_the_stream_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::write_tiny_model(dir.path());
    let port = free_port();
    let mut server = Server(
        Command::new(BINARY)
            .env("PORT", port.to_string())
            .env("MODEL_PATH", &model)
            .env("MODEL_MAX_TOKENS", "200")
            .env("INFERENCE_THREADS", "1")
            .env("SHUTDOWN_GRACE_SECONDS", "30")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_for(Duration::from_secs(60), || {
        matches!(get(port, "/health"), Some((200, _)))
    });
    let (_, health) = get(port, "/health").unwrap();
    assert!(health.contains("\"sha256\""), "{health}");

    let body = r#"{"prompt": "Once upon a time", "max_tokens": 200, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}"#;
    let stream = request(port, "POST", "/v1/completions", body).unwrap();
    let mut reader = BufReader::new(stream);
    // Wait until the stream has started before the signal.
    let mut head = String::new();
    while !head.contains("data:") {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "stream ended early: {head}"
        );
        head.push_str(&line);
    }
    let pid = server.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());

    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    let all = head + &rest;
    assert!(all.contains("data: [DONE]"), "{all}");
    assert!(all.contains("\"finish_reason\":"), "{all}");
    assert!(all.contains("\"usage\":"), "{all}");

    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < end,
            "the server did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
    let mut stdout = String::new();
    server
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(stdout.contains("SIGTERM received"), "{stdout}");
    assert!(stdout.contains("POST /v1/completions 200"), "{stdout}");
    assert!(!stdout.contains("ERROR"), "{stdout}");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "still listening"
    );
}
