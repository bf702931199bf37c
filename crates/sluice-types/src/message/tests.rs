use super::*;

fn vc() -> VChannel {
    VChannel::new("dml_0_100v0").unwrap()
}

#[test]
fn flags_match_the_reference_table() {
    use MessageType::*;
    for t in MessageType::ALL {
        assert_eq!(MessageType::from_number(t.number()).unwrap(), t);
    }
    assert!(MessageType::from_number(13).is_err());
    let system: Vec<_> = MessageType::ALL
        .into_iter()
        .filter(|t| t.is_system())
        .collect();
    assert_eq!(system, [TimeTick, BeginTxn, CommitTxn, RollbackTxn, Txn]);
    let selfc: Vec<_> = MessageType::ALL
        .into_iter()
        .filter(|t| t.is_self_controlled())
        .collect();
    assert_eq!(selfc, [TimeTick, Flush, CreateSegment]);
    let excl: Vec<_> = MessageType::ALL
        .into_iter()
        .filter(|t| t.is_exclusive())
        .collect();
    assert_eq!(
        excl,
        [
            CreateCollection,
            DropCollection,
            CreatePartition,
            DropPartition,
            ManualFlush,
            SchemaChange
        ]
    );
}

#[test]
fn wire_numbers_are_pinned() {
    let pinned: Vec<u32> = MessageType::ALL.iter().map(|t| t.number()).collect();
    assert_eq!(
        pinned,
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 900, 901, 902, 999]
    );
}

#[test]
fn builder_sets_type_header_and_user_properties() {
    let header = InsertHeader {
        collection_id: 100,
        partitions: vec![PartitionSegmentAssignment {
            partition_id: 7,
            rows: 3,
            binary_size: 30,
            segment_id: 0,
        }],
    };
    let msg = MutableMessage::builder(header.clone())
        .vchannel(&vc())
        .payload(&b"rows"[..])
        .property("trace", "abc")
        .build()
        .unwrap();
    assert_eq!(msg.message_type().unwrap(), MessageType::Insert);
    assert_eq!(msg.version().unwrap(), MESSAGE_VERSION);
    assert_eq!(msg.header::<InsertHeader>().unwrap(), header);
    assert!(matches!(
        msg.header::<DeleteHeader>(),
        Err(ParseError::HeaderType { .. })
    ));
    assert_eq!(msg.vchannel().unwrap(), Some(vc()));
    assert_eq!(
        msg.user_properties().collect::<Vec<_>>(),
        [("trace", "abc")]
    );
    assert_eq!(msg.timestamp().unwrap(), None);
}

#[test]
fn reserved_user_properties_are_rejected() {
    for key in ["_tt", "_custom", ""] {
        let err = MutableMessage::builder(DeleteHeader::default())
            .property(key, "x")
            .build()
            .unwrap_err();
        assert_eq!(err, ParseError::ReservedProperty(key.to_owned()));
    }
}

#[test]
fn wal_stamps_round_trip() {
    let mut msg = MutableMessage::builder(TimeTickHeader::default())
        .build()
        .unwrap();
    msg.set_timestamp(Timestamp(u64::MAX));
    msg.set_term(Term(42));
    msg.set_barrier_timestamp(Timestamp(0));
    msg.set_txn_context(TxnContext {
        txn_id: 9,
        keepalive_ms: -1,
    });
    msg.set_not_persisted(true).unwrap();
    msg.set_last_confirmed(MessageId(5));
    assert_eq!(msg.timestamp().unwrap(), Some(Timestamp(u64::MAX)));
    assert_eq!(msg.term().unwrap(), Some(Term(42)));
    assert_eq!(msg.barrier_timestamp().unwrap(), Some(Timestamp(0)));
    assert_eq!(msg.txn_context().unwrap().unwrap().txn_id, 9);
    assert!(msg.is_not_persisted());
    let imm = msg.clone().into_immutable(MessageId(7));
    assert_eq!(imm.last_confirmed().unwrap(), Some(MessageId(5)));
    msg.set_last_confirmed_is_self();
    let imm = msg.into_immutable(MessageId(7));
    assert_eq!(imm.last_confirmed().unwrap(), Some(MessageId(7)));
    assert_eq!(imm.id(), MessageId(7));
}

#[test]
fn only_timeticks_may_be_not_persisted() {
    let mut msg = MutableMessage::builder(DeleteHeader::default())
        .build()
        .unwrap();
    assert!(msg.set_not_persisted(true).is_err());
    assert!(!msg.is_not_persisted());
}

