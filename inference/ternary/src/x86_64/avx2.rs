//! AVX2 kernels: ternary tiles with `vpmaddubsw` (u8 codes × s8 activations), the int8 output
//! layer with `vpmaddubsw` on |w| and sign-moved activations, and F16C/FMA float dots.
//!
//! Overflow proof for the ternary int16 accumulators: codes are 0..=2 (a `TernaryMatrix` is only
//! built from validated codes) and activations are any i8 in -128..=127. One `vpmaddubsw` lane is
//! c₀x₀ + c₁x₁ ∈ [-512, 508], so it never saturates. Each chunk of 128 elements adds 4 such lanes
//! to every int16 accumulator lane: [-2048, 2032] per chunk. After `WIDEN_EVERY` = 16 chunks a
//! lane is within [-32768, 32512] ⊂ i16, and it is then widened to i32 with `vpmaddwd` by 1 and
//! reset. (bitnet.cpp widens every 32 blocks, which can overflow for extreme inputs.)

use crate::dispatch::{check_panel_args, check_rows_args, check_tile_args, KernelTable, TILE_ROWS};
use crate::format::{CHUNK, CHUNK_BYTES};
use crate::output::Q8_BLOCK;
use crate::scalar::{q8_block_lanes, Q8_LANES};
use crate::x86_64::PrefetchL2;
use std::arch::x86_64::*;

/// Chunks summed in int16 before widening to int32; see the module comment.
const WIDEN_EVERY: usize = 16;

/// Replaces every slot of the scalar table (but the BF16 one, which AVX2 lacks) with AVX2 kernels if the CPU has AVX2, FMA and F16C.
pub(crate) fn install(_scalar: KernelTable) -> Option<KernelTable> {
    let has = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    has.then_some(KernelTable {
        kernel: crate::dispatch::Kernel::Avx2,
        ternary_tile,
        f16_panel,
        bf16_panel: None,
        f32_dot,
        q8_rows,
        quantize_row,
        attention_scores,
        attention_values,
    })
}

fn ternary_tile(
    tile: &[u8],
    x: &[i8],
    x_stride: usize,
    tokens: usize,
    out: &mut [i32],
    ahead: &[u8],
) {
    check_tile_args(tile, x, x_stride, tokens, out);
    // SAFETY: `install` put this function in a table only after detecting AVX2, and
    // `check_tile_args` proved every access below in bounds.
    unsafe { ternary_tile_avx2(tile, x, x_stride, tokens, out, ahead) }
}

/// Extracts the 32 codes of element group `$group` (0..=3) from 32 packed bytes.
macro_rules! codes {
    ($packed:expr, $mask:expr, 0) => {
        _mm256_and_si256(_mm256_srli_epi16::<6>($packed), $mask)
    };
    ($packed:expr, $mask:expr, 1) => {
        _mm256_and_si256(_mm256_srli_epi16::<4>($packed), $mask)
    };
    ($packed:expr, $mask:expr, 2) => {
        _mm256_and_si256(_mm256_srli_epi16::<2>($packed), $mask)
    };
    ($packed:expr, $mask:expr, 3) => {
        _mm256_and_si256($packed, $mask)
    };
}

/// # Safety
/// The CPU must have AVX2 and the arguments must pass `check_tile_args`.
#[target_feature(enable = "avx2")]
unsafe fn ternary_tile_avx2(
    tile: &[u8],
    x: &[i8],
    x_stride: usize,
    tokens: usize,
    out: &mut [i32],
    ahead: &[u8],
) {
    let chunks = tile.len() / CHUNK;
    // One step per chunk of the first pass over the tile (two calls of two rows each when
    // tokens come in fours), the pass that reads it from memory.
    let first_pass_calls = if tokens >= 4 { 2 } else { 1 };
    let mut prefetch = PrefetchL2::new(ahead, first_pass_calls * chunks);
    let mut token = 0;
    while token + 4 <= tokens {
        let starts: [*const i8; 4] = std::array::from_fn(|t| x[(token + t) * x_stride..].as_ptr());
        for first_row in [0, 2] {
            // SAFETY: tokens `token..token + 4` exist, each with `chunks * CHUNK` values after its
            // start; rows `first_row` and `first_row + 1` are inside each chunk of the tile.
            let sums = unsafe {
                rows2_tokens4(
                    tile.as_ptr().add(first_row * CHUNK_BYTES),
                    starts,
                    chunks,
                    &mut prefetch,
                )
            };
            for (t, pair) in sums.iter().enumerate() {
                out[(token + t) * TILE_ROWS + first_row..][..2].copy_from_slice(pair);
            }
        }
        token += 4;
    }
    while token + 2 <= tokens {
        // SAFETY: tokens `token` and `token + 1` exist, each with `chunks * CHUNK` values after its start.
        let sums = unsafe {
            rows4_tokens2(
                tile.as_ptr(),
                x.as_ptr().add(token * x_stride),
                x.as_ptr().add((token + 1) * x_stride),
                chunks,
                &mut prefetch,
            )
        };
        out[token * TILE_ROWS..(token + 2) * TILE_ROWS].copy_from_slice(&sums);
        token += 2;
    }
    if token < tokens {
        // SAFETY: as above, for the last token.
        let sums = unsafe {
            rows4_token1(
                tile.as_ptr(),
                x.as_ptr().add(token * x_stride),
                chunks,
                &mut prefetch,
            )
        };
        out[token * TILE_ROWS..(token + 1) * TILE_ROWS].copy_from_slice(&sums);
    }
}

