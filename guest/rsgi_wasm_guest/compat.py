"""Stand-ins for stdlib functions CPython for WASI lacks, so apps run
unchanged.

``hashlib.pbkdf2_hmac`` exists only when CPython is linked with OpenSSL,
which the WASI build is not; Django's default password hasher needs it.
This implements RFC 8018 §5.2 on top of ``hmac`` (the built-in SHA-2
modules), slower than OpenSSL but correct.

WASI has no users, so CPython for WASI has no ``os.getuid`` and its
siblings, and ``from os import getuid`` fails at import (setuptools'
vendored platformdirs does it, so Pyramid's ``import pkg_resources``
failed). They answer 0, the owner ``os.stat`` reports for every file
there, so ownership checks such as "is this directory mine" agree.

The sandbox refuses a name lookup or a connection no ``--allow-net`` rule
covers with ``EACCES``, which Python raises as a bare ``PermissionError:
[Errno 2] Permission denied``. The wrappers below say what was refused and
which setting grants it; the exception type and errno stay the same. They
also refuse the network while the build takes its snapshot (urllib3, for
one, binds a socket at import to probe for IPv6; an import hook corrects
its answer): wasi-libc keeps the network handle it gets on first use,
and a handle of the build's sandbox would not exist at run time, so every
later lookup would trap.

CPython for WASI runs with unbuffered standard streams: ``sys.stdout`` is a
text wrapper writing straight through to a raw ``FileIO``, and a text
wrapper keeps nothing of what a short raw write leaves. The host's stdout
takes at most 1 MiB per write (wasmtime's), so a 2 MB ``print`` lost its
second half without a word. ``sys.stdout`` and ``sys.stderr`` are rebuilt
over a raw stream that writes everything it is given.
"""

import errno
import hashlib
import hmac
import io
import operator
import os
import sys
from typing import Callable, Dict, List, Optional, Set

ID_FUNCTIONS = ("getuid", "geteuid", "getgid", "getegid")


def _nobody_but_us() -> int:
    """The only user and group WASI has."""
    return 0


def pbkdf2_hmac(hash_name: str, password: bytes, salt: bytes, iterations: int, dklen: Optional[int] = None) -> bytes:
    """RFC 8018 PBKDF2 with HMAC-``hash_name``, as ``hashlib.pbkdf2_hmac``
    (this CPython has no OpenSSL, which gives the C one). Django hashes a
    password with a million HMACs at each login: each is one call into
    CPython's own C HMAC (``_hmac``, 3.14), and the XOR of their results is
    taken 1,024 at a time, which halved a login's time again (3.4 s for a
    million here with an HMAC object copied per step and a big-int XOR
    per step; 1.7 s now)."""
    if not isinstance(hash_name, str):
        raise TypeError(f"pbkdf2_hmac() argument 'hash_name' must be str, not {type(hash_name).__name__}")
    password = bytes(memoryview(password))
    salt = bytes(memoryview(salt))
    iterations = operator.index(iterations)
    if iterations < 1:
        raise ValueError("iteration value must be greater than 0.")
    # CPython's bounds (a C int): past them the loop would run for ever,
    # not fail.
    if iterations > 0x7FFFFFFF:
        raise OverflowError("iteration value is too great.")
    base = hmac.new(password, digestmod=hash_name)
    size = base.digest_size
    if dklen is None:
        dklen = size
    dklen = operator.index(dklen)
    if dklen < 1:
        raise ValueError("key length must be greater than 0.")
    if dklen > 0x7FFFFFFF:
        raise OverflowError("key length is too great.")
    prf = _keyed_hmac(hash_name, password, base)
    blocks = []
    index = 1
    while len(blocks) * size < dklen:
        # U1 = PRF(P, S || INT(i)); Ui = PRF(P, Ui-1); T = U1 xor ... xor Uc.
        u = prf(salt + index.to_bytes(4, "big"))
        acc = int.from_bytes(u, "big")
        left = iterations - 1
        while left:
            batch = []
            for _ in range(min(left, _FOLD)):
                u = prf(u)
                batch.append(u)
            left -= len(batch)
            acc ^= _xor_all(batch, size)
        blocks.append(acc.to_bytes(size, "big"))
        index += 1
    return b"".join(blocks)[:dklen]


# How many PBKDF2 steps are XORed together at once (see `_xor_all`).
_FOLD = 1024


def _keyed_hmac(hash_name: str, password: bytes, base: "hmac.HMAC") -> Callable[[bytes], bytes]:
    """HMAC-``hash_name`` keyed with ``password``, as one C call where
    CPython has its own HMAC (``_hmac.compute_sha256`` and the like), else
    by copying the keyed ``base``."""
    try:
        import _hmac  # type: ignore[import-not-found]
    except ImportError:
        _hmac = None
    compute = getattr(_hmac, "compute_" + hash_name.lower().replace("-", ""), None)
    if compute is not None:
        import functools

        return functools.partial(compute, password)

    def prf(message: bytes) -> bytes:
        mac = base.copy()
        mac.update(message)
        return mac.digest()

    return prf


