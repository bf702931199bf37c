//! Index sidecars of sealed segments: `{base}.idx` next to `{base}.log`.
//!
//! When the writer seals a segment (rolls to the next) it records what a recovery scan of that
//! segment would find — its end offset, the lsn after its last record and its sparse index — so
//! that opening the log reads one small file per sealed segment instead of every record: the
//! open costs the size of the newest segment, not the age of the log. A sidecar is trusted only
//! when its checksum holds and it agrees with the files (the segment's length — or, for a
//! segment a newer term sealed, a length at least as long, since a fenced writer may have
//! written after its records — and the lsn its records end at); otherwise the segment is scanned as before, and a read-write open writes the
//! sidecar it was missing. Records of a sealed segment are still checked (CRC) when read.
//!
//! Layout (little endian): magic `u32`, version `u8`, 3 bytes zero, base `u64`, end offset
//! `u64`, next lsn `u64`, entry count `u64`, entries (lsn `u64`, offset `u64`)…, CRC-32C `u32`
//! of everything before it. Written to a temporary name, synced, renamed.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::LogError;

use super::recovery::ScannedSegment;

const MAGIC: u32 = 0x5344_4958; // "SDIX"
const VERSION: u8 = 1;
const HEADER: usize = 4 + 1 + 3 + 8 * 4;

/// The sidecar path of the segment at `path`.
pub(super) fn path_of(segment: &Path) -> PathBuf {
    segment.with_extension("idx")
}

/// Encodes a sealed segment's scan result.
fn encode(s: &ScannedSegment) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER + s.index.len() * 16 + 4);
    b.extend_from_slice(&MAGIC.to_le_bytes());
    b.push(VERSION);
    b.extend_from_slice(&[0u8; 3]);
    for v in [s.base, s.end_offset, s.next_lsn, s.index.len() as u64] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for (lsn, offset) in &s.index {
        b.extend_from_slice(&lsn.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Decodes a sidecar; `None` when it is not one (short, wrong magic or version, bad checksum).
fn decode(b: &[u8], path: PathBuf) -> Option<ScannedSegment> {
    let (body, crc) = b.split_at_checked(b.len().checked_sub(4)?)?;
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    if u32::from_le_bytes(body.get(0..4)?.try_into().ok()?) != MAGIC || body[4] != VERSION {
        return None;
    }
    let base = u64_at(body, 8)?;
    let end_offset = u64_at(body, 16)?;
    let next_lsn = u64_at(body, 24)?;
    let count = usize::try_from(u64_at(body, 32)?).ok()?;
    if body.len() != HEADER.checked_add(count.checked_mul(16)?)? {
        return None;
    }
    let index = (0..count)
        .map(|i| {
            Some((
                u64_at(body, HEADER + i * 16)?,
                u64_at(body, HEADER + i * 16 + 8)?,
            ))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(ScannedSegment {
        base,
        path,
        end_offset,
        next_lsn,
        index,
    })
}

/// The final segment at `path` (base `base`, records up to lsn `next_lsn`) as its sidecar
/// records it, when the sidecar exists, is intact and matches the files. `longer_ok`: the
/// segment was sealed by a newer term, so the file may go on after the records.
pub(super) fn read(
    path: &Path,
    base: u64,
    next_lsn: u64,
    longer_ok: bool,
) -> Option<ScannedSegment> {
    let bytes = std::fs::read(path_of(path)).ok()?;
    let s = decode(&bytes, path.to_path_buf())?;
    let len = std::fs::metadata(path).ok()?.len();
    let len_ok = s.end_offset == len || (longer_ok && s.end_offset < len);
    (s.base == base && s.next_lsn == next_lsn && len_ok).then_some(s)
}

/// Writes the sidecar of a sealed segment. Failing to is not an error for the log (the next
/// open scans the segment instead); it is reported.
pub(super) fn write(s: &ScannedSegment) {
    let target = path_of(&s.path);
    let tmp = target.with_extension("idx.tmp");
    let result: Result<(), std::io::Error> = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&encode(s))?;
        f.sync_data()?;
        std::fs::rename(&tmp, &target)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!(path = %target.display(), error = %e, "could not write a segment's index sidecar");
    }
}

/// Removes the sidecar of a removed segment.
pub(super) fn remove(segment: &Path) -> Result<(), LogError> {
    let p = path_of(segment);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LogError::io(format!("remove {}", p.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanned(path: PathBuf) -> ScannedSegment {
        ScannedSegment {
            base: 100,
            path,
            end_offset: 4096,
            next_lsn: 180,
            index: vec![(100, 32), (140, 2000)],
        }
    }

    #[test]
    fn a_sidecar_round_trips_and_any_flipped_byte_is_refused() {
        let s = scanned(PathBuf::from("x.log"));
        let b = encode(&s);
        assert_eq!(decode(&b, s.path.clone()), Some(s.clone()));
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x40;
            assert_eq!(decode(&bad, s.path.clone()), None, "byte {i} flipped");
        }
        for cut in 0..b.len() {
            assert_eq!(decode(&b[..cut], s.path.clone()), None, "cut at {cut}");
        }
    }

    #[test]
    fn a_sidecar_that_disagrees_with_the_files_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join("00000000000000000100.log");
        std::fs::write(&seg, vec![0u8; 4096]).unwrap();
        write(&scanned(seg.clone()));
        assert!(read(&seg, 100, 180, false).is_some());
        assert!(
            read(&seg, 100, 181, false).is_none(),
            "next segment's base differs"
        );
        assert!(read(&seg, 99, 180, false).is_none(), "base differs");
        std::fs::write(&seg, vec![0u8; 4100]).unwrap();
        assert!(
            read(&seg, 100, 180, false).is_none(),
            "segment length differs"
        );
        assert!(
            read(&seg, 100, 180, true).is_some(),
            "late bytes after a segment a newer term sealed"
        );
        std::fs::write(&seg, vec![0u8; 4000]).unwrap();
        assert!(
            read(&seg, 100, 180, true).is_none(),
            "shorter than its records"
        );
        remove(&seg).unwrap();
        assert!(!path_of(&seg).exists());
        remove(&seg).unwrap();
    }
}
