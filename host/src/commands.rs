//! What each subcommand does: wires config, engine, pools and server.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::UserError;
use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::build::{self, BuildOptions};
use crate::cli::{BuildArgs, Command, ExecArgs, HttpArgs, RunArgs, ServeArgs, UnpackArgs};
use crate::config::{self, Grants, Limits, ServerConfig};
use crate::dev_reload;
use crate::digests;
use crate::http::ops;
use crate::http::router::{Route, Router};
use crate::http::server::{self, Site};
use crate::http::static_files::StaticFiles;
use crate::http::tls::{self, TenantCert};
use crate::metrics;
use crate::runtime::cpu::CpuScheduler;
use crate::runtime::engine::{self, Loader};
use crate::runtime::instance_slots::Allocation;
use crate::runtime::sandbox::{Sandbox, Stdio};
use crate::runtime::store;
use crate::runtime::tenant::{self, AppSpec, Starter, Tenant};
use crate::tenants::{self, TenantConfig};

/// Run one parsed command line; returns the process exit status.
pub async fn execute(command: Command) -> Result<u8> {
    match command {
        Command::Build(args) => build_command(args).await.map(|()| 0),
        Command::Run(args) => run_command(*args).await.map(|()| 0),
        Command::Exec(args) => exec_command(args).await,
        Command::Unpack(args) => unpack_command(&args).map(|()| 0),
        Command::Serve(args) => serve_command(args).await.map(|()| 0),
        Command::Preinit(job) => Ok(job.run_here().await),
    }
}

async fn build_command(args: BuildArgs) -> Result<()> {
    ignore_user_signals()?;
    let cache = engine::cache_dir(args.cache.cache_dir)?;
    let opts = args
        .source
        .build_options(args.target, Some(args.output), cache);
    // On SIGINT or SIGTERM the build is dropped, not left behind: its
    // scratch directory is removed and its pre-initialising child killed.
    tokio::select! {
        built = build_and_report(&opts) => built.map(|_| ()),
        () = crate::http::server::shutdown_signal() => {
            anyhow::bail!(UserError("build interrupted".into()))
        }
    }
}

/// Build (or reuse) and print the warm-up results and the final line.
async fn build_and_report(opts: &BuildOptions) -> Result<build::BuildReport> {
    let t0 = Instant::now();
    let report = build::build(opts).await?;
    let lines = report_lines(&report, t0.elapsed());
    // `run --log-format json` from source: every line a JSON object.
    if crate::config::JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
        log_report(&lines);
        return Ok(report);
    }
    // Progress only: a stderr that cannot be written must not fail the build.
    // After the log lines before it (`run` from source queues them).
    crate::log_writer::drain(Duration::from_secs(1));
    let mut err = std::io::stderr().lock();
    for line in &lines {
        let _ = writeln!(err, "{line}");
    }
    Ok(report)
}

/// What a build reports: its warnings, what the app printed while it was
/// imported and each warm-up's status (quoted, so they cannot drive a
/// terminal), then its size and time.
fn report_lines(report: &build::BuildReport, took: Duration) -> Vec<String> {
    // A cached build's lines are its warm-up's, when it was built.
    let when = if report.cached { " (when built)" } else { "" };
    let mut lines: Vec<String> = report
        .warmup
        .iter()
        .map(|line| format!("{}{when}", crate::runtime::visible_lines(line)))
        .collect();
    lines.push(format!(
        "built {}: {:.1} MB in {:.1}s{}",
        report.path.display(),
        report.size as f64 / 1e6,
        took.as_secs_f64(),
        if report.cached {
            " (the same sources were built before: copied from the build cache)"
        } else {
            ""
        }
    ));
    lines
}

/// A build's report as a running server's log lines, its warnings at WARN.
fn log_report(lines: &[String]) {
    for line in lines {
        if line.starts_with("warning") {
            tracing::warn!("{line}");
        } else {
            tracing::info!("{line}");
        }
    }
}

/// What `rsgi-wasm run APP` names: a built component, or source to build.
fn component_for_run(args: &RunArgs) -> Result<Option<BuildOptions>> {
    let app = args.app.as_str();
    let cache = engine::cache_dir(args.cache.cache_dir.clone())?;
    let as_path = Path::new(app);
    // `app.py` alone is a script to serve (below), not a component.
    if app.ends_with(".wasm") || (as_path.is_file() && !app.ends_with(".py")) {
        if !args.source.is_empty() {
            anyhow::bail!(UserError(format!(
                "{app} is a component; -p, -r, --pyproject, --site-packages, --warmup, --world and --build-timeout only apply when running from source (like app.py:app)"
            )));
        }
        return Ok(None);
    }
    // The last `:` before a factory's arguments, which may hold colons
    // themselves (`app.py:create_app('sqlite:///db')`).
    let head = app.split_once('(').map_or(app, |(head, _)| head);
    let split = match head.rfind(':') {
        Some(at) => Some((&app[..at], &app[at + 1..])),
        // `path/app.py` alone, or a module with -p: its `application`, as
        // gunicorn has it (and `build`).
        None if app.ends_with(".py") => Some((app, "application")),
        None if !args.source.paths.is_empty() && is_module_name(app) => Some((app, "application")),
        None => None,
    };
    let Some((file, callable)) = split else {
        anyhow::bail!(UserError(format!(
            "{app}: no such component; give a .wasm built by `rsgi-wasm build`, or an app like path/to/app.py:app or module:callable with -p"
        )));
    };
    if let Some(stem) = file.strip_suffix(".py") {
        // `path/to/app.py:app`: module `app` in directory `path/to`.
        let script = Path::new(file);
        if !script.is_file() {
            anyhow::bail!(UserError(format!("{file}: no such file")));
        }
        let module = Path::new(stem)
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir = script
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // As the flags' paths: the directory it names now, not where a
        // relative one leads once a checkout replaced it.
        let dir = config::absolute(dir);
        let mut opts = args
            .source
            .build_options(format!("{module}:{callable}"), None, cache);
        if args.source.paths.is_empty() {
            // The script's directory alone, as `python path/app.py` puts
            // on its path: not also `-p`'s default, the working directory,
            // which shipped everything under it (a `.env`, data files).
            opts.paths = vec![dir];
        } else if !opts.paths.contains(&dir) {
            opts.paths.insert(0, dir);
        }
        return Ok(Some(opts));
    }
    Ok(Some(args.source.build_options(app.to_owned(), None, cache)))
}

