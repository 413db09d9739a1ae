//! Command-line flags (clap) and their translation into validated config.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, DirGrant, Grants, Limits, ServerConfig};

/// Serve Python WSGI apps, each in its own WebAssembly sandbox.
#[derive(Debug, Parser)]
#[command(name = "rsgi-wasm", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a WSGI app (MODULE:CALLABLE) into a sandboxed component.
    Build(BuildArgs),
    /// Serve one component over HTTP.
    Run(RunArgs),
    /// Serve many apps from a tenants.toml (SIGHUP reloads it).
    Serve(ServeArgs),
}

/// `rsgi-wasm serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The tenants file: a list of [[app]] tables (see README).
    pub config: PathBuf,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub http: HttpArgs,
}

/// Server-wide HTTP flags shared by `run` and `serve`.
#[derive(Debug, Args)]
pub struct HttpArgs {
    /// Time in-flight requests get to finish after SIGINT/SIGTERM.
    #[arg(long, default_value = "30s", value_parser = config::parse_duration)]
    pub grace: Duration,
    /// Time a client has to send a complete request head, which is also how
    /// long an idle keep-alive connection is kept (hyper uses one timer for
    /// both); then the connection is closed.
    #[arg(long, default_value = "10s", value_parser = config::parse_duration)]
    pub header_timeout: Duration,
    /// Open connections at most (more wait in the accept backlog).
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,
    /// Peers allowed to set the URL scheme via X-Forwarded-Proto or
    /// Forwarded: comma-separated IPs, or * for any.
    #[arg(long, default_value = "127.0.0.1", value_parser = config::parse_trusted)]
    pub forwarded_allow_ips: config::TrustedPeers,
    /// Where compiled components are cached (default: $RSGI_WASM_CACHE,
    /// else $XDG_CACHE_HOME/rsgi-wasm, else ~/.cache/rsgi-wasm).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

impl HttpArgs {
    /// Server settings for `listen`.
    pub fn server_config(&self, listen: SocketAddr) -> ServerConfig {
        ServerConfig {
            listen,
            grace: self.grace,
            header_timeout: self.header_timeout,
            forwarded_allow: self.forwarded_allow_ips.clone(),
            max_connections: self.max_connections.max(1),
            ..ServerConfig::default()
        }
    }
}

/// `rsgi-wasm build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The WSGI app, gunicorn style: `module:callable`, `pkg.mod:obj.attr`
    /// or `module:factory()`.
    pub target: String,
    /// Directory to find the app's own modules in (repeatable; default: .).
    #[arg(short = 'p', long = "path", value_name = "DIR")]
    pub paths: Vec<PathBuf>,
    /// requirements.txt with the app's dependencies (pure-Python wheels are
    /// bundled; optional C speed-ups are dropped).
    #[arg(short = 'r', long = "requirements", value_name = "FILE")]
    pub requirements: Option<PathBuf>,
    /// Output component.
    #[arg(
        short = 'o',
        long = "output",
        value_name = "FILE",
        default_value = "app.wasm"
    )]
    pub output: PathBuf,
    /// Path to request at build time so what it imports is in the snapshot
    /// (repeatable; default: /).
    #[arg(long = "warmup", value_name = "PATH")]
    pub warmup: Vec<String>,
    /// Do not send any warm-up request (imports only).
    #[arg(long, conflicts_with = "warmup")]
    pub no_warmup: bool,
}

/// `rsgi-wasm run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The component built by `rsgi-wasm build`.
    pub component: PathBuf,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Instances serving requests at once, kept warm.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: u16,
    /// Requests that may wait when all workers are busy (503 beyond).
    #[arg(long, default_value_t = 1024)]
    pub queue: usize,
    /// Grant a directory: HOST_DIR::GUEST_DIR[:ro] (repeatable).
    #[arg(long = "dir", value_name = "HOST::GUEST[:ro]", value_parser = config::parse_dir)]
    pub dirs: Vec<DirGrant>,
    /// Set an environment variable for the app: NAME=VALUE (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = config::parse_env)]
    pub env: Vec<(String, String)>,
    /// Allow outbound TCP to HOST:PORT (repeatable; nothing by default).
    #[arg(long = "allow-net", value_name = "HOST:PORT", value_parser = config::parse_net)]
    pub allow_net: Vec<Vec<std::net::SocketAddr>>,
    /// Read NAME=VALUE lines for the app's environment from FILE.
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
    /// Per-request time limit (504 past it): seconds or 500ms / 30s / 2m.
    #[arg(long, default_value = "60s", value_parser = config::parse_duration)]
    pub timeout: Duration,
    /// Memory cap per instance: 128MiB, 1GiB, ...
    #[arg(long, default_value = "512MiB", value_parser = config::parse_size)]
    pub memory: u64,
    /// Largest request body accepted (413 above it).
    #[arg(long, default_value = "1GiB", value_parser = config::parse_size)]
    pub max_body: u64,
    /// Replace an instance after this many requests (0 = never).
    #[arg(long, default_value_t = 0)]
    pub max_requests: u64,
    /// Extra requests (random per instance, up to this) before replacement.
    #[arg(long, default_value_t = 0)]
    pub max_requests_jitter: u64,
    /// `pooled`: warm instances keep module state between requests;
    /// `request`: a fresh instance per request, nothing shared.
    #[arg(long, default_value = "pooled", value_parser = config::parse_isolation)]
    pub isolation: config::Isolation,
    #[command(flatten)]
    pub http: HttpArgs,
}

impl RunArgs {
    /// Split the flags into server settings, grants and limits.
    pub fn split(&self) -> anyhow::Result<(ServerConfig, Grants, Limits)> {
        let server = self.http.server_config(self.listen);
        let mut env = match &self.env_file {
            Some(path) => config::read_env_file(path)?,
            None => Vec::new(),
        };
        env.extend(self.env.iter().cloned());
        let grants = Grants {
            dirs: self.dirs.clone(),
            env,
            net: self.allow_net.iter().flatten().copied().collect(),
        };
        let limits = Limits {
            workers: self.workers as usize,
            queue: self.queue,
            timeout: self.timeout,
            memory: self.memory,
            max_body: self.max_body,
            max_requests: self.max_requests,
            max_requests_jitter: self.max_requests_jitter,
            isolation: self.isolation,
        };
        Ok((server, grants, limits))
    }
}
