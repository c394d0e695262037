//! The optimised forward pass: a batch of tokens from any number of sequences goes through
//! one ternary GEMM per projection per layer, with attention over a slotted f16 KV cache.
//! Scratch buffers live in [`Scratch`] and are reused, so a warmed-up decode loop does not
//! allocate.

use std::sync::Mutex;

use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use ternary::{QuantizedActivations, ThreadPool};

use crate::model::{Model, Projection};

/// Why a forward call failed. Slot lengths are unchanged when this is returned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ForwardError {
    #[error("batch entry {index}: slot {slot} is not an allocated slot of this cache")]
    UnknownSlot { index: usize, slot: usize },
    #[error("batch entry {index}: token id {token} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange {
        index: usize,
        token: u32,
        vocab: usize,
    },
    #[error("batch entry {index}: position {pos} is beyond the cache's {max} positions per slot; start a new sequence or allocate a larger cache")]
    PositionOutOfRange {
        index: usize,
        pos: usize,
        max: usize,
    },
    #[error("batch entry {index}: slot {slot} has {cached} cached positions, so the next position must be at most {cached} and follow the slot's previous entry in this batch, but it is {pos}")]
    PositionGap {
        index: usize,
        slot: usize,
        pos: usize,
        cached: usize,
    },
    #[error("the cache was made for a model with {cache_layers} layers and KV width {cache_kv_dim}, but this model has {layers} and {kv_dim}")]
    CacheMismatch {
        cache_layers: usize,
        cache_kv_dim: usize,
        layers: usize,
        kv_dim: usize,
    },
    #[error("a KV cache needs at least one slot and one position, and at most the model's context length {context} positions; {positions} were asked for")]
    BadCacheSize { positions: usize, context: usize },
    #[error("kernel error: {0}")]
    Kernel(#[from] ternary::FormatError),
}

/// A handle to one sequence's region of a [`KvCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotId(usize);

impl SlotId {
    pub fn index(self) -> usize {
        self.0
    }
}

/// Keys and values of every layer for a fixed number of sequence slots, stored as f16
/// (half the bytes of f32; decode reads the whole cache every step).
/// Layout: `[slot][layer][kv_head][position][head_dim]`, so one head's keys are contiguous.
/// The buffers hold f16 bits and are allocated zeroed (`calloc`), so the OS maps pages only as
/// positions are written: a cache sized for the full context costs what the sequences use.
pub struct KvCache {
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    max_positions: usize,
    keys: Vec<u16>,
    values: Vec<u16>,
    lengths: Vec<usize>,
    in_use: Vec<bool>,
}

impl KvCache {
    /// A cache with `slots` sequences of up to `max_positions` tokens each.
    pub fn new(model: &Model, slots: usize, max_positions: usize) -> Result<Self, ForwardError> {
        let c = model.config();
        if slots == 0 || max_positions == 0 || max_positions > c.context_length {
            return Err(ForwardError::BadCacheSize {
                positions: max_positions,
                context: c.context_length,
            });
        }
        let n = slots * c.layers * c.kv_dim() * max_positions;
        Ok(KvCache {
            layers: c.layers,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
            max_positions,
            keys: vec![0; n],
            values: vec![0; n],
            lengths: vec![0; slots],
            in_use: vec![false; slots],
        })
    }

    /// Takes a free slot (empty), or `None` when all are in use.
    pub fn allocate(&mut self) -> Option<SlotId> {
        let index = self.in_use.iter().position(|used| !used)?;
        self.in_use[index] = true;
        self.lengths[index] = 0;
        Some(SlotId(index))
    }

    /// Returns a slot to the pool; its contents are forgotten.
    pub fn free(&mut self, slot: SlotId) {
        if let Some(used) = self.in_use.get_mut(slot.0) {
            *used = false;
            self.lengths[slot.0] = 0;
        }
    }

    /// Cached positions of `slot` (0 for a free or unknown slot).
    pub fn len(&self, slot: SlotId) -> usize {
        self.lengths.get(slot.0).copied().unwrap_or(0)
    }

    /// Forgets positions from `len` on (for example to reuse a shared prompt prefix).
    pub fn truncate(&mut self, slot: SlotId, len: usize) {
        if let Some(cached) = self.lengths.get_mut(slot.0) {
            *cached = (*cached).min(len);
        }
    }

