//! etcd-only: a watch from a revision etcd has compacted ends with `MetaError::Compacted`.
#![cfg(feature = "etcd")]

use bytes::Bytes;
use futures::StreamExt;
use sluice_meta::etcd::EtcdStore;
use sluice_meta::{Condition, MetaError, MetaStore};

#[tokio::test]
async fn watch_from_compacted_revision_ends_with_error() {
    let Ok(endpoint) = std::env::var("SLUICE_TEST_ETCD") else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("SLUICE_TEST_ETCD is not set but CI=true: the etcd tests must run");
        }
        eprintln!("note: SLUICE_TEST_ETCD is not set; skipping an etcd test");
        return;
    };
    let store = EtcdStore::connect(std::slice::from_ref(&endpoint))
        .await
        .unwrap();
    let prefix = format!("/sluice-test/compaction-{}/", std::process::id());
    let first = store
        .put(
            &format!("{prefix}a"),
            Bytes::from_static(b"1"),
            Condition::None,
            None,
        )
        .await
        .unwrap();
    let last = store
        .put(
            &format!("{prefix}a"),
            Bytes::from_static(b"2"),
            Condition::None,
            None,
        )
        .await
        .unwrap();
    let mut client = etcd_client::Client::connect([endpoint], None)
        .await
        .unwrap();
    client.compact(last, None).await.unwrap();
    let mut w = store.watch_prefix(&prefix, first).await.unwrap();
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), w.next())
        .await
        .unwrap();
    match next {
        Some(Err(MetaError::Compacted {
            requested,
            compacted,
        })) => {
            assert_eq!(requested, first);
            assert!(compacted >= last);
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(w.next().await.is_none(), "a watch ends after its error");
}
