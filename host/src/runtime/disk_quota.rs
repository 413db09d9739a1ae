//! Disk quotas: what one app may store in a directory tree, charged in 4 KiB
//! blocks as files and directories are created or grow, and credited when
//! they shrink or their last link and last open handle are gone.
//!
//! The charge is decided *before* the host writes, so a write past the quota
//! never reaches the disk: the guest sees `ENOSPC` instead. Sizes are
//! apparent sizes (a sparse file costs what it could grow to), so nothing a
//! guest can do stores more than it was charged for.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The unit of charge; every file, directory and symlink costs at least one.
pub const BLOCK: u64 = 4096;

/// What a file of `size` bytes is charged.
pub fn blocks(size: u64) -> u64 {
    size.div_ceil(BLOCK).max(1).saturating_mul(BLOCK)
}

/// A file's identity on the host: device and inode.
pub type FileId = (u64, u64);

/// The quota would be exceeded: the guest gets `ENOSPC`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("disk quota exceeded")]
pub struct Full;

/// A limit shared by one or more trees (all the per-request /tmp
/// directories of one app draw on one budget).
#[derive(Debug)]
pub struct Budget {
    /// Atomic: a reload of the app may change it (see `Ledger::of_grant`).
    limit: AtomicU64,
    used: AtomicU64,
    /// Whose, for the log line a refusal writes, and the tenant's
    /// counter of refusals (none: silent).
    owner: Option<Owner>,
    /// When a refusal was last logged.
    warned: WarnEvery,
}

/// Lets a warning through at most once a minute ([`WARN_EVERY_MS`]): a
/// guest retrying a refused write or open in a loop must not flood the log.
#[derive(Debug, Default)]
pub struct WarnEvery {
    /// When one was last let through (ms since the Unix epoch; 0: never).
    at: AtomicU64,
}

impl WarnEvery {
    /// Whether a warning may be logged now (and then not for a minute).
    pub fn due(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let last = self.at.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= WARN_EVERY_MS;
        due && self
            .at
            .compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }
}

/// The app a budget belongs to, and which of its directories.
#[derive(Debug)]
struct Owner {
    app: String,
    /// The guest path, like `/tmp`.
    place: String,
    refusals: prometheus_client::metrics::counter::Counter,
}

/// At most one refusal logged per budget in this many milliseconds: a
/// guest retrying a write in a loop must not flood the log.
const WARN_EVERY_MS: u64 = 60_000;

impl Budget {
    /// A budget of `limit` bytes, nothing used, whose refusals are silent.
    #[cfg(test)]
    pub fn new(limit: u64) -> Arc<Self> {
        Self::make(limit, None)
    }

    /// A budget of app `app`'s directory `place` (like `/tmp`), whose
    /// refusals are counted in the app's metrics and logged at most once
    /// a minute.
    pub fn of_app(limit: u64, app: &str, place: &str) -> Arc<Self> {
        Self::make(
            limit,
            Some(Owner {
                app: app.to_owned(),
                place: place.to_owned(),
                refusals: crate::metrics::quota_refusals(app),
            }),
        )
    }

    fn make(limit: u64, owner: Option<Owner>) -> Arc<Self> {
        Arc::new(Budget {
            limit: AtomicU64::new(limit),
            used: AtomicU64::new(0),
            owner,
            warned: WarnEvery::default(),
        })
    }

    fn refused(&self, n: u64) {
        let Some(owner) = &self.owner else {
            return;
        };
        owner.refusals.inc();
        if self.warned.due() {
            // What the guest sees: wasi-libc turns a failed write to an open
            // file into EIO; creating, extending or copying gets ENOSPC.
            let raise = if owner.place == "/tmp" {
                "raise it with --tmp-size (`tmp_size` in tenants.toml): frameworks spool uploads there"
            } else {
                "raise the grant's :quota=. The count is what the directory held when the app \
                 loaded plus what its instances wrote since: files removed by anything else \
                 count until the app loads again (a restart, or an edit of its config and SIGHUP)"
            };
            tracing::warn!(
                app = %owner.app,
                "{}: disk quota of {} bytes reached ({} used); a write of {n} bytes was refused, and the app sees an OSError (ENOSPC, or EIO writing to an open file); {raise} (logged at most once a minute)",
                owner.place,
                self.limit.load(Ordering::Relaxed),
                self.used()
            );
        }
    }