/// `rsgi-wasm exec`: one instance, the terminal's stdio, the script's status.
async fn exec_command(args: ExecArgs) -> Result<u8> {
    ignore_user_signals()?;
    // The flag is shared with `run`, but a script's output goes to the
    // terminal whole: a rate asked for would silently not apply.
    if args.grants.log_rate != config::parse_size(config::DEFAULT_LOG_RATE)? {
        anyhow::bail!(UserError(
            "--log-rate limits what `run` and `serve` log of an app's output; `exec` writes a script's output to the terminal whole, so drop it".into()
        ));
    }
    let loader = new_loader(
        args.cache.cache_dir.clone(),
        Allocation::OnDemand,
        &args.loading,
    )?;
    let engine = loader.engine();
    let loaded = loader.load(&args.component)?;
    let engine::AppPre::Wsgi(pre) = engine::prepare(engine, &loaded, &args.component)? else {
        anyhow::bail!(UserError(format!(
            "{} was built with --world wasi-http, which exports no scripts; build the app without --world to run `exec` on it",
            args.component.display()
        )));
    };
    let name = app_name(&args.component);
    // Before the private /tmp exists, so no signal can leave it behind.
    end_exec_on_signals()?;
    let sandbox = Sandbox::new(
        &name,
        args.grants.grants()?,
        loaded.files.clone(),
        args.grants.memory,
        crate::config::Isolation::Pooled,
        &mut || {},
    )?;
    let mut store = store::new_store(engine, sandbox.host_state(Stdio::Inherit)?, None)?;
    let app = pre
        .instantiate_async(&mut store)
        .await
        .map_err(|e| crate::runtime::pool::memory_hint(e.into(), args.grants.memory))
        .with_context(|| format!("starting {}", args.component.display()))?;
    let status = match app
        .rsgi_wasm_wsgi_command()
        .call_run(&mut store, &args.argv)
        .await
    {
        Ok(status) => status,
        Err(e) => match crate::runtime::exit_status(&e) {
            Some(status) => status,
            None => {
                return Err(anyhow::Error::from(e)).with_context(|| {
                    format!("{} crashed (a trap in the sandbox)", args.argv.join(" "))
                })
            }
        },
    };
    // What the script sent on sockets it closed (or left open) still goes
    // out before the process ends, as from a native script.
    drop(store);
    crate::runtime::finish_closed_sends(Duration::MAX).await;
    Ok(u8::try_from(status.clamp(0, 255)).unwrap_or(1))
}

/// Ctrl-C, SIGTERM or SIGQUIT ends `exec` with the shell's status for the signal,
/// its private /tmp removed first. The script cannot be told (WASI has no
/// signals), and the default action left the directory for the next
/// start to sweep. Watched on a thread of its own, since a script
/// computing without a pause may hold every worker of the runtime.
fn end_exec_on_signals() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let (ready, registered) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("rsgi-wasm-exec-signals".into())
        .spawn(move || {
            let watch = async {
                let mut int = signal(SignalKind::interrupt())?;
                let mut term = signal(SignalKind::terminate())?;
                let mut quit = signal(SignalKind::quit())?;
                let _ = ready.send(Ok(()));
                anyhow::Ok(tokio::select! {
                    _ = int.recv() => 130,
                    _ = term.recv() => 143,
                    _ = quit.recv() => 131,
                })
            };
            let status = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(watch));
            match status {
                Ok(status) => {
                    crate::scratch::abandon();
                    std::process::exit(status);
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            }
        })
        .context("starting the signal watcher")?;
    registered
        .recv()
        .context("the signal watcher stopped")?
        .context("watching for signals")
}

/// `rsgi-wasm unpack`: the component's files for a host that maps
/// directories itself, and the flags that map them.
fn unpack_command(args: &UnpackArgs) -> Result<()> {
    let path = &args.component;
    let mut file = engine::open_component(path)?;
    // Other hosts call the wasi:http world only: refuse before writing out
    // files that would come with commands that cannot work.
    let mut bytes = Vec::new();
    std::io::Seek::rewind(&mut file)
        .and_then(|()| std::io::Read::read_to_end(&mut file, &mut bytes))
        .with_context(|| format!("reading {}", path.display()))?;
    let exports = crate::runtime::core_modules::top_level_exports(&bytes)
        .with_context(|| path.display().to_string())?;
    if !exports
        .iter()
        .any(|e| e.starts_with("wasi:http/incoming-handler@"))
    {
        anyhow::bail!(UserError(format!(
            "{} exports rsgi-wasm's own world, which only rsgi-wasm runs; \
             build it with --world wasi-http for wasmtime serve or Spin, then unpack that",
            path.display()
        )));
    }
    let mounts = crate::bundle::extract(&mut file, &args.dir)?;
    if mounts.is_empty() {
        writeln!(std::io::stdout(), "{} ships no files", path.display())
            .context("writing to stdout")?;
        return Ok(());
    }
    // Printed to be pasted: quoted for a POSIX shell and for TOML.
    let dirs: Vec<String> = mounts
        .iter()
        .map(|m| {
            let grant = format!("{}::{}", m.host.display(), m.guest);
            format!("--dir {}", shell_word(&grant))
        })
        .collect();
    let toml_string = |s: String| toml::Value::String(s).to_string();
    let files: Vec<String> = mounts
        .iter()
        .map(|m| {
            format!(
                "{{ source = {}, destination = {} }}",
                toml_string(m.host.display().to_string()),
                toml_string(m.guest.clone())
            )
        })
        .collect();
    writeln!(
        std::io::stdout(),
        "unpacked the files of {} into {}\n\n\
         wasmtime serve (a component built with --world wasi-http):\n  \
         wasmtime serve -Scli {} {}\n\n\
         Spin (spin.toml, in the app's [component.NAME]):\n  files = [{}]\n\n\
         The directories are read-only (a host run as root ignores that: run it as another \
         user). Under wasmtime serve also grant a writable /tmp (--dir SOME_DIR::/tmp; \
         Spin has none) and set limits (-W max-memory-size=BYTES -W timeout=30s).",
        path.display(),
        args.dir.display(),
        dirs.join(" "),
        shell_word(&path.display().to_string()),
        files.join(", ")
    )
    .context("writing to stdout")
}

