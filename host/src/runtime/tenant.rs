//! One app as the router sees it: checked at start, loaded on its first
//! request (requests arriving meanwhile wait for that one load), and
//! unloaded after `idle_timeout` without requests, so thousands of listed
//! apps cost memory only while they are used.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::config::{Grants, Isolation, Limits, World};
use crate::metrics::TenantMetrics;
use crate::runtime::cpu::{CpuScheduler, CpuShare, TenantCpu};
use crate::runtime::engine::{self, Loader};
use crate::runtime::pool::AppPool;
use crate::runtime::sandbox::Sandbox;

/// What loading an app takes from the process.
#[derive(Clone)]
pub struct Starter {
    /// Compiled components, shared by the apps that run the same file.
    pub loader: Arc<Loader>,
    /// The run slots, one per core, shared by every app.
    pub sched: Arc<CpuScheduler>,
    /// `--metrics` is on: account guest CPU even where nothing is scheduled.
    pub metered: bool,
    /// The apps loaded now, and how many may be.
    pub resident: Arc<Resident>,
    /// Loads running at once: half the run slots, rounded up. A load's
    /// reading and linking run outside the fair scheduler (on blocking
    /// threads), so a client naming a new cold host per request would
    /// otherwise take every core from the warm apps (measured: a warm
    /// hello app fell from 20,000 to 100 req/s on 2 cores).
    loads: Arc<tokio::sync::Semaphore>,
    /// As many again for loads that unpack or compile, which trade their
    /// place in `loads` for one here ([`Turn`]): a component compiling
    /// for seconds, or unpacking gigabytes, never holds back other apps'
    /// loads from the cache, which take milliseconds.
    slow_loads: Arc<tokio::sync::Semaphore>,
}

impl Starter {
    /// What loads apps for this process, with at most `max_loaded` loaded
    /// at once.
    pub fn new(
        loader: Arc<Loader>,
        sched: Arc<CpuScheduler>,
        metered: bool,
        max_loaded: usize,
    ) -> Self {
        Starter {
            loads: Arc::new(tokio::sync::Semaphore::new(sched.slots().div_ceil(2))),
            slow_loads: Arc::new(tokio::sync::Semaphore::new(sched.slots().div_ceil(2))),
            loader,
            sched,
            metered,
            resident: Resident::new(max_loaded),
        }
    }
}

/// The apps loaded in the process, across reloads, and how many may be
/// at once (`serve --max-loaded`): every loaded app costs memory and file
/// descriptors, and a client can name every host.
pub struct Resident {
    cap: usize,
    /// Loaded (or loading) apps; entries of apps unloaded or replaced
    /// since are dropped when looked at.
    apps: Mutex<Vec<Weak<Tenant>>>,
}

