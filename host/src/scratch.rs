//! Scratch directories on the host (an app's or an instance's private
//! /tmp, a build's work) and their removal, however deep a guest nested
//! them, including those a killed process left behind.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context, Result};

/// Prefix of a process's directory under the host's temp dir.
const RUN_PREFIX: &str = "rsgi-wasm-run-";
/// The lock file in it, held for the process's whole life.
const LOCK: &str = ".lock";

/// This process's directory under the host's temp dir, holding every
/// private /tmp it makes. Its lock file stays locked while the process
/// lives, so a later process can tell a directory left by one that was
/// killed (SIGKILL, the OOM killer) and remove it; a lock, not a PID,
/// since processes in other PID namespaces may share the temp dir.
struct RunDir {
    path: PathBuf,
    _lock: std::fs::File,
}

static RUN: OnceLock<std::result::Result<RunDir, String>> = OnceLock::new();

fn run_dir() -> Result<&'static Path> {
    let run = RUN.get_or_init(|| {
        let run = new_run_dir().map_err(|e| format!("{e:#}"))?;
        let (tmp, ours) = (host_temp_dir(), run.path.clone());
        // Off the load path: what a killed process left may be large.
        // Without a thread to spare (a thread limit reached), the next
        // start sweeps instead.
        if let Err(e) = std::thread::Builder::new()
            .name("rsgi-wasm-sweep".into())
            .spawn(move || sweep(&tmp, &ours))
        {
            tracing::debug!("not sweeping the temp dir now: {e}");
        }
        Ok(run)
    });
    match run {
        Ok(run) => Ok(&run.path),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

/// `$TMPDIR`, or `/tmp` when it is unset or empty: the standard
/// library takes an empty one for the working directory.
fn host_temp_dir() -> PathBuf {
    match std::env::var_os("TMPDIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from("/tmp"),
    }
}

fn new_run_dir() -> Result<RunDir> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = host_temp_dir();
    // Only this user: on a shared host, other users must not read what
    // apps keep in their /tmp.
    let path = tempfile::Builder::new()
        .prefix(RUN_PREFIX)
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(&tmp)
        .with_context(|| {
            format!(
                "creating the apps' private /tmp directories under {} (set TMPDIR to a writable directory)",
                tmp.display()
            )
        })?
        .keep();
    // Locked under another name, then renamed: another server's `sweep`
    // sees no lock file (a process starting up) or a locked one, never an
    // unlocked one it would take for a dead server's and remove.
    let staging = path.join(".lock-new");
    let lock = std::fs::File::create(&staging)
        .and_then(|f| f.try_lock().map(|()| f).map_err(std::io::Error::other))
        .and_then(|f| std::fs::rename(&staging, path.join(LOCK)).map(|()| f))
        .with_context(|| format!("locking {}", path.join(LOCK).display()))?;
    Ok(RunDir { path, _lock: lock })
}

/// Remove the run directories under `tmp` whose process is gone (their
/// lock is free), except `ours`. One whose lock file is missing may be a
/// process starting up, so it is left alone.
fn sweep(tmp: &Path, ours: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let named = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(RUN_PREFIX));
        if !named || path == ours || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(lock) = std::fs::File::open(path.join(LOCK)) else {
            continue;
        };
        if lock.try_lock().is_err() {
            continue; // its process is alive
        }
        match remove_tree(&path) {
            Ok(()) => tracing::info!(
                "removed {}, left by a server that was killed",
                path.display()
            ),
            Err(e) => tracing::warn!(
                "could not remove {}, left by a server that was killed: {e}",
                path.display()
            ),
        }
    }
}

/// Make this process's run directory now, so a temp dir that cannot hold
/// it is an error at start.
pub fn prepare() -> Result<()> {
    run_dir().map(|_| ())
}

/// Remove this process's run directory as it exits, when every private
/// /tmp in it is gone already; otherwise the next process sweeps it.
pub fn finish() {
    let Some(Ok(run)) = RUN.get() else { return };
    let only_the_lock = std::fs::read_dir(&run.path)
        .map(|entries| entries.flatten().all(|e| e.file_name() == LOCK))
        .unwrap_or(false);
    if only_the_lock {
        let _ = std::fs::remove_file(run.path.join(LOCK));
        let _ = std::fs::remove_dir(&run.path);
    }
}

/// Remove this process's run directory and everything in it, for an exit
/// that runs no destructors (`exec` ended by a signal).
pub fn abandon() {
    if let Some(Ok(run)) = RUN.get() {
        let _ = remove_tree(&run.path);
    }
}

