//! The process-wide wasmtime `Engine`, the compiled-artifact cache, and
//! loading a component into a checked, reusable `InstancePre`.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Module};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::bundle::{self, Mount};
use crate::cachefs;
use crate::config::World;
use crate::digests;
use crate::metrics;
use crate::runtime::generated::{request, response, WsgiAppPre};
use crate::runtime::instance_slots::{self, Allocation};
use crate::runtime::module_deltas;
use crate::runtime::snapshot_pages::{self, SnapshotFile};
use crate::runtime::store::HostState;
use crate::runtime::wasi_http::INCOMING_HANDLER;
use crate::runtime::wsgi::WsgiCtx;
use crate::runtime::{artifact_sums, core_modules, fuse};

/// How often the epoch advances: the granularity of timeouts and of the
/// yields that keep one CPU-bound guest from starving the others.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How the host lays a component out before compiling it (split, fused):
/// part of each app's links file name, so a cache made by an older layout
/// is compiled again rather than linked as it was.
const LAYOUT: &str = "fused3";

/// `tracing::warn!` unless `$said` (the same file was judged just before).
macro_rules! warn_unless_said {
    ($said:expr, $($arg:tt)*) => {
        if !$said {
            tracing::warn!($($arg)*);
        }
    };
}

/// The native stack wasm frames may use.
const MAX_WASM_STACK: usize = 8 << 20;

/// Make the engine, its instances allocated as `allocation` says, and
/// start its epoch ticker thread.
pub fn new_engine(allocation: Allocation) -> Result<Engine> {
    let engine = match Engine::new(&engine_config(allocation)) {
        Ok(engine) => {
            if let Allocation::Slots(n) = allocation {
                tracing::info!(
                    "instances come from {n} slots reserved now, each reset to the app's snapshot between requests"
                );
            }
            engine
        }
        // The reservation fails under a low `ulimit -v`, say: the slots
        // only save time.
        Err(e) if allocation != Allocation::OnDemand => {
            tracing::warn!("{}", instance_slots::reservation_failed(allocation, &e));
            Engine::new(&engine_config(Allocation::OnDemand))
                .map_err(anyhow::Error::from)
                .context("creating the wasmtime engine")?
        }
        Err(e) => {
            return Err(anyhow::Error::from(e)).context("creating the wasmtime engine");
        }
    };
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("rsgi-wasm-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .context("starting the epoch thread")?;
    Ok(engine)
}

/// The engine's configuration. Compiled code does not depend on
/// `allocation`: both kinds of engine load the same artifacts.
fn engine_config(allocation: Allocation) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    // CPython bounds its recursion by the stack it keeps in linear memory;
    // wasm frames also use the native stack, and wasmtime's default of
    // 512 KiB ran out first: a JSON body 1,500 arrays deep trapped instead
    // of raising RecursionError. Fiber stacks are touched as used.
    config.max_wasm_stack(MAX_WASM_STACK);
    // Host functions run on the same fiber, after the guest's frames.
    config.async_stack_size(MAX_WASM_STACK + (2 << 20));
    // Our world has no async WIT functions: without the component-model
    // concurrency machinery every guest call takes the plain fiber path
    // (measured: 3% fewer instructions per hello request).
    config.concurrency_support(false);
    // For profiling: `RSGI_WASM_PERFMAP=1` writes /tmp/perf-PID.map so perf
    // (and the scripts in docs/benchmarks.md) can name guest functions.
    if std::env::var_os("RSGI_WASM_PERFMAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    allocation.apply(&mut config);
    config
}

/// The cache directory to use: `given` (`--cache-dir` or
/// `$RSGI_WASM_CACHE`), else `$XDG_CACHE_HOME/rsgi-wasm` or `~/.cache/rsgi-wasm`;
/// created private if missing, and refused unless it can be trusted (see
/// [`check_trusted`]). Never a shared temporary directory.
pub fn cache_dir(given: Option<PathBuf>) -> Result<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    let empty = given.as_ref().is_some_and(|d| d.as_os_str().is_empty());
    let dir = given
        .filter(|d| !d.as_os_str().is_empty())
        // The XDG spec has a relative value ignored.
        .or_else(|| {
            var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .filter(|d| d.is_absolute())
                .map(|d| d.join("rsgi-wasm"))
        })
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache").join("rsgi-wasm")))
        .context(
            "no cache directory: set HOME or XDG_CACHE_HOME, or pass --cache-dir DIR \
             (a directory only you can write to)",
        )?;
    if empty {
        // An unset shell variable (`--cache-dir "$CACHE"`) or a pod's
        // `value: ""`: taken as unset, but said, as the cache may then be
        // on another volume than meant.
        tracing::info!(
            "--cache-dir (or RSGI_WASM_CACHE) is empty: using the default, {}",
            dir.display()
        );
    }
    if dir.exists() && !dir.is_dir() {
        anyhow::bail!(
            "the cache directory {} is not a directory: give --cache-dir (or RSGI_WASM_CACHE) \
             a directory, or remove what is there",
            dir.display()
        );
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating the cache directory {}", dir.display()))?;
    let mode = check_trusted(&dir).map_err(|e| e.refusal(&dir))?;
    let was_private = mode & 0o077 == 0;
    // Its unpacked trees become apps' code, its hash entries say which
    // compiled code runs for a file, two hold compiled code, and the build
    // cache's (and `--reload`'s copies) hold what apps run: all as private
    // as the cache.
    for sub in [
        "files", "digests", "modules", "shells", "builds", "stdlib", "deps", "live",
    ] {
        let sub = dir.join(sub);
        if !sub.exists() {
            continue;
        }
        match check_trusted(&sub) {
            // Made under a permissive umask (`umask 000`) inside a cache
            // nobody else could enter: nobody else wrote to it.
            Err(TrustError::Writable(mode)) if was_private => {
                std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(mode & !0o022))
                    .with_context(|| format!("making {} private", sub.display()))?;
            }
            checked => {
                checked.map_err(|e| e.refusal(&sub))?;
            }
        }
    }
    // Closed only once all is found sound: one refused stays refused (and
    // is not taken, at the next start, for what a private cache made).
    if !was_private {
        make_private(&dir, mode)?;
    }
    let tag = dir.join(bundle::CACHE_TAG);
    if !tag.exists() {
        // Best effort: without it a cache inside an app's directory would
        // be packed into the app's next build.
        let _ = cachefs::write_atomic(&tag, bundle::CACHE_TAG_TEXT.as_bytes());
    }
    Ok(dir)
}