impl Resident {
    /// At most `cap` apps loaded at once.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Resident {
            cap,
            apps: Mutex::new(Vec::new()),
        })
    }

    /// Count `newcomer` in before it loads; at the cap, unload the least
    /// recently used apps that serve nothing to make room (returned, to be
    /// torn down off the runtime's threads). With every app busy the cap
    /// is passed for now (a request is never refused for it), and the
    /// idle sweep trims the excess later ([`trim`](Self::trim)).
    /// `evict` false: make no room yet (a load that failed before, and
    /// may again: [`trim`](Self::trim) once it has loaded).
    fn admit(&self, newcomer: &Arc<Tenant>, evict: bool) -> Vec<Arc<AppPool>> {
        let mut apps = self.apps.lock().expect("resident lock");
        let evicted = if evict {
            self.evict(&mut apps, self.cap.saturating_sub(1))
        } else {
            Vec::new()
        };
        // Unloaded and loading again before an entry was dropped: once.
        if !apps
            .iter()
            .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(newcomer)))
        {
            apps.push(Arc::downgrade(newcomer));
        }
        evicted
    }

    /// Unload the least recently used idle apps past the cap (never an
    /// app pinned by `idle_timeout = "0"`).
    pub fn trim(&self) -> Vec<Arc<AppPool>> {
        let mut apps = self.apps.lock().expect("resident lock");
        self.evict(&mut apps, self.cap)
    }

    /// Leave at most `keep` of `apps` loaded, unloading the least recently
    /// used that serve nothing.
    fn evict(&self, apps: &mut Vec<Weak<Tenant>>, keep: usize) -> Vec<Arc<AppPool>> {
        // Loading ones count: a burst of first requests must not pass the
        // cap by loading many apps at once.
        apps.retain(|w| w.upgrade().is_some_and(|t| t.resident()));
        let mut evicted = Vec::new();
        if apps.len() <= keep {
            return evicted;
        }
        let mut loaded: Vec<Arc<Tenant>> = apps.iter().filter_map(Weak::upgrade).collect();
        loaded.sort_by_key(|t| t.last_used.load(Ordering::Relaxed));
        let mut over = apps.len() - keep;
        // `idle_timeout = "0"` pins an app: counted, never unloaded (a
        // config that pins more than the cap is refused).
        for t in loaded.iter().filter(|t| !t.idle_timeout.is_zero()) {
            if over == 0 {
                break;
            }
            let why = || {
                format!(
                    "unloaded, least recently used, to make room: {} apps were loaded or loading (--max-loaded {})",
                    apps.len(),
                    self.cap
                )
            };
            if let Some(pool) = t.unload(why) {
                evicted.push(pool);
                over -= 1;
            }
        }
        apps.retain(|w| w.upgrade().is_some_and(|t| t.resident()));
        evicted
    }
}

/// What an app is started from.
#[derive(Clone)]
pub struct AppSpec {
    /// Its name (logs, metrics).
    pub name: String,
    /// The component file.
    pub component: PathBuf,
    /// Directories, env and network granted.
    pub grants: Grants,
    /// Its limits.
    pub limits: Limits,
    /// `run --reload` from source: the app's own directories, mounted as
    /// they are in place of the component's copies (empty: the copies).
    pub live_dirs: Vec<PathBuf>,
}

/// How long a failed load is remembered: requests in the meantime get 503
/// at once instead of each compiling a broken component again.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// Milliseconds since the process started: an idle clock one atomic wide.
static T0: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    T0.elapsed().as_millis() as u64
}

enum State {
    Cold,
    Warm(Arc<AppPool>),
    Failed { at: Instant, error: String },
}

/// An app that may or may not be loaded.
pub struct Tenant {
    spec: AppSpec,
    world: World,
    /// Zero: never unloaded.
    idle_timeout: Duration,
    starter: Starter,
    metrics: Arc<TenantMetrics>,
    /// The app's CPU account, kept across loads so unloading does not
    /// reset its fair share.
    cpu: CpuShare,
    state: Mutex<State>,
    /// Held while loading: the requests that find the app cold queue here.
    loading: tokio::sync::Mutex<()>,
    /// Requests waiting for the app to load.
    cold_waiting: AtomicUsize,
    last_used: AtomicU64,
    /// A load is under way (counted against `--max-loaded`).
    loading_now: AtomicBool,
    /// The load under way waits for a place among the loads running at
    /// once (other apps' loads hold them all).
    waiting_turn: Arc<AtomicBool>,
    /// The "requests already wait" warning, at most once a minute: each
    /// such 503 is in the access log and `rejected` already.
    busy_warned: crate::runtime::disk_quota::WarnEvery,
}

