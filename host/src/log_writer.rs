//! The servers' stderr, never written where it would block: a log reader
//! that is alive but not reading (a busy journald, a paused `| less`, a
//! log shipper backed up) fills the pipe, and a request thread writing to
//! it would block there, every tenant's requests with it. A line is
//! written at once when nothing waits and stderr can take it now (so it
//! keeps its place, as before); otherwise it waits in a bounded queue for
//! a thread of its own. Past the queue lines are dropped and counted, and
//! the count is logged once stderr takes lines again.

use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Most bytes of lines waiting for stderr: a few seconds of the busiest
/// log, and a bound on what a stalled reader costs in memory.
const QUEUE_BYTES: usize = 16 << 20;

/// Longest line written at once: a pipe with room takes this much
/// without blocking (POSIX's `PIPE_BUF`).
const AT_ONCE: usize = 4096;

/// The queue and what was dropped from it.
struct Queue {
    /// Held by whoever writes to stderr: a line is written at once only
    /// when nobody is (the thread may be blocked in a write).
    writing: std::sync::Mutex<()>,
    sender: Option<Sender<Vec<u8>>>,
    /// Bytes sent and not yet written.
    queued: AtomicUsize,
    dropped_lines: AtomicU64,
    dropped_bytes: AtomicU64,
}

static QUEUE: OnceLock<Queue> = OnceLock::new();

/// The queue, its thread started at the first line.
fn queue() -> &'static Queue {
    QUEUE.get_or_init(start)
}

fn start() -> Queue {
    let (sender, lines) = channel();
    let started = std::thread::Builder::new()
        .name("rsgi-wasm-log".into())
        .spawn(move || write_lines(&lines));
    Queue {
        writing: std::sync::Mutex::new(()),
        // Without the thread, lines go straight to stderr (`enqueue`).
        sender: started.ok().map(|_| sender),
        queued: AtomicUsize::new(0),
        dropped_lines: AtomicU64::new(0),
        dropped_bytes: AtomicU64::new(0),
    }
}

/// Write each line as it comes; after a drop, say how many were lost.
fn write_lines(lines: &Receiver<Vec<u8>>) {
    while let Ok(line) = lines.recv() {
        let q = queue();
        {
            let _writing = q.writing.lock().unwrap_or_else(|e| e.into_inner());
            // A log that cannot be written (its reader gone, a full disk)
            // loses the line, as before.
            let _ = std::io::stderr().write_all(&line);
        }
        // Said before this line counts as written, so `drain` waits for it.
        report_drops(q);
        q.queued.fetch_sub(line.len(), Ordering::AcqRel);
    }
}

thread_local! {
    /// Set while the count of dropped lines is said: that line is queued
    /// whatever the queue holds, or it would be dropped in turn, and the
    /// next report would count only itself (round CY saw "1 log lines").
    static REPORTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Say how many lines were dropped since last said, if any.
fn report_drops(q: &Queue) {
    let dropped = q.dropped_lines.swap(0, Ordering::AcqRel);
    if dropped > 0 {
        let bytes = q.dropped_bytes.swap(0, Ordering::AcqRel);
        REPORTING.set(true);
        tracing::warn!(
            "{dropped} log lines ({bytes} bytes) were dropped: stderr did not take them as \
             fast as they came (a stalled or slow log reader); requests went on being served \
             (rsgi_wasm_log_lines_dropped)"
        );
        REPORTING.set(false);
    }
}

/// Write `line` now if nothing waits and stderr takes it without blocking.
fn written_at_once(q: &Queue, line: &[u8]) -> bool {
    if line.len() > AT_ONCE || q.queued.load(Ordering::Acquire) > 0 {
        return false;
    }
    let Ok(_writing) = q.writing.try_lock() else {
        return false;
    };
    if q.queued.load(Ordering::Acquire) > 0 || !takes_now() {
        return false;
    }
    let _ = std::io::stderr().write_all(line);
    true
}

/// Whether stderr would take a line of up to [`AT_ONCE`] bytes without
/// blocking: always, for a file; for a pipe, a free buffer.
fn takes_now() -> bool {
    let mut fd = libc::pollfd {
        fd: libc::STDERR_FILENO,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one pollfd, owned here, and no wait.
    let ready = unsafe { libc::poll(&mut fd, 1, 0) };
    ready == 1 && fd.revents & libc::POLLOUT != 0
}

/// Queue `line` for stderr, or drop it if the queue is full.
fn enqueue(line: Vec<u8>) {
    if line.is_empty() {
        return;
    }
    let q = queue();
    if written_at_once(q, &line) {
        report_drops(q);
        return;
    }
    let len = line.len();
    let forced = REPORTING.get();
    let fits = q
        .queued
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (forced || n + len <= QUEUE_BYTES).then_some(n + len)
        })
        .is_ok();
    let Some(sender) = q.sender.as_ref() else {
        let _ = std::io::stderr().write_all(&line);
        return;
    };
    if !fits {
        q.dropped_lines.fetch_add(1, Ordering::AcqRel);
        q.dropped_bytes.fetch_add(len as u64, Ordering::AcqRel);
        crate::metrics::LOG_LINES_DROPPED.inc();
        return;
    }
    if sender.send(line).is_err() {
        q.queued.fetch_sub(len, Ordering::AcqRel);
    }
}

/// Wait (up to `limit`) for the lines queued so far to be written: before
/// the exit, or before writing to stderr directly.
pub fn drain(limit: Duration) {
    let Some(q) = QUEUE.get() else { return };
    let until = Instant::now() + limit;
    while q.queued.load(Ordering::Acquire) > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// tracing's writer for the servers' log (see the module's doc).
pub struct Queued;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Queued {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(Vec::new())
    }
}

/// One event's text, queued whole when tracing is done writing it.
pub struct Line(Vec<u8>);

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        enqueue(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        // The thread writes to the test's stderr, which takes lines: fill
        // the count by hand to stand for a reader that stopped.
        let q = queue();
        drain(Duration::from_secs(5));
        q.queued.fetch_add(QUEUE_BYTES, Ordering::AcqRel);
        let before = q.dropped_lines.load(Ordering::Acquire);
        enqueue(b"lost\n".to_vec());
        assert_eq!(q.dropped_lines.load(Ordering::Acquire), before + 1);
        // The report of a drop is queued however full the queue is: it
        // would otherwise be dropped in turn, and the next report count
        // only itself.
        let counted = crate::metrics::LOG_LINES_DROPPED.get();
        REPORTING.set(true);
        enqueue(b"report\n".to_vec());
        REPORTING.set(false);
        assert_eq!(crate::metrics::LOG_LINES_DROPPED.get(), counted);
        q.queued.fetch_sub(QUEUE_BYTES, Ordering::AcqRel);
        // Room again: queued and written, and the drop reported.
        enqueue(b"kept\n".to_vec());
        drain(Duration::from_secs(5));
        assert_eq!(q.queued.load(Ordering::Acquire), 0);
        assert_eq!(q.dropped_lines.load(Ordering::Acquire), 0);
    }
}
