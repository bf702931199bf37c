//! The reader task of one read: walks segments in order, fetches blocks with bounded read-ahead,
//! and tails by polling the next block index.
//!
//! Within a segment blocks are read at consecutive indexes from the segment's retained start.
//! A fence ends the segment (the next segment is the first one listed above it); a missing index
//! means the block is not written yet (or was truncated away: the truncation mark says so), so
//! the reader waits — a poll interval, or less when this handle's own writer acknowledges a block
//! — and asks again. Up to `read_ahead_blocks` blocks are fetched ahead while catching up; the
//! records themselves go through a channel bounded by the read's read-ahead.

use std::collections::VecDeque;
use std::time::Duration;

use futures::future::BoxFuture;
use sluice_types::{ImmutableMessage, MessageId};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::block::BlockKind;
use super::layout::{Position, SegmentId, pack};
use super::store::{Channel, Fetched};
use crate::LogError;

/// Where a reader starts.
#[derive(Clone, Copy, Debug)]
pub(super) enum Start {
    /// At the oldest retained record of the first segment at or above `segment` (from its start
    /// when it is a later segment), skipping positions below `at`.
    At(Position),
    /// The oldest retained record.
    Oldest,
}

/// One read.
pub(super) struct Reader {
    /// The pchannel.
    pub channel: Channel,
    /// Where to start.
    pub start: Start,
    /// Where records go.
    pub tx: mpsc::Sender<Result<ImmutableMessage, LogError>>,
    /// Fires when the stream is dropped or the handle closes.
    pub stop: CancellationToken,
    /// The handle's own writer's acknowledgements, to tail without waiting for a poll.
    pub acked: Option<watch::Receiver<u64>>,
    /// How long to wait before asking again for a block that is not there.
    pub poll_interval: Duration,
    /// Blocks fetched ahead while catching up.
    pub read_ahead_blocks: usize,
    /// The handle's tasks; read-ahead fetches run here so `close` waits for them too.
    pub tasks: TaskTracker,
}

enum Step {
    Continue,
    Stop,
}

impl Reader {
    /// Runs until the stream is dropped, the handle closes or a read fails.
    pub(super) async fn run(mut self) {
        let stop = self.stop.clone();
        tokio::select! {
            _ = stop.cancelled() => {}
            r = self.read_all() => {
                if let Err(e) = r {
                    let _ = self.tx.send(Err(e)).await;
                }
            }
        }
    }

    async fn wait(&mut self) {
        match &mut self.acked {
            Some(rx) => {
                let woken = tokio::time::timeout(self.poll_interval, rx.changed()).await;
                if let Ok(Err(_)) = woken {
                    // The writer is gone: poll from now on instead of spinning on a closed watch.
                    self.acked = None;
                }
            }
            None => tokio::time::sleep(self.poll_interval).await,
        }
    }

    /// The first segment at or above `from`, waiting until there is one.
    async fn segment_from(&mut self, from: Option<SegmentId>) -> Result<SegmentId, LogError> {
        loop {
            let segments = self.channel.segments().await?;
            if let Some(s) = segments.into_iter().find(|s| from.is_none_or(|f| *s >= f)) {
                return Ok(s);
            }
            self.wait().await;
        }
    }

    async fn read_all(&mut self) -> Result<(), LogError> {
        let (target, mut skip_below) = match self.start {
            Start::Oldest => (None, None),
            Start::At(p) => (Some(p.segment), Some(p)),
        };
        let mut segment = self.segment_from(target).await?;
        loop {
            let mut block = self.channel.retained_start(segment).await?;
            if let Some(p) = skip_below.filter(|p| p.segment == segment) {
                block = block.max(p.block);
            }
            match self.read_segment(segment, block, skip_below).await? {
                Step::Stop => return Ok(()),
                Step::Continue => {}
            }
            skip_below = None;
            segment = self.next_segment(segment).await?;
        }
    }

    /// The first segment above `after`, waiting until there is one.
    async fn next_segment(&mut self, after: SegmentId) -> Result<SegmentId, LogError> {
        loop {
            let segments = self.channel.segments().await?;
            if let Some(s) = segments.into_iter().find(|s| *s > after) {
                return Ok(s);
            }
            self.wait().await;
        }
    }

    /// Reads one segment from `block` up to its fence. `Stop` when the consumer is gone.
    async fn read_segment(
        &mut self,
        segment: SegmentId,
        mut block: u64,
        skip_below: Option<Position>,
    ) -> Result<Step, LogError> {
        let channel = self.channel.clone();
        let fetch = |index: u64| -> BoxFuture<'static, Result<Fetched, LogError>> {
            let c = channel.clone();
            Box::pin(async move { c.fetch(segment, index).await })
        };
        // Fetches started ahead, for blocks block, block+1, ... in order.
        let mut ahead = Ahead(VecDeque::new());
        let mut checked_truncation = false;
        let result = loop {
            if ahead.0.is_empty() {
                ahead.0.push_back(self.tasks.spawn(fetch(block)));
            }
            let Some(next) = ahead.0.pop_front() else {
                continue;
            };
            let fetched = next
                .await
                .map_err(|e| LogError::Unavailable(format!("block fetch task failed: {e}")))?;
            let fetched = match fetched {
                Ok(f) => f,
                Err(e) => break Err(e),
            };
            match fetched {
                Fetched::Missing => {
                    ahead.abort_all();
                    // Truncated away under us? The mark is written before blocks are deleted.
                    if !checked_truncation {
                        checked_truncation = true;
                        let start = self.channel.retained_start(segment).await?;
                        if start > block {
                            block = start;
                            continue;
                        }
                    }
                    self.wait().await;
                }
                Fetched::Block(b) => match b.kind {
                    BlockKind::Fence { .. } => {
                        ahead.abort_all();
                        break Ok(Step::Continue);
                    }
                    BlockKind::Data { .. } => {
                        checked_truncation = false;
                        // Catching up: keep the next blocks coming.
                        let mut next_index = block + 1 + ahead.0.len() as u64;
                        while ahead.0.len() < self.read_ahead_blocks {
                            ahead.0.push_back(self.tasks.spawn(fetch(next_index)));
                            next_index += 1;
                        }
                        let location = self.channel.layout.block(segment, block).to_string();
                        for (entry, record) in b.records(&location).enumerate() {
                            let entry = entry as u32;
                            let id: MessageId = pack(segment, block, entry);
                            if skip_below.is_some_and(|p| id < pack(p.segment, p.block, p.entry)) {
                                continue;
                            }
                            let msg = match record {
                                Ok(m) => m,
                                Err(e) => {
                                    ahead.abort_all();
                                    return Err(e);
                                }
                            };
                            if self
                                .tx
                                .send(Ok(ImmutableMessage::new(id, msg)))
                                .await
                                .is_err()
                            {
                                ahead.abort_all();
                                return Ok(Step::Stop);
                            }
                        }
                        block += 1;
                    }
                },
            }
        };
        ahead.abort_all();
        result
    }
}

/// Fetch tasks started ahead; aborted when dropped, so a reader that stops (or whose task is
/// cancelled) leaves nothing running.
struct Ahead(VecDeque<tokio::task::JoinHandle<Result<Fetched, LogError>>>);

impl Ahead {
    fn abort_all(&mut self) {
        for h in self.0.drain(..) {
            h.abort();
        }
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.abort_all();
    }
}
