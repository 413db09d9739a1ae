"""Unit tests of the guest adapter's pure-Python parts (run natively with
`python3 -m unittest discover -s guest/tests -t guest`); the component
itself is tested black-box over HTTP in tests/http.rs."""

import collections
import enum
import errno
import io
import os
import sys
import unittest
from unittest import mock

from rsgi_wasm_guest import protocol
from rsgi_wasm_guest.wsgi_input import BodyTooLarge, ClientDisconnected, InputStream


def source(data, step=3):
    """A pull function handing out `data` at most `step` bytes at a time."""
    pos = [0]

    def pull(n):
        take = min(n, step, len(data) - pos[0])
        chunk = data[pos[0] : pos[0] + take]
        pos[0] += take
        return chunk

    return pull


class InputStreamTest(unittest.TestCase):
    def test_read_respects_content_length(self):
        s = InputStream(source(b"hello world, and more"), 11)
        self.assertEqual(s.read(5), b"hello")
        self.assertEqual(s.read(), b" world")
        self.assertEqual(s.read(), b"")

    def test_unknown_length_reads_to_end(self):
        s = InputStream(source(b"abc\ndef"), None)
        self.assertEqual(s.read(), b"abc\ndef")

    def test_readline_size_and_iteration(self):
        s = InputStream(source(b"abcdef\nxy\nz"), None)
        self.assertEqual(s.readline(2), b"ab")
        self.assertEqual(s.readline(), b"cdef\n")
        self.assertEqual(list(s), [b"xy\n", b"z"])
        self.assertEqual(s.readline(), b"")

    def test_readlines_hint(self):
        # Same rule as io: stop once the lines so far reach the hint.
        data = b"a\nb\nc\n"
        s, ref = InputStream(source(data), None), io.BytesIO(data)
        self.assertEqual(s.readlines(2), ref.readlines(2))
        self.assertEqual(s.readlines(3), ref.readlines(3))
        self.assertEqual(s.readlines(), ref.readlines())

    def test_mixed_reads_match_a_file(self):
        # Whatever the host's chunk sizes, reads return what a file would.
        import random

        rng = random.Random(7)
        data = bytes(rng.randrange(256) for _ in range(5000)).replace(b"\x00", b"\n")
        for step in (1, 7, 64, 4096, 10000):
            for length in (None, len(data), 3000):
                s = InputStream(source(data, step), length)
                ref = io.BytesIO(data if length is None else data[:length])
                while True:
                    op = rng.randrange(4)
                    if op == 0:
                        n = rng.choice((0, 1, 5, 100, 4096, 9000))
                        got, want = s.read(n), ref.read(n)
                    elif op == 1:
                        n = rng.choice((-1, 3, 50))
                        got, want = s.readline(n), ref.readline(n)
                    elif op == 2:
                        got, want = next(s, b""), ref.readline()
                    else:
                        got, want = s.read(), ref.read()
                    self.assertEqual(got, want, (step, length, op))
                    if not want and op != 0:
                        break

    def test_sizes_are_integers_or_none_as_for_a_file(self):
        # A float must be the TypeError io raises, never reach the host.
        from rsgi_wasm_guest.wsgi_input import EmptyInput

        asked, inner = [], source(b"abc\ndef")

        def pull(n):
            asked.append(n)
            return inner(n)

        s, ref = InputStream(pull, 7), io.BytesIO(b"abc\ndef")
        for stream in (s, ref, EmptyInput()):
            for call in (stream.read, stream.readline, stream.readlines):
                with self.assertRaises(TypeError, msg=(stream, call)):
                    call(3.0)
                with self.assertRaises(TypeError, msg=(stream, call)):
                    call("3")
        self.assertEqual(asked, [])
        self.assertEqual(s.read(True), ref.read(True))
        self.assertEqual({type(n) for n in asked}, {int})
        self.assertEqual(s.readline(None), ref.readline(None))
        self.assertEqual(s.readlines(None), ref.readlines(None))

    def test_an_ended_stream_reads_nothing_more(self):
        # Kept past its request, the stream must not pull the next body.
        s = InputStream(source(b"first body, partly read"), 23)
        self.assertEqual(s.read(5), b"first")
        self.assertEqual(s.readline(2), b" b")
        self.assertFalse(s.end(), "a small body leaves no temporary file")
        self.assertEqual(s.read(), b"")
        self.assertEqual(s.read(4), b"")
        self.assertEqual(s.readline(), b"")
        self.assertEqual(list(s), [])

    def test_a_large_body_asks_for_a_collection_when_it_ends(self):
        big = InputStream(source(b"x" * (300 * 1024)), 300 * 1024)
        self.assertEqual(len(big.read()), 300 * 1024)
        self.assertTrue(big.end())

    def test_errors_are_flagged(self):
        def too_large(n):
            raise BodyTooLarge("x")

        s = InputStream(too_large, None)
        with self.assertRaises(BodyTooLarge):
            s.read()
        self.assertTrue(s.too_large)

        def gone(n):
            raise ClientDisconnected("x")

        s = InputStream(gone, 5)
        with self.assertRaises(OSError):
            s.read(1)
        self.assertTrue(s.disconnected)


class BuildReport(unittest.TestCase):
    def test_a_long_failure_keeps_its_start_and_its_end(self):
        import io
        from unittest import mock

        from rsgi_wasm_guest import boot

        message = "importing 'app' raised OperationalError: x\n  File \"app.py\", line 9\n" + "frame\n" * 2000 + "the cause"
        err = io.StringIO()
        with mock.patch("sys.stderr", err):
            boot.tell(message)
        said = err.getvalue()
        self.assertIn(boot.MARKER + "importing 'app' raised OperationalError: x", said)
        self.assertIn('File "app.py", line 9', said)
        self.assertIn("characters cut)", said)
        self.assertTrue(said.rstrip().endswith("the cause"), said[-100:])
        self.assertLess(len(said.replace(boot.MARKER, "")), boot.REPORT_MAX + 100)


