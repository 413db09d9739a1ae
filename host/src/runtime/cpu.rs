//! Fair CPU between tenants: guest code runs only while its call holds one
//! of a fixed number of run slots (one per core). A free slot goes to the
//! waiting call whose tenant used the least CPU lately. When every slot is
//! busy, a call of a tenant lighter than one running takes a slot beyond
//! the count at once, and the heavier guests give theirs up at their next
//! epoch check (the epoch is bumped so that is within microseconds); a
//! tenant over its `cpu` share waits until its budget refills, like cgroup
//! `cpu.max`. docs/architecture.md ("Fair CPU") says why.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use wasmtime::{Engine, UpdateDeadline};

use crate::metrics::TenantMetrics;

/// How fast a tenant's recent CPU use fades: after this long, half of it
/// counts. Short enough that a tenant that stops spinning is served first
/// again within a fraction of a second.
const HALF_LIFE: Duration = Duration::from_millis(100);

/// A running guest keeps its slot at least this long before a lighter
/// tenant may take it, so slots do not change hands on every check.
pub const MIN_SLICE: Duration = Duration::from_millis(1);

/// A guest that has run this long without waiting for anything hands its
/// thread back to the runtime, so connection I/O queued on that thread
/// waits no longer than this. The epoch is bumped for such guests only
/// (by the scheduler's watch thread); short requests never see it.
pub const YIELD_AFTER: Duration = Duration::from_millis(1);

/// How often the watch thread looks while no guest runs long.
const IDLE_WATCH: Duration = Duration::from_millis(5);

/// A tenant with a call in this window counts as active: while other
/// tenants are, one tenant's calls may not hold every slot.
const ACTIVE: Duration = Duration::from_millis(100);

/// The window a `cpu` cap is averaged over: a capped tenant may burst up
/// to `cpu × WINDOW` of CPU time before it has to wait.
const WINDOW: Duration = Duration::from_millis(100);

