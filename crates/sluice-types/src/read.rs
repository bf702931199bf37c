//! What a reader asks for and gets, and what an append returns: the types a client shares with
//! the server (the wire form of each is in `proto/sluice/v1/node.proto`).

use crate::channel::VChannel;
use crate::error::ParseError;
use crate::ids::{MessageId, Timestamp};
use crate::message::{ImmutableMessage, ImmutableTxnMessage, MessageType, TxnContext};

/// Where a read starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliverPolicy {
    /// From the oldest retained record.
    All,
    /// Only records appended after the read started.
    Latest,
    /// From this id, inclusive (from the oldest retained record if it was truncated).
    StartFrom(MessageId),
    /// After this id, exclusive.
    StartAfter(MessageId),
}

/// What a consumer reads: one pchannel or one vchannel of it, from a position, with filters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumeOptions {
    /// Only this vchannel (messages addressed to every vchannel, such as timeticks, pass);
    /// `None` = the whole pchannel.
    pub vchannel: Option<VChannel>,
    /// Where reading starts.
    pub policy: DeliverPolicy,
    /// Conditions every delivered message meets (AND).
    pub filters: Vec<MessageFilter>,
}

impl ConsumeOptions {
    /// The whole pchannel from `policy`, unfiltered.
    pub fn new(policy: DeliverPolicy) -> ConsumeOptions {
        ConsumeOptions {
            vchannel: None,
            policy,
            filters: Vec::new(),
        }
    }
}

/// One condition a delivered message must meet. A scanner's filters are AND-combined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageFilter {
    /// Timestamp strictly greater than this.
    TimeTickGt(Timestamp),
    /// Timestamp greater than or equal to this.
    TimeTickGte(Timestamp),
    /// Only these data message types. System messages (TimeTick, BeginTxn, CommitTxn,
    /// RollbackTxn, Txn) always pass, so naming one here is an invalid argument.
    Types(Vec<MessageType>),
}

/// One delivered message: a plain message (data or timetick) or a committed transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadMessage {
    /// A message that is not part of a transaction, timeticks included.
    Message(ImmutableMessage),
    /// A committed transaction: begin, bodies and commit, at the commit's timestamp (boxed:
    /// it holds several messages, and most of what is delivered is plain messages).
    Txn(Box<ImmutableTxnMessage>),
}

impl ReadMessage {
    /// The timestamp (a transaction's is its commit's). A scanner only delivers messages that
    /// have one; `None` only for a hand-built message without a valid `_tt`.
    pub fn timestamp(&self) -> Option<Timestamp> {
        match self {
            ReadMessage::Message(m) => m.timestamp().ok().flatten(),
            ReadMessage::Txn(t) => t.timestamp().ok().flatten(),
        }
    }

    /// The last-confirmed id (a transaction's is its commit's): reading the log from it sees
    /// every message with a timestamp ≥ this one's. `Ok(None)` when absent.
    pub fn last_confirmed(&self) -> Result<Option<MessageId>, ParseError> {
        match self {
            ReadMessage::Message(m) => m.last_confirmed(),
            ReadMessage::Txn(t) => t.last_confirmed(),
        }
    }

    /// The log id (a transaction's is its commit's).
    pub fn id(&self) -> MessageId {
        match self {
            ReadMessage::Message(m) => m.id(),
            ReadMessage::Txn(t) => t.commit().id(),
        }
    }

    /// The type: [`MessageType::Txn`] for a transaction. `None` for a hand-built message
    /// without a valid type.
    pub fn message_type(&self) -> Option<MessageType> {
        match self {
            ReadMessage::Message(m) => m.message_type().ok(),
            ReadMessage::Txn(_) => Some(MessageType::Txn),
        }
    }

    /// Whether this is a timetick.
    pub fn is_timetick(&self) -> bool {
        self.message_type() == Some(MessageType::TimeTick)
    }

    /// The vchannel (`None` = every vchannel of the pchannel).
    pub fn vchannel_str(&self) -> Option<&str> {
        match self {
            ReadMessage::Message(m) => m.vchannel_str(),
            ReadMessage::Txn(t) => t.begin().vchannel_str(),
        }
    }

    /// Bytes for buffer accounting.
    pub fn estimate_size(&self) -> usize {
        match self {
            ReadMessage::Message(m) => m.estimate_size(),
            ReadMessage::Txn(t) => t.estimate_size(),
        }
    }

    /// The plain message, if this is one.
    pub fn as_message(&self) -> Option<&ImmutableMessage> {
        match self {
            ReadMessage::Message(m) => Some(m),
            ReadMessage::Txn(_) => None,
        }
    }

    /// The transaction, if this is one.
    pub fn as_txn(&self) -> Option<&ImmutableTxnMessage> {
        match self {
            ReadMessage::Message(_) => None,
            ReadMessage::Txn(t) => Some(t),
        }
    }
}

/// The result of an append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendResult {
    /// Where the message is in the log.
    pub id: MessageId,
    /// Its timestamp.
    pub timestamp: Timestamp,
    /// Its last-confirmed id.
    pub last_confirmed: MessageId,
    /// Its transaction, for BeginTxn and transaction parts.
    pub txn: Option<TxnContext>,
    /// Segments a ManualFlush or SchemaChange sealed.
    pub flushed_segments: Vec<i64>,
}
