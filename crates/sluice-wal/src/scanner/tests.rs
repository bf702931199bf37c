//! Scanner tests on a memory log written by [`TestWriter`], a small imitation of the WAL's
//! append path and timetick sync.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rand::Rng;
use sluice_log::memory::{MemoryConfig, MemoryProvider};
use sluice_log::{
    AccessMode, AppendFuture, DeliverPolicy, LogError, LogHandle, LogProvider, LogStream,
    OpenOptions, ReadOptions,
};
use sluice_types::message::{
    BeginTxnHeader, CommitTxnHeader, DeleteHeader, InsertHeader, RollbackTxnHeader, TimeTickHeader,
    TxnContext,
};
use sluice_types::{
    CollectionId, ImmutableMessage, ImmutableTxnMessage, MessageId, MessageType, MutableMessage,
    PChannel, Term, Timestamp, VChannel,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::wab::WabConfig;

// ---------------------------------------------------------------------------------------------
// The test writer.

struct WriterState {
    /// The next timestamp to allocate. Messages get even timestamps; a timetick placed below
    /// the oldest in-flight allocation gets that allocation minus one, which no message has.
    next_ts: u64,
    /// Allocated but not yet acknowledged: timestamp → last-confirmed id given.
    in_flight: BTreeMap<Timestamp, MessageId>,
    /// Acknowledged, not yet covered by a timetick.
    acked: Vec<ImmutableMessage>,
    last_tick_id: MessageId,
    last_tick_ts: Timestamp,
}

/// Imitates the WAL: strictly increasing timestamps allocated under a lock, concurrent appends
/// (so id order differs from timestamp order), a last-confirmed id on every message, and a
/// timetick sync that writes a persisted timetick only below every in-flight allocation and
/// after the messages it covers are acknowledged, then pushes them into the write-ahead buffer.
struct TestWriter {
    log: Arc<dyn LogHandle>,
    wab: Arc<WriteAheadBuffer>,
    state: Mutex<WriterState>,
    force_persisted: AtomicBool,
    next_txn: AtomicI64,
    tick_lock: tokio::sync::Mutex<()>,
    pchannel: PChannel,
}

fn ts_of(m: &ImmutableMessage) -> Timestamp {
    m.timestamp().unwrap().unwrap()
}

impl TestWriter {
    async fn open(name: &str, config: WabConfig) -> Arc<TestWriter> {
        let provider = MemoryProvider::new(MemoryConfig::default());
        let pchannel = PChannel::new(name).unwrap();
        let log = provider
            .open(OpenOptions::read_write(pchannel.clone(), Term(1)))
            .await
            .unwrap();
        let first = Timestamp::from_parts(1_700_000_000_000, 0).unwrap();
        let mut tick = MutableMessage::builder(TimeTickHeader::default())
            .build()
            .unwrap();
        tick.set_timestamp(first);
        tick.set_last_confirmed_is_self();
        let id = log.append(tick.clone()).await.unwrap();
        let wab = Arc::new(WriteAheadBuffer::new(config, tick.into_immutable(id)).unwrap());
        Arc::new(TestWriter {
            log,
            wab,
            state: Mutex::new(WriterState {
                next_ts: first.0 + 2,
                in_flight: BTreeMap::new(),
                acked: Vec::new(),
                last_tick_id: id,
                last_tick_ts: first,
            }),
            force_persisted: AtomicBool::new(false),
            next_txn: AtomicI64::new(1),
            tick_lock: tokio::sync::Mutex::new(()),
            pchannel,
        })
    }

    fn vchannel(&self, collection: i64) -> VChannel {
        self.pchannel.vchannel(CollectionId(collection), 0).unwrap()
    }

    /// The `on_new_reader` hook: the next timetick is persisted.
    fn hook(self: &Arc<Self>) -> Arc<dyn Fn() + Send + Sync> {
        let me = self.clone();
        Arc::new(move || me.force_persisted.store(true, Ordering::SeqCst))
    }

    /// Physical time passes (for transaction keepalives).
    fn advance(&self, d: Duration) {
        let mut s = self.state.lock();
        s.next_ts = Timestamp(s.next_ts).saturating_add_duration(d).0;
    }

    async fn append(&self, mut msg: MutableMessage) -> ImmutableMessage {
        let ts = {
            let mut s = self.state.lock();
            let ts = Timestamp(s.next_ts);
            s.next_ts += 2;
            let lc = s.last_tick_id;
            s.in_flight.insert(ts, lc);
            msg.set_timestamp(ts);
            msg.set_last_confirmed(lc);
            ts
        };
        // Appends in flight together finish in any order.
        let yields = rand::rng().random_range(0..4);
        for _ in 0..yields {
            tokio::task::yield_now().await;
        }
        let id = self.log.append(msg.clone()).await.unwrap();
        let imm = msg.into_immutable(id);
        let mut s = self.state.lock();
        s.in_flight.remove(&ts);
        s.acked.push(imm.clone());
        imm
    }

    /// One timetick sync. Returns the timetick's timestamp, or `None` when time could not
    /// advance (the oldest in-flight allocation did not change).
    async fn tick(&self) -> Option<Timestamp> {
        let _one_at_a_time = self.tick_lock.lock().await;
        let (tt, mut collected, lc, persisted) = {
            let mut s = self.state.lock();
            let tt = match s.in_flight.keys().next() {
                Some(oldest) => Timestamp(oldest.0 - 1),
                None => {
                    let t = Timestamp(s.next_ts);
                    s.next_ts += 2;
                    t
                }
            };
            if tt <= s.last_tick_ts {
                return None;
            }
            let (mut collected, rest): (Vec<_>, Vec<_>) =
                s.acked.drain(..).partition(|m| ts_of(m) <= tt);
            collected.sort_by_key(ts_of);
            // Reading from the timetick's last-confirmed id must see everything above it:
            // every message allocated but not covered yet is seen from its own LC.
            let lc = s
                .in_flight
                .values()
                .copied()
                .chain(rest.iter().map(|m| m.last_confirmed().unwrap().unwrap()))
                .chain([s.last_tick_id])
                .min()
                .unwrap();
            s.acked = rest;
            s.last_tick_ts = tt;
            let forced = self.force_persisted.swap(false, Ordering::SeqCst);
            let persisted = forced || !collected.is_empty();
            (tt, collected, lc, persisted)
        };
        let mut tick = MutableMessage::builder(TimeTickHeader::default())
            .build()
            .unwrap();
        tick.set_timestamp(tt);
        tick.set_last_confirmed(lc);
        let id = if persisted {
            let id = self.log.append(tick.clone()).await.unwrap();
            self.state.lock().last_tick_id = id;
            id
        } else {
            tick.set_not_persisted(true).unwrap();
            lc
        };
        self.wab
            .push(&mut collected, tick.into_immutable(id))
            .unwrap();
        Some(tt)
    }

    /// A persisted timetick above everything written so far (call when no append is in
    /// flight). Returns its timestamp.
    async fn flush(&self) -> Timestamp {
        loop {
            self.force_persisted.store(true, Ordering::SeqCst);
            if let Some(tt) = self.tick().await
                && self.state.lock().in_flight.is_empty()
            {
                return tt;
            }
            tokio::task::yield_now().await;
        }
    }

    /// A background timetick sync every `every`.
    fn start_ticker(self: &Arc<Self>, every: Duration) -> Ticker {
        let stop = CancellationToken::new();
        let me = self.clone();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(every) => { me.tick().await; }
                }
            }
        });
        Ticker { stop, task }
    }

    /// Appends every message concurrently; returns them as written.
    async fn write_concurrently(
        self: &Arc<Self>,
        messages: Vec<MutableMessage>,
    ) -> Vec<ImmutableMessage> {
        let mut set = JoinSet::new();
        for m in messages {
            let me = self.clone();
            set.spawn(async move { me.append(m).await });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.push(r.unwrap());
        }
        out
    }

    /// Writes one transaction: begin, `bodies` concurrent inserts, then the outcome.
    async fn txn(
        self: &Arc<Self>,
        vc: &VChannel,
        bodies: usize,
        outcome: Outcome,
        keepalive_ms: i64,
    ) -> WrittenTxn {
        let ctx = TxnContext {
            txn_id: self.next_txn.fetch_add(1, Ordering::SeqCst),
            keepalive_ms,
        };
        let part = |mut m: MutableMessage| {
            m.set_txn_context(ctx);
            m
        };
        let begin = MutableMessage::builder(BeginTxnHeader {
            keepalive_milliseconds: keepalive_ms,
        })
        .vchannel(vc)
        .build()
        .unwrap();
        let begin = self.append(part(begin)).await;
        let mut bodies = self
            .write_concurrently((0..bodies).map(|_| part(insert(vc))).collect())
            .await;
        bodies.sort_by_key(ts_of);
        let end = match outcome {
            Outcome::Commit => Some(
                MutableMessage::builder(CommitTxnHeader::default())
                    .vchannel(vc)
                    .build()
                    .unwrap(),
            ),
            Outcome::Rollback => Some(
                MutableMessage::builder(RollbackTxnHeader::default())
                    .vchannel(vc)
                    .build()
                    .unwrap(),
            ),
            Outcome::Abandon => None,
        };
        let end = match end {
            Some(m) => Some(self.append(part(m)).await),
            None => None,
        };
        WrittenTxn { begin, bodies, end }
    }
}

