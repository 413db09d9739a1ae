//! One request crossing the WIT boundary: the host side of `read-body`,
//! `start` and `write`, streaming both ways with bounded memory.
//!
//! The hyper service keeps the receiving ends ([`HeadReceiver`] and the body
//! channel inside [`ResponseBody`]); the guest instance gets the sending ends
//! in an [`Exchange`] for the duration of one `handle` call.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::bindings::rsgi_wasm::wsgi::{request, response};
use crate::bindings::{BodyError, SendFileError};
use crate::sandbox::HostState;
use crate::sendfile;

/// Value of the `Server` header unless the app sets its own.
const SERVER: &str = concat!("rsgi-wasm/", env!("CARGO_PKG_VERSION"));

/// The response head (and first chunk) handed from the guest to hyper.
pub struct Head {
    /// Status code.
    pub status: StatusCode,
    /// The app's reason phrase when it is not the canonical one.
    pub reason: Option<hyper::ext::ReasonPhrase>,
    /// Response headers, `Server` added.
    pub headers: HeaderMap,
    /// First body chunk (may be empty).
    pub first: Bytes,
    /// Declared `Content-Length`, if any.
    pub content_length: Option<u64>,
}

/// Receives the head once the guest commits it.
pub type HeadReceiver = oneshot::Receiver<Head>;

/// Why a response body was cut short; hyper then closes the connection.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BodyAbort(pub String);

type Chunk = Result<Bytes, BodyAbort>;

/// Response-body bytes that may wait for hyper before a sender blocks:
/// enough that a page written in small chunks never suspends the guest
/// (measured: 64 KiB in 4 KiB chunks went from 15 hand-offs between the
/// guest's task and the connection's to none), small enough that a slow
/// client costs little memory per response.
pub const BODY_BUDGET: usize = 64 * 1024;

/// A chunk on its way to hyper, holding its share of the budget until
/// hyper takes it.
struct Queued {
    chunk: Chunk,
    _budget: Option<OwnedSemaphorePermit>,
}

/// Sending half of a response body: `send` returns once the chunk is
/// queued within [`BODY_BUDGET`] (backpressure: a slow client slows the
/// app, memory stays bounded).
#[derive(Clone)]
pub struct BodySender {
    tx: mpsc::UnboundedSender<Queued>,
    budget: Arc<Semaphore>,
}

/// Receiving half of a response body, read by [`ResponseBody`].
pub struct BodyReceiver(mpsc::UnboundedReceiver<Queued>);

/// A response-body channel with a [`BODY_BUDGET`] of queued bytes.
pub fn body_channel() -> (BodySender, BodyReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let budget = Arc::new(Semaphore::new(BODY_BUDGET));
    (BodySender { tx, budget }, BodyReceiver(rx))
}

impl BodySender {
    /// Queue a chunk, waiting while the budget is used up (a chunk larger
    /// than the budget waits for all of it and then goes alone); false if
    /// the client went away.
    pub async fn send(&self, chunk: Bytes) -> bool {
        let share = chunk.len().clamp(1, BODY_BUDGET) as u32;
        // Dropping the receiver drops what it queued, which returns the
        // budget, so this cannot wait for a client that is gone.
        let Ok(permit) = self.budget.clone().acquire_many_owned(share).await else {
            return false;
        };
        self.tx
            .send(Queued {
                chunk: Ok(chunk),
                _budget: Some(permit),
            })
            .is_ok()
    }

    /// Cut the body short (see [`BodyAbort`]).
    pub fn abort(&self, why: String) {
        let _ = self.tx.send(Queued {
            chunk: Err(BodyAbort(why)),
            _budget: None,
        });
    }
}

/// Response body streamed from the guest through a [`body_channel`].
pub struct ResponseBody {
    first: Option<Bytes>,
    rx: Option<BodyReceiver>,
    hint: SizeHint,
    /// An abort waiting for one more poll (see `poll_frame`).
    abort: Option<BodyAbort>,
}

