"""Build-time start of the guest: load the user's app, warm it up.

Runs at module top level of the generated entry module, i.e. during
componentize-py's pre-initialisation, so everything imported here (the app,
its dependencies, and whatever a warm-up request touches) is captured in the
snapshot, so a first request does not pay for it. Whatever a later request
imports lazily, and files the app reads (templates, migrations), come from
the read-only copy of the stdlib, app dirs and site-packages that the host
mounts at the same guest paths at run time (see ``host/src/bundle.rs``).

Errors are reported as one line starting with ``rsgi-wasm-build-error:``
which the host picks out of componentize-py's output.
"""

import ast
import importlib
import io
import sys
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from . import protocol
from .wsgi_input import InputStream

MARKER = "rsgi-wasm-build-error: "

# Characters of a build error report (see ``BuildError``).
REPORT_MAX = 3000

# Modules that frameworks and the stdlib import lazily on a first request
# (codecs by name, cookie and date parsing, ...). Cheap to import up front.
LAZY_STDLIB = (
    "encodings.idna",
    "encodings.punycode",
    "encodings.ascii",
    "encodings.latin_1",
    "encodings.utf_8",
    "encodings.utf_8_sig",
    "encodings.utf_16",
    "encodings.utf_32",
    "encodings.cp1252",
    "encodings.raw_unicode_escape",
    "encodings.unicode_escape",
    "encodings.charmap",
    "encodings.hex_codec",
    "encodings.base64_codec",
    "base64",
    "binascii",
    "calendar",
    "datetime",
    "email.utils",
    "email.parser",
    "email.message",
    "hashlib",
    "hmac",
    "html",
    "http",
    "http.cookies",
    "json",
    "locale",
    "mimetypes",
    "random",
    "secrets",
    "string",
    "struct",
    "tempfile",
    "unicodedata",
    "urllib.parse",
    "uuid",
    "zlib",
    "wsgiref.headers",
    "wsgiref.util",
)


class BuildError(Exception):
    """A problem with the user's app that stops the build."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        tell(message)


def tell(message: str) -> None:
    """Print ``message`` where the build reports a failure, each line
    marked (the host shows only marked lines)."""
    from .compat import report_stream

    # What componentize-py keeps of stderr has room for about this much
    # after the app's own output: the start says what failed and the
    # app's own line, a traceback's end why.
    if len(message) > REPORT_MAX:
        head = REPORT_MAX // 4
        cut = len(message) - REPORT_MAX
        message = f"{message[:head]}\n... ({cut} characters cut)\n{message[head + cut:]}"
    message = message.rstrip("\n")
    print(MARKER + message.replace("\n", "\n" + MARKER), file=report_stream(), flush=True)


def _host_path(path: Optional[str], mounts: Sequence[Tuple[str, str]]) -> str:
    """Map a guest path such as ``/1/app.py`` back to the user's file."""
    if not path:
        return "<unknown file>"
    for guest, host in mounts:
        prefix = guest.rstrip("/") + "/"
        if path.startswith(prefix):
            return host.rstrip("/") + "/" + path[len(prefix):]
    return path


def _app_frames(exc: BaseException, mounts: Sequence[Tuple[str, str]]) -> str:
    """``exc``'s traceback with the user's paths, without the frames of
    this adapter and of the import machinery, which say nothing to the
    user and took the room of the app's own line in a long report."""
    import os

    adapter = os.path.dirname(os.path.abspath(__file__)) + "/"
    shown = traceback.TracebackException.from_exception(exc)
    seen = set()
    todo = [shown]
    while todo:
        each = todo.pop()
        if id(each) in seen:
            continue
        seen.add(id(each))
        kept = [f for f in each.stack if not f.filename.startswith((adapter, "<frozen importlib"))]
        if kept:
            each.stack = traceback.StackSummary.from_list(kept)
        todo += [t for t in (each.__cause__, each.__context__) if t is not None]
        todo += getattr(each, "exceptions", None) or []
    text = "".join(shown.format())
    for guest, host in mounts:
        text = text.replace('"' + guest.rstrip("/") + "/", '"' + host.rstrip("/") + "/")
    return text


def import_app_module(module: str, mounts: Sequence[Tuple[str, str]], native: Dict[str, str]) -> Any:
    import os

    # As gunicorn sets it before loading the app: web.py turns its debug
    # pages (source, locals and request headers, for every client) on at
    # import unless it is there.
    os.environ.setdefault("SERVER_SOFTWARE", "rsgi-wasm")
    try:
        return importlib.import_module(module)
    except SyntaxError as e:
        where = _host_path(e.filename, mounts)
        raise BuildError(f"syntax error in {where}, line {e.lineno}: {e.msg}") from None
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if missing in native:
            raise BuildError(f"{native[missing]}: native extension, no WASI build available (needs module {missing})") from None
        if missing == module or module.startswith(missing + "."):
            dirs = ", ".join(host for _, host in mounts) or "(none)"
            raise BuildError(f"module {module!r} not found; looked in the app paths: {dirs} (add the right directory with -p)") from None
        if missing.partition(".")[0] in sys.stdlib_module_names:
            # `fcntl`, `_ctypes`: no requirement can add them.
            raise BuildError(
                f"importing {module!r} failed: {_importer(e, mounts)} imports {missing!r}, a module of "
                "the standard library that CPython for WASI does not have (docs/conformance.md lists "
                f"them), so that code cannot run in the sandbox\n{_app_frames(e, mounts)}"
            ) from None
        raise BuildError(
            f"importing {module!r} failed: module {missing!r} is not installed "
            f"(add it to requirements.txt, or with -p if it is your own code)\n{_app_frames(e, mounts)}"
        ) from None
    except BaseException as e:
        raise BuildError(f"importing {module!r} raised {type(e).__name__}: {e}\n{_app_frames(e, mounts)}") from None


def _importer(e: BaseException, mounts: Sequence[Tuple[str, str]]) -> str:
    """Where the import that failed with ``e`` was written: the last frame
    of its traceback outside the import machinery and, if there is one,
    outside the standard library (psycopg's `import ctypes`, not ctypes's
    own `from _ctypes import ...`)."""
    last = outside_stdlib = None
    tb = e.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if not name.startswith("<"):
            last = tb
            if not name.startswith("/python/"):
                outside_stdlib = tb
        tb = tb.tb_next
    last = outside_stdlib or last
    if last is None:
        return "the app"
    return f"{_host_path(last.tb_frame.f_code.co_filename, mounts)}:{last.tb_lineno}"


# What `record_environ_reads` notes for a read of every variable at once.
WHOLE_ENVIRONMENT = "(the whole environment)"


