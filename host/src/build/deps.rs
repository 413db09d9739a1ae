//! An app's dependencies for the WASI target: `requirements.txt` or
//! `pyproject.toml` resolved by pip (pure wheels; wheels whose native part
//! is optional, with it dropped; sdists built into pure wheels), or an
//! already-installed site-packages. Each is prepared once, cached by hash.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::bundle;
use crate::cachefs;
use crate::error::UserError;

/// Where the dependencies come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// `-r requirements.txt`.
    Requirements(PathBuf),
    /// `--pyproject pyproject.toml` (PEP 621 `[project].dependencies`).
    Pyproject(PathBuf),
    /// `--site-packages DIR`, installed already.
    SitePackages(PathBuf),
}

/// A prepared site-packages.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The directory to put on the guest's path.
    pub dir: PathBuf,
    /// Native modules that were dropped → their distribution.
    pub native: BTreeMap<String, String>,
    /// Content key (part of the build cache key).
    pub key: String,
    /// An installed tree (`--site-packages`), not packages asked for one by
    /// one: one that cannot import without its native part is a warning.
    pub whole_tree: bool,
}

/// The CPython an app runs on.
const TARGET_PYTHON: &str = "3.14";

/// pip options that pick wheels for CPython 3.14 on WASI: pure wheels, and
/// Linux wheels whose native part is optional (it is dropped afterwards).
const PIP_TARGET: &[&str] = &[
    "--only-binary=:all:",
    "--python-version",
    TARGET_PYTHON,
    "--implementation",
    "cp",
    "--abi",
    "cp314",
    "--abi",
    "abi3",
    "--abi",
    "none",
    "--platform",
    "any",
    "--platform",
    "manylinux2014_x86_64",
    "--platform",
    "manylinux_2_17_x86_64",
    "--platform",
    "manylinux_2_28_x86_64",
];

/// Runs pip with the environment markers of the target, CPython 3.14 on
/// WASI, as the guest reports them (`sys.platform`, `platform.machine()`
/// and the rest; tests/build.rs checks they still agree). pip evaluates
/// markers against the interpreter that runs it, even with
/// `--python-version`, so without this a 3.11 build machine skipped
/// `legacy-cgi; python_version >= "3.13"` (WebOb) and took Linux-only
/// dependencies. The resolver stays pip's; only its marker environment is
/// the target's.
const PIP_FOR_TARGET: &str = r#"
import runpy, sys
from pip._vendor.packaging import markers
WASI = {
    "implementation_name": "cpython",
    "implementation_version": "3.14.0",
    "os_name": "posix",
    "platform_machine": "wasm32",
    "platform_release": "0.0.0",
    "platform_system": "wasi",
    "platform_version": "0.0.0",
    "python_full_version": "3.14.0",
    "platform_python_implementation": "CPython",
    "python_version": "3.14",
    "sys_platform": "wasi",
}
markers.default_environment = lambda: dict(WASI)
# `pip install` checks Requires-Python against the interpreter running it,
# not --python-version (only `pip download` passes that on, up to pip 25 at
# least): a 3.11 build machine refused Django 6 (>=3.12) and quietly took
# Django 5. The resolver's idea of the Python is the target's too.
try:
    from pip._internal.resolution.resolvelib import factory
    _init = factory.Factory.__init__
    def _for_target(self, *args, **kwargs):
        _init(self, *args, **kwargs)
        self._python_candidate = factory.RequiresPythonCandidate((3, 14, 0))
    factory.Factory.__init__ = _for_target
except (ImportError, AttributeError):
    pass
sys.argv[0] = "pip"
runpy.run_module("pip", run_name="__main__", alter_sys=True)
"#;

/// The timezone database every component ships (Python's `zoneinfo`
/// finds it when the system has none, as in WASI). An app that lists
/// `tzdata` itself gets its own version instead.
const TZDATA: &str = "tzdata==2026.6";

/// How many sdist-only packages one resolution may build.
const MAX_SDISTS: usize = 16;

/// Process groups of the pip runs under way, by the build that started
/// them: pip starts build backends, which start compilers, none of which
/// a signal to us reaches.
static RUNNING: Mutex<Vec<(u64, i32)>> = Mutex::new(Vec::new());

