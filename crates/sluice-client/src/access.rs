//! How the client reaches a WAL once it knows the owner: over gRPC, or directly when the owning
//! node runs in this process.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use sluice_log::DeliverPolicy;
use sluice_node::WalManager;
use sluice_proto::convert;
use sluice_proto::v1::{
    self, consume_response, deliver_filter, deliver_policy, produce_appended, produce_request,
    produce_response, streaming_node_client::StreamingNodeClient,
};
use sluice_types::message::TxnContext;
use sluice_types::{ErrorCode, MutableMessage, PChannel, Term, Timestamp};
use sluice_wal::AppendResult;
use sluice_wal::scanner::{MessageFilter, ReadMessage, ScannerOptions};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::{AbortOnDrop, Assignment, ClientError};

/// Ordered messages from one read.
pub type MessageStream = Pin<Box<dyn Stream<Item = Result<ReadMessage, ClientError>> + Send>>;

/// Appends to and reads from the WAL an [`Assignment`] names.
#[async_trait]
pub trait WalAccess: Send + Sync + 'static {
    /// Appends one message to the WAL of `target` (at exactly its term).
    async fn append(
        &self,
        target: &Assignment,
        msg: MutableMessage,
    ) -> Result<AppendResult, ClientError>;

    /// Reads the WAL of `target`.
    async fn read(
        &self,
        target: &Assignment,
        options: ScannerOptions,
    ) -> Result<MessageStream, ClientError>;
}

/// Reaches nodes over gRPC; one `Produce` stream per pchannel carries every append to it.
#[derive(Default)]
pub struct RemoteAccess {
    channels: Mutex<HashMap<String, Channel>>,
    producers: Mutex<HashMap<String, Arc<RemoteProducer>>>,
}

impl RemoteAccess {
    /// A client with no connections yet.
    pub fn new() -> RemoteAccess {
        RemoteAccess::default()
    }

    fn channel(&self, address: &str) -> Result<Channel, ClientError> {
        if let Some(c) = self.channels.lock().get(address) {
            return Ok(c.clone());
        }
        let channel = sluice_proto::lazy_channel(address)
            .map_err(|e| ClientError::new(ErrorCode::InvalidArgument, e))?;
        self.channels
            .lock()
            .insert(address.to_owned(), channel.clone());
        Ok(channel)
    }

    fn node(&self, address: &str) -> Result<StreamingNodeClient<Channel>, ClientError> {
        Ok(StreamingNodeClient::new(self.channel(address)?)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20))
    }

    async fn producer(&self, target: &Assignment) -> Result<Arc<RemoteProducer>, ClientError> {
        let key = target.pchannel.as_str();
        if let Some(p) = self.producers.lock().get(key)
            && p.term == target.term
            && p.address == target.address
            && p.alive()
        {
            return Ok(p.clone());
        }
        let fresh = Arc::new(RemoteProducer::open(self.node(&target.address)?, target).await?);
        let mut producers = self.producers.lock();
        // Another caller may have opened one meanwhile; keep whichever is alive and current.
        if let Some(p) = producers.get(key)
            && p.term == target.term
            && p.address == target.address
            && p.alive()
        {
            return Ok(p.clone());
        }
        producers.insert(key.to_owned(), fresh.clone());
        Ok(fresh)
    }
}

#[async_trait]
impl WalAccess for RemoteAccess {
    async fn append(
        &self,
        target: &Assignment,
        msg: MutableMessage,
    ) -> Result<AppendResult, ClientError> {
        self.producer(target).await?.append(msg).await
    }

    async fn read(
        &self,
        target: &Assignment,
        options: ScannerOptions,
    ) -> Result<MessageStream, ClientError> {
        let request = consume_request(target, &options);
        let stream = self
            .node(&target.address)?
            .consume(request)
            .await
            .map_err(|s| ClientError::from_status(&s))?
            .into_inner();
        Ok(Box::pin(stream.map(|item| match item {
            Ok(response) => read_from_wire(response),
            Err(status) => Err(ClientError::from_status(&status)),
        })))
    }
}

type Pending = HashMap<u64, oneshot::Sender<Result<AppendResult, ClientError>>>;

/// One `Produce` stream. Dead (and replaced on next use) once the server closed it or it broke.
struct RemoteProducer {
    term: Term,
    address: String,
    tx: mpsc::Sender<v1::ProduceRequest>,
    /// `None` once the stream ended.
    pending: Arc<Mutex<Option<Pending>>>,
    next_request: AtomicU64,
    _receiver: AbortOnDrop,
}

