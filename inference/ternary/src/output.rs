//! `OutputMatrix`: the output layer (the tied token embedding of BitNet 2B4T, 128256×2560), kept
//! as F16 (in 16-row panels, see [`F16_PANEL`]) or F32, and optionally repacked to int8 in q8
//! style (blocks of 256 int8 values with an f32 scale each, 8.125 bits per weight instead of 16),
//! dotted with int8 activations quantised the same way (as llama.cpp's Q8_K). It is the largest
//! single read of a decode step, so halving its bytes matters. Blocks of 256 rather than q8_0's 32
//! keep the float work per block small enough that the product stays memory-bound, and the error
//! is far below the ternary layers'.

use crate::activations::round_half_even;
use crate::dispatch::{active_table, table_for, Kernel, KernelTable};
use crate::error::FormatError;
use crate::pool::{for_each_chunk, ThreadPool};
use crate::shared_out::SharedOut;
use half::f16;

mod argmax;

/// Tokens handed to one row kernel call: the row is read from memory once per batch.
const TOKEN_BATCH: usize = 16;

/// Rows per panel of the F16 layout. A panel stores its rows column by column, so one 32-byte
/// load is a column of 16 rows: a full 512-bit vector of f32 after conversion, multiplied by one
/// broadcast activation per token. A batched product then needs no horizontal sums and reads each
/// panel once, in memory order, for up to 16 tokens.
pub(crate) const F16_PANEL: usize = 16;
/// Batches smaller than this are bound by memory bandwidth, not by the FMAs, and read each panel
/// as one sequential stream that the hardware prefetcher follows best on its own.
const PREFETCH_MIN_TOKENS: usize = 4;

