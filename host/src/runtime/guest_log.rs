//! Guest stdout/stderr to the host log, line by line, under a per-app rate
//! limit so one app printing in a loop cannot flood the log (or the disk
//! behind it) for everyone.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// Longest partial line kept before it is logged anyway.
const MAX_LINE: usize = 16 * 1024;

/// What a line costs at least, so empty lines cannot multiply the rate.
const LINE_COST: usize = 128;

/// How much an app may log: `rate` bytes a second, in bursts of up to
/// `BURST_SECONDS` of it. Lines past it are dropped and counted, and the
/// count is logged when the app's output fits again.
pub struct LogBudget {
    app: Arc<str>,
    rate: u64,
    state: Mutex<Bucket>,
    /// App exceptions' reports, at the same rate but apart: an app flooding
    /// its output cannot hide its own errors. At least [`REPORTS_AT_LEAST`]:
    /// a rate set to silence an app's output (`--log-rate 0`) must not
    /// silence its tracebacks.
    reports: Mutex<Bucket>,
    /// The warnings logged once for the app (`WARN_ONCE_MARKER`), at most
    /// [`WARNINGS_KEPT`]: every instance of it says the same.
    warned: Mutex<Vec<Box<[u8]>>>,
    /// `rsgi_wasm_guest_output_dropped_bytes_total` of the app.
    dropped: prometheus_client::metrics::counter::Counter,
}

/// Most distinct once-per-app warnings logged; an app cannot make more
/// than a handful (they name what its import read), so more is a guest
/// writing the marker itself, and that is dropped.
const WARNINGS_KEPT: usize = 16;

/// The least rate of error reports: one whole report a second.
const REPORTS_AT_LEAST: u64 = MAX_REPORT as u64;

/// A burst may use this many seconds' worth of the rate at once.
const BURST_SECONDS: u64 = 4;

struct Bucket {
    /// Bytes a second.
    rate: u64,
    tokens: u64,
    last: Instant,
    dropped_lines: u64,
    dropped_bytes: u64,
}

/// What to do with one line.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Log it, after saying this many lines / bytes were dropped before it.
    Log { dropped: Option<(u64, u64)> },
    /// Drop it; `first`: the first of a run of drops.
    Drop { first: bool },
}

impl LogBudget {
    /// A budget of `rate` bytes a second for app `app`'s stdout and stderr.
    pub fn new(app: &Arc<str>, rate: u64) -> Arc<Self> {
        let full = |rate: u64| {
            Mutex::new(Bucket {
                rate,
                tokens: rate.saturating_mul(BURST_SECONDS),
                last: Instant::now(),
                dropped_lines: 0,
                dropped_bytes: 0,
            })
        };
        Arc::new(LogBudget {
            app: app.clone(),
            rate,
            state: full(rate),
            reports: full(rate.max(REPORTS_AT_LEAST)),
            warned: Mutex::new(Vec::new()),
            dropped: crate::metrics::guest_output_dropped(app),
        })
    }

    /// Whether the once-per-app warning `text` is new for this app.
    fn first_warning(&self, text: &[u8]) -> bool {
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.len() >= WARNINGS_KEPT || warned.iter().any(|w| **w == *text) {
            return false;
        }
        warned.push(text.into());
        true
    }

    fn admit(&self, len: usize, now: Instant) -> Verdict {
        self.admit_in(&self.state, len, now)
    }

    fn admit_report(&self, len: usize, now: Instant) -> Verdict {
        self.admit_in(&self.reports, len, now)
    }