/// A load's place among those running at once: one of [`Starter`]'s
/// `loads`, traded for one of its `slow_loads` when the load turns out to
/// unpack or compile.
#[derive(Default)]
struct Turn {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Where a slow load waits its turn; none once traded (or for a load
    /// nothing rations: `run`, a reload).
    slow: Option<Arc<tokio::sync::Semaphore>>,
    /// Set while this load waits for a place, for the 503 line.
    waiting: Arc<AtomicBool>,
}

impl Turn {
    /// Give up the quick place and wait for a slow one: on a blocking
    /// thread (the loader's), so it blocks.
    fn trade_for_slow(&mut self) {
        let Some(slow) = self.slow.take() else {
            return;
        };
        self.permit = None;
        self.waiting.store(true, Ordering::SeqCst);
        let permit = tokio::runtime::Handle::current().block_on(slow.acquire_owned());
        self.waiting.store(false, Ordering::SeqCst);
        self.permit = permit.ok();
    }
}

/// The server builds each request for the world checked at start: a
/// file since replaced by a build of the other world cannot take it.
fn refuse_other_world(component: &std::path::Path, world: World, checked: World) -> Result<()> {
    if world != checked {
        anyhow::bail!(
            "{} was replaced by a build for --world {} (it was --world {} when this app was checked); reload (SIGHUP) or restart to serve it",
            component.display(),
            world.name(),
            checked.name()
        );
    }
    Ok(())
}

/// Drop unloaded apps' pools on a blocking thread: unmapping instances
/// takes milliseconds.
fn unload_off_runtime(pools: Vec<Arc<AppPool>>) {
    if !pools.is_empty() {
        tokio::task::spawn_blocking(move || drop(pools));
    }
}

/// Clears a flag when dropped.
struct Done<'a>(&'a AtomicBool);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Why a cold app could not serve.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Loading failed (now, or within the last [`RETRY_AFTER`]).
    #[error("app {app} could not be loaded: {error}")]
    Failed {
        /// The app.
        app: String,
        /// What went wrong.
        error: String,
        /// When the next request will try loading again.
        retry_in: Duration,
    },
    /// As many requests as the app may hold (`workers` + `queue`) already
    /// wait for it to load.
    #[error("app {app} is loading and its queue is full")]
    Busy {
        /// The app.
        app: String,
    },
    /// The load took longer than the request may (`timeout`); it goes on
    /// for the requests after this one.
    #[error("app {app} is still loading after {waited:?}")]
    Slow {
        /// The app.
        app: String,
        /// How long the request waited.
        waited: Duration,
    },
}

impl Tenant {
    /// Check `spec`'s component (readable, a component, a world this
    /// server serves) without loading it. `alone`: the only app in the
    /// process (`run`), which skips the run slots unless capped.
    pub fn check(
        starter: &Starter,
        spec: AppSpec,
        (alone, tolerate_broken): (bool, bool),
        default_idle: Duration,
    ) -> Result<Arc<Tenant>> {
        let (world, state) = match engine::exported_world(&spec.component) {
            Ok(world) => (world, State::Cold),
            // Its loads fail the same way, each a 503 and a line, until
            // the file is fixed: the other apps are served meanwhile.
            Err(e) if tolerate_broken => {
                tracing::error!(
                    app = %spec.name,
                    "{e:#}: this app answers 503 until its component is fixed (each load tries it \
                     again; one built for the other world needs a reload); the other apps are served"
                );
                // As failed already, but due for a try: its first load is
                // a retry, which unloads no other app to make room.
                let at = Instant::now()
                    .checked_sub(RETRY_AFTER)
                    .unwrap_or_else(Instant::now);
                let error = format!("{e:#}");
                (World::default(), State::Failed { at, error })
            }
            Err(e) => return Err(e),
        };
        let limits = &spec.limits;
        if limits.isolation == Isolation::Request
            && (limits.max_requests > 0 || limits.max_requests_jitter > 0)
        {
            tracing::warn!(
                app = %spec.name,
                "max_requests and max_requests_jitter (--max-requests, --max-requests-jitter) \
                 have no effect with isolation request: every instance serves one request and \
                 is dropped"
            );
        }
        if limits.isolation != Isolation::Request
            && limits.max_requests == 0
            && limits.max_requests_jitter > 0
        {
            tracing::warn!(
                app = %spec.name,
                "max_requests_jitter (--max-requests-jitter) has no effect without max_requests \
                 (--max-requests): it spreads the retirements max_requests sets"
            );
        }
        let metrics = TenantMetrics::new(&spec.name);
        let account = TenantCpu::metered(spec.limits.cpu, starter.metered.then_some(&metrics));
        let cpu = if alone {
            CpuShare::alone(starter.sched.clone(), account)
        } else {
            CpuShare::new(starter.sched.clone(), account)
        };
        Ok(Arc::new(Tenant {
            idle_timeout: spec.limits.idle_timeout.unwrap_or(default_idle),
            spec,
            world,
            starter: starter.clone(),
            metrics,
            cpu,
            state: Mutex::new(state),
            loading: tokio::sync::Mutex::new(()),
            cold_waiting: AtomicUsize::new(0),
            last_used: AtomicU64::new(now_ms()),
            loading_now: AtomicBool::new(false),
            waiting_turn: Arc::default(),
            busy_warned: Default::default(),
        }))
    }

