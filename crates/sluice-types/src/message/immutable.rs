//! Messages after they are appended: with their id, and committed transactions.

use super::*;

/// A message as stored in a log: the envelope plus its id. Reading its envelope goes through
/// `Deref<Target = Message>`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ImmutableMessage {
    pub(super) id: MessageId,
    pub(super) msg: Message,
}

impl Deref for ImmutableMessage {
    type Target = Message;
    fn deref(&self) -> &Message {
        &self.msg
    }
}

impl ImmutableMessage {
    /// A message read back from a log at `id`.
    pub fn new(id: MessageId, msg: Message) -> ImmutableMessage {
        ImmutableMessage { id, msg }
    }

    /// Its position in the log.
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// The envelope.
    pub fn message(&self) -> &Message {
        &self.msg
    }

    /// Packs the payload and map entries into `packer`'s current chunk (see [`Packer`]): for a
    /// message that will be kept for a while. It reads exactly as before.
    pub fn pack(&mut self, packer: &mut Packer) {
        packer.pack(&mut self.msg);
    }

    /// The last-confirmed id: reading from it sees every message with a timestamp ≥ this one's.
    pub fn last_confirmed(&self) -> Result<Option<MessageId>, ParseError> {
        if let Some(lc) = self.msg.typed.lc() {
            return Ok(Some(lc));
        }
        if self
            .msg
            .properties
            .contains_key(keys::LAST_CONFIRMED_IS_SELF)
        {
            return Ok(Some(self.id));
        }
        match self.msg.properties.get(keys::LAST_CONFIRMED) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| ParseError::Property {
                key: keys::LAST_CONFIRMED,
                value: cut(v),
                reason: "not a message id",
            }),
        }
    }
}

/// A committed transaction as the read side delivers it: its BeginTxn, its bodies in timestamp
/// order and its CommitTxn. The whole transaction is one point in time: the commit's timestamp
/// and last-confirmed id.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ImmutableTxnMessage {
    pub(super) begin: ImmutableMessage,
    pub(super) bodies: Vec<ImmutableMessage>,
    pub(super) commit: ImmutableMessage,
}

impl ImmutableTxnMessage {
    /// Assembles a transaction. Fails unless `begin` is a BeginTxn and `commit` a CommitTxn, and
    /// every part carries the same transaction id and vchannel.
    pub fn new(
        begin: ImmutableMessage,
        bodies: Vec<ImmutableMessage>,
        commit: ImmutableMessage,
    ) -> Result<ImmutableTxnMessage, ParseError> {
        let bad = |reason| ParseError::Property {
            key: keys::TXN_CONTEXT,
            value: String::new(),
            reason,
        };
        if begin.message_type()? != MessageType::BeginTxn {
            return Err(bad("a transaction must start with BeginTxn"));
        }
        if commit.message_type()? != MessageType::CommitTxn {
            return Err(bad("a transaction must end with CommitTxn"));
        }
        let txn = begin
            .txn_context()?
            .ok_or(ParseError::MissingProperty(keys::TXN_CONTEXT))?
            .txn_id;
        for part in bodies.iter().chain([&commit]) {
            if part.txn_context()?.map(|t| t.txn_id) != Some(txn) {
                return Err(bad("a part belongs to another transaction"));
            }
            if part.vchannel_str() != begin.vchannel_str() {
                return Err(bad("a part is on another vchannel"));
            }
        }
        Ok(ImmutableTxnMessage {
            begin,
            bodies,
            commit,
        })
    }

    /// The BeginTxn.
    pub fn begin(&self) -> &ImmutableMessage {
        &self.begin
    }

    /// The body messages in timestamp order.
    pub fn bodies(&self) -> &[ImmutableMessage] {
        &self.bodies
    }

    /// The CommitTxn.
    pub fn commit(&self) -> &ImmutableMessage {
        &self.commit
    }

    /// The transaction id.
    pub fn txn_id(&self) -> Result<i64, ParseError> {
        Ok(self
            .begin
            .txn_context()?
            .ok_or(ParseError::MissingProperty(keys::TXN_CONTEXT))?
            .txn_id)
    }

    /// The transaction's timestamp: the commit's.
    pub fn timestamp(&self) -> Result<Option<Timestamp>, ParseError> {
        self.commit.timestamp()
    }

    /// The transaction's last-confirmed id: the commit's.
    pub fn last_confirmed(&self) -> Result<Option<MessageId>, ParseError> {
        self.commit.last_confirmed()
    }

    /// Bytes of every part, for buffer accounting.
    pub fn estimate_size(&self) -> usize {
        self.begin.estimate_size()
            + self.commit.estimate_size()
            + self.bodies.iter().map(|b| b.estimate_size()).sum::<usize>()
    }
}