/// A new private /tmp for `app` on the host.
pub fn scratch_dir(app: &str) -> Result<ScratchDir> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("{app}-tmp-"))
        .tempdir_in(run_dir()?)
        .context("creating the app's private /tmp")?;
    Ok(ScratchDir {
        path: dir.keep(),
        bin: None,
    })
}

/// A build's work directory, named `{prefix}...`, in this process's run
/// directory: removed when dropped, and by the next process's sweep if
/// this one is killed first (a build's scratch holds tens of megabytes).
pub fn work_dir(prefix: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(run_dir()?)
        .context("creating a scratch directory for the build (set TMPDIR to a writable one)")
}

/// An app's or instance's private /tmp on the host, removed with it (or,
/// emptied, kept in its [`ScratchBin`] for another instance).
pub struct ScratchDir {
    path: PathBuf,
    bin: Option<Arc<ScratchBin>>,
}

impl ScratchDir {
    /// Where it is on the host.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // Handed on (`into_path`).
        if self.path.as_os_str().is_empty() {
            return;
        }
        if let Some(bin) = &self.bin {
            if empty_tree(&self.path).is_ok() {
                let mut free = bin.free.lock().unwrap_or_else(|e| e.into_inner());
                if free.len() < BIN_KEEPS {
                    free.push(std::mem::take(&mut self.path));
                    return;
                }
            }
        }
        if let Err(e) = remove_tree(&self.path) {
            tracing::warn!("could not remove {}: {e}", self.path.display());
        }
    }
}

/// How many emptied directories a bin keeps: about as many as an app has
/// instances at once.
const BIN_KEEPS: usize = 8;

/// One app's per-instance private /tmp directories (request isolation):
/// each instance's is emptied when it ends and handed to a later one, so
/// a fresh instance does not make and remove a directory on the host
/// (about 5% of a hello request's CPU under `--isolation request`).
/// What the last instance left is gone; only the directory's own times
/// carry over, and only within the app.
pub struct ScratchBin {
    app: String,
    free: Mutex<Vec<PathBuf>>,
}

impl ScratchBin {
    /// An empty bin for `app`'s directories.
    pub fn new(app: &str) -> Arc<Self> {
        Arc::new(ScratchBin {
            app: app.to_owned(),
            free: Mutex::new(Vec::new()),
        })
    }

    /// An empty private /tmp: one an earlier instance left, or a new one.
    pub fn take(self: &Arc<Self>) -> Result<ScratchDir> {
        let kept = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let path = match kept {
            Some(path) => path,
            None => scratch_dir(&self.app)?.into_path(),
        };
        Ok(ScratchDir {
            path,
            bin: Some(self.clone()),
        })
    }
}

impl Drop for ScratchBin {
    fn drop(&mut self) {
        for path in self
            .free
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            if let Err(e) = remove_tree(&path) {
                tracing::warn!("could not remove {}: {e}", path.display());
            }
        }
    }
}

impl ScratchDir {
    /// The directory, no longer removed when this is dropped.
    fn into_path(mut self) -> PathBuf {
        std::mem::take(&mut self.path)
    }
}

/// Remove `root` and all under it without recursion, two directories open
/// at most. A guest can nest directories as deep as its quota pays for
/// (16,384 levels in 64 MiB): deeper than a recursive removal's stack and
/// descriptors allow, and too long for paths. So each pass removes what it
/// can at the top and lifts the entries of non-empty directories up to the
/// top, until nothing is left.
fn remove_tree(root: &Path) -> std::io::Result<()> {
    empty_tree(root)?;
    std::fs::remove_dir(root)
}

