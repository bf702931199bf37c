//! Scanning segment files: the open-time recovery and the tail resync of a writer.
//!
//! Rules (raft-engine's "tolerate tail corruption" mode):
//! * In the newest segment, an invalid or incomplete record with no valid record anywhere after
//!   it is a torn tail (a write cut short by a crash). A read-write scan truncates it; a read-only
//!   scan stops before it.
//! * Anything else that does not check out (a bad record in a sealed segment, a bad record with a
//!   valid one after it, a header that does not match its name, a gap between segments) is
//!   [`LogError::Corrupted`] with `file:offset`.
//!
//! Every length read from a file is bounded by the file's size before it sizes a buffer.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use sluice_types::Term;
use sluice_types::codec::{
    self, FRAME_HEADER_LEN, FrameHeader, MAGIC, VERSION, decode_frame, decode_frame_header,
};
use sluice_types::error::CodecError;

use super::segment::{
    SEGMENT_HEADER_LEN, SegmentFile, encode_segment_header, read_bounded, read_segment_header,
};
use crate::LogError;

/// Bytes read per scan step.
const SCAN_CHUNK: u64 = 1 << 20;

/// What the bytes at some offset hold.
pub(super) enum FrameAt<'a> {
    /// A frame whose checksum matches: its body and total length.
    Valid { body: &'a [u8], len: usize },
    /// The buffer ends before the frame does; `needed` bytes from this offset would hold it.
    Incomplete { needed: usize },
    /// Not a valid frame.
    Invalid(String),
}

/// Classifies the bytes at the start of `buf`.
pub(super) fn frame_at(buf: &[u8]) -> FrameAt<'_> {
    let header: FrameHeader = match decode_frame_header(buf) {
        Ok(h) => h,
        Err(CodecError::Truncated { .. }) => {
            return FrameAt::Incomplete {
                needed: FRAME_HEADER_LEN,
            };
        }
        Err(e) => return FrameAt::Invalid(e.to_string()),
    };
    if buf.len() < header.frame_len() {
        return FrameAt::Incomplete {
            needed: header.frame_len(),
        };
    }
    match decode_frame(buf) {
        Ok((body, len)) => FrameAt::Valid { body, len },
        Err(e) => FrameAt::Invalid(e.to_string()),
    }
}

pub(super) fn corrupted(path: &Path, offset: u64, reason: impl Into<String>) -> LogError {
    LogError::Corrupted {
        location: format!("{}:{offset}", path.display()),
        reason: reason.into(),
    }
}

fn io_err(what: &str, path: &Path, e: io::Error) -> LogError {
    LogError::io(format!("{what} {}", path.display()), e)
}

/// The result of scanning the records of one segment from some start position.
pub(super) struct RecordScan {
    /// Offset after the last valid record.
    pub end_offset: u64,
    /// Lsn the next record would get.
    pub next_lsn: u64,
    /// Sparse index entries (lsn, offset) for the scanned range.
    pub index: Vec<(u64, u64)>,
    /// The first invalid or incomplete record, if the scan stopped before the end of the file.
    pub bad: Option<(u64, String)>,
}

/// Scans records from `(offset, lsn)` up to the end of the file, the first bad record or the
/// record with lsn `limit` (which is not scanned). `last_indexed` is the offset of the last index
/// entry before `offset` (or the header end).
pub(super) fn scan_records(
    file: &File,
    path: &Path,
    start: (u64, u64),
    last_indexed: u64,
    index_interval: u64,
    limit: Option<u64>,
) -> Result<RecordScan, LogError> {
    let (mut offset, mut lsn) = start;
    let mut last_indexed = last_indexed;
    let mut index = Vec::new();
    let file_len = file.metadata().map_err(|e| io_err("stat", path, e))?.len();
    let mut want = SCAN_CHUNK;
    while offset < file_len && limit.is_none_or(|l| lsn < l) {
        let requested = want;
        want = SCAN_CHUNK;
        let buf = read_bounded(file, offset, requested).map_err(|e| io_err("read", path, e))?;
        if buf.is_empty() {
            break;
        }
        let mut pos = 0usize;
        let mut stop = None;
        while pos < buf.len() && limit.is_none_or(|l| lsn < l) {
            match frame_at(&buf[pos..]) {
                FrameAt::Valid { len, .. } => {
                    if offset >= last_indexed.saturating_add(index_interval) {
                        index.push((lsn, offset));
                        last_indexed = offset;
                    }
                    pos += len;
                    offset += len as u64;
                    lsn += 1;
                }
                FrameAt::Incomplete { needed } => {
                    let needed = needed as u64;
                    if offset + needed > file_len || (pos == 0 && requested >= needed) {
                        // The file ends inside this frame (or shrank while being read).
                        stop = Some((offset, "incomplete record at the end of the file".into()));
                    } else {
                        // The read cut the frame; read again from its start.
                        want = SCAN_CHUNK.max(needed);
                    }
                    break;
                }
                FrameAt::Invalid(reason) => {
                    stop = Some((offset, reason));
                    break;
                }
            }
        }
        if let Some(bad) = stop {
            return Ok(RecordScan {
                end_offset: offset,
                next_lsn: lsn,
                index,
                bad: Some(bad),
            });
        }
    }
    Ok(RecordScan {
        end_offset: offset,
        next_lsn: lsn,
        index,
        bad: None,
    })
}

