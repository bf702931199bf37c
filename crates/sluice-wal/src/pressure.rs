//! Node-wide back-pressure on appends.
//!
//! One [`Pressure`] is shared by every WAL of a node ([`crate::WalDeps::pressure`]). An append
//! is *admitted* before anything else happens to it:
//!
//! * while a refusal is set ([`Pressure::refuse`]: the node's monitor found a disk below its
//!   free-space watermark, or the node's memory over its cap), or the disk budget is spent
//!   ([`Pressure::set_disk_budget`]: the bytes the monitor last found free above the watermark,
//!   less what was admitted since, so a fast writer cannot run far past the watermark between
//!   two measurements), it fails at once with
//!   [`WalError::Overloaded`] (wire code `RESOURCE_EXHAUSTED`, retryable) and nothing is
//!   written: a client retries with backoff and goes on once the refusal is lifted;
//! * otherwise its bytes count as *in flight* until the append finishes (acknowledged or
//!   failed); an append that would take the in-flight bytes over
//!   [`Pressure::in_flight_cap`] waits up to [`IN_FLIGHT_WAIT`] for others to finish (slowing
//!   producers down), then fails with [`WalError::Overloaded`]. One append alone is always
//!   admitted, however large, so no message is refused for its size here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::WalError;

/// How long an append waits for in-flight bytes to drop under the cap before it is refused.
pub const IN_FLIGHT_WAIT: Duration = Duration::from_millis(500);

/// The node's admission state (see the module docs).
pub struct Pressure {
    refusing: AtomicBool,
    /// Bytes that may still be admitted before the disk reaches its watermark.
    disk_budget: AtomicI64,
    reason: Mutex<String>,
    budget_reason: Mutex<String>,
    in_flight: AtomicU64,
    cap: u64,
    released: Notify,
    /// Appends waiting for in-flight bytes to drop: a finishing append wakes them only when
    /// there are some.
    waiting: AtomicUsize,
}

impl Default for Pressure {
    fn default() -> Pressure {
        Pressure {
            refusing: AtomicBool::new(false),
            disk_budget: AtomicI64::new(i64::MAX),
            reason: Mutex::default(),
            budget_reason: Mutex::default(),
            in_flight: AtomicU64::new(0),
            cap: 0,
            released: Notify::new(),
            waiting: AtomicUsize::new(0),
        }
    }
}

impl std::fmt::Debug for Pressure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pressure")
            .field("refusing", &self.refusing.load(Ordering::Relaxed))
            .field("in_flight", &self.in_flight_bytes())
            .field("cap", &self.cap)
            .finish()
    }
}

impl Pressure {
    /// No cap on in-flight bytes and no refusal until one is set.
    pub fn unlimited() -> Arc<Pressure> {
        Arc::new(Pressure::default())
    }

    /// At most `cap` bytes of appends in flight (0: no cap).
    pub fn with_in_flight_cap(cap: u64) -> Arc<Pressure> {
        Arc::new(Pressure {
            cap,
            ..Pressure::default()
        })
    }

    /// The in-flight cap (0: none).
    pub fn in_flight_cap(&self) -> u64 {
        self.cap
    }

