//! The log backend conformance suite.
//!
//! Every backend runs the whole suite with one line in a test file:
//!
//! ```ignore
//! sluice_log::conformance_tests!(|| async { TestBackend::new(my_provider()) });
//! ```
//!
//! The closure is called once per test and must give a fresh, empty backend (a new temp
//! directory, a new bucket prefix, ...); anything that must live as long as the test goes in
//! [`TestBackend::keep`]. Each test runs on its own multi-threaded runtime under a time limit, so
//! a hang fails the test instead of stalling the run.
//!
//! What is checked: everything Milvus checks for its own backends — three pchannels at once;
//! terms 1..3 on one pchannel with five concurrent writers and two concurrent readers; ten readers
//! opened and dropped at once; strict id order; completeness and durability across close and
//! reopen; `StartFrom`/`StartAfter` exactness; `Latest` yields nothing when nothing new is
//! written; read-only handles reject appends; truncate then reopen — and what Milvus lacks:
//! fencing, including a lower-term writer racing a higher-term open.

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use sluice_types::message::{InsertHeader, TimeTickHeader};
use sluice_types::{ImmutableMessage, MessageId, MessageType, MutableMessage, PChannel, Term};
use tokio::task::JoinSet;

use crate::{
    AccessMode, DeliverPolicy, LogError, LogHandle, LogProvider, LogStream, OpenOptions,
    ReadOptions,
};

/// Records written per term in the term loop (as Milvus's framework, 100).
pub const MESSAGES_PER_TERM: usize = 100;
/// The longest one conformance test may take.
pub const TEST_TIME_LIMIT: Duration = Duration::from_secs(120);

/// A backend under test.
pub struct TestBackend {
    /// The provider under test.
    pub provider: Arc<dyn LogProvider>,
    /// Whatever must outlive the test (a temp directory, a server guard).
    pub keep: Box<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for TestBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestBackend").finish_non_exhaustive()
    }
}

impl TestBackend {
    /// A backend with nothing to keep alive.
    pub fn new(provider: Arc<dyn LogProvider>) -> TestBackend {
        TestBackend {
            provider,
            keep: Box::new(()),
        }
    }

    /// A backend that keeps `keep` alive for the test.
    pub fn with_keep(provider: Arc<dyn LogProvider>, keep: impl Any + Send + Sync) -> TestBackend {
        TestBackend {
            provider,
            keep: Box::new(keep),
        }
    }
}

/// Runs one conformance test on a fresh runtime with a time limit. Used by
/// [`conformance_tests!`](crate::conformance_tests).
pub fn run<M, MF, T, TF>(make: M, test: T)
where
    M: FnOnce() -> MF,
    MF: Future<Output = TestBackend>,
    T: FnOnce(TestBackend) -> TF,
    TF: Future<Output = ()>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("test runtime");
    rt.block_on(async move {
        let backend = make().await;
        tokio::time::timeout(TEST_TIME_LIMIT, test(backend))
            .await
            .expect("conformance test exceeded its time limit (a hang?)");
    });
}

/// Expands to one `#[test]` per conformance behaviour, each calling `$make` for a fresh backend.
///
/// `conformance_tests!(when SERVICE => MAKE)` is the form for a backend that needs an external
/// service: `SERVICE` is an `Option<S>` evaluated in every test (`None` = the test returns at
/// once; the expression itself decides whether that is allowed, e.g. fails in CI), and `MAKE`
/// turns the `S` into the backend's future. Either way every test of the suite is generated from
/// this one list, so a backend cannot miss one.
#[macro_export]
macro_rules! conformance_tests {
    (when $service:expr => $make:expr) => {
        $crate::conformance_tests!(@tests [$service] [$make];
            multi_pchannel_isolation,
            term_loop_on_one_pchannel,
            fast_close_of_many_readers,
            latest_yields_only_new_records,
            read_only_rejects_writes,
            truncate_then_reopen,
            enqueued_records_keep_their_order,
            append_after_fence_is_rejected,
            lower_term_writer_racing_higher_term_open_loses_nothing,
            closed_handle_rejects_and_ends_readers,
        );
    };
    ($make:expr) => {
        $crate::conformance_tests!(when Some(()) => |()| ($make)());
    };
    (@tests [$service:expr] [$make:expr]; $($name:ident,)*) => {
        $(
            #[test]
            fn $name() {
                let Some(service) = $service else {
                    return;
                };
                let make = $make;
                $crate::testkit::run(move || make(service), $crate::testkit::$name);
            }
        )*
    };
}

