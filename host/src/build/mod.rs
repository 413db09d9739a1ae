//! `rsgi-wasm build`: MODULE:CALLABLE + its dependencies → a component,
//! using the embedded componentize-py (no Python needed for the build
//! itself; `-r requirements.txt` asks the local pip to resolve wheels).
//!
//! Steps: resolve dependencies (`deps`, cached by hash); hash everything the
//! component depends on and reuse an earlier build with the same key; else
//! lay out the guest adapter and a generated entry module, run
//! componentize-py (whose pre-initialisation imports the app and warms it
//! up), mend its list leak (`free_lists`), append the app's files
//! (`bundle`) and store the result in the cache.

pub mod deps;
mod free_lists;
mod immortal;
pub mod preinit;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use self::deps::Source;
use crate::bundle;
use crate::cachefs;
use crate::config::World;
use crate::error::UserError;
use crate::protocol::{self, FIXED_KEYS};

/// The guest adapter, compiled into the binary so `build` is self-contained.
const GUEST_FILES: &[(&str, &str)] = &[
    (
        "rsgi_wasm_guest/__init__.py",
        include_str!("../../../guest/rsgi_wasm_guest/__init__.py"),
    ),
    (
        "rsgi_wasm_guest/boot.py",
        include_str!("../../../guest/rsgi_wasm_guest/boot.py"),
    ),
    (
        "rsgi_wasm_guest/compat.py",
        include_str!("../../../guest/rsgi_wasm_guest/compat.py"),
    ),
    (
        "rsgi_wasm_guest/component.py",
        include_str!("../../../guest/rsgi_wasm_guest/component.py"),
    ),
    (
        "rsgi_wasm_guest/script.py",
        include_str!("../../../guest/rsgi_wasm_guest/script.py"),
    ),
    (
        "rsgi_wasm_guest/protocol.py",
        include_str!("../../../guest/rsgi_wasm_guest/protocol.py"),
    ),
    (
        "rsgi_wasm_guest/wsgi_input.py",
        include_str!("../../../guest/rsgi_wasm_guest/wsgi_input.py"),
    ),
    (
        "rsgi_wasm_guest/http_component.py",
        include_str!("../../../guest/rsgi_wasm_guest/http_component.py"),
    ),
    (
        "rsgi_wasm_guest/wasi_http.py",
        include_str!("../../../guest/rsgi_wasm_guest/wasi_http.py"),
    ),
    (
        "rsgi_wasm_guest/tls.py",
        include_str!("../../../guest/rsgi_wasm_guest/tls.py"),
    ),
    // The stdlib's `ssl` imports the C module `_ssl`, which CPython for
    // WASI lacks: this one is `tls.py`, over the host's rustls.
    ("_ssl.py", include_str!("../../../guest/_ssl.py")),
];
const WIT: &str = include_str!("../../../wit/wsgi.wit");
/// The WASI 0.2.0 packages `wsgi-http` includes (`wasi:http/proxy`), as
/// componentize-py resolves them: every file of each package.
const WIT_DEPS: &[(&str, &str)] = &wit_deps![
    "cli/command.wit",
    "cli/environment.wit",
    "cli/exit.wit",
    "cli/imports.wit",
    "cli/run.wit",
    "cli/stdio.wit",
    "cli/terminal.wit",
    "clocks/monotonic-clock.wit",
    "clocks/wall-clock.wit",
    "clocks/world.wit",
    "filesystem/preopens.wit",
    "filesystem/types.wit",
    "filesystem/world.wit",
    "http/handler.wit",
    "http/proxy.wit",
    "http/types.wit",
    "io/error.wit",
    "io/poll.wit",
    "io/streams.wit",
    "io/world.wit",
    "random/insecure-seed.wit",
    "random/insecure.wit",
    "random/random.wit",
    "random/world.wit",
    "sockets/instance-network.wit",
    "sockets/ip-name-lookup.wit",
    "sockets/network.wit",
    "sockets/tcp-create-socket.wit",
    "sockets/tcp.wit",
    "sockets/udp-create-socket.wit",
    "sockets/udp.wit",
    "sockets/world.wit",
];
/// The Python module names the wasi-http guest imports its interfaces by
/// (`guest/rsgi_wasm_guest/http_component.py`), pinned so they do not
/// depend on componentize-py's collision rules.
const HTTP_IMPORT_NAMES: &[(&str, &str)] = &[
    ("wasi:http/types@0.2.0", "http_types"),
    ("wasi:io/streams@0.2.0", "streams"),
];
const HTTP_EXPORT_NAMES: &[(&str, &str)] =
    &[("wasi:http/incoming-handler@0.2.0", "incoming_handler")];
