//! The shared state behind every handler: readiness (the loaded model, its identity and the
//! scheduler), the draining flag set on SIGTERM, limits and metrics. Cloning is one `Arc`.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bitnet::tokenizer::Tokenizer;
use bitnet::{LoadOptions, Model, Session};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::scheduler::{self, SchedulerHandle};

/// Limits and sizes the server runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    /// The most tokens one request may generate (`MODEL_MAX_TOKENS`).
    pub max_tokens: usize,
    pub threads: usize,
    pub max_sequences: usize,
    pub queue_capacity: usize,
    /// Write one stdout line per request (the bench turns it off to keep its table readable).
    pub log_requests: bool,
    /// Repack the output layer to int8 at load (`INFERENCE_INT8_OUTPUT`).
    pub int8_output: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            max_tokens: crate::config::DEFAULT_MAX_TOKENS,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_sequences: crate::config::DEFAULT_MAX_SEQUENCES,
            queue_capacity: crate::config::DEFAULT_QUEUE_CAPACITY,
            log_requests: true,
            int8_output: false,
        }
    }
}

impl From<&Config> for ServerSettings {
    fn from(config: &Config) -> Self {
        ServerSettings {
            max_tokens: config.max_tokens,
            threads: config.threads,
            max_sequences: config.max_sequences,
            queue_capacity: config.queue_capacity,
            log_requests: true,
            int8_output: config.int8_output,
        }
    }
}

/// What `/health` and `/v1/models` say about the model.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelIdentity {
    pub model: String,
    pub architecture: String,
    pub weight_format: String,
    /// `int8` when the output layer was repacked at load, else `as stored`.
    pub output_layer: String,
    pub activation: String,
    pub sha256: String,
    pub context_length: usize,
    pub version: &'static str,
}

/// A loaded, warmed-up model ready to serve.
pub struct Ready {
    pub model: Arc<Model>,
    pub tokenizer: Arc<Tokenizer>,
    pub scheduler: SchedulerHandle,
    pub identity: ModelIdentity,
}

/// How far a model download has got, for `/health` while loading.
#[derive(Debug, Default)]
pub struct DownloadProgress {
    active: AtomicBool,
    done: AtomicU64,
    total: AtomicU64,
}

impl DownloadProgress {
    /// A download of `total` bytes begins.
    pub fn start(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
        self.active.store(true, Ordering::Release);
    }

    pub fn advance(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn finish(&self) {
        self.active.store(false, Ordering::Release);
    }

    /// `(bytes done, bytes total)` while a download runs.
    pub fn snapshot(&self) -> Option<(u64, u64)> {
        self.active.load(Ordering::Acquire).then(|| {
            (
                self.done.load(Ordering::Relaxed),
                self.total.load(Ordering::Relaxed),
            )
        })
    }
}

struct Inner {
    settings: ServerSettings,
    ready: OnceLock<Ready>,
    download: DownloadProgress,
    draining: AtomicBool,
    metrics: Arc<Metrics>,
}

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

impl AppState {
    /// A state with no model yet: `/health` answers 503 loading until [`Self::load_model`].
    pub fn new(settings: ServerSettings) -> Self {
        AppState {
            inner: Arc::new(Inner {
                settings,
                ready: OnceLock::new(),
                download: DownloadProgress::default(),
                draining: AtomicBool::new(false),
                metrics: Arc::new(Metrics::default()),
            }),
        }
    }

    /// Hashes, loads and warms up the model at `path` and starts the scheduler. Blocking and
    /// slow: call it off the async executor. Errors are complete sentences for the log.
    pub fn load_model(&self, path: &Path) -> Result<(), String> {
        self.load_model_expecting(path, None)
    }

    /// [`Self::load_model`], refusing the file (before it is served) unless its SHA-256 is
    /// `expected_sha256` (lower-case hex): the release's pin, or the checksum a download was
    /// verified against, so a file swapped since is caught.
    pub fn load_model_expecting(
        &self,
        path: &Path,
        expected_sha256: Option<&str>,
    ) -> Result<(), String> {
        let started = Instant::now();
        let settings = &self.inner.settings;
        let options = LoadOptions {
            threads: settings.threads,
            int8_output: settings.int8_output,
        };
        // Hashing reads the whole file once; it overlaps with parsing and repacking.
        let (sha256, model) = std::thread::scope(|scope| {
            let hashing = scope.spawn(|| sha256_file(path));
            let model = Model::load(path, options);
            (hashing.join(), model)
        });
        let sha256 = sha256
            .map_err(|_| "hashing the model file panicked".to_string())?
            .map_err(|e| format!("cannot read MODEL_PATH {}: {e}", path.display()))?;
        if let Some(expected) = expected_sha256 {
            if sha256 != expected {
                return Err(format!(
                    "the model file {} has sha256 {sha256} but {expected} is expected (MODEL_SHA256 or the S3 object's recorded sha256); serve the pinned model or fix the pin",
                    path.display()
                ));
            }
        }
        let model = model.map_err(|e| {
            format!(
                "cannot load the model at MODEL_PATH {}: {e}",
                path.display()
            )
        })?;
        let tokenizer = model.tokenizer().map_err(|e| {
            format!(
                "the model at MODEL_PATH {} has no usable tokenizer: {e}",
                path.display()
            )
        })?;
        warm_up(&model, &tokenizer)?;
        let identity = ModelIdentity {
            model: model.name().to_string(),
            architecture: model.architecture().to_string(),
            weight_format: model.weight_format().to_string(),
            output_layer: if model.output_is_int8() {
                "int8".into()
            } else {
                "as stored".into()
            },
            activation: model.activation().to_string(),
            sha256,
            context_length: model.context_length(),
            version: env!("CARGO_PKG_VERSION"),
        };
        let model = Arc::new(model);
        let tokenizer = Arc::new(tokenizer);
        let scheduler = scheduler::start(
            Arc::clone(&model),
            Arc::clone(&tokenizer),
            Arc::clone(&self.inner.metrics),
            settings.max_sequences,
            settings.queue_capacity,
        )?;
        self.inner.metrics.set_model_load_time(started.elapsed());
        self.inner
            .ready
            .set(Ready {
                model,
                tokenizer,
                scheduler,
                identity,
            })
            .map_err(|_| "a model is already loaded; load_model may be called once".to_string())
    }

    /// The model download's progress, updated by the S3 fetcher.
    pub fn download(&self) -> &DownloadProgress {
        &self.inner.download
    }

    pub fn ready(&self) -> Option<&Ready> {
        self.inner.ready.get()
    }

    /// Turns `/health` to 503 draining and refuses new work (SIGTERM).
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    pub fn settings(&self) -> &ServerSettings {
        &self.inner.settings
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }
}

/// Runs one token through the model so the first request does not pay for page faults and
/// lazily built kernel tables; readiness waits for it.
fn warm_up(model: &Model, tokenizer: &Tokenizer) -> Result<(), String> {
    let token = tokenizer.bos().unwrap_or(0);
    let mut session =
        Session::new(model, 1).map_err(|e| format!("warm-up failed to start: {e}"))?;
    let logits = session
        .feed(&[token])
        .map_err(|e| format!("the warm-up token failed: {e}"))?;
    if logits.iter().any(|l| !l.is_finite()) {
        return Err(
            "the warm-up token produced non-finite logits; the model file is corrupt".into(),
        );
    }
    Ok(())
}

/// Lower-case hex SHA-256 of the file at `path`.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lower-case hex of a digest.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