thread_local! {
    /// When the guest poll running on this thread began: a guest has "run
    /// long" only if it ran that long in this poll, not since it last
    /// yielded (an epoch bump for someone else must not make it yield).
    static POLL_START: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// The run slots of one process, shared by every tenant.
pub struct CpuScheduler {
    engine: Engine,
    state: Mutex<State>,
}

struct State {
    /// The slot count.
    slots: usize,
    /// Slots not held; below zero while lighter tenants run beyond the count.
    free: isize,
    /// The calls holding slots: holder id, tenant, since when.
    holders: Vec<(u64, Arc<TenantCpu>, Instant)>,
    /// Heavier guests still to give way for lighter ones that ran beyond
    /// the count: one each, so a light call does not stop every guest.
    evict: usize,
    next_ticket: u64,
    waiting: Vec<Waiting>,
    /// Tickets handed a slot that their future has not picked up yet,
    /// with their tenant.
    granted: Vec<(u64, Arc<TenantCpu>)>,
    /// Tenants that asked for a slot within [`ACTIVE`], when they last did
    /// (at most `slots` of them: more never lowers a bound further).
    active: Vec<(Arc<TenantCpu>, Instant)>,
}

impl State {
    /// Note that `tenant` asks for a slot now.
    fn note_active(&mut self, tenant: &Arc<TenantCpu>, now: Instant) {
        if let Some(e) = self.active.iter_mut().find(|(t, _)| Arc::ptr_eq(t, tenant)) {
            e.1 = now;
            return;
        }
        self.active
            .retain(|(_, at)| now.saturating_duration_since(*at) < ACTIVE);
        if self.active.len() >= self.slots {
            let oldest = (0..self.active.len())
                .min_by_key(|&i| self.active[i].1)
                .expect("slots >= 1");
            self.active.swap_remove(oldest);
        }
        self.active.push((tenant.clone(), now));
    }

    /// How many slots `tenant` may hold: all of them alone, one fewer for
    /// each other active tenant (at least one), so a heavy tenant cannot
    /// fill every core while others have work. Guests cannot always be
    /// stopped at once (a 16 MiB `memory.fill` is one instruction, and
    /// ran 17 ms on this machine), so a lighter tenant's turn must not
    /// depend on a heavy guest reaching its next check.
    fn bound(&self, tenant: &Arc<TenantCpu>, now: Instant) -> usize {
        let others = self
            .active
            .iter()
            .filter(|(t, at)| {
                !Arc::ptr_eq(t, tenant) && now.saturating_duration_since(*at) < ACTIVE
            })
            .count();
        self.slots.saturating_sub(others).max(1)
    }

    /// The slots `tenant` holds or has been handed.
    fn held_by(&self, tenant: &Arc<TenantCpu>) -> usize {
        let holding = self
            .holders
            .iter()
            .filter(|(_, t, _)| Arc::ptr_eq(t, tenant));
        let granted = self.granted.iter().filter(|(_, t)| Arc::ptr_eq(t, tenant));
        holding.count() + granted.count()
    }
}

struct Waiting {
    ticket: u64,
    tenant: Arc<TenantCpu>,
    waker: Waker,
}

/// One tenant's CPU account.
pub struct TenantCpu {
    recent: Mutex<Decayed>,
    cap: Option<Cap>,
    /// Where the tenant's CPU seconds are exported, if they are. Weak: the
    /// scheduler may keep an account a while after its tenant is gone
    /// (`State::active`), and must not keep the tenant's series with it.
    meter: Option<Weak<TenantMetrics>>,
}

/// CPU nanoseconds that fade with [`HALF_LIFE`].
struct Decayed {
    ns: f64,
    at: Instant,
}

/// A `cpu = N` cap: a budget refilled at N CPU-seconds per second.
struct Cap {
    cores: f64,
    bucket: Mutex<Decayed>,
}

fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

impl TenantCpu {
    /// An account; `cap` is the tenant's `cpu` share in cores, if any.
    #[cfg(test)]
    pub fn new(cap: Option<f64>) -> Arc<Self> {
        Self::metered(cap, None)
    }

    /// An account whose CPU time also goes to `meter`, in seconds (even
    /// when the calls are not scheduled: `rsgi-wasm run --metrics`).
    pub fn metered(cap: Option<f64>, meter: Option<&Arc<TenantMetrics>>) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(TenantCpu {
            meter: meter.map(Arc::downgrade),
            recent: Mutex::new(Decayed { ns: 0.0, at: now }),
            cap: cap.map(|cores| Cap {
                cores,
                bucket: Mutex::new(Decayed {
                    ns: cores * WINDOW.as_nanos() as f64,
                    at: now,
                }),
            }),
        })
    }

    /// Recent use in nanoseconds, faded to now.
    fn recent(&self, now: Instant) -> f64 {
        let mut r = self.recent.lock().expect("cpu lock");
        fade(&mut r, now);
        r.ns
    }

    fn charge(&self, ns: u64, now: Instant) {
        self.meter_only(ns);
        {
            let mut r = self.recent.lock().expect("cpu lock");
            fade(&mut r, now);
            r.ns += ns as f64;
        }
        if let Some(cap) = &self.cap {
            let mut b = cap.bucket.lock().expect("cpu lock");
            refill(cap.cores, &mut b, now);
            b.ns -= ns as f64;
        }
    }

    fn meter_only(&self, ns: u64) {
        if let Some(m) = self.meter.as_ref().and_then(Weak::upgrade) {
            m.series().cpu.inc_by(ns as f64 / 1e9);
        }
    }

    /// How long the tenant must wait before it may run again (zero when
    /// it is within its share).
    fn over_cap(&self, now: Instant) -> Duration {
        let Some(cap) = &self.cap else {
            return Duration::ZERO;
        };
        let mut b = cap.bucket.lock().expect("cpu lock");
        refill(cap.cores, &mut b, now);
        if b.ns >= 0.0 {
            Duration::ZERO
        } else {
            // At least a nanosecond (zero means "not over"), and finite
            // whatever the cap.
            Duration::from_nanos((-b.ns / cap.cores).clamp(1.0, 1e12) as u64)
        }
    }
}

fn fade(d: &mut Decayed, now: Instant) {
    let dt = now.saturating_duration_since(d.at).as_secs_f64();
    d.ns *= (-dt / HALF_LIFE.as_secs_f64()).exp2();
    d.at = now;
}

