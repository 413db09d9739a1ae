//! PEP 3333 and HTTP/1.1 conformance, black-box: the raw request corpus in
//! `tests/corpus/requests.txt` against the router app wrapped in
//! `wsgiref.validate.validator`, plus the framing and connection rules that
//! need more than one exchange; and gunicorn's own request-parser corpus
//! (`tests/gunicorn_corpus.py`) against the probe app, sent with the
//! client's side open and half-closed. docs/conformance.md maps rules to
//! tests.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

struct Case {
    name: String,
    expect: u16,
    request: Vec<u8>,
}

fn unescape(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next() {
            Some('r') => out.push(b'\r'),
            Some('n') => out.push(b'\n'),
            Some('t') => out.push(b'\t'),
            Some('0') => out.push(0),
            Some('\\') => out.push(b'\\'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                out.push(u8::from_str_radix(&hex, 16).unwrap());
            }
            other => panic!("bad escape \\{other:?} in corpus"),
        }
    }
    out
}

fn corpus() -> Vec<Case> {
    let text = std::fs::read_to_string(repo().join("tests/corpus/requests.txt")).unwrap();
    let mut cases = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(name) = line.strip_prefix("### ") else {
            continue;
        };
        let expect = lines
            .next()
            .and_then(|l| l.strip_prefix("### expect "))
            .unwrap_or_else(|| panic!("case {name:?} has no expect line"))
            .trim()
            .parse()
            .unwrap();
        let mut raw = String::new();
        while let Some(l) = lines.peek() {
            if l.is_empty() || l.starts_with("### ") {
                break;
            }
            let l = lines.next().unwrap();
            raw.push_str(l.strip_suffix('\\').unwrap_or(l));
        }
        while let Some(start) = raw.find("{LONG:") {
            let end = start + raw[start..].find('}').unwrap();
            let n: usize = raw[start + 6..end].parse().unwrap();
            raw.replace_range(start..=end, &"a".repeat(n));
        }
        cases.push(Case {
            name: name.to_owned(),
            expect,
            request: unescape(&raw),
        });
    }
    assert!(cases.len() > 20, "corpus parsed to {} cases", cases.len());
    cases
}

/// First final (non-1xx) status of a raw exchange.
fn final_status(resp: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(resp);
    text.split("\r\n")
        .filter(|l| l.starts_with("HTTP/1."))
        .filter_map(|l| l.split(' ').nth(1)?.parse::<u16>().ok())
        .find(|s| *s >= 200)
}