    /// Bytes of appends admitted and not finished.
    pub fn in_flight_bytes(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Refuses every append with `reason` from now on (`None`: accepts them again).
    pub fn refuse(&self, reason: Option<String>) {
        let mut current = self.reason.lock();
        match reason {
            Some(r) => {
                *current = r;
                self.refusing.store(true, Ordering::Release);
            }
            None => {
                self.refusing.store(false, Ordering::Release);
                current.clear();
            }
        }
    }

    /// Sets how many bytes may be admitted before the disk reaches its watermark (the
    /// monitor's latest measurement); once spent, appends are refused with `reason`.
    pub fn set_disk_budget(&self, bytes: u64, reason: String) {
        *self.budget_reason.lock() = reason;
        self.disk_budget
            .store(i64::try_from(bytes).unwrap_or(i64::MAX), Ordering::Release);
    }

    /// Why appends are refused now, if they are.
    pub fn refusal(&self) -> Option<String> {
        self.refusing
            .load(Ordering::Acquire)
            .then(|| self.reason.lock().clone())
    }

    /// Admits an append of `bytes` (see the module docs); the returned guard counts it in
    /// flight until dropped.
    pub async fn admit(self: &Arc<Self>, bytes: u64) -> Result<InFlight, WalError> {
        if let Some(reason) = self.refusal() {
            return Err(WalError::Overloaded(reason));
        }
        let wanted = i64::try_from(bytes).unwrap_or(i64::MAX);
        if self.disk_budget.fetch_sub(wanted, Ordering::AcqRel) < wanted {
            self.disk_budget.fetch_add(wanted, Ordering::AcqRel);
            return Err(WalError::Overloaded(self.budget_reason.lock().clone()));
        }
        if self.cap == 0 {
            self.in_flight.fetch_add(bytes, Ordering::AcqRel);
            return Ok(self.guard(bytes));
        }
        if self.try_take(bytes) {
            return Ok(self.guard(bytes));
        }
        self.wait_and_take(bytes).await
    }

    /// Counts `bytes` in flight when they fit under the cap (or nothing else is in flight).
    fn try_take(&self, bytes: u64) -> bool {
        let now = self.in_flight.load(Ordering::SeqCst);
        (now == 0 || now.saturating_add(bytes) <= self.cap)
            && self
                .in_flight
                .compare_exchange(now, now + bytes, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
    }

    /// [`Pressure::admit`] once `bytes` did not fit: waits for finishing appends. It counts
    /// itself in `waiting` before reading the in-flight bytes again, and a finishing append
    /// lowers them before reading `waiting`, so one of the two sees the other.
    async fn wait_and_take(self: &Arc<Self>, bytes: u64) -> Result<InFlight, WalError> {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        let deadline = tokio::time::Instant::now() + IN_FLIGHT_WAIT;
        loop {
            let released = self.released.notified();
            if self.try_take(bytes) {
                return Ok(self.guard(bytes));
            }
            let now = self.in_flight.load(Ordering::SeqCst);
            if now != 0 && now.saturating_add(bytes) > self.cap {
                if tokio::time::timeout_at(deadline, released).await.is_err() {
                    return Err(WalError::Overloaded(format!(
                        "{now} bytes of appends in flight on this node, cap {} (node.max_in_flight_bytes)",
                        self.cap
                    )));
                }
                if let Some(reason) = self.refusal() {
                    return Err(WalError::Overloaded(reason));
                }
            }
        }
    }

    fn guard(self: &Arc<Self>, bytes: u64) -> InFlight {
        InFlight {
            pressure: self.clone(),
            bytes,
        }
    }
}

/// An admitted append's bytes, counted in flight until dropped.
#[derive(Debug)]
pub struct InFlight {
    pressure: Arc<Pressure>,
    bytes: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.pressure
            .in_flight
            .fetch_sub(self.bytes, Ordering::SeqCst);
        if self.pressure.waiting.load(Ordering::SeqCst) > 0 {
            self.pressure.released.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refusal_fails_appends_until_lifted() {
        let p = Pressure::unlimited();
        let a = p.admit(10).await.unwrap();
        assert_eq!(p.in_flight_bytes(), 10);
        p.refuse(Some("disk /x: 1 MiB free".into()));
        let err = p.admit(10).await.unwrap_err();
        assert!(err.retryable(), "{err:?}");
        assert_eq!(err.code(), sluice_types::ErrorCode::ResourceExhausted);
        assert!(err.to_string().contains("disk /x"), "{err}");
        p.refuse(None);
        let b = p.admit(5).await.unwrap();
        drop((a, b));
        assert_eq!(p.in_flight_bytes(), 0);
        // A disk budget of 100 bytes: spent by admitted appends, then refused.
        p.set_disk_budget(100, "disk /y near its watermark".into());
        let c = p.admit(60).await.unwrap();
        let err = p.admit(60).await.unwrap_err();
        assert!(err.to_string().contains("disk /y"), "{err}");
        drop(c);
        // Finishing does not give the budget back (the bytes are on disk); the next
        // measurement does.
        assert!(p.admit(60).await.is_err());
        assert!(p.admit(40).await.is_ok());
        p.set_disk_budget(1000, String::new());
        assert!(p.admit(60).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_in_flight_cap_slows_then_refuses_and_never_blocks_a_lone_append() {
        let p = Pressure::with_in_flight_cap(100);
        // Alone, even a large append is admitted.
        let big = p.admit(1000).await.unwrap();
        // Over the cap: waits, and is admitted once the first one finishes.
        let waiter = tokio::spawn({
            let p = p.clone();
            async move { p.admit(50).await.map(|g| g.bytes) }
        });
        tokio::time::sleep(IN_FLIGHT_WAIT / 2).await;
        assert!(!waiter.is_finished());
        drop(big);
        assert_eq!(waiter.await.unwrap().unwrap(), 50);
        // Over the cap for longer than the wait: refused.
        let held = p.admit(90).await.unwrap();
        let err = p.admit(20).await.unwrap_err();
        assert!(err.to_string().contains("in flight"), "{err}");
        drop(held);
        assert_eq!(p.in_flight_bytes(), 0);
    }
}