thread_local! {
    /// The F16 product's transposed activations, per calling thread.
    static TRANSPOSED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Values per int8 block, each with its own scale; the last block of a row may be shorter.
pub const Q8_BLOCK: usize = 256;

#[derive(Debug, Clone)]
enum Storage {
    /// Panels of [`F16_PANEL`] rows, column-major inside a panel: row r, column k is at
    /// `(r / 16 * cols + k) * 16 + r % 16`. The last panel is padded with zero rows.
    /// `row_norms[r]` is at least row r's Euclidean norm (rounded up), for the error bound of
    /// [`OutputMatrix::try_matmul_exact_argmax`]; `largest_norm` is their maximum, infinite when
    /// a row holds an infinite or NaN weight.
    F16Panels {
        halves: Vec<u16>,
        row_norms: Vec<f32>,
        largest_norm: f32,
    },
    F32(Vec<f32>),
    Int8 {
        values: Vec<i8>,
        scales: Vec<f32>,
    },
}

/// A dense output-layer matrix, `rows × cols`: F16 in panels, F32 and int8 row-major.
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
        let panels = rows.div_ceil(F16_PANEL);
        let mut packed = vec![0u16; panels * cols * F16_PANEL];
        let mut row_norms = vec![0f32; panels * F16_PANEL];
        // A panel at a time, column by column, so the 16 source rows are read as 16 sequential
        // streams and the panel is written in order; panels are split across the cores (the
        // 2B4T output layer is 657 MB, and start-up waits for it).
        // Every f16's square is exact in f32 (11 significant bits become at most 22).
        let squares_of: Vec<f32> = (0..=u16::MAX)
            .map(|bits| f16::from_bits(bits).to_f32().powi(2))
            .collect();
        let repack = |first_panel: usize, out: &mut [u16], norms: &mut [f32]| {
            let panels_out = out.chunks_exact_mut(cols * F16_PANEL);
            for (p, (out, norms)) in panels_out
                .zip(norms.chunks_exact_mut(F16_PANEL))
                .enumerate()
            {
                let first = (first_panel + p) * F16_PANEL;
                let here = F16_PANEL.min(rows - first);
                let source = &bytes[first * cols * 2..(first + here) * cols * 2];
                let rows_of: Vec<&[u8]> = source.chunks_exact(cols * 2).collect();
                let mut squares = [0f64; F16_PANEL];
                for (k, column) in out.chunks_exact_mut(F16_PANEL).enumerate() {
                    for ((value, row), square) in column.iter_mut().zip(&rows_of).zip(&mut squares)
                    {
                        *value = u16::from_le_bytes([row[2 * k], row[2 * k + 1]]);
                        *square += f64::from(squares_of[usize::from(*value)]);
                    }
                }
                for (norm, square) in norms.iter_mut().zip(squares) {
                    // Rounded up, so the error bound built on it stays a bound.
                    *norm = (square.sqrt() as f32).next_up();
                }
            }
        };
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(panels);
        let per_worker = panels.div_ceil(workers.max(1));
        std::thread::scope(|scope| {
            let norms = row_norms.chunks_mut(per_worker * F16_PANEL);
            for (w, (out, norms)) in packed
                .chunks_mut(per_worker * cols * F16_PANEL)
                .zip(norms)
                .enumerate()
            {
                let repack = &repack;
                scope.spawn(move || repack(w * per_worker, out, norms));
            }
        });
        Ok(OutputMatrix {
            rows,
            cols,
            storage: Storage::F16Panels {
                halves: packed,
                largest_norm: row_norms.iter().fold(0f32, |largest, &norm| {
                    if norm.is_finite() {
                        largest.max(norm)
                    } else {
                        f32::INFINITY
                    }
                }),
                row_norms,
            },
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
            Storage::F16Panels { halves, .. } => 2 * halves.len(),
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
            Storage::F16Panels { halves: v, .. } => {
                let panel = &v[r / F16_PANEL * self.cols * F16_PANEL..][..self.cols * F16_PANEL];
                let column = panel[r % F16_PANEL..].iter().step_by(F16_PANEL);
                for (o, &bits) in out.iter_mut().zip(column) {
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
        match &self.storage {
            Storage::F16Panels { halves, .. } => {
                self.run_panels(table, halves, x, tokens, out, pool)
            }
            _ => self.run_rows(table, x, tokens, out, pool),
        }
    }

    /// The F16 product: panels split across the pool, each against every batch of up to 16
    /// tokens while it is in cache.
    fn run_panels(
        &self,
        table: &KernelTable,
        panels: &[u16],
        x: &[f32],
        tokens: usize,
        out: &mut [f32],
        pool: Option<&ThreadPool>,
    ) {
        let (rows, cols) = (self.rows, self.cols);
        // Each batch of tokens transposed (`[k][t]`), so a kernel broadcasts one value per token.
        // The buffer is the calling thread's and is reused, so a decode loop does not allocate.
        TRANSPOSED.with_borrow_mut(|xt| {
            xt.resize(tokens * cols, 0.0);
            for first in (0..tokens).step_by(F16_PANEL) {
                let count = F16_PANEL.min(tokens - first);
                let block = &mut xt[first * cols..(first + count) * cols];
                for t in 0..count {
                    let token = &x[(first + t) * cols..(first + t + 1) * cols];
                    for (k, &v) in token.iter().enumerate() {
                        block[k * count + t] = v;
                    }
                }
            }
            let out = SharedOut::new(out);
            for_each_panel_batch(panels, cols, tokens, pool, |batch, values| {
                let xs = &xt[batch.first_token * cols..(batch.first_token + batch.tokens) * cols];
                let values = &mut values[..batch.tokens * F16_PANEL];
                (table.f16_panel)(batch.weights, xs, batch.tokens, values, batch.ahead);
                let first_row = batch.panel * F16_PANEL;
                let rows_here = F16_PANEL.min(rows - first_row);
                for (t, sums) in values.chunks_exact(F16_PANEL).enumerate() {
                    let base = (batch.first_token + t) * rows + first_row;
                    // SAFETY: rows of this panel belong to a range claimed by this call only.
                    let out = unsafe { out.slice(base, rows_here) };
                    out.copy_from_slice(&sums[..rows_here]);
                }
            });
        });
    }

    /// The F32 and int8 products: one row per kernel call, rows split across the pool.
    fn run_rows(
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
        let work = |row_range: std::ops::Range<usize>| {
            let mut values = [0f32; TOKEN_BATCH];
            for row in row_range {
                let range = row * cols..(row + 1) * cols;
                for first in (0..tokens).step_by(TOKEN_BATCH) {
                    let count = TOKEN_BATCH.min(tokens - first);
                    let values = &mut values[..count];
                    let xs = first * cols..(first + count) * cols;
                    match (&self.storage, &quantized) {
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
                            &scales[row * blocks..(row + 1) * blocks],
                            &xq[xs],
                            &x_scales[first * blocks..(first + count) * blocks],
                            count,
                            values,
                        ),
                        (Storage::Int8 { .. }, None) => {
                            unreachable!("int8 storage always quantises its input")
                        }
                        (Storage::F16Panels { .. }, _) => {
                            unreachable!("F16 products go through run_panels")
                        }
                    }
                    for (t, &value) in (first..).zip(values.iter()) {
                        // SAFETY: row `row` is in a range claimed by this call only.
                        unsafe { out.write(t * rows + row, value) };
                    }
                }
            }
        };
        for_each_chunk(pool, rows, work);
    }
}

/// One panel against one batch of tokens, as [`for_each_panel_batch`] hands it out.
struct PanelBatch<'a> {
    panel: usize,
    weights: &'a [u16],
    first_token: usize,
    tokens: usize,
    /// The next panel, for the first batch to pull into cache (empty otherwise).
    ahead: &'a [u16],
}

/// Calls `f` for every panel of `halves` (the panels split across the pool) against every batch
/// of up to 16 of `tokens` tokens while the panel is in cache, with a buffer for 16 × 16 sums.
fn for_each_panel_batch(
    halves: &[u16],
    cols: usize,
    tokens: usize,
    pool: Option<&ThreadPool>,
    f: impl Fn(PanelBatch<'_>, &mut [f32; F16_PANEL * F16_PANEL]) + Sync,
) {
    let panel_len = cols * F16_PANEL;
    for_each_chunk(
        pool,
        halves.len() / panel_len,
        |range: std::ops::Range<usize>| {
            let mut values = [0f32; F16_PANEL * F16_PANEL];
            let last = range.end;
            for panel in range {
                let weights = &halves[panel * panel_len..(panel + 1) * panel_len];
                for first_token in (0..tokens).step_by(F16_PANEL) {
                    let n = F16_PANEL.min(tokens - first_token);
                    // The first batch of tokens reads the panel from memory; it fetches the next one
                    // meanwhile.
                    let ahead = if first_token == 0 && n >= PREFETCH_MIN_TOKENS && panel + 1 < last
                    {
                        &halves[(panel + 1) * panel_len..(panel + 2) * panel_len]
                    } else {
                        &[]
                    };
                    let batch = PanelBatch {
                        panel,
                        weights,
                        first_token,
                        tokens: n,
                        ahead,
                    };
                    f(batch, &mut values);
                }
            }
        },
    );
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