/// Whether every byte from `from` to the end of the file is zero (a writer's runway, see
/// `segment.rs`). Reads in bounded chunks.
pub(super) fn zeros_to_end(file: &File, from: u64) -> io::Result<bool> {
    const CHUNK: u64 = 1 << 20;
    let file_len = file.metadata()?.len();
    let mut at = from;
    while at < file_len {
        let buf = read_bounded(file, at, CHUNK)?;
        if buf.is_empty() {
            break;
        }
        if buf.iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += buf.len() as u64;
    }
    Ok(true)
}

/// The first offset at or after `from` where a complete, checksum-valid frame starts.
pub(super) fn find_valid_frame(file: &File, from: u64) -> io::Result<Option<u64>> {
    const WINDOW: u64 = 1 << 20;
    let file_len = file.metadata()?.len();
    let pattern = {
        let m = MAGIC.to_le_bytes();
        [m[0], m[1], VERSION, 0]
    };
    let mut start = from;
    while start + (FRAME_HEADER_LEN as u64) <= file_len {
        let win = read_bounded(file, start, WINDOW)?;
        if win.len() < pattern.len() {
            break;
        }
        for (i, w) in win.windows(pattern.len()).enumerate() {
            if w != pattern {
                continue;
            }
            let at = start + i as u64;
            let Ok(h) = decode_frame_header(&win[i..]).or_else(|_| {
                let hdr = read_bounded(file, at, FRAME_HEADER_LEN as u64).unwrap_or_default();
                decode_frame_header(&hdr)
            }) else {
                continue;
            };
            if at + h.frame_len() as u64 > file_len {
                continue;
            }
            let valid = match win.get(i..i + h.frame_len()) {
                Some(frame) => decode_frame(frame).is_ok(),
                None => decode_frame(&read_bounded(file, at, h.frame_len() as u64)?).is_ok(),
            };
            if valid {
                return Ok(Some(at));
            }
        }
        // Re-examine the last bytes of the window, where a pattern may straddle the edge.
        start += (win.len() - (pattern.len() - 1)) as u64;
    }
    Ok(None)
}

/// One segment after recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ScannedSegment {
    /// Base lsn.
    pub base: u64,
    /// Path.
    pub path: PathBuf,
    /// Offset after the last valid record.
    pub end_offset: u64,
    /// Lsn the next record would get.
    pub next_lsn: u64,
    /// Sparse index entries for the scanned range.
    pub index: Vec<(u64, u64)>,
}

/// How a recovery may touch the files.
#[derive(Clone, Copy, Debug)]
pub(super) enum RecoveryMode {
    /// The open (or resync) of a writer at this term. Truncates a torn tail of a newest segment
    /// of this term and syncs it; seals a newest segment of an older term where its records end
    /// (first seal wins, see `seal.rs`); cuts bytes after the records of a segment a newer term
    /// sealed. The term goes into a rewritten header.
    ReadWrite(Term),
    /// Change nothing; stop before a torn tail.
    ReadOnly,
}

