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

/// Scans records from `(offset, lsn)` up to the end of the file or the first bad record.
/// `last_indexed` is the offset of the last index entry before `offset` (or the header end).
pub(super) fn scan_records(
    file: &File,
    path: &Path,
    start: (u64, u64),
    last_indexed: u64,
    index_interval: u64,
) -> Result<RecordScan, LogError> {
    let (mut offset, mut lsn) = start;
    let mut last_indexed = last_indexed;
    let mut index = Vec::new();
    let file_len = file.metadata().map_err(|e| io_err("stat", path, e))?.len();
    let mut want = SCAN_CHUNK;
    while offset < file_len {
        let requested = want;
        want = SCAN_CHUNK;
        let buf = read_bounded(file, offset, requested).map_err(|e| io_err("read", path, e))?;
        if buf.is_empty() {
            break;
        }
        let mut pos = 0usize;
        let mut stop = None;
        while pos < buf.len() {
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
    /// Truncate a torn tail, rewrite a torn header, sync the newest segment. The term goes into a
    /// rewritten header.
    ReadWrite(Term),
    /// Change nothing; stop before a torn tail.
    ReadOnly,
}

/// Scans `segments` (oldest first; the last one is the newest of the log), checking contiguity.
/// `start` optionally gives a known-good `(offset, lsn, last_indexed)` in the first segment to
/// scan from instead of its header.
pub(super) fn recover(
    segments: &[SegmentFile],
    mode: RecoveryMode,
    index_interval: u64,
    start: Option<(u64, u64, u64)>,
) -> Result<Vec<ScannedSegment>, LogError> {
    let mut out: Vec<ScannedSegment> = Vec::with_capacity(segments.len());
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let writable = last && matches!(mode, RecoveryMode::ReadWrite(_));
        // A sealed segment with an intact sidecar that agrees with the files is not scanned.
        let sealed_next = segments.get(i + 1).map(|n| n.base);
        if let Some(next) = sealed_next
            && (i > 0 || start.is_none())
            && out.last().is_none_or(|p| p.next_lsn == seg.base)
            && let Some(known) = super::sidecar::read(&seg.path, seg.base, next)
        {
            out.push(known);
            continue;
        }
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
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
        match header {
            Ok(base) if base == seg.base => {}
            Ok(base) => {
                return Err(corrupted(
                    &seg.path,
                    0,
                    format!("header base lsn {base} does not match the file name"),
                ));
            }
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
                if let RecoveryMode::ReadWrite(term) = mode {
                    tracing::warn!(path = %seg.path.display(), %reason, "rewriting the torn header of the newest segment");
                    rewrite_header(&file, &seg.path, seg.base, term)?;
                }
                out.push(ScannedSegment {
                    base: seg.base,
                    path: seg.path.clone(),
                    end_offset: SEGMENT_HEADER_LEN,
                    next_lsn: seg.base,
                    index: Vec::new(),
                });
                continue;
            }
        }
        let (from, last_indexed) = match (i, start) {
            (0, Some((offset, lsn, last_indexed))) => ((offset, lsn), last_indexed),
            _ => ((SEGMENT_HEADER_LEN, seg.base), SEGMENT_HEADER_LEN),
        };
        // A read-only scan of the newest segment can race its writer in another process: a
        // frame may be seen half copied, or zeros where records land a moment later, so what
        // looks like "a bad record with a valid one after it" may just be a write in progress.
        // Look again (briefly) before calling that corruption.
        let racy = last && matches!(mode, RecoveryMode::ReadOnly);
        let mut attempts = 0;
        // For a bad record: whether only zeros follow it, else where a valid record follows.
        let (scan, zeros, follows) = loop {
            let scan = scan_records(&file, &seg.path, from, last_indexed, index_interval)?;
            let Some((offset, _)) = &scan.bad else {
                break (scan, false, None);
            };
            let offset = *offset;
            let zeros = zeros_to_end(&file, offset).map_err(|e| io_err("read", &seg.path, e))?;
            // Only the newest segment is searched (a sealed one is damaged either way).
            let follows = if zeros || !last {
                None
            } else {
                find_valid_frame(&file, offset + 1).map_err(|e| io_err("read", &seg.path, e))?
            };
            if follows.is_none() || !racy || attempts >= 8 {
                break (scan, zeros, follows);
            }
            attempts += 1;
            std::thread::sleep(std::time::Duration::from_millis(2));
        };
        if let Some((offset, reason)) = scan.bad {
            if zeros && !last {
                // Rolling cuts a segment to its last record (and syncs it) before the next
                // segment exists, so a sealed segment cannot end in a runway.
                return Err(corrupted(
                    &seg.path,
                    offset,
                    "a sealed segment ends in zeros after its last record",
                ));
            }
            if zeros {
                // The normal end of the newest segment: the writer's zero runway.
                if matches!(mode, RecoveryMode::ReadWrite(_)) {
                    file.set_len(offset)
                        .map_err(|e| io_err("truncate", &seg.path, e))?;
                }
            } else if !last {
                return Err(corrupted(
                    &seg.path,
                    offset,
                    format!("{reason} (in a sealed segment)"),
                ));
            } else {
                if let Some(at) = follows {
                    return Err(corrupted(
                        &seg.path,
                        offset,
                        format!("{reason}, but a valid record follows at offset {at}"),
                    ));
                }
                if matches!(mode, RecoveryMode::ReadWrite(_)) {
                    tracing::warn!(path = %seg.path.display(), offset, %reason, "truncating the torn tail of the newest segment");
                    file.set_len(offset)
                        .map_err(|e| io_err("truncate", &seg.path, e))?;
                }
            }
        }
        if writable {
            // Records a killed writer left in the page cache become durable before anyone relies
            // on them.
            file.sync_data().map_err(|e| io_err("sync", &seg.path, e))?;
        }
        out.push(ScannedSegment {
            base: seg.base,
            path: seg.path.clone(),
            end_offset: scan.end_offset,
            next_lsn: scan.next_lsn,
            index: scan.index,
        });
        // A sealed segment scanned in full: record it so the next open need not scan it.
        if !last
            && (i > 0 || start.is_none())
            && matches!(mode, RecoveryMode::ReadWrite(_))
            && sealed_next == Some(scan.next_lsn)
            && let Some(done) = out.last()
        {
            super::sidecar::write(done);
        }
    }
    Ok(out)
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

    /// Writes a segment with `count` records starting at lsn `base`; returns its path.
    fn write_segment(dir: &Path, base: u64, count: u64) -> PathBuf {
        let path = dir.join(segment_name(base));
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&encode_segment_header(base, Term(1))).unwrap();
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
        let newest = dir.path().join(segment_name(5));
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
