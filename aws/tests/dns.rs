//! Route53 against moto: latency records and health checks planned and applied idempotently,
//! drain controls, and the missing-zone error.
//!
//! What moto does not do, and how these tests live with it:
//! - DELETE of a latency record removes every record sharing its SetIdentifier across the
//!   zone, so each test uses SetIdentifiers unique in its zone (`api-use1`, ...), as a real
//!   zone would.
//! - `GetChange` is always INSYNC, so the INSYNC wait is exercised only on its happy path.
//! - Health checks are never probed; status is one canned "Success" observation, so the tests
//!   assert on the configuration and the inversion switch, not on probe results.

mod common;

use acme_aws::route53::{DesiredLatencyRecord, HealthCheckAction, HealthCheckSpec, RecordAction};
use acme_aws::testing::{create_zone, unique_name};
use acme_aws::AwsError;

fn desired(zone: &str) -> Vec<DesiredLatencyRecord> {
    [
        ("api-use1", "us-east-1", "us"),
        ("api-euw1", "eu-west-1", "eu"),
        ("api-apse1", "ap-southeast-1", "apac"),
    ]
    .into_iter()
    .map(|(set_identifier, region, short)| DesiredLatencyRecord {
        name: format!("api.{zone}"),
        set_identifier: set_identifier.into(),
        region: region.into(),
        target: format!("{short}.lb.example.net"),
        ttl: 60,
        health_check: HealthCheckSpec {
            fqdn: format!("{short}.lb.example.net"),
            port: 443,
            path: "/health".into(),
            https: true,
            failure_threshold: 3,
            request_interval: 10,
        },
    })
    .collect()
}

async fn applied_zone() -> (acme_aws::Aws, String, Vec<DesiredLatencyRecord>) {
    let aws = common::moto().aws().await;
    let zone = format!("{}.test", unique_name("dns"));
    create_zone(&aws, &zone).await.unwrap();
    let records = desired(&zone);
    let plan = aws.plan(&zone, &records).await.unwrap();
    aws.apply(&plan).await.unwrap();
    (aws, zone, records)
}

#[tokio::test]
async fn apply_on_an_empty_zone_creates_three_latency_records_with_health_checks_and_a_second_apply_changes_nothing(
) {
    let aws = common::moto().aws().await;
    let zone_name = format!("{}.test", unique_name("dns"));
    let zone = create_zone(&aws, &zone_name).await.unwrap();
    let records = desired(&zone_name);

    let plan = aws.plan(&zone_name, &records).await.unwrap();
    assert_eq!(plan.changes.len(), 3);
    assert!(plan
        .changes
        .iter()
        .all(|change| change.action == RecordAction::Create));
    assert!(plan
        .changes
        .iter()
        .all(|change| change.health_check == HealthCheckAction::Create { inverted: false }));

    let report = aws.apply(&plan).await.unwrap();
    assert_eq!(report.created_health_checks.len(), 3);
    assert_eq!(report.records_upserted, 3);
    assert!(report.change_id.is_some());

    let current = aws
        .latency_records(&zone, &format!("api.{zone_name}"))
        .await
        .unwrap();
    assert_eq!(current.len(), 3);
    for wanted in &records {
        let record = current
            .iter()
            .find(|record| record.set_identifier == wanted.set_identifier)
            .unwrap_or_else(|| panic!("{} missing from {current:?}", wanted.set_identifier));
        assert_eq!(record.record_type, "CNAME");
        assert_eq!(record.region.as_deref(), Some(wanted.region.as_str()));
        assert_eq!(record.values, vec![wanted.target.clone()]);
        assert_eq!(record.ttl, Some(60));
        let check = aws
            .get_health_check(
                record
                    .health_check_id
                    .as_deref()
                    .expect("record has a health check"),
            )
            .await
            .unwrap();
        assert_eq!(check.spec.as_ref(), Some(&wanted.health_check));
        assert_eq!(
            check.set_identifier.as_deref(),
            Some(wanted.set_identifier.as_str())
        );
    }

    let again = aws.plan(&zone_name, &records).await.unwrap();
    assert!(again.is_noop(), "second plan should be empty: {again:#?}");
    let report = aws.apply(&again).await.unwrap();
    assert!(report.is_noop(), "{report:?}");
}

