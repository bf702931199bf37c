//! The conformance suite every [`MetaStore`] backend must pass (feature `testkit`).
//!
//! A backend runs the whole suite with one line, given an async function that makes a
//! [`Harness`] (or `None` to skip, e.g. when the external service is not configured):
//!
//! ```ignore
//! sluice_meta::conformance_tests!(make_memory_harness);
//! ```
//!
//! Every test works under its own key prefix (`Harness::prefix` + the test name), so runs against a
//! shared server do not collide. Tests wait on real time with generous timeouts; lease tests use
//! the harness's `lease_ttl`.

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use crate::{Condition, KeyValue, LeaseId, MetaError, MetaStore, TxnOp, WatchEvent, WatchStream};

/// A store under test and how to test it.
pub struct Harness {
    /// The store.
    pub store: Arc<dyn MetaStore>,
    /// A prefix no other run uses; each test appends its own name.
    pub prefix: String,
    /// The TTL lease tests grant (etcd needs about 2 s; in-process stores can go much lower).
    pub lease_ttl: Duration,
    /// Whatever must live as long as the store (a temp dir).
    pub keep: Option<Box<dyn Any + Send>>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness").finish_non_exhaustive()
    }
}

/// Defines one `#[test]` per conformance test, each running against the harness `$make` makes.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@tests $make;
            put_conditions_are_compare_and_set,
            delete_conditions_are_compare_and_set,
            txn_is_all_or_nothing,
            scan_then_watch_loses_no_event,
            watch_delivers_in_order_and_isolates_prefixes,
            lease_expiry_removes_keys_and_emits_deletes,
            revoke_removes_keys_and_reput_detaches,
            keep_alive_keeps_keys,
            invalid_input_is_an_error,
        );
    };
    (@tests $make:expr; $($name:ident,)*) => {
        $(
            #[test]
            fn $name() {
                $crate::testkit::run(stringify!($name), $make, $crate::testkit::$name);
            }
        )*
    };
}

/// Runs one conformance test on a fresh multi-threaded runtime.
pub fn run<M, MF, T, TF>(name: &str, make: M, test: T)
where
    M: FnOnce() -> MF,
    MF: Future<Output = Option<Harness>>,
    T: FnOnce(Harness) -> TF,
    TF: Future<Output = ()>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("test runtime");
    rt.block_on(async {
        let Some(mut h) = make().await else {
            return;
        };
        h.prefix = format!("{}{name}/", h.prefix);
        let started = std::time::Instant::now();
        test(h).await;
        eprintln!("{name}: {:?}", started.elapsed());
    });
}

const WAIT: Duration = Duration::from_secs(20);