def record_environ_reads(
    own_dirs: Sequence[str], everything: Optional[Dict[str, None]] = None
) -> Callable[[], Dict[str, Tuple[str, int]]]:
    """Start noting the variables the app's code looks up in the
    environment and does not find (``os.environ[...]``, ``.get``,
    ``os.getenv``, ``in``, and a library's helper called by the app, such
    as decouple's ``config`` or django-environ's ``env``), and whether it
    reads all of it (``os.environ.copy()``, ``.items()``, Flask's
    ``from_prefixed_env``). The function returned stops and gives each
    one's first line of the app's code. The import runs at build time, in
    an empty environment: what it read is in the snapshot, and ``--env``
    at run time never reaches it. Left out: a dependency reading its own
    settings as it is imported, and the standard library's lookups
    (``tempfile``'s ``TMPDIR``). ``everything`` gets those of dependencies
    too (sentry-sdk's ``SENTRY_DSN``, read by the ``init`` the app calls):
    not for the build's advice, but `--env` at run time cannot change what
    they made of them either (see ``compat.overridden_lookups``)."""
    import _collections_abc
    import os

    environ_type = type(os.environ)
    real_get, real_iter = environ_type.__getitem__, environ_type.__iter__
    # Between the reader and `__getitem__`: `os.getenv`, `os.environ.copy`
    # and Mapping's methods (frozen modules, named so).
    lookups = {os.getenv.__code__.co_filename, _collections_abc.Mapping.get.__code__.co_filename}
    prefixes = tuple(d.rstrip("/") + "/" for d in own_dirs)
    # This adapter's own lookups (`SERVER_SOFTWARE`, set as gunicorn does).
    adapter = os.path.dirname(os.path.abspath(__file__)) + "/"
    read: Dict[str, Tuple[str, int]] = {}

    def note(key: str) -> None:
        frame = sys._getframe(2)
        while frame is not None and frame.f_code.co_filename in lookups:
            frame = frame.f_back
        if frame is None or frame.f_code.co_filename.startswith(("/python/", "<", adapter)):
            return
        if everything is not None:
            everything[key] = None
        direct = True
        while frame is not None:
            name = frame.f_code.co_filename
            if name.startswith(prefixes):
                # Through a library, only a variable the app named
                # (`config("SECRET_KEY")`), not one the library looks up
                # for itself (`Flask(__name__)` reads FLASK_DEBUG).
                if direct or key == WHOLE_ENVIRONMENT or key in frame.f_code.co_consts:
                    read[key] = (name, frame.f_lineno)
                return
            if name.startswith("<frozen importlib"):
                return
            direct = False
            frame = frame.f_back

    def __getitem__(self, key):  # type: ignore[no-untyped-def]
        try:
            return real_get(self, key)
        except KeyError:
            if self is os.environ and isinstance(key, str) and key not in read and prefixes:
                note(key)
            raise

    def __iter__(self):  # type: ignore[no-untyped-def]
        if self is os.environ and WHOLE_ENVIRONMENT not in read and prefixes:
            note(WHOLE_ENVIRONMENT)
        return real_iter(self)

    environ_type.__getitem__ = __getitem__  # type: ignore[method-assign]
    environ_type.__iter__ = __iter__  # type: ignore[method-assign]

    def stop() -> Dict[str, Tuple[str, int]]:
        # Those the app then set itself too: `os.environ.setdefault(
        # "DJANGO_SETTINGS_MODULE", ...)` chose the settings the component
        # holds, and `--env` cannot choose others.
        environ_type.__getitem__, environ_type.__iter__ = real_get, real_iter  # type: ignore[method-assign]
        return read

    return stop


def environ_read_warning(read: Dict[str, Tuple[str, int]], mounts: Sequence[Tuple[str, str]]) -> List[str]:
    """The build report's warning for what `record_environ_reads` noted."""
    where = {key: f"({_host_path(path, mounts)}:{line})" for key, (path, line) in read.items()}
    whole = where.pop(WHOLE_ENVIRONMENT, None)
    said = []
    if where:
        shown = [f"{key} {at}" for key, at in list(where.items())[:8]]
        more = f" and {len(where) - 8} more" if len(where) > 8 else ""
        said.append(f"looked up {', '.join(shown)}{more} in the environment")
    if whole:
        said.append(f"read the whole environment {whole}")
    if not said:
        return []
    return [
        f"warning: the app {' and '.join(said)} while it was imported, at build time, where the "
        "environment is empty: what it got is in the component, and `--env` at run time will not "
        "change it. Read settings when a request needs them, and keep them no longer than that "
        "request (warm-up requests run at build time too)"
    ]


def open_files_warning(own_dirs: Sequence[str], mounts: Sequence[Tuple[str, str]]) -> List[str]:
    """A warning for each file of the app's the import (or warm-up) left
    open: its descriptor is not in any instance, so every use at run time
    fails (`logging.basicConfig(filename=...)` logged `Bad file
    descriptor` for each line), and the app's directories are read-only
    then anyway."""
    import gc

    prefixes = tuple(d.rstrip("/") + "/" for d in own_dirs)
    # By `type()`, not `isinstance`: that asks a lazy proxy its
    # `__class__`, which would run the app's code.
    held = sorted(
        {
            obj.name
            for obj in gc.get_objects()
            if issubclass(type(obj), io.FileIO)
            and not obj.closed
            and type(obj.name) is str
            and obj.name.startswith(prefixes)
        }
    )
    return [
        f"warning: the app keeps {_host_path(name, mounts)} open from its import, at build time: "
        "no instance has that file open, so each use fails at run time (OSError: Bad file "
        "descriptor), and the app's directories are read-only then. Open it when a request needs "
        "it, in a --dir grant (logging: FileHandler(path, delay=True))"
        for name in held
    ]


# Files a build writes in the app's directories that are reported anyway:
# bytecode, and SQLite databases the host leaves out by name (and names).
_REPORTED_ELSEWHERE = (".pyc", ".sqlite3", ".sqlite", "-journal")

_SQLITE_MAGIC = b"SQLite format 3\x00"


