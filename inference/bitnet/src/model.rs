//! Loading a BitNet model: find every tensor the architecture needs, check its type and
//! shape against the hyper-parameters, and hand the bytes to the `ternary` kernels.
//! [`TensorSource`] is shared with the f32 reference so both read the file the same way.

use std::path::Path;

use ternary::{OutputMatrix, TernaryMatrix, ThreadPool, WeightFormat};

use crate::config::{names, Architecture, ConfigError, FfnActivation, ModelConfig};
use crate::gguf::{GgmlType, GgufError, GgufFile, GgufHeader, TensorInfo};

/// Why a model file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the tokenizer in the file is unusable: {0}")]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    #[error("tensor {tensor:?} is missing; the file is incomplete or not a BitNet model")]
    MissingTensor { tensor: String },
    #[error("tensor {tensor:?} has shape {actual:?} but the hyper-parameters need {expected:?}")]
    WrongShape {
        tensor: String,
        expected: Vec<u64>,
        actual: Vec<u64>,
    },
    #[error("tensor {tensor:?} has type {found}; expected {expected}")]
    WrongType {
        tensor: String,
        expected: &'static str,
        found: GgmlType,
    },
    #[error("tensor {tensor:?} is {found} but the other ternary tensors are {expected}; mixed ternary formats are not supported")]
    MixedFormats {
        tensor: String,
        expected: WeightFormat,
        found: GgmlType,
    },
    #[error("tensor {tensor:?} holds the non-finite or non-positive value {value}")]
    BadValue { tensor: String, value: f32 },
    #[error("tensor {tensor:?} cannot be used: {source}")]
    Format {
        tensor: String,
        #[source]
        source: ternary::FormatError,
    },
}

/// How to prepare the model in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadOptions {
    /// Repack the output layer (the tied embedding) to int8 rows: half the bytes per token
    /// against F16, at a small accuracy cost.
    pub int8_output: bool,
    /// Worker threads for the matrix products (at least 1).
    pub threads: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            int8_output: false,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Reads typed tensors out of a parsed GGUF file, checking names, types and shapes.
pub(crate) struct TensorSource<'f> {
    pub file: &'f GgufFile,
    pub config: ModelConfig,
    pub format: WeightFormat,
}

/// A ternary projection's bytes and its optional extra scale (llama.cpp `.scale` tensors).
pub(crate) struct TernaryTensor<'f> {
    pub name: String,
    pub bytes: &'f [u8],
    pub rows: usize,
    pub cols: usize,
    pub extra_scale: Option<f32>,
}

/// A dense matrix (F16 or F32) stored row-major with `cols` per row.
pub(crate) struct DenseTensor<'f> {
    pub name: &'static str,
    pub ggml_type: GgmlType,
    pub bytes: &'f [u8],
    pub rows: usize,
    pub cols: usize,
}

impl<'f> TensorSource<'f> {
    pub fn new(file: &'f GgufFile) -> Result<Self, LoadError> {
        let embedding_rows = file
            .tensor(names::TOKEN_EMBD)
            .and_then(|t| t.dims.get(1))
            .map(|&rows| rows as usize);
        let config = ModelConfig::from_gguf(file.header(), embedding_rows)?;
        let first = names::layer(0, names::PROJECTIONS[0]);
        let info = file.tensor(&first).ok_or(LoadError::MissingTensor {
            tensor: first.clone(),
        })?;
        let format = match info.ggml_type {
            GgmlType::I2S => WeightFormat::I2S,
            GgmlType::TQ2_0 => WeightFormat::Tq2_0,
            GgmlType::TQ1_0 => WeightFormat::Tq1_0,
            found => {
                return Err(LoadError::WrongType {
                    tensor: first,
                    expected: "a ternary type (I2_S, TQ1_0 or TQ2_0)",
                    found,
                })
            }
        };
        Ok(TensorSource {
            file,
            config,
            format,
        })
    }

