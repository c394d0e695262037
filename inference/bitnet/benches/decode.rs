//! Whole-model benchmark on a BitNet b1.58 2B4T-shaped file: load time, prefill tokens/s for
//! 128- and 512-token prompts, decode tokens/s, weight bytes read per token and the resulting
//! GB/s as a share of this machine's streaming-read bandwidth measured in the same run (the
//! decode roofline), at 1 and 2 threads, with the F16 and the int8 output layer; peak RSS.
//!
//! `cargo bench -p bitnet --bench decode`. Knobs: `BENCH_MODEL=FILE` (default: a synthetic TQ2_0
//! model with the exact 2B4T shapes, written once to `$TMPDIR/acme-bench-2b4t-tq2_0.gguf`),
//! `BENCH_THREADS=1,2`, `BENCH_PROMPTS=128,512`, `BENCH_DECODE=32` (decode steps), `BENCH_REPS=3`.

use std::path::PathBuf;
use std::time::Instant;

use bitnet::generate::{SyntheticModel, SyntheticShape};
use bitnet::{BatchToken, KvCache, LoadOptions, LogitUse, Model, Scratch, Session, WeightFormat};

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// GB/s of a plain read of a buffer far larger than the last-level cache, split over
/// `threads` (the ceiling a memory-bound decode step can reach). Median of 5 passes.
fn streaming_read(buffer: &[u64], threads: usize) -> f64 {
    let chunk = buffer.len().div_ceil(threads);
    let mut rates = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = buffer
                .chunks(chunk)
                .map(|part| s.spawn(move || part.iter().fold(0u64, |a, &x| a.wrapping_add(x))))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .fold(0, u64::wrapping_add)
        });
        std::hint::black_box(total);
        rates.push(std::mem::size_of_val(buffer) as f64 / start.elapsed().as_secs_f64() / 1e9);
    }
    median(rates)
}

/// Starts a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// A `/proc/self/status` figure in MB (`VmHWM`: peak resident set since the last reset;
/// `RssAnon`: private memory now, the part that the mapped model file does not account for).
fn status_mb(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn peak_rss_mb() -> Option<f64> {
    status_mb("VmHWM:")
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

fn model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("BENCH_MODEL") {
        return PathBuf::from(p);
    }
    let path = std::env::temp_dir().join("acme-bench-2b4t-tq2_0.gguf");
    if !path.exists() {
        eprintln!(
            "writing a synthetic 2B4T-shaped TQ2_0 model to {}",
            path.display()
        );
        let model = SyntheticModel {
            shape: SyntheticShape::bitnet_2b4t(),
            ..SyntheticModel::tiny(WeightFormat::Tq2_0, 1)
        };
        let partial = path.with_extension("partial");
        model.write(&partial).expect("write the synthetic model");
        std::fs::rename(&partial, &path).expect("rename the synthetic model");
    }
    path
}

/// Aggregate decode tokens/s when `batch` sequences advance together, one forward pass (one
/// GEMM per projection) per step, as the server's continuous batching does; HTTP not included.
/// Greedy, so `usage` may be `Argmax` (what the server uses when every sequence is greedy).
fn batched_decode(model: &Model, batch: usize, steps: usize, usage: LogitUse) -> f64 {
    let prompt_len = 8;
    let mut cache = KvCache::new(model, batch, prompt_len + steps + 1).expect("cache");
    let mut scratch = Scratch::new();
    let slots: Vec<_> = (0..batch)
        .map(|_| cache.allocate().expect("slot"))
        .collect();
    let mut entries: Vec<BatchToken> = Vec::new();
    for (i, &slot) in slots.iter().enumerate() {
        entries.extend(
            prompt(prompt_len)
                .into_iter()
                .enumerate()
                .map(|(pos, token)| BatchToken {
                    slot,
                    token: token + i as u32,
                    pos,
                    logits: pos + 1 == prompt_len,
                }),
        );
    }
    let logits = model
        .forward(&mut cache, &mut scratch, &entries)
        .expect("prefill");
    let vocab = model.vocab_size();
    let mut next: Vec<u32> = logits.chunks_exact(vocab).map(argmax).collect();
    let start = Instant::now();
    for step in 0..steps {
        entries.clear();
        entries.extend(slots.iter().zip(&next).map(|(&slot, &token)| BatchToken {
            slot,
            token,
            pos: prompt_len + step,
            logits: true,
        }));
        let logits = model
            .forward_for(&mut cache, &mut scratch, &entries, usage)
            .expect("decode");
        next = logits.chunks_exact(vocab).map(argmax).collect();
    }
    (batch * steps) as f64 / start.elapsed().as_secs_f64()
}

/// What the int8 output layer costs in accuracy against the stored one: both models are fed the
/// same tokens (the F16 model's greedy choices), and at each step the top-1 tokens are compared
/// and the largest logit difference is taken relative to the largest logit.
fn output_layer_accuracy(path: &std::path::Path, threads: usize, steps: usize) {
    let load = |int8_output| {
        Model::load(
            path,
            LoadOptions {
                int8_output,
                threads,
            },
        )
        .expect("load the benchmark model")
    };
    let (reference, int8) = (load(false), load(true));
    let mut a = Session::new(&reference, steps + 16).expect("session");
    let mut b = Session::new(&int8, steps + 16).expect("session");
    let mut tokens = prompt(8);
    let (mut agree, mut worst) = (0usize, 0f32);
    for _ in 0..steps {
        let la = a.feed(&tokens).expect("f16 step").to_vec();
        let lb = b.feed(&tokens).expect("int8 step").to_vec();
        let scale = la
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()))
            .max(f32::MIN_POSITIVE);
        let diff = la
            .iter()
            .zip(&lb)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        worst = worst.max(diff / scale);
        let next = argmax(&la);
        agree += usize::from(next == argmax(&lb));
        tokens = vec![next];
    }
    println!(
        "int8 output layer vs stored: top-1 agrees on {agree}/{steps} teacher-forced steps; largest logit difference {:.2}% of the largest logit",
        worst * 100.0
    );
}