/// `word` as one POSIX shell word: as it is if nothing in it is special,
/// else in single quotes (a quote inside written `'\\''`).
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

fn app_name(component: &Path) -> String {
    component
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "app".into())
}

fn new_loader(
    cache_dir: Option<PathBuf>,
    allocation: Allocation,
    loading: &crate::cli::Loading,
) -> Result<Arc<Loader>> {
    let cache = engine::cache_dir(cache_dir)?;
    crate::cachefs::remove_stale_temps(&cache);
    Ok(Arc::new(
        Loader::new(engine::new_engine(allocation)?, cache)
            .with_max_unpacked(loading.max_unpacked)
            .with_compact_cache(loading.compact_cache),
    ))
}

/// The process's run slots, one per core, shared by every app.
fn scheduler(loader: &Loader) -> Arc<CpuScheduler> {
    CpuScheduler::new(
        loader.engine().clone(),
        CpuScheduler::slots_for_this_machine(),
    )
}

/// The server's address, bound now and listened on once the apps are
/// ready ([`listen`]): a port another program holds is told before a
/// first compile of seconds, and nothing connects meanwhile (a bound
/// socket that does not listen refuses connections, as a free port does).
fn reserve(cfg: &ServerConfig) -> Result<tokio::net::TcpSocket> {
    let at = || cannot_listen(cfg);
    let socket = if cfg.listen.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .with_context(at)?;
    // As `TcpListener::bind` does: a restart binds while the last run's
    // connections linger in TIME_WAIT.
    socket.set_reuseaddr(true).with_context(at)?;
    socket.bind(cfg.listen).with_context(at)?;
    Ok(socket)
}

/// Start listening on the address [`reserve`] bound.
fn listen(socket: tokio::net::TcpSocket, cfg: &ServerConfig) -> Result<TcpListener> {
    socket.listen(1024).with_context(|| cannot_listen(cfg))
}

fn cannot_listen(cfg: &ServerConfig) -> String {
    format!("--listen {}: cannot listen there", cfg.listen)
}

/// The TLS acceptor for `http`'s certificate and the tenants' own, read
/// and checked now; none when TLS is off.
fn tls_for(http: &HttpArgs, tenants: &[TenantConfig]) -> Result<Option<TlsAcceptor>> {
    let certs: Vec<TenantCert> = tenants.iter().filter_map(|t| t.tls.clone()).collect();
    let Some(files) = http.tls_files() else {
        if let Some((t, cert)) = tenants.iter().find_map(|t| Some((t, t.tls.as_ref()?))) {
            anyhow::bail!(UserError(format!(
                "{}: app {} has its own certificate, but TLS is off; give the server --certfile and --keyfile (the default certificate)",
                cert.cert_at, t.name
            )));
        }
        return Ok(None);
    };
    tls::acceptor(&files, &certs).map(Some)
}

/// `http` or `https`, for the log line that says where the server listens.
fn scheme(tls: &Option<TlsAcceptor>) -> &'static str {
    if tls.is_some() {
        "https"
    } else {
        "http"
    }
}

/// Start the `--metrics` listener, if asked for, before anything loads:
/// `/healthz` answers at once, `/readyz` once every app has started.
async fn start_ops(http: &HttpArgs, listen: SocketAddr) -> Result<bool> {
    let Some(addr) = http.metrics else {
        return Ok(false);
    };
    // One port on an address and on a wildcard covering it (its family's,
    // or `[::]`, dual-stack) overlap: whichever binds second would fail,
    // blaming only itself.
    let covers = |wild: SocketAddr, other: SocketAddr| {
        wild.ip().is_unspecified() && (wild.is_ipv6() || other.is_ipv4())
    };
    let overlaps = addr.port() == listen.port()
        && addr.port() != 0
        && (addr.ip() == listen.ip() || covers(addr, listen) || covers(listen, addr));
    if overlaps {
        anyhow::bail!(UserError(format!(
            "--metrics {addr}: the same port as --listen {listen}; give the metrics a port of their own"
        )));
    }
    let bound = ops::start(addr).await?;
    tracing::info!("metrics on http://{bound}/metrics, health on /healthz and /readyz");
    Ok(true)
}

