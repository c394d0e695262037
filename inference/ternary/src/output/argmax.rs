//! The output layer for greedy decoding, where only each token's largest logit matters: a BF16
//! product (twice the multiply-adds per instruction of the F16 one) gives every row an
//! approximation with a proven error bound, and only the rows whose bound reaches the largest
//! lower bound are computed again exactly. The pick is then the one the exact F16 product gives.
//!
//! The bound, per row r and token x, with u = 2⁻⁸ (BF16 rounding) and γ = n·2⁻²⁴/(1 − n·2⁻²⁴)
//! (n sums in f32): |approx − exact| ≤ ((2u + u²) + γ·((1 + u)² + 1)) · ‖w_r‖ · ‖x‖ + a flush term
//! for the subnormals `vdpbf16ps` treats as zero. Rounding each operand moves a product by at
//! most (2u + u²)|w·x|, each f32 sum (the BF16 one and the exact one it is compared with) by γ
//! times the sum of |products|, and Σ|w·x| ≤ ‖w‖·‖x‖.

use super::{for_each_panel_batch, OutputMatrix, Storage, F16_PANEL};
use crate::dispatch::Bf16PanelFn;
use crate::error::FormatError;
use crate::pool::{for_each_chunk, ThreadPool};
use crate::scalar::bf16_bits;
use crate::shared_out::SharedOut;

/// Up to 8 tokens the F16 product of the 2B4T output layer takes as long as reading it (31 ms
/// for 1, 4 or 8 tokens on 2 Zen 4 cores), so the BF16 pass gains nothing; from 10 it is faster
/// (27–31 ms against 33–35 ms), at 16 tokens 32–35 ms against 50–55 ms.
const FASTER_FROM_TOKENS: usize = 10;

/// Products of a bound that reach this are too close to f32 overflow for the bound to hold.
const OVERFLOW_GUARD: f32 = 1e36;

/// Buffers reused from call to call, per calling thread.
#[derive(Default)]
struct Scratch {
    /// Each batch of tokens as transposed BF16 pairs.
    pairs: Vec<u32>,
    /// `[token][panel]`.
    panel_bounds: Vec<PanelBound>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// The bound's factor on ‖w‖·‖x‖ for rows of `cols` values (see the module doc), with 2⁻¹⁰
/// to spare for the f32 arithmetic that applies it.
fn error_factor(cols: usize) -> f64 {
    let u = 2f64.powi(-8);
    let n_e = cols as f64 * 2f64.powi(-24);
    let gamma = n_e / (1.0 - n_e);
    ((2.0 * u + u * u) + gamma * ((1.0 + u).powi(2) + 1.0)) * (1.0 + 2f64.powi(-10))
}

/// What the fast path reads: the BF16 kernel and the F16 panels with their row norms.
#[derive(Clone, Copy)]
struct ArgmaxParts<'a> {
    kernel: Bf16PanelFn,
    halves: &'a [u16],
    norms: &'a [f32],
    largest_norm: f32,
}

/// Writes `x` (`tokens × cols`) as [`Bf16PanelFn`] takes it, a batch of up to 16 tokens at a
/// time: each batch's pairs transposed, `xp[batch start * pairs + p * count + t]`.
fn pack_pairs(x: &[f32], cols: usize, tokens: usize, xp: &mut [u32]) {
    let pairs = cols.div_ceil(2);
    for first in (0..tokens).step_by(F16_PANEL) {
        let count = F16_PANEL.min(tokens - first);
        let block = &mut xp[first * pairs..(first + count) * pairs];
        for t in 0..count {
            let token = &x[(first + t) * cols..(first + t + 1) * cols];
            for (p, two) in token.chunks(2).enumerate() {
                let high = two.get(1).map_or(0, |&v| bf16_bits(v));
                block[p * count + t] = u32::from(bf16_bits(two[0])) | u32::from(high) << 16;
            }
        }
    }
}

impl OutputMatrix {
    /// Whether [`Self::try_matmul_exact_argmax`] is faster than [`Self::try_matmul`] for
    /// `tokens` tokens on this CPU (it needs AVX-512 BF16, F16 weights, and a batch large enough
    /// for the F16 product to be bound by its arithmetic).
    pub fn exact_argmax_is_faster(&self, tokens: usize) -> bool {
        tokens >= FASTER_FROM_TOKENS && self.exact_argmax_parts().is_some()
    }

