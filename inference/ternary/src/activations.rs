//! Activations quantised to int8 per token (absmax), laid out for the kernels: each token's row is
//! padded with zeros to a whole number of 128-element chunks and starts 64-byte aligned.

use crate::dispatch::{active_or_scalar_table, KernelTable};
use crate::error::FormatError;
use crate::format::CHUNK;
use crate::pool::ThreadPool;
use crate::shared_out::SharedOut;

const ALIGN: usize = 64;
/// 1.5·2^23: adding and subtracting it rounds any |v| < 2^22 to an integer, half to even.
const ROUNDING_MAGIC: f32 = 12_582_912.0;

/// max |v|, in 8 independent lanes so that the loop vectorises; NaNs are ignored.
fn absmax(values: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = values.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(v.abs());
        }
    }
    let tail = chunks.remainder().iter().fold(0f32, |m, v| m.max(v.abs()));
    lanes.iter().fold(tail, |m, &v| m.max(v))
}

/// Quantises `input` into `out[..input.len()]` with its absmax scale and returns the scale.
fn quantize_row(table: &KernelTable, input: &[f32], out: &mut [i8]) -> f32 {
    let scale = 127.0 / absmax(input).max(1e-5);
    (table.quantize_row)(input, scale, out);
    scale
}

/// The reference rule the SIMD version must equal: round half to even, clamp, NaN → 0.
pub(crate) fn quantize_row_scalar(input: &[f32], scale: f32, out: &mut [i8]) {
    assert!(
        out.len() >= input.len(),
        "quantize_row: output shorter than input"
    );
    for (q, &v) in out.iter_mut().zip(input) {
        *q = round_to_i8(v * scale);
    }
}

/// Round half to even and saturate to i8, as `round_ties_even().clamp(-128, 127)` but without
/// the libm call that costs on baseline x86-64: |v| ≤ 127.00002 here (v = x·127/max|x|), far
/// inside the range where the magic-number trick is exact. NaN becomes 0.
pub(crate) fn round_to_i8(v: f32) -> i8 {
    round_half_even(v).clamp(-128.0, 127.0) as i8
}

/// Round half to even for |v| < 2^22 (NaN stays NaN).
pub(crate) fn round_half_even(v: f32) -> f32 {
    (v + ROUNDING_MAGIC) - ROUNDING_MAGIC
}

/// Int8 activations of `tokens` tokens × `cols` columns, with each token's scale and sums.
#[derive(Debug, Clone, Default)]
pub struct QuantizedActivations {
    storage: Vec<i8>,
    offset: usize,
    tokens: usize,
    cols: usize,
    stride: usize,
    scales: Vec<f32>,
    sums: Vec<i32>,
    chunk_sums: Vec<i32>,
}

impl QuantizedActivations {
    /// Quantises `x` (`tokens × cols` values, row-major) per token, as BitNet's BitLinear does:
    /// `s = 127 / max(max|x|, 1e-5)`, `q = clamp(round(x·s), -128, 127)` (round half to even).
    ///
    /// # Panics
    /// If `cols` is 0 or `x.len()` is not a multiple of `cols`; [`Self::try_quantize`] returns the error instead.
    pub fn quantize(x: &[f32], cols: usize) -> Self {
        Self::try_quantize(x, cols).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::quantize`], with a shape error instead of a panic.
    pub fn try_quantize(x: &[f32], cols: usize) -> Result<Self, FormatError> {
        let mut quantized = Self::default();
        quantized.try_requantize(x, cols)?;
        Ok(quantized)
    }

    /// Quantises new input into the existing buffers (no allocation when the shape does not grow).
    ///
    /// # Panics
    /// As [`Self::quantize`].
    pub fn requantize(&mut self, x: &[f32], cols: usize) {
        self.try_requantize(x, cols)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::requantize`], with a shape error instead of a panic.
    pub fn try_requantize(&mut self, x: &[f32], cols: usize) -> Result<(), FormatError> {
        self.requantize_with(x, cols, None)
    }

