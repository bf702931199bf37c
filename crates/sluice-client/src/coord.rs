//! Calls to the coordinator that are not about routing: broadcasts (one message to many
//! vchannels, acknowledged per vchannel by whoever applies it) and timestamp/id allocation.

use sluice_proto::v1::{self, coordinator_client::CoordinatorClient};
use sluice_proto::{Channel, Security, convert};
use sluice_types::message::ResourceKey;
use sluice_types::{ErrorCode, MessageId, MutableMessage, Timestamp, VChannel};

use crate::ClientError;

/// Where one broadcast copy landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BroadcastAppend {
    /// The vchannel.
    pub vchannel: VChannel,
    /// Its id in the vchannel's log (`None` if the coordinator that appended it did not live to
    /// record it).
    pub id: Option<MessageId>,
    /// Its timestamp (`None` likewise).
    pub timestamp: Option<Timestamp>,
}

/// A completed broadcast.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BroadcastOutcome {
    /// The broadcast id (carried in each copy's broadcast header).
    pub broadcast_id: u64,
    /// One entry per vchannel, in request order.
    pub appends: Vec<BroadcastAppend>,
}

/// A gRPC client of the coordinator.
#[derive(Clone)]
pub struct CoordClient {
    client: CoordinatorClient<Channel>,
}

impl std::fmt::Debug for CoordClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordClient").finish_non_exhaustive()
    }
}

impl CoordClient {
    /// A client of the coordinator at `endpoint` (`http://host:port`), connecting lazily with
    /// the process's security settings ([`Security::install`]).
    pub fn connect(endpoint: &str) -> Result<CoordClient, ClientError> {
        CoordClient::connect_with(endpoint, &Security::process())
    }

    /// The same with these TLS settings and token.
    pub fn connect_with(endpoint: &str, security: &Security) -> Result<CoordClient, ClientError> {
        let channel = security
            .lazy_channel(endpoint)
            .map_err(|e| ClientError::new(ErrorCode::InvalidArgument, e))?;
        Ok(CoordClient {
            client: CoordinatorClient::new(channel),
        })
    }

    /// Appends `message` to every vchannel in `vchannels` as one broadcast holding
    /// `resource_keys` until every vchannel acknowledged it ([`CoordClient::ack`]); returns then.
    pub async fn broadcast(
        &self,
        message: &MutableMessage,
        vchannels: &[VChannel],
        resource_keys: &[ResourceKey],
    ) -> Result<BroadcastOutcome, ClientError> {
        let request = v1::BroadcastRequest {
            message: Some(v1::Message::from(&**message)),
            vchannels: vchannels.iter().map(|v| v.as_str().to_owned()).collect(),
            resource_keys: resource_keys.to_vec(),
        };
        let response = self
            .client
            .clone()
            .broadcast(request)
            .await
            .map_err(|s| ClientError::from_status(&s))?
            .into_inner();
        let bad = |what: String| ClientError::new(ErrorCode::Inner, what);
        let mut appends = Vec::with_capacity(response.results.len());
        for r in response.results {
            let vchannel = VChannel::new(&r.vchannel)
                .map_err(|e| bad(format!("coordinator answered a bad vchannel: {e}")))?;
            let id = if r.id.is_empty() {
                None
            } else {
                Some(
                    convert::message_id_from_wire(&r.id)
                        .map_err(|e| bad(format!("coordinator answered a bad id: {e}")))?,
                )
            };
            appends.push(BroadcastAppend {
                vchannel,
                id,
                timestamp: (r.timestamp != 0).then_some(Timestamp(r.timestamp)),
            });
        }
        Ok(BroadcastOutcome {
            broadcast_id: response.broadcast_id,
            appends,
        })
    }

    /// The consumer of `vchannel` applied broadcast `broadcast_id`.
    pub async fn ack(&self, broadcast_id: u64, vchannel: &VChannel) -> Result<(), ClientError> {
        self.client
            .clone()
            .broadcast_ack(v1::BroadcastAckRequest {
                broadcast_id,
                vchannel: vchannel.as_str().to_owned(),
            })
            .await
            .map_err(|s| ClientError::from_status(&s))?;
        Ok(())
    }

    /// `count` unique, increasing timestamps; returns the first.
    pub async fn allocate_timestamps(&self, count: u32) -> Result<Timestamp, ClientError> {
        let r = self
            .client
            .clone()
            .allocate_timestamps(v1::AllocateRequest { count })
            .await
            .map_err(|s| ClientError::from_status(&s))?
            .into_inner();
        Ok(Timestamp(r.first))
    }
}
