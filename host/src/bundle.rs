//! The app's own files inside its component: at build time the stdlib, the
//! app directories and site-packages are packed (tar + zstd) into a trailing
//! custom section; at run time they are unpacked once into the cache and
//! mounted read-only at the guest paths they had during pre-initialisation.
//!
//! Why: the snapshot holds only what was imported while building. Templates,
//! migrations, static assets, data files and modules a framework imports
//! lazily are read from these paths later, so the component stays
//! self-contained (ship one `.wasm`) while real apps run unchanged.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::cachefs;
use crate::error::UserError;
use crate::tree_counts::{self, Tally};

/// Name of the custom section holding the archive.
const SECTION: &str = "rsgi-wasm-files";
/// Ends the section so the archive is found from the end of the file
/// without parsing the component: `archive ‖ len (u64 LE) ‖ MAGIC`.
const MAGIC: &[u8; 16] = b"rsgi-wasm-files1";
const TRAILER: usize = 8 + MAGIC.len();

/// Directories never shipped: caches, VCS data, virtualenvs, dependencies
/// of other toolchains.
const SKIP_DIRS: &[&str] = &[
    "__pycache__",
    ".git",
    ".hg",
    ".svn",
    ".venv",
    "venv",
    "node_modules",
    ".tox",
    ".nox",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".idea",
    ".vscode",
];
/// Files never shipped: bytecode (CPython for WASI compiles its own),
/// built components (an output inside `-p .` would otherwise nest), logs
/// (a server's own log written into the app's directory would otherwise
/// make `--reload` rebuild at every line it logs), and live SQLite
/// databases (data belongs in a granted directory).
const SKIP_SUFFIXES: &[&str] = &[
    ".log",
    ".pyc",
    ".pyo",
    ".wasm",
    ".cwasm",
    ".sqlite3",
    ".sqlite",
    ".sqlite3-journal",
    ".sqlite3-wal",
    ".sqlite3-shm",
    ".sqlite-journal",
    ".sqlite-wal",
    ".sqlite-shm",
];
/// Of those, the ones whose skip is logged: a database is data someone
/// may have meant to ship; bytecode and components never are.
const SQLITE_SUFFIXES: &[&str] = &[".sqlite3", ".sqlite"];

/// One directory of the guest's file tree: `guest` (like `/1`) shows the
/// host directory `host`, read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Directory on the host (inside the cache).
    pub host: PathBuf,
    /// Absolute guest path.
    pub guest: String,
}

/// `files` with the app's own directories (guest `/1`, `/2`, ... in `-p`
/// order) replaced by `dirs` as they are on the host: `run --reload`'s live
/// builds import the app from there, so an edit is seen by the next
/// instance without a rebuild.
pub fn with_live_dirs(files: &Arc<[Mount]>, dirs: &[PathBuf]) -> Arc<[Mount]> {
    if dirs.is_empty() {
        return files.clone();
    }
    let live = |guest: &str| {
        let i: usize = guest.strip_prefix('/')?.parse().ok()?;
        dirs.get(i.checked_sub(1)?).cloned()
    };
    let mut out: Vec<Mount> = files
        .iter()
        .map(|m| Mount {
            host: live(&m.guest).unwrap_or_else(|| m.host.clone()),
            guest: m.guest.clone(),
        })
        .collect();
    // A directory that shipped no file at the build has no mount yet.
    for (i, dir) in dirs.iter().enumerate() {
        let guest = format!("/{}", i + 1);
        if !out.iter().any(|m| m.guest == guest) {
            out.push(Mount {
                host: dir.clone(),
                guest,
            });
        }
    }
    out.into()
}

/// Copies of a live build's directories, held: each has a shared lock on
/// `live/<hash>.lock` while this value lives, so [`prune_live`] (in this
/// process or another sharing the cache) leaves it alone.
#[derive(Debug, Default)]
pub struct Frozen {
    /// The copies, in the order of the directories they were made from.
    pub dirs: Vec<PathBuf>,
    _held: Vec<std::fs::File>,
}

/// A copy of each of `dirs`' shipped files as they are now, under
/// `cache/live/<content hash>` (made once per content): what a live
/// build's instances mount, so every instance of one version sees the same
/// files, even those started after a later edit.
pub fn freeze_dirs(dirs: &[PathBuf], cache: &Path) -> Result<Frozen> {
    let mut frozen = Frozen::default();
    for dir in dirs {
        let mut h = Sha256::new();
        hash_dir(&mut h, dir, Tree::App)?;
        let dest = cache
            .join("live")
            .join(&format!("{:x}", h.finalize())[..32]);
        // Held before looking: a prune under way finishes first, and the
        // copy is then made again.
        frozen._held.push(live_lock(&dest, true)?);
        if !dest.is_dir() {
            let staged = crate::cachefs::staging(&dest)?.keep();
            copy_files(dir, &staged, Tree::App)?;
            crate::cachefs::publish(&staged, &dest, Path::is_dir)?;
        }
        frozen.dirs.push(dest);
    }
    Ok(frozen)
}

/// The lock of the live copy `dest`: shared (waiting for it), or
/// exclusive if free now (an error if another holds it). [`prune_live`]
/// removes a lock file with its copy, while it holds it: a lock taken
/// meanwhile on the file it removed guards nothing, so the name is
/// looked at again once locked, and the lock taken anew on what it names.
fn live_lock(dest: &Path, shared: bool) -> Result<std::fs::File> {
    use std::os::unix::fs::MetadataExt;
    let path = dest.with_extension("lock");
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    loop {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if shared {
            file.lock_shared()
                .with_context(|| format!("locking {}", path.display()))?;
        } else {
            file.try_lock()
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("locking {}", path.display()))?;
        }
        let locked = file.metadata().map(|m| (m.dev(), m.ino()));
        let named = std::fs::metadata(&path).map(|m| (m.dev(), m.ino()));
        if let (Ok(locked), Ok(named)) = (locked, named) {
            if locked == named {
                return Ok(file);
            }
        }
    }
}