/// A record as the suite wrote it: id plus the properties it checks.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Written {
    id: MessageId,
    props: BTreeMap<String, String>,
}

fn user_props(m: &ImmutableMessage) -> BTreeMap<String, String> {
    m.user_properties()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn pchannel(name: &str) -> PChannel {
    PChannel::new(name).expect("valid test pchannel")
}

fn insert(id: usize, term: Term) -> MutableMessage {
    MutableMessage::builder(InsertHeader::default())
        .property("id", id.to_string())
        .property("const", term.0.to_string())
        .payload(vec![(id % 251) as u8; id % 64])
        .build()
        .expect("valid test message")
}

fn term_marker(p: &PChannel, term: Term) -> MutableMessage {
    let vc = p
        .vchannel(sluice_types::CollectionId(1), 0)
        .expect("valid test vchannel");
    MutableMessage::builder(TimeTickHeader::default())
        .vchannel(&vc)
        .property("term", term.0.to_string())
        .build()
        .expect("valid test message")
}

async fn open_rw(b: &TestBackend, p: &PChannel, term: Term) -> Arc<dyn LogHandle> {
    b.provider
        .open(OpenOptions::read_write(p.clone(), term))
        .await
        .expect("open read-write")
}

async fn open_ro(b: &TestBackend, p: &PChannel, term: Term) -> Arc<dyn LogHandle> {
    b.provider
        .open(OpenOptions::read_only(p.clone(), term))
        .await
        .expect("open read-only")
}

async fn read(h: &dyn LogHandle, policy: DeliverPolicy) -> LogStream {
    h.read(ReadOptions {
        policy,
        read_ahead: 128,
    })
    .await
    .expect("start read")
}

/// Reads until `stop` says so; fails on errors and on a stream that ends first.
async fn read_until(
    mut s: LogStream,
    mut stop: impl FnMut(&ImmutableMessage) -> bool,
) -> Vec<ImmutableMessage> {
    let mut out = Vec::new();
    loop {
        let m = s
            .next()
            .await
            .expect("stream ended early")
            .expect("read error");
        let done = stop(&m);
        out.push(m);
        if done {
            return out;
        }
    }
}

/// Reads exactly `n` records.
async fn read_n(s: LogStream, n: usize) -> Vec<ImmutableMessage> {
    if n == 0 {
        return Vec::new();
    }
    let mut left = n;
    read_until(s, |_| {
        left -= 1;
        left == 0
    })
    .await
}

fn assert_strictly_increasing(list: &[ImmutableMessage], what: &str) {
    for w in list.windows(2) {
        assert!(
            w[0].id() < w[1].id(),
            "{what}: ids out of order: {} then {}",
            w[0].id(),
            w[1].id()
        );
    }
}

fn assert_same(read: &[ImmutableMessage], written: &[Written], what: &str) {
    assert_eq!(read.len(), written.len(), "{what}: record count");
    for (r, w) in read.iter().zip(written) {
        assert_eq!(r.id(), w.id, "{what}: id");
        assert_eq!(user_props(r), w.props, "{what}: properties of {}", w.id);
    }
}

/// Writes one term's records: `MESSAGES_PER_TERM - 1` inserts from five tasks, then a TimeTick
/// marker carrying the term. Returns what was written, sorted by id.
async fn write_term(h: Arc<dyn LogHandle>, p: &PChannel, term: Term) -> Vec<Written> {
    let mut tasks = JoinSet::new();
    let n = MESSAGES_PER_TERM - 1;
    for w in 0..5 {
        let h = h.clone();
        tasks.spawn(async move {
            let mut out = Vec::new();
            for i in (w..n).step_by(5) {
                let m = insert(i, term);
                let props = user_props(&m.clone().into_immutable(MessageId::MIN));
                let id = h.append(m).await.expect("append");
                out.push(Written { id, props });
            }
            out
        });
    }
    let mut written: Vec<Written> = tasks.join_all().await.into_iter().flatten().collect();
    let marker = term_marker(p, term);
    let props = user_props(&marker.clone().into_immutable(MessageId::MIN));
    let id = h.append(marker).await.expect("append marker");
    written.sort_by_key(|w| w.id);
    assert!(
        written.last().is_none_or(|l| l.id < id),
        "a record appended after every other was acknowledged got a smaller id"
    );
    written.push(Written { id, props });
    written
}

fn is_marker(m: &ImmutableMessage, term: Term) -> bool {
    m.message_type().ok() == Some(MessageType::TimeTick)
        && m.property("term") == Some(term.0.to_string().as_str())
}

/// One pchannel through terms 1..=3: concurrent writers and readers, order, completeness across
/// reopen, StartFrom/StartAfter, Latest, read-only.
async fn term_scenario(b: &TestBackend, p: &PChannel) {
    let mut all: Vec<Written> = Vec::new();
    for t in 1..=3u64 {
        let term = Term(t);
        let h = open_rw(b, p, term).await;
        assert_eq!(h.pchannel(), p);
        assert_eq!(h.term(), term);
        assert_eq!(h.mode(), AccessMode::ReadWrite);

        // Two readers race the writers.
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let h = h.clone();
                tokio::spawn(async move {
                    let s = read(&*h, DeliverPolicy::All).await;
                    read_until(s, |m| is_marker(m, term)).await
                })
            })
            .collect();
        let written = write_term(h.clone(), p, term).await;
        all.extend(written);
        all.sort_by_key(|w| w.id);
        for r in join_all(readers).await {
            let list = r.expect("reader task");
            assert_strictly_increasing(&list, "concurrent reader");
            assert_same(
                &list,
                &all,
                "concurrent reader vs everything written so far",
            );
        }

        fast_close(&*h).await;

        // StartFrom / StartAfter exactness.
        let mid = all.len() / 2;
        let from = read_n(
            read(&*h, DeliverPolicy::StartFrom(all[mid].id)).await,
            all.len() - mid,
        )
        .await;
        assert_same(&from, &all[mid..], "StartFrom(mid)");
        let after = read_n(
            read(&*h, DeliverPolicy::StartAfter(all[mid].id)).await,
            all.len() - mid - 1,
        )
        .await;
        assert_same(&after, &all[mid + 1..], "StartAfter(mid)");

        assert_latest_is_quiet(&*h).await;
        h.close().await;

        // The same term read-only: everything is there, writes are refused.
        let ro = open_ro(b, p, term).await;
        assert_eq!(ro.mode(), AccessMode::ReadOnly);
        let list = read_n(read(&*ro, DeliverPolicy::All).await, all.len()).await;
        assert_same(&list, &all, "read-only reopen");
        assert!(matches!(
            ro.append(insert(0, term)).await,
            Err(LogError::ReadOnly(_))
        ));
        assert!(matches!(
            ro.truncate(all[0].id).await,
            Err(LogError::ReadOnly(_))
        ));
        ro.close().await;
    }
}

