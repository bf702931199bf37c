//! Plain identifiers: terms, hybrid timestamps, message ids and the numeric ids of
//! collections, partitions, segments and transactions.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::ParseError;

/// The ownership term of a pchannel. The coordinator bumps it on every change of owner; a log
/// backend fences every writer whose term is lower than the highest term that opened the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Term(pub u64);

impl Term {
    /// The term after this one.
    pub fn next(self) -> Term {
        Term(self.0 + 1)
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Number of low bits of a [`Timestamp`] that hold the logical counter.
pub const LOGICAL_BITS: u32 = 18;
const LOGICAL_MASK: u64 = (1 << LOGICAL_BITS) - 1;

/// A hybrid timestamp from the timestamp oracle: `physical_ms << 18 | logical`.
///
/// The physical part is milliseconds since the Unix epoch; the logical part orders up to 2^18
/// timestamps handed out within one millisecond. Ordering is plain integer ordering.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The smallest timestamp.
    pub const MIN: Timestamp = Timestamp(0);
    /// The largest timestamp.
    pub const MAX: Timestamp = Timestamp(u64::MAX);

    /// Builds a timestamp from its physical (ms since the epoch) and logical parts. Returns `None`
    /// when `logical` does not fit 18 bits or `physical_ms` does not fit 46 bits.
    pub fn from_parts(physical_ms: u64, logical: u64) -> Option<Timestamp> {
        if logical > LOGICAL_MASK || physical_ms > (u64::MAX >> LOGICAL_BITS) {
            return None;
        }
        Some(Timestamp(physical_ms << LOGICAL_BITS | logical))
    }

    /// Milliseconds since the Unix epoch.
    pub fn physical_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    /// The logical counter within the millisecond.
    pub fn logical(self) -> u64 {
        self.0 & LOGICAL_MASK
    }

    /// The timestamp of a wall-clock instant with logical part 0. Instants before the epoch map
    /// to physical 0; instants past the representable range saturate.
    pub fn from_system_time(t: SystemTime) -> Timestamp {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let ms = u64::try_from(ms)
            .unwrap_or(u64::MAX)
            .min(u64::MAX >> LOGICAL_BITS);
        Timestamp(ms << LOGICAL_BITS)
    }

    /// The current wall-clock time as a timestamp with logical part 0.
    pub fn now() -> Timestamp {
        Timestamp::from_system_time(SystemTime::now())
    }

    /// The wall-clock instant of the physical part.
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.physical_ms())
    }

    /// Adds a physical duration (keepalive arithmetic), saturating at [`Timestamp::MAX`].
    pub fn saturating_add_duration(self, d: Duration) -> Timestamp {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let add = ms
            .checked_shl(LOGICAL_BITS)
            .filter(|v| v >> LOGICAL_BITS == ms);
        match add {
            Some(add) => Timestamp(self.0.saturating_add(add)),
            None => Timestamp::MAX,
        }
    }

    /// The physical time elapsed from `earlier` to `self` (zero if `earlier` is later).
    pub fn duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.physical_ms().saturating_sub(earlier.physical_ms()))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The position of a record in one pchannel's log.
///
/// 128 bits, compared as an unsigned integer, which is the same as comparing the two 64-bit
/// halves lexicographically (`hi` first). Each backend decides what the halves mean (local log:
/// sequence number; object log: segment/block in `hi`, entry in `lo`; Kafka: offset). Ids are
/// totally ordered within one pchannel and meaningless across pchannels or backends.
///
/// The string form is exactly 32 lower-case hex digits, so string order equals id order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub u128);

impl MessageId {
    /// The smallest id.
    pub const MIN: MessageId = MessageId(0);

    /// Builds an id from its high and low halves.
    pub fn from_parts(hi: u64, lo: u64) -> MessageId {
        MessageId((u128::from(hi) << 64) | u128::from(lo))
    }

    /// The high 64 bits.
    pub fn hi(self) -> u64 {
        (self.0 >> 64) as u64
    }

    /// The low 64 bits.
    pub fn lo(self) -> u64 {
        self.0 as u64
    }

