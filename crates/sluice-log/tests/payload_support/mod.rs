//! Self-checking payloads for the crash and stop tests: any damage to a stored record is
//! detectable, and the record names its key.

/// `key|filler|crc32c(key|filler)`, the filler's length varying with the key.
pub(crate) fn payload(key: &str) -> Vec<u8> {
    let filler = "0123456789".repeat(crc32c::crc32c(key.as_bytes()) as usize % 40);
    let body = format!("{key}|{filler}");
    format!("{body}|{:08x}", crc32c::crc32c(body.as_bytes())).into_bytes()
}

/// The key of a self-checking payload, or what is wrong with it.
pub(crate) fn check_payload(bytes: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "payload is not UTF-8".to_string())?;
    let (body, crc) = text.rsplit_once('|').ok_or("no checksum")?;
    let expected = format!("{:08x}", crc32c::crc32c(body.as_bytes()));
    if crc != expected {
        return Err(format!("checksum {crc} != {expected} in {text:?}"));
    }
    let (key, _) = body.split_once('|').ok_or("no key")?;
    Ok(key.to_string())
}

/// Tails `pchannel` read-only from the start until `stop` fires and then until it has been idle
/// for `idle` (what was written by then is drained); returns every record's id and key. Ids
/// must be dense from lsn 0 and every payload intact.
pub(crate) async fn tail_checked(
    config: sluice_log::local::LocalConfig,
    pchannel: sluice_types::PChannel,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    idle: std::time::Duration,
) -> Result<Vec<(sluice_types::MessageId, String)>, String> {
    use sluice_log::{DeliverPolicy, LogProvider, OpenOptions, ReadOptions};
    use sluice_types::{MessageId, Term};
    let provider = sluice_log::local::LocalProvider::new(config).map_err(|e| e.to_string())?;
    let handle = provider
        .open(OpenOptions::read_only(pchannel, Term(0)))
        .await
        .map_err(|e| e.to_string())?;
    let mut stream = handle
        .read(ReadOptions::new(DeliverPolicy::All))
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut stopping = false;
    loop {
        let wait = if stopping {
            idle
        } else {
            std::time::Duration::from_secs(3600)
        };
        let record = tokio::select! {
            _ = &mut stop, if !stopping => {
                stopping = true;
                continue;
            }
            r = tokio::time::timeout(wait, futures::StreamExt::next(&mut stream)) => match r {
                Err(_) => break,
                Ok(None) => return Err("stream ended".into()),
                Ok(Some(Err(e))) => return Err(format!("read failed after {} records: {e}", out.len())),
                Ok(Some(Ok(record))) => record,
            },
        };
        let expected = MessageId::from_parts(0, out.len() as u64);
        if record.id() != expected {
            return Err(format!("expected {expected}, got {}", record.id()));
        }
        let key = check_payload(record.payload())
            .map_err(|e| format!("record {} is garbled: {e}", record.id()))?;
        out.push((record.id(), key));
    }
    drop(stream);
    handle.close().await;
    Ok(out)
}