async fn fast_close(h: &dyn LogHandle) {
    let streams = join_all((0..10).map(|_| read(h, DeliverPolicy::All))).await;
    drop(streams);
}

async fn assert_latest_is_quiet(h: &dyn LogHandle) {
    let mut s = read(h, DeliverPolicy::Latest).await;
    let got = tokio::time::timeout(Duration::from_millis(500), s.next()).await;
    assert!(
        got.is_err(),
        "Latest delivered {got:?} with nothing new written"
    );
}

/// Three pchannels run the whole term scenario at once on one provider.
pub async fn multi_pchannel_isolation(b: TestBackend) {
    let suffix = rand::random::<u32>();
    let names: Vec<PChannel> = (0..3)
        .map(|i| pchannel(&format!("conf-iso-{suffix}-{i}")))
        .collect();
    join_all(names.iter().map(|p| term_scenario(&b, p))).await;
}

/// Terms 1..3 on one pchannel.
pub async fn term_loop_on_one_pchannel(b: TestBackend) {
    term_scenario(&b, &pchannel("conf-terms")).await;
}

/// Ten readers opened and dropped at once, while tailing, neither hang nor keep the handle busy.
pub async fn fast_close_of_many_readers(b: TestBackend) {
    let p = pchannel("conf-fast-close");
    let h = open_rw(&b, &p, Term(1)).await;
    h.append(insert(1, Term(1))).await.expect("append");
    for _ in 0..5 {
        fast_close(&*h).await;
    }
    // Readers that are tailing (caught up, waiting for data) are dropped too.
    let mut tailing = Vec::new();
    for _ in 0..10 {
        let mut s = read(&*h, DeliverPolicy::All).await;
        s.next().await.expect("one record").expect("read");
        tailing.push(s);
    }
    drop(tailing);
    // Everything the readers held is released: close returns promptly.
    tokio::time::timeout(Duration::from_secs(10), h.close())
        .await
        .expect("close hung after readers were dropped");
}

