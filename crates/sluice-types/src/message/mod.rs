//! The message model.
//!
//! A message is exactly `{payload: bytes, properties: map<string, string>}` — the envelope that
//! every backend stores verbatim. Properties whose key starts with `_` are reserved for the
//! system (see [`keys`]); user properties may not start with `_`.
//!
//! Two shapes exist so that the type system keeps the life cycle straight:
//! * [`MutableMessage`] — built by a producer, stamped by the WAL (timestamp, term,
//!   last-confirmed id, txn context) and consumed by `append`. It has no id.
//! * [`ImmutableMessage`] — what a log returns after the append: the same envelope plus its
//!   [`MessageId`]. It cannot be turned back into a mutable message, so it cannot be appended
//!   again, and there is no way to read a message that has no id.

mod header;
mod props;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;

pub use header::*;
pub use props::Packer;

use props::Props;

use crate::channel::VChannel;
use crate::error::ParseError;
use crate::ids::{MessageId, Term, Timestamp};

/// Reserved property keys. Every key starting with `_` is reserved.
pub mod keys {
    /// Message version (decimal).
    pub const VERSION: &str = "_v";
    /// Message type (decimal [`super::MessageType`] number).
    pub const TYPE: &str = "_t";
    /// Timestamp assigned by the WAL (base-36).
    pub const TIMESTAMP: &str = "_tt";
    /// Barrier timestamp: the append must get a timestamp ≥ this (base-36).
    pub const BARRIER_TIMESTAMP: &str = "_btt";
    /// The WAL term that wrote the message (base-36).
    pub const TERM: &str = "_wt";
    /// Last-confirmed message id (32 hex digits).
    pub const LAST_CONFIRMED: &str = "_lc";
    /// Flag: the last-confirmed id is the message's own id (value empty).
    pub const LAST_CONFIRMED_IS_SELF: &str = "_lcs";
    /// Vchannel (absent = every vchannel of the pchannel).
    pub const VCHANNEL: &str = "_vc";
    /// Broadcast header (base64 protobuf).
    pub const BROADCAST_HEADER: &str = "_bh";
    /// Typed header (base64 protobuf).
    pub const HEADER: &str = "_h";
    /// Transaction context (base64 protobuf).
    pub const TXN_CONTEXT: &str = "_tx";
    /// Flag: not persisted (only TimeTick may carry it; value empty).
    pub const NOT_PERSISTED: &str = "_np";
}

/// The message format version this build writes.
pub const MESSAGE_VERSION: u32 = 2;

/// Every kind of message, with its stable wire number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum MessageType {
    /// Timestamp progress marker (system, self-controlled).
    TimeTick = 1,
    /// Rows for a collection (DML).
    Insert = 2,
    /// Primary keys to delete (DML).
    Delete = 3,
    /// One sealed segment is complete (self-controlled).
    Flush = 4,
    /// A collection is created (exclusive).
    CreateCollection = 5,
    /// A collection is dropped (exclusive).
    DropCollection = 6,
    /// A partition is created (exclusive).
    CreatePartition = 7,
    /// A partition is dropped (exclusive).
    DropPartition = 8,
    /// Seal every growing segment of a collection (exclusive).
    ManualFlush = 9,
    /// A new growing segment (self-controlled).
    CreateSegment = 10,
    /// Bulk import.
    Import = 11,
    /// New collection schema (exclusive).
    SchemaChange = 12,
    /// Opens a transaction (system).
    BeginTxn = 900,
    /// Commits a transaction (system).
    CommitTxn = 901,
    /// Rolls back a transaction (system).
    RollbackTxn = 902,
    /// A committed transaction as one message; read side only, never persisted (system).
    Txn = 999,
}

impl MessageType {
    /// Every message type.
    pub const ALL: [MessageType; 16] = [
        MessageType::TimeTick,
        MessageType::Insert,
        MessageType::Delete,
        MessageType::Flush,
        MessageType::CreateCollection,
        MessageType::DropCollection,
        MessageType::CreatePartition,
        MessageType::DropPartition,
        MessageType::ManualFlush,
        MessageType::CreateSegment,
        MessageType::Import,
        MessageType::SchemaChange,
        MessageType::BeginTxn,
        MessageType::CommitTxn,
        MessageType::RollbackTxn,
        MessageType::Txn,
    ];

