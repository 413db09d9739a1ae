//! A connection's socket whose writes give up once the client has taken
//! no bytes for the stall time (`--header-timeout`). hyper waits for a
//! writable socket without limit, so a client that stops reading would
//! otherwise keep its connection slot, and the response buffered for it,
//! for as long as it likes (a slow-read attack). Progress is what the
//! client takes, not when the socket turns writable: the kernel wakes a
//! writer only once much of the send buffer is free again, which a slow
//! but steady reader of a large buffer may take minutes to free.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::runtime::body::SLOW_READER_PATIENCE;

/// `io`, whose writes fail with `TimedOut` after `stall` without progress.
pub struct WriteDeadline<T> {
    io: T,
    /// Bytes written to `io` so far (see [`Delivered`]).
    written: Arc<AtomicU64>,
    stall: Duration,
    /// Armed while a write waits for the client; cleared by any progress.
    waiting: Option<Pin<Box<Sleep>>>,
    /// What [`Unsent`] said when the wait began or last moved on.
    unsent: Option<u64>,
    /// The client took bytes while a write waited past the stall time: it
    /// reads, slowly, and is given [`SLOW_READER_PATIENCE`] times as long.
    reading: bool,
}

/// Most bytes a connection's socket holds that are not sent yet (before
/// the client's window lets them go): a writer is woken once half of them
/// went, so readiness, and the stall watches timed from it, follow what
/// the client takes, 16 KiB at a time, as `--header-timeout`'s documented
/// floor has it; left alone, the kernel buffers megabytes for a slow
/// reader and wakes the writer only once a third of that is gone.
const UNSENT_LOW_WATER: libc::c_int = 32 * 1024;

/// Bytes a client must take while a write waits (or, for the connection
/// idle check, per `--header-timeout`) for its progress to count: a
/// client's settings, pings and window updates are less, and so is what a
/// non-reading client's kernel takes as it compacts a small buffer.
pub const MIN_PROGRESS: u64 = 1024;

/// Keep at most [`UNSENT_LOW_WATER`] unsent bytes in `stream`'s socket.
pub fn limit_unsent(stream: &tokio::net::TcpStream) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let value = UNSENT_LOW_WATER;
        // SAFETY: setting an int option on a socket this stream owns.
        let rc = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NOTSENT_LOWAT,
                std::ptr::from_ref(&value).cast(),
                std::mem::size_of_val(&value) as libc::socklen_t,
            )
        };
        if rc != 0 {
            tracing::debug!("TCP_NOTSENT_LOWAT: {}", io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = stream;
}

/// Bytes written to a connection that its client's window has not let
/// go yet: they shrink only as the client reads. (Bytes sent but not yet
/// acknowledged would not do: a client that reads nothing still
/// acknowledges what was in flight when its window shut, which was taken
/// for a reader's progress.)
pub trait Unsent {
    /// `None` where the system cannot tell.
    fn unsent(&self) -> Option<u64>;
}

impl Unsent for tokio::net::TcpStream {
    fn unsent(&self) -> Option<u64> {
        use std::os::fd::AsFd;
        queued_in(self.as_fd(), Queued::NotSent)
    }
}

/// Which part of a socket's send queue [`queued_in`] counts.
#[derive(Clone, Copy)]
pub enum Queued {
    /// Not acknowledged by the peer (`SIOCOUTQ`).
    Unacknowledged,
    /// Not sent yet (`SIOCOUTQNSD`).
    NotSent,
}

/// The bytes in `socket`'s send queue that are `which`.
#[cfg(target_os = "linux")]
pub fn queued_in(socket: std::os::fd::BorrowedFd<'_>, which: Queued) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let request = match which {
        Queued::Unacknowledged => libc::TIOCOUTQ,
        Queued::NotSent => libc::SIOCOUTQNSD,
    };
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ and SIOCOUTQNSD on a live socket write one int.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), request, &mut queued) };
    (rc == 0).then(|| u64::try_from(queued).unwrap_or(0))
}

/// The bytes in `socket`'s send queue: unknown off Linux.
#[cfg(not(target_os = "linux"))]
pub fn queued_in(_socket: std::os::fd::BorrowedFd<'_>, _which: Queued) -> Option<u64> {
    None
}

