//! Body transport, apart from the WSGI protocol: the bounded response-body
//! channel and [`ResponseBody`] hyper reads from it, the request body as
//! the guest pulls it, a file streamed into a body, and host-made pages.
//!
//! Everything that produces a response (the guest through `wsgi`, static
//! files, the server's own refusals) ends in a [`ResponseBody`], so the
//! server has one body type and one place that counts what went out.

use std::io::SeekFrom;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::runtime::asked::About;
use crate::runtime::held_bytes;

/// Value of the `Server` header on every response unless the app sets one.
pub const SERVER: &str = concat!("rsgi-wasm/", env!("CARGO_PKG_VERSION"));

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

/// What a chunk on its way to hyper holds until hyper has taken it (its
/// last piece, for a chunk over [`PIECE`]).
#[derive(Default)]
pub struct Shares {
    /// Its share of the response's [`BODY_BUDGET`].
    body: Option<OwnedSemaphorePermit>,
    /// A large chunk's room among the held bytes (`held_bytes`).
    process: Option<held_bytes::Share>,
}

/// A chunk on its way to hyper, with its [`Shares`].
struct Queued {
    chunk: Chunk,
    shares: Shares,
}

/// Sending half of a response body: `send` returns once the chunk is
/// queued within [`BODY_BUDGET`] (backpressure: a slow client slows the
/// app, memory stays bounded).
#[derive(Clone)]
pub struct BodySender {
    tx: mpsc::UnboundedSender<Queued>,
    budget: Arc<Semaphore>,
    taken: Arc<LastTaken>,
    /// How long `send` waits for a client taking nothing (`None`: as long
    /// as it takes).
    stall: Option<Duration>,
    /// `send` gave up on a client that took nothing for `stall` (shared by
    /// clones: any of them may be the one that gave up).
    stalled: Arc<AtomicBool>,
    /// The app and request, named in the log line about giving up.
    about: About,
}

/// Receiving half of a response body, read by [`ResponseBody`].
pub struct BodyReceiver {
    rx: mpsc::UnboundedReceiver<Queued>,
    taken: Arc<LastTaken>,
}

/// A response-body channel with a [`BODY_BUDGET`] of queued bytes.
pub fn body_channel() -> (BodySender, BodyReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let budget = Arc::new(Semaphore::new(BODY_BUDGET));
    let taken = LastTaken::new();
    (
        BodySender {
            tx,
            budget,
            taken: taken.clone(),
            stall: None,
            stalled: Default::default(),
            about: About::default(),
        },
        BodyReceiver { rx, taken },
    )
}

/// How many times the stall time a client that has shown it reads may
/// take nothing before it is cut. A reader's kernel reopens a full
/// receive window only once a share of its buffer is free (Linux: the
/// larger of one segment, 64 KiB on loopback, and a sixteenth of the
/// buffer), so a client steadily reading 10 KB/s takes nothing for 12 s
/// at a time, and was cut as stalled at the default 10 s.
pub const SLOW_READER_PATIENCE: u32 = 6;

/// A pause in taking bytes that, ended by the client taking more, shows
/// it is reading, not stalled.
pub const READING_SHOWN_AFTER: Duration = Duration::from_secs(1);

/// When hyper last took bytes of a response, shared by its sender, its
/// body and the watch on a held chunk: a stall is a stretch with nothing
/// taken, however long the whole response takes a slow client.
struct LastTaken {
    base: tokio::time::Instant,
    /// Nanoseconds from `base` (0: nothing taken yet).
    last: AtomicU64,
    /// The client took bytes after pausing for [`READING_SHOWN_AFTER`]
    /// with the app's bytes waiting: it reads, slowly.
    reading: AtomicBool,
}

impl LastTaken {
    fn new() -> Arc<Self> {
        Arc::new(LastTaken {
            base: tokio::time::Instant::now(),
            last: AtomicU64::new(0),
            reading: AtomicBool::new(false),
        })
    }

    /// hyper took bytes now; `client_paced` if they were waiting for it
    /// (it had not been waiting on the app since it last took some).
    fn mark(&self, client_paced: bool) {
        let now = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let before = self.last.swap(now, Ordering::Relaxed);
        let paused = Duration::from_nanos(now.saturating_sub(before));
        if client_paced && before != 0 && paused >= READING_SHOWN_AFTER {
            self.reading.store(true, Ordering::Relaxed);
        }
    }

    /// How long a wait may go with nothing taken: `stall`, or
    /// [`SLOW_READER_PATIENCE`] times it for a client shown to be reading.
    fn patience(&self, stall: Duration) -> Duration {
        if self.reading.load(Ordering::Relaxed) {
            stall * SLOW_READER_PATIENCE
        } else {
            stall
        }
    }

