//! The WSGI protocol on the host side of the WIT: [`Exchange`] (one
//! request's start line, headers and body as the guest produces them,
//! checked against what HTTP allows) and [`WsgiCtx`], the store's WSGI
//! state, on which the generated `request` and `response` imports are
//! implemented. Bytes move through `body`; this module decides what they
//! mean.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use tokio::sync::oneshot;

use crate::config::DirGrant;
use crate::latin1;
use crate::runtime::asked::{About, Asked};
use crate::runtime::body::{
    self, body_channel, BodyReceiver, BodySender, ReadError, RequestBody, ResponseBody, SERVER,
};
use crate::runtime::generated::{BodyError, RequestHost, ResponseHost, SendFileError};
use crate::runtime::guest_log;
use crate::runtime::held_bytes;
use crate::runtime::quota_fs::{OpenFiles, SentFileSlot};

/// Receives the response once the guest commits its start (or the host
/// answers for it).
pub type ResponseReceiver = oneshot::Receiver<Response<ResponseBody>>;

/// An exchange's response channels, lent to a transport that produces a
/// whole `http::Response` (see `runtime::wasi_http`).
pub struct Responder {
    /// The app answering, for the log.
    app: Arc<str>,
    start_tx: oneshot::Sender<Response<ResponseBody>>,
    chunk_rx: BodyReceiver,
    chunk_tx: BodySender,
    head_method: bool,
    /// Say `Connection: close`: hyper ends the connection after it.
    closes: bool,
}

impl Responder {
    /// Mark the response `Connection: close` (a request body left unread
    /// while its client waits for `100 Continue`).
    pub fn closing(mut self) -> Self {
        self.closes = true;
        self
    }

    /// Where the body's chunks go (with the exchange's backpressure).
    pub fn body_sender(&self) -> BodySender {
        self.chunk_tx.clone()
    }

