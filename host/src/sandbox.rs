//! Per-instance sandbox state: the `WasiCtx` built from an app's grants (the
//! only ambient authority a guest gets), its memory limiter, and guest
//! stdout/stderr forwarded to the host log line by line.

use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::{Bytes, BytesMut};
use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{DirPerms, FilePerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bundle::Mount;
use crate::config::{DirGrant, Grants};
use crate::wsgi::Exchange;

/// Everything a `Store` holds for one instance.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Memory cap of this instance; remembers whether it was hit.
    pub limiter: MemoryLimiter,
    /// The request being served, if any.
    pub exchange: Option<Exchange>,
    /// The directories granted to this instance (for `send-file`).
    pub dirs: Arc<[DirGrant]>,
    /// This instance's own /tmp, removed with it (request isolation).
    _tmp: Option<tempfile::TempDir>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The grants of one app, turned into a fresh `HostState` per instance.
#[derive(Clone)]
pub struct Sandbox {
    app: Arc<str>,
    env: Vec<(String, String)>,
    net: Arc<[std::net::SocketAddr]>,
    dirs: Arc<[DirGrant]>,
    files: Arc<[Mount]>,
    memory: u64,
    tmp: Tmp,
}

/// The guest's /tmp: many libraries (uploads spooled by Werkzeug or
/// Django, `tempfile`) need one, so each app gets a private scratch
/// directory on the host unless it was granted its own /tmp.
#[derive(Clone)]
enum Tmp {
    /// The app was granted a /tmp with `--dir`.
    Granted,
    /// One directory for all instances of the app, removed at exit.
    Shared(Arc<tempfile::TempDir>),
    /// A new directory per instance (request isolation: nothing shared).
    PerInstance,
}

/// Where a guest's stdio goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdio {
    /// Serving: no stdin, stdout/stderr lines to the host log.
    Log,
    /// `rsgi-wasm exec`: the terminal's stdin, stdout and stderr.
    Inherit,
}

impl Sandbox {
    /// Sandbox for the app called `app` (the name tags its log lines);
    /// `files` are the component's own read-only directories.
    pub fn new(app: &str, grants: Grants, files: Arc<[Mount]>, memory: u64) -> Result<Self> {
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
        } else {
            Tmp::Shared(Arc::new(scratch_dir(app)?))
        };
        Ok(Sandbox {
            app: app.into(),
            env: grants.env,
            net: grants.net.into(),
            dirs: grants.dirs.into(),
            files,
            memory,
            tmp,
        })
    }

    /// Give every instance its own /tmp instead of one per app.
    pub fn tmp_per_instance(mut self) -> Self {
        if !matches!(self.tmp, Tmp::Granted) {
            self.tmp = Tmp::PerInstance;
        }
        self
    }

    /// A new instance's state: only the granted dirs and env, the app's own
    /// files read-only, no network unless granted.
    pub fn host_state(&self, stdio: Stdio) -> Result<HostState> {
        let mut b = WasiCtxBuilder::new();
        match stdio {
            Stdio::Log => {
                b.stdout(GuestLog::new(&self.app, "stdout"))
                    .stderr(GuestLog::new(&self.app, "stderr"));
            }
            Stdio::Inherit => {
                b.inherit_stdio();
            }
        }
        b.allow_tcp(!self.net.is_empty())
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if !self.net.is_empty() {
            let allowed = self.net.clone();
            b.socket_addr_check(move |addr, use_| {
                let ok = matches!(use_, SocketAddrUse::TcpConnect) && allowed.contains(&addr);
                Box::pin(async move { ok })
            });
        }
        for (k, v) in &self.env {
            b.env(k, v);
        }
        for m in self.files.iter() {
            b.preopened_dir(&m.host, &m.guest, DirPerms::READ, FilePerms::READ)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("mounting {} as {}", m.host.display(), m.guest))?;
        }
        let own_tmp = match &self.tmp {
            Tmp::Granted => None,
            Tmp::Shared(dir) => {
                preopen_tmp(&mut b, dir.path())?;
                None
            }
            Tmp::PerInstance => {
                let dir = scratch_dir(&self.app)?;
                preopen_tmp(&mut b, dir.path())?;
                Some(dir)
            }
        };
        for dir in self.dirs.iter() {
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
        Ok(HostState {
            wasi: b.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                max: self.memory as usize,
                hit: false,
            },
            exchange: None,
            dirs: self.dirs.clone(),
            _tmp: own_tmp,
        })
    }
}

fn scratch_dir(app: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("rsgi-wasm-{app}-tmp-"))
        .tempdir()
        .context("creating the app's private /tmp")
}

fn preopen_tmp(b: &mut WasiCtxBuilder, host: &std::path::Path) -> Result<()> {
    b.preopened_dir(host, "/tmp", DirPerms::all(), FilePerms::all())
        .map_err(anyhow::Error::from)
        .context("mounting the app's private /tmp")?;
    Ok(())
}

/// Caps linear memory growth; a refused growth surfaces in Python as
/// `MemoryError` and marks the instance for recycling.
pub struct MemoryLimiter {
    max: usize,
    /// A growth was refused: replace this instance after the request.
    pub hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// Guest stdout or stderr: complete lines go to the host log.
struct GuestLog {
    app: Arc<str>,
    stream: &'static str,
}

impl GuestLog {
    fn new(app: &Arc<str>, stream: &'static str) -> Self {
        GuestLog {
            app: app.clone(),
            stream,
        }
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineLogger {
            app: self.app.clone(),
            stream: self.stream,
            buf: BytesMut::new(),
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASI 0.3 guests use this; componentize-py 0.25 components
        // for our world are WASI 0.2, so their output goes via `p2_stream`.
        Box::new(tokio::io::sink())
    }
}

/// Longest partial line kept before it is logged anyway.
const MAX_LINE: usize = 16 * 1024;

struct LineLogger {
    app: Arc<str>,
    stream: &'static str,
    buf: BytesMut,
}

impl LineLogger {
    fn emit(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\r', '\n']);
        tracing::info!(target: "guest", "[{} {}] {text}", self.app, self.stream);
    }
}

impl OutputStream for LineLogger {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.buf.extend_from_slice(&bytes);
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line = self.buf.split_to(nl + 1);
            self.emit(&line);
        }
        if self.buf.len() > MAX_LINE {
            let line = self.buf.split();
            self.emit(&line);
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineLogger {
    async fn ready(&mut self) {}
}

impl Drop for LineLogger {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            let line = self.buf.split();
            self.emit(&line);
        }
    }
}