async fn run_command(args: RunArgs) -> Result<()> {
    crate::runtime::limit_held_bytes(
        args.http.max_response_buffer as usize,
        args.http.header_timeout,
        false,
    );
    let (server_cfg, grants, limits) = args.split()?;
    let tls = tls_for(&args.http, &[])?;
    // SIGHUP reloads the certificates and restarts the app, as gunicorn's
    // HUP does: installed before a build or a compile that can take a
    // while, as in `serve`, so an early one does not end the process.
    let mut hup = hangup()?;
    ignore_user_signals()?;
    let mut stop = server::Stop::install()?;
    let reserved = reserve(&server_cfg)?;
    let metered = start_ops(&args.http, server_cfg.listen).await?;
    let statics = StaticFiles::new(args.app_args.statics.clone())?;
    let mut source = component_for_run(&args)?;
    if let Some(opts) = &mut source {
        // From source with --reload: the app is imported from its
        // directories at run time, so edits need no rebuild. Not with
        // request isolation, where every request would import it.
        opts.live = args.reload && limits.isolation == config::Isolation::Pooled;
    }
    let loader = new_loader(
        args.cache.cache_dir.clone(),
        Allocation::for_run(&limits),
        &args.http.loading,
    )?;
    let workers = limits.workers;
    let starter = Starter::new(loader.clone(), scheduler(&loader), metered, usize::MAX);
    let mut changes = if args.reload {
        let watched = dev_reload::Watched::new(source.as_ref(), Path::new(&args.app), &grants.dirs);
        match dev_reload::Changes::start(watched) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!("{e:#}; reloading on changes is off");
                None
            }
        }
    } else {
        None
    };
    // With --reload an app that does not build or start is waited for, as
    // a development reloader does: the next edit may fix it.
    let first = async {
        loop {
            let error =
                match first_version(&args, source.as_ref(), &starter, &grants, &limits).await {
                    Ok(first) => return Ok(first),
                    Err(e) => e,
                };
            let Some(watching) = changes.as_mut() else {
                return Err(error);
            };
            tracing::error!("{error:#}");
            tracing::info!(
                "--reload: waiting for a change to the app's files (or SIGHUP) to try again"
            );
            let changed = tokio::select! {
                changed = watching.next() => changed,
                _ = hup.recv() => true,
            };
            if !changed {
                return Err(error);
            }
        }
    };
    let Some(first) = unless_stopped(&mut stop, first).await? else {
        return Ok(());
    };
    let FirstVersion {
        app,
        component,
        name,
        live_dirs,
        frozen,
        took,
    } = first;
    let listener = listen(reserved, &server_cfg)?;
    metrics::READY.store(true, Ordering::Release);
    tracing::info!(
        "listening on {}://{} (app {name}, {workers} worker{}, ready in {:.0} ms)",
        scheme(&tls),
        listener.local_addr()?,
        if workers == 1 { "" } else { "s" },
        took.as_secs_f64() * 1000.0
    );
    let site = Arc::new(Site::new(Router::single(app, statics), &server_cfg, tls));
    let idle = sweep_idle(site.clone());
    if changes.is_some() {
        tracing::info!("--reload: watching the app's files for changes");
    }
    let app = RunningApp {
        starter,
        site: site.clone(),
        name,
        grants,
        limits,
        statics: args.app_args.statics.clone(),
        live_dirs,
        frozen,
        previous: crate::bundle::Frozen::default(),
        http: args.http.clone(),
    };
    // What earlier runs of this or any app left (each saved edit's copy).
    prune_live_copies(source.as_ref());
    tokio::spawn(reload_app(changes, hup, source, component, app));
    serve_until_stopped(listener, site, &server_cfg, stop, idle).await
}

/// Whether `name` reads as a dotted Python module name (`app`, `pkg.wsgi`).
fn is_module_name(name: &str) -> bool {
    name.split('.').all(|part| {
        part.chars()
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_')
            && part.chars().all(|c| c.is_alphanumeric() || c == '_')
    })
}

/// What `run` started: the app, the component it runs and what it took.
struct FirstVersion {
    app: Arc<Tenant>,
    component: PathBuf,
    name: String,
    /// A live build's directories, copied again for each later version.
    live_dirs: Vec<PathBuf>,
    /// The copies this version's instances mount.
    frozen: crate::bundle::Frozen,
    /// From loading the component to the app ready (the build excluded).
    took: Duration,
}

/// Build the app of `run` (when from source) and start it.
async fn first_version(
    args: &RunArgs,
    source: Option<&BuildOptions>,
    starter: &Starter,
    grants: &Grants,
    limits: &Limits,
) -> Result<FirstVersion> {
    let (component, name, live_dirs) = match source {
        Some(opts) => {
            let name = opts.target.split(':').next().unwrap_or("app").to_owned();
            let report = build_and_report(opts).await?;
            (report.path, name, report.live_dirs)
        }
        None => (
            PathBuf::from(&args.app),
            app_name(Path::new(&args.app)),
            Vec::new(),
        ),
    };
    let frozen = match source {
        Some(opts) => crate::bundle::freeze_dirs(&live_dirs, &opts.cache_dir)?,
        None => crate::bundle::Frozen::default(),
    };
    let t0 = Instant::now();
    let spec = AppSpec {
        name: name.clone(),
        component: component.clone(),
        grants: grants.clone(),
        limits: limits.clone(),
        live_dirs: frozen.dirs.clone(),
    };
    let app = Tenant::start(starter, spec, true, Duration::ZERO).await?;
    Ok(FirstVersion {
        app,
        component,
        name,
        live_dirs,
        frozen,
        took: t0.elapsed(),
    })
}

/// Unload the apps of `site` that are idle past their `idle_timeout`,
/// until the returned task is aborted.
fn sweep_idle(site: Arc<Site>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let tenants = site.router().tenants();
            let interval = tenant::sweep_interval(&tenants);
            tenant::sweep(&tenants);
            drop(tenants);
            tokio::time::sleep(interval).await;
        }
    })
}

/// The SIGHUP stream; from the moment it exists the signal no longer
/// ends the process.
fn hangup() -> Result<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup()).context("installing the SIGHUP handler")
}

/// Log and ignore SIGUSR1 and SIGUSR2 from now on: their default action
/// ends the process, and logrotate setups send USR1 to servers that reopen
/// their log files, while this one logs to stderr, with nothing to reopen.
fn ignore_user_signals() -> Result<()> {
    use rustix::process::Signal;
    use tokio::signal::unix::{signal, SignalKind};
    // gunicorn's TTIN and TTOU add and remove a worker; by default they
    // would stop this process, as a background job reading its terminal.
    const NO_LOG_FILE: &str = "the log goes to stderr, with no file to reopen";
    const FIXED_WORKERS: &str = "the number of instances is --workers";
    for (kind, name, why) in [
        (SignalKind::user_defined1(), "SIGUSR1", NO_LOG_FILE),
        (SignalKind::user_defined2(), "SIGUSR2", NO_LOG_FILE),
        (
            SignalKind::from_raw(Signal::TTIN.as_raw()),
            "SIGTTIN",
            FIXED_WORKERS,
        ),
        (
            SignalKind::from_raw(Signal::TTOU.as_raw()),
            "SIGTTOU",
            FIXED_WORKERS,
        ),
    ] {
        let mut signals = signal(kind).with_context(|| format!("installing the {name} handler"))?;
        tokio::spawn(async move {
            while signals.recv().await.is_some() {
                tracing::info!("{name} ignored: {why}");
            }
        });
    }
    Ok(())
}

