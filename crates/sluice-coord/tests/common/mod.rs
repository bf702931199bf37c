//! Meta store backends the coordinator tests run against: `embedded` (redb in a temp dir) always,
//! and a real etcd from `SLUICE_TEST_ETCD` when the `etcd` feature is on (required when `CI=true`).
#![allow(dead_code)]

use std::sync::Arc;

use sluice_coord::keys::Keys;
use sluice_meta::MetaStore;

/// One backend for one test: a store, a key root unique to the test, and what keeps it alive.
pub(crate) struct Backend {
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
pub(crate) fn embedded(test: &str) -> Backend {
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
pub(crate) async fn second_handle(backend: &Backend) -> Arc<dyn MetaStore> {
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
pub(crate) async fn etcd(test: &str) -> Option<Backend> {
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
pub(crate) async fn backends(test: &str) -> Vec<Backend> {
    let mut all = vec![embedded(test)];
    all.extend(etcd(test).await);
    all
}

/// A lease TTL short enough for lapse tests on this backend: etcd rounds TTLs up to whole
/// seconds and enforces a minimum (1.5 s with default settings, so 2 s).
pub(crate) fn short_ttl(backend: &Backend) -> std::time::Duration {
    match backend.name {
        "etcd" => std::time::Duration::from_secs(2),
        _ => std::time::Duration::from_millis(600),
    }
}

/// Waits (bounded by `timeout`) until the watched value satisfies `pred`; panics with `what`.
pub(crate) async fn wait_until<T: Clone>(
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

/// A real store with injectable faults, as a compaction or a lost connection would cause:
/// watches can be broken on demand (every open watch ends with
/// [`sluice_meta::MetaError::Compacted`], and the next `refuse` watch calls fail with
/// `Unavailable`), and puts can lose their acknowledgement (applied, but reported as
/// `Unavailable`). Everything else goes to the real store.
pub(crate) struct FaultyStore {
    inner: Arc<dyn MetaStore>,
    epoch: tokio::sync::watch::Sender<u64>,
    refuse: std::sync::atomic::AtomicUsize,
    lose_acks: std::sync::atomic::AtomicUsize,
    /// How many `watch_prefix` calls were made (refused ones included).
    pub watch_calls: std::sync::atomic::AtomicUsize,
}

impl FaultyStore {
    /// Wraps `inner`.
    pub(crate) fn new(inner: Arc<dyn MetaStore>) -> Arc<FaultyStore> {
        Arc::new(FaultyStore {
            inner,
            epoch: tokio::sync::watch::channel(0).0,
            refuse: std::sync::atomic::AtomicUsize::new(0),
            lose_acks: std::sync::atomic::AtomicUsize::new(0),
            watch_calls: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Ends every open watch with an error and refuses the next `refuse` watch calls.
    pub(crate) fn break_watches(&self, refuse: usize) {
        self.refuse
            .store(refuse, std::sync::atomic::Ordering::SeqCst);
        self.epoch.send_modify(|e| *e += 1);
    }

    /// The next `n` puts are applied but reported as `Unavailable`.
    pub(crate) fn lose_next_put_acks(&self, n: usize) {
        self.lose_acks.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// `watch_prefix` calls so far.
    pub(crate) fn watch_calls(&self) -> usize {
        self.watch_calls.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl MetaStore for FaultyStore {
    async fn get(&self, key: &str) -> sluice_meta::Result<Option<sluice_meta::KeyValue>> {
        self.inner.get(key).await
    }

    async fn scan_prefix(
        &self,
        prefix: &str,
    ) -> sluice_meta::Result<(Vec<sluice_meta::KeyValue>, sluice_meta::Revision)> {
        self.inner.scan_prefix(prefix).await
    }

    async fn put(
        &self,
        key: &str,
        value: bytes::Bytes,
        condition: sluice_meta::Condition,
        lease: Option<sluice_meta::LeaseId>,
    ) -> sluice_meta::Result<sluice_meta::Revision> {
        let rev = self.inner.put(key, value, condition, lease).await?;
        if self
            .lose_acks
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok()
        {
            return Err(sluice_meta::MetaError::Unavailable(format!(
                "the test lost the acknowledgement of revision {rev}"
            )));
        }
        Ok(rev)
    }

    async fn delete(
        &self,
        key: &str,
        condition: sluice_meta::Condition,
    ) -> sluice_meta::Result<Option<sluice_meta::Revision>> {
        self.inner.delete(key, condition).await
    }

    async fn txn(
        &self,
        compares: Vec<(String, sluice_meta::Condition)>,
        ops: Vec<sluice_meta::TxnOp>,
    ) -> sluice_meta::Result<sluice_meta::TxnResult> {
        self.inner.txn(compares, ops).await
    }

    async fn watch_prefix(
        &self,
        prefix: &str,
        from_revision: sluice_meta::Revision,
    ) -> sluice_meta::Result<sluice_meta::WatchStream> {
        use futures::StreamExt;
        use std::sync::atomic::Ordering;
        self.watch_calls.fetch_add(1, Ordering::SeqCst);
        if self
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(sluice_meta::MetaError::Unavailable(
                "watch refused by the test".into(),
            ));
        }
        let mut epoch = self.epoch.subscribe();
        epoch.mark_unchanged();
        let events = self.inner.watch_prefix(prefix, from_revision).await?;
        let broken = sluice_meta::MetaError::Compacted {
            requested: from_revision,
            compacted: from_revision,
        };
        Ok(
            futures::stream::unfold(Some((events, epoch)), move |state| {
                let broken = broken.clone();
                async move {
                    let (mut events, mut epoch) = state?;
                    tokio::select! {
                        biased;
                        _ = epoch.changed() => Some((Err(broken), None)),
                        ev = events.next() => ev.map(|ev| (ev, Some((events, epoch)))),
                    }
                }
            })
            .boxed(),
        )
    }

    async fn grant(&self, ttl: std::time::Duration) -> sluice_meta::Result<sluice_meta::LeaseId> {
        self.inner.grant(ttl).await
    }

    async fn keep_alive(
        &self,
        lease: sluice_meta::LeaseId,
    ) -> sluice_meta::Result<std::time::Duration> {
        self.inner.keep_alive(lease).await
    }

    async fn revoke(&self, lease: sluice_meta::LeaseId) -> sluice_meta::Result<()> {
        self.inner.revoke(lease).await
    }
}

/// Waits (bounded) until `store` has seen at least `n` watch calls.
pub(crate) async fn wait_for_watch_calls(store: &FaultyStore, n: usize, what: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.watch_calls() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: only {} watch calls, expected {n}",
            store.watch_calls()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
