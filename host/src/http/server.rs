//! The accept loop (hyper 1 via hyper-util) and the one entrance every
//! request takes: [`serve`] accepts → [`handle`] times and logs it →
//! [`respond`] runs the stages (head checks, route, the tenant's static
//! files, the body limit, the environ) and hands an `Exchange` to the
//! app's pool, run inline on the connection's task until the response
//! starts ([`call_app`]) → the response comes back whose body streams
//! from the guest. A stage that refuses returns a [`Refusal`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Result;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::Isolation;
use crate::config::{ServerConfig, TrustedPeers};
use crate::http::access::{AccessLog, LoggedBody};
use crate::http::conn_idle::Activity;
use crate::http::head_rules;
use crate::http::router::{has_dot_segment, Router};
use crate::http::write_deadline::{self, Delivered, WriteDeadline};
use crate::latin1;
use crate::runtime::body::{self, RequestBody, ResponseBody};
use crate::runtime::environ::{self, RequestInfo};
use crate::runtime::pool::AppRequest;
use crate::runtime::tenant::LoadError;
use crate::runtime::wasi_http::HttpRequest;
use crate::runtime::wsgi::{self, Exchange, ResponseReceiver};

/// Read-buffer room beyond `--max-header-bytes` (see `serve`).
const HEAD_SLACK: usize = 16 * 1024;
/// Streams a client may reset before they were even answered, at once.
const HTTP2_MAX_PENDING_RESETS: usize = 20;
/// Streams the server may reset because the client broke the protocol.
const HTTP2_MAX_ERROR_RESETS: usize = 1024;

/// How long a connection on which no request ever began is given to end
/// after it was asked to, at its idle deadline.
const NO_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// How long after `deadline` hyper's own header timer fires: after the
/// idle check's ask to close (at `deadline`), before its give-up (one
/// grace later, at least `min(deadline, NO_REQUEST_GRACE)`).
fn head_timer_margin(deadline: Duration) -> Duration {
    deadline.min(NO_REQUEST_GRACE) / 2
}

/// How much of a request body an HTTP/2 client may send before the app
/// reads it: the protocol's own initial window.
const HTTP2_STREAM_WINDOW: u32 = 64 * 1024;

/// The connection's window: room for every stream's window and one more.
/// A stream waiting for an instance holds what its client sent until the
/// app reads it; were the connection's window no larger than a stream's
/// (hyper's default: 1 MiB each), two uploads on one connection, one
/// served and one waiting for the first to end, deadlocked until the
/// stall limit answered both 408.
fn http2_connection_window(max_streams: u32) -> u32 {
    (u64::from(max_streams) + 1)
        .saturating_mul(u64::from(HTTP2_STREAM_WINDOW))
        .min((1 << 31) - 1) as u32
}

/// What the server routes requests to.
pub struct Site {
    /// The current routes; a reload swaps in a new router atomically, and
    /// requests already routed keep their app alive until they finish.
    router: RwLock<Arc<Router>>,
    /// Peers whose proxy headers set `wsgi.url_scheme`.
    pub forwarded_allow: TrustedPeers,
    /// Largest request head (431 above).
    pub max_header_bytes: usize,
    /// How long a request body or a response may make no progress
    /// (`--header-timeout`): a client that stalls is taken as gone, and
    /// frees the instance serving it.
    pub stall: Duration,
    /// TLS on every connection, when configured; replaced on SIGHUP.
    tls: RwLock<Option<TlsAcceptor>>,
}

impl Site {
    /// How long a response over `version` may wait on its client taking
    /// nothing before its body gives up. Over HTTP/1 the socket's write
    /// deadline (`write_deadline.rs`) ends a stalled client's connection
    /// at `stall`, judged by the bytes it takes; the body sees only the
    /// chunks hyper takes, one per 64 KiB or so, which a reader with a
    /// small window (4 KiB at 5 KB/s) took less often than that. So there
    /// the body's own limit is a backstop, [`body::SLOW_READER_PATIENCE`]
    /// times longer. Over HTTP/2 a stream whose window the client keeps
    /// shut blocks no socket: the body's limit is the one that applies.
    pub fn response_stall(&self, version: http::Version) -> Duration {
        if version < http::Version::HTTP_2 {
            self.stall * body::SLOW_READER_PATIENCE
        } else {
            self.stall
        }
    }

    /// A site serving `router` with the server-wide settings of `cfg`,
    /// over TLS when `tls` is given.
    pub fn new(router: Router, cfg: &ServerConfig, tls: Option<TlsAcceptor>) -> Self {
        Site {
            router: RwLock::new(Arc::new(router)),
            forwarded_allow: cfg.forwarded_allow.clone(),
            max_header_bytes: cfg.max_header_bytes,
            stall: cfg.header_timeout,
            tls: RwLock::new(tls),
        }
    }

    /// The routes in force now.
    pub fn router(&self) -> Arc<Router> {
        self.router.read().expect("router lock").clone()
    }

    /// The TLS acceptor for new connections, if TLS is on.
    pub fn tls(&self) -> Option<TlsAcceptor> {
        self.tls.read().expect("tls lock").clone()
    }

    /// Replace the certificates (SIGHUP reload); connections already open
    /// keep theirs.
    pub fn swap_tls(&self, tls: TlsAcceptor) {
        *self.tls.write().expect("tls lock") = Some(tls);
    }

