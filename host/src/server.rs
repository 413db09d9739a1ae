//! The HTTP side: accept loop (hyper 1 via hyper-util), per-request hand-off
//! to an app's pool, request limits, access log, graceful shutdown.
//!
//! A request goes: [`serve`] accepts → [`handle`] answers `--static` paths
//! itself (`static_files`), else builds the environ (`environ`) and an
//! `Exchange` (`wsgi`) → `pool::AppPool::serve` runs the guest, inline on
//! the connection's task until the head is out ([`Inline`]) → the head
//! comes back here as a hyper response whose body streams from the guest.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Result;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::config::Isolation;
use crate::config::{ServerConfig, TrustedPeers};
use crate::environ::{self, RequestInfo};
use crate::head_rules;
use crate::static_files::StaticFiles;
use crate::tenants::Router;
use crate::wsgi::{self, Exchange, RequestBody, ResponseBody};

/// What the server routes requests to.
pub struct Site {
    /// The current routes; a reload swaps in a new router atomically, and
    /// requests already routed keep their app alive until they finish.
    router: RwLock<Arc<Router>>,
    /// Peers whose proxy headers set `wsgi.url_scheme`.
    pub forwarded_allow: TrustedPeers,
    /// Largest request head (431 above).
    pub max_header_bytes: usize,
    /// `--static` mounts, answered by the host before any app is routed.
    pub static_files: StaticFiles,
}

impl Site {
    /// A site serving `router` (and `static_files` in front of it) with the
    /// server-wide settings of `cfg`.
    pub fn new(router: Router, static_files: StaticFiles, cfg: &ServerConfig) -> Self {
        Site {
            router: RwLock::new(Arc::new(router)),
            forwarded_allow: cfg.forwarded_allow.clone(),
            max_header_bytes: cfg.max_header_bytes,
            static_files,
        }
    }

    /// The routes in force now.
    pub fn router(&self) -> Arc<Router> {
        self.router.read().expect("router lock").clone()
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
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        // A client may shut down its sending side after the request (as
        // `nc -N` and some health checkers do) and still wait for the
        // answer: without this, hyper would take that EOF as the
        // connection's end and drop the response.
        .half_close(true)
        .header_read_timeout(cfg.header_timeout)
        .max_buf_size(cfg.max_header_bytes.max(8192));
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections));
    tokio::pin!(shutdown);
    loop {
        // At the connection cap, stop accepting: new clients wait in the
        // kernel backlog instead of costing memory here.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            () = &mut shutdown => break,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off
                        // instead of spinning, keep serving what is open.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let site = site.clone();
                let svc = service_fn(move |req| handle(site.clone(), req, local, peer));
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                    drop(slot);
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(
        "shutting down: no new connections; waiting up to {:?} for in-flight requests",
        cfg.grace
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all requests finished"),
        () = tokio::time::sleep(cfg.grace) => tracing::warn!("grace period over; closing remaining connections"),
    }
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

fn access_log(
    peer: SocketAddr,
    method: &Method,
    target: &str,
    status: u16,
    bytes: u64,
    t0: Instant,
) {
    tracing::info!(
        target: "access",
        "{} \"{} {}\" {} {} {:.2}ms",
        peer.ip(),
        method,
        target,
        status,
        bytes,
        t0.elapsed().as_secs_f64() * 1000.0
    );
}

fn host_response(status: StatusCode, text: &str) -> Response<ResponseBody> {
    let mut res = Response::new(ResponseBody::full(format!("{text}\n")));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        http::header::SERVER,
        http::HeaderValue::from_static(concat!("rsgi-wasm/", env!("CARGO_PKG_VERSION"))),
    );
    res
}

/// A host-side refusal; the connection closes after it because the
/// request body (if any) was not read.
fn refuse(status: StatusCode, text: &str) -> Response<ResponseBody> {
    let mut res = host_response(status, text);
    res.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    res
}

