//! `OutputMatrix`: the output layer (the tied token embedding of BitNet 2B4T, 128256×2560), kept
//! as F16 (or F32) and optionally repacked to int8 in q8 style (blocks of 256 int8 values with an
//! f32 scale each, 8.125 bits per weight instead of 16), dotted with int8 activations quantised
//! the same way (as llama.cpp's Q8_K). It is the largest single read of a decode step, so halving
//! its bytes matters. Blocks of 256 rather than q8_0's 32 keep the float work per block small
//! enough that the product stays memory-bound, and the error is far below the ternary layers'.

use crate::activations::round_half_even;
use crate::dispatch::{active_table, table_for, Kernel, KernelTable};
use crate::error::FormatError;
use crate::pool::{for_each_chunk, ThreadPool};
use crate::shared_out::SharedOut;
use half::f16;

/// Tokens handed to one row kernel call: the row is read from memory once per batch.
const TOKEN_BATCH: usize = 16;

/// F16 rows handed to one block kernel call, so one activation load can serve several rows.
const F16_ROW_GROUP: usize = 4;
/// How many row groups ahead of the one being computed the F16 kernel prefetches: one group's
/// worth of compute is too short to hide a DRAM access, two is enough.
const PREFETCH_GROUPS: usize = 2;

/// Values per int8 block, each with its own scale; the last block of a row may be shorter.
pub const Q8_BLOCK: usize = 256;

#[derive(Debug, Clone)]
enum Storage {
    F16(Vec<u16>),
    F32(Vec<f32>),
    Int8 { values: Vec<i8>, scales: Vec<f32> },
}

/// A dense output-layer matrix, `rows × cols`, row-major.
#[derive(Debug, Clone)]
pub struct OutputMatrix {
    rows: usize,
    cols: usize,
    storage: Storage,
    kernels: KernelTable,
}

fn check_shape(
    rows: usize,
    cols: usize,
    given: usize,
    bytes_per_value: usize,
) -> Result<(), FormatError> {
    if rows == 0 || cols == 0 {
        return Err(FormatError::EmptyShape { rows, cols });
    }
    let expected = rows
        .checked_mul(cols)
        .and_then(|n| n.checked_mul(bytes_per_value))
        .ok_or(FormatError::ShapeTooLarge {
            rows,
            cols,
            max_cols: crate::format::MAX_COLS,
        })?;
    if given != expected {
        let format = if bytes_per_value == 2 { "F16" } else { "F32" };
        return Err(FormatError::ByteLength {
            format,
            rows,
            cols,
            expected,
            actual: given,
        });
    }
    Ok(())
}

impl OutputMatrix {
    /// Wraps F16 tensor bytes (little-endian, row-major `rows × cols`).
    pub fn from_f16_bytes(bytes: &[u8], rows: usize, cols: usize) -> Result<Self, FormatError> {
        check_shape(rows, cols, bytes.len(), 2)?;
        let values = bytes
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        Ok(OutputMatrix {
            rows,
            cols,
            storage: Storage::F16(values),
            kernels: active_table()?,
        })
    }

    /// Wraps f32 values (row-major `rows × cols`).
    pub fn from_f32(values: &[f32], rows: usize, cols: usize) -> Result<Self, FormatError> {
        check_shape(rows, cols, values.len().saturating_mul(4), 4)?;
        Ok(OutputMatrix {
            rows,
            cols,
            storage: Storage::F32(values.to_vec()),
            kernels: active_table()?,
        })
    }

    /// The q8-style int8 repack: per block of 256 values of a row `d = max|w| / 127`, `q = round(w / d)`.
    /// Drop the original afterwards so the int8 copy replaces it rather than adding to it.
    /// An int8 matrix is returned as a copy.
    pub fn to_int8(&self) -> Self {
        if self.is_int8() {
            return self.clone();
        }
        let mut values = Vec::with_capacity(self.rows * self.cols);
        let mut scales = Vec::with_capacity(self.rows * self.blocks_per_row());
        let mut row = vec![0f32; self.cols];
        for r in 0..self.rows {
            self.row(r, &mut row);
            for block in row.chunks(Q8_BLOCK) {
                scales.push(quantize_block(block, &mut values));
            }
        }
        OutputMatrix {
            rows: self.rows,
            cols: self.cols,
            storage: Storage::Int8 { values, scales },
            kernels: self.kernels,
        }
    }

