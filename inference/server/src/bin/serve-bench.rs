//! `serve-bench`: throughput and latency of `acme-infer` through real HTTP on loopback.
//! Serves a model in-process, then runs 1, 4 and 16 concurrent streamed generations and a
//! series of classify requests, and prints a table.
//!
//! For each concurrency it reports two aggregate rates. *End to end* is completion tokens over
//! the wall time from sending the requests to the last reply, so it includes every prompt's
//! prefill. *Decode* leaves the prefills out: it divides the tokens generated after each
//! sequence's first (which its prefill yields) by that wall time less the seconds the server
//! spent in prefill passes (`acme_infer_prefill_seconds_total` from `/metrics`, read before and
//! after), so HTTP, scheduling and sampling stay in, as llama.cpp's batched-bench separates
//! prompt processing from generation. Prompts are built to a fixed number of tokens of the
//! model's own tokenizer (`--prompt-tokens`), and the classify input to 64 tokens, so the
//! figures do not depend on how finely a vocabulary splits the text. Each level runs
//! `--repeat` times (in turn with the others) and the table shows medians with their range.
//!
//! `serve-bench [--model FILE | --size tiny|small|2b4t] [--tokens N] [--prompt-tokens N] [--streams 1,4,16] [--repeat N] [--classify-runs N] [--threads N] [--int8-output]`

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitnet::generate::{SyntheticModel, SyntheticShape};
use bitnet::tokenizer::Tokenizer;
use bitnet::WeightFormat;
use serde_json::{json, Value};
use server::{app, classification_prompt, AppState, ServerSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const USAGE: &str = "usage: serve-bench [--model FILE | --size tiny|small|2b4t] [--tokens N] [--prompt-tokens N] [--streams 1,4,16] [--repeat N] [--classify-runs N] [--threads N] [--int8-output]";
/// Tokens of the classify request's input text (the "64-token input").
const CLASSIFY_INPUT_TOKENS: usize = 64;
/// Words the prompts and the classify input are cut from.
const CORPUS: &str = "The disk usage on node seven rose from forty to ninety percent within an hour while request latency doubled and the error log filled with timeouts from the storage service which also restarted twice without a deploy or any configuration change being recorded by the operators on call that night so the quarterly report summarises revenue growth churn and the regional expansion plans for the next two years";

struct Args {
    model: Option<PathBuf>,
    size: String,
    tokens: usize,
    prompt_tokens: usize,
    streams: Vec<usize>,
    repeat: usize,
    classify_runs: usize,
    threads: usize,
    int8_output: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        model: None,
        size: "small".into(),
        tokens: 64,
        prompt_tokens: 16,
        streams: vec![1, 4, 16],
        repeat: 3,
        classify_runs: 50,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        int8_output: false,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        let mut value = || {
            iter.next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        let number = |text: String| {
            text.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{flag}: {text:?} is not a positive whole number"))
        };
        match flag.as_str() {
            "--model" => args.model = Some(PathBuf::from(value()?)),
            "--size" => args.size = value()?,
            "--tokens" => args.tokens = number(value()?)?,
            "--prompt-tokens" => args.prompt_tokens = number(value()?)?,
            "--repeat" => args.repeat = number(value()?)?,
            "--streams" => {
                args.streams = value()?
                    .split(',')
                    .map(|n| number(n.trim().to_string()))
                    .collect::<Result<_, _>>()?
            }
            "--classify-runs" => args.classify_runs = number(value()?)?,
            "--threads" => args.threads = number(value()?)?,
            "--int8-output" => args.int8_output = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(args)
}

fn shape(size: &str) -> Result<SyntheticShape, String> {
    match size {
        "tiny" => Ok(SyntheticShape::tiny()),
        // Big enough that a decode step is dominated by weights, small enough to build fast.
        "small" => Ok(SyntheticShape {
            layers: 4,
            hidden: 1024,
            heads: 8,
            kv_heads: 4,
            ffn: 2816,
            context_length: 1024,
            ..SyntheticShape::tiny()
        }),
        "2b4t" => Ok(SyntheticShape::bitnet_2b4t()),
        other => Err(format!("--size {other:?}: use tiny, small or 2b4t")),
    }
}

/// Sends one HTTP/1.1 request with `Connection: close` and returns the connection.
async fn send(port: u16, method: &str, path: &str, body: &Value) -> Result<TcpStream, String> {
    let body = body.to_string();
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

/// The status of a response head.
fn status_of(head: &str) -> Result<u16, String> {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "a response without a status".to_string())
}

/// One request; returns status and body text.
async fn http_text(
    port: u16,
    method: &str,
    path: &str,
    body: &Value,
) -> Result<(u16, String), String> {
    let mut stream = send(port, method, path, body).await?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let (head, payload) = text
        .split_once("\r\n\r\n")
        .ok_or("a response without a header end")?;
    Ok((status_of(head)?, payload.to_string()))
}

/// One request; returns status and JSON body.
async fn http(port: u16, method: &str, path: &str, body: &Value) -> Result<(u16, Value), String> {
    let (status, payload) = http_text(port, method, path, body).await?;
    let json = serde_json::from_str(&payload).map_err(|e| format!("{e}: {payload}"))?;
    Ok((status, json))
}

/// The value of an unlabelled sample `name` in the server's Prometheus text.
async fn metric(port: u16, name: &str) -> Result<f64, String> {
    let (status, text) = http_text(port, "GET", "/metrics", &Value::Null).await?;
    if status != 200 {
        return Err(format!("GET /metrics answered {status}"));
    }
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .ok_or_else(|| format!("/metrics has no sample {name}"))
}

/// Text of exactly `tokens` tokens (without BOS) under `tokenizer` where the corpus allows,
/// starting at word `offset` so concurrent prompts differ; returns the text and its count.
fn text_of_tokens(tokenizer: &Tokenizer, tokens: usize, offset: usize) -> (String, usize) {
    let count = |text: &str| tokenizer.encode(text, false, false).len();
    let mut text = String::new();
    for word in CORPUS.split_whitespace().cycle().skip(offset) {
        let longer = if text.is_empty() {
            word.to_string()
        } else {
            format!("{text} {word}")
        };
        if count(&longer) > tokens {
            break;
        }
        text = longer;
    }
    // Top up one character at a time; a character that merges into the previous token adds
    // nothing, so give up after a few tries.
    for _ in 0..8 {
        if count(&text) >= tokens {
            break;
        }
        let longer = format!("{text}.");
        if count(&longer) <= tokens {
            text = longer;
        }
    }
    let n = count(&text);
    (text, n)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Aggregate rates of one concurrency level.
struct Rates {
    completion_tokens: usize,
    prompt_tokens: usize,
    end_to_end: f64,
    decode: f64,
}

/// Sends `prompts` at once as greedy completions of `max_tokens`; returns the completion
/// tokens and the wall time until the last reply.
async fn completions(
    port: u16,
    prompts: &[String],
    max_tokens: usize,
) -> Result<(usize, f64), String> {
    let start = Instant::now();
    let tasks: Vec<_> = prompts
        .iter()
        .map(|prompt| {
            let body = json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0});
            tokio::spawn(async move { http(port, "POST", "/v1/completions", &body).await })
        })
        .collect();
    let mut tokens = 0;
    for task in tasks {
        let (status, body) = task.await.map_err(|e| e.to_string())??;
        if status != 200 {
            return Err(format!("completion failed with {status}: {body}"));
        }
        tokens += body["usage"]["completion_tokens"].as_u64().unwrap_or(0) as usize;
    }
    Ok((tokens, start.elapsed().as_secs_f64()))
}

async fn concurrent(
    port: u16,
    args: &Args,
    tokenizer: &Tokenizer,
    streams: usize,
) -> Result<Rates, String> {
    const PREFILL_SECONDS: &str = "acme_infer_prefill_seconds_total";
    let prompts: Vec<(String, usize)> = (0..streams)
        .map(|i| text_of_tokens(tokenizer, args.prompt_tokens, 3 * i))
        .collect();
    let texts: Vec<String> = prompts.iter().map(|(text, _)| text.clone()).collect();
    let prefill_before = metric(port, PREFILL_SECONDS).await?;
    let (tokens, wall) = completions(port, &texts, args.tokens).await?;
    let prefill = metric(port, PREFILL_SECONDS).await? - prefill_before;
    let generating = wall - prefill;
    Ok(Rates {
        completion_tokens: tokens,
        prompt_tokens: prompts.iter().map(|(_, n)| n).sum(),
        end_to_end: tokens as f64 / wall,
        decode: if generating > 0.0 {
            tokens.saturating_sub(streams) as f64 / generating
        } else {
            f64::NAN
        },
    })
}

async fn run(args: Args) -> Result<(), String> {
    let temp = std::env::temp_dir().join(format!("serve-bench-{}.gguf", std::process::id()));
    let model_path = match &args.model {
        Some(path) => path.clone(),
        None => {
            eprintln!(
                "writing a synthetic {} model to {}",
                args.size,
                temp.display()
            );
            let model = SyntheticModel {
                shape: shape(&args.size)?,
                ..SyntheticModel::tiny(WeightFormat::I2S, 1)
            };
            model.write(&temp).map_err(|e| e.to_string())?;
            temp.clone()
        }
    };
    let state = AppState::new(ServerSettings {
        max_tokens: args.tokens,
        threads: args.threads,
        max_sequences: args.streams.iter().copied().max().unwrap_or(1),
        queue_capacity: 64,
        // The request log would drown the table; results come from the replies.
        log_requests: false,
        int8_output: args.int8_output,
    });
    let loader = state.clone();
    let path = model_path.clone();
    let started = Instant::now();
    tokio::task::spawn_blocking(move || loader.load_model(&path))
        .await
        .map_err(|e| e.to_string())??;
    let load_time = started.elapsed();
    if args.model.is_none() {
        let _ = std::fs::remove_file(&temp);
    }
    let tokenizer: Arc<Tokenizer> = state
        .ready()
        .map(|ready| Arc::clone(&ready.tokenizer))
        .ok_or("the model loaded but the server is not ready")?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    tokio::spawn(async move { axum::serve(listener, app(state)).await });

    println!(
        "model {} loaded in {:.2}s, {} threads, {} tokens per request, prompts of {} tokens",
        model_path.display(),
        load_time.as_secs_f64(),
        args.threads,
        args.tokens,
        args.prompt_tokens
    );
    println!(
        "medians of {} repetitions (min-max); ratios of the medians against the first level",
        args.repeat
    );
    println!(
        "{:<16} {:>14} {:>8} {:>26} {:>26}",
        "streams", "prompt tokens", "tokens", "end to end tok/s", "decode tok/s"
    );
    // Repetitions go round all concurrency levels in turn, so a slow spell of a shared
    // machine spreads over every level instead of landing on one.
    let mut runs: Vec<Vec<Rates>> = args.streams.iter().map(|_| Vec::new()).collect();
    for _ in 0..args.repeat {
        for (level, &streams) in args.streams.iter().enumerate() {
            runs[level].push(concurrent(port, &args, &tokenizer, streams).await?);
        }
    }
    let summary = |rates: &[Rates], pick: fn(&Rates) -> f64| {
        let mut values: Vec<f64> = rates.iter().map(pick).collect();
        values.sort_by(f64::total_cmp);
        let median = values[values.len() / 2];
        (median, values[0], values[values.len() - 1])
    };
    let mut baseline: Option<(f64, f64)> = None;
    for (rates, &streams) in runs.iter().zip(&args.streams) {
        let (e2e, e2e_low, e2e_high) = summary(rates, |r| r.end_to_end);
        let (decode, decode_low, decode_high) = summary(rates, |r| r.decode);
        let ratio = match baseline {
            Some((base_e2e, base_decode)) => {
                format!("  {:.2}x / {:.2}x", e2e / base_e2e, decode / base_decode)
            }
            None => String::new(),
        };
        baseline.get_or_insert((e2e, decode));
        println!(
            "{:<16} {:>14} {:>8} {:>26} {:>26}{ratio}",
            format!("{streams} concurrent"),
            rates[0].prompt_tokens,
            rates[0].completion_tokens,
            format!("{e2e:.1} ({e2e_low:.1}-{e2e_high:.1})"),
            format!("{decode:.1} ({decode_low:.1}-{decode_high:.1})"),
        );
    }

    let (input, input_tokens) = text_of_tokens(&tokenizer, CLASSIFY_INPUT_TOKENS, 0);
    let body = json!({"input": input, "labels": ["normal", "anomaly", "needs review"]});
    let mut latencies = Vec::with_capacity(args.classify_runs);
    for _ in 0..args.classify_runs {
        let started = Instant::now();
        let (status, reply) = http(port, "POST", "/v1/classify", &body).await?;
        if status != 200 {
            return Err(format!("classify failed with {status}: {reply}"));
        }
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let prompt_tokens = tokenizer
        .encode(
            &classification_prompt(&input),
            tokenizer.add_bos_default(),
            true,
        )
        .len();
    println!(
        "classify, {input_tokens}-token input ({prompt_tokens} with the prompt around it, 3 labels): p50 {:.1} ms, p99 {:.1} ms ({} runs)",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        args.classify_runs,
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("serve-bench: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("serve-bench: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("serve-bench: {message}");
            ExitCode::FAILURE
        }
    }
}
