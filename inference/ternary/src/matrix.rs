//! `TernaryMatrix`: ternary weights repacked once at load into row tiles, and its products with
//! int8 activations. Every path computes exact integer dot products and then the same float step
//! in the same order, so all kernels give bit-identical results.
//!
//! Internal layout: rows are grouped in tiles of 4 (the last tile padded with zero weights); a
//! tile is `cols / 128` chunks, each the 4 rows' 32-byte code groups one after the other. A tile
//! therefore takes exactly `cols` bytes, the same 2 bits per weight as I2_S, and a product streams
//! each tile once while its activations stay in cache.

use crate::activations::QuantizedActivations;
use crate::dispatch::{active_table, table_for, Kernel, KernelTable, TILE_ROWS};
use crate::error::FormatError;
use crate::format::{encode, visit_chunks, WeightFormat, CHUNK, CHUNK_BYTES};
use crate::pool::{for_each_chunk, ThreadPool};
use crate::shared_out::SharedOut;

/// Elements per TQ block, the unit of per-block scales.
const SCALE_BLOCK: usize = 256;
/// Tokens handed to one kernel call; bounds the stack buffer of integer sums.
const TOKEN_BATCH: usize = 16;
/// How many tiles ahead of the one being computed the kernel prefetches: one tile's worth of
/// compute is too short to hide a DRAM access, two is enough.
const PREFETCH_TILES: usize = 2;
/// Per-token values of the per-tensor epilogue, repeated for each of a tile's rows, so a tile's
/// sums for a batch of tokens become floats in one vectorised pass.
#[derive(Default)]
struct EpilogueLanes {
    /// `[token * TILE_ROWS + row]`: the token's float step `w_scale / x_scale`.
    factors: Vec<f32>,
    /// `[token * TILE_ROWS + row]`: the token's Σx.
    sums: Vec<i32>,
}

thread_local! {
    /// The current product's epilogue lanes, on the thread that starts it.
    static LANES: std::cell::RefCell<EpilogueLanes> =
        std::cell::RefCell::new(EpilogueLanes::default());
}

/// A code byte holding four zero weights (code 1 in every field), used for padding rows.
const ZERO_CODES: u8 = 0b0101_0101;

#[derive(Debug, Clone, PartialEq)]
enum Scales {
    /// One scale for the whole tensor: one float step per output.
    PerTensor(f32),
    /// One scale per 256-element block, `rows × cols/256`: one float step per block.
    PerBlock(Vec<f32>),
}

/// A ternary weight matrix in the internal tiled layout, ready for products.
#[derive(Debug, Clone)]
pub struct TernaryMatrix {
    format: WeightFormat,
    rows: usize,
    cols: usize,
    tiles: Vec<u8>,
    scales: Scales,
    kernels: KernelTable,
}

