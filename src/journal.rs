//! Durability: every accepted event is in the journal, on disk, before its request gets 200.
//!
//! Layout under `storage.dir`:
//!
//! ```text
//! journal/00000000000000000007.log   segments: frames [len u32 LE][crc32 u32 LE][payload],
//!                                    a payload being one Record: a version byte, then the
//!                                    record (see RECORD_BINARY_V1)
//! snapshot-00000000000000000007.bin  the whole state as of the start of segment 7 (see
//!                                    the `snapshot` module for its format)
//! ```
//!
//! One writer thread owns the open segment. Requests send their record and wait; the writer
//! takes everything queued, writes it with one `write`, and (with `fsync = "batch"`) makes it
//! durable with one `fdatasync` for the whole group before answering any of them.
//!
//! A snapshot is taken under the append gate's write side: no request is between "appended"
//! and "applied" then, so every event in the segments before the cut is in memory. The state is
//! serialised after the gate is released, and may already contain some events of later
//! segments: replaying those again changes nothing, because applying an event twice is a no-op
//! (the lattice design). Recovery loads the newest valid snapshot and replays the segments from
//! its cut; a torn or corrupt frame ends a segment's replay there, is reported, and the tail is
//! truncated.

use crate::aggregator::Aggregator;
use crate::event::{Event, Text};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// When the journal calls `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// Once per group of requests that arrived together (the default).
    Batch,
    /// Once per request.
    Always,
    /// Never: the OS writes back when it likes; a power loss loses the last moments.
    Never,
}

/// Journal settings.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    pub dir: PathBuf,
    pub fsync: FsyncMode,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// Most records written in one group.
    pub max_group: usize,
    /// The open segment is extended with zeros this many bytes at a time, ahead of the
    /// records (0: not at all; see [`Writer::make_room`]).
    pub preallocate_bytes: u64,
    /// The writer thread's nice increment (0: none; see [`Writer::lower_priority`]).
    pub writer_nice: i32,
}

/// One journal record: the events a request brought, and when it arrived. Its events' ids are
/// `String`s, or borrowed from the record's bytes where the replay decodes it in place
/// ([`RecordRef`]); either way it encodes to the same bytes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record<S = String> {
    /// Receive time, Unix ms: replay applies the events at this time. Written as `t` on disk.
    #[serde(rename = "t")]
    pub received_ms: u64,
    pub events: Vec<Event<S>>,
}

/// The first byte of a binary record payload: format version 1, a postcard encoding of
/// [`Record`] after it. Postcard is not self-describing: the fields' order and the order of
/// every enum's variants in the events are part of this version. Adding a variant at the end
/// keeps old records readable; anything else needs a new version byte (and keeping this one
/// readable).
pub const RECORD_BINARY_V1: u8 = 1;

/// The first byte of a record written by tallies before the binary format: a JSON object.
/// Still read, never written.
const RECORD_JSON: u8 = b'{';

/// Why a journal payload could not be read as a record.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(
        "record format {0:#04x} is not one this tally reads (binary version 1, or JSON): it was written by a newer tally; start that one"
    )]
    UnknownFormat(u8),
    #[error("record does not decode: {0}")]
    Corrupt(String),
}

/// A record as the journal stores it: the version byte, then the record in that version's
/// encoding.
pub fn encode_record(record: &Record) -> Result<Vec<u8>, RecordError> {
    encode_onto(record, Vec::new())
}

/// `buf`, then the record as [`encode_record`] has it.
fn encode_onto(record: &Record, mut buf: Vec<u8>) -> Result<Vec<u8>, RecordError> {
    buf.push(RECORD_BINARY_V1);
    postcard::to_extend(record, buf).map_err(|e| RecordError::Corrupt(e.to_string()))
}

/// Room reserved up front per event of a record, so that its encoding seldom moves: a Comms
/// API event with its recipient address and one tag takes about 160 bytes, and a reservation
/// that falls short moves the whole record once.
const EVENT_BYTES_ESTIMATE: usize = 200;

/// A record framed as a segment holds it: [`frame`] of [`encode_record`], encoded straight
/// into the frame.
pub fn frame_record(record: &Record) -> Result<Vec<u8>, RecordError> {
    let mut buf =
        Vec::with_capacity(FRAME_HEADER + 1 + 16 + EVENT_BYTES_ESTIMATE * record.events.len());
    buf.extend_from_slice(&[0; FRAME_HEADER]);
    let mut buf = encode_onto(record, buf)?;
    let payload = &buf[FRAME_HEADER..];
    let header = frame_header(payload.len() as u32, crc32fast::hash(payload));
    buf[..FRAME_HEADER].copy_from_slice(&header);
    Ok(buf)
}

/// A binary record decoded in place: its events' ids are slices of the payload.
pub type RecordRef<'a> = Record<&'a str>;

/// A record as [`decode_record_in_place`] reads it.
#[derive(Debug)]
pub enum Decoded<'a> {
    /// A binary record, its attempts' texts borrowed.
    InPlace(RecordRef<'a>),
    /// A record of the JSON format, read whole.
    Owned(Record),
}

impl Decoded<'_> {
    pub fn events(&self) -> usize {
        match self {
            Decoded::InPlace(r) => r.events.len(),
            Decoded::Owned(r) => r.events.len(),
        }
    }

    /// Apply every event at the record's receive time.
    pub fn apply(&self, agg: &Aggregator) {
        match self {
            Decoded::InPlace(r) => r.apply(agg),
            Decoded::Owned(r) => r.apply(agg),
        }
    }
}

impl<S: Text + Clone> Record<S> {
    /// Apply every event at the record's receive time.
    pub fn apply(&self, agg: &Aggregator) {
        for ev in &self.events {
            agg.apply(ev, self.received_ms);
        }
    }
}

/// [`decode_record`], borrowing what it can from `payload`: the journal's replay applies the
/// events straight from it.
pub fn decode_record_in_place(payload: &[u8]) -> Result<Decoded<'_>, RecordError> {
    match payload.first() {
        Some(&RECORD_BINARY_V1) => decode_binary(&payload[1..]).map(Decoded::InPlace),
        _ => decode_record(payload).map(Decoded::Owned),
    }
}

/// The postcard encoding of a record (what follows [`RECORD_BINARY_V1`]), as a record of owned
/// or borrowed texts; anything after the record makes it corrupt.
fn decode_binary<'a, S>(bytes: &'a [u8]) -> Result<Record<S>, RecordError>
where
    Record<S>: Deserialize<'a>,
{
    match postcard::take_from_bytes::<Record<S>>(bytes) {
        Ok((record, [])) => Ok(record),
        Ok((_, rest)) => Err(RecordError::Corrupt(format!(
            "{} bytes after the record",
            rest.len()
        ))),
        Err(e) => Err(RecordError::Corrupt(e.to_string())),
    }
}

