//! Missing credentials give a `Credentials` error that says how to provide them. Its own test
//! binary, because it clears the process environment.

use acme_aws::{Aws, AwsError};

#[tokio::test]
async fn missing_credentials_say_to_set_a_profile_or_keys() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ] {
        std::env::remove_var(name);
    }
    // No shared config files, no instance metadata: nothing in the chain can answer.
    std::env::set_var("AWS_CONFIG_FILE", dir.path().join("config"));
    std::env::set_var(
        "AWS_SHARED_CREDENTIALS_FILE",
        dir.path().join("credentials"),
    );
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    std::env::set_var("AWS_REGION", "eu-west-1");
    // Never reached: signing fails first.
    std::env::set_var("AWS_ENDPOINT_URL", "http://127.0.0.1:9");

    let aws = Aws::from_env().await;
    let err = aws.verify_credentials().await.unwrap_err();
    assert!(matches!(err, AwsError::Credentials { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("AWS_PROFILE") && text.contains("AWS_ACCESS_KEY_ID"),
        "{text}"
    );

    let bucket = acme_aws::s3::BucketRef::new("eu-west-1", "models");
    let err = aws.head_model(&bucket, "m.gguf").await.unwrap_err();
    assert!(matches!(err, AwsError::Credentials { .. }), "{err:?}");
    assert!(err.to_string().contains("HeadObject"), "{err}");
}