const ENTRY_MODULE: &str = "rsgi_wasm_entry";
const WARMUP_REPORT: &str = "rsgi-wasm-warmup.txt";
/// Where the guest lists the snapshot's objects for [`immortal`].
const OBJECTS_LIST: &str = "rsgi-wasm-objects.bin";
/// What is done to componentize-py's output after it returns, in the build
/// key: a change here must not reuse components built before it.
const POST_PASSES: &str = "free-lists 1, immortal 1";

/// `(path, text)` of each file under `wit/deps`, embedded.
macro_rules! wit_deps {
    ($($path:literal),* $(,)?) => {
        [$(($path, include_str!(concat!("../../../wit/deps/", $path)))),*]
    };
}
use wit_deps;

/// The componentize-py whose CPython and stdlib are embedded (part of the
/// build cache key, and the stdlib copy's name).
const COMPONENTIZE_PY: &str = "componentize-py-0.25.1";

/// App directories bigger than this get a warning: probably data or build
/// output that should not ship.
const LARGE_APP_DIR: u64 = 64 << 20;

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// `module:callable`.
    pub target: String,
    /// Directories holding the app's own code.
    pub paths: Vec<PathBuf>,
    /// Dependencies to resolve or copy (requirements, pyproject, and/or an
    /// installed site-packages).
    pub deps: Vec<Source>,
    /// Where the component goes (`None`: only into the cache).
    pub output: Option<PathBuf>,
    /// Paths requested at build time.
    pub warmup: Vec<String>,
    /// Cache for dependencies, stdlib and built components.
    pub cache_dir: PathBuf,
    /// What the component exports.
    pub world: World,
    /// For `run --reload`: the app's own modules are not imported into the
    /// snapshot but on the first request, from its directories mounted
    /// live (`AppSpec::live_dirs`), so an edit to them needs a new
    /// instance, not a new build; the build then depends on their paths,
    /// not their contents.
    pub live: bool,
    /// How long componentize-py's linking and the app's pre-initialisation
    /// may take (`--build-timeout`).
    pub timeout: Duration,
}

/// What was built.
#[derive(Debug)]
pub struct BuildReport {
    /// The component: the output file, or its place in the cache.
    pub path: PathBuf,
    /// Size of the component in bytes.
    pub size: u64,
    /// The build's report: its warnings, what the import printed, and one
    /// line per warm-up request.
    pub warmup: Vec<String>,
    /// An identical earlier build was reused.
    pub cached: bool,
    /// A live build (`BuildOptions::live`): the app's directories to mount
    /// as they are, in `-p` order.
    pub live_dirs: Vec<PathBuf>,
}

/// Split `module:callable` (`module` alone: its `application`) and check
/// both parts look like Python names;
/// the callable may be a factory call, `create_app('prod', debug=True)`,
/// whose literal arguments the guest parses.
pub fn parse_target(target: &str) -> Result<(String, String), UserError> {
    let usage = || {
        match module_of_file(target) {
        Some(instead) => UserError(format!(
            "{target:?} names a file; the app is named by its module: {instead}"
        )),
        None => UserError(format!(
            "{target:?} is not MODULE:CALLABLE (for example `app:application`, `myproject.wsgi:application` or `app:create_app('prod')`)"
        )),
    }
    };
    // A bare module means its `application`, as gunicorn has it (but
    // `app.py` is a file name, not the module `py` of package `app`).
    let (module, callable) = match target.split_once(':') {
        Some(split) => split,
        None if target.ends_with(".py") => return Err(usage()),
        None => (target, "application"),
    };
    // `app.py:app` parses as the module `py` of a package `app`, which no
    // one means.
    if module.is_empty() || !module.split('.').all(is_identifier) || module.ends_with(".py") {
        return Err(usage());
    }
    let callable_path = match callable.split_once('(') {
        Some((path, _)) if callable.trim_end().ends_with(')') => path.trim_end(),
        Some(_) => return Err(usage()),
        None => callable,
    };
    if callable_path.is_empty() || !callable_path.split('.').all(is_identifier) {
        return Err(usage());
    }
    Ok((module.to_owned(), callable.to_owned()))
}

