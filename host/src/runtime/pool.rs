//! Warm instances of one app: at most `workers` serve at once, each serves
//! one request at a time, and an instance is replaced after a trap, a
//! timeout, a memory-limit hit or `max_requests`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use http::StatusCode;
use tokio::sync::Semaphore;
use wasmtime::{Engine, Store};
use wasmtime_wasi_http::p2::bindings::Proxy;
use wasmtime_wasi_http::p2::WasiHttpView;

use crate::config::{Isolation, Limits};
use crate::metrics::{Recycle, TenantMetrics};
use crate::runtime::cpu::CpuShare;
use crate::runtime::engine::{AppPre, Loaded};
use crate::runtime::environ::Environ;
use crate::runtime::generated::WsgiApp;
use crate::runtime::guest_log;
use crate::runtime::sandbox::{Sandbox, Stdio};
use crate::runtime::snapshot_pages::{self, SnapshotFile};
use crate::runtime::store::{new_store, HostState};
use crate::runtime::wasi_http::{self, HttpRequest};
use crate::runtime::wsgi::Exchange;

/// The argv with which a live build's guest imports its app and answers
/// whether it could (`IMPORT_CHECK` in guest/rsgi_wasm_guest/component.py).
const IMPORT_CHECK: &str = "--rsgi-wasm-import-app";

/// An instance's exports, by world.
enum Bound {
    Wsgi(WsgiApp),
    WasiHttp(Proxy),
}

/// One request as the app's world takes it.
pub enum AppRequest {
    /// The packed CGI environ (`wsgi-app`).
    Wsgi(Environ),
    /// The request head (`wasi:http`), the guest builds the environ.
    WasiHttp(Box<HttpRequest>),
}

/// One live instance and its store.
struct Instance {
    store: Store<HostState>,
    app: Bound,
    served: u64,
    /// Requests after which this instance retires (0 = never).
    retire_after: u64,
}

/// The instances of one app.
pub struct AppPool {
    name: Arc<str>,
    engine: Engine,
    /// The compiled component, kept in memory while this pool lives.
    _code: Arc<Loaded>,
    /// The artifacts its instances map their memory from.
    snapshots: Arc<[SnapshotFile]>,
    pre: AppPre,
    sandbox: Sandbox,
    limits: Limits,
    cpu: CpuShare,
    idle: Mutex<Vec<Instance>>,
    slots: Semaphore,
    waiting: AtomicUsize,
    created: AtomicUsize,
    metrics: Arc<TenantMetrics>,
}

impl AppPool {
    /// Create the pool and start `workers` instances, so an app that fails
    /// to instantiate fails here, before the server binds its port.
    pub async fn start(
        name: &str,
        code: Arc<Loaded>,
        pre: AppPre,
        sandbox: Sandbox,
        limits: Limits,
        cpu: CpuShare,
        metrics: Arc<TenantMetrics>,
    ) -> Result<Arc<Self>> {
        let pool = Arc::new(AppPool {
            name: name.into(),
            engine: code.component.engine().clone(),
            snapshots: code.snapshot_files().into(),
            _code: code,
            pre,
            sandbox,
            slots: Semaphore::new(limits.workers),
            limits,
            cpu,
            idle: Mutex::new(Vec::new()),
            waiting: AtomicUsize::new(0),
            created: AtomicUsize::new(0),
            metrics,
        });
        // Request isolation still instantiates one up front: a component
        // that cannot start must fail here, before the port is bound.
        let warm = match pool.limits.isolation {
            Isolation::Pooled => pool.limits.workers,
            Isolation::Request => 1,
        };
        for _ in 0..warm {
            let inst = pool
                .instantiate()
                .await
                .with_context(|| format!("starting an instance of app {name}"))?;
            pool.idle.lock().expect("pool lock").push(inst);
            pool.metrics.series().warm.inc();
        }
        Ok(pool)
    }

    /// Whether no request is being served or waits for an instance.
    pub fn is_idle(&self) -> bool {
        self.slots.available_permits() == self.limits.workers
            && self.waiting.load(Ordering::SeqCst) == 0
    }