#[test]
fn malformed_reserved_properties_are_errors() {
    let mut props = Properties::new();
    props.insert(keys::TYPE.into(), "2".into());
    props.insert(keys::TIMESTAMP.into(), "!!".into());
    props.insert(keys::HEADER.into(), "not base64".into());
    props.insert(keys::VCHANNEL.into(), "no-shard".into());
    props.insert(keys::LAST_CONFIRMED.into(), "xyz".into());
    let msg = Message::from_parts(Bytes::new(), props).unwrap();
    assert!(msg.timestamp().is_err());
    assert!(msg.header::<InsertHeader>().is_err());
    assert!(msg.vchannel().is_err());
    let imm = ImmutableMessage::new(MessageId(1), msg);
    assert!(imm.last_confirmed().is_err());
    assert_eq!(
        Message::from_parts(Bytes::new(), Properties::new()).unwrap_err(),
        ParseError::MissingProperty(keys::TYPE)
    );
}

#[test]
fn size_estimate_counts_payload_and_properties() {
    let msg = MutableMessage::builder(ImportHeader::default())
        .payload(vec![0u8; 100])
        .property("k", "vv")
        .build()
        .unwrap();
    let props: usize = msg
        .properties()
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    assert_eq!(msg.estimate_size(), 100 + props);
    assert!(props >= 3);
}