    pub fn slots(&self) -> usize {
        self.in_use.len()
    }

    pub fn free_slots(&self) -> usize {
        self.in_use.iter().filter(|used| !**used).count()
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Bytes of the cache (keys and values).
    pub fn bytes(&self) -> usize {
        (self.keys.len() + self.values.len()) * std::mem::size_of::<f16>()
    }

    /// Start of head `kv_head`'s run of positions for `slot` and `layer`.
    fn head_base(&self, slot: usize, layer: usize, kv_head: usize) -> usize {
        ((slot * self.layers + layer) * self.kv_heads + kv_head)
            * self.max_positions
            * self.head_dim
    }
}

/// One token of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchToken {
    pub slot: SlotId,
    pub token: u32,
    pub pos: usize,
    /// Whether the caller wants this token's logits (usually only a sequence's last token).
    pub logits: bool,
}

/// What the caller does with the logits [`Model::forward_for`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogitUse {
    /// Anything (sampling, log-probabilities): every value is the output layer's product.
    #[default]
    Any,
    /// Only the first index of each row's largest value (greedy decoding). On CPUs with a
    /// BF16 dot product a large batch then goes through the output layer's exact-argmax product
    /// (`ternary::OutputMatrix::try_matmul_exact_argmax`): that index is the same, the other
    /// values are approximations.
    Argmax,
}

/// Per-worker attention buffers.
#[derive(Default)]
struct AttentionScratch {
    scores: Vec<f32>,
    out: Vec<f32>,
}

/// Reusable buffers for [`Model::forward`]; they grow to the largest batch seen.
#[derive(Default)]
pub struct Scratch {
    hidden: Vec<f32>,
    normed: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    acts: Option<QuantizedActivations>,
    workers: Vec<Mutex<AttentionScratch>>,
    logit_rows: Vec<f32>,
    logits: Vec<f32>,
    rope: Vec<(f32, f32)>,
}

impl Scratch {
    pub fn new() -> Self {
        Self::default()
    }
}

fn resize(buffer: &mut Vec<f32>, len: usize) {
    buffer.resize(len, 0.0);
}

/// `out = x / rms(x) * weight`, one token at a time.
fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    for (row, out_row) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let mean_square = crate::vector_math::sum_of_squares(row) / width as f32;
        let inv = 1.0 / (mean_square + eps).sqrt();
        for ((o, &v), &w) in out_row.iter_mut().zip(row).zip(weight) {
            *o = v * inv * w;
        }
    }
}

/// `(cos, sin)` of every rotation angle of a position, as [`rope_neox`] takes them. Computed
/// once per token and forward call: every head of every layer rotates by the same angles.
fn rope_angles(pos: usize, inv_freq: &[f32], out: &mut [(f32, f32)]) {
    for (angle, &freq) in out.iter_mut().zip(inv_freq) {
        let (sin, cos) = (pos as f32 * freq).sin_cos();
        *angle = (cos, sin);
    }
}

/// NEOX rotation: pairs (i, i + rope_dims/2) of each head's leading `rope_dims` values.
fn rope_neox(head: &mut [f32], angles: &[(f32, f32)]) {
    let half = angles.len();
    for (i, &(cos, sin)) in angles.iter().enumerate() {
        let (a, b) = (head[i], head[i + half]);
        head[i] = a * cos - b * sin;
        head[i + half] = a * sin + b * cos;
    }
}

