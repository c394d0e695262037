//! Model artifacts: `models push` (multipart upload to the primary bucket with the file's
//! SHA-256 recorded, then wait until every regional bucket holds the same bytes), `models status`,
//! `replication apply`, and the replication gate a deploy passes before it changes anything: each
//! rack's regional bucket must hold the model by checksum, and the release pins it in the app's
//! environment so a rollback restores code and model together.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use acme_aws::s3::{BucketRef, ReplicaState, ReplicationSpec, UploadOptions};

use crate::cli::ModelsPushArgs;
use crate::commands::Settings;
use crate::config::Models;
use crate::outcome::{Failure, Outcome};
use crate::report::Printer;
use crate::rollout::engine::Ctx;
use crate::rollout::{Event, Summary};

fn models_config(ctx: &Ctx) -> Result<&Models> {
    ctx.cfg.models.as_ref().ok_or_else(|| {
        Failure::new(Outcome::Refused, "racks.toml has no [models] table")
            .with_hint("add [models] with bucket, region and name, and a bucket on every [[rack]]")
            .into()
    })
}

fn primary(m: &Models) -> BucketRef {
    BucketRef::new(&m.region, &m.bucket)
}

/// Each rack's regional bucket, in rack order.
fn regional(ctx: &Ctx) -> Vec<(String, BucketRef)> {
    ctx.cfg
        .racks
        .iter()
        .filter_map(|r| {
            r.bucket
                .as_ref()
                .map(|b| (r.name.clone(), BucketRef::new(&r.region, b)))
        })
        .collect()
}

