//! An app's grants turned into each new instance's sandbox: the `WasiCtx`
//! (the only ambient authority a guest gets), the disk quotas of its /tmp
//! and granted directories, and where its stdout/stderr go.

use std::sync::Arc;

use anyhow::{Context, Result};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{DirPerms, FilePerms, WasiCtxBuilder};

use crate::bundle::Mount;
use crate::config::{DirGrant, Grants, Isolation};
use crate::runtime::disk_quota::{Budget, Ledger};
use crate::runtime::exec_stdio::Terminal;
use crate::runtime::guest_clock::GuestMonotonic;
use crate::runtime::guest_log::{GuestLog, LogBudget};
use crate::runtime::outbound::{InstanceNet, Outbound};
use crate::runtime::quota_fs::{OpenFiles, Quotas};
use crate::runtime::store::{HostState, Network};
use crate::runtime::tls_client::TlsClients;
use crate::runtime::wsgi::WsgiCtx;
use crate::scratch::{scratch_dir, ScratchBin, ScratchDir};

/// The grants of one app, turned into a fresh `HostState` per instance.
#[derive(Clone)]
pub struct Sandbox {
    app: Arc<str>,
    env: Vec<(String, String)>,
    outbound: Arc<Outbound>,
    tls: Arc<TlsClients>,
    dirs: Arc<[DirGrant]>,
    /// The ledger of each `dirs` entry that has a quota.
    dir_quotas: Arc<[Option<Arc<Ledger>>]>,
    files: Arc<[Mount]>,
    memory: u64,
    tmp: Tmp,
    /// Shared by all the app's instances.
    log: Arc<LogBudget>,
    /// Shared by all the app's instances.
    open_files: Arc<OpenFiles>,
    /// The app's own directories are mounted live (`with_live_dirs`).
    live: bool,
}

/// The guest's /tmp: many libraries (uploads spooled by Werkzeug or
/// Django, `tempfile`) need one, so each app gets a private scratch
/// directory on the host unless it was granted its own /tmp.
#[derive(Clone)]
enum Tmp {
    /// The app was granted a /tmp with `--dir`.
    Granted,
    /// One directory for all instances of the app, removed at exit.
    Shared(Arc<ScratchDir>, Arc<Ledger>),
    /// A directory per instance (request isolation: nothing shared; an
    /// earlier instance's, emptied), all drawing on one budget.
    PerInstance(Arc<Budget>, Arc<ScratchBin>),
}

/// Where a guest's stdio goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdio {
    /// Serving: no stdin, stdout/stderr lines to the host log.
    Log,
    /// `rsgi-wasm exec`: the terminal's stdin, stdout and stderr.
    Inherit,
}

/// A piped or redirected stdin starts arriving now, as a native process
/// finds it waiting in its pipe. wasmtime-wasi reads stdin only once the
/// guest first asks, so a zero-timeout `select` found nothing yet, and
/// `echo CODE | manage.py shell` opened the interactive console (Django
/// looks so for piped code). A terminal is left alone: what is typed for
/// the shell after `exec` ends must not be taken.
fn start_reading_piped_stdin() {
    use std::io::IsTerminal;
    use wasmtime_wasi::cli::StdinStream;
    if !std::io::stdin().is_terminal() {
        // Asks wasmtime-wasi's stdin worker for a read; what it reads is
        // kept for the guest's first read (this one returns nothing).
        let _ = wasmtime_wasi::cli::stdin().p2_stream().read(64 * 1024);
    }
}

