//! Command-line flags (clap) and their translation into validated config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::build::deps::Source;
use crate::build::BuildOptions;
use crate::config::{self, DirGrant, Grants, Limits, ServerConfig};

/// Serve Python WSGI apps, each in its own WebAssembly sandbox.
#[derive(Debug, Parser)]
#[command(name = "rsgi-wasm", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the process's arguments, exiting with clap's message on an error.
    ///
    /// Every option that takes a value takes the next word whatever it
    /// starts with, so `--max-requests -1` or `--memory -5M` is refused by
    /// that flag's own check, naming it, instead of being read as unknown
    /// short flags; and `--memory --reload` names `--memory`.
    pub fn parse_args() -> Cli {
        let matches = hyphen_values(Cli::command())
            .try_get_matches()
            .unwrap_or_else(|e| {
                gunicorn_hint(&e)
                    .unwrap_or_else(|| serve_key_hint(e))
                    .exit()
            });
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

/// gunicorn's flags that have no namesake here, and what to use instead:
/// clap's own hint offered one of another meaning (`--preload` →
/// `--reload`, `--log-level` → `--log-rate`).
const GUNICORN_FLAGS: &[(&[&str], &str)] = &[
    (&["bind", "b"], "--listen HOST:PORT"),
    (&["w"], "--workers N"),
    (&["t"], "--timeout"),
    (
        &["preload"],
        "nothing: the app is imported once, at build time, and every instance starts from that",
    ),
    (
        &["threads"],
        "--workers N: an instance serves one request at a time",
    ),
    (
        &["worker-class", "k"],
        "nothing: every app runs in WebAssembly instances (--workers N of them)",
    ),
    (&["worker-connections"], "--max-connections"),
    (
        &["log-level"],
        "RUST_LOG=LEVEL in the environment (warning, info, debug, ...)",
    ),
    (
        &["access-logfile", "error-logfile"],
        "stderr: access lines and the app's output go there; redirect it",
    ),
    (
        &["access-logformat"],
        "--log-format json for the access line's fields",
    ),
    (
        &["capture-output"],
        "nothing: the app's output is logged, tagged with its name",
    ),
    (
        &["chdir"],
        "-p DIR (the first -p directory is the working directory)",
    ),
    (
        &["keep-alive"],
        "--header-timeout (also the idle keep-alive timeout)",
    ),
    (&["graceful-timeout"], "--grace"),
    (
        &[
            "limit-request-line",
            "limit-request-fields",
            "limit-request-field_size",
        ],
        "nothing: the request head is limited to 64 KiB and 100 header fields",
    ),
    (
        &["daemon", "pid", "user", "group"],
        "a service manager (systemd, a container runtime; see docs/deploy.md)",
    ),
    (
        &["umask"],
        "nothing: the app writes only to --dir grants and its private /tmp",
    ),
];

/// For an unknown flag that is gunicorn's, an error saying what to use.
fn gunicorn_hint(e: &clap::Error) -> Option<clap::Error> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let (ErrorKind::UnknownArgument, Some(ContextValue::String(flag))) =
        (e.kind(), e.get(ContextKind::InvalidArg))
    else {
        return None;
    };
    let name = flag.trim_start_matches('-').split('=').next()?;
    let (_, instead) = GUNICORN_FLAGS.iter().find(|(f, _)| f.contains(&name))?;
    Some(Cli::command().error(
        ErrorKind::UnknownArgument,
        format!(
            "{flag} is gunicorn's; here use {instead} (docs/deploy.md, \"Coming from gunicorn\")"
        ),
    ))
}

/// `e`, or for a flag `serve` does not take that is an `[[app]]` key
/// (`--workers`), an error saying to set it in the tenants file: clap's
/// own hint offers a flag of another meaning (`--idle-timeout` →
/// `--header-timeout`) or to pass it as a value.
fn serve_key_hint(e: clap::Error) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let flag = match (e.kind(), e.get(ContextKind::InvalidArg)) {
        (ErrorKind::UnknownArgument, Some(ContextValue::String(s))) => s.clone(),
        _ => return e,
    };
    let name = flag
        .trim_start_matches('-')
        .split('=')
        .next()
        .unwrap_or_default();
    let is_key = AppKeys::command()
        .get_arguments()
        .any(|a| a.get_long() == Some(name));
    if !is_key || std::env::args().nth(1).as_deref() != Some("serve") {
        return e;
    }
    Cli::command().error(
        ErrorKind::UnknownArgument,
        format!(
            "serve takes each app's settings from its tenants file, not as flags: write `{} = ...` in the [[app]] tables instead of {flag}",
            key_of(name)
        ),
    )
}