/// Why a cache directory is not to be trusted.
#[derive(Debug, thiserror::Error)]
enum TrustError {
    #[error("unreadable")]
    Unreadable(#[source] std::io::Error),
    #[error("owned by another user")]
    Owner(u32),
    #[error("writable by others")]
    Writable(u32),
}

impl TrustError {
    /// The user-facing refusal of directory `dir`, with the way out.
    fn refusal(self, dir: &Path) -> anyhow::Error {
        let me = rustix::process::geteuid().as_raw();
        match self {
            TrustError::Unreadable(e) => {
                anyhow::Error::new(e).context(format!("reading {}", dir.display()))
            }
            TrustError::Owner(uid) => anyhow::anyhow!(
                "refusing the cache directory {}: it belongs to user {uid}, not to you (user \
                 {me}); compiled code in it would run as you. Use a directory of your own with \
                 --cache-dir",
                dir.display()
            ),
            TrustError::Writable(mode) => {
                // A shared directory like /tmp (sticky, writable by all)
                // must stay so: point at one of your own instead.
                let (fix, target) = if mode & 0o1000 != 0 {
                    (
                        "Give --cache-dir a directory of your own inside it, like",
                        dir.join("rsgi-wasm-cache"),
                    )
                } else {
                    ("Fix it with: chmod go-w", dir.to_owned())
                };
                anyhow::anyhow!(
                    "refusing the cache directory {}: others may write to it (mode {:o}), and \
                     compiled code and apps' files in it would run as you. {fix} {}",
                    dir.display(),
                    mode & 0o7777,
                    target.display()
                )
            }
        }
    }
}

/// Close the cache root (`mode`) to others, who may read or enter it: it
/// holds the apps' code (settings and their secrets included) and, made
/// under a permissive umask, entries others could write.
fn make_private(dir: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making the cache directory {} private", dir.display()))?;
    tracing::warn!(
        "made the cache directory {} private (mode 700, was {:o}): it holds your apps' files \
         and compiled code",
        dir.display(),
        mode & 0o7777
    );
    Ok(())
}

/// Compiled artifacts in the cache are native code loaded without further
/// checks, and the unpacked file trees become the app's code: a directory
/// another user owns or may write to is not to be trusted. Its mode if it
/// is.
fn check_trusted(dir: &Path) -> Result<u32, TrustError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).map_err(TrustError::Unreadable)?;
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(TrustError::Owner(meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(TrustError::Writable(meta.mode()));
    }
    Ok(meta.mode())
}

/// Loads components for one engine; a file loaded twice (many tenants of
/// one component, or a reload) shares one `Component`, so its code is
/// mapped once and the file is hashed once. The loader holds components
/// weakly: once no app holds one, its code is unmapped.
pub struct Loader {
    engine: Engine,
    cache_dir: PathBuf,
    loaded: Mutex<HashMap<FileKey, Weak<Loaded>>>,
    /// Split-out core modules by hash, shared by every component that
    /// imports them, and freed with the last one.
    modules: Mutex<HashMap<String, Weak<SharedModule>>>,
    /// Compiled shells by hash, shared by every app built against the same
    /// libraries, and freed with the last one.
    shells: Mutex<HashMap<String, Weak<SharedShell>>>,
    /// Held while compiling: apps first asked for at once on an empty
    /// cache compile one after another (Cranelift already uses every core
    /// for one), and each finds what the one before compiled instead of
    /// compiling CPython again in parallel, with its memory.
    compiling: Mutex<()>,
    /// Artifacts this process found sound ([`artifact_sums`]), as they
    /// were then: one replaced since is checked again.
    checked: Mutex<HashSet<FileKey>>,
    /// Most bytes of files one component may unpack (`--max-unpacked`).
    max_unpacked: u64,
    /// Store new snapshot modules as deltas (`--compact-cache`).
    compact: bool,
}

/// A compiled component and the read-only file tree it ships.
pub struct Loaded {
    /// The compiled code: its shell, which imports `modules`.
    pub component: Component,
    /// Keeps the shell listed as loaded while this app holds it.
    _shell: Arc<SharedShell>,
    /// Its own files (stdlib, app dirs, site-packages), unpacked in the cache.
    pub files: Arc<[Mount]>,
    /// Which directory each of `files` was when loaded (device, inode): a
    /// tree another load set aside and unpacked anew is at the same path,
    /// while this app's instances still read the old one.
    trees: Vec<Option<(u64, u64)>>,
    /// The core modules it imports once split ([`core_modules`]), by name.
    pub modules: Vec<LinkedModule>,
}

/// A split-out core module and the name the component imports it by.
pub type LinkedModule = (String, Arc<SharedModule>);

/// A component's shell ([`core_modules`]) compiled once for every app
/// that has it.
pub struct SharedShell(Component);

/// A core module compiled once for every component that ships it.
pub struct SharedModule {
    module: Module,
    /// Its artifact, if instances map their memory from it.
    snapshot: Option<SnapshotFile>,
    /// The file it was expanded into from a delta, and the delta's path:
    /// which pages its instances read is recorded when it is dropped.
    expanded: Option<(std::fs::File, PathBuf)>,
}

impl Loaded {
    /// The artifacts its instances map their memory from.
    pub fn snapshot_files(&self) -> Vec<SnapshotFile> {
        self.modules
            .iter()
            .filter_map(|(_, m)| m.snapshot.clone())
            .collect()
    }

    /// A directory of the app's own files that is gone from the cache (or
    /// is now another directory), if any: its instances cannot import or
    /// read from it, or read a tree set aside. A `stat` per directory.
    pub fn missing_files(&self) -> Option<&Path> {
        self.files
            .iter()
            .zip(&self.trees)
            .find(|(m, &was)| {
                let now = tree_identity(&m.host);
                now.is_none() || (was.is_some() && now != was)
            })
            .map(|(m, _)| m.host.as_path())
    }

