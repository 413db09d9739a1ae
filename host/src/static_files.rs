//! `--static URL_PREFIX=HOST_DIR`: answer GET and HEAD for files under a
//! host directory from the host itself, without entering the guest, with
//! validators, conditional requests and single byte ranges.
//!
//! Each directory is opened once through cap-std and every lookup is made
//! relative to that handle, so `..`, absolute paths and symlinks that lead
//! outside are refused by the resolver itself, not only by the string checks
//! here. Responses are `Response<wsgi::ResponseBody>`, the server's own body
//! type; file bytes stream through `sendfile::stream` like the
//! `wsgi.file_wrapper` fast path.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use cap_std::fs::Dir;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::sendfile;
use crate::wsgi::{self, Head, ResponseBody};

/// Same `Server` value as the host's other responses.
const SERVER: &str = concat!("rsgi-wasm/", env!("CARGO_PKG_VERSION"));
const CACHE_CONTROL: &str = "public, max-age=3600";
const INDEX: &str = "index.html";

/// One `--static` value: request paths starting with `prefix` are files
/// under `dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticMount {
    /// URL path prefix, starting and ending with `/` (e.g. `/static/`).
    pub prefix: String,
    /// Host directory the files are read from.
    pub dir: PathBuf,
}

/// A `--static` value that is malformed or names no directory.
#[derive(Debug, thiserror::Error)]
#[error("--static {value:?}: {reason} (expected URL_PREFIX=HOST_DIR, e.g. /static/=./public)")]
pub struct StaticMountError {
    /// The flag value as given.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Parse `URL_PREFIX=HOST_DIR` (clap `value_parser`); the prefix gets a
/// trailing `/` if it has none, and the directory must exist.
pub fn parse_static(value: &str) -> Result<StaticMount, StaticMountError> {
    let err = |reason: &str| StaticMountError {
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let (prefix, dir) = value
        .split_once('=')
        .ok_or_else(|| err("missing `=` between the URL prefix and the host directory"))?;
    if prefix.is_empty() || dir.is_empty() {
        return Err(err(
            "the URL prefix and the host directory must both be given",
        ));
    }
    if !prefix.starts_with('/') {
        return Err(err("the URL prefix must start with `/`, like /static/"));
    }
    // The prefix is compared with the raw request path, so it must be
    // spelled the way it appears on the wire.
    if prefix
        .chars()
        .any(|c| !c.is_ascii_graphic() || matches!(c, '?' | '#' | '\\'))
    {
        return Err(err(
            "the URL prefix must be a plain URL path: ASCII without spaces, `?`, `#` or `\\` (write other characters as %XX)",
        ));
    }
    let mut prefix = prefix.to_owned();
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    // Clients normalise `.`/`..` and servers see `//` as an empty segment:
    // such a prefix would never match, or match surprisingly.
    if prefix != "/"
        && prefix[1..prefix.len() - 1]
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(err(
            "the URL prefix must not contain `//`, `.` or `..` segments",
        ));
    }
    let dir = PathBuf::from(dir);
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(err("the host directory is not a directory")),
        Err(e) => {
            return Err(err(&format!(
                "the host directory cannot be used ({e}); relative paths are from the current directory"
            )))
        }
    }
    Ok(StaticMount { prefix, dir })
}

/// The `--static` mounts, each directory opened once at start.
#[derive(Debug)]
pub struct StaticFiles {
    /// Longest prefix first, so the most specific mount wins.
    mounts: Vec<(StaticMount, Arc<Dir>)>,
}

impl StaticFiles {
    /// Open every mount's directory; a prefix given twice is an error.
    pub fn new(mounts: Vec<StaticMount>) -> anyhow::Result<Self> {
        let mut out: Vec<(StaticMount, Arc<Dir>)> = Vec::with_capacity(mounts.len());
        for m in mounts {
            if out.iter().any(|(o, _)| o.prefix == m.prefix) {
                anyhow::bail!("--static {}: this URL prefix is given twice", m.prefix);
            }
            let dir =
                Dir::open_ambient_dir(&m.dir, cap_std::ambient_authority()).with_context(|| {
                    format!(
                        "--static {}={}: opening the directory",
                        m.prefix,
                        m.dir.display()
                    )
                })?;
            out.push((m, Arc::new(dir)));
        }
        out.sort_by_key(|(m, _)| std::cmp::Reverse(m.prefix.len()));
        Ok(StaticFiles { mounts: out })
    }

    /// No mounts configured.
    pub fn is_empty(&self) -> bool {
        self.mounts.is_empty()
    }

    /// The mount that owns raw request path `path` (`uri.path()`, not
    /// decoded), if any. The prefix without its trailing slash (`/static`)
    /// belongs to the mount too: it is redirected to `/static/`.
    pub fn matches(&self, path: &str) -> Option<&StaticMount> {
        self.find(path).map(|(m, _, _)| m)
    }