/// What to give instead of a file path for a target (`app/app.py:app`,
/// `./wsgi.py`, `myproject/wsgi:application`): its module, dotted where the
/// file is in a package under the current directory, else with `-p` for
/// the file's directory.
fn module_of_file(target: &str) -> Option<String> {
    let (file, callable) = target.split_once(':').unwrap_or((target, "application"));
    if !(file.ends_with(".py") || file.contains('/')) {
        return None;
    }
    let path = Path::new(file.strip_suffix(".py").unwrap_or(file));
    let module = path.file_name()?.to_str()?;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty() && *p != Path::new("."));
    let dotted = |dir: &Path| -> Option<String> {
        let parts = dir
            .components()
            .filter(|c| *c != std::path::Component::CurDir)
            .map(|c| match c {
                std::path::Component::Normal(name) => name.to_str().filter(|n| is_identifier(n)),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some(format!("{}.{module}", parts.join(".")))
    };
    let named = match parent {
        None => format!("`{module}:{callable}`"),
        Some(dir) => match dotted(dir).filter(|_| dir.join("__init__.py").is_file()) {
            Some(dotted) => format!("`{dotted}:{callable}`"),
            None => format!("`-p {} {module}:{callable}`", dir.display()),
        },
    };
    is_identifier(module).then_some(named)
}

/// `-o` may replace an earlier component, never another file: a typo
/// (`-o app.py`) must not overwrite the app's own source.
fn check_output(out: &Path) -> Result<(), UserError> {
    use std::io::Read as _;
    let refuse = |what: &str| {
        UserError(format!(
            "-o {}: {what}; refusing to overwrite it (give -o a path for the component, like app.wasm)",
            out.display()
        ))
    };
    if out.as_os_str().as_encoded_bytes().ends_with(b"/") {
        return Err(UserError(format!(
            "-o {}: names a directory; give -o a path for the component, like {}app.wasm",
            out.display(),
            out.display()
        )));
    }
    // Where it goes: the nearest directory that exists must be one this
    // process may write (a build takes seconds to minutes to find out).
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
    let nearest = parent
        .into_iter()
        .flat_map(Path::ancestors)
        .find(|p| p.as_os_str().is_empty() || std::fs::symlink_metadata(p).is_ok());
    if let Some(dir) = nearest.filter(|p| !p.as_os_str().is_empty()) {
        let cannot = |why: String| {
            UserError(format!(
                "-o {}: {} {why}; give -o a path in a directory you can write",
                out.display(),
                dir.display()
            ))
        };
        if !dir.is_dir() {
            return Err(cannot("is not a directory".into()));
        }
        if let Err(e) = rustix::fs::access(dir, rustix::fs::Access::WRITE_OK) {
            return Err(cannot(format!(
                "cannot be written ({})",
                std::io::Error::from(e)
            )));
        }
    }
    // Written by a rename over it: a device, a FIFO or a symlink would be
    // replaced by the file, not written through (`-o /dev/null` as root
    // made /dev/null a regular file, round DO).
    match std::fs::symlink_metadata(out) {
        Ok(m) if m.file_type().is_symlink() => Err(refuse(
            "is a symlink, which a build replaces rather than writes through",
        )),
        Ok(m) if !m.is_dir() && !m.is_file() => Err(refuse(
            "is not a regular file (a device, a FIFO or a socket)",
        )),
        _ => Ok(()),
    }?;
    match std::fs::metadata(out) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => Err(refuse("is a directory")),
        // An empty file holds nothing to lose (`mktemp`, a placeholder).
        Ok(m) if m.len() == 0 => Ok(()),
        Ok(_) => {
            let mut magic = [0u8; 4];
            let read = std::fs::File::open(out).and_then(|mut f| f.read_exact(&mut magic));
            match read {
                Ok(()) if &magic == b"\0asm" => Ok(()),
                _ => Err(refuse("exists and is not a WebAssembly file")),
            }
        }
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
}

/// Build the component described by `opts`, or reuse an identical build.
pub async fn build(opts: &BuildOptions) -> Result<BuildReport> {
    let (module, callable) = parse_target(&opts.target)?;
    if let Some(out) = &opts.output {
        check_output(out)?;
    }
    // Said before seconds of building whose result could not be kept.
    if let Err(e) = rustix::fs::access(&opts.cache_dir, rustix::fs::Access::WRITE_OK) {
        if e != rustix::io::Errno::NOENT {
            bail!(UserError(format!(
                "the cache {} cannot be written ({}): a build keeps its dependencies and its result there; \
                 make it writable, or give a writable one (`--cache-dir` or RSGI_WASM_CACHE)",
                opts.cache_dir.display(),
                std::io::Error::from(e)
            )));
        }
    }
    let paths = if opts.paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        opts.paths.clone()
    };
    let mut app_dirs = Vec::new();
    for p in &paths {
        let abs = p
            .canonicalize()
            .map_err(|_| UserError(format!("-p {}: no such directory", p.display())))?;
        if !abs.is_dir() {
            bail!(UserError(format!("-p {}: not a directory", p.display())));
        }
        if abs.parent().is_none() {
            bail!(UserError(format!(
                "-p {}: the whole filesystem cannot ship in a component; \
                 point -p at the app's own directory",
                p.display()
            )));
        }
        app_dirs.push(abs);
    }
    let resolved = resolve_deps(opts).await?;

    // Everything the component depends on goes into the key: this tool's
    // guest code and WIT, the target and warm-up paths, the app's files
    // and the prepared dependencies.
    let mut h = Sha256::new();
    h.update(env!("CARGO_PKG_VERSION"));
    h.update(COMPONENTIZE_PY);
    h.update(POST_PASSES);
    h.update(bundle::PACKING);
    for (name, text) in GUEST_FILES {
        h.update(name);
        h.update(text);
    }
    h.update(WIT);
    h.update(opts.world.name());
    for (path, text) in WIT_DEPS {
        h.update(path);
        h.update(text);
    }
    h.update(format!("{:?}", (&opts.target, &opts.warmup, FIXED_KEYS)));
    h.update([u8::from(opts.live)]);
    for dir in &app_dirs {
        h.update(dir.to_string_lossy().as_bytes());
        if opts.live {
            continue;
        }
        let bytes = bundle::hash_dir(&mut h, dir, bundle::Tree::App)?;
        if bytes > LARGE_APP_DIR {
            tracing::warn!(
                "-p {} holds {:.0} MB of files, all shipped in the component; \
                 keep data, build output and virtualenvs outside the app's directories",
                dir.display(),
                bytes as f64 / 1e6
            );
        }
    }
    for r in &resolved {
        h.update(&r.key);
    }
    let key = format!("{:x}", h.finalize())[..32].to_owned();
    let builds = opts.cache_dir.join("builds");
    let cached = builds.join(format!("{key}.wasm"));
    let report_file = builds.join(format!("{key}.warmup.txt"));

    let reused = cached.is_file().then(|| sound_build(&cached)).flatten();
    let hit = reused.is_some();
    let component = match reused {
        Some(component) => {
            if opts.live {
                // Every edit of a live app lands here: its files are not built in.
                tracing::debug!("{}: live build unchanged, reusing it", opts.target);
            } else {
                tracing::info!(
                    "{}: unchanged since the last build, reusing it",
                    opts.target
                );
            }
            component
        }
        None => {
            let component =
                generate(&module, &callable, &app_dirs, &resolved, opts, &report_file).await?;
            // The sum first: a reader that finds the entry finds its sum.
            cachefs::write_atomic(&build_sum_path(&cached), build_sum(&component).as_bytes())?;
            cachefs::write_atomic(&cached, &component)?;
            component
        }
    };
    let path = match &opts.output {
        Some(out) => {
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            // Renamed into place whole: a full disk or a crash keeps the
            // last good build, and a server reloading the file never reads
            // half of one.
            cachefs::write_atomic(out, &component)?;
            out.clone()
        }
        None => cached,
    };
    let size = std::fs::metadata(&path)?.len();
    let warmup = std::fs::read_to_string(&report_file)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    Ok(BuildReport {
        path,
        size,
        warmup,
        cached: hit,
        live_dirs: if opts.live { app_dirs } else { Vec::new() },
    })
}