/// What `run --reload` restarts the app with.
struct RunningApp {
    starter: Starter,
    site: Arc<Site>,
    name: String,
    grants: Grants,
    limits: Limits,
    statics: Vec<crate::http::static_files::StaticMount>,
    /// A live build's directories (`BuildReport::live_dirs`), copied
    /// (`bundle::freeze_dirs`) for each version.
    live_dirs: Vec<PathBuf>,
    /// The copies the running version mounts, named by their content.
    frozen: crate::bundle::Frozen,
    /// The previous version's, held while requests may still run on it.
    previous: crate::bundle::Frozen,
    /// Where the certificates come from, read again on SIGHUP.
    http: HttpArgs,
}

/// The next burst of changes; never without `--reload`, or once the
/// watcher stopped.
async fn next_change(changes: &mut Option<dev_reload::Changes>) {
    if let Some(c) = changes {
        if c.next().await {
            return;
        }
    }
    *changes = None;
    std::future::pending::<()>().await
}

/// Reload the certificates of a `run` with TLS, after SIGHUP; false if
/// the new ones were refused (the old ones keep serving).
fn reload_certificates(app: &RunningApp) -> bool {
    match tls_for(&app.http, &[]) {
        Ok(Some(tls)) => {
            app.site.swap_tls(tls);
            tracing::info!("SIGHUP: certificates reloaded");
            true
        }
        Ok(None) => true,
        Err(e) => {
            tracing::error!("SIGHUP: keeping the old certificates: {e:#}");
            false
        }
    }
}

/// Remove, off the reactor, the live copies in a from-source app's cache
/// that no running version holds (`bundle::prune_live`).
fn prune_live_copies(source: Option<&BuildOptions>) {
    if let Some(opts) = source {
        let cache = opts.cache_dir.clone();
        tokio::task::spawn_blocking(move || crate::bundle::prune_live(&cache));
    }
}

/// Rebuild (when running from source) and restart the app whenever what
/// it is built from changes (`run --reload`) and on SIGHUP, which also
/// reloads the certificates; failures leave the running version serving.
async fn reload_app(
    mut changes: Option<dev_reload::Changes>,
    mut hup: tokio::signal::unix::Signal,
    source: Option<BuildOptions>,
    mut current: PathBuf,
    mut app: RunningApp,
) {
    loop {
        let hangup = tokio::select! {
            () = next_change(&mut changes) => false,
            got = hup.recv() => {
                if got.is_none() {
                    return;
                }
                true
            }
        };
        // One SIGHUP counts once in the metrics: failed if either the
        // certificates or the app could not be reloaded.
        let certs_ok = !hangup || reload_certificates(&app);
        let why = if hangup { "SIGHUP" } else { "--reload" };
        let t0 = Instant::now();
        let (component, how) = match &source {
            Some(opts) => match dev_reload::rebuild(opts.clone()).await {
                // A live build is the same until the requirements change:
                // the edit is in the app's directories, which the next
                // instances import from.
                Ok(report) if report.path == current && !opts.live && !hangup => continue,
                Ok(report) if report.cached && opts.live => {
                    (report.path, "no rebuild: the app is imported live")
                }
                Ok(report) if report.cached => (report.path, "from the build cache"),
                Ok(report) => {
                    // What the new import printed and warned of, as the
                    // first build's report said it.
                    log_report(&report_lines(&report, t0.elapsed()));
                    (report.path, "rebuilt")
                }
                Err(e) => {
                    metrics::reload(false);
                    tracing::error!(
                        "{why}: build failed, still serving the previous version: {e:#}"
                    );
                    continue;
                }
            },
            None if hangup => (current.clone(), "the component as it is now"),
            None => (current.clone(), "the component changed"),
        };
        let frozen = match &source {
            Some(opts) => crate::bundle::freeze_dirs(&app.live_dirs, &opts.cache_dir),
            None => Ok(crate::bundle::Frozen::default()),
        };
        let frozen = match frozen {
            Ok(f) => f,
            Err(e) => {
                metrics::reload(false);
                tracing::error!(
                    "{why}: cannot copy the app's files, still serving the previous version: {e:#}"
                );
                continue;
            }
        };
        let live = source.as_ref().is_some_and(|o| o.live);
        if live && !hangup && component == current && frozen.dirs == app.frozen.dirs {
            // A change to nothing that ships (an empty directory made or
            // removed, a file written back as it was).
            tracing::info!("--reload: no shipped file changed; still serving the same version");
            continue;
        }
        let spec = AppSpec {
            name: app.name.clone(),
            component: component.clone(),
            grants: app.grants.clone(),
            limits: app.limits.clone(),
            live_dirs: frozen.dirs.clone(),
        };
        let started = async {
            let statics = StaticFiles::new(app.statics.clone())?;
            let tenant = Tenant::start(&app.starter, spec, true, Duration::ZERO).await?;
            anyhow::Ok((tenant, statics))
        }
        .await;
        match started {
            Ok((pool, statics)) => {
                // Requests already running hold the old pool and finish on it.
                app.site.swap(Router::single(pool, statics));
                metrics::reload(certs_ok);
                tracing::info!(
                    "{why}: swapped in {} in {:.2}s ({how})",
                    app.name,
                    t0.elapsed().as_secs_f64()
                );
                current = component;
                app.previous = std::mem::replace(&mut app.frozen, frozen);
                // Copies of versions before the previous one (and of
                // edits that never started) are let go.
                prune_live_copies(source.as_ref());
            }
            Err(e) => {
                metrics::reload(false);
                tracing::error!(
                    "{why}: cannot start the new version, still serving the previous one: {e:#}"
                );
            }
        }
    }
}