    /// The stable wire number.
    pub fn number(self) -> u32 {
        self as u32
    }

    /// The type with wire number `n`.
    pub fn from_number(n: u32) -> Result<MessageType, ParseError> {
        MessageType::ALL
            .iter()
            .copied()
            .find(|t| t.number() == n)
            .ok_or(ParseError::MessageType(n))
    }

    /// System messages pass every type filter and cannot be appended directly by clients.
    pub fn is_system(self) -> bool {
        matches!(
            self,
            MessageType::TimeTick
                | MessageType::BeginTxn
                | MessageType::CommitTxn
                | MessageType::RollbackTxn
                | MessageType::Txn
        )
    }

    /// Self-controlled messages are only ever written by the streaming node itself.
    pub fn is_self_controlled(self) -> bool {
        matches!(
            self,
            MessageType::TimeTick | MessageType::CreateSegment | MessageType::Flush
        )
    }

    /// Exclusive messages take an exclusive lock on their vchannel while appended.
    pub fn is_exclusive(self) -> bool {
        matches!(
            self,
            MessageType::CreateCollection
                | MessageType::DropCollection
                | MessageType::CreatePartition
                | MessageType::DropPartition
                | MessageType::ManualFlush
                | MessageType::SchemaChange
        )
    }

    /// Messages that may be the body of a client transaction.
    pub fn allowed_in_txn(self) -> bool {
        matches!(self, MessageType::Insert | MessageType::Delete)
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The property map of a message.
pub type Properties = BTreeMap<String, String>;

/// The envelope shared by both message shapes: payload bytes and properties.
///
/// Accessors parse reserved properties on demand; a malformed value is a [`ParseError`], never a
/// panic, because envelopes come from logs and from the network.
///
/// Cheap to clone: the properties are shared copy-on-write (a WAL keeps the message it hands to
/// the log, so every append clones one). The type and the timestamp, read several times on every
/// append and every read, are parsed once and kept next to the properties.
///
/// The reserved properties every message of this build has (type, version, vchannel) and the
/// stamps the WAL sets on every append (timestamp, term, last-confirmed id) are kept typed,
/// outside the string map: a message costs a few allocations instead of two per property.
/// [`Message::properties`] and the codec render them as the reserved properties they stand for,
/// so what is stored and sent is the same envelope. A decoded envelope keeps them in the map,
/// except a valid timestamp, which is typed at once.
#[derive(Clone)]
pub struct Message {
    payload: Bytes,
    properties: Props,
    /// The parsed type property (always present and valid: checked on construction).
    ty: MessageType,
    /// Reserved properties kept typed, not in `properties`.
    typed: Typed,
    /// Whether `properties` may hold the WAL's stamp keys (it came from a decoded envelope): a
    /// setter then removes the map's copy so that only one exists.
    map_stamps: bool,
    /// Bytes of every property key and value, typed ones included (kept up to date by every
    /// setter).
    properties_len: usize,
}

/// Reserved properties while they are typed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Typed {
    /// `_t` and `_v`: the type and this build's message version.
    kind: Option<MessageType>,
    vchannel: Option<VChannel>,
    ts: Option<Timestamp>,
    term: Option<Term>,
    /// A `MessageId` as two halves (high, low): a `u128` field would make every message 16-byte
    /// aligned and larger.
    lc: Option<[u64; 2]>,
}

fn split_id(id: MessageId) -> [u64; 2] {
    [(id.0 >> 64) as u64, id.0 as u64]
}

fn join_id([high, low]: [u64; 2]) -> MessageId {
    MessageId((u128::from(high) << 64) | u128::from(low))
}

/// A typed property's value as text, without allocating.
enum TypedText<'a> {
    Inline { buf: [u8; 32], len: usize },
    Str(&'a str),
}

impl TypedText<'_> {
    fn radix(mut v: u64, radix: u64) -> TypedText<'static> {
        const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut buf = [0u8; 32];
        let mut tmp = [0u8; 20];
        let mut i = tmp.len();
        loop {
            i -= 1;
            tmp[i] = DIGITS[(v % radix) as usize];
            v /= radix;
            if v == 0 {
                break;
            }
        }
        let len = tmp.len() - i;
        buf[..len].copy_from_slice(&tmp[i..]);
        TypedText::Inline { buf, len }
    }

    fn as_str(&self) -> &str {
        match self {
            // Digits are ASCII.
            TypedText::Inline { buf, len } => std::str::from_utf8(&buf[..*len]).unwrap_or_default(),
            TypedText::Str(s) => s,
        }
    }
}

