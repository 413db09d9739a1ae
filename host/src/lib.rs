//! rsgi-wasm: serve Python WSGI apps, each in its own WebAssembly sandbox.
//!
//! Three layers, each using only the ones below it:
//! - `cli` (flags) and `commands` (what each subcommand wires up), with
//!   `tenants` for the tenants file, and `main` below printing a failure;
//! - `build`: the build pipeline (dependencies, componentize-py, packing
//!   the app's files with `bundle`);
//! - `http` (accept loop, request checks, routing, static files) over
//!   `runtime` (engine, instances, sandbox, the WSGI imports, bodies).
//!
//! `config` (validated settings), `error` (the user-facing error),
//! `protocol` (what host and guest agree on), `allocator`, `bundle` (with `tree_counts`), `bus_error`, `cachefs`, `digests`,
//! `log_writer`, `scratch` and `latin1` are shared below all of them. `docs/architecture.md` walks one request through them;
//! `scripts/check-modules.py` checks the layering and that no two modules
//! import each other.

mod allocator;
mod build;
mod bundle;
mod bus_error;
mod cachefs;
mod cli;
mod commands;
mod config;
mod dev_reload;
mod digests;
mod env_file;
mod error;
mod http;
mod latin1;
mod log_filter;
mod log_writer;
mod metrics;
mod protocol;
mod runtime;
mod scratch;
mod tenants;
mod tree_counts;

use std::process::ExitCode;

/// Every warm instance holds a few directory handles (its preopened code
/// directories and /tmp), so a process with many tenants or workers needs
/// more descriptors than the usual soft limit of 1024: raise the soft limit
/// to the hard one, as Go's runtime and nginx do.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    if let (Some(current), Some(maximum)) = (lim.current, lim.maximum) {
        if current < maximum {
            let raised = Rlimit {
                current: Some(maximum),
                maximum: Some(maximum),
            };
            if let Err(e) = setrlimit(Resource::Nofile, raised) {
                tracing::debug!("cannot raise the open-file limit to {maximum}: {e}");
            }
        }
    }
}

/// Threads a process uses besides the runtime's workers and `main`: the
/// epoch and CPU-watch threads, the temp-dir sweep, and a few of tokio's
/// blocking pool (loading, hashing, file I/O).
const HELPER_THREADS: usize = 6;

/// Start (and end) as many threads as the process needs at once, so a
/// limit on threads too low for them (`ulimit -u`, systemd's `TasksMax`,
/// a container's pids limit) is one clear error before anything starts:
/// tokio panics when it cannot start its workers, and then hangs.
fn check_thread_limit(workers: usize) -> anyhow::Result<()> {
    let needed = workers + HELPER_THREADS;
    let mut started = Vec::with_capacity(needed);
    let mut failure = None;
    for _ in 0..needed {
        let (hold, wait) = std::sync::mpsc::channel::<()>();
        match std::thread::Builder::new().spawn(move || {
            let _ = wait.recv();
        }) {
            Ok(thread) => started.push((hold, thread)),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    for (hold, thread) in started {
        drop(hold);
        let _ = thread.join();
    }
    let Some(e) = failure else { return Ok(()) };
    use rustix::process::{getrlimit, Resource};
    let limit = match getrlimit(Resource::Nproc).current {
        Some(n) => format!("ulimit -u is {n}, counting every process and thread of this user"),
        None => "ulimit -u is unlimited, so a cgroup's pids.max (systemd's TasksMax, a container's pids limit) is the likely cap".into(),
    };
    Err(anyhow::anyhow!(
        "cannot start the {} threads rsgi-wasm needs on this machine ({e}): {limit}; raise the limit",
        needed + 1,
    ))
}

/// What to print for a command that failed with `e`: user mistakes as
/// they are, anything else with its chain of causes.
fn report(e: &anyhow::Error) -> String {
    if let Some(user) = e.downcast_ref::<error::UserError>() {
        return user.to_string();
    }
    if let Some(user) = e.downcast_ref::<config::ConfigError>() {
        return user.to_string();
    }
    if let Some(user) = e.downcast_ref::<tenants::TenantError>() {
        return user.to_string();
    }
    format!("{e:#}")
}

/// How long the exit waits for blocking work still running (file writes
/// the command did not wait for finish in far less).
const EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// How long the exit waits for queued log lines to be written (a slow
/// log reader; one stalled for good loses them): the shutdown's own lines
/// and the 503s of requests cut at `--grace` are among them.
const LOG_DRAIN_AT_EXIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The whole program: parse flags, set up logging, run the command, and
/// print a failure once with its exit status.
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse_args();
    let (filter, filter_warning) = log_filter::from_env();
    // A log that cannot be written (its pipe's reader gone, a full disk)
    // loses its lines, not the server: the subscriber's own report of the
    // failure would go to the same stderr with `eprintln!`, which panics
    // the thread serving the request.
    // The servers' lines are queued for a thread of their own
    // (`log_writer`); a build's or an exec's go straight out.
    let serves = cli.command.serves();
    let writer = if serves {
        tracing_subscriber::fmt::writer::BoxMakeWriter::new(log_writer::Queued)
    } else {
        tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr)
    };
    let logs = tracing_subscriber::fmt()
        .with_writer(writer)
        .log_internal_errors(false)
        .with_env_filter(filter);
    if cli.command.json_logs() {
        config::JSON_LOGS.store(true, std::sync::atomic::Ordering::Relaxed);
        logs.json().flatten_event(true).with_target(true).init();
    } else {
        logs.with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    if let Some(warning) = filter_warning {
        log_filter::warn(&warning);
    }
    raise_fd_limit();
    bus_error::install();
    // One worker thread more than guests may run at once (one per core,
    // `cpu::CpuScheduler`): however busy the guests, a thread is left for
    // accepting, connection I/O and static files.
    let workers = runtime::cpu::CpuScheduler::io_threads_for_this_machine();
    let runtime = check_thread_limit(workers).and_then(|()| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
    });
    let outcome = runtime.and_then(|rt| {
        let outcome = rt.block_on(commands::execute(cli.command));
        // Not waiting for whatever blocking work is left past a moment: a
        // compile a stopped start abandoned, or one a cold tenant began
        // before the grace period ran out, would hold the exit for seconds.
        rt.shutdown_timeout(EXIT_WAIT);
        outcome
    });
    // The runtime is gone, and with it every instance's and app's /tmp.
    build::remove_abandoned_work();
    scratch::finish();
    if serves {
        log_writer::drain(LOG_DRAIN_AT_EXIT);
    }
    match outcome {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            if config::JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
                // One JSON object per line holds for the last one too.
                tracing::error!("{}", report(&e));
                log_writer::drain(LOG_DRAIN_AT_EXIT);
            } else {
                // A build's error quotes what the app printed: it must not
                // drive the terminal.
                let line = format!("error: {}\n", runtime::visible_lines(&report(&e)));
                let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
            }
            ExitCode::FAILURE
        }
    }
}
