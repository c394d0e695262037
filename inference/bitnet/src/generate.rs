//! Writes small random-weight BitNet GGUF files in every layout we load: `bitnet-b1.58`
//! with I2_S, and `bitnet` with TQ2_0 or TQ1_0. The same seed gives the same ternary
//! weights and scales in every layout, so tests can check that the layouts agree.
//! Used by tests, benchmarks and the `gen-model` binary.

mod vocab;

use std::path::Path;

use half::f16;
use ternary::WeightFormat;

pub use vocab::{byte_to_unicode, learn_vocab, SyntheticVocab, BOS_TOKEN, EOS_TOKEN, EOT_TOKEN};

use crate::config::{names, FfnActivation, ModelConfig};
use crate::gguf::{ArrayValue, GgmlType, GgufError, GgufWriter, MetadataValue};

/// Merges learned for synthetic vocabularies.
const MERGE_COUNT: usize = 300;

/// The chat template from the 2B4T Hugging Face `tokenizer_config.json` (the one in the
/// official GGUF is broken, see the reference notes §1.7).
const CHAT_TEMPLATE: &str = "{% for message in messages %}{{ message['role'] | capitalize + ': ' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}";

/// Why a synthetic model could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("shape is invalid: {0}")]
    Shape(String),
    #[error("cannot encode tensor {tensor}: {source}")]
    Encode {
        tensor: String,
        #[source]
        source: ternary::FormatError,
    },
    #[error(transparent)]
    Gguf(#[from] GgufError),
}

/// Hyper-parameters of a synthetic model.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticShape {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub context_length: usize,
    /// `None`: exactly the synthetic BPE vocabulary; `Some(n)`: padded with reserved tokens.
    pub vocab_size: Option<usize>,
    pub rope_theta: f32,
}

impl SyntheticShape {
    /// A model small enough for unit tests (runs a token in well under a millisecond).
    /// Widths are multiples of 256 because TQ1_0/TQ2_0 store 256-element blocks.
    pub fn tiny() -> Self {
        SyntheticShape {
            layers: 2,
            hidden: 256,
            heads: 4,
            kv_heads: 2,
            ffn: 512,
            context_length: 256,
            vocab_size: None,
            rope_theta: 500_000.0,
        }
    }

    /// The exact shapes of BitNet b1.58 2B4T (reference §2.1), for benchmarks.
    pub fn bitnet_2b4t() -> Self {
        SyntheticShape {
            layers: 30,
            hidden: 2560,
            heads: 20,
            kv_heads: 5,
            ffn: 6912,
            context_length: 4096,
            vocab_size: Some(128_256),
            rope_theta: 500_000.0,
        }
    }

    fn validate(&self) -> Result<(), GenerateError> {
        let bad = |m: String| Err(GenerateError::Shape(m));
        if self.layers == 0 || self.heads == 0 || self.kv_heads == 0 || self.context_length == 0 {
            return bad("layers, heads, kv_heads and context_length must be positive".into());
        }
        if !self.hidden.is_multiple_of(self.heads) || !self.heads.is_multiple_of(self.kv_heads) {
            return bad(format!(
                "hidden {} must be a multiple of heads {}, and heads of kv_heads {}",
                self.hidden, self.heads, self.kv_heads
            ));
        }
        if self.hidden == 0
            || !self.hidden.is_multiple_of(256)
            || self.ffn == 0
            || !self.ffn.is_multiple_of(256)
        {
            return bad(format!(
                "hidden {} and ffn {} must be positive multiples of 256 (TQ block size)",
                self.hidden, self.ffn
            ));
        }
        if !(self.hidden / self.heads).is_multiple_of(2) {
            return bad("the head size must be even for RoPE".into());
        }
        Ok(())
    }
}

/// Storage type of `token_embd.weight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddingType {
    F16,
    F32,
}

/// Everything that determines a synthetic model file.
#[derive(Debug, Clone)]
pub struct SyntheticModel {
    /// I2_S writes architecture `bitnet-b1.58`; TQ1_0/TQ2_0 write `bitnet`.
    pub format: WeightFormat,
    pub shape: SyntheticShape,
    pub seed: u64,
    pub embedding: EmbeddingType,
    /// Written as `<arch>.hidden_activation`. ReLU² by default so all layouts are one model.
    pub activation: FfnActivation,
    /// `bitnet` layouts only: store ternary blocks with scale 1 and the real scale in a
    /// separate `blk.N.<proj>.scale` F32 tensor, as llama.cpp's converter may.
    pub scale_tensors: bool,
    /// Write `tokenizer.ggml.pre = llama-bpe` (the official 2B4T file lacks it).
    pub pre_tokenizer: bool,
}

impl SyntheticModel {
    /// The tiny test model in `format` with default options.
    pub fn tiny(format: WeightFormat, seed: u64) -> Self {
        SyntheticModel {
            format,
            shape: SyntheticShape::tiny(),
            seed,
            embedding: EmbeddingType::F16,
            activation: FfnActivation::Relu2,
            scale_tensors: false,
            pre_tokenizer: true,
        }
    }

