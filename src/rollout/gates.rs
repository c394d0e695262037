//! The bake: after a promote, watch the rack (HTTP health, service logs) for the configured
//! time and decide whether the release may stay.

use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::event::Event;
use crate::config::golden::GoldenGate;
use crate::config::{Bake, HealthGate, LogGate, MetricGate};
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

/// What a bake watches.
pub struct BakeTarget<'a> {
    pub rack: &'a str,
    pub region: &'a str,
    /// The service's domain (for health and golden requests).
    pub domain: &'a str,
    pub convox: &'a Convox,
    pub http: &'a reqwest::Client,
    /// Present when the bake has metric gates.
    pub aws: Option<&'a acme_aws::Aws>,
    /// When the promote began: log lines and metric points from then on count.
    pub since_promote: Instant,
    pub promoted_at: SystemTime,
}

/// Runs the bake for one rack.
pub async fn bake(
    target: &BakeTarget<'_>,
    bake: &Bake,
    emit: &(dyn Fn(Event) + Send + Sync),
    mut stop: watch::Receiver<bool>,
) -> BakeVerdict {
    let (rack, domain, convox, http, since_promote) = (
        target.rack,
        target.domain,
        target.convox,
        target.http,
        target.since_promote,
    );
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
            if let Some(golden) = &bake.golden {
                match check_golden(http, domain, golden).await {
                    Ok(detail) => emit(Event::GatePassed {
                        rack: rack.to_string(),
                        gate: "golden".into(),
                        detail,
                    }),
                    Err(v) => return v,
                }
            }
            if !bake.metrics.is_empty() {
                if let Some(v) = check_metrics(target, &bake.metrics).await {
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

/// Evaluates the CloudWatch gates over the bake window in the rack's region.
async fn check_metrics(target: &BakeTarget<'_>, gates: &[MetricGate]) -> Option<BakeVerdict> {
    let fail = |evidence: String| {
        Some(BakeVerdict::Failed {
            gate: "metrics".into(),
            evidence: vec![evidence],
        })
    };
    let Some(aws) = target.aws else {
        return fail("metric gates are configured but AWS is not available".into());
    };
    for gate in gates {
        let stat = match gate.stat.parse::<acme_aws::cloudwatch::Stat>() {
            Ok(s) => s,
            Err(e) => return fail(format!("{}: {e}", gate.name)),
        };
        let fill = |v: &str| {
            v.replace("{rack}", target.rack)
                .replace("{region}", target.region)
        };
        let query = acme_aws::cloudwatch::MetricQuery {
            namespace: gate.namespace.clone(),
            metric: gate.metric.clone(),
            dimensions: gate
                .dimensions
                .iter()
                .map(|(k, v)| (k.clone(), fill(v)))
                .collect(),
            stat,
            period_secs: gate.period.as_secs().max(1) as u32,
        };
        let start = target.promoted_at - gate.period;
        let end = SystemTime::now() + Duration::from_secs(1);
        let series = match aws
            .get_metric_data(target.region, std::slice::from_ref(&query), start, end)
            .await
        {
            Ok(s) => s,
            Err(e) => return fail(format!("{}: cannot read CloudWatch: {e}", gate.name)),
        };
        let values: Vec<f64> = series.into_iter().flat_map(|s| s.values).collect();
        if values.is_empty() {
            if gate.missing_fails {
                return fail(format!(
                    "{}: no data for {}/{} {} in {} since the promote (the gate requires data)",
                    gate.name, gate.namespace, gate.metric, gate.stat, target.region
                ));
            }
            continue;
        }
        let breaching: Vec<f64> = values
            .iter()
            .copied()
            .filter(|v| {
                if gate.fail_above {
                    *v > gate.threshold
                } else {
                    *v < gate.threshold
                }
            })
            .collect();
        if breaching.len() as u32 >= gate.breaching {
            return fail(format!(
                "{}: {} of {} point(s) of {} {} {} the threshold {} (values: {})",
                gate.name,
                breaching.len(),
                values.len(),
                gate.metric,
                gate.stat,
                if gate.fail_above { "above" } else { "below" },
                gate.threshold,
                breaching
                    .iter()
                    .map(|v| format!("{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    None
}

/// Sends every golden request `rounds` times: each answer must equal the expected one, and
/// each request's p95 latency must stay within its budget. Passing says what was measured.
async fn check_golden(
    http: &reqwest::Client,
    domain: &str,
    gate: &GoldenGate,
) -> Result<String, BakeVerdict> {
    let mut latencies: Vec<Vec<Duration>> = vec![Vec::new(); gate.requests.len()];
    for _ in 0..gate.rounds {
        for (i, request) in gate.requests.iter().enumerate() {
            let url = service_url(domain, &request.endpoint);
            let started = Instant::now();
            let sent = http
                .post(&url)
                .json(&request.body)
                .timeout(gate.timeout)
                .send()
                .await;
            let fail = |why: Vec<String>| {
                let mut evidence = vec![format!(
                    "golden `{}` ({}): {}",
                    request.name, request.endpoint, why[0]
                )];
                evidence.extend(why.into_iter().skip(1));
                Err(BakeVerdict::Failed {
                    gate: "golden".into(),
                    evidence,
                })
            };
            let response = match sent {
                Ok(r) => r,
                Err(e) => return fail(vec![format!("no answer: {e}")]),
            };
            let status = response.status().as_u16();
            let body: serde_json::Value = match response.json().await {
                Ok(b) => b,
                Err(e) => return fail(vec![format!("HTTP {status} with an unreadable body: {e}")]),
            };
            latencies[i].push(started.elapsed());
            if status != 200 {
                return fail(vec![format!(
                    "HTTP {status}: {}",
                    body["error"]["message"].as_str().unwrap_or("")
                )]);
            }
            match request.answer(&body) {
                Some(got) if got == request.expect => {}
                Some(got) => return fail(answer_diff(&request.expect, got)),
                None => return fail(vec![format!("the response has no answer field: {body}")]),
            }
        }
    }
    let mut worst = Duration::ZERO;
    for (request, mut samples) in gate.requests.iter().zip(latencies) {
        samples.sort();
        let p95 = samples[(samples.len() * 95).div_ceil(100).saturating_sub(1)];
        worst = worst.max(p95);
        let budget = request.budget_ms.map_or(gate.p95, Duration::from_millis);
        if p95 > budget {
            return Err(BakeVerdict::Failed {
                gate: "golden".into(),
                evidence: vec![format!(
                    "golden `{}`: p95 latency {} ms over {} rounds exceeds its budget of {} ms",
                    request.name,
                    p95.as_millis(),
                    samples.len(),
                    budget.as_millis()
                )],
            });
        }
    }
    Ok(format!(
        "{} request(s) x {} round(s) answered as expected; worst p95 {} ms",
        gate.requests.len(),
        gate.rounds,
        worst.as_millis()
    ))
}

/// A mismatch as an operator reads it: both answers, and where they part.
fn answer_diff(expected: &str, got: &str) -> Vec<String> {
    let same: usize = expected
        .chars()
        .zip(got.chars())
        .take_while(|(a, b)| a == b)
        .count();
    let tail = |s: &str| -> String { s.chars().skip(same).take(40).collect() };
    vec![
        "the answer differs from the golden one".to_string(),
        format!("- expected: {expected:?}"),
        format!("+ got:      {got:?}"),
        format!(
            "  first difference at character {same}: expected {:?}, got {:?}",
            tail(expected),
            tail(got)
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_diff_points_at_the_first_difference() {
        let lines = answer_diff("disk full on db-1", "disk fine on db-1");
        assert_eq!(lines[1], r#"- expected: "disk full on db-1""#);
        assert!(
            lines[3].contains(r#"character 6: expected "ull on db-1", got "ine on db-1""#),
            "{lines:?}"
        );
    }

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

    /// A one-endpoint HTTP server on loopback answering every request with `body`.
    fn serve(body: &'static str) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        addr.to_string()
    }

    fn gate(expect: &str) -> GoldenGate {
        GoldenGate {
            requests: vec![crate::config::golden::GoldenRequest {
                name: "anomaly".into(),
                endpoint: "/v1/classify".into(),
                body: serde_json::json!({"input": "disk full", "labels": ["normal", "anomaly"]}),
                expect: expect.into(),
                budget_ms: Some(2000),
            }],
            rounds: 2,
            p95: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn golden_gate_passes_on_the_expected_label_and_shows_a_diff_otherwise() {
        let domain = serve(r#"{"object":"classification","label":"anomaly"}"#);
        let http = reqwest::Client::new();
        let passed = check_golden(&http, &domain, &gate("anomaly"))
            .await
            .unwrap();
        assert!(passed.contains("answered as expected"), "{passed}");
        match check_golden(&http, &domain, &gate("normal")).await {
            Err(BakeVerdict::Failed { gate, evidence }) => {
                assert_eq!(gate, "golden");
                let text = evidence.join("\n");
                assert!(text.contains(r#"- expected: "normal""#), "{text}");
                assert!(text.contains(r#"+ got:      "anomaly""#), "{text}");
                assert!(text.contains("first difference at character 0"), "{text}");
            }
            other => panic!("{other:?}"),
        }
    }
}
