//! Continuous batching on a dedicated OS thread. Requests wait in a bounded queue; whenever a
//! KV-cache slot is free the next one is prefilled and joins the running batch, every step
//! decodes one token of every active sequence in a single forward call, and finished or
//! abandoned sequences leave at once. The async executor never runs a forward pass.

use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use bitnet::sampler::{logprob, Sampler, StopScan, StopStrings};
use bitnet::tokenizer::{StreamDecoder, Tokenizer};
use bitnet::{BatchToken, KvCache, LogitUse, Model, Scratch, SlotId};
use tokio::sync::{mpsc as async_mpsc, oneshot};

use crate::metrics::Metrics;

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What a generating request receives, in order: text pieces, then `Done` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Text(String),
    Done {
        finish_reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Failed(String),
}

/// A validated generation request.
pub struct Generation {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampler: Sampler,
    pub stop_strings: StopStrings,
    /// Tokens that end the generation without being emitted.
    pub stop_ids: Vec<u32>,
    pub events: async_mpsc::UnboundedSender<Event>,
    pub received: Instant,
}

/// A validated classification: the log-likelihood of each label's tokens after `prompt`.
pub struct Classification {
    pub prompt: Vec<u32>,
    pub labels: Vec<Vec<u32>>,
    pub reply: oneshot::Sender<Result<Vec<f64>, String>>,
}

pub enum Job {
    Generate(Generation),
    Classify(Classification),
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    QueueFull,
    Stopped,
}

/// The cheap-to-clone entrance to the scheduler thread.
#[derive(Clone)]
pub struct SchedulerHandle {
    jobs: SyncSender<Job>,
    metrics: Arc<Metrics>,
    max_positions: usize,
}

impl SchedulerHandle {
    /// Queues `job`, or refuses at once when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        self.metrics.queue_entered();
        self.jobs.try_send(job).map_err(|error| {
            self.metrics.queue_left();
            match error {
                TrySendError::Full(_) => SubmitError::QueueFull,
                TrySendError::Disconnected(_) => SubmitError::Stopped,
            }
        })
    }

    /// Positions one sequence may hold (prompt plus generated tokens).
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }
}

/// Starts the scheduler thread with `max_sequences` KV-cache slots of the model's full
/// context and a queue of `queue_capacity` waiting requests.
pub fn start(
    model: Arc<Model>,
    tokenizer: Arc<Tokenizer>,
    metrics: Arc<Metrics>,
    max_sequences: usize,
    queue_capacity: usize,
) -> Result<SchedulerHandle, String> {
    let max_positions = model.context_length();
    let cache = KvCache::new(&model, max_sequences, max_positions)
        .map_err(|e| format!("cannot allocate the KV cache for {max_sequences} sequences: {e}"))?;
    let (jobs, queue) = mpsc::sync_channel(queue_capacity);
    let handle = SchedulerHandle {
        jobs,
        metrics: Arc::clone(&metrics),
        max_positions,
    };
    std::thread::Builder::new()
        .name("acme-infer-scheduler".into())
        .spawn(move || {
            let mut scheduler = Scheduler {
                model: &model,
                tokenizer: &tokenizer,
                metrics: &metrics,
                cache,
                scratch: Scratch::new(),
                batch: Vec::new(),
            };
            scheduler.run(queue);
        })
        .map_err(|e| format!("cannot start the scheduler thread: {e}"))?;
    Ok(handle)
}

struct Scheduler<'m> {
    model: &'m Model,
    tokenizer: &'m Tokenizer,
    metrics: &'m Metrics,
    cache: KvCache,
    scratch: Scratch,
    batch: Vec<BatchToken>,
}

/// One generating sequence.
struct Sequence<'t> {
    job: Generation,
    slot: SlotId,
    /// Prompt and generated tokens (the repetition penalty looks at them).
    history: Vec<u32>,
    /// The token to feed next and its position.
    next: u32,
    pos: usize,
    generated: usize,
    decoder: StreamDecoder<'t>,
}

enum Step {
    Continue,
    Finished,
}

