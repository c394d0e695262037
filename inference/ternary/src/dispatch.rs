//! Run-time kernel selection: a table of function pointers built once. It starts from the scalar
//! reference and each instruction-set level the CPU has (or `TERNARY_KERNEL` allows) overwrites
//! the slots it implements faster. SIMD kernels can only be reached through a table built after
//! their CPU feature probe succeeded.

use crate::error::KernelError;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// Rows held by one tile of the internal ternary layout.
pub(crate) const TILE_ROWS: usize = 4;

/// Σ code·x for the 4 rows of a tile against `tokens` activation rows:
/// `out[t*4 + r] = Σ_k code(r, k) · x[t*x_stride + k]` for `k < tile.len()`.
/// The tile is `tile.len() / 128` chunks, each 4 rows × 32 bytes of codes in internal order.
/// `ahead` is weights a later call will read (empty for none): a kernel may pull them into cache
/// while it computes. It never changes the result.
pub(crate) type TernaryTileFn =
    fn(tile: &[u8], x: &[i8], x_stride: usize, tokens: usize, out: &mut [i32], ahead: &[u8]);
/// One panel of the F16 output layer (`F16_PANEL` = 16 rows stored column by column: the 16
/// halves of column k at `panel[k * 16..]`) against `tokens` (1..=16) f32 activation rows given
/// transposed (`xt[k * tokens + t]`): `out[t * 16 + i] = Σ_k w(i, k) · x(t, k)`. One column load
/// feeds every token, and the 16 sums of a token are one vector, so no horizontal sums are needed.
/// Float sums; the order may differ between ISAs. `ahead` is as for [`TernaryTileFn`].
pub(crate) type F16PanelFn =
    fn(panel: &[u16], xt: &[f32], tokens: usize, out: &mut [f32], ahead: &[u16]);
/// One panel of the F16 output layer against `tokens` (1..=16) activation rows rounded to BF16,
/// given as transposed pairs: `xp[p * tokens + t]` holds token t's columns 2p (low half) and
/// 2p + 1 (high half); an odd last column is paired with zero. The weights are rounded to BF16
/// too, products are summed in f32 (`vdpbf16ps`): `out[t * 16 + i] ≈ Σ_k w(i, k) · x(t, k)`, with
/// the error bound of [`crate::output`]'s exact-argmax product, which is the only user.
pub(crate) type Bf16PanelFn =
    fn(panel: &[u16], xp: &[u32], tokens: usize, out: &mut [f32], ahead: &[u16]);
/// Σ w·x for f32 rows of equal length.
pub(crate) type F32DotFn = fn(w: &[f32], x: &[f32]) -> f32;
/// One int8 row (blocks of `Q8_BLOCK` values, the last possibly shorter, scales `w_scales`)
/// against `tokens` int8 activation rows (`x` is `tokens × w.len()`, `x_scales` is
/// `tokens × w_scales.len()`). The order of every float operation is fixed, so every ISA gives the
/// same bits: 16 float lanes start at 0; for each block, lane l adds (exact integer Σ w·x over
/// positions k of the block with (k mod 64)/4 == l) as f32 × (w_scale · x_scale); then the lanes
/// are summed by halving (`scalar::reduce_lanes`).
pub(crate) type Q8RowsFn =
    fn(w: &[i8], w_scales: &[f32], x: &[i8], x_scales: &[f32], tokens: usize, out: &mut [f32]);

/// `out[i] = round_half_even(input[i] · scale)` saturated to i8, NaN → 0, for `i < input.len()`;
/// `out` is at least as long as `input`. Every ISA gives the same bits.
pub(crate) type QuantizeRowFn = fn(input: &[f32], scale: f32, out: &mut [i8]);
/// See [`crate::attention_scores`]; every ISA gives the same bits.
pub(crate) type AttentionScoresFn = fn(
    queries: &[f32],
    keys: &[u16],
    head_dim: usize,
    scale: f32,
    scores: &mut [f32],
    stride: usize,
);
/// See [`crate::attention_values`]; every ISA gives the same bits.
pub(crate) type AttentionValuesFn =
    fn(weights: &[f32], stride: usize, values: &[u16], head_dim: usize, out: &mut [f32]);

/// Checks the arguments of an [`F16PanelFn`] and returns the panel's column count; SIMD kernels
/// rely on it for memory safety.
pub(crate) fn check_panel_args(
    panel_len: usize,
    xt_len: usize,
    tokens: usize,
    out_len: usize,
) -> usize {
    let cols = check_panel_shape(panel_len, tokens, out_len);
    assert!(
        xt_len >= cols * tokens,
        "transposed activations hold {xt_len} values, need {}",
        cols * tokens
    );
    cols
}

