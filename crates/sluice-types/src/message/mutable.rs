//! Messages before they are appended: built by producers, stamped by the WAL.

use super::*;

/// A message before it is appended: built by a producer, stamped by the WAL, consumed by
/// `append`. Reading its envelope goes through `Deref<Target = Message>`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct MutableMessage {
    pub(super) msg: Message,
}

impl Deref for MutableMessage {
    type Target = Message;
    fn deref(&self) -> &Message {
        &self.msg
    }
}

impl MutableMessage {
    /// Starts a message of the header's type.
    pub fn builder<H: MessageHeader>(header: H) -> MessageBuilder {
        MessageBuilder::new(header)
    }

    /// A mutable message from a decoded envelope (e.g. received over the wire).
    pub fn from_message(msg: Message) -> MutableMessage {
        MutableMessage { msg }
    }

    /// The envelope.
    pub fn into_message(self) -> Message {
        self.msg
    }

    /// Sets the timestamp (done by the WAL).
    pub fn set_timestamp(&mut self, ts: Timestamp) {
        self.msg.retype(&[keys::TIMESTAMP], |t| t.set_ts(Some(ts)));
    }

    /// Sets the barrier timestamp: the append must get a timestamp ≥ `ts`.
    pub fn set_barrier_timestamp(&mut self, ts: Timestamp) {
        self.msg.set(keys::BARRIER_TIMESTAMP, encode_base36(ts.0));
    }

    /// Numbers the message for exactly-once appends: `sequence` of `producer` (non-zero). A
    /// WAL that already holds this pair does not append it again: it returns the original's
    /// result.
    pub fn set_producer(&mut self, producer: u64, sequence: u64) {
        // Typed, like the WAL's stamps: set on every append, read by the WAL at once.
        self.msg.remove(keys::PRODUCER);
        self.msg.remove(keys::PRODUCER_SEQUENCE);
        self.msg
            .retype(&[], |t| t.set_producer(Some((producer, sequence))));
    }

    /// Sets the term of the writing WAL (done by the WAL).
    pub fn set_term(&mut self, term: Term) {
        self.msg.retype(&[keys::TERM], |t| t.set_term(Some(term)));
    }

    /// Sets the last-confirmed id (done by the WAL).
    pub fn set_last_confirmed(&mut self, id: MessageId) {
        self.msg
            .retype(&[keys::LAST_CONFIRMED, keys::LAST_CONFIRMED_IS_SELF], |t| {
                t.set_lc(Some(id))
            });
    }

    /// Marks the last-confirmed id as the message's own id, which is not known before append.
    pub fn set_last_confirmed_is_self(&mut self) {
        self.msg.retype(&[keys::LAST_CONFIRMED], |t| t.set_lc(None));
        self.msg.set(keys::LAST_CONFIRMED_IS_SELF, String::new());
        self.msg.map_stamps = true;
    }

    /// Sets the transaction context.
    pub fn set_txn_context(&mut self, txn: TxnContext) {
        self.msg.set_proto(keys::TXN_CONTEXT, &txn);
    }

    /// Replaces the typed header (e.g. the WAL filling in the assigned segment).
    pub fn set_header<H: MessageHeader>(&mut self, header: &H) -> Result<(), ParseError> {
        let actual = self.msg.message_type()?;
        if actual != H::TYPE {
            return Err(ParseError::HeaderType {
                expected: H::TYPE,
                actual,
            });
        }
        self.msg.set_proto(keys::HEADER, header);
        Ok(())
    }

    /// Sets or clears the not-persisted flag. Only a TimeTick may be not persisted.
    pub fn set_not_persisted(&mut self, not_persisted: bool) -> Result<(), ParseError> {
        if !not_persisted {
            self.msg.remove(keys::NOT_PERSISTED);
            return Ok(());
        }
        if self.msg.message_type()? != MessageType::TimeTick {
            return Err(ParseError::Property {
                key: keys::NOT_PERSISTED,
                value: String::new(),
                reason: "only a TimeTick may be not persisted",
            });
        }
        self.msg.set(keys::NOT_PERSISTED, String::new());
        Ok(())
    }

    /// The message after append, with the id the log gave it.
    pub fn into_immutable(self, id: MessageId) -> ImmutableMessage {
        ImmutableMessage { id, msg: self.msg }
    }
}

/// Builds a [`MutableMessage`], checking what a producer may set.
#[derive(Debug)]
pub struct MessageBuilder {
    pub(super) msg: Message,
    pub(super) error: Option<ParseError>,
}

impl MessageBuilder {
    pub(super) fn new<H: MessageHeader>(header: H) -> MessageBuilder {
        let mut b = MessageBuilder::empty(H::TYPE);
        if header != H::default() {
            b.msg.set_proto(keys::HEADER, &header);
        }
        b
    }

    pub(super) fn empty(ty: MessageType) -> MessageBuilder {
        let mut msg = Message {
            payload: Bytes::new(),
            properties: Props::default(),
            ty,
            typed: Typed::default(),
            map_stamps: false,
            properties_len: 0,
        };
        msg.retype(&[], |t| t.kind = Some(ty));
        MessageBuilder { msg, error: None }
    }

    /// Starts a message of the header's type, chosen at run time (a header from the wire).
    pub fn from_header(header: &Header) -> MessageBuilder {
        let mut b = MessageBuilder::empty(header.message_type());
        if !header.is_empty() {
            b.msg
                .set(keys::HEADER, BASE64.encode(header.encode_to_vec()));
        }
        b
    }

    /// The transaction the message belongs to (bodies, commit and rollback carry it).
    pub fn txn(mut self, txn: TxnContext) -> Self {
        self.msg.set_proto(keys::TXN_CONTEXT, &txn);
        self
    }

    /// The vchannel the message goes to.
    pub fn vchannel(mut self, vchannel: &VChannel) -> Self {
        self.msg
            .retype(&[], |t| t.vchannel = Some(vchannel.clone()));
        self
    }

    /// The payload (serialized body).
    pub fn payload(mut self, payload: impl Into<Bytes>) -> Self {
        self.msg.payload = payload.into();
        self
    }

    /// A user property. Keys starting with `_` are reserved: `build` then fails.
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        if key.is_empty() || key.starts_with('_') {
            self.error.get_or_insert(ParseError::ReservedProperty(key));
        } else {
            self.msg.set(&key, value.into());
        }
        self
    }

    /// The barrier timestamp: the append must get a timestamp ≥ `ts`.
    pub fn barrier_timestamp(mut self, ts: Timestamp) -> Self {
        self.msg.set(keys::BARRIER_TIMESTAMP, encode_base36(ts.0));
        self
    }

    /// Marks the message as one copy of a broadcast.
    pub fn broadcast(mut self, header: &BroadcastHeader) -> Self {
        self.msg.set_proto(keys::BROADCAST_HEADER, header);
        self
    }

    /// The message, or the first error a setter recorded.
    pub fn build(self) -> Result<MutableMessage, ParseError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(MutableMessage { msg: self.msg }),
        }
    }
}
