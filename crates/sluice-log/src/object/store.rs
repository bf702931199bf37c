//! Object-store operations on one pchannel: listing segments, claiming and sealing segments,
//! fetching blocks, truncation marks. Every fallible call maps store errors to [`LogError`]s:
//! transient ones to [`LogError::Unavailable`] (retryable), a missing conditional-create
//! capability to [`LogError::InvalidArgument`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions};
use sluice_types::backoff::Backoff;
use sluice_types::{PChannel, Term};
use tokio::time::Instant;

use super::block::{Block, BlockKind, encode_fence};
use super::layout::{Layout, SegmentId, parse_index};
use crate::LogError;

/// Fences a sealer creates at once (see [`Channel::seal`]).
pub(super) const SEAL_WINDOW: u64 = 32;

/// What is at a block index.
#[derive(Debug)]
pub(super) enum Fetched {
    /// A block (data or fence).
    Block(Block),
    /// Nothing (yet).
    Missing,
}

/// Result of a conditional create.
pub(super) enum Created {
    /// The object is ours.
    Created,
    /// Something was there already.
    Exists,
}

/// One pchannel in one object store.
#[derive(Clone)]
pub(super) struct Channel {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// Object names.
    pub layout: Layout,
    /// The pchannel.
    pub pchannel: PChannel,
    /// How long transient store errors are retried before giving up.
    pub retry_timeout: Duration,
}

/// A store error as a log error.
pub(super) fn store_error(what: &str, path: &Path, e: object_store::Error) -> LogError {
    match e {
        object_store::Error::NotImplemented { .. } | object_store::Error::NotSupported { .. } => {
            LogError::InvalidArgument(format!(
                "object store cannot {what} {path} (conditional create needed): {e}"
            ))
        }
        e => LogError::Unavailable(format!("object store: {what} {path}: {e}")),
    }
}

