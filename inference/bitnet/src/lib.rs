//! BitNet b1.58 runtime: read a GGUF file, run the forward pass on the ternary kernels,
//! tokenize and detokenize, sample. The HTTP server (`inference/server`) is built on this crate.
//!
//! Loading and decoding:
//! ```no_run
//! use bitnet::{BatchToken, KvCache, LoadOptions, Model, Scratch};
//! let model = Model::load("model.gguf".as_ref(), LoadOptions::default())?;
//! let mut cache = KvCache::new(&model, 4, 1024)?;
//! let mut scratch = Scratch::new();
//! let slot = cache.allocate().expect("a free slot");
//! let batch = [BatchToken { slot, token: 1, pos: 0, logits: true }];
//! let logits = model.forward(&mut cache, &mut scratch, &batch)?;
//! assert_eq!(logits.len(), model.vocab_size());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(unsafe_code)]

pub mod chat;
pub mod config;
pub mod forward;
pub mod generate;
pub mod gguf;
pub mod model;
pub mod reference;
pub mod sampler;
pub mod tokenizer;
mod vector_math;

pub use config::{Architecture, FfnActivation, ModelConfig};
pub use forward::{BatchToken, ForwardError, KvCache, LogitUse, Scratch, Session, SlotId};
pub use model::{LoadError, LoadOptions, Model};
pub use ternary::WeightFormat;
