//! The on-disk ternary formats (I2_S, TQ2_0, TQ1_0): sizes, encoding, decoding, and a walk over a
//! tensor's 128-element chunks in our internal code order, which `TernaryMatrix` repacks from.
//!
//! Internal code order (the I2_S x86 order): a 128-element chunk is 32 bytes; byte `j` holds the
//! codes of elements `j`, `32+j`, `64+j`, `96+j` in bits 7–6, 5–4, 3–2, 1–0. Codes are 0, 1, 2 for
//! -1, 0, +1. With that order a 32-byte SIMD load plus a shift and a mask yields 32 codes whose
//! elements are contiguous, matching a contiguous load of activations.

use crate::error::FormatError;
use half::f16;

/// Elements per internal chunk (one 32-byte group of 2-bit codes).
pub(crate) const CHUNK: usize = 128;
/// Bytes per internal chunk.
pub(crate) const CHUNK_BYTES: usize = CHUNK / 4;
/// The widest row we accept. It keeps every integer dot product provably inside i32:
/// |Σ code·x| ≤ 2·128·2^22 = 2^30 and |Σ x| ≤ 128·2^22 = 2^29, so their difference is < 2^31.
pub const MAX_COLS: usize = 1 << 22;

const I2S_TAIL_BYTES: usize = 32;
const QK_K: usize = 256;
const TQ2_BLOCK_BYTES: usize = QK_K / 4 + 2;
const TQ1_QS_BYTES: usize = (QK_K - 4 * QK_K / 64) / 5;
const TQ1_QH_BYTES: usize = QK_K / 64;
const TQ1_BLOCK_BYTES: usize = TQ1_QS_BYTES + TQ1_QH_BYTES + 2;
const POW3: [u8; 6] = [1, 3, 9, 27, 81, 243];

/// A packed ternary weight format as stored in GGUF tensor data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// bitnet.cpp's x86 I2_S: 128-element blocks of 32 bytes, one f32 scale per tensor in a 32-byte tail.
    I2S,
    /// llama.cpp's TQ2_0: 256-element blocks of 64 bytes of 2-bit codes plus an f16 scale (66 bytes).
    Tq2_0,
    /// llama.cpp's TQ1_0: 256-element blocks of base-3 packed trits plus an f16 scale (54 bytes).
    Tq1_0,
}

impl WeightFormat {
    /// The ggml type id used in GGUF tensor infos (I2_S is the bitnet.cpp fork's id).
    pub const fn ggml_type_id(self) -> u32 {
        match self {
            WeightFormat::I2S => 36,
            WeightFormat::Tq2_0 => 35,
            WeightFormat::Tq1_0 => 34,
        }
    }

    /// The format with this ggml type id, if it is one of ours.
    pub const fn from_ggml_type_id(id: u32) -> Option<Self> {
        match id {
            36 => Some(WeightFormat::I2S),
            35 => Some(WeightFormat::Tq2_0),
            34 => Some(WeightFormat::Tq1_0),
            _ => None,
        }
    }

    /// The name ggml uses for the type.
    pub const fn name(self) -> &'static str {
        match self {
            WeightFormat::I2S => "I2_S",
            WeightFormat::Tq2_0 => "TQ2_0",
            WeightFormat::Tq1_0 => "TQ1_0",
        }
    }

    /// Elements per block; every row length must be a multiple of it.
    pub const fn block_len(self) -> usize {
        match self {
            WeightFormat::I2S => CHUNK,
            WeightFormat::Tq2_0 | WeightFormat::Tq1_0 => QK_K,
        }
    }

    /// Exact size in bytes of a `rows`×`cols` tensor in this format.
    pub fn tensor_bytes(&self, rows: usize, cols: usize) -> Result<usize, FormatError> {
        let elements = check_shape(*self, rows, cols)?;
        let too_large = FormatError::ShapeTooLarge {
            rows,
            cols,
            max_cols: MAX_COLS,
        };
        let bytes = match self {
            WeightFormat::I2S => elements / 4 + I2S_TAIL_BYTES,
            WeightFormat::Tq2_0 => (elements / QK_K)
                .checked_mul(TQ2_BLOCK_BYTES)
                .ok_or(too_large)?,
            WeightFormat::Tq1_0 => (elements / QK_K)
                .checked_mul(TQ1_BLOCK_BYTES)
                .ok_or(too_large)?,
        };
        Ok(bytes)
    }
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Checks a shape for `format` and returns its element count.
fn check_shape(format: WeightFormat, rows: usize, cols: usize) -> Result<usize, FormatError> {
    if rows == 0 || cols == 0 {
        return Err(FormatError::EmptyShape { rows, cols });
    }
    let block = format.block_len();
    if !cols.is_multiple_of(block) {
        return Err(FormatError::ColsNotMultiple {
            format: format.name(),
            cols,
            block,
        });
    }
    let too_large = FormatError::ShapeTooLarge {
        rows,
        cols,
        max_cols: MAX_COLS,
    };
    if cols > MAX_COLS {
        return Err(too_large);
    }
    rows.checked_mul(cols)
        .filter(|&n| n <= isize::MAX as usize / 2)
        .ok_or(too_large)
}