/// Read a record in any format this tally knows (see [`RECORD_BINARY_V1`]).
pub fn decode_record(payload: &[u8]) -> Result<Record, RecordError> {
    let corrupt = |e: &dyn std::fmt::Display| RecordError::Corrupt(e.to_string());
    match payload.first() {
        Some(&RECORD_BINARY_V1) => decode_binary(&payload[1..]),
        Some(&RECORD_JSON) => serde_json::from_slice(payload).map_err(|e| corrupt(&e)),
        Some(other) => Err(RecordError::UnknownFormat(*other)),
        None => Err(corrupt(&"empty payload")),
    }
}

/// Why the journal could not take a record.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    #[error("journal write failed: {0}")]
    Io(String),
    #[error("journal writer stopped")]
    Stopped,
}

/// Counters the metrics endpoint reads.
#[derive(Debug, Default)]
pub struct JournalStats {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub groups: AtomicU64,
    pub fsyncs: AtomicU64,
    pub errors: AtomicU64,
    pub snapshots: AtomicU64,
    pub truncated_tails: AtomicU64,
    /// Bytes written since the last snapshot's cut.
    pub bytes_since_snapshot: AtomicU64,
    /// Last fsync latency samples, drained by the metrics endpoint into a histogram.
    pub fsync_micros: Mutex<Vec<u64>>,
    /// The last write error, cleared by the next success.
    pub last_error: Mutex<Option<String>>,
}

impl JournalStats {
    fn note_fsync(&self, d: Duration) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        let mut v = self.fsync_micros.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() < 100_000 {
            v.push(d.as_micros() as u64);
        }
    }
}

/// A record waiting for the writer, with where to send the outcome.
type PendingAppend = (
    Vec<u8>,
    tokio::sync::oneshot::Sender<Result<(), JournalError>>,
);

enum Command {
    Append {
        frame: Vec<u8>,
        done: tokio::sync::oneshot::Sender<Result<(), JournalError>>,
    },
    /// Close the current segment and start the next; answers the new segment's number.
    Roll(mpsc::Sender<io::Result<u64>>),
    Stop(mpsc::Sender<()>),
}

/// The append side of the journal, shared by the request handlers.
pub struct Journal {
    tx: Mutex<mpsc::Sender<Command>>,
    /// The writer, shared with its thread: with `fsync = "never"` a request writes its record
    /// itself (a write to the page cache takes microseconds; handing it to the thread and
    /// waking the request again cost more than that).
    writer: Arc<Mutex<Writer>>,
    fsync: FsyncMode,
    dir: PathBuf,
    pub stats: Arc<JournalStats>,
    /// Held for reading from append to apply ([`Journal::applying`]); held for writing while a
    /// snapshot cuts.
    gate: tokio::sync::RwLock<()>,
    first_segment: u64,
}

/// Bytes before a frame's payload: its length and its CRC-32, both u32 little-endian. Journal
/// segments and snapshot files frame their payloads alike.
pub(crate) const FRAME_HEADER: usize = 8;

/// The header of a frame of `len` payload bytes whose CRC-32 is `crc`.
pub(crate) fn frame_header(len: u32, crc: u32) -> [u8; FRAME_HEADER] {
    let mut h = [0; FRAME_HEADER];
    h[..4].copy_from_slice(&len.to_le_bytes());
    h[4..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The payload length and CRC-32 a frame header says.
pub(crate) fn parse_frame_header(h: [u8; FRAME_HEADER]) -> (usize, u32) {
    let [l0, l1, l2, l3, c0, c1, c2, c3] = h;
    (
        u32::from_le_bytes([l0, l1, l2, l3]) as usize,
        u32::from_le_bytes([c0, c1, c2, c3]),
    )
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join("journal").join(format!("{n:020}.log"))
}

fn snapshot_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("snapshot-{n:020}.bin"))
}

/// Frame a payload: length, CRC-32 of the payload, payload.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME_HEADER + payload.len());
    f.extend_from_slice(&frame_header(
        payload.len() as u32,
        crc32fast::hash(payload),
    ));
    f.extend_from_slice(payload);
    f
}

/// Split a segment's bytes into valid payloads; the second value is the byte offset where the
/// valid prefix ends (less than the length when the tail is torn or corrupt).
pub fn read_frames(bytes: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= FRAME_HEADER {
        let header = bytes[at..at + FRAME_HEADER]
            .try_into()
            .unwrap_or([0; FRAME_HEADER]);
        let (len, crc) = parse_frame_header(header);
        let start = at + FRAME_HEADER;
        if len == 0 || bytes.len() - start < len {
            break;
        }
        let payload = &bytes[start..start + len];
        if crc32fast::hash(payload) != crc {
            break;
        }
        out.push(payload);
        at = start + len;
    }
    (out, at)
}

fn list_numbered(dir: &Path, prefix: &str, suffix: &str) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in rd {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_prefix(prefix)
            .and_then(|s| s.strip_suffix(suffix))
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// How far a replay has got, read by the probes, the metrics and the progress log while it
/// runs. Bytes count the snapshot (once loaded) and the journal frames replayed.
#[derive(Debug, Default)]
pub struct ReplayProgress {
    pub total_bytes: AtomicU64,
    pub bytes: AtomicU64,
    pub records: AtomicU64,
    pub events: AtomicU64,
}

impl ReplayProgress {
    /// Share of the bytes replayed, 0 to 100.
    pub fn percent(&self) -> f64 {
        let total = self.total_bytes.load(Ordering::Relaxed);
        if total == 0 {
            return 100.0;
        }
        let done = self.bytes.load(Ordering::Relaxed).min(total);
        (done as f64 * 1000.0 / total as f64).round() / 10.0
    }
}

/// What recovery found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub snapshot: Option<u64>,
    pub segments: usize,
    pub records: u64,
    pub events: u64,
    pub truncated_tails: u64,
    pub elapsed: Duration,
}

