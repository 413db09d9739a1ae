"""One router app that exercises the whole WSGI protocol for the black-box
tests (`tests/http.rs`). Every route answers something a test can check."""

import json
import os
import sqlite3
import sys
import time

try:  # imported at build time: modules first imported by a request are missing
    import socket
except ImportError as e:  # the sandbox's CPython may lack sockets entirely
    socket = None
    SOCKET_IMPORT_ERROR = repr(e)

try:  # built with --world wasi-http: the generated wasi:http bindings
    from wit_world.imports import http_types as wasi_types, outgoing_handler as wasi_outgoing
except ImportError:  # rsgi-wasm's own world (or imported outside a build)
    wasi_outgoing = None

# State kept across requests of one pooled instance.
COUNTERS = {"requests": 0, "closed": 0}

# Read at build time, as a TTL cache stamps what it fills at import.
IMPORTED_AT = time.monotonic()

# Heap the snapshot holds, for /snapshot-heap: a plain table; an object
# with a finaliser and one with a weakref.finalize callback, both to be
# dropped by a request; and free chunks inside the heap (every other one of
# many small objects freed), below SCATTER_TOP.
SNAPSHOT_TABLE = {"key": [1, 2, 3]}
FINALISED = {}


class _Finalised:
    def __del__(self):
        FINALISED["del"] = True


class _Target:
    pass


DROPPED_AT_RUN_TIME = [_Finalised(), _Target()]
import weakref  # noqa: E402

weakref.finalize(DROPPED_AT_RUN_TIME[1], FINALISED.__setitem__, "weakref", True)

# Asked at import, as libraries that pick a cache directory do: the build
# has no /tmp, so this is the build's answer; requests must find /tmp.
import tempfile  # noqa: E402

BUILD_TEMPDIR = tempfile.gettempdir()
class _Meta(type):
    def __getattr__(cls, name):
        raise KeyError(name)


class _LazyProxy(metaclass=_Meta):
    """Like Django's lazy objects: touching __class__ would load something.
    The build's heap walk must not."""

    @property
    def __class__(self):
        FINALISED["proxy_woken"] = True
        raise RuntimeError("a lazy proxy was woken at build time")


LAZY_PROXY = _LazyProxy()
_SCATTER = [bytes(30) for _ in range(20000)]
del _SCATTER[::2]
SCATTER_TOP = max(map(id, _SCATTER))


def text(start_response, body, status="200 OK", headers=()):
    if isinstance(body, str):
        body = body.encode("utf-8")
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), *headers])
    return [body]


def as_json(start_response, obj, status="200 OK"):
    return text(start_response, json.dumps(obj, sort_keys=True), status)


class Closing:
    """A result iterable whose close() leaves a trace the next request sees."""

    def __init__(self, chunks):
        self.chunks = chunks

    def __iter__(self):
        return iter(self.chunks)

    def close(self):
        COUNTERS["closed"] += 1


def environ_view(environ):
    out = {}
    for k, v in environ.items():
        if isinstance(v, (str, bool, int)) or (isinstance(v, tuple) and k == "wsgi.version"):
            out[k] = v
    out["wsgi.input.present"] = hasattr(environ["wsgi.input"], "read")
    out["wsgi.errors.present"] = hasattr(environ["wsgi.errors"], "write")
    out["wsgi.file_wrapper.present"] = callable(environ.get("wsgi.file_wrapper"))
    return out