/// What a reload changed, by app name: added, changed (a new tenant in
/// place of the old one) and removed, each list clipped for the log.
fn reload_changes(previous: &[Running], next: &[Running]) -> String {
    let before: std::collections::HashMap<&str, &Arc<Tenant>> = previous
        .iter()
        .map(|r| (r.config.name.as_str(), &r.app))
        .collect();
    let after: std::collections::HashSet<&str> =
        next.iter().map(|r| r.config.name.as_str()).collect();
    let (mut added, mut changed) = (Vec::new(), Vec::new());
    for r in next {
        match before.get(r.config.name.as_str()) {
            None => added.push(r.config.name.as_str()),
            Some(old) if !Arc::ptr_eq(old, &r.app) => changed.push(r.config.name.as_str()),
            Some(_) => {}
        }
    }
    let removed: Vec<&str> = previous
        .iter()
        .map(|r| r.config.name.as_str())
        .filter(|name| !after.contains(name))
        .collect();
    let listed = |what: &str, names: &[&str]| {
        const SHOWN: usize = 10;
        let mut text = format!("{what} {}", names[..names.len().min(SHOWN)].join(", "));
        if names.len() > SHOWN {
            text.push_str(&format!(" and {} more", names.len() - SHOWN));
        }
        text
    };
    let parts: Vec<String> = [
        ("added", &added),
        ("changed", &changed),
        ("removed", &removed),
    ]
    .into_iter()
    .filter(|(_, names)| !names.is_empty())
    .map(|(what, names)| listed(what, names))
    .collect();
    if parts.is_empty() {
        "nothing changed".to_owned()
    } else {
        parts.join("; ")
    }
}

/// A running tenant and what it was started from.
struct Running {
    config: TenantConfig,
    /// The component file's identity when it was checked: a file replaced
    /// since (even with its old size and time) is checked again.
    file: Option<digests::Identity>,
    app: Arc<Tenant>,
    statics: Arc<StaticFiles>,
}

/// Check what is new or changed, reuse what is not; all or nothing. An app
/// is loaded on its first request, not here.
fn check_tenants(
    starter: &Starter,
    (configs, tolerate_broken): (Vec<TenantConfig>, bool),
    previous: &[Running],
) -> Result<Vec<Running>> {
    let mut next = Vec::with_capacity(configs.len());
    // Names are unique in a config: a reload of thousands of apps looks
    // each up instead of comparing it with every other.
    let by_name: std::collections::HashMap<&str, &Running> = previous
        .iter()
        .map(|r| (r.config.name.as_str(), r))
        .collect();
    for config in configs {
        let stamp = digests::Identity::of_path(&config.component).ok();
        let same = by_name
            .get(config.name.as_str())
            .filter(|r| r.config == config && r.file == stamp);
        let (app, statics) = match same {
            Some(r) => (r.app.clone(), r.statics.clone()),
            None => {
                let spec = AppSpec {
                    name: config.name.clone(),
                    component: config.component.clone(),
                    grants: config.grants.clone(),
                    limits: config.limits.clone(),
                    live_dirs: Vec::new(),
                };
                let app = Tenant::check(
                    starter,
                    spec,
                    (false, tolerate_broken),
                    config::DEFAULT_IDLE_TIMEOUT,
                )
                .with_context(|| config.component_at.to_string())?;
                let statics = StaticFiles::new(config.statics.clone())
                    .with_context(|| format!("app {}", config.name))?;
                (app, Arc::new(statics))
            }
        };
        if same.is_none() && app.wasi_http() && !config.path_prefix.is_empty() {
            tracing::warn!(
                app = %config.name,
                "{} exports wasi:http, which has no SCRIPT_NAME: the app sees the path after \
                 {} and the prefix only in X-Forwarded-Prefix, so its links lack the prefix unless \
                 it reads that header (Werkzeug's ProxyFix(x_prefix=1)); build it without --world \
                 to get SCRIPT_NAME",
                config.component.display(),
                config.path_prefix
            );
        }
        next.push(Running {
            config,
            file: stamp,
            app,
            statics,
        });
    }
    Ok(next)
}

fn router_for(running: &[Running]) -> Router {
    Router::new(
        running
            .iter()
            .map(|r| Route {
                hosts: r.config.hosts.clone(),
                prefix: r.config.path_prefix.clone(),
                app: r.app.clone(),
                statics: r.statics.clone(),
            })
            .collect(),
    )
}

/// How many apps a config may hold loaded (`--max-loaded`), and whether
/// `--preload` loads them all up front.
#[derive(Clone)]
struct Fits {
    max_loaded: u64,
    /// The open-file limit, where it lowered `--max-loaded`.
    lowered_by: Option<u64>,
    /// Descriptors each loaded app holds.
    per_app: u64,
    preload: bool,
    /// The tenants file, for errors.
    path: PathBuf,
}

/// Descriptors a loaded app holds with one warm instance (its mounted
/// directories and its /tmp): 4,034 in a process with 1,000 hello apps
/// loaded, measured. One more under `--compact-cache`: the file its
/// snapshot was expanded into, kept to record which pages were read.
const FILES_PER_LOADED_APP: u64 = 4;

impl Fits {
    /// `--max-loaded`, lowered (with a warning) to what a quarter of the
    /// process's open-file limit holds, guests' own files having half:
    /// past it, a client naming cold hosts would run the process out of
    /// descriptors, and every tenant's loads and accepts would fail.
    fn new(
        max_loaded: u64,
        nofile: Option<u64>,
        (preload, compact): (bool, bool),
        path: PathBuf,
    ) -> Fits {
        let per_app = FILES_PER_LOADED_APP + u64::from(compact);
        let fit = nofile.map(|n| (n / 4 / per_app).max(1));
        let lowered_by = nofile.filter(|_| fit.is_some_and(|f| f < max_loaded));
        let max = fit.map_or(max_loaded, |f| f.min(max_loaded));
        if let Some(nofile) = lowered_by {
            tracing::warn!(
                "--max-loaded {max_loaded} lowered to {max}: a loaded app holds about {per_app} open files, \
                 and this process may open {nofile}, a quarter of them for loaded apps (guests' own files get half); \
                 raise the limit (`ulimit -n`, systemd's LimitNOFILE=65536) to keep more loaded"
            );
        }
        Fits {
            max_loaded: max,
            lowered_by,
            per_app,
            preload,
            path,
        }
    }

    /// What to raise for `n` apps to stay loaded.
    fn raise(&self, n: usize) -> String {
        match self.lowered_by {
            Some(nofile) => format!(
                "raise the open-file limit ({nofile}; `ulimit -n`, LimitNOFILE) to at least {}",
                n as u64 * self.per_app * 4
            ),
            None => format!("raise --max-loaded to at least {n}"),
        }
    }

