//! The timestamp oracle and the id allocator, with persisted high-water marks.
//!
//! # Contract
//!
//! * [`Tso::allocate`] hands out hybrid timestamps (`physical_ms << 18 | logical`, see
//!   [`Timestamp`]). Every timestamp it returns is greater than every timestamp returned before by
//!   this oracle *and by every oracle that persisted a window on the same key before it opened*,
//!   whatever the wall clock does (it may step back).
//! * The oracle only hands out timestamps whose physical part is below the *window end* it has
//!   persisted at `{root}/tso`. A new oracle starts at `max(now, persisted end + 1 ms)`, so it is
//!   above everything its predecessors could have handed out.
//! * Every write of the window is a compare-and-set on the revision this oracle last wrote (or
//!   read, at open). Losing it means another oracle opened on the key: this one is fenced for
//!   good and every later call fails with [`CoordError::NotLeader`]; nothing is handed out from a
//!   window that was not persisted.
//! * The window is extended in the background when less than a third of it is left (found by
//!   an allocation, or by the clock alone while idle), so allocation normally never waits for
//!   the meta store.
//! * An oracle that was superseded keeps handing out from its persisted window (every timestamp
//!   of which is below the new oracle's) until it next extends the window and finds out. Run the
//!   oracle under a [`crate::election::Leadership`] and drop it when that is lost.
//! * [`Ids::allocate`] hands out ids from blocks reserved the same way at `{root}/id`: an id is
//!   never handed out twice, also across restarts (ids of a reserved but unused block are
//!   skipped). Ids start at 1.
//!
//! ```text
//!   persisted end E0          open: start = max(now, E0 + 1), persist E1 = start + window
//!   ─────────────|──────────────|━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━|──────────▶ physical ms
//!                               start   handed out from here      E1 (exclusive)
//! ```
//!
//! Both marks are stored as a versioned [`HighWater`] prost message that also names the writer
//! (a random nonce per opened instance). A write that failed ambiguously (the store may have
//! applied it) is recognised by that nonce on the next compare-and-set, instead of being taken for
//! a takeover.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message;
use sluice_meta::{Condition, MetaError, MetaStore, Revision};
use sluice_types::Timestamp;
use sluice_types::ids::LOGICAL_BITS;
use tokio_util::sync::CancellationToken;

use sluice_types::backoff::Backoff;

use crate::keys::Keys;
use crate::registry::OwnedTask;
use crate::{CoordError, Result};

/// The largest `count` one [`Tso::allocate`] call accepts: one millisecond's logical space.
pub const MAX_TIMESTAMPS_PER_CALL: u32 = 1 << LOGICAL_BITS;

/// The largest physical part a [`Timestamp`] can hold (46 bits of milliseconds).
const MAX_PHYSICAL_MS: u64 = u64::MAX >> LOGICAL_BITS;

/// The only format version of [`HighWater`] this code writes and reads.
const HIGH_WATER_FORMAT: u32 = 1;

/// A wall clock in milliseconds since the Unix epoch: the oracle's seam for tests.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch now. May step backwards; the oracle copes.
    fn now_ms(&self) -> u64;
}

/// The system wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        Timestamp::now().physical_ms()
    }
}

