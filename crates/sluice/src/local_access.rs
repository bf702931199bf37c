//! The in-process shortcut standalone uses: appends and reads for pchannels whose WAL is in this
//! process go straight to the [`WalManager`]; everything else goes over gRPC through the
//! client's [`RemoteAccess`]. It lives here, with the process wiring, so that the client crate
//! depends only on the contract.

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use sluice_client::access::{MessageStream, RemoteAccess, WalAccess};
use sluice_client::{Assignment, ClientError};
use sluice_node::WalManager;
use sluice_types::{AppendResult, ConsumeOptions, MutableMessage, NodeId};
use sluice_wal::scanner::ScannerOptions;

/// Direct access to the WALs of a node in this process, gRPC for every other node.
pub(crate) struct RoutedAccess {
    local: Option<(NodeId, Arc<WalManager>)>,
    remote: RemoteAccess,
}

impl RoutedAccess {
    /// Routes appends for node `node_id` to `manager` directly (no network hop), the rest over
    /// gRPC. `None`: everything over gRPC.
    pub(crate) fn new(local: Option<(NodeId, Arc<WalManager>)>) -> RoutedAccess {
        RoutedAccess {
            local,
            remote: RemoteAccess::new(),
        }
    }

    fn local_for(&self, target: &Assignment) -> Option<&Arc<WalManager>> {
        self.local
            .as_ref()
            .filter(|(id, _)| *id == target.node_id)
            .map(|(_, m)| m)
    }
}

fn client_error(code: sluice_types::ErrorCode, e: impl ToString) -> ClientError {
    ClientError::new(code, e.to_string())
}

#[async_trait]
impl WalAccess for RoutedAccess {
    async fn append(
        &self,
        target: &Assignment,
        msg: MutableMessage,
    ) -> Result<AppendResult, ClientError> {
        match self.local_for(target) {
            Some(manager) => {
                let wal = manager
                    .wal(&target.pchannel, Some(target.term))
                    .map_err(|e| client_error(e.code(), e))?;
                wal.append(msg).await.map_err(|e| client_error(e.code(), e))
            }
            None => self.remote.append(target, msg).await,
        }
    }

    async fn read(
        &self,
        target: &Assignment,
        options: ConsumeOptions,
    ) -> Result<MessageStream, ClientError> {
        match self.local_for(target) {
            Some(manager) => {
                let wal = manager
                    .wal(&target.pchannel, Some(target.term))
                    .map_err(|e| client_error(e.code(), e))?;
                let scanner = wal
                    .read(ScannerOptions::from_consume(options))
                    .map_err(|e| client_error(e.code(), e))?;
                Ok(Box::pin(
                    scanner.map(|r| r.map_err(|e| client_error(e.code(), e))),
                ))
            }
            None => self.remote.read(target, options).await,
        }
    }
}
