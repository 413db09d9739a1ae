//! A file's input stream that, asked again after it reported the end of
//! the file, reads on from there, as `read()` does on a file that grew.
//!
//! wasmtime-wasi's file stream stays closed once a read found the end, and
//! wasi-libc (wasip2) keeps a file's stream across reads, and across a seek
//! to the offset it is already at. So a guest that read to the end of a
//! file never saw what another instance, or its own other descriptor,
//! wrote there later: SQLite (which seeks, then reads) opened on an empty
//! database that another instance then created failed its next statement
//! with "file is not a database", and a log follower saw nothing new.
//! Under this wrapper the stream's first life is wasmtime-wasi's own; after
//! its end, each read is a positioned read of the file where it stopped.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use wasmtime_wasi::p2::{DynInputStream, InputStream, Pollable, StreamError, StreamResult};

/// The most one read after the end returns, as wasmtime-wasi caps its own
/// reads: the guest asks for its buffer's size, which can be large.
const MAX_READ: usize = 64 * 1024;

/// An input stream of a file that reads on past the end it reported once;
/// it also keeps `held` alive (what the open file is charged to) as long
/// as it lives.
pub struct FileReader<H> {
    inner: DynInputStream,
    file: Arc<cap_std::fs::File>,
    /// Where the next byte comes from: the offset the stream was opened at
    /// plus every byte it returned or skipped.
    position: u64,
    /// The inner stream reported the end: reads are now this stream's own.
    past_end: bool,
    _held: H,
}

impl<H> FileReader<H> {
    /// Wrap `inner`, wasmtime-wasi's stream of `file` from `offset`.
    pub fn new(inner: DynInputStream, file: Arc<cap_std::fs::File>, offset: u64, held: H) -> Self {
        FileReader {
            inner,
            file,
            position: offset,
            past_end: false,
            _held: held,
        }
    }

    /// Count the bytes the inner stream returned or skipped (`len` of
    /// them), and note its end.
    fn advance<T>(&mut self, r: StreamResult<T>, len: impl Fn(&T) -> usize) -> StreamResult<T> {
        match &r {
            Ok(t) => self.position += len(t) as u64,
            Err(StreamError::Closed) => self.past_end = true,
            Err(_) => {}
        }
        r
    }

    /// What a read of `size` bytes at the current position returns, once
    /// past the end: the end again, or what was written there since.
    fn took(&mut self, read: std::io::Result<Bytes>) -> StreamResult<Bytes> {
        match read {
            Ok(b) if b.is_empty() => Err(StreamError::Closed),
            Ok(b) => {
                self.position += b.len() as u64;
                Ok(b)
            }
            Err(e) => Err(StreamError::LastOperationFailed(e.into())),
        }
    }
}

/// Read up to `size` bytes of `file` at `offset`, retrying interrupts.
fn read_at(file: &cap_std::fs::File, offset: u64, size: usize) -> std::io::Result<Bytes> {
    use cap_std::fs::FileExt;
    let mut buf = BytesMut::zeroed(size.min(MAX_READ));
    loop {
        match file.read_at(&mut buf, offset) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf.freeze());
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[wasmtime_wasi::async_trait]
impl<H: Send + Sync + 'static> InputStream for FileReader<H> {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        if !self.past_end {
            let r = self.inner.read(size);
            return self.advance(r, Bytes::len);
        }
        if size == 0 {
            return Ok(Bytes::new());
        }
        // A regular file's read does not wait on anyone; wasmtime-wasi also
        // reads files on the calling thread where it is allowed to block.
        let read = read_at(&self.file, self.position, size);
        self.took(read)
    }

    async fn blocking_read(&mut self, size: usize) -> StreamResult<Bytes> {
        if !self.past_end {
            let r = self.inner.blocking_read(size).await;
            return self.advance(r, Bytes::len);
        }
        if size == 0 {
            return Ok(Bytes::new());
        }
        let (file, offset) = (self.file.clone(), self.position);
        let read = tokio::task::spawn_blocking(move || read_at(&file, offset, size))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        self.took(read)
    }

    fn skip(&mut self, nelem: usize) -> StreamResult<usize> {
        if !self.past_end {
            let r = self.inner.skip(nelem);
            return self.advance(r, |&n| n);
        }
        self.read(nelem).map(|b| b.len())
    }

    async fn blocking_skip(&mut self, nelem: usize) -> StreamResult<usize> {
        if !self.past_end {
            let r = self.inner.blocking_skip(nelem).await;
            return self.advance(r, |&n| n);
        }
        self.blocking_read(nelem).await.map(|b| b.len())
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}

#[wasmtime_wasi::async_trait]
impl<H: Send + Sync + 'static> Pollable for FileReader<H> {
    async fn ready(&mut self) {
        // Past the end, a file is always ready: a read returns at once.
        if !self.past_end {
            self.inner.ready().await
        }
    }
}