impl<T: Unsent> WriteDeadline<T> {
    /// Watch the writes to `io`.
    pub fn new(io: T, stall: Duration) -> Self {
        WriteDeadline {
            io,
            written: Arc::new(AtomicU64::new(0)),
            stall,
            waiting: None,
            unsent: None,
            reading: false,
        }
    }

    /// How long a write may wait with nothing taken.
    fn patience(&self) -> Duration {
        if self.reading {
            self.stall * SLOW_READER_PATIENCE
        } else {
            self.stall
        }
    }

    /// What a write (or flush, or shutdown) returned, unless it has waited
    /// for the client longer than the stall time.
    fn watch<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.waiting = None;
            return polled;
        }
        if self.waiting.is_none() {
            self.unsent = self.io.unsent();
            let patience = self.patience();
            self.waiting = Some(Box::pin(tokio::time::sleep(patience)));
        }
        // Polling the timer registers the task to be woken when it fires;
        // the connection then writes again and lands here with it expired.
        while let Some(timer) = self.waiting.as_mut() {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = self.io.unsent();
            if let (Some(now), Some(before)) = (now, self.unsent) {
                // More than a few bytes: a client that reads nothing still
                // lets its kernel take some now and then, as it compacts
                // a small receive buffer, and was taken for a slow reader.
                if now + MIN_PROGRESS < before {
                    // Taken meanwhile: slow, not stalled.
                    self.unsent = Some(now);
                    self.reading = true;
                    let next = tokio::time::Instant::now() + self.patience();
                    if let Some(timer) = self.waiting.as_mut() {
                        timer.as_mut().reset(next);
                    }
                    continue;
                }
            }
            let waited = self.patience();
            self.waiting = None;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client took no response bytes for {waited:?}"),
            )));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl WriteDeadline<tokio::net::TcpStream> {
    /// What the client has taken of this connection's writes.
    pub fn delivered(&self) -> Delivered {
        Delivered {
            written: self.written.clone(),
            socket: self.io.as_raw_fd(),
        }
    }
}

/// What a connection's client had taken at one moment, and what had been
/// written to it by then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    taken: u64,
    written: u64,
}

impl Taken {
    /// Of the bytes still waiting for the client at this moment, how many
    /// it had taken by `later`: its own reading. Bytes written afterwards
    /// and taken at once say only that they were written (a client that
    /// took its first window the moment it was sent, then nothing, was
    /// judged a slow reader and held its connection six times as long).
    pub fn drained_by(&self, later: &Taken) -> u64 {
        later.taken.min(self.written).saturating_sub(self.taken)
    }

    /// Bytes written that the client had not taken yet.
    pub fn waiting(&self) -> u64 {
        self.written.saturating_sub(self.taken)
    }
}

/// How many of the bytes written to a connection its client has taken
/// (acknowledged): a slow reader whose flow-control window opens less
/// often than the stall time is seen taking them, though nothing is
/// written meanwhile.
pub struct Delivered {
    written: Arc<AtomicU64>,
    socket: RawFd,
}

