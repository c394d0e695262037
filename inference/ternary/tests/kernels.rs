//! Products: every SIMD kernel the CPU has against the scalar reference (bit-identical), the
//! reference against exact integer arithmetic on decoded weights, and against f32 maths within a
//! stated tolerance; the output layer; the thread pool.

mod common;

use common::{integer_dots, Rng};
use ternary::{
    encode, Kernel, OutputMatrix, QuantizedActivations, TernaryMatrix, ThreadPool, WeightFormat,
};

const FORMATS: [WeightFormat; 3] = [WeightFormat::I2S, WeightFormat::Tq2_0, WeightFormat::Tq1_0];

/// The SIMD kernels to compare with scalar; prints the ones this CPU lacks.
fn simd_kernels() -> Vec<Kernel> {
    let mut present = Vec::new();
    for kernel in Kernel::ALL.into_iter().filter(|&k| k != Kernel::Scalar) {
        if kernel.is_available() {
            present.push(kernel);
        } else {
            println!("skipped {kernel}: this CPU does not support it");
        }
    }
    present
}

/// Activation patterns, including the extremes that overflow careless int16 accumulation.
fn activation_cases(rng: &mut Rng, tokens: usize, cols: usize) -> Vec<(&'static str, Vec<i8>)> {
    vec![
        ("random", rng.int8(tokens * cols)),
        ("all -128", vec![-128; tokens * cols]),
        ("all 127", vec![127; tokens * cols]),
        ("all 0", vec![0; tokens * cols]),
        (
            "alternating",
            (0..tokens * cols)
                .map(|i| if i % 2 == 0 { -128 } else { 127 })
                .collect(),
        ),
    ]
}

fn weight_cases(rng: &mut Rng, rows: usize, cols: usize) -> Vec<(&'static str, Vec<i8>)> {
    vec![
        ("random", rng.ternary(rows * cols)),
        ("all +1", vec![1; rows * cols]),
        ("all -1", vec![-1; rows * cols]),
    ]
}

fn scales_for(rng: &mut Rng, tokens: usize) -> Vec<f32> {
    (0..tokens)
        .map(|_| 0.5 + rng.unit().abs() * 100.0)
        .collect()
}

#[test]
fn every_simd_kernel_equals_the_scalar_reference_exactly() {
    let kernels = simd_kernels();
    let pool = ThreadPool::new(2);
    let mut rng = Rng::new(42);
    let mut compared = 0;
    for case in 0..36 {
        let format = FORMATS[case % 3];
        let rows = rng.pick(&[1, 3, 4, 5, 7, 13, 33]);
        // Up to 40 chunks, past the 16-chunk int16 widening point, with odd chunk counts.
        let cols = format.block_len() * rng.pick(&[1, 2, 3, 5, 10, 17, 20]);
        // Every remainder of an 8-token pass, and batches past the 16-token call size.
        let tokens = rng.pick(&[1, 2, 3, 4, 5, 6, 7, 8, 12, 17, 23]);
        for (weight_name, values) in weight_cases(&mut rng, rows, cols) {
            let bytes = encode(format, &values, rows, cols, 0.0390625).unwrap();
            let matrix = TernaryMatrix::from_gguf(format, &bytes, rows, cols).unwrap();
            for (x_name, x) in activation_cases(&mut rng, tokens, cols) {
                let x = QuantizedActivations::from_int8(&x, cols, &scales_for(&mut rng, tokens))
                    .unwrap();
                let mut reference = vec![0.0; tokens * rows];
                matrix.matmul_reference(&x, &mut reference);
                for &kernel in &kernels {
                    let mut out = vec![f32::NAN; tokens * rows];
                    matrix.matmul_with(kernel, &x, &mut out, &pool).unwrap();
                    let same = out
                        .iter()
                        .zip(&reference)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{kernel} differs from scalar: {format} {rows}x{cols}, {tokens} tokens, weights {weight_name}, x {x_name}");
                    compared += 1;
                }
            }
        }
    }
    println!("compared {compared} products against scalar");
}

