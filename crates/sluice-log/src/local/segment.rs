//! On-disk formats of the local backend: the pchannel directory, segment files and the term file.
//!
//! # Directory
//!
//! ```text
//!  root/{pchannel}/
//!    terms/00000000000000000007  claim of term 7 (empty file; see `claims.rs`); flock'ed by
//!                                the handles of term 7 while they write
//!    00000000000000000000-00000000000000000007.log   segment with base lsn 0, created at term 7
//!    00000000000000000000-00000000000000000007.idx   its index sidecar (`sidecar.rs`), once final
//!    00000000000000004711-00000000000000000007.seal  seal written by a newer term (`seal.rs`)
//!    00000000000000004711-00000000000000000009.log   next segment: first record has lsn 4711
//!    TERM, LOCK                  written by versions before term claims: TERM is still read (a
//!                                term stored there still refuses lower opens), LOCK is not used
//!    00000000000000000000.log    a segment written by such a version (no term in the name)
//! ```
//!
//! Segment names are the base lsn as exactly 20 decimal digits, then (since term claims) `-` and
//! the creating term as 20 digits, so name order is (lsn, term) order. Any other file in the
//! directory is ignored.
//!
//! ## The chain of segments
//!
//! A new term never appends to a file an older term may still have open: its open seals the
//! newest segment and starts its own (see the module docs of `local`). Because the old segment
//! may have been empty, the new one can have the same base; and a writer of the old term, stopped
//! in the middle of rolling, may create a segment after the new term has started its own. So the
//! directory may hold dead segment files, and the log is the *chain* [`list_segments`] derives:
//! per base lsn only the file of the highest term, and along increasing bases only files whose
//! term does not decrease (a legacy name counts as term 0). A dead file never holds a record
//! anyone acknowledged or read (see `local`), and truncation removes it with the live ones.
//!
//! A segment followed by another in the chain holds exactly `next.base - base` records; a
//! segment with a seal file holds exactly `seal.next_lsn - base`. Bytes after those records are
//! ignored when the segment was sealed by a newer term (the seal file exists, or the next
//! segment's term is higher): they can only be writes of a fenced writer that arrived late.
//! Between segments of one term they are damage, as before.

//! # Segment file
//!
//! ```text
//!  offset  size  field
//!  0       4     magic 0x47534C53 ("SLSG"), little-endian
//!  4       1     version 1
//!  5       1     flags 0 (reserved; a reader rejects unknown bits)
//!  6       2     reserved, 0
//!  8       8     base lsn, little-endian u64 (must equal the number in the file name)
//!  16      8     term of the writer that created the segment, little-endian u64 (the term
//!                in the name is authoritative; this one is informational)
//!  24      4     CRC32C of bytes 0..24, little-endian u32
//!  28      4     reserved, 0
//!  32      ...   records, back to back, each one sluice-types record frame
//!                (magic, version, flags, body length, CRC32C, body; see `sluice_types::codec`)
//! ```
//!
//! Records carry no lsn: the record at position `i` of a segment has lsn `base + i`, and each
//! segment's base equals the previous segment's base plus its record count. The [`MessageId`]
//! of a record is `MessageId::from_parts(0, lsn)`.
//!
//! ## Zero runway
//!
//! The newest segment may end in a run of zero bytes after its last record: the writer keeps
//! zeros written (and synced with the batch that wrote them) ahead of the next record, so that
//! later batches overwrite blocks the filesystem has already allocated and an `fdatasync` only
//! flushes data, not metadata (like RocksDB's recycled logs). A frame never starts with a zero
//! byte (its magic), so a frame header of zeros, or the end of the file, means "no more records":
//! recovery treats an all-zero region after the last valid record of the newest segment as its
//! normal end (a read-write open truncates it), and readers wait there for more records. The
//! runway is at most `LocalConfig::runway` (and at most `segment_size`) past the last batch's
//! end. Before a segment is sealed, the writer cuts it to its last record and syncs it, and only
//! then creates the next segment, so a sealed segment never ends in zeros; one that does is
//! reported as corruption.
//!
//! # Term file
//!
//! ```text
//!  slot 0 at offset 0, slot 1 at offset 32; each slot:
//!  0   4  magic 0x4D544C53 ("SLTM"), little-endian
//!  4   1  version 1
//!  5   3  reserved, 0
//!  8   8  term, little-endian u64
//!  16  4  CRC32C of bytes 0..16, little-endian u32
//!  20  12 reserved, 0
//! ```
//!
//! The stored term is the largest term in a valid slot. Versions before term claims wrote it (in
//! place, then fsynced, into the slot that does *not* hold the current maximum, so a write torn
//! by a crash can only damage the slot being written). It is only read now: the term of a log is
//! the larger of this one and the highest claim (`claims.rs`).
//!
//! [`MessageId`]: sluice_types::MessageId

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sluice_types::Term;

