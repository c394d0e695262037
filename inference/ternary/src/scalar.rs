//! Scalar reference kernels. They define the correct result: every SIMD kernel must produce the
//! same integers (ternary, int8) or the same float steps in the same order (int8 output layer);
//! the float output-layer dots are compared within a rounding bound.

use crate::dispatch::TILE_ROWS;
use crate::format::{CHUNK, CHUNK_BYTES};
use crate::output::Q8_BLOCK;
use half::f16;

/// See [`crate::dispatch::TernaryTileFn`]. The reference reads no further than its own tile.
pub(crate) fn ternary_tile(
    tile: &[u8],
    x: &[i8],
    x_stride: usize,
    tokens: usize,
    out: &mut [i32],
    _ahead: &[u8],
) {
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

/// See [`crate::dispatch::F16PanelFn`]: each sum in column order, as a plain loop. The reference
/// reads no further than its own panel.
pub(crate) fn f16_panel(panel: &[u16], xt: &[f32], tokens: usize, out: &mut [f32], _ahead: &[u16]) {
    use crate::output::F16_PANEL;
    let cols = crate::dispatch::check_panel_args(panel.len(), xt.len(), tokens, out.len());
    for t in 0..tokens {
        for i in 0..F16_PANEL {
            out[t * F16_PANEL + i] = (0..cols)
                .map(|k| f16::from_bits(panel[k * F16_PANEL + i]).to_f32() * xt[k * tokens + t])
                .sum();
        }
    }
}

/// `x` rounded to BF16, to nearest with ties to even (as `vcvtne2ps2bf16`), as its 16 bits.
/// NaN stays NaN.
pub(crate) fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

#[cfg(test)]
fn bf16_value(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// See [`crate::dispatch::Bf16PanelFn`]: the emulation the SIMD kernel is tested against. Each
/// row's sum runs over the pairs in order, adding the low product then the high one in f32;
/// hardware may differ in the last bits (subnormals are flushed there), within the bound.
#[cfg(test)]
pub(crate) fn bf16_panel(
    panel: &[u16],
    xp: &[u32],
    tokens: usize,
    out: &mut [f32],
    _ahead: &[u16],
) {
    use crate::output::F16_PANEL;
    let cols = crate::dispatch::check_bf16_panel_args(panel.len(), xp.len(), tokens, out.len());
    let weight = |i: usize, k: usize| {
        if k < cols {
            bf16_value(bf16_bits(f16::from_bits(panel[k * F16_PANEL + i]).to_f32()))
        } else {
            0.0
        }
    };
    for t in 0..tokens {
        for i in 0..F16_PANEL {
            let mut sum = 0f32;
            for p in 0..cols.div_ceil(2) {
                let pair = xp[p * tokens + t];
                sum += weight(i, 2 * p) * bf16_value(pair as u16);
                sum += weight(i, 2 * p + 1) * bf16_value((pair >> 16) as u16);
            }
            out[t * F16_PANEL + i] = sum;
        }
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
        let mut lanes = [0f32; Q8_LANES];
        for (block, (w, x)) in w.chunks(Q8_BLOCK).zip(x.chunks(Q8_BLOCK)).enumerate() {
            q8_block_lanes(w, x, w_scales[block] * x_scales[block], &mut lanes);
        }
        *out = reduce_lanes(lanes);
    }
}

/// Lanes of the int8 output-layer sum; see [`crate::dispatch::Q8RowsFn`].
pub(crate) const Q8_LANES: usize = 16;

/// One block's float step: lane l gets the exact integer sum of the products at positions k
/// with (k mod 64) / 4 == l (the lanes of a 512-bit `vpdpbusd`, or of two 256-bit
/// `vpmaddubsw`+`vpmaddwd` halves), times `scale`.
pub(crate) fn q8_block_lanes(w: &[i8], x: &[i8], scale: f32, lanes: &mut [f32; Q8_LANES]) {
    let mut sums = [0i32; Q8_LANES];
    for (k, (&w, &x)) in w.iter().zip(x).enumerate() {
        sums[(k % 64) / 4] += i32::from(w) * i32::from(x);
    }
    for (lane, sum) in lanes.iter_mut().zip(sums) {
        *lane += sum as f32 * scale;
    }
}

/// Sums the lanes by halving: lane l += lane l + width for width 8, 4, 2, 1, which is what a
/// SIMD horizontal sum does.
pub(crate) fn reduce_lanes(mut lanes: [f32; Q8_LANES]) -> f32 {
    for width in [8, 4, 2, 1] {
        for l in 0..width {
            lanes[l] += lanes[l + width];
        }
    }
    lanes[0]
}
