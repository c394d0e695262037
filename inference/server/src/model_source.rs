//! Where the model comes from: `MODEL_PATH` is either a local file or an S3 object
//! (`s3://bucket/key`, optionally `?versionId=V`). Parsing is pure; refusals say how to fix
//! the value.

use std::fmt;
use std::path::PathBuf;

/// The parsed `MODEL_PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    File(PathBuf),
    S3(S3Object),
}

/// One S3 object, optionally one version of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Object {
    pub bucket: String,
    pub key: String,
    pub version_id: Option<String>,
}

impl fmt::Display for S3Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)?;
        if let Some(version) = &self.version_id {
            write!(f, "?versionId={version}")?;
        }
        Ok(())
    }
}

const S3_SCHEME: &str = "s3://";
const VERSION_QUERY: &str = "versionId=";

impl ModelSource {
    /// Reads a `MODEL_PATH` value; anything not starting with `s3://` is a local path.
    pub fn parse(raw: &str) -> Result<ModelSource, String> {
        let Some(rest) = raw.strip_prefix(S3_SCHEME) else {
            return Ok(ModelSource::File(PathBuf::from(raw)));
        };
        let shape = "write it as s3://bucket/key or s3://bucket/key?versionId=V";
        let (location, query) = match rest.split_once('?') {
            Some((location, query)) => (location, Some(query)),
            None => (rest, None),
        };
        let (bucket, key) = location
            .split_once('/')
            .filter(|(bucket, key)| !bucket.is_empty() && !key.is_empty())
            .ok_or_else(|| format!("{raw:?} names no bucket and key; {shape}"))?;
        if !bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
        {
            return Err(format!(
                "{raw:?}: {bucket:?} is not an S3 bucket name (lower-case letters, digits, '-' and '.'); {shape}"
            ));
        }
        let version_id = match query {
            None => None,
            Some(query) => match query.strip_prefix(VERSION_QUERY) {
                Some(version) if !version.is_empty() && !version.contains('&') => {
                    Some(version.to_string())
                }
                _ => {
                    return Err(format!(
                    "{raw:?}: the only query understood is ?versionId=V (one version id); {shape}"
                ))
                }
            },
        };
        Ok(ModelSource::S3(S3Object {
            bucket: bucket.to_string(),
            key: key.to_string(),
            version_id,
        }))
    }
}

/// Checks a hex SHA-256 and returns it lower-cased (the form the server computes and
/// `acme-rollout models push` records), so plain string equality compares checksums.
pub fn parse_sha256(raw: &str) -> Result<String, String> {
    let trimmed = raw.trim();
    if trimmed.len() == 64 && trimmed.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(trimmed.to_ascii_lowercase())
    } else {
        Err(format!(
            "{raw:?} is not a SHA-256; write it as 64 hex digits (as `sha256sum` prints it)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(raw: &str) -> S3Object {
        match ModelSource::parse(raw) {
            Ok(ModelSource::S3(object)) => object,
            other => panic!("{raw}: {other:?}"),
        }
    }

    #[test]
    fn plain_paths_are_local_files() {
        assert_eq!(
            ModelSource::parse("/models/m.gguf"),
            Ok(ModelSource::File(PathBuf::from("/models/m.gguf")))
        );
        assert_eq!(
            ModelSource::parse("relative/s3://x"),
            Ok(ModelSource::File(PathBuf::from("relative/s3://x")))
        );
    }

    #[test]
    fn s3_addresses_keep_nested_keys_and_the_version() {
        let object = s3("s3://models-eu/bitnet/2b/model.gguf");
        assert_eq!(object.bucket, "models-eu");
        assert_eq!(object.key, "bitnet/2b/model.gguf");
        assert_eq!(object.version_id, None);
        let versioned = s3("s3://models/m.gguf?versionId=3HL4kqtJlcpXroDTDmJ");
        assert_eq!(versioned.version_id.as_deref(), Some("3HL4kqtJlcpXroDTDmJ"));
        assert_eq!(
            versioned.to_string(),
            "s3://models/m.gguf?versionId=3HL4kqtJlcpXroDTDmJ"
        );
    }

    #[test]
    fn malformed_s3_addresses_say_how_to_write_them() {
        for raw in [
            "s3://",
            "s3://bucket",
            "s3://bucket/",
            "s3:///key",
            "s3://Bucket_Name/key",
            "s3://b/k?version=1",
            "s3://b/k?versionId=",
            "s3://b/k?versionId=1&x=2",
        ] {
            let why = ModelSource::parse(raw).unwrap_err();
            assert!(why.contains("s3://bucket/key"), "{raw}: {why}");
        }
    }

    #[test]
    fn sha256_is_checked_and_lower_cased() {
        let upper = "0123456789ABCDEF".repeat(4);
        assert_eq!(parse_sha256(&upper), Ok(upper.to_ascii_lowercase()));
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(63)] {
            assert!(parse_sha256(bad).unwrap_err().contains("64 hex"), "{bad}");
        }
    }
}