class WarmUpFailures(unittest.TestCase):
    def test_the_exception_that_ends_the_last_traceback_is_named(self):
        from rsgi_wasm_guest.boot import failure_of

        self.assertEqual(failure_of("one\ntwo\n"), "no traceback; its last output: two")
        group = (
            "  + Exception Group Traceback (most recent call last):\n  |   File \"a.py\", line 1\n"
            "  | ExceptionGroup: two failed (2 sub-exceptions)\n  +-+---------------- 1 ----\n"
            "    | ValueError: one\n    +------------------------------------\n"
        )
        self.assertEqual(failure_of(group), "ExceptionGroup: two failed (2 sub-exceptions)")
        self.assertIsNone(failure_of(""))
        text = (
            "Traceback (most recent call last):\n  File \"a.py\", line 1, in f\n    g()\n"
            "KeyError: 'a'\n\nDuring handling of the above exception, another exception occurred:\n\n"
            "Traceback (most recent call last):\n  File \"b.py\", line 2, in g\n"
            "ValueError: Missing staticfiles manifest entry for 'x.css'\n"
            + "-" * 79 + "\n"
        )
        self.assertEqual(failure_of(text), "ValueError: Missing staticfiles manifest entry for 'x.css'")
        mail = (
            "Subject: [Django] ERROR\n\nTraceback (most recent call last):\n  File \"v.py\", line 3\n\n"
            "Exception Type: ValueError at /admin/login/\nException Value: Missing entry\n" + "-" * 79
        )
        self.assertEqual(failure_of(mail), "ValueError: Missing entry")
        # The adapter's hint after the exception goes with it.
        hinted = (
            "Traceback (most recent call last):\n  File \"p.py\", line 9, in run\n"
            "TypeError: create_app() takes 0 positional arguments but 2 were given\n(the app takes other arguments)\n"
        )
        self.assertEqual(
            failure_of(hinted),
            "TypeError: create_app() takes 0 positional arguments but 2 were given (the app takes other arguments)",
        )

    def test_a_warm_up_that_sets_a_cookie_is_warned_about(self):
        from rsgi_wasm_guest.boot import set_cookies, warm_up

        def app(environ, start_response):
            headers = [("Content-Type", "text/plain")]
            if environ["PATH_INFO"] == "/login":
                headers += [
                    ("Set-Cookie", "sessionid=abc123; HttpOnly; Path=/"),
                    ("Set-Cookie", "csrftoken=x; Max-Age=31449600"),
                ]
            if environ["PATH_INFO"] == "/logout":
                headers += [
                    ("Set-Cookie", 'sessionid=""; expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0'),
                    ("set-cookie", "flash=gone; Max-Age = 0"),
                ]
            start_response("200 OK", headers)
            return [b"ok"]

        report = warm_up(app, ["/", "/login", "/logout"])
        self.assertEqual(report[:2], ["warm-up GET /: 200 OK", "warm-up GET /login: 200 OK"])
        self.assertTrue(report[2].startswith("warning: warm-up GET /login set the cookie sessionid, csrftoken:"), report)
        self.assertIn("--warmup PATH", report[2])
        # Clearing a cookie (a logout) keeps nothing for it.
        self.assertEqual(report[3:], ["warm-up GET /logout: 200 OK"])
        self.assertEqual(set_cookies([("Set-Cookie", "=novalue"), ("X", "a=b")]), [])
        self.assertEqual(set_cookies([("Set-Cookie", "f=5; max-age=-1"), ("Set-Cookie", "g=1; Max-Age=00")]), [])
        self.assertEqual(set_cookies([("Set-Cookie", "h=1; Max-Age=10; Path=/")]), ["h"])
        past = [
            "x=1; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
            "x=1; expires=Sunday, 06-Nov-94 08:49:37 GMT",
            "x=1; Path=/; Expires=Sat, 01 Jan 2000 00:00:00 GMT",
        ]
        self.assertEqual(set_cookies([("Set-Cookie", c) for c in past]), [])
        # Max-Age wins over Expires, and the last Max-Age over the others;
        # a date that does not parse ends nothing.
        self.assertEqual(
            set_cookies(
                [
                    ("Set-Cookie", "a=1; Max-Age=10; Expires=Thu, 01 Jan 1970 00:00:00 GMT"),
                    ("Set-Cookie", "b=1; Max-Age=0; Max-Age=10"),
                    ("Set-Cookie", "c=1; Expires=garbage"),
                    ("Set-Cookie", "d=1; Expires=Fri, 01 Jan 2100 00:00:00 GMT"),
                ]
            ),
            ["a", "b", "c", "d"],
        )

    def test_frozen_modules_name_the_stdlib_where_instances_find_it(self):
        import os
        import sys
        import tempfile
        import types

        from rsgi_wasm_guest.boot import point_stdlib_at_its_copy

        with tempfile.TemporaryDirectory() as root:
            stdlib = os.path.join(root, "python")
            os.makedirs(stdlib)
            open(os.path.join(stdlib, "fake_frozen.py"), "w").close()
            old = os.path.join(stdlib, "lib", "python3.14")
            frozen = types.ModuleType("fake_frozen")
            frozen.__file__ = old + "/fake_frozen.py"
            frozen.__spec__ = types.SimpleNamespace(
                origin="frozen", loader_state=types.SimpleNamespace(filename=frozen.__file__)
            )
            elsewhere = types.ModuleType("fake_missing")
            elsewhere.__file__ = old + "/not_shipped.py"
            saved = getattr(sys, "_stdlib_dir", None)
            sys.modules["fake_frozen"], sys.modules["fake_missing"] = frozen, elsewhere
            try:
                sys._stdlib_dir = old
                point_stdlib_at_its_copy(stdlib)
                self.assertEqual(frozen.__file__, stdlib + "/fake_frozen.py")
                self.assertEqual(frozen.__spec__.loader_state.filename, frozen.__file__)
                self.assertEqual(frozen.__spec__.origin, "frozen")
                # A file the copy lacks keeps its name.
                self.assertEqual(elsewhere.__file__, old + "/not_shipped.py")
                self.assertEqual(sys._stdlib_dir, stdlib)
            finally:
                sys._stdlib_dir = saved
                del sys.modules["fake_frozen"], sys.modules["fake_missing"]

    def test_a_manifest_storage_made_at_build_is_made_again_at_run_time(self):
        import sys
        import types

        from rsgi_wasm_guest.boot import forget_static_manifest

        empty = object()

        class ManifestFilesMixin:
            pass

        class Manifest(ManifestFilesMixin):
            pass

        storage = types.ModuleType("django.contrib.staticfiles.storage")
        storage.ManifestFilesMixin = ManifestFilesMixin
        storage.staticfiles_storage = types.SimpleNamespace(_wrapped=Manifest())
        functional = types.ModuleType("django.utils.functional")
        functional.empty = empty
        files = types.ModuleType("django.core.files.storage")
        other = object()
        files.storages = types.SimpleNamespace(_storages={"staticfiles": Manifest(), "default": other})
        names = ["django.contrib.staticfiles.storage", "django.utils.functional", "django.core.files.storage"]
        with mock.patch.dict(sys.modules, dict(zip(names, [storage, functional, files]))):
            forget_static_manifest()
            self.assertIs(storage.staticfiles_storage._wrapped, empty)
            self.assertEqual(files.storages._storages, {"default": other})
            plain = object()
            storage.staticfiles_storage._wrapped = plain
            forget_static_manifest()
            self.assertIs(storage.staticfiles_storage._wrapped, plain)


class BodyErrorTest(unittest.TestCase):
    def test_werkzeug_s_classes_are_taken_on_once_it_is_imported(self):
        import sys
        import types

        from rsgi_wasm_guest.wsgi_input import body_error

        plain = body_error(ClientDisconnected, "gone")
        self.assertIs(type(plain), ClientDisconnected)

        class HTTPException(Exception):
            def __init__(self, description=None, response=None):
                super().__init__()
                self.description, self.response = description, response

        class BadRequest(HTTPException):
            code = 400

        class WerkzeugDisconnected(BadRequest):
            pass

        class RequestEntityTooLarge(HTTPException):
            code = 413

        fake = types.ModuleType("werkzeug.exceptions")
        fake.ClientDisconnected = WerkzeugDisconnected
        fake.RequestEntityTooLarge = RequestEntityTooLarge
        with mock.patch.dict(sys.modules, {"werkzeug.exceptions": fake}):
            e = body_error(ClientDisconnected, "the client left")
            self.assertIsInstance(e, ClientDisconnected)
            self.assertIsInstance(e, OSError)
            self.assertIsInstance(e, WerkzeugDisconnected)
            self.assertEqual((e.code, e.description, e.response), (400, "the client left", None))
            self.assertEqual(str(e), "the client left")
            big = body_error(BodyTooLarge, "too large")
            self.assertIsInstance(big, BodyTooLarge)
            self.assertEqual(big.code, 413)
            # The class is made once.
            self.assertIs(type(body_error(ClientDisconnected, "again")), type(e))