    /// Send the head; the body follows through [`body_sender`](Self::body_sender).
    /// `Server` is added unless the app set one, as for WSGI responses.
    pub fn commit(self, mut parts: http::response::Parts, length: Option<u64>) {
        if !(200..=599).contains(&parts.status.as_u16()) {
            tracing::error!(
                app = %self.app,
                "invalid response from the app: status {}: a final response's status must be from 200 to 599",
                parts.status.as_u16()
            );
            return self.page(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
        }
        if let Some(name) = parts.headers.keys().find(|n| hop_by_hop(n)) {
            tracing::error!(
                app = %self.app,
                "invalid response from the app: header {name} is hop-by-hop: the server manages it"
            );
            return self.page(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
        }
        // Our guest sends one; another wasi:http component may not, and
        // hyper would drop the response without a word.
        if let Err(why) = one_content_length(&mut parts.headers) {
            tracing::error!(app = %self.app, "invalid response from the app: {why}");
            return self.page(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
        }
        parts
            .headers
            .entry(http::header::SERVER)
            .or_insert(HeaderValue::from_static(SERVER));
        // wasi:http carries no reason phrase; hyper would write `<none>`
        // for a status it has no name for.
        if parts.status.canonical_reason().is_none() {
            parts
                .extensions
                .insert(hyper::ext::ReasonPhrase::from_static(b""));
        }
        if self.closes {
            parts
                .headers
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        let length = content_rules(parts.status, &mut parts.headers, length);
        let body = if self.head_method || !body_allowed(parts.status) {
            // The guest's body goes nowhere (its writes stop, as when the
            // client leaves); the head keeps its Content-Length.
            ResponseBody::bodiless(length)
        } else {
            ResponseBody::streamed(Bytes::new(), self.chunk_rx, length)
        };
        let _ = self.start_tx.send(Response::from_parts(parts, body));
    }

    /// Answer with a host page instead.
    pub fn page(self, status: StatusCode, text: &str) {
        self.send(body::host_page(status, text));
    }

    /// Answer with `res`, made by the host.
    pub fn send(self, res: Response<ResponseBody>) {
        let _ = self.start_tx.send(res);
    }
}

/// One request's channels, owned by the instance while it serves it.
pub struct Exchange {
    /// The app answering, for the log.
    app: Arc<str>,
    /// The request's method and target, for the lines about its end.
    asked: Arc<Asked>,
    body: RequestBody,
    /// Taken when the response starts: the status and headers are out.
    start_tx: Option<oneshot::Sender<Response<ResponseBody>>>,
    /// Given to the response when it starts.
    chunk_rx: Option<BodyReceiver>,
    /// `None` once the guest said the body is complete (`finish`).
    chunk_tx: Option<BodySender>,
    /// Bytes still allowed by the app's `Content-Length` (None: no limit).
    remaining: Option<u64>,
    /// The method is HEAD: no body goes out, a short body is not an error.
    head_method: bool,
    body_allowed: bool,
}

impl Exchange {
    /// Channels for one request to `app`; the server awaits the receiver.
    pub fn new(
        (app, asked): (Arc<str>, Arc<Asked>),
        body: RequestBody,
        head_method: bool,
        stall: std::time::Duration,
    ) -> (Self, ResponseReceiver) {
        let (start_tx, start_rx) = oneshot::channel();
        let (chunk_tx, chunk_rx) = body_channel();
        let chunk_tx = chunk_tx
            .with_stall(stall)
            .about(About::request(Some(app.clone()), asked.clone()));
        let ex = Exchange {
            app,
            asked,
            body,
            start_tx: Some(start_tx),
            chunk_rx: Some(chunk_rx),
            chunk_tx: Some(chunk_tx),
            remaining: None,
            head_method,
            body_allowed: true,
        };
        (ex, start_rx)
    }

    /// The request's method and target (`GET /x?y`), for the log.
    pub fn asked(&self) -> &Asked {
        &self.asked
    }

    /// The request body for another transport to read (a wasi:http guest),
    /// with its `--max-body` limit; `None` if it was already taken.
    pub fn take_request_body(&mut self) -> Option<body::Taken> {
        self.body.take()
    }

    /// The means to commit a response made elsewhere (a wasi:http guest);
    /// until it is [`restore`](Self::restore)d, the exchange counts as
    /// committed.
    pub fn responder(&mut self) -> Option<Responder> {
        Some(Responder {
            app: self.app.clone(),
            start_tx: self.start_tx.take()?,
            chunk_rx: self.chunk_rx.take()?,
            chunk_tx: self.chunk_tx.clone()?,
            head_method: self.head_method,
            closes: false,
        })
    }

    /// Take back a responder that was not used, so this exchange answers.
    pub fn restore(&mut self, responder: Responder) {
        self.start_tx = Some(responder.start_tx);
        self.chunk_rx = Some(responder.chunk_rx);
    }

    /// Whether reading the request body failed.
    pub fn body_failed(&self) -> bool {
        self.body.failed()
    }

    /// Whether it failed because the client sent it too slowly.
    pub fn body_timed_out(&self) -> bool {
        self.body.timed_out()
    }

    /// If the app was left waiting for the client's body (the request's
    /// time ran out in that wait), give up on the client as too slow;
    /// whether it was.
    pub fn give_up_on_slow_body(&mut self) -> bool {
        self.body.give_up_if_left_waiting()
    }

    /// Whether the client went away before the response started (an HTTP/2
    /// stream reset, a closed connection): then nobody waits for it.
    pub fn client_gone(&self) -> bool {
        self.start_tx.as_ref().is_some_and(|tx| tx.is_closed())
    }

    /// Resolves when the client goes away before the response started (see
    /// [`client_gone`](Self::client_gone)); never once it has started.
    pub async fn client_left(&mut self) {
        match self.start_tx.as_mut() {
            Some(tx) => tx.closed().await,
            None => std::future::pending().await,
        }
    }

    /// Whether the response has started (after that only the body can change).
    pub fn committed(&self) -> bool {
        self.start_tx.is_none()
    }

    /// Whether the guest handed over the whole response ([`finish`](Self::finish)):
    /// what it runs after that (the result's `close()`) no longer shapes it.
    pub fn finished(&self) -> bool {
        self.committed() && self.chunk_tx.is_none()
    }

    /// Whether every byte of the response is out of the guest's hands: it
    /// handed over the whole response, wrote all its `Content-Length`, or
    /// the response has no body (HEAD, 204, 304): a client has it all even
    /// if the guest never returns after.
    pub fn delivered(&self) -> bool {
        let no_body = !self.body_allowed || self.head_method;
        self.finished() || (self.committed() && (no_body || self.remaining == Some(0)))
    }

    /// Answer with a host page if the guest has not started a response.
    pub fn respond_error(&mut self, status: StatusCode, text: &str) {
        if let Some(tx) = self.start_tx.take() {
            let mut page = body::host_page(status, text);
            self.body.mark(&mut page);
            let _ = tx.send(page);
        }
    }

    /// Cut the response short: the client sees a truncated body because
    /// hyper closes the connection instead of ending the message.
    pub fn abort(&mut self, why: String) {
        if let Some(tx) = &self.chunk_tx {
            tx.abort(why);
        }
    }

    /// A body shorter than its `Content-Length` must not look complete:
    /// why it should be aborted, if it is one.
    fn shortfall(&self) -> Option<String> {
        // A client that left or stalled stopped the app's writes: not the
        // app's doing. A body already finished was checked then.
        if self
            .chunk_tx
            .as_ref()
            .is_none_or(BodySender::client_gave_out)
        {
            return None;
        }
        match self.remaining {
            Some(n) if n > 0 && self.body_allowed && !self.head_method => Some(format!(
                "app sent {n} bytes fewer than its Content-Length; closing the connection"
            )),
            _ => None,
        }
    }

    /// The body is complete (the guest says so before it calls the
    /// result's `close()`, or its call returned): end it, cut short if
    /// under its `Content-Length`. Ours is the last sender unless a file
    /// still streams, so dropping it ends the body.
    pub fn finish(&mut self) {
        if !self.committed() {
            return;
        }
        if let (Some(why), Some(tx)) = (self.shortfall(), &self.chunk_tx) {
            tx.cut_short(why);
        }
        self.chunk_tx = None;
    }

    /// Clip a chunk to what `Content-Length` still allows.
    fn clip(&mut self, mut chunk: Vec<u8>) -> Bytes {
        // Nothing of a 204's or 304's body, or of a HEAD's, goes out on any
        // protocol (HTTP/1 drops it in hyper, HTTP/2 would send it).
        if !self.body_allowed || self.head_method {
            return Bytes::new();
        }
        if let Some(rem) = self.remaining.as_mut() {
            if chunk.len() as u64 > *rem {
                tracing::warn!(
                    app = %self.app,
                    request = %self.asked,
                    peer = %self.asked.peer,
                    "app wrote more than its Content-Length; {} extra bytes dropped",
                    chunk.len() as u64 - *rem
                );
                chunk.truncate(*rem as usize);
            }
            *rem -= chunk.len() as u64;
        }
        Bytes::from(chunk)
    }

    /// Start the response; false if the client is gone or the start was
    /// refused (then a 500 went out instead). `default_length` becomes the
    /// `Content-Length` unless the app set one (`send-file`).
    fn start(
        &mut self,
        status: &str,
        headers: &str,
        default_length: Option<u64>,
        first: Vec<u8>,
        first_share: Option<held_bytes::Share>,
    ) -> bool {
        if self.start_tx.is_none() {
            return false;
        }
        let (status, reason, headers, content_length) =
            match parse_start(status, headers, default_length) {
                Ok(start) => start,
                Err(why) => {
                    let why = guest_log::quoted(&why);
                    tracing::error!(app = %self.app, "invalid response from the app: {why}");
                    self.respond_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
                    return false;
                }
            };
        self.remaining = content_length;
        self.body_allowed = body_allowed(status);
        let first = self.clip(first);
        let rx = self
            .chunk_rx
            .take()
            .expect("taken only here, with start_tx");
        // `clip` lets nothing through for these.
        let body = if self.body_allowed {
            ResponseBody::streamed(first, rx, content_length).with_first_share(first_share)
        } else {
            ResponseBody::bodiless(content_length)
        };
        let mut res = Response::new(body);
        *res.status_mut() = status;
        *res.headers_mut() = headers;
        if let Some(reason) = reason {
            res.extensions_mut().insert(reason);
        }
        self.body.mark(&mut res);
        let tx = self.start_tx.take().expect("checked above");
        tx.send(res).is_ok()
    }

    fn send_file(
        &mut self,
        status: &str,
        headers: &str,
        opened: Option<((std::fs::File, u64), SentFileSlot)>,
        offset: u64,
    ) -> Result<(), SendFileError> {
        if self.start_tx.is_none() {
            return Err(SendFileError::Unavailable);
        }
        let Some(((file, size), slot)) = opened else {
            return Err(SendFileError::Unavailable);
        };
        let available = size.saturating_sub(offset);
        // The file's remaining size, unless the app declared a length.
        if !self.start(status, headers, Some(available), Vec::new(), None) {
            return Err(SendFileError::Disconnected);
        }
        // start() recorded the declared length in `remaining`.
        let declared = self.remaining.unwrap_or(available);
        let len = declared.min(available);
        self.remaining = Some(0); // the streaming task owns the framing now
        if let (true, Some(tx)) = (self.body_allowed && !self.head_method, &self.chunk_tx) {
            if declared > len {
                tracing::warn!(
                    app = %self.app,
                    "file is {} bytes shorter than the app's Content-Length: the response is cut short",
                    declared - len
                );
            }
            let stream = tracing::Instrument::instrument(
                body::stream_file(file, offset, len, declared - len, tx.clone()),
                tracing::warn_span!("send_file", app = %self.app),
            );
            tokio::spawn(async move {
                stream.await;
                // The descriptor counts until the file is closed.
                drop(slot);
            });
        }
        Ok(())
    }

    /// Room among the held bytes for a large first chunk of `len` bytes,
    /// before the head commits: `Err` (a 503 sent and logged, or the
    /// client gone) if none came in time.
    async fn first_share(&mut self, len: usize) -> Result<Option<held_bytes::Share>, ()> {
        if self.head_method || self.chunk_tx.is_none() {
            return Ok(None);
        }
        let Some(start_tx) = self.start_tx.as_mut() else {
            return Ok(None);
        };
        match held_bytes::take(&self.app, len, start_tx.closed()).await {
            Ok(share) => Ok(share),
            Err(held_bytes::Refused::ClientLeft) => Err(()),
            Err(held_bytes::Refused::Full(own)) => {
                let why = held_bytes::full(own);
                tracing::warn!(app = %self.app, request = %self.asked, peer = %self.asked.peer, "answered 503: {why}");
                crate::metrics::rejected(&self.app).inc();
                self.respond_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Service Unavailable: the server holds as many response bytes for slow clients as it may; try again",
                );
                Err(())
            }
        }
    }

    /// Push a chunk; false if the response has not started or the client left.
    async fn write(&mut self, chunk: Vec<u8>) -> bool {
        if self.start_tx.is_some() {
            return false;
        }
        if chunk.is_empty() {
            return true;
        }
        let chunk = self.clip(chunk);
        if chunk.is_empty() {
            return true;
        }
        match &self.chunk_tx {
            Some(tx) => tx.send(chunk).await,
            None => false,
        }
    }
}

/// The WSGI state of one store: the request being served, if any, and
/// the directories `send-file` may open.
pub struct WsgiCtx {
    exchange: Option<Exchange>,
    dirs: Arc<[DirGrant]>,
    /// The app's open-file count, which the files `send-file` opens join.
    open_files: Arc<OpenFiles>,
}

impl WsgiCtx {
    /// No request yet; `send-file` may open files under `dirs`, counted in
    /// `open_files`.
    pub fn new(dirs: Arc<[DirGrant]>, open_files: Arc<OpenFiles>) -> Self {
        WsgiCtx {
            exchange: None,
            dirs,
            open_files,
        }
    }

    /// Serve `ex` with the next guest call.
    pub fn begin(&mut self, ex: Exchange) {
        self.exchange = Some(ex);
    }

    /// The exchange back after the guest call (None if none was begun).
    pub fn end(&mut self) -> Option<Exchange> {
        self.exchange.take()
    }
}

/// Open guest `path` if it is a regular file inside a grant, with its
/// size: through cap-std, so `..` and symlinks cannot leave the grant.
fn open_granted(dirs: &[DirGrant], path: &str) -> Option<(std::fs::File, u64)> {
    let (grant, rel) = dirs
        .iter()
        .filter_map(|d| {
            let root = d.guest.trim_end_matches('/');
            let rel = path.strip_prefix(root)?.strip_prefix('/')?;
            (!rel.is_empty()).then_some((d, rel))
        })
        .max_by_key(|(d, _)| d.guest.len())?;
    let dir = cap_std::fs::Dir::open_ambient_dir(&grant.host, cap_std::ambient_authority()).ok()?;
    // Opening a FIFO would wait, on the guest's thread.
    if !dir.metadata(rel).ok()?.is_file() {
        return None;
    }
    let file = dir.open(rel).ok()?;
    let meta = file.metadata().ok()?;
    meta.is_file().then(|| (file.into_std(), meta.len()))
}

type ParsedStart = (
    StatusCode,
    Option<hyper::ext::ReasonPhrase>,
    HeaderMap,
    Option<u64>,
);

/// RFC 9110 6.4.1: 1xx, 204 and 304 responses have no content, and a
/// server must not send any in a 205 (15.3.6).
pub fn body_allowed(status: StatusCode) -> bool {
    !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::RESET_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// The length a response may announce: none on a 204 or 304 (RFC 9110
/// 8.6). A 204 must not send one; a 304 may, only as the length of the
/// representation, which the one-item-list rule does not know (it counts
/// what the app returned), and HTTP/2 clients (the h2 crate) refuse a 304
/// announcing bytes it does not carry.
fn content_rules(status: StatusCode, headers: &mut HeaderMap, length: Option<u64>) -> Option<u64> {
    if matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED) {
        headers.remove(http::header::CONTENT_LENGTH);
        return None;
    }
    // Its length says the (empty) content ends, on a connection kept open.
    if status == StatusCode::RESET_CONTENT {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(0));
        return Some(0);
    }
    length
}

/// The most bytes a response head may carry (the status line, header names
/// and values); browsers refuse larger heads (Chromium at 256 KiB).
const MAX_RESPONSE_HEADERS: usize = 256 * 1024;

/// The longest reason phrase sent.
const MAX_REASON: usize = 1024;

/// Hop-by-hop fields (RFC 9110 §7.6.1, PEP 3333): the server frames the
/// connection; an app's `Transfer-Encoding` would make hyper send a body
/// no client can read.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailers"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Re-check what the guest already validated (defence in depth: the guest
/// is untrusted code) and build hyper's response head. `headers` is the packed
/// `name LF value LF ...` of `wit/wsgi.wit`; `default_length` is added as
/// `Content-Length` when the app declared none (`send-file`).
fn parse_start(
    status: &str,
    headers: &str,
    default_length: Option<u64>,
) -> Result<ParsedStart, String> {
    // The reason phrase counts too: it has no length limit of its own.
    if status.len() + headers.len() > MAX_RESPONSE_HEADERS {
        return Err(format!(
            "response status and headers take {} bytes, over the {} KiB a response may have",
            status.len() + headers.len(),
            MAX_RESPONSE_HEADERS / 1024
        ));
    }
    let code = status
        .get(..3)
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        // A bare `NNN` is taken too, as gunicorn and wsgiref take it.
        .filter(|_| matches!(status.as_bytes().get(3), None | Some(&b' ')))
        .ok_or_else(|| format!("status {status:?} is not 'NNN Reason'"))?;
    // 1xx are interim responses the server sends itself (100 Continue);
    // RFC 9110 15 defines no final status above 599.
    if !(200..=599).contains(&code.as_u16()) {
        return Err(format!(
            "status {status:?}: a WSGI response's status must be from 200 to 599"
        ));
    }
    let reason_text = status.get(4..).unwrap_or("");
    // Clients give up on longer lines (curl at 100 KB).
    if reason_text.len() > MAX_REASON {
        return Err(format!(
            "the reason phrase takes {} bytes, over the {MAX_REASON} a status line may carry",
            reason_text.len()
        ));
    }
    let reason = if code.canonical_reason() == Some(reason_text)
        || (reason_text.is_empty() && code.canonical_reason().is_some())
    {
        None
    } else {
        let bytes = latin1::encode(reason_text)
            .ok_or_else(|| format!("status {status:?} is not latin-1"))?;
        Some(
            hyper::ext::ReasonPhrase::try_from(bytes)
                .map_err(|_| format!("status {status:?} has an invalid reason phrase"))?,
        )
    };
    let mut map = HeaderMap::with_capacity(8);
    let mut content_length = None;
    let mut items = headers.split('\n');
    if headers.is_empty() {
        items.next();
    }
    while let Some(name) = items.next() {
        // Whitespace around a value is not part of it (RFC 9110 §5.5), and
        // HTTP/2 clients refuse a field that keeps it (RFC 9113 §8.2.1).
        let value = items
            .next()
            .ok_or_else(|| format!("response header {name:?} has no value"))?
            .trim_matches([' ', '\t']);
        let hname = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("response header name {name:?} is invalid"))?;
        if hop_by_hop(&hname) {
            return Err(format!(
                "response header {name:?} is hop-by-hop: the server manages it, a WSGI app must not set it"
            ));
        }
        let hvalue = if value.is_ascii() {
            HeaderValue::from_str(value).ok()
        } else {
            latin1::encode(value).and_then(|b| HeaderValue::from_bytes(&b).ok())
        }
        .ok_or_else(|| format!("response header {name:?} has an invalid value {value:?}"))?;
        if hname == http::header::CONTENT_LENGTH {
            // Digits only: `parse` would take "+4", which clients refuse.
            let n = Some(value)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("response Content-Length {value:?} is not a number"))?;
            if content_length.is_some_and(|m| m != n) {
                return Err("response has conflicting Content-Length headers".into());
            }
            if content_length.is_some() {
                continue;
            }
            content_length = Some(n);
        }
        map.try_append(hname, hvalue)
            .map_err(|_| "response has too many headers".to_owned())?;
    }
    if content_length.is_none() {
        if let Some(n) = default_length {
            map.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
            content_length = Some(n);
        }
    }
    content_length = content_rules(code, &mut map, content_length);
    if !map.contains_key(http::header::SERVER) {
        map.insert(http::header::SERVER, HeaderValue::from_static(SERVER));
    }
    Ok((code, reason, map, content_length))
}

