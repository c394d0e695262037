//! Picking the next token from logits (greedy, or temperature / top-k / top-p sampling with
//! llama.cpp's repetition penalty), log-probabilities for scoring, and stop-string
//! detection for streamed text.
//!
//! Sampling is deterministic for a given seed: the generator is a SplitMix64 owned by the
//! sampler, and ties between equal logits always break towards the lower token id.

use std::cmp::Ordering;

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// 0 picks the most likely token (greedy); higher values flatten the distribution.
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches this; 1 keeps all.
    pub top_p: f32,
    /// Divides positive logits and multiplies negative ones of recently seen tokens; 1 is off.
    pub repetition_penalty: f32,
    /// How many of the most recent tokens the repetition penalty looks at (llama.cpp uses 64).
    pub repetition_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerConfig {
    /// The 2B4T `generation_config.json`: temperature 0.6, top-p 0.9.
    fn default() -> Self {
        Self {
            temperature: 0.6,
            top_k: 0,
            top_p: 0.9,
            repetition_penalty: 1.0,
            repetition_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerConfig {
    /// Always the most likely token.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            ..Self::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SamplerError {
    #[error("{field} = {value} is out of range; expected {expected}")]
    InvalidConfig {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("the logits are empty; the model returned no vocabulary scores")]
    EmptyLogits,
    #[error(
        "none of the {count} logits is a finite number; the forward pass produced NaN or infinity"
    )]
    NoFiniteLogit { count: usize },
    #[error("token {id} is outside the {vocab_size} logits")]
    TokenOutOfRange { id: u32, vocab_size: usize },
    #[error("stop[{index}] is an empty string, which would stop before any text; remove it")]
    EmptyStopString { index: usize },
}

/// SplitMix64: tiny, fast, and statistically sound for drawing one number per token.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Chooses tokens; one sampler per generated sequence.
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SamplerConfig,
    rng: SplitMix64,
    candidates: Vec<(u32, f32)>,
}

