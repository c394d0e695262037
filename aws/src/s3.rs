//! S3: bucket versioning and cross-region replication, resumable parallel multipart uploads of
//! model files (with the file's SHA-256 as object metadata), and the small-object and
//! conditional-write calls the run journal and lock are built on.
//!
//! Every call takes the bucket's region, since the rollout touches buckets in several regions.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketVersioningStatus, ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart,
    DeleteMarkerReplication, DeleteMarkerReplicationStatus, Destination, ReplicationConfiguration,
    ReplicationRule, ReplicationRuleFilter, ReplicationRuleStatus, VersioningConfiguration,
};
use md5::Md5;
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use crate::error::{classify, AwsError, Target};
use crate::Aws;

/// Object metadata key holding the hex SHA-256 of the whole file (`x-amz-meta-sha256`).
pub const SHA256_METADATA_KEY: &str = "sha256";
/// S3's smallest part (all but the last).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// S3's most parts per upload.
pub const MAX_PARTS: u64 = 10_000;

/// A bucket and the region it lives in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BucketRef {
    pub region: String,
    pub name: String,
}

impl BucketRef {
    pub fn new(region: impl Into<String>, name: impl Into<String>) -> BucketRef {
        BucketRef {
            region: region.into(),
            name: name.into(),
        }
    }

    fn arn(&self) -> String {
        format!("arn:aws:s3:::{}", self.name)
    }
}

/// Desired replication from a primary bucket: one rule per destination, whole bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationSpec {
    /// IAM role S3 assumes to replicate.
    pub role_arn: String,
    /// Destinations in priority order (the first has the highest priority).
    pub destinations: Vec<BucketRef>,
    /// Whether deleting an object in the primary hides it in the replicas as well.
    pub replicate_delete_markers: bool,
}

/// What `apply_replication` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicationOutcome {
    Unchanged,
    Applied,
}

/// How `upload_model` splits and sends a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadOptions {
    /// Bytes per part (5 MiB to 5 GiB; at most 10,000 parts).
    pub part_size: u64,
    /// Parts in flight at once (each holds one part in memory).
    pub parallelism: usize,
    /// Continue a matching interrupted upload, and leave this one in place if it fails so a
    /// later call can continue it. Without it a failed upload is aborted.
    pub resume: bool,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            part_size: 64 * 1024 * 1024,
            parallelism: 4,
            resume: true,
        }
    }
}

/// The result of a completed upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadOutcome {
    pub size: u64,
    /// Hex SHA-256 of the file, as stored in the object's metadata.
    pub sha256: String,
    pub etag: Option<String>,
    pub version_id: Option<String>,
    pub parts: usize,
    /// Parts found already uploaded by an interrupted earlier attempt.
    pub resumed_parts: usize,
}

/// What `head_model` reports about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectFacts {
    pub size: u64,
    /// From the `sha256` metadata, if the object was uploaded by `upload_model`.
    pub sha256: Option<String>,
    pub version_id: Option<String>,
    pub etag: Option<String>,
    /// `PENDING`, `COMPLETED`, `FAILED` on a replicated source, `REPLICA` on a copy.
    pub replication_status: Option<String>,
}

/// Whether a destination bucket holds the expected model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaState {
    /// The object is there with the expected SHA-256.
    Matches,
    /// Not (yet) replicated.
    Missing,
    /// Present, but another file (or one without our metadata).
    Differs { sha256: Option<String> },
}

/// One destination's answer from [`Aws::check_replicas`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaCheck {
    pub bucket: BucketRef,
    pub state: ReplicaState,
}

/// An object read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub body: Vec<u8>,
    pub etag: Option<String>,
    pub version_id: Option<String>,
}

/// The result of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    pub etag: Option<String>,
    pub version_id: Option<String>,
}

/// A multipart upload that was started and neither completed nor aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<SystemTime>,
}

/// What one multipart upload ended with.
#[derive(Debug)]
struct CompletedUpload {
    etag: Option<String>,
    version_id: Option<String>,
    resumed_parts: usize,
}

#[derive(Debug, Clone)]
struct UploadedPart {
    number: i32,
    etag: String,
    checksum_crc32: Option<String>,
}

fn invalid(op: &'static str, message: impl Into<String>) -> AwsError {
    AwsError::InvalidInput {
        op,
        message: message.into(),
    }
}

