//! The bound on large response chunks the host holds for clients still
//! taking them (`--max-response-buffer`). A response's own budget
//! (`body::BODY_BUDGET`) lets one chunk of any size through whole, and the
//! app that made it moves on: without this, clients that read slowly or
//! not at all made the host hold 16 MiB for each 16 MiB response they
//! asked for (1.7 GB on one HTTP/2 connection, round CW). Under `serve`
//! one app's responses may hold at most half of it, so slow clients of one
//! app's large responses cannot take the room every other app needs
//! (round CY: 16 connections reading 2.5 KB/s held all of it).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

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
}

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
    _app: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
    bytes: u32,
    held: Gauge,
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
        let total = limit.total.clone().acquire_many_owned(bytes).await.ok()?;
        Some((mine, total))
    };
    let own_full = || own.available_permits() < bytes as usize;
    tokio::select! {
        got = tokio::time::timeout(limit.wait, both) => match got {
            Ok(Some((mine, total))) => {
                let held = crate::metrics::response_buffer(app);
                held.inc_by(i64::from(bytes));
                Ok(Some(Share { _app: mine, _total: total, bytes, held }))
            }
            _ => Err(Refused::Full(own_full())),
        },
        () = gone => Err(Refused::ClientLeft),
    }
}

/// `bytes` in MiB, or KiB below one MiB (the smallest buffer's half is
/// 512 KiB, which "0 MiB" misstated).
fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
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
