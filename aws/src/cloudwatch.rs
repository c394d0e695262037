//! CloudWatch: `GetMetricData` queries for the bake gates and the `AcmeRollout` event metrics
//! a rollout publishes about itself.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{
    Dimension, Metric, MetricDataQuery, MetricDatum, MetricStat, ScanBy, StandardUnit,
};

use crate::error::{classify, AwsError, Target};
use crate::Aws;

/// Namespace of the metrics a rollout publishes about itself.
pub const ROLLOUT_NAMESPACE: &str = "AcmeRollout";
/// Metric name of rollout events (dimensions `Rack` and `Event`).
pub const ROLLOUT_EVENT_METRIC: &str = "RolloutEvent";

/// `GetMetricData` takes at most this many queries per request.
const MAX_QUERIES_PER_REQUEST: usize = 500;
/// `PutMetricData` takes at most this many data points per request.
const MAX_DATUMS_PER_REQUEST: usize = 1000;

/// A statistic CloudWatch can compute over a period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stat {
    Average,
    Sum,
    Maximum,
    Minimum,
    SampleCount,
    /// `pNN`, e.g. `Percentile(99.0)` is `p99`.
    Percentile(f64),
}

impl fmt::Display for Stat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stat::Average => f.write_str("Average"),
            Stat::Sum => f.write_str("Sum"),
            Stat::Maximum => f.write_str("Maximum"),
            Stat::Minimum => f.write_str("Minimum"),
            Stat::SampleCount => f.write_str("SampleCount"),
            Stat::Percentile(percentile) => write!(f, "p{percentile}"),
        }
    }
}

impl FromStr for Stat {
    type Err = AwsError;

    /// `Average`, `Sum`, `Maximum`/`Max`, `Minimum`/`Min`, `SampleCount`, or `pNN` (`p99`, `p99.9`).
    fn from_str(text: &str) -> Result<Stat, AwsError> {
        let refuse = || {
            AwsError::InvalidInput {
            op: "parse statistic",
            message: format!(
                "`{text}` is not a statistic; use Average, Sum, Maximum, Minimum, SampleCount or a percentile like p99"
            ),
        }
        };
        match text.trim().to_ascii_lowercase().as_str() {
            "average" | "avg" => Ok(Stat::Average),
            "sum" => Ok(Stat::Sum),
            "maximum" | "max" => Ok(Stat::Maximum),
            "minimum" | "min" => Ok(Stat::Minimum),
            "samplecount" => Ok(Stat::SampleCount),
            other => {
                let number = other.strip_prefix('p').ok_or_else(refuse)?;
                let percentile: f64 = number.parse().map_err(|_| refuse())?;
                if (0.0..=100.0).contains(&percentile)
                    && number.chars().all(|c| c.is_ascii_digit() || c == '.')
                {
                    Ok(Stat::Percentile(percentile))
                } else {
                    Err(refuse())
                }
            }
        }
    }
}

/// One metric statistic to fetch.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricQuery {
    pub namespace: String,
    pub metric: String,
    /// `(name, value)` pairs; CloudWatch matches the exact set.
    pub dimensions: Vec<(String, String)>,
    pub stat: Stat,
    /// Length of each data point's period: 1, 5, 10, 30 or a multiple of 60 seconds.
    pub period_secs: u32,
}

/// The data points of one query, oldest first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Series {
    pub label: String,
    pub timestamps: Vec<SystemTime>,
    pub values: Vec<f64>,
}

fn invalid(op: &'static str, message: String) -> AwsError {
    AwsError::InvalidInput { op, message }
}

fn dimensions(pairs: &[(String, String)]) -> Vec<Dimension> {
    pairs
        .iter()
        .map(|(name, value)| Dimension::builder().name(name).value(value).build())
        .collect()
}

