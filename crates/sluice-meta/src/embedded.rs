//! The embedded meta store: one redb file, for a single process (`sluice standalone`).
//!
//! Keys and the revision counter live in the file; every write is one redb write transaction
//! (durable when the call returns). The whole key map is also held in memory — Sluice metadata
//! is small — and watches and leases are in process only:
//!
//! * a watch can start at any revision after the one the file was opened at; earlier ones are
//!   [`MetaError::Compacted`] (the file keeps no history);
//! * **leases do not survive a restart**: on open, every key attached to a lease is deleted (at one
//!   new revision), as if its lease had lapsed while the process was down.
//!
//! # File format (version 1)
//!
//! Table `sluice_meta_kv` maps the key (`&str`) to a record: `version: u8 = 1`,
//! `create_revision: i64 LE`, `mod_revision: i64 LE`, `lease: i64 LE` (0 = none), then the value
//! bytes. Table `sluice_meta_info` maps `"revision"` to the store revision (`i64`). A record that
//! does not decode is [`MetaError::Malformed`] at open.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use redb::{Database, ReadableTable, TableDefinition};

use crate::engine::{DEFAULT_HISTORY, EngineHandle, Persist};
use crate::{
    Condition, KeyValue, LeaseId, MetaError, MetaStore, Result, Revision, TxnOp, TxnResult,
    WatchStream,
};

const KV: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("sluice_meta_kv");
const INFO: TableDefinition<'static, &str, i64> = TableDefinition::new("sluice_meta_info");
const REVISION_KEY: &str = "revision";
const RECORD_VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 8 * 3;

/// A [`MetaStore`] in one redb file.
pub struct EmbeddedStore {
    engine: EngineHandle,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store at `path`, deleting keys left attached to leases.
    /// Call inside a tokio runtime.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let db = Database::create(path.as_ref()).map_err(MetaError::storage)?;
        let (mut kvs, mut revision) = load(&db)?;
        let mut persist = RedbPersist { db };
        let leased: Vec<String> = kvs
            .values()
            .filter(|kv| kv.lease.is_some())
            .map(|kv| kv.key.clone())
            .collect();
        if !leased.is_empty() {
            revision += 1;
            persist.commit(revision, &[], &leased)?;
            for key in &leased {
                kvs.remove(key);
            }
        }
        Ok(EmbeddedStore {
            engine: EngineHandle::start(kvs, revision, DEFAULT_HISTORY, Some(Box::new(persist))),
        })
    }
}

fn load(db: &Database) -> Result<(BTreeMap<String, KeyValue>, Revision)> {
    // Create the tables on first open so reads below never see them missing.
    let w = db.begin_write().map_err(MetaError::storage)?;
    {
        w.open_table(KV).map_err(MetaError::storage)?;
        w.open_table(INFO).map_err(MetaError::storage)?;
    }
    w.commit().map_err(MetaError::storage)?;

    let r = db.begin_read().map_err(MetaError::storage)?;
    let info = r.open_table(INFO).map_err(MetaError::storage)?;
    let revision = match info.get(REVISION_KEY).map_err(MetaError::storage)? {
        Some(v) => v.value(),
        None => 0,
    };
    if revision < 0 {
        return Err(MetaError::Malformed(format!(
            "store revision {revision} is negative"
        )));
    }
    let table = r.open_table(KV).map_err(MetaError::storage)?;
    let mut kvs = BTreeMap::new();
    for entry in table.iter().map_err(MetaError::storage)? {
        let (k, v) = entry.map_err(MetaError::storage)?;
        let kv = decode(k.value(), v.value())?;
        if kv.mod_revision > revision {
            return Err(MetaError::Malformed(format!(
                "key {:?} has mod revision {} above the store revision {revision}",
                kv.key, kv.mod_revision
            )));
        }
        kvs.insert(kv.key.clone(), kv);
    }
    Ok((kvs, revision))
}

fn encode(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + kv.value.len());
    out.push(RECORD_VERSION);
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(&kv.lease.map_or(0, |l| l.0).to_le_bytes());
    out.extend_from_slice(&kv.value);
    out
}

