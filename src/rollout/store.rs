//! Where runs keep their state: the journal and the lock. Locally in a directory, or in S3
//! (`[state] bucket/prefix`) so that CI runners on different machines share one lock and
//! one history.
//!
//! The operations are the few that both can do safely: read an object with a version token,
//! create it only if absent, replace or delete it only if unchanged (S3 conditional writes:
//! `If-None-Match: *` and `If-Match: <etag>`), and list keys under a prefix.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};

use acme_aws::s3::BucketRef;
use acme_aws::{Aws, AwsError};

/// What a conditional write compares against: the ETag in S3, the content locally.
pub type Token = String;

#[derive(Clone)]
pub enum Store {
    Local(PathBuf),
    S3 {
        aws: Arc<tokio::sync::OnceCell<Aws>>,
        bucket: BucketRef,
        prefix: String,
    },
}

/// Runs an AWS call from synchronous code on the multi-threaded runtime.
fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

impl Store {
    pub fn describe(&self) -> String {
        match self {
            Store::Local(dir) => dir.display().to_string(),
            Store::S3 { bucket, prefix, .. } => format!("s3://{}/{prefix}", bucket.name),
        }
    }

    fn aws(aws: &tokio::sync::OnceCell<Aws>) -> &Aws {
        block(aws.get_or_init(Aws::from_env))
    }

    pub fn read(&self, key: &str) -> Result<Option<(Vec<u8>, Token)>> {
        match self {
            Store::Local(dir) => {
                let path = dir.join(key);
                match std::fs::read(&path) {
                    Ok(bytes) => {
                        let token = String::from_utf8_lossy(&bytes).into_owned();
                        Ok(Some((bytes, token)))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
                }
            }
            Store::S3 {
                aws,
                bucket,
                prefix,
            } => match block(Self::aws(aws).get_object(bucket, &format!("{prefix}{key}"))) {
                Ok(obj) => Ok(Some((obj.body, obj.etag.unwrap_or_default()))),
                Err(AwsError::NoSuchKey { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Creates `key` only if it does not exist: `Ok(None)` when it already does.
    pub fn create(&self, key: &str, bytes: &[u8]) -> Result<Option<Token>> {
        match self {
            Store::Local(dir) => {
                let path = dir.join(key);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("cannot create {}", parent.display()))?;
                }
                match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                {
                    Ok(mut f) => {
                        use std::io::Write;
                        f.write_all(bytes)
                            .and_then(|_| f.sync_all())
                            .with_context(|| format!("cannot write {}", path.display()))?;
                        Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
                    Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
                }
            }
            Store::S3 {
                aws,
                bucket,
                prefix,
            } => match block(Self::aws(aws).put_if_absent(
                bucket,
                &format!("{prefix}{key}"),
                bytes.to_vec(),
            )) {
                Ok(out) => Ok(Some(out.etag.unwrap_or_default())),
                Err(AwsError::PreconditionFailed { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Replaces `key` only if it still holds what `token` says: `Ok(None)` if it changed.
    pub fn replace(&self, key: &str, bytes: &[u8], token: &Token) -> Result<Option<Token>> {
        match self {
            Store::Local(dir) => {
                let path = dir.join(key);
                if self.read(key)?.map(|(_, t)| t).as_ref() != Some(token) {
                    return Ok(None);
                }
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, bytes)
                    .and_then(|_| std::fs::rename(&tmp, &path))
                    .with_context(|| format!("cannot write {}", path.display()))?;
                Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
            }
            Store::S3 {
                aws,
                bucket,
                prefix,
            } => match block(Self::aws(aws).put_if_match(
                bucket,
                &format!("{prefix}{key}"),
                bytes.to_vec(),
                token,
            )) {
                Ok(out) => Ok(Some(out.etag.unwrap_or_default())),
                Err(AwsError::PreconditionFailed { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Deletes `key` if it still holds what `token` says (or whatever it holds, without one).
    pub fn delete(&self, key: &str, token: Option<&Token>) -> Result<()> {
        match self {
            Store::Local(dir) => {
                if let Some(t) = token {
                    if self.read(key)?.map(|(_, t)| t).as_ref() != Some(t) {
                        return Ok(());
                    }
                }
                let path = dir.join(key);
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(e).with_context(|| format!("cannot remove {}", path.display()))
                    }
                    _ => Ok(()),
                }
            }
            Store::S3 {
                aws,
                bucket,
                prefix,
            } => {
                let key = format!("{prefix}{key}");
                let result = match token {
                    Some(t) => block(Self::aws(aws).delete_if_match(bucket, &key, t)),
                    None => block(Self::aws(aws).delete_object(bucket, &key)),
                };
                match result {
                    Ok(())
                    | Err(AwsError::PreconditionFailed { .. })
                    | Err(AwsError::NoSuchKey { .. }) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Keys under `prefix` (relative to the store), sorted.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>> {
        match self {
            Store::Local(dir) => {
                let mut out = Vec::new();
                let base = dir.join(prefix);
                let (walk_dir, name_prefix) = if prefix.ends_with('/') {
                    (base.clone(), String::new())
                } else {
                    (
                        base.parent()
                            .map(Path::to_path_buf)
                            .unwrap_or_else(|| dir.clone()),
                        base.file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                    )
                };
                let rel_dir = walk_dir
                    .strip_prefix(dir)
                    .unwrap_or(&walk_dir)
                    .to_path_buf();
                let Ok(entries) = std::fs::read_dir(&walk_dir) else {
                    return Ok(out);
                };
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.starts_with(&name_prefix) {
                        out.push(rel_dir.join(name).to_string_lossy().into_owned());
                    }
                }
                out.sort();
                Ok(out)
            }
            Store::S3 {
                aws,
                bucket,
                prefix: root,
            } => {
                let mut keys: Vec<String> =
                    block(Self::aws(aws).list_keys(bucket, &format!("{root}{prefix}")))?
                        .into_iter()
                        .filter_map(|k| k.strip_prefix(root.as_str()).map(str::to_string))
                        .collect();
                keys.sort();
                Ok(keys)
            }
        }
    }
}
