//! The second door into a guest: components built with `--world wasi-http`
//! export `wasi:http/incoming-handler@0.2.0`, served here through
//! wasmtime-wasi-http (the reference implementation `wasmtime serve` uses),
//! so what runs on other wasi:http hosts is tested on ours.
//!
//! A request becomes an `incoming-request` resource whose body streams from
//! hyper's `Incoming` (with `--max-body`), and the `response-outparam`
//! commits through the request's [`Exchange`] channels: the response then
//! travels the same body channel, access log and metrics as a WSGI one.
//! The guest may not send requests of its own (`outgoing-handler` answers
//! `HTTP-request-denied`): outbound access is granted through sockets only.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use wasmtime::component::Resource;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p2::types::{
    HostFutureIncomingResponse, HostIncomingRequest, HostResponseOutparam, OutgoingRequestConfig,
};
use wasmtime_wasi_http::p2::{HttpResult, WasiHttpCtxView, WasiHttpHooks};
use wasmtime_wasi_http::WasiHttpCtx;

use crate::runtime::body::{self, BodySender, Pace};
use crate::runtime::wsgi::{Exchange, Responder};

/// The export name a wasi:http component is recognised by.
pub const INCOMING_HANDLER: &str = "wasi:http/incoming-handler@0.2.0";

/// An instance's wasi:http state: the context and our hooks.
#[derive(Default)]
pub struct HttpState {
    ctx: WasiHttpCtx,
    hooks: DenyOutgoing,
}

impl HttpState {
    /// The view wasmtime-wasi-http's host functions work on.
    pub fn view<'a>(
        &'a mut self,
        table: &'a mut wasmtime::component::ResourceTable,
    ) -> WasiHttpCtxView<'a> {
        WasiHttpCtxView {
            ctx: &mut self.ctx,
            table,
            hooks: &mut self.hooks,
        }
    }
}

/// Outbound `wasi:http/outgoing-handler` requests are refused: the sandbox
/// grants the network by `--allow-net`, which a host-side HTTP client
/// would bypass.
#[derive(Default)]
struct DenyOutgoing;

impl WasiHttpHooks for DenyOutgoing {
    fn send_request(
        &mut self,
        _request: hyper::Request<HyperOutgoingBody>,
        _config: OutgoingRequestConfig,
    ) -> HttpResult<HostFutureIncomingResponse> {
        Err(ErrorCode::HttpRequestDenied.into())
    }
}

/// The request's parts as a wasi:http guest receives them.
pub struct HttpRequest {
    /// Method, target, version and headers.
    pub parts: http::request::Parts,
    /// The request came over TLS (or a trusted proxy says so).
    pub https: bool,
    /// The server socket it arrived on: the authority of a request that
    /// names none (HTTP/1.0 without `Host`), as `SERVER_NAME` would be.
    pub local: std::net::SocketAddr,
}

/// The responder of a request being served, until the guest sets its
/// response (then it is gone) or the call ends (then it goes back to the
/// exchange, which answers for the guest).
pub struct Pending(Arc<Mutex<Option<Responder>>>);

impl Pending {
    /// The responder, if the guest never set a response.
    pub fn unanswered(&self) -> Option<Responder> {
        self.0.lock().expect("responder lock").take()
    }
}

