//! The read path: one task per stream, reading segment files in chunks on the blocking pool.
//!
//! A reader seeks with the sparse index, decodes records in id order and hands them to a bounded
//! channel. At the end of the data it waits for the committed-lsn watch (in-process writers) or
//! polls (writers in other processes).
//!
//! Which records of a segment a reader may deliver is decided *after* it read them, so that
//! no record it delivers can later fall outside the log:
//! * the active segment of an in-process writer: those below the committed lsn (acknowledged,
//!   so written and durable before any newer term's recovery);
//! * a final segment — sealed (`seal.rs`), or followed by another in the chain: exactly its
//!   records up to that lsn; whatever follows them is a fenced writer's late writes;
//! * the newest segment otherwise: every valid record, if no newer term than the segment's has
//!   claimed the log (`claims.rs`) — a newer term's claim, hence its recovery, comes after this
//!   check and so after the records were written, and its seal keeps them; else none until the
//!   segment is sealed;
//! * a segment no longer in the chain (truncated, or superseded by a newer term's segment of
//!   the same base, which only happens to one that had no record when it was sealed): none; the
//!   reader finds its position in the chain again.
//!
//! The newest segment usually ends in the writer's zero runway (see `segment.rs`): a zero frame
//! header there is not a record and not damage, just "no more records yet"; the reader waits at
//! it like at the end of the file.

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use sluice_types::{ImmutableMessage, MessageId};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::recovery::{
    FrameAt, RecoveryMode, ScannedSegment, corrupted, decode_body, frame_at, recover,
};
use super::segment::{
    SEGMENT_HEADER_LEN, SegmentFile, list_segments, read_bounded, read_segment_header,
};
use super::{LocalConfig, SharedDir};
use crate::LogError;

/// Bytes a reader reads per step (more when one record is larger).
const READ_CHUNK: u64 = 256 << 10;

/// Where a read starts.
#[derive(Clone, Copy, Debug)]
pub(super) enum Start {
    /// The oldest retained record.
    Oldest,
    /// The first record with lsn `>=` this (the oldest retained one if that was truncated).
    From(u64),
}

struct Cursor {
    base: u64,
    term: Option<u64>,
    path: std::path::PathBuf,
    file: File,
    offset: u64,
    next_lsn: u64,
    last_indexed: u64,
    /// Bytes to read next time (a record larger than a chunk needs more).
    need: u64,
    /// Once the segment is final: the lsn its records end at.
    limit: Option<u64>,
    /// Reads that ended before `limit` in a row (more than a couple means damage).
    short_reads: u32,
}

impl Cursor {
    fn open(seg: &SegmentFile, file: File, offset: u64, next_lsn: u64) -> Cursor {
        Cursor {
            base: seg.base,
            term: seg.term,
            path: seg.path.clone(),
            file,
            offset,
            next_lsn,
            last_indexed: offset,
            need: READ_CHUNK,
            limit: None,
            short_reads: 0,
        }
    }

    fn segment(&self) -> SegmentFile {
        SegmentFile {
            base: self.base,
            term: self.term,
            path: self.path.clone(),
        }
    }
}

/// What readers may take from a segment, as far as the files say now (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Status {
    /// Final: it holds the records below this lsn.
    Final(u64),
    /// The newest segment, and its term still owns the log: every valid record counts.
    Open,
    /// The newest segment of a term a newer one has claimed, not sealed yet.
    Sealing,
    /// Not in the chain any more.
    Gone,
}

/// The status of `seg` in the pchannel directory `dir`. Call it after reading the records it is
/// to decide on.
pub(super) fn status(dir: &std::path::Path, seg: &SegmentFile) -> Result<Status, LogError> {
    if let Some(seal) = super::seal::read(&seg.path, seg.base)? {
        return Ok(Status::Final(seal.next_lsn));
    }
    let chain = list_segments(dir)?;
    let Some(i) = chain.iter().position(|s| s.path == seg.path) else {
        return Ok(Status::Gone);
    };
    if let Some(next) = chain.get(i + 1) {
        return Ok(Status::Final(next.base));
    }
    let open = match (super::claims::highest_claim(dir)?, seg.term) {
        // Never claimed: a log of a version before claims, read as it always was.
        (None, _) => true,
        (Some(highest), Some(term)) => highest <= term,
        (Some(_), None) => false,
    };
    Ok(if open { Status::Open } else { Status::Sealing })
}

