//! The broadcaster against real meta stores (embedded redb always, etcd with `--features etcd`
//! and `SLUICE_TEST_ETCD`), with a fake appender that can fail or block a vchannel.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use sluice_coord::broadcast::{
    AppendOutcome, BroadcastAppender, BroadcastConfig, BroadcastHandle, BroadcastIds,
    BroadcastRequest, Broadcaster, Recovery, TaskState,
};
use sluice_coord::{CoordError, Result};
use sluice_meta::{Condition, MetaStore};
use sluice_types::message::{
    CreateCollectionHeader, Properties, ResourceKey, TimeTickHeader, keys as prop,
};
use sluice_types::{ErrorCode, Message, MessageId, MutableMessage, Timestamp, VChannel};

use common::Backend;

/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(30);

async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

const VCS: [&str; 3] = ["p0_100v0", "p1_100v1", "p2_100v2"];

fn vc(name: &str) -> VChannel {
    VChannel::new(name).unwrap()
}

/// One copy the fake appender accepted.
#[derive(Clone, Debug)]
struct Appended {
    vchannel: VChannel,
    message: MutableMessage,
    outcome: AppendOutcome,
}

impl Appended {
    fn broadcast_id(&self) -> u64 {
        self.message
            .broadcast_header()
            .unwrap()
            .unwrap()
            .broadcast_id
    }
}

#[derive(Default)]
struct FakeState {
    /// Failures still to return, per vchannel.
    fail: BTreeMap<String, u32>,
    /// Vchannels whose appends never return.
    block: HashSet<String>,
    /// Attempts per vchannel.
    attempts: BTreeMap<String, u32>,
    next: u64,
}

/// An appender standing in for the streaming client: records every accepted copy and can fail
/// or block a vchannel.
struct FakeAppender {
    state: Mutex<FakeState>,
    appended: mpsc::UnboundedSender<Appended>,
    blocked: mpsc::UnboundedSender<VChannel>,
}

/// What the test sees of a fake appender.
struct Feed {
    appended: mpsc::UnboundedReceiver<Appended>,
    blocked: mpsc::UnboundedReceiver<VChannel>,
}

impl Feed {
    /// The next `n` accepted copies.
    async fn next(&mut self, n: usize) -> Vec<Appended> {
        let mut out = Vec::new();
        while out.len() < n {
            let a = bounded("an appended copy", self.appended.recv())
                .await
                .expect("appender gone");
            out.push(a);
        }
        out
    }

    /// Asserts that no copy was accepted (beyond those already taken).
    fn assert_none(&mut self) {
        if let Ok(a) = self.appended.try_recv() {
            panic!("unexpected append to {}", a.vchannel);
        }
    }
}

impl FakeAppender {
    fn new(first_id: u64) -> (Arc<FakeAppender>, Feed) {
        let (appended, appended_rx) = mpsc::unbounded_channel();
        let (blocked, blocked_rx) = mpsc::unbounded_channel();
        let state = FakeState {
            next: first_id,
            ..FakeState::default()
        };
        (
            Arc::new(FakeAppender {
                state: Mutex::new(state),
                appended,
                blocked,
            }),
            Feed {
                appended: appended_rx,
                blocked: blocked_rx,
            },
        )
    }

    fn fail(&self, vchannel: &str, times: u32) {
        self.state.lock().fail.insert(vchannel.into(), times);
    }

    fn block(&self, vchannel: &str) {
        self.state.lock().block.insert(vchannel.into());
    }

    fn attempts(&self, vchannel: &str) -> u32 {
        self.state
            .lock()
            .attempts
            .get(vchannel)
            .copied()
            .unwrap_or(0)
    }
}

