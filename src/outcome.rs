//! How a command ended, and the exit code that says so (the CI contract, DESIGN §3).

use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// 0: everything asked for is done.
    Done,
    /// 1: an error; the summary says where each rack stands.
    Error,
    /// 2: a gate failed and the rollout was rolled back.
    RolledBack,
    /// 3: refused before any change (preflight, plan, bad input).
    Refused,
    /// 4: another run holds the lock.
    LockHeld,
    /// 5: a step ran out of time.
    TimedOut,
    /// 6: a drain was refused by a safety check.
    DrainRefused,
    /// 7: a rollback failed: racks are in a mixed state and need a human.
    RollbackFailed,
}

impl Outcome {
    /// The name used on the wire (`"rolled-back"`).
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Error => "error",
            Outcome::RolledBack => "rolled-back",
            Outcome::Refused => "refused",
            Outcome::LockHeld => "lock-held",
            Outcome::TimedOut => "timed-out",
            Outcome::DrainRefused => "drain-refused",
            Outcome::RollbackFailed => "rollback-failed",
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Outcome::Done => 0,
            Outcome::Error => 1,
            Outcome::RolledBack => 2,
            Outcome::Refused => 3,
            Outcome::LockHeld => 4,
            Outcome::TimedOut => 5,
            Outcome::DrainRefused => 6,
            Outcome::RollbackFailed => 7,
        }
    }
}

impl From<Outcome> for ExitCode {
    fn from(o: Outcome) -> ExitCode {
        ExitCode::from(o.code())
    }
}

/// An error that already knows which outcome (exit code) it means.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub outcome: Outcome,
    pub message: String,
    pub hint: Option<String>,
}

impl Failure {
    pub fn new(outcome: Outcome, message: impl Into<String>) -> Self {
        Failure {
            outcome,
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}
