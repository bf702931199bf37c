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
use tokio::sync::{Notify, Semaphore, mpsc};
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

fn appended(request_id: u64, outcome: produce_appended::Outcome) -> v1::ProduceResponse {
    v1::ProduceResponse {
        response: Some(produce_response::Response::Appended(v1::ProduceAppended {
            request_id,
            outcome: Some(outcome),
        })),
    }
}

fn error_outcome(status: &Status) -> produce_appended::Outcome {
    let (code, cause) = convert::error_of(status);
    produce_appended::Outcome::Error(convert::error_to_wire(code, cause))
}

async fn produce_loop(
    wal: Wal,
    mut inbound: Streaming<v1::ProduceRequest>,
    out: mpsc::Sender<Result<v1::ProduceResponse, Status>>,
) {
    let permits = Arc::new(Semaphore::new(MAX_INFLIGHT_APPENDS));
    let unavailable = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(Notify::new());
    let reason: Arc<parking_lot::Mutex<Option<v1::StreamingError>>> = Arc::default();
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.notified() => break,
            next = inbound.message() => next,
        };
        let request = match next {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(status) => {
                tracing::debug!(%status, "produce stream broke");
                break;
            }
        };
        match request.request {
            Some(produce_request::Request::Append(a)) => {
                let (request_id, msg) = match parse_append(a) {
                    Ok(v) => v,
                    Err((id, status)) => {
                        if out
                            .send(Ok(appended(id, error_outcome(&status))))
                            .await
                            .is_err()
                        {
                            break;
                        }
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                if unavailable.load(Ordering::Acquire) {
                    break;
                }
                let wal = wal.clone();
                let out = out.clone();
                let unavailable = unavailable.clone();
                let stop = stop.clone();
                let reason = reason.clone();
                tokio::spawn(async move {
                    let outcome = match wal.append(msg).await {
                        Ok(r) => produce_appended::Outcome::Result(r.into()),
                        Err(e) => {
                            if e.code().ends_producer() && !unavailable.swap(true, Ordering::AcqRel)
                            {
                                *reason.lock() =
                                    Some(convert::error_to_wire(e.code(), e.to_string()));
                                stop.notify_one();
                            }
                            error_outcome(&wal_status(&e))
                        }
                    };
                    let _ = out.send(Ok(appended(request_id, outcome))).await;
                    drop(permit);
                });
            }
            Some(produce_request::Request::Close(_)) => break,
            Some(produce_request::Request::Open(_)) | None => {
                let _ = out
                    .send(Err(convert::status(
                        ErrorCode::InvalidRequestSeq,
                        "a producer is opened once, with the first request",
                    )))
                    .await;
                break;
            }
        }
    }
    // Drain: every append in flight is answered before `closed`.
    let _all = permits.acquire_many(MAX_INFLIGHT_APPENDS as u32).await;
    let reason = reason.lock().take();
    let _ = out
        .send(Ok(v1::ProduceResponse {
            response: Some(produce_response::Response::Closed(v1::ProduceClosed {
                reason,
            })),
        }))
        .await;
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
        let (tx, rx) = mpsc::channel(MAX_INFLIGHT_APPENDS);
        let opened = v1::ProduceResponse {
            response: Some(produce_response::Response::Opened(v1::ProduceOpened {
                producer_id,
            })),
        };
        tx.send(Ok(opened))
            .await
            .map_err(|_| Status::cancelled("client went away"))?;
        tokio::spawn(produce_loop(wal, inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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
