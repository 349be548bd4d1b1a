//! Snapshot files: the whole state as of a journal cut, so that recovery replays only the
//! segments after it (docs/architecture.md, Durability).
//!
//! Format 2 (`TALLYSN2`), written since snapshots are loaded side by side:
//!
//! ```text
//! TALLYSN2                       8 bytes of magic
//! [len u32 LE][crc32 u32 LE]'O'{operation as JSON}     one frame per operation
//! ...
//! [len u32 LE][crc32 u32 LE]'E'{"operations": n, "held": [...]}   the end frame
//! ```
//!
//! Each operation is its own checksummed frame: the writer encodes one operation at a time
//! under its shard's lock and writes it after releasing the lock, and the reader hands frames
//! to several threads that decode and restore them while it reads on, never holding the whole
//! file in memory. The end frame says how many operations came before it: a file without it,
//! or with another count, is refused as incomplete. Format 1 (`TALLYSN1`: one frame holding
//! `{"operations": [...], "held": [...]}`) is still read, never written.

use crate::aggregator::{Aggregator, HeldEntry, SnapshotState};
use crate::journal::{frame_header, NextFrame, FRAME_HEADER};
use crate::rollup::Operation;
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

const MAGIC_V1: &[u8; 8] = b"TALLYSN1";
const MAGIC_V2: &[u8; 8] = b"TALLYSN2";
const OPERATION: u8 = b'O';
const END: u8 = b'E';
/// Frames handed to a loading thread at once: enough to make the hand-off cheap, few enough to
/// keep the loading's memory small.
const BATCH_BYTES: usize = 4 << 20;

/// What the end frame holds.
#[derive(Serialize, Deserialize)]
struct End {
    operations: u64,
    held: Vec<HeldEntry>,
}

/// Write the state of `agg` to `path` (through a temporary file renamed over it once synced).
pub fn write(path: &Path, agg: &Aggregator) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let file = File::create(&tmp)?;
        let mut out = BufWriter::with_capacity(1 << 20, &file);
        write_to(&mut out, agg)?;
        out.flush()?;
        drop(out);
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    // The rename itself is durable once the directory is synced.
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Write the state of `agg` to `out`, in the current format.
pub fn write_to(out: &mut impl Write, agg: &Aggregator) -> io::Result<()> {
    out.write_all(MAGIC_V2)?;
    let operations = agg.snapshot_operations(|json| write_frame(out, OPERATION, json))?;
    let end = serde_json::to_vec(&End {
        operations,
        held: agg.snapshot_held(),
    })
    .map_err(io::Error::other)?;
    write_frame(out, END, &end)
}

fn write_frame(out: &mut impl Write, tag: u8, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len() + 1).map_err(|_| {
        io::Error::other("one operation over 4 GiB: its frame cannot say its length")
    })?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[tag]);
    crc.update(body);
    out.write_all(&frame_header(len, crc.finalize()))?;
    out.write_all(&[tag])?;
    out.write_all(body)
}

/// Restore `agg` from the snapshot at `path`, decoding on `threads` threads; `read_bytes` is
/// raised as the file is read. On an error `agg` may hold part of the snapshot: the caller
/// clears it (see [`Aggregator::restore_begin`]).
pub fn load(
    path: &Path,
    agg: &Aggregator,
    threads: usize,
    read_bytes: &AtomicU64,
) -> io::Result<()> {
    let file = BufReader::with_capacity(1 << 20, File::open(path)?);
    load_from(file, agg, threads, read_bytes)
}

/// Restore `agg` from a snapshot read from `input` (either format), as [`load`] does.
pub fn load_from(
    mut input: impl Read,
    agg: &Aggregator,
    threads: usize,
    read_bytes: &AtomicU64,
) -> io::Result<()> {
    let mut magic = [0u8; 8];
    input
        .read_exact(&mut magic)
        .map_err(|_| invalid("not a tally snapshot"))?;
    read_bytes.fetch_add(8, Ordering::Relaxed);
    agg.restore_begin();
    match &magic {
        MAGIC_V1 => load_v1(input, agg, read_bytes),
        MAGIC_V2 => load_v2(input, agg, threads.max(1), read_bytes),
        _ => Err(invalid("not a tally snapshot")),
    }
}

fn invalid(m: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m.to_owned())
}

