//! RFC 9112 rules on a parsed request head that hyper leaves to the server:
//! `Host` (§3.2) and its agreement with an absolute target or HTTP/2's
//! `:authority`, which request-target form each method may use (§3.2.3,
//! §3.2.4), and the transfer codings (§6.1). A request that breaks one is
//! refused before routing.

use http::request::Parts;
use http::uri::Authority;
use http::{Method, StatusCode, Version};

use crate::http::router::canonical_ipv6;
use crate::runtime::environ::split_host;

/// Why a request head is refused: the status and a short text for the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadError {
    /// 400, or 501 for a transfer coding the server does not implement.
    pub status: StatusCode,
    /// What was wrong, for the client.
    pub reason: &'static str,
}

const fn bad(reason: &'static str) -> HeadError {
    HeadError {
        status: StatusCode::BAD_REQUEST,
        reason,
    }
}

/// Check the head of a request hyper accepted.
pub fn check(parts: &Parts) -> Result<(), HeadError> {
    // Methods are case-sensitive (RFC 9110 §9.1): `post` is not POST, but
    // frameworks upper-case the method to route it (Werkzeug does), so a
    // middleware comparing it to "POST" would be passed by. gunicorn
    // refuses lower case in a method too.
    if parts
        .method
        .as_str()
        .bytes()
        .any(|b| b.is_ascii_lowercase())
    {
        return Err(bad(
            "Bad Request: the method must be in upper case (methods are case-sensitive)",
        ));
    }
    check_target(&parts.method, &parts.uri)?;
    check_path_form(parts)?;
    check_host(parts)?;
    check_transfer_coding(parts)?;
    // One Content-Type, or an app and a proxy in front of it may read the
    // body differently (RFC 9110 §5.3: not a list-based field).
    let mut types = parts.headers.get_all(http::header::CONTENT_TYPE).iter();
    if types.next().is_some() && types.next().is_some() {
        return Err(bad("Bad Request: more than one Content-Type header"));
    }
    Ok(())
}

fn check_target(method: &Method, uri: &http::Uri) -> Result<(), HeadError> {
    // The target grammar is ASCII (RFC 9112 §3.2, RFC 3986): hyper passes
    // raw UTF-8 through, but other servers and proxies decode such bytes
    // differently, so one request could name two paths.
    if !uri.path().is_ascii() || !uri.query().is_none_or(str::is_ascii) {
        return Err(bad(
            "Bad Request: the request target must be ASCII; percent-encode other bytes",
        ));
    }
    if uri
        .scheme_str()
        .is_some_and(|s| !s.eq_ignore_ascii_case("http") && !s.eq_ignore_ascii_case("https"))
    {
        return Err(bad(
            "Bad Request: the target's scheme must be http or https",
        ));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(bad(
            "Bad Request: the target must not carry user information",
        ));
    }
    // The same rule as for `Host`, for an absolute target and for HTTP/2's
    // `:authority` (which hyper makes the URI's authority).
    if uri
        .authority()
        .is_some_and(|a| !valid_host(a.as_str().as_bytes()))
    {
        return Err(bad(
            "Bad Request: the target's authority is not a valid host[:port]",
        ));
    }
    let authority_form = uri.scheme().is_none() && uri.authority().is_some();
    // §3.2.3: only CONNECT uses `host:port` as its target.
    if authority_form && method != Method::CONNECT {
        return Err(bad(
            "Bad Request: an authority-form target is only for CONNECT",
        ));
    }
    // RFC 9110 §9.3.6: a CONNECT target is a host and a port; without one
    // (or with port 0) there is nowhere to tunnel to.
    let no_port = uri.port_u16().is_none_or(|p| p == 0);
    if method == Method::CONNECT && (!authority_form || no_port) {
        return Err(bad("Bad Request: CONNECT needs a host:port target"));
    }
    // §3.2.4: `*` is only for a server-wide OPTIONS. http parses it as the
    // path "*" (with HTTP/2's scheme and authority on an h2 request).
    if uri.path() == "*" && method != Method::OPTIONS {
        return Err(bad(
            "Bad Request: an asterisk-form target is only for OPTIONS",
        ));
    }
    Ok(())
}

