//! The etcd meta store (feature `etcd`), for clusters.
//!
//! A thin mapping of the contract onto etcd v3: conditions become txn compares on
//! `create_revision == 0` (absent) or `mod_revision == r`; leases are etcd leases (TTLs are
//! rounded up to whole seconds, and etcd enforces a minimum TTL of a second or two); watches are
//! etcd watches, which end with [`MetaError::Compacted`] when etcd has compacted the start revision.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn,
    TxnOp as EtcdOp, WatchOptions,
};

use crate::{
    Condition, KeyValue, LeaseId, MetaError, MetaStore, Result, Revision, TxnOp, TxnResult,
    WatchEvent, WatchStream, check_condition, check_key, check_ttl, check_txn,
};

/// A [`MetaStore`] backed by an etcd cluster.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to the etcd endpoints (e.g. `http://127.0.0.1:2379`).
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10));
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(map_err)?;
        Ok(EtcdStore { client })
    }
}

fn map_err(e: etcd_client::Error) -> MetaError {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(s) => {
            let msg = s.message().to_owned();
            if msg.contains("lease not found") {
                // The lease id is not in the message in a parseable form; callers map it.
                return MetaError::LeaseNotFound(LeaseId(0));
            }
            match s.code() {
                tonic::Code::InvalidArgument
                | tonic::Code::OutOfRange
                | tonic::Code::FailedPrecondition => MetaError::InvalidArgument(msg),
                _ => MetaError::Unavailable(format!("{:?}: {msg}", s.code())),
            }
        }
        E::InvalidArgs(m) => MetaError::InvalidArgument(m),
        E::LeaseKeepAliveError(m) if m.contains("not found") => {
            MetaError::LeaseNotFound(LeaseId(0))
        }
        other => MetaError::Unavailable(other.to_string()),
    }
}

fn with_lease(e: MetaError, lease: LeaseId) -> MetaError {
    match e {
        MetaError::LeaseNotFound(_) => MetaError::LeaseNotFound(lease),
        other => other,
    }
}

fn convert(kv: &etcd_client::KeyValue) -> Result<KeyValue> {
    let key = std::str::from_utf8(kv.key())
        .map_err(|_| MetaError::Malformed(format!("key {:?} is not UTF-8", kv.key())))?
        .to_owned();
    Ok(KeyValue {
        key,
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: (kv.lease() != 0).then_some(LeaseId(kv.lease())),
    })
}

fn compare(key: &str, condition: Condition) -> Option<Compare> {
    match condition {
        Condition::None => None,
        Condition::KeyAbsent => Some(Compare::create_revision(key, CompareOp::Equal, 0)),
        Condition::ModRevision(r) => Some(Compare::mod_revision(key, CompareOp::Equal, r)),
    }
}

fn header_revision(h: Option<&etcd_client::ResponseHeader>) -> Result<Revision> {
    h.map(|h| h.revision())
        .ok_or_else(|| MetaError::Malformed("etcd response without a header".into()))
}

impl EtcdStore {
    /// Runs `op` under `condition`; on failure, reports the key's actual revision.
    async fn guarded(
        &self,
        key: &str,
        condition: Condition,
        op: EtcdOp,
    ) -> Result<(etcd_client::TxnResponse, Revision)> {
        let mut kv = self.client.kv_client();
        let txn = Txn::new()
            .when(compare(key, condition).into_iter().collect::<Vec<_>>())
            .and_then(vec![op])
            .or_else(vec![EtcdOp::get(key, None)]);
        let resp = kv.txn(txn).await.map_err(map_err)?;
        let rev = header_revision(resp.header())?;
        if !resp.succeeded() {
            let mut actual = None;
            for r in resp.op_responses() {
                if let etcd_client::TxnOpResponse::Get(g) = r {
                    actual = g.kvs().first().map(|kv| kv.mod_revision());
                }
            }
            return Err(MetaError::ConditionFailed {
                key: key.to_owned(),
                actual_revision: actual,
            });
        }
        Ok((resp, rev))
    }
}

