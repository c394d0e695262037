//! The moto harness other suites use: it starts, resets, stops on drop, and says what to do
//! when it cannot start. Its own test binary, because it changes the process environment.

use std::net::TcpStream;

use acme_aws::s3::BucketRef;
use acme_aws::testing::{create_bucket, Moto, PYTHON_ENV, SCRIPT_ENV};

#[tokio::test]
async fn moto_starts_resets_stops_and_explains_failures() {
    let moto = Moto::start().unwrap_or_else(|err| panic!("{err}"));
    let endpoint = moto.endpoint();
    let address = endpoint.trim_start_matches("http://").to_owned();
    let aws = moto.aws().await;
    let bucket = BucketRef::new("us-east-1", "harness-bucket");
    create_bucket(&aws, &bucket).await.unwrap();
    aws.put_object(&bucket, "k", b"v".to_vec()).await.unwrap();

    moto.reset().unwrap();
    let err = aws.get_object(&bucket, "k").await.unwrap_err();
    assert!(err.is_not_found(), "reset should forget the bucket: {err}");
    assert!(moto
        .env()
        .iter()
        .any(|(key, value)| key == "AWS_ENDPOINT_URL" && value == &endpoint));

    // What a CLI child process gets: configuration from the environment alone.
    for (key, value) in moto.env() {
        std::env::set_var(key, value);
    }
    let from_env = acme_aws::Aws::from_env().await;
    assert_eq!(from_env.endpoint_url(), Some(endpoint.as_str()));
    let env_bucket = BucketRef::new("eu-west-1", "harness-env-bucket");
    create_bucket(&from_env, &env_bucket).await.unwrap();
    from_env
        .put_object(&env_bucket, "k", b"v".to_vec())
        .await
        .unwrap();
    assert_eq!(
        from_env.get_object(&env_bucket, "k").await.unwrap().body,
        b"v"
    );

    drop(moto);
    assert!(
        TcpStream::connect(&address).is_err(),
        "moto still listens on {address} after drop"
    );

    std::env::set_var(SCRIPT_ENV, "/nonexistent/moto_cbor_server.py");
    let err = Moto::start().unwrap_err().to_string();
    assert!(err.contains(SCRIPT_ENV), "{err}");
    std::env::remove_var(SCRIPT_ENV);

    std::env::set_var(PYTHON_ENV, "/nonexistent/python3");
    let err = Moto::start().unwrap_err().to_string();
    assert!(
        err.contains("pip install -r tools/moto/requirements.txt"),
        "{err}"
    );
    std::env::remove_var(PYTHON_ENV);
}
