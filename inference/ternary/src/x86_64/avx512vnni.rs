//! AVX-512 VNNI kernels (512-bit `vpdpbusd`, e.g. Ice Lake, Sapphire Rapids, Zen 4): one 64-byte
//! load holds the 32-byte code groups of two rows of a tile, and the 32 activations of a group are
//! broadcast to both halves, so one `vpdpbusd` does 64 MACs for two rows at once. int32 lanes need
//! no widening (each gains at most 4·2·128 = 1024 per instruction, rows are at most 2^22 long).
//! The int8 output layer uses `vpdpbusd` too, on activations shifted to unsigned (x + 128) with
//! the shift removed exactly through a second `vpdpbusd` of 128 × w. The f16 output layer converts
//! a panel column (16 rows) per instruction and multiplies it by each token's broadcast value
//! (AVX-512F); the f32 dot stays AVX2.

use crate::dispatch::{check_panel_args, check_rows_args, check_tile_args, KernelTable, TILE_ROWS};
use crate::format::CHUNK;
use crate::output::Q8_BLOCK;
use crate::scalar::{q8_block_lanes, Q8_LANES};
use crate::x86_64::{panel_tokens, PrefetchL2};
use std::arch::x86_64::*;

/// Tokens sharing one pass over a tile's codes: 8 tokens × 2 accumulators take 16 of the 32
/// zmm registers, and each decoded code vector feeds 8 `vpdpbusd`s, so decoding stays off the
/// critical path when a batch is compute-bound.
const TOKENS_PER_PASS: usize = 8;

