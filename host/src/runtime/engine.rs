//! The process-wide wasmtime `Engine`, the compiled-artifact cache, and
//! loading a component into a checked, reusable `InstancePre`.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use std::os::unix::fs::DirBuilderExt;

use anyhow::{bail, Context, Result};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::bundle::{self, Mount};
use crate::cachefs;
use crate::metrics;
use crate::runtime::generated::{WsgiApp, WsgiAppPre};
use crate::runtime::store::HostState;
use crate::runtime::wasi_http::INCOMING_HANDLER;
use crate::runtime::wsgi::WsgiCtx;

/// How often the epoch advances: the granularity of timeouts and of the
/// yields that keep one CPU-bound guest from starving the others.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Make the engine and start its epoch ticker thread.
pub fn new_engine() -> Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    // Our world has no async WIT functions: without the component-model
    // concurrency machinery every guest call takes the plain fiber path
    // (measured: 3% fewer instructions per hello request).
    config.concurrency_support(false);
    // For profiling: `RSGI_WASM_PERFMAP=1` writes /tmp/perf-PID.map so perf
    // (and the scripts in docs/benchmarks.md) can name guest functions.
    if std::env::var_os("RSGI_WASM_PERFMAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    let engine = Engine::new(&config)
        .map_err(anyhow::Error::from)
        .context("creating the wasmtime engine")?;
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

/// The cache directory to use: `given` (`--cache-dir` or
/// `$RSGI_WASM_CACHE`), else `$XDG_CACHE_HOME/rsgi-wasm` or `~/.cache/rsgi-wasm`;
/// created private if missing, and refused unless it can be trusted (see
/// [`check_trusted`]). Never a shared temporary directory.
pub fn cache_dir(given: Option<PathBuf>) -> Result<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    let dir = given
        .filter(|d| !d.as_os_str().is_empty())
        .or_else(|| var("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("rsgi-wasm")))
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache").join("rsgi-wasm")))
        .context(
            "no cache directory: set HOME or XDG_CACHE_HOME, or pass --cache-dir DIR \
             (a directory only you can write to)",
        )?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating the cache directory {}", dir.display()))?;
    check_trusted(&dir)?;
    let files = dir.join("files");
    if files.exists() {
        check_trusted(&files)?;
    }
    Ok(dir)
}

/// Compiled artifacts in the cache are native code loaded without further
/// checks, and the unpacked file trees become the app's code: refuse a
/// directory another user owns or may write to.
pub fn check_trusted(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        bail!(
            "refusing the cache directory {}: it belongs to user {}, not to you (user {me}); \
             compiled code in it would run as you. Use a directory of your own with --cache-dir",
            dir.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o022 != 0 {
        bail!(
            "refusing the cache directory {}: others may write to it (mode {:o}), and compiled \
             code in it would run as you. Fix it with: chmod go-w {}",
            dir.display(),
            meta.mode() & 0o7777,
            dir.display()
        );
    }
    Ok(())
}

/// Loads components for one engine; a file loaded twice (many tenants of
/// one component, or a reload) shares one `Component`, so its code is
/// mapped once and the file is hashed once.
pub struct Loader {
    engine: Engine,
    cache_dir: PathBuf,
    loaded: Mutex<HashMap<FileKey, Loaded>>,
}

/// A compiled component and the read-only file tree it ships.
#[derive(Clone)]
pub struct Loaded {
    /// The compiled code.
    pub component: Component,
    /// Its own files (stdlib, app dirs, site-packages), unpacked in the cache.
    pub files: Arc<[Mount]>,
}

/// A component file as last seen: path, size, modification time.
type FileKey = (PathBuf, u64, Option<SystemTime>);

fn file_key(path: &Path) -> Result<FileKey> {
    let meta = std::fs::metadata(path).with_context(|| cannot_read(path))?;
    Ok((
        path.canonicalize().unwrap_or_else(|_| path.to_path_buf()),
        meta.len(),
        meta.modified().ok(),
    ))
}

impl Loader {
    /// A loader that caches compiled artifacts in `cache_dir`.
    pub fn new(engine: Engine, cache_dir: PathBuf) -> Self {
        Loader {
            engine,
            cache_dir,
            loaded: Mutex::new(HashMap::new()),
        }
    }

    /// The engine components are loaded into.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Forget every loaded component but those of `in_use` as they are on
    /// disk now: after a reload, a replaced component's compiled code is
    /// freed once the pools that still run it finish.
    pub fn retain(&self, in_use: &[&Path]) {
        let keep: Vec<FileKey> = in_use.iter().filter_map(|p| file_key(p).ok()).collect();
        self.loaded
            .lock()
            .expect("loader lock")
            .retain(|k, _| keep.contains(k));
    }

    /// The component at `path`, from memory if this file (same size and
    /// mtime) was loaded before, else from the artifact cache or compiled.
    pub fn load(&self, path: &Path) -> Result<Loaded> {
        let key = file_key(path)?;
        if let Some(c) = self.loaded.lock().expect("loader lock").get(&key) {
            return Ok(c.clone());
        }
        let c = load_component(&self.engine, path, &self.cache_dir)?;
        self.loaded
            .lock()
            .expect("loader lock")
            .insert(key, c.clone());
        Ok(c)
    }
}

/// Load `path` as a component with its file tree.
/// The file is streamed through the hash; only a first start (compiling)
/// reads it whole, so a cached start never holds the component in memory.
pub fn load_component(engine: &Engine, path: &Path, cache_dir: &Path) -> Result<Loaded> {
    let unreadable = || cannot_read(path);
    let mut file = std::fs::File::open(path).with_context(unreadable)?;
    let mut head = Vec::with_capacity(8);
    (&mut file)
        .take(8)
        .read_to_end(&mut head)
        .with_context(unreadable)?;
    check_header(&head, path)?;
    file.rewind().with_context(unreadable)?;
    let digest = bundle::digest(&mut file).with_context(unreadable)?;
    let files = bundle::mounts(&mut file, &digest, cache_dir)
        .with_context(|| format!("loading the files shipped in {}", path.display()))?;
    Ok(Loaded {
        component: compile_cached(engine, &mut file, &digest, path, cache_dir)?,
        files: files.into(),
    })
}

fn cannot_read(path: &Path) -> String {
    format!("cannot read component {}", path.display())
}

/// Compile a component once and reuse the native artifact from `cache_dir`
/// afterwards (keyed by content and engine).
fn compile_cached(
    engine: &Engine,
    file: &mut std::fs::File,
    digest: &str,
    path: &Path,
    cache_dir: &Path,
) -> Result<Component> {
    let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
    engine
        .precompile_compatibility_hash()
        .hash(&mut engine_hash);
    let key = format!("{digest}-{:016x}", engine_hash.finish());
    let cached = cache_dir.join(format!("{key}.cwasm"));
    if cached.is_file() {
        // SAFETY: the file was written by `precompile_component` of an engine
        // with the same compatibility hash (it is in the name), into a cache
        // directory owned by this user; wasmtime re-checks its header.
        match unsafe { Component::deserialize_file(engine, &cached) } {
            Ok(c) => {
                metrics::artifact_cache(true);
                return Ok(c);
            }
            Err(e) => tracing::warn!(
                "ignoring unusable cached artifact {}: {e:#}",
                cached.display()
            ),
        }
    }

    metrics::artifact_cache(false);
    tracing::info!(
        "compiling {} (first start only; cached in {})",
        path.display(),
        cache_dir.display()
    );
    let mut bytes = Vec::new();
    file.rewind()
        .and_then(|()| file.read_to_end(&mut bytes))
        .with_context(|| cannot_read(path))?;
    let t = Instant::now();
    let compiled = engine
        .precompile_component(&bytes)
        .map_err(anyhow::Error::from)
        .with_context(|| {
            format!(
                "{} is not a valid WebAssembly component (was it built by `rsgi-wasm build`?)",
                path.display()
            )
        })?;
    tracing::info!("compiled in {:.1}s", t.elapsed().as_secs_f64());
    if let Err(e) = cachefs::write_atomic(&cached, &compiled) {
        tracing::warn!(
            "cannot cache the compiled component in {}: {e:#}",
            cache_dir.display()
        );
        // SAFETY: the bytes were just produced by this engine.
        return unsafe { Component::deserialize(engine, &compiled) }.map_err(Into::into);
    }
    // SAFETY: as above; the file now holds exactly what this engine wrote.
    unsafe { Component::deserialize_file(engine, &cached) }.map_err(Into::into)
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
pub fn prepare(engine: &Engine, component: &Component, path: &Path) -> Result<AppPre> {
    let mut linker: Linker<HostState> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    crate::runtime::quota_fs::add_to_linker(&mut linker, HostState::quota_fs)?;
    WsgiApp::add_to_linker::<HostState, HasSelf<WsgiCtx>>(&mut linker, HostState::wsgi)?;
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
