//! `racks.toml`: the schema, its defaults, and validation.
//!
//! Every error carries `file:line:col` and says how to fix it. Nothing here talks to a rack:
//! the result is a plain [`Config`] that the rest of the tool trusts.

pub mod golden;
mod schema;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schema::BakeFile;

/// A validated racks.toml.
#[derive(Debug, Clone)]
pub struct Config {
    pub app: App,
    pub convox: ConvoxSettings,
    pub state: StateSettings,
    pub racks: Vec<Rack>,
    /// Waves in order; each holds indexes into `racks`.
    pub waves: Vec<Wave>,
    pub rollback_promoted: bool,
    pub dns: Option<Dns>,
    pub models: Option<Models>,
    /// Publish rollout events as CloudWatch metrics.
    pub events_cloudwatch: bool,
}

/// `[dns]`: one latency record per rack for the public name, each with a health check.
#[derive(Debug, Clone)]
pub struct Dns {
    pub zone: String,
    pub name: String,
    pub ttl: u32,
    pub min_in_rotation: usize,
    pub health_path: String,
    pub health_port: u16,
    pub health_https: bool,
    pub failure_threshold: u8,
    pub request_interval: u8,
    pub cpu: Option<DrainCpu>,
}

/// `[dns.cpu]`: per-process CPU utilisation (percent) of each region's service in CloudWatch.
#[derive(Debug, Clone, PartialEq)]
pub struct DrainCpu {
    pub namespace: String,
    pub metric: String,
    /// Values may hold `{rack}`, `{region}`, `{service}`.
    pub dimensions: Vec<(String, String)>,
    pub stat: acme_aws::cloudwatch::Stat,
    pub period: Duration,
    pub window: Duration,
    /// Percent per process the remaining regions may reach after taking the drained share.
    pub target: f64,
}

/// `[models]`: the primary model bucket and the model the app runs.
#[derive(Debug, Clone)]
pub struct Models {
    pub bucket: String,
    pub region: String,
    pub prefix: String,
    pub name: String,
    pub replication_role: Option<String>,
    pub part_size: u64,
    pub parallelism: usize,
}

impl Models {
    /// The object key of a model by name.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

/// A CloudWatch query checked during the bake.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricGate {
    pub name: String,
    pub namespace: String,
    pub metric: String,
    pub dimensions: Vec<(String, String)>,
    pub stat: String,
    pub period: Duration,
    pub threshold: f64,
    /// Fail when a point is above the threshold (else: below).
    pub fail_above: bool,
    pub breaching: u32,
    /// No data at all fails the gate.
    pub missing_fails: bool,
}