impl RemoteProducer {
    async fn open(
        mut node: StreamingNodeClient<Channel>,
        target: &Assignment,
    ) -> Result<RemoteProducer, ClientError> {
        let (tx, rx) = mpsc::channel(1024);
        let open = v1::ProduceRequest {
            request: Some(produce_request::Request::Open(v1::ProduceOpen {
                pchannel: Some(convert::pchannel_to_wire(&target.pchannel, target.term)),
            })),
        };
        tx.send(open)
            .await
            .map_err(|_| ClientError::new(ErrorCode::Unknown, "producer request queue closed"))?;
        let mut responses = node
            .produce(ReceiverStream::new(rx))
            .await
            .map_err(|s| ClientError::from_status(&s))?
            .into_inner();
        match responses.message().await {
            Ok(Some(v1::ProduceResponse {
                response: Some(produce_response::Response::Opened(_)),
            })) => {}
            Ok(other) => {
                return Err(ClientError::new(
                    ErrorCode::InvalidRequestSeq,
                    format!("producer open answered with {other:?}"),
                ));
            }
            Err(status) => return Err(ClientError::from_status(&status)),
        }
        let pending: Arc<Mutex<Option<Pending>>> = Arc::new(Mutex::new(Some(HashMap::new())));
        let receiver = tokio::spawn(receive(responses, pending.clone()));
        Ok(RemoteProducer {
            term: target.term,
            address: target.address.clone(),
            tx,
            pending,
            next_request: AtomicU64::new(1),
            _receiver: AbortOnDrop(receiver.abort_handle()),
        })
    }

    fn alive(&self) -> bool {
        self.pending.lock().is_some()
    }

    async fn append(&self, msg: MutableMessage) -> Result<AppendResult, ClientError> {
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (done_tx, done_rx) = oneshot::channel();
        match self.pending.lock().as_mut() {
            Some(p) => {
                p.insert(request_id, done_tx);
            }
            None => return Err(closed_error()),
        }
        let request = v1::ProduceRequest {
            request: Some(produce_request::Request::Append(v1::ProduceAppend {
                request_id,
                message: Some(convert::message_to_wire(&msg)),
                barrier_timestamp: 0,
            })),
        };
        if self.tx.send(request).await.is_err() {
            if let Some(p) = self.pending.lock().as_mut() {
                p.remove(&request_id);
            }
            return Err(closed_error());
        }
        done_rx.await.unwrap_or_else(|_| Err(closed_error()))
    }
}

fn closed_error() -> ClientError {
    ClientError::new(ErrorCode::OnShutdown, "the producer stream closed")
}

/// Resolves appends as responses arrive; on the end of the stream fails what is left (the
/// outcome of those appends is unknown, so the caller retries: at-least-once).
async fn receive(
    mut responses: tonic::Streaming<v1::ProduceResponse>,
    pending: Arc<Mutex<Option<Pending>>>,
) {
    let reason = loop {
        match responses.message().await {
            Ok(Some(v1::ProduceResponse {
                response: Some(produce_response::Response::Appended(a)),
            })) => {
                let done = pending
                    .lock()
                    .as_mut()
                    .and_then(|p| p.remove(&a.request_id));
                if let Some(done) = done {
                    let _ = done.send(append_outcome(a.outcome));
                }
            }
            Ok(Some(v1::ProduceResponse {
                response: Some(produce_response::Response::Closed(c)),
            })) => {
                break c.reason.map_or_else(closed_error, |r| {
                    ClientError::new(ErrorCode::from_number(r.code), r.cause)
                });
            }
            Ok(Some(_)) => continue,
            Ok(None) => break closed_error(),
            Err(status) => break ClientError::from_status(&status),
        }
    };
    let left = pending.lock().take().unwrap_or_default();
    for (_, done) in left {
        let _ = done.send(Err(reason.clone()));
    }
}

fn append_outcome(outcome: Option<produce_appended::Outcome>) -> Result<AppendResult, ClientError> {
    match outcome {
        Some(produce_appended::Outcome::Result(r)) => append_result_from_wire(r),
        Some(produce_appended::Outcome::Error(e)) => {
            Err(ClientError::new(ErrorCode::from_number(e.code), e.cause))
        }
        None => Err(ClientError::new(
            ErrorCode::Inner,
            "append answered without an outcome",
        )),
    }
}