    fn admit_in(&self, bucket: &Mutex<Bucket>, len: usize, now: Instant) -> Verdict {
        let mut b = bucket.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(b.last);
        let refill = (elapsed.as_secs_f64() * b.rate as f64) as u64;
        if refill > 0 {
            b.tokens = b
                .tokens
                .saturating_add(refill)
                .min(b.rate.saturating_mul(BURST_SECONDS));
            b.last = now;
        }
        // Charged at least LINE_COST, but the drop count says what the
        // app wrote.
        let wrote = len as u64;
        let len = len.max(LINE_COST) as u64;
        // Once dropping, wait for a second's worth of room before logging
        // again: resuming at every refill would wrap each line that gets
        // through in a "dropping" and a "dropped" notice, more than the
        // flood itself.
        let needed = if b.dropped_lines > 0 {
            len.max(b.rate)
        } else {
            len
        };
        if b.tokens >= needed {
            b.tokens -= len;
            let dropped = (b.dropped_lines > 0).then(|| (b.dropped_lines, b.dropped_bytes));
            b.dropped_lines = 0;
            b.dropped_bytes = 0;
            Verdict::Log { dropped }
        } else {
            // What is dropped is charged too, as far as the bucket goes: a
            // line too long to ever fit left it full, so the short line
            // after it got through, wrapped in a notice pair, at every
            // turn of a print loop.
            b.tokens = b.tokens.saturating_sub(len);
            b.dropped_lines += 1;
            b.dropped_bytes += wrote;
            self.dropped.inc_by(wrote);
            Verdict::Drop {
                first: b.dropped_lines == 1,
            }
        }
    }
}

impl Drop for LogBudget {
    /// An app unloaded (or reloaded) while dropping its output would
    /// otherwise never say how much it dropped.
    fn drop(&mut self) {
        for (bucket, what) in [
            (&mut self.state, "lines"),
            (&mut self.reports, "error reports"),
        ] {
            let b = bucket.get_mut().unwrap_or_else(|e| e.into_inner());
            if b.dropped_lines > 0 {
                tracing::warn!(
                    target: "guest",
                    app = %self.app,
                    "[{}] {} {what} ({} bytes) of output were dropped by the log rate limit before this version of the app was unloaded",
                    self.app,
                    b.dropped_lines,
                    b.dropped_bytes
                );
            }
        }
    }
}

/// Guest stdout or stderr: complete lines go to the host log.
#[derive(Clone)]
pub struct GuestLog {
    app: Arc<str>,
    stream: &'static str,
    budget: Arc<LogBudget>,
    /// The partial line, one per instance and stream however many times
    /// the guest asks for the stream, so it cannot pin host memory by
    /// asking many times.
    partial: Arc<Mutex<BytesMut>>,
    /// Where the stream's lines stand in a traceback the app printed.
    traceback: Arc<Traceback>,
}

impl GuestLog {
    /// `stream` (`stdout` or `stderr`) of app `app`, drawing on `budget`.
    pub fn new(app: &Arc<str>, stream: &'static str, budget: &Arc<LogBudget>) -> Self {
        GuestLog {
            app: app.clone(),
            stream,
            budget: budget.clone(),
            partial: Arc::default(),
            traceback: Arc::default(),
        }
    }

    /// Log the line the guest left unterminated, so that it is not glued
    /// to the next request's first line (called as a request ends).
    pub fn end_line(&self) {
        let line = {
            let mut buf = self.partial.lock().unwrap_or_else(|e| e.into_inner());
            if buf.is_empty() {
                return;
            }
            buf.split()
        };
        self.logger().emit(&line);
    }

    fn logger(&self) -> LineLogger {
        LineLogger {
            app: self.app.clone(),
            stream: self.stream,
            budget: self.budget.clone(),
            buf: self.partial.clone(),
            traceback: self.traceback.clone(),
        }
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.logger())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASI 0.3 guests use this; componentize-py 0.25 components
        // for our world are WASI 0.2, so their output goes via `p2_stream`.
        Box::new(tokio::io::sink())
    }
}

/// How a guest line is logged: the app's output at INFO; its errors (an
/// exception's report, a traceback it printed, why it does not import) at
/// ERROR, which a log
/// filtered to warnings keeps; the adapter's warnings about the app at WARN.
#[derive(Clone, Copy)]
enum Kind {
    Output,
    Warning,
    Error,
}

struct LineLogger {
    app: Arc<str>,
    stream: &'static str,
    budget: Arc<LogBudget>,
    buf: Arc<Mutex<BytesMut>>,
    traceback: Arc<Traceback>,
}