    /// A directory of the component's files that no longer holds every
    /// file unpacked into it (a cleaner pruned some), if any. Walks them.
    pub fn pruned_files(&self) -> Option<&Path> {
        self.files
            .iter()
            .find(|m| !crate::tree_counts::still_whole(&m.host))
            .map(|m| m.host.as_path())
    }
}

impl Drop for SharedModule {
    fn drop(&mut self) {
        metrics::core_modules_loaded(-1);
        if let Some((file, path)) = &self.expanded {
            snapshot_pages::record_read(file, path);
        }
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        metrics::components_loaded(-1);
    }
}

/// A component file as last seen: its path and what `stat` says of it
/// (any write, rename over it or `touch` back to an old time changes it).
type FileKey = (PathBuf, digests::Identity);

fn file_key(path: &Path) -> Result<FileKey> {
    let identity = digests::Identity::of_path(path).with_context(|| cannot_read(path))?;
    Ok((
        path.canonicalize().unwrap_or_else(|_| path.to_path_buf()),
        identity,
    ))
}

impl Loader {
    /// A loader that caches compiled artifacts in `cache_dir`.
    pub fn new(engine: Engine, cache_dir: PathBuf) -> Self {
        Loader {
            engine,
            cache_dir,
            loaded: Mutex::new(HashMap::new()),
            modules: Mutex::new(HashMap::new()),
            shells: Mutex::new(HashMap::new()),
            compiling: Mutex::new(()),
            checked: Mutex::new(HashSet::new()),
            max_unpacked: u64::MAX,
            compact: false,
        }
    }

    /// Refuse components that ship more than `bytes` of files to unpack.
    pub fn with_max_unpacked(mut self, bytes: u64) -> Self {
        self.max_unpacked = bytes;
        self
    }

    /// Store the core modules it compiles from now on as deltas against
    /// similar ones where that makes them small ([`module_deltas`]).
    pub fn with_compact_cache(mut self, compact: bool) -> Self {
        self.compact = compact;
        self
    }

    /// The engine components are loaded into.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Whether a load failed because the apps' unpacked files were removed
    /// from the cache while it ran (a cache cleaner): loading again
    /// unpacks them.
    pub fn files_removed_meanwhile(&self, e: &anyhow::Error) -> bool {
        let files = self.cache_dir.join("files");
        let text = format!("{e:#}");
        // wasmtime-wasi's error for a preopen carries the errno as text.
        // With its parenthesis: "(os error 28)", a full disk, is not it.
        let not_found = text.contains("(os error 2)") || cachefs::not_found(e);
        not_found && text.contains(&*files.to_string_lossy())
    }

    /// The component at `path`, from memory if this file (same size and
    /// mtime) is loaded now, else from the artifact cache or compiled.
    /// Blocks: hashing, unpacking and compiling take milliseconds to seconds.
    pub fn load(&self, path: &Path) -> Result<Arc<Loaded>> {
        self.load_with(path, &mut || {})
    }

    /// [`load`](Self::load), calling `before_slow` before its slow part,
    /// if it has one (unpacking the component's files, compiling it), so
    /// a caller that rations loads can let cached ones pass meanwhile.
    pub fn load_with(&self, path: &Path, before_slow: &mut dyn FnMut()) -> Result<Arc<Loaded>> {
        let key = file_key(path)?;
        if let Some(c) = self.live(&key) {
            return Ok(c);
        }
        let c = Arc::new(self.load_component(path, before_slow)?);
        metrics::components_loaded(1);
        let mut loaded = self.loaded.lock().expect("loader lock");
        // Two apps of one component loading at once: keep the first.
        if let Some(first) = usable(loaded.get(&key)) {
            return Ok(first);
        }
        loaded.retain(|_, w| w.strong_count() > 0);
        loaded.insert(key, Arc::downgrade(&c));
        Ok(c)
    }

    fn live(&self, key: &FileKey) -> Option<Arc<Loaded>> {
        usable(self.loaded.lock().expect("loader lock").get(key))
    }
}

/// The component a weak entry of the loader holds, if it is still loaded
/// and its files are still in the cache (else it is loaded again, which
/// unpacks them).
fn usable(entry: Option<&Weak<Loaded>>) -> Option<Arc<Loaded>> {
    entry
        .and_then(Weak::upgrade)
        .filter(|c| c.missing_files().is_none())
}

impl Loader {
    /// Load `path` as a component with its file tree and the core modules
    /// it imports. The file is streamed through the hash; only a first
    /// start (compiling) reads it whole, so a cached start never holds the
    /// component in memory.
    fn load_component(&self, path: &Path, before_slow: &mut dyn FnMut()) -> Result<Loaded> {
        let unreadable = || cannot_read(path);
        let mut file = open_component(path)?;
        let digest = digests::of_component(&mut file, &self.cache_dir).with_context(unreadable)?;
        let unpacking = bundle::Unpacking {
            max_bytes: self.max_unpacked,
            before: Some(&mut *before_slow),
        };
        let files = bundle::mounts(&mut file, &digest, &self.cache_dir, unpacking)
            .with_context(|| format!("loading the files shipped in {}", path.display()))?;
        let (shell, modules) = self.compile_cached(&mut file, &digest, path, before_slow)?;
        Ok(Loaded {
            component: shell.0.clone(),
            _shell: shell,
            trees: files.iter().map(|m| tree_identity(&m.host)).collect(),
            files: files.into(),
            modules,
        })
    }