    /// Mount, its directory, and the rest of the path after the prefix
    /// (`None` for the prefix without its trailing slash).
    fn find<'s, 'p>(
        &'s self,
        path: &'p str,
    ) -> Option<(&'s StaticMount, &'s Arc<Dir>, Option<&'p str>)> {
        self.mounts.iter().find_map(move |(m, dir)| {
            if let Some(rest) = path.strip_prefix(m.prefix.as_str()) {
                Some((m, dir, Some(rest)))
            } else if m.prefix.len() > 1 && path == &m.prefix[..m.prefix.len() - 1] {
                Some((m, dir, None))
            } else {
                None
            }
        })
    }

    /// The response for `req` if its path belongs to a mount (see
    /// [`matches`](Self::matches)); `None` means "not ours, route it to an
    /// app". The request body is never read.
    pub async fn serve(&self, req: &http::request::Parts) -> Option<Response<ResponseBody>> {
        let path = req.uri.path();
        let (_, dir, rest) = self.find(path)?;
        if req.method != Method::GET && req.method != Method::HEAD {
            let mut res = text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return Some(res);
        }
        let target = match rest {
            Some(rest) => match decode_path(rest) {
                Ok(t) => t,
                Err(PathError::BadEscape) => {
                    return Some(text(
                        StatusCode::BAD_REQUEST,
                        "Bad Request: malformed %-escape in the path",
                    ))
                }
                Err(PathError::Refused) => return Some(not_found()),
            },
            None => Target {
                rel: PathBuf::new(),
                slash: false,
            },
        };
        let dir = dir.clone();
        // open/stat are blocking syscalls (slow on network filesystems);
        // keep them off the reactor threads.
        let found = match tokio::task::spawn_blocking(move || lookup(&dir, target)).await {
            Ok(found) => found,
            Err(e) => {
                tracing::error!("static file lookup failed: {e}");
                return Some(text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal Server Error",
                ));
            }
        };
        Some(match found {
            Found::Missing => not_found(),
            Found::Directory => redirect_to_slash(req),
            Found::File {
                file,
                size,
                modified,
                rel,
            } => file_response(req, file, size, modified, &rel),
        })
    }
}

/// A request path after the prefix, decoded to a relative host path.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// Relative to the mount's directory; empty for the directory itself.
    rel: PathBuf,
    /// The path ended in `/` (or was the bare prefix): serve `index.html`.
    slash: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum PathError {
    /// `%` not followed by two hex digits: the client's mistake, 400.
    BadEscape,
    /// Would name something outside the directory or ambiguously: 404, so
    /// probing learns nothing.
    Refused,
}

/// Percent-decode each segment of `rest` and refuse anything that could
/// step outside or mean something else on the host: `.`/`..`, empty
/// segments, encoded `/`, backslash and NUL.
fn decode_path(rest: &str) -> Result<Target, PathError> {
    let mut rel = PathBuf::new();
    if rest.is_empty() {
        return Ok(Target { rel, slash: true });
    }
    let (body, slash) = match rest.strip_suffix('/') {
        Some(body) => (body, true),
        None => (rest, false),
    };
    for seg in body.split('/') {
        let bytes = percent_decode(seg)?;
        if bytes.is_empty()
            || bytes == b"."
            || bytes == b".."
            || bytes.iter().any(|&b| matches!(b, 0 | b'/' | b'\\'))
        {
            return Err(PathError::Refused);
        }
        // Unix file names are bytes; no UTF-8 requirement.
        rel.push(OsStr::from_bytes(&bytes));
    }
    Ok(Target { rel, slash })
}

fn percent_decode(seg: &str) -> Result<Vec<u8>, PathError> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let raw = seg.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hi = raw.get(i + 1).copied().and_then(hex);
            let lo = raw.get(i + 2).copied().and_then(hex);
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push((hi << 4) | lo),
                _ => return Err(PathError::BadEscape),
            }
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    Ok(out)
}

enum Found {
    Missing,
    /// A directory with an `index.html`, asked for without the trailing
    /// slash: redirect so relative links in the page resolve.
    Directory,
    File {
        file: std::fs::File,
        size: u64,
        modified: Option<SystemTime>,
        /// For the content type.
        rel: PathBuf,
    },
}

fn lookup(dir: &Dir, target: Target) -> Found {
    if target.slash {
        return open_file(dir, target.rel.join(INDEX));
    }
    let is_dir =
        target.rel.as_os_str().is_empty() || dir.metadata(&target.rel).is_ok_and(|m| m.is_dir());
    if is_dir {
        return match dir.metadata(target.rel.join(INDEX)) {
            Ok(m) if m.is_file() => Found::Directory,
            _ => Found::Missing,
        };
    }
    open_file(dir, target.rel)
}

