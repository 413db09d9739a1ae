//! What each subcommand does: wires config, engine, pool and server.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use tokio::net::TcpListener;

use crate::build::{self, BuildOptions};
use crate::cli::{BuildArgs, Command, RunArgs};
use crate::engine;
use crate::pool::AppPool;
use crate::sandbox::Sandbox;
use crate::server::{self, Site};

/// Run one parsed command line.
pub async fn execute(command: Command) -> Result<()> {
    match command {
        Command::Build(args) => build_command(args).await,
        Command::Run(args) => run_command(args).await,
    }
}

async fn build_command(args: BuildArgs) -> Result<()> {
    let t0 = Instant::now();
    let warmup = if args.no_warmup {
        Vec::new()
    } else if args.warmup.is_empty() {
        vec!["/".to_owned()]
    } else {
        args.warmup.clone()
    };
    let report = build::build(&BuildOptions {
        target: args.target.clone(),
        paths: args.paths.clone(),
        requirements: args.requirements.clone(),
        output: args.output.clone(),
        warmup,
        cache_dir: engine::default_cache_dir(),
    })
    .await?;
    for line in &report.warmup {
        eprintln!("{line}");
    }
    eprintln!(
        "built {}: {:.1} MB in {:.1}s",
        args.output.display(),
        report.size as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn run_command(args: RunArgs) -> Result<()> {
    let t0 = Instant::now();
    let (server_cfg, grants, limits) = args.split();
    let engine = engine::new_engine()?;
    let cache = args
        .cache_dir
        .clone()
        .unwrap_or_else(engine::default_cache_dir);
    let component = engine::load_component(&engine, &args.component, &cache)?;
    let pre = engine::prepare(&engine, &component, &args.component)?;
    let name = args
        .component
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "app".into());
    let max_body = limits.max_body;
    let workers = limits.workers;
    let sandbox = Sandbox::new(&name, grants, limits.memory);
    let pool = AppPool::start(&name, engine, pre, sandbox, limits).await?;
    let listener = TcpListener::bind(server_cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", server_cfg.listen))?;
    tracing::info!(
        "listening on http://{} (app {}, {} worker{}, ready in {:.0} ms)",
        listener.local_addr()?,
        pool.name(),
        workers,
        if workers == 1 { "" } else { "s" },
        t0.elapsed().as_secs_f64() * 1000.0
    );
    let site = Arc::new(Site {
        app: pool,
        max_body,
        forwarded_allow: server_cfg.forwarded_allow.clone(),
        max_header_bytes: server_cfg.max_header_bytes,
    });
    server::serve(listener, site, &server_cfg, server::shutdown_signal()).await
}