/// Rebuild `agg` from every snapshot and segment in `dir`, and return what was done.
pub fn recover(dir: &Path, agg: &Aggregator) -> io::Result<RecoveryReport> {
    recover_before(dir, agg, u64::MAX, &ReplayProgress::default(), 0)
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Rebuild `agg` from `dir`: the newest snapshot that reads, then the segments from its cut up
/// to (not including) segment `before`, which a journal opened for new callbacks writes to.
/// `progress` is kept current and logged every two seconds. `threads` (0: one per available
/// core) decode and apply records side by side, and load a snapshot's operations side by side:
/// the state does not depend on the order events are applied in.
pub fn recover_before(
    dir: &Path,
    agg: &Aggregator,
    before: u64,
    progress: &ReplayProgress,
    threads: usize,
) -> io::Result<RecoveryReport> {
    let started = Instant::now();
    let mut report = RecoveryReport::default();
    fs::create_dir_all(dir.join("journal"))?;
    let all_segments: Vec<u64> = list_numbered(&dir.join("journal"), "", ".log")?
        .into_iter()
        .filter(|n| *n < before)
        .collect();
    let segment_bytes = |from: u64| -> u64 {
        all_segments
            .iter()
            .filter(|n| **n >= from)
            .map(|n| file_len(&segment_path(dir, *n)))
            .sum()
    };
    let threads = replay_threads(threads);
    let from_segment =
        load_newest_snapshot(dir, agg, threads, progress, &mut report, segment_bytes)?;
    let segments: Vec<u64> = all_segments
        .into_iter()
        .filter(|n| *n >= from_segment)
        .collect();
    let replay = Replay {
        agg,
        progress,
        dir,
        segments: &segments,
        threads,
        truncated_tails: AtomicU64::new(0),
        started,
        last_log: Mutex::new(None),
    };
    let (records, events) = (
        progress.records.load(Ordering::Relaxed),
        progress.events.load(Ordering::Relaxed),
    );
    replay.run()?;
    report.segments = segments.len();
    report.records = progress.records.load(Ordering::Relaxed) - records;
    report.events = progress.events.load(Ordering::Relaxed) - events;
    report.truncated_tails = replay.truncated_tails.load(Ordering::Relaxed);
    report.elapsed = started.elapsed();
    tracing::info!(
        snapshot = ?report.snapshot,
        segments = report.segments,
        records = report.records,
        events = report.events,
        bytes = progress.bytes.load(Ordering::Relaxed),
        truncated_tails = report.truncated_tails,
        elapsed_ms = report.elapsed.as_millis() as u64,
        operations = agg.operation_count(),
        "recovery: replay complete"
    );
    Ok(report)
}

/// `threads`, or one per available core when 0.
fn replay_threads(threads: usize) -> usize {
    match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Restore the newest snapshot that reads (an older one when the newest is damaged) and say
/// from which segment the replay starts (0 without a snapshot). Sets the progress total: the
/// snapshot's bytes and those of the segments still to replay.
fn load_newest_snapshot(
    dir: &Path,
    agg: &Aggregator,
    threads: usize,
    progress: &ReplayProgress,
    report: &mut RecoveryReport,
    segment_bytes: impl Fn(u64) -> u64,
) -> io::Result<u64> {
    let snapshots = list_numbered(dir, "snapshot-", ".bin")?;
    let newest = snapshots
        .last()
        .map_or(0, |n| file_len(&snapshot_path(dir, *n)));
    progress
        .total_bytes
        .store(newest + segment_bytes(0), Ordering::Relaxed);
    for n in snapshots.into_iter().rev() {
        let path = snapshot_path(dir, n);
        let size = file_len(&path);
        tracing::info!(snapshot = n, bytes = size, "recovery: loading snapshot");
        let before = progress.bytes.load(Ordering::Relaxed);
        match crate::snapshot::load(&path, agg, threads, &progress.bytes) {
            Ok(()) => {
                report.snapshot = Some(n);
                progress
                    .total_bytes
                    .store(size + segment_bytes(n), Ordering::Relaxed);
                progress.bytes.store(size, Ordering::Relaxed);
                return Ok(n);
            }
            Err(e) => {
                agg.restore_begin();
                progress.bytes.store(before, Ordering::Relaxed);
                tracing::error!(snapshot = n, error = %e, "recovery: snapshot unreadable, trying an older one")
            }
        }
    }
    Ok(0)
}

/// About how many payload bytes the replay hands to a worker at a time.
const REPLAY_BATCH_BYTES: usize = 1 << 20;

/// Records of one segment read for the replay workers.
struct ReplayBatch {
    /// The segment's number, and its place among the segments replayed.
    segment: u64,
    ordinal: usize,
    payloads: Vec<Vec<u8>>,
    bytes: usize,
}

impl ReplayBatch {
    fn new(ordinal: usize, segment: u64) -> ReplayBatch {
        ReplayBatch {
            segment,
            ordinal,
            payloads: Vec::new(),
            bytes: 0,
        }
    }
}

/// What the next frame of a file of frames (a journal segment, a snapshot) holds.
pub(crate) enum NextFrame {
    Payload(Vec<u8>),
    /// The file ends where a frame would start.
    End,
    /// A header saying length 0: no writer of tally's writes one.
    Empty,
    /// Cut short, or its CRC-32 differs from its header's.
    Damaged,
}

/// Read the next frame of `input`.
pub(crate) fn next_frame(input: &mut impl Read) -> io::Result<NextFrame> {
    let mut header = [0u8; FRAME_HEADER];
    match input.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(NextFrame::End),
        Err(e) => return Err(e),
    }
    let (len, crc) = parse_frame_header(header);
    if len == 0 {
        return Ok(NextFrame::Empty);
    }
    // A damaged length may say gigabytes: reserve no more than a record's usual size up front.
    let mut payload = Vec::with_capacity(len.min(1 << 20));
    input.take(len as u64).read_to_end(&mut payload)?;
    if payload.len() != len || crc32fast::hash(&payload) != crc {
        return Ok(NextFrame::Damaged);
    }
    Ok(NextFrame::Payload(payload))
}

/// The next valid frame's payload in a segment, or `None` at its end or at a frame that is
/// torn, empty or corrupt: the valid prefix ends there, as [`read_frames`] has it.
fn next_segment_frame(input: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    Ok(match next_frame(input)? {
        NextFrame::Payload(p) => Some(p),
        NextFrame::End | NextFrame::Empty | NextFrame::Damaged => None,
    })
}

/// Whether `file` holds only zero bytes from `offset` to its end.
fn zeros_from(mut file: File, offset: u64) -> io::Result<bool> {
    file.seek(io::SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(true),
            n if buf[..n].iter().any(|b| *b != 0) => return Ok(false),
            _ => {}
        }
    }
}

/// The replay of journal segments into the aggregator, with its progress (see [`Replay::run`]).
struct Replay<'a> {
    agg: &'a Aggregator,
    progress: &'a ReplayProgress,
    dir: &'a Path,
    segments: &'a [u64],
    threads: usize,
    truncated_tails: AtomicU64,
    started: Instant,
    /// When progress was last logged: the first record logs at once, then every two seconds.
    last_log: Mutex<Option<Instant>>,
}