    /// Bytes charged now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, n: u64) -> Result<(), Full> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n)
                    .filter(|t| *t <= self.limit.load(Ordering::Relaxed))
            })
            .map(|_| ())
            .map_err(|_| {
                self.refused(n);
                Full
            })
    }

    /// Charge without a check: what a granted tree already holds.
    fn force(&self, n: u64) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }

    fn give(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
    }
}

/// The charges of one directory tree (one grant, or one /tmp), with the
/// files open in it, so a file deleted while open is credited only when its
/// last handle closes, as the disk frees it only then.
#[derive(Debug)]
pub struct Ledger {
    budget: Arc<Budget>,
    state: Mutex<State>,
    /// Held across "look, then change the namespace" so two instances of
    /// one app cannot race an unlink against a rename to be credited twice.
    namespace: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug, Default)]
struct State {
    /// Charged to the budget by this tree (given back when it goes).
    used: u64,
    open: HashMap<FileId, Open>,
}

#[derive(Debug)]
struct Open {
    size: u64,
    handles: u32,
    /// Its last link is gone; credit it when the last handle closes.
    orphan: bool,
    /// Writes charged and handed on but not known to be done, and the
    /// furthest end among them: a truncation meanwhile must not credit
    /// below it, since the write may still land after it.
    in_flight: u32,
    in_flight_end: u64,
}

/// A loaded app's quota'd grant: the app's name and the tree's root.
type LiveKey = (String, FileId);

/// App `app`'s key for the tree at `root`.
fn live_key(app: &str, root: &Path) -> std::io::Result<LiveKey> {
    let st = rustix::fs::stat(root)?;
    Ok((app.to_owned(), (st.st_dev, st.st_ino)))
}

/// The ledgers loads hold, by app and tree (see [`Ledger::of_grant`]).
static LIVE: Mutex<Vec<(LiveKey, std::sync::Weak<Ledger>)>> = Mutex::new(Vec::new());

