//! The two products of attention over an f16 KV cache: the scores of a group of query heads
//! against a run of cached keys, and the weighted sum of cached values. Each key and value is
//! converted from f16 once for all the query heads of its group (GQA). The AVX2 path does the
//! scalar reference's operations lane for lane (multiply, then add, in 8 independent sums,
//! reduced in the same order), so it equals it exactly.

use crate::dispatch::active_or_scalar_table;
use half::f16;

/// Lanes of the scalar reference's dot product; the AVX2 path keeps one lane per sum.
pub(crate) const DOT_LANES: usize = 8;
/// Heads up to this width are converted into a stack buffer, so decoding does not allocate.
pub(crate) const STACK_HEAD_DIM: usize = 512;

/// A `head_dim` scratch row: the stack array when it fits, else `heap`.
pub(crate) fn head_buffer<'a>(
    stack: &'a mut [f32; STACK_HEAD_DIM],
    heap: &'a mut Vec<f32>,
    head_dim: usize,
) -> &'a mut [f32] {
    if head_dim <= STACK_HEAD_DIM {
        &mut stack[..head_dim]
    } else {
        heap.resize(head_dim, 0.0);
        heap
    }
}

/// `scores[q * stride + j] = scale · (queries[q] · keys[j])` for every query head `q` of
/// `queries` (`heads × head_dim`) and cached key `j` of `keys` (`n × head_dim` f16 bits).
///
/// # Panics
/// If `head_dim` is 0, a slice is not a whole number of heads, `stride < n`, or `scores` is
/// too short for `heads` rows of `stride`.
pub fn attention_scores(
    queries: &[f32],
    keys: &[u16],
    head_dim: usize,
    scale: f32,
    scores: &mut [f32],
    stride: usize,
) {
    (active_or_scalar_table().attention_scores)(queries, keys, head_dim, scale, scores, stride);
}

/// `out[q] += Σ_j weights[q * stride + j] · values[j]` for every query head `q` of `out`
/// (`heads × head_dim`) and cached value `j` of `values` (`n × head_dim` f16 bits).
///
/// # Panics
/// As [`attention_scores`], with `weights` in place of `scores`.
pub fn attention_values(
    weights: &[f32],
    stride: usize,
    values: &[u16],
    head_dim: usize,
    out: &mut [f32],
) {
    (active_or_scalar_table().attention_values)(weights, stride, values, head_dim, out);
}

/// Checks the shapes both products share: `per_head` (queries or outputs) and `cached` (keys
/// or values) are whole heads, and `table` (scores or weights) holds a row of `stride ≥ n` per
/// head.
pub(crate) fn check(
    what: &str,
    per_head: usize,
    cached: usize,
    head_dim: usize,
    table: usize,
    stride: usize,
) {
    assert!(
        head_dim > 0 && per_head.is_multiple_of(head_dim) && cached.is_multiple_of(head_dim),
        "attention {what}: {per_head} query values and {cached} cached values are not whole heads of {head_dim}"
    );
    let (heads, n) = (per_head / head_dim, cached / head_dim);
    assert!(
        stride >= n && (heads == 0 || table >= (heads - 1) * stride + n),
        "attention {what}: a table of {table} for {heads} heads × {n} positions at stride {stride}"
    );
}

/// The reference dot product: 8 independent sums of products, added lane 0 first.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; DOT_LANES];
    let whole = a.len() / DOT_LANES * DOT_LANES;
    for (ca, cb) in a[..whole]
        .chunks_exact(DOT_LANES)
        .zip(b[..whole].chunks_exact(DOT_LANES))
    {
        for k in 0..DOT_LANES {
            acc[k] += ca[k] * cb[k];
        }
    }
    let mut sum = 0.0;
    for lane in acc {
        sum += lane;
    }
    for (x, y) in a[whole..].iter().zip(&b[whole..]) {
        sum += x * y;
    }
    sum
}

