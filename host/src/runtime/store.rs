//! Store data of one instance, composed in one place: WASI, the resource
//! table, the store's limits, the WSGI context and the wasi:http one, with the disk quotas
//! and private /tmp the sandbox gave it. Also the `Store` itself, with the
//! epoch yields every instance needs.

use std::sync::Arc;

use anyhow::Result;
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::filesystem::WasiFilesystemCtxView;
use wasmtime_wasi::sockets::WasiSocketsCtxView;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::{WasiHttpCtxView, WasiHttpView};

use prometheus_client::metrics::gauge::Gauge;

use crate::runtime::cpu::CpuShare;
use crate::runtime::guest_log::GuestLog;
use crate::runtime::outbound::{InstanceNet, SocketsView};
use crate::runtime::quota_fs::{QuotaFsView, Quotas};
use crate::runtime::tls_client::{TlsClients, TlsView};
use crate::runtime::wasi_http::HttpState;
use crate::runtime::wsgi::WsgiCtx;
use crate::scratch::ScratchDir;

/// Everything a `Store` holds for one instance.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: MemoryLimiter,
    wsgi: WsgiCtx,
    /// wasi:http resources, for components of the `wasi-http` world.
    http: HttpState,
    /// What this instance's writes are charged to.
    quotas: Quotas,
    /// This instance's own /tmp, removed with it (request isolation).
    _tmp: Option<ScratchDir>,
    /// Where it may connect, and what it resolved.
    net: Arc<InstanceNet>,
    /// Its app's outbound TLS trust, and how many sessions it holds.
    tls: Arc<TlsClients>,
    tls_sessions: usize,
    /// Its stdout and stderr, when they go to the host log.
    pub(crate) logs: Vec<GuestLog>,
}

/// What an instance may reach over the network (see `sandbox`).
pub struct Network {
    /// The rules and the names this instance resolved.
    pub net: Arc<InstanceNet>,
    /// Its app's outbound TLS.
    pub tls: Arc<TlsClients>,
}

impl HostState {
    /// Compose an instance's state; `memory` caps its linear memory.
    pub fn new(
        wasi: WasiCtx,
        table: ResourceTable,
        quotas: Quotas,
        tmp: Option<ScratchDir>,
        memory: u64,
        wsgi: WsgiCtx,
        network: Network,
    ) -> Self {
        HostState {
            wasi,
            table,
            limits: MemoryLimiter {
                max: usize::try_from(memory).unwrap_or(usize::MAX),
                hit: false,
                size: 0,
                gauge: None,
            },
            wsgi,
            http: HttpState::default(),
            quotas,
            _tmp: tmp,
            net: network.net,
            tls: network.tls,
            tls_sessions: 0,
            logs: Vec::new(),
        }
    }

    /// A request ended: log what it printed without a final newline, and
    /// give back the counts of the sockets it closed, which its app's
    /// other instances may need before this one makes another.
    pub fn request_ended(&mut self) {
        for log in &self.logs {
            log.end_line();
        }
        self.sockets().give_back_closed();
    }

    /// The view the shadowing `wasi:sockets` interfaces work on: the
    /// allow-list-checking `ip-name-lookup`, the counting `tcp-create-socket`.
    pub fn sockets(&mut self) -> SocketsView<'_> {
        SocketsView {
            sockets: WasiSocketsCtxView {
                ctx: self.wasi.sockets(),
                table: &mut self.table,
            },
            net: &self.net,
            quotas: &mut self.quotas,
        }
    }

    /// The view the guest's TLS sessions work on.
    pub fn tls(&mut self) -> TlsView<'_> {
        TlsView {
            table: &mut self.table,
            clients: &self.tls,
            sessions: &mut self.tls_sessions,
        }
    }

    /// The WSGI side: the request being served.
    pub fn wsgi(&mut self) -> &mut WsgiCtx {
        &mut self.wsgi
    }

    /// Count this instance's linear memory in `gauge` while it lives.
    pub fn meter_memory(&mut self, gauge: Gauge) {
        gauge.inc_by(self.limits.size as i64);
        self.limits.gauge = Some(gauge);
    }

    /// Whether a memory growth was refused since the last call (the
    /// instance must then be replaced).
    pub fn take_memory_hit(&mut self) -> bool {
        std::mem::take(&mut self.limits.hit)
    }

    /// The view the quota-charging `wasi:filesystem` works on.
    pub fn quota_fs(&mut self) -> QuotaFsView<'_> {
        QuotaFsView {
            fs: WasiFilesystemCtxView {
                ctx: self.wasi.filesystem(),
                table: &mut self.table,
            },
            quotas: &mut self.quotas,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        self.http.view(&mut self.table)
    }
}

/// A store for one instance of a sandboxed app, with its memory cap and
/// the epoch yields every instance needs; with `cpu`, those yields also
/// give way to lighter tenants and enforce the app's cap.
pub fn new_store(
    engine: &Engine,
    state: HostState,
    cpu: Option<&CpuShare>,
) -> Result<Store<HostState>> {
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limits);
    match cpu {
        Some(cpu) => {
            let mut check = cpu.deadline_callback();
            store.epoch_deadline_callback(move |_| Ok(check()));
        }
        // Every tick, hand the thread back to tokio, so the guest's own
        // timers can fire while it computes.
        None => store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1))),
    }
    store.set_epoch_deadline(1);
    Ok(store)
}

/// Caps linear memory growth; a refused growth surfaces in Python as
/// `MemoryError` and marks the instance for recycling.
struct MemoryLimiter {
    max: usize,
    /// A growth was refused: replace this instance after the request.
    hit: bool,
    /// Linear memory granted so far, all memories together.
    size: usize,
    /// The tenant's linear-memory gauge, with `size` in it.
    gauge: Option<Gauge>,
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        if let Some(g) = &self.gauge {
            g.dec_by(self.size as i64);
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.hit = true;
            return Ok(false);
        }
        let grown = desired.saturating_sub(current);
        self.size += grown;
        if let Some(g) = &self.gauge {
            g.inc_by(grown as i64);
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