    /// Check and load now: everything that can fail does so here, before
    /// the port is bound (or before a reload is swapped in).
    pub async fn start(
        starter: &Starter,
        spec: AppSpec,
        alone: bool,
        default_idle: Duration,
    ) -> Result<Arc<Tenant>> {
        let tenant = Tenant::check(starter, spec, (alone, false), default_idle)?;
        let pool = tenant.load(&mut Turn::default()).await?;
        *tenant.state.lock().expect("tenant lock") = State::Warm(pool);
        tenant.metrics.series().loaded_copies(1);
        Ok(tenant)
    }

    /// The app's limits.
    pub fn limits(&self) -> &Limits {
        &self.spec.limits
    }

    /// The app's metric series.
    pub fn metrics(&self) -> &Arc<TenantMetrics> {
        &self.metrics
    }

    /// Whether the app exports `wasi:http` rather than our own world.
    pub fn wasi_http(&self) -> bool {
        self.world == World::WasiHttp
    }

    /// A request used the app now (its idle time starts again).
    pub fn touch(&self) {
        self.last_used.store(now_ms(), Ordering::Relaxed);
    }

    /// The app's pool, loading it first if it is cold; with the time this
    /// request waited for that load.
    pub async fn pool(self: &Arc<Self>) -> Result<(Arc<AppPool>, Option<Duration>), LoadError> {
        let got = self.pool_or_load().await;
        // Every 503 counts, as the pool's do.
        if matches!(got, Err(LoadError::Failed { .. } | LoadError::Slow { .. })) {
            self.metrics.series().rejected.inc();
        }
        got
    }

