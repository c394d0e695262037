//! The HTTP surface: routes, request/response types of the OpenAI-style API, request
//! validation, and the per-request log line and metrics. Handlers never run the model; they
//! validate, tokenize, queue a job for the scheduler and relay its events.

use std::convert::Infallible;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bitnet::chat::{self, ChatMessage};
use bitnet::sampler::{Sampler, SamplerConfig, SamplerError, StopStrings};
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::error::{ApiError, ApiJson, InternalDetail, MAX_BODY_BYTES};
use crate::scheduler::{Classification, Event, FinishReason, Generation, Job, SubmitError};
use crate::state::{AppState, Ready};

/// The most stop strings a request may give (OpenAI's limit).
const MAX_STOP_STRINGS: usize = 4;
/// The most labels one classification may score.
const MAX_LABELS: usize = 64;

/// The router with every endpoint, the body limit and the request log.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/classify", post(classify))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Writes one line to stdout; a closed stdout must not take the server down.
pub fn log_line(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}

/// One log line per request (method, path, status, milliseconds) and the request metrics.
/// Only a 5xx's internal detail is logged with the word ERROR, which the rollout tool's log
/// gate greps for.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status();
    if let Some(InternalDetail(detail)) = response.extensions().get::<InternalDetail>() {
        log_line(&format!("ERROR {method} {path}: {detail}"));
    }
    if state.settings().log_requests {
        log_line(&format!(
            "{method} {path} {} {:.1}ms",
            status.as_u16(),
            elapsed.as_secs_f64() * 1e3
        ));
    }
    state
        .metrics()
        .record_request(&endpoint, status.as_u16(), elapsed);
    response
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "no endpoint at {} {}; see /v1/models, /v1/completions, /v1/chat/completions, /v1/classify, /health, /metrics",
        request.method(),
        request.uri().path()
    ))
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: Some("method_not_allowed"),
        ..ApiError::invalid(
            None,
            format!(
                "{} is not allowed on {}; the /v1 endpoints take POST, the others GET",
                request.method(),
                request.uri().path()
            ),
        )
    }
}

async fn health(State(state): State<AppState>) -> Response {
    if state.is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        )
            .into_response();
    }
    match state.ready() {
        None => {
            let body = match state.download().snapshot() {
                Some((done, total)) => json!({
                    "status": "loading",
                    "phase": "downloading",
                    "bytes_done": done,
                    "bytes_total": total,
                }),
                None => json!({"status": "loading"}),
            };
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
        Some(ready) => {
            let mut body = serde_json::to_value(&ready.identity).unwrap_or_else(|_| json!({}));
            body["status"] = json!("ok");
            (StatusCode::OK, Json(body)).into_response()
        }
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics().render(),
    )
        .into_response()
}

/// The ready model, or 503 while loading or draining.
fn serving(state: &AppState) -> Result<&Ready, ApiError> {
    if state.is_draining() {
        return Err(ApiError::unavailable(
            "draining",
            "the server is shutting down; send the request to another instance",
            1,
        ));
    }
    state.ready().ok_or_else(|| {
        ApiError::unavailable(
            "loading",
            "the model is still loading; retry when /health returns 200",
            5,
        )
    })
}

async fn models(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let ready = serving(&state)?;
    Ok(Json(json!({
        "object": "list",
        "data": [{
            "id": ready.identity.model,
            "object": "model",
            "created": 0,
            "owned_by": "acme",
        }],
    })))
}

/// `"text"` or `["text"]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(text) => vec![text],
            OneOrMany::Many(texts) => texts,
        }
    }
}

