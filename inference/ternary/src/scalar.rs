//! Scalar reference kernels. They define the correct result: every SIMD kernel must produce the
//! same integers (ternary, int8) or the same float steps in the same order (int8 output layer);
//! the float output-layer dots are compared within a rounding bound.

use crate::dispatch::TILE_ROWS;
use crate::format::{CHUNK, CHUNK_BYTES};
use crate::output::Q8_BLOCK;
use half::f16;

/// See [`crate::dispatch::TernaryTileFn`].
pub(crate) fn ternary_tile(tile: &[u8], x: &[i8], x_stride: usize, tokens: usize, out: &mut [i32]) {
    crate::dispatch::check_tile_args(tile, x, x_stride, tokens, out);
    let k = tile.len();
    for token in 0..tokens {
        let x = &x[token * x_stride..token * x_stride + k];
        for row in 0..TILE_ROWS {
            let mut acc = 0i32;
            for chunk in 0..k / CHUNK {
                let packed = &tile[chunk * CHUNK + row * CHUNK_BYTES..][..CHUNK_BYTES];
                for (j, &byte) in packed.iter().enumerate() {
                    for group in 0..4 {
                        let code = (byte >> (6 - 2 * group)) & 3;
                        acc += i32::from(code) * i32::from(x[chunk * CHUNK + 32 * group + j]);
                    }
                }
            }
            out[token * TILE_ROWS + row] = acc;
        }
    }
}

/// Σ w·x, summed in order.
pub(crate) fn f16_dot(w: &[u16], x: &[f32]) -> f32 {
    w.iter()
        .zip(x)
        .map(|(&w, &x)| f16::from_bits(w).to_f32() * x)
        .sum()
}

/// See [`crate::dispatch::F16RowsFn`].
pub(crate) fn f16_rows(w: &[u16], x: &[f32], tokens: usize, out: &mut [f32]) {
    crate::dispatch::check_rows_args(w.len(), x.len(), 0, 0, tokens, out.len());
    for (t, out) in out[..tokens].iter_mut().enumerate() {
        *out = f16_dot(w, &x[t * w.len()..(t + 1) * w.len()]);
    }
}

/// Σ w·x, summed in order.
pub(crate) fn f32_dot(w: &[f32], x: &[f32]) -> f32 {
    w.iter().zip(x).map(|(&w, &x)| w * x).sum()
}

/// See [`crate::dispatch::Q8RowsFn`].
pub(crate) fn q8_rows(
    w: &[i8],
    w_scales: &[f32],
    x: &[i8],
    x_scales: &[f32],
    tokens: usize,
    out: &mut [f32],
) {
    let (cols, blocks) = (w.len(), w_scales.len());
    crate::dispatch::check_rows_args(cols, x.len(), blocks, x_scales.len(), tokens, out.len());
    for (t, out) in out[..tokens].iter_mut().enumerate() {
        let (x, x_scales) = (
            &x[t * cols..(t + 1) * cols],
            &x_scales[t * blocks..(t + 1) * blocks],
        );
        let mut acc = 0f32;
        for (block, (w, x)) in w.chunks(Q8_BLOCK).zip(x.chunks(Q8_BLOCK)).enumerate() {
            acc += q8_block_dot(w, x) as f32 * (w_scales[block] * x_scales[block]);
        }
        *out = acc;
    }
}

/// Σ w·x over one block, exact.
pub(crate) fn q8_block_dot(w: &[i8], x: &[i8]) -> i32 {
    w.iter()
        .zip(x)
        .map(|(&w, &x)| i32::from(w) * i32::from(x))
        .sum()
}