impl<'m> Scheduler<'m> {
    fn run(&mut self, queue: Receiver<Job>) {
        let mut active: Vec<Sequence<'m>> = Vec::new();
        loop {
            while self.cache.free_slots() > 0 {
                let job = if active.is_empty() {
                    match queue.recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    }
                } else {
                    match queue.try_recv() {
                        Ok(job) => job,
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    }
                };
                self.metrics.queue_left();
                match job {
                    Job::Generate(generation) => active.extend(self.admit(generation)),
                    Job::Classify(classification) => self.classify(classification),
                }
                self.metrics.set_active_sequences(active.len());
            }
            // A client that went away frees its slot before the next step costs anything.
            active.retain(|sequence| {
                let open = !sequence.job.events.is_closed();
                if !open {
                    self.cache.free(sequence.slot);
                }
                open
            });
            if !active.is_empty() {
                self.decode_step(&mut active);
            }
            self.metrics.set_active_sequences(active.len());
        }
    }

    /// Prefills a new sequence and samples its first token; `None` when it already ended.
    fn admit(&mut self, job: Generation) -> Option<Sequence<'m>> {
        if job.events.is_closed() {
            return None;
        }
        let slot = self.cache.allocate()?;
        self.batch.clear();
        let count = job.prompt.len();
        self.batch.extend(
            job.prompt
                .iter()
                .enumerate()
                .map(|(pos, &token)| BatchToken {
                    slot,
                    token,
                    pos,
                    logits: pos + 1 == count,
                }),
        );
        let started = Instant::now();
        let logits = match self
            .model
            .forward(&mut self.cache, &mut self.scratch, &self.batch)
        {
            Ok(logits) => logits,
            Err(error) => {
                self.cache.free(slot);
                let _ = job
                    .events
                    .send(Event::Failed(format!("prefill failed: {error}")));
                return None;
            }
        };
        self.metrics.record_prefill(count, started.elapsed());
        let mut sequence = Sequence {
            history: job.prompt.clone(),
            job,
            slot,
            next: 0,
            pos: count,
            generated: 0,
            decoder: StreamDecoder::new(self.tokenizer),
        };
        match sequence.advance(logits, self.metrics, self.cache.max_positions()) {
            Step::Continue => Some(sequence),
            Step::Finished => {
                self.cache.free(slot);
                None
            }
        }
    }

    /// One forward call that decodes a token for every active sequence.
    fn decode_step(&mut self, active: &mut Vec<Sequence<'m>>) {
        self.batch.clear();
        self.batch.extend(active.iter().map(|s| BatchToken {
            slot: s.slot,
            token: s.next,
            pos: s.pos,
            logits: true,
        }));
        // When every sequence picks greedily, its token is all it needs from the logits.
        let usage = if active.iter().all(|s| s.job.sampler.picks_argmax()) {
            LogitUse::Argmax
        } else {
            LogitUse::Any
        };
        let started = Instant::now();
        let vocab = self.model.vocab_size();
        let logits =
            match self
                .model
                .forward_for(&mut self.cache, &mut self.scratch, &self.batch, usage)
            {
                Ok(logits) => logits,
                Err(error) => {
                    for sequence in active.drain(..) {
                        self.cache.free(sequence.slot);
                        let _ = sequence
                            .job
                            .events
                            .send(Event::Failed(format!("decode step failed: {error}")));
                    }
                    return;
                }
            };
        self.metrics.record_decode(active.len(), started.elapsed());
        let max_positions = self.cache.max_positions();
        let mut index = 0;
        active.retain_mut(|sequence| {
            let row = &logits[index * vocab..(index + 1) * vocab];
            index += 1;
            sequence.pos += 1;
            match sequence.advance(row, self.metrics, max_positions) {
                Step::Continue => true,
                Step::Finished => {
                    self.cache.free(sequence.slot);
                    false
                }
            }
        });
    }

    /// Scores each label's tokens as the continuation of the prompt, reusing the prompt's
    /// cached keys and values for every label.
    fn classify(&mut self, job: Classification) {
        if job.reply.is_closed() {
            return;
        }
        let result = self.score_labels(&job.prompt, &job.labels);
        let _ = job
            .reply
            .send(result.map_err(|e| format!("scoring failed: {e}")));
    }

    fn score_labels(&mut self, prompt: &[u32], labels: &[Vec<u32>]) -> Result<Vec<f64>, String> {
        let slot = self
            .cache
            .allocate()
            .ok_or("no free sequence slot for classification")?;
        let result = self.score_in_slot(slot, prompt, labels);
        self.cache.free(slot);
        result
    }

    fn score_in_slot(
        &mut self,
        slot: SlotId,
        prompt: &[u32],
        labels: &[Vec<u32>],
    ) -> Result<Vec<f64>, String> {
        let vocab = self.model.vocab_size();
        let started = Instant::now();
        self.batch.clear();
        self.batch
            .extend(prompt.iter().enumerate().map(|(pos, &token)| BatchToken {
                slot,
                token,
                pos,
                logits: pos + 1 == prompt.len(),
            }));
        let after_prompt = self
            .model
            .forward(&mut self.cache, &mut self.scratch, &self.batch)
            .map_err(|e| e.to_string())?
            .to_vec();
        self.metrics.record_prefill(prompt.len(), started.elapsed());
        let mut scores = Vec::with_capacity(labels.len());
        for label in labels {
            let (&first, rest) = label.split_first().ok_or("a label has no tokens")?;
            let mut total = f64::from(logprob(&after_prompt, first).map_err(|e| e.to_string())?);
            if !rest.is_empty() {
                self.cache.truncate(slot, prompt.len());
                self.batch.clear();
                // Feeding every label token but the last yields the distributions that
                // predict tokens 2..n of the label.
                self.batch
                    .extend(
                        label[..label.len() - 1]
                            .iter()
                            .enumerate()
                            .map(|(i, &token)| BatchToken {
                                slot,
                                token,
                                pos: prompt.len() + i,
                                logits: true,
                            }),
                    );
                let logits = self
                    .model
                    .forward(&mut self.cache, &mut self.scratch, &self.batch)
                    .map_err(|e| e.to_string())?;
                for (row, &token) in logits.chunks_exact(vocab).zip(rest) {
                    total += f64::from(logprob(row, token).map_err(|e| e.to_string())?);
                }
            }
            scores.push(total);
        }
        Ok(scores)
    }
}