    /// Replace the routes (SIGHUP reload).
    pub fn swap(&self, router: Router) {
        *self.router.write().expect("router lock") = Arc::new(router);
    }
}

/// Serve `site` on `listener` until `shutdown` resolves, then let in-flight
/// requests finish within the grace period.
pub async fn serve(
    listener: TcpListener,
    site: Arc<Site>,
    cfg: &ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let local = listener.local_addr()?;
    // HTTP/1.1 and HTTP/2 on one port: cleartext h2 is recognised by its
    // connection preface (prior knowledge), TLS would pick it by ALPN.
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        // A client may shut down its sending side after the request (as
        // `nc -N` and some health checkers do) and still wait for the
        // answer: without this, hyper would take that EOF as the
        // connection's end and drop the response.
        .half_close(true)
        // Later than the connection's own idle check (`drive`), which
        // asks an idle connection to close first: one still reading a
        // head then ends by this timer, or is dropped, and is logged.
        .header_read_timeout(cfg.header_timeout + head_timer_margin(cfg.header_timeout))
        // Room past the head limit, so hyper always reads a whole request
        // line and answers an over-long URI 414 whatever the read pattern
        // (the auto builder's protocol sniffing changes it); the head limit
        // itself is checked on the parsed head in `respond`.
        .max_buf_size(cfg.max_header_bytes.max(8192) + HEAD_SLACK);
    // No keep-alive pings: a slow reader's answer waits behind every byte
    // queued for it, so a ping timeout cut clients that were reading. A
    // silent or vanished client is found by the idle and write deadlines.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(cfg.http2_max_streams)
        .initial_stream_window_size(HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(http2_connection_window(cfg.http2_max_streams))
        // The head limit holds per stream too (checked again in `respond`).
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
        // Rapid reset (CVE-2023-44487): streams a client opens and cancels
        // still cost work; past these counts the connection is closed.
        .max_pending_accept_reset_streams(Some(HTTP2_MAX_PENDING_RESETS))
        .max_local_error_reset_streams(Some(HTTP2_MAX_ERROR_RESETS));
    // What a TLS client chose by ALPN is the protocol it must speak: a
    // connection that agreed on h2 and then sends HTTP/1.1 is refused.
    let by_alpn = Arc::new(ByAlpn {
        h2: builder.clone().http2_only(),
        h1: builder.clone().http1_only(),
    });
    let builder = Arc::new(builder);
    // Shutdown reaches every connection's driver through `stop`; once each
    // has ended (dropping its receiver), `stop_tx.closed()` resolves.
    let (stop_tx, stop) = tokio::sync::watch::channel(());
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let max_connections = connections_allowed(cfg.max_connections, nofile);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    tokio::pin!(shutdown);
    let accept_warned = crate::runtime::WarnEvery::default();
    let mut failed_accepts = 0u64;
    let (open, full) = crate::metrics::client_connections();
    let full_warned = crate::runtime::WarnEvery::default();
    loop {
        // At the connection cap, stop accepting: new clients wait in the
        // kernel backlog instead of costing memory here. Said, since every
        // tenant's clients then wait, whoever holds the connections (a
        // slowloris left no trace before).
        if slots.available_permits() == 0 {
            full.inc();
            if full_warned.due() {
                tracing::warn!(
                    "all {max_connections} client connections (--max-connections) are open: no more are accepted until one closes (new clients wait in the listen backlog), and idle ones close after --header-timeout; logged at most once a minute, rsgi_wasm_connection_limit_reached_total counts each time",
                );
            }
        }
        // The slot is taken before accepting, so the cap holds; it counts
        // as an open connection only once one is accepted.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("never closed"),
            () = &mut shutdown => break,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off
                        // instead of spinning, keep serving what is open;
                        // said once a minute with a count, not 20 times a
                        // second while it lasts.
                        failed_accepts += 1;
                        if accept_warned.due() {
                            tracing::warn!(
                                "accept failed: {e} ({failed_accepts} since this was last logged, at most once a minute); retrying every 50 ms, open connections are served"
                            );
                            failed_accepts = 0;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let slot = Slot::new(permit, &open);
                let _ = stream.set_nodelay(true);
                write_deadline::limit_unsent(&stream);
                let deadline = cfg.header_timeout;
                let Some(acceptor) = site.tls() else {
                    let stream = WriteDeadline::new(stream, deadline);
                    let delivered = stream.delivered();
                    let (activity, svc) = service(site.clone(), local, peer, false);
                    let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        drive(conn, &activity, (deadline, delivered), peer, stop).await;
                        drop(slot);
                    });
                    continue;
                };
                // The handshake runs on the connection's own task, under
                // the same deadline as a request head.
                let (site, builder, stop) = (site.clone(), builder.clone(), stop.clone());
                let by_alpn = by_alpn.clone();
                tokio::spawn(async move {
                    let until = tokio::time::Instant::now() + deadline;
                    if let Ok(true) = tokio::time::timeout_at(until, speaks_plain_http(&stream)).await {
                        tell_plain_http_to_use_tls(stream, until, peer).await;
                        return;
                    }
                    let stream = WriteDeadline::new(stream, deadline);
                    let delivered = stream.delivered();
                    let tls = match tokio::time::timeout_at(until, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            // Scanners fail handshakes all day; a refused
                            // client certificate is what an operator setting
                            // up mutual TLS needs to see.
                            if let Some(refused) = refused_client_cert(&e) {
                                let why = crate::http::tls::client_cert_refusal(refused);
                                tracing::info!(%peer, "TLS handshake refused the client certificate: {why}");
                            } else {
                                tracing::debug!(%peer, "TLS handshake failed: {e}");
                            }
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let (activity, svc) = service(site, local, peer, true);
                    let builder = match tls.get_ref().1.alpn_protocol() {
                        Some(b"h2") => &by_alpn.h2,
                        Some(b"http/1.1" | b"http/1.0") => &by_alpn.h1,
                        _ => &*builder,
                    };
                    let conn = builder.serve_connection(TokioIo::new(tls), svc).into_owned();
                    drive(conn, &activity, (deadline, delivered), peer, stop).await;
                    drop(slot);
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    crate::metrics::DRAINING.store(true, std::sync::atomic::Ordering::Release);
    tracing::info!(
        "shutting down: no new connections; waiting up to {}s for in-flight requests",
        cfg.grace.as_secs_f64()
    );
    let _ = stop_tx.send(());
    drop(stop);
    let draining = tokio::time::Instant::now();
    tokio::select! {
        () = stop_tx.closed() => {
            tracing::info!("all requests finished");
            tokio::select! {
                () = crate::runtime::finish_closed_sends(cfg.grace.saturating_sub(draining.elapsed())) => {}
                () = shutdown_signal() => tracing::warn!("second signal; not waiting for closed connections' sends"),
            }
        }
        () = tokio::time::sleep(cfg.grace) => {
            tracing::warn!("grace period over; closing remaining connections");
            crate::http::access::CUT_AT_SHUTDOWN.store(true, Ordering::Release);
        }
        // The operator asked twice (Ctrl-C again): no more waiting.
        () = shutdown_signal() => {
            tracing::warn!("second signal; closing remaining connections now");
            crate::http::access::CUT_AT_SHUTDOWN.store(true, Ordering::Release);
        }
    }
    Ok(())
}

/// Whether a connection to the TLS port opens like plain HTTP (a method's
/// first letter, in either case) instead of a TLS record (0x16).
async fn speaks_plain_http(stream: &tokio::net::TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(stream.peek(&mut first).await, Ok(1) if first[0].is_ascii_alphabetic())
}

/// Answer plain HTTP sent to the TLS port with a 400 saying so, as nginx
/// does, instead of a TLS alert a browser shows as a broken connection.
async fn tell_plain_http_to_use_tls(
    mut stream: tokio::net::TcpStream,
    until: tokio::time::Instant,
    peer: SocketAddr,
) {
    use tokio::io::AsyncWriteExt;
    const TEXT: &str = "This port speaks HTTPS: use an https:// URL.\n";
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{TEXT}",
        TEXT.len()
    );
    let _ = tokio::time::timeout_at(until, async {
        use tokio::io::AsyncReadExt;
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent (a little of it) before closing: a
        // close with unread bytes would reset the connection, and the
        // client might lose the response.
        let mut sink = [0u8; 4096];
        for _ in 0..16 {
            if stream.read(&mut sink).await? == 0 {
                break;
            }
        }
        std::io::Result::Ok(())
    })
    .await;
    crate::http::access::refused_head(peer.ip(), 400);
}

/// The client certificate's fault a failed handshake was, if it was one
/// (mutual TLS): missing, or refused by the `--ca-certs` verifier.
fn refused_client_cert(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .filter(|e| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        })
}

/// A connection's service: each request goes to `handle`, counted in the
/// connection's [`Activity`] (which [`drive`] watches) until its response
/// body is done.
fn service(
    site: Arc<Site>,
    local: SocketAddr,
    peer: SocketAddr,
    tls: bool,
) -> (
    Arc<Activity>,
    impl hyper::service::Service<
            Request<Incoming>,
            Response = Response<LoggedBody>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static,
) {
    let activity = Activity::new();
    let counted = activity.clone();
    // Which connection a request came on: an app's pool keeps one of its
    // instances from the requests of any single connection (`AppPool::serve`).
    static CONNECTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let conn = CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let svc = service_fn(move |req| {
        if req.version() <= http::Version::HTTP_10 {
            counted.saw_http10();
        }
        let in_flight = counted.begin(req.version() == http::Version::HTTP_2);
        let answer = handle(site.clone(), req, (local, peer, tls, conn));
        async move {
            let mut res = answer.await?;
            res.body_mut().in_flight(in_flight);
            Ok(res)
        }
    });
    (activity, svc)
}

/// One of the `--max-connections` slots, held by a connection until it
/// ends, and counted in `rsgi_wasm_open_connections` meanwhile.
struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    open: prometheus_client::metrics::gauge::Gauge,
}

impl Slot {
    fn new(
        permit: tokio::sync::OwnedSemaphorePermit,
        open: &prometheus_client::metrics::gauge::Gauge,
    ) -> Self {
        open.inc();
        Slot {
            _permit: permit,
            open: open.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// The connection builders for TLS connections whose client chose a
/// protocol by ALPN.
struct ByAlpn {
    h2: auto::Builder<TokioExecutor>,
    h1: auto::Builder<TokioExecutor>,
}

/// Serve one connection to its end. Once it has had no request in flight
/// for `deadline` (since it opened: hyper's header timeout starts only once
/// it knows the protocol, from the first bytes, so a client that sends
/// nothing, or part of the HTTP/2 preface, would otherwise hold its
/// connection slot for good; or since its last response ended: an HTTP/2
/// client answering pings would hold it too), or when the server shuts
/// down (`stop`), it is ended gracefully: HTTP/2 gets a GOAWAY (RFC 9113
/// §9.1), so a client whose request crosses the close knows it was not
/// taken, and HTTP/1 closes between requests. One that does not end
/// within another `deadline` is dropped. A client still taking bytes
/// (`delivered`) is not idle, however long ago they were written.
async fn drive<C>(
    conn: C,
    activity: &Activity,
    (deadline, delivered): (Duration, Delivered),
    peer: SocketAddr,
    mut stop: tokio::sync::watch::Receiver<()>,
) where
    C: GracefulConnection<Error = Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(conn);
    // A graceful end was asked for (shutdown, or idle).
    let mut asked = false;
    // Asked for being idle, with no request in flight: an HTTP/1
    // connection that does not end at once is reading a head.
    let mut asked_idle = false;
    // Idle, it was asked to end; dropped if it has not by then.
    let mut give_up: Option<tokio::time::Instant> = None;
    // What the client had taken by two moments: `base`, at least half a
    // deadline before `recent`, so progress is judged over that long
    // whenever the connection is looked at, from what waited for it at
    // `base`.
    let start = (delivered.so_far(), tokio::time::Instant::now());
    let (mut base, mut recent) = (start, start);
    // Seen taking bytes after the deadline: while its responses are in
    // flight it may pause longer (its window reopens rarely).
    let mut reading = false;
    // When to look again at a client that bytes wait for, which no sample
    // before saw waiting: whether it takes them is yet to be seen.
    let mut recheck: Option<tokio::time::Instant> = None;
    let ended = loop {
        let limit = if reading && activity.in_flight() {
            deadline * body::SLOW_READER_PATIENCE
        } else {
            deadline
        };
        let check = give_up.or(recheck).unwrap_or_else(|| {
            activity
                .idle_at(limit)
                .unwrap_or_else(|| tokio::time::Instant::now() + deadline)
        });
        tokio::select! {
            ended = &mut conn => break ended,
            _ = stop.changed(), if !asked => {
                // Requests in flight finish: the server waits for them up
                // to its grace period.
                conn.as_mut().graceful_shutdown();
                asked = true;
            }
            () = tokio::time::sleep_until(check) => {
                if give_up.is_some() {
                    if activity.in_flight() {
                        // Its responses' clients took nothing: the one
                        // place such a cut is told (the body's watch and
                        // the socket's deadline log their own).
                        tracing::info!(%peer, "response cut short: the connection was idle (its client took nothing) and did not end {deadline:?} after it was asked to; dropped");
                    } else if asked_idle && !activity.saw_http2() {
                        head_not_complete(peer, deadline);
                    } else {
                        tracing::debug!(%peer, "did not end {deadline:?} after it was asked to; dropped");
                    }
                    return;
                }
                recheck = None;
                // A slow reader whose flow-control window opens less often
                // than the deadline (hyper handed it all the window allowed
                // long ago) is still taking bytes: more than control frames.
                let now = (delivered.so_far(), tokio::time::Instant::now());
                if now.1 >= recent.1 + deadline / 2 {
                    (base, recent) = (recent, now);
                }
                let taking = matches!((now.0, base.0), (Some(n), Some(b)) if b.drained_by(&n) > write_deadline::MIN_PROGRESS);
                if activity.idle_at(limit).is_some_and(|at| at <= tokio::time::Instant::now()) {
                    if taking && !asked {
                        activity.touch();
                        reading = true;
                        continue;
                    }
                    // Bytes wait in the socket for the client, and the
                    // sample before saw none waiting (the first, from
                    // before the response): look again in half a deadline
                    // for it taking them. A client that took what it was
                    // sent at once (its window then shut) has none waiting.
                    let unseen = matches!((now.0, base.0), (Some(n), Some(b))
                        if n.waiting() > write_deadline::MIN_PROGRESS && b.waiting() <= write_deadline::MIN_PROGRESS);
                    if unseen && !asked {
                        (base, recent) = (now, now);
                        recheck = Some(now.1 + deadline / 2);
                        continue;
                    }
                    if asked {
                        return;
                    }
                    if activity.began() {
                        tracing::debug!(%peer, "idle for {deadline:?}; connection closed");
                    } else {
                        tracing::debug!(%peer, "no request within {deadline:?}; connection closed");
                    }
                    conn.as_mut().graceful_shutdown();
                    asked = true;
                    asked_idle = true;
                    // With no request ever begun nothing is in flight to
                    // finish: time to read the GOAWAY, no more (a client
                    // that never sent its HTTP/2 preface, over TLS with h2
                    // by ALPN, gets none and was held a whole deadline).
                    let grace = if activity.began() {
                        deadline
                    } else {
                        deadline.min(NO_REQUEST_GRACE)
                    };
                    give_up = Some(tokio::time::Instant::now() + grace);
                }
            }
        }
    };
    if let Err(e) = ended {
        let hyper_error = e.downcast_ref::<hyper::Error>();
        if asked_idle && hyper_error.is_some_and(hyper::Error::is_timeout) {
            head_not_complete(peer, deadline);
            return;
        }
        // A response body cut short (the app failed after its head, the
        // body fell short of its length): over HTTP/1 the connection ends
        // there, and a reset rather than an orderly close keeps a response
        // delimited by the close (HTTP/1.0's, and so nginx's by default)
        // from looking whole. HTTP/1.1's are chunked or have a length, so
        // an orderly close tells the client as much, and loses nothing
        // still queued for it.
        if activity.close_delimited() && hyper_error.is_some_and(hyper::Error::is_user) {
            delivered.reset_at_close();
        }
        match hyper_error.and_then(parser_answer) {
            Some(status) => crate::http::access::refused_head(peer.ip(), status),
            // The socket's write deadline (`write_deadline.rs`) can end a
            // stalled response before its body's own watch does: the
            // operator hears of it either way.
            None => match write_stalled(&*e) {
                // HTTP/1 answers one request at a time: the one answered
                // last is the one cut, named as the body's own lines are.
                Some(why) => match activity.answering().filter(|_| !activity.saw_http2()) {
                    Some(about) => about.info(&format!("response cut short: {why}")),
                    None => tracing::info!(%peer, "response cut short: {why}"),
                },
                None => tracing::debug!(%peer, "connection ended: {e}"),
            },
        }
    }
}

/// A client that began a request head (or an HTTP/2 preface) and did not
/// finish it within `deadline`: a slow-headers attack holds connection
/// slots this way, so each is logged and counted, as a 408 (nothing is
/// sent: hyper has no way to answer a head it has not read).
fn head_not_complete(peer: SocketAddr, deadline: Duration) {
    tracing::info!(%peer, "no complete request head within {deadline:?} (--header-timeout): connection closed, nothing answered");
    crate::http::access::refused_head(peer.ip(), 408);
}

/// The write deadline's error in `e`'s chain, if that is what ended it.
fn write_stalled<'e>(e: &'e (dyn std::error::Error + 'static)) -> Option<&'e std::io::Error> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return (io.kind() == std::io::ErrorKind::TimedOut).then_some(io);
        }
        cause = c.source();
    }
    None
}

/// The status hyper's HTTP/1 parser answered a head it refused with (its
/// `on_error`), so the request it never became is logged and counted too;
/// `None` where it sent nothing (an HTTP/2 preface on an HTTP/1-only
/// connection, its own internal error).
fn parser_answer(e: &hyper::Error) -> Option<u16> {
    if !e.is_parse() || e.is_parse_version_h2() || e.is_parse_status() {
        return None;
    }
    // The two too-large kinds and the internal one have no predicate of
    // their own; their messages are hyper's fixed descriptions.
    let what = e.to_string();
    if e.is_parse_too_large() {
        return Some(if what.starts_with("URI") { 414 } else { 431 });
    }
    (!what.starts_with("internal")).then_some(400)
}

/// Resolves on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    Stop::install()
        .expect("installing the SIGINT, SIGTERM and SIGQUIT handlers")
        .recv()
        .await
}