struct Ticker {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Ticker {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

#[derive(Clone, Copy, Debug)]
enum Outcome {
    Commit,
    Rollback,
    Abandon,
}

struct WrittenTxn {
    begin: ImmutableMessage,
    bodies: Vec<ImmutableMessage>,
    end: Option<ImmutableMessage>,
}

impl WrittenTxn {
    fn ids(&self) -> Vec<MessageId> {
        std::iter::once(&self.begin)
            .chain(&self.bodies)
            .chain(&self.end)
            .map(|m| m.id())
            .collect()
    }
}

fn insert(vc: &VChannel) -> MutableMessage {
    MutableMessage::builder(InsertHeader::default())
        .vchannel(vc)
        .payload(vec![7u8; 64])
        .build()
        .unwrap()
}

fn delete(vc: &VChannel) -> MutableMessage {
    MutableMessage::builder(DeleteHeader::default())
        .vchannel(vc)
        .payload(vec![9u8; 16])
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Reading helpers.

const PATIENCE: Duration = Duration::from_secs(60);

/// Reads into `out` until `done` holds for a delivered message.
async fn read_until(
    scanner: &mut Scanner,
    out: &mut Vec<ReadMessage>,
    mut done: impl FnMut(&ReadMessage) -> bool,
) {
    let read = tokio::time::timeout(PATIENCE, async {
        loop {
            match scanner.next().await {
                Some(Ok(m)) => {
                    let stop = done(&m);
                    out.push(m);
                    if stop {
                        return;
                    }
                }
                Some(Err(e)) => panic!("scanner failed: {e}"),
                None => panic!("scanner ended"),
            }
        }
    })
    .await;
    if read.is_err() {
        panic!(
            "timed out after {} messages; {:?}",
            out.len(),
            scanner.stats()
        );
    }
}

fn tick_at_or_after(t: Timestamp) -> impl FnMut(&ReadMessage) -> bool {
    move |m| m.is_timetick() && m.timestamp().is_some_and(|ts| ts >= t)
}

async fn wait_for(scanner: &Scanner, what: &str, cond: impl Fn(&ScannerStats) -> bool) {
    let waited = tokio::time::timeout(PATIENCE, async {
        while !cond(&scanner.stats()) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{what}: {:?}", scanner.stats());
}

fn assert_strictly_increasing(out: &[ReadMessage]) {
    for w in out.windows(2) {
        let (a, b) = (w[0].timestamp().unwrap(), w[1].timestamp().unwrap());
        assert!(a < b, "timestamps not increasing: {a} then {b}");
    }
}

/// Ids of the plain data messages delivered (timeticks and txns excluded), sorted; panics on
/// a duplicate.
fn data_ids(out: &[ReadMessage]) -> Vec<MessageId> {
    let mut seen = BTreeSet::new();
    for m in out {
        if let ReadMessage::Message(m) = m
            && m.message_type().unwrap() != MessageType::TimeTick
        {
            assert!(seen.insert(m.id()), "{} delivered twice", m.id());
        }
    }
    seen.into_iter().collect()
}

fn sorted_ids<'a>(msgs: impl IntoIterator<Item = &'a ImmutableMessage>) -> Vec<MessageId> {
    let mut ids: Vec<_> = msgs.into_iter().map(|m| m.id()).collect();
    ids.sort();
    ids
}

fn options(vchannel: Option<VChannel>, filters: Vec<MessageFilter>) -> ScannerOptions {
    ScannerOptions {
        vchannel,
        filters,
        ..ScannerOptions::default()
    }
}

// ---------------------------------------------------------------------------------------------
// End-to-end behaviour on the test writer.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_exactly_the_written_set_in_timestamp_order_with_vchannel_and_type_filters() {
    let w = TestWriter::open("exact", WabConfig::default()).await;
    let (a, b) = (w.vchannel(1), w.vchannel(2));
    let mut filtered = start_scanner(
        w.log.clone(),
        Some(w.wab.clone()),
        options(
            Some(a.clone()),
            vec![MessageFilter::Types(vec![MessageType::Insert])],
        ),
        Some(w.hook()),
    )
    .unwrap();
    let mut everything = start_scanner(
        w.log.clone(),
        Some(w.wab.clone()),
        ScannerOptions::default(),
        Some(w.hook()),
    )
    .unwrap();
    let ticker = w.start_ticker(Duration::from_millis(2));
    let mut rng = rand::rng();
    let messages: Vec<MutableMessage> = (0..600)
        .map(|_| {
            let vc = if rng.random_bool(0.5) { &a } else { &b };
            if rng.random_bool(0.5) {
                insert(vc)
            } else {
                delete(vc)
            }
        })
        .collect();
    let written = w.write_concurrently(messages).await;
    ticker.stop().await;
    let last = w.flush().await;
    let by_id_order: Vec<_> = {
        let mut v = written.clone();
        v.sort_by_key(|m| m.id());
        v
    };
    assert!(
        by_id_order.windows(2).any(|p| ts_of(&p[0]) > ts_of(&p[1])),
        "the writer should have produced ids out of timestamp order"
    );

    let mut got = Vec::new();
    read_until(&mut filtered, &mut got, tick_at_or_after(last)).await;
    assert_strictly_increasing(&got);
    let want = sorted_ids(written.iter().filter(|m| {
        m.vchannel_str() == Some(a.as_str()) && m.message_type().unwrap() == MessageType::Insert
    }));
    assert_eq!(data_ids(&got), want);

    let mut all = Vec::new();
    read_until(&mut everything, &mut all, tick_at_or_after(last)).await;
    assert_strictly_increasing(&all);
    assert_eq!(data_ids(&all), sorted_ids(&written));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_txns_arrive_whole_at_commit_time_and_rolled_back_or_expired_ones_vanish() {
    let w = TestWriter::open("txns", WabConfig::default()).await;
    let a = w.vchannel(1);
    let mut scanner = start_scanner(
        w.log.clone(),
        Some(w.wab.clone()),
        options(Some(a.clone()), vec![]),
        Some(w.hook()),
    )
    .unwrap();
    let ticker = w.start_ticker(Duration::from_millis(2));
    let (committed, discarded, plain) = {
        let committed = (0..=4).map(|n| {
            let w = w.clone();
            let a = a.clone();
            tokio::spawn(async move { w.txn(&a, n, Outcome::Commit, 60_000).await })
        });
        let rolled_back = (0..2).map(|_| {
            let w = w.clone();
            let a = a.clone();
            tokio::spawn(async move { w.txn(&a, 2, Outcome::Rollback, 60_000).await })
        });
        let abandoned = (0..2).map(|_| {
            let w = w.clone();
            let a = a.clone();
            tokio::spawn(async move { w.txn(&a, 2, Outcome::Abandon, 20).await })
        });
        let committed: Vec<_> = committed.collect();
        let discarded: Vec<_> = rolled_back.chain(abandoned).collect();
        let plain = w
            .write_concurrently((0..40).map(|_| insert(&a)).collect())
            .await;
        let mut c = Vec::new();
        for t in committed {
            c.push(t.await.unwrap());
        }
        let mut d = Vec::new();
        for t in discarded {
            d.push(t.await.unwrap());
        }
        (c, d, plain)
    };
    // Past every abandoned transaction's keepalive: the next timeticks expire them.
    w.advance(Duration::from_millis(100));
    let after = w.write_concurrently(vec![insert(&a)]).await;
    ticker.stop().await;
    let last = w.flush().await;

    let mut got = Vec::new();
    read_until(&mut scanner, &mut got, tick_at_or_after(last)).await;
    assert_strictly_increasing(&got);
    let txns: Vec<&ImmutableTxnMessage> = got.iter().filter_map(|m| m.as_txn()).collect();
    assert_eq!(txns.len(), committed.len());
    for written in &committed {
        let commit = written.end.as_ref().unwrap();
        let t = txns
            .iter()
            .find(|t| t.commit().id() == commit.id())
            .expect("committed txn delivered");
        assert_eq!(t.begin().id(), written.begin.id());
        assert_eq!(sorted_ids(t.bodies()), sorted_ids(&written.bodies));
        assert_eq!(t.timestamp().unwrap(), Some(ts_of(commit)));
    }
    let discarded_ids: HashSet<MessageId> = discarded.iter().flat_map(|t| t.ids()).collect();
    let delivered: HashSet<MessageId> = got
        .iter()
        .flat_map(|m| match m {
            ReadMessage::Message(m) => vec![m.id()],
            ReadMessage::Txn(t) => std::iter::once(t.begin())
                .chain(t.bodies())
                .chain([t.commit()])
                .map(|m| m.id())
                .collect(),
        })
        .collect();
    assert!(delivered.is_disjoint(&discarded_ids));
    assert_eq!(data_ids(&got), sorted_ids(plain.iter().chain(&after)));
    let stats = scanner.stats();
    assert_eq!(stats.pipeline.txns.committed, 5);
    assert_eq!(stats.pipeline.txns.rolled_back, 2);
    assert_eq!(stats.pipeline.txns.expired, 2);
    assert_eq!(stats.open_txns, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_reads_the_log_then_switches_to_tailing_the_buffer() {
    // A small buffer: by the time the scanner starts, the early history is only in the log.
    let w = TestWriter::open(
        "switch",
        WabConfig {
            capacity_bytes: 4 * 1024,
            ..WabConfig::default()
        },
    )
    .await;
    let a = w.vchannel(1);
    let mut early = Vec::new();
    for _ in 0..20 {
        early.extend(
            w.write_concurrently((0..10).map(|_| insert(&a)).collect())
                .await,
        );
        w.tick().await;
    }
    assert!(w.wab.stats().evicted > 0);
    let hook_calls = Arc::new(AtomicUsize::new(0));
    let hook = {
        let calls = hook_calls.clone();
        let inner = w.hook();
        Arc::new(move || {
            calls.fetch_add(1, Ordering::SeqCst);
            inner();
        }) as Arc<dyn Fn() + Send + Sync>
    };
    let mut scanner = start_scanner(
        w.log.clone(),
        Some(w.wab.clone()),
        ScannerOptions::default(),
        Some(hook),
    )
    .unwrap();
    let mut got = Vec::new();
    let boundary = w.flush().await;
    read_until(&mut scanner, &mut got, tick_at_or_after(boundary)).await;
    wait_for(&scanner, "switch to tailing", |s| {
        s.mode == ScannerMode::Tailing
    })
    .await;
    let late = w
        .write_concurrently((0..30).map(|_| insert(&a)).collect())
        .await;
    let last = w.flush().await;
    read_until(&mut scanner, &mut got, tick_at_or_after(last)).await;

    assert_strictly_increasing(&got);
    assert_eq!(data_ids(&got), sorted_ids(early.iter().chain(&late)));
    let stats = scanner.stats();
    assert_eq!(stats.source.switches_to_tail, 1, "{stats:?}");
    assert_eq!(stats.source.switches_to_catch_up, 0, "{stats:?}");
    assert_eq!(hook_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_while_tailing_falls_back_to_catch_up_without_gap_or_duplicate() {
    let w = TestWriter::open(
        "evict",
        WabConfig {
            capacity_bytes: 2 * 1024,
            ..WabConfig::default()
        },
    )
    .await;
    let a = w.vchannel(1);
    let mut scanner = start_scanner(
        w.log.clone(),
        Some(w.wab.clone()),
        ScannerOptions {
            pending_limit: 4,
            ..ScannerOptions::default()
        },
        Some(w.hook()),
    )
    .unwrap();
    let mut written = w
        .write_concurrently((0..10).map(|_| insert(&a)).collect())
        .await;
    let first = w.flush().await;
    let mut got = Vec::new();
    read_until(&mut scanner, &mut got, tick_at_or_after(first)).await;
    wait_for(&scanner, "tailing", |s| s.mode == ScannerMode::Tailing).await;

    // The consumer stalls while far more than the buffer holds is written.
    for _ in 0..30 {
        written.extend(
            w.write_concurrently((0..10).map(|_| insert(&a)).collect())
                .await,
        );
        w.tick().await;
    }
    let last = w.flush().await;
    read_until(&mut scanner, &mut got, tick_at_or_after(last)).await;

    assert_strictly_increasing(&got);
    assert_eq!(data_ids(&got), sorted_ids(&written));
    let stats = scanner.stats();
    assert!(stats.source.switches_to_catch_up >= 1, "{stats:?}");
    // Catch-up finds the buffer again at a later persisted timetick.
    let more = w
        .write_concurrently((0..5).map(|_| insert(&a)).collect())
        .await;
    let end = w.flush().await;
    read_until(&mut scanner, &mut got, tick_at_or_after(end)).await;
    wait_for(&scanner, "tailing again", |s| {
        s.source.switches_to_tail >= 2
    })
    .await;
    written.extend(more);
    assert_strictly_increasing(&got);
    assert_eq!(data_ids(&got), sorted_ids(&written));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_filters_gt_and_gte_select_messages_and_txns_by_commit_time() {
    let w = TestWriter::open("time", WabConfig::default()).await;
    let a = w.vchannel(1);
    let before = w.txn(&a, 1, Outcome::Commit, -1).await;
    let early = w
        .write_concurrently((0..10).map(|_| insert(&a)).collect())
        .await;
    w.tick().await;
    // Begins before the bound, commits after it.
    let open = w.txn(&a, 0, Outcome::Abandon, -1).await;
    let pivot = w.append(insert(&a)).await;
    let body = {
        let mut m = insert(&a);
        m.set_txn_context(open.begin.txn_context().unwrap().unwrap());
        w.append(m).await
    };
    let commit = {
        let mut m = MutableMessage::builder(CommitTxnHeader::default())
            .vchannel(&a)
            .build()
            .unwrap();
        m.set_txn_context(open.begin.txn_context().unwrap().unwrap());
        w.append(m).await
    };
    let late = w
        .write_concurrently((0..10).map(|_| insert(&a)).collect())
        .await;
    let last = w.flush().await;
    let bound = ts_of(&pivot);
    let all: Vec<&ImmutableMessage> = early.iter().chain(&late).chain([&pivot]).collect();

    for (filter, inclusive) in [
        (MessageFilter::TimeTickGt(bound), false),
        (MessageFilter::TimeTickGte(bound), true),
    ] {
        let mut scanner = start_scanner(
            w.log.clone(),
            Some(w.wab.clone()),
            options(None, vec![filter.clone()]),
            Some(w.hook()),
        )
        .unwrap();
        let mut got = Vec::new();
        read_until(&mut scanner, &mut got, tick_at_or_after(last)).await;
        assert_strictly_increasing(&got);
        assert!(got.iter().all(|m| {
            let ts = m.timestamp().unwrap();
            if inclusive { ts >= bound } else { ts > bound }
        }));
        let want = sorted_ids(all.iter().copied().filter(|m| {
            let ts = ts_of(m);
            if inclusive { ts >= bound } else { ts > bound }
        }));
        assert_eq!(data_ids(&got), want, "{filter:?}");
        let txns: Vec<_> = got.iter().filter_map(|m| m.as_txn()).collect();
        assert_eq!(txns.len(), 1, "{filter:?}");
        assert_eq!(txns[0].commit().id(), commit.id());
        assert_eq!(txns[0].begin().id(), open.begin.id());
        assert_eq!(sorted_ids(txns[0].bodies()), [body.id()]);
        assert!(
            !got.iter()
                .any(|m| m.id() == before.end.as_ref().unwrap().id())
        );
    }
}

#[tokio::test]
async fn a_type_filter_naming_a_system_type_is_an_invalid_argument() {
    let w = TestWriter::open("types", WabConfig::default()).await;
    for sys in [
        MessageType::TimeTick,
        MessageType::CommitTxn,
        MessageType::Txn,
    ] {
        let err = start_scanner(
            w.log.clone(),
            Some(w.wab.clone()),
            options(
                None,
                vec![MessageFilter::Types(vec![MessageType::Insert, sys])],
            ),
            None,
        )
        .unwrap_err();
        assert!(matches!(err, WalError::InvalidArgument(_)), "{err:?}");
    }
}

#[test]
fn starting_a_scanner_outside_a_runtime_is_an_error() {
    let provider = MemoryProvider::new(MemoryConfig::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let log = rt
        .block_on(provider.open(OpenOptions::read_only(
            PChannel::new("nort").unwrap(),
            Term(1),
        )))
        .unwrap();
    let err = start_scanner(log, None, ScannerOptions::default(), None).unwrap_err();
    assert!(matches!(err, WalError::InvalidArgument(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_keeps_pending_and_upstream_reads_bounded() {
    let w = TestWriter::open("slow", WabConfig::default()).await;
    let a = w.vchannel(1);
    let limit = 4;
    let mut scanner = start_scanner(
        w.log.clone(),
        Some(w.wab.clone()),
        ScannerOptions {
            pending_limit: limit,
            read_ahead: 8,
            ..ScannerOptions::default()
        },
        Some(w.hook()),
    )
    .unwrap();
    let mut written = Vec::new();
    for _ in 0..100 {
        written.extend(
            w.write_concurrently((0..10).map(|_| insert(&a)).collect())
                .await,
        );
        w.tick().await;
    }
    let last = w.flush().await;
    // Let the scanner run as far as it will without a consumer.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stalled = scanner.stats();
    assert!(stalled.pending <= limit, "{stalled:?}");
    assert!(stalled.pipeline.max_pending <= limit, "{stalled:?}");
    // Pending + one batch between timeticks + a timetick or two + the hand-over slot.
    assert!(stalled.source.upstream_messages <= 30, "{stalled:?}");

    let mut got = Vec::new();
    read_until(&mut scanner, &mut got, tick_at_or_after(last)).await;
    assert_eq!(data_ids(&got), sorted_ids(&written));
    let done = scanner.stats();
    assert!(done.pipeline.max_pending <= limit, "{done:?}");
    assert!(done.pipeline.max_reorder <= 20, "{done:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_scanner_stops_its_task() {
    let w = TestWriter::open("drop", WabConfig::default()).await;
    let a = w.vchannel(1);
    // One scanner tailing, one waiting on an idle log without a buffer.
    let mut tailing = start_scanner(
        w.log.clone(),
        Some(w.wab.clone()),
        ScannerOptions::default(),
        Some(w.hook()),
    )
    .unwrap();
    let waiting = start_scanner(
        w.log.clone(),
        None,
        ScannerOptions::new(DeliverPolicy::Latest),
        None,
    )
    .unwrap();
    w.write_concurrently(vec![insert(&a)]).await;
    let tt = w.flush().await;
    let mut got = Vec::new();
    read_until(&mut tailing, &mut got, tick_at_or_after(tt)).await;
    wait_for(&tailing, "tailing", |s| s.mode == ScannerMode::Tailing).await;
    for scanner in [tailing, waiting] {
        let tasks = scanner.tasks();
        let stats = scanner.stats.clone();
        drop(scanner);
        tokio::time::timeout(PATIENCE, tasks.wait())
            .await
            .expect("the scanner's task ends when it is dropped");
        assert!(stats.lock().finished);
    }
    // close() is the awaited form.
    let scanner = start_scanner(w.log.clone(), None, ScannerOptions::default(), None).unwrap();
    let tasks = scanner.tasks();
    scanner.close().await;
    assert!(tasks.is_closed() && tasks.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_scanner_without_a_buffer_reads_only_the_log() {
    let w = TestWriter::open("ro", WabConfig::default()).await;
    let a = w.vchannel(1);
    let mut written = Vec::new();
    for _ in 0..5 {
        written.extend(
            w.write_concurrently((0..10).map(|_| insert(&a)).collect())
                .await,
        );
        w.tick().await;
    }
    let last = w.flush().await;
    let mut scanner = start_scanner(w.log.clone(), None, ScannerOptions::default(), None).unwrap();
    let mut got = Vec::new();
    read_until(&mut scanner, &mut got, tick_at_or_after(last)).await;
    assert_strictly_increasing(&got);
    assert_eq!(data_ids(&got), sorted_ids(&written));
    assert_eq!(scanner.stats().source.switches_to_tail, 0);
    assert_eq!(scanner.stats().mode, ScannerMode::CatchUp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_buffer_ends_a_tailing_scanner_with_one_shutdown_error() {
    let w = TestWriter::open("close", WabConfig::default()).await;
    let mut scanner = start_scanner(
        w.log.clone(),
        Some(w.wab.clone()),
        ScannerOptions::default(),
        Some(w.hook()),
    )
    .unwrap();
    let tt = w.flush().await;
    let mut got = Vec::new();
    read_until(&mut scanner, &mut got, tick_at_or_after(tt)).await;
    wait_for(&scanner, "tailing", |s| s.mode == ScannerMode::Tailing).await;
    w.wab.close();
    let end = tokio::time::timeout(PATIENCE, async {
        let mut items = Vec::new();
        while let Some(item) = scanner.next().await {
            items.push(item);
        }
        items
    })
    .await
    .unwrap();
    assert!(
        matches!(end.last(), Some(Err(WalError::Shutdown))),
        "{end:?}"
    );
    assert_eq!(end.iter().filter(|i| i.is_err()).count(), 1);
}

#[tokio::test]
async fn a_malformed_message_in_the_log_ends_the_stream_with_one_error() {
    let w = TestWriter::open("malformed", WabConfig::default()).await;
    // No timestamp: it cannot be ordered.
    w.log.append(insert(&w.vchannel(1))).await.unwrap();
    let mut scanner = start_scanner(w.log.clone(), None, ScannerOptions::default(), None).unwrap();
    let mut items = Vec::new();
    while let Some(item) = scanner.next().await {
        items.push(item);
    }
    // The first timetick, then the error.
    assert_eq!(items.len(), 2, "{items:?}");
    assert!(
        matches!(items[1], Err(WalError::Unrecoverable(_))),
        "{items:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Log reader failures.

/// Wraps a log handle: the first `fail_reads` reads fail with `error`; the read numbered
/// `break_stream` (counting from 0 among successful ones) ends with a retryable error after
/// `break_after` records.
struct FlakyLog {
    inner: Arc<dyn LogHandle>,
    error: LogError,
    fail_reads: AtomicUsize,
    reads: AtomicUsize,
    break_stream: Option<(usize, usize)>,
    tasks: tokio_util::task::TaskTracker,
}

#[async_trait]
impl LogHandle for FlakyLog {
    fn pchannel(&self) -> &PChannel {
        self.inner.pchannel()
    }

    fn term(&self) -> Term {
        self.inner.term()
    }

    fn mode(&self) -> AccessMode {
        self.inner.mode()
    }

    async fn enqueue(&self, message: MutableMessage) -> Result<AppendFuture, LogError> {
        self.inner.enqueue(message).await
    }

    async fn read(&self, options: ReadOptions) -> Result<LogStream, LogError> {
        if self
            .fail_reads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(self.error.clone());
        }
        let n = self.reads.fetch_add(1, Ordering::SeqCst);
        let mut inner = self.inner.read(options).await?;
        let Some((_, after)) = self.break_stream.filter(|(which, _)| *which == n) else {
            return Ok(inner);
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        self.tasks.spawn(async move {
            for _ in 0..after {
                let Some(item) = inner.next().await else {
                    return;
                };
                if tx.send(item).await.is_err() {
                    return;
                }
            }
            let _ = tx
                .send(Err(LogError::Unavailable("injected read fault".into())))
                .await;
        });
        Ok(LogStream::new(rx, None))
    }

    async fn truncate(&self, up_to: MessageId) -> Result<(), LogError> {
        self.inner.truncate(up_to).await
    }

    async fn close(&self) {
        self.inner.close().await;
    }
}

fn flaky(
    w: &TestWriter,
    error: LogError,
    fail_reads: usize,
    break_stream: Option<(usize, usize)>,
) -> Arc<dyn LogHandle> {
    Arc::new(FlakyLog {
        inner: w.log.clone(),
        error,
        fail_reads: AtomicUsize::new(fail_reads),
        reads: AtomicUsize::new(0),
        break_stream,
        tasks: tokio_util::task::TaskTracker::new(),
    })
}

#[tokio::test(start_paused = true)]
async fn retryable_read_errors_reopen_the_reader_with_backoff() {
    let w = TestWriter::open("retry", WabConfig::default()).await;
    let a = w.vchannel(1);
    let written = w
        .write_concurrently((0..20).map(|_| insert(&a)).collect())
        .await;
    let last = w.flush().await;
    let log = flaky(&w, LogError::Unavailable("down".into()), 3, None);
    let started = tokio::time::Instant::now();
    let mut scanner = start_scanner(log, None, ScannerOptions::default(), None).unwrap();
    let mut got = Vec::new();
    read_until(&mut scanner, &mut got, tick_at_or_after(last)).await;
    // 100 + 200 + 400 ms of backoff on the paused clock.
    assert!(started.elapsed() >= Duration::from_millis(700));
    assert_eq!(scanner.stats().source.reader_retries, 3);
    assert_eq!(data_ids(&got), sorted_ids(&written));
}

#[tokio::test(start_paused = true)]
async fn a_failed_log_stream_is_reopened_right_after_its_last_message() {
    let w = TestWriter::open("reopen", WabConfig::default()).await;
    let a = w.vchannel(1);
    let mut written = Vec::new();
    for _ in 0..4 {
        written.extend(
            w.write_concurrently((0..10).map(|_| insert(&a)).collect())
                .await,
        );
        w.tick().await;
    }
    let last = w.flush().await;
    // The first reader fails after 17 records, in the middle of a timetick window.
    let log = flaky(&w, LogError::Unavailable("down".into()), 0, Some((0, 17)));
    let mut scanner = start_scanner(log, None, ScannerOptions::default(), None).unwrap();
    let mut got = Vec::new();
    read_until(&mut scanner, &mut got, tick_at_or_after(last)).await;
    assert_strictly_increasing(&got);
    assert_eq!(data_ids(&got), sorted_ids(&written));
    let stats = scanner.stats();
    assert_eq!(stats.source.reader_retries, 1);
    assert_eq!(
        stats.pipeline.duplicates + stats.pipeline.late,
        0,
        "{stats:?}"
    );
}

#[tokio::test]
async fn a_terminal_log_error_ends_the_stream_with_one_error() {
    let w = TestWriter::open("terminal", WabConfig::default()).await;
    let log = flaky(
        &w,
        LogError::Corrupted {
            location: "block 7".into(),
            reason: "bad crc".into(),
        },
        1,
        None,
    );
    let mut scanner = start_scanner(log, None, ScannerOptions::default(), None).unwrap();
    let first = scanner.next().await;
    assert!(
        matches!(first, Some(Err(WalError::Log(LogError::Corrupted { .. })))),
        "{first:?}"
    );
    assert!(scanner.next().await.is_none());
}
