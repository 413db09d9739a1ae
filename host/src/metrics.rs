//! Prometheus metrics: one process-wide registry, per-tenant handles cut
//! once per app so a request touches atomics only, and the text encoding
//! `--metrics` serves.
//!
//! A tenant's series are registered at its first load or request, not when
//! it is listed: a config of thousands of tenants, most of them cold, must
//! not make every scrape carry dozens of zero series for each.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Tenant {
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Class {
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantClass {
    tenant: String,
    class: &'static str,
}

/// Why an instance was replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recycle {
    /// The guest trapped.
    Trap,
    /// The request ran past `--timeout`.
    Timeout,
    /// A memory growth was refused.
    Memory,
    /// `--max-requests` (or request isolation, which retires after one).
    MaxRequests,
    /// The guest's adapter failed (the app closed its stderr): its state
    /// is not to be trusted with another request.
    Adapter,
    /// The request's time ran out while the app waited for the client's
    /// body: the client was too slow, and the call was abandoned.
    SlowClient,
}

/// The `cause` label of each [`Recycle`], in its order.
const CAUSES: [&str; 6] = [
    "trap",
    "timeout",
    "memory",
    "max_requests",
    "adapter",
    "slow_client",
];
/// The `class` label of each status hundred.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// The `state` label of instances: warm (idle) and busy.
const STATES: [&str; 2] = ["warm", "busy"];
/// The `result` label of outbound connections and lookups.
const RESULTS: [&str; 2] = ["allowed", "denied"];
/// The `direction` label of outbound TLS bytes.
const DIRECTIONS: [&str; 2] = ["sent", "received"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantCause {
    tenant: String,
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantState {
    tenant: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: &'static str,
}

type Seconds = Counter<f64, AtomicU64>;
type Latency = Family<Tenant, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every series the process exports.
struct Metrics {
    registry: Registry,
    requests: Family<TenantClass, Counter>,
    unrouted: Family<Class, Counter>,
    latency: Latency,
    in_flight: Family<Tenant, Gauge>,
    queued: Family<Tenant, Gauge>,
    rejected: Family<Tenant, Counter>,
    timeouts: Family<Tenant, Counter>,
    instances: Family<TenantState, Gauge>,
    recycles: Family<TenantCause, Counter>,
    cpu: Family<Tenant, Seconds>,
    memory: Family<Tenant, Gauge>,
    cache: Family<Outcome, Counter>,
    reloads: Family<Outcome, Counter>,
    loaded: Family<Tenant, Gauge>,
    cold_starts: Latency,
    unloads: Family<Tenant, Counter>,
    load_failures: Family<Tenant, Counter>,
    quota_refusals: Family<Tenant, Counter>,
    open_files_refusals: Family<Tenant, Counter>,
    guest_output_dropped: Family<Tenant, Counter>,
    open_files: Family<Tenant, Gauge>,
    response_buffer: Family<Tenant, Gauge>,
    components: Gauge,
    core_modules: Gauge,
    listed: Gauge,
    connections: Gauge,
    connections_full: Counter,
    outbound_connections: Family<TenantResult, Counter>,
    outbound_lookups: Family<TenantResult, Counter>,
    outbound_tls_bytes: Family<TenantDirection, Counter>,
    /// Live [`TenantMetrics`] per (escaped) tenant name.
    holders: HashMap<String, Holders>,
}

/// The live handles of one tenant name, across reloads.
#[derive(Default)]
struct Holders {
    /// Handles, registered or not: the name is listed while any is live.
    handles: usize,
    /// Handles whose series are registered: the series leave the
    /// exposition with the last of these, so tenants removed by reloads do
    /// not pile up.
    registered: usize,
    /// Loaded copies of the app: a reload's new tenant may load before
    /// the old one's last request lets it go.
    copies: Arc<Mutex<i64>>,
    /// Which listing of the name this is: a tenant removed by a reload and
    /// added back by a later one is another, even while the first one's
    /// requests still run.
    generation: u64,
}

/// The next [`Holders::generation`].
static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantResult {
    tenant: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantDirection {
    tenant: String,
    direction: &'static str,
}

static METRICS: LazyLock<Mutex<Metrics>> = LazyLock::new(|| Mutex::new(Metrics::new()));

/// Whether the process has loaded its config and checked every tenant
/// it starts eagerly (`/readyz`).
pub static READY: AtomicBool = AtomicBool::new(false);

/// Log lines dropped because stderr did not take them (`log_writer`):
/// counted with no lock, as a line may be logged while one is held.
pub static LOG_LINES_DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Whether the process is shutting down (`/readyz` then fails, so a load
/// balancer stops sending it traffic while in-flight requests finish).
pub static DRAINING: AtomicBool = AtomicBool::new(false);

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("rsgi_wasm");
        let m = Metrics {
            requests: Family::default(),
            unrouted: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            in_flight: Family::default(),
            queued: Family::default(),
            rejected: Family::default(),
            timeouts: Family::default(),
            instances: Family::default(),
            recycles: Family::default(),
            cpu: Family::default(),
            memory: Family::default(),
            cache: Family::default(),
            reloads: Family::default(),
            loaded: Family::default(),
            cold_starts: Family::new_with_constructor(latency_histogram),
            unloads: Family::default(),
            load_failures: Family::default(),
            quota_refusals: Family::default(),
            open_files_refusals: Family::default(),
            guest_output_dropped: Family::default(),
            open_files: Family::default(),
            response_buffer: Family::default(),
            components: Gauge::default(),
            core_modules: Gauge::default(),
            listed: Gauge::default(),
            connections: Gauge::default(),
            connections_full: Counter::default(),
            outbound_connections: Family::default(),
            outbound_lookups: Family::default(),
            outbound_tls_bytes: Family::default(),
            holders: HashMap::new(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Responses sent, by tenant and status class",
            m.requests.clone(),
        );
        registry.register(
            "unrouted_requests",
            "Responses to requests no app took: refused before routing, or no app for their host and path (404)",
            m.unrouted.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from the request head to the end of the response body",
            m.latency.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Requests the tenant holds: being answered, or waiting for an instance (queued_requests of them)",
            m.in_flight.clone(),
        );
        registry.register(
            "queued_requests",
            "Requests waiting for a busy instance",
            m.queued.clone(),
        );
        registry.register(
            "rejected",
            "Requests answered 503: the queue was full, no instance could start, or --max-response-buffer had no room for the response",
            m.rejected.clone(),
        );
        registry.register(
            "timeouts",
            "Requests past --timeout: answered 504, or cut short if their response had started",
            m.timeouts.clone(),
        );
        registry.register(
            "instances",
            "Instances, warm (idle) or busy (serving)",
            m.instances.clone(),
        );
        registry.register(
            "instance_recycles",
            "Instances replaced, by cause",
            m.recycles.clone(),
        );
        registry.register(
            "guest_cpu_seconds",
            "CPU time spent in the tenant's guests",
            m.cpu.clone(),
        );
        registry.register(
            "linear_memory_bytes",
            "Linear memory of the tenant's live instances",
            m.memory.clone(),
        );
        registry.register(
            "artifact_cache",
            "Compiled-artifact cache lookups, hit or miss (compiled)",
            m.cache.clone(),
        );
        registry.register("reloads", "SIGHUP reloads, ok or failed", m.reloads.clone());
        registry.register(
            "tenant_loaded",
            "1 while the tenant's app is loaded, 0 while it is cold",
            m.loaded.clone(),
        );
        registry.register(
            "cold_start_seconds",
            "Loads of a cold tenant on its first request: time until it could serve",
            m.cold_starts.clone(),
        );
        registry.register(
            "idle_unloads",
            "Tenants unloaded: after idle_timeout without requests, or the least recently used when serve --max-loaded apps were loaded",
            m.unloads.clone(),
        );
        registry.register(
            "load_failures",
            "Loads of a tenant that failed (its requests got 503 for the next 10 s)",
            m.load_failures.clone(),
        );
        registry.register(
            "disk_quota_refusals",
            "Guest writes refused with ENOSPC because a disk quota of the tenant (its /tmp or a granted directory's) was reached",
            m.quota_refusals.clone(),
        );
        registry.register(
            "open_files_refusals",
            "Guest opens refused with ENOMEM because the tenant's max_open_files were open",
            m.open_files_refusals.clone(),
        );
        registry.register(
            "open_files",
            "Host files, directories and sockets the tenant's instances hold open, with files the host is still sending for it (wsgi.file_wrapper)",
            m.open_files.clone(),
        );
        registry.register(
            "response_buffer_bytes",
            "Bytes of the tenant's large response chunks (over 64 KiB) held for clients still taking them, within --max-response-buffer",
            m.response_buffer.clone(),
        );
        registry.register(
            "guest_output_dropped_bytes",
            "Bytes of the tenant's stdout and stderr dropped past its log_rate",
            m.guest_output_dropped.clone(),
        );
        registry.register(
            "components_loaded",
            "Distinct compiled components in memory",
            m.components.clone(),
        );
        registry.register(
            "core_modules_loaded",
            "Distinct compiled core modules in memory, each shared by the components that ship it",
            m.core_modules.clone(),
        );
        registry.register(
            "tenants_listed",
            "Tenants in the config, loaded or not (a tenant's own series appear at its first load or request)",
            m.listed.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections open (at most --max-connections)",
            m.connections.clone(),
        );
        registry.register(
            "connection_limit_reached",
            "Times every --max-connections slot was taken, so no more connections were accepted until one closed (many idle or slow connections: a slowloris; or too low a limit)",
            m.connections_full.clone(),
        );
        registry.register(
            "outbound_connections",
            "Outbound TCP connections the tenant's guests opened (allowed) or were refused (denied) by its --allow-net rules; a tenant with no rule cannot open a socket at all, which is not counted",
            m.outbound_connections.clone(),
        );
        registry.register(
            "outbound_lookups",
            "Host name lookups by the tenant's guests, allowed or denied by --allow-net",
            m.outbound_lookups.clone(),
        );
        registry.register(
            "outbound_tls_bytes",
            "Bytes of TLS records the tenant's guests sent and received through the host's TLS",
            m.outbound_tls_bytes.clone(),
        );
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because stderr did not take them as fast as they came (a stalled or slow log reader); requests are served meanwhile",
            LOG_LINES_DROPPED.clone(),
        );
        // The process-wide counters start at 0, so an alert on their
        // increase sees the first event too.
        for result in ["ok", "failed"] {
            let _ = m.reloads.get_or_create(&Outcome { result });
        }
        for result in ["hit", "miss"] {
            let _ = m.cache.get_or_create(&Outcome { result });
        }
        for class in CLASSES {
            let _ = m.unrouted.get_or_create(&Class { class });
        }
        Metrics { registry, ..m }
    }
}

fn with<T>(f: impl FnOnce(&mut Metrics) -> T) -> T {
    f(&mut METRICS.lock().expect("metrics lock"))
}

impl Metrics {
    /// Remove every series labelled with tenant `name` (escaped).
    fn forget(&self, name: &str) {
        let t = Tenant {
            tenant: name.to_owned(),
        };
        for family in [
            &self.in_flight,
            &self.queued,
            &self.memory,
            &self.loaded,
            &self.open_files,
            &self.response_buffer,
        ] {
            family.remove(&t);
        }
        for family in [
            &self.rejected,
            &self.timeouts,
            &self.unloads,
            &self.load_failures,
            &self.quota_refusals,
            &self.open_files_refusals,
            &self.guest_output_dropped,
        ] {
            family.remove(&t);
        }
        self.latency.remove(&t);
        self.cold_starts.remove(&t);
        self.cpu.remove(&t);
        let tenant = name.to_owned();
        for class in CLASSES {
            let tenant = tenant.clone();
            self.requests.remove(&TenantClass { tenant, class });
        }
        for cause in CAUSES {
            let tenant = tenant.clone();
            self.recycles.remove(&TenantCause { tenant, cause });
        }
        for state in STATES {
            let tenant = tenant.clone();
            self.instances.remove(&TenantState { tenant, state });
        }
        for result in RESULTS {
            let label = TenantResult {
                tenant: tenant.clone(),
                result,
            };
            self.outbound_connections.remove(&label);
            self.outbound_lookups.remove(&label);
        }
        for direction in DIRECTIONS {
            let tenant = tenant.clone();
            self.outbound_tls_bytes
                .remove(&TenantDirection { tenant, direction });
        }
    }
}

/// Tenant `name` was removed by a reload: its series leave the exposition
/// now, while its last requests still run (they count where nothing reads
/// them), so one added back by a later reload starts from zero.
pub fn tenant_removed(name: &str) {
    let escaped = label_value(name);
    with(|m| {
        if m.holders.remove(&escaped).is_some_and(|h| h.registered > 0) {
            m.forget(&escaped);
        }
        m.listed.set(m.holders.len() as i64);
    });
}

/// The registry in Prometheus text format.
pub fn encode() -> String {
    let mut out = String::new();
    with(|m| prometheus_client::encoding::text::encode(&mut out, &m.registry))
        .expect("writing to a String cannot fail");
    out
}

/// A compiled-artifact cache lookup: found, or compiled.
pub fn artifact_cache(hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    with(|m| m.cache.get_or_create(&Outcome { result }).inc());
}

/// The gauge of open client connections, and the counter of times all
/// `--max-connections` were open when the next came.
pub fn client_connections() -> (Gauge, Counter) {
    with(|m| (m.connections.clone(), m.connections_full.clone()))
}

/// A compiled component was loaded (+1) or freed (-1).
pub fn components_loaded(delta: i64) {
    with(|m| m.components.inc_by(delta));
}

/// A split-out core module was loaded (+1) or freed (-1).
pub fn core_modules_loaded(delta: i64) {
    with(|m| m.core_modules.inc_by(delta));
}

/// A SIGHUP reload finished.
pub fn reload(ok: bool) {
    let result = if ok { "ok" } else { "failed" };
    with(|m| m.reloads.get_or_create(&Outcome { result }).inc());
}

/// The series of responses that never reached a tenant, cut once: a
/// flood of malformed requests must not take the registry lock each.
/// `value` as the text exposition format quotes a label value.
fn label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The counter of tenant `name`'s writes refused by a disk quota.
pub fn quota_refusals(name: &str) -> Counter {
    let tenant = label_value(name);
    with(|m| m.quota_refusals.get_or_create(&Tenant { tenant }).clone())
}

/// The counter of tenant `name`'s opens refused by `max_open_files`.
pub fn open_files_refusals(name: &str) -> Counter {
    let tenant = label_value(name);
    with(|m| {
        m.open_files_refusals
            .get_or_create(&Tenant { tenant })
            .clone()
    })
}

/// The gauge of the host descriptors tenant `name`'s guests hold.
pub fn open_files(name: &str) -> Gauge {
    let tenant = label_value(name);
    with(|m| m.open_files.get_or_create(&Tenant { tenant }).clone())
}

/// The gauge of tenant `name`'s response bytes held for clients.
pub fn response_buffer(name: &str) -> Gauge {
    let tenant = label_value(name);
    with(|m| m.response_buffer.get_or_create(&Tenant { tenant }).clone())
}

/// Tenant `name`'s 503s counter, for a refusal made outside its pool (no
/// room in `--max-response-buffer`).
pub fn rejected(name: &str) -> Counter {
    let tenant = label_value(name);
    with(|m| m.rejected.get_or_create(&Tenant { tenant }).clone())
}

/// The counter of bytes of tenant `name`'s output dropped past its
/// `log_rate`.
pub fn guest_output_dropped(name: &str) -> Counter {
    let tenant = label_value(name);
    with(|m| {
        m.guest_output_dropped
            .get_or_create(&Tenant { tenant })
            .clone()
    })
}

/// A response that never reached a tenant (refused before routing): not
/// counted as a tenant's, which would show a tenant named "".
pub fn unrouted(status: u16) {
    // Cut once, as a tenant's are: a request only touches an atomic.
    static BY_CLASS: LazyLock<[Counter; 5]> = LazyLock::new(|| {
        with(|m| CLASSES.map(|class| m.unrouted.get_or_create(&Class { class }).clone()))
    });
    BY_CLASS[(status / 100).clamp(1, 5) as usize - 1].inc();
}

/// One tenant's handle on its series, which it registers at first use.
pub struct TenantMetrics {
    /// The tenant's name, as written (empty: no tenant).
    pub name: Arc<str>,
    /// The name as a label value.
    escaped: String,
    /// The listing of the name it belongs to ([`Holders::generation`]).
    generation: u64,
    series: OnceLock<TenantSeries>,
}

/// One tenant's series, cut once: a request only touches atomics.
pub struct TenantSeries {
    by_class: [Counter; 5],
    latency: Histogram,
    in_flight: Gauge,
    /// Requests waiting for an instance.
    pub queued: Gauge,
    /// 503s.
    pub rejected: Counter,
    /// 504s.
    pub timeouts: Counter,
    /// Idle instances.
    pub warm: Gauge,
    /// Instances serving a request.
    pub busy: Gauge,
    recycles: [Counter; CAUSES.len()],
    /// Guest CPU time, in seconds.
    pub cpu: Seconds,
    /// Linear memory of live instances.
    pub memory: Gauge,
    /// 1 while the app is loaded.
    loaded: Gauge,
    copies: Arc<Mutex<i64>>,
    /// Cold loads, by how long they took.
    pub cold_starts: Histogram,
    /// Unloads after `idle_timeout`.
    pub unloads: Counter,
    /// Loads that failed.
    pub load_failures: Counter,
}

impl TenantSeries {
    /// Register (or find again) the series of escaped name `name`.
    fn cut(m: &mut Metrics, name: &str) -> Self {
        let holders = m.holders.entry(name.to_owned()).or_default();
        holders.registered += 1;
        let copies = holders.copies.clone();
        let t = || Tenant {
            tenant: name.to_owned(),
        };
        let class = |class| {
            let tenant = name.to_owned();
            m.requests
                .get_or_create(&TenantClass { tenant, class })
                .clone()
        };
        let recycle = |cause| {
            let tenant = name.to_owned();
            m.recycles
                .get_or_create(&TenantCause { tenant, cause })
                .clone()
        };
        // Set by `held_bytes` by name; there from the first use at 0, as
        // the other gauges are.
        drop(m.response_buffer.get_or_create(&t()));
        let state = |state| {
            let tenant = name.to_owned();
            m.instances
                .get_or_create(&TenantState { tenant, state })
                .clone()
        };
        TenantSeries {
            by_class: CLASSES.map(class),
            latency: m.latency.get_or_create(&t()).clone(),
            in_flight: m.in_flight.get_or_create(&t()).clone(),
            queued: m.queued.get_or_create(&t()).clone(),
            rejected: m.rejected.get_or_create(&t()).clone(),
            timeouts: m.timeouts.get_or_create(&t()).clone(),
            warm: state(STATES[0]),
            busy: state(STATES[1]),
            recycles: CAUSES.map(recycle),
            cpu: m.cpu.get_or_create(&t()).clone(),
            memory: m.memory.get_or_create(&t()).clone(),
            loaded: m.loaded.get_or_create(&t()).clone(),
            copies,
            cold_starts: m.cold_starts.get_or_create(&t()).clone(),
            unloads: m.unloads.get_or_create(&t()).clone(),
            load_failures: m.load_failures.get_or_create(&t()).clone(),
        }
    }
}

impl TenantSeries {
    /// One more (+1) or one fewer (-1) loaded copy of the app. The gauge
    /// says whether any is, so it stays 0 or 1 while a reload's old and new
    /// copies overlap.
    pub fn loaded_copies(&self, delta: i64) {
        let mut n = self.copies.lock().expect("metrics lock");
        *n += delta;
        self.loaded.set(i64::from(*n > 0));
    }
}

impl TenantMetrics {
    /// The handle of tenant `name`. Its series are registered at first use,
    /// or now if a live handle of the same name (the tenant before a
    /// reload) has them, so a reload never resets a tenant's counters.
    pub fn new(name: &str) -> Arc<Self> {
        // prometheus-client writes label values as given: escaped here, so
        // no app name can break the exposition for every other tenant.
        let escaped = label_value(name);
        let series = OnceLock::new();
        let generation = with(|m| {
            let holders = m.holders.entry(escaped.clone()).or_insert_with(|| Holders {
                generation: GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                ..Holders::default()
            });
            holders.handles += 1;
            let generation = holders.generation;
            if holders.registered > 0 {
                let _ = series.set(TenantSeries::cut(m, &escaped));
            }
            m.listed.set(m.holders.len() as i64);
            generation
        });
        Arc::new(TenantMetrics {
            name: name.into(),
            escaped,
            generation,
            series,
        })
    }

    /// Whether the name is still listed as this handle's tenant.
    fn current(&self, m: &Metrics) -> bool {
        m.holders
            .get(&self.escaped)
            .is_some_and(|h| h.generation == self.generation)
    }

    /// The tenant's series, registered now if this is their first use
    /// (exported nowhere once a reload removed the tenant).
    pub fn series(&self) -> &TenantSeries {
        self.series.get_or_init(|| {
            with(|m| {
                if self.current(m) {
                    TenantSeries::cut(m, &self.escaped)
                } else {
                    TenantSeries::cut(&mut Metrics::new(), &self.escaped)
                }
            })
        })
    }

    /// A request routed to this tenant is being answered.
    pub fn started(&self) {
        self.series().in_flight.inc();
    }

    /// Its response is done (or abandoned).
    pub fn finished(&self, status: u16, elapsed: Duration) {
        let s = self.series();
        s.in_flight.dec();
        let i = (status / 100).clamp(1, 5) as usize - 1;
        s.by_class[i].inc();
        s.latency.observe(elapsed.as_secs_f64());
    }

    /// An instance was replaced.
    pub fn recycled(&self, cause: Recycle) {
        let i = match cause {
            Recycle::Trap => 0,
            Recycle::Timeout => 1,
            Recycle::Memory => 2,
            Recycle::MaxRequests => 3,
            Recycle::Adapter => 4,
            Recycle::SlowClient => 5,
        };
        self.series().recycles[i].inc();
    }
}

impl Drop for TenantMetrics {
    fn drop(&mut self) {
        let registered = self.series.get().is_some();
        with(|m| {
            if !self.current(m) {
                return;
            }
            let Some(h) = m.holders.get_mut(&self.escaped) else {
                return;
            };
            h.handles -= 1;
            h.registered -= usize::from(registered);
            let (handles, left) = (h.handles, h.registered);
            if registered && left == 0 {
                m.forget(&self.escaped);
            }
            if handles == 0 {
                m.holders.remove(&self.escaped);
            }
            m.listed.set(m.holders.len() as i64);
        });
    }
}

/// One tenant's outbound series, cut once per app.
pub struct OutboundMetrics {
    connections: [Counter; 2],
    lookups: [Counter; 2],
    /// TLS bytes written to the network.
    pub tls_sent: Counter,
    /// TLS bytes read from the network.
    pub tls_received: Counter,
}

impl OutboundMetrics {
    /// The series of tenant `name`.
    pub fn new(name: &str) -> Self {
        let name = label_value(name);
        let name = name.as_str();
        let result = |family: &Family<TenantResult, Counter>| {
            RESULTS.map(|result| {
                family
                    .get_or_create(&TenantResult {
                        tenant: name.to_owned(),
                        result,
                    })
                    .clone()
            })
        };
        let direction = |m: &Metrics, direction| {
            m.outbound_tls_bytes
                .get_or_create(&TenantDirection {
                    tenant: name.to_owned(),
                    direction,
                })
                .clone()
        };
        with(|m| OutboundMetrics {
            connections: result(&m.outbound_connections),
            lookups: result(&m.outbound_lookups),
            tls_sent: direction(m, DIRECTIONS[0]),
            tls_received: direction(m, DIRECTIONS[1]),
        })
    }

    /// A connection was allowed or refused.
    pub fn connection(&self, allowed: bool) {
        self.connections[usize::from(!allowed)].inc();
    }

    /// A name lookup was allowed or refused.
    pub fn lookup(&self, allowed: bool) {
        self.lookups[usize::from(!allowed)].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_odd_tenant_name_is_escaped_not_breaking_the_exposition() {
        let t = TenantMetrics::new("we\"ird\nna}me\\");
        t.started();
        let _out = OutboundMetrics::new("we\"ird\nna}me\\");
        let text = encode();
        assert!(
            text.contains("rsgi_wasm_in_flight_requests{tenant=\"we\\\"ird\\nna}me\\\\\"} 1"),
            "{text}"
        );
        assert!(!text.lines().any(|l| l.starts_with("na}me")), "{text}");
        assert!(
            text.contains("rsgi_wasm_outbound_lookups_total{tenant=\"we\\\"ird\\nna}me\\\\\",result=\"denied\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn a_tenant_s_series_go_with_its_last_handle() {
        let label = "tenant=\"unit-gone\"";
        let lines = || encode().lines().filter(|l| l.contains(label)).count();
        let first = TenantMetrics::new("unit-gone");
        // Listed, never used: no series yet.
        assert_eq!(lines(), 0, "{}", encode());
        first.started();
        let _outbound = OutboundMetrics::new("unit-gone");
        // Every per-tenant family has its series from the first use.
        let all = lines();
        assert!(all >= 40, "{all}: {}", encode());
        // A reload's new handle for the same name keeps them, used or not.
        let second = TenantMetrics::new("unit-gone");
        drop(first);
        assert_eq!(lines(), all);
        assert!(encode().contains("rsgi_wasm_in_flight_requests{tenant=\"unit-gone\"} 1"));
        drop(second);
        assert_eq!(lines(), 0, "{}", encode());
        // A tenant added again starts from zero.
        let again = TenantMetrics::new("unit-gone");
        again.series();
        assert!(encode().contains("rsgi_wasm_in_flight_requests{tenant=\"unit-gone\"} 0"));
        drop(again);
        assert_eq!(lines(), 0, "{}", encode());
    }

    #[test]
    fn tenant_loaded_stays_0_or_1_while_a_reload_s_copies_overlap() {
        let line = |v| format!("rsgi_wasm_tenant_loaded{{tenant=\"unit-copies\"}} {v}");
        let old = TenantMetrics::new("unit-copies");
        old.series().loaded_copies(1);
        let new = TenantMetrics::new("unit-copies");
        new.series().loaded_copies(1);
        assert!(encode().contains(&line(1)), "{}", encode());
        old.series().loaded_copies(-1);
        drop(old);
        assert!(encode().contains(&line(1)), "{}", encode());
        new.series().loaded_copies(-1);
        assert!(encode().contains(&line(0)), "{}", encode());
    }

    #[test]
    fn tenant_series_are_exported_in_text_format() {
        let t = TenantMetrics::new("unit-a");
        t.started();
        t.finished(204, Duration::from_millis(3));
        t.recycled(Recycle::Timeout);
        t.series().cpu.inc_by(0.25);
        artifact_cache(true);
        let text = encode();
        for line in [
            "rsgi_wasm_requests_total{tenant=\"unit-a\",class=\"2xx\"} 1",
            "rsgi_wasm_in_flight_requests{tenant=\"unit-a\"} 0",
            "rsgi_wasm_instance_recycles_total{tenant=\"unit-a\",cause=\"timeout\"} 1",
            "rsgi_wasm_guest_cpu_seconds_total{tenant=\"unit-a\"} 0.25",
            "rsgi_wasm_request_duration_seconds_count{tenant=\"unit-a\"} 1",
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
        // The same name after a reload gets the same series.
        TenantMetrics::new("unit-a").finished(500, Duration::ZERO);
        assert!(encode().contains("rsgi_wasm_requests_total{tenant=\"unit-a\",class=\"5xx\"} 1"));
    }

    /// Round DK: a tenant removed while requests ran, and added back before
    /// they ended, went on with the old counts and instances.
    #[test]
    fn a_tenant_removed_and_added_back_starts_from_zero_while_its_old_requests_run() {
        let ok = |n| format!("rsgi_wasm_requests_total{{tenant=\"unit-back\",class=\"2xx\"}} {n}");
        let old = TenantMetrics::new("unit-back");
        old.finished(200, Duration::ZERO);
        old.started();
        assert!(encode().contains(&ok(1)), "{}", encode());
        tenant_removed("unit-back");
        assert!(!encode().contains("unit-back"), "{}", encode());
        let back = TenantMetrics::new("unit-back");
        back.started();
        back.finished(200, Duration::ZERO);
        // The old tenant's request ends, and the old tenant goes.
        old.finished(200, Duration::ZERO);
        drop(old);
        let text = encode();
        assert!(text.contains(&ok(1)), "{text}");
        assert!(
            text.contains("rsgi_wasm_in_flight_requests{tenant=\"unit-back\"} 0"),
            "{text}"
        );
    }
}