fn open_file(dir: &Dir, rel: PathBuf) -> Found {
    // stat before open: opening a FIFO or device would block or have side
    // effects; only regular files are served.
    match dir.metadata(&rel) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Found::Missing,
        Err(e) => {
            log_lookup_error(&rel, &e);
            return Found::Missing;
        }
    }
    let file = match dir.open(&rel) {
        Ok(f) => f.into_std(),
        Err(e) => {
            log_lookup_error(&rel, &e);
            return Found::Missing;
        }
    };
    // The opened file's own metadata, in case the name changed in between.
    match file.metadata() {
        Ok(meta) if meta.is_file() => Found::File {
            file,
            size: meta.len(),
            modified: meta.modified().ok(),
            rel,
        },
        _ => Found::Missing,
    }
}

fn log_lookup_error(rel: &Path, e: &std::io::Error) {
    // Missing files are routine; escapes and permission problems are worth
    // a line when debugging a deployment, but are still just 404 to clients.
    if e.kind() != std::io::ErrorKind::NotFound {
        tracing::debug!("static file {}: {e}", rel.display());
    }
}

/// What the validators of the file are.
#[derive(Debug, Clone)]
struct Validators {
    /// Strong entity tag, quoted; `None` if the filesystem has no mtime.
    etag: Option<String>,
    /// Modification time in whole seconds since the epoch.
    modified: Option<u64>,
}

impl Validators {
    fn of(size: u64, mtime: Option<SystemTime>) -> Self {
        let since_epoch = mtime.map(|t| t.duration_since(UNIX_EPOCH).unwrap_or_default());
        Validators {
            // Strong, so If-Range can use it; nanoseconds so two writes in
            // the same second still differ (same size and mtime to the
            // nanosecond is treated as same content, as nginx does).
            etag: since_epoch.map(|d| format!("\"{:x}-{:x}\"", d.as_nanos(), size)),
            modified: since_epoch.map(|d| d.as_secs()),
        }
    }
}

/// The outcome of RFC 9110 §13.2.2 preconditions and §14 ranges.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    PreconditionFailed,
    NotModified,
    Unsatisfiable,
    /// Send `len` bytes from `start`; `partial` means 206.
    Send {
        start: u64,
        len: u64,
        partial: bool,
    },
}

fn evaluate(method: &Method, h: &HeaderMap, v: &Validators, size: u64) -> Decision {
    if h.contains_key(header::IF_MATCH) {
        if !list_matches(&joined(h, header::IF_MATCH), v.etag.as_deref(), true) {
            return Decision::PreconditionFailed;
        }
    } else if let (Some(since), Some(m)) = (date(h, header::IF_UNMODIFIED_SINCE), v.modified) {
        if m > since {
            return Decision::PreconditionFailed;
        }
    }
    // Only GET and HEAD reach here, for which a failed If-None-Match or
    // If-Modified-Since is 304.
    if h.contains_key(header::IF_NONE_MATCH) {
        if list_matches(&joined(h, header::IF_NONE_MATCH), v.etag.as_deref(), false) {
            return Decision::NotModified;
        }
    } else if let (Some(since), Some(m)) = (date(h, header::IF_MODIFIED_SINCE), v.modified) {
        if m <= since {
            return Decision::NotModified;
        }
    }
    let full = Decision::Send {
        start: 0,
        len: size,
        partial: false,
    };
    // Range is defined for GET only (§14.2); a repeated Range header is
    // not a single valid field, so it is ignored like a malformed one.
    let mut ranges = h.get_all(header::RANGE).iter();
    let (Some(range), None) = (ranges.next(), ranges.next()) else {
        return full;
    };
    if method != Method::GET {
        return full;
    }
    let Ok(range) = range.to_str() else {
        return full;
    };
    if let Some(if_range) = h.get(header::IF_RANGE) {
        if !if_range_holds(if_range.to_str().unwrap_or(""), v) {
            return full;
        }
    }
    match parse_range(range, size) {
        RangeSpec::Ignore => full,
        RangeSpec::Unsatisfiable => Decision::Unsatisfiable,
        RangeSpec::Bytes { start, end } => Decision::Send {
            start,
            len: end - start + 1,
            partial: true,
        },
    }
}

/// All field lines of a list header as one value (RFC 9110 §5.3); a
/// non-ASCII line reads as empty, which matches nothing.
fn joined(h: &HeaderMap, name: HeaderName) -> String {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or(""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn date(h: &HeaderMap, name: HeaderName) -> Option<u64> {
    let t = httpdate::parse_http_date(h.get(name)?.to_str().ok()?.trim()).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_secs())
}

/// If-Range (§13.1.5): an entity tag must match strongly, a date must equal
/// Last-Modified exactly; anything else means "send it all".
fn if_range_holds(value: &str, v: &Validators) -> bool {
    let value = value.trim();
    if value.starts_with('"') || value.starts_with("W/") {
        return list_matches(value, v.etag.as_deref(), true) && !value.contains(',');
    }
    match (httpdate::parse_http_date(value), v.modified) {
        (Ok(t), Some(m)) => t.duration_since(UNIX_EPOCH).is_ok_and(|d| d.as_secs() == m),
        _ => false,
    }
}

/// One entity tag from a list: weak flag and the quoted opaque tag.
#[derive(Debug, PartialEq, Eq)]
struct EntityTag<'a> {
    weak: bool,
    opaque: &'a str,
}

