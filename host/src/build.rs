//! `rsgi-wasm build`: MODULE:CALLABLE + its dependencies → a component,
//! using the embedded componentize-py (no Python needed for the build
//! itself; `-r requirements.txt` asks the local pip to resolve wheels).
//!
//! Steps: lay out the guest adapter and a generated entry module in a work
//! dir; resolve requirements for the WASI target (cached by content hash) and
//! drop native extensions; run componentize-py, whose pre-initialisation
//! imports the app and warms it up; report a clear error or the result.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// The guest adapter, compiled into the binary so `build` is self-contained.
const GUEST_FILES: &[(&str, &str)] = &[
    (
        "__init__.py",
        include_str!("../../guest/rsgi_wasm_guest/__init__.py"),
    ),
    (
        "boot.py",
        include_str!("../../guest/rsgi_wasm_guest/boot.py"),
    ),
    (
        "component.py",
        include_str!("../../guest/rsgi_wasm_guest/component.py"),
    ),
    (
        "protocol.py",
        include_str!("../../guest/rsgi_wasm_guest/protocol.py"),
    ),
    (
        "wsgi_input.py",
        include_str!("../../guest/rsgi_wasm_guest/wsgi_input.py"),
    ),
];
const WIT: &str = include_str!("../../wit/wsgi.wit");
const WORLD: &str = "wsgi-app";
const ENTRY_MODULE: &str = "rsgi_wasm_entry";
const WARMUP_REPORT: &str = "rsgi-wasm-warmup.txt";
/// What the guest prints in front of a user-facing build error.
const ERROR_MARKER: &str = "rsgi-wasm-build-error: ";

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// `module:callable`.
    pub target: String,
    /// Directories holding the app's own code.
    pub paths: Vec<PathBuf>,
    /// requirements.txt to resolve.
    pub requirements: Option<PathBuf>,
    /// Where the component goes.
    pub output: PathBuf,
    /// Paths requested at build time.
    pub warmup: Vec<String>,
    /// Cache for resolved dependencies.
    pub cache_dir: PathBuf,
}

/// What was built.
#[derive(Debug)]
pub struct BuildReport {
    /// Size of the component in bytes.
    pub size: u64,
    /// One line per warm-up request.
    pub warmup: Vec<String>,
}

/// A problem the user must fix; shown without a Rust error chain.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(pub String);

/// Split `module:callable` and check both parts look like Python names.
pub fn parse_target(target: &str) -> Result<(String, String), BuildError> {
    let usage = || {
        BuildError(format!(
            "{target:?} is not MODULE:CALLABLE (for example `app:application` or `myproject.wsgi:application`)"
        ))
    };
    let (module, callable) = target.split_once(':').ok_or_else(usage)?;
    if module.is_empty() || !module.split('.').all(is_identifier) {
        return Err(usage());
    }
    let callable_path = callable.strip_suffix("()").unwrap_or(callable);
    if callable_path.is_empty() || !callable_path.split('.').all(is_identifier) {
        return Err(usage());
    }
    Ok((module.to_owned(), callable.to_owned()))
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
}