    async fn pool_or_load(self: &Arc<Self>) -> Result<(Arc<AppPool>, Option<Duration>), LoadError> {
        self.touch();
        if let Some(ready) = self.ready() {
            return ready.map(|pool| (pool, None));
        }
        // While it loads, the app holds no more waiting requests than it
        // would once loaded.
        let limit = self.spec.limits.workers + self.spec.limits.queue;
        if self.cold_waiting.fetch_add(1, Ordering::SeqCst) >= limit {
            self.cold_waiting.fetch_sub(1, Ordering::SeqCst);
            self.metrics.series().rejected.inc();
            if self.busy_warned.due() {
                tracing::warn!(
                    app = %self.spec.name,
                    "loading, and {limit} requests already wait for it: 503 (logged at most once a minute)"
                );
            }
            return Err(LoadError::Busy {
                app: self.spec.name.clone(),
            });
        }
        // Counted as queued, as it would be behind a busy pool.
        struct Waiting<'a>(&'a AtomicUsize, &'a TenantMetrics);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
                self.1.series().queued.dec();
            }
        }
        self.metrics.series().queued.inc();
        let _waiting = Waiting(&self.cold_waiting, &self.metrics);
        let t0 = Instant::now();
        // A load slowed down by the app's CPU cap, or a compile on a busy
        // machine, holds a request no longer than running it may.
        let pool = match tokio::time::timeout(self.spec.limits.timeout, self.load_task(true)).await
        {
            Ok(loaded) => loaded?,
            Err(_) => {
                let waited = t0.elapsed();
                if self.waiting_turn.load(Ordering::SeqCst) {
                    let each = self.starter.sched.slots().div_ceil(2);
                    tracing::warn!(
                        app = %self.spec.name,
                        "not loaded within the {:?} timeout: 503; it waits for a turn to load, as other \
                         apps' loads hold every place (loads run at most {each} from the cache and \
                         {each} unpacking or compiling at once, half the cores each)",
                        self.spec.limits.timeout,
                    );
                } else {
                    tracing::warn!(app = %self.spec.name, "still loading after the {:?} timeout: 503", self.spec.limits.timeout);
                }
                return Err(LoadError::Slow {
                    app: self.spec.name.clone(),
                    waited,
                });
            }
        };
        Ok((pool, Some(t0.elapsed())))
    }

    /// Load the app before the server listens (`serve --preload`): for as
    /// long as that takes, since a first compile can take far longer than
    /// a request's `timeout`, and no request waits on it.
    pub async fn preload(self: &Arc<Self>) -> Result<Arc<AppPool>, LoadError> {
        self.load_task(false).await
    }

    /// The load, in a task of its own, so a request that stops waiting
    /// (its client left, or its `timeout` passed) does not cancel it for
    /// the requests queued behind. `asked`: by a request (a cold start),
    /// not by `--preload`.
    fn load_task(
        self: &Arc<Self>,
        asked: bool,
    ) -> impl std::future::Future<Output = Result<Arc<AppPool>, LoadError>> {
        let this = self.clone();
        let load = tokio::spawn(async move { this.load_once(asked).await });
        let this = self.clone();
        async move {
            load.await.unwrap_or_else(|panic| {
                Err(this.failed(format!("loading panicked (a bug): {panic}"), Instant::now()))
            })
        }
    }

    fn failed(&self, error: String, since: Instant) -> LoadError {
        LoadError::Failed {
            app: self.spec.name.clone(),
            error,
            retry_in: RETRY_AFTER.saturating_sub(since.elapsed()),
        }
    }

    /// The pool if loaded, the error if the last load failed lately; none
    /// if the app is to be loaded.
    fn ready(&self) -> Option<Result<Arc<AppPool>, LoadError>> {
        match &*self.state.lock().expect("tenant lock") {
            State::Warm(pool) => Some(Ok(pool.clone())),
            State::Failed { at, error } if at.elapsed() < RETRY_AFTER => {
                Some(Err(self.failed(error.clone(), *at)))
            }
            _ => None,
        }
    }

    /// Load unless another request did while this one queued.
    async fn load_once(self: &Arc<Self>, asked: bool) -> Result<Arc<AppPool>, LoadError> {
        let _loading = self.loading.lock().await;
        if let Some(ready) = self.ready() {
            return ready;
        }
        self.waiting_turn.store(true, Ordering::SeqCst);
        let permit = self.starter.loads.clone().acquire_owned().await;
        self.waiting_turn.store(false, Ordering::SeqCst);
        let mut turn = Turn {
            permit: Some(permit.expect("the load semaphore is never closed")),
            slow: Some(self.starter.slow_loads.clone()),
            waiting: self.waiting_turn.clone(),
        };
        self.loading_now.store(true, Ordering::SeqCst);
        // An app whose last load failed (a broken upload retried every
        // RETRY_AFTER) unloads nobody until it has loaded (round DE: each
        // retry evicted a healthy app).
        let retry = matches!(
            *self.state.lock().expect("tenant lock"),
            State::Failed { .. }
        );
        unload_off_runtime(self.starter.resident.admit(self, !retry));
        let t0 = Instant::now();
        let mut loaded = self.load(&mut turn).await;
        for _ in 0..2 {
            match &loaded {
                Err(e) if self.starter.loader.files_removed_meanwhile(e) => {
                    tracing::warn!(app = %self.spec.name, "the app's files were removed from the cache while it loaded; loading it again: {e:#}");
                    loaded = self.load(&mut turn).await;
                }
                _ => break,
            }
        }
        // Warm or failed from here: counted by its state again.
        let _done = Done(&self.loading_now);
        match loaded {
            Ok(pool) => {
                let took = t0.elapsed();
                let series = self.metrics.series();
                series.loaded_copies(1);
                let ms = took.as_secs_f64() * 1000.0;
                if asked {
                    series.cold_starts.observe(took.as_secs_f64());
                    tracing::info!(app = %self.spec.name, "cold start: loaded in {ms:.1} ms");
                } else {
                    tracing::info!(app = %self.spec.name, "preloaded in {ms:.1} ms");
                }
                if retry {
                    unload_off_runtime(self.starter.resident.trim());
                }
                // Idle from now, not from the request that asked: a load
                // longer than `idle_timeout` (a compile), whose waiting
                // requests all timed out, was unloaded the moment it was
                // done, and the client's retry paid for it again.
                self.touch();
                *self.state.lock().expect("tenant lock") = State::Warm(pool.clone());
                Ok(pool)
            }
            Err(e) => {
                let error = format!("{e:#}");
                self.metrics.series().load_failures.inc();
                tracing::error!(app = %self.spec.name, "cannot load the app: {error}");
                *self.state.lock().expect("tenant lock") = State::Failed {
                    at: Instant::now(),
                    error: error.clone(),
                };
                Err(self.failed(error, Instant::now()))
            }
        }
    }

    /// Load the component, link it, set up the sandbox and start the pool.
    async fn load(&self, turn: &mut Turn) -> Result<Arc<AppPool>> {
        let AppSpec {
            name,
            component,
            grants,
            limits,
            live_dirs,
        } = self.spec.clone();
        // Registered before the sandbox cuts its quota and outbound series,
        // which leave the exposition with these.
        self.metrics.series();
        let loader = &self.starter.loader;
        // Hashing, unpacking and compiling block for milliseconds to seconds:
        // off the runtime's threads, so requests to other apps never wait.
        // Linking type-checks every import: milliseconds too.
        let (loaded, pre) = {
            let (loader, path) = (loader.clone(), component.clone());
            // What the loader logs (compiling, unpacking a shared tree
            // again, a damaged artifact) names the app it loads for.
            let span = tracing::warn_span!("load", app = %name);
            // The turn goes along, and comes back to be held to the end.
            let mut moved = std::mem::take(turn);
            let expected = self.world;
            let (loaded, back) = tokio::task::spawn_blocking(move || {
                let _in = span.entered();
                // A file replaced by a build of the other world is refused
                // before seconds of compiling it (its export section is
                // read, nothing more).
                let loaded = engine::exported_world(&path)
                    .and_then(|world| refuse_other_world(&path, world, expected))
                    .and_then(|()| loader.load_with(&path, &mut || moved.trade_for_slow()))
                    .and_then(|loaded| {
                        let pre = engine::prepare(loader.engine(), &loaded, &path)?;
                        Ok((loaded, pre))
                    });
                (loaded, moved)
            })
            .await
            .context("loading the component panicked")?;
            *turn = back;
            loaded?
        };
        // Replaced again between the two looks: what was linked decides.
        let world = match pre {
            engine::AppPre::Wsgi(_) => World::Wsgi,
            engine::AppPre::WasiHttp(_) => World::WasiHttp,
        };
        refuse_other_world(&component, world, self.world)?;
        let sandbox = {
            // Measuring a quota'd grant walks its tree: off the runtime
            // too, and a long walk (a million files) trades its place for
            // a slow one, as compiling does.
            let (name, files) = (name.clone(), loaded.files.clone());
            let (memory, isolation) = (limits.memory, limits.isolation);
            let mut moved = std::mem::take(turn);
            let (sandbox, back) = tokio::task::spawn_blocking(move || {
                let sandbox = Sandbox::new(&name, grants, files, memory, isolation, &mut || {
                    moved.trade_for_slow()
                })
                .map(|s| s.with_live_dirs(&live_dirs));
                (sandbox, moved)
            })
            .await
            .context("setting up the sandbox panicked")?;
            *turn = back;
            sandbox?
        };
        AppPool::start(
            &name,
            loaded,
            pre,
            sandbox,
            limits,
            self.cpu.clone(),
            self.metrics.clone(),
        )
        .await
    }

    /// Unload the app if it is loaded, serves nothing, and has had no
    /// request for its `idle_timeout`; the pool is returned so the caller
    /// can drop it off the runtime's threads.
    pub fn unload_if_idle(&self) -> Option<Arc<AppPool>> {
        if self.idle_timeout.is_zero() {
            return None;
        }
        let idle_ms = now_ms().saturating_sub(self.last_used.load(Ordering::Relaxed));
        if u128::from(idle_ms) < self.idle_timeout.as_millis() {
            return None;
        }
        self.unload(|| format!("unloaded after {:?} idle", self.idle_timeout))
    }

    /// Unload the app if a directory of its files was removed from the
    /// cache while it ran: its instances hold the removed directory and
    /// fail every import or read from it until they go. Requests running
    /// finish on the old pool; the next one loads the app again, which
    /// unpacks its files.
    /// With `walk`, also when a directory no longer holds every file
    /// unpacked into it (a cleaner pruned files by age), which walks them.
    fn unload_if_files_gone(&self, walk: bool) -> Option<Arc<AppPool>> {
        let warm = match &*self.state.lock().expect("tenant lock") {
            State::Warm(pool) => pool.clone(),
            _ => return None,
        };
        // Looked up without the lock: a `stat` per directory.
        let gone = match warm.missing_files() {
            Some(dir) => format!("{} was removed", dir.display()),
            None if walk => format!("files in {} were removed", warm.pruned_files()?.display()),
            None => return None,
        };
        let mut state = self.state.lock().expect("tenant lock");
        if !matches!(&*state, State::Warm(pool) if Arc::ptr_eq(pool, &warm)) {
            return None;
        }
        *state = State::Cold;
        drop(state);
        self.metrics.series().loaded_copies(-1);
        tracing::warn!(
            app = %self.spec.name,
            "{gone} from the cache while the app ran: unloaded, and loaded again (its files unpacked) at its next request"
        );
        Some(warm)
    }

    /// Loaded, or being loaded.
    fn resident(&self) -> bool {
        self.loading_now.load(Ordering::SeqCst)
            || matches!(*self.state.lock().expect("tenant lock"), State::Warm(_))
    }

    /// Unload the app if it is loaded and serves nothing, saying `why`.
    fn unload(&self, why: impl FnOnce() -> String) -> Option<Arc<AppPool>> {
        let mut state = self.state.lock().expect("tenant lock");
        let State::Warm(pool) = &*state else {
            return None;
        };
        if !pool.is_idle() {
            return None;
        }
        let State::Warm(pool) = std::mem::replace(&mut *state, State::Cold) else {
            unreachable!("matched above");
        };
        drop(state);
        let series = self.metrics.series();
        series.loaded_copies(-1);
        series.unloads.inc();
        tracing::info!(app = %self.spec.name, "{}", why());
        Some(pool)
    }
}

