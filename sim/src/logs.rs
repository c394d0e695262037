//! The per-app log: one file of lines `<unix-nanos> <stream> <message>` appended by pods (service
//! output, `service/<svc>/<pod>`) and by the rack (events, `system/k8s/<object>`), and rendered in
//! the two formats the real CLI shows: `<RFC3339> <stream> <message>` and, for `logs -s`, kubectl's
//! `[pod/<pod>/<app>] <RFC3339Nano> <message>`.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::filter::LogFilter;
use crate::timefmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub ns: i128,
    pub stream: String,
    pub message: String,
}

impl LogLine {
    pub fn parse(raw: &str) -> Option<LogLine> {
        let mut parts = raw.splitn(3, ' ');
        let ns = parts.next()?.parse().ok()?;
        let stream = parts.next()?.to_string();
        let message = parts.next().unwrap_or("").to_string();
        Some(LogLine {
            ns,
            stream,
            message,
        })
    }

    /// `2026-03-18T12:47:41Z service/web/web-5d8f9c7b6-abcde GET / 200`
    pub fn render(&self) -> String {
        format!(
            "{} {} {}",
            timefmt::rfc3339_seconds_ns(self.ns),
            self.stream,
            self.message
        )
    }

    /// `[pod/<pod>/<app>] <RFC3339Nano> <message>`, for service lines only.
    pub fn render_kubectl(&self, app: &str) -> Option<String> {
        let pod = self.stream.strip_prefix("service/")?.split('/').nth(1)?;
        Some(format!(
            "[pod/{pod}/{app}] {} {}",
            timefmt::rfc3339_nanos(self.ns),
            self.message
        ))
    }

    pub fn is_system(&self) -> bool {
        self.stream.starts_with("system/")
    }

    pub fn service(&self) -> Option<&str> {
        self.stream.strip_prefix("service/")?.split('/').next()
    }
}

/// Appends one line as a single write, so concurrent writers never interleave within a line.
pub fn append(path: &Path, stream: &str, message: &str) {
    let mut text = String::new();
    for line in message.lines() {
        text.push_str(&format!("{} {stream} {line}\n", timefmt::now_ns()));
    }
    if text.is_empty() {
        return;
    }
    if let Some(parent) = path.parent() {
        let _ = fs::create_dir_all(parent);
    }
    if let Ok(mut file) = fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = file.write_all(text.as_bytes());
    }
}

/// Which lines `convox logs` shows.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub since_ns: Option<i128>,
    pub filter: LogFilter,
    pub service: Option<String>,
}

impl Selection {
    pub fn keeps(&self, line: &LogLine) -> bool {
        if self.since_ns.is_some_and(|since| line.ns < since) {
            return false;
        }
        if let Some(service) = &self.service {
            if line.service() != Some(service.as_str()) {
                return false;
            }
        }
        self.filter.matches(&line.render())
    }
}

/// Reads a log file incrementally from an offset; only whole lines are returned.
#[derive(Debug)]
pub struct LogTail {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl LogTail {
    pub fn from_start(path: &Path) -> LogTail {
        LogTail {
            path: path.to_path_buf(),
            offset: 0,
            partial: String::new(),
        }
    }

    /// Starts at the current end of the file.
    pub fn from_end(path: &Path) -> LogTail {
        let offset = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        LogTail {
            path: path.to_path_buf(),
            offset,
            partial: String::new(),
        }
    }

    pub fn read_new(&mut self) -> Vec<LogLine> {
        let Ok(mut file) = fs::File::open(&self.path) else {
            return Vec::new();
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut bytes = Vec::new();
        if file.read_to_end(&mut bytes).is_err() {
            return Vec::new();
        }
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let mut lines = Vec::new();
        while let Some(end) = self.partial.find('\n') {
            let raw: String = self.partial.drain(..=end).collect();
            if let Some(line) = LogLine::parse(raw.trim_end_matches('\n')) {
                lines.push(line);
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_render_in_both_formats() {
        let line = LogLine::parse(
            "1773848258123456789 service/inference/inference-abc-x1 GET /health 200",
        )
        .unwrap();
        assert_eq!(
            line.render(),
            "2026-03-18T15:37:38Z service/inference/inference-abc-x1 GET /health 200"
        );
        assert_eq!(
            line.render_kubectl("bitnet").unwrap(),
            "[pod/inference-abc-x1/bitnet] 2026-03-18T15:37:38.123456789Z GET /health 200"
        );
        assert_eq!(line.service(), Some("inference"));
        let sys = LogLine::parse("1 system/k8s/atom/app Status: Updating => Running").unwrap();
        assert!(sys.is_system());
        assert_eq!(sys.render_kubectl("x"), None);
    }

    #[test]
    fn selection_applies_since_service_and_filter() {
        let line = LogLine {
            ns: 100,
            stream: "service/web/web-1".into(),
            message: "ERROR boom".into(),
        };
        let mut sel = Selection {
            since_ns: Some(50),
            filter: LogFilter::parse("ERROR"),
            service: Some("web".into()),
        };
        assert!(sel.keeps(&line));
        sel.since_ns = Some(200);
        assert!(!sel.keeps(&line));
        sel.since_ns = None;
        sel.service = Some("api".into());
        assert!(!sel.keeps(&line));
    }

    #[test]
    fn tail_returns_only_new_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, "system/k8s/atom/app", "one");
        let mut tail = LogTail::from_end(&path);
        assert!(tail.read_new().is_empty());
        append(&path, "service/web/p", "two\nthree");
        let got: Vec<String> = tail.read_new().into_iter().map(|l| l.message).collect();
        assert_eq!(got, vec!["two", "three"]);
        assert_eq!(LogTail::from_start(&path).read_new().len(), 3);
    }
}
