//! What a connection is doing: its requests in flight and when the last
//! one ended, so a connection idle for `--header-timeout` is closed over
//! either protocol (hyper's own keep-alive timer covers HTTP/1 only; an
//! HTTP/2 client answering pings would otherwise hold its slot for good).
//! A request whose response waits on the client (hyper holds its bytes and
//! takes no more, as for an HTTP/2 stream whose window stays shut) does not
//! keep its connection busy: only one waiting on the app does.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::runtime::asked::About;

/// One connection's activity, shared by its service and its driver.
pub struct Activity {
    opened: Instant,
    /// Requests in flight whose next step is the app's: being handled, or
    /// a response body hyper is waiting on.
    app_turn: AtomicUsize,
    /// Milliseconds from `opened` to the last end of a request or hand-off
    /// of response bytes to hyper (0: none yet).
    last_event: AtomicU64,
    /// Requests begun on the connection.
    begun: AtomicU64,
    /// Requests in flight, whoever's turn it is.
    open: AtomicUsize,
    /// Of those, HTTP/1 requests (see [`Activity::idle_at`]).
    open_http1: AtomicUsize,
    /// An HTTP/1.0 request came: its response may end only with the close.
    close_delimited: AtomicBool,
    /// An HTTP/2 request came: the connection is HTTP/2's.
    http2: AtomicBool,
    /// The request whose response was handed to hyper last, for the line
    /// about a write that stalled (the socket knows no request).
    answering: std::sync::Mutex<Option<About>>,
}

impl Activity {
    /// A connection just opened, with nothing begun on it.
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            opened: Instant::now(),
            app_turn: AtomicUsize::new(0),
            last_event: AtomicU64::new(0),
            begun: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            open_http1: AtomicUsize::new(0),
            close_delimited: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            answering: std::sync::Mutex::new(None),
        })
    }

    /// The request whose response was handed to hyper last, if any.
    pub fn answering(&self) -> Option<About> {
        self.answering.lock().ok()?.clone()
    }

    /// A request begins; it counts as in flight until the guard drops
    /// (with its response body, or with the request if it never got one),
    /// and as the app's turn until [`InFlight::client_turn`].
    pub fn begin(self: &Arc<Self>, http2: bool) -> InFlight {
        self.begun.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::AcqRel);
        if http2 {
            self.http2.store(true, Ordering::Relaxed);
        } else {
            self.open_http1.fetch_add(1, Ordering::AcqRel);
        }
        self.app_turn.fetch_add(1, Ordering::AcqRel);
        InFlight {
            activity: self.clone(),
            app_turn: true,
            http2,
        }
    }

    /// Note that an HTTP/1.0 request came, whose response without a
    /// length ends with the connection.
    pub fn saw_http10(&self) {
        self.close_delimited.store(true, Ordering::Relaxed);
    }

    /// Whether a response on the connection may be delimited by its
    /// close: only then must a cut one end with a reset to be told apart.
    pub fn close_delimited(&self) -> bool {
        self.close_delimited.load(Ordering::Relaxed)
    }

    /// Whether a request is in flight (its response not yet all handed
    /// to hyper, or not yet taken by the client).
    pub fn in_flight(&self) -> bool {
        self.open.load(Ordering::Acquire) > 0
    }

    /// Whether any request began on the connection.
    pub fn began(&self) -> bool {
        self.begun.load(Ordering::Relaxed) > 0
    }

    /// Whether an HTTP/2 request came on the connection.
    pub fn saw_http2(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
    }

    /// When the connection will have been idle for `limit`, if nothing
    /// happens meanwhile; `None` while a request waits on the app, or an
    /// HTTP/1 response on its client: that client's stalls are bounded by
    /// the socket's write deadline and the body's watch, which tell a slow
    /// reader from a stalled one (judged here from sparse samples, 10 KB/s
    /// readers were dropped without a word). An HTTP/2 stream whose window
    /// the client keeps shut blocks neither, so it is judged here.
    pub fn idle_at(&self, limit: Duration) -> Option<Instant> {
        if self.app_turn.load(Ordering::Acquire) > 0 || self.open_http1.load(Ordering::Acquire) > 0
        {
            return None;
        }
        let last = Duration::from_millis(self.last_event.load(Ordering::Acquire));
        Some(self.opened + last + limit)
    }

    /// Something happened on the connection now (idle counts from here).
    pub fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_event.fetch_max(ms, Ordering::AcqRel);
    }
}

/// A request in flight on its connection (see [`Activity::begin`]).
pub struct InFlight {
    activity: Arc<Activity>,
    app_turn: bool,
    http2: bool,
}

impl InFlight {
    /// Bytes of the response (or its head) were handed to hyper: what
    /// happens next is the client's taking them.
    pub fn client_turn(&mut self) {
        if std::mem::replace(&mut self.app_turn, false) {
            self.activity.app_turn.fetch_sub(1, Ordering::AcqRel);
        }
        self.activity.touch();
    }

    /// The response is `about`'s: the connection's latest.
    pub fn answering(&self, about: About) {
        if let Ok(mut last) = self.activity.answering.lock() {
            *last = Some(about);
        }
    }

    /// hyper asked for more of the response and waits on the app.
    pub fn app_turn(&mut self) {
        if !std::mem::replace(&mut self.app_turn, true) {
            self.activity.app_turn.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.touch();
        self.activity.open.fetch_sub(1, Ordering::AcqRel);
        if !self.http2 {
            self.activity.open_http1.fetch_sub(1, Ordering::AcqRel);
        }
        if self.app_turn {
            self.activity.app_turn.fetch_sub(1, Ordering::AcqRel);
        }
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
        let one = a.begin(false);
        let two = a.begin(false);
        assert!(a.began());
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(one);
        assert_eq!(a.idle_at(limit), None, "one still in flight");
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(two);
        let at = a.idle_at(limit).unwrap();
        assert_eq!(at, a.opened + Duration::from_secs(35) + limit);
    }

    #[tokio::test(start_paused = true)]
    async fn an_http1_response_waiting_on_its_client_is_left_to_its_deadlines() {
        let limit = Duration::from_secs(10);
        let a = Activity::new();
        let mut r = a.begin(false);
        r.client_turn();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(a.idle_at(limit), None);
        drop(r);
        assert_eq!(
            a.idle_at(limit),
            Some(a.opened + Duration::from_secs(60) + limit)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_waiting_on_its_client_leaves_the_connection_idle() {
        let limit = Duration::from_secs(10);
        let a = Activity::new();
        let mut stalled = a.begin(true);
        let mut streaming = a.begin(true);
        tokio::time::sleep(Duration::from_secs(1)).await;
        stalled.client_turn();
        streaming.client_turn();
        // The app still owes the second its next bytes: not idle.
        streaming.app_turn();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(a.idle_at(limit), None);
        // Handed over, and the client takes nothing of either.
        streaming.client_turn();
        assert_eq!(
            a.idle_at(limit),
            Some(a.opened + Duration::from_secs(61) + limit)
        );
        drop((stalled, streaming));
        assert_eq!(
            a.idle_at(limit),
            Some(a.opened + Duration::from_secs(61) + limit)
        );
    }
}