    /// When a wait that began at `since` has gone its patience with
    /// nothing taken.
    fn stalled_at(&self, since: tokio::time::Instant, stall: Duration) -> tokio::time::Instant {
        let last = self.base + Duration::from_nanos(self.last.load(Ordering::Relaxed));
        last.max(since) + self.patience(stall)
    }
}

impl BodySender {
    /// Give up on a client that takes nothing for `stall`: `send` then
    /// says it went away, so the app stops instead of holding its instance.
    pub fn with_stall(mut self, stall: Duration) -> Self {
        self.stall = Some(stall);
        self
    }

    /// Name the app and request in the log line about a client that took
    /// nothing.
    pub fn about(mut self, about: About) -> Self {
        self.about = about;
        self
    }

    /// Queue a chunk, waiting while the budget is used up (a chunk larger
    /// than the budget waits for all of it and then goes alone); false if
    /// the client went away or took nothing for the stall limit.
    pub async fn send(&self, chunk: Bytes) -> bool {
        let share = chunk.len().clamp(1, BODY_BUDGET) as u32;
        // Dropping the receiver drops what it queued, which returns the
        // budget, so this cannot wait for a client that is gone.
        let mut acquire = std::pin::pin!(self.budget.clone().acquire_many_owned(share));
        let permit = match self.stall {
            None => acquire.await,
            Some(stall) => {
                let since = tokio::time::Instant::now();
                loop {
                    let due = self.taken.stalled_at(since, stall);
                    match tokio::time::timeout_at(due, &mut acquire).await {
                        Ok(permit) => break permit,
                        // Bytes were taken meanwhile: slow, not stalled.
                        Err(_) if self.taken.stalled_at(since, stall) > due => {}
                        Err(_) => {
                            // Cut short, not ended: a client that reads on
                            // must not take what it got for the whole.
                            let why = stalled(self.taken.patience(stall));
                            self.about.info(&format!("response cut short: {why}"));
                            self.stalled.store(true, Ordering::Relaxed);
                            self.abort(why);
                            return false;
                        }
                    }
                }
            }
        };
        let Ok(permit) = permit else {
            // Only the stall watch of a held chunk closes the budget.
            self.stalled.store(true, Ordering::Relaxed);
            return false;
        };
        let process = match held_bytes::take(&self.app_name(), chunk.len(), self.tx.closed()).await
        {
            Ok(share) => share,
            Err(refused) => {
                if let held_bytes::Refused::Full(own) = refused {
                    let why = format!("response cut short: {}", held_bytes::full(own));
                    self.about.info(&why);
                    self.abort(why);
                }
                self.stalled.store(true, Ordering::Relaxed);
                return false;
            }
        };
        self.tx
            .send(Queued {
                chunk: Ok(chunk),
                shares: Shares {
                    body: Some(permit),
                    process,
                },
            })
            .is_ok()
    }

    /// The app sending, as its held bytes are counted.
    pub fn app_name(&self) -> Arc<str> {
        self.about
            .app_name()
            .cloned()
            .unwrap_or_else(|| Arc::from(""))
    }

    /// Whether the receiving end is gone: the client left.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Whether the client ended the body early: it left, or took nothing
    /// for the stall limit.
    pub fn client_gave_out(&self) -> bool {
        self.is_closed() || self.stalled.load(Ordering::Relaxed)
    }

    /// Cut the body short for a fault of the app's, saying `why` in a
    /// warning that names the app and request.
    pub fn cut_short(&self, why: String) {
        self.about.warn(&why);
        self.abort(why);
    }

    /// Cut the body short (see [`BodyAbort`]).
    pub fn abort(&self, why: String) {
        let _ = self.tx.send(Queued {
            chunk: Err(BodyAbort(why)),
            shares: Shares::default(),
        });
    }
}

/// Most bytes handed to hyper in one frame. hyper's HTTP/2 side takes a
/// frame whole whatever the peer's flow-control window, and waits for
/// window before it polls the body again: cut to this size, a stream whose
/// client never opens its window holds one piece in hyper, and the rest of
/// a large chunk stays here, where the stall watch can drop it.
const PIECE: usize = 16 * 1024;

/// Chunks larger than this are watched for a client taking nothing (and
/// copied out in pieces, so dropping the rest frees it). Smaller ones go
/// out as views with no task of their own: a stalled stream holds at most
/// this much here, and a page of a few hundred KiB costs no timer.
const WATCHED: usize = 1 << 20;