/// Scans `segments` (the chain, oldest first; the last one is the newest of the log), checking
/// contiguity. `start` optionally gives a known-good `(offset, lsn, last_indexed)` in the first
/// segment to scan from instead of its header.
///
/// A segment followed by another, or sealed, must hold exactly the records up to the lsn that
/// says (see "The chain of segments" in `segment.rs`).
pub(super) fn recover(
    segments: &[SegmentFile],
    mode: RecoveryMode,
    index_interval: u64,
    start: Option<(u64, u64, u64)>,
) -> Result<Vec<ScannedSegment>, LogError> {
    let mut out: Vec<ScannedSegment> = Vec::with_capacity(segments.len());
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let next = segments.get(i + 1);
        let rw_term = match mode {
            RecoveryMode::ReadWrite(t) => Some(Some(t.0)),
            RecoveryMode::ReadOnly => None,
        };
        let seal = super::seal::read(&seg.path, seg.base)?;
        // The lsn this segment's records end at, when that is decided.
        let limit = seal.map(|s| s.next_lsn).or(next.map(|n| n.base));
        // Sealed by a newer term: bytes after the records are a fenced writer's late writes.
        let tolerant = seal.is_some() || next.is_some_and(|n| n.term > seg.term);
        let open_end = last && seal.is_none();
        // The newest segment of this writer's own term: truncate a torn tail, as always.
        let own = open_end && rw_term.is_some_and(|t| seg.term == t);
        // The newest segment of an older term: its writer may still be running (or stopped with
        // the file open), so it is sealed, never appended to.
        let seal_it = open_end && rw_term.is_some_and(|t| seg.term < t);
        let first_scan = i > 0 || start.is_none();
        // A final segment with an intact sidecar that agrees with the files is not scanned.
        if let Some(limit) = limit
            && first_scan
            && out.last().is_none_or(|p| p.next_lsn == seg.base)
            && let Some(known) = super::sidecar::read(&seg.path, seg.base, limit, tolerant)
        {
            if tolerant && rw_term.is_some() {
                trim_late_bytes(&seg.path, known.end_offset);
            }
            out.push(known);
            continue;
        }
        let rw = rw_term.is_some() && (own || seal_it || tolerant);
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(rw)
            .open(&seg.path)
        {
            Ok(f) => f,
            // A read-only scan can race a truncation that removed the oldest segments.
            Err(e) if e.kind() == io::ErrorKind::NotFound && out.is_empty() && !last => continue,
            Err(e) => return Err(io_err("open", &seg.path, e)),
        };
        if let Some(prev) = out.last()
            && prev.next_lsn != seg.base
        {
            return Err(corrupted(
                &seg.path,
                0,
                format!(
                    "segment starts at lsn {} but the previous segment ends at lsn {}",
                    seg.base, prev.next_lsn
                ),
            ));
        }
        let header = read_segment_header(&file).map_err(|e| io_err("read", &seg.path, e))?;
        let empty = RecordScan {
            end_offset: SEGMENT_HEADER_LEN,
            next_lsn: seg.base,
            index: Vec::new(),
            bad: None,
        };
        let (scan, zeros, follows) = match header {
            Ok(base) if base == seg.base => scan_segment(
                &file,
                seg,
                i,
                start,
                index_interval,
                limit,
                last,
                mode,
                seal_it,
            )?,
            Ok(base) => {
                return Err(corrupted(
                    &seg.path,
                    0,
                    format!("header base lsn {base} does not match the file name"),
                ));
            }
            // Sealed with no record (its creator was stopped while creating it).
            Err(_) if limit == Some(seg.base) => (empty, false, None),
            Err(reason) => {
                // A crash while creating the newest segment leaves a short or torn header and no
                // record; anything else is damage.
                if !last {
                    return Err(corrupted(&seg.path, 0, reason));
                }
                if let Some(at) =
                    find_valid_frame(&file, 0).map_err(|e| io_err("read", &seg.path, e))?
                {
                    return Err(corrupted(
                        &seg.path,
                        0,
                        format!("{reason}, but a valid record follows at offset {at}"),
                    ));
                }
                if own && let RecoveryMode::ReadWrite(term) = mode {
                    tracing::warn!(path = %seg.path.display(), %reason, "rewriting the torn header of the newest segment");
                    rewrite_header(&file, &seg.path, seg.base, term)?;
                }
                (empty, false, None)
            }
        };
        let file_len = file
            .metadata()
            .map_err(|e| io_err("stat", &seg.path, e))?
            .len();
        match limit {
            Some(limit) if scan.next_lsn < limit => {
                // Fewer records than the chain says.
                match &scan.bad {
                    Some((offset, _)) if zeros && !tolerant => {
                        // Rolling cuts a segment to its last record (and syncs it) before the
                        // next segment exists, so a sealed segment cannot end in a runway.
                        return Err(corrupted(
                            &seg.path,
                            *offset,
                            "a sealed segment ends in zeros after its last record",
                        ));
                    }
                    Some((offset, reason)) => {
                        return Err(corrupted(
                            &seg.path,
                            *offset,
                            format!("{reason} (in a sealed segment)"),
                        ));
                    }
                    // The next segment's contiguity check reports it.
                    None if !last => {}
                    None => {
                        return Err(corrupted(
                            &seg.path,
                            scan.end_offset,
                            format!(
                                "the segment ends at lsn {}, before its seal at lsn {limit}",
                                scan.next_lsn
                            ),
                        ));
                    }
                }
            }
            Some(_) if scan.end_offset < file_len => {
                if tolerant {
                    // Late writes of a fenced writer: cut them off (harmless if more come).
                    if rw {
                        file.set_len(scan.end_offset)
                            .map_err(|e| io_err("truncate", &seg.path, e))?;
                    }
                } else if zeros_to_end(&file, scan.end_offset)
                    .map_err(|e| io_err("read", &seg.path, e))?
                {
                    return Err(corrupted(
                        &seg.path,
                        scan.end_offset,
                        "a sealed segment ends in zeros after its last record",
                    ));
                } else {
                    return Err(corrupted(
                        &seg.path,
                        scan.end_offset,
                        "bytes after the last record of a sealed segment",
                    ));
                }
            }
            Some(_) => {}
            None => {
                if let Some((offset, reason)) = &scan.bad {
                    if let Some(at) = follows {
                        return Err(corrupted(
                            &seg.path,
                            *offset,
                            format!("{reason}, but a valid record follows at offset {at}"),
                        ));
                    }
                    if own {
                        if !zeros {
                            tracing::warn!(path = %seg.path.display(), offset, %reason, "truncating the torn tail of the newest segment");
                        }
                        // A torn tail, or the normal end: the writer's zero runway.
                        file.set_len(*offset)
                            .map_err(|e| io_err("truncate", &seg.path, e))?;
                    }
                }
            }
        }
        if own || seal_it {
            // Records a killed (or stopped) writer left in the page cache become durable before
            // anyone relies on them.
            file.sync_data().map_err(|e| io_err("sync", &seg.path, e))?;
        }
        let mut scanned = ScannedSegment {
            base: seg.base,
            path: seg.path.clone(),
            end_offset: scan.end_offset,
            next_lsn: scan.next_lsn,
            index: scan.index,
        };
        let mut final_lsn = limit;
        if seal_it {
            let ours = super::seal::Seal {
                next_lsn: scanned.next_lsn,
                end_offset: scanned.end_offset,
            };
            let held = super::seal::seal_first(&seg.path, seg.base, ours)?;
            if held != ours {
                // Another new term sealed it first, maybe after more records arrived: follow
                // its seal.
                out.extend(recover(
                    std::slice::from_ref(seg),
                    mode,
                    index_interval,
                    None,
                )?);
                continue;
            }
            tracing::info!(path = %seg.path.display(), next_lsn = held.next_lsn, "sealed the newest segment of an older term");
            if file_len > held.end_offset {
                file.set_len(held.end_offset)
                    .map_err(|e| io_err("truncate", &seg.path, e))?;
            }
            final_lsn = Some(held.next_lsn);
        }
        scanned
            .index
            .retain(|&(lsn, _)| final_lsn.is_none_or(|l| lsn < l));
        // A final segment scanned in full: record it so the next open need not scan it.
        if first_scan
            && matches!(mode, RecoveryMode::ReadWrite(_))
            && final_lsn == Some(scanned.next_lsn)
        {
            super::sidecar::write(&scanned);
        }
        out.push(scanned);
    }
    Ok(out)
}