/// `Latest` yields nothing while nothing is written, then exactly what is written after it.
pub async fn latest_yields_only_new_records(b: TestBackend) {
    let p = pchannel("conf-latest");
    let h = open_rw(&b, &p, Term(1)).await;
    for i in 0..3 {
        h.append(insert(i, Term(1))).await.expect("append");
    }
    let mut s = read(&*h, DeliverPolicy::Latest).await;
    let quiet = tokio::time::timeout(Duration::from_millis(500), s.next()).await;
    assert!(quiet.is_err(), "Latest delivered an old record: {quiet:?}");
    let id = h.append(insert(42, Term(1))).await.expect("append");
    let m = s.next().await.expect("stream open").expect("read");
    assert_eq!(m.id(), id);
    assert_eq!(m.property("id"), Some("42"));
    h.close().await;
}

/// Appends and truncates on a read-only handle are errors, not panics.
pub async fn read_only_rejects_writes(b: TestBackend) {
    let p = pchannel("conf-ro");
    let rw = open_rw(&b, &p, Term(1)).await;
    let id = rw.append(insert(1, Term(1))).await.expect("append");
    let ro = open_ro(&b, &p, Term(1)).await;
    assert!(matches!(
        ro.append(insert(2, Term(1))).await,
        Err(LogError::ReadOnly(_))
    ));
    assert!(matches!(ro.truncate(id).await, Err(LogError::ReadOnly(_))));
    // A read-only open does not fence the writer.
    rw.append(insert(3, Term(1)))
        .await
        .expect("append after a read-only open");
    ro.close().await;
    rw.close().await;
}

