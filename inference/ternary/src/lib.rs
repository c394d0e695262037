//! Ternary (BitNet b1.58) weights and the integer kernels that multiply them.
//!
//! - [`WeightFormat`], [`encode`], [`decode`]: the GGUF formats I2_S (bitnet.cpp), TQ2_0 and TQ1_0
//!   (llama.cpp), bit-exact.
//! - [`TernaryMatrix`]: weights repacked once at load into row tiles; [`TernaryMatrix::matmul`]
//!   multiplies them with [`QuantizedActivations`] (int8 per token) using integer dot products
//!   and one float step per output.
//! - [`OutputMatrix`]: the F16 output layer / embedding, and its int8 repack; for greedy batches
//!   [`OutputMatrix::try_matmul_exact_argmax`] finds each token's exact maximum from a BF16 pass.
//! - [`attention_scores`], [`attention_values`]: the products of attention over an f16 KV cache.
//! - [`ThreadPool`]: splits rows across a fixed set of threads with microsecond per-call cost.
//! - Kernels are chosen at run time ([`active_kernel`], env `TERNARY_KERNEL`); the scalar
//!   reference defines correctness and every SIMD path matches it exactly.
//!
//! All `unsafe` code of the inference workspace lives in this crate, in the SIMD kernels, the
//! thread pool and the disjoint output writer; every public function is safe.
#![deny(unsafe_op_in_unsafe_fn)]

mod activations;
mod attention;
mod dispatch;
mod error;
mod format;
mod matrix;
mod output;
mod pool;
mod scalar;
mod shared_out;
#[cfg(target_arch = "x86_64")]
mod x86_64;

pub use activations::QuantizedActivations;
pub use attention::{attention_scores, attention_values};
pub use dispatch::{active_kernel, try_active_kernel, Kernel};
pub use error::{FormatError, KernelError};
pub use format::{decode, encode, ternarize_absmean, Decoded, WeightFormat, MAX_COLS};
pub use matrix::TernaryMatrix;
pub use output::{OutputMatrix, Q8_BLOCK};
pub use pool::ThreadPool;

/// The AVX-512 BF16 panel kernel when the CPU has one (for tests that compare it).
#[cfg(test)]
fn x86_64_bf16() -> Option<dispatch::Bf16PanelFn> {
    #[cfg(target_arch = "x86_64")]
    return x86_64::avx512bf16::detect();
    #[cfg(not(target_arch = "x86_64"))]
    None
}
