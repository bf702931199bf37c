//! The conformance suite against the `local` backend (small segments, so reads cross rolls).

use std::sync::Arc;

use sluice_log::local::{LocalConfig, LocalProvider};
use sluice_log::testkit::TestBackend;

sluice_log::conformance_tests!(|| async {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = LocalConfig {
        segment_size: 16 << 10,
        ..LocalConfig::new(dir.path())
    };
    TestBackend::with_keep(
        Arc::new(LocalProvider::new(config).expect("local provider")),
        dir,
    )
});
