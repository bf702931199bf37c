//! Timestamps and ids for the WAL: the oracle seam, a local oracle, and the batching allocator.
//!
//! The WAL never asks the oracle per message: it takes batches (1000 by default) and hands them
//! out under its own lock, so allocation order equals timestamp order. A barrier (an append that
//! must get a timestamp ≥ a given one) drops the local batch and fetches again until the oracle
//! has caught up.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use sluice_types::Timestamp;
use sluice_types::backoff::Backoff;

use tokio_util::sync::CancellationToken;

use crate::WalError;

/// Hands out unique, increasing timestamps in batches. The coordinator's oracle implements this
/// in a cluster; [`LocalOracle`] in tests and standalone.
#[async_trait]
pub trait TimestampOracle: Send + Sync + 'static {
    /// Allocates `count` consecutive timestamps; returns the first. Every timestamp returned is
    /// greater than every timestamp returned before.
    async fn allocate(&self, count: u32) -> Result<Timestamp, WalError>;
}

/// Hands out unique ids (transaction ids, segment ids).
#[async_trait]
pub trait IdAllocator: Send + Sync + 'static {
    /// A fresh id, greater than zero and never handed out before.
    async fn allocate_id(&self) -> Result<i64, WalError>;
}

/// An in-process oracle: hybrid timestamps from the wall clock, never going backwards within
/// the process. Its ids are a counter.
#[derive(Debug, Default)]
pub struct LocalOracle {
    last: Mutex<u64>,
    next_id: AtomicI64,
}

impl LocalOracle {
    /// A new oracle.
    pub fn new() -> Arc<LocalOracle> {
        Arc::new(LocalOracle {
            last: Mutex::new(0),
            next_id: AtomicI64::new(1),
        })
    }

    /// An oracle that starts above `floor` (e.g. the highest timestamp a log already holds).
    pub fn starting_after(floor: Timestamp) -> Arc<LocalOracle> {
        Arc::new(LocalOracle {
            last: Mutex::new(floor.0),
            next_id: AtomicI64::new(1),
        })
    }
}

#[async_trait]
impl TimestampOracle for LocalOracle {
    async fn allocate(&self, count: u32) -> Result<Timestamp, WalError> {
        let count = u64::from(count.max(1));
        let mut last = self.last.lock();
        let first = Timestamp::now().0.max(*last + 1);
        *last = first + count - 1;
        Ok(Timestamp(first))
    }
}

#[async_trait]
impl IdAllocator for LocalOracle {
    async fn allocate_id(&self) -> Result<i64, WalError> {
        Ok(self.next_id.fetch_add(1, Ordering::Relaxed))
    }
}

/// Timestamps handed out per oracle call.
pub const DEFAULT_BATCH: u32 = 1000;

/// A batch older than this is dropped, so timestamps keep tracking the oracle's clock (keepalive
/// and expiry are measured in timestamps).
pub const BATCH_MAX_AGE: Duration = Duration::from_millis(50);

/// Time on the coarse monotonic clock (a few milliseconds of resolution, and no `rdtsc` or
/// hypervisor clock read): a batch's age is checked on every timestamp, under the WAL's
/// allocation lock, and a 50 ms bound needs no finer clock.
fn coarse_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// A batch of timestamps fetched from the oracle: `next..end` are still free.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Batch {
    next: u64,
    end: u64,
    /// When it was fetched, on [`coarse_now`]'s clock.
    fetched: Option<Duration>,
}

impl Batch {
    fn too_old(&self) -> bool {
        self.fetched
            .is_some_and(|f| coarse_now().saturating_sub(f) > BATCH_MAX_AGE)
    }
}

impl Batch {
    /// Takes one timestamp at least `barrier`, if the batch has one. A batch whose timestamps
    /// are all below the barrier is emptied.
    pub(crate) fn take(&mut self, barrier: Option<Timestamp>) -> Option<Timestamp> {
        if self.too_old() {
            self.next = self.end;
            return None;
        }
        if let Some(b) = barrier
            && self.next < b.0
        {
            if b.0 < self.end {
                self.next = b.0;
            } else {
                self.next = self.end;
                return None;
            }
        }
        (self.next < self.end).then(|| {
            self.next += 1;
            Timestamp(self.next - 1)
        })
    }

    #[cfg(test)]
    pub(crate) fn for_tests(next: u64, end: u64) -> Batch {
        Batch {
            next,
            end,
            fetched: None,
        }
    }

    /// Whether the batch can hand out a timestamp ≥ `barrier`.
    pub(crate) fn usable(&self, barrier: Option<Timestamp>) -> bool {
        !self.is_empty() && !self.too_old() && barrier.is_none_or(|t| t.0 < self.end)
    }

    /// Whether every timestamp of `self` is above every timestamp of `other`.
    pub(crate) fn is_after(&self, other: &Batch) -> bool {
        self.next >= other.end
    }

    /// Whether every timestamp of the batch was handed out.
    pub(crate) fn is_empty(&self) -> bool {
        self.next >= self.end
    }
}

/// Fetches batches from the oracle.
pub(crate) struct Refiller {
    oracle: Arc<dyn TimestampOracle>,
    batch: u32,
    /// How long a refill retries an unavailable oracle, and what ends that early.
    patience: Duration,
    cancel: CancellationToken,
    /// Serialises refills so concurrent appenders do not each fetch a batch.
    gate: tokio::sync::Mutex<()>,
}

impl Refiller {
    /// A refiller that fails at the oracle's first error.
    pub(crate) fn new(oracle: Arc<dyn TimestampOracle>, batch: u32) -> Refiller {
        Refiller {
            oracle,
            batch: batch.max(1),
            patience: Duration::ZERO,
            cancel: CancellationToken::new(),
            gate: tokio::sync::Mutex::new(()),
        }
    }

