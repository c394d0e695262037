//! Element-wise float functions written so the compiler vectorises them: the forward pass applies
//! them to every FFN value of every token (6912 × batch per layer), where a libm call per element
//! would cost more than the layer's matrix products at small batches.

/// Cephes' `expf` reduction and polynomial: `e^x = 2^n · e^r` with `n = round(x·log₂e)` and
/// `|r| ≤ ln2/2`, `e^r` by a degree-6 polynomial. Against libm's `exp` over the clamped range
/// the worst relative error measured is 1.2e-7, about one ulp (the test allows 2.5e-7). Inputs
/// are clamped to ±87, where `e^x` stays a normal float; NaN stays NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n·LN2_HI is exact for the n that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2^23: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 87.0);
    let n = (x * LOG2_E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    // |n| ≤ 126 here, so the exponent field n + 127 is that of a normal float.
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    e_r * scale
}

/// `silu(g) · u` for every pair, into `gate`.
pub(crate) fn silu_times(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp(-*g)) * u;
    }
}

/// `relu(g)² · u` for every pair, into `gate`.
pub(crate) fn relu2_times(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        let r = g.max(0.0);
        *g = r * r * u;
    }
}

/// `Σ v²` in 16 independent lanes, so the sum vectorises (a single running sum is a chain of
/// dependent adds, four cycles each).
pub(crate) fn sum_of_squares(values: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let mut chunks = values.chunks_exact(16);
    for chunk in &mut chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += v * v;
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relative_error(got: f32, want: f32) -> f64 {
        ((f64::from(got) - f64::from(want)) / f64::from(want)).abs()
    }

    #[test]
    fn exp_matches_libm_to_a_few_ulp_over_the_range_the_ffn_sees() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 87.0 {
            worst = worst.max(relative_error(exp(x), x.exp()));
            x += 0.001_7;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn exp_saturates_instead_of_overflowing_and_keeps_nan() {
        assert!(exp(1000.0).is_finite() && exp(1000.0) > 1e37);
        assert!(exp(-1000.0) >= 0.0 && exp(-1000.0) < 1e-37);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(f32::INFINITY).is_finite());
    }

    #[test]
    fn silu_times_matches_the_libm_formula() {
        let mut gate: Vec<f32> = (-400..400).map(|i| i as f32 * 0.05).collect();
        gate.extend([-200.0, -90.0, 90.0, 200.0, 0.0, -0.0]);
        let up: Vec<f32> = (0..gate.len())
            .map(|i| 1.0 + (i % 7) as f32 * 0.25)
            .collect();
        let want: Vec<f32> = gate
            .iter()
            .zip(&up)
            .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
            .collect();
        let mut got = gate.clone();
        silu_times(&mut got, &up);
        for ((&g, &w), &x) in got.iter().zip(&want).zip(&gate) {
            let tolerance = 5e-7 * w.abs() + 1e-30;
            assert!(
                (g - w).abs() <= tolerance,
                "silu({x}) = {g}, libm gives {w}"
            );
        }
        let mut nan = [f32::NAN];
        silu_times(&mut nan, &[1.0]);
        assert!(nan[0].is_nan());
    }

    #[test]
    fn relu2_times_and_sum_of_squares_are_the_plain_formulas() {
        let mut gate = [-2.0, -0.0, 0.5, 3.0];
        relu2_times(&mut gate, &[1.0, 2.0, 4.0, -1.0]);
        assert_eq!(gate, [0.0, 0.0, 1.0, -9.0]);
        let values: Vec<f32> = (0..37).map(|i| i as f32 - 18.0).collect();
        let want: f32 = values.iter().map(|v| v * v).sum();
        assert_eq!(sum_of_squares(&values), want);
    }
}
