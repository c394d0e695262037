//! Route53: latency records with health checks for a public name, planned and applied
//! idempotently, plus the health-check controls `drain`/`restore` use.
//!
//! Ownership convention: for every record name this crate is asked to manage, it owns the whole
//! latency set (every record at that name with a SetIdentifier and a Region). The health checks
//! it creates carry the tags `acme-rollout:record` (the record name) and `acme-rollout:set-id`,
//! which is how it finds its own checks again (for reuse after an interrupted apply, and for
//! clean-up). Health-check inversion and disabling are runtime (drain) state and are never
//! reverted by `apply`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ChangeStatus, HealthCheck, HealthCheckConfig,
    HealthCheckType, ResourceRecord, ResourceRecordSet, ResourceRecordSetRegion, RrType, Tag,
    TagResourceType,
};

use crate::error::{classify, AwsError, Target};
use crate::Aws;

/// Tag naming the record a health check belongs to.
pub const TAG_RECORD: &str = "acme-rollout:record";
/// Tag naming the SetIdentifier a health check belongs to.
pub const TAG_SET_ID: &str = "acme-rollout:set-id";

/// Route53's largest page; a bigger page also keeps clear of moto's pagination bug.
const RECORD_PAGE_SIZE: i32 = 300;
/// Upper bound on pages of one listing: a service that never stops paginating is an error.
const MAX_PAGES: usize = 10_000;
/// `ListTagsForResources` takes at most this many ids.
const TAG_BATCH: usize = 10;

/// A hosted zone, by id (without the `/hostedzone/` prefix) and name (with a trailing dot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostedZone {
    pub id: String,
    pub name: String,
}

/// What Route53 probes to decide whether a region is healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckSpec {
    /// Host name probed (and sent as SNI/Host header).
    pub fqdn: String,
    pub port: u16,
    /// Path of the request, starting with `/`.
    pub path: String,
    /// HTTPS instead of HTTP.
    pub https: bool,
    /// Consecutive failures (1-10) before the check turns unhealthy.
    pub failure_threshold: u8,
    /// Seconds between probes: 10 or 30 (Route53 cannot change it on an existing check).
    pub request_interval: u8,
}

/// One region's member of a latency set: `name` CNAME `target`, answered to clients nearest `region`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredLatencyRecord {
    pub name: String,
    /// Unique per record name (and, for moto's sake, best unique per zone: see the tests).
    pub set_identifier: String,
    /// AWS region of the latency record, e.g. `eu-west-1`.
    pub region: String,
    /// CNAME value: the region's load balancer or rack router host name.
    pub target: String,
    pub ttl: u32,
    pub health_check: HealthCheckSpec,
}

/// A latency record as it is in the zone now.
#[derive(Debug, Clone)]
pub struct CurrentLatencyRecord {
    pub name: String,
    pub set_identifier: String,
    pub record_type: String,
    pub region: Option<String>,
    pub values: Vec<String>,
    pub ttl: Option<i64>,
    pub health_check_id: Option<String>,
    raw: ResourceRecordSet,
}

/// One field that differs between the zone and the desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub field: &'static str,
    pub current: String,
    pub desired: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} -> {}", self.field, self.current, self.desired)
    }
}

/// What `apply` will do to one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordAction {
    Create,
    Update(Vec<Difference>),
    Delete,
    Unchanged,
}

/// Which health check the record will point at after `apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheckAction {
    /// An existing check whose configuration already matches.
    Reuse { id: String },
    /// A new check; `inverted` carries over a drain in progress on the check it replaces.
    Create { inverted: bool },
    /// The record is being deleted.
    None,
}

/// The plan for one record of a latency set.
#[derive(Debug, Clone)]
pub struct RecordChange {
    pub name: String,
    pub set_identifier: String,
    pub action: RecordAction,
    pub health_check: HealthCheckAction,
    pub desired: Option<DesiredLatencyRecord>,
    pub current: Option<CurrentLatencyRecord>,
}

impl fmt::Display for RecordChange {
    /// One line per record, e.g. `api.example.com. [api-euw1] update: target: a -> b`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}] ", self.name, self.set_identifier)?;
        match &self.action {
            RecordAction::Create => f.write_str("create")?,
            RecordAction::Delete => f.write_str("delete")?,
            RecordAction::Unchanged => f.write_str("unchanged")?,
            RecordAction::Update(differences) => {
                f.write_str("update: ")?;
                let listed: Vec<String> = differences.iter().map(ToString::to_string).collect();
                f.write_str(&listed.join("; "))?;
            }
        }
        if matches!(self.action, RecordAction::Create | RecordAction::Update(_))
            && matches!(self.health_check, HealthCheckAction::Create { .. })
        {
            f.write_str(" (new health check)")?;
        }
        Ok(())
    }
}

/// The difference between a zone and the desired latency records.
#[derive(Debug, Clone)]
pub struct DnsPlan {
    pub zone: HostedZone,
    pub changes: Vec<RecordChange>,
    /// Our health checks that nothing will use after `apply`; deleted after the record change.
    pub obsolete_health_checks: Vec<String>,
}

impl DnsPlan {
    /// True when applying the plan would change nothing.
    pub fn is_noop(&self) -> bool {
        self.obsolete_health_checks.is_empty()
            && self
                .changes
                .iter()
                .all(|change| change.action == RecordAction::Unchanged)
    }
}

/// What `apply` did.
#[derive(Debug, Clone, Default)]
pub struct ApplyReport {
    /// The Route53 change id, when a change batch was sent.
    pub change_id: Option<String>,
    /// `(set_identifier, health check id)` of every health check created.
    pub created_health_checks: Vec<(String, String)>,
    pub records_upserted: usize,
    pub records_deleted: usize,
    pub deleted_health_checks: Vec<String>,
    /// How long the change took to become INSYNC.
    pub waited: Duration,
}