/// What `check_write` allows per write: what a program prints at once.
/// Python's text streams over a raw file drop what a short write leaves,
/// so a 100 KB `print` lost its tail at 64 KiB.
const WRITE_PERMIT: usize = 4 * 1024 * 1024;

impl LineLogger {
    fn emit(&self, line: &[u8]) {
        // Why a live build's app does not import, as a build would report
        // it: an error report, under the reports' budget, so output printed
        // before the failure cannot crowd it out.
        if let Some(error) = line.strip_prefix(crate::protocol::BUILD_ERROR_MARKER.as_bytes()) {
            if self.report_admitted(error.len()) {
                self.log_line(error, Kind::Error);
            }
            return;
        }
        if let Some(warning) = line.strip_prefix(crate::protocol::WARN_ONCE_MARKER.as_bytes()) {
            if self.budget.first_warning(warning) {
                self.log_line(warning, Kind::Warning);
            }
            return;
        }
        // A framework that answers its own 500 (Flask, Django, Falcon)
        // prints the traceback as output: logged as the error it is, so a
        // log filtered to warnings keeps it, under the reports' budget.
        if self.traceback.holds(line) {
            if self.report_admitted(line.len()) {
                self.log_line(line, Kind::Error);
            }
            return;
        }
        let verdict = self.budget.admit(line.len(), Instant::now());
        if self.admitted(
            verdict,
            self.budget.rate,
            (
                "logging",
                "its output (stdout and stderr together)",
                "lines",
            ),
        ) {
            self.log_line(line, Kind::Output);
        }
    }

    /// Log the notices `verdict` calls for (a run of drops beginning, or
    /// ending with its count); whether to log what was admitted. Told as
    /// what the app does too fast, what is dropped, and what the count
    /// counts. The notices are not charged: at most one per run of drops,
    /// and a run ends only when something was let through.
    fn admitted(
        &self,
        verdict: Verdict,
        rate: u64,
        (doing, dropping, counted): (&str, &str, &str),
    ) -> bool {
        match verdict {
            Verdict::Drop { first: true } => {
                tracing::warn!(
                    target: "guest",
                    app = %self.app,
                    "[{}] {doing} faster than {rate} bytes/s: dropping {dropping} until it slows down",
                    self.app,
                );
                false
            }
            Verdict::Drop { first: false } => false,
            Verdict::Log { dropped } => {
                if let Some((n, bytes)) = dropped {
                    tracing::warn!(
                        target: "guest",
                        app = %self.app,
                        "[{}] {n} {counted} ({bytes} bytes) of output were dropped by the log rate limit",
                        self.app
                    );
                }
                true
            }
        }
    }

    /// Whether an error report of `len` bytes fits the reports' budget now.
    fn report_admitted(&self, len: usize) -> bool {
        let verdict = self.budget.admit_report(len, Instant::now());
        self.admitted(
            verdict,
            self.budget.rate.max(REPORTS_AT_LEAST),
            ("reporting errors", "its error reports", "error reports"),
        )
    }

    fn log_line(&self, line: &[u8], kind: Kind) {
        log_line(&self.app, self.stream, line, kind);
    }

    /// An app exception's report, written whole by the guest: logged
    /// under the reports' own budget, clipped to [`MAX_REPORT`].
    fn report(&self, text: &[u8]) {
        let text = clip_report(text);
        if self.report_admitted(report_cost(&text)) {
            log_report(&self.app, self.stream, &text);
        }
    }
}

/// Where an output stream's lines stand in a Python traceback the app
/// printed itself: from its `Traceback (most recent call last):` line
/// (also at the end of a line, after a framework's prefix: Falcon's
/// `[FALCON] [ERROR] GET /x => Traceback ...`), through its indented frames,
/// to the exception's line and what chains it to the next one.
#[derive(Default)]
struct Traceback(std::sync::atomic::AtomicU8);

impl Traceback {
    const OUTSIDE: u8 = 0;
    const FRAMES: u8 = 1;
    const ENDED: u8 = 2;

