//! The f32 reference forward pass, the definition of correct for tests: plain loops, no
//! kernels, weights dequantised to f32 straight from the file. It shares with the optimised
//! path only the file reading and what defines the model: the per-token int8 activation
//! quantisation (absmax, round half to even) and the f16 rounding of cached keys and values.

use half::f16;
use ternary::WeightFormat;

use crate::config::{names, ModelConfig};
use crate::gguf::{GgmlType, GgufFile};
use crate::model::{LoadError, TensorSource};

/// A dense f32 matrix, row-major, `rows × cols`.
struct Dense {
    values: Vec<f32>,
    cols: usize,
}

impl Dense {
    fn row(&self, r: usize) -> &[f32] {
        &self.values[r * self.cols..(r + 1) * self.cols]
    }
}

struct RefLayer {
    norms: [Vec<f32>; 4],
    /// attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down.
    projections: Vec<Dense>,
}

/// All weights of a model as f32.
pub struct ReferenceModel {
    config: ModelConfig,
    format: WeightFormat,
    embedding: Dense,
    output: Option<Dense>,
    output_norm: Vec<f32>,
    layers: Vec<RefLayer>,
    rope_inv_freq: Vec<f32>,
}

fn dense_f32(ggml_type: GgmlType, bytes: &[u8], cols: usize) -> Dense {
    let values = match ggml_type {
        GgmlType::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    };
    Dense { values, cols }
}

impl ReferenceModel {
    /// Reads and dequantises every weight of `file`.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, LoadError> {
        let source = TensorSource::new(file)?;
        let config = source.config.clone();
        let mut layers = Vec::with_capacity(config.layers);
        for l in 0..config.layers {
            let norms = [
                source.norm(l, names::NORMS[0])?,
                source.norm(l, names::NORMS[1])?,
                source.norm(l, names::NORMS[2])?,
                source.norm(l, names::NORMS[3])?,
            ];
            let mut projections = Vec::with_capacity(7);
            for part in names::PROJECTIONS {
                let t = source.projection(l, part)?;
                let decoded =
                    ternary::decode(source.format, t.bytes, t.rows, t.cols).map_err(|e| {
                        LoadError::Format {
                            tensor: t.name.clone(),
                            source: e,
                        }
                    })?;
                let extra = t.extra_scale.unwrap_or(1.0);
                let values = decoded
                    .values
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| f32::from(v) * decoded.scales[i / decoded.block] * extra)
                    .collect();
                projections.push(Dense {
                    values,
                    cols: t.cols,
                });
            }
            layers.push(RefLayer { norms, projections });
        }
        let embd = source.dense(names::TOKEN_EMBD)?;
        let embedding = dense_f32(embd.ggml_type, embd.bytes, embd.cols);
        let output = if source.has_output() {
            let out = source.dense(names::OUTPUT)?;
            Some(dense_f32(out.ggml_type, out.bytes, out.cols))
        } else {
            None
        };
        let output_norm = source.vector(names::OUTPUT_NORM, config.hidden)?;
        let rope_inv_freq = (0..config.rope_dims / 2)
            .map(|i| {
                (f64::from(config.rope_theta).powf(-2.0 * i as f64 / config.rope_dims as f64))
                    as f32
            })
            .collect();
        Ok(ReferenceModel {
            format: source.format,
            config,
            embedding,
            output,
            output_norm,
            layers,
            rope_inv_freq,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn weight_format(&self) -> WeightFormat {
        self.format
    }

    /// A fresh single-sequence decoding state.
    pub fn session(&self) -> ReferenceSession<'_> {
        ReferenceSession {
            model: self,
            keys: vec![Vec::new(); self.config.layers],
            values: vec![Vec::new(); self.config.layers],
            position: 0,
        }
    }
}

/// Per-token absmax int8 quantisation, returned dequantised: `round(x·s) / s` with
/// `s = 127 / max(max|x|, 1e-5)`, round half to even, clamped to [-128, 127].
pub fn quantize_activations(x: &[f32]) -> Vec<f32> {
    let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-5);
    let scale = 127.0 / max;
    x.iter()
        .map(|v| (v * scale).round_ties_even().clamp(-128.0, 127.0) / scale)
        .collect()
}