impl ApplyReport {
    /// True when nothing was changed.
    pub fn is_noop(&self) -> bool {
        self.change_id.is_none()
            && self.created_health_checks.is_empty()
            && self.deleted_health_checks.is_empty()
    }
}

/// A health check's configuration and runtime switches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckState {
    pub id: String,
    /// `None` when the check is not an HTTP(S) check of a host name (not one of ours).
    pub spec: Option<HealthCheckSpec>,
    pub inverted: bool,
    pub disabled: bool,
    pub record_name: Option<String>,
    pub set_identifier: Option<String>,
}

/// One checker's latest observation of a health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthObservation {
    pub region: Option<String>,
    pub ip_address: Option<String>,
    pub healthy: bool,
    pub report: String,
}

/// What Route53's checkers currently see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckStatus {
    pub observations: Vec<HealthObservation>,
    pub healthy: usize,
    pub unhealthy: usize,
}

/// Lower-case with one trailing dot, the way Route53 prints names.
pub fn normalize_name(name: &str) -> String {
    let trimmed = name.trim().trim_end_matches('.').to_ascii_lowercase();
    format!("{trimmed}.")
}

/// CNAME values compare without case or trailing dot.
fn normalize_target(target: &str) -> String {
    target.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn invalid(op: &'static str, err: impl fmt::Display) -> AwsError {
    AwsError::InvalidInput {
        op,
        message: err.to_string(),
    }
}

impl HealthCheckSpec {
    fn validate(&self, op: &'static str, set_identifier: &str) -> Result<(), AwsError> {
        if self.fqdn.trim().is_empty() {
            return Err(invalid(op, format!("health check of `{set_identifier}` has an empty fqdn; set the host name to probe")));
        }
        if !self.path.starts_with('/') {
            return Err(invalid(
                op,
                format!(
                    "health check path `{}` of `{set_identifier}` must start with `/`",
                    self.path
                ),
            ));
        }
        if !(1..=10).contains(&self.failure_threshold) {
            return Err(invalid(
                op,
                format!(
                    "health check failure_threshold {} of `{set_identifier}` must be 1-10",
                    self.failure_threshold
                ),
            ));
        }
        if self.request_interval != 10 && self.request_interval != 30 {
            return Err(invalid(op, format!("health check request_interval {} of `{set_identifier}` must be 10 or 30 seconds", self.request_interval)));
        }
        if self.port == 0 {
            return Err(invalid(
                op,
                format!("health check port of `{set_identifier}` must not be 0"),
            ));
        }
        Ok(())
    }

    fn to_config(&self, inverted: bool) -> Result<HealthCheckConfig, AwsError> {
        HealthCheckConfig::builder()
            .r#type(if self.https {
                HealthCheckType::Https
            } else {
                HealthCheckType::Http
            })
            .fully_qualified_domain_name(&self.fqdn)
            .port(i32::from(self.port))
            .resource_path(&self.path)
            .failure_threshold(i32::from(self.failure_threshold))
            .request_interval(i32::from(self.request_interval))
            .set_enable_sni(self.https.then_some(true))
            .inverted(inverted)
            .build()
            .map_err(|err| invalid("CreateHealthCheck", err))
    }

    fn from_config(config: &HealthCheckConfig) -> Option<HealthCheckSpec> {
        let https = match config.r#type() {
            HealthCheckType::Https => true,
            HealthCheckType::Http => false,
            _ => return None,
        };
        Some(HealthCheckSpec {
            fqdn: config.fully_qualified_domain_name()?.to_owned(),
            port: u16::try_from(config.port().unwrap_or(if https { 443 } else { 80 })).ok()?,
            path: config.resource_path().unwrap_or("/").to_owned(),
            https,
            failure_threshold: u8::try_from(config.failure_threshold().unwrap_or(3)).ok()?,
            request_interval: u8::try_from(config.request_interval().unwrap_or(30)).ok()?,
        })
    }

    fn differences(&self, desired: &HealthCheckSpec) -> Vec<Difference> {
        let mut out = Vec::new();
        let mut field = |field: &'static str, current: String, wanted: String| {
            if current != wanted {
                out.push(Difference {
                    field,
                    current,
                    desired: wanted,
                });
            }
        };
        field(
            "health check fqdn",
            self.fqdn.to_ascii_lowercase(),
            desired.fqdn.to_ascii_lowercase(),
        );
        field(
            "health check port",
            self.port.to_string(),
            desired.port.to_string(),
        );
        field("health check path", self.path.clone(), desired.path.clone());
        field(
            "health check protocol",
            protocol(self.https).into(),
            protocol(desired.https).into(),
        );
        field(
            "health check failure threshold",
            self.failure_threshold.to_string(),
            desired.failure_threshold.to_string(),
        );
        field(
            "health check interval",
            self.request_interval.to_string(),
            desired.request_interval.to_string(),
        );
        out
    }
}

fn protocol(https: bool) -> &'static str {
    if https {
        "HTTPS"
    } else {
        "HTTP"
    }
}

impl CurrentLatencyRecord {
    fn from_raw(raw: &ResourceRecordSet) -> Option<CurrentLatencyRecord> {
        let set_identifier = raw.set_identifier()?;
        Some(CurrentLatencyRecord {
            name: normalize_name(raw.name()),
            set_identifier: set_identifier.to_owned(),
            record_type: raw.r#type().as_str().to_owned(),
            region: raw.region().map(|region| region.as_str().to_owned()),
            values: raw
                .resource_records()
                .iter()
                .map(|record| record.value().to_owned())
                .collect(),
            ttl: raw.ttl(),
            health_check_id: raw.health_check_id().map(str::to_owned),
            raw: raw.clone(),
        })
    }
}

