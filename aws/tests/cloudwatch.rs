//! CloudWatch against moto (through the CBOR wrapper): data points in, statistics out, and
//! rollout events. Percentile statistics make moto answer HTTP 500, so the p99 request is
//! unit-tested in `src/cloudwatch.rs` instead of here.
//!
//! moto ignores the namespace of a query that has dimensions, so every test uses its own
//! `Rack` dimension value to keep the tests sharing one server apart.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use acme_aws::cloudwatch::{MetricQuery, Stat, ROLLOUT_EVENT_METRIC, ROLLOUT_NAMESPACE};
use acme_aws::testing::unique_name;

/// The start of the minute ten minutes ago: a whole period that is safely in the past.
fn past_minute() -> SystemTime {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    UNIX_EPOCH + Duration::from_secs(now / 60 * 60 - 600)
}

fn query(namespace: &str, rack: &str, stat: Stat) -> MetricQuery {
    MetricQuery {
        namespace: namespace.into(),
        metric: "LatencyMs".into(),
        dimensions: vec![("Rack".into(), rack.into())],
        stat,
        period_secs: 60,
    }
}

#[tokio::test]
async fn datapoints_put_come_back_as_average_and_maximum_in_their_region_only() {
    let aws = common::moto().aws().await;
    let namespace = unique_name("Acme/Test");
    let minute = past_minute();
    let points: Vec<(SystemTime, f64)> = [10.0, 20.0, 60.0]
        .iter()
        .enumerate()
        .map(|(index, value)| {
            (
                minute + Duration::from_secs(10 * (index as u64 + 1)),
                *value,
            )
        })
        .collect();
    let rack = unique_name("eu-prod");
    let dimensions = vec![("Rack".to_owned(), rack.clone())];
    aws.put_datapoints("eu-west-1", &namespace, "LatencyMs", &dimensions, &points)
        .await
        .unwrap();

    let end = minute + Duration::from_secs(60);
    let series = aws
        .get_metric_data(
            "eu-west-1",
            &[
                query(&namespace, &rack, Stat::Average),
                query(&namespace, &rack, Stat::Maximum),
            ],
            minute,
            end,
        )
        .await
        .unwrap();
    assert_eq!(series.len(), 2);
    assert_eq!(series[0].values, vec![30.0], "{series:?}");
    assert_eq!(series[1].values, vec![60.0], "{series:?}");
    assert_eq!(series[0].timestamps.len(), 1);

    let elsewhere = aws
        .get_metric_data(
            "us-east-1",
            &[query(&namespace, &rack, Stat::Average)],
            minute,
            end,
        )
        .await
        .unwrap();
    assert!(elsewhere[0].values.is_empty(), "{elsewhere:?}");
}

#[tokio::test]
async fn a_rollout_event_is_counted_under_its_rack_and_event() {
    let aws = common::moto().aws().await;
    let rack = unique_name("eu-prod");
    let before = SystemTime::now() - Duration::from_secs(120);
    aws.put_rollout_event("eu-west-1", "rack.promoted", &rack, 1.0)
        .await
        .unwrap();
    aws.put_rollout_event("eu-west-1", "rack.promoted", &rack, 1.0)
        .await
        .unwrap();
    aws.put_rollout_event("eu-west-1", "rack.rolled_back", &rack, 1.0)
        .await
        .unwrap();

    let promoted = MetricQuery {
        namespace: ROLLOUT_NAMESPACE.into(),
        metric: ROLLOUT_EVENT_METRIC.into(),
        dimensions: vec![
            ("Rack".into(), rack.clone()),
            ("Event".into(), "rack.promoted".into()),
        ],
        stat: Stat::Sum,
        period_secs: 300,
    };
    let series = aws
        .get_metric_data(
            "eu-west-1",
            &[promoted],
            before,
            SystemTime::now() + Duration::from_secs(120),
        )
        .await
        .unwrap();
    assert_eq!(series[0].values.iter().sum::<f64>(), 2.0, "{series:?}");
}

#[tokio::test]
async fn an_empty_or_backwards_window_is_refused_before_calling_aws() {
    let aws = common::moto().aws().await;
    let now = SystemTime::now();
    let err = aws
        .get_metric_data(
            "eu-west-1",
            &[query("Acme/Test", "eu-prod", Stat::Average)],
            now,
            now,
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("end of the metric window"),
        "{err}"
    );
}

// moto cannot compute percentiles: GetMetricData with p99 makes it fail with HTTP 500. This
// pins down that such a failure reaches the caller as a readable error naming the operation
// (what a gate reports), not a panic or a protocol error. The p99 request itself is
// unit-tested in src/cloudwatch.rs.
#[tokio::test]
async fn an_emulator_failure_on_a_percentile_query_is_a_readable_error() {
    let aws = common::moto().aws().await;
    let namespace = unique_name("Acme/Test");
    let minute = past_minute();
    let rack = unique_name("eu-prod");
    let dimensions = vec![("Rack".to_owned(), rack.clone())];
    aws.put_datapoints(
        "eu-west-1",
        &namespace,
        "LatencyMs",
        &dimensions,
        &[(minute + Duration::from_secs(5), 12.0)],
    )
    .await
    .unwrap();
    let err = aws
        .get_metric_data(
            "eu-west-1",
            &[query(&namespace, &rack, Stat::Percentile(99.0))],
            minute,
            minute + Duration::from_secs(60),
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("GetMetricData on region eu-west-1"),
        "{text}"
    );
    assert!(text.contains("InternalFailure"), "{text}");
}

// The SDK gzips PutMetricData bodies over 10 KiB; the CBOR wrapper must undo that.
#[tokio::test]
async fn a_large_compressed_batch_of_datapoints_arrives_whole() {
    let aws = common::moto().aws().await;
    let namespace = unique_name("Acme/Test");
    let rack = unique_name("eu-prod");
    let minute = past_minute();
    let points: Vec<(SystemTime, f64)> = (0..400)
        .map(|index| {
            (
                minute + Duration::from_millis(100 * index),
                (index % 10) as f64,
            )
        })
        .collect();
    let dimensions = vec![("Rack".to_owned(), rack.clone())];
    aws.put_datapoints("eu-west-1", &namespace, "LatencyMs", &dimensions, &points)
        .await
        .unwrap();
    let mut count = query(&namespace, &rack, Stat::SampleCount);
    count.period_secs = 60;
    let series = aws
        .get_metric_data(
            "eu-west-1",
            &[count, query(&namespace, &rack, Stat::Average)],
            minute,
            minute + Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(series[0].values, vec![400.0], "{series:?}");
    assert_eq!(series[1].values, vec![4.5], "{series:?}");
}