/// SIGINT, SIGTERM and SIGQUIT (gunicorn's quick shutdown, which by
/// default would kill the process and its requests with it), caught from
/// the moment this exists. Made before a
/// long start (a compile, `--preload`): a signal then is seen when the
/// start looks, instead of killing the process by the default action,
/// leaving its scratch directories, or, as a container's PID 1, being
/// ignored until the start is over.
pub struct Stop {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Stop {
    /// Catch the signals now.
    pub fn install() -> anyhow::Result<Stop> {
        use anyhow::Context;
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Stop {
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            quit: signal(SignalKind::quit()).context("installing the SIGQUIT handler")?,
        })
    }

    /// The next of them (at once if one came since the last call).
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {},
            _ = self.term.recv() => {},
            _ = self.quit.recv() => {},
        }
    }
}

/// A request the host answers itself, before or instead of an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The status sent.
    pub status: StatusCode,
    /// The page's one line.
    pub text: &'static str,
    /// Close the connection after it: the request body was not read.
    pub close: bool,
}

impl Refusal {
    fn new(status: StatusCode, text: &'static str) -> Self {
        Refusal {
            status,
            text,
            close: true,
        }
    }

    fn into_response(self) -> Response<ResponseBody> {
        let mut res = body::host_page(self.status, self.text);
        if self.close {
            res.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        res
    }
}

/// `--max-connections`, lowered (with a warning) to a quarter of the
/// process's open-file limit `nofile`: each connection holds a descriptor,
/// guests' own files get half and `serve`'s loaded apps a quarter, and
/// past the limit accepts fail for every tenant, its clients left waiting.
fn connections_allowed(max: usize, nofile: Option<u64>) -> usize {
    let Some(nofile) = nofile else { return max };
    let fit = usize::try_from(nofile / 4).unwrap_or(usize::MAX).max(1);
    if fit >= max {
        return max;
    }
    tracing::warn!(
        "--max-connections {max} lowered to {fit}: each client connection holds an open file, and this \
         process may open {nofile}, a quarter of them for connections (guests' own files get half); \
         raise the limit (`ulimit -n`, systemd's LimitNOFILE=65536) to accept more at once"
    );
    fit
}

/// The one entrance of every request: answer it, and log it once when
/// its response is done.
async fn handle(
    site: Arc<Site>,
    req: Request<Incoming>,
    conn: Connection,
) -> Result<Response<LoggedBody>, Infallible> {
    let peer = conn.1;
    let (parts, body) = req.into_parts();
    let (version, head) = (parts.version, parts.method == Method::HEAD);
    let mut log = AccessLog::start(
        peer,
        &parts.method,
        &environ::raw_target(&parts.uri, parts.version),
    );
    let res = respond(&site, parts, body, conn, &mut log)
        .await
        .unwrap_or_else(Refusal::into_response);
    let stall = site.response_stall(version);
    let about = log.about();
    let res = res.map(|body| body.stalling_after(stall).about(about));
    Ok(log.finish(close_delimited(version, head, res)))
}

/// An HTTP/1.0 response of unknown length ends when the connection
/// closes; say so, or hyper answers a keep-alive request with
/// `connection: keep-alive` and then closes anyway. The head is marked
/// HTTP/1.0 too, as hyper reads that as "close" and adds no `keep-alive`.
fn close_delimited(
    version: http::Version,
    head: bool,
    mut res: Response<ResponseBody>,
) -> Response<ResponseBody> {
    use hyper::body::Body as _;
    if version != http::Version::HTTP_10 {
        return res;
    }
    let unsized_body = !head
        && wsgi::body_allowed(res.status())
        && !res.headers().contains_key(http::header::CONTENT_LENGTH)
        && res.body().size_hint().exact().is_none();
    if unsized_body {
        *res.version_mut() = http::Version::HTTP_10;
        res.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    res
}

/// A wasi:http request cannot carry a mount point (`SCRIPT_NAME`): below
/// a `path_prefix`, the guest gets the path after it, as a proxy that
/// strips a prefix passes it, and the prefix in `X-Forwarded-Prefix`
/// (replacing any the client sent), which apps may opt in to (Werkzeug's
/// `ProxyFix(x_prefix=1)`).
fn below_prefix(parts: &mut http::request::Parts, prefix: &str) {
    const FORWARDED_PREFIX: &str = "x-forwarded-prefix";
    if prefix.is_empty() {
        return;
    }
    let Some(rest) = latin1::encode(prefix)
        .and_then(|p| environ::after_prefix(parts.uri.path(), &p).map(str::to_owned))
    else {
        return;
    };
    let rest = if rest.is_empty() {
        "/".to_owned()
    } else {
        rest
    };
    let target = match parts.uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest,
    };
    let mut uri = parts.uri.clone().into_parts();
    uri.path_and_query = http::uri::PathAndQuery::try_from(target).ok();
    if let Ok(rewritten) = http::Uri::from_parts(uri) {
        parts.uri = rewritten;
    }
    parts.headers.remove(FORWARDED_PREFIX);
    if let Ok(value) = http::HeaderValue::from_str(prefix) {
        parts.headers.insert(FORWARDED_PREFIX, value);
    }
}

/// The stages a request passes, in order; each may refuse it.
/// Where a request came from: the local and peer addresses, whether over
/// TLS, and the connection's number.
type Connection = (SocketAddr, SocketAddr, bool, u64);

/// The refusal of a path a proxy in front may route to another app: one
/// message for both readings, as `/%2Fapi` decodes to `//api`.
const AMBIGUOUS_PATH: &str = "Bad Request: an encoded `/` (%2F) or an empty segment (`//`) in a path routed by its prefix, which a proxy in front may route to another app";

/// How proxies in front may read a path other than decoded (`decoded`
/// from `raw`): an encoded slash kept inside its segment (Envoy's and
/// HAProxy's default), and runs of slashes merged (nginx's
/// `merge_slashes`).
fn other_readings(raw: &str, decoded: &str) -> Vec<String> {
    let mut readings = Vec::new();
    if raw_has_encoded_slash(raw) {
        let kept = keep_encoded_slashes(raw);
        readings.push(environ::decoded_path(&kept).into_owned());
    }
    if decoded.contains("//") {
        let mut merged = String::with_capacity(decoded.len());
        for c in decoded.chars() {
            if !(c == '/' && merged.ends_with('/')) {
                merged.push(c);
            }
        }
        readings.push(merged);
    }
    readings
}

/// Whether a raw path has an encoded slash (`%2F`, any case).
fn raw_has_encoded_slash(raw: &str) -> bool {
    raw.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1] == b'2' && w[2].eq_ignore_ascii_case(&b'f'))
}

