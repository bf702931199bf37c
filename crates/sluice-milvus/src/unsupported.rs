//! What the Milvus API asks for and Sluice does not have: MilvusService methods (resource groups,
//! privilege groups, ...) the generated router answers UNIMPLEMENTED with no message, which
//! pymilvus shows as an empty `details`. [`Named`] wraps the service and names the method
//! instead.

use std::task::{Context, Poll};

use tonic::body::BoxBody;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;

/// A MilvusService that says which method is not supported.
#[derive(Clone, Debug)]
pub struct Named<S>(pub S);

impl<S: NamedService> NamedService for Named<S> {
    const NAME: &'static str = S::NAME;
}

/// The message of an UNIMPLEMENTED answer to `path` (`/package.Service/Method`).
fn message(path: &str) -> String {
    let method = path.rsplit('/').next().filter(|m| !m.is_empty());
    format!(
        "{} is not supported by Sluice (the Milvus API it answers is listed in its README)",
        method.unwrap_or(path)
    )
}

impl<S, B> Service<http::Request<B>> for Named<S>
where
    S: Service<http::Request<B>, Response = http::Response<BoxBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<BoxBody>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let answer = self.0.call(req);
        Box::pin(async move {
            let mut response = answer.await?;
            let headers = response.headers_mut();
            let unimplemented = headers
                .get(tonic::Status::GRPC_STATUS)
                .is_some_and(|s| s.as_bytes() == b"12");
            if unimplemented && !headers.contains_key(tonic::Status::GRPC_MESSAGE) {
                // Printable ASCII only (a method name is), so no percent-encoding is needed.
                if let Ok(v) = http::HeaderValue::from_str(&message(&path)) {
                    headers.insert(tonic::Status::GRPC_MESSAGE, v);
                }
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_method() {
        let m = message("/milvus.proto.milvus.MilvusService/CreateResourceGroup");
        assert!(
            m.starts_with("CreateResourceGroup is not supported by Sluice"),
            "{m}"
        );
        assert!(message("").contains("not supported"));
    }
}
