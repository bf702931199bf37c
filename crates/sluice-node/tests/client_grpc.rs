//! Node and client over real gRPC on 127.0.0.1: produce and consume, the term-checked node
//! lifecycle, and a WAL moving between two nodes that share one log while producers keep going.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use sluice_client::access::{RemoteAccess, WalAccess};
use sluice_client::topology::StaticTopology;
use sluice_client::{Assignment, Client, ClientConfig, ReadRequest};
use sluice_log::LogProvider;
use sluice_log::memory::{MemoryConfig, MemoryProvider};
use sluice_node::WalManager;
use sluice_node::service::NodeService;
use sluice_proto::v1::{
    self, produce_appended, produce_request, produce_response,
    streaming_node_client::StreamingNodeClient,
};
use sluice_types::message::{CreateCollectionHeader, InsertHeader, PartitionSegmentAssignment};
use sluice_types::{ErrorCode, MessageType, MutableMessage, NodeId, PChannel, Term, VChannel};
use sluice_types::{MessageFilter, ReadMessage};
use sluice_wal::shard::NodeGrowingBytes;
use sluice_wal::tso::LocalOracle;
use sluice_wal::{WalConfig, WalDeps};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

struct TestNode {
    id: u64,
    address: String,
    manager: Arc<WalManager>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn start_node(id: u64, provider: Arc<dyn LogProvider>, oracle: Arc<LocalOracle>) -> TestNode {
    let deps = WalDeps {
        oracle: oracle.clone(),
        ids: oracle,
        node_growing: NodeGrowingBytes::new(),
        pressure: sluice_wal::Pressure::unlimited(),
        checkpoints: None,
        rows: None,
    };
    let config = WalConfig {
        timetick_interval: Duration::from_millis(20),
        ..WalConfig::default()
    };
    let manager = Arc::new(WalManager::new(provider, config, deps));
    let service = NodeService::new(NodeId(id), manager.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service.streaming_server())
            .add_service(service.manager_server())
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
    });
    TestNode {
        id,
        address,
        manager,
        server,
    }
}

fn shared_memory(name: &str) -> Arc<dyn LogProvider> {
    Arc::new(MemoryProvider::new(MemoryConfig {
        shared_name: Some(name.to_owned()),
        ..MemoryConfig::default()
    }))
}

fn pchannel() -> PChannel {
    PChannel::new("grpc-p0").unwrap()
}

fn vchannel(collection: i64) -> VChannel {
    VChannel::new(format!("grpc-p0_{collection}v0")).unwrap()
}

fn create_collection(collection: i64) -> MutableMessage {
    MutableMessage::builder(CreateCollectionHeader {
        collection_id: collection,
        partition_ids: vec![1],
        db_id: 1,
        schema: None,
    })
    .vchannel(&vchannel(collection))
    .build()
    .unwrap()
}

fn insert(collection: i64, tag: &str) -> MutableMessage {
    MutableMessage::builder(InsertHeader {
        collection_id: collection,
        partitions: vec![PartitionSegmentAssignment {
            partition_id: 1,
            rows: 1,
            binary_size: 64,
            segment_id: 0,
        }],
    })
    .vchannel(&vchannel(collection))
    .property("tag", tag)
    .payload(vec![1u8; 64])
    .build()
    .unwrap()
}

fn assignment(node: &TestNode, term: u64) -> Assignment {
    Assignment {
        pchannel: pchannel(),
        term: Term(term),
        node_id: NodeId(node.id),
        address: node.address.clone(),
    }
}

fn remote_client(topology: Arc<StaticTopology>) -> Client {
    Client::new(
        topology,
        Arc::new(RemoteAccess::new()),
        ClientConfig {
            timeout: Some(Duration::from_secs(30)),
            ..ClientConfig::default()
        },
    )
}

fn tag_of(m: &ReadMessage) -> Option<String> {
    m.as_message()
        .and_then(|m| m.property("tag"))
        .map(str::to_owned)
}