impl Drop for Tenant {
    fn drop(&mut self) {
        // Replaced by a reload while loaded. Counted up and down rather
        // than set: a reload's new tenant of the same name shares the
        // series, and may load before the last request lets this one go.
        if matches!(self.state.get_mut().map(|s| &*s), Ok(State::Warm(_))) {
            self.metrics.series().loaded_copies(-1);
        }
    }
}

/// How often the sweep looks for apps whose files were removed from the
/// cache: a `stat` per directory of every loaded app.
const FILES_CHECK_EVERY: Duration = Duration::from_secs(5);

/// How often the files check also walks the loaded apps' trees against
/// what was unpacked into them (each distinct tree once: the stdlib's
/// 700 files take about a millisecond), so files pruned one by one are
/// noticed too, not only at the app's next load.
const FILES_WALK_EVERY: Duration = Duration::from_secs(30);

static FILES_CHECKED: Mutex<Option<Instant>> = Mutex::new(None);
static FILES_WALKED: Mutex<Option<Instant>> = Mutex::new(None);

/// Whether what `last` times is due, at most once per `every`.
fn due(last: &Mutex<Option<Instant>>, every: Duration) -> bool {
    let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
    if last.is_some_and(|t| t.elapsed() < every) {
        return false;
    }
    *last = Some(Instant::now());
    true
}

