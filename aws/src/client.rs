//! `Aws`: the shared SDK configuration and the per-region service clients made from it.
//!
//! Configuration comes from the environment the way the AWS CLI reads it (`AWS_PROFILE`,
//! `AWS_REGION`, `AWS_ENDPOINT_URL`, the credential chain). S3, CloudWatch and Route53
//! clients are built on demand per region and cached; Route53 is global.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::config::{Credentials, ProvideCredentials};

use crate::error::{credentials_error, AwsError};

/// The region Route53 (a global service) is signed for when none is configured.
const ROUTE53_DEFAULT_REGION: &str = "us-east-1";

/// How the shared configuration is built. `Default` means: everything from the environment.
#[derive(Debug, Clone)]
pub struct AwsOptions {
    /// Overrides `AWS_REGION` / the profile's region (the default region of this `Aws`).
    pub region: Option<String>,
    /// Overrides `AWS_ENDPOINT_URL` (for a local emulator); turns on S3 path-style addressing.
    pub endpoint_url: Option<String>,
    /// Static access key and secret instead of the credential chain (tests only, in practice).
    pub static_credentials: Option<(String, String)>,
    /// Attempts per request, including the first; throttling and transient errors are retried
    /// with exponential backoff until this is used up. `AWS_MAX_ATTEMPTS` overrides the default.
    pub max_attempts: u32,
    /// First backoff between retries (doubles on each retry, with jitter).
    pub initial_backoff: Duration,
    /// How often `GetChange` is polled while waiting for a Route53 change to be INSYNC.
    pub change_poll_interval: Duration,
    /// How long to wait for a Route53 change to be INSYNC before giving up.
    pub change_deadline: Duration,
}

impl Default for AwsOptions {
    fn default() -> Self {
        let max_attempts = std::env::var("AWS_MAX_ATTEMPTS")
            .ok()
            .and_then(|value| value.trim().parse::<u32>().ok())
            .filter(|attempts| *attempts > 0)
            .unwrap_or(5);
        AwsOptions {
            region: None,
            endpoint_url: None,
            static_credentials: None,
            max_attempts,
            initial_backoff: Duration::from_millis(500),
            change_poll_interval: Duration::from_secs(5),
            change_deadline: Duration::from_secs(600),
        }
    }
}

/// Entry point of this crate: a configured AWS session. Cheap to clone.
#[derive(Clone)]
pub struct Aws {
    shared: SdkConfig,
    path_style: bool,
    pub(crate) options: Arc<AwsOptions>,
    route53: aws_sdk_route53::Client,
    s3_clients: Arc<Mutex<HashMap<String, aws_sdk_s3::Client>>>,
    cloudwatch_clients: Arc<Mutex<HashMap<String, aws_sdk_cloudwatch::Client>>>,
}

impl std::fmt::Debug for Aws {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aws")
            .field("region", &self.default_region())
            .field("endpoint_url", &self.shared.endpoint_url())
            .field("path_style", &self.path_style)
            .finish_non_exhaustive()
    }
}

impl Aws {
    /// Everything from the environment: profile, region, endpoint override, credential chain.
    pub async fn from_env() -> Aws {
        Aws::load(AwsOptions::default()).await
    }

    /// A session against an explicit endpoint (a local emulator such as moto), in `region`.
    pub async fn with_endpoint(endpoint_url: &str, region: &str) -> Aws {
        Aws::load(AwsOptions {
            endpoint_url: Some(endpoint_url.to_owned()),
            region: Some(region.to_owned()),
            ..AwsOptions::default()
        })
        .await
    }

    /// Builds the shared configuration from `options` layered over the environment.
    pub async fn load(options: AwsOptions) -> Aws {
        let retry = RetryConfig::standard()
            .with_max_attempts(options.max_attempts.max(1))
            .with_initial_backoff(options.initial_backoff);
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(10))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(retry)
            .timeout_config(timeouts);
        if let Some(region) = &options.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &options.endpoint_url {
            loader = loader.endpoint_url(endpoint.clone());
        }
        if let Some((access_key, secret)) = &options.static_credentials {
            loader = loader.credentials_provider(Credentials::new(
                access_key.clone(),
                secret.clone(),
                None,
                None,
                "acme-aws-static",
            ));
        }
        let shared = loader.load().await;
        // An emulator at `localhost` would otherwise get virtual-host requests for
        // `bucket.localhost`, which do not resolve.
        let path_style =
            shared.endpoint_url().is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
        let route53_region = shared
            .region()
            .cloned()
            .unwrap_or_else(|| Region::new(ROUTE53_DEFAULT_REGION));
        let route53 = aws_sdk_route53::Client::from_conf(
            aws_sdk_route53::config::Builder::from(&shared)
                .region(route53_region)
                .build(),
        );
        Aws {
            shared,
            path_style,
            options: Arc::new(options),
            route53,
            s3_clients: Arc::default(),
            cloudwatch_clients: Arc::default(),
        }
    }

    /// The configured default region, if any (`AWS_REGION`, the profile, or the options).
    pub fn default_region(&self) -> Option<&str> {
        self.shared.region().map(Region::as_ref)
    }

    /// The endpoint override in effect, if any.
    pub fn endpoint_url(&self) -> Option<&str> {
        self.shared.endpoint_url()
    }

    /// The shared SDK configuration, for a service this crate does not wrap.
    pub fn sdk_config(&self) -> &SdkConfig {
        &self.shared
    }

    /// Resolves credentials now, so a missing or expired login fails before any change starts.
    pub async fn verify_credentials(&self) -> Result<(), AwsError> {
        const OP: &str = "resolve AWS credentials";
        let provider = self
            .shared
            .credentials_provider()
            .ok_or_else(|| AwsError::Credentials {
                op: OP,
                detail: "no credentials provider is configured".to_owned(),
            })?;
        let credentials = provider
            .provide_credentials()
            .await
            .map_err(|err| credentials_error(OP, err))?;
        if let Some(expiry) = credentials.expiry() {
            if expiry <= std::time::SystemTime::now() {
                return Err(AwsError::Credentials {
                    op: OP,
                    detail: "the credentials have expired".to_owned(),
                });
            }
        }
        Ok(())
    }

    /// The Route53 client (global service).
    pub fn route53_client(&self) -> &aws_sdk_route53::Client {
        &self.route53
    }

    /// The S3 client for `region` (made once, then shared).
    pub fn s3(&self, region: &str) -> aws_sdk_s3::Client {
        let mut clients = self
            .s3_clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        clients
            .entry(region.to_owned())
            .or_insert_with(|| {
                let config = aws_sdk_s3::config::Builder::from(&self.shared)
                    .region(Region::new(region.to_owned()))
                    .force_path_style(self.path_style)
                    .build();
                aws_sdk_s3::Client::from_conf(config)
            })
            .clone()
    }

    /// The CloudWatch client for `region` (made once, then shared).
    pub fn cloudwatch(&self, region: &str) -> aws_sdk_cloudwatch::Client {
        let mut clients = self
            .cloudwatch_clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        clients
            .entry(region.to_owned())
            .or_insert_with(|| {
                let config = aws_sdk_cloudwatch::config::Builder::from(&self.shared)
                    .region(Region::new(region.to_owned()))
                    .build();
                aws_sdk_cloudwatch::Client::from_conf(config)
            })
            .clone()
    }
}