/// Checks the arguments of a [`Bf16PanelFn`] and returns the panel's column count; SIMD kernels
/// rely on it for memory safety.
pub(crate) fn check_bf16_panel_args(
    panel_len: usize,
    xp_len: usize,
    tokens: usize,
    out_len: usize,
) -> usize {
    let cols = check_panel_shape(panel_len, tokens, out_len);
    let pairs = cols.div_ceil(2);
    assert!(
        xp_len >= pairs * tokens,
        "paired activations hold {xp_len} values, need {}",
        pairs * tokens
    );
    cols
}

/// The checks both panel kernels share (whole columns, 1 to 16 tokens, room for the sums);
/// returns the column count.
fn check_panel_shape(panel_len: usize, tokens: usize, out_len: usize) -> usize {
    use crate::output::F16_PANEL;
    assert!(
        panel_len.is_multiple_of(F16_PANEL),
        "{panel_len} weights are not whole columns of a {F16_PANEL}-row panel"
    );
    assert!(
        (1..=F16_PANEL).contains(&tokens),
        "a panel takes 1 to {F16_PANEL} tokens, not {tokens}"
    );
    assert!(
        out_len >= tokens * F16_PANEL,
        "output holds {out_len} values, need {}",
        tokens * F16_PANEL
    );
    panel_len / F16_PANEL
}

/// Checks the arguments of an output-layer row kernel; SIMD kernels rely on it for memory safety.
pub(crate) fn check_rows_args(
    cols: usize,
    x_len: usize,
    blocks: usize,
    x_scales_len: usize,
    tokens: usize,
    out_len: usize,
) {
    assert!(
        x_len >= tokens * cols,
        "activations hold {x_len} values, need {}",
        tokens * cols
    );
    assert!(
        x_scales_len >= tokens * blocks,
        "activation scales hold {x_scales_len}, need {}",
        tokens * blocks
    );
    assert!(
        out_len >= tokens,
        "output holds {out_len} values, need {tokens}"
    );
}

/// One implementation of every kernel slot.
#[derive(Clone, Copy)]
pub(crate) struct KernelTable {
    pub kernel: Kernel,
    pub ternary_tile: TernaryTileFn,
    pub f16_panel: F16PanelFn,
    /// Only where the CPU has a BF16 dot product: the scalar emulation is slower than the F16
    /// product it approximates.
    pub bf16_panel: Option<Bf16PanelFn>,
    pub f32_dot: F32DotFn,
    pub q8_rows: Q8RowsFn,
    pub quantize_row: QuantizeRowFn,
    pub attention_scores: AttentionScoresFn,
    pub attention_values: AttentionValuesFn,
}

impl fmt::Debug for KernelTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KernelTable({})", self.kernel)
    }
}

/// Checks the arguments of a [`TernaryTileFn`]; SIMD kernels rely on it for memory safety.
pub(crate) fn check_tile_args(tile: &[u8], x: &[i8], x_stride: usize, tokens: usize, out: &[i32]) {
    let k = tile.len();
    assert!(
        k.is_multiple_of(crate::format::CHUNK),
        "tile length {k} is not a whole number of chunks"
    );
    assert!(
        out.len() >= TILE_ROWS * tokens,
        "tile output holds {} values, need {}",
        out.len(),
        TILE_ROWS * tokens
    );
    if tokens > 0 {
        assert!(
            x_stride >= k,
            "activation stride {x_stride} is shorter than the row length {k}"
        );
        assert!(
            x.len() >= (tokens - 1) * x_stride + k,
            "activations hold {} values, need {}",
            x.len(),
            (tokens - 1) * x_stride + k
        );
    }
}

/// A kernel family, as named by `TERNARY_KERNEL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Portable scalar reference: defines the correct result.
    Scalar,
    /// x86-64 AVX2 (`vpmaddubsw`), with FMA and F16C for the float output layer.
    Avx2,
    /// x86-64 AVX-VNNI (256-bit `vpdpbusd`) on top of AVX2.
    AvxVnni,
    /// x86-64 AVX-512 VNNI (512-bit `vpdpbusd`) on top of AVX2.
    Avx512Vnni,
    /// AArch64 NEON.
    Neon,
    /// AArch64 NEON with the dot-product extension (`sdot`).
    NeonDot,
}

impl Kernel {
    /// Every kernel family, scalar first.
    pub const ALL: [Kernel; 6] = [
        Kernel::Scalar,
        Kernel::Avx2,
        Kernel::AvxVnni,
        Kernel::Avx512Vnni,
        Kernel::Neon,
        Kernel::NeonDot,
    ];