/// Higher logit first, then lower id, so every ordering of candidates is total and
/// reproducible.
fn by_logit_desc(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// A logit as an integer that orders as [`f32::total_cmp`] does, with NaN counted as -inf
/// (the candidates' rule): integer lanes vectorise where a float comparison chain does not.
#[inline(always)]
fn total_order_key(logit: f32) -> i32 {
    let logit = if logit.is_nan() {
        f32::NEG_INFINITY
    } else {
        logit
    };
    let bits = logit.to_bits() as i32;
    bits ^ (((bits >> 31) as u32) >> 1) as i32
}

/// The greedy pick without building candidates: the same token the sorted candidates give
/// (highest logit by `total_cmp`, NaN as -inf, ties to the lower id), in two vectorised passes
/// over the logits. A decode step runs it once per sequence over the whole vocabulary.
fn greedy(logits: &[f32]) -> Result<u32, SamplerError> {
    let mut lanes = [i32::MIN; 16];
    let mut chunks = logits.chunks_exact(16);
    for chunk in &mut chunks {
        for (lane, &logit) in lanes.iter_mut().zip(chunk) {
            *lane = (*lane).max(total_order_key(logit));
        }
    }
    let best = chunks
        .remainder()
        .iter()
        .map(|&logit| total_order_key(logit))
        .chain(lanes)
        .max()
        .expect("logits are not empty");
    if best == total_order_key(f32::NEG_INFINITY) {
        return Err(SamplerError::NoFiniteLogit {
            count: logits.len(),
        });
    }
    let id = logits
        .iter()
        .position(|&logit| total_order_key(logit) == best)
        .expect("the maximum is one of the logits");
    Ok(id as u32)
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Result<Self, SamplerError> {
        let invalid = |field, value: f32, expected| SamplerError::InvalidConfig {
            field,
            value: value.to_string(),
            expected,
        };
        if !(config.temperature.is_finite() && config.temperature >= 0.0) {
            return Err(invalid(
                "temperature",
                config.temperature,
                "a finite number >= 0 (0 = greedy)",
            ));
        }
        if !(config.top_p > 0.0 && config.top_p <= 1.0) {
            return Err(invalid("top_p", config.top_p, "a number in (0, 1]"));
        }
        if !(config.repetition_penalty.is_finite() && config.repetition_penalty > 0.0) {
            return Err(invalid(
                "repetition_penalty",
                config.repetition_penalty,
                "a finite number > 0 (1 = off)",
            ));
        }
        Ok(Self {
            rng: SplitMix64(config.seed),
            config,
            candidates: Vec::new(),
        })
    }

    /// Whether [`Self::sample`] reads nothing but the first index of the largest logit (greedy,
    /// no repetition penalty), so it can take `bitnet::forward::LogitUse::Argmax` logits.
    pub fn picks_argmax(&self) -> bool {
        let penalised = self.config.repetition_penalty != 1.0 && self.config.repetition_last_n > 0;
        self.config.temperature == 0.0 && !penalised
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// Picks the next token from `logits` (one per vocabulary entry), given the tokens of
    /// the sequence so far (for the repetition penalty). NaN logits count as impossible.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<u32, SamplerError> {
        if logits.is_empty() {
            return Err(SamplerError::EmptyLogits);
        }
        if self.picks_argmax() {
            return greedy(logits);
        }
        self.candidates.clear();
        self.candidates
            .extend(logits.iter().enumerate().map(|(id, &logit)| {
                (
                    id as u32,
                    if logit.is_nan() {
                        f32::NEG_INFINITY
                    } else {
                        logit
                    },
                )
            }));
        self.apply_repetition_penalty(history);

        if self.config.temperature == 0.0 {
            let best = self
                .candidates
                .iter()
                .min_by(|a, b| by_logit_desc(a, b))
                .expect("logits are not empty");
            return if best.1 == f32::NEG_INFINITY {
                Err(SamplerError::NoFiniteLogit {
                    count: logits.len(),
                })
            } else {
                Ok(best.0)
            };
        }

        let temperature = self.config.temperature;
        for candidate in &mut self.candidates {
            candidate.1 /= temperature;
        }
        self.keep_most_likely();
        let max = self.candidates[0].1;
        if !max.is_finite() {
            return Err(SamplerError::NoFiniteLogit {
                count: logits.len(),
            });
        }
        let weights: Vec<f64> = self
            .candidates
            .iter()
            .map(|&(_, logit)| f64::from(logit - max).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut kept = weights.len();
        if self.config.top_p < 1.0 {
            let target = f64::from(self.config.top_p) * total;
            let mut cumulative = 0.0;
            for (index, weight) in weights.iter().enumerate() {
                cumulative += weight;
                if cumulative >= target {
                    kept = index + 1;
                    break;
                }
            }
        }
        let kept_mass: f64 = weights[..kept].iter().sum();
        let mut draw = self.rng.next_f64() * kept_mass;
        for (index, weight) in weights[..kept].iter().enumerate() {
            if draw < *weight {
                return Ok(self.candidates[index].0);
            }
            draw -= weight;
        }
        // Rounding can leave a sliver of `draw` past the last weight.
        Ok(self.candidates[kept - 1].0)
    }

    /// llama.cpp's rule: each distinct recent token's logit is divided by the penalty when
    /// positive and multiplied by it otherwise, so a penalty > 1 always makes it less likely.
    fn apply_repetition_penalty(&mut self, history: &[u32]) {
        let penalty = self.config.repetition_penalty;
        if penalty == 1.0 || self.config.repetition_last_n == 0 {
            return;
        }
        let window = &history[history.len().saturating_sub(self.config.repetition_last_n)..];
        let mut seen: Vec<u32> = window.to_vec();
        seen.sort_unstable();
        seen.dedup();
        for id in seen {
            if let Some(candidate) = self.candidates.get_mut(id as usize) {
                if candidate.1 <= 0.0 {
                    candidate.1 *= penalty;
                } else {
                    candidate.1 /= penalty;
                }
            }
        }
    }

    /// Sorts candidates most likely first and drops those top-k excludes. With top-p alone,
    /// a short list usually already holds the nucleus, which avoids sorting the whole
    /// vocabulary for every token.
    fn keep_most_likely(&mut self) {
        let top_k = self.config.top_k;
        if top_k > 0 && top_k < self.candidates.len() {
            self.candidates
                .select_nth_unstable_by(top_k - 1, by_logit_desc);
            self.candidates.truncate(top_k);
        } else if self.config.top_p < 1.0 {
            const SHORTLIST: usize = 256;
            if self.candidates.len() > SHORTLIST {
                let max = self
                    .candidates
                    .iter()
                    .map(|c| c.1)
                    .fold(f32::NEG_INFINITY, f32::max);
                let all_mass: f64 = self
                    .candidates
                    .iter()
                    .map(|&(_, logit)| f64::from(logit - max).exp())
                    .sum();
                self.candidates
                    .select_nth_unstable_by(SHORTLIST - 1, by_logit_desc);
                let short_mass: f64 = self.candidates[..SHORTLIST]
                    .iter()
                    .map(|&(_, logit)| f64::from(logit - max).exp())
                    .sum();
                if short_mass >= f64::from(self.config.top_p) * all_mass {
                    self.candidates.truncate(SHORTLIST);
                }
            }
        }
        self.candidates.sort_unstable_by(by_logit_desc);
    }
}

/// Log-probabilities of every token: `logits - logsumexp(logits)`, computed from the
/// maximum in f64 so large logits neither overflow nor lose the small ones.
pub fn log_softmax(logits: &[f32]) -> Result<Vec<f32>, SamplerError> {
    let log_total = log_sum_exp(logits)?;
    Ok(logits
        .iter()
        .map(|&logit| (f64::from(logit) - log_total) as f32)
        .collect())
}

/// The log-probability of one token under `logits`.
pub fn logprob(logits: &[f32], id: u32) -> Result<f32, SamplerError> {
    let logit = *logits
        .get(id as usize)
        .ok_or(SamplerError::TokenOutOfRange {
            id,
            vocab_size: logits.len(),
        })?;
    Ok((f64::from(logit) - log_sum_exp(logits)?) as f32)
}

/// The `n` most likely tokens with their log-probabilities, most likely first.
pub fn top_logprobs(logits: &[f32], n: usize) -> Result<Vec<(u32, f32)>, SamplerError> {
    let log_total = log_sum_exp(logits)?;
    let mut ranked: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, logit)| !logit.is_nan())
        .map(|(id, &logit)| (id as u32, logit))
        .collect();
    let n = n.min(ranked.len());
    if n == 0 {
        return Ok(Vec::new());
    }
    if n < ranked.len() {
        ranked.select_nth_unstable_by(n - 1, by_logit_desc);
        ranked.truncate(n);
    }
    ranked.sort_unstable_by(by_logit_desc);
    Ok(ranked
        .into_iter()
        .map(|(id, logit)| (id, (f64::from(logit) - log_total) as f32))
        .collect())
}