/// Our health checks, as listed: configuration, switches and tags.
#[derive(Debug, Clone)]
struct KnownHealthCheck {
    state: HealthCheckState,
}

impl Aws {
    /// Finds a public hosted zone by name (`example.com` or `example.com.`).
    pub async fn find_zone(&self, zone_name: &str) -> Result<HostedZone, AwsError> {
        const OP: &str = "ListHostedZonesByName";
        let wanted = normalize_name(zone_name);
        let output = self
            .route53_client()
            .list_hosted_zones_by_name()
            .dns_name(&wanted)
            .max_items(100)
            .send()
            .await
            .map_err(|err| classify(OP, Target::Zone(&wanted), err))?;
        let mut matches: Vec<_> = output
            .hosted_zones()
            .iter()
            .filter(|zone| normalize_name(zone.name()) == wanted)
            .collect();
        // A public zone answers the internet; a private one of the same name only a VPC.
        matches.sort_by_key(|zone| {
            zone.config()
                .map(|config| config.private_zone())
                .unwrap_or(false)
        });
        let zone = matches.first().ok_or_else(|| AwsError::NoSuchZone {
            op: OP,
            zone: wanted.clone(),
        })?;
        Ok(HostedZone {
            id: zone.id().trim_start_matches("/hostedzone/").to_owned(),
            name: normalize_name(zone.name()),
        })
    }

    /// Every record set of a zone, following pagination with a guard against a service
    /// that restarts a page instead of advancing (moto does inside latency sets).
    async fn list_record_sets(
        &self,
        zone: &HostedZone,
    ) -> Result<Vec<ResourceRecordSet>, AwsError> {
        const OP: &str = "ListResourceRecordSets";
        let mut records = Vec::new();
        let mut seen: HashSet<(String, String, Option<String>)> = HashSet::new();
        let mut start: Option<(String, RrType, Option<String>)> = None;
        for _ in 0..MAX_PAGES {
            let mut request = self
                .route53_client()
                .list_resource_record_sets()
                .hosted_zone_id(&zone.id)
                .max_items(RECORD_PAGE_SIZE);
            if let Some((name, record_type, identifier)) = &start {
                request = request
                    .start_record_name(name)
                    .start_record_type(record_type.clone())
                    .set_start_record_identifier(identifier.clone());
            }
            let page = request
                .send()
                .await
                .map_err(|err| classify(OP, Target::Zone(&zone.name), err))?;
            let mut new_on_page = 0;
            for record in page.resource_record_sets() {
                let key = (
                    normalize_name(record.name()),
                    record.r#type().as_str().to_owned(),
                    record.set_identifier().map(str::to_owned),
                );
                if seen.insert(key) {
                    new_on_page += 1;
                    records.push(record.clone());
                }
            }
            if !page.is_truncated() {
                return Ok(records);
            }
            let next = match (page.next_record_name(), page.next_record_type()) {
                (Some(name), Some(record_type)) => (
                    name.to_owned(),
                    record_type.clone(),
                    page.next_record_identifier().map(str::to_owned),
                ),
                _ => break,
            };
            if new_on_page == 0 || start.as_ref() == Some(&next) {
                break;
            }
            start = Some(next);
        }
        Err(AwsError::Other {
            op: OP,
            resource: format!("hosted zone {}", zone.name),
            message: "the record listing did not advance (same page returned again); refusing to work from a \
                      partial listing"
                .to_owned(),
        })
    }

    /// The latency records (records with a SetIdentifier) at `name` in `zone`.
    pub async fn latency_records(
        &self,
        zone: &HostedZone,
        name: &str,
    ) -> Result<Vec<CurrentLatencyRecord>, AwsError> {
        let wanted = normalize_name(name);
        Ok(self
            .list_record_sets(zone)
            .await?
            .iter()
            .filter_map(CurrentLatencyRecord::from_raw)
            .filter(|record| record.name == wanted)
            .collect())
    }

    /// Every health check of the account with its tags.
    async fn list_health_checks(&self) -> Result<HashMap<String, KnownHealthCheck>, AwsError> {
        const OP: &str = "ListHealthChecks";
        let mut checks: Vec<HealthCheck> = Vec::new();
        let mut marker: Option<String> = None;
        let mut finished = false;
        for _ in 0..MAX_PAGES {
            let page = self
                .route53_client()
                .list_health_checks()
                .set_marker(marker.clone())
                .send()
                .await
                .map_err(|err| classify(OP, Target::HealthCheck("*"), err))?;
            checks.extend(page.health_checks().iter().cloned());
            match page.next_marker() {
                Some(next) if page.is_truncated() && marker.as_deref() != Some(next) => {
                    marker = Some(next.to_owned())
                }
                _ => {
                    finished = true;
                    break;
                }
            }
        }
        if !finished {
            return Err(AwsError::Other {
                op: OP,
                resource: "health checks".to_owned(),
                message: "the listing never ended".to_owned(),
            });
        }
        let ids: Vec<String> = checks.iter().map(|check| check.id().to_owned()).collect();
        let tags = self.health_check_tags(&ids).await?;
        Ok(checks
            .iter()
            .map(|check| {
                let id = check.id().to_owned();
                let tags = tags.get(&id);
                let state = health_check_state(check, tags);
                (id, KnownHealthCheck { state })
            })
            .collect())
    }