class Recorder(protocol.Transport):
    def __init__(self):
        self.head = None
        self.chunks = []

    def start(self, status, headers, first_chunk):
        self.head = (status, headers)
        self.chunks.append(first_chunk)

    def write(self, chunk):
        self.chunks.append(chunk)

    def end(self):
        self.events.append("end")


def run(app, events=None):
    t = Recorder()
    t.events = [] if events is None else events
    env = protocol.base_environ(io.StringIO())
    env.update({"REQUEST_METHOD": "GET", "PATH_INFO": "/"})
    failure = protocol.run(app, env, t)
    return t, failure, env["wsgi.errors"].getvalue()


class Sender(Recorder):
    """A transport that takes every file offered to the host."""

    def send_file(self, status, headers, path, offset):
        self.sent = (path, offset)
        return True


def sent_by_host(filelike):
    """Where the host was asked to send ``filelike`` from, or None if the
    guest iterated it."""
    t = Sender()
    t.events, t.sent = [], None

    def app(environ, start_response):
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](filelike)

    env = protocol.base_environ(io.StringIO())
    env.update({"REQUEST_METHOD": "GET", "PATH_INFO": "/"})
    protocol.run(app, env, t)
    return t.sent


class FileWrapperTest(unittest.TestCase):
    def setUp(self):
        import tempfile

        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)
        self.path = os.path.join(self.dir.name, "f.bin")
        with open(self.path, "wb") as f:
            f.write(b"line one\r\nline two\r\n")

    def test_a_binary_file_or_a_proxy_reading_it_unchanged_is_sent_by_the_host(self):
        f = open(self.path, "rb")
        f.read(5)
        self.assertEqual(sent_by_host(f), (self.path, 5))

        class DjangoFile:  # `read` and `tell` are the file's own
            def __init__(self, file):
                self.file, self.name = file, "uploads/f.bin"

            read = property(lambda self: self.file.read)
            close = property(lambda self: self.file.close)

        self.assertEqual(sent_by_host(DjangoFile(open(self.path, "rb"))), (self.path, 0))
        self.assertEqual(sent_by_host(open(self.path, "rb", buffering=0)), (self.path, 0))

    def test_what_reads_other_bytes_than_the_disk_s_is_iterated(self):
        import gzip

        class Upper(io.FileIO):
            def read(self, n=-1):
                return super().read(n).upper()

        class Zeroes(io.FileIO):
            def readinto(self, b):
                n = super().readinto(b)
                b[:n] = bytes(n)
                return n

        replaced = open(self.path, "rb")
        replaced.read = io.BytesIO(b"other").read
        raw_replaced = open(self.path, "rb")
        raw_replaced.raw.readinto = lambda b: 0

        with open(self.path + ".gz", "wb") as z:
            z.write(gzip.compress(b"inflated"))
        for f in [
            gzip.open(self.path + ".gz", "rb"),
            Upper(self.path),
            open(self.path, "r"),
            open(self.path + ".out", "wb"),
            io.BytesIO(b"x"),
            io.BufferedReader(Zeroes(self.path)),
            replaced,
            raw_replaced,
        ]:
            with self.subTest(f=f):
                self.assertIsNone(sent_by_host(f))

    def test_a_file_whose_path_now_names_another_is_iterated(self):
        f = open(self.path, "rb")
        other = os.path.join(self.dir.name, "other")
        with open(other, "wb") as o:
            o.write(b"new")
        os.replace(other, self.path)
        self.assertIsNone(sent_by_host(f))
        f.close()