std::thread_local! {
    /// The build this thread resolves for ([`for_build`]).
    static BUILD: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Run `resolve` on this thread for build `id`: the pip runs it starts are
/// the ones [`stop_running`]`(id)` ends.
pub fn for_build<T>(id: u64, resolve: impl FnOnce() -> T) -> T {
    BUILD.with(|b| b.set(id));
    resolve()
}

/// Run `cmd` to completion in a process group of its own, which
/// [`stop_running`] can end whole.
fn output(cmd: &mut Command) -> std::io::Result<Output> {
    let child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let run = (
        BUILD.with(std::cell::Cell::get),
        i32::try_from(child.id()).unwrap_or(i32::MAX),
    );
    RUNNING.lock().expect("running lock").push(run);
    let out = child.wait_with_output();
    RUNNING.lock().expect("running lock").retain(|&r| r != run);
    out
}

/// End build `id`'s pip runs under way, with what they started: the build
/// was interrupted or ran out of time.
pub fn stop_running(id: u64) {
    stop_where(|build| build == id);
}

/// Kill the process group of every pip run of a build `which` picks.
fn stop_where(which: impl Fn(u64) -> bool) {
    let running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    for &(_, group) in running.iter().filter(|r| which(r.0)) {
        if let Some(pid) = rustix::process::Pid::from_raw(group) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

/// What pip says causes a version conflict (on stdout, as information),
/// which says what to change.
fn conflict_cause(stdout: &str) -> Option<&str> {
    let at = stdout.find("The conflict is caused by:")?;
    stdout[at..].split("\n\n").next().map(str::trim_end)
}

/// End every pip run still under way: the process is exiting, and a
/// rebuild's thread (`run --reload`) is not there to end its own. Each
/// runs in a process group of its own, which the terminal's Ctrl-C does
/// not reach.
pub fn stop_all_running() {
    stop_where(|_| true);
}

/// Prepare `source` in `cache` (or reuse what an earlier build prepared).
pub fn resolve(source: &Source, cache: &Path) -> Result<Resolved> {
    match source {
        Source::Requirements(file) => {
            let text = std::fs::read(file)
                .map_err(|e| UserError(format!("-r {}: {e}", file.display())))?;
            install(&text, file, &format!("-r {}", file.display()), cache)
        }
        Source::Pyproject(file) => {
            let deps = pyproject_dependencies(file)?;
            let text = deps.join("\n") + "\n";
            let dir = cache.join("deps");
            std::fs::create_dir_all(&dir)?;
            let generated = dir.join(format!("pyproject-{}.txt", &hex(text.as_bytes())[..16]));
            std::fs::write(&generated, &text)?;
            install(
                text.as_bytes(),
                &generated,
                &format!("--pyproject {}", file.display()),
                cache,
            )
        }
        Source::SitePackages(dir) => copy_site_packages(dir, cache),
    }
}

/// Refuse what no pip run can fix before any runs: a `--site-packages`
/// that is not a directory would otherwise be reported only after the
/// requirements were resolved, minutes later.
pub fn check_sources(sources: &[Source]) -> Result<()> {
    for source in sources {
        if let Source::SitePackages(dir) = source {
            site_packages_is_a_dir(dir)?;
            if let Some(version) = installed_for(dir).filter(|v| v != TARGET_PYTHON) {
                tracing::warn!(
                "--site-packages {}: installed for Python {version}, and the app runs on CPython \
                 {TARGET_PYTHON}: what pip chose by version (markers like `python_version < \"3.12\"`, \
                 wheels for {version}) may be missing or wrong there; -r requirements.txt resolves \
                 for {TARGET_PYTHON}",
                dir.display()
            );
            }
        }
    }
    Ok(())
}

fn site_packages_is_a_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        bail!(UserError(format!(
            "--site-packages {}: no such directory",
            dir.display()
        )));
    }
    if dir.join("pyvenv.cfg").is_file() {
        // Its packages are two levels down; packing the whole environment
        // would ship its interpreter links and find none of them.
        // The real one, ready to paste, where there is one.
        let inner = std::fs::read_dir(dir.join("lib"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("site-packages"))
            .find(|p| p.is_dir())
            .unwrap_or_else(|| dir.join("lib/python3.X/site-packages"));
        bail!(UserError(format!(
            "--site-packages {}: this is a virtualenv; give its site-packages directory ({})",
            dir.display(),
            inner.display()
        )));
    }
    Ok(())
}

/// The Python version an installed tree was made for: the `pythonX.Y` of
/// its path (a virtualenv's `lib/python3.11/site-packages`), else the tag
/// of the bytecode pip compiled in its packages (`pip install --target`).
fn installed_for(dir: &Path) -> Option<String> {
    let from_path = dir.canonicalize().ok().and_then(|path| {
        path.components().rev().find_map(|c| {
            let name = c.as_os_str().to_str()?;
            let (major, minor) = name.strip_prefix("python")?.split_once('.')?;
            let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            (numeric(major) && numeric(minor)).then(|| format!("{major}.{minor}"))
        })
    });
    from_path.or_else(|| {
        std::fs::read_dir(dir).ok()?.flatten().find_map(|package| {
            std::fs::read_dir(package.path().join("__pycache__"))
                .ok()?
                .flatten()
                .find_map(|pyc| {
                    let name = pyc.file_name().into_string().ok()?;
                    let tag = name.strip_suffix(".pyc")?.rsplit('.').next()?;
                    let minor = tag.strip_prefix("cpython-3")?;
                    (!minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit()))
                        .then(|| format!("3.{minor}"))
                })
        })
    })
}

/// Where the app's requirements tell pip to look (their `--index-url`,
/// `--no-index`, `--find-links`, ...), as pip arguments: the timezone
/// database is fetched from there too, so a build told to use a private
/// index, or none, never reaches another.
pub fn index_of(sources: &[Source]) -> Result<Vec<String>> {
    let mut args = Vec::new();
    for source in sources {
        if let Source::Requirements(file) = source {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            args.extend(index_options(file, &text)?);
        }
    }
    Ok(args)
}

/// The `tzdata` package, resolved once per machine and set of `index`
/// options ([`index_of`]).
pub fn timezone_data(cache: &Path, index: &[String]) -> Result<Resolved> {
    let dir = cache.join("deps");
    std::fs::create_dir_all(&dir)?;
    // The options as requirements-file lines, one option (and its value)
    // a line.
    let mut text = String::new();
    let mut args = index.iter().peekable();
    while let Some(arg) = args.next() {
        text += arg;
        if !matches!(arg.as_str(), "--no-index" | "--pre") {
            if let Some(value) = args.next() {
                text += &format!(" {value}");
            }
        }
        text.push('\n');
    }
    text += &format!("{TZDATA}\n");
    let file = if index.is_empty() {
        dir.join("tzdata.txt")
    } else {
        dir.join(format!("tzdata-{}.txt", &hex(text.as_bytes())[..16]))
    };
    cachefs::write_atomic(&file, text.as_bytes())?;
    install(
        text.as_bytes(),
        &file,
        "the timezone database (tzdata)",
        cache,
    )
}

fn hex(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

/// `[project].dependencies` of a PEP 621 pyproject.toml.
pub fn pyproject_dependencies(file: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| UserError(format!("--pyproject {}: {e}", file.display())))?;
    let doc: toml::Table = toml::from_str(&text).map_err(|e| {
        UserError(format!(
            "--pyproject {}: not valid TOML: {e}",
            file.display()
        ))
    })?;
    let Some(project) = doc.get("project").and_then(|p| p.as_table()) else {
        let hint = if doc.get("tool").and_then(|t| t.get("poetry")).is_some() {
            " (Poetry projects: `poetry export -f requirements.txt -o requirements.txt`, then build with -r)"
        } else {
            ""
        };
        bail!(UserError(format!(
            "--pyproject {}: no [project] table with dependencies (PEP 621){hint}",
            file.display()
        )));
    };
    let dynamic = project
        .get("dynamic")
        .and_then(|d| d.as_array())
        .is_some_and(|d| d.iter().any(|v| v.as_str() == Some("dependencies")));
    if dynamic {
        bail!(UserError(format!(
            "--pyproject {}: dependencies are dynamic; list them in a requirements.txt and build with -r",
            file.display()
        )));
    }
    let Some(deps) = project.get("dependencies") else {
        return Ok(Vec::new());
    };
    let deps = deps.as_array().ok_or_else(|| {
        UserError(format!(
            "--pyproject {}: [project].dependencies must be a list of strings",
            file.display()
        ))
    })?;
    deps.iter()
        .map(|d| {
            d.as_str().map(str::to_owned).ok_or_else(|| {
                UserError(format!(
                    "--pyproject {}: [project].dependencies must be a list of strings, found {d}",
                    file.display()
                ))
                .into()
            })
        })
        .collect()
}

/// Install `requirements` (whose content is `text`) into a cached
/// site-packages for the WASI target.
fn install(text: &[u8], requirements: &Path, label: &str, cache: &Path) -> Result<Resolved> {
    let mut h = Sha256::new();
    h.update(text);
    hash_referenced(&mut h, requirements, &String::from_utf8_lossy(text), 0)?;
    h.update(PIP_TARGET.join(" "));
    h.update(PIP_FOR_TARGET);
    h.update(NATIVE_IMPORTS);
    h.update(STRIPPING);
    let key = format!("{:x}", h.finalize())[..32].to_owned();
    prepare_once(
        cache.join("deps").join(&key),
        key,
        Asked::EachPackage,
        |tmp| {
            tracing::info!("resolving {label} for CPython 3.14 on WASI with pip");
            std::fs::create_dir_all(tmp.join("wheels"))?;
            let index = index_options(requirements, &String::from_utf8_lossy(text))?;
            pip_install(requirements, label, &index, tmp)
        },
    )
}

/// What a requirements walk meets: a line (comment and blanks removed,
/// with its file and 1-based number), or a file included by `-r`/`-c`.
enum Met<'a> {
    Line(&'a Path, usize, &'a str),
    Included(&'a Path, &'a str),
}

/// Show `visit` each line of requirements file `file` (content `text`),
/// and after an `-r`/`-c` line the file it names, read relative to `file`,
/// then that file's lines.
fn walk_requirements(
    file: &Path,
    text: &str,
    depth: usize,
    visit: &mut dyn FnMut(Met) -> Result<()>,
) -> Result<()> {
    // pip refuses deeper nesting long before; this only stops a cycle.
    if depth > 16 {
        return Ok(());
    }
    for (number, line) in logical_lines(text) {
        let line = line.as_str();
        visit(Met::Line(file, number, line))?;
        let included = ["-r", "--requirement", "-c", "--constraint"]
            .iter()
            .find_map(|flag| option_value(line, flag));
        if let Some(name) = included {
            let path = file.parent().unwrap_or(Path::new(".")).join(name);
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            visit(Met::Included(&path, &text))?;
            walk_requirements(&path, &text, depth + 1, visit)?;
        }
    }
    Ok(())
}

/// A requirements file's lines as pip reads them, each with the number of
/// its first physical line: without a byte-order mark (Windows editors
/// write one, and `-e` behind it went unseen), with lines ending in `\`
/// joined to the next, and without comments (`#` at the start or after
/// whitespace), trimmed.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = Vec::new();
    let mut joined: Option<(usize, String)> = None;
    for (i, physical) in text.lines().enumerate() {
        let (number, mut line) = joined.take().unwrap_or((i + 1, String::new()));
        match physical.strip_suffix('\\') {
            Some(head) => {
                line.push_str(head);
                joined = Some((number, line));
            }
            None => {
                line.push_str(physical);
                lines.push((number, line));
            }
        }
    }
    lines.extend(joined);
    for (_, line) in &mut lines {
        let comment = line
            .char_indices()
            .find(|&(i, c)| c == '#' && (i == 0 || line[..i].ends_with(char::is_whitespace)))
            .map(|(i, _)| i);
        if let Some(i) = comment {
            line.truncate(i);
        }
        *line = line.trim().to_owned();
    }
    lines
}

