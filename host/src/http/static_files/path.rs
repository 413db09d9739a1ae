//! A request path after a mount's prefix → a relative host path, refusing
//! anything that could step outside or mean something else on the host.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// A request path after the prefix, decoded to a relative host path.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Target {
    /// Relative to the mount's directory; empty for the directory itself.
    pub(super) rel: PathBuf,
    /// The path ended in `/` (or was the bare prefix): serve `index.html`.
    pub(super) slash: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum PathError {
    /// `%` not followed by two hex digits: the client's mistake, 400.
    BadEscape,
    /// Would name something outside the directory or ambiguously: 404, so
    /// probing learns nothing.
    Refused,
}

/// Percent-decode each segment of `rest` and refuse anything that could
/// step outside or mean something else on the host (`.`/`..`, empty
/// segments, encoded `/`, backslash and NUL), and hidden files: a mount
/// of a project directory must not serve its `.git` or `.env`. Only
/// `.well-known` (RFC 8615: ACME challenges, `security.txt`) is served.
pub(super) fn decode_path(rest: &str) -> Result<Target, PathError> {
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
            || (bytes.starts_with(b".") && bytes != b".well-known")
            || bytes.iter().any(|&b| matches!(b, 0 | b'/' | b'\\'))
        {
            return Err(PathError::Refused);
        }
        // Unix file names are bytes; no UTF-8 requirement.
        rel.push(OsStr::from_bytes(&bytes));
    }
    Ok(Target { rel, slash })
}

/// A mount's URL prefix as bytes, percent-decoded; `None` for a `%` not
/// followed by two hex digits.
pub(super) fn decode_prefix(prefix: &str) -> Option<Vec<u8>> {
    percent_decode(prefix).ok()
}

/// A segment's bytes; a `%` not followed by two hex digits is refused
/// (the one percent-decoder of the host does the decoding).
fn percent_decode(seg: &str) -> Result<Vec<u8>, PathError> {
    let raw = seg.as_bytes();
    let escapes_ok = raw
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'%')
        .all(|(i, _)| {
            raw.get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
        });
    if !escapes_ok {
        return Err(PathError::BadEscape);
    }
    Ok(percent_encoding::percent_decode(raw).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        ok("a../b..", "a../b..", false);
        ok(
            ".well-known/security.txt",
            ".well-known/security.txt",
            false,
        );
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
            ".git/config",
            "%2egit/config",
            "a/.env",
            "..a",
            ".well-known/.secret",
        ] {
            assert_eq!(decode_path(refused), Err(PathError::Refused), "{refused}");
        }
        for bad in ["%", "a%2", "%zz", "%2g"] {
            assert_eq!(decode_path(bad), Err(PathError::BadEscape), "{bad}");
        }
    }
}