/// The `GetMetricData` query for `query`, under the id `id`.
fn build_query(id: String, query: &MetricQuery) -> Result<MetricDataQuery, AwsError> {
    const OP: &str = "GetMetricData";
    let period = query.period_secs;
    if !(matches!(period, 1 | 5 | 10 | 30) || (period >= 60 && period.is_multiple_of(60))) {
        return Err(invalid(
            OP,
            format!(
                "period {period}s of {}/{} is not allowed; use 1, 5, 10, 30 or a multiple of 60 seconds",
                query.namespace, query.metric
            ),
        ));
    }
    if query.namespace.is_empty() || query.metric.is_empty() {
        return Err(invalid(
            OP,
            "a metric query needs a namespace and a metric name".to_owned(),
        ));
    }
    let metric = Metric::builder()
        .namespace(&query.namespace)
        .metric_name(&query.metric)
        .set_dimensions(Some(dimensions(&query.dimensions)))
        .build();
    let stat = MetricStat::builder()
        .metric(metric)
        .period(i32::try_from(period).unwrap_or(i32::MAX))
        .stat(query.stat.to_string())
        .build();
    Ok(MetricDataQuery::builder()
        .id(id)
        .metric_stat(stat)
        .return_data(true)
        .build())
}

impl Aws {
    /// Fetches every query over `[start, end)`; one [`Series`] per query, in the same order.
    pub async fn get_metric_data(
        &self,
        region: &str,
        queries: &[MetricQuery],
        start: SystemTime,
        end: SystemTime,
    ) -> Result<Vec<Series>, AwsError> {
        const OP: &str = "GetMetricData";
        if end <= start {
            return Err(invalid(
                OP,
                "the end of the metric window must come after its start".to_owned(),
            ));
        }
        let mut series: Vec<Series> = vec![Series::default(); queries.len()];
        let client = self.cloudwatch(region);
        for (chunk_index, chunk) in queries.chunks(MAX_QUERIES_PER_REQUEST).enumerate() {
            let base = chunk_index * MAX_QUERIES_PER_REQUEST;
            let built = chunk
                .iter()
                .enumerate()
                .map(|(offset, query)| build_query(format!("q{}", base + offset), query))
                .collect::<Result<Vec<_>, _>>()?;
            let mut token: Option<String> = None;
            loop {
                let page = client
                    .get_metric_data()
                    .set_metric_data_queries(Some(built.clone()))
                    .start_time(DateTime::from(start))
                    .end_time(DateTime::from(end))
                    .scan_by(ScanBy::TimestampAscending)
                    .set_next_token(token.clone())
                    .send()
                    .await
                    .map_err(|err| classify(OP, Target::Region(region), err))?;
                for result in page.metric_data_results() {
                    let Some(index) = result
                        .id()
                        .and_then(|id| id.strip_prefix('q'))
                        .and_then(|number| number.parse::<usize>().ok())
                        .filter(|index| *index < series.len())
                    else {
                        continue;
                    };
                    let entry = &mut series[index];
                    if let Some(label) = result.label() {
                        entry.label = label.to_owned();
                    }
                    for (timestamp, value) in result.timestamps().iter().zip(result.values()) {
                        if let Ok(time) = SystemTime::try_from(*timestamp) {
                            entry.timestamps.push(time);
                            entry.values.push(*value);
                        }
                    }
                }
                match page.next_token() {
                    Some(next) if token.as_deref() != Some(next) => token = Some(next.to_owned()),
                    _ => break,
                }
            }
        }
        for entry in &mut series {
            sort_by_time(entry);
        }
        Ok(series)
    }

    /// Publishes data points `(time, value)` of one metric (used by tests and by tools that
    /// feed metrics; the service itself publishes its own).
    pub async fn put_datapoints(
        &self,
        region: &str,
        namespace: &str,
        metric: &str,
        dimension_pairs: &[(String, String)],
        points: &[(SystemTime, f64)],
    ) -> Result<(), AwsError> {
        const OP: &str = "PutMetricData";
        let client = self.cloudwatch(region);
        for chunk in points.chunks(MAX_DATUMS_PER_REQUEST) {
            let data = chunk
                .iter()
                .map(|(time, value)| {
                    MetricDatum::builder()
                        .metric_name(metric)
                        .set_dimensions(Some(dimensions(dimension_pairs)))
                        .timestamp(DateTime::from(*time))
                        .value(*value)
                        .build()
                })
                .collect();
            client
                .put_metric_data()
                .namespace(namespace)
                .set_metric_data(Some(data))
                .send()
                .await
                .map_err(|err| classify(OP, Target::Region(region), err))?;
        }
        Ok(())
    }