/// `y = W · quantize(x)` with plain loops.
fn bitlinear(w: &Dense, x: &[f32]) -> Vec<f32> {
    let xq = quantize_activations(x);
    let rows = w.values.len() / w.cols;
    (0..rows)
        .map(|r| w.row(r).iter().zip(&xq).map(|(a, b)| a * b).sum())
        .collect()
}

/// RMSNorm of one token's vector, written out independently of the optimised path.
fn norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let mean_square = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv_rms = 1.0 / (mean_square + eps).sqrt();
    x.iter().zip(weight).map(|(v, w)| v * inv_rms * w).collect()
}

/// NEOX RoPE on one head: element i pairs with element i + rope_dims/2.
fn rope(head: &mut [f32], pos: usize, inv_freq: &[f32]) {
    let half = inv_freq.len();
    for i in 0..half {
        let angle = pos as f32 * inv_freq[i];
        let (x0, x1) = (head[i], head[i + half]);
        head[i] = x0 * angle.cos() - x1 * angle.sin();
        head[i + half] = x0 * angle.sin() + x1 * angle.cos();
    }
}

/// One sequence decoded token by token by the reference.
pub struct ReferenceSession<'m> {
    model: &'m ReferenceModel,
    /// Per layer: position-major keys/values, `kv_dim` each, rounded through f16.
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    position: usize,
}

impl ReferenceSession<'_> {
    pub fn position(&self) -> usize {
        self.position
    }

    /// Consumes one token and returns the logits for the next one.
    pub fn step(&mut self, token: u32) -> Vec<f32> {
        let m = self.model;
        let c = &m.config;
        let (hd, kvd) = (c.head_dim, c.kv_dim());
        let pos = self.position;
        let mut h = m.embedding.row(token as usize).to_vec();
        for (l, layer) in m.layers.iter().enumerate() {
            let [attn_norm, attn_sub_norm, ffn_norm, ffn_sub_norm] = &layer.norms;
            let p = &layer.projections;
            let x = norm(&h, attn_norm, c.rms_eps);
            let mut q = bitlinear(&p[0], &x);
            let mut k = bitlinear(&p[1], &x);
            let v = bitlinear(&p[2], &x);
            for head in q.chunks_exact_mut(hd) {
                rope(head, pos, &m.rope_inv_freq);
            }
            for head in k.chunks_exact_mut(hd) {
                rope(head, pos, &m.rope_inv_freq);
            }
            let through_f16 = |x: &f32| f16::from_f32(*x).to_f32();
            self.keys[l].extend(k.iter().map(through_f16));
            self.values[l].extend(v.iter().map(through_f16));
            let group = c.heads / c.kv_heads;
            let mut attn = vec![0.0f32; c.q_dim()];
            for head in 0..c.heads {
                let kv = head / group;
                let query = &q[head * hd..(head + 1) * hd];
                let scores: Vec<f32> = (0..=pos)
                    .map(|t| {
                        let key = &self.keys[l][t * kvd + kv * hd..][..hd];
                        query.iter().zip(key).map(|(a, b)| a * b).sum::<f32>() / (hd as f32).sqrt()
                    })
                    .collect();
                let max = scores.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f32 = exps.iter().sum();
                for (t, e) in exps.iter().enumerate() {
                    let value = &self.values[l][t * kvd + kv * hd..][..hd];
                    for (o, v) in attn[head * hd..(head + 1) * hd].iter_mut().zip(value) {
                        *o += e / total * v;
                    }
                }
            }
            let a = norm(&attn, attn_sub_norm, c.rms_eps);
            for (hv, o) in h.iter_mut().zip(bitlinear(&p[3], &a)) {
                *hv += o;
            }
            let x = norm(&h, ffn_norm, c.rms_eps);
            let gate = bitlinear(&p[4], &x);
            let up = bitlinear(&p[5], &x);
            let inner: Vec<f32> = gate
                .iter()
                .zip(&up)
                .map(|(g, u)| c.activation.apply(*g) * u)
                .collect();
            let inner = norm(&inner, ffn_sub_norm, c.rms_eps);
            for (hv, o) in h.iter_mut().zip(bitlinear(&p[6], &inner)) {
                *hv += o;
            }
        }
        self.position += 1;
        let x = norm(&h, &m.output_norm, c.rms_eps);
        let output = m.output.as_ref().unwrap_or(&m.embedding);
        (0..c.vocab_size)
            .map(|r| output.row(r).iter().zip(&x).map(|(a, b)| a * b).sum())
            .collect()
    }
}
