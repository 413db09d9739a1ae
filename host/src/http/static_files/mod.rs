//! `--static URL_PREFIX=HOST_DIR`: answer GET and HEAD for files under a
//! host directory from the host itself, without entering the guest, with
//! validators, conditional requests and single byte ranges.
//!
//! Each lookup opens the mount's directory through cap-std from its path
//! and resolves the file relative to that handle, so `..`, absolute paths
//! and symlinks that lead outside are refused by the resolver itself, not
//! only by the string checks here. Opening by path at each request (one
//! `openat`) is what lets a deploy swap the directory (a `current` symlink
//! moved to the next release, a directory renamed and made anew) and be
//! served at once, as nginx does; a handle kept from the start would serve
//! the old tree, then nothing once it is deleted. Responses are `Response<body::ResponseBody>`, the server's own body
//! type; file bytes stream through `body::stream_file` like the
//! `wsgi.file_wrapper` fast path.
//!
//! This module holds the mount table and the order of the steps; `path`
//! decodes, `lookup` finds, `conditional` judges validators and ranges,
//! `response` builds what is sent.

mod conditional;
mod lookup;
mod path;
mod response;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use cap_std::fs::Dir;
use http::{Method, Response, StatusCode};

use self::lookup::{lookup, Found, Place};
use self::path::{decode_path, decode_prefix, PathError, Target};
use self::response::{file_response, forbidden, not_found, redirect_to_slash, unavailable};
use crate::runtime::body::{host_page, ResponseBody};
use crate::runtime::environ::after_prefix;
use crate::runtime::WarnEvery;

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
#[error("--static {value:?}: {reason}")]
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
        reason: format!("{reason} (expected URL_PREFIX=HOST_DIR, e.g. /static/=./public)"),
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
    // Compared with the request path decoded, as routes are; other
    // characters are written %XX.
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
    // such a prefix would never match, or match surprisingly. Checked as
    // requests are matched, decoded: `%2e%2e` is `..` and `%2f` a `/`.
    let Some(decoded) = decode_prefix(&prefix) else {
        return Err(err(
            "the URL prefix has a `%` not followed by two hex digits",
        ));
    };
    if decoded
        .iter()
        .any(|&b| matches!(b, 0 | b'\\' | b'?' | b'#'))
    {
        return Err(err(
            "the URL prefix must be a plain URL path: no NUL, `?`, `#` or `\\`, written plainly or as %XX",
        ));
    }
    if decoded != b"/"
        && decoded[1..decoded.len() - 1]
            .split(|&b| b == b'/')
            .any(|s| s.is_empty() || s == b"." || s == b"..")
    {
        return Err(err(
            "the URL prefix must not contain `//`, `.` or `..` segments, written plainly or as %XX",
        ));
    }
    let dir = PathBuf::from(dir);
    match std::fs::metadata(&dir) {
        // A directory the server may not search would answer every request
        // with 403: refuse it now, as a missing one is.
        Ok(m) if m.is_dir() => {
            if let Err(e) = rustix::fs::access(&dir, rustix::fs::Access::EXEC_OK) {
                // The syntax was right: no hint about it.
                return Err(StaticMountError {
                    value: value.to_owned(),
                    reason: format!(
                        "the server's user may not enter the host directory ({}): make it readable and searchable (chmod a+rx)",
                        std::io::Error::from(e)
                    ),
                });
            }
        }
        Ok(_) => return Err(err("the host directory is not a directory")),
        // A tenants file's paths arrive resolved against its directory.
        Err(e) if dir.is_relative() => {
            return Err(err(&format!(
                "the host directory cannot be used ({e}); relative paths are from the current directory"
            )))
        }
        Err(e) => return Err(err(&format!("the host directory cannot be used ({e})"))),
    }
    Ok(StaticMount { prefix, dir })
}

/// The `--static` mounts, each directory checked at start and opened by
/// its path at every lookup.
#[derive(Debug)]
pub struct StaticFiles {
    /// Longest prefix first, so the most specific mount wins.
    mounts: Vec<Mounted>,
}

/// A mount with its prefix decoded.
#[derive(Debug)]
struct Mounted {
    /// The mount as given, sent to the blocking pool for lookups.
    place: Arc<Place>,
    /// `place.mount.prefix` percent-decoded, as request paths are compared.
    prefix: Vec<u8>,
}