/// Make the `incoming-request` and `response-outparam` resources for one
/// call of `handle`, in the instance's store.
pub fn bind(
    mut view: WasiHttpCtxView<'_>,
    req: HttpRequest,
    ex: &mut Exchange,
) -> Result<(
    Resource<HostIncomingRequest>,
    Resource<HostResponseOutparam>,
    Pending,
)> {
    let fault = Arc::new(AtomicU8::new(FAULT_NONE));
    let taken = ex.take_request_body();
    let http1 = taken.as_ref().is_some_and(|t| t.http1);
    // Set while a client waiting for `100 Continue` has not had it: hyper
    // closes such a connection when the body is left unread, so the
    // response must say so (as `RequestBody::mark` does in our world).
    let unread = taken
        .as_ref()
        .is_some_and(|t| t.expects_continue && !t.incoming.is_end_stream())
        .then(|| Arc::new(AtomicBool::new(true)));
    let body = LimitedBody::new(taken, fault.clone(), unread.clone());
    let scheme = if req.https {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let mut parts = req.parts;
    // The app must see the host the request was routed by (`Host`), not an
    // HTTP/2 `:authority` naming another (RFC 9113 §8.3.1); the default
    // world's HTTP_HOST is `Host` too. An HTTP/1 target that disagrees
    // with `Host` was refused already.
    let host = parts.headers.get(http::header::HOST).cloned();
    if let (Some(host), Some(authority)) = (host, parts.uri.authority()) {
        if host.as_bytes() != authority.as_str().as_bytes() {
            let mut uri = parts.uri.clone().into_parts();
            uri.authority = Some(http::uri::Authority::try_from(host.as_bytes())?);
            parts.uri = http::Uri::from_parts(uri)?;
        }
    }
    if parts.uri.authority().is_none() && !parts.headers.contains_key(http::header::HOST) {
        // wasi:http requires an authority; HTTP/1.0 does not.
        let host = http::HeaderValue::from_str(&req.local.to_string())?;
        parts.headers.insert(http::header::HOST, host);
    }
    let request = view.new_incoming_request(scheme, http::Request::from_parts(parts, body))?;
    let slot = Arc::new(Mutex::new(ex.responder()));
    let pending = Pending(slot.clone());
    let out = view.new_response_outparam_from_callback(move |result| {
        let Some(responder) = slot.lock().expect("responder lock").take() else {
            return;
        };
        // The adapter answers 400 when the body could not be read (as it
        // must on hosts that cannot tell why), and an app may answer 500:
        // the host knows better whether the client stalled, broke the
        // framing, or left.
        let fault_code = fault.load(Ordering::Acquire);
        let fault = match fault_code {
            FAULT_SLOW => Some((
                http::StatusCode::REQUEST_TIMEOUT,
                crate::runtime::body::SLOW_BODY,
            )),
            FAULT_BROKEN | FAULT_GONE => Some((
                http::StatusCode::BAD_REQUEST,
                "Bad Request: malformed or incomplete request body",
            )),
            _ => None,
        };
        let app_failed = match &result {
            Ok(response) => matches!(
                response.status(),
                http::StatusCode::INTERNAL_SERVER_ERROR | http::StatusCode::BAD_REQUEST
            ),
            Err(_) => true,
        };
        if let (Some((status, text)), true) = (fault, app_failed) {
            let left = fault_code == FAULT_GONE;
            responder.send(body::fault_page(status, text, http1, left));
            return;
        }
        match result {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                let responder = match unread {
                    Some(u) if u.load(Ordering::Acquire) => responder.closing(),
                    _ => responder,
                };
                let hint = body.size_hint().exact();
                let tx = responder.body_sender();
                responder.commit(parts, hint);
                tokio::spawn(pump(body, tx));
            }
            Err(code) => {
                tracing::warn!("the app answered with a wasi:http error: {code:?}");
                responder.page(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal Server Error",
                );
            }
        }
    });
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            // Nothing was called: the exchange keeps answering for the request.
            if let Some(responder) = pending.unanswered() {
                ex.restore(responder);
            }
            let _ = view.table.delete(request);
            return Err(e.into());
        }
    };
    Ok((request, out, pending))
}

/// Move the guest's body into the exchange's channel, with its
/// backpressure; a guest error (or a body dropped unfinished) aborts the
/// response so the client sees the truncation.
async fn pump(mut body: HyperOutgoingBody, tx: BodySender) {
    use http_body_util::BodyExt;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    if !data.is_empty() && !tx.send(data).await {
                        // The client is gone (or wants no body, as for
                        // HEAD): dropping the body stops the guest's writes.
                        return;
                    }
                }
            }
            Err(code) => {
                // The guest says why on its stderr where it can (an
                // exception, a body short of its Content-Length); this
                // line is the host's, at the level operators watch.
                tx.cut_short(format!(
                    "response cut short: the app's wasi:http response body failed ({code:?})"
                ));
                return;
            }
        }
    }
}