def _xor_all(values: List[bytes], size: int) -> int:
    """The XOR of ``values`` (each ``size`` bytes) as an integer: joined
    into one number, padded to a power of two of them, and folded in
    halves, instead of one ``int.from_bytes`` and XOR per value."""
    count = 1
    while count < len(values):
        count *= 2
    joined = b"".join(values) + bytes(size * (count - len(values)))
    x = int.from_bytes(joined, "big")
    while count > 1:
        count //= 2
        bits = size * 8 * count
        x = (x >> bits) ^ (x & ((1 << bits) - 1))
    return x


# What `makedirs` adds to the error for a path no grant holds (once: it
# calls itself for each parent).
NO_GRANT = "(no granted directory holds it)"

ALLOW_NET_HINT = "add an --allow-net rule (allow_net in tenants.toml) for it"

NO_LISTENING = (
    "an app can connect out (--allow-net) but not listen, so asyncio's event loop, "
    "which needs a local socket pair, is not available"
)

# A wasi-http component may run on any wasi:http host, whose own settings
# grant the network: the hints must not send its users to rsgi-wasm's flags.
OTHER_HOSTS_HINT = (
    "the host grants network access (rsgi-wasm: --allow-net; "
    "wasmtime serve: -Sinherit-network; Spin: allowed_outbound_hosts)"
)


class _Network:
    """Whether the snapshot is being taken: no network then; and whether
    the component is for other wasi:http hosts (``for_other_hosts``)."""

    building = False
    other_hosts = False
    #: The warm-up request running (its target), if one is.
    warming: Optional[str] = None


def warming(target: Optional[str]) -> None:
    """Say which warm-up request runs (``None``: none), so a refusal
    names it, not the import: a stock Django index page queries the
    database only when the warm-up asks for it."""
    _Network.warming = target


def _at_build() -> str:
    """What was running at build time, for a refusal's message."""
    if _Network.warming is not None:
        return f"during the warm-up request GET {_Network.warming}"
    return "while the app was imported"


#: How to keep a warm-up request from needing what the build lacks.
WARMUP_FIX = "warm up a path that needs none (`--warmup PATH`), or build with `--no-warmup`"


def for_other_hosts() -> None:
    """Word network refusals for any wasi:http host, not rsgi-wasm's own."""
    _Network.other_hosts = True


def _refused(errno_: int, what: str, hint: str) -> PermissionError:
    if _Network.other_hosts:
        return PermissionError(errno_, f"sandbox: {what} was refused; {OTHER_HOSTS_HINT}")
    return PermissionError(errno_, f"rsgi-wasm sandbox: {what} is not allowed; {hint}")


def _address(address) -> str:
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else repr(address)


def _guard(real, what, name: str, hint: str = ALLOW_NET_HINT):
    """``real`` (a socket function or method that reaches the network),
    refusing while the snapshot is taken, and naming what was refused when
    the sandbox refuses it (``what(args)`` describes the target)."""

    def call(*args, **kwargs):
        if _Network.building:
            # wasi-libc caches its network handle on first use; one taken in
            # the build's sandbox would not exist at run time.
            fix = WARMUP_FIX if _Network.warming is not None else "open connections on the first request instead"
            raise PermissionError(
                errno.EACCES,
                f"rsgi-wasm build: no network {_at_build()}, at build time ({name} {what(args)}); {fix}",
            )
        try:
            return real(*args, **kwargs)
        except PermissionError as e:
            raise _refused(e.errno, f"{name} {what(args)}", hint) from None

    call.__name__ = getattr(real, "__name__", name)
    call.__doc__ = getattr(real, "__doc__", None)
    return call


def _guard_network(socket) -> None:
    """Wrap what reaches the network in ``socket``: lookups and
    ``connect``/``bind`` (see ``_guard``)."""
    host = lambda args: repr(args[0]) if args else ""  # noqa: E731
    for fn in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
        if hasattr(socket, fn):
            setattr(socket, fn, _guard(getattr(socket, fn), host, "looking up"))
    if hasattr(socket, "gethostbyaddr") and hasattr(socket, "herror"):
        socket.gethostbyaddr = _no_reverse_lookup(socket.gethostbyaddr, socket.herror)
    if hasattr(socket, "getaddrinfo") and hasattr(socket, "gaierror"):
        socket.getaddrinfo = _some_address_or_gaierror(socket.getaddrinfo, socket)
    target = lambda args: _address(args[1]) if len(args) > 1 else ""  # noqa: E731
    socket.socket.connect = _guard(socket.socket.connect, target, "connecting to")
    real_init = socket.socket.__init__

    def __init__(self, *args, **kwargs):
        # Without an --allow-net rule the sandbox refuses a TCP socket
        # itself; UDP it refuses whatever the rules.
        try:
            real_init(self, *args, **kwargs)
        except PermissionError as e:
            kind = args[1] if len(args) > 1 else kwargs.get("type", socket.SOCK_STREAM)
            hint = ALLOW_NET_HINT
            # Flags such as SOCK_NONBLOCK sit above the type's bits.
            if isinstance(kind, int) and kind & 0xFF != socket.SOCK_STREAM:
                hint = "the sandbox allows only TCP connections out, whatever the --allow-net rules"
            raise _refused(e.errno, "opening a socket", hint) from None

    socket.socket.__init__ = __init__
    socket.socket.bind = _guard(socket.socket.bind, target, "binding", NO_LISTENING)
    if hasattr(socket, "socketpair"):
        # CPython makes a pair on WASI by listening on loopback; refused
        # with or without --allow-net rules, so the rules are no help.
        real_pair = socket.socketpair

        def socketpair(*args, **kwargs):
            try:
                return real_pair(*args, **kwargs)
            except PermissionError as e:
                # The errno WASI gave (ENOENT) would read as a missing file.
                raise PermissionError(
                    errno.EACCES, f"rsgi-wasm sandbox: making a socket pair is not allowed; {NO_LISTENING}"
                ) from None

        socketpair.__doc__ = real_pair.__doc__
        socket.socketpair = socketpair
    real_connect_ex = socket.socket.connect_ex

    def connect_ex(self, address):
        if _Network.building:
            return errno.EACCES
        return real_connect_ex(self, address)

    socket.socket.connect_ex = connect_ex