/// Digits of `v` in `radix` (the length of its property value).
fn digits(mut v: u64, radix: u64) -> usize {
    let mut n = 1;
    while v >= radix {
        v /= radix;
        n += 1;
    }
    n
}

impl Typed {
    /// Key and value bytes of the typed properties.
    fn len(&self) -> usize {
        self.kind.map_or(0, |ty| {
            keys::TYPE.len()
                + digits(u64::from(ty.number()), 10)
                + keys::VERSION.len()
                + digits(u64::from(MESSAGE_VERSION), 10)
        }) + self
            .vchannel
            .as_ref()
            .map_or(0, |v| keys::VCHANNEL.len() + v.as_str().len())
            + self
                .ts
                .map_or(0, |t| keys::TIMESTAMP.len() + digits(t.0, 36))
            + self.term.map_or(0, |t| keys::TERM.len() + digits(t.0, 36))
            + self.lc.map_or(0, |_| keys::LAST_CONFIRMED.len() + 32)
    }

    fn count(&self) -> usize {
        2 * usize::from(self.kind.is_some())
            + usize::from(self.vchannel.is_some())
            + usize::from(self.ts.is_some())
            + usize::from(self.term.is_some())
            + usize::from(self.lc.is_some())
    }

    fn is_empty(&self) -> bool {
        *self == Typed::default()
    }

    /// The typed properties as (key, value).
    fn entries(&self) -> impl Iterator<Item = (&'static str, TypedText<'_>)> {
        let kind = self.kind.map(|ty| {
            [
                (keys::TYPE, TypedText::radix(u64::from(ty.number()), 10)),
                (
                    keys::VERSION,
                    TypedText::radix(u64::from(MESSAGE_VERSION), 10),
                ),
            ]
        });
        kind.into_iter().flatten().chain(
            [
                self.vchannel
                    .as_ref()
                    .map(|v| (keys::VCHANNEL, TypedText::Str(v.as_str()))),
                self.ts
                    .map(|t| (keys::TIMESTAMP, TypedText::radix(t.0, 36))),
                self.term.map(|t| (keys::TERM, TypedText::radix(t.0, 36))),
                self.lc.map(|id| {
                    (
                        keys::LAST_CONFIRMED,
                        TypedText::Inline {
                            buf: join_id(id).hex(),
                            len: 32,
                        },
                    )
                }),
            ]
            .into_iter()
            .flatten(),
        )
    }
}

impl PartialEq for Message {
    fn eq(&self, other: &Message) -> bool {
        // `ty`, `ts` and `properties_len` are functions of the properties; a stamp is equal
        // whether it is typed or in the map.
        self.payload == other.payload
            && if self.typed.is_empty() && other.typed.is_empty() {
                self.properties == other.properties
            } else {
                self.properties() == other.properties()
            }
    }
}

impl Eq for Message {}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("payload_len", &self.payload.len())
            .field("properties", &self.properties())
            .finish()
    }
}

fn encode_base36(v: u64) -> String {
    TypedText::radix(v, 36).as_str().to_owned()
}

fn cut(s: &str) -> String {
    s.chars().take(64).collect()
}

fn parse_u64(
    properties: &Properties,
    key: &'static str,
    radix: u32,
) -> Result<Option<u64>, ParseError> {
    parse_u64_value(properties.get(key).map(String::as_str), key, radix)
}

fn parse_u64_value(
    value: Option<&str>,
    key: &'static str,
    radix: u32,
) -> Result<Option<u64>, ParseError> {
    match value {
        None => Ok(None),
        Some(v) => u64::from_str_radix(v, radix)
            .map(Some)
            .map_err(|_| ParseError::Property {
                key,
                value: cut(v),
                reason: "not a number",
            }),
    }
}

