//! RFC 9110 validators, preconditions (§13) and single byte ranges (§14)
//! for a file of known size and modification time.
//!
//! Parsed here rather than with the `headers` crate: its typed headers
//! parse the same grammar, but the judgement around them (strong versus
//! weak comparison per header, a repeated or multi-range `Range` answered
//! with the whole file, positions past `u64` saturating, `If-Range` with a
//! list) is what the tests below pin, and would stay here anyway.

use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderName};
use http::Method;

/// What the validators of the file are.
#[derive(Debug, Clone)]
pub(super) struct Validators {
    /// Strong entity tag, quoted; `None` if the filesystem has no mtime.
    pub(super) etag: Option<String>,
    /// Modification time in whole seconds since the epoch.
    pub(super) modified: Option<u64>,
}

impl Validators {
    pub(super) fn of(size: u64, mtime: Option<SystemTime>) -> Self {
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
pub(super) enum Decision {
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

pub(super) fn evaluate(method: &Method, h: &HeaderMap, v: &Validators, size: u64) -> Decision {
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
        // A date after the server's clock is a client's clock ahead of it
        // (RFC 7232 §3.3 calls it invalid): answering 304 to it would keep
        // that client from ever seeing the file change.
        if m <= since && since <= now() {
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

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderValue;

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
        // A client whose clock is ahead of ours still gets the file.
        let ahead =
            httpdate::fmt_http_date(SystemTime::now() + std::time::Duration::from_secs(86_400));
        assert_eq!(
            ev(&[(header::IF_MODIFIED_SINCE, &ahead)], Method::GET),
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
}
