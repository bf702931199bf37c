//! TLS and token authentication against real `sluice` processes, with a throwaway CA made here
//! (`rcgen`): a CA, a server certificate for `localhost` / 127.0.0.1, a client certificate, and
//! a second, unrelated CA with its own client certificate.
//!
//! * A standalone with TLS and a token serves a client that has the CA and the token (the CLI
//!   and `sluice-client`); calls without the token or with a wrong one get UNAUTHENTICATED and
//!   change nothing (no collection created, no message appended); health checks stay open; the
//!   token appears nowhere in what the processes print.
//! * A plaintext client and a client trusting another CA cannot talk to a TLS server.
//! * With `tls.client_auth` (mTLS) a client without a certificate, or with one from another CA,
//!   is refused; with one from the CA it works.
//! * A cluster (`coord` + `node` on etcd, `SLUICE_TEST_ETCD`) whose processes talk to each other
//!   over mTLS with a token serves a producer and a consumer.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use sluice_client::access::RemoteAccess;
use sluice_client::topology::CoordinatorTopology;
use sluice_client::{Client, ClientConfig};
use sluice_proto::Security;
use sluice_proto::security::REFUSED;
use sluice_proto::v1;
use sluice_types::{MutableMessage, VChannel};
use support::{CliOutput, Proc, run_cli};

const TOKEN: &str = "tls-test-token-9f3a7c1e";
const VCHANNEL: &str = "sluice-dml_0_100v0";
const CLI_TIMEOUT: Duration = Duration::from_secs(90);