def _some_address_or_gaierror(real, socket):
    """``getaddrinfo`` that fails as glibc's does where wasi-libc's answers
    nothing: a name with no address of the family asked for
    (``getaddrinfo("localhost", 80, AF_INET6)`` of a name with IPv4 alone)
    gave ``[]``, and code taking ``[0]`` an ``IndexError``."""
    code = getattr(socket, "EAI_NODATA", getattr(socket, "EAI_NONAME", -5))

    def getaddrinfo(*args, **kwargs):
        found = real(*args, **kwargs)
        if not found:
            raise socket.gaierror(code, "No address associated with hostname")
        return found

    getaddrinfo.__doc__ = real.__doc__
    return getaddrinfo


def _no_reverse_lookup(real, herror):
    """``gethostbyaddr`` whose failure reads as glibc's. WASI has no
    reverse lookup; wasi-libc fails every address with a placeholder
    message (``[Errno 0] hstrerror: TODO``)."""

    def gethostbyaddr(address):
        try:
            return real(address)
        except herror as e:
            if e.args and e.args[0] == 0:
                raise herror(1, "Unknown host (WASI has no reverse lookup)") from None
            raise

    gethostbyaddr.__doc__ = getattr(real, "__doc__", None)
    return gethostbyaddr


def network_closed(closed: bool) -> None:
    """Refuse (``True``, while building) or allow network calls."""
    _Network.building = closed


def urllib3_may_ask_for_ipv6(module) -> None:
    """urllib3 decides at import whether to ask for IPv6 addresses by
    binding a socket to ``::1``, which the sandbox refuses (an app cannot
    listen; nor can anything while the build takes its snapshot), so
    ``requests`` never reached an IPv6 address an ``--allow-net`` rule
    grants: ``getaddrinfo`` returned nothing for ``[::1]``. Connecting out
    over IPv6 works like IPv4, so it may ask."""
    import socket

    if getattr(module, "HAS_IPV6", None) is False:
        module.HAS_IPV6 = socket.has_ipv6


# What SQLite says when it cannot make or open the file, and when the
# file is there but cannot be written.
SQLITE_CANNOT_WRITE = ("unable to open database file", "attempt to write a readonly database")


def sqlite_path(database, uri: bool) -> Optional[str]:
    """The file a ``sqlite3.connect`` argument names, absolute, or None
    for an in-memory database (or a URI this does not read)."""
    try:
        name = os.fsdecode(os.fspath(database))
    except TypeError:
        return None
    if uri and name.startswith("file:"):
        # Django passes `uri=True` with a plain path, which SQLite takes as is.
        name = name[len("file:") :].partition("?")[0].partition("#")[0]
        if name.startswith("//"):
            # `file://host/path`: only an empty or `localhost` host is a file.
            host, _, rest = name[2:].partition("/")
            if host not in ("", "localhost"):
                return None
            name = "/" + rest
    if name in ("", ":memory:"):
        return None
    return os.path.abspath(name)


def is_code_mount(path: str) -> bool:
    """Whether ``path`` is in the app's own files: the stdlib at
    ``/python``, the app's directories and packages at ``/1``, ``/2``, ...,
    which the host mounts read-only."""
    top = path.split("/")[1] if path.startswith("/") else ""
    return top == "python" or (top.isascii() and top.isdigit())


def file_error_hint(exc: BaseException) -> Optional[str]:
    """What the sandbox did, for an app's report of a file it could not
    open or write: Python says only "No such file or directory" for a
    path no grant holds, and "Operation not permitted" for a write to the
    app's own files (its working directory among them), the first
    failure of an app that writes beside its code under gunicorn."""
    if not isinstance(exc, OSError) or exc.filename is None:
        return None
    if exc.errno not in (errno.ENOENT, errno.EPERM, errno.EACCES, errno.EROFS):
        return None
    if NO_GRANT in (exc.strerror or ""):
        return None  # said already (makedirs)
    try:
        path = os.path.abspath(os.fsdecode(os.fspath(exc.filename)))
    except (TypeError, ValueError):
        return None
    grant = "a --dir grant (`dirs` in tenants.toml; for example --dir ./data::/data)"
    if is_code_mount(path):
        if exc.errno == errno.ENOENT:
            return None
        if "/migrations/" in path or "/versions/" in path:
            # Django's makemigrations, Alembic's revision: files of the
            # app's source, which a grant or /tmp would not ship.
            return (
                f"{path} is among the app's own files, which are read-only in the sandbox: new migrations "
                "belong to the app's source, so make them with your native Python (manage.py "
                "makemigrations, alembic revision) and build again"
            )
        return f"{path} is among the app's own files, which are read-only in the sandbox: write to {grant} or to /tmp"
    top = "/" + path.split("/")[1]
    if exc.errno != errno.ENOENT or top == "/" or os.path.isdir(top):
        return None
    if top in ("/proc", "/sys", "/dev"):
        return f"the sandbox has no {top}"
    if os.path.dirname(path) == "/":
        return f"no granted directory holds {path}, and nothing can be made at /: use {grant} or /tmp"
    return f"no granted directory holds {path}: grant one with --dir HOST_DIR::{top} (`dirs` in tenants.toml)"


