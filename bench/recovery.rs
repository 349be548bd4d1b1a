//! Recovery time: journal the events of RESOURCES generated resources, then time a
//! start from the journal alone, take a snapshot, and time a start from the snapshot.
//!
//! `recovery RESOURCES DIR` (DIR is emptied first) prints one JSON object.
//! `recovery --replay DIR` times a recovery of an existing data directory (one a run above
//! left, or a copy of a real one) and prints one JSON object.

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

/// CPU seconds (user + system) this process has used: nothing else runs in it during a
/// recovery (its replay threads included), so the figure does not depend on what else the
/// machine is doing (Linux; 0 elsewhere).
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime and stime are the 12th
    // and 13th, in clock ticks of 1/100 s.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    if f.len() < 13 {
        return 0.0;
    }
    (f[11] + f[12]) / 100.0
}

/// Time one recovery of `dir` as it is.
fn replay_only(dir: &Path) {
    let agg = Aggregator::new(limits());
    let t = Instant::now();
    let cpu = process_cpu_seconds();
    let r = journal::recover(dir, &agg).expect("recovers");
    let out = serde_json::json!({
        "resources": agg.resource_count(),
        "events": r.events,
        "records": r.records,
        "snapshot": r.snapshot,
        "recover_seconds": t.elapsed().as_secs_f64(),
        "recover_cpu_seconds": process_cpu_seconds() - cpu,
    });
    println!("{out}");
}

fn main() {
    let mut args = std::env::args().skip(1);
    if std::env::args().nth(1).as_deref() == Some("--replay") {
        let dir = std::env::args().nth(2).expect("recovery --replay DIR");
        return replay_only(Path::new(&dir));
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
    let out = actix_web::rt::System::new().block_on(async move {
        // Fill the journal as traffic would: one record per Event Streams batch of 100.
        let agg = Arc::new(Aggregator::new(limits()));
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
        let fill_s = t.elapsed().as_secs_f64();
        let journal_bytes = dir_bytes(&dir, &|p| p.ends_with(".log"));

        // Start 1: the journal alone.
        let agg1 = Aggregator::new(limits());
        let t = Instant::now();
        let cpu = process_cpu_seconds();
        let r1 = journal::recover(&dir, &agg1).expect("recovers");
        let from_journal_s = t.elapsed().as_secs_f64();
        let from_journal_cpu_s = process_cpu_seconds() - cpu;
        assert_eq!(agg1.resource_count(), agg.resource_count());

        // Snapshot, then start 2: the snapshot (and an empty tail).
        let j = open(&dir);
        let t = Instant::now();
        j.snapshot(agg.clone()).await.expect("snapshot");
        let snapshot_s = t.elapsed().as_secs_f64();
        j.close();
        let snapshot_bytes = dir_bytes(&dir, &|p| p.ends_with(".bin"));
        let agg2 = Aggregator::new(limits());
        let t = Instant::now();
        let cpu = process_cpu_seconds();
        let r2 = journal::recover(&dir, &agg2).expect("recovers");
        let from_snapshot_s = t.elapsed().as_secs_f64();
        let from_snapshot_cpu_s = process_cpu_seconds() - cpu;
        assert_eq!(agg2.resource_count(), agg.resource_count());
        assert!(
            r2.snapshot.is_some(),
            "recovery loaded the snapshot: {r2:?}"
        );
        serde_json::json!({
            "resources": agg.resource_count(),
            "events": events,
            "fill_seconds": fill_s,
            "journal_bytes": journal_bytes,
            "recover_from_journal_seconds": from_journal_s,
            "recover_from_journal_cpu_seconds": from_journal_cpu_s,
            "journal_records_replayed": r1.records,
            "snapshot_write_seconds": snapshot_s,
            "snapshot_bytes": snapshot_bytes,
            "recover_from_snapshot_seconds": from_snapshot_s,
            "recover_from_snapshot_cpu_seconds": from_snapshot_cpu_s,
            "snapshot_records_replayed_after": r2.records,
        })
    });
    println!("{out}");
}