/// Adds the index entries a read-only recovery found, keeping only records readers may deliver
/// (the newest segment's count only while it is open or up to its seal).
pub(super) fn merge_scanned(
    shared: &SharedDir,
    chain: &[SegmentFile],
    scanned: &[ScannedSegment],
) -> Result<(), LogError> {
    for s in scanned {
        let newest = chain.last().is_some_and(|n| n.path == s.path);
        let limit = match (newest, chain.last()) {
            (true, Some(seg)) => match status(&shared.path, seg)? {
                Status::Open => None,
                Status::Final(l) => Some(l),
                Status::Sealing | Status::Gone => continue,
            },
            _ => None,
        };
        let entries: Vec<_> = s
            .index
            .iter()
            .copied()
            .filter(|&(lsn, _)| limit.is_none_or(|l| lsn < l))
            .collect();
        shared.merge_index(s.base, &entries);
    }
    Ok(())
}

/// A reader's position and what it needs to move on; lives on the blocking pool while it reads.
pub(super) struct Reader {
    shared: Arc<SharedDir>,
    index_interval: u64,
    /// Records below this lsn are skipped.
    target: u64,
    cur: Option<Cursor>,
}

/// What one step produced.
pub(super) enum Step {
    /// Records, possibly none when only skipped records were passed.
    Records(Vec<ImmutableMessage>),
    /// Nothing to deliver now; wait for a commit or the next poll.
    Idle,
    /// The read failed; deliver the error and end.
    Failed(LogError),
}

enum Stop {
    /// Consumed something (or needs a larger read); call again.
    Progress,
    /// The next record is not committed yet.
    Limit,
    /// Nothing consumable at the cursor: the end of the file (`None`) or bytes that are not a
    /// complete valid record (`Some(reason)`).
    End(Option<String>),
}

enum Advance {
    Moved,
    Wait,
}

impl Reader {
    pub(super) fn new(shared: Arc<SharedDir>, config: &LocalConfig, start: Start) -> Reader {
        Reader {
            shared,
            index_interval: config.index_interval,
            target: match start {
                Start::Oldest => 0,
                Start::From(lsn) => lsn,
            },
            cur: None,
        }
    }

    /// Reads up to `max` records (blocking).
    pub(super) fn step(&mut self, max: usize) -> Step {
        let mut out = Vec::new();
        match self.fill(max.max(1), &mut out) {
            Ok(step) => step,
            Err(e) => Step::Failed(e),
        }
    }

    fn fill(&mut self, max: usize, out: &mut Vec<ImmutableMessage>) -> Result<Step, LogError> {
        for _ in 0..64 {
            if self.cur.is_none() && !self.position()? {
                return Ok(Step::Idle);
            }
            let stop = self.read_chunk(max, out)?;
            if !out.is_empty() {
                return Ok(Step::Records(std::mem::take(out)));
            }
            match stop {
                Stop::Progress => {}
                Stop::Limit => return Ok(Step::Idle),
                Stop::End(reason) => match self.advance(reason)? {
                    Advance::Moved => {}
                    Advance::Wait => return Ok(Step::Idle),
                },
            }
        }
        Ok(Step::Records(Vec::new()))
    }

    /// Opens the segment holding the target (or the oldest one). `false` when there is none yet.
    fn position(&mut self) -> Result<bool, LogError> {
        let segments = list_segments(&self.shared.path)?;
        let Some(first) = segments.first() else {
            return Ok(false);
        };
        let seg = segments
            .iter()
            .rev()
            .find(|s| s.base <= self.target)
            .unwrap_or(first);
        let newest = segments.last().is_some_and(|l| l.base == seg.base);
        let file = match File::open(&seg.path) {
            Ok(f) => f,
            // Truncated between listing and opening: look again on the next step.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(LogError::io(format!("open {}", seg.path.display()), e)),
        };
        match read_segment_header(&file)
            .map_err(|e| LogError::io(format!("read {}", seg.path.display()), e))?
        {
            Ok(base) if base == seg.base => {}
            Ok(base) => {
                return Err(corrupted(
                    &seg.path,
                    0,
                    format!("header base lsn {base} does not match the file name"),
                ));
            }
            // The newest segment is being created (or its header was torn and a read-write open
            // will rewrite it).
            Err(_) if newest => return Ok(false),
            Err(reason) => return Err(corrupted(&seg.path, 0, reason)),
        }
        let (next_lsn, offset) = if self.target > seg.base {
            self.shared
                .seek(seg.base, self.target)
                .unwrap_or((seg.base, SEGMENT_HEADER_LEN))
        } else {
            (seg.base, SEGMENT_HEADER_LEN)
        };
        self.cur = Some(Cursor::open(seg, file, offset, next_lsn));
        Ok(true)
    }

