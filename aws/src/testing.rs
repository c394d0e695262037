//! Test harness (feature `testing`): a private moto server for a test suite, plus the setup
//! calls (buckets, zones) that the product never makes.
//!
//! `Moto::start()` runs `tools/moto/moto_cbor_server.py` (moto plus CloudWatch's CBOR
//! protocol) with `python3` on a free loopback port, waits until it answers, and stops it when
//! dropped. The server also exits by itself when the test process ends, so a shared instance
//! in a `static` leaves nothing behind. Tests sharing one server use unique names
//! ([`unique_name`]) instead of resetting it under each other's feet.

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};

use crate::error::{classify, Target};
use crate::route53::{normalize_name, HostedZone};
use crate::s3::BucketRef;
use crate::{Aws, AwsError, AwsOptions};

/// Overrides the path of `moto_cbor_server.py`.
pub const SCRIPT_ENV: &str = "ACME_MOTO_SCRIPT";
/// Overrides the Python interpreter (default `python3`).
pub const PYTHON_ENV: &str = "ACME_MOTO_PYTHON";
/// Access key and secret of the static test credentials.
pub const TEST_CREDENTIAL: &str = "testing";
/// How long moto may take to answer after starting (it is ~2 s on an idle machine).
const START_DEADLINE: Duration = Duration::from_secs(60);
const INSTALL_HINT: &str = "pip install -r tools/moto/requirements.txt";

/// Why moto could not be started.
#[derive(Debug)]
pub struct MotoError(String);

impl fmt::Display for MotoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MotoError {}

/// A running moto server, stopped on drop.
pub struct Moto {
    child: Child,
    port: u16,
    log_path: PathBuf,
}

impl fmt::Debug for Moto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Moto")
            .field("endpoint", &self.endpoint())
            .finish()
    }
}

fn script_path() -> PathBuf {
    match std::env::var_os(SCRIPT_ENV) {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tools/moto/moto_cbor_server.py"),
    }
}

fn free_port() -> Result<u16, MotoError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|err| MotoError(format!("cannot find a free loopback port: {err}")))?;
    listener
        .local_addr()
        .map(|address| address.port())
        .map_err(|err| MotoError(format!("cannot find a free loopback port: {err}")))
}

/// One plain HTTP/1.1 request without a body; returns the status code.
fn http_status(port: u16, method: &str, path: &str) -> std::io::Result<u16> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let head = String::from_utf8_lossy(&response[..response.len().min(64)]).into_owned();
    head.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {head:?}")))
}