/// `command` with every option that must take a value allowed to take one
/// that starts with `-`, in each subcommand too. Not one whose value is
/// optional (`--pyproject [FILE]`): that would swallow the next flag.
fn hyphen_values(command: clap::Command) -> clap::Command {
    command
        .mut_args(|arg| {
            let needs_value = arg.get_action().takes_values()
                && arg.get_num_args().is_none_or(|n| n.min_values() > 0);
            if needs_value && !arg.is_positional() {
                arg.allow_hyphen_values(true)
            } else {
                arg
            }
        })
        .mut_subcommands(hyphen_values)
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a WSGI app (MODULE:CALLABLE) into a sandboxed component.
    Build(BuildArgs),
    /// Serve one app over HTTP: a component, or an app built on the fly.
    Run(Box<RunArgs>),
    /// Run one of the app's scripts in its sandbox: `exec app.wasm -- manage.py migrate`.
    Exec(ExecArgs),
    /// Serve many apps from a tenants.toml (SIGHUP reloads it).
    Serve(ServeArgs),
    /// Write out the files a component ships (stdlib, app, site-packages)
    /// for another wasi:http host, and print its flags.
    Unpack(UnpackArgs),
    /// The child `build` starts for componentize-py's pre-initialisation.
    #[command(name = crate::build::preinit::SUBCOMMAND, hide = true)]
    Preinit(crate::build::preinit::Job),
}

impl Command {
    /// Whether the command serves requests (`run`, `serve`).
    pub fn serves(&self) -> bool {
        matches!(self, Command::Run(_) | Command::Serve(_))
    }

    /// Whether log lines are JSON (`--log-format json`).
    pub fn json_logs(&self) -> bool {
        match self {
            Command::Run(a) => a.http.log_format == "json",
            Command::Serve(a) => a.http.log_format == "json",
            Command::Build(_) | Command::Exec(_) | Command::Unpack(_) | Command::Preinit(_) => {
                false
            }
        }
    }
}

/// `rsgi-wasm serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The tenants file: a list of [[app]] tables (see README).
    pub config: PathBuf,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = config::DEFAULT_LISTEN, value_parser = config::listen_addr)]
    pub listen: SocketAddr,
    /// Load every app before listening (and before /readyz passes), as a
    /// first request would; apps still unload after their idle_timeout.
    #[arg(long)]
    pub preload: bool,
    /// Serve the other apps when one's component is missing or broken (at
    /// start or at a reload): that app answers 503 until its file is
    /// fixed, instead of the start failing or the reload being refused.
    /// For hosts whose tenants upload their own components.
    #[arg(long)]
    pub tolerate_broken: bool,
    /// Most apps loaded at once: loading one more first unloads the least
    /// recently used app serving nothing, so clients naming every host
    /// cannot load every app (1 to 1000000; lowered, with a warning, to a
    /// sixteenth of the open-file limit).
    #[arg(long, default_value = config::DEFAULT_MAX_LOADED, value_parser = config::count_in(config::MAX_LOADED))]
    pub max_loaded: u64,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// Where compiled components and builds are kept (every subcommand).
#[derive(Debug, Args, Clone)]
pub struct CacheArgs {
    /// Where compiled components are cached (default: $XDG_CACHE_HOME/rsgi-wasm,
    /// else ~/.cache/rsgi-wasm).
    // Empty (`RSGI_WASM_CACHE=`) is taken, as unset, not refused as missing.
    #[arg(long, value_name = "DIR", env = "RSGI_WASM_CACHE",
          value_parser = clap::builder::TypedValueParser::map(clap::builder::OsStringValueParser::new(), PathBuf::from))]
    pub cache_dir: Option<PathBuf>,
}

