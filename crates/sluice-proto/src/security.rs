//! TLS and bearer-token authentication of Sluice's gRPC connections — both ends of the wire
//! scheme, defined once.
//!
//! * **Client side**: a [`Security`] value (the CA that verifies servers, an optional client
//!   certificate for mTLS, an optional server name, an optional token) makes every [`Channel`]
//!   (see [`Security::lazy_channel`]). A process installs one with [`Security::install`] at
//!   start-up; [`crate::lazy_channel`] — what every internal caller uses (node → coordinator,
//!   node → node, delegator → query worker, the CLI) — takes that one, so no caller can forget
//!   it. A library user with several clusters passes a value explicitly instead.
//! * **Server side**: [`server`] builds the `tonic` server of a process: TLS (optionally
//!   requiring client certificates) and the [`RequireTokenLayer`] in front of every service.
//!
//! The token travels as `authorization: Bearer <token>` metadata on every call; a server with a
//! token answers a call without it, or with another one, `UNAUTHENTICATED` before any service
//! sees the call. Servers also take the token as Milvus clients send theirs: the metadata value
//! is the token in standard base64 (pymilvus `token=`, or `user=` and `password=` when
//! `user:password` is the token). The gRPC health service stays open (load balancers probe it without a token).
//! Neither the token nor a private key is ever printed: every `Debug` here redacts them.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tonic::body::BoxBody;
use tonic::codegen::http;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tower_layer::{Layer, Stack};

/// The metadata key the token travels in.
pub const AUTHORIZATION: &str = "authorization";

/// The message of a refused call (it names what is missing, never the token).
pub const REFUSED: &str = "missing or wrong token: every call must carry `authorization: Bearer \
     <token>` metadata (Milvus clients: the token as their `token`)";

/// Every call's path starts with this for the gRPC health service, which needs no token.
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// A channel to a Sluice process: a lazily connecting `tonic` channel that adds the token (when
/// one is configured) to every call.
pub type Channel = InterceptedService<tonic::transport::Channel, Authorize>;

/// A bad TLS or token setting (a message naming what is wrong; never the secret itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SecurityError(String);

/// How this process reaches other Sluice processes: TLS (CA, optional client certificate,
/// optional server name) and the bearer token. The default is plaintext without a token.
/// Cheap to clone.
#[derive(Clone, Default)]
pub struct Security {
    tls: Option<ClientTlsConfig>,
    authorize: Authorize,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `ClientTlsConfig`'s own Debug prints the client key.
        f.debug_struct("Security")
            .field("tls", &self.tls.is_some())
            .field("token", &self.authorize)
            .finish()
    }
}

/// The process-wide settings [`Security::install`] sets.
static PROCESS: OnceLock<Security> = OnceLock::new();

impl Security {
    /// Plaintext, no token.
    pub fn none() -> Security {
        Security::default()
    }

    /// Connect over TLS, verifying servers against the CA in `ca_pem`, presenting `identity`
    /// (certificate chain PEM, private key PEM) when it is set (servers that require client
    /// certificates — mTLS — need it), and expecting the server's certificate to name
    /// `server_name` (default: the host of each address).
    pub fn with_tls(
        mut self,
        ca_pem: &[u8],
        identity: Option<(&[u8], &[u8])>,
        server_name: Option<&str>,
    ) -> Result<Security, SecurityError> {
        install_crypto_provider();
        check_certificates("the CA", ca_pem)?;
        if let Some((cert, key)) = identity {
            check_identity("the client", cert, key)?;
        }
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = server_name {
            tls = tls.domain_name(name);
        }
        // tonic checks the PEM only when a channel is made: check it now, at start-up.
        Endpoint::from_static("https://localhost")
            .tls_config(tls.clone())
            .map_err(|e| SecurityError(format!("bad TLS client settings: {}", source_chain(&e))))?;
        self.tls = Some(tls);
        Ok(self)
    }

    /// Send `token` with every call (`authorization: Bearer <token>`). It must be printable
    /// ASCII without spaces.
    pub fn with_token(mut self, token: &str) -> Result<Security, SecurityError> {
        self.authorize = Authorize::new(token)?;
        Ok(self)
    }

    /// Whether channels use TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Makes these the settings of every channel [`crate::lazy_channel`] makes in this process.
    /// Call it once, at start-up, before any channel is made; a second call fails.
    pub fn install(self) -> Result<(), SecurityError> {
        PROCESS
            .set(self)
            .map_err(|_| SecurityError("the process's channel security is already set".into()))
    }

    /// The settings [`Security::install`] set, or none (plaintext, no token).
    pub fn process() -> Security {
        PROCESS.get().cloned().unwrap_or_default()
    }

