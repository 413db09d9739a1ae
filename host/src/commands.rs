//! What each subcommand does: wires config, engine, pools and server.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result};
use tokio::net::TcpListener;

use crate::build::{self, BuildOptions};
use crate::cli::{BuildArgs, Command, RunArgs, ServeArgs};
use crate::config::{Grants, Limits, ServerConfig};
use crate::engine::{self, Loader};
use crate::pool::AppPool;
use crate::sandbox::Sandbox;
use crate::server::{self, Site};
use crate::tenants::{self, Route, Router, TenantConfig};

/// Run one parsed command line.
pub async fn execute(command: Command) -> Result<()> {
    match command {
        Command::Build(args) => build_command(args).await,
        Command::Run(args) => run_command(args).await,
        Command::Serve(args) => serve_command(args).await,
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

/// Load, check and start one app: everything that can fail does so here,
/// before the port is bound (or before a reload is swapped in).
async fn start_app(
    loader: &Loader,
    name: &str,
    component: &Path,
    grants: Grants,
    limits: Limits,
) -> Result<Arc<AppPool>> {
    let engine = loader.engine();
    let loaded = loader.load(component)?;
    let pre = engine::prepare(engine, &loaded, component)?;
    let sandbox = Sandbox::new(name, grants, limits.memory);
    AppPool::start(name, engine.clone(), pre, sandbox, limits).await
}

fn new_loader(cache_dir: Option<PathBuf>) -> Result<Loader> {
    let cache = cache_dir.unwrap_or_else(engine::default_cache_dir);
    Ok(Loader::new(engine::new_engine()?, cache))
}

async fn listen(cfg: &ServerConfig) -> Result<TcpListener> {
    TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))
}

async fn run_command(args: RunArgs) -> Result<()> {
    let t0 = Instant::now();
    let (server_cfg, grants, limits) = args.split()?;
    let loader = new_loader(args.http.cache_dir.clone())?;
    let name = args
        .component
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "app".into());
    let workers = limits.workers;
    let pool = start_app(&loader, &name, &args.component, grants, limits).await?;
    let listener = listen(&server_cfg).await?;
    tracing::info!(
        "listening on http://{} (app {name}, {workers} worker{}, ready in {:.0} ms)",
        listener.local_addr()?,
        if workers == 1 { "" } else { "s" },
        t0.elapsed().as_secs_f64() * 1000.0
    );
    let site = Arc::new(Site::new(Router::single(pool), &server_cfg));
    server::serve(listener, site, &server_cfg, server::shutdown_signal()).await
}

/// A running tenant and what it was started from.
struct Running {
    config: TenantConfig,
    modified: Option<SystemTime>,
    pool: Arc<AppPool>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Start what is new or changed, reuse what is not; all or nothing.
async fn start_tenants(
    loader: &Loader,
    configs: Vec<TenantConfig>,
    previous: &[Running],
) -> Result<Vec<Running>> {
    let mut next = Vec::with_capacity(configs.len());
    for config in configs {
        let stamp = modified(&config.component);
        let same = previous
            .iter()
            .find(|r| r.config == config && r.modified == stamp);
        let pool = match same {
            Some(r) => r.pool.clone(),
            None => start_app(
                loader,
                &config.name,
                &config.component,
                config.grants.clone(),
                config.limits.clone(),
            )
            .await
            .with_context(|| format!("app {}", config.name))?,
        };
        next.push(Running {
            config,
            modified: stamp,
            pool,
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
                app: r.pool.clone(),
            })
            .collect(),
    )
}

async fn serve_command(args: ServeArgs) -> Result<()> {
    let t0 = Instant::now();
    let server_cfg = args.http.server_config(args.listen);
    let loader = new_loader(args.http.cache_dir.clone())?;
    let configs = tenants::load(&args.config)?;
    let mut running = start_tenants(&loader, configs, &[]).await?;
    let listener = listen(&server_cfg).await?;
    tracing::info!(
        "listening on http://{} ({} apps from {}, ready in {:.0} ms)",
        listener.local_addr()?,
        running.len(),
        args.config.display(),
        t0.elapsed().as_secs_f64() * 1000.0
    );
    let site = Arc::new(Site::new(router_for(&running), &server_cfg));

    let reload_site = site.clone();
    let config_path = args.config.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::error!("cannot install a SIGHUP handler; reloading is off");
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading {}", config_path.display());
            let next = match tenants::load(&config_path) {
                Ok(configs) => start_tenants(&loader, configs, &running).await,
                Err(e) => Err(e),
            };
            match next {
                Ok(next) => {
                    reload_site.swap(router_for(&next));
                    tracing::info!("reloaded: {} apps", next.len());
                    // Apps no longer routed finish their in-flight requests
                    // (those hold the pool) and are dropped after.
                    running = next;
                }
                Err(e) => {
                    tracing::error!("reload failed, still serving the previous config: {e:#}")
                }
            }
        }
    });
    server::serve(listener, site, &server_cfg, server::shutdown_signal()).await
}