/// Server-wide flags shared by `run` and `serve`.
#[derive(Debug, Args, Clone)]
pub struct HttpArgs {
    /// Time in-flight requests get to finish after SIGINT/SIGTERM.
    #[arg(long, default_value = config::DEFAULT_GRACE, value_parser = config::duration_in(config::GRACE))]
    pub grace: Duration,
    /// Time a client has to send a complete request head, which is also how
    /// long an idle keep-alive connection is kept (hyper uses one timer for
    /// both); then the connection is closed. Also how long a client may
    /// stall sending its body (408) or taking the response (cut short).
    #[arg(long, default_value = config::DEFAULT_HEADER_TIMEOUT, value_parser = config::duration_in(config::HEADER_TIMEOUT))]
    pub header_timeout: Duration,
    /// Open connections at most (more wait in the accept backlog).
    #[arg(long, default_value = config::DEFAULT_MAX_CONNECTIONS, value_parser = config::count_in(config::MAX_CONNECTIONS))]
    pub max_connections: u64,
    /// Bytes of large response chunks (over 64 KiB) all responses together
    /// may hold for clients still taking them; past it an app's response
    /// waits for room, up to --header-timeout, then gets a 503 (or is cut
    /// short, if its head was out).
    #[arg(long, value_name = "SIZE", default_value = config::DEFAULT_MAX_RESPONSE_BUFFER, value_parser = config::size_in(config::MAX_RESPONSE_BUFFER))]
    pub max_response_buffer: u64,
    /// Peers allowed to set the URL scheme via X-Forwarded-Proto or
    /// Forwarded: comma-separated IPs and networks, or * for any.
    #[arg(long, env = "FORWARDED_ALLOW_IPS", default_value = config::DEFAULT_FORWARDED_ALLOW, value_parser = config::parse_trusted)]
    pub forwarded_allow_ips: config::TrustedPeers,
    /// Streams one HTTP/2 connection may have open at once (each is a
    /// request, with every per-request limit).
    #[arg(long, default_value = config::DEFAULT_HTTP2_MAX_STREAMS, value_parser = config::count_in(config::HTTP2_STREAMS))]
    pub http2_max_streams: u64,
    /// Serve HTTPS with this PEM certificate chain (leaf first); needs
    /// --keyfile. HTTP/2 and HTTP/1.1 are offered by ALPN.
    #[arg(long, value_name = "FILE", requires = "keyfile")]
    pub certfile: Option<PathBuf>,
    /// The PEM private key of --certfile.
    #[arg(long, value_name = "FILE", requires = "certfile")]
    pub keyfile: Option<PathBuf>,
    /// Require client certificates signed by one of these PEM CA
    /// certificates (mutual TLS); needs --certfile.
    #[arg(long, value_name = "FILE", requires = "certfile", requires = "keyfile")]
    pub ca_certs: Option<PathBuf>,
    /// The oldest TLS version accepted: 1.2 or 1.3.
    #[arg(long, default_value = "1.2", value_parser = crate::http::tls::parse_min_version, requires = "certfile", requires = "keyfile")]
    pub tls_min_version: crate::http::tls::MinVersion,
    /// Serve /metrics (Prometheus), /healthz and /readyz on this address:
    /// a port of its own, never the apps' (e.g. 127.0.0.1:9090).
    #[arg(long, value_name = "ADDR", value_parser = config::listen_addr)]
    pub metrics: Option<SocketAddr>,
    /// Log lines as `text`, or `json` (one object per line, the access
    /// line's fields as keys).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    #[command(flatten)]
    pub loading: Loading,
}

/// How components are loaded into the cache: `run`, `serve` and `exec`
/// load the same components, so they take the same flags.
#[derive(Debug, Args, Clone)]
pub struct Loading {
    /// Most bytes of files one component may unpack into the cache, all
    /// its directories together (the standard library is about 14 MB): a
    /// component is compressed, so a small file can hold gigabytes, and a
    /// host that serves components it did not build should keep this low.
    #[arg(long, value_name = "SIZE", default_value = config::DEFAULT_MAX_UNPACKED, value_parser = config::size_in(config::MAX_UNPACKED))]
    pub max_unpacked: u64,
    /// Keep each app's compiled heap snapshot as a delta against a similar
    /// app's (2-5 MB instead of 16-23 MB per app on disk), expanded at each
    /// load (tens of milliseconds): for hosts of many apps short of disk.
    #[arg(long)]
    pub compact_cache: bool,
}