    /// The name used by `TERNARY_KERNEL`.
    pub const fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2 => "avx2",
            Kernel::AvxVnni => "avxvnni",
            Kernel::Avx512Vnni => "avx512vnni",
            Kernel::Neon => "neon",
            Kernel::NeonDot => "neon-dot",
        }
    }

    /// Whether this CPU can run the family.
    pub fn is_available(self) -> bool {
        table_for(self).is_ok()
    }

    /// The families this CPU can run, scalar first.
    pub fn available() -> Vec<Kernel> {
        Kernel::ALL
            .into_iter()
            .filter(|k| k.is_available())
            .collect()
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Kernel {
    type Err = KernelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kernel::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| KernelError::Unknown {
                requested: s.to_string(),
            })
    }
}

/// The portable table.
fn scalar_table() -> KernelTable {
    KernelTable {
        kernel: Kernel::Scalar,
        ternary_tile: crate::scalar::ternary_tile,
        f16_panel: crate::scalar::f16_panel,
        bf16_panel: None,
        f32_dot: crate::scalar::f32_dot,
        q8_rows: crate::scalar::q8_rows,
        quantize_row: crate::activations::quantize_row_scalar,
        attention_scores: crate::attention::scores_scalar,
        attention_values: crate::attention::values_scalar,
    }
}

/// Each ISA level's table builder: takes the table so far, returns it with its slots overwritten,
/// or `None` when the CPU lacks the features. Listed from the baseline up.
type Level = (Kernel, fn(KernelTable) -> Option<KernelTable>);

#[cfg(target_arch = "x86_64")]
const LEVELS: &[Level] = &[
    (Kernel::Avx2, crate::x86_64::avx2::install),
    (Kernel::AvxVnni, crate::x86_64::avxvnni::install),
    (Kernel::Avx512Vnni, crate::x86_64::avx512vnni::install),
];
#[cfg(not(target_arch = "x86_64"))]
const LEVELS: &[Level] = &[];

/// The table for exactly `kernel`: scalar, then the levels it builds on, then its own slots.
pub(crate) fn table_for(kernel: Kernel) -> Result<KernelTable, KernelError> {
    let unavailable = || KernelError::Unavailable {
        requested: kernel,
        available: available_names(),
    };
    let mut table = scalar_table();
    if kernel == Kernel::Scalar {
        return Ok(table);
    }
    let (_, install) = LEVELS
        .iter()
        .find(|(k, _)| *k == kernel)
        .ok_or_else(unavailable)?;
    // AVX-VNNI and AVX-512 VNNI both build on AVX2, not on each other.
    if kernel != Kernel::Avx2 {
        if let Some((_, avx2)) = LEVELS.iter().find(|(k, _)| *k == Kernel::Avx2) {
            table = avx2(table).ok_or_else(unavailable)?;
        }
    }
    install(table).ok_or_else(unavailable)
}

fn available_names() -> String {
    let mut names = vec![Kernel::Scalar.name()];
    let mut table = scalar_table();
    for (kernel, install) in LEVELS {
        if let Some(next) = install(table) {
            names.push(kernel.name());
            if *kernel == Kernel::Avx2 {
                table = next;
            }
        }
    }
    names.join(", ")
}

/// The best table for this CPU: scalar first, each detected level overwriting slots.
fn best_table() -> KernelTable {
    let mut table = scalar_table();
    for (_, install) in LEVELS {
        if let Some(next) = install(table) {
            table = next;
        }
    }
    table
}

static ACTIVE: OnceLock<Result<KernelTable, KernelError>> = OnceLock::new();

/// The table all products use, chosen once from `TERNARY_KERNEL` or the CPU.
pub(crate) fn active_table() -> Result<KernelTable, KernelError> {
    ACTIVE
        .get_or_init(|| match std::env::var("TERNARY_KERNEL") {
            Ok(name) if !name.trim().is_empty() => table_for(name.parse()?),
            _ => Ok(best_table()),
        })
        .clone()
}

/// The active table, or the scalar one when `TERNARY_KERNEL` names an unavailable family, for
/// the free functions (activation quantisation, attention) that have no constructor to refuse
/// with; every family gives them the same bits.
pub(crate) fn active_or_scalar_table() -> KernelTable {
    active_table().unwrap_or_else(|_| scalar_table())
}

/// The kernel family in use, or why the one requested by `TERNARY_KERNEL` cannot be used.
/// Call it at start-up to turn a bad `TERNARY_KERNEL` into a clean error.
pub fn try_active_kernel() -> Result<Kernel, KernelError> {
    active_table().map(|t| t.kernel)
}

/// The kernel family in use. When `TERNARY_KERNEL` names an unavailable family this reports the
/// scalar reference, since no matrix can be built then (constructors return the error).
pub fn active_kernel() -> Kernel {
    try_active_kernel().unwrap_or(Kernel::Scalar)
}