use crate::LogError;

/// Bytes of the segment file header.
pub(super) const SEGMENT_HEADER_LEN: u64 = 32;
const SEGMENT_MAGIC: u32 = 0x4753_4C53;
const SEGMENT_VERSION: u8 = 1;
const SEGMENT_SUFFIX: &str = ".log";
const SEGMENT_DIGITS: usize = 20;

const TERM_MAGIC: u32 = 0x4D54_4C53;
const TERM_VERSION: u8 = 1;
const TERM_SLOT_LEN: usize = 32;

/// Name of the term file (written by versions before term claims; only read now).
pub(super) const TERM_FILE: &str = "TERM";

/// The file name of the segment whose first record has lsn `base`, created at `term` (`None`:
/// the name versions before term claims gave it).
pub(super) fn segment_name(base: u64, term: Option<u64>) -> String {
    match term {
        Some(t) => format!(
            "{base:0width$}-{t:0width$}{SEGMENT_SUFFIX}",
            width = SEGMENT_DIGITS
        ),
        None => format!("{base:0width$}{SEGMENT_SUFFIX}", width = SEGMENT_DIGITS),
    }
}

/// A 20-digit decimal number.
fn parse_digits(digits: &str) -> Option<u64> {
    if digits.len() != SEGMENT_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The base lsn and creating term of a segment file name, or `None` if the name is not a
/// segment's.
pub(super) fn parse_segment_name(name: &str) -> Option<(u64, Option<u64>)> {
    let stem = name.strip_suffix(SEGMENT_SUFFIX)?;
    match stem.split_once('-') {
        Some((base, term)) => Some((parse_digits(base)?, Some(parse_digits(term)?))),
        None => Some((parse_digits(stem)?, None)),
    }
}

/// One segment file found in a pchannel directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SegmentFile {
    /// Base lsn (from the name).
    pub base: u64,
    /// The term that created it (from the name; `None` for a legacy name).
    pub term: Option<u64>,
    /// Full path.
    pub path: PathBuf,
}

/// The chain of live segments of `dir`, oldest first (see "The chain of segments" above). A
/// missing directory has none.
pub(super) fn list_segments(dir: &Path) -> Result<Vec<SegmentFile>, LogError> {
    let all = list_segment_files(dir)?;
    let mut chain: Vec<SegmentFile> = Vec::with_capacity(all.len());
    for seg in all {
        // Sorted by (base, term): a later file of the same base has a higher term and wins.
        if chain.last().is_some_and(|l| l.base == seg.base) {
            chain.pop();
        }
        // A segment of a lower term than its predecessor is dead (a fenced writer's late roll).
        if chain.last().is_some_and(|l| l.term > seg.term) {
            continue;
        }
        chain.push(seg);
    }
    Ok(chain)
}

/// Every segment file of `dir`, live or dead, ordered by (base, term).
pub(super) fn list_segment_files(dir: &Path) -> Result<Vec<SegmentFile>, LogError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LogError::io(format!("list {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io(format!("list {}", dir.display()), e))?;
        let name = entry.file_name();
        let Some((base, term)) = name.to_str().and_then(parse_segment_name) else {
            continue;
        };
        out.push(SegmentFile {
            base,
            term,
            path: entry.path(),
        });
    }
    out.sort_by_key(|s| (s.base, s.term));
    Ok(out)
}