/// Where the SHA-256 of the build cache's entry `cached` is kept.
fn build_sum_path(cached: &Path) -> PathBuf {
    cached.with_extension("sha256")
}

fn build_sum(component: &[u8]) -> String {
    format!("{:x}\n", Sha256::digest(component))
}

/// The build cache's `cached`, if it holds what was built: a damaged
/// entry (a bad block, a stray write, a truncation) would otherwise be
/// shipped by every later build as "unchanged". One that does not is
/// built again and replaced (not removed here: a build of the same app
/// in another process may be between writing the sum and the entry).
fn sound_build(cached: &Path) -> Option<Vec<u8>> {
    let sum = build_sum_path(cached);
    let why = match (std::fs::read(cached), std::fs::read_to_string(&sum)) {
        (Ok(component), Ok(recorded)) if build_sum(&component) == recorded => {
            return Some(component)
        }
        (Ok(_), Ok(_)) => "its bytes differ from what was built (checksum mismatch)".to_owned(),
        (Ok(_), Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            "it has no checksum (built by an older rsgi-wasm)".to_owned()
        }
        (Err(e), _) | (_, Err(e)) => format!("it cannot be read: {e}"),
    };
    tracing::warn!(
        "the build cache's {} is not used: {why}; building again",
        cached.display()
    );
    None
}

