//! The access log: one line per request, written once, when its response
//! body is done or dropped, with the body bytes that actually went out.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Response};
use http_body::{Body, Frame, SizeHint};

use crate::http::conn_idle::InFlight;
use crate::metrics::{self, TenantMetrics};
use crate::runtime::asked::{About, Asked};
use crate::runtime::body::{self, BodyAbort, ResponseBody};
use crate::runtime::visible;

/// Status logged for a request whose client left before any response
/// (nginx's convention).
const CLIENT_CLOSED: u16 = 499;

/// Set when shutdown gives up on the requests still running (the grace
/// period is over, or a second signal came): those had no response, or
/// only part of one, because the server left, not the client, and are
/// logged 503.
pub static CUT_AT_SHUTDOWN: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// What the line will say about the request.
struct Line {
    /// The tenant's series, once the request is routed.
    tenant: Option<Arc<TenantMetrics>>,
    /// Its client, method and target (clipped to `MAX_LOGGED`), shared
    /// with the lines about the request's end and its bodies.
    asked: Arc<Asked>,
    t0: Instant,
    status: u16,
    sent: u64,
    /// How long the request waited for its cold app to load.
    cold: Option<Duration>,
}

impl Line {
    /// The app the request was routed to, if named, and the request, for
    /// the lines about it.
    fn about(&self) -> About {
        let app = self.tenant.as_ref().map(|t| t.name.clone());
        About::request(app.filter(|n| !n.is_empty()), self.asked.clone())
    }

    fn write(&self) {
        let status = match self.status {
            CLIENT_CLOSED if CUT_AT_SHUTDOWN.load(Ordering::Acquire) => 503,
            CLIENT_CLOSED if self.asked.malformed() => 400,
            s => s,
        };
        let elapsed = self.t0.elapsed();
        match &self.tenant {
            Some(t) => t.finished(status, elapsed),
            None => metrics::unrouted(status),
        }
        emit(&Fields {
            peer: self.asked.peer.ip(),
            app: self.tenant.as_ref().map_or("", |t| &t.name),
            method: self.asked.method.as_str(),
            target: &self.asked.target,
            status,
            sent: self.sent,
            took: Some(elapsed),
            cold: self.cold,
        });
    }
}

/// A request head the HTTP/1 parser refused, answered by hyper itself
/// (`status`: 400, 414 or 431) before any request existed: logged and
/// counted as unrouted, with `-` for the method, target and duration it
/// never had.
pub fn refused_head(peer: IpAddr, status: u16) {
    metrics::unrouted(status);
    emit(&Fields {
        peer,
        app: "",
        method: "-",
        target: "-",
        status,
        sent: 0,
        took: None,
        cold: None,
    });
}

/// What one access line says.
struct Fields<'a> {
    peer: IpAddr,
    /// Which app answered: with many in one process, the line says.
    app: &'a str,
    method: &'a str,
    target: &'a str,
    status: u16,
    sent: u64,
    took: Option<Duration>,
    cold: Option<Duration>,
}

/// Write one access line, as text or JSON (`--log-format json`).
fn emit(f: &Fields<'_>) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    if crate::config::JSON_LOGS.load(Ordering::Relaxed) {
        // One object per line, for log shippers.
        tracing::info!(
            target: "access",
            peer = %f.peer,
            app = f.app,
            method = %clipped(f.method),
            uri = %visible(f.target),
            status = f.status,
            bytes = f.sent,
            // Always there, for log pipelines with a fixed schema: 0 for
            // a head refused before any request existed.
            duration_ms = f.took.map_or(0.0, ms),
            cold_start_ms = f.cold.map(ms),
            "access"
        );
    } else {
        let took = f
            .took
            .map_or_else(|| "-".to_owned(), |d| format!("{:.2}ms", ms(d)));
        let cold = f
            .cold
            .map(|d| format!(" cold={:.1}ms", ms(d)))
            .unwrap_or_default();
        let app_key = if f.app.is_empty() { "" } else { " app=" };
        tracing::info!(
            target: "access",
            "{} \"{} {}\" {} {} {took}{cold}{app_key}{}",
            f.peer,
            clipped(f.method),
            quotable(f.target),
            f.status,
            f.sent,
            f.app,
        );
    }
}

/// The most of a method or target a line keeps: a 70 KB target refused
/// with 431 must not make a 70 KB log line (nginx keeps about 8 KB too).
const MAX_LOGGED: usize = 8 * 1024;

/// `s`, cut to `MAX_LOGGED` bytes (on a character boundary) with a mark.
fn clipped(s: &str) -> std::borrow::Cow<'_, str> {
    if s.len() <= MAX_LOGGED {
        return s.into();
    }
    format!("{}...", &s[..s.floor_char_boundary(MAX_LOGGED)]).into()
}

