//! `run --reload`: watch what an app is built from, rebuild it through the
//! build cache when a shipped file changes, and swap the new version in
//! while requests already running finish on the old one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use notify::{EventKind, RecursiveMode, Watcher};

use crate::build::deps::Source;
use crate::build::{self, BuildOptions, BuildReport};
use crate::bundle;
use crate::config::{absolute, DirGrant};

/// A burst of changes (an editor writing a temp file, then renaming it;
/// `git checkout` touching many files) ends when nothing changed for this
/// long; then the app is rebuilt once.
const QUIET: Duration = Duration::from_millis(300);

/// What to watch: the app's directories and its requirements or pyproject
/// file when it runs from source, else the component file.
pub struct Watched {
    /// Directories whose shipped files are the app.
    dirs: Vec<PathBuf>,
    /// Single files: requirements, pyproject, or the component.
    files: Vec<PathBuf>,
    /// Directories granted to the app (`--dir`): what it writes there is
    /// data, not a new version, even inside its own directory.
    data: Vec<PathBuf>,
    /// This process's stdout and stderr when they are files: a server
    /// logging into its app's directory must not reload at every line.
    own_output: Vec<(u64, u64)>,
}

impl Watched {
    /// What `opts` builds from, or `component` when there is nothing to
    /// build; never the `granted` directories.
    pub fn new(opts: Option<&BuildOptions>, component: &Path, granted: &[DirGrant]) -> Self {
        // As given (the watched directories are not resolved either, and
        // events name paths under them) and resolved.
        let data = granted
            .iter()
            .flat_map(|g| [Some(absolute(&g.host)), std::fs::canonicalize(&g.host).ok()])
            .flatten()
            .collect();
        use std::os::fd::AsFd;
        let own_output = [
            rustix::fs::fstat(std::io::stdout().as_fd()),
            rustix::fs::fstat(std::io::stderr().as_fd()),
        ]
        .into_iter()
        .filter_map(Result::ok)
        .filter(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_file())
        .map(|st| (st.st_dev, st.st_ino))
        .collect();
        let Some(opts) = opts else {
            return Watched {
                dirs: Vec::new(),
                files: vec![absolute(component)],
                data,
                own_output,
            };
        };
        let mut dirs: Vec<PathBuf> = opts.paths.iter().map(|p| absolute(p)).collect();
        if dirs.is_empty() {
            dirs.push(absolute(Path::new(".")));
        }
        let mut files = Vec::new();
        for source in &opts.deps {
            match source {
                Source::Requirements(f) | Source::Pyproject(f) => files.push(absolute(f)),
                Source::SitePackages(d) => dirs.push(absolute(d)),
            }
        }
        Watched {
            dirs,
            files,
            data,
            own_output,
        }
    }

    /// Whether a change at `path` can change the build.
    fn matters(&self, path: &Path) -> bool {
        if self.files.iter().any(|f| f == path) || self.is_root(path) {
            return true;
        }
        let shipped = self
            .dirs
            .iter()
            .any(|d| path.strip_prefix(d).is_ok_and(bundle::ships) && !in_unshipped_dir(d, path));
        shipped && !self.data.iter().any(|d| path.starts_with(d)) && !self.is_own_output(path)
    }

    /// Whether `path` is one of the watched directories itself.
    fn is_root(&self, path: &Path) -> bool {
        self.dirs.iter().any(|d| d == path)
    }

    fn is_own_output(&self, path: &Path) -> bool {
        !self.own_output.is_empty()
            && std::fs::metadata(path).is_ok_and(|m| {
                use std::os::unix::fs::MetadataExt;
                self.own_output.contains(&(m.dev(), m.ino()))
            })
    }
}

/// Whether `path` lies in a directory inside `root` that never ships (the
/// build's own cache there would otherwise trigger a build with every
/// write it makes; a virtualenv, at every package installed).
fn in_unshipped_dir(root: &Path, path: &Path) -> bool {
    path.ancestors()
        .skip(1)
        .take_while(|a| *a != root && a.starts_with(root))
        .any(|a| bundle::marked_unshipped(a).is_some())
}

/// Bursts of relevant changes, as they end.
pub struct Changes {
    /// Holds the watches; a watched directory replaced is watched again.
    watcher: notify::RecommendedWatcher,
    watched: Arc<Watched>,
    /// Set when a watched directory itself was created, removed or renamed.
    roots_moved: Arc<AtomicBool>,
    rx: tokio::sync::mpsc::UnboundedReceiver<()>,
}

