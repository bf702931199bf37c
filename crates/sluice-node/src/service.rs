//! The node's gRPC services: [`StreamingNode`] (`Produce`, `Consume`) for clients and
//! [`StreamingNodeManager`] (`Assign`, `Remove`, `Status`) for the coordinator.
//!
//! `Produce` keeps many appends in flight (up to [`MAX_INFLIGHT_APPENDS`] per stream; beyond that
//! the server stops reading the stream, which pushes back on the client through gRPC flow
//! control) and answers in completion order. When an append finds the WAL fenced or closing, the
//! producer stops accepting, answers everything in flight, sends `closed` with the reason, and
//! ends the stream: the client then waits for the new owner.

// Every handler answers with tonic's `Status`; boxing it in the helpers they share would only
// move the allocation.
#![allow(clippy::result_large_err)]

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::Stream;
use futures::stream::{FuturesUnordered, StreamExt};
use sluice_log::DeliverPolicy;
use sluice_proto::convert::{self, WireError};
use sluice_proto::v1::{
    self, produce_appended, produce_request, produce_response,
    streaming_node_manager_server::{StreamingNodeManager, StreamingNodeManagerServer},
    streaming_node_server::{StreamingNode, StreamingNodeServer},
};
use sluice_types::{ErrorCode, MutableMessage, NodeId, PChannel, Term, Timestamp, VChannel};
use sluice_wal::scanner::{MessageFilter, ScannerOptions};
use sluice_wal::{Wal, WalError};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::manager::WalManager;

/// Appends one `Produce` stream may have in flight.
pub const MAX_INFLIGHT_APPENDS: usize = 1024;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Both services over one [`WalManager`].
#[derive(Clone)]
pub struct NodeService {
    node_id: NodeId,
    manager: Arc<WalManager>,
    producers: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for NodeService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeService").finish_non_exhaustive()
    }
}

impl NodeService {
    /// The services of node `node_id`.
    pub fn new(node_id: NodeId, manager: Arc<WalManager>) -> NodeService {
        NodeService {
            node_id,
            manager,
            producers: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        }
    }