fn refill(cores: f64, b: &mut Decayed, now: Instant) {
    let dt = now.saturating_duration_since(b.at).as_nanos() as f64;
    b.ns = (b.ns + dt * cores).min(cores * WINDOW.as_nanos() as f64);
    b.at = now;
}

/// What `acquire` found.
enum Slot {
    /// Run; the id to release the slot with.
    Held(u64),
    Wait,
}

impl CpuScheduler {
    /// How many guests may run at once.
    pub fn slots(&self) -> usize {
        self.state.lock().expect("cpu lock").slots
    }

    /// `slots` guests may run at once (one per core); `engine`'s epoch is
    /// bumped to make running guests check whether to give way.
    pub fn new(engine: Engine, slots: usize) -> Arc<Self> {
        let slots = slots.max(1);
        let sched = Arc::new(CpuScheduler {
            engine,
            state: Mutex::new(State {
                slots,
                free: slots as isize,
                holders: Vec::new(),
                evict: 0,
                next_ticket: 0,
                waiting: Vec::new(),
                granted: Vec::new(),
                active: Vec::new(),
            }),
        });
        let weak = Arc::downgrade(&sched);
        let watch = std::thread::Builder::new()
            .name("rsgi-wasm-cpu".into())
            .spawn(move || {
                while let Some(sched) = weak.upgrade() {
                    let busy = sched.nudge_long_runners();
                    drop(sched);
                    // Waking every half millisecond costs a context switch
                    // each time (measured: ~6% of a pinned hello server),
                    // so only while a guest runs long or a call waits;
                    // otherwise every IDLE_WATCH, which bounds a new
                    // spinner's first slice.
                    std::thread::sleep(if busy { YIELD_AFTER / 2 } else { IDLE_WATCH });
                }
            });
        if let Err(e) = watch {
            // The engine's own 10 ms epoch still bounds every slice.
            tracing::warn!("cannot start the CPU watch thread: {e}");
        }
        sched
    }

    /// Make guests that have run for [`YIELD_AFTER`] check in, and hand free slots to waiting calls `release` left them for;
    /// whether there is anything to watch closely.
    fn nudge_long_runners(&self) -> bool {
        let now = Instant::now();
        let (long, waiting) = {
            let mut st = self.state.lock().expect("cpu lock");
            // A tenant whose calls wait is active however long they wait.
            for i in 0..st.waiting.len() {
                let t = st.waiting[i].tenant.clone();
                st.note_active(&t, now);
            }
            self.dispatch(&mut st);
            let long = st
                .holders
                .iter()
                .any(|(_, _, since)| now.saturating_duration_since(*since) >= YIELD_AFTER);
            (long, !st.waiting.is_empty())
        };
        if long {
            self.engine.increment_epoch();
        }
        long || waiting
    }

    /// One slot per core the process may use.
    pub fn slots_for_this_machine() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    /// Runtime worker threads: one more than there are slots, so however
    /// busy the guests are, a thread is left for accepting, connection I/O
    /// and static files. On one core the extra thread would only add
    /// context switches (measured: 8% fewer hello requests pinned to one
    /// core), and guests and I/O share that core either way.
    pub fn io_threads_for_this_machine() -> usize {
        match Self::slots_for_this_machine() {
            1 => 1,
            n => n + 1,
        }
    }

    fn acquire(&self, ticket: &mut Option<u64>, tenant: &Arc<TenantCpu>, waker: &Waker) -> Slot {
        let mut st = self.state.lock().expect("cpu lock");
        let t = match *ticket {
            Some(t) => t,
            None => {
                let t = st.next_ticket;
                st.next_ticket += 1;
                let now = Instant::now();
                st.note_active(tenant, now);
                let room = st.held_by(tenant) < st.bound(tenant, now);
                if st.free > 0 && st.waiting.is_empty() && room {
                    st.free -= 1;
                    st.holders.push((t, tenant.clone(), now));
                    return Slot::Held(t);
                }
                if st.free <= 0 && room && self.lighter_than_a_holder(&st, tenant) {
                    // Run now, beyond the count, instead of waiting for a
                    // heavier tenant's guest to notice; that guest gives its
                    // slot up at its next epoch check, which the bump makes
                    // immediate.
                    st.free -= 1;
                    st.evict += 1;
                    st.holders.push((t, tenant.clone(), now));
                    self.engine.increment_epoch();
                    return Slot::Held(t);
                }
                st.waiting.push(Waiting {
                    ticket: t,
                    tenant: tenant.clone(),
                    waker: waker.clone(),
                });
                *ticket = Some(t);
                self.dispatch(&mut st);
                t
            }
        };
        if let Some(i) = st.granted.iter().position(|(g, _)| *g == t) {
            st.granted.swap_remove(i);
            *ticket = None;
            st.holders.push((t, tenant.clone(), Instant::now()));
            return Slot::Held(t);
        }
        if let Some(w) = st.waiting.iter_mut().find(|w| w.ticket == t) {
            w.waker.clone_from(waker);
        }
        Slot::Wait
    }

