//! Building the responses static files answer with: a file (whole, a
//! range, 304, 412, 416), a redirect to the directory's slash, a 403 or 404.

use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use super::conditional::{evaluate, Decision, Validators};
use crate::runtime::body::{host_page, ResponseBody, SERVER};

pub(super) const CACHE_CONTROL: &str = "public, max-age=3600";

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

pub(super) fn file_response(
    req: &http::request::Parts,
    file: std::fs::File,
    size: u64,
    modified: Option<SystemTime>,
    rel: &Path,
    stall: Duration,
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
                host_page(StatusCode::PRECONDITION_FAILED, "Precondition Failed"),
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
                host_page(StatusCode::RANGE_NOT_SATISFIABLE, "Range Not Satisfiable"),
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
    // The file streams from its own task, which aborts the body if the
    // file shrinks or a read fails: the client sees a truncated response
    // rather than garbage.
    let mut res = Response::new(ResponseBody::file(file, start, len, stall));
    *res.status_mut() = status;
    *res.headers_mut() = headers;
    res
}

fn with_headers(mut res: Response<ResponseBody>, headers: HeaderMap) -> Response<ResponseBody> {
    for (name, value) in &headers {
        res.headers_mut()
            .entry(name)
            .or_insert_with(|| value.clone());
    }
    res
}

/// No file descriptor was left to open the file: the server's trouble, for
/// a moment, not the client's.
pub(super) fn unavailable() -> Response<ResponseBody> {
    host_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service Unavailable: server busy, retry shortly",
    )
}

/// A file or directory the server's user may not read (nginx answers so).
pub(super) fn forbidden() -> Response<ResponseBody> {
    host_page(StatusCode::FORBIDDEN, "Forbidden")
}

pub(super) fn not_found() -> Response<ResponseBody> {
    host_page(StatusCode::NOT_FOUND, "Not Found")
}

/// 301 from `/dir` to `/dir/`, query kept. The path has passed
/// `decode_path` (no empty segments), so it never starts with `//` and the
/// Location cannot point at another host.
pub(super) fn redirect_to_slash(req: &http::request::Parts) -> Response<ResponseBody> {
    let mut location = format!("{}/", req.uri.path());
    if let Some(q) = req.uri.query() {
        location.push('?');
        location.push_str(q);
    }
    let Ok(location) = HeaderValue::from_str(&location) else {
        return not_found();
    };
    let mut res = host_page(StatusCode::MOVED_PERMANENTLY, "Moved Permanently");
    res.headers_mut().insert(header::LOCATION, location);
    res
}