    /// The `StreamingNode` server.
    pub fn streaming_server(&self) -> StreamingNodeServer<NodeService> {
        StreamingNodeServer::new(self.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// The `StreamingNodeManager` server.
    pub fn manager_server(&self) -> StreamingNodeManagerServer<NodeService> {
        StreamingNodeManagerServer::new(self.clone())
    }

    /// The WAL manager.
    pub fn manager(&self) -> &Arc<WalManager> {
        &self.manager
    }
}

fn wal_status(e: &WalError) -> Status {
    convert::status(e.code(), e.to_string())
}

/// The parsed form of a `ProduceAppend`.
fn parse_append(a: v1::ProduceAppend) -> Result<(u64, MutableMessage), (u64, Status)> {
    let id = a.request_id;
    let wire = a
        .message
        .ok_or_else(|| (id, WireError::Missing("message").to_status()))?;
    let mut msg = MutableMessage::try_from(wire).map_err(|e| (id, e.to_status()))?;
    if a.barrier_timestamp != 0 {
        msg.set_barrier_timestamp(Timestamp(a.barrier_timestamp));
    }
    match (a.producer, a.sequence) {
        (0, 0) => {}
        (0, _) => {
            return Err((
                id,
                convert::status(
                    ErrorCode::InvalidArgument,
                    "a sequence number without a producer",
                ),
            ));
        }
        (producer, sequence) => msg.set_producer(producer, sequence),
    }
    Ok((id, msg))
}

fn appended(request_id: u64, outcome: produce_appended::Outcome) -> v1::ProduceAppended {
    v1::ProduceAppended {
        request_id,
        outcome: Some(outcome),
    }
}

fn error_outcome(status: &Status) -> produce_appended::Outcome {
    let (code, cause) = convert::error_of(status);
    produce_appended::Outcome::Error(convert::error_to_wire(code, cause))
}

/// How a `Produce` stream stops taking appends when its WAL does.
#[derive(Clone, Default)]
struct Stopping {
    unavailable: Arc<AtomicBool>,
    reason: Arc<parking_lot::Mutex<Option<v1::StreamingError>>>,
}

impl Stopping {
    /// The answer to one append; an error that ends the producer stops the stream (once).
    fn outcome(
        &self,
        r: Result<sluice_types::AppendResult, WalError>,
    ) -> produce_appended::Outcome {
        match r {
            Ok(r) => produce_appended::Outcome::Result(r.into()),
            Err(e) => {
                if e.code().ends_producer() && !self.unavailable.swap(true, Ordering::AcqRel) {
                    *self.reason.lock() = Some(convert::error_to_wire(e.code(), e.to_string()));
                }
                error_outcome(&wal_status(&e))
            }
        }
    }
}

/// One `Produce` stream on the server, as the stream of its responses: polling it reads the
/// client's requests (while fewer than [`MAX_INFLIGHT_APPENDS`] appends are unanswered), starts
/// their appends and answers them as they complete — those that completed together in one
/// `appended_batch` when the client reads them so, else one `appended` each. The appends of one
/// request run together in one spawned task, so they finish (and a retry finds their outcome)
/// even when the client goes away. Once the client closes, the stream breaks or the WAL stops
/// taking appends, it answers everything in flight, then sends `closed` (or the error that
/// ended it) and ends.
///
/// One task (the server's, polling this stream) reads, answers and writes: no hand-off per
/// request between a reading task, a writing task and a channel between them.
struct ProducerStream {
    wal: Wal,
    inbound: Streaming<v1::ProduceRequest>,
    batch_responses: bool,
    /// Answers of the spawned appends, in completion order.
    done_tx: mpsc::UnboundedSender<v1::ProduceAppended>,
    done_rx: mpsc::UnboundedReceiver<v1::ProduceAppended>,
    /// Appends started and not yet in `ready`.
    in_flight: usize,
    /// Answers not sent yet.
    ready: Vec<v1::ProduceAppended>,
    /// Still taking requests.
    reading: bool,
    stopping: Stopping,
    /// A request the stream cannot go on after: sent (instead of `closed`) once drained.
    refused: Option<Status>,
    ended: bool,
}

impl ProducerStream {
    fn new(wal: Wal, inbound: Streaming<v1::ProduceRequest>, batch_responses: bool) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        ProducerStream {
            wal,
            inbound,
            batch_responses,
            done_tx,
            done_rx,
            in_flight: 0,
            ready: Vec::new(),
            reading: true,
            stopping: Stopping::default(),
            refused: None,
            ended: false,
        }
    }

    /// Takes one request: starts its appends, or answers what cannot be appended.
    fn take(&mut self, request: v1::ProduceRequest) {
        let batch = match request.request {
            Some(produce_request::Request::Append(a)) => vec![a],
            Some(produce_request::Request::Appends(b))
                if b.appends.len() > MAX_INFLIGHT_APPENDS =>
            {
                let status = convert::status(
                    ErrorCode::InvalidArgument,
                    format!(
                        "a batch of {} appends: at most {MAX_INFLIGHT_APPENDS} per request",
                        b.appends.len()
                    ),
                );
                let outcome = error_outcome(&status);
                self.ready.extend(
                    b.appends
                        .into_iter()
                        .map(|a| appended(a.request_id, outcome.clone())),
                );
                return;
            }
            Some(produce_request::Request::Appends(b)) => b.appends,
            Some(produce_request::Request::Close(_)) => {
                self.reading = false;
                return;
            }
            Some(produce_request::Request::Open(_)) | None => {
                self.refused = Some(convert::status(
                    ErrorCode::InvalidRequestSeq,
                    "a producer is opened once, with the first request",
                ));
                self.reading = false;
                return;
            }
        };
        let mut appends = Vec::with_capacity(batch.len());
        for a in batch {
            match parse_append(a) {
                Ok(v) => appends.push(v),
                Err((id, status)) => self.ready.push(appended(id, error_outcome(&status))),
            }
        }
        if appends.is_empty() {
            return;
        }
        self.in_flight += appends.len();
        let (wal, done, stopping) = (
            self.wal.clone(),
            self.done_tx.clone(),
            self.stopping.clone(),
        );
        tokio::spawn(async move {
            let mut running: FuturesUnordered<_> = appends
                .into_iter()
                .map(|(request_id, msg)| {
                    let wal = &wal;
                    async move { (request_id, wal.append(msg).await) }
                })
                .collect();
            while let Some((request_id, r)) = running.next().await {
                let _ = done.send(appended(request_id, stopping.outcome(r)));
            }
        });
    }

    /// The answers in `ready` as one response (or the first of them, one per response).
    fn answer(&mut self) -> v1::ProduceResponse {
        let response = if self.batch_responses && self.ready.len() > 1 {
            produce_response::Response::AppendedBatch(v1::ProduceAppendedBatch {
                appended: std::mem::take(&mut self.ready),
            })
        } else {
            produce_response::Response::Appended(self.ready.remove(0))
        };
        v1::ProduceResponse {
            response: Some(response),
        }
    }
}

impl Stream for ProducerStream {
    type Item = Result<v1::ProduceResponse, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        loop {
            while let Poll::Ready(Some(a)) = this.done_rx.poll_recv(cx) {
                this.in_flight -= 1;
                this.ready.push(a);
            }
            if !this.ready.is_empty() {
                return Poll::Ready(Some(Ok(this.answer())));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            if this.stopping.unavailable.load(Ordering::Acquire) {
                this.reading = false;
            }
            if this.reading && this.in_flight < MAX_INFLIGHT_APPENDS {
                match this.inbound.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(request))) => {
                        this.take(request);
                        continue;
                    }
                    Poll::Ready(Some(Err(status))) => {
                        tracing::debug!(%status, "produce stream broke");
                        this.reading = false;
                    }
                    Poll::Ready(None) => this.reading = false,
                    Poll::Pending => {}
                }
            }
            if this.reading || this.in_flight > 0 {
                return Poll::Pending;
            }
            // Drained: every append was answered.
            this.ended = true;
            if let Some(status) = this.refused.take() {
                return Poll::Ready(Some(Err(status)));
            }
            let reason = this.stopping.reason.lock().take();
            return Poll::Ready(Some(Ok(v1::ProduceResponse {
                response: Some(produce_response::Response::Closed(v1::ProduceClosed {
                    reason,
                })),
            })));
        }
    }
}