    /// Whether `tenant` used clearly less CPU lately than some tenant
    /// running now.
    fn lighter_than_a_holder(&self, st: &State, tenant: &TenantCpu) -> bool {
        let now = Instant::now();
        let mine = tenant.recent(now) + MIN_SLICE.as_nanos() as f64;
        st.holders.iter().any(|(_, h, _)| mine < h.recent(now))
    }

    fn release(&self, holder: u64) {
        let mut st = self.state.lock().expect("cpu lock");
        let Some(i) = st.holders.iter().position(|(id, _, _)| *id == holder) else {
            return;
        };
        let (_, releasing, _) = st.holders.swap_remove(i);
        st.free += 1;
        if st.free >= 0 {
            st.evict = 0;
        }
        // A light call's slot going to a heavy waiter: woken from here, the
        // heavy guest would run next on this thread (tokio's LIFO slot),
        // ahead of the light tenant's own connection I/O queued on it. The
        // watch thread hands it over instead, within half a millisecond.
        let now = Instant::now();
        let mine = releasing.recent(now) + MIN_SLICE.as_nanos() as f64;
        if st.waiting.iter().all(|w| mine < w.tenant.recent(now)) {
            return;
        }
        self.dispatch(&mut st);
    }

    /// Give free slots to the lightest waiting tenants that are within
    /// their bound.
    fn dispatch(&self, st: &mut State) {
        if st.free <= 0 || st.waiting.is_empty() {
            return;
        }
        let now = Instant::now();
        while st.free > 0 {
            let best = (0..st.waiting.len())
                .filter(|&i| {
                    let t = &st.waiting[i].tenant;
                    st.held_by(t) < st.bound(t, now)
                })
                .min_by(|&a, &b| {
                    let (wa, wb) = (&st.waiting[a], &st.waiting[b]);
                    wa.tenant
                        .recent(now)
                        .total_cmp(&wb.tenant.recent(now))
                        .then(wa.ticket.cmp(&wb.ticket))
                });
            let Some(best) = best else {
                return;
            };
            let w = st.waiting.remove(best);
            st.free -= 1;
            st.granted.push((w.ticket, w.tenant));
            w.waker.wake();
        }
    }

    /// Forget a future dropped while waiting or holding.
    fn abandon(&self, ticket: Option<u64>, holding: Option<u64>) {
        let mut st = self.state.lock().expect("cpu lock");
        let mut freed = false;
        if let Some(id) = holding {
            st.holders.retain(|(h, _, _)| *h != id);
            freed = true;
        }
        if freed && st.free + 1 >= 0 {
            st.evict = 0;
        }
        if let Some(t) = ticket {
            st.waiting.retain(|w| w.ticket != t);
            if let Some(i) = st.granted.iter().position(|(g, _)| *g == t) {
                st.granted.swap_remove(i);
                freed = true;
            }
        }
        if freed {
            st.free += 1;
            self.dispatch(&mut st);
        }
    }

