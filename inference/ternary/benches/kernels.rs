//! Kernel benchmark for the BitNet 2B4T shapes. Prints one table: time (median), GB/s of weight
//! bytes, % of the streaming-read bandwidth measured in the same run (GEMV), GMAC/s and
//! MAC/cycle/core (GEMM, against the nominal clock in /proc/cpuinfo); then scalar and f32
//! baselines, a whole decode step (30 layers + output layer), and the per-call cost of our pool
//! against rayon.
//!
//! `cargo bench -p ternary --bench kernels`. Knobs: `BENCH_QUICK=1` (fewer sizes and reps, about
//! a minute), `BENCH_THREADS=1,2`, `BENCH_TOKENS=1,16` (batch sizes, output layer included), `BENCH_OUTPUT=0` (skip the 128256-row output layer and the
//! decode step), `BENCH_DECODE=0` (skip only the decode step), `TERNARY_KERNEL=...` (kernel family
//! for the main table).

use rayon::prelude::*;
use std::hint::black_box;
use std::time::{Duration, Instant};
use ternary::{
    active_kernel, Kernel, OutputMatrix, QuantizedActivations, TernaryMatrix, ThreadPool,
};

const TERNARY_SHAPES: [(usize, usize, &str); 4] = [
    (2560, 2560, "attn q/o"),
    (640, 2560, "attn k/v"),
    (6912, 2560, "ffn gate/up"),
    (2560, 6912, "ffn down"),
];
const VOCAB: usize = 128_256;
const HIDDEN: usize = 2560;
/// Working set for streamed GEMVs: far beyond any last-level cache, as in a real decode step.
const STREAM_BYTES: usize = 256 << 20;

struct Settings {
    decode: bool,
    threads: Vec<usize>,
    tokens: Vec<usize>,
    output_layer: bool,
    mhz: f64,
}

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

fn nominal_mhz() -> f64 {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("cpu MHz"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Median and best wall time of `f` over at least `min_reps` runs and about `budget` of time.
/// The best run shows what the code does when no other process takes the core away.
#[derive(Clone, Copy)]
struct Timing {
    median: Duration,
    best: Duration,
}

fn measure(min_reps: usize, budget: Duration, mut f: impl FnMut()) -> Timing {
    f();
    let started = Instant::now();
    let mut times = Vec::new();
    while times.len() < min_reps || (started.elapsed() < budget && times.len() < 5000) {
        let t = Instant::now();
        f();
        times.push(t.elapsed());
    }
    times.sort();
    Timing {
        median: times[times.len() / 2],
        best: times[0],
    }
}

fn median(min_reps: usize, budget: Duration, f: impl FnMut()) -> Duration {
    measure(min_reps, budget, f).median
}

/// Sums `words` with AVX2 (eight independent u64 lanes per step), so only memory limits it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sum_words_avx2(words: &[u64]) -> u64 {
    sum_words_portable(words)
}

#[inline(always)]
fn sum_words_portable(words: &[u64]) -> u64 {
    let mut sums = [0u64; 16];
    for block in words.chunks_exact(16) {
        for (sum, &v) in sums.iter_mut().zip(block) {
            *sum = sum.wrapping_add(v);
        }
    }
    sums.iter().fold(0, |a, &b| a.wrapping_add(b))
}

fn sum_words(words: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected on this CPU just above.
        return unsafe { sum_words_avx2(words) };
    }
    sum_words_portable(words)
}

/// SplitMix64 for reproducible inputs.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Streaming-read bandwidth in GB/s (median, best): sum a 512 MiB buffer split across `threads` threads.
fn stream_bandwidth(buffer: &[u64], threads: usize, reps: usize) -> Bandwidth {
    let time = measure(reps, Duration::ZERO, || {
        std::thread::scope(|s| {
            for part in buffer.chunks(buffer.len().div_ceil(threads)) {
                s.spawn(move || black_box(sum_words(part)));
            }
        });
    });
    let rate = |d: Duration| (buffer.len() * 8) as f64 / d.as_secs_f64() / 1e9;
    Bandwidth {
        threads,
        median: rate(time.median),
        best: rate(time.best),
    }
}

struct Bandwidth {
    threads: usize,
    median: f64,
    best: f64,
}

struct Row<'a> {
    shape: String,
    weights: &'a str,
    tokens: usize,
    threads: usize,
    time: Timing,
    bytes: usize,
    macs: f64,
}

