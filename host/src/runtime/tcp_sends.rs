//! A guest's outbound TCP sends: what `sendall()` reported as sent reaches
//! the peer after `close()`, as it does from a kernel's socket, and the
//! host never holds more than [`MAX_PENDING`] of it per socket.
//!
//! wasmtime-wasi's TCP output stream offers the guest 1 GiB per write,
//! writes what the kernel takes at once and the rest from a task of its
//! own, and cancels that task when the guest drops the stream. wasi-libc's
//! `send()` writes and returns, so `sendall(8 MiB)` then `close()` lost
//! what the kernel had not taken yet (4.4 MB of 8 MiB on loopback, round
//! DM), silently: the peer saw an orderly close. Here a write is offered at
//! most [`MAX_PENDING`], so `sendall()` waits as it does natively while the
//! peer is slow, and a stream the guest drops with a write still under way
//! finishes it in the background for up to [`LINGER`], the socket still
//! counted among the app's open files meanwhile, so closing sockets faster
//! than their peers read cannot take descriptors past `--max-open-files`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use wasmtime_wasi::p2::{DynOutputStream, OutputStream, Pollable, StreamResult};

use crate::runtime::quota_fs::SocketSlot;

/// Bytes one write may hand over beyond what the kernel takes at once:
/// what the host may hold for a socket whose peer reads slowly or not at
/// all, outside the app's `--memory`.
pub const MAX_PENDING: usize = 64 * 1024;

/// How long a write under way when its stream was dropped may go on:
/// the peer's chance to take the last bytes, as a kernel gives a closed
/// socket's.
pub const LINGER: Duration = Duration::from_secs(10);

/// A connected socket's output stream (see the module's doc).
pub struct Sends {
    inner: Option<DynOutputStream>,
    /// Whom it sends to, for the line about bytes given up.
    peer: String,
    /// A write goes on in the background: wasmtime-wasi offered nothing
    /// after it. (A socket whose kernel buffer is full with nothing held
    /// by the host has nothing to finish.)
    pending: bool,
    /// The socket's count among the open files, held while a write goes
    /// on after the guest let the socket go.
    slot: Option<SocketSlot>,
}

impl Sends {
    /// Wrap wasmtime-wasi's stream of a socket to `peer` counted by `slot`.
    pub fn new(inner: DynOutputStream, peer: String, slot: Option<SocketSlot>) -> Self {
        Sends {
            inner: Some(inner),
            peer,
            pending: false,
            slot,
        }
    }

    fn inner(&mut self) -> &mut DynOutputStream {
        self.inner
            .as_mut()
            .expect("a stream is only given up when it is dropped")
    }

    /// Let the write under way (if any) finish without the guest, then
    /// drop the stream.
    fn linger(&mut self) {
        let (Some(mut inner), slot) = (self.inner.take(), self.slot.take()) else {
            return;
        };
        if !self.pending {
            return;
        }
        // Without a runtime (a store dropped off it) the write is given
        // up, as wasmtime-wasi would.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let lingering = Lingering::new();
            let peer = std::mem::take(&mut self.peer);
            runtime.spawn(async move {
                // `ready` waits for the write under way and then for room
                // in the socket: what is left is the kernel's to send.
                if tokio::time::timeout(LINGER, inner.ready()).await.is_err() {
                    // wasmtime-wasi gives no hold on the socket to reset
                    // it, so its peer sees an orderly end: said here.
                    tracing::warn!(
                        "an app closed its connection to {peer} with bytes its peer had not taken {LINGER:?} later: those were dropped"
                    );
                }
                drop(inner);
                drop(slot);
                drop(lingering);
            });
        }
    }
}

/// Writes going on after their sockets were closed, for the server's
/// shutdown and `exec`'s end to wait for.
static LINGERING: AtomicUsize = AtomicUsize::new(0);

/// One of [`LINGERING`], counted until dropped (also when its task is).
struct Lingering;

impl Lingering {
    fn new() -> Self {
        LINGERING.fetch_add(1, Ordering::AcqRel);
        Lingering
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        LINGERING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Wait, at most `within` (and [`LINGER`]), for the writes of sockets apps
/// closed to finish: the process ending would cut them, and their peers
/// would see an orderly end of a stream that lost its tail.
pub async fn finish_closed_sends(within: Duration) {
    let end = tokio::time::Instant::now() + within.min(LINGER);
    let mut said = false;
    loop {
        let left = LINGERING.load(Ordering::Acquire);
        if left == 0 {
            return;
        }
        if tokio::time::Instant::now() >= end {
            tracing::warn!(
                "{left} connection(s) apps closed still had bytes to send when the wait ended: those were dropped"
            );
            return;
        }
        if !said {
            tracing::info!("waiting for {left} connection(s) apps closed to send what they hold");
            said = true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Sends {
    async fn ready(&mut self) {
        self.inner().ready().await;
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for Sends {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let inner = self.inner();
        inner.write(bytes)?;
        // What the kernel did not take at once is written in the
        // background, and nothing more is offered until it is.
        self.pending = matches!(inner.check_write(), Ok(0));
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner().flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        let offered = self.inner().check_write()?;
        if offered > 0 {
            self.pending = false;
        }
        Ok(offered.min(MAX_PENDING))
    }

    async fn cancel(&mut self) {
        self.linger();
    }
}

impl Drop for Sends {
    fn drop(&mut self) {
        // The instance ended with the socket open: its last write still
        // goes out, as the kernel sends what an exiting process wrote.
        self.linger();
    }
}