fn local<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> AwsError + 'a {
    move |source| AwsError::LocalFile {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Byte ranges `(part number, offset, length)` of a file of `size` bytes.
fn part_layout(size: u64, part_size: u64) -> Vec<(i32, u64, u64)> {
    if size == 0 {
        return vec![(1, 0, 0)];
    }
    let count = size.div_ceil(part_size);
    (0..count)
        .map(|index| {
            let offset = index * part_size;
            let number = i32::try_from(index + 1).unwrap_or(i32::MAX);
            (number, offset, part_size.min(size - offset))
        })
        .collect()
}

fn validate_upload(size: u64, options: &UploadOptions) -> Result<(), AwsError> {
    const OP: &str = "upload model";
    if options.parallelism == 0 {
        return Err(invalid(OP, "parallelism must be at least 1"));
    }
    if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&options.part_size) {
        return Err(invalid(
            OP,
            format!(
                "part size {} bytes is outside S3's limits; use {} to {} bytes (5 MiB to 5 GiB)",
                options.part_size, MIN_PART_SIZE, MAX_PART_SIZE
            ),
        ));
    }
    let parts = size.div_ceil(options.part_size);
    if parts > MAX_PARTS {
        let needed = size.div_ceil(MAX_PARTS).max(MIN_PART_SIZE);
        return Err(invalid(
            OP,
            format!(
                "a {size}-byte file in {}-byte parts needs {parts} parts, over S3's {MAX_PARTS}; raise the part size to at least {needed} bytes",
                options.part_size
            ),
        ));
    }
    Ok(())
}

fn read_range(path: &Path, offset: u64, length: u64) -> std::io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut buffer = vec![0; usize::try_from(length).map_err(std::io::Error::other)?];
    file.read_exact(&mut buffer)?;
    Ok(buffer)
}

fn sha256_of_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buffer[..read]);
    }
}

fn unquote(etag: &str) -> &str {
    etag.trim_matches('"')
}

fn to_system_time(time: &aws_sdk_s3::primitives::DateTime) -> Option<SystemTime> {
    SystemTime::try_from(*time).ok()
}

/// Replication rules for `spec`, in priority order.
fn desired_rules(spec: &ReplicationSpec) -> Result<Vec<ReplicationRule>, AwsError> {
    const OP: &str = "PutBucketReplication";
    let count = spec.destinations.len();
    spec.destinations
        .iter()
        .enumerate()
        .map(|(index, destination)| {
            let priority = i32::try_from(count - index).unwrap_or(i32::MAX);
            ReplicationRule::builder()
                .id(rule_id(destination))
                .priority(priority)
                .status(ReplicationRuleStatus::Enabled)
                .filter(ReplicationRuleFilter::builder().prefix("").build())
                .delete_marker_replication(
                    DeleteMarkerReplication::builder()
                        .status(if spec.replicate_delete_markers {
                            DeleteMarkerReplicationStatus::Enabled
                        } else {
                            DeleteMarkerReplicationStatus::Disabled
                        })
                        .build(),
                )
                .destination(
                    Destination::builder()
                        .bucket(destination.arn())
                        .build()
                        .map_err(|err| invalid(OP, err.to_string()))?,
                )
                .build()
                .map_err(|err| invalid(OP, err.to_string()))
        })
        .collect()
}

fn rule_id(destination: &BucketRef) -> String {
    format!("acme-rollout-to-{}", destination.name)
}

/// The parts of a rule that decide what is replicated where. A missing filter, an empty
/// prefix and a filter holding only an empty prefix all mean "the whole bucket" (moto
/// returns the last form for every rule, whatever was stored).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RuleEssence {
    id: String,
    priority: i32,
    enabled: bool,
    destination: String,
    delete_markers: bool,
    whole_bucket: bool,
}

fn rule_essence(rule: &ReplicationRule) -> RuleEssence {
    // Rules written in the V1 schema (by other tools) keep their prefix on the rule itself.
    #[allow(deprecated)]
    let whole_bucket = match rule.filter() {
        None => rule.prefix().unwrap_or("").is_empty(),
        Some(filter) => {
            filter.tag().is_none()
                && filter.and().is_none()
                && filter.prefix().unwrap_or("").is_empty()
        }
    };
    RuleEssence {
        id: rule.id().unwrap_or("").to_owned(),
        priority: rule.priority().unwrap_or(0),
        enabled: rule.status() == &ReplicationRuleStatus::Enabled,
        destination: rule
            .destination()
            .map(|destination| destination.bucket().to_owned())
            .unwrap_or_default(),
        delete_markers: rule
            .delete_marker_replication()
            .and_then(|replication| replication.status())
            == Some(&DeleteMarkerReplicationStatus::Enabled),
        whole_bucket,
    }
}

fn replication_matches(
    current: &ReplicationConfiguration,
    role_arn: &str,
    desired: &[ReplicationRule],
) -> bool {
    let mut current_rules: Vec<RuleEssence> = current.rules().iter().map(rule_essence).collect();
    let mut desired_rules: Vec<RuleEssence> = desired.iter().map(rule_essence).collect();
    current_rules.sort();
    desired_rules.sort();
    current.role() == role_arn && current_rules == desired_rules
}

