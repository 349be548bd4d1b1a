//! The journal's group commit with and without zeros written ahead, side by side: one request
//! at a time (every append its own `fdatasync`, the case where the sync's own cost shows most),
//! through the real `Journal`, alternating the two settings round by round so that the shared
//! disk's drift falls on both alike.
//!
//! `fsync DIR [ROUNDS] [APPENDS]` (DIR is emptied first) prints one JSON object: per setting,
//! the mean time of an append (write and `fdatasync`, and the hand-offs to the writer and
//! back), the process's CPU per append, and the whole machine's CPU per append (the file
//! system's journal thread and the block layer's workers are outside the process).

#[path = "procfs.rs"]
mod procfs;

use procfs::process_cpu_seconds;
use std::path::Path;
use std::time::Instant;
use tally::event::{Event, EventBody, Kind, Phase};
use tally::journal::{FsyncMode, Journal, JournalConfig, Record};

/// CPU seconds the whole machine has spent busy (every field of /proc/stat's first line but
/// idle and iowait).
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (v.iter().sum::<f64>() - idle) / 100.0
}

fn record(i: u64) -> Record {
    Record {
        received_ms: 1_700_000_000_000 + i,
        events: vec![Event {
            time_ms: 1_700_000_000_000 + i,
            body: EventBody::Operation {
                operation_id: format!("comms_operation_{i:026}"),
                kind: Some(Kind::Messages),
                phase: Phase::Processing,
            },
        }],
    }
}

#[derive(Default)]
struct Totals {
    appends: u64,
    wall: f64,
    cpu: f64,
    machine: f64,
}

/// `appends` appends, one at a time, to a fresh journal in `dir`.
fn round(dir: &Path, preallocate_bytes: u64, appends: u64, into: &mut Totals) {
    let _ = std::fs::remove_dir_all(dir);
    let journal = Journal::open(JournalConfig {
        dir: dir.to_owned(),
        fsync: FsyncMode::Batch,
        segment_bytes: 64 << 20,
        max_group: 4096,
        writer_nice: 0,
        preallocate_bytes,
    })
    .expect("journal opens");
    let (c0, m0, t0) = (
        process_cpu_seconds(),
        machine_busy_seconds(),
        Instant::now(),
    );
    actix_web::rt::System::new().block_on(async {
        for i in 0..appends {
            journal.append(&record(i)).await.expect("appends");
        }
    });
    into.wall += t0.elapsed().as_secs_f64();
    into.cpu += process_cpu_seconds() - c0;
    into.machine += machine_busy_seconds() - m0;
    into.appends += appends;
    journal.close();
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("usage: fsync DIR [ROUNDS] [APPENDS]"));
    let rounds: u32 = args.next().map_or(6, |a| a.parse().expect("ROUNDS"));
    let appends: u64 = args.next().map_or(2000, |a| a.parse().expect("APPENDS"));
    let (mut grow, mut ahead) = (Totals::default(), Totals::default());
    for r in 0..rounds {
        // Alternate which goes first, so neither always follows the other's write-back.
        if r % 2 == 0 {
            round(&dir, 0, appends, &mut grow);
            round(&dir, 4 << 20, appends, &mut ahead);
        } else {
            round(&dir, 4 << 20, appends, &mut ahead);
            round(&dir, 0, appends, &mut grow);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let us = |x: f64, t: &Totals| (x * 1e6 / t.appends as f64 * 10.0).round() / 10.0;
    let figures = |t: &Totals| {
        serde_json::json!({
            "append_us": us(t.wall, t),
            "process_cpu_us_per_append": us(t.cpu, t),
            "machine_cpu_us_per_append": us(t.machine, t),
        })
    };
    let ratio = |a: f64, b: f64| (a / b * 1000.0).round() / 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "rounds": rounds,
            "appends_per_round": appends,
            "grow_with_each_write": figures(&grow),
            "zeros_written_ahead": figures(&ahead),
            "ahead_over_grow": {
                "append_time": ratio(ahead.wall, grow.wall),
                "process_cpu": ratio(ahead.cpu, grow.cpu),
                "machine_cpu": ratio(ahead.machine, grow.machine),
            },
        })
    );
}
