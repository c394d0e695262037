//! The bake: after a promote, watch the rack (HTTP health, service logs) for the configured
//! time and decide whether the release may stay.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::event::Event;
use crate::config::{Bake, HealthGate, LogGate};
use crate::convox::Convox;

/// How a bake ended.
#[derive(Debug, Clone, PartialEq)]
pub enum BakeVerdict {
    Passed {
        samples: u32,
    },
    Failed {
        gate: String,
        evidence: Vec<String>,
    },
    /// Another rack failed and the run is stopping; this bake proved nothing either way.
    Stopped,
}

/// The URL a health probe uses: a domain with an explicit port (a local rack) is plain HTTP,
/// a rack's public domain is HTTPS, as Convox routers serve it.
pub fn service_url(domain: &str, path: &str) -> String {
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    if domain.starts_with("http://") || domain.starts_with("https://") {
        return format!("{}{path}", domain.trim_end_matches('/'));
    }
    let has_port = domain
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
    let scheme = if has_port { "http" } else { "https" };
    format!("{scheme}://{domain}{path}")
}

/// One probe of a health URL: `Ok(status)` or a transport error, as evidence text.
async fn probe(http: &reqwest::Client, url: &str, timeout: Duration) -> (bool, String) {
    let started = Instant::now();
    match http.get(url).timeout(timeout).send().await {
        Ok(resp) => {
            let status = resp.status();
            let ms = started.elapsed().as_millis();
            (
                status.as_u16() == 200,
                format!("GET {url} → {} in {ms} ms", status.as_u16()),
            )
        }
        Err(e) => {
            let why = if e.is_timeout() {
                format!("no answer within {} ms", timeout.as_millis())
            } else if e.is_connect() {
                "connection refused or unreachable".to_string()
            } else {
                e.to_string()
            };
            (false, format!("GET {url} → {why}"))
        }
    }
}

/// Runs the bake for one rack. `since_promote` is when the promote began: log lines from then
/// on count against the log gate.
#[allow(clippy::too_many_arguments)]
pub async fn bake(
    rack: &str,
    bake: &Bake,
    domain: &str,
    convox: &Convox,
    http: &reqwest::Client,
    since_promote: Instant,
    emit: &(dyn Fn(Event) + Send + Sync),
    mut stop: watch::Receiver<bool>,
) -> BakeVerdict {
    let started = Instant::now();
    let total = bake.duration;
    let mut streak = 0u32;
    let mut failures: Vec<String> = Vec::new();
    let mut samples = 0u32;
    let mut next_health = Instant::now();
    let mut next_logs = Instant::now() + bake.logs.as_ref().map_or(total, |l| l.interval);
    let mut last_progress = Instant::now() - Duration::from_secs(3600);
    // Enough health samples must be seen even when the bake duration is short.
    let grace = bake.health.as_ref().map_or(Duration::ZERO, |h| {
        (h.interval + h.timeout) * (h.consecutive + h.max_failures)
    });

    loop {
        if *stop.borrow() {
            return BakeVerdict::Stopped;
        }
        let now = Instant::now();
        let elapsed = now - started;
        let healthy_enough = bake.health.as_ref().is_none_or(|h| streak >= h.consecutive);
        if elapsed >= total && healthy_enough {
            if let Some(logs) = &bake.logs {
                if let Some(v) = check_logs(rack, logs, convox, since_promote).await {
                    return v;
                }
            }
            return BakeVerdict::Passed { samples };
        }
        if elapsed >= total + grace {
            let h = bake
                .health
                .as_ref()
                .expect("only health can hold a bake open");
            let mut evidence = vec![format!(
                "only {streak} consecutive healthy answers after {}s (need {})",
                elapsed.as_secs(),
                h.consecutive
            )];
            evidence.extend(failures.iter().rev().take(3).cloned());
            return BakeVerdict::Failed {
                gate: "health".into(),
                evidence,
            };
        }

        if let Some(h) = &bake.health {
            if now >= next_health {
                next_health = now + h.interval;
                samples += 1;
                if let Some(v) = health_sample(http, domain, h, &mut streak, &mut failures).await {
                    return v;
                }
            }
        }
        if let Some(l) = &bake.logs {
            if now >= next_logs {
                next_logs = now + l.interval;
                if let Some(v) = check_logs(rack, l, convox, since_promote).await {
                    return v;
                }
            }
        }
        if last_progress.elapsed() >= Duration::from_millis(500) {
            last_progress = Instant::now();
            emit(Event::BakeProgress {
                rack: rack.to_string(),
                elapsed_secs: elapsed.as_secs(),
                total_secs: total.as_secs(),
                health_streak: streak,
                samples,
            });
        }
        let next = [Some(next_health), bake.logs.as_ref().map(|_| next_logs)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + Duration::from_millis(200))
            .min(started + total)
            .max(Instant::now() + Duration::from_millis(5));
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = stop.changed() => {}
        }
    }
}

async fn health_sample(
    http: &reqwest::Client,
    domain: &str,
    h: &HealthGate,
    streak: &mut u32,
    failures: &mut Vec<String>,
) -> Option<BakeVerdict> {
    let url = service_url(domain, &h.path);
    let (ok, evidence) = probe(http, &url, h.timeout).await;
    if ok {
        *streak += 1;
        failures.clear();
        return None;
    }
    *streak = 0;
    failures.push(evidence);
    if failures.len() as u32 >= h.max_failures {
        return Some(BakeVerdict::Failed {
            gate: "health".into(),
            evidence: std::mem::take(failures),
        });
    }
    None
}

async fn check_logs(
    rack: &str,
    gate: &LogGate,
    convox: &Convox,
    since_promote: Instant,
) -> Option<BakeVerdict> {
    let convox = convox.clone();
    let rack_name = rack.to_string();
    let filter = gate.filter.clone();
    let since = since_promote.elapsed() + Duration::from_secs(1);
    let lines =
        tokio::task::spawn_blocking(move || convox.service_logs(&rack_name, since, &filter))
            .await
            .expect("log reader thread");
    match lines {
        Ok(lines) if lines.len() > gate.max_matches => {
            let mut evidence = vec![format!(
                "{} service log lines match `{}` (at most {} allowed)",
                lines.len(),
                gate.filter,
                gate.max_matches
            )];
            evidence.extend(lines.iter().take(5).cloned());
            Some(BakeVerdict::Failed {
                gate: "logs".into(),
                evidence,
            })
        }
        Ok(_) => None,
        Err(e) => Some(BakeVerdict::Failed {
            gate: "logs".into(),
            evidence: vec![format!("could not read the rack's logs: {e}")],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_follow_the_domain_kind() {
        assert_eq!(
            service_url("127.0.0.1:4001", "/health"),
            "http://127.0.0.1:4001/health"
        );
        assert_eq!(
            service_url("inference.acme.abc.convox.cloud", "health"),
            "https://inference.acme.abc.convox.cloud/health"
        );
        assert_eq!(service_url("http://x:1/", "/h"), "http://x:1/h");
    }
}