impl Aws {
    /// Turns on versioning (required on both ends of replication). Idempotent.
    pub async fn put_versioning(&self, bucket: &BucketRef) -> Result<(), AwsError> {
        const OP: &str = "PutBucketVersioning";
        self.s3(&bucket.region)
            .put_bucket_versioning()
            .bucket(&bucket.name)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .map_err(|err| classify(OP, Target::Bucket(&bucket.name), err))?;
        Ok(())
    }

    /// Whether versioning is enabled on a bucket.
    pub async fn versioning_enabled(&self, bucket: &BucketRef) -> Result<bool, AwsError> {
        const OP: &str = "GetBucketVersioning";
        let output = self
            .s3(&bucket.region)
            .get_bucket_versioning()
            .bucket(&bucket.name)
            .send()
            .await
            .map_err(|err| classify(OP, Target::Bucket(&bucket.name), err))?;
        Ok(output.status() == Some(&BucketVersioningStatus::Enabled))
    }

    /// Makes `primary` replicate to every destination (one rule each); sends nothing when the
    /// bucket already has that configuration.
    pub async fn apply_replication(
        &self,
        primary: &BucketRef,
        spec: &ReplicationSpec,
    ) -> Result<ReplicationOutcome, AwsError> {
        const OP: &str = "PutBucketReplication";
        if spec.destinations.is_empty() {
            return Err(invalid(
                OP,
                format!("no destination buckets given for s3://{}", primary.name),
            ));
        }
        if spec
            .destinations
            .iter()
            .any(|destination| destination.name == primary.name)
        {
            return Err(invalid(
                OP,
                format!("s3://{} cannot replicate to itself", primary.name),
            ));
        }
        let rules = desired_rules(spec)?;
        if let Some(current) = self.replication(primary).await? {
            if replication_matches(&current, &spec.role_arn, &rules) {
                return Ok(ReplicationOutcome::Unchanged);
            }
        }
        let configuration = ReplicationConfiguration::builder()
            .role(&spec.role_arn)
            .set_rules(Some(rules))
            .build()
            .map_err(|err| invalid(OP, err.to_string()))?;
        self.s3(&primary.region)
            .put_bucket_replication()
            .bucket(&primary.name)
            .replication_configuration(configuration)
            .send()
            .await
            .map_err(|err| classify(OP, Target::Bucket(&primary.name), err))?;
        Ok(ReplicationOutcome::Applied)
    }

    /// The bucket's replication configuration, `None` when it has none.
    pub async fn replication(
        &self,
        bucket: &BucketRef,
    ) -> Result<Option<ReplicationConfiguration>, AwsError> {
        const OP: &str = "GetBucketReplication";
        match self
            .s3(&bucket.region)
            .get_bucket_replication()
            .bucket(&bucket.name)
            .send()
            .await
        {
            Ok(output) => Ok(output.replication_configuration().cloned()),
            Err(err)
                if aws_sdk_s3::error::ProvideErrorMetadata::code(&err)
                    == Some("ReplicationConfigurationNotFoundError") =>
            {
                Ok(None)
            }
            Err(err) => Err(classify(OP, Target::Bucket(&bucket.name), err)),
        }
    }

