//! Pure function: HTTP request parts → the CGI part of a WSGI environ.
//!
//! PEP 3333 "native strings" are latin-1: every byte of the request becomes
//! one character U+0000..U+00FF, so nothing is dropped or blanked because it
//! is not UTF-8, and the app can re-decode (e.g. `PATH_INFO` as UTF-8) the
//! way it would under gunicorn. The guest adds the remaining `wsgi.*` keys.

use std::net::SocketAddr;

use http::{HeaderMap, Method, Uri, Version};

/// What the host knows about one request besides its headers.
pub struct RequestInfo<'a> {
    /// Request method.
    pub method: &'a Method,
    /// Request target as received (origin or absolute form).
    pub uri: &'a Uri,
    /// HTTP version of the request.
    pub version: Version,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The server socket the request arrived on.
    pub local: SocketAddr,
    /// The client socket.
    pub peer: SocketAddr,
    /// Mount point of the app (`""` at the root); removed from `PATH_INFO`.
    pub script_name: &'a str,
    /// `http` or `https` (after trusted proxy headers were applied).
    pub url_scheme: &'a str,
}

/// Bytes → native string: each byte one char (ISO-8859-1).
pub fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

/// Percent-decode a path (RFC 3986 section 2.1); malformed escapes stay as
/// they are, like gunicorn and waitress do.
pub fn percent_decode(input: &[u8]) -> Vec<u8> {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' && i + 2 < input.len() {
            if let (Some(h), Some(l)) = (hex(input[i + 1]), hex(input[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

/// Split a `Host` header value into name and port (`[v6]:port` aware).
pub fn split_host(host: &str) -> (&str, Option<&str>) {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            let port = rest[end + 1..].strip_prefix(':');
            return (&host[..end + 2], port);
        }
        return (host, None);
    }
    match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    }
}

/// The scheme a trusted proxy says the client used: `X-Forwarded-Proto`
/// (gunicorn's and nginx's convention) or the `proto` of the first
/// `Forwarded` element (RFC 7239). Only `http` and `https` are accepted.
pub fn forwarded_scheme(headers: &HeaderMap) -> Option<&'static str> {
    let pick = |v: &str| match v.trim().trim_matches('"').to_ascii_lowercase().as_str() {
        "https" => Some("https"),
        "http" => Some("http"),
        _ => None,
    };
    if let Some(v) = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
    {
        return pick(v.split(',').next().unwrap_or(""));
    }
    let v = headers.get(http::header::FORWARDED)?.to_str().ok()?;
    let first = v.split(',').next()?;
    first
        .split(';')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("proto"))
        .and_then(|(_, v)| pick(v))
}

