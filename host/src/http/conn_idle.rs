//! What a connection is doing: its requests in flight and when the last
//! one ended, so a connection idle for `--header-timeout` is closed over
//! either protocol (hyper's own keep-alive timer covers HTTP/1 only; an
//! HTTP/2 client answering pings would otherwise hold its slot for good).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// One connection's activity, shared by its service and its driver.
pub struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds from `opened` to the end of the last request (0: none yet).
    last_end: AtomicU64,
    /// Requests begun on the connection.
    begun: AtomicU64,
}

impl Activity {
    /// A connection just opened, with nothing begun on it.
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_end: AtomicU64::new(0),
            begun: AtomicU64::new(0),
        })
    }

    /// A request begins; it counts as in flight until the guard drops
    /// (with its response body, or with the request if it never got one).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.begun.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Whether any request began on the connection.
    pub fn began(&self) -> bool {
        self.begun.load(Ordering::Relaxed) > 0
    }

    /// When the connection will have been idle for `limit`, if nothing
    /// begins meanwhile; `None` while a request is in flight.
    pub fn idle_at(&self, limit: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_end.load(Ordering::Acquire));
        Some(self.opened + last + limit)
    }
}

/// A request in flight on its connection (see [`Activity::begin`]).
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = u64::try_from(a.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        a.last_end.fetch_max(ms, Ordering::AcqRel);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_last_request_s_end_and_not_while_one_runs() {
        let limit = Duration::from_secs(10);
        let a = Activity::new();
        assert!(!a.began());
        assert_eq!(a.idle_at(limit), Some(a.opened + limit));
        let one = a.begin();
        let two = a.begin();
        assert!(a.began());
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(one);
        assert_eq!(a.idle_at(limit), None, "one still in flight");
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(two);
        let at = a.idle_at(limit).unwrap();
        assert_eq!(at, a.opened + Duration::from_secs(35) + limit);
    }
}