impl Model {
    /// Runs `batch` through the model, appending each token's keys and values to its slot,
    /// and returns the logits of the entries with `logits` set, in batch order
    /// (`count × vocab_size` floats). Entries of one slot must have consecutive positions,
    /// the first at most the slot's cached length (earlier positions are overwritten).
    pub fn forward<'s>(
        &self,
        cache: &mut KvCache,
        scratch: &'s mut Scratch,
        batch: &[BatchToken],
    ) -> Result<&'s [f32], ForwardError> {
        self.forward_for(cache, scratch, batch, LogitUse::Any)
    }

    /// [`Self::forward`] for logits that serve only `usage`.
    pub fn forward_for<'s>(
        &self,
        cache: &mut KvCache,
        scratch: &'s mut Scratch,
        batch: &[BatchToken],
        usage: LogitUse,
    ) -> Result<&'s [f32], ForwardError> {
        self.validate_batch(cache, batch)?;
        let c = &self.config;
        let n = batch.len();
        let (h, qd, kvd, f) = (c.hidden, c.q_dim(), c.kv_dim(), c.ffn);
        let s = scratch;
        resize(&mut s.hidden, n * h);
        resize(&mut s.normed, n * h.max(qd).max(f));
        resize(&mut s.q, n * qd);
        resize(&mut s.k, n * kvd);
        resize(&mut s.v, n * kvd);
        resize(&mut s.attn, n * qd);
        resize(&mut s.proj, n * h);
        resize(&mut s.gate, n * f);
        resize(&mut s.up, n * f);
        if n == 0 {
            s.logits.clear();
            return Ok(&s.logits);
        }
        let half_rot = self.rope_inv_freq.len();
        s.rope.resize(n * half_rot, (1.0, 0.0));
        for (i, entry) in batch.iter().enumerate() {
            self.token_embedding
                .row(entry.token as usize, &mut s.hidden[i * h..(i + 1) * h]);
            rope_angles(
                entry.pos,
                &self.rope_inv_freq,
                &mut s.rope[i * half_rot..(i + 1) * half_rot],
            );
        }

        for (layer_index, layer) in self.layers.iter().enumerate() {
            // Attention block.
            self.rms_norm_rows(&s.hidden, &layer.attn_norm, &mut s.normed[..n * h]);
            let acts = quantize(&mut s.acts, &s.normed[..n * h], h, &self.pool);
            self.project(&layer.attn_q, acts, &mut s.q)?;
            self.project(&layer.attn_k, acts, &mut s.k)?;
            self.project(&layer.attn_v, acts, &mut s.v)?;
            for (i, entry) in batch.iter().enumerate() {
                let angles = &s.rope[i * half_rot..(i + 1) * half_rot];
                for head in s.q[i * qd..(i + 1) * qd].chunks_exact_mut(c.head_dim) {
                    rope_neox(head, angles);
                }
                for head in s.k[i * kvd..(i + 1) * kvd].chunks_exact_mut(c.head_dim) {
                    rope_neox(head, angles);
                }
                for kv_head in 0..c.kv_heads {
                    let at = cache.head_base(entry.slot.0, layer_index, kv_head)
                        + entry.pos * c.head_dim;
                    let from = i * kvd + kv_head * c.head_dim;
                    cache.keys[at..at + c.head_dim]
                        .reinterpret_cast_mut::<f16>()
                        .convert_from_f32_slice(&s.k[from..from + c.head_dim]);
                    cache.values[at..at + c.head_dim]
                        .reinterpret_cast_mut::<f16>()
                        .convert_from_f32_slice(&s.v[from..from + c.head_dim]);
                }
            }
            self.attention(cache, layer_index, batch, &s.q, &mut s.attn, &mut s.workers);
            self.rms_norm_rows(&s.attn, &layer.attn_sub_norm, &mut s.normed[..n * qd]);
            let acts = quantize(&mut s.acts, &s.normed[..n * qd], qd, &self.pool);
            self.project(&layer.attn_output, acts, &mut s.proj)?;
            for (hv, p) in s.hidden.iter_mut().zip(&s.proj) {
                *hv += p;
            }

            // Feed-forward block.
            self.rms_norm_rows(&s.hidden, &layer.ffn_norm, &mut s.normed[..n * h]);
            let acts = quantize(&mut s.acts, &s.normed[..n * h], h, &self.pool);
            self.project(&layer.ffn_gate, acts, &mut s.gate)?;
            self.project(&layer.ffn_up, acts, &mut s.up)?;
            c.activation.apply_gated(&mut s.gate, &s.up);
            self.rms_norm_rows(&s.gate, &layer.ffn_sub_norm, &mut s.normed[..n * f]);
            let acts = quantize(&mut s.acts, &s.normed[..n * f], f, &self.pool);
            self.project(&layer.ffn_down, acts, &mut s.proj)?;
            for (hv, p) in s.hidden.iter_mut().zip(&s.proj) {
                *hv += p;
            }
        }

        for entry in batch {
            let slot_len = &mut cache.lengths[entry.slot.0];
            *slot_len = entry.pos + 1;
        }

        // Only the rows that need logits go through the final norm and the output layer.
        let wanted = batch.iter().filter(|e| e.logits).count();
        resize(&mut s.logit_rows, wanted * h);
        let mut row = 0;
        for (i, entry) in batch.iter().enumerate() {
            if entry.logits {
                rms_norm(
                    &s.hidden[i * h..(i + 1) * h],
                    &self.output_norm,
                    c.rms_eps,
                    &mut s.logit_rows[row * h..(row + 1) * h],
                );
                row += 1;
            }
        }
        resize(&mut s.logits, wanted * c.vocab_size);
        if wanted > 0 {
            let output = self.output_matrix();
            match usage {
                LogitUse::Any => {
                    output.try_matmul(&s.logit_rows, wanted, &mut s.logits, &self.pool)
                }
                LogitUse::Argmax => {
                    output.try_matmul_exact_argmax(&s.logit_rows, wanted, &mut s.logits, &self.pool)
                }
            }?;
        }
        Ok(&s.logits)
    }

    fn validate_batch(&self, cache: &KvCache, batch: &[BatchToken]) -> Result<(), ForwardError> {
        let c = &self.config;
        if cache.layers != c.layers || cache.kv_heads * cache.head_dim != c.kv_dim() {
            return Err(ForwardError::CacheMismatch {
                cache_layers: cache.layers,
                cache_kv_dim: cache.kv_heads * cache.head_dim,
                layers: c.layers,
                kv_dim: c.kv_dim(),
            });
        }
        for (index, entry) in batch.iter().enumerate() {
            let slot = entry.slot.0;
            if !cache.in_use.get(slot).copied().unwrap_or(false) {
                return Err(ForwardError::UnknownSlot { index, slot });
            }
            if entry.token as usize >= c.vocab_size {
                return Err(ForwardError::TokenOutOfRange {
                    index,
                    token: entry.token,
                    vocab: c.vocab_size,
                });
            }
            if entry.pos >= cache.max_positions {
                return Err(ForwardError::PositionOutOfRange {
                    index,
                    pos: entry.pos,
                    max: cache.max_positions,
                });
            }
            // Batches are small (tens to hundreds of entries); a backwards scan is cheap.
            let previous = batch[..index].iter().rev().find(|e| e.slot == entry.slot);
            let allowed = match previous {
                Some(prev) => entry.pos == prev.pos + 1,
                None => entry.pos <= cache.lengths[slot],
            };
            if !allowed {
                return Err(ForwardError::PositionGap {
                    index,
                    slot,
                    pos: entry.pos,
                    cached: cache.lengths[slot],
                });
            }
        }
        Ok(())
    }

    /// RMSNorm of every token row of `x` into `out`, the tokens shared out among the workers
    /// (with the second core idle otherwise, this per-token work showed in batched steps).
    fn rms_norm_rows(&self, x: &[f32], weight: &[f32], out: &mut [f32]) {
        let width = weight.len();
        let eps = self.config.rms_eps;
        self.pool.for_each_chunk_mut(out, width, |token, row| {
            rms_norm(&x[token * width..(token + 1) * width], weight, eps, row)
        });
    }

    fn project(
        &self,
        projection: &Projection,
        acts: &QuantizedActivations,
        out: &mut [f32],
    ) -> Result<(), ForwardError> {
        projection.matrix.try_matmul(acts, out, &self.pool)?;
        if projection.extra_scale != 1.0 {
            for v in out.iter_mut() {
                *v *= projection.extra_scale;
            }
        }
        Ok(())
    }

    /// Causal GQA attention of every batch token over its slot's positions `0..=pos`, split
    /// across the pool's workers by (token, KV head): the query heads that share a KV head are
    /// scored together, so each cached key and value is converted from f16 once, not once per
    /// query head. Per head the arithmetic is the same as scoring it alone.
    fn attention(
        &self,
        cache: &KvCache,
        layer: usize,
        batch: &[BatchToken],
        q: &[f32],
        attn: &mut [f32],
        workers: &mut Vec<Mutex<AttentionScratch>>,
    ) {
        let c = &self.config;
        let hd = c.head_dim;
        let group = c.heads / c.kv_heads;
        // One item's output: the `group` query heads of one KV head, contiguous in `attn`.
        let width = group * hd;
        let items = batch.len() * c.kv_heads;
        let threads = self.pool.threads().min(items).max(1);
        while workers.len() < self.pool.threads() {
            workers.push(Mutex::new(AttentionScratch::default()));
        }
        let inv_sqrt = 1.0 / (hd as f32).sqrt();
        let range_of = |worker: usize| (worker * items / threads, (worker + 1) * items / threads);
        let workers_ref: &[Mutex<AttentionScratch>] = workers;
        self.pool.run(|worker, _| {
            if worker >= threads {
                return;
            }
            let (start, end) = range_of(worker);
            let mut guard = workers_ref[worker]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let ws = &mut *guard;
            ws.out.resize((end - start) * width, 0.0);
            for item in start..end {
                let (i, kv_head) = (item / c.kv_heads, item % c.kv_heads);
                let entry = &batch[i];
                let len = entry.pos + 1;
                let base = cache.head_base(entry.slot.0, layer, kv_head);
                let keys = &cache.keys[base..base + len * hd];
                let values = &cache.values[base..base + len * hd];
                let queries = &q[i * c.q_dim() + kv_head * width..][..width];
                // scores[g * len + j]: query head g of the group against position j.
                ws.scores.resize(group * len, 0.0);
                ternary::attention_scores(queries, keys, hd, inv_sqrt, &mut ws.scores, len);
                for scores in ws.scores.chunks_exact_mut(len) {
                    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
                    // The vectorised exp: a libm call per score grew with the context (20 heads ×
                    // every cached position × 30 layers per token).
                    for s in scores.iter_mut() {
                        *s = crate::vector_math::exp(*s - max);
                    }
                    let total: f32 = scores.iter().sum();
                    for s in scores.iter_mut() {
                        *s /= total;
                    }
                }
                let out = &mut ws.out[(item - start) * width..][..width];
                out.fill(0.0);
                ternary::attention_values(&ws.scores, len, values, hd, out);
            }
        });
        // Items are token-major, KV-head-minor, so a worker's range is one contiguous run of `attn`.
        for (worker, slot) in workers_ref.iter().enumerate().take(threads) {
            let (start, end) = range_of(worker);
            let ws = slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            attn[start * width..end * width].copy_from_slice(&ws.out[..(end - start) * width]);
        }
    }
}

