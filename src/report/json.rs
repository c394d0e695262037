//! The CI stream: one JSON object per line on stdout, versioned (`"v":1`), ending with a
//! `summary` object whatever happened. A closed stdout (`| head`) ends output quietly.

use std::io::Write;
use std::sync::Mutex;

use serde_json::{json, Map, Value};

use crate::rollout::journal::now_rfc3339;
use crate::rollout::{Event, Reporter, Summary};

pub const WIRE_VERSION: u32 = 1;

pub struct JsonReporter {
    out: Mutex<std::io::Stdout>,
}

impl JsonReporter {
    pub fn new() -> Self {
        JsonReporter {
            out: Mutex::new(std::io::stdout()),
        }
    }

    fn write(&self, value: &Value) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // A reader that went away is not our error; keep running, stop writing.
        let _ = writeln!(out, "{value}").and_then(|_| out.flush());
    }

    /// `{"v":1,"ts":…,"event":kind, …fields}`.
    pub fn object(&self, kind: &str, fields: Value) {
        let mut map = Map::new();
        map.insert("v".into(), json!(WIRE_VERSION));
        map.insert("ts".into(), json!(now_rfc3339()));
        map.insert("event".into(), json!(kind));
        if let Value::Object(fields) = fields {
            for (k, v) in fields {
                map.entry(k).or_insert(v);
            }
        }
        self.write(&Value::Object(map));
    }

    pub fn summary(&self, summary: &Summary) {
        let mut fields = serde_json::to_value(summary).unwrap_or_else(|_| json!({}));
        if let Value::Object(m) = &mut fields {
            m.insert("exit_code".into(), json!(summary.outcome.code()));
        }
        self.object("summary", fields);
    }
}

impl Default for JsonReporter {
    fn default() -> Self {
        Self::new()
    }
}

impl Reporter for JsonReporter {
    fn event(&self, event: &Event) {
        let mut value = serde_json::to_value(event).unwrap_or_else(|_| json!({}));
        let kind = value
            .get("event")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string();
        if let Value::Object(m) = &mut value {
            m.remove("event");
        }
        self.object(&kind, value);
    }
}