#[test]
fn reference_is_exact_integer_maths_with_one_float_step() {
    let mut rng = Rng::new(3);
    for format in FORMATS {
        let (rows, cols, tokens) = (6, format.block_len() * 18, 3);
        for (weight_name, values) in weight_cases(&mut rng, rows, cols) {
            let scale = 0.0390625;
            let matrix = TernaryMatrix::from_gguf(
                format,
                &encode(format, &values, rows, cols, scale).unwrap(),
                rows,
                cols,
            )
            .unwrap();
            for (x_name, xq) in activation_cases(&mut rng, tokens, cols) {
                let x_scales = scales_for(&mut rng, tokens);
                let x = QuantizedActivations::from_int8(&xq, cols, &x_scales).unwrap();
                let mut out = vec![0.0; tokens * rows];
                matrix.matmul_reference(&x, &mut out);
                let dots = integer_dots(&values, rows, cols, &xq, tokens);
                for t in 0..tokens {
                    for r in 0..rows {
                        let expected = dots[t * rows + r] as i32 as f32 * (scale / x_scales[t]);
                        assert_eq!(
                            out[t * rows + r].to_bits(),
                            expected.to_bits(),
                            "{format} w {weight_name} x {x_name} t{t} r{r}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn tq_blocks_with_different_scales_use_one_float_step_per_block() {
    let mut rng = Rng::new(11);
    let (rows, cols, tokens) = (5, 768, 4);
    let values = rng.ternary(rows * cols);
    let mut bytes = encode(WeightFormat::Tq2_0, &values, rows, cols, 0.5).unwrap();
    let block_scales: Vec<f32> = (0..rows * 3).map(|i| [0.5, 0.25, 2.0][i % 3]).collect();
    for (block, &s) in block_scales.iter().enumerate() {
        bytes[block * 66 + 64..block * 66 + 66]
            .copy_from_slice(&half::f16::from_f32(s).to_bits().to_le_bytes());
    }
    let matrix = TernaryMatrix::from_gguf(WeightFormat::Tq2_0, &bytes, rows, cols).unwrap();
    let xq = rng.int8(tokens * cols);
    let x_scales = scales_for(&mut rng, tokens);
    let x = QuantizedActivations::from_int8(&xq, cols, &x_scales).unwrap();
    let mut out = vec![0.0; tokens * rows];
    matrix.matmul_reference(&x, &mut out);
    for t in 0..tokens {
        for r in 0..rows {
            let mut acc = 0f32;
            for b in 0..3 {
                let dot: i32 = (b * 256..(b + 1) * 256)
                    .map(|k| i32::from(values[r * cols + k]) * i32::from(xq[t * cols + k]))
                    .sum();
                acc += dot as f32 * block_scales[r * 3 + b];
            }
            assert_eq!(
                out[t * rows + r].to_bits(),
                (acc / x_scales[t]).to_bits(),
                "t{t} r{r}"
            );
        }
    }
    let pool = ThreadPool::new(3);
    for kernel in simd_kernels() {
        let mut fast = vec![0.0; tokens * rows];
        matrix.matmul_with(kernel, &x, &mut fast, &pool).unwrap();
        assert_eq!(fast, out, "{kernel}");
    }
}

#[test]
fn product_matches_f32_maths_within_quantisation_error() {
    // Tolerance against f32 inputs: activations are rounded to 1/scale steps, so each product term
    // is off by at most |w|·0.5/scale; on top of that allow 1e-5 of Σ|w·x| for float rounding.
    // Against the dequantised int8 activations only that float rounding is allowed.
    let mut rng = Rng::new(5);
    let (rows, cols, tokens) = (9, 2560, 3);
    let weights = rng.floats(rows * cols);
    let (values, w_scale) = ternary::ternarize_absmean(&weights);
    let matrix = TernaryMatrix::from_ternary(&values, rows, cols, w_scale).unwrap();
    let x = rng.floats(tokens * cols);
    let xq = QuantizedActivations::quantize(&x, cols);
    let mut out = vec![0.0; tokens * rows];
    matrix.matmul(&xq, &mut out, &ThreadPool::new(2));
    for t in 0..tokens {
        let step = 0.5 / xq.scale(t);
        for r in 0..rows {
            let w = |k: usize| f32::from(values[r * cols + k]) * w_scale;
            let exact: f32 = (0..cols).map(|k| w(k) * x[t * cols + k]).sum();
            let magnitude: f32 = (0..cols).map(|k| (w(k) * x[t * cols + k]).abs()).sum();
            let bound = (0..cols).map(|k| w(k).abs() * step).sum::<f32>() + 1e-5 * magnitude;
            let err = (out[t * rows + r] - exact).abs();
            assert!(
                err <= bound,
                "t{t} r{r}: {} vs {exact}, error {err} > {bound}",
                out[t * rows + r]
            );
            // Against dequantised weights × dequantised activations only float rounding remains.
            let q = xq.token(t);
            let term = |k: usize| w(k) * (f32::from(q[k]) / xq.scale(t));
            let dequantised: f32 = (0..cols).map(term).sum();
            let deq_magnitude: f32 = (0..cols).map(|k| term(k).abs()).sum();
            let err = (out[t * rows + r] - dequantised).abs();
            assert!(
                err <= 1e-5 * deq_magnitude,
                "t{t} r{r}: {} vs dequantised {dequantised}",
                out[t * rows + r]
            );
        }
    }
}

#[test]
fn formats_give_the_same_product() {
    let mut rng = Rng::new(9);
    let (rows, cols) = (7, 512);
    let values = rng.ternary(rows * cols);
    let x = QuantizedActivations::quantize(&rng.floats(2 * cols), cols);
    let results: Vec<Vec<f32>> = FORMATS
        .iter()
        .map(|&format| {
            let matrix = TernaryMatrix::from_gguf(
                format,
                &encode(format, &values, rows, cols, 0.75).unwrap(),
                rows,
                cols,
            )
            .unwrap();
            let mut out = vec![0.0; 2 * rows];
            matrix.matmul_reference(&x, &mut out);
            out
        })
        .collect();
    assert_eq!(results[0], results[1]);
    assert_eq!(results[0], results[2]);
}

#[test]
fn shape_mismatches_are_errors_naming_both_sizes() {
    let matrix = TernaryMatrix::from_ternary(&[0; 256], 2, 128, 1.0).unwrap();
    let x = QuantizedActivations::quantize(&[0.5; 256], 256);
    let err = matrix
        .try_matmul(&x, &mut [0.0; 2], &ThreadPool::new(1))
        .unwrap_err();
    assert!(
        err.to_string().contains("256") && err.to_string().contains("128"),
        "{err}"
    );
    let x = QuantizedActivations::quantize(&[0.5; 128], 128);
    let err = matrix
        .try_matmul(&x, &mut [0.0; 3], &ThreadPool::new(1))
        .unwrap_err();
    assert!(
        err.to_string().contains('3') && err.to_string().contains('2'),
        "{err}"
    );
    assert!(QuantizedActivations::try_quantize(&[0.0; 5], 2).is_err());
}

#[test]
fn unavailable_kernel_is_an_error_naming_what_the_cpu_has() {
    let missing = Kernel::ALL
        .into_iter()
        .find(|k| !k.is_available())
        .expect("no CPU has both x86 and ARM kernels");
    let matrix = TernaryMatrix::from_ternary(&[1; 128], 1, 128, 1.0).unwrap();
    let x = QuantizedActivations::quantize(&[1.0; 128], 128);
    let err = matrix
        .matmul_with(missing, &x, &mut [0.0], &ThreadPool::new(1))
        .unwrap_err();
    assert!(
        err.to_string().contains(missing.name()) && err.to_string().contains("scalar"),
        "{err}"
    );
    let err = "fastest".parse::<Kernel>().unwrap_err();
    assert!(
        err.to_string().contains("avx2") && err.to_string().contains("fastest"),
        "{err}"
    );
    assert_eq!("neon-dot".parse::<Kernel>().unwrap(), Kernel::NeonDot);
}

#[test]
fn activation_quantisation_follows_bitlinear() {
    let x = QuantizedActivations::quantize(&[1.0, -0.5, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0], 4);
    assert_eq!(x.tokens(), 2);
    assert_eq!(x.scale(0), 127.0);
    // -63.5 rounds half to even: -64; 31.75 -> 32.
    assert_eq!(&x.token(0)[..4], &[127, -64, 32, 0]);
    assert_eq!(x.sum(0), 95);
    assert_eq!(x.scale(1), 127.0 / 1e-5);
    assert!(x.token(1).iter().all(|&q| q == 0));
    assert_eq!(x.token(0).len(), 128, "rows are padded to whole chunks");
}

#[test]
fn output_layer_kernels_agree_with_reference() {
    let mut rng = Rng::new(13);
    let pool = ThreadPool::new(2);
    // 608 columns: two full 256-blocks and a short one whose length (96) is not a multiple of 64.
    let (rows, cols) = (37, 608);
    let weights = rng.floats(rows * cols);
    let f16_bytes: Vec<u8> = weights
        .iter()
        .flat_map(|&w| half::f16::from_f32(w).to_bits().to_le_bytes())
        .collect();
    let f16 = OutputMatrix::from_f16_bytes(&f16_bytes, rows, cols).unwrap();
    let f32m = OutputMatrix::from_f32(&weights, rows, cols).unwrap();
    let int8 = f16.to_int8();
    assert!(int8.is_int8() && !f16.is_int8());
    assert_eq!(
        int8.weight_bytes(),
        rows * cols + rows * 3 * 4,
        "three blocks per row, the last one short"
    );
    for tokens in [1, 2, 3, 4, 9, 16, 17, 19] {
        let x = rng.floats(tokens * cols);
        // The F16 reference itself against a plain f32 sum of the f16 weights.
        let mut reference = vec![0.0; tokens * rows];
        f16.matmul_reference(&x, tokens, &mut reference);
        for (i, value) in reference.iter().enumerate() {
            let (r, t) = (i % rows, i / rows);
            let w = |k: usize| half::f16::from_f32(weights[r * cols + k]).to_f32();
            let naive: f32 = (0..cols).map(|k| w(k) * x[t * cols + k]).sum();
            let magnitude: f32 = (0..cols).map(|k| (w(k) * x[t * cols + k]).abs()).sum();
            assert!(
                (value - naive).abs() <= cols as f32 * f32::EPSILON * magnitude,
                "f16 output {i}: {value} vs {naive}"
            );
        }
        for matrix in [&f16, &f32m, &int8] {
            let mut reference = vec![0.0; tokens * rows];
            matrix.matmul_reference(&x, tokens, &mut reference);
            for kernel in simd_kernels() {
                let mut out = vec![0.0; tokens * rows];
                matrix
                    .matmul_with(kernel, &x, tokens, &mut out, &pool)
                    .unwrap();
                if matrix.is_int8() {
                    assert_eq!(
                        out, reference,
                        "int8 {kernel} must be bit-identical ({tokens} tokens)"
                    );
                } else {
                    // Float sums in a different order: within cols·ε·Σ|w·x|.
                    for (i, (a, b)) in out.iter().zip(&reference).enumerate() {
                        let magnitude: f32 = (0..cols)
                            .map(|k| {
                                (weights[(i % rows) * cols + k] * x[(i / rows) * cols + k]).abs()
                            })
                            .sum();
                        assert!(
                            (a - b).abs() <= cols as f32 * f32::EPSILON * magnitude,
                            "{kernel} output {i}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
    let tokens = 3;
    let x = rng.floats(tokens * cols);
    // The int8 repack stays close to f32: per-block rounding of weights and inputs (each ≤ half a
    // step of max/127, i.e. < 0.4% of the block's largest value) bounds the error by about 1% of Σ|w·x|.
    let mut exact = vec![0.0; tokens * rows];
    let mut approx = vec![0.0; tokens * rows];
    f32m.matmul(&x, tokens, &mut exact, &pool);
    int8.matmul(&x, tokens, &mut approx, &pool);
    for i in 0..tokens * rows {
        let magnitude: f32 = (0..cols)
            .map(|k| (weights[(i % rows) * cols + k] * x[(i / rows) * cols + k]).abs())
            .sum();
        assert!(
            (exact[i] - approx[i]).abs() <= 0.01 * magnitude,
            "output {i}: {} vs {}",
            approx[i],
            exact[i]
        );
    }
    let mut row = vec![0.0; cols];
    f16.row(5, &mut row);
    assert_eq!(row[7], half::f16::from_f32(weights[5 * cols + 7]).to_f32());
    int8.row(5, &mut row);
    assert!((row[7] - weights[5 * cols + 7]).abs() <= 1.0 / 127.0);
    assert!(OutputMatrix::from_f16_bytes(&f16_bytes[1..], rows, cols)
        .unwrap_err()
        .to_string()
        .contains(&(rows * cols * 2).to_string()));
}

#[test]
fn pool_chunks_cover_the_slice_once_each_with_their_index() {
    for threads in [1, 2, 3] {
        let pool = ThreadPool::new(threads);
        for (len, chunk_len) in [(0, 4), (1, 4), (16, 1), (17, 4), (100, 7)] {
            let mut data = vec![0usize; len];
            pool.for_each_chunk_mut(&mut data, chunk_len, |i, chunk| {
                assert!(chunk.len() == chunk_len || (i + 1) * chunk_len >= len);
                for (j, v) in chunk.iter_mut().enumerate() {
                    *v += i * chunk_len + j + 1;
                }
            });
            let want: Vec<usize> = (1..=len).collect();
            assert_eq!(
                data, want,
                "{threads} threads, {len} values in chunks of {chunk_len}"
            );
        }
    }
}

#[test]
fn quantising_on_the_pool_gives_the_same_activations() {
    let mut rng = Rng::new(29);
    let pool = ThreadPool::new(3);
    for (tokens, cols) in [(1, 2560), (16, 2560), (5, 300), (16, 6912)] {
        let x = rng.floats(tokens * cols);
        let serial = QuantizedActivations::quantize(&x, cols);
        // A reused buffer that held a larger batch before, as in a decode loop.
        let mut parallel = QuantizedActivations::quantize(&rng.floats(20 * cols), cols);
        parallel.requantize_on(&x, cols, &pool);
        assert_eq!(parallel.tokens(), tokens);
        for t in 0..tokens {
            assert_eq!(
                parallel.token(t),
                serial.token(t),
                "token {t} of {tokens}x{cols}"
            );
            assert_eq!(parallel.scale(t), serial.scale(t));
            assert_eq!(parallel.sum(t), serial.sum(t));
        }
    }
}

#[test]
fn pool_runs_every_worker_once_and_reports_panics() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    for threads in [1, 2, 3, 5] {
        let pool = ThreadPool::new(threads);
        assert_eq!(pool.threads(), threads);
        for _ in 0..200 {
            let hits: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
            pool.run(|worker, workers| {
                assert_eq!(workers, threads);
                hits[worker].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }
    let pool = ThreadPool::new(2);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.run(|worker, _| assert_ne!(worker, 1, "worker 1 fails"))
    }));
    assert!(result.is_err());
    let count = AtomicUsize::new(0);
    pool.run(|_, _| {
        count.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(
        count.load(Ordering::Relaxed),
        2,
        "the pool still works after a panic"
    );
}

#[test]
fn pool_size_does_not_change_results() {
    let mut rng = Rng::new(21);
    let (rows, cols, tokens) = (61, 1024, 5);
    let matrix = TernaryMatrix::from_ternary(&rng.ternary(rows * cols), rows, cols, 0.3).unwrap();
    let x = QuantizedActivations::quantize(&rng.floats(tokens * cols), cols);
    let mut reference = vec![0.0; tokens * rows];
    matrix.matmul_reference(&x, &mut reference);
    for threads in [1, 2, 3, 8] {
        let mut out = vec![0.0; tokens * rows];
        matrix.matmul(&x, &mut out, &ThreadPool::new(threads));
        assert_eq!(out, reference, "{threads} threads");
    }
}

#[test]
fn gemv_rows_computes_a_row_range_like_matmul() {
    let mut rng = Rng::new(31);
    let (rows, cols) = (23, 384);
    let matrix = TernaryMatrix::from_ternary(&rng.ternary(rows * cols), rows, cols, 0.5).unwrap();
    let x = QuantizedActivations::quantize(&rng.floats(cols), cols);
    let mut whole = vec![0.0; rows];
    matrix.matmul_reference(&x, &mut whole);
    let mut parts = vec![0.0; rows];
    let (head, tail) = parts.split_at_mut(12);
    matrix.gemv_rows(&x, 0, head).unwrap();
    matrix.gemv_rows(&x, 12, tail).unwrap();
    assert_eq!(parts, whole);
    assert!(matrix
        .gemv_rows(&x, 2, &mut [0.0; 4])
        .unwrap_err()
        .to_string()
        .contains("multiple of 4"));
    assert!(
        matrix.gemv_rows(&x, 20, &mut [0.0; 4]).is_err(),
        "rows 20..24 run past the 23 rows"
    );
}

#[test]
fn fast_activation_rounding_matches_round_half_even() {
    let mut rng = Rng::new(77);
    let cols = 1000;
    // Random values, exact halves after scaling (max 127 makes the scale 1), and non-finite ones.
    let mut x = rng.floats(3 * cols);
    for (i, v) in x[cols..2 * cols].iter_mut().enumerate() {
        *v = (i as f32 - 500.0) / 4.0 + 0.5;
    }
    x[cols] = 127.0;
    x[2 * cols + 3] = f32::NAN;
    let q = QuantizedActivations::quantize(&x, cols);
    for t in 0..3 {
        let input = &x[t * cols..(t + 1) * cols];
        let max = input.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-5);
        assert_eq!(q.scale(t), 127.0 / max);
        for (k, &v) in input.iter().enumerate() {
            let expected = (v * q.scale(t)).round_ties_even().clamp(-128.0, 127.0) as i8;
            assert_eq!(q.token(t)[k], expected, "token {t} value {v}");
        }
    }
}

/// The first index of the largest value, NaN counting as -inf (the greedy sampler's rule).
fn first_argmax(values: &[f32]) -> usize {
    let key = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
    (0..values.len()).fold(0, |best, i| {
        if key(values[i]) > key(values[best]) {
            i
        } else {
            best
        }
    })
}

/// F16 rows in groups of near-copies: within a group logits differ by far less than the BF16
/// product's error, so only the exact recomputation can tell them apart. The weights, and
/// their little-endian bytes.
fn near_tie_matrix(rng: &mut Rng, rows: usize, cols: usize) -> (Vec<half::f16>, Vec<u8>) {
    let mut weights = Vec::with_capacity(rows * cols);
    let mut base = Vec::new();
    for r in 0..rows {
        if r % 5 == 0 {
            base = rng
                .floats(cols)
                .into_iter()
                .map(|v| half::f16::from_f32(v * 0.1))
                .collect();
        }
        let mut row = base.clone();
        for _ in 0..3 {
            let k = rng.below(cols);
            let bits = row[k].to_bits();
            row[k] = half::f16::from_bits(if rng.below(2) == 0 {
                bits + 1
            } else {
                bits - 1
            });
        }
        weights.extend(row);
    }
    let bytes = weights
        .iter()
        .flat_map(|w| w.to_bits().to_le_bytes())
        .collect();
    (weights, bytes)
}

/// The F16 product of `x` and the exact-argmax product, in that order.
fn both_products(
    matrix: &OutputMatrix,
    x: &[f32],
    tokens: usize,
    pool: &ThreadPool,
) -> (Vec<f32>, Vec<f32>) {
    let mut exact = vec![0.0; tokens * matrix.rows()];
    matrix.try_matmul(x, tokens, &mut exact, pool).unwrap();
    let mut fast = vec![0.0; tokens * matrix.rows()];
    matrix
        .try_matmul_exact_argmax(x, tokens, &mut fast, pool)
        .unwrap();
    (exact, fast)
}

#[test]
fn the_exact_argmax_product_picks_what_the_exact_product_picks() {
    let mut rng = Rng::new(41);
    let pool = ThreadPool::new(2);
    for (rows, cols) in [(333, 611), (1000, 256)] {
        let (weights, bytes) = near_tie_matrix(&mut rng, rows, cols);
        let matrix = OutputMatrix::from_f16_bytes(&bytes, rows, cols).unwrap();
        for tokens in [1, 9, 10, 16, 17, 33] {
            let x = rng.floats(tokens * cols);
            let (exact, fast) = both_products(&matrix, &x, tokens, &pool);
            for t in 0..tokens {
                let (e, f) = (&exact[t * rows..][..rows], &fast[t * rows..][..rows]);
                let best = first_argmax(e);
                assert_eq!(
                    first_argmax(f),
                    best,
                    "{rows}×{cols}, {tokens} tokens, token {t}"
                );
                let scale: f32 = weights[best * cols..][..cols]
                    .iter()
                    .zip(&x[t * cols..])
                    .map(|(w, &v)| (w.to_f32() * v).abs())
                    .sum();
                assert!(
                    (f[best] - e[best]).abs() <= 1e-5 * scale,
                    "the maximum is exact"
                );
            }
            let differ = fast.iter().zip(&exact).filter(|(f, e)| f != e).count();
            if matrix.exact_argmax_is_faster(tokens) {
                assert!(
                    differ > 0,
                    "the BF16 pass ran, so most rows are approximations"
                );
            } else {
                assert_eq!(differ, 0, "without the fast path it is the exact product");
            }
        }
    }
}

#[test]
fn the_exact_argmax_product_falls_back_where_no_bound_holds() {
    let mut rng = Rng::new(43);
    let pool = ThreadPool::new(2);
    let (rows, cols, tokens) = (64, 128, 16);
    let (_, bytes) = near_tie_matrix(&mut rng, rows, cols);
    let matrix = OutputMatrix::from_f16_bytes(&bytes, rows, cols).unwrap();
    // A NaN activation, or values large enough to overflow a bound: the exact product.
    for poison in [f32::NAN, 3e38] {
        let mut x = rng.floats(tokens * cols);
        x[5 * cols + 7] = poison;
        let (exact, fast) = both_products(&matrix, &x, tokens, &pool);
        let differ = fast
            .iter()
            .zip(&exact)
            .filter(|(f, e)| f.to_bits() != e.to_bits())
            .count();
        assert_eq!(
            differ, 0,
            "activation {poison}: values differ from the exact product"
        );
    }
    // An infinite weight has no bound, and the int8 repack no fast path.
    let mut bytes = bytes;
    bytes[2 * 77..2 * 78].copy_from_slice(&half::f16::INFINITY.to_bits().to_le_bytes());
    let infinite = OutputMatrix::from_f16_bytes(&bytes, rows, cols).unwrap();
    assert!(!infinite.exact_argmax_is_faster(tokens));
    assert!(!infinite.to_int8().exact_argmax_is_faster(tokens));
}
