//! A collection's time to live, kept in its catalog properties (`CollectionInfo.properties` in
//! `proto/sluice/v1/coord.proto`): rows older than it are gone for reads. A read at timestamp
//! `T` sees a row inserted at `ts` only when `ts`'s physical time is later than `T`'s minus the
//! TTL — so a read at one timestamp always sees the same rows, whenever it runs.
//!
//! The coordinator refuses a value this module cannot read, so a node reading it from the
//! catalog only meets values that were valid when written.

use std::collections::HashMap;

use crate::ids::{LOGICAL_BITS, Timestamp};

/// Seconds a row lives, a whole number from 0 (no TTL, as absent) to [`MAX_TTL_SECONDS`].
pub const PROP_TTL_SECONDS: &str = "ttl.seconds";

/// The longest TTL: 100 years.
pub const MAX_TTL_SECONDS: u64 = 100 * 366 * 24 * 3600;

/// The TTL in `props` in milliseconds (`None`: none, or 0); a bad value is an error.
pub fn ttl_ms(props: &HashMap<String, String>) -> Result<Option<u64>, String> {
    let Some(v) = props.get(PROP_TTL_SECONDS) else {
        return Ok(None);
    };
    match v.trim().parse::<u64>() {
        Ok(0) => Ok(None),
        Ok(s) if s <= MAX_TTL_SECONDS => Ok(Some(s * 1000)),
        _ => Err(format!(
            "collection property {PROP_TTL_SECONDS:?} is {v:?}: a whole number of seconds from \
             0 (no TTL) to {MAX_TTL_SECONDS}"
        )),
    }
}

/// The oldest insert timestamp a read at `t` sees with a TTL of `ttl_ms` (0: every row).
pub fn expired_before(t: u64, ttl_ms: Option<u64>) -> u64 {
    match ttl_ms {
        None => 0,
        Some(ms) => {
            let physical = Timestamp(t).physical_ms().saturating_sub(ms);
            // The first timestamp of that millisecond: a row of that very millisecond is
            // older than the TTL by less than a millisecond and stays.
            (physical << LOGICAL_BITS).saturating_add(1 << LOGICAL_BITS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(v: &str) -> HashMap<String, String> {
        HashMap::from([(PROP_TTL_SECONDS.to_owned(), v.to_owned())])
    }

    #[test]
    fn ttls_are_read_and_bad_ones_refused() {
        assert_eq!(ttl_ms(&HashMap::new()), Ok(None));
        assert_eq!(ttl_ms(&props("0")), Ok(None));
        assert_eq!(ttl_ms(&props(" 60 ")), Ok(Some(60_000)));
        for bad in ["-1", "1.5", "", "ten", &(MAX_TTL_SECONDS + 1).to_string()] {
            assert!(ttl_ms(&props(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rows_older_than_the_ttl_at_the_read_are_expired() {
        let at = |ms: u64, logical: u64| Timestamp::from_parts(ms, logical).unwrap().0;
        let t = at(100_000, 7);
        assert_eq!(expired_before(t, None), 0);
        let before = expired_before(t, Some(10_000));
        // Inserted 10 s or more before the read: gone; less: visible.
        assert!(at(90_000, 5) < before);
        assert!(at(89_999, (1 << LOGICAL_BITS) - 1) < before);
        assert!(at(90_001, 0) >= before);
        assert!(at(99_999, 0) >= before);
        // A TTL longer than the clock has run expires nothing.
        assert_eq!(expired_before(at(5, 0), Some(10_000)), 1 << LOGICAL_BITS);
    }
}