/// The certificates of one test, as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let (ca, ca_key) = authority("Sluice test CA");
        let (other, other_key) = authority("Unrelated CA");
        let write = |name: &str, pem: &str| {
            std::fs::write(dir.path().join(name), pem).expect("writing a PEM file");
        };
        write("ca.pem", &ca.pem());
        write("other-ca.pem", &other.pem());
        let (cert, key) = leaf(
            &ca,
            &ca_key,
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        write("server.pem", &cert);
        write("server.key", &key);
        let (cert, key) = leaf(
            &ca,
            &ca_key,
            &["sluice-client"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        write("client.pem", &cert);
        write("client.key", &key);
        let (cert, key) = leaf(
            &other,
            &other_key,
            &["sluice-client"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        write("other-client.pem", &cert);
        write("other-client.key", &key);
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).expect("reading a PEM file")
    }

    /// Client settings trusting `ca` and presenting `client` (a `{client}.pem`/`.key` pair).
    fn security(&self, ca: &str, client: Option<&str>) -> Security {
        let identity = client.map(|c| {
            (
                self.read(&format!("{c}.pem")),
                self.read(&format!("{c}.key")),
            )
        });
        Security::none()
            .with_tls(
                &self.read(ca),
                identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
                None,
            )
            .expect("valid TLS settings")
    }

    /// The environment of a server process: TLS with this CA's server certificate, presenting
    /// the client certificate to other processes, `client_auth` as given, and `token`.
    fn server_env(&self, client_auth: bool, token: Option<&str>) -> Vec<(String, String)> {
        let mut env = vec![
            ("SLUICE_TLS__CERT", self.arg("server.pem")),
            ("SLUICE_TLS__KEY", self.arg("server.key")),
            ("SLUICE_TLS__CA", self.arg("ca.pem")),
            ("SLUICE_TLS__CLIENT_CERT", self.arg("client.pem")),
            ("SLUICE_TLS__CLIENT_KEY", self.arg("client.key")),
            ("SLUICE_TLS__CLIENT_AUTH", client_auth.to_string()),
        ];
        if let Some(t) = token {
            env.push(("SLUICE_AUTH__TOKEN", t.to_owned()));
        }
        env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }
}

fn authority(name: &str) -> (Certificate, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("CA key");
    let cert = params.self_signed(&key).expect("self-signed CA");
    (cert, key)
}

fn leaf(
    ca: &Certificate,
    ca_key: &KeyPair,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names.clone()).expect("leaf params");
    params
        .distinguished_name
        .push(DnType::CommonName, names[0].clone());
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, ca, ca_key).expect("signing");
    (cert.pem(), key.serialize_pem())
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn standalone(env: &[(String, String)], dir: &Path) -> Proc {
    let data_dir = dir.join("data");
    Proc::spawn(
        "standalone",
        &[
            "standalone",
            "--data-dir",
            data_dir.to_str().expect("utf-8 temp path"),
            "--listen",
            "127.0.0.1:0",
        ],
        &env_refs(env),
        dir,
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// `sluice ARGS` to completion, off the async runtime's worker.
fn cli(args: &[&str], envs: &[(&str, &str)]) -> CliOutput {
    tokio::task::block_in_place(|| run_cli(args, envs, CLI_TIMEOUT))
}

fn lines_starting(out: &CliOutput, prefix: &str) -> usize {
    out.stdout.lines().filter(|l| l.starts_with(prefix)).count()
}

/// Consumes `VCHANNEL` from the beginning until nothing arrives for 2 s; the number of
/// messages read.
fn count_messages(coord: &str, security: &[&str]) -> usize {
    let mut args = vec![
        "consume",
        "--coord",
        coord,
        "--vchannel",
        VCHANNEL,
        "--from-beginning",
        "--idle-exit-ms",
        "2000",
    ];
    args.extend_from_slice(security);
    let out = cli(&args, &[]);
    assert!(out.status.success(), "consume failed: {}", out.stderr);
    lines_starting(&out, "msg ")
}

/// `ListCollections` on the coordinator at `addr`: the collection names, or the status.
async fn list_collections(security: &Security, addr: &str) -> Result<Vec<String>, tonic::Status> {
    let channel = security
        .lazy_channel(addr)
        .map_err(tonic::Status::invalid_argument)?;
    let mut client = v1::coordinator_client::CoordinatorClient::new(channel);
    let mut request = tonic::Request::new(v1::ListCollectionsRequest {});
    request.set_timeout(Duration::from_secs(10));
    let r = client.list_collections(request).await?.into_inner();
    Ok(r.collections
        .into_iter()
        .map(|c| c.schema.unwrap_or_default().name)
        .collect())
}

fn insert(vchannel: &VChannel, key: &str) -> MutableMessage {
    support::tagged_insert(vchannel, "key", key, b"over TLS".to_vec())
}

/// Everything `proc` printed (stderr file and stdout lines).
fn printed(proc: &Proc, logs: &Path) -> String {
    let mut s = std::fs::read_to_string(logs.join(format!("{}.stderr", proc.name)))
        .expect("reading the process's stderr");
    for l in proc.stdout_lines() {
        s.push_str(&l);
        s.push('\n');
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_and_a_token_only_authenticated_calls_touch_anything() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut env = pki.server_env(false, Some(TOKEN));
    // Log everything: the token must not appear even at debug level.
    env.push(("RUST_LOG".into(), "debug".into()));
    let server = standalone(&env, dir.path());
    let https = format!("https://{}", server.addr);
    let ca = pki.arg("ca.pem");

    // With the CA and the token (flag): the CLI produces ...
    let out = cli(
        &[
            "produce",
            "--coord",
            &https,
            "--vchannel",
            VCHANNEL,
            "--create-collection",
            "--count",
            "20",
            "--tls-ca",
            &ca,
            "--token",
            TOKEN,
        ],
        &[],
    );
    assert!(out.status.success(), "produce failed: {}", out.stderr);
    assert_eq!(lines_starting(&out, "ack "), 20, "{}", out.stdout);
    let mut client_output = out.stdout + &out.stderr;

    // ... and so does `sluice-client` with explicit settings (a plain `host:port` address:
    // TLS comes from the settings, not the scheme).
    let security = pki.security("ca.pem", None).with_token(TOKEN).unwrap();
    let topology = Arc::new(
        CoordinatorTopology::connect_with(&server.addr, &security).expect("topology client"),
    );
    let client = Client::new(
        topology,
        Arc::new(RemoteAccess::with_security(security.clone())),
        ClientConfig {
            timeout: Some(Duration::from_secs(30)),
            ..ClientConfig::default()
        },
    );
    let v = VChannel::new(VCHANNEL).unwrap();
    client
        .append(insert(&v, "from-client"))
        .await
        .expect("append over TLS with the token");

    // The token from SLUICE_TOKEN: consume sees all 21.
    let tls_args = ["--tls-ca", ca.as_str()];
    let out = cli(
        &[
            "consume",
            "--coord",
            &https,
            "--vchannel",
            VCHANNEL,
            "--from-beginning",
            "--limit",
            "21",
            "--tls-ca",
            &ca,
        ],
        &[("SLUICE_TOKEN", TOKEN)],
    );
    assert!(out.status.success(), "consume failed: {}", out.stderr);
    assert_eq!(lines_starting(&out, "msg "), 21, "{}", out.stdout);
    client_output += &(out.stdout + &out.stderr);

    // No token, or a wrong one: UNAUTHENTICATED on the coordinator's and the node's services.
    let no_token = pki.security("ca.pem", None);
    let wrong_token = pki
        .security("ca.pem", None)
        .with_token("not-the-token")
        .unwrap();
    let right_prefix = pki
        .security("ca.pem", None)
        .with_token(&TOKEN[..TOKEN.len() - 1])
        .unwrap();
    for (what, s) in [
        ("no token", &no_token),
        ("a wrong token", &wrong_token),
        ("a prefix of the token", &right_prefix),
    ] {
        let e = list_collections(s, &server.addr)
            .await
            .expect_err("ListCollections must be refused");
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{what}: {e:?}");
        let mut node = v1::streaming_node_manager_client::StreamingNodeManagerClient::new(
            s.lazy_channel(&server.addr).unwrap(),
        );
        let e = node
            .status(v1::StatusRequest::default())
            .await
            .expect_err("Status must be refused");
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{what}: {e:?}");
        let mut produce = v1::streaming_node_client::StreamingNodeClient::new(
            s.lazy_channel(&server.addr).unwrap(),
        );
        let e = produce
            .produce(futures::stream::iter(Vec::<v1::ProduceRequest>::new()))
            .await
            .expect_err("Produce must be refused");
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{what}: {e:?}");
    }
    // Health checks need no token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        no_token.lazy_channel(&server.addr).unwrap(),
    );
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health is open");
    assert_eq!(
        r.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // A refused call changes nothing: a CreateCollection without the token creates nothing,
    // the same call with it does (so the check can fail).
    let create = |name: &str, token: Option<&str>| {
        let mut args = vec![
            "ctl",
            "create-collection",
            "--coord",
            https.as_str(),
            "--name",
            name,
            "--field",
            "id:int64:pk",
            "--field",
            "v:float_vector:4",
            "--tls-ca",
            ca.as_str(),
            "--timeout-secs",
            "10",
        ];
        if let Some(t) = token {
            args.extend(["--token", t]);
        }
        cli(&args, &[])
    };
    let out = create("refused", None);
    assert!(!out.status.success(), "created without a token");
    assert!(out.stderr.contains(REFUSED), "{}", out.stderr);
    let out = create("refused_too", Some("not-the-token"));
    assert!(!out.status.success(), "created with a wrong token");
    let out = create("allowed", Some(TOKEN));
    assert!(out.status.success(), "{}", out.stderr);
    client_output += &(out.stdout + &out.stderr);
    let names = list_collections(
        &pki.security("ca.pem", None).with_token(TOKEN).unwrap(),
        &server.addr,
    )
    .await
    .expect("listing with the token");
    assert!(names.contains(&"allowed".to_owned()), "{names:?}");
    assert!(
        !names.iter().any(|n| n.starts_with("refused")),
        "a refused call created a collection: {names:?}"
    );

    // A produce without the token (or with a wrong one) fails and appends nothing.
    for token in [None, Some("not-the-token")] {
        let mut args = vec![
            "produce",
            "--coord",
            https.as_str(),
            "--vchannel",
            VCHANNEL,
            "--count",
            "5",
            "--tls-ca",
            ca.as_str(),
            "--timeout-secs",
            "5",
        ];
        if let Some(t) = token {
            args.extend(["--token", t]);
        }
        let out = cli(&args, &[]);
        assert!(!out.status.success(), "produce without the token succeeded");
        assert_eq!(lines_starting(&out, "ack "), 0, "{}", out.stdout);
        assert!(
            out.stderr.contains(REFUSED),
            "the refusal is named: {}",
            out.stderr
        );
    }
    assert_eq!(
        count_messages(&https, &["--tls-ca", &ca, "--token", TOKEN]),
        21,
        "refused produces appended nothing"
    );
    // And a consume without the token reads nothing.
    let out = cli(
        &[
            "consume",
            "--coord",
            &https,
            "--vchannel",
            VCHANNEL,
            "--from-beginning",
            "--limit",
            "1",
            "--timeout-secs",
            "5",
            "--idle-exit-ms",
            "3000",
        ]
        .into_iter()
        .chain(tls_args)
        .collect::<Vec<_>>(),
        &[],
    );
    assert_eq!(lines_starting(&out, "msg "), 0, "{}", out.stdout);

    // `--help` does not show the token from the environment.
    let out = cli(&["produce", "--help"], &[("SLUICE_TOKEN", TOKEN)]);
    assert!(out.status.success());
    assert!(out.stdout.contains("--token"), "{}", out.stdout);
    client_output += &(out.stdout + &out.stderr);

    // The secret appears nowhere: not in the server's log (at debug level, which logged the
    // refused calls), not in what the clients printed.
    let logged = printed(&server, dir.path());
    assert!(logged.contains("DEBUG"), "the server logged at debug level");
    assert!(!logged.contains(TOKEN), "the server logged the token");
    assert!(!client_output.contains(TOKEN), "a client printed the token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_clients_and_clients_trusting_another_ca_cannot_connect() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = standalone(&pki.server_env(false, None), dir.path());

    // The control: the right CA works.
    list_collections(&pki.security("ca.pem", None), &server.addr)
        .await
        .expect("a client with the CA connects");

    let plaintext = list_collections(&Security::none(), &server.addr).await;
    assert!(plaintext.is_err(), "plaintext against TLS: {plaintext:?}");
    let other = list_collections(&pki.security("other-ca.pem", None), &server.addr).await;
    let e = other.expect_err("a client trusting another CA must not connect");
    assert_ne!(e.code(), tonic::Code::Ok);

    // The CLI the same way: plaintext fails, another CA fails, an https address without a CA is
    // a clear error, the CA works.
    let http = format!("http://{}", server.addr);
    let https = format!("https://{}", server.addr);
    let ca = pki.arg("ca.pem");
    let other_ca = pki.arg("other-ca.pem");
    for (args, ok) in [
        (vec!["--coord", http.as_str()], false),
        (
            vec!["--coord", https.as_str(), "--tls-ca", other_ca.as_str()],
            false,
        ),
        (
            vec!["--coord", https.as_str(), "--tls-ca", ca.as_str()],
            true,
        ),
    ] {
        let mut full = vec!["ctl", "collections", "--timeout-secs", "5"];
        full.extend(args.iter().copied());
        let out = cli(&full, &[]);
        assert_eq!(out.status.success(), ok, "{full:?}: {}", out.stderr);
    }
    let out = cli(&["ctl", "collections", "--coord", &https], &[]);
    assert!(!out.status.success());
    assert!(out.stderr.contains("no TLS CA"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_client_auth_only_clients_with_a_certificate_from_the_ca_connect() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = standalone(&pki.server_env(true, None), dir.path());

    let anonymous = list_collections(&pki.security("ca.pem", None), &server.addr).await;
    assert!(anonymous.is_err(), "no client certificate: {anonymous:?}");
    let foreign =
        list_collections(&pki.security("ca.pem", Some("other-client")), &server.addr).await;
    assert!(
        foreign.is_err(),
        "a certificate from another CA: {foreign:?}"
    );
    list_collections(&pki.security("ca.pem", Some("client")), &server.addr)
        .await
        .expect("a certificate from the CA is accepted");

    // The CLI: produce and consume with the client certificate; without it, nothing.
    let https = format!("https://{}", server.addr);
    let (ca, cert, key) = (
        pki.arg("ca.pem"),
        pki.arg("client.pem"),
        pki.arg("client.key"),
    );
    let mtls = [
        "--tls-ca",
        ca.as_str(),
        "--tls-cert",
        cert.as_str(),
        "--tls-key",
        key.as_str(),
    ];
    let mut produce = vec![
        "produce",
        "--coord",
        https.as_str(),
        "--vchannel",
        VCHANNEL,
        "--create-collection",
        "--count",
        "10",
    ];
    produce.extend(mtls);
    let out = cli(&produce, &[]);
    assert!(out.status.success(), "produce with mTLS: {}", out.stderr);
    assert_eq!(lines_starting(&out, "ack "), 10, "{}", out.stdout);
    assert_eq!(count_messages(&https, &mtls), 10);
    let out = cli(
        &[
            "produce",
            "--coord",
            &https,
            "--vchannel",
            VCHANNEL,
            "--count",
            "3",
            "--timeout-secs",
            "5",
            "--tls-ca",
            &ca,
        ],
        &[],
    );
    assert!(
        !out.status.success(),
        "produce without a client certificate"
    );
    assert_eq!(count_messages(&https, &mtls), 10, "it appended nothing");
}

/// Coordinator and node talk to each other over mTLS with the token (node → coordinator for
/// timestamps, coordinator → node to assign pchannels); a client produces and consumes
/// through them. Needs etcd (`SLUICE_TEST_ETCD`) and the `etcd` feature.
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_talks_to_itself_over_mutual_tls_with_a_token() {
    let Some(etcd) = support::etcd_endpoint("a_cluster_talks_to_itself_over_mutual_tls") else {
        return;
    };
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let root = support::unique_root("tls");
    let mut env = pki.server_env(true, Some(TOKEN));
    env.push(("SLUICE_META__ROOT".into(), root));
    env.push(("SLUICE_COORD__ELECTION_TTL_MS".into(), "2000".into()));
    env.push((
        "SLUICE_STORAGE__DIR".into(),
        dir.path().join("storage").display().to_string(),
    ));
    let coord = Proc::spawn(
        "coord",
        &[
            "coord",
            "--meta-backend",
            "etcd",
            "--etcd",
            &etcd,
            "--listen",
            "127.0.0.1:0",
            "--pchannels",
            "2",
        ],
        &env_refs(&env),
        dir.path(),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let https = format!("https://{}", coord.addr);
    let data_dir = dir.path().join("node-1");
    let log_dir = dir.path().join("log");
    let node = Proc::spawn(
        "node-1",
        &[
            "node",
            "--meta-backend",
            "etcd",
            "--etcd",
            &etcd,
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--log-dir",
            log_dir.to_str().unwrap(),
            "--node-id",
            "1",
            "--lease-ttl-ms",
            "2000",
            "--coord",
            &https,
        ],
        &env_refs(&env),
        dir.path(),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let (ca, cert, key) = (
        pki.arg("ca.pem"),
        pki.arg("client.pem"),
        pki.arg("client.key"),
    );
    let client_args = [
        "--tls-ca",
        ca.as_str(),
        "--tls-cert",
        cert.as_str(),
        "--tls-key",
        key.as_str(),
        "--token",
        TOKEN,
    ];
    let mut produce = vec![
        "produce",
        "--coord",
        https.as_str(),
        "--vchannel",
        VCHANNEL,
        "--create-collection",
        "--count",
        "30",
    ];
    produce.extend(client_args);
    let out = cli(&produce, &[]);
    assert!(
        out.status.success(),
        "produce through the cluster: {}",
        out.stderr
    );
    assert_eq!(lines_starting(&out, "ack "), 30, "{}", out.stdout);
    assert_eq!(count_messages(&https, &client_args), 30);

    // The node's own services check the token too.
    let e = list_collections(&pki.security("ca.pem", Some("client")), &coord.addr)
        .await
        .expect_err("the coordinator refuses a call without the token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let mut status = v1::streaming_node_manager_client::StreamingNodeManagerClient::new(
        pki.security("ca.pem", Some("client"))
            .lazy_channel(&node.addr)
            .unwrap(),
    );
    let e = status
        .status(v1::StatusRequest::default())
        .await
        .expect_err("the node refuses a call without the token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let mut status = v1::streaming_node_manager_client::StreamingNodeManagerClient::new(
        pki.security("ca.pem", Some("client"))
            .with_token(TOKEN)
            .unwrap()
            .lazy_channel(&node.addr)
            .unwrap(),
    );
    let held = status
        .status(v1::StatusRequest::default())
        .await
        .expect("the node answers with the token")
        .into_inner();
    assert!(
        !held.wals.is_empty(),
        "the coordinator assigned the node pchannels over TLS"
    );

    for p in [&coord, &node] {
        assert!(
            !printed(p, dir.path()).contains(TOKEN),
            "{} logged the token",
            p.name
        );
    }
}