/// A clock that only moves when told to (tests, simulations).
#[derive(Debug)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock reading `now_ms`.
    pub fn new(now_ms: u64) -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicU64::new(now_ms)))
    }

    /// Sets the reading (forwards or backwards).
    pub fn set(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }

    /// Moves the reading forward by `d`.
    pub fn advance(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_add(ms))
            })
            .ok();
    }

    /// Moves the reading backward by `d` (not below 0).
    pub fn step_back(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_sub(ms))
            })
            .ok();
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A persisted high-water mark (`{root}/tso`: window end in ms, exclusive; `{root}/id`: first id
/// not yet reserved).
#[derive(Clone, PartialEq, Message)]
pub struct HighWater {
    /// Format version; must be 1.
    #[prost(uint32, tag = "1")]
    pub format: u32,
    /// The mark.
    #[prost(uint64, tag = "2")]
    pub value: u64,
    /// A random nonce naming the instance that wrote it.
    #[prost(uint64, tag = "3")]
    pub owner: u64,
}

fn decode_high_water(key: &str, bytes: &[u8]) -> Result<HighWater> {
    let hw = HighWater::decode(bytes).map_err(|e| CoordError::Malformed {
        key: key.to_owned(),
        reason: format!("not a high-water mark: {e}"),
    })?;
    if hw.format != HIGH_WATER_FORMAT {
        return Err(CoordError::Malformed {
            key: key.to_owned(),
            reason: format!(
                "high-water mark format {} (expected {HIGH_WATER_FORMAT})",
                hw.format
            ),
        });
    }
    Ok(hw)
}

/// One persisted mark, written only with compare-and-set by the instance that holds it.
#[derive(Debug)]
struct Mark {
    key: String,
    owner: u64,
    /// The mod revision of the last value this instance read or wrote; `None`: the key was absent.
    revision: Option<Revision>,
    /// The persisted value.
    value: Option<u64>,
    /// Another instance wrote the key: this one must never write again.
    fenced: bool,
}

impl Mark {
    /// Reads the mark at `key`; a malformed value is an error and changes nothing.
    async fn load(store: &dyn MetaStore, key: String, max: u64) -> Result<Mark> {
        let (revision, value) = match store.get(&key).await? {
            None => (None, None),
            Some(kv) => {
                let hw = decode_high_water(&key, &kv.value)?;
                if hw.value > max {
                    return Err(CoordError::Malformed {
                        key,
                        reason: format!("high-water mark {} is above {max}", hw.value),
                    });
                }
                (Some(kv.mod_revision), Some(hw.value))
            }
        };
        Ok(Mark {
            key,
            owner: rand::random(),
            revision,
            value,
            fenced: false,
        })
    }

    /// Persists `value` (or the persisted value, if that is higher: a mark never goes down)
    /// with compare-and-set and returns what was persisted. Losing to another writer fences the
    /// mark for good.
    async fn store(&mut self, store: &dyn MetaStore, value: u64) -> Result<u64> {
        if self.fenced {
            return Err(CoordError::NotLeader);
        }
        let mut value = value.max(self.value.unwrap_or(0));
        // At most one retry: after an earlier write of ours that reported failure but applied.
        for _ in 0..2 {
            let condition = match self.revision {
                None => Condition::KeyAbsent,
                Some(r) => Condition::ModRevision(r),
            };
            let bytes = HighWater {
                format: HIGH_WATER_FORMAT,
                value,
                owner: self.owner,
            }
            .encode_to_vec();
            match store
                .put(&self.key, Bytes::from(bytes), condition, None)
                .await
            {
                Ok(rev) => {
                    self.revision = Some(rev);
                    self.value = Some(value);
                    return Ok(value);
                }
                Err(MetaError::ConditionFailed { .. }) => {
                    // Either another instance took over, or an earlier write of ours did apply:
                    // only our nonce tells them apart.
                    let current = store.get(&self.key).await?;
                    let ours = current.as_ref().and_then(|kv| {
                        decode_high_water(&self.key, &kv.value)
                            .ok()
                            .filter(|hw| hw.owner == self.owner)
                            .map(|hw| (kv.mod_revision, hw.value))
                    });
                    match ours {
                        Some((rev, v)) if Some(rev) != self.revision => {
                            self.revision = Some(rev);
                            self.value = Some(v);
                            value = value.max(v);
                        }
                        _ => break,
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.fenced = true;
        tracing::warn!(key = %self.key, "high-water mark taken over by another instance");
        Err(CoordError::NotLeader)
    }
}

/// Settings of a [`Tso`].
#[derive(Clone, Debug)]
pub struct TsoConfig {
    /// How far ahead of the clock the persisted window reaches. Default 3 s.
    pub window: Duration,
    /// Whether a background task extends the window when less than a third is left, so
    /// allocation does not wait for the meta store. Default true.
    pub extend_in_background: bool,
}

impl Default for TsoConfig {
    fn default() -> TsoConfig {
        TsoConfig {
            window: Duration::from_secs(3),
            extend_in_background: true,
        }
    }
}

/// The next free position of the oracle and the window it may hand out from.
#[derive(Debug)]
struct Cursor {
    /// Physical part of the next timestamp (ms).
    physical: u64,
    /// Logical part of the next timestamp; `1 << 18` means the millisecond is used up.
    logical: u64,
    /// Persisted window end (ms, exclusive).
    window_end: u64,
    /// Set once the window was taken over: nothing more is handed out.
    fenced: bool,
}

struct TsoInner {
    store: Arc<dyn MetaStore>,
    clock: Arc<dyn Clock>,
    window_ms: u64,
    cursor: Mutex<Cursor>,
    /// Serialises writes of the window; held across the meta store call.
    mark: tokio::sync::Mutex<Mark>,
    /// Wakes the background extender.
    low: tokio::sync::Notify,
}

/// The timestamp oracle (see the module docs for its contract).
pub struct Tso {
    inner: Arc<TsoInner>,
    extender: Mutex<Option<OwnedTask>>,
}

impl std::fmt::Debug for Tso {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tso")
            .field("cursor", &*self.inner.cursor.lock())
            .finish()
    }
}

impl Tso {
    /// Opens the oracle on `{root}/tso`: reads the persisted window end, starts above it and
    /// above the clock, and persists a new window with compare-and-set.
    ///
    /// Errors: [`CoordError::Malformed`] for a stored value that does not decode (nothing is
    /// written), [`CoordError::NotLeader`] when another oracle wrote the key in between,
    /// [`CoordError::InvalidArgument`] for a zero window.
    pub async fn open(
        store: Arc<dyn MetaStore>,
        keys: &Keys,
        config: TsoConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Tso> {
        let window_ms = u64::try_from(config.window.as_millis()).unwrap_or(u64::MAX);
        if window_ms == 0 || window_ms > MAX_PHYSICAL_MS / 2 {
            return Err(CoordError::InvalidArgument(format!(
                "TSO window {:?} must be at least 1 ms and representable",
                config.window
            )));
        }
        let mut mark = Mark::load(store.as_ref(), keys.tso(), MAX_PHYSICAL_MS).await?;
        let floor = mark.value.map_or(0, |end| end.saturating_add(1));
        let start = clock.now_ms().max(floor);
        let end = start.saturating_add(window_ms);
        if end > MAX_PHYSICAL_MS {
            return Err(CoordError::InvalidArgument(format!(
                "clock or persisted window ({start} ms) is beyond the timestamp range"
            )));
        }
        let end = mark.store(store.as_ref(), end).await?;
        tracing::info!(key = %mark.key, start, end, "timestamp oracle opened");
        let inner = Arc::new(TsoInner {
            store,
            clock,
            window_ms,
            cursor: Mutex::new(Cursor {
                physical: start,
                logical: 0,
                window_end: end,
                fenced: false,
            }),
            mark: tokio::sync::Mutex::new(mark),
            low: tokio::sync::Notify::new(),
        });
        let extender = config.extend_in_background.then(|| {
            let inner = inner.clone();
            OwnedTask::spawn(|stop| extend_in_background(inner, stop))
        });
        Ok(Tso {
            inner,
            extender: Mutex::new(extender),
        })
    }

    /// Allocates `count` contiguous timestamps and returns the first; all of them are above
    /// every timestamp handed out before. `count` must be in `1..=2^18`
    /// ([`MAX_TIMESTAMPS_PER_CALL`]).
    pub async fn allocate(&self, count: u32) -> Result<Timestamp> {
        if count == 0 || count > MAX_TIMESTAMPS_PER_CALL {
            return Err(CoordError::InvalidArgument(format!(
                "timestamp count {count} is not in 1..={MAX_TIMESTAMPS_PER_CALL}"
            )));
        }
        let count = u64::from(count);
        loop {
            let need = {
                let mut c = self.inner.cursor.lock();
                if c.fenced {
                    return Err(CoordError::NotLeader);
                }
                let now = self.inner.clock.now_ms();
                let (mut physical, mut logical) = (c.physical, c.logical);
                if now > physical {
                    (physical, logical) = (now, 0);
                }
                if logical + count > u64::from(MAX_TIMESTAMPS_PER_CALL) {
                    (physical, logical) = (physical + 1, 0);
                }
                if physical < c.window_end {
                    c.physical = physical;
                    c.logical = logical + count;
                    if c.window_end - physical < self.inner.window_ms.div_ceil(3) {
                        self.inner.low.notify_one();
                    }
                    return Timestamp::from_parts(physical, logical).ok_or_else(|| {
                        CoordError::InvalidArgument(format!(
                            "physical time {physical} ms is beyond the timestamp range"
                        ))
                    });
                }
                physical
            };
            // The window is used up: extend it before handing anything out.
            self.inner.extend(need).await?;
        }
    }

    /// The persisted window end (ms, exclusive): no timestamp at or above it was handed out.
    pub fn window_end_ms(&self) -> u64 {
        self.inner.cursor.lock().window_end
    }

    /// Stops the background extension, waiting for a write in flight (dropping the oracle stops
    /// it without waiting, as a crash would: a successor opening at once may then lose its
    /// compare-and-set to that write and must retry).
    /// Allocation goes on working, extending the window only when it runs out.
    pub async fn close(&self) {
        let task = self.extender.lock().take();
        if let Some(task) = task {
            task.stop().await;
        }
    }
}

impl TsoInner {
    /// Makes the persisted window reach past `physical` (by a whole window).
    async fn extend(&self, physical: u64) -> Result<()> {
        let mut mark = self.mark.lock().await;
        if self.cursor.lock().window_end > physical {
            return Ok(()); // extended while we waited
        }
        let end = physical
            .max(self.clock.now_ms())
            .saturating_add(self.window_ms);
        if end > MAX_PHYSICAL_MS {
            return Err(CoordError::InvalidArgument(format!(
                "window end {end} ms is beyond the timestamp range"
            )));
        }
        match mark.store(self.store.as_ref(), end).await {
            Ok(persisted) => {
                let mut c = self.cursor.lock();
                c.window_end = c.window_end.max(persisted);
                Ok(())
            }
            Err(e) => {
                if mark.fenced {
                    self.cursor.lock().fenced = true;
                }
                Err(e)
            }
        }
    }
}

async fn extend_in_background(inner: Arc<TsoInner>, stop: CancellationToken) {
    let third = inner.window_ms.div_ceil(3);
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        // Wake when an allocation finds the window low, or when the clock alone will have used
        // two thirds of it, so that the first allocation after an idle spell does not wait.
        let idle = {
            let c = inner.cursor.lock();
            let left = c
                .window_end
                .saturating_sub(c.physical.max(inner.clock.now_ms()));
            Duration::from_millis(left.saturating_sub(third).max(1))
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = inner.low.notified() => {}
            () = tokio::time::sleep(idle) => {}
        }
        let (target, fenced) = {
            let c = inner.cursor.lock();
            let at = c.physical.max(inner.clock.now_ms());
            (
                (c.window_end.saturating_sub(at) < third).then_some(at),
                c.fenced,
            )
        };
        if fenced {
            return;
        }
        let Some(at) = target else { continue };
        // Reach a whole window past `at`: extend() only writes when the end is not past it.
        // An extension in flight is finished, not abandoned, so that `close` leaves no write
        // behind that could land after a successor read the mark.
        match inner.extend(at.saturating_add(third)).await {
            Ok(()) => backoff.reset(),
            Err(e) => {
                tracing::warn!(error = %e, "background TSO window extension failed");
                if inner.cursor.lock().fenced {
                    return;
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}

/// Settings of an [`Ids`] allocator.
#[derive(Clone, Debug)]
pub struct IdsConfig {
    /// Ids reserved per meta store write. Default 10 000.
    pub block: u64,
}

impl Default for IdsConfig {
    fn default() -> IdsConfig {
        IdsConfig { block: 10_000 }
    }
}

#[derive(Debug)]
struct IdState {
    mark: Mark,
    /// The next id to hand out.
    next: u64,
    /// The first id not reserved (persisted).
    end: u64,
}

/// The id allocator (see the module docs for its contract).
pub struct Ids {
    store: Arc<dyn MetaStore>,
    block: u64,
    state: tokio::sync::Mutex<IdState>,
}

impl std::fmt::Debug for Ids {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ids").field("block", &self.block).finish()
    }
}

/// The largest id: ids are `i64` on the wire and in the WAL.
const MAX_ID: u64 = i64::MAX as u64;

impl Ids {
    /// Opens the allocator on `{root}/id`. Nothing is written until the first allocation.
    ///
    /// Errors: [`CoordError::Malformed`] for a stored value that does not decode,
    /// [`CoordError::InvalidArgument`] for a zero block.
    pub async fn open(store: Arc<dyn MetaStore>, keys: &Keys, config: IdsConfig) -> Result<Ids> {
        if config.block == 0 {
            return Err(CoordError::InvalidArgument(
                "id block size must be positive".into(),
            ));
        }
        let mark = Mark::load(store.as_ref(), keys.id(), MAX_ID + 1).await?;
        let next = mark.value.unwrap_or(1).max(1);
        Ok(Ids {
            store,
            block: config.block,
            state: tokio::sync::Mutex::new(IdState {
                mark,
                next,
                end: next,
            }),
        })
    }

    /// Allocates `count` consecutive ids and returns the first; none was handed out before.
    pub async fn allocate(&self, count: u64) -> Result<u64> {
        if count == 0 {
            return Err(CoordError::InvalidArgument(
                "id count must be positive".into(),
            ));
        }
        let mut st = self.state.lock().await;
        let last = st
            .next
            .checked_add(count)
            .filter(|&end| end <= MAX_ID + 1)
            .ok_or_else(|| {
                CoordError::InvalidArgument(format!("{count} more ids would exhaust the id space"))
            })?;
        if last > st.end {
            let end = st
                .next
                .saturating_add(count.max(self.block))
                .min(MAX_ID + 1);
            st.end = st.mark.store(self.store.as_ref(), end).await?;
        }
        let first = st.next;
        st.next = last;
        Ok(first)
    }

    /// One fresh id as the WAL uses them (transaction and segment ids).
    pub async fn allocate_id(&self) -> Result<i64> {
        let id = self.allocate(1).await?;
        // MAX_ID keeps every id within i64.
        i64::try_from(id).map_err(|_| CoordError::InvalidArgument(format!("id {id} exceeds i64")))
    }
}