    /// Whether a guest of `tenant` that has run for `ran` since it last
    /// yielded should give its slot up now: more guests run than there are
    /// slots and a lighter tenant is among them, or a lighter tenant waits
    /// and this guest had its minimum slice.
    fn should_give_way(&self, tenant: &TenantCpu, ran: Duration, now: Instant) -> bool {
        let mut st = self.state.lock().expect("cpu lock");
        if st.evict == 0 && (st.waiting.is_empty() || ran < MIN_SLICE) {
            return false;
        }
        let mine = tenant.recent(now);
        let margin = MIN_SLICE.as_nanos() as f64;
        let lighter = |t: &TenantCpu| t.recent(now) + margin < mine;
        if st.evict > 0 && st.holders.iter().any(|(_, h, _)| lighter(h)) {
            st.evict -= 1;
            return true;
        }
        ran >= MIN_SLICE && st.waiting.iter().any(|w| lighter(&w.tenant))
    }
}

/// A tenant's handle on the scheduler: what its stores and calls need.
#[derive(Clone)]
pub struct CpuShare {
    sched: Arc<CpuScheduler>,
    tenant: Arc<TenantCpu>,
    /// Slots and accounting in force: there are other tenants to be fair
    /// to, or a cap to enforce.
    enforced: bool,
}

impl CpuShare {
    /// `tenant`'s share of `sched`, among other tenants.
    pub fn new(sched: Arc<CpuScheduler>, tenant: Arc<TenantCpu>) -> Self {
        CpuShare {
            sched,
            tenant,
            enforced: true,
        }
    }

    /// The share of the only app of a process (`rsgi-wasm run`): with no
    /// neighbour to be fair to, calls skip the slots and the accounting
    /// (measured: about 5% of a pinned hello server) unless `tenant` is
    /// capped; long runners still yield to the runtime.
    pub fn alone(sched: Arc<CpuScheduler>, tenant: Arc<TenantCpu>) -> Self {
        let enforced = tenant.cap.is_some();
        CpuShare {
            sched,
            tenant,
            enforced,
        }
    }

    /// Run `call` under the scheduler.
    pub fn run<F: Future>(&self, call: F) -> Fair<F> {
        Fair {
            inner: Box::pin(call),
            share: self.clone(),
            ticket: None,
            holding: None,
            keep: false,
            nap: None,
            settle: None,
        }
    }

    /// Run blocking `work` on a blocking thread while holding one of the
    /// tenant's slots, and charge its CPU time to the tenant: tearing down
    /// an instance that filled its memory unmaps hundreds of MiB (tens of
    /// milliseconds of kernel time), which a tenant whose instances keep
    /// blowing up would otherwise take beside its slots.
    pub async fn run_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let job = tokio::task::spawn_blocking(move || {
            let t0 = thread_cpu_ns();
            let out = work();
            (out, thread_cpu_ns().saturating_sub(t0))
        });
        let (out, ns) = if self.enforced {
            let mut fair = self.run(job);
            fair.keep = true;
            fair.await?
        } else {
            job.await?
        };
        if self.enforced {
            self.tenant.charge(ns, Instant::now());
        } else {
            self.tenant.meter_only(ns);
        }
        Ok(out)
    }

    /// The epoch-deadline callback of one store: a guest that has run for
    /// [`YIELD_AFTER`] yields to the runtime (so I/O and timers, such as the
    /// request timeout, get their turn), and it yields early when a lighter
    /// tenant waits or its own tenant is over its cap.
    pub fn deadline_callback(&self) -> impl FnMut() -> UpdateDeadline + Send + Sync + 'static {
        let share = self.clone();
        let mut last_yield = Instant::now();
        move || {
            let now = Instant::now();
            let start = POLL_START
                .with(|c| c.get())
                .map_or(last_yield, |p| p.max(last_yield));
            let ran = now.saturating_duration_since(start);
            let give_way = ran >= YIELD_AFTER
                || !share.tenant.over_cap(now).is_zero()
                || share.sched.should_give_way(&share.tenant, ran, now);
            if give_way {
                last_yield = now;
                // To the back of the runtime's queue, not its LIFO slot.
                UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
            } else {
                UpdateDeadline::Continue(1)
            }
        }
    }
}