/// Remove the live copies in `cache` no process holds ([`Frozen`]), with
/// their lock files: every saved edit of a `--reload` app makes one, with
/// all its files, so a long session would otherwise fill the disk.
/// Returns how many copies were removed.
pub fn prune_live(cache: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(cache.join("live")) else {
        return 0;
    };
    let is_hash = |n: &str| n.len() == 32 && n.bytes().all(|b| b.is_ascii_hexdigit());
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let copy = if is_hash(name) && entry.file_type().is_ok_and(|t| t.is_dir()) {
            entry.path()
        } else if let Some(stem) = name.strip_suffix(".lock").filter(|n| is_hash(n)) {
            // A lock whose copy is gone (one an older version kept).
            let copy = entry.path().with_file_name(stem);
            if copy.exists() {
                continue;
            }
            copy
        } else {
            continue;
        };
        // Held by a running version (here or in another process): kept.
        let Ok(_unheld) = live_lock(&copy, false) else {
            continue;
        };
        if copy.exists() {
            match std::fs::remove_dir_all(&copy) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::debug!("--reload: cannot remove {}: {e}", copy.display());
                    continue;
                }
            }
        }
        let _ = std::fs::remove_file(copy.with_extension("lock"));
    }
    removed
}

/// Copy `dir`'s shipped files into the directory `dest`, with their
/// modification times (what is packed from the copy keeps them, see
/// [`pack`]).
pub fn copy_files(dir: &Path, dest: &Path, tree: Tree) -> Result<()> {
    for rel in files(dir, tree)? {
        let (from, to) = (dir.join(&rel), dest.join(&rel));
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
        std::fs::metadata(&from)
            .and_then(|m| m.modified())
            .and_then(|t| std::fs::File::open(&to)?.set_modified(t))
            .with_context(|| format!("dating {} as {}", to.display(), from.display()))?;
    }
    Ok(())
}

/// The rules of what ships, for the build cache's key: a build packed
/// under other rules is not reused.
pub const PACKING: &str = "packing 2: packages whole";

/// What a directory that ships holds, which decides what of it ships.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tree {
    /// The app's own directory (`-p`): its caches, VCS data, virtualenvs,
    /// logs, databases and build output stay behind.
    App,
    /// Installed packages or the standard library: everything ships as
    /// `pip install` put it (a package's `venv` module, its data files of
    /// any name) but bytecode, which CPython for WASI compiles itself.
    Packages,
}

impl Tree {
    fn skips_dir(self, name: &str) -> bool {
        match self {
            Tree::App => SKIP_DIRS.contains(&name),
            Tree::Packages => name == "__pycache__",
        }
    }

    fn skips_file(self, name: &str) -> bool {
        match self {
            Tree::App => SKIP_SUFFIXES.iter().any(|s| name.ends_with(s)),
            Tree::Packages => name.ends_with(".pyc") || name.ends_with(".pyo"),
        }
    }
}

/// The file that marks a cache directory (<https://bford.info/cachedir/>,
/// honoured by tar and backup tools too); directories holding it do not ship.
pub const CACHE_TAG: &str = "CACHEDIR.TAG";

/// What [`CACHE_TAG`] must start with.
pub const CACHE_TAG_TEXT: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file marks rsgi-wasm's cache: build output, not an app's files.\n";

/// Why a directory never ships whatever its name.
#[derive(Debug, PartialEq)]
pub enum Unshipped {
    /// It holds [`CACHE_TAG`]: build output (rsgi-wasm's own cache, when
    /// it lies inside an app's directory), never the app's files.
    Cache,
    /// It holds `pyvenv.cfg`: a virtualenv, whatever its name (its
    /// packages are the build machine's, native ones included).
    Virtualenv,
}

/// Whether the directory `dir` is marked as one that never ships.
pub fn marked_unshipped(dir: &Path) -> Option<Unshipped> {
    if dir.join(CACHE_TAG).is_file() {
        Some(Unshipped::Cache)
    } else if dir.join("pyvenv.cfg").is_file() {
        Some(Unshipped::Virtualenv)
    } else {
        None
    }
}

/// Whether the file at `rel` (relative to an app directory) would ship
/// with the app, so that changing it changes the build (by its path: see
/// also [`marked_unshipped`]).
pub fn ships(rel: &Path) -> bool {
    let mut parts = rel.components().rev();
    let Some(file) = parts.next() else {
        return false;
    };
    !Tree::App.skips_file(&file.as_os_str().to_string_lossy())
        && parts.all(|d| !Tree::App.skips_dir(&d.as_os_str().to_string_lossy()))
}

/// Most files one directory may ship: far past any app and its packages
/// (Django with its admin is about 3,000), short of a home directory or
/// a filesystem given by mistake, which would otherwise be read whole.
const MAX_FILES: usize = 200_000;

/// Most bytes one directory may ship: the archive is built in memory, and
/// a wasm section holds less than 4 GiB.
const MAX_BYTES: u64 = 2 << 30;

/// The files under `dir`, a `tree` of that kind, that ship with the app,
/// as sorted relative paths.
pub fn files(dir: &Path, tree: Tree) -> Result<Vec<PathBuf>> {
    files_seen_as(dir, tree, None)
}

