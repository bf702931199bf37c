//! Fencing and robustness of the `object` backend, on a local directory and (when
//! `SLUICE_TEST_S3` is set) on an S3-compatible server: a writer in another process fenced by a
//! higher-term open; in-process writers racing a higher-term open; two opens racing each other; a
//! stale open changes nothing; a create whose response was lost is not mistaken for a fence;
//! damaged or foreign objects are errors, not panics.
//!
//! `child_fenced_appender` does nothing unless `SLUICE_OBJECT_CHILD` is set; the parent test runs
//! this binary again as a child that writes at term 1 while the parent opens at term 2.

mod common;
mod fencing_support;
mod object_support;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use futures::TryStreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use sluice_log::object::{ObjectConfig, ObjectProvider, ObjectStoreConfig};
use sluice_log::{DeliverPolicy, LogError, LogProvider, OpenOptions, ReadOptions};
use sluice_types::Term;

use fencing_support::{message, next, pchannel, print_line, read_through, runtime, text};
use object_support::{s3_endpoint, s3_store, test_config};

const CHILD_ENV: &str = "SLUICE_OBJECT_CHILD";

/// Where a test's objects live.
#[derive(Clone, Debug)]
enum Medium {
    Dir(PathBuf),
    S3 { endpoint: String, prefix: String },
}

impl Medium {
    /// `dir:PATH` or `s3:PREFIX:ENDPOINT`, to hand to a child process.
    fn encode(&self) -> String {
        match self {
            Medium::Dir(p) => format!("dir:{}", p.display()),
            Medium::S3 { endpoint, prefix } => format!("s3:{prefix}:{endpoint}"),
        }
    }

    fn decode(s: &str) -> Medium {
        if let Some(p) = s.strip_prefix("dir:") {
            return Medium::Dir(p.into());
        }
        let rest = s.strip_prefix("s3:").expect("medium");
        let (prefix, endpoint) = rest.split_once(':').expect("s3 medium");
        Medium::S3 {
            endpoint: endpoint.into(),
            prefix: prefix.into(),
        }
    }

    fn config(&self) -> ObjectConfig {
        match self {
            Medium::Dir(p) => test_config(ObjectStoreConfig::LocalDir(p.clone())),
            Medium::S3 { endpoint, prefix } => ObjectConfig {
                prefix: prefix.clone(),
                ..test_config(s3_store(endpoint))
            },
        }
    }

    fn provider(&self) -> ObjectProvider {
        ObjectProvider::new(self.config()).expect("object provider")
    }
}

/// Runs `test` on a local directory, then on S3 when a server is configured.
fn on_each_medium<F, Fut>(test: F)
where
    F: Fn(Medium) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = runtime();
    rt.block_on(test(Medium::Dir(dir.path().to_path_buf())));
    if let Some(endpoint) = s3_endpoint() {
        let prefix = format!("fence-{:016x}", rand::random::<u64>());
        rt.block_on(test(Medium::S3 { endpoint, prefix }));
    }
}

#[test]
fn child_fenced_appender() {
    let Ok(medium) = std::env::var(CHILD_ENV) else {
        return;
    };
    let medium = Medium::decode(&medium);
    let outcome = runtime().block_on(fencing_support::child_fenced_appender(
        Arc::new(medium.provider()),
        pchannel(),
    ));
    print_line(&outcome);
    assert_eq!(outcome, "FENCED");
}

#[test]
fn higher_term_in_another_process_fences_the_writer() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    on_each_medium(|medium| async move {
        fencing_support::higher_term_in_another_process_fences_the_writer(
            Arc::new(medium.provider()),
            pchannel(),
            "child_fenced_appender",
            &[(CHILD_ENV, medium.encode())],
        )
        .await;
    });
}

#[test]
fn writers_racing_a_higher_term_open_lose_nothing_and_stay_fenced() {
    on_each_medium(|medium| async move {
        fencing_support::writers_racing_a_higher_term_open_lose_nothing_and_stay_fenced(
            Arc::new(medium.provider()),
            pchannel(),
            4,
        )
        .await;
    });
}

#[test]
fn racing_opens_leave_only_the_higher_term_writable() {
    on_each_medium(|medium| async move {
        // Two providers, as two nodes would have.
        fencing_support::racing_opens_leave_only_the_higher_term_writable(
            Arc::new(medium.provider()),
            Arc::new(medium.provider()),
            pchannel(),
            6,
        )
        .await;
    });
}

async fn all_objects(store: &Arc<dyn ObjectStore>, medium: &Medium) -> Vec<(String, u64)> {
    let prefix = match medium {
        Medium::Dir(_) => None,
        Medium::S3 { prefix, .. } => Some(Path::from(prefix.as_str())),
    };
    let mut v: Vec<(String, u64)> = store
        .list(prefix.as_ref())
        .map_ok(|m| (m.location.to_string(), m.size))
        .try_collect()
        .await
        .unwrap();
    v.sort();
    v
}

#[test]
fn stale_open_changes_nothing() {
    on_each_medium(|medium| async move {
        let provider = medium.provider();
        let h = provider
            .open(OpenOptions::read_write(pchannel(), Term(5)))
            .await
            .unwrap();
        h.append(message("x")).await.unwrap();
        let before = all_objects(provider.store(), &medium).await;
        let err = provider
            .open(OpenOptions::read_write(pchannel(), Term(4)))
            .await
            .err()
            .expect("stale open succeeded");
        assert!(err.is_fenced(), "{err}");
        let after = all_objects(provider.store(), &medium).await;
        assert!(!before.is_empty());
        assert_eq!(before, after);
        // The writer was not disturbed.
        h.append(message("y")).await.unwrap();
        h.close().await;
    });
}