/// Parse `#entity-tag` (§8.8.3); `None` if malformed. Parsed by hand
/// because commas are legal inside the quotes, so splitting on `,` is wrong.
fn parse_etags(value: &str) -> Option<Vec<EntityTag<'_>>> {
    let mut tags = Vec::new();
    let mut s = value;
    loop {
        s = s.trim_start_matches([' ', '\t', ',']);
        if s.is_empty() {
            return Some(tags);
        }
        let weak = s.starts_with("W/");
        if weak {
            s = &s[2..];
        }
        let body = s.strip_prefix('"')?;
        let end = body.find('"')?;
        // etagc is %x21 / %x23-7E / obs-text.
        if body[..end]
            .bytes()
            .any(|b| b == b'"' || b < 0x21 || b == 0x7f)
        {
            return None;
        }
        tags.push(EntityTag {
            weak,
            opaque: &s[..end + 2],
        });
        s = s[end + 2..].trim_start_matches([' ', '\t']);
        if !s.is_empty() && !s.starts_with(',') {
            return None;
        }
    }
}

/// Does the If-Match / If-None-Match value match our (strong) tag? `*`
/// matches any existing file. Strong comparison refuses weak tags; weak
/// comparison compares the opaque parts only (§8.8.3.2).
fn list_matches(value: &str, ours: Option<&str>, strong: bool) -> bool {
    if value.trim() == "*" {
        return true;
    }
    let (Some(ours), Some(tags)) = (ours, parse_etags(value)) else {
        return false;
    };
    tags.iter().any(|t| t.opaque == ours && !(strong && t.weak))
}

/// A `Range` header judged against a file of known size.
#[derive(Debug, PartialEq, Eq)]
enum RangeSpec {
    /// Malformed, another unit, or several ranges: send the whole file.
    Ignore,
    /// A valid single range that starts past the end: 416.
    Unsatisfiable,
    /// Inclusive byte positions, already clamped to the file.
    Bytes { start: u64, end: u64 },
}

/// Parse a `Range` value (RFC 9110 §14.1.2) for a file of `size` bytes.
/// Hand-written rather than a crate: it is a dozen lines, needs no
/// multi-range support (several ranges are answered with 200, which §14.2
/// allows and which avoids multipart/byteranges), and the edge cases are
/// pinned by the tests below.
fn parse_range(value: &str, size: u64) -> RangeSpec {
    let Some((unit, set)) = value.split_once('=') else {
        return RangeSpec::Ignore;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeSpec::Ignore;
    }
    let mut specs = set.split(',').map(str::trim).filter(|s| !s.is_empty());
    let (Some(spec), None) = (specs.next(), specs.next()) else {
        return RangeSpec::Ignore;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return RangeSpec::Ignore;
    };
    // Values beyond u64 saturate: a huge first-pos is past the end, a huge
    // last-pos or suffix means "to the end".
    let num = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().unwrap_or(u64::MAX))
    };
    match (first, last) {
        ("", suffix) => match num(suffix) {
            None => RangeSpec::Ignore,
            Some(0) => RangeSpec::Unsatisfiable,
            Some(_) if size == 0 => RangeSpec::Unsatisfiable,
            Some(n) => RangeSpec::Bytes {
                start: size - n.min(size),
                end: size - 1,
            },
        },
        (first, last) => {
            let Some(start) = num(first) else {
                return RangeSpec::Ignore;
            };
            let end = if last.is_empty() {
                u64::MAX
            } else {
                match num(last) {
                    Some(end) if end >= start => end,
                    _ => return RangeSpec::Ignore,
                }
            };
            if start >= size {
                RangeSpec::Unsatisfiable
            } else {
                RangeSpec::Bytes {
                    start,
                    end: end.min(size - 1),
                }
            }
        }
    }
}