    /// Import a live build's app in a new instance (through the `command`
    /// export, as `exec` runs scripts): its reason goes to the log, and an
    /// instance that cannot serve never joins the pool.
    async fn import_app(&self, app: &WsgiApp, store: &mut Store<HostState>) -> Result<()> {
        let argv = [IMPORT_CHECK.to_owned()];
        let call = app.rsgi_wasm_wsgi_command().call_run(&mut *store, &argv);
        let status = tokio::time::timeout(self.limits.timeout, self.cpu.run(call))
            .await
            .map_err(|_| anyhow::anyhow!("importing app {} took longer than --timeout", self.name))?
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!(
                    "importing app {} crashed (a trap in the sandbox)",
                    self.name
                )
            })?;
        if status != 0 {
            anyhow::bail!(
                "app {} does not import (the reason is logged above)",
                self.name
            );
        }
        Ok(())
    }

    /// Before a new long-lived instance runs, keep the kernel from reading
    /// ahead in its mapping of the heap snapshot ([`snapshot_pages`]). An
    /// instance serving one request would not keep those pages long enough
    /// to matter.
    async fn advise_snapshot_mappings(&self) {
        if self.limits.isolation != Isolation::Pooled || self.snapshots.is_empty() {
            return;
        }
        let files = self.snapshots.clone();
        let advised =
            tokio::task::spawn_blocking(move || snapshot_pages::advise_instance_mappings(&files));
        if let Err(e) = advised.await {
            tracing::warn!("advising the kernel about app {}'s memory: {e}", self.name);
        }
    }

    async fn instantiate(&self) -> Result<Instance> {
        // Preopening directories (and, with request isolation, creating a
        // fresh /tmp) touches the disk: off the runtime's threads.
        let sandbox = self.sandbox.clone();
        let mut state = tokio::task::spawn_blocking(move || sandbox.host_state(Stdio::Log))
            .await
            .context("preparing an instance's sandbox panicked")??;
        state.meter_memory(self.metrics.series().memory.clone());
        let mut store = new_store(&self.engine, state, Some(&self.cpu))?;
        // Instantiating runs the component's start code and fills CPython's
        // function table: milliseconds of CPU, which a tenant whose
        // instances keep crashing or timing out would otherwise take from
        // its neighbours outside the run slots. It is charged like a call.
        let app = match &self.pre {
            AppPre::Wsgi(pre) => Bound::Wsgi(
                self.cpu
                    .run(pre.instantiate_async(&mut store))
                    .await
                    .map_err(anyhow::Error::from)?,
            ),
            AppPre::WasiHttp(pre) => Bound::WasiHttp(
                self.cpu
                    .run(pre.instantiate_async(&mut store))
                    .await
                    .map_err(anyhow::Error::from)?,
            ),
        };
        self.advise_snapshot_mappings().await;
        if let (Bound::Wsgi(app), true) = (&app, self.sandbox.live()) {
            self.import_app(app, &mut store).await?;
        }
        let n = self.created.fetch_add(1, Ordering::Relaxed) as u64;
        let retire_after = match (self.limits.isolation, self.limits.max_requests) {
            (Isolation::Request, _) => 1,
            (_, 0) => 0,
            // Spread retirements like gunicorn's --max-requests-jitter.
            (_, max) => max.saturating_add(
                n.wrapping_mul(2_654_435_761) % self.limits.max_requests_jitter.saturating_add(1),
            ),
        };
        Ok(Instance {
            store,
            app,
            served: 0,
            retire_after,
        })
    }

    /// Serve one request with a warm (or, if none is idle, new) instance.
    pub async fn serve(self: Arc<Self>, request: AppRequest, mut ex: Exchange) {
        let permit = if let Ok(p) = self.slots.try_acquire() {
            p
        } else {
            if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.limits.queue {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                self.metrics.series().rejected.inc();
                tracing::warn!(app = %self.name, "queue full ({} waiting): 503", self.limits.queue);
                ex.respond_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Service Unavailable: server busy, retry shortly",
                );
                return;
            }
            self.metrics.series().queued.inc();
            let p = self.slots.acquire().await.expect("semaphore never closed");
            self.metrics.series().queued.dec();
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            p
        };
        // A request that waited in the queue while its client left (or
        // reset its HTTP/2 stream) is not run: cancelled streams must not
        // turn into guest work.
        if ex.client_gone() {
            tracing::debug!(app = %self.name, "client left while queued; not run");
            return;
        }
        let idle = self.idle.lock().expect("pool lock").pop();
        let mut inst = match idle {
            Some(i) => {
                self.metrics.series().warm.dec();
                i
            }
            None => match self.instantiate().await {
                Ok(i) => i,
                Err(e) => {
                    tracing::error!(app = %self.name, "cannot start an instance: {e:#}");
                    self.metrics.series().rejected.inc();
                    ex.respond_error(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable");
                    return;
                }
            },
        };

        let busy = Busy::new(&self.metrics.series().busy);
        let (outcome, mut ex) = match (&inst.app, request) {
            (Bound::Wsgi(app), AppRequest::Wsgi(environ)) => {
                inst.store.data_mut().wsgi().begin(ex);
                let call = app.rsgi_wasm_wsgi_handler().call_handle(
                    &mut inst.store,
                    &environ.keys,
                    &environ.values,
                    environ.separator != crate::runtime::environ::SEP,
                );
                let outcome = tokio::time::timeout(self.limits.timeout, self.cpu.run(call)).await;
                (
                    outcome,
                    inst.store.data_mut().wsgi().end().expect("begun above"),
                )
            }
            (Bound::WasiHttp(proxy), AppRequest::WasiHttp(req)) => {
                match wasi_http::bind(inst.store.data_mut().http(), *req, &mut ex) {
                    Ok((request, out, pending)) => {
                        let call = proxy.wasi_http_incoming_handler().call_handle(
                            &mut inst.store,
                            request,
                            out,
                        );
                        let call = async { call.await.map(Ok) };
                        let outcome =
                            tokio::time::timeout(self.limits.timeout, self.cpu.run(call)).await;
                        // A guest that never set its response (or trapped
                        // first): the exchange answers for it below.
                        if let Some(responder) = pending.unanswered() {
                            ex.restore(responder);
                        }
                        (outcome, ex)
                    }
                    Err(e) => {
                        // Not called: answered 500 below, the instance kept.
                        tracing::error!(app = %self.name, "cannot pass the request to the app: {e:#}");
                        (Ok(Ok(Ok(()))), ex)
                    }
                }
            }
            _ => {
                // The tenant refuses to load a component of another world
                // than it was checked with, so this is a bug: 500, not a panic.
                tracing::error!(app = %self.name, "a request built for the other world reached the app (a bug)");
                (Ok(Ok(Ok(()))), ex)
            }
        };
        let state = inst.store.data_mut();
        state.end_log_lines();
        let memory_hit = state.take_memory_hit();

        // Why the instance is replaced, if it is.
        let mut recycle = None;
        match outcome {
            Ok(Ok(Ok(()))) if !ex.committed() => {
                // The guest gives up without a response only when the
                // request body could not be read: malformed framing (bad
                // chunk size) or a client that left mid-body.
                let (status, text) = if ex.body_timed_out() {
                    (
                        StatusCode::REQUEST_TIMEOUT,
                        "Request Timeout: the request body arrived too slowly",
                    )
                } else if ex.body_failed() {
                    (
                        StatusCode::BAD_REQUEST,
                        "Bad Request: malformed or incomplete request body",
                    )
                } else {
                    (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
                };
                ex.respond_error(status, text);
            }
            Ok(Ok(Ok(()))) => ex.finish(),
            Ok(Ok(Err(reason))) => {
                let reason = guest_log::quoted(&reason);
                tracing::warn!(app = %self.name, "response cut short: {reason}");
                ex.abort(reason);
            }
            Ok(Err(trap)) => {
                recycle = Some(Recycle::Trap);
                match crate::runtime::exit_status(&trap) {
                    Some(status) => tracing::error!(
                        app = %self.name,
                        "the app exited the process (os._exit or a C-level exit, status {status}) during a request; instance replaced"
                    ),
                    None => {
                        // Its backtrace names the guest's functions, as the
                        // guest named them.
                        let trap = guest_log::quoted(&format!("{trap:#}"));
                        tracing::error!(app = %self.name, "instance crashed and was replaced: {trap}")
                    }
                }
                self.fail(
                    &mut ex,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal Server Error",
                )
                .await;
            }
            Err(_elapsed) => {
                recycle = Some(Recycle::Timeout);
                self.metrics.series().timeouts.inc();
                tracing::error!(app = %self.name, "request exceeded the {:?} timeout; instance replaced", self.limits.timeout);
                self.fail(&mut ex, StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout")
                    .await;
            }
        }
        if memory_hit {
            recycle = recycle.or(Some(Recycle::Memory));
            tracing::warn!(app = %self.name, "instance hit its {} byte memory limit; replaced", self.limits.memory);
        }
        // The response is complete: the client must not wait for a teardown.
        drop(ex);
        inst.served += 1;
        if inst.retire_after != 0 && inst.served >= inst.retire_after {
            recycle = recycle.or(Some(Recycle::MaxRequests));
        }
        drop(busy);
        if let Some(cause) = recycle {
            self.metrics.recycled(cause);
            // Unmapping its memory and removing a per-instance /tmp block,
            // in one of the tenant's slots and on its account.
            if let Err(e) = self.cpu.run_blocking(move || drop(inst)).await {
                tracing::error!(app = %self.name, "tearing down an instance failed: {e}");
            }
        } else {
            self.idle.lock().expect("pool lock").push(inst);
            self.metrics.series().warm.inc();
        }
        drop(permit);
    }

    /// Answer an error page, or cut the body short if the response started.
    async fn fail(&self, ex: &mut Exchange, status: StatusCode, text: &str) {
        if ex.committed() {
            ex.abort(format!("{text} after the response started"));
        } else {
            ex.respond_error(status, text);
        }
    }
}

impl Drop for AppPool {
    fn drop(&mut self) {
        // Unloaded: its warm instances go with it.
        let idle = self.idle.get_mut().map_or(0, |v| v.len());
        self.metrics.series().warm.dec_by(idle as i64);
    }
}

/// An instance counted busy until dropped, even by a panic in the call.
struct Busy(prometheus_client::metrics::gauge::Gauge);

impl Busy {
    fn new(gauge: &prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Busy(gauge.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.dec();
    }
}
