//! The envelope both message shapes share: payload, properties, typed reserved properties.

use super::*;

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
    pub(super) payload: Bytes,
    pub(super) properties: Props,
    /// The parsed type property (always present and valid: checked on construction).
    pub(super) ty: MessageType,
    /// Reserved properties kept typed, not in `properties`.
    pub(super) typed: Typed,
    /// Whether `properties` may hold the WAL's stamp keys (it came from a decoded envelope): a
    /// setter then removes the map's copy so that only one exists.
    pub(super) map_stamps: bool,
    /// Bytes of every property key and value, typed ones included (kept up to date by every
    /// setter).
    pub(super) properties_len: usize,
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

pub(super) fn encode_base36(v: u64) -> String {
    TypedText::radix(v, 36).as_str().to_owned()
}

pub(super) fn cut(s: &str) -> String {
    s.chars().take(64).collect()
}

pub(super) fn parse_u64(
    properties: &Properties,
    key: &'static str,
    radix: u32,
) -> Result<Option<u64>, ParseError> {
    parse_u64_value(properties.get(key).map(String::as_str), key, radix)
}

pub(super) fn parse_u64_value(
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

pub(super) fn parse_type(properties: &Properties) -> Result<MessageType, ParseError> {
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
            typed.set_ts(Some(Timestamp(ts)));
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

    pub(super) fn parse_u64(
        &self,
        key: &'static str,
        radix: u32,
    ) -> Result<Option<u64>, ParseError> {
        parse_u64_value(self.properties.get(key), key, radix)
    }

    pub(super) fn decode_proto<P: prost::Message + Default>(
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
        match self.typed.ts() {
            Some(ts) => Ok(Some(ts)),
            None => Ok(self.parse_u64(keys::TIMESTAMP, 36)?.map(Timestamp)),
        }
    }

    /// The exactly-once numbering of the message: (producer, sequence), if it has one.
    pub fn producer(&self) -> Result<Option<(u64, u64)>, ParseError> {
        let (producer, sequence) = match self.typed.producer() {
            Some((p, s)) => (Some(p), Some(s)),
            None => (
                self.parse_u64(keys::PRODUCER, 36)?,
                self.parse_u64(keys::PRODUCER_SEQUENCE, 36)?,
            ),
        };
        match (producer, sequence) {
            (None, None) => Ok(None),
            (Some(0), _) => Err(ParseError::Property {
                key: keys::PRODUCER,
                value: "0".into(),
                reason: "a producer id is never 0",
            }),
            (Some(p), Some(s)) => Ok(Some((p, s))),
            (Some(_), None) => Err(ParseError::MissingProperty(keys::PRODUCER_SEQUENCE)),
            (None, Some(_)) => Err(ParseError::MissingProperty(keys::PRODUCER)),
        }
    }

    /// The barrier timestamp the append asked for, if any.
    pub fn barrier_timestamp(&self) -> Result<Option<Timestamp>, ParseError> {
        Ok(self.parse_u64(keys::BARRIER_TIMESTAMP, 36)?.map(Timestamp))
    }

    /// The term of the WAL that wrote the message, if stamped.
    pub fn term(&self) -> Result<Option<Term>, ParseError> {
        if let Some(t) = self.typed.term() {
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

    pub(super) fn set(&mut self, key: &str, value: String) {
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

    pub(super) fn remove(&mut self, key: &str) {
        if self.properties.contains_key(key)
            && let Some(v) = self.properties.make_mut().remove(key)
        {
            self.properties_len -= key.len() + v.len();
        }
    }

    pub(super) fn set_proto<P: prost::Message>(&mut self, key: &str, p: &P) {
        self.set(key, BASE64.encode(p.encode_to_vec()));
    }

    /// Changes the typed properties with `f`, keeping the size and the single copy of each
    /// stamp right (`map_keys`: the map's copies of what `f` sets).
    pub(super) fn retype(&mut self, map_keys: &[&str], f: impl FnOnce(&mut Typed)) {
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
