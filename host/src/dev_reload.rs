//! `run --reload`: watch what an app is built from, rebuild it through the
//! build cache when a shipped file changes, and swap the new version in
//! while requests already running finish on the old one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use notify::{EventKind, RecursiveMode, Watcher};

use crate::build::deps::Source;
use crate::build::{self, BuildOptions, BuildReport};
use crate::bundle;

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
}

impl Watched {
    /// What `opts` builds from, or `component` when there is nothing to build.
    pub fn new(opts: Option<&BuildOptions>, component: &Path) -> Self {
        let Some(opts) = opts else {
            return Watched {
                dirs: Vec::new(),
                files: vec![absolute(component)],
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
        Watched { dirs, files }
    }

    /// Whether a change at `path` can change the build.
    fn matters(&self, path: &Path) -> bool {
        if self.files.iter().any(|f| f == path) {
            return true;
        }
        self.dirs
            .iter()
            .any(|d| path.strip_prefix(d).is_ok_and(bundle::ships) && !in_cache_dir(d, path))
    }
}

/// Whether `path` lies in a cache directory inside `root` (the build's own
/// cache there would otherwise trigger a build with every write it makes).
fn in_cache_dir(root: &Path, path: &Path) -> bool {
    path.ancestors()
        .skip(1)
        .take_while(|a| *a != root && a.starts_with(root))
        .any(|a| a.join(bundle::CACHE_TAG).is_file())
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

/// Bursts of relevant changes, as they end.
pub struct Changes {
    /// Keeps the watches alive.
    _watcher: notify::RecommendedWatcher,
    rx: tokio::sync::mpsc::UnboundedReceiver<()>,
}

impl Changes {
    /// Start watching.
    pub fn start(watched: Watched) -> Result<Self> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let filter = std::sync::Arc::new(watched);
        let seen = filter.clone();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(ev) if is_change(&ev.kind) && ev.paths.iter().any(|p| seen.matters(p)) => {
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
            _watcher: watcher,
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
        true
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
        let w = Watched {
            dirs: vec![root.clone()],
            files: Vec::new(),
        };
        std::fs::create_dir_all(root.join("cache/modules")).unwrap();
        std::fs::write(root.join("cache").join(bundle::CACHE_TAG), "").unwrap();
        std::fs::create_dir_all(root.join("cache/files/x")).unwrap();
        assert!(!w.matters(&root.join("cache/files/x/app.py")));
        assert!(w.matters(&root.join("app.py")));
        assert!(w.matters(&root.join("pkg/app.py")));
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
        };
        assert!(w.matters(&root.join("app.py")));
        assert!(w.matters(&root.join("templates/a.html")));
        assert!(!w.matters(&root.join("__pycache__/app.cpython-314.pyc")));
        assert!(!w.matters(&root.join("db.sqlite3")));
        assert!(w.matters(Path::new("/srv/req.txt")));
        assert!(!w.matters(Path::new("/srv/other.txt")));
    }
}