impl<'t> Sequence<'t> {
    /// Samples the next token from `logits` and sends its text; says whether to go on.
    fn advance(&mut self, logits: &[f32], metrics: &Metrics, max_positions: usize) -> Step {
        let token = match self.job.sampler.sample(logits, &self.history) {
            Ok(token) => token,
            Err(error) => {
                let _ = self
                    .job
                    .events
                    .send(Event::Failed(format!("sampling failed: {error}")));
                return Step::Finished;
            }
        };
        if self.generated == 0 {
            metrics.record_time_to_first_token(self.job.received.elapsed());
        }
        if self.job.stop_ids.contains(&token) {
            return self.finish(FinishReason::Stop, true);
        }
        self.history.push(token);
        self.generated += 1;
        metrics.add_generated_tokens(1);
        if let Some(text) = self.decoder.push(token) {
            match self.job.stop_strings.push(&text) {
                StopScan::Continue { text } => self.send_text(text),
                StopScan::Stopped { text, .. } => {
                    self.send_text(text);
                    return self.finish(FinishReason::Stop, false);
                }
            }
        }
        if self.generated >= self.job.max_tokens || self.pos + 1 > max_positions {
            return self.finish(FinishReason::Length, true);
        }
        self.next = token;
        Step::Continue
    }

    fn send_text(&self, text: String) {
        if !text.is_empty() {
            let _ = self.job.events.send(Event::Text(text));
        }
    }

    /// Ends the sequence; `flush` releases text held back for a partial character or a
    /// possible stop string (not after a stop string matched).
    fn finish(&mut self, finish_reason: FinishReason, flush: bool) -> Step {
        if flush {
            if let Some(tail) = self.decoder.finish() {
                match self.job.stop_strings.push(&tail) {
                    StopScan::Continue { text } | StopScan::Stopped { text, .. } => {
                        self.send_text(text)
                    }
                }
            }
            let held = self.job.stop_strings.finish();
            self.send_text(held);
        }
        let _ = self.job.events.send(Event::Done {
            finish_reason,
            prompt_tokens: self.job.prompt.len(),
            completion_tokens: self.generated,
        });
        Step::Finished
    }
}
