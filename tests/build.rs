//! `rsgi-wasm build` and `run` from source over real builds: dependencies
//! from requirements / pyproject / an installed site-packages, sdists, the
//! native-package check, the build cache and rebuild on edit, run-time
//! lazy imports and file reads, `rsgi-wasm exec`, and the build's time
//! limit.

mod common;

use std::path::Path;

use common::*;

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Run the build machine's Python on `script`, with `dir` as its argument.
fn python_script(script: &str, dir: &Path) {
    let ran = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(dir)
        .status()
        .unwrap();
    assert!(ran.success(), "python3 -c ...: {ran}");
}

/// Build `app` (an `app.py` with `application`) with `requirements` in a
/// fresh directory, and serve it.
fn serve_with_requirements(name: &str, app: &str, requirements: &str) -> Server {
    let dir = temp_dir(name);
    write(&dir, "app.py", app);
    write(&dir, "requirements.txt", requirements);
    let c = component(
        name,
        "app:application",
        &dir,
        Some(&dir.join("requirements.txt")),
    );
    Server::start(&c, &[])
}

const DEPS_APP: &str = r#"
import docopt, markupsafe, simplejson, yaml

def application(environ, start_response):
    body = "|".join([
        repr(yaml.safe_load("a: [1, 2]")),
        simplejson.dumps({"k": 1}),
        docopt.__version__,
        str(markupsafe.escape("<b>")),
        str(yaml.__with_libyaml__),
    ])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body.encode()]
"#;

#[test]
fn optional_native_parts_fall_back_and_sdists_build_pure() {
    // PyYAML, simplejson and MarkupSafe ship Linux wheels whose C part is
    // optional; docopt only has an sdist (pure Python). PyYAML 6.0.2 has
    // no pure wheel: its sdist builds one without the C part, tagged for
    // this machine all the same.
    let s = serve_with_requirements(
        "deps",
        DEPS_APP,
        "pyyaml==6.0.2\nsimplejson\nmarkupsafe\ndocopt==0.6.2\n",
    );
    assert_eq!(
        get(&s, "/"),
        (
            200,
            "{'a': [1, 2]}|{\"k\": 1}|0.6.2|&lt;b&gt;|False".to_owned()
        )
    );
}

/// Reports the marker environment the guest really has, and what the
/// marker-dependent requirements below resolved to.
const MARKERS_APP: &str = r#"
import importlib.util, json, os, platform, sys

def application(environ, start_response):
    import webob
    req = webob.Request.blank("/?a=1", POST={"f": "x"})
    found = lambda m: importlib.util.find_spec(m) is not None
    body = {
        "env": {
            "implementation_name": sys.implementation.name,
            "os_name": os.name,
            "platform_machine": platform.machine(),
            "platform_system": platform.system(),
            "python_full_version": platform.python_version(),
            "python_version": ".".join(platform.python_version_tuple()[:2]),
            "sys_platform": sys.platform,
        },
        "webob": [req.GET["a"], req.POST["f"]],
        "cgi": found("cgi"),
        "keyring": found("keyring"),
        "secretstorage": found("secretstorage"),
        "jeepney": found("jeepney"),
        "importlib_metadata": found("importlib_metadata"),
        "needs_py313": found("needs_py313"),
    }
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]
"#;

/// Writes a pure wheel `needs-py313 1.0` that requires Python 3.13 into
/// the directory given, byte for byte the same each time (the build cache
/// keys on it).
const NEEDS_PY313_WHEEL: &str = r#"
import os, sys, zipfile
files = {
    "needs_py313/__init__.py": "",
    "needs_py313-1.0.dist-info/METADATA":
        "Metadata-Version: 2.1\nName: needs-py313\nVersion: 1.0\nRequires-Python: >=3.13\n",
    "needs_py313-1.0.dist-info/WHEEL":
        "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    "needs_py313-1.0.dist-info/RECORD": "",
}
with zipfile.ZipFile(os.path.join(sys.argv[1], "needs_py313-1.0-py3-none-any.whl"), "w") as z:
    for name, text in files.items():
        z.writestr(zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0)), text)
"#;

#[test]
fn dependencies_are_resolved_for_python_3_14_on_wasi() {
    // WebOb needs `legacy-cgi; python_version >= "3.13"` (`cgi` left the
    // stdlib); keyring needs SecretStorage and jeepney only where
    // `sys_platform == "linux"`, and importlib_metadata only before 3.12.
    // The build machine's Python (3.11 on Linux here) would pick the
    // opposite of each.
    // And a package that needs Python 3.13 (Requires-Python), which pip
    // checked against the Python running it, not the target.
    // A fixed place, so the requirements (and the cached build) stay the same.
    let wheels = work_dir().join("wheels-needs-py313");
    std::fs::create_dir_all(&wheels).unwrap();
    python_script(NEEDS_PY313_WHEEL, &wheels);
    let s = serve_with_requirements(
        "markers",
        MARKERS_APP,
        &format!(
            "webob\nkeyring\n--find-links {}\nneeds-py313==1.0\n",
            wheels.display()
        ),
    );
    let r = get_json(&s, "/");
    assert_eq!(r["needs_py313"], true, "{r}");
    assert_eq!(r["webob"], serde_json::json!(["1", "x"]), "{r}");
    assert_eq!(
        (&r["cgi"], &r["keyring"], &r["secretstorage"], &r["jeepney"]),
        (&true.into(), &true.into(), &false.into(), &false.into()),
        "{r}"
    );
    assert_eq!(r["importlib_metadata"], false, "{r}");
    // The markers the build resolves with are the ones the guest has.
    assert_eq!(
        r["env"],
        serde_json::json!({
            "implementation_name": "cpython",
            "os_name": "posix",
            "platform_machine": "wasm32",
            "platform_system": "wasi",
            "python_full_version": "3.14.0",
            "python_version": "3.14",
            "sys_platform": "wasi",
        })
    );
}

#[test]
fn every_build_ships_the_timezone_database() {
    // The router app lists no requirements at all.
    let s = Server::start(&router(), &[]);
    assert_eq!(
        get(&s, "/zoneinfo?Europe/Paris"),
        (200, "2:00:00 1:00:00".to_owned())
    );
    assert_eq!(
        get(&s, "/zoneinfo?America/New_York"),
        (200, "-1 day, 20:00:00 -1 day, 19:00:00".to_owned())
    );
}

#[test]
fn native_only_packages_stop_the_build_with_one_line_each() {
    let dir = temp_dir("native");
    write(&dir, "app.py", "import pydantic\napplication = None\n");
    write(&dir, "requirements.txt", "pydantic\n");
    let err = build_error("app:application", &dir, Some(&dir.join("requirements.txt")));
    assert!(
        err.contains("error: pydantic-core: native extension, no WASI build available"),
        "{err}"
    );
}

