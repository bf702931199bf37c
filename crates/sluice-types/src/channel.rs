//! Physical and virtual channel names.
//!
//! A pchannel is one log. A vchannel is one shard of one collection carried on a pchannel; its
//! name is `{pchannel}_{collection}v{shard}`, so the pchannel is everything before the last `_`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::ParseError;
use crate::ids::CollectionId;

/// The longest channel name accepted (pchannel names are used as directory and topic names).
pub const MAX_CHANNEL_NAME_LEN: usize = 200;

fn valid_pchannel(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_CHANNEL_NAME_LEN
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// A validated pchannel name: 1 to 200 characters of `[A-Za-z0-9._-]`, not `.` or `..`.
///
/// These names become directory names, topic names and object key prefixes, so nothing that
/// could escape a directory or need quoting is accepted.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PChannel(Arc<str>);

impl PChannel {
    /// Validates a pchannel name.
    pub fn new(name: impl AsRef<str>) -> Result<PChannel, ParseError> {
        let name = name.as_ref();
        if valid_pchannel(name) {
            Ok(PChannel(name.into()))
        } else {
            Err(ParseError::PChannel(name.chars().take(64).collect()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The vchannel for shard `shard` of `collection` on this pchannel.
    pub fn vchannel(&self, collection: CollectionId, shard: u32) -> Result<VChannel, ParseError> {
        VChannel::new(format!("{}_{}v{}", self.0, collection.0, shard))
    }
}

impl fmt::Display for PChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PChannel({:?})", &*self.0)
    }
}

impl FromStr for PChannel {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PChannel::new(s)
    }
}

/// A validated vchannel name `{pchannel}_{collection}v{shard}`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VChannel {
    name: Arc<str>,
    /// Byte offset of the `_` before the collection id (names are short, so `u32` holds it).
    split: u32,
    collection: CollectionId,
    shard: u32,
}

impl VChannel {
    /// Parses and validates a vchannel name.
    pub fn new(name: impl AsRef<str>) -> Result<VChannel, ParseError> {
        let name = name.as_ref();
        let bad = || ParseError::VChannel(name.chars().take(64).collect());
        if name.len() > MAX_CHANNEL_NAME_LEN + 40 {
            return Err(bad());
        }
        let split = name.rfind('_').ok_or_else(bad)?;
        let (pchannel, suffix) = (&name[..split], &name[split + 1..]);
        if !valid_pchannel(pchannel) {
            return Err(bad());
        }
        let (collection, shard) = suffix.split_once('v').ok_or_else(bad)?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(collection) || !digits(shard) {
            return Err(bad());
        }
        let collection: i64 = collection.parse().map_err(|_| bad())?;
        let shard: u32 = shard.parse().map_err(|_| bad())?;
        Ok(VChannel {
            name: name.into(),
            split: u32::try_from(split).map_err(|_| bad())?,
            collection: CollectionId(collection),
            shard,
        })
    }

    /// The full name.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The pchannel that carries this vchannel.
    pub fn pchannel(&self) -> PChannel {
        PChannel(self.name[..self.split as usize].into())
    }

    /// The pchannel name part, without allocating.
    pub fn pchannel_str(&self) -> &str {
        &self.name[..self.split as usize]
    }

    /// The collection this vchannel is a shard of.
    pub fn collection(&self) -> CollectionId {
        self.collection
    }

    /// The shard index within the collection.
    pub fn shard(&self) -> u32 {
        self.shard
    }
}

impl fmt::Display for VChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Debug for VChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VChannel({:?})", &*self.name)
    }
}

impl FromStr for VChannel {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VChannel::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn vchannel_maps_back_to_its_pchannel() {
        let p = PChannel::new("by-dev-rootcoord-dml_3").unwrap();
        let v = p.vchannel(CollectionId(449), 2).unwrap();
        assert_eq!(v.as_str(), "by-dev-rootcoord-dml_3_449v2");
        assert_eq!(v.pchannel(), p);
        assert_eq!(v.collection(), CollectionId(449));
        assert_eq!(v.shard(), 2);
        assert_eq!(v.as_str().parse::<VChannel>().unwrap(), v);
    }

    #[test]
    fn bad_names_are_errors() {
        for bad in ["", ".", "..", "a/b", "a b", "ä", &"x".repeat(201)] {
            assert!(PChannel::new(bad).is_err(), "{bad:?}");
        }
        for bad in [
            "",
            "p",
            "p_",
            "p_1",
            "p_v1",
            "p_1v",
            "_1v1",
            "p_1x1",
            "p_-1v1",
            "p/q_1v1",
            "p_1v99999999999",
            "p_99999999999999999999v1",
        ] {
            assert!(VChannel::new(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_names_never_panics(s in "\\PC{0,80}") {
            let _ = PChannel::new(&s);
            let _ = VChannel::new(&s);
        }

        #[test]
        fn valid_vchannels_round_trip(p in "[a-z0-9_.-]{1,40}", c in 0i64..i64::MAX, sh: u32) {
            prop_assume!(p != "." && p != "..");
            let p = PChannel::new(&p).unwrap();
            let v = p.vchannel(CollectionId(c), sh).unwrap();
            prop_assert_eq!(v.pchannel(), p);
            prop_assert_eq!(v.collection(), CollectionId(c));
            prop_assert_eq!(v.shard(), sh);
        }
    }
}
