//! Pure function: HTTP request parts → the CGI part of a WSGI environ.
//!
//! PEP 3333 "native strings" are latin-1: every byte of the request becomes
//! one character U+0000..U+00FF, so nothing is dropped or blanked because it
//! is not UTF-8, and the app can re-decode (e.g. `PATH_INFO` as UTF-8) the
//! way it would under gunicorn. The guest adds the remaining `wsgi.*` keys.

use std::net::SocketAddr;

use http::{HeaderMap, Method, Uri, Version};
use percent_encoding::percent_decode;

use crate::latin1;
use crate::protocol::FIXED_KEYS;

/// What the host knows about one request besides its headers.
pub struct RequestInfo<'a> {
    /// Request method.
    pub method: &'a Method,
    /// Request target as received (origin or absolute form).
    pub uri: &'a Uri,
    /// Its path percent-decoded ([`decoded_path`]), as routing matched it.
    pub path: &'a str,
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
    /// Request isolation: the instance serves this one request only.
    pub run_once: bool,
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
/// (gunicorn's and nginx's convention), then gunicorn's other two
/// (`X-Forwarded-Protocol: ssl`, `X-Forwarded-Ssl: on`: https, any other
/// value http), then the `proto` of `Forwarded` (RFC 7239); the first
/// present decides. Only `http` and `https` are accepted. The last value
/// counts: a proxy appends its own to what the client sent (a list, or a header
/// line after the client's), and only the peer is trusted, so an earlier
/// value may be the client's (Werkzeug's ProxyFix reads it the same way).
pub fn forwarded_scheme(headers: &HeaderMap) -> Option<&'static str> {
    let pick = |v: &str| match v.trim().trim_matches('"').to_ascii_lowercase().as_str() {
        "https" => Some("https"),
        "http" => Some("http"),
        _ => None,
    };
    let last = |name| {
        let line = headers.get_all(name).iter().next_back()?.to_str().ok()?;
        line.rsplit(',').next()
    };
    if headers.contains_key("x-forwarded-proto") {
        return pick(last("x-forwarded-proto")?);
    }
    for (name, secure) in [("x-forwarded-protocol", "ssl"), ("x-forwarded-ssl", "on")] {
        if headers.contains_key(name) {
            let on = last(name)?.trim().eq_ignore_ascii_case(secure);
            return Some(if on { "https" } else { "http" });
        }
    }
    last(http::header::FORWARDED.as_str())?
        .split(';')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("proto"))
        .and_then(|(_, v)| pick(v))
}

/// The request target as the client sent it: the path and query, the
/// `host:port` of a CONNECT, or the whole absolute URI a proxy-style
/// client sends. HTTP/2 sends scheme and authority as pseudo-headers,
/// which hyper puts in the URI: its target is the path and query, or the
/// authority of a CONNECT (which has no path), as over HTTP/1.1.
pub fn raw_target(uri: &Uri, version: Version) -> std::borrow::Cow<'_, str> {
    if version == Version::HTTP_2 {
        let target = uri.path_and_query().map(|pq| pq.as_str());
        let target = target.or_else(|| uri.authority().map(|a| a.as_str()));
        return target.unwrap_or("/").into();
    }
    match (uri.scheme(), uri.authority(), uri.path_and_query()) {
        (None, _, Some(pq)) => pq.as_str().into(),
        (None, Some(authority), None) => authority.as_str().into(),
        (Some(_), _, _) => uri.to_string().into(),
        (None, None, None) => "/".into(),
    }
}

/// The environ as it crosses the boundary (see `handle` in `wit/wsgi.wit`):
/// keys and values packed into one string each, `separator` between items;
/// `keys` names only the values after the [`FIXED_KEYS`] ones.
#[derive(Debug)]
pub struct Environ {
    /// NUL, or U+0100 when a value contains NUL (then `wide` is set).
    pub separator: char,
    /// `key SEP key SEP ...`: the request's headers (`HTTP_*`,
    /// `CONTENT_TYPE`, `CONTENT_LENGTH`) and `wsgi.run_once` if set.
    pub keys: String,
    /// `value SEP value SEP ...`: the [`FIXED_KEYS`] values, then one per
    /// name in `keys`.
    pub values: String,
}

/// The usual separator: NUL keeps both strings latin-1 for the guest.
pub const SEP: char = '\0';
/// The separator when a value contains NUL: above latin-1, so it never
/// occurs in a WSGI native string.
pub const WIDE_SEP: char = '\u{100}';