/// Two rows of a tile against four tokens: the GEMM kernel. Extracting codes costs more than
/// loading activations, so codes are reused across 4 tokens; 2 rows × 4 tokens of int16
/// accumulators plus the codes fit the 16 ymm registers.
///
/// # Safety
/// AVX2; `w` points at the first row's group in a tile of `chunks * 128` bytes (rows advance by
/// 32 bytes, chunks by 128), each `x` at `chunks * 128` values.
#[target_feature(enable = "avx2")]
unsafe fn rows2_tokens4(
    w: *const u8,
    x: [*const i8; 4],
    chunks: usize,
    prefetch: &mut PrefetchL2<'_>,
) -> [[i32; 2]; 4] {
    let at = prefetch.at();
    let mask = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    let mut wide = [[_mm256_setzero_si256(); 2]; 4];
    let mut chunk = 0;
    while chunk < chunks {
        let end = (chunk + WIDEN_EVERY).min(chunks);
        let mut narrow = [[_mm256_setzero_si256(); 2]; 4];
        while chunk < end {
            at.step(chunk);
            // SAFETY: chunk < chunks; both rows' 32 bytes lie inside this chunk's 128.
            let (p0, p1) = unsafe {
                let wp = w.add(chunk * CHUNK) as *const __m256i;
                (_mm256_loadu_si256(wp), _mm256_loadu_si256(wp.add(1)))
            };
            macro_rules! group {
                ($g:tt) => {{
                    let (c0, c1) = (codes!(p0, mask, $g), codes!(p1, mask, $g));
                    for (narrow, x) in narrow.iter_mut().zip(&x) {
                        // SAFETY: group $g < 4 stays inside this chunk's 128 values of the token.
                        let xv = unsafe {
                            _mm256_loadu_si256(x.add(chunk * CHUNK + 32 * $g) as *const __m256i)
                        };
                        narrow[0] = _mm256_add_epi16(narrow[0], _mm256_maddubs_epi16(c0, xv));
                        narrow[1] = _mm256_add_epi16(narrow[1], _mm256_maddubs_epi16(c1, xv));
                    }
                }};
            }
            group!(0);
            group!(1);
            group!(2);
            group!(3);
            chunk += 1;
        }
        for (wide, narrow) in wide.iter_mut().zip(narrow) {
            for (wide, narrow) in wide.iter_mut().zip(narrow) {
                *wide = _mm256_add_epi32(*wide, _mm256_madd_epi16(narrow, ones));
            }
        }
    }
    prefetch.advance(chunks);
    wide.map(|pair| pair.map(|v| hsum_i32(v)))
}

