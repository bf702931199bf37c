//! gRPC request metrics for every Sluice server: a tower layer counting calls by method and
//! gRPC status code (`sluice_grpc_requests_total{method,code}`) and timing them until the
//! response headers (`sluice_grpc_request_seconds{method}`; for streaming calls, until the
//! stream is accepted or refused). Errors a handler returns at once travel in the headers
//! (trailers-only responses: refused tokens, bad input, unknown pchannels) and are counted by
//! their code; a call answered normally counts as `Ok`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::body::BoxBody;
use tonic::codegen::http;
use tower_layer::Layer;

/// The layer (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct MeteredLayer;

impl<S> Layer<S> for MeteredLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Metered<S> {
        Metered { inner }
    }
}

/// The service [`MeteredLayer`] wraps around another.
#[derive(Clone, Debug)]
pub struct Metered<S> {
    inner: S,
}

impl<S, B> tonic::codegen::Service<http::Request<B>> for Metered<S>
where
    S: tonic::codegen::Service<http::Request<B>, Response = http::Response<BoxBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<BoxBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let started = Instant::now();
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await;
            let code = match &response {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .map_or(tonic::Code::Ok, |v| tonic::Code::from_bytes(v.as_bytes())),
                Err(_) => tonic::Code::Unknown,
            };
            metrics::counter!("sluice_grpc_requests_total", "method" => method.clone(), "code" => format!("{code:?}"))
                .increment(1);
            metrics::histogram!("sluice_grpc_request_seconds", "method" => method)
                .record(started.elapsed().as_secs_f64());
            response
        })
    }
}