/// Ternary values decoded from a tensor, with the scale of each block.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// Row-major values in {-1, 0, 1}.
    pub values: Vec<i8>,
    /// One scale per block: a single one for I2_S, one per 256 elements for TQ1_0/TQ2_0.
    pub scales: Vec<f32>,
    /// How many consecutive values (in row-major order) each scale covers.
    pub block: usize,
}

/// absmean ternarisation as BitNet training does it: `scale = mean|w|` (floored at 1e-5),
/// `t = clamp(round(w / scale), -1, 1)`, rounding half to even as PyTorch does.
pub fn ternarize_absmean(w: &[f32]) -> (Vec<i8>, f32) {
    let mean_abs = if w.is_empty() {
        0.0
    } else {
        w.iter().map(|v| f64::from(v.abs())).sum::<f64>() / w.len() as f64
    };
    let scale = (mean_abs as f32).max(1e-5);
    let values = w
        .iter()
        .map(|&v| (v / scale).round_ties_even().clamp(-1.0, 1.0) as i8)
        .collect();
    (values, scale)
}

/// Encodes ternary values `values` (row-major `rows`×`cols`, each in {-1, 0, 1}) with scale `scale`
/// into the exact on-disk bytes of `format`.
///
/// For TQ1_0/TQ2_0 each 256-block stores `scale` rounded to f16, except blocks that are all zero,
/// which store 0 as llama.cpp's quantiser does (it stores the block's absmax).
pub fn encode(
    format: WeightFormat,
    values: &[i8],
    rows: usize,
    cols: usize,
    scale: f32,
) -> Result<Vec<u8>, FormatError> {
    let elements = check_shape(format, rows, cols)?;
    if values.len() != elements {
        return Err(FormatError::Length {
            what: "ternary values",
            rows,
            cols,
            expected: elements,
            actual: values.len(),
        });
    }
    if let Some(i) = values.iter().position(|v| !(-1..=1).contains(v)) {
        return Err(FormatError::NotTernary {
            row: i / cols,
            col: i % cols,
            value: values[i],
        });
    }
    if !scale.is_finite() {
        return Err(FormatError::InvalidScale {
            format: format.name(),
            block: 0,
            value: scale,
        });
    }
    let code = |i: usize| (values[i] + 1) as u8;
    let mut out = Vec::with_capacity(format.tensor_bytes(rows, cols)?);
    match format {
        WeightFormat::I2S => {
            for chunk in 0..elements / CHUNK {
                let base = chunk * CHUNK;
                for j in 0..CHUNK_BYTES {
                    let byte =
                        (0..4).fold(0u8, |acc, s| acc | code(base + 32 * s + j) << (6 - 2 * s));
                    out.push(byte);
                }
            }
            out.extend_from_slice(&scale.to_le_bytes());
            out.resize(out.len() + I2S_TAIL_BYTES - 4, 0);
        }
        WeightFormat::Tq2_0 => {
            for block in 0..elements / QK_K {
                let base = block * QK_K;
                for group in 0..2 {
                    for m in 0..32 {
                        let byte = (0..4).fold(0u8, |acc, l| {
                            acc | code(base + 128 * group + m + 32 * l) << (2 * l)
                        });
                        out.push(byte);
                    }
                }
                out.extend_from_slice(&block_scale_f16(&values[base..base + QK_K], scale));
            }
        }
        WeightFormat::Tq1_0 => {
            for block in 0..elements / QK_K {
                let base = block * QK_K;
                let trits = |first: usize, step: usize, count: usize| {
                    (0..count).fold(0u16, |q, n| {
                        q * 3 + u16::from(code(base + first + n * step))
                    })
                };
                for m in 0..32 {
                    out.push(trits_to_byte(trits(m, 32, 5)));
                }
                for m in 0..16 {
                    out.push(trits_to_byte(trits(160 + m, 16, 5)));
                }
                for j in 0..TQ1_QH_BYTES {
                    // Four trits are shifted up by one trit so that the first one is the most significant.
                    out.push(trits_to_byte(trits(240 + j, TQ1_QH_BYTES, 4) * 3));
                }
                out.extend_from_slice(&block_scale_f16(&values[base..base + QK_K], scale));
            }
        }
    }
    Ok(out)
}

