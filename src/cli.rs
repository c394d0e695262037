//! The command line: clap definitions only. Parsing does no I/O; `settings.rs` turns these
//! into what commands take.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "acme-rollout",
    version,
    about = "Staged multi-region rollouts of the inference service over Convox racks",
    long_about = "Builds the inference app once, ships the same build to every rack, promotes it wave by \
wave (canary first), bakes each rack behind health and log gates, and rolls back on its own when a gate fails.",
    after_help = "Examples:\n  acme-rollout plan\n  acme-rollout deploy --reason \"ship v42\"\n  acme-rollout deploy --output json --yes   # in CI\n  acme-rollout status\n  acme-rollout rollback --run 20261203T194501Z-1a2b"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The racks file.
    #[arg(long, global = true, env = crate::env::ACME_RACKS, default_value = "racks.toml", value_name = "FILE")]
    pub racks: PathBuf,
    /// Human output on stderr, or one JSON object per line on stdout.
    #[arg(long, global = true, value_enum, default_value_t = OutputMode::Human)]
    pub output: OutputMode,
    /// Never prompt (implied when stdin is not a terminal).
    #[arg(long, short = 'y', global = true)]
    pub yes: bool,
    /// Why, recorded in the journal.
    #[arg(long, global = true, value_name = "TEXT")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputMode {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build once, ship everywhere, promote wave by wave with bakes; roll back on a failed gate.
    #[command(
        after_help = "Examples:\n  acme-rollout deploy\n  acme-rollout deploy --only us-prod --bake 2m\n  acme-rollout deploy --dry-run\n  acme-rollout deploy --resume 20261203T194501Z-1a2b"
    )]
    Deploy(DeployArgs),
    /// Show what a deploy would do, without changing anything.
    #[command(
        after_help = "Examples:\n  acme-rollout plan\n  acme-rollout plan --only eu --output json"
    )]
    Plan(PlanArgs),
    /// Build once in the first rack and import that build into every other rack, without promoting.
    #[command(
        after_help = "Examples:\n  acme-rollout build\n  acme-rollout deploy --release RABCDEFGHIJ   # then promote what was built"
    )]
    Build(PlanArgs),
    /// Each rack's release, build, health, processes and what the journal says.
    #[command(
        after_help = "Examples:\n  acme-rollout status\n  acme-rollout status --output json"
    )]
    Status,
    /// Put racks back on an earlier release.
    #[command(
        after_help = "Examples:\n  acme-rollout rollback apac\n  acme-rollout rollback --all\n  acme-rollout rollback us-prod --to RABCDEFGHIJ\n  acme-rollout rollback --run 20261203T194501Z-1a2b"
    )]
    Rollback(RollbackArgs),
    /// Inspect or break the deploy lock.
    #[command(subcommand)]
    Lock(LockCommand),
    /// Route53 latency records and health checks for the public name.
    #[command(subcommand)]
    Dns(DnsCommand),
    /// Take a region out of rotation (incident response), with safety checks.
    #[command(
        after_help = "Examples:\n  acme-rollout drain apac\n  acme-rollout drain apac --scale-to-zero\n  acme-rollout drain eu --force --reason \"INC-231: eu-west-1 degraded\""
    )]
    Drain(DrainArgs),
    /// Put a drained region back: scale back, wait for health, back into rotation.
    #[command(after_help = "Examples:\n  acme-rollout restore apac")]
    Restore(RestoreArgs),
    /// Model artifacts in S3: upload, and where each version has replicated.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// S3 cross-region replication of the model bucket.
    #[command(subcommand)]
    Replication(ReplicationCommand),
}