    fn read_chunk(
        &mut self,
        max: usize,
        out: &mut Vec<ImmutableMessage>,
    ) -> Result<Stop, LogError> {
        let Some(cur) = self.cur.as_mut() else {
            return Ok(Stop::Progress);
        };
        let want = std::mem::replace(&mut cur.need, READ_CHUNK);
        let buf = read_bounded(&cur.file, cur.offset, want)
            .map_err(|e| LogError::io(format!("read {}", cur.path.display()), e))?;
        // Decided after the read (see the module docs): bytes an in-process writer wrote but has
        // not yet synced are then beyond the committed lsn, and records of an open newest
        // segment were there before any newer term's recovery.
        let (limit, is_final) = match cur.limit {
            Some(l) => (Some(l), true),
            None => match self.shared.active_limit(&cur.path) {
                Some(committed) => (Some(committed), false),
                None => match status(&self.shared.path, &cur.segment())? {
                    Status::Final(l) => {
                        cur.limit = Some(l);
                        (Some(l), true)
                    }
                    Status::Open => (None, false),
                    Status::Sealing => (Some(cur.next_lsn), false),
                    Status::Gone => {
                        self.reposition();
                        return Ok(Stop::Progress);
                    }
                },
            },
        };
        let mut pos = 0usize;
        let mut index = Vec::new();
        let stop = loop {
            if out.len() >= max && pos > 0 {
                break Stop::Progress;
            }
            if limit.is_some_and(|l| cur.next_lsn >= l) {
                break if pos > 0 {
                    Stop::Progress
                } else if is_final {
                    // The end of a final segment (anything after it is not part of the log).
                    Stop::End(None)
                } else {
                    Stop::Limit
                };
            }
            let Some(rest) = buf.get(pos..).filter(|r| !r.is_empty()) else {
                break if pos > 0 {
                    Stop::Progress
                } else {
                    Stop::End(None)
                };
            };
            match frame_at(rest) {
                FrameAt::Valid { body, len } => {
                    if cur.next_lsn >= self.target {
                        let msg = decode_body(body, &cur.path, cur.offset)?;
                        out.push(ImmutableMessage::new(
                            MessageId::from_parts(0, cur.next_lsn),
                            msg,
                        ));
                    }
                    if cur.offset >= cur.last_indexed.saturating_add(self.index_interval) {
                        index.push((cur.next_lsn, cur.offset));
                        cur.last_indexed = cur.offset;
                    }
                    pos += len;
                    cur.offset += len as u64;
                    cur.next_lsn += 1;
                    cur.short_reads = 0;
                }
                FrameAt::Incomplete { needed } => {
                    let needed = needed as u64;
                    if pos > 0 {
                        // The chunk cut the frame: read again from its start.
                        cur.need = READ_CHUNK.max(needed);
                        break Stop::Progress;
                    }
                    if (buf.len() as u64) < want {
                        // The file ends inside this frame.
                        break Stop::End(Some("incomplete record".into()));
                    }
                    // The record is larger than a chunk: read it whole next time (the read is
                    // bounded by the file size, whatever the header claims).
                    cur.need = needed;
                    break Stop::Progress;
                }
                FrameAt::Invalid(reason) => {
                    break if pos > 0 {
                        Stop::Progress
                    } else {
                        Stop::End(Some(reason))
                    };
                }
            }
        };
        let base = cur.base;
        self.shared.merge_index(base, &index);
        Ok(stop)
    }

