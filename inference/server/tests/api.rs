//! The HTTP API through the router (`oneshot`, no socket) on a tiny synthetic model:
//! readiness, completions against the runtime run directly, chat, SSE, classification,
//! bad input, concurrency with metrics, and a fuzz loop that must never see a 5xx.

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use bitnet::sampler::{logprob, Sampler, SamplerConfig};
use bitnet::{chat, LoadOptions, Model, Session};
use common::*;
use serde_json::{json, Value};
use server::{classification_prompt, AppState, ServerSettings};
use sha2::{Digest, Sha256};

fn load_direct(path: &std::path::Path) -> Model {
    Model::load(
        path,
        LoadOptions {
            int8_output: false,
            threads: 1,
        },
    )
    .unwrap()
}

/// Greedy generation with the runtime alone, the way a user of `bitnet` would write it.
fn greedy_direct(model: &Model, prompt: &[u32], max_tokens: usize, stop: &[u32]) -> Vec<u32> {
    let mut session = Session::new(model, model.context_length()).unwrap();
    let mut sampler = Sampler::new(SamplerConfig::greedy()).unwrap();
    let mut history = prompt.to_vec();
    let mut out = Vec::new();
    let mut logits = session.feed(prompt).unwrap().to_vec();
    while out.len() < max_tokens {
        let token = sampler.sample(&logits, &history).unwrap();
        if stop.contains(&token) {
            break;
        }
        out.push(token);
        history.push(token);
        logits = session.feed(&[token]).unwrap().to_vec();
    }
    out
}

#[tokio::test]
async fn health_is_503_loading_then_200_with_the_checksum_then_503_draining() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_tiny_model(dir.path());
    let state = AppState::new(settings());

    let loading = get(&state, "/health").await;
    assert_eq!(loading.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(loading.json(), json!({"status": "loading"}));
    let refused = post(&state, "/v1/completions", &json!({"prompt": "hi"})).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers.contains_key("retry-after"));
    assert_error_shape(&refused);

    let loader = state.clone();
    let load_path = path.clone();
    let loading_thread = std::thread::spawn(move || loader.load_model(&load_path));
    let health = poll(Duration::from_secs(30), || async {
        let reply = get(&state, "/health").await;
        (reply.status == StatusCode::OK).then(|| reply.json())
    })
    .await;
    loading_thread.join().unwrap().unwrap();

    let expected_sha = format!("{:x}", Sha256::digest(std::fs::read(&path).unwrap()));
    assert_eq!(health["status"], "ok");
    assert_eq!(health["sha256"], expected_sha);
    assert_eq!(health["architecture"], "bitnet-b1.58");
    assert_eq!(health["weight_format"], "I2_S");
    assert_eq!(health["activation"], "relu2");
    assert_eq!(health["output_layer"], "as stored");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert!(health["model"].as_str().is_some_and(|m| !m.is_empty()));

    let metrics = get(&state, "/metrics").await.text();
    assert!(
        metrics.contains("acme_infer_model_load_seconds "),
        "{metrics}"
    );

    state.start_draining();
    let draining = get(&state, "/health").await;
    assert_eq!(draining.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(draining.json(), json!({"status": "draining"}));
    let refused = post(&state, "/v1/completions", &json!({"prompt": "late"})).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(assert_error_shape(&refused)["code"], "draining");
}

#[tokio::test]
async fn health_reports_download_progress_while_an_s3_model_downloads() {
    let state = AppState::new(settings());
    state.download().start(1000);
    state.download().advance(250);
    let downloading = get(&state, "/health").await;
    assert_eq!(downloading.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        downloading.json(),
        json!({"status": "loading", "phase": "downloading", "bytes_done": 250, "bytes_total": 1000})
    );
    // Once the download is over, loading the file is plain "loading" again.
    state.download().finish();
    assert_eq!(
        get(&state, "/health").await.json(),
        json!({"status": "loading"})
    );
}

