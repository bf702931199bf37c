//! Reads of collections: Search, Query and Get (see `proto/sluice/v1/query.proto`), sent to a
//! node and retried while the answer is retryable (a shard still catching up after its WAL
//! moved, a node shutting down, a transport failure) until the call's deadline.

use std::time::{Duration, Instant};

use sluice_proto::v1::{self, query_client::QueryClient as GrpcQueryClient};
use sluice_proto::{Channel, Security};
use sluice_types::ErrorCode;
use sluice_types::backoff::Backoff;

use crate::ClientError;

/// A client of the `Query` service of one node (any node answers for whole collections).
#[derive(Clone)]
pub struct QueryClient {
    client: GrpcQueryClient<Channel>,
    deadline: Duration,
}

impl std::fmt::Debug for QueryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryClient")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl QueryClient {
    /// A client of the node at `endpoint`, connecting lazily; retryable failures are retried for
    /// up to 30 s per call. The process's security settings apply ([`Security::install`]).
    pub fn connect(endpoint: &str) -> Result<QueryClient, ClientError> {
        QueryClient::connect_with(endpoint, &Security::process())
    }

    /// The same with these TLS settings and token.
    pub fn connect_with(endpoint: &str, security: &Security) -> Result<QueryClient, ClientError> {
        let channel = security
            .lazy_channel(endpoint)
            .map_err(|e| ClientError::new(ErrorCode::InvalidArgument, e))?;
        Ok(QueryClient {
            client: GrpcQueryClient::new(channel)
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(64 << 20),
            deadline: Duration::from_secs(30),
        })
    }

    /// How long one call keeps retrying.
    pub fn with_deadline(mut self, deadline: Duration) -> QueryClient {
        self.deadline = deadline;
        self
    }

    async fn retry<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(GrpcQueryClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let start = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            match call(self.client.clone()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(status) => {
                    let e = ClientError::from_status(&status);
                    if !e.retryable() || start.elapsed() >= self.deadline {
                        return Err(e);
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// The nearest rows to each query vector.
    pub async fn search(&self, req: v1::SearchRequest) -> Result<v1::SearchResponse, ClientError> {
        self.retry(|mut c| {
            let req = req.clone();
            async move { c.search(req).await }
        })
        .await
    }

    /// The rows matching a filter.
    pub async fn query(&self, req: v1::QueryRequest) -> Result<v1::QueryResponse, ClientError> {
        self.retry(|mut c| {
            let req = req.clone();
            async move { c.query(req).await }
        })
        .await
    }

    /// The rows with the given keys.
    pub async fn get(&self, req: v1::GetRequest) -> Result<v1::QueryResponse, ClientError> {
        self.retry(|mut c| {
            let req = req.clone();
            async move { c.get(req).await }
        })
        .await
    }
}