/// Hash what a requirements file names besides packages of the index:
/// the files it includes (`-r`, `-c`), relative to it, and local packages
/// (`./lib`, `name @ file:///...`) and wheel directories
/// (`--find-links ./wheels`), relative to where pip
/// runs, as pip reads them. An edit to any of them must resolve again, not
/// reuse the site-packages of before. An editable requirement (`-e`) is
/// refused here, naming its line.
fn hash_referenced(h: &mut Sha256, file: &Path, text: &str, depth: usize) -> Result<()> {
    walk_requirements(file, text, depth, &mut |met| {
        let (file, number, line) = match met {
            Met::Included(path, text) => {
                h.update(b"\0include\0");
                h.update(path.to_string_lossy().as_bytes());
                h.update(text.as_bytes());
                return Ok(());
            }
            Met::Line(file, number, line) => (file, number, line),
        };
        if let Some(target) = ["-e", "--editable"]
            .iter()
            .find_map(|flag| option_value(line, flag))
        {
            // pip installs a finder pointing at the build machine's copy
            // (or a checkout in the build cache), which the component
            // cannot read: the import failed later as "not installed".
            bail!(UserError(format!(
                "{}:{number}: `{line}`: an editable install links to a directory on this machine, \
                 which the sandboxed app cannot read; list it without `-e` (`{target}`) so that \
                 a copy is built into the component",
                file.display(),
            )));
        }
        if ["-r", "--requirement", "-c", "--constraint"]
            .iter()
            .any(|flag| option_value(line, flag).is_some())
        {
            return Ok(());
        }
        let find_links = ["-f", "--find-links"]
            .iter()
            .find_map(|flag| option_value(line, flag))
            .map(|value| find_links_place(file, value));
        let target = find_links
            .as_deref()
            .or_else(|| line.split_once(" @ ").map(|(_, url)| url.trim()))
            .unwrap_or(line);
        // A --find-links that is no URL is a directory (or file) here.
        let named_local = find_links.is_some() && !target.contains("://");
        let local = target.strip_prefix("file://").or_else(|| {
            (named_local || target.starts_with('.') || target.starts_with('/')).then_some(target)
        });
        if let Some(local) = local {
            // `./lib[extra]`: the extras are not part of the path.
            let path = Path::new(local.split('[').next().unwrap_or(local));
            h.update(b"\0local\0");
            h.update(path.to_string_lossy().as_bytes());
            if path.is_dir() {
                // A package's source tree, the app's kind: its VCS data
                // and virtualenvs do not change what pip builds.
                bundle::hash_dir(h, path, bundle::Tree::App)?;
            } else if let Ok(data) = std::fs::read(path) {
                h.update(&data);
            }
        }
        Ok(())
    })
}

/// Where a requirements file (and those it includes) tells pip to look for
/// packages (`--index-url`, `--extra-index-url`, `--no-index`,
/// `--find-links`, `--trusted-host`, `--pre`), as pip arguments: building
/// a source distribution must look where resolving did, and nowhere else.
fn index_options(requirements: &Path, text: &str) -> Result<Vec<String>> {
    const WITH_VALUE: &[(&str, &str)] = &[
        ("-i", "--index-url"),
        ("--index-url", "--index-url"),
        ("--extra-index-url", "--extra-index-url"),
        ("-f", "--find-links"),
        ("--find-links", "--find-links"),
        ("--trusted-host", "--trusted-host"),
    ];
    let mut args = Vec::new();
    walk_requirements(requirements, text, 0, &mut |met| {
        let Met::Line(file, _, line) = met else {
            return Ok(());
        };
        if line == "--no-index" || line == "--pre" {
            args.push(line.to_owned());
        }
        for (flag, long) in WITH_VALUE {
            if let Some(value) = option_value(line, flag) {
                let value = match *long {
                    "--find-links" => find_links_place(file, value),
                    _ => value.to_owned(),
                };
                args.extend([long.to_string(), value]);
            }
        }
        Ok(())
    })?;
    Ok(args)
}

/// Where pip looks for requirements file `file`'s `--find-links value`:
/// next to the file when that path exists, else as given (a URL, or a
/// path from where pip runs).
fn find_links_place(file: &Path, value: &str) -> String {
    if !value.contains("://") {
        let beside = file.parent().unwrap_or(Path::new(".")).join(value);
        if beside.exists() {
            return beside.to_string_lossy().into_owned();
        }
    }
    value.to_owned()
}

/// The value of option `flag` on requirements line `line` (`-r x`,
/// `-rx`, `--requirement=x`), if it is that option.
fn option_value<'a>(line: &'a str, flag: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(flag)?;
    // `-rx` glues a short option to its value; a long one needs `=` or a
    // space (`--requirementx` is no such option).
    let value = if let Some(v) = rest.strip_prefix('=') {
        v
    } else if rest.starts_with(char::is_whitespace) || flag.len() == 2 {
        rest
    } else {
        return None;
    };
    Some(value.trim()).filter(|v| !v.is_empty())
}

/// How the user chose the packages: a package that cannot work in WASI
/// stops a build that asked for it, and is only left out, with a warning,
/// from an installed tree (`--site-packages`), which often holds native
/// packages the app never imports.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Asked {
    EachPackage,
    WholeTree,
}