/// `raw` with each encoded slash escaped again, so decoding leaves it
/// `%2F` inside its segment (no prefix has a `%`).
fn keep_encoded_slashes(raw: &str) -> String {
    raw.replace("%2F", "%252F").replace("%2f", "%252f")
}

async fn respond(
    site: &Site,
    parts: http::request::Parts,
    body: Incoming,
    (local, peer, tls, conn): Connection,
    log: &mut AccessLog,
) -> Result<Response<ResponseBody>, Refusal> {
    check_head(&parts, site.max_header_bytes)?;
    let router = site.router();
    // Routes match the decoded path, the one PATH_INFO is cut from.
    let path = environ::decoded_path(parts.uri.path());
    // No app's limits to drain a body by: hyper closes the connection when
    // it is left unread, so say so.
    let unrouted = |status, text| {
        use hyper::body::Body as _;
        let close = parts.version < http::Version::HTTP_2 && !body.is_end_stream();
        Refusal {
            status,
            text,
            close,
        }
    };
    // Browsers and proxies remove dot segments before they send a path; a
    // proxy in front would send `/api/v2/../x` to the app at `/api`, not
    // `/api/v2`, and its rules for one would not hold for the other.
    if router.prefixed() && has_dot_segment(&path) {
        return Err(unrouted(
            StatusCode::BAD_REQUEST,
            "Bad Request: `.` or `..` segments in a path routed by its prefix",
        ));
    }
    let route = router.route(host_of(&parts), &path);
    // Where a proxy in front may read the path otherwise and so route it
    // to another app than this one would, its rules for one app would
    // hold for another: refused, as dot segments are.
    if router.prefixed() {
        for other in other_readings(parts.uri.path(), &path) {
            let theirs = router.route(host_of(&parts), &other);
            if route.map(|r| r as *const _) != theirs.map(|r| r as *const _) {
                return Err(unrouted(StatusCode::BAD_REQUEST, AMBIGUOUS_PATH));
            }
        }
    }
    let route = route.ok_or_else(|| {
        unrouted(
            StatusCode::NOT_FOUND,
            "Not Found: no app is configured for this host and path",
        )
    })?;
    log.routed(route.app.metrics());
    let tenant = route.app.clone();
    let tenant_name = tenant.metrics().name.clone();
    let asked = log.asked();
    let about = log.about();
    let max_body = tenant.limits().max_body;
    let version = parts.version;
    let http1 = version < http::Version::HTTP_2;
    let expects = parts.headers.contains_key(http::header::EXPECT);
    // A body no app reads is drained, as an app's unread one is, so the
    // HTTP/1 connection goes on (or says it will not).
    let unread = |body, mut res| {
        let mut body = RequestBody::new(body, max_body, site.stall).about(about.clone());
        if http1 {
            body = body.over_http1(expects);
        }
        body.mark(&mut res);
        res
    };
    if let Some(res) = route
        .statics
        .serve(&parts, site.response_stall(version))
        .await
    {
        return Ok(unread(body, res));
    }
    check_length(&parts, max_body)?;
    // As gunicorn does: the connection's scheme, unless a trusted proxy
    // says what its client used (one that re-encrypts to us may say http).
    let own_scheme = if tls { "https" } else { "http" };
    let url_scheme = if site.forwarded_allow.contains(peer.ip()) {
        environ::forwarded_scheme(&parts.headers).unwrap_or(own_scheme)
    } else {
        own_scheme
    };
    let connect = parts.method == Method::CONNECT;
    let head = parts.method == Method::HEAD;
    let request = if tenant.wasi_http() {
        // A wasi:http guest builds its environ itself, from the request as
        // any wasi:http host passes it (no mount point, no client address).
        let mut parts = parts;
        below_prefix(&mut parts, &route.prefix);
        AppRequest::WasiHttp(Box::new(HttpRequest {
            parts,
            https: url_scheme == "https",
            local,
        }))
    } else {
        AppRequest::Wsgi(environ::build(&RequestInfo {
            method: &parts.method,
            uri: &parts.uri,
            path: &path,
            version: parts.version,
            headers: &parts.headers,
            local,
            peer,
            script_name: &route.prefix,
            url_scheme,
            run_once: tenant.limits().isolation == Isolation::Request,
        }))
    };
    drop(router);
    // A cold app is loaded here; this request and those arriving meanwhile
    // wait for that one load.
    let (pool, cold) = match tenant.pool().await {
        Ok(loaded) => loaded,
        Err(LoadError::Failed { retry_in, .. }) => {
            // The failure is remembered: say when a retry can succeed.
            let mut res = body::host_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable: the app could not be started",
            );
            let secs = retry_in.as_secs_f64().ceil().max(1.0) as u64;
            res.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
            return Ok(unread(body, res));
        }
        Err(e) => {
            let page = Refusal {
                status: StatusCode::SERVICE_UNAVAILABLE,
                text: match e {
                    LoadError::Busy { .. } => "Service Unavailable: server busy, retry shortly",
                    _ => "Service Unavailable: the app is starting, retry shortly",
                },
                close: false,
            };
            return Ok(unread(body, page.into_response()));
        }
    };
    if let Some(waited) = cold {
        log.cold_start(waited);
    }
    let stall = site.stall;
    let mut body = RequestBody::new(body, max_body, stall).about(about);
    if http1 {
        body = body.over_http1(expects);
    }
    let response_stall = site.response_stall(version);
    let (ex, response) = Exchange::new((tenant_name, asked), body, head, response_stall);
    let call = async move {
        pool.serve(request, ex, conn).await;
        // Idle time counts from the end of the last response.
        tenant.touch();
    };
    Ok(match call_app(call, response).await {
        Some(res) if connect && res.status().is_success() => no_tunnel(res),
        Some(res) => res,
        // The pool always answers before dropping the exchange; this is a
        // panic in the serving task.
        None => body::host_page(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
    })
}