#[tokio::test]
async fn changing_one_target_updates_exactly_that_record() {
    let (aws, zone, mut records) = applied_zone().await;
    records[1].target = "eu-blue.lb.example.net".into();

    let plan = aws.plan(&zone, &records).await.unwrap();
    let changed: Vec<_> = plan
        .changes
        .iter()
        .filter(|change| change.action != RecordAction::Unchanged)
        .collect();
    assert_eq!(changed.len(), 1, "{plan:#?}");
    assert_eq!(changed[0].set_identifier, "api-euw1");
    let RecordAction::Update(differences) = &changed[0].action else {
        panic!("expected an update, got {:?}", changed[0].action)
    };
    assert_eq!(
        differences
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec!["target: eu.lb.example.net -> eu-blue.lb.example.net"]
    );

    let report = aws.apply(&plan).await.unwrap();
    assert_eq!(report.records_upserted, 1);
    assert!(report.created_health_checks.is_empty());

    let zone_ref = aws.find_zone(&zone).await.unwrap();
    let current = aws
        .latency_records(&zone_ref, &format!("api.{zone}"))
        .await
        .unwrap();
    let eu = current
        .iter()
        .find(|record| record.set_identifier == "api-euw1")
        .unwrap();
    assert_eq!(eu.values, vec!["eu-blue.lb.example.net".to_owned()]);
    assert_eq!(current.len(), 3);
    assert!(aws.plan(&zone, &records).await.unwrap().is_noop());
}

#[tokio::test]
async fn a_region_removed_from_the_set_is_deleted_with_its_health_check() {
    let (aws, zone, mut records) = applied_zone().await;
    let removed = records.pop().unwrap();

    let plan = aws.plan(&zone, &records).await.unwrap();
    let deleted: Vec<_> = plan
        .changes
        .iter()
        .filter(|change| change.action == RecordAction::Delete)
        .map(|change| change.set_identifier.clone())
        .collect();
    assert_eq!(deleted, vec![removed.set_identifier.clone()]);
    assert_eq!(plan.obsolete_health_checks.len(), 1);

    let report = aws.apply(&plan).await.unwrap();
    assert_eq!(report.records_deleted, 1);
    assert_eq!(report.deleted_health_checks, plan.obsolete_health_checks);
    let gone = aws
        .get_health_check(&plan.obsolete_health_checks[0])
        .await
        .unwrap_err();
    assert!(matches!(gone, AwsError::NoSuchHealthCheck { .. }), "{gone}");

    let zone_ref = aws.find_zone(&zone).await.unwrap();
    let current = aws
        .latency_records(&zone_ref, &format!("api.{zone}"))
        .await
        .unwrap();
    assert_eq!(current.len(), 2);
    assert!(aws.plan(&zone, &records).await.unwrap().is_noop());
}

#[tokio::test]
async fn an_inverted_health_check_reads_back_inverted_and_apply_leaves_the_drain_alone() {
    let (aws, zone, records) = applied_zone().await;
    let zone_ref = aws.find_zone(&zone).await.unwrap();
    let current = aws
        .latency_records(&zone_ref, &records[2].name)
        .await
        .unwrap();
    let apac = current
        .iter()
        .find(|record| record.set_identifier == "api-apse1")
        .unwrap();
    let id = apac.health_check_id.clone().unwrap();

    aws.set_inverted(&id, true).await.unwrap();
    let state = aws.get_health_check(&id).await.unwrap();
    assert!(state.inverted);
    assert!(!state.disabled);
    assert!(
        aws.plan(&zone, &records).await.unwrap().is_noop(),
        "a drain is not drift"
    );

    aws.set_inverted(&id, false).await.unwrap();
    assert!(!aws.get_health_check(&id).await.unwrap().inverted);

    // moto never probes; it reports one canned passing observation.
    let status = aws.health_check_status(&id).await.unwrap();
    assert_eq!(status.healthy + status.unhealthy, status.observations.len());
    assert!(status.healthy >= 1, "{status:?}");
}

#[tokio::test]
async fn an_unknown_zone_is_no_such_zone_naming_it() {
    let aws = common::moto().aws().await;
    let missing = format!("{}.test", unique_name("absent"));
    let err = aws.plan(&missing, &desired(&missing)).await.unwrap_err();
    assert!(matches!(err, AwsError::NoSuchZone { .. }), "{err:?}");
    assert!(err.to_string().contains(&missing), "{err}");

    let err = aws
        .set_inverted("00000000-0000-0000-0000-000000000000", true)
        .await
        .unwrap_err();
    assert!(matches!(err, AwsError::NoSuchHealthCheck { .. }), "{err:?}");
}