/// The body of a completion or chat completion. One struct for both (rather than a
/// flattened common part) so a wrongly typed field is named in the error's `param`. Unknown
/// fields are ignored, as OpenAI clients send many this server has no use for.
#[derive(Deserialize)]
struct GenerationRequest {
    model: Option<String>,
    /// Completions only.
    prompt: Option<OneOrMany>,
    /// Chat completions only.
    messages: Option<Vec<RequestMessage>>,
    max_tokens: Option<i64>,
    /// The newer OpenAI name of `max_tokens` for chat.
    max_completion_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<OneOrMany>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    n: Option<i64>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
struct RequestMessage {
    role: String,
    content: MessageContent,
}

/// A message's content: a string, or OpenAI's list of `{"type":"text","text":...}` parts.
#[derive(Deserialize)]
#[serde(untagged)]
enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Deserialize)]
struct ClassifyRequest {
    input: String,
    labels: Vec<String>,
}

/// Which OpenAI response shape to produce.
#[derive(Clone, Copy, PartialEq)]
enum Flavor {
    Completion,
    Chat,
}

async fn completions(
    State(state): State<AppState>,
    ApiJson(mut request): ApiJson<GenerationRequest>,
) -> Result<Response, ApiError> {
    let ready = serving(&state)?;
    let Some(prompt) = request.prompt.take() else {
        return Err(ApiError::invalid(
            Some("prompt"),
            "prompt is missing; send {\"prompt\": \"text to continue\"}",
        ));
    };
    let mut prompts = prompt.into_vec();
    if prompts.len() != 1 {
        return Err(ApiError::invalid(
            Some("prompt"),
            format!(
                "prompt must be one string (or a list of exactly one); {} were given",
                prompts.len()
            ),
        ));
    }
    let prompt_text = prompts.remove(0);
    let tokenizer = &ready.tokenizer;
    // Control tokens written in a raw prompt are honoured, so a client can spell out the
    // chat format itself.
    let prompt = tokenizer.encode(&prompt_text, tokenizer.add_bos_default(), true);
    let stop_ids = tokenizer.eog_ids().to_vec();
    let model = request
        .model
        .take()
        .unwrap_or_else(|| ready.identity.model.clone());
    generate(
        &state,
        ready,
        prompt,
        "prompt",
        stop_ids,
        request,
        Flavor::Completion,
        model,
    )
    .await
}

async fn chat_completions(
    State(state): State<AppState>,
    ApiJson(mut request): ApiJson<GenerationRequest>,
) -> Result<Response, ApiError> {
    let ready = serving(&state)?;
    let request_messages = request.messages.take().unwrap_or_default();
    if request_messages.is_empty() {
        return Err(ApiError::invalid(
            Some("messages"),
            "messages is missing or empty; send at least one {\"role\": \"user\", \"content\": ...} message",
        ));
    }
    let mut messages = Vec::with_capacity(request_messages.len());
    for (index, message) in request_messages.into_iter().enumerate() {
        let content = match message.content {
            MessageContent::Text(text) => text,
            MessageContent::Parts(parts) => {
                let mut text = String::new();
                for (part_index, part) in parts.into_iter().enumerate() {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(part_text)) => text.push_str(&part_text),
                        _ => return Err(ApiError::invalid(
                            Some(&format!("messages[{index}].content[{part_index}]")),
                            "only {\"type\": \"text\", \"text\": ...} content parts are supported",
                        )),
                    }
                }
                text
            }
        };
        messages.push(ChatMessage::new(message.role, content));
    }
    let prompt = chat::encode(&ready.tokenizer, &messages, true).map_err(|e| {
        let param = match &e {
            chat::ChatError::UnknownRole { index, .. } => Some(format!("messages[{index}].role")),
            _ => None,
        };
        ApiError::invalid(param.as_deref(), e.to_string())
    })?;
    let stop_ids = chat::stop_token_ids(&ready.tokenizer);
    let model = request
        .model
        .take()
        .unwrap_or_else(|| ready.identity.model.clone());
    generate(
        &state,
        ready,
        prompt,
        "messages",
        stop_ids,
        request,
        Flavor::Chat,
        model,
    )
    .await
}