/// # Safety
/// AVX2; `w` points at `chunks * 128` bytes, `x` at `chunks * 128` values.
#[target_feature(enable = "avx2")]
unsafe fn rows4_token1(
    w: *const u8,
    x: *const i8,
    chunks: usize,
    prefetch: &mut PrefetchL2<'_>,
) -> [i32; 4] {
    let at = prefetch.at();
    let mask = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    let mut wide = [_mm256_setzero_si256(); 4];
    let mut chunk = 0;
    while chunk < chunks {
        let end = (chunk + WIDEN_EVERY).min(chunks);
        let mut narrow = [_mm256_setzero_si256(); 4];
        while chunk < end {
            at.step(chunk);
            // SAFETY: chunk < chunks, so these 128 activations and 128 code bytes are in bounds.
            let (x0, x1, x2, x3, wp) = unsafe {
                let xp = x.add(chunk * CHUNK) as *const __m256i;
                (
                    _mm256_loadu_si256(xp),
                    _mm256_loadu_si256(xp.add(1)),
                    _mm256_loadu_si256(xp.add(2)),
                    _mm256_loadu_si256(xp.add(3)),
                    w.add(chunk * CHUNK) as *const __m256i,
                )
            };
            for (row, acc) in narrow.iter_mut().enumerate() {
                // SAFETY: row < 4, inside this chunk's 128 bytes.
                let packed = unsafe { _mm256_loadu_si256(wp.add(row)) };
                let s01 = _mm256_add_epi16(
                    _mm256_maddubs_epi16(codes!(packed, mask, 0), x0),
                    _mm256_maddubs_epi16(codes!(packed, mask, 1), x1),
                );
                let s23 = _mm256_add_epi16(
                    _mm256_maddubs_epi16(codes!(packed, mask, 2), x2),
                    _mm256_maddubs_epi16(codes!(packed, mask, 3), x3),
                );
                *acc = _mm256_add_epi16(*acc, _mm256_add_epi16(s01, s23));
            }
            chunk += 1;
        }
        for (wide, narrow) in wide.iter_mut().zip(narrow) {
            *wide = _mm256_add_epi32(*wide, _mm256_madd_epi16(narrow, ones));
        }
    }
    prefetch.advance(chunks);
    wide.map(|v| hsum_i32(v))
}

/// # Safety
/// AVX2; `w` points at `chunks * 128` bytes, `xa` and `xb` at `chunks * 128` values each.
#[target_feature(enable = "avx2")]
unsafe fn rows4_tokens2(
    w: *const u8,
    xa: *const i8,
    xb: *const i8,
    chunks: usize,
    prefetch: &mut PrefetchL2<'_>,
) -> [i32; 8] {
    let at = prefetch.at();
    let mask = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    let mut wide = [_mm256_setzero_si256(); 8];
    let mut chunk = 0;
    while chunk < chunks {
        let end = (chunk + WIDEN_EVERY).min(chunks);
        let mut narrow = [_mm256_setzero_si256(); 8];
        while chunk < end {
            at.step(chunk);
            // SAFETY: chunk < chunks, so the 4×32 code bytes and both tokens' 128 values are in bounds.
            let (packed, xap, xbp) = unsafe {
                let wp = w.add(chunk * CHUNK) as *const __m256i;
                (
                    [
                        _mm256_loadu_si256(wp),
                        _mm256_loadu_si256(wp.add(1)),
                        _mm256_loadu_si256(wp.add(2)),
                        _mm256_loadu_si256(wp.add(3)),
                    ],
                    xa.add(chunk * CHUNK) as *const __m256i,
                    xb.add(chunk * CHUNK) as *const __m256i,
                )
            };
            macro_rules! group {
                ($g:tt) => {{
                    // SAFETY: group $g < 4 stays inside this chunk's 128 values.
                    let (a, b) = unsafe {
                        (
                            _mm256_loadu_si256(xap.add($g)),
                            _mm256_loadu_si256(xbp.add($g)),
                        )
                    };
                    for row in 0..TILE_ROWS {
                        let c = codes!(packed[row], mask, $g);
                        narrow[row] = _mm256_add_epi16(narrow[row], _mm256_maddubs_epi16(c, a));
                        narrow[TILE_ROWS + row] =
                            _mm256_add_epi16(narrow[TILE_ROWS + row], _mm256_maddubs_epi16(c, b));
                    }
                }};
            }
            group!(0);
            group!(1);
            group!(2);
            group!(3);
            chunk += 1;
        }
        for (wide, narrow) in wide.iter_mut().zip(narrow) {
            *wide = _mm256_add_epi32(*wide, _mm256_madd_epi16(narrow, ones));
        }
    }
    prefetch.advance(chunks);
    wide.map(|v| hsum_i32(v))
}

#[target_feature(enable = "avx2")]
fn hsum_i32(v: __m256i) -> i32 {
    let quad = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let pair = _mm_add_epi32(quad, _mm_unpackhi_epi64(quad, quad));
    _mm_cvtsi128_si32(_mm_add_epi32(pair, _mm_shuffle_epi32::<1>(pair)))
}