    /// A lazily connecting channel to `address` (`host:port`, or a URL such as
    /// `https://host:port`): a 2 s connect timeout and `TCP_NODELAY`. With TLS configured every
    /// channel uses it — `host:port` and `http://` addresses too, so a TLS process never sends
    /// a call in plaintext; an `https://` address without TLS settings is an error (there is no
    /// CA to verify the server with). A malformed address is an error naming it.
    pub fn lazy_channel(&self, address: &str) -> Result<Channel, String> {
        let rest = match address.split_once("://") {
            Some(("http" | "https", rest)) => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "bad address {address:?}: scheme {scheme:?} (http or https)"
                ));
            }
            None => address,
        };
        let uri = match &self.tls {
            Some(_) => format!("https://{rest}"),
            None if address.starts_with("https://") => {
                return Err(format!(
                    "address {address:?} is https but no TLS CA is configured (tls.ca / --tls-ca)"
                ));
            }
            None => format!("http://{rest}"),
        };
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(|e| format!("bad address {address:?}: {e}"))?
            .connect_timeout(std::time::Duration::from_secs(2))
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| format!("TLS settings for {address:?}: {}", source_chain(&e)))?;
        }
        Ok(InterceptedService::new(
            endpoint.connect_lazy(),
            self.authorize.clone(),
        ))
    }
}

/// rustls needs one crypto provider per process; the build links two (`ring` for tonic,
/// `aws-lc-rs` for the S3 client), so none is picked by default. `ring` is tonic's own; an
/// earlier choice (by the process or another library) stands.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// tonic reads PEM leniently (text that holds no certificate is an empty list): insist on at
/// least one certificate, so a wrong file is a start-up error rather than failed handshakes.
fn check_certificates(what: &str, pem: &[u8]) -> Result<(), SecurityError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(pem) {
        c.map_err(|e| SecurityError(format!("{what} certificate PEM: {e}")))?;
        n += 1;
    }
    if n == 0 {
        return Err(SecurityError(format!(
            "{what} certificate PEM holds no certificate"
        )));
    }
    Ok(())
}

fn check_identity(what: &str, cert: &[u8], key: &[u8]) -> Result<(), SecurityError> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    check_certificates(what, cert)?;
    // The parse error never quotes the key.
    PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| SecurityError(format!("{what} private key PEM: {e}")))?;
    Ok(())
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The client half of the token check: adds `authorization: Bearer <token>` to every call
/// (nothing when no token is configured).
#[derive(Clone, Default)]
pub struct Authorize(Option<MetadataValue<Ascii>>);

impl Authorize {
    fn new(token: &str) -> Result<Authorize, SecurityError> {
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SecurityError(
                "the token must be non-empty printable ASCII without spaces".into(),
            ));
        }
        let mut value = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| SecurityError("the token is not a valid header value".into()))?;
        // HTTP/2 header compression must not index it (HPACK "never indexed").
        value.set_sensitive(true);
        Ok(Authorize(Some(value)))
    }
}

impl std::fmt::Debug for Authorize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Authorize(<redacted>)"
        } else {
            "Authorize(none)"
        })
    }
}

impl Interceptor for Authorize {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert(AUTHORIZATION, v.clone());
        }
        Ok(request)
    }
}

/// What a server process accepts: its certificate and key, the CA client certificates must be
/// signed by when it requires them (mTLS), and the token every call must carry.
#[derive(Clone, Default)]
pub struct ServerSecurity {
    /// TLS: (certificate chain PEM, private key PEM); `None` serves plaintext.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// mTLS: require a client certificate signed by this CA (PEM).
    pub client_ca: Option<Vec<u8>>,
    /// Every call (but health checks) must carry `authorization: Bearer <token>`.
    pub token: Option<String>,
}

impl std::fmt::Debug for ServerSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSecurity")
            .field("tls", &self.identity.is_some())
            .field("client_auth", &self.client_ca.is_some())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The server every Sluice process serves its services with (see [`server`]).
pub type Server = tonic::transport::Server<ServerLayers>;

/// The layers in front of every service: request metrics outermost (refused calls are counted
/// too), then the token check.
pub type ServerLayers =
    Stack<Stack<RequireTokenLayer, crate::metered::MeteredLayer>, tower_layer::Identity>;

/// A [`Server`]'s router.
pub type Router = tonic::transport::server::Router<ServerLayers>;

