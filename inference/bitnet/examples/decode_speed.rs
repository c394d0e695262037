//! Rough decode/prefill timing on a GGUF file (for example one written by `gen-model --size 2b4t`):
//! `cargo run --release -p bitnet --example decode_speed -- FILE [threads] [--int8-output]`.
//! Prints load time, prefill tokens/s, decode tokens/s and weight bytes streamed per token.

use std::time::Instant;

use bitnet::{LoadOptions, Model, Session};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args
        .first()
        .ok_or("usage: decode_speed FILE [threads] [--int8-output]")?;
    let threads = match args.get(1).filter(|a| !a.starts_with("--")) {
        Some(t) => t.parse()?,
        None => LoadOptions::default().threads,
    };
    let int8_output = args.iter().any(|a| a == "--int8-output");
    let start = Instant::now();
    let model = Model::load(
        path.as_ref(),
        LoadOptions {
            int8_output,
            threads,
        },
    )?;
    println!(
        "loaded {} ({}, {}, {} threads) in {:.2?}; {:.1} MB of weights per token",
        model.name(),
        model.architecture(),
        model.weight_format(),
        model.threads(),
        start.elapsed(),
        model.weight_bytes_per_token() as f64 / 1e6
    );
    let prompt: Vec<u32> = (0..32).map(|i| 100 + i * 7).collect();
    let mut session = Session::new(&model, 128)?;
    let start = Instant::now();
    let mut next = argmax(session.feed(&prompt)?);
    let prefill = start.elapsed();
    let steps = 16;
    let start = Instant::now();
    for _ in 0..steps {
        next = argmax(session.feed(&[next])?);
    }
    let decode = start.elapsed();
    let per_token = decode.as_secs_f64() / steps as f64;
    println!(
        "prefill {} tokens: {:.1} tok/s; decode: {:.2} tok/s ({:.1} ms/token, {:.1} GB/s of weights)",
        prompt.len(),
        prompt.len() as f64 / prefill.as_secs_f64(),
        1.0 / per_token,
        per_token * 1e3,
        model.weight_bytes_per_token() as f64 / per_token / 1e9
    );
    Ok(())
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}