fn print_header() {
    println!(
        "{:<22} {:<10} {:>4} {:>3} {:>11} {:>11} {:>7} {:>7} {:>8} {:>13}",
        "shape", "weights", "N", "thr", "median", "best", "GB/s", "%BW", "GMAC/s", "MAC/cyc/core"
    );
}

/// Rates come from the median time; `%BW` (median time against median bandwidth, best against
/// best) and `MAC/cyc/core` show "median/best".
fn print_row(row: &Row, settings: &Settings, bandwidth: &[Bandwidth]) {
    let (secs, best) = (row.time.median.as_secs_f64(), row.time.best.as_secs_f64());
    let gbs = row.bytes as f64 / secs / 1e9;
    let gmacs = row.macs / secs / 1e9;
    let bw = bandwidth.iter().find(|b| b.threads == row.threads);
    let percent = match (row.tokens, bw) {
        (1, Some(b)) => format!(
            "{:.0}/{:.0}",
            100.0 * gbs / b.median,
            100.0 * row.bytes as f64 / best / 1e9 / b.best
        ),
        _ => "-".into(),
    };
    let per_cycle = if row.tokens > 1 && settings.mhz > 0.0 {
        let per_core = |s: f64| row.macs / s / 1e6 / settings.mhz / row.threads as f64;
        format!("{:.1}/{:.1}", per_core(secs), per_core(best))
    } else {
        "-".into()
    };
    println!(
        "{:<22} {:<10} {:>4} {:>3} {:>9.1}µs {:>9.1}µs {:>7.1} {:>7} {:>8.1} {:>13}",
        row.shape,
        row.weights,
        row.tokens,
        row.threads,
        secs * 1e6,
        best * 1e6,
        gbs,
        percent,
        gmacs,
        per_cycle
    );
}

/// One decode step of BitNet 2B4T at batch 1: the 7 ternary GEMVs of each of 30 layers (distinct
/// copies, 521 MB, so every byte comes from DRAM as in real decoding) plus the int8 output layer.
/// Norms, attention and the rest are not included.
fn decode_step(
    rng: &mut Rng,
    pools: &[(usize, ThreadPool)],
    output: &OutputMatrix,
    bandwidth: &[Bandwidth],
) {
    const LAYERS: usize = 30;
    let layer: Vec<TernaryMatrix> = [
        (2560, 2560),
        (640, 2560),
        (640, 2560),
        (2560, 2560),
        (6912, 2560),
        (6912, 2560),
        (2560, 6912),
    ]
    .iter()
    .map(|&(rows, cols)| random_ternary(rng, rows, cols))
    .collect();
    let layers: Vec<Vec<TernaryMatrix>> = (0..LAYERS).map(|_| layer.clone()).collect();
    let hidden = QuantizedActivations::quantize(
        &(0..HIDDEN).map(|_| rng.unit()).collect::<Vec<_>>(),
        HIDDEN,
    );
    let ffn =
        QuantizedActivations::quantize(&(0..6912).map(|_| rng.unit()).collect::<Vec<_>>(), 6912);
    let x: Vec<f32> = (0..HIDDEN).map(|_| rng.unit()).collect();
    let mut out = vec![0.0; VOCAB];
    let ternary_bytes: usize = layers.iter().flatten().map(|m| m.weight_bytes()).sum();
    let bytes = ternary_bytes + output.weight_bytes();
    println!(
        "\nDecode step, batch 1: 30 layers × 7 ternary GEMVs ({:.0} MB) + int8 output layer ({:.0} MB); norms and attention not included:",
        ternary_bytes as f64 / 1e6,
        output.weight_bytes() as f64 / 1e6
    );
    for (threads, pool) in pools {
        let time = measure(3, Duration::from_secs(2), || {
            for layer in &layers {
                for matrix in layer {
                    let x = if matrix.cols() == HIDDEN {
                        &hidden
                    } else {
                        &ffn
                    };
                    matrix.matmul(x, &mut out[..matrix.rows()], pool);
                }
            }
            output.matmul(&x, 1, &mut out, pool);
        });
        let stream = bandwidth.iter().find(|b| b.threads == *threads);
        let rate = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e9;
        println!(
            "  {threads} thread(s): median {:.1} ms ({:.1} GB/s, {:.0}% of streaming read; {:.1} tokens/s), best {:.1} ms ({:.1} GB/s, {:.0}%)",
            time.median.as_secs_f64() * 1e3,
            rate(time.median),
            stream.map_or(0.0, |b| 100.0 * rate(time.median) / b.median),
            1.0 / time.median.as_secs_f64(),
            time.best.as_secs_f64() * 1e3,
            rate(time.best),
            stream.map_or(0.0, |b| 100.0 * rate(time.best) / b.best),
        );
    }
}