impl HttpArgs {
    /// The TLS files, when TLS is on.
    pub fn tls_files(&self) -> Option<crate::http::tls::TlsFiles> {
        Some(crate::http::tls::TlsFiles {
            cert: self.certfile.clone()?,
            key: self.keyfile.clone()?,
            client_ca: self.ca_certs.clone(),
            min_version: self.tls_min_version,
        })
    }

    /// Server settings for `listen`.
    pub fn server_config(&self, listen: SocketAddr) -> ServerConfig {
        ServerConfig {
            listen,
            grace: self.grace,
            header_timeout: self.header_timeout,
            forwarded_allow: self.forwarded_allow_ips.clone(),
            max_connections: self.max_connections as usize,
            max_header_bytes: config::MAX_HEADER_BYTES,
            http2_max_streams: self.http2_max_streams as u32,
        }
    }
}

/// Where an app's code and dependencies come from (`build`, and `run`
/// from source).
#[derive(Debug, Args, Default)]
pub struct SourceArgs {
    /// Directory to find the app's own modules in (repeatable; default: .).
    #[arg(short = 'p', long = "path", value_name = "DIR")]
    pub paths: Vec<PathBuf>,
    /// requirements.txt with the app's dependencies (pure-Python wheels are
    /// bundled; optional C speed-ups are dropped; sdists are built if pure).
    #[arg(short = 'r', long = "requirements", value_name = "FILE")]
    pub requirements: Option<PathBuf>,
    /// Take dependencies from pyproject.toml's [project].dependencies
    /// (default file: pyproject.toml in the first -p directory).
    #[arg(
        long,
        value_name = "FILE",
        num_args = 0..=1,
        conflicts_with = "requirements"
    )]
    pub pyproject: Option<Option<PathBuf>>,
    /// An already-installed site-packages to bundle (copied; native
    /// extensions are dropped from the copy).
    #[arg(long, value_name = "DIR")]
    pub site_packages: Option<PathBuf>,
    /// Path to request at build time so what it imports is in the snapshot
    /// (repeatable; default: /).
    #[arg(long = "warmup", value_name = "PATH", value_parser = warmup_path)]
    pub warmup: Vec<String>,
    /// Do not send any warm-up request (imports only).
    #[arg(long, conflicts_with = "warmup")]
    pub no_warmup: bool,
    /// What the component exports: `wsgi` (rsgi-wasm's own boundary, the
    /// fastest here) or `wasi-http` (`wasi:http/incoming-handler@0.2.0`,
    /// for wasmtime serve, Spin and SpinKube; rsgi-wasm runs it too).
    #[arg(long, value_name = "WORLD", default_value = "wsgi", value_parser = config::parse_world)]
    pub world: config::World,
    /// How long resolving the dependencies, and then linking, importing
    /// the app and its warm-up requests, may each take before the build is
    /// stopped with an error [default: 10m].
    #[arg(long, value_name = "DURATION", value_parser = config::duration_in(config::BUILD_TIMEOUT))]
    pub build_timeout: Option<Duration>,
}

impl SourceArgs {
    /// Whether any source flag was given.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
            && self.requirements.is_none()
            && self.pyproject.is_none()
            && self.site_packages.is_none()
            && self.warmup.is_empty()
            && !self.no_warmup
            && self.world == config::World::Wsgi
            && self.build_timeout.is_none()
    }

    /// The build of `target` these flags describe.
    pub fn build_options(
        &self,
        target: String,
        output: Option<PathBuf>,
        cache_dir: PathBuf,
    ) -> BuildOptions {
        // Made absolute now: `run --reload` builds again later, and a
        // relative path would lead through the working directory, which a
        // checkout that replaced it (`mv`, `git worktree`) leaves behind.
        let absolute = |p: &PathBuf| config::absolute(p);
        let mut deps = Vec::new();
        if let Some(r) = &self.requirements {
            deps.push(Source::Requirements(absolute(r)));
        }
        if let Some(p) = &self.pyproject {
            let file = p.clone().unwrap_or_else(|| {
                self.paths
                    .first()
                    .cloned()
                    .unwrap_or_else(|| PathBuf::from("."))
                    .join("pyproject.toml")
            });
            deps.push(Source::Pyproject(absolute(&file)));
        }
        if let Some(s) = &self.site_packages {
            deps.push(Source::SitePackages(absolute(s)));
        }
        let warmup = if self.no_warmup {
            Vec::new()
        } else if self.warmup.is_empty() {
            vec!["/".to_owned()]
        } else {
            self.warmup.clone()
        };
        BuildOptions {
            target,
            // `.` by default, made absolute as the others.
            paths: if self.paths.is_empty() {
                vec![config::absolute(Path::new("."))]
            } else {
                self.paths.iter().map(absolute).collect()
            },
            deps,
            output,
            warmup,
            cache_dir,
            world: self.world,
            live: false,
            timeout: self.build_timeout.unwrap_or(config::DEFAULT_BUILD_TIMEOUT),
        }
    }
}