/// Fill `dir/site-packages` once with `fill` (into a partial directory that
/// is renamed when complete), drop its native modules, and describe it.
fn prepare_once(
    dir: PathBuf,
    key: String,
    asked: Asked,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<Resolved> {
    let complete = |d: &Path| d.join("native.txt").is_file();
    if !complete(&dir) {
        let staged = cachefs::staging(&dir)?;
        let tmp = staged.path();
        std::fs::create_dir_all(tmp.join("site-packages"))?;
        fill(tmp)?;
        let native = strip_native(&tmp.join("site-packages"))?;
        let warnings = check_native_needed(&tmp.join("site-packages"), &native, asked)?;
        std::fs::write(tmp.join("native-warnings.txt"), warnings)?;
        write_native(tmp, &native)?;
        cachefs::publish(&staged.keep(), &dir, complete)?;
    }
    // Every build that uses these dependencies says it, not only the first.
    let warnings = std::fs::read_to_string(dir.join("native-warnings.txt")).unwrap_or_default();
    for line in warnings.lines() {
        tracing::warn!("{line}");
    }
    Ok(Resolved {
        dir: dir.join("site-packages"),
        native: read_native(&dir)?,
        key,
        whole_tree: asked == Asked::WholeTree,
    })
}

/// Run pip for the target; when a requirement only has an sdist, build it
/// into a wheel here (from where `index`, the requirements' own index
/// options, says) and, if that wheel is pure Python, retry with it.
fn pip_install(requirements: &Path, label: &str, index: &[String], work: &Path) -> Result<()> {
    let wheels = work.join("wheels");
    // pip's temporary directories, inside the staging directory: a build
    // stopped by a signal (pip killed) leaves none in the system's.
    let pip_tmp = work.join("pip-tmp");
    std::fs::create_dir_all(&pip_tmp)?;
    let mut built: Vec<String> = Vec::new();
    loop {
        let out = output(
            Command::new("python3")
                .env("TMPDIR", &pip_tmp)
                .args([
                    "-c",
                    PIP_FOR_TARGET,
                    "install",
                    // Not --quiet: it drops the lines that explain a
                    // version conflict, which pip logs as information.
                    "--disable-pip-version-check",
                ])
                .args(["--no-compile", "--root-user-action=ignore"])
                .args(PIP_TARGET)
                .arg("--find-links")
                .arg(&wheels)
                .arg("--target")
                .arg(work.join("site-packages"))
                // Where a VCS requirement checks out: pip's default is
                // ./src, in the user's working directory.
                .arg("--src")
                .arg(work.join("src"))
                .arg("-r")
                .arg(requirements),
        )
        .map_err(|e| {
            UserError(format!(
                "resolving {label} needs python3 with pip on PATH: {e}"
            ))
        })?;
        if out.status.success() {
            // An extra index pip could not reach goes unsaid by pip at
            // this level, and a package only there is then "not found".
            let stderr = String::from_utf8_lossy(&out.stderr);
            if let Some(why) = unreachable_index(&stderr) {
                tracing::warn!(
                    "pip could not reach a package index while resolving {label} ({}), and \
                     resolved without it: {why}",
                    indexes_named(index, &stderr)
                );
            }
            std::fs::remove_dir_all(&pip_tmp)?;
            return Ok(());
        }
        let mut stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if let Some(why) = conflict_cause(&String::from_utf8_lossy(&out.stdout)) {
            stderr = format!("{}\n{why}\n", stderr.trim_end());
        }
        // pip reports an index it cannot reach as packages without a
        // version; building their sources would fail the same way.
        if let Some(why) = unreachable_index(&stderr) {
            bail!(UserError(format!(
                "pip could not reach the package index while resolving {label} ({}): {why}\n\
                 check the network or proxy, or point pip at a reachable index \
                 (PIP_INDEX_URL, or --index-url in the requirements file)",
                indexes_named(index, &stderr)
            )));
        }
        // pip reads requirements files as UTF-8 (or as a BOM or a coding
        // line says) and otherwise dies with a traceback.
        if let Some(why) = stderr.lines().find(|l| l.starts_with("UnicodeDecodeError")) {
            bail!(UserError(format!(
                "pip could not read {label} or a file it includes: it is not UTF-8 text \
                 ({why}); save it as UTF-8"
            )));
        }
        let missing = unavailable_requirement(&stderr);
        match missing {
            Some(spec) if !built.contains(&spec) && built.len() < MAX_SDISTS => {
                build_pure_wheel(&spec, index, &wheels)?;
                built.push(spec);
            }
            // The hint only where the trouble is finding distributions,
            // not for a syntax error or a hash mismatch.
            _ if missing.is_some() => bail!(UserError(format!(
                "pip could not resolve {label} for CPython 3.14 on WASI:\n{}\n\
                 packages must ship a pure-Python wheel, a wheel whose native part is optional, \
                 or a source distribution that builds without C code",
                stderr.trim_end()
            ))),
            _ => bail!(UserError(format!(
                "pip could not resolve {label} for CPython 3.14 on WASI:\n{}",
                stderr.trim_end()
            ))),
        }
    }
}

/// The way out when a package with native code is only another's
/// dependency, which the app never imports.
/// What the guest's check says of a package that cannot import without
/// its dropped native part (`boot.check_native`).
pub(super) const CANNOT_LOAD: &str = "cannot load in the sandbox)";

/// What to do about a native package the app may never import.
pub(super) const NOT_IMPORTED: &str =
    "if it comes in only as another package's dependency and the app \
     never imports it, pin that package to a version that does without it, or install the \
     packages yourself (pip install --target DIR --python-version 3.14 --only-binary=:all: ...) \
     and build with --site-packages DIR, which stops only if the app imports it";

/// The last `n` lines of `text`: what a failed native build printed last.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let skip = lines.len().saturating_sub(n);
    let cut = if skip > 0 { "...\n" } else { "" };
    format!("{cut}{}", lines[skip..].join("\n"))
}

/// The requirement pip found no wheel for, from its error output.
fn unavailable_requirement(stderr: &str) -> Option<String> {
    stderr.lines().find_map(|l| {
        l.split_once("No matching distribution found for ")
            .map(|(_, spec)| spec.trim().to_owned())
            .filter(|s| !s.is_empty())
    })
}

/// The versions pip found on the index, from its `(from versions: ...)`
/// line (empty for `none`).
fn versions_on_index(stderr: &str) -> Option<Vec<&str>> {
    let (_, rest) = stderr.split_once("(from versions: ")?;
    let list = rest.split(')').next()?.trim();
    Some(if list == "none" {
        Vec::new()
    } else {
        list.split(", ").collect()
    })
}

/// The last `n` of `versions` (the newest, as pip lists them oldest first).
fn last_versions(versions: &[&str], n: usize) -> String {
    let shown = versions[versions.len().saturating_sub(n)..].join(", ");
    if versions.len() > n {
        format!("..., {shown}")
    } else {
        shown
    }
}

/// Why pip could not reach its index, from its warnings, if it could not.
fn unreachable_index(stderr: &str) -> Option<String> {
    stderr.lines().find_map(|l| {
        let l = l.trim();
        if let Some((_, rest)) = l.split_once("Failed to establish a new connection: ") {
            return rest.split("')").next().map(str::to_owned);
        }
        let network = l.starts_with("WARNING: Retrying")
            || l.contains("Could not fetch URL")
            || l.contains("is not a trusted or secure host");
        network.then(|| {
            l.trim_start_matches("WARNING: ")
                .chars()
                .take(300)
                .collect()
        })
    })
}

/// The package indexes pip was pointed at, for messages: the requirements'
/// own `--index-url`/`--extra-index-url` (as `index` has them), else pip's
/// environment variables, else PyPI; only those whose host pip's `said`
/// names, if any; without credentials.
fn indexes_named(index: &[String], said: &str) -> String {
    let mut named: Vec<String> = index
        .windows(2)
        .filter(|w| w[0] == "--index-url" || w[0] == "--extra-index-url")
        .map(|w| w[1].clone())
        .collect();
    if !index.iter().any(|a| a == "--index-url") {
        let main = std::env::var("PIP_INDEX_URL")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| "https://pypi.org/simple".to_owned());
        named.insert(0, main);
    }
    if let Ok(extra) = std::env::var("PIP_EXTRA_INDEX_URL") {
        named.extend(extra.split_whitespace().map(str::to_owned));
    }
    if index.iter().any(|a| a == "--no-index") {
        named.clear();
    }
    let mut shown: Vec<String> = named.iter().map(|u| without_credentials(u)).collect();
    let failed: Vec<String> = shown
        .iter()
        .filter(|u| {
            host_of(u).is_some_and(|h| {
                said.contains(&format!("'{h}'")) || said.contains(&format!("//{h}"))
            })
        })
        .cloned()
        .collect();
    if !failed.is_empty() {
        shown = failed;
    }
    if shown.is_empty() {
        return "no index: --no-index".to_owned();
    }
    let noun = if shown.len() == 1 { "index" } else { "indexes" };
    format!("{noun} {}", shown.join(", "))
}

/// The host of `url` (without port or credentials).
fn host_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let host = authority.rsplit('@').next()?;
    Some(host.split(':').next().unwrap_or(host)).filter(|h| !h.is_empty())
}

/// `url` without the `user:password@` of its authority.
fn without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// The project name at the start of a requirement like `docopt==0.6.2`.
fn project_name(spec: &str) -> &str {
    let end = spec
        .find(|c: char| !(c.is_ascii_alphanumeric() || "._-".contains(c)))
        .unwrap_or(spec.len());
    &spec[..end]
}

