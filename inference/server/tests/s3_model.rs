//! `MODEL_PATH=s3://bucket/key` end to end: a private moto server stands in for S3, the test
//! pushes a tiny model the way `acme-rollout models push` does (with `sha256` metadata), and
//! the real `acme-infer` binary downloads, verifies, serves and caches it, or refuses it with
//! a message naming the object and both checksums.
#![cfg(unix)]

mod common;

use std::future::Future;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use sha2::{Digest, Sha256};

const BINARY: &str = env!("CARGO_BIN_EXE_acme-infer");
const INSTALL_HINT: &str = "pip install -r tools/moto/requirements.txt";
const MOTO_START_DEADLINE: Duration = Duration::from_secs(60);
const SERVER_DEADLINE: Duration = Duration::from_secs(60);
const REGION: &str = "us-east-1";

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Status and body of one `GET`, or `None` while nothing listens.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// A private moto server (`tools/moto/moto_cbor_server.py`), killed on drop. The one shared
/// by this binary's tests lives in a `static` and is never dropped, so it is also told to
/// exit with this process (`--parent-pid`).
struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    fn start() -> Moto {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/moto/moto_cbor_server.py");
        assert!(
            script.is_file(),
            "the moto wrapper is missing at {}",
            script.display()
        );
        let port = free_port();
        let log =
            std::env::temp_dir().join(format!("acme-infer-moto-{}-{port}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new("python3")
            .arg(&script)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .args(["--parent-pid", &std::process::id().to_string()])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run python3 ({e}); install Python 3 and `{INSTALL_HINT}`")
            });
        let mut moto = Moto { child, port };
        let started = Instant::now();
        loop {
            if let Some(status) = moto.child.try_wait().unwrap() {
                let output = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("moto exited at start ({status}); is moto installed? `{INSTALL_HINT}`\n{output}");
            }
            if matches!(http_get(port, "/moto-api/"), Some((200, _))) {
                break;
            }
            assert!(
                started.elapsed() < MOTO_START_DEADLINE,
                "moto did not answer within {MOTO_START_DEADLINE:?}; `{INSTALL_HINT}`\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_file(&log);
        moto
    }

    fn shared() -> &'static Moto {
        static MOTO: OnceLock<Moto> = OnceLock::new();
        MOTO.get_or_init(Moto::start)
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs `work` with an S3 client for this server on a runtime of its own (SDK clients
    /// keep connections on the runtime that made them).
    fn with_s3<T, F: Future<Output = T>>(&self, work: impl FnOnce(Client) -> F) -> T {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let shared = aws_config::defaults(BehaviorVersion::latest())
                .region(Region::new(REGION))
                .endpoint_url(self.endpoint())
                .credentials_provider(Credentials::new("testing", "testing", None, None, "static"))
                .load()
                .await;
            let config = aws_sdk_s3::config::Builder::from(&shared)
                .force_path_style(true)
                .build();
            work(Client::from_conf(config)).await
        })
    }

    /// A new bucket whose name no other test uses.
    fn bucket(&self) -> String {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "models-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        self.with_s3(|s3| async move {
            s3.create_bucket().bucket(&name).send().await.unwrap();
            name
        })
    }

    /// Uploads `bytes` with `sha256` user metadata, as `acme-rollout models push` does.
    fn push(&self, bucket: &str, key: &str, bytes: &[u8], recorded_sha256: &str) {
        self.with_s3(|s3| async move {
            s3.put_object()
                .bucket(bucket)
                .key(key)
                .metadata("sha256", recorded_sha256)
                .body(ByteStream::from(bytes.to_vec()))
                .send()
                .await
                .unwrap();
        });
    }

    fn delete(&self, bucket: &str, key: &str) {
        self.with_s3(|s3| async move {
            s3.delete_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap();
        });
    }

    /// Environment of a server that talks to this moto: configuration only from variables,
    /// never from the machine's `~/.aws` or instance metadata.
    fn env(&self, home: &Path) -> Vec<(String, String)> {
        let mut env = no_aws_env(home);
        env.extend(
            [
                ("AWS_ENDPOINT_URL", self.endpoint()),
                ("AWS_REGION", REGION.to_string()),
                ("AWS_ACCESS_KEY_ID", "testing".to_string()),
                ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        env
    }
}

/// A process environment with no AWS configuration at all.
fn no_aws_env(home: &Path) -> Vec<(String, String)> {
    [
        ("HOME", home.display().to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        (
            "AWS_CONFIG_FILE",
            home.join("no-config").display().to_string(),
        ),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            home.join("no-credentials").display().to_string(),
        ),
        ("INFERENCE_THREADS", "1".to_string()),
    ]
    .map(|(k, v)| (k.to_string(), v))
    .to_vec()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The tiny synthetic model's bytes and SHA-256.
fn tiny_model() -> (Vec<u8>, String) {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(common::write_tiny_model(dir.path())).unwrap();
    let sha256 = sha256_hex(&bytes);
    (bytes, sha256)
}

/// A running `acme-infer`, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(env: &[(String, String)]) -> Server {
        let port = free_port();
        let child = Command::new(BINARY)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Server { child, port }
    }

    fn output(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            out.read_to_string(&mut text).unwrap();
        }
        if let Some(mut err) = self.child.stderr.take() {
            err.read_to_string(&mut text).unwrap();
        }
        text
    }

    /// Waits for `/health` 200 and returns its body; panics with the log if the server exits.
    fn healthy(&mut self) -> serde_json::Value {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("acme-infer exited ({status}):\n{}", self.output());
            }
            if let Some((200, body)) = http_get(self.port, "/health") {
                return serde_json::from_str(&body).unwrap();
            }
            assert!(
                started.elapsed() < SERVER_DEADLINE,
                "not healthy within {SERVER_DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the server to exit by itself; returns the status and everything it printed.
    /// `/health` must never have said 200 meanwhile.
    fn refused(mut self) -> (ExitStatus, String) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.output());
            }
            if let Some((200, body)) = http_get(self.port, "/health") {
                panic!("served a model it should have refused: {body}");
            }
            assert!(
                started.elapsed() < SERVER_DEADLINE,
                "still running after {SERVER_DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn with_vars(mut env: Vec<(String, String)>, vars: &[(&str, &str)]) -> Vec<(String, String)> {
    env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

fn cached_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn an_s3_model_is_downloaded_verified_served_and_then_reused_from_the_cache() {
    let moto = Moto::shared();
    let (bytes, sha256) = tiny_model();
    let bucket = moto.bucket();
    moto.push(&bucket, "bitnet/tiny.gguf", &bytes, &sha256);
    let home = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let model_path = format!("s3://{bucket}/bitnet/tiny.gguf");
    let cache_dir = cache.path().display().to_string();
    let env = with_vars(
        moto.env(home.path()),
        &[("MODEL_PATH", &model_path), ("MODEL_CACHE_DIR", &cache_dir)],
    );

    let mut first = Server::start(&env);
    let health = first.healthy();
    assert_eq!(health["sha256"], sha256.as_str(), "{health}");
    let cached = cache.path().join(format!("{sha256}.gguf"));
    assert_eq!(cached_files(cache.path()), vec![cached.clone()]);
    assert_eq!(std::fs::read(&cached).unwrap(), bytes);
    drop(first);

    // With the object gone, only the cache can serve it; the pin names the file to use.
    moto.delete(&bucket, "bitnet/tiny.gguf");
    let pinned = with_vars(env.clone(), &[("MODEL_SHA256", &sha256)]);
    let mut second = Server::start(&pinned);
    assert_eq!(second.healthy()["sha256"], sha256.as_str());
    drop(second);

    // Without a pin the server must ask S3 what the key holds now, and says it is gone.
    let (status, output) = Server::start(&env).refused();
    assert!(!status.success(), "{output}");
    assert!(
        output.contains(&bucket) && output.contains("bitnet/tiny.gguf"),
        "{output}"
    );
}

#[test]
fn a_corrupted_cache_file_is_discarded_and_fetched_again() {
    let moto = Moto::shared();
    let (bytes, sha256) = tiny_model();
    let bucket = moto.bucket();
    moto.push(&bucket, "m.gguf", &bytes, &sha256);
    let home = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let cached = cache.path().join(format!("{sha256}.gguf"));
    let mut corrupt = bytes.clone();
    corrupt[bytes.len() / 2] ^= 0xff;
    std::fs::write(&cached, &corrupt).unwrap();
    let env = with_vars(
        moto.env(home.path()),
        &[
            ("MODEL_PATH", &format!("s3://{bucket}/m.gguf")),
            ("MODEL_CACHE_DIR", &cache.path().display().to_string()),
        ],
    );
    let mut server = Server::start(&env);
    assert_eq!(server.healthy()["sha256"], sha256.as_str());
    assert_eq!(std::fs::read(&cached).unwrap(), bytes);
}

#[test]
fn a_wrong_pin_is_refused_naming_both_checksums() {
    let moto = Moto::shared();
    let (bytes, sha256) = tiny_model();
    let bucket = moto.bucket();
    moto.push(&bucket, "m.gguf", &bytes, &sha256);
    let home = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let wrong_pin = sha256_hex(b"another model");
    let env = with_vars(
        moto.env(home.path()),
        &[
            ("MODEL_PATH", &format!("s3://{bucket}/m.gguf")),
            ("MODEL_CACHE_DIR", &cache.path().display().to_string()),
            ("MODEL_SHA256", &wrong_pin),
        ],
    );
    let (status, output) = Server::start(&env).refused();
    assert!(!status.success(), "{output}");
    assert!(output.contains(&wrong_pin), "{output}");
    assert!(output.contains(&sha256), "{output}");
    assert!(
        output.contains(&format!("s3://{bucket}/m.gguf")),
        "{output}"
    );
    assert!(!output.contains("panicked"), "{output}");
    assert!(cached_files(cache.path()).is_empty());
}

#[test]
fn an_object_whose_bytes_do_not_match_its_recorded_checksum_is_refused() {
    let moto = Moto::shared();
    let (bytes, actual) = tiny_model();
    let recorded = sha256_hex(b"what the uploader meant to push");
    let bucket = moto.bucket();
    moto.push(&bucket, "m.gguf", &bytes, &recorded);
    let home = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let env = with_vars(
        moto.env(home.path()),
        &[
            ("MODEL_PATH", &format!("s3://{bucket}/m.gguf")),
            ("MODEL_CACHE_DIR", &cache.path().display().to_string()),
        ],
    );
    let (status, output) = Server::start(&env).refused();
    assert!(!status.success(), "{output}");
    assert!(
        output.contains(&actual) && output.contains(&recorded),
        "{output}"
    );
    // Neither a finished nor a partial file is left to be mistaken for the model.
    assert!(cached_files(cache.path()).is_empty(), "{output}");
}

#[test]
fn a_missing_key_or_bucket_is_named() {
    let moto = Moto::shared();
    let bucket = moto.bucket();
    let home = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().display().to_string();
    let missing_bucket = format!("{bucket}-absent");
    for (path, named) in [
        (
            format!("s3://{bucket}/models/none.gguf"),
            [bucket.as_str(), "models/none.gguf"],
        ),
        (
            format!("s3://{missing_bucket}/m.gguf"),
            [missing_bucket.as_str(), "does not exist"],
        ),
    ] {
        let env = with_vars(
            moto.env(home.path()),
            &[("MODEL_PATH", &path), ("MODEL_CACHE_DIR", &cache_dir)],
        );
        let (status, output) = Server::start(&env).refused();
        assert!(!status.success(), "{path}: {output}");
        for name in named {
            assert!(output.contains(name), "{path}: {output}");
        }
        assert_eq!(
            output.lines().filter(|l| l.contains("ERROR")).count(),
            1,
            "one error line: {output}"
        );
    }
}

#[test]
fn missing_credentials_are_reported_as_such() {
    let moto = Moto::shared();
    let home = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let env = with_vars(
        no_aws_env(home.path()),
        &[
            ("AWS_ENDPOINT_URL", &moto.endpoint()),
            ("AWS_REGION", REGION),
            ("MODEL_PATH", "s3://models/m.gguf"),
            ("MODEL_CACHE_DIR", &cache.path().display().to_string()),
        ],
    );
    let (status, output) = Server::start(&env).refused();
    assert!(!status.success(), "{output}");
    assert!(output.contains("credentials"), "{output}");
    assert!(output.contains("s3://models/m.gguf"), "{output}");
}
