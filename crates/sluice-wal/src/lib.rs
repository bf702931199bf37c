//! The WAL component: what a streaming node runs for one pchannel on top of any `sluice-log`
//! backend.

mod ack;
mod append;
pub mod checkpoint;
pub mod error;
mod lock;
pub mod pressure;
pub mod producer;
pub mod rows;
pub mod scanner;
pub mod shard;
pub mod tso;
mod txn;
pub mod wab;
pub mod wal;

pub use checkpoint::{CheckpointStore, MemoryCheckpointStore, Snapshot};
pub use error::WalError;
pub use pressure::Pressure;
pub use rows::RowCheck;
pub use sluice_types::AppendResult;
pub use wal::{RecoveryStats, Wal, WalConfig, WalDeps};
