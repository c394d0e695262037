//! AVX-512 VNNI kernels (512-bit `vpdpbusd`, e.g. Ice Lake, Sapphire Rapids, Zen 4): one 64-byte
//! load holds the 32-byte code groups of two rows of a tile, and the 32 activations of a group are
//! broadcast to both halves, so one `vpdpbusd` does 64 MACs for two rows at once. int32 lanes need
//! no widening (each gains at most 4·2·128 = 1024 per instruction, rows are at most 2^22 long).
//! The other slots stay AVX2.

use crate::dispatch::{check_tile_args, KernelTable, TILE_ROWS};
use crate::format::CHUNK;
use std::arch::x86_64::*;

/// Tokens sharing one pass over a tile's codes.
const TOKENS_PER_PASS: usize = 4;

/// Puts the AVX-512 VNNI ternary kernel into `table` (built on AVX2) if the CPU has it.
pub(crate) fn install(table: KernelTable) -> Option<KernelTable> {
    let has = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni");
    has.then_some(KernelTable {
        kernel: crate::dispatch::Kernel::Avx512Vnni,
        ternary_tile,
        ..table
    })
}

fn ternary_tile(tile: &[u8], x: &[i8], x_stride: usize, tokens: usize, out: &mut [i32]) {
    check_tile_args(tile, x, x_stride, tokens, out);
    let chunks = tile.len() / CHUNK;
    let mut token = 0;
    while token < tokens {
        let count = (tokens - token).min(TOKENS_PER_PASS);
        let start = |i: usize| x[(token + i) * x_stride..].as_ptr();
        let sums = &mut out[token * TILE_ROWS..(token + count) * TILE_ROWS];
        // SAFETY: `install` put this function in a table only after detecting AVX-512 F/BW/VNNI;
        // `check_tile_args` proved each token start has `chunks * 128` values and the tile
        // `chunks * 128` bytes.
        unsafe {
            match count {
                1 => sums.copy_from_slice(
                    rows4_tokens::<1>(tile.as_ptr(), [start(0)], chunks).as_flattened(),
                ),
                2 => sums.copy_from_slice(
                    rows4_tokens::<2>(tile.as_ptr(), [start(0), start(1)], chunks).as_flattened(),
                ),
                3 => sums.copy_from_slice(
                    rows4_tokens::<3>(tile.as_ptr(), [start(0), start(1), start(2)], chunks)
                        .as_flattened(),
                ),
                _ => sums.copy_from_slice(
                    rows4_tokens::<4>(
                        tile.as_ptr(),
                        [start(0), start(1), start(2), start(3)],
                        chunks,
                    )
                    .as_flattened(),
                ),
            }
        }
        token += count;
    }
}

/// Σ code·x for the 4 rows of a tile and `T` tokens: `result[t][row]`.
///
/// # Safety
/// AVX-512 F/BW/VNNI; `w` points at `chunks * 128` bytes and each `x` at `chunks * 128` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn rows4_tokens<const T: usize>(
    w: *const u8,
    x: [*const i8; T],
    chunks: usize,
) -> [[i32; TILE_ROWS]; T] {
    let mask = _mm512_set1_epi8(3);
    // acc[t][0] holds rows 0 (low half) and 1 (high half), acc[t][1] rows 2 and 3.
    let mut acc = [[_mm512_setzero_si512(); 2]; T];
    for chunk in 0..chunks {
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
                            x[t].add(chunk * CHUNK + 32 * $g) as *const __m256i,
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
    let mut sums = [[0i32; TILE_ROWS]; T];
    for (sums, acc) in sums.iter_mut().zip(&acc) {
        for (half, pair) in acc.iter().enumerate() {
            sums[2 * half] = hsum_i32(_mm512_castsi512_si256(*pair));
            sums[2 * half + 1] = hsum_i32(_mm512_extracti64x4_epi64::<1>(*pair));
        }
    }
    sums
}

#[target_feature(enable = "avx2")]
fn hsum_i32(v: __m256i) -> i32 {
    let quad = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let pair = _mm_add_epi32(quad, _mm_unpackhi_epi64(quad, quad));
    _mm_cvtsi128_si32(_mm_add_epi32(pair, _mm_shuffle_epi32::<1>(pair)))
}
