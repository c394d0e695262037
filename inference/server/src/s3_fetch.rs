//! Fetches `MODEL_PATH=s3://bucket/key` into a local cache with the official AWS SDK
//! (configured from the environment, like every AWS tool), verifying the bytes against the
//! SHA-256 that `acme-rollout models push` records in the object's `sha256` metadata and
//! against the release's `MODEL_SHA256` pin.
//!
//! Cache files are named `<sha256>.gguf`, so a restart finds its file by name and only
//! re-hashes it; with a pin that needs no S3 call at all, so a restart does not depend on S3.
//! Downloads stream into `<sha256>.gguf.partial-<pid>` and are renamed only once verified, so
//! a crash never leaves a file that looks complete.

use std::path::{Path, PathBuf};

use aws_sdk_s3::config::ProvideCredentials;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::api::log_line;
use crate::model_source::{parse_sha256, S3Object};
use crate::state::{hex, sha256_file, DownloadProgress};

/// Where the cache lives when `MODEL_CACHE_DIR` is unset (falls back to `$TMPDIR/acme-infer`).
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/acme-infer";
/// The object metadata key holding the hex SHA-256 of the whole file (`x-amz-meta-sha256`).
pub const SHA256_METADATA_KEY: &str = "sha256";
/// Buffer between the network and the disk: large enough that file writes are few.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// A writable directory of verified model files.
#[derive(Debug, Clone)]
pub struct ModelCache {
    dir: PathBuf,
}