fn parse_type(properties: &Properties) -> Result<MessageType, ParseError> {
    let n =
        parse_u64(properties, keys::TYPE, 10)?.ok_or(ParseError::MissingProperty(keys::TYPE))?;
    let n = u32::try_from(n).map_err(|_| ParseError::Property {
        key: keys::TYPE,
        value: n.to_string(),
        reason: "out of range",
    })?;
    MessageType::from_number(n)
}

impl Message {
    /// An envelope from raw parts, as decoded from a log or the wire. The type property must be
    /// present and known; nothing else is checked until it is read.
    pub fn from_parts(payload: Bytes, mut properties: Properties) -> Result<Message, ParseError> {
        let ty = parse_type(&properties)?;
        // A valid timestamp is read on every delivery: it becomes typed (the same property when
        // encoded). An invalid one stays in the map for the accessor to report.
        let mut typed = Typed::default();
        if let Ok(Some(ts)) = parse_u64(&properties, keys::TIMESTAMP, 36) {
            properties.remove(keys::TIMESTAMP);
            typed.ts = Some(Timestamp(ts));
        }
        let properties_len = properties
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
            + typed.len();
        let map_stamps = [
            keys::TIMESTAMP,
            keys::TERM,
            keys::LAST_CONFIRMED,
            keys::LAST_CONFIRMED_IS_SELF,
        ]
        .iter()
        .any(|k| properties.contains_key(*k));
        Ok(Message {
            payload,
            properties: Props::Map(Arc::new(properties)),
            ty,
            typed,
            map_stamps,
            properties_len,
        })
    }

    /// The payload (the serialized body).
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Every property, reserved ones included (the typed ones rendered into a copy of the map
    /// when there are any).
    pub fn properties(&self) -> Cow<'_, Properties> {
        if self.typed.is_empty() {
            return self.properties.as_map();
        }
        let mut all = self.properties.as_map().into_owned();
        for (k, v) in self.typed.entries() {
            all.insert(k.to_owned(), v.as_str().to_owned());
        }
        Cow::Owned(all)
    }

    /// Calls `f` with every property as it is stored, without building a map: the string map's
    /// entries, then the typed ones. The codec writes records with this.
    pub fn for_each_property(&self, mut f: impl FnMut(&str, &str)) {
        for (k, v) in self.properties.iter() {
            f(k, v);
        }
        for (k, v) in self.typed.entries() {
            f(k, v.as_str());
        }
    }

    /// How many properties [`Message::for_each_property`] yields.
    pub fn property_count(&self) -> usize {
        self.properties.len() + self.typed.count()
    }

    /// Bytes of every property key and value (what [`Message::for_each_property`] yields).
    pub fn properties_len(&self) -> usize {
        self.properties_len
    }

