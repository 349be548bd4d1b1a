//! Start-up recovery while callbacks keep flowing.
//!
//! tally opens its listener, and a fresh journal segment, before it replays the journal. From
//! the first second of a restart a callback is verified, journalled (in the new segment, after
//! every segment being replayed, so nothing is replayed twice or missed) and acknowledged;
//! instead of being applied at once, its record waits in a bounded backlog. When the replay
//! ends the backlog is applied, each record at the time it arrived, and only then do the query
//! API and the Kafka publisher start. Because the state is a lattice, applying those records
//! after the replay gives exactly the state they would have given had they arrived later.
//!
//! The backlog is bounded by `storage.max_recovery_backlog_events`: past it a callback gets 503
//! with `Retry-After` and is not journalled (Event Streams retries it).

use crate::journal::{Record, ReplayProgress};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A callback's record accepted during recovery, waiting for the replay to end.
#[derive(Debug)]
pub struct Deferred {
    /// The callback route (`events`, `status`), for the event metrics.
    pub route: &'static str,
    pub record: Record,
}

/// Where start-up recovery is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Replaying the snapshot and the journal; callbacks go to the backlog.
    Replaying,
    /// Done: the query API and publishing are on.
    Done,
    /// Recovery failed; the process stops (what was journalled meanwhile is kept on disk).
    Failed(String),
}

/// Why a callback cannot be taken into the backlog.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("start-up recovery is still running and its backlog of {limit} events is full")]
pub struct BacklogFull {
    pub limit: u64,
}

/// The recovery state shared by the handlers, the probes, the metrics and start-up.
#[derive(Debug)]
pub struct Recovery {
    /// The replay's own figures (records, bytes, total), written by the replaying thread.
    pub progress: Arc<ReplayProgress>,
    backlog: Mutex<Option<Vec<Deferred>>>,
    /// Events reserved in the backlog (by requests appending now, or waiting there).
    reserved: AtomicU64,
    max_backlog_events: u64,
    phase: watch::Sender<Phase>,
    started: Instant,
    /// Milliseconds the recovery took, once done.
    took_ms: AtomicU64,
}

/// Room for a request's events in the backlog, held from before its journal append until it
/// is deferred; released when dropped otherwise.
pub struct Reservation<'a> {
    recovery: &'a Recovery,
    events: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.events > 0 {
            self.recovery
                .reserved
                .fetch_sub(self.events, Ordering::AcqRel);
        }
    }
}

impl Recovery {
    /// Nothing to recover (memory-only state): done from the start.
    pub fn done() -> Recovery {
        let r = Recovery::replaying(0);
        r.finish(|_| {});
        r
    }

    /// Recovery about to run, with room for `max_backlog_events` events of callbacks.
    pub fn replaying(max_backlog_events: u64) -> Recovery {
        Recovery {
            progress: Arc::new(ReplayProgress::default()),
            backlog: Mutex::new(Some(Vec::new())),
            reserved: AtomicU64::new(0),
            max_backlog_events,
            phase: watch::channel(Phase::Replaying).0,
            started: Instant::now(),
            took_ms: AtomicU64::new(0),
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase.borrow().clone()
    }

    /// True once the replay and the backlog are applied: the query API answers.
    pub fn is_done(&self) -> bool {
        *self.phase.borrow() == Phase::Done
    }

    /// Events waiting in the backlog (or reserved by requests being journalled).
    pub fn backlog_events(&self) -> u64 {
        self.reserved.load(Ordering::Acquire)
    }

    /// Time since recovery started, or what it took once done.
    pub fn elapsed(&self) -> Duration {
        match self.took_ms.load(Ordering::Acquire) {
            0 => self.started.elapsed(),
            ms => Duration::from_millis(ms),
        }
    }

    /// Before journalling a request of `events` events: `Ok(None)` once recovery is done (apply
    /// as usual), `Ok(Some(_))` with room reserved while it runs, `Err` when the backlog is full.
    pub fn reserve(&self, events: u64) -> Result<Option<Reservation<'_>>, BacklogFull> {
        if self.is_done() {
            return Ok(None);
        }
        let before = self.reserved.fetch_add(events, Ordering::AcqRel);
        let reservation = Reservation {
            recovery: self,
            events,
        };
        if before + events > self.max_backlog_events {
            return Err(BacklogFull {
                limit: self.max_backlog_events,
            });
        }
        Ok(Some(reservation))
    }

    /// After the record is durable: leave it in the backlog (`None`) while the replay runs, or
    /// hand it back to be applied now if recovery finished meanwhile.
    pub fn defer(&self, mut reservation: Reservation<'_>, item: Deferred) -> Option<Deferred> {
        let mut backlog = self.backlog.lock().unwrap_or_else(|e| e.into_inner());
        match backlog.as_mut() {
            Some(queue) => {
                // Stays reserved until applied.
                reservation.events = 0;
                queue.push(item);
                None
            }
            None => Some(item),
        }
    }