/// Truncate keeps everything after the id, survives reopen, and appends continue above it.
pub async fn truncate_then_reopen(b: TestBackend) {
    let p = pchannel("conf-truncate");
    let h = open_rw(&b, &p, Term(4)).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(h.append(insert(i, Term(4))).await.expect("append"));
    }
    h.truncate(ids[9]).await.expect("truncate");
    let check = |list: &[ImmutableMessage]| {
        assert_strictly_increasing(list, "after truncate");
        let kept: Vec<MessageId> = list
            .iter()
            .map(|m| m.id())
            .filter(|id| *id > ids[9])
            .collect();
        assert_eq!(kept, ids[10..], "records after the truncation point");
        assert!(list.iter().all(|m| ids.contains(&m.id())));
    };
    // A StartFrom before the retained range starts at the oldest retained record.
    let s = read(&*h, DeliverPolicy::StartFrom(ids[0])).await;
    let list = read_until(s, |m| m.id() == ids[19]).await;
    check(&list);
    h.close().await;

    let h = open_rw(&b, &p, Term(5)).await;
    let s = read(&*h, DeliverPolicy::All).await;
    let list = read_until(s, |m| m.id() == ids[19]).await;
    check(&list);
    let next = h
        .append(insert(99, Term(5)))
        .await
        .expect("append after reopen");
    assert!(next > ids[19], "id after truncate+reopen went backwards");
    h.close().await;
}

/// Records enqueued one after another by one task get increasing ids, and a pipeline of
/// enqueued records is acknowledged in full.
pub async fn enqueued_records_keep_their_order(b: TestBackend) {
    let p = pchannel("conf-pipeline");
    let h = open_rw(&b, &p, Term(1)).await;
    let mut pending = Vec::new();
    for i in 0..200 {
        pending.push(h.enqueue(insert(i, Term(1))).await.expect("enqueue"));
    }
    let ids: Vec<MessageId> = join_all(pending)
        .await
        .into_iter()
        .map(|r| r.expect("durable"))
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "pipelined ids out of enqueue order"
    );
    let list = read_n(read(&*h, DeliverPolicy::All).await, ids.len()).await;
    for (i, m) in list.iter().enumerate() {
        assert_eq!(m.id(), ids[i]);
        assert_eq!(m.property("id"), Some(i.to_string().as_str()));
    }
    h.close().await;
}

/// Once a higher term opened read-write, the lower-term handle can never append again, and a
/// read-write open at a lower term is refused. Read-only opens at any term still work.
pub async fn append_after_fence_is_rejected(b: TestBackend) {
    let p = pchannel("conf-fence");
    let old = open_rw(&b, &p, Term(1)).await;
    let a = old
        .append(insert(1, Term(1)))
        .await
        .expect("append at term 1");
    let new = open_rw(&b, &p, Term(2)).await;
    for _ in 0..3 {
        let err = old
            .append(insert(2, Term(1)))
            .await
            .expect_err("fenced append succeeded");
        assert!(err.is_fenced(), "expected Fenced, got {err:?}");
        assert!(!err.retryable());
    }
    let err = old
        .truncate(a)
        .await
        .expect_err("fenced truncate succeeded");
    assert!(err.is_fenced(), "expected Fenced for truncate, got {err:?}");
    match b
        .provider
        .open(OpenOptions::read_write(p.clone(), Term(1)))
        .await
    {
        Err(e) => assert!(
            e.is_fenced(),
            "expected Fenced on a lower-term open, got {e:?}"
        ),
        Ok(_) => panic!("read-write open at a lower term succeeded"),
    }
    let c = new
        .append(insert(3, Term(2)))
        .await
        .expect("append at term 2");
    assert!(c > a);
    let ro = open_ro(&b, &p, Term(1)).await;
    let list = read_n(read(&*ro, DeliverPolicy::All).await, 2).await;
    assert_eq!(list.iter().map(|m| m.id()).collect::<Vec<_>>(), [a, c]);
    ro.close().await;
    old.close().await;
    new.close().await;
}