pub(crate) fn scores_scalar(
    queries: &[f32],
    keys: &[u16],
    head_dim: usize,
    scale: f32,
    scores: &mut [f32],
    stride: usize,
) {
    check(
        "scores",
        queries.len(),
        keys.len(),
        head_dim,
        scores.len(),
        stride,
    );
    let (mut stack, mut heap) = ([0f32; STACK_HEAD_DIM], Vec::new());
    let key = head_buffer(&mut stack, &mut heap, head_dim);
    for (j, bits) in keys.chunks_exact(head_dim).enumerate() {
        for (k, &b) in key.iter_mut().zip(bits) {
            *k = f16::from_bits(b).to_f32();
        }
        for (q, query) in queries.chunks_exact(head_dim).enumerate() {
            scores[q * stride + j] = dot(query, key) * scale;
        }
    }
}

pub(crate) fn values_scalar(
    weights: &[f32],
    stride: usize,
    values: &[u16],
    head_dim: usize,
    out: &mut [f32],
) {
    check(
        "values",
        out.len(),
        values.len(),
        head_dim,
        weights.len(),
        stride,
    );
    let (mut stack, mut heap) = ([0f32; STACK_HEAD_DIM], Vec::new());
    let value = head_buffer(&mut stack, &mut heap, head_dim);
    for (j, bits) in values.chunks_exact(head_dim).enumerate() {
        for (v, &b) in value.iter_mut().zip(bits) {
            *v = f16::from_bits(b).to_f32();
        }
        for (q, head_out) in out.chunks_exact_mut(head_dim).enumerate() {
            let weight = weights[q * stride + j];
            for (o, v) in head_out.iter_mut().zip(value.iter()) {
                *o += weight * v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floats(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
            })
            .collect()
    }

    fn halves(values: &[f32]) -> Vec<u16> {
        values.iter().map(|&v| f16::from_f32(v).to_bits()).collect()
    }

    #[test]
    fn every_kernel_family_equals_the_scalar_reference_exactly() {
        for kernel in crate::Kernel::available() {
            let table = crate::dispatch::table_for(kernel).unwrap();
            for (head_dim, heads, n) in [
                (128, 4, 1),
                (128, 4, 67),
                (64, 2, 9),
                (8, 1, 3),
                (12, 3, 5),
                (3, 2, 4),
            ] {
                let queries = floats(heads * head_dim, 7 + n as u64);
                let keys = halves(&floats(n * head_dim, 11));
                let stride = n + 3;
                let mut simd = vec![f32::NAN; heads * stride];
                let mut scalar = simd.clone();
                (table.attention_scores)(&queries, &keys, head_dim, 0.125, &mut simd, stride);
                scores_scalar(&queries, &keys, head_dim, 0.125, &mut scalar, stride);
                for q in 0..heads {
                    let (a, b) = (&simd[q * stride..][..n], &scalar[q * stride..][..n]);
                    assert_eq!(
                        a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{kernel} scores, head_dim {head_dim}, head {q}"
                    );
                }
                let weights = floats(heads * stride, 5);
                let values = halves(&floats(n * head_dim, 13));
                let mut simd = floats(heads * head_dim, 17);
                let mut scalar = simd.clone();
                (table.attention_values)(&weights, stride, &values, head_dim, &mut simd);
                values_scalar(&weights, stride, &values, head_dim, &mut scalar);
                assert_eq!(
                    simd.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    scalar.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{kernel} values, head_dim {head_dim}"
                );
            }
        }
    }

    #[test]
    fn scores_are_scaled_dot_products() {
        let queries = [1.0, 2.0, 3.0, 4.0, 0.5, 0.5, 0.5, 0.5];
        let keys = halves(&[1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0]);
        let mut scores = [0f32; 4];
        attention_scores(&queries, &keys, 4, 0.5, &mut scores, 2);
        assert_eq!(scores, [2.5, 10.0, 0.5, 2.0]);
        let mut out = [0f32; 8];
        attention_values(&[1.0, 0.5, 0.0, 2.0], 2, &keys, 4, &mut out);
        assert_eq!(out, [2.0, 1.0, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]);
    }
}