/// Build the CGI/WSGI keys for one request (RFC 3875 section 4.1, PEP 3333).
pub fn build(req: &RequestInfo<'_>) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::with_capacity(16 + req.headers.keys_len());
    let mut push = |k: &str, v: String| env.push((k.to_owned(), v));

    push("REQUEST_METHOD", req.method.as_str().to_owned());
    push("SCRIPT_NAME", req.script_name.to_owned());
    // PATH_INFO is the decoded path below the mount point (RFC 3875 4.1.5);
    // the raw target stays available as RAW_URI/REQUEST_URI (gunicorn, uWSGI).
    let raw_path = req.uri.path();
    let decoded = latin1(&percent_decode(raw_path.as_bytes()));
    let path_info = decoded
        .strip_prefix(req.script_name)
        .filter(|_| !req.script_name.is_empty())
        .map(str::to_owned)
        .unwrap_or(decoded);
    push("PATH_INFO", path_info);
    // QUERY_STRING stays raw (RFC 3875 4.1.7): the app decodes it.
    push("QUERY_STRING", req.uri.query().unwrap_or("").to_owned());
    let raw_uri = req
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/")
        .to_owned();
    push("RAW_URI", raw_uri.clone());
    push("REQUEST_URI", raw_uri);
    push(
        "SERVER_PROTOCOL",
        match req.version {
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_2 => "HTTP/2",
            _ => "HTTP/1.1",
        }
        .to_owned(),
    );

    let host_header = req
        .headers
        .get(http::header::HOST)
        .map(|v| latin1(v.as_bytes()));
    let (server_name, server_port) = match host_header.as_deref().map(split_host) {
        Some((name, port)) if !name.is_empty() => (
            name.to_owned(),
            port.map(str::to_owned).unwrap_or_else(|| {
                if req.url_scheme == "https" {
                    "443"
                } else {
                    "80"
                }
                .to_owned()
            }),
        ),
        _ => (req.local.ip().to_string(), req.local.port().to_string()),
    };
    push("SERVER_NAME", server_name);
    push("SERVER_PORT", server_port);
    push("REMOTE_ADDR", req.peer.ip().to_string());
    push("REMOTE_PORT", req.peer.port().to_string());
    push("wsgi.url_scheme", req.url_scheme.to_owned());

    for name in req.headers.keys() {
        let name = name.as_str(); // hyper gives lower-case names
                                  // A `_` in a name could collide with the `-` form after mapping to
                                  // HTTP_*: drop it (request-smuggling defence of gunicorn and nginx).
        if name.contains('_') {
            continue;
        }
        let key = match name {
            "content-type" => "CONTENT_TYPE".to_owned(),
            "content-length" => "CONTENT_LENGTH".to_owned(),
            _ => {
                let mut k = String::with_capacity(5 + name.len());
                k.push_str("HTTP_");
                k.extend(name.chars().map(|c| {
                    if c == '-' {
                        '_'
                    } else {
                        c.to_ascii_uppercase()
                    }
                }));
                k
            }
        };
        let mut values = req.headers.get_all(name).iter();
        let mut value = values
            .next()
            .map(|v| latin1(v.as_bytes()))
            .unwrap_or_default();
        if name == "content-length" {
            // hyper already rejected conflicting lengths; duplicates agree.
            env.push((key, value));
            continue;
        }
        // RFC 9110 5.3: repeated fields join with ", "; Cookie uses "; "
        // (RFC 6265 5.4), which is what cookie parsers expect.
        let sep = if name == "cookie" { "; " } else { ", " };
        for v in values {
            value.push_str(sep);
            value.push_str(&latin1(v.as_bytes()));
        }
        env.push((key, value));
    }
    env
}

/// Separates keys and values in the packed environ (see `wit/wsgi.wit`):
/// above latin-1, so it never occurs in a WSGI native string.
pub const SEP: char = '\u{100}';