fn append_result_from_wire(r: v1::AppendResult) -> Result<AppendResult, ClientError> {
    let bad = |e: convert::WireError| {
        ClientError::new(ErrorCode::Inner, format!("bad append result: {e}"))
    };
    Ok(AppendResult {
        id: convert::message_id_from_wire(&r.id).map_err(bad)?,
        timestamp: Timestamp(r.timestamp),
        last_confirmed: convert::message_id_from_wire(&r.last_confirmed_id).map_err(bad)?,
        txn: r.txn.map(|t| TxnContext {
            txn_id: t.txn_id,
            keepalive_ms: t.keepalive_ms,
        }),
        flushed_segments: r.flushed_segments,
    })
}

fn consume_request(target: &Assignment, options: &ScannerOptions) -> v1::ConsumeRequest {
    let policy = match options.policy {
        DeliverPolicy::All => deliver_policy::Policy::All(v1::Empty {}),
        DeliverPolicy::Latest => deliver_policy::Policy::Latest(v1::Empty {}),
        DeliverPolicy::StartFrom(id) => deliver_policy::Policy::StartFrom(id.to_string()),
        DeliverPolicy::StartAfter(id) => deliver_policy::Policy::StartAfter(id.to_string()),
    };
    let filters = options
        .filters
        .iter()
        .map(|f| v1::DeliverFilter {
            filter: Some(match f {
                MessageFilter::TimeTickGt(t) => deliver_filter::Filter::TimestampGt(t.0),
                MessageFilter::TimeTickGte(t) => deliver_filter::Filter::TimestampGte(t.0),
                MessageFilter::Types(types) => deliver_filter::Filter::Types(v1::MessageTypes {
                    types: types.iter().map(|t| t.to_string()).collect(),
                }),
            }),
        })
        .collect();
    v1::ConsumeRequest {
        pchannel: Some(convert::pchannel_to_wire(&target.pchannel, target.term)),
        vchannel: options
            .vchannel
            .as_ref()
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default(),
        deliver_policy: Some(v1::DeliverPolicy {
            policy: Some(policy),
        }),
        filters,
    }
}

fn read_from_wire(response: v1::ConsumeResponse) -> Result<ReadMessage, ClientError> {
    let bad = |e: convert::WireError| {
        ClientError::new(ErrorCode::Inner, format!("bad message from node: {e}"))
    };
    match response.response {
        Some(consume_response::Response::Message(m)) => Ok(ReadMessage::Message(
            convert::immutable_from_wire(m).map_err(bad)?,
        )),
        Some(consume_response::Response::Txn(t)) => Ok(ReadMessage::Txn(Box::new(
            convert::txn_from_wire(t).map_err(bad)?,
        ))),
        None => Err(ClientError::new(ErrorCode::Inner, "empty consume response")),
    }
}

/// Direct access to the WALs of a node in this process, gRPC for every other node.
pub struct RoutedAccess {
    local: Option<(u64, Arc<WalManager>)>,
    remote: RemoteAccess,
}

impl RoutedAccess {
    /// Routes appends for node `node_id` to `manager` directly (no network hop), the rest over
    /// gRPC.
    pub fn new(local: Option<(u64, Arc<WalManager>)>) -> RoutedAccess {
        RoutedAccess {
            local,
            remote: RemoteAccess::new(),
        }
    }

    fn local_for(&self, target: &Assignment) -> Option<&Arc<WalManager>> {
        self.local
            .as_ref()
            .filter(|(id, _)| *id == target.node_id)
            .map(|(_, m)| m)
    }
}

#[async_trait]
impl WalAccess for RoutedAccess {
    async fn append(
        &self,
        target: &Assignment,
        msg: MutableMessage,
    ) -> Result<AppendResult, ClientError> {
        match self.local_for(target) {
            Some(manager) => {
                let wal = manager.wal(&target.pchannel, Some(target.term))?;
                Ok(wal.append(msg).await?)
            }
            None => self.remote.append(target, msg).await,
        }
    }

    async fn read(
        &self,
        target: &Assignment,
        options: ScannerOptions,
    ) -> Result<MessageStream, ClientError> {
        match self.local_for(target) {
            Some(manager) => {
                let wal = manager.wal(&target.pchannel, Some(target.term))?;
                let scanner = wal.read(options)?;
                Ok(Box::pin(scanner.map(|r| r.map_err(ClientError::from))))
            }
            None => self.remote.read(target, options).await,
        }
    }
}

/// The pchannel a message goes to (from its vchannel).
pub(crate) fn pchannel_of(msg: &MutableMessage) -> Result<PChannel, ClientError> {
    match msg.vchannel()? {
        Some(v) => Ok(v.pchannel()),
        None => Err(ClientError::new(
            ErrorCode::InvalidArgument,
            "a message needs a vchannel to be routed",
        )),
    }
}