/// The rest of a chunk larger than [`PIECE`], given to hyper a piece at a
/// time; shared with the task that watches it for a client taking nothing.
struct Held {
    rest: Bytes,
    /// The chunk's shares of the body budget (the sender waits until the
    /// last piece is taken) and of the process's held bytes.
    shares: Shares,
    /// Set when `rest` was dropped (the stall watch, or another app
    /// taking its room back), to why.
    expired: Option<String>,
    /// Pieces are copies (the chunk is watched).
    copied: bool,
    /// The app and request, named in the line about cutting it short.
    about: About,
}

impl Held {
    /// Drop the rest, give its room back and stop the sender: the body
    /// fails with `why` at its next poll.
    fn drop_rest(&mut self, why: String) {
        self.rest = Bytes::new();
        if let Some(budget) = self.shares.body.take() {
            budget.semaphore().close();
        }
        self.shares.process = None;
        self.expired = Some(why);
    }
}

impl held_bytes::Reclaimable for std::sync::Mutex<Held> {
    fn left(&self) -> usize {
        self.lock().map_or(0, |h| h.rest.len())
    }

    fn cut(&self, why: String) {
        if let Ok(mut h) = self.lock() {
            h.about.info(&why);
            h.drop_rest(why);
        }
    }
}

/// A response body: bytes known up front, or streamed through a
/// [`body_channel`] (from the guest or a file).
pub struct ResponseBody {
    first: Option<Bytes>,
    /// The first chunk's room among the held bytes.
    first_share: Option<held_bytes::Share>,
    held: Option<Arc<std::sync::Mutex<Held>>>,
    rx: Option<mpsc::UnboundedReceiver<Queued>>,
    taken: Arc<LastTaken>,
    hint: SizeHint,
    /// An abort held back a moment (see `poll_next`), with its timer.
    abort: Option<(BodyAbort, Pin<Box<tokio::time::Sleep>>)>,
    /// How long a large chunk may wait for hyper to take its next piece
    /// before it is dropped (`None`: as long as it takes).
    stall: Option<Duration>,
    /// hyper found no bytes ready since it last took some: a pause until
    /// the next is the app's, not the client's.
    waited_on_app: bool,
    /// The app and request named in the lines about cutting it short.
    about: About,
}

impl ResponseBody {
    /// A body that is just `bytes` (host-generated responses).
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        ResponseBody {
            hint: SizeHint::with_exact(bytes.len() as u64),
            first: Some(bytes),
            first_share: None,
            held: None,
            rx: None,
            taken: LastTaken::new(),
            abort: None,
            stall: None,
            waited_on_app: false,
            about: About::default(),
        }
    }

    /// No body.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// The body of a response that has none (HEAD, 204, 304) but may
    /// announce a length: not at its end before hyper writes the head, so
    /// HTTP/1 keeps the `Content-Length` and HTTP/2 sends the head alone
    /// with nothing after it.
    pub fn bodiless(content_length: Option<u64>) -> Self {
        if content_length.is_none() {
            return Self::empty();
        }
        let (tx, rx) = body_channel();
        drop(tx);
        Self::streamed(Bytes::new(), rx, content_length)
    }

    /// `first`, then what arrives on `rx`; `content_length` is the size hint.
    pub fn streamed(first: Bytes, rx: BodyReceiver, content_length: Option<u64>) -> Self {
        ResponseBody {
            hint: content_length.map_or_else(SizeHint::new, SizeHint::with_exact),
            first: Some(first),
            first_share: None,
            held: None,
            rx: Some(rx.rx),
            taken: rx.taken,
            abort: None,
            stall: None,
            waited_on_app: false,
            about: About::default(),
        }
    }

    /// `len` bytes of `file` from `offset`, read by a task of their own,
    /// which gives up (closing the file) on a client that takes nothing
    /// for `stall`.
    pub fn file(file: std::fs::File, offset: u64, len: u64, stall: Duration) -> Self {
        let (tx, rx) = body_channel();
        tokio::spawn(stream_file(file, offset, len, 0, tx.with_stall(stall)));
        Self::streamed(Bytes::new(), rx, Some(len))
    }

    /// Drop the rest of a large chunk hyper takes no piece of for `stall`
    /// (an HTTP/2 client that never opens its window would otherwise keep
    /// it in memory for as long as it stays connected); the body then
    /// fails, and the sender is told the client is gone.
    pub fn stalling_after(mut self, stall: Duration) -> Self {
        self.stall = Some(stall);
        self
    }

    /// Name the app and request in the lines about cutting it short.
    pub fn about(mut self, about: About) -> Self {
        self.about = about;
        self
    }

    /// The first chunk's room among the held bytes (`held_bytes::take`),
    /// kept until hyper has taken it.
    pub fn with_first_share(mut self, share: Option<held_bytes::Share>) -> Self {
        self.first_share = share;
        self
    }

    /// The first piece of `chunk`, holding the rest (with its `shares`)
    /// for the next polls when it is larger than [`PIECE`].
    fn hold(&mut self, mut chunk: Bytes, shares: Shares) -> Bytes {
        if chunk.len() <= PIECE {
            return chunk;
        }
        let watch_for = self.stall.filter(|_| chunk.len() > WATCHED);
        let copied = watch_for.is_some();
        let piece = next_of(&mut chunk, copied);
        let len = chunk.len();
        let held = Arc::new(std::sync::Mutex::new(Held {
            rest: chunk,
            shares,
            expired: None,
            copied,
            about: self.about.clone(),
        }));
        if let Some(share) = held.lock().expect("held lock").shares.process.as_ref() {
            let weak: std::sync::Weak<dyn held_bytes::Reclaimable> = Arc::downgrade(&held) as _;
            share.taken_by(weak, len);
        }
        if let (Some(stall), Ok(runtime)) = (watch_for, tokio::runtime::Handle::try_current()) {
            let since = tokio::time::Instant::now();
            let watched = (Arc::downgrade(&held), self.taken.clone());
            runtime.spawn(watch(watched, since, stall));
        }
        self.held = Some(held);
        piece
    }

    /// The next piece of a held chunk, if one is held.
    fn next_piece(&mut self) -> Option<Result<Bytes, BodyAbort>> {
        let held = self.held.as_ref()?;
        let mut h = held.lock().expect("held lock");
        if let Some(why) = h.expired.take() {
            drop(h);
            self.held = None;
            return Some(Err(BodyAbort(why)));
        }
        let copied = h.copied;
        let piece = next_of(&mut h.rest, copied);
        if h.rest.is_empty() {
            drop(h);
            self.held = None;
        }
        Some(Ok(piece))
    }
}