#[derive(Debug, Clone)]
pub struct App {
    pub name: String,
    pub service: String,
    /// Build context directory, absolute.
    pub source: PathBuf,
    /// convox.yml template, absolute.
    pub manifest: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ConvoxSettings {
    pub bin: Option<PathBuf>,
    pub call_timeout: Duration,
    pub deploy_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct StateSettings {
    /// Local journal + lock directory, absolute.
    pub dir: PathBuf,
    /// When set, the journal and the lock live in S3 instead.
    pub s3: Option<S3State>,
}

#[derive(Debug, Clone)]
pub struct S3State {
    pub bucket: String,
    pub prefix: String,
    pub region: String,
}

#[derive(Debug, Clone)]
pub struct Rack {
    pub name: String,
    pub region: String,
    pub aliases: Vec<String>,
    pub bake: Bake,
    pub bucket: Option<String>,
    pub domain: Option<String>,
    pub max_scale: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Wave {
    pub name: String,
    pub racks: Vec<usize>,
}

/// How a rack is watched after its promote before the rollout moves on.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Bake {
    pub duration: Duration,
    pub health: Option<HealthGate>,
    pub logs: Option<LogGate>,
    pub golden: Option<golden::GoldenGate>,
    pub metrics: Vec<MetricGate>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthGate {
    pub path: String,
    pub consecutive: u32,
    pub max_failures: u32,
    pub interval: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogGate {
    pub filter: String,
    pub max_matches: usize,
    pub interval: Duration,
}

/// A racks.toml problem, located.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{col}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        col: usize,
        message: String,
        hint: Option<String>,
    },
}

impl ConfigError {
    /// Advice shown under the error, if there is any.
    pub fn hint(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => {
                Some("pass --racks FILE, or run from the directory that holds racks.toml")
            }
            ConfigError::Invalid { hint, .. } => hint.as_deref(),
        }
    }
}

impl Config {
    /// Reads and validates a racks.toml.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Validates racks.toml text; `path` is used for messages and to resolve relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let located = Locator { path, text };
        let file: schema::File = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let (message, hint) = schema::explain(e.message());
            located.error(span, message, hint)
        })?;
        validate(file, &located)
    }

    /// Resolves what an operator typed (`apac`, `ap-southeast-1`, `apac-prod`) to one rack.
    pub fn find_rack(&self, query: &str) -> Result<&Rack, RackLookupError> {
        if let Some(r) = self
            .racks
            .iter()
            .find(|r| r.name == query || r.region == query || r.aliases.iter().any(|a| a == query))
        {
            return Ok(r);
        }
        let hits: Vec<&Rack> = self
            .racks
            .iter()
            .filter(|r| r.name.contains(query))
            .collect();
        match hits.as_slice() {
            [one] => Ok(one),
            [] => Err(RackLookupError::Unknown {
                query: query.to_string(),
                known: self.racks.iter().map(|r| r.name.clone()).collect(),
            }),
            many => Err(RackLookupError::Ambiguous {
                query: query.to_string(),
                matches: many.iter().map(|r| r.name.clone()).collect(),
            }),
        }
    }
}

/// A rack name on the command line that matches no rack, or more than one.
#[derive(Debug, thiserror::Error)]
pub enum RackLookupError {
    #[error("no rack matches `{query}` (racks: {})", known.join(", "))]
    Unknown { query: String, known: Vec<String> },
    #[error("`{query}` matches more than one rack: {}", matches.join(", "))]
    Ambiguous { query: String, matches: Vec<String> },
}

