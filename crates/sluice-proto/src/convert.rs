//! Conversions between the wire types ([`crate::v1`]) and `sluice-types`.
//!
//! Everything arriving from the network is checked here: an envelope without a known type, a
//! malformed id or channel name is a [`WireError`] (which maps to `INVALID_ARGUMENT`), never a
//! panic. Errors travel as a gRPC status whose details are an encoded [`v1::StreamingError`], so
//! the stable [`ErrorCode`] survives every hop ([`status`], [`error_of`]).

use bytes::Bytes;
use prost::Message as _;
use sluice_types::message::Properties;
use sluice_types::{
    ErrorCode, ImmutableMessage, ImmutableTxnMessage, Message, MessageId, PChannel, ParseError,
    Term,
};

use crate::v1;

/// A wire value that does not convert.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A required field is missing.
    #[error("missing field {0}")]
    Missing(&'static str),
    /// A field does not parse or validate.
    #[error(transparent)]
    Parse(#[from] ParseError),
}

impl WireError {
    /// Every wire error is the caller's bad input.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::InvalidArgument
    }
}

/// The wire form of an envelope.
pub fn message_to_wire(msg: &Message) -> v1::Message {
    v1::Message {
        payload: msg.payload().clone(),
        properties: {
            let mut all = std::collections::HashMap::with_capacity(msg.property_count());
            msg.for_each_property(|k, v| {
                all.insert(k.to_owned(), v.to_owned());
            });
            all
        },
    }
}

/// An envelope from the wire (its type must be present and known).
pub fn message_from_wire(msg: v1::Message) -> Result<Message, WireError> {
    let properties: Properties = msg.properties.into_iter().collect();
    Ok(Message::from_parts(msg.payload, properties)?)
}

/// The wire form of an appended message.
pub fn immutable_to_wire(msg: &ImmutableMessage) -> v1::ImmutableMessage {
    v1::ImmutableMessage {
        id: msg.id().to_string(),
        message: Some(message_to_wire(msg.message())),
    }
}

/// An appended message from the wire.
pub fn immutable_from_wire(msg: v1::ImmutableMessage) -> Result<ImmutableMessage, WireError> {
    let id = message_id_from_wire(&msg.id)?;
    let body = message_from_wire(msg.message.ok_or(WireError::Missing("message"))?)?;
    Ok(ImmutableMessage::new(id, body))
}

/// The wire form of a committed transaction.
pub fn txn_to_wire(txn: &ImmutableTxnMessage) -> v1::TxnMessage {
    v1::TxnMessage {
        begin: Some(immutable_to_wire(txn.begin())),
        bodies: txn.bodies().iter().map(immutable_to_wire).collect(),
        commit: Some(immutable_to_wire(txn.commit())),
    }
}

/// A committed transaction from the wire (its parts must belong together).
pub fn txn_from_wire(txn: v1::TxnMessage) -> Result<ImmutableTxnMessage, WireError> {
    let begin = immutable_from_wire(txn.begin.ok_or(WireError::Missing("begin"))?)?;
    let commit = immutable_from_wire(txn.commit.ok_or(WireError::Missing("commit"))?)?;
    let bodies = txn
        .bodies
        .into_iter()
        .map(immutable_from_wire)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ImmutableTxnMessage::new(begin, bodies, commit)?)
}

/// A message id from its 32-hex-digit wire form.
pub fn message_id_from_wire(id: &str) -> Result<MessageId, WireError> {
    Ok(id.parse()?)
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

/// A gRPC status carrying a streaming error code as its details.
pub fn status(code: ErrorCode, cause: impl Into<String>) -> tonic::Status {
    let cause = cause.into();
    let grpc = match code {
        ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
        ErrorCode::Inner => tonic::Code::Internal,
        ErrorCode::Unknown => tonic::Code::Unknown,
        _ => tonic::Code::FailedPrecondition,
    };
    let details = v1::StreamingError {
        code: code.number(),
        cause: cause.clone(),
    }
    .encode_to_vec();
    tonic::Status::with_details(
        grpc,
        format!("{}: {cause}", code.name()),
        Bytes::from(details),
    )
}

/// The streaming error code and cause a status carries. A status without our details (a
/// transport failure, a server that is not Sluice) maps by its gRPC code: unavailable,
/// cancelled and deadline errors are `UNKNOWN` (retry), the rest `INNER`.
pub fn error_of(status: &tonic::Status) -> (ErrorCode, String) {
    if let Ok(e) = v1::StreamingError::decode(status.details())
        && e.code != 0
    {
        return (ErrorCode::from_number(e.code), e.cause);
    }
    let code = match status.code() {
        tonic::Code::InvalidArgument => ErrorCode::InvalidArgument,
        tonic::Code::Internal => ErrorCode::Inner,
        _ => ErrorCode::Unknown,
    };
    (code, status.message().to_owned())
}

/// The wire form of a streaming error.
pub fn error_to_wire(code: ErrorCode, cause: impl Into<String>) -> v1::StreamingError {
    v1::StreamingError {
        code: code.number(),
        cause: cause.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_types::message::InsertHeader;
    use sluice_types::{MutableMessage, VChannel};

    fn insert() -> Message {
        let v = VChannel::new("p1_7v0").unwrap();
        MutableMessage::builder(InsertHeader::default())
            .vchannel(&v)
            .payload(&b"rows"[..])
            .property("k", "v")
            .build()
            .unwrap()
            .into_message()
    }

    #[test]
    fn messages_round_trip() {
        let m = insert();
        assert_eq!(message_from_wire(message_to_wire(&m)).unwrap(), m);
        let im = ImmutableMessage::new(MessageId::from_parts(3, 9), m);
        let back = immutable_from_wire(immutable_to_wire(&im)).unwrap();
        assert_eq!(back.id(), im.id());
        assert_eq!(back.message(), im.message());
    }

    #[test]
    fn bad_wire_values_are_errors() {
        let no_type = v1::Message {
            payload: Bytes::new(),
            properties: Default::default(),
        };
        assert!(message_from_wire(no_type).is_err());
        let bad_id = v1::ImmutableMessage {
            id: "xyz".into(),
            message: Some(message_to_wire(&insert())),
        };
        assert!(matches!(
            immutable_from_wire(bad_id),
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
    }

    #[test]
    fn codes_survive_a_status() {
        for code in ErrorCode::ALL {
            let s = status(code, "why");
            assert_eq!(error_of(&s), (code, "why".to_owned()));
        }
        let foreign = tonic::Status::unavailable("connection refused");
        assert_eq!(error_of(&foreign).0, ErrorCode::Unknown);
    }
}
