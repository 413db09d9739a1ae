//! A file's input stream that reads on the guest's own thread, and, asked
//! again after it reported the end of the file, reads on from there, as
//! `read()` does on a file that grew.
//!
//! wasmtime-wasi's file stream reads on a blocking thread, outside the
//! tenant's run slot and CPU account (a loop re-reading a file took twice
//! a capped tenant's `cpu`), and stays closed once a read found the end;
//! wasi-libc (wasip2) keeps a file's stream across reads, and across a seek
//! to the offset it is already at. So a guest that read to the end of a
//! file never saw what another instance, or its own other descriptor,
//! wrote there later: SQLite (which seeks, then reads) opened on an empty
//! database that another instance then created failed its next statement
//! with "file is not a database", and a log follower saw nothing new.
//! Here every read is a positioned read of the file where the stream
//! stopped, made at once: a regular file's read waits on no one.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use wasmtime_wasi::p2::{InputStream, Pollable, StreamError, StreamResult};

/// The most one read returns, as wasmtime-wasi caps its own reads: the
/// guest asks for its buffer's size, which can be large.
const MAX_READ: usize = 64 * 1024;

/// An input stream of a file that reads on past the end it reported once;
/// it also keeps `held` alive (what the open file is charged to) as long
/// as it lives.
pub struct FileReader<H> {
    file: Arc<cap_std::fs::File>,
    /// Where the next byte comes from: the offset the stream was opened at
    /// plus every byte it returned or skipped.
    position: u64,
    _held: H,
}

impl<H> FileReader<H> {
    /// A stream of `file` from `offset`.
    pub fn new(file: Arc<cap_std::fs::File>, offset: u64, held: H) -> Self {
        FileReader {
            file,
            position: offset,
            _held: held,
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
        if size == 0 {
            return Ok(Bytes::new());
        }
        match read_at(&self.file, self.position, size) {
            // The end, for now: asked again, it reads on from here.
            Ok(b) if b.is_empty() => Err(StreamError::Closed),
            Ok(b) => {
                self.position += b.len() as u64;
                Ok(b)
            }
            Err(e) => Err(StreamError::LastOperationFailed(e.into())),
        }
    }

    async fn blocking_read(&mut self, size: usize) -> StreamResult<Bytes> {
        self.read(size)
    }

    fn skip(&mut self, nelem: usize) -> StreamResult<usize> {
        self.read(nelem).map(|b| b.len())
    }

    async fn blocking_skip(&mut self, nelem: usize) -> StreamResult<usize> {
        self.skip(nelem)
    }
}

#[wasmtime_wasi::async_trait]
impl<H: Send + Sync + 'static> Pollable for FileReader<H> {
    /// A read returns at once.
    async fn ready(&mut self) {}
}
