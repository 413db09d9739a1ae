//! Test harness: build real components from Python (the tool's build cache
//! lives under `target/`), start the real `rsgi-wasm` binary on a loopback port,
//! and talk HTTP to it. A failing test prints the server's log.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// Scratch space for tests, under `target/` so it is never committed.
pub fn work_dir() -> PathBuf {
    let dir = repo().join("target").join("rsgi-wasm-tests");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Cache for compiled artifacts and resolved dependencies.
pub fn cache_dir() -> PathBuf {
    work_dir().join("cache")
}

/// The binary under test.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rsgi-wasm"));
    c.env("RSGI_WASM_CACHE", cache_dir())
        .env("RUST_LOG", "info");
    c
}

static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// Run `rsgi-wasm build ARGS -o <name>.wasm` from the repository root, as
/// a user would (its build cache makes an unchanged rebuild instant), then
/// start it once so the compiled artifact is cached before tests race to
/// compile the same component in parallel.
pub fn build(name: &str, args: &[&str]) -> PathBuf {
    let out = work_dir().join("components").join(format!("{name}.wasm"));
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let res = bin()
        .current_dir(repo())
        .arg("build")
        .args(args)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "building {name} failed:\n{}",
        String::from_utf8_lossy(&res.stderr)
    );
    drop(Server::start(&out, &[]));
    out
}

/// `rsgi-wasm ARGS` to completion from the repository root:
/// (exit status, stdout, stderr).
pub fn run_bin(args: &[&str]) -> (i32, String, String) {
    outcome(bin().current_dir(repo()).args(args))
}

/// `cmd` run to completion: (exit status, stdout, stderr).
pub fn outcome(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Build `target` from `app_dir` (+ requirements).
pub fn component(name: &str, target: &str, app_dir: &Path, requirements: Option<&Path>) -> PathBuf {
    let mut args = vec![
        target.to_owned(),
        "-p".into(),
        app_dir.display().to_string(),
    ];
    if let Some(r) = requirements {
        args.push("-r".into());
        args.push(r.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    build(name, &args)
}

/// Build once per test binary (the file cache spans runs).
fn once(
    cell: &'static OnceLock<PathBuf>,
    name: &str,
    target: &str,
    dir: &str,
    requirements: Option<&str>,
) -> PathBuf {
    cell.get_or_init(|| {
        let dir = repo().join(dir);
        let req = requirements.map(|r| dir.join(r));
        component(name, target, &dir, req.as_deref())
    })
    .clone()
}

/// The router test app (tests/apps/router).
pub fn router() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    once(&P, "router", "app:application", "tests/apps/router", None)
}

/// The router wrapped in wsgiref's validator (tests/apps/router/validated.py).
pub fn validated() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    once(
        &P,
        "validated",
        "validated:application",
        "tests/apps/router",
        None,
    )
}

/// The probe app that echoes how a request was parsed (tests/apps/probe).
pub fn probe() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    once(&P, "probe", "app:application", "tests/apps/probe", None)
}

/// examples/hello.
pub fn hello() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    once(&P, "hello", "app:application", "examples/hello", None)
}

/// examples/flask, with Flask resolved from its requirements.txt.
pub fn flask() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    once(
        &P,
        "flask",
        "app:app",
        "examples/flask",
        Some("requirements.txt"),
    )
}

/// The status and text of a plain `GET path`.
pub fn get(s: &Server, path: &str) -> (u16, String) {
    let r = client().get(s.url(path)).send().unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

/// A read-only grant of `dir` at `/sync`, after putting `big` in it: a
/// sparse 256 MiB file, far more than loopback's socket buffers take, so
/// sending it to a client that does not read stalls.
pub fn grant_with_a_big_file(dir: &Path) -> String {
    std::fs::File::create(dir.join("big"))
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    format!("{}::/sync:ro", dir.display())
}

/// `GET path` on a connection of its own, returned once the response's
/// head (a 200) has arrived, with its body left unread.
pub fn stalled_download(addr: SocketAddr, path: &str) -> TcpStream {
    let mut c = TcpStream::connect(addr).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut head = [0u8; 12];
    c.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    c
}

/// GET `path` and parse the JSON answer.
pub fn get_json(s: &Server, path: &str) -> serde_json::Value {
    client().get(s.url(path)).send().unwrap().json().unwrap()
}

/// A running `rsgi-wasm run`.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    logs: Arc<Mutex<String>>,
    /// While set, its stderr is not read (a log reader that stalled).
    logs_paused: Arc<std::sync::atomic::AtomicBool>,
}