    fn info(&self, name: &str) -> Result<&'f TensorInfo, LoadError> {
        self.file
            .header()
            .tensor(name)
            .ok_or_else(|| LoadError::MissingTensor {
                tensor: name.to_string(),
            })
    }

    fn check_dims(info: &TensorInfo, expected: &[usize]) -> Result<(), LoadError> {
        let expected: Vec<u64> = expected.iter().map(|&d| d as u64).collect();
        if info.dims != expected {
            return Err(LoadError::WrongShape {
                tensor: info.name.clone(),
                expected,
                actual: info.dims.clone(),
            });
        }
        Ok(())
    }

    /// An F32 vector (norm weights) of length `len`.
    pub fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, LoadError> {
        let info = self.info(name)?;
        Self::check_dims(info, &[len])?;
        let bytes = self.file.tensor_data(info);
        let values: Vec<f32> = match info.ggml_type {
            GgmlType::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            GgmlType::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            found => {
                return Err(LoadError::WrongType {
                    tensor: name.to_string(),
                    expected: "F32 or F16",
                    found,
                })
            }
        };
        if let Some(&bad) = values.iter().find(|v| !v.is_finite()) {
            return Err(LoadError::BadValue {
                tensor: name.to_string(),
                value: bad,
            });
        }
        Ok(values)
    }

    pub fn norm(&self, layer: usize, part: &str) -> Result<Vec<f32>, LoadError> {
        self.vector(&names::layer(layer, part), self.config.norm_len(part))
    }

    pub fn projection(&self, layer: usize, part: &str) -> Result<TernaryTensor<'f>, LoadError> {
        let name = names::layer(layer, part);
        let info = self.info(&name)?;
        let [cols, rows] = self.config.projection_dims(part);
        if info.ggml_type != crate::generate::ggml_type_of(self.format) {
            return Err(LoadError::MixedFormats {
                tensor: name,
                expected: self.format,
                found: info.ggml_type,
            });
        }
        Self::check_dims(info, &[cols, rows])?;
        let scale_name = names::layer_scale(layer, part);
        let extra_scale = match self.file.header().tensor(&scale_name) {
            None => None,
            Some(_) => {
                let scale = self.vector(&scale_name, 1)?[0];
                if !(scale.is_finite() && scale > 0.0) {
                    return Err(LoadError::BadValue {
                        tensor: scale_name,
                        value: scale,
                    });
                }
                Some(scale)
            }
        };
        Ok(TernaryTensor {
            bytes: self.file.tensor_data(info),
            name,
            rows,
            cols,
            extra_scale,
        })
    }

    /// `token_embd.weight`, or `output.weight` when `output` is set and the file has one.
    pub fn dense(&self, name: &'static str) -> Result<DenseTensor<'f>, LoadError> {
        let info = self.info(name)?;
        let (hidden, vocab) = (self.config.hidden, self.config.vocab_size);
        Self::check_dims(info, &[hidden, vocab])?;
        if !matches!(info.ggml_type, GgmlType::F16 | GgmlType::F32) {
            return Err(LoadError::WrongType {
                tensor: name.to_string(),
                expected: "F16 or F32",
                found: info.ggml_type,
            });
        }
        Ok(DenseTensor {
            name,
            ggml_type: info.ggml_type,
            bytes: self.file.tensor_data(info),
            rows: vocab,
            cols: hidden,
        })
    }

    pub fn has_output(&self) -> bool {
        self.file.header().tensor(names::OUTPUT).is_some()
    }
}

/// One ternary projection ready for the kernels.
pub(crate) struct Projection {
    pub matrix: TernaryMatrix,
    /// Multiplier after the product (llama.cpp `.scale` tensors), 1 when absent.
    pub extra_scale: f32,
}

/// The weights of one transformer block.
pub(crate) struct Layer {
    pub attn_norm: Vec<f32>,
    pub attn_sub_norm: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    pub ffn_sub_norm: Vec<f32>,
    pub attn_q: Projection,
    pub attn_k: Projection,
    pub attn_v: Projection,
    pub attn_output: Projection,
    pub ffn_gate: Projection,
    pub ffn_up: Projection,
    pub ffn_down: Projection,
}

/// A loaded BitNet model: weights packed for the kernels, plus the file's metadata.
pub struct Model {
    pub(crate) config: ModelConfig,
    format: WeightFormat,
    header: GgufHeader,
    pub(crate) token_embedding: OutputMatrix,
    /// `None`: the output layer is the token embedding (tied).
    pub(crate) output: Option<OutputMatrix>,
    tied_output: bool,
    pub(crate) output_norm: Vec<f32>,
    pub(crate) layers: Vec<Layer>,
    /// `1 / θ^(2i/rope_dims)` for each rotated pair.
    pub(crate) rope_inv_freq: Vec<f32>,
    pub(crate) pool: ThreadPool,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .field("format", &self.format)
            .field("int8_output", &self.output_is_int8())
            .finish_non_exhaustive()
    }
}

fn dense_matrix(tensor: &DenseTensor<'_>) -> Result<OutputMatrix, LoadError> {
    let result = match tensor.ggml_type {
        GgmlType::F16 => OutputMatrix::from_f16_bytes(tensor.bytes, tensor.rows, tensor.cols),
        _ => {
            let values: Vec<f32> = tensor
                .bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            OutputMatrix::from_f32(&values, tensor.rows, tensor.cols)
        }
    };
    result.map_err(|source| LoadError::Format {
        tensor: tensor.name.to_string(),
        source,
    })
}

impl Model {
    /// Memory-maps, validates and loads the model at `path`.
    pub fn load(path: &Path, options: LoadOptions) -> Result<Model, LoadError> {
        let file = GgufFile::open(path)?;
        Self::from_gguf(&file, options)
    }