fn random_ternary(rng: &mut Rng, rows: usize, cols: usize) -> TernaryMatrix {
    let values: Vec<i8> = (0..rows * cols)
        .map(|_| (rng.next() % 3) as i8 - 1)
        .collect();
    TernaryMatrix::from_ternary(&values, rows, cols, 0.02).expect("benchmark shapes are valid")
}

/// The compute ceiling the GEMM figures are judged against: independent 512-bit `vpdpbusd`
/// (64 int8 MACs each) and `vfmadd` (16 f32 MACs) chains on one core, timed, so the ceiling is
/// measured at the clock the core really runs rather than the nominal one.
fn instruction_peak() -> Option<String> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni")) {
            return None;
        }
        const CHAINS: usize = 12;
        const ROUNDS: usize = 20_000_000;
        /// A function that runs `CHAINS` independent chains of `$step` (on `lane`, with operands
        /// `a` and `b` from `$operands`) for `rounds` rounds, then sums the lanes so the work
        /// cannot be dropped.
        macro_rules! chains {
            ($name:ident, $features:literal, $zero:expr, $add:ident, $reduce:ident,
             $operands:expr, |$lane:ident, $a:ident, $b:ident| $step:expr) => {
                #[target_feature(enable = $features)]
                fn $name(rounds: usize) {
                    let ($a, $b) = $operands;
                    let mut acc = [$zero; CHAINS];
                    for _ in 0..rounds {
                        for $lane in &mut acc {
                            *$lane = $step;
                        }
                    }
                    black_box($reduce(acc.iter().fold($zero, |s, v| $add(s, *v))));
                }
            };
        }
        chains!(
            dpbusd,
            "avx512f,avx512bw,avx512vnni",
            _mm512_setzero_si512(),
            _mm512_add_epi32,
            _mm512_reduce_add_epi32,
            (_mm512_set1_epi8(1), _mm512_set1_epi8(black_box(2))),
            |lane, a, b| _mm512_dpbusd_epi32(*lane, a, b)
        );
        chains!(
            fmadd,
            "avx512f",
            _mm512_setzero_ps(),
            _mm512_add_ps,
            _mm512_reduce_add_ps,
            (_mm512_set1_ps(black_box(0.999)), _mm512_set1_ps(0.001)),
            |lane, a, b| _mm512_fmadd_ps(*lane, a, b)
        );
        chains!(
            dpbf16,
            "avx512f,avx512bf16",
            _mm512_setzero_ps(),
            _mm512_add_ps,
            _mm512_reduce_add_ps,
            (
                _mm512_cvtne2ps_pbh(_mm512_set1_ps(black_box(0.5)), _mm512_set1_ps(0.25)),
                _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.5), _mm512_set1_ps(black_box(0.25)))
            ),
            |lane, a, b| _mm512_dpbf16_ps(*lane, a, b)
        );
        let rate = |run: &dyn Fn()| {
            let start = Instant::now();
            run();
            (CHAINS * ROUNDS) as f64 / start.elapsed().as_secs_f64() / 1e9
        };
        // SAFETY: both target features were detected above.
        let int8 = rate(&|| unsafe { dpbusd(ROUNDS) });
        let f32 = rate(&|| unsafe { fmadd(ROUNDS) });
        let bf16 = if is_x86_feature_detected!("avx512bf16") {
            // SAFETY: detected just above (AVX-512F was detected earlier).
            let bf16 = rate(&|| unsafe { dpbf16(ROUNDS) });
            format!(
                "; vdpbf16ps zmm {bf16:.2} G/s = {:.0} G bf16 MAC/s",
                bf16 * 32.0
            )
        } else {
            String::new()
        };
        Some(format!(
            "instruction peak, one core: vpdpbusd zmm {int8:.2} G/s = {:.0} G int8 MAC/s; vfmadd zmm {f32:.2} G/s = {:.0} G f32 MAC/s{bf16}",
            int8 * 64.0,
            f32 * 16.0
        ))
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

