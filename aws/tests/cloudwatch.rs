//! CloudWatch against moto (through the CBOR wrapper): data points in, statistics out, and
//! rollout events. Percentile statistics make moto answer HTTP 500, so the p99 request is
//! unit-tested in `src/cloudwatch.rs` instead of here.

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

fn query(namespace: &str, stat: Stat) -> MetricQuery {
    MetricQuery {
        namespace: namespace.into(),
        metric: "LatencyMs".into(),
        dimensions: vec![("Rack".into(), "eu-prod".into())],
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
    let dimensions = vec![("Rack".to_owned(), "eu-prod".to_owned())];
    aws.put_datapoints("eu-west-1", &namespace, "LatencyMs", &dimensions, &points)
        .await
        .unwrap();

    let end = minute + Duration::from_secs(60);
    let series = aws
        .get_metric_data(
            "eu-west-1",
            &[
                query(&namespace, Stat::Average),
                query(&namespace, Stat::Maximum),
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
            &[query(&namespace, Stat::Average)],
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
        .get_metric_data("eu-west-1", &[query("Acme/Test", Stat::Average)], now, now)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("end of the metric window"),
        "{err}"
    );
}
