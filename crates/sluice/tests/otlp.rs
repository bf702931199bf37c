//! Tracing spans exported over OTLP: `sluice standalone --otlp-endpoint` sends its spans to a
//! collector (here a real OTLP/gRPC trace service in the test) — the WAL opens with their
//! pchannel, the appends, and the resource naming the process — in batches, and what is still
//! queued at SIGTERM.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use parking_lot::Mutex;
use rustix::process::Signal;
use sluice_types::message::CreateCollectionHeader;
use sluice_types::{MutableMessage, VChannel};
use support::{Proc, free_port};

/// One exported span: its name, its attributes and its resource's.
#[derive(Clone, Debug)]
struct Span {
    name: String,
    attributes: Vec<(String, String)>,
    resource: Vec<(String, String)>,
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

fn pairs(kvs: &[KeyValue]) -> Vec<(String, String)> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v: &AnyValue| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock();
        for rs in request.into_inner().resource_spans {
            let resource = rs
                .resource
                .as_ref()
                .map(|r| pairs(&r.attributes))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push(Span {
                        name: s.name.clone(),
                        attributes: pairs(&s.attributes),
                        resource: resource.clone(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    fn named(&self, name: &str) -> Vec<Span> {
        let spans = self.spans.lock();
        spans.iter().filter(|s| s.name == name).cloned().collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_collector() {
    let collector = Collector::default();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve(addr),
    );
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{addr}");
    let mut server = Proc::spawn(
        "standalone",
        &[
            "standalone",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--otlp-endpoint",
            &endpoint,
        ],
        // Export batches every 200 ms instead of every 5 s.
        &[("OTEL_BSP_SCHEDULE_DELAY", "200")],
        dir.path(),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let client = support::client(&server.endpoint(), Duration::from_secs(30));
    let v = VChannel::new("sluice-dml_0_5v0").unwrap();
    client
        .append(
            MutableMessage::builder(CreateCollectionHeader {
                collection_id: 5,
                partition_ids: vec![1],
                db_id: 1,
                schema: None,
            })
            .vchannel(&v)
            .build()
            .unwrap(),
        )
        .await
        .unwrap();
    for i in 0..10 {
        client
            .append(support::tagged_insert(&v, "i", &i.to_string(), vec![1; 16]))
            .await
            .unwrap();
    }
    // Batches arrive while the process runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    while collector.named("wal.append").len() < 11 {
        assert!(
            Instant::now() < deadline,
            "no append spans within 30 s; spans so far: {:?}",
            collector
                .spans
                .lock()
                .iter()
                .map(|s| &s.name)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let opens = collector.named("wal.open");
    assert!(
        opens.iter().any(|s| s
            .attributes
            .contains(&("pchannel".into(), "sluice-dml_0".into()))),
        "a wal.open span of sluice-dml_0: {opens:?}"
    );
    let append = &collector.named("wal.append")[0];
    assert!(
        append
            .resource
            .contains(&("service.name".into(), "sluice".into()))
            && append
                .resource
                .contains(&("sluice.role".into(), "standalone".into())),
        "the resource names the process: {append:?}"
    );
    // What is queued at SIGTERM is sent before the process exits.
    let before = collector.named("wal.append").len();
    for i in 10..15 {
        client
            .append(support::tagged_insert(&v, "i", &i.to_string(), vec![1; 16]))
            .await
            .unwrap();
    }
    server.signal(Signal::TERM);
    let status = tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(30)))
        .expect("standalone exits after SIGTERM");
    assert!(status.success(), "{status}");
    assert!(
        collector.named("wal.append").len() >= before + 5,
        "the appends before SIGTERM were exported"
    );
}