#[test]
fn request_corpus_matches_expected_statuses_with_no_validator_complaint() {
    let s = Server::start(&validated(), &["--header-timeout", "2s"]);
    let mut wrong = Vec::new();
    for case in corpus() {
        let resp = raw(s.addr, &case.request);
        let got = final_status(&resp);
        if got != Some(case.expect) {
            wrong.push(format!(
                "{}: expected {}, got {:?}: {:?}",
                case.name,
                case.expect,
                got,
                String::from_utf8_lossy(&resp[..resp.len().min(200)])
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The server still answers, and the validator never complained.
    assert_eq!(client().get(s.url("/")).send().unwrap().status(), 200);
    let logs = s.logs();
    assert!(!logs.contains("AssertionError"), "{logs}");
    assert!(!logs.contains("WSGIWarning"), "{logs}");
}

#[test]
fn pipelined_requests_answer_in_order() {
    let s = Server::start(&router(), &[]);
    let (mut w, mut r) = connect(s.addr);
    w.write_all(
        b"GET /path/one HTTP/1.1\r\nHost: x\r\n\r\n\
POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
GET /path/three HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let one = read_response(&mut r, false);
    assert!(String::from_utf8_lossy(&one.body).contains("/path/one"));
    assert_eq!(read_response(&mut r, false).body, b"abc");
    let three = read_response(&mut r, false);
    assert!(String::from_utf8_lossy(&three.body).contains("/path/three"));
}

#[test]
fn connection_close_is_honoured() {
    let s = Server::start(&router(), &[]);
    let (mut w, mut r) = connect(s.addr);
    w.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let resp = read_response(&mut r, false);
    assert_eq!(resp.header("connection"), Some(&b"close"[..]));
    let mut rest = Vec::new();
    assert_eq!(
        r.read_to_end(&mut rest).unwrap(),
        0,
        "server closed the connection"
    );
}

fn read_until(stream: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(needle.len()).any(|w| w == needle) {
        let n = stream.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "closed before {:?}: {:?}",
            String::from_utf8_lossy(needle),
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[test]
fn expect_100_continue_is_sent_when_the_app_reads() {
    let s = Server::start(&router(), &[]);
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let got = read_until(&mut c, b"\r\n\r\n");
    assert!(
        got.starts_with(b"HTTP/1.1 100 Continue\r\n"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    c.write_all(b"hello").unwrap();
    let got = read_until(&mut c, b"hello");
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));

    // An app that never reads the body: no 100 Continue, just the answer.
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert!(
        got.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn bodies_over_max_body_get_413() {
    let s = Server::start(&router(), &["--max-body", "1000"]);
    // Known length: refused before the app runs (and before 100 Continue).
    let resp = raw(
        s.addr,
        b"POST /length HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
    );
    assert!(
        resp.starts_with(b"HTTP/1.1 413 "),
        "{:?}",
        String::from_utf8_lossy(&resp)
    );
    // Chunked: refused when the limit is crossed. The rest is not read,
    // so the connection closes, and the response says so.
    let closes = |resp: &[u8]| {
        String::from_utf8_lossy(resp)
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n")
    };
    let req = chunked_post("/length", 4);
    let resp = raw(s.addr, &req);
    assert!(
        resp.starts_with(b"HTTP/1.1 413 ") && closes(&resp),
        "{:?}",
        String::from_utf8_lossy(&resp)
    );
    // Even when the app catches the refusal and answers for itself.
    let resp = raw(s.addr, &chunked_post("/swallow", 4));
    assert!(
        resp.starts_with(b"HTTP/1.1 413 ") && closes(&resp),
        "{:?}",
        String::from_utf8_lossy(&resp)
    );
    // A body that cannot be read (a bad chunk size after a good chunk) is
    // the client's fault however the app answers it: 400, not its 500.
    let resp = raw(
        s.addr,
        b"PUT /swallow HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nxx\r\n0\r\n\r\n",
    );
    assert!(
        resp.starts_with(b"HTTP/1.1 400 ") && closes(&resp),
        "{:?}",
        String::from_utf8_lossy(&resp)
    );
    // HTTP/2 without a declared length: refused when the limit is crossed.
    let h2 = reqwest::blocking::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let no_length = |n: usize| reqwest::blocking::Body::new(std::io::Cursor::new(vec![1u8; n]));
    let r = h2
        .post(s.url("/length"))
        .body(no_length(5000))
        .send()
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = h2
        .post(s.url("/length"))
        .body(no_length(999))
        .send()
        .unwrap();
    assert_eq!(r.text().unwrap(), "999");
    // Under the limit is fine.
    let r = client()
        .post(s.url("/length"))
        .body(vec![1u8; 1000])
        .send()
        .unwrap();
    assert_eq!(r.text().unwrap(), "1000");
}

#[test]
fn slow_client_is_disconnected_after_the_header_timeout() {
    let s = Server::start(&router(), &["--header-timeout", "1s"]);
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    // Closed by the server (not by our 30 s read timeout), with no response
    // to a request that never completed, or a 408 at most.
    assert!(t.elapsed() < Duration::from_secs(20));
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(client().get(s.url("/")).send().unwrap().status(), 200);
}

#[test]
fn the_app_s_own_modules_come_before_the_standard_library_s() {
    // As with `python app.py` and gunicorn: the router's `tabnanny.py`
    // and `secrets.py` (which the adapter imports ahead of the app), not
    // the standard library's modules of those names.
    let s = Server::start(&router(), &[]);
    let r = client().get(s.url("/shadow")).send().unwrap();
    assert_eq!(r.text().unwrap(), "the app's the app's");
}

#[test]
fn url_scheme_follows_trusted_proxy_headers_only() {
    let scheme = |s: &Server, header: (&str, &str)| -> String {
        let v: serde_json::Value = client()
            .get(s.url("/env"))
            .header(header.0, header.1)
            .send()
            .unwrap()
            .json()
            .unwrap();
        v["wsgi.url_scheme"].as_str().unwrap().to_owned()
    };
    let trusted = Server::start(&router(), &[]);
    assert_eq!(scheme(&trusted, ("X-Forwarded-Proto", "https")), "https");
    assert_eq!(
        scheme(&trusted, ("Forwarded", "for=1.2.3.4;proto=https")),
        "https"
    );
    assert_eq!(scheme(&trusted, ("X-Forwarded-Proto", "nonsense")), "http");
    // A proxy appends to what the client sent: the last value is the
    // trusted one, and a client's leading `https` changes nothing.
    assert_eq!(
        scheme(&trusted, ("X-Forwarded-Proto", "https, http")),
        "http"
    );
    assert_eq!(
        scheme(
            &trusted,
            ("Forwarded", "proto=https, for=1.2.3.4;proto=http")
        ),
        "http"
    );
    let untrusted = Server::start(&router(), &["--forwarded-allow-ips", "10.9.8.7"]);
    assert_eq!(scheme(&untrusted, ("X-Forwarded-Proto", "https")), "http");
    // A network, as a cluster's proxies are named by (127.0.0.1 is in it).
    let network = Server::start(&router(), &["--forwarded-allow-ips", "::1,127.0.0.0/8"]);
    assert_eq!(scheme(&network, ("X-Forwarded-Proto", "https")), "https");
    let other = Server::start(&router(), &["--forwarded-allow-ips", "10.0.0.0/8"]);
    assert_eq!(scheme(&other, ("X-Forwarded-Proto", "https")), "http");
}

#[test]
fn no_body_for_304_and_file_wrapper_paths() {
    let dir = temp_dir("sendfile");
    let data: Vec<u8> = (0..250_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("blob.bin"), &data).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("escape")).unwrap();
    let grant = format!("{}::/sync:ro", dir.display());
    let s = Server::start(&router(), &["--dir", &grant]);
    let (mut w, mut r) = connect(s.addr);
    w.write_all(b"GET /not-modified HTTP/1.1\r\nHost: x\r\n\r\nGET /file?blob.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut r, false).status, 304);
    let file = read_response(&mut r, false);
    // The host streamed the granted file itself: it knows (and sends) the
    // length, which the guest-side fallback does not.
    assert_eq!(
        file.header("content-length"),
        Some(data.len().to_string().as_bytes())
    );
    assert!(file.body == data);
    // A file-like object that is not a granted file still works.
    let r = client().get(s.url("/bytesio")).send().unwrap();
    assert_eq!(r.bytes().unwrap().len(), 1500);
    // A symlink out of the grant is refused by the sandbox.
    let r = client().get(s.url("/file?escape")).send().unwrap();
    assert_eq!(r.status(), 500);
    // A file shorter than the app's Content-Length: cut short, and logged
    // with the app's name, as every line about an app is.
    let (mut w, mut r) = connect(s.addr);
    w.write_all(b"GET /file?blob.bin,300000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = r.read_to_end(&mut got);
    let body_at = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    // What the file holds, or a part of it: the connection is closed on
    // the error, and hyper may drop what it had not flushed yet.
    let body = &got[body_at..];
    assert!(
        body.len() <= data.len() && data.starts_with(body),
        "{}",
        body.len()
    );
    s.wait_for_log("50000 bytes shorter than the app's Content-Length");
    let line = s
        .logs()
        .lines()
        .find(|l| l.contains("50000 bytes shorter"))
        .unwrap()
        .to_owned();
    assert!(line.contains("app=router"), "{line}");
}

#[test]
fn the_access_line_counts_the_body_bytes_actually_sent() {
    let dir = temp_dir("sendfile-partial");
    let size: u64 = 64 << 20;
    std::fs::write(dir.join("big.bin"), vec![7u8; size as usize]).unwrap();
    let grant = format!("{}::/sync:ro", dir.display());
    let s = Server::start(&router(), &["--dir", &grant]);
    let logged = |s: &Server| -> Vec<u64> {
        s.logs()
            .lines()
            .filter_map(|l| l.split("\"GET /file?big.bin\" 200 ").nth(1))
            .map(|rest| rest.split(' ').next().unwrap().parse().unwrap())
            .collect()
    };
    {
        // The client reads 100 KB of the 64 MiB and goes away.
        let (mut w, mut r) = connect(s.addr);
        w.write_all(b"GET /file?big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = vec![0u8; 100_000];
        r.read_exact(&mut buf).unwrap();
    }
    s.wait_for_log("\"GET /file?big.bin\" 200 ");
    let sent = logged(&s);
    // At most what the socket buffers took, not the Content-Length.
    assert!(sent.len() == 1 && sent[0] < size / 2, "{sent:?}");
    // A response read to the end logs its whole length.
    let body = client()
        .get(s.url("/file?big.bin"))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(body.len() as u64, size);
    s.wait_for_log_count("\"GET /file?big.bin\" 200 ", 2);
    assert_eq!(logged(&s)[1], size);
}

/// `python3 tests/gunicorn_corpus.py ARGS` from the repository root:
/// (success, stdout + stderr).
fn corpus_runner(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("python3")
        .current_dir(repo())
        .arg("tests/gunicorn_corpus.py")
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn gunicorn_request_corpus_passes_open_and_half_closed() {
    // The corpus comes from gunicorn's sdist on PyPI, cached under target/.
    let dest = work_dir().join("gunicorn-corpus");
    let (ok, fetched) = corpus_runner(&["--fetch", dest.to_str().unwrap()]);
    assert!(ok, "fetching gunicorn's corpus failed:\n{fetched}");
    let corpus = fetched.lines().last().unwrap().trim().to_owned();
    // Short timeouts so incomplete requests are closed well before the
    // runner's own wait.
    let s = Server::start(&probe(), &["--header-timeout", "2s", "--timeout", "4s"]);
    let addr = s.addr.to_string();
    let (ok, report) = corpus_runner(&[
        "--corpus",
        &corpus,
        "--addr",
        &addr,
        "--server",
        "rsgi-wasm",
        "--timeout",
        "8",
    ]);
    println!("{report}");
    assert!(ok, "{report}\n--- server log ---\n{}", s.logs());
    // Each mode reports every non-skipped case as expected.
    assert_eq!(report.matches(" 0 failed,").count(), 2, "{report}");
    // The server is still fine afterwards.
    assert_eq!(client().get(s.url("/x")).send().unwrap().status(), 200);
}

#[test]
fn half_closed_client_gets_the_whole_response() {
    let s = Server::start(&router(), &[]);
    // 8 MiB streamed: far more than socket buffers hold, so the response is
    // still being written long after the client's FIN arrived.
    let n = 8 << 20;
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    c.write_all(format!("GET /big?{n} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(got.len() - head_end, n, "whole body after a half-close");
    // HTTP/1.0 style: request, half-close, read to EOF.
    let resp = {
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c.write_all(b"POST /echo HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        got
    };
    assert!(
        resp.ends_with(b"\r\n\r\nhello"),
        "{:?}",
        String::from_utf8_lossy(&resp)
    );
}

#[test]
fn a_client_that_goes_away_frees_its_instance() {
    // One instance: the next request can only be answered once the first
    // one's instance is back, however the client left.
    let s = Server::start(&router(), &["--workers", "1"]);
    for _ in 0..3 {
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.write_all(b"GET /big?1000000000 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut first = [0u8; 4096];
        c.read_exact(&mut first).unwrap();
        drop(c); // fully closed mid-body
        let r = client().get(s.url("/")).send().unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[test]
fn connect_gets_a_definite_answer() {
    let s = Server::start(&router(), &[]);
    // The router app says 200 to CONNECT, but it cannot tunnel: the client
    // gets the status, no body framing, and the connection closes.
    let resp = raw(
        s.addr,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("content-length"),
        "{text}"
    );
    // The app saw the authority as the target (the access line is written
    // once the exchange ends, which may be after the client read it).
    s.wait_for_log("\"CONNECT example.com:443\" 200");
    // CONNECT needs host:port; other methods may not use it.
    let resp = raw(s.addr, b"CONNECT / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&resp), 400);
    for portless in ["example.com", "example.com:0"] {
        let req = format!("CONNECT {portless} HTTP/1.1\r\nHost: {portless}\r\n\r\n");
        assert_eq!(status_of(&raw(s.addr, req.as_bytes())), 400, "{portless}");
    }
    let resp = raw(s.addr, b"GET example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&resp), 400);
}

#[test]
fn pbkdf2_and_thread_pools_work_without_openssl_or_threads() {
    // hashlib's PBKDF2 (Django's password hasher) is filled in, and a
    // ThreadPoolExecutor runs its tasks in the caller: WhiteNoise's
    // compressing `collectstatic` failed at "can't start new thread".
    let router = router();
    let script = "import hashlib, threading, concurrent.futures as cf\n\
                  print(hashlib.pbkdf2_hmac('sha256', b'password', b'salt', 4096).hex())\n\
                  with cf.ThreadPoolExecutor(4) as ex:\n    \
                  print(list(ex.map(lambda x: x * x, range(5))), threading.active_count())\n";
    let (code, out, err) = run_bin(&["exec", router.to_str().unwrap(), "--", "-c", script]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a\n[0, 1, 4, 9, 16] 1\n"
    );
}