/// Scans the records of one segment whose header checked out. Returns the scan and, for a bad
/// record, whether only zeros follow it, else where a valid record follows.
#[allow(clippy::too_many_arguments)]
fn scan_segment(
    file: &File,
    seg: &SegmentFile,
    i: usize,
    start: Option<(u64, u64, u64)>,
    index_interval: u64,
    limit: Option<u64>,
    last: bool,
    mode: RecoveryMode,
    seal_it: bool,
) -> Result<(RecordScan, bool, Option<u64>), LogError> {
    let (from, last_indexed) = match (i, start) {
        (0, Some((offset, lsn, last_indexed))) => ((offset, lsn), last_indexed),
        _ => ((SEGMENT_HEADER_LEN, seg.base), SEGMENT_HEADER_LEN),
    };
    // A scan of a newest segment someone else may be writing (read-only, or one this open seals)
    // can race that writer: a frame may be seen half copied, or zeros where records land a
    // moment later, so what looks like "a bad record with a valid one after it" may just be a
    // write in progress. Look again (briefly) before calling that corruption.
    let racy = last && (matches!(mode, RecoveryMode::ReadOnly) || seal_it);
    let mut attempts = 0;
    loop {
        let scan = scan_records(file, &seg.path, from, last_indexed, index_interval, limit)?;
        let Some((offset, _)) = &scan.bad else {
            return Ok((scan, false, None));
        };
        let offset = *offset;
        let zeros = zeros_to_end(file, offset).map_err(|e| io_err("read", &seg.path, e))?;
        // Only an open end is searched (a final segment is damaged either way).
        let follows = if zeros || limit.is_some() {
            None
        } else {
            find_valid_frame(file, offset + 1).map_err(|e| io_err("read", &seg.path, e))?
        };
        if follows.is_none() || !racy || attempts >= 8 {
            return Ok((scan, zeros, follows));
        }
        attempts += 1;
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Cuts a fenced writer's late bytes after the records of a sealed segment (best effort: they
/// are ignored anyway).
fn trim_late_bytes(path: &Path, end: u64) {
    let r = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| {
            if f.metadata()?.len() > end {
                f.set_len(end)?;
            }
            Ok(())
        });
    if let Err(e) = r {
        tracing::debug!(error = %e, path = %path.display(), "could not cut late bytes after a sealed segment");
    }
}

fn rewrite_header(file: &File, path: &Path, base: u64, term: Term) -> Result<(), LogError> {
    use std::os::unix::fs::FileExt;
    file.set_len(0)
        .and_then(|()| file.write_all_at(&encode_segment_header(base, term), 0))
        .and_then(|()| file.sync_data())
        .map_err(|e| io_err("rewrite header of", path, e))
}

/// Decodes a record body found at `offset` of `path`.
pub(super) fn decode_body(
    body: &[u8],
    path: &Path,
    offset: u64,
) -> Result<sluice_types::Message, LogError> {
    codec::decode_message_body(body)
        .map_err(|e| corrupted(path, offset, format!("record body does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    use proptest::prelude::*;
    use sluice_types::MutableMessage;
    use sluice_types::codec::encode_message;
    use sluice_types::message::InsertHeader;

    use super::super::segment::{list_segments, segment_name};
    use super::*;

    fn record(i: u64) -> Vec<u8> {
        let msg = MutableMessage::builder(InsertHeader::default())
            .payload(format!("record-{i}-{}", "x".repeat((i % 7) as usize)).into_bytes())
            .build()
            .unwrap()
            .into_message();
        let mut out = Vec::new();
        encode_message(&msg, &mut out).unwrap();
        out
    }

    /// Writes a segment of term 2 with `count` records starting at lsn `base`; returns its path.
    fn write_segment(dir: &Path, base: u64, count: u64) -> PathBuf {
        write_segment_of(dir, base, Some(2), count)
    }

    /// Writes a segment created at `term` (`None`: a legacy name) with `count` records.
    fn write_segment_of(dir: &Path, base: u64, term: Option<u64>, count: u64) -> PathBuf {
        let path = dir.join(segment_name(base, term));
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&encode_segment_header(base, Term(term.unwrap_or(1))))
            .unwrap();
        for i in 0..count {
            f.write_all(&record(base + i)).unwrap();
        }
        path
    }

    fn append_bytes(path: &Path, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(bytes).unwrap();
    }

    fn rw() -> RecoveryMode {
        RecoveryMode::ReadWrite(Term(2))
    }

    #[test]
    fn clean_segments_recover_with_contiguous_lsns() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 0, 10);
        write_segment(dir.path(), 10, 5);
        let segs = list_segments(dir.path()).unwrap();
        let out = recover(&segs, RecoveryMode::ReadOnly, 64, None).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].next_lsn, 10);
        assert_eq!(out[1].next_lsn, 15);
        assert!(!out[0].index.is_empty(), "a small interval indexes records");
    }

    #[test]
    fn gap_between_segments_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 0, 10);
        write_segment(dir.path(), 11, 5);
        let segs = list_segments(dir.path()).unwrap();
        let err = recover(&segs, rw(), 64, None).unwrap_err();
        assert!(matches!(err, LogError::Corrupted { .. }), "{err}");
    }

    #[test]
    fn torn_tails_are_truncated_in_read_write_mode_only() {
        let full = record(99);
        let mut bad_crc = full.clone();
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 1;
        let tails: Vec<(&str, Vec<u8>)> = vec![
            ("garbage", vec![0xde, 0xad, 0xbe, 0xef, 1, 2, 3]),
            ("half record", full[..full.len() / 2].to_vec()),
            ("half header", full[..5].to_vec()),
            ("bad crc", bad_crc),
            ("zeros", vec![0; 4096]),
        ];
        for (name, tail) in tails {
            let dir = tempfile::tempdir().unwrap();
            write_segment(dir.path(), 0, 3);
            let path = write_segment(dir.path(), 3, 4);
            let good_len = std::fs::metadata(&path).unwrap().len();
            append_bytes(&path, &tail);
            let segs = list_segments(dir.path()).unwrap();

            let ro = recover(&segs, RecoveryMode::ReadOnly, 64, None).unwrap();
            assert_eq!(ro[1].next_lsn, 7, "{name}");
            assert_eq!(ro[1].end_offset, good_len, "{name}");
            assert_eq!(
                std::fs::metadata(&path).unwrap().len(),
                good_len + tail.len() as u64,
                "{name}: read-only recovery must not touch the file"
            );

            let out = recover(&segs, rw(), 64, None).unwrap();
            assert_eq!(out[1].next_lsn, 7, "{name}");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len, "{name}");
        }
    }

    #[test]
    fn bad_record_followed_by_valid_ones_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_segment(dir.path(), 0, 3);
        let bad_at = std::fs::metadata(&path).unwrap().len();
        append_bytes(&path, b"\x00\x01garbage");
        append_bytes(&path, &record(3));
        let segs = list_segments(dir.path()).unwrap();
        for mode in [rw(), RecoveryMode::ReadOnly] {
            let err = recover(&segs, mode, 64, None).unwrap_err();
            let LogError::Corrupted { location, .. } = &err else {
                panic!("{err}");
            };
            assert_eq!(location, &format!("{}:{bad_at}", path.display()));
        }
        assert!(
            std::fs::metadata(&path).unwrap().len() > bad_at,
            "corruption must not be truncated away"
        );
    }

    #[test]
    fn damage_in_a_sealed_segment_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let sealed = write_segment(dir.path(), 0, 5);
        write_segment(dir.path(), 5, 2);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&sealed)
            .unwrap();
        f.write_all_at(&[0xff], SEGMENT_HEADER_LEN + 20).unwrap();
        let segs = list_segments(dir.path()).unwrap();
        for mode in [rw(), RecoveryMode::ReadOnly] {
            let err = recover(&segs, mode, 64, None).unwrap_err();
            assert!(matches!(err, LogError::Corrupted { .. }), "{err}");
        }
        // A torn tail in a sealed segment is damage too.
        let dir = tempfile::tempdir().unwrap();
        let sealed = write_segment(dir.path(), 0, 5);
        write_segment(dir.path(), 5, 2);
        append_bytes(&sealed, &record(5)[..9]);
        let segs = list_segments(dir.path()).unwrap();
        assert!(matches!(
            recover(&segs, rw(), 64, None),
            Err(LogError::Corrupted { .. })
        ));
    }

    #[test]
    fn torn_header_of_the_newest_segment_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 0, 5);
        let newest = dir.path().join(segment_name(5, Some(2)));
        std::fs::write(&newest, &encode_segment_header(5, Term(1))[..11]).unwrap();
        let segs = list_segments(dir.path()).unwrap();
        let out = recover(&segs, rw(), 64, None).unwrap();
        assert_eq!(out[1].next_lsn, 5);
        let f = std::fs::File::open(&newest).unwrap();
        assert_eq!(read_segment_header(&f).unwrap(), Ok(5));
        // A damaged header of a sealed segment is corruption.
        let dir = tempfile::tempdir().unwrap();
        let sealed = write_segment(dir.path(), 0, 5);
        write_segment(dir.path(), 5, 1);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&sealed)
            .unwrap();
        f.write_all_at(&[0], 0).unwrap();
        let segs = list_segments(dir.path()).unwrap();
        assert!(matches!(
            recover(&segs, rw(), 64, None),
            Err(LogError::Corrupted { .. })
        ));
    }

    #[test]
    fn zero_runway_ends_the_newest_segment_and_damages_a_sealed_one() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 0, 4);
        let path = write_segment(dir.path(), 4, 6);
        let data_len = std::fs::metadata(&path).unwrap().len();
        // A runway longer than a scan chunk.
        append_bytes(&path, &vec![0; (3 << 20) + 5]);
        let segs = list_segments(dir.path()).unwrap();
        let ro = recover(&segs, RecoveryMode::ReadOnly, 64, None).unwrap();
        assert_eq!(ro[1].next_lsn, 10);
        assert_eq!(ro[1].end_offset, data_len);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            data_len + (3 << 20) + 5
        );
        let out = recover(&segs, rw(), 64, None).unwrap();
        assert_eq!(out[1].next_lsn, 10);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), data_len);

        // Zeros after the records of a sealed segment: rolling cuts them, so this is damage.
        let dir = tempfile::tempdir().unwrap();
        let sealed = write_segment(dir.path(), 0, 4);
        append_bytes(&sealed, &[0; 100]);
        write_segment(dir.path(), 4, 1);
        let segs = list_segments(dir.path()).unwrap();
        for mode in [rw(), RecoveryMode::ReadOnly] {
            let err = recover(&segs, mode, 64, None).unwrap_err();
            assert!(matches!(err, LogError::Corrupted { .. }), "{err}");
        }
        // Zeros, then something that is not zero, in the newest segment: a torn tail as before.
        let dir = tempfile::tempdir().unwrap();
        let path = write_segment(dir.path(), 0, 4);
        append_bytes(&path, &[0; 4096]);
        append_bytes(&path, &record(4));
        let segs = list_segments(dir.path()).unwrap();
        assert!(matches!(
            recover(&segs, rw(), 64, None),
            Err(LogError::Corrupted { .. })
        ));
    }

    #[test]
    fn huge_length_in_a_frame_header_does_not_allocate_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_segment(dir.path(), 0, 2);
        let mut bogus = record(2);
        bogus[4..8].copy_from_slice(&((60u32 << 20).to_le_bytes()));
        append_bytes(&path, &bogus);
        let segs = list_segments(dir.path()).unwrap();
        let out = recover(&segs, rw(), 64, None).unwrap();
        assert_eq!(out[0].next_lsn, 2);
    }

    fn len(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().len()
    }

    #[test]
    fn a_newest_segment_of_an_older_term_is_sealed_and_late_bytes_after_it_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        write_segment_of(dir.path(), 0, Some(1), 3);
        let old = write_segment_of(dir.path(), 3, Some(1), 5);
        let data_len = len(&old);
        append_bytes(&old, &[0; 4096]); // the old writer's runway
        let segs = list_segments(dir.path()).unwrap();
        let out = recover(&segs, rw(), 64, None).unwrap();
        assert_eq!(out[1].next_lsn, 8);
        let seal = super::super::seal::read(&old, 3).unwrap().unwrap();
        assert_eq!((seal.next_lsn, seal.end_offset), (8, data_len));
        assert_eq!(len(&old), data_len, "cut at the seal");

        // The stopped writer of term 1 goes on writing after the seal; term 2 starts its own
        // segment at lsn 8.
        append_bytes(&old, &record(8));
        append_bytes(&old, &record(9));
        append_bytes(&old, &[0xab; 10]);
        let new = write_segment_of(dir.path(), 8, Some(2), 2);
        let segs = list_segments(dir.path()).unwrap();
        assert_eq!(segs.len(), 3);
        for mode in [RecoveryMode::ReadOnly, rw()] {
            let out = recover(&segs, mode, 64, None).unwrap();
            assert_eq!(out[1].next_lsn, 8);
            assert_eq!(out[1].end_offset, data_len);
            assert_eq!(out[2].next_lsn, 10);
        }
        assert_eq!(
            len(&old),
            data_len,
            "a read-write recovery cuts the late bytes"
        );
        assert!(len(&new) > SEGMENT_HEADER_LEN);

        // Without the seal file, a successor of a higher term is enough to ignore them.
        append_bytes(&old, &record(8));
        std::fs::remove_file(super::super::seal::path_of(&old)).unwrap();
        std::fs::remove_file(super::super::sidecar::path_of(&old)).unwrap();
        let segs = list_segments(dir.path()).unwrap();
        let out = recover(&segs, RecoveryMode::ReadOnly, 64, None).unwrap();
        assert_eq!(out[1].next_lsn, 8);
        // Between segments of one term the same bytes are damage.
        let dir = tempfile::tempdir().unwrap();
        let sealed = write_segment(dir.path(), 0, 3);
        append_bytes(&sealed, &record(3));
        write_segment(dir.path(), 3, 1);
        let segs = list_segments(dir.path()).unwrap();
        assert!(matches!(
            recover(&segs, RecoveryMode::ReadOnly, 64, None),
            Err(LogError::Corrupted { .. })
        ));
    }

    #[test]
    fn an_open_follows_a_seal_another_new_term_wrote_first() {
        let dir = tempfile::tempdir().unwrap();
        let old = write_segment_of(dir.path(), 0, Some(1), 6);
        // Another opener of a newer term sealed it after three records (the other three are
        // late writes of the old term it did not include).
        let third_end = {
            let segs = list_segments(dir.path()).unwrap();
            let f = std::fs::File::open(&old).unwrap();
            scan_records(
                &f,
                &segs[0].path,
                (SEGMENT_HEADER_LEN, 0),
                SEGMENT_HEADER_LEN,
                64,
                Some(3),
            )
            .unwrap()
            .end_offset
        };
        let theirs = super::super::seal::Seal {
            next_lsn: 3,
            end_offset: third_end,
        };
        super::super::seal::seal_first(&old, 0, theirs).unwrap();
        let segs = list_segments(dir.path()).unwrap();
        let out = recover(&segs, RecoveryMode::ReadWrite(Term(3)), 64, None).unwrap();
        assert_eq!((out[0].next_lsn, out[0].end_offset), (3, third_end));
        assert_eq!(len(&old), third_end);
        // A seal promising more records than the segment holds is damage.
        let dir = tempfile::tempdir().unwrap();
        let old = write_segment_of(dir.path(), 0, Some(1), 2);
        let bogus = super::super::seal::Seal {
            next_lsn: 5,
            end_offset: 9999,
        };
        super::super::seal::seal_first(&old, 0, bogus).unwrap();
        let segs = list_segments(dir.path()).unwrap();
        for mode in [RecoveryMode::ReadOnly, rw()] {
            assert!(matches!(
                recover(&segs, mode, 64, None),
                Err(LogError::Corrupted { .. })
            ));
        }
    }

    #[test]
    fn segments_written_before_term_claims_read_as_before() {
        let dir = tempfile::tempdir().unwrap();
        write_segment_of(dir.path(), 0, None, 4);
        let newest = write_segment_of(dir.path(), 4, None, 3);
        append_bytes(&newest, &[0; 100]);
        let segs = list_segments(dir.path()).unwrap();
        assert!(segs.iter().all(|s| s.term.is_none()));
        let out = recover(&segs, RecoveryMode::ReadOnly, 64, None).unwrap();
        assert_eq!(out[1].next_lsn, 7);
        assert!(super::super::seal::read(&newest, 4).unwrap().is_none());
        // The first read-write open of a new version seals the legacy newest segment.
        let out = recover(&segs, rw(), 64, None).unwrap();
        assert_eq!(out[1].next_lsn, 7);
        let seal = super::super::seal::read(&newest, 4).unwrap().unwrap();
        assert_eq!(seal.next_lsn, 7);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn random_damage_never_panics(
            overwrite in proptest::collection::vec((0usize..4096, any::<u8>()), 0..16),
            tail in proptest::collection::vec(any::<u8>(), 0..512),
            truncate_to in proptest::option::of(0u64..4096),
            rw_mode: bool,
        ) {
            let dir = tempfile::tempdir().unwrap();
            write_segment(dir.path(), 0, 20);
            let path = write_segment(dir.path(), 20, 20);
            let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
            let len = f.metadata().unwrap().len();
            for (at, b) in overwrite {
                f.write_all_at(&[b], at as u64 % len.max(1)).unwrap();
            }
            append_bytes(&path, &tail);
            if let Some(t) = truncate_to {
                f.set_len(t).unwrap();
            }
            drop(f);
            let segs = list_segments(dir.path()).unwrap();
            let mode = if rw_mode { rw() } else { RecoveryMode::ReadOnly };
            match recover(&segs, mode, 64, None) {
                Ok(out) => {
                    prop_assert_eq!(out.len(), 2);
                    prop_assert_eq!(out[0].next_lsn, 20);
                    prop_assert!(out[1].next_lsn >= 20 && out[1].next_lsn <= 40);
                    // What survives is a prefix of valid records that scans again identically.
                    let again = recover(&segs, RecoveryMode::ReadOnly, 64, None).unwrap();
                    prop_assert_eq!(again[1].next_lsn, out[1].next_lsn);
                }
                Err(LogError::Corrupted { .. }) => {}
                Err(e) => prop_assert!(false, "unexpected error {}", e),
            }
        }
    }
}
