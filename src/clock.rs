//! Wall time, injected: the only place that reads the system clock (SigV4 skew, rotation,
//! deletion windows). Tests substitute a `ManualClock`.
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use time::OffsetDateTime;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// The current time (in UTC for [`SystemClock`]).
    fn now(&self) -> OffsetDateTime;
}

/// The real system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock standing at `start`, truncated to whole milliseconds.
    pub fn new(start: OffsetDateTime) -> Self {
        Self(Arc::new(AtomicI64::new(
            (start.unix_timestamp_nanos() / 1_000_000) as i64,
        )))
    }
    /// Move the clock forward by `d` (whole milliseconds).
    pub fn advance(&self, d: std::time::Duration) {
        self.0.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
    }
    /// Put the clock at `t`, truncated to whole milliseconds (may move it backwards).
    pub fn set(&self, t: OffsetDateTime) {
        self.0.store(
            (t.unix_timestamp_nanos() / 1_000_000) as i64,
            Ordering::SeqCst,
        );
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        let ms = self.0.load(Ordering::SeqCst);
        OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}