class ProtocolTest(unittest.TestCase):
    def test_large_chunks_go_to_the_host_in_pieces(self):
        self.assertEqual(list(protocol.pieces(b"")), [b""])
        self.assertEqual(list(protocol.pieces(b"ab")), [b"ab"])
        big = bytes(range(256)) * (protocol.PIECE // 128 + 1)
        parts = list(protocol.pieces(big))
        self.assertEqual([len(p) for p in parts[:-1]], [protocol.PIECE] * 2)
        self.assertTrue(all(type(p) is bytes for p in parts))
        self.assertEqual(b"".join(parts), big)

    def test_the_response_ends_before_close_and_not_after_an_error(self):
        class Result:
            def __init__(self, chunks, log):
                self.chunks, self.log = chunks, log

            def __iter__(self):
                for c in self.chunks:
                    if c is None:
                        raise RuntimeError("mid-body")
                    yield c

            def close(self):
                self.log.append("close")

        def app_of(chunks, log):
            def app(environ, start_response):
                start_response("200 OK", [])
                return Result(chunks, log)

            return app

        log = []
        t, failure, _ = run(app_of([b"a", b"b"], log), log)
        self.assertIsNone(failure)
        self.assertEqual(t.chunks, [b"a", b"b"])
        self.assertEqual(log, ["end", "close"])
        # An error after the head: cut short by the host, never ended.
        log = []
        t, failure, _ = run(app_of([b"a", None], log), log)
        self.assertIn("mid-body", failure)
        self.assertEqual(t.chunks, [b"a"])
        self.assertEqual(log, ["close"])

    def test_a_write_callable_kept_past_its_request_fails_there(self):
        kept = []

        def first(environ, start_response):
            kept.append(start_response("200 OK", []))
            return [b"one"]

        def second(environ, start_response):
            start_response("200 OK", [])
            kept[0](b"leaked")
            return [b"two"]

        t, failure, _ = run(first)
        self.assertEqual(t.chunks, [b"one"])
        t, failure, log = run(second)
        self.assertEqual(t.head[0], "500 Internal Server Error")
        self.assertNotIn(b"leaked", b"".join(t.chunks))
        self.assertIn("called after its request ended", log)

    def test_a_write_from_close_fails_with_a_clear_error(self):
        class Result:
            def __init__(self, write):
                self.write = write

            def __iter__(self):
                return iter([b"body"])

            def close(self):
                self.write(b"late")

        def app(environ, start_response):
            return Result(start_response("200 OK", []))

        t, failure, log = run(app)
        self.assertIsNone(failure)
        self.assertEqual(b"".join(t.chunks), b"body")
        self.assertIn("close() raised", log)
        self.assertIn("called after its request ended", log)
        # A report the host logs as an error, as it does any app exception's.
        self.assertTrue(log.startswith(protocol.ERROR_REPORT + " GET /"), log)

    def test_head_goes_with_first_nonempty_chunk(self):
        def app(environ, start_response):
            start_response("200 OK", [("X-A", "1")])
            yield b""
            yield b"body"
            yield b"more"

        t, failure, _ = run(app)
        self.assertIsNone(failure)
        self.assertEqual(t.head, ("200 OK", [("X-A", "1")]))
        self.assertEqual(t.chunks, [b"body", b"more"])

    def test_single_item_list_gets_content_length(self):
        t, _, _ = run(lambda e, sr: (sr("200 OK", []), [b"abc"])[1])
        self.assertEqual(t.head[1], [("Content-Length", "3")])

    def test_exception_before_head_is_500_with_traceback(self):
        def app(environ, start_response):
            raise KeyError("nope")

        t, failure, log = run(app)
        self.assertIsNone(failure)
        self.assertTrue(t.head[0].startswith("500 "))
        self.assertIn("KeyError: 'nope'", log)

    def answers_to_a_failed_body(self, error):
        """What each answer shape of an app that swallows the error its body
        read raises leaves behind: (transport, result of run) per shape."""

        def pull(n):
            raise error

        def swallowing(shape):
            def app(environ, start_response):
                try:
                    environ["wsgi.input"].read()
                except OSError:
                    pass
                # Middleware swapping the stream does not hide the failure.
                environ["wsgi.input"] = io.BytesIO()
                start_response("500 Internal Server Error", [])
                return shape

            return app

        for shape in ([b"framework's page"], iter([b"a", b"b"]), []):
            t = Recorder()
            env = protocol.base_environ(io.StringIO())
            env.update({"REQUEST_METHOD": "POST", "PATH_INFO": "/"})
            env["wsgi.input"] = InputStream(pull, None)
            yield shape, t, protocol.run(swallowing(shape), env, t)

    def test_a_refused_body_is_413_whatever_the_app_answers(self):
        for shape, t, failure in self.answers_to_a_failed_body(BodyTooLarge("x")):
            self.assertIsNone(failure)
            self.assertEqual(t.head[0], "413 Content Too Large", shape)
            self.assertEqual(t.chunks, [b"Request body too large\n"])

    def test_an_unreadable_body_is_left_to_the_host_whatever_the_app_answers(self):
        for shape, t, failure in self.answers_to_a_failed_body(ClientDisconnected("malformed framing")):
            self.assertIsNone(failure)
            # No head: the host answers 400 (framing) or 408 (a stall).
            self.assertIsNone(t.head, shape)

    def test_a_body_that_fails_after_the_head_cuts_the_response_short(self):
        def pull(n):
            raise ClientDisconnected("stalled")

        def echo(environ, start_response):
            start_response("200 OK", [])
            yield b"started"
            yield environ["wsgi.input"].read()

        t = Recorder()
        env = protocol.base_environ(io.StringIO())
        env.update({"REQUEST_METHOD": "POST", "PATH_INFO": "/echo"})
        env["wsgi.input"] = InputStream(pull, None)
        self.assertEqual(protocol.run(echo, env, t), protocol.BODY_FAILED_AFTER_HEAD)
        self.assertEqual(t.head[0], "200 OK")

        def catching(environ, start_response):
            # The app catches the failure and finishes its answer anyway.
            start_response("200 OK", [])
            yield b"started"
            try:
                environ["wsgi.input"].read()
            except OSError:
                pass
            yield b"END"

        t = Recorder()
        t.events = []
        env = protocol.base_environ(io.StringIO())
        env.update({"REQUEST_METHOD": "POST", "PATH_INFO": "/echo"})
        env["wsgi.input"] = InputStream(pull, None)
        self.assertEqual(protocol.run(catching, env, t), protocol.BODY_FAILED_AFTER_HEAD)
        self.assertEqual(t.chunks, [b"started", b"END"])
        self.assertEqual(t.events, [], "cut short, not ended")

        def leaving(environ, start_response):
            # A client that left mid-download: nobody to tell.
            start_response("200 OK", [])
            yield b"started"
            raise ClientDisconnected("client disconnected")

        env = protocol.base_environ(io.StringIO())
        env.update({"REQUEST_METHOD": "GET", "PATH_INFO": "/"})
        self.assertIsNone(protocol.run(leaving, env, Recorder()))

    def test_exception_after_head_reports_cut_short(self):
        def app(environ, start_response):
            start_response("200 OK", [])
            yield b"x"
            raise ValueError("late")

        t, failure, _ = run(app)
        self.assertIn("ValueError: late", failure)

    def test_a_report_stderr_will_not_take_goes_to_the_host(self):
        def app(environ, start_response):
            environ["wsgi.errors"].close()  # as os.close(2) leaves it
            raise ValueError("lost")

        t = Recorder()
        env = protocol.base_environ(io.StringIO())
        env.update({"REQUEST_METHOD": "GET", "PATH_INFO": "/x"})
        self.assertIsNone(protocol.run(app, env, t))
        self.assertEqual(t.head[0], "500 Internal Server Error")
        lost = protocol.take_lost_report()
        self.assertTrue(lost.startswith(protocol.ADAPTER_ERROR + ": the app's stderr cannot be written"), lost)
        self.assertIn(protocol.ERROR_REPORT + " GET /x:\nTraceback", lost)
        self.assertIn("ValueError: lost", lost)
        self.assertIsNone(protocol.take_lost_report(), "taken once")
        # A report stderr takes leaves nothing behind.
        run(app=lambda e, s: 1 / 0)
        self.assertIsNone(protocol.take_lost_report())
        # A closed sys.stdout fails every later print: said, to be replaced.
        closed = io.StringIO()
        closed.close()
        saved = sys.stdout
        try:
            sys.stdout = closed
            run(app=lambda e, s: print("x"))
        finally:
            sys.stdout = saved
        self.assertIn("the app closed its sys.stdout", protocol.take_lost_report())

        # So is a request that closes it and answers: its own response
        # goes out whole, and the instance is replaced after it.
        def closes(environ, start_response):
            sys.stdout.close()
            start_response("200 OK", [])
            return [b"fine"]

        try:
            sys.stdout = io.StringIO()
            t = Recorder()
            env = protocol.base_environ(io.StringIO())
            env.update({"REQUEST_METHOD": "GET", "PATH_INFO": "/close"})
            self.assertIsNone(protocol.run(closes, env, t))
        finally:
            sys.stdout = saved
        self.assertEqual(t.head[0], "200 OK")
        self.assertIn("the app closed its sys.stdout", protocol.take_lost_report())

    def test_a_report_of_a_file_the_sandbox_refused_says_why(self):
        def writes_beside_its_code(environ, start_response):
            raise PermissionError(errno.EPERM, "Operation not permitted", "/1/out.txt")

        _, _, errors = run(writes_beside_its_code)
        self.assertTrue(
            errors.endswith(
                "PermissionError: [Errno %d] Operation not permitted: '/1/out.txt'\n"
                "(/1/out.txt is among the app's own files, which are read-only in the sandbox: "
                "write to a --dir grant (`dirs` in tenants.toml; for example --dir ./data::/data) or to /tmp)\n"
                % errno.EPERM
            ),
            errors,
        )
        _, _, errors = run(lambda e, s: 1 / 0)
        self.assertTrue(errors.endswith("ZeroDivisionError: division by zero\n"), errors)

    def test_a_factory_named_without_its_call_is_told_so(self):
        def create_app(*args):
            return lambda environ, start_response: [b"app"]

        _, _, errors = run(create_app)
        self.assertIn("TypeError: the app returned <function ", errors)
        self.assertIn("build with its call, `module:create_app()`", errors)

        def factory():
            return create_app()

        _, _, errors = run(factory)
        self.assertIn("takes 0 positional arguments but 2 were given\n(the app takes other arguments", errors)
        # A TypeError of the app's own says nothing more.
        _, _, errors = run(lambda e, s: len(1, 2))
        self.assertTrue(errors.endswith("len() takes exactly one argument (2 given)\n"), errors)

    def test_a_huge_report_is_written_in_one_piece(self):
        def app(environ, start_response):
            raise ValueError("\n".join(f"p{i}" for i in range(400_000)))

        _, _, errors = run(app)
        self.assertLessEqual(len(errors), protocol.REPORT_MAX + 100)
        self.assertTrue(errors.startswith(protocol.ERROR_REPORT + " GET /:\nTraceback"), errors[:200])
        self.assertIn(" characters of the report left out]\n", errors)
        self.assertTrue(errors.endswith("p399999\n"), errors[-50:])

    def test_a_huge_exception_message_is_clipped_before_its_report_is_made(self):
        class Huge(Exception):
            def __str__(self):
                return "S" * (8 * protocol.REPORT_MAX) + "end"

        def app(environ, start_response):
            try:
                raise KeyError("first")
            except KeyError:
                raise Huge("payload")

        t, _, errors = run(app)
        self.assertEqual(t.head[0], "500 Internal Server Error")
        self.assertLessEqual(len(errors), protocol.REPORT_MAX)
        # Both exceptions, with the traceback; the message's ends kept.
        self.assertIn("KeyError: 'first'\n", errors)
        self.assertIn(", in app\n", errors)
        self.assertIn(".Huge: SSS", errors)
        self.assertIn(" characters of the report left out]\n", errors)
        self.assertTrue(errors.endswith("Send\n"), errors[-50:])

    def test_exc_info_rules(self):
        def replaces(environ, start_response):
            start_response("200 OK", [])
            try:
                raise ValueError()
            except ValueError:
                start_response("500 Oops", [], sys.exc_info())
            return [b"x"]

        t, _, _ = run(replaces)
        self.assertEqual(t.head[0], "500 Oops")

        def reraises(environ, start_response):
            start_response("200 OK", [])
            yield b"sent"
            try:
                raise ValueError("original")
            except ValueError:
                start_response("500 Oops", [], sys.exc_info())

        _, failure, _ = run(reraises)
        self.assertIn("ValueError: original", failure)

    def test_header_validation(self):
        for headers in (
            [("X", "a\nb")],
            [("Bad Name", "x")],
            [("Transfer-Encoding", "chunked")],
            [("X", "\u263a")],
            [(b"X", "y")],
            # Over what the host takes, refused before any copy is made.
            [("X", "v" * (protocol.MAX_HEAD + 1))],
            [("X-%d" % i, "v" * 1000) for i in range(300)],
        ):
            t, _, log = run(lambda e, sr, h=headers: (sr("200 OK", h), [b""])[1])
            self.assertTrue(t.head[0].startswith("500 "), headers[:1])
        self.assertIn("over the 256 KiB", log)
        for status in ("200x", "OK", b"200 OK", "20 OK", "200\t OK"):
            t, _, _ = run(lambda e, sr, s=status: (sr(s, []), [b""])[1])
            self.assertTrue(t.head[0].startswith("500 "), status)
        # As gunicorn and wsgiref: a bare code, and `Trailer` (end-to-end).
        t, _, _ = run(lambda e, sr: (sr("200", [("Trailer", "X-T")]), [b""])[1])
        self.assertEqual(t.head, ("200", [("Trailer", "X-T"), ("Content-Length", "0")]))

    def test_str_subclasses_named_tuples_and_pairs_as_lists_are_taken(self):
        # What frameworks hand over: markupsafe's Markup and Django's
        # SafeString are str subclasses, StrEnum members too.
        class Markup(str):
            pass

        class Kind(enum.StrEnum):
            TEXT = "text/plain"
            OK = "200 OK"

        Pair = collections.namedtuple("Pair", "name value")
        headers = [("X-Name", Markup("a&amp;b")), ("Content-Type", Kind.TEXT), Pair("X-P", "1"), ["X-L", "2"]]
        for _ in range(2):  # the second time from the validation caches
            t, _, _ = run(lambda e, sr: (sr(Kind.OK, list(headers)), [b""])[1])
            status, sent = t.head
            self.assertEqual(status, "200 OK")
            self.assertIs(type(status), str)
            self.assertEqual(sent[:4], [("X-Name", "a&amp;b"), ("Content-Type", "text/plain"), ("X-P", "1"), ("X-L", "2")])
            self.assertTrue(all(type(h) is tuple for h in sent), sent)
        # Validated as the str they hold.
        t, _, _ = run(lambda e, sr: (sr("200 OK", [("X", Markup("a\r\nb"))]), [b""])[1])
        self.assertTrue(t.head[0].startswith("500 "))
        t, _, _ = run(lambda e, sr: (sr("200 OK", [["X", "1", "2"]]), [b""])[1])
        self.assertTrue(t.head[0].startswith("500 "))

    def test_close_is_always_called(self):
        closed = []

        class Result:
            def __iter__(self):
                raise RuntimeError("iteration fails")

            def close(self):
                closed.append(True)

        def app(environ, start_response):
            start_response("200 OK", [])
            return Result()

        run(app)
        self.assertEqual(closed, [True])

    def test_write_before_start_response_and_str_body(self):
        t, _, log = run(lambda e, sr: ["text, not bytes"])
        self.assertTrue(t.head[0].startswith("500 "))

        def app(environ, start_response):
            start_response("200 OK", [])
            return ["text"]

        t, _, log = run(app)
        self.assertIn("must be bytes", log)


class BuildTempdirTest(unittest.TestCase):
    def test_the_build_s_working_directory_is_forgotten_a_chosen_one_kept(self):
        import os
        import tempfile

        from rsgi_wasm_guest import boot

        saved = tempfile.tempdir, tempfile._candidate_tempdir_list
        try:
            self.assertIn(os.getcwd(), tempfile._candidate_tempdir_list())
            tempfile.tempdir = os.getcwd()
            tempfile._get_candidate_names()
            boot.forget_build_tempdir()
            self.assertIsNone(tempfile.tempdir)
            # Names are drawn afresh in each instance, not replayed.
            self.assertIsNone(tempfile._name_sequence)
            # Nor is it ever found again: on a host with no /tmp, temporary
            # files must not land among the app's code.
            candidates = tempfile._candidate_tempdir_list()
            self.assertNotIn(os.getcwd(), candidates)
            self.assertIn("/tmp", candidates)
            tempfile.tempdir = "/data/tmp"
            boot.forget_build_tempdir()
            self.assertEqual(tempfile.tempdir, "/data/tmp")
            self.assertEqual(tempfile._candidate_tempdir_list(), candidates)
        finally:
            tempfile.tempdir, tempfile._candidate_tempdir_list = saved



class EnvironReadsTest(unittest.TestCase):
    def test_the_app_s_own_lookups_of_unset_variables_are_noted_once(self):
        import os

        from rsgi_wasm_guest import boot

        real = type(os.environ).__getitem__
        os.environ["RSGI_WASM_TEST_SET"] = "1"
        everything = {}
        stop = boot.record_environ_reads(["/app/"], everything)
        try:
            app = compile(
                "import os\n"
                "a = os.environ.get('RSGI_WASM_TEST_A')\n"
                "b = 'RSGI_WASM_TEST_B' in os.environ\n"
                "c = os.getenv('RSGI_WASM_TEST_C', 'x'), os.getenv('RSGI_WASM_TEST_A')\n"
                "d = os.environ.get('RSGI_WASM_TEST_SET')\n"
                "try:\n    os.environ['RSGI_WASM_TEST_D']\nexcept KeyError:\n    pass\n"
                "os.environ.setdefault('RSGI_WASM_TEST_OWN', 'mysite.settings')\n",
                "/app/settings.py",
                "exec",
            )
            exec(app, {})
            exec(compile("import os\nos.getenv('RSGI_WASM_TEST_LIB')\n", "/deps/lib.py", "exec"), {})
            # A library's helper, and the standard library's own lookup,
            # called by the app; a read of everything.
            helpers = {}
            library = "import os\ndef config(key):\n    return os.environ[key]\ndef Flask():\n    return os.getenv('RSGI_WASM_TEST_OWN_SETTING')\n"
            exec(compile(library, "/deps/decouple.py", "exec"), helpers)
            exec(compile("import os\ndef gettempdir():\n    return os.getenv('RSGI_WASM_TEST_TMP')\n", "/python/tempfile.py", "exec"), helpers)
            calls = "import os\ntry:\n    config('RSGI_WASM_TEST_E')\nexcept KeyError:\n    pass\ngettempdir()\ndict(os.environ)\nFlask()\n"
            exec(compile(calls, "/app/more.py", "exec"), helpers)
        finally:
            read = stop()
            del os.environ["RSGI_WASM_TEST_SET"]
            os.environ.pop("RSGI_WASM_TEST_OWN", None)
        self.assertIs(type(os.environ).__getitem__, real)
        self.assertEqual(
            read,
            {
                "RSGI_WASM_TEST_A": ("/app/settings.py", 2),
                "RSGI_WASM_TEST_B": ("/app/settings.py", 3),
                "RSGI_WASM_TEST_C": ("/app/settings.py", 4),
                "RSGI_WASM_TEST_D": ("/app/settings.py", 7),
                "RSGI_WASM_TEST_OWN": ("/app/settings.py", 10),
                "RSGI_WASM_TEST_E": ("/app/more.py", 3),
                boot.WHOLE_ENVIRONMENT: ("/app/more.py", 7),
            },
        )
        # Libraries' own lookups are kept apart, the standard library's not.
        self.assertIn("RSGI_WASM_TEST_LIB", everything)
        self.assertIn("RSGI_WASM_TEST_OWN_SETTING", everything)
        self.assertIn("RSGI_WASM_TEST_A", everything)
        self.assertNotIn("RSGI_WASM_TEST_TMP", everything)
        warning = boot.environ_read_warning(read, [("/app", "./mysite")])
        self.assertIn("looked up RSGI_WASM_TEST_A (./mysite/settings.py:2), RSGI_WASM_TEST_B", warning[0])
        self.assertIn("in the environment and read the whole environment (./mysite/more.py:7)", warning[0])
        self.assertEqual(boot.environ_read_warning({}, []), [])


class WrittenAtBuild(unittest.TestCase):
    def test_what_the_import_wrote_in_the_app_s_directory_is_named(self):
        import os
        import tempfile
        import time

        from rsgi_wasm_guest import boot

        with tempfile.TemporaryDirectory() as d:
            old = time.time() - 100
            for name in ("app.py", "pkg/mod.py"):
                os.makedirs(os.path.dirname(os.path.join(d, name)), exist_ok=True)
                with open(os.path.join(d, name), "w") as f:
                    f.write("")
                os.utime(os.path.join(d, name), (old, old))
            since = time.time() - 1
            self.assertEqual(boot.written_at_build_warning([d], [], since), [])
            os.makedirs(os.path.join(d, "flask_session"))
            os.makedirs(os.path.join(d, "__pycache__"))
            with open(os.path.join(d, "__pycache__", "app.cpython-314.pyc"), "w") as f:
                f.write("")
            with open(os.path.join(d, "db.sqlite3"), "w") as f:
                f.write("")
            with open(os.path.join(d, "pkg", "cache.json"), "w") as f:
                f.write("{}")
            said = boot.written_at_build_warning([d], [(d, "./app")], since)
            self.assertEqual(len(said), 1)
            self.assertIn("wrote ./app/flask_session, ./app/pkg/cache.json in the app's own directory", said[0])
            # A database made at import, whatever its name, is named as one.
            import sqlite3

            connection = sqlite3.connect(os.path.join(d, "instance.db"))
            connection.execute("create table t(x)")
            connection.commit()
            connection.close()
            said = boot.written_at_build_warning([d], [(d, "./app")], since)
            self.assertEqual(len(said), 2, said)
            self.assertIn("created the SQLite database ./app/instance.db in the app's own directory", said[0])
            self.assertIn("--dir grant", said[0])
            self.assertNotIn("instance.db", said[1])


class OpenFilesTest(unittest.TestCase):
    def test_a_file_of_the_app_s_left_open_is_named_and_no_proxy_is_woken(self):
        import tempfile

        from rsgi_wasm_guest import boot

        class Lazy:
            @property
            def __class__(self):
                raise RuntimeError("woken")

        proxy = Lazy()
        with tempfile.TemporaryDirectory() as d:
            held = open(os.path.join(d, "app.log"), "w")
            with open(os.path.join(d, "closed.txt"), "w"):
                pass
            warnings = boot.open_files_warning([d], [(d, "./mysite")])
            held.close()
            self.assertEqual(len(warnings), 1, warnings)
            self.assertIn("keeps ./mysite/app.log open from its import", warnings[0])
            self.assertEqual(boot.open_files_warning([d], [(d, "./mysite")]), [])
        del proxy


class ImportPath(unittest.TestCase):
    def test_the_app_is_imported_with_server_software_set_as_gunicorn_does(self):
        import os
        import tempfile

        from rsgi_wasm_guest import boot

        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "seen_server_software.py"), "w") as f:
                f.write("import os\nSEEN = os.environ.get('SERVER_SOFTWARE')\n")
            saved = os.environ.pop("SERVER_SOFTWARE", None)
            sys.path.insert(0, d)
            try:
                module = boot.import_app_module("seen_server_software", [], {})
                self.assertEqual(module.SEEN, "rsgi-wasm")
            finally:
                sys.path.remove(d)
                sys.modules.pop("seen_server_software", None)
                os.environ.pop("SERVER_SOFTWARE", None)
                if saved is not None:
                    os.environ["SERVER_SOFTWARE"] = saved

    def test_a_standard_module_wasi_lacks_is_not_sent_to_requirements(self):
        import os
        import tempfile

        from rsgi_wasm_guest import boot

        with tempfile.TemporaryDirectory() as d:
            os.makedirs(os.path.join(d, "needs_winapi"))
            with open(os.path.join(d, "needs_winapi", "__init__.py"), "w") as f:
                f.write("import _winapi\n")
            with open(os.path.join(d, "uses_it.py"), "w") as f:
                f.write("import needs_winapi\n")
            sys.path.insert(0, d)
            try:
                with self.assertRaises(boot.BuildError) as e:
                    boot.import_app_module("uses_it", [], {})
            finally:
                sys.path.remove(d)
                for name in ("uses_it", "needs_winapi"):
                    sys.modules.pop(name, None)
        said = str(e.exception)
        self.assertIn(
            f"{d}/needs_winapi/__init__.py:1 imports '_winapi', a module of the standard library "
            "that CPython for WASI does not have",
            said,
        )
        self.assertNotIn("requirements.txt", said)
        # The app's frames are there; the adapter's and importlib's not.
        self.assertIn('uses_it.py", line 1', said)
        self.assertNotIn("rsgi_wasm_guest/boot.py", said)
        self.assertNotIn("<frozen importlib", said)

    def test_the_app_s_directories_come_before_the_standard_library(self):
        from rsgi_wasm_guest import boot

        path = ["/python", "/0", "/1", "/2", "/3"]
        self.assertEqual(
            boot.app_dirs_first(path, ["/1", "/2"]),
            ["/1", "/2", "/python", "/0", "/3"],
        )
        self.assertEqual(boot.app_dirs_first(path, []), path)

    def test_pth_files_of_the_dependencies_are_processed(self):
        import os
        import sys
        import tempfile

        from rsgi_wasm_guest import boot

        with tempfile.TemporaryDirectory() as d:
            os.makedirs(os.path.join(d, "extra_dir"))
            with open(os.path.join(d, "a.pth"), "w") as f:
                f.write("extra_dir\nimport sys; sys._rsgi_wasm_pth_ran = True\n")
            # What CPython would print of a bad line, and a path the
            # sandbox lacks (an editable install's source tree), are said.
            with open(os.path.join(d, "b.pth"), "w") as f:
                f.write("import this_module_does_not_exist_xyz\n")
            with open(os.path.join(d, "__editable__.proj-0.1.pth"), "w") as f:
                f.write("/home/dev/proj/src\n")
            saved = sys.path[:]
            try:
                sys.path.append(d)
                warnings = boot.add_site_dirs([(d, "./site"), ("/nowhere", "./gone")])
                self.assertIn(os.path.join(d, "extra_dir"), sys.path)
                self.assertTrue(getattr(sys, "_rsgi_wasm_pth_ran", False))
                self.assertEqual(sys.path.count(d), 1)
                said = "\n".join(warnings)
                self.assertIn("warning: ./site: Error processing line 1 of", said)
                self.assertIn(
                    "warning: ./site/__editable__.proj-0.1.pth adds /home/dev/proj/src, which is not shipped "
                    "(an editable install, pip install -e): give that directory with -p",
                    said,
                )
                # Once the directory is shipped with -p (itself or a parent),
                # the line adds where it is in the sandbox, and is not said.
                editable = os.path.join(d, "__editable__.proj-0.1.pth")
                os.makedirs(os.path.join(d, "app", "src"))
                app = os.path.join(d, "app")
                self.assertEqual(
                    boot._pth_paths(editable, "x", [(app + "/src", "/home/dev/proj/src/")]), ([app + "/src"], [])
                )
                self.assertEqual(boot._pth_paths(editable, "x", [(app, "/home/dev/proj")]), ([app + "/src"], []))
                found, said = boot._pth_paths(editable, "x", [(app, "/home/dev/pro")])
                self.assertEqual((found, len(said)), ([], 1))
                # Inside -p, but not there (not packed): said.
                found, said = boot._pth_paths(editable, "x", [(app + "/gone", "/home/dev/proj")])
                self.assertEqual((found, len(said)), ([], 1))
                saved_path = sys.path[:]
                try:
                    boot.add_site_dirs([(d, "./site")], [(app, "/home/dev/proj")])
                    self.assertIn(app + "/src", sys.path)
                finally:
                    sys.path[:] = saved_path
                # A line that exits names the file, not the app.
                with open(os.path.join(d, "c.pth"), "w") as f:
                    f.write("import sys; sys.exit(3)\n")
                with self.assertRaises(boot.BuildError) as e:
                    boot.add_site_dirs([(d, "./site")])
                self.assertIn("processing the .pth files of ./site", str(e.exception))
                self.assertIn("SystemExit", str(e.exception))
            finally:
                sys.path[:] = saved
                sys.__dict__.pop("_rsgi_wasm_pth_ran", None)

    def test_modules_imported_ahead_of_the_app_that_it_shadows_are_forgotten(self):
        import os
        import sys
        import tempfile

        from rsgi_wasm_guest import boot

        with tempfile.TemporaryDirectory() as d:
            for name in ("secrets.py", "json/__init__.py", "notes/readme.txt"):
                os.makedirs(os.path.dirname(os.path.join(d, name)), exist_ok=True)
                open(os.path.join(d, name), "w").close()
            self.assertEqual(boot.app_module_names([d, "/nowhere"]), {"secrets", "json"})
            saved = dict(sys.modules)
            try:
                import json.decoder  # noqa: F401
                import secrets  # noqa: F401

                boot.forget_shadowed([d], keep={"json"})
                self.assertNotIn("secrets", sys.modules)
                self.assertIn("json.decoder", sys.modules)
                # The one that stays is named in a build warning.
                (warning,) = boot.unused_app_modules([d], keep={"json"})
                self.assertIn("module 'json' is not used", warning)
            finally:
                sys.modules.clear()
                sys.modules.update(saved)