/// Build `spec` from its sdist with the host's pip; keep the wheel only if
/// it is pure Python (`py3-none-any`), else the package cannot run in WASI.
fn build_pure_wheel(spec: &str, index: &[String], wheels: &Path) -> Result<()> {
    let name = project_name(spec);
    tracing::info!(
        "{spec}: no wheel for CPython 3.14 on WASI matches; trying a source distribution"
    );
    let scratch = crate::scratch::work_dir("sdist-")?;
    // pip's own temporary directories too, so that a build stopped by a
    // signal (pip killed) leaves none behind.
    let pip_tmp = scratch.path().join("tmp");
    std::fs::create_dir(&pip_tmp)?;
    let out = output(
        Command::new("python3")
            .env("TMPDIR", &pip_tmp)
            .args([
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--disable-pip-version-check",
            ])
            // No compilers: native code could not run in WASI anyway, and
            // compiling it here (numpy's meson build) took minutes before
            // failing the check below. A package whose C part is optional
            // falls back to pure Python, as without a compiler anywhere.
            .envs(["CC", "CXX", "FC", "RUSTC"].map(|var| (var, "false")))
            // The resolution above checked `Requires-Python` against 3.14;
            // the build machine's own Python may be older.
            .args([
                "--no-deps",
                "--ignore-requires-python",
                "--no-binary",
                name,
                "-w",
            ])
            .arg(scratch.path())
            .args(index)
            .arg(spec),
    )
    .context("running pip wheel")?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Not on the index at all (a typo, a version that does not exist):
        // nothing to do with WASI.
        if let Some(missing) = unavailable_requirement(&stderr) {
            let no_index = index.iter().any(|a| a == "--no-index");
            // PEP 503 names: `Foo_Bar` and `foo-bar` are one project.
            let normal = |n: &str| n.to_ascii_lowercase().replace(['_', '.'], "-");
            if normal(project_name(&missing)) != normal(name) {
                // The sdist was found; what building it needs was not.
                bail!(UserError(format!(
                    "{spec}: building its source distribution needs {missing} (a build \
                     dependency), which pip could not get{}",
                    if no_index {
                        "; the requirements say --no-index: put a wheel of it in their \
                         --find-links directory"
                    } else {
                        ""
                    }
                )));
            }
            let why = match versions_on_index(&stderr) {
                _ if no_index => {
                    "the requirements say --no-index, and their --find-links locations have \
                     neither a wheel for CPython 3.14 on WASI nor a source distribution of it"
                        .to_owned()
                }
                Some(v) if !v.is_empty() => format!(
                    "no version of {name} on the package index matches (it has {})",
                    last_versions(&v, 8)
                ),
                _ => "the package index has no distribution of it at all (is the name right?)"
                    .to_owned(),
            };
            bail!(UserError(format!("{spec}: {why}")));
        }
        bail!(UserError(format!(
            "{name}: native extension, no WASI build available, or a source distribution that \
             does not build: there is no wheel for CPython 3.14 on WASI, and its source \
             distribution does not build as pure Python (it is built without C, C++, Fortran \
             or Rust compilers, as native code cannot run in WASI); pip said:\n{}\n\
             (the build stopped at {name}: it needs native code, which has no WASI build; \
             {NOT_IMPORTED})",
            last_lines(&stderr, 30)
        )));
    }
    for entry in std::fs::read_dir(scratch.path())? {
        let path = entry?.path();
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        if !file.ends_with(".whl") {
            continue;
        }
        let file = if file.ends_with("-none-any.whl") {
            file.into_owned()
        } else {
            // Tagged for this machine, though the C part may have been
            // optional and left out (PyYAML before 6.0.3): pure if it holds
            // no native module.
            let native = native_files(&path)?;
            if !native.is_empty() {
                bail!(UserError(format!(
                    "{name}: native extension, no WASI build available (its source distribution compiles C code: {file} holds {}; {NOT_IMPORTED})",
                    native.join(", ")
                )));
            }
            pure_wheel_name(&file).with_context(|| format!("{file}: not a wheel's name"))?
        };
        std::fs::copy(&path, wheels.join(file))?;
    }
    Ok(())
}

