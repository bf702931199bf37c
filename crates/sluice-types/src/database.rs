//! The database properties Sluice acts on, kept in a database's catalog properties
//! (`DatabaseInfo.properties` in `proto/sluice/v1/coord.proto`), under the names Milvus gives
//! them:
//!
//! * [`MAX_COLLECTIONS`]: the most collections the database holds; the coordinator refuses a
//!   CreateCollection (or a rename into the database) beyond it.
//! * [`DENY_WRITING`] / [`DENY_READING`]: `true` makes the Milvus API refuse the database's
//!   inserts, upserts and deletes / searches and queries.
//! * [`REPLICA_NUMBER`]: the replicas the Milvus API loads a collection of the database with
//!   when the load names none.
//! * [`DISK_QUOTA_MB`]: the most MB of flushed segments the database's collections hold before
//!   the Milvus API refuses their inserts and upserts.
//!
//! The coordinator refuses a value this module cannot read, so every reader of the catalog only
//! meets values that were valid when written. Other properties are kept and described.

use std::collections::HashMap;

/// The most collections a database holds: a whole number (0: none may be created).
pub const MAX_COLLECTIONS: &str = "database.max.collections";
/// `true`: the database's writes are refused.
pub const DENY_WRITING: &str = "database.force.deny.writing";
/// `true`: the database's reads are refused.
pub const DENY_READING: &str = "database.force.deny.reading";
/// The replicas a collection of the database is loaded with when its load names none (≥ 1).
pub const REPLICA_NUMBER: &str = "database.replica.number";

/// The most MB of flushed segment files the database's collections hold before their inserts
/// and upserts are refused (a number; negative: no quota).
pub const DISK_QUOTA_MB: &str = "database.diskQuota.mb";

/// The most delegators per shard a collection is loaded with (and [`REPLICA_NUMBER`] names).
pub const MAX_REPLICAS: u32 = 16;

/// What a database's properties set.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DatabaseLimits {
    /// [`MAX_COLLECTIONS`], when set.
    pub max_collections: Option<u64>,
    /// [`DENY_WRITING`].
    pub deny_writing: bool,
    /// [`DENY_READING`].
    pub deny_reading: bool,
    /// [`REPLICA_NUMBER`], when set.
    pub replicas: Option<u32>,
    /// [`DISK_QUOTA_MB`], when set and not negative.
    pub disk_quota_mb: Option<f64>,
}

fn flag(props: &HashMap<String, String>, key: &str) -> Result<bool, String> {
    match props.get(key).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(false),
        Some(v) if v == "true" => Ok(true),
        Some(v) if v == "false" => Ok(false),
        Some(v) => Err(format!("database property {key:?} is {v:?}: true or false")),
    }
}

impl DatabaseLimits {
    /// The limits `props` set; a value that is not one the property takes is an error.
    pub fn from_properties(props: &HashMap<String, String>) -> Result<DatabaseLimits, String> {
        let max_collections = match props.get(MAX_COLLECTIONS) {
            None => None,
            Some(v) => Some(v.trim().parse::<u64>().map_err(|_| {
                format!("database property {MAX_COLLECTIONS:?} is {v:?}: a whole number")
            })?),
        };
        let replicas = match props.get(REPLICA_NUMBER) {
            None => None,
            Some(v) => match v.trim().parse::<u32>() {
                Ok(n) if (1..=MAX_REPLICAS).contains(&n) => Some(n),
                _ => {
                    return Err(format!(
                        "database property {REPLICA_NUMBER:?} is {v:?}: a whole number from 1 \
                         to {MAX_REPLICAS}"
                    ));
                }
            },
        };
        let disk_quota_mb = match props.get(DISK_QUOTA_MB) {
            None => None,
            Some(v) => match v.trim().parse::<f64>() {
                Ok(q) if q.is_finite() => (q >= 0.0).then_some(q),
                _ => {
                    return Err(format!(
                        "database property {DISK_QUOTA_MB:?} is {v:?}: a number of MB \
                         (negative: no quota)"
                    ));
                }
            },
        };
        Ok(DatabaseLimits {
            max_collections,
            deny_writing: flag(props, DENY_WRITING)?,
            deny_reading: flag(props, DENY_READING)?,
            replicas,
            disk_quota_mb,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn limits_read_milvus_spellings_and_refuse_bad_values() {
        assert_eq!(
            DatabaseLimits::from_properties(&props(&[])).unwrap(),
            DatabaseLimits::default()
        );
        let l = DatabaseLimits::from_properties(&props(&[
            (MAX_COLLECTIONS, " 3"),
            (DENY_WRITING, "True"),
            (DENY_READING, "false"),
            (REPLICA_NUMBER, "2"),
            (DISK_QUOTA_MB, "1.5"),
        ]))
        .unwrap();
        assert_eq!(
            l,
            DatabaseLimits {
                max_collections: Some(3),
                deny_writing: true,
                deny_reading: false,
                replicas: Some(2),
                disk_quota_mb: Some(1.5),
            }
        );
        for bad in [
            (MAX_COLLECTIONS, "-1"),
            (MAX_COLLECTIONS, "many"),
            (DENY_WRITING, "yes"),
            (DENY_READING, ""),
            (REPLICA_NUMBER, "0"),
            (REPLICA_NUMBER, "17"),
            (DISK_QUOTA_MB, "big"),
        ] {
            let e = DatabaseLimits::from_properties(&props(&[bad])).unwrap_err();
            assert!(e.contains(bad.0), "{bad:?}: {e}");
        }
    }
}
