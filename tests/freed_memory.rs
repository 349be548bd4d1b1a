//! The upkeep's give-back (`tally::return_freed_memory`): memory freed after a burst leaves the
//! resident set once it has lain free past the allocator's delay, even when nothing else is
//! allocated or freed afterwards (a quiet server). Its own process (cargo nextest runs each
//! test in one), so no other test's allocations make the purge happen by themselves.

#[path = "../bench/procfs.rs"]
#[allow(dead_code)] // the test reads the resident set only
mod procfs;

use procfs::rss_bytes;
use std::time::Duration;

#[test]
fn memory_freed_by_a_burst_leaves_the_resident_set_after_the_give_back() {
    const BURST: usize = 64 << 20;
    let before = rss_bytes();
    // A burst of small allocations, written so that they are resident, then freed.
    let blocks: Vec<Box<[u8]>> = (0..BURST / 4096)
        .map(|i| vec![i as u8; 4096].into_boxed_slice())
        .collect();
    let during = rss_bytes();
    assert!(
        during >= before + BURST as u64 / 2,
        "the burst was not resident: {before} -> {during} bytes"
    );
    drop(blocks);
    // Quiet from here on but for the give-back, once a second as the upkeep calls it.
    let mut after = rss_bytes();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(1100));
        tally::return_freed_memory();
        after = rss_bytes();
        if after < before + BURST as u64 / 4 {
            break;
        }
    }
    assert!(
        after < before + BURST as u64 / 4,
        "freed memory stayed resident: {} MB before the burst, {} MB during, {} MB 5.5 s after it",
        before / 1_000_000,
        during / 1_000_000,
        after / 1_000_000
    );
}