#[test]
fn a_native_module_its_package_needs_is_an_error_or_a_warning_not_a_silent_drop() {
    // A wheel whose compiled part was taken for optional and dropped: a
    // package importing it with no fallback stops the build that asked for
    // it (Brotli), one whose code reaches it later is warned about (cffi's
    // `FFI()`). From an installed tree (--site-packages), which often holds
    // packages the app never imports, an unusable one is only left out.
    let dir = temp_dir("needed-native");
    let so = "cpython-314-x86_64-linux-gnu.so";
    // The files of a distribution `name` with the compiled `module`.
    let files = |root: &Path, name: &str, module: &str, code: Option<&str>| {
        let mut record = format!("{module}.{so},,\n");
        if let Some(code) = code {
            write(root, &format!("{name}.py"), code);
            record += &format!("{name}.py,,\n");
        }
        write(root, &format!("{module}.{so}"), "\x7fELF not wasm");
        let info = format!("{name}-1.0.dist-info");
        write(
            root,
            &format!("{info}/METADATA"),
            &format!("Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"),
        );
        write(
            root,
            &format!("{info}/WHEEL"),
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        );
        record += &format!("{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n");
        write(root, &format!("{info}/RECORD"), &record);
    };
    let site = |name: &str, module: &str, code: Option<&str>| {
        let site = dir.join(name);
        files(&site, name, module, code);
        site.display().to_string()
    };
    // The same as a wheel file, named in a requirements file.
    let wheel = |name: &str, module: &str, code: Option<&str>| {
        let tree = dir.join(format!("{name}-wheel"));
        files(&tree, name, module, code);
        let whl = dir.join(format!("{name}-1.0-py3-none-any.whl"));
        let zipped = std::process::Command::new("python3")
            .args([
                "-c",
                "import shutil, sys; shutil.make_archive(sys.argv[1], 'zip', sys.argv[2])",
            ])
            .arg(&whl)
            .arg(&tree)
            .status()
            .unwrap();
        assert!(zipped.success());
        std::fs::rename(whl.with_extension("whl.zip"), &whl).unwrap();
        whl.display().to_string()
    };
    let app_importing = |module: &str| {
        let app = dir.join(format!("app-{module}"));
        write(
            &app,
            "app.py",
            &format!("import {module}\ndef app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'ok']\n"),
        );
        app.display().to_string()
    };
    let app = app_importing("os");
    // Build the app against `deps` (`--site-packages DIR` or `-r FILE`):
    // (exit status, stderr).
    let build_with = |app: &str, deps: [&str; 2], name: &str| {
        let out = dir.join(format!("{name}.wasm")).display().to_string();
        let args = ["build", "app:app", "-p", app, deps[0], deps[1]];
        let (code, _, err) = run_bin(&[&args[..], &["--no-warmup", "-o", &out]].concat());
        (code, err)
    };
    // Asked for: every unusable distribution gets its line, and the build stops.
    let requirements = dir.join("requirements.txt");
    let needy_code = Some("import _needy\n");
    write(
        &dir,
        "requirements.txt",
        &format!(
            "{}\n{}\n",
            wheel("needy", "_needy", needy_code),
            wheel("solo", "solo", None)
        ),
    );
    let (code, err) = build_with(&app, ["-r", &requirements.display().to_string()], "asked");
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("error: needy: native extension, no WASI build available (needy.py:1 imports its native module _needy"),
        "{err}"
    );
    // A distribution that is one compiled module (ujson) cannot be imported.
    assert!(
        err.contains("error: solo: native extension, no WASI build available (its module solo is compiled code only)"),
        "{err}"
    );
    // In an installed tree: left out with a warning, unless the app imports it.
    let needy = site("needy", "_needy", needy_code);
    let (code, err) = build_with(&app, ["--site-packages", &needy], "needy");
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("needy: native extension, no WASI build available (needy.py:1 imports its native module _needy with no fallback, so `import` of it cannot work in WASI); its native part was left out"),
        "{err}"
    );
    let (code, err) = build_with(
        &app_importing("needy"),
        ["--site-packages", &needy],
        "needy-used",
    );
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("error: needy: native extension"), "{err}");
    let lazy = site(
        "lazy",
        "_lazy",
        Some("def ffi():\n    import _lazy\n    return _lazy\n"),
    );
    let (code, err) = build_with(&app, ["--site-packages", &lazy], "lazy");
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("lazy: its native module _lazy has no WASI build and was left out; lazy.py:2 imports it"),
        "{err}"
    );
    // A flag set by a guarded import (multidict's USE_EXTENSIONS) is how
    // packages fall back: neither an error nor a warning.
    let flagged = site(
        "flagged",
        "_flagged",
        Some("try:\n    import _flagged\n    FAST = True\nexcept ImportError:\n    FAST = False\nif FAST:\n    from _flagged import speed\n"),
    );
    let (code, err) = build_with(&app, ["--site-packages", &flagged], "flagged");
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("has no WASI build and was left out"), "{err}");
}

#[test]
fn pyproject_dependencies_are_resolved() {
    let dir = temp_dir("pyproject");
    write(
        &dir,
        "pyproject.toml",
        "[project]\nname = \"demo\"\nversion = \"1\"\ndependencies = [\"pyyaml>=6\"]\n",
    );
    write(
        &dir,
        "app.py",
        "import yaml\ndef app(environ, start_response):\n    start_response('200 OK', [])\n    return [yaml.safe_dump({'ok': True}).encode()]\n",
    );
    let d = dir.display().to_string();
    let c = build("pyproject", &["app:app", "-p", &d, "--pyproject"]);
    let s = Server::start(&c, &[]);
    assert_eq!(get(&s, "/"), (200, "ok: true\n".to_owned()));
}