/// A `tonic` server with `security` applied: TLS when an identity is set (client certificates
/// required when `client_ca` is), and the token check in front of every service.
pub fn server(security: &ServerSecurity) -> Result<Server, SecurityError> {
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = &security.identity {
        install_crypto_provider();
        check_identity("the server", cert, key)?;
        if let Some(ca) = &security.client_ca {
            check_certificates("the client CA", ca)?;
        }
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let Some(ca) = &security.client_ca {
            tls = tls
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(false);
        }
        builder = builder
            .tls_config(tls)
            .map_err(|e| SecurityError(format!("bad TLS server settings: {}", source_chain(&e))))?;
    } else if security.client_ca.is_some() {
        return Err(SecurityError(
            "client certificates (mTLS) need TLS: set a server certificate and key".into(),
        ));
    }
    let layer = match &security.token {
        Some(token) => RequireTokenLayer::new(token)?,
        None => RequireTokenLayer::open(),
    };
    Ok(builder.layer(Stack::new(layer, crate::metered::MeteredLayer)))
}

/// The server half of the token check, a tower layer over every service of a server: a call
/// without `authorization: Bearer <token>`, or with another token, is answered
/// `UNAUTHENTICATED` and never reaches a service. Health checks pass.
#[derive(Clone)]
pub struct RequireTokenLayer {
    /// The whole header values a call may carry: `Bearer <token>`, and the token in standard
    /// base64 (Milvus's form); `None` lets every call through.
    expected: Option<Arc<[Box<[u8]>; 2]>>,
}

impl std::fmt::Debug for RequireTokenLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.expected.is_some() {
            "RequireTokenLayer(<redacted>)"
        } else {
            "RequireTokenLayer(open)"
        })
    }
}

impl RequireTokenLayer {
    /// Calls must carry `token`.
    pub fn new(token: &str) -> Result<RequireTokenLayer, SecurityError> {
        // The same rules as the client's, so a token one side accepts the other does too.
        Authorize::new(token)?;
        use base64::Engine as _;
        let bearer = format!("Bearer {token}").into_bytes().into_boxed_slice();
        let milvus = base64::engine::general_purpose::STANDARD
            .encode(token)
            .into_bytes()
            .into_boxed_slice();
        Ok(RequireTokenLayer {
            expected: Some(Arc::new([bearer, milvus])),
        })
    }

    /// No token: every call passes.
    pub fn open() -> RequireTokenLayer {
        RequireTokenLayer { expected: None }
    }

    /// Whether a call to `path` with this `authorization` header may pass.
    pub fn allows(&self, path: &str, authorization: Option<&[u8]>) -> bool {
        match &self.expected {
            None => true,
            Some(_) if path.starts_with(HEALTH_PREFIX) => true,
            // Both compared, whichever matches: the time does not tell which form was right.
            Some(expected) => authorization.is_some_and(|got| {
                constant_time_eq(got, &expected[0]) | constant_time_eq(got, &expected[1])
            }),
        }
    }
}

/// Equal in time that depends only on the lengths, not on where the first difference is (a
/// wrong token must not tell how many of its leading bytes were right).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= std::hint::black_box(x ^ y);
    }
    diff == 0
}

impl<S> Layer<S> for RequireTokenLayer {
    type Service = RequireToken<S>;