fn decode(key: &str, record: &[u8]) -> Result<KeyValue> {
    let malformed = |why: &str| MetaError::Malformed(format!("record of key {key:?}: {why}"));
    if record.len() < HEADER_LEN {
        return Err(malformed("shorter than its header"));
    }
    if record[0] != RECORD_VERSION {
        return Err(malformed(&format!("unknown version {}", record[0])));
    }
    let int = |at: usize| -> Result<i64> {
        record
            .get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(i64::from_le_bytes)
            .ok_or_else(|| malformed("truncated header"))
    };
    let create_revision = int(1)?;
    let mod_revision = int(9)?;
    let lease = int(17)?;
    if create_revision <= 0 || mod_revision < create_revision {
        return Err(malformed(&format!(
            "revisions out of order (create {create_revision}, mod {mod_revision})"
        )));
    }
    Ok(KeyValue {
        key: key.to_owned(),
        value: Bytes::copy_from_slice(&record[HEADER_LEN..]),
        create_revision,
        mod_revision,
        lease: (lease != 0).then_some(LeaseId(lease)),
    })
}

struct RedbPersist {
    db: Database,
}

impl Persist for RedbPersist {
    fn commit(&mut self, revision: Revision, puts: &[KeyValue], deletes: &[String]) -> Result<()> {
        let w = self.db.begin_write().map_err(MetaError::storage)?;
        {
            let mut kv = w.open_table(KV).map_err(MetaError::storage)?;
            for p in puts {
                kv.insert(p.key.as_str(), encode(p).as_slice())
                    .map_err(MetaError::storage)?;
            }
            for d in deletes {
                kv.remove(d.as_str()).map_err(MetaError::storage)?;
            }
            let mut info = w.open_table(INFO).map_err(MetaError::storage)?;
            info.insert(REVISION_KEY, revision)
                .map_err(MetaError::storage)?;
        }
        w.commit().map_err(MetaError::storage)
    }
}

crate::engine::delegate_meta_store!(EmbeddedStore);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reopen_keeps_keys_and_revisions_and_drops_leased_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let (rev_a, lease_rev) = {
            let s = EmbeddedStore::open(&path).unwrap();
            let rev_a = s
                .put("a", Bytes::from_static(b"1"), Condition::None, None)
                .await
                .unwrap();
            let l = s.grant(Duration::from_secs(60)).await.unwrap();
            let r = s
                .put("leased", Bytes::from_static(b"x"), Condition::None, Some(l))
                .await
                .unwrap();
            (rev_a, r)
        };
        let s = EmbeddedStore::open(&path).unwrap();
        let a = s.get("a").await.unwrap().unwrap();
        assert_eq!(a.mod_revision, rev_a);
        assert_eq!(s.get("leased").await.unwrap(), None);
        let (_, rev) = s.scan_prefix("").await.unwrap();
        assert_eq!(
            rev,
            lease_rev + 1,
            "dropping leased keys is one new revision"
        );
        let next = s
            .put("b", Bytes::new(), Condition::None, None)
            .await
            .unwrap();
        assert_eq!(next, rev + 1);
        // History before the open is gone; from the open on, watches work.
        let mut w = s.watch_prefix("", rev).await.unwrap();
        use futures::StreamExt;
        assert!(matches!(
            w.next().await,
            Some(Err(MetaError::Compacted { .. }))
        ));
        let mut w = s.watch_prefix("", rev + 1).await.unwrap();
        assert_eq!(w.next().await.unwrap().unwrap().key(), "b");
    }

    #[tokio::test]
    async fn malformed_record_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        drop(EmbeddedStore::open(&path).unwrap());
        {
            let db = Database::create(&path).unwrap();
            let w = db.begin_write().unwrap();
            w.open_table(KV)
                .unwrap()
                .insert("bad", &[1u8, 2, 3][..])
                .unwrap();
            w.commit().unwrap();
        }
        assert!(matches!(
            EmbeddedStore::open(&path),
            Err(MetaError::Malformed(_))
        ));
        {
            let db = Database::create(&path).unwrap();
            let w = db.begin_write().unwrap();
            let mut rec = encode(&KeyValue {
                key: "bad".into(),
                value: Bytes::new(),
                create_revision: 1,
                mod_revision: 1,
                lease: None,
            });
            rec[0] = 9;
            w.open_table(KV)
                .unwrap()
                .insert("bad", rec.as_slice())
                .unwrap();
            w.commit().unwrap();
        }
        assert!(matches!(
            EmbeddedStore::open(&path),
            Err(MetaError::Malformed(_))
        ));
    }
}
