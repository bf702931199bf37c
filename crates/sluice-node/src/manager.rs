//! The WAL manager: one WAL per pchannel assigned to this node.
//!
//! # Contract
//!
//! * Transitions of one pchannel (assign, remove, shutdown) are serialized and ordered by term:
//!   the manager remembers the highest term it has seen for each pchannel, and a request with a
//!   lower term is [`NodeError::Ignored`] (`IGNORED_OPERATION`) and changes nothing.
//! * `assign(p, t)` opens the WAL at `t` (which fences every older term in the log backend),
//!   recovers it, and returns once it accepts appends. Assigning the term already open is a
//!   no-op; assigning a higher term closes the WAL at the older term first.
//! * `remove(p, t)` closes the WAL gracefully (open transactions get a bounded wait, then appends
//!   are refused). No WAL here is [`NodeError::ChannelNotExist`], another term
//!   [`NodeError::UnmatchedTerm`]; the coordinator counts both as removed.
//! * `wal(p, t)` is what producers and consumers use: it fails with `CHANNEL_NOT_EXIST`,
//!   `UNMATCHED_CHANNEL_TERM`, or `CHANNEL_FENCED` when the WAL here lost its fence.
//! * Transitions of different pchannels run concurrently.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use sluice_log::LogProvider;
use sluice_storage::flusher::{Flusher, StorageConfig};
use sluice_types::{PChannel, Term};
use sluice_wal::{Wal, WalConfig, WalDeps, WalError};

use crate::NodeError;
use crate::compactor::{CompactionConfig, Compactor};
use crate::query::{QueryFeed, QueryHost};

/// One pchannel's slot: the transition lock and what is open.
#[derive(Default)]
struct Slot {
    /// Held for the whole of a transition.
    transition: tokio::sync::Mutex<()>,
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    /// The highest term any request named.
    highest: Term,
    wal: Option<Wal>,
    /// Flushes the open WAL's segments to the recovery storage.
    flusher: Option<Flusher>,
    /// Feeds the open WAL's query delegators.
    feed: Option<QueryFeed>,
    /// Compacts the open WAL's sealed segments.
    compactor: Option<Compactor>,
}

/// What runs beside an open WAL.
#[derive(Default)]
struct Companions {
    flusher: Option<Flusher>,
    feed: Option<QueryFeed>,
    compactor: Option<Compactor>,
}

/// Closes a WAL, then stops its flusher (whatever it did not flush stays in the log) and its
/// query delegators.
async fn close(wal: Wal, companions: Companions) {
    if let Some(c) = companions.compactor {
        c.stop().await;
    }
    wal.close().await;
    if let Some(f) = companions.feed {
        f.stop().await;
    }
    if let Some(f) = companions.flusher {
        f.stop().await;
    }
}

impl SlotState {
    fn take(&mut self) -> (Option<Wal>, Companions) {
        (
            self.wal.take(),
            Companions {
                flusher: self.flusher.take(),
                feed: self.feed.take(),
                compactor: self.compactor.take(),
            },
        )
    }
}

/// The status of one WAL on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalInfo {
    /// The pchannel.
    pub pchannel: PChannel,
    /// The term it is open at.
    pub term: Term,
    /// Whether it accepts appends (false once fenced).
    pub available: bool,
}

/// The WALs of one node.
pub struct WalManager {
    provider: Arc<dyn LogProvider>,
    config: WalConfig,
    deps: WalDeps,
    storage: Option<Arc<StorageConfig>>,
    query: Option<Arc<QueryHost>>,
    compaction: CompactionConfig,
    /// Compactions asked for (followed from the first WAL opened with storage on).
    compaction_requests: std::sync::OnceLock<crate::compactor::Requests>,
    /// The storage's garbage collection (from the first WAL opened with storage on).
    gc: std::sync::OnceLock<crate::compactor::Gc>,
    slots: Mutex<HashMap<PChannel, Arc<Slot>>>,
    shutting_down: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for WalManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalManager").finish_non_exhaustive()
    }
}

