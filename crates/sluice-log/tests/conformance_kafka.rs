//! The conformance suite against the `kafka` backend, on the Kafka-protocol broker named by
//! `SLUICE_TEST_KAFKA` (skipped with a note when unset, failing when unset in CI).

mod kafka_support;

use kafka_support::{backend, kafka_broker};

sluice_log::conformance_tests!(when kafka_broker() => |broker: String| async move { backend(&broker) });