impl Replay<'_> {
    /// Replay every segment: this thread reads the segments one after the other, frame by
    /// frame, and hands the records on in batches of about [`REPLAY_BATCH_BYTES`]; `threads`
    /// others decode and apply them side by side. The order of application is free: the state,
    /// its `version` included, is a function of the set of events applied, not of their order
    /// (docs/contract.md, "Versions"). Memory held for the replay is a few batches, not whole
    /// segments.
    fn run(&self) -> io::Result<()> {
        let threads = self.threads.max(1);
        let (tx, rx) = mpsc::sync_channel::<ReplayBatch>(threads * 2);
        let rx = Mutex::new(rx);
        let failed = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| scope.spawn(|| self.work(&rx, &failed)))
                .collect();
            let read = self.read_segments(&tx, &failed);
            drop(tx);
            let worked = workers
                .into_iter()
                .try_for_each(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
            read.and(worked)
        })
    }

    /// Read every segment's valid frames into batches for the workers, and truncate a torn or
    /// corrupt tail. Stops early when a worker has failed.
    fn read_segments(
        &self,
        tx: &mpsc::SyncSender<ReplayBatch>,
        failed: &AtomicBool,
    ) -> io::Result<()> {
        for (i, &n) in self.segments.iter().enumerate() {
            let path = segment_path(self.dir, n);
            let file = File::open(&path)?;
            let size = file.metadata()?.len();
            let mut input = io::BufReader::with_capacity(1 << 20, file);
            let mut batch = ReplayBatch::new(i, n);
            let mut valid = 0u64;
            while let Some(payload) = next_segment_frame(&mut input)? {
                valid += (FRAME_HEADER + payload.len()) as u64;
                batch.bytes += payload.len();
                batch.payloads.push(payload);
                if batch.bytes >= REPLAY_BATCH_BYTES {
                    let full = std::mem::replace(&mut batch, ReplayBatch::new(i, n));
                    if failed.load(Ordering::Relaxed) || tx.send(full).is_err() {
                        return Ok(());
                    }
                }
            }
            if !batch.payloads.is_empty() && tx.send(batch).is_err() {
                return Ok(());
            }
            if valid < size {
                // Zeros alone after the last frame are the room the writer had made ahead of
                // its records (a segment it did not close): no record was lost there.
                let torn = !zeros_from(input.into_inner(), valid)?;
                if torn {
                    tracing::warn!(
                        segment = n,
                        valid_bytes = valid,
                        dropped_bytes = size - valid,
                        "recovery: torn or corrupt journal tail detected; truncating it"
                    );
                    self.truncated_tails.fetch_add(1, Ordering::Relaxed);
                }
                OpenOptions::new().write(true).open(&path)?.set_len(valid)?;
                self.progress
                    .bytes
                    .fetch_add(size - valid, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Decode and apply batches until the reader is done. After a failure this thread only
    /// drains the channel (so the reader never waits on a full one) and reports the error.
    fn work(&self, rx: &Mutex<mpsc::Receiver<ReplayBatch>>, failed: &AtomicBool) -> io::Result<()> {
        let mut error = None;
        loop {
            // The lock is released before the batch is worked on, so the threads work together.
            let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
            let Ok(batch) = next else { break };
            if error.is_some() || failed.load(Ordering::Relaxed) {
                continue;
            }
            let path = segment_path(self.dir, batch.segment);
            for payload in &batch.payloads {
                match self.decode(payload, &path, batch.segment) {
                    Ok(rec) => self.apply(rec, payload.len(), batch.ordinal),
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        error = Some(e);
                        break;
                    }
                }
            }
        }
        error.map_or(Ok(()), Err)
    }

    /// One record, or `None` for one that does not decode (logged and skipped); an error for
    /// one written by a newer tally (skipping it would lose acknowledged callbacks).
    fn decode<'p>(
        &self,
        payload: &'p [u8],
        path: &Path,
        n: u64,
    ) -> io::Result<Option<Decoded<'p>>> {
        match decode_record_in_place(payload) {
            Ok(rec) => Ok(Some(rec)),
            Err(e @ RecordError::UnknownFormat(_)) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("journal segment {}: {e}", path.display()),
            )),
            Err(e) => {
                tracing::error!(segment = n, error = %e, "recovery: skipping a record that does not decode");
                Ok(None)
            }
        }
    }

    /// Apply a decoded record (if it decoded) of `len` bytes, and count it.
    fn apply(&self, rec: Option<Decoded<'_>>, len: usize, i: usize) {
        if let Some(rec) = rec {
            let events = rec.events() as u64;
            rec.apply(self.agg);
            self.progress.records.fetch_add(1, Ordering::Relaxed);
            self.progress.events.fetch_add(events, Ordering::Relaxed);
        }
        self.note_progress((len + FRAME_HEADER) as u64, i);
    }

    /// Count the bytes of one replayed record, and log the progress (see `last_log`).
    fn note_progress(&self, bytes: u64, i: usize) {
        let p = self.progress;
        p.bytes.fetch_add(bytes, Ordering::Relaxed);
        let Ok(mut last_log) = self.last_log.try_lock() else {
            return;
        };
        if last_log.is_none_or(|t| t.elapsed() > Duration::from_secs(2)) {
            tracing::info!(
                segment = i + 1,
                of = self.segments.len(),
                records = p.records.load(Ordering::Relaxed),
                events = p.events.load(Ordering::Relaxed),
                bytes = p.bytes.load(Ordering::Relaxed),
                total_bytes = p.total_bytes.load(Ordering::Relaxed),
                percent = p.percent(),
                elapsed_ms = self.started.elapsed().as_millis() as u64,
                "recovery: replaying journal"
            );
            *last_log = Some(Instant::now());
        }
    }
}

struct Writer {
    dir: PathBuf,
    cfg: JournalConfig,
    segment: u64,
    file: Option<File>,
    /// Bytes of the current segment known good (written, and synced when the mode syncs).
    len: u64,
    /// The current segment's size on disk: `len`, then the zeros written ahead of the records.
    allocated: u64,
    /// After a failed extension, the segment grows with its writes until `len` reaches this
    /// (one extension's worth later), rather than trying again at every group.
    grow_plainly_until: u64,
    stats: Arc<JournalStats>,
    /// Set once the writer thread has stopped: no more writes.
    stopped: bool,
    /// A group's frames joined for one write, kept between groups so that each group does not
    /// allocate (and the allocator give back) a buffer of its own.
    scratch: Vec<u8>,
}