fn main() {
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v != "0");
    let settings = Settings {
        decode: std::env::var("BENCH_DECODE").map_or(true, |v| v != "0"),
        threads: env_list("BENCH_THREADS", &[1, 2]),
        tokens: env_list(
            "BENCH_TOKENS",
            if quick { &[1, 32] } else { &[1, 8, 32, 128] },
        ),
        output_layer: std::env::var("BENCH_OUTPUT").map_or(true, |v| v != "0"),
        mhz: nominal_mhz(),
    };
    let budget = Duration::from_millis(if quick { 150 } else { 400 });
    let mut rng = Rng(1);
    println!(
        "ternary kernels: active {} (available: {}); nominal clock {:.0} MHz from /proc/cpuinfo \"cpu MHz\"; {} logical CPUs",
        active_kernel(),
        Kernel::available().iter().map(|k| k.name()).collect::<Vec<_>>().join(", "),
        settings.mhz,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let buffer: Vec<u64> = (0..(512usize << 20) / 8).map(|i| i as u64).collect();
    let bandwidth: Vec<Bandwidth> = settings
        .threads
        .iter()
        .map(|&t| stream_bandwidth(&buffer, t, if quick { 5 } else { 9 }))
        .collect();
    drop(buffer);
    for b in &bandwidth {
        println!(
            "streaming read (sum of 512 MiB), {} thread(s): median {:.1} GB/s, best {:.1} GB/s",
            b.threads, b.median, b.best
        );
    }
    if let Some(line) = instruction_peak() {
        println!("{line}");
    }
    println!("GEMV (N=1) streams {} MiB of copies of each matrix so weights come from DRAM; GEMM (N>1) reuses one copy.\n", STREAM_BYTES >> 20);

    print_header();
    let pools: Vec<(usize, ThreadPool)> = settings
        .threads
        .iter()
        .map(|&t| (t, ThreadPool::new(t)))
        .collect();
    for (rows, cols, name) in TERNARY_SHAPES {
        let matrix = random_ternary(&mut rng, rows, cols);
        let copies: Vec<TernaryMatrix> = (0..STREAM_BYTES.div_ceil(matrix.weight_bytes()))
            .map(|_| matrix.clone())
            .collect();
        for &tokens in &settings.tokens {
            let input: Vec<f32> = (0..tokens * cols).map(|_| rng.unit()).collect();
            let x = QuantizedActivations::quantize(&input, cols);
            let mut out = vec![0.0; tokens * rows];
            for (threads, pool) in &pools {
                let mut next = 0;
                let time = measure(5, budget, || {
                    let m = if tokens == 1 {
                        &copies[next % copies.len()]
                    } else {
                        &matrix
                    };
                    next += 1;
                    m.matmul(&x, &mut out, pool);
                });
                let row = Row {
                    shape: format!("{rows}x{cols} {name}"),
                    weights: "ternary",
                    tokens,
                    threads: *threads,
                    time,
                    bytes: matrix.weight_bytes(),
                    macs: (rows * cols * tokens) as f64,
                };
                print_row(&row, &settings, &bandwidth);
            }
        }
    }

    if settings.output_layer {
        let bits: Vec<u8> = (0..VOCAB * HIDDEN)
            .flat_map(|_| {
                half::f16::from_f32(rng.unit() * 0.05)
                    .to_bits()
                    .to_le_bytes()
            })
            .collect();
        let f16 = OutputMatrix::from_f16_bytes(&bits, VOCAB, HIDDEN).expect("valid shape");
        drop(bits);
        let int8 = f16.to_int8();
        let tokens_list: Vec<usize> = if std::env::var_os("BENCH_TOKENS").is_some() {
            settings.tokens.clone()
        } else if quick {
            vec![1]
        } else {
            vec![1, 8]
        };
        // "f16 argmax" is the exact-argmax product greedy batches use (the plain F16 product
        // below 10 tokens or without AVX-512 BF16).
        for (label, matrix, argmax) in [
            ("f16", &f16, false),
            ("f16 argmax", &f16, true),
            ("int8 q8", &int8, false),
        ] {
            for &tokens in &tokens_list {
                let x: Vec<f32> = (0..tokens * HIDDEN).map(|_| rng.unit()).collect();
                let mut out = vec![0.0; tokens * VOCAB];
                for (threads, pool) in &pools {
                    let time = measure(3, budget, || {
                        if argmax {
                            let done = matrix.try_matmul_exact_argmax(&x, tokens, &mut out, pool);
                            done.expect("valid shape");
                        } else {
                            matrix.matmul(&x, tokens, &mut out, pool);
                        }
                    });
                    let row = Row {
                        shape: format!("{VOCAB}x{HIDDEN} output"),
                        weights: label,
                        tokens,
                        threads: *threads,
                        time,
                        bytes: matrix.weight_bytes(),
                        macs: (VOCAB * HIDDEN * tokens) as f64,
                    };
                    print_row(&row, &settings, &bandwidth);
                }
            }
        }
        drop(f16);
        if settings.decode {
            decode_step(&mut rng, &pools, &int8, &bandwidth);
        }
    }

    println!("\nBaselines, 2560x2560, 1 thread, one copy (cache-resident after the first call):");
    print_header();
    let single = ThreadPool::new(1);
    let matrix = random_ternary(&mut rng, 2560, 2560);
    let dense: Vec<f32> = (0..2560 * 2560).map(|_| rng.unit()).collect();
    let dense = OutputMatrix::from_f32(&dense, 2560, 2560).expect("valid shape");
    let mut scalar_times = Vec::new();
    for tokens in [1, 32] {
        let input: Vec<f32> = (0..tokens * 2560).map(|_| rng.unit()).collect();
        let x = QuantizedActivations::quantize(&input, 2560);
        let mut out = vec![0.0; tokens * 2560];
        for kernel in Kernel::available() {
            let reps = if kernel == Kernel::Scalar { 3 } else { 20 };
            let time = measure(
                reps,
                if kernel == Kernel::Scalar {
                    Duration::ZERO
                } else {
                    budget
                },
                || {
                    matrix
                        .matmul_with(kernel, &x, &mut out, &single)
                        .expect("available kernel")
                },
            );
            if kernel == Kernel::Scalar {
                scalar_times.push(time);
            } else {
                let speedup = scalar_times.last().map_or(0.0, |s: &Timing| {
                    s.median.as_secs_f64() / time.median.as_secs_f64()
                });
                println!("  {kernel} is {speedup:.1}x scalar at N={tokens} (median times)");
            }
            let row = Row {
                shape: "2560x2560".into(),
                weights: kernel.name(),
                tokens,
                threads: 1,
                time,
                bytes: matrix.weight_bytes(),
                macs: (2560 * 2560 * tokens) as f64,
            };
            print_row(&row, &settings, &bandwidth);
        }
        let time = measure(5, budget, || {
            dense.matmul(&input, tokens, &mut out, &single)
        });
        let row = Row {
            shape: "2560x2560".into(),
            weights: "f32 dense",
            tokens,
            threads: 1,
            time,
            bytes: dense.weight_bytes(),
            macs: (2560 * 2560 * tokens) as f64,
        };
        print_row(&row, &settings, &bandwidth);
    }

    let input: Vec<f32> = (0..6912).map(|_| rng.unit()).collect();
    let mut quantized = QuantizedActivations::quantize(&input, 6912);
    let time = median(50, budget, || quantized.requantize(black_box(&input), 6912));
    println!(
        "\nActivation quantisation of one 6912-value token (requantize, buffers reused): {:.2} µs",
        time.as_secs_f64() * 1e6
    );

    let workers = settings.threads.iter().copied().max().unwrap_or(2).max(2);
    println!("\nPer-call cost of splitting work across {workers} threads (empty job), and a 2560x2560 GEMV through each:");
    let ours = ThreadPool::new(workers);
    let theirs = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .build()
        .expect("rayon pool");
    let calls = if quick { 2000 } else { 20000 };
    let per_call = |f: &mut dyn FnMut()| {
        median(5, Duration::ZERO, || {
            for _ in 0..calls {
                f();
            }
        })
        .as_secs_f64()
            / calls as f64
            * 1e6
    };
    let own_empty = per_call(&mut || {
        ours.run(|w, n| {
            black_box((w, n));
        })
    });
    let rayon_empty = per_call(&mut || {
        theirs.install(|| {
            (0..workers).into_par_iter().for_each(|w| {
                black_box(w);
            })
        })
    });
    println!("  own pool (spin, then park): {own_empty:.2} µs/call; rayon install + par_iter: {rayon_empty:.2} µs/call");
    let x =
        QuantizedActivations::quantize(&(0..2560).map(|_| rng.unit()).collect::<Vec<_>>(), 2560);
    let mut out = vec![0.0; 2560];
    let own = median(20, budget, || matrix.matmul(&x, &mut out, &ours));
    let chunk = 2560 / workers;
    let with_rayon = median(20, budget, || {
        theirs.install(|| {
            out.par_chunks_mut(chunk)
                .enumerate()
                .for_each(|(i, part)| matrix.gemv_rows(&x, i * chunk, part).expect("aligned rows"));
        })
    });
    println!(
        "  2560x2560 GEMV: own pool {:.1} µs, rayon {:.1} µs -> keeping the {}",
        own.as_secs_f64() * 1e6,
        with_rayon.as_secs_f64() * 1e6,
        if own <= with_rayon {
            "own pool"
        } else {
            "rayon pool (faster here)"
        }
    );
}
