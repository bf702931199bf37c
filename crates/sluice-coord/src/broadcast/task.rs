//! A broadcast task in memory: its immutable spec, its live state and its progress.

use super::*;

/// The immutable part of a task.
pub(super) struct Spec {
    pub(super) id: u64,
    pub(super) key: String,
    pub(super) vchannels: Vec<VChannel>,
    pub(super) resource_keys: Vec<ResourceKey>,
    /// The copy for each vchannel, stamped with `_vc` and `_bh`.
    pub(super) copies: Vec<MutableMessage>,
}

impl Spec {
    pub(super) fn new(id: u64, key: String, checked: Checked) -> Result<Spec, String> {
        let header = BroadcastHeader {
            broadcast_id: id,
            vchannels: checked
                .vchannels
                .iter()
                .map(|v| v.as_str().to_owned())
                .collect(),
            resource_keys: checked.resource_keys.clone(),
        };
        // sluice-types owns the `_bh` encoding; take it from its builder instead of repeating it.
        let encoded_header = MutableMessage::builder(msg::ImportHeader::default())
            .broadcast(&header)
            .build()
            .map_err(|e| e.to_string())?
            .property(prop::BROADCAST_HEADER)
            .map(str::to_owned)
            .ok_or_else(|| "the broadcast header did not encode".to_owned())?;
        let mut copies = Vec::with_capacity(checked.vchannels.len());
        for vchannel in &checked.vchannels {
            let mut properties = checked.template.properties().into_owned();
            properties.insert(prop::VCHANNEL.to_owned(), vchannel.as_str().to_owned());
            properties.insert(prop::BROADCAST_HEADER.to_owned(), encoded_header.clone());
            let copy = Message::from_parts(checked.template.payload().clone(), properties)
                .map_err(|e| e.to_string())?;
            copies.push(MutableMessage::from_message(copy));
        }
        Ok(Spec {
            id,
            key,
            vchannels: checked.vchannels,
            resource_keys: checked.resource_keys,
            copies,
        })
    }
}

/// What a handle sees.
#[derive(Clone, Debug)]
pub(super) struct Status {
    pub(super) progress: Progress,
    pub(super) result: Option<BroadcastResult>,
    /// Another writer removed the task.
    pub(super) abandoned: bool,
}

/// The mutable part of a task, behind an async mutex held across the store writes so the
/// task's writes are ordered.
pub(super) struct Live {
    /// What is persisted.
    pub(super) proto: TaskProto,
    /// The task key's mod revision.
    pub(super) revision: Revision,
    /// Sends running in this broadcaster.
    pub(super) sending: usize,
    /// The task key is deleted (or was removed by someone else).
    pub(super) finished: bool,
    /// The resource keys, released when the task finishes.
    pub(super) guard: Option<LockGuard>,
}

pub(super) struct Task {
    pub(super) spec: Spec,
    pub(super) live: tokio::sync::Mutex<Live>,
    pub(super) status: watch::Sender<Status>,
}

impl Task {
    pub(super) fn new(
        spec: Spec,
        proto: TaskProto,
        revision: Revision,
        guard: LockGuard,
    ) -> Arc<Task> {
        let live = Live {
            proto,
            revision,
            sending: 0,
            finished: false,
            guard: Some(guard),
        };
        let (status, _) = watch::channel(Status {
            progress: progress_of(&live.proto),
            result: None,
            abandoned: false,
        });
        Arc::new(Task {
            spec,
            live: tokio::sync::Mutex::new(live),
            status,
        })
    }

    pub(super) fn handle(&self, cancel: CancellationToken) -> BroadcastHandle {
        BroadcastHandle {
            id: self.spec.id,
            status: self.status.subscribe(),
            cancel,
        }
    }

    pub(super) fn progress(&self, live: &Live) -> Progress {
        progress_of(&live.proto)
    }

    pub(super) fn result(&self, live: &Live) -> BroadcastResult {
        let appends = self
            .spec
            .vchannels
            .iter()
            .zip(&live.proto.vchannels)
            .map(|(vc, v)| (vc.clone(), v.outcome.map(AppendOutcome::from)))
            .collect();
        BroadcastResult {
            broadcast_id: self.spec.id,
            appends,
        }
    }
}

pub(super) fn progress_of(proto: &TaskProto) -> Progress {
    let state = match proto.state() {
        StateProto::WaitAck => TaskState::WaitAck,
        StateProto::Done => TaskState::Done,
        StateProto::Pending | StateProto::Unspecified => TaskState::Pending,
    };
    Progress {
        state,
        total: proto.vchannels.len(),
        sent: proto.vchannels.iter().filter(|v| v.sent).count(),
        acked: proto.vchannels.iter().filter(|v| v.acked).count(),
    }
}