#[test]
fn an_installed_site_packages_is_copied_without_its_native_modules() {
    let dir = temp_dir("sitepkgs");
    let site = dir.join("site");
    // A package with an optional compiled speed-up, as pip installs it.
    write(
        &site,
        "fastgreet/__init__.py",
        "try:\n    from ._speedups import greet\nexcept ImportError:\n    def greet(n):\n        return 'hello ' + n\n",
    );
    let so = "fastgreet/_speedups.cpython-314-x86_64-linux-gnu.so";
    write(&site, so, "\x7fELF not wasm");
    // A package whose `__init__` imports its compiled part (orjson), and
    // one that is compiled code only, which the app never imports: left
    // out with a warning, as an installed tree often holds them.
    write(&site, "pkgnat/__init__.py", "from . import _core\n");
    write(
        &site,
        "pkgnat/_core.cpython-314-x86_64-linux-gnu.so",
        "\x7fELF not wasm",
    );
    write(
        &site,
        "pkgnat-1.0.dist-info/RECORD",
        "pkgnat/__init__.py,,\npkgnat/_core.cpython-314-x86_64-linux-gnu.so,,\npkgnat-1.0.dist-info/RECORD,,\n",
    );
    write(
        &site,
        "nativeonly.cpython-314-x86_64-linux-gnu.so",
        "\x7fELF not wasm",
    );
    write(
        &site,
        "nativeonly-1.0.dist-info/RECORD",
        "nativeonly.cpython-314-x86_64-linux-gnu.so,,\nnativeonly-1.0.dist-info/RECORD,,\n",
    );
    write(
        &site,
        "nativeonly-1.0.dist-info/METADATA",
        "Metadata-Version: 2.1\nName: nativeonly\nVersion: 1.0\n",
    );
    // Files of any name ship as pip installed them (the app's own
    // directories' skips are not a package's), and `.pth` files are
    // processed as in a site-packages.
    write(&site, "fastgreet/venv/__init__.py", "NAME = 'venv'\n");
    write(&site, "fastgreet/data/sample.log", "logged\n");
    write(
        &site,
        "zz_extra.pth",
        "extra_dir\nimport sys; sys.PTH_RAN = 'ran'\n",
    );
    write(&site, "extra_dir/extramod.py", "VALUE = 'extra'\n");
    // An editable install of a project inside the app's directory (`pip
    // install -e ./localpkg`): its path line names the build machine's
    // copy, which the sandbox has elsewhere. Left as it was, the app's
    // `localpkg/` imported as an empty namespace package.
    write(
        &dir.join("app"),
        "localpkg/src/localpkg/__init__.py",
        "X = 'editable'\n",
    );
    write(
        &site,
        "__editable__.localpkg-0.1.pth",
        &format!("{}\n", dir.join("app/localpkg/src").display()),
    );
    write(
        &dir.join("app"),
        "app.py",
        "import sys, pkgutil, extramod, localpkg\nfrom fastgreet import greet, venv\n\
         def app(environ, start_response):\n    start_response('200 OK', [])\n\
         \x20   log = pkgutil.get_data('fastgreet', 'data/sample.log').decode().strip()\n\
         \x20   return [' '.join([greet('wasm'), venv.NAME, log, extramod.VALUE, sys.PTH_RAN, localpkg.X]).encode()]\n",
    );
    let (a, sp) = (
        dir.join("app").display().to_string(),
        site.display().to_string(),
    );
    let c = build("sitepkgs", &["app:app", "-p", &a, "--site-packages", &sp]);
    let s = Server::start(&c, &[]);
    assert_eq!(
        get(&s, "/"),
        (200, "hello wasm venv logged extra ran editable".to_owned())
    );
    assert!(
        site.join(so).is_file(),
        "the user's site-packages was modified"
    );
}

#[test]
fn unchanged_builds_are_cache_hits_and_edits_rebuild_on_run() {
    let dir = temp_dir("edit");
    let app = |text: &str| {
        write(
            &dir,
            "app.py",
            &format!("import os\ndef app(environ, start_response):\n    start_response('200 OK', [])\n    if environ['PATH_INFO'] == '/mounts':\n        return [b'mounted: ' + ','.join(d for d in ('/1', '/2', '/3') if os.path.exists(d + '/Cargo.toml')).encode()]\n    return [b'{text}']\n"),
        )
    };
    app("first");
    let out = dir.join("out.wasm").display().to_string();
    let d = dir.display().to_string();
    let (code, _, err) = run_bin(&["build", "app:app", "-p", &d, "-o", &out]);
    assert_eq!(code, 0, "{err}");
    let last = err.lines().last().unwrap_or_default().to_owned();
    assert!(
        last.starts_with("built ") && last.contains(" MB in "),
        "{err}"
    );
    let (code, _, err) = run_bin(&["build", "app:app", "-p", &d, "-o", &out]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("from the build cache"), "{err}");
    assert!(!err.contains("pre-initialising"), "{err}");
    // A damaged cache entry is built again, not shipped as "unchanged".
    let built = std::fs::read(&out).unwrap();
    let entry = std::fs::read_dir(cache_dir().join("builds"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.extension().is_some_and(|e| e == "wasm")
                && std::fs::metadata(p).unwrap().len() == built.len() as u64
                && std::fs::read(p).unwrap() == built
        })
        .expect("the build's cache entry");
    let mut damaged = built.clone();
    let at = damaged.windows(5).position(|w| w == b"first").unwrap();
    damaged[at..at + 5].copy_from_slice(b"pwned");
    std::fs::write(&entry, &damaged).unwrap();
    let (code, _, err) = run_bin(&["build", "app:app", "-p", &d, "-o", &out]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("is not used: its bytes differ") && !err.contains("from the build cache"),
        "{err}"
    );
    let rebuilt = std::fs::read(&out).unwrap();
    assert!(
        rebuilt.windows(5).any(|w| w == b"first") && !rebuilt.windows(5).any(|w| w == b"pwned")
    );
    // `-o` replaces a component, never another file (`-o app.py`).
    let source = dir.join("app.py").display().to_string();
    let (code, _, err) = run_bin(&["build", "app:app", "-p", &d, "-o", &source]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not a WebAssembly file; refusing"), "{err}");
    assert!(std::fs::read_to_string(&source).unwrap().contains("first"));
    // Nor a symlink or a FIFO (a device as root: `-o /dev/null`), which the
    // build's rename replaced with a regular file.
    let link = dir.join("link.wasm");
    std::os::unix::fs::symlink(&out, &link).unwrap();
    let fifo = dir.join("fifo.wasm");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for (path, says) in [(&link, "is a symlink"), (&fifo, "is not a regular file")] {
        let (code, _, err) = run_bin(&["build", "app:app", "-p", &d, "-o", path.to_str().unwrap()]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(says), "{err}");
    }
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &std::fs::symlink_metadata(&fifo).unwrap().file_type()
    ));
    // Nor a path where no file can go, refused before anything is built.
    for (out, says) in [
        (format!("{source}/x.wasm"), "is not a directory"),
        (format!("{d}/out/"), "names a directory"),
    ] {
        let (code, _, err) = run_bin(&["build", "app:app", "-p", &d, "-o", &out]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(says) && !err.contains("building"), "{err}");
    }
    // The output gets the mode the user's umask gives, as `cp` would (it
    // was 0600 whatever the umask, unreadable for a service's user).
    for (umask, mode) in [("022", 0o644), ("027", 0o640)] {
        let out = dir.join(format!("umask-{umask}.wasm"));
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("umask {umask} && exec \"$@\""))
            .arg("sh")
            .arg(bin().get_program())
            .args(["build", "app:app", "-p", &d, "-o"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(status.status.success(), "{status:?}");
        let got = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&out).unwrap().permissions(),
        );
        assert_eq!(got & 0o777, mode, "umask {umask}: {got:o}");
    }

    // `run path/app.py:app` builds into the cache and serves.
    let script = format!("{d}/app.py:app");
    let s = Server::start_with(&["run", &script]);
    assert_eq!(get(&s, "/"), (200, "first".to_owned()));
    // The script's directory alone ships, not also the working directory
    // (here the repository, with its Cargo.toml).
    assert_eq!(get(&s, "/mounts"), (200, "mounted: ".to_owned()));
    drop(s);
    app("second");
    let s = Server::start_with(&["run", &script]);
    assert_eq!(get(&s, "/"), (200, "second".to_owned()));
    drop(s);
    // Without a callable, `application`, as gunicorn (and `build`) take
    // it: for a script path, and for a module with -p.
    write(&dir, "wsgi.py", "from app import app as application\n");
    let s = Server::start_with(&["run", &format!("{d}/wsgi.py")]);
    assert_eq!(get(&s, "/"), (200, "second".to_owned()));
    drop(s);
    let s = Server::start_with(&["run", "wsgi", "-p", &d]);
    assert_eq!(get(&s, "/"), (200, "second".to_owned()));
}