    /// The GGUF architecture string this layout uses.
    pub fn architecture(&self) -> &'static str {
        match self.format {
            WeightFormat::I2S => "bitnet-b1.58",
            _ => "bitnet",
        }
    }

    /// Writes the model to `path`.
    pub fn write(&self, path: &Path) -> Result<(), GenerateError> {
        self.to_writer()?.write_to(path)?;
        Ok(())
    }

    /// Builds the complete GGUF (metadata and tensors) in memory.
    pub fn to_writer(&self) -> Result<GgufWriter, GenerateError> {
        let shape = &self.shape;
        shape.validate()?;
        if self.scale_tensors && self.format == WeightFormat::I2S {
            return Err(GenerateError::Shape(
                "scale tensors exist only in the `bitnet` (TQ1_0/TQ2_0) layout".into(),
            ));
        }
        let mut vocab = learn_vocab(MERGE_COUNT);
        if let Some(size) = shape.vocab_size {
            if size < vocab.tokens.len() {
                return Err(GenerateError::Shape(format!(
                    "vocab_size {size} is smaller than the synthetic vocabulary ({} tokens)",
                    vocab.tokens.len()
                )));
            }
            vocab = vocab.padded_to(size);
            if vocab.tokens.len() != size {
                return Err(GenerateError::Shape(format!(
                    "vocab_size {size} must be at least {} to hold the reserved special tokens",
                    vocab.tokens.len() + 256
                )));
            }
        }
        let vocab_size = vocab.tokens.len();
        let arch = self.architecture();
        let config = ModelConfig {
            architecture: match self.format {
                WeightFormat::I2S => crate::config::Architecture::BitnetB158,
                _ => crate::config::Architecture::Bitnet,
            },
            name: None,
            layers: shape.layers,
            hidden: shape.hidden,
            heads: shape.heads,
            kv_heads: shape.kv_heads,
            head_dim: shape.hidden / shape.heads,
            ffn: shape.ffn,
            context_length: shape.context_length,
            rope_theta: shape.rope_theta,
            rope_dims: shape.hidden / shape.heads,
            rms_eps: 1e-5,
            vocab_size,
            activation: self.activation,
        };

        let mut w = GgufWriter::new();
        let key = |k: &str| format!("{arch}.{k}");
        let u32_of = |v: usize| MetadataValue::U32(v as u32);
        w.set("general.architecture", MetadataValue::String(arch.into()))
            .set(
                "general.name",
                MetadataValue::String(format!("synthetic-bitnet-seed{}", self.seed)),
            )
            .set(key("vocab_size"), u32_of(vocab_size))
            .set(key("context_length"), u32_of(config.context_length))
            .set(key("embedding_length"), u32_of(config.hidden))
            .set(key("block_count"), u32_of(config.layers))
            .set(key("feed_forward_length"), u32_of(config.ffn))
            .set(key("rope.dimension_count"), u32_of(config.rope_dims))
            .set(key("attention.head_count"), u32_of(config.heads))
            .set(key("attention.head_count_kv"), u32_of(config.kv_heads))
            .set(
                key("attention.layer_norm_rms_epsilon"),
                MetadataValue::F32(config.rms_eps),
            )
            .set(key("rope.freq_base"), MetadataValue::F32(config.rope_theta))
            .set(
                key("hidden_activation"),
                MetadataValue::String(self.activation.as_str().into()),
            )
            .set("tokenizer.ggml.model", MetadataValue::String("gpt2".into()));
        if self.pre_tokenizer {
            w.set(
                "tokenizer.ggml.pre",
                MetadataValue::String("llama-bpe".into()),
            );
        }
        w.set(
            "tokenizer.ggml.tokens",
            MetadataValue::Array(ArrayValue::strings(vocab.tokens.iter().cloned())),
        )
        .set(
            "tokenizer.ggml.token_type",
            MetadataValue::Array(ArrayValue::i32s(vocab.token_types.iter().copied())),
        )
        .set(
            "tokenizer.ggml.merges",
            MetadataValue::Array(ArrayValue::strings(vocab.merges.iter().cloned())),
        )
        .set(
            "tokenizer.ggml.bos_token_id",
            MetadataValue::U32(vocab.bos_id),
        )
        .set(
            "tokenizer.ggml.eos_token_id",
            MetadataValue::U32(vocab.eos_id),
        )
        .set(
            "tokenizer.ggml.eot_token_id",
            MetadataValue::U32(vocab.eot_id),
        )
        .set("tokenizer.ggml.add_bos_token", MetadataValue::Bool(true))
        .set(
            "tokenizer.chat_template",
            MetadataValue::String(CHAT_TEMPLATE.into()),
        );

        let mut rng = SplitMix64::new(self.seed);
        // Small next to the per-layer updates, so the residual stream depends on the context
        // rather than echoing the current token through the tied output layer.
        let embedding_values = (0..vocab_size * config.hidden).map(|_| rng.uniform(-0.25, 0.25));
        let (embedding_type, embedding_bytes): (GgmlType, Vec<u8>) = match self.embedding {
            EmbeddingType::F16 => (
                GgmlType::F16,
                embedding_values
                    .flat_map(|v| f16::from_f32(v).to_le_bytes())
                    .collect(),
            ),
            EmbeddingType::F32 => (
                GgmlType::F32,
                embedding_values.flat_map(|v| v.to_le_bytes()).collect(),
            ),
        };
        w.add_tensor(
            names::TOKEN_EMBD,
            &[config.hidden as u64, vocab_size as u64],
            embedding_type,
            embedding_bytes,
        )?;

        for layer in 0..config.layers {
            for part in names::NORMS {
                let norm: Vec<f32> = (0..config.norm_len(part))
                    .map(|_| rng.uniform(0.8, 1.2))
                    .collect();
                w.add_tensor(
                    names::layer(layer, part),
                    &[norm.len() as u64],
                    GgmlType::F32,
                    f32_bytes(&norm),
                )?;
            }
            for part in names::PROJECTIONS {
                let [cols, rows] = config.projection_dims(part);
                let values = rng.ternary(rows * cols);
                // Roughly unit-variance outputs for unit-RMS inputs; rounded to f16 so that
                // the f32 (I2_S) and f16 (TQ) scale fields hold the same number.
                let scale = f16::from_f32(rng.uniform(0.8, 1.2) / (cols as f32 * 2.0 / 3.0).sqrt())
                    .to_f32();
                let name = names::layer(layer, part);
                let stored_scale = if self.scale_tensors { 1.0 } else { scale };
                let bytes = ternary::encode(self.format, &values, rows, cols, stored_scale)
                    .map_err(|source| GenerateError::Encode {
                        tensor: name.clone(),
                        source,
                    })?;
                w.add_tensor(
                    name,
                    &[cols as u64, rows as u64],
                    ggml_type_of(self.format),
                    bytes,
                )?;
                if self.scale_tensors {
                    w.add_tensor(
                        names::layer_scale(layer, part),
                        &[1],
                        GgmlType::F32,
                        f32_bytes(&[scale]),
                    )?;
                }
            }
        }
        let output_norm: Vec<f32> = (0..config.hidden).map(|_| rng.uniform(0.8, 1.2)).collect();
        w.add_tensor(
            names::OUTPUT_NORM,
            &[config.hidden as u64],
            GgmlType::F32,
            f32_bytes(&output_norm),
        )?;
        Ok(w)
    }
}