impl Environ {
    /// The key/value pairs (the guest splits them itself).
    #[cfg(test)]
    fn pairs(&self) -> Vec<(&str, &str)> {
        let sent = self
            .keys
            .split(self.separator)
            .filter(|_| !self.keys.is_empty());
        FIXED_KEYS
            .into_iter()
            .chain(sent)
            .zip(self.values.split(self.separator))
            .collect()
    }
}

/// Writes keys and values straight into the two packed strings, so no
/// per-key `String` is allocated on the request path.
struct Packer {
    sep: char,
    keys: String,
    values: String,
    /// Values written so far (the first ones are the fixed keys').
    count: usize,
    /// A value contained `sep` (only possible with NUL): pack again wide.
    clash: bool,
}

impl Packer {
    fn new(sep: char, headers: usize) -> Self {
        Packer {
            sep,
            keys: String::with_capacity(256 + 16 * headers),
            values: String::with_capacity(256 + 32 * headers),
            count: 0,
            clash: false,
        }
    }

    /// Start the next value, for `key`.
    fn key(&mut self, key: &str) {
        if self.count > 0 {
            self.values.push(self.sep);
        }
        self.count += 1;
        if let Some(fixed) = FIXED_KEYS.get(self.count - 1) {
            debug_assert_eq!(key, *fixed, "fixed keys go first, in order");
            return;
        }
        if !self.keys.is_empty() {
            self.keys.push(self.sep);
        }
        self.keys.push_str(key);
    }

    /// Append to the current value (latin-1 text).
    fn text(&mut self, text: &str) {
        self.clash |= text.contains(self.sep);
        self.values.push_str(text);
    }

    /// Append bytes to the current value, one char per byte (latin-1).
    fn bytes(&mut self, bytes: &[u8]) {
        if bytes.is_ascii() {
            // ASCII is the same in UTF-8: no per-char mapping.
            self.text(std::str::from_utf8(bytes).expect("ASCII is UTF-8"));
        } else {
            for &b in bytes {
                self.clash |= char::from(b) == self.sep;
                self.values.push(char::from(b));
            }
        }
    }

    fn pair(&mut self, key: &str, value: &str) {
        self.key(key);
        self.text(value);
    }

    /// A value that is an address or a number (never contains NUL).
    fn display(&mut self, key: &str, value: impl std::fmt::Display) {
        use std::fmt::Write;
        self.key(key);
        write!(self.values, "{value}").expect("writing to a String");
    }
}

/// Build the CGI/WSGI keys for one request (RFC 3875 section 4.1, PEP 3333),
/// packed for the guest.
pub fn build(req: &RequestInfo<'_>) -> Environ {
    let env = build_with(req, SEP);
    if env.clash {
        // A NUL in a value (a percent-decoded `%00` in the path) would
        // split it in two: pack with the wide separator instead.
        let wide = build_with(req, WIDE_SEP);
        debug_assert!(!wide.clash);
        return Environ {
            separator: WIDE_SEP,
            keys: wide.keys,
            values: wide.values,
        };
    }
    Environ {
        separator: SEP,
        keys: env.keys,
        values: env.values,
    }
}

/// A request path percent-decoded, as a native string (latin-1): what
/// `PATH_INFO` holds, and what routes are matched against, so no encoding
/// of a path reaches another app than the one mounted there.
pub fn decoded_path(raw: &str) -> std::borrow::Cow<'_, str> {
    if raw.contains('%') || !raw.is_ascii() {
        latin1::decode(&percent_decode(raw.as_bytes()).collect::<Vec<u8>>()).into()
    } else {
        // Nothing to decode: the raw path is already the native string.
        raw.into()
    }
}

