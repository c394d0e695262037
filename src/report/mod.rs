//! Everything the user sees: the human renderer (progress on a TTY, plain lines otherwise, tables)
//! and the JSON-lines stream for CI. One switch, made once in `main`, picks the renderer.
#![allow(clippy::print_stderr, clippy::print_stdout)]

pub mod human;
pub mod json;

use std::io::IsTerminal;
use std::sync::Arc;

use crate::cli::OutputMode;
use crate::rollout::{Reporter, Summary};

/// The chosen renderer for this invocation.
#[derive(Clone)]
pub enum Printer {
    Human(Arc<human::HumanReporter>),
    Json(Arc<json::JsonReporter>),
}

impl Printer {
    pub fn new(mode: OutputMode) -> Printer {
        match mode {
            OutputMode::Json => Printer::Json(Arc::new(json::JsonReporter::new())),
            OutputMode::Human => Printer::Human(Arc::new(human::HumanReporter::new(
                std::io::stderr().is_terminal(),
            ))),
        }
    }

    pub fn reporter(&self) -> Arc<dyn Reporter> {
        match self {
            Printer::Human(h) => h.clone(),
            Printer::Json(j) => j.clone(),
        }
    }

    /// The last thing a command prints: where everything stands, and why if it went wrong.
    pub fn summary(&self, summary: &Summary) {
        match self {
            Printer::Human(h) => h.summary(summary),
            Printer::Json(j) => j.summary(summary),
        }
    }

    /// A result table (status, plan): stdout for humans, one object per row in JSON.
    pub fn table(
        &self,
        kind: &str,
        headers: &[&str],
        rows: &[Vec<String>],
        json_rows: &[serde_json::Value],
    ) {
        match self {
            Printer::Human(h) => h.table(headers, rows),
            Printer::Json(j) => {
                for row in json_rows {
                    j.object(kind, row.clone());
                }
            }
        }
    }

    /// A bytes progress bar on a terminal (human output only); `None` elsewhere.
    pub fn bytes_bar(&self, total: u64, label: &str) -> Option<indicatif::ProgressBar> {
        match self {
            Printer::Human(h) => h.bytes_bar(total, label),
            Printer::Json(_) => None,
        }
    }

    pub fn is_json(&self) -> bool {
        matches!(self, Printer::Json(_))
    }
}
