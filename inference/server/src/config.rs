//! Server settings read from the environment (the variables of the app's `convox.yml`).
//! Parsing is pure: it takes a lookup function, so tests need no process environment,
//! and every refusal names the variable and says how to fix it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::model_source::{parse_sha256, ModelSource};

/// Everything `acme-infer` needs to start.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `PORT`: the TCP port to listen on (all interfaces).
    pub port: u16,
    /// `MODEL_PATH`: the GGUF file to serve, a local path or `s3://bucket/key[?versionId=V]`.
    pub model: ModelSource,
    /// `MODEL_SHA256`: the SHA-256 a release pins its model to; the served file must match.
    pub model_sha256: Option<String>,
    /// `MODEL_CACHE_DIR`: where S3 models are kept between restarts (unset: the default).
    pub model_cache_dir: Option<PathBuf>,
    /// `MODEL_MAX_TOKENS`: the most tokens one request may generate.
    pub max_tokens: usize,
    /// `INFERENCE_THREADS`: worker threads for the matrix products (default: all cores).
    pub threads: usize,
    /// `INFERENCE_MAX_SEQUENCES`: sequences decoded together in one batch.
    pub max_sequences: usize,
    /// `INFERENCE_QUEUE`: requests allowed to wait for a free sequence before 503.
    pub queue_capacity: usize,
    /// `SHUTDOWN_GRACE_SECONDS`: how long in-flight requests may run after SIGTERM.
    pub shutdown_grace: Duration,
    /// `INFERENCE_INT8_OUTPUT`: repack the output layer to int8 rows at load (half its bytes per
    /// token against F16, at a small accuracy cost; off unless asked for).
    pub int8_output: bool,
}

pub const DEFAULT_PORT: u16 = 8080;
pub const DEFAULT_MAX_TOKENS: usize = 512;
pub const DEFAULT_MAX_SEQUENCES: usize = 8;
pub const DEFAULT_QUEUE_CAPACITY: usize = 64;
pub const DEFAULT_SHUTDOWN_GRACE_SECONDS: u64 = 30;

/// A variable whose value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: &'static str,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.variable, self.message)
    }
}

impl std::error::Error for ConfigError {}

fn refuse(variable: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        message: message.into(),
    }
}

/// Parses an integer variable in `min..=max`, or returns `default` when it is unset or empty.
fn integer<T>(
    lookup: &dyn Fn(&str) -> Option<String>,
    variable: &'static str,
    default: T,
    min: u64,
    max: u64,
) -> Result<T, ConfigError>
where
    T: TryFrom<u64> + Copy,
{
    let Some(raw) = lookup(variable).filter(|v| !v.trim().is_empty()) else {
        return Ok(default);
    };
    let out_of_range = || {
        refuse(
            variable,
            format!("{raw:?} is not a whole number from {min} to {max}; set it to one, or unset it for the default"),
        )
    };
    let value: u64 = raw.trim().parse().map_err(|_| out_of_range())?;
    if !(min..=max).contains(&value) {
        return Err(out_of_range());
    }
    T::try_from(value).map_err(|_| out_of_range())
}

fn boolean(
    lookup: &dyn Fn(&str) -> Option<String>,
    variable: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    let Some(raw) = lookup(variable).filter(|v| !v.trim().is_empty()) else {
        return Ok(default);
    };
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(refuse(
            variable,
            format!("{raw:?} is not a switch; set it to 1 or 0 (true/false), or unset it for the default"),
        )),
    }
}

