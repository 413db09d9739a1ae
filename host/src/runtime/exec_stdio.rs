//! `exec`'s stdout and stderr: the process's own, where a reader that
//! left (`| head`) is a closed stream, which the guest's libc reports as
//! `EPIPE`, so a script's `except BrokenPipeError` works as natively.
//! wasmtime's own stdio reports every failure alike, which the guest saw
//! as `EIO`: an `OSError` from deep in the adapter.

use std::io::{ErrorKind, Write};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// The process's stdout or stderr, for a guest run by `exec`.
#[derive(Clone, Copy)]
pub enum Terminal {
    /// The process's stdout.
    Stdout,
    /// The process's stderr.
    Stderr,
}

impl Terminal {
    fn write_all(self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Terminal::Stdout => std::io::stdout().write_all(bytes),
            Terminal::Stderr => std::io::stderr().write_all(bytes),
        }
    }

    fn flush(self) -> std::io::Result<()> {
        match self {
            Terminal::Stdout => std::io::stdout().flush(),
            Terminal::Stderr => std::io::stderr().flush(),
        }
    }
}

/// A write's failure as the guest should see it.
fn failed(e: std::io::Error) -> StreamError {
    if e.kind() == ErrorKind::BrokenPipe {
        StreamError::Closed
    } else {
        StreamError::LastOperationFailed(wasmtime::format_err!(e))
    }
}

impl IsTerminal for Terminal {
    fn is_terminal(&self) -> bool {
        match self {
            Terminal::Stdout => std::io::IsTerminal::is_terminal(&std::io::stdout()),
            Terminal::Stderr => std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }
}

impl StdoutStream for Terminal {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(*self)
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASI 0.3 guests use this; componentize-py's are WASI 0.2.
        Box::new(tokio::io::sink())
    }
}

impl OutputStream for Terminal {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_all(&bytes).map_err(failed)
    }

    fn flush(&mut self) -> StreamResult<()> {
        Terminal::flush(*self).map_err(failed)
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(1024 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Terminal {
    async fn ready(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_that_left_is_a_closed_stream() {
        let gone = std::io::Error::from(ErrorKind::BrokenPipe);
        assert!(matches!(failed(gone), StreamError::Closed));
        let full = std::io::Error::from(ErrorKind::StorageFull);
        assert!(matches!(failed(full), StreamError::LastOperationFailed(_)));
    }
}