#[target_feature(enable = "avx")]
fn hsum_f32(v: __m256) -> f32 {
    let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
}

/// Tokens per pass over a panel: 6 tokens × 2 halves of the 16 rows take 12 accumulators, the
/// column's two converted halves 2 more of the 16 ymm registers.
const PANEL_TOKENS_PER_PASS: usize = 6;

/// See [`crate::dispatch::F16PanelFn`]. Per column: two 16-byte loads and conversions give the
/// column's 16 rows as two vectors, then two FMAs per token with its value broadcast. Batches of
/// more than six tokens take several passes over the panel (the later ones from cache).
fn f16_panel(panel: &[u16], xt: &[f32], tokens: usize, out: &mut [f32], ahead: &[u16]) {
    let cols = check_panel_args(panel.len(), xt.len(), tokens, out.len());
    let mut prefetch = PrefetchL2::new(ahead, cols);
    let mut t = 0;
    while t < tokens {
        let n = (tokens - t).min(PANEL_TOKENS_PER_PASS);
        let (w, out) = (panel.as_ptr(), out[t * 16..].as_mut_ptr());
        // Token t's value of column k is at xt[k * tokens + t]: start at token t, same stride.
        let x = xt[t..].as_ptr();
        macro_rules! pass {
            ($n:literal, $s:literal) => {
                // SAFETY: installed only after detecting AVX2, FMA and F16C; `check_panel_args`
                // proved the panel has `cols * 16` halves, `xt` `cols * tokens` floats (so
                // `x[k * tokens + j]` is in bounds for j < n) and `out` `tokens * 16`.
                unsafe { f16_panel_f16c::<$n, $s>(w, x, tokens, cols, out, &mut prefetch) }
            };
        }
        match n {
            1 => pass!(1, 2),
            2 => pass!(2, 1),
            3 => pass!(3, 1),
            4 => pass!(4, 1),
            5 => pass!(5, 1),
            _ => pass!(6, 1),
        }
        t += n;
    }
}

/// `T` tokens against one panel, `S` columns per step (one prefetch step per column); token j's value
/// of column k is `x[k * stride + j]`.
///
/// # Safety
/// AVX2, FMA and F16C; `w` points at `cols * 16` halves, `x + k * stride + j` is readable for
/// every k < cols and j < T, `out` at `T * 16` writable floats.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_panel_f16c<const T: usize, const S: usize>(
    w: *const u16,
    x: *const f32,
    stride: usize,
    cols: usize,
    out: *mut f32,
    prefetch: &mut PrefetchL2<'_>,
) {
    let at = prefetch.at();
    let mut acc = [[[_mm256_setzero_ps(); 2]; S]; T];
    let column = |k: usize| {
        // SAFETY: k < cols, so the column's 16 halves are inside the panel.
        unsafe {
            let p = w.add(k * 16) as *const __m128i;
            (
                _mm256_cvtph_ps(_mm_loadu_si128(p)),
                _mm256_cvtph_ps(_mm_loadu_si128(p.add(1))),
            )
        }
    };
    let mut k = 0;
    while k + S <= cols {
        for s in 0..S {
            at.step(k + s);
            let (lo, hi) = column(k + s);
            for (j, acc) in acc.iter_mut().enumerate() {
                // SAFETY: the caller's contract, for column k + s < cols and token j < T.
                let xv = _mm256_set1_ps(unsafe { *x.add((k + s) * stride + j) });
                acc[s][0] = _mm256_fmadd_ps(lo, xv, acc[s][0]);
                acc[s][1] = _mm256_fmadd_ps(hi, xv, acc[s][1]);
            }
        }
        k += S;
    }
    while k < cols {
        let (lo, hi) = column(k);
        for (j, acc) in acc.iter_mut().enumerate() {
            // SAFETY: as above, for column k < cols.
            let xv = _mm256_set1_ps(unsafe { *x.add(k * stride + j) });
            acc[0][0] = _mm256_fmadd_ps(lo, xv, acc[0][0]);
            acc[0][1] = _mm256_fmadd_ps(hi, xv, acc[0][1]);
        }
        k += 1;
    }
    prefetch.advance(cols);
    for (j, acc) in acc.iter().enumerate() {
        for half in 0..2 {
            let sum = acc[1..]
                .iter()
                .fold(acc[0][half], |a, b| _mm256_add_ps(a, b[half]));
            // SAFETY: j * 16 + half * 8 + 8 <= T * 16.
            unsafe { _mm256_storeu_ps(out.add(j * 16 + half * 8), sum) };
        }
    }
}

