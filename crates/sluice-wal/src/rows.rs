//! The hook that checks row bodies against a collection's schema (the recovery storage
//! implements it with Arrow; the WAL itself never decodes a body).

use sluice_types::schema::CollectionSchema;

/// Checks the bodies of Inserts and Deletes for collections created with a schema. Runs in
/// the append path under the vchannel's shared lock, so the schema it is given is the one in
/// force when the message is written. An error is the reason the body is refused (the append
/// fails with INVALID_ARGUMENT and nothing is written).
pub trait RowCheck: Send + Sync + std::fmt::Debug + 'static {
    /// An Insert of `rows` rows (the header's count) with `body`.
    fn check_insert(&self, schema: &CollectionSchema, rows: u64, body: &[u8])
    -> Result<(), String>;

    /// A Delete of `rows` primary keys with `body`.
    fn check_delete(&self, schema: &CollectionSchema, rows: u64, body: &[u8])
    -> Result<(), String>;
}