impl Moto {
    /// Starts a private moto server and waits until it answers.
    pub fn start() -> Result<Moto, MotoError> {
        let script = script_path();
        if !script.is_file() {
            return Err(MotoError(format!(
                "moto wrapper not found at {}; set {SCRIPT_ENV} to the path of tools/moto/moto_cbor_server.py",
                script.display()
            )));
        }
        let python = std::env::var(PYTHON_ENV).unwrap_or_else(|_| "python3".to_owned());
        let port = free_port()?;
        let log_path =
            std::env::temp_dir().join(format!("acme-moto-{}-{port}.log", std::process::id()));
        let log = File::create(&log_path).map_err(|err| {
            MotoError(format!(
                "cannot create moto log {}: {err}",
                log_path.display()
            ))
        })?;
        let log_err = log.try_clone().map_err(|err| {
            MotoError(format!(
                "cannot share moto log {}: {err}",
                log_path.display()
            ))
        })?;
        let child = Command::new(&python)
            .arg(&script)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .args(["--parent-pid", &std::process::id().to_string()])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|err| {
                MotoError(format!(
                    "cannot run `{python}` ({err}); install Python 3 and `{INSTALL_HINT}`, or set {PYTHON_ENV}"
                ))
            })?;
        let mut moto = Moto {
            child,
            port,
            log_path,
        };
        moto.wait_until_ready()?;
        // The log is only read to explain a failed start. A server kept in a `static` is never
        // dropped, so the file goes now; the server keeps writing to the unlinked file.
        let _ = std::fs::remove_file(&moto.log_path);
        Ok(moto)
    }

    fn wait_until_ready(&mut self) -> Result<(), MotoError> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = self.log_tail();
                let hint = if log.contains("No module named")
                    || log.contains("Install the test dependencies")
                {
                    format!("moto or its CBOR support is not installed: {INSTALL_HINT}")
                } else {
                    "see its output".to_owned()
                };
                return Err(MotoError(format!(
                    "moto exited at start ({status}); {hint}\n{log}"
                )));
            }
            if http_status(self.port, "GET", "/moto-api/").is_ok_and(|status| status == 200) {
                return Ok(());
            }
            if started.elapsed() > START_DEADLINE {
                return Err(MotoError(format!(
                    "moto did not answer on {} within {START_DEADLINE:?}\n{}",
                    self.endpoint(),
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `http://127.0.0.1:PORT`: every service and region.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Forgets all state (every bucket, zone, metric) of this server.
    pub fn reset(&self) -> Result<(), MotoError> {
        match http_status(self.port, "POST", "/moto-api/reset") {
            Ok(200) => Ok(()),
            Ok(status) => Err(MotoError(format!("moto reset answered HTTP {status}"))),
            Err(err) => Err(MotoError(format!("moto reset failed: {err}"))),
        }
    }

    /// Options for an [`Aws`] against this server: static `testing` credentials, no retries
    /// (moto's 500s would only slow tests down), fast INSYNC polling.
    pub fn options(&self) -> AwsOptions {
        AwsOptions {
            region: Some("us-east-1".to_owned()),
            endpoint_url: Some(self.endpoint()),
            static_credentials: Some((TEST_CREDENTIAL.to_owned(), TEST_CREDENTIAL.to_owned())),
            max_attempts: 1,
            change_poll_interval: Duration::from_millis(50),
            change_deadline: Duration::from_secs(10),
            ..AwsOptions::default()
        }
    }

    /// An [`Aws`] session against this server.
    pub async fn aws(&self) -> Aws {
        Aws::load(self.options()).await
    }

    /// Environment for a child process (the CLI) that should talk to this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ACCESS_KEY_ID", TEST_CREDENTIAL.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", TEST_CREDENTIAL.to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
            ("AWS_MAX_ATTEMPTS", "1".to_owned()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A name no other test in this run (or a recent run) uses: `prefix-<time>-<counter>`,
/// lower-case and valid as a bucket name or DNS label.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() % 100_000_000)
        .unwrap_or_default();
    format!(
        "{prefix}-{millis}-{}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates a bucket in its region (setup only: the product never creates buckets).
pub async fn create_bucket(aws: &Aws, bucket: &BucketRef) -> Result<(), AwsError> {
    let mut request = aws.s3(&bucket.region).create_bucket().bucket(&bucket.name);
    if bucket.region != "us-east-1" {
        request = request.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(bucket.region.as_str()))
                .build(),
        );
    }
    request
        .send()
        .await
        .map_err(|err| classify("CreateBucket", Target::Bucket(&bucket.name), err))?;
    Ok(())
}

/// Creates a public hosted zone (setup only).
pub async fn create_zone(aws: &Aws, name: &str) -> Result<HostedZone, AwsError> {
    let name = normalize_name(name);
    let output = aws
        .route53_client()
        .create_hosted_zone()
        .name(&name)
        .caller_reference(unique_name("zone"))
        .send()
        .await
        .map_err(|err| classify("CreateHostedZone", Target::Zone(&name), err))?;
    let id = output
        .hosted_zone()
        .map(|zone| zone.id().trim_start_matches("/hostedzone/").to_owned())
        .unwrap_or_default();
    Ok(HostedZone { id, name })
}