impl Delivered {
    /// What the client has taken so far; `None` where the system cannot
    /// tell. Only to be asked while the connection that owns the socket is
    /// alive.
    pub fn so_far(&self) -> Option<Taken> {
        // SAFETY: the caller holds the connection, which owns the socket,
        // so the descriptor is open and still this connection's.
        let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.socket) };
        let queued = queued_in(socket, Queued::Unacknowledged)?;
        let written = self.written.load(Ordering::Relaxed);
        Some(Taken {
            taken: written.saturating_sub(queued),
            written,
        })
    }

    /// Make the socket's close a reset rather than an orderly end, so a
    /// response cut short is not taken for a whole one where only the
    /// close ends it (HTTP/1.0 without a length). Only to be asked while
    /// the connection that owns the socket is alive.
    pub fn reset_at_close(&self) {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: the caller holds the connection, so the descriptor is
        // open and this connection's; SO_LINGER reads one `linger`.
        unsafe {
            libc::setsockopt(
                self.socket,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }
}

impl<T: AsyncWrite + Unsent + Unpin> WriteDeadline<T> {
    fn count(&self, polled: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = polled {
            self.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
    }
}

impl<T: AsyncWrite + Unsent + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.count(&polled);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.count(&polled);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn only_bytes_that_waited_for_the_client_show_it_reading() {
        let at = |taken, written| Taken { taken, written };
        // Its first window went out and was taken at once, then nothing.
        assert_eq!(at(0, 0).drained_by(&at(65_600, 65_600)), 0);
        // 40 KB waited for a slow reader, which took 30 KB of them.
        assert_eq!(
            at(100_000, 140_000).drained_by(&at(130_000, 140_000)),
            30_000
        );
        assert_eq!(at(100_000, 140_000).waiting(), 40_000);
        // It took them all, and more written since: what waited counts.
        assert_eq!(
            at(100_000, 140_000).drained_by(&at(200_000, 200_000)),
            40_000
        );
    }

    impl Unsent for tokio::io::DuplexStream {
        fn unsent(&self) -> Option<u64> {
            None
        }
    }

    /// A socket no write gets into, whose queue the test empties by hand.
    struct Stuck(Arc<AtomicU64>);

    impl Unsent for Stuck {
        fn unsent(&self) -> Option<u64> {
            Some(self.0.load(Ordering::Relaxed))
        }
    }

    impl AsyncWrite for Stuck {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A write to a socket holding `queued` unsent bytes, whose client
    /// takes `bytes` at each `ms` after the start, with a stall of 1 s:
    /// when it is cut (in virtual time) and what it was told.
    async fn cut_after(queued: u64, takes: &'static [(u64, u64)]) -> (Duration, io::Error) {
        let queued = Arc::new(AtomicU64::new(queued));
        let mut w = WriteDeadline::new(Stuck(queued.clone()), Duration::from_secs(1));
        let start = tokio::time::Instant::now();
        let client = tokio::spawn(async move {
            for &(ms, bytes) in takes {
                tokio::time::sleep_until(start + Duration::from_millis(ms)).await;
                queued.fetch_sub(bytes, Ordering::Relaxed);
            }
        });
        let e = w.write_all(b"x").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        client.await.unwrap();
        (start.elapsed(), e)
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_shown_reading_may_pause_longer_before_it_is_cut() {
        // Its window opens at 0.5 s, then 4.5 s later: longer than the
        // stall, as a slow reader's kernel reopens a large window.
        let (at, e) = cut_after(100_000, &[(500, 10_000), (5_000, 10_000)]).await;
        // Seen taking bytes at the first deadline (1 s), it gets 6 s a
        // wait: kept at 7 s (bytes taken at 5 s), cut at 13 s.
        assert_eq!(at, Duration::from_secs(13));
        assert!(e.to_string().contains("for 6s"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_few_bytes_taken_are_not_reading() {
        // What a non-reading client's kernel takes as it compacts a small
        // receive buffer: cut at the stall, not given a reader's patience.
        let (at, e) = cut_after(32_768, &[(500, MIN_PROGRESS / 2)]).await;
        assert_eq!(at, Duration::from_secs(1));
        assert!(e.to_string().contains("for 1s"), "{e}");
    }

    #[tokio::test]
    async fn a_write_the_reader_never_takes_times_out_and_progress_resets_it() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut w = WriteDeadline::new(near, Duration::from_secs(5));
        // Fills the pipe; the reader takes it later, well within the stall
        // time even on a loaded machine.
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut got = vec![0; 2048];
            far.read_exact(&mut got).await.unwrap();
            far
        });
        w.write_all(&[1; 3072]).await.unwrap();
        let _far = reader.await.unwrap();
        // Nobody reads any more: the write gives up.
        let e = w.write_all(&[2; 4096]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_reader_that_keeps_taking_bytes_is_not_cut_however_full_the_socket() {
        // A slow but steady reader: the kernel wakes a writer only once
        // much of a large send buffer is free, which at this pace takes
        // far longer than the stall; the bytes it takes are progress.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut w = WriteDeadline::new(server, Duration::from_millis(500));
        let reader = std::thread::spawn(move || {
            use std::io::Read;
            let mut client = client;
            let mut buf = [0u8; 4096];
            let mut got = 0usize;
            let start = std::time::Instant::now();
            while start.elapsed() < Duration::from_secs(4) {
                got += client.read(&mut buf).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            got
        });
        // More than the reader takes (about 200 KB a second).
        let wrote =
            tokio::time::timeout(Duration::from_secs(3), w.write_all(&vec![7; 64 << 20])).await;
        assert!(
            wrote.is_err(),
            "still writing when the reader stopped: {wrote:?}"
        );
        assert!(reader.join().unwrap() > 100_000);
    }
}