#[test]
fn damaged_and_foreign_objects_are_errors_not_panics() {
    on_each_medium(|medium| async move {
        let provider = medium.provider();
        let h = provider
            .open(OpenOptions::read_write(pchannel(), Term(1)))
            .await
            .unwrap();
        let id = h.append(message("good")).await.unwrap();
        let store = provider.store().clone();
        // The good block is the only one; a damaged block after it (a torn upload, say).
        let objects = all_objects(&store, &medium).await;
        let good = &objects
            .iter()
            .find(|(p, _)| p.contains("/b/"))
            .expect("a block")
            .0;
        let damaged = good.replace("/b/0000000000000", "/b/0000000000001");
        assert_ne!(&damaged, good);
        store
            .put(
                &Path::from(damaged.as_str()),
                PutPayload::from_static(b"SLOB\x01 torn"),
            )
            .await
            .unwrap();
        let mut s = h.read(ReadOptions::new(DeliverPolicy::All)).await.unwrap();
        assert_eq!(next(&mut s).await.unwrap().id(), id);
        let err = next(&mut s)
            .await
            .expect_err("damaged block read as records");
        assert!(matches!(err, LogError::Corrupted { .. }), "{err:?}");
        // Appends meet the damaged object at their index: an error, not a success.
        let err = h.append(message("after")).await.unwrap_err();
        assert!(!err.is_fenced(), "{err:?}");
        h.close().await;

        // A foreign object in the pchannel's directory.
        let channel_dir = good
            .split("/b/")
            .next()
            .unwrap()
            .rsplit_once('/')
            .unwrap()
            .0;
        store
            .put(
                &Path::from(format!("{channel_dir}/README")),
                PutPayload::from_static(b"hi"),
            )
            .await
            .unwrap();
        let ro = provider
            .open(OpenOptions::read_only(pchannel(), Term(1)))
            .await
            .unwrap();
        let mut s = ro.read(ReadOptions::new(DeliverPolicy::All)).await.unwrap();
        let err = next(&mut s).await.expect_err("foreign object ignored");
        assert!(matches!(err, LogError::Corrupted { .. }), "{err:?}");
        ro.close().await;
    });
}

/// A store that performs the first `n` conditional creates of blocks but reports them as failed,
/// as when a response is lost on the way back.
#[derive(Debug)]
struct LosesCreateResponses {
    inner: Arc<dyn ObjectStore>,
    left: AtomicUsize,
}

impl fmt::Display for LosesCreateResponses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LosesCreateResponses({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for LosesCreateResponses {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let lose = opts.mode == PutMode::Create
            && location.as_ref().contains("/b/")
            && self
                .left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        let r = self.inner.put_opts(location, payload, opts).await;
        if lose && r.is_ok() {
            return Err(object_store::Error::Generic {
                store: "test",
                source: "connection reset after the request was sent".into(),
            });
        }
        r
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[test]
fn a_lost_create_response_is_retried_not_taken_for_a_fence() {
    on_each_medium(|medium| async move {
        let config = medium.config();
        let inner = ObjectProvider::new(config.clone()).unwrap().store().clone();
        let store = Arc::new(LosesCreateResponses {
            inner,
            left: AtomicUsize::new(3),
        });
        let provider = ObjectProvider::with_store(store.clone(), config).unwrap();
        let h = provider
            .open(OpenOptions::read_write(pchannel(), Term(1)))
            .await
            .unwrap();
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(h.append(message(&format!("r{i}"))).await.expect("append"));
        }
        assert_eq!(store.left.load(Ordering::SeqCst), 0, "no response was lost");
        let records = read_through(&h, ids[4]).await;
        assert_eq!(
            records.iter().map(text).collect::<Vec<_>>(),
            ["r0", "r1", "r2", "r3", "r4"]
        );
        assert_eq!(records.iter().map(|m| m.id()).collect::<Vec<_>>(), ids);
        h.close().await;
    });
}

#[test]
fn truncated_blocks_are_gone_and_readers_skip_them() {
    on_each_medium(|medium| async move {
        let provider = medium.provider();
        let h = provider
            .open(OpenOptions::read_write(pchannel(), Term(1)))
            .await
            .unwrap();
        let mut ids = Vec::new();
        for i in 0..10 {
            ids.push(h.append(message(&format!("a{i}"))).await.unwrap());
        }
        let blocks = |v: &[(String, u64)]| v.iter().filter(|(p, _)| p.contains("/b/")).count();
        let before = blocks(&all_objects(provider.store(), &medium).await);
        h.truncate(ids[5]).await.unwrap();
        let after = blocks(&all_objects(provider.store(), &medium).await);
        assert!(
            after < before,
            "truncate deleted no block ({before} -> {after})"
        );
        // Sequential appends each get a block of their own (nothing to batch with), so exactly
        // the blocks below ids[5]'s are gone.
        let mut s = h
            .read(ReadOptions::new(DeliverPolicy::StartFrom(ids[0])))
            .await
            .unwrap();
        let mut got = Vec::new();
        while got.last() != Some(&ids[9]) {
            got.push(next(&mut s).await.unwrap().id());
        }
        assert_eq!(got, ids[5..]);
        h.close().await;
        // A new term still sees the truncated log, and truncating it further works.
        let h = provider
            .open(OpenOptions::read_write(pchannel(), Term(2)))
            .await
            .unwrap();
        let last = h.append(message("b0")).await.unwrap();
        let records = read_through(&h, last).await;
        assert_eq!(records.first().map(|m| m.id()), Some(ids[5]));
        h.truncate(last).await.unwrap();
        let records = read_through(&h, last).await;
        assert_eq!(records.len(), 1, "older segment not truncated");
        h.close().await;
    });
}
