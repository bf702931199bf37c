//! Seal files: where a newer term ended a segment an older term may still be writing to.
//!
//! `{segment stem}.seal` next to the segment. Layout (little endian): magic `u32` ("SLSE"),
//! version `u8`, 3 bytes zero, base lsn `u64`, next lsn `u64` (the segment holds the records
//! `base..next`), end offset `u64` (where the last of them ends), CRC-32C `u32` of everything
//! before it.
//!
//! The first seal wins: a seal is written to a unique temporary name, synced, and then
//! hard-linked to its final name, which fails if a seal already exists. So two new terms opening
//! at once agree on one end for the segment even when a stopped old writer appended between
//! their scans; the loser adopts the winner's seal. A seal is never rewritten or removed while
//! its segment exists.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::recovery::corrupted;
use super::segment::sync_dir;
use crate::LogError;

const MAGIC: u32 = 0x4553_4C53; // "SLSE"
const VERSION: u8 = 1;
const LEN: usize = 4 + 1 + 3 + 8 * 3 + 4;

/// Where a segment ends for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Seal {
    /// The lsn after the segment's last record.
    pub next_lsn: u64,
    /// The offset after the segment's last record.
    pub end_offset: u64,
}

/// The seal path of the segment at `segment`.
pub(super) fn path_of(segment: &Path) -> PathBuf {
    segment.with_extension("seal")
}

fn encode(base: u64, seal: Seal) -> Vec<u8> {
    let mut b = Vec::with_capacity(LEN);
    b.extend_from_slice(&MAGIC.to_le_bytes());
    b.push(VERSION);
    b.extend_from_slice(&[0u8; 3]);
    for v in [base, seal.next_lsn, seal.end_offset] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Decodes a seal of the segment with base `base`; why not when it is not one.
fn decode(b: &[u8], base: u64) -> Result<Seal, String> {
    if b.len() != LEN {
        return Err(format!("seal is {} bytes, not {LEN}", b.len()));
    }
    let (body, crc) = b.split_at(LEN - 4);
    let crc = u32::from_le_bytes(crc.try_into().map_err(|_| "short seal".to_string())?);
    if crc32c::crc32c(body) != crc {
        return Err("seal checksum mismatch".into());
    }
    let magic = u32::from_le_bytes(
        body[0..4]
            .try_into()
            .map_err(|_| "short seal".to_string())?,
    );
    if magic != MAGIC || body[4] != VERSION {
        return Err(format!(
            "bad seal magic {magic:#010x} or version {}",
            body[4]
        ));
    }
    let (Some(b0), Some(next_lsn), Some(end_offset)) =
        (u64_at(body, 8), u64_at(body, 16), u64_at(body, 24))
    else {
        return Err("short seal".into());
    };
    if b0 != base || next_lsn < base {
        return Err(format!(
            "seal of base {b0} ending at lsn {next_lsn} for segment {base}"
        ));
    }
    Ok(Seal {
        next_lsn,
        end_offset,
    })
}

/// The seal of the segment at `segment` (base `base`), if it was sealed. A seal is only ever
/// linked into place complete, so one that does not decode is damage.
pub(super) fn read(segment: &Path, base: u64) -> Result<Option<Seal>, LogError> {
    let path = path_of(segment);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LogError::io(format!("read {}", path.display()), e)),
    };
    decode(&bytes, base)
        .map(Some)
        .map_err(|reason| corrupted(&path, 0, reason))
}

/// Seals the segment at `segment` (base `base`) with `seal` unless it is sealed already;
/// returns the seal that holds (ours or the one that was first). Durable when it returns.
pub(super) fn seal_first(segment: &Path, base: u64, seal: Seal) -> Result<Seal, LogError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let target = path_of(segment);
    let tmp = segment.with_extension(format!(
        "seal.tmp-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let io = |what: &str, p: &Path, e: std::io::Error| {
        LogError::io(format!("{what} {}", p.display()), e)
    };
    let write = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&encode(base, seal))?;
        f.sync_data()
    })();
    if let Err(e) = write {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("write", &tmp, e));
    }
    let linked = std::fs::hard_link(&tmp, &target);
    let _ = std::fs::remove_file(&tmp);
    let dir = segment.parent().unwrap_or(Path::new("."));
    match linked {
        Ok(()) => {
            sync_dir(dir)?;
            Ok(seal)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Made durable here too: this open relies on it as much as the winner's does.
            sync_dir(dir)?;
            read(segment, base)?.ok_or_else(|| {
                LogError::Unavailable(format!("the seal {} vanished", target.display()))
            })
        }
        Err(e) => Err(io("link", &target, e)),
    }
}

/// Removes the seal of a removed segment.
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

    #[test]
    fn a_seal_round_trips_and_any_flipped_byte_is_refused() {
        let seal = Seal {
            next_lsn: 140,
            end_offset: 9000,
        };
        let b = encode(100, seal);
        assert_eq!(decode(&b, 100), Ok(seal));
        assert!(decode(&b, 101).is_err(), "another segment's seal");
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x20;
            assert!(decode(&bad, 100).is_err(), "byte {i} flipped");
        }
        for cut in 0..b.len() {
            assert!(decode(&b[..cut], 100).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn the_first_seal_wins() {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir
            .path()
            .join("00000000000000000100-00000000000000000002.log");
        assert_eq!(read(&seg, 100).unwrap(), None);
        let first = Seal {
            next_lsn: 120,
            end_offset: 700,
        };
        let second = Seal {
            next_lsn: 125,
            end_offset: 900,
        };
        assert_eq!(seal_first(&seg, 100, first).unwrap(), first);
        assert_eq!(seal_first(&seg, 100, second).unwrap(), first);
        assert_eq!(read(&seg, 100).unwrap(), Some(first));
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        std::fs::write(path_of(&seg), b"not a seal").unwrap();
        assert!(matches!(read(&seg, 100), Err(LogError::Corrupted { .. })));
        remove(&seg).unwrap();
        remove(&seg).unwrap();
        assert_eq!(read(&seg, 100).unwrap(), None);
    }
}