/// A guest call that runs only while it holds a run slot; see the module
/// comment.
pub struct Fair<F> {
    inner: Pin<Box<F>>,
    share: CpuShare,
    ticket: Option<u64>,
    /// The holder id while this call holds a slot.
    holding: Option<u64>,
    /// Hold the slot while pending too: the work runs elsewhere.
    keep: bool,
    nap: Option<Pin<Box<tokio::time::Sleep>>>,
    /// After a slot was handed over: one turn at the back of the runtime's
    /// queue before running (see `poll`).
    settle: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl<F: Future> Future for Fair<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        if !this.share.enforced {
            if this.share.tenant.meter.is_none() {
                return timed_poll(this.inner.as_mut(), cx);
            }
            let t0 = thread_cpu_ns();
            let out = timed_poll(this.inner.as_mut(), cx);
            this.share
                .tenant
                .meter_only(thread_cpu_ns().saturating_sub(t0));
            return out;
        }
        let sched = &this.share.sched;
        let tenant = &this.share.tenant;
        loop {
            if let Some(nap) = this.nap.as_mut() {
                if nap.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.nap = None;
            }
            if let Some(settle) = this.settle.as_mut() {
                if settle.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.settle = None;
            }
            if this.holding.is_some() {
                break;
            }
            if this.ticket.is_none() {
                let wait = tenant.over_cap(Instant::now());
                if !wait.is_zero() {
                    this.nap = Some(Box::pin(tokio::time::sleep(wait)));
                    continue;
                }
            }
            let waited = this.ticket.is_some();
            match sched.acquire(&mut this.ticket, tenant, cx.waker()) {
                Slot::Held(id) => this.holding = Some(id),
                Slot::Wait => return Poll::Pending,
            }
            if waited {
                // The slot was handed over from inside another call's poll,
                // so tokio woke this task into that thread's LIFO slot, ahead
                // of the connection I/O queued there: go to the back first.
                this.settle = Some(Box::pin(tokio::task::yield_now()));
            }
        }
        let t0 = thread_cpu_ns();
        let out = timed_poll(this.inner.as_mut(), cx);
        tenant.charge(thread_cpu_ns().saturating_sub(t0), Instant::now());
        // Waiting for I/O, or yielding: the slot goes to whoever is next.
        if out.is_ready() || !this.keep {
            if let Some(id) = this.holding.take() {
                sched.release(id);
            }
        }
        out
    }
}

/// Poll a guest call with its start noted for the deadline callback.
fn timed_poll<F: Future>(call: Pin<&mut F>, cx: &mut Context<'_>) -> Poll<F::Output> {
    let outer = POLL_START.with(|c| c.replace(Some(Instant::now())));
    let out = call.poll(cx);
    POLL_START.with(|c| c.set(outer));
    out
}

