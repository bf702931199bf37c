//! Helpers for the object backend's tests: stores on a local directory and on the S3-compatible
//! server named by `SLUICE_TEST_S3`.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use sluice_log::object::{ObjectConfig, ObjectProvider, ObjectStoreConfig, S3Config};
use sluice_log::testkit::TestBackend;

/// The environment variable with the S3 endpoint (e.g. `http://127.0.0.1:9000`).
pub(crate) const S3_ENV: &str = "SLUICE_TEST_S3";
/// The bucket the tests use (created if missing).
pub(crate) const BUCKET: &str = "sluice-test";

/// Settings that keep tests quick: small blocks (size seals happen), short intervals.
pub(crate) fn test_config(store: ObjectStoreConfig) -> ObjectConfig {
    ObjectConfig {
        block_size: 8 << 10,
        flush_interval: Duration::from_millis(2),
        poll_interval: Duration::from_millis(5),
        retry_timeout: Duration::from_secs(20),
        ..ObjectConfig::new(store)
    }
}

/// A fresh backend in a new temp directory.
pub(crate) fn local_backend() -> TestBackend {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = test_config(ObjectStoreConfig::LocalDir(dir.path().to_path_buf()));
    TestBackend::with_keep(
        Arc::new(ObjectProvider::new(config).expect("object provider")),
        dir,
    )
}

/// The S3 endpoint, or `None` (after a note) when the tests should be skipped. In CI
/// (`CI=true`) a missing endpoint fails the test instead.
pub(crate) fn s3_endpoint() -> Option<String> {
    match std::env::var(S3_ENV) {
        Ok(e) if !e.is_empty() => Some(e),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{S3_ENV} is not set in CI: the S3 tests must run against a real server \
                 (scripts/test.sh starts one)"
            );
            eprintln!("note: {S3_ENV} is not set; skipping an S3 test");
            None
        }
    }
}

pub(crate) use sluice_log::testkit::ensure_s3_bucket as ensure_bucket;

/// S3 settings for `endpoint`.
pub(crate) fn s3_store(endpoint: &str) -> ObjectStoreConfig {
    ensure_bucket(endpoint, BUCKET);
    ObjectStoreConfig::S3(S3Config {
        access_key_id: "test".into(),
        secret_access_key: "test".into(),
        ..S3Config::compatible(endpoint, BUCKET)
    })
}

/// A fresh backend on S3: a new random prefix in the test bucket.
pub(crate) fn s3_backend(endpoint: &str) -> TestBackend {
    let config = ObjectConfig {
        prefix: format!("conf-{:016x}", rand::random::<u64>()),
        ..test_config(s3_store(endpoint))
    };
    TestBackend::new(Arc::new(
        ObjectProvider::new(config).expect("object provider"),
    ))
}
