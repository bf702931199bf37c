//! The conformance suite against the `memory` backend.

use std::sync::Arc;

use sluice_log::memory::{MemoryConfig, MemoryProvider};
use sluice_log::testkit::TestBackend;

sluice_log::conformance_tests!(|| async {
    TestBackend::new(Arc::new(MemoryProvider::new(MemoryConfig::default())))
});
