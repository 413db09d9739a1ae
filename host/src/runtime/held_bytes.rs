//! The bound on large response chunks the host holds for clients still
//! taking them (`--max-response-buffer`). A response's own budget
//! (`body::BODY_BUDGET`) lets one chunk of any size through whole, and the
//! app that made it moves on: without this, clients that read slowly or
//! not at all made the host hold 16 MiB for each 16 MiB response they
//! asked for (1.7 GB on one HTTP/2 connection, round CW). Under `serve`
//! one app's responses may hold at most half of it, so slow clients of one
//! app's large responses cannot take the room every other app needs
//! (round CY: 16 connections reading 2.5 KB/s held all of it). Halves
//! alone let two apps' slow clients take it all (round DA), so an app
//! waiting for room takes it back from apps holding more than an equal
//! share, cutting their chunks whose clients would not take them within
//! the wait ([`Limit::reclaim`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Chunks up to this size need no share: each response's own budget
/// bounds them (`body::BODY_BUDGET`).
pub const UNCOUNTED: usize = 64 * 1024;

struct Limit {
    total: Arc<Semaphore>,
    bytes: usize,
    /// What one app's responses may hold together.
    per_app: usize,
    /// How long a chunk waits for room (`--header-timeout`).
    wait: Duration,
    apps: Mutex<HashMap<Arc<str>, Arc<Semaphore>>>,
    /// Chunks that hold room while hyper takes them piece by piece: what
    /// [`Limit::reclaim`] may cut.
    holding: Mutex<Vec<Holding>>,
}

/// A chunk whose rest waits for its client, holding room: the body
/// (`body::Held`) that can say how much is left and drop it.
pub trait Reclaimable: Send + Sync {
    /// Bytes of the chunk its client has not taken yet.
    fn left(&self) -> usize;
    /// Drop what is left, saying `why` in the log, with the request; the
    /// response ends cut short with it.
    fn cut(&self, why: String);
}

/// A held chunk, as [`Limit::reclaim`] weighs it.
struct Holding {
    app: Arc<str>,
    /// The room it holds.
    bytes: usize,
    /// Its length when hyper began taking it, and when.
    len: usize,
    since: Instant,
    chunk: Weak<dyn Reclaimable>,
}

/// How long a chunk's client must have been taking it before its pace
/// says anything: the first moments fill socket buffers at any pace.
const PACE_SHOWN_AFTER: Duration = Duration::from_secs(1);

/// How many times the wait a chunk's client may take, at its pace so far,
/// before its room may be taken back: as long as a client shown to be
/// reading may pause (`body::SLOW_READER_PATIENCE`, which imports this
/// module). Cutting every chunk
/// that would outlast the wait itself took room round in circles when
/// three apps' ordinary slow clients (200 KB/s, 2 MiB each) wanted more
/// than the buffer: each app's next response cut another's, and 95 of 99
/// came back cut short (round DF); the halves alone finished 12 and
/// refused 7.
const HOARDING: u32 = 6;

/// How often an app waiting for room looks again for room to take back:
/// chunks come of age ([`PACE_SHOWN_AFTER`]) and paces change.
const RECLAIM_EVERY: Duration = Duration::from_millis(250);

static LIMIT: OnceLock<Limit> = OnceLock::new();

/// Set the limit, once, before serving: `bytes` in all, a chunk waiting
/// at most `wait` for room, and each app's responses holding at most half
/// (`shared`, under `serve`) or all of it.
pub fn set(bytes: usize, wait: Duration, shared: bool) {
    if let Some(memory) = usable_memory().filter(|&m| bytes as u64 > m) {
        tracing::warn!(
            "--max-response-buffer {} MiB is more than the {} MiB of memory this process may use: \
             clients that do not read large responses could make it hold more than it has; \
             lower it (the default is {})",
            bytes >> 20,
            memory >> 20,
            crate::config::DEFAULT_MAX_RESPONSE_BUFFER
        );
    }
    let _ = LIMIT.set(Limit::new(bytes, wait, shared));
}