impl WalManager {
    /// A manager opening WALs on `provider` with `config` and `deps`.
    pub fn new(provider: Arc<dyn LogProvider>, config: WalConfig, deps: WalDeps) -> WalManager {
        WalManager {
            provider,
            config,
            deps,
            storage: None,
            query: None,
            compaction: CompactionConfig::default(),
            compaction_requests: std::sync::OnceLock::new(),
            gc: std::sync::OnceLock::new(),
            slots: Mutex::new(HashMap::new()),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Every WAL this manager opens gets a flusher writing to `storage`.
    pub fn with_storage(mut self, storage: Arc<StorageConfig>) -> WalManager {
        self.storage = Some(storage);
        self
    }

    /// Every WAL this manager opens with storage compacts its segments with `config`.
    pub fn with_compaction(mut self, config: CompactionConfig) -> WalManager {
        self.compaction = config;
        self
    }

    /// Every WAL this manager opens feeds query delegators on `host`.
    pub fn with_query(mut self, host: Arc<QueryHost>) -> WalManager {
        self.query = Some(host);
        self
    }

    /// The query delegators here, if any.
    pub fn query(&self) -> Option<&Arc<QueryHost>> {
        self.query.as_ref()
    }

    fn slot(&self, pchannel: &PChannel) -> Arc<Slot> {
        self.slots
            .lock()
            .entry(pchannel.clone())
            .or_default()
            .clone()
    }

    fn check_running(&self) -> Result<(), NodeError> {
        if self
            .shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(NodeError::Shutdown);
        }
        Ok(())
    }

    /// Opens the WAL of `pchannel` at `term` and returns once it accepts appends.
    pub async fn assign(&self, pchannel: &PChannel, term: Term) -> Result<(), NodeError> {
        self.check_running()?;
        let slot = self.slot(pchannel);
        let _transition = slot.transition.lock().await;
        self.check_running()?;
        let old = {
            let mut state = slot.state.lock();
            if term < state.highest {
                return Err(NodeError::Ignored {
                    pchannel: pchannel.clone(),
                    requested: term,
                    seen: state.highest,
                });
            }
            if let Some(wal) = &state.wal
                && wal.term() == term
                && wal.is_available()
            {
                return Ok(());
            }
            state.highest = term;
            state.take()
        };
        if let (Some(old), companions) = old {
            tracing::info!(%pchannel, old_term = %old.term(), new_term = %term, "closing the WAL at the older term");
            close(old, companions).await;
        }
        let started = std::time::Instant::now();
        let wal = Wal::open(
            self.provider.as_ref(),
            pchannel.clone(),
            term,
            self.config.clone(),
            self.deps.clone(),
        )
        .await?;
        tracing::info!(%pchannel, %term, elapsed_ms = started.elapsed().as_millis() as u64, "WAL open");
        metrics::counter!("sluice_node_wal_opens_total", "pchannel" => pchannel.as_str().to_owned())
            .increment(1);
        metrics::histogram!("sluice_node_wal_open_seconds", "pchannel" => pchannel.as_str().to_owned())
            .record(started.elapsed().as_secs_f64());
        let flusher = self
            .storage
            .as_ref()
            .map(|s| Flusher::start(wal.clone(), s.clone()));
        let feed = self.query.as_ref().map(|q| q.serve(wal.clone()));
        let compactor = self.storage.as_ref().map(|s| {
            let requests = self
                .compaction_requests
                .get_or_init(|| crate::compactor::requests(s))
                .clone();
            self.gc
                .get_or_init(|| crate::compactor::Gc::start(s.clone(), &self.compaction));
            Compactor::start(
                wal.clone(),
                s.clone(),
                self.query.clone(),
                self.compaction.clone(),
                requests,
            )
        });
        {
            let mut state = slot.state.lock();
            state.wal = Some(wal);
            state.flusher = flusher;
            state.feed = feed;
            state.compactor = compactor;
        }
        metrics::gauge!("sluice_node_wals").set(self.status().len() as f64);
        Ok(())
    }

    /// Closes the WAL of `pchannel` at `term`.
    pub async fn remove(&self, pchannel: &PChannel, term: Term) -> Result<(), NodeError> {
        let slot = self.slot(pchannel);
        let _transition = slot.transition.lock().await;
        let wal = {
            let mut state = slot.state.lock();
            state.highest = state.highest.max(term);
            match &state.wal {
                None => return Err(NodeError::ChannelNotExist(pchannel.clone())),
                Some(wal) if wal.term() != term => {
                    return Err(NodeError::UnmatchedTerm {
                        pchannel: pchannel.clone(),
                        requested: term,
                        current: wal.term(),
                    });
                }
                Some(_) => state.take(),
            }
        };
        if let (Some(wal), companions) = wal {
            close(wal, companions).await;
            tracing::info!(%pchannel, %term, "WAL removed");
            metrics::counter!("sluice_node_wal_removes_total", "pchannel" => pchannel.as_str().to_owned())
                .increment(1);
            metrics::gauge!("sluice_node_wals").set(self.status().len() as f64);
        }
        Ok(())
    }

    /// The WAL of `pchannel` if it is open here at `term` (`None`: whatever term is open) and
    /// still available.
    pub fn wal(&self, pchannel: &PChannel, term: Option<Term>) -> Result<Wal, NodeError> {
        self.check_running()?;
        let slot = self
            .slots
            .lock()
            .get(pchannel)
            .cloned()
            .ok_or_else(|| NodeError::ChannelNotExist(pchannel.clone()))?;
        let state = slot.state.lock();
        let wal = state
            .wal
            .as_ref()
            .ok_or_else(|| NodeError::ChannelNotExist(pchannel.clone()))?;
        if let Some(term) = term
            && wal.term() != term
        {
            return Err(NodeError::UnmatchedTerm {
                pchannel: pchannel.clone(),
                requested: term,
                current: wal.term(),
            });
        }
        if !wal.is_available() {
            return Err(NodeError::Wal(WalError::Fenced {
                pchannel: pchannel.clone(),
                term: wal.term(),
            }));
        }
        Ok(wal.clone())
    }

    /// Every WAL open here.
    pub fn status(&self) -> Vec<WalInfo> {
        let slots: Vec<_> = self.slots.lock().values().cloned().collect();
        let mut out: Vec<WalInfo> = slots
            .iter()
            .filter_map(|slot| {
                let state = slot.state.lock();
                state.wal.as_ref().map(|wal| WalInfo {
                    pchannel: wal.pchannel().clone(),
                    term: wal.term(),
                    available: wal.is_available(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.pchannel.as_str().cmp(b.pchannel.as_str()));
        out
    }

    /// Bytes the write-ahead buffers of the open WALs hold now.
    pub fn buffered_bytes(&self) -> u64 {
        let slots: Vec<_> = self.slots.lock().values().cloned().collect();
        slots
            .iter()
            .filter_map(|slot| slot.state.lock().wal.as_ref().map(Wal::buffer_bytes))
            .sum()
    }

    /// Refuses new work and closes every WAL gracefully.
    pub async fn shutdown(&self) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::Release);
        let slots: Vec<_> = self.slots.lock().values().cloned().collect();
        for slot in slots {
            let _transition = slot.transition.lock().await;
            let (wal, companions) = slot.state.lock().take();
            if let Some(wal) = wal {
                close(wal, companions).await;
            }
        }
    }
}
