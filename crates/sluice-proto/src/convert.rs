//! Conversions between the wire types ([`crate::v1`]) and `sluice-types`, both directions, in
//! one place: `From` where every value converts, `TryFrom` (error [`WireError`]) where a wire
//! value can be bad input.
//!
//! Everything arriving from the network is checked here before anything else sees it: an unset
//! or unknown message type, a header of another type (or a missing one a type needs), a
//! reserved property key, a malformed id or channel name is a [`WireError`], which maps to
//! `INVALID_ARGUMENT`, never a panic. What only the WAL can judge (a header's fields against
//! its vchannel, transaction rules) it checks itself, for wire and in-process producers alike.
//!
//! Errors travel as a gRPC status with standard details: a `google.rpc.Status` holding one
//! `google.rpc.ErrorInfo` (domain [`ERROR_DOMAIN`], reason = the code's name, metadata `code` =
//! its number), so that any gRPC library decodes them ([`status`], [`error_of`]).

use std::collections::HashMap;

use sluice_types::message::{Header, MessageBuilder};
use sluice_types::read::{AppendResult, DeliverPolicy, MessageFilter, ReadMessage};
use sluice_types::{
    ErrorCode, ImmutableMessage, ImmutableTxnMessage, Message, MessageId, MessageType,
    MutableMessage, PChannel, ParseError, Term, Timestamp, VChannel,
};
use tonic_types::{ErrorDetails, StatusExt};

use crate::v1::{
    self, consume_response, deliver_filter, deliver_policy, message::Header as WireHeader,
};

/// The `ErrorInfo.domain` of every Sluice error.
pub const ERROR_DOMAIN: &str = "sluice";