/// Quantises `x` into the reused buffer, the tokens shared out among the pool's workers.
fn quantize<'a>(
    slot: &'a mut Option<QuantizedActivations>,
    x: &[f32],
    cols: usize,
    pool: &ThreadPool,
) -> &'a QuantizedActivations {
    let acts = slot.get_or_insert_with(QuantizedActivations::default);
    acts.requantize_on(x, cols, pool);
    acts
}

/// One sequence with its own cache: the simple way to decode when batching is not needed.
pub struct Session<'m> {
    model: &'m Model,
    cache: KvCache,
    scratch: Scratch,
    slot: SlotId,
    batch: Vec<BatchToken>,
}

impl<'m> Session<'m> {
    /// A session that can hold `max_positions` tokens (at most the context length).
    pub fn new(model: &'m Model, max_positions: usize) -> Result<Self, ForwardError> {
        let mut cache = KvCache::new(model, 1, max_positions)?;
        let slot = cache
            .allocate()
            .expect("a fresh cache with one slot has a free slot");
        Ok(Session {
            model,
            cache,
            scratch: Scratch::new(),
            slot,
            batch: Vec::new(),
        })
    }

    /// Tokens consumed so far.
    pub fn position(&self) -> usize {
        self.cache.len(self.slot)
    }

    /// Forgets everything (or everything from `len` on, with [`Self::rewind`]).
    pub fn reset(&mut self) {
        self.cache.truncate(self.slot, 0);
    }

    pub fn rewind(&mut self, len: usize) {
        self.cache.truncate(self.slot, len);
    }

    /// Feeds `tokens` in one batch and returns the logits after the last one
    /// (empty when `tokens` is empty).
    pub fn feed(&mut self, tokens: &[u32]) -> Result<&[f32], ForwardError> {
        let start = self.position();
        self.batch.clear();
        self.batch
            .extend(tokens.iter().enumerate().map(|(i, &token)| BatchToken {
                slot: self.slot,
                token,
                pos: start + i,
                logits: i + 1 == tokens.len(),
            }));
        self.model
            .forward(&mut self.cache, &mut self.scratch, &self.batch)
    }
}
