//! Counters, gauges and histograms of the server, rendered as Prometheus text
//! (`GET /metrics`). A handful of series do not justify a metrics framework, so this is
//! plain atomics and a mutex-guarded map; nothing here may block for long.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Cumulative is computed at render time; these are per-bucket counts.
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&le| seconds <= le) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (le, n) in LATENCY_BUCKETS.iter().zip(self.buckets) {
            cumulative += n;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// Token throughput of one phase: totals plus the rate of the latest measurement.
#[derive(Debug, Default)]
struct Throughput {
    tokens: u64,
    seconds: f64,
    last_rate: f64,
}

/// Every metric the server exports.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), Histogram>>,
    time_to_first_token: Mutex<Histogram>,
    tokens_generated: AtomicU64,
    prefill: Mutex<Throughput>,
    decode: Mutex<Throughput>,
    queue_depth: AtomicUsize,
    active_sequences: AtomicUsize,
    model_load_seconds: Mutex<Option<f64>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a metrics lock leaves plain numbers behind; keep serving them.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Metrics {
    pub fn record_request(&self, endpoint: &str, status: u16, elapsed: Duration) {
        lock(&self.requests)
            .entry((endpoint.to_string(), status))
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    pub fn record_time_to_first_token(&self, elapsed: Duration) {
        lock(&self.time_to_first_token).observe(elapsed.as_secs_f64());
    }

    pub fn record_prefill(&self, tokens: usize, elapsed: Duration) {
        Self::record_throughput(&self.prefill, tokens, elapsed);
    }

    /// One decode step that produced `tokens` tokens (one per active sequence).
    pub fn record_decode(&self, tokens: usize, elapsed: Duration) {
        Self::record_throughput(&self.decode, tokens, elapsed);
    }

    fn record_throughput(phase: &Mutex<Throughput>, tokens: usize, elapsed: Duration) {
        let mut phase = lock(phase);
        let seconds = elapsed.as_secs_f64();
        phase.tokens += tokens as u64;
        phase.seconds += seconds;
        if seconds > 0.0 {
            phase.last_rate = tokens as f64 / seconds;
        }
    }

    pub fn add_generated_tokens(&self, tokens: usize) {
        self.tokens_generated
            .fetch_add(tokens as u64, Ordering::Relaxed);
    }

    pub fn queue_entered(&self) {
        self.queue_depth.fetch_add(1, Ordering::Relaxed);
    }

    pub fn queue_left(&self) {
        // Saturating: a failed enqueue undoes its own increment, never someone else's.
        let _ = self
            .queue_depth
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| d.checked_sub(1));
    }

    pub fn queue_depth(&self) -> usize {
        self.queue_depth.load(Ordering::Relaxed)
    }

    pub fn set_active_sequences(&self, active: usize) {
        self.active_sequences.store(active, Ordering::Relaxed);
    }

    pub fn set_model_load_time(&self, elapsed: Duration) {
        *lock(&self.model_load_seconds) = Some(elapsed.as_secs_f64());
    }

    /// Requests recorded for `endpoint` with `status` (for tests and the bench).
    pub fn request_count(&self, endpoint: &str, status: u16) -> u64 {
        lock(&self.requests)
            .get(&(endpoint.to_string(), status))
            .map_or(0, |h| h.count)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let requests = lock(&self.requests).clone();
        out.push_str("# HELP acme_infer_requests_total HTTP requests by endpoint and status.\n# TYPE acme_infer_requests_total counter\n");
        for ((endpoint, status), h) in &requests {
            let _ = writeln!(
                out,
                "acme_infer_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {}",
                h.count
            );
        }
        out.push_str("# HELP acme_infer_request_duration_seconds HTTP request latency by endpoint and status.\n# TYPE acme_infer_request_duration_seconds histogram\n");
        for ((endpoint, status), h) in &requests {
            h.render(
                &mut out,
                "acme_infer_request_duration_seconds",
                &format!("endpoint=\"{endpoint}\",status=\"{status}\""),
            );
        }
        out.push_str("# HELP acme_infer_time_to_first_token_seconds Time from request to first generated token.\n# TYPE acme_infer_time_to_first_token_seconds histogram\n");
        lock(&self.time_to_first_token).render(
            &mut out,
            "acme_infer_time_to_first_token_seconds",
            "",
        );
        let _ = write!(
            out,
            "# HELP acme_infer_tokens_generated_total Tokens generated for clients.\n# TYPE acme_infer_tokens_generated_total counter\nacme_infer_tokens_generated_total {}\n",
            self.tokens_generated.load(Ordering::Relaxed)
        );
        for (phase, data) in [("prefill", &self.prefill), ("decode", &self.decode)] {
            let data = lock(data);
            let _ = write!(
                out,
                "# HELP acme_infer_{phase}_tokens_total Tokens processed in {phase}.\n# TYPE acme_infer_{phase}_tokens_total counter\nacme_infer_{phase}_tokens_total {}\n\
                 # HELP acme_infer_{phase}_seconds_total Time spent in {phase} forward passes.\n# TYPE acme_infer_{phase}_seconds_total counter\nacme_infer_{phase}_seconds_total {}\n\
                 # HELP acme_infer_{phase}_tokens_per_second Throughput of the latest {phase} pass.\n# TYPE acme_infer_{phase}_tokens_per_second gauge\nacme_infer_{phase}_tokens_per_second {}\n",
                data.tokens, data.seconds, data.last_rate
            );
        }
        let _ = write!(
            out,
            "# HELP acme_infer_queue_depth Requests waiting for a free sequence.\n# TYPE acme_infer_queue_depth gauge\nacme_infer_queue_depth {}\n\
             # HELP acme_infer_active_sequences Sequences being decoded.\n# TYPE acme_infer_active_sequences gauge\nacme_infer_active_sequences {}\n",
            self.queue_depth(),
            self.active_sequences.load(Ordering::Relaxed)
        );
        if let Some(seconds) = *lock(&self.model_load_seconds) {
            let _ = write!(
                out,
                "# HELP acme_infer_model_load_seconds Time to load, hash and warm up the model.\n# TYPE acme_infer_model_load_seconds gauge\nacme_infer_model_load_seconds {seconds}\n"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_counted() {
        let metrics = Metrics::default();
        metrics.record_request("/v1/completions", 200, Duration::from_millis(3));
        metrics.record_request("/v1/completions", 200, Duration::from_millis(300));
        metrics.record_request("/v1/completions", 400, Duration::from_millis(1));
        let text = metrics.render();
        assert!(text
            .contains("acme_infer_requests_total{endpoint=\"/v1/completions\",status=\"200\"} 2"));
        assert!(text.contains("acme_infer_request_duration_seconds_bucket{endpoint=\"/v1/completions\",status=\"200\",le=\"0.005\"} 1"));
        assert!(text.contains("acme_infer_request_duration_seconds_bucket{endpoint=\"/v1/completions\",status=\"200\",le=\"0.5\"} 2"));
        assert!(text.contains("acme_infer_request_duration_seconds_count{endpoint=\"/v1/completions\",status=\"400\"} 1"));
    }

    #[test]
    fn queue_depth_never_goes_below_zero() {
        let metrics = Metrics::default();
        metrics.queue_left();
        metrics.queue_entered();
        metrics.queue_left();
        metrics.queue_left();
        assert_eq!(metrics.queue_depth(), 0);
    }
}