/// An origin-form target, and HTTP/2's `:path` (RFC 9113 §8.3.1), starts
/// with `/` or is `*`: `http` takes `?a=1` as the path `/` with a query,
/// which RAW_URI would still show as sent.
fn check_path_form(parts: &Parts) -> Result<(), HeadError> {
    let origin_form = parts.uri.scheme().is_none() || parts.version == Version::HTTP_2;
    if !origin_form || parts.method == Method::CONNECT {
        return Ok(());
    }
    match parts.uri.path_and_query().map(|pq| pq.as_str()) {
        Some(pq) if !pq.starts_with('/') && pq != "*" => Err(bad(
            "Bad Request: the request target's path must start with /",
        )),
        _ => Ok(()),
    }
}

fn check_host(parts: &Parts) -> Result<(), HeadError> {
    let mut hosts = parts.headers.get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        // §3.2: "A server MUST respond with a 400 (Bad Request) status code
        // to any HTTP/1.1 request message that lacks a Host header field and
        // to any request message that contains more than one Host header
        // field line or a Host header field with an invalid field value."
        (None, _) if parts.version == Version::HTTP_11 => {
            Err(bad("Bad Request: HTTP/1.1 requires a Host header"))
        }
        // RFC 9113 §8.3.1: with the http or https scheme (the only ones
        // let through), `:authority` or `Host` is required.
        (None, _) if parts.version == Version::HTTP_2 && parts.uri.authority().is_none() => Err(
            bad("Bad Request: an HTTP/2 request needs :authority or a Host header"),
        ),
        (None, _) => Ok(()),
        (Some(_), Some(_)) => Err(bad("Bad Request: more than one Host header")),
        (Some(host), None) if !valid_host(host.as_bytes()) => Err(bad(
            "Bad Request: the Host header is not a valid host[:port]",
        )),
        // An absolute target names the host too (§3.2.2 would have the
        // server ignore `Host`): when they differ, refused, so nothing
        // downstream can take one for the other. HTTP/2 clients that send
        // `Host` beside `:authority` (hyper's, with a URL by address) mean
        // `Host`, which routing and HTTP_HOST both use.
        (Some(host), None) if parts.version != Version::HTTP_2 => {
            let default_port = match parts.uri.scheme_str() {
                Some(s) if s.eq_ignore_ascii_case("https") => "443",
                _ => "80",
            };
            match (parts.uri.authority(), host.to_str()) {
                (Some(authority), Ok(host))
                    if !same_host(authority.as_str(), host, default_port) =>
                {
                    Err(bad(
                        "Bad Request: the Host header differs from the target's authority",
                    ))
                }
                _ => Ok(()),
            }
        }
        (Some(_), None) => Ok(()),
    }
}

/// §6.1: `chunked` at most once, and last (hyper checks the last), and no
/// other coding: the body would reach the app still encoded.
fn check_transfer_coding(parts: &Parts) -> Result<(), HeadError> {
    let mut chunked = 0;
    for value in parts.headers.get_all(http::header::TRANSFER_ENCODING) {
        let Ok(value) = value.to_str() else {
            return Err(bad("Bad Request: invalid Transfer-Encoding"));
        };
        for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !coding.eq_ignore_ascii_case("chunked") {
                return Err(HeadError {
                    status: StatusCode::NOT_IMPLEMENTED,
                    reason: "Not Implemented: only the chunked transfer coding is supported",
                });
            }
            chunked += 1;
        }
    }
    if chunked > 1 {
        return Err(bad("Bad Request: chunked applied more than once"));
    }
    Ok(())
}

/// Whether two `host[:port]` values name the same host and port (a port
/// left out is `default_port`), so the app's `SERVER_PORT` is not one
/// spelling's and the client's target another's.
fn same_host(a: &str, b: &str, default_port: &str) -> bool {
    let parts = |v| {
        let (n, port) = split_host(v);
        (
            n.strip_suffix('.').unwrap_or(n),
            port.filter(|p| !p.is_empty()).unwrap_or(default_port),
        )
    };
    let ((name_a, port_a), (name_b, port_b)) = (parts(a), parts(b));
    // An IPv6 literal has many spellings (`[0:0::1]`), as routing knows.
    let same_name = match (canonical_ipv6(name_a), canonical_ipv6(name_b)) {
        (Some(a), Some(b)) => a == b,
        _ => name_a.eq_ignore_ascii_case(name_b),
    };
    same_name && port_a == port_b
}