fn f32_dot(w: &[f32], x: &[f32]) -> f32 {
    assert_eq!(w.len(), x.len(), "f32 dot of unequal lengths");
    // SAFETY: installed only after detecting AVX2 and FMA; lengths checked above.
    unsafe { f32_dot_fma(w, x) }
}

/// # Safety
/// FMA and AVX; `w.len() == x.len()`.
#[target_feature(enable = "avx2,fma")]
unsafe fn f32_dot_fma(w: &[f32], x: &[f32]) -> f32 {
    let n = w.len();
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (u, acc) in acc.iter_mut().enumerate() {
            // SAFETY: i + 8u + 8 <= n for both slices.
            let (wv, xv) = unsafe {
                (
                    _mm256_loadu_ps(w.as_ptr().add(i + 8 * u)),
                    _mm256_loadu_ps(x.as_ptr().add(i + 8 * u)),
                )
            };
            *acc = _mm256_fmadd_ps(wv, xv, *acc);
        }
        i += 32;
    }
    hsum_f32(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    )) + crate::scalar::f32_dot(&w[i..], &x[i..])
}

fn q8_rows(w: &[i8], w_scales: &[f32], x: &[i8], x_scales: &[f32], tokens: usize, out: &mut [f32]) {
    let (cols, blocks) = (w.len(), w.len().div_ceil(Q8_BLOCK));
    assert!(
        w_scales.len() == blocks,
        "q8 row has {} scales for {blocks} blocks",
        w_scales.len()
    );
    check_rows_args(cols, x.len(), blocks, x_scales.len(), tokens, out.len());
    let row = |t: usize| {
        (
            &x[t * cols..(t + 1) * cols],
            &x_scales[t * blocks..(t + 1) * blocks],
        )
    };
    let mut t = 0;
    // SAFETY (all calls below): installed only after detecting AVX2; every activation row has
    // `cols` values and `blocks` scales (checked above).
    while tokens - t >= 4 {
        out[t..t + 4].copy_from_slice(&unsafe {
            q8_rows_avx2::<4>(w, w_scales, [row(t), row(t + 1), row(t + 2), row(t + 3)])
        });
        t += 4;
    }
    match tokens - t {
        3 => out[t..t + 3].copy_from_slice(&unsafe {
            q8_rows_avx2::<3>(w, w_scales, [row(t), row(t + 1), row(t + 2)])
        }),
        2 => out[t..t + 2]
            .copy_from_slice(&unsafe { q8_rows_avx2::<2>(w, w_scales, [row(t), row(t + 1)]) }),
        1 => out[t] = unsafe { q8_rows_avx2::<1>(w, w_scales, [row(t)]) }[0],
        _ => {}
    }
}