impl Sandbox {
    /// Sandbox for the app called `app` (the name tags its log lines);
    /// `files` are the component's own read-only directories; with request
    /// isolation every instance gets its own /tmp. Blocks: a granted
    /// directory with a quota is walked to charge what it holds, and
    /// `long` is called once if that takes long.
    pub fn new(
        app: &str,
        grants: Grants,
        files: Arc<[Mount]>,
        memory: u64,
        isolation: Isolation,
        long: &mut dyn FnMut(),
    ) -> Result<Self> {
        for grant in &grants.dirs {
            let g = grant.guest.trim_end_matches('/');
            if let Some(m) = files.iter().find(|m| {
                g == m.guest
                    || g.starts_with(&format!("{}/", m.guest))
                    || m.guest.starts_with(&format!("{g}/"))
            }) {
                anyhow::bail!(crate::config::ConfigError::Dir {
                    value: format!("{}::{}", grant.host.display(), grant.guest),
                    reason: format!(
                        "the guest path overlaps {}, where the app's own files are mounted; pick another guest directory, like /data",
                        m.guest
                    ),
                });
            }
        }
        let tmp = if grants
            .dirs
            .iter()
            .any(|d| d.guest.trim_end_matches('/') == "/tmp")
        {
            Tmp::Granted
        } else if isolation == Isolation::Request {
            Tmp::PerInstance(
                Budget::of_app(grants.tmp_size, app, "/tmp"),
                ScratchBin::new(app),
            )
        } else {
            Tmp::Shared(
                Arc::new(scratch_dir(app)?),
                Ledger::new(Budget::of_app(grants.tmp_size, app, "/tmp"), 0),
            )
        };
        let mut dir_quotas = Vec::new();
        for dir in &grants.dirs {
            let ledger = match dir.quota {
                None => None,
                Some(limit) => {
                    let ledger = Ledger::of_grant(app, &dir.guest, limit, &dir.host, long)
                        .with_context(|| {
                            format!(
                                "measuring what {} holds for its quota (app {app})",
                                dir.host.display()
                            )
                        })?;
                    if ledger.used() > limit {
                        tracing::warn!(
                            app = %app,
                            "{} already holds {} bytes, over its quota of {limit}; the app's writes there fail with ENOSPC until it deletes files, or until it loads again after files are removed from outside",
                            dir.host.display(),
                            ledger.used()
                        );
                    }
                    Some(ledger)
                }
            };
            dir_quotas.push(ledger);
        }
        let app: Arc<str> = app.into();
        let outbound = Outbound::new(&app, grants.net);
        Ok(Sandbox {
            tls: TlsClients::new(grants.tls_ca, outbound.clone()),
            outbound,
            env: grants.env,
            dirs: grants.dirs.into(),
            dir_quotas: dir_quotas.into(),
            files,
            memory,
            tmp,
            log: LogBudget::new(&app, grants.log_rate),
            open_files: OpenFiles::new(grants.max_open_files, app.clone()),
            app,
            live: false,
        })
    }

    /// Mount the app's own directories from `dirs` as they are (`run
    /// --reload`'s live builds, whose snapshot does not hold the app);
    /// none: the component's copies.
    pub fn with_live_dirs(mut self, dirs: &[std::path::PathBuf]) -> Self {
        if !dirs.is_empty() {
            self.files = crate::bundle::with_live_dirs(&self.files, dirs);
            self.live = true;
        }
        self
    }

    /// Whether each instance must import the app as it starts (a live
    /// build), so a version that does not import fails to start.
    pub fn live(&self) -> bool {
        self.live
    }