/// The native modules in the wheel at `path` (read with the host's Python).
fn native_files(path: &Path) -> Result<Vec<String>> {
    const LIST: &str = "import sys, zipfile\n\
        names = zipfile.ZipFile(sys.argv[1]).namelist()\n\
        print('\\n'.join(n for n in names if n.endswith(('.so', '.pyd', '.dylib')) or '.so.' in n))";
    let out = output(Command::new("python3").args(["-c", LIST]).arg(path))
        .context("reading a built wheel")?;
    if !out.status.success() {
        bail!(
            "reading the wheel {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// `name` (`dist-version[-build]-python-abi-platform.whl`) as a wheel for
/// any Python 3 and platform.
fn pure_wheel_name(name: &str) -> Option<String> {
    let parts: Vec<&str> = name.strip_suffix(".whl")?.split('-').collect();
    if !(5..=6).contains(&parts.len()) {
        return None;
    }
    Some(format!(
        "{}-py3-none-any.whl",
        parts[..parts.len() - 3].join("-")
    ))
}

/// Copy an installed site-packages into the cache (keyed by its content)
/// and drop its native modules there, leaving the user's copy untouched.
fn copy_site_packages(src: &Path, cache: &Path) -> Result<Resolved> {
    site_packages_is_a_dir(src)?;
    let mut h = Sha256::new();
    // The second version leaves unusable packages out with a warning
    // (`Asked::WholeTree`); the warnings are kept with the copy.
    h.update(b"site-packages 2\0");
    h.update(NATIVE_IMPORTS);
    h.update(STRIPPING);
    bundle::hash_dir(&mut h, src, bundle::Tree::Packages)?;
    let key = format!("{:x}", h.finalize())[..32].to_owned();
    let dir = cache.join("deps").join(format!("site-{key}"));
    prepare_once(dir, key, Asked::WholeTree, |tmp| {
        tracing::info!("copying {} into the build cache", src.display());
        for rel in bundle::files(src, bundle::Tree::Packages)? {
            let to = tmp.join("site-packages").join(&rel);
            std::fs::create_dir_all(to.parent().expect("file has a parent"))?;
            std::fs::copy(src.join(&rel), &to)
                .with_context(|| format!("copying {}", src.join(&rel).display()))?;
        }
        Ok(())
    })
}

fn write_native(dir: &Path, native: &BTreeMap<String, String>) -> Result<()> {
    let listing: String = native.iter().map(|(m, d)| format!("{m} {d}\n")).collect();
    std::fs::write(dir.join("native.txt"), listing)?;
    Ok(())
}

fn read_native(dir: &Path) -> Result<BTreeMap<String, String>> {
    Ok(std::fs::read_to_string(dir.join("native.txt"))?
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(m, d)| (m.to_owned(), d.to_owned()))
        .collect())
}

/// Delete native extension modules (they cannot load in WASI) and return
/// `module name → distribution` for each.
fn strip_native(site: &Path) -> Result<BTreeMap<String, String>> {
    let owners = record_owners(site);
    let mut native = BTreeMap::new();
    let mut stack = vec![site.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let is_native = (name.ends_with(".so") || name.contains(".so."))
                && !name.ends_with("wasm32-wasi.so");
            if !is_native {
                continue;
            }
            let rel = path.strip_prefix(site).unwrap_or(&path);
            let rel_str = rel.to_string_lossy().replace('\\', "/");
            let stem = name.split('.').next().unwrap_or(name);
            let mut parts: Vec<String> = rel
                .parent()
                .map(|p| p.iter().map(|c| c.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            parts.push(stem.to_owned());
            let module = parts.join(".");
            let dist = owners
                .get(&rel_str)
                .cloned()
                .unwrap_or_else(|| parts[0].clone());
            std::fs::remove_file(&path)?;
            // Type stubs beside it (cryptography's `_rust/*.pyi`) would
            // make a namespace package of its name: importing it then
            // "works", and `from ._rust import x` fails with an ImportError
            // that fallbacks catching ModuleNotFoundError miss.
            let stubs = dir.join(stem);
            if stubs.is_dir() && !holds_python(&stubs) {
                std::fs::remove_dir_all(&stubs)
                    .with_context(|| format!("removing {}", stubs.display()))?;
            }
            tracing::info!("{dist}: left out its native module {module} (no WASI build of it)");
            native.insert(module, normalize(&dist));
        }
    }
    Ok(native)
}

/// Whether the tree at `dir` holds Python code (a `.py` file), not only
/// type stubs and data.
fn holds_python(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return true;
    };
    entries.flatten().any(|e| {
        let path = e.path();
        if path.is_dir() {
            holds_python(&path)
        } else {
            path.extension().is_some_and(|x| x == "py")
        }
    })
}

/// How a native module's leftovers are stripped, in every prepared
/// site-packages' key: a tree stripped under other rules is not reused.
const STRIPPING: &str = "stripping 2: a dropped native module's stub-only directory goes too";

/// The check of which dropped native modules a distribution needs; part
/// of every resolution's key, so a changed check runs again.
const NATIVE_IMPORTS: &str = include_str!("native_imports.py");

/// An import of a dropped native module that nothing guards, as
/// `native_imports.py` reports it.
#[derive(serde::Deserialize)]
struct NeededNative {
    module: String,
    dist: String,
    file: String,
    line: u64,
    /// Runs when the distribution's top-level module is imported.
    top: bool,
}

/// Refuse a distribution whose own top-level module imports one of its
/// dropped native modules without a fallback (Brotli, pydantic-core: it
/// can never be imported in WASI), and warn of code that would fail later
/// (cffi's `FFI()`), where its native part was taken for optional: the
/// warnings, one a line. Each unusable distribution gets a line.
fn check_native_needed(
    site: &Path,
    native: &BTreeMap<String, String>,
    asked: Asked,
) -> Result<String> {
    if native.is_empty() {
        return Ok(String::new());
    }
    let dropped = serde_json::to_string(native)?;
    let out = match output(
        Command::new("python3")
            .arg("-c")
            .arg(NATIVE_IMPORTS)
            .arg(site)
            .arg(dropped),
    ) {
        Ok(out) if out.status.success() => out,
        // Without the check the build goes on as before: the import fails
        // at run time, naming the module.
        Ok(out) => {
            tracing::debug!(
                "checking native imports failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return Ok(String::new());
        }
        Err(e) => {
            tracing::debug!("checking native imports: {e}");
            return Ok(String::new());
        }
    };
    let needed: Vec<NeededNative> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let mut unusable = std::collections::BTreeMap::new();
    for n in needed.iter().filter(|n| n.top) {
        let why = if n.line == 0 {
            format!("its module {} is compiled code only", n.module)
        } else {
            format!(
                "{}:{} imports its native module {} with no fallback, so `import` of it cannot \
                 work in WASI",
                n.file, n.line, n.module
            )
        };
        // A module compiled code only says the most; else the first import.
        let first = unusable
            .entry(n.dist.clone())
            .or_insert_with(|| why.clone());
        if n.line == 0 {
            *first = why;
        }
    }
    let mut warnings = String::new();
    if !unusable.is_empty() {
        let lines: Vec<String> = unusable
            .iter()
            .map(|(dist, why)| format!("{dist}: native extension, no WASI build available ({why})"))
            .collect();
        if asked == Asked::EachPackage {
            // Printed after `error: `, as each line is.
            bail!(UserError(format!(
                "{}\n({NOT_IMPORTED})",
                lines.join("\nerror: ")
            )));
        }
        for line in lines {
            warnings += &format!(
                "{line}; its native part was left out of the copy of --site-packages, so \
                 importing it fails with ModuleNotFoundError\n"
            );
        }
    }
    // One line per distribution: numpy alone has a dozen such modules.
    let mut by_dist: BTreeMap<&str, Vec<&NeededNative>> = BTreeMap::new();
    for n in needed.iter().filter(|n| !unusable.contains_key(&n.dist)) {
        let seen = by_dist.entry(&n.dist).or_default();
        if !seen.iter().any(|m| m.module == n.module) {
            seen.push(n);
        }
    }
    for (dist, modules) in by_dist {
        warnings += &left_out(dist, &modules);
        warnings.push('\n');
    }
    Ok(warnings)
}

/// The warning for `dist`'s native `modules` its code imports, left out.
fn left_out(dist: &str, modules: &[&NeededNative]) -> String {
    const NAMED: usize = 3;
    let first = modules[0];
    let fails = &format!(
        "so code that gets there fails with ModuleNotFoundError (the build goes on, and stops \
         if {dist} cannot be imported without them, or at the app's import if that gets there)"
    );
    if modules.len() == 1 {
        return format!(
            "{dist}: its native module {} has no WASI build and was left out; {}:{} imports it \
             with no fallback, {fails}",
            first.module, first.file, first.line
        );
    }
    let mut names: Vec<&str> = modules
        .iter()
        .take(NAMED)
        .map(|m| m.module.as_str())
        .collect();
    if modules.len() > NAMED {
        names.push("...");
    }
    format!(
        "{dist}: {} of the native modules left out of it (no WASI build) are imported by its \
         code with no fallback ({}; {}:{} imports {}), {fails}",
        modules.len(),
        names.join(", "),
        first.file,
        first.line,
        first.module
    )
}

/// PEP 503 form of a project name (`Pydantic_Core` → `pydantic-core`).
fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// Map installed files to their distribution via `*.dist-info/RECORD`.
fn record_owners(site: &Path) -> BTreeMap<String, String> {
    let mut owners = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(site) else {
        return owners;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".dist-info") else {
            continue;
        };
        // `Name-Version.dist-info`; the project name is before the last '-'.
        let dist = stem.rsplit_once('-').map_or(stem, |(n, _)| n).to_owned();
        if let Ok(record) = std::fs::read_to_string(entry.path().join("RECORD")) {
            for line in record.lines() {
                if let Some(file) = line.split(',').next() {
                    owners.insert(file.to_owned(), dist.clone());
                }
            }
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_modules_left_out_are_one_line_per_distribution() {
        let needed = |module: &str, line| NeededNative {
            module: module.into(),
            dist: "numpy".into(),
            file: "numpy/_core/multiarray.py".into(),
            line,
            top: false,
        };
        let one = left_out("lazy", &[&needed("_lazy", 2)]);
        assert!(
            one.starts_with("lazy: its native module _lazy has no WASI build and was left out; numpy/_core/multiarray.py:2 imports it"),
            "{one}"
        );
        let many: Vec<NeededNative> = ["a", "b", "c", "d", "e"]
            .iter()
            .zip(1..)
            .map(|(m, l)| needed(m, l))
            .collect();
        let many: Vec<&NeededNative> = many.iter().collect();
        let line = left_out("numpy", &many);
        assert!(
            line.starts_with("numpy: 5 of the native modules left out of it (no WASI build) are imported by its code with no fallback (a, b, c, ...; numpy/_core/multiarray.py:1 imports a)"),
            "{line}"
        );
        assert!(!line.contains('\n'));
        assert!(line.contains("the build goes on"), "{line}");
    }

    #[test]
    fn the_timezone_database_is_fetched_only_where_the_requirements_say() {
        let cache = tempfile::tempdir().unwrap();
        let wheels = cache.path().join("wheels");
        std::fs::create_dir(&wheels).unwrap();
        let file = cache.path().join("requirements.txt");
        std::fs::write(
            &file,
            format!("--no-index\n--find-links {}\n", wheels.display()),
        )
        .unwrap();
        let index = index_of(&[Source::Requirements(file)]).unwrap();
        assert_eq!(index[0], "--no-index");
        // No index, and no wheel of it where the file points: not found,
        // rather than fetched from PyPI.
        let e = timezone_data(cache.path(), &index).unwrap_err();
        assert!(format!("{e:#}").contains("tzdata"), "{e:#}");
    }

    #[test]
    fn a_package_named_unlike_its_distribution_is_checked_too() {
        // Pillow ships the package PIL, whose Image.py needs PIL._imaging
        // through a relative import, in a try whose handler warns and
        // raises again: no fallback. Fallback.py's handler carries on.
        let site = tempfile::tempdir().unwrap();
        let p = site.path();
        std::fs::create_dir_all(p.join("PIL")).unwrap();
        std::fs::create_dir_all(p.join("pillow-12.0.0.dist-info")).unwrap();
        std::fs::write(p.join("PIL/__init__.py"), "__version__ = '12'\n").unwrap();
        std::fs::write(
            p.join("PIL/Image.py"),
            "import io\ntry:\n    from . import _imaging as core\nexcept ImportError as v:\n    \
             print(v)\n    raise\n",
        )
        .unwrap();
        std::fs::write(
            p.join("PIL/Fallback.py"),
            "try:\n    from . import _imaging\nexcept ImportError:\n    _imaging = None\n",
        )
        .unwrap();
        // zope.interface's handler names a module-level tuple: a fallback
        // too. One catching only unrelated builtin errors is none.
        std::fs::write(
            p.join("PIL/Named.py"),
            "catch = (ImportError,)\ndef f():\n    try:\n        from . import _imaging\n    \
             except catch:\n        pass\n",
        )
        .unwrap();
        std::fs::write(
            p.join("PIL/Other.py"),
            "def f():\n    try:\n        from . import _imaging\n    \
             except (AttributeError, KeyError):\n        pass\n",
        )
        .unwrap();
        std::fs::write(
            p.join("pillow-12.0.0.dist-info/RECORD"),
            "PIL/__init__.py,,\nPIL/Image.py,,\nPIL/Fallback.py,,\nPIL/Named.py,,\nPIL/Other.py,,\n",
        )
        .unwrap();
        let native = BTreeMap::from([("PIL._imaging".to_owned(), "pillow".to_owned())]);
        let warnings = check_native_needed(p, &native, Asked::EachPackage).unwrap();
        assert!(
            warnings.contains("pillow: its native module PIL._imaging has no WASI build")
                && warnings.contains("PIL/Image.py:3"),
            "{warnings}"
        );
        // The warning names one file: without Image.py, the next.
        let record = |files: &[&str]| {
            let lines: String = files.iter().map(|f| format!("PIL/{f},,\n")).collect();
            std::fs::write(p.join("pillow-12.0.0.dist-info/RECORD"), lines).unwrap();
        };
        record(&["__init__.py", "Fallback.py", "Named.py", "Other.py"]);
        let warnings = check_native_needed(p, &native, Asked::EachPackage).unwrap();
        assert!(warnings.contains("PIL/Other.py:3"), "{warnings}");
        // PyYAML's shape: a module that needs it outright, imported only
        // by a guarded try; imported outright too, it is warned about.
        std::fs::write(p.join("PIL/Optional.py"), "from ._imaging import x\n").unwrap();
        std::fs::write(
            p.join("PIL/Loader.py"),
            "try:\n    from .Optional import *\nexcept ImportError:\n    pass\n",
        )
        .unwrap();
        record(&[
            "__init__.py",
            "Fallback.py",
            "Named.py",
            "Optional.py",
            "Loader.py",
        ]);
        let warnings = check_native_needed(p, &native, Asked::EachPackage).unwrap();
        assert!(!warnings.contains("PIL/"), "{warnings}");
        std::fs::write(p.join("PIL/User.py"), "from . import Optional\n").unwrap();
        record(&["__init__.py", "Optional.py", "Loader.py", "User.py"]);
        let warnings = check_native_needed(p, &native, Asked::EachPackage).unwrap();
        assert!(warnings.contains("PIL/Optional.py:1"), "{warnings}");
        // Imported by the top-level module itself: the build stops.
        std::fs::write(p.join("PIL/__init__.py"), "from ._imaging import x\n").unwrap();
        let e = check_native_needed(p, &native, Asked::EachPackage).unwrap_err();
        assert!(
            e.to_string()
                .contains("pillow: native extension, no WASI build available"),
            "{e}"
        );
    }

    #[test]
    fn the_python_a_tree_was_installed_for_is_read_from_its_path_or_bytecode() {
        let root = tempfile::tempdir().unwrap();
        let venv = root.path().join("lib/python3.11/site-packages");
        std::fs::create_dir_all(&venv).unwrap();
        assert_eq!(installed_for(&venv).as_deref(), Some("3.11"));
        let target = root.path().join("target");
        std::fs::create_dir_all(target.join("flask/__pycache__")).unwrap();
        assert_eq!(installed_for(&target), None);
        std::fs::write(target.join("flask/__pycache__/app.cpython-312.pyc"), "").unwrap();
        assert_eq!(installed_for(&target).as_deref(), Some("3.12"));
        let current = root.path().join("python3.14/site-packages");
        std::fs::create_dir_all(&current).unwrap();
        assert_eq!(installed_for(&current).as_deref(), Some(TARGET_PYTHON));
    }

    #[test]
    fn a_wheel_built_for_this_machine_is_renamed_for_any() {
        assert_eq!(
            pure_wheel_name("PyYAML-6.0.2-cp311-cp311-linux_x86_64.whl").as_deref(),
            Some("PyYAML-6.0.2-py3-none-any.whl")
        );
        assert_eq!(
            pure_wheel_name("pkg-1.0-1build-cp312-abi3-linux_x86_64.whl").as_deref(),
            Some("pkg-1.0-1build-py3-none-any.whl")
        );
        assert_eq!(pure_wheel_name("pkg-1.0.tar.gz"), None);
        assert_eq!(pure_wheel_name("pkg-1.0-any.whl"), None);
    }

    #[test]
    fn a_version_that_matches_none_is_told_from_a_name_that_is_not_there() {
        let some = "ERROR: Could not find a version that satisfies the requirement attrs>=99 \
                    (from versions: 17.1.0, 17.2.0, 25.3.0, 25.4.0)\n\
                    ERROR: No matching distribution found for attrs>=99\n";
        assert_eq!(
            versions_on_index(some).unwrap(),
            ["17.1.0", "17.2.0", "25.3.0", "25.4.0"]
        );
        assert_eq!(
            last_versions(&versions_on_index(some).unwrap(), 2),
            "..., 25.3.0, 25.4.0"
        );
        let none = "ERROR: Could not find a version that satisfies the requirement nosuchpkg \
                    (from versions: none)\n";
        assert_eq!(versions_on_index(none).unwrap(), Vec::<&str>::new());
        assert_eq!(versions_on_index("other"), None);
    }

    #[test]
    fn included_files_and_local_packages_are_part_of_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("sub/lib")).unwrap();
        let top = d.join("requirements.txt");
        let lib = d.join("sub/lib");
        std::fs::create_dir_all(d.join("wheels")).unwrap();
        let text = format!(
            "bottle==0.13.4  # a comment\n-r sub/base.txt\n--constraint=sub/pins.txt\n./sub/lib\nmylib @ file://{lib}\n--find-links {wheels}\n",
            lib = lib.display(),
            wheels = d.join("wheels").display()
        );
        std::fs::write(&top, &text).unwrap();
        let key = || {
            let mut h = Sha256::new();
            hash_referenced(&mut h, &top, &text, 0).unwrap();
            format!("{:x}", h.finalize())
        };
        let edits: [(&str, &str); 5] = [
            ("sub/base.txt", "six==1.17.0\n-rmore.txt\n"),
            ("sub/more.txt", "idna\n"),
            ("sub/pins.txt", "six<2\n"),
            ("sub/lib/mylib.py", "X = 43\n"),
            ("wheels/mylib-1.0-py3-none-any.whl", "a rebuilt wheel"),
        ];
        let mut seen = vec![key()];
        for (file, content) in edits {
            std::fs::write(d.join(file), content).unwrap();
            let k = key();
            assert!(!seen.contains(&k), "editing {file} left the key as it was");
            seen.push(k);
        }
        // A --find-links directory named next to the file that says it
        // (as pip reads it), without `./`.
        std::fs::create_dir_all(d.join("sub/lw")).unwrap();
        std::fs::write(d.join("sub/base.txt"), "six\n-rmore.txt\n--find-links lw\n").unwrap();
        let before = key();
        std::fs::write(d.join("sub/lw/six-1.17.0-py3-none-any.whl"), "a wheel").unwrap();
        assert_ne!(
            key(),
            before,
            "a wheel added beside base.txt left the key as it was"
        );
        seen.push(key());
        // Unchanged inputs, the same key; a cycle ends.
        assert_eq!(key(), *seen.last().unwrap());
        std::fs::write(d.join("sub/more.txt"), "-r more.txt\n").unwrap();
        key();
        assert_eq!(option_value("-rx.txt", "-r"), Some("x.txt"));
        assert_eq!(
            option_value("--requirement x.txt", "--requirement"),
            Some("x.txt")
        );
        assert_eq!(option_value("--requirementx", "--requirement"), None);
        assert_eq!(option_value("-r", "-r"), None);
    }

    #[test]
    fn sdists_are_fetched_from_where_the_requirements_say() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("sub/wheels")).unwrap();
        std::fs::write(
            d.join("sub/base.txt"),
            "--find-links wheels\n--extra-index-url https://extra.test/simple\nsix\n",
        )
        .unwrap();
        let top = d.join("requirements.txt");
        let text = "--no-index  # offline\n-i https://mirror.test/simple\n-r sub/base.txt\n\
                    --find-links=./elsewhere\n--trusted-host mirror.test\n--pre\nflask\n";
        let wheels = d.join("sub/wheels").to_string_lossy().into_owned();
        assert_eq!(
            index_options(&top, text).unwrap(),
            [
                "--no-index",
                "--index-url",
                "https://mirror.test/simple",
                "--find-links",
                &wheels,
                "--extra-index-url",
                "https://extra.test/simple",
                // Not beside the file: left for pip to find where it runs.
                "--find-links",
                "./elsewhere",
                "--trusted-host",
                "mirror.test",
                "--pre",
            ]
        );
        assert!(index_options(&top, "flask\n").unwrap().is_empty());
    }

    #[test]
    fn requirement_lines_are_read_as_pip_reads_them() {
        let text = "\u{feff}-e ./lp\nflask \\\n  >=3  # web\n#-e ./no\npkg#frag\n\tsix\t#x\n";
        let got: Vec<(usize, String)> = logical_lines(text);
        let want = [
            (1, "-e ./lp"),
            (2, "flask   >=3"),
            (4, ""),
            (5, "pkg#frag"),
            (6, "six"),
        ];
        let want: Vec<(usize, String)> = want.iter().map(|(n, l)| (*n, l.to_string())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn indexes_are_named_without_their_credentials() {
        let index = [
            "--index-url".to_owned(),
            "https://nexus.invalid/simple".to_owned(),
            "--extra-index-url".to_owned(),
            "https://alice:pw@extra.invalid/simple/".to_owned(),
        ];
        assert_eq!(
            indexes_named(&index, ""),
            "indexes https://nexus.invalid/simple, https://extra.invalid/simple/"
        );
        // Only the one pip says it could not reach, where it says.
        let said = "WARNING: Retrying (Retry(total=4)) after connection broken by \
                    'NameResolutionError(\"<...>: Failed to resolve 'extra.invalid' ([Errno -2] \
                    Name or service not known)\")': /simple/six/";
        assert_eq!(
            indexes_named(&index, said),
            "index https://extra.invalid/simple/"
        );
        assert_eq!(without_credentials("https://a@b.c/x@y"), "https://b.c/x@y");
        assert_eq!(without_credentials("./wheels"), "./wheels");
    }

    #[test]
    fn editable_requirements_are_refused_naming_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("requirements.txt");
        std::fs::write(
            dir.path().join("base.txt"),
            "six
--editable=./lp
",
        )
        .unwrap();
        let text = "flask
-r base.txt
";
        let e = hash_referenced(&mut Sha256::new(), &top, text, 0).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("base.txt:2: `--editable=./lp`"), "{e}");
        assert!(e.contains("without `-e` (`./lp`)"), "{e}");
        // Behind a byte-order mark, or split over two lines, as pip reads it.
        for text in ["\u{feff}-e ./lp\n", "-\\\ne ./lp\n"] {
            let e = hash_referenced(&mut Sha256::new(), &top, text, 0).unwrap_err();
            assert!(
                format!("{e:#}").contains("requirements.txt:1: `-e ./lp`"),
                "{e:#}"
            );
        }
    }

    #[test]
    fn a_version_conflict_keeps_pip_s_cause() {
        let out = "Collecting flask\n\nThe conflict is caused by:\n    The user requested werkzeug==2.0.0\n    \
                   flask 3.1.3 depends on werkzeug>=3.1.0\n\nTo fix this you could try to:\n";
        assert_eq!(
            conflict_cause(out),
            Some("The conflict is caused by:\n    The user requested werkzeug==2.0.0\n    flask 3.1.3 depends on werkzeug>=3.1.0")
        );
        assert_eq!(conflict_cause("Collecting flask\n"), None);
    }

    #[test]
    fn pip_errors_name_the_missing_requirement() {
        let err = "ERROR: Could not find a version that satisfies the requirement docopt==0.6.2 (from versions: none)\n\
                   ERROR: No matching distribution found for docopt==0.6.2\n";
        assert_eq!(
            unavailable_requirement(err).as_deref(),
            Some("docopt==0.6.2")
        );
        assert_eq!(unavailable_requirement("ERROR: something else"), None);
        assert_eq!(project_name("docopt==0.6.2"), "docopt");
        assert_eq!(
            project_name("zope.interface>=5; python_version>'3'"),
            "zope.interface"
        );
    }

    #[test]
    fn an_unreachable_index_is_told_as_such() {
        let refused = "WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) \
            after connection broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPConnection \
            object at 0x7f>: Failed to establish a new connection: [Errno 111] Connection refused')': /simple/flask/\n\
            ERROR: Could not find a version that satisfies the requirement flask (from versions: none)\n\
            ERROR: No matching distribution found for flask\n";
        assert_eq!(
            unreachable_index(refused).as_deref(),
            Some("[Errno 111] Connection refused")
        );
        let http = "WARNING: The repository located at nonexistent.invalid is not a trusted or secure host \
            and is being ignored.\nERROR: No matching distribution found for flask\n";
        assert!(unreachable_index(http)
            .unwrap()
            .contains("nonexistent.invalid"));
        let missing = "ERROR: Could not find a version that satisfies the requirement nope (from versions: none)\n\
            ERROR: No matching distribution found for nope\n";
        assert_eq!(unreachable_index(missing), None);
    }

    #[test]
    fn names_are_normalized() {
        assert_eq!(normalize("Pydantic_Core"), "pydantic-core");
        assert_eq!(normalize("zope.interface"), "zope-interface");
    }

    #[test]
    fn pyproject_dependencies_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pyproject.toml");
        std::fs::write(
            &file,
            "[project]\nname = \"x\"\ndependencies = [\"flask>=3\", \"pyyaml\"]\n",
        )
        .unwrap();
        assert_eq!(
            pyproject_dependencies(&file).unwrap(),
            vec!["flask>=3".to_owned(), "pyyaml".to_owned()]
        );
        std::fs::write(&file, "[tool.poetry]\nname = \"x\"\n").unwrap();
        let err = pyproject_dependencies(&file).unwrap_err().to_string();
        assert!(err.contains("poetry export"), "{err}");
        std::fs::write(&file, "[project]\ndynamic = [\"dependencies\"]\n").unwrap();
        assert!(pyproject_dependencies(&file)
            .unwrap_err()
            .to_string()
            .contains("dynamic"));
    }

    #[test]
    fn native_modules_are_stripped_and_attributed() {
        let site = tempfile::tempdir().unwrap();
        let p = site.path();
        std::fs::create_dir_all(p.join("pydantic_core")).unwrap();
        std::fs::create_dir_all(p.join("pydantic_core-2.27.2.dist-info")).unwrap();
        let so = "pydantic_core/_pydantic_core.cpython-314-x86_64-linux-gnu.so";
        std::fs::write(p.join(so), "ELF").unwrap();
        std::fs::write(p.join("pydantic_core/__init__.py"), "").unwrap();
        std::fs::write(
            p.join("pydantic_core-2.27.2.dist-info/RECORD"),
            format!("{so},sha256=x,3\npydantic_core/__init__.py,,\n"),
        )
        .unwrap();
        let native = strip_native(p).unwrap();
        assert_eq!(
            native
                .get("pydantic_core._pydantic_core")
                .map(String::as_str),
            Some("pydantic-core")
        );
        assert!(!p.join(so).exists());
        assert!(p.join("pydantic_core/__init__.py").exists());
    }

    #[test]
    fn a_dropped_native_module_s_stubs_do_not_make_a_namespace_package() {
        let site = tempfile::tempdir().unwrap();
        let p = site.path().join("cryptography/hazmat/bindings");
        std::fs::create_dir_all(p.join("_rust/openssl")).unwrap();
        std::fs::write(p.join("_rust.abi3.so"), "ELF").unwrap();
        std::fs::write(p.join("_rust/__init__.pyi"), "").unwrap();
        std::fs::write(p.join("_rust/openssl/aead.pyi"), "").unwrap();
        // A package of the same name with code in it stays.
        std::fs::create_dir_all(p.join("_speedups")).unwrap();
        std::fs::write(p.join("_speedups.abi3.so"), "ELF").unwrap();
        std::fs::write(p.join("_speedups/fallback.py"), "").unwrap();
        strip_native(site.path()).unwrap();
        assert!(!p.join("_rust").exists());
        assert!(p.join("_speedups/fallback.py").exists());
    }
}