impl ResponseBody {
    /// A body that is just `bytes` (host-generated responses).
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        ResponseBody {
            hint: SizeHint::with_exact(bytes.len() as u64),
            first: Some(bytes),
            rx: None,
            abort: None,
        }
    }

    fn streamed(first: Bytes, rx: BodyReceiver, content_length: Option<u64>) -> Self {
        ResponseBody {
            hint: content_length.map_or_else(SizeHint::new, SizeHint::with_exact),
            first: Some(first),
            rx: Some(rx),
            abort: None,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyAbort;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyAbort>>> {
        if let Some(abort) = self.abort.take() {
            return Poll::Ready(Some(Err(abort)));
        }
        if let Some(first) = self.first.take() {
            if !first.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(first))));
            }
        }
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        // The chunk's share of the budget is returned as hyper takes it.
        match rx.0.poll_recv(cx).map(|q| q.map(|q| q.chunk)) {
            Poll::Ready(Some(Ok(b))) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Poll::Ready(Some(Err(e))) => {
                // hyper drops its unflushed write buffer when a body fails;
                // return Pending once so it flushes the head and the bytes
                // sent so far, then fail on the next poll.
                self.rx = None;
                self.abort = Some(e);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Ready(None) => {
                self.rx = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_none()
            && self.abort.is_none()
            && self.first.as_ref().is_none_or(|b| b.is_empty())
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// Build the hyper response from a committed head and the body channel.
pub fn into_response(head: Head, rx: BodyReceiver) -> http::Response<ResponseBody> {
    let mut res = http::Response::new(ResponseBody::streamed(head.first, rx, head.content_length));
    *res.status_mut() = head.status;
    *res.headers_mut() = head.headers;
    if let Some(reason) = head.reason {
        res.extensions_mut().insert(reason);
    }
    res
}

/// The request body as the guest pulls it, with the `--max-body` check for
/// bodies whose length is not known up front (chunked).
pub struct RequestBody {
    incoming: Option<Incoming>,
    /// Reading failed (malformed chunked framing or the client left).
    failed: bool,
    leftover: Bytes,
    received: u64,
    limit: u64,
}

impl RequestBody {
    /// Wrap hyper's body; more than `limit` bytes is refused as too large.
    pub fn new(incoming: Incoming, limit: u64) -> Self {
        RequestBody {
            incoming: Some(incoming),
            failed: false,
            leftover: Bytes::new(),
            received: 0,
            limit,
        }
    }

    async fn read(&mut self, max: u32) -> Result<Vec<u8>, BodyError> {
        while self.leftover.is_empty() {
            let Some(incoming) = self.incoming.as_mut() else {
                return Ok(Vec::new());
            };
            match incoming.frame().await {
                None => {
                    self.incoming = None;
                    return Ok(Vec::new());
                }
                Some(Err(e)) => {
                    tracing::debug!("request body read failed: {e}");
                    self.incoming = None;
                    self.failed = true;
                    return Err(BodyError::Disconnected);
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.received += data.len() as u64;
                        if self.received > self.limit {
                            self.incoming = None;
                            return Err(BodyError::TooLarge);
                        }
                        self.leftover = data;
                    }
                }
            }
        }
        let n = (max.max(1) as usize).min(self.leftover.len());
        Ok(self.leftover.split_to(n).to_vec())
    }
}

/// One request's channels, owned by the instance while it serves it.
pub struct Exchange {
    body: RequestBody,
    head_tx: Option<oneshot::Sender<Head>>,
    chunk_tx: BodySender,
    /// Bytes still allowed by the app's `Content-Length` (None: no limit).
    remaining: Option<u64>,
    /// Method is HEAD (no body goes out, a short body is not an error).
    head_request: bool,
    body_allowed: bool,
    /// Status the guest committed (0 until then).
    pub status: u16,
    /// Body bytes accepted from the guest.
    pub bytes: u64,
}

impl Exchange {
    /// Channels for one request; the service awaits the returned receivers.
    pub fn new(body: RequestBody, head_request: bool) -> (Self, HeadReceiver, BodyReceiver) {
        let (head_tx, head_rx) = oneshot::channel();
        let (chunk_tx, chunk_rx) = body_channel();
        let ex = Exchange {
            body,
            head_tx: Some(head_tx),
            chunk_tx,
            remaining: None,
            head_request,
            body_allowed: true,
            status: 0,
            bytes: 0,
        };
        (ex, head_rx, chunk_rx)
    }

    /// Whether reading the request body failed.
    pub fn body_failed(&self) -> bool {
        self.body.failed
    }

    /// Whether the head has gone out (after that only the body can change).
    pub fn committed(&self) -> bool {
        self.head_tx.is_none()
    }

    /// Answer with a host-generated error page if the guest sent nothing.
    pub fn respond_error(&mut self, status: StatusCode, text: &str) {
        let Some(tx) = self.head_tx.take() else {
            return;
        };
        let body = Bytes::from(format!("{text}\n"));
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        headers.insert(http::header::SERVER, HeaderValue::from_static(SERVER));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        self.status = status.as_u16();
        self.bytes = body.len() as u64;
        let _ = tx.send(Head {
            status,
            reason: None,
            headers,
            content_length: Some(body.len() as u64),
            first: body,
        });
    }

    /// Cut the response short: the client sees a truncated body because
    /// hyper closes the connection instead of ending the message.
    pub fn abort(&mut self, why: String) {
        self.chunk_tx.abort(why);
    }

    /// After the guest returned: a body shorter than its `Content-Length`
    /// must not look complete, so say why it should be aborted.
    pub fn shortfall(&self) -> Option<String> {
        match self.remaining {
            Some(n) if n > 0 && self.body_allowed && !self.head_request => Some(format!(
                "app sent {n} bytes fewer than its Content-Length; closing the connection"
            )),
            _ => None,
        }
    }

    /// Clip a chunk to what `Content-Length` still allows.
    fn clip(&mut self, chunk: String) -> Bytes {
        let mut chunk = latin1_bytes(chunk);
        if let Some(rem) = self.remaining.as_mut() {
            if chunk.len() as u64 > *rem {
                tracing::warn!(
                    "app wrote more than its Content-Length; {} extra bytes dropped",
                    chunk.len() as u64 - *rem
                );
                chunk.truncate(*rem as usize);
            }
            *rem -= chunk.len() as u64;
        }
        self.bytes += chunk.len() as u64;
        Bytes::from(chunk)
    }

    /// Commit the head; false if the client is gone or the head was
    /// refused (then a 500 went out instead). `default_length` becomes the
    /// `Content-Length` unless the app set one (`send-file`).
    fn start(
        &mut self,
        status: &str,
        headers: &str,
        default_length: Option<u64>,
        first: String,
    ) -> bool {
        if self.head_tx.is_none() {
            return false;
        }
        let head = match parse_head(status, headers, default_length) {
            Ok(head) => head,
            Err(why) => {
                tracing::error!("invalid response from the app: {why}");
                self.respond_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
                return false;
            }
        };
        let (status, reason, headers, content_length) = head;
        self.status = status.as_u16();
        self.remaining = content_length;
        // RFC 9110 6.4.1: 1xx, 204 and 304 responses have no content.
        self.body_allowed = !(status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED);
        let first = self.clip(first);
        let tx = self.head_tx.take().expect("checked above");
        tx.send(Head {
            status,
            reason,
            headers,
            first,
            content_length,
        })
        .is_ok()
    }

    fn send_file(
        &mut self,
        status: &str,
        headers: &str,
        opened: Option<(std::fs::File, u64)>,
        offset: u64,
    ) -> Result<(), SendFileError> {
        if self.head_tx.is_none() {
            return Err(SendFileError::Unavailable);
        }
        let Some((file, size)) = opened else {
            return Err(SendFileError::Unavailable);
        };
        let available = size.saturating_sub(offset);
        // The file's remaining size, unless the app declared a length.
        if !self.start(status, headers, Some(available), String::new()) {
            return Err(SendFileError::Disconnected);
        }
        // start() recorded the declared length in `remaining`.
        let declared = self.remaining.unwrap_or(available);
        let len = declared.min(available);
        self.bytes += len;
        self.remaining = Some(0); // the streaming task owns the framing now
        if self.body_allowed && !self.head_request {
            tokio::spawn(sendfile::stream(
                file,
                offset,
                len,
                declared - len,
                self.chunk_tx.clone(),
            ));
        }
        Ok(())
    }

    /// Push a chunk; false if the head is not out yet or the client left.
    async fn write(&mut self, chunk: String) -> bool {
        if self.head_tx.is_some() {
            return false;
        }
        if chunk.is_empty() {
            return true;
        }
        let chunk = self.clip(chunk);
        if chunk.is_empty() {
            return true;
        }
        self.chunk_tx.send(chunk).await
    }
}

type ParsedHead = (
    StatusCode,
    Option<hyper::ext::ReasonPhrase>,
    HeaderMap,
    Option<u64>,
);

/// A body chunk sent as latin-1 text → its bytes. ASCII (most bodies) is
/// already the right bytes; anything else maps char by char, and a char
/// above U+00FF (impossible from our guest, which decodes bytes as latin-1)
/// becomes `?` rather than corrupting the framing.
fn latin1_bytes(chunk: String) -> Vec<u8> {
    if chunk.is_ascii() {
        return chunk.into_bytes();
    }
    chunk
        .chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .collect()
}

/// Native (latin-1) string → bytes; None if a char is above U+00FF.
fn native_bytes(s: &str) -> Option<Vec<u8>> {
    s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect()
}

/// Re-check what the guest already validated (defence in depth: the guest
/// is untrusted code) and build hyper's head. `headers` is the packed
/// `name LF value LF ...` of `wit/wsgi.wit`; `default_length` is added as
/// `Content-Length` when the app declared none (`send-file`).
fn parse_head(
    status: &str,
    headers: &str,
    default_length: Option<u64>,
) -> Result<ParsedHead, String> {
    let code = status
        .get(..3)
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .filter(|_| status.as_bytes().get(3) == Some(&b' '))
        .ok_or_else(|| format!("status {status:?} is not 'NNN Reason'"))?;
    let reason_text = &status[4..];
    let reason = if code.canonical_reason() == Some(reason_text) {
        None
    } else {
        let bytes =
            native_bytes(reason_text).ok_or_else(|| format!("status {status:?} is not latin-1"))?;
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
        let value = items
            .next()
            .ok_or_else(|| format!("response header {name:?} has no value"))?;
        let hname = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("response header name {name:?} is invalid"))?;
        let hvalue = if value.is_ascii() {
            HeaderValue::from_str(value).ok()
        } else {
            native_bytes(value).and_then(|b| HeaderValue::from_bytes(&b).ok())
        }
        .ok_or_else(|| format!("response header {name:?} has an invalid value {value:?}"))?;
        if hname == http::header::CONTENT_LENGTH {
            let n = value
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("response Content-Length {value:?} is not a number"))?;
            if content_length.is_some_and(|m| m != n) {
                return Err("response has conflicting Content-Length headers".into());
            }
            if content_length.is_some() {
                continue;
            }
            content_length = Some(n);
        }
        map.append(hname, hvalue);
    }
    if content_length.is_none() {
        if let Some(n) = default_length {
            map.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
            content_length = Some(n);
        }
    }
    if !map.contains_key(http::header::SERVER) {
        map.insert(http::header::SERVER, HeaderValue::from_static(SERVER));
    }
    Ok((code, reason, map, content_length))
}