struct Locator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    fn error(&self, span: Range<usize>, message: String, hint: Option<String>) -> ConfigError {
        let (line, col) = line_col(self.text, span.start);
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            col,
            message,
            hint,
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn validate(file: schema::File, at: &Locator) -> Result<Config, ConfigError> {
    let base = at
        .path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let absolute = |p: &str| -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let duration = |d: &toml::Spanned<String>| -> Result<Duration, ConfigError> {
        humantime::parse_duration(d.get_ref()).map_err(|e| {
            at.error(
                d.span(),
                format!("`{}` is not a duration: {e}", d.get_ref()),
                Some("write durations like \"90s\", \"5m\" or \"1h 30m\"".into()),
            )
        })
    };

    let load_golden =
        |file: &toml::Spanned<String>| -> Result<Vec<golden::GoldenRequest>, ConfigError> {
            golden::load(&absolute(file.get_ref())).map_err(|e| match e {
            golden::GoldenError::Read(err) => at.error(
                file.span(),
                format!("cannot read the golden requests {}: {err}", file.get_ref()),
                Some("point [bake.golden] file at a JSON-lines file of requests, relative to racks.toml".into()),
            ),
            golden::GoldenError::Line { path, line, message } => ConfigError::Invalid {
                path,
                line,
                col: 1,
                message,
                hint: Some(golden::FORMAT_HINT.into()),
            },
        })
        };
    let resolver = BakeResolver {
        duration: &duration,
        golden: &load_golden,
        locator: at,
    };
    let bake_defaults = resolve_bake(&file.bake, None, &resolver)?;

    let mut racks: Vec<Rack> = Vec::new();
    let mut names: Vec<(String, Range<usize>)> = Vec::new();
    if file.rack.is_empty() {
        return Err(at.error(
            0..0,
            "no racks are defined".into(),
            Some("add at least one [[rack]] table with a name and region".into()),
        ));
    }
    for rack in &file.rack {
        let name = rack.name.get_ref().trim().to_string();
        if name.is_empty() {
            return Err(at.error(rack.name.span(), "rack name is empty".into(), None));
        }
        if names.iter().any(|(n, _)| *n == name) {
            return Err(at.error(
                rack.name.span(),
                format!("rack `{name}` is defined twice"),
                Some("give each [[rack]] a unique name, or remove the duplicate".into()),
            ));
        }
        names.push((name.clone(), rack.name.span()));
        let bake = match &rack.bake {
            Some(b) => resolve_bake(b, Some(&bake_defaults), &resolver)?,
            None => bake_defaults.clone(),
        };
        if file.models.is_some() && rack.bucket.is_none() {
            return Err(at.error(
                rack.name.span(),
                format!("rack `{name}` has no model bucket, and [models] is set"),
                Some("add bucket = \"<regional model bucket>\" to this [[rack]]".into()),
            ));
        }
        racks.push(Rack {
            name,
            region: rack.region.clone(),
            aliases: rack.aliases.iter().map(|a| a.get_ref().clone()).collect(),
            bake,
            bucket: rack.bucket.clone(),
            domain: rack.domain.clone(),
            max_scale: rack.max_scale,
        });
    }

    // An alias (or region) that could mean two racks makes `drain apac` a guess.
    for (i, rack) in file.rack.iter().enumerate() {
        for alias in &rack.aliases {
            let a = alias.get_ref();
            // Report the later definition: it is the one that made the name ambiguous.
            let clash = racks.iter().enumerate().find(|(j, other)| {
                *j != i
                    && (other.name == *a
                        || other.region == *a
                        || (*j < i && other.aliases.iter().any(|o| o == a)))
            });
            if let Some((_, other)) = clash {
                return Err(at.error(
                    alias.span(),
                    format!(
                        "alias `{a}` of rack `{}` also matches rack `{}`",
                        racks[i].name, other.name
                    ),
                    Some("aliases must pick exactly one rack; rename or remove it".into()),
                ));
            }
        }
    }

    let mut waves = Vec::new();
    let mut placed: Vec<Option<String>> = vec![None; racks.len()];
    if file.wave.is_empty() {
        return Err(at.error(
            0..0,
            "no waves are defined".into(),
            Some("add [[wave]] tables, e.g. racks = [\"us-prod\"] first, then the rest".into()),
        ));
    }
    for (w, wave) in file.wave.iter().enumerate() {
        let wave_name = wave
            .name
            .clone()
            .unwrap_or_else(|| format!("wave {}", w + 1));
        if wave.racks.get_ref().is_empty() {
            return Err(at.error(
                wave.racks.span(),
                format!("{wave_name} has no racks"),
                Some("list at least one rack, or delete the empty [[wave]]".into()),
            ));
        }
        let mut members = Vec::new();
        for entry in wave.racks.get_ref() {
            let name = entry.get_ref();
            let Some(i) = racks.iter().position(|r| r.name == *name) else {
                let hint = names
                    .iter()
                    .find(|(n, _)| n.contains(name.as_str()) || name.contains(n.as_str()))
                    .map(|(n, _)| format!("did you mean `{n}`?"))
                    .or_else(|| {
                        Some(format!(
                            "known racks: {}",
                            racks
                                .iter()
                                .map(|r| r.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    });
                return Err(at.error(
                    entry.span(),
                    format!("{wave_name} names rack `{name}`, which is not defined"),
                    hint,
                ));
            };
            if let Some(prev) = &placed[i] {
                return Err(at.error(
                    entry.span(),
                    format!("rack `{name}` is in {prev} and again in {wave_name}"),
                    Some("each rack belongs to exactly one wave".into()),
                ));
            }
            placed[i] = Some(wave_name.clone());
            members.push(i);
        }
        waves.push(Wave {
            name: wave_name,
            racks: members,
        });
    }
    if let Some(i) = placed.iter().position(Option::is_none) {
        return Err(at.error(
            names[i].1.clone(),
            format!(
                "rack `{}` is in no wave, so a deploy would never reach it",
                racks[i].name
            ),
            Some("add it to a [[wave]] racks list".into()),
        ));
    }

    let convox = ConvoxSettings {
        bin: file.convox.bin.as_deref().map(absolute_bin(base)),
        call_timeout: file
            .convox
            .call_timeout
            .as_ref()
            .map(&duration)
            .transpose()?
            .unwrap_or(Duration::from_secs(120)),
        deploy_timeout: file
            .convox
            .deploy_timeout
            .as_ref()
            .map(&duration)
            .transpose()?
            .unwrap_or(Duration::from_secs(40 * 60)),
    };

    Ok(Config {
        app: App {
            name: file.app.name,
            service: file.app.service,
            source: absolute(&file.app.source),
            manifest: absolute(&file.app.manifest),
        },
        convox,
        state: StateSettings {
            dir: absolute(file.state.dir.as_deref().unwrap_or(".acme-rollout")),
            s3: file.state.bucket.clone().map(|bucket| S3State {
                bucket,
                prefix: normalize_prefix(file.state.prefix.as_deref().unwrap_or("acme-rollout/")),
                region: file
                    .state
                    .region
                    .clone()
                    .unwrap_or_else(|| racks[0].region.clone()),
            }),
        },
        racks,
        waves,
        rollback_promoted: file.rollback.promoted.unwrap_or(true),
        dns: file
            .dns
            .as_ref()
            .map(|d| resolve_dns(d, &duration, at))
            .transpose()?,
        models: file.models.as_ref().map(|m| Models {
            bucket: m.bucket.clone(),
            region: m.region.clone(),
            prefix: normalize_prefix(m.prefix.as_deref().unwrap_or("models/")),
            name: m.name.clone(),
            replication_role: m.replication_role.clone(),
            part_size: m.part_size_mib.unwrap_or(64).max(5) * 1024 * 1024,
            parallelism: m.parallelism.unwrap_or(4).max(1),
        }),
        events_cloudwatch: file.events.cloudwatch.unwrap_or(false),
    })
}

/// `""` or `"x"` → `""` or `"x/"`.
fn normalize_prefix(p: &str) -> String {
    let p = p.trim_start_matches('/');
    if p.is_empty() || p.ends_with('/') {
        p.to_string()
    } else {
        format!("{p}/")
    }
}

fn resolve_dns(
    d: &schema::DnsFile,
    duration: ParseDuration,
    at: &Locator,
) -> Result<Dns, ConfigError> {
    let ttl =
        match &d.ttl {
            Some(t) if *t.get_ref() == 0 || *t.get_ref() > 60 => return Err(at.error(
                t.span(),
                format!("ttl {} is out of range", t.get_ref()),
                Some(
                    "use 1 to 60 seconds: a drain waits one TTL for resolvers to forget the region"
                        .into(),
                ),
            )),
            Some(t) => *t.get_ref(),
            None => 60,
        };
    let h = d.health_check.as_ref();
    let failure_threshold = match h.and_then(|h| h.failure_threshold.as_ref()) {
        Some(f) if !(1..=10).contains(f.get_ref()) => {
            return Err(at.error(f.span(), "failure_threshold must be 1 to 10".into(), None))
        }
        Some(f) => *f.get_ref(),
        None => 3,
    };
    let request_interval = match h.and_then(|h| h.request_interval.as_ref()) {
        Some(i) if ![10, 30].contains(i.get_ref()) => {
            return Err(at.error(
                i.span(),
                "request_interval must be 10 or 30 (seconds), as Route53 allows".into(),
                None,
            ))
        }
        Some(i) => *i.get_ref(),
        None => 10,
    };
    let https = h.and_then(|h| h.https).unwrap_or(true);
    let zone = d.zone.trim_end_matches('.').to_ascii_lowercase();
    let name = d.name.get_ref().trim_end_matches('.').to_ascii_lowercase();
    if name != zone && !name.ends_with(&format!(".{zone}")) {
        return Err(at.error(
            d.name.span(),
            format!("the public name `{name}` is not inside the zone `{zone}`"),
            Some(format!(
                "use a name ending in .{zone}, or the zone that holds it"
            )),
        ));
    }
    Ok(Dns {
        zone: d.zone.clone(),
        name,
        ttl,
        min_in_rotation: d.min_in_rotation.unwrap_or(1),
        health_path: h
            .and_then(|h| h.path.clone())
            .unwrap_or_else(|| "/health".into()),
        health_port: h
            .and_then(|h| h.port)
            .unwrap_or(if https { 443 } else { 80 }),
        health_https: https,
        failure_threshold,
        request_interval,
        cpu: d
            .cpu
            .as_ref()
            .map(|c| resolve_drain_cpu(c, duration, at))
            .transpose()?,
    })
}

fn resolve_drain_cpu(
    c: &schema::DrainCpuFile,
    duration: ParseDuration,
    at: &Locator,
) -> Result<DrainCpu, ConfigError> {
    let stat = match &c.stat {
        Some(s) => s.get_ref().parse().map_err(|_| {
            at.error(
                s.span(),
                format!("`{}` is not a CloudWatch statistic", s.get_ref()),
                Some("use Average (the usual), Maximum, or a percentile such as p90".into()),
            )
        })?,
        None => acme_aws::cloudwatch::Stat::Average,
    };
    let target = match &c.target {
        Some(t) if !(*t.get_ref() > 0.0 && *t.get_ref() <= 100.0) => {
            return Err(at.error(
                t.span(),
                format!("target {} is not a percentage", t.get_ref()),
                Some("use a CPU percentage above 0 and at most 100, e.g. 70".into()),
            ))
        }
        Some(t) => *t.get_ref(),
        None => 70.0,
    };
    let period = c
        .period
        .as_ref()
        .map(duration)
        .transpose()?
        .unwrap_or(Duration::from_secs(60));
    let window = c
        .window
        .as_ref()
        .map(duration)
        .transpose()?
        .unwrap_or(Duration::from_secs(600));
    Ok(DrainCpu {
        namespace: c.namespace.clone(),
        metric: c.metric.clone(),
        dimensions: c
            .dimensions
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        stat,
        period,
        window: window.max(period),
        target,
    })
}

/// A `bin` with a slash is a path relative to racks.toml; a bare name is looked up on PATH.
fn absolute_bin(base: &Path) -> impl Fn(&str) -> PathBuf + '_ {
    move |bin| {
        if bin.contains('/') && !Path::new(bin).is_absolute() {
            base.join(bin)
        } else {
            PathBuf::from(bin)
        }
    }
}

type ParseDuration<'a> = &'a dyn Fn(&toml::Spanned<String>) -> Result<Duration, ConfigError>;
type LoadGolden<'a> =
    &'a dyn Fn(&toml::Spanned<String>) -> Result<Vec<golden::GoldenRequest>, ConfigError>;

/// What resolving a `[bake]` table needs from its surroundings.
struct BakeResolver<'a> {
    duration: ParseDuration<'a>,
    golden: LoadGolden<'a>,
    locator: &'a Locator<'a>,
}

fn resolve_metric(
    m: &schema::MetricGateFile,
    duration: ParseDuration,
    at: &Locator,
) -> Result<MetricGate, ConfigError> {
    let stat = m.stat.get_ref().clone();
    let percentile = stat
        .strip_prefix('p')
        .and_then(|p| p.parse::<f64>().ok())
        .is_some_and(|p| (0.0..=100.0).contains(&p));
    if !percentile
        && !["Average", "Sum", "Maximum", "Minimum", "SampleCount"].contains(&stat.as_str())
    {
        return Err(at.error(
            m.stat.span(),
            format!("`{stat}` is not a CloudWatch statistic"),
            Some(
                "use Average, Sum, Maximum, Minimum, SampleCount, or a percentile such as p99"
                    .into(),
            ),
        ));
    }
    let fail_above = match m.fail_when.as_ref().map(|f| (f, f.get_ref().as_str())) {
        None | Some((_, "above")) => true,
        Some((_, "below")) => false,
        Some((f, other)) => {
            return Err(at.error(
                f.span(),
                format!("fail_when = `{other}`"),
                Some("use \"above\" or \"below\"".into()),
            ))
        }
    };
    let missing_fails = match m.missing.as_ref().map(|f| (f, f.get_ref().as_str())) {
        None | Some((_, "fail")) => true,
        Some((_, "pass")) => false,
        Some((f, other)) => {
            return Err(at.error(
                f.span(),
                format!("missing = `{other}`"),
                Some("use \"fail\" (no data fails the gate) or \"pass\"".into()),
            ))
        }
    };
    Ok(MetricGate {
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        metric: m.metric.clone(),
        dimensions: m
            .dimensions
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        stat,
        period: m
            .period
            .as_ref()
            .map(duration)
            .transpose()?
            .unwrap_or(Duration::from_secs(60)),
        threshold: m.threshold,
        fail_above,
        breaching: m.breaching.unwrap_or(1).max(1),
        missing_fails,
    })
}

fn resolve_bake(
    file: &BakeFile,
    defaults: Option<&Bake>,
    resolver: &BakeResolver,
) -> Result<Bake, ConfigError> {
    let duration = resolver.duration;
    let base_golden = defaults.and_then(|d| d.golden.clone());
    let golden = match &file.golden {
        Some(g) if g.enabled == Some(false) => None,
        Some(g) => {
            let requests = match &g.file {
                Some(f) => (resolver.golden)(f)?,
                None => base_golden
                    .as_ref()
                    .map(|b| b.requests.clone())
                    .unwrap_or_default(),
            };
            let base = base_golden.clone();
            Some(golden::GoldenGate {
                requests,
                rounds: g
                    .rounds
                    .or(base.as_ref().map(|b| b.rounds))
                    .unwrap_or(3)
                    .max(1),
                p95: g
                    .p95
                    .as_ref()
                    .map(duration)
                    .transpose()?
                    .or(base.as_ref().map(|b| b.p95))
                    .unwrap_or(Duration::from_secs(5)),
                timeout: g
                    .timeout
                    .as_ref()
                    .map(duration)
                    .transpose()?
                    .or(base.as_ref().map(|b| b.timeout))
                    .unwrap_or(Duration::from_secs(30)),
            })
        }
        None => base_golden,
    };
    let base_health = defaults.and_then(|d| d.health.clone());
    let base_logs = defaults.and_then(|d| d.logs.clone());
    let health = match &file.health {
        Some(h) if h.enabled == Some(false) => None,
        Some(h) => {
            let base = base_health.unwrap_or(HealthGate {
                path: "/health".into(),
                consecutive: 5,
                max_failures: 3,
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(5),
            });
            Some(HealthGate {
                path: h.path.clone().unwrap_or(base.path),
                consecutive: h.consecutive.unwrap_or(base.consecutive).max(1),
                max_failures: h.max_failures.unwrap_or(base.max_failures).max(1),
                interval: h
                    .interval
                    .as_ref()
                    .map(duration)
                    .transpose()?
                    .unwrap_or(base.interval),
                timeout: h
                    .timeout
                    .as_ref()
                    .map(duration)
                    .transpose()?
                    .unwrap_or(base.timeout),
            })
        }
        None => base_health,
    };
    let logs = match &file.logs {
        Some(l) if l.enabled == Some(false) => None,
        Some(l) => {
            let base = base_logs.unwrap_or(LogGate {
                filter: "ERROR".into(),
                max_matches: 0,
                interval: Duration::from_secs(30),
            });
            Some(LogGate {
                filter: l.filter.clone().unwrap_or(base.filter),
                max_matches: l.max_matches.unwrap_or(base.max_matches),
                interval: l
                    .interval
                    .as_ref()
                    .map(duration)
                    .transpose()?
                    .unwrap_or(base.interval),
            })
        }
        None => base_logs,
    };
    let metrics = match &file.metrics {
        Some(list) => list
            .iter()
            .map(|m| resolve_metric(m, duration, resolver.locator))
            .collect::<Result<Vec<_>, _>>()?,
        None => defaults.map(|d| d.metrics.clone()).unwrap_or_default(),
    };
    let duration = match &file.duration {
        Some(d) => duration(d)?,
        None => defaults.map_or(Duration::from_secs(300), |d| d.duration),
    };
    Ok(Bake {
        metrics,
        duration,
        health,
        logs,
        golden: golden.filter(|g| !g.requests.is_empty()),
    })
}

#[cfg(test)]
mod tests;