    /// The id as 16 big-endian bytes (byte order equals id order).
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// The id from 16 big-endian bytes.
    pub fn from_bytes(b: [u8; 16]) -> MessageId {
        MessageId(u128::from_be_bytes(b))
    }
}

impl MessageId {
    /// The 32 lowercase hex digits of the id (its `Display` form), without the formatting
    /// machinery: the WAL writes one into every message it appends.
    pub(crate) fn hex(self) -> [u8; 32] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (i, d) in out.iter_mut().enumerate() {
            *d = DIGITS[((self.0 >> (4 * (31 - i))) & 0xf) as usize];
        }
        out
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.hex();
        // Hex digits are ASCII.
        f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

impl FromStr for MessageId {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ParseError::MessageId(s.chars().take(64).collect()));
        }
        u128::from_str_radix(s, 16)
            .map(MessageId)
            .map_err(|_| ParseError::MessageId(s.to_owned()))
    }
}

macro_rules! numeric_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

numeric_id!(
    /// A collection (table) id.
    CollectionId
);
numeric_id!(
    /// A partition id within a collection.
    PartitionId
);
numeric_id!(
    /// A segment id (the unit of growing data that is later sealed and flushed).
    SegmentId
);
numeric_id!(
    /// A transaction id, unique per pchannel.
    TxnId
);

/// A streaming node's id: unique in the cluster, chosen by the node (or the operator).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node-{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn timestamp_parts_round_trip() {
        let ts = Timestamp::from_parts(1_700_000_000_123, 77).unwrap();
        assert_eq!(ts.physical_ms(), 1_700_000_000_123);
        assert_eq!(ts.logical(), 77);
        assert!(Timestamp::from_parts(1, 1 << 18).is_none());
        assert!(Timestamp::from_parts(u64::MAX, 0).is_none());
    }

    #[test]
    fn timestamp_wall_time_round_trip() {
        let now = SystemTime::now();
        let ts = Timestamp::from_system_time(now);
        let back = ts.to_system_time();
        let diff = now.duration_since(back).unwrap();
        assert!(diff < Duration::from_millis(1));
        assert_eq!(ts.logical(), 0);
        assert_eq!(
            Timestamp::from_system_time(UNIX_EPOCH - Duration::from_secs(5)),
            Timestamp(0)
        );
    }

    #[test]
    fn timestamp_keepalive_arithmetic_saturates() {
        let ts = Timestamp::from_parts(1000, 5).unwrap();
        let later = ts.saturating_add_duration(Duration::from_millis(250));
        assert_eq!(later.physical_ms(), 1250);
        assert_eq!(later.logical(), 5);
        assert_eq!(later.duration_since(ts), Duration::from_millis(250));
        assert_eq!(ts.duration_since(later), Duration::ZERO);
        assert_eq!(
            ts.saturating_add_duration(Duration::from_secs(u64::MAX)),
            Timestamp::MAX
        );
    }

    #[test]
    fn message_id_rejects_bad_strings() {
        for bad in [
            "",
            "0",
            "zz",
            &"0".repeat(33),
            &"A".repeat(32),
            &"g".repeat(32),
        ] {
            assert!(bad.parse::<MessageId>().is_err(), "{bad:?} parsed");
        }
    }

    proptest! {
        #[test]
        fn message_id_string_round_trip_keeps_order(a: u128, b: u128) {
            let (ia, ib) = (MessageId(a), MessageId(b));
            let (sa, sb) = (ia.to_string(), ib.to_string());
            prop_assert_eq!(sa.parse::<MessageId>().unwrap(), ia);
            prop_assert_eq!(&sa, &format!("{a:032x}"));
            prop_assert_eq!(sa.cmp(&sb), ia.cmp(&ib));
            prop_assert_eq!(ia.to_bytes().cmp(&ib.to_bytes()), ia.cmp(&ib));
            prop_assert_eq!(MessageId::from_parts(ia.hi(), ia.lo()), ia);
            prop_assert_eq!(MessageId::from_bytes(ia.to_bytes()), ia);
        }

        #[test]
        fn message_id_parse_never_panics(s in ".{0,40}") {
            let _ = s.parse::<MessageId>();
        }
    }
}
