//! Thin entry point: parse flags, set up logging, run, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use rsgi_wasm::build::BuildError;
use rsgi_wasm::cli::Cli;
use rsgi_wasm::config::ConfigError;
use rsgi_wasm::tenants::TenantError;

// perf showed glibc's malloc (free lists, consolidation) at ~9% of a pooled
// hello request; with mimalloc hello at c=32 rose ~4% in A/B runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    raise_fd_limit();
    // One worker thread more than guests may run at once (one per core,
    // `cpu::CpuScheduler`): however busy the guests, a thread is left for
    // accepting, connection I/O and static files.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(rsgi_wasm::cpu::CpuScheduler::io_threads_for_this_machine())
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(rsgi_wasm::commands::execute(cli.command)) {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            // User mistakes print as they are; anything else with its causes.
            if let Some(user) = e.downcast_ref::<BuildError>() {
                eprintln!("error: {user}");
            } else if let Some(user) = e.downcast_ref::<ConfigError>() {
                eprintln!("error: {user}");
            } else if let Some(user) = e.downcast_ref::<TenantError>() {
                eprintln!("error: {user}");
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}
