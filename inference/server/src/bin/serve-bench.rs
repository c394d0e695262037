//! `serve-bench`: throughput and latency of `acme-infer` through real HTTP on loopback.
//! Serves a model in-process, then measures aggregate decode tokens/s with 1, 4 and 16
//! concurrent generations and the p50/p99 latency of a classify request with a 64-token
//! input, and prints a table.
//!
//! `serve-bench [--model FILE | --size tiny|small|2b4t] [--tokens N] [--classify-runs N] [--threads N] [--int8-output]`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bitnet::generate::{SyntheticModel, SyntheticShape};
use bitnet::WeightFormat;
use serde_json::{json, Value};
use server::{app, classification_prompt, AppState, ServerSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const USAGE: &str = "usage: serve-bench [--model FILE | --size tiny|small|2b4t] [--tokens N] [--classify-runs N] [--threads N] [--int8-output]";
const CONCURRENCY: [usize; 3] = [1, 4, 16];

struct Args {
    model: Option<PathBuf>,
    size: String,
    tokens: usize,
    classify_runs: usize,
    threads: usize,
    int8_output: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        model: None,
        size: "small".into(),
        tokens: 64,
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

/// One HTTP/1.1 request with `Connection: close`; returns status and body.
async fn http(port: u16, method: &str, path: &str, body: &Value) -> Result<(u16, Value), String> {
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
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let (head, payload) = text
        .split_once("\r\n\r\n")
        .ok_or("a response without a header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("a response without a status")?;
    let json = serde_json::from_str(payload).map_err(|e| format!("{e}: {payload}"))?;
    Ok((status, json))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
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
        max_sequences: *CONCURRENCY.iter().max().unwrap_or(&1),
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
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    tokio::spawn(async move { axum::serve(listener, app(state)).await });

    println!(
        "model {} loaded in {:.2}s, {} threads, {} tokens per request",
        model_path.display(),
        load_time.as_secs_f64(),
        args.threads,
        args.tokens
    );
    println!("{:<28} {:>12} {:>14}", "case", "tokens", "tokens/s");
    for streams in CONCURRENCY {
        let started = Instant::now();
        let tasks: Vec<_> = (0..streams)
            .map(|i| {
                let body = json!({
                    "prompt": format!("Stream {i} begins a long story about"),
                    "max_tokens": args.tokens,
                    "temperature": 0,
                });
                tokio::spawn(async move { http(port, "POST", "/v1/completions", &body).await })
            })
            .collect();
        let mut tokens = 0;
        for task in tasks {
            let (status, body) = task.await.map_err(|e| e.to_string())??;
            if status != 200 {
                return Err(format!("completion failed with {status}: {body}"));
            }
            tokens += body["usage"]["completion_tokens"].as_u64().unwrap_or(0);
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "{:<28} {:>12} {:>14.1}",
            format!("decode, {streams} concurrent"),
            tokens,
            tokens as f64 / elapsed
        );
    }

    let input = "The disk usage on node seven rose from forty to ninety percent within an hour while request latency doubled and the error log filled with timeouts from the storage service, which also restarted twice without a deploy or any configuration change being recorded by the operators on call that night";
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
    println!(
        "{:<28} p50 {:>8.2} ms   p99 {:>8.2} ms   ({} runs, prompt {:?}…)",
        "classify, ~64-token input",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        args.classify_runs,
        classification_prompt(input)
            .chars()
            .take(24)
            .collect::<String>()
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