impl Writer {
    fn open_current(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            let path = segment_path(&self.dir, self.segment);
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            self.len = f.metadata()?.len();
            self.allocated = self.len;
            sync_dir(&self.dir.join("journal"));
            self.file = Some(f);
        }
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("segment not open"))
    }

    fn roll(&mut self) -> io::Result<u64> {
        self.close_current()?;
        self.segment += 1;
        self.len = 0;
        self.grow_plainly_until = 0;
        self.open_current()?;
        Ok(self.segment)
    }

    /// Cut the zeros written ahead off the current segment, sync it (unless the mode never
    /// syncs) and close it.
    fn close_current(&mut self) -> io::Result<()> {
        if self.allocated > self.len {
            self.cut_back_zeros()?;
        }
        if let Some(f) = self.file.take() {
            if self.cfg.fsync != FsyncMode::Never {
                f.sync_data()?;
            }
        }
        Ok(())
    }

    /// Drop whatever zeros stand after the records (a failed extension may have written part).
    fn cut_back_zeros(&mut self) -> io::Result<()> {
        if let Some(f) = &self.file {
            f.set_len(self.len)?;
        }
        self.allocated = self.len;
        Ok(())
    }

    /// Make sure the segment's allocated size holds `more` bytes after `len`, extending it with
    /// zeros `preallocate_bytes` at a time. An `fdatasync` after an append that grows the file
    /// must commit the file system's metadata journal as well as the data; after an overwrite
    /// of blocks already written it writes only the data. So the writer pays the metadata commit
    /// once per extension instead of once per group. Replay reads zeros where a frame header
    /// would be as the end of the segment (docs/architecture.md, "Format").
    fn make_room(&mut self, more: u64) -> io::Result<()> {
        let need = self.len + more;
        if need <= self.allocated
            || self.cfg.preallocate_bytes == 0
            || self.len < self.grow_plainly_until
        {
            return Ok(());
        }
        let step = self
            .cfg
            .preallocate_bytes
            .min(self.cfg.segment_bytes)
            .max(1);
        let target = need.max(self.allocated + step);
        let zeros = vec![0u8; (target - self.allocated).min(1 << 20) as usize];
        let mut at = self.allocated;
        let f = self.open_current()?;
        while at < target {
            let n = (target - at).min(zeros.len() as u64) as usize;
            f.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        self.allocated = target;
        Ok(())
    }

    /// Write a group of frames and say how many bytes; on failure cut the segment back to its
    /// last good length.
    fn write_group(&mut self, frames: &[&[u8]]) -> io::Result<u64> {
        if self.len >= self.cfg.segment_bytes {
            self.roll()?;
        }
        let mode = self.cfg.fsync;
        let stats = self.stats.clone();
        let good = self.len;
        let bytes: u64 = frames.iter().map(|f| f.len() as u64).sum();
        if let Err(e) = self.make_room(bytes) {
            // No room for the zeros (a full disk, a file-size limit): the records may still
            // fit, so they are written growing the file, as without preallocation.
            let _ = self.cut_back_zeros();
            self.grow_plainly_until = self.len + self.cfg.preallocate_bytes;
            tracing::debug!(error = %e, "journal: no room to write zeros ahead; growing the segment with the write");
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = (|| {
            let f = self.open_current()?;
            let mut written = 0u64;
            if mode == FsyncMode::Always {
                for fr in frames {
                    f.write_all_at(fr, good + written)?;
                    let t = Instant::now();
                    f.sync_data()?;
                    stats.note_fsync(t.elapsed());
                    written += fr.len() as u64;
                }
            } else {
                scratch.clear();
                for fr in frames {
                    scratch.extend_from_slice(fr);
                }
                f.write_all_at(&scratch, good)?;
                written = scratch.len() as u64;
                if mode == FsyncMode::Batch {
                    let t = Instant::now();
                    f.sync_data()?;
                    stats.note_fsync(t.elapsed());
                }
            }
            Ok::<u64, io::Error>(written)
        })();
        self.scratch = scratch;
        match result {
            Ok(written) => {
                self.len += written;
                Ok(written)
            }
            Err(e) => {
                // Leave no partial frame behind (nor zeros ahead: the disk may be full); if
                // even that fails, start a fresh segment.
                let cut = self.file.as_ref().map(|f| f.set_len(good));
                if !matches!(cut, Some(Ok(()))) {
                    self.file = None;
                    self.segment += 1;
                    self.len = 0;
                } else {
                    self.len = good;
                }
                self.allocated = self.len;
                Err(e)
            }
        }
    }

    /// Lower this thread's scheduling priority by `nice` (on Linux a nice value is a thread's
    /// own). Each record's arrival and each sync's completion wake the writer; at the workers'
    /// priority the wake-up preempts an HTTP worker in the middle of a request, every time.
    /// Lower, it runs when a core is free or at the next scheduling point instead, which costs
    /// the workers fewer context switches, and records that arrive meanwhile join its next
    /// group (docs/performance.md, "The journal writer's priority").
    fn lower_priority(nice: i32) {
        if nice == 0 {
            return;
        }
        match rustix::process::nice(nice) {
            Ok(now) => tracing::debug!(nice = now, "journal writer's priority lowered"),
            Err(e) => tracing::warn!(
                error = %e,
                nice,
                "could not lower the journal writer's priority (storage.writer_nice); it runs at tally's"
            ),
        }
    }

    fn run(writer: Arc<Mutex<Writer>>, rx: mpsc::Receiver<Command>) {
        let mut pending: Vec<Command> = Vec::new();
        while let Ok(first) = rx.recv() {
            let mut guard = writer.lock().unwrap_or_else(|e| e.into_inner());
            let this: &mut Writer = &mut guard;
            pending.push(first);
            while pending.len() < this.cfg.max_group {
                match rx.try_recv() {
                    Ok(c) => pending.push(c),
                    Err(_) => break,
                }
            }
            let mut appends = Vec::new();
            for cmd in pending.drain(..) {
                match cmd {
                    Command::Append { frame, done } => appends.push((frame, done)),
                    Command::Roll(reply) => {
                        this.flush_appends(&mut appends);
                        let _ = reply.send(this.roll());
                    }
                    Command::Stop(reply) => {
                        this.flush_appends(&mut appends);
                        let _ = this.close_current();
                        this.stopped = true;
                        let _ = reply.send(());
                        return;
                    }
                }
            }
            this.flush_appends(&mut appends);
        }
    }

    fn flush_appends(&mut self, appends: &mut Vec<PendingAppend>) {
        if appends.is_empty() {
            return;
        }
        let frames: Vec<&[u8]> = appends.iter().map(|(f, _)| f.as_slice()).collect();
        let result = self.write_counted(&frames);
        for (_, done) in appends.drain(..) {
            let _ = done.send(
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| JournalError::Io(e.to_string())),
            );
        }
    }

    /// Write a group and account for it in the stats.
    fn write_counted(&mut self, frames: &[&[u8]]) -> io::Result<()> {
        let result = self.write_group(frames);
        let stats = &self.stats;
        match result {
            Ok(bytes) => {
                stats.groups.fetch_add(1, Ordering::Relaxed);
                stats
                    .records
                    .fetch_add(frames.len() as u64, Ordering::Relaxed);
                stats.bytes.fetch_add(bytes, Ordering::Relaxed);
                stats
                    .bytes_since_snapshot
                    .fetch_add(bytes, Ordering::Relaxed);
                let mut last = stats.last_error.lock().unwrap_or_else(|e| e.into_inner());
                if last.take().is_some() {
                    tracing::info!("journal writes succeed again");
                }
            }
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                let mut last = stats.last_error.lock().unwrap_or_else(|e| e.into_inner());
                if last.is_none() {
                    tracing::error!(error = %e, "journal write failed: callbacks get 503 until it recovers");
                }
                *last = Some(e.to_string());
                return Err(e);
            }
        }
        Ok(())
    }
}

impl Journal {
    /// Open the journal in `cfg.dir`, starting a fresh segment after every existing one (see
    /// [`Journal::first_segment`]): recovery may replay the older ones while this one takes
    /// new records.
    pub fn open(cfg: JournalConfig) -> io::Result<Journal> {
        let dir = cfg.dir.clone();
        fs::create_dir_all(dir.join("journal"))?;
        let last = list_numbered(&dir.join("journal"), "", ".log")?
            .last()
            .copied()
            .unwrap_or(0);
        let stats = Arc::new(JournalStats::default());
        let mut writer = Writer {
            dir: dir.clone(),
            cfg,
            segment: last + 1,
            file: None,
            len: 0,
            allocated: 0,
            grow_plainly_until: 0,
            stats: stats.clone(),
            stopped: false,
            scratch: Vec::new(),
        };
        writer.open_current()?;
        let (fsync, nice) = (writer.cfg.fsync, writer.cfg.writer_nice);
        let writer = Arc::new(Mutex::new(writer));
        let (tx, rx) = mpsc::channel();
        let shared = writer.clone();
        std::thread::Builder::new()
            .name("tally-journal".into())
            .spawn(move || {
                Writer::lower_priority(nice);
                Writer::run(shared, rx)
            })?;
        Ok(Journal {
            tx: Mutex::new(tx),
            writer,
            fsync,
            dir,
            stats,
            gate: tokio::sync::RwLock::new(()),
            first_segment: last + 1,
        })
    }