/// `rsgi-wasm build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The WSGI app, gunicorn style: `module:callable`, `pkg.mod:obj.attr`
    /// or `module:factory()`.
    pub target: String,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Output component.
    #[arg(
        short = 'o',
        long = "output",
        value_name = "FILE",
        default_value = "app.wasm"
    )]
    pub output: PathBuf,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// What an app may reach: directories, environment, network.
#[derive(Debug, Args, Clone)]
pub struct GrantArgs {
    /// Grant a directory: HOST_DIR::GUEST_DIR, then `:ro` for read-only
    /// (`:rw`, the default, says it) or `:quota=SIZE` to cap what it may
    /// hold (repeatable).
    #[arg(long = "dir", value_name = "HOST::GUEST[:ro|:rw][:quota=SIZE]", value_parser = config::parse_dir)]
    pub dirs: Vec<DirGrant>,
    /// Set an environment variable for the app: NAME=VALUE (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = config::parse_env)]
    pub env: Vec<(String, String)>,
    /// Read NAME=VALUE lines for the app's environment from FILE.
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
    /// Allow outbound TCP to HOST:PORT (repeatable; nothing by default):
    /// an IP address, a name the app may look up, or `*.domain` for every
    /// name under it; the port may be `*`.
    #[arg(long = "allow-net", value_name = "HOST:PORT", value_parser = config::parse_net)]
    pub allow_net: Vec<config::NetRule>,
    /// Trust the CA certificates in this PEM file for the app's outbound
    /// TLS, on top of the roots the app chooses (repeatable).
    #[arg(long = "tls-ca", value_name = "FILE")]
    pub tls_ca: Vec<PathBuf>,
    /// Memory cap per instance: 128MiB, 1GiB, ...
    #[arg(long, default_value = config::DEFAULT_MEMORY, value_parser = config::size_in(config::MEMORY))]
    pub memory: u64,
    /// What the app's private /tmp may hold, all its instances together;
    /// writes past it fail (the app sees OSError EIO, wasi-libc's mapping;
    /// the log and metrics say ENOSPC) [default: 64MiB]
    // No clap default: given at all beside a `/tmp` grant, it is refused.
    #[arg(long, value_name = "TMP_SIZE", value_parser = config::size_in(config::DISK))]
    pub tmp_size: Option<u64>,
    /// Bytes a second of stdout/stderr the app may log, in bursts of up
    /// to 4 s of it; lines past it are dropped and counted (not `exec`'s,
    /// which go to the terminal whole).
    #[arg(long, default_value = config::DEFAULT_LOG_RATE, value_parser = config::size_in(config::LOG_RATE))]
    pub log_rate: u64,
    /// Files, directories and sockets the app's instances may hold open
    /// together; past it, opening fails (files with ENOMEM, as WASI has no
    /// EMFILE; sockets with EMFILE).
    #[arg(long, default_value = config::DEFAULT_OPEN_FILES, value_parser = config::count_in(config::OPEN_FILES))]
    pub max_open_files: u64,
}

