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