#[async_trait]
impl BroadcastAppender for FakeAppender {
    async fn append(&self, vchannel: &VChannel, message: MutableMessage) -> Result<AppendOutcome> {
        let outcome = {
            let mut s = self.state.lock();
            *s.attempts.entry(vchannel.to_string()).or_default() += 1;
            if let Some(n) = s.fail.get_mut(vchannel.as_str())
                && *n > 0
            {
                *n -= 1;
                return Err(CoordError::Node {
                    node: "fake".into(),
                    reason: format!("injected failure on {vchannel}"),
                });
            }
            if s.block.contains(vchannel.as_str()) {
                None
            } else {
                s.next += 1;
                Some(AppendOutcome {
                    id: MessageId(u128::from(s.next)),
                    timestamp: Timestamp(s.next * 10),
                })
            }
        };
        let Some(outcome) = outcome else {
            let _ = self.blocked.send(vchannel.clone());
            return std::future::pending().await;
        };
        let _ = self.appended.send(Appended {
            vchannel: vchannel.clone(),
            message,
            outcome,
        });
        Ok(outcome)
    }
}

/// A non-persisted id counter, shared by the "coordinators" of one test.
struct Counter(AtomicU64);

#[async_trait]
impl BroadcastIds for Counter {
    async fn next_id(&self) -> Result<u64> {
        Ok(self.0.fetch_add(1, Ordering::SeqCst) + 1)
    }
}

fn config() -> BroadcastConfig {
    BroadcastConfig {
        workers: 2,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
    }
}

async fn start(
    store: Arc<dyn MetaStore>,
    backend: &Backend,
    appender: Arc<FakeAppender>,
    ids: Arc<Counter>,
) -> (Broadcaster, Recovery) {
    Broadcaster::recover(store, backend.keys.clone(), appender, ids, config())
        .await
        .unwrap()
}

fn key(domain: i32, k: &str, shared: bool) -> ResourceKey {
    ResourceKey {
        domain,
        key: k.into(),
        shared,
    }
}

fn ddl() -> MutableMessage {
    MutableMessage::builder(CreateCollectionHeader {
        collection_id: 100,
        partition_ids: vec![1, 2],
        db_id: 1,
        schema: None,
    })
    .payload(&b"schema"[..])
    .property("trace", "abc")
    .build()
    .unwrap()
}

fn request(keys: Vec<ResourceKey>) -> BroadcastRequest {
    BroadcastRequest {
        message: ddl(),
        vchannels: VCS.iter().map(|s| s.to_string()).collect(),
        resource_keys: keys,
    }
}

async fn task_keys(backend: &Backend) -> Vec<String> {
    let (kvs, _) = backend
        .store
        .scan_prefix(&backend.keys.broadcast_prefix())
        .await
        .unwrap();
    kvs.into_iter().map(|kv| kv.key).collect()
}

/// Acks every copy the way each vchannel's consumer would: by the id in its `_bh`.
async fn ack_all(b: &Broadcaster, copies: &[Appended]) {
    for c in copies {
        b.ack(c.broadcast_id(), c.vchannel.as_str()).await.unwrap();
    }
}

async fn wait_state(handle: &mut BroadcastHandle, state: TaskState) {
    bounded("the broadcast state", handle.wait_for(|p| p.state >= state))
        .await
        .unwrap();
}