    /// The engine's part of every artifact's name: artifacts of another
    /// wasmtime or configuration are never picked up.
    fn engine_key(&self) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        format!("{:016x}", h.finish())
    }

    /// Compile a component once and reuse the native artifacts from the
    /// cache afterwards (keyed by content and engine). Its core modules are
    /// split out first ([`core_modules`]) and compiled, cached and loaded
    /// by their own hash, so a module many apps ship is compiled once; so
    /// is what is left, the shell, which apps built against the same
    /// libraries share. The app's `.links` file names its shell and
    /// modules.
    fn compile_cached(
        &self,
        file: &mut std::fs::File,
        digest: &str,
        path: &Path,
        before_slow: &mut dyn FnMut(),
    ) -> Result<(Arc<SharedShell>, Vec<LinkedModule>)> {
        let links = self
            .cache_dir
            .join(format!("{digest}-{}-{LAYOUT}.links", self.engine_key()));
        if let Some(hit) = self.linked(&links, digest, false)? {
            metrics::artifact_cache(true);
            return Ok(hit);
        }
        before_slow();
        // A compile that panicked leaves nothing half-done behind the lock.
        let _compiling = self.compiling.lock().unwrap_or_else(|e| e.into_inner());
        // Compiled by another app while this one waited for the lock (what
        // is wrong with the file was said just before).
        if let Some(hit) = self.linked(&links, digest, true)? {
            metrics::artifact_cache(true);
            return Ok(hit);
        }
        metrics::artifact_cache(false);
        // Once more if the cache was removed while compiling (a cleaner,
        // an operator): what was compiled is gone, but not the need.
        for _ in 0..2 {
            if let Some(done) =
                crate::allocator::handing_back(|| self.compile(file, digest, path, &links))?
            {
                return Ok(done);
            }
            tracing::warn!(
                "what was just compiled for {} was removed from {} meanwhile (a cache cleaner?), \
                 or found unusable (said above); compiling again",
                path.display(),
                self.cache_dir.display()
            );
        }
        anyhow::bail!(
            "what was compiled for {} was removed from {} twice while loading: keep cache \
             cleaners away from a cache in use",
            path.display(),
            self.cache_dir.display()
        )
    }

    /// Compile the component open as `file` into the cache, and load it
    /// from there (none if what it compiled was removed meanwhile).
    /// Callers hold the compile lock.
    fn compile(
        &self,
        file: &mut std::fs::File,
        digest: &str,
        path: &Path,
        links: &Path,
    ) -> Result<Option<(Arc<SharedShell>, Vec<LinkedModule>)>> {
        // Seconds of compiling whose result could not be kept would be
        // spent again by every app and at every retry: ask first.
        writable(&self.cache_dir)?;
        tracing::info!(
            "compiling {} (once for each version of the file; cached in {})",
            path.display(),
            self.cache_dir.display()
        );
        let mut bytes = Vec::new();
        file.rewind()
            .and_then(|()| file.read_to_end(&mut bytes))
            .with_context(|| cannot_read(path))?;
        let invalid = || {
            format!(
                "{} is not a valid WebAssembly component (was it built by `rsgi-wasm build`?)",
                path.display()
            )
        };
        let t = Instant::now();
        // The fused module and its stubs stay in the shell (see
        // `core_modules::split`).
        let mut in_shell = Vec::new();
        if let Some(fused) = fuse::fuse(&bytes) {
            bytes = fused.bytes;
            in_shell = fused.own_modules;
        }
        let split = core_modules::split(&bytes, &in_shell).with_context(invalid)?;
        // Seconds of compiling a full disk would throw away, at every
        // retry: what is not cached yet must fit first.
        let shell = split.as_ref().map_or(&bytes[..], |s| &s.component[..]);
        let shell_hash = format!("{:x}", Sha256::digest(shell));
        let mut needed = 0u64;
        for m in split.iter().flat_map(|s| &s.modules) {
            if !self.module_cached(&m.hash) {
                needed += m.range.len() as u64 * COMPILED_PER_MODULE_BYTE;
            }
        }
        if !self.artifact("shells", &shell_hash).is_file() {
            needed += shell.len() as u64 * COMPILED_PER_SHELL_BYTE;
        }
        cachefs::ensure_room(&self.cache_dir, needed, "compiling this component")?;
        let mut compiled_modules = 0;
        let mut hashes = Vec::new();
        if let Some(split) = &split {
            for m in &split.modules {
                let module = &bytes[m.range.clone()];
                let new = self
                    .compile_module(&m.hash, module)
                    .context("compiling a core module of the component")?;
                compiled_modules += usize::from(new);
                hashes.push(m.hash.clone());
            }
        }
        let new_shell = self
            .compile_into(&self.artifact("shells", &shell_hash), false, |e| {
                e.precompile_component(shell)
            })
            .map_err(|e| {
                // Writing it failed (a full disk): the component is fine.
                if e.chain().any(|c| c.is::<std::io::Error>()) {
                    e.context("compiling the component")
                } else {
                    e.context(invalid())
                }
            })?;
        tracing::info!(
            "compiled in {:.1}s ({compiled_modules} of its {} core modules were new; {})",
            t.elapsed().as_secs_f64(),
            hashes.len(),
            match (new_shell, in_shell.is_empty()) {
                (true, false) => "a new shell, with CPython's libraries in it",
                (true, true) => "a new shell",
                (false, _) => "the shell other apps use",
            },
        );
        cachefs::write_atomic(links, write_links(digest, &shell_hash, &hashes).as_bytes())
            .with_context(|| {
                format!(
                    "caching what {} links in {}",
                    path.display(),
                    links.display()
                )
            })?;
        self.linked(links, digest, false)
    }

    /// The shell and modules the links file at `path` names, if it is
    /// there and all of them are.
    fn linked(
        &self,
        path: &Path,
        digest: &str,
        said: bool,
    ) -> Result<Option<(Arc<SharedShell>, Vec<LinkedModule>)>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let links = std::str::from_utf8(&bytes).ok().and_then(read_links);
        let Some((component, shell, modules)) = links else {
            warn_unless_said!(said, "ignoring unreadable cache file {}", path.display());
            return Ok(None);
        };
        // Another app's links copied over this one's (a restore gone
        // wrong) would serve that app's code under this one's name.
        if component != digest {
            warn_unless_said!(
                said,
                "ignoring {}: it names the modules of another component",
                path.display()
            );
            return Ok(None);
        }
        let Some(shell) = self.shell(shell)? else {
            return Ok(None);
        };
        // A links file for another shell, or naming its modules in another
        // order (written by hand, or damaged): compile again rather than
        // fail to link at every load.
        let wanted: HashMap<String, wasmtime::component::types::Module> = shell
            .0
            .component_type()
            .imports(&self.engine)
            .filter_map(|(name, item)| match item.ty {
                wasmtime::component::types::ComponentItem::Module(ty)
                    if core_modules::is_module_import(name) =>
                {
                    Some((name.to_owned(), ty))
                }
                _ => None,
            })
            .collect();
        if wanted.len() != modules.len() {
            warn_unless_said!(
                said,
                "ignoring {}: it names {} modules for a shell that imports {}",
                path.display(),
                modules.len(),
                wanted.len()
            );
            return Ok(None);
        }
        let Some(linked) = self.linked_modules(&modules)? else {
            return Ok(None);
        };
        if let Some((name, missing)) = linked.iter().find_map(|(name, m)| {
            let ty = wanted.get(name)?;
            lacks_export(&self.engine, ty, &m.module).map(|e| (name, e))
        }) {
            warn_unless_said!(
                said,
                "ignoring {}: the module it names for {name} does not export `{missing}`",
                path.display(),
            );
            return Ok(None);
        }
        Ok(Some((shell, linked)))
    }

    /// Where the compiled `hash` is cached in `dir` (`shells`, `modules`).
    fn artifact(&self, dir: &str, hash: &str) -> PathBuf {
        self.cache_dir
            .join(dir)
            .join(format!("{hash}-{}.cwasm", self.engine_key()))
    }

    /// Whether the core module `hash` is in the cache, whole or as a delta
    /// whose base is there (not checked: a load does that).
    fn module_cached(&self, hash: &str) -> bool {
        let artifact = self.artifact("modules", hash);
        artifact.is_file() || module_deltas::base_present(&module_deltas::path_of(&artifact))
    }

    /// Compile core module `hash` into the cache unless it is there, whole
    /// and sound or as a delta with its base; whether it was compiled now.
    fn compile_module(&self, hash: &str, module: &[u8]) -> Result<bool> {
        let artifact = self.artifact("modules", hash);
        if module_deltas::base_present(&module_deltas::path_of(&artifact)) {
            return Ok(false);
        }
        self.compile_into(&artifact, self.compact, |e| e.precompile_module(module))
    }

    /// Compile into `artifact` unless a sound one is there (as a delta,
    /// when `delta` and one makes it small); whether it was compiled now.
    fn compile_into(
        &self,
        artifact: &Path,
        delta: bool,
        compile: impl FnOnce(&Engine) -> wasmtime::Result<Vec<u8>>,
    ) -> Result<bool> {
        if let Ok(file) = std::fs::File::open(artifact) {
            if self.sound(&file, artifact)? {
                return Ok(false);
            }
        }
        let compiled = compile(&self.engine).map_err(anyhow::Error::from)?;
        let dir = artifact.parent().expect("in a directory of the cache");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let suffix = format!("-{}.cwasm", self.engine_key());
        let name = artifact.file_name().map(|n| n.to_string_lossy());
        if let Some(bytes) = name
            .filter(|_| delta)
            .and_then(|name| module_deltas::encode(dir, &suffix, &name, &compiled))
        {
            let path = module_deltas::path_of(artifact);
            cachefs::write_compiled(&path, &bytes)
                .with_context(|| format!("caching compiled code in {}", dir.display()))?;
            return Ok(true);
        }
        artifact_sums::record(artifact, &compiled)?;
        cachefs::write_compiled(artifact, &compiled)
            .with_context(|| format!("caching compiled code in {}", dir.display()))?;
        // Written again, after it: an artifact changed after its sum is
        // checked whole at its next load ([`artifact_sums::check`]).
        artifact_sums::record_again(artifact)?;
        snapshot_pages::forget_written(artifact);
        // A delta whose base is gone, now stale: the whole one is loaded.
        let _ = std::fs::remove_file(module_deltas::path_of(artifact));
        // Just hashed from these bytes: its first load need not read it
        // again. (Another process may rename its own copy over it; that
        // changes its identity, and it is checked then.)
        if let Ok(identity) = digests::Identity::of_path(artifact) {
            let key = (artifact.to_path_buf(), identity);
            self.checked.lock().expect("loader lock").insert(key);
        }
        Ok(true)
    }

    /// Whether the artifact open as `file` may be mapped and run: its
    /// checksum matches, now or when this process last saw it as it is. A
    /// damaged one is removed, to be compiled again.
    fn sound(&self, file: &std::fs::File, artifact: &Path) -> Result<bool> {
        let loading = || format!("loading {}", artifact.display());
        let identity = digests::Identity::of(&file.metadata().with_context(loading)?);
        let key = (artifact.to_path_buf(), identity);
        if self.checked.lock().expect("loader lock").contains(&key) {
            return Ok(true);
        }
        let why = match artifact_sums::check(file, artifact) {
            Ok(artifact_sums::Verdict::Sound) => {
                self.checked.lock().expect("loader lock").insert(key);
                return Ok(true);
            }
            Ok(artifact_sums::Verdict::Unusable(why)) => why,
            Err(e) if cachefs::short_of_resources(e.chain()) => {
                return Err(e).with_context(loading);
            }
            Err(e) => format!("{e:#}"),
        };
        discard(artifact, &why);
        Ok(false)
    }

    /// The shell `hash`, from memory if another app has it loaded, else
    /// mapped from the cache; none if it is not in the cache.
    fn shell(&self, hash: &str) -> Result<Option<Arc<SharedShell>>> {
        if let Some(s) = self.shells.lock().expect("loader lock").get(hash) {
            if let Some(s) = s.upgrade() {
                return Ok(Some(s));
            }
        }
        let artifact = self.artifact("shells", hash);
        let Some(file) = open_artifact(&artifact)? else {
            return Ok(None);
        };
        if !self.sound(&file, &artifact)? {
            return Ok(None);
        }
        // SAFETY: the file was written by `precompile_component` of an
        // engine with the same compatibility hash (it is in the name), into
        // a cache directory owned by this user; wasmtime re-checks its
        // header.
        let component = match unsafe { Component::deserialize_file(&self.engine, &artifact) } {
            Ok(c) => c,
            Err(e) => {
                discard_unusable(&artifact, &e)?;
                return Ok(None);
            }
        };
        let shell = Arc::new(SharedShell(component));
        let mut map = self.shells.lock().expect("loader lock");
        // Loaded by another app meanwhile: keep one copy.
        if let Some(first) = map.get(hash).and_then(Weak::upgrade) {
            return Ok(Some(first));
        }
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(hash.to_owned(), Arc::downgrade(&shell));
        Ok(Some(shell))
    }

    /// The core modules `hashes` names, in the order the shell imports
    /// them, from memory if another app has them loaded, else mapped from
    /// the cache; none if one of them is not in the cache.
    fn linked_modules(&self, hashes: &[&str]) -> Result<Option<Vec<LinkedModule>>> {
        let mut linked = Vec::new();
        for (index, &hash) in hashes.iter().enumerate() {
            let live = self
                .modules
                .lock()
                .expect("loader lock")
                .get(hash)
                .and_then(Weak::upgrade);
            let module = match live {
                Some(m) => m,
                None => {
                    let artifact = self.artifact("modules", hash);
                    let loaded = if artifact.is_file() {
                        self.whole(&artifact)?
                    } else {
                        self.expanded(&artifact)?
                    };
                    let Some(module) = loaded else {
                        return Ok(None);
                    };
                    self.keep(hash, module)
                }
            };
            linked.push((core_modules::import_name(index), module));
        }
        Ok(Some(linked))
    }

    /// The module cached whole as `artifact`, checked and loaded; none if
    /// it is gone or unusable (a damaged one is removed), and the module is
    /// to be compiled again.
    fn whole(&self, artifact: &Path) -> Result<Option<SharedModule>> {
        let loading = || format!("loading {}", artifact.display());
        let Some(file) = open_artifact(artifact)? else {
            return Ok(None);
        };
        // Before the check, which may read the whole snapshot: what it
        // reads is not what instances read.
        let cached_before = snapshot_pages::residency(&file);
        if !self.sound(&file, artifact)? {
            return Ok(None);
        }
        let for_wasmtime = file.try_clone().with_context(loading)?;
        // SAFETY: as for components: written by this engine (its hash is
        // in the name) into our private cache.
        let module = match unsafe { Module::deserialize_open_file(&self.engine, for_wasmtime) } {
            Ok(m) => m,
            Err(e) => {
                discard_unusable(artifact, &e)?;
                return Ok(None);
            }
        };
        let snapshot = snapshot_pages::on_load(&file, artifact, &module, cached_before);
        Ok(Some(SharedModule {
            module,
            snapshot,
            expanded: None,
        }))
    }

    /// `module`, loaded as core module `hash`, shared from now on; or the
    /// copy another app loaded meanwhile.
    fn keep(&self, hash: &str, module: SharedModule) -> Arc<SharedModule> {
        let module = Arc::new(module);
        // Counted down by its `Drop`, this copy's too.
        metrics::core_modules_loaded(1);
        let mut map = self.modules.lock().expect("loader lock");
        match map.get(hash).and_then(Weak::upgrade) {
            Some(first) => first,
            None => {
                map.retain(|_, w| w.strong_count() > 0);
                map.insert(hash.to_owned(), Arc::downgrade(&module));
                module
            }
        }
    }

    /// The module whose `artifact` is cached as a delta, expanded and
    /// loaded; none if there is no delta, or it cannot be used (a damaged
    /// one is removed), and the module is to be compiled again.
    fn expanded(&self, artifact: &Path) -> Result<Option<SharedModule>> {
        let path = module_deltas::path_of(artifact);
        if !path.is_file() {
            return Ok(None);
        }
        // The expansion's buffer (the module's size) goes back to the
        // kernel at once, not after mimalloc's delay.
        let name = artifact
            .file_name()
            .context("an artifact has a file name")?
            .to_string_lossy();
        let expanded = crate::allocator::handing_back(|| module_deltas::expand(&path, &name))
            .with_context(|| format!("loading {}", path.display()))?;
        let file = match expanded {
            Ok(file) => file,
            // Written whole by another process meanwhile: that is found
            // when the module is looked for again.
            Err(module_deltas::Unusable::Gone) => return Ok(None),
            Err(module_deltas::Unusable::NoBase(base)) => {
                tracing::info!(
                    "compiling again: {} is a delta against {base}, which is gone from the cache",
                    path.display()
                );
                return Ok(None);
            }
            Err(module_deltas::Unusable::Damaged(why)) => {
                discard(&path, &why);
                return Ok(None);
            }
        };
        let loading = || format!("loading {}", path.display());
        let for_wasmtime = file.try_clone().with_context(loading)?;
        // SAFETY: expanded from a delta this engine's compile wrote (its
        // hash is in the name) into our private cache, checked whole by the
        // delta's checksum; the file has no name, so nothing else writes it.
        let module = match unsafe { Module::deserialize_open_file(&self.engine, for_wasmtime) } {
            Ok(m) => m,
            Err(e) => {
                discard_unusable(&path, &e)?;
                return Ok(None);
            }
        };
        // All of it is cached (just written): `on_load` leaves that alone
        // and `settle_expanded` keeps what instances read before.
        let snapshot = snapshot_pages::on_load(&file, &path, &module, None);
        if snapshot.is_some() {
            snapshot_pages::settle_expanded(&file, &path);
        }
        let expanded = snapshot.is_some().then_some((file, path));
        Ok(Some(SharedModule {
            module,
            snapshot,
            expanded,
        }))
    }
}