/// Puts the AVX-512 VNNI ternary kernel into `table` (built on AVX2) if the CPU has it.
pub(crate) fn install(table: KernelTable) -> Option<KernelTable> {
    let has = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni");
    has.then_some(KernelTable {
        kernel: crate::dispatch::Kernel::Avx512Vnni,
        ternary_tile,
        q8_rows,
        f16_panel,
        bf16_panel: crate::x86_64::avx512bf16::detect(),
        ..table
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
    let chunks = tile.len() / CHUNK;
    // The first pass reads the tile from memory; later passes find it in cache.
    let mut prefetch = PrefetchL2::new(ahead, chunks);
    let mut token = 0;
    while token < tokens {
        let count = (tokens - token).min(TOKENS_PER_PASS);
        let x = x[token * x_stride..].as_ptr();
        let sums = out[token * TILE_ROWS..(token + count) * TILE_ROWS].as_mut_ptr();
        let w = tile.as_ptr();
        // SAFETY: `install` put this function in a table only after detecting AVX-512 F/BW/VNNI;
        // `check_tile_args` proved each of the `count` token starts (x + t * x_stride) has
        // `chunks * 128` values, the tile `chunks * 128` bytes, and `sums` 4 values per token.
        unsafe {
            match count {
                1 => rows4_tokens::<1>(w, x, x_stride, chunks, sums, &mut prefetch),
                2 => rows4_tokens::<2>(w, x, x_stride, chunks, sums, &mut prefetch),
                3 => rows4_tokens::<3>(w, x, x_stride, chunks, sums, &mut prefetch),
                4 => rows4_tokens::<4>(w, x, x_stride, chunks, sums, &mut prefetch),
                5 => rows4_tokens::<5>(w, x, x_stride, chunks, sums, &mut prefetch),
                6 => rows4_tokens::<6>(w, x, x_stride, chunks, sums, &mut prefetch),
                7 => rows4_tokens::<7>(w, x, x_stride, chunks, sums, &mut prefetch),
                _ => rows4_tokens::<8>(w, x, x_stride, chunks, sums, &mut prefetch),
            }
        }
        token += count;
    }
}

/// Σ code·x for the 4 rows of a tile and `T` tokens, written as `out[t * 4 + row]`, with one
/// prefetch step per chunk.
///
/// # Safety
/// AVX-512 F/BW/VNNI; `w` points at `chunks * 128` bytes, `x + t * x_stride` at `chunks * 128`
/// values for every `t < T`, and `out` at `4 * T` writable values.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn rows4_tokens<const T: usize>(
    w: *const u8,
    x: *const i8,
    x_stride: usize,
    chunks: usize,
    out: *mut i32,
    prefetch: &mut PrefetchL2<'_>,
) {
    let at = prefetch.at();
    let mask = _mm512_set1_epi8(3);
    // acc[t][0] holds rows 0 (low half) and 1 (high half), acc[t][1] rows 2 and 3.
    let mut acc = [[_mm512_setzero_si512(); 2]; T];
    for chunk in 0..chunks {
        at.step(chunk);
        // SAFETY: chunk < chunks, so the tile's 128 bytes for this chunk are in bounds.
        let (w01, w23) = unsafe {
            let wp = w.add(chunk * CHUNK) as *const __m512i;
            (_mm512_loadu_si512(wp), _mm512_loadu_si512(wp.add(1)))
        };
        macro_rules! group {
            ($g:tt, $codes:expr) => {{
                let (c01, c23) = $codes;
                for (t, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: group $g < 4 stays inside this chunk's 128 values of token t.
                    let xg = unsafe {
                        _mm512_broadcast_i64x4(_mm256_loadu_si256(
                            x.add(t * x_stride + chunk * CHUNK + 32 * $g) as *const __m256i,
                        ))
                    };
                    acc[0] = _mm512_dpbusd_epi32(acc[0], c01, xg);
                    acc[1] = _mm512_dpbusd_epi32(acc[1], c23, xg);
                }
            }};
        }
        group!(
            0,
            (
                _mm512_and_si512(_mm512_srli_epi16::<6>(w01), mask),
                _mm512_and_si512(_mm512_srli_epi16::<6>(w23), mask)
            )
        );
        group!(
            1,
            (
                _mm512_and_si512(_mm512_srli_epi16::<4>(w01), mask),
                _mm512_and_si512(_mm512_srli_epi16::<4>(w23), mask)
            )
        );
        group!(
            2,
            (
                _mm512_and_si512(_mm512_srli_epi16::<2>(w01), mask),
                _mm512_and_si512(_mm512_srli_epi16::<2>(w23), mask)
            )
        );
        group!(
            3,
            (_mm512_and_si512(w01, mask), _mm512_and_si512(w23, mask))
        );
    }
    prefetch.advance(chunks);
    let zero = [_mm512_setzero_si512(); 2];
    let mut t = 0;
    while t < T {
        let n = (T - t).min(4);
        let quad: [[__m512i; 2]; 4] =
            std::array::from_fn(|i| if i < n { acc[t + i] } else { zero });
        let mask: __mmask16 = ((1u32 << (4 * n)) - 1) as __mmask16;
        // SAFETY: the caller gave `4 * T` values at `out`; the mask writes only `4 * n` of
        // the 16 from `out + 4 * t`.
        unsafe { _mm512_mask_storeu_epi32(out.add(4 * t), mask, reduce_quad(quad)) };
        t += n;
    }
}

/// The 16 sums `[t * 4 + row]` of four tokens' accumulator pairs (`[t][0]` = rows 0 | 1 in its
/// 256-bit halves, `[t][1]` = rows 2 | 3), by a transposing tree: 17 shuffles and adds instead
/// of 16 separate horizontal sums.
#[target_feature(enable = "avx512f")]
fn reduce_quad(acc: [[__m512i; 2]; 4]) -> __m512i {
    // Per 128-bit lane, [a0+a2, a1+a3, b0+b2, b1+b3] for a = rows 0|1, b = rows 2|3.
    let pairs = acc
        .map(|[a, b]| _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b)));
    // Per 128-bit lane, [A(t), B(t), A(u), B(u)]: each a full 4-lane sum of that lane.
    let join = |p: __m512i, q: __m512i| {
        let (p, q) = (_mm512_castsi512_ps(p), _mm512_castsi512_ps(q));
        _mm512_add_epi32(
            _mm512_castps_si512(_mm512_shuffle_ps::<0b10_00_10_00>(p, q)),
            _mm512_castps_si512(_mm512_shuffle_ps::<0b11_01_11_01>(p, q)),
        )
    };
    let (t01, t23) = (join(pairs[0], pairs[1]), join(pairs[2], pairs[3]));
    // 128-bit lanes 0+1 hold row 0 (and 2), lanes 2+3 row 1 (and 3). After adding them the
    // lanes are [t01: rows 0/2, t01: rows 1/3, t23: rows 0/2, t23: rows 1/3], each lane
    // ordered [r(t), r+2(t), r(u), r+2(u)].
    let sums = _mm512_add_epi32(
        _mm512_shuffle_i32x4::<0b10_00_10_00>(t01, t23),
        _mm512_shuffle_i32x4::<0b11_01_11_01>(t01, t23),
    );
    // Element e of `sums`: lane L = e / 4, j = e % 4; token = 2 * (L / 2) + j / 2,
    // row = (L % 2) + 2 * (j % 2). Gather them into token-major order.
    let order = _mm512_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15);
    _mm512_permutexvar_epi32(order, sums)
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
    // SAFETY (all calls below): installed only after detecting AVX-512 F/BW/VNNI; every
    // activation row has `cols` values and `blocks` scales (checked above).
    while tokens - t >= 4 {
        out[t..t + 4].copy_from_slice(&unsafe {
            q8_rows_vnni::<4>(w, w_scales, [row(t), row(t + 1), row(t + 2), row(t + 3)])
        });
        t += 4;
    }
    match tokens - t {
        3 => out[t..t + 3].copy_from_slice(&unsafe {
            q8_rows_vnni::<3>(w, w_scales, [row(t), row(t + 1), row(t + 2)])
        }),
        2 => out[t..t + 2]
            .copy_from_slice(&unsafe { q8_rows_vnni::<2>(w, w_scales, [row(t), row(t + 1)]) }),
        1 => out[t] = unsafe { q8_rows_vnni::<1>(w, w_scales, [row(t)]) }[0],
        _ => {}
    }
}