    /// Whether `line` is part of a traceback, moving past it.
    fn holds(&self, line: &[u8]) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let text = line.trim_ascii_end();
        let (held, next) = if text.ends_with(b"Traceback (most recent call last):") {
            (true, Self::FRAMES)
        } else {
            match self.0.load(Relaxed) {
                Self::FRAMES if text.is_empty() || text.starts_with(b" ") || text.starts_with(b"\t") => {
                    (true, Self::FRAMES)
                }
                // The exception's own line.
                Self::FRAMES => (true, Self::ENDED),
                Self::ENDED
                    if text.is_empty()
                        || text == b"During handling of the above exception, another exception occurred:"
                        || text == b"The above exception was the direct cause of the following exception:" =>
                {
                    (true, Self::ENDED)
                }
                _ => (false, Self::OUTSIDE),
            }
        };
        self.0.store(next, Relaxed);
        held
    }
}

fn log_line(app: &str, stream: &str, line: &[u8], kind: Kind) {
    let text = String::from_utf8_lossy(line);
    let text = visible(text.trim_end_matches(['\r', '\n']));
    // Keys a log shipper can filter on, as access lines have; in text the
    // line ends in the host's `app=` too, after whatever the guest wrote,
    // so a guest that prints a line ending in another app's `app=` does
    // not pass for it.
    let json = crate::config::JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed);
    match (kind, json) {
        (Kind::Output, true) => tracing::info!(target: "guest", %app, %stream, "{text}"),
        (Kind::Output, false) => tracing::info!(target: "guest", %app, "[{app} {stream}] {text}"),
        (Kind::Warning, true) => tracing::warn!(target: "guest", %app, %stream, "{text}"),
        (Kind::Warning, false) => tracing::warn!(target: "guest", %app, "[{app} {stream}] {text}"),
        (Kind::Error, true) => tracing::error!(target: "guest", %app, %stream, "{text}"),
        (Kind::Error, false) => tracing::error!(target: "guest", %app, "[{app} {stream}] {text}"),
    }
}

/// A failure of app `app`'s guest adapter, with the error report its
/// stderr would not take: logged as a report is, line by line, clipped.
/// Its instance is replaced, so an app cannot repeat it without paying
/// for a fresh instance each time.
pub fn adapter_failure(app: &str, text: &str) {
    log_report(app, "stderr", &clip_report(text.as_bytes()));
}

/// A clipped report's lines, as errors.
fn log_report(app: &str, stream: &str, text: &[u8]) {
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        for piece in pieces(line) {
            log_line(app, stream, piece, Kind::Error);
        }
    }
}

/// `line` in pieces of at most [`MAX_LINE`] bytes, none ending inside a
/// UTF-8 character, so each piece is logged as the text it holds.
fn pieces(mut line: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if line.is_empty() {
            return None;
        }
        let (piece, rest) = line.split_at(utf8_cut(line, MAX_LINE));
        line = rest;
        Some(piece)
    })
}

/// Where to cut `bytes` to at most `max` bytes: before the character that
/// `max` falls inside, if it is UTF-8, else at `max`.
fn utf8_cut(bytes: &[u8], max: usize) -> usize {
    if bytes.len() <= max {
        return bytes.len();
    }
    let continues = |i: usize| bytes[i] & 0xc0 == 0x80;
    // A character is at most four bytes: three continue its first.
    (max.saturating_sub(3)..=max)
        .rev()
        .find(|&i| !continues(i))
        .filter(|&i| i > 0)
        .unwrap_or(max)
}

/// The first words of an app exception's report on stderr (the guest's
/// `protocol.ERROR_REPORT`).
const ERROR_REPORT: &[u8] = b"rsgi-wasm: error in the WSGI app serving";

/// Most of a report logged: its start, which names the request and the
/// first frames, and its end, which names the exception.
const MAX_REPORT: usize = 16 * 1024;