    /// [`Self::requantize`] with the tokens shared out among `pool`'s workers; the same result.
    ///
    /// # Panics
    /// As [`Self::quantize`].
    pub fn requantize_on(&mut self, x: &[f32], cols: usize, pool: &ThreadPool) {
        self.requantize_with(x, cols, Some(pool))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn requantize_with(
        &mut self,
        x: &[f32],
        cols: usize,
        pool: Option<&ThreadPool>,
    ) -> Result<(), FormatError> {
        if cols == 0 || !x.len().is_multiple_of(cols) || cols > crate::format::MAX_COLS {
            return Err(FormatError::InputLength {
                cols,
                actual: x.len(),
            });
        }
        let tokens = x.len() / cols;
        let stride = cols.div_ceil(CHUNK) * CHUNK;
        let chunks = stride / CHUNK;
        self.resize(tokens, cols, stride);
        // Every entry is overwritten below; resizing (not clearing) lets workers fill their own.
        self.scales.resize(tokens, 0.0);
        self.sums.resize(tokens, 0);
        self.chunk_sums.resize(tokens * chunks, 0);
        let table = active_or_scalar_table();
        let offset = self.offset;
        let storage = &mut self.storage[offset..offset + tokens * stride];
        let (scales, sums) = (
            SharedOut::new(&mut self.scales),
            SharedOut::new(&mut self.sums),
        );
        let chunk_sums = SharedOut::new(&mut self.chunk_sums);
        let quantize_token = |token: usize, row: &mut [i8]| {
            let input = &x[token * cols..(token + 1) * cols];
            let scale = quantize_row(&table, input, row);
            row[cols..].fill(0);
            // SAFETY: token `token`'s entries are written by this call only.
            let token_chunk_sums = unsafe { chunk_sums.slice(token * chunks, chunks) };
            let mut total = 0i32;
            for (chunk, sum) in row.chunks_exact(CHUNK).zip(token_chunk_sums) {
                *sum = chunk.iter().map(|&q| i32::from(q)).sum();
                total += *sum;
            }
            // SAFETY: as above.
            unsafe {
                scales.write(token, scale);
                sums.write(token, total);
            }
        };
        match pool {
            Some(pool) => pool.for_each_chunk_mut(storage, stride, quantize_token),
            None => {
                for (token, row) in storage.chunks_exact_mut(stride).enumerate() {
                    quantize_token(token, row);
                }
            }
        }
        Ok(())
    }

    /// Sets the shape and makes room, keeping a 64-byte aligned start.
    fn resize(&mut self, tokens: usize, cols: usize, stride: usize) {
        let needed = tokens * stride;
        if self.storage.len() < self.offset + needed {
            self.storage = vec![0; needed + ALIGN];
            self.offset = self.storage.as_ptr().align_offset(ALIGN).min(ALIGN);
        }
        self.tokens = tokens;
        self.cols = cols;
        self.stride = stride;
    }

    /// Builds activations straight from int8 values (`tokens × cols`) with per-token scales; for
    /// tests and benchmarks that need exact int8 inputs such as all -128.
    pub fn from_int8(values: &[i8], cols: usize, scales: &[f32]) -> Result<Self, FormatError> {
        if cols == 0
            || !values.len().is_multiple_of(cols)
            || cols > crate::format::MAX_COLS
            || values.len() / cols != scales.len()
        {
            return Err(FormatError::InputLength {
                cols,
                actual: values.len(),
            });
        }
        let tokens = scales.len();
        let stride = cols.div_ceil(CHUNK) * CHUNK;
        let mut quantized = Self::default();
        quantized.resize(tokens, cols, stride);
        let offset = quantized.offset;
        for (token, input) in values.chunks_exact(cols).enumerate() {
            let row =
                &mut quantized.storage[offset + token * stride..offset + (token + 1) * stride];
            row[..cols].copy_from_slice(input);
            row[cols..].fill(0);
            let mut total = 0i32;
            for chunk in row.chunks_exact(CHUNK) {
                let sum: i32 = chunk.iter().map(|&q| i32::from(q)).sum();
                quantized.chunk_sums.push(sum);
                total += sum;
            }
            quantized.sums.push(total);
        }
        quantized.scales = scales.to_vec();
        Ok(quantized)
    }

    /// Number of tokens (rows of the input).
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Number of columns per token (before padding).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Distance in elements between the starts of consecutive tokens (cols rounded up to 128).
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Quantisation scale of `token`: q = x · scale.
    pub fn scale(&self, token: usize) -> f32 {
        self.scales[token]
    }

    /// Σ q over the token's values.
    pub fn sum(&self, token: usize) -> i32 {
        self.sums[token]
    }

    /// The token's int8 values, including the zero padding up to [`Self::stride`].
    pub fn token(&self, token: usize) -> &[i8] {
        &self.data()[token * self.stride..(token + 1) * self.stride]
    }

    /// All tokens' values, `tokens × stride`.
    pub(crate) fn data(&self) -> &[i8] {
        &self.storage[self.offset..self.offset + self.tokens * self.stride]
    }

    /// Σ q over 128-element chunk `chunk` of `token`.
    pub(crate) fn chunk_sum(&self, token: usize, chunk: usize) -> i32 {
        self.chunk_sums[token * (self.stride / CHUNK) + chunk]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Vec<Vec<f32>> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        let mut cases = Vec::new();
        for len in [1, 7, 31, 32, 33, 64, 100, 257, 2560] {
            cases.push((0..len).map(|_| next() * 3.0).collect());
        }
        // absmax 127 makes the scale exactly 1, so these land on rounding ties.
        cases.push(vec![
            127.0, 2.5, -2.5, 3.5, -3.5, 0.5, -0.5, 126.5, -126.5, -127.0, 0.0, -0.0, 1.5, 64.5,
            -64.5, 100.49999, 100.5, 101.5, -101.5, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5,
            2.5, 2.5, 2.5, 2.5, 9.5, -9.5,
        ]);
        let mut special: Vec<f32> = (0..40).map(|i| i as f32 - 20.0).collect();
        special[3] = f32::NAN;
        special[17] = f32::INFINITY;
        special[35] = f32::NEG_INFINITY;
        cases.push(special);
        cases.push(vec![f32::NAN; 40]);
        cases.push(vec![1e-9; 70]);
        cases
    }

    #[test]
    fn the_simd_row_quantisation_equals_the_scalar_rule() {
        for kernel in crate::Kernel::available() {
            let table = crate::dispatch::table_for(kernel).unwrap();
            for input in inputs() {
                let mut simd = vec![0x55i8; input.len()];
                let mut scalar = vec![0x55i8; input.len()];
                let scale = quantize_row(&table, &input, &mut simd);
                quantize_row_scalar(&input, scale, &mut scalar);
                assert_eq!(simd, scalar, "{kernel}, input {input:?}");
            }
        }
    }
}
