//! Sandbox, limits and multi-tenant hosting, black-box: escape attempts,
//! env and network isolation, timeouts, memory bombs, queue overflow,
//! isolation modes, tenants routed by Host and prefix, SIGHUP reload.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn get_host(s: &Server, host: &str, path: &str) -> (u16, String) {
    let r = client()
        .get(s.url(path))
        .header("host", host)
        .send()
        .unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

#[test]
fn a_name_wasi_cannot_carry_is_left_out_of_its_listing_not_the_rest() {
    use std::os::unix::ffi::OsStrExt;
    let dir = temp_dir("unlistable");
    std::fs::write(dir.join("ok.txt"), "ok").unwrap();
    std::fs::write(dir.join("caf\u{e9}.txt"), "utf-8").unwrap();
    std::fs::write(
        dir.join(std::ffi::OsStr::from_bytes(b"latin1-\xff.txt")),
        "x",
    )
    .unwrap();
    let grant = format!("{}::/data:ro", dir.display());
    let s = Server::start(&router(), &["--dir", &grant]);
    assert_eq!(
        get(&s, "/fs-op?listdir,/data"),
        (200, "caf\u{e9}.txt,ok.txt".into())
    );
    s.wait_for_log("a directory listing left out a file whose name is not UTF-8");
}

#[test]
fn file_escapes_fail_with_oserror() {
    let outside = temp_dir("outside");
    std::fs::write(outside.join("secret.txt"), "host secret").unwrap();
    let rw = temp_dir("grant-rw");
    let ro = temp_dir("grant-ro");
    std::fs::write(rw.join("ok.txt"), "inside").unwrap();
    std::fs::write(ro.join("ro.txt"), "read only").unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), rw.join("host-link")).unwrap();
    let rw_grant = format!("{}::/data", rw.display());
    let ro_grant = format!("{}::/ro:ro", ro.display());
    let s = Server::start(&router(), &["--dir", &rw_grant, "--dir", &ro_grant]);

    assert_eq!(get(&s, "/read-file?/data/ok.txt"), (200, "inside".into()));
    assert_eq!(get(&s, "/read-file?/ro/ro.txt"), (200, "read only".into()));
    let secret = outside.join("secret.txt").display().to_string();
    for attempt in [
        "/data/../../../../etc/passwd".to_owned(),
        "/data/../ro/../../etc/hostname".to_owned(),
        "/etc/passwd".to_owned(),
        secret.clone(),
        "/data/host-link".to_owned(),
    ] {
        let (status, body) = get(&s, &format!("/read-file?{attempt}"));
        assert_eq!(status, 403, "{attempt}: {body}");
        assert!(body.starts_with("OSError"), "{attempt}: {body}");
        assert!(
            !body.contains("host secret") && !body.contains("root:"),
            "{body}"
        );
    }
    // A symlink the app makes itself cannot point out of the grant either.
    let (status, _) = get(&s, &format!("/symlink?{secret},/data/app-link"));
    if status == 200 {
        let (status, body) = get(&s, "/read-file?/data/app-link");
        assert_eq!(status, 403, "{body}");
    }
    // Nor be made with `..` in its target (host tools and other apps
    // granted the parent would follow it out): through a symlinked
    // directory, or once a directory in its target is swapped for a link,
    // a `..` that looks inside can climb out.
    assert_eq!(get(&s, "/symlink?.,/data/s"), (200, "linked".into()));
    for (target, link) in [
        ("../../../etc/passwd", "/data/app-link2"),
        ("sub/../../x", "/data/app-link2"),
        ("../outside", "/data/app-link2"),
        ("..", "/data/app-link2"),
        ("sub/..", "/data/app-link2"),
        ("../etc", "/data/s/app-link2"),
        ("s/..", "/data/app-link2"),
        ("s/../x", "/data/app-link2"),
    ] {
        let (status, body) = get(&s, &format!("/symlink?{target},{link}"));
        assert_eq!(status, 403, "{target}: {body}");
    }
    assert!(rw.join("app-link2").symlink_metadata().is_err());
    assert_eq!(get(&s, "/write-file?/data/inside.txt").0, 200);
    // Made through a symlinked directory, a link lands where that points.
    assert_eq!(
        get(&s, "/symlink?inside.txt,/data/s/app-link3"),
        (200, "linked".into())
    );
    assert_eq!(
        get(&s, "/read-file?/data/app-link3"),
        (200, "written by the app".into())
    );
    // The host's own `..` links (here one that points inside from where it
    // is) cannot be moved by the app, alone or in their directory: from
    // elsewhere, or through a symlinked directory, they could point out.
    std::fs::create_dir_all(rw.join("a/b")).unwrap();
    std::os::unix::fs::symlink("..", rw.join("a/up")).unwrap();
    std::os::unix::fs::symlink("../..", rw.join("a/b/up")).unwrap();
    for op in [
        "rename,/data/a/up,/data/up",
        "link,/data/a/up,/data/up",
        "rename,/data/a/b,/data/b",
        "rename,/data/a/b,/data/a/c",
        "rename,/data/a/up,/data/s/a/up2",
        "rename,/data/a,/data/s/z",
    ] {
        assert_eq!(get(&s, &format!("/fs-op?{op}")).1, "EPERM", "{op}");
    }
    // However deep the link: 20 levels of 250-character names are past
    // PATH_MAX from the top, and the check still finds it.
    let host = cap_std::fs::Dir::open_ambient_dir(&rw, cap_std::ambient_authority()).unwrap();
    host.create_dir("long").unwrap();
    let mut deep = host.open_dir("long").unwrap();
    for i in 0..20 {
        let name = format!("{i:02}{}", "z".repeat(248));
        deep.create_dir(&name).unwrap();
        deep = deep.open_dir(&name).unwrap();
    }
    deep.symlink(
        "../../../../../../../../../../../../../../../../../../../../..",
        "up",
    )
    .unwrap();
    assert_eq!(get(&s, "/fs-op?rename,/data/long,/data/long2").1, "EPERM");
    assert!(rw.join("up").symlink_metadata().is_err());
    assert!(rw.join("b").symlink_metadata().is_err());
    assert!(rw.join("z").symlink_metadata().is_err());
    assert_eq!(
        std::fs::read_link(rw.join("a/b/up")).unwrap(),
        Path::new("../..")
    );
    // The app's own links, and directories without `..` links, move freely.
    assert_eq!(get(&s, "/fs-op?mkdir,/data/m/n").1, "ok");
    assert_eq!(get(&s, "/symlink?x,/data/m/n/l"), (200, "linked".into()));
    assert_eq!(get(&s, "/fs-op?rename,/data/m,/data/a/m").1, "ok");
    assert_eq!(get(&s, "/fs-op?rename,/data/a/m/n/l,/data/l").1, "ok");
    assert_eq!(std::fs::read_link(rw.join("l")).unwrap(), Path::new("x"));
    // Writes: allowed in the rw grant, refused in the :ro one.
    assert_eq!(get(&s, "/write-file?/data/new.txt").0, 200);
    assert_eq!(
        std::fs::read_to_string(rw.join("new.txt")).unwrap(),
        "written by the app"
    );
    let (status, body) = get(&s, "/write-file?/ro/new.txt");
    assert_eq!(status, 403, "{body}");
    assert!(!ro.join("new.txt").exists());
    // The app's own files are readable but not writable; /tmp is its own.
    let (status, body) = get(&s, "/read-file?/1/app.py");
    assert_eq!(status, 200);
    assert!(body.contains("def application"), "{body}");
    let (status, body) = get(&s, "/write-file?/1/app.py");
    assert_eq!(status, 403, "{body}");
    let (status, body) = get(&s, "/write-file?/python/os.py");
    assert_eq!(status, 403, "{body}");
    assert_eq!(get(&s, "/write-file?/tmp/scratch.txt").0, 200);
    assert_eq!(
        get(&s, "/read-file?/tmp/scratch.txt"),
        (200, "written by the app".into())
    );
}

#[test]
fn a_move_takes_what_it_checked_while_another_request_swaps_its_path() {
    // The host's `a/b/up2 -> ../..` may not move (from the top it would
    // point out); one request renames `m/up2` while another swaps `m`
    // between a directory holding a plain `up2` and a symlink to `a/b`.
    let rw = temp_dir("grant-race");
    std::fs::create_dir_all(rw.join("a/b")).unwrap();
    std::fs::create_dir_all(rw.join("m")).unwrap();
    std::os::unix::fs::symlink("../..", rw.join("a/b/up2")).unwrap();
    let grant = format!("{}::/data", rw.display());
    let s = Server::start(&router(), &["--dir", &grant, "--workers", "2"]);
    let swapper = std::thread::spawn({
        let url = s.url("/move-race?swap,/data");
        move || client().get(url).send().unwrap().text().unwrap()
    });
    let took: serde_json::Value = get_json(&s, "/move-race?take,/data");
    assert_eq!(swapper.join().unwrap(), "swapped");
    assert_eq!(took["carried"], 0, "{took}");
    assert!(
        took["refused"].as_u64().unwrap() > 0 && took["moved"].as_u64().unwrap() > 0,
        "the two requests did not overlap: {took}"
    );
    assert_eq!(
        std::fs::read_link(rw.join("a/b/up2")).unwrap(),
        Path::new("../..")
    );
    assert!(rw.join("lk").symlink_metadata().is_err());
}

#[test]
fn a_fifo_in_a_grant_is_refused_not_waited_on() {
    // Only an operator can put one there; opening it would wait for a
    // writer, on the thread the guest's file system calls run on.
    let grant = temp_dir("grant-fifo");
    let fifo = grant.join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::write(grant.join("ok.txt"), "inside").unwrap();
    let dir = format!("{}::/data", grant.display());
    let s = Server::start(&router(), &["--dir", &dir, "--timeout", "300s"]);
    for _ in 0..4 {
        let (status, body) = get(&s, "/read-file?/data/pipe");
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("Permission denied"), "{body}");
    }
    assert_eq!(get(&s, "/read-file?/data/ok.txt"), (200, "inside".into()));
}

#[test]
fn the_host_s_side_of_file_system_calls_is_charged_to_the_tenant() {
    let s = Server::start(&router(), &["--metrics", "127.0.0.1:0"]);
    let ops = s.logged_addr("metrics on ");
    // The process's CPU time, in seconds (USER_HZ is 100 on Linux).
    let process = || -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", s.pid())).unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_name.split(' ').collect();
        (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
    };
    let guest = || {
        series(
            &scrape(ops),
            "rsgi_wasm_guest_cpu_seconds_total{tenant=\"router\"}",
        )
    };
    assert_eq!(get(&s, "/file-calls?10"), (200, "done".into()));
    let (p0, g0) = (process(), guest());
    assert_eq!(get(&s, "/file-calls?20000"), (200, "done".into()));
    let (p1, g1) = (process(), guest());
    // Done on blocking threads, about half of it went uncounted: a
    // tenant's `cpu` cap and fair share did not hold it.
    let (process, guest) = (p1 - p0, g1 - g0);
    assert!(
        guest >= 0.75 * process,
        "the tenant was charged {guest:.2}s of the process's {process:.2}s"
    );
}

#[test]
fn environment_shows_only_grants() {
    let env_file = temp_dir("envfile").join("app.env");
    std::fs::write(&env_file, "# comment\nFROM_FILE=1\nexport QUOTED=\"a b\"\n").unwrap();
    let env_file = env_file.display().to_string();
    // The host process has secrets in its own environment; none may leak.
    std::env::set_var("RSGI_TEST_HOST_SECRET", "leak");
    let s = Server::start(
        &router(),
        &["--env", "GRANTED=yes", "--env-file", &env_file],
    );
    let env: serde_json::Value = get_json(&s, "/os-environ");
    assert_eq!(
        env,
        serde_json::json!({"GRANTED": "yes", "FROM_FILE": "1", "QUOTED": "a b", "SERVER_SOFTWARE": "rsgi-wasm"})
    );
}

#[test]
fn sockets_are_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    let s = Server::start(&router(), &[]);
    let (status, body) = get(&s, &format!("/connect?{target}"));
    assert_eq!(status, 403, "{body}");
    // Without any rule the refusal still says what was refused and how to
    // grant it.
    assert!(
        body.contains("PermissionError")
            && body.contains(
                "rsgi-wasm sandbox: opening a socket is not allowed; add an --allow-net rule"
            ),
        "{body}"
    );
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "the app reached a host socket");
}

#[test]
fn allow_net_opens_exactly_the_listed_address() {
    let allowed = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let allowed_addr = allowed.local_addr().unwrap().to_string();
    // Allowed, but nothing listens there any more.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let s = Server::start(
        &router(),
        &["--allow-net", &allowed_addr, "--allow-net", &closed],
    );
    assert_eq!(
        get(&s, &format!("/connect?{allowed_addr}")),
        (200, "connected".into())
    );
    allowed.accept().unwrap();
    // A refused connect is the app's exception to catch, and the socket it
    // leaves answers `repr` and can be dropped unclosed: wasi-libc ended
    // the instance when asked its address.
    let (status, body) = get(&s, &format!("/connect?{closed}"));
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("ConnectionRefusedError") && body.contains("<socket.socket"),
        "{body}"
    );
    assert!(!s.logs().contains("crashed"), "{}", s.logs());
    let (status, body) = get(&s, &format!("/connect?{}", other.local_addr().unwrap()));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("PermissionError"), "{body}");
    // UDP is off whatever the rules: no rule is suggested.
    let (status, body) = get(&s, "/udp");
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("PermissionError") && body.contains("only TCP connections out"),
        "{body}"
    );
}