fn block_scale_f16(block: &[i8], scale: f32) -> [u8; 2] {
    let d = if block.iter().all(|&v| v == 0) {
        0.0
    } else {
        scale
    };
    f16::from_f32(d).to_bits().to_le_bytes()
}

/// Stores a base-3 number `q < 243` in a byte as `ceil(q·256/243)`, so that trit n can be read back
/// as the top two bits of `(byte·3^n mod 256)·3`, without a division.
fn trits_to_byte(q: u16) -> u8 {
    (q * 256).div_ceil(243) as u8
}

/// Trit `n` (0 = most significant) of a byte made by `trits_to_byte`, as a code 0..=2.
fn byte_trit(byte: u8, n: usize) -> u8 {
    ((u16::from(byte.wrapping_mul(POW3[n])) * 3) >> 8) as u8
}

/// Decodes on-disk bytes of `format` back into ternary values and block scales.
pub fn decode(
    format: WeightFormat,
    bytes: &[u8],
    rows: usize,
    cols: usize,
) -> Result<Decoded, FormatError> {
    let expected = format.tensor_bytes(rows, cols)?;
    if bytes.len() != expected {
        return Err(FormatError::ByteLength {
            format: format.name(),
            rows,
            cols,
            expected,
            actual: bytes.len(),
        });
    }
    let mut values = vec![0i8; rows * cols];
    let scales = visit_chunks(format, bytes, rows, cols, |row, chunk, packed| {
        let base = row * cols + chunk * CHUNK;
        for (j, &byte) in packed.iter().enumerate() {
            for s in 0..4 {
                values[base + 32 * s + j] = ((byte >> (6 - 2 * s)) & 3) as i8 - 1;
            }
        }
    })?;
    let block = if format == WeightFormat::I2S {
        rows * cols
    } else {
        QK_K
    };
    Ok(Decoded {
        values,
        scales,
        block,
    })
}