/// [`files`], where a file left out is named as the app sees it under
/// `guest` (`/1/db.sqlite3`) when `dir` is the build's own copy: that one
/// holds only what ships and what the build made (a warm-up request's
/// database), and its path on the host says nothing to the user.
fn files_seen_as(dir: &Path, tree: Tree, guest: Option<&str>) -> Result<Vec<PathBuf>> {
    let left_out = |rel: &Path, why: &str| match guest {
        None => not_shipped(&dir.join(rel), why),
        Some(root) => not_shipped(
            &Path::new("/").join(root).join(rel),
            &format!("{why}; the build made it (the import or a warm-up request)"),
        ),
    };
    let root = dir
        .canonicalize()
        .with_context(|| format!("reading {}", dir.display()))?;
    let mut out = Vec::new();
    let mut bytes = 0u64;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let here = dir.join(&rel);
        let entries =
            std::fs::read_dir(&here).with_context(|| format!("reading {}", here.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", here.display()))?;
            let name = entry.file_name();
            let name_str = name.to_string_lossy();
            let path = rel.join(&name);
            // A link to a file inside the directory ships its content; one
            // to a file outside would hand the app a file of the build
            // machine, and links to directories are not followed (no
            // loops, no escapes).
            let kind = entry.file_type()?;
            if kind.is_symlink() && !link_stays_inside(&root, &entry.path()) {
                continue;
            }
            // WASI paths are UTF-8: such a name could not be opened by the
            // app, and would break listing its directory in the sandbox.
            if name.to_str().is_none() {
                left_out(&path, "the name is not UTF-8");
                continue;
            }
            if kind.is_dir() {
                if tree.skips_dir(&name_str) {
                    continue;
                }
                let marked = match tree {
                    Tree::App => marked_unshipped(&entry.path()),
                    Tree::Packages => None,
                };
                match marked {
                    Some(Unshipped::Cache) => {}
                    Some(Unshipped::Virtualenv) => {
                        left_out(&path, "a virtualenv (it holds pyvenv.cfg)")
                    }
                    None => stack.push(path),
                }
            } else if tree.skips_file(&name_str) {
                if SQLITE_SUFFIXES.iter().any(|s| name_str.ends_with(s)) {
                    left_out(
                        &path,
                        "a SQLite database (data the app writes belongs in a --dir grant)",
                    );
                }
            } else {
                // Once: the build reads the app's tree more than once, the
                // last time in its own copy.
                static ENV_WARNED: std::sync::Once = std::sync::Once::new();
                if name_str == ".env" && tree == Tree::App {
                    ENV_WARNED.call_once(|| {
                        tracing::warn!(
                            "{}: ships inside the component, readable by anyone who has it; \
                         pass secrets at run time with --env-file instead",
                            entry.path().display()
                        )
                    });
                }
                match std::fs::metadata(entry.path()) {
                    Ok(m) if m.is_file() => {
                        bytes += m.len();
                        out.push(path);
                        if out.len() > MAX_FILES || bytes > MAX_BYTES {
                            anyhow::bail!(UserError(format!(
                                "{} holds more than {MAX_FILES} files or {} GiB to ship in the \
                                 component; point at the app's own directory, and keep data, \
                                 build output and virtualenvs outside it",
                                dir.display(),
                                MAX_BYTES >> 30
                            )));
                        }
                    }
                    Ok(m) if m.is_dir() => {
                        left_out(&path, "a symlink to a directory (not followed)")
                    }
                    Ok(_) => left_out(&path, "not a regular file"),
                    Err(_) => left_out(&path, "a dangling symlink"),
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Whether the symlink `link` resolves to somewhere under `root` (which is
/// canonical).
fn link_stays_inside(root: &Path, link: &Path) -> bool {
    match std::fs::canonicalize(link) {
        Ok(t) if t.starts_with(root) => true,
        Ok(t) => {
            not_shipped(
                link,
                &format!("a symlink to {}, outside {}", t.display(), root.display()),
            );
            false
        }
        Err(_) => {
            not_shipped(link, "a dangling symlink, or a loop");
            false
        }
    }
}

/// Warn, once per process and path, that `path` is left out of the app.
fn not_shipped(path: &Path, why: &str) {
    static REPORTED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let mut reported = REPORTED.lock().unwrap_or_else(|e| e.into_inner());
    if !reported.iter().any(|p| p == path) {
        reported.push(path.to_owned());
        tracing::warn!("{}: not shipped: {why}", path.display());
    }
}

/// Feed the names and contents of `dir`'s shipped files into `hasher`
/// (the build cache key); returns their total size.
pub fn hash_dir(hasher: &mut Sha256, dir: &Path, tree: Tree) -> Result<u64> {
    let mut total = 0;
    for rel in files(dir, tree)? {
        let data = std::fs::read(dir.join(&rel))
            .with_context(|| format!("reading {}", dir.join(&rel).display()))?;
        hasher.update(rel.to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update((data.len() as u64).to_le_bytes());
        hasher.update(&data);
        total += data.len() as u64;
    }
    Ok(total)
}

/// Pack each `(guest root, host dir)` into one archive, e.g. `("python",
/// stdlib)` → `/python/...`. Deterministic: fixed order and mode, and each
/// file keeps its source's modification time, which frameworks compare
/// (Django's collectstatic, `Last-Modified` and the `ETag`s of Flask's
/// `send_file`): a rebuilt file must not look unchanged.
pub fn pack(roots: &[(String, PathBuf, Tree)]) -> Result<Packed> {
    let encoder = zstd::Encoder::new(Vec::new(), 3)?;
    let mut tar = tar::Builder::new(encoder);
    let (mut files, mut bytes) = (0, 0u64);
    for (root, dir, tree) in roots {
        for rel in files_seen_as(dir, *tree, Some(root))? {
            let src = dir.join(&rel);
            let data = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o444);
            header.set_mtime(mtime(&src));
            header.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut header, Path::new(root).join(&rel), data.as_slice())
                .with_context(|| format!("packing {}", src.display()))?;
            files += 1;
            bytes += data.len() as u64;
        }
    }
    let archive = tar.into_inner()?.finish()?;
    Ok(Packed {
        archive,
        files,
        bytes,
    })
}

/// What [`pack`] made.
pub struct Packed {
    /// The compressed archive.
    pub archive: Vec<u8>,
    /// Files in it.
    pub files: usize,
    /// Their bytes, as unpacking counts them against `--max-unpacked`.
    pub bytes: u64,
}

/// `path`'s modification time in whole seconds since the epoch; 1 where
/// it has none to give (the earliest a tar extractor keeps).
fn mtime(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(1, |d| d.as_secs().max(1))
}

/// Append `archive` to a component as the trailing custom section.
pub fn append(component: &mut Vec<u8>, archive: &[u8]) {
    let mut payload = Vec::with_capacity(archive.len() + 64);
    leb128(&mut payload, SECTION.len() as u64);
    payload.extend_from_slice(SECTION.as_bytes());
    payload.extend_from_slice(archive);
    payload.extend_from_slice(&(archive.len() as u64).to_le_bytes());
    payload.extend_from_slice(MAGIC);
    component.push(0); // custom section id
    leb128(component, payload.len() as u64);
    component.extend_from_slice(&payload);
}

/// Append `v` as unsigned LEB128 (WebAssembly's sizes and counts).
pub fn leb128(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Where the archive appended by [`append`] sits in a component of
/// `len` bytes ending in `trailer`: `(start, length)`, if it has one.
fn locate(trailer: &[u8], len: u64) -> Option<(u64, u64)> {
    if trailer.len() != TRAILER || trailer[8..] != MAGIC[..] {
        return None;
    }
    let archive_len = u64::from_le_bytes(trailer[..8].try_into().ok()?);
    let end = len.checked_sub(TRAILER as u64)?;
    Some((end.checked_sub(archive_len)?, archive_len))
}

/// Find the archive from the end of `component` without reading the rest.
fn archive_at(component: &mut (impl Read + Seek)) -> Result<Option<(u64, u64)>> {
    let len = component.seek(SeekFrom::End(0))?;
    if len < TRAILER as u64 {
        return Ok(None);
    }
    let mut trailer = [0u8; TRAILER];
    component.seek(SeekFrom::End(-(TRAILER as i64)))?;
    component.read_exact(&mut trailer)?;
    Ok(locate(&trailer, len))
}

/// How a component's files may be unpacked into the cache.
pub struct Unpacking<'a> {
    /// Most bytes of files, all its directories together (`--max-unpacked`).
    pub max_bytes: u64,
    /// Called once before unpacking, if the files are not in the cache.
    pub before: Option<&'a mut dyn FnMut()>,
}

/// Most entries (files, directories, links) one component may unpack: a
/// tar header compresses to a few bytes, so a small component could
/// otherwise make millions of empty files. Far past any app (the stdlib
/// is about 4,000, Django with its admin about 3,000).
const MAX_ENTRIES: u64 = 1_000_000;

/// Unpack the archive of the component with content hash `digest` into the
/// cache (once; later starts reuse it) and return its mounts.
/// Only a first start reads the archive itself.
pub fn mounts(
    component: &mut (impl Read + Seek),
    digest: &str,
    cache_dir: &Path,
    mut unpacking: Unpacking<'_>,
) -> Result<Vec<Mount>> {
    // A cache cleaner removing `files/` while this unpacks takes the
    // staging directory, or a tree just published, from under it: the
    // next round finds them gone and unpacks them again.
    let mut tries = 0;
    loop {
        tries += 1;
        match mounts_once(component, digest, cache_dir, &mut unpacking) {
            Err(e) if tries < 3 && cachefs::not_found(&e) => {
                tracing::warn!("unpacking the app's files again: {e:#}");
            }
            done => return done,
        }
    }
}

fn mounts_once(
    component: &mut (impl Read + Seek),
    digest: &str,
    cache_dir: &Path,
    unpacking: &mut Unpacking<'_>,
) -> Result<Vec<Mount>> {
    let Some((start, len)) = archive_at(component)? else {
        return Ok(Vec::new());
    };
    let dest = cache_dir
        .join("files")
        .join(&digest[..32.min(digest.len())]);
    if dest.join(COMPLETE).is_file() {
        match checked_mounts(&dest) {
            Ok(mounts) => return Ok(mounts),
            // Out of descriptors or memory: nothing is wrong with the tree.
            Err(e) if cachefs::short_of_resources(e.chain()) => return Err(e),
            // A shared tree was removed from the cache: unpack again.
            Err(e) => {
                tracing::warn!("unpacking {} again: {e:#}", dest.display());
                std::fs::remove_dir_all(&dest)
                    .with_context(|| format!("removing {}", dest.display()))?;
            }
        }
    }
    // Once: a second round (a cleaner took the staging directory) is
    // already past it.
    if let Some(before) = unpacking.before.take() {
        before();
    }
    let mut archive = Vec::new();
    component.seek(SeekFrom::Start(start))?;
    component.take(len).read_to_end(&mut archive)?;
    unpack(&archive, &dest, unpacking.max_bytes)
        .with_context(|| format!("unpacking the app's files into {}", dest.display()))?;
    checked_mounts(&dest)
}

/// The index of an unpacked component: `NAME TAB TREE` per line, the guest
/// directory `/NAME` being the shared tree `files/trees/TREE`.
const INDEX: &str = "mounts";

/// Beside the index: `TREE FILES BYTES` per tree, what each held when
/// unpacked (see [`tree_counts`]); a tree a walk cannot count as its
/// archive does (a hard link, a device) has no line.
const COUNTS: &str = "counts";

/// The marker of a component unpacked whole, holding [`seal`] of its index
/// and counts: an index or counts a cleaner removed or cut short, or an
/// index an earlier version wrote (with an empty marker), makes the
/// component unpack again, which checks every tree against its archive,
/// instead of mounting less than the app shipped. The index keeps its
/// format, so an earlier version sharing the cache reads it as before.
const COMPLETE: &str = ".complete";

fn seal(index: &str, counts: &str) -> String {
    let mut h = Sha256::new();
    h.update(index.as_bytes());
    h.update([0]);
    h.update(counts.as_bytes());
    format!("{:x}", h.finalize())
}

/// The tree counts of the component unpacked at `dest`, if its marker
/// seals its index and counts as they were written.
fn unpacked_counts(dest: &Path) -> Result<std::collections::BTreeMap<String, Tally>> {
    let unsealed = |why: &str| -> anyhow::Error {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{}: {why}", dest.display()),
        )
        .into()
    };
    let read = |name: &str| match std::fs::read_to_string(dest.join(name)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(unsealed(&format!("its {name} file is gone")))
        }
        other => other.with_context(|| format!("reading {}", dest.join(name).display())),
    };
    let (marker, index, counts) = (read(COMPLETE)?, read(INDEX)?, read(COUNTS)?);
    if marker.trim() != seal(&index, &counts) {
        return Err(unsealed(
            "its index or counts are not what was unpacked (edited, cut short, or written by an \
             earlier rsgi-wasm)",
        ));
    }
    counts
        .lines()
        .map(|l| {
            let (tree, tally) = l.split_once(' ')?;
            Some((tree.to_owned(), Tally::parse(tally)?))
        })
        .collect::<Option<_>>()
        .ok_or_else(|| unsealed("malformed counts"))
}

/// The mounts of the component unpacked at `dest`, each tree checked
/// against its count.
fn checked_mounts(dest: &Path) -> Result<Vec<Mount>> {
    let counts = unpacked_counts(dest)?;
    let mounts = dir_mounts(dest)?;
    for m in &mounts {
        let tree = m.host.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(&tally) = counts.get(tree) {
            tree_counts::check(&m.host, tally)?;
        }
    }
    Ok(mounts)
}

/// Each top-level directory of an unpacked tree, mounted at `/name`: the
/// shared trees its index names, or (`rsgi-wasm unpack`) its own
/// directories.
fn dir_mounts(dest: &Path) -> Result<Vec<Mount>> {
    let mut out = Vec::new();
    match std::fs::read_to_string(dest.join(INDEX)) {
        Ok(index) => {
            // Every bundle ships the standard library at least: an empty
            // index is a damaged one (a full disk, a hand edit).
            if index.trim().is_empty() {
                anyhow::bail!("{} is empty", dest.join(INDEX).display());
            }
            let trees = trees_dir(dest)?;
            for line in index.lines() {
                let (name, tree) = line
                    .split_once('\t')
                    .with_context(|| format!("malformed line in {}", dest.join(INDEX).display()))?;
                // A hash and a plain directory name, as written: an edited
                // index must not mount a host path (`../../etc`) into the
                // sandbox.
                let plain = |s: &str| {
                    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\\', '\0'])
                };
                if !plain(name) || !tree.bytes().all(|b| b.is_ascii_hexdigit()) || tree.is_empty() {
                    anyhow::bail!("malformed line in {}: {line:?}", dest.join(INDEX).display());
                }
                let host = trees.join(tree);
                if !is_real_dir(&host) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("{} is missing or not a directory", host.display()),
                    )
                    .into());
                }
                out.push(Mount {
                    host,
                    guest: format!("/{name}"),
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            for entry in std::fs::read_dir(dest)? {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    out.push(Mount {
                        host: entry.path(),
                        guest: format!("/{}", entry.file_name().to_string_lossy()),
                    });
                }
            }
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", dest.display())),
    }
    out.sort_by(|a, b| a.guest.cmp(&b.guest));
    Ok(out)
}

/// Whether `path` is a directory itself, not a symlink to one: a tree of
/// the `files` cache that is a symlink would mount whatever it points at,
/// so it is taken for missing (and replaced by the real one).
fn is_real_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// Where the content-addressed trees of the `files` cache live.
fn trees_dir(unpacked: &Path) -> Result<PathBuf> {
    Ok(unpacked
        .parent()
        .context("cache path has no parent")?
        .join("trees"))
}

/// Unpack the files a component ships into `dest`, a new or empty
/// directory, for hosts that map directories themselves (`wasmtime serve
/// --dir`, Spin's `files`); returns where each guest path's files went.
pub fn extract(component: &mut (impl Read + Seek), dest: &Path) -> Result<Vec<Mount>> {
    let Some((start, len)) = archive_at(component)? else {
        return Ok(Vec::new());
    };
    if std::fs::read_dir(dest).is_ok_and(|mut d| d.next().is_some()) {
        anyhow::bail!(
            "{} is not empty; unpack into a new directory",
            dest.display()
        );
    }
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    component.seek(SeekFrom::Start(start))?;
    let mut tar = tar::Archive::new(zstd::Decoder::new(component.take(len))?);
    tar.set_preserve_permissions(false);
    tar.unpack(dest)
        .with_context(|| format!("unpacking into {}", dest.display()))?;
    read_only_below(dest)?;
    dir_mounts(dest)
}

/// Make every directory below `dest` read-only (its files are already):
/// other hosts grant directories writable (`wasmtime serve --dir` has no
/// read-only form), and an app that could write into its own code or the
/// stdlib would change every later instance. A host run as root ignores
/// the modes; `dest` itself stays writable.
fn read_only_below(dest: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut dirs = Vec::new();
    let mut stack = vec![dest.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
                dirs.push(entry.path());
            }
        }
    }
    for dir in dirs {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555))
            .with_context(|| format!("making {} read-only", dir.display()))?;
    }
    Ok(())
}