/// An export the shell's import type `ty` asks of `module` and it lacks.
fn lacks_export(
    engine: &Engine,
    ty: &wasmtime::component::types::Module,
    module: &Module,
) -> Option<String> {
    let has: HashSet<&str> = module.exports().map(|e| e.name()).collect();
    ty.exports(engine)
        .map(|(name, _)| name)
        .find(|name| !has.contains(name))
        .map(str::to_owned)
}

/// Remove a cached artifact wasmtime refuses (damaged, or written by
/// something else), so the app compiles it again instead of failing at
/// every load; but one that could not be opened or mapped for want of
/// descriptors or memory is sound, and the load fails instead.
fn discard_unusable(artifact: &Path, e: &wasmtime::Error) -> Result<()> {
    if cachefs::short_of_resources(e.chain()) {
        anyhow::bail!("loading {}: {e:#}", artifact.display());
    }
    if instance_slots::does_not_fit(e) {
        anyhow::bail!(crate::error::UserError(format!(
            "the app does not fit the instance slots `run --isolation request` reserves ({e:#}); run it with --isolation pooled, or under `serve`"
        )));
    }
    discard(artifact, &format!("{e:#}"));
    Ok(())
}

/// Fail unless compiled code can be written into the cache `dir` (a
/// read-only mount, say).
fn writable(dir: &Path) -> Result<()> {
    rustix::fs::access(dir, rustix::fs::Access::WRITE_OK)
        .map_err(std::io::Error::from)
        .with_context(|| {
            format!(
                "the app is not compiled in the cache {}, which cannot be written: make it writable, or fill it on a machine that ran these apps with the same rsgi-wasm",
                dir.display()
            )
        })
}