/// Leave one `Content-Length` in `headers`: every value a number (around
/// whitespace aside), and all the same.
fn one_content_length(headers: &mut HeaderMap) -> Result<(), String> {
    let mut length = None;
    for value in headers.get_all(http::header::CONTENT_LENGTH) {
        let v = value.as_bytes().trim_ascii();
        let n = Some(v)
            .filter(|v| !v.is_empty() && v.iter().all(u8::is_ascii_digit))
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
            .ok_or_else(|| format!("response Content-Length {value:?} is not a number"))?;
        if length.is_some_and(|m| m != n) {
            return Err("response has conflicting Content-Length headers".into());
        }
        length = Some(n);
    }
    if let Some(n) = length {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(())
}

impl RequestHost for WsgiCtx {
    async fn read_body(&mut self, max: u32) -> Result<Vec<u8>, BodyError> {
        let Some(ex) = self.exchange.as_mut() else {
            return Err(BodyError::Disconnected);
        };
        ex.body.read(max).await.map_err(|e| match e {
            ReadError::TooLarge => BodyError::TooLarge,
            ReadError::Disconnected => BodyError::Disconnected,
        })
    }
}

impl ResponseHost for WsgiCtx {
    async fn start(&mut self, status: String, headers: String, first_chunk: Vec<u8>) -> bool {
        match self.exchange.as_mut() {
            Some(ex) => match ex.first_share(first_chunk.len()).await {
                Ok(share) => ex.start(&status, &headers, None, first_chunk, share),
                Err(()) => false,
            },
            None => false,
        }
    }

    async fn send_file(
        &mut self,
        status: String,
        headers: String,
        path: String,
        offset: u64,
    ) -> Result<(), SendFileError> {
        if self.exchange.as_ref().is_none_or(Exchange::committed) {
            return Err(SendFileError::Unavailable);
        }
        let Some(slot) = self.open_files.take_sent_file() else {
            return Err(SendFileError::Unavailable);
        };
        // On the guest's thread, so charged to its tenant, as its own file
        // system calls are (see sandbox.rs).
        let opened = open_granted(&self.dirs, &path);
        match self.exchange.as_mut() {
            Some(ex) => ex.send_file(&status, &headers, opened.map(|o| (o, slot)), offset),
            None => Err(SendFileError::Unavailable),
        }
    }

    async fn write(&mut self, chunk: Vec<u8>) -> bool {
        match self.exchange.as_mut() {
            Some(ex) => ex.write(chunk).await,
            None => false,
        }
    }

    async fn finish(&mut self) {
        if let Some(ex) = self.exchange.as_mut() {
            ex.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_parsing_keeps_custom_reasons_and_latin1() {
        let (code, reason, headers, cl) =
            parse_start("200 Fine", "X-Name\ncaf\u{e9}\nContent-Length\n5", None).unwrap();
        assert_eq!(code, StatusCode::OK);
        assert_eq!(reason.unwrap().as_bytes(), b"Fine");
        assert_eq!(headers.get("x-name").unwrap().as_bytes(), b"caf\xe9");
        assert_eq!(headers.get("server").unwrap(), SERVER);
        assert_eq!(cl, Some(5));
        let (_, reason, headers, cl) = parse_start("404 Not Found", "", None).unwrap();
        assert!(reason.is_none());
        assert_eq!(headers.len(), 1, "only Server");
        assert_eq!(cl, None);
        let (_, _, headers, cl) = parse_start("200 OK", "X\n", Some(7)).unwrap();
        assert_eq!(headers.get("x").unwrap(), "");
        assert_eq!(headers.get("content-length").unwrap(), "7");
        assert_eq!(cl, Some(7));
        let (_, _, _, cl) = parse_start("200 OK", "content-length\n3", Some(7)).unwrap();
        assert_eq!(cl, Some(3), "the app's own length wins");
        // A bare code, as gunicorn takes it: its own name, or none at all
        // (never hyper's `<none>`).
        let (code, reason, headers, _) = parse_start("200", "Trailer\nX-T", None).unwrap();
        assert_eq!((code, reason.is_none()), (StatusCode::OK, true));
        assert_eq!(headers.get("trailer").unwrap(), "X-T");
        let (_, reason, _, _) = parse_start("299", "", None).unwrap();
        assert_eq!(reason.unwrap().as_bytes(), b"");
    }

    #[test]
    fn start_parsing_rejects_what_the_guest_should_have() {
        assert!(parse_start("OK", "", None).is_err());
        assert!(parse_start("2000 OK", "", None).is_err());
        assert!(parse_start("200x", "", None).is_err());
        for interim_or_unknown in ["100 Continue", "103 Early Hints", "600 Odd", "999 Weird"] {
            assert!(parse_start(interim_or_unknown, "", None).is_err());
        }
        for bodiless in ["204 No Content", "304 Not Modified"] {
            let (_, _, headers, cl) = parse_start(bodiless, "Content-Length\n4", None).unwrap();
            assert!(!headers.contains_key("content-length") && cl.is_none());
        }
        let (_, _, headers, cl) =
            parse_start("205 Reset Content", "Content-Length\n4", None).unwrap();
        assert_eq!(headers.get("content-length").unwrap(), "0");
        assert_eq!(cl, Some(0));
        assert!(!body_allowed(StatusCode::RESET_CONTENT));
        // More headers than a HeaderMap holds, or than clients take: an
        // error, not a panic.
        let name = |i: u32| -> String {
            [i / 1296, i / 36 % 36, i % 36]
                .map(|d| char::from_digit(d, 36).unwrap())
                .iter()
                .collect()
        };
        let many: String = (0..40_000).map(|i| format!("{}\n\n", name(i))).collect();
        let e = parse_start("200 OK", many.trim_end_matches('\n'), None).unwrap_err();
        assert!(e.contains("too many headers"), "{e}");
        let big: String = (0..5_000)
            .map(|i| format!("{}\n{}\n", name(i), "v".repeat(60)))
            .collect();
        let e = parse_start("200 OK", big.trim_end_matches('\n'), None).unwrap_err();
        assert!(e.contains("over the 256 KiB"), "{e}");
        let e = parse_start(&format!("200 {}", "S".repeat(300_000)), "", None).unwrap_err();
        assert!(e.contains("over the 256 KiB"), "{e}");
        let e = parse_start(&format!("200 {}", "S".repeat(2000)), "", None).unwrap_err();
        assert!(e.contains("reason phrase"), "{e}");
        for name in ["Transfer-Encoding", "connection", "Keep-Alive", "Upgrade"] {
            let e = parse_start("200 OK", &format!("{name}\nx"), None).unwrap_err();
            assert!(e.contains("hop-by-hop"), "{e}");
        }
        assert!(parse_start("200 OK", "Bad Name\nx", None).is_err());
        assert!(parse_start("200 OK", "X\na\r\nb", None).is_err());
        assert!(parse_start("200 OK", "X\n\u{263a}", None).is_err());
        assert!(
            parse_start("200 OK", "X", None).is_err(),
            "a name without value"
        );
        assert!(parse_start("200 OK", "X\na\nY", None).is_err());
        assert!(parse_start("200 OK", "Content-Length\n1\nContent-Length\n2", None).is_err());
        for odd in ["+4", "-1", "0x4", "4 4", ""] {
            assert!(
                parse_start("200 OK", &format!("Content-Length\n{odd}"), None).is_err(),
                "{odd:?}"
            );
        }
    }

    #[test]
    fn a_wasi_http_guest_s_content_lengths_become_one() {
        let headers = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(
                    http::header::CONTENT_LENGTH,
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            h
        };
        let mut h = headers(&["5", " 5 "]);
        assert_eq!(one_content_length(&mut h), Ok(()));
        assert_eq!(h.get_all(http::header::CONTENT_LENGTH).iter().count(), 1);
        assert_eq!(h[http::header::CONTENT_LENGTH], "5");
        assert!(one_content_length(&mut headers(&["3", "5"]))
            .unwrap_err()
            .contains("conflicting"));
        for bad in ["1, 2", "+4", "", "x"] {
            assert!(one_content_length(&mut headers(&[bad])).is_err(), "{bad:?}");
        }
        assert_eq!(one_content_length(&mut HeaderMap::new()), Ok(()));
    }

    #[test]
    fn whitespace_around_values_is_dropped() {
        let (_, _, headers, cl) =
            parse_start("200 OK", "X-A\n abc\t\nContent-Length\n 4 ", None).unwrap();
        assert_eq!(headers.get("x-a").unwrap(), "abc");
        assert_eq!(headers.get("content-length").unwrap(), "4");
        assert_eq!(cl, Some(4));
    }
}