/// Validates `bytes` as a `rows`×`cols` tensor of `format` and calls `visit(row, chunk, codes)` for
/// every 128-element chunk with its 32 bytes of codes in internal order. Returns the scales: one for
/// I2_S, one per 256-block (row-major) for the TQ formats.
pub(crate) fn visit_chunks(
    format: WeightFormat,
    bytes: &[u8],
    rows: usize,
    cols: usize,
    mut visit: impl FnMut(usize, usize, &[u8; CHUNK_BYTES]),
) -> Result<Vec<f32>, FormatError> {
    let expected = format.tensor_bytes(rows, cols)?;
    if bytes.len() != expected {
        return Err(FormatError::ByteLength {
            format: format.name(),
            rows,
            cols,
            expected,
            actual: bytes.len(),
        });
    }
    let chunks_per_row = cols / CHUNK;
    let invalid_code = |byte: usize, element: usize| FormatError::InvalidCode {
        format: format.name(),
        byte,
        row: element / cols,
        col: element % cols,
    };
    match format {
        WeightFormat::I2S => {
            let packed_len = rows * cols / 4;
            let scale = f32::from_le_bytes([
                bytes[packed_len],
                bytes[packed_len + 1],
                bytes[packed_len + 2],
                bytes[packed_len + 3],
            ]);
            if !scale.is_finite() {
                return Err(FormatError::InvalidScale {
                    format: format.name(),
                    block: 0,
                    value: scale,
                });
            }
            for (index, chunk) in bytes[..packed_len].chunks_exact(CHUNK_BYTES).enumerate() {
                let chunk: &[u8; CHUNK_BYTES] =
                    chunk.try_into().expect("chunks_exact yields CHUNK_BYTES");
                if let Some((j, field)) = find_code_3(chunk, |field| field) {
                    return Err(invalid_code(
                        index * CHUNK_BYTES + j,
                        index * CHUNK + 32 * field + j,
                    ));
                }
                visit(index / chunks_per_row, index % chunks_per_row, chunk);
            }
            Ok(vec![scale])
        }
        WeightFormat::Tq2_0 => {
            let mut scales = Vec::with_capacity(rows * cols / QK_K);
            for (index, block) in bytes.chunks_exact(TQ2_BLOCK_BYTES).enumerate() {
                let scale = read_f16_scale(format, index, &block[QK_K / 4..])?;
                scales.push(scale);
                for group in 0..2 {
                    let source = &block[32 * group..32 * group + 32];
                    // TQ2_0 keeps element m + 32·l in bits 2l (lowest first): the reverse of our order.
                    if let Some((j, field)) = find_code_3(source, |field| 3 - field) {
                        return Err(invalid_code(
                            index * TQ2_BLOCK_BYTES + 32 * group + j,
                            index * QK_K + 128 * group + 32 * field + j,
                        ));
                    }
                    let mut chunk = [0u8; CHUNK_BYTES];
                    for (out, &byte) in chunk.iter_mut().zip(source) {
                        *out = (byte & 0x03) << 6
                            | (byte & 0x0c) << 2
                            | (byte & 0x30) >> 2
                            | (byte & 0xc0) >> 6;
                    }
                    let flat_chunk = index * 2 + group;
                    visit(
                        flat_chunk / chunks_per_row,
                        flat_chunk % chunks_per_row,
                        &chunk,
                    );
                }
            }
            Ok(scales)
        }
        WeightFormat::Tq1_0 => {
            let mut scales = Vec::with_capacity(rows * cols / QK_K);
            for (index, block) in bytes.chunks_exact(TQ1_BLOCK_BYTES).enumerate() {
                let scale = read_f16_scale(format, index, &block[TQ1_QS_BYTES + TQ1_QH_BYTES..])?;
                scales.push(scale);
                let mut codes = [0u8; QK_K];
                for m in 0..32 {
                    for n in 0..5 {
                        codes[m + 32 * n] = byte_trit(block[m], n);
                    }
                }
                for m in 0..16 {
                    for n in 0..5 {
                        codes[160 + m + 16 * n] = byte_trit(block[32 + m], n);
                    }
                }
                for j in 0..TQ1_QH_BYTES {
                    for n in 0..4 {
                        codes[240 + j + TQ1_QH_BYTES * n] = byte_trit(block[TQ1_QS_BYTES + j], n);
                    }
                }
                for group in 0..2 {
                    let chunk = pack_chunk(&codes[128 * group..128 * group + 128]);
                    let flat_chunk = index * 2 + group;
                    visit(
                        flat_chunk / chunks_per_row,
                        flat_chunk % chunks_per_row,
                        &chunk,
                    );
                }
            }
            Ok(scales)
        }
    }
}

/// Finds a 2-bit field equal to 3 in `bytes`; `order` maps the field's position from the top
/// (0 = bits 7–6) to its element group. Returns (byte index, element group).
fn find_code_3(bytes: &[u8], order: impl Fn(usize) -> usize) -> Option<(usize, usize)> {
    bytes.iter().enumerate().find_map(|(j, &byte)| {
        let threes = byte & (byte >> 1) & 0x55;
        (threes != 0).then(|| (j, order((threes.leading_zeros() as usize - 1) / 2)))
    })
}

fn read_f16_scale(format: WeightFormat, block: usize, bytes: &[u8]) -> Result<f32, FormatError> {
    let value = f16::from_bits(u16::from_le_bytes([bytes[0], bytes[1]])).to_f32();
    if value.is_finite() {
        Ok(value)
    } else {
        Err(FormatError::InvalidScale {
            format: format.name(),
            block,
            value,
        })
    }
}

/// Packs the codes (0..=2) of 128 consecutive elements into one chunk in internal order.
pub(crate) fn pack_chunk(codes: &[u8]) -> [u8; CHUNK_BYTES] {
    let mut chunk = [0u8; CHUNK_BYTES];
    for (j, byte) in chunk.iter_mut().enumerate() {
        *byte = codes[j] << 6 | codes[32 + j] << 4 | codes[64 + j] << 2 | codes[96 + j];
    }
    chunk
}