impl Config {
    /// Reads the settings through `lookup` (normally `std::env::var`).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let lookup: &dyn Fn(&str) -> Option<String> = &lookup;
        let model =
            match lookup("MODEL_PATH").filter(|v| !v.trim().is_empty()) {
                None => return Err(refuse(
                    "MODEL_PATH",
                    "is not set; set it to the path of a BitNet .gguf file inside the container",
                )),
                Some(path) => ModelSource::parse(&path).map_err(|why| refuse("MODEL_PATH", why))?,
            };
        let model_sha256 = match lookup("MODEL_SHA256").filter(|v| !v.trim().is_empty()) {
            None => None,
            Some(raw) => Some(parse_sha256(&raw).map_err(|why| refuse("MODEL_SHA256", why))?),
        };
        let model_cache_dir = lookup("MODEL_CACHE_DIR")
            .filter(|v| !v.trim().is_empty())
            .map(PathBuf::from);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Config {
            port: integer(lookup, "PORT", DEFAULT_PORT, 1, u64::from(u16::MAX))?,
            model,
            model_sha256,
            model_cache_dir,
            max_tokens: integer(lookup, "MODEL_MAX_TOKENS", DEFAULT_MAX_TOKENS, 1, 1 << 20)?,
            threads: integer(lookup, "INFERENCE_THREADS", cores, 1, 1024)?,
            max_sequences: integer(
                lookup,
                "INFERENCE_MAX_SEQUENCES",
                DEFAULT_MAX_SEQUENCES,
                1,
                256,
            )?,
            queue_capacity: integer(
                lookup,
                "INFERENCE_QUEUE",
                DEFAULT_QUEUE_CAPACITY,
                1,
                1 << 16,
            )?,
            shutdown_grace: Duration::from_secs(integer(
                lookup,
                "SHUTDOWN_GRACE_SECONDS",
                DEFAULT_SHUTDOWN_GRACE_SECONDS,
                0,
                3600,
            )?),
            int8_output: boolean(lookup, "INFERENCE_INT8_OUTPUT", false)?,
        })
    }

    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn defaults_apply_when_only_the_model_is_set() {
        let config = parse(&[("MODEL_PATH", "/models/m.gguf")]).unwrap();
        assert_eq!(config.port, 8080);
        assert_eq!(config.max_tokens, 512);
        assert_eq!(
            config.model,
            ModelSource::File(PathBuf::from("/models/m.gguf"))
        );
        assert_eq!(config.model_sha256, None);
        assert_eq!(config.model_cache_dir, None);
        assert!(config.threads >= 1);
    }

    #[test]
    fn values_from_the_environment_are_used() {
        let config = parse(&[
            ("MODEL_PATH", "m.gguf"),
            ("PORT", "9000"),
            ("MODEL_MAX_TOKENS", "64"),
            ("INFERENCE_THREADS", "3"),
        ])
        .unwrap();
        assert_eq!(
            (config.port, config.max_tokens, config.threads),
            (9000, 64, 3)
        );
        assert!(!config.int8_output, "the F16 output layer unless asked");
        let int8 = parse(&[("MODEL_PATH", "m.gguf"), ("INFERENCE_INT8_OUTPUT", "1")]).unwrap();
        assert!(int8.int8_output);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (variable, value) in [
            ("PORT", "http"),
            ("PORT", "70000"),
            ("PORT", "0"),
            ("MODEL_MAX_TOKENS", "-5"),
            ("MODEL_MAX_TOKENS", "0"),
            ("INFERENCE_THREADS", "many"),
            ("INFERENCE_INT8_OUTPUT", "maybe"),
        ] {
            let error = parse(&[("MODEL_PATH", "m.gguf"), (variable, value)]).unwrap_err();
            assert_eq!(error.variable, variable);
            assert!(error.to_string().contains(value), "{error}");
        }
    }

    #[test]
    fn missing_or_malformed_model_path_is_refused_with_a_fix() {
        let missing = parse(&[]).unwrap_err();
        assert_eq!(missing.variable, "MODEL_PATH");
        assert!(missing.message.contains("set it"));
        let no_key = parse(&[("MODEL_PATH", "s3://models")]).unwrap_err();
        assert_eq!(no_key.variable, "MODEL_PATH");
        assert!(no_key.message.contains("s3://bucket/key"), "{no_key}");
    }

    #[test]
    fn s3_model_path_pin_and_cache_dir_are_read() {
        let pin = "AB".repeat(32);
        let config = parse(&[
            ("MODEL_PATH", "s3://models/bitnet/2b.gguf?versionId=v7"),
            ("MODEL_SHA256", &pin),
            ("MODEL_CACHE_DIR", "/data/models"),
        ])
        .unwrap();
        let ModelSource::S3(object) = &config.model else {
            panic!("not an S3 source: {:?}", config.model);
        };
        assert_eq!(
            (
                object.bucket.as_str(),
                object.key.as_str(),
                object.version_id.as_deref()
            ),
            ("models", "bitnet/2b.gguf", Some("v7"))
        );
        // Lower-cased, so it compares equal to what the server computes and S3 records.
        assert_eq!(config.model_sha256, Some("ab".repeat(32)));
        assert_eq!(config.model_cache_dir, Some(PathBuf::from("/data/models")));
    }

    #[test]
    fn a_malformed_pin_names_model_sha256() {
        let error = parse(&[("MODEL_PATH", "m.gguf"), ("MODEL_SHA256", "abc123")]).unwrap_err();
        assert_eq!(error.variable, "MODEL_SHA256");
        assert!(error.message.contains("64 hex"), "{error}");
    }
}
