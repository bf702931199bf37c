//! How the client reaches a WAL once it knows the owner: over gRPC ([`RemoteAccess`]). A process
//! that hosts a node can route its own pchannels around the network with another [`WalAccess`]
//! (the `sluice` binary's standalone mode does).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use prost::Message as _;
use sluice_proto::v1::{
    self, produce_appended, produce_request, produce_response,
    streaming_node_client::StreamingNodeClient,
};
use sluice_proto::{Channel, Security, convert};
use sluice_types::{
    AppendResult, ConsumeOptions, ErrorCode, MutableMessage, PChannel, ReadMessage, Term,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::AbortOnDropHandle;

use crate::{Assignment, ClientError};

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
        options: ConsumeOptions,
    ) -> Result<MessageStream, ClientError>;
}

/// Reaches nodes over gRPC; one `Produce` stream per pchannel carries every append to it.
#[derive(Default)]
pub struct RemoteAccess {
    /// `None`: the process's settings ([`Security::install`]), read when a channel is made.
    security: Option<Security>,
    channels: Mutex<HashMap<String, Channel>>,
    producers: Mutex<HashMap<String, Arc<RemoteProducer>>>,
}

impl std::fmt::Debug for RemoteAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteAccess").finish_non_exhaustive()
    }
}

impl RemoteAccess {
    /// A client with no connections yet.
    pub fn new() -> RemoteAccess {
        RemoteAccess::default()
    }

    /// A client reaching nodes with these TLS settings and token (instead of the process's).
    pub fn with_security(security: Security) -> RemoteAccess {
        RemoteAccess {
            security: Some(security),
            ..RemoteAccess::default()
        }
    }

    fn channel(&self, address: &str) -> Result<Channel, ClientError> {
        if let Some(c) = self.channels.lock().get(address) {
            return Ok(c.clone());
        }
        let channel = match &self.security {
            Some(s) => s.lazy_channel(address),
            None => sluice_proto::lazy_channel(address),
        }
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
        options: ConsumeOptions,
    ) -> Result<MessageStream, ClientError> {
        let request = consume_request(target, &options);
        let stream = self
            .node(&target.address)?
            .consume(request)
            .await
            .map_err(|s| ClientError::from_status(&s))?
            .into_inner();
        Ok(Box::pin(stream.map(|item| match item {
            Ok(response) => ReadMessage::try_from(response).map_err(|e| {
                ClientError::new(ErrorCode::Inner, format!("bad message from node: {e}"))
            }),
            Err(status) => Err(ClientError::from_status(&status)),
        })))
    }
}

type Pending = HashMap<u64, oneshot::Sender<Result<AppendResult, ClientError>>>;

/// One `Produce` stream. Dead (and replaced on next use) once the server closed it or it broke.
struct RemoteProducer {
    term: Term,
    address: String,
    tx: mpsc::Sender<v1::ProduceAppend>,
    /// `None` once the stream ended.
    pending: Arc<Mutex<Option<Pending>>>,
    next_request: AtomicU64,
    _receiver: AbortOnDropHandle<()>,
}

