//! Every example in `examples/`, built with the command its README gives
//! and exercised route by route over real HTTP, asserting on content.

mod common;

use common::*;
use reqwest::blocking::Response;
use std::io::{Read as _, Write as _};

fn text(r: Response) -> (u16, String) {
    let status = r.status().as_u16();
    (status, r.text().unwrap())
}

fn header(r: &Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// The value of cookie `name` among a response's Set-Cookie headers.
fn cookie(r: &Response, name: &str) -> Option<String> {
    r.headers().get_all("set-cookie").iter().find_map(|v| {
        let v = v.to_str().ok()?;
        let (pair, _) = v.split_once(';').unwrap_or((v, ""));
        let (k, val) = pair.split_once('=')?;
        (k.trim() == name).then(|| val.to_owned())
    })
}

/// The hidden CSRF token in a Django form.
fn csrf_token(html: &str) -> String {
    let at = html
        .find("name=\"csrfmiddlewaretoken\" value=\"")
        .expect("a CSRF token in the form");
    let rest = &html[at + "name=\"csrfmiddlewaretoken\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(data))
}

/// The index template and `/hello/<name>` that the Flask and Bottle
/// examples both have.
/// `len` bytes of a repeating pattern.
fn test_file(len: u32) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// POST `file` to `/upload` as the multipart field `file` (`data.bin`).
fn upload(s: &Server, file: &[u8]) -> Response {
    let mut form = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"data.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec();
    form.extend_from_slice(file);
    form.extend_from_slice(b"\r\n--XyZ--\r\n");
    client()
        .post(s.url("/upload"))
        .header("Content-Type", "multipart/form-data; boundary=XyZ")
        .body(form)
        .send()
        .unwrap()
}

/// The routes the Bottle and Pyramid examples share: the index and hello
/// pages, `/api/info`, the `/greet` form (a template first rendered at run
/// time) and a JSON 404.
fn assert_small_framework_app(s: &Server, framework: &str) {
    assert_index_and_hello(s);
    let v: serde_json::Value = serde_json::from_str(&get(s, "/api/info").1).unwrap();
    assert_eq!(
        (&v["framework"], &v["method"]),
        (&framework.into(), &"GET".into())
    );
    let r = client()
        .post(s.url("/greet"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("name=Zo%C3%AB+%3Cb%3E")
        .send()
        .unwrap();
    let (status, body) = text(r);
    assert_eq!(status, 200);
    assert!(body.contains("Nice to meet you, Zoë &lt;b&gt;!"), "{body}");
    let (status, body) = get(s, "/nope");
    assert_eq!(status, 404);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"error": "not found", "path": "/nope"})
    );
}

fn assert_index_and_hello(s: &Server) {
    let (status, body) = get(s, "/");
    assert_eq!(status, 200);
    assert!(
        body.contains("<h1>Hello from rsgi-wasm</h1>") && body.contains("<li>pooled</li>"),
        "{body}"
    );
    assert_eq!(get(s, "/hello/caf%C3%A9"), (200, "Hello, café!\n".into()));
}

#[test]
fn plain_wsgi_callable() {
    let c = build(
        "example-plain",
        &["app:application", "-p", "examples/plain"],
    );
    let s = Server::start(&c, &[]);
    let r = client().get(s.url("/")).send().unwrap();
    assert_eq!(header(&r, "content-length"), "29");
    assert_eq!(text(r), (200, "Hello from a plain WSGI app!\n".into()));

    let body = b"some bytes \x00\xff".repeat(1000);
    let r = client()
        .post(s.url("/echo"))
        .header("Content-Type", "application/x-test")
        .body(body.clone())
        .send()
        .unwrap();
    assert_eq!(header(&r, "content-type"), "application/x-test");
    assert_eq!(r.bytes().unwrap().as_ref(), body.as_slice());
    let r = client().get(s.url("/echo")).send().unwrap();
    assert_eq!(header(&r, "allow"), "POST");
    assert_eq!(text(r), (405, "POST only\n".into()));

    let (status, body) = get(&s, "/json?name=caf%C3%A9&x=1");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["hello"], "café");
    assert_eq!(v["query"]["x"], serde_json::json!(["1"]));
    assert_eq!(
        get(&s, "/stream").1,
        (0..5).map(|i| format!("chunk {i}\n")).collect::<String>()
    );
    assert_eq!(get(&s, "/nope"), (404, "Not Found\n".into()));
}

#[test]
fn flask_example() {
    let c = build(
        "example-flask",
        &[
            "app:app",
            "-p",
            "examples/flask",
            "-r",
            "examples/flask/requirements.txt",
        ],
    );
    let s = Server::start(&c, &[]);
    assert_flask_app(&s);
}

