//! `AwsError`, the one error type of this crate, and the mapping from SDK errors onto it.
//!
//! Callers branch on the variants (a missing bucket, a lost conditional write, throttling,
//! bad credentials); every message names the operation and the resource it touched, and
//! says what to do where there is something to do.

use std::error::Error as StdError;
use std::path::PathBuf;
use std::time::Duration;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// The hint printed with every credentials problem.
pub const CREDENTIALS_HINT: &str = "set AWS_PROFILE (and run `aws sso login` if it is an SSO \
     profile) or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for \
     temporary credentials)";

/// Everything that can go wrong when talking to AWS.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AwsError {
    #[error("{op}: S3 bucket `{bucket}` does not exist; create it or fix the bucket name")]
    NoSuchBucket { op: &'static str, bucket: String },

    #[error("{op}: object s3://{bucket}/{key} does not exist")]
    NoSuchKey {
        op: &'static str,
        bucket: String,
        key: String,
    },

    #[error("{op}: Route53 hosted zone `{zone}` does not exist; create it or fix the zone name")]
    NoSuchZone { op: &'static str, zone: String },

    #[error("{op}: Route53 health check `{id}` does not exist")]
    NoSuchHealthCheck { op: &'static str, id: String },

    #[error("{op}: AWS credentials are missing, invalid or expired ({detail}); {hint}", hint = CREDENTIALS_HINT)]
    Credentials { op: &'static str, detail: String },

    #[error("{op} on {resource}: AWS kept throttling the request after all retry attempts; wait and retry, or raise the attempt count (AWS_MAX_ATTEMPTS)")]
    Throttled { op: &'static str, resource: String },

    #[error("{op}: conditional write to s3://{bucket}/{key} lost: the object was created or changed by someone else")]
    PreconditionFailed {
        op: &'static str,
        bucket: String,
        key: String,
    },

    #[error("{op}: {what} did not finish within {waited:?}")]
    TimedOut {
        op: &'static str,
        what: String,
        waited: Duration,
    },

    #[error("{op}: invalid input: {message}")]
    InvalidInput { op: &'static str, message: String },

    #[error("{op}: cannot read local file {}: {source}", path.display())]
    LocalFile {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{op} on {resource}: {message}")]
    Other {
        op: &'static str,
        resource: String,
        message: String,
    },
}

impl AwsError {
    /// True for the "it is not there" variants (bucket, key, zone, health check).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            AwsError::NoSuchBucket { .. }
                | AwsError::NoSuchKey { .. }
                | AwsError::NoSuchZone { .. }
                | AwsError::NoSuchHealthCheck { .. }
        )
    }
}

/// What an operation was acting on, so that errors can name it.
#[derive(Debug, Clone)]
pub(crate) enum Target<'a> {
    Bucket(&'a str),
    Object { bucket: &'a str, key: &'a str },
    Zone(&'a str),
    HealthCheck(&'a str),
    Change(&'a str),
    Region(&'a str),
}

impl Target<'_> {
    fn describe(&self) -> String {
        match self {
            Target::Bucket(bucket) => format!("s3://{bucket}"),
            Target::Object { bucket, key } => format!("s3://{bucket}/{key}"),
            Target::Zone(zone) => format!("hosted zone {zone}"),
            Target::HealthCheck(id) => format!("health check {id}"),
            Target::Change(id) => format!("Route53 change {id}"),
            Target::Region(region) => format!("region {region}"),
        }
    }
}

const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "SlowDown",
    "PriorRequestNotComplete",
    "BandwidthLimitExceeded",
];

const CREDENTIAL_CODES: &[&str] = &[
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "InvalidAccessKeyId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "MissingAuthenticationToken",
];

/// Maps an SDK error of operation `op` on `target` to an [`AwsError`].
pub(crate) fn classify<E>(
    op: &'static str,
    target: Target<'_>,
    err: SdkError<E, HttpResponse>,
) -> AwsError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let status = err.raw_response().map(|raw| raw.status().as_u16());
    let code = err.code().map(str::to_owned);
    let service_message = err.message().map(str::to_owned);

    if let SdkError::ServiceError(_) | SdkError::ResponseError(_) = &err {
        if let Some(mapped) = classify_code(op, &target, code.as_deref(), status) {
            return mapped;
        }
    }
    if let Some(detail) = credentials_problem(&err) {
        return AwsError::Credentials { op, detail };
    }
    let message = match (&err, code, service_message) {
        (SdkError::ServiceError(_), Some(code), Some(message)) => format!("{code}: {message}"),
        (SdkError::ServiceError(_), Some(code), None) => match status {
            Some(status) => format!("{code} (HTTP {status})"),
            None => code,
        },
        (SdkError::DispatchFailure(_), _, _) => format!(
            "could not reach the AWS endpoint ({}); check the network, AWS_REGION and AWS_ENDPOINT_URL",
            DisplayErrorContext(&err)
        ),
        (SdkError::TimeoutError(_), _, _) => {
            format!("the request timed out ({})", DisplayErrorContext(&err))
        }
        _ => DisplayErrorContext(&err).to_string(),
    };
    AwsError::Other {
        op,
        resource: target.describe(),
        message,
    }
}

fn classify_code(
    op: &'static str,
    target: &Target<'_>,
    code: Option<&str>,
    status: Option<u16>,
) -> Option<AwsError> {
    let code = code.unwrap_or("");
    if THROTTLING_CODES.contains(&code) || status == Some(429) {
        return Some(AwsError::Throttled {
            op,
            resource: target.describe(),
        });
    }
    if CREDENTIAL_CODES.contains(&code) {
        return Some(AwsError::Credentials {
            op,
            detail: format!("AWS answered {code}"),
        });
    }
    let object = match target {
        Target::Object { bucket, key } => Some((*bucket, *key)),
        _ => None,
    };
    let bucket = match target {
        Target::Bucket(bucket) | Target::Object { bucket, .. } => Some(*bucket),
        _ => None,
    };
    match (code, object, bucket) {
        ("NoSuchBucket", _, Some(bucket)) => Some(AwsError::NoSuchBucket {
            op,
            bucket: bucket.to_owned(),
        }),
        ("NoSuchKey" | "NotFound", Some((bucket, key)), _) => Some(AwsError::NoSuchKey {
            op,
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        }),
        ("NotFound", None, Some(bucket)) => Some(AwsError::NoSuchBucket {
            op,
            bucket: bucket.to_owned(),
        }),
        ("PreconditionFailed" | "ConditionalRequestConflict", Some((bucket, key)), _) => {
            Some(AwsError::PreconditionFailed {
                op,
                bucket: bucket.to_owned(),
                key: key.to_owned(),
            })
        }
        (_, Some((bucket, key)), _) if status == Some(412) => Some(AwsError::PreconditionFailed {
            op,
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        }),
        ("NoSuchHostedZone", _, _) => Some(AwsError::NoSuchZone {
            op,
            zone: match target {
                Target::Zone(zone) => (*zone).to_owned(),
                other => other.describe(),
            },
        }),
        ("NoSuchHealthCheck", _, _) => Some(AwsError::NoSuchHealthCheck {
            op,
            id: match target {
                Target::HealthCheck(id) => (*id).to_owned(),
                other => other.describe(),
            },
        }),
        _ => None,
    }
}

/// Finds a credentials failure anywhere in the error's source chain.
fn credentials_problem(err: &(dyn StdError + 'static)) -> Option<String> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(error) = current {
        if let Some(credentials) = error.downcast_ref::<CredentialsError>() {
            return Some(DisplayErrorContext(credentials).to_string());
        }
        current = error.source();
    }
    None
}

/// Maps a failure to load credentials outside an SDK call (the preflight check).
pub(crate) fn credentials_error(op: &'static str, err: CredentialsError) -> AwsError {
    AwsError::Credentials {
        op,
        detail: DisplayErrorContext(&err).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_codes_become_throttled_naming_the_resource() {
        let mapped = classify_code(
            "PutObject",
            &Target::Bucket("models"),
            Some("SlowDown"),
            Some(503),
        )
        .unwrap();
        assert!(matches!(mapped, AwsError::Throttled { .. }));
        assert!(mapped.to_string().contains("PutObject on s3://models"));
    }

    #[test]
    fn a_404_on_an_object_is_no_such_key_and_on_a_bucket_no_such_bucket() {
        let object = Target::Object {
            bucket: "b",
            key: "k",
        };
        assert!(matches!(
            classify_code("HeadObject", &object, Some("NotFound"), Some(404)),
            Some(AwsError::NoSuchKey { .. })
        ));
        assert!(matches!(
            classify_code(
                "HeadBucket",
                &Target::Bucket("b"),
                Some("NotFound"),
                Some(404)
            ),
            Some(AwsError::NoSuchBucket { .. })
        ));
    }

    #[test]
    fn a_412_without_a_code_is_a_lost_conditional_write() {
        let object = Target::Object {
            bucket: "locks",
            key: "run.lock",
        };
        let mapped = classify_code("PutObject", &object, None, Some(412)).unwrap();
        assert!(matches!(mapped, AwsError::PreconditionFailed { .. }));
        assert!(mapped.to_string().contains("s3://locks/run.lock"));
    }

    #[test]
    fn expired_tokens_say_how_to_fix_credentials() {
        let mapped = classify_code(
            "ListHostedZones",
            &Target::Zone("example.com."),
            Some("ExpiredToken"),
            Some(403),
        )
        .unwrap();
        let text = mapped.to_string();
        assert!(text.contains("AWS_PROFILE"), "{text}");
        assert!(text.contains("AWS_ACCESS_KEY_ID"), "{text}");
    }

    #[test]
    fn unknown_codes_are_left_for_the_generic_message() {
        assert!(classify_code(
            "PutObject",
            &Target::Bucket("b"),
            Some("AccessDenied"),
            Some(403)
        )
        .is_none());
    }
}