#[derive(Debug, Subcommand)]
pub enum DnsCommand {
    /// Show how Route53 differs from racks.toml.
    Plan,
    /// Change Route53 to match racks.toml (one change batch; waits until in sync).
    Apply,
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The region: rack name, AWS region, alias or unique part of a name.
    #[arg(value_name = "REGION")]
    pub region: String,
    /// Also scale the service to 0 after saving its count (restore scales it back).
    #[arg(long)]
    pub scale_to_zero: bool,
    /// Drain even when a safety check refuses (needs --reason; recorded).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[arg(value_name = "REGION")]
    pub region: String,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Upload a model file to the primary bucket and wait until every region holds it.
    #[command(
        after_help = "Examples:\n  acme-rollout models push ./bitnet-2b4t-i2s.gguf\n  acme-rollout models push model.gguf --name bitnet-v2.gguf --no-wait"
    )]
    Push(ModelsPushArgs),
    /// Each model in the primary bucket and its state in every region.
    Status,
}

#[derive(Debug, Args)]
pub struct ModelsPushArgs {
    /// The model file (GGUF).
    #[arg(value_name = "FILE")]
    pub file: std::path::PathBuf,
    /// Name under the models prefix (default: the file name).
    #[arg(long)]
    pub name: Option<String>,
    /// Return after the upload, without waiting for the regional copies.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for every region to hold the model.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "15m")]
    pub wait: std::time::Duration,
}

#[derive(Debug, Subcommand)]
pub enum ReplicationCommand {
    /// Versioning on every model bucket, and one replication rule per region on the primary.
    Apply,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Deploy only to these racks (name, region, alias or unique part of a name); repeatable.
    #[arg(long, value_name = "RACK")]
    pub only: Vec<String>,
    /// Bake every rack for this long instead of its configured duration (e.g. 90s, 5m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub bake: Option<std::time::Duration>,
    /// Print the plan and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Promote an existing release of the first rack (e.g. from `acme-rollout build`) instead of building.
    #[arg(long, value_name = "RELEASE")]
    pub release: Option<String>,
    /// Continue an interrupted run from its journal.
    #[arg(long, value_name = "RUN", conflicts_with_all = ["only", "bake", "dry_run", "release"])]
    pub resume: Option<String>,
    /// When a later rack fails, keep racks promoted earlier in the run on the new release.
    #[arg(long)]
    pub no_rollback_promoted: bool,
    /// Deploy even though a region is drained.
    #[arg(long)]
    pub allow_drained: bool,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Plan only these racks; repeatable.
    #[arg(long, value_name = "RACK")]
    pub only: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The rack to roll back (name, region, alias or unique part of a name).
    #[arg(value_name = "RACK", conflicts_with_all = ["all", "run"], required_unless_present_any = ["all", "run"])]
    pub rack: Option<String>,
    /// Every rack, in reverse wave order.
    #[arg(long)]
    pub all: bool,
    /// The release to go back to (default: the one the rack ran before the last run).
    #[arg(long, value_name = "RELEASE", conflicts_with = "run")]
    pub to: Option<String>,
    /// Put every rack a run touched back on the release it had before the run.
    #[arg(long, value_name = "RUN")]
    pub run: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Who holds the deploy lock.
    Status,
    /// Remove the lock (only with --force and a --reason; journaled).
    Release {
        #[arg(long)]
        force: bool,
    },
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write e.g. 90s, 5m, 1h 30m)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn rollback_needs_a_target() {
        assert!(Cli::try_parse_from(["acme-rollout", "rollback"]).is_err());
        assert!(Cli::try_parse_from(["acme-rollout", "rollback", "apac"]).is_ok());
        assert!(Cli::try_parse_from(["acme-rollout", "rollback", "--run", "r1"]).is_ok());
        assert!(Cli::try_parse_from(["acme-rollout", "rollback", "apac", "--all"]).is_err());
    }

    #[test]
    fn bad_bake_duration_is_explained() {
        let e = Cli::try_parse_from(["acme-rollout", "deploy", "--bake", "soon"]).unwrap_err();
        assert!(e.to_string().contains("90s"), "{e}");
    }
}