    /// The segment this journal started writing at: recovery replays the ones before it.
    pub fn first_segment(&self) -> u64 {
        self.first_segment
    }

    fn send(&self, cmd: Command) -> Result<(), JournalError> {
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(cmd)
            .map_err(|_| JournalError::Stopped)
    }

    /// Append one record and wait until it is durable (as the fsync mode defines it).
    pub async fn append(&self, record: &Record) -> Result<(), JournalError> {
        let framed = frame_record(record).map_err(|e| JournalError::Io(e.to_string()))?;
        if self.fsync == FsyncMode::Never {
            let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            if w.stopped {
                return Err(JournalError::Stopped);
            }
            return w
                .write_counted(&[&framed])
                .map_err(|e| JournalError::Io(e.to_string()));
        }
        let (done, wait) = tokio::sync::oneshot::channel();
        self.send(Command::Append {
            frame: framed,
            done,
        })?;
        wait.await.map_err(|_| JournalError::Stopped)?
    }

    /// Hold this from appending a request's events until they are applied: a snapshot waits
    /// for it, so it never cuts the journal between the two (an appended record whose events
    /// are not yet in the state the snapshot saves would be lost from both).
    pub async fn applying(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().await
    }

    /// Take a snapshot of `agg` and drop the segments (and snapshots) it makes redundant. The
    /// newest two snapshots and the segments after the older one are kept, so a damaged newest
    /// snapshot still leaves a way back.
    pub async fn snapshot(&self, agg: Arc<Aggregator>) -> io::Result<u64> {
        let started = Instant::now();
        let cut = {
            let _exclusive = self.gate.write().await;
            let (reply, wait) = mpsc::channel();
            self.send(Command::Roll(reply))
                .map_err(|e| io::Error::other(e.to_string()))?;
            wait.recv().map_err(|e| io::Error::other(e.to_string()))??
        };
        self.stats.bytes_since_snapshot.store(0, Ordering::Relaxed);
        let dir = self.dir.clone();
        let operations = agg.operation_count();
        tokio::task::spawn_blocking(move || {
            crate::snapshot::write(&snapshot_path(&dir, cut), &agg)
        })
        .await
        .map_err(io::Error::other)??;
        let snaps = list_numbered(&self.dir, "snapshot-", ".bin")?;
        if snaps.len() > 2 {
            let keep_from = snaps[snaps.len() - 2];
            for n in &snaps[..snaps.len() - 2] {
                let _ = fs::remove_file(snapshot_path(&self.dir, *n));
            }
            for n in list_numbered(&self.dir.join("journal"), "", ".log")? {
                if n < keep_from {
                    let _ = fs::remove_file(segment_path(&self.dir, n));
                }
            }
        }
        self.stats.snapshots.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            cut,
            operations,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "snapshot written"
        );
        Ok(cut)
    }

    /// The last write error, while writes fail.
    pub fn last_error(&self) -> Option<String> {
        self.stats
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Try an empty write, to find out whether a failing disk works again.
    pub async fn probe(&self) -> Result<(), JournalError> {
        self.append(&Record {
            received_ms: 0,
            events: vec![],
        })
        .await
    }

    /// Flush and stop the writer thread.
    pub fn close(&self) {
        let (reply, wait) = mpsc::channel();
        if self.send(Command::Stop(reply)).is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_torn_or_corrupt_tail_ends_the_valid_prefix() {
        let mut bytes = frame(b"one");
        bytes.extend(frame(b"two"));
        let whole = bytes.len();
        let (f, valid) = read_frames(&bytes);
        assert_eq!((f, valid), (vec![&b"one"[..], &b"two"[..]], whole));

        let mut torn = bytes.clone();
        torn.extend(&frame(b"three")[..6]);
        assert_eq!(read_frames(&torn).1, whole);

        let mut corrupt = bytes.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        let (f, valid) = read_frames(&corrupt);
        assert_eq!(f.len(), 1);
        assert_eq!(valid, frame(b"one").len());
    }

    fn sample_record() -> Record {
        use crate::event::{AttemptEvent, AttemptStatus, Channel, Event, EventBody, Kind, Phase};
        Record {
            received_ms: 1_700_000_000_123,
            events: vec![
                Event {
                    time_ms: 1_700_000_000_000,
                    body: EventBody::Operation {
                        operation_id: "op1".into(),
                        kind: Some(Kind::Messages),
                        phase: Phase::Completed,
                    },
                },
                Event {
                    time_ms: 5,
                    body: EventBody::Attempt(AttemptEvent {
                        kind: Some(Kind::Emails),
                        operation_id: Some("op1".into()),
                        resource_id: Some("m1".into()),
                        downstream_id: None,
                        attempt: Some("2".into()),
                        channel: Some(Channel::Whatsapp),
                        status: AttemptStatus::Undelivered,
                        error_code: Some(63016),
                        to: None,
                        tags: vec![("k".into(), "v".into())],
                    }),
                },
            ],
        }
    }

    #[test]
    fn the_binary_record_format_is_pinned_byte_for_byte() {
        // Changing a field or the order of an enum's variants changes these bytes: that needs
        // a new format version (see RECORD_BINARY_V1), not an edit of this test.
        let bytes = encode_record(&sample_record()).unwrap();
        // version 1 | t varint | 2 events | time, Operation(0) "op1" Some(Messages) Completed |
        // time 5, Attempt(1) Some(Emails) Some("op1") Some("m1") None Some("2") Some(Whatsapp)
        // Undelivered Some(63016) None [("k", "v")]
        assert_eq!(
            hex::encode(&bytes),
            concat!(
                "01",
                "fbd095ffbc31",
                "02",
                "80d095ffbc31",
                "00",
                "036f7031",
                "0100",
                "02",
                "05",
                "01",
                "0101",
                "01036f7031",
                "01026d31",
                "00",
                "010132",
                "0103",
                "07",
                "01a8ec03",
                "00",
                "01016b0176"
            )
        );
        assert_eq!(decode_record(&bytes).unwrap(), sample_record());
        assert_eq!(frame_record(&sample_record()).unwrap(), frame(&bytes));
        let json = serde_json::to_vec(&sample_record()).unwrap();
        assert!(
            bytes.len() * 3 < json.len(),
            "{} vs {}",
            bytes.len(),
            json.len()
        );
    }

    #[test]
    fn a_record_decoded_in_place_reads_as_the_record_itself_for_every_kind_of_event() {
        use crate::event::{
            AttemptEvent, AttemptStatus, Channel, Event, EventBody, Kind, OperationRead,
            ResourceRead,
        };
        let mut record = sample_record();
        record.events.extend([
            Event {
                time_ms: 7,
                body: EventBody::OperationRead(OperationRead {
                    operation_id: "op2".into(),
                    kind: Kind::PushNotifications,
                    status: Some(crate::rollup::OperationStatus::Canceled),
                    total: 3,
                    recipients: 2,
                    attempts: 4,
                    unaddressable: 1,
                }),
            },
            Event {
                time_ms: 8,
                body: EventBody::ResourceRead(ResourceRead {
                    kind: Kind::Emails,
                    operation_id: "op2".into(),
                    resource_id: "comms_email_01".into(),
                    status: AttemptStatus::Opened,
                    to: Some("a@example.com".into()),
                    tags: vec![("campaign".into(), "x".into())],
                }),
            },
            Event {
                time_ms: 9,
                body: EventBody::Attempt(AttemptEvent {
                    kind: None,
                    operation_id: None,
                    resource_id: None,
                    downstream_id: Some("SM0123".into()),
                    attempt: None,
                    channel: Some(Channel::Sms),
                    status: AttemptStatus::Delivered,
                    error_code: None,
                    to: Some("+15550001111".into()),
                    tags: vec![("a".into(), "".into()), ("b".into(), "c".into())],
                }),
            },
        ]);
        let bytes = encode_record(&record).unwrap();
        let Decoded::InPlace(in_place) = decode_record_in_place(&bytes).unwrap() else {
            panic!("a binary record decodes in place");
        };
        assert_eq!(in_place.received_ms, record.received_ms);
        let owned: Vec<Event> = in_place
            .events
            .into_iter()
            .map(|e| e.to_owned_event())
            .collect();
        assert_eq!(owned, record.events);
        // Cut short or with bytes after it, it is corrupt, as the owned decoder has it.
        for bad in [&bytes[..bytes.len() - 1], &[&bytes[..], &[0]].concat()[..]] {
            assert!(matches!(
                decode_record_in_place(bad),
                Err(RecordError::Corrupt(_))
            ));
            assert!(matches!(decode_record(bad), Err(RecordError::Corrupt(_))));
        }
        // A JSON record of an older tally is read whole.
        let json = serde_json::to_vec(&record).unwrap();
        assert!(matches!(
            decode_record_in_place(&json),
            Ok(Decoded::Owned(r)) if r == record
        ));
    }

    #[test]
    fn json_records_of_older_tallies_still_read_and_an_unknown_format_is_refused_by_name() {
        let json = serde_json::to_vec(&sample_record()).unwrap();
        assert_eq!(decode_record(&json).unwrap(), sample_record());
        let mut newer = encode_record(&sample_record()).unwrap();
        newer[0] = 2;
        let err = decode_record(&newer).unwrap_err();
        assert!(matches!(err, RecordError::UnknownFormat(2)), "{err}");
        assert!(err.to_string().contains("newer tally"), "{err}");
        let mut trailing = encode_record(&sample_record()).unwrap();
        trailing.push(0);
        assert!(matches!(
            decode_record(&trailing),
            Err(RecordError::Corrupt(_))
        ));

        // A segment of JSON records (as older tallies wrote) recovers; one of a newer format
        // stops recovery with the segment's name rather than skipping acknowledged callbacks.
        let dir = std::env::temp_dir().join(format!("tally-journal-json-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("journal")).unwrap();
        fs::write(segment_path(&dir, 1), frame(&json)).unwrap();
        let agg = Aggregator::new(crate::aggregator::Limits::default());
        let report = recover(&dir, &agg).expect("JSON segment recovers");
        assert_eq!((report.records, report.events), (1, 2));
        assert_eq!(agg.operation_count(), 1);
        fs::write(segment_path(&dir, 2), frame(&newer)).unwrap();
        let err = recover(&dir, &Aggregator::new(crate::aggregator::Limits::default()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("00000000000000000002.log") && err.contains("newer"),
            "{err}"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn with_fsync_never_requests_write_their_records_themselves_and_recovery_reads_them() {
        use crate::event::{Event, EventBody, Phase};
        let dir = std::env::temp_dir().join(format!("tally-journal-never-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let record = |n: u64| Record {
            received_ms: 1_000 + n,
            events: vec![Event {
                time_ms: 1_000 + n,
                body: EventBody::Operation {
                    operation_id: format!("comms_operation_{n}"),
                    kind: None,
                    phase: Phase::Processing,
                },
            }],
        };
        actix_web::rt::System::new().block_on(async {
            let j = Journal::open(small_config(&dir, FsyncMode::Never, 1 << 20)).expect("opens");
            for n in 0..3 {
                j.append(&record(n)).await.expect("appends");
            }
            assert_eq!(j.stats.records.load(Ordering::Relaxed), 3);
            j.close();
            assert!(matches!(
                j.append(&record(9)).await,
                Err(JournalError::Stopped)
            ));
        });
        let agg = Aggregator::new(crate::aggregator::Limits::default());
        let report = recover(&dir, &agg).expect("recovers");
        assert_eq!((report.records, agg.operation_count()), (3, 3));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn zeros_written_ahead_are_not_a_torn_tail_but_anything_after_them_is() {
        let dir = scratch_journal("ahead");
        let frames = segment_of_operations("comms_operation_a", 40);
        let records: u64 = frames.iter().map(|f| f.len() as u64).sum();
        actix_web::rt::System::new().block_on(async {
            let j = Journal::open(small_config(&dir, FsyncMode::Batch, 1 << 20)).expect("opens");
            for f in &frames {
                let rec = decode_record(&f[FRAME_HEADER..]).expect("decodes");
                j.append(&rec).await.expect("appends");
            }
            // The segment as a crash would leave it: the records, then the zeros made ahead.
            let open = segment_path(&dir, 1);
            assert_eq!(file_len(&open), 64 << 10, "one extension of zeros");
            fs::copy(&open, dir.join("crashed")).unwrap();
            j.close();
            assert_eq!(file_len(&open), records, "a clean close cuts the zeros off");
        });
        let crashed = fs::read(dir.join("crashed")).unwrap();
        let (valid, _) = read_frames(&crashed);
        assert_eq!(valid.len(), 40);
        fs::remove_file(dir.join("crashed")).unwrap();

        // A segment left by a crash: all its records replay, nothing is reported torn, and the
        // zeros are cut off.
        fs::write(segment_path(&dir, 1), &crashed).unwrap();
        let agg = Aggregator::new(crate::aggregator::Limits::default());
        let report = recover(&dir, &agg).expect("recovers");
        assert_eq!((report.records, report.truncated_tails), (40, 0));
        assert_eq!(agg.operation_count(), 40);
        assert_eq!(file_len(&segment_path(&dir, 1)), records);

        // A frame written past a zeroed header (a group whose first page never reached the
        // disk) is a torn tail: reported, and cut off with the zeros.
        let mut torn = crashed.clone();
        let at = records as usize + 4096;
        torn[at..at + frames[0].len()].copy_from_slice(&frames[0]);
        fs::write(segment_path(&dir, 1), &torn).unwrap();
        let agg = Aggregator::new(crate::aggregator::Limits::default());
        let report = recover(&dir, &agg).expect("recovers");
        assert_eq!((report.records, report.truncated_tails), (40, 1));
        assert_eq!(file_len(&segment_path(&dir, 1)), records);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_replay_on_any_number_of_threads_gives_every_version_the_writer_had() {
        use crate::event::Kind;
        use crate::simulate::{Config, Mix, Scenario};
        let dir = std::env::temp_dir().join(format!("tally-journal-order-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let cfg = Config {
            operations: 6,
            recipients: 300,
            mix: Mix::Events,
            kinds: vec![Kind::Messages],
            seed: 3,
            ..Config::default()
        };
        let live = Aggregator::new(crate::aggregator::Limits::default());
        actix_web::rt::System::new().block_on(async {
            let j = Journal::open(small_config(&dir, FsyncMode::Never, 256 << 10)).expect("opens");
            // Batches of one operation after another, and their events in reverse: later states
            // first, so a version counted per change would depend on the order of application.
            for i in 0..cfg.operations {
                for body in Scenario::event_batches_of(&cfg, i, 10).into_iter().rev() {
                    let mut events: Vec<Event> = crate::ingest::decode_events(&body, 5)
                        .unwrap()
                        .into_iter()
                        .flatten()
                        .collect();
                    events.reverse();
                    let rec = Record {
                        received_ms: 5,
                        events,
                    };
                    j.append(&rec).await.expect("appends");
                    for ev in &rec.events {
                        live.apply(ev, rec.received_ms);
                    }
                }
            }
            j.close();
        });
        let versions = |agg: &Aggregator| {
            let mut v: Vec<(String, u64)> = agg
                .operation_ids()
                .into_iter()
                .map(|(id, _, _)| {
                    let version = agg.operation(&id).unwrap().version;
                    (id, version)
                })
                .collect();
            v.sort();
            v
        };
        assert!(
            list_numbered(&dir.join("journal"), "", ".log")
                .unwrap()
                .len()
                > 1
        );
        for threads in [1, 2, 4] {
            let agg = Aggregator::new(crate::aggregator::Limits::default());
            recover_before(&dir, &agg, u64::MAX, &ReplayProgress::default(), threads)
                .expect("recovers");
            assert_eq!(versions(&agg), versions(&live), "{threads} threads");
        }
        let _ = fs::remove_dir_all(&dir);
    }

    /// A segment of `count` records, each one operation-level event for operation
    /// `{prefix}{i}`, framed as the journal writes them.
    fn segment_of_operations(prefix: &str, count: usize) -> Vec<Vec<u8>> {
        use crate::event::{EventBody, Kind, Phase};
        (0..count)
            .map(|i| {
                let rec = Record {
                    received_ms: 7,
                    events: vec![Event {
                        time_ms: 5,
                        body: EventBody::Operation {
                            operation_id: format!("{prefix}{i}"),
                            kind: Some(Kind::Messages),
                            phase: Phase::Processing,
                        },
                    }],
                };
                frame(&encode_record(&rec).expect("encodes"))
            })
            .collect()
    }

    /// A journal's settings for a test: small segments, groups and extensions.
    fn small_config(dir: &Path, fsync: FsyncMode, segment_bytes: u64) -> JournalConfig {
        JournalConfig {
            dir: dir.to_owned(),
            fsync,
            segment_bytes,
            preallocate_bytes: 64 << 10,
            max_group: 16,
            writer_nice: 0,
        }
    }

    fn scratch_journal(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tally-journal-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("journal")).expect("scratch dir");
        dir
    }

    /// The nice value in a thread's `stat` file: after the name in parentheses, state is the
    /// first field and nice the 17th.
    fn nice_in(stat: &Path) -> Option<i32> {
        let stat = fs::read_to_string(stat).ok()?;
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(16)?
            .parse()
            .ok()
    }

    /// The nice values of this process's threads named `name`.
    fn nice_of_threads(name: &str) -> Vec<i32> {
        let Ok(tasks) = fs::read_dir("/proc/self/task") else {
            return Vec::new();
        };
        tasks
            .flatten()
            .filter(|t| {
                fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
            })
            .filter_map(|t| nice_in(&t.path().join("stat")))
            .collect()
    }

    #[test]
    fn the_writer_thread_runs_at_the_configured_nice_increment() {
        let dir = scratch_journal("nice");
        // The writer thread starts at its creator's nice value, then adds its increment.
        let want = (nice_in(Path::new("/proc/thread-self/stat")).expect("own nice") + 3).min(19);
        let mut cfg = small_config(&dir, FsyncMode::Batch, 1 << 20);
        cfg.writer_nice = 3;
        let j = Journal::open(cfg).expect("opens");
        let mut seen = Vec::new();
        for _ in 0..100 {
            seen = nice_of_threads("tally-journal");
            if seen.contains(&want) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        j.close();
        let _ = fs::remove_dir_all(&dir);
        assert!(
            seen.contains(&want),
            "writer threads at nice {seen:?}, wanted {want}"
        );
    }

    #[test]
    fn a_corrupt_frame_ends_its_segments_replay_there_and_later_segments_still_replay() {
        let dir = scratch_journal("corrupt-mid");
        // Enough records to fill several of the replay's batches, on any number of threads.
        let first = segment_of_operations("a", 40_000);
        let second = segment_of_operations("b", 1_000);
        let keep = 25_000;
        let mut bytes: Vec<u8> = first.concat();
        let valid: usize = first[..keep].iter().map(Vec::len).sum();
        // A flipped payload byte in record `keep`: its CRC no longer matches.
        bytes[valid + FRAME_HEADER + 3] ^= 0x40;
        for threads in [1, 2, 4] {
            fs::write(segment_path(&dir, 1), &bytes).expect("writes");
            fs::write(segment_path(&dir, 2), second.concat()).expect("writes");
            let agg = Aggregator::new(crate::aggregator::Limits::default());
            let report = recover_before(&dir, &agg, u64::MAX, &ReplayProgress::default(), threads)
                .expect("recovers");
            assert_eq!(report.records, (keep + 1_000) as u64, "{threads} threads");
            assert_eq!(agg.operation_count(), keep + 1_000, "{threads} threads");
            assert_eq!(report.truncated_tails, 1, "{threads} threads");
            assert_eq!(file_len(&segment_path(&dir, 1)), valid as u64);
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_record_of_a_newer_tally_stops_the_replay_with_its_error_on_any_number_of_threads() {
        let dir = scratch_journal("newer");
        let mut frames = segment_of_operations("a", 30_000);
        // A record in a format this tally does not know, in the middle of several batches.
        frames.insert(15_000, frame(&[0x07, 1, 2, 3]));
        fs::write(segment_path(&dir, 1), frames.concat()).expect("writes");
        for threads in [1, 2, 4] {
            let agg = Aggregator::new(crate::aggregator::Limits::default());
            let err = recover_before(&dir, &agg, u64::MAX, &ReplayProgress::default(), threads)
                .expect_err("a record of a newer tally is not skipped");
            assert!(
                err.to_string().contains("newer tally"),
                "{threads} threads: {err}"
            );
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