impl Server {
    /// Start serving `component` with extra flags; waits for `listening on`.
    pub fn start(component: &Path, args: &[&str]) -> Server {
        let component = component.display().to_string();
        let mut all = vec!["run", component.as_str()];
        all.extend_from_slice(args);
        Server::start_with(&all)
    }

    /// Start `rsgi-wasm ARGS --listen 127.0.0.1:0`; waits for `listening on`.
    pub fn start_with(args: &[&str]) -> Server {
        Server::start_env(args, &[])
    }

    /// As `start_with`, with extra environment variables for the server.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::spawn(bin(), args, env, |_| {})
    }

    /// As `start_with`, running `meanwhile` (given what the server has
    /// logged so far) before waiting for `listening on`: for a server that
    /// listens only once something happens.
    pub fn start_after(args: &[&str], meanwhile: impl FnOnce(&dyn Fn() -> String)) -> Server {
        Server::spawn(bin(), args, &[], meanwhile)
    }

    /// As `start_with`, in a process whose open-file limit (soft and hard)
    /// is `nofile`.
    pub fn start_with_nofile(nofile: u32, args: &[&str]) -> Server {
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_rsgi-wasm"))
            .env("RSGI_WASM_CACHE", cache_dir())
            .env("RUST_LOG", "info");
        Server::spawn(sh, args, &[], |_| {})
    }

    fn spawn(
        mut command: Command,
        args: &[&str],
        env: &[(&str, &str)],
        meanwhile: impl FnOnce(&dyn Fn() -> String),
    ) -> Server {
        let mut child = command
            .current_dir(repo())
            .envs(env.iter().copied())
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        let logs_paused = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let paused = logs_paused.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                while paused.load(std::sync::atomic::Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let Ok(line) = line else { break };
                if let Some(rest) = line
                    .split("listening on http://")
                    .nth(1)
                    .or_else(|| line.split("listening on https://").nth(1))
                {
                    let addr = rest.split_whitespace().next().unwrap().to_owned();
                    let _ = tx.send(addr);
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        meanwhile(&|| logs.lock().unwrap().clone());
        let addr = match rx.recv_timeout(Duration::from_secs(300)) {
            Ok(a) => a.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start:\n{}", logs.lock().unwrap());
            }
        };
        Server {
            child,
            addr,
            logs,
            logs_paused,
        }
    }

    /// Stop reading the server's stderr (or read it again): its pipe
    /// fills, as behind a log reader that stalled.
    pub fn pause_log_reading(&self, paused: bool) {
        self.logs_paused
            .store(paused, std::sync::atomic::Ordering::Release);
    }

    /// The address logged as `{what}http://ADDR/...` (e.g. `metrics on `).
    pub fn logged_addr(&self, what: &str) -> SocketAddr {
        let needle = format!("{what}http://");
        self.wait_for_log(&needle);
        let logs = self.logs();
        let rest = logs.split(needle.as_str()).nth(1).unwrap();
        rest.split(['/', ' ', '"']).next().unwrap().parse().unwrap()
    }

    /// `http://ADDR/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Everything the server logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Wait until `needle` has appeared `count` times in the log.
    pub fn wait_for_log_count(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.logs().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "{needle:?} not logged {count} times:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until the log contains `needle` (or fail with the log).
    pub fn wait_for_log(&self, needle: &str) {
        let t = Instant::now();
        while !self.logs().contains(needle) {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "log never showed {needle:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal (e.g. "HUP") without waiting.
    pub fn signal(&self, signal: &str) {
        Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
    }

    /// Send a signal and wait for the exit status.
    pub fn stop(mut self, signal: &str) -> std::process::ExitStatus {
        self.signal(signal);
        let t = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "server did not exit:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Peak resident memory of the server process (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- server log ----\n{}", self.logs());
        }
    }
}

/// Two POSTs whose bodies `/` does not read, larger than what hyper has
/// buffered when the response is done, then a GET, all on one HTTP/1.1
/// connection: the server must drain the bodies, not close. Unless the
/// client waits for a `100 Continue`: then the response says it closes.
pub fn assert_unread_bodies_keep_the_connection(addr: SocketAddr) {
    let (mut w, mut r) = connect(addr);
    let body = vec![b'x'; 300_000];
    for _ in 0..2 {
        w.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n")
            .unwrap();
        w.write_all(&body).unwrap();
        let res = read_response(&mut r, false);
        assert_eq!(res.status, 200);
        assert_eq!(res.header("connection"), None);
    }
    w.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut r, false).body, b"router\n");
    // Unless the client waits for `100 Continue`, which never came: then
    // the connection ends, and the response says so.
    let (mut w, mut r) = connect(addr);
    w.write_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let res = read_response(&mut r, false);
    assert_eq!(res.status, 200);
    assert_eq!(res.header("connection"), Some(&b"close"[..]));
    let _ = w.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}