impl GrantArgs {
    /// The grants, with the env file read.
    pub fn grants(&self) -> anyhow::Result<Grants> {
        let mut env = match &self.env_file {
            Some(path) => config::read_env_file(path)?,
            None => Vec::new(),
        };
        env.extend(self.env.iter().cloned());
        // Two grants at one guest path: WASI would show only the last.
        for (i, grant) in self.dirs.iter().enumerate() {
            let g = grant.guest.trim_end_matches('/');
            if let Some(other) = self.dirs[..i]
                .iter()
                .find(|o| o.guest.trim_end_matches('/') == g)
            {
                anyhow::bail!(config::ConfigError::Dir {
                    value: format!("{}::{}", grant.host.display(), grant.guest),
                    reason: format!(
                        "{} is already granted at this guest path; give each directory a path of its own",
                        other.host.display()
                    ),
                });
            }
        }
        // A granted /tmp replaces the private one, whose size this is: a
        // limit asked for and silently not applied.
        if self.tmp_size.is_some() {
            if let Some(grant) = self
                .dirs
                .iter()
                .find(|d| d.guest.trim_end_matches('/') == "/tmp")
            {
                anyhow::bail!(config::ConfigError::TmpSizeBesideTmpGrant(
                    grant.host.display().to_string()
                ));
            }
        }
        config::refuse_quotas_over_other_grants(&self.dirs)?;
        Ok(Grants {
            dirs: self.dirs.clone(),
            env,
            net: self.allow_net.clone(),
            tls_ca: self
                .tls_ca
                .iter()
                .map(|path| config::read_tls_ca(path))
                .collect::<Result<Vec<_>, _>>()?
                .concat(),
            tmp_size: match self.tmp_size {
                Some(size) => size,
                None => config::parse_size(config::DEFAULT_TMP_SIZE)?,
            },
            log_rate: self.log_rate,
            max_open_files: self.max_open_files as usize,
        })
    }
}

/// `rsgi-wasm exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The component built by `rsgi-wasm build`.
    pub component: PathBuf,
    #[command(flatten)]
    pub grants: GrantArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub loading: Loading,
    /// The script and its arguments after `--`: `manage.py migrate`,
    /// `-m module args`, or `-c CODE args`.
    #[arg(last = true, required = true, value_name = "SCRIPT [ARGS]")]
    pub argv: Vec<String>,
}

/// `rsgi-wasm unpack`.
#[derive(Debug, Args)]
pub struct UnpackArgs {
    /// The component built by `rsgi-wasm build`.
    pub component: PathBuf,
    /// A new (or empty) directory to write the files into.
    pub dir: PathBuf,
}

/// `rsgi-wasm run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The component built by `rsgi-wasm build`, or an app to build first
    /// (into the cache; rebuilt when its files change): `path/app.py:app`,
    /// or `module:callable` with -p.
    pub app: String,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = config::DEFAULT_LISTEN, value_parser = config::listen_addr)]
    pub listen: SocketAddr,
    /// Development: watch the app's files and requirements (or the
    /// component) and swap a new version in on a change: an edit is
    /// imported live, a requirements change rebuilds; a version that does
    /// not import or build is logged and the old one keeps serving.
    #[arg(long)]
    pub reload: bool,
    #[command(flatten)]
    pub app_args: AppArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// One app's settings: the flags of `run`, and the keys of an `[[app]]`
/// in tenants.toml (`--max-body` is `max_body`), parsed by the same code.
#[derive(Debug, Args, Clone)]
pub struct AppArgs {
    #[command(flatten)]
    pub grants: GrantArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Serve files under URL_PREFIX from HOST_DIR on the host, without
    /// entering the app (ETag, Last-Modified, ranges), e.g. /static/=./static
    /// (repeatable).
    #[arg(long = "static", value_name = "URL_PREFIX=HOST_DIR", value_parser = crate::http::static_files::parse_static)]
    pub statics: Vec<crate::http::static_files::StaticMount>,
}