/// A wire value that does not convert.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A required field is missing.
    #[error("missing field {0}")]
    Missing(&'static str),
    /// A field whose value is not allowed.
    #[error("invalid field {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A field does not parse or validate.
    #[error(transparent)]
    Parse(#[from] ParseError),
}

impl WireError {
    /// Every wire error is the caller's bad input.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::InvalidArgument
    }

    /// This error as a gRPC status.
    pub fn to_status(&self) -> tonic::Status {
        status(self.code(), self.to_string())
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> WireError {
    WireError::Invalid {
        field,
        reason: reason.into(),
    }
}

// --- message types and headers --------------------------------------------------------------

/// A message type from its wire number (unset and unknown numbers are errors).
pub fn message_type_from_wire(n: i32) -> Result<MessageType, WireError> {
    if n == 0 {
        return Err(WireError::Missing("type"));
    }
    u32::try_from(n)
        .ok()
        .and_then(|n| MessageType::from_number(n).ok())
        .ok_or_else(|| invalid("type", format!("unknown message type {n}")))
}

/// The wire number of a message type.
pub fn message_type_to_wire(ty: MessageType) -> i32 {
    // Every number fits: the largest is 999.
    ty.number() as i32
}

macro_rules! header_conversions {
    ($($ty:ident => $wire:ident),* $(,)?) => {
        impl From<Header> for WireHeader {
            fn from(h: Header) -> WireHeader {
                match h {
                    $(Header::$ty(h) => WireHeader::$wire(h),)*
                }
            }
        }

        impl From<WireHeader> for Header {
            fn from(h: WireHeader) -> Header {
                match h {
                    $(WireHeader::$wire(h) => Header::$ty(h),)*
                }
            }
        }
    };
}

header_conversions!(
    TimeTick => TimeTick,
    Insert => Insert,
    Delete => Delete,
    Flush => Flush,
    CreateCollection => CreateCollection,
    DropCollection => DropCollection,
    CreatePartition => CreatePartition,
    DropPartition => DropPartition,
    ManualFlush => ManualFlush,
    CreateSegment => CreateSegment,
    Import => Import,
    SchemaChange => SchemaChange,
    BeginTxn => BeginTxn,
    CommitTxn => CommitTxn,
    RollbackTxn => RollbackTxn,
    // `txn` is the message's transaction context, so the TXN header's field is `txn_header`.
    Txn => TxnHeader,
);

/// Whether a message of this type must carry its header on the wire (it names a collection, so
/// an all-default header would be a mistake, not a choice).
fn header_required(ty: MessageType) -> bool {
    Header::empty(ty).collection_id().is_some()
}

// --- messages -------------------------------------------------------------------------------

/// The wire form of an envelope. A stored header that does not decode (written before headers
/// were validated) is left unset rather than failing the whole read.
impl From<&Message> for v1::Message {
    fn from(msg: &Message) -> v1::Message {
        let ty = msg.message_type().unwrap_or(MessageType::TimeTick);
        v1::Message {
            r#type: message_type_to_wire(ty),
            vchannel: msg.vchannel_str().unwrap_or_default().to_owned(),
            header: msg.any_header().ok().map(WireHeader::from),
            payload: msg.payload().clone(),
            properties: msg
                .user_properties()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect::<HashMap<_, _>>(),
            txn: msg.txn_context().ok().flatten(),
            broadcast: msg.broadcast_header().ok().flatten(),
        }
    }
}

/// The builder of a message from the wire, every envelope field checked.
fn builder_from_wire(msg: v1::Message) -> Result<MessageBuilder, WireError> {
    let ty = message_type_from_wire(msg.r#type)?;
    let header = match msg.header {
        Some(h) => {
            let h = Header::from(h);
            if h.message_type() != ty {
                return Err(invalid(
                    "header",
                    format!("a {} header on a {ty} message", h.message_type()),
                ));
            }
            h
        }
        None if header_required(ty) => {
            return Err(invalid(
                "header",
                format!("a {ty} message needs its header"),
            ));
        }
        None => Header::empty(ty),
    };
    let mut b = MessageBuilder::from_header(&header).payload(msg.payload);
    if !msg.vchannel.is_empty() {
        b = b.vchannel(&VChannel::new(&msg.vchannel)?);
    }
    // Sorted, so that which bad key is reported does not depend on hash order.
    let mut properties: Vec<_> = msg.properties.into_iter().collect();
    properties.sort_unstable();
    for (k, v) in properties {
        b = b.property(k, v);
    }
    if let Some(txn) = msg.txn {
        b = b.txn(txn);
    }
    if let Some(bh) = msg.broadcast {
        b = b.broadcast(&bh);
    }
    Ok(b)
}

/// A producer's message from the wire.
impl TryFrom<v1::Message> for MutableMessage {
    type Error = WireError;

    fn try_from(msg: v1::Message) -> Result<MutableMessage, WireError> {
        Ok(builder_from_wire(msg)?.build()?)
    }
}

/// The wire form of an appended message.
impl From<&ImmutableMessage> for v1::ImmutableMessage {
    fn from(msg: &ImmutableMessage) -> v1::ImmutableMessage {
        v1::ImmutableMessage {
            id: msg.id().to_string(),
            message: Some(v1::Message::from(msg.message())),
            timestamp: msg.timestamp().ok().flatten().map_or(0, |t| t.0),
            term: msg.term().ok().flatten().map_or(0, |t| t.0),
            last_confirmed_id: msg
                .last_confirmed()
                .ok()
                .flatten()
                .map(|id| id.to_string())
                .unwrap_or_default(),
            version: msg.version().unwrap_or(0),
        }
    }
}

/// An appended message from the wire (what a consumer reads).
impl TryFrom<v1::ImmutableMessage> for ImmutableMessage {
    type Error = WireError;

    fn try_from(msg: v1::ImmutableMessage) -> Result<ImmutableMessage, WireError> {
        let id = message_id_from_wire(&msg.id)?;
        let body = msg.message.ok_or(WireError::Missing("message"))?;
        let mut m = builder_from_wire(body)?.build()?;
        if msg.timestamp != 0 {
            m.set_timestamp(Timestamp(msg.timestamp));
        }
        if msg.term != 0 {
            m.set_term(Term(msg.term));
        }
        if !msg.last_confirmed_id.is_empty() {
            m.set_last_confirmed(message_id_from_wire(&msg.last_confirmed_id)?);
        }
        Ok(m.into_immutable(id))
    }
}

/// The wire form of a committed transaction.
impl From<&ImmutableTxnMessage> for v1::TxnMessage {
    fn from(txn: &ImmutableTxnMessage) -> v1::TxnMessage {
        v1::TxnMessage {
            begin: Some(txn.begin().into()),
            bodies: txn.bodies().iter().map(Into::into).collect(),
            commit: Some(txn.commit().into()),
        }
    }
}

/// A committed transaction from the wire (its parts must belong together).
impl TryFrom<v1::TxnMessage> for ImmutableTxnMessage {
    type Error = WireError;

    fn try_from(txn: v1::TxnMessage) -> Result<ImmutableTxnMessage, WireError> {
        let begin = txn.begin.ok_or(WireError::Missing("begin"))?.try_into()?;
        let commit = txn.commit.ok_or(WireError::Missing("commit"))?.try_into()?;
        let bodies = txn
            .bodies
            .into_iter()
            .map(ImmutableMessage::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ImmutableTxnMessage::new(begin, bodies, commit)?)
    }
}

/// The wire form of one delivered message.
impl From<&ReadMessage> for v1::ConsumeResponse {
    fn from(m: &ReadMessage) -> v1::ConsumeResponse {
        let response = match m {
            ReadMessage::Message(m) => consume_response::Response::Message(m.into()),
            ReadMessage::Txn(t) => consume_response::Response::Txn(t.as_ref().into()),
        };
        v1::ConsumeResponse {
            response: Some(response),
        }
    }
}

/// One delivered message from the wire.
impl TryFrom<v1::ConsumeResponse> for ReadMessage {
    type Error = WireError;

    fn try_from(r: v1::ConsumeResponse) -> Result<ReadMessage, WireError> {
        Ok(match r.response.ok_or(WireError::Missing("response"))? {
            consume_response::Response::Message(m) => ReadMessage::Message(m.try_into()?),
            consume_response::Response::Txn(t) => ReadMessage::Txn(Box::new(t.try_into()?)),
        })
    }
}

// --- appends and reads ----------------------------------------------------------------------

/// The wire form of an append's result.
impl From<AppendResult> for v1::AppendResult {
    fn from(r: AppendResult) -> v1::AppendResult {
        v1::AppendResult {
            id: r.id.to_string(),
            timestamp: r.timestamp.0,
            last_confirmed_id: r.last_confirmed.to_string(),
            txn: r.txn,
            flushed_segments: r.flushed_segments,
        }
    }
}

/// An append's result from the wire.
impl TryFrom<v1::AppendResult> for AppendResult {
    type Error = WireError;

    fn try_from(r: v1::AppendResult) -> Result<AppendResult, WireError> {
        Ok(AppendResult {
            id: message_id_from_wire(&r.id)?,
            timestamp: Timestamp(r.timestamp),
            last_confirmed: message_id_from_wire(&r.last_confirmed_id)?,
            txn: r.txn,
            flushed_segments: r.flushed_segments,
        })
    }
}

/// The wire form of a deliver policy.
impl From<DeliverPolicy> for v1::DeliverPolicy {
    fn from(p: DeliverPolicy) -> v1::DeliverPolicy {
        let policy = match p {
            DeliverPolicy::All => deliver_policy::Policy::All(v1::Empty {}),
            DeliverPolicy::Latest => deliver_policy::Policy::Latest(v1::Empty {}),
            DeliverPolicy::StartFrom(id) => deliver_policy::Policy::StartFrom(id.to_string()),
            DeliverPolicy::StartAfter(id) => deliver_policy::Policy::StartAfter(id.to_string()),
        };
        v1::DeliverPolicy {
            policy: Some(policy),
        }
    }
}

/// A deliver policy from the wire (unset = everything still in the log).
impl TryFrom<v1::DeliverPolicy> for DeliverPolicy {
    type Error = WireError;

    fn try_from(p: v1::DeliverPolicy) -> Result<DeliverPolicy, WireError> {
        Ok(match p.policy {
            None | Some(deliver_policy::Policy::All(_)) => DeliverPolicy::All,
            Some(deliver_policy::Policy::Latest(_)) => DeliverPolicy::Latest,
            Some(deliver_policy::Policy::StartFrom(id)) => {
                DeliverPolicy::StartFrom(message_id_from_wire(&id)?)
            }
            Some(deliver_policy::Policy::StartAfter(id)) => {
                DeliverPolicy::StartAfter(message_id_from_wire(&id)?)
            }
        })
    }
}

/// The wire form of a filter.
impl From<&MessageFilter> for v1::DeliverFilter {
    fn from(f: &MessageFilter) -> v1::DeliverFilter {
        let filter = match f {
            MessageFilter::TimeTickGt(t) => deliver_filter::Filter::TimestampGt(t.0),
            MessageFilter::TimeTickGte(t) => deliver_filter::Filter::TimestampGte(t.0),
            MessageFilter::Types(types) => deliver_filter::Filter::Types(v1::MessageTypes {
                types: types.iter().copied().map(message_type_to_wire).collect(),
            }),
        };
        v1::DeliverFilter {
            filter: Some(filter),
        }
    }
}

/// A filter from the wire.
impl TryFrom<v1::DeliverFilter> for MessageFilter {
    type Error = WireError;

    fn try_from(f: v1::DeliverFilter) -> Result<MessageFilter, WireError> {
        Ok(match f.filter.ok_or(WireError::Missing("filter"))? {
            deliver_filter::Filter::TimestampGt(t) => MessageFilter::TimeTickGt(Timestamp(t)),
            deliver_filter::Filter::TimestampGte(t) => MessageFilter::TimeTickGte(Timestamp(t)),
            deliver_filter::Filter::Types(types) => {
                if types.types.is_empty() {
                    return Err(invalid("types", "name at least one message type"));
                }
                MessageFilter::Types(
                    types
                        .types
                        .into_iter()
                        .map(message_type_from_wire)
                        .collect::<Result<_, _>>()?,
                )
            }
        })
    }
}

/// A message id from its wire form: 32 hex digits, either case.
pub fn message_id_from_wire(id: &str) -> Result<MessageId, WireError> {
    Ok(id.to_ascii_lowercase().parse()?)
}

/// A pchannel at a term from the wire.
pub fn pchannel_from_wire(p: Option<v1::PChannelAtTerm>) -> Result<(PChannel, Term), WireError> {
    let p = p.ok_or(WireError::Missing("pchannel"))?;
    Ok((PChannel::new(&p.name)?, Term(p.term)))
}

/// The wire form of a pchannel at a term.
pub fn pchannel_to_wire(p: &PChannel, term: Term) -> v1::PChannelAtTerm {
    v1::PChannelAtTerm {
        name: p.as_str().to_owned(),
        term: term.0,
    }
}

// --- errors ---------------------------------------------------------------------------------

/// The gRPC status code a streaming error code travels with.
pub fn grpc_code(code: ErrorCode) -> tonic::Code {
    match code {
        ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
        ErrorCode::Inner => tonic::Code::Internal,
        ErrorCode::Unknown => tonic::Code::Unknown,
        ErrorCode::ResourceExhausted => tonic::Code::ResourceExhausted,
        _ => tonic::Code::FailedPrecondition,
    }
}

/// A gRPC status carrying a streaming error code as a standard `ErrorInfo`.
pub fn status(code: ErrorCode, cause: impl Into<String>) -> tonic::Status {
    status_with(code, cause, [])
}

/// [`status`] with more `ErrorInfo` metadata (e.g. `pchannel`, `term`).
pub fn status_with<const N: usize>(
    code: ErrorCode,
    cause: impl Into<String>,
    metadata: [(&str, String); N],
) -> tonic::Status {
    let cause = cause.into();
    let mut meta = HashMap::with_capacity(N + 1);
    meta.insert("code".to_owned(), code.number().to_string());
    for (k, v) in metadata {
        meta.insert(k.to_owned(), v);
    }
    tonic::Status::with_error_details(
        grpc_code(code),
        format!("{}: {cause}", code.name()),
        ErrorDetails::with_error_info(code.name(), ERROR_DOMAIN, meta),
    )
}

/// The streaming error code and cause a status carries. A status without Sluice's details (a
/// transport failure, a server that is not Sluice) maps by its gRPC code: invalid-argument is
/// `INVALID_ARGUMENT`, internal `INNER`, everything else `UNKNOWN` (retry).
pub fn error_of(status: &tonic::Status) -> (ErrorCode, String) {
    if let Some(info) = status.get_details_error_info()
        && info.domain == ERROR_DOMAIN
        && let Some(code) = ErrorCode::from_name(&info.reason)
    {
        let prefix = format!("{}: ", code.name());
        let cause = status
            .message()
            .strip_prefix(&prefix)
            .unwrap_or(status.message());
        return (code, cause.to_owned());
    }
    let code = match status.code() {
        tonic::Code::InvalidArgument => ErrorCode::InvalidArgument,
        tonic::Code::Internal => ErrorCode::Inner,
        // The server refused this client's credentials (see `security`): the same call cannot
        // succeed later, so it must not be retried like an unreachable node.
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
            return (
                ErrorCode::Unrecoverable,
                format!("{:?}: {}", status.code(), status.message()),
            );
        }
        _ => ErrorCode::Unknown,
    };
    (code, status.message().to_owned())
}

/// The wire form of a streaming error inside a stream's responses.
pub fn error_to_wire(code: ErrorCode, cause: impl Into<String>) -> v1::StreamingError {
    v1::StreamingError {
        code: error_code_to_wire(code),
        cause: cause.into(),
    }
}

/// A streaming error from inside a stream's responses.
pub fn error_from_wire(e: &v1::StreamingError) -> (ErrorCode, String) {
    let code = u32::try_from(e.code).map_or(ErrorCode::Unknown, ErrorCode::from_number);
    (code, e.cause.clone())
}

/// The wire number of an error code.
pub fn error_code_to_wire(code: ErrorCode) -> i32 {
    // Every number fits: the largest is 999.
    code.number() as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_types::message::{
        CommitTxnHeader, CreateCollectionHeader, InsertHeader, PartitionSegmentAssignment,
        TxnContext,
    };

    fn vc() -> VChannel {
        VChannel::new("p1_7v0").unwrap()
    }

    fn insert() -> MutableMessage {
        MutableMessage::builder(InsertHeader {
            collection_id: 7,
            partitions: vec![PartitionSegmentAssignment {
                partition_id: 1,
                rows: 3,
                ..Default::default()
            }],
        })
        .vchannel(&vc())
        .payload(&b"rows"[..])
        .property("k", "v")
        .build()
        .unwrap()
    }

    #[test]
    fn messages_round_trip() {
        let m = insert();
        let wire = v1::Message::from(&*m);
        assert_eq!(wire.r#type, 2);
        assert!(matches!(wire.header, Some(WireHeader::Insert(_))));
        assert_eq!(wire.properties.get("k").map(String::as_str), Some("v"));
        assert_eq!(MutableMessage::try_from(wire).unwrap(), m);

        let mut stamped = m.clone();
        stamped.set_timestamp(Timestamp(77));
        stamped.set_term(Term(3));
        stamped.set_last_confirmed(MessageId::from_parts(3, 1));
        let im = stamped.into_immutable(MessageId::from_parts(3, 9));
        let wire = v1::ImmutableMessage::from(&im);
        assert_eq!((wire.timestamp, wire.term), (77, 3));
        let back = ImmutableMessage::try_from(wire).unwrap();
        assert_eq!(back.id(), im.id());
        assert_eq!(back.message(), im.message());
    }

    #[test]
    fn transactions_and_results_round_trip() {
        let ctx = TxnContext {
            txn_id: 5,
            keepalive_ms: -1,
        };
        let r = AppendResult {
            id: MessageId::from_parts(1, 2),
            timestamp: Timestamp(9),
            last_confirmed: MessageId::from_parts(1, 1),
            txn: Some(ctx),
            flushed_segments: vec![4],
        };
        assert_eq!(
            AppendResult::try_from(v1::AppendResult::from(r.clone())).unwrap(),
            r
        );
        let commit = MutableMessage::builder(CommitTxnHeader {})
            .vchannel(&vc())
            .txn(ctx)
            .build()
            .unwrap();
        let wire = v1::Message::from(&*commit);
        assert_eq!(wire.txn, Some(ctx));
        assert_eq!(MutableMessage::try_from(wire).unwrap(), commit);
    }

    #[test]
    fn policies_and_filters_round_trip() {
        for p in [
            DeliverPolicy::All,
            DeliverPolicy::Latest,
            DeliverPolicy::StartFrom(MessageId::from_parts(1, 2)),
            DeliverPolicy::StartAfter(MessageId::from_parts(3, 4)),
        ] {
            assert_eq!(DeliverPolicy::try_from(v1::DeliverPolicy::from(p)), Ok(p));
        }
        for f in [
            MessageFilter::TimeTickGt(Timestamp(3)),
            MessageFilter::TimeTickGte(Timestamp(4)),
            MessageFilter::Types(vec![MessageType::Insert, MessageType::Delete]),
        ] {
            assert_eq!(MessageFilter::try_from(v1::DeliverFilter::from(&f)), Ok(f));
        }
    }

    fn wire_insert() -> v1::Message {
        v1::Message::from(&*insert())
    }

    #[test]
    fn bad_wire_messages_are_errors() {
        let cases: Vec<(&str, v1::Message)> = vec![
            (
                "unset type",
                v1::Message {
                    r#type: 0,
                    ..wire_insert()
                },
            ),
            (
                "unknown type",
                v1::Message {
                    r#type: 77,
                    ..wire_insert()
                },
            ),
            (
                "negative type",
                v1::Message {
                    r#type: -2,
                    ..wire_insert()
                },
            ),
            (
                "header of another type",
                v1::Message {
                    header: Some(WireHeader::CreateCollection(
                        CreateCollectionHeader::default(),
                    )),
                    ..wire_insert()
                },
            ),
            (
                "missing header",
                v1::Message {
                    header: None,
                    ..wire_insert()
                },
            ),
            (
                "bad vchannel",
                v1::Message {
                    vchannel: "no shard here".into(),
                    ..wire_insert()
                },
            ),
            (
                "reserved property",
                v1::Message {
                    properties: [("_t".to_owned(), "2".to_owned())].into(),
                    ..wire_insert()
                },
            ),
            (
                "empty property key",
                v1::Message {
                    properties: [(String::new(), "x".to_owned())].into(),
                    ..wire_insert()
                },
            ),
        ];
        for (what, wire) in cases {
            let e = MutableMessage::try_from(wire).expect_err(what);
            assert_eq!(e.code(), ErrorCode::InvalidArgument, "{what}");
        }
        let bad_id = v1::ImmutableMessage {
            id: "xyz".into(),
            message: Some(wire_insert()),
            ..Default::default()
        };
        assert!(matches!(
            ImmutableMessage::try_from(bad_id),
            Err(WireError::Parse(_))
        ));
        assert_eq!(
            pchannel_from_wire(None).unwrap_err(),
            WireError::Missing("pchannel")
        );
        assert!(
            pchannel_from_wire(Some(v1::PChannelAtTerm {
                name: "bad name!".into(),
                term: 1
            }))
            .is_err()
        );
        assert!(
            MessageFilter::try_from(v1::DeliverFilter {
                filter: Some(deliver_filter::Filter::Types(v1::MessageTypes {
                    types: vec![0]
                }))
            })
            .is_err()
        );
    }

    #[test]
    fn ids_are_accepted_in_either_case() {
        let id = MessageId::from_parts(0xabc, 0xdef);
        let upper = id.to_string().to_ascii_uppercase();
        assert_eq!(message_id_from_wire(&upper).unwrap(), id);
        assert!(message_id_from_wire(&format!("{upper}0")).is_err());
    }

    #[test]
    fn rust_tables_match_the_proto_enums() {
        use sluice_types::message::pb;
        for ty in MessageType::ALL {
            let wire = pb::MessageType::try_from(message_type_to_wire(ty)).unwrap();
            // MESSAGE_TYPE_CREATE_COLLECTION ~ CreateCollection
            let name: String = wire
                .as_str_name()
                .trim_start_matches("MESSAGE_TYPE_")
                .split('_')
                .map(|w| w[..1].to_owned() + &w[1..].to_ascii_lowercase())
                .collect();
            assert_eq!(name, ty.to_string());
        }
        for code in ErrorCode::ALL {
            let wire = v1::ErrorCode::try_from(error_code_to_wire(code)).unwrap();
            assert_eq!(wire.as_str_name(), format!("ERROR_CODE_{}", code.name()));
        }
        // Every wire value but UNSPECIFIED has its Rust counterpart.
        assert_eq!(
            pb::MessageType::from_str_name("MESSAGE_TYPE_TXN").map(|t| t as i32),
            Some(999)
        );
        assert!(message_type_from_wire(pb::MessageType::Unspecified as i32).is_err());
    }

    #[test]
    fn codes_survive_a_status_as_error_info() {
        for code in ErrorCode::ALL {
            let s = status_with(code, "why", [("pchannel", "p1".to_owned())]);
            assert_eq!(error_of(&s), (code, "why".to_owned()));
            assert_eq!(s.code(), grpc_code(code));
            let info = s.get_details_error_info().unwrap();
            assert_eq!(info.reason, code.name());
            assert_eq!(info.domain, ERROR_DOMAIN);
            assert_eq!(info.metadata["code"], code.number().to_string());
            assert_eq!(info.metadata["pchannel"], "p1");
        }
        let foreign = tonic::Status::unavailable("connection refused");
        assert_eq!(error_of(&foreign).0, ErrorCode::Unknown);
        // A refused token is terminal (the client must not retry it as a transport error).
        let refused = tonic::Status::unauthenticated("no token");
        let (code, message) = error_of(&refused);
        assert_eq!(code, ErrorCode::Unrecoverable);
        assert!(!code.retryable());
        assert_eq!(message, "Unauthenticated: no token");
        let e = error_to_wire(ErrorCode::ChannelFenced, "moved");
        assert_eq!(
            error_from_wire(&e),
            (ErrorCode::ChannelFenced, "moved".to_owned())
        );
    }
}
