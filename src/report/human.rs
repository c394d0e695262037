//! Output for a person: one live line per rack with its phase and bake countdown when stderr
//! is a terminal; plain, unanimated lines otherwise; comfy-table tables for results.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use comfy_table::{presets::UTF8_BORDERS_ONLY, ContentArrangement, Table};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::outcome::Outcome;
use crate::rollout::{Event, Reporter, Summary};

pub struct HumanReporter {
    /// Live bars, only on a terminal.
    live: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl HumanReporter {
    pub fn new(tty: bool) -> Self {
        HumanReporter {
            live: tty.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            bars: Mutex::new(HashMap::new()),
        }
    }

    /// Prints a line without tearing the live bars.
    fn line(&self, text: &str) {
        match &self.live {
            Some(m) => {
                let _ = m.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    fn bar(&self, rack: &str) -> Option<ProgressBar> {
        let live = self.live.as_ref()?;
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        Some(
            bars.entry(rack.to_string())
                .or_insert_with(|| {
                    let bar = live.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {prefix:>10.bold} {wide_msg}")
                            .expect("static template"),
                    );
                    bar.set_prefix(rack.to_string());
                    bar.enable_steady_tick(Duration::from_millis(120));
                    bar
                })
                .clone(),
        )
    }

    pub fn bytes_bar(&self, total: u64, label: &str) -> Option<ProgressBar> {
        let live = self.live.as_ref()?;
        let bar = live.add(ProgressBar::new(total));
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}, eta {eta}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.set_message(label.to_string());
        Some(bar)
    }

    pub fn summary(&self, summary: &Summary) {
        for bar in self.bars.lock().unwrap_or_else(|e| e.into_inner()).values() {
            bar.finish_and_clear();
        }
        if !summary.racks.is_empty() {
            let mut table = Table::new();
            table
                .load_preset(UTF8_BORDERS_ONLY)
                .set_content_arrangement(ContentArrangement::Dynamic)
                .set_header(["RACK", "REGION", "RELEASE", "BUILD", "STATE"]);
            for r in &summary.racks {
                table.add_row([
                    r.rack.clone(),
                    r.region.clone(),
                    r.release
                        .clone()
                        .unwrap_or_else(|| "unknown (rack unreachable)".into()),
                    r.build.clone().unwrap_or_else(|| "?".into()),
                    r.state.clone(),
                ]);
            }
            eprintln!("{table}");
        }
        let verdict = match summary.outcome {
            Outcome::Done => "done",
            Outcome::Error => "failed",
            Outcome::RolledBack => "rolled back after a failed gate",
            Outcome::Refused => "refused; nothing was changed",
            Outcome::LockHeld => "another rollout holds the lock",
            Outcome::TimedOut => "timed out",
            Outcome::DrainRefused => "drain refused",
            Outcome::RollbackFailed => "ROLLBACK FAILED: racks are in a mixed state",
        };
        match &summary.run {
            Some(run) => eprintln!("run {run}: {verdict}"),
            None if summary.outcome != Outcome::Done => eprintln!("{verdict}"),
            None => {}
        }
        if let Some(error) = &summary.error {
            let mut lines = error.lines();
            if let Some(first) = lines.next() {
                eprintln!("error: {first}");
            }
            for l in lines {
                eprintln!("  {l}");
            }
        }
        if let Some(hint) = &summary.hint {
            eprintln!("hint: {hint}");
        }
    }

    pub fn table(&self, headers: &[&str], rows: &[Vec<String>]) {
        let mut table = Table::new();
        table
            .load_preset(UTF8_BORDERS_ONLY)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_header(headers.to_vec());
        for row in rows {
            table.add_row(row.clone());
        }
        println!("{table}");
    }
}

/// The one-line description of an event, or `None` for progress-only events.
fn describe(event: &Event) -> Option<String> {
    Some(match event {
        Event::RunStarted {
            run, owner, waves, ..
        } => format!(
            "run {run} by {owner}: waves {}",
            waves
                .iter()
                .map(|w| w.join("+"))
                .collect::<Vec<_>>()
                .join(" → ")
        ),
        Event::RunResumed { run, .. } => format!("resuming run {run}"),
        Event::BuildStarted { rack } => format!("[{rack}] building the app once"),
        Event::BuildFinished {
            rack,
            build,
            release,
        } => {
            format!("[{rack}] built {build} (release {release})")
        }
        Event::Shipped {
            rack,
            build,
            release,
            digest,
        } => format!(
            "[{rack}] has build {build} as release {release}{}",
            digest
                .as_deref()
                .map(|d| format!(" (image {d})"))
                .unwrap_or_default()
        ),
        Event::WaveStarted { wave, racks } => format!("{wave}: {}", racks.join(", ")),
        Event::Promoting { rack, release } => format!("[{rack}] promoting {release}"),
        Event::Promoted { rack, release } => format!("[{rack}] promoted {release}"),
        Event::PromoteFailed { rack, message, .. } => format!("[{rack}] promote failed: {message}"),
        Event::BakeStarted { rack, secs } => format!("[{rack}] baking for {secs}s"),
        Event::BakeProgress { .. } => return None,
        Event::GateFailed {
            rack,
            gate,
            evidence,
        } => {
            let mut s = format!("[{rack}] {gate} gate FAILED");
            for e in evidence {
                s.push_str("\n    ");
                s.push_str(e);
            }
            s
        }
        Event::GatePassed { rack, gate, detail } => {
            format!("[{rack}] {gate} gate passed: {detail}")
        }
        Event::BakePassed { rack, samples } => {
            format!("[{rack}] bake passed ({samples} health samples)")
        }
        Event::RollingBack { rack, to } => format!("[{rack}] rolling back to {to}"),
        Event::RolledBack { rack, to, release } => {
            format!("[{rack}] rolled back to {to} (as release {release})")
        }
        Event::RollbackFailed { rack, message } => format!("[{rack}] ROLLBACK FAILED: {message}"),
        Event::Interrupted { run } => format!("run {run} interrupted"),
        Event::RunFinished { .. } => return None,
        Event::Note { message } => message.clone(),
    })
}

impl Reporter for HumanReporter {
    fn event(&self, event: &Event) {
        if let (Some(rack), Some(_)) = (event.rack(), &self.live) {
            if let Some(bar) = self.bar(rack) {
                match event {
                    Event::BakeProgress {
                        elapsed_secs,
                        total_secs,
                        health_streak,
                        ..
                    } => {
                        let left = total_secs.saturating_sub(*elapsed_secs);
                        bar.set_message(format!(
                            "baking: {left}s left, {health_streak} healthy in a row"
                        ));
                        return;
                    }
                    other => {
                        if let Some(text) = describe(other) {
                            let short = text.split(']').nth(1).unwrap_or(&text).trim().to_string();
                            bar.set_message(short.lines().next().unwrap_or("").to_string());
                        }
                    }
                }
            }
        }
        if let Some(text) = describe(event) {
            self.line(&text);
        }
    }
}