    /// What the fast path reads, when it can run: F16 weights that are all finite (an infinite
    /// or NaN weight has no bound).
    fn exact_argmax_parts(&self) -> Option<ArgmaxParts<'_>> {
        let kernel = self.kernels.bf16_panel?;
        match &self.storage {
            Storage::F16Panels {
                halves,
                row_norms,
                largest_norm,
            } if largest_norm.is_finite() => Some(ArgmaxParts {
                kernel,
                halves,
                norms: row_norms,
                largest_norm: *largest_norm,
            }),
            _ => None,
        }
    }

    /// Logits for a greedy pick, laid out as [`Self::try_matmul`]'s. For each token, every row
    /// that could hold the largest logit holds the exact F16 product (as `try_matmul`
    /// computes it, up to f32 rounding order), and every other row an approximation that is
    /// proven smaller than that largest logit. So the first index of the largest value is the
    /// one the exact product gives; the other values are not logits to sample from. Without the
    /// fast path (see [`Self::exact_argmax_is_faster`]) this is `try_matmul`.
    pub fn try_matmul_exact_argmax(
        &self,
        x: &[f32],
        tokens: usize,
        out: &mut [f32],
        pool: &ThreadPool,
    ) -> Result<(), FormatError> {
        self.check(x, tokens, out)?;
        let done = match self.exact_argmax_parts() {
            Some(parts) if tokens >= FASTER_FROM_TOKENS => {
                self.run_exact_argmax(parts, x, tokens, out, pool)
            }
            _ => false,
        };
        if !done {
            self.run(&self.kernels, x, tokens, out, Some(pool));
        }
        Ok(())
    }

    /// The two passes; false (having written nothing) when a token's values are too large or
    /// not finite for the bound, so the caller runs the exact product instead.
    fn run_exact_argmax(
        &self,
        parts: ArgmaxParts<'_>,
        x: &[f32],
        tokens: usize,
        out: &mut [f32],
        pool: &ThreadPool,
    ) -> bool {
        let (rows, cols) = (self.rows, self.cols);
        let factor = error_factor(cols);
        // Per token, the factor that turns a row norm into that row's bound.
        let mut per_norm = Vec::with_capacity(tokens);
        for token in x.chunks_exact(cols) {
            let square: f64 = token.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
            let norm = (square.sqrt() as f32).next_up();
            if !norm.is_finite() || parts.largest_norm * norm >= OVERFLOW_GUARD {
                return false;
            }
            per_norm.push(((factor * f64::from(norm)) as f32).next_up());
        }
        // At most 2 flushed values of under 2⁻¹²⁶ per column, each times a weight (|w| ≤ 65504)
        // or 1.
        let flush = cols as f32 * 2.0 * 65505.0 * f32::MIN_POSITIVE;
        let out = SharedOut::new(out);
        let panels = rows.div_ceil(F16_PANEL);
        SCRATCH.with_borrow_mut(|scratch| {
            let Scratch {
                pairs: xp,
                panel_bounds,
            } = scratch;
            let pairs = cols.div_ceil(2);
            xp.resize(tokens * pairs, 0);
            pack_pairs(x, cols, tokens, xp);
            panel_bounds.resize(tokens * panels, PanelBound::default());
            let shared_bounds = SharedOut::new(panel_bounds.as_mut_slice());
            for_each_panel_batch(parts.halves, cols, tokens, Some(pool), |batch, values| {
                let (first, n) = (batch.first_token, batch.tokens);
                let values = &mut values[..n * F16_PANEL];
                (parts.kernel)(
                    batch.weights,
                    &xp[first * pairs..(first + n) * pairs],
                    n,
                    values,
                    batch.ahead,
                );
                let first_row = batch.panel * F16_PANEL;
                let rows_here = F16_PANEL.min(rows - first_row);
                let norms = &parts.norms[first_row..first_row + rows_here];
                for (t, sums) in values.chunks_exact(F16_PANEL).enumerate() {
                    let token = first + t;
                    let sums = &sums[..rows_here];
                    let bound = PanelBound::of(sums, norms, per_norm[token]);
                    // SAFETY: rows and bounds of this panel belong to a range claimed by this
                    // call only.
                    unsafe {
                        out.slice(token * rows + first_row, rows_here)
                            .copy_from_slice(sums);
                        shared_bounds.write(token * panels + batch.panel, bound);
                    }
                }
            });
            let panel_bounds = &panel_bounds[..];
            for_each_chunk(Some(pool), tokens, |range: std::ops::Range<usize>| {
                for t in range {
                    // SAFETY: each token's row is claimed by one call only, after the first pass.
                    let logits = unsafe { out.slice(t * rows, rows) };
                    let token = &x[t * cols..(t + 1) * cols];
                    let bounds_of_panels = &panel_bounds[t * panels..(t + 1) * panels];
                    self.refine(parts.halves, logits, bounds_of_panels, flush, token);
                }
            });
        });
        true
    }

    /// Recomputes exactly every panel of `logits` whose largest upper bound reaches the largest
    /// lower bound of all.
    fn refine(
        &self,
        halves: &[u16],
        logits: &mut [f32],
        panel_bounds: &[PanelBound],
        flush: f32,
        token: &[f32],
    ) {
        let largest_lower = panel_bounds
            .iter()
            .fold(f32::NEG_INFINITY, |m, b| m.max(b.lower))
            - 2.0 * flush;
        let panel_len = self.cols * F16_PANEL;
        let mut exact = [0f32; F16_PANEL];
        for (panel, bound) in panel_bounds.iter().enumerate() {
            if bound.upper < largest_lower {
                continue;
            }
            let weights = &halves[panel * panel_len..(panel + 1) * panel_len];
            (self.kernels.f16_panel)(weights, token, 1, &mut exact, &[]);
            let rows = panel * F16_PANEL..((panel + 1) * F16_PANEL).min(logits.len());
            let here = rows.len();
            logits[rows].copy_from_slice(&exact[..here]);
        }
    }
}