#[test]
fn run_reports_a_missing_app_clearly() {
    let (code, _, err) = run_bin(&["run", "nowhere/app.py:app"]);
    assert_eq!(code, 1);
    assert!(err.contains("nowhere/app.py: no such file"), "{err}");
    let (code, _, err) = run_bin(&["run", "missing.wasm"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read component missing.wasm"), "{err}");
}

/// A missing `--site-packages` is named before pip resolves anything else
/// the build asked for (here a requirement pip could never find).
#[test]
fn a_missing_site_packages_is_named_before_any_resolving() {
    let dir = temp_dir("missing-site");
    write(
        &dir,
        "app.py",
        "def app(environ, start_response):\n    pass\n",
    );
    write(
        &dir,
        "req.txt",
        "rsgi-wasm-no-such-distribution-anywhere==1\n",
    );
    let d = dir.display().to_string();
    let (req, missing) = (format!("{d}/req.txt"), format!("{d}/no-site"));
    let args = [
        "build",
        "app:app",
        "-p",
        &d,
        "-r",
        &req,
        "--site-packages",
        &missing,
    ];
    let (code, _, err) = run_bin(&args);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("--site-packages {missing}: no such directory")),
        "{err}"
    );
    assert!(!err.contains("rsgi-wasm-no-such-distribution"), "{err}");
    // A virtualenv's root, not its site-packages: said so, with where.
    let venv = format!("{d}/venv");
    write(&dir, "venv/pyvenv.cfg", "home = /usr/bin\n");
    let args = ["build", "app:app", "-p", &d, "--site-packages", &venv];
    let (code, _, err) = run_bin(&args);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("this is a virtualenv") && err.contains("/lib/python3.X/site-packages"),
        "{err}"
    );
    // With its site-packages there, that very path, ready to paste.
    std::fs::create_dir_all(dir.join("venv/lib/python3.11/site-packages")).unwrap();
    let (code, _, err) = run_bin(&args);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("({venv}/lib/python3.11/site-packages)")),
        "{err}"
    );
}