/// The machine's memory, or the process's cgroup limit if lower (a
/// container's), where Linux says.
fn usable_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?
        .saturating_mul(1024);
    // cgroup v2: one line, `0::/path`; `max` when unlimited.
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok();
    let limit = cgroup
        .as_deref()
        .and_then(|c| c.lines().find_map(|l| l.strip_prefix("0::")))
        .and_then(|path| {
            std::fs::read_to_string(format!("/sys/fs/cgroup{}/memory.max", path.trim())).ok()
        })
        .and_then(|max| max.trim().parse::<u64>().ok());
    Some(limit.map_or(total, |l| l.min(total)))
}

fn limit() -> &'static Limit {
    LIMIT.get_or_init(|| {
        let bytes = crate::config::parse_size(crate::config::DEFAULT_MAX_RESPONSE_BUFFER)
            .expect("the default --max-response-buffer parses") as usize;
        Limit::new(bytes, Duration::from_secs(10), false)
    })
}

impl Limit {
    fn new(bytes: usize, wait: Duration, shared: bool) -> Limit {
        let bytes = bytes.clamp(1, Semaphore::MAX_PERMITS);
        Limit {
            total: Arc::new(Semaphore::new(bytes)),
            bytes,
            per_app: if shared { (bytes / 2).max(1) } else { bytes },
            wait,
            apps: Mutex::new(HashMap::new()),
            holding: Mutex::new(Vec::new()),
        }
    }

    /// Make room for `need` bytes of `asker`'s: if `asker` holds less
    /// than an equal share (the buffer over the apps holding room, it
    /// included), cut the chunks of apps holding more than an equal share,
    /// and at least what `asker` will hold, whose clients, at the pace
    /// they have taken them so far, would take [`HOARDING`] times the
    /// wait or longer for the rest, slowest first, until `need` is freed
    /// or no app is over its share. Their clients read, or the stall
    /// watch would have cut them; but so slowly that, without this, two
    /// apps' slow clients could hold the whole buffer for as long as they
    /// take (16 KiB/s: 17 minutes for a 16 MiB chunk), and every other
    /// app's large responses get 503.
    fn reclaim(&self, asker: &str, need: usize) {
        let mut holding = self.holding.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let mut held: HashMap<Arc<str>, usize> = HashMap::new();
        let mut weighed = Vec::new();
        holding.retain(|h| {
            let Some(chunk) = h.chunk.upgrade() else {
                return false;
            };
            let left = chunk.left();
            if left == 0 {
                return false;
            }
            *held.entry(h.app.clone()).or_default() += h.bytes;
            let elapsed = now.duration_since(h.since);
            let taken = h.len.saturating_sub(left);
            // Seconds the rest would take at the pace so far.
            let eta = if taken == 0 {
                f64::INFINITY
            } else {
                left as f64 * elapsed.as_secs_f64() / taken as f64
            };
            let hoarding = self.wait.as_secs_f64() * f64::from(HOARDING);
            if &*h.app != asker && elapsed >= PACE_SHOWN_AFTER && eta > hoarding {
                weighed.push((eta, h.app.clone(), h.bytes, taken, elapsed, chunk));
            }
            true
        });
        let apps = held.len() + usize::from(!held.contains_key(asker));
        let fair = self.bytes / apps.max(1);
        let mine = held.get(asker).copied().unwrap_or(0);
        if mine >= fair {
            return;
        }
        weighed.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut freed = 0;
        for (eta, app, bytes, taken, elapsed, chunk) in weighed {
            if freed >= need {
                break;
            }
            let app_held = held.get_mut(&app).expect("counted above");
            // Never a cut that leaves the asker holding more than the app
            // it cut: room would only change hands.
            if *app_held <= fair || *app_held < mine + need {
                continue;
            }
            let why =
                format!(
                "response cut short: its client took {taken} bytes of a large chunk in {:.1} s \
                 and would take {} more at that pace, while app {asker} waited for room in \
                 --max-response-buffer, of which this app held {} (more than an equal share \
                 of {} among {apps} apps)",
                elapsed.as_secs_f64(),
                if eta.is_finite() { format!("{eta:.0} s") } else { "forever".to_string() },
                size(*app_held),
                size(fair),
            );
            chunk.cut(why);
            *app_held -= bytes;
            freed += bytes;
        }
    }

    fn of_app(&self, app: &Arc<str>) -> Arc<Semaphore> {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        apps.entry(app.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_app)))
            .clone()
    }
}

