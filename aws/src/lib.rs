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
//!
//! ```no_run
//! use acme_aws::route53::{DesiredLatencyRecord, HealthCheckSpec};
//! use acme_aws::s3::{BucketRef, UploadOptions};
//! use acme_aws::{Aws, AwsError};
//!
//! # async fn example() -> Result<(), AwsError> {
//! let aws = Aws::from_env().await;
//! aws.verify_credentials().await?;
//!
//! let records = vec![DesiredLatencyRecord {
//!     name: "api.example.com".into(),
//!     set_identifier: "api-euw1".into(),
//!     region: "eu-west-1".into(),
//!     target: "eu.lb.example.net".into(),
//!     ttl: 60,
//!     health_check: HealthCheckSpec {
//!         fqdn: "eu.lb.example.net".into(),
//!         port: 443,
//!         path: "/health".into(),
//!         https: true,
//!         failure_threshold: 3,
//!         request_interval: 10,
//!     },
//! }];
//! let plan = aws.plan("example.com", &records).await?;
//! for change in &plan.changes {
//!     println!("{change}");
//! }
//! aws.apply(&plan).await?;
//!
//! let bucket = BucketRef::new("eu-west-1", "acme-models-eu");
//! let path = std::path::Path::new("model.gguf");
//! let uploaded = aws
//!     .upload_model(&bucket, "models/bitnet.gguf", path, &UploadOptions::default(), &|done, total| {
//!         eprintln!("{done}/{total}");
//!     })
//!     .await?;
//! println!("sha256 {}", uploaded.sha256);
//! # Ok(())
//! # }
//! ```

mod client;
pub mod cloudwatch;
mod error;
pub mod route53;
pub mod s3;
#[cfg(feature = "testing")]
pub mod testing;

pub use client::{Aws, AwsOptions};
pub use error::{AwsError, CREDENTIALS_HINT};