    /// Uploads a (large) file as a multipart upload, parts in parallel, with the file's
    /// SHA-256 in the object metadata. `progress(bytes_done, total)` is called as parts finish.
    ///
    /// With `options.resume`, an interrupted upload of the same key whose parts hold this
    /// file's bytes (each part's ETag is compared with the MD5 of the local part) is continued,
    /// and a failure leaves the upload in place for the next call; the stored SHA-256 is checked
    /// afterwards, and a stale one (the file changed after that upload began) means a fresh
    /// upload. Without `resume`, a failure aborts the upload so nothing is left behind.
    pub async fn upload_model(
        &self,
        bucket: &BucketRef,
        key: &str,
        path: &Path,
        options: &UploadOptions,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<UploadOutcome, AwsError> {
        const OP: &str = "upload model";
        let metadata = tokio::fs::metadata(path).await.map_err(local(OP, path))?;
        if !metadata.is_file() {
            return Err(invalid(
                OP,
                format!("{} is not a regular file", path.display()),
            ));
        }
        let size = metadata.len();
        validate_upload(size, options)?;
        let layout = part_layout(size, options.part_size);

        let owned_path = path.to_owned();
        let sha256 = tokio::task::spawn_blocking(move || sha256_of_file(&owned_path))
            .await
            .map_err(|err| invalid(OP, format!("hashing {} stopped: {err}", path.display())))?
            .map_err(local(OP, path))?;

        let first = self
            .upload_parts(
                bucket,
                key,
                path,
                &layout,
                &sha256,
                options,
                options.resume,
                progress,
            )
            .await?;
        let outcome = UploadOutcome {
            size,
            sha256: sha256.clone(),
            etag: first.etag,
            version_id: first.version_id,
            parts: layout.len(),
            resumed_parts: first.resumed_parts,
        };
        if outcome.resumed_parts == 0 {
            return Ok(outcome);
        }
        // The resumed upload's metadata was fixed when it began. Its parts matched this file,
        // but if the file changed after the upload began, the stored SHA-256 is stale: then
        // the object is uploaded again from scratch.
        let stored = self.head_model(bucket, key).await?;
        if stored.as_ref().and_then(|facts| facts.sha256.as_deref()) == Some(sha256.as_str()) {
            return Ok(outcome);
        }
        let fresh = self
            .upload_parts(
                bucket, key, path, &layout, &sha256, options, false, progress,
            )
            .await?;
        Ok(UploadOutcome {
            etag: fresh.etag,
            version_id: fresh.version_id,
            resumed_parts: 0,
            ..outcome
        })
    }

    /// One multipart upload of `path`: continued (when `try_resume` finds a matching one) or
    /// new; aborted on failure unless `options.resume`.
    #[allow(clippy::too_many_arguments)]
    async fn upload_parts(
        &self,
        bucket: &BucketRef,
        key: &str,
        path: &Path,
        layout: &[(i32, u64, u64)],
        sha256: &str,
        options: &UploadOptions,
        try_resume: bool,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<CompletedUpload, AwsError> {
        const OP: &str = "upload model";
        let resumed = if try_resume {
            self.find_resumable_upload(bucket, key, path, layout)
                .await?
        } else {
            None
        };
        let (upload_id, done_parts) = match resumed {
            Some(found) => found,
            None => (self.create_upload(bucket, key, sha256).await?, Vec::new()),
        };
        let result = self
            .send_parts_and_complete(
                bucket, key, path, &upload_id, layout, done_parts, options, progress,
            )
            .await;
        match result {
            Ok(completed) => Ok(completed),
            Err(err) if options.resume => Err(err),
            Err(err) => match self.abort_upload(bucket, key, &upload_id).await {
                Ok(()) => Err(err),
                Err(abort_err) => Err(AwsError::Other {
                    op: OP,
                    resource: format!("s3://{}/{key}", bucket.name),
                    message: format!(
                        "{err}; aborting upload {upload_id} failed as well ({abort_err}); run abort_stale_uploads"
                    ),
                }),
            },
        }
    }

    async fn create_upload(
        &self,
        bucket: &BucketRef,
        key: &str,
        sha256: &str,
    ) -> Result<String, AwsError> {
        const OP: &str = "CreateMultipartUpload";
        let target = Target::Object {
            bucket: &bucket.name,
            key,
        };
        let output = self
            .s3(&bucket.region)
            .create_multipart_upload()
            .bucket(&bucket.name)
            .key(key)
            .content_type("application/octet-stream")
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .metadata(SHA256_METADATA_KEY, sha256)
            .send()
            .await
            .map_err(|err| classify(OP, target.clone(), err))?;
        output
            .upload_id()
            .map(str::to_owned)
            .ok_or_else(|| AwsError::Other {
                op: OP,
                resource: format!("s3://{}/{key}", bucket.name),
                message: "the response carried no upload id".to_owned(),
            })
    }

    #[allow(clippy::too_many_arguments)]
    async fn send_parts_and_complete(
        &self,
        bucket: &BucketRef,
        key: &str,
        path: &Path,
        upload_id: &str,
        layout: &[(i32, u64, u64)],
        done_parts: Vec<UploadedPart>,
        options: &UploadOptions,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<CompletedUpload, AwsError> {
        const OP: &str = "UploadPart";
        let total: u64 = layout.iter().map(|(_, _, length)| length).sum();
        let resumed_parts = done_parts.len();
        let mut finished: HashMap<i32, UploadedPart> = done_parts
            .into_iter()
            .map(|part| (part.number, part))
            .collect();
        let mut bytes_done: u64 = layout
            .iter()
            .filter(|(number, _, _)| finished.contains_key(number))
            .map(|(_, _, length)| length)
            .sum();
        progress(bytes_done, total);

        let client = self.s3(&bucket.region);
        let path: Arc<PathBuf> = Arc::new(path.to_owned());
        let missing: Vec<(i32, u64, u64)> = layout
            .iter()
            .filter(|(number, _, _)| !finished.contains_key(number))
            .copied()
            .collect();
        let mut pending = missing.into_iter();
        let mut in_flight: JoinSet<Result<(UploadedPart, u64), AwsError>> = JoinSet::new();
        loop {
            while in_flight.len() < options.parallelism {
                let Some((number, offset, length)) = pending.next() else {
                    break;
                };
                let client = client.clone();
                let path = Arc::clone(&path);
                let (bucket_name, key, upload_id) =
                    (bucket.name.clone(), key.to_owned(), upload_id.to_owned());
                in_flight.spawn(async move {
                    let read_path = Arc::clone(&path);
                    let body =
                        tokio::task::spawn_blocking(move || read_range(&read_path, offset, length))
                            .await
                            .map_err(|err| {
                                invalid(OP, format!("reading part {number} stopped: {err}"))
                            })?
                            .map_err(local(OP, &path))?;
                    let output = client
                        .upload_part()
                        .bucket(&bucket_name)
                        .key(&key)
                        .upload_id(&upload_id)
                        .part_number(number)
                        .checksum_algorithm(ChecksumAlgorithm::Crc32)
                        .body(ByteStream::from(body))
                        .send()
                        .await
                        .map_err(|err| {
                            classify(
                                OP,
                                Target::Object {
                                    bucket: &bucket_name,
                                    key: &key,
                                },
                                err,
                            )
                        })?;
                    let etag =
                        output
                            .e_tag()
                            .map(str::to_owned)
                            .ok_or_else(|| AwsError::Other {
                                op: OP,
                                resource: format!("s3://{bucket_name}/{key} part {number}"),
                                message: "the response carried no ETag".to_owned(),
                            })?;
                    Ok((
                        UploadedPart {
                            number,
                            etag,
                            checksum_crc32: output.checksum_crc32().map(str::to_owned),
                        },
                        length,
                    ))
                });
            }
            let Some(joined) = in_flight.join_next().await else {
                break;
            };
            let (part, length) = joined.map_err(|err| {
                invalid(OP, format!("a part upload stopped unexpectedly: {err}"))
            })??;
            finished.insert(part.number, part);
            bytes_done += length;
            progress(bytes_done, total);
        }

        let mut parts: Vec<UploadedPart> = finished.into_values().collect();
        parts.sort_by_key(|part| part.number);
        let completed = parts
            .iter()
            .map(|part| {
                CompletedPart::builder()
                    .part_number(part.number)
                    .e_tag(&part.etag)
                    .set_checksum_crc32(part.checksum_crc32.clone())
                    .build()
            })
            .collect();
        let output = self
            .s3(&bucket.region)
            .complete_multipart_upload()
            .bucket(&bucket.name)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .send()
            .await
            .map_err(|err| {
                classify(
                    "CompleteMultipartUpload",
                    Target::Object {
                        bucket: &bucket.name,
                        key,
                    },
                    err,
                )
            })?;
        Ok(CompletedUpload {
            etag: output.e_tag().map(str::to_owned),
            version_id: output.version_id().map(str::to_owned),
            resumed_parts,
        })
    }

    /// An interrupted upload of `key` whose parts all hold this file's bytes, with its parts.
    /// Part ETags are the MD5 of the part for unencrypted and SSE-S3 objects; under SSE-KMS they
    /// are not, nothing matches, and the upload simply starts over.
    async fn find_resumable_upload(
        &self,
        bucket: &BucketRef,
        key: &str,
        path: &Path,
        layout: &[(i32, u64, u64)],
    ) -> Result<Option<(String, Vec<UploadedPart>)>, AwsError> {
        let mut uploads = self.pending_uploads(bucket, key).await?;
        // Newest first: the most recent attempt has the most parts.
        uploads.sort_by_key(|upload| std::cmp::Reverse(upload.initiated));
        for upload in uploads {
            let parts = self.list_parts(bucket, key, &upload.upload_id).await?;
            if !parts.is_empty() && self.parts_match_file(path, layout, &parts).await? {
                let parts = parts.into_iter().map(|(part, _)| part).collect();
                return Ok(Some((upload.upload_id, parts)));
            }
        }
        Ok(None)
    }

    async fn parts_match_file(
        &self,
        path: &Path,
        layout: &[(i32, u64, u64)],
        parts: &[(UploadedPart, u64)],
    ) -> Result<bool, AwsError> {
        const OP: &str = "resume upload";
        let ranges: HashMap<i32, (u64, u64)> = layout
            .iter()
            .map(|(number, offset, length)| (*number, (*offset, *length)))
            .collect();
        for (part, size) in parts {
            let Some(&(offset, length)) = ranges.get(&part.number) else {
                return Ok(false);
            };
            if *size != length {
                return Ok(false);
            }
            let owned = path.to_owned();
            let local_md5 = tokio::task::spawn_blocking(move || {
                read_range(&owned, offset, length).map(|bytes| hex::encode(Md5::digest(&bytes)))
            })
            .await
            .map_err(|err| invalid(OP, format!("reading part {} stopped: {err}", part.number)))?
            .map_err(local(OP, path))?;
            if !unquote(&part.etag).eq_ignore_ascii_case(&local_md5) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn list_parts(
        &self,
        bucket: &BucketRef,
        key: &str,
        upload_id: &str,
    ) -> Result<Vec<(UploadedPart, u64)>, AwsError> {
        const OP: &str = "ListParts";
        let mut parts = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .s3(&bucket.region)
                .list_parts()
                .bucket(&bucket.name)
                .key(key)
                .upload_id(upload_id)
                .set_part_number_marker(marker.clone())
                .send()
                .await
                .map_err(|err| {
                    classify(
                        OP,
                        Target::Object {
                            bucket: &bucket.name,
                            key,
                        },
                        err,
                    )
                })?;
            for part in page.parts() {
                let (Some(number), Some(etag)) = (part.part_number(), part.e_tag()) else {
                    continue;
                };
                let size = u64::try_from(part.size().unwrap_or(0)).unwrap_or(0);
                parts.push((
                    UploadedPart {
                        number,
                        etag: etag.to_owned(),
                        checksum_crc32: part.checksum_crc32().map(str::to_owned),
                    },
                    size,
                ));
            }
            match page.next_part_number_marker() {
                Some(next)
                    if page.is_truncated() == Some(true) && marker.as_deref() != Some(next) =>
                {
                    marker = Some(next.to_owned());
                }
                _ => return Ok(parts),
            }
        }
    }

    /// Multipart uploads of exactly `key` that were started and not finished.
    pub async fn pending_uploads(
        &self,
        bucket: &BucketRef,
        key: &str,
    ) -> Result<Vec<PendingUpload>, AwsError> {
        const OP: &str = "ListMultipartUploads";
        let mut uploads = Vec::new();
        let mut markers: (Option<String>, Option<String>) = (None, None);
        loop {
            let page = self
                .s3(&bucket.region)
                .list_multipart_uploads()
                .bucket(&bucket.name)
                .prefix(key)
                .set_key_marker(markers.0.clone())
                .set_upload_id_marker(markers.1.clone())
                .send()
                .await
                .map_err(|err| classify(OP, Target::Bucket(&bucket.name), err))?;
            for upload in page.uploads() {
                let (Some(upload_key), Some(upload_id)) = (upload.key(), upload.upload_id()) else {
                    continue;
                };
                if upload_key == key {
                    uploads.push(PendingUpload {
                        key: upload_key.to_owned(),
                        upload_id: upload_id.to_owned(),
                        initiated: upload.initiated().and_then(to_system_time),
                    });
                }
            }
            let next = (
                page.next_key_marker().map(str::to_owned),
                page.next_upload_id_marker().map(str::to_owned),
            );
            if page.is_truncated() != Some(true) || next.0.is_none() || next == markers {
                return Ok(uploads);
            }
            markers = next;
        }
    }

    /// Aborts every unfinished multipart upload of `key`; returns how many there were.
    pub async fn abort_stale_uploads(
        &self,
        bucket: &BucketRef,
        key: &str,
    ) -> Result<usize, AwsError> {
        let uploads = self.pending_uploads(bucket, key).await?;
        for upload in &uploads {
            self.abort_upload(bucket, key, &upload.upload_id).await?;
        }
        Ok(uploads.len())
    }

    async fn abort_upload(
        &self,
        bucket: &BucketRef,
        key: &str,
        upload_id: &str,
    ) -> Result<(), AwsError> {
        const OP: &str = "AbortMultipartUpload";
        match self
            .s3(&bucket.region)
            .abort_multipart_upload()
            .bucket(&bucket.name)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // Already gone is what we wanted.
            Err(err)
                if aws_sdk_s3::error::ProvideErrorMetadata::code(&err) == Some("NoSuchUpload") =>
            {
                Ok(())
            }
            Err(err) => Err(classify(
                OP,
                Target::Object {
                    bucket: &bucket.name,
                    key,
                },
                err,
            )),
        }
    }

    /// Size, SHA-256 (from metadata), version and ETag of an object; `None` if it does not
    /// exist (an error if the bucket does not).
    pub async fn head_model(
        &self,
        bucket: &BucketRef,
        key: &str,
    ) -> Result<Option<ObjectFacts>, AwsError> {
        const OP: &str = "HeadObject";
        let result = self
            .s3(&bucket.region)
            .head_object()
            .bucket(&bucket.name)
            .key(key)
            .send()
            .await
            .map_err(|err| {
                classify(
                    OP,
                    Target::Object {
                        bucket: &bucket.name,
                        key,
                    },
                    err,
                )
            });
        match result {
            Ok(output) => Ok(Some(ObjectFacts {
                size: u64::try_from(output.content_length().unwrap_or(0)).unwrap_or(0),
                sha256: output
                    .metadata()
                    .and_then(|metadata| metadata.get(SHA256_METADATA_KEY))
                    .cloned(),
                version_id: output.version_id().map(str::to_owned),
                etag: output.e_tag().map(str::to_owned),
                replication_status: output
                    .replication_status()
                    .map(|status| status.as_str().to_owned()),
            })),
            // HEAD responses have no body, so a missing bucket also reads as "not found".
            Err(AwsError::NoSuchKey { .. }) => {
                self.ensure_bucket(bucket, OP).await?;
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    /// Whether each destination already holds `key` with the SHA-256 `expected_sha256`:
    /// the replication gate before a region may load a new model.
    pub async fn check_replicas(
        &self,
        key: &str,
        expected_sha256: &str,
        destinations: &[BucketRef],
    ) -> Result<Vec<ReplicaCheck>, AwsError> {
        let mut checks = Vec::with_capacity(destinations.len());
        for bucket in destinations {
            let state = match self.head_model(bucket, key).await? {
                None => ReplicaState::Missing,
                Some(facts) if facts.sha256.as_deref() == Some(expected_sha256) => {
                    ReplicaState::Matches
                }
                Some(facts) => ReplicaState::Differs {
                    sha256: facts.sha256,
                },
            };
            checks.push(ReplicaCheck {
                bucket: bucket.clone(),
                state,
            });
        }
        Ok(checks)
    }

    async fn ensure_bucket(&self, bucket: &BucketRef, op: &'static str) -> Result<(), AwsError> {
        self.s3(&bucket.region)
            .head_bucket()
            .bucket(&bucket.name)
            .send()
            .await
            .map_err(
                |err| match classify(op, Target::Bucket(&bucket.name), err) {
                    AwsError::NoSuchBucket { bucket, .. } => AwsError::NoSuchBucket { op, bucket },
                    other => other,
                },
            )?;
        Ok(())
    }

    /// Reads a (small) object whole: journal entries, lock records.
    pub async fn get_object(
        &self,
        bucket: &BucketRef,
        key: &str,
    ) -> Result<StoredObject, AwsError> {
        const OP: &str = "GetObject";
        let target = Target::Object {
            bucket: &bucket.name,
            key,
        };
        let output = self
            .s3(&bucket.region)
            .get_object()
            .bucket(&bucket.name)
            .key(key)
            .send()
            .await
            .map_err(|err| classify(OP, target.clone(), err))?;
        let etag = output.e_tag().map(str::to_owned);
        let version_id = output.version_id().map(str::to_owned);
        let body = output.body.collect().await.map_err(|err| AwsError::Other {
            op: OP,
            resource: format!("s3://{}/{key}", bucket.name),
            message: format!("reading the body failed: {err}"),
        })?;
        Ok(StoredObject {
            body: body.into_bytes().to_vec(),
            etag,
            version_id,
        })
    }

    /// Writes an object unconditionally.
    pub async fn put_object(
        &self,
        bucket: &BucketRef,
        key: &str,
        body: Vec<u8>,
    ) -> Result<PutOutcome, AwsError> {
        self.put(bucket, key, body, Condition::None).await
    }

    /// Creates an object only if the key is free (`If-None-Match: *`); otherwise
    /// [`AwsError::PreconditionFailed`]. This is how a lock is taken.
    pub async fn put_if_absent(
        &self,
        bucket: &BucketRef,
        key: &str,
        body: Vec<u8>,
    ) -> Result<PutOutcome, AwsError> {
        self.put(bucket, key, body, Condition::Absent).await
    }

    /// Replaces an object only if it still has `etag` (`If-Match`); otherwise
    /// [`AwsError::PreconditionFailed`]. This is how an expired lock is taken over.
    pub async fn put_if_match(
        &self,
        bucket: &BucketRef,
        key: &str,
        body: Vec<u8>,
        etag: &str,
    ) -> Result<PutOutcome, AwsError> {
        self.put(bucket, key, body, Condition::Matches(etag)).await
    }

    async fn put(
        &self,
        bucket: &BucketRef,
        key: &str,
        body: Vec<u8>,
        condition: Condition<'_>,
    ) -> Result<PutOutcome, AwsError> {
        const OP: &str = "PutObject";
        let mut request = self
            .s3(&bucket.region)
            .put_object()
            .bucket(&bucket.name)
            .key(key)
            .body(ByteStream::from(body));
        request = match condition {
            Condition::None => request,
            Condition::Absent => request.if_none_match("*"),
            Condition::Matches(etag) => request.if_match(etag),
        };
        let output = request.send().await.map_err(|err| {
            classify(
                OP,
                Target::Object {
                    bucket: &bucket.name,
                    key,
                },
                err,
            )
        })?;
        Ok(PutOutcome {
            etag: output.e_tag().map(str::to_owned),
            version_id: output.version_id().map(str::to_owned),
        })
    }

    /// Deletes an object only if it still has `etag` (releasing a lock we hold).
    pub async fn delete_if_match(
        &self,
        bucket: &BucketRef,
        key: &str,
        etag: &str,
    ) -> Result<(), AwsError> {
        self.delete(bucket, key, Some(etag)).await
    }

    /// Deletes an object (no error if it is already gone).
    pub async fn delete_object(&self, bucket: &BucketRef, key: &str) -> Result<(), AwsError> {
        self.delete(bucket, key, None).await
    }

    async fn delete(
        &self,
        bucket: &BucketRef,
        key: &str,
        etag: Option<&str>,
    ) -> Result<(), AwsError> {
        const OP: &str = "DeleteObject";
        self.s3(&bucket.region)
            .delete_object()
            .bucket(&bucket.name)
            .key(key)
            .set_if_match(etag.map(str::to_owned))
            .send()
            .await
            .map_err(|err| {
                classify(
                    OP,
                    Target::Object {
                        bucket: &bucket.name,
                        key,
                    },
                    err,
                )
            })?;
        Ok(())
    }

    /// Keys under `prefix`, in S3's (lexicographic) order.
    pub async fn list_keys(
        &self,
        bucket: &BucketRef,
        prefix: &str,
    ) -> Result<Vec<String>, AwsError> {
        const OP: &str = "ListObjectsV2";
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .s3(&bucket.region)
                .list_objects_v2()
                .bucket(&bucket.name)
                .prefix(prefix)
                .set_continuation_token(token.clone())
                .send()
                .await
                .map_err(|err| classify(OP, Target::Bucket(&bucket.name), err))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|object| object.key().map(str::to_owned)),
            );
            match page.next_continuation_token() {
                Some(next)
                    if page.is_truncated() == Some(true) && token.as_deref() != Some(next) =>
                {
                    token = Some(next.to_owned());
                }
                _ => return Ok(keys),
            }
        }
    }
}

enum Condition<'a> {
    None,
    Absent,
    Matches(&'a str),
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn the_layout_covers_the_file_with_a_short_last_part() {
        let layout = part_layout(12 * MIB + 1, 5 * MIB);
        assert_eq!(
            layout,
            vec![
                (1, 0, 5 * MIB),
                (2, 5 * MIB, 5 * MIB),
                (3, 10 * MIB, 2 * MIB + 1)
            ]
        );
        assert_eq!(part_layout(0, 5 * MIB), vec![(1, 0, 0)]);
    }

    #[test]
    fn too_small_parts_and_too_many_parts_are_refused_with_the_fix() {
        let small = UploadOptions {
            part_size: MIB,
            ..UploadOptions::default()
        };
        let err = validate_upload(10 * MIB, &small).unwrap_err().to_string();
        assert!(err.contains("5 MiB to 5 GiB"), "{err}");

        let many = UploadOptions {
            part_size: MIN_PART_SIZE,
            ..UploadOptions::default()
        };
        let err = validate_upload(MIN_PART_SIZE * (MAX_PARTS + 1), &many)
            .unwrap_err()
            .to_string();
        assert!(err.contains("raise the part size"), "{err}");

        let none = UploadOptions {
            parallelism: 0,
            ..UploadOptions::default()
        };
        assert!(validate_upload(MIB, &none).is_err());
    }

    fn spec(delete_markers: bool) -> ReplicationSpec {
        ReplicationSpec {
            role_arn: "arn:aws:iam::123456789012:role/replication".into(),
            destinations: vec![
                BucketRef::new("eu-west-1", "models-eu"),
                BucketRef::new("ap-southeast-1", "models-apac"),
            ],
            replicate_delete_markers: delete_markers,
        }
    }

    #[test]
    fn an_empty_prefix_filter_equals_the_desired_whole_bucket_rule() {
        let rules = desired_rules(&spec(true)).unwrap();
        // What moto hands back: a filter of only an empty prefix.
        let round_tripped: Vec<ReplicationRule> = rules
            .iter()
            .map(|rule| {
                let mut rule = rule.clone();
                rule.filter = Some(ReplicationRuleFilter::builder().prefix("").build());
                rule
            })
            .collect();
        let current = ReplicationConfiguration::builder()
            .role(spec(true).role_arn)
            .set_rules(Some(round_tripped))
            .build()
            .unwrap();
        assert!(replication_matches(&current, &spec(true).role_arn, &rules));
    }

    #[test]
    fn a_delete_marker_or_destination_change_is_drift() {
        let rules = desired_rules(&spec(true)).unwrap();
        let current = ReplicationConfiguration::builder()
            .role(spec(false).role_arn)
            .set_rules(Some(desired_rules(&spec(false)).unwrap()))
            .build()
            .unwrap();
        assert!(!replication_matches(&current, &spec(true).role_arn, &rules));

        let mut fewer = spec(true);
        fewer.destinations.pop();
        let current = ReplicationConfiguration::builder()
            .role(fewer.role_arn.clone())
            .set_rules(Some(desired_rules(&fewer).unwrap()))
            .build()
            .unwrap();
        assert!(!replication_matches(&current, &spec(true).role_arn, &rules));
    }

    #[test]
    fn the_first_destination_has_the_highest_priority() {
        let rules = desired_rules(&spec(false)).unwrap();
        assert_eq!(rules[0].priority(), Some(2));
        assert_eq!(rules[1].priority(), Some(1));
        assert_eq!(
            rules[0].destination().unwrap().bucket(),
            "arn:aws:s3:::models-eu"
        );
    }
}