impl<F> Drop for Fair<F> {
    fn drop(&mut self) {
        if self.holding.is_some() || self.ticket.is_some() {
            self.share.sched.abandon(self.ticket, self.holding);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        let mut c = wasmtime::Config::new();
        c.epoch_interruption(true);
        Engine::new(&c).unwrap()
    }

    #[test]
    fn recent_use_fades_and_caps_refill() {
        let t = TenantCpu::new(Some(0.5));
        let now = Instant::now();
        t.charge(100_000_000, now);
        assert!((t.recent(now) - 1e8).abs() < 1.0);
        let later = now + HALF_LIFE;
        assert!((t.recent(later) - 5e7).abs() < 1e3);
        // Budget: 0.5 × 100 ms = 50 ms; 100 ms used → 50 ms in debt, which
        // takes 100 ms to repay at half a core.
        let wait = t.over_cap(now);
        assert!(
            wait > Duration::from_millis(99) && wait < Duration::from_millis(101),
            "{wait:?}"
        );
        assert!(t.over_cap(now + Duration::from_millis(101)).is_zero());
        assert!(TenantCpu::new(None).over_cap(now).is_zero());
    }

    #[tokio::test]
    async fn a_light_tenant_is_served_before_a_heavy_one() {
        let sched = CpuScheduler::new(engine(), 1);
        let heavy = TenantCpu::new(None);
        let light = TenantCpu::new(None);
        heavy.charge(50_000_000, Instant::now());
        let waker = futures_task_noop();
        // The only slot is taken.
        let mut first = None;
        let Slot::Held(a) = sched.acquire(&mut first, &heavy, &waker) else {
            panic!("a free slot is taken at once")
        };
        let (mut h, mut l) = (None, None);
        assert!(matches!(sched.acquire(&mut h, &heavy, &waker), Slot::Wait));
        // The light tenant runs at once, beyond the count, and the heavy
        // guest is told to give way (the other heavy call waits).
        let Slot::Held(b) = sched.acquire(&mut l, &light, &waker) else {
            panic!("a lighter tenant runs at once")
        };
        let now = Instant::now();
        assert!(sched.should_give_way(&heavy, Duration::ZERO, now));
        assert!(!sched.should_give_way(&light, Duration::ZERO, now));
        sched.release(a);
        // Still over the count: the waiting heavy call gets nothing yet.
        assert!(matches!(sched.acquire(&mut h, &heavy, &waker), Slot::Wait));
        sched.release(b);
        // A light call's slot goes to a heavy waiter from the watch thread,
        // not from the light call's own thread.
        assert!(matches!(sched.acquire(&mut h, &heavy, &waker), Slot::Wait));
        sched.nudge_long_runners();
        let Slot::Held(c) = sched.acquire(&mut h, &heavy, &waker) else {
            panic!("the slot goes to the waiting call")
        };
        // A dropped holder gives its slot back.
        sched.abandon(None, Some(c));
        assert_eq!(sched.state.lock().unwrap().free, 1);
        assert!(sched.state.lock().unwrap().holders.is_empty());
    }

    #[tokio::test]
    async fn a_tenant_leaves_a_slot_while_another_is_active() {
        let sched = CpuScheduler::new(engine(), 2);
        let heavy = TenantCpu::new(None);
        let other = TenantCpu::new(None);
        let waker = futures_task_noop();
        // Alone, a tenant may use every slot.
        let (mut a, mut b) = (None, None);
        let Slot::Held(x) = sched.acquire(&mut a, &heavy, &waker) else {
            panic!("a free slot is taken at once")
        };
        let Slot::Held(y) = sched.acquire(&mut b, &heavy, &waker) else {
            panic!("alone, the second slot too")
        };
        sched.release(x);
        sched.release(y);
        // Once another tenant has asked for a slot, one is left for it:
        // the heavy tenant's second call waits although a slot is free.
        let mut o = None;
        let Slot::Held(z) = sched.acquire(&mut o, &other, &waker) else {
            panic!("a free slot is taken at once")
        };
        sched.release(z);
        let (mut c, mut d) = (None, None);
        let Slot::Held(x) = sched.acquire(&mut c, &heavy, &waker) else {
            panic!("a free slot is taken at once")
        };
        assert!(matches!(sched.acquire(&mut d, &heavy, &waker), Slot::Wait));
        sched.nudge_long_runners();
        assert!(matches!(sched.acquire(&mut d, &heavy, &waker), Slot::Wait));
        // The other tenant still finds its slot free.
        let mut o = None;
        let Slot::Held(z) = sched.acquire(&mut o, &other, &waker) else {
            panic!("the slot left free is taken at once")
        };
        sched.release(z);
        // When the other tenant has been idle a while, the bound lapses.
        {
            let mut st = sched.state.lock().unwrap();
            for e in &mut st.active {
                e.1 = e.1.checked_sub(ACTIVE).unwrap();
            }
        }
        sched.nudge_long_runners();
        let Slot::Held(w) = sched.acquire(&mut d, &heavy, &waker) else {
            panic!("the waiting call runs once the other tenant is idle")
        };
        sched.release(w);
        sched.release(x);
        assert_eq!(sched.state.lock().unwrap().free, 2);
    }

    #[tokio::test]
    async fn fair_futures_run_and_account() {
        let sched = CpuScheduler::new(engine(), 1);
        let t = TenantCpu::new(None);
        let share = CpuShare::new(sched.clone(), t.clone());
        // 5 ms of this thread's CPU, however busy the machine is.
        let spin = || {
            let t0 = thread_cpu_ns();
            while thread_cpu_ns() - t0 < 5_000_000 {}
        };
        let out = share
            .run(async {
                spin();
                7
            })
            .await;
        assert_eq!(out, 7);
        let used = t.recent(Instant::now());
        assert!(used >= 3e6, "{used} ns charged");
        assert_eq!(sched.state.lock().unwrap().free, 1);
    }

    fn futures_task_noop() -> Waker {
        Waker::noop().clone()
    }
}
