//! Warm instances of one app: at most `workers` serve at once, each serves
//! one request at a time, and an instance is replaced after a trap, a
//! timeout, a memory-limit hit or `max_requests`. With request isolation,
//! the next request's fresh instance is made ahead, after each response.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use http::StatusCode;
use tokio::sync::{oneshot, Notify, Semaphore};
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
use crate::runtime::instance_slots;
use crate::runtime::sandbox::{Sandbox, Stdio};
use crate::runtime::slot_pages::SlotPages;
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

/// Instances ready to serve, and (request isolation) the one being made.
#[derive(Default)]
struct Idle {
    ready: Vec<Instance>,
    /// `Some` while a spare is being made; holds the request that waits
    /// for it, if one does.
    making: Option<Option<oneshot::Sender<Instance>>>,
}

/// The instances of one app.
pub struct AppPool {
    name: Arc<str>,
    engine: Engine,
    /// The compiled component, kept in memory while this pool lives.
    code: Arc<Loaded>,
    /// The artifacts its instances map their memory from.
    snapshots: Arc<[SnapshotFile]>,
    /// Under request isolation in instance slots: what its instances
    /// write there, kept in few runs ([`slot_pages`]).
    slot_pages: Option<Arc<SlotPages>>,
    pre: AppPre,
    sandbox: Sandbox,
    limits: Limits,
    cpu: CpuShare,
    idle: Mutex<Idle>,
    slots: Semaphore,
    waiting: AtomicUsize,
    created: AtomicUsize,
    metrics: Arc<TenantMetrics>,
    /// Requests each connection has in [`serve`](Self::serve), and a wake
    /// for those waiting for their connection's share.
    by_connection: Mutex<HashMap<u64, usize>>,
    share_freed: Notify,
    /// Instances failed to start because the app's files were removed
    /// from the cache, and the log said so.
    files_gone_said: AtomicBool,
    /// A flood of clients past the queue must not flood the log.
    queue_full_warned: crate::runtime::WarnEvery,
}

/// A connection's count of requests in an app's pool, given back on drop.
struct Share<'a> {
    pool: &'a AppPool,
    conn: u64,
}

