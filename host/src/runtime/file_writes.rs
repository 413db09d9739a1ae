//! A file's output stream that writes on the guest's own thread.
//!
//! wasmtime-wasi's file stream writes on a blocking thread, outside the
//! tenant's run slot and CPU account: a loop creating, writing and
//! deleting small files took half as much again as a capped tenant's
//! `cpu`. A regular file's write waits on no one, so here it is made at
//! once, where the guest's call runs (see sandbox.rs), as wasmtime-wasi
//! itself does for `blocking-write-and-flush` there.

use std::sync::Arc;

use bytes::Bytes;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// How much one `write` may take, as wasmtime-wasi's file stream says.
const CAPACITY: usize = 1024 * 1024;

/// An output stream of a file: at a position that moves on with each
/// write, or at the file's end (`append`).
pub struct FileWriter {
    file: Arc<cap_std::fs::File>,
    /// Where the next byte goes; `None` appends.
    position: Option<u64>,
    closed: bool,
}

impl FileWriter {
    /// A stream writing `file` from `position`, or appending to it.
    pub fn new(file: Arc<cap_std::fs::File>, position: Option<u64>) -> Self {
        FileWriter {
            file,
            position,
            closed: false,
        }
    }
}

/// Write all of `data` at `position` of `file`, or at its end.
fn write_all(
    file: &cap_std::fs::File,
    mut data: &[u8],
    position: Option<u64>,
) -> std::io::Result<()> {
    use cap_std::fs::FileExt;
    let mut at = position;
    while !data.is_empty() {
        let n = match at {
            Some(p) => file.write_at(data, p),
            None => append(file, data),
        };
        match n {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                data = &data[n..];
                if let Some(p) = &mut at {
                    *p += n as u64;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Write at the end of `file`, whatever its offset, as wasmtime-wasi does.
fn append(file: &cap_std::fs::File, data: &[u8]) -> std::io::Result<usize> {
    #[cfg(target_os = "linux")]
    {
        use rustix::io::{pwritev2, Errno, ReadWriteFlags};
        match pwritev2(
            file,
            &[std::io::IoSlice::new(data)],
            0,
            ReadWriteFlags::APPEND,
        ) {
            Err(Errno::NOSYS) | Err(Errno::NOTSUP) => {}
            otherwise => return Ok(otherwise?),
        }
    }
    use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};
    let flags = fcntl_getfl(file)?;
    fcntl_setfl(file, flags | OFlags::APPEND)?;
    let written = rustix::io::write(file, data);
    fcntl_setfl(file, flags)?;
    Ok(written?)
}

#[wasmtime_wasi::async_trait]
impl OutputStream for FileWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if self.closed {
            return Err(StreamError::Closed);
        }
        if let Err(e) = write_all(&self.file, &bytes, self.position) {
            // As wasmtime-wasi's stream: after a failed write it is closed.
            self.closed = true;
            return Err(StreamError::LastOperationFailed(e.into()));
        }
        if let Some(p) = &mut self.position {
            *p += bytes.len() as u64;
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        if self.closed {
            return Err(StreamError::Closed);
        }
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        if self.closed {
            return Err(StreamError::Closed);
        }
        Ok(CAPACITY)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for FileWriter {
    /// A write is made at once.
    async fn ready(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_at_a_position_move_on_and_appends_go_to_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let open = || {
            Arc::new(cap_std::fs::File::from_std(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .unwrap(),
            ))
        };
        let mut at = FileWriter::new(open(), Some(2));
        at.write(Bytes::from_static(b"ab")).unwrap();
        at.write(Bytes::from_static(b"cd")).unwrap();
        let mut end = FileWriter::new(open(), None);
        end.write(Bytes::from_static(b"XY")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"01abcd6789XY");
        // A read-only file: the write fails, and the stream is then closed.
        let read_only = Arc::new(cap_std::fs::File::from_std(
            std::fs::File::open(&path).unwrap(),
        ));
        let mut ro = FileWriter::new(read_only, Some(0));
        assert!(matches!(
            ro.write(Bytes::from_static(b"z")),
            Err(StreamError::LastOperationFailed(_))
        ));
        assert!(matches!(ro.check_write(), Err(StreamError::Closed)));
    }
}
