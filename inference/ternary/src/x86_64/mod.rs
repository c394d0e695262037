//! x86-64 SIMD kernels, one file per instruction-set level. Each level's `install` probes the CPU
//! and only then puts its kernels into a table.

pub(crate) mod avx2;
pub(crate) mod avx512vnni;
pub(crate) mod avxvnni;