impl RemoteProducer {
    async fn open(
        mut node: StreamingNodeClient<Channel>,
        target: &Assignment,
    ) -> Result<RemoteProducer, ClientError> {
        let (tx, rx) = mpsc::channel(MAX_QUEUED_APPENDS);
        let open = v1::ProduceRequest {
            request: Some(produce_request::Request::Open(v1::ProduceOpen {
                pchannel: Some(convert::pchannel_to_wire(&target.pchannel, target.term)),
                batch_responses: true,
            })),
        };
        let requests = futures::stream::once(std::future::ready(open)).chain(batched(rx));
        let mut responses = node
            .produce(requests)
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
            _receiver: AbortOnDropHandle::new(receiver),
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
        let (producer, sequence) = msg.producer().ok().flatten().unwrap_or((0, 0));
        let request = v1::ProduceAppend {
            request_id,
            message: Some(v1::Message::from(&*msg)),
            barrier_timestamp: 0,
            producer,
            sequence,
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

/// Appends queued for one `Produce` stream (callers wait beyond this).
const MAX_QUEUED_APPENDS: usize = 1024;
/// Appends per request at most (the server takes up to 1024).
const MAX_BATCH_APPENDS: usize = 256;
/// Bytes per request at most, unless one append alone is larger (the limit is 64 MiB).
const MAX_BATCH_BYTES: usize = 1 << 20;

/// The appends of `rx` as requests: those waiting together go out as one `appends` batch, up
/// to [`MAX_BATCH_APPENDS`] and [`MAX_BATCH_BYTES`]. Nothing waits to fill a batch.
fn batched(
    rx: mpsc::Receiver<v1::ProduceAppend>,
) -> impl futures::Stream<Item = v1::ProduceRequest> {
    futures::stream::unfold((rx, None), |(mut rx, mut carried)| async move {
        let first = match carried.take() {
            Some(a) => a,
            None => rx.recv().await?,
        };
        let mut bytes = first.encoded_len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_APPENDS {
            let Ok(next) = rx.try_recv() else { break };
            bytes += next.encoded_len();
            if bytes > MAX_BATCH_BYTES {
                carried = Some(next);
                break;
            }
            batch.push(next);
        }
        let request = if batch.len() == 1 {
            produce_request::Request::Append(batch.pop().expect("one append"))
        } else {
            produce_request::Request::Appends(v1::ProduceAppendBatch { appends: batch })
        };
        let request = v1::ProduceRequest {
            request: Some(request),
        };
        Some((request, (rx, carried)))
    })
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
            })) => resolve(&pending, vec![a]),
            Ok(Some(v1::ProduceResponse {
                response: Some(produce_response::Response::AppendedBatch(b)),
            })) => resolve(&pending, b.appended),
            Ok(Some(v1::ProduceResponse {
                response: Some(produce_response::Response::Closed(c)),
            })) => {
                break c.reason.map_or_else(closed_error, |r| {
                    let (code, cause) = convert::error_from_wire(&r);
                    ClientError::new(code, cause)
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

/// Hands answers to the appends waiting for them.
fn resolve(pending: &Mutex<Option<Pending>>, answers: Vec<v1::ProduceAppended>) {
    let done: Vec<_> = {
        let mut pending = pending.lock();
        let Some(p) = pending.as_mut() else { return };
        answers
            .into_iter()
            .filter_map(|a| Some((p.remove(&a.request_id)?, a.outcome)))
            .collect()
    };
    for (tx, outcome) in done {
        let _ = tx.send(append_outcome(outcome));
    }
}

fn append_outcome(outcome: Option<produce_appended::Outcome>) -> Result<AppendResult, ClientError> {
    match outcome {
        Some(produce_appended::Outcome::Result(r)) => AppendResult::try_from(r)
            .map_err(|e| ClientError::new(ErrorCode::Inner, format!("bad append result: {e}"))),
        Some(produce_appended::Outcome::Error(e)) => {
            let (code, cause) = convert::error_from_wire(&e);
            Err(ClientError::new(code, cause))
        }
        None => Err(ClientError::new(
            ErrorCode::Inner,
            "append answered without an outcome",
        )),
    }
}

fn consume_request(target: &Assignment, options: &ConsumeOptions) -> v1::ConsumeRequest {
    v1::ConsumeRequest {
        pchannel: Some(convert::pchannel_to_wire(&target.pchannel, target.term)),
        vchannel: options
            .vchannel
            .as_ref()
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default(),
        deliver_policy: Some(options.policy.into()),
        filters: options.filters.iter().map(Into::into).collect(),
    }
}

/// The pchannel a message goes to (from its vchannel).
pub fn pchannel_of(msg: &MutableMessage) -> Result<PChannel, ClientError> {
    match msg.vchannel()? {
        Some(v) => Ok(v.pchannel()),
        None => Err(ClientError::new(
            ErrorCode::InvalidArgument,
            "a message needs a vchannel to be routed",
        )),
    }
}