pub async fn push(ctx: &Ctx, settings: &Settings, args: ModelsPushArgs) -> Result<Summary> {
    let m = models_config(ctx)?.clone();
    let name = match args.name {
        Some(n) => n,
        None => args
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .context("the model path has no file name; pass --name")?,
    };
    let key = m.key(&name);
    let size = std::fs::metadata(&args.file)
        .with_context(|| format!("cannot read the model file {}", args.file.display()))?
        .len();
    let aws = ctx.aws().await;
    let bucket = primary(&m);
    let bar = settings
        .printer
        .bytes_bar(size, &format!("s3://{}/{key}", bucket.name));
    let progress = |done: u64, _total: u64| {
        if let Some(b) = &bar {
            b.set_position(done);
        }
    };
    let options = UploadOptions {
        part_size: m.part_size,
        parallelism: m.parallelism,
        resume: true,
    };
    let outcome = aws
        .upload_model(&bucket, &key, &args.file, &options, &progress)
        .await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    ctx.reporter.event(&Event::Note {
        message: format!(
            "uploaded s3://{}/{key}: {} bytes in {} part(s){}, sha256 {}",
            bucket.name,
            outcome.size,
            outcome.parts,
            if outcome.resumed_parts > 0 {
                format!(" ({} resumed)", outcome.resumed_parts)
            } else {
                String::new()
            },
            outcome.sha256
        ),
    });
    if args.no_wait {
        return Ok(Summary::done());
    }
    // Wait until every regional bucket holds the same bytes.
    let destinations: Vec<(String, BucketRef)> = regional(ctx)
        .into_iter()
        .filter(|(_, b)| *b != bucket)
        .collect();
    let deadline = Instant::now() + args.wait;
    let mut reported: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let buckets: Vec<BucketRef> = destinations.iter().map(|(_, b)| b.clone()).collect();
        let checks = aws.check_replicas(&key, &outcome.sha256, &buckets).await?;
        let mut waiting = Vec::new();
        for ((rack, b), check) in destinations.iter().zip(&checks) {
            let state = match &check.state {
                ReplicaState::Matches => "replicated".to_string(),
                ReplicaState::Missing => "pending".to_string(),
                ReplicaState::Differs { sha256 } => format!(
                    "holds other bytes (sha256 {})",
                    sha256.as_deref().unwrap_or("unknown")
                ),
            };
            if reported.get(rack) != Some(&state) {
                ctx.reporter.event(&Event::Note {
                    message: format!("[{rack}] s3://{}/{key}: {state}", b.name),
                });
                reported.insert(rack.clone(), state.clone());
            }
            if !matches!(check.state, ReplicaState::Matches) {
                waiting.push(format!("{rack} ({state})"));
            }
        }
        if waiting.is_empty() {
            return Ok(Summary::done());
        }
        if Instant::now() >= deadline {
            return Err(Failure::new(
                Outcome::TimedOut,
                format!(
                    "uploaded, but after {} not every region holds s3 key {key}: {}",
                    humantime::format_duration(args.wait),
                    waiting.join(", ")
                ),
            )
            .with_hint("check the replication rules (`acme-rollout replication apply`) and `acme-rollout models status`")
            .into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn status(ctx: &Ctx, printer: &Printer) -> Result<Summary> {
    let m = models_config(ctx)?.clone();
    let aws = ctx.aws().await;
    let bucket = primary(&m);
    let keys = aws.list_keys(&bucket, &m.prefix).await?;
    let regions = regional(ctx);
    let mut headers = vec!["MODEL", "VERSION", "SIZE", "SHA256"];
    headers.extend(regions.iter().map(|(r, _)| r.as_str()));
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    for key in keys {
        let Some(facts) = aws.head_model(&bucket, &key).await? else {
            continue;
        };
        let name = key.strip_prefix(&m.prefix).unwrap_or(&key).to_string();
        let mut row = vec![
            name.clone(),
            facts.version_id.clone().unwrap_or_else(|| "-".into()),
            facts.size.to_string(),
            facts
                .sha256
                .clone()
                .unwrap_or_else(|| "(none recorded)".into()),
        ];
        let mut states = serde_json::Map::new();
        for (rack, b) in &regions {
            let state = if *b == bucket {
                "primary".to_string()
            } else {
                match &facts.sha256 {
                    None => "unknown".into(),
                    Some(sha) => match &aws
                        .check_replicas(&key, sha, std::slice::from_ref(b))
                        .await?[0]
                        .state
                    {
                        ReplicaState::Matches => "replicated".into(),
                        ReplicaState::Missing
                            if facts.replication_status.as_deref() == Some("FAILED") =>
                        {
                            "failed".into()
                        }
                        ReplicaState::Missing
                            if facts.replication_status.as_deref() == Some("PENDING") =>
                        {
                            "pending".into()
                        }
                        ReplicaState::Missing => "missing".into(),
                        ReplicaState::Differs { .. } => "differs".into(),
                    },
                }
            };
            states.insert(rack.clone(), json!(state));
            row.push(state);
        }
        json_rows.push(
            json!({"model": name, "key": key, "version": facts.version_id,
            "size": facts.size, "sha256": facts.sha256, "regions": states}),
        );
        rows.push(row);
    }
    printer.table("models.model", &headers, &rows, &json_rows);
    Ok(Summary::done())
}

pub async fn replication_apply(ctx: &Ctx) -> Result<Summary> {
    let m = models_config(ctx)?.clone();
    let role = m.replication_role.clone().ok_or_else(|| {
        Failure::new(Outcome::Refused, "[models] has no replication_role")
            .with_hint("set replication_role to the IAM role ARN S3 assumes to copy objects")
    })?;
    let aws = ctx.aws().await;
    let bucket = primary(&m);
    let destinations: Vec<BucketRef> = regional(ctx)
        .into_iter()
        .map(|(_, b)| b)
        .filter(|b| *b != bucket)
        .collect();
    for b in std::iter::once(&bucket).chain(&destinations) {
        aws.put_versioning(b).await?;
    }
    let outcome = aws
        .apply_replication(
            &bucket,
            &ReplicationSpec {
                role_arn: role,
                destinations: destinations.clone(),
                replicate_delete_markers: false,
            },
        )
        .await?;
    ctx.reporter.event(&Event::Note {
        message: format!(
            "versioning on {} bucket(s); replication from {} to {}: {:?}",
            destinations.len() + 1,
            bucket.name,
            destinations
                .iter()
                .map(|b| b.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            outcome
        ),
    });
    Ok(Summary::done())
}

/// The model a deploy pins, per rack: `MODEL_PATH` in the rack's own bucket (with the version
/// that was verified), `MODEL_SHA256`, and `AWS_REGION`, the bucket's region.
pub type Pins = BTreeMap<String, Vec<(String, String)>>;

/// Refuses (exit 3, before any change) a rack whose regional bucket does not hold the model by
/// checksum; returns the environment each rack's release must carry.
pub async fn replication_gate(ctx: &Ctx, racks: &[String]) -> Result<Pins> {
    let Some(m) = ctx.cfg.models.clone() else {
        return Ok(Pins::new());
    };
    let aws = ctx.aws().await;
    let key = m.key(&m.name);
    let bucket = primary(&m);
    let facts = aws.head_model(&bucket, &key).await?.ok_or_else(|| {
        Failure::new(
            Outcome::Refused,
            format!(
                "the model s3://{}/{key} does not exist; nothing was changed",
                bucket.name
            ),
        )
        .with_hint(format!(
            "upload it: acme-rollout models push FILE --name {}",
            m.name
        ))
    })?;
    let sha = facts.sha256.clone().ok_or_else(|| {
        Failure::new(
            Outcome::Refused,
            format!(
                "s3://{}/{key} has no recorded sha256; nothing was changed",
                bucket.name
            ),
        )
        .with_hint("upload it with `acme-rollout models push`, which records the checksum")
    })?;
    let mut pins = Pins::new();
    let mut problems = Vec::new();
    for name in racks {
        let rack = ctx.rack(name);
        let b = BucketRef::new(
            &rack.region,
            rack.bucket.as_deref().expect("validated with [models]"),
        );
        match aws.head_model(&b, &key).await? {
            Some(f) if f.sha256.as_deref() == Some(sha.as_str()) => {
                // The version that was checked, not "whatever the key holds later": a rollback
                // to this release then brings back this model even after newer pushes.
                let path = match &f.version_id {
                    Some(v) if v != "null" => format!("s3://{}/{key}?versionId={v}", b.name),
                    _ => format!("s3://{}/{key}", b.name),
                };
                pins.insert(
                    name.clone(),
                    vec![
                        ("MODEL_PATH".into(), path),
                        ("MODEL_SHA256".into(), sha.clone()),
                        ("AWS_REGION".into(), rack.region.clone()),
                    ],
                );
            }
            Some(f) => problems.push(format!(
                "{name}: s3://{}/{key} has sha256 {}, but the model to deploy has {sha}",
                b.name,
                f.sha256.as_deref().unwrap_or("(none recorded)")
            )),
            None => problems.push(format!(
                "{name}: s3://{}/{key} is missing (the model to deploy has sha256 {sha})",
                b.name
            )),
        }
    }
    if !problems.is_empty() {
        return Err(Failure::new(
            Outcome::Refused,
            format!(
                "the model has not replicated to every region; nothing was changed:\n  {}",
                problems.join("\n  ")
            ),
        )
        .with_hint(
            "wait for replication (`acme-rollout models status`), or deploy elsewhere with --only",
        )
        .into());
    }
    Ok(pins)
}
