//! What the Milvus API asks for and Sluice does not have.
//!
//! * MilvusService methods (creating databases, users, roles, resource groups, ...): the
//!   generated router answers them UNIMPLEMENTED with no message, which pymilvus shows as an
//!   empty `details`. [`Named`] wraps the service and names the method instead.
//! * Databases other than `default`: SDKs name the database of every call in the `dbname`
//!   header (pymilvus's `db_name=`, `use_database`). [`Named`] answers such a call
//!   INVALID_ARGUMENT (which SDKs do not retry, unlike NOT_FOUND) before the service sees it,
//!   so nothing meant for another database lands in `default`.

use std::task::{Context, Poll};

use tonic::body::BoxBody;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;

/// A MilvusService that says which method is not supported and refuses calls for a database
/// other than `default`.
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

/// The header SDKs name a call's database in.
const DATABASE_HEADER: &str = "dbname";

/// Why a call naming database `header` is refused, if it is.
fn other_database(header: Option<&http::HeaderValue>) -> Option<tonic::Status> {
    let name = String::from_utf8_lossy(header?.as_bytes());
    if crate::service::is_default_database(&name) {
        return None;
    }
    Some(tonic::Status::invalid_argument(format!(
        "database not found[database={}]: Sluice has one database, default",
        name.escape_default()
    )))
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
        if let Some(refused) = other_database(req.headers().get(DATABASE_HEADER)) {
            return Box::pin(std::future::ready(Ok(refused.into_http())));
        }
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
        let m = message("/milvus.proto.milvus.MilvusService/CreateDatabase");
        assert!(
            m.starts_with("CreateDatabase is not supported by Sluice"),
            "{m}"
        );
        assert!(message("").contains("not supported"));
    }

    #[test]
    fn only_calls_for_another_database_are_refused() {
        let header = |v: &str| http::HeaderValue::from_str(v).unwrap();
        assert!(other_database(None).is_none());
        assert!(other_database(Some(&header(""))).is_none());
        assert!(other_database(Some(&header("default"))).is_none());
        let refused = other_database(Some(&header("tenant_a"))).unwrap();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().contains("database=tenant_a"), "{refused}");
        // Bytes that are not UTF-8 are named, not a panic.
        let odd = http::HeaderValue::from_bytes(b"\xffdb").unwrap();
        assert!(other_database(Some(&odd)).is_some());
    }
}