    fn blocks_per_row(&self) -> usize {
        self.cols.div_ceil(Q8_BLOCK)
    }

    /// Number of rows (vocabulary entries).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (model width).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Whether the matrix holds the int8 repack.
    pub fn is_int8(&self) -> bool {
        matches!(self.storage, Storage::Int8 { .. })
    }

    /// Bytes streamed by one product.
    pub fn weight_bytes(&self) -> usize {
        match &self.storage {
            Storage::F16(v) => 2 * v.len(),
            Storage::F32(v) => 4 * v.len(),
            Storage::Int8 { values, scales } => values.len() + 4 * scales.len(),
        }
    }

    /// Writes dequantised row `r` (an embedding lookup) into `out[..cols]`.
    ///
    /// # Panics
    /// If `r >= rows` or `out.len() < cols`.
    pub fn row(&self, r: usize, out: &mut [f32]) {
        assert!(
            r < self.rows,
            "row {r} out of range: the matrix has {} rows",
            self.rows
        );
        let out = &mut out[..self.cols];
        let range = r * self.cols..(r + 1) * self.cols;
        match &self.storage {
            Storage::F16(v) => {
                for (o, &bits) in out.iter_mut().zip(&v[range]) {
                    *o = f16::from_bits(bits).to_f32();
                }
            }
            Storage::F32(v) => out.copy_from_slice(&v[range]),
            Storage::Int8 { values, scales } => {
                let scales = &scales[r * self.blocks_per_row()..];
                for (i, (o, &q)) in out.iter_mut().zip(&values[range]).enumerate() {
                    *o = f32::from(q) * scales[i / Q8_BLOCK];
                }
            }
        }
    }