/// `Host = uri-host [ ":" port ]` (RFC 9110 §7.2), or empty when the
/// target has no authority.
fn valid_host(value: &[u8]) -> bool {
    if value.is_empty() {
        return true;
    }
    let (name, port) = match value.strip_prefix(b"[") {
        // `IP-literal` (RFC 3986 §3.2.2): the brackets hold an IPv6 address
        // or an IPvFuture, and only `:port` may follow them. `http` takes
        // anything after the `]` (`[::1]evil.com`), which routing and
        // SERVER_NAME would read as `[::1]` while HTTP_HOST says more.
        Some(rest) => {
            let Some(end) = rest.iter().position(|&b| b == b']') else {
                return false;
            };
            if !ip_literal(&rest[..end]) {
                return false;
            }
            match &rest[end + 1..] {
                [] => (&value[..0], None),
                [b':', port @ ..] => (&value[..0], Some(port)),
                _ => return false,
            }
        }
        None => match value.iter().rposition(|&b| b == b':') {
            Some(i) => (&value[..i], Some(&value[i + 1..])),
            None => (value, None),
        },
    };
    // A reg-name or IPv4 address (an empty one only beside a literal);
    // `Authority` also admits `userinfo@`, which Host does not.
    let name_ok = name.is_empty() && value[0] == b'['
        || !name.is_empty()
            && name
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b));
    // The port may be empty (`host:`), else a number that fits one.
    let port_ok = port.is_none_or(|p| {
        p.is_empty()
            || p.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(p).is_ok_and(|p| p.parse::<u16>().is_ok())
    });
    name_ok && port_ok && Authority::try_from(value).is_ok()
}

