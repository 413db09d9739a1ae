//! Components built with `--world wasi-http` (`wasi:http/incoming-handler`),
//! served through wasmtime-wasi-http, the implementation `wasmtime serve`
//! uses: the router app's protocol routes, 200 MiB each way in capped
//! guest memory, errors, `write()`, `close()`, HEAD and encoded paths. The
//! Flask and Django examples run under this world in `tests/examples.rs`.

mod common;

use std::sync::OnceLock;

use common::*;

/// tests/apps/router, exporting wasi:http instead of our own world.
fn router_http() -> std::path::PathBuf {
    static P: OnceLock<std::path::PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        build(
            "router-http",
            &[
                "app:application",
                "-p",
                "tests/apps/router",
                "--world",
                "wasi-http",
            ],
        )
    })
    .clone()
}

#[test]
fn the_environ_follows_pep_3333() {
    let s = Server::start(&router_http(), &[]);
    assert_eq!(get(&s, "/"), (200, "router\n".into()));
    let env: serde_json::Value = client()
        .get(s.url("/env?a=1&b=%20"))
        .header("Cookie", "a=1")
        .header("X-Multi", "one")
        .header("X-Multi", "two")
        .header("Content-Type", "text/x-test")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let port = s.addr.port().to_string();
    for (key, want) in [
        ("REQUEST_METHOD", "GET"),
        ("SCRIPT_NAME", ""),
        ("PATH_INFO", "/env"),
        ("QUERY_STRING", "a=1&b=%20"),
        ("RAW_URI", "/env?a=1&b=%20"),
        ("SERVER_NAME", "127.0.0.1"),
        ("SERVER_PORT", port.as_str()),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("HTTP_COOKIE", "a=1"),
        ("HTTP_X_MULTI", "one, two"),
        ("CONTENT_TYPE", "text/x-test"),
        ("wsgi.url_scheme", "http"),
    ] {
        assert_eq!(env[key], want, "{key} in {env}");
    }
    assert_eq!(env["HTTP_HOST"], format!("127.0.0.1:{port}"));
    assert_eq!(env["wsgi.run_once"], false);
    assert_eq!(env["wsgi.input.present"], true);
    assert_eq!(env["wsgi.file_wrapper.present"], true);

    // A percent-encoded UTF-8 path arrives as a latin-1 native string,
    // which the app decodes back to UTF-8 (as under gunicorn).
    let v: serde_json::Value =
        serde_json::from_str(&get(&s, "/path/caf%C3%A9%20%E2%82%AC?q=%C3%A9").1).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"path": "/path/café €", "query": "q=%C3%A9"})
    );
}

#[test]
fn bodies_errors_write_and_close() {
    let s = Server::start(&router_http(), &[]);
    // The request body streams through wsgi.input (chunked: no length).
    assert_echoes(&s, (0..300_000u32).map(|i| (i % 253) as u8).collect());
    let lines: serde_json::Value = client()
        .post(s.url("/lines"))
        .body("abcdefg\nsecond\nthird\nfourth")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(lines["first"], "abcd");
    assert_eq!(lines["remaining"], serde_json::json!(["third\n", "fourth"]));
    assert_eq!(
        lines["float_size"],
        "TypeError: argument should be integer or None, not 'float'"
    );

    // write() before the iterable, in order.
    assert_eq!(
        get(&s, "/write"),
        (200, "via write(); then iterable".into())
    );
    // close() is called: the next request sees the count go up.
    let closed = |s: &Server| get_json(s, "/counters")["closed"].as_u64().unwrap();
    let before = closed(&s);
    assert_eq!(get(&s, "/close"), (200, "closing".into()));
    assert_eq!(closed(&s), before + 1);

    // An exception before the head: 500, traceback in the log, instance kept.
    assert_eq!(get(&s, "/error").0, 500);
    s.wait_for_log("RuntimeError: boom from the router app");
    // After the head: the client sees a cut-short body, not a clean end.
    let r = client().get(s.url("/error-after-head")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.bytes().is_err(),
        "a truncated body must not look complete"
    );
    s.wait_for_log("late boom");
    // Said in the log, as in our own world.
    s.wait_for_log("response cut short: app raised after the response head was sent");
    // Invalid headers are refused by the guest: 500, nothing injected.
    let r = client().get(s.url("/bad-header")).send().unwrap();
    assert_eq!(r.status(), 500);
    assert!(r.headers().get("set-cookie").is_none());
    // One wasi:http refuses (a control character) is named in the report.
    assert_eq!(get(&s, "/bad-header?ctl").0, 500);
    s.wait_for_log("response header 'X-Ctl' has an invalid value 'a\\x01b'");
    assert_content_lengths_are_checked(&s);
    assert_bodies_keep_their_content_length(&s);
    // wasi:http carries the status code; the reason phrase is the host's.
    assert_eq!(get(&s, "/custom-reason"), (418, "teapot".into()));
    assert_eq!(get(&s, "/empty"), (204, String::new()));
    assert_eq!(get(&s, "/"), (200, "router\n".into()));
    assert_no_crash(&s);
}