/// The request head fits `--max-header-bytes` and RFC 9112's rules.
fn check_head(parts: &http::request::Parts, max_header_bytes: usize) -> Result<(), Refusal> {
    // hyper bounds its read buffer, not the head itself (a head that
    // arrives in one read can exceed it), so check the parsed size too.
    let head_size: usize = parts
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + environ::raw_target(&parts.uri, parts.version).len()
        + parts.method.as_str().len();
    if head_size > max_header_bytes {
        return Err(Refusal::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "Request Header Fields Too Large",
        ));
    }
    head_rules::check(parts).map_err(|e| Refusal::new(e.status, e.reason))
}

/// The host name the request is for, without port or a final dot: `Host`,
/// as the app's `HTTP_HOST` (an HTTP/1 absolute target naming another host
/// was refused by `head_rules`), else the target's authority (HTTP/2's
/// `:authority`, an HTTP/1.0 absolute target).
fn host_of(parts: &http::request::Parts) -> Option<&str> {
    parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .map(|h| {
            let name = environ::split_host(h).0;
            name.strip_suffix('.').unwrap_or(name)
        })
}

/// A declared length over the limit is refused before the app runs and
/// before `100 Continue` would invite the body.
fn check_length(parts: &http::request::Parts, max_body: u64) -> Result<(), Refusal> {
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body too large",
        ));
    }
    Ok(())
}