/// One int8 row against `T` tokens. `vpdpbusd` multiplies unsigned by signed bytes, so each
/// activation is taken as x + 128 (x XOR 0x80 read as u8), and 128·w from a `vpdpbusd` of the
/// constant 128 with w is subtracted lane by lane, which leaves the exact Σ w·x of each lane
/// (at most 16·255·127 < 2^24 per block). Lanes follow `Q8RowsFn`.
///
/// # Safety
/// AVX-512 F/BW/VNNI; every `x[t].0.len() == w.len()` and every scale slice has one scale per block.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn q8_rows_vnni<const T: usize>(
    w: &[i8],
    w_scales: &[f32],
    x: [(&[i8], &[f32]); T],
) -> [f32; T] {
    let bias = _mm512_set1_epi8(i8::MIN);
    let mut acc = [_mm512_setzero_ps(); T];
    for (block, wb) in w.chunks(Q8_BLOCK).enumerate() {
        let start = block * Q8_BLOCK;
        if wb.len() % 64 != 0 {
            for (acc, (xt, xs)) in acc.iter_mut().zip(&x) {
                let mut lanes = [0f32; Q8_LANES];
                // SAFETY: `lanes` holds 16 floats.
                unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), *acc) };
                q8_block_lanes(
                    wb,
                    &xt[start..start + wb.len()],
                    w_scales[block] * xs[block],
                    &mut lanes,
                );
                // SAFETY: as above.
                *acc = unsafe { _mm512_loadu_ps(lanes.as_ptr()) };
            }
            continue;
        }
        let mut sums = [_mm512_setzero_si512(); T];
        let mut shift = _mm512_setzero_si512();
        for i in (0..wb.len()).step_by(64) {
            // SAFETY: start + i + 64 <= start + wb.len() <= w.len().
            let wv = unsafe { _mm512_loadu_si512(w.as_ptr().add(start + i) as *const __m512i) };
            shift = _mm512_dpbusd_epi32(shift, bias, wv);
            for (sum, (xt, _)) in sums.iter_mut().zip(&x) {
                // SAFETY: each activation row is as long as `w`.
                let xv =
                    unsafe { _mm512_loadu_si512(xt.as_ptr().add(start + i) as *const __m512i) };
                *sum = _mm512_dpbusd_epi32(*sum, _mm512_xor_si512(xv, bias), wv);
            }
        }
        for ((acc, sum), (_, xs)) in acc.iter_mut().zip(sums).zip(&x) {
            let exact = _mm512_sub_epi32(sum, shift);
            *acc = _mm512_add_ps(
                *acc,
                _mm512_mul_ps(
                    _mm512_cvtepi32_ps(exact),
                    _mm512_set1_ps(w_scales[block] * xs[block]),
                ),
            );
        }
    }
    acc.map(|v| {
        let low = _mm512_castps512_ps256(v);
        let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        hsum_f32(_mm256_add_ps(low, high))
    })
}

