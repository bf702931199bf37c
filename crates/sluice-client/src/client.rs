//! The client: routing, wait-for-ready and retries, transactions, resumable reads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sluice_types::backoff::Backoff;
use sluice_types::message::{BeginTxnHeader, CommitTxnHeader, RollbackTxnHeader, TxnContext};
use sluice_types::{
    AppendResult, ConsumeOptions, DeliverPolicy, ErrorCode, MessageFilter, MessageId, MessageType,
    MutableMessage, PChannel, ReadMessage, Term, Timestamp, VChannel,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use crate::access::{WalAccess, pchannel_of};
use crate::sequence::Sequencer;
use crate::{Assignment, ClientError, TopologySource};

/// Retry and wait settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// First wait after a failure (doubles up to `backoff_max`). Default 100 ms.
    pub backoff_initial: Duration,
    /// Longest wait between attempts. Default 10 s.
    pub backoff_max: Duration,
    /// Give up an append (or a read's reconnect) after this long; `None` waits forever, like
    /// the reference client. Default `None`.
    pub timeout: Option<Duration>,
    /// Exactly-once appends: number every append that is not part of a transaction with this
    /// client's producer id and a sequence number, so a retry after a failover or a lost
    /// acknowledgement is not appended twice (the WAL returns the original's result). Default
    /// true.
    pub idempotent: bool,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            timeout: None,
            idempotent: true,
        }
    }
}

/// The Sluice client (cheap to clone).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

struct Inner {
    topology: Arc<dyn TopologySource>,
    access: Arc<dyn WalAccess>,
    config: ClientConfig,
    /// Numbers exactly-once appends (producer ids and sequences, per pchannel).
    sequencer: Sequencer,
}

/// A random non-zero producer id: SipHash keyed from the OS's randomness (std's `RandomState`)
/// over the time and the process id.
fn producer_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(now);
    h.write_u32(std::process::id());
    h.finish().max(1)
}

/// What to read.
#[derive(Clone, Debug)]
pub struct ReadRequest {
    /// The pchannel.
    pub pchannel: PChannel,
    /// Only this vchannel (timeticks of the pchannel still pass); `None` = the whole pchannel.
    pub vchannel: Option<VChannel>,
    /// Where to start.
    pub policy: DeliverPolicy,
    /// Conditions on every message.
    pub filters: Vec<MessageFilter>,
}

impl ReadRequest {
    /// Everything of one vchannel from the start of the log.
    pub fn vchannel(vchannel: &VChannel) -> ReadRequest {
        ReadRequest {
            pchannel: vchannel.pchannel(),
            vchannel: Some(vchannel.clone()),
            policy: DeliverPolicy::All,
            filters: Vec::new(),
        }
    }

    /// Everything of one pchannel from the start of the log.
    pub fn pchannel(pchannel: &PChannel) -> ReadRequest {
        ReadRequest {
            pchannel: pchannel.clone(),
            vchannel: None,
            policy: DeliverPolicy::All,
            filters: Vec::new(),
        }
    }
}

impl Client {
    /// A client over a topology source and a way to reach WALs.
    pub fn new(
        topology: Arc<dyn TopologySource>,
        access: Arc<dyn WalAccess>,
        config: ClientConfig,
    ) -> Client {
        Client {
            inner: Arc::new(Inner {
                topology,
                access,
                config,
                sequencer: Sequencer::new(producer_id),
            }),
        }
    }