/// Run the guest right here on the connection's task: most responses
/// (start plus a body that fits the channel) finish within this poll, with
/// no task spawned and no cross-thread wake-up. Only if the response has
/// started while the guest still streams does the call move to its own
/// task, so hyper can send the body meanwhile.
async fn call_app(
    call: impl Future<Output = ()> + Send + 'static,
    mut response: ResponseReceiver,
) -> Option<Response<ResponseBody>> {
    let mut call = Inline::new(call);
    tokio::select! {
        biased;
        () = call.run() => response.await.ok(),
        res = &mut response => {
            call.detach();
            res.ok()
        }
    }
}

/// The app said yes to a CONNECT, but a WSGI app cannot tunnel: send its
/// status and headers without body framing (RFC 9110 §9.3.6 forbids it on a
/// 2xx to CONNECT) and no body, and let hyper close the connection, since
/// no tunnel follows. Dropping the body ends the app's streaming.
fn no_tunnel(res: Response<ResponseBody>) -> Response<ResponseBody> {
    let mut res = res.map(|_| ResponseBody::empty());
    let h = res.headers_mut();
    h.remove(http::header::CONTENT_LENGTH);
    h.remove(http::header::TRANSFER_ENCODING);
    res
}

/// A request's guest call, polled inline by the connection task until it
/// has to continue on its own: then, or if the connection goes away first,
/// it is spawned, so a started call always runs to the end (the app's
/// `close()` is called, the instance goes back to the pool).
struct Inline {
    call: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Inline {
    fn new(call: impl Future<Output = ()> + Send + 'static) -> Self {
        Inline {
            call: Some(Box::pin(call)),
        }
    }

    /// Poll the call here until it completes.
    async fn run(&mut self) {
        std::future::poll_fn(|cx| match self.call.as_mut() {
            Some(call) => {
                let done = call.as_mut().poll(cx);
                if done.is_ready() {
                    self.call = None;
                }
                done
            }
            None => std::task::Poll::Ready(()),
        })
        .await
    }

    /// Let the call finish on its own task.
    fn detach(&mut self) {
        if let Some(call) = self.call.take() {
            // Dropped outside a runtime only at process exit: nothing to run on.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(call);
            }
        }
    }
}