#[async_trait]
impl MetaStore for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        check_key(key)?;
        let resp = self
            .client
            .kv_client()
            .get(key, None)
            .await
            .map_err(map_err)?;
        resp.kvs().first().map(convert).transpose()
    }

    async fn scan_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let resp = self
            .client
            .kv_client()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(map_err)?;
        let rev = header_revision(resp.header())?;
        let kvs = resp.kvs().iter().map(convert).collect::<Result<_>>()?;
        Ok((kvs, rev))
    }

    async fn put(
        &self,
        key: &str,
        value: Bytes,
        condition: Condition,
        lease: Option<LeaseId>,
    ) -> Result<Revision> {
        check_key(key)?;
        check_condition(condition)?;
        let options = lease.map(|l| PutOptions::new().with_lease(l.0));
        let op = EtcdOp::put(key, value.to_vec(), options);
        let (_, rev) = self
            .guarded(key, condition, op)
            .await
            .map_err(|e| with_lease(e, lease.unwrap_or(LeaseId(0))))?;
        Ok(rev)
    }

    async fn delete(&self, key: &str, condition: Condition) -> Result<Option<Revision>> {
        check_key(key)?;
        check_condition(condition)?;
        let (resp, rev) = self
            .guarded(key, condition, EtcdOp::delete(key, None))
            .await?;
        let deleted = resp
            .op_responses()
            .iter()
            .any(|r| matches!(r, etcd_client::TxnOpResponse::Delete(d) if d.deleted() > 0));
        Ok(deleted.then_some(rev))
    }

    async fn txn(&self, compares: Vec<(String, Condition)>, ops: Vec<TxnOp>) -> Result<TxnResult> {
        check_txn(&compares, &ops)?;
        let mut leases = Vec::new();
        let cmps: Vec<Compare> = compares
            .iter()
            .filter_map(|(k, c)| compare(k, *c))
            .collect();
        let ops: Vec<EtcdOp> = ops
            .into_iter()
            .map(|op| match op {
                TxnOp::Put { key, value, lease } => {
                    leases.extend(lease);
                    EtcdOp::put(
                        key,
                        value.to_vec(),
                        lease.map(|l| PutOptions::new().with_lease(l.0)),
                    )
                }
                TxnOp::Delete { key } => EtcdOp::delete(key, None),
            })
            .collect();
        let resp = self
            .client
            .kv_client()
            .txn(Txn::new().when(cmps).and_then(ops))
            .await
            .map_err(|e| match (map_err(e), leases.as_slice()) {
                (MetaError::LeaseNotFound(_), [one]) => MetaError::LeaseNotFound(*one),
                (other, _) => other,
            })?;
        Ok(TxnResult {
            committed: resp.succeeded(),
            revision: header_revision(resp.header())?,
        })
    }

    async fn watch_prefix(&self, prefix: &str, from_revision: Revision) -> Result<WatchStream> {
        if from_revision <= 0 {
            return Err(MetaError::InvalidArgument(format!(
                "watch from revision {from_revision}: revisions start at 1"
            )));
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from_revision);
        let (watcher, stream) = self
            .client
            .watch_client()
            .watch(prefix, Some(options))
            .await
            .map_err(map_err)?;
        struct St {
            // Dropping the watcher closes the request side; keep it for the stream's life.
            _watcher: etcd_client::Watcher,
            stream: etcd_client::WatchStream,
            pending: std::collections::VecDeque<WatchEvent>,
            finished: bool,
            last_error: Option<MetaError>,
        }
        impl St {
            fn finish(&mut self, e: MetaError) {
                self.finished = true;
                self.last_error = Some(e);
            }
        }
        let st = St {
            _watcher: watcher,
            stream,
            pending: Default::default(),
            finished: false,
            last_error: None,
        };
        Ok(Box::pin(futures::stream::unfold(
            st,
            move |mut st| async move {
                loop {
                    if let Some(ev) = st.pending.pop_front() {
                        return Some((Ok(ev), st));
                    }
                    if st.finished {
                        let e = st.last_error.take()?;
                        return Some((Err(e), st));
                    }
                    let resp = match st.stream.message().await {
                        Ok(Some(r)) => r,
                        Ok(None) => {
                            st.finish(MetaError::Unavailable("etcd watch ended".into()));
                            continue;
                        }
                        Err(e) => {
                            st.finish(map_err(e));
                            continue;
                        }
                    };
                    if resp.compact_revision() > 0 {
                        st.finish(MetaError::Compacted {
                            requested: from_revision,
                            compacted: resp.compact_revision(),
                        });
                        continue;
                    }
                    for ev in resp.events() {
                        let converted = match (ev.kv(), ev.event_type()) {
                            (None, _) => {
                                Err(MetaError::Malformed("watch event without a key".into()))
                            }
                            (Some(kv), EventType::Put) => convert(kv).map(WatchEvent::Put),
                            (Some(kv), EventType::Delete) => {
                                convert(kv).map(|kv| WatchEvent::Delete {
                                    key: kv.key,
                                    revision: kv.mod_revision,
                                })
                            }
                        };
                        match converted {
                            Ok(ev) => st.pending.push_back(ev),
                            Err(e) => {
                                st.finish(e);
                                break;
                            }
                        }
                    }
                    if resp.canceled() && !st.finished {
                        let reason = resp.cancel_reason().to_owned();
                        st.finish(MetaError::Unavailable(format!(
                            "etcd cancelled the watch: {reason}"
                        )));
                    }
                }
            },
        )))
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        check_ttl(ttl)?;
        let secs = i64::try_from(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0))
            .map_err(|_| MetaError::InvalidArgument(format!("lease TTL {ttl:?} is too long")))?;
        let resp = self
            .client
            .lease_client()
            .grant(secs.max(1), None)
            .await
            .map_err(map_err)?;
        Ok(LeaseId(resp.id()))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        let (mut keeper, mut stream) = self
            .client
            .lease_client()
            .keep_alive(lease.0)
            .await
            .map_err(|e| with_lease(map_err(e), lease))?;
        keeper
            .keep_alive()
            .await
            .map_err(|e| with_lease(map_err(e), lease))?;
        match stream
            .message()
            .await
            .map_err(|e| with_lease(map_err(e), lease))?
        {
            Some(r) if r.ttl() > 0 => Ok(Duration::from_secs(r.ttl().unsigned_abs())),
            Some(_) => Err(MetaError::LeaseNotFound(lease)),
            None => Err(MetaError::Unavailable(
                "etcd keep-alive stream ended".into(),
            )),
        }
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        self.client
            .lease_client()
            .revoke(lease.0)
            .await
            .map_err(|e| with_lease(map_err(e), lease))?;
        Ok(())
    }
}