    fn layer(&self, inner: S) -> RequireToken<S> {
        RequireToken {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`RequireTokenLayer`] wraps around another.
#[derive(Clone, Debug)]
pub struct RequireToken<S> {
    inner: S,
    layer: RequireTokenLayer,
}

impl<S, B> tonic::codegen::Service<http::Request<B>> for RequireToken<S>
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
        let authorization = request
            .headers()
            .get(AUTHORIZATION)
            .map(http::HeaderValue::as_bytes);
        if self.layer.allows(request.uri().path(), authorization) {
            Box::pin(self.inner.call(request))
        } else {
            let status = tonic::Status::unauthenticated(REFUSED);
            Box::pin(std::future::ready(Ok(status.into_http())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALL: &str = "/sluice.v1.StreamingNode/Produce";

    #[test]
    fn a_server_with_a_token_lets_only_calls_with_that_token_through() {
        let layer = RequireTokenLayer::new("s3cret").unwrap();
        assert!(!layer.allows(CALL, None), "missing");
        assert!(!layer.allows(CALL, Some(b"Bearer wrong")), "wrong");
        assert!(!layer.allows(CALL, Some(b"Bearer s3cre")), "a prefix");
        assert!(!layer.allows(CALL, Some(b"Bearer s3cret2")), "longer");
        assert!(!layer.allows(CALL, Some(b"s3cret")), "no scheme");
        assert!(!layer.allows(CALL, Some(b"Basic s3cret")), "another scheme");
        assert!(layer.allows(CALL, Some(b"Bearer s3cret")), "right");
        // Milvus's form: the token in standard base64 ("s3cret" → "czNjcmV0").
        assert!(
            layer.allows(CALL, Some(b"czNjcmV0")),
            "right, as Milvus sends it"
        );
        assert!(
            !layer.allows(CALL, Some(b"czNjcmV0MQ==")),
            "another token as Milvus sends it"
        );
        assert!(
            !layer.allows(CALL, Some(b"Bearer czNjcmV0")),
            "base64 after Bearer"
        );
        let user = RequireTokenLayer::new("root:Milvus").unwrap();
        assert!(
            user.allows(CALL, Some(b"cm9vdDpNaWx2dXM=")),
            "user:password as the token"
        );
        assert!(
            layer.allows("/grpc.health.v1.Health/Check", None),
            "health checks need no token"
        );
        let open = RequireTokenLayer::open();
        assert!(open.allows(CALL, None) && open.allows(CALL, Some(b"Bearer x")));
    }

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
        // A length difference is not hidden by trailing zero bytes.
        assert!(!constant_time_eq(b"ab\0", b"ab"));
    }

    #[test]
    fn bad_tokens_are_rejected_on_both_sides() {
        for bad in ["", "has space", "tab\t", "é"] {
            assert!(Security::none().with_token(bad).is_err(), "{bad:?}");
            assert!(RequireTokenLayer::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let s = Security::none().with_token("s3cret-token").unwrap();
        let server = ServerSecurity {
            token: Some("s3cret-token".into()),
            identity: Some((b"CERT".to_vec(), b"PRIVATE KEY BYTES".to_vec())),
            client_ca: None,
        };
        for shown in [
            format!("{s:?}"),
            format!("{:?}", s.authorize),
            format!("{server:?}"),
            format!("{:?}", RequireTokenLayer::new("s3cret-token").unwrap()),
        ] {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(!shown.contains("PRIVATE"), "{shown}");
        }
    }

    #[test]
    fn the_client_sends_its_token_as_bearer_metadata() {
        let mut with = Authorize::new("tok").unwrap();
        let r = with.call(tonic::Request::new(())).unwrap();
        assert_eq!(r.metadata().get(AUTHORIZATION).unwrap(), "Bearer tok");
        let mut without = Authorize::default();
        let r = without.call(tonic::Request::new(())).unwrap();
        assert!(r.metadata().get(AUTHORIZATION).is_none());
    }

    #[tokio::test]
    async fn addresses_follow_the_tls_setting() {
        let plain = Security::none();
        assert!(plain.lazy_channel("127.0.0.1:1").is_ok());
        assert!(plain.lazy_channel("http://127.0.0.1:1").is_ok());
        let e = plain.lazy_channel("https://127.0.0.1:1").unwrap_err();
        assert!(e.contains("no TLS CA"), "{e}");
        let e = plain.lazy_channel("ftp://127.0.0.1:1").unwrap_err();
        assert!(e.contains("scheme"), "{e}");
        let e = Security::none()
            .with_tls(b"not a certificate", None, None)
            .unwrap_err();
        assert!(e.to_string().contains("no certificate"), "{e}");
    }

    #[tokio::test]
    async fn a_rejected_call_never_reaches_the_service() {
        use tonic::codegen::Service;
        let reached = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = reached.clone();
        let inner = tower_service_fn(move |_req: http::Request<()>| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::ready(Ok::<_, std::convert::Infallible>(http::Response::new(
                tonic::body::empty_body(),
            )))
        });
        let mut svc = RequireTokenLayer::new("tok").unwrap().layer(inner);
        let request = |auth: Option<&str>| {
            let mut b = http::Request::builder().uri(format!("http://x{CALL}"));
            if let Some(a) = auth {
                b = b.header(AUTHORIZATION, a);
            }
            b.body(()).unwrap()
        };
        for auth in [None, Some("Bearer nope")] {
            let r = svc.call(request(auth)).await.unwrap();
            let status = tonic::Status::from_header_map(r.headers()).unwrap();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{auth:?}");
        }
        assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 0);
        let r = svc.call(request(Some("Bearer tok"))).await.unwrap();
        assert!(tonic::Status::from_header_map(r.headers()).is_none());
        assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// A service from a closure (tower's `service_fn` without the dependency).
    fn tower_service_fn<F>(f: F) -> ServiceFn<F> {
        ServiceFn(f)
    }

    #[derive(Clone)]
    struct ServiceFn<F>(F);

    impl<F, Fut, Req, Resp, E> tonic::codegen::Service<Req> for ServiceFn<F>
    where
        F: FnMut(Req) -> Fut,
        Fut: Future<Output = Result<Resp, E>>,
    {
        type Response = Resp;
        type Error = E;
        type Future = Fut;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), E>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Req) -> Fut {
            (self.0)(req)
        }
    }
}