/// A body `/` does not read, trickled a byte every 200 ms once answered:
/// under the 1 KiB/s the server asks of any body, read or drained, so it
/// ends the connection (for a server started with `--header-timeout 1s`)
/// instead of draining for as long as the client keeps trickling.
pub fn assert_a_trickled_unread_body_ends_the_connection(addr: SocketAddr) {
    let (mut w, mut r) = connect(addr);
    w.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nx")
        .unwrap();
    assert_eq!(read_response(&mut r, false).status, 200);
    r.get_ref()
        .set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    let t0 = Instant::now();
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "still draining a trickle after 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
        if w.write_all(b"x").is_err() {
            return;
        }
        let mut byte = [0u8; 1];
        match r.read(&mut byte) {
            Ok(0) => return,
            Ok(_) => panic!("bytes after the response"),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// A blocking HTTP/2 client by prior knowledge (cleartext h2).
pub fn h2_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// A blocking HTTP client without connection reuse surprises.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Send raw bytes, read until the server closes (or `timeout`).
pub fn raw(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// Status code of a raw response.
pub fn status_of(response: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(response);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

/// One parsed response read from a keep-alive connection.
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Headers (lower-case names).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body (`Content-Length` or chunked framing).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// First header value by lower-case name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// Read exactly one response from `r` (no body for HEAD when `head`).
pub fn read_response(r: &mut BufReader<TcpStream>, head: bool) -> RawResponse {
    let mut buf = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r.read_until(b'\n', &mut line).unwrap();
        assert!(
            n > 0,
            "connection closed before a full head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&line);
        if line == b"\r\n" {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(&buf).unwrap();
    let status = resp.code.unwrap();
    let headers: Vec<(String, Vec<u8>)> = resp
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect();
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let mut body = Vec::new();
    if !head && status != 204 && status != 304 {
        if let Some(len) = get("content-length") {
            body.resize(len.parse().unwrap(), 0);
            r.read_exact(&mut body).unwrap();
        } else if get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let size = usize::from_str_radix(line.trim(), 16).unwrap();
                let mut chunk = vec![0; size + 2];
                r.read_exact(&mut chunk).unwrap();
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            r.read_to_end(&mut body).unwrap();
        }
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

/// A keep-alive connection for several raw requests.
pub fn connect(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

/// Build a component expecting failure; returns the error output.
pub fn build_error(target: &str, app_dir: &Path, requirements: Option<&Path>) -> String {
    let out = work_dir().join("failed.wasm");
    let mut cmd = bin();
    cmd.arg("build")
        .arg(target)
        .arg("-p")
        .arg(app_dir)
        .arg("-o")
        .arg(&out);
    if let Some(r) = requirements {
        cmd.arg("-r").arg(r);
    }
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let res = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&res.stderr).into_owned();
    assert!(
        !res.status.success(),
        "build of {target} should fail:\n{err}"
    );
    err
}

/// A fresh directory under target/ for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = work_dir()
        .join("tmp")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A fresh cache directory for one test that holds the shared cache's
/// compiled code, hard-linked (nothing is compiled again), but not its
/// unpacked files: for a test that damages a cache.
pub fn cache_with_compiled_code(name: &str) -> PathBuf {
    let cache = temp_dir(name);
    let shared = cache_dir();
    for dir in ["", "modules", "shells", "digests"] {
        std::fs::create_dir_all(cache.join(dir)).unwrap();
        let Ok(entries) = std::fs::read_dir(shared.join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                std::fs::hard_link(entry.path(), cache.join(dir).join(entry.file_name())).unwrap();
            }
        }
    }
    cache
}

/// 200 MiB down (`/big`) and up (`/length`) through a router component
/// whose guest memory is capped well below one transfer, so a body
/// buffered (or leaked) inside the sandbox would trip the limit; the
/// host's peak RSS must not grow by a transfer either.
pub fn assert_large_transfers_stream(component: &Path) {
    const N: usize = 200 << 20;
    let s = Server::start(component, &["--memory", "160MiB"]);
    let baseline = s.peak_rss();
    // Download 200 MiB generated on the fly.
    let mut r = client().get(s.url(&format!("/big?{N}"))).send().unwrap();
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    assert_eq!(total, N);
    // Upload 200 MiB as a chunked stream; the app only counts it.
    struct Gen(usize);
    impl Read for Gen {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.0);
            buf[..n].fill(b'u');
            self.0 -= n;
            Ok(n)
        }
    }
    let r = client()
        .post(s.url("/length"))
        .body(reqwest::blocking::Body::new(Gen(N)))
        .send()
        .unwrap();
    assert_eq!(r.text().unwrap(), N.to_string());
    // Neither direction was held in memory: the host's peak resident set
    // grew by far less than one transfer.
    let growth = s.peak_rss().saturating_sub(baseline);
    assert!(growth < 64 << 20, "peak RSS grew by {} MiB", growth >> 20);
    assert!(!s.logs().contains("memory limit"), "{}", s.logs());
}

/// POST `body` to the router's `/echo` and expect it back byte for byte.
pub fn assert_echoes(s: &Server, body: Vec<u8>) {
    let r = client()
        .post(s.url("/echo"))
        .body(body.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = r.bytes().unwrap();
    assert_eq!(got.len(), body.len());
    assert!(got.as_ref() == body.as_slice(), "echoed bytes differ");
}

/// A chunked `POST path` of `chunks` chunks of 0x200 `z` bytes, then the
/// last chunk, as raw HTTP/1.1.
pub fn chunked_post(path: &str, chunks: usize) -> Vec<u8> {
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .into_bytes();
    for _ in 0..chunks {
        req.extend_from_slice(b"200\r\n");
        req.extend_from_slice(&[b'z'; 0x200]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    req
}

/// `wsgi.file_wrapper` over a 300 KB file in a granted directory (the
/// router's `/file`) arrives byte for byte.
pub fn assert_file_wrapper_sends_a_granted_file(component: &Path, data: &[u8]) {
    let dir = temp_dir("filewrap");
    std::fs::write(dir.join("blob.bin"), data).unwrap();
    let grant = format!("{}::/sync:ro", dir.display());
    let s = Server::start(component, &["--dir", &grant]);
    let got = client()
        .get(s.url("/file?blob.bin"))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert!(
        got.as_ref() == data,
        "{} bytes of {}",
        got.len(),
        data.len()
    );
}

/// `/metrics` of the server's operator listener.
pub fn scrape(addr: std::net::SocketAddr) -> String {
    let r = client()
        .get(format!("http://{addr}/metrics"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().unwrap()
}

/// The value of the series `name` (with its labels as written), or 0.
pub fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Assert that the scrape `text` shows `name` at `value`.
pub fn assert_series(text: &str, name: &str, value: f64) {
    assert_eq!(series(text, name), value, "{name} in\n{text}");
}

/// Wait until `done` says so, for at most a minute (`what` names it).
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait until `/metrics` shows `name` at `value` (a state change the
/// server makes on its own, like an idle unload).
pub fn wait_for_series(ops: std::net::SocketAddr, name: &str, value: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = scrape(ops);
        if series(&text, name) == value {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never became {value}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Each "compiled in ... (N of its M core modules were new)" line of a
/// server's log, as (N, M).
pub fn compiled_modules(logs: &str) -> Vec<(u32, u32)> {
    logs.split("compiled in ")
        .skip(1)
        .map(|rest| {
            let words: Vec<&str> = rest.split([' ', '(']).collect();
            (words[2].parse().unwrap(), words[5].parse().unwrap())
        })
        .collect()
}

/// A test CA, and PEM files it signed, in one directory.
pub struct Pki {
    pub dir: std::path::PathBuf,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = temp_dir(name);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "rsgi-wasm test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    /// `NAME.pem` and `NAME.key` for `names`, signed by the CA; the cert's DER.
    pub fn issue(&self, file: &str, names: &[&str], client: bool) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        if client {
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        }
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        std::fs::write(self.dir.join(format!("{file}.pem")), cert.pem()).unwrap();
        std::fs::write(self.dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
        cert.der().to_vec()
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// An HTTPS client trusting the CA, with `names` resolving to `addr`.
    pub fn client(
        &self,
        addr: std::net::SocketAddr,
        names: &[&str],
    ) -> reqwest::blocking::ClientBuilder {
        let ca = std::fs::read(self.dir.join("ca.pem")).unwrap();
        let mut b = reqwest::blocking::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .tls_info(true)
            .timeout(std::time::Duration::from_secs(60));
        for n in names {
            b = b.resolve(n, addr);
        }
        b
    }
}

/// A one-thread-per-connection HTTPS server on a loopback port, with the
/// certificate `cert` of `pki`: each request is answered with
/// `200 {"path": ..., "sni": ...}` and the connection closed.
pub fn https_server(pki: &Pki, cert: &str) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    let chain =
        rustls::pki_types::CertificateDer::pem_file_iter(pki.dir.join(format!("{cert}.pem")))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(pki.dir.join(format!("{cert}.key")))
        .unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let config = config.clone();
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let sni = tls.conn.server_name().map(str::to_owned);
                let body = serde_json::json!({"path": path, "sni": sni}).to_string();
                let _ = write!(
                    tls,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    addr
}

/// A TCP server on a loopback port that answers each line with `echo: LINE`.
pub fn echo_server() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(tcp.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    let _ = (&tcp).write_all(format!("echo: {line}").as_bytes());
                    line.clear();
                }
            });
        }
    });
    addr
}

/// An app's Content-Length headers, in either world: a repeat of one
/// value goes out once, a conflict or a non-number is a 500 with a log
/// line saying so, and whitespace around values is dropped.
pub fn assert_content_lengths_are_checked(s: &Server) {
    let get = |query: &str| {
        client()
            .get(s.url(&format!("/lengths?{query}")))
            .send()
            .unwrap()
    };
    let r = get("5;5");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get_all("content-length").iter().count(), 1);
    assert_eq!(r.text().unwrap(), "hello");
    assert_eq!(get("3;5").status(), 500);
    s.wait_for_log("conflicting Content-Length");
    let r = get("%202%20");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-pad"], "padded");
    assert_eq!(r.text().unwrap(), "he");
    assert_eq!(get("1,%202").status(), 500);
    s.wait_for_log("is not a number");
    assert_eq!(client().get(s.url("/")).send().unwrap().status(), 200);
}

/// A body longer than its app's `Content-Length` is clipped, and one
/// shorter is cut short (the connection closed early), each said in the
/// log, and the access line counts what went out: in either world.
pub fn assert_bodies_keep_their_content_length(s: &Server) {
    let cases: [(&[u8], &[u8], &str, &str); 2] = [
        (
            b"GET /long HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"\r\n\r\n123",
            "app wrote more than its Content-Length; 7 extra bytes dropped",
            "\"GET /long\" 200 3 ",
        ),
        (
            b"GET /short HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\r\n\r\n12345",
            "app sent 5 bytes fewer than its Content-Length",
            "\"GET /short\" 200 5 ",
        ),
    ];
    for (request, tail, said, logged) in cases {
        let resp = raw(s.addr, request);
        assert!(resp.ends_with(tail), "{:?}", String::from_utf8_lossy(&resp));
        s.wait_for_log(said);
        s.wait_for_log(logged);
    }
}

/// A loopback TCP connection to `addr` whose receive buffer is `bytes`,
/// set before connecting so the window is small from the start: the
/// server's socket fills, and its kernel holds what the client has not
/// taken, as for a slow link.
pub fn small_window_connection(
    addr: std::net::SocketAddr,
    bytes: libc::c_int,
) -> std::net::TcpStream {
    use std::os::fd::FromRawFd;
    let std::net::SocketAddr::V4(v4) = addr else {
        panic!("a loopback IPv4 address")
    };
    // SAFETY: a new socket this test owns, an int option, and a
    // sockaddr_in built whole; the fd goes to the TcpStream that closes it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let rc = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::from_ref(&bytes).cast(),
            std::mem::size_of_val(&bytes) as libc::socklen_t,
        );
        assert_eq!(rc, 0);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_port = v4.port().to_be();
        sa.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
        let rc = libc::connect(
            fd,
            std::ptr::from_ref(&sa).cast(),
            std::mem::size_of_val(&sa) as libc::socklen_t,
        );
        assert_eq!(rc, 0);
        std::net::TcpStream::from_raw_fd(fd)
    }
}

/// A client of `GET path` (Host `host`) that reads its response at 8 KB/s:
/// shown to be reading, so never cut as stalled, it keeps the response's
/// bytes waiting in the server until [`SlowReader::leave`], or until the
/// server ends the response.
pub struct SlowReader {
    reading: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl SlowReader {
    /// Start reading `path` from `addr` slowly.
    pub fn start(addr: SocketAddr, host: &str, path: &str) -> SlowReader {
        let mut slow = small_window_connection(addr, 8192);
        write!(slow, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
        let reading = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let thread = std::thread::spawn({
            let reading = reading.clone();
            move || {
                let mut buf = vec![0u8; 2048];
                while reading.load(std::sync::atomic::Ordering::Relaxed) {
                    if !matches!(slow.read(&mut buf), Ok(n) if n > 0) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
        });
        SlowReader { reading, thread }
    }

    /// Whether the server ended the response (closed or reset the
    /// connection) while this client was still reading it.
    pub fn was_cut(&self) -> bool {
        self.thread.is_finished() && self.reading.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stop reading and close the connection.
    pub fn leave(self) {
        self.reading
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap();
    }
}