fn log_sum_exp(logits: &[f32]) -> Result<f64, SamplerError> {
    if logits.is_empty() {
        return Err(SamplerError::EmptyLogits);
    }
    let max = logits
        .iter()
        .copied()
        .filter(|l| l.is_finite())
        .fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return Err(SamplerError::NoFiniteLogit {
            count: logits.len(),
        });
    }
    let max = f64::from(max);
    let sum: f64 = logits
        .iter()
        .filter(|l| !l.is_nan())
        .map(|&l| (f64::from(l) - max).exp())
        .sum();
    Ok(max + sum.ln())
}

/// What [`StopStrings::push`] lets through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopScan {
    /// No stop string yet; `text` is safe to send (it cannot be the start of one).
    Continue { text: String },
    /// A stop string appeared: send `text` (everything before it) and end the generation.
    Stopped { text: String, stop_index: usize },
}

/// Finds stop strings in streamed text, even when one is split across tokens, holding back
/// only the tail that could still turn into one.
#[derive(Debug, Clone)]
pub struct StopStrings {
    stops: Vec<String>,
    held: String,
}

impl StopStrings {
    pub fn new(stops: Vec<String>) -> Result<Self, SamplerError> {
        if let Some(index) = stops.iter().position(String::is_empty) {
            return Err(SamplerError::EmptyStopString { index });
        }
        Ok(Self {
            stops,
            held: String::new(),
        })
    }

    /// Adds newly decoded text.
    pub fn push(&mut self, text: &str) -> StopScan {
        self.held.push_str(text);
        let earliest = self
            .stops
            .iter()
            .enumerate()
            .filter_map(|(index, stop)| self.held.find(stop.as_str()).map(|at| (at, index)))
            .min();
        if let Some((at, stop_index)) = earliest {
            let mut text = std::mem::take(&mut self.held);
            text.truncate(at);
            return StopScan::Stopped { text, stop_index };
        }
        let hold = self
            .stops
            .iter()
            .filter_map(|stop| {
                (1..stop.len())
                    .rev()
                    .filter(|&len| stop.is_char_boundary(len))
                    .find(|&len| self.held.ends_with(&stop[..len]))
            })
            .max()
            .unwrap_or(0);
        let release = self.held.len() - hold;
        let text: String = self.held.drain(..release).collect();
        StopScan::Continue { text }
    }

    /// Ends the stream without a stop string: returns the text still held back.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}