    /// One property of the string map: user properties and the reserved ones that are not
    /// typed. Type, version, vchannel and the WAL's stamps are read through their accessors.
    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties.get(key)
    }

    /// The user properties (keys not starting with `_`).
    pub fn user_properties(&self) -> impl Iterator<Item = (&str, &str)> {
        self.properties.iter().filter(|(k, _)| !k.starts_with('_'))
    }

    /// Bytes counted against every buffer limit: payload plus every property key and value.
    pub fn estimate_size(&self) -> usize {
        self.payload.len() + self.properties_len
    }

    fn parse_u64(&self, key: &'static str, radix: u32) -> Result<Option<u64>, ParseError> {
        parse_u64_value(self.properties.get(key), key, radix)
    }

    fn decode_proto<P: prost::Message + Default>(
        &self,
        key: &'static str,
    ) -> Result<Option<P>, ParseError> {
        let Some(v) = self.properties.get(key) else {
            return Ok(None);
        };
        let bad = |reason| ParseError::Property {
            key,
            value: cut(v),
            reason,
        };
        let bytes = BASE64.decode(v).map_err(|_| bad("not base64"))?;
        P::decode(bytes.as_slice())
            .map(Some)
            .map_err(|_| bad("not a valid protobuf"))
    }

    /// The message type.
    ///
    /// Never fails on a constructed message (the type is checked when it is built or decoded);
    /// the `Result` keeps call sites uniform with the other accessors.
    pub fn message_type(&self) -> Result<MessageType, ParseError> {
        Ok(self.ty)
    }

    /// The message format version (absent = 0).
    pub fn version(&self) -> Result<u32, ParseError> {
        if self.typed.kind.is_some() {
            return Ok(MESSAGE_VERSION);
        }
        let v = self.parse_u64(keys::VERSION, 10)?.unwrap_or(0);
        u32::try_from(v).map_err(|_| ParseError::Property {
            key: keys::VERSION,
            value: v.to_string(),
            reason: "out of range",
        })
    }

    /// The timestamp the WAL assigned, if any.
    pub fn timestamp(&self) -> Result<Option<Timestamp>, ParseError> {
        match self.typed.ts {
            Some(ts) => Ok(Some(ts)),
            None => Ok(self.parse_u64(keys::TIMESTAMP, 36)?.map(Timestamp)),
        }
    }

    /// The barrier timestamp the append asked for, if any.
    pub fn barrier_timestamp(&self) -> Result<Option<Timestamp>, ParseError> {
        Ok(self.parse_u64(keys::BARRIER_TIMESTAMP, 36)?.map(Timestamp))
    }

    /// The term of the WAL that wrote the message, if stamped.
    pub fn term(&self) -> Result<Option<Term>, ParseError> {
        if let Some(t) = self.typed.term {
            return Ok(Some(t));
        }
        Ok(self.parse_u64(keys::TERM, 36)?.map(Term))
    }

    /// The vchannel, or `None` for a message addressed to every vchannel of the pchannel.
    pub fn vchannel(&self) -> Result<Option<VChannel>, ParseError> {
        if let Some(v) = &self.typed.vchannel {
            return Ok(Some(v.clone()));
        }
        match self.properties.get(keys::VCHANNEL) {
            None | Some("") => Ok(None),
            Some(v) => VChannel::new(v).map(Some),
        }
    }

    /// The vchannel name as stored, without parsing (`None` = every vchannel).
    pub fn vchannel_str(&self) -> Option<&str> {
        if let Some(v) = &self.typed.vchannel {
            return Some(v.as_str());
        }
        self.property(keys::VCHANNEL).filter(|v| !v.is_empty())
    }

    /// Whether the message is flagged as not persisted.
    pub fn is_not_persisted(&self) -> bool {
        self.properties.contains_key(keys::NOT_PERSISTED)
    }

    /// The transaction context, if the message is part of a transaction.
    pub fn txn_context(&self) -> Result<Option<TxnContext>, ParseError> {
        self.decode_proto(keys::TXN_CONTEXT)
    }

    /// The broadcast header, if the message is one copy of a broadcast.
    pub fn broadcast_header(&self) -> Result<Option<BroadcastHeader>, ParseError> {
        self.decode_proto(keys::BROADCAST_HEADER)
    }

    /// The header of this message's type, whatever the type: what a producer's header is
    /// validated with and what the wire carries. A stored header that does not decode as its
    /// type's header is an error.
    pub fn any_header(&self) -> Result<Header, ParseError> {
        let ty = self.message_type()?;
        let Some(v) = self.properties.get(keys::HEADER) else {
            return Ok(Header::empty(ty));
        };
        let bad = |reason| ParseError::Header { ty, reason };
        let bytes = BASE64.decode(v).map_err(|_| bad("not base64"))?;
        Header::decode(ty, &bytes).map_err(|_| bad("not a valid protobuf of its type"))
    }

    /// The typed header. Fails when `H` is not the header of this message's type.
    pub fn header<H: MessageHeader>(&self) -> Result<H, ParseError> {
        let actual = self.message_type()?;
        if actual != H::TYPE {
            return Err(ParseError::HeaderType {
                expected: H::TYPE,
                actual,
            });
        }
        Ok(self.decode_proto(keys::HEADER)?.unwrap_or_default())
    }

    fn set(&mut self, key: &str, value: String) {
        let properties = self.properties.make_mut();
        self.properties_len += value.len();
        match properties.get_mut(key) {
            Some(v) => {
                self.properties_len -= v.len();
                *v = value;
            }
            None => {
                self.properties_len += key.len();
                properties.insert(key.to_owned(), value);
            }
        }
    }

    fn remove(&mut self, key: &str) {
        if self.properties.contains_key(key)
            && let Some(v) = self.properties.make_mut().remove(key)
        {
            self.properties_len -= key.len() + v.len();
        }
    }

    fn set_proto<P: prost::Message>(&mut self, key: &str, p: &P) {
        self.set(key, BASE64.encode(p.encode_to_vec()));
    }

    /// Changes the typed properties with `f`, keeping the size and the single copy of each
    /// stamp right (`map_keys`: the map's copies of what `f` sets).
    fn retype(&mut self, map_keys: &[&str], f: impl FnOnce(&mut Typed)) {
        if self.map_stamps {
            for k in map_keys {
                self.remove(k);
            }
        }
        self.properties_len -= self.typed.len();
        f(&mut self.typed);
        self.properties_len += self.typed.len();
    }
}