/// The largest lower and upper bounds of one panel's rows for one token.
#[derive(Clone, Copy, Default)]
struct PanelBound {
    lower: f32,
    upper: f32,
}

impl PanelBound {
    /// Over the rows of `sums`, with bound `per_norm · norm` each.
    #[inline]
    fn of(sums: &[f32], norms: &[f32], per_norm: f32) -> Self {
        let (mut lower, mut upper) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
        for (&value, &norm) in sums.iter().zip(norms) {
            lower = lower.max(value - per_norm * norm);
            upper = upper.max(value + per_norm * norm);
        }
        PanelBound { lower, upper }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    fn floats(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// A panel of 16 rows, column-major, and the same weights as f64 rows.
    fn panel(cols: usize, seed: u64) -> (Vec<u16>, Vec<Vec<f64>>) {
        let values = floats(16 * cols, seed);
        let mut halves = vec![0u16; 16 * cols];
        let mut rows = vec![vec![0f64; cols]; 16];
        for (i, row) in rows.iter_mut().enumerate() {
            for (k, w) in row.iter_mut().enumerate() {
                // Spread over several binades, as trained weights are.
                let h = f16::from_f32(values[i * cols + k] * (1 << (k % 5)) as f32 / 16.0);
                halves[k * 16 + i] = h.to_bits();
                *w = f64::from(h.to_f32());
            }
        }
        (halves, rows)
    }

    fn paired(x: &[f32], tokens: usize, cols: usize) -> Vec<u32> {
        let mut xp = vec![0u32; cols.div_ceil(2) * tokens];
        pack_pairs(x, cols, tokens, &mut xp);
        xp
    }

    #[test]
    fn the_bf16_panel_stays_within_the_bound_and_matches_its_emulation() {
        let simd = crate::x86_64_bf16();
        for cols in [2, 7, 64, 610, 2560] {
            let (halves, rows) = panel(cols, cols as u64);
            for tokens in [1, 2, 3, 5, 8, 13, 16] {
                let x = floats(tokens * cols, 7 + tokens as u64);
                let xp = paired(&x, tokens, cols);
                let mut emulated = vec![0f32; tokens * 16];
                crate::scalar::bf16_panel(&halves, &xp, tokens, &mut emulated, &[]);
                let mut fast = vec![0f32; tokens * 16];
                if let Some(kernel) = simd {
                    kernel(&halves, &xp, tokens, &mut fast, &halves);
                }
                for t in 0..tokens {
                    let token = &x[t * cols..(t + 1) * cols];
                    let x_norm = token
                        .iter()
                        .map(|&v| f64::from(v).powi(2))
                        .sum::<f64>()
                        .sqrt();
                    for (i, row) in rows.iter().enumerate() {
                        let exact: f64 =
                            row.iter().zip(token).map(|(w, &v)| w * f64::from(v)).sum();
                        let w_norm = row.iter().map(|w| w * w).sum::<f64>().sqrt();
                        let bound = error_factor(cols) * w_norm * x_norm;
                        let got = f64::from(emulated[t * 16 + i]);
                        assert!(
                            (got - exact).abs() <= bound,
                            "emulation, cols {cols} token {t} row {i}: {got} vs {exact} ± {bound}"
                        );
                        if simd.is_some() {
                            let fast = f64::from(fast[t * 16 + i]);
                            assert!((fast - exact).abs() <= bound, "kernel: {fast} vs {exact}");
                            // Same roundings in another order: far closer than the bound.
                            assert!(
                                (fast - got).abs() <= bound / 16.0,
                                "kernel {fast} vs emulation {got}, cols {cols} tokens {tokens}"
                            );
                        }
                    }
                }
            }
        }
    }
}