#[test]
fn what_an_app_sent_before_closing_its_socket_reaches_the_peer() {
    // A peer that reads only after `delay`, as a busy one does, and counts.
    let late_peer = |delay: u64| {
        let peer = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = peer.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut conn, _) = peer.accept().unwrap();
            std::thread::sleep(Duration::from_secs(delay));
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut conn, &mut got).unwrap();
            got.len()
        });
        (addr, reader)
    };
    // Until it reads, the kernel takes a few MB and the rest waited in
    // wasmtime-wasi's background write, which the close cancelled (3.9 of
    // 8 MiB arrived).
    let (addr, reader) = late_peer(1);
    let s = Server::start(&router(), &["--allow-net", &addr.to_string()]);
    let n = 8 << 20;
    assert_eq!(
        get(&s, &format!("/send?{addr}:{n}")),
        (200, format!("sent {n}"))
    );
    assert_eq!(reader.join().unwrap(), n, "{}", s.logs());
    // A server stopped right after still sends what the host held of it
    // (round DN: the process's end cut it, behind an orderly close).
    let (addr, reader) = late_peer(2);
    let s = Server::start(&router(), &["--allow-net", &addr.to_string()]);
    let (status, said) = get(&s, &format!("/send-nowait?{addr}"));
    assert_eq!(status, 200, "{said}");
    let accepted: usize = said.strip_prefix("accepted ").unwrap().parse().unwrap();
    assert!(accepted > 0, "{said}");
    let logs = s.logs();
    assert!(s.stop("TERM").success());
    assert_eq!(reader.join().unwrap(), accepted, "{logs}");
    // A peer that takes none of them: given up after a while, and said,
    // naming the peer (it sees an orderly end, which cannot be helped).
    let deaf = TcpListener::bind("127.0.0.1:0").unwrap();
    // A small window, so what it does not read stays with the sender.
    let small: libc::c_int = 4096;
    let set = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&deaf),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::from_ref(&small).cast(),
            std::mem::size_of_val(&small) as libc::socklen_t,
        )
    };
    assert_eq!(set, 0);
    let addr = deaf.local_addr().unwrap();
    let s = Server::start(&router(), &["--allow-net", &addr.to_string()]);
    assert_eq!(get(&s, &format!("/send-nowait?{addr}")).0, 200);
    s.wait_for_log(&format!(
        "an app closed its connection to {addr} with bytes its peer had not taken 10s later"
    ));
    drop(deaf);
}

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("tenants.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn serve(config: &Path) -> Server {
    Server::start_with(&["serve", &config.display().to_string()])
}

#[test]
fn infinite_loop_times_out_while_other_apps_answer() {
    let dir = temp_dir("timeout");
    let config = write_config(
        &dir,
        &format!(
            "[[app]]\nname = \"spinner\"\ncomponent = \"{}\"\nhosts = [\"spin.test\"]\ntimeout = \"1s\"\n\n\
             [[app]]\nname = \"hello\"\ncomponent = \"{}\"\nhosts = [\"hello.test\"]\n",
            router().display(),
            hello().display()
        ),
    );
    let s = serve(&config);
    let url = s.url("/spin");
    let spinning = std::thread::spawn(move || {
        let t = Instant::now();
        let r = client()
            .get(url)
            .header("host", "spin.test")
            .send()
            .unwrap();
        (r.status().as_u16(), t.elapsed())
    });
    // While the spinner burns CPU, the other tenant keeps answering.
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..5 {
        assert_eq!(
            get_host(&s, "hello.test", "/"),
            (200, "Hello, World!\n".into())
        );
    }
    let (status, elapsed) = spinning.join().unwrap();
    assert_eq!(status, 504);
    assert!(elapsed < Duration::from_secs(2), "504 after {elapsed:?}");
    // The spinner's app got a fresh instance and serves again.
    assert_eq!(get_host(&s, "spin.test", "/").0, 200);
}

#[test]
fn a_tenant_answers_while_another_spins_on_every_core() {
    let dir = temp_dir("fair");
    let config = write_config(
        &dir,
        &format!(
            "[[app]]\nname = \"spinner\"\ncomponent = \"{}\"\nhosts = [\"spin.test\"]\nworkers = 2\ntimeout = \"60s\"\n\n\
             [[app]]\nname = \"hello\"\ncomponent = \"{}\"\nhosts = [\"hello.test\"]\n",
            router().display(),
            hello().display()
        ),
    );
    let s = serve(&config);
    // Two instances spin (as many as a 2-core machine has cores); their
    // clients are left hanging when the server stops with the test.
    for _ in 0..2 {
        let url = s.url("/spin");
        std::thread::spawn(move || {
            let _ = client().get(url).header("host", "spin.test").send();
        });
    }
    std::thread::sleep(Duration::from_millis(500));
    // Liveness, not speed (the ratio is in `make bench-noisy`): each of 100
    // sequential requests gets its answer within a generous deadline.
    for i in 0..100 {
        let t = Instant::now();
        assert_eq!(
            get_host(&s, "hello.test", "/"),
            (200, "Hello, World!\n".into())
        );
        let took = t.elapsed();
        assert!(took < Duration::from_secs(5), "request {i} took {took:?}");
    }
}

#[test]
fn memory_bomb_gets_5xx_and_the_server_keeps_serving() {
    let s = Server::start(&router(), &["--memory", "96MiB"]);
    let (status, _) = get(&s, "/bomb");
    assert!((500..600).contains(&status), "{status}");
    s.wait_for_log("memory limit");
    assert_eq!(get(&s, "/"), (200, "router\n".into()));
    // An exception whose message takes 24 of the 96 MiB: formatting its
    // report copied it until memory ran out, and the report was lost
    // (round DB). Its message is clipped, and the report logged.
    assert_eq!(get(&s, "/huge-message?24").0, 500);
    s.wait_for_log("characters of the report left out]");
    let logs = s.logs();
    assert!(logs.contains(".HugeMessage: SSS"), "{logs}");
    assert!(!logs.contains("adapter error"), "{logs}");
    assert_eq!(get(&s, "/"), (200, "router\n".into()));
}

/// Recursion without a limit runs the instance out of memory, and the
/// clean-up of the MemoryError out of stack: one line says both, and the
/// replacement is counted once, as the memory limit's (round DB: two
/// lines, "crashed" and "hit its memory limit", counted as a trap).
#[test]
fn recursion_past_memory_is_one_replacement_said_once() {
    let s = Server::start(
        &router(),
        &["--memory", "64MiB", "--metrics", "127.0.0.1:0"],
    );
    let ops = s.logged_addr("metrics on ");
    assert_eq!(get(&s, "/recurse").0, 500);
    let text = wait_for_series(
        ops,
        "rsgi_wasm_instance_recycles_total{tenant=\"router\",cause=\"memory\"}",
        1.0,
    );
    assert_series(
        &text,
        "rsgi_wasm_instance_recycles_total{tenant=\"router\",cause=\"trap\"}",
        0.0,
    );
    let logs = s.logs();
    assert_eq!(logs.matches("replaced").count(), 1, "{logs}");
    assert!(
        logs.contains("64 MiB memory limit") || logs.contains("67108864 byte memory limit"),
        "{logs}"
    );
    assert_eq!(get(&s, "/"), (200, "router\n".into()));
}

/// Deeply nested JSON, parsed by C code that recurses once per level:
/// 5,000 levels parse (wasmtime's default native stack for wasm, 512 KiB,
/// trapped at about 1,500); far deeper ends that instance only.
#[test]
fn deeply_nested_json_parses_and_deeper_ends_only_its_instance() {
    let s = Server::start(&router(), &[]);
    let post = |depth: usize| {
        let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let r = client().post(s.url("/json")).body(body).send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    assert_eq!(post(5_000), (200, "parsed".into()));
    let (status, body) = post(1_000_000);
    assert!(status == 400 || status == 500, "{status} {body}");
    assert_eq!(get(&s, "/"), (200, "router\n".into()));
    assert_eq!(post(5_000), (200, "parsed".into()));
}

#[test]
fn queue_overflow_gets_503_with_retry_after() {
    let s = Server::start(&router(), &["--workers", "1", "--queue", "1"]);
    let slow = |path: &str| {
        let url = s.url(path);
        std::thread::spawn(move || {
            let r = client().get(url).send().unwrap();
            let retry = r.headers().get("retry-after").cloned();
            (r.status().as_u16(), retry)
        })
    };
    let running = slow("/sleep?3");
    s.wait_for_log("sleeping 3");
    let waiting = slow("/sleep?0.1");
    // The second request cannot be observed while it waits; give it ample
    // time to reach the queue (it is held there for ~3 s).
    std::thread::sleep(Duration::from_millis(700));
    let third = slow("/");
    std::thread::sleep(Duration::from_millis(100));
    let more: Vec<_> = (0..5).map(|_| slow("/")).collect();
    // One runs, one waits, one is refused at once: normally the third, but
    // on a loaded machine the second may not have reached the queue first.
    assert_eq!(running.join().unwrap().0, 200);
    let mut outcomes = [waiting.join().unwrap(), third.join().unwrap()];
    outcomes.sort_by_key(|o| o.0);
    assert_eq!(outcomes[0], (200, None));
    assert_eq!(outcomes[1].0, 503);
    assert_eq!(outcomes[1].1.as_ref().unwrap(), "1");
    let refused = more
        .into_iter()
        .map(|t| t.join().unwrap().0)
        .filter(|&status| status == 503)
        .count();
    assert_eq!(refused, 5, "the queue was still full");
    assert_eq!(get(&s, "/").0, 200);
    // Six refusals, one line: a flood of clients is no flood of the log.
    s.wait_for_log("queue full");
    assert_eq!(s.logs().matches("queue full").count(), 1, "{}", s.logs());
}

fn request_count(s: &Server) -> u64 {
    let v: serde_json::Value = get_json(s, "/counters");
    v["requests"].as_u64().unwrap()
}

#[test]
fn pooled_keeps_state_request_isolation_does_not() {
    // Counts start above 1: the build-time warm-up request ran in the
    // snapshot every instance starts from.
    let pooled = Server::start(&router(), &[]);
    let a = request_count(&pooled);
    let b = request_count(&pooled);
    assert_eq!(b, a + 1);
    let isolated = Server::start(
        &router(),
        &["--isolation", "request", "--metrics", "127.0.0.1:0"],
    );
    let ops = isolated.logged_addr("metrics on ");
    let first = request_count(&isolated);
    assert_eq!(
        first, a,
        "a fresh instance is the snapshot plus this request"
    );
    // The next request's instance is made once a response is out, so
    // between requests one waits, never used.
    let warm = scrape(ops)
        .lines()
        .find(|l| l.starts_with("rsgi_wasm_instances{") && l.contains("state=\"warm\""))
        .and_then(|l| l.rsplit_once(' '))
        .map(|(name, _)| name.to_owned())
        .expect("a warm instances series");
    for _ in 0..3 {
        wait_for_series(ops, &warm, 1.0);
        assert_eq!(request_count(&isolated), first);
    }
    // Requests at once (one of them takes the spare being made, the
    // others their own new instances): each still a fresh instance.
    let url = isolated.url("/counters");
    let counts: Vec<u64> = (0..6)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                (0..3)
                    .map(|_| {
                        let v: serde_json::Value =
                            client().get(&url).send().unwrap().json().unwrap();
                        v["requests"].as_u64().unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert!(counts.iter().all(|&n| n == first), "{counts:?}");
    let env: serde_json::Value = get_json(&isolated, "/env");
    assert_eq!(env["wsgi.run_once"], true);
}

/// Whether `run --isolation request` takes its instances from slots here:
/// a kernel with the `PAGEMAP_SCAN` ioctl (Linux 6.7+) and no swap area
/// (else each instance is mapped afresh).
fn machine_gives_slots() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().ok());
    let scan = matches!((parts.next().flatten(), parts.next().flatten()), (Some(major), Some(minor)) if (major, minor) >= (6, 7));
    let swaps = std::fs::read_to_string("/proc/swaps").map_or(true, |l| l.lines().nth(1).is_some());
    scan && !swaps
}

#[test]
fn reused_instance_slots_show_no_request_what_the_last_instance_wrote() {
    // Under request isolation instances come from slots reused between
    // requests: the last instance's pages (beyond the few dozen written
    // runs wasmtime copies back, unmapped) must all read as the snapshot.
    let s = Server::start(
        &router(),
        &[
            "--isolation",
            "request",
            "--workers",
            "3",
            "--memory",
            "256MiB",
        ],
    );
    if machine_gives_slots() {
        s.wait_for_log("instances come from 20 slots reserved now");
    }
    for _ in 0..4 {
        let v = get_json(&s, "/scribble");
        assert_eq!(v["marked_before"], 0, "{v}");
        assert!(v["modules"].as_u64().unwrap() > 100, "{v}");
    }
    // Requests at once: several slots in use, each reset in turn.
    let url = s.url("/scribble");
    let seen: Vec<serde_json::Value> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                (0..3)
                    .map(|_| client().get(&url).send().unwrap().json().unwrap())
                    .collect::<Vec<serde_json::Value>>()
            })
        })
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert!(seen.iter().all(|v| v["marked_before"] == 0), "{seen:?}");
    assert_eq!(request_count(&s), request_count(&s));
}

#[test]
fn max_requests_recycles_instances() {
    let s = Server::start(&router(), &["--max-requests", "3"]);
    let counts: Vec<u64> = (0..6).map(|_| request_count(&s)).collect();
    let n = counts[0];
    assert_eq!(counts, vec![n, n + 1, n + 2, n, n + 1, n + 2]);
}