impl Ledger {
    /// A ledger for a tree that already holds `existing` bytes (charged
    /// even past the limit: then only deleting frees room).
    pub fn new(budget: Arc<Budget>, existing: u64) -> Arc<Self> {
        budget.force(existing);
        Arc::new(Ledger {
            budget,
            state: Mutex::new(State {
                used: existing,
                open: HashMap::new(),
            }),
            namespace: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// A ledger for the tree at `root`, charged for what it holds now.
    /// `long` is called once if the walk takes long (see [`tree_usage`]).
    pub fn for_tree(
        budget: Arc<Budget>,
        root: &Path,
        long: &mut dyn FnMut(),
    ) -> std::io::Result<Arc<Self>> {
        Ok(Self::new(budget, tree_usage(root, long)?))
    }

    /// The ledger of app `app`'s grant of `root` (seen at `place`) with a
    /// quota of `limit`: the one an earlier load of the same app still
    /// holds, if any, now with this quota (a reload's new version serves
    /// while the old one finishes its requests; each with a ledger of its
    /// own, counted apart, the two could fill the tree past either quota),
    /// else a new one charged for what the tree holds.
    pub fn of_grant(
        app: &str,
        place: &str,
        limit: u64,
        root: &Path,
        long: &mut dyn FnMut(),
    ) -> std::io::Result<Arc<Self>> {
        let key = live_key(app, root)?;
        let live = |live: &mut Vec<(LiveKey, std::sync::Weak<Ledger>)>| {
            live.retain(|(_, l)| l.strong_count() > 0);
            let ledger = live
                .iter()
                .find(|(k, _)| *k == key)
                .and_then(|(_, l)| l.upgrade())?;
            ledger.budget.limit.store(limit, Ordering::Relaxed);
            Some(ledger)
        };
        if let Some(ledger) = live(&mut LIVE.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(ledger);
        }
        // Walked unlocked: other apps' loads need not wait for this tree.
        let ledger = Self::for_tree(Budget::of_app(limit, app, place), root, long)?;
        let mut all = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(earlier) = live(&mut all) {
            return Ok(earlier);
        }
        all.push((key, Arc::downgrade(&ledger)));
        Ok(ledger)
    }

    /// Give app `app`'s live ledger of `root`, if a load holds one, the
    /// quota `limit` (a reload that changed it: the version still serving
    /// writes under the new quota from now on).
    pub fn requota(app: &str, root: &Path, limit: u64) {
        let Ok(key) = live_key(app, root) else {
            return;
        };
        let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        for (_, ledger) in live.iter().filter(|(k, _)| *k == key) {
            if let Some(ledger) = ledger.upgrade() {
                ledger.budget.limit.store(limit, Ordering::Relaxed);
            }
        }
    }

    /// Serialise namespace changes in this tree (see `namespace`).
    pub fn lock_namespace(
        &self,
    ) -> impl std::future::Future<Output = tokio::sync::OwnedMutexGuard<()>> + Send + 'static {
        self.namespace.clone().lock_owned()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain counters behind.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Charge `n` bytes for something about to be created.
    pub fn reserve(&self, n: u64) -> Result<(), Full> {
        let mut s = self.state();
        self.budget.take(n)?;
        s.used += n;
        Ok(())
    }

    /// Give back bytes charged by `reserve` or for something now gone.
    pub fn release(&self, n: u64) {
        let mut s = self.state();
        let n = n.min(s.used);
        s.used -= n;
        self.budget.give(n);
    }

    /// A handle on file `id` (a descriptor or a stream) was opened; `size`
    /// is its size now. `truncated_from`: the open truncated it, and this
    /// was its size before (credited the difference).
    pub fn open(self: &Arc<Self>, id: FileId, size: u64, truncated_from: Option<u64>) -> Handle {
        let mut s = self.state();
        let credit = match s.open.get_mut(&id) {
            Some(o) => {
                o.handles += 1;
                if truncated_from.is_some() {
                    let size = size.max(o.in_flight_end);
                    let was = std::mem::replace(&mut o.size, size);
                    blocks(was).saturating_sub(blocks(size))
                } else {
                    // Never below what is charged: a write charged by another
                    // instance may still be on its way to the disk.
                    o.size = o.size.max(size);
                    0
                }
            }
            None => {
                s.open.insert(
                    id,
                    Open {
                        size,
                        handles: 1,
                        orphan: false,
                        in_flight: 0,
                        in_flight_end: 0,
                    },
                );
                truncated_from.map_or(0, |b| blocks(b).saturating_sub(blocks(size)))
            }
        };
        let credit = credit.min(s.used);
        s.used -= credit;
        self.budget.give(credit);
        Handle {
            ledger: self.clone(),
            id,
        }
    }

    fn close(&self, id: FileId) {
        let mut s = self.state();
        let Some(o) = s.open.get_mut(&id) else {
            return;
        };
        o.handles -= 1;
        if o.handles > 0 {
            return;
        }
        let o = s.open.remove(&id).expect("entry checked above");
        if o.orphan {
            let n = blocks(o.size).min(s.used);
            s.used -= n;
            self.budget.give(n);
        }
    }

    /// The size of open file `id` as charged (where an append writes).
    pub fn size(&self, id: FileId) -> u64 {
        self.state().open.get(&id).map_or(0, |o| o.size)
    }

    /// Open file `id` is about to be written up to byte `end` (or extended
    /// by `set-size`); give it back with [`Ledger::shrunk`] if that fails.
    pub fn grow(&self, id: FileId, end: u64) -> Result<(), Full> {
        let mut s = self.state();
        let Some(o) = s.open.get_mut(&id) else {
            return Ok(());
        };
        if end <= o.size {
            return Ok(());
        }
        let delta = blocks(end) - blocks(o.size);
        self.budget.take(delta)?;
        o.size = end;
        s.used += delta;
        Ok(())
    }

    /// Whether open file `id` could grow to `end` now (nothing charged).
    pub fn fits(&self, id: FileId, end: u64) -> bool {
        let s = self.state();
        let size = s.open.get(&id).map_or(0, |o| o.size);
        let delta = blocks(end).saturating_sub(blocks(size));
        self.budget.used().saturating_add(delta) <= self.budget.limit.load(Ordering::Relaxed)
    }

    /// A write up to `end` was handed on to the host and runs in the
    /// background until [`Ledger::write_done`].
    pub fn write_started(&self, id: FileId, end: u64) {
        if let Some(o) = self.state().open.get_mut(&id) {
            o.in_flight += 1;
            o.in_flight_end = o.in_flight_end.max(end);
        }
    }

    /// A write handed on by [`Ledger::write_started`] finished.
    pub fn write_done(&self, id: FileId) {
        if let Some(o) = self.state().open.get_mut(&id) {
            o.in_flight = o.in_flight.saturating_sub(1);
            if o.in_flight == 0 {
                o.in_flight_end = 0;
            }
        }
    }

    /// Open file `id` was truncated to `size` (call after the host did it):
    /// credit what it shrank by, never below a write still in flight.
    pub fn shrunk(&self, id: FileId, size: u64) {
        let mut s = self.state();
        let Some(o) = s.open.get_mut(&id) else {
            return;
        };
        let size = size.max(o.in_flight_end);
        if size >= o.size {
            return;
        }
        let n = blocks(o.size) - blocks(size);
        o.size = size;
        let n = n.min(s.used);
        s.used -= n;
        self.budget.give(n);
    }

    /// A name was removed (unlink, rmdir, or replaced by a rename). `last`:
    /// it was the object's last link, so its space is freed now, or when
    /// its last open handle closes.
    pub fn removed(&self, id: FileId, size: u64, last: bool) {
        if !last {
            // One of several names: the block charged for the name.
            self.release(BLOCK);
            return;
        }
        let mut s = self.state();
        if let Some(o) = s.open.get_mut(&id) {
            o.orphan = true;
            return;
        }
        let n = blocks(size).min(s.used);
        s.used -= n;
        self.budget.give(n);
    }

    /// Bytes this tree is charged.
    pub fn used(&self) -> u64 {
        self.state().used
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        // The tree goes with its ledger (a per-request /tmp) or outlives the
        // app; either way its charge leaves the shared budget.
        let used = self.state().used;
        self.budget.give(used);
    }
}

/// One open handle on a file in a ledger's tree; closing is dropping.
#[derive(Debug)]
pub struct Handle {
    ledger: Arc<Ledger>,
    id: FileId,
}

impl Handle {
    /// The ledger this file is charged to.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// The file.
    pub fn id(&self) -> FileId {
        self.id
    }

    /// Another handle on the same file (a stream made from a descriptor).
    pub fn dup(&self) -> Handle {
        let mut s = self.ledger.state();
        if let Some(o) = s.open.get_mut(&self.id) {
            o.handles += 1;
        }
        Handle {
            ledger: self.ledger.clone(),
            id: self.id,
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.ledger.close(self.id);
    }
}

/// What a tree holds, charged as the ledger would: every file its blocks
/// (hard links once), every directory and symlink one block. Symlinks are
/// not followed.
///
/// The walk opens each directory from its parent's descriptor and climbs
/// back by `..` (checked to be the directory it came from), holding one
/// descriptor whatever the depth: a guest can nest directories past what
/// a path can name (`mkdir` relative to a `dir_fd`), and a walk by paths
/// left those uncounted, so each load of the app gave it a fresh quota.
/// A directory the server may not read is skipped with a warning: the
/// guest can neither add to it nor empty it, so what it holds is not
/// room the guest could free.
///
/// `long` is called once if the walk is still going after
/// [`LONG_WALK`]: a tree of a million small files takes seconds, and a
/// load gives up its place among the quick ones for that (as for
/// compiling), so other apps' loads need not wait for it.
pub fn tree_usage(root: &Path, long: &mut dyn FnMut()) -> std::io::Result<u64> {
    let mut tries = 0;
    let mut pace = Pace {
        since: std::time::Instant::now(),
        entries: 0,
        long: Some(long),
    };
    loop {
        match walk(root, &mut pace) {
            Err(Walk::Moved) if tries < 3 => tries += 1,
            Err(Walk::Moved) => {
                return Err(std::io::Error::other(format!(
                    "{}: directories kept moving while what it holds was counted for its quota",
                    root.display()
                )))
            }
            Err(Walk::Io(e)) => return Err(e),
            Ok(total) => return Ok(total),
        }
    }
}

/// How long a walk goes before it says it takes long: far longer than
/// a tree of a few thousand entries takes, far shorter than a load from
/// the cache may keep other apps' loads waiting.
pub const LONG_WALK: std::time::Duration = std::time::Duration::from_millis(20);

/// A walk's entries so far, and the call for when it takes long.
struct Pace<'a> {
    since: std::time::Instant,
    entries: u64,
    long: Option<&'a mut dyn FnMut()>,
}

impl Pace<'_> {
    /// One more entry; the clock is read every 256.
    fn entry(&mut self) {
        self.entries += 1;
        if self.entries.is_multiple_of(256) && self.since.elapsed() >= LONG_WALK {
            if let Some(long) = self.long.take() {
                long();
            }
        }
    }
}

/// Why a walk of a tree stopped.
enum Walk {
    /// A directory was moved while the walk was below it.
    Moved,
    Io(std::io::Error),
}

impl From<rustix::io::Errno> for Walk {
    fn from(e: rustix::io::Errno) -> Self {
        Walk::Io(e.into())
    }
}

/// One directory on the way down: its identity, and the subdirectories
/// still to visit.
struct Level {
    id: (u64, u64),
    below: Vec<std::ffi::CString>,
    name: std::ffi::CString,
}

fn walk(root: &Path, pace: &mut Pace) -> Result<u64, Walk> {
    use rustix::fs::{fstat, openat, Mode, OFlags, CWD};
    let down = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut total = 0u64;
    let mut seen = std::collections::HashSet::new();
    let mut here = openat(
        CWD,
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Walk::Io(e.into()))?;
    let below = list(&here, &mut total, &mut seen, pace).map_err(Walk::Io)?;
    let mut levels = vec![Level {
        id: file_id(&fstat(&here)?),
        below,
        name: std::ffi::CString::default(),
    }];
    while let Some(level) = levels.last_mut() {
        if let Some(name) = level.below.pop() {
            let dir = match openat(&here, name.as_c_str(), down, Mode::empty()) {
                Ok(dir) => dir,
                // Gone, or no longer a directory, since it was listed.
                Err(
                    rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP,
                ) => continue,
                Err(e) => {
                    skipped(root, &levels, &name, e.into());
                    continue;
                }
            };
            let below = match list(&dir, &mut total, &mut seen, pace) {
                Ok(below) => below,
                Err(e) => {
                    skipped(root, &levels, &name, e);
                    continue;
                }
            };
            levels.push(Level {
                id: file_id(&fstat(&dir)?),
                below,
                name,
            });
            here = dir;
        } else {
            levels.pop();
            let Some(parent) = levels.last() else { break };
            let up = openat(&here, c"..", down, Mode::empty())?;
            if file_id(&fstat(&up)?) != parent.id {
                return Err(Walk::Moved);
            }
            here = up;
        }
    }
    Ok(total)
}

/// A file's device and inode.
fn file_id(st: &rustix::fs::Stat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

/// Charge what the directory `dir` holds directly to `total`; its
/// subdirectories, to visit next.
fn list(
    dir: &rustix::fd::OwnedFd,
    total: &mut u64,
    seen: &mut std::collections::HashSet<(u64, u64)>,
    pace: &mut Pace,
) -> std::io::Result<Vec<std::ffi::CString>> {
    use rustix::fs::{statat, AtFlags, FileType};
    let mut below = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        pace.entry();
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let st = match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                *total = total.saturating_add(BLOCK);
                below.push(name.to_owned());
            }
            FileType::RegularFile => {
                // A further name of a file costs a block, as `link-at` does.
                if st.st_nlink > 1 && !seen.insert(file_id(&st)) {
                    *total = total.saturating_add(BLOCK);
                } else {
                    *total = total.saturating_add(blocks(st.st_size as u64));
                }
            }
            _ => *total = total.saturating_add(BLOCK),
        }
    }
    Ok(below)
}