class Callables(unittest.TestCase):
    def test_names_attributes_and_factories_with_literal_arguments(self):
        import types

        from rsgi_wasm_guest import boot

        def wsgi(environ, start_response):
            return []

        def create_app(config="dev", *, debug=False):
            made = lambda e, s: []  # noqa: E731
            made.made_with = (config, debug)
            return made

        async def asgi(scope, receive, send):
            pass

        class AsgiApp:
            async def __call__(self, scope, receive, send):
                pass

        mod = types.SimpleNamespace(
            app=wsgi,
            create_app=create_app,
            sub=types.SimpleNamespace(app=wsgi),
            data=42,
            asgi=asgi,
            asgi_app=AsgiApp(),
        )
        self.assertIs(boot.resolve_callable(mod, "m", "app"), wsgi)
        self.assertIs(boot.resolve_callable(mod, "m", "sub.app"), wsgi)
        self.assertEqual(boot.resolve_callable(mod, "m", "create_app()").made_with, ("dev", False))
        self.assertEqual(
            boot.resolve_callable(mod, "m", "create_app('sqlite:///x', debug=True)").made_with,
            ("sqlite:///x", True),
        )
        errors = {
            "create_app(os.environ)": "must be Python literals",
            "create_app(**{'debug': 1})": "must be Python literals",
            "create_app(x=__import__('os'))": "must be Python literals",
            "create_app('a'": "not a valid callable",
            "app[0]": "not a valid callable",
            "missing": "module 'm' has no attribute 'missing'",
            "app.x": "m:app has no attribute 'x'",
            "sub.nope": "m:sub has no attribute 'nope'",
            "data": "is of type int, not a callable",
            "asgi": "an ASGI application by the look of it",
            "asgi_app": "an ASGI application by the look of it",
            "create_app(1, 2, 3)": "raised TypeError",
        }
        for expr, message in errors.items():
            with self.assertRaises(boot.BuildError, msg=expr) as caught:
                boot.resolve_callable(mod, "m", expr)
            self.assertIn(message, str(caught.exception), expr)
        # The default name missing, what is there is named (Flask's `app`).
        flaskish = types.ModuleType("flaskish")

        class Flask:
            wsgi_app = None

            def __call__(self, environ, start_response):
                pass

        flaskish.app = Flask()
        flaskish.Flask = Flask
        with self.assertRaises(boot.BuildError) as caught:
            boot.resolve_callable(flaskish, "flaskish", "application")
        self.assertEqual(
            str(caught.exception),
            "module 'flaskish' has no attribute 'application' (looked up flaskish:application); "
            "it has app (a Flask): build flaskish:app",
        )
        # A factory is suggested with its call; a WSGI function as it is.
        made = types.ModuleType("made")
        exec(
            "def factory(name='x', debug=False):\n    return None\n"
            "def create_app():\n    return None\n"
            "def handler(environ, start_response):\n    return []\n"
            "def helper(a):\n    return a\n",
            made.__dict__,
        )
        made.__dict__["__name__"] = "made"
        for f in ("factory", "create_app", "handler", "helper"):
            getattr(made, f).__module__ = "made"
        with self.assertRaises(boot.BuildError) as caught:
            boot.resolve_callable(made, "made", "application")
        self.assertIn(
            "it has factory (an app factory, by its name and defaults), create_app (an app factory, by its "
            "name and defaults), handler (a function of two arguments): build made:factory()",
            str(caught.exception),
        )


