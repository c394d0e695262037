//! BitNet b1.58 runtime: read a GGUF file, run the forward pass on the ternary kernels,
//! tokenize and detokenize, sample. The HTTP server (`inference/server`) is built on this crate.
#![deny(unsafe_code)]

pub mod chat;
pub mod gguf;
pub mod sampler;
pub mod tokenizer;