    /// Retries an unavailable oracle (a retryable error) for up to `patience`, or until
    /// `cancel` fires (the WAL closes).
    pub(crate) fn patient(mut self, patience: Duration, cancel: CancellationToken) -> Refiller {
        self.patience = patience;
        self.cancel = cancel;
        self
    }

    /// Refills `slot` unless another task did so while this one waited for the gate. With a
    /// barrier the oracle is asked until it reaches the barrier.
    pub(crate) async fn refill(
        &self,
        slot: &Mutex<Batch>,
        barrier: Option<Timestamp>,
    ) -> Result<(), WalError> {
        let _gate = self.gate.lock().await;
        let usable = |b: &Batch| b.usable(barrier);
        if usable(&slot.lock()) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mut wait = Backoff::new(Duration::from_millis(1), Duration::from_millis(50));
        let mut unavailable = 0u32;
        loop {
            let first = match self.oracle.allocate(self.batch).await {
                Ok(first) => first,
                Err(e) if e.retryable() && started.elapsed() < self.patience => {
                    unavailable += 1;
                    if unavailable == 1 {
                        tracing::warn!(error = %e, patience = ?self.patience, "timestamp oracle unavailable; waiting for it");
                    }
                    tokio::select! {
                        () = self.cancel.cancelled() => return Err(WalError::Shutdown),
                        () = tokio::time::sleep(wait.next_delay()) => {}
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            if unavailable > 0 {
                tracing::info!(waited = ?started.elapsed(), "timestamp oracle answers again");
            }
            let fresh = Batch {
                next: first.0,
                end: first.0.saturating_add(u64::from(self.batch)),
                fetched: Some(coarse_now()),
            };
            if usable(&fresh) {
                *slot.lock() = fresh;
                return Ok(());
            }
            // The oracle is behind the barrier (a timestamp chosen elsewhere, slightly in our
            // future): wait for its clock to pass it.
            tokio::time::sleep(wait.next_delay()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_oracle_never_goes_backwards() {
        let o = LocalOracle::new();
        let mut last = Timestamp(0);
        for _ in 0..1000 {
            let t = o.allocate(7).await.unwrap();
            assert!(t > last);
            last = Timestamp(t.0 + 6);
        }
        let high = LocalOracle::starting_after(Timestamp(u64::MAX >> 2));
        assert!(high.allocate(1).await.unwrap() > Timestamp(u64::MAX >> 2));
    }

    #[test]
    fn batch_honours_barriers() {
        let mut b = Batch::for_tests(10, 20);
        assert_eq!(b.take(None), Some(Timestamp(10)));
        assert_eq!(b.take(Some(Timestamp(15))), Some(Timestamp(15)));
        assert_eq!(b.take(None), Some(Timestamp(16)));
        assert_eq!(b.take(Some(Timestamp(25))), None);
        assert!(b.is_empty());
    }

    #[tokio::test]
    async fn refill_reaches_a_barrier_in_the_oracles_future() {
        let o = LocalOracle::new();
        let r = Refiller::new(o, 10);
        let slot = Mutex::new(Batch::default());
        let barrier = Timestamp(Timestamp::now().0 + (30 << 18));
        r.refill(&slot, Some(barrier)).await.unwrap();
        let t = slot.lock().take(Some(barrier)).unwrap();
        assert!(t >= barrier);
    }

    /// An oracle that is unavailable for its first `down` calls.
    struct Flaky {
        inner: Arc<LocalOracle>,
        down: std::sync::atomic::AtomicU32,
    }

    #[async_trait]
    impl TimestampOracle for Flaky {
        async fn allocate(&self, count: u32) -> Result<Timestamp, WalError> {
            if self
                .down
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(WalError::Log(sluice_log::LogError::Unavailable(
                    "coordinator restarting".into(),
                )));
            }
            self.inner.allocate(count).await
        }
    }

    fn flaky(down: u32) -> Arc<Flaky> {
        Arc::new(Flaky {
            inner: LocalOracle::new(),
            down: down.into(),
        })
    }

    #[tokio::test]
    async fn a_patient_refill_waits_out_an_unavailable_oracle_and_a_close_ends_the_wait() {
        let slot = Mutex::new(Batch::default());
        // Impatient: the first error is the caller's.
        let err = Refiller::new(flaky(3), 10)
            .refill(&slot, None)
            .await
            .unwrap_err();
        assert!(err.retryable(), "{err:?}");
        // Patient: goes on once the oracle answers again.
        let r =
            Refiller::new(flaky(3), 10).patient(Duration::from_secs(30), CancellationToken::new());
        r.refill(&slot, None).await.unwrap();
        assert!(slot.lock().take(None).is_some());
        // Patience runs out: the error is the caller's.
        let r = Refiller::new(flaky(u32::MAX), 10)
            .patient(Duration::from_millis(30), CancellationToken::new());
        let slot = Mutex::new(Batch::default());
        assert!(r.refill(&slot, None).await.unwrap_err().retryable());
        // Closing the WAL ends the wait.
        let cancel = CancellationToken::new();
        let r =
            Refiller::new(flaky(u32::MAX), 10).patient(Duration::from_secs(600), cancel.clone());
        cancel.cancel();
        let err = tokio::time::timeout(Duration::from_secs(5), r.refill(&slot, None))
            .await
            .expect("a cancelled wait ends")
            .unwrap_err();
        assert!(matches!(err, WalError::Shutdown), "{err:?}");
    }
}
