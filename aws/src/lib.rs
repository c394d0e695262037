//! acme-aws: thin typed wrappers over the official AWS SDK for acme-rollout.
//!
//! - [`Aws`] holds the shared configuration (environment, endpoint override, retries) and
//!   hands out per-region clients.
//! - [`route53`]: latency records + health checks (`plan`/`apply`), health-check drain controls.
//! - [`s3`]: versioning, replication, resumable parallel model uploads, small objects and
//!   conditional writes for the run journal and lock.
//! - [`cloudwatch`]: metric queries for bake gates and rollout-event metrics.
//! - `testing` (feature `testing`): a moto server harness for test suites.
//!
//! This crate knows nothing about racks.toml: callers pass plain structs. Errors are one
//! typed [`AwsError`]; no anyhow here.

mod client;
pub mod cloudwatch;
mod error;
pub mod route53;
pub mod s3;
#[cfg(feature = "testing")]
pub mod testing;

pub use client::{Aws, AwsOptions};
pub use error::{AwsError, CREDENTIALS_HINT};