/// Most of one report line kept: an exception message of a megabyte keeps
/// its start, and leaves room for the frames and the exception's name.
const MAX_REPORT_LINE: usize = 2 * 1024;

/// What a report line costs at least, against [`MAX_REPORT`] and the
/// reports' budget: each logged line carries a prefix, so a report of
/// thousands of tiny lines must not log many times its size.
const REPORT_LINE_COST: usize = 64;

/// What the lines of `text` cost: their bytes, each at least
/// [`REPORT_LINE_COST`].
fn report_cost(text: &[u8]) -> usize {
    text.split_inclusive(|&b| b == b'\n')
        .map(|l| l.len().max(REPORT_LINE_COST))
        .sum()
}

/// `text` costing at most [`MAX_REPORT`]: each line clipped to
/// [`MAX_REPORT_LINE`], then, if that is still too much, the lines of its
/// first and last halves, with what was left out said in their place.
fn clip_report(text: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if report_cost(text) <= MAX_REPORT {
        return text.into();
    }
    let lines: Vec<Vec<u8>> = text
        .split_inclusive(|&b| b == b'\n')
        .map(|line| {
            if line.len() <= MAX_REPORT_LINE {
                return line.to_vec();
            }
            let keep = utf8_cut(line, MAX_REPORT_LINE);
            let mut clipped = line[..keep].to_vec();
            let left = line.len() - keep;
            clipped.extend_from_slice(
                format!("... [{left} bytes of this line left out]\n").as_bytes(),
            );
            clipped
        })
        .collect();
    let cost = |l: &Vec<u8>| l.len().max(REPORT_LINE_COST);
    if lines.iter().map(cost).sum::<usize>() <= MAX_REPORT {
        return lines.concat().into();
    }
    // Whole lines from each end, each end up to half the room (less the
    // line saying what was left out).
    let half = MAX_REPORT / 2 - REPORT_LINE_COST;
    let take = |lines: &mut dyn Iterator<Item = &Vec<u8>>| {
        let mut size = 0;
        lines
            .take_while(|l| {
                size += cost(l);
                size <= half
            })
            .count()
    };
    let head = take(&mut lines.iter()).max(1);
    let tail = take(&mut lines[head..].iter().rev());
    let left_out = &lines[head..lines.len() - tail];
    let bytes: usize = left_out.iter().map(Vec::len).sum();
    // The guest clips a huge report before writing it: its own count of
    // what it left out, among these lines, is told too.
    let before: u64 = left_out.iter().filter_map(|l| guest_left_out(l)).sum();
    let before = if before > 0 {
        format!(", and {before} characters before it was written")
    } else {
        String::new()
    };
    let mut out = lines[..head].concat();
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.extend_from_slice(
        format!(
            "[{} lines ({bytes} bytes) of the report left out{before}]\n",
            left_out.len()
        )
        .as_bytes(),
    );
    out.extend(lines[lines.len() - tail..].iter().flatten());
    out.into()
}

/// The count in the line the guest puts where it clipped a report
/// (`protocol._clipped`: "[N characters of the report left out]").
fn guest_left_out(line: &[u8]) -> Option<u64> {
    let n = line
        .strip_prefix(b"[")?
        .strip_suffix(b" characters of the report left out]\n")?;
    std::str::from_utf8(n).ok()?.parse().ok()
}

/// Most of a guest's text (an exception message, a trap's backtrace) a
/// host log line quotes: a guest must not write megabytes per request
/// past its `log_rate` through the host's own lines.
const MAX_QUOTED: usize = 4 * 1024;

/// Guest-supplied `text` as a host log line may quote it: control
/// characters spelt out (no forged lines), clipped to `MAX_QUOTED`.
pub fn quoted(text: &str) -> String {
    let end = text.floor_char_boundary(MAX_QUOTED);
    let clipped = if end < text.len() {
        format!("{}... ({} bytes in all)", &text[..end], text.len())
    } else {
        text.to_owned()
    };
    visible(&clipped).into_owned()
}