/// How often the idle sweep looks at `tenants`: often enough to honour
/// the shortest `idle_timeout` to within a quarter of it.
pub fn sweep_interval(tenants: &[Arc<Tenant>]) -> Duration {
    tenants
        .iter()
        .map(|t| t.idle_timeout)
        .filter(|d| !d.is_zero())
        .min()
        .map_or(Duration::from_secs(5), |d| d / 4)
        .clamp(Duration::from_millis(100), Duration::from_secs(5))
}

/// Unload every idle app of `tenants`; the pools are torn down on a
/// blocking thread (unmapping instances' memory takes milliseconds).
pub fn sweep(tenants: &[Arc<Tenant>]) {
    let mut unloaded: Vec<Arc<AppPool>> =
        tenants.iter().filter_map(|t| t.unload_if_idle()).collect();
    if due(&FILES_CHECKED, FILES_CHECK_EVERY) {
        if due(&FILES_WALKED, FILES_WALK_EVERY) {
            // Walking trees takes milliseconds: off the runtime's threads.
            let tenants = tenants.to_vec();
            tokio::task::spawn_blocking(move || {
                let gone: Vec<Arc<AppPool>> = tenants
                    .iter()
                    .filter_map(|t| t.unload_if_files_gone(true))
                    .collect();
                drop(gone);
            });
        } else {
            unloaded.extend(tenants.iter().filter_map(|t| t.unload_if_files_gone(false)));
        }
    }
    // Past the cap after a burst that kept every app busy.
    if let Some(t) = tenants.first() {
        unloaded.extend(t.starter.resident.trim());
    }
    unload_off_runtime(unloaded);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Semaphore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_load_that_turns_slow_gives_its_place_back() {
        let (quick, slow) = (Arc::new(Semaphore::new(1)), Arc::new(Semaphore::new(1)));
        let turn = |permit| Turn {
            permit: Some(permit),
            slow: Some(slow.clone()),
            waiting: Arc::default(),
        };
        let mut first = turn(quick.clone().acquire_owned().await.unwrap());
        assert_eq!(quick.available_permits(), 0);
        // On a blocking thread, as the loader calls it.
        let first = tokio::task::spawn_blocking(move || {
            first.trade_for_slow();
            first
        })
        .await
        .unwrap();
        assert_eq!(
            quick.available_permits(),
            1,
            "the quick place is given back"
        );
        assert_eq!(slow.available_permits(), 0);
        // A second slow load waits for the first, flagged as waiting.
        let mut second = turn(quick.clone().acquire_owned().await.unwrap());
        let waiting = second.waiting.clone();
        let second = tokio::task::spawn_blocking(move || {
            second.trade_for_slow();
            second
        });
        while !waiting.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(quick.available_permits(), 1);
        drop(first);
        let second = second.await.unwrap();
        assert!(!waiting.load(Ordering::SeqCst));
        assert!(second.permit.is_some() && second.slow.is_none());
        // Once traded, the turn is not traded again.
        let mut second = second;
        second.trade_for_slow();
        assert_eq!(slow.available_permits(), 0);
    }
}