impl Drop for Inline {
    fn drop(&mut self) {
        self.detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_lowered_to_a_quarter_of_the_open_file_limit() {
        assert_eq!(connections_allowed(10_000, Some(65_536)), 10_000);
        assert_eq!(connections_allowed(10_000, None), 10_000);
        assert_eq!(connections_allowed(10_000, Some(1024)), 256);
        assert_eq!(connections_allowed(100, Some(1024)), 100);
        assert_eq!(connections_allowed(10, Some(2)), 1);
    }

    fn parts(req: http::request::Builder) -> http::request::Parts {
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn head_stage_refuses_oversized_and_malformed_heads() {
        let ok = parts(Request::get("/a").header("host", "x"));
        assert_eq!(check_head(&ok, 1024), Ok(()));
        let big = parts(
            Request::get("/a")
                .header("host", "x")
                .header("x-big", "y".repeat(2000)),
        );
        let r = check_head(&big, 1024).unwrap_err();
        assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert!(
            r.close,
            "the unread body would be taken for the next request"
        );
        // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400.
        let no_host = parts(Request::get("/a").version(http::Version::HTTP_11));
        assert_eq!(
            check_head(&no_host, 1024).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn length_stage_refuses_declared_bodies_over_the_limit() {
        let at = parts(Request::post("/").header("content-length", "10"));
        assert_eq!(check_length(&at, 10), Ok(()));
        let over = parts(Request::post("/").header("content-length", "11"));
        let r = check_length(&over, 10).unwrap_err();
        assert_eq!((r.status, r.close), (StatusCode::PAYLOAD_TOO_LARGE, true));
        // Chunked bodies are counted as they are read instead.
        let chunked = parts(Request::post("/").header("transfer-encoding", "chunked"));
        assert_eq!(check_length(&chunked, 10), Ok(()));
    }

    #[test]
    fn route_stage_takes_the_host_without_port_from_either_place() {
        let p = parts(Request::get("/").header("host", "Example.com:8080"));
        assert_eq!(host_of(&p), Some("Example.com"));
        let p = parts(Request::get("http://[::1]:80/x"));
        assert_eq!(host_of(&p), Some("[::1]"));
        assert_eq!(host_of(&parts(Request::get("/"))), None);
    }

    #[test]
    fn refusals_are_host_pages_that_close_when_asked() {
        let r = Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large");
        let res = r.into_response();
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(res.headers()["connection"], "close");
        assert_eq!(res.headers()["server"], body::SERVER);
        assert_eq!(res.headers()["content-length"], "23");
        let r = Refusal { close: false, ..r };
        assert!(!r.into_response().headers().contains_key("connection"));
    }
}