/// Creates `dir` if needed and proves it writable with a probe file.
fn ensure_writable(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".write-probe-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}

impl ModelCache {
    /// The cache at `MODEL_CACHE_DIR` (`configured`), or the first writable default.
    pub fn open(configured: Option<&Path>) -> Result<ModelCache, String> {
        if let Some(dir) = configured {
            return ensure_writable(dir)
                .map(|()| ModelCache {
                    dir: dir.to_path_buf(),
                })
                .map_err(|error| {
                    format!(
                        "MODEL_CACHE_DIR: cannot write to {} ({error}); point it at a writable directory (a volume), or unset it for {DEFAULT_CACHE_DIR}",
                        dir.display()
                    )
                });
        }
        let preferred = PathBuf::from(DEFAULT_CACHE_DIR);
        if ensure_writable(&preferred).is_ok() {
            return Ok(ModelCache { dir: preferred });
        }
        let fallback = std::env::temp_dir().join("acme-infer");
        ensure_writable(&fallback)
            .map(|()| ModelCache {
                dir: fallback.clone(),
            })
            .map_err(|error| {
                format!(
                    "MODEL_CACHE_DIR: is unset and neither {DEFAULT_CACHE_DIR} nor {} is writable ({error}); set MODEL_CACHE_DIR to a writable directory",
                    fallback.display()
                )
            })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cache file for a model with this SHA-256.
    pub fn path_for(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.gguf"))
    }

    /// The cached file for `sha256` if it is there, has `size` bytes (when known) and still
    /// hashes to `sha256`. A file that fails either check is removed so it is fetched again.
    /// Blocking: it reads the whole file.
    pub fn lookup(&self, sha256: &str, size: Option<u64>) -> Option<PathBuf> {
        let path = self.path_for(sha256);
        let length = std::fs::metadata(&path).ok().filter(|m| m.is_file())?.len();
        let problem = if size.is_some_and(|size| size != length) {
            format!("it has {length} bytes, not {}", size.unwrap_or_default())
        } else {
            match sha256_file(&path) {
                Ok(actual) if actual == sha256 => return Some(path),
                Ok(actual) => format!("its sha256 is now {actual}"),
                Err(error) => format!("it cannot be read ({error})"),
            }
        };
        log_line(&format!(
            "discarding cached model {} ({problem}); fetching it again",
            path.display()
        ));
        let _ = std::fs::remove_file(&path);
        None
    }
}

/// A verified model file in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedModel {
    pub path: PathBuf,
    pub sha256: String,
    /// False when the cache already held it.
    pub downloaded: bool,
}

/// One line of an SDK error and its causes (the SDK's own top-level text is often only
/// "service error"; the reason is in the sources).
fn sdk_detail(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line.replace(['\n', '\r'], " ")
}

/// Looks `sha256` up in the cache off the executor.
async fn cached(cache: &ModelCache, sha256: &str, size: Option<u64>) -> Option<PathBuf> {
    let (cache, sha256) = (cache.clone(), sha256.to_string());
    tokio::task::spawn_blocking(move || cache.lookup(&sha256, size))
        .await
        .ok()
        .flatten()
}

/// Returns a verified local copy of `object`: from the cache when it holds the right file,
/// else downloaded. `pinned` is `MODEL_SHA256` (lower-case hex). Errors are one line naming
/// the object and, for a mismatch, both checksums.
pub async fn fetch_model(
    object: &S3Object,
    pinned: Option<&str>,
    cache: &ModelCache,
    progress: &DownloadProgress,
) -> Result<FetchedModel, String> {
    if let Some(pin) = pinned {
        if let Some(path) = cached(cache, pin, None).await {
            return Ok(FetchedModel {
                path,
                sha256: pin.to_string(),
                downloaded: false,
            });
        }
    }
    let client = client_from_environment(object).await?;
    let head = head_object(&client, object).await?;
    let recorded = match head.metadata().and_then(|m| m.get(SHA256_METADATA_KEY)) {
        None => None,
        Some(raw) => Some(parse_sha256(raw).map_err(|why| {
            format!("{object}: the object's sha256 metadata {why}; push the model again with `acme-rollout models push`")
        })?),
    };
    let expected = match (recorded.as_deref(), pinned) {
        (Some(recorded), Some(pin)) if recorded != pin => {
            return Err(format!(
                "{object}: MODEL_SHA256 pins sha256 {pin} but the object records sha256 {recorded}; push the pinned model to this key, or set MODEL_SHA256 to the model the release should serve"
            ))
        }
        (Some(sha256), _) | (None, Some(sha256)) => sha256.to_string(),
        (None, None) => {
            return Err(format!(
                "{object}: the object has no sha256 metadata to verify the download against; push it with `acme-rollout models push`, or set MODEL_SHA256"
            ))
        }
    };
    let size = head
        .content_length()
        .and_then(|length| u64::try_from(length).ok());
    if let Some(path) = cached(cache, &expected, size).await {
        return Ok(FetchedModel {
            path,
            sha256: expected,
            downloaded: false,
        });
    }

    let mut request = client.get_object().bucket(&object.bucket).key(&object.key);
    if let Some(version) = &object.version_id {
        request = request.version_id(version);
    }
    // The bytes must be those of the object whose metadata was just read.
    if let Some(etag) = head.e_tag() {
        request = request.if_match(etag);
    }
    let response = request.send().await.map_err(|error| {
        let changed = error
            .raw_response()
            .is_some_and(|r| r.status().as_u16() == 412);
        if changed {
            format!("{object}: the object was replaced while the download started; start the server again")
        } else {
            format!("{object}: cannot download the object: {}", sdk_detail(&error))
        }
    })?;
    let total = response
        .content_length()
        .and_then(|length| u64::try_from(length).ok())
        .or(size)
        .unwrap_or_default();
    let partial = cache
        .dir()
        .join(format!("{expected}.gguf.partial-{}", std::process::id()));
    log_line(&format!(
        "downloading {object} ({total} bytes) into {}",
        cache.dir().display()
    ));
    progress.start(total);
    let streamed = stream_to_file(response.body, &partial, progress).await;
    progress.finish();
    let verified = streamed
        .map_err(|why| format!("{object}: the download failed: {why}"))
        .and_then(|(actual, bytes)| {
            if size.is_some_and(|size| size != bytes) {
                return Err(format!(
                    "{object}: the download ended after {bytes} of {} bytes; start the server again",
                    size.unwrap_or_default()
                ));
            }
            if let Some(recorded) = &recorded {
                if &actual != recorded {
                    return Err(format!(
                        "{object}: the downloaded file has sha256 {actual} but the object records sha256 {recorded}; the upload or its metadata is wrong, push the model again with `acme-rollout models push`"
                    ));
                }
            }
            if let Some(pin) = pinned {
                if actual != pin {
                    return Err(format!(
                        "{object}: the downloaded file has sha256 {actual} but MODEL_SHA256 pins {pin}; push the pinned model to this key, or fix the pin"
                    ));
                }
            }
            Ok(actual)
        });
    let sha256 = match verified {
        Ok(sha256) => sha256,
        Err(why) => {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(why);
        }
    };
    let path = cache.path_for(&sha256);
    if let Err(error) = tokio::fs::rename(&partial, &path).await {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(format!(
            "{object}: cannot move the download into place at {} ({error}); check MODEL_CACHE_DIR",
            path.display()
        ));
    }
    Ok(FetchedModel {
        path,
        sha256,
        downloaded: true,
    })
}

/// An S3 client configured from the environment (`AWS_REGION`, `AWS_ENDPOINT_URL`,
/// credentials or profile), with path-style addressing when the endpoint is overridden:
/// emulators and S3-compatible stores rarely resolve `bucket.host` names.
async fn client_from_environment(object: &S3Object) -> Result<Client, String> {
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    if shared.region().is_none() {
        return Err(format!(
            "{object}: no AWS region is configured; set AWS_REGION to the bucket's region"
        ));
    }
    // Asked once up front so that missing credentials read as such, not as a failed request.
    let credentials = match shared.credentials_provider() {
        None => Err("no credentials provider is configured".to_string()),
        Some(provider) => provider
            .provide_credentials()
            .await
            .map(|_| ())
            .map_err(|error| sdk_detail(&error)),
    };
    if let Err(why) = credentials {
        return Err(format!(
            "{object}: no usable AWS credentials ({why}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or give the task an IAM role"
        ));
    }
    let mut config = aws_sdk_s3::config::Builder::from(&shared);
    if shared.endpoint_url().is_some() {
        config = config.force_path_style(true);
    }
    Ok(Client::from_conf(config.build()))
}

async fn head_object(
    client: &Client,
    object: &S3Object,
) -> Result<aws_sdk_s3::operation::head_object::HeadObjectOutput, String> {
    let mut request = client.head_object().bucket(&object.bucket).key(&object.key);
    if let Some(version) = &object.version_id {
        request = request.version_id(version);
    }
    let error = match request.send().await {
        Ok(head) => return Ok(head),
        Err(error) => error,
    };
    let status = error.raw_response().map(|r| r.status().as_u16());
    let not_found =
        error.as_service_error().is_some_and(|e| e.is_not_found()) || status == Some(404);
    if not_found {
        // HEAD answers a bare 404 for a missing bucket too; asking the bucket tells them apart.
        let bucket = client.head_bucket().bucket(&object.bucket).send().await;
        let bucket_missing =
            matches!(&bucket, Err(SdkError::ServiceError(e)) if e.err().is_not_found());
        return Err(if bucket_missing {
            format!(
                "{object}: bucket {:?} does not exist (or is not visible to these credentials); check the bucket in MODEL_PATH and AWS_REGION",
                object.bucket
            )
        } else {
            let what = match &object.version_id {
                Some(version) => format!("version {version:?} of key {:?}", object.key),
                None => format!("key {:?}", object.key),
            };
            format!(
                "{object}: bucket {:?} has no {what}; push the model with `acme-rollout models push` or fix MODEL_PATH",
                object.bucket
            )
        });
    }
    let hint = match (status, &object.version_id) {
        (Some(403), _) => "; the credentials lack s3:GetObject on it, or the region is wrong",
        (Some(400), Some(_)) => "; check the versionId in MODEL_PATH",
        _ => "",
    };
    let http = status.map_or(String::new(), |code| format!(" (HTTP {code})"));
    Err(format!(
        "{object}: cannot read the object's metadata{http}: {}{hint}",
        sdk_detail(&error)
    ))
}

/// Writes `body` to `path`, hashing as it goes; returns the hex SHA-256 and the byte count.
async fn stream_to_file(
    mut body: ByteStream,
    path: &Path,
    progress: &DownloadProgress,
) -> Result<(String, u64), String> {
    let file = tokio::fs::File::create(path)
        .await
        .map_err(|error| format!("cannot create {} ({error})", path.display()))?;
    let mut writer = tokio::io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, file);
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let write_failed = |error: std::io::Error| format!("cannot write {} ({error})", path.display());
    while let Some(chunk) = body.try_next().await.map_err(|error| sdk_detail(&error))? {
        hasher.update(&chunk);
        writer.write_all(&chunk).await.map_err(write_failed)?;
        bytes += chunk.len() as u64;
        progress.advance(chunk.len() as u64);
    }
    writer.flush().await.map_err(write_failed)?;
    // On disk before the rename makes it look complete.
    writer.get_ref().sync_all().await.map_err(write_failed)?;
    Ok((hex(&hasher.finalize()), bytes))
}
