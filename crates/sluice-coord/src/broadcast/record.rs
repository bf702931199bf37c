//! The persisted task record (`TaskProto`, version 1) and merging concurrent writes of it.

use super::*;

pub(super) const TASK_FORMAT_VERSION: u32 = 1;

/// A broadcast task as persisted at `Keys::broadcast(id)`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct TaskProto {
    /// [`TASK_FORMAT_VERSION`].
    #[prost(uint32, tag = "1")]
    pub(super) version: u32,
    #[prost(uint64, tag = "2")]
    pub(super) id: u64,
    /// The template, framed by the on-log record codec.
    #[prost(bytes = "vec", tag = "3")]
    pub(super) message: Vec<u8>,
    #[prost(message, repeated, tag = "4")]
    pub(super) vchannels: Vec<VChannelProto>,
    #[prost(enumeration = "StateProto", tag = "5")]
    pub(super) state: i32,
    #[prost(message, repeated, tag = "6")]
    pub(super) resource_keys: Vec<ResourceKey>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct VChannelProto {
    #[prost(string, tag = "1")]
    pub(super) name: String,
    #[prost(bool, tag = "2")]
    pub(super) sent: bool,
    #[prost(bool, tag = "3")]
    pub(super) acked: bool,
    /// Present exactly when `sent`.
    #[prost(message, optional, tag = "4")]
    pub(super) outcome: Option<OutcomeProto>,
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
pub(super) struct OutcomeProto {
    #[prost(uint64, tag = "1")]
    pub(super) id_hi: u64,
    #[prost(uint64, tag = "2")]
    pub(super) id_lo: u64,
    #[prost(uint64, tag = "3")]
    pub(super) timestamp: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, prost::Enumeration)]
#[repr(i32)]
pub(super) enum StateProto {
    Unspecified = 0,
    Pending = 1,
    WaitAck = 2,
    Done = 3,
}

impl From<AppendOutcome> for OutcomeProto {
    fn from(o: AppendOutcome) -> OutcomeProto {
        OutcomeProto {
            id_hi: o.id.hi(),
            id_lo: o.id.lo(),
            timestamp: o.timestamp.0,
        }
    }
}

impl From<OutcomeProto> for AppendOutcome {
    fn from(o: OutcomeProto) -> AppendOutcome {
        AppendOutcome {
            id: MessageId::from_parts(o.id_hi, o.id_lo),
            timestamp: Timestamp(o.timestamp),
        }
    }
}

impl TaskProto {
    pub(super) fn new(id: u64, checked: &Checked) -> TaskProto {
        TaskProto {
            version: TASK_FORMAT_VERSION,
            id,
            message: checked.encoded.clone(),
            vchannels: checked
                .vchannels
                .iter()
                .map(|v| VChannelProto {
                    name: v.as_str().to_owned(),
                    sent: false,
                    acked: false,
                    outcome: None,
                })
                .collect(),
            state: StateProto::Pending as i32,
            resource_keys: checked.resource_keys.clone(),
        }
    }
}

pub(super) fn decode_proto(kv: &KeyValue) -> Result<TaskProto> {
    let bad = |reason: String| CoordError::Malformed {
        key: kv.key.clone(),
        reason,
    };
    let proto =
        TaskProto::decode(kv.value.as_ref()).map_err(|e| bad(format!("not a task: {e}")))?;
    if proto.version != TASK_FORMAT_VERSION {
        return Err(bad(format!(
            "task format version {} (this build reads {TASK_FORMAT_VERSION})",
            proto.version
        )));
    }
    match StateProto::try_from(proto.state) {
        Ok(StateProto::Unspecified) | Err(_) => {
            return Err(bad(format!("unknown task state {}", proto.state)));
        }
        Ok(_) => {}
    }
    if let Some(v) = proto
        .vchannels
        .iter()
        .find(|v| v.sent != v.outcome.is_some())
    {
        return Err(bad(format!(
            "vchannel {:?} has sent = {} but {} outcome",
            v.name,
            v.sent,
            if v.sent { "no" } else { "an" }
        )));
    }
    Ok(proto)
}

/// Decodes and checks one stored task: the key must be the task's canonical key, and the
/// template, vchannels and resource keys must pass the same checks as a new request.
pub(super) fn decode_task(keys: &Keys, kv: &KeyValue) -> Result<(Spec, TaskProto)> {
    let bad = |reason: String| CoordError::Malformed {
        key: kv.key.clone(),
        reason,
    };
    let proto = decode_proto(kv)?;
    if keys.broadcast(proto.id) != kv.key {
        return Err(bad(format!(
            "task {} is stored under the wrong key",
            proto.id
        )));
    }
    let (template, len) =
        codec::decode_message(&proto.message).map_err(|e| bad(format!("message template: {e}")))?;
    if len != proto.message.len() {
        return Err(bad("trailing bytes after the message template".into()));
    }
    let names: Vec<String> = proto.vchannels.iter().map(|v| v.name.clone()).collect();
    let checked = check(&template, &names, &proto.resource_keys).map_err(&bad)?;
    let spec = Spec::new(proto.id, kv.key.clone(), checked).map_err(bad)?;
    Ok((spec, proto))
}

/// Our view merged with a stored one: flags and outcomes from either, the later state.
pub(super) fn merge(ours: &TaskProto, theirs: &TaskProto) -> Result<TaskProto, String> {
    let same_channels = ours.vchannels.len() == theirs.vchannels.len()
        && ours
            .vchannels
            .iter()
            .zip(&theirs.vchannels)
            .all(|(a, b)| a.name == b.name);
    if ours.id != theirs.id || !same_channels {
        return Err(format!(
            "the stored task is not broadcast {} over the same vchannels",
            ours.id
        ));
    }
    let mut merged = ours.clone();
    for (m, t) in merged.vchannels.iter_mut().zip(&theirs.vchannels) {
        m.acked |= t.acked;
        if !m.sent && t.sent {
            m.sent = true;
            m.outcome = t.outcome;
        }
    }
    merged.state = merged.state.max(theirs.state);
    Ok(merged)
}