/// One int8 row against `T` tokens; |w| is computed once per 32 weights and used `T` times.
/// Activations must be in -127..=127 (the output layer quantises them so): `vpsignb` cannot
/// negate -128. Then |w|·x pairs are at most 2·127·127 = 32258, `vpmaddubsw` never saturates,
/// and the pairs are widened to i32 at once. Lanes follow `Q8RowsFn`: the low register holds
/// lanes 0–7 (bytes 0–31 of each 64), the high one lanes 8–15.
///
/// # Safety
/// AVX2; every `x[t].0.len() == w.len()` and every scale slice has one scale per block.
#[target_feature(enable = "avx2")]
unsafe fn q8_rows_avx2<const T: usize>(
    w: &[i8],
    w_scales: &[f32],
    x: [(&[i8], &[f32]); T],
) -> [f32; T] {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); 2]; T];
    for (block, wb) in w.chunks(Q8_BLOCK).enumerate() {
        let start = block * Q8_BLOCK;
        if wb.len() % 64 != 0 {
            for (acc, (xt, xs)) in acc.iter_mut().zip(&x) {
                let mut lanes = [0f32; Q8_LANES];
                // SAFETY: `lanes` holds 16 floats.
                unsafe {
                    _mm256_storeu_ps(lanes.as_mut_ptr(), acc[0]);
                    _mm256_storeu_ps(lanes.as_mut_ptr().add(8), acc[1]);
                }
                q8_block_lanes(
                    wb,
                    &xt[start..start + wb.len()],
                    w_scales[block] * xs[block],
                    &mut lanes,
                );
                // SAFETY: as above.
                unsafe {
                    *acc = [
                        _mm256_loadu_ps(lanes.as_ptr()),
                        _mm256_loadu_ps(lanes.as_ptr().add(8)),
                    ]
                };
            }
            continue;
        }
        let mut sums = [[_mm256_setzero_si256(); 2]; T];
        for i in (0..wb.len()).step_by(32) {
            // SAFETY: start + i + 32 <= start + wb.len() <= w.len().
            let wv = unsafe { _mm256_loadu_si256(w.as_ptr().add(start + i) as *const __m256i) };
            let magnitude = _mm256_sign_epi8(wv, wv);
            let half = (i % 64) / 32;
            for (sums, (xt, _)) in sums.iter_mut().zip(&x) {
                // SAFETY: each activation row is as long as `w`.
                let xv =
                    unsafe { _mm256_loadu_si256(xt.as_ptr().add(start + i) as *const __m256i) };
                let products = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(xv, wv)),
                    ones,
                );
                sums[half] = _mm256_add_epi32(sums[half], products);
            }
        }
        for ((acc, sums), (_, xs)) in acc.iter_mut().zip(sums).zip(&x) {
            let scale = _mm256_set1_ps(w_scales[block] * xs[block]);
            for (acc, sum) in acc.iter_mut().zip(sums) {
                *acc = _mm256_add_ps(*acc, _mm256_mul_ps(_mm256_cvtepi32_ps(sum), scale));
            }
        }
    }
    acc.map(|[low, high]| hsum_f32(_mm256_add_ps(low, high)))
}

fn quantize_row(input: &[f32], scale: f32, out: &mut [i8]) {
    assert!(
        out.len() >= input.len(),
        "quantize_row: output shorter than input"
    );
    // SAFETY: installed only after detecting AVX2; lengths checked above.
    unsafe { quantize_row_avx2(input, scale, out) }
}

/// `out[i] = round_half_even(input[i] · scale)` saturated to i8, NaN → 0: the scalar
/// [`crate::activations`] rule, 32 values per step. `vcvtps2dq` rounds half to even under the
/// default MXCSR, as the scalar magic-number rounding does for |v| < 2^22, and the saturating
/// packs are the scalar clamp.
///
/// # Safety
/// AVX2; `out.len() >= input.len()`.
#[target_feature(enable = "avx2")]
unsafe fn quantize_row_avx2(input: &[f32], scale: f32, out: &mut [i8]) {
    let factor = _mm256_set1_ps(scale);
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let whole = input.len() / 32 * 32;
    let to_i32 = |v: __m256| {
        let scaled = _mm256_mul_ps(v, factor);
        let finite_or_zero = _mm256_and_ps(scaled, _mm256_cmp_ps::<_CMP_ORD_Q>(scaled, scaled));
        _mm256_cvtps_epi32(finite_or_zero)
    };
    for i in (0..whole).step_by(32) {
        // SAFETY: i + 32 <= whole <= input.len() <= out.len().
        unsafe {
            let p = input.as_ptr().add(i);
            let [a, b, c, d] = [0, 8, 16, 24].map(|k| to_i32(_mm256_loadu_ps(p.add(k))));
            // The packs interleave 128-bit lanes; the permute puts the 8 dwords back in order.
            let bytes = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
            let bytes = _mm256_permutevar8x32_epi32(bytes, order);
            _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, bytes);
        }
    }
    for (q, &v) in out[whole..].iter_mut().zip(&input[whole..]) {
        *q = crate::activations::round_to_i8(v * scale);
    }
}

fn attention_scores(
    queries: &[f32],
    keys: &[u16],
    head_dim: usize,
    scale: f32,
    scores: &mut [f32],
    stride: usize,
) {
    crate::attention::check(
        "scores",
        queries.len(),
        keys.len(),
        head_dim,
        scores.len(),
        stride,
    );
    // SAFETY: installed only after detecting AVX2 and F16C; shapes checked above.
    unsafe { attention_scores_avx2(queries, keys, head_dim, scale, scores, stride) }
}

fn attention_values(
    weights: &[f32],
    stride: usize,
    values: &[u16],
    head_dim: usize,
    out: &mut [f32],
) {
    crate::attention::check(
        "values",
        out.len(),
        values.len(),
        head_dim,
        weights.len(),
        stride,
    );
    // SAFETY: installed only after detecting AVX2 and F16C; shapes checked above.
    unsafe { attention_values_avx2(weights, stride, values, head_dim, out) }
}