/// What a compile writes for each byte of a core module not compiled
/// before (most of an app's own module is its heap snapshot, stored as
/// it is: 16 MB for a 14 MB module), with room to spare.
const COMPILED_PER_MODULE_BYTE: u64 = 2;
/// The same for the shell, whose compiled code is several times its size
/// (30 MB for CPython's libraries fused).
const COMPILED_PER_SHELL_BYTE: u64 = 6;

/// The directory at `path` (device, inode); none if it is not one, or a
/// symlink to one: a tree of the `files` cache that is a symlink would
/// mount whatever it points at, so it is taken for missing.
fn tree_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino()))
}

/// The cached artifact at `path`, open; none if it is not there, or is
/// but cannot be read (its modes changed by hand), which is removed, as a
/// damaged one is, to be compiled again: the cache is this user's own.
fn open_artifact(path: &Path) -> Result<Option<std::fs::File>> {
    match std::fs::File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            discard(
                path,
                "this process may not read it (its modes were changed)",
            );
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("loading {}", path.display())),
    }
}

/// Remove a cached artifact that cannot be used, and say why.
fn discard(artifact: &Path, why: &str) {
    tracing::warn!(
        "compiling again: the cached artifact {} is unusable: {why}",
        artifact.display()
    );
    if let Err(e) = std::fs::remove_file(artifact) {
        tracing::warn!("cannot remove {}: {e}", artifact.display());
    }
    // A delta has no sum: the one beside it is its whole artifact's.
    if artifact.extension().is_none_or(|e| e != "delta") {
        artifact_sums::forget(artifact);
    }
}

