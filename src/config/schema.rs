//! The raw shape of racks.toml as serde reads it: unknown keys are refused here, with spans
//! kept on the values that later validation needs to point at.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    pub app: AppFile,
    #[serde(default)]
    pub convox: ConvoxFile,
    #[serde(default)]
    pub state: StateFile,
    #[serde(default)]
    pub bake: BakeFile,
    #[serde(default)]
    pub rollback: RollbackFile,
    #[serde(default)]
    pub rack: Vec<RackFile>,
    #[serde(default)]
    pub wave: Vec<WaveFile>,
    pub dns: Option<DnsFile>,
    pub models: Option<ModelsFile>,
    #[serde(default)]
    pub events: EventsFile,
}

/// `[dns]`: the public name served by a latency set with one record per rack.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DnsFile {
    pub zone: String,
    pub name: Spanned<String>,
    pub ttl: Option<Spanned<u32>>,
    /// Regions that must stay in rotation and healthy; a drain that would go below is refused.
    pub min_in_rotation: Option<usize>,
    pub health_check: Option<DnsHealthFile>,
    /// CPU load from CloudWatch for the drain's headroom check.
    pub cpu: Option<DrainCpuFile>,
}

/// `[dns.cpu]`: how busy each region's service is, for deciding whether the others can take a
/// drained region's traffic.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DrainCpuFile {
    pub namespace: String,
    pub metric: String,
    /// Values may use `{rack}`, `{region}` and `{service}`.
    #[serde(default)]
    pub dimensions: std::collections::BTreeMap<String, String>,
    /// CloudWatch statistic of each point (default Average).
    pub stat: Option<Spanned<String>>,
    pub period: Option<Spanned<String>>,
    /// How far back to average (default 10m).
    pub window: Option<Spanned<String>>,
    /// Percent CPU per process the remaining regions may run at after the drain (default 70).
    pub target: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DnsHealthFile {
    pub path: Option<String>,
    pub port: Option<u16>,
    pub https: Option<bool>,
    pub failure_threshold: Option<Spanned<u8>>,
    pub request_interval: Option<Spanned<u8>>,
}

/// `[models]`: where model artifacts live and how they replicate.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ModelsFile {
    /// The primary bucket, where `models push` uploads.
    pub bucket: String,
    pub region: String,
    /// Key prefix of model objects.
    pub prefix: Option<String>,
    /// The model the app runs: its name under the prefix.
    pub name: String,
    pub replication_role: Option<String>,
    pub part_size_mib: Option<u64>,
    pub parallelism: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsFile {
    /// Publish rollout events as CloudWatch metrics (namespace AcmeRollout).
    pub cloudwatch: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AppFile {
    pub name: String,
    pub service: String,
    pub source: String,
    pub manifest: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConvoxFile {
    pub bin: Option<String>,
    pub call_timeout: Option<Spanned<String>>,
    pub deploy_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StateFile {
    pub dir: Option<String>,
    /// Keep the journal and the lock in S3 instead of `dir`.
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub region: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RollbackFile {
    pub promoted: Option<bool>,
}

/// `[bake]` at the top level, or `bake = {...}` on one rack to override it.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BakeFile {
    pub duration: Option<Spanned<String>>,
    pub health: Option<HealthGateFile>,
    pub logs: Option<LogGateFile>,
    pub golden: Option<GoldenGateFile>,
    pub metrics: Option<Vec<MetricGateFile>>,
}

/// One CloudWatch query checked during the bake.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricGateFile {
    pub name: String,
    pub namespace: String,
    pub metric: String,
    /// Values may use `{rack}` and `{region}`.
    #[serde(default)]
    pub dimensions: std::collections::BTreeMap<String, String>,
    /// Average, Sum, Maximum, Minimum, SampleCount, or a percentile such as p99.
    pub stat: Spanned<String>,
    pub period: Option<Spanned<String>>,
    pub threshold: f64,
    /// `above` (default: fail when a point is above the threshold) or `below`.
    pub fail_when: Option<Spanned<String>>,
    /// Breaching points that fail the gate (default 1).
    pub breaching: Option<u32>,
    /// With no data at all: `fail` (default) or `pass`.
    pub missing: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenGateFile {
    pub enabled: Option<bool>,
    /// JSON lines of golden requests, relative to racks.toml.
    pub file: Option<Spanned<String>>,
    pub rounds: Option<u32>,
    pub p95: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthGateFile {
    pub enabled: Option<bool>,
    pub path: Option<String>,
    pub consecutive: Option<u32>,
    pub max_failures: Option<u32>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogGateFile {
    pub enabled: Option<bool>,
    pub filter: Option<String>,
    pub max_matches: Option<usize>,
    pub interval: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RackFile {
    pub name: Spanned<String>,
    pub region: String,
    #[serde(default)]
    pub aliases: Vec<Spanned<String>>,
    pub bake: Option<BakeFile>,
    /// The regional model bucket (required with `[models]`).
    pub bucket: Option<String>,
    /// Public host name of the rack's service, the CNAME target of its latency record
    /// (default: the domain `convox services` reports).
    pub domain: Option<String>,
    /// Most processes the service may scale to (default: `convox scale` MAX), for drain headroom.
    pub max_scale: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WaveFile {
    pub name: Option<String>,
    pub racks: Spanned<Vec<Spanned<String>>>,
}

/// Turns a toml/serde message into one sentence plus a hint on how to fix it.
pub(super) fn explain(message: &str) -> (String, Option<String>) {
    let message = message.trim().to_string();
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let (field, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
        let hint = if expected.is_empty() {
            "remove it".to_string()
        } else {
            format!("remove it; the keys allowed here are {expected}")
        };
        return (format!("unknown key {field}"), Some(hint));
    }
    if let Some(field) = message.strip_prefix("missing field ") {
        return (
            format!("required key {field} is missing"),
            Some(format!("add {field} to this table")),
        );
    }
    (message, None)
}
