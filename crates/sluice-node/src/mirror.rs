//! A live copy of a meta-store prefix: scanned once, then kept current by a watch from the
//! scan's revision (so no change is missed), scanned again after any watch failure.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sluice_meta::{MetaStore, WatchEvent};
use tokio::sync::watch;

/// Mirrors the keys under `prefix` whose values `decode` accepts (the others are left out, with
/// a warning). The task ends when every receiver is gone.
pub fn mirror<T, F>(
    meta: Arc<dyn MetaStore>,
    prefix: String,
    decode: F,
) -> watch::Receiver<BTreeMap<String, T>>
where
    T: Send + Sync + 'static,
    F: Fn(&[u8]) -> Option<T> + Send + Sync + 'static,
{
    let (tx, rx) = watch::channel(BTreeMap::new());
    tokio::spawn(async move {
        let mut backoff =
            sluice_types::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let decoded = |key: &str, value: &[u8]| {
            let v = decode(value);
            if v.is_none() {
                tracing::warn!(key, "ignoring a value that does not decode");
            }
            v
        };
        loop {
            let outcome: Result<(), String> = async {
                let (kvs, revision) = meta.scan_prefix(&prefix).await.map_err(|e| e.to_string())?;
                let all: BTreeMap<String, T> = kvs
                    .iter()
                    .filter_map(|kv| Some((kv.key.clone(), decoded(&kv.key, &kv.value)?)))
                    .collect();
                tx.send_replace(all);
                let mut stream = meta
                    .watch_prefix(&prefix, revision + 1)
                    .await
                    .map_err(|e| e.to_string())?;
                loop {
                    let event = tokio::select! {
                        _ = tx.closed() => return Ok(()),
                        e = stream.next() => e,
                    };
                    let Some(event) = event else {
                        return Err("the watch ended".into());
                    };
                    match event.map_err(|e| e.to_string())? {
                        WatchEvent::Put(kv) => {
                            let value = decoded(&kv.key, &kv.value);
                            tx.send_modify(|m| match value {
                                Some(v) => {
                                    m.insert(kv.key.clone(), v);
                                }
                                None => {
                                    m.remove(&kv.key);
                                }
                            });
                        }
                        WatchEvent::Delete { key, .. } => {
                            tx.send_modify(|m| {
                                m.remove(&key);
                            });
                        }
                    }
                    backoff.reset();
                }
            }
            .await;
            match outcome {
                Ok(()) => return,
                Err(e) => tracing::debug!(prefix, error = %e, "mirroring a prefix; starting over"),
            }
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    });
    rx
}
