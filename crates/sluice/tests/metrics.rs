//! The Prometheus endpoint: a standalone process started with `--metrics-listen` serves
//! `GET /metrics`, and the numbers move with the work it does — appends counted and timed per
//! pchannel and outcome, WAL opens and recovery, reads counted by kind and code, the write-ahead
//! buffer and timetick lag, coordinator assignments, and segments the flusher writes.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use sluice_client::QueryClient;
use sluice_proto::v1;
use sluice_types::message::{
    CreateCollectionHeader, InsertHeader, ManualFlushHeader, PartitionSegmentAssignment,
};
use sluice_types::{MutableMessage, VChannel};
use support::{Proc, free_port};

/// The body of `GET /metrics` at `addr`.
fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connecting to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// The sum of every sample of `name` whose labels contain every one of `labels`.
fn total(body: &str, name: &str, labels: &[&str]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_counts_appends_wal_opens_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let server = Proc::spawn(
        "standalone",
        &[
            "standalone",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            &metrics,
        ],
        &[],
        dir.path(),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let endpoint = server.endpoint();
    let client = support::client(&endpoint, Duration::from_secs(60));
    let v = VChannel::new("sluice-dml_0_77v0").unwrap();
    client
        .append(
            MutableMessage::builder(CreateCollectionHeader {
                collection_id: 77,
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
    // Every pchannel's WAL opens on its own; wait (bounded) until all four have.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let before = loop {
        let body = scrape(&metrics);
        if total(&body, "sluice_node_wals", &[]) >= 4.0 || std::time::Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ok = ["pchannel=\"sluice-dml_0\"", "code=\"OK\""];
    let appends_before = total(&before, "sluice_wal_appends_total", &ok);
    assert!(appends_before >= 1.0, "{before}");
    assert!(
        total(&before, "sluice_node_wal_opens_total", &[]) >= 4.0,
        "every pchannel's WAL opened: {before}"
    );
    assert!(total(&before, "sluice_node_wals", &[]) >= 4.0, "{before}");
    for i in 0..25 {
        let msg = MutableMessage::builder(InsertHeader {
            collection_id: 77,
            partitions: vec![PartitionSegmentAssignment {
                partition_id: 1,
                rows: 1,
                binary_size: 8,
                segment_id: 0,
            }],
        })
        .vchannel(&v)
        .property("i", i.to_string())
        .payload(vec![1u8; 8])
        .build()
        .unwrap();
        client.append(msg).await.unwrap();
    }
    // A read of a collection that does not exist: counted with its code.
    let query = QueryClient::connect(&endpoint).unwrap();
    let err = query
        .query(v1::QueryRequest {
            collection: "nothing-here".into(),
            ..v1::QueryRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code.name(), "COLLECTION_NOT_FOUND", "{err}");
    let after = scrape(&metrics);
    let appends_after = total(&after, "sluice_wal_appends_total", &ok);
    assert_eq!(appends_after - appends_before, 25.0, "{after}");
    assert!(
        total(
            &after,
            "sluice_wal_append_seconds_count",
            &["pchannel=\"sluice-dml_0\""]
        ) >= appends_after,
        "every append is timed: {after}"
    );
    assert_eq!(
        total(
            &after,
            "sluice_query_requests_total",
            &["kind=\"query\"", "code=\"COLLECTION_NOT_FOUND\""]
        ),
        1.0,
        "{after}"
    );
    assert!(
        after.contains("sluice_wal_recovery_seconds"),
        "recovery is timed: {after}"
    );
    // The coordinator in the process placed every pchannel once.
    assert!(
        total(&after, "sluice_coord_assignments_total", &[]) >= 4.0,
        "{after}"
    );
    assert!(
        after.contains("sluice_wal_timetick_lag_seconds{pchannel=\"sluice-dml_0\"}"),
        "{after}"
    );
    assert!(
        after.contains("sluice_wal_growing_segments{pchannel=\"sluice-dml_0\"}"),
        "{after}"
    );
    // gRPC calls by method and code: the refused query was answered in its headers
    // (FailedPrecondition carries COLLECTION_NOT_FOUND), produce streams were opened.
    assert!(
        total(
            &after,
            "sluice_grpc_requests_total",
            &[
                "method=\"/sluice.v1.Query/Query\"",
                "code=\"FailedPrecondition\""
            ]
        ) >= 1.0,
        "{after}"
    );
    assert!(
        total(
            &after,
            "sluice_grpc_requests_total",
            &["method=\"/sluice.v1.StreamingNode/Produce\"", "code=\"Ok\""]
        ) >= 1.0,
        "{after}"
    );
    assert!(
        total(&after, "sluice_coord_topology_version", &[]) >= 1.0,
        "{after}"
    );
    // A ManualFlush seals the growing segment; the flusher writes it and counts it.
    client
        .append(
            MutableMessage::builder(ManualFlushHeader {
                collection_id: 77,
                flush_ts: 0,
                segment_ids: Vec::new(),
            })
            .vchannel(&v)
            .build()
            .unwrap(),
        )
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let body = scrape(&metrics);
        if total(&body, "sluice_storage_segments_flushed_total", &[]) >= 1.0 {
            assert!(
                total(&body, "sluice_storage_flushed_rows_total", &[]) >= 25.0,
                "{body}"
            );
            assert!(
                total(
                    &body,
                    "sluice_wal_buffer_bytes",
                    &["pchannel=\"sluice-dml_0\""]
                ) > 0.0,
                "{body}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no segment flushed within 30 s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A reader that stops taking messages falls behind: the slowest reader's lag grows while
    // the pchannel moves on, and goes back down (with the reader count) once it is gone.
    let on_p0 = ["pchannel=\"sluice-dml_0\""];
    let readers_before = total(&scrape(&metrics), "sluice_wal_scanners", &on_p0);
    // From the latest message on: its first message is a fresh timetick, so what it lags it
    // lags by not reading.
    let mut stalled = client.read(sluice_client::ReadRequest {
        policy: sluice_types::DeliverPolicy::Latest,
        ..sluice_client::ReadRequest::pchannel(&v.pchannel())
    });
    tokio::time::timeout(Duration::from_secs(30), stalled.next())
        .await
        .expect("the reader's first message")
        .expect("an open reader")
        .expect("a message");
    // More than the gRPC windows and read-ahead hold, so the node's scanner stops being drained.
    for i in 0..300 {
        let msg = MutableMessage::builder(InsertHeader {
            collection_id: 77,
            partitions: vec![PartitionSegmentAssignment {
                partition_id: 1,
                rows: 1,
                binary_size: 64 << 10,
                segment_id: 0,
            }],
        })
        .vchannel(&v)
        .property("big", i.to_string())
        .payload(vec![2u8; 64 << 10])
        .build()
        .unwrap();
        client.append(msg).await.unwrap();
    }
    let lag = |body: &str| total(body, "sluice_wal_scanner_lag_seconds", &on_p0);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let body = scrape(&metrics);
        if lag(&body) >= 1.5 {
            assert!(
                total(&body, "sluice_wal_scanners", &on_p0) >= readers_before + 1.0,
                "{body}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a stalled reader never showed as lagging: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(stalled);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let body = scrape(&metrics);
        if lag(&body) < 1.0 && total(&body, "sluice_wal_scanners", &on_p0) <= readers_before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lag stayed after the stalled reader went: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