/// Waits until `n` broadcasts queue for resource keys (the waiter count is the event).
async fn wait_queued(b: &Broadcaster, n: usize) {
    bounded("a broadcast to queue for its keys", async {
        while b.waiting() < n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_to_three_vchannels_completes_after_three_acks() {
    for backend in common::backends("bcast_three").await {
        let (appender, mut feed) = FakeAppender::new(0);
        let ids = Arc::new(Counter(AtomicU64::new(0)));
        let (b, recovery) = start(backend.store.clone(), &backend, appender, ids).await;
        assert!(recovery.tasks.is_empty() && recovery.malformed.is_empty());
        let b = Arc::new(b);

        let keys = vec![key(1, "coll", false), key(2, "db", true)];
        let caller = tokio::spawn({
            let b = b.clone();
            let req = request(keys.clone());
            async move { b.broadcast(req).await }
        });
        let copies = feed.next(3).await;
        let id = copies[0].broadcast_id();

        // Every copy is the template stamped with its vchannel and the broadcast header.
        let mut seen: Vec<&str> = copies.iter().map(|c| c.vchannel.as_str()).collect();
        seen.sort();
        assert_eq!(seen, VCS);
        for c in &copies {
            assert_eq!(c.message.vchannel_str(), Some(c.vchannel.as_str()));
            let bh = c.message.broadcast_header().unwrap().unwrap();
            assert_eq!(bh.broadcast_id, id);
            assert_eq!(bh.vchannels, VCS);
            assert_eq!(bh.resource_keys, keys);
            assert_eq!(c.message.payload().as_ref(), b"schema");
            assert_eq!(
                c.message.header::<CreateCollectionHeader>().unwrap(),
                ddl().header::<CreateCollectionHeader>().unwrap()
            );
            assert_eq!(
                c.message.user_properties().collect::<Vec<_>>(),
                [("trace", "abc")]
            );
        }

        let mut handle = b.handle(id).unwrap();
        wait_state(&mut handle, TaskState::WaitAck).await;
        assert_eq!(task_keys(&backend).await, [backend.keys.broadcast(id)]);

        b.ack(id, VCS[0]).await.unwrap();
        b.ack(id, VCS[1]).await.unwrap();
        let p = handle.progress();
        assert_eq!((p.state, p.sent, p.acked), (TaskState::WaitAck, 3, 2));
        assert!(!caller.is_finished());
        assert_eq!(task_keys(&backend).await.len(), 1);

        b.ack(id, VCS[2]).await.unwrap();
        let result = bounded("the broadcast result", caller)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(result.broadcast_id, id);
        let expected: BTreeMap<VChannel, Option<AppendOutcome>> = copies
            .iter()
            .map(|c| (c.vchannel.clone(), Some(c.outcome)))
            .collect();
        assert_eq!(result.appends, expected, "{}", backend.name);
        assert!(task_keys(&backend).await.is_empty(), "{}", backend.name);
        assert!(b.running().is_empty());
        assert_eq!(handle.wait().await.unwrap(), result);

        // The keys are free again.
        let again = b.try_submit(request(keys)).await.unwrap();
        ack_all(&b, &feed.next(3).await).await;
        bounded("the second broadcast", again.wait()).await.unwrap();
        feed.assert_none();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_are_idempotent_and_bad_acks_change_nothing() {
    for backend in common::backends("bcast_acks").await {
        let (appender, mut feed) = FakeAppender::new(0);
        let ids = Arc::new(Counter(AtomicU64::new(0)));
        let (b, _) = start(backend.store.clone(), &backend, appender, ids).await;
        let mut handle = b.submit(request(vec![])).await.unwrap();
        let id = handle.id();
        let copies = feed.next(3).await;
        wait_state(&mut handle, TaskState::WaitAck).await;

        b.ack(id, VCS[0]).await.unwrap();
        let key = backend.keys.broadcast(id);
        let before = backend.store.get(&key).await.unwrap().unwrap();

        b.ack(id, VCS[0]).await.unwrap();
        for (bad_id, bad_vc) in [
            (id + 1000, VCS[1]),
            (id, "p9_100v9"),
            (id, "not a vchannel"),
            (id, ""),
        ] {
            let err = b.ack(bad_id, bad_vc).await.unwrap_err();
            assert!(matches!(err, CoordError::InvalidArgument(_)), "{err}");
            assert_eq!(err.code(), ErrorCode::InvalidArgument);
        }
        let after = backend.store.get(&key).await.unwrap().unwrap();
        assert_eq!(
            after, before,
            "{}: a repeated or bad ack wrote",
            backend.name
        );
        assert_eq!(handle.progress().acked, 1);

        // The other two consumers ack. Not all three: the copies arrive in any order, and once
        // the last missing ack lands the broadcast is done, so a repeat after it is unknown.
        let rest: Vec<Appended> = copies
            .iter()
            .filter(|c| c.vchannel.as_str() != VCS[0])
            .cloned()
            .collect();
        assert_eq!(rest.len(), 2);
        ack_all(&b, &rest).await;
        let result = bounded("the result", handle.wait()).await.unwrap();
        assert_eq!(result.appends.len(), 3);
        // Acking a finished broadcast is an unknown id.
        assert!(matches!(
            b.ack(id, VCS[0]).await,
            Err(CoordError::InvalidArgument(_))
        ));
        assert!(task_keys(&backend).await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_key_blocks_until_the_holder_completes() {
    for backend in common::backends("bcast_exclusive").await {
        let (appender, mut feed) = FakeAppender::new(0);
        let ids = Arc::new(Counter(AtomicU64::new(0)));
        let (b, _) = start(backend.store.clone(), &backend, appender, ids).await;
        let b = Arc::new(b);

        let holder = b
            .submit(request(vec![key(1, "coll", false)]))
            .await
            .unwrap();
        let first = feed.next(3).await;

        // A reader of the same collection waits for the writer.
        let reader = tokio::spawn({
            let b = b.clone();
            async move { b.broadcast(request(vec![key(1, "coll", true)])).await }
        });
        wait_queued(&b, 1).await;
        // A non-waiting try fails at once with the wire code, and writes nothing.
        let err = b
            .try_broadcast(request(vec![key(1, "coll", false)]))
            .await
            .unwrap_err();
        assert!(matches!(err, CoordError::ResourceAcquired(_)), "{err}");
        assert_eq!(err.code(), ErrorCode::ResourceAcquired);
        feed.assert_none();
        assert_eq!(
            task_keys(&backend).await,
            [backend.keys.broadcast(holder.id())]
        );
        assert!(!reader.is_finished());
        // A caller that gives up while waiting leaves the queue and writes nothing.
        let quitter = tokio::spawn({
            let b = b.clone();
            async move { b.broadcast(request(vec![key(1, "coll", false)])).await }
        });
        wait_queued(&b, 2).await;
        quitter.abort();
        assert!(quitter.await.is_err_and(|e| e.is_cancelled()));
        assert_eq!(b.waiting(), 1);

        ack_all(&b, &first).await;
        bounded("the holder", holder.wait()).await.unwrap();

        let second = feed.next(3).await;
        assert!(
            second
                .iter()
                .all(|c| c.broadcast_id() > first[0].broadcast_id())
        );
        assert_eq!(b.waiting(), 0);
        ack_all(&b, &second).await;
        let result = bounded("the reader", reader).await.unwrap().unwrap();
        assert_eq!(result.broadcast_id, second[0].broadcast_id());
        assert!(task_keys(&backend).await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_keys_do_not_block_each_other() {
    for backend in common::backends("bcast_shared").await {
        let (appender, mut feed) = FakeAppender::new(0);
        let ids = Arc::new(Counter(AtomicU64::new(0)));
        let (b, _) = start(backend.store.clone(), &backend, appender, ids).await;

        let a = b
            .try_submit(request(vec![key(2, "db", true), key(1, "c1", true)]))
            .await
            .unwrap();
        let c = b
            .try_submit(request(vec![key(2, "db", true), key(1, "c2", false)]))
            .await
            .unwrap();
        // The same key string in another domain is another lock.
        let d = b
            .try_submit(request(vec![key(3, "c2", false)]))
            .await
            .unwrap();
        let copies = feed.next(9).await;
        assert_eq!(task_keys(&backend).await.len(), 3);
        // Three broadcasts at once, none waited.
        assert_eq!(b.waiting(), 0);
        ack_all(&b, &copies).await;
        for h in [a, c, d] {
            bounded("a shared broadcast", h.wait()).await.unwrap();
        }
        assert!(task_keys(&backend).await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_vchannel_is_retried_until_it_succeeds() {
    for backend in common::backends("bcast_retry").await {
        let (appender, mut feed) = FakeAppender::new(0);
        appender.fail(VCS[1], 4);
        let ids = Arc::new(Counter(AtomicU64::new(0)));
        let (b, _) = start(backend.store.clone(), &backend, appender.clone(), ids).await;

        let mut handle = b.submit(request(vec![])).await.unwrap();
        let copies = feed.next(3).await;
        wait_state(&mut handle, TaskState::WaitAck).await;
        assert_eq!(appender.attempts(VCS[0]), 1);
        assert_eq!(appender.attempts(VCS[1]), 5);
        assert_eq!(appender.attempts(VCS[2]), 1);
        ack_all(&b, &copies).await;
        let result = bounded("the result", handle.wait()).await.unwrap();
        let retried = copies
            .iter()
            .find(|c| c.vchannel.as_str() == VCS[1])
            .unwrap();
        assert_eq!(result.appends[&vc(VCS[1])], Some(retried.outcome));
        feed.assert_none();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_while_an_append_is_blocked_resends_only_what_was_not_sent() {
    for backend in common::backends("bcast_restart_send").await {
        let ids = Arc::new(Counter(AtomicU64::new(0)));
        let (old_appender, mut old_feed) = FakeAppender::new(0);
        old_appender.block(VCS[2]);
        let (old, _) = start(backend.store.clone(), &backend, old_appender, ids.clone()).await;
        let keys = vec![key(1, "coll", false)];
        let mut handle = old.submit(request(keys.clone())).await.unwrap();
        let id = handle.id();
        let sent = old_feed.next(2).await;
        bounded("the blocked append", old_feed.blocked.recv()).await;
        bounded("two sends recorded", handle.wait_for(|p| p.sent == 2))
            .await
            .unwrap();
        // The first consumer acks before the coordinator goes away.
        let first = sent.iter().find(|c| c.vchannel.as_str() == VCS[0]).unwrap();
        old.ack(id, VCS[0]).await.unwrap();
        drop(old);
        assert!(matches!(handle.wait().await, Err(CoordError::Shutdown)));

        let (new_appender, mut new_feed) = FakeAppender::new(1000);
        let store = common::second_handle(&backend).await;
        let (new, recovery) = start(store, &backend, new_appender, ids).await;
        assert!(recovery.malformed.is_empty());
        assert_eq!(recovery.tasks.len(), 1);
        let task = &recovery.tasks[0];
        assert_eq!(task.id, id);
        assert_eq!(task.resending, [vc(VCS[2])]);
        assert_eq!(task.awaiting_ack, [vc(VCS[1])]);

        // Only the vchannel whose append never returned is sent again, as the same broadcast.
        let resent = new_feed.next(1).await;
        assert_eq!(resent[0].vchannel, vc(VCS[2]));
        assert_eq!(resent[0].broadcast_id(), id);
        // The keys are held again.
        assert!(matches!(
            new.try_submit(request(keys.clone())).await,
            Err(CoordError::ResourceAcquired(_))
        ));

        let handle = new.handle(id).unwrap();
        new.ack(id, VCS[1]).await.unwrap();
        new.ack(id, VCS[2]).await.unwrap();
        let result = bounded("the recovered result", handle.wait())
            .await
            .unwrap();
        let second = sent.iter().find(|c| c.vchannel.as_str() == VCS[1]).unwrap();
        assert_eq!(result.appends[&vc(VCS[0])], Some(first.outcome));
        assert_eq!(result.appends[&vc(VCS[1])], Some(second.outcome));
        assert_eq!(result.appends[&vc(VCS[2])], Some(resent[0].outcome));
        assert!(task_keys(&backend).await.is_empty(), "{}", backend.name);
        new_feed.assert_none();

        // Released: a writer of the same key proceeds at once.
        let next = new.try_submit(request(keys)).await.unwrap();
        ack_all(&new, &new_feed.next(3).await).await;
        bounded("the next broadcast", next.wait()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_before_acks_waits_for_the_acks_and_releases_the_keys() {
    for backend in common::backends("bcast_restart_ack").await {
        let ids = Arc::new(Counter(AtomicU64::new(0)));
        let (old_appender, mut old_feed) = FakeAppender::new(0);
        let (old, _) = start(backend.store.clone(), &backend, old_appender, ids.clone()).await;
        let keys = vec![key(1, "coll", false)];
        let mut handle = old.submit(request(keys.clone())).await.unwrap();
        let id = handle.id();
        let copies = old_feed.next(3).await;
        wait_state(&mut handle, TaskState::WaitAck).await;
        old.shutdown().await;

        let (new_appender, mut new_feed) = FakeAppender::new(1000);
        let store = common::second_handle(&backend).await;
        let (new, recovery) = start(store, &backend, new_appender, ids).await;
        assert_eq!(recovery.tasks.len(), 1);
        assert!(recovery.tasks[0].resending.is_empty());
        assert_eq!(
            recovery.tasks[0].awaiting_ack,
            VCS.iter().map(|s| vc(s)).collect::<Vec<_>>()
        );
        assert!(matches!(
            new.try_submit(request(keys.clone())).await,
            Err(CoordError::ResourceAcquired(_))
        ));

        let handle = new.handle(id).unwrap();
        ack_all(&new, &copies).await;
        let result = bounded("the recovered result", handle.wait())
            .await
            .unwrap();
        for c in &copies {
            assert_eq!(result.appends[&c.vchannel], Some(c.outcome));
        }
        // Nothing was sent again.
        new_feed.assert_none();
        assert!(task_keys(&backend).await.is_empty(), "{}", backend.name);
        let next = new.try_submit(request(keys)).await.unwrap();
        ack_all(&new, &new_feed.next(3).await).await;
        bounded("the next broadcast", next.wait()).await.unwrap();
    }
}

fn raw(props: &[(&str, &str)], base: &MutableMessage) -> MutableMessage {
    let mut properties: Properties = base.properties().into_owned();
    for (k, v) in props {
        properties.insert(k.to_string(), v.to_string());
    }
    MutableMessage::from_message(Message::from_parts(base.payload().clone(), properties).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_change_nothing() {
    for backend in common::backends("bcast_bad").await {
        let (appender, mut feed) = FakeAppender::new(0);
        let ids = Arc::new(Counter(AtomicU64::new(0)));
        let (b, _) = start(backend.store.clone(), &backend, appender, ids.clone()).await;
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let good = request(vec![key(1, "coll", false)]);
        let with = |f: &dyn Fn(&mut BroadcastRequest)| {
            let mut r = good.clone();
            f(&mut r);
            r
        };
        let bad = [
            with(&|r| r.vchannels.clear()),
            with(&|r| r.vchannels = names(&["p0_100v0", "no-shard"])),
            with(&|r| r.vchannels = names(&["p0_100v0", "p1_100v1", "p0_100v0"])),
            with(&|r| r.vchannels = names(&["p/0_100v0"])),
            with(&|r| r.message = raw(&[(prop::TIMESTAMP, "1")], &ddl())),
            with(&|r| r.message = raw(&[(prop::VCHANNEL, "p0_100v0")], &ddl())),
            with(&|r| r.message = raw(&[(prop::BROADCAST_HEADER, "")], &ddl())),
            with(&|r| r.message = raw(&[("_custom", "x")], &ddl())),
            with(&|r| r.message = raw(&[("", "x")], &ddl())),
            with(&|r| r.message = raw(&[(prop::HEADER, "not base64!")], &ddl())),
            with(&|r| r.message = raw(&[(prop::VERSION, "x")], &ddl())),
            with(&|r| {
                r.message = MutableMessage::builder(TimeTickHeader::default())
                    .build()
                    .unwrap()
            }),
            with(&|r| r.resource_keys = vec![key(9, "coll", false)]),
            with(&|r| r.resource_keys = vec![key(1, "coll", true), key(1, "coll", false)]),
        ];
        for req in bad {
            let err = b.broadcast(req.clone()).await.unwrap_err();
            assert!(
                matches!(err, CoordError::InvalidArgument(_)),
                "{req:?}: {err}"
            );
            assert_eq!(err.code(), ErrorCode::InvalidArgument);
            assert!(!err.retryable());
        }
        // Nothing was written, sent, queued or even numbered.
        assert!(task_keys(&backend).await.is_empty());
        assert_eq!(ids.0.load(Ordering::SeqCst), 0);
        assert_eq!(b.waiting(), 0);
        assert!(b.running().is_empty());
        feed.assert_none();

        // And the good request still goes through.
        let h = b.submit(good).await.unwrap();
        ack_all(&b, &feed.next(3).await).await;
        bounded("the good broadcast", h.wait()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_tasks_are_reported_and_left_while_others_recover() {
    for backend in common::backends("bcast_malformed").await {
        let ids = Arc::new(Counter(AtomicU64::new(0)));
        let (old_appender, mut old_feed) = FakeAppender::new(0);
        let (old, _) = start(backend.store.clone(), &backend, old_appender, ids.clone()).await;
        let mut handle = old
            .submit(request(vec![key(1, "coll", false)]))
            .await
            .unwrap();
        let id = handle.id();
        let copies = old_feed.next(3).await;
        wait_state(&mut handle, TaskState::WaitAck).await;
        old.shutdown().await;

        // Garbage, a valid task value under another id's key, and a key that is not an id.
        let good = backend
            .store
            .get(&backend.keys.broadcast(id))
            .await
            .unwrap()
            .unwrap();
        let garbage = [
            (
                backend.keys.broadcast(500),
                Bytes::from_static(b"\xff\x00garbage"),
            ),
            (backend.keys.broadcast(501), good.value.clone()),
            (
                format!("{}not-an-id", backend.keys.broadcast_prefix()),
                Bytes::from_static(b""),
            ),
        ];
        for (k, v) in &garbage {
            backend
                .store
                .put(k, v.clone(), Condition::None, None)
                .await
                .unwrap();
        }

        let (new_appender, mut new_feed) = FakeAppender::new(1000);
        let store = common::second_handle(&backend).await;
        let (new, recovery) = start(store, &backend, new_appender, ids).await;
        assert_eq!(recovery.tasks.len(), 1);
        assert_eq!(recovery.tasks[0].id, id);
        assert_eq!(recovery.malformed.len(), 3, "{:?}", recovery.malformed);
        for (err, (k, _)) in recovery.malformed.iter().zip(&garbage) {
            match err {
                CoordError::Malformed { key, .. } => {
                    assert!(garbage.iter().any(|(g, _)| g == key), "{key} for {k}")
                }
                other => panic!("expected Malformed, got {other}"),
            }
            assert_eq!(err.code(), ErrorCode::Unrecoverable);
        }

        let handle = new.handle(id).unwrap();
        ack_all(&new, &copies).await;
        bounded("the valid task", handle.wait()).await.unwrap();
        new_feed.assert_none();
        // The malformed values are left untouched for an operator.
        for (k, v) in &garbage {
            let kv = backend.store.get(k).await.unwrap().unwrap();
            assert_eq!(&kv.value, v);
        }
        assert_eq!(task_keys(&backend).await.len(), 3);
        for (k, _) in &garbage {
            backend.store.delete(k, Condition::None).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vchannel_acked_while_its_send_is_retried_stops_being_sent() {
    for backend in common::backends("bcast_ack_first").await {
        let (appender, mut feed) = FakeAppender::new(0);
        appender.fail(VCS[2], u32::MAX);
        let ids = Arc::new(Counter(AtomicU64::new(0)));
        let (b, _) = start(backend.store.clone(), &backend, appender.clone(), ids).await;
        let handle = b.submit(request(vec![])).await.unwrap();
        let id = handle.id();
        let copies = feed.next(2).await;
        bounded("a failed attempt", async {
            while appender.attempts(VCS[2]) < 2 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        // The copy reached its consumer although the append reported an error.
        ack_all(&b, &copies).await;
        b.ack(id, VCS[2]).await.unwrap();
        let result = bounded("the result", handle.wait()).await.unwrap();
        assert_eq!(result.appends[&vc(VCS[2])], None);
        for c in &copies {
            assert_eq!(result.appends[&c.vchannel], Some(c.outcome));
        }
        // Done means no send is left running: the attempts stop.
        let attempts = appender.attempts(VCS[2]);
        assert!(task_keys(&backend).await.is_empty());
        assert_eq!(appender.attempts(VCS[2]), attempts);
        feed.assert_none();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_coordinators_on_one_task_merge_acks_and_the_loser_lets_go() {
    for backend in common::backends("bcast_split").await {
        let ids = Arc::new(Counter(AtomicU64::new(0)));
        let (appender, mut feed) = FakeAppender::new(0);
        let (first, _) = start(backend.store.clone(), &backend, appender, ids.clone()).await;
        let mut stale = first.submit(request(vec![])).await.unwrap();
        let id = stale.id();
        feed.next(3).await;
        wait_state(&mut stale, TaskState::WaitAck).await;

        // A second coordinator takes over while the first still runs (its leadership lapsed).
        let (appender2, mut feed2) = FakeAppender::new(1000);
        let store = common::second_handle(&backend).await;
        let (second, recovery) = start(store, &backend, appender2, ids).await;
        assert_eq!(recovery.tasks.len(), 1);
        let handle = second.handle(id).unwrap();

        // The first records one ack after the second loaded the task; the second's next write
        // loses its compare-and-set, re-reads and keeps both acks.
        first.ack(id, VCS[0]).await.unwrap();
        second.ack(id, VCS[1]).await.unwrap();
        assert_eq!(handle.progress().acked, 2, "{}", backend.name);
        second.ack(id, VCS[2]).await.unwrap();
        let result = bounded("the result", handle.wait()).await.unwrap();
        assert!(result.appends.values().all(Option::is_some));
        assert!(task_keys(&backend).await.is_empty());

        // The first finds the task gone and lets it go instead of writing it back.
        let err = first.ack(id, VCS[1]).await.unwrap_err();
        assert!(matches!(err, CoordError::Conflict(_)), "{err}");
        assert!(matches!(stale.wait().await, Err(CoordError::Conflict(_))));
        assert!(first.running().is_empty());
        assert!(task_keys(&backend).await.is_empty());
        feed2.assert_none();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_id_is_a_conflict_and_overwrites_nothing() {
    for backend in common::backends("bcast_reused_id").await {
        let (appender, mut feed) = FakeAppender::new(0);
        let (b, _) = start(
            backend.store.clone(),
            &backend,
            appender,
            Arc::new(Counter(AtomicU64::new(0))),
        )
        .await;
        let mut handle = b.submit(request(vec![])).await.unwrap();
        let copies = feed.next(3).await;
        wait_state(&mut handle, TaskState::WaitAck).await;
        b.shutdown().await;
        let key = backend.keys.broadcast(handle.id());
        let before = backend.store.get(&key).await.unwrap().unwrap();

        // A broken id source hands out the same id again after the restart.
        let (appender, mut feed2) = FakeAppender::new(1000);
        let (b, _) = start(
            backend.store.clone(),
            &backend,
            appender,
            Arc::new(Counter(AtomicU64::new(0))),
        )
        .await;
        let err = b.submit(request(vec![key_of("coll")])).await.unwrap_err();
        assert!(matches!(err, CoordError::Conflict(_)), "{err}");
        assert_eq!(backend.store.get(&key).await.unwrap().unwrap(), before);
        // Its keys were let go, and the original task still completes.
        let next = b.try_submit(request(vec![key_of("coll")])).await.unwrap();
        let recovered = b.handle(handle.id()).unwrap();
        ack_all(&b, &copies).await;
        bounded("the original task", recovered.wait())
            .await
            .unwrap();
        ack_all(&b, &feed2.next(3).await).await;
        bounded("the next broadcast", next.wait()).await.unwrap();
        assert!(task_keys(&backend).await.is_empty());
    }
}

fn key_of(collection: &str) -> ResourceKey {
    key(1, collection, false)
}