/// Remove all under `root`, keeping `root`, as [`remove_tree`] does.
fn empty_tree(root: &Path) -> std::io::Result<()> {
    let mut n = 0u64;
    loop {
        let (mut left, mut progress) = (false, false);
        for entry in std::fs::read_dir(root)? {
            let entry = entry?;
            left = true;
            let path = entry.path();
            if !entry.file_type()?.is_dir() {
                std::fs::remove_file(&path)?;
                progress = true;
                continue;
            }
            if std::fs::remove_dir(&path).is_ok() {
                progress = true;
                continue;
            }
            for child in std::fs::read_dir(&path)? {
                let child = child?;
                let to = loop {
                    n += 1;
                    let to = root.join(format!(".rsgi-wasm-rm-{n}"));
                    if std::fs::symlink_metadata(&to).is_err() {
                        break to;
                    }
                };
                std::fs::rename(child.path(), to)?;
                progress = true;
            }
        }
        if !left {
            return Ok(());
        }
        if !progress {
            return Err(std::io::Error::other("entries that cannot be removed"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_deeper_than_a_path_can_name_is_removed() {
        let root = tempfile::tempdir().unwrap().keep();
        // 20,000 levels of 40-byte names: 820 KB of path, far past
        // PATH_MAX, and deeper than a recursive removal gets on this test
        // thread's 2 MiB stack (as on tokio's blocking threads).
        let name = "d".repeat(40);
        let mut dir = std::fs::File::open(&root).unwrap();
        for i in 0..20_000 {
            use std::os::fd::AsFd;
            rustix::fs::mkdirat(dir.as_fd(), name.as_str(), rustix::fs::Mode::RWXU).unwrap();
            let fd = rustix::fs::openat(
                dir.as_fd(),
                name.as_str(),
                rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY,
                rustix::fs::Mode::empty(),
            )
            .unwrap();
            if i % 100 == 0 {
                let f = rustix::fs::openat(
                    &fd,
                    "f",
                    rustix::fs::OFlags::CREATE | rustix::fs::OFlags::WRONLY,
                    rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
                )
                .unwrap();
                drop(f);
            }
            dir = std::fs::File::from(fd);
        }
        drop(ScratchDir {
            path: root.clone(),
            bin: None,
        });
        assert!(!root.exists());
    }

    #[test]
    fn an_instance_s_tmp_is_emptied_and_handed_on() {
        let bin = ScratchBin::new("unit");
        let first = bin.take().unwrap();
        let path = first.path().to_owned();
        std::fs::create_dir_all(path.join("a/b")).unwrap();
        std::fs::write(path.join("a/b/f"), b"left").unwrap();
        std::fs::write(path.join("g"), b"left").unwrap();
        drop(first);
        // Emptied and kept, then handed to the next instance.
        assert!(path.is_dir());
        let second = bin.take().unwrap();
        assert_eq!(second.path(), path);
        assert_eq!(std::fs::read_dir(&path).unwrap().count(), 0);
        // Taken while the other is in use: a new one.
        let third = bin.take().unwrap();
        assert_ne!(third.path(), path);
        let other = third.path().to_owned();
        drop((second, third));
        // The bin's directories go with it.
        drop(bin);
        assert!(!path.exists() && !other.exists());
        // At most BIN_KEEPS are kept; the rest are removed.
        let bin = ScratchBin::new("unit");
        let many: Vec<ScratchDir> = (0..BIN_KEEPS + 2).map(|_| bin.take().unwrap()).collect();
        let paths: Vec<PathBuf> = many.iter().map(|d| d.path().to_owned()).collect();
        drop(many);
        assert_eq!(paths.iter().filter(|p| p.exists()).count(), BIN_KEEPS);
        drop(bin);
        assert!(paths.iter().all(|p| !p.exists()));
    }

    #[test]
    fn a_run_directory_is_swept_only_once_its_process_is_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let make = |name: &str| {
            let dir = tmp.path().join(name);
            std::fs::create_dir_all(dir.join("app-tmp-x/deep")).unwrap();
            std::fs::write(dir.join("app-tmp-x/deep/f"), b"left").unwrap();
            dir
        };
        let live = make("rsgi-wasm-run-live");
        let held = std::fs::File::create(live.join(LOCK)).unwrap();
        held.try_lock().unwrap();
        let dead = make("rsgi-wasm-run-dead");
        std::fs::File::create(dead.join(LOCK)).unwrap();
        let starting = make("rsgi-wasm-run-starting");
        let ours = make("rsgi-wasm-run-ours");
        std::fs::File::create(ours.join(LOCK)).unwrap();
        let other = make("unrelated");
        std::fs::File::create(other.join(LOCK)).unwrap();
        sweep(tmp.path(), &ours);
        assert!(!dead.exists());
        for kept in [&live, &starting, &ours, &other] {
            assert!(kept.join("app-tmp-x/deep/f").exists(), "{}", kept.display());
        }
    }

    #[test]
    fn scratch_dirs_live_in_this_process_s_locked_run_directory() {
        let a = scratch_dir("a").unwrap();
        let run = a.path().parent().unwrap().to_owned();
        assert!(run
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(RUN_PREFIX));
        // Another process (here: another open file) cannot take its lock.
        let lock = std::fs::File::open(run.join(LOCK)).unwrap();
        assert!(lock.try_lock().is_err());
        let path = a.path().to_owned();
        drop(a);
        assert!(!path.exists() && run.exists());
    }
}