    /// `out[n*rows + r] = Σ_k W[r,k]·x[n*cols + k]` for `tokens` tokens, rows split across the pool.
    ///
    /// # Panics
    /// If `x.len() != tokens * cols` or `out.len() != tokens * rows`; [`Self::try_matmul`] returns the error instead.
    pub fn matmul(&self, x: &[f32], tokens: usize, out: &mut [f32], pool: &ThreadPool) {
        self.try_matmul(x, tokens, out, pool)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// [`Self::matmul`], with a shape error instead of a panic.
    pub fn try_matmul(
        &self,
        x: &[f32],
        tokens: usize,
        out: &mut [f32],
        pool: &ThreadPool,
    ) -> Result<(), FormatError> {
        self.check(x, tokens, out)?;
        self.run(&self.kernels, x, tokens, out, Some(pool));
        Ok(())
    }

    /// The scalar reference product on the calling thread.
    ///
    /// # Panics
    /// As [`Self::matmul`].
    pub fn matmul_reference(&self, x: &[f32], tokens: usize, out: &mut [f32]) {
        self.check(x, tokens, out).unwrap_or_else(|e| panic!("{e}"));
        let scalar = table_for(Kernel::Scalar).expect("the scalar kernels exist on every CPU");
        self.run(&scalar, x, tokens, out, None);
    }

    /// The product with an explicitly chosen kernel family (for tests and A/B benchmarks).
    pub fn matmul_with(
        &self,
        kernel: Kernel,
        x: &[f32],
        tokens: usize,
        out: &mut [f32],
        pool: &ThreadPool,
    ) -> Result<(), FormatError> {
        self.check(x, tokens, out)?;
        let table = table_for(kernel)?;
        self.run(&table, x, tokens, out, Some(pool));
        Ok(())
    }

    fn check(&self, x: &[f32], tokens: usize, out: &[f32]) -> Result<(), FormatError> {
        if x.len() != tokens * self.cols {
            return Err(FormatError::Length {
                what: "output-layer input",
                rows: tokens,
                cols: self.cols,
                expected: tokens * self.cols,
                actual: x.len(),
            });
        }
        let expected = tokens * self.rows;
        if out.len() != expected {
            return Err(FormatError::OutputLength {
                tokens,
                rows: self.rows,
                expected,
                actual: out.len(),
            });
        }
        Ok(())
    }

    fn run(
        &self,
        table: &KernelTable,
        x: &[f32],
        tokens: usize,
        out: &mut [f32],
        pool: Option<&ThreadPool>,
    ) {
        let (rows, cols) = (self.rows, self.cols);
        let blocks = self.blocks_per_row();
        let quantized = match self.storage {
            Storage::Int8 { .. } => Some(quantize_activations(x, cols)),
            _ => None,
        };
        let out = SharedOut::new(out);
        // F16 rows go to the kernel in groups so one activation load can serve several rows;
        // the other storages take one row per call.
        let group_rows = match self.storage {
            Storage::F16(_) => F16_ROW_GROUP,
            _ => 1,
        };
        let work = |row_range: std::ops::Range<usize>| {
            let mut values = [0f32; F16_ROW_GROUP * TOKEN_BATCH];
            let mut first_row = row_range.start;
            while first_row < row_range.end {
                let group = group_rows.min(row_range.end - first_row);
                let range = first_row * cols..(first_row + group) * cols;
                let ahead_start = (first_row + PREFETCH_GROUPS * group).min(row_range.end);
                let ahead_rows = ahead_start..(ahead_start + group).min(row_range.end);
                for first in (0..tokens).step_by(TOKEN_BATCH) {
                    let count = TOKEN_BATCH.min(tokens - first);
                    let values = &mut values[..group * count];
                    let xs = first * cols..(first + count) * cols;
                    match (&self.storage, &quantized) {
                        (Storage::F16(w), _) => {
                            // Only the first batch of tokens reads the rows from memory.
                            let ahead = if first == 0 {
                                &w[ahead_rows.start * cols..ahead_rows.end * cols]
                            } else {
                                &[]
                            };
                            (table.f16_block)(
                                &w[range.clone()],
                                group,
                                &x[xs],
                                cols,
                                count,
                                values,
                                ahead,
                            )
                        }
                        (Storage::F32(w), _) => {
                            for (t, value) in values.iter_mut().enumerate() {
                                *value = (table.f32_dot)(
                                    &w[range.clone()],
                                    &x[(first + t) * cols..(first + t + 1) * cols],
                                );
                            }
                        }
                        (Storage::Int8 { values: w, scales }, Some((xq, x_scales))) => (table
                            .q8_rows)(
                            &w[range.clone()],
                            &scales[first_row * blocks..(first_row + 1) * blocks],
                            &xq[xs],
                            &x_scales[first * blocks..(first + count) * blocks],
                            count,
                            values,
                        ),
                        (Storage::Int8 { .. }, None) => {
                            unreachable!("int8 storage always quantises its input")
                        }
                    }
                    // values[r * count + t]: row first_row + r, token first + t.
                    for (r, row_values) in (first_row..).zip(values.chunks_exact(count)) {
                        for (t, &value) in (first..).zip(row_values) {
                            // SAFETY: row r is in a range claimed by this call only.
                            unsafe { out.write(t * rows + r, value) };
                        }
                    }
                }
                first_row += group;
            }
        };
        for_each_chunk(pool, rows, work);
    }
}

/// Appends the int8 values of one block to `values` and returns its scale.
/// Values stay within ±127 so the AVX2 kernel can move signs with `vpsignb`; |v·inverse| ≤ 127
/// keeps the cheap rounding exact.
fn quantize_block(block: &[f32], values: &mut Vec<i8>) -> f32 {
    let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = max / 127.0;
    let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    values.extend(
        block
            .iter()
            .map(|&v| round_half_even(v * inverse).clamp(-127.0, 127.0) as i8),
    );
    scale
}

/// q8-style quantisation of the output layer's input: per token, per block absmax.
fn quantize_activations(x: &[f32], cols: usize) -> (Vec<i8>, Vec<f32>) {
    let mut values = Vec::with_capacity(x.len());
    let scales = x
        .chunks_exact(cols)
        .flat_map(|token| token.chunks(Q8_BLOCK))
        .map(|block| quantize_block(block, &mut values))
        .collect();
    (values, scales)
}