impl TernaryMatrix {
    /// Repacks GGUF tensor bytes of `format` (shape `rows`×`cols`, row-major) into the internal
    /// layout. The result takes the same memory as the source bytes; no float copy is made.
    /// Fails on a wrong byte length, a bad shape, corrupt codes or scales, or an unusable
    /// `TERNARY_KERNEL`.
    pub fn from_gguf(
        format: WeightFormat,
        bytes: &[u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self, FormatError> {
        let kernels = active_table()?;
        Self::from_gguf_with(format, bytes, rows, cols, kernels)
    }

    /// Builds a matrix from ternary values (row-major, each in {-1, 0, 1}) and one scale.
    pub fn from_ternary(
        values: &[i8],
        rows: usize,
        cols: usize,
        scale: f32,
    ) -> Result<Self, FormatError> {
        let bytes = encode(WeightFormat::I2S, values, rows, cols, scale)?;
        Self::from_gguf(WeightFormat::I2S, &bytes, rows, cols)
    }

    fn from_gguf_with(
        format: WeightFormat,
        bytes: &[u8],
        rows: usize,
        cols: usize,
        kernels: KernelTable,
    ) -> Result<Self, FormatError> {
        // Check the length before allocating, so a corrupt shape cannot ask for a huge buffer.
        let expected = format.tensor_bytes(rows, cols)?;
        if bytes.len() != expected {
            let (format, actual) = (format.name(), bytes.len());
            return Err(FormatError::ByteLength {
                format,
                rows,
                cols,
                expected,
                actual,
            });
        }
        let mut tiles = vec![ZERO_CODES; rows.div_ceil(TILE_ROWS) * cols];
        let block_scales = visit_chunks(format, bytes, rows, cols, |row, chunk, packed| {
            let start = (row / TILE_ROWS) * cols + chunk * CHUNK + (row % TILE_ROWS) * CHUNK_BYTES;
            tiles[start..start + CHUNK_BYTES].copy_from_slice(packed);
        })?;
        let scales = match format {
            WeightFormat::I2S => Scales::PerTensor(block_scales[0]),
            WeightFormat::Tq2_0 | WeightFormat::Tq1_0 => {
                collapse_scales(&tiles, cols, block_scales)
            }
        };
        Ok(TernaryMatrix {
            format,
            rows,
            cols,
            tiles,
            scales,
            kernels,
        })
    }

    /// Number of output rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of input columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The on-disk format the matrix was loaded from.
    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// The kernel family its products use.
    pub fn kernel(&self) -> Kernel {
        self.kernels.kernel
    }

    /// Bytes streamed by one product (codes plus scales), for bandwidth figures.
    pub fn weight_bytes(&self) -> usize {
        let scale_bytes = match &self.scales {
            Scales::PerTensor(_) => 4,
            Scales::PerBlock(s) => 4 * s.len(),
        };
        self.tiles.len() + scale_bytes
    }

    /// `out[n*rows + r] = Σ_k W[r,k]·x[n,k]` (dequantised) for every token n, with the rows split
    /// across the pool's workers.
    ///
    /// # Panics
    /// If `x.cols() != self.cols()` or `out.len() != x.tokens() * self.rows()`;
    /// [`Self::try_matmul`] returns the error instead.
    pub fn matmul(&self, x: &QuantizedActivations, out: &mut [f32], pool: &ThreadPool) {
        self.try_matmul(x, out, pool)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// [`Self::matmul`], with a shape error instead of a panic.
    pub fn try_matmul(
        &self,
        x: &QuantizedActivations,
        out: &mut [f32],
        pool: &ThreadPool,
    ) -> Result<(), FormatError> {
        self.check(x, out)?;
        self.run(&self.kernels, x, out, Some(pool));
        Ok(())
    }

    /// The scalar reference product on the calling thread; defines the correct result.
    ///
    /// # Panics
    /// As [`Self::matmul`].
    pub fn matmul_reference(&self, x: &QuantizedActivations, out: &mut [f32]) {
        self.check(x, out).unwrap_or_else(|e| panic!("{e}"));
        let scalar = table_for(Kernel::Scalar).expect("the scalar kernels exist on every CPU");
        self.run(&scalar, x, out, None);
    }

    /// The product with an explicitly chosen kernel family (for tests and A/B benchmarks).
    pub fn matmul_with(
        &self,
        kernel: Kernel,
        x: &QuantizedActivations,
        out: &mut [f32],
        pool: &ThreadPool,
    ) -> Result<(), FormatError> {
        self.check(x, out)?;
        let table = table_for(kernel)?;
        self.run(&table, x, out, Some(pool));
        Ok(())
    }

    /// One token's product for rows `first_row..first_row + out.len()` only, on the calling
    /// thread: lets another scheduler (rayon, a server's own threads) split a GEMV by rows.
    /// `first_row` must be a multiple of 4 (the tile height) and `x` must hold one token.
    pub fn gemv_rows(
        &self,
        x: &QuantizedActivations,
        first_row: usize,
        out: &mut [f32],
    ) -> Result<(), FormatError> {
        if x.cols() != self.cols {
            return Err(FormatError::ColsMismatch {
                expected: self.cols,
                actual: x.cols(),
            });
        }
        let end = first_row + out.len();
        if x.tokens() != 1 || !first_row.is_multiple_of(TILE_ROWS) || end > self.rows {
            return Err(FormatError::RowRange {
                first_row,
                end,
                rows: self.rows,
                tokens: x.tokens(),
            });
        }
        let tiles = first_row / TILE_ROWS..end.div_ceil(TILE_ROWS);
        let writer = SharedOut::with_base(out, first_row);
        self.with_lanes(x, |lanes| {
            self.compute_tiles(&self.kernels, x, lanes, tiles, end, &writer)
        });
        Ok(())
    }

    fn check(&self, x: &QuantizedActivations, out: &[f32]) -> Result<(), FormatError> {
        if x.cols() != self.cols {
            return Err(FormatError::ColsMismatch {
                expected: self.cols,
                actual: x.cols(),
            });
        }
        let expected = x.tokens() * self.rows;
        if out.len() != expected {
            return Err(FormatError::OutputLength {
                tokens: x.tokens(),
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
        x: &QuantizedActivations,
        out: &mut [f32],
        pool: Option<&ThreadPool>,
    ) {
        let tiles = self.rows.div_ceil(TILE_ROWS);
        let out = SharedOut::new(out);
        self.with_lanes(x, |lanes| {
            for_each_chunk(pool, tiles, |range| {
                self.compute_tiles(table, x, lanes, range, self.rows, &out)
            })
        });
    }

    /// Runs `f` with the epilogue's per-token values (empty for per-block scales), computed once
    /// per product on the calling thread instead of once per token per tile (the division took
    /// about 4% of a 16-token product). The buffers are reused between products.
    fn with_lanes(&self, x: &QuantizedActivations, f: impl FnOnce(&EpilogueLanes)) {
        LANES.with_borrow_mut(|lanes| {
            lanes.factors.clear();
            lanes.sums.clear();
            if let Scales::PerTensor(scale) = self.scales {
                for token in 0..x.tokens() {
                    let factor = scale / x.scale(token);
                    lanes.factors.extend([factor; TILE_ROWS]);
                    lanes.sums.extend([x.sum(token); TILE_ROWS]);
                }
            }
            f(lanes);
        });
    }

    /// Computes `tiles` for all tokens, writing rows below `end_row` only; `lanes` as
    /// [`Self::with_lanes`] gives them.
    fn compute_tiles(
        &self,
        table: &KernelTable,
        x: &QuantizedActivations,
        lanes: &EpilogueLanes,
        tiles: std::ops::Range<usize>,
        end_row: usize,
        out: &SharedOut<'_>,
    ) {
        let (rows, cols, stride) = (self.rows, self.cols, x.stride());
        let data = x.data();
        let mut sums = [0i32; TILE_ROWS * TOKEN_BATCH];
        let last_tile = tiles.end;
        for tile in tiles {
            let codes = &self.tiles[tile * cols..(tile + 1) * cols];
            // Only the first batch of tokens reads the tile from memory.
            let ahead_tile = tile + PREFETCH_TILES;
            let ahead = |first_token: usize, range: std::ops::Range<usize>| {
                if first_token == 0 && ahead_tile < last_tile {
                    &self.tiles[ahead_tile * cols..][range]
                } else {
                    &[]
                }
            };
            let first_row = tile * TILE_ROWS;
            let rows_here = TILE_ROWS.min(end_row - first_row);
            for first_token in (0..x.tokens()).step_by(TOKEN_BATCH) {
                let tokens = TOKEN_BATCH.min(x.tokens() - first_token);
                let xs = &data[first_token * stride..];
                let sums = &mut sums[..tokens * TILE_ROWS];
                match &self.scales {
                    Scales::PerTensor(_) => {
                        (table.ternary_tile)(
                            codes,
                            xs,
                            stride,
                            tokens,
                            sums,
                            ahead(first_token, 0..cols),
                        );
                        let lanes_here =
                            first_token * TILE_ROWS..(first_token + tokens) * TILE_ROWS;
                        let factors = &lanes.factors[lanes_here.clone()];
                        let sum_x = &lanes.sums[lanes_here];
                        let mut values = [0f32; TILE_ROWS * TOKEN_BATCH];
                        for (((value, &dot), &sum_x), &factor) in
                            values.iter_mut().zip(&*sums).zip(sum_x).zip(factors)
                        {
                            *value = (dot - sum_x) as f32 * factor;
                        }
                        for (t, values) in values.chunks_exact(TILE_ROWS).take(tokens).enumerate() {
                            let token = first_token + t;
                            // SAFETY: rows first_row.. of this tile are claimed by this call only.
                            let out = unsafe { out.slice(token * rows + first_row, rows_here) };
                            // A whole tile as one fixed-size store: a copy of run-time length
                            // is a `memcpy` call per token.
                            match <&mut [f32; TILE_ROWS]>::try_from(&mut *out) {
                                Ok(out) => out.copy_from_slice(values),
                                Err(_) => out.copy_from_slice(&values[..rows_here]),
                            }
                        }
                    }
                    Scales::PerBlock(block_scales) => {
                        let blocks = cols / SCALE_BLOCK;
                        let mut acc = [0f32; TILE_ROWS * TOKEN_BATCH];
                        for block in 0..blocks {
                            let range = block * SCALE_BLOCK..(block + 1) * SCALE_BLOCK;
                            (table.ternary_tile)(
                                &codes[range.clone()],
                                &xs[range.start..],
                                stride,
                                tokens,
                                sums,
                                ahead(first_token, range.clone()),
                            );
                            let chunk = block * SCALE_BLOCK / CHUNK;
                            for t in 0..tokens {
                                let token = first_token + t;
                                let sum_x =
                                    x.chunk_sum(token, chunk) + x.chunk_sum(token, chunk + 1);
                                for r in 0..rows_here {
                                    let dot = sums[t * TILE_ROWS + r] - sum_x;
                                    acc[t * TILE_ROWS + r] +=
                                        dot as f32 * block_scales[(first_row + r) * blocks + block];
                                }
                            }
                        }
                        for t in 0..tokens {
                            let token = first_token + t;
                            for r in 0..rows_here {
                                // SAFETY: row first_row + r is in a tile claimed by this call only.
                                unsafe {
                                    out.write(
                                        token * rows + first_row + r,
                                        acc[t * TILE_ROWS + r] / x.scale(token),
                                    )
                                };
                            }
                        }
                    }
                }
            }
        }
    }
}

/// TQ files store a scale per 256-block, but a ternarised tensor has one scale, so they are
/// normally all equal; then one float step per output suffices. All-zero blocks don't count:
/// their scale multiplies zero (and llama.cpp stores 0 for them).
fn collapse_scales(tiles: &[u8], cols: usize, block_scales: Vec<f32>) -> Scales {
    let blocks_per_row = cols / SCALE_BLOCK;
    let block_is_zero = |index: usize| {
        let (row, block) = (index / blocks_per_row, index % blocks_per_row);
        let tile = &tiles[(row / TILE_ROWS) * cols..][..cols];
        (0..SCALE_BLOCK / CHUNK).all(|c| {
            let start = block * SCALE_BLOCK + c * CHUNK + (row % TILE_ROWS) * CHUNK_BYTES;
            tile[start..start + CHUNK_BYTES]
                .iter()
                .all(|&b| b == ZERO_CODES)
        })
    };
    let mut nonzero = (0..block_scales.len()).filter(|&i| !block_is_zero(i));
    match nonzero.next() {
        None => Scales::PerTensor(0.0),
        Some(first) => {
            let scale = block_scales[first];
            if nonzero.all(|i| block_scales[i] == scale) {
                Scales::PerTensor(scale)
            } else {
                Scales::PerBlock(block_scales)
            }
        }
    }
}
