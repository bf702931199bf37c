//! The recovery storage: what turns a WAL's stream into state that survives it.
//!
//! * [`checkpoints`] — the WAL's recovery snapshots (checkpoint, collections per vchannel with
//!   their schemas, growing segments with their stats) in the meta store.

pub mod checkpoints;
