//! Typed model hyper-parameters read from GGUF metadata, for the two BitNet layouts:
//! bitnet.cpp's `bitnet-b1.58` (I2_S) and upstream llama.cpp's `bitnet` (TQ1_0/TQ2_0).
//! Also the canonical tensor names, so the loader, the reference and the generator agree.

use std::fmt;

use crate::gguf::{GgufHeader, MetadataValue};

/// Which GGUF architecture string the file declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// bitnet.cpp's name for BitNet b1.58 2B4T (ReLU² FFN unless told otherwise).
    BitnetB158,
    /// upstream llama.cpp's name (SiLU FFN unless `bitnet.hidden_activation` says otherwise).
    Bitnet,
}

impl Architecture {
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::BitnetB158 => "bitnet-b1.58",
            Architecture::Bitnet => "bitnet",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name {
            "bitnet-b1.58" => Some(Architecture::BitnetB158),
            "bitnet" => Some(Architecture::Bitnet),
            _ => None,
        }
    }

    fn default_activation(self) -> FfnActivation {
        match self {
            Architecture::BitnetB158 => FfnActivation::Relu2,
            Architecture::Bitnet => FfnActivation::Silu,
        }
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The gate activation of the gated FFN: `act(gate) · up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FfnActivation {
    /// `relu(g)²`, what 2B4T was trained with.
    Relu2,
    /// `g · sigmoid(g)`.
    Silu,
}

impl FfnActivation {
    /// The spelling used by the `<arch>.hidden_activation` key.
    pub fn as_str(self) -> &'static str {
        match self {
            FfnActivation::Relu2 => "relu2",
            FfnActivation::Silu => "silu",
        }
    }

    /// `act(gate) · up` for every pair, into `gate`: what the forward pass runs, vectorised (SiLU
    /// through [`crate::vector_math::exp`], within a few ulp of [`Self::apply`]).
    pub fn apply_gated(self, gate: &mut [f32], up: &[f32]) {
        match self {
            FfnActivation::Relu2 => crate::vector_math::relu2_times(gate, up),
            FfnActivation::Silu => crate::vector_math::silu_times(gate, up),
        }
    }

    /// The activation of one value, with libm's `exp`: the reference's definition.
    #[inline]
    pub fn apply(self, gate: f32) -> f32 {
        match self {
            FfnActivation::Relu2 => {
                let r = gate.max(0.0);
                r * r
            }
            FfnActivation::Silu => gate / (1.0 + (-gate).exp()),
        }
    }
}

impl fmt::Display for FfnActivation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the metadata does not describe a model we can run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("metadata key general.architecture is missing; this is not a model file")]
    MissingArchitecture,
    #[error("architecture {found:?} is not supported; expected \"bitnet-b1.58\" (bitnet.cpp, I2_S) or \"bitnet\" (llama.cpp, TQ1_0/TQ2_0)")]
    UnsupportedArchitecture { found: String },
    #[error("required metadata key {key} is missing")]
    MissingKey { key: String },
    #[error("metadata key {key} must be {expected}, found {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("metadata key {key} = {value} is invalid: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
}

/// Hyper-parameters of a BitNet model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    /// `general.name`, when present.
    pub name: Option<String>,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub context_length: usize,
    pub rope_theta: f32,
    /// Leading dimensions of each head that RoPE rotates (NEOX pairing i, i + rope_dims/2).
    pub rope_dims: usize,
    pub rms_eps: f32,
    pub vocab_size: usize,
    pub activation: FfnActivation,
}

impl ModelConfig {
    /// Width of the K (and V) projection outputs.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Width of the Q projection output.
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Reads the hyper-parameters; `vocab_fallback` is used when the file has neither
    /// `<arch>.vocab_size` nor a token list (the embedding's row count).
    pub fn from_gguf(
        header: &GgufHeader,
        vocab_fallback: Option<usize>,
    ) -> Result<Self, ConfigError> {
        let arch_name = header
            .get("general.architecture")
            .ok_or(ConfigError::MissingArchitecture)?;
        let arch_name = arch_name.as_str().ok_or_else(|| ConfigError::WrongType {
            key: "general.architecture".into(),
            expected: "a string",
            found: arch_name.type_name().into(),
        })?;
        let architecture =
            Architecture::parse(arch_name).ok_or_else(|| ConfigError::UnsupportedArchitecture {
                found: arch_name.to_string(),
            })?;
        let keys = Keys {
            header,
            prefix: arch_name,
        };

        let layers = keys.required_usize("block_count")?;
        let hidden = keys.required_usize("embedding_length")?;
        let heads = keys.required_usize("attention.head_count")?;
        let kv_heads = keys
            .optional_usize("attention.head_count_kv")?
            .unwrap_or(heads);
        let ffn = keys.required_usize("feed_forward_length")?;
        let context_length = keys.required_usize("context_length")?;
        if heads == 0 || hidden % heads != 0 {
            return Err(keys.invalid(
                "attention.head_count",
                heads,
                format!("must divide embedding_length {hidden}"),
            ));
        }
        let head_dim = keys
            .optional_usize("attention.key_length")?
            .unwrap_or(hidden / heads);
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(keys.invalid(
                "attention.head_count_kv",
                kv_heads,
                format!("must divide attention.head_count {heads}"),
            ));
        }
        for (key, value) in [
            ("block_count", layers),
            ("embedding_length", hidden),
            ("feed_forward_length", ffn),
            ("context_length", context_length),
            ("attention.key_length", head_dim),
        ] {
            if value == 0 {
                return Err(keys.invalid(key, value, "must be positive".into()));
            }
        }
        let rope_dims = keys
            .optional_usize("rope.dimension_count")?
            .unwrap_or(head_dim);
        if rope_dims == 0 || rope_dims % 2 != 0 || rope_dims > head_dim {
            return Err(keys.invalid(
                "rope.dimension_count",
                rope_dims,
                format!("must be even and at most the head size {head_dim}"),
            ));
        }
        // llama.cpp's defaults when a key is absent.
        let rope_theta = keys.optional_f32("rope.freq_base")?.unwrap_or(10_000.0);
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(keys.invalid("rope.freq_base", rope_theta, "must be positive".into()));
        }
        let rms_eps = keys
            .optional_f32("attention.layer_norm_rms_epsilon")?
            .unwrap_or(1e-5);
        if !(rms_eps.is_finite() && rms_eps >= 0.0) {
            return Err(keys.invalid(
                "attention.layer_norm_rms_epsilon",
                rms_eps,
                "must be a non-negative number".into(),
            ));
        }
        let token_count = header
            .get("tokenizer.ggml.tokens")
            .and_then(MetadataValue::as_array)
            .map(|a| a.len());
        let vocab_size = match keys.optional_usize("vocab_size")? {
            Some(v) => v,
            None => token_count
                .or(vocab_fallback)
                .ok_or_else(|| ConfigError::MissingKey {
                    key: format!("{arch_name}.vocab_size"),
                })?,
        };
        if vocab_size == 0 {
            return Err(keys.invalid("vocab_size", vocab_size, "must be positive".into()));
        }
        let activation = match keys.optional_str("hidden_activation")? {
            None => architecture.default_activation(),
            Some("relu2") => FfnActivation::Relu2,
            Some("silu") => FfnActivation::Silu,
            Some(other) => {
                return Err(keys.invalid(
                    "hidden_activation",
                    other,
                    "supported values are \"relu2\" and \"silu\"".into(),
                ))
            }
        };
        let name = header
            .get("general.name")
            .and_then(MetadataValue::as_str)
            .map(str::to_string);
        Ok(ModelConfig {
            architecture,
            name,
            layers,
            hidden,
            heads,
            kv_heads,
            head_dim,
            ffn,
            context_length,
            rope_theta,
            rope_dims,
            rms_eps,
            vocab_size,
            activation,
        })
    }
}

struct Keys<'a> {
    header: &'a GgufHeader,
    prefix: &'a str,
}

impl Keys<'_> {
    fn full(&self, key: &str) -> String {
        format!("{}.{key}", self.prefix)
    }

    fn invalid(&self, key: &str, value: impl fmt::Display, reason: String) -> ConfigError {
        ConfigError::Invalid {
            key: self.full(key),
            value: value.to_string(),
            reason,
        }
    }

    fn optional_usize(&self, key: &str) -> Result<Option<usize>, ConfigError> {
        let full = self.full(key);
        let Some(value) = self.header.get(&full) else {
            return Ok(None);
        };
        value
            .as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .map(Some)
            .ok_or_else(|| ConfigError::WrongType {
                key: full,
                expected: "a non-negative integer",
                found: format!("{value:?}"),
            })
    }

    fn required_usize(&self, key: &str) -> Result<usize, ConfigError> {
        self.optional_usize(key)?
            .ok_or_else(|| ConfigError::MissingKey {
                key: self.full(key),
            })
    }

    fn optional_f32(&self, key: &str) -> Result<Option<f32>, ConfigError> {
        let full = self.full(key);
        let Some(value) = self.header.get(&full) else {
            return Ok(None);
        };
        value
            .as_f64()
            .map(|v| Some(v as f32))
            .ok_or_else(|| ConfigError::WrongType {
                key: full,
                expected: "a float",
                found: value.type_name().into(),
            })
    }

    fn optional_str(&self, key: &str) -> Result<Option<&str>, ConfigError> {
        let full = self.full(key);
        let Some(value) = self.header.get(&full) else {
            return Ok(None);
        };
        value
            .as_str()
            .map(Some)
            .ok_or_else(|| ConfigError::WrongType {
                key: full,
                expected: "a string",
                found: value.type_name().into(),
            })
    }
}

/// Canonical GGUF tensor names (identical in bitnet.cpp and llama.cpp).
pub mod names {
    pub const TOKEN_EMBD: &str = "token_embd.weight";
    pub const OUTPUT: &str = "output.weight";
    pub const OUTPUT_NORM: &str = "output_norm.weight";

    /// The ternary projections of one layer, in the order the loader reports them.
    pub const PROJECTIONS: [&str; 7] = [
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    ];
    /// The norm vectors of one layer.
    pub const NORMS: [&str; 4] = ["attn_norm", "attn_sub_norm", "ffn_norm", "ffn_sub_norm"];

    pub fn layer(layer: usize, part: &str) -> String {
        format!("blk.{layer}.{part}.weight")
    }

    /// llama.cpp's optional per-projection scale tensor (`blk.N.attn_q.scale`).
    pub fn layer_scale(layer: usize, part: &str) -> String {
        format!("blk.{layer}.{part}.scale")
    }
}

impl ModelConfig {
    /// The expected ggml shape `[cols, rows]` of a layer projection.
    pub fn projection_dims(&self, part: &str) -> [usize; 2] {
        let (h, q, kv, f) = (self.hidden, self.q_dim(), self.kv_dim(), self.ffn);
        match part {
            "attn_q" => [h, q],
            "attn_k" | "attn_v" => [h, kv],
            "attn_output" => [q, h],
            "ffn_gate" | "ffn_up" => [h, f],
            "ffn_down" => [f, h],
            _ => unreachable!("projection names come from names::PROJECTIONS"),
        }
    }

    /// The expected length of a layer norm vector.
    pub fn norm_len(&self, part: &str) -> usize {
        match part {
            "attn_sub_norm" => self.q_dim(),
            "ffn_sub_norm" => self.ffn,
            _ => self.hidden,
        }
    }
}

/// Reads the `tokenizer.ggml.*` keys into the tokenizer's input, checking each key's type.
/// The tokenizer itself checks that the parts agree with each other.
pub fn tokenizer_spec(header: &GgufHeader) -> Result<crate::tokenizer::TokenizerSpec, ConfigError> {
    fn wrong(key: &str, expected: &'static str, found: &MetadataValue) -> ConfigError {
        ConfigError::WrongType {
            key: key.to_string(),
            expected,
            found: found.type_name().into(),
        }
    }
    let string = |key: &str| -> Result<Option<String>, ConfigError> {
        header
            .get(key)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| wrong(key, "a string", v))
            })
            .transpose()
    };
    let id = |key: &str| -> Result<Option<u32>, ConfigError> {
        header
            .get(key)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| wrong(key, "a token id", v))
            })
            .transpose()
    };
    let array = |key: &str| -> Result<Option<&[MetadataValue]>, ConfigError> {
        header
            .get(key)
            .map(|v| {
                v.as_array()
                    .map(|a| a.values())
                    .ok_or_else(|| wrong(key, "an array", v))
            })
            .transpose()
    };
    let strings = |key: &str| -> Result<Option<Vec<String>>, ConfigError> {
        array(key)?
            .map(|values| {
                values
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| wrong(key, "an array of strings", v))
                    })
                    .collect()
            })
            .transpose()
    };
    let model = string("tokenizer.ggml.model")?.ok_or_else(|| ConfigError::MissingKey {
        key: "tokenizer.ggml.model".into(),
    })?;
    let tokens = strings("tokenizer.ggml.tokens")?.ok_or_else(|| ConfigError::MissingKey {
        key: "tokenizer.ggml.tokens".into(),
    })?;
    let token_types = array("tokenizer.ggml.token_type")?
        .map(|values| {
            values
                .iter()
                .map(|v| match *v {
                    MetadataValue::I32(t) => Ok(t),
                    _ => v
                        .as_u64()
                        .and_then(|t| i32::try_from(t).ok())
                        .ok_or_else(|| {
                            wrong("tokenizer.ggml.token_type", "an array of integers", v)
                        }),
                })
                .collect::<Result<Vec<i32>, _>>()
        })
        .transpose()?;
    let scores = array("tokenizer.ggml.scores")?
        .map(|values| {
            values
                .iter()
                .map(|v| {
                    v.as_f64()
                        .map(|s| s as f32)
                        .ok_or_else(|| wrong("tokenizer.ggml.scores", "an array of floats", v))
                })
                .collect::<Result<Vec<f32>, _>>()
        })
        .transpose()?;
    let add_bos = header
        .get("tokenizer.ggml.add_bos_token")
        .map(|v| match v {
            MetadataValue::Bool(b) => Ok(*b),
            other => Err(wrong("tokenizer.ggml.add_bos_token", "a bool", other)),
        })
        .transpose()?;
    Ok(crate::tokenizer::TokenizerSpec {
        model,
        pre: string("tokenizer.ggml.pre")?,
        tokens,
        token_types,
        scores,
        merges: strings("tokenizer.ggml.merges")?,
        bos: id("tokenizer.ggml.bos_token_id")?,
        eos: id("tokenizer.ggml.eos_token_id")?,
        eot: id("tokenizer.ggml.eot_token_id")?,
        add_bos,
    })
}