/// Unpack `archive` for the component cached at `dest`. Each top-level
/// directory goes to a tree named by the hash of its entries, shared by
/// every component that ships the same files (the stdlib, identical
/// site-packages), so a thousand apps do not keep a thousand copies of it;
/// `dest` keeps only the index. The hashes come from the archive itself,
/// so a tree the cache has already is never written again: a new app
/// unpacks only its own directories.
fn unpack(archive: &[u8], dest: &Path, max_bytes: u64) -> Result<()> {
    let trees = trees_dir(dest)?;
    let (mut entries, mut bytes) = (0u64, 0u64);
    let mut hashes: std::collections::BTreeMap<String, Sha256> = Default::default();
    // What each tree holds, for `tree_counts`; `None` for a tree with an
    // entry a walk of it would not count the same (a hard link, a device).
    let mut tallies: std::collections::BTreeMap<String, Option<Tally>> = Default::default();
    for_each_entry(archive, |top, entry| {
        let h = hashes.entry(top.to_owned()).or_default();
        let tally = tallies
            .entry(top.to_owned())
            .or_insert(Some(Tally::default()));
        // Relative to its directory: the same files under another guest
        // path (site-packages at /2 in one app, /3 in another) share too.
        let path = entry.path()?.into_owned();
        let rel = path.strip_prefix(top).unwrap_or(&path);
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update([0, entry.header().entry_type().as_byte()]);
        if let Some(link) = entry.link_name()? {
            h.update(link.as_os_str().as_encoded_bytes());
        }
        // Counted from the header before a byte is read, so a component
        // that would fill the disk (or, hashed whole, the memory) stops
        // here, before anything is written.
        let size = entry.size();
        entries += 1;
        bytes = bytes.saturating_add(size);
        if bytes > max_bytes {
            anyhow::bail!(UserError(format!(
                "the component ships more files than may be unpacked: over {} MiB \
                 (--max-unpacked; every directory it ships counts, the standard library's \
                 14 MB too, whether or not another app unpacked it already); nothing was \
                 unpacked. If you trust it, raise --max-unpacked; a component this large is \
                 usually a build that took in data or a virtualenv by mistake",
                max_bytes >> 20,
            )));
        }
        if entries > MAX_ENTRIES {
            anyhow::bail!(UserError(format!(
                "the component ships more than {MAX_ENTRIES} files and directories, more than \
                 any app needs; nothing was unpacked"
            )));
        }
        // Hashed as it is read: the archive is in memory already, its
        // largest file need not be too.
        h.update(size.to_le_bytes());
        let read = std::io::copy(entry, h)?;
        anyhow::ensure!(
            read == size,
            "an archive entry is shorter than its header says"
        );
        let kind = entry.header().entry_type();
        if kind.is_file() {
            if let Some(t) = tally.as_mut() {
                t.add(size);
            }
        } else if !kind.is_dir() && !kind.is_symlink() {
            *tally = None;
        }
        Ok(())
    })?;
    let named: Vec<(String, String)> = hashes
        .into_iter()
        .map(|(name, h)| (name, format!("{:x}", h.finalize())[..32].to_owned()))
        .collect();
    let tally_of = |name: &str| tallies.get(name).copied().flatten();
    let mut missing: Vec<&(String, String)> = Vec::new();
    for named in &named {
        let (name, tree) = named;
        let path = trees.join(tree);
        if !is_real_dir(&path) {
            missing.push(named);
        } else if tally_of(name).is_some_and(|t| tree_counts::check(&path, t).is_err()) {
            tree_counts::set_aside(&path)?;
            missing.push(named);
        }
    }
    let staged = cachefs::staging(dest)?;
    let needed: u64 = missing
        .iter()
        .filter_map(|(name, _)| tally_of(name))
        .map(|t| t.on_disk())
        .sum();
    cachefs::ensure_room(staged.path(), needed, "unpacking the app's files")?;
    if !missing.is_empty() {
        let wanted = |top: &str| missing.iter().any(|(name, _)| name == top);
        for_each_entry(archive, |top, entry| {
            if wanted(top) {
                // Refuses entries that would land outside the directory.
                entry.unpack_in(staged.path())?;
            }
            Ok(())
        })?;
        std::fs::create_dir_all(&trees).with_context(|| format!("creating {}", trees.display()))?;
        for (name, tree) in missing {
            // A tree appears whole (one rename), so existing means complete.
            cachefs::publish(&staged.path().join(name), &trees.join(tree), is_real_dir)?;
        }
    }
    let index: String = named
        .iter()
        .map(|(name, tree)| format!("{name}\t{tree}\n"))
        .collect();
    let counts: String = named
        .iter()
        .filter_map(|(name, tree)| Some(format!("{tree} {}\n", tally_of(name)?)))
        .collect();
    std::fs::write(staged.path().join(COUNTS), &counts)?;
    std::fs::write(staged.path().join(INDEX), &index)?;
    let mut marker = std::fs::File::create(staged.path().join(COMPLETE))?;
    marker.write_all(seal(&index, &counts).as_bytes())?;
    marker.flush()?;
    cachefs::publish(&staged.keep(), dest, |d| d.join(COMPLETE).is_file())
}