/// Inputs a build must refuse with a sentence, not pip's traceback, a
/// walk of the whole disk, or packages from where the user said not to
/// look.
#[test]
fn awkward_build_inputs_are_refused_naming_what_is_wrong() {
    let dir = temp_dir("awkward-inputs");
    write(
        &dir,
        "app.py",
        "def app(environ, start_response):\n    pass\n",
    );
    let d = dir.display().to_string();
    let (code, _, err) = run_bin(&["build", "app:app", "-p", "/"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("-p /: the whole filesystem cannot ship"),
        "{err}"
    );
    // pip reads requirements as UTF-8 and died with a traceback.
    std::fs::write(dir.join("latin1.txt"), b"six  # caf\xe9\n").unwrap();
    let latin1 = format!("{d}/latin1.txt");
    let (code, _, err) = run_bin(&["build", "app:app", "-p", &d, "-r", &latin1]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("is not UTF-8 text") && !err.contains("Traceback"),
        "{err}"
    );
    // --no-index holds for the sdist fallback too: six was fetched from
    // the index and built after pip found no wheel where it was told to
    // look.
    // pip's own settings on this machine (PIP_FIND_LINKS, a pip.conf) must
    // not offer what the requirements' own locations lack.
    let offline_build = |requirements: &str| {
        let args = ["build", "app:app", "-p", &d, "-r", requirements];
        outcome(
            bin()
                .current_dir(repo())
                .args(args)
                .env_remove("PIP_FIND_LINKS")
                .env("PIP_CONFIG_FILE", "/dev/null"),
        )
    };
    write(&dir, "offline.txt", "--no-index\nsix==1.17.0\n");
    let (code, _, err) = offline_build(&format!("{d}/offline.txt"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("six==1.17.0: the requirements say --no-index"),
        "{err}"
    );
    // An sdist that is there, whose build backend is not: that is named.
    let links = dir.join("links");
    std::fs::create_dir_all(&links).unwrap();
    python_script(SDIST_NEEDING_SETUPTOOLS, &links);
    write(
        &dir,
        "offline-sdist.txt",
        &format!("--no-index\n--find-links {}\nmypkg-n\n", links.display()),
    );
    let (code, _, err) = offline_build(&format!("{d}/offline-sdist.txt"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("mypkg-n: building its source distribution needs setuptools")
            && err.contains("put a wheel of it in their --find-links directory"),
        "{err}"
    );
    // An app that fails at import: what it printed first is shown with the
    // error, often the clue to it.
    let loud = temp_dir("awkward-loud");
    write(
        &loud,
        "app.py",
        "import sys\nprint('connecting to the db')\nprint('no DATABASE_URL', file=sys.stderr)\nraise ValueError('x')\n",
    );
    let out = format!("{}/app.wasm", loud.display());
    let (code, _, err) = run_bin(&[
        "build",
        "app:app",
        "-p",
        &loud.display().to_string(),
        "-o",
        &out,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("ValueError: x")
            && err.contains("what the app printed while it was imported:\nconnecting to the db\nno DATABASE_URL"),
        "{err}"
    );
}

/// Writes `mypkg_n-0.1.tar.gz`, an sdist built with setuptools, into argv[1].
const SDIST_NEEDING_SETUPTOOLS: &str = r#"
import io, sys, tarfile
files = {
    "mypkg_n-0.1/pyproject.toml": '[build-system]\nrequires = ["setuptools>=40.8.0"]\nbuild-backend = "setuptools.build_meta"\n\n[project]\nname = "mypkg-n"\nversion = "0.1"\n',
    "mypkg_n-0.1/mypkg_n.py": "X = 42\n",
    "mypkg_n-0.1/PKG-INFO": "Metadata-Version: 2.1\nName: mypkg-n\nVersion: 0.1\n",
}
with tarfile.open(sys.argv[1] + "/mypkg_n-0.1.tar.gz", "w:gz") as t:
    for name, text in files.items():
        data = text.encode()
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 1577836800
        t.addfile(info, io.BytesIO(data))
"#;

/// gunicorn's factory form with literal arguments, colons inside them
/// included, from `run`'s `path/app.py:...` spelling.
#[test]
fn a_factory_gets_its_literal_arguments_and_a_loud_import_builds() {
    // componentize-py keeps 10,000 bytes of each output stream while
    // building and fails the next write: the app's output past a cap is
    // dropped, and a logger holding stderr since import still logs whole.
    let dir = temp_dir("factory");
    write(
        &dir,
        "app.py",
        r#"
import logging, sys, warnings

warnings.warn("no directory at /collected/")
print("escape \x1b[2Jcleared")
for i in range(20000):
    print("line", i)
sys.stderr.write("x" * 16000 + "\n")
log = logging.getLogger("loud")
log.addHandler(logging.StreamHandler(sys.stderr))
log.setLevel(logging.INFO)

def create_app(db, debug=False, extra=None):
    body = repr((db, debug, extra)).encode()

    def app(environ, start_response):
        log.info("served " + "y" * 12000)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    return app
"#,
    );
    let script = format!(
        "{}/app.py:create_app('sqlite:///x.db', debug=True, extra={{'k': [1, 2.5, None]}})",
        dir.display()
    );
    let s = Server::start_with(&["run", &script, "--no-warmup"]);
    assert_eq!(
        get(&s, "/"),
        (
            200,
            "('sqlite:///x.db', True, {'k': [1, 2.5, None]})".to_owned()
        )
    );
    s.wait_for_log(&format!("served {}", "y".repeat(12000)));
    // What the import printed is in the build's report, up to the cap:
    // a warning there is often the only word of what will not work.
    let logs = s.logs();
    for line in [
        "[import stdout] line 0\n",
        "[import stdout] [rsgi-wasm: the rest of the output while building is dropped]",
        "[import stderr] /",
        "UserWarning: no directory at /collected/",
        // Shown, not obeyed by the terminal.
        "[import stdout] escape \\x1b[2Jcleared",
    ] {
        assert!(logs.contains(line), "{line:?} not in\n{logs}");
    }
    assert!(!logs.contains("line 19999"), "{logs}");
}

/// The import runs at build time, in an empty environment: what the app's
/// code looked up there (itself or through a library's helper) is named
/// with its line, as `--env` at run time cannot change it; a lookup that
/// fails the import says why; what the import set stays set.
#[test]
fn environment_lookups_at_import_are_named() {
    let dir = temp_dir("env-at-import");
    write(
        &dir,
        "settings_lib.py",
        "import os\ndef env(key):\n    if key not in os.environ:\n        \
         raise LookupError(f'Set the {key} environment variable')\n    return os.environ[key]\n",
    );
    write(
        &dir,
        "app.py",
        r#"
import os
DEBUG = os.environ.get("DEBUG", "") == "1"
HAS_DSN = "DATABASE_URL" in os.environ
NAME = os.getenv("APP_NAME", "default")
os.environ.setdefault("SET_AT_IMPORT", "kept")
os.environ.setdefault("GIVEN_WINS", "import")
ALL = dict(os.environ)
HELD = open(os.path.join(os.path.dirname(__file__), "held.txt"), "w")

def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    seen = [os.getenv(k) for k in ("PER_REQUEST", "SET_AT_IMPORT", "GIVEN_WINS")]
    return [f"{NAME} {seen}".encode()]
"#,
    );
    let app = dir.join("app.py").display().to_string();
    let s = Server::start_with(&[
        "run",
        &app,
        "--env",
        "APP_NAME=given",
        "--env",
        "PER_REQUEST=yes",
        "--env",
        "GIVEN_WINS=env",
    ]);
    let built = build("env-at-import", &["app", "-p", &dir.display().to_string()]);
    // What the import set is there at run time, as natively, under what
    // `--env` gives: request after request of one instance.
    for _ in 0..3 {
        assert_eq!(
            get(&s, "/"),
            (200, "default ['yes', 'kept', 'env']".to_owned())
        );
    }
    let logs = s.logs();
    for read in [
        format!(
            "looked up DEBUG ({app}:3), DATABASE_URL ({app}:4), APP_NAME ({app}:5) in the \
             environment and read the whole environment ({app}:8)"
        ),
        "`--env` at run time will not change it".to_owned(),
    ] {
        assert!(logs.contains(&read), "{read:?} not in\n{logs}");
    }
    // And the server given values the import already read says so, once
    // for the app, however many instances start.
    let told: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("given here, but the app read"))
        .collect();
    assert_eq!(told.len(), 1, "{logs}");
    assert!(
        told[0].contains("WARN")
            && told[0].contains("APP_NAME, GIVEN_WINS are given here, but the app read them"),
        "{logs}"
    );
    // A file the import left open cannot be used at run time.
    let held = format!(
        "the app keeps {} open from its import",
        dir.join("held.txt").display()
    );
    assert!(logs.contains(&held), "{held:?} not in\n{logs}");
    // And, as what the import wrote in the app's directory, that writing
    // there fails at run time.
    let wrote = format!(
        "the import or a warm-up request wrote {} in the app's own directory",
        dir.join("held.txt").display()
    );
    assert!(logs.contains(&wrote), "{wrote:?} not in\n{logs}");
    // Read per request (the warm-up's included), the build's own, or
    // then set by the app itself (Django's settings module).
    for not_named in [
        "PER_REQUEST (",
        "SERVER_SOFTWARE (",
        "SET_AT_IMPORT (",
        "GIVEN_WINS (",
    ] {
        assert!(!logs.contains(not_named), "{not_named}: {logs}");
    }
    // A script run with a value the import already decided on is told so
    // (Django's settings module); one the import never read is not.
    let script = ["-c", "import os; print(os.environ['GIVEN_WINS'])"];
    let exec = |env: &str| {
        let mut args = vec!["exec", built.to_str().unwrap(), "--env", env, "--"];
        args.extend(script);
        run_bin(&args)
    };
    let (code, out, err) = exec("GIVEN_WINS=other");
    assert_eq!((code, out.as_str()), (0, "other\n"), "{err}");
    assert!(
        err.contains("GIVEN_WINS is given here, but the app read it when it was imported"),
        "{err}"
    );
    let (code, out, err) = exec("PER_REQUEST=x");
    assert_eq!((code, out.as_str()), (0, "import\n"), "{err}");
    assert!(!err.contains("given here"), "{err}");
    write(
        &dir,
        "app.py",
        "import os\nKEY = os.environ['SECRET_KEY']\n",
    );
    let e = build_error("app", &dir, None);
    assert!(e.contains("KeyError: 'SECRET_KEY'"), "{e}");
    assert!(
        e.contains("SECRET_KEY is not set: the app is imported at build time"),
        "{e}"
    );
    write(
        &dir,
        "app.py",
        "from settings_lib import env\nDB = env('DATABASE_URL')\n",
    );
    let e = build_error("app", &dir, None);
    assert!(
        e.contains("DATABASE_URL is not set: the app is imported at build time"),
        "{e}"
    );
}

/// An app module named like a standard one: the app's own is imported
/// where `python app.py` would import it (`tempfile`); where the server
/// loaded the standard one before the app (`json`, and `random`, which the
/// runtime reseeds by name) the build says the app's is not used, instead
/// of failing or ignoring it without a word.
#[test]
fn app_modules_named_like_standard_ones_are_used_or_named_in_a_warning() {
    let dir = temp_dir("stdlib-names");
    // `struct.py` is the app's too, and must not stop the host's own step
    // after the app (the list of snapshot objects).
    for name in [
        "random.py",
        "json.py",
        "tempfile.py",
        "struct.py",
        "sitecustomize.py",
    ] {
        write(&dir, name, "WHOSE = \"app\"\n");
    }
    write(
        &dir,
        "app.py",
        r#"
import json, random, tempfile

def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    whose = [getattr(m, "WHOSE", "std") for m in (json, random, tempfile)]
    return [" ".join(whose).encode(), b" %d" % (random.randrange(5) // 10)]
"#,
    );
    let s = Server::start_with(&["run", &format!("{}/app.py", dir.display())]);
    assert_eq!(get(&s, "/"), (200, "std std app 0".to_owned()));
    for name in ["json", "random"] {
        let warning = format!("warning: the app's own module '{name}' is not used");
        assert!(s.logs().contains(&warning), "{}", s.logs());
    }
    for name in ["tempfile", "struct", "sitecustomize"] {
        let warning = format!("'{name}' is not used");
        assert!(!s.logs().contains(&warning), "{}", s.logs());
    }
    assert!(!s.logs().contains("left mortal"), "{}", s.logs());
}

/// An import that never returns is stopped at `--build-timeout` with an
/// error saying so, and the process doing the import is gone with it.
#[test]
fn a_build_whose_import_never_returns_stops_at_the_build_timeout() {
    let dir = temp_dir("hanging-import");
    write(
        &dir,
        "app.py",
        "import time\ntime.sleep(10**6)\n\ndef app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'never']\n",
    );
    let out = dir.join("app.wasm");
    let res = bin()
        .args(["build", "app:app", "--build-timeout", "90s", "-o"])
        .arg(&out)
        .arg("-p")
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(1), "{err}");
    assert!(
        err.contains("app:app: linking, importing the app and its warm-up requests did not finish within 90s (--build-timeout)"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists());
    // The pre-initialising child names the app's directory on its command
    // line; none may outlive the build.
    let needle = dir.to_string_lossy().into_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let left: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains("internal-preinit") && c.contains(&needle))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running: {left:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The build's scratch directory under `tmp`, once one exists.
fn build_scratch_in(tmp: &Path) -> Option<std::path::PathBuf> {
    std::fs::read_dir(tmp).ok()?.flatten().find_map(|run| {
        std::fs::read_dir(run.path())
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("build-"))
            })
    })
}

#[test]
fn a_killed_build_s_scratch_is_removed_by_the_next_start() {
    let dir = temp_dir("killed-build");
    write(
        &dir,
        "app.py",
        "import time\ntime.sleep(10**6)\n\ndef app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'never']\n",
    );
    let tmp = temp_dir("killed-build-tmp");
    let mut build = bin()
        .args(["build", "app:app", "-o"])
        .arg(dir.join("app.wasm"))
        .arg("-p")
        .arg(&dir)
        .env("TMPDIR", &tmp)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let scratch = loop {
        if let Some(found) = build_scratch_in(&tmp) {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no scratch directory in {tmp:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    // As the OOM killer would: no destructor, no exit handler.
    build.kill().unwrap();
    build.wait().unwrap();
    assert!(scratch.exists());
    let tmp_text = tmp.to_string_lossy().into_owned();
    let s = Server::start_env(
        &["run", router().to_str().unwrap()],
        &[("TMPDIR", tmp_text.as_str())],
    );
    s.wait_for_log("left by a server that was killed");
    assert!(!scratch.exists(), "{scratch:?} is still there");
    assert!(build_scratch_in(&tmp).is_none());
}

const LAZY_APP: &str = r#"
import os

HERE = os.path.dirname(__file__)

# Runs at build time only (the snapshot holds the imported module).
try:
    with open(os.path.join(HERE, "written_at_build.txt"), "w") as f:
        f.write("the build wrote this")
except OSError:
    pass

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path.startswith("/file/"):
        try:
            with open(os.path.join(HERE, path[len("/file/"):])) as f:
                body = f.read()
        except OSError:
            body = "missing"
    elif path == "/lazy":
        # Not imported at build time: comes from the shipped stdlib.
        import fractions
        body = str(fractions.Fraction(1, 3) * 3)
    elif path == "/data":
        with open(os.path.join(HERE, "templates", "page.txt")) as f:
            body = f.read()
    elif path == "/relative":
        # The working directory is the first -p directory.
        with open("templates/page.txt") as f:
            body = f.read()
    else:
        body = "index"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body.encode()]
"#;

const SCRIPT: &str = r#"
import sqlite3, sys
db = sqlite3.connect("/data/notes.db")
db.execute("create table if not exists notes (text)")
db.execute("insert into notes values (?)", (sys.argv[1],))
db.commit()
print("notes:", db.execute("select count(*) from notes").fetchone()[0])
sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
"#;

#[test]
fn lazy_imports_files_and_exec_work_at_run_time() {
    let dir = temp_dir("lazy");
    write(&dir, "app.py", LAZY_APP);
    write(&dir, "templates/page.txt", "a template read per request\n");
    write(&dir, "tools/note.py", SCRIPT);
    write(&dir, "tools/__init__.py", "");
    // As `python tools/sibling.py`: the modules beside a script import.
    write(
        &dir,
        "tools/sibling.py",
        "import words\nprint(words.WORD)\n",
    );
    write(&dir, "tools/words.py", "WORD = 'beside'\n");
    write(
        &dir,
        "tools/bye.py",
        "import os, sys\nos._exit(int(sys.argv[1]))\n",
    );
    // A link to a file of the app ships its content; one to a file of the
    // build machine outside the app's directory does not.
    let outside = temp_dir("lazy-outside");
    write(&outside, "secret.txt", "a file of the build machine\n");
    std::os::unix::fs::symlink("page.txt", dir.join("templates/linked.txt")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), dir.join("secret.txt")).unwrap();
    // Loops are not followed, and a name WASI cannot spell is left out.
    std::os::unix::fs::symlink(".", dir.join("self")).unwrap();
    std::os::unix::fs::symlink("..", dir.join("templates/up")).unwrap();
    use std::os::unix::ffi::OsStrExt;
    std::fs::write(
        dir.join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt")),
        "latin-1 name",
    )
    .unwrap();
    let d = dir.display().to_string();
    let c = build("lazy", &["app:app", "-p", &d, "--no-warmup"]);
    // The import wrote into a copy: the app's directory is untouched.
    assert!(!dir.join("written_at_build.txt").exists());
    let s = Server::start(&c, &[]);
    assert_eq!(
        get(&s, "/file/templates/linked.txt"),
        (200, "a template read per request\n".to_owned())
    );
    assert_eq!(get(&s, "/file/secret.txt"), (200, "missing".to_owned()));
    assert_eq!(get(&s, "/lazy"), (200, "1".to_owned()));
    assert_eq!(
        get(&s, "/data"),
        (200, "a template read per request\n".to_owned())
    );
    assert_eq!(
        get(&s, "/relative"),
        (200, "a template read per request\n".to_owned())
    );
    drop(s);

    // `exec`: scripts and modules of the app, the terminal's stdio, the
    // script's exit status, and only the granted directory is writable.
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let grant = format!("{}::/data", data.display());
    let comp = c.display().to_string();
    let (code, out, err) = run_bin(&["exec", &comp, "--dir", &grant, "--", "tools/note.py", "one"]);
    assert_eq!((code, out.as_str()), (0, "notes: 1\n"), "{err}");
    let (code, out, err) = run_bin(&["exec", &comp, "--", "tools/sibling.py"]);
    assert_eq!((code, out.as_str()), (0, "beside\n"), "{err}");
    let (code, out, err) = run_bin(&[
        "exec",
        &comp,
        "--dir",
        &grant,
        "--",
        "-m",
        "tools.note",
        "two",
        "7",
    ]);
    assert_eq!((code, out.as_str()), (7, "notes: 2\n"), "{err}");
    assert!(data.join("notes.db").is_file());
    // As a POSIX parent sees `sys.exit(300)`: its low byte.
    let (code, _, err) = run_bin(&[
        "exec",
        &comp,
        "--dir",
        &grant,
        "--",
        "tools/note.py",
        "three",
        "300",
    ]);
    assert_eq!(code, 44, "{err}");
    let (code, _, err) = run_bin(&["exec", &comp, "--", "-m", "tools.nosuch"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("No module named tools.nosuch"), "{err}");
    assert!(!err.contains("Traceback"), "{err}");
    // A rate on output that goes to the terminal whole would not apply.
    let (code, _, err) = run_bin(&["exec", &comp, "--log-rate", "0", "--", "-c", "pass"]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("--log-rate limits what `run`"), "{err}");
    // `-c`, as `python -c`: the app's modules importable, the grants apply.
    let (code, out, err) = run_bin(&[
        "exec",
        &comp,
        "--dir",
        &grant,
        "--",
        "-c",
        "import sys, os, tools; print(sys.argv, os.path.isfile('/data/notes.db'))",
        "x",
    ]);
    assert_eq!((code, out.as_str()), (0, "['-c', 'x'] True\n"), "{err}");
    // Piped stdin is there to be found, as in a native pipe: a
    // zero-timeout select sees it (Django's `shell` reads piped code so).
    let mut child = bin()
        .args([
            "exec",
            &comp,
            "--",
            "-c",
            "import select, sys, time; time.sleep(1); \
             print(select.select([sys.stdin], [], [], 0)[0] != [], sys.stdin.read())",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"piped").unwrap();
    let done = child.wait_with_output().unwrap();
    assert_eq!(
        (
            done.status.code(),
            String::from_utf8_lossy(&done.stdout).as_ref()
        ),
        (Some(0), "True piped\n"),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    // One write past what the terminal's stream takes at once (1 MiB)
    // arrives whole.
    let (code, out, err) = run_bin(&[
        "exec",
        &comp,
        "--",
        "-c",
        "import sys; sys.stdout.write('y' * 3_000_000 + '\\n'); sys.stderr.write('z' * 2_000_000)",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        (out.len(), out.matches('y').count()),
        (3_000_001, 3_000_000)
    );
    assert_eq!(err.matches('z').count(), 2_000_000);
    // A reader that left (`| head`) is a broken pipe, as natively: the
    // script's `except BrokenPipeError` runs (it was an OSError, EIO).
    let mut child = bin()
        .args([
            "exec",
            &comp,
            "--",
            "-c",
            "import sys\ntry:\n    for i in range(10**7): print(i)\nexcept BrokenPipeError:\n    sys.stderr.write('broken pipe seen')",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 2];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    let done = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&done.stderr);
    assert!(err.contains("broken pipe seen"), "{err}");
    // Ctrl-C ends it with 130, as a shell reports SIGINT, and removes its
    // private /tmp (the default action left it for the next start).
    let tmp = temp_dir("exec-signal");
    let mut child = bin()
        .env("TMPDIR", &tmp)
        .args(["exec", &comp, "--", "-c", "import time; time.sleep(600)"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::fs::read_dir(&tmp).unwrap().next().is_none() {
        assert!(std::time::Instant::now() < deadline, "no private /tmp made");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: a signal to the child this test started and still waits on.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    assert_eq!(child.wait().unwrap().code(), Some(130));
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    // os._exit is an exit, not a crash (WASI 0.2 says only success or
    // failure: status 1 for any other than 0).
    let (code, _, err) = run_bin(&["exec", &comp, "--", "tools/bye.py", "0"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run_bin(&["exec", &comp, "--", "tools/bye.py", "3"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        !err.contains("crashed") && !err.contains("backtrace"),
        "{err}"
    );
    let (code, _, err) = run_bin(&["exec", &comp, "--", "tools/note.py", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("sqlite3.OperationalError"), "{err}");
    let (code, _, err) = run_bin(&["exec", &comp, "--", "manage.py"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("manage.py: no such script in the app's directories"),
        "{err}"
    );
    // The app's own files are read-only at run time.
    let (code, _, err) = run_bin(&[
        "exec",
        &comp,
        "--dir",
        &format!("{}::/1", data.display()),
        "--",
        "x.py",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("mounted at /python and /1, /2"), "{err}");
}

#[test]
fn two_builds_at_once_share_a_fresh_cache_without_clobbering() {
    // Two terminals (or CI and a developer) building the same project with
    // the same requirements into one empty cache: both resolve, both export
    // the standard library, both publish; neither may break the other.
    let dir = temp_dir("concurrent");
    let cache = temp_dir("concurrent-cache");
    write(&dir, "requirements.txt", "six==1.17.0\n");
    write(
        &dir,
        "app.py",
        "import six\ndef app(environ, start_response):\n    start_response('200 OK', [])\n    return [six.ensure_binary('six ' + six.__version__)]\n",
    );
    let d = dir.display().to_string();
    let builds: Vec<_> = (0..2)
        .map(|i| {
            bin()
                .current_dir(repo())
                .args(["build", "app:app", "-p", &d, "-r"])
                .arg(dir.join("requirements.txt"))
                .arg("--cache-dir")
                .arg(&cache)
                .arg("-o")
                .arg(dir.join(format!("app{i}.wasm")))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for b in builds {
        let out = b.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
    }
    // No staging directories left behind, and what was published works.
    let leftovers: Vec<_> = walk(&cache)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".partial-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    for i in 0..2 {
        let c = dir.join(format!("app{i}.wasm"));
        let cache_flag = cache.display().to_string();
        let s = Server::start(&c, &["--cache-dir", &cache_flag]);
        assert_eq!(get(&s, "/"), (200, "six 1.17.0".to_owned()));
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

/// A WSGI app answering `version` (and `/slow`: the same, 20 s later).
fn versioned_app(version: &str) -> String {
    format!(
        "import time\n\n\
         def app(environ, start_response):\n    \
         if environ['PATH_INFO'] == '/slow':\n        time.sleep(20)\n    \
         start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
         return [b'{version}']\n"
    )
}

#[test]
fn run_reload_swaps_in_each_edit_and_survives_a_broken_one() {
    let dir = temp_dir("reload");
    write(&dir, "app.py", &versioned_app("v1"));
    let script = format!("{}:app", dir.join("app.py").display());
    let s = Server::start_with(&[
        "run",
        &script,
        "--reload",
        "--no-warmup",
        "--log-rate",
        "1KiB",
    ]);
    s.wait_for_log("--reload: watching");
    assert_eq!(get(&s, "/"), (200, "v1".to_owned()));
    let swapped = "--reload: swapped in";

    // A request already running when the new version comes in finishes on
    // the old one.
    let slow = {
        let url = s.url("/slow");
        std::thread::spawn(move || {
            let r = client().get(url).send().unwrap();
            (r.status().as_u16(), r.text().unwrap())
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    write(&dir, "app.py", &versioned_app("v2"));
    s.wait_for_log_count(swapped, 1);
    assert_eq!(get(&s, "/"), (200, "v2".to_owned()));
    assert_eq!(slow.join().unwrap(), (200, "v1".to_owned()));

    // A file that does not import: the error is logged, v2 keeps serving.
    write(&dir, "app.py", "def app(environ, start_response:\n");
    s.wait_for_log_count("still serving the previous", 1);
    assert!(s.logs().contains("syntax error in"), "{}", s.logs());
    assert_eq!(get(&s, "/"), (200, "v2".to_owned()));
    // One that prints past the log rate before it fails: the reason is
    // still logged.
    write(
        &dir,
        "app.py",
        "for i in range(300):\n    print('flood', i, 'x' * 100)\nraise ValueError('the real reason')\n",
    );
    s.wait_for_log_count("still serving the previous", 2);
    assert!(
        s.logs().contains("ValueError: the real reason"),
        "{}",
        s.logs()
    );
    write(&dir, "app.py", &versioned_app("v3"));
    s.wait_for_log_count(swapped, 2);
    assert_eq!(get(&s, "/"), (200, "v3".to_owned()));
    write(&dir, "app.py", &versioned_app("v1"));
    s.wait_for_log_count(swapped, 3);
    assert_eq!(get(&s, "/"), (200, "v1".to_owned()));
    // An empty directory does not ship: seen, but nothing to swap in.
    std::fs::create_dir(dir.join("empty")).unwrap();
    s.wait_for_log_count("no shipped file changed", 1);
    assert_eq!(s.logs().matches(swapped).count(), 3, "{}", s.logs());
    // A new module next to the app is seen too.
    write(&dir, "greeting.py", "TEXT = b'v4 from greeting.py'\n");
    write(
        &dir,
        "app.py",
        "from greeting import TEXT\n\ndef app(environ, start_response):\n    \
         start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [TEXT]\n",
    );
    // (Two writes: one burst of changes, or two swaps if the watcher saw
    // them apart; either way the last one serves v4.)
    s.wait_for_log_count(swapped, 4);
    let serves = |text: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while get(&s, "/").1 != text && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        assert_eq!(get(&s, "/"), (200, text.to_owned()), "{}", s.logs());
    };
    serves("v4 from greeting.py");
    // None of the edits rebuilt: the app is imported live from its
    // directory by each new instance.
    let logs = s.logs();
    let live = logs
        .matches("(no rebuild: the app is imported live)")
        .count();
    assert!(live >= 4 && live == logs.matches(swapped).count(), "{logs}");
    // The directory itself removed and made anew (a fresh checkout): the
    // new one is watched, and so are the edits after it.
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    write(&dir, "app.py", &versioned_app("v5"));
    serves("v5");
    write(&dir, "app.py", &versioned_app("v6"));
    serves("v6");
}

#[test]
fn a_live_build_ships_none_of_the_app_s_own_files() {
    // `--reload` mounts the app's directories as they are; its build's key
    // leaves their contents out, so what they held then must not ship: a
    // file too large to unpack, removed since, kept the app from starting
    // at every later edit and restart.
    let dir = temp_dir("reload-big-file");
    write(&dir, "app.py", &versioned_app("live"));
    let big: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.join("data.bin"), big).unwrap();
    let script = format!("{}:app", dir.join("app.py").display());
    let s = Server::start(
        Path::new(&script),
        &["--reload", "--no-warmup", "--max-unpacked", "20MiB"],
    );
    assert_eq!(get(&s, "/"), (200, "live".to_owned()));
    assert!(
        !s.logs().contains("ships more files than may be unpacked"),
        "{}",
        s.logs()
    );
}

#[test]
fn run_reload_waits_for_an_app_broken_at_start_to_be_fixed() {
    // As a development reloader: the first version does not import, the
    // server says why and listens once an edit fixes it.
    let dir = temp_dir("reload-broken");
    write(&dir, "app.py", "def app(environ, start_response:\n");
    let script = format!("{}:app", dir.join("app.py").display());
    let s = Server::start_after(&["run", &script, "--reload", "--no-warmup"], |logs| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        while !logs().contains("--reload: waiting for a change") {
            assert!(std::time::Instant::now() < deadline, "{}", logs());
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(logs().contains("syntax error in"), "{}", logs());
        write(&dir, "app.py", &versioned_app("fixed"));
    });
    assert_eq!(get(&s, "/"), (200, "fixed".to_owned()));
    // Without --reload the same app is an error, not a wait.
    write(&dir, "app.py", "def app(environ, start_response:\n");
    let (code, _, err) = run_bin(&["run", &script, "--no-warmup", "--listen", "127.0.0.1:0"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("syntax error in"), "{err}");
}