impl request::Host for HostState {
    async fn read_body(&mut self, max: u32) -> Result<Vec<u8>, BodyError> {
        match self.exchange.as_mut() {
            Some(ex) => ex.body.read(max).await,
            None => Err(BodyError::Disconnected),
        }
    }
}

impl response::Host for HostState {
    async fn start(&mut self, status: String, headers: String, first_chunk: String) -> bool {
        match self.exchange.as_mut() {
            Some(ex) => ex.start(&status, &headers, None, first_chunk),
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
        if self.exchange.as_ref().is_none_or(|ex| ex.head_tx.is_none()) {
            return Err(SendFileError::Unavailable);
        }
        // Opening and stat-ing touch the disk: off the runtime's threads.
        let dirs = self.dirs.clone();
        let opened = tokio::task::spawn_blocking(move || sendfile::open_granted(&dirs, &path))
            .await
            .ok()
            .flatten();
        match self.exchange.as_mut() {
            Some(ex) => ex.send_file(&status, &headers, opened, offset),
            None => Err(SendFileError::Unavailable),
        }
    }

    async fn write(&mut self, chunk: String) -> bool {
        match self.exchange.as_mut() {
            Some(ex) => ex.write(chunk).await,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_parsing_keeps_custom_reasons_and_latin1() {
        let (code, reason, headers, cl) =
            parse_head("200 Fine", "X-Name\ncaf\u{e9}\nContent-Length\n5", None).unwrap();
        assert_eq!(code, StatusCode::OK);
        assert_eq!(reason.unwrap().as_bytes(), b"Fine");
        assert_eq!(headers.get("x-name").unwrap().as_bytes(), b"caf\xe9");
        assert_eq!(headers.get("server").unwrap(), SERVER);
        assert_eq!(cl, Some(5));
        let (_, reason, headers, cl) = parse_head("404 Not Found", "", None).unwrap();
        assert!(reason.is_none());
        assert_eq!(headers.len(), 1, "only Server");
        assert_eq!(cl, None);
        let (_, _, headers, cl) = parse_head("200 OK", "X\n", Some(7)).unwrap();
        assert_eq!(headers.get("x").unwrap(), "");
        assert_eq!(headers.get("content-length").unwrap(), "7");
        assert_eq!(cl, Some(7));
        let (_, _, _, cl) = parse_head("200 OK", "content-length\n3", Some(7)).unwrap();
        assert_eq!(cl, Some(3), "the app's own length wins");
    }

    #[test]
    fn head_parsing_rejects_what_the_guest_should_have() {
        assert!(parse_head("OK", "", None).is_err());
        assert!(parse_head("2000 OK", "", None).is_err());
        assert!(parse_head("200 OK", "Bad Name\nx", None).is_err());
        assert!(parse_head("200 OK", "X\na\r\nb", None).is_err());
        assert!(parse_head("200 OK", "X\n\u{263a}", None).is_err());
        assert!(
            parse_head("200 OK", "X", None).is_err(),
            "a name without value"
        );
        assert!(parse_head("200 OK", "X\na\nY", None).is_err());
        assert!(parse_head("200 OK", "Content-Length\n1\nContent-Length\n2", None).is_err());
    }
}
