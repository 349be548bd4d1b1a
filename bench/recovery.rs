//! Recovery time: journal the events of RESOURCES generated resources, then time a start from
//! the journal alone, take a snapshot, and time a start from the snapshot. Each start runs in a
//! fresh process (this program again, with `--replay`), as a restarted tally would.
//!
//! `recovery RESOURCES DIR` (DIR is emptied first) prints one JSON object.
//! `recovery --replay DIR` times a recovery of an existing data directory (one a run above
//! left, or a copy of a real one) and prints one JSON object.

#[path = "procfs.rs"]
mod procfs;

use procfs::{process_cpu_seconds, rss_bytes};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tally::aggregator::{Aggregator, Limits};
use tally::event::Kind;
use tally::ingest::decode_events;
use tally::journal::{self, FsyncMode, Journal, JournalConfig, Record};
use tally::simulate::{Config, Mix, Scenario};

fn limits() -> Limits {
    Limits {
        max_resources: u64::MAX,
        ..Limits::default()
    }
}

fn open(dir: &Path) -> Journal {
    Journal::open(JournalConfig {
        dir: dir.to_owned(),
        fsync: FsyncMode::Never,
        segment_bytes: 64 << 20,
        max_group: 4096,
        writer_nice: 0,
        preallocate_bytes: 4 << 20,
    })
    .expect("journal opens")
}

fn dir_bytes(dir: &Path, pick: &dyn Fn(&str) -> bool) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if pick(&p.to_string_lossy()) {
                total += e.metadata().map_or(0, |m| m.len());
            }
        }
    }
    total
}

/// What each part of the recovered state holds, in bytes (as `examples/memory` reports it).
fn parts(agg: &Aggregator) -> serde_json::Value {
    let p = agg.memory_parts();
    serde_json::json!({
        "slots": p.slots,
        "slot_index": p.slot_index,
        "extra_attempts": p.extra_attempts,
        "links": p.links,
        "other": p.other,
    })
}

/// Time one recovery of `dir` as it is, in this process, and print it as JSON; with
/// `snapshot_after`, then snapshot the recovered state and time that too.
fn replay_only(dir: &Path, snapshot_after: bool) {
    let agg = Arc::new(Aggregator::new(limits()));
    let t = Instant::now();
    let cpu = process_cpu_seconds();
    let r = journal::recover(dir, &agg).expect("recovers");
    let (seconds, cpu_seconds) = (t.elapsed().as_secs_f64(), process_cpu_seconds() - cpu);
    let mut out = serde_json::json!({
        "resources": agg.resource_count(),
        "events": r.events,
        "records": r.records,
        "snapshot": r.snapshot,
        "recover_seconds": seconds,
        "recover_cpu_seconds": cpu_seconds,
        "rss_bytes_after": rss_bytes(),
        "parts_bytes_after": parts(&agg),
    });
    if snapshot_after {
        let seconds = actix_web::rt::System::new().block_on(async move {
            let j = open(dir);
            let t = Instant::now();
            j.snapshot(agg).await.expect("snapshot");
            j.close();
            t.elapsed().as_secs_f64()
        });
        out["snapshot_write_seconds"] = seconds.into();
    }
    println!("{out}");
}

/// Run this program on `dir` in a fresh process (`--replay DIR`, plus `extra`), as a restarted
/// tally would recover it, and return what it printed.
fn replay_in_fresh_process(dir: &Path, extra: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(std::env::current_exe().expect("own path"))
        .arg("--replay")
        .arg(dir)
        .args(extra)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("the replay process runs");
    assert!(out.status.success(), "the replay process failed");
    serde_json::from_slice(&out.stdout).expect("the replay process prints JSON")
}

fn main() {
    let mut args = std::env::args().skip(1);
    if std::env::args().nth(1).as_deref() == Some("--replay") {
        let dir = std::env::args().nth(2).expect("recovery --replay DIR");
        let snapshot_after = std::env::args().nth(3).as_deref() == Some("--snapshot-after");
        return replay_only(Path::new(&dir), snapshot_after);
    }
    let resources: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "/tmp/tally-recovery-bench".into()),
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    let cfg = Config {
        operations: resources.div_ceil(1000),
        recipients: 1000,
        mix: Mix::Events,
        kinds: vec![Kind::Messages],
        seed: 42,
        ..Config::default()
    };
    let now = 1_767_225_600_000 + 86_400_000;
    // Fill the journal as traffic would: one record per Event Streams batch of 100.
    let (resources, events, fill_s) = actix_web::rt::System::new().block_on(async {
        let agg = Aggregator::new(limits());
        let j = open(&dir);
        let t = Instant::now();
        let mut events = 0u64;
        for i in 0..cfg.operations {
            for body in Scenario::event_batches_of(&cfg, i, 100) {
                let evs: Vec<_> = decode_events(&body, now)
                    .expect("generated JSON")
                    .into_iter()
                    .flatten()
                    .collect();
                events += evs.len() as u64;
                let rec = Record {
                    received_ms: now,
                    events: evs,
                };
                j.append(&rec).await.expect("append");
                for e in &rec.events {
                    agg.apply(e, now);
                }
            }
        }
        j.close();
        (agg.resource_count(), events, t.elapsed().as_secs_f64())
    });
    let journal_bytes = dir_bytes(&dir, &|p| p.ends_with(".log"));
    // Start 1: the journal alone, in a fresh process, which then takes a snapshot.
    let r1 = replay_in_fresh_process(&dir, &["--snapshot-after"]);
    let snapshot_bytes = dir_bytes(&dir, &|p| p.ends_with(".bin"));
    // Start 2: the snapshot (and an empty tail), in another fresh process.
    let r2 = replay_in_fresh_process(&dir, &[]);
    for r in [&r1, &r2] {
        assert_eq!(r["resources"], resources, "every resource recovered: {r}");
    }
    assert!(
        r1["snapshot"].is_null(),
        "start 1 read the journal alone: {r1}"
    );
    assert!(r2["snapshot"].is_u64(), "start 2 loaded the snapshot: {r2}");
    let out = serde_json::json!({
        "resources": resources,
        "events": events,
        "fill_seconds": fill_s,
        "journal_bytes": journal_bytes,
        "recover_from_journal_seconds": r1["recover_seconds"],
        "recover_from_journal_cpu_seconds": r1["recover_cpu_seconds"],
        "journal_records_replayed": r1["records"],
        "snapshot_write_seconds": r1["snapshot_write_seconds"],
        "snapshot_bytes": snapshot_bytes,
        "recover_from_snapshot_seconds": r2["recover_seconds"],
        "recover_from_snapshot_cpu_seconds": r2["recover_cpu_seconds"],
        "snapshot_records_replayed_after": r2["records"],
    });
    println!("{out}");
}
