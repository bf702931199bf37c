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
