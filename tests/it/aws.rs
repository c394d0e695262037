//! The AWS half against a real local AWS API server (moto): Route53 latency records and drains,
//! model replication as a deploy gate, CloudWatch metric gates.
//!
//! What moto does not do, the tests do openly: it never copies objects for replication (the
//! test copies them into the regional buckets), never probes health checks, and reports every
//! Route53 change INSYNC at once.

use std::time::Duration;

use acme_aws::s3::BucketRef;
use acme_aws::testing::{create_bucket, create_zone, Moto};
use sha2::{Digest, Sha256};

use crate::harness::*;

const ZONE: &str = "acme.test";
const BUCKETS: [(&str, &str, &str); 3] = [
    ("us-prod", "us-east-1", "models-use1"),
    ("eu-prod", "eu-west-1", "models-euw1"),
    ("apac-prod", "ap-southeast-1", "models-apse1"),
];

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A world with moto, a hosted zone, model buckets, and racks.toml wired to them.
fn aws_world(extra: &str) -> (World, Moto, acme_aws::Aws) {
    let moto =
        Moto::start().expect("the AWS emulator (pip install -r tools/moto/requirements.txt)");
    let mut w = World::new();
    w.env = moto.env();
    let aws = rt().block_on(async {
        let aws = moto.aws().await;
        create_zone(&aws, ZONE).await.unwrap();
        for (_, region, bucket) in BUCKETS {
            create_bucket(&aws, &BucketRef::new(region, bucket))
                .await
                .unwrap();
        }
        aws
    });
    let mut text = RACKS_TOML.to_string();
    for (rack, _, bucket) in BUCKETS {
        text = text.replace(
            &format!("name = \"{rack}\"\n"),
            &format!("name = \"{rack}\"\nbucket = \"{bucket}\"\n"),
        );
    }
    text.push_str(&format!(
        "\n[dns]\nzone = \"{ZONE}\"\nname = \"inference.{ZONE}\"\nttl = 1\nmin_in_rotation = 1\n\n{extra}"
    ));
    w.write_racks(&text);
    if extra.contains("[models]") {
        // Each release pins its region's model through these (acme-rollout checks that the
        // manifest declares them); the first releases by hand ran without.
        let manifest =
            format!("environment:\n  - MODEL_PATH\n  - MODEL_SHA256\n  - AWS_REGION\n{MANIFEST}");
        std::fs::write(w.dir.path().join("templates/convox.yml"), manifest).unwrap();
    }
    (w, moto, aws)
}

const MODELS: &str = "[models]\nbucket = \"models-use1\"\nregion = \"us-east-1\"\nname = \"bitnet.gguf\"\nreplication_role = \"arn:aws:iam::123456789012:role/replication\"\npart_size_mib = 5\nparallelism = 4\n";