fn scanner_options(req: v1::ConsumeRequest) -> Result<ScannerOptions, WireError> {
    let policy = req
        .deliver_policy
        .map_or(Ok(DeliverPolicy::All), TryInto::try_into)?;
    let filters = req
        .filters
        .into_iter()
        .map(MessageFilter::try_from)
        .collect::<Result<_, _>>()?;
    let vchannel = if req.vchannel.is_empty() {
        None
    } else {
        Some(VChannel::new(&req.vchannel)?)
    };
    Ok(ScannerOptions {
        vchannel,
        policy,
        filters,
        ..ScannerOptions::default()
    })
}

fn pchannel_term(p: Option<v1::PChannelAtTerm>) -> Result<(PChannel, Option<Term>), Status> {
    let (p, term) = convert::pchannel_from_wire(p).map_err(|e| e.to_status())?;
    Ok((p, (term.0 != 0).then_some(term)))
}

#[tonic::async_trait]
impl StreamingNode for NodeService {
    type ProduceStream = BoxStream<v1::ProduceResponse>;
    type ConsumeStream = BoxStream<v1::ConsumeResponse>;

    async fn produce(
        &self,
        request: Request<Streaming<v1::ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| {
            convert::status(
                ErrorCode::InvalidRequestSeq,
                "the stream ended before `open`",
            )
        })?;
        let Some(produce_request::Request::Open(open)) = first.request else {
            return Err(convert::status(
                ErrorCode::InvalidRequestSeq,
                "the first request of a producer must be `open`",
            ));
        };
        let (pchannel, term) =
            convert::pchannel_from_wire(open.pchannel).map_err(|e| e.to_status())?;
        let wal = self
            .manager
            .wal(&pchannel, Some(term))
            .map_err(|e| e.to_status())?;
        let producer_id = self.producers.fetch_add(1, Ordering::Relaxed) + 1;
        let opened = v1::ProduceResponse {
            response: Some(produce_response::Response::Opened(v1::ProduceOpened {
                producer_id,
            })),
        };
        let answers = ProducerStream::new(wal, inbound, open.batch_responses);
        Ok(Response::new(Box::pin(
            futures::stream::once(std::future::ready(Ok(opened))).chain(answers),
        )))
    }

    async fn consume(
        &self,
        request: Request<v1::ConsumeRequest>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        let req = request.into_inner();
        let (pchannel, term) = pchannel_term(req.pchannel.clone())?;
        let options = scanner_options(req).map_err(|e| e.to_status())?;
        let wal = self
            .manager
            .wal(&pchannel, term)
            .map_err(|e| e.to_status())?;
        let mut scanner = wal.read(options).map_err(|e| wal_status(&e))?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tx.closed() => break,
                    next = scanner.next() => match next {
                        Some(Ok(m)) => {
                            if tx.send(Ok(v1::ConsumeResponse::from(&m))).await.is_err() {
                                break;
                            }
                        }
                        Some(Err(e)) => {
                            let _ = tx.send(Err(wal_status(&e))).await;
                            break;
                        }
                        None => {
                            let _ = tx
                                .send(Err(convert::status(ErrorCode::OnShutdown, "the WAL closed")))
                                .await;
                            break;
                        }
                    }
                }
            }
            scanner.close().await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl StreamingNodeManager for NodeService {
    async fn assign(
        &self,
        request: Request<v1::AssignRequest>,
    ) -> Result<Response<v1::AssignResponse>, Status> {
        let (pchannel, term) = convert::pchannel_from_wire(request.into_inner().pchannel)
            .map_err(|e| e.to_status())?;
        self.manager
            .assign(&pchannel, term)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(v1::AssignResponse {}))
    }

    async fn remove(
        &self,
        request: Request<v1::RemoveRequest>,
    ) -> Result<Response<v1::RemoveResponse>, Status> {
        let (pchannel, term) = convert::pchannel_from_wire(request.into_inner().pchannel)
            .map_err(|e| e.to_status())?;
        self.manager
            .remove(&pchannel, term)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(v1::RemoveResponse {}))
    }

    async fn status(
        &self,
        _request: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        let wals = self
            .manager
            .status()
            .into_iter()
            .map(|w| v1::WalStatus {
                pchannel: Some(convert::pchannel_to_wire(&w.pchannel, w.term)),
                available: w.available,
            })
            .collect();
        Ok(Response::new(v1::StatusResponse {
            node_id: self.node_id.0,
            wals,
        }))
    }
}
