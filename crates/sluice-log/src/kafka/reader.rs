//! Readers, and the read-back of the newest term in a topic.
//!
//! A reader is a `read_committed` consumer assigned (no group, no commits) to partition 0 at the
//! policy's offset; a task moves its records into the stream's channel, skipping term fences.
//! [`tail_owner`] reads the newest record of a topic (scanning back from the end in growing
//! windows, since transaction markers occupy offsets) and returns its writer.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sluice_types::{ImmutableMessage, MessageId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::record::{self, Owner, Record};
use crate::LogError;

/// Maps a client error to a (transient) backend error.
pub(super) fn unavailable(what: &str, e: KafkaError) -> LogError {
    LogError::Unavailable(format!("kafka {what}: {e}"))
}

/// Assigns partition 0 of `topic` at `offset`.
pub(super) fn assign(
    consumer: &impl Consumer,
    topic: &str,
    offset: Offset,
) -> Result<(), LogError> {
    let mut tpl = TopicPartitionList::with_capacity(1);
    tpl.add_partition_offset(topic, 0, offset)
        .map_err(|e| unavailable("assign", e))?;
    consumer.assign(&tpl).map_err(|e| unavailable("assign", e))
}

/// The owner of the newest record written to `topic`, committed or not (the default owner,
/// term 0, for an empty topic). Blocking: call it from a blocking thread.
pub(super) fn tail_owner(
    config: &ClientConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Owner, LogError> {
    // Uncommitted records count too: only the producer holding the current epoch can write
    // them, and a read_committed consumer would wait at an open transaction.
    let consumer: BaseConsumer = config
        .clone()
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_uncommitted")
        .create()
        .map_err(|e| unavailable("create consumer", e))?;
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, timeout)
        .map_err(|e| unavailable("watermarks", e))?;
    let deadline = Instant::now() + timeout;
    let mut end = high;
    let mut window = 16i64;
    while end > low {
        let start = low.max(end - window);
        assign(&consumer, topic, Offset::Offset(start))?;
        let mut last = None;
        loop {
            if Instant::now() > deadline {
                return Err(LogError::Unavailable(format!(
                    "kafka: reading the end of {topic} took longer than {timeout:?}"
                )));
            }
            match consumer.poll(Duration::from_millis(50)) {
                None => continue,
                Some(Ok(m)) => {
                    if m.offset() >= end {
                        break;
                    }
                    let r = record::decode(|| format!("{topic}@{}", m.offset()), m.payload())?;
                    last = Some(r.owner());
                    if m.offset() >= end - 1 {
                        break;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => return Err(unavailable("read the end of the log", e)),
            }
        }
        if let Some(owner) = last {
            return Ok(owner);
        }
        end = start;
        window = window.saturating_mul(4);
    }
    Ok(Owner::default())
}

/// One read: moves records from `consumer` into `tx` until `stop`, the receiver is dropped, or
/// a record does not decode (then that error is the stream's last item).
pub(super) async fn run(
    consumer: StreamConsumer,
    topic: String,
    tx: mpsc::Sender<Result<ImmutableMessage, LogError>>,
    stop: CancellationToken,
) -> StreamConsumer {
    loop {
        let item = tokio::select! {
            _ = stop.cancelled() => break,
            m = consumer.recv() => match m {
                Ok(m) => {
                    let offset = m.offset();
                    let decoded = record::decode(|| format!("{topic}@{offset}"), m.payload());
                    match (decoded, u64::try_from(offset)) {
                        (Ok(Record::Fence { .. }), _) => continue,
                        (Ok(Record::Data { message, .. }), Ok(o)) => {
                            Ok(ImmutableMessage::new(MessageId::from_parts(0, o), message))
                        }
                        (Ok(Record::Data { .. }), Err(_)) => Err(LogError::Corrupted {
                            location: format!("{topic}@{offset}"),
                            reason: "negative offset".into(),
                        }),
                        (Err(e), _) => Err(e),
                    }
                }
                // The client retries by itself; what it reports is informational unless the
                // topic is gone.
                Err(e) => {
                    tracing::debug!(topic, error = %e, "kafka reader");
                    if matches!(
                        e.rdkafka_error_code(),
                        Some(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)
                    ) {
                        Err(unavailable("read", e))
                    } else {
                        continue;
                    }
                }
            },
        };
        let last = item.is_err();
        tokio::select! {
            _ = stop.cancelled() => break,
            sent = tx.send(item) => if sent.is_err() || last { break },
        }
    }
    consumer
}