fn load_v1(mut file: impl Read, agg: &Aggregator, read_bytes: &AtomicU64) -> io::Result<()> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    read_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    let (frames, _) = crate::journal::read_frames(&bytes);
    let payload = frames
        .first()
        .ok_or_else(|| invalid("snapshot checksum mismatch"))?;
    let state: SnapshotState =
        serde_json::from_slice(payload).map_err(|e| invalid(&e.to_string()))?;
    agg.restore(state);
    Ok(())
}

/// The next frame's payload (its tag, then its body; never empty), or `None` at the end of the
/// file.
fn next_frame(file: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    match crate::journal::next_frame(file)? {
        NextFrame::Payload(p) => Ok(Some(p)),
        NextFrame::End => Ok(None),
        NextFrame::Empty => Err(invalid("snapshot frame of length 0")),
        NextFrame::Damaged => Err(invalid("snapshot checksum mismatch (torn or damaged file)")),
    }
}

/// Read frames on this thread and restore their operations on `threads` others.
fn load_v2(
    mut file: impl Read,
    agg: &Aggregator,
    threads: usize,
    read_bytes: &AtomicU64,
) -> io::Result<()> {
    let restored = AtomicU64::new(0);
    let (tx, rx) = mpsc::sync_channel::<Vec<Vec<u8>>>(threads * 2);
    let rx = Mutex::new(rx);
    // A thread that meets a bad operation keeps draining the channel (so the reader never
    // waits on a full one) and reports the error when the reading ends.
    let restore = || -> io::Result<()> {
        let mut failed = None;
        loop {
            // The lock is released before the batch is decoded, so the threads decode together.
            let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
            let Ok(batch) = next else { break };
            for json in &batch {
                if failed.is_some() {
                    break;
                }
                match serde_json::from_slice::<Operation>(&json[1..]) {
                    Ok(op) => {
                        agg.restore_operation(op);
                        restored.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failed = Some(invalid(&format!("snapshot operation: {e}"))),
                }
            }
        }
        failed.map_or(Ok(()), Err)
    };
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads).map(|_| scope.spawn(restore)).collect();
        let mut result = read_v2(&mut file, tx, read_bytes);
        for w in workers {
            let done = w
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a snapshot loading thread panicked")));
            if let (Ok(_), Err(e)) = (&result, done) {
                result = Err(e);
            }
        }
        let end = result?.ok_or_else(|| invalid("snapshot incomplete: no end frame"))?;
        let restored = restored.load(Ordering::Relaxed);
        if restored != end.operations {
            return Err(invalid(&format!(
                "snapshot incomplete: {restored} operations read, its end frame says {}",
                end.operations
            )));
        }
        agg.restore_held(end.held);
        Ok(())
    })
}