/// Builds under way, by their scratch directories.
static WORK_DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// A build's scratch directory, removed when the build ends, or by
/// [`remove_abandoned_work`] when the process exits with the build still
/// running (a `--reload` rebuild cut short by SIGTERM runs no destructor),
/// or by the next process's sweep of the run directory it is in when this
/// one was killed.
struct WorkDir(tempfile::TempDir);

impl WorkDir {
    fn new() -> Result<Self> {
        let dir = crate::scratch::work_dir("build-")?;
        let mut dirs = WORK_DIRS.lock().unwrap_or_else(|e| e.into_inner());
        dirs.push(dir.path().to_owned());
        Ok(WorkDir(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let mut dirs = WORK_DIRS.lock().unwrap_or_else(|e| e.into_inner());
        dirs.retain(|d| d != self.0.path());
    }
}

/// End the pip runs of builds still running as the process exits, and
/// remove their scratch directories (the pre-initialisation's child dies
/// with the process by itself).
pub fn remove_abandoned_work() {
    deps::stop_all_running();
    let dirs = std::mem::take(&mut *WORK_DIRS.lock().unwrap_or_else(|e| e.into_inner()));
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Run componentize-py on the app and append its files; returns the bytes.
async fn generate(
    module: &str,
    callable: &str,
    app_dirs: &[PathBuf],
    resolved: &[deps::Resolved],
    opts: &BuildOptions,
    report_file: &Path,
) -> Result<Vec<u8>> {
    let (warmup, cache_dir, world) = (&opts.warmup, &opts.cache_dir, opts.world);
    let t0 = Instant::now();
    let work = WorkDir::new()?;
    let guest_dir = work.path().join("guest");
    std::fs::create_dir_all(guest_dir.join("rsgi_wasm_guest"))?;
    for (name, text) in GUEST_FILES {
        std::fs::write(guest_dir.join(name), text)?;
    }
    let wit_dir = work.path().join("wit");
    std::fs::create_dir_all(&wit_dir)?;
    std::fs::write(wit_dir.join("wsgi.wit"), WIT)?;
    for (path, text) in WIT_DEPS {
        let file = wit_dir.join("deps").join(path);
        std::fs::create_dir_all(file.parent().expect("a WIT file has a directory"))?;
        std::fs::write(file, text)?;
    }

    // The stdlib ships with every component (for lazy imports); the guest
    // copies it out of componentize-py on the first build, then it is reused.
    let stdlib = cache_dir.join("stdlib").join(COMPONENTIZE_PY);
    let export_stdlib = !stdlib.join("os.py").is_file();

    // componentize-py mounts python_path[i] at /i during pre-initialisation:
    // index 0 is the adapter, then the app's dirs, then dependencies. The
    // guest knows each by its original path (`mounts`), and the same
    // files are mounted read-only at run time.
    let sources: Vec<&PathBuf> = app_dirs
        .iter()
        .chain(resolved.iter().map(|r| &r.dir))
        .collect();
    let mounts: Vec<(String, String)> = sources
        .iter()
        .enumerate()
        .map(|(i, host)| (format!("/{}", i + 1), host.to_string_lossy().into_owned()))
        .collect();
    // componentize-py mounts each directory writable while the app is
    // imported: it gets copies, so neither the app's own directories nor
    // the dependencies cached for other builds can be written by it. They
    // are also what gets packed: the files the snapshot was taken from.
    let mut python_path: Vec<PathBuf> = vec![guest_dir.clone()];
    let tree_of = |i: usize| {
        if i < app_dirs.len() {
            bundle::Tree::App
        } else {
            bundle::Tree::Packages
        }
    };
    for (i, dir) in sources.iter().enumerate() {
        let copy = work.path().join("src").join((i + 1).to_string());
        std::fs::create_dir_all(&copy)?;
        // A live build's own directories are mounted as they are at run
        // time, and its key leaves their contents out: what they held now
        // must not ship, or a later edit (a huge file removed) would be
        // served the component built with it.
        if !(opts.live && tree_of(i) == bundle::Tree::App) {
            bundle::copy_files(dir, &copy, tree_of(i))?;
        }
        python_path.push(copy);
    }
    let native: std::collections::BTreeMap<&str, &str> = resolved
        .iter()
        .flat_map(|r| r.native.iter())
        .map(|(m, d)| (m.as_str(), d.as_str()))
        .collect();
    let whole_trees: std::collections::BTreeSet<&str> = resolved
        .iter()
        .filter(|r| r.whole_tree)
        .flat_map(|r| r.native.values())
        .map(String::as_str)
        .collect();
    // The entry module's arguments travel as JSON, read at
    // pre-initialisation from /0 where the adapter is mounted.
    let args = serde_json::json!({
        "module": module,
        "expr": callable,
        "mounts": mounts,
        "app_dirs": app_dirs.len(),
        "native": native,
        "lenient": whole_trees,
        "warmup": warmup,
        "report_path": format!("/0/{WARMUP_REPORT}"),
        "stdlib_export": export_stdlib.then_some("/0/stdlib"),
        "fixed_keys": FIXED_KEYS,
        "world": world.name(),
        "live": opts.live,
    });
    std::fs::write(
        guest_dir.join(format!("{ENTRY_MODULE}.json")),
        serde_json::to_vec_pretty(&args)?,
    )?;
    // componentize-py looks the exported classes up by interface name.
    let exports = match world {
        World::Wsgi => "Handler, Command",
        World::WasiHttp => "(IncomingHandler,)",
    };
    // The heap is settled last, once boot's locals and the file's buffers
    // are freed (see `settle_heap`).
    let entry = format!(
        "# Generated by rsgi-wasm build: the component's top-level module.\n\
         import json\n\n\
         from rsgi_wasm_guest.boot import boot, settle_heap\n\n\
         with open(\"/0/{ENTRY_MODULE}.json\", encoding=\"utf-8\") as f:\n    \
         {exports} = boot(**json.load(f))\n\
         del f\n\
         settle_heap(\"/0/{OBJECTS_LIST}\")\n"
    );
    std::fs::write(guest_dir.join(format!("{ENTRY_MODULE}.py")), entry)?;

    tracing::info!(
        "building {module}:{callable}: linking CPython 3.14 for WASI and pre-initialising the app"
    );
    let tmp_out = work.path().join("app.wasm");
    let job = preinit::Job {
        wit: wit_dir,
        world,
        python_path: python_path.clone(),
        app_name: ENTRY_MODULE.to_owned(),
        output: tmp_out.clone(),
    };
    match with_progress(job.run_bounded(opts.timeout), t0).await? {
        Ok(()) => {}
        Err(preinit::PreinitError::Failed(text)) => {
            tracing::debug!("componentize-py's report: {text}");
            let lines: Vec<&str> = text
                .lines()
                .filter_map(|l| l.split_once(protocol::BUILD_ERROR_MARKER).map(|(_, m)| m))
                .collect();
            // `os._exit()` (or C code's `exit()`) while importing ends the
            // pre-initialisation with wasmtime's backtrace, not our marker.
            if lines.is_empty() {
                if let Some(status) = text
                    .split_once("Exited with i32 exit status ")
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                {
                    let how = if status == "0" {
                        "successfully"
                    } else {
                        "with a failure (WASI 0.2 carries no exit number)"
                    };
                    bail!(UserError(format!(
                        "importing '{module}' (or its warm-up, or a dependency's .pth file) exited \
                         the process {how} (os._exit or a C-level exit): an app must not exit while \
                         it is imported or serves a request"
                    )));
                }
                // componentize-py copies the heap out in one piece, within
                // a budget of its wasmtime's; past it this is all it says.
                if text.contains("fuel allocated for hostcalls has been exhausted") {
                    bail!(UserError(format!(
                        "{module}:{callable}: the app's heap after its import and warm-up is too \
                         large to snapshot (the build copies it out in one piece): allocate large \
                         buffers on the first request instead of at import or on the warm-up paths \
                         ({text})"
                    )));
                }
                bail!(UserError(format!(
                    "componentize-py failed to build the component:\n{text}"
                )));
            }
            // What the app printed before it failed comes first (its
            // stdout, then its stderr, each capped by the guest): often
            // the clue to the error.
            let printed = text
                .find(protocol::BUILD_ERROR_MARKER)
                .map_or("", |at| text[..at].trim_end());
            // A package that cannot import without its dropped native part
            // (numpy): what to do if the app never imports it.
            let mut lines: Vec<String> = lines.into_iter().map(str::to_owned).collect();
            if lines.iter().any(|l| l.contains(deps::CANNOT_LOAD)) {
                lines.push(format!("({})", deps::NOT_IMPORTED));
            }
            if printed.is_empty() {
                bail!(UserError(lines.join("\n")));
            }
            bail!(UserError(format!(
                "{}\n\nwhat the app printed while it was imported:\n{printed}",
                lines.join("\n")
            )));
        }
        // A live build imports nothing of the app (each instance does,
        // within --timeout): only linking and the libraries took so long.
        Err(preinit::PreinitError::TimedOut(limit)) if opts.live => bail!(UserError(format!(
            "{module}:{callable}: linking CPython and the app's dependencies did not finish \
             within {}s (--build-timeout; the app itself is imported by each instance, within \
             --timeout): give a longer --build-timeout on a busy machine",
            limit.as_secs_f64()
        ))),
        Err(preinit::PreinitError::TimedOut(limit)) => bail!(UserError(format!(
            "{module}:{callable}: linking, importing the app and its warm-up requests did not \
             finish within {}s (--build-timeout): look for an endless loop, a sleep or a wait \
             for the network at import time or on the warm-up paths, or give a longer \
             --build-timeout",
            limit.as_secs_f64()
        ))),
        Err(e @ preinit::PreinitError::Died(..)) => {
            bail!(UserError(format!("{module}:{callable}: {e}")))
        }
    }
    if export_stdlib {
        // Under a name of its own first: another build may be publishing
        // or reading the same entry right now.
        let staged = cachefs::staging(&stdlib)?.keep();
        std::fs::remove_dir(&staged)?;
        cachefs::move_tree(&guest_dir.join("stdlib"), &staged)
            .with_context(|| format!("caching the standard library in {}", stdlib.display()))?;
        cachefs::publish(&staged, &stdlib, |d| d.join("os.py").is_file())?;
    }

    let mut roots = vec![("python".to_owned(), stdlib, bundle::Tree::Packages)];
    roots.extend(
        python_path
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, dir)| (i.to_string(), dir.clone(), tree_of(i - 1))),
    );
    let packed = bundle::pack(&roots)?;
    tracing::info!(
        "packed {} files ({:.1} MB compressed) for run-time imports and reads",
        packed.files,
        packed.archive.len() as f64 / 1e6
    );
    if let Some(warning) = past_default_unpack(packed.bytes) {
        tracing::warn!("{warning}");
    }
    let archive = packed.archive;
    let component =
        std::fs::read(&tmp_out).with_context(|| format!("reading {}", tmp_out.display()))?;
    let mut component = free_lists::mend(&component)?;
    // An optimisation: without it the build stands, every object mortal.
    let immortal = std::fs::read(guest_dir.join(OBJECTS_LIST))
        .context("the guest wrote no list of the snapshot's objects")
        .and_then(|objects| immortal::apply(&mut component, &objects));
    match immortal {
        Ok(outcome) => tracing::debug!(
            "made {} of the snapshot's {} listed objects immortal",
            outcome.immortal,
            outcome.listed
        ),
        Err(e) => tracing::warn!(
            "snapshot objects left mortal (requests will write their reference counts): {e:#}"
        ),
    }
    bundle::append(&mut component, &archive);
    let report = guest_dir.join(WARMUP_REPORT);
    if report.is_file() {
        let builds = report_file.parent().expect("report has a parent");
        std::fs::create_dir_all(builds)
            .and_then(|()| std::fs::copy(&report, report_file))
            .with_context(|| format!("caching the build's report in {}", builds.display()))?;
    }
    Ok(component)
}

/// What every start would refuse with the defaults, said at build time:
/// a component whose files (`bytes`) pass `--max-unpacked`'s default.
fn past_default_unpack(bytes: u64) -> Option<String> {
    let default = crate::config::parse_size(crate::config::DEFAULT_MAX_UNPACKED)
        .expect("the default --max-unpacked parses");
    let mib = bytes.div_ceil(1 << 20);
    (bytes > default).then(|| {
        format!(
            "the component ships {mib} MiB of files, more than `run`, `serve` and `exec` unpack \
             by default ({} MiB): start them with --max-unpacked {mib}MiB or more, or leave out \
             what the app does not need (data, a virtualenv, tests)",
            default >> 20
        )
    })
}

/// Await a long step, logging every few seconds that it is still running.
/// The app's dependencies and the timezone database, prepared by pip on
/// a blocking thread within `--build-timeout`; the pip runs end with the
/// build if it is interrupted (dropped) or runs out of time.
async fn resolve_deps(opts: &BuildOptions) -> Result<Vec<deps::Resolved>> {
    struct StopPip(u64);
    impl Drop for StopPip {
        fn drop(&mut self) {
            deps::stop_running(self.0);
        }
    }
    static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (sources, cache) = (opts.deps.clone(), opts.cache_dir.clone());
    let work = tokio::task::spawn_blocking(move || {
        deps::for_build(id, || -> Result<Vec<deps::Resolved>> {
            deps::check_sources(&sources)?;
            let mut resolved = Vec::new();
            for source in &sources {
                resolved.push(deps::resolve(source, &cache)?);
            }
            // Django's default `USE_TZ = True` and any `zoneinfo.ZoneInfo(...)`
            // need the timezone database, which WASI has no system copy of.
            if !resolved.iter().any(|r| r.dir.join("tzdata").is_dir()) {
                match deps::timezone_data(&cache, &deps::index_of(&sources)?) {
                    Ok(tz) => resolved.push(tz),
                    Err(e) => tracing::warn!(
                        "building without the timezone database (zoneinfo will know only UTC): \
                         {e:#}; to build without reaching an index, list tzdata in the \
                         requirements and put its wheel where their --find-links points"
                    ),
                }
            }
            Ok(resolved)
        })
    });
    let _stop = StopPip(id);
    let t0 = Instant::now();
    match tokio::time::timeout(opts.timeout, with_progress(work, t0)).await {
        Ok(joined) => joined.context("resolving dependencies")?,
        Err(_) => bail!(UserError(format!(
            "resolving the app's dependencies took longer than --build-timeout ({:?}); \
             raise it if pip needs longer here",
            opts.timeout
        ))),
    }
}

async fn with_progress<T>(step: impl std::future::Future<Output = T>, t0: Instant) -> T {
    tokio::pin!(step);
    let mut ticks =
        tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    loop {
        tokio::select! {
            out = &mut step => return out,
            _ = ticks.tick() => {
                tracing::info!("still building ({:.0}s so far)", t0.elapsed().as_secs_f64());
            }
        }
    }
}

const PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_past_the_default_unpack_cap_says_which_flag_starts_it() {
        assert_eq!(past_default_unpack(1 << 30), None);
        let said = past_default_unpack((1 << 30) + 1).unwrap();
        assert!(said.contains("ships 1025 MiB"), "{said}");
        assert!(said.contains("--max-unpacked 1025MiB"), "{said}");
    }