    /// Records a rollout event (`AcmeRollout/RolloutEvent`, dimensions `Rack` and `Event`).
    pub async fn put_rollout_event(
        &self,
        region: &str,
        event_name: &str,
        rack: &str,
        value: f64,
    ) -> Result<(), AwsError> {
        const OP: &str = "PutMetricData";
        let datum = MetricDatum::builder()
            .metric_name(ROLLOUT_EVENT_METRIC)
            .dimensions(Dimension::builder().name("Rack").value(rack).build())
            .dimensions(Dimension::builder().name("Event").value(event_name).build())
            .timestamp(DateTime::from(SystemTime::now()))
            .unit(StandardUnit::Count)
            .value(value)
            .build();
        self.cloudwatch(region)
            .put_metric_data()
            .namespace(ROLLOUT_NAMESPACE)
            .metric_data(datum)
            .send()
            .await
            .map_err(|err| classify(OP, Target::Region(region), err))?;
        Ok(())
    }
}

fn sort_by_time(series: &mut Series) {
    let mut points: Vec<(SystemTime, f64)> = series
        .timestamps
        .iter()
        .copied()
        .zip(series.values.iter().copied())
        .collect();
    points.sort_by_key(|(time, _)| *time);
    series.timestamps = points.iter().map(|(time, _)| *time).collect();
    series.values = points.iter().map(|(_, value)| *value).collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(stat: Stat, period_secs: u32) -> MetricQuery {
        MetricQuery {
            namespace: "Acme/Inference".into(),
            metric: "LatencyMs".into(),
            dimensions: vec![("Rack".into(), "eu-prod".into())],
            stat,
            period_secs,
        }
    }

    #[test]
    fn percentiles_parse_and_print_as_cloudwatch_spells_them() {
        assert_eq!("p99".parse::<Stat>().unwrap(), Stat::Percentile(99.0));
        assert_eq!("p99.9".parse::<Stat>().unwrap(), Stat::Percentile(99.9));
        assert_eq!(Stat::Percentile(99.0).to_string(), "p99");
        assert_eq!(Stat::Percentile(99.9).to_string(), "p99.9");
        assert_eq!("max".parse::<Stat>().unwrap(), Stat::Maximum);
        let err = "p101".parse::<Stat>().unwrap_err().to_string();
        assert!(err.contains("p101") && err.contains("p99"), "{err}");
        assert!("median".parse::<Stat>().is_err());
        assert!("p-1".parse::<Stat>().is_err());
    }

    // moto answers percentile queries with HTTP 500, so the request a p99 gate sends is
    // checked here rather than against the emulator.
    #[test]
    fn a_p99_gate_asks_for_the_p99_stat_of_the_exact_metric() {
        let built = build_query("q0".into(), &query(Stat::Percentile(99.0), 60)).unwrap();
        let stat = built.metric_stat().unwrap();
        assert_eq!(stat.stat(), Some("p99"));
        assert_eq!(stat.period(), Some(60));
        let metric = stat.metric().unwrap();
        assert_eq!(metric.namespace(), Some("Acme/Inference"));
        assert_eq!(metric.metric_name(), Some("LatencyMs"));
        assert_eq!(metric.dimensions()[0].name(), Some("Rack"));
        assert_eq!(metric.dimensions()[0].value(), Some("eu-prod"));
        assert_eq!(built.return_data(), Some(true));
    }

    #[test]
    fn periods_cloudwatch_refuses_are_refused_here_with_the_allowed_values() {
        let err = build_query("q0".into(), &query(Stat::Average, 45))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("45s") && err.contains("multiple of 60"),
            "{err}"
        );
        assert!(build_query("q0".into(), &query(Stat::Average, 300)).is_ok());
        assert!(build_query("q0".into(), &query(Stat::Average, 10)).is_ok());
    }
}