/// Writers at term 1 append as fast as they can while term 2 opens. Every acknowledged term-1
/// record is readable afterwards and precedes every term-2 record; after the open returned, no
/// term-1 append is acknowledged.
pub async fn lower_term_writer_racing_higher_term_open_loses_nothing(b: TestBackend) {
    let p = pchannel("conf-fence-race");
    for round in 0..3u64 {
        let (t_old, t_new) = (Term(1 + 2 * round), Term(2 + 2 * round));
        let old = open_rw(&b, &p, t_old).await;
        let opened_flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writers = JoinSet::new();
        for w in 0..4usize {
            let old = old.clone();
            let flag = opened_flag.clone();
            writers.spawn(async move {
                let mut acked = Vec::new();
                for i in 0.. {
                    let was_open_before = flag.load(std::sync::atomic::Ordering::SeqCst);
                    match old.append(insert(w * 1_000_000 + i, t_old)).await {
                        Ok(id) => {
                            assert!(
                                !was_open_before,
                                "term {t_old} append started after term {t_new} opened was acknowledged"
                            );
                            acked.push(id);
                        }
                        Err(e) if e.is_fenced() => return acked,
                        Err(e) if e.retryable() => continue,
                        Err(e) => panic!("unexpected append error: {e:?}"),
                    }
                }
                acked
            });
        }
        tokio::time::sleep(Duration::from_millis(20 + 10 * round)).await;
        let new = open_rw(&b, &p, t_new).await;
        opened_flag.store(true, std::sync::atomic::Ordering::SeqCst);
        let acked: Vec<MessageId> =
            tokio::time::timeout(Duration::from_secs(30), writers.join_all())
                .await
                .expect("old writers never saw the fence")
                .into_iter()
                .flatten()
                .collect();
        assert!(
            !acked.is_empty(),
            "old writers acknowledged nothing before the fence"
        );
        let first_new = new
            .append(insert(7, t_new))
            .await
            .expect("append at new term");
        let s = read(&*new, DeliverPolicy::All).await;
        let list = read_until(s, |m| m.id() == first_new).await;
        assert_strictly_increasing(&list, "after fence race");
        let present: std::collections::HashSet<MessageId> = list.iter().map(|m| m.id()).collect();
        for id in &acked {
            assert!(
                present.contains(id),
                "acknowledged term-{t_old} record {id} is missing"
            );
        }
        let max_acked = acked.iter().max().copied().unwrap_or(MessageId::MIN);
        assert!(
            first_new > max_acked,
            "a term-{t_new} record precedes an acknowledged older one"
        );
        old.close().await;
        new.close().await;
    }
}

/// After close: appends fail with `Closed`, readers end, a new read is refused.
pub async fn closed_handle_rejects_and_ends_readers(b: TestBackend) {
    let p = pchannel("conf-closed");
    let h = open_rw(&b, &p, Term(1)).await;
    h.append(insert(1, Term(1))).await.expect("append");
    let mut s = read(&*h, DeliverPolicy::All).await;
    s.next().await.expect("record").expect("read");
    h.close().await;
    let end = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("reader still waiting after close");
    assert!(
        end.is_none() || end.is_some_and(|r| r.is_err()),
        "reader kept delivering after close"
    );
    assert!(matches!(
        h.append(insert(2, Term(1))).await,
        Err(LogError::Closed)
    ));
    assert!(h.read(ReadOptions::new(DeliverPolicy::All)).await.is_err());
    h.close().await;
}

/// Creates `bucket` on the S3-compatible test server at `endpoint` (`http://host:port`) if it
/// is missing (an unsigned `PUT /{bucket}`, which the test servers accept). Panics with the
/// server's answer otherwise: it is for tests only.
pub fn ensure_s3_bucket(endpoint: &str, bucket: &str) {
    use std::io::{Read, Write};
    let host = endpoint
        .strip_prefix("http://")
        .expect("the S3 test endpoint must be an http:// URL")
        .trim_end_matches('/');
    let mut conn = std::net::TcpStream::connect(host).expect("connect to the S3 server");
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("set a read timeout");
    write!(
        conn,
        "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("send create-bucket");
    let mut response = String::new();
    let _ = conn.read_to_string(&mut response);
    let status = response.split_whitespace().nth(1).unwrap_or("");
    assert!(
        status == "200" || response.contains("BucketAlreadyOwnedByYou"),
        "create bucket {bucket}: {response}"
    );
}