#[test]
fn dns_apply_creates_latency_records_once_and_updates_only_what_changed() {
    let (w, _moto, aws) = aws_world("");
    let plan = w.run_json(&["dns", "plan"]);
    assert_eq!(plan.code, 0, "{}", plan.debug());
    let creates = plan
        .events
        .iter()
        .filter(|e| e.event == "dns.change" && e.rest["action"] == "create")
        .count();
    assert_eq!(creates, 3);

    let apply = w.run_json(&["dns", "apply"]);
    assert_eq!(apply.code, 0, "{}", apply.debug());
    let records = rt().block_on(async {
        let zone = aws.find_zone(ZONE).await.unwrap();
        aws.latency_records(&zone, &format!("inference.{ZONE}"))
            .await
            .unwrap()
    });
    assert_eq!(records.len(), 3);
    for (rack, region, _) in BUCKETS {
        let r = records
            .iter()
            .find(|r| r.set_identifier == rack)
            .expect(rack);
        assert_eq!(r.region.as_deref(), Some(region));
        assert!(r.health_check_id.is_some(), "{rack} has a health check");
        assert!(r.ttl.unwrap() <= 60);
    }

    let again = w.run_json(&["dns", "apply"]);
    assert_eq!(again.code, 0);
    assert!(again
        .events
        .iter()
        .filter(|e| e.event == "dns.change")
        .all(|e| e.rest["action"] == "unchanged"));
    assert!(again.stdout.contains("no change"), "{}", again.debug());

    // A rack's domain changes in racks.toml: exactly that record is updated.
    let text = std::fs::read_to_string(&w.racks_toml).unwrap().replace(
        "name = \"eu-prod\"\n",
        "name = \"eu-prod\"\ndomain = \"eu.lb.acme.test\"\n",
    );
    w.write_racks(&text);
    let moved = w.run_json(&["dns", "apply"]);
    assert_eq!(moved.code, 0, "{}", moved.debug());
    let actions: Vec<(String, String)> = moved
        .events
        .iter()
        .filter(|e| e.event == "dns.change")
        .map(|e| {
            (
                e.rest["set_identifier"].as_str().unwrap().to_string(),
                e.rest["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        actions.contains(&("eu-prod".into(), "update".into())),
        "{actions:?}"
    );
    assert_eq!(
        actions.iter().filter(|(_, a)| a != "unchanged").count(),
        1,
        "{actions:?}"
    );
}

fn inverted(aws: &acme_aws::Aws, rack: &str) -> bool {
    rt().block_on(async {
        let zone = aws.find_zone(ZONE).await.unwrap();
        let records = aws
            .latency_records(&zone, &format!("inference.{ZONE}"))
            .await
            .unwrap();
        let id = records
            .iter()
            .find(|r| r.set_identifier == rack)
            .unwrap()
            .health_check_id
            .clone()
            .unwrap();
        aws.get_health_check(&id).await.unwrap().inverted
    })
}

/// Runs `drain REGION`, which must be refused by a safety check (exit 6); returns the error.
fn drain_refused(w: &World, region: &str) -> String {
    let refused = w.run_json(&["drain", region]);
    assert_eq!(refused.code, 6, "{}", refused.debug());
    refused.summary().rest["error"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn drain_refuses_the_last_region_and_restore_puts_it_back() {
    let (w, _moto, aws) = aws_world("");
    assert_eq!(w.run_json(&["dns", "apply"]).code, 0);

    let drained = w.run_json(&["drain", "apac"]);
    assert_eq!(drained.code, 0, "{}", drained.debug());
    assert!(inverted(&aws, "apac-prod"));
    assert!(drained.stdout.contains("in sync"), "{}", drained.debug());
    let status = w.run_json(&["status"]);
    let dns_of = |rack: &str| {
        status
            .events
            .iter()
            .find(|e| e.event == "status.rack" && e.rack.as_deref() == Some(rack))
            .map(|e| e.rest["dns"].as_str().unwrap_or_default().to_string())
            .unwrap()
    };
    assert_eq!(dns_of("apac-prod"), "drained");
    assert_eq!(dns_of("us-prod"), "in rotation");

    // A deploy while a region is drained is refused before any change.
    let before = w.actives();
    let deploy = w.run_json(&["deploy"]);
    assert_eq!(deploy.code, 3, "{}", deploy.debug());
    assert!(deploy.summary().rest["error"]
        .as_str()
        .unwrap()
        .contains("apac-prod"));
    assert_eq!(w.actives(), before);

    assert_eq!(w.run_json(&["drain", "eu"]).code, 0);
    // us-prod is the last region in rotation: refused with the numbers, nothing changed.
    let error = drain_refused(&w, "us-prod");
    assert!(
        error.contains("only 0 other region(s)") && error.contains("at least 1"),
        "{error}"
    );
    assert!(!inverted(&aws, "us-prod"));

    let restored = w.run_json(&["restore", "apac"]);
    assert_eq!(restored.code, 0, "{}", restored.debug());
    assert!(!inverted(&aws, "apac-prod"));
    assert_eq!(w.run_json(&["restore", "eu"]).code, 0);
    let deploy = w.run_json(&["deploy"]);
    assert_eq!(deploy.code, 0, "{}", deploy.debug());
}

/// `[dns.cpu]` reads each region's CPU from CloudWatch: spare processes are not enough when the
/// regions left already run hot; a higher target lets the same drain through.
#[test]
fn drain_counts_cpu_headroom_from_cloudwatch() {
    let ns = acme_aws::testing::unique_name("Acme");
    let cpu = |target: u32| {
        format!(
            "[dns.cpu]\nnamespace = \"{ns}\"\nmetric = \"CPUUtilization\"\ndimensions = {{ Rack = \"{{rack}}\", Service = \"{{service}}\" }}\nwindow = \"5m\"\ntarget = {target}\n"
        )
    };
    let (w, _moto, aws) = aws_world(&cpu(70));
    let racks = std::fs::read_to_string(&w.racks_toml).unwrap();
    // us-prod and eu-prod may grow to 2 processes: one spare each, so counting processes alone
    // would let apac-prod (1 process) go.
    let racks = racks
        .replace(
            "bucket = \"models-use1\"\n",
            "bucket = \"models-use1\"\nmax_scale = 2\n",
        )
        .replace(
            "bucket = \"models-euw1\"\n",
            "bucket = \"models-euw1\"\nmax_scale = 2\n",
        );
    w.write_racks(&racks);
    rt().block_on(async {
        let now = std::time::SystemTime::now();
        for (rack, region, busy) in [
            ("us-prod", "us-east-1", 95.0),
            ("eu-prod", "eu-west-1", 95.0),
            ("apac-prod", "ap-southeast-1", 100.0),
        ] {
            aws.put_datapoints(
                region,
                &ns,
                "CPUUtilization",
                &[
                    ("Rack".into(), rack.into()),
                    ("Service".into(), "inference".into()),
                ],
                &[
                    (now - std::time::Duration::from_secs(60), busy),
                    (now, busy),
                ],
            )
            .await
            .unwrap();
        }
    });
    assert_eq!(w.run_json(&["dns", "apply"]).code, 0);

    let error = drain_refused(&w, "apac");
    assert!(
        error.contains("apac-prod carries 1.00") && error.contains("can add 0.90"),
        "{error}"
    );
    assert!(
        error.contains("us-prod 1/2 processes at 95% CPU"),
        "{error}"
    );
    assert!(!inverted(&aws, "apac-prod"), "nothing changed");

    w.write_racks(&racks.replace("target = 70", "target = 90"));
    let drained = w.run_json(&["drain", "apac"]);
    assert_eq!(drained.code, 0, "{}", drained.debug());
    assert!(
        drained.stdout.contains("can add 1.70"),
        "{}",
        drained.debug()
    );
    assert!(inverted(&aws, "apac-prod"));
}

#[test]
fn drain_with_scale_to_zero_restores_the_saved_count() {
    let (w, _moto, _aws) = aws_world("");
    assert_eq!(w.run_json(&["dns", "apply"]).code, 0);
    let out = w.run_json(&["drain", "apac", "--scale-to-zero"]);
    assert_eq!(out.code, 0, "{}", out.debug());
    let running = |rack: &str| {
        let t = w.ok(&["scale", "inference", "-a", "inference", "-r", rack]);
        t.lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .nth(2)
            .unwrap()
            .to_string()
    };
    assert_eq!(running("apac-prod"), "0");
    let out = w.run_json(&["restore", "apac"]);
    assert_eq!(out.code, 0, "{}", out.debug());
    assert_eq!(running("apac-prod"), "1");
}

/// Copies the primary object into a regional bucket with its checksum metadata, as S3
/// replication would (moto copies nothing).
fn replicate(aws: &acme_aws::Aws, key: &str, to: (&str, &str), body: Vec<u8>, sha256: &str) {
    rt().block_on(async {
        aws.s3(to.0)
            .put_object()
            .bucket(to.1)
            .key(key)
            .metadata("sha256", sha256)
            .body(aws_sdk_s3::primitives::ByteStream::from(body))
            .send()
            .await
            .unwrap();
    });
}

#[test]
fn models_push_waits_for_every_region_and_a_bad_copy_blocks_that_rack() {
    let (w, _moto, aws) = aws_world(MODELS);
    assert_eq!(w.run_json(&["replication", "apply"]).code, 0);
    // 24 MiB in 5 MiB parts: several parts in flight, verified end to end by checksum.
    let bytes: Vec<u8> = (0..24 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let sha = hex::encode(Sha256::digest(&bytes));
    let file = w.dir.path().join("model.gguf");
    std::fs::write(&file, &bytes).unwrap();
    let push = w
        .cli()
        .args([
            "models",
            "push",
            file.to_str().unwrap(),
            "--name",
            "bitnet.gguf",
            "--output",
            "json",
            "--wait",
            "60s",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let key = "models/bitnet.gguf";
    let primary = BucketRef::new("us-east-1", "models-use1");
    wait_for(
        "the upload to land in the primary bucket",
        Duration::from_secs(60),
        || rt().block_on(aws.head_model(&primary, key)).unwrap(),
    );
    let uploaded = rt().block_on(aws.get_object(&primary, key)).unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(&uploaded.body)),
        sha,
        "the bytes arrived whole"
    );
    replicate(&aws, key, ("eu-west-1", "models-euw1"), bytes.clone(), &sha);
    replicate(
        &aws,
        key,
        ("ap-southeast-1", "models-apse1"),
        bytes.clone(),
        &sha,
    );
    let pushed = Run::from(push.wait_with_output().unwrap());
    assert_eq!(pushed.code, 0, "{}", pushed.debug());
    assert!(
        rt().block_on(aws.pending_uploads(&primary, key))
            .unwrap()
            .is_empty(),
        "no orphaned multipart uploads"
    );

    let status = w.run_json(&["models", "status"]);
    let row = status
        .events
        .iter()
        .find(|e| e.event == "models.model")
        .expect("a model row");
    assert_eq!(row.rest["sha256"], sha.as_str());
    assert_eq!(row.rest["regions"]["apac-prod"], "replicated");

    // A corrupted copy in apac: the deploy is refused before any change, naming both checksums.
    let before = w.actives();
    replicate(
        &aws,
        key,
        ("ap-southeast-1", "models-apse1"),
        b"corrupt".to_vec(),
        &hex::encode(Sha256::digest(b"corrupt")),
    );
    let refused = w.run_json(&["deploy"]);
    assert_eq!(refused.code, 3, "{}", refused.debug());
    let error = refused.summary().rest["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains("models-apse1") && error.contains(key),
        "{error}"
    );
    assert!(
        error.contains(&sha) && error.contains(&hex::encode(Sha256::digest(b"corrupt"))),
        "{error}"
    );
    assert_eq!(w.actives(), before);

    // Fixed: every release pins the model in its own region's bucket.
    replicate(&aws, key, ("ap-southeast-1", "models-apse1"), bytes, &sha);
    let deploy = w.run_json(&["deploy"]);
    assert_eq!(deploy.code, 0, "{}", deploy.debug());
    for (rack, _, bucket) in BUCKETS {
        let (release, _) = w.active(rack);
        let info = w.ok(&["releases", "info", &release, "-a", "inference", "-r", rack]);
        assert!(
            info.contains(&format!("MODEL_PATH=s3://{bucket}/{key}?versionId=")),
            "{rack} pins the verified version: {info}"
        );
        assert!(
            info.contains(&format!("MODEL_SHA256={sha}")),
            "{rack}: {info}"
        );
    }
}

const METRIC_GATE: &str = "[[bake.metrics]]\nname = \"error rate\"\nnamespace = \"{ns}\"\nmetric = \"Errors\"\ndimensions = { Rack = \"{rack}\" }\nstat = \"Maximum\"\nperiod = \"60s\"\nthreshold = 5.0\nmissing = \"{missing}\"\n";

#[test]
fn a_breaching_metric_gate_rolls_the_canary_back() {
    let ns = acme_aws::testing::unique_name("Acme");
    let gate = METRIC_GATE
        .replace("{ns}", &ns)
        .replace("{missing}", "pass");
    let (w, _moto, aws) = aws_world(&gate);
    let before = w.actives();
    rt().block_on(async {
        let now = std::time::SystemTime::now();
        aws.put_datapoints(
            "us-east-1",
            &ns,
            "Errors",
            &[("Rack".into(), "us-prod".into())],
            &[(now, 42.0)],
        )
        .await
        .unwrap();
    });
    let run = w.run_json(&["deploy"]);
    assert_eq!(run.code, 2, "{}", run.debug());
    let error = run.summary().rest["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("metrics gate") && error.contains("error rate") && error.contains("42"),
        "{error}"
    );
    assert_eq!(w.active("us-prod").1, before[0].1);
    assert_eq!(w.actives()[1..], before[1..]);
}

#[test]
fn a_metric_gate_without_data_does_what_it_says() {
    let ns = acme_aws::testing::unique_name("Acme");
    let (w, _moto, _aws) = aws_world(
        &METRIC_GATE
            .replace("{ns}", &ns)
            .replace("{missing}", "pass"),
    );
    let run = w.run_json(&["deploy", "--only", "us"]);
    assert_eq!(run.code, 0, "missing = pass: {}", run.debug());

    let strict = std::fs::read_to_string(&w.racks_toml)
        .unwrap()
        .replace("missing = \"pass\"", "missing = \"fail\"");
    w.write_racks(&strict);
    let run = w.run_json(&["deploy", "--only", "us"]);
    assert_eq!(run.code, 2, "missing = fail: {}", run.debug());
    assert!(run.summary().rest["error"]
        .as_str()
        .unwrap()
        .contains("no data"));
}

#[test]
fn a_missing_zone_or_credentials_is_a_clear_error() {
    let (w, _moto, _aws) = aws_world("");
    let text = std::fs::read_to_string(&w.racks_toml)
        .unwrap()
        .replace("zone = \"acme.test\"", "zone = \"nope.test\"")
        .replace(
            "name = \"inference.acme.test\"",
            "name = \"inference.nope.test\"",
        );
    w.write_racks(&text);
    let run = w.run_json(&["dns", "plan"]);
    assert_eq!(run.code, 1, "{}", run.debug());
    assert!(
        run.summary().rest["error"]
            .as_str()
            .unwrap()
            .contains("nope.test"),
        "{}",
        run.debug()
    );

    let out = w
        .cli()
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_SHARED_CREDENTIALS_FILE", w.dir.path().join("none"))
        .env("AWS_CONFIG_FILE", w.dir.path().join("none"))
        .args(["dns", "plan", "--output", "json"])
        .output()
        .unwrap();
    let run = Run::from(out);
    assert_eq!(run.code, 1, "{}", run.debug());
    let error = run.summary().rest["error"].as_str().unwrap().to_lowercase();
    assert!(error.contains("credential"), "{error}");
}

/// racks.toml pointed at an S3 state backend (journal and lock in a bucket).
fn s3_state(w: &World, aws: &acme_aws::Aws) {
    rt().block_on(create_bucket(
        aws,
        &BucketRef::new("us-east-1", "rollout-state"),
    ))
    .unwrap();
    let text = std::fs::read_to_string(&w.racks_toml).unwrap().replace(
        "[state]\ndir = \"state\"\n",
        "[state]\nbucket = \"rollout-state\"\nprefix = \"acme/\"\nregion = \"us-east-1\"\n",
    );
    w.write_racks(&text);
}

fn put_lock(aws: &acme_aws::Aws, owner: &str, expires_unix: u64) {
    let body = serde_json::json!({"owner": owner, "run": "20261203T000000Z-dead", "host": "ci-runner-7",
        "pid": 4242, "acquired": "2026-12-03T00:00:00Z", "expires_unix": expires_unix});
    rt().block_on(aws.put_object(
        &BucketRef::new("us-east-1", "rollout-state"),
        "acme/lock.json",
        body.to_string().into_bytes(),
    ))
    .unwrap();
}

#[test]
fn s3_state_backend_one_deploy_at_a_time_and_locks_can_be_taken_over_or_broken() {
    let (w, _moto, aws) = aws_world("");
    s3_state(&w, &aws);
    let a = w
        .cli()
        .args(["deploy", "--output", "json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let b = w
        .cli()
        .args(["deploy", "--output", "json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (ra, rb) = (
        Run::from(a.wait_with_output().unwrap()),
        Run::from(b.wait_with_output().unwrap()),
    );
    let mut codes = [ra.code, rb.code];
    codes.sort();
    assert_eq!(codes, [0, 4], "a: {}\nb: {}", ra.debug(), rb.debug());
    // The journal is in the bucket, and status reads it from there.
    let keys = rt()
        .block_on(aws.list_keys(&BucketRef::new("us-east-1", "rollout-state"), "acme/runs/"))
        .unwrap();
    assert!(keys.len() > 5, "{keys:?}");
    let status = w.run_json(&["status"]);
    assert!(
        status
            .events
            .iter()
            .any(|e| e.event == "status.rack" && e.rest["journal"]["phase"] == "baked"),
        "{}",
        status.debug()
    );

    // Another machine's live lock: refused with exit 4, naming it.
    let far = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    put_lock(&aws, "ci@runner-7", far);
    let held = w.run_json(&["deploy"]);
    assert_eq!(held.code, 4, "{}", held.debug());
    assert!(held.summary().rest["error"]
        .as_str()
        .unwrap()
        .contains("ci@runner-7"));
    // Broken by hand, with a reason, recorded in that run's journal.
    assert_eq!(
        w.run_json(&["lock", "release", "--force"]).code,
        3,
        "--force needs --reason"
    );
    let broken = w.run_json(&["lock", "release", "--force", "--reason", "runner died"]);
    assert_eq!(broken.code, 0, "{}", broken.debug());
    let note = rt()
        .block_on(aws.list_keys(
            &BucketRef::new("us-east-1", "rollout-state"),
            "acme/runs/20261203T000000Z-dead/",
        ))
        .unwrap();
    assert_eq!(note.len(), 1, "the break is journaled");

    // An expired lock is taken over.
    put_lock(&aws, "ci@runner-7", 1);
    let run = w.run_json(&["deploy", "--only", "us"]);
    assert_eq!(run.code, 0, "{}", run.debug());
}

#[test]
fn a_missing_bucket_is_named_and_nothing_changes() {
    let (w, _moto, _aws) =
        aws_world(&MODELS.replace("bucket = \"models-use1\"", "bucket = \"no-such-bucket\""));
    let before = w.actives();
    let status = w.run_json(&["models", "status"]);
    assert_eq!(status.code, 1, "{}", status.debug());
    assert!(
        status.summary().rest["error"]
            .as_str()
            .unwrap()
            .contains("no-such-bucket"),
        "{}",
        status.debug()
    );
    let deploy = w.run_json(&["deploy"]);
    assert_ne!(deploy.code, 0, "{}", deploy.debug());
    assert!(
        deploy.summary().rest["error"]
            .as_str()
            .unwrap()
            .contains("no-such-bucket"),
        "{}",
        deploy.debug()
    );
    assert_eq!(w.actives(), before);
}
