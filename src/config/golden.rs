//! Golden requests: a JSON-lines file of inference requests with the answers a healthy release
//! gives, sent to a rack during its bake. Parsed with the config so a bad line stops a deploy
//! before anything changes.
//!
//! ```text
//! {"name":"capital","endpoint":"/v1/completions","body":{"prompt":"The capital of France is","max_tokens":4,"temperature":0},"expect":" Paris","budget_ms":2000}
//! {"name":"anomaly","endpoint":"/v1/classify","body":{"input":"disk 99% full","labels":["normal","anomaly"]},"expect":"anomaly"}
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub const FORMAT_HINT: &str = "each line is {\"name\":…,\"endpoint\":\"/v1/completions|/v1/chat/completions|/v1/classify\",\"body\":{…},\"expect\":\"…\",\"budget_ms\":N (optional)}";

#[derive(Debug, Clone, PartialEq)]
pub struct GoldenGate {
    pub requests: Vec<GoldenRequest>,
    /// How many times the whole file is sent (latency needs more than one sample).
    pub rounds: u32,
    /// Default latency budget for the p95 of each request.
    pub p95: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenRequest {
    pub name: String,
    pub endpoint: String,
    pub body: serde_json::Value,
    /// The completion text, the chat reply, or the best label.
    pub expect: String,
    pub budget_ms: Option<u64>,
}

impl GoldenRequest {
    /// The answer in a response body, by endpoint.
    pub fn answer<'a>(&self, response: &'a serde_json::Value) -> Option<&'a str> {
        match self.endpoint.as_str() {
            "/v1/completions" => response["choices"][0]["text"].as_str(),
            "/v1/chat/completions" => response["choices"][0]["message"]["content"].as_str(),
            "/v1/classify" => response["label"].as_str(),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub enum GoldenError {
    Read(std::io::Error),
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

pub fn load(path: &Path) -> Result<Vec<GoldenRequest>, GoldenError> {
    let text = std::fs::read_to_string(path).map_err(GoldenError::Read)?;
    let mut requests = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let at = |message: String| GoldenError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let request: GoldenRequest =
            serde_json::from_str(line).map_err(|e| at(format!("not a golden request: {e}")))?;
        if !matches!(
            request.endpoint.as_str(),
            "/v1/completions" | "/v1/chat/completions" | "/v1/classify"
        ) {
            return Err(at(format!(
                "endpoint `{}` is not one the golden gate can check",
                request.endpoint
            )));
        }
        if !request.body.is_object() {
            return Err(at("body must be a JSON object".into()));
        }
        requests.push(request);
    }
    Ok(requests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_requests_and_names_the_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("golden.jsonl");
        std::fs::write(
            &path,
            "# comment\n{\"name\":\"a\",\"endpoint\":\"/v1/classify\",\"body\":{\"input\":\"x\",\"labels\":[\"n\"]},\"expect\":\"n\"}\n{\"name\":\"b\",\"endpoint\":\"/v1/embed\",\"body\":{},\"expect\":\"\"}\n",
        )
        .unwrap();
        match load(&path).unwrap_err() {
            GoldenError::Line { line, message, .. } => {
                assert_eq!(line, 3);
                assert!(message.contains("/v1/embed"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        std::fs::write(
            &path,
            "{\"name\":\"a\",\"endpoint\":\"/v1/classify\",\"body\":{},\"expect\":\"n\"}\n",
        )
        .unwrap();
        let r = load(&path).unwrap();
        assert_eq!(r[0].answer(&serde_json::json!({"label": "n"})), Some("n"));
    }
}