/// `text` with its control characters but tab, and the other [`hidden`]
/// ones, spelt out: a guest's line
/// cannot move the cursor (`\r`) over its own prefix, or pass for another
/// app's line on a terminal.
pub fn visible(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| hidden(c) && c != '\t') {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\t' => out.push(c),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {
                let _ =
                    std::fmt::Write::write_fmt(&mut out, format_args!("\\x{:02x}", u32::from(c)));
            }
            c if hidden(c) => {
                let _ = std::fmt::Write::write_fmt(
                    &mut out,
                    format_args!("\\u{{{:04x}}}", u32::from(c)),
                );
            }
            c => out.push(c),
        }
    }
    out.into()
}

/// `text` as [`visible`] spells it, line by line: its new lines stay.
pub fn visible_lines(text: &str) -> String {
    text.split('\n').map(visible).collect::<Vec<_>>().join("\n")
}

/// A character that moves or reorders what follows it where a log is
/// read: controls, the Unicode line and paragraph separators (new lines
/// to some viewers), and the bidirectional overrides and isolates (which
/// can make one line read as another).
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            // The bidirectional marks, embeddings, overrides and isolates,
            // and the zero-width no-break space (a byte order mark).
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{feff}'
        )
}

impl OutputStream for LineLogger {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if bytes.len() > WRITE_PERMIT {
            return Err(StreamError::Trap(wasmtime::format_err!(
                "write of {} bytes past the {WRITE_PERMIT} check-write allowed",
                bytes.len()
            )));
        }
        let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        if bytes.starts_with(ERROR_REPORT) {
            // What the app left unterminated goes first, on its own.
            let pending = buf.split();
            drop(buf);
            if !pending.is_empty() {
                self.emit(&pending);
            }
            self.report(&bytes);
            return Ok(());
        }
        buf.extend_from_slice(&bytes);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line = buf.split_to(nl + 1);
            // A long line written whole is split as one written in parts.
            for piece in pieces(&line) {
                self.emit(piece);
            }
        }
        while buf.len() > MAX_LINE {
            let cut = utf8_cut(&buf, MAX_LINE);
            let line = buf.split_to(cut);
            self.emit(&line);
        }
        // Keep no more memory than the partial line needs.
        if buf.capacity() > 2 * MAX_LINE {
            *buf = BytesMut::from(&buf[..]);
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineLogger {
    async fn ready(&mut self) {}
}

impl Drop for LineLogger {
    fn drop(&mut self) {
        let line = {
            let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
            // Another handle on the same stream may still write more.
            if buf.is_empty() || Arc::strong_count(&self.buf) > 2 {
                return;
            }
            buf.split()
        };
        self.emit(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warning_is_logged_once_per_app_and_only_so_many() {
        let budget = LogBudget::new(&Arc::from("app"), 1 << 20);
        assert!(budget.first_warning(b"X is given here"));
        assert!(!budget.first_warning(b"X is given here"));
        for i in 1..WARNINGS_KEPT {
            assert!(budget.first_warning(format!("other {i}").as_bytes()));
        }
        assert!(!budget.first_warning(b"one too many"));
    }
    use std::time::Duration;

    #[test]
    fn a_printed_traceback_is_told_from_the_output_around_it() {
        let t = Traceback::default();
        let lines: &[(&str, bool)] = &[
            (
                "[2026-12-08 02:48:19,725] ERROR in app: Exception on /boom [GET]",
                false,
            ),
            ("Traceback (most recent call last):", true),
            ("  File \"/1/app.py\", line 3, in boom", true),
            ("    raise KeyError('x')", true),
            ("    ^^^^^^^^^^^^^^^^^^^", true),
            ("KeyError: 'x'", true),
            ("", true),
            (
                "During handling of the above exception, another exception occurred:",
                true,
            ),
            ("", true),
            (
                "[FALCON] [ERROR] GET /boom => Traceback (most recent call last):",
                true,
            ),
            ("\tFile \"/1/app.py\", line 9, in on_get", true),
            ("RuntimeError: boom", true),
            ("127.0.0.1 - GET / 200", false),
            ("  indented output", false),
            ("RuntimeError: not after a traceback", false),
        ];
        for (line, held) in lines {
            assert_eq!(t.holds(line.as_bytes()), *held, "{line:?}");
        }
    }

    #[test]
    fn long_lines_are_cut_between_characters() {
        let line = format!("{}é{}", "a".repeat(MAX_LINE - 1), "€".repeat(MAX_LINE));
        let got: Vec<&[u8]> = pieces(line.as_bytes()).collect();
        assert_eq!(got.concat(), line.as_bytes(), "nothing lost");
        assert!(got
            .iter()
            .all(|p| p.len() <= MAX_LINE && std::str::from_utf8(p).is_ok()));
        assert_eq!(got[0].len(), MAX_LINE - 1, "é is not split");
        // Bytes that are not UTF-8 are cut where the size says.
        let junk = vec![0x80u8; MAX_LINE + 5];
        assert_eq!(
            pieces(&junk).map(<[u8]>::len).collect::<Vec<_>>(),
            [MAX_LINE, 5]
        );
    }

    #[test]
    fn control_characters_are_spelt_out() {
        assert_eq!(visible("plain\ttext é"), "plain\ttext é");
        assert_eq!(visible("a\rb\x1b[31mc\u{7f}"), "a\\rb\\x1b[31mc\\x7f");
        assert_eq!(visible("a\u{2028}b\u{202e}c"), "a\\u{2028}b\\u{202e}c");
        assert_eq!(
            visible("a\u{200f}b\u{200e}c\u{061c}d\u{feff}e"),
            "a\\u{200f}b\\u{200e}c\\u{061c}d\\u{feff}e"
        );
        assert_eq!(
            visible_lines("one\x1b[2J\ntwo\0\n"),
            "one\\x1b[2J\ntwo\\x00\n"
        );
        // What a host line quotes of a guest's text: one line, and short.
        assert_eq!(quoted("boom\n2026 INFO forged"), "boom\\n2026 INFO forged");
        let long = quoted(&"é".repeat(10_000));
        assert!(long.len() < MAX_QUOTED + 64, "{}", long.len());
        assert!(long.ends_with("... (20000 bytes in all)"), "{long}");
    }

    #[test]
    fn a_long_report_keeps_its_start_and_its_end() {
        let short = b"rsgi-wasm: error in the WSGI app serving GET /:\nTraceback\nValueError: x\n";
        assert_eq!(&*clip_report(short), &short[..]);
        let first = "rsgi-wasm: error in the WSGI app serving GET /deep:\nTraceback (most recent call last):\n";
        let mut long = first.as_bytes().to_vec();
        for i in 0..5000 {
            long.extend_from_slice(format!("  File \"app.py\", line {i}, in f\n").as_bytes());
        }
        long.extend_from_slice(b"RecursionError: maximum recursion depth exceeded\n");
        let clipped = clip_report(&long);
        assert!(report_cost(&clipped) <= MAX_REPORT, "{}", clipped.len());
        let text = String::from_utf8_lossy(&clipped);
        assert!(text.starts_with(&format!("{first}  File \"app.py\", line 0, in f\n")));
        assert!(text.contains(" bytes) of the report left out]\n  File"));
        assert!(text.ends_with("RecursionError: maximum recursion depth exceeded\n"));

        // A message of a megabyte keeps its start; the frames and the
        // exception's name are all there.
        let huge = format!(
            "{first}  File \"app.py\", line 3, in app\nValueError: START {} END\n",
            "é".repeat(500_000)
        );
        let clipped = clip_report(huge.as_bytes());
        let text = std::str::from_utf8(&clipped).expect("cut between characters");
        assert!(text.starts_with(first), "{text}");
        assert!(
            text.contains("line 3, in app\nValueError: START éé"),
            "{text}"
        );
        assert!(text.ends_with(" bytes of this line left out]\n"), "{text}");
        assert!(text.len() < 4 * 1024);

        // Many notes after the exception (json's "when serializing ..."):
        // the frames and the exception's line stay, from the start.
        let mut noted = format!("{first}  File \"app.py\", line 9, in app\nRecursionError: deep\n");
        for _ in 0..3000 {
            noted.push_str("when serializing list item 0\n");
        }
        let clipped = clip_report(noted.as_bytes());
        let text = String::from_utf8_lossy(&clipped);
        assert!(text.contains("in app\nRecursionError: deep\n"), "{text}");
        assert!(text.ends_with("when serializing list item 0\n"));

        // What the guest left out before writing is counted too.
        let mut pre = first.to_string();
        for i in 0..2000 {
            pre.push_str(&format!("line {i}\n"));
        }
        pre.push_str("[9000000 characters of the report left out]\n");
        for i in 0..2000 {
            pre.push_str(&format!("line {i}\n"));
        }
        let text = String::from_utf8_lossy(&clip_report(pre.as_bytes())).into_owned();
        assert!(
            text.contains(
                " bytes) of the report left out, and 9000000 characters before it was written]"
            ),
            "{text}"
        );

        // Tiny lines cost a log line's prefix each: few are kept.
        let tiny = format!("{first}{}", "HUGESTR\n".repeat(200_000));
        let clipped = clip_report(tiny.as_bytes());
        assert!(report_cost(&clipped) <= MAX_REPORT);
        assert!(clipped.split(|&b| b == b'\n').count() <= MAX_REPORT / REPORT_LINE_COST + 1);
    }

    #[test]
    fn a_rate_of_nothing_still_lets_error_reports_through() {
        let b = LogBudget::new(&Arc::from("app"), 0);
        let t0 = Instant::now();
        assert_eq!(b.admit(10, t0), Verdict::Drop { first: true });
        assert_eq!(b.admit_report(2000, t0), Verdict::Log { dropped: None });
    }

    #[test]
    fn a_burst_passes_a_flood_is_dropped_and_counted() {
        let b = LogBudget::new(&Arc::from("app"), 1000);
        let t0 = Instant::now();
        // Four seconds' worth at once.
        for _ in 0..4 {
            assert_eq!(b.admit(1000, t0), Verdict::Log { dropped: None });
        }
        assert_eq!(b.admit(200, t0), Verdict::Drop { first: true });
        // Short lines cost LINE_COST each.
        assert_eq!(b.admit(1, t0), Verdict::Drop { first: false });
        // A second later there is room again, and the drops are reported.
        assert_eq!(
            b.admit(500, t0 + Duration::from_secs(1)),
            Verdict::Log {
                dropped: Some((2, 201))
            }
        );
        assert_eq!(
            b.admit(500, t0 + Duration::from_secs(1)),
            Verdict::Log { dropped: None }
        );
        assert_eq!(
            b.admit(0, t0 + Duration::from_secs(1)),
            Verdict::Drop { first: true }
        );
        // While dropping, a little room is not enough to resume: lines
        // drop until a second's worth has come back, and what they would
        // have cost is taken from it.
        assert_eq!(
            b.admit(1, t0 + Duration::from_millis(1500)),
            Verdict::Drop { first: false }
        );
        assert_eq!(
            b.admit(1, t0 + Duration::from_millis(2000)),
            Verdict::Drop { first: false }
        );
        assert_eq!(
            b.admit(1, t0 + Duration::from_millis(2500)),
            Verdict::Log {
                dropped: Some((3, 2))
            }
        );
        // Idle time refills no more than the burst.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.admit(4000, later), Verdict::Log { dropped: None });
        assert_eq!(b.admit(1, later), Verdict::Drop { first: true });
        // A line too long for the whole burst empties it: the short lines
        // after it wait for a second's worth, not one notice pair each.
        let huge = LogBudget::new(&Arc::from("app"), 1000);
        assert_eq!(huge.admit(1_000_000, t0), Verdict::Drop { first: true });
        assert_eq!(huge.admit(10, t0), Verdict::Drop { first: false });
        assert_eq!(huge.admit(1_000_000, t0), Verdict::Drop { first: false });
    }
}
