//! The end-of-command summary: how it ended and exactly where each rack stands.

use serde::Serialize;

use crate::outcome::Outcome;

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub run: Option<String>,
    pub outcome: Outcome,
    pub racks: Vec<RackSummary>,
    /// What went wrong, one paragraph (absent when done).
    pub error: Option<String>,
    pub hint: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RackSummary {
    pub rack: String,
    pub region: String,
    /// The release the rack runs now, as the rack reports it (or the journal, if unreachable).
    pub release: Option<String>,
    pub build: Option<String>,
    /// The image digest of the build this run shipped to the rack, if it reports one.
    pub digest: Option<String>,
    /// What this run did to it: untouched, promoted, rolled back, reverted by rack, …
    pub state: String,
    pub detail: Option<String>,
}

impl Summary {
    /// A command that finished what it was asked, with nothing per rack to report.
    pub fn done() -> Summary {
        Summary {
            run: None,
            outcome: Outcome::Done,
            racks: Vec::new(),
            error: None,
            hint: None,
        }
    }

    pub fn failed(outcome: Outcome, error: impl Into<String>, hint: Option<String>) -> Summary {
        Summary {
            run: None,
            outcome,
            racks: Vec::new(),
            error: Some(error.into()),
            hint,
        }
    }
}