/// A target as it sits between quotes in a text line: a `"` in it (which
/// hyper lets through) must not end the quoted part early, and what would
/// move or reorder the line where it is read (a bidirectional override, a
/// line separator) is spelt out as in guests' lines.
fn quotable(target: &str) -> std::borrow::Cow<'_, str> {
    let quoted: std::borrow::Cow<'_, str> = if target.contains(['"', '\\']) {
        target.replace('\\', "\\\\").replace('"', "\\\"").into()
    } else {
        target.into()
    };
    match visible(&quoted) {
        std::borrow::Cow::Borrowed(_) => quoted,
        std::borrow::Cow::Owned(spelt) => spelt.into(),
    }
}

/// A request on its way to a response; logged as 499 if dropped first.
pub struct AccessLog(Option<Line>);

impl AccessLog {
    /// Start timing a request.
    pub fn start(peer: SocketAddr, method: &Method, target: &str) -> Self {
        AccessLog(Some(Line {
            tenant: None,
            asked: Arc::new(Asked::new(
                peer,
                method.clone(),
                Arc::from(clipped(target).as_ref()),
            )),
            t0: Instant::now(),
            status: CLIENT_CLOSED,
            sent: 0,
            cold: None,
        }))
    }

    /// The request, for the lines about its end that come after this one
    /// (a `close()` that never returns, a trap, a response cut short).
    pub fn asked(&self) -> Arc<Asked> {
        match &self.0 {
            Some(line) => line.asked.clone(),
            // Not reached: the line is taken only by `finish`, which
            // consumes the log.
            None => Arc::new(Asked::new(
                SocketAddr::from(([0, 0, 0, 0], 0)),
                Method::GET,
                Arc::from("-"),
            )),
        }
    }

    /// The app (once routed) and the request, for the lines about its
    /// bodies.
    pub fn about(&self) -> About {
        self.0.as_ref().map(Line::about).unwrap_or_default()
    }

    /// The request was routed to a tenant: count it there.
    pub fn routed(&mut self, tenant: &Arc<TenantMetrics>) {
        if let Some(line) = self.0.as_mut() {
            tenant.started();
            line.tenant = Some(tenant.clone());
        }
    }

    /// The request waited `waited` for its app to load (a cold start).
    pub fn cold_start(&mut self, waited: Duration) {
        if let Some(line) = self.0.as_mut() {
            line.cold = Some(waited);
        }
    }

    /// The response, its body counted and the line written when it ends.
    pub fn finish(mut self, res: Response<ResponseBody>) -> Response<LoggedBody> {
        let mut line = self.0.take().expect("finished once");
        line.status = match res.extensions().get::<body::ClientLeft>() {
            Some(_) => CLIENT_CLOSED,
            None => res.status().as_u16(),
        };
        res.map(|body| LoggedBody {
            body,
            line: Some(line),
            ended: false,
            in_flight: None,
        })
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        if let Some(line) = &self.0 {
            line.write();
        }
    }
}

/// A response body that counts the bytes hyper takes and writes the
/// access line when it is dropped (finished, aborted or abandoned).
pub struct LoggedBody {
    body: ResponseBody,
    line: Option<Line>,
    /// hyper took the body's end.
    ended: bool,
    /// Keeps the request in flight on its connection until the body ends.
    in_flight: Option<InFlight>,
}

impl LoggedBody {
    /// Count the request as in flight on its connection until this body
    /// is done (so the connection is not idle while it streams).
    pub fn in_flight(&mut self, mut guard: InFlight) {
        if let Some(line) = &self.line {
            guard.answering(line.about());
        }
        // The head is hyper's to send: an HTTP/2 stream whose window stays
        // shut is never polled for its body at all.
        guard.client_turn();
        self.in_flight = Some(guard);
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BodyAbort;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyAbort>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = &polled {
            self.ended = true;
        }
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let (Some(data), Some(line)) = (frame.data_ref(), self.line.as_mut()) {
                line.sent += data.len() as u64;
            }
        }
        if let Some(guard) = self.in_flight.as_mut() {
            match polled {
                Poll::Pending => guard.app_turn(),
                Poll::Ready(_) => guard.client_turn(),
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(mut line) = self.line.take() {
            // A response whose head went out but whose body shutdown cut
            // short: the client has a 200 and a truncated body, which an
            // operator must not read as a success.
            let cut = !self.ended && !self.body.is_end_stream();
            if cut && CUT_AT_SHUTDOWN.load(Ordering::Acquire) {
                line.status = 503;
            }
            line.write();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_target_cannot_end_its_quotes_or_grow_the_line() {
        assert_eq!(quotable("/a\"b\\c"), "/a\\\"b\\\\c");
        assert_eq!(quotable("/plain"), "/plain");
        // A client's target cannot reorder or split the line where it is
        // read, any more than a guest's output can.
        assert_eq!(
            quotable("/x\u{202e}evil\u{2028}INFO fake\u{85}"),
            "/x\\u{202e}evil\\u{2028}INFO fake\\x85"
        );
        let long = "é".repeat(MAX_LOGGED);
        let cut = clipped(&long);
        assert!(
            cut.len() <= MAX_LOGGED + 3 && cut.ends_with("..."),
            "{}",
            cut.len()
        );
        assert_eq!(clipped("/x"), "/x");
    }
}
