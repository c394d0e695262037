//! `acme-infer`: an OpenAI-compatible HTTP server for BitNet b1.58 models. Requests are
//! validated and tokenized on the async executor; a scheduler thread batches the decode steps
//! of all running sequences (continuous batching) on the `bitnet` runtime.
//!
//! Tests and embedders build the router with [`app`] over an [`AppState`], then load a model
//! with [`AppState::load_model`] (from a blocking thread). `MODEL_PATH=s3://…` models are
//! fetched, verified and cached by [`s3_fetch::fetch_model`] first.
#![deny(unsafe_code)]

pub mod api;
pub mod config;
pub mod error;
pub mod metrics;
pub mod model_source;
pub mod s3_fetch;
pub mod scheduler;
pub mod state;

pub use api::{app, classification_prompt};
pub use config::{Config, ConfigError};
pub use error::{ApiError, ApiJson};
pub use model_source::{ModelSource, S3Object};
pub use state::{AppState, DownloadProgress, ModelIdentity, ServerSettings};