/// The first line of a links file: its format.
const LINKS_HEADER: &str = "rsgi-wasm links 2";

/// A links file: the format line, the component it is for, the shell's hash, then each module's
/// hash in the order the shell imports them.
fn write_links(component: &str, shell: &str, modules: &[String]) -> String {
    let mut text = format!("{LINKS_HEADER}\ncomponent {component}\nshell {shell}\n");
    for m in modules {
        text.push_str(&format!("module {m}\n"));
    }
    text
}

/// The shell and module hashes of a links file; none if it is not one.
fn read_links(text: &str) -> Option<(&str, &str, Vec<&str>)> {
    let is_hash = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
    let mut lines = text.lines();
    if lines.next()? != LINKS_HEADER {
        return None;
    }
    let component = lines
        .next()?
        .strip_prefix("component ")
        .filter(|h| is_hash(h))?;
    let shell = lines
        .next()?
        .strip_prefix("shell ")
        .filter(|h| is_hash(h))?;
    let modules = lines
        .map(|l| l.strip_prefix("module ").filter(|h| is_hash(h)))
        .collect::<Option<Vec<_>>>()?;
    Some((component, shell, modules))
}

fn cannot_read(path: &Path) -> String {
    format!("cannot read component {}", path.display())
}

/// Open the component at `path`, its header checked ([`check_header`]),
/// positioned at its start.
pub fn open_component(path: &Path) -> Result<std::fs::File> {
    let unreadable = || cannot_read(path);
    let mut file = std::fs::File::open(path).with_context(unreadable)?;
    let mut head = Vec::with_capacity(8);
    (&mut file)
        .take(8)
        .read_to_end(&mut head)
        .with_context(unreadable)?;
    check_header(&head, path)?;
    file.rewind().with_context(unreadable)?;
    Ok(file)
}

/// Tell a wrong file apart from a broken component before compiling.
pub fn check_header(bytes: &[u8], path: &Path) -> Result<()> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        bail!(
            "{} is not a WebAssembly file (build one with `rsgi-wasm build MODULE:CALLABLE -o app.wasm`)",
            path.display()
        );
    }
    // Core modules have layer 0 (bytes 6..8); components have layer 1.
    if bytes[6..8] == [0, 0] {
        bail!(
            "{} is a core WebAssembly module, not a component (build it with `rsgi-wasm build`)",
            path.display()
        );
    }
    Ok(())
}

/// Our handler's export, whose version must match the host's WIT.
const WSGI_HANDLER: &str = "rsgi-wasm:wsgi/handler@0.3.0";

/// The world the component at `path` exports, read from its top-level
/// export section without loading or compiling it: `serve` checks every
/// tenant this way at start, and loads one on its first request.
pub fn exported_world(path: &Path) -> Result<World> {
    let unreadable = || cannot_read(path);
    let mut file = std::io::BufReader::new(open_component(path)?);
    let malformed = || format!("{} is not a well-formed component", path.display());
    let mut names = Vec::new();
    // Section 11: the component's export section.
    for (_, range) in core_modules::sections(&mut file)
        .with_context(malformed)?
        .into_iter()
        .filter(|(id, _)| *id == 11)
    {
        let mut section = vec![0u8; (range.end - range.start) as usize];
        file.seek(std::io::SeekFrom::Start(range.start))
            .and_then(|_| file.read_exact(&mut section))
            .with_context(unreadable)?;
        let reader = wasmparser::ComponentExportSectionReader::new(wasmparser::BinaryReader::new(
            &section, 0,
        ))
        .and_then(|r| {
            r.into_iter()
                .map(|e| e.map(|e| e.name.0.to_owned()))
                .collect::<Result<Vec<_>, _>>()
        });
        names.extend(reader.map_err(|e| {
            anyhow::anyhow!("{} has a malformed export section: {e}", path.display())
        })?);
    }
    world_of(&names, path)
}