/// Where raw request path `raw` goes on after `prefix` (percent-decoded
/// bytes), comparing `raw` as routes and `PATH_INFO` see it, decoded: a
/// static mount owns `/stat%69c/a.css` as it owns `/static/a.css`, or the
/// app would be handed paths the operator gave to the host. `None` if
/// `raw` is not under `prefix`.
pub fn after_prefix<'p>(raw: &'p str, prefix: &[u8]) -> Option<&'p str> {
    let b = raw.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut i = 0;
    for &want in prefix {
        // A malformed escape stays literal, as in `environ::decoded_path`.
        let escaped = match b.get(i..i + 3) {
            Some([b'%', h, l]) => hex(*h).zip(hex(*l)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        let (got, width) = match escaped {
            Some(byte) => (byte, 3),
            None => (*b.get(i)?, 1),
        };
        if got != want {
            return None;
        }
        i += width;
    }
    raw.get(i..)
}

fn build_with(req: &RequestInfo<'_>, sep: char) -> Packer {
    let mut env = Packer::new(sep, req.headers.keys_len());

    env.pair("REQUEST_METHOD", req.method.as_str());
    env.pair("SCRIPT_NAME", req.script_name);
    // PATH_INFO is the decoded path below the mount point (RFC 3875 4.1.5);
    // the raw target stays available as RAW_URI/REQUEST_URI (gunicorn, uWSGI).
    env.key("PATH_INFO");
    let path_info = match req.path.strip_prefix(req.script_name) {
        Some(rest) if !req.script_name.is_empty() => rest,
        _ => req.path,
    };
    env.text(path_info);
    // QUERY_STRING stays raw (RFC 3875 4.1.7): the app decodes it.
    env.pair("QUERY_STRING", req.uri.query().unwrap_or(""));
    let raw_uri = raw_target(req.uri, req.version);
    env.pair("RAW_URI", &raw_uri);
    env.pair("REQUEST_URI", &raw_uri);
    env.pair(
        "SERVER_PROTOCOL",
        match req.version {
            Version::HTTP_10 => "HTTP/1.0",
            // `HTTP/2.0`, as Apache gives CGI and mod_wsgi: CGI's grammar
            // is HTTP/DIGIT.DIGIT (RFC 3875 §4.1.16), which CherryPy indexes.
            Version::HTTP_2 => "HTTP/2.0",
            _ => "HTTP/1.1",
        },
    );

    // HTTP/2 names the host in `:authority`, which apps expect as HTTP_HOST;
    // so does an HTTP/1.0 absolute target without a Host (`GET http://a/x`),
    // which routing reads too: the app must see the name it was routed by.
    // (An HTTP/1.1 one without Host was refused, and with one, they agree.)
    let authority = (!req.headers.contains_key(http::header::HOST))
        .then(|| req.uri.authority())
        .flatten();
    let host_header = req
        .headers
        .get(http::header::HOST)
        .map(|v| latin1::decode(v.as_bytes()))
        .or_else(|| authority.map(|a| a.as_str().to_owned()));
    match host_header.as_deref().map(split_host) {
        Some((name, port)) if !name.is_empty() => {
            env.pair("SERVER_NAME", name);
            // A Host without a port means its scheme's default (RFC 9110
            // §7.2): `wsgi.url_scheme`'s, not a scheme the client claims in
            // an absolute target or HTTP/2's `:scheme` (which does not
            // change `wsgi.url_scheme` either), so the two never disagree
            // (`https` on port 80 in a rebuilt URL).
            let default = if req.url_scheme == "https" {
                "443"
            } else {
                "80"
            };
            // `Host: x:` has an empty port, which means the default.
            env.pair(
                "SERVER_PORT",
                port.filter(|p| !p.is_empty()).unwrap_or(default),
            );
        }
        _ => {
            // As a Host would name it: an IPv6 address in brackets, so a
            // URL rebuilt from it (wsgiref's request_uri) is one.
            match req.local.ip() {
                std::net::IpAddr::V6(ip) => env.pair("SERVER_NAME", &format!("[{ip}]")),
                ip => env.display("SERVER_NAME", ip),
            }
            env.display("SERVER_PORT", req.local.port());
        }
    }
    env.display("REMOTE_ADDR", req.peer.ip());
    env.display("REMOTE_PORT", req.peer.port());
    env.pair("wsgi.url_scheme", req.url_scheme);
    if req.run_once {
        env.pair("wsgi.run_once", "1");
    }

    let mut key = String::with_capacity(64);
    for name in req.headers.keys() {
        let name = name.as_str(); // hyper gives lower-case names
                                  // A `_` in a name could collide with the `-` form after mapping to
                                  // HTTP_*: drop it (request-smuggling defence of gunicorn and nginx).
        if name.contains('_') {
            continue;
        }
        match name {
            "content-type" => env.key("CONTENT_TYPE"),
            "content-length" => env.key("CONTENT_LENGTH"),
            _ => {
                key.clear();
                key.push_str("HTTP_");
                key.extend(name.chars().map(|c| {
                    if c == '-' {
                        '_'
                    } else {
                        c.to_ascii_uppercase()
                    }
                }));
                env.key(&key);
            }
        }
        let mut values = req.headers.get_all(name).iter();
        if let Some(first) = values.next() {
            env.bytes(trim_ows(first.as_bytes()));
        }
        if name == "content-length" {
            // hyper already rejected conflicting lengths; duplicates agree.
            continue;
        }
        // RFC 9110 5.3: repeated fields join with ", "; Cookie uses "; "
        // (RFC 6265 5.4), which is what cookie parsers expect.
        let sep = if name == "cookie" { "; " } else { ", " };
        for v in values {
            env.text(sep);
            env.bytes(trim_ows(v.as_bytes()));
        }
    }
    if let Some(a) = authority {
        env.key("HTTP_HOST");
        env.text(a.as_str());
    }
    env
}

/// A field value without the whitespace around it, which is not part of it
/// (RFC 9110 §5.5): HTTP/1's parser drops it, HTTP/2 passes it through.
fn trim_ows(value: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !ows(b)).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
    &value[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn prefixes_match_the_decoded_path() {
        let p = b"/static/";
        assert_eq!(after_prefix("/static/a.css", p), Some("a.css"));
        assert_eq!(after_prefix("/stat%69c/%2e%2e/x", p), Some("%2e%2e/x"));
        assert_eq!(after_prefix("/static%2Fa.css", p), Some("a.css"));
        assert_eq!(after_prefix("/static", p), None);
        assert_eq!(after_prefix("/statix/a", p), None);
        // A malformed escape is literal, never half of a match.
        assert_eq!(after_prefix("/%zz/", b"/%zz/"), Some(""));
        assert_eq!(after_prefix("/%7", b"/s"), None);
    }

    fn env_for(
        method: &str,
        target: &str,
        headers: &[(&str, &[u8])],
        script: &str,
    ) -> Vec<(String, String)> {
        env_with_sep(method, target, headers, script).1
    }

    fn env_with_sep(
        method: &str,
        target: &str,
        headers: &[(&str, &[u8])],
        script: &str,
    ) -> (char, Vec<(String, String)>) {
        let uri: Uri = target.parse().unwrap();
        let method: Method = method.parse().unwrap();
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        let env = build(&RequestInfo {
            method: &method,
            uri: &uri,
            path: &decoded_path(uri.path()),
            version: Version::HTTP_11,
            headers: &map,
            local: "127.0.0.1:8000".parse().unwrap(),
            peer: "127.0.0.1:50000".parse().unwrap(),
            script_name: script,
            url_scheme: "http",
            run_once: false,
        });
        let pairs = env
            .pairs()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        (env.separator, pairs)
    }

    fn get<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
        env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn whitespace_around_header_values_is_dropped() {
        assert_eq!(trim_ows(b" \t1 2\t "), b"1 2");
        assert_eq!(trim_ows(b"   "), b"");
        assert_eq!(trim_ows(b"x"), b"x");
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
    fn only_header_keys_are_sent_by_name() {
        let uri: Uri = "/x".parse().unwrap();
        let none = HeaderMap::new();
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("h"));
        let info = |headers, run_once| RequestInfo {
            method: &Method::GET,
            uri: &uri,
            path: "/x",
            version: Version::HTTP_10,
            headers,
            local: "127.0.0.1:8000".parse().unwrap(),
            peer: "127.0.0.1:50000".parse().unwrap(),
            script_name: "",
            url_scheme: "http",
            run_once,
        };
        let bare = build(&info(&none, false));
        assert_eq!(bare.keys, "");
        assert_eq!(bare.pairs().len(), FIXED_KEYS.len());
        let env = build(&info(&headers, true));
        assert_eq!(env.keys, "wsgi.run_once\0HTTP_HOST");
        assert_eq!(env.values.split('\0').count(), FIXED_KEYS.len() + 2);
        assert_eq!(env.pairs().last(), Some(&("HTTP_HOST", "h")));
    }

    #[test]
    fn an_http_1_0_absolute_target_without_host_names_the_server() {
        let uri: Uri = "http://a.test:8080/x".parse().unwrap();
        let none = HeaderMap::new();
        let env = build(&RequestInfo {
            method: &Method::GET,
            uri: &uri,
            path: "/x",
            version: Version::HTTP_10,
            headers: &none,
            local: "127.0.0.1:8000".parse().unwrap(),
            peer: "127.0.0.1:50000".parse().unwrap(),
            script_name: "",
            url_scheme: "http",
            run_once: false,
        });
        let pairs = env.pairs();
        let get = |k: &str| pairs.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        assert_eq!(get("SERVER_NAME"), Some("a.test"));
        assert_eq!(get("SERVER_PORT"), Some("8080"));
        assert_eq!(get("HTTP_HOST"), Some("a.test:8080"));
    }

    #[test]
    fn a_nul_in_the_path_switches_to_the_wide_separator() {
        let (sep, env) = env_with_sep("GET", "/a%00b", &[("x-y", b"caf\xe9")], "");
        assert_eq!(sep, WIDE_SEP);
        assert_eq!(get(&env, "PATH_INFO"), Some("/a\u{0}b"));
        assert_eq!(get(&env, "HTTP_X_Y"), Some("caf\u{e9}"));
        assert_eq!(get(&env, "QUERY_STRING"), Some(""));
        let (sep, env) = env_with_sep("GET", "/plain?q", &[], "");
        assert_eq!(sep, SEP);
        assert_eq!(get(&env, "PATH_INFO"), Some("/plain"));
        assert_eq!(get(&env, "QUERY_STRING"), Some("q"));
    }

    #[test]
    fn malformed_escapes_are_kept() {
        assert_eq!(percent_decode(b"/a%zz%4").collect::<Vec<u8>>(), b"/a%zz%4");
        assert_eq!(percent_decode(b"%41%").collect::<Vec<u8>>(), b"A%");
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
        let env = env_for("GET", "/", &[("host", b"example.com:")], "");
        assert_eq!(get(&env, "SERVER_PORT"), Some("80"));
        // Over a cleartext connection a claimed `https` is not the scheme.
        let env = env_for(
            "GET",
            "https://example.com/",
            &[("host", b"example.com")],
            "",
        );
        assert_eq!(get(&env, "wsgi.url_scheme"), Some("http"));
        assert_eq!(get(&env, "SERVER_PORT"), Some("80"));
        let env = env_for("GET", "/", &[], "");
        assert_eq!(get(&env, "SERVER_NAME"), Some("127.0.0.1"));
        assert_eq!(get(&env, "SERVER_PORT"), Some("8000"));
    }

    #[test]
    fn an_http2_connect_s_target_is_its_authority() {
        let connect = Uri::from_static("example.com:443");
        assert_eq!(raw_target(&connect, Version::HTTP_2), "example.com:443");
        assert_eq!(raw_target(&connect, Version::HTTP_11), "example.com:443");
        let get = Uri::from_static("https://example.com/p?q=1");
        assert_eq!(raw_target(&get, Version::HTTP_2), "/p?q=1");
    }

    #[test]
    fn forwarded_scheme_headers() {
        for (name, value, scheme) in [
            ("x-forwarded-ssl", "on", "https"),
            ("x-forwarded-ssl", "off", "http"),
            ("x-forwarded-protocol", "ssl", "https"),
            ("x-forwarded-protocol", "tls", "http"),
        ] {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static(value));
            // Under a Forwarded that says otherwise: gunicorn reads only these.
            h.insert("forwarded", HeaderValue::from_static("proto=ftp"));
            assert_eq!(forwarded_scheme(&h), Some(scheme), "{name}: {value}");
        }
        let mut h = HeaderMap::new();
        assert_eq!(forwarded_scheme(&h), None);
        h.insert(
            "forwarded",
            HeaderValue::from_static("for=1.2.3.4;proto=http, for=5.6.7.8;proto=https"),
        );
        assert_eq!(forwarded_scheme(&h), Some("https"));
        // What the client sent first, the proxy's value last: the proxy's.
        h.insert(
            "forwarded",
            HeaderValue::from_static("proto=https, for=5.6.7.8;proto=http"),
        );
        assert_eq!(forwarded_scheme(&h), Some("http"));
        h.append("forwarded", HeaderValue::from_static("proto=https"));
        assert_eq!(forwarded_scheme(&h), Some("https"));
        // The proxy's element without a proto: none (not the client's).
        h.append(
            "forwarded",
            HeaderValue::from_static("proto=https, for=1.2.3.4"),
        );
        assert_eq!(forwarded_scheme(&h), None);
        h.insert("x-forwarded-proto", HeaderValue::from_static("https, http"));
        assert_eq!(forwarded_scheme(&h), Some("http"));
        h.append("x-forwarded-proto", HeaderValue::from_static("https"));
        assert_eq!(forwarded_scheme(&h), Some("https"));
        h.append("x-forwarded-proto", HeaderValue::from_static("http"));
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