/// A large chunk's room, given back when dropped (when hyper has taken
/// the chunk's last piece, or its stall watch dropped it).
pub struct Share {
    app: Arc<str>,
    _app: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
    bytes: u32,
    held: Gauge,
}

impl Share {
    /// `chunk`, of `len` bytes, now holds this room while its client
    /// takes it: another app waiting for room may cut it
    /// ([`Limit::reclaim`]).
    pub fn taken_by(&self, chunk: Weak<dyn Reclaimable>, len: usize) {
        let limit = limit();
        // One app (`run`) never takes room back from itself.
        if limit.per_app == limit.bytes {
            return;
        }
        let mut holding = limit.holding.lock().unwrap_or_else(|e| e.into_inner());
        // Chunks taken whole leave their entries behind until a reclaim
        // looks; with no app ever short of room, none does.
        if holding.len() >= 64 && holding.len().is_power_of_two() {
            holding.retain(|h| h.chunk.strong_count() > 0);
        }
        holding.push(Holding {
            app: self.app.clone(),
            bytes: self.bytes as usize,
            len,
            since: Instant::now(),
            chunk,
        });
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.held.dec_by(i64::from(self.bytes));
    }
}

/// Why a chunk got no room.
pub enum Refused {
    /// None came within the wait: `true` if the app's own half was full.
    Full(bool),
    /// The client left while the chunk waited.
    ClientLeft,
}

/// Room for a chunk of `len` bytes of `app`'s response: `None` needed for
/// one of at most [`UNCOUNTED`]; waited for (the app's instance waits
/// with it, as for a slow client) until the limit's wait runs out or
/// `gone` (the client left) completes.
pub async fn take(
    app: &Arc<str>,
    len: usize,
    gone: impl Future<Output = ()>,
) -> Result<Option<Share>, Refused> {
    if len <= UNCOUNTED {
        return Ok(None);
    }
    let limit = limit();
    let own = limit.of_app(app);
    let bytes = u32::try_from(len.min(limit.per_app)).unwrap_or(u32::MAX);
    let both = async {
        let mine = own.clone().acquire_many_owned(bytes).await.ok()?;
        // Waiting in the semaphore's line all along, looking meanwhile
        // for room to take back from apps over their share.
        let mut total = std::pin::pin!(limit.total.clone().acquire_many_owned(bytes));
        if limit.total.available_permits() < bytes as usize {
            limit.reclaim(app, bytes as usize);
        }
        let total = loop {
            tokio::select! {
                got = &mut total => break got.ok()?,
                () = tokio::time::sleep(RECLAIM_EVERY) => limit.reclaim(app, bytes as usize),
            }
        };
        Some((mine, total))
    };
    let own_full = || own.available_permits() < bytes as usize;
    tokio::select! {
        got = tokio::time::timeout(limit.wait, both) => match got {
            Ok(Some((mine, total))) => {
                let held = crate::metrics::response_buffer(app);
                held.inc_by(i64::from(bytes));
                Ok(Some(Share { app: app.clone(), _app: mine, _total: total, bytes, held }))
            }
            _ => Err(Refused::Full(own_full())),
        },
        () = gone => Err(Refused::ClientLeft),
    }
}

/// `bytes` in MiB (with a decimal unless whole: a third of 8 MiB is not
/// "2 MiB"), or KiB below one MiB (the smallest buffer's half is 512 KiB,
/// which "0 MiB" misstated).
fn size(bytes: usize) -> String {
    if bytes < 1 << 20 {
        format!("{} KiB", bytes >> 10)
    } else if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    }
}