/// Reads `vchannel` until `want` tagged inserts arrived; checks timestamps strictly increase.
async fn read_tags(client: &Client, collection: i64, want: usize) -> Vec<String> {
    let mut request = ReadRequest::vchannel(&vchannel(collection));
    request
        .filters
        .push(MessageFilter::Types(vec![MessageType::Insert]));
    let mut reader = client.read(request);
    let mut tags = Vec::new();
    let mut last_ts = None;
    while tags.len() < want {
        let m = tokio::time::timeout(Duration::from_secs(20), reader.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {want} inserts arrived", tags.len()))
            .expect("reader ended")
            .expect("read error");
        if m.is_timetick() {
            continue;
        }
        let ts = m.timestamp().unwrap();
        assert!(
            last_ts.is_none_or(|l| ts > l),
            "timestamps must strictly increase"
        );
        last_ts = Some(ts);
        if let Some(tag) = tag_of(&m) {
            tags.push(tag);
        }
    }
    tags
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_consume_over_grpc() {
    let node = start_node(1, shared_memory("grpc-basic"), LocalOracle::new()).await;
    node.manager.assign(&pchannel(), Term(1)).await.unwrap();
    let topology = StaticTopology::new();
    topology.set([assignment(&node, 1)]);
    let client = remote_client(topology);

    client.append(create_collection(7)).await.unwrap();
    let appends = (0..200).map(|i| {
        let client = client.clone();
        async move { client.append(insert(7, &format!("m{i}"))).await }
    });
    let results = futures::future::join_all(appends).await;
    let mut ids = BTreeSet::new();
    for r in results {
        let r = r.expect("append");
        assert!(r.last_confirmed <= r.id);
        assert!(ids.insert(r.id), "ids are unique");
    }
    let tags = read_tags(&client, 7, 200).await;
    let expected: BTreeSet<String> = (0..200).map(|i| format!("m{i}")).collect();
    assert_eq!(tags.iter().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(tags.len(), 200, "no duplicates");

    // Several messages of one vchannel become one transaction: one result for all of them.
    let results = client
        .append_messages(vec![insert(7, "t0"), insert(7, "t1"), insert(7, "t2")])
        .await
        .unwrap();
    assert_eq!(results.len(), 3);
    assert!(
        results.windows(2).all(|w| w[0] == w[1]),
        "every message gets the commit's result"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_checks_terms_and_ownership() {
    let node = start_node(1, shared_memory("grpc-terms"), LocalOracle::new()).await;
    let access = RemoteAccess::new();

    // Nothing assigned yet: CHANNEL_NOT_EXIST.
    let err = access
        .append(&assignment(&node, 1), create_collection(1))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ChannelNotExist);

    node.manager.assign(&pchannel(), Term(2)).await.unwrap();
    // Wrong term: UNMATCHED_CHANNEL_TERM.
    let err = access
        .append(&assignment(&node, 1), create_collection(1))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::UnmatchedChannelTerm);
    // An older term than one seen: IGNORED_OPERATION, and term 2 stays open.
    let err = node.manager.assign(&pchannel(), Term(1)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::IgnoredOperation);
    access
        .append(&assignment(&node, 2), create_collection(1))
        .await
        .expect("term 2 still serves");
    // Remove at the wrong term is refused; at the right term it closes the WAL.
    let err = node.manager.remove(&pchannel(), Term(3)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnmatchedChannelTerm);
    node.manager.remove(&pchannel(), Term(2)).await.unwrap();
    // The open producer stream learns the WAL closed; a new one finds nothing here.
    let err = access
        .append(&assignment(&node, 2), insert(1, "x"))
        .await
        .unwrap_err();
    assert!(
        err.is_wrong_node() || err.code == ErrorCode::OnShutdown,
        "after remove: {err}"
    );
    let err = RemoteAccess::new()
        .append(&assignment(&node, 2), insert(1, "x"))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ChannelNotExist);

    // Bad input over the wire (an envelope without a type) is INVALID_ARGUMENT for that
    // append; the stream and the WAL keep serving.
    node.manager.assign(&pchannel(), Term(3)).await.unwrap();
    let mut raw = StreamingNodeClient::connect(format!("http://{}", node.address))
        .await
        .unwrap();
    let requests = vec![
        v1::ProduceRequest {
            request: Some(produce_request::Request::Open(v1::ProduceOpen {
                pchannel: Some(v1::PChannelAtTerm {
                    name: pchannel().as_str().to_owned(),
                    term: 3,
                }),
                batch_responses: true,
            })),
        },
        v1::ProduceRequest {
            request: Some(produce_request::Request::Append(v1::ProduceAppend {
                request_id: 1,
                message: Some(v1::Message {
                    payload: vec![1, 2, 3].into(),
                    properties: [("_t".to_owned(), "nonsense".to_owned())].into(),
                    ..v1::Message::from(&*insert(1, "reserved key"))
                }),
                barrier_timestamp: 0,
                ..Default::default()
            })),
        },
        v1::ProduceRequest {
            request: Some(produce_request::Request::Append(v1::ProduceAppend {
                request_id: 2,
                message: Some(v1::Message::from(&*insert(1, "ok"))),
                barrier_timestamp: 0,
                ..Default::default()
            })),
        },
        // A batch: each of its appends is answered on its own; a bad one fails alone.
        v1::ProduceRequest {
            request: Some(produce_request::Request::Appends(v1::ProduceAppendBatch {
                appends: vec![
                    v1::ProduceAppend {
                        request_id: 3,
                        message: Some(v1::Message::from(&*insert(1, "batched"))),
                        ..Default::default()
                    },
                    v1::ProduceAppend {
                        request_id: 4,
                        message: None,
                        ..Default::default()
                    },
                    v1::ProduceAppend {
                        request_id: 5,
                        message: Some(v1::Message::from(&*insert(1, "batched too"))),
                        ..Default::default()
                    },
                ],
            })),
        },
        // A batch over the limit: nothing of it is appended.
        v1::ProduceRequest {
            request: Some(produce_request::Request::Appends(v1::ProduceAppendBatch {
                appends: (0..=sluice_node::service::MAX_INFLIGHT_APPENDS as u64)
                    .map(|i| v1::ProduceAppend {
                        request_id: 100 + i,
                        message: Some(v1::Message::from(&*insert(1, "too many"))),
                        ..Default::default()
                    })
                    .collect(),
            })),
        },
        v1::ProduceRequest {
            request: Some(produce_request::Request::Close(v1::ProduceClose {})),
        },
    ];
    let mut responses = raw
        .produce(futures::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut outcomes = BTreeMap::new();
    let mut closed = None;
    while let Some(r) = responses.message().await.unwrap() {
        assert!(closed.is_none(), "a response after `closed`: {r:?}");
        match r.response {
            Some(produce_response::Response::Appended(a)) => {
                outcomes.insert(a.request_id, a.outcome.unwrap());
            }
            Some(produce_response::Response::AppendedBatch(b)) => {
                for a in b.appended {
                    outcomes.insert(a.request_id, a.outcome.unwrap());
                }
            }
            Some(produce_response::Response::Opened(_)) => assert!(outcomes.is_empty()),
            Some(produce_response::Response::Closed(c)) => closed = Some(c),
            None => panic!("a response without content"),
        }
    }
    // `close` ends the stream once everything before it is answered, with no error.
    assert_eq!(closed, Some(v1::ProduceClosed { reason: None }));
    let failed = |id: u64| match &outcomes[&id] {
        produce_appended::Outcome::Error(e) => sluice_proto::convert::error_from_wire(e).0,
        other => panic!("append {id} should have failed: {other:?}"),
    };
    for id in [3, 5] {
        assert!(
            matches!(&outcomes[&id], produce_appended::Outcome::Result(_)),
            "batched append {id}: {:?}",
            outcomes[&id]
        );
    }
    assert_eq!(failed(4), ErrorCode::InvalidArgument);
    for i in 0..=sluice_node::service::MAX_INFLIGHT_APPENDS as u64 {
        assert_eq!(failed(100 + i), ErrorCode::InvalidArgument);
    }
    assert_eq!(
        outcomes.len(),
        5 + sluice_node::service::MAX_INFLIGHT_APPENDS + 1
    );
    match &outcomes[&1] {
        produce_appended::Outcome::Error(e) => {
            assert_eq!(
                sluice_proto::convert::error_from_wire(e).0,
                ErrorCode::InvalidArgument,
                "{e:?}"
            )
        }
        other => panic!("a message with a reserved property was accepted: {other:?}"),
    }
    assert!(
        matches!(&outcomes[&2], produce_appended::Outcome::Result(_)),
        "the valid append after it succeeds: {:?}",
        outcomes[&2]
    );

    // A second `open` ends the stream with INVALID_REQUEST_SEQ, after the append before it
    // is answered.
    let open = v1::ProduceRequest {
        request: Some(produce_request::Request::Open(v1::ProduceOpen {
            pchannel: Some(v1::PChannelAtTerm {
                name: pchannel().as_str().to_owned(),
                term: 3,
            }),
            batch_responses: false,
        })),
    };
    let append = v1::ProduceRequest {
        request: Some(produce_request::Request::Append(v1::ProduceAppend {
            request_id: 7,
            message: Some(v1::Message::from(&*insert(1, "before the second open"))),
            ..Default::default()
        })),
    };
    let mut responses = raw
        .produce(futures::stream::iter(vec![open.clone(), append, open]))
        .await
        .unwrap()
        .into_inner();
    let mut answered = Vec::new();
    let status = loop {
        match responses.message().await {
            Ok(Some(v1::ProduceResponse {
                response: Some(produce_response::Response::Appended(a)),
            })) => answered.push(a),
            Ok(Some(v1::ProduceResponse {
                response: Some(produce_response::Response::Opened(_)),
            })) => {}
            Ok(other) => panic!("unexpected response {other:?}"),
            Err(status) => break status,
        }
    };
    assert_eq!(answered.len(), 1, "{answered:?}");
    assert!(matches!(
        answered[0].outcome,
        Some(produce_appended::Outcome::Result(_))
    ));
    assert_eq!(
        sluice_proto::convert::error_of(&status).0,
        ErrorCode::InvalidRequestSeq,
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_follow_a_moved_wal() {
    let provider = shared_memory("grpc-move");
    let oracle = LocalOracle::new();
    let a = start_node(1, provider.clone(), oracle.clone()).await;
    let b = start_node(2, provider, oracle).await;
    a.manager.assign(&pchannel(), Term(1)).await.unwrap();
    let topology = StaticTopology::new();
    topology.set([assignment(&a, 1)]);
    let client = remote_client(topology.clone());
    client.append(create_collection(9)).await.unwrap();

    // Four producers append continuously while the WAL moves from node 1 to node 2 (term 2
    // fences term 1 in the shared log).
    let acked = Arc::new(parking_lot::Mutex::new(BTreeMap::new()));
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let client = client.clone();
            let acked = acked.clone();
            tokio::spawn(async move {
                for i in 0..150 {
                    let tag = format!("p{p}-{i}");
                    let r = client
                        .append(insert(9, &tag))
                        .await
                        .expect("append survives the move");
                    acked.lock().insert(tag, r.timestamp);
                }
            })
        })
        .collect();
    while acked.lock().len() < 100 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    b.manager.assign(&pchannel(), Term(2)).await.unwrap();
    topology.set([assignment(&b, 2)]);
    for p in producers {
        p.await.unwrap();
    }
    let acked = acked.lock().clone();
    assert_eq!(acked.len(), 600);

    // The old owner no longer takes appends.
    let err = RemoteAccess::new()
        .append(&assignment(&a, 1), insert(9, "late"))
        .await
        .unwrap_err();
    assert!(err.is_wrong_node(), "old owner after the move: {err}");

    // A reader on the new owner sees every acknowledged message (duplicates are allowed by
    // at-least-once delivery; count them).
    let reader_client = remote_client(topology);
    let mut request = ReadRequest::vchannel(&vchannel(9));
    request
        .filters
        .push(MessageFilter::Types(vec![MessageType::Insert]));
    let mut reader = reader_client.read(request);
    let mut seen = BTreeSet::new();
    let mut duplicates = 0;
    while !acked.keys().all(|t| seen.contains(t)) {
        let m = tokio::time::timeout(Duration::from_secs(20), reader.next())
            .await
            .expect("every acknowledged message arrives")
            .unwrap()
            .unwrap();
        if let Some(tag) = tag_of(&m)
            && !seen.insert(tag)
        {
            duplicates += 1;
        }
    }
    eprintln!(
        "moved WAL: {} acknowledged, all read back, {duplicates} duplicates",
        acked.len()
    );
}

/// A "node" that accepts connections and never answers (a process that is alive but stopped):
/// its address, and a receiver told of every accepted connection.
async fn hanging_node() -> (String, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
            let _ = tx.send(());
        }
    });
    (address, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_on_a_hanging_owner_end_when_the_pchannel_moves() {
    let node = start_node(2, shared_memory("grpc-hang"), LocalOracle::new()).await;
    node.manager.assign(&pchannel(), Term(2)).await.unwrap();
    let (hang_address, mut accepted) = hanging_node().await;
    let hanging = Assignment {
        pchannel: pchannel(),
        term: Term(1),
        node_id: NodeId(1),
        address: hang_address,
    };

    // An append in flight to the hanging owner completes on the new owner once the topology
    // moves the pchannel to a higher term.
    let topology = StaticTopology::new();
    topology.set([hanging.clone()]);
    let client = remote_client(topology.clone());
    let append = tokio::spawn({
        let client = client.clone();
        async move { client.append(create_collection(5)).await }
    });
    tokio::time::timeout(Duration::from_secs(10), accepted.recv())
        .await
        .expect("the client connects to the hanging owner")
        .unwrap();
    assert!(!append.is_finished(), "the hanging owner answered nothing");
    topology.set([assignment(&node, 2)]);
    tokio::time::timeout(Duration::from_secs(10), append)
        .await
        .expect("the append leaves the hanging owner when the pchannel moves")
        .unwrap()
        .expect("the append succeeds on the new owner");
    client.append(insert(5, "after-move")).await.unwrap();

    // A read from the hanging owner resumes on the new owner the same way.
    let topology = StaticTopology::new();
    topology.set([hanging]);
    let reader_client = remote_client(topology.clone());
    let mut request = ReadRequest::vchannel(&vchannel(5));
    request
        .filters
        .push(MessageFilter::Types(vec![MessageType::Insert]));
    let mut reader = reader_client.read(request);
    tokio::time::timeout(Duration::from_secs(10), accepted.recv())
        .await
        .expect("the reader connects to the hanging owner")
        .unwrap();
    topology.set([assignment(&node, 2)]);
    let tag = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), reader.next())
            .await
            .expect("the read leaves the hanging owner when the pchannel moves")
            .expect("reader ended")
            .expect("read error");
        if let Some(tag) = tag_of(&m) {
            break tag;
        }
    };
    assert_eq!(tag, "after-move");
}