/// Warn that the directory `name` under `levels` was not counted.
fn skipped(root: &Path, levels: &[Level], name: &std::ffi::CStr, e: std::io::Error) {
    // Deeper down, by its parent's name and its depth: the whole path may
    // be far longer than a log line should be.
    let name = name.to_string_lossy();
    let at = match levels {
        [_] => format!("{}/{name}", root.display()),
        [.., parent] => format!(
            "{}/.../{}/{name} ({} levels down)",
            root.display(),
            parent.name.to_string_lossy(),
            levels.len()
        ),
        [] => root.display().to_string(),
    };
    tracing::warn!("not counting {at} for its quota: {e}");
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: FileId = (1, 1);

    /// A grant of 60,000 files takes far longer than [`LONG_WALK`] to
    /// walk (about 100 ms on this machine, 2 s from a cold disk), and says
    /// so once, counting on: its load gives up its quick place then.
    #[test]
    fn a_long_walk_says_so_once() {
        let dir = tempfile::tempdir().unwrap();
        for d in 0..60 {
            let sub = dir.path().join(d.to_string());
            std::fs::create_dir(&sub).unwrap();
            for f in 0..1000 {
                std::fs::File::create(sub.join(f.to_string())).unwrap();
            }
        }
        let mut long = 0;
        let used = tree_usage(dir.path(), &mut || long += 1).unwrap();
        assert_eq!((used, long), (60_060 * BLOCK, 1));
    }

    #[test]
    fn writes_are_charged_in_blocks_up_to_the_limit() {
        let budget = Budget::new(4 * BLOCK);
        let l = Ledger::new(budget.clone(), 0);
        l.reserve(BLOCK).unwrap();
        let h = l.open(F, 0, None);
        l.grow(F, 10).unwrap();
        assert_eq!(budget.used(), BLOCK);
        l.grow(F, 3 * BLOCK + 1).unwrap();
        assert_eq!(budget.used(), 4 * BLOCK);
        assert_eq!(l.grow(F, 4 * BLOCK + 1), Err(Full));
        // A refused write charges nothing and leaves the size alone.
        assert_eq!(l.size(F), 3 * BLOCK + 1);
        drop(h);
        assert_eq!(budget.used(), 4 * BLOCK);
    }

    #[test]
    fn a_file_deleted_while_open_is_credited_at_its_last_close() {
        let budget = Budget::new(1 << 20);
        let l = Ledger::new(budget.clone(), 0);
        l.reserve(BLOCK).unwrap();
        let h = l.open(F, 0, None);
        l.grow(F, 100_000).unwrap();
        let stream = h.dup();
        l.removed(F, 100_000, true);
        drop(h);
        assert_eq!(budget.used(), blocks(100_000));
        drop(stream);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn truncation_and_unlink_give_space_back() {
        let budget = Budget::new(1 << 20);
        let l = Ledger::new(budget.clone(), 0);
        l.reserve(BLOCK).unwrap();
        let h = l.open(F, 0, None);
        l.grow(F, 50_000).unwrap();
        // A write still on its way keeps its charge through a truncation.
        l.write_started(F, 50_000);
        l.shrunk(F, 10);
        assert_eq!(budget.used(), blocks(50_000));
        l.write_done(F);
        l.shrunk(F, 10);
        assert_eq!(budget.used(), BLOCK);
        drop(h);
        // Reopened with O_TRUNC after growing elsewhere: credited.
        let h = l.open(F, 0, Some(0));
        l.grow(F, 20_000).unwrap();
        drop(h);
        let h = l.open(F, 0, Some(20_000));
        assert_eq!(budget.used(), BLOCK);
        drop(h);
        l.removed(F, 0, true);
        assert_eq!(budget.used(), 0);
        // A name that was not the last link frees only its own block.
        l.reserve(2 * BLOCK).unwrap();
        l.removed(F, 100_000, false);
        assert_eq!(budget.used(), BLOCK);
    }

    #[test]
    fn trees_sharing_a_budget_give_it_back_when_they_go() {
        let budget = Budget::new(3 * BLOCK);
        let a = Ledger::new(budget.clone(), 0);
        let b = Ledger::new(budget.clone(), 0);
        a.reserve(2 * BLOCK).unwrap();
        assert_eq!(b.reserve(2 * BLOCK), Err(Full));
        drop(a);
        b.reserve(2 * BLOCK).unwrap();
        assert_eq!(budget.used(), 2 * BLOCK);
    }

    #[test]
    fn a_tree_is_charged_for_what_it_already_holds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![0u8; 5000]).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/b"), b"").unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("d/a2")).unwrap();
        // a: 2 blocks, d: 1, d/b: 1, d/a2: a second name, 1.
        // A walk this short never says it takes long.
        let mut long = 0;
        assert_eq!(
            tree_usage(dir.path(), &mut || long += 1).unwrap(),
            5 * BLOCK
        );
        assert_eq!(long, 0);
        let budget = Budget::new(5 * BLOCK);
        let l = Ledger::for_tree(budget.clone(), dir.path(), &mut || {}).unwrap();
        assert_eq!(l.used(), 5 * BLOCK);
        assert_eq!(l.reserve(1), Err(Full));
    }

    #[test]
    fn a_reload_shares_the_ledger_of_the_load_still_serving() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![0u8; 5000]).unwrap();
        let first = Ledger::of_grant("t", "/data", 1 << 20, dir.path(), &mut || {}).unwrap();
        let again = Ledger::of_grant("t", "/data", 1 << 20, dir.path(), &mut || {}).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        again.reserve(BLOCK).unwrap();
        assert_eq!(first.used(), 3 * BLOCK);
        // Another app counts on its own.
        let other = Ledger::of_grant("u", "/data", 1 << 20, dir.path(), &mut || {}).unwrap();
        assert!(!Arc::ptr_eq(&first, &other));
        // A reload that changes the quota changes it for both versions.
        let smaller = Ledger::of_grant("t", "/data", 3 * BLOCK, dir.path(), &mut || {}).unwrap();
        assert!(Arc::ptr_eq(&first, &smaller));
        assert_eq!(first.reserve(1), Err(Full));
        drop(smaller);
        // So does one told of it before the new version loads.
        Ledger::requota("t", dir.path(), 1 << 20);
        first.reserve(1).unwrap();
        // Once no load holds it, the next walks the tree again.
        drop((first, again));
        let fresh = Ledger::of_grant("t", "/data", 1 << 20, dir.path(), &mut || {}).unwrap();
        assert_eq!(fresh.used(), 2 * BLOCK);
    }

    #[test]
    fn a_tree_deeper_than_a_path_can_name_is_charged_whole() {
        use rustix::fs::{mkdirat, openat, Mode, OFlags};
        let dir = tempfile::tempdir().unwrap();
        let name = "d".repeat(200);
        let mut here = openat(rustix::fs::CWD, dir.path(), OFlags::RDONLY, Mode::empty()).unwrap();
        // 100 levels of 201 bytes: 20 KB of path, five times PATH_MAX.
        for _ in 0..100 {
            mkdirat(&here, name.as_str(), Mode::from_raw_mode(0o755)).unwrap();
            here = openat(
                &here,
                name.as_str(),
                OFlags::RDONLY | OFlags::DIRECTORY,
                Mode::empty(),
            )
            .unwrap();
        }
        let file = openat(
            &here,
            "f",
            OFlags::WRONLY | OFlags::CREATE,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        rustix::fs::ftruncate(&file, 1 << 20).unwrap();
        // And a sibling tree beside the deep one, visited after it.
        std::fs::create_dir(dir.path().join("e")).unwrap();
        std::fs::write(dir.path().join("e/g"), b"x").unwrap();
        assert_eq!(
            tree_usage(dir.path(), &mut || {}).unwrap(),
            100 * BLOCK + blocks(1 << 20) + BLOCK + blocks(1)
        );
    }
}