/// A prompt of `n` ordinary token ids (no special tokens).
fn prompt(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| 1000 + (i * 7919) % 50_000).collect()
}

fn main() {
    let threads = env_list("BENCH_THREADS", &[1, 2]);
    let prompts = env_list("BENCH_PROMPTS", &[128, 512]);
    let steps = env_list("BENCH_DECODE", &[32])[0].max(1);
    let reps = env_list("BENCH_REPS", &[3])[0].max(1);
    let path = model_path();

    // The roofline, measured before the model is loaded so the buffer does not add to its RSS.
    let bandwidth: Vec<(usize, f64)> = {
        let buffer = vec![1u64; (512usize << 20) / 8];
        threads
            .iter()
            .map(|&t| (t, streaming_read(&buffer, t)))
            .collect()
    };
    reset_peak_rss();
    let rss_before = peak_rss_mb().unwrap_or(0.0);
    for (t, gbs) in &bandwidth {
        println!("streaming read, {t} thread(s): {gbs:.1} GB/s (sum of 512 MiB, median of 5)");
    }
    let mhz = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("cpu MHz"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    println!(
        "model {}; kernel {:?}; nominal clock {mhz:.0} MHz; median of {reps} rep(s)",
        path.display(),
        ternary::active_kernel()
    );
    println!();
    println!(
        "{:<7} {:>7} {:>7} {:>9} {:>18} {:>8} {:>9} {:>7} {:>7} {:>8} {:>8}",
        "output",
        "threads",
        "load s",
        "MB/token",
        "prefill tok/s",
        "tok/s",
        "decode",
        "GB/s",
        "% roof",
        "peak MB",
        "anon MB"
    );
    let mut batch_lines = Vec::new();
    for int8_output in [false, true] {
        for &t in &threads {
            reset_peak_rss();
            let started = Instant::now();
            let model = Model::load(
                &path,
                LoadOptions {
                    int8_output,
                    threads: t,
                },
            )
            .expect("load the benchmark model");
            let load = started.elapsed();
            let bytes = model.weight_bytes_per_token() as f64;
            let context = prompts.iter().max().copied().unwrap_or(128) + steps + 1;
            let mut prefill_rates = Vec::new();
            for &n in &prompts {
                let mut rates = Vec::new();
                for _ in 0..reps {
                    let mut session = Session::new(&model, context).expect("session");
                    let tokens = prompt(n);
                    let start = Instant::now();
                    std::hint::black_box(session.feed(&tokens).expect("prefill"));
                    rates.push(n as f64 / start.elapsed().as_secs_f64());
                }
                prefill_rates.push((n, median(rates)));
            }
            let mut per_token = Vec::new();
            for _ in 0..reps {
                let mut session = Session::new(&model, context).expect("session");
                let mut next = argmax(session.feed(&prompt(8)).expect("prompt"));
                let start = Instant::now();
                for _ in 0..steps {
                    next = argmax(session.feed(&[next]).expect("decode"));
                }
                per_token.push(start.elapsed().as_secs_f64() / steps as f64);
            }
            let per_token = median(per_token);
            let gbs = bytes / per_token / 1e9;
            let roof = bandwidth
                .iter()
                .find(|(bt, _)| *bt == t)
                .map_or(f64::NAN, |(_, b)| gbs / b * 100.0);
            let prefill = prefill_rates
                .iter()
                .map(|(n, r)| format!("{n}:{r:.1}"))
                .collect::<Vec<_>>()
                .join(" ");
            println!(
                "{:<7} {:>7} {:>7.2} {:>9.1} {:>18} {:>8.2} {:>7.1}ms {:>7.1} {:>6.0}% {:>8.0} {:>8.0}",
                if int8_output { "int8" } else { "f16" },
                t,
                load.as_secs_f64(),
                bytes / 1e6,
                prefill,
                1.0 / per_token,
                per_token * 1e3,
                gbs,
                roof,
                peak_rss_mb().unwrap_or(f64::NAN),
                status_mb("RssAnon:").unwrap_or(f64::NAN)
            );
            if t == threads.iter().copied().max().unwrap_or(1) {
                for (usage, logits) in [
                    (LogitUse::Any, "all logits"),
                    (LogitUse::Argmax, "argmax only"),
                ] {
                    let rates: Vec<String> = [1usize, 4, 16]
                        .iter()
                        .map(|&b| {
                            format!(
                                "{b}: {:.1}",
                                batched_decode(&model, b, steps.min(16), usage)
                            )
                        })
                        .collect();
                    batch_lines.push(format!(
                        "batched decode, {} output layer, {logits}, {t} thread(s), tokens/s by sequences in the batch: {}",
                        if int8_output { "int8" } else { "f16" },
                        rates.join(", ")
                    ));
                }
            }
            drop(model);
        }
    }
    println!();
    println!(
        "prefill column: prompt tokens:tokens/s. decode: {steps} steps after an 8-token prompt."
    );
    for line in &batch_lines {
        println!("{line}");
    }
    output_layer_accuracy(&path, threads.iter().copied().max().unwrap_or(1), 64);
    println!(
        "peak MB: the process's peak resident set from just before that load to the end of its runs \
         (mapped model pages included; {rss_before:.0} MB before any load); anon MB: private memory after the runs (repacked weights, KV cache, scratch)"
    );
}