impl StaticFiles {
    /// Check every mount's directory opens; a prefix given twice is an error.
    pub fn new(mounts: Vec<StaticMount>) -> anyhow::Result<Self> {
        let mut out: Vec<Mounted> = Vec::with_capacity(mounts.len());
        for m in mounts {
            let prefix = decode_prefix(&m.prefix).with_context(|| {
                format!(
                    "--static {}: a `%` not followed by two hex digits",
                    m.prefix
                )
            })?;
            if out.iter().any(|o| o.prefix == prefix) {
                anyhow::bail!("--static {}: this URL prefix is given twice", m.prefix);
            }
            Dir::open_ambient_dir(&m.dir, cap_std::ambient_authority()).with_context(|| {
                format!(
                    "--static {}={}: opening the directory",
                    m.prefix,
                    m.dir.display()
                )
            })?;
            out.push(Mounted {
                place: Arc::new(Place {
                    mount: m,
                    warned: WarnEvery::default(),
                }),
                prefix,
            });
        }
        if let Some(root) = out.iter().find(|m| m.prefix == b"/") {
            tracing::warn!(
                "--static {}={}: every path is the mount's, so the app gets no request \
                 (mount the files under a prefix such as /static/)",
                root.place.mount.prefix,
                root.place.mount.dir.display()
            );
        }
        out.sort_by_key(|m| std::cmp::Reverse(m.prefix.len()));
        Ok(StaticFiles { mounts: out })
    }

    /// The mount that owns raw request path `path` (`uri.path()`),
    /// compared decoded (`environ::after_prefix`), if any. The prefix without its
    /// trailing slash (`/static`) belongs to the mount too: it is
    /// redirected to `/static/`.
    #[cfg(test)]
    fn matches(&self, path: &str) -> Option<&StaticMount> {
        self.find(path).map(|(place, _)| &place.mount)
    }

    /// The mount, and the rest of the path after its prefix (`None` for
    /// the prefix without its trailing slash).
    fn find<'s, 'p>(&'s self, path: &'p str) -> Option<(&'s Arc<Place>, Option<&'p str>)> {
        self.mounts.iter().find_map(move |m| {
            let bare = &m.prefix[..m.prefix.len() - 1];
            if let Some(rest) = after_prefix(path, &m.prefix) {
                Some((&m.place, Some(rest)))
            } else if !bare.is_empty() && after_prefix(path, bare) == Some("") {
                Some((&m.place, None))
            } else {
                None
            }
        })
    }

    /// The response for `req` if its path belongs to a mount (see
    /// [`matches`](Self::matches)); `None` means "not ours, route it to an
    /// app". The request body is never read; a client that takes none of
    /// the file for `stall` is given up on.
    pub async fn serve(
        &self,
        req: &http::request::Parts,
        stall: Duration,
    ) -> Option<Response<ResponseBody>> {
        let path = req.uri.path();
        let (place, rest) = self.find(path)?;
        if req.method != Method::GET && req.method != Method::HEAD {
            return Some(host_page(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method Not Allowed",
            ));
        }
        let target = match rest {
            Some(rest) => match decode_path(rest) {
                Ok(t) => t,
                Err(PathError::BadEscape) => {
                    return Some(host_page(
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
        let place = place.clone();
        // open/stat are blocking syscalls (slow on network filesystems);
        // keep them off the reactor threads.
        let found = match tokio::task::spawn_blocking(move || lookup(&place, target)).await {
            Ok(found) => found,
            Err(e) => {
                tracing::error!("static file lookup failed: {e}");
                return Some(host_page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal Server Error",
                ));
            }
        };
        Some(match found {
            Found::Missing => not_found(),
            Found::Forbidden => forbidden(),
            Found::NoDescriptors => unavailable(),
            Found::Directory => redirect_to_slash(req),
            Found::File {
                file,
                size,
                modified,
                rel,
            } => file_response(req, file, size, modified, &rel, stall),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::response::CACHE_CONTROL;
    use super::*;
    use http_body_util::BodyExt;

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
            (format!("/a/%2e%2E/b={d}"), "`..`"),
            (format!("/s%2f/={d}"), "`//`"),
            (format!("/s%2F%2Fx={d}"), "`//`"),
            (format!("/s%00={d}"), "plain URL path"),
            (format!("/s%5c={d}"), "plain URL path"),
            (format!("/s%zz={d}"), "two hex digits"),
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
        // Compared decoded, as routes and PATH_INFO are.
        assert_eq!(hit("/%73/x.css"), Some("/s/"));
        assert_eq!(hit("/s%2Fdeep/x"), Some("/s/deep/"));
        assert_eq!(hit("/%73"), Some("/s/"));
        assert_eq!(hit("/%7"), None);
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
            async move { sf.serve(&req, Duration::from_secs(5)).await }
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

        // Dates an HTTP date cannot say (before 1970: archives, `touch -d
        // @-1`): served, without Last-Modified.
        let old = std::fs::File::options()
            .write(true)
            .open(root.join("hello.txt"))
            .unwrap();
        old.set_modified(std::time::UNIX_EPOCH - Duration::from_secs(1))
            .unwrap();
        let res = serve(Method::GET, "/static/hello.txt", &[]).await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(!res.headers().contains_key("last-modified"));
        assert_eq!(body(res).await, b"hello, world");
    }
}