/// A message before it is appended: built by a producer, stamped by the WAL, consumed by
/// `append`. Reading its envelope goes through `Deref<Target = Message>`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct MutableMessage {
    msg: Message,
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
        self.msg.retype(&[keys::TIMESTAMP], |t| t.ts = Some(ts));
    }

    /// Sets the barrier timestamp: the append must get a timestamp ≥ `ts`.
    pub fn set_barrier_timestamp(&mut self, ts: Timestamp) {
        self.msg.set(keys::BARRIER_TIMESTAMP, encode_base36(ts.0));
    }

    /// Sets the term of the writing WAL (done by the WAL).
    pub fn set_term(&mut self, term: Term) {
        self.msg.retype(&[keys::TERM], |t| t.term = Some(term));
    }

    /// Sets the last-confirmed id (done by the WAL).
    pub fn set_last_confirmed(&mut self, id: MessageId) {
        self.msg
            .retype(&[keys::LAST_CONFIRMED, keys::LAST_CONFIRMED_IS_SELF], |t| {
                t.lc = Some(split_id(id))
            });
    }

    /// Marks the last-confirmed id as the message's own id, which is not known before append.
    pub fn set_last_confirmed_is_self(&mut self) {
        self.msg.retype(&[keys::LAST_CONFIRMED], |t| t.lc = None);
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

/// A message as stored in a log: the envelope plus its id. Reading its envelope goes through
/// `Deref<Target = Message>`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ImmutableMessage {
    id: MessageId,
    msg: Message,
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
        if let Some(lc) = self.msg.typed.lc {
            return Ok(Some(join_id(lc)));
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
    begin: ImmutableMessage,
    bodies: Vec<ImmutableMessage>,
    commit: ImmutableMessage,
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

/// Builds a [`MutableMessage`], checking what a producer may set.
#[derive(Debug)]
pub struct MessageBuilder {
    msg: Message,
    error: Option<ParseError>,
}

impl MessageBuilder {
    fn new<H: MessageHeader>(header: H) -> MessageBuilder {
        let mut b = MessageBuilder::empty(H::TYPE);
        if header != H::default() {
            b.msg.set_proto(keys::HEADER, &header);
        }
        b
    }

    fn empty(ty: MessageType) -> MessageBuilder {
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

#[cfg(test)]
mod tests {
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
        let txn =
            ImmutableTxnMessage::new(begin.clone(), vec![body.clone()], commit.clone()).unwrap();
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
        let props = msg.properties();
        assert_eq!(props.get(keys::TYPE).unwrap(), "2");
        assert_eq!(
            props.get(keys::VERSION).unwrap(),
            &MESSAGE_VERSION.to_string()
        );
        assert_eq!(props.get(keys::VCHANNEL).unwrap(), vc().as_str());
        assert_eq!(props.get("k").unwrap(), "v");
        assert_eq!(props.len(), 7);
        assert_eq!(msg.property_count(), 7);
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
        let imm = ImmutableMessage::new(MessageId(1), decoded.clone());
        assert_eq!(imm.last_confirmed().unwrap(), Some(MessageId(0xabc)));

        // Stamped again: the map's copies give way to the typed ones.
        let mut again = MutableMessage::from_message(decoded);
        again.set_timestamp(Timestamp(5));
        again.set_term(Term(8));
        again.set_last_confirmed(MessageId(9));
        assert_eq!(again.property_count(), msg.property_count());
        let (decoded, _) =
            crate::codec::decode_message(&crate::codec::encode_message_to_vec(&again).unwrap())
                .unwrap();
        assert_eq!(decoded.timestamp().unwrap(), Some(Timestamp(5)));
        assert_eq!(decoded.term().unwrap(), Some(Term(8)));
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
}
