//! Errors of the ternary crate: bad shapes, bad byte lengths, corrupt codes, and kernel selection.

use crate::dispatch::Kernel;

/// Why a tensor, shape or buffer was refused. Every message names what was expected and what was found.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    #[error("a {rows}×{cols} tensor has no elements; give at least one row and one column")]
    EmptyShape { rows: usize, cols: usize },
    #[error(
        "{format} stores whole blocks of {block} elements per row, but cols = {cols} is not a multiple of {block}; \
         use a row length that is a multiple of {block}"
    )]
    ColsNotMultiple {
        format: &'static str,
        cols: usize,
        block: usize,
    },
    #[error("a {rows}×{cols} tensor is too large: rows and cols may be at most {max_cols} columns and fit in memory")]
    ShapeTooLarge {
        rows: usize,
        cols: usize,
        max_cols: usize,
    },
    #[error("a {format} tensor of shape {rows}×{cols} is exactly {expected} bytes, but {actual} bytes were given")]
    ByteLength {
        format: &'static str,
        rows: usize,
        cols: usize,
        expected: usize,
        actual: usize,
    },
    #[error("{what} for a {rows}×{cols} tensor must hold {expected} entries, but holds {actual}")]
    Length {
        what: &'static str,
        rows: usize,
        cols: usize,
        expected: usize,
        actual: usize,
    },
    #[error(
        "value {value} at row {row}, column {col} is not ternary; only -1, 0 and 1 can be encoded"
    )]
    NotTernary { row: usize, col: usize, value: i8 },
    #[error(
        "{format} byte {byte} holds the unused code 0b11 for row {row}, column {col} \
         (valid codes are 0b00 = -1, 0b01 = 0, 0b10 = +1); the data is corrupt or not {format}"
    )]
    InvalidCode {
        format: &'static str,
        byte: usize,
        row: usize,
        col: usize,
    },
    #[error("{format} scale {value} of block {block} is not a finite number; the data is corrupt")]
    InvalidScale {
        format: &'static str,
        block: usize,
        value: f32,
    },
    #[error("activations have {actual} columns but the matrix has {expected}; quantize the input with cols = {expected}")]
    ColsMismatch { expected: usize, actual: usize },
    #[error("the output buffer holds {actual} floats, but {tokens} tokens × {rows} rows need {expected}")]
    OutputLength {
        tokens: usize,
        rows: usize,
        expected: usize,
        actual: usize,
    },
    #[error("{actual} input values are not a whole number of tokens of {cols} columns; pass tokens × {cols} values")]
    InputLength { cols: usize, actual: usize },
    #[error(
        "rows {first_row}..{end} of a {rows}-row matrix for {tokens} tokens cannot be computed alone; \
         give one token, a first row that is a multiple of 4, and an end within the matrix"
    )]
    RowRange {
        first_row: usize,
        end: usize,
        rows: usize,
        tokens: usize,
    },
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

/// Why the kernel requested through `TERNARY_KERNEL` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    #[error(
        "TERNARY_KERNEL={requested:?} is not a kernel name; use one of scalar, avx2, avxvnni, avx512vnni, neon, neon-dot \
         (or unset it to pick the best one for this CPU)"
    )]
    Unknown { requested: String },
    #[error(
        "kernel {requested} was requested but this CPU does not support it; it supports: {available}. \
         Unset TERNARY_KERNEL or choose one of those"
    )]
    Unavailable {
        requested: Kernel,
        available: String,
    },
}