fn content_type(rel: &Path) -> HeaderValue {
    let mime = mime_guess::from_path(rel)
        .first_raw()
        .unwrap_or("application/octet-stream");
    let value = if mime.starts_with("text/") || mime == "application/javascript" {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_owned()
    };
    HeaderValue::from_str(&value)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

fn file_response(
    req: &http::request::Parts,
    file: std::fs::File,
    size: u64,
    modified: Option<SystemTime>,
    rel: &Path,
) -> Response<ResponseBody> {
    let v = Validators::of(size, modified);
    let mut headers = HeaderMap::new();
    headers.insert(header::SERVER, HeaderValue::from_static(SERVER));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(etag) = v
        .etag
        .as_deref()
        .and_then(|e| HeaderValue::from_str(e).ok())
    {
        headers.insert(header::ETAG, etag);
    }
    if let Some(t) = modified {
        if let Ok(lm) = HeaderValue::from_str(&httpdate::fmt_http_date(t)) {
            headers.insert(header::LAST_MODIFIED, lm);
        }
    }
    let (status, start, len) = match evaluate(&req.method, &req.headers, &v, size) {
        Decision::PreconditionFailed => {
            return with_headers(
                text(StatusCode::PRECONDITION_FAILED, "Precondition Failed"),
                headers,
            )
        }
        Decision::NotModified => {
            let mut res = Response::new(ResponseBody::full(Bytes::new()));
            *res.status_mut() = StatusCode::NOT_MODIFIED;
            *res.headers_mut() = headers;
            return res;
        }
        Decision::Unsatisfiable => {
            let mut res = with_headers(
                text(StatusCode::RANGE_NOT_SATISFIABLE, "Range Not Satisfiable"),
                headers,
            );
            if let Ok(cr) = HeaderValue::from_str(&format!("bytes */{size}")) {
                res.headers_mut().insert(header::CONTENT_RANGE, cr);
            }
            return res;
        }
        Decision::Send {
            start,
            len,
            partial: false,
        } => (StatusCode::OK, start, len),
        Decision::Send {
            start,
            len,
            partial: true,
        } => {
            let cr = format!("bytes {start}-{}/{size}", start + len - 1);
            if let Ok(cr) = HeaderValue::from_str(&cr) {
                headers.insert(header::CONTENT_RANGE, cr);
            }
            (StatusCode::PARTIAL_CONTENT, start, len)
        }
    };
    headers.insert(header::CONTENT_TYPE, content_type(rel));
    // User-uploaded files must not be reinterpreted as HTML by browsers.
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if req.method == Method::HEAD || len == 0 {
        // hyper keeps an explicit Content-Length on HEAD with an empty body.
        let mut res = Response::new(ResponseBody::full(Bytes::new()));
        *res.status_mut() = status;
        *res.headers_mut() = headers;
        return res;
    }
    let (tx, rx) = wsgi::body_channel();
    // sendfile::stream aborts the body if the file shrinks or a read
    // fails, so the client sees a truncated response rather than garbage.
    tokio::spawn(sendfile::stream(file, start, len, 0, tx));
    wsgi::into_response(
        Head {
            status,
            reason: None,
            headers,
            first: Bytes::new(),
            content_length: Some(len),
        },
        rx,
    )
}

fn with_headers(mut res: Response<ResponseBody>, headers: HeaderMap) -> Response<ResponseBody> {
    for (name, value) in &headers {
        res.headers_mut()
            .entry(name)
            .or_insert_with(|| value.clone());
    }
    res
}

fn text(status: StatusCode, body: &str) -> Response<ResponseBody> {
    let mut res = Response::new(ResponseBody::full(format!("{body}\n")));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::SERVER, HeaderValue::from_static(SERVER));
    res
}

fn not_found() -> Response<ResponseBody> {
    text(StatusCode::NOT_FOUND, "Not Found")
}