#[test]
fn tenants_are_routed_by_host_and_prefix_with_their_own_grants() {
    let dir = temp_dir("tenants");
    for t in ["a", "b"] {
        std::fs::create_dir_all(dir.join(t)).unwrap();
        std::fs::write(dir.join(t).join("who.txt"), format!("file of {t}")).unwrap();
    }
    let config = write_config(
        &dir,
        &format!(
            "[[app]]\nname = \"a\"\ncomponent = \"{r}\"\nhosts = [\"a.test\", \"*.a.test\"]\n\
             dirs = [\"a::/data:ro\"]\nenv = {{ WHO = \"a\" }}\n\n\
             [[app]]\nname = \"b\"\ncomponent = \"{r}\"\npath_prefix = \"/b\"\n\
             dirs = [\"b::/data\"]\nenv = {{ WHO = \"b\" }}\nworkers = 2\n",
            r = router().display()
        ),
    );
    let s = serve(&config);
    let env = |host: &str, path: &str| -> serde_json::Value {
        client()
            .get(s.url(path))
            .header("host", host)
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    let a = env("a.test", "/env");
    assert_eq!(a["SCRIPT_NAME"], "");
    assert_eq!(a["PATH_INFO"], "/env");
    assert_eq!(env("x.a.test", "/os-environ")["WHO"], "a");
    let b = env("anything.test", "/b/env");
    assert_eq!(b["SCRIPT_NAME"], "/b");
    assert_eq!(b["PATH_INFO"], "/env");
    assert_eq!(env("anything.test", "/b/os-environ")["WHO"], "b");
    assert_eq!(
        get_host(&s, "a.test", "/read-file?/data/who.txt"),
        (200, "file of a".into())
    );
    assert_eq!(
        get_host(&s, "b.test", "/b/read-file?/data/who.txt"),
        (200, "file of b".into())
    );
    // Unknown host and path: the host's 404, not a tenant's.
    let (status, body) = get_host(&s, "nobody.test", "/elsewhere");
    assert_eq!(status, 404);
    assert!(body.contains("no app is configured"), "{body}");
    // `/bx` is not under the `/b` prefix.
    assert_eq!(get_host(&s, "nobody.test", "/bx").0, 404);
    // Dot segments, which a proxy in front would have removed (and so
    // routed elsewhere), are refused where prefixes route; sent raw, as
    // HTTP clients remove them too.
    for path in ["/b/../env", "/b/%2e%2e/env", "/./b/env", "/b/x/%2E"] {
        let (mut w, mut r) = connect(s.addr);
        write!(w, "GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n").unwrap();
        let res = read_response(&mut r, false);
        assert_eq!(res.status, 400, "{path}");
    }
    // So are encoded slashes where they decide the app: one proxy reads
    // `/b%2Fenv` as under `/b`, another not. Past the prefix they are the
    // app's business.
    // And empty segments, which nginx merges.
    for (path, status) in [
        ("/b%2Fenv", 400),
        ("/b%2fenv", 400),
        ("/b/x%2Fy", 404),
        ("//b/env", 400),
        ("/b//x", 404),
    ] {
        let (mut w, mut r) = connect(s.addr);
        write!(w, "GET {path} HTTP/1.1\r\nHost: nobody.test\r\n\r\n").unwrap();
        let res = read_response(&mut r, false);
        assert_eq!(res.status, status, "{path}");
        if status == 400 {
            let page = String::from_utf8_lossy(&res.body);
            assert!(page.contains("(%2F) or an empty segment (`//`)"), "{page}");
        }
    }
    let (mut w, mut r) = connect(s.addr);
    w.write_all(b"GET /b/..env HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    let res = read_response(&mut r, false);
    assert_eq!(
        (res.status, res.body.as_slice()),
        (404, &b"not found\n"[..]),
        "the app's own 404"
    );
}

#[test]
fn tenant_config_errors_name_file_line_and_field_before_listening() {
    let dir = temp_dir("badconfig");
    let config = write_config(
        &dir,
        &format!(
            "[[app]]\nname = \"a\"\ncomponent = \"{}\"\nmemory = \"lots\"\n",
            router().display()
        ),
    );
    let out = bin()
        .arg("serve")
        .arg(&config)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("tenants.toml:4: app[0].memory"), "{err}");
    assert!(!err.contains("listening on"), "{err}");
    // A CPU share out of range names the field too, on both surfaces.
    let config = write_config(
        &dir,
        &format!(
            "[[app]]\nname = \"a\"\ncomponent = \"{}\"\ncpu = 0\n",
            router().display()
        ),
    );
    let (code, _, err) = run_bin(&["serve", config.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("tenants.toml:4: app[0].cpu"), "{err}");
    let (code, _, err) = run_bin(&["run", router().to_str().unwrap(), "--cpu", "0"]);
    assert_ne!(code, 0);
    assert!(err.contains("--cpu") && err.contains("from 0.01"), "{err}");
    // Disk quotas: the same, in the file and on the command line.
    for (line, field) in [
        ("tmp_size = \"lots\"", "tmp_size"),
        ("tmp_size = \"2TiB\"", "tmp_size"),
        ("dirs = [\".::/d:quota=big\"]", "dirs"),
        ("dirs = [\".::/d:ro:quota=1MiB\"]", "dirs"),
        ("dirs = [\".::/d/../x\"]", "dirs"),
        ("dirs = [\".::/d\", \"./::/d/:ro\"]", "dirs"),
    ] {
        let config = write_config(
            &dir,
            &format!(
                "[[app]]\nname = \"a\"\ncomponent = \"{}\"\n{line}\n",
                router().display()
            ),
        );
        let (code, _, err) = run_bin(&["serve", config.to_str().unwrap()]);
        assert_ne!(code, 0);
        assert!(
            err.contains(&format!("tenants.toml:4: app[0].{field}")),
            "{err}"
        );
    }
    let router = router().display().to_string();
    for args in [["--tmp-size", "lots"], ["--dir", ".::/d:quota=1PiB"]] {
        let mut all = vec!["run", router.as_str()];
        all.extend(args);
        let (code, _, err) = run_bin(&all);
        assert_ne!(code, 0);
        assert!(err.contains(args[0]), "{err}");
    }
    // A quota'd grant with another inside it: writes through the inner one
    // would not count against the quota.
    let outer = temp_dir("quota-outer");
    std::fs::create_dir_all(outer.join("sub")).unwrap();
    let (code, _, err) = run_bin(&[
        "run",
        &router,
        "--dir",
        &format!("{}::/data:quota=1MiB", outer.display()),
        "--dir",
        &format!("{}::/sub", outer.join("sub").display()),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("--dir \"{}::/sub\"", outer.join("sub").display()))
            && err.contains("one of them has a quota"),
        "{err}"
    );
}

/// Apparent bytes of the files under `dir`.
fn du(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            total += du(&entry.path());
        } else {
            total += meta.len();
        }
    }
    total
}

const MIB: u64 = 1 << 20;

/// The fill stopped at the quota: `ENOSPC`, or `EIO` where the write that
/// crossed it went through a stream (the wasip2 wasi-libc bundled with
/// componentize-py maps every failed stream write to `EIO`).
fn assert_full(r: &serde_json::Value, at_most: u64) -> u64 {
    assert!(
        r["errno"] == "ENOSPC" || r["errno"] == "EIO",
        "expected a full disk: {r}"
    );
    let written = r["written"].as_u64().unwrap();
    assert!(written <= at_most && written + 4 * MIB >= at_most, "{r}");
    written
}