/// Call `f` with every entry of `archive` under a top-level directory, and
/// that directory's name.
fn for_each_entry(
    archive: &[u8],
    mut f: impl FnMut(
        &str,
        &mut tar::Entry<'_, zstd::Decoder<'_, std::io::BufReader<&[u8]>>>,
    ) -> Result<()>,
) -> Result<()> {
    let mut tar = tar::Archive::new(zstd::Decoder::new(archive)?);
    tar.set_preserve_permissions(false);
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let mut parts = path.components();
        let top = match (parts.next(), parts.next()) {
            (Some(std::path::Component::Normal(top)), Some(_)) => {
                top.to_string_lossy().into_owned()
            }
            // A file at the top, or a path that is not plain: not mounted.
            _ => continue,
        };
        f(&top, &mut entry)?;
    }
    Ok(())
}

/// Hex SHA-256 of everything `r` yields, read in pieces so a large
/// component is never held in memory just to hash it.
pub fn digest(r: &mut impl Read) -> std::io::Result<String> {
    let mut h = Sha256::new();
    std::io::copy(
        &mut std::io::BufReader::with_capacity(256 * 1024, r),
        &mut h,
    )?;
    Ok(format!("{:x}", h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`mounts`] with no size cap.
    fn unlimited(c: &mut (impl Read + Seek), digest: &str, cache: &Path) -> Result<Vec<Mount>> {
        let unpacking = Unpacking {
            max_bytes: u64::MAX,
            before: None,
        };
        mounts(c, digest, cache, unpacking)
    }

    #[test]
    fn a_component_shipping_more_than_the_cap_is_refused_before_anything_is_written() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("zeros.dat"), vec![0u8; 3 << 20]).unwrap();
        std::fs::write(src.path().join("app.py"), "x = 1\n").unwrap();
        let archive = pack(&[("1".into(), src.path().to_path_buf(), Tree::App)])
            .unwrap()
            .archive;
        // Compressed, the 3 MiB of zeros take a few hundred bytes.
        assert!(archive.len() < 64 << 10, "{}", archive.len());
        let mut component = b"\0asm\x0d\x00\x01\x00".to_vec();
        append(&mut component, &archive);
        let digest = digest(&mut component.as_slice()).unwrap();
        let cache = tempfile::tempdir().unwrap();
        // Mounted under `max_bytes`, and how often the slow part was told.
        let capped = |max_bytes| {
            let mut slow = 0;
            let unpacking = Unpacking {
                max_bytes,
                before: Some(&mut || slow += 1),
            };
            let m = mounts(
                &mut std::io::Cursor::new(&component),
                &digest,
                cache.path(),
                unpacking,
            );
            (m, slow)
        };
        let (m, slow) = capped(2 << 20);
        let e = m.unwrap_err();
        assert!(
            format!("{e:#}").contains("over 2 MiB (--max-unpacked;"),
            "{e:#}"
        );
        assert_eq!(slow, 1);
        assert!(!cache.path().join("files/trees").exists());
        assert!(!cache.path().join("files").join(&digest[..32]).exists());
        // Under a cap it fits: unpacked, and told once; then found, untold.
        for expected in [1, 0] {
            let (m, slow) = capped(4 << 20);
            let m = m.unwrap();
            assert_eq!(slow, expected);
            assert_eq!(
                std::fs::metadata(m[0].host.join("zeros.dat"))
                    .unwrap()
                    .len(),
                3 << 20
            );
        }
    }

    #[test]
    fn live_versions_are_frozen_by_content_and_mounted_in_place() {
        let src = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("app.py"), "v1").unwrap();
        std::fs::create_dir(src.path().join("__pycache__")).unwrap();
        std::fs::write(src.path().join("__pycache__/app.pyc"), "x").unwrap();
        let dirs = [src.path().to_path_buf()];
        let held1 = freeze_dirs(&dirs, cache.path()).unwrap();
        let v1 = held1.dirs.clone();
        assert_eq!(std::fs::read_to_string(v1[0].join("app.py")).unwrap(), "v1");
        assert!(!v1[0].join("__pycache__").exists());
        assert_eq!(freeze_dirs(&dirs, cache.path()).unwrap().dirs, v1);
        std::fs::write(src.path().join("app.py"), "v2").unwrap();
        let held2 = freeze_dirs(&dirs, cache.path()).unwrap();
        let v2 = held2.dirs.clone();
        assert_ne!(v2, v1);
        // The old version's copy stays while it is held (instances still
        // using it), and goes once it is not.
        assert_eq!(prune_live(cache.path()), 0);
        assert_eq!(std::fs::read_to_string(v1[0].join("app.py")).unwrap(), "v1");
        drop(held1);
        assert_eq!(prune_live(cache.path()), 1);
        assert!(!v1[0].exists() && v2[0].is_dir());
        // Its lock file goes with it; the held version's stays, as does a
        // lock left without its copy until it is pruned.
        assert!(!v1[0].with_extension("lock").exists());
        assert!(v2[0].with_extension("lock").exists());
        let orphan = cache.path().join("live").join(format!("{:032x}.lock", 7));
        std::fs::write(&orphan, "").unwrap();
        assert_eq!(prune_live(cache.path()), 0);
        assert!(!orphan.exists());
        // Made again if wanted again.
        std::fs::write(src.path().join("app.py"), "v1").unwrap();
        assert_eq!(freeze_dirs(&dirs, cache.path()).unwrap().dirs, v1);
        assert_eq!(std::fs::read_to_string(v1[0].join("app.py")).unwrap(), "v1");
        drop(held2);
        let files: Arc<[Mount]> = vec![
            Mount {
                host: "/cache/stdlib".into(),
                guest: "/python".into(),
            },
            Mount {
                host: "/cache/deps".into(),
                guest: "/3".into(),
            },
        ]
        .into();
        let live = with_live_dirs(&files, &[v2[0].clone(), "/src/b".into()]);
        let guests: Vec<_> = live
            .iter()
            .map(|m| (m.guest.as_str(), m.host.clone()))
            .collect();
        assert_eq!(
            guests,
            vec![
                ("/python", "/cache/stdlib".into()),
                ("/3", "/cache/deps".into()),
                ("/1", v2[0].clone()),
                ("/2", "/src/b".into()),
            ]
        );
    }

    #[test]
    fn an_index_naming_anything_but_a_tree_is_refused() {
        let cache = tempfile::tempdir().unwrap();
        let unpacked = cache.path().join("files").join("abc");
        let trees = cache.path().join("files").join("trees");
        std::fs::create_dir_all(trees.join("0f3e")).unwrap();
        std::fs::create_dir_all(&unpacked).unwrap();
        std::fs::write(unpacked.join(INDEX), "python\t0f3e\n").unwrap();
        let mounts = dir_mounts(&unpacked).unwrap();
        assert_eq!(mounts[0].guest, "/python");
        for bad in [
            "1\t../../../../etc\n",
            "1\t/etc\n",
            "..\t0f3e\n",
            "a/b\t0f3e\n",
            "1\t\n",
        ] {
            std::fs::write(unpacked.join(INDEX), bad).unwrap();
            let e = dir_mounts(&unpacked).unwrap_err().to_string();
            assert!(e.contains("malformed line"), "{bad:?}: {e}");
        }
        std::os::unix::fs::symlink("/etc", trees.join("eeee")).unwrap();
        std::fs::write(unpacked.join(INDEX), "1\teeee\n").unwrap();
        let e = dir_mounts(&unpacked).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
    }

    #[test]
    fn copies_keep_modification_times() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("static")).unwrap();
        std::fs::write(src.path().join("static/a.css"), "a {}").unwrap();
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
        std::fs::File::open(src.path().join("static/a.css"))
            .and_then(|f| f.set_modified(when))
            .unwrap();
        let dest = tempfile::tempdir().unwrap();
        copy_files(src.path(), dest.path(), Tree::App).unwrap();
        let copied = std::fs::metadata(dest.path().join("static/a.css")).unwrap();
        assert_eq!(copied.modified().unwrap(), when);
    }

    #[test]
    fn archive_round_trips_through_a_component() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("pkg/__pycache__")).unwrap();
        std::fs::write(src.path().join("pkg/mod.py"), "x = 1\n").unwrap();
        std::fs::write(src.path().join("pkg/__pycache__/mod.pyc"), "junk").unwrap();
        std::fs::write(src.path().join("app.wasm"), "old build").unwrap();
        std::fs::write(src.path().join("db.sqlite3"), "data").unwrap();
        std::fs::write(src.path().join("server.log"), "a line\n").unwrap();
        // A virtualenv by any name: its packages are the build machine's.
        std::fs::create_dir_all(src.path().join("env2/lib")).unwrap();
        std::fs::write(src.path().join("env2/pyvenv.cfg"), "home = /usr\n").unwrap();
        std::fs::write(src.path().join("env2/lib/six.py"), "").unwrap();
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        std::fs::File::options()
            .write(true)
            .open(src.path().join("pkg/mod.py"))
            .and_then(|f| f.set_modified(when))
            .unwrap();
        assert_eq!(
            files(src.path(), Tree::App).unwrap(),
            vec![PathBuf::from("pkg/mod.py")]
        );
        // Installed packages ship as pip put them, bytecode aside: a
        // package's data files of any name, its `venv` module.
        let packages: Vec<PathBuf> = [
            "app.wasm",
            "db.sqlite3",
            "env2/lib/six.py",
            "env2/pyvenv.cfg",
            "pkg/mod.py",
            "server.log",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(files(src.path(), Tree::Packages).unwrap(), packages);

        let packed = pack(&[("1".into(), src.path().to_path_buf(), Tree::App)]).unwrap();
        let (archive, count) = (packed.archive, packed.files);
        assert_eq!(count, 1);
        let mut component = b"\0asm\x0d\x00\x01\x00".to_vec();
        append(&mut component, &archive);
        let at = |bytes: &[u8]| archive_at(&mut std::io::Cursor::new(bytes)).unwrap();
        let (start, len) = at(&component).unwrap();
        assert_eq!(
            &component[start as usize..(start + len) as usize],
            archive.as_slice()
        );
        assert_eq!(at(b"\0asm\x0d\x00\x01\x00"), None);
        assert_eq!(at(b"x"), None);

        let cache = tempfile::tempdir().unwrap();
        let digest = digest(&mut component.as_slice()).unwrap();
        let file = || std::io::Cursor::new(&component);
        let m = unlimited(&mut file(), &digest, cache.path()).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].guest, "/1");
        assert_eq!(
            std::fs::read_to_string(m[0].host.join("pkg/mod.py")).unwrap(),
            "x = 1\n"
        );
        // Unpacked with the source's modification time.
        let unpacked = std::fs::metadata(m[0].host.join("pkg/mod.py")).unwrap();
        assert_eq!(unpacked.modified().unwrap(), when);
        // Second start: already unpacked, same answer.
        assert_eq!(unlimited(&mut file(), &digest, cache.path()).unwrap(), m);

        // Another component shipping the same directory (and one more)
        // shares the tree on disk.
        let extra = tempfile::tempdir().unwrap();
        std::fs::write(extra.path().join("other.py"), "y = 2\n").unwrap();
        let archive = pack(&[
            ("1".into(), src.path().to_path_buf(), Tree::App),
            ("2".into(), extra.path().to_path_buf(), Tree::App),
        ])
        .unwrap()
        .archive;
        let mut second = b"\0asm\x0d\x00\x01\x00".to_vec();
        append(&mut second, &archive);
        let digest2 = super::digest(&mut second.as_slice()).unwrap();
        let m2 = unlimited(&mut std::io::Cursor::new(&second), &digest2, cache.path()).unwrap();
        assert_eq!(m2.len(), 2);
        assert_eq!(m2[0], m[0]);
        assert_eq!(
            std::fs::read_dir(cache.path().join("files/trees"))
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_dir())
                .count(),
            2
        );
        // A shared tree removed from under the cache is unpacked again.
        std::fs::remove_dir_all(&m2[1].host).unwrap();
        let again = unlimited(&mut std::io::Cursor::new(&second), &digest2, cache.path()).unwrap();
        assert_eq!(again, m2);
        assert!(again[1].host.join("other.py").is_file());
        // So is one replaced by a symlink, which is never followed.
        std::fs::remove_dir_all(&m2[1].host).unwrap();
        std::os::unix::fs::symlink(src.path(), &m2[1].host).unwrap();
        let again = unlimited(&mut std::io::Cursor::new(&second), &digest2, cache.path()).unwrap();
        assert_eq!(again, m2);
        assert!(!std::fs::symlink_metadata(&again[1].host)
            .unwrap()
            .is_symlink());
        assert!(again[1].host.join("other.py").is_file());
        // So is a component whose index was emptied.
        let index = cache.path().join("files").join(&digest2[..32]).join(INDEX);
        std::fs::write(&index, "").unwrap();
        let again = unlimited(&mut std::io::Cursor::new(&second), &digest2, cache.path()).unwrap();
        assert_eq!(again, m2);
        assert!(std::fs::read_to_string(&index).unwrap().contains('\t'));
        // And one whose index a cleaner removed, cut short, or an earlier
        // version wrote (an empty marker): unpacked again, whole.
        let dest = index.parent().unwrap().to_owned();
        let text = std::fs::read_to_string(&index).unwrap();
        let sealed = std::fs::read_to_string(dest.join(COMPLETE)).unwrap();
        assert_eq!(sealed.len(), 64);
        assert!(
            std::fs::read_to_string(dest.join(COUNTS))
                .unwrap()
                .lines()
                .count()
                == 2
        );
        let damage: [&dyn Fn(); 4] = [
            &|| std::fs::remove_file(&index).unwrap(),
            &|| std::fs::write(&index, text.lines().next().unwrap()).unwrap(),
            &|| std::fs::write(dest.join(COMPLETE), "").unwrap(),
            &|| std::fs::write(dest.join(COUNTS), "x 1 2\n").unwrap(),
        ];
        for (i, damage) in damage.iter().enumerate() {
            damage();
            let again =
                unlimited(&mut std::io::Cursor::new(&second), &digest2, cache.path()).unwrap();
            assert_eq!(again, m2, "damage {i}");
            assert_eq!(std::fs::read_to_string(&index).unwrap(), text, "damage {i}");
            assert_eq!(
                std::fs::read_to_string(dest.join(COMPLETE)).unwrap(),
                sealed
            );
        }
    }

    #[test]
    fn the_section_is_valid_wasm_framing() {
        let mut component = Vec::new();
        append(&mut component, &[1, 2, 3]);
        assert_eq!(component[0], 0);
        let size = component[1] as usize;
        assert_eq!(component.len(), 2 + size);
        assert_eq!(component[2] as usize, SECTION.len());
        let mut v = Vec::new();
        leb128(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
    }

    #[test]
    fn a_cache_directory_inside_the_app_is_not_its_files() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("app.py"), "a").unwrap();
        let cache = src.path().join("cache");
        std::fs::create_dir_all(cache.join("builds")).unwrap();
        std::fs::write(cache.join("builds/x.cwasm"), "compiled").unwrap();
        std::fs::write(cache.join(CACHE_TAG), CACHE_TAG_TEXT).unwrap();
        assert_eq!(
            files(src.path(), Tree::App).unwrap(),
            [PathBuf::from("app.py")]
        );
    }

    #[test]
    fn ships_matches_what_is_packed() {
        assert!(ships(Path::new("app.py")));
        assert!(ships(Path::new("templates/index.html")));
        assert!(!ships(Path::new("pkg/__pycache__/mod.cpython-314.pyc")));
        assert!(!ships(Path::new(".git/index")));
        assert!(!ships(Path::new("db.sqlite3")));
        assert!(!ships(Path::new("")));
    }

    #[test]
    fn hashing_sees_content_changes() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("app.py"), "a").unwrap();
        let key = |dir: &Path| {
            let mut h = Sha256::new();
            hash_dir(&mut h, dir, Tree::App).unwrap();
            format!("{:x}", h.finalize())
        };
        let before = key(src.path());
        std::fs::write(src.path().join("app.py"), "b").unwrap();
        assert_ne!(before, key(src.path()));
    }
}
