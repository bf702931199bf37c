//! The recovery storage: what turns a WAL's stream into state that survives it.
//!
//! * [`checkpoints`] — the WAL's recovery snapshots (checkpoint, collections per vchannel with
//!   their schemas, growing segments with their stats) in the meta store.
//! * [`flusher`] — growing segments to Parquet in object storage, manifests, flush
//!   checkpoints, log truncation.
//! * [`compaction`] — sealed segments rewritten without the rows deletes and TTLs removed;
//!   delete files merged into the deletes committed rows still need.
//! * [`gc`] — objects no manifest names (a crash's leftovers, failed sweeps) deleted.
//! * [`segments`] — reading committed manifests and their Parquet files back.
//! * [`rows`] — Insert and Delete bodies (Arrow IPC) checked against the collection's schema.

pub mod checkpoints;
pub mod compaction;
pub mod flusher;
pub mod gc;
pub mod rows;
pub mod segments;