/// The request body as the guest reads it: hyper's body, refused past
/// `--max-body` (bodies of unknown length; a declared one was checked
/// before the call).
struct LimitedBody {
    incoming: Option<Incoming>,
    left: u64,
    limit: u64,
    /// How long the guest may be kept waiting for the client's bytes.
    pace: Pace,
    /// Drain what the guest leaves unread, once dropped (`body::drain_later`).
    drain: bool,
    /// Over HTTP/1 (`body::client_left`).
    http1: bool,
    /// Since when the guest has been waiting, how long it may, and the
    /// timer that ends the wait.
    waiting: Option<(Instant, Duration, Pin<Box<tokio::time::Sleep>>)>,
    /// Why reading failed, for the response (`FAULT_*`).
    fault: Arc<AtomicU8>,
    /// Cleared at the first read, when hyper sends a `100 Continue`.
    unread: Option<Arc<AtomicBool>>,
}

/// The request body was read whole, or not at all.
const FAULT_NONE: u8 = 0;
/// Malformed framing: 400.
const FAULT_BROKEN: u8 = 1;
/// The client left mid-body: 400 to nobody, logged 499.
const FAULT_GONE: u8 = 3;
/// The client stalled or trickled (`Pace`): 408.
const FAULT_SLOW: u8 = 2;

impl LimitedBody {
    /// The body the exchange handed over, if any (none: an empty body).
    fn new(
        taken: Option<body::Taken>,
        fault: Arc<AtomicU8>,
        unread: Option<Arc<AtomicBool>>,
    ) -> Self {
        let (incoming, limit, pace, drain, http1) = match taken {
            Some(t) => (Some(t.incoming), t.limit, t.pace, t.drain, t.http1),
            None => (None, 0, Pace::new(Duration::ZERO), false, false),
        };
        LimitedBody {
            incoming,
            left: limit,
            limit,
            pace,
            drain,
            http1,
            waiting: None,
            fault,
            unread,
        }
    }

    /// Stop reading, recording why.
    fn fail(&mut self, fault: u8) {
        self.incoming = None;
        self.waiting = None;
        self.fault.store(fault, Ordering::Release);
    }
}

impl Drop for LimitedBody {
    fn drop(&mut self) {
        if let (Some(incoming), true) = (self.incoming.take(), self.drain) {
            let received = self.limit - self.left;
            body::drain_later(incoming, self.pace.clone(), received, self.left);
        }
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = ErrorCode;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ErrorCode>>> {
        let this = self.get_mut();
        if let Some(unread) = this.unread.take() {
            unread.store(false, Ordering::Release);
        }
        let Some(incoming) = this.incoming.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(incoming).poll_frame(cx);
        if polled.is_ready() {
            if let Some((since, _, _)) = this.waiting.take() {
                this.pace.waited(since.elapsed());
            }
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if len > this.left {
                    this.incoming = None;
                    return Poll::Ready(Some(Err(ErrorCode::HttpRequestBodySize(Some(
                        this.limit,
                    )))));
                }
                this.left -= len;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.fail(if body::client_left(&e, this.http1) {
                    FAULT_GONE
                } else {
                    FAULT_BROKEN
                });
                Poll::Ready(Some(Err(ErrorCode::from(e))))
            }
            Poll::Ready(None) => {
                this.incoming = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                // The guest waits for the client from now: bounded as the
                // default world's reads are (`RequestBody::read`).
                let received = this.limit - this.left;
                let pace = &this.pace;
                let (_, _, deadline) = this.waiting.get_or_insert_with(|| {
                    let patience = pace.patience(received);
                    let timer = Box::pin(tokio::time::sleep(patience));
                    (Instant::now(), patience, timer)
                });
                if std::future::Future::poll(deadline.as_mut(), cx).is_pending() {
                    return Poll::Pending;
                }
                let (since, patience, _) = this.waiting.take().expect("set above");
                this.pace.waited(since.elapsed());
                this.pace.log_timeout(patience, received);
                this.fail(FAULT_SLOW);
                Poll::Ready(Some(Err(ErrorCode::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.as_ref().is_none_or(|i| i.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |i| i.size_hint())
    }
}