/// The GGUF tensor type that stores `format`.
pub fn ggml_type_of(format: WeightFormat) -> GgmlType {
    match format {
        WeightFormat::I2S => GgmlType::I2S,
        WeightFormat::Tq2_0 => GgmlType::TQ2_0,
        WeightFormat::Tq1_0 => GgmlType::TQ1_0,
    }
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// SplitMix64: tiny, fast, and fully determined by the seed on every platform.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self, low: f32, high: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        low + (high - low) * unit
    }

    /// Ternary values with about 30% zeros, the sparsity reported for 2B4T.
    fn ternary(&mut self, n: usize) -> Vec<i8> {
        (0..n)
            .map(|_| match self.next_u64() % 20 {
                0..=5 => 0,
                6..=12 => -1,
                _ => 1,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufFile;

    #[test]
    fn tiny_model_has_every_tensor_and_tokenizer_key() {
        let model = SyntheticModel::tiny(WeightFormat::Tq2_0, 7);
        let file = GgufFile::from_bytes(model.to_writer().unwrap().to_bytes().unwrap()).unwrap();
        assert_eq!(
            file.get("general.architecture").unwrap().as_str(),
            Some("bitnet")
        );
        assert_eq!(file.tensors().len(), 2 + 2 * 11);
        let tokens = file
            .get("tokenizer.ggml.tokens")
            .unwrap()
            .as_array()
            .unwrap();
        assert_eq!(tokens.len(), 256 + MERGE_COUNT + 3);
        let embd = file.tensor(names::TOKEN_EMBD).unwrap();
        assert_eq!(embd.dims, vec![256, tokens.len() as u64]);
        let k = file.tensor("blk.1.attn_k.weight").unwrap();
        assert_eq!(
            (k.dims.clone(), k.ggml_type),
            (vec![256, 128], GgmlType::TQ2_0)
        );
    }

    #[test]
    fn bad_shapes_are_refused() {
        let mut model = SyntheticModel::tiny(WeightFormat::I2S, 1);
        model.shape.hidden = 200;
        assert!(model
            .to_writer()
            .err()
            .unwrap()
            .to_string()
            .contains("multiple"));
        let mut model = SyntheticModel::tiny(WeightFormat::I2S, 1);
        model.scale_tensors = true;
        assert!(model.to_writer().is_err());
    }
}