/// What to log (and say) of a chunk refused for [`Refused::Full`].
pub fn full(own: bool) -> String {
    let limit = limit();
    if own && limit.per_app < limit.bytes {
        format!(
            "this app's responses waiting for their clients held all {} one app may hold \
             (half of --max-response-buffer) for {:?}: clients that do not read (or read \
             slowly) its large responses; send those in smaller chunks or with \
             wsgi.file_wrapper, or raise the limit",
            size(limit.per_app),
            limit.wait
        )
    } else {
        format!(
            "responses waiting for their clients held all {} of --max-response-buffer for \
             {:?} (rsgi_wasm_response_buffer_bytes says which apps'): clients that do not read, \
             or raise the limit",
            size(limit.bytes),
            limit.wait
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A chunk with `left` bytes still to go.
    struct Chunk {
        left: AtomicUsize,
        why: Mutex<Option<String>>,
    }

    impl Reclaimable for Chunk {
        fn left(&self) -> usize {
            self.left.load(Ordering::Relaxed)
        }
        fn cut(&self, why: String) {
            self.left.store(0, Ordering::Relaxed);
            *self.why.lock().unwrap() = Some(why);
        }
    }

    /// Hold a chunk of `len` bytes for `app`, of which `taken` went out
    /// over the last `secs` seconds.
    fn hold(limit: &Limit, app: &str, len: usize, taken: usize, secs: u64) -> Arc<Chunk> {
        let chunk = Arc::new(Chunk {
            left: AtomicUsize::new(len - taken),
            why: Mutex::new(None),
        });
        let weak: Weak<dyn Reclaimable> = Arc::downgrade(&chunk) as _;
        limit.holding.lock().unwrap().push(Holding {
            app: app.into(),
            bytes: len,
            len,
            since: Instant::now() - Duration::from_secs(secs),
            chunk: weak,
        });
        chunk
    }

    fn cut(chunk: &Chunk) -> bool {
        chunk.why.lock().unwrap().is_some()
    }

    #[test]
    fn room_is_taken_back_from_the_slowest_chunks_of_apps_over_an_equal_share() {
        let limit = Limit::new(90, Duration::from_secs(10), true);
        // a holds 60 (over its equal share of 30 among a, b and c): a
        // chunk read fast, one slowly (the rest in 190 s, past six times
        // the 10 s wait), one not at all.
        let fast = hold(&limit, "a", 20, 15, 2);
        let slow = hold(&limit, "a", 20, 1, 10);
        let stuck = hold(&limit, "a", 20, 0, 2);
        // b holds 20, under its share, and is not touched however slow.
        let b = hold(&limit, "b", 20, 0, 2);
        limit.reclaim("c", 20);
        assert!(cut(&stuck) && !cut(&slow) && !cut(&fast) && !cut(&b));
        limit.reclaim("c", 40);
        // a is down to 40; its slow chunk goes next, never its fast one.
        assert!(cut(&slow) && !cut(&fast) && !cut(&b));
        // An app never takes back from itself; and one holding its equal
        // share already takes nothing.
        limit.reclaim("a", 20);
        limit.reclaim("b", 20);
        assert!(!cut(&fast) && !cut(&b));
    }

    /// Three apps' ordinary slow clients wanting more than the buffer:
    /// room taken back from one would be taken back again by the next
    /// (round DF: 95 of 99 responses cut), so none is.
    #[test]
    fn room_is_not_taken_back_to_change_hands_or_from_readers_that_keep_pace() {
        let limit = Limit::new(90, Duration::from_secs(10), true);
        // a holds 40, over its share of 30, but c (20) asking 30 more
        // would then hold 50, more than a had.
        let a1 = hold(&limit, "a", 20, 0, 2);
        let a2 = hold(&limit, "a", 20, 0, 2);
        let b = hold(&limit, "b", 10, 0, 2);
        let c = hold(&limit, "c", 20, 0, 2);
        limit.reclaim("c", 30);
        assert!(!cut(&a1) && !cut(&a2) && !cut(&b) && !cut(&c));
        // d, holding nothing, may take back what a's stuck clients hold;
        // not from a client that takes its rest within six times the wait.
        let brisk = hold(&limit, "a", 20, 5, 10);
        limit.reclaim("d", 20);
        assert!(!cut(&brisk) && [&a1, &a2].iter().filter(|c| cut(c)).count() == 1);
    }

    #[test]
    fn a_chunk_held_too_briefly_to_show_its_pace_is_not_cut() {
        let limit = Limit::new(90, Duration::from_secs(10), true);
        let young = hold(&limit, "a", 80, 0, 0);
        limit.reclaim("c", 20);
        assert!(!cut(&young));
        // Chunks gone or fully taken are forgotten.
        drop(young);
        limit.reclaim("c", 20);
        assert!(limit.holding.lock().unwrap().is_empty());
    }
}