    /// At the end of the current segment's data: move to the next segment once this one is
    /// final and read to its end.
    fn advance(&mut self, reason: Option<String>) -> Result<Advance, LogError> {
        let Some(cur) = self.cur.as_mut() else {
            return Ok(Advance::Moved);
        };
        let Some(limit) = cur.limit else {
            // An open segment: more records may come (a torn tail is rewritten by the next
            // read-write open).
            return Ok(Advance::Wait);
        };
        if cur.next_lsn < limit {
            // The segment must hold records up to `limit`; the read may have come just before
            // they were written (the limit was learned after it). Look again, then call it
            // damage.
            cur.short_reads += 1;
            if cur.short_reads > 2 {
                return Err(corrupted(
                    &cur.path,
                    cur.offset,
                    format!(
                        "{} (in a sealed segment, before lsn {limit})",
                        reason.unwrap_or_else(|| "the file ends".into())
                    ),
                ));
            }
            return Ok(Advance::Moved);
        }
        let segments = list_segments(&self.shared.path)?;
        let Some(next) = segments.iter().find(|s| s.base == limit) else {
            if segments.first().is_none_or(|f| f.base > limit) {
                // Truncated away meanwhile: find the oldest retained record again.
                self.reposition();
                return Ok(Advance::Moved);
            }
            // Sealed, and the newer term has not created its segment yet.
            return Ok(Advance::Wait);
        };
        let newest = segments.last().is_some_and(|l| l.base == next.base);
        let file = match File::open(&next.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.reposition();
                return Ok(Advance::Moved);
            }
            Err(e) => return Err(LogError::io(format!("open {}", next.path.display()), e)),
        };
        match read_segment_header(&file)
            .map_err(|e| LogError::io(format!("read {}", next.path.display()), e))?
        {
            Ok(base) if base == next.base => {}
            Ok(base) => {
                return Err(corrupted(
                    &next.path,
                    0,
                    format!("header base lsn {base} does not match the file name"),
                ));
            }
            Err(_) if newest => return Ok(Advance::Wait),
            Err(reason) => return Err(corrupted(&next.path, 0, reason)),
        }
        self.cur = Some(Cursor::open(next, file, SEGMENT_HEADER_LEN, next.base));
        Ok(Advance::Moved)
    }

    fn reposition(&mut self) {
        if let Some(cur) = self.cur.take() {
            self.target = self.target.max(cur.next_lsn);
        }
    }
}

/// The lsn the next record of the log will get, from the files (for `Latest` without an
/// in-process writer). While a newer term is sealing the newest segment, waits (briefly) for
/// the seal; if it does not come, starts at the newest segment's base (records may then be
/// delivered that were appended before the read began, never skipped).
pub(super) fn end_lsn(shared: &SharedDir, index_interval: u64) -> Result<u64, LogError> {
    for _ in 0..200 {
        let segments = list_segments(&shared.path)?;
        let Some(newest) = segments.last() else {
            return Ok(0);
        };
        let start = shared
            .seek(newest.base, u64::MAX)
            .map(|(lsn, off)| (off, lsn, off));
        let scanned = recover(
            std::slice::from_ref(newest),
            RecoveryMode::ReadOnly,
            index_interval,
            start,
        )?;
        let end = scanned.last().map_or(newest.base, |s| s.next_lsn);
        match status(&shared.path, newest)? {
            Status::Open => {
                merge_scanned(shared, &segments, &scanned)?;
                return Ok(end);
            }
            // Sealed, and no next segment yet.
            Status::Final(l) if super::seal::read(&newest.path, newest.base)?.is_some() => {
                return Ok(l);
            }
            Status::Final(_) | Status::Sealing | Status::Gone => {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    Ok(list_segments(&shared.path)?.last().map_or(0, |s| s.base))
}

/// The reader task: steps the reader on the blocking pool and feeds the stream.
pub(super) async fn run(
    reader: Reader,
    tx: mpsc::Sender<Result<ImmutableMessage, LogError>>,
    stop: CancellationToken,
    mut committed: watch::Receiver<u64>,
    poll: Duration,
) {
    let mut reader = reader;
    loop {
        // Decode no more than the consumer has room for: read-ahead stays bounded.
        let room = loop {
            let room = tx.capacity();
            if room > 0 {
                break room;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                permit = tx.reserve() => match permit {
                    Ok(permit) => drop(permit),
                    Err(_) => return,
                },
            }
        };
        if stop.is_cancelled() {
            return;
        }
        committed.borrow_and_update();
        let joined = tokio::task::spawn_blocking(move || {
            let step = reader.step(room);
            (reader, step)
        })
        .await;
        let step;
        (reader, step) = match joined {
            Ok(r) => r,
            Err(e) => {
                let _ = tx
                    .send(Err(LogError::Unavailable(format!("reader failed: {e}"))))
                    .await;
                return;
            }
        };
        match step {
            Step::Records(batch) => {
                for msg in batch {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        sent = tx.send(Ok(msg)) => if sent.is_err() { return },
                    }
                }
            }
            Step::Idle => {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = committed.changed() => {}
                    _ = tokio::time::sleep(poll) => {}
                }
            }
            Step::Failed(e) => {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tx.send(Err(e)) => {}
                }
                return;
            }
        }
    }
}