impl Changes {
    /// Start watching.
    pub fn start(watched: Watched) -> Result<Self> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let filter = Arc::new(watched);
        let seen = filter.clone();
        let roots_moved = Arc::new(AtomicBool::new(false));
        let moved = roots_moved.clone();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(ev) if is_change(&ev.kind) && ev.paths.iter().any(|p| seen.matters(p)) => {
                    if ev.paths.iter().any(|p| seen.is_root(p)) {
                        moved.store(true, Ordering::Release);
                    }
                    let _ = tx.send(());
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("--reload: watching failed: {e}"),
            })
            .context("--reload: cannot watch files (inotify)")?;
        for dir in &filter.dirs {
            watcher
                .watch(dir, RecursiveMode::Recursive)
                .with_context(|| format!("--reload: cannot watch {}", dir.display()))?;
            // The directory's own removal, renaming or re-creation is seen
            // only from above it: a watch ends with the directory it was
            // put on, and `rm -rf app; git clone ... app` (or `mv`) left
            // the new one unwatched for good.
            if let Some(parent) = dir.parent() {
                if !filter.dirs.iter().any(|d| parent.starts_with(d)) {
                    let _ = watcher.watch(parent, RecursiveMode::NonRecursive);
                }
            }
        }
        for file in &filter.files {
            // The file's directory, not the file: editors and `rsgi-wasm
            // build -o` replace a file by renaming another over it, which
            // ends a watch on the old inode.
            let dir = file.parent().unwrap_or(Path::new("/"));
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .with_context(|| format!("--reload: cannot watch {}", dir.display()))?;
        }
        Ok(Changes {
            watcher,
            watched: filter,
            roots_moved,
            rx,
        })
    }

    /// Wait until a burst of changes has ended; false once watching stops.
    /// Changes made while the caller rebuilds are kept for the next call
    /// (a round whose build is unchanged costs only hashing the files).
    pub async fn next(&mut self) -> bool {
        if self.rx.recv().await.is_none() {
            return false;
        }
        while let Ok(Some(())) = tokio::time::timeout(QUIET, self.rx.recv()).await {}
        if self.roots_moved.swap(false, Ordering::AcqRel) {
            self.rewatch_roots();
        }
        true
    }

    /// Watch again each watched directory that was removed, renamed or
    /// made anew: whatever is at its path now.
    fn rewatch_roots(&mut self) {
        for dir in &self.watched.dirs {
            let _ = self.watcher.unwatch(dir);
            if !dir.is_dir() {
                tracing::warn!(
                    "--reload: {} is gone; the app is watched again once it is back",
                    dir.display()
                );
                continue;
            }
            match self.watcher.watch(dir, RecursiveMode::Recursive) {
                Ok(()) => tracing::info!(
                    "--reload: {} was replaced; watching it again",
                    dir.display()
                ),
                Err(e) => tracing::warn!("--reload: cannot watch {} again: {e}", dir.display()),
            }
        }
    }
}

fn is_change(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any
    )
}

/// Build `opts` on a thread of its own, so resolving, hashing and packing
/// the app's files never hold a thread that serves requests.
pub async fn rebuild(opts: BuildOptions) -> Result<BuildReport> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("rsgi-wasm-rebuild".into())
        .spawn(move || {
            let out = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the rebuild's runtime")
                .and_then(|rt| rt.block_on(build::build(&opts)));
            let _ = tx.send(out);
        })
        .context("starting the rebuild thread")?;
    rx.await.context("the rebuild panicked")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_directory_inside_the_app_does_not_matter() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let data = root.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let grant = DirGrant {
            host: data.clone(),
            guest: "/data".into(),
            read_only: false,
            quota: None,
        };
        let mut w = Watched::new(None, &root.join("x.wasm"), &[grant]);
        w.dirs = vec![root.clone()];
        w.files.clear();
        std::fs::create_dir_all(root.join("cache/modules")).unwrap();
        std::fs::write(root.join("cache").join(bundle::CACHE_TAG), "").unwrap();
        std::fs::create_dir_all(root.join("cache/files/x")).unwrap();
        assert!(!w.matters(&root.join("cache/files/x/app.py")));
        assert!(w.matters(&root.join("app.py")));
        assert!(w.matters(&root.join("pkg/app.py")));
        // A virtualenv, whatever its name, and a granted directory.
        std::fs::create_dir_all(root.join("env1/lib")).unwrap();
        std::fs::write(root.join("env1/pyvenv.cfg"), "home = /usr\n").unwrap();
        assert!(!w.matters(&root.join("env1/lib/x.py")));
        assert!(!w.matters(&data.join("notes.txt")));
        assert!(w.matters(&root.join("datum.txt")));
        // The watched directory itself is the app's, as packing has it.
        std::fs::write(root.join(bundle::CACHE_TAG), "").unwrap();
        assert!(w.matters(&root.join("app.py")));
    }

    #[test]
    fn only_shipped_files_and_named_inputs_matter() {
        let root = absolute(Path::new("/srv/app"));
        let w = Watched {
            dirs: vec![root.clone()],
            files: vec![absolute(Path::new("/srv/req.txt"))],
            data: Vec::new(),
            own_output: Vec::new(),
        };
        assert!(w.matters(&root.join("app.py")));
        assert!(w.matters(&root.join("templates/a.html")));
        assert!(!w.matters(&root.join("__pycache__/app.cpython-314.pyc")));
        assert!(!w.matters(&root.join("db.sqlite3")));
        assert!(!w.matters(&root.join("logs/server.log")));
        assert!(w.matters(Path::new("/srv/req.txt")));
        assert!(!w.matters(Path::new("/srv/other.txt")));
    }
}