def application(environ, start_response):
    COUNTERS["requests"] += 1
    path = environ["PATH_INFO"]
    query = environ.get("QUERY_STRING", "")
    inp = environ["wsgi.input"]

    if environ["REQUEST_METHOD"] == "CONNECT":
        # A WSGI app cannot tunnel; this one says yes anyway, the worst case.
        return text(start_response, "no tunnel to " + environ["RAW_URI"])

    if path == "/":
        return text(start_response, "router\n")

    if path == "/env":
        return as_json(start_response, environ_view(environ))

    if path.startswith("/path/"):
        # Decode the native string the way frameworks do (latin-1 → bytes → UTF-8).
        raw = path.encode("latin-1").decode("utf-8")
        return as_json(start_response, {"path": raw, "query": query})

    if path == "/echo":
        # Stream the body back as it arrives, 64 KiB at a time.
        def gen():
            while True:
                chunk = inp.read(65536)
                if not chunk:
                    break
                yield chunk

        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return gen()

    if path == "/echo-catching":
        # /echo that catches its body's failure and finishes anyway.
        def gen():
            yield b"start\n"
            try:
                while True:
                    chunk = inp.read(65536)
                    if not chunk:
                        break
                    yield chunk
            except OSError:
                pass
            yield b"END\n"

        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return gen()

    if path == "/swallow":
        # A framework's habit: every error in the view becomes its own 500.
        try:
            inp.read()
        except OSError:
            pass
        return text(start_response, "swallowed", "500 Internal Server Error")

    if path == "/json":
        # Parse the body as a framework's request.get_json() would.
        try:
            json.loads(inp.read())
        except RecursionError:
            return text(start_response, "too deep", "400 Bad Request")
        return text(start_response, "parsed")

    if path == "/length":
        if query == "say":
            # For a test to send the rest once the app is reading.
            print("reading the body", flush=True)
        total = 0
        while True:
            chunk = inp.read(65536)
            if not chunk:
                break
            total += len(chunk)
        return text(start_response, str(total))

    if path == "/lines":
        # A size that is not an integer (`n / 2`) fails as it does on a file.
        try:
            inp.read(1.5)
            float_size = "accepted"
        except TypeError as e:
            float_size = f"TypeError: {e}"
        first = inp.readline(4)
        rest_of_first = inp.readline()
        second = next(iter(inp), b"")
        remaining = inp.readlines()
        after_end = inp.read()
        return as_json(
            start_response,
            {
                "first": first.decode("latin-1"),
                "rest_of_first": rest_of_first.decode("latin-1"),
                "second": second.decode("latin-1"),
                "remaining": [line.decode("latin-1") for line in remaining],
                "after_end": after_end.decode("latin-1"),
                "float_size": float_size,
            },
        )

    if path == "/big":
        # n bytes in 64 KiB chunks, generated on the fly (never all in memory).
        n = int(query or "0")
        block = b"x" * 65536
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))])

        def gen():
            left = n
            while left > 0:
                take = min(left, len(block))
                yield block[:take]
                left -= take

        return gen()

    if path == "/many-headers":
        # n distinct headers of about 100 bytes each.
        n = int(query)
        start_response("200 OK", [("X-H%d" % i, "v" * 90) for i in range(n)])
        return [b"many"]

    if path == "/one-chunk":
        # The whole body in one bytes object: returned, or passed to write().
        n, how = query.split(",")
        body = b"y" * int(n)
        if how == "write":
            start_response("200 OK", [("Content-Length", n)])(body)
            return []
        start_response("200 OK", [])
        return [body]

    if path == "/stream":
        # First chunk, then wait until the test has seen it (a file appears in
        # the granted /sync dir), then the last chunk.
        marker = "/sync/" + (query or "go")

        def gen():
            yield b"first\n"
            deadline = time.monotonic() + 20
            while not os.path.exists(marker):
                if time.monotonic() > deadline:
                    yield b"timeout\n"
                    return
                time.sleep(0.01)
            yield b"last\n"

        start_response("200 OK", [("Content-Type", "text/plain")])
        return gen()

    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"via write(); ")
        write(b"")
        return [b"then ", b"iterable"]

    if path == "/shadow":
        import secrets
        import tabnanny

        return text(
            start_response,
            " ".join(getattr(m, "WHOSE", "the standard library's") for m in (tabnanny, secrets)),
        )

    if path == "/close":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Closing([b"closing"])

    if path == "/counters":
        return as_json(start_response, COUNTERS)

    if path == "/scribble":
        # What an instance leaves behind, which the next fresh one must not
        # see (--isolation request): a mark in every module's dict (spread
        # over the snapshot's pages) and memory grown past the snapshot.
        dicts = [d for d in (getattr(m, "__dict__", None) for m in list(sys.modules.values())) if isinstance(d, dict)]
        marked = sum(d.get("SCRIBBLED") is True for d in dicts)
        for d in dicts:
            d["SCRIBBLED"] = True
        grown = bytearray(b"\xab") * (32 << 20)
        return as_json(start_response, {"marked_before": marked, "modules": len(dicts), "grown": len(grown)})

    if path == "/clock":
        return as_json(start_response, {"since_import": time.monotonic() - IMPORTED_AT})

    if path == "/snapshot-heap":
        made = [bytes(30) for _ in range(1000)]
        mortal = {"made": "now"}
        out = {
            "table_immortal": sys.getrefcount(SNAPSHOT_TABLE) >= 2**30,
            "function_immortal": sys.getrefcount(text) >= 2**30,
            "new_object_immortal": sys.getrefcount(mortal) >= 2**30,
            "finalisable_immortal": any(sys.getrefcount(o) >= 2**30 for o in DROPPED_AT_RUN_TIME),
            "new_objects_in_old_free_chunks": sum(id(m) < SCATTER_TOP for m in made),
        }
        DROPPED_AT_RUN_TIME.clear()
        out["finalised"] = dict(FINALISED)
        return as_json(start_response, out)

    if path == "/gc":
        # What the snapshot left frozen, and whether a cycle made now is
        # still collected.
        import gc
        import weakref

        class Node:
            pass

        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        return as_json(start_response, {"frozen": gc.get_freeze_count(), "cycle_collected": gone() is None})

    if path == "/wasi-outgoing":
        # Built with --world wasi-http: a request through wasi:http's own
        # client (outgoing-handler), which the sandbox must refuse.
        if wasi_outgoing is None:
            return text(start_response, "no wasi:http")
        req = wasi_types.OutgoingRequest(wasi_types.Fields())
        req.set_authority("example.com")
        req.set_path_with_query("/")
        try:
            wasi_outgoing.handle(req, None)
        except Exception as e:  # componentize_py_types.Err(ErrorCode_...)
            return text(start_response, "refused: " + type(getattr(e, "value", e)).__name__)
        return text(start_response, "sent")

    if path == "/error":
        raise RuntimeError("boom from the router app")

    if path == "/close-stderr":
        os.close(2)
        raise RuntimeError("raised with stderr closed")

    if path == "/close-stdout":
        os.close(1)
        print("printed with stdout closed", flush=True)
        return text(start_response, "unreachable")

    if path == "/error-after-head":
        def gen():
            yield b"partial"
            raise RuntimeError("late boom")

        start_response("200 OK", [("Content-Type", "text/plain")])
        return gen()

    if path == "/exc-info":
        try:
            raise ValueError("handled")
        except ValueError:
            start_response("200 OK", [])
            start_response("503 Custom Error", [("Content-Type", "text/plain")], sys.exc_info())
            return [b"recovered with exc_info"]

    if path == "/twice":
        start_response("200 OK", [])
        start_response("200 OK", [])
        return [b"unreachable"]

    if path == "/bad-header":
        if query == "ctl":
            # Past the adapter's CR/LF/NUL check: the host's rules refuse it.
            start_response("200 OK", [("X-Ctl", "a\x01b")])
            return [b"unreachable"]
        start_response("200 OK", [("X-Evil", "a\r\nSet-Cookie: pwned=1")])
        return [b"unreachable"]

    if path == "/hop-by-hop":
        start_response("200 OK", [("Connection", "close")])
        return [b"unreachable"]

    if path == "/lengths":
        # Content-Length values from the query, one header each: ?5;5 (a
        # repeat), ?3;5 (a conflict), ?%202%20 (padded), ?1,%202 (a list).
        import urllib.parse

        values = urllib.parse.unquote(environ["QUERY_STRING"]).split(";")
        start_response("200 OK", [("Content-Length", v) for v in values] + [("X-Pad", "  padded  ")])
        first = values[0].strip()
        return [b"hello"[: int(first) if first.isdigit() else 5]]

    if path == "/short":
        start_response("200 OK", [("Content-Length", "10")])
        return [b"12345"]

    if path == "/long":
        start_response("200 OK", [("Content-Length", "3")])
        return [b"1234567890"]

    if path == "/custom-reason":
        return text(start_response, "teapot", status="418 I'm A Little Teapot")

    if path == "/latin1-header":
        return text(start_response, "ok", headers=[("X-Name", "caf\u00e9")])

    if path == "/empty":
        start_response("204 No Content", [])
        return []

    if path == "/status":
        # Any status, with a body it may not be allowed to have.
        start_response(environ["QUERY_STRING"] + " Whatever", [])
        return [b"oops"]

    if path == "/sleep":
        # Tests wait for this line to know the request reached the app.
        print(f"sleeping {query or '1'}", flush=True)
        time.sleep(float(query or "1"))
        return text(start_response, "slept")

    if path == "/print":
        if query == "partial":
            sys.stderr.write("no newline at the end")
            return text(start_response, "printed")
        if query == "long":
            print("L" * 100000 + "END OF THE LONG LINE")
            return text(start_response, "printed")
        if query == "whole":
            # One write, newline included, past what the host takes per
            # write (1 MiB for exec's stdout, 4 MiB for the log).
            n = sys.stdout.write("H" * 5_000_000 + "end of the whole line\n")
            return text(start_response, str(n))
        print("hello from guest stdout", flush=True)
        environ["wsgi.errors"].write("hello from wsgi.errors\n")
        return text(start_response, "printed")

    if path == "/file":
        # /file?NAME[,LENGTH]: LENGTH, if given, as the Content-Length.
        name, _, length = (query or "file.txt").partition(",")
        f = open("/sync/" + name, "rb")
        headers = [("Content-Type", "application/octet-stream")]
        if length:
            headers.append(("Content-Length", length))
        start_response("200 OK", headers)
        return environ["wsgi.file_wrapper"](f, 4096)

    if path == "/file-proxy":
        # As Django's `File` wraps a model's file: `read` and `tell` are the
        # file's own, `name` is not its path.
        class Proxy:
            def __init__(self, file):
                self.file, self.name = file, "uploads/" + query

            read = property(lambda self: self.file.read)
            tell = property(lambda self: self.file.tell)
            close = property(lambda self: self.file.close)

        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](Proxy(open("/sync/" + query, "rb")), 4096)

    if path == "/bytesio":
        import io

        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"from a BytesIO " * 100), 256)

    if path == "/not-modified":
        start_response("304 Not Modified", [("ETag", '"x"')])
        return [b"must not be sent"]

    if path == "/spin":
        while True:
            pass

    if path == "/bomb":
        hoard = []
        while True:
            hoard.append(bytearray(16 * 1024 * 1024))

    if path == "/huge-message":
        class HugeMessage(Exception):
            def __str__(self):
                return "S" * (int(query) << 20) + "end"

        raise HugeMessage()

    if path == "/recurse":
        sys.setrecursionlimit(10**6)

        def deeper(n):
            return deeper(n + 1) + 1

        deeper(0)

    if path == "/connect":
        if socket is None:
            return text(start_response, f"no socket module: {SOCKET_IMPORT_ERROR}", status="403 Forbidden")
        host, _, port = query.rpartition(":")
        sock = None
        try:
            # A numeric address: no name lookup, straight to connect().
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(5)
            sock.connect((host, int(port)))
            sock.close()
            return text(start_response, "connected")
        except Exception as e:
            # What a socket whose connect failed says of itself (its repr
            # asks for its address), and dropping it unclosed (the
            # ResourceWarning formats that repr), as careless code does.
            said = repr(sock)
            sock = None
            return text(start_response, f"{type(e).__name__}: {e}; {said}", status="403 Forbidden")

    if path == "/caught":
        # A framework's 500: the exception caught and logged, its traceback
        # written to stderr as output, between ordinary lines.
        import logging

        print("before the traceback", file=sys.stderr)
        try:
            raise ValueError("caught and logged")
        except ValueError:
            logging.getLogger("app").exception("Exception on /caught [GET]")
        print("after the traceback", file=sys.stderr)
        return text(start_response, "logged", status="500 Internal Server Error")

    if path == "/send":
        # /send?HOST:PORT:N: N bytes with sendall(), then close(), as a
        # client of a database or a webhook does; the peer counts them.
        host, port, n = query.rsplit(":", 2)
        sock = socket.create_connection((host, int(port)), timeout=30)
        sock.sendall(b"x" * int(n))
        sock.close()
        return text(start_response, f"sent {n}")

    if path == "/send-nowait":
        # /send-nowait?HOST:PORT: what a non-blocking socket with a small
        # buffer accepts at once, then close(): the host holds most of it.
        host, _, port = query.rpartition(":")
        sock = socket.create_connection((host, int(port)), timeout=30)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setblocking(False)
        accepted = 0
        try:
            while True:
                accepted += sock.send(b"x" * 1_000_000)
        except BlockingIOError:
            pass
        sock.close()
        return text(start_response, f"accepted {accepted}")

    if path == "/udp":
        try:
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
            return text(start_response, "opened")
        except Exception as e:
            return text(start_response, f"{type(e).__name__}: {e}", status="403 Forbidden")

    if path == "/write-file":
        try:
            with open(query, "wb") as f:
                f.write(b"written by the app")
            return text(start_response, "written")
        except OSError as e:
            return text(start_response, f"OSError: {e}", status="403 Forbidden")

    if path == "/symlink":
        target, _, link = query.partition(",")
        try:
            os.symlink(target, link)
            return text(start_response, "linked")
        except OSError as e:
            return text(start_response, f"OSError: {e}", status="403 Forbidden")

    if path == "/os-environ":
        return as_json(start_response, dict(os.environ))

    if path == "/file-calls":
        # /file-calls?N: N rounds of file system calls, each mostly the
        # host's work: stat, create and write, read back, delete.
        for i in range(int(query)):
            os.stat("/tmp")
            with open("/tmp/calls", "wb") as f:
                f.write(b"x")
            with open("/tmp/calls", "rb") as f:
                f.read()
            os.unlink("/tmp/calls")
        return text(start_response, b"done")

    if path == "/read-file":
        try:
            with open(query, "rb") as f:
                return text(start_response, f.read())
        except OSError as e:
            return text(start_response, f"OSError: {e}", status="403 Forbidden")

    if path == "/zoneinfo":
        # /zoneinfo?KEY: the zone's UTC offset on a summer and a winter day
        # (every build ships the timezone database).
        import datetime
        import zoneinfo

        zone = zoneinfo.ZoneInfo(query)
        days = [datetime.datetime(2026, m, 1, 12, tzinfo=zone) for m in (7, 1)]
        return text(start_response, " ".join(str(d.utcoffset()) for d in days))

    if path == "/fill":
        # /fill?PATH,MIB: write MIB one-MiB chunks, stop at the first OSError.
        target, mib = query.split(",")
        return as_json(start_response, fill(lambda: open(target, "wb"), int(mib)))

    if path == "/fill-temp":
        # /fill-temp?A,B: B MiB into a second unnamed temporary file while
        # the first, holding A MiB and already deleted, is still open.
        import tempfile

        a, b = (int(x) for x in query.split(","))
        with tempfile.TemporaryFile() as first:
            one = fill(lambda: first, a, close=False)
            two = fill(tempfile.TemporaryFile, b)
        return as_json(start_response, {"first": one, "second": two})

    if path == "/close-waits":
        # A body without Content-Length whose close() waits for the test (a
        # file in the granted /sync dir) after the client has the whole body.
        marker = "/sync/" + (query or "closed")

        class Result:
            def __iter__(self):
                yield b"all of it\n"

            def close(self):
                deadline = time.monotonic() + 60
                while not os.path.exists(marker) and time.monotonic() < deadline:
                    time.sleep(0.01)

        start_response("200 OK", [("Content-Type", "text/plain")])
        return Result()

    if path == "/stalls-after-its-length":
        # The whole Content-Length, then a generator that never ends.
        def body():
            yield b"all of it\n"
            while True:
                time.sleep(0.05)

        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "10")])
        return body()

    if path == "/tempdir":
        # Where temporary files go at run time, after the build asked (below).
        import tempfile

        with tempfile.TemporaryFile() as f:
            f.write(b"x")
        return as_json(start_response, {"build": BUILD_TEMPDIR, "now": tempfile.gettempdir()})

    if path == "/spool":
        # As frameworks keep an upload: the body in a temporary file, which a
        # reference cycle through the environ holds open past the request.
        import tempfile

        spooled = tempfile.TemporaryFile()
        try:
            while True:
                chunk = inp.read(65536)
                if not chunk:
                    break
                spooled.write(chunk)
            spooled.flush()
        except OSError as e:
            return text(start_response, "write failed: %s" % e, "507 Insufficient Storage")
        holder = {"file": spooled, "environ": environ}
        environ["router.spooled"] = holder
        return text(start_response, str(spooled.tell()))

    if path == "/sparse":
        # /sparse?PATH,OFFSET: one byte far into a new file, then truncate.
        target, offset = query.split(",")
        out = {}
        with open(target, "wb", buffering=0) as f:
            try:
                f.seek(int(offset))
                f.write(b"x")
                f.flush()
                out["write"] = "ok"
            except OSError as e:
                out["write"] = errno_name(e)
        try:
            os.truncate(target, int(offset))
            out["truncate"] = "ok"
        except OSError as e:
            out["truncate"] = errno_name(e)
        return as_json(start_response, out)

    if path == "/flood":
        # /flood?N: N lines of 100 bytes on stdout, as fast as it can.
        line = "f" * 99
        for _ in range(int(query)):
            print(line)
        sys.stdout.flush()
        return text(start_response, "flooded")

    if path == "/open-many":
        # /open-many?PATH,N[,stream]: open PATH up to N times at once (with
        # "stream", as file objects with a write stream each, the
        # descriptors closed; PATH "socket": TCP sockets, never connected);
        # say how many opened and why it stopped.
        target, n, *how = query.split(",")
        held, errno = [], None
        try:
            for _ in range(int(n)):
                if target == "socket":
                    held.append(socket.socket())
                elif how:
                    f = open(target, "ab", buffering=0)
                    f.write(b"")
                    held.append(f)
                else:
                    held.append(os.open(target, os.O_RDONLY))
        except OSError as e:
            errno = errno_name(e)
        count = len(held)
        for h in held:
            h.close() if how or target == "socket" else os.close(h)
        return as_json(start_response, {"opened": count, "errno": errno})

    if path == "/fs-op":
        # /fs-op?OP,A[,B]: one filesystem call; its errno name, or "ok".
        op, a, *b = query.split(",")
        try:
            if op == "ftruncate-ro":
                with open(a, "rb") as f:
                    os.ftruncate(f.fileno(), 0)
            elif op == "rename":
                os.rename(a, b[0])
            elif op == "move":
                import shutil

                shutil.move(a, b[0])
            elif op == "link":
                os.link(a, b[0])
            elif op == "mkdir":
                os.makedirs(a)
            elif op == "listdir":
                return text(start_response, ",".join(sorted(os.listdir(a))))
            return text(start_response, "ok")
        except OSError as e:
            return text(start_response, errno_name(e))

    if path == "/move-race":
        # /move-race?swap,DIR or /move-race?take,DIR: run together. "swap"
        # turns DIR/m from a directory holding a plain file up2 into a
        # symlink to a/b and back, until DIR/stop appears; "take" renames
        # DIR/m/up2 to DIR/lk meanwhile, and says whether it ever carried
        # off a symlink (a/b/up2, the host's) rather than the plain file.
        role, base = query.split(",")
        m, mdir, lk = f"{base}/m", f"{base}/mdir", f"{base}/lk"
        counts = {"carried": 0, "moved": 0, "refused": 0, "missed": 0}
        if role == "swap":
            for _ in range(200_000):
                if os.path.exists(f"{base}/stop"):
                    break
                try:
                    os.rename(m, mdir)
                    open(f"{mdir}/up2", "a").close()
                    os.symlink("a/b", m)
                    os.unlink(m)
                    os.rename(mdir, m)
                except OSError:
                    pass
            return text(start_response, "swapped")
        for _ in range(3_000):
            try:
                os.rename(f"{m}/up2", lk)
            except PermissionError:
                counts["refused"] += 1
                continue
            except OSError:
                counts["missed"] += 1
                continue
            if os.path.islink(lk):
                counts["carried"] += 1
                break
            counts["moved"] += 1
            os.unlink(lk)
        open(f"{base}/stop", "w").close()
        return as_json(start_response, counts)

    if path == "/remove":
        os.remove(query)
        return text(start_response, "removed")

    if path == "/grow":
        # /grow?PATH: read a new file to its end, let another descriptor
        # write there, then read on: as on a disk, the reader sees it.
        seen = {}
        reader = os.open(query, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        try:
            seen["empty"] = os.read(reader, 16).decode()
            writer = os.open(query, os.O_WRONLY)
            os.write(writer, b"first")
            seen["read on"] = os.read(reader, 16).decode()
            os.write(writer, b" second")
            os.close(writer)
            os.lseek(reader, 5, os.SEEK_SET)  # where it already is
            seen["seek in place"] = os.read(reader, 16).decode()
            os.lseek(reader, 0, os.SEEK_SET)
            seen["from the start"] = os.read(reader, 64).decode()
        finally:
            os.close(reader)
        return as_json(start_response, seen)

    if path == "/sqlite-add":
        # /sqlite-add?PATH: add a row to a database, creating it if needed.
        try:
            con = sqlite3.connect(query, timeout=30)
        except sqlite3.Error as e:
            return as_json(start_response, {"error": f"{type(e).__name__}: {e}"})
        try:
            con.execute("create table if not exists t (x integer)")
            con.execute("insert into t values (1)")
            con.commit()
            return as_json(start_response, {"rows": con.execute("select count(*) from t").fetchone()[0]})
        except sqlite3.Error as e:
            return as_json(start_response, {"error": f"{type(e).__name__}: {e}"})
        finally:
            con.close()

    if path == "/sqlite-created-meanwhile":
        # /sqlite-created-meanwhile?PATH: a connection opened on a missing
        # database, which another connection then creates.
        if os.path.exists(query):
            os.remove(query)
        late = sqlite3.connect(query)
        early = sqlite3.connect(query)
        early.execute("create table t (x integer)")
        early.execute("insert into t values (1)")
        early.commit()
        early.close()
        try:
            late.execute("create table if not exists t (x integer)")
            late.execute("insert into t values (2)")
            late.commit()
            rows = [r[0] for r in late.execute("select x from t order by x")]
            return as_json(start_response, {"rows": rows})
        except sqlite3.Error as e:
            return as_json(start_response, {"error": f"{type(e).__name__}: {e}"})
        finally:
            late.close()

    return text(start_response, "not found\n", status="404 Not Found")


def fill(opener, mib, close=True):
    """Write `mib` MiB through the file `opener()` gives, and say how far it got."""
    chunk = b"x" * (1 << 20)
    written, errno, f = 0, None, None
    try:
        f = opener()  # creating a file takes room too
        for _ in range(mib):
            f.write(chunk)
            f.flush()
            written += len(chunk)
    except OSError as e:
        errno = errno_name(e)
    finally:
        if close and f is not None:
            try:
                f.close()
            except OSError as e:
                errno = errno or errno_name(e)
    return {"written": written, "errno": errno}


def errno_name(e):
    import errno

    return errno.errorcode.get(e.errno, str(e.errno))
