//! The meta store conformance suite against every backend.

use std::sync::Arc;
use std::time::Duration;

use sluice_meta::testkit::Harness;

async fn memory() -> Option<Harness> {
    Some(Harness {
        store: Arc::new(sluice_meta::memory::MemoryStore::new()),
        prefix: "t/".into(),
        lease_ttl: Duration::from_millis(300),
        keep: None,
    })
}

async fn embedded() -> Option<Harness> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = sluice_meta::embedded::EmbeddedStore::open(dir.path().join("meta.redb"))
        .expect("open embedded store");
    Some(Harness {
        store: Arc::new(store),
        prefix: "t/".into(),
        lease_ttl: Duration::from_millis(300),
        keep: Some(Box::new(dir)),
    })
}

/// A real etcd from `SLUICE_TEST_ETCD`; required when `CI=true`, skipped with a note otherwise.
#[cfg(feature = "etcd")]
async fn etcd() -> Option<Harness> {
    let Ok(endpoint) = std::env::var("SLUICE_TEST_ETCD") else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("SLUICE_TEST_ETCD is not set but CI=true: the etcd conformance tests must run");
        }
        eprintln!("note: SLUICE_TEST_ETCD is not set; skipping the etcd conformance test");
        return None;
    };
    let store = sluice_meta::etcd::EtcdStore::connect(&[endpoint])
        .await
        .expect("connect to SLUICE_TEST_ETCD");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    Some(Harness {
        store: Arc::new(store),
        prefix: format!("/sluice-test/{}-{nanos}/", std::process::id()),
        lease_ttl: Duration::from_secs(2),
        keep: None,
    })
}

mod memory {
    sluice_meta::conformance_tests!(super::memory);
}

mod embedded {
    sluice_meta::conformance_tests!(super::embedded);
}

#[cfg(feature = "etcd")]
mod etcd {
    sluice_meta::conformance_tests!(super::etcd);
}