/// Read every frame, sending operations in batches; the end frame is returned.
fn read_v2(
    file: &mut impl Read,
    tx: mpsc::SyncSender<Vec<Vec<u8>>>,
    read_bytes: &AtomicU64,
) -> io::Result<Option<End>> {
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    let mut last_log = Instant::now();
    while let Some(payload) = next_frame(file)? {
        read_bytes.fetch_add((FRAME_HEADER + payload.len()) as u64, Ordering::Relaxed);
        match payload[0] {
            OPERATION => {
                batch_bytes += payload.len();
                batch.push(payload);
                if batch_bytes >= BATCH_BYTES {
                    batch_bytes = 0;
                    if tx.send(std::mem::take(&mut batch)).is_err() {
                        return Err(io::Error::other("snapshot loading threads stopped"));
                    }
                }
            }
            END => {
                if tx.send(batch).is_err() {
                    return Err(io::Error::other("snapshot loading threads stopped"));
                }
                let end: End = serde_json::from_slice(&payload[1..])
                    .map_err(|e| invalid(&format!("snapshot end frame: {e}")))?;
                return Ok(Some(end));
            }
            other => {
                return Err(invalid(&format!(
                    "snapshot frame of unknown kind {other:#04x}"
                )))
            }
        }
        if last_log.elapsed() > Duration::from_secs(2) {
            tracing::info!(
                bytes = read_bytes.load(Ordering::Relaxed),
                "recovery: loading snapshot"
            );
            last_log = Instant::now();
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregator::Limits;
    use crate::event::Kind;
    use crate::ingest::decode_events;
    use crate::simulate::{Config, Mix, Scenario};

    const NOW: u64 = 1_767_225_600_000;

    /// Some operations of generated traffic, and one attempt held for want of a link.
    fn filled() -> Aggregator {
        let agg = Aggregator::new(Limits::default());
        let cfg = Config {
            operations: 12,
            recipients: 40,
            mix: Mix::Events,
            kinds: vec![Kind::Messages],
            seed: 7,
            ..Config::default()
        };
        for i in 0..cfg.operations {
            for body in Scenario::event_batches_of(&cfg, i, 25) {
                for ev in decode_events(&body, NOW).unwrap().into_iter().flatten() {
                    agg.apply(&ev, NOW);
                }
            }
        }
        // A classic callback that names neither its operation nor its resource: held.
        let form = [
            ("MessageSid", "SM00000000000000000000000000000001"),
            ("MessageStatus", "sent"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let held = crate::ingest::decode_form(&form, &[], NOW).unwrap();
        agg.apply(&held, NOW);
        assert_eq!(agg.census().held, 1);
        agg
    }

    /// Everything a snapshot keeps, comparable.
    fn state(agg: &Aggregator) -> (Vec<String>, String, u64) {
        let mut ops = Vec::new();
        agg.snapshot_operations(|json| {
            ops.push(String::from_utf8(json.to_vec()).unwrap());
            Ok(())
        })
        .unwrap();
        ops.sort();
        let held = serde_json::to_string(&agg.snapshot_held()).unwrap();
        (ops, held, agg.resource_count())
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tally-snapshot-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir.join("snapshot-00000000000000000003.bin")
    }

    #[test]
    fn a_snapshot_loads_on_any_number_of_threads_into_the_same_state() {
        let agg = filled();
        let path = scratch("roundtrip");
        write(&path, &agg).unwrap();
        let size = fs::metadata(&path).unwrap().len();
        for threads in [1, 2, 5] {
            let back = Aggregator::new(Limits::default());
            let read = AtomicU64::new(0);
            load(&path, &back, threads, &read).unwrap();
            assert_eq!(state(&back), state(&agg), "{threads} threads");
            assert_eq!(
                read.load(Ordering::Relaxed),
                size,
                "progress counts every byte"
            );
        }
    }

    #[test]
    fn a_format_1_snapshot_still_loads() {
        let agg = filled();
        let (ops, held, _) = state(&agg);
        let json = format!("{{\"operations\":[{}],\"held\":{held}}}", ops.join(","));
        let mut bytes = MAGIC_V1.to_vec();
        bytes.extend(crate::journal::frame(json.as_bytes()));
        let path = scratch("v1");
        fs::write(&path, bytes).unwrap();
        let back = Aggregator::new(Limits::default());
        load(&path, &back, 2, &AtomicU64::new(0)).unwrap();
        assert_eq!(state(&back), state(&agg));
    }

    #[test]
    fn a_damaged_or_cut_snapshot_is_refused() {
        let agg = filled();
        let path = scratch("damaged");
        write(&path, &agg).unwrap();
        let good = fs::read(&path).unwrap();
        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 0x20;
        fs::write(&path, &flipped).unwrap();
        let err = load(
            &path,
            &Aggregator::new(Limits::default()),
            2,
            &AtomicU64::new(0),
        );
        assert!(err.unwrap_err().to_string().contains("checksum"));
        // Cut after the last operation's frame: no end frame.
        let end_at = good.len() - end_frame_len(&good);
        fs::write(&path, &good[..end_at]).unwrap();
        let err = load(
            &path,
            &Aggregator::new(Limits::default()),
            2,
            &AtomicU64::new(0),
        );
        assert!(err.unwrap_err().to_string().contains("no end frame"));
        fs::write(&path, b"TALLYSN9").unwrap();
        let err = load(
            &path,
            &Aggregator::new(Limits::default()),
            2,
            &AtomicU64::new(0),
        );
        assert!(err
            .unwrap_err()
            .to_string()
            .contains("not a tally snapshot"));
    }

    /// The length of the last frame of a format 2 file, found by walking its frames.
    fn end_frame_len(bytes: &[u8]) -> usize {
        let mut at = MAGIC_V2.len();
        let mut last = 0;
        while at < bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            last = FRAME_HEADER + len;
            at += last;
        }
        last
    }
}
