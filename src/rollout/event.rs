//! What happens during a run, as plain data: the engine emits these to a [`Reporter`], and the
//! significant ones are also the journal's records. Serialised with an `event` tag, they are
//! the JSON stream's wire format (`{"v":1,"ts":…,"event":"rack.promoted",…}`).

use serde::{Deserialize, Serialize};

use crate::outcome::Outcome;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum Event {
    #[serde(rename = "run.started")]
    RunStarted {
        run: String,
        owner: String,
        reason: Option<String>,
        waves: Vec<Vec<String>>,
        racks: Vec<RackStart>,
        bake_secs: Option<u64>,
        rollback_promoted: bool,
        #[serde(default)]
        kind: RunKind,
    },
    #[serde(rename = "run.resumed")]
    RunResumed { run: String, owner: String },
    #[serde(rename = "build.started")]
    BuildStarted { rack: String },
    #[serde(rename = "build.finished")]
    BuildFinished {
        rack: String,
        build: String,
        release: String,
    },
    #[serde(rename = "rack.shipped")]
    Shipped {
        rack: String,
        build: String,
        release: String,
        /// The image digest, the same in every rack (byte-identical images).
        #[serde(default)]
        digest: Option<String>,
    },
    #[serde(rename = "wave.started")]
    WaveStarted { wave: String, racks: Vec<String> },
    #[serde(rename = "rack.promoting")]
    Promoting { rack: String, release: String },
    #[serde(rename = "rack.promoted")]
    Promoted { rack: String, release: String },
    #[serde(rename = "rack.promote_failed")]
    PromoteFailed {
        rack: String,
        release: String,
        /// The rack put the previous release back by itself (`ERROR: rollback`).
        reverted: bool,
        message: String,
    },
    #[serde(rename = "bake.started")]
    BakeStarted { rack: String, secs: u64 },
    /// Progress only; not journaled.
    #[serde(rename = "bake.progress")]
    BakeProgress {
        rack: String,
        elapsed_secs: u64,
        total_secs: u64,
        health_streak: u32,
        samples: u32,
    },
    #[serde(rename = "gate.failed")]
    GateFailed {
        rack: String,
        gate: String,
        evidence: Vec<String>,
    },
    /// One gate of a bake passed, with what it measured (golden answers, metric points).
    #[serde(rename = "gate.passed")]
    GatePassed {
        rack: String,
        gate: String,
        detail: String,
    },
    #[serde(rename = "bake.passed")]
    BakePassed { rack: String, samples: u32 },
    #[serde(rename = "rack.rolling_back")]
    RollingBack { rack: String, to: String },
    #[serde(rename = "rack.rolled_back")]
    RolledBack {
        rack: String,
        to: String,
        release: String,
    },
    #[serde(rename = "rack.rollback_failed")]
    RollbackFailed { rack: String, message: String },
    #[serde(rename = "run.interrupted")]
    Interrupted { run: String },
    #[serde(rename = "run.finished")]
    RunFinished { run: String, outcome: Outcome },
    /// A line of human information (not journaled).
    #[serde(rename = "note")]
    Note { message: String },
}

/// What a run was started for: a deploy, or a manual rollback (which later rollbacks must not
/// take as "the release before").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunKind {
    #[default]
    Deploy,
    Rollback,
    /// `acme-rollout build`: shipped, not promoted.
    Build,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RackStart {
    pub rack: String,
    pub region: String,
    pub previous_release: String,
    pub previous_build: String,
}

impl Event {
    /// Whether the journal keeps this event (progress and notes are only for the screen).
    pub fn is_journaled(&self) -> bool {
        !matches!(self, Event::BakeProgress { .. } | Event::Note { .. })
    }

    pub fn rack(&self) -> Option<&str> {
        match self {
            Event::BuildStarted { rack }
            | Event::BuildFinished { rack, .. }
            | Event::Shipped { rack, .. }
            | Event::Promoting { rack, .. }
            | Event::Promoted { rack, .. }
            | Event::PromoteFailed { rack, .. }
            | Event::BakeStarted { rack, .. }
            | Event::BakeProgress { rack, .. }
            | Event::GateFailed { rack, .. }
            | Event::GatePassed { rack, .. }
            | Event::BakePassed { rack, .. }
            | Event::RollingBack { rack, .. }
            | Event::RolledBack { rack, .. }
            | Event::RollbackFailed { rack, .. } => Some(rack),
            _ => None,
        }
    }
}

/// Receives the engine's events. Implementations draw progress, print JSON, or record them.
pub trait Reporter: Send + Sync {
    fn event(&self, event: &Event);
}