class WarmUp(unittest.TestCase):
    def test_a_5xx_line_says_why_wherever_the_app_said_it(self):
        import traceback

        from rsgi_wasm_guest import boot

        def own_500(environ, start_response):
            # As Flask does: the exception logged to stderr, a 500 answered.
            try:
                1 / 0
            except ZeroDivisionError:
                traceback.print_exc()
            start_response("500 INTERNAL SERVER ERROR", [])
            return [b"oops"]

        def raises(environ, start_response):
            raise KeyError("k")

        def quiet_503(environ, start_response):
            start_response("503 Busy", [])
            return [b""]

        def ok(environ, start_response):
            print("noise")
            start_response("200 OK", [])
            return [b"fine"]

        self.assertEqual(
            boot.warm_up(own_500, ["/"]),
            ["warm-up GET /: 500 INTERNAL SERVER ERROR (ZeroDivisionError: division by zero)"],
        )
        self.assertEqual(boot.warm_up(raises, ["/"]), ["warm-up GET /: 500 Internal Server Error (KeyError: 'k')"])
        self.assertEqual(
            boot.warm_up(quiet_503, ["/a?b"]),
            ["warm-up GET /a?b: 503 Busy (the app answered it without a traceback or any output)"],
        )
        self.assertEqual(boot.warm_up(ok, ["/"]), ["warm-up GET /: 200 OK"])

    def test_each_path_runs_twice_so_its_code_is_specialised_in_the_snapshot(self):
        from rsgi_wasm_guest import boot

        seen = []

        def app(environ, start_response):
            seen.append(environ["PATH_INFO"])
            # A cookie set only by the second round is still warned about.
            cookie = [("Set-Cookie", "late=1")] if len(seen) == 2 else []
            start_response("404 Not Found" if len(seen) == 1 else "200 OK", cookie)
            return [b""]

        report = boot.warm_up(app, ["/a"])
        self.assertEqual(seen, ["/a"] * boot.WARMUP_ROUNDS)
        self.assertEqual(boot.WARMUP_ROUNDS, 2)
        # The line is about the first round: what a first request would get.
        self.assertEqual(report[0], "warm-up GET /a: 404 Not Found")
        self.assertTrue(report[1].startswith("warning: warm-up GET /a set the cookie late:"), report)

        failed = []

        def fails(environ, start_response):
            failed.append(1)
            raise KeyError("k")

        # A failing app is not asked again: its report stays as it was.
        self.assertEqual(boot.warm_up(fails, ["/"]), ["warm-up GET /: 500 Internal Server Error (KeyError: 'k')"])
        self.assertEqual(failed, [1])

        calls = []

        def fails_second(environ, start_response):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("second")
            start_response("200 OK", [])
            return [b""]

        # A path given twice runs as if given once; its second run failing
        # is said, not hidden behind the first run's 200.
        self.assertEqual(
            boot.warm_up(fails_second, ["/b", "/b"]),
            ["warm-up GET /b: 200 OK; run again: 500 Internal Server Error (RuntimeError: second)"],
        )
        self.assertEqual(len(calls), 2)

        cut = []

        def cut_short(environ, start_response):
            cut.append(1)
            start_response("200 OK", [])

            def body():
                yield b"x"
                raise ValueError("mid-body")

            return body()

        # A body that fails after the head: said, and not run again.
        [line] = boot.warm_up(cut_short, ["/c"])
        self.assertTrue(line.startswith("warm-up GET /c: 200 OK, then cut short ("), line)
        self.assertIn("ValueError: mid-body", line)
        self.assertEqual(cut, [1])

    def test_a_500_logged_through_a_handler_made_at_import_says_why(self):
        import io
        import logging
        from unittest import mock

        from rsgi_wasm_guest import boot

        build_stderr = io.StringIO()
        with mock.patch("sys.stderr", build_stderr):
            # `logging.basicConfig(stream=sys.stderr)` at import: the stream of then.
            handler = logging.StreamHandler(sys.stderr)
            log = logging.getLogger("rsgi_wasm_test_import_time")
            log.addHandler(handler)
            log.propagate = False

            def logged_500(environ, start_response):
                try:
                    {}["missing"]
                except KeyError:
                    log.exception("failed")
                start_response("500 Internal Server Error", [])
                return [b""]

            try:
                said = boot.warm_up(logged_500, ["/"])
            finally:
                log.removeHandler(handler)
        self.assertEqual(said, ["warm-up GET /: 500 Internal Server Error (KeyError: 'missing')"])
        self.assertIs(handler.stream, build_stderr)