#[test]
fn flask_example_under_wasi_http() {
    let c = build(
        "example-flask-http",
        &[
            "app:app",
            "-p",
            "examples/flask",
            "-r",
            "examples/flask/requirements.txt",
            "--world",
            "wasi-http",
        ],
    );
    let s = Server::start(&c, &[]);
    assert_flask_app(&s);
}

/// Every route of examples/flask: templates, JSON, a form POST and its
/// redirect, streaming, the session cookie, a multipart upload, a 404.
fn assert_flask_app(s: &Server) {
    assert_index_and_hello(s);

    let r = client()
        .post(s.url("/api/echo"))
        .header("Content-Type", "application/json")
        .body(r#"{"a": 1}"#)
        .send()
        .unwrap();
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v, serde_json::json!({"length": 8, "received": {"a": 1}}));
    let r = client()
        .post(s.url("/api/echo"))
        .body("not json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);

    let r = client()
        .post(s.url("/form"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("name=bob")
        .send()
        .unwrap();
    assert_eq!(r.status(), 302);
    assert!(header(&r, "location").ends_with("/hello/bob"));
    assert_eq!(
        get(s, "/stream").1,
        (0..5).map(|i| format!("line {i}\n")).collect::<String>()
    );

    // A signed session cookie carries the count between requests.
    let r = client().get(s.url("/counter")).send().unwrap();
    let session = cookie(&r, "session").expect("a session cookie");
    assert_eq!(r.text().unwrap(), "1\n");
    let r = client()
        .get(s.url("/counter"))
        .header("Cookie", format!("session={session}"))
        .send()
        .unwrap();
    assert_eq!(r.text().unwrap(), "2\n");

    // A multipart upload bigger than Werkzeug's in-memory limit (it spools
    // to the app's private /tmp).
    let (status, page) = get(s, "/upload");
    assert_eq!(status, 200);
    assert!(page.contains("enctype=\"multipart/form-data\""), "{page}");
    let file = test_file(1_200_000);
    let r = upload(s, &file);
    assert_eq!(r.status(), 200, "{}", s.logs());
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(
        v,
        serde_json::json!({"filename": "data.bin", "size": file.len(), "sha256": sha256_hex(&file)})
    );
    let r = client()
        .post(s.url("/upload"))
        .header("Content-Type", "multipart/form-data; boundary=XyZ")
        .body("--XyZ--\r\n")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let (status, body) = get(s, "/nope");
    assert_eq!(status, 404);
    assert!(body.contains("The requested URL was not found on the server"));

    // An upload whose client stops halfway is Werkzeug's ClientDisconnected
    // to Flask: a 400 from the host, and no 500 traceback in the log for
    // each client that leaves mid-upload.
    let mut c = std::net::TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let head = "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; \
                boundary=XyZ\r\nContent-Length: 2000000\r\n\r\n--XyZ\r\nContent-Disposition: \
                form-data; name=\"file\"; filename=\"cut.bin\"\r\n\r\n";
    c.write_all(head.as_bytes()).unwrap();
    c.write_all(&test_file(500_000)).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    assert_eq!(
        status_of(&answer),
        400,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // Logged as 499: the client closed its side while the body was read.
    s.wait_for_log("\"POST /upload\" 499");
    let logs = s.logs();
    assert!(!logs.contains("Exception on /upload"), "{logs}");
}

#[test]
fn bottle_example() {
    let c = build(
        "example-bottle",
        &[
            "app:app",
            "-p",
            "examples/bottle",
            "-r",
            "examples/bottle/requirements.txt",
        ],
    );
    let s = Server::start(&c, &[]);
    assert_small_framework_app(&s, "bottle");
    assert_eq!(get(&s, "/greet").0, 405);
}

#[test]
fn pyramid_example() {
    let c = build(
        "example-pyramid",
        &[
            "app:app",
            "-p",
            "examples/pyramid",
            "-r",
            "examples/pyramid/requirements.txt",
        ],
    );
    let s = Server::start(&c, &[]);
    assert_small_framework_app(&s, "pyramid");
    // WebOb parses multipart bodies with cgi.FieldStorage (legacy-cgi).
    let data = test_file(300_000);
    let (status, body) = text(upload(&s, &data));
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"filename": "data.bin", "bytes": 300_000, "sha256": sha256_hex(&data)})
    );
}

#[test]
fn django_example() {
    let c = django_wsgi();
    let grants = prepare_django(&c, "django");
    let args: Vec<&str> = grants.iter().map(String::as_str).collect();
    let s = Server::start(&c, &args);
    assert_django_app(&s);
}

#[test]
fn django_example_under_wasi_http() {
    // Migrations run through `exec`, which needs rsgi-wasm's own world;
    // the wasi:http build then serves the same data.
    let grants = prepare_django(&django_wsgi(), "django-http");
    let c = django_component("example-django-http", &["--world", "wasi-http"]);
    let args: Vec<&str> = grants.iter().map(String::as_str).collect();
    let s = Server::start(&c, &args);
    assert_django_app(&s);
}

/// examples/django for our own world, built once per test binary: both
/// Django tests run its `exec` while the other may build.
fn django_wsgi() -> std::path::PathBuf {
    static P: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    P.get_or_init(|| django_component("example-django", &[]))
        .clone()
}

/// examples/django built as its README says (plus `extra` flags).
fn django_component(name: &str, extra: &[&str]) -> std::path::PathBuf {
    let mut args = vec![
        "mysite.wsgi:application",
        "-p",
        "examples/django",
        "-r",
        "examples/django/requirements.txt",
        "--warmup",
        "/health/",
        "--warmup",
        "/admin/login/",
    ];
    args.extend_from_slice(extra);
    build(name, &args)
}

/// Migrations, collectstatic and a superuser in a fresh directory, as the
/// README runs them; returns the `run` flags that serve that site.
fn prepare_django(c: &std::path::Path, name: &str) -> Vec<String> {
    let comp = c.display().to_string();
    let dir = temp_dir(name);
    let (data, statics) = (dir.join("data"), dir.join("static"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&statics).unwrap();
    let data_grant = format!("{}::/data", data.display());
    let static_grant = format!("{}::/collected-static", statics.display());

    // `manage.py ARGS` with the database's grant.
    let manage = |args: &[&str]| {
        let mut all = vec!["exec", &comp, "--dir", &data_grant, "--", "manage.py"];
        all.extend(args);
        run_bin(&all)
    };
    // Migrations and collectstatic, as the README runs them.
    let (code, out, err) = manage(&["migrate"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("Applying notes.0001_initial... OK"), "{out}");
    assert!(data.join("db.sqlite3").is_file());
    let (code, out, err) = run_bin(&[
        "exec",
        &comp,
        "--dir",
        &static_grant,
        "--",
        "manage.py",
        "collectstatic",
        "--noinput",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("static files copied to '/collected-static'"),
        "{out}"
    );
    assert!(statics.join("admin/css/base.css").is_file());
    let (code, out, err) = run_bin(&[
        "exec",
        &comp,
        "--dir",
        &data_grant,
        "--env",
        "DJANGO_SUPERUSER_PASSWORD=s3cret-pass",
        "--",
        "manage.py",
        "createsuperuser",
        "--noinput",
        "--username",
        "admin",
        "--email",
        "a@example.com",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    // Another settings module than the one built in would run with the
    // built one (and its database), so it is refused.
    let (code, _, err) = manage(&["migrate", "--settings=mysite.production"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(
            "--settings=mysite.production cannot take effect: Django's settings module, \
             mysite.settings, was chosen"
        ),
        "{err}"
    );

    vec![
        "--dir".into(),
        data_grant,
        "--static".into(),
        format!("/static/={}", statics.display()),
    ]
}

/// Every route of examples/django: pages, a CSRF-checked form, JSON, the
/// admin login with the host's static files.
fn assert_django_app(s: &Server) {
    assert_eq!(get(s, "/health/"), (200, "ok".into()));

    // The list page and its form, then a POST that passes CSRF.
    let r = client().get(s.url("/")).send().unwrap();
    let csrf_cookie = cookie(&r, "csrftoken").expect("a csrftoken cookie");
    let (status, page) = text(r);
    assert_eq!(status, 200, "{}", s.logs());
    assert!(
        page.contains("No notes yet.") && page.contains("/static/notes/style.css"),
        "{page}"
    );
    let token = csrf_token(&page);
    let post = |body: String, with_cookie: bool| {
        let mut req = client()
            .post(s.url("/notes/add/"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body);
        if with_cookie {
            req = req.header("Cookie", format!("csrftoken={csrf_cookie}"));
        }
        req.send().unwrap()
    };
    let r = post(
        format!("csrfmiddlewaretoken={token}&text=hello+from+the+sandbox"),
        true,
    );
    assert_eq!(r.status(), 302, "{}", s.logs());
    assert_eq!(header(&r, "location"), "/");
    let r = post("text=no+token".into(), false);
    assert_eq!(r.status(), 403);
    let r = post(format!("csrfmiddlewaretoken={token}&text="), true);
    let (status, body) = text(r);
    assert_eq!(status, 400);
    assert!(body.contains("This field is required."), "{body}");
    let (_, page) = get(s, "/");
    assert!(page.contains("hello from the sandbox"), "{page}");
    let v: serde_json::Value = serde_json::from_str(&get(s, "/api/notes/").1).unwrap();
    assert_eq!(v["notes"][0]["text"], "hello from the sandbox");
    assert!(v["notes"][0]["created"]
        .as_str()
        .unwrap()
        .ends_with("+00:00"));

    // The admin login page with its CSS, served by the host.
    let r = client().get(s.url("/admin/login/")).send().unwrap();
    let admin_csrf = cookie(&r, "csrftoken").unwrap_or(csrf_cookie.clone());
    let (status, page) = text(r);
    assert_eq!(status, 200);
    assert!(page.contains("/static/admin/css/base.css"), "{page}");
    let r = client()
        .get(s.url("/static/admin/css/base.css"))
        .send()
        .unwrap();
    assert_eq!(header(&r, "content-type"), "text/css; charset=utf-8");
    assert!(r.text().unwrap().contains("--body-fg"));
    assert!(!s.logs().contains("GET /static/admin/css/base.css\" 404"));

    // Logging in checks the password hash made by createsuperuser.
    let r = client()
        .post(s.url("/admin/login/?next=/admin/"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("Cookie", format!("csrftoken={admin_csrf}"))
        .body(format!(
            "csrfmiddlewaretoken={}&username=admin&password=s3cret-pass&next=/admin/",
            csrf_token(&page)
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 302, "{}", s.logs());
    assert_eq!(header(&r, "location"), "/admin/");
    assert!(cookie(&r, "sessionid").is_some());
    assert_eq!(get(s, "/nope/").0, 404);
}

/// Every library's `GET https://localhost:PORT/...` through the sandbox.
fn fetch(s: &Server, lib: &str, url: &str) -> (u16, serde_json::Value) {
    let r = client()
        .get(s.url("/fetch"))
        .query(&[("lib", lib), ("url", url)])
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap())
}

/// The exception types of a failure the app reported, outermost first.
fn error_types(v: &serde_json::Value) -> Vec<String> {
    v["error"]
        .as_array()
        .unwrap_or_else(|| panic!("no error in {v}"))
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

const LIBS: [&str; 4] = ["requests", "httpx", "urllib", "http.client"];

#[test]
fn https_client_example() {
    let c = build(
        "example-https-client",
        &[
            "app:app",
            "-p",
            "examples/https-client",
            "-r",
            "examples/https-client/requirements.txt",
        ],
    );
    let pki = Pki::new("https-client");
    pki.issue("localhost", &["localhost"], false);
    let api = https_server(&pki, "localhost");
    let echo = echo_server();
    let url = format!("https://localhost:{}/v1/items?id=7", api.port());
    let allow_api = format!("localhost:{}", api.port());
    let allow_echo = format!("localhost:{}", echo.port());
    let api_url = format!("API_URL=https://localhost:{}", api.port());
    let ops = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics = ops.local_addr().unwrap();
    drop(ops);
    let s = Server::start(
        &c,
        &[
            "--env",
            &api_url,
            "--allow-net",
            &allow_api,
            "--allow-net",
            &allow_echo,
            "--tls-ca",
            &pki.path("ca.pem"),
            "--metrics",
            &metrics.to_string(),
        ],
    );
    let (status, index) = {
        let r = client().get(s.url("/")).send().unwrap();
        (r.status().as_u16(), r.json::<serde_json::Value>().unwrap())
    };
    assert_eq!(status, 200, "{index}");
    assert!(index["ssl"].as_str().unwrap().contains("rustls"), "{index}");
    // `--env` reaches the app, which reads it per request as its README
    // has it (read at import, it would be the build's empty environment).
    assert_eq!(index["api"], api_url["API_URL=".len()..], "{index}");
    let v: serde_json::Value = client()
        .get(s.url("/fetch"))
        .query(&[("lib", "urllib"), ("path", "/v1/items?id=7")])
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["status"], 200, "{v}");

    // Each library, unmodified, verifies the server against the operator's
    // CA and sends the name as SNI.
    for lib in LIBS {
        let (status, v) = fetch(&s, lib, &url);
        assert_eq!(status, 200, "{lib}: {v}");
        assert_eq!(v["status"], 200, "{lib}: {v}");
        let body: serde_json::Value = serde_json::from_str(v["body"].as_str().unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"path": "/v1/items?id=7", "sni": "localhost"}),
            "{lib}"
        );
    }

    // Plain TCP by name.
    let r: serde_json::Value = client()
        .get(s.url("/tcp"))
        .query(&[("host", "localhost"), ("port", &echo.port().to_string())])
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(r, serde_json::json!({"answer": "echo: ping\n"}));

    // A name no rule covers is not even looked up: PermissionError.
    for lib in LIBS {
        let (status, v) = fetch(&s, lib, "https://api.example.com/");
        assert_eq!(status, 502, "{lib}: {v}");
        // httpx reports it as its ConnectError, with the message.
        let types = error_types(&v);
        assert!(
            types
                .iter()
                .any(|t| t == "PermissionError" || t == "ConnectError"),
            "{lib}: {v}"
        );
        let text = v.to_string();
        assert!(
            text.contains("looking up 'api.example.com' is not allowed")
                && text.contains("--allow-net"),
            "{lib}: {v}"
        );
    }
    // The allowed name on another port: refused at connect.
    let (status, v) = fetch(
        &s,
        "urllib",
        &format!("https://localhost:{}/", echo.port() + 1),
    );
    assert_eq!(status, 502, "{v}");
    assert!(
        error_types(&v).iter().any(|t| t == "PermissionError"),
        "{v}"
    );
    // An address no lookup of an allowed name returned, by IP literal:
    // only the name was allowed.
    let (status, v) = fetch(
        &s,
        "requests",
        &format!("https://127.0.0.2:{}/", api.port()),
    );
    assert_eq!(status, 502, "{v}");
    assert!(
        error_types(&v).iter().any(|t| t == "PermissionError"),
        "{v}"
    );
    let r: serde_json::Value = client()
        .get(s.url("/resolve"))
        .query(&[("name", "localhost")])
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(
        r["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "127.0.0.1"),
        "{r}"
    );

    // Lookups and connections are counted per tenant.
    let text = scrape(metrics);
    let tenant = "example-https-client";
    for (name, min) in [
        (
            format!(
                "rsgi_wasm_outbound_connections_total{{tenant=\"{tenant}\",result=\"allowed\"}}"
            ),
            5.0,
        ),
        (
            format!(
                "rsgi_wasm_outbound_connections_total{{tenant=\"{tenant}\",result=\"denied\"}}"
            ),
            2.0,
        ),
        (
            format!("rsgi_wasm_outbound_lookups_total{{tenant=\"{tenant}\",result=\"denied\"}}"),
            4.0,
        ),
        (
            format!(
                "rsgi_wasm_outbound_tls_bytes_total{{tenant=\"{tenant}\",direction=\"received\"}}"
            ),
            1000.0,
        ),
    ] {
        assert!(series(&text, &name) >= min, "{name} in\n{text}");
    }
    drop(s);

    // Without the operator's CA the same server fails verification in every
    // library, as `ssl.SSLCertVerificationError`; with verification off
    // (`verify=False`) it answers.
    let s = Server::start(&c, &["--allow-net", &allow_api]);
    for lib in LIBS {
        let (status, v) = fetch(&s, lib, &url);
        assert_eq!(status, 502, "{lib}: {v}");
        let text = v.to_string();
        assert!(
            error_types(&v)
                .iter()
                .any(|t| t == "SSLCertVerificationError")
                || text.contains("CERTIFICATE_VERIFY_FAILED"),
            "{lib}: {v}"
        );
        assert!(
            text.contains("unable to get local issuer certificate"),
            "{lib}: {v}"
        );
        let r: serde_json::Value = client()
            .get(s.url("/fetch"))
            .query(&[("lib", lib), ("url", &url), ("verify", "0")])
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(r["status"], 200, "{lib} with verification off: {r}");
    }

    // A certificate for another name fails the hostname check.
    pki.issue("other", &["other.test"], false);
    let other = https_server(&pki, "other");
    let s = Server::start(
        &c,
        &[
            "--allow-net",
            &format!("localhost:{}", other.port()),
            "--tls-ca",
            &pki.path("ca.pem"),
        ],
    );
    // (urllib3 checks the name itself against `getpeercert()`, as it does
    // with any ssl module whose OPENSSL_VERSION is not "OpenSSL ...".)
    for lib in LIBS {
        let (status, v) = fetch(&s, lib, &format!("https://localhost:{}/", other.port()));
        assert_eq!(status, 502, "{lib}: {v}");
        let text = v.to_string();
        assert!(
            text.contains("Hostname mismatch, certificate is not valid for 'localhost'")
                || text.contains("hostname 'localhost' doesn't match 'other.test'"),
            "{lib}: {v}"
        );
    }
}