    /// Refuse a config whose apps must all stay loaded (`--preload`, or
    /// `idle_timeout = "0"`) but would not fit under `--max-loaded`.
    fn check(&self, configs: &[TenantConfig]) -> Result<()> {
        let (n, max, path) = (configs.len(), self.max_loaded, self.path.display());
        // Not an error: most apps hold few files. But a few holding theirs
        // then leave the others none, and the operator should know.
        let share = crate::runtime::guests_share();
        // Only loaded apps hold files: at most --max-loaded of them, the
        // largest grants first (round DE: 2,001 tenants were said to hold
        // 2 million files under --max-loaded 2).
        let mut grants: Vec<usize> = configs.iter().map(|c| c.grants.max_open_files).collect();
        grants.sort_unstable_by(|a, b| b.cmp(a));
        let loaded = usize::try_from(max).unwrap_or(usize::MAX).min(n);
        let granted = grants[..loaded]
            .iter()
            .fold(0usize, |sum, &g| sum.saturating_add(g));
        if granted > share && loaded > 1 {
            tracing::warn!(
                "the {loaded} apps of {path} that may be loaded at once may hold {granted} open files \
                 together (their max_open_files), more than the {share} all apps may hold in this \
                 process (half its open-file limit): apps that hold theirs can leave the others none; \
                 raise the limit (`ulimit -n`, systemd's LimitNOFILE), or lower max_open_files or \
                 --max-loaded"
            );
        }
        let cap = match self.lowered_by {
            Some(_) => format!("the {max} apps the open-file limit allows loaded at once"),
            None => format!("--max-loaded {max}"),
        };
        if self.preload && n as u64 > max {
            anyhow::bail!(UserError(format!(
                "--preload loads all {n} apps of {path}, but {cap} would unload them again as it goes: \
                 {}, or drop --preload",
                self.raise(n)
            )));
        }
        let pinned = configs
            .iter()
            .filter(|c| c.limits.idle_timeout == Some(Duration::ZERO))
            .count();
        if pinned as u64 > max {
            anyhow::bail!(UserError(format!(
                "{pinned} apps of {path} have idle_timeout = \"0\" (never unloaded), more than {cap}: \
                 {}, or give some of them an idle_timeout",
                self.raise(pinned)
            )));
        }
        // As many as the cap fills it: every other app's load would pass
        // the cap, as none of them can be unloaded to make room.
        if pinned as u64 == max && n > pinned {
            anyhow::bail!(UserError(format!(
                "{pinned} apps of {path} have idle_timeout = \"0\" (never unloaded), which fills {cap} \
                 and leaves no room to load the other {}: {}, or give some of them an idle_timeout",
                n - pinned,
                self.raise(pinned + 1)
            )));
        }
        Ok(())
    }

    /// With `--preload`, load every app of `running` not loaded yet;
    /// with `tolerate_broken`, one that fails is said and left to answer
    /// 503 (as it does without `--preload`) instead of failing the start
    /// or the reload.
    async fn preload(&self, running: &[Running], tolerate_broken: bool) -> Result<()> {
        if !self.preload {
            return Ok(());
        }
        // One after another: the first compiles what the others share.
        for r in running {
            match r.app.preload().await {
                Ok(_) => {}
                // Its load logged why; its requests get 503 until it is
                // fixed (each load tries it again).
                Err(e) if tolerate_broken => tracing::error!(
                    app = %r.config.name,
                    "--preload: not loaded, served 503 until its component is fixed \
                     (--tolerate-broken); the other apps are served: {e}"
                ),
                Err(e) => {
                    return Err(anyhow::Error::from(e)).context(
                        "--preload (with --tolerate-broken, a broken app would answer 503 instead)",
                    )
                }
            }
        }
        // Their idle time starts now, when they can be asked: one that took
        // longer to load than its `idle_timeout` (a first compile) would
        // otherwise be unloaded as the server starts listening.
        for r in running {
            r.app.touch();
        }
        Ok(())
    }
}

