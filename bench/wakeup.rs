//! What it costs one thread to wake another on this machine, with the two threads on different
//! CPUs and on the same one. This measures the machine, not tally: with `fsync = batch` each
//! group of records goes from an HTTP worker to the journal writer and back, and on a virtual
//! machine a wake-up that crosses CPUs can cost far more than the work it hands over
//! (docs/performance.md, "Wake-ups across CPUs").
//!
//! Two threads pass one byte back and forth through two pipes: every round trip is two
//! wake-ups of a thread asleep in `read`. `wakeup [ROUNDS] [ROUND_TRIPS]` runs each placement
//! for ROUNDS rounds (3) of ROUND_TRIPS round trips (20,000), the placements alternating round
//! by round so that the machine's drift falls on all alike, and prints one JSON object: per
//! placement, the mean wall time and the CPU time of both threads (from their own
//! `/proc/thread-self/schedstat`, in nanoseconds) per round trip.

use std::io::{Read, Write};
use std::time::Instant;

/// Nanoseconds the calling thread has run on a CPU.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(0)
}

fn pin(cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        let mut set = rustix::process::CpuSet::new();
        set.set(cpu);
        if let Err(e) = rustix::process::sched_setaffinity(None, &set) {
            eprintln!("wakeup: cannot pin a thread to CPU {cpu}: {e}");
            std::process::exit(1);
        }
    }
}

struct Round {
    wall_ns: f64,
    cpu_ns: f64,
}

/// `trips` round trips between this thread on `here` and a peer on `there`.
fn round(here: Option<usize>, there: Option<usize>, trips: u64) -> std::io::Result<Round> {
    let (mut to_peer_r, mut to_peer_w) = std::io::pipe()?;
    let (mut from_peer_r, mut from_peer_w) = std::io::pipe()?;
    let peer = std::thread::spawn(move || -> std::io::Result<u64> {
        pin(there);
        let start = thread_cpu_ns();
        let mut b = [0u8; 1];
        for _ in 0..trips {
            to_peer_r.read_exact(&mut b)?;
            from_peer_w.write_all(&b)?;
        }
        Ok(thread_cpu_ns() - start)
    });
    pin(here);
    let mut b = [7u8; 1];
    // One trip first, so that the peer is running and pinned before the clock starts.
    to_peer_w.write_all(&b)?;
    from_peer_r.read_exact(&mut b)?;
    let (cpu0, t0) = (thread_cpu_ns(), Instant::now());
    for _ in 1..trips {
        to_peer_w.write_all(&b)?;
        from_peer_r.read_exact(&mut b)?;
    }
    let wall = t0.elapsed().as_nanos() as f64;
    let mine = thread_cpu_ns() - cpu0;
    let theirs = peer.join().expect("the peer thread panicked")?;
    let n = (trips - 1) as f64;
    Ok(Round {
        wall_ns: wall / n,
        cpu_ns: (mine + theirs) as f64 / n,
    })
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let trips: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000)
        .max(2);
    // The CPUs this process may run on (a container may be given any of the machine's); the
    // main thread is put back on all of them after each round.
    let allowed = rustix::process::sched_getaffinity(None)?;
    let all: Vec<usize> = (0..rustix::process::CpuSet::MAX_CPU)
        .filter(|&c| allowed.is_set(c))
        .collect();
    let cpus = all.len();
    let unpin = || {
        let _ = rustix::process::sched_setaffinity(None, &allowed);
    };
    let mut placements: Vec<(&str, Option<usize>, Option<usize>)> =
        vec![("same_cpu", Some(all[0]), Some(all[0]))];
    if cpus > 1 {
        placements.push(("across_cpus", Some(all[0]), Some(all[1])));
    }
    placements.push(("as_scheduled", None, None));
    let mut results: Vec<Vec<Round>> = placements.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (i, &(_, here, there)) in placements.iter().enumerate() {
            results[i].push(round(here, there, trips)?);
            unpin();
        }
    }
    let mut out = String::from("{");
    out += &format!("\"cpus\": {cpus}, \"rounds\": {rounds}, \"round_trips_per_round\": {trips}");
    for ((name, _, _), rs) in placements.iter().zip(&results) {
        let wall: Vec<String> = rs
            .iter()
            .map(|r| format!("{:.2}", r.wall_ns / 1e3))
            .collect();
        let cpu: Vec<String> = rs
            .iter()
            .map(|r| format!("{:.2}", r.cpu_ns / 1e3))
            .collect();
        let mean = |f: fn(&Round) -> f64| rs.iter().map(f).sum::<f64>() / rs.len().max(1) as f64;
        out += &format!(
            ", \"{name}\": {{\"round_trip_us\": {:.2}, \"cpu_per_round_trip_us\": {:.2}, \
             \"cpu_per_wakeup_us\": {:.2}, \"round_trip_us_by_round\": [{}], \
             \"cpu_per_round_trip_us_by_round\": [{}]}}",
            mean(|r| r.wall_ns) / 1e3,
            mean(|r| r.cpu_ns) / 1e3,
            mean(|r| r.cpu_ns) / 2e3,
            wall.join(", "),
            cpu.join(", "),
        );
    }
    out += "}";
    println!("{out}");
    Ok(())
}