def stdlib_hint(exc: BaseException) -> Optional[str]:
    """For an import of a standard-library module CPython for WASI does
    not have (``_ctypes``, ``fcntl``): no requirement can add it, which
    Python's bare ``No module named '_ctypes'`` does not say (Django's
    test runner imports ``ctypes`` through ``exec manage.py test``)."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    top = exc.name.partition(".")[0]
    if top not in sys.stdlib_module_names:
        return None
    return (
        f"{exc.name} is a module of the standard library that CPython for WASI does not have "
        "(docs/conformance.md lists them): no requirement can add it; run code that needs it "
        "with your native Python, as for an app's tests"
    )


def sqlite_hint(path: str) -> Optional[str]:
    """Why SQLite cannot write ``path`` in the sandbox, when it is the
    sandbox's doing: a database beside the app's code (Django's default
    ``BASE_DIR / "db.sqlite3"``) or in a directory no grant holds."""
    grant = "keep the database in a --dir grant (for example --dir ./data::/data, and /data/db.sqlite3)"
    if _Network.building and not is_code_mount(path):
        if _Network.warming is not None:
            return f"{path} was opened {_at_build()}, at build time, when no --dir grant exists: {WARMUP_FIX}"
        return (
            f"{path} was opened while the app was imported, at build time, when no --dir grant "
            "exists: connect when a request needs it, and create tables with rsgi-wasm exec "
            "(Flask-SQLAlchemy's db.create_all() at import cannot run)"
        )
    if is_code_mount(path):
        return f"{path} is among the app's own files, which are read-only in the sandbox: {grant}"
    top = "/" + path.split("/")[1]
    if not os.path.isdir(top):
        return f"no granted directory holds {path}: {grant}"
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        return f"{path}: its directory {parent} does not exist"
    return None


# Databases found not in WAL mode, checked once per instance: Django
# connects per request, and SQLite here cannot turn a database to WAL.
_NOT_WAL: Set[str] = set()


def in_wal_mode(path: str) -> bool:
    """Whether the SQLite database at ``path`` is in WAL mode: its header's
    file format versions (bytes 18 and 19) are 2."""
    if path in _NOT_WAL:
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return False
    wal = head[:16] == b"SQLite format 3\x00" and 2 in head[18:20]
    if not wal and len(head) == 20 and len(_NOT_WAL) < 256:
        _NOT_WAL.add(path)
    return wal


def wal_hint(path: str) -> str:
    return (
        f"{path} is in WAL mode (journal_mode=wal), which SQLite cannot open in the sandbox: "
        "WASI has no shared memory for its index. Switch it back once, outside: "
        "sqlite3 FILE 'PRAGMA journal_mode=delete'"
    )


def sqlite_connect_explained(module) -> None:
    """``sqlite3.connect`` (Django's and SQLAlchemy's ``dbapi2.connect``)
    naming the file and what the sandbox needs when it cannot be opened:
    SQLite says only "unable to open database file", and a new Django
    project's database sits beside its code, which is read-only here."""
    real = module.connect
    if getattr(real, "_rsgi_wasm", False):
        return

    def connect(database, *args, **kwargs):
        uri = kwargs.get("uri", args[6] if len(args) > 6 else False)
        try:
            connection = real(database, *args, **kwargs)
        except module.OperationalError as e:
            path = sqlite_path(database, bool(uri))
            hint = sqlite_hint(path) if path and str(e) in SQLITE_CANNOT_WRITE else None
            if hint is not None:
                # The same exception, so `sqlite_errorcode` and the type stay.
                e.args = (f"{e} ({hint})",) + e.args[1:]
            raise
        # SQLite reads the header only at the first statement, and then
        # says "file is not a database", as if it were damaged.
        path = sqlite_path(database, bool(uri))
        if path is not None and in_wal_mode(path):
            connection.close()
            raise module.DatabaseError(f"file is not a database ({wal_hint(path)})")
        return connection

    connect.__doc__ = real.__doc__
    connect._rsgi_wasm = True
    module.connect = connect
    package = sys.modules.get("sqlite3")
    if package is not None and getattr(package, "connect", None) is real:
        package.connect = connect


class AfterImport:
    """An import hook that corrects a module as it is imported
    (``FIXES``: its name and what to do to it then). A hook, not a fix
    after the build: a ``--reload`` app, or one importing lazily, imports
    these modules at run time."""

    def __init__(self, fixes: Optional[Dict[str, Callable]] = None) -> None:
        self.fixes = FIXES if fixes is None else fixes

    def find_spec(self, fullname, path, target=None):
        fix = self.fixes.get(fullname)
        if fix is None:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Fixed(spec.loader, fix)
                return spec
        return None


class _Fixed:
    """A loader that runs the module, then its fix."""

    def __init__(self, loader, fix: Callable) -> None:
        self.loader = loader
        self.fix = fix

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        self.fix(module)

    def __getattr__(self, name):
        return getattr(self.loader, name)


