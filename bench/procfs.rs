//! What the benchmark programs read of their own process from `/proc` (Linux; 0 elsewhere).
//! Included by each program that needs it (`#[path]`), since each is a cargo example of its own
//! (and by the freed-memory test).

/// CPU seconds (user + system) this process has used, its threads included: unlike wall-clock
/// time, it does not depend on what else the machine is doing.
pub fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime and stime are the 12th
    // and 13th, in clock ticks of 1/100 s. Every field keeps its place (the state letter
    // counts as 0) so the indices hold.
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

/// This process's resident set now, in bytes (`VmRSS`).
#[allow(dead_code)] // not every program that includes this file reads it
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