    /// The replay is over: apply the backlog with `apply` until it is empty, then turn the
    /// query API on. Requests that arrive meanwhile join the backlog until the very end, so
    /// none is left behind.
    pub fn finish(&self, mut apply: impl FnMut(Deferred)) {
        loop {
            let batch = {
                let mut backlog = self.backlog.lock().unwrap_or_else(|e| e.into_inner());
                match backlog.as_mut() {
                    Some(queue) if !queue.is_empty() => std::mem::take(queue),
                    _ => {
                        *backlog = None;
                        break;
                    }
                }
            };
            for item in batch {
                let n = item.record.events.len() as u64;
                apply(item);
                self.reserved.fetch_sub(n, Ordering::AcqRel);
            }
        }
        self.took_ms.store(
            (self.started.elapsed().as_millis() as u64).max(1),
            Ordering::Release,
        );
        self.phase.send_replace(Phase::Done);
    }

    /// Recovery failed: say why to everyone waiting.
    pub fn fail(&self, why: String) {
        self.phase.send_replace(Phase::Failed(why));
    }

    /// Wait until recovery is done (`Ok`) or failed (`Err` with the reason).
    pub async fn wait(&self) -> Result<(), String> {
        let mut rx = self.phase.subscribe();
        let phase = match rx.wait_for(|p| *p != Phase::Replaying).await {
            Ok(p) => p.clone(),
            Err(_) => return Err("recovery state dropped".into()),
        };
        match phase {
            Phase::Failed(why) => Err(why),
            _ => Ok(()),
        }
    }

    /// A guess at the seconds left, for `Retry-After`: the replay's pace so far, 1 to 30 s.
    pub fn retry_after_secs(&self) -> u64 {
        let p = &self.progress;
        let (done, total) = (
            p.bytes.load(Ordering::Relaxed),
            p.total_bytes.load(Ordering::Relaxed),
        );
        let elapsed = self.started.elapsed().as_secs_f64();
        let left = if done == 0 || total <= done {
            1.0
        } else {
            elapsed * (total - done) as f64 / done as f64
        };
        (left.ceil() as u64).clamp(1, 30)
    }

    /// The state as the probes show it.
    pub fn details(&self) -> serde_json::Value {
        let p = &self.progress;
        let (bytes, total) = (
            p.bytes.load(Ordering::Relaxed),
            p.total_bytes.load(Ordering::Relaxed),
        );
        let state = match self.phase() {
            Phase::Replaying => "replaying".to_owned(),
            Phase::Done => "done".to_owned(),
            Phase::Failed(why) => format!("failed: {why}"),
        };
        serde_json::json!({
            "state": state,
            "records": p.records.load(Ordering::Relaxed),
            "events": p.events.load(Ordering::Relaxed),
            "bytes": bytes,
            "total_bytes": total,
            "percent": p.percent(),
            "backlog_events": self.backlog_events(),
            "elapsed_seconds": self.elapsed().as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: usize) -> Record {
        Record {
            received_ms: 1,
            events: vec![
                crate::event::Event {
                    time_ms: 1,
                    body: crate::event::EventBody::Operation {
                        operation_id: "comms_operation_x".into(),
                        kind: None,
                        phase: crate::event::Phase::Processing,
                    },
                };
                n
            ],
        }
    }

    #[test]
    fn the_backlog_is_bounded_and_every_deferred_record_is_applied_before_done() {
        let r = Recovery::replaying(5);
        let a = r.reserve(3).unwrap().expect("room while replaying");
        assert!(r.reserve(3).is_err(), "3 + 3 > 5");
        assert_eq!(r.backlog_events(), 3, "a refused reservation is released");
        assert!(r
            .defer(
                a,
                Deferred {
                    route: "events",
                    record: record(3)
                }
            )
            .is_none());
        let b = r.reserve(2).unwrap().expect("room for 2 more");
        drop(b);
        assert_eq!(r.backlog_events(), 3, "a dropped reservation is released");
        let c = r.reserve(1).unwrap().expect("room");
        let mut applied = 0;
        r.finish(|d| applied += d.record.events.len());
        assert_eq!(applied, 3);
        assert!(r.is_done());
        let back = r.defer(
            c,
            Deferred {
                route: "status",
                record: record(1),
            },
        );
        assert!(
            back.is_some(),
            "after the end a record is applied by its request"
        );
        assert_eq!(r.backlog_events(), 0);
        assert!(r.reserve(100).unwrap().is_none(), "no bound once done");
    }
}