    /// Loads from an already parsed GGUF file (in memory or mapped).
    pub fn from_gguf(file: &GgufFile, options: LoadOptions) -> Result<Model, LoadError> {
        let source = TensorSource::new(file)?;
        let config = source.config.clone();
        let projection =
            |layer: usize, part: &str| -> Result<Projection, LoadError> {
                let t = source.projection(layer, part)?;
                let matrix = TernaryMatrix::from_gguf(source.format, t.bytes, t.rows, t.cols)
                    .map_err(|e| LoadError::Format {
                        tensor: t.name.clone(),
                        source: e,
                    })?;
                Ok(Projection {
                    matrix,
                    extra_scale: t.extra_scale.unwrap_or(1.0),
                })
            };
        let mut layers = Vec::with_capacity(config.layers);
        for l in 0..config.layers {
            layers.push(Layer {
                attn_norm: source.norm(l, "attn_norm")?,
                attn_sub_norm: source.norm(l, "attn_sub_norm")?,
                ffn_norm: source.norm(l, "ffn_norm")?,
                ffn_sub_norm: source.norm(l, "ffn_sub_norm")?,
                attn_q: projection(l, "attn_q")?,
                attn_k: projection(l, "attn_k")?,
                attn_v: projection(l, "attn_v")?,
                attn_output: projection(l, "attn_output")?,
                ffn_gate: projection(l, "ffn_gate")?,
                ffn_up: projection(l, "ffn_up")?,
                ffn_down: projection(l, "ffn_down")?,
            });
        }
        let output_norm = source.vector(names::OUTPUT_NORM, config.hidden)?;
        let mut token_embedding = dense_matrix(&source.dense(names::TOKEN_EMBD)?)?;
        let tied_output = !source.has_output();
        let output = if tied_output {
            // One int8 copy serves both the lookup and the output layer, instead of keeping
            // the f16 table as well.
            if options.int8_output {
                token_embedding = token_embedding.to_int8();
            }
            None
        } else {
            let output = dense_matrix(&source.dense(names::OUTPUT)?)?;
            Some(if options.int8_output {
                output.to_int8()
            } else {
                output
            })
        };
        let half_rot = config.rope_dims / 2;
        let rope_inv_freq = (0..half_rot)
            .map(|i| {
                (f64::from(config.rope_theta).powf(-2.0 * i as f64 / config.rope_dims as f64))
                    as f32
            })
            .collect();
        Ok(Model {
            format: source.format,
            header: file.header().clone(),
            config,
            token_embedding,
            output,
            tied_output,
            output_norm,
            layers,
            rope_inv_freq,
            pool: ThreadPool::new(options.threads),
        })
    }

    /// All hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// `general.name`, or the architecture when the file has none.
    pub fn name(&self) -> &str {
        self.config
            .name
            .as_deref()
            .unwrap_or(self.config.architecture.as_str())
    }

    pub fn architecture(&self) -> Architecture {
        self.config.architecture
    }

    /// The packed format of the ternary projections.
    pub fn weight_format(&self) -> WeightFormat {
        self.format
    }

    /// The FFN gate activation that runs (after any `hidden_activation` override).
    pub fn activation(&self) -> FfnActivation {
        self.config.activation
    }

    pub fn context_length(&self) -> usize {
        self.config.context_length
    }

    pub fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    /// True when the output layer is the token embedding (no `output.weight` in the file).
    pub fn tied_output(&self) -> bool {
        self.tied_output
    }

    /// True when the output layer was repacked to int8 at load.
    pub fn output_is_int8(&self) -> bool {
        self.output_matrix().is_int8()
    }

    /// The whole GGUF header: metadata (tokenizer keys, chat template) and tensor infos.
    pub fn gguf(&self) -> &GgufHeader {
        &self.header
    }

    /// The tokenizer described by the file's `tokenizer.ggml.*` keys.
    pub fn tokenizer(&self) -> Result<crate::tokenizer::Tokenizer, LoadError> {
        let spec = crate::config::tokenizer_spec(&self.header)?;
        Ok(crate::tokenizer::Tokenizer::from_vocab(spec)?)
    }

    /// Threads used by the matrix products.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Bytes of weights a decode step streams: every ternary projection plus the output layer.
    pub fn weight_bytes_per_token(&self) -> usize {
        let ternary: usize = self
            .layers
            .iter()
            .flat_map(|l| {
                [
                    &l.attn_q,
                    &l.attn_k,
                    &l.attn_v,
                    &l.attn_output,
                    &l.ffn_gate,
                    &l.ffn_up,
                    &l.ffn_down,
                ]
            })
            .map(|p| p.matrix.weight_bytes())
            .sum();
        ternary + self.output_matrix().weight_bytes()
    }

    pub(crate) fn output_matrix(&self) -> &OutputMatrix {
        self.output.as_ref().unwrap_or(&self.token_embedding)
    }
}