/// What RFC 3986 allows between an IP-literal's brackets: an IPv6
/// address, or `v` HEXDIG+ `.` then unreserved, sub-delims or `:`.
fn ip_literal(inner: &[u8]) -> bool {
    if let Some(future) = inner
        .strip_prefix(b"v")
        .or_else(|| inner.strip_prefix(b"V"))
    {
        let Some(dot) = future.iter().position(|&b| b == b'.') else {
            return false;
        };
        let (version, rest) = (&future[..dot], &future[dot + 1..]);
        return !version.is_empty()
            && version.iter().all(u8::is_ascii_hexdigit)
            && !rest.is_empty()
            && rest
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:".contains(&b));
    }
    std::str::from_utf8(inner).is_ok_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, target: &str, version: Version, hosts: &[&str]) -> Parts {
        let mut req = http::Request::builder()
            .method(method)
            .uri(target)
            .version(version);
        for h in hosts {
            req = req.header("host", *h);
        }
        req.body(()).unwrap().into_parts().0
    }

    fn verdict(
        method: &str,
        target: &str,
        version: Version,
        hosts: &[&str],
    ) -> Option<&'static str> {
        check(&head(method, target, version, hosts))
            .err()
            .map(|e| e.reason)
    }

    #[test]
    fn host_is_required_once_on_http11() {
        assert!(verdict("GET", "/", Version::HTTP_11, &[])
            .unwrap()
            .contains("requires a Host"));
        assert_eq!(verdict("GET", "/", Version::HTTP_10, &[]), None);
        assert_eq!(
            verdict("GET", "/", Version::HTTP_11, &["a.example:8080"]),
            None
        );
        assert_eq!(verdict("GET", "/", Version::HTTP_11, &[""]), None);
        // HTTP/2: `:authority` (the target's authority) or `Host`.
        assert!(verdict("GET", "/", Version::HTTP_2, &[])
            .unwrap()
            .contains(":authority"));
        assert_eq!(verdict("GET", "/", Version::HTTP_2, &["a"]), None);
        assert_eq!(verdict("GET", "http://a/", Version::HTTP_2, &[]), None);
        assert!(verdict("GET", "/", Version::HTTP_10, &["a", "b"])
            .unwrap()
            .contains("more than one"));
        assert!(verdict("GET", "/", Version::HTTP_11, &["a", "a"])
            .unwrap()
            .contains("more than one"));
    }

    #[test]
    fn host_value_must_be_host_and_port() {
        assert_eq!(verdict("GET", "/", Version::HTTP_11, &["[::1]:80"]), None);
        // A reg-name may hold sub-delims (gunicorn's valid/002 sends this).
        assert_eq!(
            verdict("GET", "/", Version::HTTP_11, &["0.0.0.0=5000"]),
            None
        );
        assert_eq!(verdict("GET", "/", Version::HTTP_11, &["x:"]), None);
        for bad in [
            "user@host",
            "a b",
            "host:port",
            "a/b",
            "x:999999999999",
            "x:65536",
            // Only `:port` may follow an IP literal, which must be one.
            "[::1]evil.com",
            "[::1]x:81",
            "[::1]:80x",
            "[abc]",
            "[]",
            "[::1",
            "[::1]]",
            "a[::1]",
            "[v1]",
            "[1.2.3.4]",
        ] {
            assert!(
                verdict("GET", "/", Version::HTTP_11, &[bad]).is_some(),
                "{bad:?} accepted"
            );
            // The same for an absolute target's authority (and HTTP/2's
            // `:authority`, which becomes it), where it parses as one.
            let uri = format!("http://{bad}/").parse::<http::Uri>();
            if let Some(uri) = uri.ok().filter(|u| u.authority().unwrap().as_str() == bad) {
                assert!(
                    verdict("GET", &uri.to_string(), Version::HTTP_2, &[]).is_some(),
                    "{bad:?} accepted as an authority"
                );
            }
        }
        for good in [
            "[::1]",
            "[2001:db8::1]:8080",
            "[v1.fe80::a+en1]",
            "[::ffff:1.2.3.4]:",
        ] {
            assert_eq!(
                verdict("GET", "/", Version::HTTP_11, &[good]),
                None,
                "{good:?} refused"
            );
        }
    }

    #[test]
    fn one_content_type_and_an_ascii_target() {
        let mut parts = head("POST", "/", Version::HTTP_11, &["x"]);
        parts
            .headers
            .append("content-type", "text/plain".parse().unwrap());
        assert_eq!(check(&parts), Ok(()));
        parts
            .headers
            .append("content-type", "text/html".parse().unwrap());
        assert!(check(&parts).unwrap_err().reason.contains("Content-Type"));
        assert!(verdict("GET", "/caf\u{e9}", Version::HTTP_11, &["x"]).is_some());
        assert!(verdict("GET", "/?q=\u{e9}", Version::HTTP_11, &["x"]).is_some());
        assert_eq!(
            verdict("GET", "/caf%C3%A9?q=%C3%A9", Version::HTTP_11, &["x"]),
            None
        );
    }

    #[test]
    fn a_method_in_lower_case_is_refused() {
        for method in ["post", "pOsT", "Get", "purge"] {
            let e = verdict(method, "/", Version::HTTP_11, &["x"]);
            assert!(
                e.is_some_and(|r| r.contains("upper case")),
                "{method}: {e:?}"
            );
        }
        for method in ["POST", "PURGE", "M-SEARCH", "PROPFIND"] {
            assert_eq!(
                verdict(method, "/", Version::HTTP_11, &["x"]),
                None,
                "{method}"
            );
        }
    }

    #[test]
    fn target_forms_follow_the_method() {
        assert_eq!(
            verdict(
                "CONNECT",
                "example.com:443",
                Version::HTTP_11,
                &["example.com:443"]
            ),
            None
        );
        assert!(verdict("GET", "example.com:443", Version::HTTP_11, &["x"]).is_some());
        assert!(verdict("CONNECT", "/", Version::HTTP_11, &["x"]).is_some());
        for portless in ["example.com", "example.com:0"] {
            let e = verdict("CONNECT", portless, Version::HTTP_11, &[portless]);
            assert!(e.is_some_and(|e| e.contains("host:port")), "{portless}");
        }
        assert_eq!(verdict("OPTIONS", "*", Version::HTTP_11, &["x"]), None);
        assert!(verdict("GET", "*", Version::HTTP_11, &["x"]).is_some());
        // A path that does not start with `/`, as HTTP/2's `:path` or an
        // origin-form target (an absolute one's may be empty).
        let h2 = |pq: &str| {
            let uri = http::Uri::builder()
                .scheme("https")
                .authority("x")
                .path_and_query(pq)
                .build()
                .unwrap();
            let mut parts = head("GET", "/", Version::HTTP_2, &[]);
            parts.uri = uri;
            check(&parts).err().map(|e| e.reason)
        };
        assert!(h2("?a=1").is_some_and(|e| e.contains("must start with /")));
        assert_eq!(h2("/?a=1"), None);
        if "?a=1".parse::<http::Uri>().is_ok() {
            assert!(verdict("GET", "?a=1", Version::HTTP_11, &["x"]).is_some());
        }
        assert_eq!(
            verdict("GET", "http://x?a=1", Version::HTTP_11, &["x"]),
            None
        );
        assert_eq!(
            verdict("GET", "http://x/a?b", Version::HTTP_11, &["x"]),
            None
        );
        assert_eq!(
            verdict("GET", "http://[::1]/p", Version::HTTP_11, &["[0:0::1]:80"]),
            None
        );
        assert_eq!(
            verdict(
                "GET",
                "https://X.example.:443/",
                Version::HTTP_11,
                &["x.example"]
            ),
            None
        );
        // HTTP/2: `Host` beside `:authority` is what routing uses.
        assert_eq!(
            verdict(
                "GET",
                "http://127.0.0.1:8000/",
                Version::HTTP_2,
                &["a.test"]
            ),
            None
        );
        assert_eq!(
            verdict("GET", "http://x:80/env", Version::HTTP_11, &["x"]),
            None
        );
        for (target, host) in [("http://x:99/env", "x"), ("http://x/env", "x:99")] {
            assert!(
                verdict("GET", target, Version::HTTP_11, &[host])
                    .is_some_and(|r| r.contains("differs")),
                "{target} {host}"
            );
        }
        // HTTP/2 pseudo-headers: the same rules as HTTP/1's target and Host.
        assert!(verdict("GET", "http://x:99999/", Version::HTTP_2, &[])
            .is_some_and(|r| r.contains("authority")));
        let mut asterisk = http::uri::Parts::default();
        asterisk.scheme = Some(http::uri::Scheme::HTTP);
        asterisk.authority = Some(Authority::from_static("x"));
        asterisk.path_and_query = Some(http::uri::PathAndQuery::from_static("*"));
        let mut h2 = head("GET", "/", Version::HTTP_2, &[]);
        h2.uri = http::Uri::from_parts(asterisk).unwrap();
        assert!(check(&h2).is_err_and(|e| e.reason.contains("asterisk")));
        h2.method = Method::OPTIONS;
        assert!(check(&h2).is_ok());
        for (target, why) in [
            ("http://evil.example:9/env", "differs"),
            ("ftp://x/", "scheme"),
            ("http://u:p@x/", "user information"),
        ] {
            assert!(
                verdict("GET", target, Version::HTTP_11, &["x"]).is_some_and(|r| r.contains(why)),
                "{target}"
            );
        }
    }

    #[test]
    fn chunked_is_the_only_transfer_coding_and_comes_once() {
        let with = |values: &[&str]| {
            let mut parts = head("POST", "/", Version::HTTP_11, &["x"]);
            for v in values {
                parts
                    .headers
                    .append("transfer-encoding", v.parse().unwrap());
            }
            check(&parts).err().map(|e| e.status.as_u16())
        };
        assert_eq!(with(&["chunked"]), None);
        assert_eq!(with(&["Chunked"]), None);
        assert_eq!(with(&["chunked, chunked"]), Some(400));
        assert_eq!(with(&["chunked", "chunked"]), Some(400));
        assert_eq!(with(&["gzip", "chunked"]), Some(501));
        assert_eq!(with(&["identity"]), Some(501));
    }
}
