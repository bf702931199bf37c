//! Transaction sessions.
//!
//! A transaction lives on one vchannel: BeginTxn, any number of Insert/Delete bodies, then
//! CommitTxn or RollbackTxn. States:
//!
//! ```text
//!  InFlight ──commit──▶ OnCommit ──append ok──▶ Committed
//!     │ └────rollback─▶ OnRollback ─append ok─▶ RolledBack
//!     └──keepalive passed / exclusive message on the vchannel──▶ Expired
//! ```
//!
//! Expiry is measured in timestamps: a session expires at `last_ts + keepalive`, where `last_ts`
//! is the BeginTxn's timestamp or the newest successful body's. Any operation with a timestamp at
//! or past that fails with `TRANSACTION_EXPIRED`, as does any operation on an unknown id. A
//! commit waits until every body append already in flight has finished.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_types::Timestamp;
use tokio::sync::watch;

use crate::WalError;

/// A callback run once when a transaction ends, however it ends.
pub(crate) type Cleanup = Box<dyn FnOnce() + Send>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    InFlight,
    OnCommit,
    OnRollback,
    Committed,
    RolledBack,
    Expired,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::InFlight => "in flight",
            State::OnCommit => "committing",
            State::OnRollback => "rolling back",
            State::Committed => "committed",
            State::RolledBack => "rolled back",
            State::Expired => "expired",
        }
    }

    fn ended(self) -> bool {
        matches!(self, State::Committed | State::RolledBack | State::Expired)
    }
}

struct Session {
    vchannel: Option<String>,
    /// `None` = never expires.
    keepalive: Option<Duration>,
    last_ts: Timestamp,
    state: State,
    inflight: watch::Sender<u32>,
    cleanups: Vec<Cleanup>,
}

impl Session {
    fn expires_at(&self) -> Timestamp {
        match self.keepalive {
            Some(k) => self.last_ts.saturating_add_duration(k),
            None => Timestamp::MAX,
        }
    }
}

/// What ended when sessions were expired or failed: their ids, and the cleanups to run (outside
/// any lock).
#[derive(Default)]
pub(crate) struct Ended {
    pub(crate) txn_ids: Vec<i64>,
    pub(crate) cleanups: Vec<Cleanup>,
}

impl Ended {
    fn take(&mut self, txn_id: i64, s: &mut Session) {
        self.txn_ids.push(txn_id);
        self.cleanups.append(&mut s.cleanups);
    }

    /// Runs the cleanups.
    pub(crate) fn run(self) -> Vec<i64> {
        for c in self.cleanups {
            c();
        }
        self.txn_ids
    }
}

/// Every session of one WAL.
pub(crate) struct TxnManager {
    sessions: Mutex<HashMap<i64, Session>>,
    default_keepalive: Duration,
    closing: std::sync::atomic::AtomicBool,
}

fn expired(txn_id: i64) -> WalError {
    WalError::TxnExpired { txn_id }
}