async fn serve_command(args: ServeArgs) -> Result<()> {
    let t0 = Instant::now();
    // Each app's responses hold at most half: see `held_bytes`.
    crate::runtime::limit_held_bytes(
        args.http.max_response_buffer as usize,
        args.http.header_timeout,
        true,
    );
    // First: a SIGHUP during a long start (thousands of apps, --preload)
    // must not kill the server (the signal's default action, which
    // systemd's `Restart=on-failure` takes for a clean stop). One that
    // arrives meanwhile reloads once the server listens.
    let mut hup = hangup()?;
    ignore_user_signals()?;
    let mut stop = server::Stop::install()?;
    let server_cfg = args.http.server_config(args.listen);
    let reserved = reserve(&server_cfg)?;
    // A mistake in the file or a component is told before anything
    // listens, the metrics port included (it opens once the components
    // are checked, so it answers health checks during a --preload).
    let tolerate_broken = args.tolerate_broken;
    let configs = tenants::load_with(&args.config, tolerate_broken)?;
    let tls = tls_for(&args.http, &configs)?;
    let metered = args.http.metrics.is_some();
    let loader = new_loader(
        args.cache.cache_dir.clone(),
        Allocation::OnDemand,
        &args.http.loading,
    )?;
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let fits = Fits::new(
        args.max_loaded,
        nofile,
        (args.preload, args.http.loading.compact_cache),
        args.config.clone(),
    );
    let max_loaded = usize::try_from(fits.max_loaded).unwrap_or(usize::MAX);
    let starter = Starter::new(loader.clone(), scheduler(&loader), metered, max_loaded);
    // Apps load lazily, each making its /tmp then: a temp dir that cannot
    // hold them is an error now, not a 503 on every first request.
    crate::scratch::prepare()?;
    fits.check(&configs)?;
    let started = async {
        let running = check_tenants(&starter, (configs, tolerate_broken), &[])?;
        start_ops(&args.http, server_cfg.listen).await?;
        fits.preload(&running, tolerate_broken).await?;
        anyhow::Ok((running, listen(reserved, &server_cfg)?))
    };
    let Some((running, listener)) = unless_stopped(&mut stop, started).await? else {
        return Ok(());
    };
    metrics::READY.store(true, Ordering::Release);
    tracing::info!(
        "listening on {}://{} ({} app{} from {}, ready in {:.0} ms)",
        scheme(&tls),
        listener.local_addr()?,
        running.len(),
        if running.len() == 1 { "" } else { "s" },
        args.config.display(),
        t0.elapsed().as_secs_f64() * 1000.0
    );
    let site = Arc::new(Site::new(router_for(&running), &server_cfg, tls));
    let idle = sweep_idle(site.clone());
    let http = args.http.clone();

    let reload_site = site.clone();
    let config_path = args.config.clone();
    tokio::spawn(async move {
        let mut running = Arc::new(running);
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading {}", config_path.display());
            // Each attempt in its own task: whatever goes wrong in it, even a
            // panic, leaves the running config and this loop as they were.
            // A blocking one: reading and hashing thousands of files must
            // not hold a thread that serves requests.
            let attempt = tokio::task::spawn_blocking({
                let (starter, path, previous, http) = (
                    starter.clone(),
                    config_path.clone(),
                    running.clone(),
                    http.clone(),
                );
                let fits = fits.clone();
                move || {
                    let configs = tenants::load_with(&path, tolerate_broken)?;
                    fits.check(&configs)?;
                    let tls = tls_for(&http, &configs)?;
                    let next = check_tenants(&starter, (configs, tolerate_broken), &previous)?;
                    anyhow::Ok((next, tls))
                }
            });
            // New and changed apps load before the swap, as at start: what
            // --preload promises holds across reloads too.
            let attempt = match attempt.await {
                Ok(Ok((next, tls))) => match fits.preload(&next, tolerate_broken).await {
                    Ok(()) => Ok(Ok((next, tls))),
                    Err(e) => Ok(Err(e)),
                },
                other => other,
            };
            match attempt {
                Ok(Ok((next, tls))) => {
                    metrics::reload(true);
                    reload_site.swap(router_for(&next));
                    // A changed quota binds the version still finishing its
                    // requests now, not once the new one first loads.
                    for tenant in next.iter() {
                        for dir in &tenant.config.grants.dirs {
                            if let Some(limit) = dir.quota {
                                crate::runtime::QuotaLedger::requota(
                                    &tenant.config.name,
                                    &dir.host,
                                    limit,
                                );
                            }
                        }
                    }
                    // Read again at every reload, renewed or not.
                    let certs = if let Some(tls) = tls {
                        reload_site.swap_tls(tls);
                        "; certificates reloaded"
                    } else {
                        ""
                    };
                    tracing::info!(
                        "reloaded: {} app{} ({}){certs}",
                        next.len(),
                        if next.len() == 1 { "" } else { "s" },
                        reload_changes(&running, &next)
                    );
                    // Apps no longer routed finish their in-flight requests
                    // (those hold the pool) and are dropped after; their
                    // series go now.
                    let kept: std::collections::HashSet<&str> =
                        next.iter().map(|n| n.config.name.as_str()).collect();
                    for gone in running
                        .iter()
                        .filter(|r| !kept.contains(r.config.name.as_str()))
                    {
                        metrics::tenant_removed(&gone.config.name);
                    }
                    running = Arc::new(next);
                }
                Ok(Err(e)) => {
                    metrics::reload(false);
                    tracing::error!("reload failed, still serving the previous config: {e:#}")
                }
                Err(panic) => {
                    metrics::reload(false);
                    tracing::error!(
                        "reload failed (a bug: {panic}), still serving the previous config"
                    )
                }
            }
        }
    });
    serve_until_stopped(listener, site, &server_cfg, stop, idle).await
}

/// Serve `site` until SIGINT or SIGTERM and the grace period after it,
/// then stop its idle sweep.
async fn serve_until_stopped(
    listener: TcpListener,
    site: Arc<Site>,
    cfg: &ServerConfig,
    mut stop: server::Stop,
    idle: tokio::task::JoinHandle<()>,
) -> Result<()> {
    let served = server::serve(listener, site, cfg, stop.recv()).await;
    idle.abort();
    served
}

/// What `start` gives, or none if SIGINT or SIGTERM comes first: the
/// start is dropped, and loads and compiles under way are abandoned
/// (`main` does not wait long for them).
async fn unless_stopped<T>(
    stop: &mut server::Stop,
    start: impl std::future::Future<Output = Result<T>>,
) -> Result<Option<T>> {
    tokio::select! {
        started = start => started.map(Some),
        () = stop.recv() => {
            tracing::info!("stopped by a signal while starting, before listening");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_read_back_as_they_were() {
        for word in ["plain/path-1.0", "u10 sp'q", "a\"b$c`d\\e", "", "*;|&"] {
            let quoted = shell_word(word);
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {quoted}"))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), word, "{quoted}");
        }
        assert_eq!(shell_word("plain/path-1.0"), "plain/path-1.0");
    }

    #[test]
    fn max_loaded_is_lowered_to_what_the_open_file_limit_holds() {
        let fits = |max, nofile| Fits::new(max, nofile, (false, false), PathBuf::from("t.toml"));
        assert_eq!(fits(1000, Some(65536)).max_loaded, 1000);
        assert_eq!(fits(1000, None).max_loaded, 1000);
        let low = fits(1000, Some(1024));
        assert_eq!((low.max_loaded, low.lowered_by), (64, Some(1024)));
        assert_eq!(fits(10, Some(1024)).lowered_by, None);
        assert_eq!(fits(1000, Some(3)).max_loaded, 1);
        // What to raise says the limit, not the flag the user set high.
        let preload = Fits {
            preload: true,
            ..low.clone()
        };
        assert!(
            preload
                .raise(100)
                .contains("raise the open-file limit (1024"),
            "{}",
            preload.raise(100)
        );
        assert!(preload.raise(100).contains("to at least 1600"));
        assert_eq!(fits(5, None).raise(7), "raise --max-loaded to at least 7");
    }
}