/// Checks the sampling fields and the prompt length against the limits.
fn validate(
    state: &AppState,
    ready: &Ready,
    prompt: &[u32],
    prompt_param: &str,
    sampling: &GenerationRequest,
) -> Result<(usize, Sampler, StopStrings), ApiError> {
    let limit = state.settings().max_tokens;
    if let Some(n) = sampling.n {
        if n != 1 {
            return Err(ApiError::invalid(
                Some("n"),
                format!("n = {n} is not supported; this server returns exactly one choice (n = 1)"),
            ));
        }
    }
    let (max_param, requested) = match (sampling.max_completion_tokens, sampling.max_tokens) {
        (Some(value), _) => ("max_completion_tokens", Some(value)),
        (None, value) => ("max_tokens", value),
    };
    let max_tokens = match requested {
        None => limit,
        Some(value) if value <= 0 => {
            return Err(ApiError::invalid(
                Some(max_param),
                format!("{max_param} = {value}; it must be at least 1"),
            ))
        }
        Some(value) if value as u64 > limit as u64 => {
            return Err(ApiError::invalid(
                Some(max_param),
                format!("{max_param} = {value} is above this server's limit of {limit} (MODEL_MAX_TOKENS); ask for fewer tokens"),
            ))
        }
        Some(value) => value as usize,
    };
    let context = ready.scheduler.max_positions();
    if prompt.is_empty() {
        return Err(ApiError::invalid(
            Some(prompt_param),
            format!("{prompt_param} is empty; send some text"),
        ));
    }
    if prompt.len() >= context {
        return Err(ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::invalid(
                Some(prompt_param),
                format!(
                    "{prompt_param} is {} tokens, but the model's context holds {context} tokens including the reply; shorten it",
                    prompt.len()
                ),
            )
        });
    }
    let defaults = SamplerConfig::default();
    let sampler = Sampler::new(SamplerConfig {
        temperature: sampling.temperature.unwrap_or(defaults.temperature),
        top_p: sampling.top_p.unwrap_or(defaults.top_p),
        seed: sampling.seed.unwrap_or_else(random_seed),
        ..defaults
    })
    .map_err(|e| sampler_error(&e))?;
    let stops = sampling
        .stop
        .as_ref()
        .map(|s| match s {
            OneOrMany::One(text) => vec![text.clone()],
            OneOrMany::Many(texts) => texts.clone(),
        })
        .unwrap_or_default();
    if stops.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid(
            Some("stop"),
            format!(
                "stop has {} strings; at most {MAX_STOP_STRINGS} are allowed",
                stops.len()
            ),
        ));
    }
    let stop_strings = StopStrings::new(stops).map_err(|e| sampler_error(&e))?;
    Ok((max_tokens, sampler, stop_strings))
}

fn sampler_error(error: &SamplerError) -> ApiError {
    let param = match error {
        SamplerError::InvalidConfig { field, .. } => Some(*field),
        SamplerError::EmptyStopString { .. } => Some("stop"),
        _ => None,
    };
    ApiError::invalid(param, error.to_string())
}

/// A seed for requests that give none; the clock is enough to make replies vary.
fn random_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn queue_error(error: SubmitError) -> ApiError {
    match error {
        SubmitError::QueueFull => ApiError::unavailable(
            "queue_full",
            "the server is at capacity (request queue full); retry after the Retry-After delay",
            1,
        ),
        SubmitError::Stopped => ApiError::internal("the scheduler thread has stopped"),
    }
}

#[allow(clippy::too_many_arguments)]
async fn generate(
    state: &AppState,
    ready: &Ready,
    prompt: Vec<u32>,
    prompt_param: &str,
    stop_ids: Vec<u32>,
    sampling: GenerationRequest,
    flavor: Flavor,
    model: String,
) -> Result<Response, ApiError> {
    let (max_tokens, sampler, stop_strings) =
        validate(state, ready, &prompt, prompt_param, &sampling)?;
    let (events, receiver) = mpsc::unbounded_channel();
    ready
        .scheduler
        .submit(Job::Generate(Generation {
            prompt,
            max_tokens,
            sampler,
            stop_strings,
            stop_ids,
            events,
            received: Instant::now(),
        }))
        .map_err(queue_error)?;
    let id = format!(
        "{}-{:x}",
        if flavor == Flavor::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        },
        random_seed()
    );
    let reply = Reply {
        id,
        model,
        created: unix_time(),
        flavor,
    };
    if sampling.stream {
        let include_usage = sampling.stream_options.is_some_and(|o| o.include_usage);
        Ok(Sse::new(reply.stream(receiver, include_usage)).into_response())
    } else {
        reply.collect(receiver).await
    }
}