/// Encodes the header of a segment with base lsn `base`, created at `term`.
pub(super) fn encode_segment_header(base: u64, term: Term) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[0..4].copy_from_slice(&SEGMENT_MAGIC.to_le_bytes());
    h[4] = SEGMENT_VERSION;
    h[8..16].copy_from_slice(&base.to_le_bytes());
    h[16..24].copy_from_slice(&term.0.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Decodes a segment header; returns its base lsn or why it is not valid.
pub(super) fn decode_segment_header(buf: &[u8]) -> Result<u64, String> {
    let Some(h) = buf.get(..SEGMENT_HEADER_LEN as usize) else {
        return Err(format!(
            "segment header is {} bytes, needs {SEGMENT_HEADER_LEN}",
            buf.len()
        ));
    };
    let word = |at: usize| -> [u8; 4] {
        let mut w = [0u8; 4];
        w.copy_from_slice(&h[at..at + 4]);
        w
    };
    let magic = u32::from_le_bytes(word(0));
    if magic != SEGMENT_MAGIC {
        return Err(format!("bad segment magic {magic:#010x}"));
    }
    if h[4] != SEGMENT_VERSION {
        return Err(format!("unsupported segment version {}", h[4]));
    }
    if h[5] != 0 {
        return Err(format!("unknown segment flags {:#04x}", h[5]));
    }
    let stored = u32::from_le_bytes(word(24));
    let actual = crc32c::crc32c(&h[0..24]);
    if stored != actual {
        return Err(format!(
            "segment header checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"
        ));
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[8..16]);
    Ok(u64::from_le_bytes(b))
}

/// Reads and checks the header of an open segment file.
pub(super) fn read_segment_header(file: &File) -> Result<Result<u64, String>, io::Error> {
    let mut buf = [0u8; SEGMENT_HEADER_LEN as usize];
    let n = read_full_at(file, &mut buf, 0)?;
    Ok(decode_segment_header(&buf[..n]))
}

/// Reads into `buf` at `offset` until it is full or the file ends; returns the bytes read.
pub(super) fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Reads up to `len` bytes at `offset` into a new buffer, never past the end of the file, so a
/// length taken from damaged data cannot drive a large allocation.
pub(super) fn read_bounded(file: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    let file_len = file.metadata()?.len();
    let len = len.min(file_len.saturating_sub(offset));
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    let mut buf = vec![0u8; len];
    let n = read_full_at(file, &mut buf, offset)?;
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
fn encode_term_slot(term: Term) -> [u8; TERM_SLOT_LEN] {
    let mut s = [0u8; TERM_SLOT_LEN];
    s[0..4].copy_from_slice(&TERM_MAGIC.to_le_bytes());
    s[4] = TERM_VERSION;
    s[8..16].copy_from_slice(&term.0.to_le_bytes());
    let crc = crc32c::crc32c(&s[0..16]);
    s[16..20].copy_from_slice(&crc.to_le_bytes());
    s
}

fn decode_term_slot(s: &[u8]) -> Option<u64> {
    let s = s.get(..TERM_SLOT_LEN)?;
    let mut w = [0u8; 4];
    w.copy_from_slice(&s[0..4]);
    if u32::from_le_bytes(w) != TERM_MAGIC || s[4] != TERM_VERSION {
        return None;
    }
    w.copy_from_slice(&s[16..20]);
    if u32::from_le_bytes(w) != crc32c::crc32c(&s[0..16]) {
        return None;
    }
    let mut t = [0u8; 8];
    t.copy_from_slice(&s[8..16]);
    Some(u64::from_le_bytes(t))
}

/// What the term file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct StoredTerm {
    /// The highest valid term (0 when none was ever written).
    pub term: Term,
    /// The slot holding it (`None` when none is valid).
    pub slot: Option<usize>,
}

/// Reads the term file through an open descriptor (`pread`, so a descriptor kept open for the
/// handle's lifetime always sees the latest write).
pub(super) fn read_term(file: &File, path: &Path) -> Result<StoredTerm, LogError> {
    let mut buf = [0u8; 2 * TERM_SLOT_LEN];
    let n = read_full_at(file, &mut buf, 0)
        .map_err(|e| LogError::io(format!("read {}", path.display()), e))?;
    let buf = &buf[..n];
    let mut best: Option<(u64, usize)> = None;
    for slot in 0..2 {
        let Some(t) = buf.get(slot * TERM_SLOT_LEN..).and_then(decode_term_slot) else {
            continue;
        };
        if best.is_none_or(|(b, _)| t > b) {
            best = Some((t, slot));
        }
    }
    match best {
        Some((t, slot)) => Ok(StoredTerm {
            term: Term(t),
            slot: Some(slot),
        }),
        // Never written (or the very first write was torn before it was acknowledged).
        None if buf.iter().all(|&b| b == 0) || n < TERM_SLOT_LEN => Ok(StoredTerm {
            term: Term(0),
            slot: None,
        }),
        None => Err(LogError::Corrupted {
            location: format!("{}:0", path.display()),
            reason: "no valid term slot".into(),
        }),
    }
}

/// Writes `term` into the slot not holding the current maximum and syncs the file (as versions
/// before term claims did; tests use it to build such logs).
#[cfg(test)]
pub(super) fn write_term(
    file: &File,
    path: &Path,
    current: StoredTerm,
    term: Term,
) -> Result<(), LogError> {
    let slot = match current.slot {
        Some(0) => 1,
        _ => 0,
    };
    let buf = encode_term_slot(term);
    file.write_all_at(&buf, (slot * TERM_SLOT_LEN) as u64)
        .and_then(|()| {
            // Keep the file two slots long, so that every later read is one `pread`.
            if file.metadata()?.len() < (2 * TERM_SLOT_LEN) as u64 {
                file.set_len((2 * TERM_SLOT_LEN) as u64)?;
            }
            file.sync_data()
        })
        .map_err(|e| LogError::io(format!("write {}", path.display()), e))
}

/// Syncs a directory so that created, renamed and removed entries are durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io(format!("sync directory {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_are_fixed_width_and_round_trip() {
        assert_eq!(segment_name(0, None), "00000000000000000000.log");
        assert_eq!(segment_name(u64::MAX, None), "18446744073709551615.log");
        assert_eq!(
            segment_name(4711, Some(3)),
            "00000000000000004711-00000000000000000003.log"
        );
        for v in [0, 1, 4711, u64::MAX] {
            for t in [None, Some(0), Some(9), Some(u64::MAX)] {
                assert_eq!(parse_segment_name(&segment_name(v, t)), Some((v, t)));
            }
        }
        for bad in [
            "0.log",
            "0000000000000000000a.log",
            "00000000000000000000.tmp",
            "99999999999999999999.log",
            "+0000000000000000000.log",
            "00000000000000000000-1.log",
            "00000000000000000000-00000000000000000001.seal",
            "00000000000000000000--0000000000000000001.log",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_chain_keeps_the_highest_term_per_base_and_never_goes_back_in_term() {
        let dir = tempfile::tempdir().unwrap();
        for (base, term) in [
            (0, None),
            (10, None),
            (10, Some(3)),
            (25, Some(3)),
            (25, Some(2)),
            (25, Some(5)),
            (40, Some(4)),
            (40, Some(5)),
            (60, Some(4)),
        ] {
            std::fs::write(dir.path().join(segment_name(base, term)), b"").unwrap();
        }
        std::fs::write(dir.path().join("00000000000000000060-x.log"), b"").unwrap();
        let chain: Vec<_> = list_segments(dir.path())
            .unwrap()
            .into_iter()
            .map(|s| (s.base, s.term))
            .collect();
        assert_eq!(
            chain,
            vec![(0, None), (10, Some(3)), (25, Some(5)), (40, Some(5))]
        );
        assert_eq!(list_segment_files(dir.path()).unwrap().len(), 9);
    }

    #[test]
    fn segment_header_round_trips_and_rejects_damage() {
        let h = encode_segment_header(42, Term(7));
        assert_eq!(decode_segment_header(&h), Ok(42));
        assert!(decode_segment_header(&h[..10]).is_err());
        for i in 0..h.len() {
            let mut bad = h;
            bad[i] ^= 0x10;
            if (28..32).contains(&i) || (6..8).contains(&i) {
                continue; // reserved bytes outside the checksum's reach are not checked
            }
            assert!(decode_segment_header(&bad).is_err(), "flip at {i}");
        }
    }

    #[test]
    fn term_file_survives_a_torn_slot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TERM_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        let t0 = read_term(&file, &path).unwrap();
        assert_eq!(t0.term, Term(0));
        write_term(&file, &path, t0, Term(3)).unwrap();
        let t1 = read_term(&file, &path).unwrap();
        assert_eq!(t1.term, Term(3));
        write_term(&file, &path, t1, Term(5)).unwrap();
        let t2 = read_term(&file, &path).unwrap();
        assert_eq!(t2.term, Term(5));
        // Tear the slot holding 5: 3 survives in the other one.
        let slot = t2.slot.unwrap();
        file.write_all_at(&[0xff; 7], (slot * TERM_SLOT_LEN + 9) as u64)
            .unwrap();
        assert_eq!(read_term(&file, &path).unwrap().term, Term(3));
        // Garbage everywhere is corruption, not term 0.
        file.write_all_at(&[0xab; 64], 0).unwrap();
        assert!(matches!(
            read_term(&file, &path),
            Err(LogError::Corrupted { .. })
        ));
    }
}