/// Pack `env` into the one string the guest's `handle` takes.
pub fn pack(env: &[(String, String)]) -> String {
    let len: usize = env.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
    let mut out = String::with_capacity(len);
    for (i, (k, v)) in env.iter().enumerate() {
        if i > 0 {
            out.push(SEP);
        }
        out.push_str(k);
        out.push(SEP);
        // Values are latin-1 by construction; a stray SEP would shift every
        // later key, so it could only ever be replaced, never sent.
        if v.contains(SEP) {
            out.push_str(&v.replace(SEP, "?"));
        } else {
            out.push_str(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_round_trips() {
        let env = vec![
            ("PATH_INFO".to_owned(), "/caf\u{e9}\u{0}".to_owned()),
            ("QUERY_STRING".to_owned(), String::new()),
            ("HTTP_X".to_owned(), "a\u{100}b".to_owned()),
        ];
        let packed = pack(&env);
        let parts: Vec<&str> = packed.split(SEP).collect();
        assert_eq!(
            parts,
            [
                "PATH_INFO",
                "/caf\u{e9}\u{0}",
                "QUERY_STRING",
                "",
                "HTTP_X",
                "a?b"
            ]
        );
        assert_eq!(pack(&[]), "");
    }
    use http::HeaderValue;

    fn env_for(
        method: &str,
        target: &str,
        headers: &[(&str, &[u8])],
        script: &str,
    ) -> Vec<(String, String)> {
        let uri: Uri = target.parse().unwrap();
        let method: Method = method.parse().unwrap();
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        build(&RequestInfo {
            method: &method,
            uri: &uri,
            version: Version::HTTP_11,
            headers: &map,
            local: "127.0.0.1:8000".parse().unwrap(),
            peer: "127.0.0.1:50000".parse().unwrap(),
            script_name: script,
            url_scheme: "http",
        })
    }

    fn get<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
        env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn path_is_percent_decoded_to_latin1_and_query_stays_raw() {
        let env = env_for("GET", "/caf%C3%A9/a%2Fb?x=%C3%A9&y", &[], "");
        // UTF-8 bytes C3 A9 become the two latin-1 chars U+00C3 U+00A9.
        assert_eq!(get(&env, "PATH_INFO"), Some("/caf\u{c3}\u{a9}/a/b"));
        assert_eq!(get(&env, "QUERY_STRING"), Some("x=%C3%A9&y"));
        assert_eq!(get(&env, "RAW_URI"), Some("/caf%C3%A9/a%2Fb?x=%C3%A9&y"));
    }

    #[test]
    fn malformed_escapes_are_kept() {
        assert_eq!(percent_decode(b"/a%zz%4"), b"/a%zz%4".to_vec());
        assert_eq!(percent_decode(b"%41%"), b"A%".to_vec());
    }

    #[test]
    fn content_headers_are_not_http_prefixed_and_absent_when_missing() {
        let env = env_for("GET", "/", &[], "");
        assert_eq!(get(&env, "CONTENT_TYPE"), None);
        assert_eq!(get(&env, "CONTENT_LENGTH"), None);
        let env = env_for(
            "POST",
            "/",
            &[("content-type", b"text/plain"), ("content-length", b"3")],
            "",
        );
        assert_eq!(get(&env, "CONTENT_TYPE"), Some("text/plain"));
        assert_eq!(get(&env, "CONTENT_LENGTH"), Some("3"));
        assert_eq!(get(&env, "HTTP_CONTENT_TYPE"), None);
    }

    #[test]
    fn repeated_headers_join_and_cookie_uses_semicolon() {
        let env = env_for(
            "GET",
            "/",
            &[
                ("accept", b"a"),
                ("accept", b"b"),
                ("cookie", b"x=1"),
                ("cookie", b"y=2"),
            ],
            "",
        );
        assert_eq!(get(&env, "HTTP_ACCEPT"), Some("a, b"));
        assert_eq!(get(&env, "HTTP_COOKIE"), Some("x=1; y=2"));
    }

    #[test]
    fn underscore_headers_are_dropped_and_non_utf8_values_kept() {
        let env = env_for(
            "GET",
            "/",
            &[("x-real_ip", b"evil"), ("x-name", b"caf\xe9")],
            "",
        );
        assert_eq!(get(&env, "HTTP_X_REAL_IP"), None);
        assert_eq!(get(&env, "HTTP_X_NAME"), Some("caf\u{e9}"));
    }

    #[test]
    fn server_name_and_port_come_from_host() {
        let env = env_for("GET", "/", &[("host", b"example.com:8080")], "");
        assert_eq!(get(&env, "SERVER_NAME"), Some("example.com"));
        assert_eq!(get(&env, "SERVER_PORT"), Some("8080"));
        let env = env_for("GET", "/", &[("host", b"[::1]:9")], "");
        assert_eq!(get(&env, "SERVER_NAME"), Some("[::1]"));
        assert_eq!(get(&env, "SERVER_PORT"), Some("9"));
        let env = env_for("GET", "/", &[("host", b"example.com")], "");
        assert_eq!(get(&env, "SERVER_PORT"), Some("80"));
        let env = env_for("GET", "/", &[], "");
        assert_eq!(get(&env, "SERVER_NAME"), Some("127.0.0.1"));
        assert_eq!(get(&env, "SERVER_PORT"), Some("8000"));
    }

    #[test]
    fn forwarded_scheme_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(forwarded_scheme(&h), None);
        h.insert(
            "forwarded",
            HeaderValue::from_static("for=1.2.3.4;proto=https, for=5.6.7.8"),
        );
        assert_eq!(forwarded_scheme(&h), Some("https"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("http, https"));
        assert_eq!(forwarded_scheme(&h), Some("http"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("gopher"));
        assert_eq!(forwarded_scheme(&h), None);
    }

    #[test]
    fn script_name_is_removed_from_path_info() {
        let env = env_for("GET", "/api/users", &[], "/api");
        assert_eq!(get(&env, "SCRIPT_NAME"), Some("/api"));
        assert_eq!(get(&env, "PATH_INFO"), Some("/users"));
    }
}