def path_mkdir_naming_the_grant(real: Callable) -> Callable:
    """``pathlib.Path.mkdir(parents=True)`` naming the missing grant, as
    ``os.makedirs`` does (see ``makedirs_naming_the_grant``): it climbs to
    ``/``, which WASI does not have, and named that."""

    def mkdir(self, mode=0o777, parents=False, exist_ok=False):
        try:
            return real(self, mode, parents, exist_ok)
        except FileNotFoundError as e:
            path = os.fspath(self)
            if not (parents and e.filename == "/" and path.startswith("/") and path.strip("/")):
                raise
            first = "/" + path.strip("/").split("/")[0]
            raise FileNotFoundError(e.errno, f"{e.strerror} {NO_GRANT}", first) from None

    mkdir.__doc__ = real.__doc__
    mkdir._rsgi_wasm = True
    return mkdir


def django_makedirs_naming_the_grant(module) -> None:
    """Django's own copy of ``makedirs`` (``django.utils._os``, which its
    file-based cache and ``safe_makedirs`` use) answered as ``os.makedirs``
    is: it too climbed to ``/`` and named that instead of the missing
    grant."""
    if not getattr(module.makedirs, "_rsgi_wasm", False):
        module.makedirs = makedirs_naming_the_grant(module.makedirs)


NO_THREADS = "the rsgi-wasm sandbox runs no threads (WASI has none): see docs/conformance.md"


def thread_start_explained(real: Callable) -> Callable:
    """``Thread.start`` saying why it cannot start, and, at run time, having
    the host warn once per app of the code that tried: libraries that
    catch the error and carry on (sentry-sdk's sending worker) otherwise
    drop what the thread was for without a word."""

    def start(self):
        try:
            return real(self)
        except RuntimeError as e:
            if "can't start new thread" not in str(e):
                raise
            if not _Network.building:
                frame = sys._getframe(1)
                while frame is not None and frame.f_code.co_filename.endswith("threading.py"):
                    frame = frame.f_back
                where = f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame else "the app"
                hint = (
                    "; sentry-sdk drops every event so: give sentry_sdk.init a transport that "
                    "sends in the request (docs/conformance.md)"
                    if "sentry_sdk" in where
                    else ""
                )
                warn_once(
                    f"{where} tried to start a thread, which cannot run in the rsgi-wasm sandbox "
                    f"(WASI has no threads): what it was to do in the background does not happen{hint}"
                )
            raise RuntimeError(f"can't start new thread: {NO_THREADS}") from None

    start.__doc__ = real.__doc__
    start._rsgi_wasm = True
    return start


