//! Lock directories whose maker is gone are broken. SQLite in CPython for
//! WASI locks a database by making the directory `NAME.lock` (its dotfile
//! locking: WASI has no POSIX locks) and removing it at the end of the
//! transaction; an instance ended meanwhile (a timeout, a trap, the end of
//! `--grace`, a killed process) left it behind, and every later
//! transaction, in any process, found the database locked for good. The
//! host now holds a `flock` on each lock directory an instance makes, for as
//! long as it exists; one found in the way whose `flock` can be taken (its
//! maker's descriptor closed with the instance or the process) is removed,
//! and made again for the instance asking.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::time::Duration;

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt, OpenOptionsMaybeDirExt};
use cap_std::fs::{Dir, MetadataExt, OpenOptions};
use rustix::fs::{flock, FlockOperation};

/// A lock directory younger than this is never taken as left behind: its
/// maker may be between its `mkdir` and the `flock` that follows it.
const SETTLED: Duration = Duration::from_secs(1);

/// Whether a directory named `path` is taken for a lock directory.
pub fn is_lock_name(path: &str) -> bool {
    let name = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    name.len() > ".lock".len() && name.ends_with(".lock")
}

/// The lock directories one instance made and has not removed, each open
/// and `flock`ed, with `G` (its count among the app's open files: each is
/// a host descriptor, and an app making them by the thousand would
/// otherwise use up the process's): dropped with the instance, which
/// releases them.
pub struct Held<G>(HashMap<(u64, u64), (std::fs::File, G)>);

impl<G> Default for Held<G> {
    fn default() -> Self {
        Held(HashMap::new())
    }
}

impl<G> Held<G> {
    /// `path` under `dir` was just made: hold it, with `slot`.
    pub fn made(&mut self, dir: &Dir, path: &str, slot: G) {
        let Some(file) = open_for_lock(dir, path) else {
            return;
        };
        if flock(file.as_fd(), FlockOperation::NonBlockingLockExclusive).is_err() {
            return;
        }
        if let Ok(meta) = file.metadata() {
            use std::os::unix::fs::MetadataExt as _;
            self.0.insert((meta.dev(), meta.ino()), (file, slot));
        }
    }

    /// The directory `key` was removed: let it go.
    pub fn removed(&mut self, key: (u64, u64)) {
        self.0.remove(&key);
    }
}

/// Which held directory `path` under `dir` is, asked before it is removed.
pub fn key_of(dir: &Dir, path: &str) -> Option<(u64, u64)> {
    let meta = dir.symlink_metadata(path).ok()?;
    Some((meta.dev(), meta.ino()))
}

/// The directory `path` under `dir`, opened for reading (not `O_PATH`,
/// which `flock` refuses), a final symlink not followed.
fn open_for_lock(dir: &Dir, path: &str) -> Option<std::fs::File> {
    let mut options = OpenOptions::new();
    options
        .read(true)
        .maybe_dir(true)
        .follow(FollowSymlinks::No);
    let file = dir.open_with(path, &options).ok()?.into_std();
    file.metadata().ok()?.is_dir().then_some(file)
}

/// Remove the lock directory `path` under `dir` if its maker is gone (no
/// one holds its `flock`, and it is older than [`SETTLED`]); true if it
/// was removed, so the `mkdir` that found it can be tried again.
pub fn break_if_left(dir: &Dir, path: &str) -> bool {
    let Ok(meta) = dir.symlink_metadata(path) else {
        return false;
    };
    let settled = meta
        .modified()
        .ok()
        .and_then(|m| m.into_std().elapsed().ok())
        .is_some_and(|age| age >= SETTLED);
    if !meta.is_dir() || !settled {
        return false;
    }
    let Some(file) = open_for_lock(dir, path) else {
        return false;
    };
    if flock(file.as_fd(), FlockOperation::NonBlockingLockExclusive).is_err() {
        return false;
    }
    // Held while it is removed, so no one else takes it for left behind
    // meanwhile; `remove_dir` fails on one with files in it, which is not
    // a lock of this kind.
    let removed = dir.remove_dir(path).is_ok();
    if removed {
        tracing::warn!(
            "removed the lock directory {path}, left behind by an instance that ended while holding it (a database transaction cut short: SQLite rolls it back)"
        );
    }
    drop(file);
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_left_by_a_holder_that_is_gone_is_broken_and_a_held_one_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority()).unwrap();
        assert!(is_lock_name("db/t.db.lock") && is_lock_name("t.db.lock/"));
        assert!(!is_lock_name(".lock") && !is_lock_name("t.db"));

        // Made and held by an instance: never broken, however old.
        dir.create_dir("held.db.lock").unwrap();
        let mut held = Held::default();
        held.made(&dir, "held.db.lock", ());
        let old = std::time::SystemTime::now() - Duration::from_secs(60);
        let age = |name: &str| {
            let f = std::fs::File::open(tmp.path().join(name)).unwrap();
            f.set_modified(old).unwrap();
        };
        age("held.db.lock");
        assert!(!break_if_left(&dir, "held.db.lock"));
        // Its instance ended (dropped what it held): broken.
        drop(held);
        assert!(break_if_left(&dir, "held.db.lock"));
        assert!(!tmp.path().join("held.db.lock").exists());

        // A fresh one may be between its mkdir and its flock: kept.
        dir.create_dir("fresh.db.lock").unwrap();
        assert!(!break_if_left(&dir, "fresh.db.lock"));
        // One with files in it is not a lock of this kind.
        dir.create_dir("full.lock").unwrap();
        std::fs::write(tmp.path().join("full.lock/x"), b"x").unwrap();
        age("full.lock");
        assert!(!break_if_left(&dir, "full.lock"));

        // Removed by its maker: let go.
        let mut held = Held::default();
        dir.create_dir("t.db.lock").unwrap();
        held.made(&dir, "t.db.lock", ());
        let key = key_of(&dir, "t.db.lock").unwrap();
        dir.remove_dir("t.db.lock").unwrap();
        held.removed(key);
        assert!(held.0.is_empty());
    }
}