/// [`crate::attention::attention_scores`] on AVX2 + F16C: per key, its f16 values are
/// converted 8 at a time and each query head accumulates `acc += q · k` in the 8 lanes the
/// scalar `dot` uses; lanes are then added in order 0..8, the tail after them, as there.
///
/// # Safety
/// AVX2 and F16C; shapes as [`crate::attention::check`] accepts them.
#[target_feature(enable = "avx2,f16c")]
unsafe fn attention_scores_avx2(
    queries: &[f32],
    keys: &[u16],
    head_dim: usize,
    scale: f32,
    scores: &mut [f32],
    stride: usize,
) {
    let whole = head_dim / 8 * 8;
    let mut stack = [0f32; crate::attention::STACK_HEAD_DIM];
    let mut heap = Vec::new();
    let key = crate::attention::head_buffer(&mut stack, &mut heap, head_dim);
    for (j, bits) in keys.chunks_exact(head_dim).enumerate() {
        f16_row_to_f32(bits, key);
        for (q, query) in queries.chunks_exact(head_dim).enumerate() {
            let mut acc = _mm256_setzero_ps();
            for c in (0..whole).step_by(8) {
                // SAFETY: c + 8 <= whole <= head_dim for both rows.
                let (a, b) = unsafe {
                    (
                        _mm256_loadu_ps(query.as_ptr().add(c)),
                        _mm256_loadu_ps(key.as_ptr().add(c)),
                    )
                };
                acc = _mm256_add_ps(acc, _mm256_mul_ps(a, b));
            }
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` holds 8 floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
            let mut sum = 0.0;
            for lane in lanes {
                sum += lane;
            }
            for (x, y) in query[whole..].iter().zip(&key[whole..]) {
                sum += x * y;
            }
            scores[q * stride + j] = sum * scale;
        }
    }
}

/// `out = bits` as f32, 8 halves per `vcvtph2ps` (exact, as the scalar conversion).
#[target_feature(enable = "avx2,f16c")]
fn f16_row_to_f32(bits: &[u16], out: &mut [f32]) {
    let whole = bits.len().min(out.len()) / 8 * 8;
    for c in (0..whole).step_by(8) {
        // SAFETY: c + 8 <= whole, within both slices.
        unsafe {
            let h = _mm_loadu_si128(bits.as_ptr().add(c) as *const __m128i);
            _mm256_storeu_ps(out.as_mut_ptr().add(c), _mm256_cvtph_ps(h));
        }
    }
    for (o, &b) in out[whole..].iter_mut().zip(&bits[whole..]) {
        *o = half::f16::from_bits(b).to_f32();
    }
}

/// [`crate::attention::attention_values`] on AVX2 + F16C: each value is converted once and
/// `out += w · v` is a multiply then an add per element, as in the scalar loop.
///
/// # Safety
/// AVX2 and F16C; shapes as [`crate::attention::check`] accepts them.
#[target_feature(enable = "avx2,f16c")]
unsafe fn attention_values_avx2(
    weights: &[f32],
    stride: usize,
    values: &[u16],
    head_dim: usize,
    out: &mut [f32],
) {
    let whole = head_dim / 8 * 8;
    let mut stack = [0f32; crate::attention::STACK_HEAD_DIM];
    let mut heap = Vec::new();
    let value = crate::attention::head_buffer(&mut stack, &mut heap, head_dim);
    for (j, bits) in values.chunks_exact(head_dim).enumerate() {
        f16_row_to_f32(bits, value);
        for (q, head_out) in out.chunks_exact_mut(head_dim).enumerate() {
            let weight = _mm256_set1_ps(weights[q * stride + j]);
            for c in (0..whole).step_by(8) {
                // SAFETY: c + 8 <= whole <= head_dim for `head_out` and `value`.
                unsafe {
                    let o = head_out.as_mut_ptr().add(c);
                    let v = _mm256_loadu_ps(value.as_ptr().add(c));
                    _mm256_storeu_ps(
                        o,
                        _mm256_add_ps(_mm256_loadu_ps(o), _mm256_mul_ps(weight, v)),
                    );
                }
            }
            let w = weights[q * stride + j];
            for (o, v) in head_out[whole..].iter_mut().zip(&value[whole..]) {
                *o += w * v;
            }
        }
    }
}