/// The identity of one response and how to shape it.
struct Reply {
    id: String,
    model: String,
    created: u64,
    flavor: Flavor,
}

fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

impl Reply {
    /// Waits for the whole generation and answers with one JSON body.
    async fn collect(
        self,
        mut receiver: mpsc::UnboundedReceiver<Event>,
    ) -> Result<Response, ApiError> {
        {
            let mut text = String::new();
            loop {
                match receiver.recv().await {
                    Some(Event::Text(piece)) => text.push_str(&piece),
                    Some(Event::Done {
                        finish_reason,
                        prompt_tokens,
                        completion_tokens,
                    }) => {
                        let choice = match self.flavor {
                            Flavor::Completion => json!({
                                "index": 0, "text": text, "logprobs": null,
                                "finish_reason": finish_reason.as_str(),
                            }),
                            Flavor::Chat => json!({
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": finish_reason.as_str(),
                            }),
                        };
                        return Ok(Json(json!({
                            "id": self.id,
                            "object": self.object(false),
                            "created": self.created,
                            "model": self.model,
                            "choices": [choice],
                            "usage": usage(prompt_tokens, completion_tokens),
                        }))
                        .into_response());
                    }
                    Some(Event::Failed(detail)) => return Err(ApiError::internal(detail)),
                    None => {
                        return Err(ApiError::internal(
                            "the scheduler dropped a request without finishing it",
                        ))
                    }
                }
            }
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.flavor, chunk) {
            (Flavor::Completion, _) => "text_completion",
            (Flavor::Chat, false) => "chat.completion",
            (Flavor::Chat, true) => "chat.completion.chunk",
        }
    }

    fn chunk(&self, text: Option<&str>, finish_reason: Option<FinishReason>, first: bool) -> Value {
        let finish = finish_reason.map(FinishReason::as_str);
        let choice = match self.flavor {
            Flavor::Completion => json!({
                "index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish,
            }),
            Flavor::Chat => {
                let mut delta = json!({});
                if first {
                    delta["role"] = json!("assistant");
                }
                if let Some(text) = text {
                    delta["content"] = json!(text);
                }
                json!({"index": 0, "delta": delta, "finish_reason": finish})
            }
        };
        json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        })
    }

    /// Server-sent events: one chunk per text piece, a final chunk with the finish reason
    /// (and usage when asked), then `[DONE]`. Dropping the stream (client gone) drops the
    /// receiver, which the scheduler notices and frees the sequence.
    fn stream(
        self,
        receiver: mpsc::UnboundedReceiver<Event>,
        include_usage: bool,
    ) -> impl Stream<Item = Result<SseEvent, Infallible>> {
        #[derive(PartialEq)]
        enum Phase {
            Running { first: bool },
            Terminate,
            Finished,
        }
        stream::unfold(
            (self, receiver, Phase::Running { first: true }),
            move |(reply, mut receiver, phase)| async move {
                let first = match phase {
                    Phase::Running { first } => first,
                    Phase::Terminate => {
                        let done = SseEvent::default().data("[DONE]");
                        return Some((Ok(done), (reply, receiver, Phase::Finished)));
                    }
                    Phase::Finished => return None,
                };
                let data = |value: Value| SseEvent::default().data(value.to_string());
                let (event, next) = match receiver.recv().await {
                    Some(Event::Text(piece)) => (
                        data(reply.chunk(Some(&piece), None, first)),
                        Phase::Running { first: false },
                    ),
                    Some(Event::Done {
                        finish_reason,
                        prompt_tokens,
                        completion_tokens,
                    }) => {
                        let mut last = reply.chunk(None, Some(finish_reason), first);
                        if include_usage {
                            last["usage"] = usage(prompt_tokens, completion_tokens);
                        }
                        (data(last), Phase::Terminate)
                    }
                    Some(Event::Failed(detail)) => {
                        log_line(&format!("ERROR streamed generation failed: {detail}"));
                        (data(stream_error()), Phase::Finished)
                    }
                    None => {
                        log_line(
                            "ERROR the scheduler dropped a streamed request without finishing it",
                        );
                        (data(stream_error()), Phase::Finished)
                    }
                };
                Some((Ok(event), (reply, receiver, next)))
            },
        )
    }
}