class LiveApps(unittest.TestCase):
    def test_imported_on_first_use_and_a_failure_is_a_build_error(self):
        import os
        import sys
        import tempfile

        from rsgi_wasm_guest import boot

        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "live_mod_ok.py"), "w") as f:
                f.write("def app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'live']\n")
            with open(os.path.join(d, "live_mod_bad.py"), "w") as f:
                f.write("def app(:\n")
            sys.path.insert(0, d)
            try:
                live = boot.LiveApp("live_mod_ok", "app", [], {})
                self.assertNotIn("live_mod_ok", sys.modules)
                self.assertEqual(live({}, lambda status, headers: None), [b"live"])
                self.assertIs(live.load(), live.load())
                with self.assertRaises(boot.BuildError) as e:
                    boot.LiveApp("live_mod_bad", "app", [], {}).load()
                self.assertIn("syntax error", str(e.exception))
            finally:
                sys.path.remove(d)


class NativeCheck(unittest.TestCase):
    def test_a_package_rewrapping_its_missing_native_part_stops_the_build(self):
        import os
        import tempfile

        from rsgi_wasm_guest import boot

        with tempfile.TemporaryDirectory() as d:
            # numpy's shape: the package re-raises its own ImportError from
            # the one naming the extension that was dropped.
            os.makedirs(os.path.join(d, "wrapnative"))
            with open(os.path.join(d, "wrapnative", "__init__.py"), "w") as f:
                f.write(
                    "try:\n    import wrapnative._core\nexcept ImportError as e:\n"
                    "    raise ImportError('please read this advice') from e\n"
                )
            sys.path.insert(0, d)
            try:
                with self.assertRaises(boot.BuildError) as e:
                    boot.check_native({"wrapnative._core": "wrapnative"})
                self.assertIn("wrapnative: native extension", str(e.exception))
                # From an installed tree (--site-packages): a warning.
                (warning,) = boot.check_native({"wrapnative._core": "wrapnative"}, ["wrapnative"])
                self.assertIn("warning: wrapnative: native extension", warning)
            finally:
                sys.path.remove(d)
                sys.modules.pop("wrapnative", None)


if __name__ == "__main__":
    unittest.main()
