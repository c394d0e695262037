//! Helpers shared by the server's integration tests: a tiny synthetic model on disk, a
//! loaded `AppState`, and `oneshot` request helpers that return status, headers and body.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use bitnet::generate::SyntheticModel;
use bitnet::WeightFormat;
use http_body_util::BodyExt;
use serde_json::Value;
use server::{app, AppState, ServerSettings};
use tower::ServiceExt;

pub const SEED: u64 = 11;

/// Writes the tiny test model (I2_S, `bitnet-b1.58`) into `dir`.
pub fn write_tiny_model(dir: &Path) -> PathBuf {
    let path = dir.join("tiny.gguf");
    SyntheticModel::tiny(WeightFormat::I2S, SEED)
        .write(&path)
        .expect("the synthetic model is written");
    path
}

pub fn settings() -> ServerSettings {
    ServerSettings {
        max_tokens: 32,
        threads: 1,
        max_sequences: 4,
        queue_capacity: 64,
        log_requests: true,
        int8_output: false,
    }
}

/// A state with the tiny model loaded; keep the `TempDir` alive while the state is used.
pub fn ready_state(settings: ServerSettings) -> (AppState, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_tiny_model(dir.path());
    let state = AppState::new(settings);
    state.load_model(&path).expect("the tiny model loads");
    (state, dir, path)
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub async fn send(state: &AppState, method: Method, path: &str, body: Vec<u8>) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn get(state: &AppState, path: &str) -> Reply {
    send(state, Method::GET, path, Vec::new()).await
}

pub async fn post(state: &AppState, path: &str, body: &Value) -> Reply {
    send(state, Method::POST, path, body.to_string().into_bytes()).await
}

/// The `data:` payloads of an SSE body, in order.
pub fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|data| data.trim_start().to_string())
        .collect()
}

/// Polls `check` until it returns `Some` or the deadline passes.
pub async fn poll<T, F, Fut>(deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < end,
            "condition not met within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Asserts the OpenAI error shape and returns the error object.
pub fn assert_error_shape(reply: &Reply) -> Value {
    let body = reply.json();
    let error = body
        .get("error")
        .unwrap_or_else(|| panic!("no error object: {body}"));
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    assert!(error.get("param").is_some(), "{body}");
    assert!(error.get("code").is_some(), "{body}");
    error.clone()
}