/// Tell the world from a component's export names.
fn world_of(names: &[String], path: &Path) -> Result<World> {
    if names.iter().any(|n| n == INCOMING_HANDLER) {
        return Ok(World::WasiHttp);
    }
    if names.iter().any(|n| n == WSGI_HANDLER) {
        return Ok(World::Wsgi);
    }
    if let Some(other) = names
        .iter()
        .find(|n| n.starts_with("rsgi-wasm:wsgi/handler@"))
    {
        bail!(
            "{} was built by another rsgi-wasm version (it exports {other}, this server serves {WSGI_HANDLER}); rebuild it with `rsgi-wasm build`",
            path.display()
        );
    }
    bail!(
        "{} exports neither the rsgi-wasm handler ({WSGI_HANDLER}) nor {INCOMING_HANDLER}; build it with `rsgi-wasm build`",
        path.display()
    )
}

/// A linked component, ready to instantiate, by the world it exports.
#[derive(Clone)]
pub enum AppPre {
    /// rsgi-wasm's own `wsgi-app` world (the default build).
    Wsgi(WsgiAppPre<HostState>),
    /// `wasi:http/proxy` (`rsgi-wasm build --world wasi-http`).
    WasiHttp(ProxyPre<HostState>),
}

/// Link WASI, wasi:http and our WIT imports, and tell which world the
/// component exports.
pub fn prepare(engine: &Engine, loaded: &Loaded, path: &Path) -> Result<AppPre> {
    let component = &loaded.component;
    let mut linker: Linker<HostState> = Linker::new(engine);
    for (name, module) in &loaded.modules {
        linker.root().module(name, &module.module)?;
    }
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    // Ours over wasmtime-wasi's: disk quotas, and lookups by the rules.
    linker.allow_shadowing(true);
    crate::runtime::quota_fs::add_to_linker(&mut linker, HostState::quota_fs)?;
    crate::runtime::outbound::add_to_linker(&mut linker, HostState::sockets)?;
    crate::runtime::socket_slots::add_to_linker(&mut linker, HostState::sockets)?;
    crate::runtime::socket_states::add_to_linker(&mut linker, HostState::sockets)?;
    linker.allow_shadowing(false);
    request::add_to_linker::<HostState, HasSelf<WsgiCtx>>(&mut linker, HostState::wsgi)?;
    response::add_to_linker::<HostState, HasSelf<WsgiCtx>>(&mut linker, HostState::wsgi)?;
    crate::runtime::tls_client::add_to_linker(&mut linker, HostState::tls)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    let pre = linker
        .instantiate_pre(component)
        .map_err(anyhow::Error::from)
        .with_context(|| {
            format!(
                "{} does not fit rsgi-wasm's sandbox (it must be built by `rsgi-wasm build`, for the rsgi-wasm:wsgi@0.3.0 world or with --world wasi-http; a component built by another rsgi-wasm version must be rebuilt)",
                path.display()
            )
        })?;
    let exports_http = component.get_export_index(None, INCOMING_HANDLER).is_some();
    if exports_http {
        return ProxyPre::new(pre)
            .map(AppPre::WasiHttp)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!(
                    "{} exports {INCOMING_HANDLER} with another signature",
                    path.display()
                )
            });
    }
    WsgiAppPre::new(pre)
        .map(AppPre::Wsgi)
        .map_err(anyhow::Error::from)
        .with_context(|| {
            format!(
                "{} exports neither the rsgi-wasm handler nor {INCOMING_HANDLER}",
                path.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_is_retried_only_for_files_removed_from_the_cache() {
        let loader = Loader::new(Engine::default(), PathBuf::from("/cache"));
        let gone = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let mount = anyhow::Error::from(gone())
            .context("mounting /cache/files/trees/0f3e as /1")
            .context("starting an instance of app a");
        assert!(loader.files_removed_meanwhile(&mount));
        // As wasmtime-wasi words it, with the errno only in the text.
        let text = anyhow::anyhow!("No such file or directory (os error 2)")
            .context("mounting /cache/files/trees/0f3e as /1");
        assert!(loader.files_removed_meanwhile(&text));
        // A granted directory gone is the operator's to fix, not retried.
        let grant = anyhow::Error::from(gone()).context("granting /srv/data as /data");
        assert!(!loader.files_removed_meanwhile(&grant));
        let other = anyhow::anyhow!("permission denied").context("unpacking into /cache/files/x");
        assert!(!loader.files_removed_meanwhile(&other));
        let full = anyhow::anyhow!("No space left on device (os error 28)")
            .context("unpacking into /cache/files/x");
        assert!(!loader.files_removed_meanwhile(&full));
    }

    #[test]
    fn links_files_round_trip_and_anything_else_is_refused() {
        let (a, b, c) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        let text = write_links(&c, &a, std::slice::from_ref(&b));
        assert_eq!(
            read_links(&text),
            Some((c.as_str(), a.as_str(), vec![b.as_str()]))
        );
        assert_eq!(
            read_links(&write_links(&c, &a, &[])),
            Some((c.as_str(), a.as_str(), vec![]))
        );
        for bad in [
            String::new(),
            format!("shell {a}\n"),
            // The first format, without the component it is for.
            format!("rsgi-wasm links 1\nshell {a}\nmodule {b}\n"),
            format!("{LINKS_HEADER}\nshell {a}\nmodule {b}\n"),
            format!("{LINKS_HEADER}\ncomponent {c}\nshell {}\n", &a[1..]),
            format!("{LINKS_HEADER}\ncomponent {c}\nshell {a}\nmodule {b}x\n"),
            format!("{LINKS_HEADER}\ncomponent {c}\nshell {a}\nmodule {b}\n\n"),
            text[..text.len() - 10].to_owned(),
        ] {
            assert_eq!(read_links(&bad), None, "{bad:?}");
        }
    }
}