fn v(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn next_event(w: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(WAIT, w.next()).await {
        Ok(Some(Ok(ev))) => ev,
        other => panic!("expected a watch event, got {other:?}"),
    }
}

fn assert_condition_failed<T: std::fmt::Debug>(
    r: crate::Result<T>,
    key: &str,
    actual: Option<i64>,
) {
    match r {
        Err(MetaError::ConditionFailed {
            key: k,
            actual_revision,
        }) => {
            assert_eq!(k, key);
            assert_eq!(actual_revision, actual);
        }
        other => panic!("expected ConditionFailed on {key}, got {other:?}"),
    }
}

/// Each condition holds or fails as documented; a failed put writes nothing.
pub async fn put_conditions_are_compare_and_set(h: Harness) {
    let s = &h.store;
    let k = format!("{}k", h.prefix);
    let r1 = s.put(&k, v("1"), Condition::KeyAbsent, None).await.unwrap();
    assert!(r1 > 0);
    assert_condition_failed(
        s.put(&k, v("x"), Condition::KeyAbsent, None).await,
        &k,
        Some(r1),
    );
    let r2 = s
        .put(&k, v("2"), Condition::ModRevision(r1), None)
        .await
        .unwrap();
    assert!(r2 > r1);
    assert_condition_failed(
        s.put(&k, v("x"), Condition::ModRevision(r1), None).await,
        &k,
        Some(r2),
    );
    let absent = format!("{}absent", h.prefix);
    assert_condition_failed(
        s.put(&absent, v("x"), Condition::ModRevision(r2), None)
            .await,
        &absent,
        None,
    );
    assert_eq!(s.get(&absent).await.unwrap(), None);
    let kv = s.get(&k).await.unwrap().unwrap();
    assert_eq!(
        kv,
        KeyValue {
            key: k.clone(),
            value: v("2"),
            create_revision: r1,
            mod_revision: r2,
            lease: None,
        }
    );
    let r3 = s.put(&k, v("3"), Condition::None, None).await.unwrap();
    assert!(r3 > r2);
    let kv = s.get(&k).await.unwrap().unwrap();
    assert_eq!(
        (kv.value, kv.create_revision, kv.mod_revision),
        (v("3"), r1, r3)
    );
}

/// Deletes obey conditions; deleting an absent key is a no-op reported as `None`.
pub async fn delete_conditions_are_compare_and_set(h: Harness) {
    let s = &h.store;
    let k = format!("{}k", h.prefix);
    assert_eq!(s.delete(&k, Condition::None).await.unwrap(), None);
    let r1 = s.put(&k, v("1"), Condition::None, None).await.unwrap();
    assert_condition_failed(s.delete(&k, Condition::KeyAbsent).await, &k, Some(r1));
    assert_condition_failed(
        s.delete(&k, Condition::ModRevision(r1 + 1000)).await,
        &k,
        Some(r1),
    );
    assert!(s.get(&k).await.unwrap().is_some());
    let rd = s.delete(&k, Condition::ModRevision(r1)).await.unwrap();
    assert!(
        rd.is_some_and(|r| r > r1),
        "delete revision {rd:?} after {r1}"
    );
    assert_eq!(s.get(&k).await.unwrap(), None);
    assert_condition_failed(s.delete(&k, Condition::ModRevision(r1)).await, &k, None);
    // Re-creating starts a new life: a new create revision.
    let r2 = s.put(&k, v("2"), Condition::KeyAbsent, None).await.unwrap();
    assert_eq!(s.get(&k).await.unwrap().unwrap().create_revision, r2);
}

/// A txn applies all its ops at one revision when every compare holds, and nothing otherwise.
pub async fn txn_is_all_or_nothing(h: Harness) {
    let s = &h.store;
    let (a, b, c) = (
        format!("{}a", h.prefix),
        format!("{}b", h.prefix),
        format!("{}c", h.prefix),
    );
    let ra = s.put(&a, v("a1"), Condition::None, None).await.unwrap();
    let rb = s.put(&b, v("b1"), Condition::None, None).await.unwrap();
    let ops = vec![
        TxnOp::Put {
            key: a.clone(),
            value: v("a2"),
            lease: None,
        },
        TxnOp::Delete { key: b.clone() },
        TxnOp::Put {
            key: c.clone(),
            value: v("c1"),
            lease: None,
        },
    ];
    let failed = s
        .txn(
            vec![
                (a.clone(), Condition::ModRevision(ra)),
                (b.clone(), Condition::ModRevision(rb + 1000)),
            ],
            ops.clone(),
        )
        .await
        .unwrap();
    assert!(!failed.committed);
    assert!(failed.revision >= rb);
    assert_eq!(s.get(&a).await.unwrap().unwrap().value, v("a1"));
    assert!(s.get(&b).await.unwrap().is_some());
    assert_eq!(s.get(&c).await.unwrap(), None);
    let failed = s
        .txn(vec![(c.clone(), Condition::ModRevision(1))], ops.clone())
        .await
        .unwrap();
    assert!(!failed.committed);

    let ok = s
        .txn(
            vec![
                (a.clone(), Condition::ModRevision(ra)),
                (b.clone(), Condition::ModRevision(rb)),
                (c.clone(), Condition::KeyAbsent),
            ],
            ops,
        )
        .await
        .unwrap();
    assert!(ok.committed);
    assert!(ok.revision > rb);
    let ka = s.get(&a).await.unwrap().unwrap();
    let kc = s.get(&c).await.unwrap().unwrap();
    assert_eq!((ka.value, ka.mod_revision), (v("a2"), ok.revision));
    assert_eq!((kc.value, kc.mod_revision), (v("c1"), ok.revision));
    assert_eq!(s.get(&b).await.unwrap(), None);

    // The txn's changes reach watchers in op order, at one revision.
    let mut w = s.watch_prefix(&h.prefix, ok.revision).await.unwrap();
    let evs = [
        next_event(&mut w).await,
        next_event(&mut w).await,
        next_event(&mut w).await,
    ];
    assert_eq!(
        evs.iter().map(|e| e.key()).collect::<Vec<_>>(),
        [&a, &b, &c]
    );
    assert!(evs.iter().all(|e| e.revision() == ok.revision));
}

/// Scanning and then watching from the scan's revision + 1 sees every change, even while a
/// writer runs concurrently.
pub async fn scan_then_watch_loses_no_event(h: Harness) {
    let s = h.store.clone();
    let prefix = h.prefix.clone();
    const WRITES: usize = 150;
    let writer = {
        let s = s.clone();
        let prefix = prefix.clone();
        tokio::spawn(async move {
            let mut last = 0;
            for i in 0..WRITES {
                let key = format!("{prefix}{}", i % 7);
                last = if i % 5 == 4 {
                    match s.delete(&key, Condition::None).await.unwrap() {
                        Some(r) => r,
                        None => last,
                    }
                } else {
                    s.put(&key, v(&i.to_string()), Condition::None, None)
                        .await
                        .unwrap()
                };
                if i % 10 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            last
        })
    };
    // Let the writer get going, then snapshot in the middle of its writes.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (snapshot, scan_rev) = s.scan_prefix(&prefix).await.unwrap();
    let mut state: BTreeMap<String, Bytes> =
        snapshot.into_iter().map(|kv| (kv.key, kv.value)).collect();
    let mut w = s.watch_prefix(&prefix, scan_rev + 1).await.unwrap();
    let last = writer.await.unwrap();
    let mut seen = scan_rev;
    while seen < last {
        let ev = next_event(&mut w).await;
        assert!(
            ev.revision() > scan_rev,
            "event {ev:?} not after the scan at {scan_rev}"
        );
        assert!(
            ev.revision() >= seen,
            "event {ev:?} out of order after {seen}"
        );
        seen = ev.revision();
        match ev {
            WatchEvent::Put(kv) => {
                state.insert(kv.key, kv.value);
            }
            WatchEvent::Delete { key, .. } => {
                state.remove(&key);
            }
        }
    }
    let (fin, _) = s.scan_prefix(&prefix).await.unwrap();
    let fin: BTreeMap<String, Bytes> = fin.into_iter().map(|kv| (kv.key, kv.value)).collect();
    assert_eq!(state, fin, "snapshot + events must equal the final state");
}

/// Watches replay past changes in revision order, see only their prefix, and scans too.
pub async fn watch_delivers_in_order_and_isolates_prefixes(h: Harness) {
    let s = &h.store;
    let dir = format!("{}a/", h.prefix);
    let sibling = format!("{}ab", h.prefix);
    let k1 = format!("{dir}1");
    let k2 = format!("{dir}2");
    let r1 = s.put(&k1, v("1"), Condition::None, None).await.unwrap();
    s.put(&sibling, v("no"), Condition::None, None)
        .await
        .unwrap();
    let r2 = s.put(&k2, v("2"), Condition::None, None).await.unwrap();
    let r3 = s.delete(&k1, Condition::None).await.unwrap().unwrap();
    // Started after the writes, from a past revision: replays them.
    let mut w = s.watch_prefix(&dir, r1).await.unwrap();
    match next_event(&mut w).await {
        WatchEvent::Put(kv) => assert_eq!((kv.key, kv.mod_revision), (k1.clone(), r1)),
        other => panic!("{other:?}"),
    }
    match next_event(&mut w).await {
        WatchEvent::Put(kv) => assert_eq!(
            (kv.key, kv.value, kv.mod_revision),
            (k2.clone(), v("2"), r2)
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        next_event(&mut w).await,
        WatchEvent::Delete {
            key: k1.clone(),
            revision: r3
        }
    );
    // Live events follow; the sibling's never appear.
    s.put(&sibling, v("still no"), Condition::None, None)
        .await
        .unwrap();
    let r4 = s.put(&k2, v("3"), Condition::None, None).await.unwrap();
    let ev = next_event(&mut w).await;
    assert_eq!((ev.key(), ev.revision()), (k2.as_str(), r4));

    let (kvs, rev) = s.scan_prefix(&dir).await.unwrap();
    assert!(rev >= r4);
    assert_eq!(
        kvs.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(),
        [k2.as_str()]
    );
    let (all, _) = s.scan_prefix(&h.prefix).await.unwrap();
    assert_eq!(
        all.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(),
        [k2.as_str(), sibling.as_str()]
    );
}

async fn expect_deletes(w: &mut WatchStream, mut keys: Vec<String>) {
    while !keys.is_empty() {
        match next_event(w).await {
            WatchEvent::Delete { key, .. } => keys.retain(|k| *k != key),
            other => panic!("expected a delete, got {other:?}"),
        }
    }
}

/// A lease that is not refreshed lapses: its keys vanish with delete events.
pub async fn lease_expiry_removes_keys_and_emits_deletes(h: Harness) {
    let s = &h.store;
    let lease = s.grant(h.lease_ttl).await.unwrap();
    let keys = vec![format!("{}x", h.prefix), format!("{}y", h.prefix)];
    let plain = format!("{}z", h.prefix);
    let first = s
        .put(&keys[0], v("x"), Condition::None, Some(lease))
        .await
        .unwrap();
    s.put(&keys[1], v("y"), Condition::None, Some(lease))
        .await
        .unwrap();
    s.put(&plain, v("z"), Condition::None, None).await.unwrap();
    assert_eq!(s.get(&keys[0]).await.unwrap().unwrap().lease, Some(lease));
    let mut w = s.watch_prefix(&h.prefix, first + 3).await.unwrap();
    let started = std::time::Instant::now();
    expect_deletes(&mut w, keys.clone()).await;
    assert!(started.elapsed() + Duration::from_millis(50) >= h.lease_ttl / 2);
    for k in &keys {
        assert_eq!(s.get(k).await.unwrap(), None);
    }
    assert!(s.get(&plain).await.unwrap().is_some());
    assert!(matches!(s.keep_alive(lease).await, Err(MetaError::LeaseNotFound(l)) if l == lease));
    assert!(matches!(
        s.put(&keys[0], v("x"), Condition::None, Some(lease)).await,
        Err(MetaError::LeaseNotFound(l)) if l == lease
    ));
}

/// Revoking deletes the lease's keys at once; a key re-put without the lease is detached.
pub async fn revoke_removes_keys_and_reput_detaches(h: Harness) {
    let s = &h.store;
    let lease = s.grant(Duration::from_secs(60)).await.unwrap();
    let (a, b) = (format!("{}a", h.prefix), format!("{}b", h.prefix));
    let first = s
        .put(&a, v("a"), Condition::None, Some(lease))
        .await
        .unwrap();
    s.put(&b, v("b"), Condition::None, Some(lease))
        .await
        .unwrap();
    let detached = s.put(&b, v("b2"), Condition::None, None).await.unwrap();
    assert_eq!(s.get(&b).await.unwrap().unwrap().lease, None);
    let mut w = s.watch_prefix(&h.prefix, detached + 1).await.unwrap();
    s.revoke(lease).await.unwrap();
    expect_deletes(&mut w, vec![a.clone()]).await;
    assert_eq!(s.get(&a).await.unwrap(), None);
    let kb = s.get(&b).await.unwrap().unwrap();
    assert_eq!((kb.value, kb.mod_revision), (v("b2"), detached));
    assert!(first < detached);
    assert!(matches!(s.revoke(lease).await, Err(MetaError::LeaseNotFound(l)) if l == lease));
}

/// Refreshing a lease about every ttl / 3 keeps its keys well past the TTL.
pub async fn keep_alive_keeps_keys(h: Harness) {
    let s = &h.store;
    let lease = s.grant(h.lease_ttl).await.unwrap();
    let k = format!("{}k", h.prefix);
    s.put(&k, v("k"), Condition::None, Some(lease))
        .await
        .unwrap();
    let until = std::time::Instant::now() + h.lease_ttl * 3;
    while std::time::Instant::now() < until {
        tokio::time::sleep(h.lease_ttl / 3).await;
        let ttl = s.keep_alive(lease).await.unwrap();
        assert!(ttl >= h.lease_ttl / 2, "keep-alive reported ttl {ttl:?}");
    }
    assert!(
        s.get(&k).await.unwrap().is_some(),
        "a refreshed lease must keep its keys"
    );
    s.revoke(lease).await.unwrap();
}

/// Bad arguments are typed, non-retryable errors, never panics or silent successes.
pub async fn invalid_input_is_an_error(h: Harness) {
    let s = &h.store;
    fn invalid<T: std::fmt::Debug>(r: crate::Result<T>) {
        match r {
            Err(e @ MetaError::InvalidArgument(_)) => assert!(!e.retryable()),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }
    let k = format!("{}k", h.prefix);
    invalid(s.get("").await);
    invalid(s.put("", v("x"), Condition::None, None).await);
    invalid(s.delete("", Condition::None).await);
    invalid(s.put(&k, v("x"), Condition::ModRevision(0), None).await);
    invalid(s.put(&k, v("x"), Condition::ModRevision(-3), None).await);
    invalid(s.watch_prefix(&h.prefix, 0).await.map(|_| ()));
    invalid(s.grant(Duration::ZERO).await);
    invalid(
        s.txn(
            vec![],
            vec![
                TxnOp::Delete { key: k.clone() },
                TxnOp::Delete { key: k.clone() },
            ],
        )
        .await,
    );
    invalid(s.txn(vec![(String::new(), Condition::None)], vec![]).await);
    let unknown = LeaseId(0x5eed_0000_1234);
    match s.put(&k, v("x"), Condition::None, Some(unknown)).await {
        Err(e @ MetaError::LeaseNotFound(l)) => {
            assert_eq!(l, unknown);
            assert!(!e.retryable());
        }
        other => panic!("expected LeaseNotFound, got {other:?}"),
    }
    let ka = s.keep_alive(unknown).await;
    assert!(matches!(ka, Err(MetaError::LeaseNotFound(_))), "{ka:?}");
    assert!(matches!(
        s.revoke(unknown).await,
        Err(MetaError::LeaseNotFound(_))
    ));
    assert_eq!(
        s.get(&k).await.unwrap(),
        None,
        "failed calls must not write"
    );
}