def warn_once(text: str) -> None:
    """Have the host log ``text`` as a warning, once per app."""
    try:
        sys.stderr.write(f"{WARN_ONCE}{text}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # a closed stderr is the app's to report


def inline_thread_pool(module) -> None:
    """``ThreadPoolExecutor`` running each task in the caller, at
    ``submit``: an app cannot start a thread here, so every pool failed at
    its first task (WhiteNoise's compressing ``collectstatic``, libraries'
    ``executor.map``). Tasks run one after another, so a task that waits
    for a later one fails (see the waits in docs/conformance.md) instead
    of running. WASI only: elsewhere threads start."""
    real = module.ThreadPoolExecutor
    if sys.platform != "wasi" or getattr(real, "_rsgi_wasm", False):
        return
    inline = module.ThreadPoolExecutor = inline_pool_class(real, module.BrokenThreadPool)
    # The package keeps the class once asked for it.
    package = sys.modules.get("concurrent.futures")
    if package is not None and vars(package).get("ThreadPoolExecutor") is real:
        package.ThreadPoolExecutor = inline


def inline_pool_class(real: type, broken: type) -> type:
    """A subclass of the pool ``real`` whose tasks run at ``submit``."""
    from concurrent.futures import Future

    class ThreadPoolExecutor(real):  # type: ignore[misc, valid-type]
        _rsgi_wasm = True

        def __init__(self, max_workers=None, thread_name_prefix="", initializer=None, initargs=(), **kwargs):
            super().__init__(max_workers, thread_name_prefix, **kwargs)
            self._initializer_left = (initializer, initargs)

        def submit(self, fn, /, *args, **kwargs):
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            initializer, initargs = self._initializer_left
            if initializer is not None:
                self._initializer_left = (None, ())
                try:
                    initializer(*initargs)
                except BaseException:
                    self._shutdown = True
                    raise broken("A thread initializer failed, the thread pool is not usable anymore") from None
            future = Future()
            future.set_running_or_notify_cancel()
            try:
                result = fn(*args, **kwargs)
            except BaseException as e:
                future.set_exception(e)
            else:
                future.set_result(result)
            return future

    ThreadPoolExecutor.__qualname__ = real.__qualname__
    ThreadPoolExecutor.__module__ = real.__module__
    return ThreadPoolExecutor


FIXES: Dict[str, Callable] = {
    "urllib3.util.connection": urllib3_may_ask_for_ipv6,
    # `sqlite3` takes `connect` from here by `import *`, after the fix.
    "sqlite3.dbapi2": sqlite_connect_explained,
    "django.utils._os": django_makedirs_naming_the_grant,
    # `concurrent.futures` takes the pool from here when first asked.
    "concurrent.futures.thread": inline_thread_pool,
}


class WholeWrites(io.RawIOBase):
    """A raw standard stream whose ``write`` writes all it is given,
    however many short writes the stream underneath makes of it."""

    def __init__(self, raw: io.FileIO) -> None:
        super().__init__()
        self.raw = raw

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.raw.fileno()

    def isatty(self) -> bool:
        return self.raw.isatty()

    @property
    def name(self):
        return self.raw.name

    @property
    def mode(self) -> str:
        return self.raw.mode

    def write(self, data) -> int:
        n = self.raw.write(data)
        if n == len(data):  # the usual case: as fast as the raw stream
            return n
        view = memoryview(data).cast("B")
        done = n or 0
        while done < len(view):
            n = self.raw.write(view[done:])
            if not n:  # a closed stream (0): nothing more will go
                break
            done += n
        return done


def whole_stdio() -> None:
    """Rebuild ``sys.stdout`` and ``sys.stderr`` over ``WholeWrites`` when
    they write straight to a raw file, keeping their encoding and modes."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        raw = getattr(stream, "buffer", None)
        if type(raw) is not io.FileIO:
            continue  # buffered (its writer loops) or replaced by someone
        whole = io.TextIOWrapper(
            WholeWrites(raw),
            encoding=stream.encoding,
            errors=stream.errors,
            line_buffering=stream.line_buffering,
            write_through=True,
        )
        # The old wrapper stays referenced: collecting it would flush and
        # close what it wraps.
        _REPLACED.append(stream)
        setattr(sys, name, whole)
        if getattr(sys, f"__{name}__", None) is stream:
            setattr(sys, f"__{name}__", whole)


_REPLACED: list = []


class BuildOutput:
    """``sys.stdout`` or ``sys.stderr`` while building: componentize-py
    keeps 10,000 bytes of each and fails the next write with
    ``BrokenPipeError``, so an app printing more at import could not be
    built, and the build's own error report would be lost. The first
    ``budget`` bytes (UTF-8) go through, the rest is dropped with one note;
    after the build (``unlimited``) everything goes through, for loggers
    that kept this stream in the snapshot. What went through is also kept,
    since componentize-py shows it only when the build fails: a successful
    build reports it too (a warning at import is often the only word of
    why something will not work)."""

    def __init__(self, stream, budget: int) -> None:
        self.stream = stream
        self.budget: Optional[int] = budget
        self.dropping = False
        self.kept: List[str] = []

    def write(self, text: str) -> int:
        left = self.budget
        if left is None:
            return self.stream.write(text)
        if self.dropping:
            return len(text)
        data = text.encode("utf-8", "replace")
        shown = text
        if len(data) <= left:
            self.budget = left - len(data)
        else:
            # Noted once, also when the output before filled the cap exactly.
            self.budget, self.dropping = 0, True
            shown = data[:left].decode("utf-8", "ignore") + "\n[rsgi-wasm: the rest of the output while building is dropped]\n"
        self.stream.write(shown)
        self.kept.append(shown)
        return len(text)

    def unlimited(self) -> str:
        """Lift the cap; return what went through while it held."""
        self.budget = None
        kept, self.kept = "".join(self.kept), []
        return kept

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


# Bytes of the app's output kept while building, per stream; the rest of
# componentize-py's 10,000 bytes is left for the build's report.
BUILD_OUTPUT = {"stdout": 6000, "stderr": 3000}


def capped_stdio() -> Callable[[], Dict[str, str]]:
    """Put ``BuildOutput`` over ``sys.stdout`` and ``sys.stderr``; the
    returned function puts the streams back, lifts the caps and returns
    what each stream took meanwhile."""
    capped = []
    for name, budget in BUILD_OUTPUT.items():
        stream = getattr(sys, name)
        wrapper = BuildOutput(stream, budget)
        capped.append((name, stream, wrapper))
        setattr(sys, name, wrapper)

    def restore() -> Dict[str, str]:
        printed = {}
        for name, stream, wrapper in capped:
            printed[name] = wrapper.unlimited()
            if getattr(sys, name) is wrapper:
                setattr(sys, name, stream)
        return printed

    return restore


def report_stream():
    """Where the build's own error report goes: past the app's cap."""
    stream = sys.stderr
    return stream.stream if isinstance(stream, BuildOutput) else stream


def c_locale_only(real: Callable, error: type) -> Callable:
    """``locale.setlocale`` refusing what it cannot honour. wasi-libc has
    the C locale only, yet takes any name and answers with it, so
    ``setlocale(LC_ALL, "de_DE.UTF-8")`` seemed to work while dates and
    numbers stayed English: refused with ``locale.Error``, as CPython on a
    Linux without that locale refuses it."""

    def setlocale(category, locale=None):
        if locale is None:
            return real(category)
        before = real(category)
        name = real(category, locale)
        if _is_c_locale(name):
            return name
        real(category, before)
        raise error(
            f"unsupported locale setting: {name!r} (CPython for WASI has only the C locale: "
            f"its C library has no locale data; format for other locales with a library such as Babel)"
        )

    setlocale.__doc__ = real.__doc__
    setlocale._rsgi_wasm = True
    return setlocale


def single_threaded_wait(self, timeout=None) -> bool:
    """``threading.Condition.wait`` where no other thread can notify: this
    CPython has no threads. A timed wait sleeps its time out and times out,
    as it would natively; the C lock's timed acquire returned at once, so
    ``while not event.wait(0.1)`` spun the CPU 400,000 times a second and
    ``queue.get(timeout=2)`` burnt its two seconds. A wait without a timeout
    would never end: it trapped the instance, with a WebAssembly backtrace
    instead of the Python line; now it raises there."""
    if not self._is_owned():
        raise RuntimeError("cannot wait on un-acquired lock")
    if timeout is None:
        raise RuntimeError(
            "waiting without a timeout for a notification no thread can send: CPython for WASI "
            "has no threads, so the wait would never end (threading.Event.wait(), "
            "queue.Queue.get() and Condition.wait() with nothing to wait for)"
        )
    if timeout > 0:
        import time

        time.sleep(timeout)
    return False


class SingleThreadedLock:
    """``threading.Lock`` where no other thread can release it. CPython for
    WASI has no threads, and its C lock, once held, neither waits nor
    fails as it should: a blocking ``acquire`` trapped the instance (a
    re-entered ``with lock:`` is a common bug, and Python never saw it) and
    a timed one returned False at once, so a polling loop spun the CPU.
    Here a timed ``acquire`` sleeps its timeout out and fails, as it would
    natively with no one to release the lock, and a blocking one raises."""

    __slots__ = ("_lock", "__weakref__")

    def __init__(self) -> None:
        self._lock = _real_allocate_lock()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not blocking and timeout != -1:
            raise ValueError("can't specify a timeout for a non-blocking call")
        if timeout != -1 and timeout < 0:
            raise ValueError("timeout value must be a non-negative number")
        if self._lock.acquire(False):
            return True
        if not blocking:
            return False
        if timeout == -1:
            raise RuntimeError(
                "acquiring a lock that is already held, with no timeout: CPython for WASI has no "
                "threads, so nothing could release it and the wait would never end (re-entering "
                "`with lock:` needs a threading.RLock)"
            )
        import time

        time.sleep(timeout)
        return False

    __enter__ = acquire

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def _at_fork_reinit(self) -> None:
        self._lock = _real_allocate_lock()

    def __repr__(self) -> str:
        state = "locked" if self._lock.locked() else "unlocked"
        return f"<{state} {type(self).__module__}.{type(self).__qualname__} object at {id(self):#x}>"


def _real_allocate_lock():  # type: ignore[no-untyped-def]
    import _thread

    return _thread.allocate_lock()


def times() -> "os.times_result":
    """``os.times`` in seconds: WASI's ``times()`` counts in other units
    than the clock ticks CPython divides by, so it answered tens of
    thousands of years. CPU time is ``time.process_time()`` (wall-clock
    here, as documented), and elapsed time the monotonic clock."""
    import time

    return os.times_result((time.process_time(), 0.0, 0.0, 0.0, time.monotonic()))


def makedirs_naming_the_grant(real: Callable) -> Callable:
    """``os.makedirs`` as on a system with a root directory. WASI has no
    ``/`` to look at (each grant is a root of its own), so ``makedirs``
    climbed up to it and failed there: ``makedirs("/data", exist_ok=True)``
    of the grant itself raised ``FileNotFoundError: '/'``, as did a path no
    grant holds, which said nothing of the missing grant. ``os.makedirs``
    calls itself by its module's name for each parent, so this sees ``/``
    asked for, and answers as for the root that is always there; a first
    directory under it that cannot be made is named, with the reason."""

    def rooted(path) -> Optional[str]:
        """An absolute path as the root sees it (`//x/./y` is `/x/y`)."""
        path = os.fsdecode(path) if isinstance(path, (str, bytes)) else ""
        return os.path.normpath("/" + path.lstrip("/")) if path.startswith("/") else None

    def makedirs(name, mode=0o777, exist_ok=False, **kwargs):
        if rooted(os.fspath(name)) == "/":
            if exist_ok:
                return None
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), name)
        try:
            return real(name, mode, exist_ok, **kwargs)
        except FileNotFoundError as e:
            failed = rooted(e.filename)
            if failed is None or failed == "/" or os.path.dirname(failed) != "/" or NO_GRANT in (e.strerror or ""):
                raise
            raise FileNotFoundError(e.errno, f"{e.strerror} {NO_GRANT}", e.filename) from None

    makedirs.__doc__ = real.__doc__
    makedirs._rsgi_wasm = True
    return makedirs


def _is_c_locale(name: str) -> bool:
    """``C``, ``POSIX``, ``C.UTF-8``, or ``LC_ALL``'s ``CAT=NAME;...`` of them."""
    parts = [part.partition("=")[2] or part for part in name.split(";")]
    return all(part.partition(".")[0] in ("C", "POSIX") for part in parts)


# What the app set in `os.environ` while it was imported, at build time
# (`os.environ.setdefault("DJANGO_SETTINGS_MODULE", ...)`), until an
# instance has put it back: componentize-py empties `os.environ` after the
# build, and each instance's comes from the host (`--env`).
IMPORT_ENVIRON: Optional[Dict[str, str]] = None


# The variables the app looked up while it was imported, with what each
# was when the import ended (None: unset); see `boot.record_environ_reads`.
IMPORT_LOOKUPS: Dict[str, Optional[str]] = {}


def overridden_lookups() -> List[str]:
    """The variables the app looked up at import that this instance's
    environment gives otherwise: what the import made of them (Django's
    settings module) is in the snapshot, whatever `--env` says now."""
    return [k for k, v in IMPORT_LOOKUPS.items() if os.environ.get(k) != v]


def django_settings_refusal(argv: List[str]) -> Optional[str]:
    """Why ``manage.py ... --settings X`` cannot do what it says, if it
    names another settings module than the one the import chose (at build
    time, with its database): it would run with that one, silently."""
    if not argv or not (argv[:2] == ["-m", "django"] or _runs_django_commands(argv[0])):
        return None
    settings = getattr(sys.modules.get("django.conf"), "settings", None)
    if settings is None or not settings.configured:
        return None
    given = None
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--settings" and i + 1 < len(argv):
            given = argv[i + 1]
        elif arg.startswith("--settings="):
            given = arg.partition("=")[2]
    chosen = getattr(settings, "SETTINGS_MODULE", None)
    # An empty one means the default, as natively.
    if not given or given == chosen:
        return None
    return (
        f"--settings={given} cannot take effect: Django's settings module, {chosen}, was chosen "
        "when the app was imported, at build time, and this command would run with it (its "
        f"database included); build a component whose wsgi.py names {given} to use those settings"
    )


def _runs_django_commands(script: str) -> bool:
    """Whether ``script`` is Django's command line: ``manage.py``, or any
    script handing its arguments to ``execute_from_command_line``."""
    if os.path.basename(script) == "manage.py":
        return True
    try:
        with open(script, encoding="utf-8", errors="replace") as f:
            return "execute_from_command_line" in f.read(1 << 20)
    except OSError:
        return False


def overridden_warning() -> Optional[str]:
    """What to say of :func:`overridden_lookups`, if there are any."""
    overridden = overridden_lookups()
    if not overridden:
        return None
    one = len(overridden) == 1
    return (
        f"{', '.join(overridden)} {'is' if one else 'are'} given here, "
        f"but the app read {'it' if one else 'them'} when it was imported, at build time: "
        "what it made of that then is what runs here, whatever is given now; to run with "
        "another value, change the app's default and build again"
    )


# What a warning the host logs once per app starts with, whichever instance
# says it (`WARN_ONCE_MARKER` in host/src/protocol.rs).
WARN_ONCE = "rsgi-wasm-warning: "

# Whether this instance has yet to answer its first request; set at build
# when there is something to do then (see `first_request`).
FIRST_REQUEST_PENDING = False


def first_request() -> None:
    """Once per instance, before its first request: put back what the
    import set in `os.environ`, and have the host warn (once per app) when
    the environment it was given changes what the import already read:
    `run --env DATABASE_URL=...` of a settings module that read it at
    build time is otherwise silently not what runs."""
    global FIRST_REQUEST_PENDING
    FIRST_REQUEST_PENDING = False
    restore_import_environ()
    warning = overridden_warning()
    if warning is not None:
        warn_once(warning)


def restore_import_environ() -> None:
    """Put back what the app set at import, in the instance's first call;
    `--env` wins, as it was there before the import under gunicorn."""
    global IMPORT_ENVIRON
    saved, IMPORT_ENVIRON = IMPORT_ENVIRON, None
    for key, value in (saved or {}).items():
        os.environ.setdefault(key, value)


def install() -> None:
    """Fill in what this CPython lacks; leaves real implementations alone."""
    whole_stdio()
    import locale

    if not getattr(locale.setlocale, "_rsgi_wasm", False):
        locale.setlocale = c_locale_only(locale.setlocale, locale.Error)
    try:
        import socket
    except ImportError:
        pass
    else:
        if not getattr(socket, "_rsgi_wasm_guarded", False):
            _guard_network(socket)
            socket._rsgi_wasm_guarded = True
    if not any(isinstance(f, AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, AfterImport())
    for name, fix in FIXES.items():
        # Imported before the hook was there (by the boot, or by a test).
        if name in sys.modules:
            fix(sys.modules[name])
    import threading

    threading.Condition.wait = single_threaded_wait  # type: ignore[method-assign]
    if sys.platform == "wasi" and not getattr(threading.Thread.start, "_rsgi_wasm", False):
        threading.Thread.start = thread_start_explained(threading.Thread.start)  # type: ignore[method-assign]
    # `threading.Lock()` only: `_thread`'s stays for importlib's own locks.
    threading.Lock = SingleThreadedLock  # type: ignore[misc, assignment]
    import queue

    # The C one waits on its own lock, as `threading.Lock` did.
    queue.SimpleQueue = queue._PySimpleQueue  # type: ignore[misc, attr-defined]
    if sys.platform == "wasi":
        os.times = times
    if not getattr(os.makedirs, "_rsgi_wasm", False):
        os.makedirs = makedirs_naming_the_grant(os.makedirs)
    import pathlib

    if not getattr(pathlib.Path.mkdir, "_rsgi_wasm", False):
        pathlib.Path.mkdir = path_mkdir_naming_the_grant(pathlib.Path.mkdir)  # type: ignore[method-assign]
    if not hasattr(hashlib, "pbkdf2_hmac"):
        hashlib.pbkdf2_hmac = pbkdf2_hmac
    for name in ID_FUNCTIONS:
        if not hasattr(os, name):
            setattr(os, name, _nobody_but_us)