/// Retries `op` on retryable errors with exponential backoff until `timeout` has passed.
pub(super) async fn with_retry<T, F, Fut>(timeout: Duration, mut op: F) -> Result<T, LogError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, LogError>>,
{
    let deadline = Instant::now() + timeout;
    let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_secs(1));
    loop {
        match op().await {
            Err(e) if e.retryable() && Instant::now() + backoff.current() < deadline => {
                tracing::debug!(error = %e, "object store call failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            r => return r,
        }
    }
}

impl Channel {
    fn corrupted(&self, path: &Path, reason: impl Into<String>) -> LogError {
        LogError::Corrupted {
            location: path.to_string(),
            reason: reason.into(),
        }
    }

    /// The pchannel's segments, oldest first. Foreign names under the pchannel are corruption.
    pub(super) async fn segments(&self) -> Result<Vec<SegmentId>, LogError> {
        let dir = self.layout.channel();
        with_retry(self.retry_timeout, || async {
            let listed = match self.store.list_with_delimiter(Some(dir)).await {
                Ok(l) => l,
                Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
                Err(e) => return Err(store_error("list", dir, e)),
            };
            let mut out = Vec::with_capacity(listed.common_prefixes.len());
            for p in &listed.common_prefixes {
                let name = p.filename().unwrap_or_default();
                let s = SegmentId::parse(name)
                    .ok_or_else(|| self.corrupted(p, "not a segment directory"))?;
                out.push(s);
            }
            if let Some(o) = listed.objects.first() {
                return Err(self.corrupted(&o.location, "foreign object in a pchannel directory"));
            }
            out.sort();
            Ok(out)
        })
        .await
    }

    /// Indexes under `dir` (block or truncation-mark names), sorted.
    pub(super) async fn indexes(&self, dir: &Path) -> Result<BTreeSet<u64>, LogError> {
        with_retry(self.retry_timeout, || async {
            let metas: Vec<_> = match self.store.list(Some(dir)).try_collect().await {
                Ok(m) => m,
                Err(object_store::Error::NotFound { .. }) => return Ok(BTreeSet::new()),
                Err(e) => return Err(store_error("list", dir, e)),
            };
            metas
                .iter()
                .map(|m| {
                    m.location
                        .filename()
                        .and_then(parse_index)
                        .filter(|_| m.location.parts_count() == dir.parts_count() + 1)
                        .ok_or_else(|| self.corrupted(&m.location, "foreign object name"))
                })
                .collect()
        })
        .await
    }

    /// The first block index a segment still holds (its newest truncation mark, or 0).
    pub(super) async fn retained_start(&self, s: SegmentId) -> Result<u64, LogError> {
        Ok(self
            .indexes(&self.layout.truncs(s))
            .await?
            .last()
            .copied()
            .unwrap_or(0))
    }

    /// The block indexes present in a segment at or above `from`.
    pub(super) async fn block_indexes(
        &self,
        s: SegmentId,
        from: u64,
    ) -> Result<BTreeSet<u64>, LogError> {
        let mut all = self.indexes(&self.layout.blocks(s)).await?;
        Ok(all.split_off(&from))
    }

    /// Reads an object; `None` when it does not exist.
    pub(super) async fn get(&self, path: &Path) -> Result<Option<Bytes>, LogError> {
        with_retry(self.retry_timeout, || async {
            let r = match self.store.get(path).await {
                Ok(r) => r.bytes().await,
                Err(e) => Err(e),
            };
            match r {
                Ok(b) => Ok(Some(b)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(store_error("get", path, e)),
            }
        })
        .await
    }

    /// Fetches the block at `index` of segment `s` and checks it belongs there.
    pub(super) async fn fetch(&self, s: SegmentId, index: u64) -> Result<Fetched, LogError> {
        let path = self.layout.block(s, index);
        let Some(data) = self.get(&path).await? else {
            return Ok(Fetched::Missing);
        };
        let block = Block::decode(path.as_ref(), data)?;
        if block.index != index {
            return Err(self.corrupted(&path, format!("header says block {}", block.index)));
        }
        if matches!(block.kind, BlockKind::Data { .. }) && block.segment != s {
            return Err(self.corrupted(&path, "data block names another segment"));
        }
        Ok(Fetched::Block(block))
    }

    /// One conditional-create attempt (no retry).
    pub(super) async fn create_once(&self, path: &Path, data: Bytes) -> Result<Created, LogError> {
        match self
            .store
            .put_opts(path, data.into(), PutOptions::from(PutMode::Create))
            .await
        {
            Ok(_) => Ok(Created::Created),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Created::Exists),
            Err(e) => Err(store_error("create", path, e)),
        }
    }

    /// Conditional create with retries. A create whose response was lost and is retried reports
    /// `Exists`; callers that care check the content.
    pub(super) async fn create(&self, path: &Path, data: Bytes) -> Result<Created, LogError> {
        with_retry(self.retry_timeout, || self.create_once(path, data.clone())).await
    }

    /// Writes (or overwrites) an object.
    pub(super) async fn overwrite(&self, path: &Path, data: Bytes) -> Result<(), LogError> {
        with_retry(self.retry_timeout, || async {
            self.store
                .put(path, data.clone().into())
                .await
                .map(|_| ())
                .map_err(|e| store_error("put", path, e))
        })
        .await
    }

    /// Deletes objects; missing ones are fine.
    pub(super) async fn delete_all(&self, paths: Vec<Path>) -> Result<(), LogError> {
        if paths.is_empty() {
            return Ok(());
        }
        with_retry(self.retry_timeout, || async {
            let input = futures::stream::iter(paths.clone().into_iter().map(Ok)).boxed();
            let mut out = self.store.delete_stream(input);
            while let Some(r) = out.next().await {
                match r {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(store_error("delete", self.layout.channel(), e)),
                }
            }
            Ok(())
        })
        .await
    }

    /// The index of the fence of a sealed segment, from its hint.
    pub(super) async fn fence_index(&self, s: SegmentId) -> Result<Option<u64>, LogError> {
        let path = self.layout.sealed(s);
        let Some(data) = self.get(&path).await? else {
            return Ok(None);
        };
        let bytes: [u8; 8] = data
            .as_ref()
            .try_into()
            .map_err(|_| self.corrupted(&path, "sealed hint is not 8 bytes"))?;
        Ok(Some(u64::from_le_bytes(bytes)))
    }

    /// Seals segment `s` on behalf of a writer of segment `by` and returns the fence index.
    /// Idempotent.
    ///
    /// The fence must sit where everything below it is present, so it goes at the first index
    /// holding no block. A live writer may fill that index first (its block is then part of the
    /// log) and keep going, so fences are created for a window of [`SEAL_WINDOW`] indexes at
    /// once: the lowest fence in the window with only blocks below it is the segment's end. Fences
    /// above it are harmless (they only make the writer's later blocks fail sooner).
    pub(super) async fn seal(&self, s: SegmentId, by: SegmentId) -> Result<u64, LogError> {
        if let Some(k) = self.fence_index(s).await? {
            return Ok(k);
        }
        let fence = 'search: loop {
            let start = self.retained_start(s).await?;
            let present = self.block_indexes(s, start).await?;
            let mut k = start;
            while present.contains(&k) {
                k += 1;
            }
            let window = k..k + SEAL_WINDOW;
            let created = futures::future::join_all(window.clone().map(|i| async move {
                self.create(&self.layout.block(s, i), encode_fence(by, i))
                    .await
            }))
            .await;
            for (i, c) in window.zip(created) {
                if let Created::Created = c? {
                    break 'search i;
                }
                match self.fetch(s, i).await? {
                    Fetched::Block(b) if matches!(b.kind, BlockKind::Fence { .. }) => {
                        break 'search i;
                    }
                    // The writer's block landed first: it stays part of the segment.
                    Fetched::Block(_) => {}
                    // Deleted by a truncation in between: look again.
                    Fetched::Missing => continue 'search,
                }
            }
        };
        tracing::debug!(pchannel = %self.pchannel, segment = ?s, fence, "sealed segment");
        self.overwrite(
            &self.layout.sealed(s),
            Bytes::copy_from_slice(&fence.to_le_bytes()),
        )
        .await?;
        Ok(fence)
    }

    /// A fenced error for a handle at `term` fenced by a writer at `current`.
    pub(super) fn fenced(&self, term: Term, current: u64) -> LogError {
        LogError::Fenced {
            pchannel: self.pchannel.clone(),
            term,
            current: Term(current),
        }
    }
}
