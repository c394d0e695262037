//! Throttling is retried with backoff up to the configured attempts, then reported as
//! `Throttled` naming the operation and the resource. moto never throttles, so a stand-in
//! server that always answers S3's `503 SlowDown` plays AWS here.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use acme_aws::s3::BucketRef;
use acme_aws::{Aws, AwsError, AwsOptions};

const SLOW_DOWN: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
<Message>Please reduce your request rate.</Message><RequestId>1</RequestId></Error>";

/// Answers every request with 503 SlowDown; returns its port and a request counter.
fn always_slow_down() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&requests);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut content_length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    content_length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; content_length];
            let _ = reader.read_exact(&mut body);
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = write!(
                stream,
                "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{SLOW_DOWN}",
                SLOW_DOWN.len()
            );
        }
    });
    (port, requests)
}

#[tokio::test]
async fn throttling_is_retried_then_reported_as_throttled() {
    let (port, requests) = always_slow_down();
    let aws = Aws::load(AwsOptions {
        region: Some("us-east-1".into()),
        endpoint_url: Some(format!("http://127.0.0.1:{port}")),
        static_credentials: Some(("testing".into(), "testing".into())),
        max_attempts: 3,
        initial_backoff: Duration::from_millis(10),
        ..AwsOptions::default()
    })
    .await;

    let bucket = BucketRef::new("us-east-1", "journal");
    let err = aws
        .put_object(&bucket, "runs/1.json", b"{}".to_vec())
        .await
        .unwrap_err();
    assert!(matches!(err, AwsError::Throttled { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with("PutObject on s3://journal"),
        "{err}"
    );
    assert_eq!(
        requests.load(Ordering::SeqCst),
        3,
        "one try and two retries"
    );
}
