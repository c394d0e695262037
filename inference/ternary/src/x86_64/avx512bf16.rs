//! AVX-512 BF16 kernel for the output layer's exact-argmax product (Zen 4, Sapphire Rapids and
//! later): `vdpbf16ps` does 32 multiply-adds per instruction where `vfmadd231ps` does 16, at the
//! same rate on these cores. The F16 panel is converted as it is read: two columns of 16 rows to
//! f32, rounded and packed to BF16, then interleaved so each 32-bit lane holds one row's pair,
//! which meets each token's broadcast activation pair.

use crate::dispatch::{check_bf16_panel_args, Bf16PanelFn};
use crate::x86_64::{panel_tokens, PrefetchL2};
use std::arch::x86_64::*;

/// The kernel, if the CPU has AVX-512 BF16 (and the AVX-512BW permute it uses).
pub(crate) fn detect() -> Option<Bf16PanelFn> {
    let has = is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512bf16");
    has.then_some(bf16_panel as Bf16PanelFn)
}

/// See [`crate::dispatch::Bf16PanelFn`]. With fewer than eight tokens the pairs are split over
/// `S` accumulators per token, so at least eight dot-product chains cover the latency.
fn bf16_panel(panel: &[u16], xp: &[u32], tokens: usize, out: &mut [f32], ahead: &[u16]) {
    let cols = check_bf16_panel_args(panel.len(), xp.len(), tokens, out.len());
    let (w, x, out) = (panel.as_ptr(), xp.as_ptr(), out.as_mut_ptr());
    let mut prefetch = PrefetchL2::new(ahead, cols / 2);
    macro_rules! run {
        ($t:literal, $s:literal) => {{
            // SAFETY: installed only after detecting AVX-512F/BW/BF16; `check_bf16_panel_args`
            // proved the panel has `cols * 16` halves, `xp` `cols.div_ceil(2) * tokens` pairs and
            // `out` `tokens * 16` floats.
            unsafe { bf16_panel_avx512::<$t, $s>(w, x, cols, out, &mut prefetch) }
        }};
    }
    panel_tokens!(tokens, run)
}

/// `T` tokens against one panel, `S` column pairs per step.
///
/// # Safety
/// AVX-512F/BW/BF16; `w` points at `cols * 16` halves, `x` at `cols.div_ceil(2) * T` pairs
/// (`x[p * T + t]`), `out` at `T * 16` writable floats.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn bf16_panel_avx512<const T: usize, const S: usize>(
    w: *const u16,
    x: *const u32,
    cols: usize,
    out: *mut f32,
    prefetch: &mut PrefetchL2<'_>,
) {
    // `vcvtne2ps2bf16` puts column 2p's rows in halves 0..16 and column 2p + 1's in 16..32;
    // lane i needs (row i of 2p, row i of 2p + 1).
    let interleave = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    );
    let column = |k: usize| {
        // SAFETY: callers pass k < cols, so the column's 16 halves are inside the panel.
        _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(w.add(k * 16) as *const __m256i) })
    };
    let pair_of = |low: __m512, high: __m512| -> __m512bh {
        let packed = _mm512_cvtne2ps_pbh(high, low);
        as_bh(_mm512_permutexvar_epi16(interleave, as_bits(packed)))
    };
    let at = prefetch.at();
    let pairs = cols / 2;
    let mut acc = [[_mm512_setzero_ps(); S]; T];
    let mut p = 0;
    while p + S <= pairs {
        for s in 0..S {
            at.step(p + s);
            let wv = pair_of(column(2 * (p + s)), column(2 * (p + s) + 1));
            for (t, acc) in acc.iter_mut().enumerate() {
                // SAFETY: (p + s) * T + t < pairs * T.
                let xv = _mm512_set1_epi32(unsafe { *x.add((p + s) * T + t) } as i32);
                acc[s] = _mm512_dpbf16_ps(acc[s], wv, as_bh(xv));
            }
        }
        p += S;
    }
    while p < cols.div_ceil(2) {
        // The remaining pairs; an odd last column is paired with a zero column.
        let high = if 2 * p + 1 < cols {
            column(2 * p + 1)
        } else {
            _mm512_setzero_ps()
        };
        let wv = pair_of(column(2 * p), high);
        for (t, acc) in acc.iter_mut().enumerate() {
            // SAFETY: p < cols.div_ceil(2), so p * T + t is inside `x`.
            let xv = _mm512_set1_epi32(unsafe { *x.add(p * T + t) } as i32);
            acc[0] = _mm512_dpbf16_ps(acc[0], wv, as_bh(xv));
        }
        p += 1;
    }
    prefetch.advance(pairs);
    for (t, acc) in acc.iter().enumerate() {
        let sum = acc[1..].iter().fold(acc[0], |a, &b| _mm512_add_ps(a, b));
        // SAFETY: t * 16 + 16 <= T * 16.
        unsafe { _mm512_storeu_ps(out.add(t * 16), sum) };
    }
}

/// The same 512 bits seen as 32 BF16 values.
#[inline(always)]
fn as_bh(v: __m512i) -> __m512bh {
    // SAFETY: both are 64-byte plain-bits vector types; every bit pattern is valid for each.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

/// The same 512 bits seen as integers.
#[inline(always)]
fn as_bits(v: __m512bh) -> __m512i {
    // SAFETY: as for `as_bh`.
    unsafe { std::mem::transmute::<__m512bh, __m512i>(v) }
}
