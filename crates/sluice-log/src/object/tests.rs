//! Unit tests of the object backend's writer on a local directory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use futures::future::join_all;
use sluice_types::message::InsertHeader;
use sluice_types::{MutableMessage, PChannel, Term};

use super::*;

fn record() -> MutableMessage {
    MutableMessage::builder(InsertHeader::default())
        .payload(vec![7u8; 1024])
        .build()
        .expect("message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_appends_share_blocks_no_larger_than_block_size() {
    let dir = tempfile::tempdir().unwrap();
    let config = ObjectConfig {
        block_size: 8 << 10,
        flush_interval: Duration::from_millis(20),
        ..ObjectConfig::new(ObjectStoreConfig::LocalDir(dir.path().to_path_buf()))
    };
    let provider = ObjectProvider::new(config).unwrap();
    let h = provider
        .open(OpenOptions::read_write(
            PChannel::new("blocks").unwrap(),
            Term(1),
        ))
        .await
        .unwrap();
    let mut pending = Vec::new();
    for _ in 0..200 {
        pending.push(h.enqueue(record()).await.unwrap());
    }
    let ids: Vec<MessageId> = join_all(pending)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let mut per_block: BTreeMap<(SegmentId, u64), u32> = BTreeMap::new();
    for id in &ids {
        let p = unpack(*id);
        *per_block.entry((p.segment, p.block)).or_default() += 1;
    }
    assert!(
        per_block.len() < 100,
        "{} blocks for 200 pipelined records",
        per_block.len()
    );
    let sizes: Vec<u64> = provider
        .store()
        .list(None)
        .try_filter(|m| futures::future::ready(m.location.as_ref().contains("/b/")))
        .map_ok(|m| m.size)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(sizes.len(), per_block.len());
    for s in sizes {
        assert!(
            s <= (8 << 10) + block::BLOCK_HEADER_LEN as u64,
            "block of {s} bytes"
        );
    }
    h.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_over_the_pending_limit_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = ObjectConfig {
        max_pending_bytes: 512,
        ..ObjectConfig::new(ObjectStoreConfig::LocalDir(dir.path().to_path_buf()))
    };
    let provider = ObjectProvider::new(config).unwrap();
    let h: Arc<dyn LogHandle> = provider
        .open(OpenOptions::read_write(
            PChannel::new("big").unwrap(),
            Term(1),
        ))
        .await
        .unwrap();
    let err = h.append(record()).await.unwrap_err();
    assert!(matches!(err, LogError::InvalidArgument(_)), "{err:?}");
    let small = MutableMessage::builder(InsertHeader::default())
        .build()
        .unwrap();
    let id = h
        .append(small)
        .await
        .expect("a small record after a refused one");
    assert_eq!(unpack(id).block, 0, "the refused record used a block");
    h.close().await;
}

#[test]
fn bad_settings_are_refused() {
    let store = ObjectStoreConfig::LocalDir(std::env::temp_dir());
    for bad in [
        ObjectConfig {
            block_size: 0,
            ..ObjectConfig::new(store.clone())
        },
        ObjectConfig {
            poll_interval: Duration::ZERO,
            ..ObjectConfig::new(store.clone())
        },
        ObjectConfig {
            prefix: "a//b".into(),
            ..ObjectConfig::new(store.clone())
        },
    ] {
        assert!(matches!(
            ObjectProvider::new(bad),
            Err(LogError::InvalidArgument(_))
        ));
    }
}
