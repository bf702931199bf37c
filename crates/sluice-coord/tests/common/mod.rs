//! Meta store backends the coordinator tests run against: `embedded` (redb in a temp dir) always,
//! and a real etcd from `SLUICE_TEST_ETCD` when the `etcd` feature is on (required when `CI=true`).
#![allow(dead_code)]

use std::sync::Arc;

use sluice_coord::keys::Keys;
use sluice_meta::MetaStore;

/// One backend for one test: a store, a key root unique to the test, and what keeps it alive.
pub struct Backend {
    /// `embedded` or `etcd`.
    pub name: &'static str,
    /// The store.
    pub store: Arc<dyn MetaStore>,
    /// A key root no other test uses.
    pub keys: Keys,
    /// For `embedded`: where the file lives (reopen with `reopen`).
    pub dir: Option<tempfile::TempDir>,
}

fn unique_root(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("test/{test}/{nanos}-{}", std::process::id())
}

/// An embedded (redb) store in a fresh temp dir.
pub fn embedded(test: &str) -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let store = sluice_meta::embedded::EmbeddedStore::open(dir.path().join("meta.redb")).unwrap();
    Backend {
        name: "embedded",
        store: Arc::new(store),
        keys: Keys::new(unique_root(test)),
        dir: Some(dir),
    }
}

/// Another handle on the same backend, as a second process (a restarted coordinator, a second
/// coordinator) would have. For `embedded` this closes nothing: redb allows one opener per file,
/// so the same store is shared; for etcd it is a new connection.
pub async fn second_handle(backend: &Backend) -> Arc<dyn MetaStore> {
    match backend.name {
        #[cfg(feature = "etcd")]
        "etcd" => Arc::new(
            sluice_meta::etcd::EtcdStore::connect(&[std::env::var("SLUICE_TEST_ETCD").unwrap()])
                .await
                .unwrap(),
        ),
        _ => backend.store.clone(),
    }
}

/// A real etcd from `SLUICE_TEST_ETCD`; `None` (with a note) when unset outside CI.
pub async fn etcd(test: &str) -> Option<Backend> {
    #[cfg(feature = "etcd")]
    {
        let Ok(endpoint) = std::env::var("SLUICE_TEST_ETCD") else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("SLUICE_TEST_ETCD is not set but CI=true: the etcd tests must run");
            }
            eprintln!("note: SLUICE_TEST_ETCD is not set; skipping the etcd variant");
            return None;
        };
        let store = sluice_meta::etcd::EtcdStore::connect(&[endpoint])
            .await
            .expect("connect to SLUICE_TEST_ETCD");
        Some(Backend {
            name: "etcd",
            store: Arc::new(store),
            keys: Keys::new(unique_root(test)),
            dir: None,
        })
    }
    #[cfg(not(feature = "etcd"))]
    {
        let _ = test;
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("the coordinator tests must run with --features etcd in CI");
        }
        None
    }
}

/// Every backend available to this run.
pub async fn backends(test: &str) -> Vec<Backend> {
    let mut all = vec![embedded(test)];
    all.extend(etcd(test).await);
    all
}

/// A lease TTL short enough for lapse tests on this backend: etcd rounds TTLs up to whole
/// seconds and enforces a minimum (1.5 s with default settings, so 2 s).
pub fn short_ttl(backend: &Backend) -> std::time::Duration {
    match backend.name {
        "etcd" => std::time::Duration::from_secs(2),
        _ => std::time::Duration::from_millis(600),
    }
}

/// Waits (bounded by `timeout`) until the watched value satisfies `pred`; panics with `what`.
pub async fn wait_until<T: Clone>(
    rx: &mut tokio::sync::watch::Receiver<T>,
    timeout: std::time::Duration,
    what: &str,
    mut pred: impl FnMut(&T) -> bool,
) -> T {
    match tokio::time::timeout(timeout, rx.wait_for(|v| pred(v))).await {
        Ok(Ok(v)) => v.clone(),
        Ok(Err(_)) => panic!("{what}: the sender is gone"),
        Err(_) => panic!("{what}: not reached within {timeout:?}"),
    }
}