impl Drop for Share<'_> {
    fn drop(&mut self) {
        let mut counts = self.pool.by_connection.lock().expect("share lock");
        if let Some(n) = counts.get_mut(&self.conn) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.conn);
            }
        }
        drop(counts);
        self.pool.share_freed.notify_waiters();
    }
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
        let snapshots: Arc<[SnapshotFile]> = code.snapshot_files().into();
        let in_slots = code
            .component
            .engine()
            .pooling_allocator_metrics()
            .is_some();
        let pool = Arc::new(AppPool {
            name: name.into(),
            engine: code.component.engine().clone(),
            slot_pages: (in_slots
                && limits.isolation == Isolation::Request
                && !snapshots.is_empty())
            .then(|| Arc::new(SlotPages::new(snapshots.clone()))),
            snapshots,
            code,
            pre,
            sandbox,
            slots: Semaphore::new(limits.workers),
            limits,
            cpu,
            idle: Mutex::new(Idle::default()),
            waiting: AtomicUsize::new(0),
            created: AtomicUsize::new(0),
            metrics,
            by_connection: Mutex::default(),
            share_freed: Notify::new(),
            files_gone_said: AtomicBool::new(false),
            queue_full_warned: Default::default(),
        });
        // Request isolation still instantiates one up front: a component
        // that cannot start must fail here, before the port is bound.
        let warm = match pool.limits.isolation {
            Isolation::Pooled => pool.limits.workers,
            Isolation::Request => 1,
        };
        for _ in 0..warm {
            let inst = pool
                .instantiate_in_a_free_slot()
                .await
                .map_err(|e| memory_hint(e, pool.limits.memory))
                .with_context(|| format!("starting an instance of app {name}"))?;
            pool.park(inst);
        }
        Ok(pool)
    }

    /// A directory of the app's files gone from the cache, if any.
    pub fn missing_files(&self) -> Option<&std::path::Path> {
        self.code.missing_files()
    }

    /// A directory of the app's files pruned in the cache, if any (walks them).
    pub fn pruned_files(&self) -> Option<&std::path::Path> {
        self.code.pruned_files()
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
        let limit = self.limits.timeout;
        let status = match tokio::time::timeout(limit, self.cpu.run(call)).await {
            Err(_) => anyhow::bail!(
                "importing app {} took longer than --timeout ({limit:?}): does its import wait for something, or loop?",
                self.name
            ),
            Ok(Ok(status)) => status,
            // `os._exit()` at import is the app's exit, not a crash.
            Ok(Err(e)) => match crate::runtime::exit_status(&e) {
                Some(code) => anyhow::bail!(
                    "app {} exited while it was imported (os._exit or C code's exit(), status {code})",
                    self.name
                ),
                None => {
                    return Err(anyhow::Error::from(e).context(format!(
                        "importing app {} crashed (a trap in the sandbox)",
                        self.name
                    )))
                }
            },
        };
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
    /// to matter. (Mapping the pages requests read into a spare ahead of
    /// its request took 0.4 ms off an isolated request at low load, and a
    /// fifth off isolated throughput: not done.)
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

    /// [`Self::instantiate`], waiting up to `--timeout` while every
    /// instance slot is taken: earlier versions of the app that a burst of
    /// SIGHUPs left draining hold theirs until their requests finish.
    async fn instantiate_in_a_free_slot(&self) -> Result<Instance> {
        let deadline = tokio::time::Instant::now() + self.limits.timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            match self.instantiate().await {
                Err(e)
                    if instance_slots::all_taken(&e)
                        && tokio::time::Instant::now() + pause < deadline =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                made => return made,
            }
        }
    }

    async fn instantiate(&self) -> Result<Instance> {
        // Preopening directories (and, with request isolation, taking an
        // emptied /tmp) is a few `openat`s, done here as the guest's own
        // file calls are (`Sandbox::host_state`): handing them to a
        // blocking thread and waking back cost more than the calls (2.6%
        // of an isolated hello request's CPU on one core, in `perf`).
        let mut state = self.sandbox.host_state(Stdio::Log)?;
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
    pub async fn serve(self: Arc<Self>, request: AppRequest, mut ex: Exchange, conn: u64) {
        let Some((_share, permit)) = self.admit(&mut ex, conn).await else {
            return;
        };
        // A request whose client left (or reset its HTTP/2 stream) as it
        // got its place is not run: cancelled streams must not turn into
        // guest work.
        if ex.client_gone() {
            tracing::debug!(app = %self.name, "client left while queued; not run");
            return;
        }
        let mut inst = match self.take().await {
            Some(i) => i,
            None => match self.instantiate_in_a_free_slot().await {
                Ok(i) => i,
                Err(e) => {
                    match self.missing_files() {
                        // Said once: the sweep reloads the app within
                        // seconds, and until then every request fails so.
                        Some(gone) => {
                            if !self.files_gone_said.swap(true, Ordering::Relaxed) {
                                tracing::warn!(app = %self.name, "cannot start an instance: {} was removed from the cache; the app is loaded again within seconds: {e:#}", gone.display());
                            }
                        }
                        None => {
                            tracing::error!(app = %self.name, "cannot start an instance: {e:#}")
                        }
                    }
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
        state.request_ended();
        let memory_hit = state.take_memory_hit();
        // A memory growth refused (a MemoryError in the guest) is often
        // what a trap or an adapter failure after it follows from (the
        // error's own clean-up out of stack): said in that one line, and
        // counted as the memory limit's.
        let after_memory = if memory_hit {
            format!(" after it hit its {} byte memory limit", self.limits.memory)
        } else {
            String::new()
        };

        // Why the instance is replaced, if it is.
        let mut recycle = None;
        match outcome {
            Ok(Ok(Ok(()))) if !ex.committed() => {
                // The guest gives up without a response only when the
                // request body could not be read: malformed framing (bad
                // chunk size) or a client that left mid-body.
                let (status, text) = if ex.body_timed_out() {
                    (StatusCode::REQUEST_TIMEOUT, crate::runtime::body::SLOW_BODY)
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
            Ok(Ok(Err(reason))) if reason.starts_with(crate::protocol::ADAPTER_ERROR) => {
                recycle = Some(if memory_hit {
                    Recycle::Memory
                } else {
                    Recycle::Adapter
                });
                guest_log::adapter_failure(&self.name, &reason);
                tracing::error!(app = %self.name, request = %ex.asked(), peer = %ex.asked().peer, "the guest adapter failed (above){after_memory}; instance replaced");
                if ex.finished() {
                    // The response went out whole (the app's own 500).
                } else if ex.committed() {
                    ex.abort(guest_log::quoted(&reason));
                } else {
                    self.fail(
                        &mut ex,
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Internal Server Error",
                    )
                    .await;
                }
            }
            Ok(Ok(Err(reason))) => {
                let reason = guest_log::quoted(&reason);
                tracing::warn!(app = %self.name, "response cut short: {reason}");
                ex.abort(reason);
            }
            Ok(Err(trap)) => {
                recycle = Some(if memory_hit {
                    Recycle::Memory
                } else {
                    Recycle::Trap
                });
                match crate::runtime::exit_status(&trap) {
                    Some(status) => tracing::error!(
                        app = %self.name,
                        request = %ex.asked(), peer = %ex.asked().peer,
                        "the app exited the process (os._exit or a C-level exit, with {}) during a request{after_memory}; instance replaced",
                        if status == 0 {
                            "success"
                        } else {
                            "a failure status: WASI 0.2 carries no other exit code"
                        }
                    ),
                    None => {
                        // Its backtrace names the guest's functions, as the
                        // guest named them.
                        let trap = guest_log::quoted(&format!("{trap:#}"));
                        tracing::error!(app = %self.name, request = %ex.asked(), peer = %ex.asked().peer, "instance crashed{after_memory} and was replaced: {trap}")
                    }
                }
                self.fail(
                    &mut ex,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal Server Error",
                )
                .await;
            }
            // The app was waiting for the client's body when its time ran
            // out: the client's doing, as a stall within one read is.
            Err(_elapsed) if !ex.committed() && ex.give_up_on_slow_body() => {
                recycle = Some(Recycle::SlowClient);
                tracing::warn!(app = %self.name, request = %ex.asked(), peer = %ex.asked().peer, "the {:?} timeout ran out while the app waited for the client to send the request body{after_memory}: 408, instance replaced", self.limits.timeout);
                ex.respond_error(StatusCode::REQUEST_TIMEOUT, crate::runtime::body::SLOW_BODY);
            }
            Err(_elapsed) => {
                recycle = Some(Recycle::Timeout);
                self.metrics.series().timeouts.inc();
                if ex.delivered() {
                    tracing::error!(app = %self.name, request = %ex.asked(), peer = %ex.asked().peer, "request exceeded the {:?} timeout after its whole response was handed over: the app's code after it (its close() of the response, what that runs, or a finaliser) did not return{after_memory}; instance replaced", self.limits.timeout);
                } else if ex.committed() {
                    // Often a client reading a long response slowly: the
                    // app waits for it, and --timeout counts that too.
                    tracing::error!(app = %self.name, request = %ex.asked(), peer = %ex.asked().peer, "request exceeded the {:?} timeout after its response had started (the app may have been waiting for a slow client to take it){after_memory}; response cut short, instance replaced", self.limits.timeout);
                } else {
                    tracing::error!(app = %self.name, request = %ex.asked(), peer = %ex.asked().peer, "request exceeded the {:?} timeout{after_memory}; instance replaced", self.limits.timeout);
                }
                self.fail(&mut ex, StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout")
                    .await;
            }
        }
        if memory_hit && recycle.is_none() {
            recycle = Some(Recycle::Memory);
            tracing::warn!(app = %self.name, request = %ex.asked(), peer = %ex.asked().peer, "instance hit its {} byte memory limit; replaced", self.limits.memory);
        }
        // The response is complete: the client must not wait for a teardown.
        drop(ex);
        if self.limits.isolation == Isolation::Request {
            self.clone().make_spare();
        }
        inst.served += 1;
        let retired = inst.retire_after != 0 && inst.served >= inst.retire_after;
        // Under request isolation every instance serves one request by
        // design: not a recycle an operator should look into.
        if retired && self.limits.isolation != Isolation::Request {
            recycle = recycle.or(Some(Recycle::MaxRequests));
        }
        drop(busy);
        if let Some(cause) = recycle {
            self.metrics.recycled(cause);
        }
        if recycle.is_some() || retired {
            // Unmapping its memory and removing a per-instance /tmp block,
            // in one of the tenant's slots and on its account.
            let slot_pages = self.slot_pages.clone();
            let teardown = move || {
                if let Some(pages) = slot_pages {
                    pages.after_instance();
                }
                drop(inst)
            };
            if let Err(e) = self.cpu.run_blocking(teardown).await {
                tracing::error!(app = %self.name, "tearing down an instance failed: {e}");
            }
        } else {
            self.park(inst);
        }
        drop(permit);
    }

    /// Wait for the request's place: its connection's share, then one of
    /// the app's slots, queued if none is free. `None` when it has been
    /// answered (503, the queue is full) or its client left (an HTTP/2
    /// stream reset, a dropped request) while it waited: a request nobody
    /// waits for gives its place in the queue up at once, so clients that
    /// send and reset cannot fill it for others.
    async fn admit(
        &self,
        ex: &mut Exchange,
        conn: u64,
    ) -> Option<(Share<'_>, tokio::sync::SemaphorePermit<'_>)> {
        let share = self.try_share(conn);
        if share.is_some() {
            if let Ok(p) = self.slots.try_acquire() {
                return share.map(|s| (s, p));
            }
        }
        self.queued(ex, conn, share).await
    }

    /// [`Self::admit`] for a request that must wait: for one of the app's
    /// slots, or (an HTTP/2 stream) first for its connection's share. It
    /// waits in the app's queue either way, so `--queue` bounds it and
    /// `rsgi_wasm_queued_requests` shows it: HTTP/2 streams waiting for
    /// their connection's turn were neither (probe round DA: 30 streams on
    /// one connection all waited, the gauge at 0).
    async fn queued<'a>(
        &'a self,
        ex: &mut Exchange,
        conn: u64,
        share: Option<Share<'a>>,
    ) -> Option<(Share<'a>, tokio::sync::SemaphorePermit<'a>)> {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.limits.queue {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            self.metrics.series().rejected.inc();
            if self.queue_full_warned.due() {
                tracing::warn!(
                    app = %self.name,
                    "queue full ({} waiting): 503 (logged at most once a minute; rsgi_wasm_rejected_total counts each)",
                    self.limits.queue
                );
            }
            ex.respond_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable: server busy, retry shortly",
            );
            return None;
        }
        self.metrics.series().queued.inc();
        let waited = async {
            let share = match share {
                Some(share) => share,
                None => self.share(conn).await,
            };
            let permit = self.slots.acquire().await.expect("semaphore never closed");
            (share, permit)
        };
        let admitted = tokio::select! {
            admitted = waited => Some(admitted),
            () = ex.client_left() => None,
        };
        self.metrics.series().queued.dec();
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        if admitted.is_none() {
            tracing::debug!(app = %self.name, "client left while queued; its place given up");
        }
        admitted
    }

    /// A place among the requests of connection `conn`, once it has fewer
    /// than all but one of the app's instances: an HTTP/2 client opening
    /// many streams that it never reads (each holds an instance until the
    /// stall limit) leaves one for everyone else, where one connection
    /// could take them all. A lone client gives up one instance of
    /// parallelism; HTTP/1 has one request at a time anyway.
    async fn share(&self, conn: u64) -> Share<'_> {
        loop {
            let freed = self.share_freed.notified();
            if let Some(share) = self.try_share(conn) {
                return share;
            }
            freed.await;
        }
    }

    /// [`Self::share`] if one is free now.
    fn try_share(&self, conn: u64) -> Option<Share<'_>> {
        let most = self.limits.workers.saturating_sub(1).max(1);
        let mut counts = self.by_connection.lock().expect("share lock");
        let n = counts.entry(conn).or_default();
        (*n < most).then(|| {
            *n += 1;
            Share { pool: self, conn }
        })
    }

    /// An instance ready to serve: a warm one, else (request isolation)
    /// the spare being made, if no other request waits for it already.
    /// `None`: the caller instantiates one.
    async fn take(&self) -> Option<Instance> {
        let spare = {
            let mut idle = self.idle.lock().expect("pool lock");
            if let Some(inst) = idle.ready.pop() {
                self.metrics.series().warm.dec();
                return Some(inst);
            }
            match &mut idle.making {
                Some(waiter @ None) => {
                    let (tx, rx) = oneshot::channel();
                    *waiter = Some(tx);
                    rx
                }
                _ => return None,
            }
        };
        // Dropped unsent: the spare failed to start, so the caller tries
        // on its own (and reports why).
        spare.await.ok()
    }

    /// Keep a ready instance for the next request.
    fn park(&self, inst: Instance) {
        self.idle.lock().expect("pool lock").ready.push(inst);
        self.metrics.series().warm.inc();
    }

    /// With request isolation, make the next request's fresh instance now,
    /// between requests, so it does not wait for an instantiation (about
    /// 2 ms of CPU for a hello app). One spare at most: what the pool held
    /// at start, so an idle app costs what it did. The CPU is the
    /// tenant's, charged as an instantiation on its request path is.
    fn make_spare(self: Arc<Self>) {
        {
            let mut idle = self.idle.lock().expect("pool lock");
            if !idle.ready.is_empty() || idle.making.is_some() {
                return;
            }
            idle.making = Some(None);
        }
        tokio::spawn(async move {
            let made = self.instantiate().await;
            let waiter = self.idle.lock().expect("pool lock").making.take().flatten();
            match (made, waiter) {
                (Ok(inst), Some(waiter)) => {
                    if let Err(inst) = waiter.send(inst) {
                        self.park(inst);
                    }
                }
                (Ok(inst), None) => self.park(inst),
                // The request waiting (if any) instantiates on its own and
                // logs the reason as an error; so does every later one
                // while this lasts, since only a served request makes a
                // spare.
                (Err(e), _) => {
                    tracing::debug!(app = %self.name, "making a spare instance failed: {e:#}")
                }
            }
        });
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
        let idle = self.idle.get_mut().map_or(0, |v| v.ready.len());
        self.metrics.series().warm.dec_by(idle as i64);
    }
}

/// wasmtime's refusal of a memory whose snapshot is larger than
/// `--memory`, with what the app needs and the flag that grants it; or of
/// a memory's reservation under an address-space limit, with that limit.
pub fn memory_hint(e: anyhow::Error, limit: u64) -> anyhow::Error {
    let text = format!("{e:#}");
    let pages = text
        .split("memory minimum size of ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse::<u64>().ok());
    match pages {
        Some(pages) if text.contains("exceeds memory limits") => {
            let need = pages * 65536;
            e.context(format!(
                "the app's pre-initialised heap needs {:.1} MiB of memory, over --memory {:.1} MiB: raise --memory (or `memory` in tenants.toml)",
                need as f64 / (1024.0 * 1024.0),
                limit as f64 / (1024.0 * 1024.0)
            ))
        }
        _ if text.contains("mmap failed to reserve") => {
            use rustix::process::{getrlimit, Resource};
            match getrlimit(Resource::As).current {
                Some(limit) => e.context(format!(
                    "the address-space limit (ulimit -v, RLIMIT_AS) is {:.1} GiB, and each instance reserves about 4 GiB of it for its memory and guard pages (reserved, not used: the app's memory is still capped by --memory); raise it to about 2 GiB for the server plus 4.1 GiB per instance (workers, across all apps), or lift it (ulimit -v unlimited; systemd: LimitAS=infinity)",
                    limit as f64 / (1u64 << 30) as f64
                )),
                None => e,
            }
        }
        _ => e,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_over_the_memory_limit_is_told_with_what_it_needs() {
        let e = anyhow::anyhow!("memory minimum size of 502 pages exceeds memory limits");
        let told = format!("{:#}", memory_hint(e, 16 << 20));
        assert!(told.contains("needs 31.4 MiB"), "{told}");
        assert!(told.contains("raise --memory"), "{told}");
        let other = format!("{:#}", memory_hint(anyhow::anyhow!("a trap"), 16 << 20));
        assert_eq!(other, "a trap");
    }
}