/// The error object sent in place of a chunk when a stream fails after it started.
fn stream_error() -> Value {
    json!({"error": {
        "message": "the server failed to complete the request; it has been logged",
        "type": "server_error", "param": null, "code": null,
    }})
}

async fn classify(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ClassifyRequest>,
) -> Result<Json<Value>, ApiError> {
    let ready = serving(&state)?;
    if request.labels.is_empty() {
        return Err(ApiError::invalid(
            Some("labels"),
            "labels is empty; give at least one label, e.g. [\"normal\", \"anomaly\"]",
        ));
    }
    if request.labels.len() > MAX_LABELS {
        return Err(ApiError::invalid(
            Some("labels"),
            format!(
                "labels has {} entries; at most {MAX_LABELS} are allowed",
                request.labels.len()
            ),
        ));
    }
    let tokenizer = &ready.tokenizer;
    let prompt = tokenizer.encode(
        &classification_prompt(&request.input),
        tokenizer.add_bos_default(),
        false,
    );
    let mut labels = Vec::with_capacity(request.labels.len());
    for (index, label) in request.labels.iter().enumerate() {
        if label.trim().is_empty() {
            return Err(ApiError::invalid(
                Some(&format!("labels[{index}]")),
                format!("labels[{index}] is empty; every label needs some text"),
            ));
        }
        labels.push(tokenizer.encode(&format!(" {}", label.trim()), false, false));
    }
    let longest = labels.iter().map(Vec::len).max().unwrap_or(0);
    let context = ready.scheduler.max_positions();
    if prompt.len() + longest > context {
        return Err(ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::invalid(
                Some("input"),
                format!(
                    "input and the longest label are {} tokens, but the model's context holds {context}; shorten the input",
                    prompt.len() + longest
                ),
            )
        });
    }
    let (reply, answer) = oneshot::channel();
    ready
        .scheduler
        .submit(Job::Classify(Classification {
            prompt,
            labels,
            reply,
        }))
        .map_err(queue_error)?;
    let scores = answer
        .await
        .map_err(|_| ApiError::internal("the scheduler dropped a classification"))?
        .map_err(ApiError::internal)?;
    let probabilities = softmax(&scores);
    let mut ranked: Vec<Value> = request
        .labels
        .iter()
        .zip(&scores)
        .zip(&probabilities)
        .map(|((label, logprob), probability)| {
            json!({"label": label, "probability": probability, "logprob": logprob})
        })
        .collect();
    ranked.sort_by(|a, b| {
        b["probability"]
            .as_f64()
            .unwrap_or(0.0)
            .total_cmp(&a["probability"].as_f64().unwrap_or(0.0))
    });
    Ok(Json(json!({
        "object": "classification",
        "model": ready.identity.model,
        "label": ranked.first().map_or(Value::Null, |best| best["label"].clone()),
        "labels": ranked,
    })))
}

/// The text a label is scored after: the input, then a cue that a category follows.
pub fn classification_prompt(input: &str) -> String {
    format!("Text: {}\nCategory:", input.trim())
}

/// Probabilities from log-likelihoods, computed stably in f64.
fn softmax(logprobs: &[f64]) -> Vec<f64> {
    let max = logprobs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = logprobs.iter().map(|l| (l - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    weights.iter().map(|w| w / total).collect()
}