/// How an app's instances run: how many, for how long, with what share.
#[derive(Debug, Args, Clone)]
pub struct LimitArgs {
    /// Instances serving requests at once, kept warm.
    #[arg(long, default_value = config::DEFAULT_WORKERS, value_parser = config::count_in(config::WORKERS))]
    pub workers: u64,
    /// Requests that may wait when all workers are busy (503 beyond).
    #[arg(long, default_value = config::DEFAULT_QUEUE, value_parser = config::count_in(config::QUEUE))]
    pub queue: u64,
    /// Per-request time limit (504 past it): seconds or 500ms / 30s / 2m.
    #[arg(long, default_value = config::DEFAULT_TIMEOUT, value_parser = config::duration_in(config::TIMEOUT))]
    pub timeout: Duration,
    /// Largest request body accepted (413 above it).
    #[arg(long, default_value = config::DEFAULT_MAX_BODY, value_parser = config::size_in(config::MAX_BODY))]
    pub max_body: u64,
    /// Replace an instance after this many requests (0 = never).
    #[arg(long, default_value = config::DEFAULT_MAX_REQUESTS, value_parser = config::count_in(config::MAX_REQUESTS))]
    pub max_requests: u64,
    /// Extra requests (random per instance, up to this) before replacement.
    #[arg(long, default_value = config::DEFAULT_MAX_REQUESTS, value_parser = config::count_in(config::MAX_REQUESTS))]
    pub max_requests_jitter: u64,
    /// At most this many cores for the app's guests together (0.5, 2, ...),
    /// averaged over 100 ms; over it they wait, they are not killed.
    /// Default: no cap, but still a fair share next to other apps.
    #[arg(long, value_parser = config::parse_cpu)]
    pub cpu: Option<f64>,
    /// `pooled`: warm instances keep module state between requests;
    /// `request`: a fresh instance per request, nothing shared.
    #[arg(long, default_value = config::DEFAULT_ISOLATION, value_parser = config::parse_isolation)]
    pub isolation: config::Isolation,
    /// Unload the app (its instances, and its compiled code once no other
    /// app uses it) after this long without a request; the next request
    /// loads it again. 0 keeps it loaded. Default: 5m under `serve`, never
    /// under `run`.
    #[arg(long, value_name = "DURATION", value_parser = config::duration_in(config::IDLE_TIMEOUT))]
    pub idle_timeout: Option<Duration>,
}

impl AppArgs {
    /// The app's limits: the one place they are built.
    pub fn limits(&self) -> Limits {
        let l = &self.limits;
        Limits {
            workers: l.workers as usize,
            queue: l.queue as usize,
            timeout: l.timeout,
            memory: self.grants.memory,
            max_body: l.max_body,
            max_requests: l.max_requests,
            max_requests_jitter: l.max_requests_jitter,
            isolation: l.isolation,
            cpu: l.cpu,
            idle_timeout: l.idle_timeout,
        }
    }
}

/// Keys spelt otherwise than their flag: a list of grants reads better
/// as `dirs = [...]` than as `dir`.
const RENAMED: [(&str, &str); 1] = [("dirs", "dir")];

/// The flag (without `--`) that an `[[app]]` key stands for.
pub fn flag_of(key: &str) -> String {
    let key = RENAMED
        .iter()
        .find(|(k, _)| *k == key)
        .map_or(key, |(_, f)| f);
    key.replace('_', "-")
}

/// The `[[app]]` key of a flag (without `--`).
pub fn key_of(flag: &str) -> String {
    let key = flag.replace('-', "_");
    RENAMED
        .iter()
        .find(|(_, f)| *f == key)
        .map_or(key, |(k, _)| (*k).to_owned())
}

/// An `[[app]]`'s settings keys, parsed as flags (see `tenants`).
#[derive(Debug, Parser)]
#[command(no_binary_name = true, disable_help_flag = true)]
pub struct AppKeys {
    #[command(flatten)]
    pub app: AppArgs,
}

impl RunArgs {
    /// Split the flags into server settings, grants and limits.
    pub fn split(&self) -> anyhow::Result<(ServerConfig, Grants, Limits)> {
        let server = self.http.server_config(self.listen);
        let grants = self.app_args.grants.grants()?;
        Ok((server, grants, self.app_args.limits()))
    }
}