async fn handle(
    site: Arc<Site>,
    req: Request<Incoming>,
    local: SocketAddr,
    peer: SocketAddr,
) -> Result<Response<ResponseBody>, Infallible> {
    let t0 = Instant::now();
    let (parts, body) = req.into_parts();
    let target = environ::raw_target(&parts.uri).into_owned();

    // hyper bounds its read buffer, not the head itself (a head that
    // arrives in one read can exceed it), so check the parsed size too.
    let head_size: usize = parts
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + target.len();
    if head_size > site.max_header_bytes {
        access_log(peer, &parts.method, &target, 431, 0, t0);
        return Ok(refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "Request Header Fields Too Large",
        ));
    }

    if let Err(e) = head_rules::check(&parts) {
        access_log(peer, &parts.method, &target, e.status.as_u16(), 0, t0);
        return Ok(refuse(e.status, e.reason));
    }

    if let Some(res) = site.static_files.serve(&parts).await {
        let bytes = res
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        access_log(
            peer,
            &parts.method,
            &target,
            res.status().as_u16(),
            bytes,
            t0,
        );
        return Ok(res);
    }

    // A declared length over the limit is refused before the app runs and
    // before `100 Continue` would invite the body.
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .map(|h| environ::split_host(h).0);
    let router = site.router();
    let Some((app, script_name)) = router.route(host, parts.uri.path()) else {
        access_log(peer, &parts.method, &target, 404, 0, t0);
        return Ok(host_response(
            StatusCode::NOT_FOUND,
            "Not Found: no app is configured for this host and path",
        ));
    };
    let app = app.clone();
    let max_body = app.limits().max_body;
    if declared.is_some_and(|n| n > max_body) {
        access_log(peer, &parts.method, &target, 413, 0, t0);
        return Ok(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body too large",
        ));
    }

    let env = environ::build(&RequestInfo {
        method: &parts.method,
        uri: &parts.uri,
        version: parts.version,
        headers: &parts.headers,
        local,
        peer,
        script_name,
        url_scheme: if site.forwarded_allow.contains(peer.ip()) {
            environ::forwarded_scheme(&parts.headers).unwrap_or("http")
        } else {
            "http"
        },
        run_once: app.limits().isolation == Isolation::Request,
    });
    drop(router);
    let (ex, head_rx, chunk_rx) = Exchange::new(
        RequestBody::new(body, max_body),
        parts.method == Method::HEAD,
    );
    let connect = parts.method == Method::CONNECT;
    let method = parts.method;
    let mut call = Inline::new(async move {
        let served = app.serve(env, ex).await;
        access_log(peer, &method, &target, served.status, served.bytes, t0);
    });
    let mut head_rx = head_rx;
    // Run the guest right here on the connection's task: most responses
    // (head plus a body that fits the channel) finish within this poll, with
    // no task spawned and no cross-thread wake-up. Only if the head is out
    // while the guest still streams does the call move to its own task, so
    // hyper can send the body meanwhile.
    let head = tokio::select! {
        biased;
        () = call.run() => head_rx.await,
        head = &mut head_rx => {
            call.detach();
            head
        }
    };
    Ok(match head {
        Ok(head) if connect && head.status.is_success() => no_tunnel(head),
        Ok(head) => wsgi::into_response(head, chunk_rx),
        // The pool always answers before dropping the exchange; this is a
        // panic in the serving task.
        Err(_) => host_response(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
    })
}

/// The app said yes to a CONNECT, but a WSGI app cannot tunnel: send its
/// status and headers without body framing (RFC 9110 §9.3.6 forbids it on a
/// 2xx to CONNECT) and no body, and let hyper close the connection, since
/// no tunnel follows. Dropping the body ends the app's streaming.
fn no_tunnel(head: wsgi::Head) -> Response<ResponseBody> {
    let mut res = Response::new(ResponseBody::full(bytes::Bytes::new()));
    *res.status_mut() = head.status;
    *res.headers_mut() = head.headers;
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