    /// The current owner of `pchannel`, waiting until it has one with a term above `above`
    /// (if given). When `above` is given and `patience` passes first, the current owner is
    /// returned anyway (so the caller retries it).
    async fn wait_assignment(
        &self,
        pchannel: &PChannel,
        above: Option<Term>,
        patience: Duration,
        deadline: Option<Instant>,
    ) -> Result<Assignment, ClientError> {
        let mut rx = self.inner.topology.subscribe();
        let patience_end = Instant::now() + patience;
        loop {
            let current = rx
                .borrow_and_update()
                .channels
                .get(pchannel.as_str())
                .cloned();
            if let Some(a) = &current
                && (above.is_none_or(|t| a.term > t) || Instant::now() >= patience_end)
            {
                return Ok(a.clone());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(ClientError::new(
                    ErrorCode::Unknown,
                    format!("timed out waiting for an owner of pchannel {pchannel}"),
                ));
            }
            let mut wake = patience_end;
            if let Some(d) = deadline {
                wake = wake.min(d);
            }
            if current.is_none() && wake <= Instant::now() {
                // Nothing to retry: wait for the topology (or the deadline) only.
                wake = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() {
                    return Err(ClientError::new(ErrorCode::OnShutdown, "the topology source closed"));
                },
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.inner.config.timeout.map(|t| Instant::now() + t)
    }

    /// Resolves once the topology shows `pchannel` at a term above `term`; never if the
    /// topology source closes first.
    async fn moved_past(&self, pchannel: &PChannel, term: Term) {
        let mut rx = self.inner.topology.subscribe();
        let moved = rx
            .wait_for(|t| {
                t.channels
                    .get(pchannel.as_str())
                    .is_some_and(|a| a.term > term)
            })
            .await
            .is_ok();
        if !moved {
            std::future::pending::<()>().await;
        }
    }

    /// Appends `msg` to its vchannel's WAL, waiting for an owner and retrying across failovers
    /// (at-least-once). Returns once the message is durable.
    pub async fn append(&self, mut msg: MutableMessage) -> Result<AppendResult, ClientError> {
        let pchannel = pchannel_of(&msg)?;
        // Held until the append is answered (or given up): see `sequence`.
        let _ticket = if self.inner.config.idempotent && numberable(&msg) {
            let t = self.inner.sequencer.take(&pchannel).await;
            msg.set_producer(t.producer, t.sequence);
            Some(t)
        } else {
            None
        };
        let deadline = self.deadline();
        let mut backoff = Backoff::new(
            self.inner.config.backoff_initial,
            self.inner.config.backoff_max,
        );
        let mut above = None;
        // The last retryable error: what the caller gets if the deadline passes while retrying.
        let mut last: Option<ClientError> = None;
        loop {
            let target = self
                .wait_assignment(&pchannel, above, backoff.current(), deadline)
                .await?;
            // An owner that hangs (alive but cut off, say) never answers: the attempt also ends
            // when the topology moves the pchannel past its term (outcome unknown: retried on
            // the new owner, at-least-once) or when the deadline passes.
            let err = tokio::select! {
                r = self.inner.access.append(&target, msg.clone()) => match r {
                    Ok(r) => return Ok(r),
                    Err(e) => e,
                },
                () = self.moved_past(&pchannel, target.term) => moved_error(&pchannel, target.term),
                () = sleep_until_deadline(deadline) => {
                    return Err(last.take().unwrap_or_else(|| ClientError::new(
                        ErrorCode::Unknown,
                        format!("timed out appending to pchannel {pchannel} at term {}", target.term),
                    )));
                }
            };
            if !err.retryable() {
                return Err(err);
            }
            // Out of time, or the next wait would end past the deadline: the caller gets this
            // error (e.g. RESOURCE_EXHAUSTED), not a bare timeout.
            if deadline.is_some_and(|d| Instant::now() + backoff.current() >= d) {
                return Err(err);
            }
            tracing::debug!(%pchannel, term = %target.term, error = %err, "append failed; retrying");
            if err.is_wrong_node() {
                self.inner
                    .topology
                    .report_error(&pchannel, target.term, err.code, &err.message)
                    .await;
                above = Some(target.term);
            } else if err.code == ErrorCode::Unknown || err.code == ErrorCode::OnShutdown {
                // The node is unreachable or closing: most likely it is being replaced.
                above = Some(target.term);
            } else {
                tokio::time::sleep(backoff.current()).await;
                above = None;
            }
            last = Some(err);
            backoff.advance();
        }
    }

    /// Opens a transaction on `vchannel`; it expires when idle for `keepalive` (zero = the
    /// WAL's default).
    pub async fn begin_txn(
        &self,
        vchannel: &VChannel,
        keepalive: Duration,
    ) -> Result<Txn, ClientError> {
        let begin = MutableMessage::builder(BeginTxnHeader {
            keepalive_milliseconds: keepalive.as_millis().min(i64::MAX as u128) as i64,
        })
        .vchannel(vchannel)
        .build()?;
        let result = self.append(begin).await?;
        let ctx = result.txn.ok_or_else(|| {
            ClientError::new(
                ErrorCode::Inner,
                "BeginTxn was acknowledged without a transaction",
            )
        })?;
        Ok(Txn {
            client: self.clone(),
            vchannel: vchannel.clone(),
            ctx,
        })
    }

    /// Appends several messages: those of one vchannel as one transaction (every message gets
    /// the commit's result; an expired transaction is retried whole), different vchannels
    /// concurrently and independently. Results are in input order.
    pub async fn append_messages(
        &self,
        msgs: Vec<MutableMessage>,
    ) -> Result<Vec<AppendResult>, ClientError> {
        let mut groups: BTreeMap<String, Vec<(usize, MutableMessage)>> = BTreeMap::new();
        for (i, m) in msgs.into_iter().enumerate() {
            let v = m.vchannel()?.ok_or_else(|| {
                ClientError::new(ErrorCode::InvalidArgument, "every message needs a vchannel")
            })?;
            groups
                .entry(v.as_str().to_owned())
                .or_default()
                .push((i, m));
        }
        let n = groups.values().map(Vec::len).sum();
        let runs = groups.into_values().map(|group| self.append_group(group));
        let mut out: Vec<Option<AppendResult>> = vec![None; n];
        for group in futures::future::join_all(runs).await {
            for (i, r) in group? {
                out[i] = Some(r);
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    async fn append_group(
        &self,
        group: Vec<(usize, MutableMessage)>,
    ) -> Result<Vec<(usize, AppendResult)>, ClientError> {
        if group.len() == 1 {
            let (i, m) = group.into_iter().next().expect("one message");
            return Ok(vec![(i, self.append(m).await?)]);
        }
        let vchannel = group[0].1.vchannel()?.expect("grouped by vchannel");
        loop {
            let txn = self.begin_txn(&vchannel, Duration::ZERO).await?;
            let bodies = group.iter().map(|(_, m)| txn.append(m.clone()));
            let results = futures::future::join_all(bodies).await;
            if let Some(err) = results.into_iter().find_map(Result::err) {
                let _ = txn.rollback().await;
                if err.code == ErrorCode::TransactionExpired {
                    continue;
                }
                return Err(err);
            }
            match txn.commit().await {
                Ok(r) => return Ok(group.iter().map(|(i, _)| (*i, r.clone())).collect()),
                Err(e) if e.code == ErrorCode::TransactionExpired => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// A resumable reader: it survives failovers, resuming from the last delivered message's
    /// last-confirmed id with a timestamp filter (no gap, no duplicate). It reads ahead a
    /// bounded amount; a slow consumer slows the read.
    pub fn read(&self, request: ReadRequest) -> Reader {
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(read_loop(self.clone(), request, tx));
        Reader {
            rx,
            _task: AbortOnDropHandle::new(task),
        }
    }
}

/// Whether `msg` can carry a producer sequence: not yet numbered, and not a transaction's.
fn numberable(msg: &MutableMessage) -> bool {
    matches!(msg.producer(), Ok(None))
        && matches!(msg.txn_context(), Ok(None))
        && !matches!(
            msg.message_type(),
            Ok(MessageType::BeginTxn | MessageType::CommitTxn | MessageType::RollbackTxn)
        )
}

/// The error of an attempt abandoned because `pchannel` moved past `term` meanwhile.
fn moved_error(pchannel: &PChannel, term: Term) -> ClientError {
    ClientError::new(
        ErrorCode::Unknown,
        format!("pchannel {pchannel} moved past term {term} while the call was in flight"),
    )
}

/// Resolves at `deadline`, or never without one.
async fn sleep_until_deadline(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Messages from a [`Client::read`], in timestamp order.
pub struct Reader {
    rx: mpsc::Receiver<Result<ReadMessage, ClientError>>,
    _task: AbortOnDropHandle<()>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").finish_non_exhaustive()
    }
}

impl Reader {
    /// The next message; an `Err` is terminal (bad request or unrecoverable).
    pub async fn next(&mut self) -> Option<Result<ReadMessage, ClientError>> {
        self.rx.recv().await
    }
}

async fn read_loop(
    client: Client,
    request: ReadRequest,
    tx: mpsc::Sender<Result<ReadMessage, ClientError>>,
) {
    let config = client.inner.config.clone();
    let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
    let mut above = None;
    // (last-confirmed id, timestamp) of the last data message delivered.
    let mut last: Option<(MessageId, Timestamp)> = None;
    loop {
        let deadline = client.deadline();
        let target = match client
            .wait_assignment(&request.pchannel, above, backoff.current(), deadline)
            .await
        {
            Ok(t) => t,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let mut filters = request.filters.clone();
        let policy = match last {
            Some((lc, ts)) => {
                filters.push(MessageFilter::TimeTickGt(ts));
                DeliverPolicy::StartFrom(lc)
            }
            None => request.policy,
        };
        let options = ConsumeOptions {
            vchannel: request.vchannel.clone(),
            policy,
            filters,
        };
        // A stream from an owner that hangs would never end: it is dropped once the topology
        // moves the pchannel past its term, and the read resumes on the new owner.
        let moved = client.moved_past(&request.pchannel, target.term);
        tokio::pin!(moved);
        let opened = tokio::select! {
            r = client.inner.access.read(&target, options) => r,
            () = &mut moved => Err(moved_error(&request.pchannel, target.term)),
        };
        let err = match opened {
            Ok(mut stream) => loop {
                let next = tokio::select! {
                    next = stream.next() => next,
                    () = &mut moved => break moved_error(&request.pchannel, target.term),
                };
                match next {
                    Some(Ok(m)) => {
                        backoff.reset();
                        if !m.is_timetick()
                            && let (Ok(Some(lc)), Some(ts)) = (m.last_confirmed(), m.timestamp())
                        {
                            last = Some((lc, ts));
                        }
                        if tx.send(Ok(m)).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => break e,
                    None => break ClientError::new(ErrorCode::OnShutdown, "the read stream ended"),
                }
            },
            Err(e) => e,
        };
        if !err.retryable() {
            let _ = tx.send(Err(err)).await;
            return;
        }
        tracing::debug!(pchannel = %request.pchannel, error = %err, "read interrupted; resuming");
        if err.is_wrong_node() {
            client
                .inner
                .topology
                .report_error(&request.pchannel, target.term, err.code, &err.message)
                .await;
        }
        above = Some(target.term);
        if err.code != ErrorCode::ChannelNotExist && err.code != ErrorCode::UnmatchedChannelTerm {
            tokio::time::sleep(backoff.current().min(Duration::from_millis(200))).await;
        }
        backoff.advance();
    }
}

/// An open transaction on one vchannel.
pub struct Txn {
    client: Client,
    vchannel: VChannel,
    ctx: TxnContext,
}

impl std::fmt::Debug for Txn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Txn").finish_non_exhaustive()
    }
}

impl Txn {
    /// The transaction's context.
    pub fn context(&self) -> TxnContext {
        self.ctx
    }

    /// Appends an Insert or Delete of the transaction's vchannel as part of it.
    pub async fn append(&self, mut msg: MutableMessage) -> Result<AppendResult, ClientError> {
        if msg.vchannel()?.as_ref() != Some(&self.vchannel) {
            return Err(ClientError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "a transaction on {} only takes messages of that vchannel",
                    self.vchannel
                ),
            ));
        }
        msg.set_txn_context(self.ctx);
        self.client.append(msg).await
    }

    /// Commits; the result is the commit's (its timestamp is the transaction's).
    pub async fn commit(self) -> Result<AppendResult, ClientError> {
        let mut msg = MutableMessage::builder(CommitTxnHeader::default())
            .vchannel(&self.vchannel)
            .build()?;
        msg.set_txn_context(self.ctx);
        self.client.append(msg).await
    }

    /// Rolls back.
    pub async fn rollback(self) -> Result<AppendResult, ClientError> {
        let mut msg = MutableMessage::builder(RollbackTxnHeader::default())
            .vchannel(&self.vchannel)
            .build()?;
        msg.set_txn_context(self.ctx);
        self.client.append(msg).await
    }
}