    /// A new instance's state: only the granted dirs and env, the app's own
    /// files read-only, no network unless granted.
    pub fn host_state(&self, stdio: Stdio) -> Result<HostState> {
        let mut b = WasiCtxBuilder::new();
        b.monotonic_clock(GuestMonotonic);
        // File system calls run on the guest's own thread, inside its run
        // slot, so their host CPU is charged to the tenant (its `cpu` cap
        // and fair share). On a blocking thread, a loop of `os.stat` or
        // `os.walk` took 2.4 times a capped tenant's cap, unseen by its
        // guest CPU metric. Only regular files and directories can be
        // opened (quota_fs), so no call waits on another program.
        b.allow_blocking_current_thread(true);
        let mut logs = Vec::new();
        match stdio {
            Stdio::Log => {
                logs.push(GuestLog::new(&self.app, "stdout", &self.log));
                logs.push(GuestLog::new(&self.app, "stderr", &self.log));
                b.stdout(logs[0].clone()).stderr(logs[1].clone());
            }
            Stdio::Inherit => {
                b.inherit_stdin()
                    .stdout(Terminal::Stdout)
                    .stderr(Terminal::Stderr);
                start_reading_piped_stdin();
            }
        }
        // Lookups pass through `outbound`, which refuses names no rule
        // covers (and counts it, so lookups are on even without a rule);
        // connections through its check. Without a rule no TCP socket can
        // be made at all: each would be a host descriptor.
        let net = InstanceNet::new(self.outbound.clone());
        b.allow_tcp(self.outbound.any())
            .allow_udp(false)
            .allow_ip_name_lookup(true);
        let check = net.clone();
        b.socket_addr_check(move |addr, use_| {
            let ok = check.check(addr, use_);
            Box::pin(async move { ok })
        });
        // What the import saw (`boot.py` sets it, as gunicorn does), unless
        // the operator gives another.
        if !self.env.iter().any(|(k, _)| k == "SERVER_SOFTWARE") {
            b.env("SERVER_SOFTWARE", SERVER_SOFTWARE);
        }
        for (k, v) in &self.env {
            b.env(k, v);
        }
        for m in self.files.iter() {
            b.preopened_dir(&m.host, &m.guest, DirPerms::READ, FilePerms::READ)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("mounting {} as {}", m.host.display(), m.guest))?;
        }
        let mut quotas = Quotas::new(self.open_files.clone());
        let own_tmp = match &self.tmp {
            Tmp::Granted => None,
            Tmp::Shared(dir, ledger) => {
                preopen_tmp(&mut b, dir.path())?;
                quotas.add_root(TMP, ledger.clone());
                None
            }
            Tmp::PerInstance(budget, bin) => {
                let dir = bin.take()?;
                preopen_tmp(&mut b, dir.path())?;
                quotas.add_root(TMP, Ledger::new(budget.clone(), 0));
                Some(dir)
            }
        };
        for (dir, quota) in self.dirs.iter().zip(self.dir_quotas.iter()) {
            if let Some(ledger) = quota {
                quotas.add_root(&dir.guest, ledger.clone());
            }
            let (dp, fp) = if dir.read_only {
                (DirPerms::READ, FilePerms::READ)
            } else {
                (DirPerms::all(), FilePerms::all())
            };
            b.preopened_dir(&dir.host, &dir.guest, dp, fp)
                .map_err(anyhow::Error::from)
                .with_context(|| {
                    format!(
                        "granting {} as {} to app {}",
                        dir.host.display(),
                        dir.guest,
                        self.app
                    )
                })?;
        }
        // Every guest resource (a stream, a pollable, a descriptor) is host
        // memory outside the memory limiter: bound how many it may hold.
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        let mut state = HostState::new(
            b.build(),
            table,
            quotas,
            own_tmp,
            self.memory,
            WsgiCtx::new(self.dirs.clone(), self.open_files.clone()),
            Network {
                net,
                tls: self.tls.clone(),
            },
        );
        state.logs = logs;
        Ok(state)
    }
}

/// Resources one instance may hold at once (wasmtime's default is a million).
const MAX_RESOURCES: usize = 65_536;

/// Where the guest sees its private scratch directory.
const TMP: &str = "/tmp";

/// The `SERVER_SOFTWARE` every instance's environment has, as the build's
/// import had it.
const SERVER_SOFTWARE: &str = "rsgi-wasm";

fn preopen_tmp(b: &mut WasiCtxBuilder, host: &std::path::Path) -> Result<()> {
    b.preopened_dir(host, TMP, DirPerms::all(), FilePerms::all())
        .map_err(anyhow::Error::from)
        .context("mounting the app's private /tmp")?;
    Ok(())
}