#[test]
fn what_a_killed_server_left_in_tmp_is_removed_by_the_next_to_start() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = temp_dir("killed-tmp");
    let tmpdir = tmp.display().to_string();
    let component = router().display().to_string();
    let args = ["run", component.as_str()];
    let env = [("TMPDIR", tmpdir.as_str())];
    let runs = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&tmp)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("rsgi-wasm-run-")
            })
            .collect()
    };
    // Killed outright (SIGKILL, as the OOM killer does) with a file in its
    // app's /tmp: nothing of it can clean up.
    let s = Server::start_env(&args, &env);
    let r = get_json(&s, "/fill?/tmp/left,2");
    assert_eq!(r["written"], 2 << 20, "{r}");
    let left = runs();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(s.stop("KILL").signal(), Some(9));
    assert!(left[0].exists());
    // The next server to start removes it, and keeps its own.
    let s = Server::start_env(&args, &env);
    assert_eq!(client().get(s.url("/")).send().unwrap().status(), 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    while left[0].exists() {
        assert!(
            Instant::now() < deadline,
            "{:?} left:\n{}",
            left[0],
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(runs().len(), 1);
    // One that is stopped removes its own.
    assert!(s.stop("TERM").success());
    assert_eq!(runs(), Vec::<std::path::PathBuf>::new());
}

#[test]
fn tmp_and_granted_directories_are_capped_with_enospc() {
    let tmp_root = temp_dir("quota-tmproot");
    let data = temp_dir("quota-data");
    std::fs::write(data.join("old.bin"), vec![0u8; 3 << 20]).unwrap();
    let grant = format!("{}::/data:quota=8MiB", data.display());
    let s = Server::start_env(
        &[
            "run",
            router().to_str().unwrap(),
            "--dir",
            &grant,
            "--metrics",
            "127.0.0.1:0",
        ],
        &[("TMPDIR", tmp_root.to_str().unwrap())],
    );
    let ops = s.logged_addr("metrics on ");
    // 1 GiB into /tmp stops at the default 64 MiB, and no more reaches the disk.
    assert_full(&get_json(&s, "/fill?/tmp/big,1024"), 64 * MIB);
    assert!(du(&tmp_root) <= 64 * MIB, "{}", du(&tmp_root));
    // The operator is told, once a minute at most, not per failed write.
    s.wait_for_log(" /tmp: disk quota of 67108864 bytes reached");
    s.wait_for_log("(logged at most once a minute) app=router");
    // The app handled it; the next request is fine, and deleting frees room.
    assert_eq!(get(&s, "/").0, 200);
    let r = get_json(&s, "/fill?/tmp/more,10");
    assert_eq!(
        (&r["errno"], r["written"].as_u64()),
        (&"ENOSPC".into(), Some(0)),
        "{r}"
    );
    // Every refusal is counted, though logged once.
    let refusals = "rsgi_wasm_disk_quota_refusals_total{tenant=\"router\"}";
    assert!(series(&scrape(ops), refusals) >= 2.0, "{}", scrape(ops));
    assert_eq!(get(&s, "/remove?/tmp/big"), (200, "removed".into()));
    let r = get_json(&s, "/fill?/tmp/again,40");
    assert_eq!(
        (r["written"].as_u64(), &r["errno"]),
        (Some(40 * MIB), &serde_json::Value::Null),
        "{r}"
    );
    assert_eq!(get(&s, "/remove?/tmp/again").0, 200);
    // A file deleted while open (tempfile.TemporaryFile) holds its space
    // until it is closed, as on a real disk; then it is given back.
    let r = get_json(&s, "/fill-temp?40,40");
    assert_eq!(r["first"]["written"].as_u64(), Some(40 * MIB), "{r}");
    assert_full(&r["second"], 24 * MIB);
    let r = get_json(&s, "/fill?/tmp/after,60");
    assert_eq!(r["written"].as_u64(), Some(60 * MIB), "{r}");
    // A truncation the host refuses (a read-only descriptor) gives nothing
    // back; the quota is still full.
    assert_eq!(
        get(&s, "/fs-op?ftruncate-ro,/tmp/after"),
        (200, "EINVAL".into())
    );
    let r = get_json(&s, "/fill?/tmp/more,10");
    assert_eq!(r["written"].as_u64(), Some(4 * MIB), "{r}");
    assert_eq!(get(&s, "/remove?/tmp/more").0, 200);
    // Space cannot move between budgets: a rename across them is EXDEV, as
    // across mounts, and shutil.move copies instead (within /data's quota).
    assert_eq!(
        get(&s, "/fs-op?rename,/tmp/after,/data/after"),
        (200, "EXDEV".into())
    );
    let (_, moved) = get(&s, "/fs-op?move,/tmp/after,/data/after");
    assert!(moved == "ENOSPC" || moved == "EIO", "{moved}");
    assert!(du(&data) <= 8 * MIB, "{}", du(&data));
    assert_eq!(get(&s, "/remove?/data/after").0, 200);
    // A second name costs a block too.
    assert_eq!(get(&s, "/fs-op?link,/tmp/after,/tmp/again").1, "ok");
    // A sparse file counts at the size it could fill.
    let r = get_json(&s, "/sparse?/tmp/sparse,1099511627776");
    assert_eq!(
        (&r["write"], &r["truncate"]),
        (&"ENOSPC".into(), &"ENOSPC".into()),
        "{r}"
    );
    // A granted directory's quota counts what was there already.
    assert_full(&get_json(&s, "/fill?/data/new.bin,100"), 5 * MIB);
    assert!(du(&data) <= 8 * MIB, "{}", du(&data));
    s.wait_for_log(" /data: disk quota of 8388608 bytes reached");
    assert_eq!(s.logs().matches(" /tmp: disk quota of").count(), 1);
    assert_eq!(
        std::fs::metadata(data.join("old.bin")).unwrap().len(),
        3 << 20
    );
}

/// A tenant that can replace its own component (hosts taking strangers'
/// uploads) must not be able to stop the server's start: with
/// `--tolerate-broken`, a garbage or missing component takes down only its
/// own tenant (503, logged), and once fixed it serves without a restart.
#[test]
fn a_broken_component_takes_only_its_own_tenant_down_with_tolerate_broken() {
    let dir = temp_dir("tolerate-broken");
    let broken = dir.join("broken.wasm");
    std::fs::write(&broken, b"not a component").unwrap();
    let config = write_config(
        &dir,
        &format!(
            "[[app]]\nname = \"good\"\ncomponent = \"{}\"\nhosts = [\"good.test\"]\n\n\
             [[app]]\nname = \"broken\"\ncomponent = \"{}\"\nhosts = [\"broken.test\"]\n\n\
             [[app]]\nname = \"gone\"\ncomponent = \"{}\"\nhosts = [\"gone.test\"]\n",
            hello().display(),
            broken.display(),
            dir.join("gone.wasm").display()
        ),
    );
    let config = config.display().to_string();
    // Without it the start fails, naming the file, as before.
    let (code, _, err) = run_bin(&["serve", &config, "--listen", "127.0.0.1:0"]);
    assert_ne!(code, 0);
    assert!(err.contains("gone.wasm does not exist"), "{err}");
    let s = Server::start_with(&["serve", &config, "--tolerate-broken"]);
    assert_eq!(get_host(&s, "good.test", "/").0, 200);
    assert_eq!(get_host(&s, "broken.test", "/").0, 503);
    assert_eq!(get_host(&s, "gone.test", "/").0, 503);
    s.wait_for_log("not a WebAssembly file");
    assert_eq!(
        s.logs()
            .matches("this app answers 503 until its component is fixed")
            .count(),
        2,
        "{}",
        s.logs()
    );
    // With --preload too (the Deployment's flag): the others load, the
    // broken ones answer 503 (round DE: the start failed).
    let p = Server::start_with(&["serve", &config, "--tolerate-broken", "--preload"]);
    assert_eq!(get_host(&p, "good.test", "/").0, 200);
    assert_eq!(get_host(&p, "broken.test", "/").0, 503);
    assert_eq!(
        p.logs()
            .matches("--preload: not loaded, served 503")
            .count(),
        2,
        "{}",
        p.logs()
    );
    drop(p);
    // A load known to fail makes no room: under --max-loaded 1 the good
    // app stays loaded (round DE: each try of a broken upload unloaded a
    // healthy app).
    let q = Server::start_with(&[
        "serve",
        &config,
        "--tolerate-broken",
        "--max-loaded",
        "1",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let ops = q.logged_addr("metrics on ");
    assert_eq!(get_host(&q, "good.test", "/").0, 200);
    assert_eq!(get_host(&q, "broken.test", "/").0, 503);
    assert_eq!(get_host(&q, "gone.test", "/").0, 503);
    let m = scrape(ops);
    assert_series(&m, "rsgi_wasm_tenant_loaded{tenant=\"good\"}", 1.0);
    assert!(!q.logs().contains("to make room"), "{}", q.logs());
    drop(q);
    // Fixed in place, it serves at a later load (failed loads answer 503
    // for a few seconds before the next try), with no reload.
    std::fs::copy(hello(), &broken).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while get_host(&s, "broken.test", "/").0 != 200 {
        assert!(Instant::now() < deadline, "{}", s.logs());
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(get_host(&s, "good.test", "/").0, 200);
}

/// Under `serve` one app's responses may hold at most half of
/// `--max-response-buffer`: slow clients of one app's large responses
/// leave the other apps room for theirs.
#[test]
fn one_app_s_slow_clients_leave_the_others_room_in_the_response_buffer() {
    let dir = temp_dir("held-halves");
    let config = write_config(
        &dir,
        &format!(
            "[[app]]\nname = \"slow\"\ncomponent = \"{0}\"\nhosts = [\"slow.test\"]\n\n\
             [[app]]\nname = \"other\"\ncomponent = \"{0}\"\nhosts = [\"other.test\"]\n",
            router().display()
        ),
    );
    let s = Server::start_with(&[
        "serve",
        &config.display().to_string(),
        "--max-response-buffer",
        "40MiB",
        "--header-timeout",
        "1s",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let ops = s.logged_addr("metrics on ");
    let slow = SlowReader::start(s.addr, "slow.test", "/one-chunk?16000000,return");
    std::thread::sleep(Duration::from_millis(500));
    // Its own half is full; the other app's is not.
    assert_eq!(
        get_host(&s, "slow.test", "/one-chunk?16000000,return").0,
        503
    );
    s.wait_for_log(
        "this app's responses waiting for their clients held all 20 MiB one app may hold",
    );
    let (status, body) = get_host(&s, "other.test", "/one-chunk?16000000,return");
    assert_eq!((status, body.len()), (200, 16_000_000));
    // The refusal counts among the tenant's 503s, as a full queue's does.
    let text = scrape(ops);
    assert_series(&text, "rsgi_wasm_rejected_total{tenant=\"slow\"}", 1.0);
    assert_series(&text, "rsgi_wasm_rejected_total{tenant=\"other\"}", 0.0);
    // It held no more than an equal share (half, between two apps):
    // nothing was taken back from it.
    assert!(!slow.was_cut());
    assert!(!s.logs().contains("waited for room"), "{}", s.logs());
    slow.leave();
}

/// Two apps' slow clients, each holding the half one app may, fill the
/// response buffer: a third app's large response takes room back from
/// one of them (the slowest of those over an equal share) instead of
/// getting 503, and the cut one is said in the log.
#[test]
fn an_app_waiting_for_response_buffer_room_takes_it_back_from_apps_over_their_share() {
    let dir = temp_dir("held-fair");
    let app = |name: &str| {
        format!(
            "[[app]]\nname = \"{name}\"\ncomponent = \"{}\"\nhosts = [\"{name}.test\"]\n\n",
            router().display()
        )
    };
    let config = write_config(&dir, &(app("slow1") + &app("slow2") + &app("other")));
    let s = Server::start_with(&[
        "serve",
        &config.display().to_string(),
        "--max-response-buffer",
        "40MiB",
        "--header-timeout",
        "2s",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let ops = s.logged_addr("metrics on ");
    let path = "/one-chunk?16000000,return";
    let slow = [
        SlowReader::start(s.addr, "slow1.test", path),
        SlowReader::start(s.addr, "slow2.test", path),
    ];
    for tenant in ["slow1", "slow2"] {
        let held = format!("rsgi_wasm_response_buffer_bytes{{tenant=\"{tenant}\"}}");
        wait_for_series(ops, &held, 16_000_000.0);
    }
    let (status, body) = get_host(&s, "other.test", path);
    assert_eq!((status, body.len()), (200, 16_000_000));
    s.wait_for_log("while app other waited for room in --max-response-buffer");
    // One cut frees enough: the other slow client reads on.
    wait_until("a slow client cut", || slow.iter().any(SlowReader::was_cut));
    assert_eq!(slow.iter().filter(|r| r.was_cut()).count(), 1);
    let logs = s.logs();
    assert_eq!(logs.matches("waited for room").count(), 1, "{logs}");
    // The line names the request and its client, to be matched with its
    // access line.
    let cut = logs
        .lines()
        .find(|l| l.contains("waited for room"))
        .expect("counted above");
    assert!(
        cut.contains(&format!("request=GET {path} peer=127.0.0.1:")),
        "{cut}"
    );
    let text = scrape(ops);
    assert_series(&text, "rsgi_wasm_rejected_total{tenant=\"other\"}", 0.0);
    for r in slow {
        r.leave();
    }
}

/// A response buffer larger than the memory the process may use is
/// taken, but said at start: it bounds nothing then.
#[test]
fn a_response_buffer_beyond_the_machine_s_memory_is_warned_of() {
    let s = Server::start(&hello(), &["--max-response-buffer", "1TiB"]);
    s.wait_for_log("--max-response-buffer 1048576 MiB is more than the");
    assert_eq!(get(&s, "/").0, 200);
    let s = Server::start(&hello(), &["--max-response-buffer", "64MiB"]);
    assert_eq!(get(&s, "/").0, 200);
    assert!(!s.logs().contains("--max-response-buffer"), "{}", s.logs());
}

#[test]
fn a_tenant_flooding_its_output_is_rate_limited() {
    let dir = temp_dir("log-flood");
    let config = write_config(
        &dir,
        &format!(
            "[[app]]\nname = \"loud\"\ncomponent = \"{}\"\nhosts = [\"loud.test\"]\nlog_rate = \"4KiB\"\n\n\
             [[app]]\nname = \"hello\"\ncomponent = \"{}\"\nhosts = [\"hello.test\"]\n",
            router().display(),
            hello().display()
        ),
    );
    let s = Server::start_with(&[
        "serve",
        &config.display().to_string(),
        "--metrics",
        "127.0.0.1:0",
    ]);
    let ops = s.logged_addr("metrics on ");
    // 10 MB of output: the app is not slowed or failed, its log is capped.
    let t = Instant::now();
    assert_eq!(
        get_host(&s, "loud.test", "/flood?100000"),
        (200, "flooded".into())
    );
    let took = t.elapsed().as_secs_f64();
    // Its own error, raised while its output is being dropped, is still
    // logged with its traceback: reports have a budget of their own.
    assert_eq!(get_host(&s, "loud.test", "/error").0, 500);
    s.wait_for_log("error in the WSGI app serving GET /error");
    s.wait_for_log("[loud stderr] RuntimeError");
    assert_eq!(get_host(&s, "hello.test", "/").0, 200);
    s.wait_for_log("logging faster than 4096 bytes/s");
    let logged = s.logs().matches("[loud stdout] fff").count();
    // Each 100-byte line costs 128 bytes of the budget: a 16 KiB burst is
    // 128 lines, and 4 KiB a second for as long as the flood ran adds 32 a
    // second (the bound follows the run's own length, however slow).
    let at_most = 128 + (32.0 * took).ceil() as usize + 1;
    assert!(
        logged >= 128 && logged <= at_most,
        "{logged} lines logged in {took:.1} s (at most {at_most})"
    );
    // The bytes dropped are counted per tenant, each line as the app
    // wrote it (99 bytes and its newline).
    let text = scrape(ops);
    let dropped = series(
        &text,
        "rsgi_wasm_guest_output_dropped_bytes_total{tenant=\"loud\"}",
    );
    let lines = dropped / 100.0;
    assert!(
        lines.fract() == 0.0 && lines >= (100_000 - at_most) as f64 && lines <= 100_000.0 - 128.0,
        "{dropped} bytes dropped\n{text}"
    );
    // When output fits again, what was dropped is counted in the log.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(get_host(&s, "loud.test", "/print").0, 200);
    s.wait_for_log("of output were dropped by the log rate limit");
    // Every line about the app ends in its name, the guest's own lines
    // and the limit's notices alike: a filter for one app sees them all.
    let logs = s.logs();
    let about: Vec<&str> = logs
        .lines()
        .filter(|l| {
            l.contains("[loud ") || l.contains("log rate limit") || l.contains("logging faster")
        })
        .collect();
    assert!(about.len() >= 130, "{}", about.len());
    for line in about {
        assert!(line.ends_with(" app=loud"), "{line}");
    }
}

#[test]
fn open_files_are_capped_per_app_and_given_back() {
    let s = Server::start(
        &router(),
        &[
            "--workers",
            "2",
            "--max-open-files",
            "50",
            "--metrics",
            "127.0.0.1:0",
            "--allow-net",
            "127.0.0.1:9",
        ],
    );
    let ops = s.logged_addr("metrics on ");
    // Host descriptors are a process-wide resource: one app gets its cap,
    // and the host keeps accepting connections.
    for _ in 0..3 {
        let r = get_json(&s, "/open-many?/1/app.py,100000");
        assert_eq!(
            (&r["opened"], &r["errno"]),
            (&50.into(), &"ENOMEM".into()),
            "{r}"
        );
    }
    // The operator is told, once for the three refusals.
    s.wait_for_log("files open, the app's max_open_files (raise it with --max-open-files,");
    assert_eq!(s.logs().matches("the app's max_open_files").count(), 1);
    // ... and every refusal is counted.
    let refusals = "rsgi_wasm_open_files_refusals_total{tenant=\"router\"}";
    assert!(series(&scrape(ops), refusals) >= 3.0, "{}", scrape(ops));
    let r = get_json(&s, "/open-many?/tmp/f,100000,stream");
    assert_eq!(r["errno"], "ENOMEM", "{r}");
    assert!(r["opened"].as_u64().unwrap() <= 50, "{r}");
    assert_eq!(get(&s, "/").0, 200);
    let r = get_json(&s, "/open-many?/1/app.py,10");
    assert_eq!(
        (&r["opened"], &r["errno"]),
        (&10.into(), &serde_json::Value::Null),
        "{r}"
    );
    // Sockets are host descriptors too, made before any connection the
    // rules could refuse: counted the same, and given back when closed.
    for _ in 0..3 {
        let r = get_json(&s, "/open-many?socket,100000");
        assert_eq!(
            (&r["opened"], &r["errno"]),
            (&50.into(), &"EMFILE".into()),
            "{r}"
        );
    }
    // Counted with the files' refusals (the log says so once a minute).
    assert!(series(&scrape(ops), refusals) >= 6.0, "{}", scrape(ops));
    assert_eq!(get(&s, "/").0, 200);
}

/// A file the host sends for `wsgi.file_wrapper` stays open while a slow
/// client takes it, after the request's instance has moved on. Such files
/// are capped (`max_open_files` of them), or clients that never read would
/// let one app hold descriptors without bound; and apart from the app's
/// own opens, or those clients would make every `open()` of the app fail.
#[test]
fn files_sent_for_file_wrapper_are_capped_apart_from_the_app_s_own_opens() {
    let grant = grant_with_a_big_file(&temp_dir("sent-files"));
    let s = Server::start(
        &router(),
        &[
            "--workers",
            "4",
            "--max-open-files",
            "2",
            "--dir",
            &grant,
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let ops = s.logged_addr("metrics on ");
    let held = "rsgi_wasm_open_files{tenant=\"router\"}";
    let opened = || get_json(&s, "/open-many?/sync/big,100")["opened"].clone();
    assert_eq!(opened(), 2);
    // The head has arrived, so the file is being sent; the body is left
    // unread.
    let stall = || stalled_download(s.addr, "/file?big");
    let mut stalled = vec![stall(), stall()];
    assert_eq!(opened(), 2, "the host's sent files took the app's own");
    // Past the cap the app streams the file itself, from an instance that
    // holds its own descriptor for it.
    stalled.push(stall());
    s.wait_for_log("files already being sent for wsgi.file_wrapper");
    assert_eq!(opened(), 1);
    // The operator sees them: two being sent, one the app's own.
    wait_for_series(ops, held, 3.0);
    // Closed by their clients, the responses end and give everything back.
    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(30);
    while opened() != 2 {
        assert!(Instant::now() < deadline, "files still held: {}", opened());
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for_series(ops, held, 0.0);
}

/// Each app's cap does not stop apps together from taking every
/// descriptor of the process: guests get at most half of its limit (an
/// app granted more is warned of at start), and the server keeps accepting.
#[test]
fn apps_together_get_at_most_half_the_process_s_open_files() {
    let component = router();
    let s = Server::start_with_nofile(
        400,
        &[
            "run",
            component.to_str().unwrap(),
            "--max-open-files",
            "5000",
            "--allow-net",
            "127.0.0.1:9",
        ],
    );
    // Said at start, before any open fails.
    s.wait_for_log("max_open_files 5000 is above the 200 files all apps may hold");
    let r = get_json(&s, "/open-many?/1/app.py,5000");
    assert_eq!(r["errno"], "ENOMEM", "{r}");
    assert!(r["opened"].as_u64().unwrap() <= 200, "{r}");
    // The app holding the most is named: the one refused may not be it.
    s.wait_for_log("half the process's open-file limit; app router holds the most, 200");
    let r = get_json(&s, "/open-many?socket,5000");
    assert_eq!(r["errno"], "EMFILE", "{r}");
    assert!(r["opened"].as_u64().unwrap() <= 200, "{r}");
    for _ in 0..20 {
        assert_eq!(get(&s, "/").0, 200);
    }
}

/// A log reader that stops reading (a busy journald, a log shipper
/// backed up) fills the server's stderr pipe: requests go on being
/// served, lines past the log's queue are dropped and counted, and the
/// drop is said once the reader takes lines again.
#[test]
fn a_log_reader_that_stops_reading_does_not_stop_the_server() {
    let s = Server::start(
        &router(),
        &["--log-rate", "1GiB", "--metrics", "127.0.0.1:0"],
    );
    let ops = s.logged_addr("metrics on ");
    s.pause_log_reading(true);
    // About 40 MB of log lines: past the pipe's 64 KiB and the queue's
    // 16 MiB. Before, the first few hundred lines blocked every request.
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    for _ in 0..25 {
        let r = client.get(s.url("/flood?10000")).send().unwrap();
        assert_eq!(r.text().unwrap(), "flooded");
    }
    let dropped = series(&scrape(ops), "rsgi_wasm_log_lines_dropped_total");
    assert!(dropped > 0.0, "nothing dropped");
    s.pause_log_reading(false);
    s.wait_for_log("log lines (");
    assert!(s.logs().contains("were dropped: stderr did not take them"));
}

#[test]
fn temporary_files_go_to_tmp_though_the_build_asked_where_they_go() {
    // The router asks tempfile at import, when the build has no /tmp.
    let s = Server::start(&router(), &[]);
    let r = get_json(&s, "/tempdir");
    assert_eq!(r["now"], "/tmp", "{r}");
    assert_ne!(r["build"], "/tmp", "{r}");
}

#[test]
fn an_upload_spooled_to_tmp_gives_its_space_back_when_its_request_ends() {
    let s = Server::start(&router(), &["--tmp-size", "8MiB"]);
    let spool = |mib: usize| {
        let r = client()
            .post(s.url("/spool"))
            .body(vec![b'u'; mib << 20])
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    // Each file stays open in a reference cycle after its request, as a
    // framework's upload does; collected then, its space comes back at
    // once, so the next upload still fits the quota.
    assert_eq!(spool(3), (200, (3usize << 20).to_string()));
    assert_eq!(spool(6), (200, (6usize << 20).to_string()));
    assert_eq!(spool(6), (200, (6usize << 20).to_string()));
}

#[test]
fn per_request_tmp_directories_share_one_quota_and_free_it() {
    let dir = temp_dir("quota-tenants");
    let config = write_config(
        &dir,
        &format!(
            "[[app]]\nname = \"small\"\ncomponent = \"{}\"\nisolation = \"request\"\nworkers = 2\ntmp_size = \"2MiB\"\n",
            router().display()
        ),
    );
    let s = serve(&config);
    for _ in 0..3 {
        // Each request gets a fresh /tmp; the one before is gone, and with
        // it its charge (dropped just after its answer, so allow a moment).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = get_json(&s, "/fill?/tmp/big,100");
            let written = assert_full(&r, 2 * MIB);
            if written == 2 * MIB {
                break;
            }
            assert!(Instant::now() < deadline, "quota never freed: {r}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // What one request left in its /tmp, the next never sees: the host
    // hands an ended instance's directory on only once it is emptied.
    for _ in 0..6 {
        assert_eq!(get(&s, "/write-file?/tmp/left").0, 200);
        let (status, body) = get(&s, "/read-file?/tmp/left");
        assert_eq!(status, 403, "{body}");
        let (status, body) = get(&s, "/read-file?/tmp/big");
        assert_eq!(status, 403, "{body}");
    }
}

#[test]
fn sighup_reload_swaps_apps_without_losing_requests() {
    let dir = temp_dir("reload");
    let one = format!(
        "[[app]]\nname = \"router\"\ncomponent = \"{}\"\nenv = {{ GEN = \"1\" }}\n",
        router().display()
    );
    let config = write_config(&dir, &one);
    let s = serve(&config);
    let url = s.url("/sleep?1.5");
    let in_flight = std::thread::spawn(move || {
        let r = client().get(url).send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    });
    s.wait_for_log("sleeping 1.5");
    // A changed app (new env) and a new one under /hello.
    let two = format!(
        "{}\n[[app]]\nname = \"hello\"\ncomponent = \"{}\"\npath_prefix = \"/hello\"\n",
        one.replace("GEN = \"1\"", "GEN = \"2\""),
        hello().display()
    );
    std::fs::write(&config, two).unwrap();
    s.signal("HUP");
    // The log says what changed.
    s.wait_for_log("reloaded: 2 apps (added hello; changed router)");
    assert_eq!(in_flight.join().unwrap(), (200, "slept".into()));
    let env: serde_json::Value = get_json(&s, "/os-environ");
    assert_eq!(env["GEN"], "2");
    assert_eq!(get(&s, "/hello/"), (200, "Hello, World!\n".into()));
    // A broken config leaves the running one in place.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&config)
        .unwrap();
    writeln!(
        f,
        "[[app]]\nname = \"broken\"\ncomponent = \"missing.wasm\""
    )
    .unwrap();
    drop(f);
    s.signal("HUP");
    s.wait_for_log("reload failed, still serving the previous config");
    assert_eq!(get(&s, "/hello/"), (200, "Hello, World!\n".into()));
    std::fs::write(&config, &one).unwrap();
    s.signal("HUP");
    s.wait_for_log("reloaded: 1 app (changed router; removed hello)");
    s.signal("HUP");
    s.wait_for_log("reloaded: 1 app (nothing changed)");
}

#[test]
fn routes_match_the_host_however_it_is_spelt_and_the_decoded_path() {
    let dir = temp_dir("route-forms");
    let app = |name: &str, extra: &str| {
        format!(
            "[[app]]\nname = \"{name}\"\ncomponent = \"{}\"\nenv = {{ WHO = \"{name}\" }}\n{extra}\n",
            router().display()
        )
    };
    let config = write_config(
        &dir,
        &[
            app("a", "hosts = [\"a.test\"]"),
            app("b", "hosts = [\"b.test\"]\npath_prefix = \"/app\""),
            app("c", ""),
        ]
        .concat(),
    );
    let s = serve(&config);
    // Connection: close, so `raw` reads to the end of one response.
    let who = |target: &str, host: &str| {
        let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let resp = raw(s.addr, req.as_bytes());
        let status = status_of(&resp);
        let text = String::from_utf8_lossy(&resp);
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        let who = serde_json::from_str::<serde_json::Value>(&body)
            .map(|v| v["WHO"].as_str().unwrap_or("").to_owned())
            .unwrap_or_default();
        (status, who)
    };
    assert_eq!(who("/app/os-environ", "b.test"), (200, "b".into()));
    assert_eq!(who("/app/os-environ", "B.Test.:80"), (200, "b".into()));
    // The route is the decoded path's, as the app's PATH_INFO is.
    assert_eq!(who("/ap%70/os-environ", "b.test"), (200, "b".into()));
    assert_eq!(who("/os-environ", "b.test"), (200, "c".into()));
    // An absolute target names the host; a Host that disagrees is refused.
    assert_eq!(
        who("http://b.test/app/os-environ", "b.test"),
        (200, "b".into())
    );
    assert_eq!(who("http://b.test/app/os-environ", "a.test").0, 400);
    assert_eq!(who("/os-environ", "a.test"), (200, "a".into()));
}

#[test]
fn a_component_replaced_with_its_old_time_runs_its_new_version_after_a_reload() {
    let dir = temp_dir("same-time");
    let file = dir.join("app.wasm");
    std::fs::copy(hello(), &file).unwrap();
    let config = write_config(
        &dir,
        &format!(
            "[[app]]\nname = \"x\"\ncomponent = \"{}\"\nidle_timeout = \"0\"\n",
            file.display()
        ),
    );
    let s = serve(&config);
    assert_eq!(get(&s, "/"), (200, "Hello, World!\n".into()));
    // Another build moved into place with the old file's modification time
    // (as `cp -p`, `rsync -t` or an unpacked archive leave it).
    let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    let next = dir.join("next.wasm");
    std::fs::copy(router(), &next).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&next)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::fs::rename(&next, &file).unwrap();
    s.signal("HUP");
    s.wait_for_log("reloaded: 1 app");
    assert_eq!(get(&s, "/"), (200, "router\n".into()));
}

#[test]
fn reloading_survives_out_of_range_values_and_keeps_working() {
    let dir = temp_dir("reload-range");
    let app = |extra: &str| {
        format!(
            "[[app]]\nname = \"hello\"\ncomponent = \"{}\"\n{extra}",
            hello().display()
        )
    };
    let config = write_config(&dir, &app(""));
    let s = serve(&config);
    // Values that used to panic the reload task (and so end reloading).
    for (n, bad) in [
        "timeout = \"1e300\"\n",
        "max_requests_jitter = 9223372036854775807\n",
        "memory = \"1e300GiB\"\n",
        "workers = -1\n",
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(&config, app(bad)).unwrap();
        s.signal("HUP");
        s.wait_for_log_count("reload failed, still serving the previous config", n + 1);
        assert_eq!(get(&s, "/"), (200, "Hello, World!\n".into()));
    }
    // The next good config still reloads.
    std::fs::write(&config, app("path_prefix = \"/v2\"\n")).unwrap();
    s.signal("HUP");
    s.wait_for_log("reloaded: 1 app");
    assert_eq!(get(&s, "/v2/"), (200, "Hello, World!\n".into()));
    // And the same values on the command line are errors, not panics.
    for (flag, value) in [
        ("--timeout", "1e300"),
        ("--max-requests-jitter", "18446744073709551615"),
        ("--memory", "1e300GiB"),
    ] {
        let (code, _, err) = run_bin(&["run", hello().to_str().unwrap(), flag, value]);
        assert_eq!(code, 2, "{flag} {value}: {err}");
        assert!(err.contains(flag), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// A flag that changes nothing on its own is said, not silently taken.
#[test]
fn a_jitter_without_max_requests_is_warned_of() {
    let s = Server::start(&hello(), &["--max-requests-jitter", "5"]);
    s.wait_for_log(
        "max_requests_jitter (--max-requests-jitter) has no effect without max_requests",
    );
    assert_eq!(get(&s, "/"), (200, "Hello, World!\n".into()));
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let s = Server::start(&router(), &["--header-timeout", "1s"]);
    let (mut w, mut r) = connect(s.addr);
    w.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut r, false).status, 200);
    let t = Instant::now();
    let mut rest = Vec::new();
    let n = std::io::Read::read_to_end(&mut r, &mut rest).unwrap_or(0);
    assert_eq!(n, 0, "idle connection was closed, not answered");
    assert!(t.elapsed() < Duration::from_secs(20));
}

/// A connection on which no request begins, because the client sends
/// nothing, only part of the HTTP/2 preface or part of a head, is closed
/// at the header timeout instead of holding its slot: with every slot taken by such
/// clients, a real one is served once they are gone.
#[test]
fn connections_without_a_request_are_closed_at_the_header_timeout() {
    let s = Server::start(
        &router(),
        &["--header-timeout", "1s", "--max-connections", "3"],
    );
    let silent: Vec<_> = [
        &b""[..],
        b"PRI * HTTP/2.0\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n",
    ]
    .into_iter()
    .map(|sent| {
        let (mut w, r) = connect(s.addr);
        w.write_all(sent).unwrap();
        (w, r)
    })
    .collect();
    let served = std::thread::spawn({
        let url = s.url("/");
        move || client().get(url).send().map(|r| r.status().as_u16())
    });
    for (_w, mut r) in silent {
        r.get_ref()
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut rest = Vec::new();
        match std::io::Read::read_to_end(&mut r, &mut rest) {
            Ok(_) => assert!(rest.is_empty(), "{rest:?}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
    assert_eq!(served.join().unwrap().unwrap(), 200);
    // The head begun and never finished (a slow-headers attack's way of
    // holding a slot) is logged and counted as a 408; the silent ones,
    // like idle keep-alive connections, are not.
    s.wait_for_log("\"- -\" 408");
    let logs = s.logs();
    assert_eq!(
        logs.matches("no complete request head within 1s").count(),
        1,
        "{logs}"
    );
}

/// A client that stops sending its body, or stops reading the response,
/// holds the app's only instance for `--header-timeout`, not `--timeout`:
/// the stalled upload gets 408, as does one trickling its bytes, and the
/// next client is served.
#[test]
fn clients_that_stall_free_the_instance_at_the_header_timeout() {
    let s = Server::start(
        &router(),
        &[
            "--workers",
            "1",
            "--timeout",
            "300s",
            "--header-timeout",
            "1s",
        ],
    );
    let (mut w, mut r) = connect(s.addr);
    w.write_all(b"POST /length HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nab")
        .unwrap();
    r.get_ref()
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    assert_eq!(read_response(&mut r, false).status, 408);

    // A byte every 200 ms: never a stall of 1 s, but far under 1 KiB/s.
    let (mut w, mut r) = connect(s.addr);
    w.write_all(b"POST /length HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        .unwrap();
    let trickle = std::thread::spawn(move || {
        for _ in 0..1000 {
            std::thread::sleep(Duration::from_millis(200));
            if w.write_all(b"a").is_err() {
                return;
            }
        }
    });
    r.get_ref()
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    assert_eq!(read_response(&mut r, false).status, 408);
    drop(r);
    trickle.join().unwrap();
    s.wait_for_log("slower than 1024 bytes/s");
    assert_line_names_app(&s, "slower than 1024 bytes/s");

    // A response nobody reads: 50 MiB, far more than the socket buffers.
    let (mut w, _r) = connect(s.addr);
    w.write_all(b"GET /big?52428800 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    s.wait_for_log("took no response bytes");
    // Cut by the socket's write deadline, which knows no request: the
    // line names the one the connection was answering, as the body's do.
    assert_line_names_app(&s, "took no response bytes");
    let logs = s.logs();
    let cut = logs.lines().find(|l| l.contains("took no response bytes"));
    assert!(
        cut.is_some_and(|l| l.contains("request=GET /big?52428800 peer=127.0.0.1:")),
        "{logs}"
    );
    let quick = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let r = quick.get(s.url("/")).send().unwrap();
    assert_eq!(r.status(), 200);
}

/// With `--timeout` shorter than `--header-timeout`, a client that stalls
/// its body runs the request out of time while the app waits for it: the
/// client's doing, so 408 and a `slow_client` recycle, not an app timeout.
#[test]
fn a_body_stalled_past_the_request_timeout_is_the_client_s_408() {
    let s = Server::start(
        &router(),
        &[
            "--timeout",
            "1s",
            "--header-timeout",
            "60s",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let ops = s.logged_addr("metrics on ");
    let (mut w, mut r) = connect(s.addr);
    w.write_all(b"POST /length HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nab")
        .unwrap();
    r.get_ref()
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let resp = read_response(&mut r, false);
    assert_eq!(resp.status, 408);
    assert_eq!(resp.header("connection"), Some(&b"close"[..]));
    s.wait_for_log("while the app waited for the client to send the request body");
    let metrics = scrape(ops);
    assert_eq!(
        series(&metrics, "rsgi_wasm_timeouts_total{tenant=\"router\"}"),
        0.0,
        "{metrics}"
    );
    assert_eq!(
        series(
            &metrics,
            "rsgi_wasm_instance_recycles_total{tenant=\"router\",cause=\"slow_client\"}"
        ),
        1.0,
        "{metrics}"
    );
    // An app that runs out of time on its own is still a 504.
    assert_eq!(get(&s, "/sleep?5").0, 504);
    assert_eq!(get(&s, "/").0, 200);
}

#[test]
fn compiled_code_is_only_loaded_from_a_private_cache() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("open-cache");
    // The refusal, with the cache directory's mode set to `mode`.
    let refused_with = |mode: u32| {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = bin()
            .args(["run", hello().to_str().unwrap(), "--listen", "127.0.0.1:0"])
            .arg("--cache-dir")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused_with(0o777);
    assert!(err.contains("chmod go-w"), "{err}");
    assert!(!err.contains("listening on"), "{err}");
    // A shared one like /tmp is not to be changed: use one inside it.
    let err = refused_with(0o1777);
    assert!(err.contains("a directory of your own inside it"), "{err}");
    assert!(!err.contains("chmod"), "{err}");
    // Open to others' reading, it is closed (it holds the apps' code and
    // its secrets); and an entry made writable by a permissive umask in a
    // cache nobody else could enter is fixed, not refused. In one others
    // could enter, such an entry may have been written: refused.
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::set_permissions(&files, std::fs::Permissions::from_mode(0o777)).unwrap();
    // Refused, and again at the next start: nothing is changed first.
    for _ in 0..2 {
        let err = refused_with(0o755);
        assert!(
            err.contains(&format!("chmod go-w {}", files.display())),
            "{err}"
        );
        assert_eq!(mode(&dir), 0o755);
    }
    let opened = |mode: u32| {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = bin()
            .args(["run", "/nonexistent/app.wasm", "--cache-dir"])
            .arg(&dir)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains("/nonexistent/app.wasm"), "{err}");
        assert!(!err.contains("refusing"), "{err}");
        err
    };
    opened(0o700);
    assert_eq!(mode(&files), 0o755);
    let err = opened(0o750);
    assert!(err.contains("made the cache directory"), "{err}");
    assert_eq!(mode(&dir), 0o700);
    // No cache named anywhere: an error, not a shared temporary directory.
    let out = bin()
        .env_remove("RSGI_WASM_CACHE")
        .env_remove("XDG_CACHE_HOME")
        .env_remove("HOME")
        .args(["run", hello().to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--cache-dir"), "{err}");
}

/// Resident memory of process `pid`, in bytes.
fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn replaced_components_are_freed_over_many_reloads() {
    let dir = temp_dir("reload-rss");
    let component = dir.join("app.wasm");
    std::fs::copy(hello(), &component).unwrap();
    let config = write_config(
        &dir,
        "[[app]]\nname = \"hello\"\ncomponent = \"app.wasm\"\n",
    );
    let s = serve(&config);
    let start = std::time::SystemTime::now();
    let mut settled = 0;
    for i in 1..=100u64 {
        // A redeployed component: a new file version each time (new mtime),
        // so every reload loads it and starts a fresh pool.
        std::fs::File::options()
            .write(true)
            .open(&component)
            .unwrap()
            .set_modified(start + Duration::from_secs(i))
            .unwrap();
        s.signal("HUP");
        s.wait_for_log_count("reloaded: 1 app", i as usize);
        assert_eq!(get(&s, "/"), (200, "Hello, World!\n".into()));
        if i == 20 {
            settled = rss_of(s.pid());
        }
    }
    let end = rss_of(s.pid());
    // Memory, not time: the last 80 reloads may not keep what they replaced.
    assert!(
        end < settled + (48 << 20),
        "RSS grew from {} MiB to {} MiB over 80 reloads",
        settled >> 20,
        end >> 20
    );
}

#[test]
fn past_max_loaded_the_least_recently_used_idle_app_makes_room() {
    let dir = temp_dir("max-loaded");
    let config = write_config(
        &dir,
        &format!(
            "[[app]]\nname = \"a\"\ncomponent = \"{r}\"\nhosts = [\"a.test\"]\n\n\
             [[app]]\nname = \"b\"\ncomponent = \"{r}\"\nhosts = [\"b.test\"]\n\n\
             [[app]]\nname = \"c\"\ncomponent = \"{r}\"\nhosts = [\"c.test\"]\n\n{more}",
            r = router().display(),
            more = ["d", "e", "f"]
                .map(|t| format!(
                    "[[app]]\nname = \"{t}\"\ncomponent = \"{}\"\nhosts = [\"{t}.test\"]\n\n",
                    router().display()
                ))
                .concat()
        ),
    );
    let config = config.to_str().unwrap();
    // Preloading more apps than may stay loaded would defeat itself.
    let err = refused(&["serve", config, "--preload", "--max-loaded", "2"]);
    assert!(
        err.contains("--preload loads all 6 apps") && err.contains("--max-loaded"),
        "{err}"
    );
    let s = Server::start_with(&[
        "serve",
        config,
        "--max-loaded",
        "2",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let ops = s.logged_addr("metrics on ");
    // One request, and its instance back in the pool (serving nothing).
    let get = |app: &str| {
        let r = client()
            .get(s.url("/"))
            .header("host", format!("{app}.test"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        let warm = format!("rsgi_wasm_instances{{tenant=\"{app}\",state=\"warm\"}}");
        wait_for_series(ops, &warm, 1.0);
        // Distinct last-use times, in milliseconds.
        std::thread::sleep(Duration::from_millis(20));
    };
    let loaded = || {
        let m = scrape(ops);
        ["a", "b", "c"].map(|t| series(&m, &format!("rsgi_wasm_tenant_loaded{{tenant=\"{t}\"}}")))
    };
    get("a");
    get("b");
    get("a");
    // A third app: b, the least recently used, makes room.
    get("c");
    assert_eq!(loaded(), [1.0, 0.0, 1.0]);
    s.wait_for_log("unloaded, least recently used, to make room");
    // b comes back on its next request, and a (now the oldest) goes.
    get("b");
    assert_eq!(loaded(), [0.0, 1.0, 1.0]);
    // A burst of first requests to every app at once: all answered, and
    // the apps loaded past the cap meanwhile are unloaded again after.
    let url = s.url("/");
    let burst: Vec<_> = (0..12)
        .map(|i| {
            let (url, host) = (
                url.clone(),
                format!("{}.test", ["a", "b", "c", "d", "e", "f"][i % 6]),
            );
            std::thread::spawn(move || {
                client()
                    .get(url)
                    .header("host", host)
                    .send()
                    .unwrap()
                    .status()
            })
        })
        .collect();
    for t in burst {
        assert_eq!(t.join().unwrap(), 200);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = scrape(ops);
        let total: f64 = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|t| series(&m, &format!("rsgi_wasm_tenant_loaded{{tenant=\"{t}\"}}")))
            .sum();
        if total <= 2.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{total} apps still loaded:\n{m}");
        std::thread::sleep(Duration::from_millis(100));
    }
    for bad in ["0", "-1", "1e300", "many", ""] {
        let (code, _, err) = run_bin(&["serve", config, &format!("--max-loaded={bad}")]);
        assert_ne!(code, 0);
        assert!(err.contains("--max-loaded"), "{bad}: {err}");
    }
    // An app's setting given as a flag: told where it goes.
    let (code, _, err) = run_bin(&["serve", config, "--idle-timeout", "1s"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("write `idle_timeout = ...`"), "{err}");
}

/// A process allowed few open files keeps no more apps loaded than they
/// hold: a client naming many cold hosts cannot run it out of descriptors
/// (every tenant's loads and accepts would fail).
#[test]
fn max_loaded_is_lowered_to_what_the_open_file_limit_holds() {
    let dir = temp_dir("max-loaded-nofile");
    let names: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    let config = write_config(
        &dir,
        &names
            .iter()
            .map(|t| {
                format!(
                    "[[app]]\nname = \"{t}\"\ncomponent = \"{}\"\nhosts = [\"{t}.test\"]\n\n",
                    router().display()
                )
            })
            .collect::<String>(),
    );
    let s = Server::start_with_nofile(
        128,
        &[
            "serve",
            config.to_str().unwrap(),
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    s.wait_for_log("--max-loaded 1000 lowered to 8: a loaded app holds about 4 open files");
    s.wait_for_log(
        "--max-connections 10000 lowered to 32: each client connection holds an open file",
    );
    let ops = s.logged_addr("metrics on ");
    for t in &names {
        let r = client()
            .get(s.url("/"))
            .header("host", format!("{t}.test"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{t}");
    }
    let m = scrape(ops);
    let loaded: f64 = names
        .iter()
        .map(|t| series(&m, &format!("rsgi_wasm_tenant_loaded{{tenant=\"{t}\"}}")))
        .sum();
    assert!(loaded <= 8.0, "{loaded} loaded:\n{m}");
    s.wait_for_log("unloaded, least recently used, to make room");
}

/// `rsgi-wasm ARGS`, which must exit non-zero within a minute: its stderr.
fn refused(args: &[&str]) -> String {
    let mut child = bin()
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("{args:?} was not refused");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn pinned_apps_stay_loaded_and_preload_holds_across_reloads() {
    let dir = temp_dir("pinned");
    let app = |name: &str, idle: &str| {
        format!(
            "[[app]]\nname = \"{name}\"\ncomponent = \"{}\"\nhosts = [\"{name}.test\"]\n{idle}\n",
            router().display()
        )
    };
    let pin = "idle_timeout = \"0\"\n";
    // More apps pinned by `idle_timeout = "0"` than --max-loaded: refused.
    let config = write_config(
        &dir,
        &[app("a", pin), app("b", pin), app("c", pin)].concat(),
    );
    let err = refused(&["serve", config.to_str().unwrap(), "--max-loaded", "2"]);
    assert!(
        err.contains("3 apps")
            && err.contains("idle_timeout = \"0\"")
            && err.contains("--max-loaded 2"),
        "{err}"
    );
    // As many as the cap, beside another app: no room left to load it.
    let config = write_config(&dir, &[app("a", pin), app("b", pin), app("c", "")].concat());
    let err = refused(&["serve", config.to_str().unwrap(), "--max-loaded", "2"]);
    assert!(
        err.contains("fills --max-loaded 2 and leaves no room to load the other 1"),
        "{err}"
    );

    // A pinned app is not the one unloaded to make room, though it was
    // used least recently.
    let config = write_config(&dir, &[app("a", pin), app("b", ""), app("c", "")].concat());
    let s = Server::start_with(&[
        "serve",
        config.to_str().unwrap(),
        "--max-loaded",
        "2",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let ops = s.logged_addr("metrics on ");
    let loaded = |ops, apps: &[&str]| {
        let m = scrape(ops);
        apps.iter()
            .map(|t| series(&m, &format!("rsgi_wasm_tenant_loaded{{tenant=\"{t}\"}}")))
            .collect::<Vec<_>>()
    };
    for t in ["a", "b", "c"] {
        assert_eq!(get_host(&s, &format!("{t}.test"), "/").0, 200);
        wait_for_series(
            ops,
            &format!("rsgi_wasm_instances{{tenant=\"{t}\",state=\"warm\"}}"),
            1.0,
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(loaded(ops, &["a", "b", "c"]), [1.0, 0.0, 1.0]);
    drop(s);

    // --preload loads what a reload adds or changes before the swap, and a
    // reload past --max-loaded is refused as a start would be.
    let config = write_config(&dir, &app("a", ""));
    let s = Server::start_with(&[
        "serve",
        config.to_str().unwrap(),
        "--preload",
        "--max-loaded",
        "2",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let ops = s.logged_addr("metrics on ");
    std::fs::write(&config, [app("a", "workers = 2\n"), app("d", "")].concat()).unwrap();
    s.signal("HUP");
    s.wait_for_log("reloaded: 2 apps");
    assert_eq!(loaded(ops, &["a", "d"]), [1.0, 1.0]);
    std::fs::write(&config, [app("a", ""), app("d", ""), app("e", "")].concat()).unwrap();
    s.signal("HUP");
    s.wait_for_log("reload failed");
    assert!(
        s.logs().contains("--preload loads all 3 apps"),
        "{}",
        s.logs()
    );
    // d answers without loading again.
    let loads = || s.logs().matches("cold start").count();
    let before = loads();
    assert_eq!(get_host(&s, "d.test", "/").0, 200);
    assert_eq!(loads(), before, "{}", s.logs());
}

#[test]
fn tenants_load_on_first_request_and_unload_when_idle() {
    let dir = temp_dir("lazy");
    // `a` and `b` run one component file, `c` another; `b` stays loaded.
    let config = write_config(
        &dir,
        &format!(
            "[[app]]\nname = \"a\"\ncomponent = \"{r}\"\nhosts = [\"a.test\"]\nidle_timeout = \"1s\"\n\n\
             [[app]]\nname = \"b\"\ncomponent = \"{r}\"\nhosts = [\"b.test\"]\n\n\
             [[app]]\nname = \"c\"\ncomponent = \"{h}\"\nhosts = [\"c.test\"]\nidle_timeout = \"1s\"\n\n\
             [[app]]\nname = \"slow\"\ncomponent = \"{h}\"\nhosts = [\"slow.test\"]\nidle_timeout = \"0\"\n",
            r = router().display(),
            h = hello().display()
        ),
    );
    let s = Server::start_with(&[
        "serve",
        config.to_str().unwrap(),
        "--metrics",
        "127.0.0.1:0",
    ]);
    let ops = s.logged_addr("metrics on ");
    let m = scrape(ops);
    // Listed, and no series of their own until first used: a scrape does
    // not grow with tenants that never answered.
    assert_eq!(series(&m, "rsgi_wasm_tenants_listed"), 4.0, "{m}");
    for app in ["a", "b", "c", "slow"] {
        assert!(
            !m.contains(&format!("tenant=\"{app}\"")),
            "{app} has series before any request:\n{m}"
        );
    }
    assert_eq!(series(&m, "rsgi_wasm_components_loaded"), 0.0, "{m}");
    assert!(!s.logs().contains("cold start"), "{}", s.logs());

    // Eight requests at once to the cold tenant: one load, all answered.
    let url = s.url("/counters");
    let burst: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let r = client().get(url).header("host", "a.test").send().unwrap();
                (r.status().as_u16(), r.text().unwrap())
            })
        })
        .collect();
    for t in burst {
        let (status, body) = t.join().unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let m = scrape(ops);
    let cold_a = "rsgi_wasm_cold_start_seconds_count{tenant=\"a\"}";
    assert_eq!(series(&m, cold_a), 1.0, "{m}");
    assert_eq!(series(&m, "rsgi_wasm_tenant_loaded{tenant=\"a\"}"), 1.0);
    assert_eq!(series(&m, "rsgi_wasm_components_loaded"), 1.0, "{m}");
    let loads = |app: &str| {
        s.logs()
            .lines()
            .filter(|l| l.contains("cold start: loaded in") && l.ends_with(&format!("app={app}")))
            .count()
    };
    assert_eq!(loads("a"), 1, "{}", s.logs());
    assert!(
        s.logs().lines().any(|l| l.contains("\"GET /counters\" 200")
            && l.contains(" cold=")
            && l.ends_with(" app=a")),
        "no access line shows the cold start:\n{}",
        s.logs()
    );
    // A second tenant of the same file shares its compiled code.
    assert_eq!(get_host(&s, "b.test", "/").0, 200);
    // The module state of `a`'s instance lives until it is unloaded.
    let (_, before) = get_host(&s, "a.test", "/counters");
    let before: serde_json::Value = serde_json::from_str(&before).unwrap();
    assert!(before["requests"].as_u64().unwrap() >= 9, "{before}");
    assert_eq!(get_host(&s, "c.test", "/"), (200, "Hello, World!\n".into()));
    let m = scrape(ops);
    assert_eq!(series(&m, "rsgi_wasm_components_loaded"), 2.0, "{m}");

    // A request that outlasts the idle timeout keeps its app loaded.
    let slow_url = s.url("/sleep?2.5");
    let sleeper = std::thread::spawn(move || {
        let r = client()
            .get(slow_url)
            .header("host", "a.test")
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    });
    s.wait_for_log("sleeping 2.5");
    // Meanwhile `c` (idle 1 s too) goes, and its component's code with it:
    // no tenant uses that file any more.
    wait_for_series(ops, "rsgi_wasm_tenant_loaded{tenant=\"c\"}", 0.0);
    wait_for_series(ops, "rsgi_wasm_components_loaded", 1.0);
    let m = scrape(ops);
    assert_eq!(
        series(&m, "rsgi_wasm_tenant_loaded{tenant=\"a\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        series(&m, "rsgi_wasm_idle_unloads_total{tenant=\"a\"}"),
        0.0
    );
    assert_eq!(sleeper.join().unwrap(), (200, "slept".into()));

    // Idle past its timeout, `a` is unloaded; `b` keeps the shared code.
    wait_for_series(ops, "rsgi_wasm_tenant_loaded{tenant=\"a\"}", 0.0);
    let m = scrape(ops);
    assert_eq!(
        series(&m, "rsgi_wasm_idle_unloads_total{tenant=\"a\"}"),
        1.0
    );
    assert_eq!(
        series(&m, "rsgi_wasm_tenant_loaded{tenant=\"b\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(series(&m, "rsgi_wasm_components_loaded"), 1.0, "{m}");
    assert_eq!(
        series(&m, "rsgi_wasm_instances{tenant=\"a\",state=\"warm\"}"),
        0.0,
        "{m}"
    );
    assert_eq!(
        series(&m, "rsgi_wasm_linear_memory_bytes{tenant=\"a\"}"),
        0.0
    );

    // Back from cold: a fresh instance (its module state starts over).
    let (status, after) = get_host(&s, "a.test", "/counters");
    assert_eq!(status, 200);
    let after: serde_json::Value = serde_json::from_str(&after).unwrap();
    assert!(
        after["requests"].as_u64() < before["requests"].as_u64(),
        "{before} then {after}"
    );
    let m = scrape(ops);
    assert_eq!(series(&m, cold_a), 2.0, "{m}");
    assert_eq!(series(&m, "rsgi_wasm_tenant_loaded{tenant=\"slow\"}"), 0.0);

    // A tenant a reload removes takes its series with it; the others keep
    // theirs, counts included.
    assert!(m.contains("tenant=\"c\""), "{m}");
    let text = std::fs::read_to_string(&config).unwrap();
    let (before_c, from_c) = text.split_once("[[app]]\nname = \"c\"").unwrap();
    let after_c = &from_c[from_c.find("[[app]]").unwrap()..];
    std::fs::write(&config, format!("{before_c}{after_c}")).unwrap();
    s.signal("HUP");
    s.wait_for_log("reloaded: 3 apps");
    let m = scrape(ops);
    assert!(!m.contains("tenant=\"c\""), "{m}");
    assert_eq!(series(&m, cold_a), 2.0, "{m}");
    assert_eq!(series(&m, "rsgi_wasm_tenants_listed"), 3.0, "{m}");
}

#[test]
fn a_tenant_that_cannot_load_answers_503_and_the_others_serve() {
    let dir = temp_dir("lazy-broken");
    // Its granted directory is gone by the time it loads (an unmounted
    // volume): the load fails (measuring it for its quota), not the
    // server's start.
    let gone = dir.join("gone");
    std::fs::create_dir_all(&gone).unwrap();
    let config = write_config(
        &dir,
        &format!(
            "[[app]]\nname = \"broken\"\ncomponent = \"{r}\"\nhosts = [\"broken.test\"]\ndirs = [\"gone::/data:quota=1MiB\"]\n\n\
             [[app]]\nname = \"hello\"\ncomponent = \"{h}\"\n",
            r = router().display(),
            h = hello().display()
        ),
    );
    let s = serve(&config);
    std::fs::remove_dir(&gone).unwrap();
    for _ in 0..3 {
        let (status, body) = get_host(&s, "broken.test", "/");
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("could not be started"), "{body}");
    }
    // The log is read on a thread of its own: it may trail the response.
    s.wait_for_log("for its quota");
    assert!(
        s.logs()
            .lines()
            .any(|l| l.contains("cannot load the app") && l.ends_with("app=broken")),
        "{}",
        s.logs()
    );
    assert!(s.logs().contains("for its quota"), "{}", s.logs());
    // The failure is remembered for a while (10 s), not retried per
    // request, and the 503 says when a retry can succeed.
    assert_eq!(s.logs().matches("cannot load the app").count(), 1);
    let r = client()
        .get(s.url("/"))
        .header("host", "broken.test")
        .send()
        .unwrap();
    let after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((2..=10).contains(&after), "Retry-After: {after}");
    assert_eq!(
        get_host(&s, "other.test", "/"),
        (200, "Hello, World!\n".into())
    );
    drop(s);
    // A grant where every component mounts its own files could never
    // load: refused with the config, naming where.
    let config = write_config(
        &dir,
        &format!(
            "[[app]]\nname = \"broken\"\ncomponent = \"{}\"\ndirs = [\".::/python/x\"]\n",
            router().display()
        ),
    );
    let (code, _, err) = run_bin(&["serve", config.to_str().unwrap(), "--preload"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("tenants.toml:4: app[0].dirs") && err.contains("mounted at /python"),
        "{err}"
    );
    assert!(!err.contains("listening on"), "{err}");
    // And loads every app before it listens.
    let good = write_config(
        &dir,
        &format!(
            "[[app]]\nname = \"hello\"\ncomponent = \"{}\"\n",
            hello().display()
        ),
    );
    let s = Server::start_with(&[
        "serve",
        good.to_str().unwrap(),
        "--preload",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let m = scrape(s.logged_addr("metrics on "));
    assert_eq!(
        series(&m, "rsgi_wasm_tenant_loaded{tenant=\"hello\"}"),
        1.0,
        "{m}"
    );
    // No request waited for it: not a cold start (round DE: every pod
    // start fired cold-start alerts).
    assert_series(
        &m,
        "rsgi_wasm_cold_start_seconds_count{tenant=\"hello\"}",
        0.0,
    );
    s.wait_for_log("preloaded in");
    assert_eq!(get(&s, "/").0, 200);
    assert!(!s.logs().contains(" cold="), "{}", s.logs());
    assert!(!s.logs().contains("cold start"), "{}", s.logs());
    drop(s);
    // However long the load takes: an app's `timeout` bounds its
    // requests, not a preload (a first compile takes seconds).
    let quick = write_config(
        &dir,
        &format!(
            "[[app]]\nname = \"quick\"\ncomponent = \"{}\"\ntimeout = \"1ms\"\n",
            hello().display()
        ),
    );
    let s = Server::start_with(&["serve", quick.to_str().unwrap(), "--preload"]);
    assert!(!s.logs().contains("still loading"), "{}", s.logs());
    drop(s);

    // What can be checked without loading is checked at start.
    std::fs::write(dir.join("not.wasm"), "not a component").unwrap();
    std::fs::write(dir.join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    for (file, says) in [
        ("not.wasm", "is not a WebAssembly file"),
        ("core.wasm", "is a core WebAssembly module"),
    ] {
        let config = write_config(
            &dir,
            &format!("[[app]]\nname = \"bad\"\ncomponent = \"{file}\"\n"),
        );
        let (code, _, err) = run_bin(&["serve", config.to_str().unwrap()]);
        assert_ne!(code, 0);
        assert!(
            err.contains("tenants.toml:3: app[0].component: ") && err.contains(says),
            "{err}"
        );
        assert!(!err.contains("listening on"), "{err}");
    }
    let config = write_config(
        &dir,
        &format!(
            "[[app]]\nname = \"a\"\ncomponent = \"{}\"\nidle_timeout = \"soon\"\n",
            router().display()
        ),
    );
    let (code, _, err) = run_bin(&["serve", config.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("tenants.toml:4: app[0].idle_timeout"), "{err}");
}

#[test]
fn distinct_apps_first_asked_at_once_share_one_compile_of_cpython() {
    let dir = temp_dir("lazy-compile");
    let cache = temp_dir("lazy-compile-cache");
    let config = write_config(
        &dir,
        &format!(
            "[[app]]\nname = \"r\"\ncomponent = \"{}\"\nhosts = [\"r.test\"]\nqueue = 0\n\n\
             [[app]]\nname = \"h\"\ncomponent = \"{}\"\nhosts = [\"h.test\"]\n",
            router().display(),
            hello().display()
        ),
    );
    let s = Server::start_with(&[
        "serve",
        config.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    // Both cold, on an empty cache, asked while the first compiles.
    let ask = |host: &'static str| {
        let url = s.url("/");
        std::thread::spawn(move || {
            let r = client().get(url).header("host", host).send().unwrap();
            (r.status().as_u16(), r.text().unwrap())
        })
    };
    let r = ask("r.test");
    s.wait_for_log("compiling");
    let h = ask("h.test");
    // `r` may hold workers + queue = 1 request while it loads: one more
    // is turned away at once, not queued without bound.
    let (status, body) = get_host(&s, "r.test", "/");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("busy"), "{body}");
    assert_eq!(r.join().unwrap().0, 200);
    assert_eq!(h.join().unwrap().0, 200);
    // One compiled every core module; the other only what it does not
    // share (the snapshot and its glue), not CPython again: that is in the
    // shell, which the second found compiled.
    let logs = s.logs();
    let counts = compiled_modules(&logs);
    assert_eq!(counts.len(), 2, "{logs}");
    let (first, second) = (counts[0], counts[1]);
    assert_eq!(first.0, first.1, "{logs}");
    assert!(second.0 < second.1, "{logs}");
    assert_eq!(
        logs.matches("the shell other apps use").count(),
        1,
        "{logs}"
    );
    assert_eq!(get_host(&s, "h.test", "/"), (200, "Hello, World!\n".into()));
}

#[test]
fn a_file_read_to_its_end_is_read_on_once_it_grows() {
    // wasi-libc keeps a file's read stream across reads and across a seek
    // to where it already is, and wasmtime-wasi's stream stays at its end:
    // a reader never saw what was written after it once found the end.
    let data = temp_dir("grow-data");
    let grant = format!("{}::/data", data.display());
    let s = Server::start(&router(), &["--dir", &grant, "--workers", "4"]);
    let r = get_json(&s, "/grow?/data/g.txt");
    assert_eq!(
        r,
        serde_json::json!({
            "empty": "",
            "read on": "first",
            "seek in place": " second",
            "from the start": "first second",
        })
    );
    // So SQLite, which seeks and reads: a connection opened while the
    // database did not exist yet reads what another one created.
    let r = get_json(&s, "/sqlite-created-meanwhile?/data/t.db");
    assert_eq!(r, serde_json::json!({"rows": [1, 2]}));
    // And instances creating one database at once all add their row (one
    // in ten failed before).
    let bodies: Vec<String> = (0..16)
        .map(|_| {
            let url = s.url("/sqlite-add?/data/shared.db");
            std::thread::spawn(move || client().get(url).send().unwrap().text().unwrap())
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    for body in &bodies {
        assert!(!body.contains("error"), "{body}");
    }
    assert_eq!(get_json(&s, "/sqlite-add?/data/shared.db")["rows"], 17);
    // A database beside the app's code (a new Django project's default),
    // or where no grant is, says what to grant: SQLite says only that it
    // could not open the file.
    let grant_it = "keep the database in a --dir grant (for example --dir ./data::/data, and \
                    /data/db.sqlite3))";
    assert_eq!(
        get_json(&s, "/sqlite-add?db.sqlite3")["error"],
        format!(
            "OperationalError: unable to open database file (/1/db.sqlite3 is among the app's \
             own files, which are read-only in the sandbox: {grant_it}"
        )
    );
    assert_eq!(
        get_json(&s, "/sqlite-add?/srv/db.sqlite3")["error"],
        format!(
            "OperationalError: unable to open database file (no granted directory holds \
             /srv/db.sqlite3: {grant_it}"
        )
    );
}

/// SQLite locks a database by making `NAME.lock`: a process killed in a
/// transaction left it, and the database stayed locked for every later
/// process. The next one now breaks it (its maker's `flock` is gone) and
/// finds the transaction rolled back.
#[test]
fn a_database_lock_left_by_a_killed_process_is_broken() {
    let data = temp_dir("stale-lock");
    let grant = format!("{}::/data", data.display());
    let router = router();
    let router = router.to_str().unwrap();
    let hold = "import sqlite3, time\n\
                c = sqlite3.connect('/data/h.db', isolation_level=None)\n\
                c.execute('create table if not exists t (x)')\n\
                c.execute('begin immediate')\n\
                c.execute('insert into t values (1)')\n\
                print('began', flush=True)\n\
                time.sleep(600)";
    let mut child = bin()
        .args(["exec", router, "--dir", &grant, "--", "-c", hold])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The lock directory also comes and goes while `create table` commits,
    // so only the script's own word says the transaction is open.
    let mut began = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut began,
    )
    .unwrap();
    assert_eq!(began.trim(), "began", "the transaction never began");
    let lock = data.join("h.db.lock");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(lock.is_dir(), "SQLite's lock is left behind");
    let (code, out, err) = run_bin(&[
        "exec",
        router,
        "--dir",
        &grant,
        "--",
        "-c",
        "import sqlite3\n\
         c = sqlite3.connect('/data/h.db', timeout=20)\n\
         print(c.execute('select count(*) from t').fetchone()[0])\n\
         c.execute('insert into t values (2)')\n\
         c.commit()",
    ]);
    assert_eq!((code, out.trim()), (0, "0"), "{err}");
    assert!(
        err.contains("removed the lock directory h.db.lock"),
        "{err}"
    );
    assert!(!lock.exists());
    // Each lock directory kept is held open by the host: one of the app's
    // open files, so an app cannot use up the process's descriptors.
    let make_locks = "import os\nmade = 0\ntry:\n    for i in range(200):\n        os.mkdir(f'/data/l{i}.lock'); made += 1\nexcept OSError as e:\n    print(made)";
    let (code, out, err) = run_bin(&[
        "exec",
        router,
        "--dir",
        &grant,
        "--max-open-files",
        "40",
        "--",
        "-c",
        make_locks,
    ]);
    assert_eq!(code, 0, "{err}");
    let made: usize = out.trim().parse().unwrap_or(999);
    assert!((20..=40).contains(&made), "{out} {err}");
    assert!(err.contains("max_open_files"), "{err}");
}

/// SIGTERM while `serve --preload` compiles (a pod deleted while it
/// starts): the start is abandoned at once, the server exits 0 as a drain
/// does, and its scratch directory goes with it. Before, the signal's
/// default action killed it (and, as a container's PID 1, it was ignored
/// until the start was over).
#[test]
fn a_signal_while_preloading_stops_the_server_cleanly() {
    let dir = temp_dir("stop-while-starting");
    let (cache, tmp) = (dir.join("cache"), dir.join("tmp"));
    std::fs::create_dir_all(&tmp).unwrap();
    let config = write_config(
        &dir,
        &format!(
            "[[app]]\nname = \"a\"\ncomponent = \"{}\"\n",
            router().display()
        ),
    );
    let log = dir.join("server.log");
    let mut child = bin()
        .env("TMPDIR", &tmp)
        .args(["serve", &config.display().to_string(), "--preload"])
        .args(["--cache-dir", &cache.display().to_string()])
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(120);
    // An empty cache: the preload compiles for seconds.
    while !logged().contains("compiling") {
        assert!(Instant::now() < deadline, "never compiled: {}", logged());
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: a signal to the child this test started and still waits on.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", logged());
    assert!(
        logged().contains("stopped by a signal while starting"),
        "{}",
        logged()
    );
    assert!(!logged().contains("listening on"), "{}", logged());
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "scratch left");
}

#[test]
fn an_app_whose_files_are_removed_from_the_cache_while_it_runs_gets_them_back() {
    let cache = cache_with_compiled_code("files-removed");
    let s = Server::start(&router(), &["--cache-dir", cache.to_str().unwrap()]);
    let read = || get(&s, "/read-file?/python/LICENSE.txt");
    let (status, body) = read();
    assert_eq!(status, 200, "{body}");
    // A cache cleaner at work: the warm instance holds directories that
    // are gone, and every read from them fails.
    std::fs::remove_dir_all(cache.join("files")).unwrap();
    // Within the sweep's files check (5 s) the app is unloaded, and its
    // next request loads it again, unpacking its files.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, again) = read();
        if status == 200 {
            assert_eq!(again, body);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {status} after 60 s: {again}\n{}",
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    s.wait_for_log("was removed from the cache while the app ran");
    assert!(cache.join("files").is_dir());
}

/// The standard library's `LICENSE.txt` in `cache`'s unpacked trees.
fn stdlib_license(cache: &Path) -> std::path::PathBuf {
    std::fs::read_dir(cache.join("files/trees"))
        .unwrap()
        .map(|e| e.unwrap().path().join("LICENSE.txt"))
        .find(|p| p.is_file())
        .expect("the standard library's tree")
}

#[test]
fn a_file_pruned_from_an_unpacked_tree_is_unpacked_again_at_the_next_start() {
    let cache = cache_with_compiled_code("files-pruned");
    let args = ["--cache-dir", cache.to_str().unwrap()];
    let s = Server::start(&router(), &args);
    let read = |s: &Server| get(s, "/read-file?/python/LICENSE.txt");
    let (status, body) = read(&s);
    assert_eq!(status, 200, "{body}");
    drop(s);
    // A cleaner pruning the cache by age: one file goes, its directory and
    // the tree's other files stay.
    let license = stdlib_license(&cache);
    std::fs::remove_file(&license).unwrap();
    let s = Server::start(&router(), &args);
    let (status, again) = read(&s);
    assert_eq!(status, 200, "{again}\n{}", s.logs());
    assert_eq!(again, body);
    assert!(
        s.logs()
            .contains("no longer held what was unpacked into it; moved to"),
        "{}",
        s.logs()
    );
    assert!(license.is_file());
    // The damaged copy is kept aside for instances that still mount it.
    let aside = std::fs::read_dir(cache.join("files/trees"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with(".damaged-")
        })
        .count();
    assert_eq!(aside, 1);
}

#[test]
fn a_file_pruned_while_serving_is_back_at_the_app_s_next_load() {
    let cache = cache_with_compiled_code("files-pruned-serving");
    let dir = temp_dir("files-pruned-serving-config");
    let config = write_config(
        &dir,
        &format!(
            "[[app]]\nname = \"a\"\ncomponent = \"{}\"\nhosts = [\"a.test\"]\nidle_timeout = \"1s\"\n",
            router().display()
        ),
    );
    let s = Server::start_with(&[
        "serve",
        config.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    let read = || {
        let r = client()
            .get(s.url("/read-file?/python/LICENSE.txt"))
            .header("host", "a.test")
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let (status, body) = read();
    assert_eq!(status, 200, "{body}");
    let license = stdlib_license(&cache);
    std::fs::remove_file(&license).unwrap();
    // Unloaded once idle; its next load, past the 2 s a tree found whole
    // is trusted, checks its trees again.
    s.wait_for_log("unloaded after 1s idle");
    std::thread::sleep(Duration::from_millis(2500));
    let (status, again) = read();
    assert_eq!(status, 200, "{again}\n{}", s.logs());
    assert_eq!(again, body);
    assert!(license.is_file());
    assert!(
        s.logs()
            .contains("no longer held what was unpacked into it"),
        "{}",
        s.logs()
    );
}

/// The log line holding `text` names the app it is about, as the pool's
/// lines do (`app=NAME`).
fn assert_line_names_app(s: &Server, text: &str) {
    let logs = s.logs();
    let line = logs.lines().find(|l| l.contains(text)).expect("logged");
    assert!(
        line.contains(" app=") && !line.contains(" app=\""),
        "{line}"
    );
}

#[test]
fn a_component_shipping_more_than_max_unpacked_fails_its_start_with_nothing_unpacked() {
    let cache = cache_with_compiled_code("max-unpacked");
    let cache_arg = cache.to_str().unwrap();
    let hello = hello();
    let (code, _, err) = run_bin(&[
        "run",
        hello.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--cache-dir",
        cache_arg,
        "--max-unpacked",
        "1MiB",
    ]);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("over 1 MiB (--max-unpacked;") && err.contains("nothing was unpacked"),
        "{err}"
    );
    assert!(!cache.join("files/trees").exists(), "{err}");
    // `exec` loads the same component, so it takes the same cap.
    let (code, _, err) = run_bin(&[
        "exec",
        hello.to_str().unwrap(),
        "--cache-dir",
        cache_arg,
        "--max-unpacked",
        "1MiB",
        "--",
        "-c",
        "print('ran')",
    ]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("over 1 MiB (--max-unpacked;"), "{err}");
    assert!(!cache.join("files/trees").exists(), "{err}");
    // The same cache and component under the default: served.
    let s = Server::start(&hello, &["--cache-dir", cache_arg]);
    assert_eq!(get(&s, "/").0, 200);
    let (code, _, err) = run_bin(&["run", hello.to_str().unwrap(), "--max-unpacked", "1KiB"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--max-unpacked"), "{err}");
}

#[test]
fn a_file_pruned_under_an_app_that_stays_loaded_is_noticed_and_unpacked_again() {
    // `run` never unloads for idleness: only the files check reloads it.
    let cache = cache_with_compiled_code("files-pruned-run");
    let s = Server::start(&router(), &["--cache-dir", cache.to_str().unwrap()]);
    let read = || get(&s, "/read-file?/python/LICENSE.txt");
    let (status, body) = read();
    assert_eq!(status, 200, "{body}");
    let license = stdlib_license(&cache);
    std::fs::remove_file(&license).unwrap();
    // The trees are walked every 30 s (waited for up to two minutes).
    s.wait_for_log_count("were removed from the cache while the app ran", 1);
    assert_line_names_app(&s, "were removed from the cache while the app ran");
    let (status, again) = read();
    assert_eq!(status, 200, "{again}\n{}", s.logs());
    assert_eq!(again, body);
    assert!(license.is_file());
}

#[test]
fn a_tree_set_aside_and_unpacked_anew_under_a_loaded_app_reloads_it() {
    let cache = cache_with_compiled_code("tree-replaced");
    let s = Server::start(&router(), &["--cache-dir", cache.to_str().unwrap()]);
    let read = || get(&s, "/read-file?/python/LICENSE.txt");
    let (status, body) = read();
    assert_eq!(status, 200, "{body}");
    // What another process's load does to a damaged tree: renamed aside,
    // and a fresh copy put at its path, which this app's instances do not
    // read (they hold the old directory).
    let tree = stdlib_license(&cache).parent().unwrap().to_owned();
    let aside = tree.with_file_name(".damaged-test");
    std::fs::rename(&tree, &aside).unwrap();
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(&aside)
        .arg(&tree)
        .status()
        .unwrap();
    assert!(copied.success());
    std::fs::remove_file(aside.join("LICENSE.txt")).unwrap();
    s.wait_for_log_count("was removed from the cache while the app ran", 1);
    let (status, again) = read();
    assert_eq!(status, 200, "{again}\n{}", s.logs());
    assert_eq!(again, body);
}