impl TxnManager {
    pub(crate) fn new(default_keepalive: Duration) -> TxnManager {
        TxnManager {
            sessions: Mutex::new(HashMap::new()),
            default_keepalive,
            closing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The keepalive a BeginTxn asking for `ms` gets: 0 = default, < 0 = infinite.
    pub(crate) fn keepalive_for(&self, ms: i64) -> Option<Duration> {
        match ms {
            0 => Some(self.default_keepalive),
            ms if ms < 0 => None,
            ms => Some(Duration::from_millis(ms.unsigned_abs())),
        }
    }

    /// Opens a session for a BeginTxn allocated at `ts`.
    pub(crate) fn begin(
        &self,
        txn_id: i64,
        vchannel: Option<String>,
        keepalive: Option<Duration>,
        ts: Timestamp,
    ) -> Result<(), WalError> {
        if self.closing.load(std::sync::atomic::Ordering::Acquire) {
            return Err(expired(txn_id));
        }
        self.sessions.lock().insert(
            txn_id,
            Session {
                vchannel,
                keepalive,
                last_ts: ts,
                state: State::InFlight,
                inflight: watch::Sender::new(0),
                cleanups: Vec::new(),
            },
        );
        Ok(())
    }

    /// Forgets a session whose BeginTxn was never written.
    pub(crate) fn begin_failed(&self, txn_id: i64) -> Ended {
        let mut ended = Ended::default();
        if let Some(mut s) = self.sessions.lock().remove(&txn_id) {
            ended.take(txn_id, &mut s);
        }
        ended
    }

    fn check_live(
        s: &mut Session,
        txn_id: i64,
        vchannel: Option<&str>,
        ts: Timestamp,
        operation: &'static str,
    ) -> Result<(), WalError> {
        if s.state == State::Expired {
            return Err(expired(txn_id));
        }
        if s.vchannel.as_deref() != vchannel {
            return Err(WalError::InvalidArgument(format!(
                "transaction {txn_id} is on vchannel {:?}, not {:?}",
                s.vchannel, vchannel
            )));
        }
        if s.state != State::InFlight {
            return Err(WalError::InvalidTxnState {
                txn_id,
                state: s.state.name(),
                operation,
            });
        }
        if ts >= s.expires_at() {
            s.state = State::Expired;
            return Err(expired(txn_id));
        }
        Ok(())
    }

    /// A body allocated at `ts` starts; counts it in flight. `cleanup` (e.g. releasing the
    /// segment reservation) runs when the transaction ends.
    pub(crate) fn body_start(
        &self,
        txn_id: i64,
        vchannel: Option<&str>,
        ts: Timestamp,
    ) -> Result<(), WalError> {
        let mut sessions = self.sessions.lock();
        let s = sessions.get_mut(&txn_id).ok_or_else(|| expired(txn_id))?;
        Self::check_live(s, txn_id, vchannel, ts, "append a body")?;
        s.inflight.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Registers a cleanup to run when the transaction ends. Runs it at once if the
    /// transaction is already gone.
    pub(crate) fn on_end(&self, txn_id: i64, cleanup: Cleanup) {
        let mut sessions = self.sessions.lock();
        match sessions.get_mut(&txn_id) {
            Some(s) if !s.state.ended() => s.cleanups.push(cleanup),
            _ => {
                drop(sessions);
                cleanup();
            }
        }
    }

    /// A body finished; on success its timestamp refreshes the keepalive.
    pub(crate) fn body_done(&self, txn_id: i64, ts: Timestamp, ok: bool) {
        if let Some(s) = self.sessions.lock().get_mut(&txn_id) {
            if ok && matches!(s.state, State::InFlight | State::OnCommit) {
                s.last_ts = s.last_ts.max(ts);
            }
            s.inflight.send_modify(|n| *n = n.saturating_sub(1));
        }
    }

    /// A CommitTxn (`commit = true`) or RollbackTxn allocated at `ts` starts. Returns a receiver
    /// that reaches 0 once every body in flight has finished; the caller waits on it before
    /// writing the commit.
    pub(crate) fn finish_start(
        &self,
        txn_id: i64,
        vchannel: Option<&str>,
        ts: Timestamp,
        commit: bool,
    ) -> Result<watch::Receiver<u32>, WalError> {
        let mut sessions = self.sessions.lock();
        let s = sessions.get_mut(&txn_id).ok_or_else(|| expired(txn_id))?;
        let op = if commit { "commit" } else { "roll back" };
        Self::check_live(s, txn_id, vchannel, ts, op)?;
        s.state = if commit {
            State::OnCommit
        } else {
            State::OnRollback
        };
        Ok(s.inflight.subscribe())
    }

    /// The commit or rollback was written (`ok`) or failed; the session ends either way.
    pub(crate) fn finish_done(&self, txn_id: i64, ok: bool) -> Ended {
        let mut ended = Ended::default();
        let mut sessions = self.sessions.lock();
        if let Some(mut s) = sessions.remove(&txn_id) {
            s.state = match (s.state, ok) {
                (State::OnCommit, true) => State::Committed,
                (State::OnRollback, true) => State::RolledBack,
                _ => State::Expired,
            };
            ended.take(txn_id, &mut s);
        }
        ended
    }

    /// Expires every in-flight session on `vchannel` (every session when `None`): an exclusive
    /// message completed there and no transaction may straddle it.
    pub(crate) fn fail_vchannel(&self, vchannel: Option<&str>) -> Ended {
        let mut ended = Ended::default();
        let mut sessions = self.sessions.lock();
        sessions.retain(|id, s| {
            let hit = vchannel.is_none() || s.vchannel.as_deref() == vchannel;
            if hit && s.state == State::InFlight {
                s.state = State::Expired;
                ended.take(*id, s);
                return false;
            }
            true
        });
        ended
    }

    /// Expires in-flight sessions whose keepalive passed by timetick `ts`.
    pub(crate) fn expire_up_to(&self, ts: Timestamp) -> Ended {
        let mut ended = Ended::default();
        self.sessions.lock().retain(|id, s| {
            if s.state == State::InFlight && ts >= s.expires_at() {
                s.state = State::Expired;
                ended.take(*id, s);
                return false;
            }
            true
        });
        ended
    }

    /// Stops accepting BeginTxn.
    pub(crate) fn start_closing(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Sessions not yet ended.
    pub(crate) fn open_count(&self) -> usize {
        self.sessions.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const VC: Option<&str> = Some("p_1v0");

    fn ts(ms: u64) -> Timestamp {
        Timestamp::from_parts(ms, 0).unwrap()
    }

    fn mgr() -> TxnManager {
        TxnManager::new(Duration::from_millis(100))
    }

    #[test]
    fn keepalive_defaults_and_infinite() {
        let m = mgr();
        assert_eq!(m.keepalive_for(0), Some(Duration::from_millis(100)));
        assert_eq!(m.keepalive_for(-1), None);
        assert_eq!(m.keepalive_for(5), Some(Duration::from_millis(5)));
    }

    #[test]
    fn body_after_keepalive_expires_the_session() {
        let m = mgr();
        m.begin(1, VC.map(Into::into), m.keepalive_for(0), ts(1000))
            .unwrap();
        m.body_start(1, VC, ts(1050)).unwrap();
        m.body_done(1, ts(1050), true);
        // The body refreshed the keepalive: 1050 + 100.
        m.body_start(1, VC, ts(1149)).unwrap();
        m.body_done(1, ts(1149), true);
        assert!(matches!(
            m.body_start(1, VC, ts(1249)),
            Err(WalError::TxnExpired { .. })
        ));
        assert!(matches!(
            m.finish_start(1, VC, ts(1250), true),
            Err(WalError::TxnExpired { .. })
        ));
    }

    #[test]
    fn wrong_state_and_unknown_ids() {
        let m = mgr();
        assert!(matches!(
            m.body_start(9, VC, ts(1)),
            Err(WalError::TxnExpired { txn_id: 9 })
        ));
        m.begin(2, VC.map(Into::into), None, ts(1)).unwrap();
        let _rx = m.finish_start(2, VC, ts(2), true).unwrap();
        assert!(matches!(
            m.body_start(2, VC, ts(3)),
            Err(WalError::InvalidTxnState { .. })
        ));
        assert!(matches!(
            m.finish_start(2, VC, ts(3), false),
            Err(WalError::InvalidTxnState { .. })
        ));
        assert!(matches!(
            m.body_start(2, Some("p_2v0"), ts(3)),
            Err(WalError::InvalidArgument(_))
        ));
        let ended = m.finish_done(2, true).run();
        assert_eq!(ended, [2]);
        assert!(matches!(
            m.body_start(2, VC, ts(4)),
            Err(WalError::TxnExpired { .. })
        ));
    }

    #[tokio::test]
    async fn commit_waits_for_bodies_in_flight() {
        let m = Arc::new(mgr());
        m.begin(3, VC.map(Into::into), None, ts(1)).unwrap();
        m.body_start(3, VC, ts(2)).unwrap();
        let mut rx = m.finish_start(3, VC, ts(3), true).unwrap();
        assert_eq!(*rx.borrow(), 1);
        let m2 = m.clone();
        let done = tokio::spawn(async move {
            rx.wait_for(|n| *n == 0).await.unwrap();
            m2.finish_done(3, true).run()
        });
        tokio::task::yield_now().await;
        assert!(!done.is_finished());
        m.body_done(3, ts(2), true);
        assert_eq!(done.await.unwrap(), [3]);
    }

    #[test]
    fn exclusive_message_fails_open_txns_and_runs_cleanups() {
        let m = mgr();
        let ran = Arc::new(AtomicUsize::new(0));
        m.begin(4, VC.map(Into::into), None, ts(1)).unwrap();
        m.begin(5, Some("p_2v0".into()), None, ts(1)).unwrap();
        let r = ran.clone();
        m.on_end(
            4,
            Box::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
            }),
        );
        assert_eq!(m.fail_vchannel(VC).run(), [4]);
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert!(matches!(
            m.body_start(4, VC, ts(2)),
            Err(WalError::TxnExpired { .. })
        ));
        m.body_start(5, Some("p_2v0"), ts(2)).unwrap();
        let mut all = m.fail_vchannel(None).run();
        all.sort();
        assert_eq!(all, [5]);
        assert_eq!(m.open_count(), 0);
    }

    #[test]
    fn timetick_expires_idle_sessions() {
        let m = mgr();
        m.begin(6, VC.map(Into::into), m.keepalive_for(0), ts(1000))
            .unwrap();
        m.begin(7, VC.map(Into::into), None, ts(1000)).unwrap();
        assert!(m.expire_up_to(ts(1099)).run().is_empty());
        assert_eq!(m.expire_up_to(ts(1100)).run(), [6]);
        assert_eq!(m.open_count(), 1);
        m.start_closing();
        assert!(matches!(
            m.begin(8, None, None, ts(2000)),
            Err(WalError::TxnExpired { .. })
        ));
    }
}