#[tokio::test]
async fn a_model_whose_checksum_is_not_the_expected_one_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_tiny_model(dir.path());
    let state = AppState::new(settings());
    let expected = "0".repeat(64);
    let loader = state.clone();
    let load_path = path.clone();
    let error = tokio::task::spawn_blocking(move || {
        loader.load_model_expecting(&load_path, Some(&"0".repeat(64)))
    })
    .await
    .unwrap()
    .unwrap_err();
    let actual = format!("{:x}", Sha256::digest(std::fs::read(&path).unwrap()));
    assert!(
        error.contains(&actual) && error.contains(&expected),
        "{error}"
    );
    assert_eq!(
        get(&state, "/health").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn greedy_completion_is_deterministic_and_equals_the_runtime() {
    let (state, _dir, path) = ready_state(settings());
    let request = json!({"prompt": "The quick brown fox", "max_tokens": 12, "temperature": 0});
    let first = post(&state, "/v1/completions", &request).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    let second = post(&state, "/v1/completions", &request).await;
    let (first, second) = (first.json(), second.json());
    assert_eq!(first["choices"][0]["text"], second["choices"][0]["text"]);
    assert_eq!(first["object"], "text_completion");

    let model = load_direct(&path);
    let tokenizer = model.tokenizer().unwrap();
    let prompt = tokenizer.encode("The quick brown fox", tokenizer.add_bos_default(), true);
    let generated = greedy_direct(&model, &prompt, 12, tokenizer.eog_ids());
    assert_eq!(
        first["choices"][0]["text"].as_str().unwrap(),
        tokenizer.decode(&generated)
    );
    assert_eq!(first["usage"]["prompt_tokens"], prompt.len());
    assert_eq!(first["usage"]["completion_tokens"], generated.len());
    assert_eq!(
        first["usage"]["total_tokens"],
        prompt.len() + generated.len()
    );
    let reason = if generated.len() == 12 {
        "length"
    } else {
        "stop"
    };
    assert_eq!(first["choices"][0]["finish_reason"], reason);
}

#[tokio::test]
async fn chat_completion_uses_the_chat_format() {
    let (state, _dir, path) = ready_state(settings());
    let messages = json!([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Say hello."}]}
    ]);
    let reply = post(
        &state,
        "/v1/chat/completions",
        &json!({"messages": messages, "max_tokens": 8, "temperature": 0, "model": "tiny"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "tiny");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");

    let model = load_direct(&path);
    let tokenizer = model.tokenizer().unwrap();
    let conversation = [
        chat::ChatMessage::new("system", "You are terse."),
        chat::ChatMessage::new("user", "Say hello."),
    ];
    let prompt = chat::encode(&tokenizer, &conversation, true).unwrap();
    let generated = greedy_direct(&model, &prompt, 8, &chat::stop_token_ids(&tokenizer));
    assert_eq!(body["usage"]["prompt_tokens"], prompt.len());
    assert_eq!(
        body["choices"][0]["message"]["content"].as_str().unwrap(),
        tokenizer.decode(&generated)
    );
}

#[tokio::test]
async fn streamed_text_equals_the_non_streamed_text_and_ends_with_done() {
    let (state, _dir, _path) = ready_state(settings());
    for (path, request) in [
        (
            "/v1/completions",
            json!({"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 16, "temperature": 0}),
        ),
    ] {
        let whole = post(&state, path, &request).await.json();
        let mut streaming = request.clone();
        streaming["stream"] = json!(true);
        streaming["stream_options"] = json!({"include_usage": true});
        let reply = post(&state, path, &streaming).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let events = sse_data(&reply.text());
        assert_eq!(
            events.last().map(String::as_str),
            Some("[DONE]"),
            "{events:?}"
        );
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let text: String = chunks
            .iter()
            .filter_map(|c| {
                let choice = &c["choices"][0];
                choice["text"]
                    .as_str()
                    .or_else(|| choice["delta"]["content"].as_str())
                    .map(str::to_string)
            })
            .collect();
        let expected = whole["choices"][0]["text"]
            .as_str()
            .or_else(|| whole["choices"][0]["message"]["content"].as_str())
            .unwrap();
        assert_eq!(text, expected, "{path}");
        let last = chunks.last().unwrap();
        assert_eq!(
            last["choices"][0]["finish_reason"],
            whole["choices"][0]["finish_reason"]
        );
        assert_eq!(last["usage"], whole["usage"]);
    }
}

#[tokio::test]
async fn stop_strings_cut_the_text_before_the_match() {
    let (state, _dir, _path) = ready_state(settings());
    let request = json!({"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0});
    let full = post(&state, "/v1/completions", &request).await.json();
    let text = full["choices"][0]["text"].as_str().unwrap().to_string();
    let Some((cut, _)) = text.char_indices().nth(text.chars().count() / 2) else {
        return;
    };
    let stop: String = text[cut..].chars().take(2).collect();
    let mut stopped = request.clone();
    stopped["stop"] = json!([stop]);
    let reply = post(&state, "/v1/completions", &stopped).await.json();
    let expected = &text[..text.find(&stop).unwrap()];
    assert_eq!(reply["choices"][0]["text"], expected);
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn classify_scores_every_label_by_its_likelihood() {
    let (state, _dir, path) = ready_state(settings());
    let labels = ["normal", "anomaly", "needs review"];
    let input = "CPU at 99% for ten minutes";
    let reply = post(
        &state,
        "/v1/classify",
        &json!({"input": input, "labels": labels}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let body = reply.json();
    let ranked = body["labels"].as_array().unwrap();
    assert_eq!(ranked.len(), labels.len());
    let probabilities: Vec<f64> = ranked
        .iter()
        .map(|l| l["probability"].as_f64().unwrap())
        .collect();
    assert!((probabilities.iter().sum::<f64>() - 1.0).abs() < 1e-6);
    assert!(probabilities.windows(2).all(|w| w[0] >= w[1]), "best first");
    for label in labels {
        assert!(ranked.iter().any(|l| l["label"] == label), "{label}");
    }
    assert_eq!(body["label"], ranked[0]["label"]);

    // The score of a multi-token label is the sum of its tokens' log-probabilities.
    let model = load_direct(&path);
    let tokenizer = model.tokenizer().unwrap();
    let prompt = tokenizer.encode(
        &classification_prompt(input),
        tokenizer.add_bos_default(),
        false,
    );
    let label_tokens = tokenizer.encode(" needs review", false, false);
    let mut session = Session::new(&model, model.context_length()).unwrap();
    let mut logits = session.feed(&prompt).unwrap().to_vec();
    let mut expected = 0.0f64;
    for &token in &label_tokens {
        expected += f64::from(logprob(&logits, token).unwrap());
        logits = session.feed(&[token]).unwrap().to_vec();
    }
    let served = ranked
        .iter()
        .find(|l| l["label"] == "needs review")
        .unwrap()["logprob"]
        .as_f64()
        .unwrap();
    assert!(
        (served - expected).abs() < 1e-3 * expected.abs().max(1.0),
        "served {served}, direct {expected}"
    );
}

#[tokio::test]
async fn bad_input_gets_a_4xx_with_the_openai_error_shape() {
    let (state, _dir, _path) = ready_state(settings());
    let long_prompt = "lorem ipsum dolor ".repeat(400);
    let cases: Vec<(&str, Vec<u8>, u16, Option<&str>)> = vec![
        ("/v1/completions", b"{\"prompt\": ".to_vec(), 400, None),
        (
            "/v1/completions",
            br#"{"prompt": "x", "max_tokens": "ten"}"#.to_vec(),
            400,
            Some("max_tokens"),
        ),
        (
            "/v1/completions",
            br#"{"prompt": "x", "max_tokens": 0}"#.to_vec(),
            400,
            Some("max_tokens"),
        ),
        (
            "/v1/completions",
            br#"{"prompt": "x", "max_tokens": -4}"#.to_vec(),
            400,
            Some("max_tokens"),
        ),
        (
            "/v1/completions",
            br#"{"prompt": "x", "max_tokens": 100000}"#.to_vec(),
            400,
            Some("max_tokens"),
        ),
        (
            "/v1/completions",
            br#"{"prompt": "x", "temperature": -1}"#.to_vec(),
            400,
            Some("temperature"),
        ),
        (
            "/v1/completions",
            br#"{"prompt": "x", "top_p": 0}"#.to_vec(),
            400,
            Some("top_p"),
        ),
        (
            "/v1/completions",
            br#"{"prompt": "x", "stop": [""]}"#.to_vec(),
            400,
            Some("stop"),
        ),
        (
            "/v1/completions",
            br#"{"prompt": "x", "n": 3}"#.to_vec(),
            400,
            Some("n"),
        ),
        (
            "/v1/completions",
            br#"{"max_tokens": 3}"#.to_vec(),
            400,
            Some("prompt"),
        ),
        (
            "/v1/completions",
            json!({"prompt": long_prompt}).to_string().into_bytes(),
            400,
            Some("prompt"),
        ),
        (
            "/v1/completions",
            b"{\"prompt\": \"\xff\xfe\"}".to_vec(),
            400,
            None,
        ),
        ("/v1/completions", vec![b' '; 2 << 20], 413, None),
        (
            "/v1/chat/completions",
            br#"{"messages": []}"#.to_vec(),
            400,
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            br#"{"messages": [{"role": "wizard", "content": "hi"}]}"#.to_vec(),
            400,
            Some("messages[0].role"),
        ),
        (
            "/v1/chat/completions",
            br#"{"messages": "hi"}"#.to_vec(),
            400,
            Some("messages"),
        ),
        (
            "/v1/classify",
            br#"{"input": "x", "labels": []}"#.to_vec(),
            400,
            Some("labels"),
        ),
        (
            "/v1/classify",
            br#"{"input": "x", "labels": ["a", " "]}"#.to_vec(),
            400,
            Some("labels[1]"),
        ),
        (
            "/v1/classify",
            br#"{"input": 5, "labels": ["a"]}"#.to_vec(),
            400,
            Some("input"),
        ),
    ];
    for (path, body, status, param) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
        let reply = send(&state, Method::POST, path, body).await;
        assert_eq!(
            reply.status.as_u16(),
            status,
            "{path} {shown}: {}",
            reply.text()
        );
        let error = assert_error_shape(&reply);
        if let Some(param) = param {
            assert_eq!(error["param"], param, "{path} {shown}: {error}");
        }
    }
    let context = post(
        &state,
        "/v1/completions",
        &json!({"prompt": "word ".repeat(2000)}),
    )
    .await;
    assert_eq!(
        assert_error_shape(&context)["code"],
        "context_length_exceeded"
    );
    let wrong_method = get(&state, "/v1/completions").await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_error_shape(&wrong_method);
    let unknown = get(&state, "/v2/nothing").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_error_shape(&unknown);
    // The server still serves after all of that.
    let fine = post(
        &state,
        "/v1/completions",
        &json!({"prompt": "ok", "max_tokens": 2}),
    )
    .await;
    assert_eq!(fine.status, StatusCode::OK);
}

/// Completions of `prompts` sent at once, greedy unless `sampled` says which one samples.
async fn completions_at_once(
    state: &AppState,
    prompts: &[String],
    sampled: Option<usize>,
) -> Vec<Value> {
    let mut tasks = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let state = state.clone();
        let temperature = if sampled == Some(i) { 0.8 } else { 0.0 };
        let request =
            json!({"prompt": prompt, "max_tokens": 24, "temperature": temperature, "seed": 5});
        tasks.push(tokio::spawn(async move {
            post(&state, "/v1/completions", &request).await
        }));
    }
    let mut texts = Vec::new();
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        texts.push(reply.json()["choices"][0]["text"].clone());
    }
    texts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_greedy_streams_generate_what_each_generates_alone() {
    // Batches of ten or more greedy sequences take the output layer's exact-argmax product
    // where the CPU has AVX-512 BF16; a sampling sequence in the batch switches it off.
    let (state, _dir, _path) = ready_state(ServerSettings {
        max_sequences: 16,
        threads: 2,
        ..settings()
    });
    let prompts: Vec<String> = (0..16)
        .map(|i| format!("Stream {i} reports that"))
        .collect();
    let mut alone = Vec::new();
    for prompt in &prompts {
        alone.extend(completions_at_once(&state, std::slice::from_ref(prompt), None).await);
    }
    assert_eq!(completions_at_once(&state, &prompts, None).await, alone);
    let mixed = completions_at_once(&state, &prompts, Some(3)).await;
    for (i, (text, alone)) in mixed.iter().zip(&alone).enumerate() {
        if i != 3 {
            assert_eq!(text, alone, "greedy stream {i} beside a sampling one");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_requests_complete_and_show_in_the_metrics() {
    let (state, _dir, _path) = ready_state(settings());
    let prompts: Vec<String> = (0..8).map(|i| format!("Request number {i} says")).collect();
    let mut tasks = Vec::new();
    for prompt in &prompts {
        let state = state.clone();
        let request = json!({"prompt": prompt, "max_tokens": 10, "temperature": 0});
        tasks.push(tokio::spawn(async move {
            post(&state, "/v1/completions", &request).await
        }));
    }
    let mut concurrent = Vec::new();
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        concurrent.push(reply.json()["choices"][0]["text"].clone());
    }
    // Batching with other sequences must not change what a sequence generates.
    for (prompt, text) in prompts.iter().zip(&concurrent) {
        let alone = post(
            &state,
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 10, "temperature": 0}),
        )
        .await
        .json();
        assert_eq!(&alone["choices"][0]["text"], text, "{prompt}");
    }
    let metrics = get(&state, "/metrics").await.text();
    assert!(
        metrics
            .contains("acme_infer_requests_total{endpoint=\"/v1/completions\",status=\"200\"} 16"),
        "{metrics}"
    );
    assert!(metrics.contains("acme_infer_time_to_first_token_seconds_count 16"));
    let generated: u64 = metric_value(&metrics, "acme_infer_tokens_generated_total");
    assert!(generated >= 16, "{generated}");
    // The scheduler updates the gauge just after sending the last reply.
    poll(Duration::from_secs(10), || async {
        let metrics = get(&state, "/metrics").await.text();
        (metric_value(&metrics, "acme_infer_active_sequences") == 0
            && metric_value(&metrics, "acme_infer_queue_depth") == 0)
            .then_some(())
    })
    .await;
    assert!(metrics.contains("acme_infer_decode_tokens_per_second "));
    assert!(metrics.contains("acme_infer_prefill_tokens_per_second "));
}

fn metric_value(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_disconnected_stream_frees_its_sequence() {
    let (state, _dir, _path) = ready_state(settings());
    let request = axum::http::Request::builder()
        .method(Method::POST)
        .uri("/v1/completions")
        .body(axum::body::Body::from(
            json!({"prompt": "A long tale", "max_tokens": 32, "stream": true}).to_string(),
        ))
        .unwrap();
    let response = tower::ServiceExt::oneshot(server::app(state.clone()), request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    drop(response);
    poll(Duration::from_secs(10), || async {
        let metrics = get(&state, "/metrics").await.text();
        (metric_value(&metrics, "acme_infer_active_sequences") == 0).then_some(())
    })
    .await;
    let after = post(
        &state,
        "/v1/completions",
        &json!({"prompt": "next", "max_tokens": 2}),
    )
    .await;
    assert_eq!(after.status, StatusCode::OK);
}

/// SplitMix64, so the fuzz loop is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 2 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => json!(rng.next() as i64 >> rng.below(64)),
        3 => json!(f64::from_bits(rng.next()).clamp(-1e9, 1e9)),
        4 => json!(["", "x", "hello world", "<|eot_id|>", "é🦀", "\u{0}"][rng.below(6)]),
        5 => json!(rng.below(5) as i64 - 1),
        6 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let keys = [
                "role",
                "content",
                "prompt",
                "labels",
                "input",
                "max_tokens",
                "stop",
            ];
            Value::Object(
                (0..rng.below(4))
                    .map(|_| {
                        (
                            keys[rng.below(keys.len())].to_string(),
                            random_value(rng, depth + 1),
                        )
                    })
                    .collect(),
            )
        }
    }
}

#[tokio::test]
async fn fuzzed_bodies_never_get_a_5xx() {
    let (state, _dir, _path) = ready_state(server::ServerSettings {
        max_tokens: 4,
        ..settings()
    });
    let valid = [
        (
            "/v1/completions",
            json!({"prompt": "hi", "max_tokens": 3, "temperature": 0.5, "top_p": 0.9, "seed": 1, "stop": ["\n"], "stream": false}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": true}),
        ),
        (
            "/v1/classify",
            json!({"input": "disk full", "labels": ["normal", "anomaly"]}),
        ),
    ];
    let fields = [
        "prompt",
        "messages",
        "max_tokens",
        "temperature",
        "top_p",
        "seed",
        "stop",
        "stream",
        "labels",
        "input",
        "n",
    ];
    let mut rng = Rng(0x5eed);
    for round in 0..150 {
        let (path, template) = &valid[round % valid.len()];
        let body: Vec<u8> = match rng.below(4) {
            0 => {
                let mut body = template.clone();
                body[fields[rng.below(fields.len())]] = random_value(&mut rng, 0);
                body.to_string().into_bytes()
            }
            1 => {
                let mut bytes = template.to_string().into_bytes();
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(bytes.len());
                    bytes[at] = rng.next() as u8;
                }
                bytes
            }
            2 => {
                let bytes = template.to_string().into_bytes();
                bytes[..rng.below(bytes.len())].to_vec()
            }
            _ => (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
        };
        let shown = String::from_utf8_lossy(&body).into_owned();
        let reply = send(&state, Method::POST, path, body).await;
        assert!(
            reply.status.as_u16() < 500,
            "{path} {shown:?} -> {} {}",
            reply.status,
            reply.text()
        );
        if reply.status.is_client_error() {
            assert_error_shape(&reply);
        }
    }
    let health = get(&state, "/health").await;
    assert_eq!(health.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_503_with_retry_after_and_the_rest_complete() {
    let (state, _dir, _path) = ready_state(server::ServerSettings {
        max_tokens: 200,
        max_sequences: 1,
        queue_capacity: 1,
        ..settings()
    });
    let request = json!({"prompt": "Overload", "max_tokens": 200, "temperature": 0});
    // With one sequence and one queue place, a burst must overflow; how much of the burst
    // gets in depends on timing, so bursts repeat until one overflows.
    let rejected = poll(Duration::from_secs(30), || {
        let state = state.clone();
        let request = request.clone();
        async move {
            let burst: Vec<_> = (0..12)
                .map(|_| {
                    let state = state.clone();
                    let request = request.clone();
                    tokio::spawn(async move { post(&state, "/v1/completions", &request).await })
                })
                .collect();
            let mut rejected = None;
            for task in burst {
                let reply = task.await.unwrap();
                match reply.status {
                    StatusCode::OK => {}
                    StatusCode::SERVICE_UNAVAILABLE => rejected = Some(reply),
                    other => panic!("unexpected {other}: {}", reply.text()),
                }
            }
            rejected
        }
    })
    .await;
    assert_eq!(rejected.headers["retry-after"], "1");
    assert_eq!(assert_error_shape(&rejected)["code"], "queue_full");
    let after = post(
        &state,
        "/v1/completions",
        &json!({"prompt": "calm", "max_tokens": 2}),
    )
    .await;
    assert_eq!(after.status, StatusCode::OK);
}