/// A Python string literal for any text.
fn py_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Build the component described by `opts`.
pub async fn build(opts: &BuildOptions) -> Result<BuildReport> {
    let t0 = Instant::now();
    let (module, callable) = parse_target(&opts.target)?;
    let mut app_dirs = Vec::new();
    let paths = if opts.paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        opts.paths.clone()
    };
    for p in &paths {
        let abs = p
            .canonicalize()
            .map_err(|_| BuildError(format!("-p {}: no such directory", p.display())))?;
        if !abs.is_dir() {
            bail!(BuildError(format!("-p {}: not a directory", p.display())));
        }
        app_dirs.push(abs);
    }

    let work = tempfile::Builder::new()
        .prefix("rsgi-wasm-build")
        .tempdir()?;
    let guest_dir = work.path().join("guest");
    let pkg = guest_dir.join("rsgi_wasm_guest");
    std::fs::create_dir_all(&pkg)?;
    for (name, text) in GUEST_FILES {
        std::fs::write(pkg.join(name), text)?;
    }
    let wit_dir = work.path().join("wit");
    std::fs::create_dir_all(&wit_dir)?;
    std::fs::write(wit_dir.join("wsgi.wit"), WIT)?;

    let mut site_packages = None;
    let mut native = BTreeMap::new();
    if let Some(req) = &opts.requirements {
        let (dir, found) = resolve_requirements(req, &opts.cache_dir)?;
        native = found;
        site_packages = Some(dir);
    }

    // componentize-py mounts python_path[i] at /i during pre-initialisation:
    // index 0 is the adapter, then the app's dirs, then dependencies.
    let mut python_path: Vec<PathBuf> = vec![guest_dir.clone()];
    python_path.extend(app_dirs.iter().cloned());
    python_path.extend(site_packages.iter().cloned());
    let mounts: Vec<String> = python_path
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, host)| {
            format!(
                "({}, {})",
                py_str(&format!("/{i}")),
                py_str(&host.to_string_lossy())
            )
        })
        .collect();
    let native_py: Vec<String> = native
        .iter()
        .map(|(m, d)| format!("{}: {}", py_str(m), py_str(d)))
        .collect();
    let warmup: Vec<String> = opts.warmup.iter().map(|p| py_str(p)).collect();
    let entry = format!(
        "# Generated by rsgi-wasm build: the component's top-level module.\n\
         from rsgi_wasm_guest.boot import boot\n\n\
         Handler = boot(\n    module={},\n    expr={},\n    mounts=[{}],\n    native={{{}}},\n    warmup=[{}],\n    report_path={},\n)\n",
        py_str(&module),
        py_str(&callable),
        mounts.join(", "),
        native_py.join(", "),
        warmup.join(", "),
        py_str(&format!("/0/{WARMUP_REPORT}")),
    );
    std::fs::write(guest_dir.join(format!("{ENTRY_MODULE}.py")), entry)?;

    if let Some(parent) = opts.output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let python_path_str: Vec<String> = python_path
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let python_path_refs: Vec<&str> = python_path_str.iter().map(String::as_str).collect();
    let no_names = std::collections::HashMap::new();
    let tmp_out = work.path().join("app.wasm");
    tracing::info!(
        "building {} (CPython 3.14 for WASI, pre-initialising the app)",
        opts.target
    );
    let result = componentize_py::ComponentGenerator {
        wit_paths: &[&wit_dir],
        worlds: &[WORLD],
        features: &[],
        all_features: false,
        world_module: None,
        python_path: &python_path_refs,
        module_worlds: &[],
        app_name: ENTRY_MODULE,
        output_path: &tmp_out,
        add_to_linker: None,
        stub_wasi: false,
        import_interface_names: &no_names,
        export_interface_names: &no_names,
        full_names: false,
        intersect_world: None,
    }
    .generate()
    .await;
    if let Err(e) = result {
        let text = format!("{e:#}");
        let lines: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_once(ERROR_MARKER).map(|(_, m)| m))
            .collect();
        if lines.is_empty() {
            bail!(BuildError(format!(
                "componentize-py failed to build the component:\n{text}"
            )));
        }
        bail!(BuildError(lines.join("\n")));
    }
    std::fs::copy(&tmp_out, &opts.output)
        .with_context(|| format!("writing {}", opts.output.display()))?;
    let size = std::fs::metadata(&opts.output)?.len();
    let warmup = std::fs::read_to_string(guest_dir.join(WARMUP_REPORT))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    tracing::debug!("build took {:.1}s", t0.elapsed().as_secs_f64());
    Ok(BuildReport { size, warmup })
}

/// pip options that pick wheels for CPython 3.14 on WASI: pure wheels, and
/// Linux wheels whose native part is optional (it is dropped afterwards).
const PIP_TARGET: &[&str] = &[
    "--only-binary=:all:",
    "--python-version",
    "3.14",
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

/// Install `requirements` into a cached site-packages for the WASI target.
/// Returns the directory and the native modules that were removed, mapped to
/// their distribution (so a failed import can name the package).
fn resolve_requirements(
    requirements: &Path,
    cache: &Path,
) -> Result<(PathBuf, BTreeMap<String, String>)> {
    let text = std::fs::read(requirements)
        .map_err(|e| BuildError(format!("-r {}: {e}", requirements.display())))?;
    let mut h = Sha256::new();
    h.update(&text);
    h.update(PIP_TARGET.join(" "));
    let key = format!("{:x}", h.finalize());
    let dir = cache.join("deps").join(&key[..32]);
    let site = dir.join("site-packages");
    let native_list = dir.join("native.txt");
    if !native_list.is_file() {
        tracing::info!(
            "resolving {} for the WASI target with pip",
            requirements.display()
        );
        let tmp = dir.with_extension("partial");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        let status = std::process::Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-compile",
                "--root-user-action=ignore",
            ])
            .args(PIP_TARGET)
            .arg("--target")
            .arg(tmp.join("site-packages"))
            .arg("-r")
            .arg(requirements)
            .status()
            .map_err(|e| {
                BuildError(format!(
                    "resolving -r {} needs python3 with pip on PATH: {e}",
                    requirements.display()
                ))
            })?;
        if !status.success() {
            bail!(BuildError(format!(
                "pip could not resolve {} for CPython 3.14 on WASI (see pip's message above); \
                 packages must ship a pure-Python wheel or a wheel whose native part is optional",
                requirements.display()
            )));
        }
        let native = strip_native(&tmp.join("site-packages"))?;
        let listing: String = native.iter().map(|(m, d)| format!("{m} {d}\n")).collect();
        std::fs::write(tmp.join("native.txt"), listing)?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir)?;
    }
    let native = std::fs::read_to_string(&native_list)?
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(m, d)| (m.to_owned(), d.to_owned()))
        .collect();
    Ok((site, native))
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
            native.insert(module, dist);
        }
    }
    Ok(native)
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
    fn targets_are_checked() {
        assert_eq!(
            parse_target("app:application").unwrap(),
            ("app".into(), "application".into())
        );
        assert_eq!(
            parse_target("my.proj.wsgi:make_app()").unwrap().1,
            "make_app()"
        );
        assert!(parse_target("app").is_err());
        assert!(parse_target("app:").is_err());
        assert!(parse_target("app-x:app").is_err());
        assert!(parse_target(":app").is_err());
    }

    #[test]
    fn python_literals_escape() {
        assert_eq!(py_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\x0a\"");
    }
}