/// `--warmup`: a request target as the app would see it, `/path?query`.
fn warmup_path(value: &str) -> Result<String, String> {
    if !value.starts_with('/') {
        return Err(format!(
            "`{value}` is not a path: start it with `/`, like /health or /?q=1"
        ));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a path without spaces or control characters (write them as %XX)".into());
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tmp_size_for_a_granted_tmp_is_refused() {
        let dir = std::env::temp_dir();
        let grant = format!("{}::/tmp", dir.display());
        let grants = |extra: &[&str]| {
            let argv = ["rsgi-wasm", "exec", "app.wasm", "--dir", &grant];
            let cli = Cli::try_parse_from(argv.iter().chain(extra).chain(&["--", "x.py"]))
                .expect("parses");
            let Command::Exec(args) = cli.command else {
                panic!("not exec")
            };
            args.grants.grants()
        };
        assert!(grants(&[]).is_ok());
        // Any size, the default's too: it would not apply.
        for size in ["1GiB", "64MiB"] {
            let e = grants(&["--tmp-size", size]).unwrap_err().to_string();
            assert!(e.contains("--tmp-size") && e.contains(":quota="), "{e}");
        }
        let e = grants(&["--tmp-size", "1GiB"]).unwrap_err().to_string();
        assert!(!e.contains("  "), "{e}");
    }

    #[test]
    fn gunicorn_s_flags_are_answered_with_their_counterparts() {
        for (args, says) in [
            (
                &["run", "app.wasm", "--bind", "0.0.0.0:80"][..],
                "here use --listen",
            ),
            (
                &["run", "app.wasm", "-b", "0.0.0.0:80"],
                "here use --listen",
            ),
            (
                &["run", "app.wasm", "--preload"],
                "imported once, at build time",
            ),
            (
                &["serve", "t.toml", "--log-level=warning"],
                "RUST_LOG=LEVEL",
            ),
            (&["run", "app.wasm", "-t", "30"], "here use --timeout"),
            (&["run", "app.wasm", "--umask", "007"], "--dir grants"),
        ] {
            let argv = ["rsgi-wasm"].iter().chain(args).copied();
            let e = hyphen_values(Cli::command())
                .try_get_matches_from(argv)
                .unwrap_err();
            let hint = gunicorn_hint(&e).expect("a hint").to_string();
            assert!(hint.contains(says), "{args:?}: {hint}");
        }
        let argv = ["rsgi-wasm", "run", "app.wasm", "--no-such-flag"];
        let e = hyphen_values(Cli::command())
            .try_get_matches_from(argv)
            .unwrap_err();
        assert!(gunicorn_hint(&e).is_none());
    }

    #[test]
    fn a_warmup_path_must_be_a_path() {
        assert_eq!(warmup_path("/health?x=1").unwrap(), "/health?x=1");
        for bad in ["nope", "", "/a b", "/a\n"] {
            assert!(warmup_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_value_starting_with_a_hyphen_is_judged_by_its_flag() {
        let parse = |args: &[&str]| {
            let argv = ["rsgi-wasm"].iter().chain(args).copied();
            hyphen_values(Cli::command()).try_get_matches_from(argv)
        };
        for (args, flag) in [
            (
                &["run", "app.wasm", "--max-requests", "-1"][..],
                "--max-requests",
            ),
            (&["run", "app.wasm", "--memory", "-5M"], "--memory"),
            (&["run", "app.wasm", "--timeout", "-1s"], "--timeout"),
            (&["run", "app.wasm", "--memory", "--reload"], "--memory"),
            (&["serve", "t.toml", "--grace", "-3s"], "--grace"),
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{args:?}"
            );
            assert!(e.to_string().contains(flag), "{args:?}: {e}");
        }
        // A TLS option alone names both files it needs.
        for option in [&["--tls-min-version", "1.3"][..], &["--ca-certs", "ca.pem"]] {
            let args: Vec<&str> = ["run", "app.wasm"].iter().chain(option).copied().collect();
            let e = parse(&args).unwrap_err().to_string();
            assert!(
                e.contains("--certfile") && e.contains("--keyfile"),
                "{option:?}: {e}"
            );
        }
        // A word where an app goes is still no value: an unknown flag stays one.
        let e = parse(&["run", "-x"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
        assert!(parse(&["run", "app.wasm", "--max-requests", "10"]).is_ok());
        // An optional value is not the next flag.
        let m = parse(&["build", "app:app", "--pyproject", "-o", "out.wasm"]).unwrap();
        let (_, build) = m.subcommand().unwrap();
        assert_eq!(
            build
                .get_one::<std::path::PathBuf>("output")
                .unwrap()
                .to_str(),
            Some("out.wasm")
        );
    }
}
