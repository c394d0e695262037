//! AVX-VNNI kernels (256-bit `vpdpbusd`, e.g. Alder Lake and later): the ternary tile dot
//! accumulates u8 codes × s8 activations straight into int32 lanes, so no widening is needed
//! (each lane gains at most 4·2·128 = 1024 per instruction and rows are at most 2^22 long).
//! The other slots stay AVX2.

use crate::dispatch::{check_tile_args, KernelTable, TILE_ROWS};
use crate::format::CHUNK;
use crate::x86_64::PrefetchL2;
use std::arch::x86_64::*;

/// Puts the AVX-VNNI ternary kernel into `table` (built on AVX2) if the CPU has AVX-VNNI.
pub(crate) fn install(table: KernelTable) -> Option<KernelTable> {
    let has = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("avxvnni");
    has.then_some(KernelTable {
        kernel: crate::dispatch::Kernel::AvxVnni,
        ternary_tile,
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
    // SAFETY: `install` put this function in a table only after detecting AVX2 and AVX-VNNI, and
    // `check_tile_args` proved every access below in bounds.
    unsafe { ternary_tile_vnni(tile, x, x_stride, tokens, out, ahead) }
}

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
/// The CPU must have AVX2 and AVX-VNNI and the arguments must pass `check_tile_args`.
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn ternary_tile_vnni(
    tile: &[u8],
    x: &[i8],
    x_stride: usize,
    tokens: usize,
    out: &mut [i32],
    ahead: &[u8],
) {
    let chunks = tile.len() / CHUNK;
    let mask = _mm256_set1_epi8(3);
    // One step per chunk of the first pass, the one that reads the tile from memory.
    let mut prefetch = PrefetchL2::new(ahead, chunks);
    let mut token = 0;
    while token < tokens {
        let pair = tokens - token >= 2;
        let xa = x[token * x_stride..].as_ptr();
        let xb = if pair {
            x[(token + 1) * x_stride..].as_ptr()
        } else {
            xa
        };
        let mut acc = [_mm256_setzero_si256(); 8];
        let at = prefetch.at();
        for chunk in 0..chunks {
            at.step(chunk);
            // SAFETY: chunk < chunks: the tile's 128 bytes and both tokens' 128 values are in bounds
            // (`xb` repeats `xa` for an odd last token).
            let (packed, xap, xbp) = unsafe {
                let wp = tile.as_ptr().add(chunk * CHUNK) as *const __m256i;
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
                        acc[row] = _mm256_dpbusd_avx_epi32(acc[row], c, a);
                        acc[TILE_ROWS + row] = _mm256_dpbusd_avx_epi32(acc[TILE_ROWS + row], c, b);
                    }
                }};
            }
            group!(0);
            group!(1);
            group!(2);
            group!(3);
        }
        prefetch.advance(chunks);
        let count = if pair { 2 } else { 1 };
        for (i, sum) in acc.iter().take(count * TILE_ROWS).enumerate() {
            out[token * TILE_ROWS + i] = hsum_i32(*sum);
        }
        token += count;
    }
}

#[target_feature(enable = "avx2")]
fn hsum_i32(v: __m256i) -> i32 {
    let quad = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let pair = _mm_add_epi32(quad, _mm_unpackhi_epi64(quad, quad));
    _mm_cvtsi128_si32(_mm_add_epi32(pair, _mm_shuffle_epi32::<1>(pair)))
}