def _is_sqlite(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    except OSError:
        return False


def written_at_build_warning(own_dirs: Sequence[str], mounts: Sequence[Tuple[str, str]], since: float) -> List[str]:
    """A warning naming what the import or a warm-up wrote in the app's
    own directories (files, and directories left empty), which are
    writable at build time only: a library that keeps its state there
    (Flask-Session's ``flask_session``, a file cache beside the code)
    silently loses every write at run time."""
    import os

    written = []
    for top in own_dirs:
        for root, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in files if files else ([""] if not dirs and root != top else []):
                path = os.path.join(root, name) if name else root
                if name.endswith(_REPORTED_ELSEWHERE):
                    continue
                try:
                    if os.stat(path).st_mtime >= since:
                        written.append(path)
                except OSError:
                    continue
    # A database made at import (Flask-SQLAlchemy's `sqlite:///project.db`
    # and `db.create_all()`) ships read-only, where SQLite fails every
    # query on it, reads too: said on its own, with what to do instead.
    databases = [p for p in written if _is_sqlite(p)]
    written = [p for p in written if p not in databases]
    said = [
        f"warning: the import or a warm-up request created the SQLite database {_host_path(p, mounts)} "
        "in the app's own directory; it ships in the component, read-only, and every query on it "
        "fails at run time (OperationalError: access permission denied). Keep the database in a "
        "--dir grant (for example --dir ./data::/data and sqlite:////data/app.db), and create its "
        "tables with `rsgi-wasm exec` rather than at import"
        for p in sorted(databases)
    ]
    if not written:
        return said
    shown = ", ".join(_host_path(p, mounts) for p in sorted(written)[:5])
    more = f" and {len(written) - 5} more" if len(written) > 5 else ""
    return said + [
        f"warning: the import or a warm-up request wrote {shown}{more} in the app's own directory, "
        "which is read-only at run time, so writing there fails then (Flask-Session's filesystem "
        "sessions, a file cache): keep such files in a --dir grant, or in /tmp"
    ]


def _dotted(node: Any) -> Optional[List[str]]:
    """``a.b.c`` as its parts, or None for any other expression."""
    parts: List[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def _wsgi_looking(module_obj: Any) -> List[Tuple[str, str]]:
    """What in ``module_obj`` looks like a WSGI app, at most three, each
    as what to build (``name`` or ``name()``) and how it is shown: a
    framework's app object (it has ``wsgi_app``, or a known name), a
    function of the module taking two arguments, or one every parameter
    of which has a default and whose name says it makes apps (a factory,
    built with its call)."""
    import inspect

    found = []
    for name, value in list(vars(module_obj).items()):
        if name.startswith("_") or isinstance(value, type) or inspect.ismodule(value) or not callable(value):
            continue
        if inspect.isfunction(value):
            if value.__module__ != getattr(module_obj, "__name__", None):
                continue
            try:
                params = inspect.signature(value).parameters.values()
            except (TypeError, ValueError):
                continue
            positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            required = [p for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
            factory_named = any(word in name.lower() for word in ("app", "factory", "create", "make", "wsgi"))
            if not required and (factory_named or len(positional) == 2):
                found.append((f"{name}()", f"{name} (an app factory, by its name and defaults)"))
            elif len(positional) == 2 and len(required) == 2:
                found.append((name, f"{name} (a function of two arguments)"))
        elif hasattr(value, "wsgi_app") or name in ("app", "application", "api", "wsgi", "server"):
            found.append((name, f"{name} (a {type(value).__name__})"))
        if len(found) == 3:
            break
    return found


def resolve_callable(module_obj: Any, module: str, expr: str, mounts: Sequence[Tuple[str, str]] = ()) -> Callable:
    """``name``, ``a.b``, ``factory()`` or ``factory('prod', debug=True)``
    (gunicorn's forms: arguments are Python literals), checked."""
    usage = f"{module}:{expr} is not a valid callable (use module:name, module:factory() or module:factory('arg', key=1) with literal arguments)"
    try:
        tree = ast.parse(expr.strip(), mode="eval").body
    except SyntaxError:
        raise BuildError(usage) from None
    call = tree if isinstance(tree, ast.Call) else None
    path = _dotted(call.func if call else tree)
    if path is None:
        raise BuildError(usage)
    args: List[Any] = []
    kwargs: Dict[str, Any] = {}
    if call:
        try:
            args = [ast.literal_eval(a) for a in call.args]
            for kw in call.keywords:
                if kw.arg is None:
                    raise ValueError("**")
                kwargs[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise BuildError(
                f"{module}:{expr}: the factory's arguments must be Python literals (strings, numbers, True/False/None, lists, dicts)"
            ) from None
    obj = module_obj
    for depth, part in enumerate(path):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            owner = f"module {module!r}" if depth == 0 else f"{module}:{'.'.join(path[:depth])}"
            found = _wsgi_looking(obj) if depth == 0 else []
            hint = f"; it has {', '.join(shown for _, shown in found)}: build {module}:{found[0][0]}" if found else ""
            raise BuildError(f"{owner} has no attribute {part!r} (looked up {module}:{expr}){hint}") from None
    if call:
        try:
            obj = obj(*args, **kwargs)
        except BaseException as e:
            raise BuildError(f"calling {module}:{expr} raised {type(e).__name__}: {e}\n{_app_frames(e, mounts)}") from None
    if not callable(obj):
        raise BuildError(f"{module}:{expr} is of type {type(obj).__name__}, not a callable WSGI application")
    import inspect

    if inspect.iscoroutinefunction(obj) or inspect.iscoroutinefunction(getattr(obj, "__call__", None)):
        raise BuildError(
            f"{module}:{expr} is an async callable, an ASGI application by the look of it; "
            "rsgi-wasm serves WSGI applications, callables taking (environ, start_response) "
            "(Django: get_wsgi_application(); Flask, Falcon, Pyramid and Bottle apps are WSGI)"
        )
    return obj


class LiveApp:
    """The app of a ``run --reload`` build: imported on first use, from the
    app's directories the host mounts live, so an edit needs a new
    instance, not a new build (the snapshot holds the stdlib only)."""

    def __init__(
        self,
        module: str,
        expr: str,
        mounts: Sequence[Tuple[str, str]],
        native: Dict[str, str],
        own_dirs: Sequence[str] = (),
        keep: Set[str] = frozenset(),  # type: ignore[assignment]
    ) -> None:
        self.spec = (module, expr, mounts, native)
        # Files added since the build may shadow what the adapter imported.
        self.shadow = (own_dirs, keep)
        self.app: Optional[Callable] = None

    def load(self) -> Callable:
        """The app, imported now if it was not yet (``BuildError`` if it
        does not import)."""
        if self.app is None:
            module, expr, mounts, native = self.spec
            forget_shadowed(*self.shadow)
            self.app = resolve_callable(import_app_module(module, mounts, native), module, expr, mounts)
        return self.app

    def __call__(self, environ: Dict[str, Any], start_response: Callable) -> Any:
        return self.load()(environ, start_response)


class _Discard(protocol.Transport):
    def __init__(self) -> None:
        self.status = ""
        self.cookies: List[str] = []

    def start(self, status: str, headers: protocol.Headers, first_chunk: bytes) -> None:
        self.status = status
        self.cookies = set_cookies(headers)

    def write(self, chunk: bytes) -> None:
        pass


# Each warm-up request is made this many times. CPython specialises an
# instruction on its second run, writing the code object's inline caches:
# a request whose code ran only once before the snapshot writes them in
# every fresh instance, a private copy of each page holding such code
# (measured on hello under `--isolation request`: 81 snapshot pages in 57
# runs written per request with one round; docs/architecture.md, "Fresh
# instances").
WARMUP_ROUNDS = 2


def warm_up(app: Callable, paths: List[str]) -> List[str]:
    """Drive ``app`` with GET requests through pure-Python stand-ins (the
    host imports cannot be called during pre-initialisation) and return one
    report line per path (a path given twice runs as if given once): how
    its first round went, and a later round's failure if one failed. A
    failed round is not repeated. Output is thrown away."""
    from . import compat

    report = []
    for target in dict.fromkeys(paths):
        outcomes: List[str] = []
        cookies: Dict[str, None] = {}
        for _ in range(WARMUP_ROUNDS):
            compat.warming(target)
            try:
                sink, errors, output, cut = _warm_once(app, target)
            finally:
                compat.warming(None)
            cookies.update(dict.fromkeys(sink.cookies))
            outcome, failed = _warm_outcome(sink.status, errors, output, cut)
            outcomes.append(outcome)
            if failed:
                break
        line = f"warm-up GET {target}: {outcomes[0]}"
        if failed and len(outcomes) > 1:
            # A failed round ends the loop: only the last can have failed.
            line += f"; run again: {outcomes[-1]}"
        report.append(line)
        if cookies:
            # Whatever the app keeps for that cookie (a session in its
            # cache, a cart) is in the snapshot: in every instance, under
            # a key anyone with the component file can read.
            report.append(
                f"warning: warm-up GET {target} set the cookie {', '.join(cookies)}: what the app keeps "
                "for it on the server (a session, a cart) is in the snapshot, shared by every instance under a "
                "key anyone with the component can read; warm up a path that sets no cookie "
                "(`--warmup PATH`), or build with `--no-warmup`"
            )
    forget_static_manifest()
    return report


def _warm_once(app: Callable, target: str) -> Tuple["_Discard", io.StringIO, io.StringIO, Optional[str]]:
    """One warm-up GET of ``target``: its response's sink, what the app
    wrote to ``wsgi.errors`` and to stdout/stderr, and why the response was
    cut short after its head, if it was."""
    path, _, query = target.partition("?")
    errors = io.StringIO()
    environ = protocol.base_environ(errors)
    environ.update(
        {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "REMOTE_PORT": "0",
            "HTTP_HOST": "localhost",
            "wsgi.input": InputStream(lambda n: b"", 0),
        }
    )
    sink = _Discard()
    saved = sys.stdout, sys.stderr
    output = io.StringIO()
    sys.stdout = sys.stderr = output
    # Logging handlers made at import hold the streams of then.
    handlers = _stream_handlers(saved)
    for handler in handlers:
        handler.stream = output
    try:
        cut = protocol.run(app, environ, sink)
    finally:
        sys.stdout, sys.stderr = saved
        for handler, stream in handlers.items():
            handler.stream = stream
    return sink, errors, output, cut


def _warm_outcome(status: str, errors: io.StringIO, output: io.StringIO, cut: Optional[str]) -> Tuple[str, bool]:
    """How one warm-up request went, for its report line (the status, and
    for a 5xx or a response cut short, the exception the app's output
    names), and whether it failed (those two, or no response at all)."""
    if not status:
        return "no response", True
    if not (status.startswith("5") or cut is not None):
        return status, False
    # The app's own 500 (Flask's, Django's) logs its exception to stderr,
    # not to wsgi.errors.
    said = failure_of(errors.getvalue()) or failure_of(output.getvalue())
    if cut is not None:
        return f"{status}, then cut short ({said or cut})", True
    return f"{status} ({said or 'the app answered it without a traceback or any output'})", True


def set_cookies(headers: protocol.Headers) -> List[str]:
    """The names of the cookies ``headers`` set, leaving out those they
    clear, as a logout does: an empty value, a last ``Max-Age`` of zero or
    less, or, without ``Max-Age``, an ``Expires`` in the past (RFC 6265
    5.2.1-5.3)."""
    names = []
    for name, value in headers:
        if name.lower() != "set-cookie":
            continue
        pair, _, attrs = value.partition(";")
        key, _, val = pair.partition("=")
        if key.strip() and val.strip().strip('"') and not _expires_now(attrs.split(";")):
            names.append(key.strip())
    return names


def _expires_now(attributes: List[str]) -> bool:
    """Whether a cookie's attributes end it at once."""
    max_age = expires = None
    for attribute in attributes:
        name, _, value = attribute.partition("=")
        name, value = name.strip().lower(), value.strip()
        if name == "max-age" and (value.isdigit() or (value[:1] == "-" and value[1:].isdigit())):
            max_age = int(value)
        elif name == "expires":
            expires = value
    if max_age is not None:
        return max_age <= 0
    if expires:
        from http.cookiejar import http2time
        import time

        when = http2time(expires)
        return when is not None and when <= time.time()
    return False


def _stream_handlers(streams: Tuple[Any, ...]) -> Dict[Any, Any]:
    """The logging handlers writing to one of ``streams``, with theirs."""
    logging = sys.modules.get("logging")
    if logging is None:
        return {}
    found = {}
    for ref in list(getattr(logging, "_handlerList", ())):
        handler = ref()
        if isinstance(handler, logging.StreamHandler) and any(handler.stream is s for s in streams):
            found[handler] = handler.stream
    return found


def failure_of(text: str) -> Optional[str]:
    """The exception a 500's output names: the line that ends the last
    traceback in it (a Django project mailing its admins on the console
    prints the mail's rules after it), or, in the text of Django's error
    mail, its "Exception Type" and "Exception Value"; else the last line."""
    lines = text.strip().splitlines()
    found = None
    for i, line in enumerate(lines):
        if line.lstrip().startswith("+ Exception Group Traceback"):
            # A group's own line is the first `| Name: ...` after it.
            for end in lines[i + 1 :]:
                head = end.strip().removeprefix("| ")
                if end.strip().startswith("| ") and head[:1].isalpha() and ": " in head:
                    found = head
                    break
            continue
        if not line.startswith("Traceback (most recent call last):"):
            continue
        for j in range(i + 1, len(lines)):
            end = lines[j]
            if not end or end[0].isspace():
                continue
            kind = end.partition("Exception Type: ")[2]
            if kind and j + 1 < len(lines) and lines[j + 1].startswith("Exception Value: "):
                end = f"{kind.split(' at ')[0]}: {lines[j + 1].partition(': ')[2]}"
            found = end.strip()
            # The adapter's hint after it (a factory named without its
            # call, a file the sandbox refused).
            if j + 1 < len(lines) and lines[j + 1].startswith("(") and lines[j + 1].endswith(")"):
                found = f"{found} {lines[j + 1]}"
            break
    if found is None and lines:
        return f"no traceback; its last output: {lines[-1].strip()}"
    return found


def forget_static_manifest() -> None:
    """Django's static files storage made again at run time when a warm-up
    made one that reads a manifest (``ManifestStaticFilesStorage``, and
    WhiteNoise's): it read ``staticfiles.json`` in ``STATIC_ROOT``, a grant
    that is not there at build time, as empty, and the snapshot kept that,
    so every ``{% static %}`` failed with "Missing staticfiles manifest
    entry" for good, whatever ``collectstatic`` wrote later. Made on first
    use, as under gunicorn, it reads the manifest then."""
    storage = sys.modules.get("django.contrib.staticfiles.storage")
    mixin = getattr(storage, "ManifestFilesMixin", None)
    lazy = getattr(storage, "staticfiles_storage", None)
    functional = sys.modules.get("django.utils.functional")
    if mixin is None or lazy is None or functional is None:
        return
    if isinstance(lazy._wrapped, mixin):
        lazy._wrapped = functional.empty
    # Django 4.2+ keeps each configured storage in `storages` too.
    made = getattr(getattr(sys.modules.get("django.core.files.storage"), "storages", None), "_storages", None)
    if isinstance(made, dict):
        for alias in [a for a, backend in made.items() if isinstance(backend, mixin)]:
            del made[alias]


def check_native(native: Dict[str, str], lenient: Sequence[str] = ()) -> List[str]:
    """Stop the build, one line per package, for every package whose native
    part was dropped (no WASI build) and that cannot import without it.
    Packages with a pure-Python fallback (MarkupSafe, PyYAML, simplejson)
    import fine and pass. Those of an installed tree (``lenient``:
    ``--site-packages``, which often holds packages the app never imports)
    are warnings instead, returned; the app's own import of one fails."""
    failed: Dict[str, str] = {}
    for module, dist in sorted(native.items()):
        top = module.split(".")[0]
        if top == module or dist in failed:
            continue  # a top-level extension: only fails if the app imports it
        try:
            importlib.import_module(top)
        except ImportError as e:
            # numpy and others re-raise their own ImportError from the one
            # that names the missing module.
            # `from . import _ext` names the package, and the module in
            # `name_from`.
            cause: Optional[BaseException] = e
            while cause is not None:
                if isinstance(cause, ImportError):
                    name, part = cause.name, getattr(cause, "name_from", None)
                    missing = [name, f"{name}.{part}" if part else None]
                    hit = next((m for m in missing if m in native), None)
                    if hit:
                        failed[dist] = hit
                        break
                cause = cause.__cause__ or cause.__context__
        except Exception:
            pass  # not our concern here; the app's own import reports it
    lines = {
        dist: f"{dist}: native extension, no WASI build available (module {mod} cannot load in the sandbox)"
        for dist, mod in sorted(failed.items())
    }
    errors = [line for dist, line in lines.items() if dist not in lenient]
    if errors:
        raise BuildError("\n".join(errors))
    return [
        f"warning: {line}; left out of the copy of --site-packages: importing it fails"
        for dist, line in lines.items()
    ]


def export_stdlib(dest: str) -> None:
    """Copy the standard library (mounted at /python while building) out to
    the host, which ships it read-only with the component for lazy imports."""
    import shutil

    shutil.copytree("/python", dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def point_stdlib_at_its_copy(stdlib: str = "/python") -> None:
    """Name the standard library where instances find it. CPython's frozen
    start-up modules (``os``, ``io``, ``codecs``, ...) take their
    ``__file__`` from ``sys._stdlib_dir``, the conventional
    ``/python/lib/python3.14``, where nothing is at build or run time: the
    stdlib itself is mounted at ``/python``, so ``inspect.getsource(os)``
    and ``open(os.__file__)`` failed. Only names whose file is there
    change."""
    import os

    old = getattr(sys, "_stdlib_dir", None)
    if not old or old == stdlib or not os.path.isdir(stdlib):
        return
    prefix = old.rstrip("/") + "/"
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not isinstance(path, str) or not path.startswith(prefix):
            continue
        moved = stdlib + "/" + path[len(prefix) :]
        if os.path.exists(moved) and not os.path.exists(path):
            try:
                module.__file__ = moved
                spec = getattr(module, "__spec__", None)
                state = getattr(spec, "loader_state", None)
                if getattr(state, "filename", None) == path:
                    state.filename = moved
                if getattr(spec, "origin", None) == path:
                    spec.origin = moved
            except (AttributeError, TypeError):
                pass
    sys._stdlib_dir = stdlib


def app_dirs_first(path: Sequence[str], app_dirs: Sequence[str]) -> List[str]:
    """``path`` with the app's own directories first, as ``python app.py``
    (the script's directory) and gunicorn (``--chdir``, the working
    directory) have them: an app's ``secrets.py`` is the app's, not the
    standard library's. Dependencies stay after the standard library, as
    site-packages does."""
    first = list(app_dirs)
    return first + [p for p in path if p not in first]


def add_site_dirs(mounts: Sequence[Tuple[str, str]], app_mounts: Sequence[Tuple[str, str]] = ()) -> List[str]:
    """Treat the dependencies' directories (guest, host) as site-packages
    are on Linux: their ``.pth`` files add paths and run their ``import``
    lines (older namespace packages, import hooks). componentize-py only
    puts the directories on ``sys.path``; this runs while building, so what
    the lines do is in the snapshot. A path line naming a directory inside
    one of the app's own (``app_mounts``, given with ``-p``) adds where
    that directory is in the sandbox. Returns build warnings: what CPython
    would print about a line, and paths the sandbox does not have."""
    import contextlib
    import io
    import os
    import site

    warnings = []
    for guest, host in mounts:
        try:
            pth = sorted(name for name in os.listdir(guest) if name.endswith(".pth"))
        except OSError:
            continue
        if not pth:
            continue
        said = io.StringIO()
        try:
            with contextlib.redirect_stderr(said):
                site.addsitedir(guest)
        except BaseException as e:  # sys.exit() in a line, an undecodable file
            raise BuildError(
                f"processing the .pth files of {host} ({', '.join(pth)}) raised {type(e).__name__}: {e}"
            ) from None
        warnings += [f"warning: {host}: {line}" for line in said.getvalue().splitlines() if line.strip()]
        for name in pth:
            found, said_of = _pth_paths(os.path.join(guest, name), f"{host}/{name}", app_mounts)
            warnings += said_of
            sys.path += [p for p in found if p not in sys.path]
    return warnings


def _pth_paths(path: str, shown: str, app_mounts: Sequence[Tuple[str, str]]) -> Tuple[List[str], List[str]]:
    """The path lines of ``.pth`` file ``path`` that name a directory
    inside one of the app's own (``app_mounts``, (guest, host) pairs),
    as the sandbox has them, and warnings for those naming a directory the
    sandbox does not have: an editable install (``pip install -e``) points
    at its source tree on the build machine, which ``site`` skips as it
    is not there."""
    import os

    def in_sandbox(line: str) -> Optional[str]:
        line = os.path.normpath(line)
        for guest, host in app_mounts:
            host = os.path.normpath(host)
            if line == host:
                return guest
            if line.startswith(host.rstrip("/") + "/"):
                return guest.rstrip("/") + "/" + line[len(host.rstrip("/")) + 1 :]
        return None

    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return [], []
    found: List[str] = []
    out = []
    editable = os.path.basename(path).startswith("__editable__")
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#") or line.startswith(("import ", "import\t")):
            continue
        there = in_sandbox(line)
        if there is not None and os.path.isdir(there):
            found.append(there)
            editable = False  # what it points at is there
        elif os.path.isabs(line) and not os.path.isdir(line):
            out.append(
                f"warning: {shown} adds {line}, which is not shipped"
                + (" (an editable install, pip install -e)" if editable else "")
                + ": give that directory with -p, or install the package without -e"
            )
    if editable and not out:
        out.append(
            f"warning: {shown}: an editable install (pip install -e) keeps its code in its "
            f"source tree, which is not shipped: give that directory with -p, or install the "
            f"package without -e"
        )
    return found, out


def app_module_names(app_dirs: Sequence[str]) -> Set[str]:
    """Top-level modules and packages the app's directories provide."""
    import os

    names: Set[str] = set()
    for d in app_dirs:
        try:
            entries = os.listdir(d)
        except OSError:
            continue
        for entry in entries:
            if entry.endswith(".py"):
                names.add(entry[:-3])
            elif os.path.isfile(os.path.join(d, entry, "__init__.py")):
                names.add(entry)
    return names


# Standard modules the componentize-py runtime calls by name (it reseeds
# ``random`` from the host's randomness): an app's ``random.py`` in their
# place would break every instance.
RUNTIME_OWN = frozenset({"random"})


def unused_app_modules(app_dirs: Sequence[str], keep: Set[str]) -> List[str]:
    """Build warnings for the app's top-level modules that it will never
    import: a standard module of the same name is loaded before the app
    (by CPython's start-up, the adapter or the runtime), as gunicorn's own
    imports are, and ``import NAME`` finds that one."""
    # Only standard names: CPython's start-up also imports the path's
    # `sitecustomize`, which is then the app's own.
    standard = set(sys.stdlib_module_names) | set(sys.builtin_module_names)
    taken = (keep | set(sys.builtin_module_names)) & standard
    return [
        f"warning: the app's own module {name!r} is not used: `import {name}` gives the standard "
        f"library's, which the server loads before the app; rename the app's module"
        for name in sorted(app_module_names(app_dirs) & taken)
        if not name.startswith(("rsgi_wasm", "componentize_py"))
    ]


def forget_shadowed(app_dirs: Sequence[str], keep: Set[str]) -> None:
    """Drop from ``sys.modules`` the standard modules the adapter imported
    ahead of the app (``LAZY_STDLIB``) that one of the app's own modules
    shadows, so the app's ``import secrets`` finds its ``secrets.py`` as
    it would under ``python app.py``. Modules in ``keep``, imported before
    the app's directories were on the path, stay, as gunicorn's own do;
    modules that imported a dropped one keep the object they hold."""
    shadowed = app_module_names(app_dirs) - keep - set(sys.builtin_module_names)
    if not shadowed:
        return
    for name in list(sys.modules):
        if name.partition(".")[0] in shadowed:
            del sys.modules[name]


def boot(
    module: str,
    expr: str,
    mounts: Sequence[Tuple[str, str]],
    app_dirs: int,
    native: Dict[str, str],
    warmup: List[str],
    report_path: Optional[str],
    fixed_keys: Sequence[str],
    stdlib_export: Optional[str] = None,
    world: str = "wsgi",
    live: bool = False,
    lenient: Sequence[str] = (),
) -> Tuple[type, ...]:
    """Import and warm up the app; return the exported classes: ``Handler``
    and ``Command`` for our own world, ``IncomingHandler`` alone for
    ``world="wasi-http"``. ``fixed_keys`` are the environ keys whose values
    the host sends first without their names (`FIXED_KEYS` in
    host/src/protocol.rs, passed at build time). ``live`` (``run
    --reload``): the app is imported on its first request instead, from its
    directories as they are then (see ``LiveApp``)."""
    # The app's directories are mounted writable while building: leave no
    # __pycache__ behind in the user's project.
    sys.dont_write_bytecode = True
    # What is imported already is the adapter's and CPython's start-up's.
    keep = {name.partition(".")[0] for name in sys.modules} | RUNTIME_OWN
    # First: frozen modules imported later then take their names from it,
    # and its file lookups are made before the heap takes its final shape.
    # Made last, after the warm-up, they left the heap laid out so that
    # each Flask request wrote 1.8 MB more of the snapshot (measured:
    # 3,188 against 1,364 kB of private pages per pooled instance).
    point_stdlib_at_its_copy()
    from . import compat

    compat.install()
    if world == "wasi-http":
        compat.for_other_hosts()
    uncap_stdio = compat.capped_stdio()
    compat.network_closed(True)
    if world == "wsgi":
        # `ssl` imports `_ssl`, which here is ours (tls.py, over the host's
        # rustls). The adapter's own files are not mounted at run time, so
        # it must be in the snapshot even if the app imports `ssl` later.
        # Only the module: no TLS resource exists before a request.
        importlib.import_module("_ssl")
    if stdlib_export:
        export_stdlib(stdlib_export)
    if app_dirs:
        # Like gunicorn --chdir: relative paths resolve in the first app
        # directory, at build time and (mounted at the same path) at run time.
        import os

        try:
            os.chdir(mounts[0][0])
        except OSError:
            pass
    for name in LAZY_STDLIB:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    # After the adapter's own imports, as CPython's start-up modules come
    # before the script's directory is searched.
    own_dirs = [guest for guest, _ in mounts[:app_dirs]]
    sys.path[:] = app_dirs_first(sys.path, own_dirs)
    site_warnings = add_site_dirs(mounts[app_dirs:], [tuple(m) for m in mounts[:app_dirs]])
    forget_shadowed(own_dirs, keep)
    report = site_warnings + check_native(native, lenient) + unused_app_modules(own_dirs, keep)
    printed_at = len(report)  # what is printed while importing goes before the warm-up's lines
    if live:
        app = LiveApp(module, expr, mounts, native, own_dirs, keep)
        report.append("live: each instance imports the app as it starts, from its directories as they are then")
    else:
        everything: Dict[str, None] = {}
        stop_recording = record_environ_reads(own_dirs, everything)
        import time

        # Less a second: file times come from the kernel's coarse clock,
        # a tick behind `time.time()`; the app's files were copied, with
        # their own times, seconds before (linking comes first).
        import_started = time.time() - 1
        import os

        before = dict(os.environ)
        try:
            app = resolve_callable(import_app_module(module, mounts, native), module, expr, mounts)
        except BuildError as e:
            # A .pth path the sandbox lacks is often why an import fails.
            if site_warnings:
                tell("\n".join(site_warnings))
            # Named by the error, whoever raised it (`KeyError`, django-environ's
            # ImproperlyConfigured, decouple's UndefinedValueError).
            missing = [key for key in stop_recording() if key != WHOLE_ENVIRONMENT and key in str(e)]
            if missing:
                tell(
                    f"{missing[0]} is not set: the app is imported at build time, with an empty "
                    "environment (`--env` reaches only what runs per request); read it when a request "
                    "needs it, or give it a default"
                )
            raise
        looked_up = stop_recording()
        # Not those the app then set itself: Django's generated
        # `setdefault("DJANGO_SETTINGS_MODULE", ...)` is no advice to give
        # (`exec` still warns when it is given another, see `IMPORT_LOOKUPS`).
        report += environ_read_warning({k: v for k, v in looked_up.items() if k not in os.environ}, mounts)
        # `SERVER_SOFTWARE` is the build's own (see `import_app_module`).
        compat.IMPORT_ENVIRON = {
            k: v for k, v in os.environ.items() if before.get(k) != v and k != "SERVER_SOFTWARE"
        } or None
        compat.IMPORT_LOOKUPS = {
            k: os.environ.get(k) for k in [*looked_up, *everything] if k != WHOLE_ENVIRONMENT
        }
        compat.FIRST_REQUEST_PENDING = bool(compat.IMPORT_ENVIRON or compat.IMPORT_LOOKUPS)
        report += warm_up(app, warmup)
        report += open_files_warning(own_dirs, mounts)
        report += written_at_build_warning(own_dirs, mounts, import_started)
    forget_build_tempdir()
    # The snapshot is taken after boot returns, with no Python running:
    # from here on the calls are the app's, at run time.
    compat.network_closed(False)
    printed = uncap_stdio()
    report[printed_at:printed_at] = printed_lines(printed)
    closed = protocol.closed_stdio()
    if closed:
        # Every instance starts from the snapshot: each would fail its
        # first print and be replaced by another just like it.
        raise BuildError(
            f"the app closed its {closed} while it was imported (or a dependency's .pth file did): "
            f"every instance would start with it closed, and fail at its first output"
        )
    if report_path:
        try:
            with open(report_path, "w") as f:
                f.write("\n".join(report) + "\n")
        except OSError:
            pass
    if world == "wasi-http":
        from . import http_component

        exports: Tuple[type, ...] = (http_component.make_handler(app),)
    else:
        from .component import make_command, make_handler

        roots = [tuple(m) for m in mounts[:app_dirs]]
        exports = make_handler(app, tuple(fixed_keys)), make_command(roots, app.load if live else None)
    return exports


def printed_lines(printed: Dict[str, str]) -> List[str]:
    """The build report's lines for what the app (or a dependency) printed
    while it was imported, each marked with its stream."""
    return [f"[import {name}] {line}" for name, text in printed.items() for line in text.splitlines() if line.strip()]


def forget_build_tempdir() -> None:
    """``tempfile`` keeps the first directory it finds writable. While
    building there is no /tmp, so an import or warm-up that asked found the
    working directory (the app's, writable only then); forget it, so run
    time finds the instance's /tmp. A directory the app chose itself
    (``tempfile.tempdir``, ``TMPDIR``) is kept.

    From then on the working directory is no candidate at all: on a
    wasi:http host that grants no /tmp (``wasmtime serve`` without
    ``--dir X::/tmp``, Spin) and writes through the app's own directory,
    uploads were spooled among its code; now tempfile says it found no
    usable temporary directory."""
    import os

    # The app's own ``tempfile.py``, if it has one, is left alone.
    tempfile = sys.modules.get("tempfile")
    tempdir = getattr(tempfile, "tempdir", None)
    if isinstance(tempdir, str) and tempdir == os.getcwd():
        tempfile.tempdir = None  # type: ignore[union-attr]
    candidates = getattr(tempfile, "_candidate_tempdir_list", None)
    if callable(candidates) and not getattr(candidates, "_rsgi_wasm", False):

        def without_cwd() -> list:
            cwd = os.getcwd()
            return [d for d in candidates() if d not in (cwd, os.curdir)]

        without_cwd._rsgi_wasm = True  # type: ignore[attr-defined]
        tempfile._candidate_tempdir_list = without_cwd  # type: ignore[union-attr]
    # Its name generator, if the build used it, is in the snapshot: every
    # instance would make the same names in the same order (it reseeds
    # itself only when the pid changes, and every instance has pid 42).
    # Made again on its first use, from fresh randomness.
    if hasattr(tempfile, "_name_sequence"):
        tempfile._name_sequence = None  # type: ignore[union-attr]


def settle_heap(objects_path: str) -> None:
    """Leave the heap as instances should find it, just before the
    snapshot: every instance maps it copy-on-write, so each snapshot page an
    instance writes becomes a private 4 KiB copy in that instance. Called
    last by the generated entry module, after ``boot`` returned and its
    locals and the arguments file's buffers were freed: whatever is freed
    after the filling below leaves a free chunk that requests then write.

    1. Garbage is collected, which also empties the type free lists, whose
       entries sit all over the snapshot.
    2. The free memory inside the heap is filled (``fill_free_memory``):
       a request's allocations then come from the top of the heap, a few
       fresh pages, instead of one free chunk on each of hundreds of
       snapshot pages (before: 300 allocations of one size landed on 300
       different pages).
    3. The objects reachable from ``sys.modules`` (which holds the entry
       module and its exports) are listed for the build to make immortal
       (``list_snapshot_objects``).
    4. The heap is frozen: the cyclic collector no longer walks it.

    Steps 2 and 3 are optimisations: if one fails, the build goes on with
    the heap as it is. Measured in docs/benchmarks.md (one pooled Flask
    instance, 4 s of load): 8.4 -> 6.1 MB of private memory."""
    import gc

    # The componentize-py runtime reseeds `random` in every instance, on
    # its first call: run twice here, `Random.seed` is specialised in the
    # snapshot rather than in each instance (see `WARMUP_ROUNDS`). Only the
    # module already loaded: an import now could find the app's own.
    seed = getattr(sys.modules.get("random"), "seed", None)
    try:
        for _ in range(WARMUP_ROUNDS if callable(seed) else 0):
            seed()
    except Exception:  # noqa: BLE001 - an optimisation, see above
        pass
    gc.collect()
    # No collection may free anything between the filling and the
    # snapshot, nor run a finaliser during the walk.
    enabled = gc.isenabled()
    gc.disable()
    try:
        fill_free_memory(max(map(id, gc.get_objects()), default=0))
        list_snapshot_objects((sys.modules,), objects_path)
    except Exception:  # noqa: BLE001 - best effort, see above
        pass
    finally:
        if enabled:
            gc.enable()
    # Frozen as before a fork: otherwise each instance's collections walk
    # the imported heap, writing to the pages it maps from the snapshot
    # (measured on Flask: one pooled instance held 21 MB of private memory
    # after 20 s of load, 10.6 MB frozen).
    gc.freeze()


# The objects fill_free_memory allocated: held for good, never touched.
_FILLING: List[list] = []

# At most this many bytes of fillers of each size (a bound, not a target:
# the bench's Flask app takes about 2.3 MB in all).
_FILL_BUDGET = 64 << 20

# Room above the last size's fillers for what was allocated beside them.
_FILL_SLACK = 16 << 10


def fill_free_memory(ceiling: int) -> None:
    """Occupy the free chunks malloc keeps inside the heap (CPython for WASI
    allocates objects with wasi-libc's dlmalloc, which reuses free chunks
    before it extends the heap), largest fillers first. A size is done when
    64 fillers in a row came from the top of the heap: above ``ceiling``
    (the highest object address known), each above the last; those 64 are
    given back. The walk that follows in ``list_snapshot_objects`` frees
    what it allocates at the top, where it came from.

    The fillers cost nothing in the snapshot (the free chunks are in it
    either way; zeros, so those that were zeros stay out of its data) but
    an instance can no longer reuse that memory: it grows its heap that
    much sooner (about 2.3 MB for the bench's Flask app)."""
    for size in (4000, 200, 20, 0):
        make = object if size == 0 else (lambda n=size: bytes(n))
        kept: list = []
        limit = _FILL_BUDGET // max(size, 16)
        run = last = high = 0
        try:
            while run < 64 and len(kept) < limit:
                o = make()
                a = id(o)
                run = run + 1 if a > ceiling and a > last else 0
                last = a
                high = max(high, a)
                kept.append(o)
        except MemoryError:
            run = 0
        if run:
            del kept[-run:]
        _FILLING.append(kept)
        # What this size took from the top, and gave back, is free memory
        # above the old ceiling (held there by `kept`'s own array, made
        # after it): malloc carves the next size's fillers from it before
        # the small free chunks lower down, and 64 of them in a row would
        # pass for the top. So the next size's top starts above it all.
        ceiling = max(ceiling, high + max(size, 16) + 8 * len(kept) + _FILL_SLACK)


def list_snapshot_objects(roots: Tuple[Any, ...], path: str) -> None:
    """Write the address and type address of the objects strongly reachable
    from ``roots`` to ``path``, as little-endian u32 pairs, for the build to
    make them immortal in the snapshot (``host/src/build/immortal.rs``):
    a request that reads an immortal object does not write its reference
    count, so the page holding it stays shared. The host writes an entry
    only if the snapshot still holds a live object of that type there: an
    object freed between this walk and the snapshot is skipped. The two
    known such frees are not walked into at all: componentize-py empties
    ``os.environ`` and ``sys.argv`` after the entry module returns.

    Left mortal, so that dropping them at run time still finalises them:
    objects whose type defines ``__del__`` (files, generators) and objects
    something holds a weak reference to (``weakref.finalize``, weak
    caches), except classes (their bases hold weak references to every
    subclass). Not reached, so left mortal too: what only C code refers
    to. The tests never call into the app: a lazy proxy or a module that
    loads on first attribute access is not woken.

    Code objects' constants and names are walked by hand (the default
    build's ``gc.get_referents`` shows nothing of a code object), and the
    hashes of strings and bytes are computed now rather than written by
    the first request that needs one.

    Visited addresses are kept in a bitmap (a bit per 8-byte-aligned
    address) rather than a set: the walk's garbage stays in the snapshot."""
    # The C modules, not `struct`, `types` and `weakref`: this runs after
    # the app, whose own `struct.py` would be found by those names.
    import _struct as struct
    import _weakref as weakref
    import gc

    code_type = type(settle_heap.__code__)
    seen = bytearray()
    out = bytearray()
    pack = struct.Struct("<II").pack
    type_mro = type.__dict__["__mro__"].__get__
    type_dict = type.__dict__["__dict__"].__get__
    code_parts = ("co_consts", "co_names", "co_filename", "co_name", "co_qualname", "co_linetable", "co_exceptiontable")

    def first_visit(obj: Any) -> bool:
        a = id(obj) >> 3
        i, bit = a >> 3, 1 << (a & 7)
        if i >= len(seen):
            seen.extend(bytes(i + 1 - len(seen) + 4096))
        if seen[i] & bit:
            return False
        seen[i] |= bit
        return True

    def may_be_immortal(obj: Any, tp: type) -> bool:
        # Through the type's own dictionaries only: nothing here may run
        # the app's code (a proxy's __class__, a metaclass __getattr__).
        if any("__del__" in type_dict(k) for k in type_mro(tp)):
            return False
        return issubclass(tp, type) or not weakref.getweakrefcount(obj)

    import os

    for emptied_later in (getattr(os.environ, "_data", None), sys.argv):
        if emptied_later is not None:
            first_visit(emptied_later)
    stack = [r for r in roots if first_visit(r)]
    with open(path, "wb") as f:
        while stack:
            obj = stack.pop()
            tp = type(obj)
            if tp is str or tp is bytes:
                hash(obj)
            try:
                listed = may_be_immortal(obj, tp)
            except Exception:  # noqa: BLE001 - left mortal
                listed = False
            if listed:
                out += pack(id(obj), id(tp))
                if len(out) >= 1 << 16:
                    f.write(out)
                    del out[:]
            referents = gc.get_referents(obj)
            if tp is code_type:
                referents.extend(getattr(obj, name) for name in code_parts)
            stack.extend(r for r in referents if first_visit(r))
        f.write(out)