    async fn health_check_tags(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, HashMap<String, String>>, AwsError> {
        const OP: &str = "ListTagsForResources";
        let mut out = HashMap::new();
        for batch in ids.chunks(TAG_BATCH) {
            let output = self
                .route53_client()
                .list_tags_for_resources()
                .resource_type(TagResourceType::Healthcheck)
                .set_resource_ids(Some(batch.to_vec()))
                .send()
                .await
                .map_err(|err| classify(OP, Target::HealthCheck(&batch.join(",")), err))?;
            for set in output.resource_tag_sets() {
                let Some(id) = set.resource_id() else {
                    continue;
                };
                let tags = set
                    .tags()
                    .iter()
                    .filter_map(|tag| Some((tag.key()?.to_owned(), tag.value()?.to_owned())))
                    .collect();
                out.insert(id.to_owned(), tags);
            }
        }
        Ok(out)
    }

    /// Compares `zone` with `desired` and says, per record, what `apply` would change.
    pub async fn plan(
        &self,
        zone_name: &str,
        desired: &[DesiredLatencyRecord],
    ) -> Result<DnsPlan, AwsError> {
        const OP: &str = "plan DNS";
        validate_desired(OP, desired)?;
        validate_in_zone(OP, zone_name, desired)?;
        let zone = self.find_zone(zone_name).await?;
        let records = self.list_record_sets(&zone).await?;
        let health_checks = self.list_health_checks().await?;
        Ok(build_plan(zone, desired, &records, &health_checks))
    }

    /// Applies a plan: creates the missing health checks, sends one change batch with only what
    /// differs, waits until Route53 reports it INSYNC, then deletes health checks nothing uses.
    /// Applying a plan made right after an `apply` changes nothing.
    pub async fn apply(&self, plan: &DnsPlan) -> Result<ApplyReport, AwsError> {
        let mut report = ApplyReport::default();
        let mut created: HashMap<(String, String), String> = HashMap::new();
        for change in &plan.changes {
            let (HealthCheckAction::Create { inverted }, Some(desired)) =
                (&change.health_check, &change.desired)
            else {
                continue;
            };
            match self.create_health_check(desired, *inverted).await {
                Ok(id) => {
                    report
                        .created_health_checks
                        .push((desired.set_identifier.clone(), id.clone()));
                    created.insert((change.name.clone(), change.set_identifier.clone()), id);
                }
                Err(err) => {
                    self.remove_created_health_checks(&report.created_health_checks)
                        .await;
                    return Err(err);
                }
            }
        }

        let batch = match build_change_batch(plan, &created) {
            Ok(batch) => batch,
            Err(err) => {
                self.remove_created_health_checks(&report.created_health_checks)
                    .await;
                return Err(err);
            }
        };
        if let Some((batch, upserts, deletes)) = batch {
            const OP: &str = "ChangeResourceRecordSets";
            let sent = self
                .route53_client()
                .change_resource_record_sets()
                .hosted_zone_id(&plan.zone.id)
                .change_batch(batch)
                .send()
                .await
                .map_err(|err| classify(OP, Target::Zone(&plan.zone.name), err));
            let output = match sent {
                Ok(output) => output,
                Err(err) => {
                    self.remove_created_health_checks(&report.created_health_checks)
                        .await;
                    return Err(err);
                }
            };
            let change_id = output
                .change_info()
                .map(|info| info.id().trim_start_matches("/change/").to_owned())
                .unwrap_or_default();
            report.records_upserted = upserts;
            report.records_deleted = deletes;
            report.waited = self.wait_for_change(&change_id).await?;
            report.change_id = Some(change_id);
        }

        for id in &plan.obsolete_health_checks {
            self.delete_health_check(id).await?;
            report.deleted_health_checks.push(id.clone());
        }
        Ok(report)
    }

    async fn create_health_check(
        &self,
        desired: &DesiredLatencyRecord,
        inverted: bool,
    ) -> Result<String, AwsError> {
        const OP: &str = "CreateHealthCheck";
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or_default();
        // Unique per attempt: Route53 treats a reused CallerReference as "the same request".
        let caller_reference = format!("acme-rollout-{nanos:x}-{:x}", std::process::id());
        let output = self
            .route53_client()
            .create_health_check()
            .caller_reference(caller_reference)
            .health_check_config(desired.health_check.to_config(inverted)?)
            .send()
            .await
            .map_err(|err| classify(OP, Target::HealthCheck(&desired.set_identifier), err))?;
        let id = output
            .health_check()
            .map(|check| check.id().to_owned())
            .ok_or_else(|| AwsError::Other {
                op: OP,
                resource: format!("health check for {}", desired.set_identifier),
                message: "the response carried no health check".to_owned(),
            })?;
        let tagged = self
            .route53_client()
            .change_tags_for_resource()
            .resource_type(TagResourceType::Healthcheck)
            .resource_id(&id)
            .add_tags(
                Tag::builder()
                    .key(TAG_RECORD)
                    .value(normalize_name(&desired.name))
                    .build(),
            )
            .add_tags(
                Tag::builder()
                    .key(TAG_SET_ID)
                    .value(&desired.set_identifier)
                    .build(),
            )
            .add_tags(
                Tag::builder()
                    .key("Name")
                    .value(format!("acme-rollout {}", desired.set_identifier))
                    .build(),
            )
            .send()
            .await
            .map_err(|err| classify("ChangeTagsForResource", Target::HealthCheck(&id), err));
        if let Err(err) = tagged {
            // An untagged check would never be found again: do not leave it behind.
            let _ = self.delete_health_check(&id).await;
            return Err(err);
        }
        Ok(id)
    }

    async fn remove_created_health_checks(&self, created: &[(String, String)]) {
        for (_, id) in created {
            // Best effort: a leftover is tagged and is cleaned up by the next apply's plan.
            let _ = self.delete_health_check(id).await;
        }
    }

    /// Deletes a health check (used for clean-up of our own checks).
    pub async fn delete_health_check(&self, id: &str) -> Result<(), AwsError> {
        const OP: &str = "DeleteHealthCheck";
        self.route53_client()
            .delete_health_check()
            .health_check_id(id)
            .send()
            .await
            .map_err(|err| classify(OP, Target::HealthCheck(id), err))?;
        Ok(())
    }

    /// Polls `GetChange` until the change is INSYNC or the configured deadline passes.
    pub async fn wait_for_change(&self, change_id: &str) -> Result<Duration, AwsError> {
        const OP: &str = "GetChange";
        let started = Instant::now();
        loop {
            let output = self
                .route53_client()
                .get_change()
                .id(change_id)
                .send()
                .await
                .map_err(|err| classify(OP, Target::Change(change_id), err))?;
            if output.change_info().map(|info| info.status()) == Some(&ChangeStatus::Insync) {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= self.options.change_deadline {
                return Err(AwsError::TimedOut {
                    op: OP,
                    what: format!("Route53 change {change_id} reaching INSYNC"),
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(self.options.change_poll_interval).await;
        }
    }

    /// Inverts (drains) or un-inverts (restores) a health check.
    pub async fn set_inverted(
        &self,
        health_check_id: &str,
        inverted: bool,
    ) -> Result<(), AwsError> {
        const OP: &str = "UpdateHealthCheck";
        self.route53_client()
            .update_health_check()
            .health_check_id(health_check_id)
            .inverted(inverted)
            .send()
            .await
            .map_err(|err| classify(OP, Target::HealthCheck(health_check_id), err))?;
        Ok(())
    }

    /// A health check's configuration, switches and our tags.
    pub async fn get_health_check(
        &self,
        health_check_id: &str,
    ) -> Result<HealthCheckState, AwsError> {
        const OP: &str = "GetHealthCheck";
        let output = self
            .route53_client()
            .get_health_check()
            .health_check_id(health_check_id)
            .send()
            .await
            .map_err(|err| classify(OP, Target::HealthCheck(health_check_id), err))?;
        let check = output
            .health_check()
            .ok_or_else(|| AwsError::NoSuchHealthCheck {
                op: OP,
                id: health_check_id.to_owned(),
            })?;
        let tags = self
            .health_check_tags(&[health_check_id.to_owned()])
            .await?;
        Ok(health_check_state(check, tags.get(health_check_id)))
    }

    /// What Route53's checkers report for a health check right now.
    pub async fn health_check_status(
        &self,
        health_check_id: &str,
    ) -> Result<HealthCheckStatus, AwsError> {
        const OP: &str = "GetHealthCheckStatus";
        let output = self
            .route53_client()
            .get_health_check_status()
            .health_check_id(health_check_id)
            .send()
            .await
            .map_err(|err| classify(OP, Target::HealthCheck(health_check_id), err))?;
        let observations: Vec<HealthObservation> = output
            .health_check_observations()
            .iter()
            .map(|observation| {
                let report = observation
                    .status_report()
                    .and_then(|report| report.status())
                    .unwrap_or("")
                    .to_owned();
                HealthObservation {
                    region: observation
                        .region()
                        .map(|region| region.as_str().to_owned()),
                    ip_address: observation.ip_address().map(str::to_owned),
                    // Route53's checkers prefix every passing report with "Success".
                    healthy: report.starts_with("Success"),
                    report,
                }
            })
            .collect();
        let healthy = observations
            .iter()
            .filter(|observation| observation.healthy)
            .count();
        Ok(HealthCheckStatus {
            unhealthy: observations.len() - healthy,
            healthy,
            observations,
        })
    }
}

fn health_check_state(
    check: &HealthCheck,
    tags: Option<&HashMap<String, String>>,
) -> HealthCheckState {
    let config = check.health_check_config();
    HealthCheckState {
        id: check.id().to_owned(),
        spec: config.and_then(HealthCheckSpec::from_config),
        inverted: config
            .and_then(HealthCheckConfig::inverted)
            .unwrap_or(false),
        disabled: config
            .and_then(HealthCheckConfig::disabled)
            .unwrap_or(false),
        record_name: tags.and_then(|tags| tags.get(TAG_RECORD)).cloned(),
        set_identifier: tags.and_then(|tags| tags.get(TAG_SET_ID)).cloned(),
    }
}

/// Every record must live in the zone it is planned against.
fn validate_in_zone(
    op: &'static str,
    zone_name: &str,
    desired: &[DesiredLatencyRecord],
) -> Result<(), AwsError> {
    let zone = normalize_name(zone_name);
    for record in desired {
        let name = normalize_name(&record.name);
        if name != zone && !name.ends_with(&format!(".{zone}")) {
            return Err(invalid(
                op,
                format!(
                    "record `{}` (`{}`) is not inside zone `{zone}`; use a name ending in `{zone}` or plan it against its own zone",
                    record.name, record.set_identifier
                ),
            ));
        }
    }
    Ok(())
}

fn validate_desired(op: &'static str, desired: &[DesiredLatencyRecord]) -> Result<(), AwsError> {
    let mut keys = HashSet::new();
    for record in desired {
        if record.set_identifier.trim().is_empty() {
            return Err(invalid(
                op,
                format!("record `{}` has an empty set identifier", record.name),
            ));
        }
        if !keys.insert((normalize_name(&record.name), record.set_identifier.clone())) {
            return Err(invalid(
                op,
                format!(
                    "set identifier `{}` appears twice for `{}`; each region needs its own",
                    record.set_identifier, record.name
                ),
            ));
        }
        if record.target.trim().is_empty() {
            return Err(invalid(
                op,
                format!(
                    "record `{}` (`{}`) has an empty target",
                    record.name, record.set_identifier
                ),
            ));
        }
        if !ResourceRecordSetRegion::values().contains(&record.region.as_str()) {
            return Err(invalid(
                op,
                format!(
                    "`{}` is not an AWS region Route53 latency records support (record `{}`)",
                    record.region, record.set_identifier
                ),
            ));
        }
        record.health_check.validate(op, &record.set_identifier)?;
    }
    Ok(())
}

/// Pure planning: zone contents + our health checks + desired state -> plan.
fn build_plan(
    zone: HostedZone,
    desired: &[DesiredLatencyRecord],
    records: &[ResourceRecordSet],
    health_checks: &HashMap<String, KnownHealthCheck>,
) -> DnsPlan {
    let managed_names: HashSet<String> = desired
        .iter()
        .map(|record| normalize_name(&record.name))
        .collect();
    let current: Vec<CurrentLatencyRecord> = records
        .iter()
        .filter_map(CurrentLatencyRecord::from_raw)
        .collect();
    let managed_current: Vec<&CurrentLatencyRecord> = current
        .iter()
        .filter(|record| managed_names.contains(&record.name) && record.region.is_some())
        .collect();
    let referenced_elsewhere: HashSet<&str> = current
        .iter()
        .filter(|record| !(managed_names.contains(&record.name) && record.region.is_some()))
        .filter_map(|record| record.health_check_id.as_deref())
        .collect();
    let referenced_anywhere: HashSet<&str> = current
        .iter()
        .filter_map(|record| record.health_check_id.as_deref())
        .collect();

    let mut changes = Vec::new();
    let mut kept_health_checks: HashSet<String> = HashSet::new();
    let mut desired_keys = HashSet::new();
    for wanted in desired {
        let name = normalize_name(&wanted.name);
        desired_keys.insert((
            name.clone(),
            "CNAME".to_owned(),
            wanted.set_identifier.clone(),
        ));
        let existing = managed_current
            .iter()
            .find(|record| {
                record.name == name
                    && record.set_identifier == wanted.set_identifier
                    && record.record_type == "CNAME"
            })
            .copied();
        let existing_check = existing
            .and_then(|record| record.health_check_id.as_deref())
            .and_then(|id| health_checks.get(id));
        let health_check = match existing_check {
            Some(check) if check.state.spec.as_ref() == Some(&wanted.health_check) => {
                HealthCheckAction::Reuse {
                    id: check.state.id.clone(),
                }
            }
            _ => match find_orphan(health_checks, &name, wanted, &referenced_anywhere) {
                Some(id) => HealthCheckAction::Reuse { id },
                None => HealthCheckAction::Create {
                    inverted: existing_check
                        .map(|check| check.state.inverted)
                        .unwrap_or(false),
                },
            },
        };
        if let HealthCheckAction::Reuse { id } = &health_check {
            kept_health_checks.insert(id.clone());
        }
        let action = match existing {
            None => RecordAction::Create,
            Some(record) => {
                let differences = record_differences(record, wanted, existing_check, &health_check);
                if differences.is_empty() {
                    RecordAction::Unchanged
                } else {
                    RecordAction::Update(differences)
                }
            }
        };
        changes.push(RecordChange {
            name,
            set_identifier: wanted.set_identifier.clone(),
            action,
            health_check,
            desired: Some(wanted.clone()),
            current: existing.cloned(),
        });
    }

    for record in &managed_current {
        let key = (
            record.name.clone(),
            record.record_type.clone(),
            record.set_identifier.clone(),
        );
        if desired_keys.contains(&key) {
            continue;
        }
        changes.push(RecordChange {
            name: record.name.clone(),
            set_identifier: record.set_identifier.clone(),
            action: RecordAction::Delete,
            health_check: HealthCheckAction::None,
            desired: None,
            current: Some((*record).clone()),
        });
    }

    let mut obsolete_health_checks: Vec<String> = health_checks
        .values()
        .filter(|check| {
            check
                .state
                .record_name
                .as_ref()
                .is_some_and(|record| managed_names.contains(&normalize_name(record)))
        })
        .map(|check| check.state.id.clone())
        .filter(|id| {
            !kept_health_checks.contains(id) && !referenced_elsewhere.contains(id.as_str())
        })
        .collect();
    obsolete_health_checks.sort();

    DnsPlan {
        zone,
        changes,
        obsolete_health_checks,
    }
}

/// One of our checks for this record whose configuration matches and that no record uses:
/// left over from an apply that created it and then failed.
fn find_orphan(
    health_checks: &HashMap<String, KnownHealthCheck>,
    name: &str,
    wanted: &DesiredLatencyRecord,
    referenced: &HashSet<&str>,
) -> Option<String> {
    let mut candidates: Vec<&KnownHealthCheck> = health_checks
        .values()
        .filter(|check| {
            check
                .state
                .record_name
                .as_deref()
                .map(normalize_name)
                .as_deref()
                == Some(name)
                && check.state.set_identifier.as_deref() == Some(wanted.set_identifier.as_str())
                && check.state.spec.as_ref() == Some(&wanted.health_check)
                && !referenced.contains(check.state.id.as_str())
        })
        .collect();
    candidates.sort_by(|a, b| a.state.id.cmp(&b.state.id));
    candidates.first().map(|check| check.state.id.clone())
}

fn record_differences(
    record: &CurrentLatencyRecord,
    wanted: &DesiredLatencyRecord,
    existing_check: Option<&KnownHealthCheck>,
    health_check: &HealthCheckAction,
) -> Vec<Difference> {
    let mut out = Vec::new();
    let current_target = record
        .values
        .iter()
        .map(|value| normalize_target(value))
        .collect::<Vec<_>>()
        .join(",");
    if current_target != normalize_target(&wanted.target) {
        out.push(Difference {
            field: "target",
            current: record.values.join(","),
            desired: wanted.target.clone(),
        });
    }
    if record.ttl != Some(i64::from(wanted.ttl)) {
        out.push(Difference {
            field: "ttl",
            current: record
                .ttl
                .map(|ttl| ttl.to_string())
                .unwrap_or_else(|| "none".into()),
            desired: wanted.ttl.to_string(),
        });
    }
    if record.region.as_deref() != Some(wanted.region.as_str()) {
        out.push(Difference {
            field: "region",
            current: record.region.clone().unwrap_or_else(|| "none".into()),
            desired: wanted.region.clone(),
        });
    }
    match health_check {
        HealthCheckAction::Reuse { id }
            if record.health_check_id.as_deref() == Some(id.as_str()) => {}
        HealthCheckAction::Reuse { id } => out.push(Difference {
            field: "health check",
            current: record
                .health_check_id
                .clone()
                .unwrap_or_else(|| "none".into()),
            desired: id.clone(),
        }),
        HealthCheckAction::Create { .. } => {
            match existing_check.and_then(|check| check.state.spec.as_ref()) {
                Some(spec) => out.extend(spec.differences(&wanted.health_check)),
                None => out.push(Difference {
                    field: "health check",
                    current: record
                        .health_check_id
                        .clone()
                        .unwrap_or_else(|| "none".into()),
                    desired: "new".into(),
                }),
            }
        }
        HealthCheckAction::None => {}
    }
    out
}

/// One change batch with only what differs: `(batch, upserts, deletes)`, or `None` if nothing does.
fn build_change_batch(
    plan: &DnsPlan,
    created: &HashMap<(String, String), String>,
) -> Result<Option<(ChangeBatch, usize, usize)>, AwsError> {
    const OP: &str = "ChangeResourceRecordSets";
    let mut changes = Vec::new();
    let (mut upserts, mut deletes) = (0, 0);
    for change in &plan.changes {
        match (&change.action, &change.desired, &change.current) {
            (RecordAction::Unchanged, _, _) => {}
            (RecordAction::Delete, _, Some(current)) => {
                deletes += 1;
                changes.push(
                    Change::builder()
                        .action(ChangeAction::Delete)
                        .resource_record_set(current.raw.clone())
                        .build()
                        .map_err(|err| invalid(OP, err))?,
                );
            }
            (RecordAction::Create | RecordAction::Update(_), Some(desired), _) => {
                let health_check_id = match &change.health_check {
                    HealthCheckAction::Reuse { id } => Some(id.clone()),
                    _ => created
                        .get(&(change.name.clone(), change.set_identifier.clone()))
                        .cloned(),
                };
                let record = ResourceRecordSet::builder()
                    .name(normalize_name(&desired.name))
                    .r#type(RrType::Cname)
                    .set_identifier(&desired.set_identifier)
                    .region(ResourceRecordSetRegion::from(desired.region.as_str()))
                    .ttl(i64::from(desired.ttl))
                    .set_health_check_id(health_check_id)
                    .resource_records(
                        ResourceRecord::builder()
                            .value(&desired.target)
                            .build()
                            .map_err(|err| invalid(OP, err))?,
                    )
                    .build()
                    .map_err(|err| invalid(OP, err))?;
                upserts += 1;
                changes.push(
                    Change::builder()
                        .action(ChangeAction::Upsert)
                        .resource_record_set(record)
                        .build()
                        .map_err(|err| invalid(OP, err))?,
                );
            }
            _ => {}
        }
    }
    if changes.is_empty() {
        return Ok(None);
    }
    let batch = ChangeBatch::builder()
        .comment("acme-rollout dns apply")
        .set_changes(Some(changes))
        .build()
        .map_err(|err| invalid(OP, err))?;
    Ok(Some((batch, upserts, deletes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> HealthCheckSpec {
        HealthCheckSpec {
            fqdn: "eu.api.example.com".into(),
            port: 443,
            path: "/health".into(),
            https: true,
            failure_threshold: 3,
            request_interval: 10,
        }
    }

    fn desired(target: &str) -> DesiredLatencyRecord {
        DesiredLatencyRecord {
            name: "api.example.com".into(),
            set_identifier: "api-euw1".into(),
            region: "eu-west-1".into(),
            target: target.into(),
            ttl: 60,
            health_check: spec(),
        }
    }

    fn zone() -> HostedZone {
        HostedZone {
            id: "Z1".into(),
            name: "example.com.".into(),
        }
    }

    fn record(target: &str, health_check_id: &str) -> ResourceRecordSet {
        ResourceRecordSet::builder()
            .name("api.example.com.")
            .r#type(RrType::Cname)
            .set_identifier("api-euw1")
            .region(ResourceRecordSetRegion::EuWest1)
            .ttl(60)
            .health_check_id(health_check_id)
            .resource_records(ResourceRecord::builder().value(target).build().unwrap())
            .build()
            .unwrap()
    }

    fn ours(id: &str, spec: HealthCheckSpec, inverted: bool) -> (String, KnownHealthCheck) {
        (
            id.to_owned(),
            KnownHealthCheck {
                state: HealthCheckState {
                    id: id.to_owned(),
                    spec: Some(spec),
                    inverted,
                    disabled: false,
                    record_name: Some("api.example.com.".into()),
                    set_identifier: Some("api-euw1".into()),
                },
            },
        )
    }

    #[test]
    fn an_identical_record_is_unchanged_and_keeps_its_health_check() {
        let checks = HashMap::from([ours("hc1", spec(), false)]);
        let plan = build_plan(
            zone(),
            &[desired("eu.lb.example.net")],
            &[record("eu.lb.example.net", "hc1")],
            &checks,
        );
        assert!(plan.is_noop(), "{plan:?}");
        assert_eq!(
            plan.changes[0].health_check,
            HealthCheckAction::Reuse { id: "hc1".into() }
        );
    }

    #[test]
    fn a_new_target_is_an_update_naming_old_and_new() {
        let checks = HashMap::from([ours("hc1", spec(), false)]);
        let plan = build_plan(
            zone(),
            &[desired("eu2.lb.example.net")],
            &[record("eu.lb.example.net", "hc1")],
            &checks,
        );
        let RecordAction::Update(differences) = &plan.changes[0].action else {
            panic!("expected an update, got {:?}", plan.changes[0].action)
        };
        assert_eq!(differences.len(), 1);
        assert_eq!(
            differences[0].to_string(),
            "target: eu.lb.example.net -> eu2.lb.example.net"
        );
        assert_eq!(
            plan.changes[0].to_string(),
            "api.example.com. [api-euw1] update: target: eu.lb.example.net -> eu2.lb.example.net"
        );
    }

    #[test]
    fn a_changed_probe_path_replaces_the_check_and_keeps_a_drain() {
        let checks = HashMap::from([ours("hc1", spec(), true)]);
        let mut wanted = desired("eu.lb.example.net");
        wanted.health_check.path = "/ready".into();
        let plan = build_plan(
            zone(),
            &[wanted],
            &[record("eu.lb.example.net", "hc1")],
            &checks,
        );
        assert_eq!(
            plan.changes[0].health_check,
            HealthCheckAction::Create { inverted: true }
        );
        assert_eq!(plan.obsolete_health_checks, vec!["hc1".to_owned()]);
        let RecordAction::Update(differences) = &plan.changes[0].action else {
            panic!("expected an update")
        };
        assert_eq!(differences[0].field, "health check path");
        assert!(
            plan.changes[0].to_string().ends_with("(new health check)"),
            "{}",
            plan.changes[0]
        );
    }

    #[test]
    fn a_check_left_over_by_a_failed_apply_is_reused() {
        let checks = HashMap::from([ours("orphan", spec(), false)]);
        let plan = build_plan(zone(), &[desired("eu.lb.example.net")], &[], &checks);
        assert_eq!(plan.changes[0].action, RecordAction::Create);
        assert_eq!(
            plan.changes[0].health_check,
            HealthCheckAction::Reuse {
                id: "orphan".into()
            }
        );
        assert!(plan.obsolete_health_checks.is_empty());
    }

    #[test]
    fn a_region_no_longer_desired_is_deleted_with_its_check() {
        let checks = HashMap::from([ours("hc1", spec(), false)]);
        let plan = build_plan(zone(), &[], &[record("eu.lb.example.net", "hc1")], &checks);
        // Nothing desired means no managed names: an empty desired list never deletes.
        assert!(plan.changes.is_empty());

        let mut other = desired("us.lb.example.net");
        other.set_identifier = "api-use1".into();
        other.region = "us-east-1".into();
        let plan = build_plan(
            zone(),
            &[other],
            &[record("eu.lb.example.net", "hc1")],
            &checks,
        );
        let deleted: Vec<_> = plan
            .changes
            .iter()
            .filter(|change| change.action == RecordAction::Delete)
            .map(|change| change.set_identifier.as_str())
            .collect();
        assert_eq!(deleted, vec!["api-euw1"]);
        assert_eq!(plan.obsolete_health_checks, vec!["hc1".to_owned()]);
    }

    #[test]
    fn bad_input_is_refused_with_the_field_and_the_fix() {
        let mut wanted = desired("eu.lb.example.net");
        wanted.health_check.request_interval = 15;
        let err = validate_desired("plan DNS", &[wanted])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("request_interval 15") && err.contains("10 or 30"),
            "{err}"
        );

        let mut wanted = desired("eu.lb.example.net");
        wanted.region = "mars-north-1".into();
        let err = validate_desired("plan DNS", &[wanted])
            .unwrap_err()
            .to_string();
        assert!(err.contains("mars-north-1"), "{err}");

        let err = validate_desired("plan DNS", &[desired("a.example"), desired("b.example")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("appears twice"), "{err}");
    }

    #[test]
    fn a_record_outside_the_zone_is_refused_naming_both() {
        let wanted = desired("eu.lb.example.net");
        assert!(validate_in_zone("plan DNS", "example.com", std::slice::from_ref(&wanted)).is_ok());
        assert!(validate_in_zone(
            "plan DNS",
            "api.example.com.",
            std::slice::from_ref(&wanted)
        )
        .is_ok());
        let err = validate_in_zone("plan DNS", "ample.com", &[wanted])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("api.example.com") && err.contains("ample.com."),
            "{err}"
        );
    }

    #[test]
    fn names_compare_without_case_or_trailing_dot() {
        assert_eq!(normalize_name("API.Example.com"), "api.example.com.");
        assert_eq!(normalize_name("api.example.com."), "api.example.com.");
    }
}