/// Sums 8 lanes by halving, as `scalar::reduce_lanes` does for its last three steps.
#[target_feature(enable = "avx")]
fn hsum_f32(v: __m256) -> f32 {
    let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
}

/// See [`crate::dispatch::F16PanelFn`]. Per column: one 32-byte load and conversion gives the
/// column's 16 rows as one vector, then one FMA per token with the token's value broadcast
/// (`vfmadd231ps` with a broadcast memory operand). With fewer than eight tokens the columns are
/// split over `S` accumulators per token, so at least eight FMA chains cover the FMA latency
/// with room for a late load.
fn f16_panel(panel: &[u16], xt: &[f32], tokens: usize, out: &mut [f32], ahead: &[u16]) {
    let cols = check_panel_args(panel.len(), xt.len(), tokens, out.len());
    let (w, x, out) = (panel.as_ptr(), xt.as_ptr(), out.as_mut_ptr());
    let mut prefetch = PrefetchL2::new(ahead, cols);
    macro_rules! run {
        ($t:literal, $s:literal) => {{
            // SAFETY: installed only after detecting AVX-512F (F16C conversions are part of it);
            // `check_panel_args` proved the panel has `cols * 16` values, `xt` `cols * tokens`
            // and `out` `tokens * 16`.
            unsafe { f16_panel_avx512::<$t, $s>(w, x, cols, out, &mut prefetch) }
        }};
    }
    panel_tokens!(tokens, run)
}

/// `T` tokens against one panel, `S` columns per step (one prefetch step per column).
///
/// # Safety
/// AVX-512F; `w` points at `cols * 16` halves, `x` at `cols * T` floats (`x[k * T + t]`), `out`
/// at `T * 16` writable floats.
#[target_feature(enable = "avx512f")]
unsafe fn f16_panel_avx512<const T: usize, const S: usize>(
    w: *const u16,
    x: *const f32,
    cols: usize,
    out: *mut f32,
    prefetch: &mut PrefetchL2<'_>,
) {
    let at = prefetch.at();
    let mut acc = [[_mm512_setzero_ps(); S]; T];
    let column = |k: usize| {
        // SAFETY: k < cols, so the column's 16 halves are inside the panel.
        _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(w.add(k * 16) as *const __m256i) })
    };
    let mut k = 0;
    while k + S <= cols {
        for s in 0..S {
            at.step(k + s);
            let wv = column(k + s);
            for (t, acc) in acc.iter_mut().enumerate() {
                // SAFETY: (k + s) * T + t < cols * T.
                let xv = _mm512_set1_ps(unsafe { *x.add((k + s) * T + t) });
                acc[s] = _mm512_fmadd_ps(wv, xv, acc[s]);
            }
        }
        k += S;
    }
    while k < cols {
        let wv = column(k);
        for (t, acc) in acc.iter_mut().enumerate() {
            // SAFETY: k * T + t < cols * T.
            let xv = _mm512_set1_ps(unsafe { *x.add(k * T + t) });
            acc[0] = _mm512_fmadd_ps(wv, xv, acc[0]);
        }
        k += 1;
    }
    prefetch.advance(cols);
    for (t, acc) in acc.iter().enumerate() {
        let sum = acc[1..].iter().fold(acc[0], |a, &b| _mm512_add_ps(a, b));
        // SAFETY: t * 16 + 16 <= T * 16.
        unsafe { _mm512_storeu_ps(out.add(t * 16), sum) };
    }
}