/// The next piece of `rest`: `copied` for a watched chunk, as a view
/// would keep the whole chunk's memory alive for as long as hyper holds
/// the piece, so dropping the rest of a stalled response would free
/// nothing.
fn next_of(rest: &mut Bytes, copied: bool) -> Bytes {
    let n = rest.len().min(PIECE);
    if !copied {
        return rest.split_to(n);
    }
    let piece = Bytes::copy_from_slice(&rest[..n]);
    rest.advance(n);
    piece
}

/// How long a failed response body waits before it fails (see
/// `poll_next`): time for the connection to write what was queued.
const FLUSH_BEFORE_ABORT: Duration = Duration::from_millis(20);

fn stalled(stall: Duration) -> String {
    format!("the client took no response bytes for {stall:?}")
}

/// Drop a held chunk's rest once hyper has taken nothing for `stall`, and
/// close its budget so the sender stops at once; ends when the body is
/// done with the chunk.
async fn watch(
    (held, taken): (std::sync::Weak<std::sync::Mutex<Held>>, Arc<LastTaken>),
    since: tokio::time::Instant,
    stall: Duration,
) {
    loop {
        tokio::time::sleep_until(taken.stalled_at(since, stall)).await;
        let Some(h) = held.upgrade() else { return };
        let mut h = h.lock().expect("held lock");
        if h.rest.is_empty() {
            return;
        }
        if taken.stalled_at(since, stall) <= tokio::time::Instant::now() {
            let why = stalled(taken.patience(stall));
            h.about.info(&format!("response cut short: {why}"));
            h.drop_rest(why);
            return;
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
        let polled = self.poll_next(cx);
        match polled {
            Poll::Ready(Some(Ok(_))) => {
                self.taken.mark(!self.waited_on_app);
                self.waited_on_app = false;
            }
            Poll::Pending => self.waited_on_app = true,
            Poll::Ready(_) => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_none()
            && self.held.is_none()
            && self.abort.is_none()
            && self.first.as_ref().is_none_or(|b| b.is_empty())
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

impl ResponseBody {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyAbort>>> {
        if let Some((_, delay)) = self.abort.as_mut() {
            if std::future::Future::poll(delay.as_mut(), cx).is_pending() {
                return Poll::Pending;
            }
            let (abort, _) = self.abort.take().expect("just seen");
            return Poll::Ready(Some(Err(abort)));
        }
        if let Some(first) = self.first.take() {
            if !first.is_empty() {
                let shares = Shares {
                    body: None,
                    process: self.first_share.take(),
                };
                let piece = self.hold(first, shares);
                return Poll::Ready(Some(Ok(Frame::data(piece))));
            }
        }
        if let Some(piece) = self.next_piece() {
            return Poll::Ready(Some(piece.map(Frame::data)));
        }
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        // The chunk's share of the budget is returned as hyper takes it.
        match rx.poll_recv(cx) {
            Poll::Ready(Some(Queued {
                chunk: Ok(b),
                shares,
            })) => Poll::Ready(Some(Ok(Frame::data(self.hold(b, shares))))),
            Poll::Ready(Some(Queued { chunk: Err(e), .. })) => {
                // hyper drops its unflushed write buffer when a body fails,
                // and HTTP/2 a reset stream's queued frames: the failure
                // waits a moment, so the head and the bytes sent so far
                // are written first (HTTP/2's by the connection's own task).
                self.rx = None;
                self.abort = Some((e, Box::pin(tokio::time::sleep(FLUSH_BEFORE_ABORT))));
                self.poll_next(cx)
            }
            Poll::Ready(None) => {
                self.rx = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A page the host writes itself (an error, a refusal): plain text, with
/// `Content-Length` and `Server`, `Retry-After` on a 503 and `Allow` on
/// a 405.
pub fn host_page(status: StatusCode, text: &str) -> Response<ResponseBody> {
    let body = Bytes::from(format!("{text}\n"));
    let mut headers = HeaderMap::with_capacity(4);
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers.insert(http::header::SERVER, HeaderValue::from_static(SERVER));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        // RFC 9110 requires it on a 405; the host's own endpoints (static
        // files, the operator's port) all take only these two.
        headers.insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    let mut res = Response::new(ResponseBody::full(body));
    *res.status_mut() = status;
    *res.headers_mut() = headers;
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        // RFC 9110's name, which the guest's own 413 uses too (the http
        // crate still has RFC 7231's "Payload Too Large").
        res.extensions_mut()
            .insert(hyper::ext::ReasonPhrase::from_static(b"Content Too Large"));
    }
    res
}

/// Marks a response to a client that had already left (it stopped sending
/// its body): the access line says 499 for it, whatever its status.
#[derive(Debug, Clone, Copy)]
pub struct ClientLeft;

/// The page for a request whose body could not be read: over HTTP/1 it
/// says `Connection: close`, as hyper closes the connection after it; to
/// a client that left it is marked [`ClientLeft`].
pub fn fault_page(
    status: StatusCode,
    text: &str,
    http1: bool,
    left: bool,
) -> Response<ResponseBody> {
    let mut res = host_page(status, text);
    mark(&mut res, http1, left);
    res
}

fn mark<B>(res: &mut Response<B>, closes: bool, left: bool) {
    if closes {
        res.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    if left {
        res.extensions_mut().insert(ClientLeft);
    }
}

/// Whether a request body failed because the client left: over HTTP/2,
/// anything but a body h2 itself found malformed (its length not the
/// `content-length` it declared, which h2 resets with a protocol error:
/// the client's malformed request, not its leaving); over HTTP/1, anything
/// but the framing errors hyper reports as invalid data (a bad chunk size,
/// say) is the connection ending early (EOF, a reset).
pub fn client_left(e: &hyper::Error, http1: bool) -> bool {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if let (Some(h2), false) = (c.downcast_ref::<h2::Error>(), http1) {
            return h2.is_remote() || h2.reason() != Some(h2::Reason::PROTOCOL_ERROR);
        }
        if let (Some(io), true) = (c.downcast_ref::<std::io::Error>(), http1) {
            use std::io::ErrorKind::{InvalidData, InvalidInput};
            return !matches!(io.kind(), InvalidData | InvalidInput);
        }
        cause = c.source();
    }
    true
}

/// Why the request body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// More than the limit arrived.
    TooLarge,
    /// Malformed framing, or the client left.
    Disconnected,
}

/// The slowest a request body may arrive, in bytes per second of the
/// app waiting for it, after a first `--header-timeout` of grace: a client
/// trickling bytes would otherwise hold an instance until `--timeout`.
const MIN_RATE: f64 = 1024.0;

/// How long a request body may keep the app waiting: `stall` for any one
/// wait, and over the whole body a first `stall` of grace plus the time
/// `MIN_RATE` earns for the bytes received. Only time the app spends
/// waiting for the client counts, not the app's own pace.
#[derive(Debug, Clone)]
pub struct Pace {
    /// The longest one wait for the client's next bytes.
    pub stall: Duration,
    waited: Duration,
    /// The app and request the body is for, named in the log line about
    /// giving up.
    about: About,
}

impl Pace {
    /// Nothing waited yet.
    pub fn new(stall: Duration) -> Self {
        Pace {
            stall,
            waited: Duration::ZERO,
            about: About::default(),
        }
    }

    /// How long the next wait may last, `received` bytes in; zero when the
    /// client used up its time.
    pub fn patience(&self, received: u64) -> Duration {
        let earned = self.stall + Duration::from_secs_f64(received as f64 / MIN_RATE);
        earned.saturating_sub(self.waited).min(self.stall)
    }

    /// Count a wait for the client.
    pub fn waited(&mut self, d: Duration) {
        self.waited += d;
    }

    /// Log why a wait of `patience` that ran out ends the body.
    pub fn log_timeout(&self, patience: Duration, received: u64) {
        let why = if patience < self.stall {
            format!(
                "{received} bytes in {:?} of waiting, slower than {MIN_RATE} bytes/s",
                self.waited
            )
        } else {
            format!("nothing from the client for {:?}", self.stall)
        };
        self.about.info(&format!(
            "request body: {why}; given up (408 unless the response had started)"
        ));
    }
}

/// The text of the 408 for a client that sent its body too slowly.
pub const SLOW_BODY: &str = "Request Timeout: the request body arrived too slowly";

/// The request body as the guest pulls it, with the `--max-body` check for
/// bodies whose length is not known up front (chunked).
pub struct RequestBody {
    incoming: Option<Incoming>,
    /// How long reads may wait for the client.
    pace: Pace,
    /// Reading failed (malformed chunked framing or the client left).
    failed: bool,
    /// It went past the limit: the rest is not read, so hyper closes.
    overflowed: bool,
    /// The client was too slow: it stalled, or trickled under `MIN_RATE`.
    timed_out: bool,
    leftover: Bytes,
    received: u64,
    limit: u64,
    /// Read what the app left unread when dropped, so the connection stays
    /// open for the client's next request.
    drain: bool,
    /// An HTTP/1 request with `Expect: 100-continue`.
    expects_continue: bool,
    /// Over HTTP/1, where a failed body ends the connection.
    http1: bool,
    /// Reading failed because the client left (not bad framing).
    gone: bool,
    /// A read is waiting for the client's next bytes; still set if that
    /// read was abandoned (the request's `--timeout` ran out meanwhile).
    waiting: bool,
}

/// A request body handed to another transport, with its bounds.
pub struct Taken {
    /// hyper's body, unread.
    pub incoming: Incoming,
    /// `--max-body`.
    pub limit: u64,
    /// How long the reader may be kept waiting.
    pub pace: Pace,
    /// Drain what is left unread ([`drain_later`]).
    pub drain: bool,
    /// Over HTTP/1 ([`client_left`]).
    pub http1: bool,
    /// The client waits for a `100 Continue`, which hyper sends when the
    /// body is first read ([`RequestBody::unread_after_expect`]).
    pub expects_continue: bool,
}

impl RequestBody {
    /// Wrap hyper's body; more than `limit` bytes is refused as too large,
    /// and a client sending nothing for `stall` is taken as gone.
    pub fn new(incoming: Incoming, limit: u64, stall: Duration) -> Self {
        RequestBody {
            incoming: Some(incoming),
            pace: Pace::new(stall),
            failed: false,
            overflowed: false,
            timed_out: false,
            leftover: Bytes::new(),
            received: 0,
            limit,
            drain: false,
            expects_continue: false,
            http1: false,
            gone: false,
            waiting: false,
        }
    }

    /// Name the app and request in the log line about a client that
    /// stalled.
    pub fn about(mut self, about: About) -> Self {
        self.pace.about = about;
        self
    }

    /// A body on an HTTP/1 connection, which hyper closes when a request
    /// body is left unread, without saying so (a client still sending
    /// gets a broken pipe instead of the response); HTTP/2 resets just the
    /// stream. So the unread rest (up to the limit) is drained once
    /// dropped, unless the client waits for a `100 Continue` that was
    /// never sent (see [`unread_after_expect`](Self::unread_after_expect)).
    pub fn over_http1(mut self, expects_continue: bool) -> Self {
        self.drain = !expects_continue;
        self.expects_continue = expects_continue;
        self.http1 = true;
        self
    }

    /// The body, unread, for another transport (with what it must keep to:
    /// the limit, the pace, whether to drain it); `None` once taken or read
    /// from.
    pub fn take(&mut self) -> Option<Taken> {
        if self.received > 0 || !self.leftover.is_empty() {
            return None;
        }
        Some(Taken {
            incoming: self.incoming.take()?,
            limit: self.limit,
            pace: self.pace.clone(),
            drain: self.drain,
            http1: self.http1,
            expects_continue: self.expects_continue,
        })
    }

    /// Whether the client waits for `100 Continue` that was never sent: the
    /// app answered without reading. hyper then closes the connection, so
    /// the response says so.
    pub fn unread_after_expect(&self) -> bool {
        self.expects_continue
            && self.received == 0
            && self.incoming.as_ref().is_some_and(|i| !i.is_end_stream())
    }

    /// Whether reading failed (the request, not the app, is at fault).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Whether it failed because the client was too slow (408).
    pub fn timed_out(&self) -> bool {
        self.timed_out
    }

    /// If the app was left waiting for the client's next bytes (a read
    /// began and never returned: the request ran out of time in it), give
    /// up on the client as too slow (408, the connection closed with the
    /// response); whether it was.
    pub fn give_up_if_left_waiting(&mut self) -> bool {
        if self.waiting {
            self.incoming = None;
            self.failed = true;
            self.timed_out = true;
        }
        self.waiting
    }

    /// Mark the response for what reading this body left behind: hyper
    /// closes an HTTP/1 connection whose body failed, went past the limit
    /// or whose `100 Continue` was never sent, so the response says so; a
    /// client that left is logged 499 ([`ClientLeft`]).
    pub fn mark<B>(&self, res: &mut Response<B>) {
        let closes = self.http1 && (self.failed || self.overflowed || self.unread_after_expect());
        mark(res, closes, self.gone);
    }

    /// Up to `max` bytes (at least one); empty at the end of the body.
    pub async fn read(&mut self, max: u32) -> Result<Vec<u8>, ReadError> {
        while self.leftover.is_empty() {
            let patience = self.pace.patience(self.received);
            let Some(incoming) = self.incoming.as_mut() else {
                return Ok(Vec::new());
            };
            let t0 = tokio::time::Instant::now();
            self.waiting = true;
            let frame = tokio::time::timeout(patience, incoming.frame()).await;
            self.waiting = false;
            self.pace.waited(t0.elapsed());
            let Ok(frame) = frame else {
                self.pace.log_timeout(patience, self.received);
                self.incoming = None;
                self.failed = true;
                self.timed_out = true;
                return Err(ReadError::Disconnected);
            };
            match frame {
                None => {
                    // hyper ends an HTTP/2 body at RST_STREAM(NO_ERROR) as
                    // if it were whole (a server's way to stop an upload it
                    // answered early, RFC 9113 §8.1): short of its
                    // Content-Length, the client gave it up.
                    let short = incoming.size_hint().exact().is_some_and(|left| left > 0);
                    self.incoming = None;
                    if short {
                        tracing::debug!("request body ended before its Content-Length");
                        self.failed = true;
                        self.gone = true;
                        return Err(ReadError::Disconnected);
                    }
                    return Ok(Vec::new());
                }
                Some(Err(e)) => {
                    tracing::debug!("request body read failed: {e}");
                    self.incoming = None;
                    self.failed = true;
                    self.gone = client_left(&e, self.http1);
                    if let (false, Some(asked)) = (self.gone, self.pace.about.asked()) {
                        asked.mark_malformed();
                    }
                    return Err(ReadError::Disconnected);
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.received += data.len() as u64;
                        if self.received > self.limit {
                            self.incoming = None;
                            self.overflowed = true;
                            return Err(ReadError::TooLarge);
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

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let Some(incoming) = self.incoming.take() {
            if self.drain {
                let left = self.limit.saturating_sub(self.received);
                drain_later(incoming, self.pace.clone(), self.received, left);
            }
        }
    }
}

/// Read and drop what is left of a body the app did not read, up to `left`
/// more bytes and at the pace a read body must keep (`pace`, with
/// `received` bytes in so far: no stall, no trickle), on a task of its
/// own: the HTTP/1 connection then goes on to the next request. Given up
/// at the limit, a stall, a trickle or an error: hyper then closes the
/// connection, as it would have.
pub fn drain_later(mut incoming: Incoming, mut pace: Pace, mut received: u64, mut left: u64) {
    if incoming.is_end_stream() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        loop {
            let patience = pace.patience(received);
            let t0 = tokio::time::Instant::now();
            let frame = match tokio::time::timeout(patience, incoming.frame()).await {
                Ok(Some(Ok(frame))) => frame,
                Err(_) => {
                    pace.log_timeout(patience, received);
                    return;
                }
                // The client left or broke its framing: nothing to say.
                _ => return,
            };
            pace.waited(t0.elapsed());
            let n = frame.data_ref().map_or(0, |d| d.len() as u64);
            received += n;
            match left.checked_sub(n) {
                Some(rest) => left = rest,
                None => {
                    // A chunked body has no length to refuse it by before
                    // the app answered; the client, and any request it
                    // sent after it, see the connection end (unless hyper
                    // had the rest in hand already).
                    pace.about.info(&format!(
                        "request body: the app left it unread, and {received} bytes of it \
                             came, past --max-body: not read further, which ends the \
                             connection unless the rest had arrived already"
                    ));
                    return;
                }
            }
        }
    });
}

const FILE_CHUNK: usize = 64 * 1024;

/// Send `len` bytes of `file` from `offset` into a body channel; a file
/// that ends early, or `short_by` missing bytes the app's Content-Length
/// promised, abort the body so the client sees the truncation.
pub async fn stream_file(
    file: std::fs::File,
    offset: u64,
    len: u64,
    short_by: u64,
    tx: BodySender,
) {
    let mut file = tokio::fs::File::from_std(file);
    if let Err(e) = file.seek(SeekFrom::Start(offset)).await {
        tx.abort(format!("seeking the file: {e}"));
        return;
    }
    let mut left = len;
    while left > 0 {
        let mut buf = vec![0u8; FILE_CHUNK.min(left as usize)];
        match file.read(&mut buf).await {
            Ok(0) => {
                // The client sees a truncation; the operator, why.
                tracing::warn!(
                    "a file was cut short while it was sent ({} of {len} bytes): something \
                     truncated it meanwhile (for an app's file, perhaps a later request)",
                    len - left
                );
                tx.abort("file shrank while it was sent".into());
                return;
            }
            Ok(n) => {
                buf.truncate(n);
                left -= n as u64;
                if !tx.send(Bytes::from(buf)).await {
                    return; // client went away
                }
            }
            Err(e) => {
                tx.abort(format!("reading the file: {e}"));
                return;
            }
        }
    }
    if short_by > 0 {
        // Logged, with the app's name, by whoever knew it was short.
        tx.abort(format!(
            "file is {short_by} bytes shorter than the app's Content-Length"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn data(body: &mut ResponseBody) -> Bytes {
        let frame = body.frame().await.expect("a frame").expect("data");
        frame.into_data().expect("data")
    }

    #[tokio::test]
    async fn a_large_body_goes_out_in_pieces_and_whole() {
        // Views of an unwatched chunk, copies of a watched one.
        for len in [4 * PIECE + 7, WATCHED + 7] {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut body = ResponseBody::full(bytes.clone()).stalling_after(Duration::from_secs(5));
            let mut got = Vec::new();
            while !body.is_end_stream() {
                let piece = data(&mut body).await;
                assert!(!piece.is_empty() && piece.len() <= PIECE, "{}", piece.len());
                got.extend_from_slice(&piece);
            }
            assert_eq!(got, bytes);
            assert!(body.frame().await.is_none());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_large_chunk_nobody_takes_is_dropped_after_the_stall() {
        let stall = Duration::from_secs(5);
        let (tx, rx) = body_channel();
        let tx = tx.with_stall(stall);
        let mut body = ResponseBody::streamed(Bytes::new(), rx, None).stalling_after(stall);
        assert!(tx.send(Bytes::from(vec![7; WATCHED + 1])).await);
        assert_eq!(data(&mut body).await.len(), PIECE);
        // Pieces taken within the stall keep the chunk, however long the
        // whole takes; the sender waits for its budget meanwhile, past its
        // own stall, as the client is slow, not gone.
        let next = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(Bytes::from_static(b"next")).await }
        });
        for _ in 0..2 {
            tokio::time::sleep(stall - Duration::from_secs(1)).await;
            assert_eq!(data(&mut body).await.len(), PIECE);
        }
        assert!(!next.is_finished());
        // Taking pieces after pauses showed a reader: one stall with
        // nothing taken is not the end (its window may reopen rarely).
        tokio::time::sleep(stall + Duration::from_secs(1)).await;
        assert!(!next.is_finished());
        // Nothing taken for its longer patience: the rest is dropped, the
        // sender hears the client is gone, and the body fails.
        tokio::time::sleep(stall * (SLOW_READER_PATIENCE - 1)).await;
        assert!(!next.await.unwrap());
        assert!(!tx.send(Bytes::from_static(b"more")).await);
        let e = body.frame().await.expect("a frame").unwrap_err();
        assert!(e.0.contains("no response bytes for 30s"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_that_were_the_app_s_show_no_reader() {
        let stall = Duration::from_secs(5);
        let (tx, rx) = body_channel();
        let tx = tx.with_stall(stall);
        let mut body = ResponseBody::streamed(Bytes::new(), rx, None);
        // The app takes 2 s for each chunk; the client takes each at once.
        for _ in 0..3 {
            let sender = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                sender.send(Bytes::from_static(b"chunk")).await
            });
            assert_eq!(data(&mut body).await, Bytes::from_static(b"chunk"));
        }
        // Then the client takes nothing: the app's send gives up after one
        // stall, as for a client never seen reading.
        let start = tokio::time::Instant::now();
        assert!(tx.send(Bytes::from(vec![1; BODY_BUDGET])).await);
        assert!(!tx.send(Bytes::from_static(b"more")).await);
        assert_eq!(start.elapsed(), stall);
    }
}