    #[test]
    fn targets_are_checked() {
        assert_eq!(
            parse_target("app:application").unwrap(),
            ("app".into(), "application".into())
        );
        assert_eq!(
            parse_target("my.proj.wsgi:make_app()").unwrap().1,
            "make_app()"
        );
        assert_eq!(
            parse_target("app:create_app('sqlite:///x', debug=True)").unwrap(),
            ("app".into(), "create_app('sqlite:///x', debug=True)".into())
        );
        assert!(parse_target("app:create_app('x'").is_err());
        assert!(parse_target("app:(lambda: 1)()").is_err());
        assert_eq!(
            parse_target("pkg.wsgi").unwrap(),
            ("pkg.wsgi".into(), "application".into())
        );
        assert!(parse_target("app.py").is_err());
        let hint = |t: &str| parse_target(t).unwrap_err().0;
        assert_eq!(
            hint("app/app.py:app"),
            "\"app/app.py:app\" names a file; the app is named by its module: `-p app app:app`"
        );
        assert!(hint("./wsgi.py").ends_with(": `wsgi:application`"));
        assert!(hint("fsapp.py:app").ends_with(": `fsapp:app`"));
        assert!(hint("/srv/x/my-app.py:app").contains("is not MODULE:CALLABLE"));
        let dir = tempfile::tempdir().unwrap();
        let pkg = dir.path().join("proj");
        std::fs::create_dir(&pkg).unwrap();
        std::fs::write(pkg.join("__init__.py"), "").unwrap();
        let file = format!("{}/wsgi.py:application", pkg.display());
        // Absolute: the package is not under the current directory.
        assert!(hint(&file).ends_with(&format!("`-p {} wsgi:application`", pkg.display())));
        assert!(parse_target("app:").is_err());
        assert!(parse_target("app-x:app").is_err());
        assert!(parse_target(":app").is_err());
    }
}