/// 301 from `/dir` to `/dir/`, query kept. The path has passed
/// `decode_path` (no empty segments), so it never starts with `//` and the
/// Location cannot point at another host.
fn redirect_to_slash(req: &http::request::Parts) -> Response<ResponseBody> {
    let mut location = format!("{}/", req.uri.path());
    if let Some(q) = req.uri.query() {
        location.push('?');
        location.push_str(q);
    }
    let Ok(location) = HeaderValue::from_str(&location) else {
        return not_found();
    };
    let mut res = text(StatusCode::MOVED_PERMANENTLY, "Moved Permanently");
    res.headers_mut().insert(header::LOCATION, location);
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn ranges() {
        use RangeSpec::*;
        let r = |v| parse_range(v, 100);
        assert_eq!(r("bytes=0-9"), Bytes { start: 0, end: 9 });
        assert_eq!(r("bytes=10-"), Bytes { start: 10, end: 99 });
        assert_eq!(r("bytes=-10"), Bytes { start: 90, end: 99 });
        assert_eq!(r("bytes=-1000"), Bytes { start: 0, end: 99 });
        assert_eq!(r("bytes=90-1000"), Bytes { start: 90, end: 99 });
        assert_eq!(r("Bytes = 5-5 ,"), Bytes { start: 5, end: 5 });
        assert_eq!(
            r("bytes=1-99999999999999999999999"),
            Bytes { start: 1, end: 99 }
        );
        assert_eq!(r("bytes=100-"), Unsatisfiable);
        assert_eq!(r("bytes=100-200"), Unsatisfiable);
        assert_eq!(r("bytes=-0"), Unsatisfiable);
        assert_eq!(r("bytes=99999999999999999999999-"), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-5", 0), Unsatisfiable);
        for bad in [
            "bytes=5-1",
            "bytes=0-1,5-6",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=1 - 2",
            "bytes=+1-2",
            "items=0-1",
            "0-1",
            "bytes=--1",
        ] {
            assert_eq!(r(bad), Ignore, "{bad}");
        }
    }

    #[test]
    fn etag_lists() {
        assert_eq!(
            parse_etags(r#""a", W/"b,c" ,"""#).unwrap(),
            vec![
                EntityTag {
                    weak: false,
                    opaque: "\"a\""
                },
                EntityTag {
                    weak: true,
                    opaque: "\"b,c\""
                },
                EntityTag {
                    weak: false,
                    opaque: "\"\""
                },
            ]
        );
        assert!(parse_etags("abc").is_none());
        assert!(parse_etags(r#""a" x"#).is_none());
        assert!(parse_etags(r#""a"#).is_none());
        let ours = Some("\"x\"");
        assert!(list_matches("*", None, true));
        assert!(list_matches(r#""y", "x""#, ours, true));
        assert!(list_matches(r#"W/"x""#, ours, false));
        assert!(!list_matches(r#"W/"x""#, ours, true));
        assert!(!list_matches(r#""y""#, ours, false));
        assert!(!list_matches(r#""x""#, None, false));
        assert!(!list_matches("garbage", ours, false));
    }

    #[test]
    fn conditionals() {
        let v = Validators::of(
            10,
            Some(UNIX_EPOCH + std::time::Duration::from_secs(1_000_000)),
        );
        let etag = v.etag.clone().unwrap();
        let lm = httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(1_000_000));
        let later = httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(2_000_000));
        let earlier = httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(5));
        let ev = |pairs: &[(HeaderName, &str)], method: Method| {
            let mut h = HeaderMap::new();
            for (k, val) in pairs {
                h.append(k.clone(), HeaderValue::from_str(val).unwrap());
            }
            evaluate(&method, &h, &v, 10)
        };
        let full = Decision::Send {
            start: 0,
            len: 10,
            partial: false,
        };
        let part = Decision::Send {
            start: 2,
            len: 3,
            partial: true,
        };
        assert_eq!(ev(&[], Method::GET), full);
        assert_eq!(
            ev(&[(header::IF_NONE_MATCH, &etag)], Method::GET),
            Decision::NotModified
        );
        assert_eq!(
            ev(
                &[(header::IF_NONE_MATCH, &format!("W/{etag}"))],
                Method::HEAD
            ),
            Decision::NotModified
        );
        assert_eq!(
            ev(&[(header::IF_NONE_MATCH, "\"other\"")], Method::GET),
            full
        );
        // If-None-Match takes precedence over If-Modified-Since.
        assert_eq!(
            ev(
                &[
                    (header::IF_NONE_MATCH, "\"other\""),
                    (header::IF_MODIFIED_SINCE, &later)
                ],
                Method::GET
            ),
            full
        );
        assert_eq!(
            ev(&[(header::IF_MODIFIED_SINCE, &lm)], Method::GET),
            Decision::NotModified
        );
        assert_eq!(
            ev(&[(header::IF_MODIFIED_SINCE, &earlier)], Method::GET),
            full
        );
        assert_eq!(
            ev(&[(header::IF_MODIFIED_SINCE, "yesterday")], Method::GET),
            full
        );
        assert_eq!(
            ev(&[(header::IF_MATCH, "\"other\"")], Method::GET),
            Decision::PreconditionFailed
        );
        assert_eq!(ev(&[(header::IF_MATCH, &etag)], Method::GET), full);
        assert_eq!(
            ev(&[(header::IF_UNMODIFIED_SINCE, &earlier)], Method::GET),
            Decision::PreconditionFailed
        );
        assert_eq!(ev(&[(header::RANGE, "bytes=2-4")], Method::GET), part);
        assert_eq!(ev(&[(header::RANGE, "bytes=2-4")], Method::HEAD), full);
        assert_eq!(
            ev(&[(header::RANGE, "bytes=20-")], Method::GET),
            Decision::Unsatisfiable
        );
        assert_eq!(
            ev(
                &[(header::RANGE, "bytes=2-4"), (header::RANGE, "bytes=2-4")],
                Method::GET
            ),
            full
        );
        assert_eq!(
            ev(
                &[(header::RANGE, "bytes=2-4"), (header::IF_RANGE, &etag)],
                Method::GET
            ),
            part
        );
        assert_eq!(
            ev(
                &[(header::RANGE, "bytes=2-4"), (header::IF_RANGE, &lm)],
                Method::GET
            ),
            part
        );
        assert_eq!(
            ev(
                &[(header::RANGE, "bytes=2-4"), (header::IF_RANGE, &earlier)],
                Method::GET
            ),
            full
        );
        assert_eq!(
            ev(
                &[(header::RANGE, "bytes=2-4"), (header::IF_RANGE, "\"old\"")],
                Method::GET
            ),
            full
        );
        assert_eq!(
            ev(
                &[
                    (header::RANGE, "bytes=2-4"),
                    (header::IF_RANGE, &format!("W/{etag}"))
                ],
                Method::GET
            ),
            full
        );
    }

    #[test]
    fn path_decoding() {
        let ok = |rest: &str, rel: &str, slash: bool| {
            assert_eq!(
                decode_path(rest),
                Ok(Target {
                    rel: PathBuf::from(rel),
                    slash
                }),
                "{rest}"
            )
        };
        ok("", "", true);
        ok("a.css", "a.css", false);
        ok("css/a%20b.css", "css/a b.css", false);
        ok("docs/", "docs", true);
        ok("%C3%A9t%c3%a9", "été", false);
        ok("..a/b..", "..a/b..", false);
        for refused in [
            "..",
            "../x",
            "a/../x",
            "%2e%2e/x",
            "%2E%2E",
            ".",
            "a/./b",
            "a//b",
            "/etc/passwd",
            "/",
            "a%2fb",
            "a%2Fb",
            "a%5cb",
            "a\\b",
            "a%00b",
            "%2e%2e%5c%2e%2e",
        ] {
            assert_eq!(decode_path(refused), Err(PathError::Refused), "{refused}");
        }
        for bad in ["%", "a%2", "%zz", "%2g"] {
            assert_eq!(decode_path(bad), Err(PathError::BadEscape), "{bad}");
        }
    }

    #[test]
    fn parsing_mounts() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().display();
        let m = parse_static(&format!("/static={d}")).unwrap();
        assert_eq!(m.prefix, "/static/");
        assert_eq!(m.dir, tmp.path());
        assert_eq!(parse_static(&format!("/a/b/={d}")).unwrap().prefix, "/a/b/");
        assert_eq!(parse_static(&format!("/={d}")).unwrap().prefix, "/");
        let file = tmp.path().join("f");
        std::fs::write(&file, "x").unwrap();
        for (value, why) in [
            (format!("static={d}"), "must start with `/`"),
            (d.to_string(), "missing `=`"),
            ("/static=".to_string(), "must both be given"),
            (format!("=/{d}"), "must both be given"),
            (format!("/a b={d}"), "plain URL path"),
            (format!("/a?b={d}"), "plain URL path"),
            (format!("/a//b={d}"), "`//`"),
            (format!("/a/../b={d}"), "`..`"),
            (format!("/s={}", file.display()), "not a directory"),
            (format!("/s={d}/missing"), "cannot be used"),
        ] {
            let e = parse_static(&value).unwrap_err().to_string();
            assert!(e.contains(why), "{value}: {e}");
            assert!(e.contains("expected URL_PREFIX=HOST_DIR"), "{e}");
        }
    }

    #[test]
    fn prefix_matching() {
        let a = tempfile::tempdir().unwrap();
        let mount = |prefix: &str| StaticMount {
            prefix: prefix.into(),
            dir: a.path().into(),
        };
        let sf = StaticFiles::new(vec![mount("/s/"), mount("/s/deep/")]).unwrap();
        let hit = |p| sf.matches(p).map(|m| m.prefix.as_str());
        assert_eq!(hit("/s/x.css"), Some("/s/"));
        assert_eq!(hit("/s/"), Some("/s/"));
        assert_eq!(hit("/s"), Some("/s/"));
        assert_eq!(hit("/s/deep/x"), Some("/s/deep/"));
        assert_eq!(hit("/s/deep"), Some("/s/deep/"));
        assert_eq!(hit("/s/deeper"), Some("/s/"));
        assert_eq!(hit("/sx"), None);
        assert_eq!(hit("/"), None);
        assert_eq!(hit("*"), None);
        assert!(StaticFiles::new(vec![mount("/s/"), mount("/s/")]).is_err());
        let root = StaticFiles::new(vec![mount("/")]).unwrap();
        assert!(root.matches("/anything").is_some());
        assert!(root.matches("*").is_none());
    }

    fn request(method: Method, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    async fn body(res: Response<ResponseBody>) -> Vec<u8> {
        res.into_body().collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn serving() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("public");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(tmp.path().join("secret.txt"), "top secret").unwrap();
        // Larger than several 64 KiB chunks, with position-dependent bytes.
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(root.join("big.bin"), &big).unwrap();
        std::fs::write(root.join("hello.txt"), "hello, world").unwrap();
        std::fs::write(root.join("app.js"), "1").unwrap();
        std::fs::write(root.join("empty.css"), "").unwrap();
        std::fs::create_dir(root.join("docs")).unwrap();
        std::fs::write(root.join("docs/index.html"), "<h1>docs</h1>").unwrap();
        std::fs::create_dir(root.join("bare")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret.txt"), root.join("abs-link")).unwrap();
        std::os::unix::fs::symlink("../secret.txt", root.join("rel-link")).unwrap();
        std::os::unix::fs::symlink("hello.txt", root.join("alias.txt")).unwrap();
        let sf = StaticFiles::new(vec![
            parse_static(&format!("/static={}", root.display())).unwrap()
        ])
        .unwrap();
        let serve = |method: Method, uri: &str, headers: &[(&str, &str)]| {
            let req = request(method, uri, headers);
            let sf = &sf;
            async move { sf.serve(&req).await }
        };

        assert!(serve(Method::GET, "/other/hello.txt", &[]).await.is_none());

        let res = serve(Method::GET, "/static/hello.txt", &[]).await.unwrap();
        assert_eq!(res.status(), 200);
        let h = res.headers().clone();
        assert_eq!(h["content-type"], "text/plain; charset=utf-8");
        assert_eq!(h["content-length"], "12");
        assert_eq!(h["accept-ranges"], "bytes");
        assert_eq!(h["cache-control"], CACHE_CONTROL);
        assert!(h["etag"].to_str().unwrap().starts_with('"'));
        httpdate::parse_http_date(h["last-modified"].to_str().unwrap()).unwrap();
        assert_eq!(body(res).await, b"hello, world");
        let etag = h["etag"].to_str().unwrap();
        let lm = h["last-modified"].to_str().unwrap();

        let ct = serve(Method::GET, "/static/app.js", &[]).await.unwrap();
        assert!(ct.headers()["content-type"]
            .to_str()
            .unwrap()
            .ends_with("javascript; charset=utf-8"));

        let res = serve(Method::HEAD, "/static/hello.txt", &[]).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-length"], "12");
        assert_eq!(body(res).await, b"");

        let res = serve(Method::GET, "/static/big.bin", &[]).await.unwrap();
        assert_eq!(res.headers()["content-type"], "application/octet-stream");
        assert_eq!(body(res).await, big);

        let res = serve(
            Method::GET,
            "/static/big.bin",
            &[("range", "bytes=65530-131080")],
        )
        .await
        .unwrap();
        assert_eq!(res.status(), 206);
        assert_eq!(res.headers()["content-range"], "bytes 65530-131080/200000");
        assert_eq!(res.headers()["content-length"], "65551");
        assert_eq!(body(res).await, &big[65530..=131080]);

        let res = serve(Method::GET, "/static/hello.txt", &[("range", "bytes=-5")])
            .await
            .unwrap();
        assert_eq!(res.status(), 206);
        assert_eq!(body(res).await, b"world");

        let res = serve(
            Method::GET,
            "/static/hello.txt",
            &[("range", "bytes=0-1,4-5")],
        )
        .await
        .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(body(res).await, b"hello, world");

        let res = serve(Method::GET, "/static/hello.txt", &[("range", "bytes=12-")])
            .await
            .unwrap();
        assert_eq!(res.status(), 416);
        assert_eq!(res.headers()["content-range"], "bytes */12");

        let res = serve(
            Method::GET,
            "/static/hello.txt",
            &[("range", "bytes=0-4"), ("if-range", etag)],
        )
        .await
        .unwrap();
        assert_eq!(res.status(), 206);
        assert_eq!(body(res).await, b"hello");
        let res = serve(
            Method::GET,
            "/static/hello.txt",
            &[("range", "bytes=0-4"), ("if-range", "\"stale\"")],
        )
        .await
        .unwrap();
        assert_eq!(res.status(), 200);

        for cond in [("if-none-match", etag), ("if-modified-since", lm)] {
            let res = serve(Method::GET, "/static/hello.txt", &[cond])
                .await
                .unwrap();
            assert_eq!(res.status(), 304, "{cond:?}");
            assert_eq!(res.headers()["etag"], etag);
            assert_eq!(res.headers()["last-modified"], lm);
            assert!(res.headers().get("content-length").is_none());
            assert_eq!(body(res).await, b"");
        }
        let res = serve(
            Method::GET,
            "/static/hello.txt",
            &[("if-match", "\"nope\"")],
        )
        .await
        .unwrap();
        assert_eq!(res.status(), 412);

        let res = serve(Method::GET, "/static/empty.css", &[]).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-length"], "0");
        assert_eq!(res.headers()["content-type"], "text/css; charset=utf-8");

        let res = serve(Method::GET, "/static/alias.txt", &[]).await.unwrap();
        assert_eq!(body(res).await, b"hello, world");

        let res = serve(Method::GET, "/static/docs/", &[]).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "text/html; charset=utf-8");
        assert_eq!(body(res).await, b"<h1>docs</h1>");
        let res = serve(Method::GET, "/static/docs?v=1", &[]).await.unwrap();
        assert_eq!(res.status(), 301);
        assert_eq!(res.headers()["location"], "/static/docs/?v=1");
        let res = serve(Method::GET, "/static", &[]).await.unwrap();
        assert_eq!(res.status(), 404, "no index.html at the mount root");

        let res = serve(Method::POST, "/static/hello.txt", &[]).await.unwrap();
        assert_eq!(res.status(), 405);
        assert_eq!(res.headers()["allow"], "GET, HEAD");

        let res = serve(Method::GET, "/static/%zz", &[]).await.unwrap();
        assert_eq!(res.status(), 400);

        for uri in [
            "/static/abs-link",
            "/static/rel-link",
            "/static/../secret.txt",
            "/static/%2e%2e/secret.txt",
            "/static/docs/..%2f..%2fsecret.txt",
            "/static/missing.txt",
            "/static/bare",
            "/static/bare/",
            "/static/hello.txt/",
            "/static/hello.txt/x",
            "/static/",
        ] {
            let res = serve(Method::GET, uri, &[]).await.unwrap();
            assert_eq!(res.status(), 404, "{uri}");
            assert_eq!(body(res).await, b"Not Found\n", "{uri}");
        }
    }
}