#[test]
fn head_answers_the_headers_only() {
    let s = Server::start(&router_http(), &[]);
    let resp = raw(
        s.addr,
        b"HEAD /big?1000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&resp);
    assert_eq!(status_of(&resp), 200, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("content-length: 1000"),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\n"), "no body after a HEAD: {text}");
    // The connection's next request still works, and the instance that
    // served the HEAD (whose body nobody reads) ended cleanly.
    assert_eq!(get(&s, "/"), (200, "router\n".into()));
    assert_no_crash(&s);
}

/// No instance trapped (a cleanup path that raised would abort it).
fn assert_no_crash(s: &Server) {
    let logs = s.logs();
    assert!(!logs.contains("crashed"), "{logs}");
}

#[test]
fn an_http_1_0_request_without_host_is_served() {
    // wasi:http needs an authority; the server's address stands in, as
    // it does for SERVER_NAME under our own world.
    let s = Server::start(&router_http(), &[]);
    let resp = raw(s.addr, b"GET /env HTTP/1.0\r\n\r\n");
    let text = String::from_utf8_lossy(&resp);
    assert_eq!(status_of(&resp), 200, "{text}");
    assert!(text.contains("\"SERVER_NAME\": \"127.0.0.1\""), "{text}");
    assert_no_crash(&s);
}

#[test]
fn a_body_over_max_body_is_413() {
    let s = Server::start(&router_http(), &["--max-body", "1000"]);
    // Declared: refused by the host before the app runs.
    let resp = raw(
        s.addr,
        b"POST /length HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n",
    );
    assert_eq!(status_of(&resp), 413, "{}", String::from_utf8_lossy(&resp));
    // Chunked: the guest's read fails with the host's body-size error,
    // which the adapter turns into the same 413.
    let req = chunked_post("/length", 4);
    let resp = raw(s.addr, &req);
    assert_eq!(status_of(&resp), 413, "{}", String::from_utf8_lossy(&resp));
    // Under the limit is fine.
    let r = client()
        .post(s.url("/length"))
        .body(vec![1u8; 1000])
        .send()
        .unwrap();
    assert_eq!(r.text().unwrap(), "1000");
    assert_no_crash(&s);
}

#[test]
fn large_transfers_stream_with_bounded_memory() {
    assert_large_transfers_stream(&router_http());
}

#[test]
fn file_wrapper_is_read_through_the_guest() {
    // No host-side file sending under wasi:http: the adapter iterates the
    // file in the guest, and the bytes still arrive whole.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
    assert_file_wrapper_sends_a_granted_file(&router_http(), &data);
}

#[test]
fn a_timeout_ends_only_that_instance() {
    let s = Server::start(&router_http(), &["--timeout", "1s"]);
    assert_eq!(get(&s, "/sleep?30").0, 504);
    assert_eq!(get(&s, "/"), (200, "router\n".into()));
}

#[test]
fn the_component_imports_only_wasi_0_2() {
    use wasmparser::{Parser, Payload};
    let bytes = std::fs::read(router_http()).unwrap();
    let (mut depth, mut imports, mut exports) = (0, Vec::new(), Vec::new());
    for payload in Parser::new(0).parse_all(&bytes) {
        match payload.unwrap() {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth -= 1,
            Payload::ComponentImportSection(r) if depth == 0 => {
                imports.extend(r.into_iter().map(|i| i.unwrap().name.0.to_owned()))
            }
            Payload::ComponentExportSection(r) if depth == 0 => {
                exports.extend(r.into_iter().map(|e| e.unwrap().name.0.to_owned()))
            }
            _ => {}
        }
    }
    // What any wasi:http host provides, and nothing of rsgi-wasm's own.
    assert!(!imports.is_empty());
    for name in &imports {
        assert!(
            name.starts_with("wasi:") && name.contains("@0.2."),
            "unexpected import {name} in {imports:?}"
        );
    }
    // The handler, plus the plain-named instance componentize-py adds.
    let interfaces: Vec<&String> = exports.iter().filter(|e| e.contains(':')).collect();
    assert_eq!(
        interfaces,
        ["wasi:http/incoming-handler@0.2.0"],
        "{exports:?}"
    );
}

#[test]
fn wasi_http_outgoing_requests_are_refused() {
    // The network is granted by --allow-net only; a host-side HTTP client
    // would bypass it.
    let s = Server::start(&router_http(), &[]);
    assert_eq!(
        get(&s, "/wasi-outgoing"),
        (200, "refused: ErrorCode_HttpRequestDenied".into())
    );
}

#[test]
fn unpack_writes_the_files_and_prints_the_flags() {
    let c = router_http().display().to_string();
    let dir = temp_dir("unpack").join("files");
    let out_dir = dir.display().to_string();
    let (code, out, err) = run_bin(&["unpack", &c, &out_dir]);
    assert_eq!(code, 0, "{err}");
    assert!(dir.join("1/app.py").is_file());
    assert!(dir.join("python/os.py").is_file());
    let flags = format!("--dir {out_dir}/1::/1");
    assert!(
        out.contains("wasmtime serve -Scli") && out.contains(&flags),
        "{out}"
    );
    assert!(out.contains("destination = \"/python\""), "{out}");
    // Other hosts grant directories writable: the app's code and the
    // stdlib must not be changeable by the host's (non-root) user.
    use std::os::unix::fs::PermissionsExt;
    for sub in ["1", "python", "python/json"] {
        let mode = std::fs::metadata(dir.join(sub))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o555, "{sub}");
    }
    let mode = std::fs::metadata(dir.join("1/app.py"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o222, 0, "app.py");
    // Never into a directory that holds something already.
    let (code, _, err) = run_bin(&["unpack", &c, &out_dir]);
    assert_ne!(code, 0);
    assert!(err.contains("is not empty"), "{err}");
    let (code, _, err) = run_bin(&["unpack", "README.md", &out_dir]);
    assert_ne!(code, 0);
    assert!(err.contains("is not a WebAssembly file"), "{err}");
    // rsgi-wasm's own world runs nowhere else: no commands for it, no files.
    let own = temp_dir("unpack-own").join("files");
    let (code, _, err) = run_bin(&[
        "unpack",
        &router().display().to_string(),
        &own.display().to_string(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("build it with --world wasi-http"), "{err}");
    assert!(!own.exists());
}

#[test]
fn exec_needs_the_wsgi_world() {
    let c = router_http();
    let (code, _, err) = run_bin(&["exec", &c.display().to_string(), "--", "app.py"]);
    assert_ne!(code, 0);
    assert!(err.contains("built with --world wasi-http"), "{err}");
}

#[test]
fn a_component_replaced_by_a_build_of_the_other_world_is_refused_until_a_reload() {
    let dir = temp_dir("world-swap");
    let file = dir.join("app.wasm");
    std::fs::copy(hello(), &file).unwrap();
    let config = dir.join("tenants.toml");
    std::fs::write(
        &config,
        format!(
            "[[app]]\nname = \"w\"\ncomponent = \"{}\"\n",
            file.display()
        ),
    )
    .unwrap();
    let s = Server::start_with(&["serve", &config.display().to_string()]);
    // Checked as `wsgi` at start, replaced before its first request.
    std::fs::copy(router_http(), &file).unwrap();
    assert_eq!(get(&s, "/").0, 503);
    s.wait_for_log("was replaced by a build for --world wasi-http");
    assert!(!s.logs().contains("panicked"), "{}", s.logs());
    // A reload checks the file again, and serves it.
    s.signal("HUP");
    s.wait_for_log("reloaded: 1 app");
    assert_eq!(get(&s, "/"), (200, "router\n".into()));
}

#[test]
fn response_headers_over_the_wasi_http_limit_are_a_500_not_a_crash() {
    let s = Server::start(&router_http(), &[]);
    assert_eq!(get(&s, "/many-headers?50").0, 200);
    assert_eq!(get(&s, "/many-headers?2000").0, 500);
    s.wait_for_log("too large for wasi:http");
    assert_eq!(get(&s, "/"), (200, "router\n".into()));
    assert_no_crash(&s);
}

#[test]
fn a_stalled_or_malformed_body_is_the_clients_fault() {
    let s = Server::start(
        &router_http(),
        &["--header-timeout", "1s", "--timeout", "300s"],
    );
    // Two bytes of a thousand, then nothing: 408 at the header timeout.
    let resp = raw(
        s.addr,
        b"POST /length HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nab",
    );
    assert_eq!(status_of(&resp), 408, "{}", String::from_utf8_lossy(&resp));
    s.wait_for_log("nothing from the client for 1s");
    let logs = s.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("nothing from the client"))
        .expect("logged");
    assert!(
        line.contains(" app=") && !line.contains(" app=\""),
        "the line names the app as the pool's lines do: {line}"
    );
    // A chunk size that is not hex: 400, not the app's 500.
    let resp = raw(
        s.addr,
        b"POST /length HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nab\r\n0\r\n\r\n",
    );
    assert_eq!(status_of(&resp), 400, "{}", String::from_utf8_lossy(&resp));
    assert_eq!(get(&s, "/"), (200, "router\n".into()));
    assert_no_crash(&s);
}

#[test]
fn an_unread_request_body_does_not_cost_the_connection() {
    let s = Server::start(&router_http(), &[]);
    assert_unread_bodies_keep_the_connection(s.addr);
    let s = Server::start(&router_http(), &["--header-timeout", "1s"]);
    assert_a_trickled_unread_body_ends_the_connection(s.addr);
}

#[test]
fn the_app_sees_the_host_it_was_routed_by_on_http2() {
    let s = Server::start(&router_http(), &[]);
    let h2 = h2_client();
    // `:authority` is the URL's 127.0.0.1:PORT; routing goes by `Host`.
    let env: serde_json::Value = h2
        .get(s.url("/env"))
        .header("Host", "other.test:8080")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(env["HTTP_HOST"], "other.test:8080", "{env}");
    assert_eq!(env["SERVER_NAME"], "other.test", "{env}");
    assert_eq!(env["SERVER_PORT"], "8080", "{env}");
}

#[test]
fn bodiless_answers_of_a_wasi_http_guest_carry_no_body_on_either_protocol() {
    let s = Server::start(&router_http(), &[]);
    for c in [client(), h2_client()] {
        for code in [204, 304] {
            let r = c.get(s.url(&format!("/status?{code}"))).send().unwrap();
            assert_eq!(r.status().as_u16(), code);
            assert!(r.headers().get("content-length").is_none(), "{r:?}");
            assert_eq!(r.bytes().unwrap().len(), 0);
        }
        let r = c.head(s.url("/")).send().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().unwrap().len(), 0);
        // Not a final status: 500, and the connection goes on.
        assert_eq!(c.get(s.url("/status?103")).send().unwrap().status(), 500);
        // wasi:http has no reason phrase: a code hyper cannot name gets
        // none, not `<none>`.
        let status_line = raw(
            s.addr,
            b"GET /status?299 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert!(
            status_line.starts_with(b"HTTP/1.1 299 \r\n"),
            "{}",
            String::from_utf8_lossy(&status_line)
        );
        assert_eq!(get(&s, "/"), (200, "router\n".into()));
    }
}

/// wasi:http has no mount point: below a `path_prefix` the guest gets the
/// path after it, and the prefix in `X-Forwarded-Prefix` (the client's
/// own replaced), as a proxy that strips a prefix passes them.
#[test]
fn below_a_path_prefix_the_guest_gets_the_rest_of_the_path() {
    let dir = temp_dir("wasi-http-prefix");
    let config = dir.join("tenants.toml");
    std::fs::write(
        &config,
        format!(
            "[[app]]\nname = \"b\"\ncomponent = \"{}\"\npath_prefix = \"/b\"\n",
            router_http().display()
        ),
    )
    .unwrap();
    let s = Server::start_with(&["serve", &config.display().to_string()]);
    for (path, path_info) in [("/b/env", "/env"), ("/%62/env?x=1", "/env")] {
        let env: serde_json::Value = client()
            .get(s.url(path))
            .header("X-Forwarded-Prefix", "/spoofed")
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(env["PATH_INFO"], path_info, "{path}: {env}");
        assert_eq!(env["HTTP_X_FORWARDED_PREFIX"], "/b", "{path}: {env}");
    }
    assert_eq!(get(&s, "/b"), (200, "router\n".into()));
}
