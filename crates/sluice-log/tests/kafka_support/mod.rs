//! Helpers for the kafka backend's tests: the broker named by `SLUICE_TEST_KAFKA` (scripts/test.sh
//! starts Tansu and sets it).

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use sluice_log::kafka::{KafkaConfig, KafkaProvider};
use sluice_log::testkit::TestBackend;

/// The environment variable with the broker address (e.g. `127.0.0.1:9092`).
pub(crate) const KAFKA_ENV: &str = "SLUICE_TEST_KAFKA";

/// The broker address, or `None` (after a note) when the tests should be skipped. In CI
/// (`CI=true`) a missing broker fails the test instead.
pub(crate) fn kafka_broker() -> Option<String> {
    match std::env::var(KAFKA_ENV) {
        Ok(e) if !e.is_empty() => Some(e),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{KAFKA_ENV} is not set in CI: the kafka tests must run against a real broker \
                 (scripts/test.sh starts one)"
            );
            eprintln!("note: {KAFKA_ENV} is not set; skipping a kafka test");
            None
        }
    }
}

/// A prefix no other test uses (tests share one broker).
pub(crate) fn unique_prefix(what: &str) -> String {
    format!("{what}-{:016x}-", rand::random::<u64>())
}

/// Settings for tests under `prefix`. Readers are `read_uncommitted`: the test broker (Tansu
/// 0.6.0) can leave a fenced epoch's transaction open for good, and `read_committed` readers then
/// stall at it (see "Limits of the test broker" in `sluice_log::kafka`).
pub(crate) fn test_config(broker: &str, prefix: &str) -> KafkaConfig {
    KafkaConfig {
        prefix: prefix.into(),
        op_timeout: Duration::from_secs(20),
        read_committed: false,
        ..KafkaConfig::new(broker)
    }
}

/// A fresh backend: a new random prefix on the test broker.
pub(crate) fn backend(broker: &str) -> TestBackend {
    let config = test_config(broker, &unique_prefix("conf"));
    TestBackend::new(Arc::new(
        KafkaProvider::new(config).expect("kafka provider"),
    ))
}