/// The size kept by the setters always matches the properties it summarizes.
#[test]
fn size_estimate_follows_every_setter() {
    fn recount(m: &Message) -> usize {
        m.payload().len()
            + m.properties()
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
    let mut msg = MutableMessage::builder(TimeTickHeader::default())
        .payload(vec![1u8; 7])
        .property("k", "v")
        .property("k", "longer value")
        .build()
        .unwrap();
    assert_eq!(msg.estimate_size(), recount(&msg));
    msg.set_timestamp(Timestamp(5));
    msg.set_timestamp(Timestamp(u64::MAX));
    msg.set_term(Term(3));
    msg.set_last_confirmed(MessageId(9));
    assert_eq!(msg.estimate_size(), recount(&msg));
    msg.set_last_confirmed_is_self();
    msg.set_not_persisted(true).unwrap();
    assert_eq!(msg.estimate_size(), recount(&msg));
    msg.set_not_persisted(false).unwrap();
    msg.set_last_confirmed(MessageId(10));
    let copy = msg.clone();
    msg.set_term(Term(300_000));
    assert_eq!(msg.estimate_size(), recount(&msg));
    assert_eq!(copy.estimate_size(), recount(&copy));
    let decoded =
        Message::from_parts(msg.payload().clone(), msg.properties().into_owned()).unwrap();
    assert_eq!(decoded.estimate_size(), msg.estimate_size());
    assert_eq!(decoded.timestamp().unwrap(), Some(Timestamp(u64::MAX)));
}

fn txn_part<H: MessageHeader>(h: H, txn_id: i64, id: u128) -> ImmutableMessage {
    let mut m = MutableMessage::builder(h).vchannel(&vc()).build().unwrap();
    m.set_txn_context(TxnContext {
        txn_id,
        keepalive_ms: 1000,
    });
    m.set_timestamp(Timestamp(id as u64 * 10));
    m.set_last_confirmed(MessageId(id));
    m.into_immutable(MessageId(id))
}

#[test]
fn txn_message_checks_its_parts() {
    let begin = txn_part(BeginTxnHeader::default(), 7, 1);
    let body = txn_part(InsertHeader::default(), 7, 2);
    let commit = txn_part(CommitTxnHeader::default(), 7, 3);
    let txn = ImmutableTxnMessage::new(begin.clone(), vec![body.clone()], commit.clone()).unwrap();
    assert_eq!(txn.txn_id().unwrap(), 7);
    assert_eq!(txn.timestamp().unwrap(), Some(Timestamp(30)));
    assert_eq!(txn.last_confirmed().unwrap(), Some(MessageId(3)));
    assert_eq!(txn.bodies().len(), 1);
    let other = txn_part(InsertHeader::default(), 8, 2);
    assert!(ImmutableTxnMessage::new(begin.clone(), vec![other], commit.clone()).is_err());
    assert!(ImmutableTxnMessage::new(body.clone(), vec![], commit.clone()).is_err());
    assert!(ImmutableTxnMessage::new(begin, vec![], body).is_err());
}

/// Typed properties are stored as the reserved properties they stand for: a decoded copy has
/// the same envelope, and stamping a decoded message again leaves one copy of each stamp.
#[test]
fn typed_properties_encode_as_properties() {
    let mut msg = MutableMessage::builder(InsertHeader::default())
        .vchannel(&vc())
        .payload(vec![3u8; 10])
        .property("k", "v")
        .build()
        .unwrap();
    msg.set_timestamp(Timestamp(1 << 40));
    msg.set_term(Term(7));
    msg.set_last_confirmed(MessageId(0xabc));
    msg.set_producer(36 * 36, 35);
    let props = msg.properties();
    assert_eq!(props.get(keys::TYPE).unwrap(), "2");
    assert_eq!(
        props.get(keys::VERSION).unwrap(),
        &MESSAGE_VERSION.to_string()
    );
    assert_eq!(props.get(keys::VCHANNEL).unwrap(), vc().as_str());
    assert_eq!(props.get("k").unwrap(), "v");
    assert_eq!(props.len(), 9);
    assert_eq!(msg.property_count(), 9);
    assert_eq!(props.get(keys::PRODUCER).unwrap(), "100");
    assert_eq!(props.get(keys::PRODUCER_SEQUENCE).unwrap(), "z");
    assert_eq!(props.get(keys::TIMESTAMP).unwrap(), &encode_base36(1 << 40));
    assert_eq!(props.get(keys::TERM).unwrap(), "7");
    assert_eq!(
        props.get(keys::LAST_CONFIRMED).unwrap(),
        &MessageId(0xabc).to_string()
    );
    let bytes = crate::codec::encode_message_to_vec(&msg).unwrap();
    assert_eq!(bytes.len(), crate::codec::encoded_len(&msg));
    let (decoded, _) = crate::codec::decode_message(&bytes).unwrap();
    assert_eq!(decoded, *msg);
    assert_eq!(decoded.properties(), msg.properties());
    assert_eq!(decoded.vchannel().unwrap(), Some(vc()));
    assert_eq!(decoded.version().unwrap(), MESSAGE_VERSION);
    assert_eq!(decoded.estimate_size(), msg.estimate_size());
    assert_eq!(decoded.term().unwrap(), Some(Term(7)));
    assert_eq!(decoded.producer().unwrap(), Some((36 * 36, 35)));
    let imm = ImmutableMessage::new(MessageId(1), decoded.clone());
    assert_eq!(imm.last_confirmed().unwrap(), Some(MessageId(0xabc)));

    // Stamped again: the map's copies give way to the typed ones.
    let mut again = MutableMessage::from_message(decoded);
    again.set_timestamp(Timestamp(5));
    again.set_term(Term(8));
    again.set_last_confirmed(MessageId(9));
    again.set_producer(7, 1);
    assert_eq!(again.property_count(), msg.property_count());
    let sizes = |m: &Message| {
        let mut n = 0;
        m.for_each_property(|k, v| n += k.len() + v.len());
        n
    };
    assert_eq!(again.properties_len(), sizes(&again));
    let (decoded, _) =
        crate::codec::decode_message(&crate::codec::encode_message_to_vec(&again).unwrap())
            .unwrap();
    assert_eq!(decoded.timestamp().unwrap(), Some(Timestamp(5)));
    assert_eq!(decoded.term().unwrap(), Some(Term(8)));
    assert_eq!(decoded.producer().unwrap(), Some((7, 1)));
    assert_eq!(decoded.estimate_size(), again.estimate_size());
    let imm = ImmutableMessage::new(MessageId(1), decoded);
    assert_eq!(imm.last_confirmed().unwrap(), Some(MessageId(9)));

    // Marked as its own last-confirmed id, then given a real one: the flag goes.
    again.set_last_confirmed_is_self();
    assert_eq!(
        again.into_immutable(MessageId(4)).last_confirmed().unwrap(),
        Some(MessageId(4))
    );
    let mut own = MutableMessage::builder(TimeTickHeader::default())
        .build()
        .unwrap();
    own.set_last_confirmed_is_self();
    own.set_last_confirmed(MessageId(2));
    assert!(!own.properties().contains_key(keys::LAST_CONFIRMED_IS_SELF));
    assert_eq!(
        own.into_immutable(MessageId(4)).last_confirmed().unwrap(),
        Some(MessageId(2))
    );
}

/// Headers of any size round-trip; replacing one keeps the size estimate equal to what the
/// properties hold; a header that is not base64 is an error naming it.
#[test]
fn headers_of_any_size_round_trip_and_keep_the_size_right() {
    let header = |parts: i64, segment: i64| InsertHeader {
        collection_id: 7,
        partitions: (0..parts)
            .map(|p| PartitionSegmentAssignment {
                partition_id: p,
                rows: 1000 + p as u64,
                binary_size: 1 << 20,
                segment_id: segment,
            })
            .collect(),
    };
    let size_of = |m: &MutableMessage| {
        m.payload().len()
            + m.properties()
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    };
    for parts in [1, 3, 40] {
        let mut m = MutableMessage::builder(header(parts, 0))
            .vchannel(&vc())
            .payload(vec![1; 10])
            .build()
            .unwrap();
        assert_eq!(m.header::<InsertHeader>().unwrap(), header(parts, 0));
        assert_eq!(m.estimate_size(), size_of(&m));
        // A longer value (large segment ids), then a shorter one again.
        m.set_header(&header(parts, i64::MAX)).unwrap();
        assert_eq!(m.header::<InsertHeader>().unwrap(), header(parts, i64::MAX));
        assert_eq!(m.estimate_size(), size_of(&m));
        m.set_header(&header(parts, 1)).unwrap();
        assert_eq!(m.header::<InsertHeader>().unwrap(), header(parts, 1));
        assert_eq!(m.estimate_size(), size_of(&m));
        // What it encodes to decodes to the same header.
        let (back, _) =
            crate::codec::decode_message(&crate::codec::encode_message_to_vec(&m).unwrap())
                .unwrap();
        assert_eq!(back.header::<InsertHeader>().unwrap(), header(parts, 1));
    }
    let mut props = Properties::new();
    props.insert(keys::TYPE.into(), "2".into());
    props.insert(keys::VERSION.into(), "2".into());
    props.insert(keys::HEADER.into(), "%%% not base64".into());
    let m = Message::from_parts(Bytes::new(), props);
    match m.map(|m| m.header::<InsertHeader>()) {
        Ok(Err(ParseError::Property { key, reason, .. })) => {
            assert_eq!((key, reason), (keys::HEADER, "not base64"));
        }
        other => panic!("{other:?}"),
    }
}

/// A packed message reads, encodes and compares exactly like the original; messages share
/// chunks; a setter on a packed copy unpacks it and leaves the others alone.
#[test]
fn packed_messages_read_like_the_original() {
    let mut packer = Packer::new(4096);
    let originals: Vec<ImmutableMessage> = (0..20u128)
        .map(|i| {
            let mut m = MutableMessage::builder(InsertHeader {
                collection_id: i as i64,
                ..Default::default()
            })
            .vchannel(&vc())
            .payload(vec![i as u8; 300 + i as usize * 50])
            .property("user", format!("value-{i}"))
            .build()
            .unwrap();
            m.set_timestamp(Timestamp(100 + i as u64));
            m.set_txn_context(TxnContext {
                txn_id: i as i64,
                keepalive_ms: 5,
            });
            m.into_immutable(MessageId(i))
        })
        .collect();
    let mut packed = originals.clone();
    for m in &mut packed {
        m.pack(&mut packer);
    }
    for (o, p) in originals.iter().zip(&packed) {
        assert_eq!(o, p);
        assert_eq!(o.properties(), p.properties());
        assert_eq!(o.payload(), p.payload());
        assert_eq!(o.estimate_size(), p.estimate_size());
        assert_eq!(o.property("user"), p.property("user"));
        assert_eq!(o.property("absent"), None);
        assert_eq!(p.property("absent"), None);
        assert_eq!(
            o.header::<InsertHeader>().unwrap(),
            p.header::<InsertHeader>().unwrap()
        );
        assert_eq!(o.txn_context().unwrap(), p.txn_context().unwrap());
        assert_eq!(
            o.user_properties().collect::<Vec<_>>(),
            p.user_properties().collect::<Vec<_>>()
        );
        assert_eq!(
            crate::codec::encode_message_to_vec(o).unwrap(),
            crate::codec::encode_message_to_vec(p).unwrap()
        );
    }
    // Several small messages per 4 KiB chunk; the 1250-byte ones still fit one each.
    let chunk_of = |m: &ImmutableMessage| m.payload().as_ptr() as usize / 4096;
    assert!(
        packed
            .windows(2)
            .any(|w| chunk_of(&w[0]) == chunk_of(&w[1]))
    );

    // Changing a packed copy unpacks that copy only.
    let mut changed = MutableMessage::from_message(packed[3].message().clone());
    changed.set_txn_context(TxnContext {
        txn_id: 99,
        keepalive_ms: 1,
    });
    assert_eq!(changed.txn_context().unwrap().unwrap().txn_id, 99);
    assert_eq!(changed.property("user"), Some("value-3"));
    assert_eq!(packed[3].txn_context().unwrap().unwrap().txn_id, 3);
    // Packing twice changes nothing.
    let again = {
        let mut m = packed[5].clone();
        m.pack(&mut packer);
        m
    };
    assert_eq!(again.payload().as_ptr(), packed[5].payload().as_ptr());
}

#[test]
fn base36_matches_std_parse() {
    for v in [0u64, 1, 35, 36, 1295, u64::MAX, 1 << 40] {
        assert_eq!(u64::from_str_radix(&encode_base36(v), 36).unwrap(), v);
    }
}
